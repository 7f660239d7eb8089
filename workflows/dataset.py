"""The dataset build: validated events -> filtered, labelled, featured train / valid / test.

Each step is a small NVTabular workflow over a Merlin Dataset, and the step report counts rows,
users and items before and after each (L1.5):

  canonical_items   copies of the same content -> one id (L1.3)
  unsafe_content    events of unsafe items out (L1.4)
  freshness_window  only the last `window_days` before the cut-off train (L1.2)
  active_users      users with >= K events in the N days before the cut-off (L1.1)
  examples          split by time (or at random), labels, one row per (user, item, split) (L5.4)
  negative_sampling sampled unseen items labelled 0 (L4.4)

then the feature workflow (point-in-time statistics, user and item attributes, Categorify with
bounded id spaces; L5.3, L3.1) is fitted on training data only, saved for serving, and applied
to every split. Checks that fail loudly run on the result.

Steps compose lazily and the data is kept in memory (persisted) only where more than one
reader needs it: the safe history, the events by user, the examples. Every partition costs each
node of a workflow a pass of Merlin's executor, so partitions are as large as part_size allows.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import dask
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import nvtabular as nvt
from merlin.io import Dataset
from merlin.schema import Tags
from nvtabular import ops

from recfunnel.config import ComputeConfig, DatasetConfig
from recfunnel.errors import RecfunnelError
from recfunnel.names import LABELS, SIGNALS
from recfunnel.workflows import backend
from recfunnel.workflows.duplicates import BLOCK_COLUMNS, blocking_columns, canonical_ids
from recfunnel.workflows.fitting import fit_statistics
from recfunnel.workflows.keyed_join import KeyedJoin
from recfunnel.workflows.labels import WatchLabels
from recfunnel.workflows.negatives import NegativeSampler
from recfunnel.workflows.point_in_time import (STAT_NAMES, LogCounts, PointInTimeStats,
                                               UserGroupStats)
from recfunnel.workflows.splits import SPLIT_NAMES, TRAIN, AggregatePairs, SplitAssigner
from recfunnel.workflows.unsafe import build_filters, runnable_filters, unsafe_item_table

EVENT_COLUMNS = ["user_id", "item_id", "timestamp", *SIGNALS, "watch_seconds", "duration_seconds"]
HISTORY = "history"              # the safe, canonical events: what point-in-time features read
GROUP_COLUMN = "category"        # the item attribute whose per-user history is a feature
HISTORY_COLUMNS = ["user_id", "item_id", "timestamp", "click", "watch_seconds",
                   "duration_seconds"]
DAY = pd.Timedelta(days=1)
SHUFFLE = "tasks"    # dask's in-memory shuffle; one process would default to partd on disk
CATALOGUE = "artifacts/catalogue.parquet"   # the servable item ids (dataset.servable_items)
AGE_BOUNDARIES = [18, 25, 35, 45, 55]


class DatasetCheckError(RecfunnelError, AssertionError):
    """The built training set breaks one of the L5.4 rules; the build stops."""


@dataclass
class Cutoffs:
    data_end: pd.Timestamp        # exclusive: midnight after the last event
    train_end: pd.Timestamp
    valid_end: pd.Timestamp

    @classmethod
    def after(cls, last_event: pd.Timestamp, cfg: DatasetConfig) -> "Cutoffs":
        """The cut-offs for data whose last event is `last_event` (naive UTC)."""
        data_end = pd.Timestamp(last_event).normalize() + DAY
        if cfg.train_end:
            train_end = pd.Timestamp(cfg.train_end)
        elif cfg.split == "time":
            train_end = data_end - (cfg.valid_days + cfg.test_days) * DAY
        else:
            train_end = data_end
        return cls(data_end, train_end, train_end + cfg.valid_days * DAY)

    @property
    def window_end(self) -> pd.Timestamp:
        """The end of the training period, before which activity and freshness are counted."""
        return self.train_end


class StepReport:
    """Rows, users and items after each step; each entry also holds the counts before it."""

    def __init__(self):
        self.steps: list[dict] = []
        self.last: tuple[int, int, int] | None = None

    def record(self, name: str, ddf, **extra) -> None:
        rows, users, items = (int(v) for v in dask.compute(
            ddf.index.size, ddf["user_id"].nunique(), ddf["item_id"].nunique()))
        self.record_counts(name, rows, users, items, **extra)

    def record_counts(self, name: str, rows: int, users: int, items: int, **extra) -> None:
        """A step whose counts are known without a pass over its rows."""
        if self.last is not None:
            before = self.last
            self.steps.append({"name": name, "rows_before": before[0], "rows_after": rows,
                               "users_before": before[1], "users_after": users,
                               "items_before": before[2], "items_after": items, **extra})
        self.last = (rows, users, items)


class DatasetBuilder:
    """Runs the steps above; `build()` returns the summary's `dataset` section."""

    def __init__(self, cfg: DatasetConfig, compute: ComputeConfig, data_dir: Path, out_dir: Path,
                 progress: bool = True):
        self.cfg, self.compute = cfg, compute
        self.data_dir, self.out = Path(data_dir), Path(out_dir)
        self.cpu = backend.use_cpu(compute)
        self.report = StepReport()
        self.progress = progress
        self.items = pd.read_parquet(self.data_dir / "items.parquet")
        self.users = pd.read_parquet(self.data_dir / "users.parquet")
        # A filter the catalogue cannot feed (no titles, no flags) is skipped and said so; the
        # pipeline refuses it before any step when the user asked for it (recfunnel.preflight).
        runnable, skipped = runnable_filters(cfg.unsafe_filters, self.items)
        self.cfg = replace(cfg, unsafe_filters=runnable)
        self.warnings = [f"unsafe filter {spec['kind']!r} skipped: {why}" for spec, why in skipped]

    # ---- helpers ---------------------------------------------------------------------------
    def _dataset(self, source) -> Dataset:
        # Small files (one a day) share a partition up to part_size: every partition costs
        # each workflow node a pass of Merlin's executor, whatever its rows.
        return Dataset(source, engine="parquet", cpu=self.cpu, part_size=self.compute.part_size,
                       aggregate_files=True)

    def _apply(self, graph, ds: Dataset, fit_on: Dataset | None = None,
               persist: bool = True) -> Dataset:
        """Transforms `ds` by `graph`, its statistics fitted first (on `fit_on`, default `ds`),
        and keeps the result in memory for the steps and counts that read it (`persist`), or
        leaves it lazy for the next workflow to compose with."""
        workflow = fit_statistics(nvt.Workflow(graph), fit_on if fit_on is not None else ds)
        ddf = workflow.transform(ds).to_ddf()
        return Dataset(ddf.persist() if persist else ddf, cpu=self.cpu)

    def cutoffs(self, ddf) -> Cutoffs:
        return Cutoffs.after(pd.Timestamp(ddf["timestamp"].max().compute()), self.cfg)

    # ---- the build -------------------------------------------------------------------------
    def build(self) -> dict:
        shutil.rmtree(self.out, ignore_errors=True)
        (self.out / "artifacts").mkdir(parents=True)
        steps = tqdm(total=8, desc="dataset", unit="step", disable=not self.progress)
        ds = self._dataset(str(self.data_dir / "events"))
        events = ds.to_ddf()[EVENT_COLUMNS]
        # Merlin has no tz-aware dtype: inside the workflows timestamps are naive UTC.
        if getattr(events["timestamp"].dtype, "tz", None) is not None:
            events["timestamp"] = events["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        ds = Dataset(events.persist(), cpu=self.cpu)
        self.report.record("validated_events", ds.to_ddf())
        cut = self.cutoffs(ds.to_ddf())

        dup = self.canonical_items(ds)
        steps.update()
        ds, unsafe = self.unsafe_content(ds)
        steps.update()
        history = ds      # every safe event, for point-in-time features
        ds = self.freshness_window(ds, cut)
        steps.update()
        ds, left_out = self.active_users(ds, cut)
        steps.update()
        ds = self.examples(ds, cut)
        steps.update()
        ds = self.negative_sampling(ds)
        steps.update()
        splits, tables = self.features(ds, history, cut)
        steps.update()
        checks = self.check(splits, cut)
        steps.update()
        steps.close()
        return dataset_section(self.report.steps, cut, self.cfg.split, checks, dup, unsafe,
                               left_out, tables, {"cpu": self.cpu, "cluster": self.compute.cluster},
                               self.out)

    def canonical_items(self, ds: Dataset):
        counts = ds.to_ddf()["item_id"].value_counts().compute()
        counts = backend.host_frame(counts)
        if "title" in self.items and self.items["title"].notna().any():
            mapping = canonical_ids(self.items, counts, self.cfg.duplicate_title_similarity)
            if not blocking_columns(self.items):
                self.warnings.append(
                    f"duplicate detection compares titles only: the catalogue has none of "
                    f"{', '.join(BLOCK_COLUMNS)}, so items with equal titles (remakes without "
                    "a year in the title) become one; give items a year column")
        else:
            self.warnings.append("duplicate detection skipped: the catalogue has no titles")
            mapping = pd.DataFrame({"item_id": self.items["item_id"].astype(np.int64),
                                    "canonical_id": self.items["item_id"].astype(np.int64),
                                    "group_size": np.int64(1)})
        mapping.to_parquet(self.out / "artifacts" / "canonical_items.parquet", index=False)
        copies = int((mapping["item_id"] != mapping["canonical_id"]).sum())
        self.canonical = mapping
        # The mapping itself runs in the unsafe-content workflow, in the same pass; the counts
        # after it follow from the item counts: rows and users stay, copies become one item.
        rows, users, _ = self.report.last
        seen = counts.index.to_series()
        items = seen.map(mapping.set_index("item_id")["canonical_id"]).fillna(seen).nunique()
        self.report.record_counts("canonical_items", rows, users, int(items),
                                  note=f"{copies} copies mapped")
        return {"copies": copies, "groups": int((mapping["group_size"] > 1).sum() - copies)}

    def unsafe_content(self, ds: Dataset):
        """Each event's item as its canonical id, events of unsafe items out: one workflow."""
        table = unsafe_item_table(self.items, build_filters(self.cfg.unsafe_filters))
        table["canonical_id"] = table["item_id"].map(
            self.canonical.set_index("item_id")["canonical_id"])
        table.to_parquet(self.out / "artifacts" / "unsafe_items.parquet", index=False)
        blocked = np.unique(table["canonical_id"].to_numpy(np.int64))
        self.catalogue = servable_items(self.canonical, blocked)
        pd.DataFrame({"item_id": self.catalogue}).to_parquet(self.out / CATALOGUE, index=False)
        copied = self.canonical[self.canonical["item_id"] != self.canonical["canonical_id"]]
        order = np.argsort(copied["item_id"].to_numpy(np.int64))  # the copies only: a few %
        copy_ids = copied["item_id"].to_numpy(np.int64)[order]
        canonical_ids = copied["canonical_id"].to_numpy(np.int64)[order]

        def canonical_and_safe(df):          # Filter keeps the frame its function returns
            # A sorted-array lookup, not Series.map: dask runs the partitions in threads, and
            # pandas 1.5 fills a shared index's hash table lazily, racing into a spurious
            # InvalidIndexError (seen in CI with 4 partitions; 33 of 1,200 calls in a repro).
            item = df["item_id"].to_numpy(np.int64)
            if len(copy_ids):
                at = np.minimum(np.searchsorted(copy_ids, item), len(copy_ids) - 1)
                item = np.where(copy_ids[at] == item, canonical_ids[at], item)
            return df.assign(item_id=item)[~np.isin(item, blocked)]

        out = self._apply(EVENT_COLUMNS >> ops.Filter(f=canonical_and_safe), ds)
        by_filter = table["filters"].str.split(",").explode().value_counts().to_dict()
        self.report.record("unsafe_content", out.to_ddf(), note=f"{len(blocked)} items blocked")
        return out, {"items_blocked": int(len(blocked)), "by_filter": by_filter}

    def freshness_window(self, ds: Dataset, cut: Cutoffs) -> Dataset:
        if self.cfg.window_days is None:
            self.report.record("freshness_window", ds.to_ddf(), note="all history")
            return ds
        start = cut.window_end - self.cfg.window_days * DAY
        graph = EVENT_COLUMNS >> ops.Filter(f=lambda df: df["timestamp"] >= start)
        out = self._apply(graph, ds, persist=False)         # active_users composes with it
        self.report.record("freshness_window", out.to_ddf(), note=f"from {start.date()}")
        return out

    def active_users(self, ds: Dataset, cut: Cutoffs):
        """Keeps users with >= K events in the N days before the cut-off; saves those left out.
        The events kept come with each user's in one partition (what the examples need)."""
        ddf = ds.to_ddf()
        start = cut.window_end - self.cfg.active_window_days * DAY
        recent = ddf[(ddf["timestamp"] >= start) & (ddf["timestamp"] < cut.window_end)]
        counts, seen = dask.compute(recent["user_id"].value_counts(), ddf["user_id"].unique())
        counts = backend.host_frame(counts)
        seen = backend.host_frame(seen)
        active = counts[counts >= self.cfg.active_min_events].index.to_numpy(np.int64)
        left = pd.DataFrame({"user_id": np.setdiff1d(seen.to_numpy(np.int64), active)})
        left["events_in_window"] = left["user_id"].map(counts).fillna(0).astype(np.int64)
        left["reason"] = np.where(left["events_in_window"] > 0, "inactive", "new_or_idle")
        left.to_parquet(self.out / "artifacts" / "left_out_users.parquet", index=False)
        graph = EVENT_COLUMNS >> ops.Filter(f=lambda df: df["user_id"].isin(active))
        kept = self._apply(graph, ds, persist=False).to_ddf()
        out = Dataset(kept.shuffle("user_id", shuffle=SHUFFLE).persist(), cpu=self.cpu)
        self.report.record("active_users", out.to_ddf(),
                           note=f">= {self.cfg.active_min_events} events in "
                                f"{self.cfg.active_window_days} days")
        return out, {"count": int(len(left)),
                     "by_reason": left["reason"].value_counts().to_dict(),
                     "path": "artifacts/left_out_users.parquet"}

    def examples(self, ds: Dataset, cut: Cutoffs) -> Dataset:
        """`ds`: events with each user's in one partition, so the per-user split, the pairs and
        the negatives after them all work partition by partition."""
        cfg = self.cfg
        # One workflow, one pass: split, labels (thresholds from the training rows), pairs.
        split = ["timestamp", "user_id", "item_id"] >> SplitAssigner(
            cfg.split, cut.train_end.value, cut.valid_end.value, cfg.random_fractions, cfg.seed)
        labels = (["click", "watch_seconds", "duration_seconds"] + split) >> WatchLabels(
            cfg.watch_threshold, cfg.duration_edges, cfg.watch_quantile)
        pairs = self._apply((EVENT_COLUMNS + split + labels) >> AggregatePairs(), ds)
        self.report.record("examples", pairs.to_ddf(), note="one row per (user, item, split)")
        require_nonempty_splits(backend.host_frame(pairs.to_ddf()["split"].value_counts().compute()),
                                cut)
        return pairs

    def negative_sampling(self, ds: Dataset) -> Dataset:
        if self.cfg.negatives_per_row <= 0:
            self.report.record("negative_sampling", ds.to_ddf(), note="off")
            return ds
        ddf = ds.to_ddf()
        train = Dataset(ddf[ddf["split"] == TRAIN], cpu=self.cpu)
        sampler = NegativeSampler(self.cfg.negatives_per_row, self.cfg.negative_sampling,
                                  self.cfg.seed)
        out = self._apply(list(ddf.columns) >> sampler, ds, fit_on=train)
        self.report.record("negative_sampling", out.to_ddf(),
                           note=f"{self.cfg.negatives_per_row} per row, {self.cfg.negative_sampling}")
        return out

    # ---- features, fitted on training data only -------------------------------------------
    def feature_graph(self, item_vocabulary: np.ndarray | None = None):
        """The feature workflow; `item_vocabulary` (raw item ids, in id order) fixes the item
        ids' Categorify, so that items without a training example get ids of their own."""
        cfg = self.cfg
        pit_inputs = ["timestamp", "click", "watch_seconds", "duration_seconds"]
        user_stats = _scaled_stats(["user_id", *pit_inputs] >> PointInTimeStats("user_id", "user"),
                                   "user", Tags.USER)
        item_stats = _scaled_stats(["item_id", *pit_inputs] >> PointInTimeStats("item_id", "item"),
                                   "item", Tags.ITEM)
        groups = item_groups(self.items)
        if groups is not None:       # the user's own history with this kind of item
            op = UserGroupStats(groups)
            item_stats += _scaled_stats(["user_id", "item_id", *pit_inputs] >> op, op.prefix,
                                        Tags.ITEM, op.stat_names)
        # Attributes a source does not have (MovieLens has no creator or duration) are left out.
        users, user_cats = _attributes(self.users, "user_id", ["gender", "location"], ["age"])
        items, item_cats = _attributes(self.items.rename(columns={"duration_seconds": "item_duration"}),
                                       "item_id", ["category", "creator"], ["item_duration"])
        user_attrs = ["user_id"] >> KeyedJoin(users, on="user_id", columns_ext=list(users.columns))
        item_attrs = ["item_id"] >> KeyedJoin(items, on="item_id", columns_ext=list(items.columns))
        categorify = dict(freq_threshold=cfg.freq_threshold, out_path=str(self.out / "categories"),
                          dtype="int32")
        if cfg.hash_buckets:
            categorify["num_buckets"] = cfg.hash_buckets
        user_id = ["user_id"] >> ops.Categorify(**categorify) >> ops.TagAsUserID()
        vocabulary = {} if item_vocabulary is None else \
            {"vocabs": {"item_id": pd.Series(item_vocabulary, dtype=np.int64)}}
        item_id = ["item_id"] >> ops.Categorify(**categorify, **vocabulary) >> ops.TagAsItemID()
        raw_ids = ["user_id", "item_id"] >> ops.Rename(postfix="_raw")
        attributes = user_id + item_id
        if "age" in users:
            band_domain = {"domain": {"min": 0, "max": len(AGE_BOUNDARIES), "name": "age_band"}}
            attributes += (user_attrs["age"] >> ops.Bucketize({"age": AGE_BOUNDARIES})
                           >> ops.Rename(name="age_band") >> ops.AddProperties(band_domain)
                           >> ops.TagAsUserFeatures())
        if user_cats:
            attributes += (user_attrs[user_cats] >> ops.Categorify(
                out_path=str(self.out / "categories"), dtype="int32") >> ops.TagAsUserFeatures())
        if item_cats:
            attributes += (item_attrs[item_cats] >> ops.Categorify(
                out_path=str(self.out / "categories"), dtype="int32") >> ops.TagAsItemFeatures())
        if "item_duration" in items:
            attributes += (item_attrs["item_duration"] >> ops.LogOp()
                           >> ops.AddTags([Tags.CONTINUOUS]) >> ops.TagAsItemFeatures())
        labels = list(LABELS) >> ops.AddTags([Tags.TARGET, Tags.BINARY_CLASSIFICATION])
        passthrough = ["split", "timestamp", "sampled_negative", "events", "watch_seconds"]
        return attributes + raw_ids + user_stats + item_stats + labels + passthrough

    def features(self, examples: Dataset, history: Dataset, cut: Cutoffs):
        ddf = examples.to_ddf()
        train = Dataset(ddf[ddf["split"] == TRAIN], cpu=self.cpu)
        hist = history.to_ddf()
        train_counts = backend.host_frame(train.to_ddf()["item_id"].value_counts().compute())
        graph = self.feature_graph(item_vocabulary(train_counts, self.catalogue,
                                                   self.cfg.freq_threshold))
        workflow = nvt.Workflow(graph)
        # Point-in-time statistics learn from the whole safe event history (each example reads
        # only the days before its own, so valid and test examples see what serving would have
        # known then, not a state frozen at the cut-off); everything else (Categorify,
        # thresholds) learns from the training examples only, in a fit that leaves the
        # point-in-time statistics as they are.
        workflow.fit_schema(train.schema)
        fit_point_in_time(workflow, hist)
        fit_statistics(workflow, train)
        workflow.save(str(self.out / "workflow"))
        # the history, for refreshing the served tables and the offline evaluation's tables
        hist[HISTORY_COLUMNS].to_parquet(str(self.out / HISTORY), write_index=False)
        pit_nodes = point_in_time_nodes(workflow)
        for node in pit_nodes:
            node.op.latest().to_parquet(self.out / "artifacts" / f"{node.op.prefix}_features.parquet",
                                        index=False)
        splits = {}
        for code, name in SPLIT_NAMES.items():
            part = Dataset(ddf[ddf["split"] == code], cpu=self.cpu)
            workflow.transform(part).to_parquet(str(self.out / name), output_files=None)
            splits[name] = self.out / name
        return splits, embedding_tables(workflow.output_schema, self.cfg.embedding_dim)

    # ---- checks that fail loudly (L5.4) ----------------------------------------------------
    def check(self, splits: dict[str, Path], cut: Cutoffs) -> dict:
        frames = {name: read_split(path, ["user_id_raw", "item_id_raw", "timestamp",
                                          "sampled_negative", *LABELS])
                  for name, path in splits.items()}
        result = check_splits(frames, cut, self.cfg.split)
        (self.out / "artifacts" / "checks.json").write_text(json.dumps(result["passed"]))
        return result


def dataset_section(steps, cut: Cutoffs, split_kind: str, checks: dict, duplicates: dict,
                    unsafe: dict, left_out: dict, tables: list, backend_info: dict,
                    path: Path) -> dict:
    """The summary's `dataset` section, in the shape other tools read."""
    return {
        "steps": steps,
        "cutoffs": {"data_end": cut.data_end.isoformat(), "train_end": cut.train_end.isoformat(),
                    "valid_end": cut.valid_end.isoformat(), "split": split_kind},
        "splits": checks["rows"],
        "positives": checks["positives"],
        "duplicates": duplicates,
        "unsafe": unsafe,
        "left_out_users": left_out,
        "embedding_tables": tables,
        "checks": checks["passed"],
        "backend": backend_info,
        "path": str(path),
    }


def servable_items(canonical: pd.DataFrame, unsafe: np.ndarray) -> np.ndarray:
    """The catalogue the funnel may serve: every canonical id (copies map to theirs) that is
    not unsafe, sorted; with or without events."""
    ids = np.unique(canonical["canonical_id"].to_numpy(np.int64))
    return np.setdiff1d(ids, np.asarray(unsafe, np.int64))


def item_vocabulary(train_counts: pd.Series, catalogue: np.ndarray, freq_threshold: int
                    ) -> np.ndarray:
    """Raw item ids in the order of their categorified ids: the training examples' items seen
    at least `freq_threshold` times, most frequent first (ties by id), then the catalogue's
    items without any training example, by id (rarer training items share the OOV id).

    A catalogue of a million items has most of them without events; each still needs an id of
    its own to be a candidate (the two-tower embeds it by its attributes) and to have a row in
    the served item table. E.g. counts {7: 3, 5: 3, 9: 1}, catalogue [5, 7, 8, 9], threshold 2
    -> [5, 7, 8]: 9 had one example (OOV), 8 none (its own id)."""
    counts = train_counts[train_counts >= max(freq_threshold, 1)]
    frequent = pd.DataFrame({"item_id": counts.index.to_numpy(np.int64),
                             "count": counts.to_numpy()}).sort_values(
        ["count", "item_id"], ascending=[False, True])["item_id"].to_numpy(np.int64)
    cold = np.setdiff1d(np.asarray(catalogue, np.int64), train_counts.index.to_numpy(np.int64))
    return np.concatenate([frequent, cold])


def require_nonempty_splits(counts: pd.Series, cut: Cutoffs) -> None:
    """Stops the build before fitting features when a split got no example."""
    for code, name in SPLIT_NAMES.items():
        if int(counts.get(code, 0)) == 0:
            raise DatasetCheckError(
                f"split '{name}' is empty (train_end {cut.train_end}, valid until "
                f"{cut.valid_end}, data until {cut.data_end}); widen the data or move "
                "dataset.train_end / valid_days / test_days")


def check_splits(frames: dict[str, pd.DataFrame], cut: Cutoffs, split_kind: str) -> dict:
    """Split sizes and positives, after the L5.4 rules; DatasetCheckError names the first broken.

    Rules: every split non-empty, labels in {0, 1}, no (user, item) twice in a split, and for a
    time split no training event at or after the cut-off and no later event before it.
    """
    rows, positives = {}, {}
    for name, frame in frames.items():
        rows[name] = int(len(frame))
        if len(frame) == 0:
            raise DatasetCheckError(f"split '{name}' is empty; widen the data or move "
                                    f"dataset.train_end / valid_days / test_days")
        for label in LABELS:
            bad = ~frame[label].isin([0, 1])
            if bad.any():
                raise DatasetCheckError(f"split '{name}': label '{label}' has values other "
                                        f"than 0/1: {frame.loc[bad, label].unique()[:5]}")
        positives[name] = {label: int(frame[label].sum()) for label in LABELS}
        dup = frame.duplicated(["user_id_raw", "item_id_raw"])
        if dup.any():
            raise DatasetCheckError(f"split '{name}': {int(dup.sum())} duplicate (user, item) pairs")
        if split_kind == "time":
            ts = frame["timestamp"]
            if name == "train" and (ts >= cut.train_end).any():
                raise DatasetCheckError(f"split 'train' has events at or after the cut-off "
                                        f"{cut.train_end}")
            if name != "train" and (ts < cut.train_end).any():
                raise DatasetCheckError(f"split '{name}' has events before the training "
                                        f"cut-off {cut.train_end}")
    passed = ["splits non-empty", "labels in {0, 1}", "no duplicate (user, item) in a split"]
    if split_kind == "time":
        passed.append("no valid/test event before the training cut-off")
    return {"rows": rows, "positives": positives, "passed": passed}


def item_groups(items: pd.DataFrame, column: str = GROUP_COLUMN) -> pd.Series | None:
    """Raw item id -> group code (0..n-1) by the item attribute `column` (the first of a
    '|'-separated list); None when the catalogue has no such attribute."""
    if column not in items or not items[column].notna().any():
        return None
    first = items[column].astype("string").str.split("|").str[0].fillna("unknown")
    codes = pd.Categorical(first).codes.astype(np.int64)
    return pd.Series(codes, index=items["item_id"].to_numpy(np.int64))


def _scaled_stats(stats, prefix: str, tag, names=STAT_NAMES):
    """Counts and day gaps are heavy-tailed (up to tens of thousands); models get log(1 + x).
    Rates and fractions are already in [0, 1]."""
    counts = [f"{prefix}_{n}" for n in ("events", "clicks", "days_since_last") if n in names]
    rates = [f"{prefix}_{n}" for n in ("click_rate", "watch_fraction") if n in names]
    return stats[counts + rates] >> LogCounts(counts) >> ops.AddTags([tag, Tags.CONTINUOUS])


def _attributes(table: pd.DataFrame, key: str, categorical: list[str], continuous: list[str]):
    """The attribute table to join (columns with at least one value) and its categorical names."""
    present = [c for c in categorical + continuous if c in table and table[c].notna().any()]
    out = table[[key, *present]].copy()
    for c in present:
        out[c] = out[c].fillna("unknown") if c in categorical else \
            out[c].astype("float64").fillna(out[c].astype("float64").median())
    return out, [c for c in categorical if c in present]


def read_split(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A written split as one pandas frame (its parquet parts, without Merlin's schema files)."""
    parts = sorted(Path(path).glob("*.parquet"))
    return pd.concat([pd.read_parquet(p, columns=columns) for p in parts], ignore_index=True)


def load_workflow(folder: Path):
    """The fitted workflow saved in `folder`. A workflow pickled before `workflows/` became
    `recfunnel.workflows` holds operators of another module object, so every isinstance check
    on them (the point-in-time statistics a refresh refits) would fail in silence: refused."""
    workflow = nvt.Workflow.load(str(folder))
    stale = sorted({type(n.op).__module__ for n in _nodes(workflow.output_node)
                    if type(n.op).__module__.startswith("workflows.")})
    if stale:
        raise RecfunnelError(
            f"the workflow in {folder} was saved by an older recfunnel (its operators come "
            f"from {', '.join(stale)}); rebuild the data set: recfunnel pipeline run "
            f"--steps data,dataset")
    return workflow


def point_in_time_nodes(workflow) -> list:
    """The workflow's PointInTimeStats nodes (user and item)."""
    return [n for n in _nodes(workflow.output_node) if isinstance(n.op, PointInTimeStats)]


def fit_point_in_time(workflow, events) -> None:
    """(Re)fits the workflow's point-in-time statistics on `events` (a dask or pandas frame
    with HISTORY_COLUMNS); nothing else of the workflow changes."""
    import dask.dataframe as dd

    if not isinstance(events, dd.DataFrame):
        events = dd.from_pandas(events, npartitions=1)
    nodes = point_in_time_nodes(workflow)
    daily = dask.compute(*[node.op.fit(node.input_columns, events[node.input_columns.names])
                           for node in nodes])          # one pass over the events for all
    for node, stats in zip(nodes, daily):
        node.op.fit_finalize(stats)
        node.op.fitted = True


def _nodes(node):
    seen, stack = [], [node]
    while stack:
        n = stack.pop()
        if any(n is s for s in seen):
            continue
        seen.append(n)
        stack.extend(n.parents_with_dependencies)
    return seen


def embedding_tables(schema, dim: int) -> list[dict]:
    """Rows x dim x 4 bytes for every categorical column a model would embed (L3.1)."""
    out = []
    for col in schema:
        if Tags.CATEGORICAL not in col.tags:
            continue
        rows = int(col.int_domain.max) + 1 if col.int_domain else 0
        out.append({"column": col.name, "rows": rows, "dim": dim,
                    "megabytes": round(rows * dim * 4 / 2**20, 3)})
    return out
