"""The small run the notebooks share: settings that finish in minutes on 2 cores, and its folder.

01 builds the run from scratch; 02 to 05 reuse it, and build the steps they need when it
is missing. The runs folder is $RECFUNNEL_NOTEBOOK_RUNS when set (the tests point it at a temp
dir), else `runs/` in the clone; the run itself is `notebook-small` in it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Jupyter starts a kernel in notebooks/; the clone goes on the path as `make shell` would put it.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")      # TensorFlow's start-up chatter

from recfunnel.config import Config, load_config, merge  # noqa: E402
from recfunnel.pipeline import run_dir_for, run_pipeline  # noqa: E402

RUNS_ENV = "RECFUNNEL_NOTEBOOK_RUNS"
RUN_NAME = "notebook-small"
# Close to the pipeline test's small settings: 300 users, 200 items, 12 days, one epoch per model;
# batches of 128 give the models some fifty steps in that epoch (1024 would give two to seven).
SMALL = {
    "data": {"synthetic": {"n_users": 300, "n_items": 200, "n_events": 12_000, "n_days": 12}},
    # A window of 4 of the 6 training days, so that the freshness step visibly drops some.
    "dataset": {"active_min_events": 3, "window_days": 4,
                # 200 items hold too few flagged titles to train the title classifier on
                "unsafe_filters": [{"kind": "flag"}]},
    # One heavy ranker, not the demo's three members (each costs another training)
    "models": {"retrieval_epochs": 1, "mf_epochs": 1, "ranker_epochs": 1,
               "retrieval_batch_size": 128, "ranker_batch_size": 128, "heavy_ranker_members": 1},
}
# What each step needs before it can run.
NEEDS = {"data": (), "dataset": ("data",), "models": ("data", "dataset"),
         "evaluation": ("data", "dataset", "models"), "serving": ("data", "dataset", "models"),
         # the A/B test compares the online results with the evaluation's offline metrics
         "experiments": ("data", "dataset", "models", "evaluation")}


def runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV) or REPO / "runs")


def small_config(overrides: dict | None = None) -> Config:
    """configs/default.yaml with the small settings, in the notebooks' run, then `overrides`."""
    values = merge(SMALL, {"run": {"name": RUN_NAME, "runs_dir": str(runs_dir())}})
    return load_config(REPO / "configs" / "default.yaml", merge(values, overrides or {}))


def run_config() -> Config:
    """The settings the existing run was built with (its config.yaml), or the small ones."""
    saved = runs_dir() / RUN_NAME / "config.yaml"
    if not saved.is_file():
        return small_config()
    return load_config(saved, {"run": {"runs_dir": str(runs_dir())}})


def fresh_run(cfg: Config) -> Path:
    """An empty run folder: sections of an earlier run must not outlive the data they came from."""
    shutil.rmtree(run_dir_for(cfg), ignore_errors=True)
    return run_dir_for(cfg)


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def prepare(cfg: Config, step: str) -> Path:
    """The run folder with every step `step` needs: reused when the summary has it, else built."""
    run_dir = run_dir_for(cfg)
    done = read_summary(run_dir)
    missing = tuple(s for s in NEEDS[step] if s not in done)
    if missing:
        print(f"{run_dir}: building {', '.join(missing)} first (run 01/02 to see how)")
        run_pipeline(cfg, steps=missing)
    else:
        print(f"{run_dir}: reusing {', '.join(NEEDS[step]) or 'nothing'} from earlier notebooks")
    return run_dir
