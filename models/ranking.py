"""Rankers (L3.2, L6.2, L6.3): order the candidates by what users will really do.

Both rankers are one multi-task model with a head per objective (click, like, share, the
duration-aware watch label): the objectives share what they learn about users and items, one
forward pass scores them all (cheap enough for serving), and their probabilities feed the
weighted blend (`models.blend`). The light ranker sees a few features through a small MLP and
keeps hundreds of candidates; the heavy ranker is a DCN-V2 (cross network + deep MLP) on every
feature and orders the final tens. Scores are sigmoid outputs, so probabilities in [0, 1].
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

import merlin.models.tf as mm
from merlin.schema import Schema, Tags

from models.artifacts import write_manifest
from models.data import Splits, embedding_tables, to_dataset
from recfunnel.config import ModelsConfig


@dataclass
class RankerResult:
    name: str
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    examples: int = 0
    parameters: int = 0
    features: list[str] = field(default_factory=list)
    embedding_tables: list[dict] = field(default_factory=list)
    model_dir: Path | None = None


def ranker_schema(splits: Splits, cfg: ModelsConfig, kind: str) -> Schema:
    """The features (all, or the light ranker's few) plus one target per objective."""
    missing = [o for o in cfg.objectives if o not in splits.schema.column_names]
    if missing:
        raise ValueError(f"objectives {missing} are not labels of the dataset; it has "
                         f"{splits.schema.select_by_tag(Tags.TARGET).column_names}")
    features = splits.schema.select_by_tag([Tags.USER, Tags.ITEM])
    if kind == "light":
        unknown = [f for f in cfg.light_ranker_features if f not in features.column_names]
        if unknown:
            raise ValueError(f"light_ranker_features {unknown} are not features of the dataset; "
                             f"choose from {features.column_names}")
        features = features.select_by_name(cfg.light_ranker_features)
    return features + splits.schema.select_by_name(cfg.objectives)


def build_ranker(schema: Schema, cfg: ModelsConfig, kind: str) -> mm.Model:
    outputs = mm.OutputBlock(schema)          # one BinaryOutput (sigmoid) per target column
    if kind == "heavy":
        return mm.DCNModel(schema, depth=cfg.heavy_ranker_cross_depth,
                           deep_block=mm.MLPBlock(cfg.heavy_ranker_layers),
                           prediction_tasks=outputs)
    return mm.Model(mm.InputBlockV2(schema.excluding_by_tag(Tags.TARGET)),
                    mm.MLPBlock(cfg.light_ranker_layers), outputs)


class _EpochLog(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - self._start, 2)}
        for key, value in (logs or {}).items():
            # "val_click/binary_output/auc" -> "val_auc_click"; keep losses and AUCs only
            parts = key.split("/")
            if key in ("loss", "val_loss"):
                row[key] = round(float(value), 4)
            elif parts[-1] == "auc" and len(parts) == 3:
                prefix, objective = ("val_", parts[0][4:]) if parts[0].startswith("val_") \
                    else ("", parts[0])
                row[f"{prefix}auc_{objective}"] = round(float(value), 4)
        self.rows.append(row)


def train_ranker(kind: str, splits: Splits, cfg: ModelsConfig, out_dir: Path, version: str,
                 verbose: int = 0) -> RankerResult:
    """Trains the `light` or `heavy` ranker on every training row, sampled negatives included."""
    if kind not in ("light", "heavy"):
        raise ValueError(f"ranker kind must be 'light' or 'heavy', got {kind!r}")
    tf.keras.utils.set_random_seed(cfg.seed)
    schema = ranker_schema(splits, cfg, kind)
    model = build_ranker(schema, cfg, kind)
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.ranker_learning_rate),
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    log = _EpochLog()
    start = time.perf_counter()
    model.fit(to_dataset(splits.train, schema), batch_size=cfg.ranker_batch_size,
              epochs=cfg.ranker_epochs, validation_data=to_dataset(splits.valid, schema),
              callbacks=[log], verbose=verbose, shuffle=True)
    seconds = round(time.perf_counter() - start, 2)
    model_dir = out_dir / f"{kind}_ranker"
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save(str(model_dir))
    features = schema.excluding_by_tag(Tags.TARGET)
    write_manifest(model_dir, version, "ranker",
                   schema={c.name: str(c.dtype.to_numpy) for c in features},
                   config={"kind": kind, "objectives": cfg.objectives},
                   metrics=log.rows[-1] if log.rows else {})
    return RankerResult(f"{kind}_ranker", log.rows, seconds,
                        int(len(splits.train) * cfg.ranker_epochs), int(model.count_params()),
                        features.column_names, embedding_tables(model), model_dir)


class RankerScorer:
    """A saved ranker, scored through its SavedModel serving signature.

    The serving signature is what Triton runs; a Keras-reloaded model called directly can
    differ (measured up to 0.011 on a DCN), so offline and online scores both come from here.
    """

    def __init__(self, model_dir: str | Path):
        from models.artifacts import read_manifest

        self.manifest = read_manifest(model_dir, kind="ranker")
        self.version = self.manifest["version"]
        self.features = self.manifest["schema"]           # name -> numpy dtype
        self.objectives = list(self.manifest["config"]["objectives"])
        self._signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def score(self, rows: pd.DataFrame, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """objective -> [n] probabilities for the feature rows in `rows`."""
        missing = [f for f in self.features if f not in rows.columns]
        if missing:
            raise ValueError(f"ranker {self.version} needs features {missing}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(rows), batch_size):
            batch = rows.iloc[start:start + batch_size]
            inputs = {f: tf.constant(batch[f].to_numpy().astype(dtype).reshape(-1, 1))
                      for f, dtype in self.features.items()}
            for name, value in self._signature(**inputs).items():
                objective = name.split("/")[0]            # "click/binary_output" -> "click"
                parts.setdefault(objective, []).append(value.numpy().reshape(-1))
        return {name: np.concatenate(v) for name, v in parts.items()}
