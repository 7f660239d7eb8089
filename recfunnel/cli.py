"""The `recfunnel` command: every pipeline step as a batch job with a config file.

Exit codes a scheduler understands: 0 done; 2 bad config or bad input (the message says what to
fix); 1 anything else (a traceback follows).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recfunnel.config import ConfigError, load_config, merge, parse_override
from recfunnel.data.validation import DataSourceError, SchemaError

USER_ERRORS = (ConfigError, DataSourceError, SchemaError, FileNotFoundError)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message tells the user what to fix (exit 2); the dataset's loud checks too."""
    dataset = sys.modules.get("workflows.dataset")
    return USER_ERRORS + ((dataset.DatasetCheckError,) if dataset else ())


def _config(args):
    overrides: dict = {}
    for text in args.set or []:
        overrides = merge(overrides, parse_override(text))
    if getattr(args, "run_name", None):
        overrides.setdefault("run", {})["name"] = args.run_name
    return load_config(args.config, overrides)


def cmd_pipeline_run(args) -> int:
    from recfunnel.pipeline import STEPS, run_pipeline

    cfg = _config(args)
    steps = tuple(args.steps.split(",")) if args.steps else STEPS
    run_dir = run_pipeline(cfg, steps=steps, progress=not args.quiet)
    summary = json.loads((run_dir / "summary.json").read_text())
    data = summary.get("data", {})
    print(f"run {run_dir}: {data.get('events', 0):,} events, {data.get('users', 0):,} users, "
          f"{data.get('items', 0):,} items; {data.get('quarantined_rows', 0):,} rows quarantined "
          f"{data.get('quarantined_by_reason', {})}")
    print(f"summary: {run_dir / 'summary.json'}\nreport:  {run_dir / 'report.html'}")
    return 0


def cmd_train(args) -> int:
    """Trains the funnel's models on a run's dataset: `recfunnel train --run-name demo`."""
    from recfunnel.pipeline import run_pipeline

    cfg = _config(args)
    run_dir = run_pipeline(cfg, steps=("models",), progress=not args.quiet)
    models = json.loads((run_dir / "summary.json").read_text())["models"]
    for name, m in models["models"].items():
        last = m["history"][-1] if m["history"] else {}
        shown = {k: v for k, v in last.items() if k.startswith("val_") and "loss" not in k}
        print(f"{name:14s} {m['parameters']:>9,} params  {shown}")
    print(f"version {models['version']} in {run_dir / models['path']}")
    return 0


def cmd_data_generate(args) -> int:
    from recfunnel.data import synthetic

    cfg = _config(args)
    info = synthetic.generate(cfg.data.synthetic, Path(args.out), progress=not args.quiet)
    print(json.dumps(info, indent=2))
    return 0


def cmd_data_validate(args) -> int:
    from recfunnel.data import sources

    cfg = _config(args)
    raw = sources.materialize(cfg.data, Path(args.out), progress=not args.quiet)
    section = sources.validate_source(raw, Path(args.out), cfg.validation, progress=not args.quiet)
    print(json.dumps(section, indent=2, default=str))
    return 0


def cmd_schema(args) -> int:
    from recfunnel.data import schema

    print("\n\n".join(t.describe() for t in schema.TABLES.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recfunnel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p):
        p.add_argument("--config", "-c", default=None, help="YAML config (defaults when omitted)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one setting, e.g. data.synthetic.n_events=1000000")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
        return p

    pipeline = sub.add_parser("pipeline", help="the whole job").add_subparsers(dest="action",
                                                                               required=True)
    run = with_config(pipeline.add_parser("run", help="run the pipeline into runs/<run>/"))
    run.add_argument("--run-name", help="folder name under run.runs_dir")
    run.add_argument("--steps", help="comma-separated subset of the steps")
    run.set_defaults(func=cmd_pipeline_run)

    train = with_config(sub.add_parser("train", help="train every model on a run's dataset"))
    train.add_argument("--run-name", help="the run whose dataset to train on")
    train.set_defaults(func=cmd_train)

    data = sub.add_parser("data", help="data sources").add_subparsers(dest="action", required=True)
    gen = with_config(data.add_parser("generate", help="write the synthetic data set"))
    gen.add_argument("--out", required=True, help="output folder")
    gen.set_defaults(func=cmd_data_generate)
    val = with_config(data.add_parser("validate", help="load and validate the configured source"))
    val.add_argument("--out", required=True, help="folder for clean tables and the quarantine")
    val.set_defaults(func=cmd_data_validate)

    sub.add_parser("schema", help="print the event schema").set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - sorted below into user errors and the rest
        if not isinstance(err, _user_errors()):
            raise
        print(f"recfunnel: error: {err}", file=sys.stderr)
        return 2
