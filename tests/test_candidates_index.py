"""The item index of the learned candidate sources (models.candidates.EmbeddingIndex): every
kind finds exact's top list on a small catalogue, never returns an excluded item, pads short
lists; a saved index reloads to the same answers and is refused when it is not the one its
embeddings were built into; bad parameters fail naming funnel.index_params."""
import json

import numpy as np
import pandas as pd
import pytest

from recfunnel.models import candidates
from recfunnel.config import INDEX_KINDS, ConfigError, load_config
from recfunnel.models.artifacts import ArtifactError, write_manifest
from recfunnel.models.candidates import (ITEM_EMBEDDINGS, ITEM_IDS, SAVED_INDEX, EmbeddingIndex,
                                         PopularityCandidates, save_index, saved_index_name)
from recfunnel.models.funnel import Funnel, FunnelSettings, FunnelSpecError
from recfunnel.serving.export import _save_item_indexes, export_version, open_served_version

K = 20
# Generous settings for 2,000 items: every kind should find (almost) exactly exact's list.
GENEROUS = {"exact": {}, "hnsw": {"M": 16, "ef_construction": 200, "ef_search": 400},
            "ivf": {"nlist": 16, "nprobe": 16}, "ivfpq": {"nlist": 16, "nprobe": 16, "m": 8,
                                                          "refine": 8}}


