"""Top-K list metrics (L4.1): how well a ranked list of item ids finds each user's relevant items.

Binary relevance; every metric is averaged over users who have at least one relevant item (users
without any are counted apart, not scored as zeros). Recall@K divides by all of a user's relevant
items, as RecBole does; NDCG@K uses the ideal DCG of min(K, relevant) hits. The lists rank the
full catalogue (the default everywhere); `sampled_topk_metrics` ranks each positive among a few
sampled negatives instead, only when asked, and says so in every key it returns.

A leaf module (numpy and pandas only): the models' validation (early stopping, the fallback's
validation metrics) and the offline evaluation (`recfunnel.evaluation` re-exports it) score lists
with the same definitions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

TOPK_METRICS = ("recall", "precision", "ndcg", "hit_rate", "mrr", "map")


def relevant_pairs(relevant: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Flattens per-user relevant ids into (row, item_id) pairs: row i is `relevant[i]`'s user."""
    arrays = [np.asarray(r).ravel() for r in relevant]
    lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
    items = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return np.repeat(np.arange(len(arrays)), lengths), items


def pair_keys(rows: np.ndarray, items: np.ndarray, low: int, span: int) -> np.ndarray:
    """One int64 per (row, item) pair, so that pairs are matched with one vectorized np.isin."""
    return rows.astype(np.int64) * span + (items.astype(np.int64) - low)


def key_range(*item_arrays: np.ndarray) -> tuple[int, int]:
    """(lowest id, span) covering every id in `item_arrays`, for `pair_keys`."""
    present = [a for a in item_arrays if a.size]
    if not present:
        return 0, 1
    low = min(int(a.min()) for a in present)
    return low, max(int(a.max()) for a in present) - low + 1


def hits_matrix(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """[n_users, K] booleans: is the item at each rank relevant to its user (-1 pads never are)."""
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or len(recommended) != len(relevant):
        raise ValueError(f"recommended must be [n_users, K] with one row per user; got shape "
                         f"{recommended.shape} for {len(relevant)} users")
    rows, items = relevant_pairs(relevant)
    low, span = key_range(recommended, items)
    rec_rows = np.broadcast_to(np.arange(len(recommended))[:, None], recommended.shape)
    hits = np.isin(pair_keys(rec_rows, recommended, low, span), pair_keys(rows, items, low, span))
    return hits & (recommended >= 0)


def topk_per_user(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int,
                  user_ids: np.ndarray | None = None) -> pd.DataFrame:
    """One row per user: `relevant` (count) and recall, precision, ndcg, hit_rate, mrr, map at k.

    Users without relevant items keep their row with NaN metrics, so that slices can average
    any subset of users and count who was scored.

    Args:
      recommended: [n_users, >= k] item ids, best first; -1 pads short lists (K larger than the
        list is allowed: missing ranks count as misses).
      relevant: per user, the ids of the items that are relevant (e.g. test positives).
      user_ids: [n_users] ids for the `user_id` column; default 0..n_users-1.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    recommended = np.asarray(recommended)[:, :k]
    hits = hits_matrix(recommended, relevant)
    rows, items = relevant_pairs(relevant)
    low, span = key_range(items)
    distinct_rows = np.unique(pair_keys(rows, items, low, span)) // span
    n_rel = np.bincount(distinct_rows, minlength=len(relevant)).astype(float)
    width = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    ideal_by_count = np.concatenate([[np.nan], np.cumsum(discount)])
    ideal = ideal_by_count[np.minimum(n_rel, width).astype(int)]
    n_hits = hits.sum(axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, width + 1)
    scored = n_rel > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        frame = pd.DataFrame({
            "user_id": np.arange(len(relevant)) if user_ids is None else np.asarray(user_ids),
            "relevant": n_rel.astype(np.int64),
            f"recall@{k}": n_hits / n_rel,
            f"precision@{k}": n_hits / k,
            f"ndcg@{k}": (hits * discount).sum(axis=1) / ideal,
            f"hit_rate@{k}": (n_hits > 0).astype(float),
            f"mrr@{k}": np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0),
            f"map@{k}": (precision_at * hits).sum(axis=1) / np.minimum(n_rel, k),
        })
    frame.loc[~scored, [f"{m}@{k}" for m in TOPK_METRICS]] = np.nan
    return frame


def topk_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> dict:
    """recall, precision, ndcg, hit rate, MRR and MAP at `k` (lists longer than k are cut).

    Args:
      recommended: [n_users, >= k] item ids, best first; -1 pads short lists.
      relevant: per user, the ids of the items that are relevant (e.g. test positives).
    """
    per_user = topk_per_user(recommended, relevant, k)
    scored = per_user["relevant"].to_numpy() > 0
    means = {name: float(per_user.loc[scored, name].mean()) if scored.any() else float("nan")
             for name in (f"{m}@{k}" for m in TOPK_METRICS)}
    return {**means, "users_scored": int(scored.sum()),
            "users_without_relevant": int((~scored).sum())}


def sampled_topk_metrics(positive_scores: np.ndarray, negative_scores: np.ndarray,
                         k: int) -> dict:
    """Sampled evaluation, only on request: each positive ranked among its own sampled negatives.

    Cheaper than a full ranking and optimistic against it (Krichene & Rendle, 2020), so every key
    starts with `sampled_` and the number of negatives is returned with the metrics. A negative
    scored equal to its positive counts as ranked above it, so constant scores earn nothing.

    Args:
      positive_scores: [n_pairs] the model's score of each (user, held-out positive) pair.
      negative_scores: [n_pairs, n_negatives] the scores of the negatives sampled for that pair.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    positive_scores = np.asarray(positive_scores, dtype=float)
    negative_scores = np.asarray(negative_scores, dtype=float)
    if negative_scores.ndim != 2 or len(negative_scores) != len(positive_scores):
        raise ValueError(f"negative_scores must be [n_pairs, n_negatives] with one row per "
                         f"positive; got shape {negative_scores.shape} for "
                         f"{len(positive_scores)} positives")
    rank = (negative_scores >= positive_scores[:, None]).sum(axis=1)     # 0 = first
    hit = rank < k
    mean = (lambda x: float(np.mean(x)) if len(x) else float("nan"))  # noqa: E731
    return {
        f"sampled_hit_rate@{k}": mean(hit),
        f"sampled_ndcg@{k}": mean(np.where(hit, 1.0 / np.log2(rank + 2), 0.0)),
        f"sampled_mrr@{k}": mean(np.where(hit, 1.0 / (rank + 1), 0.0)),
        "sampled_negatives": int(negative_scores.shape[1]),
        "sampled_pairs": int(len(positive_scores)),
    }
