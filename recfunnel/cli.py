"""The `recfunnel` command: every pipeline step as a batch job with a config file.

Exit codes a scheduler understands: 0 done; 2 bad config or bad input (a `RecfunnelError`, or a
missing file a step needs: one line on stderr says what to fix, no traceback); 1 anything else
(a traceback follows); `retrain` also 3 (a step failed for good) and 4 (the quality gate refused
the new version).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from recfunnel.config import load_config, merge, parse_override
from recfunnel.errors import ConfigError, RecfunnelError

# errors whose message tells the user what to fix: exit 2, one line
USER_ERRORS = (RecfunnelError, FileNotFoundError)
# Each command imports what it runs inside its function: `--help`, `schema` or a bad config
# answer in about a second, without loading TensorFlow, NVTabular or the Triton client.


def _overrides(args) -> dict:
    overrides: dict = {}
    for text in args.set or []:
        overrides = merge(overrides, parse_override(text))
    return overrides


def _config(args):
    overrides = _overrides(args)
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
    for name, section in ((s, summary.get(s)) for s in steps):    # what this run's steps said
        for note in (section.get("derived") or []) if isinstance(section, dict) else []:
            print(f"{name}: derived: {note}")
        for warning in (section.get("warnings") or []) if isinstance(section, dict) else []:
            print(f"recfunnel: warning: {name}: {warning}", file=sys.stderr)
    print(f"summary: {run_dir / 'summary.json'}\nreport:  {run_dir / 'report.html'}")
    return 0


def cmd_train(args) -> int:
    """Trains the funnel's models on a run's dataset: `recfunnel train --run-name demo`."""
    from recfunnel.pipeline import run_pipeline

    cfg = _config(args)
    steps = ("models", "window_sweep") if args.window_sweep else ("models",)
    run_dir = run_pipeline(cfg, steps=steps, progress=not args.quiet)
    models = json.loads((run_dir / "summary.json").read_text())["models"]
    for w in models.get("window_sweep", {}).get("windows", []):
        best = {name: m["best"] for name, m in w["models"].items()}
        print(f"window {w['days']:>3} days: {w['train_rows']:>9,} training rows  {best}")
    for name, m in models["models"].items():
        last = m["history"][-1] if m["history"] else {}
        shown = {k: v for k, v in last.items() if k.startswith("val_") and "loss" not in k}
        print(f"{name:14s} {m['parameters']:>9,} params  {shown}")
    print(f"version {models['version']} in {run_dir / models['path']}")
    return 0


def cmd_evaluate(args) -> int:
    """Scores a run's trained models offline: `recfunnel evaluate --run-name demo`."""
    from recfunnel.pipeline import run_pipeline

    cfg = _config(args)
    run_dir = run_pipeline(cfg, steps=("evaluation",), progress=not args.quiet)
    section = json.loads((run_dir / "summary.json").read_text())["evaluation"]
    k = section["k"]
    for name, m in section["models"].items():
        truth = (section.get("truth") or {}).get(name, {})
        extra = f"  truth: share of ideal {truth[f'share_of_ideal@{k}']}" if truth else ""
        print(f"{name:12s} recall@{k} {m[f'recall@{k}']:.4f}  ndcg@{k} {m[f'ndcg@{k}']:.4f}{extra}")
    print(f"metrics: {run_dir / section['metrics_path']}\nreport:  {run_dir / 'report.html'}")
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


def _served_repo(args) -> Path:
    """--repo, or the run's runs/<run>/triton_repo."""
    if args.repo:
        return Path(args.repo)
    if not args.run_name:
        raise ConfigError("name the repository: --run-name RUN or --repo DIR")
    return Path(args.runs_dir) / args.run_name / "triton_repo"


