"""Splits and examples (L5.4): train / valid / test, one example per (user, item) per split.

The default split is by time: everything before `train_end` trains, the next `valid_days`
validate, the `test_days` after that test, as a model meets the future in production. Two random
splits are options for protocols that ask for them: `random` draws each (user, item) pair's split
by a hash of the pair; `random_per_user` cuts each user's own pairs 80/10/10 in a hashed order,
exactly as RecBole's `RS: [0.8, 0.1, 0.1]` grouped by user does (so every user with enough
history is in every split). A pair never straddles two splits. Events are then folded into examples: one row per (user, item, split) with each
signal's maximum, the first timestamp and the number of events, so no pair is counted twice.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from nvtabular.ops.operator import ColumnSelector, Operator

from recfunnel.config import SPLIT_KINDS
from recfunnel.names import LABELS
from recfunnel.workflows.backend import host_frame

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


def time_split(timestamp_ns: np.ndarray, train_end_ns: int, valid_end_ns: int) -> np.ndarray:
    ts = np.asarray(timestamp_ns, dtype=np.int64)
    return np.where(ts < train_end_ns, TRAIN, np.where(ts < valid_end_ns, VALID, TEST)).astype(np.int8)


def _check_fractions(fractions) -> np.ndarray:
    fractions = np.asarray(fractions, float)
    if len(fractions) != 3 or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"random_fractions must be three shares summing to 1, got {list(fractions)}")
    return fractions


def _pair_uniform(user, item, seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per (user, item) pair."""
    h = (np.asarray(user, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
         ^ (np.asarray(item, np.uint64) + np.uint64(seed)) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(31)
    return (h % np.uint64(1_000_003)).astype(np.float64) / 1_000_003


def random_split(user, item, fractions, seed: int) -> np.ndarray:
    """A stable pseudo-random split of each (user, item) pair in the given fractions."""
    cut = np.cumsum(_check_fractions(fractions))
    return np.searchsorted(cut[:2], _pair_uniform(user, item, seed), side="right").astype(np.int8)


def split_counts(n: np.ndarray, fractions) -> np.ndarray:
    """[len(n), 3] train/valid/test counts of users with n pairs each, RecBole's rule: valid and
    test get int(share * n), train the rest; a user with 0 < share * n < 1 still gives one pair
    to valid and test while train keeps more than one."""
    n = np.asarray(n, np.int64)
    fractions = _check_fractions(fractions)
    cnt = np.stack([np.zeros_like(n), (fractions[1] * n).astype(np.int64),
                    (fractions[2] * n).astype(np.int64)], axis=1)
    cnt[:, 0] = n - cnt[:, 1:].sum(axis=1)
    for j in (2, 1):   # RecBole walks the ratios from the last one
        bump = (cnt[:, 0] > 1) & (fractions[j] * n > 0) & (fractions[j] * n < 1)
        cnt[bump, j] += 1
        cnt[bump, 0] -= 1
    return cnt


def random_per_user_split(user, item, fractions, seed: int) -> np.ndarray:
    """Each user's distinct items in a hashed (stable, seeded) order, cut by `split_counts`;
    every event of a pair gets the pair's split."""
    pairs = pd.DataFrame({"user": np.asarray(user, np.int64), "item": np.asarray(item, np.int64)})
    unique = pairs.drop_duplicates().copy()
    unique["u"] = _pair_uniform(unique["user"].to_numpy(), unique["item"].to_numpy(), seed)
    unique = unique.sort_values(["user", "u", "item"], kind="stable")
    grouped = unique.groupby("user", sort=False)
    rank = grouped.cumcount().to_numpy()
    n = grouped["item"].transform("size").to_numpy()
    cnt = split_counts(n, fractions)
    unique["split"] = np.where(rank < cnt[:, 0], TRAIN,
                               np.where(rank < cnt[:, 0] + cnt[:, 1], VALID, TEST)).astype(np.int8)
    return pairs.merge(unique[["user", "item", "split"]], on=["user", "item"],
                       how="left")["split"].to_numpy(np.int8)


def aggregate_pairs(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (user_id, item_id, split): signals' max, first timestamp, event count."""
    present = [s for s in LABELS if s in events]
    agg = {s: "max" for s in present}
    agg.update({"timestamp": "min", "watch_seconds": "max", "duration_seconds": "first"})
    grouped = events.groupby(["user_id", "item_id", "split"], sort=True)
    out = grouped.agg(agg)
    out["events"] = grouped.size().astype(np.int32)
    out = out.reset_index()
    out["sampled_negative"] = np.int8(0)
    return out


def assign_split(kind: str, user, item, timestamp_ns, train_end_ns: int | None,
                 valid_end_ns: int | None, fractions, seed: int) -> np.ndarray:
    """The split code (0 train, 1 valid, 2 test) of every event, by `kind` (SPLIT_KINDS)."""
    if kind == "time":
        return time_split(timestamp_ns, train_end_ns, valid_end_ns)
    if kind == "random":
        return random_split(user, item, fractions, seed)
    if kind == "random_per_user":
        return random_per_user_split(user, item, fractions, seed)
    raise ValueError(f"dataset.split must be one of {SPLIT_KINDS}, got {kind!r}")


class SplitAssigner(Operator):
    """[timestamp, user_id, item_id] -> split (0 train, 1 valid, 2 test)."""

    def __init__(self, kind: str, train_end_ns: int | None = None, valid_end_ns: int | None = None,
                 fractions=(0.8, 0.1, 0.1), seed: int = 0):
        super().__init__()
        if kind not in SPLIT_KINDS:
            raise ValueError(f"dataset.split must be one of {SPLIT_KINDS}, got {kind!r}")
        self.kind, self.train_end_ns, self.valid_end_ns = kind, train_end_ns, valid_end_ns
        self.fractions, self.seed = list(fractions), seed

    def transform(self, col_selector: ColumnSelector, df):
        # random_per_user needs each user's events in one partition (the caller shuffles)
        out = type(df)()
        ts = df["timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)
        out["split"] = assign_split(self.kind, df["user_id"].to_numpy(), df["item_id"].to_numpy(),
                                    ts, self.train_end_ns, self.valid_end_ns, self.fractions,
                                    self.seed)
        return out

    def column_mapping(self, col_selector):
        return {"split": ["timestamp", "user_id", "item_id"]}

    @property
    def output_dtype(self):
        return np.int8


class AggregatePairs(Operator):
    """Folds the events of each partition into examples; needs the data partitioned by user."""

    def transform(self, col_selector: ColumnSelector, df):
        host = host_frame(df)
        out = aggregate_pairs(host)
        return type(df).from_pandas(out) if hasattr(df, "to_pandas") else out

    def column_mapping(self, col_selector):
        names = ["user_id", "item_id", "split", *[s for s in LABELS if s in col_selector.names],
                 "timestamp", "watch_seconds", "duration_seconds", "events", "sampled_negative"]
        return {n: [n] if n in col_selector.names else list(col_selector.names) for n in names}

    def compute_output_schema(self, input_schema, col_selector, prev_output_schema=None):
        schema = super().compute_output_schema(input_schema, col_selector, prev_output_schema)
        from merlin.schema import Schema
        fixed = {"events": np.int32, "sampled_negative": np.int8}
        return Schema([schema[c].with_dtype(fixed[c]) if c in fixed else schema[c]
                       for c in schema.column_names])
