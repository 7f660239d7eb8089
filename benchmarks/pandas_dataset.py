"""The baseline of the dataset benchmark (benchmarks/bench_dataset.py): the build of
`workflows/dataset.py` written by hand in pandas, as a team would write it without NVTabular.

Same steps, same settings (`DatasetConfig`), same semantics, in one process and in memory:

  canonical_items   copies of the same content -> one id
  unsafe_content    events of unsafe items out
  freshness_window  only the last `window_days` before the cut-off train
  active_users      users with >= K events in the N days before the cut-off
  examples          split, labels (thresholds fitted on train events), one row per
                    (user, item, split)
  negative_sampling sampled unseen items labelled 0 (popularity fitted on train examples)
  features          point-in-time user, item and user-by-category statistics (the whole safe
                    history, each example reading the days before its own; counts and day gaps
                    as log(1 + x)), user and item attributes, categorical ids fitted on the
                    training examples; then the same loud checks, and train/valid/test and the
                    history written as parquet.

The pure numpy/pandas functions of `workflows/*.py` are reused as they are (canonical_ids,
unsafe_item_table, assign_split, aggregate_pairs, the watch-label functions, sample_negatives,
daily_activity / cumulative_table / lookup), so the two builds share their logic; the glue
between them (a few lines per step) is repeated here and has to follow changes to
workflows/dataset.py. No NVTabular operator, Merlin Dataset or Workflow is used. (Importing those
modules still imports NVTabular and, through Merlin, TensorFlow: about 0.5 GB of the baseline's
resident memory and several seconds of start-up are that import, not the build.)

Where the baseline differs from the NVTabular build, on purpose:
  - Categorify is a vocabulary of training values (pandas value_counts / Index.get_indexer, i.e.
    factorize on train values) in NVTabular's layout: 0 padding, 1 null, 2 .. 1 + buckets
    out-of-vocabulary, then the vocabulary, most frequent first. NVTabular breaks ties in
    frequency in no defined order; here ties go by value, so codes of equally frequent values
    can differ between the two builds (the mapping is still one to one). Item ids take the
    order `workflows.dataset.item_vocabulary` gives both builds (every servable item has one).
  - With `hash_buckets`, out-of-vocabulary values are hashed with pandas' hash, not NVTabular's.
  - The fitted state for serving is saved as plain parquet/JSON (vocabularies, label thresholds,
    point-in-time tables), not as a saved Workflow; splits are written as one file each.
  - The checks run on the frames in memory instead of re-reading the written files.

    from benchmarks.pandas_dataset import PandasDatasetBuilder
    summary = PandasDatasetBuilder(cfg.dataset, data_dir, out_dir).build()
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.config import DatasetConfig
from recfunnel.workflows.dataset import (AGE_BOUNDARIES, CATALOGUE, DAY, EVENT_COLUMNS,
                                         HISTORY, HISTORY_COLUMNS, LABELS, Cutoffs, _attributes,
                                         check_splits, dataset_section, item_groups,
                                         item_vocabulary, require_nonempty_splits,
                                         servable_items)
from recfunnel.workflows.duplicates import canonical_ids
from recfunnel.workflows.labels import bucket_thresholds, duration_aware_label, watch_at_least
from recfunnel.workflows.negatives import sample_negatives
from recfunnel.workflows.point_in_time import (STAT_NAMES, UserGroupStats, cumulative_table,
                                               daily_activity, event_day, latest_stats, lookup)
from recfunnel.workflows.splits import (SPLIT_KINDS, SPLIT_NAMES, TRAIN, aggregate_pairs, assign_split)
from recfunnel.workflows.unsafe import build_filters, unsafe_item_table

PASSTHROUGH = ["split", "timestamp", "sampled_negative", "events", "watch_seconds"]
# Point-in-time counts and day gaps are heavy-tailed: log(1 + x), as the workflow's LogOp.
LOGGED_STATS = ("events", "clicks", "days_since_last")
RATE_STATS = ("click_rate", "watch_fraction")
NULL, OOV = 1, 2             # NVTabular's Categorify layout: 0 padding, 1 null, 2.. OOV


# ---- categorical ids -------------------------------------------------------------------------

@dataclass
class Vocabulary:
    """The id space of one categorical column, fitted on training values."""
    values: pd.Index             # in id order: the most frequent first
    buckets: int = 1             # out-of-vocabulary ids 2 .. 1 + buckets

    @classmethod
    def fit(cls, values: pd.Series, freq_threshold: int = 0, buckets: int | None = None):
        counts = values.value_counts(dropna=True)
        if freq_threshold:
            counts = counts[counts >= freq_threshold]
        order = (counts.rename_axis("value").reset_index(name="n")
                 .sort_values(["n", "value"], ascending=[False, True], kind="stable"))
        return cls(pd.Index(order["value"].to_numpy()), int(buckets or 1))

    def encode(self, values: pd.Series) -> np.ndarray:
        position = self.values.get_indexer(values)
        if self.buckets > 1:
            unseen = OOV + (pd.util.hash_array(values.to_numpy()) % np.uint64(self.buckets))
        else:
            unseen = OOV
        codes = np.where(position >= 0, position + OOV + self.buckets, unseen)
        codes[values.isna().to_numpy()] = NULL
        return codes.astype(np.int32)

    @property
    def rows(self) -> int:
        return len(self.values) + OOV + self.buckets

    def frame(self, name: str) -> pd.DataFrame:
        ids = np.arange(len(self.values)) + OOV + self.buckets
        return pd.DataFrame({name: self.values, "id": ids})


# ---- the build -------------------------------------------------------------------------------

class PandasDatasetBuilder:
    """The steps of `workflows.dataset.DatasetBuilder` on pandas frames; `build()` returns the
    same summary keys."""

    def __init__(self, cfg: DatasetConfig, data_dir: Path, out_dir: Path):
        if cfg.split not in SPLIT_KINDS:
            raise ValueError(f"dataset.split must be one of {SPLIT_KINDS}, got {cfg.split!r}")
        if cfg.negative_sampling not in ("popularity", "uniform"):
            raise ValueError(f"negative_sampling must be 'popularity' or 'uniform', "
                             f"got {cfg.negative_sampling!r}")
        self.cfg = cfg
        self.data_dir, self.out = Path(data_dir), Path(out_dir)
        self.items = pd.read_parquet(self.data_dir / "items.parquet")
        self.users = pd.read_parquet(self.data_dir / "users.parquet")
        self.steps: list[dict] = []
        self._last: tuple[int, int, int] | None = None

    def record(self, name: str, frame: pd.DataFrame, **extra) -> None:
        """Rows, users and items after a step, with the counts before it (as StepReport)."""
        now = (len(frame), int(frame["user_id"].nunique()), int(frame["item_id"].nunique()))
        if self._last is not None:
            before = self._last
            self.steps.append({"name": name, "rows_before": before[0], "rows_after": now[0],
                               "users_before": before[1], "users_after": now[1],
                               "items_before": before[2], "items_after": now[2], **extra})
        self._last = now

    def cutoffs(self, events: pd.DataFrame) -> Cutoffs:
        return Cutoffs.after(events["timestamp"].max(), self.cfg)

    def build(self) -> dict:
        shutil.rmtree(self.out, ignore_errors=True)
        (self.out / "artifacts").mkdir(parents=True)
        events = pd.read_parquet(self.data_dir / "events", columns=EVENT_COLUMNS)
        if getattr(events["timestamp"].dtype, "tz", None) is not None:     # naive UTC, as there
            events["timestamp"] = events["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
        self.record("validated_events", events)
        cut = self.cutoffs(events)

        events, dup = self.canonical_items(events)
        events, unsafe = self.unsafe_content(events)
        history = events          # every safe event, for point-in-time features
        events = self.freshness_window(events, cut)
        events, left_out = self.active_users(events, cut)
        examples = self.examples(events, cut)
        del events
        examples = self.negative_sampling(examples)
        splits, tables = self.features(examples, history, cut)
        del history, examples
        checks = self.check(splits, cut)
        for name, frame in splits.items():
            (self.out / name).mkdir()
            frame.to_parquet(self.out / name / "part_0.parquet", index=False)
        return dataset_section(self.steps, cut, self.cfg.split, checks, dup, unsafe, left_out,
                               tables, {"cpu": True, "cluster": "none", "engine": "pandas"},
                               self.out)

    # ---- filters ---------------------------------------------------------------------------
    def canonical_items(self, events: pd.DataFrame):
        mapping = canonical_ids(self.items, events["item_id"].value_counts(),
                                self.cfg.duplicate_title_similarity)
        mapping.to_parquet(self.out / "artifacts" / "canonical_items.parquet", index=False)
        to_canonical = mapping.set_index("item_id")["canonical_id"]
        events["item_id"] = (events["item_id"].map(to_canonical).fillna(events["item_id"])
                             .astype("int64"))
        copies = int((mapping["item_id"] != mapping["canonical_id"]).sum())
        self.record("canonical_items", events, note=f"{copies} copies mapped")
        self.canonical = mapping
        return events, {"copies": copies, "groups": int((mapping["group_size"] > 1).sum() - copies)}

    def unsafe_content(self, events: pd.DataFrame):
        table = unsafe_item_table(self.items, build_filters(self.cfg.unsafe_filters))
        table["canonical_id"] = table["item_id"].map(self.canonical.set_index("item_id")["canonical_id"])
        table.to_parquet(self.out / "artifacts" / "unsafe_items.parquet", index=False)
        blocked = np.unique(table["canonical_id"].to_numpy(np.int64))
        self.catalogue = servable_items(self.canonical, blocked)
        pd.DataFrame({"item_id": self.catalogue}).to_parquet(self.out / CATALOGUE, index=False)
        events = events[~events["item_id"].isin(blocked)]
        by_filter = table["filters"].str.split(",").explode().value_counts().to_dict()
        self.record("unsafe_content", events, note=f"{len(blocked)} items blocked")
        return events, {"items_blocked": int(len(blocked)), "by_filter": by_filter}

    def freshness_window(self, events: pd.DataFrame, cut: Cutoffs) -> pd.DataFrame:
        if self.cfg.window_days is None:
            self.record("freshness_window", events, note="all history")
            return events
        start = cut.window_end - self.cfg.window_days * DAY
        events = events[events["timestamp"] >= start]
        self.record("freshness_window", events, note=f"from {start.date()}")
        return events

    def active_users(self, events: pd.DataFrame, cut: Cutoffs):
        start = cut.window_end - self.cfg.active_window_days * DAY
        ts = events["timestamp"]
        counts = events.loc[(ts >= start) & (ts < cut.window_end), "user_id"].value_counts()
        active = counts[counts >= self.cfg.active_min_events].index.to_numpy(np.int64)
        left = pd.DataFrame({"user_id": np.setdiff1d(events["user_id"].unique(), active)})
        left["events_in_window"] = left["user_id"].map(counts).fillna(0).astype(np.int64)
        left["reason"] = np.where(left["events_in_window"] > 0, "inactive", "new_or_idle")
        left.to_parquet(self.out / "artifacts" / "left_out_users.parquet", index=False)
        events = events[events["user_id"].isin(active)]
        self.record("active_users", events, note=f">= {self.cfg.active_min_events} events in "
                                                 f"{self.cfg.active_window_days} days")
        return events, {"count": int(len(left)),
                        "by_reason": left["reason"].value_counts().to_dict(),
                        "path": "artifacts/left_out_users.parquet"}

    # ---- examples and negatives ------------------------------------------------------------
    def examples(self, events: pd.DataFrame, cut: Cutoffs) -> pd.DataFrame:
        cfg = self.cfg
        ts = events["timestamp"].to_numpy().astype("datetime64[ns]").astype(np.int64)
        split = assign_split(cfg.split, events["user_id"].to_numpy(), events["item_id"].to_numpy(),
                             ts, cut.train_end.value, cut.valid_end.value, cfg.random_fractions,
                             cfg.seed)
        events = events.assign(split=split)
        clicked = events[(events["split"] == TRAIN) & (events["click"] == 1)]
        self.label_thresholds = bucket_thresholds(
            clicked["click"].to_numpy(), clicked["watch_seconds"].to_numpy(),
            clicked["duration_seconds"].to_numpy(), cfg.duration_edges, cfg.watch_quantile)
        click, watch, duration = (events[c].to_numpy() for c in
                                  ("click", "watch_seconds", "duration_seconds"))
        events["watch_75"] = watch_at_least(watch, duration, cfg.watch_threshold)
        events["watch_duration_aware"] = duration_aware_label(click, watch, duration,
                                                              cfg.duration_edges,
                                                              self.label_thresholds)
        pairs = aggregate_pairs(events)
        self.record("examples", pairs, note="one row per (user, item, split)")
        require_nonempty_splits(pairs["split"].value_counts(), cut)
        return pairs

    def negative_sampling(self, pairs: pd.DataFrame) -> pd.DataFrame:
        cfg = self.cfg
        if cfg.negatives_per_row <= 0:
            self.record("negative_sampling", pairs, note="off")
            return pairs
        counts = pairs.loc[pairs["split"] == TRAIN, "item_id"].value_counts().sort_index()
        candidates = counts.index.to_numpy(np.int64)
        weights = counts.to_numpy(np.float64) + 1.0
        probs = weights / weights.sum() if cfg.negative_sampling == "popularity" else None
        negatives = sample_negatives(pairs, cfg.negatives_per_row, candidates, probs, cfg.seed)
        for column in pairs.columns:
            if column not in negatives:
                negatives[column] = np.zeros(len(negatives), dtype=pairs[column].dtype)
        negatives["sampled_negative"] = np.int8(1)
        negatives["duration_seconds"] = np.nan           # the item table gives it later
        out = pd.concat([pairs, negatives[pairs.columns]], ignore_index=True)
        out = out.sort_values(["user_id", "timestamp", "item_id"], kind="stable", ignore_index=True)
        self.record("negative_sampling", out,
                    note=f"{cfg.negatives_per_row} per row, {cfg.negative_sampling}")
        return out

    # ---- features, fitted on training data only -------------------------------------------
    def features(self, examples: pd.DataFrame, history: pd.DataFrame, cut: Cutoffs):
        cfg = self.cfg
        # Point-in-time statistics learn from the whole safe history (each example reads the
        # days before its own), keyed by user, by item, and by (user, the item's category).
        day = event_day(history["timestamp"].to_numpy())
        user, item = history["user_id"].to_numpy(), history["item_id"].to_numpy()
        groups = item_groups(self.items)
        by_group = UserGroupStats(groups) if groups is not None else None
        sources = {"user": (lambda u, i: u, STAT_NAMES), "item": (lambda u, i: i, STAT_NAMES)}
        if by_group is not None:
            sources[by_group.prefix] = (by_group.pair_key, by_group.stat_names)
        stats = {}
        for prefix, (key_of, names) in sources.items():
            daily = daily_activity(key_of(user, item), day, history["click"].to_numpy(),
                                   history["watch_seconds"].to_numpy(),
                                   history["duration_seconds"].to_numpy())
            stats[prefix] = (key_of, names, cumulative_table(daily))
            key = "user_id" if prefix != "item" else "item_id"
            latest_stats(stats[prefix][2], key, prefix).to_parquet(
                self.out / "artifacts" / f"{prefix}_features.parquet", index=False)
        history[HISTORY_COLUMNS].to_parquet(self.out / HISTORY, index=False)
        del day, user, item

        # Attributes (those a source lacks are left out) and the id spaces, fitted on train.
        users, user_cats = _attributes(self.users, "user_id", ["gender", "location"], ["age"])
        items, item_cats = _attributes(self.items.rename(columns={"duration_seconds": "item_duration"}),
                                       "item_id", ["category", "creator"], ["item_duration"])
        train = examples[examples["split"] == TRAIN]
        train_users = train[["user_id"]].merge(users, on="user_id", how="left")
        train_items = train[["item_id"]].merge(items, on="item_id", how="left")
        vocab = {"user_id": Vocabulary.fit(train["user_id"], cfg.freq_threshold,
                                           cfg.hash_buckets),
                 # every servable item an id: the training ones by frequency, then the rest
                 "item_id": Vocabulary(pd.Index(item_vocabulary(
                     train["item_id"].value_counts(), self.catalogue, cfg.freq_threshold)),
                     int(cfg.hash_buckets or 1))}
        vocab.update({c: Vocabulary.fit(train_users[c]) for c in user_cats})
        vocab.update({c: Vocabulary.fit(train_items[c]) for c in item_cats})
        del train, train_users, train_items
        self.save_fitted(vocab, cut)

        splits = {}
        for code, name in SPLIT_NAMES.items():
            part = examples[examples["split"] == code].reset_index(drop=True)
            u = part[["user_id"]].merge(users, on="user_id", how="left")
            i = part[["item_id"]].merge(items, on="item_id", how="left")
            out = {"user_id": vocab["user_id"].encode(part["user_id"]),
                   "item_id": vocab["item_id"].encode(part["item_id"])}
            if "age" in users:
                out["age_band"] = np.digitize(u["age"].to_numpy(), AGE_BOUNDARIES,
                                              right=False).astype(np.int32)
            out.update({c: vocab[c].encode(u[c]) for c in user_cats})
            out.update({c: vocab[c].encode(i[c]) for c in item_cats})
            if "item_duration" in items:
                out["item_duration"] = np.log(i["item_duration"].to_numpy(np.float32) + 1)
            out["user_id_raw"] = part["user_id"].to_numpy()
            out["item_id_raw"] = part["item_id"].to_numpy()
            day = event_day(part["timestamp"].to_numpy())
            for prefix, (key_of, names, table) in stats.items():
                keys = key_of(part["user_id"].to_numpy(), part["item_id"].to_numpy())
                found = {n: v.astype(np.float32) for n, v in lookup(table, keys, day).items()}
                out.update({f"{prefix}_{n}": np.log(found[n] + np.float32(1))
                            for n in LOGGED_STATS if n in names})
                out.update({f"{prefix}_{n}": found[n] for n in RATE_STATS if n in names})
            out.update({c: part[c].to_numpy() for c in (*LABELS, *PASSTHROUGH)})
            splits[name] = pd.DataFrame(out)
        tables = [{"column": c, "rows": v.rows, "dim": cfg.embedding_dim,
                   "megabytes": round(v.rows * cfg.embedding_dim * 4 / 2**20, 3)}
                  for c, v in vocab.items()]
        if "age" in users:
            rows = len(AGE_BOUNDARIES) + 1
            tables.insert(2, {"column": "age_band", "rows": rows, "dim": cfg.embedding_dim,
                              "megabytes": round(rows * cfg.embedding_dim * 4 / 2**20, 3)})
        return splits, tables

    def save_fitted(self, vocab: dict[str, Vocabulary], cut: Cutoffs) -> None:
        """What serving needs to transform new rows the same way."""
        folder = self.out / "fitted"
        folder.mkdir()
        for column, v in vocab.items():
            v.frame(column).to_parquet(folder / f"unique.{column}.parquet", index=False)
        (folder / "fitted.json").write_text(json.dumps({
            "label_thresholds": [float(t) for t in self.label_thresholds],
            "duration_edges": list(self.cfg.duration_edges),
            "watch_threshold": self.cfg.watch_threshold,
            "age_boundaries": AGE_BOUNDARIES, "train_end": cut.train_end.isoformat(),
            "oov_buckets": {c: v.buckets for c, v in vocab.items()}}, indent=2))

    # ---- checks that fail loudly: the same rules as the NVTabular build -----------------
    def check(self, splits: dict[str, pd.DataFrame], cut: Cutoffs) -> dict:
        result = check_splits(splits, cut, self.cfg.split)
        (self.out / "artifacts" / "checks.json").write_text(json.dumps(result["passed"]))
        return result


