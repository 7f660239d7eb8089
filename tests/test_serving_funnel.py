"""The funnel served by a real tritonserver: export, serve, parity, bad input, rollout, shutdown.

The session's small run (tests/conftest.py: `small_run`, exported once by `recfunnel export` as
`small_repo`) is served from a copy with `recfunnel serve` on free loopback ports; the tests ask
it over HTTP and gRPC and compare with the same artifacts run in-process (models.funnel). Tests
that change the served repository put it back as it was; the shutdown test has its own server.
"""
import json
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import MAX_USERS, copy_repo, copy_run, recfunnel, recfunnel_serve
from test_triton_server import live_processes_in_group, port_is_free, wait_for

from recfunnel.serving import ServingError, TritonClient
from recfunnel.models.artifacts import ArtifactError, VersionMismatchError
from recfunnel.serving.export import (exclusions_from_dataset, export_version, models_in,
                                      versions_in)
from recfunnel.serving.funnel_client import FunnelClient, ask_funnel
from recfunnel.serving.server import free_ports

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def repo(small_repo, tmp_path_factory):
    """The module's own copy of the small repository, the one its server serves."""
    return copy_repo(small_repo, tmp_path_factory.mktemp("serving") / "triton_repo")


@pytest.fixture(scope="module")
def server(repo):
    with recfunnel_serve(repo, repo.parent / "tritonserver.log") as served:
        yield served


@pytest.fixture(scope="module")
def in_process(small_run):
    """The trained version as the pipeline wrote it, opened in this process with the same
    exclusions as the export: what the served answers must equal."""
    from recfunnel.models.funnel import Funnel, FunnelSettings

    seen, unsafe = exclusions_from_dataset(small_run.dir / "dataset",
                                           small_run.cfg.models.retrieval_positive)
    by_user = {int(u): i.to_numpy() for u, i in seen.groupby("user_id_raw")["item_id_raw"]}
    return Funnel(small_run.version_dir, FunnelSettings.from_config(small_run.cfg),
                  unsafe_raw=unsafe, seen=by_user), seen, unsafe


def test_export_command_writes_triton_version_1(small_repo):
    assert f"as Triton version 1 to {small_repo.path}" in small_repo.done.stdout
    assert versions_in(small_repo.path) == [1]


def test_serve_prints_its_addresses_on_loopback(server):
    text = "".join(server["stdout"])
    assert f"http {server['http']}" in text and f"grpc {server['grpc']}" in text
    assert "Started HTTPService at 127.0.0.1" in server["log"].read_text()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_funnel_equals_the_in_process_funnel(server, small_run, in_process, protocol):
    funnel, seen, unsafe = in_process
    known = funnel.users.index.to_numpy()
    users = np.concatenate([known[known >= 0][:5], [10**9]])          # the last is unknown
    with FunnelClient(server[protocol], protocol) as client:
        served = client.recommend(users, k=7)
    expected = funnel.recommend(users, k=7)
    np.testing.assert_array_equal(served.items, expected.items)
    np.testing.assert_allclose(served.score, expected.score, rtol=1e-6, atol=1e-7)
    assert list(served.objectives) == list(expected.objectives)
    for name, scores in expected.objectives.items():
        np.testing.assert_allclose(served.objectives[name], scores, rtol=1e-6, atol=1e-7)
    assert served.path.tolist() == ["model"] * 5 + ["fallback"]
    assert served.version == expected.version == small_run.version and served.model_version == 1
    # nothing the user has already seen, nothing unsafe
    for user, items in zip(users, served.items):
        assert not set(items) & set(seen.loc[seen.user_id_raw == user, "item_id_raw"])
        assert not set(items) & set(unsafe)


