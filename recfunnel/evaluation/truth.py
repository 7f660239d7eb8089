"""Rankings scored against the synthetic ground truth (L2.1-L2.3): which objective to rank by.

On synthetic data every (user, item, day) has a true relevance, so a ranking can be judged by
what users really wanted rather than by what they clicked. `rankings_vs_truth` ranks each user's
candidates by one score after another (click-only, naive watch_75, the duration-aware watch label,
the blend) and measures the NDCG@K of the true relevance, plus what each ranking puts on top:
click-bait share, short-item share and mean duration of the top K. Plain numpy/pandas.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd


def graded_ndcg(groups: np.ndarray, scores: np.ndarray, gains: np.ndarray, k: int) -> np.ndarray:
    """Per group (user), NDCG@k of graded `gains` when rows are ordered by `scores` (desc).

    Args:
      groups, scores, gains: [n] each; rows of one group need not be contiguous.
    Returns:
      [n_groups] NDCG in [0, 1], groups in sorted order; a group whose gains are all 0 gets NaN.
    Ties in `scores` are broken by row order, the same for every score compared.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    groups, scores, gains = (np.asarray(a) for a in (groups, scores, gains))
    if not (len(groups) == len(scores) == len(gains)):
        raise ValueError(f"groups, scores and gains differ in length: "
                         f"{len(groups)}, {len(scores)}, {len(gains)}")
    uniq, g = np.unique(groups, return_inverse=True)
    rows = np.arange(len(g))

    def dcg(order_key: np.ndarray) -> np.ndarray:
        order = np.lexsort((rows, -order_key, g))            # by group, then key desc
        sorted_g = g[order]
        start = np.searchsorted(sorted_g, np.arange(len(uniq)))
        rank = np.arange(len(order)) - start[sorted_g]
        keep = rank < k
        contrib = np.where(keep, gains[order] / np.log2(rank + 2.0), 0.0)
        return np.bincount(sorted_g, weights=contrib, minlength=len(uniq))

    ideal = dcg(gains.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg(scores.astype(np.float64)) / ideal, np.nan)


