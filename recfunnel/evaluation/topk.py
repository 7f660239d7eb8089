"""Top-K list metrics (L4.1): how well a ranked list of item ids finds each user's relevant items.

Binary relevance; every metric is averaged over users who have at least one relevant item (users
without any are counted apart, not scored as zeros). Recall@K divides by all of a user's relevant
items, as RecBole does; NDCG@K uses the ideal DCG of min(K, relevant) hits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def hits_matrix(recommended: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """[n_users, K] booleans: is the item at each rank relevant to its user."""
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or len(recommended) != len(relevant):
        raise ValueError(f"recommended must be [n_users, K] with one row per user; got shape "
                         f"{recommended.shape} for {len(relevant)} users")
    return np.stack([np.isin(row, rel) & (row >= 0) for row, rel in zip(recommended, relevant)]) \
        if len(relevant) else np.zeros((0, recommended.shape[1]), bool)


def topk_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> dict:
    """recall, precision, ndcg, hit rate, MRR and MAP at `k` (lists longer than k are cut).

    Args:
      recommended: [n_users, >= k] item ids, best first; -1 pads short lists.
      relevant: per user, the ids of the items that are relevant (e.g. test positives).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    recommended = np.asarray(recommended)[:, :k]
    n_rel = np.array([len(np.unique(r)) for r in relevant])
    scored = n_rel > 0
    hits = hits_matrix(recommended, relevant)[scored]
    n_rel = n_rel[scored]
    width = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, width + 2))
    dcg = (hits * discount).sum(axis=1)
    ideal = np.array([discount[:min(n, width)].sum() for n in n_rel])
    n_hits = hits.sum(axis=1)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, width + 1)
    ap = (precision_at * hits).sum(axis=1) / np.minimum(n_rel, k)
    mean = (lambda x: float(np.mean(x)) if len(x) else float("nan"))  # noqa: E731
    return {
        f"recall@{k}": mean(n_hits / n_rel),
        f"precision@{k}": mean(n_hits / k),
        f"ndcg@{k}": mean(dcg / ideal),
        f"hit_rate@{k}": mean(n_hits > 0),
        f"mrr@{k}": mean(np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)),
        f"map@{k}": mean(ap),
        "users_scored": int(scored.sum()),
        "users_without_relevant": int((~scored).sum()),
    }
