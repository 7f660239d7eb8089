"""Diminishing returns of history (L1.2): the same models trained on growing training windows.

For each window of D days before the cut-off, the two-tower and the heavy ranker train on the
training rows of those days only and are measured on the one validation split every window
shares (so the figures compare). Each window's metric is recorded per epoch against training
steps, and its best value against the window size: where the curve flattens, more history buys
little but costs training time and drags stale tastes in.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from recfunnel.models.data import Splits
from recfunnel.models.train import RETRIEVAL
from recfunnel.config import ModelsConfig


def window_sweep(dataset_dir: Path, train_end: pd.Timestamp, cfg: ModelsConfig,
                 days: list[int] | None = None, progress: bool = True,
                 splits: Splits | None = None) -> dict:
    """Returns the summary's `models.window_sweep`: per window, its training rows, and per model
    the validation metric per epoch (with cumulative steps) and the best one. `splits`, when
    given, stands for the dataset in `dataset_dir`."""
    from tqdm.auto import tqdm

    from recfunnel.models.ranking import train_ranker
    from recfunnel.models.retrieval import train_retrieval

    splits = splits or Splits.load(dataset_dir)
    train_end = pd.Timestamp(train_end).tz_localize(None)
    stamps = pd.to_datetime(splits.train["timestamp"]).dt.tz_localize(None)
    first_day = stamps.min().normalize()
    days = sorted(days or cfg.window_sweep_days)
    unknown = set(cfg.window_sweep_models) - {*RETRIEVAL, "light_ranker", "heavy_ranker"}
    if unknown:
        raise ValueError(f"models.window_sweep_models: unknown {sorted(unknown)}; choose from "
                         f"{[*RETRIEVAL, 'light_ranker', 'heavy_ranker']}")
    metrics = {name: f"val_recall@{cfg.eval_k}" if name in RETRIEVAL
               else f"val_auc_{cfg.retrieval_positive}" for name in cfg.window_sweep_models}
    windows = []
    bar = tqdm(days, desc="window sweep", unit="window", disable=not progress)
    for d in bar:
        bar.set_postfix_str(f"{d} days")
        start = train_end - pd.Timedelta(days=d)
        sub = replace(splits, train=splits.train[(stamps >= start).to_numpy()])
        positives = len(sub.positives(sub.train, cfg.retrieval_positive))
        row = {"days": d, "available": bool(start >= first_day), "train_rows": int(len(sub.train)),
               "train_positives": int(positives), "models": {}}
        for name in cfg.window_sweep_models:
            with tempfile.TemporaryDirectory() as tmp:
                if name in RETRIEVAL:
                    result = train_retrieval(name, sub, cfg, Path(tmp), "sweep")
                    steps = math.ceil(positives / cfg.retrieval_batch_size)
                else:
                    result = train_ranker(name.removesuffix("_ranker"), sub, cfg, Path(tmp),
                                          "sweep")
                    steps = math.ceil(len(sub.train) / cfg.ranker_batch_size)
            row["models"][name] = _curve(result.history, metrics[name], steps,
                                         result.train_seconds)
        windows.append(row)
    return {"train_end": train_end.isoformat(), "first_training_day": first_day.isoformat(),
            "metrics": metrics,
            "windows": windows}


def _curve(history: list[dict], metric: str, steps_per_epoch: int, seconds: float) -> dict:
    points = [{"epoch": h["epoch"], "steps": h["epoch"] * steps_per_epoch, "value": h.get(metric)}
              for h in history]
    values = [p["value"] for p in points if p["value"] is not None]
    return {"metric": metric, "best": max(values) if values else None, "points": points,
            "train_seconds": seconds}
