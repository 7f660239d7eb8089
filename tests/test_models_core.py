"""The numpy-only parts of models/: the blend, versioned artifacts, candidate search."""
import json

import numpy as np
import pytest

from recfunnel.models import artifacts
from recfunnel.models.blend import blend
from recfunnel.models.candidates import EmbeddingIndex, PopularityCandidates


def test_blend_is_a_normalised_weighted_sum():
    scores = {"click": np.array([0.9, 0.1]), "like": np.array([0.2, 0.8]), "share": np.array([1.0, 0.0])}
    got = blend(scores, {"click": 1.0, "like": 3.0, "share": 0.0})
    np.testing.assert_allclose(got, [0.25 * 0.9 + 0.75 * 0.2, 0.25 * 0.1 + 0.75 * 0.8])
    assert ((got >= 0) & (got <= 1)).all()


@pytest.mark.parametrize("weights,message", [
    ({"click": 0.0}, "all zero"),
    ({"click": -1.0, "like": 2.0}, "must be >= 0; negative for click"),
    ({"watch_duration_aware": 1.0}, "needs scores for watch_duration_aware"),
])
def test_blend_refuses_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        blend({"click": np.ones(2), "like": np.ones(2)}, weights)


def test_manifest_checksums_and_version_mismatch(tmp_path):
    tower, items = tmp_path / "tower", tmp_path / "items"
    for folder in (tower, items):
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"abc")
    v1, v2 = artifacts.new_version(), artifacts.new_version()
    assert v1 != v2
    artifacts.write_manifest(tower, v1, "query_tower", metrics={"recall@10": 0.1})
    artifacts.write_manifest(items, v2, "item_embeddings")
    a, b = artifacts.read_manifest(tower), artifacts.read_manifest(items)
    with pytest.raises(artifacts.VersionMismatchError, match="different trainings cannot be mixed"):
        artifacts.require_same_version(query_tower=a, item_embeddings=b)
    artifacts.write_manifest(items, v1, "item_embeddings")
    assert artifacts.require_same_version(query_tower=a, item_embeddings=artifacts.read_manifest(items)) == v1
    (items / "weights.bin").write_bytes(b"abd")
    with pytest.raises(artifacts.ArtifactError, match="does not match its sha256"):
        artifacts.read_manifest(items)
    with pytest.raises(artifacts.ArtifactError, match="holds a 'query_tower', expected a 'ranker'"):
        artifacts.read_manifest(tower, kind="ranker")


def test_exact_search_matches_brute_force_and_excludes():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    ids = np.arange(1000, 1200)
    query = rng.standard_normal((5, 8)).astype(np.float32)
    index = EmbeddingIndex(ids, vectors)
    got, scores = index.search(query, 10)
    brute = ids[np.argsort(-(query @ vectors.T), axis=1)[:, :10]]
    np.testing.assert_array_equal(got, brute)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    exclude = [brute[n, :3] for n in range(5)]
    got, _ = index.search(query, 10, exclude)
    np.testing.assert_array_equal(got[:, :7], brute[:, 3:])
    assert not any(set(got[n]) & set(exclude[n]) for n in range(5))


def test_hnsw_recall_is_high_and_k_beyond_catalogue_pads():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2000, 16)).astype(np.float32)
    query = rng.standard_normal((50, 16)).astype(np.float32)
    exact, _ = EmbeddingIndex(np.arange(2000), vectors).search(query, 20)
    approx, _ = EmbeddingIndex(np.arange(2000), vectors, kind="hnsw").search(query, 20)
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact)])
    assert recall > 0.9
    small = EmbeddingIndex(np.arange(3), vectors[:3])
    items, scores = small.search(query[:1], 5)
    assert items[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()


def test_popularity_fallback():
    pop = PopularityCandidates.fit(np.array([5, 5, 5, 7, 7, 9]))
    items, scores = pop.search(2, 2, exclude=[np.array([]), np.array([5])])
    assert items.tolist() == [[5, 7], [7, 9]]
    np.testing.assert_allclose(scores[0], [0.5, 1 / 3], rtol=1e-6)
