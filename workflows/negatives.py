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


MAX_ROUNDS = 8         # rejection rounds before a user's catalogue counts as exhausted
ITEM_STREAM, ANCHOR_STREAM = 1, 2   # the two random streams of a user: items, anchor rows


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective scramble of uint64 values (wraps on purpose)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def user_uniforms(seed: int, user: np.ndarray, stream: int, counter: np.ndarray) -> np.ndarray:
    """[n] uniform numbers in [0, 1), one per (user, counter), a pure function of
    (seed, user, stream, counter): a user's draws do not depend on the other users, on the
    order of the rows or on how the data is partitioned (a counter-based generator)."""
    with np.errstate(over="ignore"):
        base = _mix(np.uint64(seed % 2**64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(stream))
        key = _mix(np.asarray(user).astype(np.uint64) ^ base)
        bits = _mix(key + np.asarray(counter).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _first_per_key(key: np.ndarray) -> np.ndarray:
    """[n] True at the first occurrence of each value of `key` (a hash table, not a sort)."""
    return ~pd.Series(key).duplicated(keep="first").to_numpy()


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """[n] 0, 1, 2, ... within each run of equal values of the sorted `group`."""
    if not len(group):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(values), bool)
    pos = np.clip(np.searchsorted(sorted_keys, values), 0, len(sorted_keys) - 1)
    return sorted_keys[pos] == values


def draw_items(need: np.ndarray, users: np.ndarray, touched: np.ndarray, n_candidates: int,
               cdf: np.ndarray | None, seed: int, max_rounds: int = MAX_ROUNDS):
    """Up to need[u] distinct candidate positions per user u, none in the user's `touched`.

    need [n_users] ints; users [n_users] the user ids (seed the draws); touched: sorted int64
    keys u * n_candidates + position of the (user, candidate) pairs to avoid; cdf
    [n_candidates] cumulative weights (None: uniform). Each round draws 2 x need + 8 per user
    still short and keeps, in draw order, the first unseen new ones, for all users at once.
    Returns (user positions, candidate positions), sorted by user, each user's in draw order.
    """
    need = np.asarray(need, np.int64).copy()
    drawn = np.zeros(len(need), np.int64)            # each user's draws so far: its counter
    chosen_user, chosen_item, chosen_keys = [], [], np.zeros(0, np.int64)
    for _ in range(max_rounds):
        short = np.flatnonzero(need > 0)
        if not len(short) or not n_candidates:
            break
        size = 2 * need[short] + 8
        user = np.repeat(short, size)
        counter = np.repeat(drawn[short] - np.r_[0, np.cumsum(size)[:-1]], size) + \
            np.arange(len(user))
        drawn[short] += size
        u = user_uniforms(seed, users[user], ITEM_STREAM, counter)
        if cdf is None:
            item = np.minimum((u * n_candidates).astype(np.int64), n_candidates - 1)
        else:
            item = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n_candidates - 1)
        key = user * n_candidates + item
        fresh = ~_isin_sorted(key, touched) & ~_isin_sorted(key, chosen_keys)
        user, item, key = user[fresh], item[fresh], key[fresh]
        first = _first_per_key(key)
        user, item, key = user[first], item[first], key[first]
        keep = _rank_in_group(user) < need[user]
        user, item, key = user[keep], item[keep], key[keep]
        chosen_user.append(user)
        chosen_item.append(item)
        chosen_keys = np.sort(np.concatenate([chosen_keys, key]))
        need -= np.bincount(user, minlength=len(need))
    if not chosen_user:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    user, item = np.concatenate(chosen_user), np.concatenate(chosen_item)
    order = np.argsort(user, kind="stable")          # rounds after one another, per user
    return user[order], item[order]


def by_user_item_split(examples: pd.DataFrame) -> pd.DataFrame:
    """`examples` in (user_id, item_id, split) order, the order the anchors are drawn in;
    examples as `splits.aggregate_pairs` makes them are in that order already (no sort)."""
    user, item = examples["user_id"].to_numpy(np.int64), examples["item_id"].to_numpy(np.int64)
    split = examples["split"].to_numpy(np.int64)
    later = (np.diff(user) > 0) | ((np.diff(user) == 0) & ((np.diff(item) > 0) | (
        (np.diff(item) == 0) & (np.diff(split) > 0))))
    if later.all():
        return examples
    return examples.iloc[np.lexsort((split, item, user))]


def sample_negatives(examples: pd.DataFrame, ratio: float, candidates: np.ndarray,
                     probs: np.ndarray | None, seed: int) -> pd.DataFrame:
    """Negative rows for every user in `examples` (which must hold all of each user's rows).

    Each user gets round(ratio x their rows) items from `candidates` (drawn with `probs`, or
    uniformly) that none of the user's rows has, fewer when the catalogue runs out; each takes
    the timestamp and split of one of the user's rows, drawn at random. The draws of a user are
    a function of (seed, user id, the user's rows), so the result does not depend on how the
    data is partitioned or ordered. Vectorised over users: no Python loop per user.
    """
    columns = ["user_id", "item_id", "timestamp", "split"]
    if not len(examples) or not len(candidates):
        return examples.iloc[:0][columns]
    ordered = by_user_item_split(examples)
    user_ids = ordered["user_id"].to_numpy(np.int64)
    code, users = pd.factorize(user_ids, sort=True)  # rows are sorted by user: codes ascend
    rows = np.bincount(code, minlength=len(users))
    start = np.r_[0, np.cumsum(rows)[:-1]]
    need = np.round(ratio * rows).astype(np.int64)
    candidates = np.asarray(candidates, np.int64)
    items = ordered["item_id"].to_numpy(np.int64)
    pos = np.clip(np.searchsorted(candidates, items), 0, len(candidates) - 1)
    is_candidate = candidates[pos] == items
    touched = np.unique(code[is_candidate] * len(candidates) + pos[is_candidate])
    cdf = None if probs is None else np.cumsum(np.asarray(probs, np.float64))
    user, item = draw_items(need, np.asarray(users, np.int64), touched, len(candidates), cdf,
                            seed)
    nth = _rank_in_group(user)
    anchor = user_uniforms(seed, users[user], ANCHOR_STREAM, nth)
    row = start[user] + np.minimum((anchor * rows[user]).astype(np.int64), rows[user] - 1)
    return pd.DataFrame({"user_id": users[user].astype(np.int64), "item_id": candidates[item],
                         "timestamp": ordered["timestamp"].to_numpy()[row],
                         "split": ordered["split"].to_numpy()[row]})


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
