"""Point-in-time statistics (L5.3): user and item features that never look into the future.

An example on day t sees only events of days strictly before t (so strictly before its own
timestamp; same-day history is left out rather than risk a leak). The statistics are fitted on
the whole event history, so a training, validation or test example and a served request all see
the same definition: every event known strictly before their own day. Recency is relative to
the asking time, so serving recomputes it per request from each key's last active day
(`models.features.recency_feature`, tested equal to this workflow's output).
Fitting keeps one row per (key, active day), not per event, so it scales with activity days.

Features per key (prefix `user_` or `item_`): `events`, `clicks`, `click_rate`,
`watch_fraction` (mean watched fraction of clicked events), `days_since_last` (capped).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from merlin.dag.ops.stat_operator import StatOperator
from merlin.schema import Tags
from nvtabular.ops import LogOp
from nvtabular.ops.operator import ColumnSelector

from recfunnel.workflows.backend import host_array

DAY_NS = 86_400 * 10**9
NEVER = 999.0                    # days_since_last when there is no earlier event
STAT_NAMES = ("events", "clicks", "click_rate", "watch_fraction", "days_since_last")


def event_day(timestamp) -> np.ndarray:
    """Whole days since the epoch, from a UTC timestamp column (any datetime64 resolution)."""
    values = np.asarray(timestamp)
    if np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[D]").astype(np.int64)
    return (np.asarray(values, dtype=np.int64) // DAY_NS).astype(np.int64)


# ---- pure logic --------------------------------------------------------------------------------

def daily_activity(key, day, click, watch, duration) -> pd.DataFrame:
    """One row per (key, day): events, clicks, and the summed watched fraction of clicks."""
    watch, duration = np.asarray(watch, float), np.asarray(duration, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where((np.asarray(click) == 1) & (duration > 0),
                            np.clip(watch / duration, 0, 1), np.nan)
    key = np.asarray(key, np.int64)
    # whole columns, not a broadcast scalar: pandas builds those 20x slower
    frame = pd.DataFrame({"key": key, "day": np.asarray(day, np.int64),
                          "events": np.ones(len(key), np.int64),
                          "clicks": np.asarray(click, np.int64),
                          "fraction_sum": np.nan_to_num(fraction),
                          "fraction_n": (~np.isnan(fraction)).astype(np.int64)}, copy=False)
    return _sum_by_key_day(frame)


def _sum_by_key_day(frame: pd.DataFrame) -> pd.DataFrame:
    """frame's other columns summed per (key, day), sorted by (key, day), bit for bit what
    `frame.groupby(["key", "day"]).sum()` gives, faster: the pairs hashed as one int64 code,
    integer columns counted by np.bincount (exact below 2**53), float columns by pandas' own
    (compensated) group sum on the ready group codes."""
    key, day = frame["key"].to_numpy(np.int64), frame["day"].to_numpy(np.int64)
    if not len(frame):
        return frame.groupby(["key", "day"], as_index=False).sum()
    k0, d0 = int(key.min()), int(day.min())
    span = int(day.max()) - d0 + 1
    if (int(key.max()) - k0 + 1) * span >= 2**62:         # the code would overflow
        return frame.groupby(["key", "day"], as_index=False).sum()
    group, pairs = pd.factorize((key - k0) * span + (day - d0))
    order = np.argsort(pairs)
    out = pd.DataFrame({"key": pairs[order] // span + k0, "day": pairs[order] % span + d0})
    for column in frame.columns.drop(["key", "day"]):
        values = frame[column].to_numpy()
        if np.issubdtype(values.dtype, np.integer):
            sums = np.bincount(group, weights=values, minlength=len(pairs)).astype(np.int64)
        else:
            by_group = pd.Series(values).groupby(group, sort=False).sum()
            sums = np.empty(len(pairs))
            sums[by_group.index.to_numpy()] = by_group.to_numpy()
        out[column] = sums[order]
    return out


def cumulative_table(daily: pd.DataFrame) -> pd.DataFrame:
    """Running totals per key through each active day, sorted by (key, day)."""
    daily = _sum_by_key_day(daily)          # partitions may each hold a (key, day)
    key = daily["key"].to_numpy(np.int64)
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    group = np.cumsum(first) - 1
    out = daily[["key", "day"]].copy()
    for column in ("events", "clicks", "fraction_sum", "fraction_n"):
        values = daily[column].to_numpy()
        if np.issubdtype(values.dtype, np.integer):     # exact: totals less those before
            total = np.cumsum(values)
            out[column] = total - (total - values)[first][group]
        else:                                           # pandas' own group cumsum, as before
            out[column] = pd.Series(values).groupby(group, sort=False).cumsum().to_numpy()
    return out


def _row_before(table: pd.DataFrame, key: np.ndarray, day: np.ndarray):
    """(positions, found): each key's last table row with (key, day') < (key, day), by a
    lexicographic search of the (key, day)-sorted cumulative table."""
    t_key, t_day = table["key"].to_numpy(np.int64), table["day"].to_numpy(np.int64)
    if not len(t_key):
        return np.zeros(len(key), np.int64), np.zeros(len(key), bool)
    order_key = t_key.astype(np.float64) * 1e6 + t_day  # days < 1e6; keys < 2**53 / 1e6
    pos = np.searchsorted(order_key, key.astype(np.float64) * 1e6 + day, side="left") - 1
    found = (pos >= 0) & (t_key[np.clip(pos, 0, None)] == key)
    return np.clip(pos, 0, None), found


def lookup(table: pd.DataFrame, key, day) -> dict[str, np.ndarray]:
    """The statistics of `key` over days strictly before `day`, from a cumulative table."""
    key, day = np.asarray(key, np.int64), np.asarray(day, np.int64)
    pos, valid = _row_before(table, key, day)

    def take(column):
        values = table[column].to_numpy(np.float64) if len(table) else np.zeros(1)
        return np.where(valid, values[pos], 0.0)

    events, clicks = take("events"), take("clicks")
    fsum, fn = take("fraction_sum"), take("fraction_n")
    last = take("day")
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"events": events, "clicks": clicks,
                "click_rate": np.where(events > 0, clicks / events, 0.0),
                "watch_fraction": np.where(fn > 0, fsum / fn, 0.0),
                "days_since_last": np.where(valid, np.minimum(day - last, NEVER), NEVER)}


def last_day_before(table: pd.DataFrame, key, day) -> np.ndarray:
    """[n] each key's last active day strictly before `day` (-1: no earlier event)."""
    key, day = np.asarray(key, np.int64), np.asarray(day, np.int64)
    pos, found = _row_before(table, key, day)
    days = table["day"].to_numpy(np.int64) if len(table) else np.zeros(1, np.int64)
    return np.where(found, days[pos], -1)


