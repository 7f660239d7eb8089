"""Candidate generation (L6.1): pick thousands of candidates from the whole catalogue, fast.

A learned generator (two-tower or matrix factorisation) turns a user into a query vector and
searches the item embedding matrix by inner product: exactly (faiss IndexFlatIP) or
approximately (faiss HNSW, IVF or IVF-PQ; more speed for a little recall, config
`funnel.index` and `funnel.index_params`). An approximate index is built once, when a version
is exported for serving, and saved beside the embeddings it was built from (`save_index`), so a
stage loads it in seconds. Users the models do not know (left out by the active-user filter,
or new) get the popularity fallback (L1.1). Every generator answers `search(query, k, exclude)`
with item ids and scores, best first, never returning an excluded item (already seen, unsafe).
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from recfunnel.config import INDEX_KINDS, INDEX_PARAMS, index_params_problem
from recfunnel.errors import ConfigError
from recfunnel.models.artifacts import (ArtifactError, read_manifest, require_same_version,
                                        write_manifest)

ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.npy"
SAVED_INDEX = "index.faiss"           # <items>/<saved_index_name>/: the built index + manifest
# set on a built index (changing one needs no rebuild)
SEARCH_PARAMS = ("ef_search", "nprobe", "refine", "threads")


def index_params(kind: str, params: dict | None = None) -> dict:
    """Every parameter of an index of `kind`: its defaults (config INDEX_PARAMS) updated by
    `params`; a ConfigError naming funnel.index_params when they do not fit the kind."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    problem = index_params_problem(kind, params or {})
    if problem:
        raise ConfigError(problem)
    return {**INDEX_PARAMS[kind], **(params or {})}


def build_params(kind: str, params: dict | None = None) -> dict:
    """The parameters an index of `kind` is built with (all but SEARCH_PARAMS)."""
    return {k: v for k, v in index_params(kind, params).items() if k not in SEARCH_PARAMS}


def saved_index_name(kind: str, params: dict) -> str:
    """The folder of a saved index, named by what it was built with, e.g.
    index-hnsw-M32-ef_construction200."""
    return "-".join(["index", kind, *(f"{k}{v}" for k, v in
                                      sorted(build_params(kind, params).items()))])


def _first_kept(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, k: int):
    """[n, w] results and which to keep -> [n, k] arrays of each row's first k kept entries in
    their order, padded with id -1 and score -inf."""
    n, width = ids.shape
    out_items = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    slot = np.cumsum(keep, axis=1) - 1                      # where each kept entry goes
    taken = np.flatnonzero(keep & (slot < k))
    to = taken // width * k + slot.ravel()[taken]
    out_items.ravel()[to] = ids.ravel()[taken]
    out_scores.ravel()[to] = scores.ravel()[taken]
    return out_items, out_scores