def cmd_export(args) -> int:
    """Adds a run's trained version to a Triton repository: `recfunnel export --run-name demo`,
    or rolls one back: `recfunnel export --repo DIR --retire 3`."""
    from recfunnel.serving.export import export_run, retire_version

    if args.retire is None and not args.run_name:
        raise ConfigError("export needs --run-name: the run whose trained version to export")
    repo = _served_repo(args)
    try:
        if args.retire is not None:
            left = retire_version(repo, args.retire)
            print(f"retired Triton version {args.retire} from {repo}; versions left: {left}")
            return 0
        given = {"max_users": args.max_users, "keep_versions": args.keep}
        serving = {name: value for name, value in given.items() if value is not None}
        result = export_run(Path(args.runs_dir) / args.run_name, repo, _overrides(args),
                            serving, args.version)
    except (FileExistsError, ValueError) as e:      # refused: mismatched or altered artifacts
        print(f"recfunnel: error: {e}", file=sys.stderr)
        return 2
    print(f"exported training version {result.training_version} as Triton version "
          f"{result.triton_version} to {result.repo} in {result.seconds:.1f} s; versions in "
          f"the repository: {result.versions_on_disk}")
    return 0


def cmd_features_refresh(args) -> int:
    """Rebuilds a run's served feature tables from the newest events, without retraining:
    `recfunnel features refresh --run-name demo [--events new_events.parquet]`."""
    import pandas as pd

    from recfunnel.models.features import refresh_feature_tables

    run_dir = Path(args.runs_dir) / args.run_name
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ConfigError(f"{run_dir}: no summary.json; is --run-name a run?")
    models = json.loads(summary_path.read_text()).get("models", {})
    if "path" not in models:
        raise ConfigError(f"{run_dir}: no trained version in the summary; train first")
    new = None
    if args.events:
        path = Path(args.events)
        if not path.exists():
            raise ConfigError(f"--events {path}: no such file or folder")
        new = pd.read_parquet(path)
    try:
        info = refresh_feature_tables(run_dir / "dataset", run_dir / models["path"], new)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"refreshed {info['users']:,} users and {info['items']:,} items as of {info['as_of']} "
          f"from {info['events']:,} events ({info['new_events']:,} new) in "
          f"{run_dir / models['path'] / 'features'}")
    return 0


def cmd_serve(args) -> int:
    """Serves an exported repository until SIGINT or SIGTERM: `recfunnel serve --run-name demo`."""
    import signal

    from recfunnel.serving import TritonServer, TritonServerError
    from recfunnel.serving.export import stage_environment, versions_in

    repo = _served_repo(args)
    if not repo.is_dir() or not versions_in(repo):
        raise FileNotFoundError(f"{repo}: no exported funnel; run recfunnel export first")
    server = TritonServer(repo, host=args.host, http_port=args.http_port or None,
                          grpc_port=args.grpc_port or None,
                          metrics_port=args.metrics_port or None, model_control_mode="poll",
                          repository_poll_secs=args.poll_secs, env=stage_environment(),
                          log_path=args.log)
    print(f"starting tritonserver on {repo} (log {server.log_path})", flush=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)    # a stop while starting is orderly too
    try:
        server.start()
    except KeyboardInterrupt:
        server.stop()
        return 0
    except TritonServerError as err:     # a model that refuses to load says why in the log
        print(f"recfunnel: error: {repo} cannot be served: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"ready in {server.startup_s:.1f} s (tritonserver pid {server.process.pid}): "
          f"http {server.http_address}  grpc "
          f"{server.grpc_address}  metrics {server.metrics_url}\n"
          f"ask it: recfunnel recommend --user 1 --url {server.http_address}", flush=True)
    code = server.serve_forever()
    if code == 0:
        print("stopped", flush=True)
    else:   # killed after stop_timeout_s, or tritonserver failed on its way out
        print(f"stopped: tritonserver exited with code {code} after {server.shutdown_s:.0f} s "
              f"(see {server.log_path})", flush=True)
    return 0


def cmd_recommend(args) -> int:
    """Asks a running server: `recfunnel recommend --user 42 --k 10`."""
    from recfunnel.serving.funnel_client import FunnelClient

    with FunnelClient(args.url, args.protocol, timeout_s=args.timeout) as client:
        print(client.recommend(args.user, args.k).table())
    return 0


