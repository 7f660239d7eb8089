"""Candidate generation models (L3.2, L6.1): a two-tower model and matrix factorisation.

Both learn from observed positives with in-batch negatives and a popularity (logQ) correction:
popular items appear as in-batch negatives more often than a uniform sampler would draw them, so
their logits are corrected by log(frequency) or the model learns to push them down. Each trained
model is exported as a query tower (a SavedModel: user features -> query vector) and an item
embedding matrix aligned with item ids, both carrying the training's version.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

import merlin.models.tf as mm
from merlin.models.tf.outputs.base import DotProduct
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
from merlin.schema import Schema, Tags

from recfunnel.models.artifacts import write_manifest
from recfunnel.models.candidates import ITEM_EMBEDDINGS, ITEM_IDS, EmbeddingIndex
from recfunnel.models.data import Splits, embedding_tables, to_tensors, training_data
from recfunnel.models.epochs import KeepBestEpoch
from recfunnel.models.optimizers import optimizer
from recfunnel.models.saving import save_serving
from recfunnel.config import ModelsConfig
from recfunnel.topk import topk_metrics


@dataclass
class RetrievalResult:
    name: str
    history: list[dict] = field(default_factory=list)   # per epoch: loss, validation recall
    train_seconds: float = 0.0
    examples: int = 0
    parameters: int = 0
    embedding_tables: list[dict] = field(default_factory=list)
    query_dir: Path | None = None
    items_dir: Path | None = None
    best_epoch: int = 0                                  # the epoch whose weights were kept
    model: object = field(default=None, repr=False)     # the trained Keras model


class _EpochRecall(KeepBestEpoch):
    """Validation recall@K and NDCG@K after every epoch, full ranking over all items; with
    `patience` > 0 the best epoch by `monitor` is kept (models.epochs)."""

    def __init__(self, evaluate, monitor: str, patience: int = 0):
        super().__init__(patience)
        self.evaluate, self.monitor = evaluate, monitor

    def on_epoch_end(self, epoch, logs=None):
        seconds = self.seconds()
        metrics = self.evaluate(self.model)
        self.keep({"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
                   "seconds": round(seconds, 2), **metrics}, metrics[self.monitor])


def tower_schemas(kind: str, splits: Splits, cfg: ModelsConfig) -> tuple[Schema, Schema]:
    """The (query, candidate) input schemas of a retrieval model: the ids for MF; for the
    two-tower the ids plus `two_tower_features`, by default every categorical user and item
    attribute. The point-in-time statistics are left to the rankers by default: item vectors
    are computed once at export, so an item feature that changes with time is skewed between
    training rows and serving (on ML-100K they cut validation recall@10 from 0.22 to 0.11)."""
    if kind == "mf":
        return splits.schema.select_by_tag(Tags.USER_ID), splits.item_id_schema
    user, item = splits.user_schema, splits.item_schema
    names = cfg.two_tower_features
    if names is None:
        names = (user + item).select_by_tag(Tags.CATEGORICAL).column_names
    unknown = set(names) - set(user.column_names + item.column_names)
    if unknown:
        raise ValueError(f"models.two_tower_features: {sorted(unknown)} are not user or item "
                         f"features; choose from {user.column_names + item.column_names}")
    keep = {"user_id", "item_id", *names}
    return tuple(s.select_by_name([c for c in s.column_names if c in keep]) for s in (user, item))


def retrieval_eval(splits: Splits, frame: pd.DataFrame, label: str, k: int,
                   schemas: tuple[Schema, Schema], prefix: str = "val_",
                   seen: tuple[pd.DataFrame, ...] | None = None, max_users: int | None = None,
                   seed: int = 0):
    """A function model -> metrics: each user's `frame` positives vs the top-k of all items,
    excluding the items the user had in `seen` (default: training; full ranking, not sampled).
    `schemas` are the model's (query, candidate) inputs; with `max_users`, at most that many
    users (a sample fixed by `seed`) are ranked, since each costs a pass over the catalogue."""
    user_schema, item_schema = schemas
    positives = splits.positives(frame, label)
    users = positives.sort_values("timestamp").drop_duplicates("user_id")
    if max_users is not None and len(users) > max_users:
        kept = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        users = users.iloc[np.sort(kept)]
    relevant = positives.groupby("user_id")["item_id"].apply(np.asarray)
    exclude = splits.seen_items(label, seen or (splits.train,), users["user_id"].to_numpy())
    truth = [relevant[u] for u in users["user_id"]]
    ids, items = splits.catalogue_inputs(item_schema.column_names)

    def evaluate(model) -> dict:
        query = model.query_encoder(to_tensors(users, user_schema)).numpy()
        index = EmbeddingIndex(ids, item_vectors(model, items, item_schema))
        top, _ = index.search(query, k, exclude)
        m = topk_metrics(top, truth, k)
        return {f"{prefix}recall@{k}": round(m[f"recall@{k}"], 4),
                f"{prefix}ndcg@{k}": round(m[f"ndcg@{k}"], 4)}

    return evaluate


def item_vectors(model, items: pd.DataFrame, item_schema: Schema,
                 batch_size: int = 65_536) -> np.ndarray:
    """[len(items), dim] the item tower's vectors of the feature rows `items`, in batches (a
    million rows at once would hold every layer's activations for all of them)."""
    return np.concatenate([
        model.candidate_encoder(to_tensors(items.iloc[s:s + batch_size], item_schema)).numpy()
        for s in range(0, max(len(items), 1), batch_size)])


