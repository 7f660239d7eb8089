"""The main job: one run of the whole pipeline, driven by one config, writing one run folder.

`runs/<run>/` holds `config.yaml` (the resolved settings), `summary.json` (one section per part
of the pipeline: data, dataset, models, evaluation, serving, experiments) and `report.html`.
Each step adds its section.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from recfunnel import __version__, preflight, report
from recfunnel.audit import StepObserver, TruthAudit
from recfunnel.config import Config, ConfigError, load_config, merge
from recfunnel.data import sources
from recfunnel.evaluation.offline import Predictions, evaluate
from recfunnel.experiments.ab_test import run_ab_test
from recfunnel.serving.export import export_trained, served_metrics
from recfunnel.serving.funnel_client import serving_summary

STEPS = ("data", "dataset", "models", "evaluation", "serving", "experiments")
# Known steps that run only when asked for (`--steps window_sweep`, `recfunnel train --window-sweep`).
OPTIONAL_STEPS = ("window_sweep",)


def run_dir_for(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.data.source}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    return Path(cfg.run.runs_dir) / name


def run_pipeline(cfg: Config, steps: tuple[str, ...] = STEPS, progress: bool = True,
                 observers: tuple[StepObserver, ...] | None = None) -> Path:
    """Runs `steps` into the run's folder; after each, every observer (default: the truth
    audit, which adds nothing without a synthetic truth) sees its section from the side."""
    observers = (TruthAudit(),) if observers is None else observers
    unknown = [s for s in steps if s not in STEPS + OPTIONAL_STEPS]
    if unknown:
        raise ConfigError(f"unknown pipeline step(s) {unknown}; known steps: "
                         f"{', '.join(STEPS + OPTIONAL_STEPS)}")
    run_dir = run_dir_for(cfg)
    preflight.check(cfg, run_dir, steps)     # a given setting the data cannot honour: exit 2 now
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # Steps run as separate batch jobs add their sections to the run's existing summary.
    previous = run_dir / "summary.json"
    summary = json.loads(previous.read_text()) if previous.is_file() else {}
    timings = summary.get("run", {}).get("timings_s", {})
    summary["run"] = {"name": run_dir.name, "started": datetime.now(timezone.utc).isoformat(),
                      "recfunnel_version": __version__, "steps": list(steps), "timings_s": timings}
    for name in (s for s in STEPS + OPTIONAL_STEPS if s in steps):
        t = time.perf_counter()
        section = STEP_FUNCTIONS[name](cfg, run_dir, summary, progress)
        for observer in observers:
            observer.after_step(name, cfg, run_dir, section)
        if name == "window_sweep":            # part of the models section
            summary.setdefault("models", {})["window_sweep"] = section
        else:
            summary[name] = section
        summary["run"]["timings_s"][name] = round(time.perf_counter() - t, 2)
        write_summary(run_dir, summary)   # after every step: later steps (export) read it, and
                                          # a failing step keeps the sections before it
    write_summary(run_dir, summary)
    report.write_report(run_dir, summary)
    return run_dir


def data_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """The configured source, materialized and validated into `data/` (recfunnel.data)."""
    cache = Path(cfg.run.cache_dir) if cfg.run.cache_dir else None
    raw = sources.materialize(cfg.data, run_dir, cache_dir=cache, progress=progress)
    section = sources.validate_source(raw, run_dir / "data", cfg.validation, progress=progress)
    section["path"] = "data"          # relative: the run folder can be moved
    return section


def models_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """Trains every model of the funnel on the run's dataset (models/)."""
    import recfunnel.workflows  # noqa: F401  (Merlin fixes before any Merlin code runs)
    from recfunnel.models.funnel import FunnelSettings
    from recfunnel.models.train import train_all

    if not (run_dir / "dataset" / "train").is_dir():
        raise FileNotFoundError(f"{run_dir / 'dataset'} has no training split; run the dataset "
                                "step first (recfunnel pipeline run --steps dataset,models)")
    cutoffs = summary.get("dataset", {}).get("cutoffs", {})
    as_of = pd.Timestamp(cutoffs["data_end"]) if "data_end" in cutoffs else None
    # the offline evaluation ranks for the test period as of its start (a time split), knowing
    # no test event; a random split has no such moment: as of the end, test pairs left out
    offline_as_of = pd.Timestamp(cutoffs["valid_end"]) if cutoffs.get("split") == "time" \
        else None
    section = train_all(run_dir / "dataset", run_dir / "models", cfg.models,
                        FunnelSettings.from_config(cfg), progress=progress, as_of=as_of,
                        offline_as_of=offline_as_of)
    section["path"] = str(Path("models") / section["version"])
    return section