def cmd_experiment_ab(args) -> int:
    """The simulated A/B test through the served funnel: `recfunnel experiment ab --run-name demo`
    (the pipeline's `experiments` step); prints the decision, writes the report."""
    from recfunnel.pipeline import run_pipeline

    cfg = _config(args)
    run_dir = run_pipeline(cfg, steps=("experiments",), progress=not args.quiet)
    section = json.loads((run_dir / "summary.json").read_text())["experiments"]
    if "skipped" in section:
        print(f"recfunnel: experiment skipped: {section['skipped']}", file=sys.stderr)
        return 2
    for row in section["online"]:
        print(f"{row['arm']:>10s}: {row['users']:>6} users  "
              + "  ".join(f"{k} {row[k]:.4g}" for k in row if k not in ("arm", "users")))
    low, high = section["lift_ci"]
    print(f"decision: {section['outcome']} ({section['reason']}); {section['primary_metric']} "
          f"lift {section['lift']:+.2%} [{low:+.2%}, {high:+.2%}], p = {section['p_value']:.3g}")
    print(f"analysis: {run_dir / section['analysis_path']}\nreport:   {run_dir / 'report.html'}")
    return 0


def cmd_experiment_loop(args) -> int:
    """Retrains on the system's own logs for some rounds, with a holdout on round 0's version:
    `recfunnel experiment loop --run-name demo --rounds 3` (minutes per round)."""
    from recfunnel import report
    from recfunnel.experiments.feedback_loop import run_feedback_loop
    from recfunnel.pipeline import retrain_on_logs, run_dir_for, write_summary

    cfg = _config(args)
    run_dir = run_dir_for(cfg)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} is missing: run the pipeline first "
                                "(recfunnel pipeline run)")
    section = run_feedback_loop(run_dir, cfg, retrain_on_logs(cfg, not args.quiet), args.rounds,
                                progress=not args.quiet)
    summary = json.loads(summary_path.read_text())
    summary.setdefault("experiments", {})["feedback_loop"] = section
    write_summary(run_dir, summary)
    report.write_report(run_dir, summary)
    for r in section["rounds"]:
        t, h = r["treated"], r["holdout"]
        print(f"round {r['round']}: treated watch s/user {t['watch_seconds_per_user']}, "
              f"true relevance {t['true_relevance']}, Gini {t['gini']}, coverage "
              f"{t['coverage']} | holdout watch s/user {h['watch_seconds_per_user']}, "
              f"true relevance {h['true_relevance']}")
    print(f"report: {run_dir / 'report.html'}")
    return 0


def cmd_experiment_start(args) -> int:
    """Starts an experiment on a served repository: the funnel assigns arms from the next
    request on; the holdout stays on the newest version of now."""
    from datetime import datetime, timezone

    from recfunnel.experiments.assignment import EXPERIMENT_FILE, Experiment
    from recfunnel.serving.export import versions_in

    repo = _served_repo(args)
    versions = versions_in(repo) if repo.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{repo}: no exported funnel; run recfunnel export first")
    experiment = Experiment.from_config(_config(args).experiments, holdout_version=versions[-1],
                                        started=datetime.now(timezone.utc).isoformat())
    experiment.save(repo / EXPERIMENT_FILE)
    print(f"experiment {experiment.name!r} started on {repo}: {experiment.expected_shares()}; "
          f"holdout on Triton version {versions[-1]}")
    return 0


def cmd_experiment_stop(args) -> int:
    from recfunnel.experiments.assignment import EXPERIMENT_FILE

    path = _served_repo(args) / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no experiment is running there")
    path.unlink()
    print(f"experiment stopped: every user is served the newest version ({path} removed)")
    return 0