def test_served_feature_row_equals_the_offline_build_at_that_time(server, small_run, in_process):
    """One feature definition (L5.3): the row the served user_features stage answers for a user
    at a time is the row the dataset build's workflow computes for an example then."""
    from recfunnel.models.features import example_rows

    funnel = in_process[0]
    known = funnel.users.index.to_numpy()
    user = int(known[known >= 0][3])
    at_day = funnel.as_of_day + 4                     # four days after the newest event
    at = at_day * 86_400 + 3_600
    with TritonClient(server["http"]) as client:
        out = client.infer("user_features", {"USER_ID": np.array([user], np.int64),
                                             "TIME": np.array([at], np.int64)})
    served = pd.Series(out["USER_FEATURES"][0], index=funnel.users.columns)
    offline = example_rows(small_run.dir / "dataset", [user], [int(funnel.items.index[0])],
                           [pd.Timestamp(at, unit="s")]).iloc[0]
    model_inputs = [c for c in funnel.users.columns if c in offline.index]
    assert "user_days_since_last" in model_inputs and "user_events" in model_inputs
    np.testing.assert_array_equal(served[model_inputs].to_numpy(np.float32),
                                  offline[model_inputs].to_numpy(np.float32))
    assert served["request_day"] == at_day
    # and the whole funnel at that time equals the in-process funnel at that day
    with FunnelClient(server["http"]) as client:
        answer = client.recommend([user], k=5, at=at)
    expected = funnel.recommend([user], k=5, day=at_day)
    np.testing.assert_array_equal(answer.items, expected.items)
    np.testing.assert_allclose(answer.score, expected.score, rtol=1e-6, atol=1e-7)


def test_ranker_input_rows_equal_the_offline_build_at_that_time(small_run, in_process):
    """What the rankers score for (user, candidate) at a time, user, item and (user, item group)
    features included, is the dataset build's row for an example of that pair then."""
    from recfunnel.models.features import example_rows
    from recfunnel.models.funnel import pair_rows

    funnel = in_process[0]
    known = funnel.users.index.to_numpy()
    users = known[known >= 0][:3]
    items = funnel.items["item_id"].to_numpy()[:4]
    day = funnel.as_of_day + 2
    rows, _ = funnel.user_rows(users, day)
    served = pair_rows(rows, funnel.items, np.tile(items, (len(users), 1)), funnel.pairs)
    raw_items = funnel.raw_ids(np.tile(items, (len(users), 1))).reshape(-1)
    offline = example_rows(small_run.dir / "dataset", np.repeat(users, len(items)), raw_items,
                           np.full(len(raw_items), pd.Timestamp(day * 86_400 + 60, unit="s")))
    features = list(funnel.ranker("heavy_ranker").scorer.features)
    assert any(f.startswith("user_category_") for f in features)
    for f in features:
        np.testing.assert_allclose(np.asarray(served[f], np.float64), offline[f].to_numpy(np.float64),
                                   rtol=1e-6, atol=1e-6, err_msg=f)


def test_features_refresh_counts_new_events_without_retraining(small_run, tmp_path):
    """`recfunnel features refresh --events`: a known user's new clicks two days after the data
    raise their counts and move their last active day; the models stay as they were."""
    from recfunnel.models.features import load_feature_tables

    copy = copy_run(small_run, tmp_path / "runs" / small_run.dir.name)
    version = copy / small_run.version_dir.relative_to(small_run.dir)
    users, items = load_feature_tables(version / "features")
    user = int(users.index[users.index >= 0][0])
    item = int(items.index[0])
    when = pd.Timestamp((int(users["request_day"].iloc[0]) + 2) * 86_400, unit="s", tz="UTC")
    new = pd.DataFrame({"user_id": [user] * 3, "item_id": [item] * 3, "timestamp": [when] * 3,
                        "click": [1, 1, 1], "watch_seconds": [10.0] * 3,
                        "duration_seconds": [20.0] * 3})
    new.to_parquet(tmp_path / "new.parquet")
    heavy = (version / "heavy_ranker" / "manifest.json").read_text()
    done = recfunnel("features", "refresh", "--run-name", copy.name, "--runs-dir",
                         str(copy.parent), "--events", str(tmp_path / "new.parquet"))
    assert done.returncode == 0, done.stderr
    assert "(3 new)" in done.stdout
    after, _ = load_feature_tables(version / "features")
    assert after.loc[user, "user_events"] > users.loc[user, "user_events"]
    assert after.loc[user, "user_last_day"] == users["request_day"].iloc[0] + 2
    assert after["request_day"].iloc[0] == users["request_day"].iloc[0] + 3
    assert (version / "heavy_ranker" / "manifest.json").read_text() == heavy


