"""The main job: one run of the whole pipeline, driven by one config, writing one run folder.

`runs/<run>/` holds `config.yaml` (the resolved settings), `summary.json` (one section per part
of the pipeline: data, dataset, models, evaluation, serving, experiments) and `report.html`.
Each part adds its section; the steps so far: data, dataset, models.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from recfunnel import __version__, report
from recfunnel.config import Config
from recfunnel.data import sources

STEPS = ("data", "dataset", "models")


def run_dir_for(cfg: Config) -> Path:
    name = cfg.run.name or f"{cfg.data.source}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    return Path(cfg.run.runs_dir) / name


def run_pipeline(cfg: Config, steps: tuple[str, ...] = STEPS, progress: bool = True) -> Path:
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown pipeline step(s) {unknown}; known steps: {', '.join(STEPS)}")
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    # Steps run as separate batch jobs add their sections to the run's existing summary.
    previous = run_dir / "summary.json"
    summary = json.loads(previous.read_text()) if previous.is_file() else {}
    timings = summary.get("run", {}).get("timings_s", {})
    summary["run"] = {"name": run_dir.name, "started": datetime.now(timezone.utc).isoformat(),
                      "recfunnel_version": __version__, "steps": list(steps), "timings_s": timings}
    cache = Path(cfg.run.cache_dir) if cfg.run.cache_dir else None
    if "data" in steps:
        t = time.perf_counter()
        raw = sources.materialize(cfg.data, run_dir, cache_dir=cache, progress=progress)
        summary["data"] = sources.validate_source(raw, run_dir / "data", cfg.validation,
                                                  progress=progress)
        summary["data"]["path"] = "data"          # relative: the run folder can be moved
        summary["run"]["timings_s"]["data"] = round(time.perf_counter() - t, 2)
    if "dataset" in steps:
        t = time.perf_counter()
        summary["dataset"] = dataset_step(cfg, run_dir, summary.get("data"), progress)
        summary["run"]["timings_s"]["dataset"] = round(time.perf_counter() - t, 2)
    if "models" in steps:
        t = time.perf_counter()
        summary["models"] = models_step(cfg, run_dir, progress)
        summary["run"]["timings_s"]["models"] = round(time.perf_counter() - t, 2)
    write_summary(run_dir, summary)
    report.write_report(run_dir, summary)
    return run_dir


def models_step(cfg: Config, run_dir: Path, progress: bool) -> dict:
    """Trains every model of the funnel on the run's dataset (models/)."""
    import workflows  # noqa: F401  (Merlin fixes before any Merlin code runs)
    from models.train import train_all

    if not (run_dir / "dataset" / "train").is_dir():
        raise FileNotFoundError(f"{run_dir / 'dataset'} has no training split; run the dataset "
                                "step first (recfunnel pipeline run --steps dataset,models)")
    section = train_all(run_dir / "dataset", run_dir / "models", cfg.models, progress=progress)
    section["path"] = str(Path("models") / section["version"])
    return section


def dataset_step(cfg: Config, run_dir: Path, data: dict | None, progress: bool) -> dict:
    """The NVTabular dataset build (workflows/), scored against the truth when there is one."""
    from workflows.backend import dask_client
    from workflows.dataset import DatasetBuilder, read_split

    if not (run_dir / "data" / "events").is_dir():
        raise FileNotFoundError(f"{run_dir / 'data'} has no validated events; run the data step "
                                "first (recfunnel pipeline run --steps data,dataset)")
    out = run_dir / "dataset"
    with dask_client(cfg.compute):
        section = DatasetBuilder(cfg.dataset, cfg.compute, run_dir / "data", out,
                                 progress=progress).build()
    section["path"] = "dataset"
    truth = run_dir / "data" / "truth"
    if truth.is_dir():
        from recfunnel.data import truth_audit
        from recfunnel.data.synthetic import World

        world = World.load(truth)
        artifacts = out / "artifacts"
        section["duplicates"].update(truth_audit.duplicate_detection(
            pd.read_parquet(artifacts / "canonical_items.parquet"), world))
        section["unsafe"].update(truth_audit.unsafe_detection(
            pd.read_parquet(artifacts / "unsafe_items.parquet"), world))
        train = read_split(out / "train", ["user_id_raw", "item_id_raw", "timestamp",
                                           "sampled_negative", *truth_audit.LABELS])
        section["labels_vs_truth"] = truth_audit.label_audit(
            train[train["sampled_negative"] == 0], world, cfg.dataset.duration_edges)
    return section


def write_summary(run_dir: Path, summary: dict) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(run_dir / "summary.json")
