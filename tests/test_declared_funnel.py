"""The declared funnel (models.components, models.funnel.FunnelSettings, config `funnel:`).

Two parts. A contract suite every registered candidate source, filter and ranker must pass, in
the spirit of scikit-learn's `parametrize_with_checks`: shapes, -1 padding, exclusions honoured,
determinism, the training version carried, bad input refused. Then the swaps the config makes
possible, each served by a real tritonserver and equal to the in-process funnel of the same
declaration: MF with a popularity source beside it instead of the two-tower, no light ranker.
"""
import json
import time

import numpy as np
import pytest

from recfunnel.models.candidates import RETRIEVAL_SCORE
from recfunnel.models.components import FILTERS, RANKERS, SELECTORS, SOURCES
from recfunnel.models.funnel import Funnel, FunnelSettings, FunnelSpecError, pair_rows
from recfunnel.serving.export import (ServingSettings, exclusions_from_dataset, export_version,
                                      stage_environment, versions_in)
from recfunnel.serving.funnel_client import FunnelClient
from recfunnel.serving.server import TritonServer


@pytest.fixture(scope="module")
def trained(small_run):
    """The session's small run (conftest) opened as the export opens it (its exclusions), under
    any declaration."""
    seen, unsafe = exclusions_from_dataset(small_run.dir / "dataset",
                                           small_run.cfg.models.retrieval_positive)
    by_user = {int(u): i.to_numpy() for u, i in seen.groupby("user_id_raw")["item_id_raw"]}

    def open_(settings=None):
        return Funnel(small_run.version_dir,
                      settings or FunnelSettings.from_config(small_run.cfg),
                      unsafe_raw=unsafe, seen=by_user)
    return {"dir": small_run.dir, "cfg": small_run.cfg, "version_dir": small_run.version_dir,
            "open": open_, "seen": seen, "unsafe": unsafe}


def some_users(funnel, n=4):
    """n known users and one nobody has seen, their request and the filters' exclusions."""
    known = funnel.users.index.to_numpy()
    users = np.r_[known[known >= 0][:n], 10**9]
    rows, path = funnel.user_rows(users)
    request = funnel.request(users, rows, path)
    return users, request, funnel.exclusions(request)


# ---- the contract every registered component keeps -------------------------------------------
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_source_keeps_the_contract(trained, name):
    funnel = trained["open"]()
    source = SOURCES[name].open(funnel.root, funnel.settings, funnel)
    users, request, exclude = some_users(funnel)
    k = 20
    ids, scores = source.candidates(request, k, exclude)
    assert ids.shape == scores.shape == (len(users), k) and ids.dtype == np.int64
    assert source.version == funnel.version                       # the version carried
    catalogue = set(funnel.items["item_id"])
    for row, (i, s) in enumerate(zip(ids, scores)):
        real = i >= 0
        first_pad = int(np.argmin(real)) if not real.all() else len(real)
        assert real[:first_pad].all() and not real[first_pad:].any()   # -1 only at the end
        assert set(i[real]) <= catalogue and len(set(i[real])) == real.sum()  # no repeats
        assert not set(i[real]) & set(exclude[row])                # exclusions honoured
        assert np.all(np.isneginf(s[~real]))                       # padding scores -inf
        assert np.all(np.diff(s[real]) <= 1e-6)                    # best first
    if not source.serves_unknown_users:                            # the fallback's job
        assert np.all(ids[-1] == -1)
    else:
        assert (ids[-1] >= 0).all()
    again = source.candidates(request, k, exclude)
    np.testing.assert_array_equal(again[0], ids)                   # deterministic
    wide = source.candidates(request, len(catalogue) + 5, exclude)[0]
    assert wide.shape[1] == len(catalogue) + 5 and (wide[:, -5:] == -1).all()   # padded
    with pytest.raises(ValueError, match="k must be positive"):
        source.candidates(request, 0, exclude)


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_filter_keeps_the_contract(trained, name):
    funnel = trained["open"]()
    one = FILTERS[name].open(funnel.root, funnel.settings, funnel)
    users, request, _ = some_users(funnel)
    excluded = one.excluded(request)
    assert len(excluded) == len(users)
    catalogue = set(funnel.items["item_id"])
    for items in excluded:
        assert items.dtype == np.int64 and set(items) <= catalogue
    assert all(np.array_equal(a, b) for a, b in zip(excluded, one.excluded(request)))
    if name == "seen":        # what the caller excludes replaces what the user has seen
        raw = funnel.items.index.to_numpy()[:3]
        asked = funnel.request(users, request.rows, np.where(request.known, "model", "fallback"),
                               [raw] * len(users))
        assert all(set(e) == set(funnel.item_ids(raw)) for e in one.excluded(asked))
        assert len(excluded[0]) == len(funnel.item_ids(trained["seen"].loc[
            trained["seen"].user_id_raw == users[0], "item_id_raw"]))
    if name == "unsafe":
        assert all(set(e) == set(funnel.item_ids(trained["unsafe"])) for e in excluded)