def latest_stats(table: pd.DataFrame, key: str, prefix: str) -> pd.DataFrame:
    """Every key's statistics as of the day after its last fitted activity (for serving)."""
    last = table.groupby("key").tail(1)
    stats = lookup(table, last["key"], last["day"] + 1)
    return pd.DataFrame({key: last["key"].to_numpy(), "as_of_day": last["day"].to_numpy() + 1,
                         **{f"{prefix}_{n}": v for n, v in stats.items()}})


# ---- NVTabular operator ------------------------------------------------------------------------

class PointInTimeStats(StatOperator):
    """[key, timestamp, click, watch_seconds, duration_seconds] -> `<prefix>_<stat>` columns."""

    def __init__(self, key: str, prefix: str):
        super().__init__()
        self.key, self.prefix = key, prefix
        self.table: pd.DataFrame | None = None

    @property
    def inputs(self) -> list[str]:
        return [self.key, "timestamp", "click", "watch_seconds", "duration_seconds"]

    stat_names = STAT_NAMES

    def keys(self, df) -> np.ndarray:
        """[n] the int64 key of each row whose history the statistics count."""
        return np.asarray(host_array(df[self.key]), np.int64)

    def fit(self, col_selector: ColumnSelector, ddf):
        keys = self.keys

        def per_partition(df):
            return daily_activity(keys(df), event_day(host_array(df["timestamp"])),
                                  host_array(df["click"]), host_array(df["watch_seconds"]),
                                  host_array(df["duration_seconds"]))

        meta = pd.DataFrame({"key": pd.Series(dtype=np.int64), "day": pd.Series(dtype=np.int64),
                             "events": pd.Series(dtype=np.int64),
                             "clicks": pd.Series(dtype=np.int64),
                             "fraction_sum": pd.Series(dtype=np.float64),
                             "fraction_n": pd.Series(dtype=np.int64)})
        return ddf[self.inputs].map_partitions(per_partition, meta=meta)

    def fit_finalize(self, daily):
        self.table = cumulative_table(daily)

    def clear(self):
        self.table = None

    def transform(self, col_selector: ColumnSelector, df):
        stats = lookup(self.table, self.keys(df), event_day(host_array(df["timestamp"])))
        out = type(df)()
        for name in self.stat_names:
            out[f"{self.prefix}_{name}"] = stats[name].astype(np.float32)
        return out

    def column_mapping(self, col_selector):
        return {f"{self.prefix}_{name}": list(self.inputs) for name in self.stat_names}

    @property
    def output_dtype(self):
        return np.float32

    @property
    def output_tags(self):
        return [Tags.CONTINUOUS]

    def last_day(self, key, day) -> np.ndarray:
        """Each key's last active day strictly before `day`, from the fitted history."""
        return last_day_before(self.table, key, day)

    def latest(self) -> pd.DataFrame:
        """The statistics of every key as of the end of the fitted data (for serving)."""
        return latest_stats(self.table, self.key, self.prefix)