def _logq(splits: Splits, label: str, temperature: float):
    """log(item frequency) subtracted from every logit. Merlin applies it before dividing the
    logits by the temperature, so `reg_factor=temperature` keeps it a true log-probability
    (without it, recall fell by half at T = 0.1)."""
    freq = splits.item_frequencies(label)
    return PopularityLogitsCorrection(tf.constant(freq), schema=splits.item_id_schema,
                                      reg_factor=temperature)


def _contrastive_output(splits: Splits, cfg: ModelsConfig) -> mm.ContrastiveOutput:
    """Softmax over the batch's items (in-batch negatives), logits = similarity / temperature,
    with the logQ correction of the batch's popularity skew when configured."""
    extra = ({"post": _logq(splits, cfg.retrieval_positive, cfg.retrieval_temperature)}
             if cfg.logq_correction else {})
    return mm.ContrastiveOutput(DotProduct(), negative_samplers="in-batch",
                                schema=splits.item_id_schema, store_negative_ids=True,
                                logits_temperature=cfg.retrieval_temperature, **extra)


def _inputs(schema: Schema, cfg: ModelsConfig):
    """The features' embeddings, with an L2 penalty on the rows a batch uses."""
    return mm.InputBlockV2(schema, categorical=mm.Embeddings(
        schema.select_by_tag(Tags.CATEGORICAL),
        l2_batch_regularization_factor=cfg.retrieval_l2_reg))


def build_two_tower(splits: Splits, cfg: ModelsConfig) -> mm.Model:
    dim = cfg.embedding_dim

    def tower(schema):
        mlp = mm.MLPBlock([max(2 * dim, 64), dim], no_activation_last_layer=True,
                          dropout=cfg.retrieval_dropout or None)
        norm = {"post": mm.L2Norm()} if cfg.two_tower_l2_norm else {}
        return mm.Encoder(_inputs(schema, cfg), mlp, **norm)

    user_schema, item_schema = tower_schemas("two_tower", splits, cfg)
    return mm.TwoTowerModelV2(tower(user_schema), tower(item_schema),
                              outputs=_contrastive_output(splits, cfg))


