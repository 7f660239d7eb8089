"""What offline evaluation reads (L4, L6): every model's output on the test split, in raw ids.

`write_predictions` runs the trained models of one version over the test users and rows and
writes plain files, so `recfunnel.evaluation` (numpy/pandas only) can score any model,
including peers, without TensorFlow:

  users.parquet       test users with a positive: raw id, path (model | fallback)
  relevant.parquet    their test positives (user_id_raw, item_id_raw)
  lists.npz           per list name, [n_users, width] raw item ids (-1 pads): each retrieval
                      model's top candidates_k, and the funnel's candidates, each ranker's
                      cut and the final top k (`funnel`)
  stages.json         the funnel's stages in order, each with the list it wrote
  rankers.parquet     test rows with their labels and each ranker's score per objective
  train_items.parquet training positives (user_id_raw, item_id_raw): popularity and activity
  positive_ranks.parquet  per candidate generator, the rank of every test positive in its full
                      ranking of the catalogue (for popularity-opportunity bias; 1 = first)

Items a user had in training or validation are excluded from every list (full ranking). The
lists come from the version's offline feature tables (`features_offline/`): the state before
the test period, no test event counted, as a server would have known it then.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.candidates import query_vectors
from recfunnel.models.components import POPULARITY, SOURCES, STAGES_FILE, stage_lists
from recfunnel.models.data import Splits
from recfunnel.models.funnel import MODEL, OFFLINE_FEATURES, Funnel, FunnelSettings

RETRIEVAL_LISTS = ("two_tower", "mf", "ease", POPULARITY)   # each when the version has it
BLOCK_USERS = 2048      # users per block of predictions: bounds the rankers' rows and score grids


def recommend_by_blocks(funnel: Funnel, users_raw: np.ndarray, exclude_raw: list, **kwargs):
    """`funnel.recommend` over blocks of BLOCK_USERS users, each `exclude_raw` with its own:
    yields (the block's slice of `users_raw`, its Recommendations). The rankers' rows (users x
    candidates) of one block at a time stay bounded at any scale."""
    for lo in range(0, len(users_raw), BLOCK_USERS):
        block = slice(lo, lo + BLOCK_USERS)
        yield block, funnel.recommend(users_raw[block], exclude_raw=exclude_raw[block], **kwargs)


def write_predictions(dataset_dir: Path, version_dir: Path, out_dir: Path, cfg,
                      funnel_settings: FunnelSettings, progress: bool = True) -> dict:
    """The test split's predictions of the version at `version_dir` under the declared funnel
    `funnel_settings` (its lists, stage by stage) and of every candidate source alone."""
    from tqdm.auto import tqdm

    splits = Splits.load(dataset_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label = cfg.retrieval_positive
    seen = pd.concat([splits.positives(f, label)[["user_id_raw", "item_id_raw"]]
                      for f in (splits.train, splits.valid)])
    # relevant = test positives new to the user: an item already had in training or validation
    # is excluded from every ranking, so it cannot count as a miss either
    test_pos = splits.positives(splits.test, label)[["user_id_raw", "item_id_raw"]]
    test_pos = test_pos.merge(seen.drop_duplicates().assign(_seen=True), how="left",
                              on=["user_id_raw", "item_id_raw"])
    repeats = int(test_pos["_seen"].notna().sum())
    test_pos = test_pos[test_pos["_seen"].isna()].drop(columns="_seen")
    users = np.unique(test_pos["user_id_raw"].to_numpy())
    exclude = splits.seen_items(label, (splits.train, splits.valid), users,
                                "user_id_raw", "item_id_raw")

    settings = funnel_settings
    # the offline tables: what the funnel knew before the test period, no test event counted
    features = OFFLINE_FEATURES if (Path(version_dir) / OFFLINE_FEATURES).is_dir() else "features"
    funnel = Funnel.load(version_dir, settings, features=features)
    sources = [s for s in RETRIEVAL_LISTS if all((Path(version_dir) / f).is_dir()
                                                 for f in SOURCES[s].artifacts(version_dir))]
    steps = tqdm(total=len(sources) + 2, desc="predictions", unit="model", disable=not progress)
    stage_ms, parts = {}, []
    for _, part in recommend_by_blocks(funnel, users, exclude, keep_stages=True):
        parts.append(part)
        for stage, ms in part.stage_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
    stages = stage_lists(settings.ranker_names)
    lists = {"funnel": np.concatenate([p.items for p in parts]),
             "funnel_candidates": np.concatenate([p.candidates for p in parts]),
             **{stages[name]: np.concatenate([p.kept[name] for p in parts])
                for name in settings.ranker_names}}
    steps.update()
    rows, path = funnel.user_rows(users)
    request = funnel.request(users, rows, path, exclude)
    excluded = funnel.exclusions(request)
    k = min(settings.candidates_k, funnel.catalogue_size)
    relevant = test_pos.groupby("user_id_raw")["item_id_raw"].apply(np.asarray)
    relevant_raw = [np.unique(relevant[u]) for u in users]
    relevant_ids = [funnel.items["item_id"].reindex(r).fillna(-1).to_numpy(np.int64)
                    for r in relevant_raw]
    width = int(funnel.items["item_id"].max()) + 1
    ranks = []
    for kind in sources:
        # each list by the registered source itself, for every user (unknown ones included);
        # the full-catalogue scores only ever exist for one block of users at a time
        source = SOURCES[kind].open(version_dir, settings, funnel)
        if kind == "ease":
            ids = source.candidates(request, k, excluded)[0]
            had = funnel.user_items(request)

            def block(lo, hi, source=source, had=had):
                dense = np.full((hi - lo, width), -np.inf, np.float32)
                for row in range(lo, hi):
                    dense[row - lo, :len(source.fitted)] = source.scores(had[row])
                return dense
        elif kind == POPULARITY:
            ids = source.candidates(request, k, excluded)[0]
            counts = np.zeros(width)
            counts[source.model.item_ids] = source.model.counts

            def block(lo, hi, counts=counts):
                return np.broadcast_to(counts, (hi - lo, width))
        else:
            vectors = query_vectors(source.query, rows)
            ids = source.index.search(vectors, k, excluded)[0]
            # in float64, then rounded to float32: a float32 product's last bits depend on the
            # block's row count (BLAS kernels), which reorders items of equal vectors (items
            # embedded by the same attributes) and so moves a positive's rank with BLOCK_USERS
            queries = vectors.astype(np.float64)
            catalogue = source.index.vectors.T.astype(np.float64)

            def block(lo, hi, item_ids=source.index.item_ids, queries=queries,
                      catalogue=catalogue):
                dense = np.full((hi - lo, width), -np.inf, np.float32)
                dense[:, item_ids] = (queries[lo:hi] @ catalogue).astype(np.float32)
                return dense
        ranks.append(full_ranks(kind, block, len(users), excluded, relevant_ids, relevant_raw))
        lists[kind] = funnel.raw_ids(ids)
        steps.update()
    np.savez_compressed(out_dir / "lists.npz", **lists)
    (out_dir / STAGES_FILE).write_text(json.dumps(
        [["candidates", "funnel_candidates"], *([n, stages[n]] for n in settings.ranker_names)]))
    pd.concat(ranks, ignore_index=True).to_parquet(out_dir / "positive_ranks.parquet", index=False)
    pd.DataFrame({"user_id_raw": users, "path": path}).to_parquet(out_dir / "users.parquet")
    test_pos.to_parquet(out_dir / "relevant.parquet", index=False)
    splits.positives(splits.train, label)[["user_id_raw", "item_id_raw"]].to_parquet(
        out_dir / "train_items.parquet", index=False)

    test = splits.test
    scored = test[["user_id_raw", "item_id_raw", "sampled_negative", *cfg.objectives]].copy()
    for name in settings.ranker_names:
        for objective, values in funnel.ranker(name).score(test).items():
            scored[f"{name.removesuffix('_ranker')}_{objective}"] = values
    scored.to_parquet(out_dir / "rankers.parquet", index=False)
    steps.update()
    steps.close()
    return {"users": int(len(users)), "model_path_users": int((path == MODEL).sum()),
            "repeat_positives_dropped": repeats,
            "lists": {name: list(a.shape) for name, a in lists.items()},
            "ranker_rows": int(len(scored)), "version": funnel.version,
            "funnel_stage_ms": stage_ms}


def full_ranks(name: str, scores, n_users: int, excluded: list[np.ndarray],
               relevant: list[np.ndarray], relevant_raw: list[np.ndarray]) -> pd.DataFrame:
    """The 0-based rank of each relevant item (categorified ids; raw ids alongside) among all
    catalogue items by `scores(lo, hi)` (the [hi - lo, max item id + 1] scores of users lo..hi,
    -inf where not an item), the user's excluded items removed; an item the model cannot rank
    (not in its catalogue) ranks last. Asked block by block, so memory stays at one block of
    users whatever the catalogue. Columns list, row, item_id (raw), rank: the shape of
    `bias.positive_ranks`."""
    rows, items, rank = [], [], []
    n_ranked = None
    for lo in range(0, n_users, BLOCK_USERS):
        hi = min(lo + BLOCK_USERS, n_users)
        grid = scores(lo, hi)
        if n_ranked is None:
            n_ranked = int(np.isfinite(grid[0]).sum())
        for r in range(lo, hi):
            s = np.array(grid[r - lo], dtype=np.float64)
            s[excluded[r][excluded[r] < len(s)]] = -np.inf
            rel = relevant[r]
            known = (rel >= 0) & (rel < len(s))
            ranked = np.sort(s[np.isfinite(s)])
            pos = np.full(len(rel), n_ranked, np.int64)
            if known.any():
                mine = s[rel[known]]
                pos[known] = np.where(np.isfinite(mine),
                                      len(ranked) - np.searchsorted(ranked, mine, side="right"),
                                      n_ranked)
            rows.append(np.full(len(rel), r))
            items.append(relevant_raw[r])
            rank.append(pos)
    return pd.DataFrame({"list": name, "row": np.concatenate(rows) if rows else [],
                         "item_id": np.concatenate(items) if items else [],
                         "rank": np.concatenate(rank) if rank else []})
