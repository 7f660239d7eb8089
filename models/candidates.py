"""Candidate generation (L6.1): pick thousands of candidates from the whole catalogue, fast.

A learned generator (two-tower or matrix factorisation) turns a user into a query vector and
searches the item embedding matrix by inner product: exactly (faiss IndexFlatIP) or
approximately (faiss HNSW; more speed for a little recall). Users the models do not know (left
out by the active-user filter, or new) get the popularity fallback (L1.1). Every generator
answers `search(query, k, exclude)` with item ids and scores, best first, never returning an
excluded item (already seen, unsafe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recfunnel.models.artifacts import read_manifest, require_same_version

ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.npy"


def _pad(items: list[np.ndarray], scores: list[np.ndarray], k: int):
    """Rows of at most k results -> [n, k] arrays, padded with id -1 and score -inf."""
    out_items = np.full((len(items), k), -1, dtype=np.int64)
    out_scores = np.full((len(items), k), -np.inf, dtype=np.float32)
    for row, (i, s) in enumerate(zip(items, scores)):
        out_items[row, :len(i)] = i[:k]
        out_scores[row, :len(s)] = s[:k]
    return out_items, out_scores


@dataclass
class EmbeddingIndex:
    """Nearest-neighbour search over item vectors [n_items, dim], rows aligned with `item_ids`."""
    item_ids: np.ndarray
    vectors: np.ndarray
    version: str = "unversioned"
    kind: str = "exact"              # exact | hnsw
    hnsw_neighbors: int = 32
    _index: object = field(default=None, repr=False)

    def __post_init__(self):
        import faiss

        if len(self.item_ids) != len(self.vectors):
            raise ValueError(f"item_ids ({len(self.item_ids)}) and vectors ({len(self.vectors)}) "
                             "must have one row per item")
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        dim = self.vectors.shape[1]
        if self.kind == "exact":
            self._index = faiss.IndexFlatIP(dim)
        elif self.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, self.hnsw_neighbors, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efSearch = 128
        else:
            raise ValueError(f"index kind must be 'exact' or 'hnsw', got {self.kind!r}")
        self._index.add(self.vectors)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, query: np.ndarray, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for each query vector.

        Args:
          query: [n, dim] query embeddings.
          k: results per query (at most the catalogue size).
          exclude: per query, item ids that must not be returned.
        Returns:
          item ids [n, k] and scores [n, k], best first; -1 / -inf where fewer items remain.
        """
        query = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
        if query.shape[1] != self.dim:
            raise ValueError(f"query vectors have dim {query.shape[1]}, the index has {self.dim}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(k + extra, len(self.item_ids))
        scores, rows = self._index.search(query, fetch)
        items, kept_scores = [], []
        for n in range(len(query)):
            valid = rows[n] >= 0
            ids, s = self.item_ids[rows[n][valid]], scores[n][valid]
            if exclude is not None and len(exclude[n]):
                keep = ~np.isin(ids, exclude[n])
                ids, s = ids[keep], s[keep]
            items.append(ids)
            kept_scores.append(s)
        return _pad(items, kept_scores, k)

    @classmethod
    def load(cls, folder: str | Path, kind: str = "exact") -> "EmbeddingIndex":
        folder = Path(folder)
        manifest = read_manifest(folder, kind="item_embeddings")
        return cls(np.load(folder / ITEM_IDS), np.load(folder / ITEM_EMBEDDINGS),
                   manifest["version"], kind)


@dataclass
class PopularityCandidates:
    """The fallback for users the models do not know: the most-interacted items, minus exclusions."""
    item_ids: np.ndarray
    counts: np.ndarray
    version: str = "unversioned"

    def __post_init__(self):
        order = np.lexsort((self.item_ids, -np.asarray(self.counts)))
        self.item_ids = np.asarray(self.item_ids)[order]
        self.counts = np.asarray(self.counts, dtype=np.float64)[order]

    @classmethod
    def fit(cls, item_ids: np.ndarray, version: str = "unversioned") -> "PopularityCandidates":
        """From the item ids of the training interactions (one entry per interaction)."""
        ids, counts = np.unique(np.asarray(item_ids), return_counts=True)
        return cls(ids, counts, version)

    def search(self, n_queries: int, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        share = (self.counts / max(self.counts.sum(), 1.0)).astype(np.float32)
        items, scores = [], []
        for n in range(n_queries):
            banned = exclude[n] if exclude is not None else ()
            # the best k + |banned| hold the best k allowed: no need to look further
            head = slice(0, k + len(banned))
            keep = ~np.isin(self.item_ids[head], banned) if len(banned) else slice(None)
            items.append(self.item_ids[head][keep][:k])
            scores.append(share[head][keep][:k])
        return _pad(items, scores, k)


def load_retrieval(query_dir: str | Path, items_dir: str | Path, kind: str = "exact"):
    """A query tower and the item index it is scored against, refused unless both come from
    one training (same version) and every file matches its checksum (L5.2).

    Returns (serving signature of the query tower, EmbeddingIndex, version).
    """
    import tensorflow as tf

    query_manifest = read_manifest(query_dir, kind="query_tower")
    items_manifest = read_manifest(items_dir, kind="item_embeddings")
    version = require_same_version(query_tower=query_manifest, item_embeddings=items_manifest)
    signature = tf.saved_model.load(str(query_dir)).signatures["serving_default"]
    return signature, EmbeddingIndex.load(items_dir, kind), version


RETRIEVAL_SCORE = "retrieval_score"   # the candidate generator's score, a ranker feature


def query_vectors(query, rows) -> np.ndarray:
    """[n, dim] query vectors of the query tower's serving signature `query` for the feature
    rows `rows` (a frame holding its inputs), each input cast to the signature's dtype."""
    import tensorflow as tf

    specs = query.structured_input_signature[1]
    inputs = {n: tf.constant(np.asarray(rows[n]).astype(spec.dtype.as_numpy_dtype, copy=False)
                             .reshape(-1, 1)) for n, spec in specs.items()}
    return next(iter(query(**inputs).values())).numpy()


def retrieval_scores(query, index: EmbeddingIndex, rows) -> np.ndarray:
    """[n] the candidate generator's score (query vector . item vector) of each (user, item)
    row: the previous stage's opinion, which a ranker can take as a feature (L6). `query` is
    the query tower's serving signature, `rows` hold its inputs and the categorified
    `item_id`; an item without a vector (unseen in training) scores 0."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    vectors = query_vectors(query, rows)
    position = np.full(int(index.item_ids.max()) + 1, -1, np.int64)
    position[index.item_ids] = np.arange(len(index.item_ids))
    ids = np.asarray(rows["item_id"], np.int64)
    pos = np.where((ids >= 0) & (ids < len(position)), position[np.clip(ids, 0, len(position) - 1)],
                   -1)
    out = np.zeros(len(rows), np.float32)
    ok = pos >= 0
    out[ok] = np.einsum("nd,nd->n", vectors[ok], index.vectors[pos[ok]])
    return out
