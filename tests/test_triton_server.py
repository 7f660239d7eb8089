"""A real tritonserver on free loopback ports, serving toy python-backend models.

Checks the serving infrastructure that `triton_repo/` runs on: inference over HTTP and gRPC,
error responses that leave the server serving, statistics, metrics, a version rollout and
rollback under poll mode with no failed request, and a clean shutdown from SIGINT.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recfunnel.serving import ServingError, TritonClient, TritonServer, TritonServerError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.server          # every test but one starts a tritonserver


def python_model_config(tensor_in: str, tensor_out: str) -> str:
    """config.pbtxt of a python-backend model: one input, one output, batches of up to 8.

    Each tensor is "NAME TYPE DIM", e.g. "X TYPE_FP32 -1". No EXECUTION_ENV_PATH: the stub
    finds the venv through PATH (see recfunnel.serving.server).
    """
    def tensor(spec):
        name, dtype, dim = spec.split()
        return f'[{{ name: "{name}", data_type: {dtype}, dims: [ {dim} ] }}]'
    return (f'backend: "python"\nmax_batch_size: 8\ninput {tensor(tensor_in)}\n'
            f'output {tensor(tensor_out)}\ninstance_group [{{ kind: KIND_CPU, count: 1 }}]\n')


ADD_ONE = (python_model_config("X TYPE_FP32 -1", "Y TYPE_FP32 -1"), """
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        print("python model prefix:", sys.prefix, flush=True)      # lands in the server log

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)]) for r in requests]
""")

# Bad input gets an error response naming the problem; the other requests are unaffected.
GREET = (python_model_config("NAME TYPE_STRING 1", "GREETING TYPE_STRING 1"), """
import numpy as np
import triton_python_backend_utils as pb_utils


def greet(names):
    out = []
    for name in names.reshape(-1):
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"NAME {name!r} is not UTF-8 text")
        if not text:
            raise ValueError("NAME is empty; send a non-empty string")
        out.append(f"hello {text}".encode())
    return np.array(out, dtype=object).reshape(names.shape)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            try:
                greeting = greet(pb_utils.get_input_tensor_by_name(r, "NAME").as_numpy())
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("GREETING", greeting)]))
        return responses
""")

# Answers with its own version, as every funnel response carries the model version.
VERSIONED = (python_model_config("X TYPE_INT32 1", "VERSION TYPE_INT32 1"), """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.version = int(args["model_version"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("VERSION", np.full_like(
            pb_utils.get_input_tensor_by_name(r, "X").as_numpy(), self.version))])
            for r in requests]
""")


def write_model(repo: Path, name: str, model: tuple[str, str], version: int = 1) -> Path:
    config, code = model
    (repo / name / str(version)).mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / str(version) / "model.py").write_text(textwrap.dedent(code).lstrip())
    return repo / name


def port_is_free(port: int) -> bool:
    """Nobody listens on `port` (connections in TIME_WAIT, as after any server, are fine)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton") / "repo"
    write_model(repo, "add_one", ADD_ONE)
    write_model(repo, "greet", GREET)
    write_model(repo, "versioned", VERSIONED)
    return repo


@pytest.fixture(scope="module")
def server(toy_repo, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton-log") / "tritonserver.log"
    with TritonServer(toy_repo, model_control_mode="poll", repository_poll_secs=1,
                      log_path=log) as server:
        yield server


@pytest.fixture(params=["http", "grpc"])
def client(server, request):
    with TritonClient.for_server(server, request.param) as client:
        yield client


def test_server_binds_loopback_on_free_ports(server):
    assert server.running and server.is_ready()
    assert len(set(server.ports.values())) == 3
    assert server.http_address.startswith("127.0.0.1:")
    assert "Started HTTPService at 127.0.0.1" in server.log_path.read_text()


def test_python_models_run_in_this_venv(server):
    assert f"python model prefix: {sys.prefix}\n" in server.log_path.read_text()


def test_infer_returns_numpy_arrays(client):
    assert client.is_ready() and client.is_model_ready("add_one")
    x = np.array([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]], dtype=np.float32)
    out = client.infer("add_one", {"X": x})
    np.testing.assert_array_equal(out["Y"], x + 1)
    assert out["Y"].dtype == np.float32
    greeting = client.infer("greet", {"NAME": np.array([["ana"], ["zoë"]])}, ["GREETING"])
    assert greeting["GREETING"].tolist() == [[b"hello ana"], ["hello zoë".encode()]]


@pytest.mark.parametrize("name, message", [
    (b"", "NAME is empty"), (b"\xff\xfe", "is not UTF-8 text")])
def test_bad_input_is_an_error_response_and_the_server_keeps_serving(client, name, message):
    with pytest.raises(ServingError, match=message) as error:
        client.infer("greet", {"NAME": np.array([[name]], dtype=object)})
    assert error.value.status in ("400", "StatusCode.INVALID_ARGUMENT")
    assert client.infer("greet", {"NAME": np.array([[b"bo"]], dtype=object)})["GREETING"][0, 0] \
        == b"hello bo"


