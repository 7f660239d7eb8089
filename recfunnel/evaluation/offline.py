"""`recfunnel evaluate`: one run's models scored offline from their written predictions (L4, L6).

Reads what `models.predict` wrote (plain parquet/npz, raw ids) and computes, with numpy/pandas
only: top-K metrics of every candidate generator and of the whole funnel (full ranking, the
user's training and validation items excluded), the funnel's recall at each cut, each ranking
stage's order against its input's (stages), how much of each list the logging policy showed
(exposure), the rankers' AUC / PR-AUC / logloss per objective with their curves, every metric
per user group, and the popularity-bias measures of every model against the training data's own
concentration.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.components import DEFAULT_STAGE_LISTS, STAGES_FILE
from recfunnel.evaluation.bias import (ItemPopularity, concentration_curve, gini_index,
                                       popularity_bias_report, popularity_opportunity_bias)
from recfunnel.evaluation.ranker import pr_curve, ranker_metrics, roc_curve
from recfunnel.evaluation.slices import slice_metrics, user_groups, worst_groups
from recfunnel.evaluation.stages import (EXPOSURE_LISTS, Stage, exposure_report, shown_items,
                                         stage_report)
from recfunnel.topk import topk_metrics, topk_per_user

CANDIDATE_MODELS = ("two_tower", "mf", "ease", "popularity")
LISTS = (*CANDIDATE_MODELS, "funnel")


@dataclass
class Predictions:
    users: pd.DataFrame            # user_id_raw, path
    relevant: list[np.ndarray]     # per user, raw ids of test positives
    lists: dict[str, np.ndarray]   # name -> [n_users, width] raw item ids
    rankers: pd.DataFrame          # test rows: labels and <ranker>_<objective> scores
    train_items: pd.DataFrame      # training positives: user_id_raw, item_id_raw
    full_ranks: dict[str, pd.DataFrame] | None = None   # list -> row, item_id, rank (0-based)
    # the funnel's stages in order, each with the list it wrote (models.predict, stages.json)
    stages: list = field(default_factory=lambda: [list(s) for s in DEFAULT_STAGE_LISTS])

    def ranking_stages(self) -> list[Stage]:
        """Each ranker as a Stage: its input (the list before it) and its output."""
        return [Stage(name.replace("_", " "), before[1], list_name)
                for before, (name, list_name) in zip(self.stages, self.stages[1:])]

    @classmethod
    def load(cls, folder: Path) -> "Predictions":
        folder = Path(folder)
        missing = [f for f in ("users.parquet", "relevant.parquet", "lists.npz",
                               "rankers.parquet", "train_items.parquet")
                   if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {missing}; the evaluation step writes "
                                    "them from a trained version first")
        users = pd.read_parquet(folder / "users.parquet")
        rel = pd.read_parquet(folder / "relevant.parquet")
        by_user = rel.groupby("user_id_raw")["item_id_raw"].apply(np.asarray)
        relevant = [by_user.get(u, np.empty(0, np.int64)) for u in users["user_id_raw"]]
        with np.load(folder / "lists.npz") as z:
            lists = {name: z[name] for name in z.files}
        ranks = None
        if (folder / "positive_ranks.parquet").is_file():
            frame = pd.read_parquet(folder / "positive_ranks.parquet")
            ranks = {name: part.drop(columns="list").reset_index(drop=True)
                     for name, part in frame.groupby("list")}
        stages = (json.loads((folder / STAGES_FILE).read_text())
                  if (folder / STAGES_FILE).is_file() else [list(s) for s in DEFAULT_STAGE_LISTS])
        return cls(users, relevant, lists, pd.read_parquet(folder / "rankers.parquet"),
                   pd.read_parquet(folder / "train_items.parquet"), ranks, stages)


def evaluate(pred: Predictions, users_table: pd.DataFrame, catalogue: np.ndarray, k: int,
             objectives: list[str], min_users: int = 30, head_share: float = 0.8,
             truth=None, relevance_rows=None) -> dict:
    """Every number of the evaluation as JSON-ready values (the `metrics.json` of a run).

    On synthetic data, `truth` is `truth.lists_vs_truth`'s (summary, per-user frame): each
    list judged by the true relevance, added to the models and to the slices; and
    `relevance_rows` its lookup (0-based user indices -> [len, n_items] true relevance), with
    which the stages and the exposure are judged by the truth too."""
    known = (pred.users["path"] == "model").to_numpy()
    ids = pred.users["user_id_raw"].to_numpy()
    out = {"k": k, "users": int(len(ids)), "users_known": int(known.sum()),
           "users_fallback": int((~known).sum()), "models": {}, "funnel": {}}
    # top-K per candidate generator on the users it can serve; the funnel on everyone
    for name in LISTS:
        if name not in pred.lists:
            continue
        lists = pred.lists[name]
        rows = np.flatnonzero(known) if name in CANDIDATE_MODELS else np.arange(len(ids))
        rel = [pred.relevant[i] for i in rows]
        m = topk_metrics(lists[rows], rel, k)
        if lists.shape[1] > k:
            width = lists.shape[1]
            m[f"recall@{width}"] = topk_metrics(lists[rows], rel, width)[f"recall@{width}"]
        out["models"][name] = _rounded(m)
    # where the funnel loses relevant items (L6)
    stages = [(("candidates" if i == 0 else name.replace("_", " ")) +
               (" + blend" if i and i == len(pred.stages) - 1 else ""), list_name)
              for i, (name, list_name) in enumerate(pred.stages)]
    for stage, name in stages:
        if name in pred.lists:
            width = pred.lists[name].shape[1]
            m = topk_metrics(pred.lists[name], pred.relevant, width)
            out["funnel"][stage] = {"kept": width, f"recall": round(m[f"recall@{width}"], 4),
                                    "ndcg@k": round(topk_metrics(pred.lists[name], pred.relevant,
                                                                 min(k, width))
                                                    [f"ndcg@{min(k, width)}"], 4)}
    if "funnel" in pred.lists:
        for path in ("model", "fallback"):
            rows = np.flatnonzero(pred.users["path"].to_numpy() == path)
            if len(rows):
                m = topk_metrics(pred.lists["funnel"][rows], [pred.relevant[i] for i in rows], k)
                out["funnel"][f"path={path}"] = _rounded(m)
    # does each ranking stage improve on its input's order (L6)?
    out["stages"] = _json(stage_report(pred.lists, pred.relevant, k, users=ids,
                                       relevance_rows=relevance_rows,
                                       stages=pred.ranking_stages()))
    out["rankers"] = ranker_section(pred.rankers, objectives)
    # slices of the funnel's final lists (L4.2)
    activity = pred.train_items.groupby("user_id_raw").size()
    groups = user_groups(ids, users_table, activity)
    per_user = topk_per_user(pred.lists.get("funnel", pred.lists[LISTS[0]]), pred.relevant, k,
                             user_ids=ids)
    metrics = [f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}"]
    if truth is not None:
        summary, truth_users = truth
        out["truth"] = summary
        true_cols = [c for c in truth_users.columns if c != "user_id"]
        per_user = per_user.merge(truth_users, on="user_id", how="left")
        metrics += true_cols
    table = slice_metrics(per_user, groups, metrics, min_users)
    out["slices"] = _records(table)
    out["worst_groups"] = _records(worst_groups(table))
    # popularity bias (L4.3)
    # items first seen in the test period are part of the catalogue (long tail, 0 interactions)
    catalogue = np.union1d(catalogue, np.concatenate([np.empty(0, np.int64), *pred.relevant]))
    popularity = ItemPopularity.from_interactions(pred.train_items["item_id_raw"].to_numpy(),
                                                  catalogue=catalogue, head_share=head_share)
    out["bias"] = {"training_data": {
        "concentration_curve": concentration_curve(
            pred.train_items["item_id_raw"].to_numpy()).to_dict("records"),
        "gini": _gini_of_training(popularity),
        "long_tail_catalogue_share": round(float((~popularity.is_head).mean()), 4)}}
    for name in LISTS:
        if name not in pred.lists:
            continue
        lists = pred.lists[name]
        longer = pred.lists.get("funnel_candidates") if name == "funnel" else lists
        report = popularity_bias_report(lists[:, :k], popularity, pred.relevant,
                                        rankings=longer)
        if pred.full_ranks and name in pred.full_ranks:      # exact ranks of the full ranking
            report["popularity_opportunity"] = {
                **popularity_opportunity_bias(pred.full_ranks[name], popularity),
                "ranked_positions": "full catalogue"}
        out["bias"][name] = _json(report)
    out["bias_flags"] = bias_flags(out["bias"])
    # logged recall only counts what the logging policy showed: how much of each list it did
    shown = {name: pred.lists[name] for name in EXPOSURE_LISTS if name in pred.lists}
    rows = {name: np.flatnonzero(known) if name in CANDIDATE_MODELS else np.arange(len(ids))
            for name in shown}
    out["exposure"] = _json(exposure_report(
        shown, pred.relevant, shown_items(ids, pred.rankers), k, rows, users=ids,
        relevance_rows=relevance_rows, catalogue_items=len(catalogue)))
    return out


def ranker_section(rows: pd.DataFrame, objectives: list[str]) -> dict:
    """ROC-AUC, PR-AUC, logloss and thinned curves per ranker and objective on the test rows
    (impressions and sampled negatives)."""
    out = {}
    for ranker in ("light", "heavy"):
        for objective in objectives:
            col = f"{ranker}_{objective}"
            if col not in rows or objective not in rows:
                continue
            y, s = rows[objective].to_numpy(), rows[col].to_numpy()
            m = _rounded(ranker_metrics(y, s))
            if not m.get("undefined") and 0 < y.sum() < len(y):
                m["roc_curve"] = roc_curve(y, s, max_points=100).round(4).to_dict("list")
                m["pr_curve"] = pr_curve(y, s, max_points=100).round(4).to_dict("list")
            out.setdefault(ranker, {})[objective] = m
    return out


def bias_flags(bias: dict) -> dict:
    """Per model, which measures say it concentrates on popular items more than the training
    data itself does (True = flagged)."""
    data = bias["training_data"]
    half = next(p["items"] for p in data["concentration_curve"] if p["share"] == 0.5)
    flags = {}
    for name, b in bias.items():
        if name == "training_data":
            continue
        rec_half = next(p["items"] for p in b["concentration_curve"] if p["share"] == 0.5)
        opportunity = b.get("popularity_opportunity", {})
        flags[name] = {
            "concentration": rec_half < half,            # fewer items make half the volume
            "gini": b["gini"] > data["gini"],
            "popularity_lift": b["popularity_lift"] > 1.5,
            "long_tail_share": b["long_tail_share"] < 0.5 * data["long_tail_catalogue_share"],
            "popularity_opportunity": _above(opportunity.get("pru"), 0.1),
            "parity": _above(_neg(b.get("parity", {}).get("parity_ratio")), -0.5),
        }
        flags[name]["all"] = all(flags[name].values())
    return flags


def _above(value, threshold: float) -> bool:
    return value is not None and not np.isnan(value) and value > threshold


def _neg(value):
    return None if value is None else -value


def _gini_of_training(popularity: ItemPopularity) -> float:
    return round(gini_index(popularity.counts), 4)


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _records(frame: pd.DataFrame) -> list[dict]:
    return _json(frame.round(4).to_dict("records"))


def _json(value):
    """numpy scalars and NaN -> plain JSON values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else round(float(value), 4)
    return value
