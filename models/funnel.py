"""The funnel (L6): candidate generation -> light ranker -> heavy ranker and blend, per request.

One class holds the stages of one training version and runs them for a batch of users, in raw
ids, as a request would: look up the user's features (unknown users get the workflow's row for
an unseen id and the popularity fallback), retrieve `candidates_k` items with the query tower and
the item index (or popularity), excluding unsafe and already-seen items, keep the light ranker's
top `light_keep`, score every objective with the heavy ranker and blend them (models.blend) into
the final top k. Offline evaluation and the Triton stage models call the same methods, so what is
measured is what is served.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from models.artifacts import read_manifest, require_same_version
from models.blend import blend
from models.candidates import EmbeddingIndex, PopularityCandidates, query_vectors
from models.features import (ITEM_GROUP, REQUEST_DAY, UNKNOWN_USER, USER_KEY_COLUMN, PairTable,
                             load_feature_tables, load_pair_table, recency_feature)

MODEL, FALLBACK = "model", "fallback"
# The version's feature tables: `features` as served (every event, refreshed by export), and
# `features_offline`, what the offline evaluation may know when it ranks for the test split.
FEATURES, OFFLINE_FEATURES = "features", "features_offline"


@dataclass
class FunnelSettings:
    candidates_k: int = 500
    light_keep: int = 100
    k: int = 10
    blend_weights: dict = field(default_factory=lambda: {"click": 1.0})
    index: str = "exact"
    retrieval: str = "two_tower"

    @classmethod
    def from_models_config(cls, cfg) -> "FunnelSettings":
        return cls(cfg.candidates_k, cfg.light_ranker_keep, cfg.eval_k, dict(cfg.blend_weights),
                   cfg.index)


@dataclass
class Recommendations:
    """The funnel's answer for a batch of users; item arrays are raw ids, -1 pads short lists."""
    users: np.ndarray                       # [n] raw user ids
    items: np.ndarray                       # [n, k] final items, best first
    score: np.ndarray                       # [n, k] blended score
    objectives: dict[str, np.ndarray]       # objective -> [n, k] heavy-ranker probabilities
    path: np.ndarray                        # [n] "model" | "fallback"
    version: str
    candidates: np.ndarray | None = None    # [n, candidates_k] after retrieval
    light_kept: np.ndarray | None = None    # [n, light_keep] after the light ranker
    stage_ms: dict[str, float] = field(default_factory=dict)