def test_a_time_before_the_served_tables_is_refused(server, in_process):
    funnel = in_process[0]
    with TritonClient(server["http"]) as client:
        with pytest.raises(ServingError, match="TIME is before day"):
            client.infer("user_features", {"USER_ID": np.array([1], np.int64),
                                           "TIME": np.array([0], np.int64)})
    assert funnel.as_of_day > 0


def test_default_k_comes_from_the_exported_config(server, small_run):
    with FunnelClient(server["http"]) as client:
        served = client.recommend([1])
    assert served.items.shape == (1, small_run.cfg.models.eval_k)


@pytest.mark.parametrize("inputs, message", [
    ({"K": np.array([5], np.int32)}, "missing required input USER_ID"),
    ({"USER_ID": np.array([1]), "ITEM_ID": np.array([1])}, "unexpected inference input 'ITEM_ID'"),
    ({"USER_ID": np.array([1.0], np.float32)}, "'USER_ID' data-type is 'FP32', but model "
                                               "'funnel' expects 'INT64'"),
    ({"USER_ID": np.array([b"\xff\xfe"], dtype=object)}, "'USER_ID' data-type is 'BYTES'"),
    ({"USER_ID": np.array([[1, 2]])}, r"unexpected shape for input 'USER_ID'.*Expected \[-1\]"),
    ({"USER_ID": np.array([1]), "K": np.array([1, 2], np.int32)},
     r"unexpected shape for input 'K'"),
    ({"USER_ID": np.array([1]), "K": np.array([0], np.int32)}, "K must be at least 1, got 0"),
    ({"USER_ID": np.array([1]), "K": np.array([100_000], np.int32)},
     r"K 100000 is larger than the catalogue \(\d+ items\)"),
    ({"USER_ID": np.zeros(0, np.int64)}, "USER_ID is empty: send at least one raw user id"),
    ({"USER_ID": np.arange(MAX_USERS + 1)}, f"USER_ID holds {MAX_USERS + 1} users; this server "
                                            f"takes at most {MAX_USERS} per request"),
], ids=["missing", "extra", "dtype", "non-utf8", "shape", "k-shape", "k-zero", "k-too-large",
        "empty", "oversized"])
def test_bad_input_is_a_clear_error_and_the_server_serves_on(server, inputs, message):
    with TritonClient(server["http"]) as client:
        with pytest.raises(ServingError, match=message) as error:
            client.infer("funnel", inputs)
        assert error.value.status == "400"
        assert client.infer("funnel", {"USER_ID": np.array([1])})["ITEMS"].shape == (1, 10)


def _features(n, width):
    return np.zeros((n, width), np.float64)