@pytest.fixture(scope="module")
def catalogue():
    """2,000 unit vectors [2000, 16] around 8 clusters, ids 5000.. in shuffled order (ids are
    not positions), and 30 queries."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((8, 16))
    vectors = centres[rng.integers(0, 8, 2000)] + 0.7 * rng.standard_normal((2000, 16))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = 5000 + rng.permutation(2000)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    return ids, vectors, queries


@pytest.fixture(scope="module")
def indexes(catalogue):
    ids, vectors, _ = catalogue
    return {kind: EmbeddingIndex(ids, vectors, kind=kind, params=GENEROUS[kind])
            for kind in INDEX_KINDS}


def loop_search(index, query, k, exclude):
    """The per-query search the vectorised one replaced: the behaviour to keep for exact."""
    scores, rows = index._index.search(query, min(k + max(map(len, exclude)), len(index.item_ids)))
    items = np.full((len(query), k), -1, np.int64)
    kept = np.full((len(query), k), -np.inf, np.float32)
    for n in range(len(query)):
        ids, s = index.item_ids[rows[n][rows[n] >= 0]], scores[n][rows[n] >= 0]
        keep = ~np.isin(ids, exclude[n])
        items[n, :keep.sum()], kept[n, :keep.sum()] = ids[keep][:k], s[keep][:k]
    return items, kept


def overlap(a, b) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def items_folder(tmp, ids, vectors, version="v1"):
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / ITEM_EMBEDDINGS, vectors)
    np.save(tmp / ITEM_IDS, ids)
    write_manifest(tmp, version, "item_embeddings")
    return tmp


def test_exact_is_brute_force(catalogue, indexes):
    ids, vectors, queries = catalogue
    got, scores = indexes["exact"].search(queries, K)
    np.testing.assert_array_equal(got, ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :K]])
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_every_kind_with_generous_parameters_finds_exacts_list(kind, catalogue, indexes):
    _, _, queries = catalogue
    exact, _ = indexes["exact"].search(queries, K)
    got, scores = indexes[kind].search(queries, K)
    assert overlap(got, exact) >= 0.98
    assert (np.diff(scores, axis=1) <= 1e-6).all()              # best first


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_no_kind_returns_an_excluded_item(kind, catalogue, indexes):
    ids, _, queries = catalogue
    exact, _ = indexes["exact"].search(queries, K)
    rng = np.random.default_rng(0)
    # each query's own top 5, some random items, an id outside the catalogue; one query none
    exclude = [np.concatenate([exact[n, :5], rng.choice(ids, 10), [-7, 99_999]])
               for n in range(len(queries))]
    exclude[3] = np.array([], np.int64)
    got, _ = indexes[kind].search(queries, K, exclude)
    assert not any(set(got[n]) & set(exclude[n]) for n in range(len(queries)))
    assert (got >= 0).all()                                     # the list is still full
    assert overlap(got[3:4], exact[3:4]) >= 0.95


@pytest.mark.parametrize("spread", [1, 10**6], ids=["dense ids", "sparse ids"])
def test_exact_results_are_the_per_query_loops_ones_ties_included(catalogue, spread):
    ids, vectors, queries = catalogue
    tied = np.concatenate([vectors, vectors[:300]])            # 300 exact ties
    tied_ids = np.concatenate([ids, 9000 + np.arange(300)]) * spread
    tied_ids[-1] = tied_ids[0]                                  # two rows, one id
    index = EmbeddingIndex(tied_ids, tied)
    assert index._excluded.dense == (spread == 1)
    rng = np.random.default_rng(1)
    exclude = [rng.choice(tied_ids, rng.integers(0, 40)) for _ in range(len(queries))]
    exclude[0] = np.concatenate([exclude[0], exclude[0]])      # repeated ids
    exclude[1] = np.concatenate([exclude[1], [-3, 4999 * spread, 10**13]])  # not in the index
    exclude[2] = np.array([])                                   # empty, float
    exclude[4] = index.search(queries[4:5], 40)[0][0]           # the query's own top 40
    exclude[5] = np.array([tied_ids[0]])                        # both of its rows
    for k in (1, K, 500):
        got, scores = index.search(queries, k, exclude)
        want, want_scores = loop_search(index, queries, k, exclude)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(scores, want_scores)
        for n in range(6):                                      # one query at a time
            alone = index.search(queries[n:n + 1], k, exclude[n:n + 1])
            np.testing.assert_array_equal(alone[0][0], want[n])


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_short_lists_are_padded_with_minus_one_and_minus_inf(kind):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    params = {"m": 4, "nbits": 4, "nlist": 2, "nprobe": 2} if kind == "ivfpq" else \
        {"nlist": 2, "nprobe": 2} if kind == "ivf" else {}
    index = EmbeddingIndex(np.arange(40), vectors, kind=kind, params=params)
    items, scores = index.search(vectors[:2], 45, [np.arange(10), np.arange(38)])
    assert (items[0, :30] >= 0).all() and (items[0, 30:] == -1).all()
    assert sorted(items[1, :2]) == [38, 39] and (items[1, 2:] == -1).all()
    assert np.isneginf(scores[1, 2:]).all() and np.isfinite(scores[1, :2]).all()


def test_popularity_search_keeps_its_order_and_exclusions():
    pop = PopularityCandidates.fit(np.array([5, 5, 5, 7, 7, 9, 11, 11]))
    items, scores = pop.search(3, 3, exclude=[np.array([]), np.array([5, 9]), np.arange(20)])
    assert items.tolist() == [[5, 7, 11], [7, 11, -1], [-1, -1, -1]]   # 7 and 11 tie: lower id
    np.testing.assert_allclose(scores[0], [3 / 8, 2 / 8, 2 / 8], rtol=1e-6)
    assert np.isneginf(scores[2]).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_a_saved_index_reloads_and_answers_the_same(kind, catalogue, tmp_path):
    ids, vectors, queries = catalogue
    folder = items_folder(tmp_path / "items", ids, vectors)
    saved = save_index(folder, kind, GENEROUS[kind])
    assert saved.name == saved_index_name(kind, GENEROUS[kind]) and (saved / SAVED_INDEX).is_file()
    import faiss

    from_file = EmbeddingIndex(ids, vectors, "v1", kind, GENEROUS[kind],
                               faiss.read_index(str(saved / SAVED_INDEX)))
    exclude = [ids[:3]] * len(queries)
    first, second = (EmbeddingIndex.load(folder, kind, GENEROUS[kind]) for _ in range(2))
    for index in (first, second):
        for got, want in zip(index.search(queries, K, exclude), from_file.search(queries, K, exclude)):
            np.testing.assert_array_equal(got, want)
    assert save_index(folder, kind, GENEROUS[kind]) == saved          # kept, not rebuilt


def test_search_parameters_do_not_need_another_build(tmp_path, catalogue):
    ids, vectors, _ = catalogue
    folder = items_folder(tmp_path / "items", ids, vectors)
    saved = save_index(folder, "ivf", {"nlist": 16, "nprobe": 2})
    assert saved.name == saved_index_name("ivf", {"nlist": 16, "nprobe": 16, "threads": 2})
    assert EmbeddingIndex.load(folder, "ivf", {"nlist": 16, "nprobe": 16})._index.nprobe == 16


def test_search_parameters_are_set_on_the_built_index(catalogue):
    ids, vectors, queries = catalogue
    index = EmbeddingIndex(ids, vectors, kind="ivfpq", params={"nlist": 16, "m": 8})
    built = index._index
    wide = index.tune(nprobe=16, refine=8).search(queries, K)[0]
    narrow = index.tune(nprobe=1, refine=1).search(queries, K)[0]
    exact = EmbeddingIndex(ids, vectors).search(queries, K)[0]
    assert index._index is built and index.params["nprobe"] == 1
    assert overlap(narrow, exact) < overlap(wide, exact)
    with pytest.raises(ConfigError, match="nlist: not a search parameter"):
        index.tune(nlist=4)


def test_exact_saves_nothing(tmp_path, catalogue):
    folder = items_folder(tmp_path / "items", *catalogue[:2])
    assert save_index(folder, "exact") is None
    assert sorted(p.name for p in folder.iterdir()) == sorted([ITEM_EMBEDDINGS, ITEM_IDS,
                                                               "manifest.json"])


def test_an_altered_saved_index_is_refused(tmp_path, catalogue):
    ids, vectors, _ = catalogue
    folder = items_folder(tmp_path / "items", ids, vectors)
    saved = save_index(folder, "ivf", GENEROUS["ivf"])
    with open(saved / SAVED_INDEX, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        EmbeddingIndex.load(folder, "ivf", GENEROUS["ivf"])


def test_an_index_built_from_other_embeddings_is_refused(tmp_path, catalogue):
    ids, vectors, _ = catalogue
    other = items_folder(tmp_path / "other", ids, vectors[::-1].copy())
    saved = save_index(other, "ivf", GENEROUS["ivf"])
    folder = items_folder(tmp_path / "items", ids, vectors)
    saved.rename(folder / saved.name)
    with pytest.raises(ArtifactError, match="built from other item embeddings"):
        EmbeddingIndex.load(folder, "ivf", GENEROUS["ivf"])
    items_folder(tmp_path / "v2", ids, vectors, version="v2")
    (folder / saved.name).rename(tmp_path / "v2" / saved.name)
    with pytest.raises(ArtifactError, match="different trainings"):
        EmbeddingIndex.load(tmp_path / "v2", "ivf", GENEROUS["ivf"])


def test_export_saves_the_declared_index_beside_each_learned_sources_embeddings(tmp_path,
                                                                                 catalogue):
    artifacts = tmp_path / "artifacts"
    items_folder(artifacts / "two_tower_items", *catalogue[:2])
    (artifacts / "two_tower_query").mkdir()
    write_manifest(artifacts / "two_tower_query", "v1", "query_tower")
    settings = FunnelSettings(index="ivf", index_params={"nlist": 8})
    _save_item_indexes(settings, artifacts)
    saved = artifacts / "two_tower_items" / saved_index_name("ivf", {"nlist": 8})
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["kind"] == "item_index" and manifest["version"] == "v1"
    assert manifest["config"]["params"] == {"nlist": 8}


def test_an_exported_version_serves_the_index_saved_at_export(small_run, tmp_path, monkeypatch):
    # every list scanned and 8 x k re-scored exactly: the small catalogue's exact answer
    settings = FunnelSettings(candidates_k=50, index="ivfpq",
                              index_params={"nlist": 8, "nprobe": 8, "refine": 8})
    exported = export_version(small_run.version_dir, small_run.dir / "dataset",
                              tmp_path / "repo", settings)
    artifacts = tmp_path / "repo" / "candidates" / str(exported.triton_version) / "artifacts"
    assert (artifacts / "two_tower_items" / saved_index_name("ivfpq", settings.index_params)
            / SAVED_INDEX).is_file()

    def no_build(*args):
        raise AssertionError("a served stage built its index instead of loading it")
    monkeypatch.setattr(candidates, "_build_faiss", no_build)
    served = open_served_version(artifacts)
    users = served.users.index.to_numpy()[:8]
    request = served.request(users, *served.user_rows(users))
    got = served.retrieve(request, served.exclusions(request))[0]
    monkeypatch.undo()
    exact = Funnel(artifacts, FunnelSettings(candidates_k=50), unsafe_raw=served.unsafe_raw,
                   seen=pd.read_parquet(artifacts / "serving" / "seen.parquet"))
    np.testing.assert_array_equal(got, exact.retrieve(request, exact.exclusions(request))[0])


# ---- parameters are settings, checked when they load ---------------------------------------
@pytest.mark.parametrize("kind, params, message", [
    ("hnsw", {"nlist": 64}, "'nlist' is not a parameter of the hnsw index; its parameters: M,"),
    ("ivf", {"nprobe": 0}, r"funnel.index_params.nprobe: expected a positive integer, got 0"),
    ("ivf", {"nprobe": True}, "funnel.index_params.nprobe: expected a positive integer"),
    ("ivfpq", {"m": 2.5}, "funnel.index_params.m: expected a positive integer"),
    ("exact", {"ef_search": 10}, "'ef_search' is not a parameter of the exact index"),
])
def test_bad_parameters_are_refused_naming_the_setting(kind, params, message, catalogue):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={"funnel": {"index": kind, "index_params": params}})
    with pytest.raises(FunnelSpecError, match=message):
        FunnelSettings(index=kind, index_params=params)
    with pytest.raises(ConfigError, match=message):
        EmbeddingIndex(*catalogue[:2], kind=kind, params=params)


def test_parameters_that_do_not_fit_the_catalogue_are_refused_naming_the_setting(catalogue):
    with pytest.raises(ConfigError, match="funnel.index_params.m: 5 sub-vectors do not divide"):
        EmbeddingIndex(*catalogue[:2], kind="ivfpq", params={"m": 5})
    with pytest.raises(ConfigError, match="funnel.index_params.nbits: 12 bits need at least"):
        EmbeddingIndex(*catalogue[:2], kind="ivfpq", params={"m": 8, "nbits": 12})
    with pytest.raises(ConfigError, match="funnel.index_params.M: an HNSW graph needs"):
        EmbeddingIndex(*catalogue[:2], kind="hnsw", params={"M": 1})


def test_the_config_carries_the_parameters_to_the_funnel():
    cfg = load_config(overrides={"funnel": {"index": "hnsw", "index_params": {"ef_search": 900}}})
    settings = FunnelSettings.from_config(cfg)
    assert settings.index == "hnsw" and settings.index_params == {"ef_search": 900}
    assert FunnelSettings(**settings.to_dict()).index_params == {"ef_search": 900}
    assert load_config().funnel.index_params == {}