class UserGroupStats(PointInTimeStats):
    """[user_id, item_id, timestamp, click, watch_seconds, duration_seconds] ->
    `<prefix>_<stat>`: the user's own history with items of the example item's group (its
    category), as of the days before the example's: how much this user engages with this kind
    of item lately. No recency column, so a served value changes only when tables refresh.

    `groups` maps raw item ids (index) to group codes 0..n-1; other items share group n.
    """
    stat_names = ("events", "clicks", "click_rate", "watch_fraction")

    def __init__(self, groups: pd.Series, prefix: str = "user_category"):
        super().__init__("user_id", prefix)
        groups = groups.sort_index()                 # sorted once: group_of searches it
        self.group_items = np.asarray(groups.index, np.int64)
        self.group_codes = np.asarray(groups.to_numpy(), np.int64)
        self.n_groups = int(self.group_codes.max(initial=-1)) + 2

    @property
    def inputs(self) -> list[str]:
        return ["user_id", "item_id", "timestamp", "click", "watch_seconds", "duration_seconds"]

    def group_of(self, item) -> np.ndarray:
        """[n] group codes of raw item ids (n_groups - 1 for an item without one)."""
        item, items = np.asarray(item, np.int64), self.group_items
        if not len(items):
            return np.full(len(item), self.n_groups - 1, np.int64)
        pos = np.clip(np.searchsorted(items, item), 0, len(items) - 1)
        return np.where(items[pos] == item, self.group_codes[pos], self.n_groups - 1)

    def pair_key(self, user, item) -> np.ndarray:
        return np.asarray(user, np.int64) * self.n_groups + self.group_of(item)

    def keys(self, df) -> np.ndarray:
        return self.pair_key(host_array(df["user_id"]), host_array(df["item_id"]))


class LogCounts(LogOp):
    """The statistics with the heavy-tailed ones (`counts`: counts and day gaps, up to tens of
    thousands) as log(1 + x), the rest (rates and fractions, in [0, 1]) as they are. One node
    for both, because Merlin's executor runs a node once for each node that reads it: a
    statistics node read by a LogOp and by a selection of its rates ran twice."""

    def __init__(self, counts):
        super().__init__()
        self.counts = list(counts)

    def transform(self, col_selector: ColumnSelector, df):
        logged = ColumnSelector([c for c in col_selector.names if c in self.counts])
        return super().transform(logged, df)

