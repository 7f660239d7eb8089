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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

import merlin.models.tf as mm
from merlin.models.tf.outputs.base import DotProduct
from merlin.models.tf.transforms.bias import PopularityLogitsCorrection
from merlin.schema import Schema, Tags

from models.artifacts import write_manifest
from models.candidates import ITEM_EMBEDDINGS, ITEM_IDS, EmbeddingIndex
from models.data import Splits, embedding_tables, to_dataset, to_tensors
from recfunnel.config import ModelsConfig
from recfunnel.evaluation.topk import topk_metrics


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


class _EpochRecall(tf.keras.callbacks.Callback):
    """Validation recall@K and NDCG@K after every epoch, full ranking over all items."""

    def __init__(self, evaluate):
        super().__init__()
        self.evaluate = evaluate
        self.rows: list[dict] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        metrics = self.evaluate(self.model)
        self.rows.append({"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan)),
                          "seconds": round(seconds, 2), **metrics})


def retrieval_eval(splits: Splits, frame: pd.DataFrame, label: str, k: int):
    """A function model -> metrics: each user's `frame` positives vs the top-k of all items,
    excluding the items the user had in training (full ranking, not sampled)."""
    positives = splits.positives(frame, label)
    users = positives.sort_values("timestamp").drop_duplicates("user_id")
    relevant = positives.groupby("user_id")["item_id"].apply(np.asarray)
    seen = splits.positives(splits.train, label).groupby("user_id")["item_id"].apply(np.asarray)
    exclude = [seen.get(u, np.empty(0, np.int64)) for u in users["user_id"]]
    truth = [relevant[u] for u in users["user_id"]]
    items = splits.latest_rows("item_id", splits.item_schema.column_names)

    def evaluate(model) -> dict:
        query = model.query_encoder(to_tensors(users, splits.user_schema)).numpy()
        vectors = model.candidate_encoder(to_tensors(items, splits.item_schema)).numpy()
        index = EmbeddingIndex(items["item_id"].to_numpy(), vectors)
        top, _ = index.search(query, k, exclude)
        m = topk_metrics(top, truth, k)
        return {f"val_recall@{k}": round(m[f"recall@{k}"], 4),
                f"val_ndcg@{k}": round(m[f"ndcg@{k}"], 4)}

    return evaluate


TEMPERATURE = 0.1    # two-tower logits are cosine similarities / TEMPERATURE


def _logq(splits: Splits, label: str, temperature: float = 1.0):
    """log(item frequency) subtracted from every logit. Merlin applies it before dividing the
    logits by the temperature, so `reg_factor=temperature` keeps it a true log-probability
    (without it, recall fell by half at T = 0.1)."""
    freq = splits.item_frequencies(label)
    return PopularityLogitsCorrection(tf.constant(freq), schema=splits.item_id_schema,
                                      reg_factor=temperature)


def _id_schema(splits: Splits) -> Schema:
    # select_by_tag([USER_ID, ITEM_ID]) would also return every USER and ITEM feature
    return splits.schema.select_by_tag(Tags.USER_ID) + splits.schema.select_by_tag(Tags.ITEM_ID)


def build_two_tower(splits: Splits, cfg: ModelsConfig) -> mm.Model:
    dim = cfg.embedding_dim
    tower = lambda: mm.MLPBlock([max(2 * dim, 64), dim], no_activation_last_layer=True)  # noqa: E731
    query = mm.Encoder(splits.user_schema, tower(), post=mm.L2Norm())
    candidate = mm.Encoder(splits.item_schema, tower(), post=mm.L2Norm())
    extra = ({"post": _logq(splits, cfg.retrieval_positive, TEMPERATURE)}
             if cfg.logq_correction else {})
    output = mm.ContrastiveOutput(DotProduct(), negative_samplers="in-batch",
                                  schema=splits.item_id_schema, store_negative_ids=True,
                                  logits_temperature=TEMPERATURE, **extra)
    return mm.TwoTowerModelV2(query, candidate, outputs=output)


def build_matrix_factorization(splits: Splits, cfg: ModelsConfig) -> mm.Model:
    ids = _id_schema(splits)
    extra = {"post": _logq(splits, cfg.retrieval_positive)} if cfg.logq_correction else {}
    return mm.MatrixFactorizationModelV2(ids, dim=cfg.embedding_dim, negative_samplers="in-batch",
                                         store_negative_ids=True, **extra)


def train_retrieval(kind: str, splits: Splits, cfg: ModelsConfig, out_dir: Path, version: str,
                    verbose: int = 0) -> RetrievalResult:
    """Trains `kind` ('two_tower' or 'mf'), exports its query tower and item embeddings."""
    tf.keras.utils.set_random_seed(cfg.seed)
    model = {"two_tower": build_two_tower, "mf": build_matrix_factorization}[kind](splits, cfg)
    positives = splits.positives(splits.train, cfg.retrieval_positive)
    schema = (splits.user_schema + splits.item_schema if kind == "two_tower"
              else _id_schema(splits))
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.retrieval_learning_rate), metrics=[])
    recall = _EpochRecall(retrieval_eval(splits, splits.valid, cfg.retrieval_positive, cfg.eval_k))
    epochs = cfg.retrieval_epochs if kind == "two_tower" else cfg.mf_epochs
    start = time.perf_counter()
    model.fit(to_dataset(positives, schema), batch_size=cfg.retrieval_batch_size, epochs=epochs,
              callbacks=[recall], verbose=verbose, shuffle=True)
    result = RetrievalResult(kind, recall.rows, round(time.perf_counter() - start, 2),
                             int(len(positives) * epochs), int(model.count_params()),
                             embedding_tables(model))
    result.query_dir, result.items_dir = export_retrieval(model, kind, splits, out_dir, version,
                                                          recall.rows[-1] if recall.rows else {})
    return result


def export_retrieval(model, kind: str, splits: Splits, out_dir: Path, version: str,
                     metrics: dict) -> tuple[Path, Path]:
    """`<out>/<kind>_query/` (SavedModel) and `<out>/<kind>_items/` (matrix + ids), one version."""
    query_dir, items_dir = out_dir / f"{kind}_query", out_dir / f"{kind}_items"
    for d in (query_dir, items_dir):
        shutil.rmtree(d, ignore_errors=True)
    model.query_encoder.save(str(query_dir))
    item_schema = (splits.item_schema if kind == "two_tower"
                   else splits.schema.select_by_tag(Tags.ITEM_ID))
    items = splits.latest_rows("item_id", item_schema.column_names)
    vectors = model.candidate_encoder(to_tensors(items, item_schema)).numpy()
    items_dir.mkdir(parents=True)
    np.save(items_dir / ITEM_EMBEDDINGS, vectors.astype(np.float32))
    np.save(items_dir / ITEM_IDS, items["item_id"].to_numpy(np.int64))
    user_schema = (splits.user_schema if kind == "two_tower"
                   else splits.schema.select_by_tag(Tags.USER_ID))
    write_manifest(query_dir, version, "query_tower", schema=_schema_json(user_schema),
                   metrics=metrics)
    write_manifest(items_dir, version, "item_embeddings", schema=_schema_json(item_schema),
                   metrics=metrics)
    return query_dir, items_dir


def _schema_json(schema: Schema) -> dict:
    return {c.name: {"dtype": str(c.dtype.to_numpy), "tags": sorted(str(t) for t in c.tags)}
            for c in schema}
