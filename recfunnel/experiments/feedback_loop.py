"""The feedback loop (L8.2): a recommender retrained on the logs it produced itself, round by round.

Round 0 serves the run's trained funnel to every simulated user for `sim_days` days. Each later
round retrains the whole funnel (the real pipeline: validation, NVTabular dataset, training) on
the original events plus everything the simulation logged so far, and serves the new version
to the treated users, while the long-term holdout (the experiment's holdout users) keeps the
round-0 version throughout. Per round: the popularity bias of what the treated users were
shown (concentration curve, Gini, coverage) and both groups' time spent and true relevance, so
a drift of the loop shows against the holdout. Runs in process; a round takes the pipeline's
time (minutes on the demo data), so it is its own command: `recfunnel experiment loop`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from recfunnel.models.funnel import Funnel, FunnelSettings
from recfunnel.data import schema
from recfunnel.data.synthetic import World
from recfunnel.evaluation.bias import gini_index, top_items_share
from recfunnel.experiments import stats
from recfunnel.experiments.assignment import HOLDOUT, in_holdout
from recfunnel.experiments.simulator import (SimulationSettings, online_metrics,
                                             shown_relevance, simulate)
from recfunnel.serving.export import exclusions_from_dataset

# % of the catalogue (most shown first) at which the concentration curve is read: dense at the
# head, where a funnel's impressions are (on the demo all of them fall in the top 10 %)
CURVE_AT_PERCENT = (0, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100)
# retrains the funnel on a folder of logged tables (the parquet source's layout) into
# <runs_dir>/<name> and returns that run's folder: the pipeline's data, dataset and models steps
Retrain = Callable[[Path, Path, str], Path]


def concentration(items: np.ndarray, n_catalogue: int) -> dict:
    """Popularity concentration of impressions (recfunnel.evaluation.bias): the cumulative % of
    impressions taken by the most-shown items (0..100 % of the catalogue), Gini over the
    catalogue, coverage and the top-10 % items' share."""
    counts = np.bincount(items, minlength=n_catalogue + 1)[1:]
    curve = top_items_share(counts, np.array(CURVE_AT_PERCENT) / 100)
    return {"concentration": np.round(curve * 100, 2).tolist(),
            "concentration_at_percent": list(CURVE_AT_PERCENT),
            "gini": _round(gini_index(counts)), "coverage": round(float((counts > 0).mean()), 4),
            "top10pct_share": round(float(top_items_share(counts, [0.1])[0]), 4)}


