"""Cascade-consistent ranker data (L6): each ranker also learns from what it will rank.

Served, each ranker orders what the declared funnel (config `funnel:`) hands it: the first one
the sources' top `candidates_k` (whatever the sources are: the two-tower, EASE, a mix), a later
one the ranker before it's kept cut. Logged impressions and negatives sampled from the whole
catalogue are not that distribution: every candidate is already a good guess for its user, and
popularity-sampled negatives teach a ranker to push popular items down. So for each user with
observed rows in a split, `stage_negatives` draws items from what the declared funnel returns
just before the ranker (`stage_before`: the same Funnel that serves, run on the version's
offline tables), none the user has a row with in the split, labels them 0 on every objective,
and computes their features with the saved workflow at one of the user's own moments in that
split, so they are examples like any other (point-in-time features included).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.features import FEATURES, example_rows
from recfunnel.models.funnel import MODEL, Funnel, FunnelSettings
from recfunnel.models.predict import recommend_by_blocks

CANDIDATES = "candidates"      # the stage before a funnel's first ranker: its sources


def stage_before(settings: FunnelSettings, ranker: str) -> tuple[FunnelSettings, str]:
    """The declared funnel cut just before `ranker`, and the name of the stage it ends with.

    Before the first ranker (or a ranker the funnel does not declare, which would rank the
    candidates) the funnel is its sources alone, listing `candidates_k`; before a later ranker
    it is the rankers ahead of it, listing the one before's cut (max(keep, k)).
    """
    names = settings.ranker_names
    at = names.index(ranker) if ranker in names else 0
    if at == 0:
        return replace(settings, rankers=[], k=settings.candidates_k), CANDIDATES
    width = settings.keeps(settings.k)[at - 1]
    return replace(settings, rankers=settings.rankers[:at], k=width), names[at - 1]


class StageView:
    """What a trained version's declared funnel returns offline just before one ranker.

    Users are looked up in the version's `features` tables (the offline evaluation's: the state
    before the test period); the lists come from the serving code (models.funnel.Funnel) for the
    funnel `stage_before` cuts, so training sees the order the ranker will be handed.
    """

    def __init__(self, version_root: Path, features: str, settings: FunnelSettings,
                 ranker: str):
        self.settings, self.stage = stage_before(settings, ranker)
        self.funnel = Funnel(version_root, self.settings, features=features)
        self.width = min(self.settings.k, self.funnel.catalogue_size)

    @staticmethod
    def artifacts(version_root: Path, features: str, settings: FunnelSettings,
                  ranker: str) -> list[str]:
        """The version folders the view opens (to say which are missing before opening)."""
        cut, _ = stage_before(settings, ranker)
        return [features if a == FEATURES else a for a in cut.artifacts(Path(version_root))]

    def lists(self, users_raw: np.ndarray, exclude_raw: list[np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray]:
        """([n, width] raw item ids best first, -1 pads; [n] whether the models know the user)
        for raw user ids, never listing a user's `exclude_raw` items."""
        users_raw = np.asarray(users_raw, np.int64)
        items = np.full((len(users_raw), self.width), -1, np.int64)
        known = np.zeros(len(users_raw), bool)
        for block, got in recommend_by_blocks(self.funnel, users_raw, exclude_raw, k=self.width):
            items[block, :got.items.shape[1]] = got.items
            known[block] = got.path == MODEL
        return items, known


def stage_negatives(frame: pd.DataFrame, view: StageView, per_row: float, dataset_dir: Path,
                    seed: int, exclude_frames: tuple[pd.DataFrame, ...] = ()) -> pd.DataFrame:
    """Negative examples for the ranker `view` stands before, in `frame`'s columns.

    Each user with observed (not sampled) rows in `frame` gets round(per_row x those rows)
    items drawn uniformly from what the view lists for them, excluding every item the user has
    a row with in `frame` or positives in `exclude_frames`, each anchored at the timestamp of
    one of the user's observed rows; the workflow computes their features at that time. Users
    the models do not know (served by the popularity fallback) get none.
    """
    if per_row <= 0:
        return frame.iloc[:0]
    observed = frame[frame["sampled_negative"] == 0]
    users = np.unique(observed["user_id_raw"].to_numpy(np.int64))
    touched = pd.concat([frame[["user_id_raw", "item_id_raw"]],
                         *[f.loc[f["click"] == 1, ["user_id_raw", "item_id_raw"]]
                           for f in exclude_frames]])
    by_user = touched.groupby("user_id_raw")["item_id_raw"].apply(np.asarray)
    exclude = [by_user.get(u, np.empty(0, np.int64)) for u in users]
    lists, known = view.lists(users, exclude)
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
    out = example_rows(dataset_dir, np.concatenate(picked_user), np.concatenate(picked_item),
                       np.concatenate(picked_time))
    out["sampled_negative"] = np.int8(1)
    out["split"] = frame["split"].iloc[0] if len(frame) else 0
    return out[[c for c in frame.columns if c in out.columns]]


def cascade_mix(frame: pd.DataFrame, negatives: pd.DataFrame) -> dict:
    """How the ranker's rows are made up: logged, catalogue-sampled, cascade-drawn."""
    sampled = int((frame["sampled_negative"] == 1).sum())
    return {"logged": int(len(frame) - sampled), "sampled_negatives": sampled,
            "cascade_negatives": int(len(negatives))}