def evaluation_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """Every model's predictions on the test split (models/, TensorFlow), then their scoring in
    plain numpy/pandas (recfunnel.evaluation): `evaluation/metrics.json` and the section."""
    import recfunnel.workflows  # noqa: F401
    from recfunnel.models.funnel import FunnelSettings
    from recfunnel.models.predict import write_predictions

    models = summary.get("models")
    if not models or "path" not in models:
        raise FileNotFoundError(f"{run_dir}: no trained models in the summary; run the models "
                                "step first (recfunnel pipeline run --steps models,evaluation)")
    version_dir = run_dir / models["path"]
    out = run_dir / "evaluation"
    info = write_predictions(run_dir / "dataset", version_dir, out / "predictions", cfg.models,
                             FunnelSettings.from_config(cfg), progress=progress)
    # the catalogue the funnel can serve: the items of the version's feature table
    catalogue = pd.read_parquet(version_dir / "features" / "item_features.parquet",
                                columns=["item_id_raw"]).rename(columns={"item_id_raw": "item_id"})
    predictions = Predictions.load(out / "predictions")
    # synthetic data: the lists judged by the truth too (slices and stages gain its columns)
    truth, relevance_rows = TruthAudit().evaluation_truth(run_dir, predictions,
                                                          cfg.models.eval_k)
    metrics = evaluate(predictions, pd.read_parquet(run_dir / "data" / "users.parquet"),
                       catalogue["item_id"].to_numpy(), cfg.models.eval_k, cfg.models.objectives,
                       cfg.evaluation.min_group_users, cfg.evaluation.head_share, truth,
                       relevance_rows)
    metrics["predictions"] = info
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return evaluation_section(metrics)


def evaluation_section(metrics: dict) -> dict:
    """The summary's `evaluation`: overall metrics per model, the funnel's cuts, each ranking
    stage against its input (`stages`, `worse` flagged), how much of each list the logging
    policy showed (`exposure`), ranker AUCs, bias curve points and flags, the worst slices;
    every other number is in metrics.json."""
    rankers = {name: {obj: {k: m.get(k) for k in ("roc_auc", "pr_auc", "logloss")}
                      for obj, m in by_obj.items()} for name, by_obj in metrics["rankers"].items()}
    bias = {name: {"concentration_curve": b["concentration_curve"],
                   **{k: b.get(k) for k in ("coverage", "gini", "popularity_lift",
                                            "long_tail_share")}}
            for name, b in metrics["bias"].items()}
    return {"k": metrics["k"], "users": metrics["users"], "users_known": metrics["users_known"],
            "users_fallback": metrics["users_fallback"], "models": metrics["models"],
            "funnel": metrics["funnel"], "stages": metrics.get("stages", []),
            "exposure": metrics.get("exposure"), "rankers": rankers, "bias": bias,
            "bias_flags": metrics["bias_flags"], "truth": metrics.get("truth"),
            "worst_groups": [g for g in metrics["worst_groups"] if not g.get("too_small")],
            "metrics_path": "evaluation/metrics.json"}


def window_sweep_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """The models trained on growing windows of the run's training data (L1.2)."""
    import recfunnel.workflows  # noqa: F401
    from recfunnel.models.window_sweep import window_sweep

    dataset = summary.get("dataset")
    if not dataset or not (run_dir / "dataset" / "train").is_dir():
        raise FileNotFoundError(f"{run_dir / 'dataset'} has no training split; run the dataset "
                                "step first")
    return window_sweep(run_dir / "dataset", pd.Timestamp(dataset["cutoffs"]["train_end"]),
                        cfg.models, progress=progress)