def test_server_side_refusals_carry_tritons_message(client):
    with pytest.raises(ServingError, match="unknown_model"):
        client.infer("unknown_model", {"X": np.zeros((1, 1), np.float32)})
    with pytest.raises(ServingError, match="X"):          # wrong datatype for input X
        client.infer("add_one", {"X": np.zeros((1, 2), np.int64)})
    with pytest.raises(ValueError, match="no Triton datatype"):
        client.infer("add_one", {"X": np.zeros((1, 2), np.complex64)})
    assert not client.is_model_ready("unknown_model")


def test_unreachable_server_is_a_serving_error():
    port = next(p for p in range(40000, 40100) if port_is_free(p))
    with TritonClient(f"127.0.0.1:{port}", "http", timeout_s=2) as client:
        assert not client.is_ready()
        with pytest.raises(ServingError, match="cannot reach Triton"):
            client.infer("add_one", {"X": np.zeros((1, 1), np.float32)})


def test_statistics_give_requests_and_mean_time_per_model(server):
    with TritonClient.for_server(server) as client:
        before = client.model_statistics("add_one")["add_one"].requests
        for _ in range(20):
            client.infer("add_one", {"X": np.ones((2, 4), np.float32)})
        # Triton records a request's statistics after it has sent the response (seen: the
        # last one missing from an immediate read, once in a CI run): wait for all 20
        wait_for(lambda: client.model_statistics("add_one")["add_one"].requests == before + 20,
                 10, "Triton's statistics of the 20 requests")
        stats = client.model_statistics()
    with TritonClient.for_server(server, "grpc") as client:
        assert client.model_statistics("add_one")["add_one"].requests \
            == stats["add_one"].requests
    add_one = stats["add_one"]
    assert add_one.requests == before + 20 and add_one.inferences >= 40
    assert 0 < add_one.compute_ms <= add_one.mean_ms < 1000
    assert {"add_one", "greet", "versioned"} <= set(stats)


def test_metrics_endpoint_serves_prometheus_text(server):
    with TritonClient.for_server(server) as client:
        client.infer("add_one", {"X": np.ones((1, 1), np.float32)})
        text = client.metrics_text()
    assert 'nv_inference_request_success{model="add_one",version="1"}' in text
    assert "nv_inference_request_duration_us" in text


def test_version_rollout_and_rollback_without_failed_requests(server, toy_repo, tmp_path):
    model = toy_repo / "versioned"
    seen, failures, stop = [], [], threading.Event()

    def keep_asking():
        with TritonClient.for_server(server, timeout_s=10) as client:
            deadline = time.monotonic() + 40            # bounded in time and in count
            while not stop.is_set() and time.monotonic() < deadline and len(seen) < 20_000:
                try:
                    out = client.infer("versioned", {"X": np.zeros((1, 1), np.int32)})
                    seen.append(int(out["VERSION"][0, 0]))
                except ServingError as e:
                    failures.append(str(e))
                time.sleep(0.002)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        wait_for(lambda: len(seen) > 20, 10, "the first answers of version 1")
        # Roll out: the version directory appears whole (rename), never half written.
        staged = tmp_path / "2"
        shutil.copytree(model / "1", staged)
        staged.rename(model / "2")
        wait_for(lambda: seen[-1] == 2, 20, "version 2 to answer")
        # Roll back: version 2 leaves; the policy (latest 1) brings version 1 back.
        (model / "2").rename(tmp_path / "retired-2")
        wait_for(lambda: seen[-1] == 1, 20, "version 1 to answer again")
        n_after = len(seen)
        wait_for(lambda: len(seen) > n_after + 20, 10, "answers after the rollback")
    finally:
        stop.set()
        asker.join()
    assert failures == []
    assert seen[0] == 1 and 2 in seen and seen[-1] == 1


def test_startup_failure_reports_the_log(tmp_path):
    repo = tmp_path / "repo"
    (write_model(repo, "broken", ADD_ONE) / "config.pbtxt").write_text("backend: \"python\"\n{")
    server = TritonServer(repo, log_path=tmp_path / "server.log", startup_timeout_s=60)
    with pytest.raises(TritonServerError, match="exited with code") as error:
        server.start()
    assert "broken" in str(error.value)                  # the log tail names the model
    assert not server.running


