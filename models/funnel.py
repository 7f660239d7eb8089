"""The funnel (L6), as declared: sources -> filters -> rankers, in order -> the final top k.

`FunnelSettings` is the declaration (config `funnel:`): the candidate sources with their share
of `candidates_k`, the filters, the rankers in order with how many items each keeps, and the
blend of objectives that orders each ranker's cut. `Funnel` holds one training version's
components (models.components, each opened by its registered name) and walks that one
declaration for a batch of users, in raw ids, as a request would: look up the user's features
(unknown users get the workflow's row for an unseen id and the popularity fallback), collect
the filters' exclusions, fill `candidates_k` from the sources (each its share, none repeating
another's item; the popularity fallback fills what is left, e.g. for unknown users), then let
each ranker keep its best; the last one's blend gives the final top k. Offline evaluation, the
exporter and the Triton stage models walk the same declaration, so what is measured is what is
served.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from recfunnel.models.artifacts import read_manifest, require_same_version
from recfunnel.models.components import (FILTERS, POPULARITY, RANKERS, SELECTORS, SOURCES, Request,
                               lookup)
from recfunnel.models.features import (FEATURES, ITEM_GROUP, ITEM_KEY, OFFLINE_FEATURES,
                                       REQUEST_DAY, UNKNOWN_USER, USER_KEY, USER_KEY_COLUMN,
                                       Columns, FeatureTable, PairTable, find_sorted,
                                       load_feature_tables, load_pair_table, recency_feature)
from recfunnel.config import INDEX_KINDS, index_params_problem
from recfunnel.errors import ConfigError

MODEL, FALLBACK = "model", "fallback"


@dataclass
class FunnelSettings:
    """The declared funnel (config `funnel:` and `models.eval_k`).

    sources: [{name, share}], shares > 0 summing to 1, each filling that share of candidates_k.
    filters: names of the filters whose items no list may hold.
    rankers: [{name, keep}] in order; each keeps its best max(keep, k); the last keeps k
      (its keep, if given, is unused). No rankers: the candidates' first k are the answer.
    blend: {objective: weight} ordering every ranker's cut (an experiment arm may send its own
      for the last ranker).
    selector, selector_params: how each ranker orders its cut from the blend (SELECTORS: blend;
      fusion, the blend's order fused with the stage's input order, {input_weight, offset}).
    """
    sources: list = field(default_factory=lambda: [{"name": "two_tower", "share": 1.0}])
    filters: list = field(default_factory=lambda: ["seen", "unsafe"])
    rankers: list = field(default_factory=lambda: [{"name": "light_ranker", "keep": 100},
                                                   {"name": "heavy_ranker"}])
    blend: dict = field(default_factory=lambda: {"click": 1.0})
    candidates_k: int = 500
    k: int = 10
    index: str = "exact"
    index_params: dict = field(default_factory=dict)
    selector: str = "blend"
    selector_params: dict = field(default_factory=dict)   # e.g. fusion's {input_weight: 0.7}

    def __post_init__(self):
        self.sources = [{"name": s, "share": 1.0} if isinstance(s, str) else dict(s)
                        for s in self.sources]
        self.rankers = [{"name": r} if isinstance(r, str) else dict(r) for r in self.rankers]
        self.filters, self.blend = list(self.filters), dict(self.blend)
        problems = self.problems()
        if problems:
            raise FunnelSpecError("funnel: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with the declaration, each naming the setting."""
        out = []
        if not self.sources:
            out.append("sources is empty: name at least one candidate source")
        for kind, registry, names in (("source", SOURCES, [s.get("name") for s in self.sources]),
                                      ("filter", FILTERS, self.filters),
                                      ("ranker", RANKERS, [r.get("name") for r in self.rankers])):
            for name in names:
                if name not in registry:
                    out.append(f"unknown {kind} {name!r} (registered: "
                               f"{', '.join(sorted(registry))})")
            if len(set(map(str, names))) != len(names):
                out.append(f"a {kind} is named twice in {names}")
        shares = [s.get("share", 1.0) for s in self.sources]
        if any(not isinstance(v, (int, float)) or not 0 < v <= 1 for v in shares):
            out.append(f"source shares must be in (0, 1], got {shares}")
        elif not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
            out.append(f"source shares must sum to 1, got {shares} (sum {sum(shares):g})")
        for r in self.rankers[:-1]:
            if not isinstance(r.get("keep"), int) or r["keep"] < 1:
                out.append(f"ranker {r.get('name')!r} needs keep >= 1 (items it passes on), "
                           f"got {r.get('keep')!r}")
        if not self.blend or any(not isinstance(w, (int, float)) or not math.isfinite(w)
                                 or w < 0 for w in self.blend.values()):
            out.append(f"blend must map objectives to finite weights >= 0, got {self.blend}")
        for name, value in (("candidates_k", self.candidates_k), ("k", self.k)):
            if not isinstance(value, int) or value < 1:
                out.append(f"{name} must be an integer >= 1, got {value!r}")
        if self.index not in INDEX_KINDS:
            out.append(f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}")
        elif problem := index_params_problem(self.index, self.index_params):
            out.append(problem)
        if self.selector not in SELECTORS:
            out.append(f"unknown selector {self.selector!r} (registered: {', '.join(SELECTORS)})")
        elif hasattr(SELECTORS[self.selector], "problem"):
            if problem := SELECTORS[self.selector].problem(self.selector_params):
                out.append(problem)
        elif self.selector_params:
            out.append(f"selector {self.selector!r} takes no selector_params, got "
                       f"{self.selector_params}")
        return out

    @classmethod
    def from_config(cls, cfg) -> "FunnelSettings":
        """From a Config: its `funnel` section, with k = models.eval_k."""
        f = cfg.funnel
        return cls(list(f.sources), list(f.filters), list(f.rankers), dict(f.blend),
                   f.candidates_k, cfg.models.eval_k, f.index, dict(f.index_params),
                   f.selector, dict(f.selector_params))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ranker_names(self) -> list[str]:
        return [r["name"] for r in self.rankers]

    def keeps(self, k: int) -> list[int]:
        """What each ranker keeps for a list of k: max(keep, k), the last one k."""
        return [k if i == len(self.rankers) - 1 else max(int(r["keep"]), k)
                for i, r in enumerate(self.rankers)]

    def keep_of(self, ranker: str, default: int | None = None) -> int | None:
        """The declared keep of `ranker` (None or `default` when it is not declared)."""
        return next((r.get("keep", default) for r in self.rankers if r["name"] == ranker),
                    default)

    @property
    def learned_source(self) -> str | None:
        """The first source with a query tower (what the cascade trains rankers on, and whose
        score the rankers may take as a feature)."""
        return next((s["name"] for s in self.sources
                     if SOURCES[s["name"]].kind == "embedding"), None)

    def quotas(self, k: int) -> list[int]:
        """Each source's number of the k candidates (shares, rounded; the first takes the rest)."""
        counts = [int(math.floor(s.get("share", 1.0) * k)) for s in self.sources]
        counts[0] += k - sum(counts)
        return counts

    def artifacts(self, root: Path) -> list[str]:
        """The version folders this funnel opens, in a stable order."""
        out = [FEATURES, POPULARITY]
        for s in self.sources:
            out += SOURCES[s["name"]].artifacts(root)
        for r in self.rankers:
            out += RANKERS[r["name"]].artifacts(root)
        return list(dict.fromkeys(out))