@pytest.mark.parametrize("name", sorted(RANKERS))
def test_every_ranker_keeps_the_contract(trained, name):
    funnel = trained["open"]()
    ranker = funnel.ranker(name)
    users, request, _ = some_users(funnel)
    items = funnel.items["item_id"].to_numpy()[None, :6].repeat(len(users), 0)
    rows = pair_rows(request.rows, funnel.items, items, funnel.pairs)
    scores = ranker.score(rows)
    assert ranker.version == funnel.version and list(scores) == ranker.objectives
    for values in scores.values():
        assert values.shape == (len(rows),) and np.isfinite(values).all()
    again = ranker.score(rows)
    assert all(np.array_equal(again[o], scores[o]) for o in scores)   # deterministic
    needed = [f for f in ranker.scorer.features if f not in (RETRIEVAL_SCORE, "item_id")]
    with pytest.raises(ValueError, match="needs features"):
        ranker.score(rows.drop(columns=needed[:1]))


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_every_selector_keeps_the_contract(name):
    selector = SELECTORS[name]()
    candidates = np.array([[5, 3, 9, -1], [7, -1, -1, -1]])
    scores = {"click": np.array([0.1, 0.9, 0.5, 0.99, 0.3, 0.8, 0.8, 0.8])}
    kept, blended, per = selector.select(candidates, scores, 3, {"click": 1.0})
    assert sorted(kept[0].tolist()) == [3, 5, 9]
    assert kept[1].tolist() == [7, -1, -1]                          # padding never ahead
    assert np.isneginf(blended[1, 1:]).all() and per["click"].shape == (2, 3)
    assert (np.diff(blended[0]) <= 0).all()                         # best first
    order = {int(c): i for i, c in enumerate(candidates[0])}        # each kept item's scores
    assert per["click"][0].tolist() == [scores["click"][order[c]] for c in kept[0]]


def test_blend_orders_by_the_blend_and_fusion_keeps_the_input_in_the_order():
    candidates = np.array([[5, 3, 9, -1]])                  # the stage's input order: 5, 3, 9
    scores = {"click": np.array([0.1, 0.9, 0.5, 0.99])}     # the ranker's: 3, 9, 5
    select = lambda s: s.select(candidates, scores, 3, {"click": 1.0})[0][0].tolist()  # noqa
    assert select(SELECTORS["blend"]()) == [3, 9, 5]
    assert select(SELECTORS["fusion"](input_weight=0.0)) == [3, 9, 5]
    assert select(SELECTORS["fusion"](input_weight=1.0)) == [5, 3, 9]
    # halfway: 3 (ranks 1 and 0) before 5 (0 and 2) before 9 (2 and 1)
    assert select(SELECTORS["fusion"](input_weight=0.5, offset=20)) == [3, 5, 9]


# ---- the declaration is checked ------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"sources": [{"name": "two_towers", "share": 1.0}]}, "unknown source 'two_towers'"),
    ({"sources": [{"name": "two_tower", "share": 0.5}]}, "shares must sum to 1"),
    ({"sources": []}, "sources is empty"),
    ({"filters": ["seen", "seen"]}, "named twice"),
    ({"rankers": [{"name": "light_ranker"}, {"name": "heavy_ranker"}]}, "needs keep >= 1"),
    ({"rankers": [{"name": "deep_ranker"}]}, "unknown ranker 'deep_ranker'"),
    ({"blend": {"click": float("nan")}}, "finite weights"),
    ({"index": "annoy"}, "index must be one of exact, hnsw, ivf, ivfpq"),
    ({"selector": "fusion", "selector_params": {"input_weight": 1.5}}, "input_weight must be in"),
    ({"selector": "fusion", "selector_params": {"weight": 0.5}}, "not a parameter of fusion"),
    ({"selector": "blend", "selector_params": {"input_weight": 0.5}}, "takes no selector_params"),
    ({"index": "hnsw", "index_params": {"nprobe": 8}}, "funnel.index_params: .nprobe. is not"),
])
def test_a_wrong_declaration_is_refused_naming_the_setting(change, message):
    with pytest.raises(FunnelSpecError, match=message):
        FunnelSettings(**change)