def test_a_chosen_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path, monkeypatch):
    """Another process (a parallel test worker) can take a port between its choice and the
    server's bind: the start retries with fresh ports. Which port the OS hands out cannot be
    forced, so the first choice is made to be one held here; a port the caller gave is kept."""
    import recfunnel.serving.server as server_module
    (tmp_path / "repo").mkdir()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        real = server_module.free_ports
        first = iter([[taken, *real(2)]])
        monkeypatch.setattr(server_module, "free_ports",
                            lambda count, host="127.0.0.1": next(first, None) or real(count, host))
        with TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log") as server:
            assert server.is_ready() and server.ports["http"] != taken
        assert "already in use" in (tmp_path / "server.log").read_text()   # the first start
        given = TritonServer(tmp_path / "repo", http_port=taken, startup_timeout_s=60)
        with pytest.raises(TritonServerError, match="already in use"):
            given.start()


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in process group `pgid` (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue                      # the process ended meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def test_a_server_deaf_to_sigterm_is_killed_with_its_stubs(toy_repo, tmp_path):
    server = TritonServer(toy_repo, model_control_mode="explicit", load_models=("add_one",),
                          log_path=tmp_path / "server.log", stop_timeout_s=1).start()
    pid = server.process.pid
    assert len(live_processes_in_group(pid)) >= 2         # the server and add_one's stub
    os.kill(pid, signal.SIGSTOP)                          # a stopped process ignores SIGTERM
    assert server.stop() == -signal.SIGKILL
    wait_for(lambda: not live_processes_in_group(pid), 10, "the stubs to die with the server")
    assert not server.running


SERVE_FOREVER = """
import json, sys
from recfunnel.serving import TritonServer
server = TritonServer(sys.argv[1], model_control_mode="explicit", load_models=("add_one",),
                      log_path=sys.argv[2]).start()
print(json.dumps({"pid": server.process.pid, "ports": server.ports,
                  "http": server.http_address}), flush=True)
sys.exit(server.serve_forever())
"""


def test_serve_forever_stops_cleanly_on_sigint(toy_repo, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cli = subprocess.Popen([sys.executable, "-c", SERVE_FOREVER, str(toy_repo),
                            str(tmp_path / "server.log")], stdout=subprocess.PIPE, env=env,
                           text=True)
    try:
        started = json.loads(cli.stdout.readline())
        with TritonClient(started["http"]) as client:
            # Explicit mode: only add_one is loaded; others come and go on request.
            assert client.is_model_ready("add_one") and not client.is_model_ready("greet")
            client.load_model("greet")
            assert client.infer("greet", {"NAME": np.array([["x"]])})["GREETING"][0, 0] \
                == b"hello x"
            client.unload_model("greet")
            wait_for(lambda: not client.is_model_ready("greet"), 10, "greet to unload")
        stopping = time.monotonic()
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0
        assert time.monotonic() - stopping < 15
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(started["pid"], 0)
    assert all(port_is_free(port) for port in started["ports"].values())


# A stage whose artifacts fail their checksums refuses to load, as the funnel's stages do.
TAMPERED = (python_model_config("X TYPE_FP32 -1", "Y TYPE_FP32 -1"), """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("artifacts/heavy_ranker: file saved_model.pb does not match its sha256 "
                         "in the manifest (altered or corrupt)")

    def execute(self, requests):
        return []
""")


def test_serving_a_repository_whose_stage_refuses_to_load_is_exit_2_with_its_reason(tmp_path):
    """`recfunnel serve` on a tampered repository: the checksum error, one line, no traceback."""
    repo = tmp_path / "repo"
    write_model(repo, "funnel", TAMPERED)
    stages = ["user_features", "candidates", "light_ranker", "heavy_ranker"]
    for model in stages:
        write_model(repo, model, ADD_ONE)
    (repo / "funnel" / "1" / "stages.json").write_text(json.dumps({"stages": stages}))
    from recfunnel.serving.server import free_ports

    ports = free_ports(3)
    done = subprocess.run(
        [sys.executable, "-m", "recfunnel", "serve", "--repo", str(repo), "--http-port",
         str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
         "--log", str(tmp_path / "server.log")],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "does not match its sha256" in done.stderr and "cannot be served" in done.stderr
    assert "Traceback" not in done.stderr


# Loads slowly: a version arriving just before a stop is still loading when the stop comes.
SLOW_TO_LOAD = (python_model_config("X TYPE_INT32 1", "VERSION TYPE_INT32 1"), """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(6)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("VERSION", np.full_like(
            pb_utils.get_input_tensor_by_name(r, "X").as_numpy(), 2))]) for r in requests]
""")


def test_a_stop_during_a_reload_waits_for_it_and_exits_cleanly(tmp_path):
    """Triton's shutdown counts a model whose load is in flight as live until its exit
    timeout (exit code 1 after a rollout, seen on CI): a stop first waits until the
    repository index shows no model loading or unloading, then sends SIGTERM."""
    repo = tmp_path / "repo"
    write_model(repo, "versioned", VERSIONED)
    server = TritonServer(repo, model_control_mode="poll", repository_poll_secs=1,
                          log_path=tmp_path / "tritonserver.log").start()
    try:
        # a poll reloads every model once after the start (python stubs touch their folders)
        wait_for(lambda: server.changing_models() == [], 60, "the start's own reload")
        staged = tmp_path / "staged"
        (staged / "2").mkdir(parents=True)
        (staged / "2" / "model.py").write_text(textwrap.dedent(SLOW_TO_LOAD[1]).lstrip())
        os.rename(staged / "2", repo / "versioned" / "2")          # a rollout: version 2
        wait_for(lambda: any("LOADING" in m for m in server.changing_models() or []), 30,
                 "version 2 to start loading")
    finally:
        code = server.stop()
    log = server.log_path.read_text()
    assert code == 0, log[-3000:]
    before, after = log.split("Signal (15) received")
    assert "loading: versioned:2" in before                     # every load ended, then the stop
    assert before.count("loading: versioned") == before.count("successfully loaded 'versioned'")
    assert "loading:" not in after