def dataset_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """The NVTabular dataset build (workflows/)."""
    from recfunnel.workflows.backend import dask_client
    from recfunnel.workflows.dataset import DatasetBuilder

    if not (run_dir / "data" / "events").is_dir():
        raise FileNotFoundError(f"{run_dir / 'data'} has no validated events; run the data step "
                                "first (recfunnel pipeline run --steps data,dataset)")
    out = run_dir / "dataset"
    with dask_client(cfg.compute):
        builder = DatasetBuilder(cfg.dataset, cfg.compute, run_dir / "data", out,
                                 progress=progress)
        section = builder.build()
    section["path"] = "dataset"
    section["warnings"] = builder.warnings
    return section


def serving_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """Exports the trained version into `runs/<run>/triton_repo`, serves it with a real
    tritonserver, asks it for a few known users and two unknown ones (the fallback path),
    stops it: latency percentiles and the error count (recfunnel.serving)."""
    models = summary.get("models")
    if not models or "path" not in models:
        raise FileNotFoundError(f"{run_dir}: no trained models in the summary; run the models "
                                "step first (recfunnel pipeline run --steps models,serving)")
    known = pd.read_parquet(run_dir / models["path"] / "features" / "user_features.parquet",
                            columns=["user_id_raw"])["user_id_raw"].to_numpy()
    known = known[known >= 0]
    users = [*known[:cfg.serving.demo_users].tolist(), int(known.max()) + 1, int(known.max()) + 2]
    exported = export_trained(run_dir / models["path"], run_dir / "dataset", cfg,
                              run_dir / "triton_repo", origin=f"{run_dir.name}/{models['path']}",
                              evaluation=served_metrics(summary.get("evaluation")))
    return serving_summary(exported, run_dir, users, cfg.models.eval_k,
                           cfg.serving.startup_timeout_s)


def experiments_step(cfg: Config, run_dir: Path, summary: dict, progress: bool) -> dict:
    """A simulated online A/B test through the served funnel (arms and holdout assigned by the
    server), its decision with intervals, and offline vs online metrics (recfunnel.experiments).
    Needs the synthetic source's ground truth to simulate users; other sources skip it."""
    if summary.get("data", {}).get("source") != "synthetic":
        return {"skipped": "simulated users need the synthetic source's ground truth "
                           f"(data.source is {cfg.data.source!r})"}
    if "path" not in summary.get("models", {}):
        raise FileNotFoundError(f"{run_dir}: no trained models in the summary; run the models "
                                "step first (recfunnel pipeline run --steps models,experiments)")
    served = summary.get("serving", {})
    exported = (run_dir / served["repo"], served["triton_version"]) if "repo" in served else None
    return run_ab_test(run_dir, cfg, progress=progress, exported=exported)


def retrain_on_logs(cfg: Config, progress: bool = True):
    """The feedback loop's retrain (recfunnel.experiments.feedback_loop.Retrain): the data,
    dataset and models steps of `cfg` on a folder of logged tables, read as the parquet source,
    into <runs_dir>/<name>; returns that run's folder."""
    def retrain(logs: Path, runs_dir: Path, name: str) -> Path:
        round_cfg = load_config(None, merge(cfg.to_dict(), {
            "data": {"source": "parquet", "path": str(logs)},
            "run": {"runs_dir": str(runs_dir), "name": name}}))
        return run_pipeline(round_cfg, steps=("data", "dataset", "models"), progress=progress)
    return retrain


STEP_FUNCTIONS = {"data": data_step, "dataset": dataset_step, "models": models_step,
                  "evaluation": evaluation_step, "serving": serving_step,
                  "experiments": experiments_step, "window_sweep": window_sweep_step}


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(run_dir / "summary.json")