STAGE_ABUSE = {   # (stage, inputs(width of the user features, candidates_k), message)
    "user_features-oversized": ("user_features", lambda w, c: {"USER_ID": np.arange(10_000)},
                                "10000 users in one request; this stage takes 1 to"),
    "candidates-mixed-batch": ("candidates", lambda w, c: {
        "USER_ID": np.array([1, 2]), "USER_FEATURES": _features(3, w),
        "PATH": np.array([b"model", b"model"], dtype=object)}, "batch sizes differ"),
    "candidates-bad-path": ("candidates", lambda w, c: {
        "USER_ID": np.array([1]), "USER_FEATURES": _features(1, w),
        "PATH": np.array([b"admin"], dtype=object)}, "PATH holds values other than"),
    "ranker-too-many-candidates": ("heavy_ranker", lambda w, c: {
        "USER_FEATURES": _features(1, w), "CANDIDATES": np.zeros((1, 100_000), np.int64),
        "KEEP": np.array([10], np.int32)}, r"CANDIDATES has shape \[1, 100000\]"),
    "ranker-ids-outside": ("light_ranker", lambda w, c: {
        "USER_FEATURES": _features(1, w), "CANDIDATES": np.array([[10**9]]),
        "KEEP": np.array([1], np.int32)}, "CANDIDATES holds ids outside"),
    "ranker-keep-negative": ("heavy_ranker", lambda w, c: {
        "USER_FEATURES": _features(1, w), "CANDIDATES": np.zeros((1, 5), np.int64),
        "KEEP": np.array([-1], np.int32)}, "KEEP must be one integer from 1 to 5"),
    "ranker-blend-nan": ("heavy_ranker", lambda w, c: {
        "USER_FEATURES": _features(1, w), "CANDIDATES": np.zeros((1, 5), np.int64),
        "KEEP": np.array([3], np.int32), "BLEND": np.array([b'{"click": NaN}'], dtype=object)},
        "BLEND weights must be finite numbers >= 0"),
    "ranker-blend-huge": ("heavy_ranker", lambda w, c: {
        "USER_FEATURES": _features(1, w), "CANDIDATES": np.zeros((1, 5), np.int64),
        "KEEP": np.array([3], np.int32),
        "BLEND": np.array([b'{"click": 1, "x": "' + b"y" * 5_000_000 + b'"}'], dtype=object)},
        "BLEND must be one JSON object of at most 4096 bytes"),
    "chain-oversized": ("chain", lambda w, c: _chain_rows(np.arange(10_000)),
                        "batch-size must be <= "),
    "chain-rows-disagree": ("chain", lambda w, c: {**_chain_rows(np.array([1, 2])),
                                                   "K": np.array([[3], [4]], np.int32)},
                            "K must hold one value, repeated for every user"),
    "chain-k-beyond-catalogue": ("chain", lambda w, c: {**_chain_rows(np.array([1])),
                                                        "K": np.array([[10**6]], np.int32)},
                                 "larger than the catalogue"),
    "chain-blend-nan": ("chain", lambda w, c: {
        **_chain_rows(np.array([1])), "BLEND": np.array([[b'{"click": NaN}']], dtype=object)},
        "BLEND weights must be finite numbers >= 0"),
}


def _chain_rows(users):
    """The chain's inputs for `users`: one row each, K 3, the tables' own day, the version's
    blend."""
    n = len(users)
    return {"USER_ID": np.asarray(users, np.int64).reshape(n, 1),
            "K": np.full((n, 1), 3, np.int32), "TIME": np.full((n, 1), -1, np.int64),
            "BLEND": np.full((n, 1), b"", dtype=object)}


@pytest.mark.parametrize("case", sorted(STAGE_ABUSE))
def test_every_stage_guards_itself_and_the_server_serves_on(server, in_process, case):
    """Each stage model is reachable on the funnel's port: what no router sends is a 400 with a
    short message that does not echo the payload, and the funnel still answers after it."""
    stage, make, message = STAGE_ABUSE[case]
    funnel = in_process[0]
    inputs = make(len(funnel.users.columns), funnel.settings.candidates_k)
    with TritonClient(server["http"]) as client:
        with pytest.raises(ServingError, match=message) as error:
            client.infer(stage, inputs)
        assert error.value.status == "400" and len(str(error.value)) < 1000
        assert client.infer("funnel", {"USER_ID": np.array([1])})["ITEMS"].shape == (1, 10)


def test_a_full_batch_is_served(server):
    with FunnelClient(server["grpc"], "grpc") as client:
        served = client.recommend(np.arange(MAX_USERS), k=3)
    assert served.items.shape == (MAX_USERS, 3) and set(served.path) <= {"model", "fallback"}