class InProcessFunnel:
    """One training version recommending in this process, as the served funnel would (same
    exclusions: the version's dataset positives and unsafe items)."""

    def __init__(self, run_dir: Path, cfg):
        summary = json.loads((run_dir / "summary.json").read_text())
        seen, unsafe = exclusions_from_dataset(run_dir / "dataset",
                                               cfg.models.retrieval_positive)
        by_user = {int(u): i.to_numpy(np.int64)
                   for u, i in seen.groupby("user_id_raw")["item_id_raw"]}
        self.funnel = Funnel(run_dir / summary["models"]["path"],
                             FunnelSettings.from_config(cfg),
                             unsafe_raw=unsafe, seen=by_user)
        self.version = self.funnel.version

    def lists(self, users: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
        k = min(k, self.funnel.catalogue_size)
        out = np.full((users.size, k), -1, np.int64)
        for s in range(0, users.size, batch):
            out[s:s + batch] = self.funnel.recommend(users[s:s + batch], k).items
        return out


def run_feedback_loop(run_dir: str | Path, cfg, retrain: Retrain, rounds: int | None = None,
                      progress: bool = True) -> dict:
    """`rounds` retrains (default experiments.feedback_rounds) after round 0, each by `retrain`
    (the CLI passes the pipeline's, recfunnel.pipeline.retrain_on_logs); writes
    `experiments/feedback_loop/` (per round: its run, logs, metrics) and returns the section."""
    run_dir = Path(run_dir).resolve()
    rounds = cfg.experiments.feedback_rounds if rounds is None else rounds
    world = World.load(run_dir / "data" / "truth")
    out = run_dir / "experiments" / "feedback_loop"
    shutil.rmtree(out, ignore_errors=True)
    logs = out / "data"
    (logs / "events").mkdir(parents=True)
    for name in ("users", "items"):
        shutil.copy2(run_dir / "data" / f"{name}.parquet", logs / f"{name}.parquet")
    for part in sorted((run_dir / "data" / "events").glob("*.parquet")):
        shutil.copy2(part, logs / "events" / f"original-{part.name}")
    users = world.users["user_id"].to_numpy(np.int64)
    held_out = in_holdout(users, cfg.experiments.feedback_holdout_share)
    settings = SimulationSettings(days=cfg.experiments.sim_days, k=cfg.experiments.sim_k,
                                  seed=cfg.experiments.seed)
    first = current = InProcessFunnel(run_dir, cfg)
    results = []
    for r in range(rounds + 1):
        if r > 0:                   # retrain on everything logged so far
            current = InProcessFunnel(retrain(logs, out / "runs", f"round-{r}"), cfg)
        start_day = world.config.n_days + r * settings.days
        served = {"treated": current, HOLDOUT: first}

        def recommend(asked, day, k, served=served):
            lists = np.full((asked.size, k), -1, np.int64)
            arm = np.where(held_out[asked - 1], HOLDOUT, "treated").astype(object)
            for group, funnel in served.items():
                rows = arm == group
                if rows.any():
                    lists[rows] = funnel.lists(asked[rows], k)
            return lists, arm, np.full(asked.size, r, np.int64)

        settings.seed = cfg.experiments.seed + r
        log = simulate(world, recommend, users, start_day, settings, progress=progress,
                       description=f"feedback loop round {r}")
        log.events[schema.EVENTS.names].to_parquet(logs / "events" / f"round-{r}.parquet",
                                                    index=False)
        results.append(_round_metrics(r, current.version, log, world, cfg.experiments.alpha))
    section = {"rounds": results, "holdout_users": int(held_out.sum()),
               "users": int(users.size), "days_per_round": settings.days,
               "description": (
                   f"{rounds} retrains on the system's own logs; round 0 is the run's funnel. "
                   f"The holdout ({int(held_out.sum())} users, "
                   f"{cfg.experiments.feedback_holdout_share:.0%}) stays on round 0's version; "
                   "every round's users start active.")}
    (out / "feedback_loop.json").write_text(json.dumps(section, indent=2))
    return section


def _round_metrics(r: int, version: str, log, world, alpha: float) -> dict:
    events = log.events
    outcomes = log.outcomes
    relevance = shown_relevance(events, world)
    metrics = online_metrics(log.outcomes)
    row = {"round": r, "version": version}
    for group in ("treated", HOLDOUT):
        mine = (events["arm"] == group).to_numpy()
        row[group] = {
            "users": int(metrics.loc[group, "users"]) if group in metrics.index else 0,
            "watch_seconds_per_user": _metric(metrics, group, "watch_seconds_per_user"),
            "likes_per_user": _metric(metrics, group, "likes_per_user"),
            "churn_rate": _metric(metrics, group, "churn_rate"),
            "true_relevance": round(float(relevance[mine].mean()), 4) if mine.any() else None,
            **concentration(events.loc[mine, "item_id"].to_numpy(), len(world.items))}
    treated, held = (outcomes.loc[outcomes["arm"] == g, "watch_seconds"]
                     for g in ("treated", HOLDOUT))
    if len(treated) > 1 and len(held) > 1 and (treated.std() > 0 or held.std() > 0):
        # the holdout as control: the lift the loop's model has over round 0's
        test = stats.welch_ttest(held, treated, alpha, metric="watch_seconds_per_user")
        row["treated_vs_holdout"] = {"lift": _round(test.lift), "p_value": _round(test.p_value),
                                     "lift_ci": [_round(test.lift_ci_low),
                                                 _round(test.lift_ci_high)]}
    return row


def _round(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def _metric(metrics: pd.DataFrame, group: str, name: str) -> float | None:
    return round(float(metrics.loc[group, name]), 4) if group in metrics.index else None
