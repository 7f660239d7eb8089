"""The dataset build scored against the synthetic ground truth.

Only the synthetic source knows the truth: which items are copies of which, which are unsafe,
and how relevant every item is to every user. These functions say how well the duplicate
detection, the unsafe filters and the labels recover it (L1.3, L1.4, L2.2).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from recfunnel.data.synthetic import World
from recfunnel.names import DURATION_AWARE_WATCH, LABELS, NAIVE_WATCH


def duplicate_pairs(mapping: pd.DataFrame) -> set[tuple[int, int]]:
    """All (a, b) item pairs, a < b, that `mapping` [item_id, canonical_id] puts in one group."""
    out = set()
    shared = mapping[mapping.groupby("canonical_id")["item_id"].transform("size") > 1]
    for _, group in shared.groupby("canonical_id")["item_id"]:     # groups of one: no pair
        ids = sorted(group.tolist())
        out.update((a, b) for k, a in enumerate(ids) for b in ids[k + 1:])
    return out


def duplicate_detection(mapping: pd.DataFrame, world: World) -> dict:
    """Pairwise precision and recall of the detected duplicate groups."""
    found = duplicate_pairs(mapping)
    real = duplicate_pairs(world.item_truth[["item_id", "canonical_id"]])
    hit = len(found & real)
    return {"pairs_detected": len(found), "pairs_true": len(real), "pairs_correct": hit,
            "precision": round(hit / len(found), 4) if found else 1.0,
            "recall": round(hit / len(real), 4) if real else 1.0}


def unsafe_detection(unsafe_items: pd.DataFrame, world: World) -> dict:
    """Precision and recall of the unsafe filters (item level, union of all filters)."""
    truth = set(world.item_truth.loc[world.item_truth["is_unsafe"], "item_id"])
    found = set(unsafe_items["item_id"])
    hit = len(found & truth)
    return {"items_flagged": len(found), "items_unsafe": len(truth),
            "precision": round(hit / len(found), 4) if found else 1.0,
            "recall": round(hit / len(truth), 4) if truth else 1.0}


def true_relevance_of(examples: pd.DataFrame, world: World) -> np.ndarray:
    """[n] the truth's relevance of each example (user_id_raw, item_id_raw, timestamp)."""
    start = pd.Timestamp(world.config.start_date)
    day = (pd.to_datetime(examples["timestamp"]) - start) / pd.Timedelta(days=1)
    return world.true_relevance(examples["user_id_raw"].to_numpy() - 1,
                                examples["item_id_raw"].to_numpy() - 1, day.to_numpy())


def label_audit(examples: pd.DataFrame, world: World, duration_edges) -> dict:
    """How each label relates to duration and to the true relevance, on clicked examples.

    `examples` holds user_id_raw, item_id_raw, timestamp, the labels and the item duration.
    Returns the positive rate per duration bucket for each label, the mean true relevance of
    each duration bucket (what an unbiased label should follow), and each label's ROC-AUC
    against the true relevance (how well the label ranks what users really want).
    """
    clicked = examples[examples["click"] == 1]
    relevance = true_relevance_of(clicked, world)
    duration = world.items["duration_seconds"].to_numpy()[clicked["item_id_raw"].to_numpy() - 1]
    edges = [0, *duration_edges, np.inf]
    names = [f"{lo:g}-{hi:g}s" for lo, hi in zip(edges[:-1], edges[1:])]
    bucket = pd.cut(duration, edges, labels=names, right=False)
    out = {"clicked_examples": int(len(clicked)),
           "true_relevance_by_duration": _by(relevance, bucket),
           "positive_rate_by_duration": {}, "auc_vs_true_relevance": {}}
    for label in (l for l in LABELS if l != "click"):
        y = clicked[label].to_numpy()
        out["positive_rate_by_duration"][label] = _by(y, bucket)
        out["auc_vs_true_relevance"][label] = (round(float(roc_auc_score(y, relevance)), 4)
                                               if 0 < y.sum() < len(y) else None)
    rates = out["positive_rate_by_duration"]
    short, long_ = names[0], names[-1]
    out["short_to_long_ratio"] = {
        label: (round(r[short] / r[long_], 2) if r.get(long_) else None)
        for label, r in rates.items() if label in (NAIVE_WATCH, DURATION_AWARE_WATCH)}
    return out


def _by(values, bucket) -> dict[str, float]:
    frame = pd.DataFrame({"v": np.asarray(values, float), "b": bucket})
    return {str(k): round(float(v), 4) for k, v in frame.groupby("b")["v"].mean().items()
            if not np.isnan(v)}
