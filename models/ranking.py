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

from recfunnel.models.artifacts import write_manifest
from recfunnel.models.candidates import RETRIEVAL_SCORE
from recfunnel.models.data import Splits, embedding_tables, training_data
from recfunnel.models.epochs import KeepBestEpoch
from recfunnel.models.optimizers import optimizer
from recfunnel.models.saving import MeanOfMembers, save_serving
from recfunnel.config import RANKER_ARCHITECTURES, ModelsConfig


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
    best_epoch: int = 0
    rows: dict = field(default_factory=dict)      # the mix of its training rows
    members: list = field(default_factory=list)   # per member when it is several (member_rows)


def ranker_schema(splits: Splits, cfg: ModelsConfig, kind: str,
                  names: list[str] | None = None) -> Schema:
    """The features (all, the light ranker's few, or `names`) plus one target per objective."""
    missing = [o for o in cfg.objectives if o not in splits.schema.column_names]
    if missing:
        raise ValueError(f"objectives {missing} are not labels of the dataset; it has "
                         f"{splits.schema.select_by_tag(Tags.TARGET).column_names}")
    features = splits.schema.select_by_tag([Tags.USER, Tags.ITEM])
    if names is None and kind == "light":
        names = light_features(cfg, features.column_names)
    if names is not None:
        unknown = [f for f in names if f not in features.column_names]
        if unknown:
            raise ValueError(f"ranker features {unknown} are not features of the dataset; "
                             f"choose from {features.column_names}")
        features = features.select_by_name(list(names))
    return features + splits.schema.select_by_name(cfg.objectives)


def ranker_inputs(schema: Schema, cfg: ModelsConfig):
    """The features' input block: embeddings of `ranker_embedding_dim` (None: Merlin's
    inferred size per cardinality) with an L2 penalty on the rows a batch uses."""
    features = schema.excluding_by_tag(Tags.TARGET)
    return mm.InputBlockV2(features, categorical=mm.Embeddings(
        features.select_by_tag(Tags.CATEGORICAL), dim=cfg.ranker_embedding_dim,
        l2_batch_regularization_factor=cfg.ranker_l2_reg))


GROUP_FEATURES = ("user_category_click_rate", "user_category_events")


def light_features(cfg: ModelsConfig, available: list[str]) -> list[str]:
    """The light ranker's inputs: `light_ranker_features`, plus the user's history with the
    item's category when `light_ranker_group_features` and the data set has it."""
    extra = [f for f in GROUP_FEATURES if cfg.light_ranker_group_features and f in available]
    return [*cfg.light_ranker_features, *[f for f in extra if f not in cfg.light_ranker_features]]


def _mlp(schema: Schema, cfg: ModelsConfig, layers: list[int]) -> mm.Model:
    """Embeddings and continuous inputs -> an MLP -> one head per objective."""
    return mm.Model(ranker_inputs(schema, cfg),
                    mm.MLPBlock(layers, dropout=cfg.ranker_dropout or None),
                    mm.OutputBlock(schema))     # one BinaryOutput (sigmoid) per target column


def _dcn(schema: Schema, cfg: ModelsConfig, layers: list[int]) -> mm.Model:
    """DCN-V2: `ranker_cross_depth` cross layers beside an MLP -> one head per objective."""
    return mm.DCNModel(schema, depth=cfg.ranker_cross_depth,
                       deep_block=mm.MLPBlock(layers, dropout=cfg.ranker_dropout or None),
                       input_block=ranker_inputs(schema, cfg),
                       prediction_tasks=mm.OutputBlock(schema))


# models.<kind>_ranker_architecture names one of these (recfunnel.config.RANKER_ARCHITECTURES
# lists their names for the config's check); a new one is a function and a line in both
ARCHITECTURES = dict(zip(RANKER_ARCHITECTURES, (_mlp, _dcn)))


def build_ranker(schema: Schema, cfg: ModelsConfig, kind: str) -> mm.Model:
    """The `kind` ranker in its configured architecture, with its configured layers."""
    name = getattr(cfg, f"{kind}_ranker_architecture")
    if name not in ARCHITECTURES:
        raise ValueError(f"models.{kind}_ranker_architecture {name!r}: choose from "
                         f"{', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](schema, cfg, getattr(cfg, f"{kind}_ranker_layers"))


class _EpochLog(KeepBestEpoch):
    """Per epoch: seconds, losses and AUC per objective; with `patience` > 0, early stopping on
    the mean validation AUC of `monitor` objectives, the best epoch's weights kept."""

    def __init__(self, monitor: list[str] | None = None, patience: int = 0):
        super().__init__(patience)
        self.monitor = monitor or []

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "seconds": round(self.seconds(), 2)}
        for key, value in (logs or {}).items():
            # "val_click/binary_output/auc" -> "val_auc_click"; keep losses and AUCs only
            parts = key.split("/")
            if key in ("loss", "val_loss"):
                row[key] = round(float(value), 4)
            elif parts[-1] == "auc" and len(parts) == 3:
                prefix, objective = ("val_", parts[0][4:]) if parts[0].startswith("val_") \
                    else ("", parts[0])
                row[f"{prefix}auc_{objective}"] = round(float(value), 4)
        aucs = [row[f"val_auc_{o}"] for o in self.monitor if f"val_auc_{o}" in row]
        row["val_auc_mean"] = round(float(np.mean(aucs)), 4) if aucs else None
        self.keep(row, row["val_auc_mean"])


