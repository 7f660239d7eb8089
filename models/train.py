"""`recfunnel train`: every model of the funnel from one dataset build, under one version.

Writes `<out>/<version>/` with the popularity fallback, the two-tower and MF query towers and
item embeddings, and the light and heavy rankers, each with its manifest; returns the summary's
`models` section: per model its parameters, embedding tables and their memory (L3.1), training
time and throughput, and its metrics per epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.models.artifacts import new_version, write_manifest
from recfunnel.models.candidates import (RETRIEVAL_SCORE, PopularityCandidates, load_retrieval,
                               retrieval_scores)
from recfunnel.models.cascade import CANDIDATES, StageView, cascade_mix, stage_negatives
from recfunnel.models.data import Splits
from recfunnel.models.features import (FEATURES, OFFLINE_FEATURES, build_feature_tables,
                                       history_events)
from recfunnel.models.funnel import FunnelSettings
from recfunnel.config import ModelsConfig
from recfunnel.topk import topk_metrics

RETRIEVAL = ("two_tower", "mf")
ITEM_ITEM = ("ease",)
RANKERS = ("light", "heavy")


def train_all(dataset_dir: Path, out_dir: Path, cfg: ModelsConfig, funnel: FunnelSettings,
              progress: bool = True, only: tuple[str, ...] | None = None, as_of=None,
              offline_as_of=None) -> dict:
    """Trains the models named in `only` (default: all) under one new version for the declared
    `funnel` (its blend and cuts shape the rankers' training); with `as_of`
    (the serving time, e.g. the data's end) it also writes the serving feature tables, and the
    offline evaluation's as of `offline_as_of` (the test period's start; default `as_of`),
    counting only events before it and none of the test split's pairs.

    The rankers train after retrieval and the tables: each also learns from negatives drawn
    from what the stage before it returns (models.cascade), when that stage is in the version."""
    from tqdm.auto import tqdm

    from recfunnel.models.ranking import light_features, train_ranker     # TensorFlow
    from recfunnel.models.retrieval import train_retrieval

    splits = Splits.load(dataset_dir)
    version = new_version()
    root = Path(out_dir) / version
    root.mkdir(parents=True)
    wanted = only or ("popularity", *RETRIEVAL, *ITEM_ITEM, *(f"{k}_ranker" for k in RANKERS))
    section = {"version": version, "path": str(root), "models": {}}
    bar = tqdm(wanted, desc="training", unit="model", disable=not progress)
    rankers_ready, score = False, None      # tables and the score, once before the rankers
    for name in bar:
        bar.set_postfix_str(name)
        if name == "popularity":
            section["models"][name] = train_popularity(splits, cfg, root, version)
        elif name in ITEM_ITEM:
            section["models"][name] = train_ease(splits, cfg, root, version)
        elif name in RETRIEVAL:
            result = train_retrieval(name, splits, cfg, root, version)
            section["models"][name] = _describe(result, root)
        else:
            if not rankers_ready:
                if as_of is not None:
                    section.update(write_feature_tables(dataset_dir, root, version, as_of,
                                                        offline_as_of))
                score = previous_stage_score(splits, root, cfg, funnel)
                rankers_ready = True
            kind = name.removesuffix("_ranker")
            train_rows, valid_rows, mix = cascade_rows(kind, splits, dataset_dir, root, cfg,
                                                       funnel)
            features = cfg.heavy_ranker_features if kind == "heavy" else None
            if score is not None:
                train_rows, valid_rows = (score(f) for f in (
                    splits.train if train_rows is None else train_rows,
                    splits.valid if valid_rows is None else valid_rows))
                base = light_features(cfg, splits.schema.column_names) if kind == "light" \
                    else features
                features = None if base is None else [*base, RETRIEVAL_SCORE]
            result = train_ranker(kind, splits, cfg, root, version, train_rows=train_rows,
                                  valid_rows=valid_rows, features=features,
                                  retrieval=funnel.learned_source or "two_tower",
                                  blend=funnel.blend)
            section["models"][name] = {**_describe(result, root), "training_rows": mix}
    if as_of is not None and not rankers_ready:
        section.update(write_feature_tables(dataset_dir, root, version, as_of, offline_as_of))
    (root / "models.json").write_text(json.dumps(section, indent=2, default=str))
    return section


def previous_stage_score(splits: Splits, root: Path, cfg: ModelsConfig, funnel: FunnelSettings):
    """With `models.ranker_retrieval_score`, the function that fills a frame's
    `retrieval_score` (the funnel's learned candidate source's score of each row, a ranker
    feature; the two-tower's when no declared source has a query tower, e.g. EASE's candidates)
    and the column in the splits' schema; None when it is off or the version has no such model."""
    from merlin.schema import ColumnSchema, Schema, Tags

    kind = funnel.learned_source or "two_tower"
    if not cfg.ranker_retrieval_score or not (root / f"{kind}_query").is_dir():
        return None
    query, index, _ = load_retrieval(root / f"{kind}_query", root / f"{kind}_items")
    if RETRIEVAL_SCORE not in splits.schema.column_names:
        splits.schema = splits.schema + Schema([ColumnSchema(
            RETRIEVAL_SCORE, dtype=np.float32, tags=[Tags.CONTINUOUS, Tags.ITEM])])

    def fill(frame):
        frame = frame.copy()
        missing = frame[RETRIEVAL_SCORE].isna().to_numpy() if RETRIEVAL_SCORE in frame else \
            np.ones(len(frame), bool)
        values = frame[RETRIEVAL_SCORE].to_numpy(np.float32) if RETRIEVAL_SCORE in frame else \
            np.zeros(len(frame), np.float32)
        values[missing] = retrieval_scores(query, index, frame[missing])
        frame[RETRIEVAL_SCORE] = values
        return frame

    return fill


def write_feature_tables(dataset_dir: Path, root: Path, version: str, as_of,
                         offline_as_of=None) -> dict:
    """The version's served tables (every event, as of `as_of`) and the offline evaluation's
    (no test pair's event, none after `offline_as_of`); their part of the models section."""
    info = build_feature_tables(dataset_dir, root / FEATURES, as_of)
    write_manifest(root / FEATURES, version, "features", config=info)
    out = {"features": {**info, "path": str((root / FEATURES).relative_to(root.parent))}}
    cut = offline_as_of if offline_as_of is not None else as_of
    known = history_events(dataset_dir, before=offline_as_of, without_split="test")
    info = build_feature_tables(dataset_dir, root / OFFLINE_FEATURES, cut, events=known)
    write_manifest(root / OFFLINE_FEATURES, version, "features", config=info)
    out["features_offline"] = info
    return out


def cascade_rows(kind: str, splits: Splits, dataset_dir: Path, root: Path, cfg: ModelsConfig,
                 funnel: FunnelSettings):
    """(train rows, validation rows, their mix) for the `kind` ranker: the splits' rows plus
    negatives from the declared funnel's stage before it (models.cascade.stage_before: the
    sources' candidates before the first ranker, the ranker before's cut after it), when that
    stage's models and the offline tables are in the version."""
    per_row = cfg.light_cascade_negatives if kind == "light" else cfg.heavy_cascade_negatives
    ranker = f"{kind}_ranker"
    needed = StageView.artifacts(root, OFFLINE_FEATURES, funnel, ranker)
    missing = [name for name in needed if not (root / name).is_dir()]
    if per_row <= 0 or missing:
        reason = "off" if per_row <= 0 else f"needs {missing} in the version"
        return None, None, {**cascade_mix(splits.train, splits.train.iloc[:0]),
                            "cascade": reason}
    view = StageView(root, OFFLINE_FEATURES, funnel, ranker)
    train_neg = stage_negatives(splits.train, view, per_row, dataset_dir, cfg.seed)
    valid_neg = stage_negatives(splits.valid, view, per_row, dataset_dir, cfg.seed + 1,
                                exclude_frames=(splits.train,))
    sources = " + ".join(s["name"] for s in view.settings.sources)
    stage = f"the candidates ({sources})" if view.stage == CANDIDATES else f"the {view.stage}"
    mix = {**cascade_mix(splits.train, train_neg), "cascade": f"from {stage}",
           "stage_width": view.width, "per_observed_row": per_row}
    return (pd.concat([splits.train, train_neg], ignore_index=True),
            pd.concat([splits.valid, valid_neg], ignore_index=True), mix)


def train_popularity(splits: Splits, cfg: ModelsConfig, root: Path, version: str) -> dict:
    """The fallback for users the models do not know: most-clicked training items."""
    positives = splits.positives(splits.train, cfg.retrieval_positive)
    popularity = PopularityCandidates.fit(positives["item_id"].to_numpy(), version)
    folder = root / "popularity"
    folder.mkdir()
    np.save(folder / "item_ids.npy", popularity.item_ids)
    np.save(folder / "counts.npy", popularity.counts)
    valid = splits.positives(splits.valid, cfg.retrieval_positive)
    truth = valid.groupby("user_id")["item_id"].apply(np.asarray)
    exclude = splits.seen_items(cfg.retrieval_positive, (splits.train,), truth.index)
    top, _ = popularity.search(len(truth), cfg.eval_k, exclude)
    m = topk_metrics(top, list(truth), cfg.eval_k)
    metrics = {f"val_recall@{cfg.eval_k}": round(m[f"recall@{cfg.eval_k}"], 4),
               f"val_ndcg@{cfg.eval_k}": round(m[f"ndcg@{cfg.eval_k}"], 4)}
    write_manifest(folder, version, "popularity", metrics=metrics)
    return {"kind": "candidate_fallback", "parameters": int(len(popularity.item_ids)),
            "history": [metrics], "path": str(folder.relative_to(root.parent))}


def train_ease(splits: Splits, cfg: ModelsConfig, root: Path, version: str) -> dict:
    """EASE (models.peers) on the training positives as a candidate source: its item-item
    matrix B [items, items] over the categorified ids; a user's scores are the sum of B's rows
    of the items they have (models.components.ItemItemSource). n_items^2 floats, so a
    catalogue above `ease_max_items` gets none (the source is then refused by name)."""
    import time

    from recfunnel.models.peers import EASE

    positives = splits.positives(splits.train, cfg.retrieval_positive)
    n_items = int(max(splits.train["item_id"].max(), splits.valid["item_id"].max(),
                      splits.test["item_id"].max())) + 1
    if n_items > cfg.ease_max_items:
        return {"kind": "item_item", "parameters": 0, "history": [],
                "skipped": f"{n_items} items > models.ease_max_items {cfg.ease_max_items}"}
    users = positives["user_id"].to_numpy()
    start = time.perf_counter()
    model = EASE(cfg.ease_regularization).fit(users, positives["item_id"].to_numpy(),
                                              int(users.max()) + 1 if len(users) else 1, n_items)
    seconds = round(time.perf_counter() - start, 2)
    folder = root / "ease"
    folder.mkdir()
    np.save(folder / "weights.npy", model.weights_)
    np.save(folder / "fitted_items.npy", model.fitted_items_)
    write_manifest(folder, version, "item_item",
                   config={"regularization": cfg.ease_regularization, "items": n_items})
    return {"kind": "item_item", "parameters": int(n_items * n_items), "train_seconds": seconds,
            "history": [], "path": str(folder.relative_to(root.parent))}


def _describe(result, root: Path) -> dict:
    path = result.model_dir if hasattr(result, "model_dir") else result.query_dir
    tables = result.embedding_tables
    out = {"kind": "ranker" if hasattr(result, "model_dir") else "retrieval",
           "parameters": result.parameters, "train_seconds": result.train_seconds,
           "examples_per_second": round(result.examples / max(result.train_seconds, 1e-9)),
           "history": result.history, "embedding_tables": tables,
           "embedding_megabytes": round(sum(t["megabytes"] for t in tables), 3),
           "path": str(Path(path).relative_to(root.parent))}
    if hasattr(result, "items_dir"):
        vectors = np.load(Path(result.items_dir) / "item_embeddings.npy", mmap_mode="r")
        out["item_embeddings"] = {"rows": int(vectors.shape[0]), "dim": int(vectors.shape[1]),
                                  "path": str(Path(result.items_dir).relative_to(root.parent))}
    if getattr(result, "best_epoch", 0):
        out["best_epoch"] = result.best_epoch
    if getattr(result, "features", None):
        out["features"] = result.features
    if getattr(result, "members", None):
        out["members"] = result.members
    return out