class Funnel:
    """The stages of one training version (`runs/<run>/models/<version>/`).

    Opening one reads the manifests (checksums verified, every stage required to carry the same
    version, L5.2), the feature tables and the popularity fallback; each TensorFlow model loads
    on first use, so a process that runs one stage (a Triton stage model) loads only its own.
    """

    def __init__(self, version_dir: str | Path, settings: FunnelSettings,
                 unsafe_raw: Sequence[int] = (), seen: dict | None = None,
                 features: str = FEATURES):
        self.root, self.settings = Path(version_dir), settings
        kind = settings.retrieval
        self.manifests = {
            "query_tower": read_manifest(self.root / f"{kind}_query", kind="query_tower"),
            "item_embeddings": read_manifest(self.root / f"{kind}_items", kind="item_embeddings"),
            "features": read_manifest(self.root / features, kind="features"),
            "popularity": read_manifest(self.root / "popularity", kind="popularity"),
            "light_ranker": read_manifest(self.root / "light_ranker", kind="ranker"),
            "heavy_ranker": read_manifest(self.root / "heavy_ranker", kind="ranker")}
        self.version = require_same_version(**self.manifests)
        self.users, self.items = load_feature_tables(self.root / features)  # by raw id
        self.pairs = load_pair_table(self.root / features)
        self.popularity = PopularityCandidates(np.load(self.root / "popularity" / "item_ids.npy"),
                                               np.load(self.root / "popularity" / "counts.npy"),
                                               self.version)
        self.seen = seen or {}
        self._raw_of = pd.Series(self.items.index.to_numpy(),
                                 index=self.items["item_id"].to_numpy())
        unsafe = self.items.index.intersection(pd.Index(unsafe_raw))
        self.unsafe_ids = self.items.loc[unsafe, "item_id"].to_numpy(np.int64)
        self.catalogue_size = int(len(self.items))
        self._loaded: dict = {}

    @classmethod
    def load(cls, version_dir: str | Path, settings: FunnelSettings,
             unsafe_raw: Sequence[int] = (), seen: dict | None = None,
             features: str = FEATURES) -> "Funnel":
        return cls(version_dir, settings, unsafe_raw, seen, features)

    def _lazy(self, name: str, make):
        if name not in self._loaded:
            self._loaded[name] = make()
        return self._loaded[name]

    @property
    def query(self):
        """The query tower's serving signature."""
        import tensorflow as tf

        path = self.root / f"{self.settings.retrieval}_query"
        return self._lazy("query", lambda: tf.saved_model.load(str(path))
                          .signatures["serving_default"])

    @property
    def index(self) -> EmbeddingIndex:
        path = self.root / f"{self.settings.retrieval}_items"
        return self._lazy("index", lambda: EmbeddingIndex.load(path, self.settings.index))

    @property
    def light(self):
        from models.ranking import RankerScorer

        return self._lazy("light", lambda: RankerScorer(self.root / "light_ranker"))

    @property
    def heavy(self):
        from models.ranking import RankerScorer

        return self._lazy("heavy", lambda: RankerScorer(self.root / "heavy_ranker"))

    # ---- the stages ---------------------------------------------------------------------------
    @property
    def as_of_day(self) -> int:
        """The day the feature tables count events up to (requests may not ask earlier)."""
        return int(self.users[REQUEST_DAY].iloc[0]) if REQUEST_DAY in self.users else 0

    def user_rows(self, users_raw: np.ndarray, day: int | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
        """Feature rows of the users (unknown ones get the unseen-id row) and their path, with
        recency as of `day` (days since the epoch; default: the tables' own day)."""
        known = np.isin(users_raw, self.users.index.to_numpy()) & (users_raw != UNKNOWN_USER)
        keys = np.where(known, users_raw, UNKNOWN_USER)
        rows = self.users.loc[keys].reset_index(drop=True)
        if day is not None and REQUEST_DAY in rows:
            day = int(day)
            if day < self.as_of_day:
                raise ValueError(f"request day {day} is before day {self.as_of_day}, up to which "
                                 f"version {self.version}'s feature tables count events; ask "
                                 "at or after it (or refresh the tables: recfunnel features "
                                 "refresh)")
            rows[REQUEST_DAY] = np.int64(day)
            if "user_days_since_last" in rows:
                rows["user_days_since_last"] = recency_feature(day, rows["user_last_day"])
        return rows, np.where(known, MODEL, FALLBACK)

    def exclusions(self, users_raw: np.ndarray, exclude_raw) -> list[np.ndarray]:
        out = []
        for n, u in enumerate(users_raw):
            raw = exclude_raw[n] if exclude_raw is not None else self.seen.get(int(u), ())
            ids = self.items["item_id"].reindex(np.asarray(raw, np.int64)).dropna()
            out.append(np.concatenate([ids.to_numpy(np.int64), self.unsafe_ids]))
        return out

    def retrieve(self, rows: pd.DataFrame, path: np.ndarray, exclude: list[np.ndarray]):
        """[n, candidates_k] categorified candidate ids (-1 pads) by the model or popularity."""
        k = min(self.settings.candidates_k, self.catalogue_size)
        out = np.full((len(rows), k), -1, np.int64)
        model = np.flatnonzero(path == MODEL)
        if len(model):
            vectors = query_vectors(self.query, rows.iloc[model])
            out[model] = self.index.search(vectors, k, [exclude[i] for i in model])[0]
        fallback = np.flatnonzero(path == FALLBACK)
        if len(fallback):
            out[fallback] = self.popularity.search(len(fallback), k,
                                                   [exclude[i] for i in fallback])[0]
        return out

    def rank(self, scorer, rows: pd.DataFrame, candidates: np.ndarray, keep: int,
             weights: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """Scores the candidates, orders each user's by the blend, keeps the top `keep`."""
        return rank_candidates(scorer, rows, self.items, candidates, keep, weights, self.pairs)


    def recommend(self, users_raw, k: int | None = None, exclude_raw=None,
                  keep_stages: bool = False, blend_weights: dict | None = None,
                  day: int | None = None) -> Recommendations:
        """The whole funnel for a batch of raw user ids.

        Args:
          users_raw: [n] raw user ids (unknown ones are served by the fallback path).
          k: final list length (default settings.k), 1 <= k <= catalogue size.
          exclude_raw: per user, raw item ids not to recommend (default: what they have seen).
          keep_stages: also return the candidate and light-ranker lists (for evaluation).
          blend_weights: the final order's objective weights (default settings.blend_weights;
            an experiment arm's variant).
          day: the request's day (days since the epoch) for time-relative features (default:
            the day the feature tables were computed for).
        """
        k = self.settings.k if k is None else int(k)
        if not 1 <= k <= self.catalogue_size:
            raise ValueError(f"k must be between 1 and the catalogue size "
                             f"{self.catalogue_size}, got {k}")
        users_raw = np.asarray(users_raw, np.int64).reshape(-1)
        timings, t = {}, time.perf_counter()
        rows, path = self.user_rows(users_raw, day)
        exclude = self.exclusions(users_raw, exclude_raw)
        timings["features"], t = _ms(t), time.perf_counter()
        candidates = self.retrieve(rows, path, exclude)
        timings["retrieval"], t = _ms(t), time.perf_counter()
        kept, _, _ = self.rank(self.light, rows, candidates, max(self.settings.light_keep, k),
                               self.settings.blend_weights)
        timings["light_ranker"], t = _ms(t), time.perf_counter()
        final, score, objectives = self.rank(self.heavy, rows, kept, k,
                                             blend_weights or self.settings.blend_weights)
        timings["heavy_ranker"] = _ms(t)
        raw = self.raw_ids
        return Recommendations(users_raw, raw(final), score, objectives, path, self.version,
                               raw(candidates) if keep_stages else None,
                               raw(kept) if keep_stages else None, timings)

    def raw_ids(self, ids: np.ndarray) -> np.ndarray:
        """Categorified item ids -> raw ids, keeping -1 padding."""
        ids = np.asarray(ids)
        raw = self._raw_of.reindex(ids.reshape(-1)).fillna(-1).to_numpy(np.int64)
        return np.where(ids >= 0, raw.reshape(ids.shape), -1)


def pair_rows(rows: pd.DataFrame, items: pd.DataFrame, candidates: np.ndarray,
              pairs: PairTable | None = None) -> pd.DataFrame:
    """One ranker input row per (user, candidate): the user's features, the item's, and the
    user's own history with the item's group (`pairs`).

    Args:
      rows: [n] user feature rows (a version's user table rows, `request_day` included).
      items: the version's item table (raw id index, categorified `item_id` column).
      candidates: [n, width] categorified item ids, -1 pads.
      pairs: the version's (user, item group) table, if its data set has item groups.
    """
    n, width = candidates.shape
    flat = candidates.reshape(-1)
    # padding (-1) gets any real item's features; its score is masked by the caller
    safe = np.where(flat >= 0, flat, items["item_id"].iloc[0])
    item_rows = items.set_index("item_id").loc[safe]
    out = pd.concat([rows.loc[np.repeat(np.arange(n), width)].reset_index(drop=True),
                     item_rows.reset_index()], axis=1)
    out["item_id"] = safe
    if REQUEST_DAY in out and "item_days_since_last" in out:   # recency at request time
        out["item_days_since_last"] = recency_feature(out[REQUEST_DAY], out["item_last_day"])
    if pairs is not None and USER_KEY_COLUMN in out and ITEM_GROUP in out:
        out = pd.concat([out, pairs.rows(out[USER_KEY_COLUMN], out[ITEM_GROUP])], axis=1)
    return out


def rank_candidates(scorer, rows: pd.DataFrame, items: pd.DataFrame, candidates: np.ndarray,
                    keep: int, weights: dict, pairs: PairTable | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """A ranking stage: scores [n, width] candidates with `scorer` (a RankerScorer), orders
    each user's by the blend of `weights`, keeps the top `keep`; returns kept ids, blended
    scores and per-objective scores, each [n, keep]."""
    n, width = candidates.shape
    if width == 0:
        return candidates, np.zeros((n, 0)), {}
    scores = scorer.score(pair_rows(rows, items, candidates, pairs))
    blended = blend(scores, weights).reshape(n, width)
    blended = np.where(candidates >= 0, blended, -np.inf)
    keep = min(keep, width)
    order = np.argsort(-blended, axis=1, kind="stable")[:, :keep]
    take = lambda a: np.take_along_axis(a.reshape(n, width), order, axis=1)  # noqa: E731
    return take(candidates), take(blended), {k: take(v) for k, v in scores.items()}

def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