def build_matrix_factorization(splits: Splits, cfg: ModelsConfig) -> mm.Model:
    """Dot products of a user and an item embedding (no L2 norm: its length carries
    popularity, which full-catalogue ranking rewards)."""
    return mm.MatrixFactorizationModelV2(
        sum(tower_schemas("mf", splits, cfg), Schema()), dim=cfg.embedding_dim,
        embeddings_l2_batch_regularization=cfg.retrieval_l2_reg,
        outputs=_contrastive_output(splits, replace(cfg, retrieval_temperature=1.0)))


def train_retrieval(kind: str, splits: Splits, cfg: ModelsConfig, out_dir: Path, version: str,
                    verbose: int = 0, callbacks: list | None = None) -> RetrievalResult:
    """Trains `kind` ('two_tower' or 'mf'), exports its query tower and item embeddings;
    `callbacks` are more Keras callbacks for the fit (a profiler's timer)."""
    tf.keras.utils.set_random_seed(cfg.seed)
    model = {"two_tower": build_two_tower, "mf": build_matrix_factorization}[kind](splits, cfg)
    positives = splits.positives(splits.train, cfg.retrieval_positive)
    schemas = tower_schemas(kind, splits, cfg)
    lr = cfg.retrieval_learning_rate if kind == "two_tower" else (cfg.mf_learning_rate
                                                                  or cfg.retrieval_learning_rate)
    model.compile(optimizer=optimizer(cfg.optimizer, lr), metrics=[])
    evaluate = retrieval_eval(splits, splits.valid, cfg.retrieval_positive, cfg.eval_k, schemas,
                              max_users=cfg.retrieval_eval_users, seed=cfg.seed)
    recall = _EpochRecall(evaluate, monitor=f"val_recall@{cfg.eval_k}",
                          patience=cfg.retrieval_patience)
    epochs = cfg.retrieval_epochs if kind == "two_tower" else cfg.mf_epochs
    start = time.perf_counter()
    model.fit(**training_data(positives, schemas[0] + schemas[1], cfg.retrieval_batch_size,
                              cfg.training_input, seed=cfg.seed),
              epochs=epochs, callbacks=[recall, *(callbacks or [])], verbose=verbose,
              shuffle=True)
    result = RetrievalResult(kind, recall.rows, round(time.perf_counter() - start, 2),
                             int(len(positives) * len(recall.rows)), int(model.count_params()),
                             embedding_tables(model))
    result.best_epoch, result.model = recall.best_index + 1, model
    kept = recall.rows[recall.best_index] if recall.rows else {}
    result.query_dir, result.items_dir = export_retrieval(model, kind, splits, schemas, out_dir,
                                                          version, kept)
    return result


def export_retrieval(model, kind: str, splits: Splits, schemas: tuple[Schema, Schema],
                     out_dir: Path, version: str, metrics: dict) -> tuple[Path, Path]:
    """`<out>/<kind>_query/` (SavedModel) and `<out>/<kind>_items/` (matrix + ids), one version."""
    query_dir, items_dir = out_dir / f"{kind}_query", out_dir / f"{kind}_items"
    for d in (query_dir, items_dir):
        shutil.rmtree(d, ignore_errors=True)
    save_serving(model.query_encoder, query_dir)
    user_schema, item_schema = schemas
    ids, items = splits.catalogue_inputs(item_schema.column_names)
    vectors = item_vectors(model, items, item_schema)
    items_dir.mkdir(parents=True)
    np.save(items_dir / ITEM_EMBEDDINGS, vectors.astype(np.float32))
    np.save(items_dir / ITEM_IDS, ids)
    write_manifest(query_dir, version, "query_tower", schema=_schema_json(user_schema),
                   metrics=metrics)
    write_manifest(items_dir, version, "item_embeddings", schema=_schema_json(item_schema),
                   metrics=metrics)
    return query_dir, items_dir


def _schema_json(schema: Schema) -> dict:
    return {c.name: {"dtype": str(c.dtype.to_numpy), "tags": sorted(str(t) for t in c.tags)}
            for c in schema}