def test_quotas_split_the_candidates_by_share():
    settings = FunnelSettings(sources=[{"name": "two_tower", "share": 0.7},
                                       {"name": "popularity", "share": 0.3}])
    assert settings.quotas(500) == [350, 150] and settings.quotas(7) == [5, 2]
    assert settings.keeps(10) == [100, 10] and FunnelSettings(rankers=[]).keeps(10) == []


def test_sources_share_the_list_without_repeating_an_item(trained):
    shared = FunnelSettings(sources=[{"name": "two_tower", "share": 0.5},
                                     {"name": "popularity", "share": 0.5}], candidates_k=40)
    funnel = trained["open"](shared)
    users, request, exclude = some_users(funnel)
    ids, _ = funnel.retrieve(request, exclude)
    alone = trained["open"](FunnelSettings(candidates_k=20)).retrieve(request, exclude)[0]
    for row in range(len(users) - 1):                       # known users: half each
        assert len(set(ids[row])) == 40 and set(ids[row, :20]) == set(alone[row])
    assert (ids[-1] >= 0).all()                             # the unknown user: popularity


# ---- swaps by config, through the real server -------------------------------------------------
# Two swaps (each Triton version loads in about a minute): the sources replaced and mixed in
# one, a stage removed in the other.
SWAPS = {
    "mf instead of the two-tower, popularity beside it": {
        "sources": [{"name": "mf", "share": 0.7}, {"name": "popularity", "share": 0.3}]},
    "no light ranker": {"rankers": [{"name": "heavy_ranker"}]},
}


@pytest.mark.server
def test_each_swap_is_a_config_change_served_as_declared(trained, tmp_path):
    """One server; each swap exported as the next Triton version of the same trained version
    (with `recfunnel export --set` it is the same call): the server moves to it, and what it
    answers equals the in-process funnel of that declaration."""
    # cuts below the small catalogue (200 items), so that each stage makes a difference
    base = FunnelSettings(**{**FunnelSettings.from_config(trained["cfg"]).to_dict(),
                             "candidates_k": 30, "rankers": [{"name": "light_ranker", "keep": 10},
                                                             {"name": "heavy_ranker"}]})
    repo = tmp_path / "repo"
    dataset = trained["dir"] / "dataset"
    label = trained["cfg"].models.retrieval_positive
    export_version(trained["version_dir"], dataset, repo, base, label=label)
    funnel = trained["open"](base)
    users = some_users(funnel)[0]
    before = funnel.recommend(users, k=5).items
    with TritonServer(repo, model_control_mode="poll", repository_poll_secs=1,
                      log_path=tmp_path / "tritonserver.log", env=stage_environment()) as server, \
            FunnelClient(server.grpc_address, "grpc") as client:
        for n, (swap, change) in enumerate(SWAPS.items(), start=2):
            settings = FunnelSettings(**{**base.to_dict(), **change})
            # the router's two paths take turns: one call to the chain, or one per stage
            path = "stages" if n % 2 else "chain"
            export_version(trained["version_dir"], dataset, repo, settings, label=label,
                           serving=ServingSettings(path=path))
            deadline = time.monotonic() + 240
            while (served := client.recommend(users, k=5)).model_version != n:
                assert time.monotonic() < deadline, f"{swap}: version {n} never served"
                time.sleep(0.5)
            expected = trained["open"](settings).recommend(users, k=5)
            assert not np.array_equal(expected.items, before), f"{swap} changes nothing here"
            np.testing.assert_array_equal(served.items, expected.items, err_msg=f"{swap} {path}")
            np.testing.assert_allclose(served.score, expected.score, rtol=1e-6, atol=1e-7)
            assert list(served.objectives) == list(expected.objectives), swap
        assert versions_in(repo)[-1] == len(SWAPS) + 1
    record = json.loads((repo / "versions.json").read_text())
    assert record[str(len(SWAPS) + 1)]["stages"] == ["user_features", "candidates", "heavy_ranker"]