def train_ranker(kind: str, splits: Splits, cfg: ModelsConfig, out_dir: Path, version: str,
                 verbose: int = 0, train_rows: pd.DataFrame | None = None,
                 valid_rows: pd.DataFrame | None = None,
                 features: list[str] | None = None, retrieval: str = "two_tower",
                 blend: dict | None = None, callbacks: list | None = None) -> RankerResult:
    """Trains the `light` or `heavy` ranker on `train_rows` (default every training row,
    sampled negatives included), early-stopped on `valid_rows` (default the validation split)
    by the mean AUC of the objectives `blend` weighs (default all), keeping the best epoch;
    `models.<kind>_ranker_members` of them, one per seed, saved as one. `features` overrides
    the ranker's inputs (ablations); a `retrieval_score` input is the `retrieval` model's score,
    which the saved ranker recomputes from its version's retrieval model when scoring;
    `callbacks` are more Keras callbacks for the fit (a profiler's timer)."""
    if kind not in ("light", "heavy"):
        raise ValueError(f"ranker kind must be 'light' or 'heavy', got {kind!r}")
    schema = ranker_schema(splits, cfg, kind, features)
    monitor = [o for o in cfg.objectives if (blend or {}).get(o, 0) > 0] or cfg.objectives
    train = splits.train if train_rows is None else train_rows
    valid = splits.valid if valid_rows is None else valid_rows
    start = time.perf_counter()
    validation = training_data(valid, schema, cfg.ranker_batch_size, cfg.training_input,
                               shuffle=False)["x"]
    members, logs = [], []
    # models.<kind>_ranker_members > 1: as many rankers, each its own seed (initial weights,
    # dropout and batch order) and early stopping, served as one (saving.MeanOfMembers)
    for member in range(getattr(cfg, f"{kind}_ranker_members")):
        seed = cfg.seed + member
        tf.keras.utils.set_random_seed(seed)
        model = build_ranker(schema, cfg, kind)
        model.compile(optimizer=optimizer(cfg.optimizer, cfg.ranker_learning_rate),
                      metrics=[tf.keras.metrics.AUC(name="auc")])
        log = _EpochLog(monitor, cfg.ranker_patience)
        fed = training_data(train, schema, cfg.ranker_batch_size, cfg.training_input, seed=seed)
        model.fit(**fed, epochs=cfg.ranker_epochs, validation_data=validation,
                  callbacks=[log, *(callbacks or [])], verbose=verbose, shuffle=True)
        members.append(model)
        logs.append(log)
    seconds = round(time.perf_counter() - start, 2)
    model_dir = out_dir / f"{kind}_ranker"
    shutil.rmtree(model_dir, ignore_errors=True)
    model, log = (members[0], logs[0])
    each = member_rows(logs, cfg.seed) if len(members) > 1 else []
    if each:
        model = MeanOfMembers(members)
    save_serving(model, model_dir, schema=members[0].schema)
    features = schema.excluding_by_tag(Tags.TARGET)
    write_manifest(model_dir, version, "ranker",
                   schema={c.name: str(c.dtype.to_numpy) for c in features},
                   config={"kind": kind, "objectives": cfg.objectives,
                           "architecture": getattr(cfg, f"{kind}_ranker_architecture"),
                           RETRIEVAL_SCORE: retrieval if RETRIEVAL_SCORE in features.column_names
                           else None},
                   metrics={**(log.rows[log.best_index] if log.rows else {}),
                            **({"members": each} if each else {})})
    result = RankerResult(f"{kind}_ranker", log.rows, seconds,
                          int(len(train) * sum(len(m.rows) for m in logs)),
                          int(model.count_params()), features.column_names,
                          embedding_tables(members[0]), model_dir)
    result.best_epoch = log.best_index + 1
    result.members = each
    return result


def member_rows(logs: list, seed: int) -> list[dict]:
    """Per member of a ranker: its seed, best epoch and that epoch's mean validation AUC."""
    return [{"seed": seed + i, "epochs_run": len(log.rows), "best_epoch": log.best_index + 1,
             "val_auc_mean": log.rows[log.best_index]["val_auc_mean"] if log.rows else None}
            for i, log in enumerate(logs)]