def cmd_retrain(args) -> int:
    """Retrains into a new run, gates it against the served version and promotes it:
    `recfunnel retrain -c configs/default.yaml` (exit codes in recfunnel.retrain.job)."""
    import signal

    from recfunnel.retrain import retrain_job

    job = retrain_job(_config(args), args.config, args.set or [], args.repo, args.webhook,
                      out=None if args.quiet else sys.stdout)

    def interrupt(signum, frame):          # a scheduler's SIGTERM stops the step in progress
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        outcome = job.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if outcome.exit_code:
        print(f"recfunnel retrain: {outcome.message} (job record {job.record_path})",
              file=sys.stderr)
    return outcome.exit_code


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
    train.add_argument("--window-sweep", action="store_true",
                       help="also train on growing windows (models.window_sweep_days) and record "
                            "the metric against steps and window size (L1.2)")
    train.set_defaults(func=cmd_train)

    evaluate = with_config(sub.add_parser("evaluate", help="score a run's trained models offline "
                                          "(metrics.json and the report)"))
    evaluate.add_argument("--run-name", help="the run whose models to evaluate")
    evaluate.set_defaults(func=cmd_evaluate)

    data = sub.add_parser("data", help="data sources").add_subparsers(dest="action", required=True)
    gen = with_config(data.add_parser("generate", help="write the synthetic data set"))
    gen.add_argument("--out", required=True, help="output folder")
    gen.set_defaults(func=cmd_data_generate)
    val = with_config(data.add_parser("validate", help="load and validate the configured source"))
    val.add_argument("--out", required=True, help="folder for clean tables and the quarantine")
    val.set_defaults(func=cmd_data_validate)

    export = sub.add_parser("export", help="write a run's trained version into a Triton model "
                            "repository (or retire a version: rollback)")
    export.add_argument("--run-name", help="the run whose trained version to export")
    export.add_argument("--runs-dir", default="runs", help="where the runs are (default runs)")
    export.add_argument("--repo", help="the repository (default runs/<run>/triton_repo)")
    export.add_argument("--version", type=int, help="Triton version number (default: next)")
    export.add_argument("--retire", type=int, metavar="N",
                        help="remove Triton version N from every model instead (rollback)")
    export.add_argument("--max-users", type=int,
                        help="users per request at most (default: the run config's "
                             "serving.max_users)")
    export.add_argument("--keep", type=int,
                        help="versions kept in the repository (default: the run config's "
                             "serving.keep_versions)")
    export.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting of the run's config, e.g. funnel.candidates_k=300")
    export.set_defaults(func=cmd_export)

    features = sub.add_parser("features", help="the served feature tables").add_subparsers(
        dest="action", required=True)
    refresh = features.add_parser("refresh", help="rebuild a run's served user and item tables "
                                  "from the newest events, without retraining (export runs it)")
    refresh.add_argument("--run-name", required=True, help="the run whose tables to refresh")
    refresh.add_argument("--runs-dir", default="runs", help="where the runs are (default runs)")
    refresh.add_argument("--events", help="new events (parquet file or folder, the event "
                         "schema) to count beside the run's history")
    refresh.set_defaults(func=cmd_features_refresh)

    serve = sub.add_parser("serve", help="serve an exported repository with tritonserver")
    serve.add_argument("--run-name", help="serve runs/<run>/triton_repo")
    serve.add_argument("--runs-dir", default="runs", help="where the runs are (default runs)")
    serve.add_argument("--repo", help="the repository to serve (instead of --run-name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    serve.add_argument("--http-port", type=int, default=8000, help="0: any free port")
    serve.add_argument("--grpc-port", type=int, default=8001, help="0: any free port")
    serve.add_argument("--metrics-port", type=int, default=8002, help="0: any free port")
    serve.add_argument("--poll-secs", type=int, default=2,
                       help="how often Triton looks for new or retired versions")
    serve.add_argument("--log", help="server log file (default: a new file in the temp folder)")
    serve.set_defaults(func=cmd_serve)

    recommend = sub.add_parser("recommend", help="ask a running server for recommendations")
    recommend.add_argument("--user", type=int, action="append", required=True,
                           help="raw user id (repeat for several)")
    recommend.add_argument("--k", type=int, help="list length (default: the config's eval_k)")
    recommend.add_argument("--url", default="127.0.0.1:8000", help="the server's host:port")
    recommend.add_argument("--protocol", choices=("http", "grpc"), default="http")
    recommend.add_argument("--timeout", type=float, default=30.0, help="seconds")
    recommend.set_defaults(func=cmd_recommend)

    experiment = sub.add_parser("experiment", help="online experiments: A/B tests with a "
                                "holdout").add_subparsers(dest="action", required=True)
    ab = with_config(experiment.add_parser(
        "ab", help="simulated A/B test through the served funnel; decision and report"))
    ab.add_argument("--run-name", help="the run whose trained funnel to test")
    ab.set_defaults(func=cmd_experiment_ab)
    loop = with_config(experiment.add_parser(
        "loop", help="retrain on the system's own logs for some rounds, holdout on round 0"))
    loop.add_argument("--run-name", help="the run to start from (its trained funnel)")
    loop.add_argument("--rounds", type=int, help="retrains (default experiments.feedback_rounds)")
    loop.set_defaults(func=cmd_experiment_loop)
    for action, func, text in (("start", cmd_experiment_start, "assign arms on a served "
                                "repository (experiments section of the config)"),
                               ("stop", cmd_experiment_stop, "end the experiment: everyone "
                                "gets the newest version")):
        p = with_config(experiment.add_parser(action, help=text))
        p.add_argument("--run-name", help="the run whose repository (runs/<run>/triton_repo)")
        p.add_argument("--runs-dir", default="runs", help="where the runs are (default runs)")
        p.add_argument("--repo", help="the served repository (instead of --run-name)")
        p.set_defaults(func=func)

    retrain = with_config(sub.add_parser(
        "retrain", help="retrain as a job: the pipeline's steps into a new run with retries and "
                        "timeouts, a quality gate, promotion into the served repository, an alert "
                        "when it fails (exit 0 promoted, 3 a step failed, 4 the gate refused)"))
    retrain.add_argument("--run-name", help="the served run (default run.name): its triton_repo "
                         "is served, its retrain/ folder gets the job's record")
    retrain.add_argument("--repo", help="the served repository (default retrain.repo, else "
                         "runs/<run>/triton_repo)")
    retrain.add_argument("--webhook", help="URL to POST the alert to (default "
                         "retrain.alert_webhook)")
    retrain.set_defaults(func=cmd_retrain)

    sub.add_parser("schema", help="print the event schema").set_defaults(func=cmd_schema)
    return parser


# Notes TensorFlow, absl and Merlin print at start-up and on every save, which say nothing a
# user of this pipeline can act on (RECFUNNEL_LIBRARY_WARNINGS=1 shows them again).
LIBRARY_NOISE = ("PyTorch dtype mappings did not load", ".*NVTabular Dataset (in|to) CPU mode")
NOISY_LOGGERS = ("tensorflow", "absl")


def quiet_libraries() -> None:
    # TensorFlow's C++ start-up notes (CPU instructions, placeholder aborts) are not for users.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("RECFUNNEL_LIBRARY_WARNINGS") == "1":
        return
    for message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=message)
    for name in NOISY_LOGGERS:         # "Please fix your imports", "Found untraced functions"
        # a filter, not a level: absl resets its logger's level from its flags when it loads
        logging.getLogger(name).addFilter(lambda record: record.levelno >= logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - sorted below into user errors and the rest
        import yaml

        if isinstance(err, yaml.YAMLError):     # a config file or --set value: where, one line
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            err = ConfigError(f"the config (file or --set value) is not valid YAML{where}: "
                              f"{getattr(err, 'problem', None) or err}")
        if not isinstance(err, USER_ERRORS):
            raise
        print(f"recfunnel: error: {err}", file=sys.stderr)
        return 2
