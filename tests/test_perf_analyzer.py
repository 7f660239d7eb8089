"""Triton's load generator beside our client (benchmarks/perf_analyzer.py).

perf_analyzer (fetched by scripts/get_perf_analyzer.sh when not installed) runs for a few
seconds at concurrency 2 against a real tritonserver: a tiny python model with the funnel's
inputs, and the session's small repository served by `recfunnel serve`. The figures are checked
for form only (no timed assertions); parsing and the input data are checked without a server.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_repo, recfunnel_serve
from test_triton_server import write_model

from benchmarks.perf_analyzer import (FAILED_NOTE, PerfAnalyzerMissing, PerfAnalyzerRequestFailed,
                                      find_perf_analyzer, input_data, measure, parse_report)
from recfunnel.models.features import UNKNOWN_USER, load_feature_tables
from recfunnel.serving import TritonServer
from recfunnel.serving.export import ROUTER, versions_in

REPO = Path(__file__).resolve().parents[1]

# The funnel's request (triton_repo/funnel/config.pbtxt.template) on a model that answers at
# once: items user+0..K-1; a negative user id is refused, as bad input is by the funnel.
FUNNEL_SHAPED = ("""
backend: "python"
max_batch_size: 0
input [
  { name: "USER_ID", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "K", data_type: TYPE_INT32, dims: [ 1 ], optional: true }
]
output [ { name: "ITEMS", data_type: TYPE_INT64, dims: [ -1, -1 ] } ]
instance_group [{ kind: KIND_CPU, count: 1 }]
""", """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            users = pb_utils.get_input_tensor_by_name(r, "USER_ID").as_numpy()
            k = pb_utils.get_input_tensor_by_name(r, "K")
            k = 10 if k is None else int(k.as_numpy()[0])
            if (users < 0).any():
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("USER_ID must be >= 0")))
                continue
            items = users[:, None] + np.arange(k)[None, :]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("ITEMS", items)]))
        return responses
""")

# What perf_analyzer 2.51 wrote and printed at concurrency 2 against FUNNEL_SHAPED (trimmed).
REPORT_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,\
Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,\
p90 latency,p95 latency,p99 latency
2,2736.61,2,344,161,14,117,79,1,683,877,931,3119
"""
REPORT_STDOUT = """Request concurrency: 2
  Client: 
    Request count: 20461
    Throughput: 2736.61 infer/sec
    p50 latency: 683 usec
"""


def assert_well_formed(figures: dict, concurrency: int) -> None:
    assert figures["client"] == "perf_analyzer" and figures["concurrency"] == concurrency
    assert 0 < figures["p50_ms"] <= figures["p90_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert figures["requests"] > 0 and figures["requests_per_s"] > 0
    assert figures["failed"] == 0


@pytest.fixture(scope="session")
def perf_analyzer() -> str:
    got = subprocess.run(["bash", str(REPO / "scripts" / "get_perf_analyzer.sh")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHON": sys.executable})
    if got.returncode != 0:
        pytest.skip("no perf_analyzer: scripts/get_perf_analyzer.sh could not fetch one: "
                    f"{got.stderr.strip()[-500:]}")
    return got.stdout.strip()


@pytest.fixture(scope="module")
def toy_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("perf_analyzer")
    write_model(root / "repo", "users", FUNNEL_SHAPED)
    with TritonServer(root / "repo", log_path=root / "tritonserver.log") as server:
        yield server


# ---- without a server --------------------------------------------------------------------------
def test_report_is_read_as_milliseconds_and_requests_per_second():
    figures = parse_report(REPORT_CSV, REPORT_STDOUT)
    assert figures["concurrency"] == 2 and figures["requests"] == 20461
    assert (figures["p50_ms"], figures["p95_ms"], figures["p99_ms"]) == (0.683, 0.931, 3.119)
    assert figures["requests_per_s"] == 2736.6
    assert figures["server_ms"]["queue"] == 0.161      # 161 usec


def test_input_data_is_one_request_per_row_with_k():
    steps = input_data(np.array([7, 10**9]), k=5)["data"]
    assert steps == [{"USER_ID": {"content": [7], "shape": [1]},
                      "K": {"content": [5], "shape": [1]}},
                     {"USER_ID": {"content": [10**9], "shape": [1]},
                      "K": {"content": [5], "shape": [1]}}]
    two_users = input_data(np.array([[1, 2], [3, 4]]))["data"]
    assert two_users[1] == {"USER_ID": {"content": [3, 4], "shape": [2]}}   # no K: the default


def test_missing_tool_names_the_get_script(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))                 # no perf_analyzer on PATH
    monkeypatch.setenv("RECFUNNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PerfAnalyzerMissing, match="scripts/get_perf_analyzer.sh"):
        find_perf_analyzer()


# ---- a real tritonserver -----------------------------------------------------------------------
@pytest.mark.server
def test_get_script_prints_a_binary_that_runs(perf_analyzer):
    got = subprocess.run([perf_analyzer, "--version"], capture_output=True, text=True)
    assert got.returncode == 0 and "Perf Analyzer Version" in got.stdout + got.stderr


@pytest.mark.server
def test_time_windows_at_concurrency_2_give_well_formed_figures(perf_analyzer, toy_server):
    # 1 s windows, any three within a factor 2 of each other: a noisy machine still settles.
    figures = measure(toy_server.grpc_address, "users", 2, np.arange(1, 301), k=10,
                      window_ms=1000, stability_pct=100, binary=perf_analyzer)
    assert_well_formed(figures, 2)
    assert figures["settings"]["mode"] == "time_windows" and figures["failed_note"] == FAILED_NOTE


@pytest.mark.server
def test_a_failed_request_stops_it_with_the_servers_message(perf_analyzer, toy_server):
    with pytest.raises(PerfAnalyzerRequestFailed, match="USER_ID must be >= 0"):
        measure(toy_server.grpc_address, "users", 2, np.array([1, 2, -3]), requests=50,
                binary=perf_analyzer)


@pytest.mark.server
def test_the_served_funnel_at_concurrency_2_gives_well_formed_figures(perf_analyzer,
                                                                      small_repo, tmp_path):
    repo = copy_repo(small_repo, tmp_path / "triton_repo")
    artifacts = repo / "user_features" / str(versions_in(repo)[-1]) / "artifacts"
    users = load_feature_tables(artifacts / "features")[0].index.to_numpy()
    users = np.append(users[users != UNKNOWN_USER][:200], 10**9)     # the last is unknown
    with recfunnel_serve(repo, tmp_path / "tritonserver.log") as server:
        figures = measure(server["grpc"], ROUTER, 2, users, k=10, requests=200,
                          binary=perf_analyzer)
    assert_well_formed(figures, 2)
    assert figures["requests"] == 200