class _ExcludedPairs:
    """Which (query, item) pairs of a batch's results are excluded, without a loop over the
    queries: every id gets a slot (id - smallest id when the ids are dense, as categorified ids
    are; else its rank among the sorted ids) and every pair one integer, query * slots + slot,
    looked up among the sorted excluded pairs. For a batch, only the results whose slot some
    query excludes (flagged in one boolean array over the slots) are looked up."""

    def __init__(self, item_ids: np.ndarray):
        ids = np.asarray(item_ids, np.int64)
        self.low = int(ids.min()) if len(ids) else 0
        self.dense = len(ids) > 0 and int(ids.max()) - self.low < 4 * len(ids)
        if self.dense:
            self.slots, self.slot_of_row = int(ids.max()) - self.low + 1, ids - self.low
        else:
            self.sorted_ids, self.slot_of_row = np.unique(ids, return_inverse=True)
            self.slots = max(len(self.sorted_ids), 1)

    def _slot(self, ids: np.ndarray) -> np.ndarray:
        """The slots of `ids`; -1 for an id no item has (it can match nothing)."""
        if self.dense:
            slot = ids - self.low
            return np.where((slot >= 0) & (slot < self.slots), slot, -1)
        rank = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return np.where(self.sorted_ids[rank] == ids, rank, -1)

    def mask(self, rows: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
        """[n, w] bool: the item at catalogue row rows[i, j] is in exclude[i] (rows < 0: no)."""
        out = np.zeros(rows.shape, bool)
        sizes = [np.size(e) for e in exclude]
        banned = self._slot(np.concatenate([np.asarray(e).ravel() for e in exclude]
                                           ).astype(np.int64)) if sum(sizes) else np.zeros(0, int)
        owner = np.repeat(np.arange(len(exclude)), sizes)[banned >= 0]
        banned = banned[banned >= 0]
        if not len(banned) or not rows.size:
            return out
        pairs = np.sort(owner * self.slots + banned)
        found = self.slot_of_row[np.maximum(rows, 0)]
        if len(rows) > 1:     # flagging passes over every slot once: worth it for a batch only
            flagged = np.zeros(self.slots, bool)
            flagged[banned] = True
            i, j = np.nonzero(flagged[found] & (rows >= 0))
        else:
            i, j = np.nonzero(rows >= 0)
        pair = i * self.slots + found[i, j]
        out[i, j] = pairs[np.minimum(np.searchsorted(pairs, pair), len(pairs) - 1)] == pair
        return out


def _build_faiss(kind: str, params: dict, vectors: np.ndarray):
    """A faiss index of `kind` over `vectors` [n, dim] by inner product, trained and filled.

    ivfpq: product-quantized codes (m sub-vectors of nbits each; 4 bits use faiss's SIMD
    fast-scan kernels) in nlist inverted lists, the best k x refine of them re-scored exactly.
    """
    import faiss

    n, dim = vectors.shape
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        if params["M"] < 2:
            raise ConfigError(f"setting funnel.index_params.M: an HNSW graph needs at least 2 "
                              f"neighbours per node, got {params['M']}")
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        nlist = min(params["nlist"], n)       # more lists than items would leave lists empty
        if kind == "ivf":
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                                       faiss.METRIC_INNER_PRODUCT)
        else:
            m, nbits = params["m"], params["nbits"]
            if dim % m:
                raise ConfigError(f"setting funnel.index_params.m: {m} sub-vectors do not divide "
                                  f"the embedding dim {dim}; choose a divisor of it")
            if n < 2 ** nbits:
                raise ConfigError(f"setting funnel.index_params.nbits: {nbits} bits need at "
                                  f"least {2 ** nbits} items to train, the catalogue has {n}; "
                                  "use fewer bits or another index")
            codes = f"PQ{m}x{nbits}" + ("fsr" if nbits == 4 else "")
            index = faiss.index_factory(dim, f"IVF{nlist},{codes},RFlat",
                                        faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


@contextmanager
def _faiss_threads(n: int):
    """faiss's OpenMP threads set to n for the block (a process-wide setting, restored after)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _set_search_params(index, kind: str, params: dict) -> None:
    import faiss

    if kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif kind == "ivf":
        index.nprobe = params["nprobe"]
    elif kind == "ivfpq":
        refine = faiss.downcast_index(index)
        refine.k_factor = float(params["refine"])
        faiss.extract_index_ivf(faiss.downcast_index(refine.base_index)).nprobe = params["nprobe"]


@dataclass
class EmbeddingIndex:
    """Nearest-neighbour search over item vectors [n_items, dim], rows aligned with `item_ids`.

    kind: exact | hnsw | ivf | ivfpq (config INDEX_PARAMS); params: that kind's parameters,
    any not given taking their defaults. `_index`: a faiss index already built over `vectors`
    (a saved one, `load`); None builds it here.
    """
    item_ids: np.ndarray
    vectors: np.ndarray
    version: str = "unversioned"
    kind: str = "exact"
    params: dict = field(default_factory=dict)
    _index: object = field(default=None, repr=False)

    def __post_init__(self):
        if len(self.item_ids) != len(self.vectors):
            raise ValueError(f"item_ids ({len(self.item_ids)}) and vectors ({len(self.vectors)}) "
                             "must have one row per item")
        self.params = index_params(self.kind, self.params)
        self.item_ids = np.asarray(self.item_ids)
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self._index is None:
            with _faiss_threads(self.params["threads"]):
                self._index = _build_faiss(self.kind, self.params, self.vectors)
        self.tune()
        self._excluded = _ExcludedPairs(self.item_ids)

    def tune(self, **search) -> "EmbeddingIndex":
        """Sets search parameters (SEARCH_PARAMS: ef_search, nprobe, refine, threads) on the
        built index, no rebuild; returns self."""
        built = {k: v for k, v in search.items() if k not in SEARCH_PARAMS}
        if built:
            raise ConfigError(f"{', '.join(built)}: not a search parameter; changing how an "
                              "index is built needs another index")
        self.params = index_params(self.kind, {**self.params, **search})
        _set_search_params(self._index, self.kind, self.params)
        return self

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
        if exclude is not None and len(exclude) != len(query):
            raise ValueError(f"exclude has {len(exclude)} lists for {len(query)} queries; "
                             "give one (maybe empty) per query")
        extra = max((np.size(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(k + extra, len(self.item_ids))
        with _faiss_threads(self.params["threads"]):
            scores, rows = self._index.search(query, fetch)
        return self._results(rows, scores, k, exclude if extra else None)

    def _results(self, rows: np.ndarray, scores: np.ndarray, k: int,
                 exclude: Sequence[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """faiss's answer (catalogue rows [n, w], best first, -1 where none; their scores) ->
        each query's first k item ids and scores that are not excluded, padded."""
        keep = rows >= 0
        if exclude is not None:
            keep &= ~self._excluded.mask(rows, exclude)
        return _first_kept(self.item_ids[np.maximum(rows, 0)], scores, keep, k)

    @classmethod
    def load(cls, folder: str | Path, kind: str = "exact",
             params: dict | None = None) -> "EmbeddingIndex":
        """The index of the embeddings in `folder` (an `item_embeddings` artifact): the one
        saved there for this kind and build parameters (`save_index`; verified against the
        embeddings), else built now (an approximate index over a large catalogue: minutes)."""
        folder = Path(folder)
        manifest = read_manifest(folder, kind="item_embeddings")
        params = index_params(kind, params)
        saved = folder / saved_index_name(kind, params)
        built = _read_saved_index(saved, manifest, kind, params) if saved.is_dir() else None
        return cls(np.load(folder / ITEM_IDS), np.load(folder / ITEM_EMBEDDINGS),
                   manifest["version"], kind, params, built)


def _built_from(manifest: dict) -> dict:
    """The sha256 of the files an index is built from (what its own manifest records)."""
    return {name: manifest["files"][name] for name in (ITEM_EMBEDDINGS, ITEM_IDS)}


def _read_saved_index(folder: Path, embeddings: dict, kind: str, params: dict):
    """The faiss index saved in `folder`, refused unless its file matches its manifest and it
    was built, with these parameters, from the embeddings whose manifest is `embeddings`."""
    import faiss

    manifest = read_manifest(folder, kind="item_index")
    require_same_version(item_embeddings=embeddings, item_index=manifest)
    recorded, built = manifest["config"], build_params(kind, params)
    if recorded.get("built_from") != _built_from(embeddings):
        raise ArtifactError(f"{folder}: this index was built from other item embeddings than "
                            f"those in {folder.parent}; rebuild it (save_index)")
    if recorded.get("index") != kind or recorded.get("params") != built:
        raise ArtifactError(f"{folder}: holds a {recorded.get('index')} index built with "
                            f"{recorded.get('params')}, expected {kind} with {built}")
    return faiss.read_index(str(folder / SAVED_INDEX))


def save_index(folder: str | Path, kind: str, params: dict | None = None) -> Path | None:
    """Builds the `kind` index of the embeddings in `folder` and saves it there, in a folder
    of its own (saved_index_name) under a manifest of the embeddings' version that records the
    sha256 of the embeddings it was built from; kept as it is when such a folder is already
    there and valid. Returns that folder (None for `exact`: nothing worth saving)."""
    folder = Path(folder)
    manifest = read_manifest(folder, kind="item_embeddings")
    params = index_params(kind, params)
    if kind == "exact":
        return None
    out = folder / saved_index_name(kind, params)
    if out.is_dir():
        try:
            _read_saved_index(out, manifest, kind, params)
            return out
        except ArtifactError:
            shutil.rmtree(out)
    import faiss

    started = time.perf_counter()
    index = EmbeddingIndex(np.load(folder / ITEM_IDS), np.load(folder / ITEM_EMBEDDINGS),
                           manifest["version"], kind, params)
    seconds = round(time.perf_counter() - started, 2)
    staging = folder / f".{out.name}.{os.getpid()}"
    staging.mkdir()
    try:
        faiss.write_index(index._index, str(staging / SAVED_INDEX))
        write_manifest(staging, manifest["version"], "item_index", config={
            "index": kind, "params": build_params(kind, params),
            "built_from": _built_from(manifest), "items": int(len(index.item_ids)),
            "build_seconds": seconds})
        os.rename(staging, out)            # a reader never sees half an index
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


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
        self._excluded = _ExcludedPairs(self.item_ids)

    @classmethod
    def fit(cls, item_ids: np.ndarray, version: str = "unversioned") -> "PopularityCandidates":
        """From the item ids of the training interactions (one entry per interaction)."""
        ids, counts = np.unique(np.asarray(item_ids), return_counts=True)
        return cls(ids, counts, version)

    def search(self, n_queries: int, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        extra = max((np.size(e) for e in exclude), default=0) if exclude is not None else 0
        # the first k + extra most popular items hold each user's top k after exclusions
        rows = np.broadcast_to(np.arange(min(k + extra, len(self.item_ids))),
                               (n_queries, min(k + extra, len(self.item_ids))))
        share = (self.counts / max(self.counts.sum(), 1.0)).astype(np.float32)
        keep = ~self._excluded.mask(rows, exclude) if extra else np.ones(rows.shape, bool)
        return _first_kept(self.item_ids[rows], share[rows], keep, k)


def load_retrieval(query_dir: str | Path, items_dir: str | Path, kind: str = "exact",
                   params: dict | None = None):
    """A query tower and the item index it is scored against, refused unless both come from
    one training (same version) and every file matches its checksum (L5.2).

    Returns (serving signature of the query tower, EmbeddingIndex, version).
    """
    import tensorflow as tf

    query_manifest = read_manifest(query_dir, kind="query_tower")
    items_manifest = read_manifest(items_dir, kind="item_embeddings")
    version = require_same_version(query_tower=query_manifest, item_embeddings=items_manifest)
    signature = tf.saved_model.load(str(query_dir)).signatures["serving_default"]
    return signature, EmbeddingIndex.load(items_dir, kind, params), version


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
