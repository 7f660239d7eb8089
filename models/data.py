"""What the models read: the dataset build's splits and their Merlin schema.

The schema written by the feature workflow tags every column; models see only USER and ITEM
features and TARGET columns. Passthrough columns (raw ids, split, timestamp, ...) carry no tags
and are kept out of every model, so no model can learn from the future or from bookkeeping.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import merlin.io
from merlin.schema import Schema, Tags
from nvtabular.ops.categorify import OOV_OFFSET

from recfunnel.config import TRAINING_INPUTS
from recfunnel.models.features import example_rows
from recfunnel.workflows.dataset import CATALOGUE

UNSEEN_ITEM = OOV_OFFSET     # the categorified id the workflow gives an item it has not seen


@dataclass
class Splits:
    """The three splits as pandas frames (small data) and the model-facing schema; with the
    dataset's folder, also the servable catalogue's items that no training example has."""
    schema: Schema
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    dataset_dir: Path | None = None
    _cold: pd.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def load(cls, dataset_dir: str | Path) -> "Splits":
        dataset_dir = Path(dataset_dir)
        for name in ("train", "valid", "test"):
            if not list((dataset_dir / name).glob("*.parquet")):
                raise FileNotFoundError(f"{dataset_dir / name}: no parquet parts; run the "
                                        "dataset step first")
        schema = merlin.io.Dataset(str(dataset_dir / "train"), engine="parquet", cpu=True).schema
        frames = {name: pd.concat([pd.read_parquet(p) for p in
                                   sorted((dataset_dir / name).glob("*.parquet"))],
                                  ignore_index=True) for name in ("train", "valid", "test")}
        return cls(schema=schema.select_by_tag([Tags.USER, Tags.ITEM, Tags.TARGET]), **frames,
                   dataset_dir=dataset_dir)

    # ---- schema views ------------------------------------------------------------------------
    @property
    def user_schema(self) -> Schema:
        return self.schema.select_by_tag(Tags.USER)

    @property
    def item_schema(self) -> Schema:
        return self.schema.select_by_tag(Tags.ITEM)

    @property
    def item_id_schema(self) -> Schema:
        return self.schema.select_by_tag(Tags.ITEM_ID)

    @property
    def n_items(self) -> int:
        """Rows of the item id table (Categorify's domain, index 0 and OOV included)."""
        return int(self.item_id_schema.first.int_domain.max) + 1

    # ---- row views ---------------------------------------------------------------------------
    def positives(self, frame: pd.DataFrame, label: str) -> pd.DataFrame:
        """Observed (not sampled) examples whose `label` is 1: what retrieval learns from."""
        return frame[(frame[label] == 1) & (frame["sampled_negative"] == 0)]

    def seen_items(self, label: str, frames: tuple[pd.DataFrame, ...], users,
                   user: str = "user_id", item: str = "item_id") -> list[np.ndarray]:
        """Per user in `users`, the items that were `label` positives in `frames` (what full
        ranking excludes); `user`/`item` name the id columns (raw ids: *_raw)."""
        seen = pd.concat([self.positives(f, label) for f in frames])
        by_user = seen.groupby(user)[item].apply(np.asarray)
        return [by_user.get(u, np.empty(0, np.int64)) for u in users]

    def latest_rows(self, key: str, columns: list[str]) -> pd.DataFrame:
        """One feature row per id (its latest training example), sorted by id."""
        frame = pd.concat([self.train, self.valid, self.test]) if key == "item_id" else self.train
        last = frame.sort_values("timestamp", kind="stable").drop_duplicates(key, keep="last")
        return last[columns].sort_values(key).reset_index(drop=True)

    def catalogue(self, columns: list[str]) -> pd.DataFrame:
        """One feature row per item retrieval may return, sorted by id: each item training saw
        (its latest example's row), then every other servable item of the catalogue (the
        dataset's CATALOGUE), whose row the saved workflow computes from its attributes alone
        (no event: zero counts); ids met only in valid/test, without a catalogue, map to
        Categorify's out-of-vocabulary row and are not items to serve."""
        rows = self.latest_rows("item_id", list(dict.fromkeys(["item_id", *columns])))
        rows = rows[rows["item_id"].isin(self.train["item_id"].unique())]
        cold = self.cold_items()
        if len(cold):
            rows = pd.concat([rows, cold[rows.columns]], ignore_index=True).sort_values("item_id")
        return rows.reset_index(drop=True)[columns]

    def catalogue_inputs(self, columns: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
        """(item ids, item-tower input rows) of the catalogue(): an item without a training
        example enters the tower as an item the workflow has never seen (Categorify's
        out-of-vocabulary id, UNSEEN_ITEM) with its own attributes, so its vector comes from
        its features alone, not from an id row that training never touched."""
        rows = self.catalogue(list(dict.fromkeys(["item_id", *columns])))
        ids = rows["item_id"].to_numpy(np.int64)
        cold = np.isin(ids, self.cold_items()["item_id"].to_numpy(np.int64))
        inputs = rows.assign(item_id=np.where(cold, UNSEEN_ITEM, ids).astype(rows["item_id"].dtype))
        return ids, inputs[columns]

    def cold_items(self) -> pd.DataFrame:
        """The workflow's rows of the servable items without a training example, as of the
        last training example (computed once)."""
        if self._cold is None:
            path = None if self.dataset_dir is None else Path(self.dataset_dir) / CATALOGUE
            catalogue = pd.read_parquet(path)["item_id"].to_numpy(np.int64) \
                if path is not None and path.is_file() else np.empty(0, np.int64)
            cold = np.setdiff1d(catalogue, self.train["item_id_raw"].to_numpy(np.int64))
            self._cold = self.train.iloc[:0] if not len(cold) else example_rows(
                self.dataset_dir, np.full(len(cold), self.train["user_id_raw"].iloc[0]), cold,
                np.full(len(cold), self.train["timestamp"].max()))
        return self._cold

    def item_frequencies(self, label: str) -> np.ndarray:
        """[n_items] training positives per Categorified item id (for the logQ correction)."""
        ids = self.positives(self.train, label)["item_id"].to_numpy()
        return np.bincount(ids, minlength=self.n_items).astype(np.float32)


def to_dataset(frame: pd.DataFrame, schema: Schema) -> merlin.io.Dataset:
    """pandas rows -> a Merlin Dataset restricted to `schema`'s columns."""
    return merlin.io.Dataset(frame[schema.column_names].reset_index(drop=True), schema=schema,
                             cpu=True)


def training_data(frame: pd.DataFrame, schema: Schema, batch_size: int, source: str,
                  shuffle: bool = True, seed: int = 0) -> dict:
    """fit's arguments for `frame`'s rows under `schema`, fed as `source` says
    (recfunnel.config.TRAINING_INPUTS): {"x": ..., "batch_size": ...} for `memory` (tf.data
    batches, to_batches) or `merlin_loader` (a Merlin Dataset that Merlin's fit wraps in its
    Loader)."""
    if source == "memory":
        return {"x": to_batches(frame, schema, batch_size, shuffle, seed), "batch_size": None}
    if source == "merlin_loader":
        return {"x": to_dataset(frame, schema), "batch_size": batch_size}
    raise ValueError(f"models.training_input {source!r}: choose from "
                     f"{', '.join(TRAINING_INPUTS)}")


def to_batches(frame: pd.DataFrame, schema: Schema, batch_size: int, shuffle: bool = True,
               seed: int = 0):
    """pandas rows -> a tf.data.Dataset of batches of in-memory tensors, in the layout Merlin's
    Loader yields ({feature: [batch]}, {target: [batch]} or the features alone), for a Merlin
    model's fit. Only row positions are shuffled (again each epoch); each batch is one gather
    per column inside TF's runtime, no Python per batch or per row."""
    import tensorflow as tf

    frame = frame[schema.column_names].reset_index(drop=True)
    targets = schema.select_by_tag(Tags.TARGET).column_names

    def columns(names):
        return {c: tf.constant(frame[c].to_numpy().astype(schema[c].dtype.to_numpy))
                for c in names}

    features = columns([c for c in schema.column_names if c not in targets])
    labels = columns(targets)
    rows = tf.data.Dataset.range(len(frame))
    if shuffle:
        rows = rows.shuffle(max(len(frame), 1), seed=seed, reshuffle_each_iteration=True)

    def gather(index):
        x = {c: tf.gather(t, index) for c, t in features.items()}
        return (x, {c: tf.gather(t, index) for c, t in labels.items()}) if labels else x

    return rows.batch(batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


def to_tensors(frame: pd.DataFrame, schema: Schema) -> dict:
    """pandas rows -> {feature: tf.Tensor [batch, 1]} in the schema's dtypes."""
    import tensorflow as tf

    return {c.name: tf.constant(frame[c.name].to_numpy().astype(c.dtype.to_numpy).reshape(-1, 1))
            for c in schema}


def embedding_tables(model) -> list[dict]:
    """Each embedding table of a Merlin model: column, rows x dim, and its memory (L3.1)."""
    from merlin.models.tf.utils.tf_utils import get_sub_blocks

    tables = {}
    for block in get_sub_blocks(model):
        if type(block).__name__ == "EmbeddingTable":
            rows, dim = (int(x) for x in block.table.embeddings.shape)
            name = block.col_schema.name if block.col_schema is not None else block.name
            tables[name] = {"column": name, "rows": rows, "dim": dim,
                            "megabytes": round(rows * dim * 4 / 2**20, 3)}
    return sorted(tables.values(), key=lambda t: -t["rows"])
