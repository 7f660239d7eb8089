"""The funnel's components (L6): candidate sources, filters, rankers and the selector, by name.

A funnel is declared, not coded (config `funnel:`, models.funnel.FunnelSettings): which
sources fill the candidate list and with what share of it, which filters remove items from
it, which rankers reorder and cut it, in order, and the blend of the last one's objectives.
Each kind of component is a Protocol below and each implementation is registered by name in
its registry, as the unsafe-item filters are (workflows/unsafe.py). A new stage is one class
here (or in a module that registers it) and one line of config.

All components work on a version's categorified item ids (`item_id` of the feature tables);
-1 pads a short list and scores -inf. A component opens its artifacts from one training
version's folder and carries that version, which the funnel requires to be the same for all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from recfunnel.models.artifacts import read_manifest
from recfunnel.models.blend import blend
from recfunnel.models.candidates import (RETRIEVAL_SCORE, EmbeddingIndex, PopularityCandidates,
                               query_vectors)
from recfunnel.models.features import Columns

POPULARITY = "popularity"    # the fallback source of users the models do not know (L1.1)
# Offline predictions name each stage's list (models.predict writes, recfunnel.evaluation
# reads): the candidates, each ranker's cut but the last's, then the final list `funnel`.
STAGES_FILE = "stages.json"
DEFAULT_STAGE_LISTS = (("candidates", "funnel_candidates"), ("light_ranker", "funnel_light"),
                       ("heavy_ranker", "funnel"))


def stage_lists(rankers: list[str]) -> dict[str, str]:
    """Ranker -> the name of its cut's list: the last one's is `funnel`, each earlier one's
    `funnel_<name less _ranker>` (the light ranker's: funnel_light)."""
    return {name: "funnel" if i == len(rankers) - 1 else f"funnel_{name.removesuffix('_ranker')}"
            for i, name in enumerate(rankers)}


@dataclass
class Request:
    """What every component may read about the users of one request."""
    users_raw: np.ndarray            # [n] raw user ids
    rows: Columns                    # [n] the users' feature rows (the version's user table)
    known: np.ndarray                # [n] bool: the models know the user (else the fallback)
    exclude_raw: list | None = None  # per user, raw item ids the caller excludes (None: seen)

    def subset(self, rows: np.ndarray) -> "Request":
        """The request of the users at positions `rows`."""
        if len(rows) == len(self.users_raw):
            return self
        return Request(self.users_raw[rows], self.rows.take(rows),
                       self.known[rows], None if self.exclude_raw is None
                       else [self.exclude_raw[i] for i in rows])


class CandidateSource(Protocol):
    """Picks up to k items per user from the whole catalogue, best first."""
    name: str
    version: str
    serves_unknown_users: bool       # False: unknown users get nothing (the fallback fills)

    def candidates(self, request: Request, k: int, exclude: list[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """([n, k] ids, [n, k] scores); never an id in `exclude[i]` for user i."""


class Filter(Protocol):
    """Items a user must not be shown (already seen, unsafe, ...)."""
    name: str

    def excluded(self, request: Request) -> list[np.ndarray]:
        """Per user, categorified item ids to remove."""


class Ranker(Protocol):
    """Scores (user, item) feature rows on each of its objectives."""
    name: str
    version: str
    objectives: list[str]

    def score(self, rows: Columns) -> dict[str, np.ndarray]:
        """objective -> [len(rows)] scores of (user, item) rows (models.funnel.pair_rows)."""


class Selector(Protocol):
    """Orders each user's scored candidates and keeps the best `keep`."""
    name: str

    def select(self, candidates: np.ndarray, scores: dict[str, np.ndarray], keep: int,
               weights: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """(kept ids, their blended scores, per-objective scores), each [n, keep]."""


# ---- registries: name -> how to open it from a version folder --------------------------------
@dataclass(frozen=True)
class Registered:
    """A registered implementation: its factory, the version folders it opens, and for a
    source its kind (`embedding`: a query tower and an item index, what the rankers' cascade
    training and retrieval-score feature use; `item_item`; `popularity`)."""
    open: Callable
    artifacts: Callable[[Path], list[str]]
    kind: str = ""


SOURCES: dict[str, Registered] = {}
FILTERS: dict[str, Registered] = {}
RANKERS: dict[str, Registered] = {}
SELECTORS: dict[str, Callable] = {}


def register(registry: dict, name: str, artifacts: Callable[[Path], list[str]] | list[str] = (),
             kind: str = ""):
    """Class decorator: `@register(SOURCES, "two_tower", ["two_tower_query", ...])`."""
    folders = artifacts if callable(artifacts) else (lambda root, a=list(artifacts): a)

    def add(factory):
        if name in registry:
            raise ValueError(f"{name!r} is registered twice")
        registry[name] = Registered(factory, folders, kind)
        return factory
    return add


def lookup(registry: dict, kind: str, name: str) -> Registered:
    if name not in registry:
        raise KeyError(f"unknown funnel {kind} {name!r}; registered: {', '.join(sorted(registry))}")
    return registry[name]


# ---- candidate sources -----------------------------------------------------------------------
class EmbeddingSource:
    """A learned candidate generator: the query tower's vector searched in the item index."""
    serves_unknown_users = False

    def __init__(self, name: str, root: Path, index: str = "exact",
                 index_params: dict | None = None):
        self.name, self.root, self.index_kind = name, Path(root), index
        self.index_params = dict(index_params or {})
        self.version = read_manifest(self.root / f"{name}_query", kind="query_tower")["version"]
        self._query = self._index = None

    @property
    def query(self):
        """The query tower's serving signature (loaded on first use)."""
        if self._query is None:
            import tensorflow as tf

            self._query = tf.saved_model.load(str(self.root / f"{self.name}_query")
                                              ).signatures["serving_default"]
        return self._query

    @property
    def index(self) -> EmbeddingIndex:
        if self._index is None:
            self._index = EmbeddingIndex.load(self.root / f"{self.name}_items", self.index_kind,
                                              self.index_params)
        return self._index

    def candidates(self, request, k, exclude):
        n = len(request.users_raw)
        items, scores = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
        rows = np.flatnonzero(request.known)
        if len(rows):
            vectors = query_vectors(self.query, request.rows.take(rows))
            items[rows], scores[rows] = self.index.search(vectors, k, [exclude[i] for i in rows])
        return items, scores


def _embedding_source(name: str) -> None:
    register(SOURCES, name, [f"{name}_query", f"{name}_items"], "embedding")(
        lambda root, settings, funnel, n=name: EmbeddingSource(n, root, settings.index,
                                                            settings.index_params))


for _name in ("two_tower", "mf"):
    _embedding_source(_name)


@register(SOURCES, "ease", ["ease"], "item_item")
class ItemItemSource:
    """An item-item model (EASE, models.train.train_ease): a user's score for item j is the
    sum of B[i, j] over the items i the user has (the `seen` filter's items: what the export
    recorded, or the caller's exclusions); items never seen in training are never returned."""
    name = "ease"
    serves_unknown_users = False

    def __init__(self, root: Path, settings=None, funnel=None):
        folder = Path(root) / self.name
        self.version = read_manifest(folder, kind="item_item")["version"]
        self.weights = np.load(folder / "weights.npy", mmap_mode="r")
        self.fitted = np.load(folder / "fitted_items.npy")
        self.funnel = funnel

    def scores(self, had: np.ndarray) -> np.ndarray:
        """[n_items] a user's score of every item from the items they have (categorified ids);
        -inf for items never seen in training."""
        had = had[had < len(self.fitted)]
        s = np.asarray(self.weights[had].sum(axis=0), np.float32)
        s[~self.fitted] = -np.inf
        return s

    def candidates(self, request, k, exclude):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        n, n_items = len(request.users_raw), len(self.fitted)
        items, scores = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float32)
        history = self.funnel.user_items(request)
        for row in np.flatnonzero(request.known):
            had = history[row][history[row] < n_items]
            if not len(had):
                continue
            s = self.scores(had)
            banned = np.asarray(exclude[row], np.int64)
            s[banned[(banned >= 0) & (banned < n_items)]] = -np.inf
            top = np.argsort(-s, kind="stable")[:k]
            top = top[np.isfinite(s[top])]
            items[row, :len(top)], scores[row, :len(top)] = top, s[top]
        return items, scores


@register(SOURCES, POPULARITY, [POPULARITY], "popularity")
class PopularitySource:
    """The most-interacted items of the training split, for every user alike."""
    name = POPULARITY
    serves_unknown_users = True

    def __init__(self, root: Path, settings=None, funnel=None):
        folder = Path(root) / POPULARITY
        self.version = read_manifest(folder, kind="popularity")["version"]
        self.model = PopularityCandidates(np.load(folder / "item_ids.npy"),
                                          np.load(folder / "counts.npy"), self.version)

    def candidates(self, request, k, exclude):
        return self.model.search(len(request.users_raw), k, exclude)


# ---- filters -----------------------------------------------------------------------------------
@register(FILTERS, "seen")
class SeenFilter:
    """What each user has already interacted with (the export's `seen`), or what the caller
    asks to exclude instead."""
    name = "seen"

    def __init__(self, root: Path, settings=None, funnel=None):
        self.funnel = funnel

    def excluded(self, request):
        return self.funnel.user_items(request)


@register(FILTERS, "unsafe")
class UnsafeFilter:
    """The items the dataset step flagged unsafe (workflows.unsafe), for every user."""
    name = "unsafe"

    def __init__(self, root: Path, settings=None, funnel=None):
        self.ids = funnel.item_ids(funnel.unsafe_raw)

    def excluded(self, request):
        return [self.ids] * len(request.users_raw)


# ---- rankers -----------------------------------------------------------------------------------
def _ranker_artifacts(name: str) -> Callable[[Path], list[str]]:
    """The ranker's folder, and the retrieval model whose score it takes as a feature."""
    def folders(root: Path) -> list[str]:
        kind = read_manifest(Path(root) / name, kind="ranker")["config"].get(RETRIEVAL_SCORE)
        return [name, *((f"{kind}_query", f"{kind}_items") if kind else ())]
    return folders


class TrainedRanker:
    """A multi-task ranker of the version (models.ranking), through its serving signature."""

    def __init__(self, name: str, root: Path):
        from recfunnel.models.scorer import RankerScorer

        self.name = name
        self.scorer = RankerScorer(Path(root) / name)
        self.version, self.objectives = self.scorer.version, self.scorer.objectives

    def score(self, rows):
        return self.scorer.score(rows)


for _name in ("light_ranker", "heavy_ranker"):
    register(RANKERS, _name, _ranker_artifacts(_name))(
        lambda root, settings, funnel, n=_name: TrainedRanker(n, root))


# ---- selector ----------------------------------------------------------------------------------
def _blended(candidates, scores, weights) -> np.ndarray:
    """[n, width] the blend of `weights` over `scores`, -inf at padding."""
    return np.where(candidates >= 0, blend(scores, weights).reshape(candidates.shape), -np.inf)


def _keep_best(candidates, key, scores, keep):
    """Each row's `keep` candidates of highest `key` (stable on ties): their ids, keys and
    per-objective scores, each [n, keep]."""
    n, width = candidates.shape
    order = np.argsort(-key, axis=1, kind="stable")[:, :min(keep, width)]
    take = lambda a: np.take_along_axis(a.reshape(n, width), order, axis=1)  # noqa: E731
    return take(candidates), take(key), {k: take(v) for k, v in scores.items()}


class BlendSelector:
    """Orders by the weighted sum of objective scores (models.blend); stable on ties."""
    name = "blend"

    def select(self, candidates, scores, keep, weights):
        if candidates.shape[1] == 0:
            return candidates, np.zeros((len(candidates), 0)), {}
        return _keep_best(candidates, _blended(candidates, scores, weights), scores, keep)


SELECTORS["blend"] = BlendSelector


class FusionSelector:
    """Reciprocal-rank fusion of a stage's input order with its ranker's blend: a candidate at
    input rank i (the order it was given in, best first) and blend rank j scores
    input_weight / (offset + i) + (1 - input_weight) / (offset + j). A ranker then refines the
    stage before it instead of overruling it: where the ranker knows less than the source (e.g.
    EASE on MovieLens, bench_retrieval_ml100k) the source's opinion stays in the order. Weight
    0 is the blend's order, 1 the input's; stable on ties. The kept scores are the fused ones."""
    name = "fusion"
    PARAMS = {"input_weight": 0.5, "offset": 20.0}

    def __init__(self, input_weight: float = PARAMS["input_weight"],
                 offset: float = PARAMS["offset"]):
        self.input_weight, self.offset = float(input_weight), float(offset)

    @classmethod
    def problem(cls, params: dict) -> str | None:
        """What is wrong with `params` (funnel.selector_params), or None."""
        unknown = sorted(set(params) - set(cls.PARAMS))
        if unknown:
            return f"funnel.selector_params: {unknown} not a parameter of fusion " \
                   f"(it takes {', '.join(cls.PARAMS)})"
        w, offset = ({**cls.PARAMS, **params}[name] for name in ("input_weight", "offset"))
        if not isinstance(w, (int, float)) or not 0 <= w <= 1:
            return f"funnel.selector_params.input_weight must be in [0, 1], got {w!r}"
        if not isinstance(offset, (int, float)) or not math.isfinite(offset) or offset <= 0:
            return f"funnel.selector_params.offset must be > 0, got {offset!r}"
        return None

    def select(self, candidates, scores, keep, weights):
        n, width = candidates.shape
        if width == 0:
            return candidates, np.zeros((n, 0)), {}
        blended = _blended(candidates, scores, weights)
        blend_rank = np.empty((n, width), np.int64)
        np.put_along_axis(blend_rank, np.argsort(-blended, axis=1, kind="stable"),
                          np.broadcast_to(np.arange(width), (n, width)), axis=1)
        fused = self.input_weight / (self.offset + np.arange(width)) + \
            (1 - self.input_weight) / (self.offset + blend_rank)
        return _keep_best(candidates, np.where(candidates >= 0, fused, -np.inf), scores, keep)


SELECTORS["fusion"] = FusionSelector