def top_k_rows(groups: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean [n]: is the row among its group's k highest scores (ties by row order)."""
    groups = np.asarray(groups)
    uniq, g = np.unique(groups, return_inverse=True)
    order = np.lexsort((np.arange(len(g)), -np.asarray(scores, np.float64), g))
    start = np.searchsorted(g[order], np.arange(len(uniq)))
    rank = np.empty(len(g), np.int64)
    rank[order] = np.arange(len(order)) - start[g[order]]
    return rank < k


def rankings_vs_truth(users: np.ndarray, rankings: Mapping[str, np.ndarray],
                      true_relevance: np.ndarray, is_clickbait: np.ndarray,
                      duration_seconds: np.ndarray, k: int = 10,
                      short_seconds: float = 60.0, min_candidates: int = 2) -> pd.DataFrame:
    """One row per ranking: mean NDCG@k of true relevance and what its top k holds.

    Args:
      users: [n] user of each candidate row.
      rankings: name -> [n] scores to order each user's candidates by.
      true_relevance: [n] the truth's relevance of each row (the gain).
      is_clickbait, duration_seconds: [n] item facts of each row.
      min_candidates: users with fewer candidate rows are left out (there is nothing to rank).
    """
    users = np.asarray(users)
    counts = pd.Series(users).value_counts()
    keep = np.isin(users, counts[counts >= min_candidates].index.to_numpy())
    if not keep.any():
        raise ValueError(f"no user has {min_candidates} or more candidates to rank")
    u, rel = users[keep], np.asarray(true_relevance, np.float64)[keep]
    bait = np.asarray(is_clickbait, bool)[keep]
    dur = np.asarray(duration_seconds, np.float64)[keep]
    rows = [{"ranking": "candidates (all, no ranking)", "ndcg": np.nan,
             "top_true_relevance": float(rel.mean()), "top_clickbait_share": float(bait.mean()),
             "top_short_share": float((dur < short_seconds).mean()),
             "top_mean_duration_s": float(dur.mean())}]
    for name, score in rankings.items():
        s = np.asarray(score, np.float64)[keep]
        top = top_k_rows(u, s, k)
        rows.append({"ranking": name, "ndcg": float(np.nanmean(graded_ndcg(u, s, rel, k))),
                     "top_true_relevance": float(rel[top].mean()),
                     "top_clickbait_share": float(bait[top].mean()),
                     "top_short_share": float((dur[top] < short_seconds).mean()),
                     "top_mean_duration_s": float(dur[top].mean())})
    top = top_k_rows(u, rel, k)
    rows.append({"ranking": "true relevance (ideal)", "ndcg": 1.0,
                 "top_true_relevance": float(rel[top].mean()),
                 "top_clickbait_share": float(bait[top].mean()),
                 "top_short_share": float((dur[top] < short_seconds).mean()),
                 "top_mean_duration_s": float(dur[top].mean())})
    out = pd.DataFrame(rows)
    out.attrs.update(users=int(len(np.unique(u))), rows=int(keep.sum()), k=k)
    return out


def relevance_chunks(users: np.ndarray, relevance_rows, chunk: int = 2048):
    """Yields (row slice, [len, n_items] true relevance) over `users` (raw ids, starting at 1)
    in chunks, so that a whole catalogue's relevance is never held for every user at once.

    `relevance_rows`: function (0-based user indices) -> [len, n_items] true relevance."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    users = np.asarray(users)
    for start in range(0, len(users), chunk):
        rows = slice(start, start + chunk)
        yield rows, relevance_rows(users[rows] - 1)


def list_relevance(rel: np.ndarray, top: np.ndarray) -> np.ndarray:
    """[n, width] true relevance of each listed item, NaN where the list is padded.

    Args:
      rel: [n, n_items] true relevance by 0-based item index (a `relevance_chunks` chunk).
      top: [n, width] raw item ids (ids start at 1; -1 pads), rows aligned with `rel`.
    """
    top = np.asarray(top)
    idx = np.clip(top - 1, 0, None)
    return np.where(top >= 0, np.take_along_axis(rel, idx, axis=1), np.nan)


def lists_vs_truth(lists: Mapping[str, np.ndarray], users: np.ndarray, relevance_rows,
                   is_clickbait: np.ndarray, k: int, chunk: int = 2048) -> tuple[dict, pd.DataFrame]:
    """Top-k lists judged by the truth instead of by logged clicks.

    Logged clicks follow what the old system exposed, so recall of held-out clicks rewards
    recommending what was already popular; the truth says what users wanted.

    Args:
      lists: name -> [n_users, >= k] raw item ids (ids start at 1; -1 pads).
      users: [n_users] raw user ids, rows aligned with the lists.
      relevance_rows: function (0-based user indices) -> [len, n_items] true relevance.
      is_clickbait: [n_items] by 0-based item index.
    Returns:
      ({name: {true_relevance@k, share_of_ideal@k, clickbait_share@k}}, a per-user frame with
      user_id and `<name>:share_of_ideal@k` columns for slicing).
    """
    users = np.asarray(users)
    sums = {name: np.zeros(3) for name in lists}
    per_user = {name: np.zeros(len(users)) for name in lists}
    counts = {name: 0 for name in lists}
    for rows, rel in relevance_chunks(users, relevance_rows, chunk):
        ideal = -np.sort(-rel, axis=1)[:, :k].mean(axis=1)
        for name, top in lists.items():
            top = np.asarray(top)[rows, :k]
            filled = top >= 0
            idx = np.clip(top - 1, 0, None)
            r = list_relevance(rel, top)
            listed = (~np.isnan(r)).sum(axis=1)     # an empty list's mean is NaN, quietly
            mean_r = np.where(listed > 0, np.nansum(r, axis=1) / np.maximum(listed, 1), np.nan)
            per_user[name][rows] = mean_r / ideal
            sums[name] += [np.nansum(r), np.nansum(mean_r / ideal),
                           (np.asarray(is_clickbait)[idx] & filled).sum()]
            counts[name] += int(filled.sum())
    n = len(users)
    summary = {name: {f"true_relevance@{k}": round(float(s[0] / max(counts[name], 1)), 4),
                      f"share_of_ideal@{k}": round(float(s[1] / max(n, 1)), 4),
                      f"clickbait_share@{k}": round(float(s[2] / max(counts[name], 1)), 4)}
               for name, s in sums.items()}
    frame = pd.DataFrame({"user_id": users,
                          **{f"{name}:share_of_ideal@{k}": v for name, v in per_user.items()}})
    return summary, frame
