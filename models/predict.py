"""What offline evaluation reads (L4, L6): every model's output on the test split, in raw ids.

`write_predictions` runs the trained models of one version over the test users and rows and
writes plain files, so `recfunnel.evaluation` (numpy/pandas only) can score any model,
including peers, without TensorFlow:

  users.parquet       test users with a positive: raw id, path (model | fallback)
  relevant.parquet    their test positives (user_id_raw, item_id_raw)
  lists.npz           per list name, [n_users, width] raw item ids (-1 pads): each retrieval
                      model's top candidates_k, and the funnel's candidates, light-ranker cut
                      and final top k
  rankers.parquet     test rows with their labels and each ranker's score per objective
  train_items.parquet training positives (user_id_raw, item_id_raw): popularity and activity
  positive_ranks.parquet  per candidate generator, the rank of every test positive in its full
                      ranking of the catalogue (for popularity-opportunity bias; 1 = first)

Items a user had in training or validation are excluded from every list (full ranking). The
lists come from the version's offline feature tables (`features_offline/`): the state before
the test period, no test event counted, as a server would have known it then.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.data import Splits
from models.funnel import MODEL, OFFLINE_FEATURES, Funnel, FunnelSettings

RETRIEVAL_LISTS = ("two_tower", "mf", "popularity")


def write_predictions(dataset_dir: Path, version_dir: Path, out_dir: Path, cfg,
                      progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    from models.candidates import load_retrieval, query_vectors
    from models.ranking import RankerScorer

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

    settings = FunnelSettings.from_models_config(cfg)
    # the offline tables: what the funnel knew before the test period, no test event counted
    features = OFFLINE_FEATURES if (Path(version_dir) / OFFLINE_FEATURES).is_dir() else "features"
    funnel = Funnel.load(version_dir, settings, features=features)
    steps = tqdm(total=len(RETRIEVAL_LISTS) + 2, desc="predictions", unit="model",
                 disable=not progress)
    lists = {}
    final = funnel.recommend(users, exclude_raw=exclude, keep_stages=True)
    lists.update(funnel=final.items, funnel_candidates=final.candidates,
                 funnel_light=final.light_kept)
    steps.update()
    rows, path = funnel.user_rows(users)
    excluded = funnel.exclusions(users, exclude)
    k = min(settings.candidates_k, funnel.catalogue_size)
    relevant = test_pos.groupby("user_id_raw")["item_id_raw"].apply(np.asarray)
    relevant_raw = [np.unique(relevant[u]) for u in users]
    relevant_ids = [funnel.items["item_id"].reindex(r).fillna(-1).to_numpy(np.int64)
                    for r in relevant_raw]
    ranks = []
    for kind in RETRIEVAL_LISTS:
        if kind == "popularity":
            ids = funnel.popularity.search(len(users), k, excluded)[0]
            scores = np.zeros(funnel.index.item_ids.max() + 1)
            scores[funnel.popularity.item_ids] = funnel.popularity.counts
            ranks.append(full_ranks(kind, np.broadcast_to(scores, (len(users), len(scores))),
                                    excluded, relevant_ids, relevant_raw))
        else:
            query, index, _ = load_retrieval(Path(version_dir) / f"{kind}_query",
                                             Path(version_dir) / f"{kind}_items", settings.index)
            vectors = query_vectors(query, rows)
            ids = index.search(vectors, k, excluded)[0]
            dense = np.full((len(users), index.item_ids.max() + 1), -np.inf, np.float32)
            dense[:, index.item_ids] = vectors @ index.vectors.T
            ranks.append(full_ranks(kind, dense, excluded, relevant_ids, relevant_raw))
        lists[kind] = funnel.raw_ids(ids)
        steps.update()
    np.savez_compressed(out_dir / "lists.npz", **lists)
    pd.concat(ranks, ignore_index=True).to_parquet(out_dir / "positive_ranks.parquet", index=False)
    pd.DataFrame({"user_id_raw": users, "path": path}).to_parquet(out_dir / "users.parquet")
    test_pos.to_parquet(out_dir / "relevant.parquet", index=False)
    splits.positives(splits.train, label)[["user_id_raw", "item_id_raw"]].to_parquet(
        out_dir / "train_items.parquet", index=False)

    test = splits.test
    scored = test[["user_id_raw", "item_id_raw", "sampled_negative", *cfg.objectives]].copy()
    for name in ("light", "heavy"):
        for objective, values in RankerScorer(Path(version_dir) / f"{name}_ranker").score(
                test).items():
            scored[f"{name}_{objective}"] = values
    scored.to_parquet(out_dir / "rankers.parquet", index=False)
    steps.update()
    steps.close()
    return {"users": int(len(users)), "model_path_users": int((path == MODEL).sum()),
            "repeat_positives_dropped": repeats,
            "lists": {name: list(a.shape) for name, a in lists.items()},
            "ranker_rows": int(len(scored)), "version": funnel.version,
            "funnel_stage_ms": final.stage_ms}


def full_ranks(name: str, scores: np.ndarray, excluded: list[np.ndarray],
               relevant: list[np.ndarray], relevant_raw: list[np.ndarray]) -> pd.DataFrame:
    """The 0-based rank of each relevant item (categorified ids; raw ids alongside) among all
    catalogue items by `scores` ([n_users, max item id + 1], -inf where not an item), the
    user's excluded items removed; an item the model cannot rank (not in its catalogue) ranks
    last. Columns list, row, item_id (raw), rank: the shape of `bias.positive_ranks`."""
    rows, items, rank = [], [], []
    n_ranked = np.isfinite(scores[0]).sum() if len(scores) else 0
    for r in range(len(relevant)):
        s = np.array(scores[r], dtype=np.float64)
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
