"""Serving features (L5.3): every known user's and item's model inputs as of serving time.

The saved NVTabular workflow, the one the training data went through, turns raw request fields
(raw user id, raw item id, the request time) into model inputs: Categorify ids, attributes and
point-in-time statistics as of that time. Running it once per user and per item at export gives
two tables keyed by the raw ids, which the funnel (offline and in Triton) looks rows up in, so a
served request sees exactly the transformation training saw, without NVTabular in the request
path; recency (days since the last event) is recomputed per request from the request's time.
`recfunnel features refresh` rebuilds the tables from the newest events without retraining. Users the workflow does not know (not in training) have no row: the funnel serves them the
popularity fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.artifacts import read_manifest, write_manifest

# A version's feature tables: `features` as served (every event, refreshed by export), and
# `features_offline`, what the offline evaluation may know when it ranks for the test split.
FEATURES, OFFLINE_FEATURES = "features", "features_offline"
USER_FEATURES, ITEM_FEATURES = "user_features.parquet", "item_features.parquet"
PAIR_FEATURES = "user_group_features.parquet"   # (user, item group) statistics
PAIR_KEY, USER_KEY_COLUMN, ITEM_GROUP = "pair_key", "user_key", "item_group"
USER_KEY, ITEM_KEY = "user_id_raw", "item_id_raw"
UNKNOWN_USER = -1    # the row the workflow gives an id it has never seen (out-of-vocabulary)
NEVER_DAYS = 999.0   # workflows.point_in_time.NEVER: days_since_last with no earlier event
REQUEST_DAY = "request_day"   # the day a user row's recency is computed for (not a model input)


def build_feature_tables(dataset_dir: Path, out_dir: Path, as_of: pd.Timestamp,
                         events: pd.DataFrame | None = None) -> dict:
    """Writes `user_features.parquet` and `item_features.parquet` (raw id -> model inputs) for
    the users of the training split and its items plus the catalogue's other servable items
    (the dataset's CATALOGUE: items without events too), as of `as_of`; returns their sizes.

    `events` (HISTORY_COLUMNS; default the dataset's whole history) are what the point-in-time
    statistics count: newer events refresh the tables without retraining, fewer (the offline
    evaluation's, without the test period) keep the future out. Beside the model inputs, each
    table keeps every key's last active day (`user_last_day`, `item_last_day`) and the user
    table the day it was computed for (`request_day`), so recency is recomputed per request."""
    from merlin.io import Dataset
    from merlin.schema import Tags

    import recfunnel.workflows  # noqa: F401  (Merlin's CPU fixes)
    from recfunnel.workflows.dataset import (CATALOGUE, fit_point_in_time, load_workflow,
                                             point_in_time_nodes, read_split)
    from recfunnel.workflows.point_in_time import PointInTimeStats, UserGroupStats, event_day

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    workflow = load_workflow(dataset_dir / "workflow")
    if events is not None:
        fit_point_in_time(workflow, events)
    train = read_split(dataset_dir / "train", [USER_KEY, ITEM_KEY, "timestamp"])
    users = np.unique(np.append(train[USER_KEY].to_numpy(), UNKNOWN_USER))
    # the items of the training split and every other servable item (with or without events)
    catalogue = dataset_dir / CATALOGUE
    servable = pd.read_parquet(catalogue)["item_id"].to_numpy(np.int64) if catalogue.is_file() \
        else np.empty(0, np.int64)
    items = np.unique(np.concatenate([train[ITEM_KEY].to_numpy(np.int64), servable]))
    stamp = pd.Timestamp(as_of)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    when = stamp if getattr(train["timestamp"].dtype, "tz", None) else stamp.tz_convert(None)
    day = int(event_day(np.array([stamp.tz_convert(None).to_datetime64()]))[0])
    nodes = point_in_time_nodes(workflow)
    last_day = {n.op.key: n.op for n in nodes if type(n.op) is PointInTimeStats}
    grouped = [n.op for n in nodes if isinstance(n.op, UserGroupStats)]
    pair_columns = [f"{op.prefix}_{name}" for op in grouped for name in op.stat_names]
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = workflow.output_schema
    sizes = {}
    for name, ids, key, tag, path in (
            ("users", users, "user_id", Tags.USER, USER_FEATURES),
            ("items", items, "item_id", Tags.ITEM, ITEM_FEATURES)):
        # one request row per id, with a placeholder partner id (labels are no model's input)
        other = "item_id" if key == "user_id" else "user_id"
        partner = items[0] if key == "user_id" else users[-1]
        rows = raw_rows(workflow.input_schema, {key: ids, other: np.full(len(ids), partner)},
                        when)
        out = workflow.transform(Dataset(rows, cpu=True)).to_ddf().compute()
        columns = [f"{key}_raw", *[c for c in schema.select_by_tag(tag).column_names
                                   if c not in pair_columns]]
        table = out[columns].sort_values(f"{key}_raw").reset_index(drop=True)
        prefix = key.removesuffix("_id")
        table[f"{prefix}_last_day"] = last_day[key].last_day(table[f"{key}_raw"], day) \
            if key in last_day else -1
        if key == "user_id":
            table[REQUEST_DAY] = np.int64(day)
            table[USER_KEY_COLUMN] = table[USER_KEY].to_numpy(np.int64)
        elif grouped:
            table[ITEM_GROUP] = grouped[0].group_of(table[ITEM_KEY])
        table.to_parquet(out_dir / path, index=False)
        sizes[name] = int(len(table))
    files = [USER_FEATURES, ITEM_FEATURES]
    if grouped:
        pairs = _pair_table(workflow, grouped[0], pair_columns, when)
        pairs.to_parquet(out_dir / PAIR_FEATURES, index=False)
        sizes["user_groups"], files = int(len(pairs)), [*files, PAIR_FEATURES]
    else:
        (out_dir / PAIR_FEATURES).unlink(missing_ok=True)   # an older build's, never stale
    return {"as_of": stamp.isoformat(), "as_of_day": day, **sizes,
            "events": None if events is None else int(len(events)), "files": files,
            "pair_groups": grouped[0].n_groups if grouped else None}


def _pair_table(workflow, op, columns: list[str], when) -> pd.DataFrame:
    """(user, item group) -> the user's statistics with that group, for every pair with
    history: the workflow's own output for a representative item of each group."""
    from merlin.io import Dataset

    keys = np.unique(op.table["key"].to_numpy(np.int64)) if op.table is not None else \
        np.empty(0, np.int64)
    users, groups = keys // op.n_groups, keys % op.n_groups
    first_item = pd.Series(op.group_items).groupby(op.group_codes).first()
    items = first_item.reindex(groups).to_numpy()
    keep = ~pd.isna(items)
    rows = raw_rows(workflow.input_schema, {"user_id": users[keep],
                                            "item_id": items[keep].astype(np.int64)}, when)
    if not len(rows):
        return pd.DataFrame({PAIR_KEY: np.empty(0, np.int64), **{c: [] for c in columns}})
    out = workflow.transform(Dataset(rows, cpu=True)).to_ddf().compute()
    table = out[columns].reset_index(drop=True)
    table.insert(0, PAIR_KEY, keys[keep])
    return table


class Columns:
    """Feature rows as one numpy array per column, for the request path: a lookup is a gather
    (`take`), not a pandas index operation, so a request costs microseconds per stage, not
    milliseconds. Read like a frame (`rows[name]`, `name in rows`, `rows.columns`, `len(rows)`);
    `Columns.of` takes a DataFrame too, so offline callers may pass either."""
    __slots__ = ("data", "n")

    def __init__(self, data: dict, n: int | None = None):
        self.data = {name: np.asarray(values) for name, values in data.items()}
        if n is None:
            if not self.data:
                raise ValueError("Columns without columns need their row count n")
            n = len(next(iter(self.data.values())))
        self.n = int(n)

    @classmethod
    def of(cls, rows) -> "Columns":
        """`rows` as Columns (a DataFrame's columns as arrays; Columns as they are)."""
        if isinstance(rows, Columns):
            return rows
        return cls({name: rows[name].to_numpy() for name in rows.columns}, len(rows))

    @property
    def columns(self) -> list[str]:
        return list(self.data)

    def __len__(self) -> int:
        return self.n

    def __contains__(self, name) -> bool:
        return name in self.data

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def __setitem__(self, name: str, values) -> None:
        values = np.asarray(values)
        self.data[name] = np.broadcast_to(values, (self.n,)).copy() if values.ndim == 0 \
            else values

    def take(self, index) -> "Columns":
        """The rows at `index` (positions or a slice), every column gathered."""
        if not isinstance(index, slice):
            index = np.asarray(index, np.int64)
        n = len(range(self.n)[index]) if isinstance(index, slice) else len(index)
        return Columns({name: values[index] for name, values in self.data.items()}, n)

    def drop(self, columns) -> "Columns":
        """These rows without the named columns."""
        return Columns({c: v for c, v in self.data.items() if c not in set(columns)}, self.n)

    def update(self, other: "Columns") -> None:
        self.data.update(other.data)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.data)


def find_sorted(keys: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """(positions, found) of `ids` in the sorted array `keys` by binary search: each id's
    position (0 where it is absent) and whether it is there."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if not len(keys):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    pos = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    found = keys[pos] == ids
    return np.where(found, pos, 0), found


class FeatureTable:
    """A feature table keyed by an integer id, held as arrays sorted by the key: `find` is a
    binary search, `rows` a gather (the request path's lookups, models.funnel)."""

    def __init__(self, frame: pd.DataFrame, key: str | None = None):
        """`frame` indexed by its key (or with the key as column `key`)."""
        ids = (frame[key] if key is not None else frame.index).to_numpy(np.int64)
        order = np.argsort(ids, kind="stable")
        self.keys = ids[order]
        self.columns = Columns({c: frame[c].to_numpy()[order] for c in frame.columns},
                               len(frame))
        self.dtypes = {c: v.dtype for c, v in self.columns.data.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found): each id's row position (0 where it has none) and whether it has
        a row."""
        return find_sorted(self.keys, ids)

    def rows(self, positions) -> Columns:
        return self.columns.take(positions)


@dataclass
class PairTable:
    """The version's (user, item group) features: `frame` indexed by user key x n_groups +
    the item's group; pairs without history get the workflow's value for none (zeros)."""
    frame: pd.DataFrame
    n_groups: int

    def __post_init__(self):
        self._table = FeatureTable(self.frame.astype(np.float32))

    def rows(self, user_key: np.ndarray, item_group: np.ndarray) -> Columns:
        keys = np.asarray(user_key, np.int64) * self.n_groups + np.asarray(item_group, np.int64)
        pos, found = self._table.find(keys)
        return Columns({name: np.where(found, values[pos], np.float32(0))
                        for name, values in self._table.columns.data.items()}, len(keys))


def load_pair_table(folder: Path) -> PairTable | None:
    """The version's pair features, or None when its data set has no item groups."""
    folder = Path(folder)
    if not (folder / PAIR_FEATURES).is_file():
        return None
    n_groups = read_manifest(folder, kind="features", verify=False)["config"]["pair_groups"]
    return PairTable(pd.read_parquet(folder / PAIR_FEATURES).set_index(PAIR_KEY), int(n_groups))


def recency_feature(request_day, last_day) -> np.ndarray:
    """[n] float32 model input `<prefix>_days_since_last` for a request on `request_day`:
    log(1 + days since the last active day before it), capped at NEVER days; last_day -1 means
    no earlier event. The workflow's arithmetic (PointInTimeStats -> float32 -> nvtabular's
    LogOp), repeated here so serving needs no NVTabular; a test holds the two equal."""
    request_day = np.asarray(request_day, np.float64)
    last_day = np.asarray(last_day, np.float64)
    days = np.where((last_day >= 0) & (last_day < request_day),
                    np.minimum(request_day - last_day, NEVER_DAYS), NEVER_DAYS).astype(np.float32)
    return np.log(days + 1)


def history_events(dataset_dir: Path, before=None, without_split: str | None = None
                   ) -> pd.DataFrame:
    """The dataset's safe event history (HISTORY_COLUMNS), optionally only events before
    `before` and without the (user, item) pairs of one split (e.g. "test"): the state an
    offline evaluation may know when it ranks for that split."""
    from recfunnel.workflows.dataset import HISTORY, read_split

    if not list((Path(dataset_dir) / HISTORY).glob("*.parquet")):
        raise FileNotFoundError(f"{Path(dataset_dir) / HISTORY}: no event history; the dataset "
                                "was built by an older recfunnel: rerun the dataset step")
    events = read_split(Path(dataset_dir) / HISTORY)
    if before is not None:
        cut = pd.Timestamp(before)
        ts = events["timestamp"]
        if getattr(ts.dtype, "tz", None) is None and cut.tzinfo is not None:
            cut = cut.tz_convert("UTC").tz_localize(None)
        events = events[ts < cut]
    if without_split is not None:
        held = read_split(Path(dataset_dir) / without_split, [USER_KEY, ITEM_KEY])
        held = held.drop_duplicates().rename(columns={USER_KEY: "user_id", ITEM_KEY: "item_id"})
        marked = events.merge(held.assign(_held=True), on=["user_id", "item_id"], how="left")
        events = events[marked["_held"].isna().to_numpy()]
    return events.reset_index(drop=True)


def raw_rows(input_schema, columns: dict, timestamp) -> pd.DataFrame:
    """Raw workflow input rows: the given columns, `timestamp`, zeros for every other input."""
    n = len(next(iter(columns.values())))
    frame = {col.name: np.zeros(n, dtype=col.dtype.to_numpy) for col in input_schema}
    for name, values in columns.items():
        frame[name] = np.asarray(values).astype(input_schema[name].dtype.to_numpy)
    frame = pd.DataFrame(frame)
    frame["timestamp"] = timestamp
    return frame


def example_rows(dataset_dir: Path, user_raw, item_raw, timestamp) -> pd.DataFrame:
    """Model-ready rows for raw (user, item, time) triples through the saved workflow: every
    feature as the dataset build computes it for an example at that time (point-in-time
    statistics of the days before it); labels and event columns are 0."""
    from merlin.io import Dataset

    import recfunnel.workflows  # noqa: F401  (Merlin's CPU fixes)
    from recfunnel.workflows.dataset import load_workflow

    workflow = load_workflow(Path(dataset_dir) / "workflow")
    rows = raw_rows(workflow.input_schema, {"user_id": user_raw, "item_id": item_raw},
                    np.asarray(timestamp))
    return workflow.transform(Dataset(rows, cpu=True)).to_ddf().compute().reset_index(drop=True)


def refresh_feature_tables(dataset_dir: Path, version_dir: Path, new_events=None) -> dict:
    """Rebuilds a trained version's served tables (`features/`) from the dataset's history plus
    `new_events` (our event schema; their items mapped to canonical ids and unsafe items
    dropped as the build did), as of the midnight after the newest event, without retraining.
    The models are unchanged: only counts, rates and last active days move."""
    from recfunnel.workflows.dataset import HISTORY_COLUMNS

    dataset_dir, version_dir = Path(dataset_dir), Path(version_dir)
    version = read_manifest(version_dir / FEATURES, kind="features")["version"]
    events = history_events(dataset_dir)
    added = 0
    if new_events is not None:
        fresh = _as_history(pd.DataFrame(new_events), dataset_dir)
        added = int(len(fresh))
        events = pd.concat([events, fresh[HISTORY_COLUMNS]], ignore_index=True)
    as_of = pd.Timestamp(events["timestamp"].max()).normalize() + pd.Timedelta(days=1)
    info = build_feature_tables(dataset_dir, version_dir / FEATURES, as_of, events=events)
    info["new_events"] = added
    write_manifest(version_dir / FEATURES, version, "features", config=info)
    return info


def _as_history(events: pd.DataFrame, dataset_dir: Path) -> pd.DataFrame:
    """New events in the history's terms: canonical item ids, no unsafe item, naive UTC."""
    from recfunnel.workflows.dataset import HISTORY_COLUMNS

    missing = [c for c in HISTORY_COLUMNS if c not in events]
    if missing:
        raise ValueError(f"new events lack the columns {missing}; they need {HISTORY_COLUMNS}")
    events = events[HISTORY_COLUMNS].copy()
    ts = pd.to_datetime(events["timestamp"], utc=True)
    events["timestamp"] = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    artifacts = Path(dataset_dir) / "artifacts"
    mapping = pd.read_parquet(artifacts / "canonical_items.parquet")
    canonical = mapping.set_index("item_id")["canonical_id"]
    events["item_id"] = events["item_id"].map(canonical).fillna(events["item_id"]).astype(np.int64)
    unsafe_path = artifacts / "unsafe_items.parquet"
    if unsafe_path.is_file():
        unsafe = pd.read_parquet(unsafe_path, columns=["canonical_id"])["canonical_id"]
        events = events[~events["item_id"].isin(unsafe)]
    return events.reset_index(drop=True)


def load_feature_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(users, items) indexed by raw id."""
    folder = Path(folder)
    return (pd.read_parquet(folder / USER_FEATURES).set_index(USER_KEY),
            pd.read_parquet(folder / ITEM_FEATURES).set_index(ITEM_KEY))
