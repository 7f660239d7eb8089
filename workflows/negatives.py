"""Negative sampling (L4.4): items a user never touched, added to the ranking data labelled 0.

Logs hold only what the old system showed; a ranker also has to learn what a user would not pick
from the rest of the catalogue. Negatives are drawn uniformly or by popularity (counts in the
training examples + 1), never among the items the user interacted with in any split, and each
takes the split and timestamp of one of the user's own rows, so it lands in the same split and
its point-in-time features are those of a real moment. Requires the data partitioned by user.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from merlin.dag.ops.stat_operator import StatOperator
from nvtabular.ops.operator import ColumnSelector

from recfunnel.config import NEGATIVE_SAMPLING
from recfunnel.workflows.backend import host_frame


def cumulative(probs: np.ndarray | None) -> np.ndarray | None:
    """The cumulative distribution numpy's `Generator.choice(p=probs)` draws by, computed once
    (choice recomputes it over every candidate on every call: per user, per round)."""
    if probs is None:
        return None
    cdf = np.asarray(probs, np.float64).cumsum()
    cdf /= cdf[-1]
    return cdf


def draw_candidates(rng: np.random.Generator, candidates: np.ndarray, size: int,
         cdf: np.ndarray | None) -> np.ndarray:
    """`rng.choice(candidates, size, p=probs)` for cdf = cumulative(probs): the same draws."""
    if cdf is None:
        return rng.choice(candidates, size=size)
    return candidates[cdf.searchsorted(rng.random(size), side="right")]


def sample_for_user(rng: np.random.Generator, n: int, touched: np.ndarray, candidates: np.ndarray,
                    cdf: np.ndarray | None, max_rounds: int = 8) -> np.ndarray:
    """Up to `n` distinct items from `candidates` (drawn by `cdf`, a `cumulative`; None:
    uniformly), none of them in `touched`."""
    chosen = np.empty(0, dtype=candidates.dtype)
    for _ in range(max_rounds):
        need = n - len(chosen)
        if need <= 0:
            break
        drawn = draw_candidates(rng, candidates, 2 * need + 8, cdf)
        drawn = drawn[~np.isin(drawn, touched) & ~np.isin(drawn, chosen)]
        _, first = np.unique(drawn, return_index=True)
        chosen = np.concatenate([chosen, drawn[np.sort(first)][:need]])
    return chosen


def sample_negatives(examples: pd.DataFrame, ratio: float, candidates: np.ndarray,
                     probs: np.ndarray | None, seed: int) -> pd.DataFrame:
    """Negative rows for every user in `examples` (which must hold all of each user's rows).

    Each user gets round(ratio x their rows) negatives from a generator seeded by (seed, user),
    so the result does not depend on how the data is partitioned.
    """
    out = []
    cdf = cumulative(probs)
    ordered = examples.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    for user, rows in ordered.groupby("user_id", sort=True):
        n = int(round(ratio * len(rows)))
        if n == 0:
            continue
        rng = np.random.default_rng([seed, int(user)])
        items = sample_for_user(rng, n, rows["item_id"].to_numpy(), candidates, cdf)
        if len(items) == 0:
            continue
        anchor = rows.iloc[rng.integers(0, len(rows), len(items))]
        out.append(pd.DataFrame({"user_id": np.int64(user), "item_id": items,
                                 "timestamp": anchor["timestamp"].to_numpy(),
                                 "split": anchor["split"].to_numpy()}))
    if not out:
        return examples.iloc[:0][["user_id", "item_id", "timestamp", "split"]]
    return pd.concat(out, ignore_index=True)


class NegativeSampler(StatOperator):
    """Adds `ratio` sampled negatives per example row; fit learns item popularity on train rows."""

    def __init__(self, ratio: float, mode: str = "popularity", seed: int = 0):
        super().__init__()
        if mode not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {mode!r}")
        self.ratio, self.mode, self.seed = ratio, mode, seed
        self.candidates: np.ndarray | None = None
        self.probs: np.ndarray | None = None

    def fit(self, col_selector: ColumnSelector, ddf):
        return ddf["item_id"].value_counts()

    def fit_finalize(self, counts):
        counts = host_frame(counts)
        counts = counts.sort_index()
        self.candidates = counts.index.to_numpy(np.int64)
        weights = counts.to_numpy(np.float64) + 1.0
        self.probs = weights / weights.sum() if self.mode == "popularity" else None

    def clear(self):
        self.candidates = self.probs = None

    def transform(self, col_selector: ColumnSelector, df):
        host = host_frame(df)
        negatives = sample_negatives(host, self.ratio, self.candidates, self.probs, self.seed)
        filled = {c: np.zeros(len(negatives), dtype=host[c].dtype)
                  for c in host.columns if c not in negatives.columns}
        negatives = negatives.assign(**filled)
        if "sampled_negative" in host.columns:
            negatives["sampled_negative"] = np.int8(1)
        if "duration_seconds" in negatives:
            negatives["duration_seconds"] = np.nan        # the item table gives it later
        merged = pd.concat([host, negatives[host.columns]], ignore_index=True)
        merged = merged.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        merged = merged.reset_index(drop=True)
        return type(df).from_pandas(merged) if hasattr(df, "to_pandas") else merged