def test_recommend_command_prints_the_list_with_objective_scores(server, small_run):
    done = recfunnel("recommend", "--user", "1", "--user", "999999999", "--k", "3",
                         "--url", server["grpc"], "--protocol", "grpc", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "user 1: path model" in done.stdout
    assert "user 999999999: path fallback  (unknown to the models" in done.stdout
    assert "watch_duration_aware" in done.stdout
    assert f"training version {small_run.version} (Triton version 1)" in done.stdout
    assert len(re.findall(r"^\s+[123]\s+\d+\s+0\.\d{4}", done.stdout, re.M)) == 6
    done = recfunnel("recommend", "--user", "1", "--k", "0", "--url", server["http"],
                         timeout=60)
    assert done.returncode == 2 and "K must be at least 1" in done.stderr


def test_ask_funnel_gives_the_demo_its_serving_section(server, small_run, in_process):
    known = in_process[0].users.index.to_numpy()
    summary = ask_funnel(server["grpc"], [*known[known >= 0][:3], 10**9], k=3)
    assert summary["requests"] == 4 and summary["errors"] == 0
    assert summary["paths"] == {"model": 3, "fallback": 1}
    assert summary["version"] == small_run.version and len(summary["example"]["items"]) == 3
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


def test_every_stage_reports_its_statistics(server, repo, in_process):
    """The router and the chain it calls count the request; each stage model counts its own
    (the funnel's stages answer directly too)."""
    funnel = in_process[0]
    with TritonClient(server["http"]) as client:
        client.infer("funnel", {"USER_ID": np.array([1, 2])})
        rows, path = funnel.user_rows(np.array([1]))
        client.infer("user_features", {"USER_ID": np.array([1])})
        client.infer("candidates", {"USER_ID": np.array([1]), "USER_FEATURES": np.column_stack(
            [np.asarray(rows[c], np.float64) for c in funnel.users.columns]),
            "PATH": np.array([path[0].encode()], dtype=object)})
        for ranker in funnel.settings.ranker_names:
            client.infer(ranker, {"USER_FEATURES": np.zeros((1, len(funnel.users.columns))),
                                  "CANDIDATES": funnel.items["item_id"].to_numpy(np.int64)[None, :5],
                                  "KEEP": np.array([2], np.int32)})
        stats = client.model_statistics()
    assert set(models_in(repo)) <= set(stats)
    for model in models_in(repo):
        assert stats[model].requests > 0 and stats[model].compute_ms > 0, model


def relabelled_copy(version_dir: Path, out: Path, version: str) -> Path:
    """The trained version's artifacts under another version id: a stand-in for a retraining."""
    from recfunnel.models.artifacts import MANIFEST, write_manifest

    shutil.copytree(version_dir, out)
    for manifest in out.glob(f"*/{MANIFEST}"):
        m = json.loads(manifest.read_text())
        write_manifest(manifest.parent, version, m["kind"], m["schema"], m["config"], m["metrics"])
    return out


def test_the_server_assigns_experiment_arms_and_serves_each_its_variant(server, small_run, repo,
                                                                       in_process):
    from recfunnel.experiments.assignment import EXPERIMENT_FILE, Experiment

    funnel, _, _ = in_process
    done = recfunnel("experiment", "start", "--repo", str(repo))
    assert done.returncode == 0 and "holdout on Triton version 1" in done.stdout, done.stderr
    experiment = Experiment.load(repo / EXPERIMENT_FILE)
    known = funnel.users.index.to_numpy()
    users = known[known >= 0][:MAX_USERS]
    try:
        with FunnelClient(server["grpc"], "grpc") as client:
            served = client.recommend(users, k=7)
    finally:
        stopped = recfunnel("experiment", "stop", "--repo", str(repo))
    assert stopped.returncode == 0, stopped.stderr
    arms = experiment.assign(users)
    assert served.arm.tolist() == arms.tolist()
    assert {"control", "treatment"} <= set(arms)
    for arm in set(arms):                       # each arm's list is its blend's, in process
        rows = arms == arm
        expected = funnel.recommend(users[rows], k=7,
                                    blend_weights=experiment.arm(arm).blend)
        np.testing.assert_array_equal(served.items[rows], expected.items)
        np.testing.assert_allclose(served.score[rows], expected.score, rtol=1e-6, atol=1e-7)
    control = arms == "control"
    assert (served.items[control] != funnel.recommend(users[control], k=7).items).any()
    assert (served.model_versions == 1).all()
    with FunnelClient(server["http"]) as client:           # stopped: everyone is "default"
        assert set(client.recommend(users[:5], k=3).arm) == {"default"}


def test_a_server_side_failure_is_counted_in_the_metrics_a_client_error_is_not(server, repo):
    """A broken experiment (an arm blending an objective the version does not have) fails in
    the heavy ranker: the funnel raises, so Triton counts it in nv_inference_request_failure
    (an error *response* would count as a success); a bad K is the client's, not counted."""
    from recfunnel.experiments.assignment import EXPERIMENT_FILE, Arm, Experiment
    from recfunnel.monitoring import parse_exposition, serving_window

    metrics = TritonClient(server["http"], metrics_url=f"http://127.0.0.1:{server['ports'][2]}"
                                                       "/metrics")
    before = parse_exposition(metrics.metrics_text())
    Experiment("broken", [Arm("only", 1.0, {"no_such_objective": 1.0})]).save(
        repo / EXPERIMENT_FILE)
    try:
        with FunnelClient(server["http"]) as client:
            with pytest.raises(ServingError, match="no_such_objective"):
                client.recommend([1], k=3)
    finally:
        (repo / EXPERIMENT_FILE).unlink()
    with FunnelClient(server["http"]) as client:
        with pytest.raises(ServingError, match="K must be at least 1"):
            client.recommend([1], k=0)
        assert client.recommend([1], k=3).arm.tolist() == ["default"]   # serves on
    window = serving_window(before, parse_exposition(metrics.metrics_text()))
    funnel = window.models["funnel"]
    assert funnel.failures == 1 and funnel.successes == 2      # the bad K counts as answered
    metrics.close()


def test_the_chain_counts_each_stage_s_time_on_the_metrics(server, small_run):
    """Triton sees the chain as one model: its stages' ms and passes are our own counters."""
    from recfunnel.models.funnel import FunnelSettings
    from recfunnel.monitoring import parse_exposition

    metrics = TritonClient(server["http"], metrics_url=f"http://127.0.0.1:{server['ports'][2]}"
                                                       "/metrics")
    spent, passes = "recfunnel_chain_stage_ms_total", "recfunnel_chain_stage_passes_total"
    totals = lambda scrape, name: {s.labels["stage"]: s.value  # noqa: E731
                                   for s in scrape.series(name, version=small_run.version)}
    before = parse_exposition(metrics.metrics_text())
    with FunnelClient(server["http"]) as client:
        client.recommend([1, 2, 3], k=5)
    after = parse_exposition(metrics.metrics_text())
    metrics.close()
    stages = ["features", "retrieval", *FunnelSettings.from_config(small_run.cfg).ranker_names]
    assert sorted(totals(after, spent)) == sorted(stages)
    grew = {stage: totals(after, passes)[stage] - totals(before, passes).get(stage, 0)
            for stage in stages}
    assert all(n >= 1 for n in grew.values()), grew
    assert all(totals(after, spent)[stage] > totals(before, spent).get(stage, 0)
               for stage in stages)


def test_simulated_ab_test_through_the_served_funnel(server, small_run, repo, tmp_path):
    from recfunnel.config import load_config, merge
    from recfunnel.data import schema
    from recfunnel.experiments.ab_test import run_ab_test
    from recfunnel.experiments.assignment import EXPERIMENT_FILE

    cfg = small_run.cfg
    small = merge(cfg.to_dict(), {"experiments": {"sim_users": 150, "sim_days": 2,
                                                  "aa_runs": 200}})
    run = copy_run(small_run, tmp_path / "demo", repo)       # its triton_repo: the served one
    section = run_ab_test(run, load_config(None, small), progress=False, address=server["grpc"])
    assert section["outcome"] in ("ship treatment", "keep control",
                                  "no decision: not significant")
    assert sum(section["arms"].values()) == 150 and section["served"]["model_versions"] == [1]
    assert section["decision"]["srm"]["blocked"] is False
    assert {row["arm"] for row in section["online"]} <= {"control", "treatment", "holdout"}
    assert 0 <= section["aa"]["false_positive_rate"] <= 1 and section["power"]["n_per_arm"] > 0
    logged = pd.read_parquet(run / "experiments" / "events.parquet")
    assert set(schema.EVENTS.names) <= set(logged.columns)
    assert set(logged["day"]) <= {cfg.data.synthetic.n_days, cfg.data.synthetic.n_days + 1}
    assert json.loads((run / "experiments" / "analysis.json").read_text())["arms"] == \
        section["arms"]
    assert not (repo / EXPERIMENT_FILE).exists()          # the repository is as it was


def test_feedback_loop_retrains_on_the_logs_it_produced(small_run, tmp_path):
    """One retrain on the system's own logs: the round-1 model is trained on the original
    events plus round 0's simulated ones; the holdout stays on round 0's version."""
    from recfunnel.config import load_config, merge
    from recfunnel.experiments.feedback_loop import run_feedback_loop
    from recfunnel.pipeline import retrain_on_logs

    cfg = load_config(None, merge(small_run.cfg.to_dict(), {"experiments": {"sim_days": 2}}))
    run = copy_run(small_run, tmp_path / "demo")
    section = run_feedback_loop(run, cfg, retrain_on_logs(cfg, False), rounds=1, progress=False)
    first, second = section["rounds"]
    assert first["version"] == small_run.version != second["version"]
    loop = run / "experiments" / "feedback_loop"
    logged = pd.read_parquet(loop / "data" / "events" / "round-0.parquet")
    original = json.loads((run / "summary.json").read_text())["data"]["events"]
    retrained = json.loads((loop / "runs" / "round-1" / "summary.json").read_text())
    assert retrained["data"]["events"] + retrained["data"]["quarantined_rows"] == \
        original + len(logged)
    assert retrained["data"]["quarantined_rows"] == 0           # our own logs are valid events
    for r in (first, second):
        for group in ("treated", "holdout"):
            curve = r[group]["concentration"]
            assert curve[0] == 0 and curve[-1] == 100 and curve == sorted(curve)
            assert 0 < r[group]["coverage"] <= 1
    assert section["holdout_users"] > 0
    assert {"lift", "p_value", "lift_ci"} <= set(second["treated_vs_holdout"])
    assert json.loads((loop / "feedback_loop.json").read_text()) == section


def test_export_refuses_altered_and_mixed_artifacts(small_run, tmp_path):
    from recfunnel.models.funnel import FunnelSettings

    settings = FunnelSettings.from_config(small_run.cfg)
    repo = tmp_path / "repo"
    altered = relabelled_copy(small_run.version_dir, tmp_path / "altered", "v-altered")
    with open(altered / "light_ranker" / "saved_model.pb", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="saved_model.pb does not match its sha256"):
        export_version(altered, small_run.dir / "dataset", repo, settings)
    mixed = relabelled_copy(small_run.version_dir, tmp_path / "mixed", "v-mixed")
    shutil.rmtree(mixed / "heavy_ranker")
    shutil.copytree(altered / "heavy_ranker", mixed / "heavy_ranker")
    with pytest.raises(VersionMismatchError, match="cannot be mixed"):
        export_version(mixed, small_run.dir / "dataset", repo, settings)
    assert not repo.exists() or versions_in(repo) == []
    assert not list(tmp_path.glob(".repo.staging-*"))        # nothing half-written left behind


def test_serving_a_tampered_repository_is_exit_2_with_the_checksum_error(small_repo, tmp_path):
    """`recfunnel serve` on an exported repository one of whose files was altered: the stage
    refuses to load, and the command says which file failed its checksum, without a traceback."""
    repo = copy_repo(small_repo, tmp_path / "triton_repo")
    altered = sorted((repo / "heavy_ranker").glob("*/artifacts/**/saved_model.pb"))[0]
    with open(altered, "ab") as f:
        f.write(b"\0")
    ports = free_ports(3)
    done = recfunnel("serve", "--repo", str(repo), "--http-port", str(ports[0]), "--grpc-port",
                     str(ports[1]), "--metrics-port", str(ports[2]),
                     "--log", str(tmp_path / "server.log"), timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "cannot be served" in done.stderr and "does not match its sha256" in done.stderr
    assert "Traceback" not in done.stderr


class ContinuousRequests:
    """A thread asking the funnel without pause (gRPC) until stopped: the answers' (Triton
    version, training version) in order, and every failure."""

    def __init__(self, address: str, limit_s: float = 200):
        self.answers, self.failures = [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ask, args=(address, limit_s))

    def _ask(self, address, limit_s):
        with FunnelClient(address, "grpc", timeout_s=30) as client:
            deadline = time.monotonic() + limit_s             # bounded in time and in count
            while not self._stop.is_set() and time.monotonic() < deadline \
                    and len(self.answers) < 50_000:
                try:
                    served = client.recommend([1, 10**9], k=5)
                    self.answers.append((served.model_version, served.version))
                except ServingError as e:
                    self.failures.append(str(e))

    def wait_for_answers(self, model_version: int, timeout_s: float) -> None:
        wait_for(lambda: self.answers and self.answers[-1][0] == model_version, timeout_s,
                 f"Triton version {model_version} to answer")
        n = len(self.answers)
        wait_for(lambda: len(self.answers) > n + 5, 30, f"more answers from {model_version}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_rollout_and_rollback_under_load_without_failed_requests(server, small_run, repo, tmp_path):
    from recfunnel.models.funnel import FunnelSettings

    retrained = relabelled_copy(small_run.version_dir, tmp_path / "v2", "20991231T000000Z-aaaaaa")
    with ContinuousRequests(server["grpc"]) as asking:
        asking.wait_for_answers(1, 30)
        result = export_version(retrained, small_run.dir / "dataset", repo,
                                FunnelSettings.from_config(small_run.cfg))
        assert result.triton_version == 2 and versions_in(repo) == [1, 2]
        asking.wait_for_answers(2, 200)          # three TensorFlow stages load meanwhile
        holdout_stays_on_version_1(server, repo)
        done = recfunnel("export", "--repo", str(repo), "--retire", "2", timeout=60)
        assert done.returncode == 0 and "versions left: [1]" in done.stdout, done.stderr
        asking.wait_for_answers(1, 60)
    assert asking.failures == []
    answers = asking.answers
    assert set(answers) == {(1, small_run.version), (2, "20991231T000000Z-aaaaaa")}   # not mixed
    switches = [b for a, b in zip(answers, answers[1:]) if a[0] != b[0]]
    assert [s[0] for s in switches] == [2, 1]
    record = json.loads((repo / "versions.json").read_text())
    assert "retired" in record["2"] and record["1"]["training_version"] == small_run.version


def holdout_stays_on_version_1(server, repo):
    """With an experiment pinning its holdout to version 1, one request serves a holdout user
    at version 1 and a treated user at the new version 2."""
    from recfunnel.config import load_config
    from recfunnel.experiments.assignment import EXPERIMENT_FILE, HOLDOUT, Experiment

    experiment = Experiment.from_config(load_config().experiments, holdout_version=1)
    users = np.arange(1, 301)
    arms = experiment.assign(users)
    pair = [users[arms == HOLDOUT][0], users[arms == "treatment"][0]]
    experiment.save(repo / EXPERIMENT_FILE)
    try:
        with FunnelClient(server["grpc"], "grpc") as client:
            served = client.recommend(pair, k=5)
    finally:
        (repo / EXPERIMENT_FILE).unlink()
    assert served.arm.tolist() == [HOLDOUT, "treatment"]
    assert served.model_versions.tolist() == [1, 2]


def test_sigterm_stops_the_server_cleanly(small_repo, tmp_path):
    """Its own server (the module's serves the other tests), asked as they ask it, then
    stopped: tritonserver exits by itself with code 0, frees its ports, and no stub is left."""
    repo = copy_repo(small_repo, tmp_path / "triton_repo")
    with recfunnel_serve(repo, tmp_path / "tritonserver.log") as server:
        with FunnelClient(server["grpc"], "grpc") as client:
            assert set(client.recommend(np.arange(MAX_USERS), k=3).path) <= {"model", "fallback"}
        with FunnelClient(server["http"]) as client:
            client.recommend([1, 10**9], k=5)
            with pytest.raises(ServingError, match="K must be at least 1"):
                client.recommend([1], k=0)
        cli = server["cli"]
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=90) == 0, server["log"].read_text()[-3000:]
        # "stopped" alone: tritonserver exited by itself with code 0, not killed at the timeout
        assert cli.stdout.read().strip().endswith("\nstopped")
    assert all(port_is_free(p) for p in server["ports"])
    wait_for(lambda: not live_processes_in_group(server["pid"]), 10, "the stage stubs to end")