class FunnelSpecError(ConfigError):
    """The declared funnel names something unknown or sizes it wrongly (exit 2, one line)."""


@dataclass
class Recommendations:
    """The funnel's answer for a batch of users; item arrays are raw ids, -1 pads short lists."""
    users: np.ndarray                       # [n] raw user ids
    items: np.ndarray                       # [n, k] final items, best first
    score: np.ndarray                       # [n, k] blended score
    objectives: dict[str, np.ndarray]       # objective -> [n, k] the last ranker's scores
    path: np.ndarray                        # [n] "model" | "fallback"
    version: str
    candidates: np.ndarray | None = None    # [n, candidates_k] after the sources
    kept: dict[str, np.ndarray] = field(default_factory=dict)   # ranker -> its cut
    stage_ms: dict[str, float] = field(default_factory=dict)


class Funnel:
    """The declared stages of one training version (`runs/<run>/models/<version>/`).

    Opening one reads the manifests of every folder the declaration needs (checksums verified,
    all required to carry the same version, L5.2), the feature tables and the filters; each
    TensorFlow model loads on first use, so a process that runs one stage (a Triton stage
    model) loads only its own.

    The request path touches no pandas: the feature tables are held as arrays (FeatureTable:
    users by raw id, items by categorified id), the users' seen items as one CSR built here,
    and ranker inputs are gathered from them (`pair_rows`). `users` and `items` stay readable
    as DataFrames (raw id index) for offline callers.

    seen: each raw user id's raw item ids that the `seen` filter removes, as a dict or a frame
      of (user_id_raw, item_id_raw) rows.
    """

    def __init__(self, version_dir: str | Path, settings: FunnelSettings,
                 unsafe_raw: Sequence[int] = (), seen: dict | pd.DataFrame | None = None,
                 features: str = FEATURES):
        self.root, self.settings = Path(version_dir), settings
        folders = [features if f == FEATURES else f for f in settings.artifacts(self.root)]
        self.manifests = {f: read_manifest(self.root / f) for f in folders}
        self.version = require_same_version(**self.manifests)
        self.users, self.items = load_feature_tables(self.root / features)  # by raw id
        self.pairs = load_pair_table(self.root / features)
        self.user_table = FeatureTable(self.users)
        self.item_table = FeatureTable(self.items, key="item_id")   # by categorified id
        self._unknown_row = int(self.user_table.find([UNKNOWN_USER])[0][0])
        self._raw_keys = self.items.index.to_numpy(np.int64)         # raw id -> categorified
        order = np.argsort(self._raw_keys, kind="stable")
        self._raw_keys = self._raw_keys[order]
        self._ids_of_raw = self.items["item_id"].to_numpy(np.int64)[order]
        ids = self.items["item_id"].to_numpy(np.int64)                # categorified -> raw
        self._raw_of = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, np.int64)
        self._raw_of[ids] = self.items.index.to_numpy(np.int64)
        self.unsafe_raw = np.asarray(unsafe_raw, np.int64)
        self._seen = self._seen_csr(seen)
        self.catalogue_size = int(len(self.items))
        open_ = lambda registry, kind, name: lookup(registry, kind, name).open(  # noqa: E731
            self.root, settings, self)
        self.sources = [open_(SOURCES, "source", s["name"]) for s in settings.sources]
        self.fallback = next((s for s in self.sources if s.name == POPULARITY), None) or \
            open_(SOURCES, "source", POPULARITY)
        self.filters = [open_(FILTERS, "filter", name) for name in settings.filters]
        self.selector = SELECTORS[settings.selector](**settings.selector_params)
        self._rankers: dict = {}

    @classmethod
    def load(cls, version_dir: str | Path, settings: FunnelSettings,
             unsafe_raw: Sequence[int] = (), seen: dict | None = None,
             features: str = FEATURES) -> "Funnel":
        return cls(version_dir, settings, unsafe_raw, seen, features)

    def ranker(self, name: str):
        """The declared ranker `name`, loaded on first use."""
        if name not in self._rankers:
            if name not in self.settings.ranker_names:
                raise KeyError(f"ranker {name!r} is not in this funnel "
                               f"({', '.join(self.settings.ranker_names) or 'no rankers'})")
            self._rankers[name] = lookup(RANKERS, "ranker", name).open(self.root, self.settings,
                                                                     self)
        return self._rankers[name]

    @property
    def objectives(self) -> list[str]:
        """The objectives of the final list (the last ranker's), from its manifest."""
        if not self.settings.rankers:
            return []
        name = self.settings.rankers[-1]["name"]
        return list(self.manifests[name]["config"]["objectives"])

    # ---- the stages ---------------------------------------------------------------------------
    @property
    def as_of_day(self) -> int:
        """The day the feature tables count events up to (requests may not ask earlier)."""
        return int(self.users[REQUEST_DAY].iloc[0]) if REQUEST_DAY in self.users else 0

    def user_rows(self, users_raw: np.ndarray, day: int | None = None
                  ) -> tuple[Columns, np.ndarray]:
        """Feature rows of the users (unknown ones get the unseen-id row) and their path, with
        recency as of `day` (days since the epoch; default: the tables' own day)."""
        users_raw = np.asarray(users_raw, np.int64).reshape(-1)
        at, found = self.user_table.find(users_raw)
        known = found & (users_raw != UNKNOWN_USER)
        rows = self.user_table.rows(np.where(known, at, self._unknown_row))
        if day is not None and REQUEST_DAY in rows:
            day = int(day)
            if day < self.as_of_day:
                raise ValueError(f"request day {day} is before day {self.as_of_day}, up to which "
                                 f"version {self.version}'s feature tables count events; ask "
                                 "at or after it (or refresh the tables: recfunnel features "
                                 "refresh)")
            rows[REQUEST_DAY] = np.full(len(rows), day, np.int64)
            if "user_days_since_last" in rows:
                rows["user_days_since_last"] = recency_feature(day, rows["user_last_day"])
        return rows, np.where(known, MODEL, FALLBACK)

    def request(self, users_raw: np.ndarray, rows, path: np.ndarray,
                exclude_raw=None) -> Request:
        return Request(np.asarray(users_raw, np.int64), Columns.of(rows),
                       np.asarray(path) == MODEL, exclude_raw)

    def item_ids(self, raw) -> np.ndarray:
        """Raw item ids -> the version's categorified ids (ids it does not know are dropped)."""
        at, found = find_sorted(self._raw_keys, raw)
        return self._ids_of_raw[at[found]]

    def _seen_csr(self, seen) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(users, offsets, ids): sorted raw user ids, and user i's categorified seen ids at
        ids[offsets[i]:offsets[i + 1]], in the order given."""
        if seen is None or len(seen) == 0:
            return np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64)
        if isinstance(seen, pd.DataFrame):
            user_raw = seen[USER_KEY].to_numpy(np.int64)
            item_raw = seen[ITEM_KEY].to_numpy(np.int64)
        else:
            lists = [np.asarray(v, np.int64).reshape(-1) for v in seen.values()]
            user_raw = np.repeat(np.fromiter(seen, np.int64, len(seen)), [len(v) for v in lists])
            item_raw = np.concatenate([np.empty(0, np.int64), *lists])
        at, known = find_sorted(self._raw_keys, item_raw)
        user_raw, ids = user_raw[known], self._ids_of_raw[at[known]]
        order = np.argsort(user_raw, kind="stable")
        user_raw, ids = user_raw[order], ids[order]
        users, counts = np.unique(user_raw, return_counts=True)
        return users, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ids

    def seen_items(self, users_raw) -> list[np.ndarray]:
        """Per raw user id, the categorified ids the export recorded as seen."""
        users, offsets, ids = self._seen
        at, has = find_sorted(users, users_raw)
        return [ids[offsets[a]:offsets[a + 1]] if h else ids[:0] for a, h in zip(at, has)]

    def user_items(self, request: Request) -> list[np.ndarray]:
        """Per user, the categorified ids of what they have: the caller's exclusions when the
        request names them, else what the export recorded as seen."""
        if request.exclude_raw is not None:
            return [self.item_ids(raw) for raw in request.exclude_raw]
        return self.seen_items(request.users_raw)

    def exclusions(self, request: Request) -> list[np.ndarray]:
        """Per user, the union of the declared filters' items."""
        parts = [f.excluded(request) for f in self.filters]
        empty = np.empty(0, np.int64)
        return [np.concatenate([empty, *(p[n] for p in parts)])
                for n in range(len(request.users_raw))]

    def retrieve(self, request: Request, exclude: list[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """[n, candidates_k] categorified candidate ids (-1 pads) and their sources' scores:
        each source its share, none repeating an earlier one's item, then the popularity
        fallback fills what is left (users the models do not know, a source short of items)."""
        k = min(self.settings.candidates_k, self.catalogue_size)
        n = len(request.users_raw)
        ids, scores = np.full((n, k), -1, np.int64), np.full((n, k), -np.inf, np.float64)
        filled = np.zeros(n, np.int64)

        def add(rows, source, width):
            taken = [np.concatenate([exclude[i], ids[i, :filled[i]]]) for i in rows]
            found, found_scores = source.candidates(request.subset(rows), width, taken)
            for j, i in enumerate(rows):
                valid = found[j] >= 0
                got = found[j][valid][:k - filled[i]]
                ids[i, filled[i]:filled[i] + len(got)] = got
                scores[i, filled[i]:filled[i] + len(got)] = found_scores[j][valid][:len(got)]
                filled[i] += len(got)

        everyone = np.arange(n)
        for source, quota in zip(self.sources, self.settings.quotas(k)):
            if quota > 0:
                add(everyone, source, quota)
        short = np.flatnonzero(filled < k)
        if len(short):
            add(short, self.fallback, k)
        return ids, scores

    def rank(self, ranker: str, rows, candidates: np.ndarray, keep: int,
             weights: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """One ranking stage: scores the candidates with `ranker`, orders each user's by the
        blend of `weights`, keeps the top `keep`; kept ids, blended and per-objective scores."""
        return rank_candidates(self.ranker(ranker), rows, self.item_table, candidates, keep,
                               weights, self.pairs, self.selector)

    def recommend(self, users_raw, k: int | None = None, exclude_raw=None,
                  keep_stages: bool = False, blend_weights: dict | None = None,
                  day: int | None = None) -> Recommendations:
        """The whole declared funnel for a batch of raw user ids.

        Args:
          users_raw: [n] raw user ids (unknown ones are served by the fallback path).
          k: final list length (default settings.k), 1 <= k <= catalogue size.
          exclude_raw: per user, raw item ids not to recommend (replaces the `seen` filter's).
          keep_stages: also return the candidates and each ranker's cut (for evaluation).
          blend_weights: the last ranker's objective weights (default settings.blend; an
            experiment arm's variant).
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
        request = self.request(users_raw, rows, path, exclude_raw)
        exclude = self.exclusions(request)
        timings["features"], t = _ms(t), time.perf_counter()
        candidates, candidate_scores = self.retrieve(request, exclude)
        timings["retrieval"], t = _ms(t), time.perf_counter()
        final, score, objectives = candidates[:, :k], candidate_scores[:, :k], {}
        kept = {}
        names, keeps = self.settings.ranker_names, self.settings.keeps(k)
        for i, (name, keep) in enumerate(zip(names, keeps)):
            last = i == len(names) - 1
            weights = (blend_weights or self.settings.blend) if last else self.settings.blend
            final, score, objectives = self.rank(name, rows, candidates if i == 0 else final,
                                                 keep, weights)
            kept[name] = final
            timings[name], t = _ms(t), time.perf_counter()
        raw = self.raw_ids
        return Recommendations(users_raw, raw(final), score, objectives, path, self.version,
                               raw(candidates) if keep_stages else None,
                               {n: raw(v) for n, v in kept.items()} if keep_stages else {},
                               timings)

    def raw_ids(self, ids: np.ndarray) -> np.ndarray:
        """Categorified item ids -> raw ids, keeping -1 padding."""
        ids = np.asarray(ids, np.int64)
        inside = (ids >= 0) & (ids < len(self._raw_of))
        return np.where(inside, self._raw_of[np.where(inside, ids, 0)], -1) if len(self._raw_of) \
            else np.full(ids.shape, -1, np.int64)


def pair_rows(rows, items, candidates: np.ndarray, pairs: PairTable | None = None) -> Columns:
    """One ranker input row per (user, candidate): the user's features, the item's, and the
    user's own history with the item's group (`pairs`), gathered from arrays.

    Args:
      rows: [n] user feature rows (Columns or a DataFrame of a version's user table rows,
        `request_day` included).
      items: the version's item table: a FeatureTable keyed by categorified `item_id` (the
        Funnel's `item_table`), or the item frame (raw id index, `item_id` column).
      candidates: [n, width] categorified item ids, -1 pads.
      pairs: the version's (user, item group) table, if its data set has item groups.
    """
    rows = Columns.of(rows)
    if not isinstance(items, FeatureTable):
        items = FeatureTable(items, key="item_id")
    n, width = candidates.shape
    flat = np.asarray(candidates, np.int64).reshape(-1)
    # padding (-1) gets any real item's features; its score is masked by the caller
    safe = np.where(flat >= 0, flat, items.keys[0])
    at, found = items.find(safe)
    if not found.all():
        raise KeyError(f"candidate ids {np.unique(safe[~found])[:5].tolist()} are not in the "
                       "version's item table")
    out = rows.take(np.repeat(np.arange(n), width))
    out.update(items.rows(at))
    out["item_id"] = safe
    if REQUEST_DAY in out and "item_days_since_last" in out:   # recency at request time
        out["item_days_since_last"] = recency_feature(out[REQUEST_DAY], out["item_last_day"])
    if pairs is not None and USER_KEY_COLUMN in out and ITEM_GROUP in out:
        out.update(pairs.rows(out[USER_KEY_COLUMN], out[ITEM_GROUP]))
    return out


def rank_candidates(scorer, rows, items, candidates: np.ndarray,
                    keep: int, weights: dict, pairs: PairTable | None = None, selector=None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """A ranking stage (a Funnel's, or the cascade's training view): scores [n, width]
    candidates with `scorer`, keeps each user's top `keep` by `selector` (default the blend
    of `weights`). `rows` and `items` as pair_rows takes them."""
    if candidates.shape[1] == 0:
        return candidates, np.zeros((len(candidates), 0)), {}
    scores = scorer.score(pair_rows(rows, items, candidates, pairs))
    return (selector or SELECTORS["blend"]()).select(candidates, scores, keep, weights)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
