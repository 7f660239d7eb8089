"""Real (small) Merlin Models trainings on a real dataset build: losses fall, artifacts reload
with identical scores through the serving signature, versions cannot be mixed, scores in [0, 1]."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfunnel.models.artifacts import VersionMismatchError, new_version, read_manifest, write_manifest
from recfunnel.models.candidates import load_retrieval
from recfunnel.models.data import Splits, to_tensors
from recfunnel.models.ranking import train_ranker
from recfunnel.models.scorer import RankerScorer
from recfunnel.models.retrieval import retrieval_eval, tower_schemas, train_retrieval
from recfunnel.config import ComputeConfig, DataConfig, DatasetConfig, ModelsConfig, ValidationConfig
from recfunnel.data import sources
from recfunnel.topk import topk_metrics
from recfunnel.workflows.dataset import DatasetBuilder

CFG = ModelsConfig(embedding_dim=16, retrieval_epochs=3, mf_epochs=3, ranker_epochs=2,
                   retrieval_batch_size=256, ranker_batch_size=512, retrieval_learning_rate=0.01)

pytestmark = pytest.mark.training


@pytest.fixture(scope="module")
def splits(tmp_path_factory, small_synthetic):
    root = tmp_path_factory.mktemp("models")
    raw = sources.materialize(DataConfig(synthetic=small_synthetic), root, cache_dir=root / "c",
                              progress=False)
    sources.validate_source(raw, root / "data", ValidationConfig(), progress=False)
    plant_cold_items(root / "data" / "items.parquet")
    cfg = DatasetConfig(window_days=8, active_min_events=3, active_window_days=5,
                        unsafe_filters=[{"kind": "flag"}], valid_days=2, test_days=2)
    DatasetBuilder(cfg, ComputeConfig(), root / "data", root / "dataset", progress=False).build()
    return Splits.load(root / "dataset")


COLD = 6     # planted catalogue items without any event, in pairs of equal attributes


def plant_cold_items(path: Path) -> None:
    """Adds COLD items that no event names to the validated catalogue: each pair shares its
    category, creator and duration (titles differ in their numbers, so they are not copies)."""
    items = pd.read_parquet(path)
    originals = items.drop_duplicates(["category", "creator"]).head(COLD // 2)  # pairs differ
    planted = originals.iloc[np.repeat(np.arange(COLD // 2), 2)].reset_index(drop=True)
    planted["item_id"] = items["item_id"].max() + 1 + np.arange(COLD)
    planted["title"] = [f"Planted cold item {k}" for k in range(COLD)]
    planted["unsafe"] = False
    pd.concat([items, planted], ignore_index=True).to_parquet(path, index=False)


def test_items_without_events_are_candidates_embedded_by_their_attributes(splits, tmp_path):
    from recfunnel.models.features import ITEM_FEATURES, build_feature_tables
    from recfunnel.workflows.dataset import CATALOGUE

    catalogue = pd.read_parquet(splits.dataset_dir / CATALOGUE)["item_id"]
    cold = splits.cold_items()
    planted = catalogue.max() - np.arange(COLD)[::-1]          # the largest ids: plant_cold_items
    assert set(planted) <= set(cold["item_id_raw"])
    result = train_retrieval("two_tower", splits, CFG, tmp_path, new_version())
    ids = np.load(result.items_dir / "item_ids.npy")
    vectors = np.load(result.items_dir / "item_embeddings.npy")
    # the index holds the whole servable catalogue, each item once, cold ones included
    assert len(ids) == len(np.unique(ids)) == len(catalogue)
    assert set(cold["item_id"]) <= set(ids)
    # embedded by the item tower from their attributes alone: equal attributes, equal vectors
    row = {i: k for k, i in enumerate(ids)}
    by_raw = cold.set_index("item_id_raw")["item_id"]
    pairs = vectors[[row[by_raw[i]] for i in planted]].reshape(COLD // 2, 2, -1)
    np.testing.assert_allclose(pairs[:, 0], pairs[:, 1], atol=1e-6)
    assert not np.allclose(pairs[0, 0], pairs[1, 0], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # and the served item table has their rows (the rankers score them as candidates)
    build_feature_tables(splits.dataset_dir, tmp_path / "features", splits.train["timestamp"].max())
    table = pd.read_parquet(tmp_path / "features" / ITEM_FEATURES)
    assert set(catalogue) <= set(table["item_id_raw"])


def test_two_tower_learns_and_reloads_identically(splits, tmp_path):
    version = new_version()
    result = train_retrieval("two_tower", splits, CFG, tmp_path, version)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert {t["column"] for t in result.embedding_tables} >= {"user_id", "item_id"}
    signature, index, got_version = load_retrieval(result.query_dir, result.items_dir)
    assert got_version == version
    # the last epoch's validation recall, recomputed from the exported artifacts alone
    positives = splits.positives(splits.valid, CFG.retrieval_positive)
    users = positives.sort_values("timestamp").drop_duplicates("user_id")
    inputs = to_tensors(users, tower_schemas("two_tower", splits, CFG)[0])
    query = next(iter(signature(**inputs).values())).numpy()
    seen = splits.positives(splits.train, "click").groupby("user_id")["item_id"].apply(np.asarray)
    top, scores = index.search(query, CFG.eval_k,
                               [seen.get(u, np.empty(0, np.int64)) for u in users["user_id"]])
    truth = positives.groupby("user_id")["item_id"].apply(np.asarray)
    m = topk_metrics(top, [truth[u] for u in users["user_id"]], CFG.eval_k)
    assert m["recall@10"] == pytest.approx(result.history[-1]["val_recall@10"], abs=1e-4)


def test_mixed_versions_are_refused(splits, tmp_path):
    result = train_retrieval("mf", splits, CFG, tmp_path / "a", new_version())
    other = tmp_path / "other_items"
    shutil.copytree(result.items_dir, other)
    write_manifest(other, new_version(), "item_embeddings")       # as if from another training
    with pytest.raises(VersionMismatchError, match="different trainings cannot be mixed"):
        load_retrieval(result.query_dir, other)
    (result.items_dir / "item_embeddings.npy").write_bytes(b"truncated")
    with pytest.raises(Exception, match="does not match its sha256"):
        load_retrieval(result.query_dir, result.items_dir)


@pytest.mark.parametrize("kind", ["light", "heavy"])
def test_rankers_learn_every_objective_with_probabilities(splits, tmp_path, kind):
    result = train_ranker(kind, splits, CFG, tmp_path, new_version())
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    scorer = RankerScorer(result.model_dir)
    scores = scorer.score(splits.test)
    assert set(scores) == set(CFG.objectives)
    for objective, values in scores.items():
        assert values.shape == (len(splits.test),)
        assert ((values >= 0) & (values <= 1)).all(), objective          # L5.1
    again = RankerScorer(result.model_dir).score(splits.test)
    for objective in scores:
        np.testing.assert_array_equal(scores[objective], again[objective])
    if kind == "light":
        from recfunnel.models.ranking import light_features
        assert result.features == light_features(CFG, splits.schema.column_names)
        assert result.features[:len(CFG.light_ranker_features)] == CFG.light_ranker_features


def test_patience_keeps_the_best_epoch(splits, tmp_path):
    """With patience, training stops after epochs without a better validation recall and the
    exported model is the best epoch's, not the last one's."""
    cfg = replace(CFG, retrieval_epochs=6, retrieval_patience=1, retrieval_learning_rate=0.05)
    result = train_retrieval("two_tower", splits, cfg, tmp_path, new_version())
    recalls = [h["val_recall@10"] for h in result.history]
    assert result.best_epoch == int(np.argmax(recalls)) + 1
    assert len(recalls) == 6 or len(recalls) == result.best_epoch + 1
    again = retrieval_eval(splits, splits.valid, "click", 10,
                           tower_schemas("two_tower", splits, cfg))(result.model)
    assert again["val_recall@10"] == pytest.approx(max(recalls), abs=1e-4)


def test_two_tower_features_are_checked(splits):
    with pytest.raises(ValueError, match="not user or item features"):
        tower_schemas("two_tower", splits, replace(CFG, two_tower_features=["no_such"]))
    user, item = tower_schemas("two_tower", splits, replace(CFG, two_tower_features=[]))
    assert user.column_names == ["user_id"] and item.column_names == ["item_id"]


def test_window_sweep_trains_each_window_on_its_days(splits, tmp_path):
    from recfunnel.models.window_sweep import window_sweep

    train_end = pd.to_datetime(splits.valid["timestamp"]).min().normalize().tz_localize(None)
    cfg = replace(CFG, retrieval_epochs=2, window_sweep_models=["two_tower"])
    out = window_sweep(tmp_path / "none", train_end, cfg, days=[2, 6], progress=False,
                       splits=splits)
    small, large = out["windows"]
    assert small["train_rows"] < large["train_rows"]
    for w in out["windows"]:
        tt = w["models"]["two_tower"]
        assert [p["epoch"] for p in tt["points"]] == [1, 2]
        assert tt["points"][1]["steps"] == 2 * tt["points"][0]["steps"] > 0
        assert tt["best"] == max(p["value"] for p in tt["points"])
    with pytest.raises(ValueError, match="unknown"):
        window_sweep(tmp_path, train_end, replace(cfg, window_sweep_models=["nope"]),
                     splits=splits)


def test_a_ranker_architecture_is_a_setting(splits, tmp_path):
    with pytest.raises(ValueError, match="choose from mlp, dcn"):
        train_ranker("light", splits, replace(CFG, light_ranker_architecture="gbdt"),
                     tmp_path / "bad", new_version())
    # the light ranker as a DCN: its cross layers' weights are in the SavedModel's variables
    as_dcn = replace(CFG, light_ranker_architecture="dcn", ranker_epochs=1)
    result = train_ranker("light", splits, as_dcn, tmp_path / "dcn", new_version())
    assert read_manifest(result.model_dir, kind="ranker")["config"]["architecture"] == "dcn"
    import tensorflow as tf

    loaded = tf.saved_model.load(str(result.model_dir))     # as the stages load it
    names = [v.name for v in loaded.signatures["serving_default"].variables]
    assert any("cross" in name.lower() for name in names), names[:20]


def test_a_ranker_of_several_members_serves_the_mean_of_their_logits(splits, tmp_path):
    """models.<kind>_ranker_members: the members are the rankers each seed trains alone; the
    saved model answers sigmoid(mean(logit)) of theirs under the same signature."""
    cfg = replace(CFG, ranker_epochs=1)
    version = new_version()
    alone = [RankerScorer(train_ranker("light", splits, replace(cfg, seed=seed),
                                       tmp_path / f"seed{seed}", version).model_dir)
             for seed in (5, 6)]
    result = train_ranker("light", splits, replace(cfg, seed=5, light_ranker_members=2),
                          tmp_path / "both", version)
    assert [m["seed"] for m in result.members] == [5, 6]
    both = RankerScorer(result.model_dir)
    rows = splits.test.head(500)
    got, parts = both.score(rows), [scorer.score(rows) for scorer in alone]
    assert set(got) == set(CFG.objectives)

    def logit(p):
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)
    for objective, values in got.items():
        mean = 1 / (1 + np.exp(-(logit(parts[0][objective]) + logit(parts[1][objective])) / 2))
        np.testing.assert_allclose(values, mean, atol=1e-5, err_msg=objective)
        assert not np.allclose(parts[0][objective], parts[1][objective])   # two members
    manifest = read_manifest(result.model_dir, kind="ranker")
    assert [m["seed"] for m in manifest["metrics"]["members"]] == [5, 6]
