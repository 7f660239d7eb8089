"""Cascade-consistent ranker data (L6): each ranker also learns from what it will rank.

Served, the light ranker orders the candidate generator's top `candidates_k` for a user and the
heavy ranker the light ranker's top `keep` (config funnel.rankers). Logged impressions and negatives sampled
from the whole catalogue are not that distribution: every candidate is already a good guess for
its user, and popularity-sampled negatives teach a ranker to push popular items down. So for each
user with observed rows in a split, `stage_negatives` draws items from what the stage before
returns for that user (none the user has a row with in the split), labels them 0 on every
objective, and computes their features with the saved workflow at one of the user's own moments
in that split, so they are examples like any other (point-in-time features included).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.candidates import load_retrieval, query_vectors
from recfunnel.models.features import example_rows, load_feature_tables, load_pair_table
from recfunnel.models.funnel import rank_candidates

CASCADE_STAGES = ("candidates", "light_ranker")   # whose output a ranker's negatives come from


@dataclass
class StageView:
    """What a trained version's first stages return for given users, offline.

    Users are looked up in a feature table (the version's offline evaluation tables: the state
    before the test period); candidates come from the configured retrieval model and index,
    excluding each user's `exclude` items, and the light ranker keeps its top `light_keep`.
    """
    version_root: Path
    features: str
    retrieval: str
    index: str
    candidates_k: int
    light_keep: int
    blend_weights: dict

    def __post_init__(self):
        self.users, self.items = load_feature_tables(self.version_root / self.features)
        self.pairs = load_pair_table(self.version_root / self.features)
        self._query, self._index, _ = load_retrieval(self.version_root / f"{self.retrieval}_query",
                                                     self.version_root / f"{self.retrieval}_items",
                                                     self.index)
        self._raw_of = pd.Series(self.items.index.to_numpy(), index=self.items["item_id"].to_numpy())

    def user_rows(self, users_raw: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        known = np.isin(users_raw, self.users.index.to_numpy())
        rows = self.users.reindex(np.where(known, users_raw, self.users.index[0]))
        return rows.reset_index(drop=True), known

    def candidates(self, rows: pd.DataFrame, exclude: list[np.ndarray]) -> np.ndarray:
        """[n, candidates_k] categorified ids, best first, -1 pads."""
        vectors = query_vectors(self._query, rows)
        k = min(self.candidates_k, len(self._index.item_ids))
        return self._index.search(vectors, k, exclude)[0]

    def light_kept(self, rows: pd.DataFrame, candidates: np.ndarray, scorer) -> np.ndarray:
        """[n, light_keep] the light ranker's best of each user's candidates."""
        kept, _, _ = rank_candidates(scorer, rows, self.items, candidates, self.light_keep,
                                     self.blend_weights, self.pairs)
        return kept


def stage_negatives(frame: pd.DataFrame, view: StageView, stage: str, per_row: float,
                    dataset_dir: Path, seed: int, light_scorer=None,
                    exclude_frames: tuple[pd.DataFrame, ...] = ()) -> pd.DataFrame:
    """Negative examples for the ranker after `stage` ('candidates': the light ranker's input;
    'light_ranker': the heavy ranker's), in `frame`'s columns.

    Each user with observed (not sampled) rows in `frame` gets round(per_row x those rows)
    items drawn uniformly from what `stage` returns for them, excluding every item the user has
    a row with in `frame` or positives in `exclude_frames`, each anchored at the timestamp of
    one of the user's observed rows; the workflow computes their features at that time.
    """
    if stage not in CASCADE_STAGES:
        raise ValueError(f"cascade stage must be one of {CASCADE_STAGES}, got {stage!r}")
    if per_row <= 0:
        return frame.iloc[:0]
    observed = frame[frame["sampled_negative"] == 0]
    users = np.unique(observed["user_id_raw"].to_numpy(np.int64))
    rows, known = view.user_rows(users)
    touched = pd.concat([frame[["user_id_raw", "item_id"]],
                         *[f.loc[f["click"] == 1, ["user_id_raw", "item_id"]]
                           for f in exclude_frames]])
    by_user = touched.groupby("user_id_raw")["item_id"].apply(np.asarray)
    exclude = [by_user.get(u, np.empty(0, np.int64)) for u in users]
    lists = view.candidates(rows, exclude)
    if stage == "light_ranker":
        lists = view.light_kept(rows, lists, light_scorer)
    anchors = observed.groupby("user_id_raw")
    picked_user, picked_item, picked_time = [], [], []
    for n, user in enumerate(users):
        if not known[n]:
            continue
        mine = anchors.get_group(user)
        want = int(round(per_row * len(mine)))
        pool = lists[n][lists[n] >= 0]
        if want == 0 or len(pool) == 0:
            continue
        rng = np.random.default_rng([seed, int(user)])
        items = rng.choice(pool, size=min(want, len(pool)), replace=False)
        times = mine["timestamp"].to_numpy()[rng.integers(0, len(mine), len(items))]
        picked_user.append(np.full(len(items), user))
        picked_item.append(items)
        picked_time.append(times)
    if not picked_user:
        return frame.iloc[:0]
    item_raw = view._raw_of.reindex(np.concatenate(picked_item)).to_numpy(np.int64)
    out = example_rows(dataset_dir, np.concatenate(picked_user), item_raw,
                       np.concatenate(picked_time))
    out["sampled_negative"] = np.int8(1)
    out["split"] = frame["split"].iloc[0] if len(frame) else 0
    return out[[c for c in frame.columns if c in out.columns]]


def cascade_mix(frame: pd.DataFrame, negatives: pd.DataFrame) -> dict:
    """How the ranker's rows are made up: logged, catalogue-sampled, cascade-drawn."""
    sampled = int((frame["sampled_negative"] == 1).sum())
    return {"logged": int(len(frame) - sampled), "sampled_negatives": sampled,
            "cascade_negatives": int(len(negatives))}

