"""Starts, watches and stops a real `tritonserver` for a model repository (`triton_repo/`).

The funnel's serving step: every stage is a python-backend model (or an ensemble) in the
repository, and this module runs the server that answers them, bound to loopback by default.
Binary: `tritonserver` on PATH, then /opt/tritonserver (NVIDIA's Merlin/Triton containers),
then the one inside the `nvidia-pytriton` wheel (Triton 2.51, python backend and ensembles only).

How a python model finds the venv's packages: the python backend's stub embeds CPython and,
like any embedded interpreter, locates its prefix by looking up `python3` on PATH. We put this
interpreter's `bin/` first on PATH, so the stub finds the venv's `pyvenv.cfg` and imports the
venv's site-packages (TensorFlow, NVTabular, faiss) with no per-model setting. We chose this
over the per-model `parameters: {key: "EXECUTION_ENV_PATH" ...}` (reported to work as well)
because that writes an absolute path into each `config.pbtxt`, and a repository must serve
unchanged when copied to another machine or into the Merlin container. The stub runs CPython
isolated: it sees the environment (`env=`) in os.environ but ignores PYTHONPATH; its sys.path is
the venv's plus the model's version folder and model folder. So a model imports what the venv
has installed, or modules shipped beside its model.py.

What we learned about the pip Triton (Triton 2.51 from nvidia-pytriton 0.7.0, 2 CPU cores):
- The wheel's `backends/python/` lacks the stub; the stubs sit per Python version in
  `python_backend_stubs/3.X/`. We assemble a backend directory of symlinks in the cache (through
  a symlink, the wheel's `$ORIGIN` RPATH to `nvidia_pytriton.libs/` still resolves).
- The stub links `libpython3.11.so.1.0` by soname, and the loader finds Debian's 3.11.2 before
  pyenv's 3.11.7, whose standard library the venv then loads: a mismatched pair that fails in
  `multiprocessing.resource_tracker` while a model loads. The interpreter's LIBDIR goes first on
  LD_LIBRARY_PATH.
- Ready 2.5-3 s after start with toy python models (each instance is a stub process); SIGTERM
  stops it in 2-3 s even when idle, since Triton counts down live models once a second.
- Poll mode loads a new version before it unloads the old one: a rollout or rollback under a
  steady stream of requests switched cleanly (no interleaving, no failed request) 3-5 s after
  the version directory appeared or left, with a poll every second. Write a version directory
  elsewhere and rename it into place, so that a poll never sees it half written.
- Lines about CUDA, DCGM and pinned memory in the log are harmless on a CPU machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from recfunnel.config import default_cache_dir
from recfunnel.errors import RecfunnelError

MODEL_CONTROL_MODES = ("none", "poll", "explicit")
SYSTEM_TRITON = Path("/opt/tritonserver")
# Flags every start gets: CPU only, fail fast, "ready" only when every model is ready.
CPU_FLAGS = ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
             "--strict-readiness=true", "--exit-on-error=true")
# Triton's own budget for unloading every model on SIGTERM (its default is 30 s): a stage with
# TensorFlow loaded takes 10-15 s to unload on a busy machine, and a reload in flight longer.
EXIT_TIMEOUT_S = 60
SETTLE_TIMEOUT_S = 60.0     # at most this long, a stop first waits out loads and unloads
# p50/p95/p99 latency per model on /metrics (nv_inference_*_summary_us, over Triton's sliding
# window of about a minute); without it Triton exposes only cumulative durations. monitoring/.
METRICS_FLAGS = ("--metrics-config=summary_latencies=true",)
# Triton's error lines (glog "E1128 ...", protobuf parse errors, the final "error: ...").
# a load starts ("loading: funnel:2") and ends ("successfully loaded 'funnel'", "failed to load
# 'funnel' version 2: ..."), in Triton 2.51's log at its default verbosity
LOAD_STARTED = re.compile(r'"loading: ([^:"]+):\d+"')
LOAD_ENDED = re.compile(r"(?:successfully loaded|failed to load) '([^']+)'")
ERROR_LINE = re.compile(r"^(E\d{4} |\[libprotobuf ERROR|error: )")
HARMLESS_ERRORS = ("CudaDriverHelper has not been initialized",)   # every start on a CPU
# A port chosen free can be taken by another process before the server binds it (parallel test
# workers, other servers): a start that fails so retries with fresh ports, this many times in all.
PORT_TAKEN = re.compile(r"failed to start \w+ service: .*already in use")
START_ATTEMPTS = 3
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback, direct


class TritonServerError(RecfunnelError, RuntimeError):
    """tritonserver could not be found, started, made ready or stopped."""


class _StopRequested(Exception):
    """SIGINT or SIGTERM arrived while `serve_forever` was serving."""


def find_tritonserver() -> tuple[Path, Path | None]:
    """(binary, backend directory) of the Triton to run; directory None: assemble the wheel's."""
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        backends = SYSTEM_TRITON / "backends"
        if not backends.is_dir():
            backends = binary.parent.parent / "backends"
        return binary, backends
    if (SYSTEM_TRITON / "bin" / "tritonserver").is_file():
        return SYSTEM_TRITON / "bin" / "tritonserver", SYSTEM_TRITON / "backends"
    binary = _pytriton_root() / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonServerError(f"the nvidia-pytriton wheel has no server binary at {binary}")
    return binary, None


def _pytriton_root() -> Path:
    try:
        dist = metadata.distribution("nvidia-pytriton")
    except metadata.PackageNotFoundError:
        raise TritonServerError(
            "no tritonserver found: none on PATH, none in /opt/tritonserver, and the "
            "nvidia-pytriton wheel is not installed (pip install --no-deps nvidia-pytriton==0.7.0)"
        ) from None
    return Path(dist.locate_file("pytriton/tritonserver"))


def pip_python_backend_dir(cache_dir: Path | None = None) -> Path:
    """A `--backend-directory` for the wheel's Triton: python/ with the .so, utils and stub.

    Symlinks into the installed wheel, kept under `<cache>/triton-backends/<version>-<hash>`
    (the hash names the wheel's location, so two venvs never share links).
    """
    root = _pytriton_root()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir())
        raise TritonServerError(f"nvidia-pytriton has no python backend stub for Python {py} "
                                f"(it has {', '.join(have)}); run with one of those")
    if cache_dir is None:
        cache_dir = default_cache_dir()
    key = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    version = metadata.version("nvidia-pytriton")
    python_dir = Path(cache_dir) / "triton-backends" / f"{version}-py{py}-{key}" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for target in (root / "backends" / "python" / "libtriton_python.so",
                   root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        link = python_dir / target.name
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            tmp = python_dir / f".{target.name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)       # atomic: a concurrent start never sees a missing file
    return python_dir.parent


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` different TCP ports that nobody listens on right now (the OS's choice)."""
    with contextlib.ExitStack() as held:       # held together, so the OS gives distinct ones
        sockets = [held.enter_context(socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET)) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def server_environment(base: dict | None = None) -> dict:
    """`base` (default os.environ) with this interpreter's LIBDIR and bin/ first (see above)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")   # in a venv: the base interpreter's
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH")) if p)
    return env


class TritonServer:
    """A tritonserver process serving `model_repository`; use as a context manager.

    >>> with TritonServer("triton_repo") as server:
    ...     TritonClient(server.http_address).infer(...)

    Ports left as None are chosen free on `host`. `model_control_mode` is "none" (load all at
    start), "poll" (watch the repository every `repository_poll_secs` seconds: add a version
    directory to roll out, remove it to roll back) or "explicit" (load `load_models` at start,
    more through the client). The server's stdout and stderr, python models' prints included,
    go to `log_path` (default: a new file in the temp directory). A stop first waits (at most
    SETTLE_TIMEOUT_S) until no model is loading or unloading, since Triton's shutdown does not
    wait for a load in flight and then counts it as live until its exit timeout runs out (seen
    as exit code 1 after a rollout's reload); `stop_timeout_s` outlasts Triton's own
    EXIT_TIMEOUT_S before SIGKILL. `binary` and
    `backend_directory` override `find_tritonserver`; `env` adds environment variables and
    `extra_args` tritonserver flags (e.g. "--log-verbose=1").
    """

    def __init__(self, model_repository: str | os.PathLike, *, host: str = "127.0.0.1",
                 http_port: int | None = None, grpc_port: int | None = None,
                 metrics_port: int | None = None, model_control_mode: str = "none",
                 repository_poll_secs: int = 2, load_models: tuple[str, ...] = (),
                 log_path: str | os.PathLike | None = None,
                 startup_timeout_s: float = 120.0, stop_timeout_s: float = EXIT_TIMEOUT_S + 30,
                 binary: str | os.PathLike | None = None,
                 backend_directory: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, env: dict | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.model_repository = Path(model_repository).resolve()
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} is not a folder; "
                                    "export one first (recfunnel export)")
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise TritonServerError(f"model_control_mode {model_control_mode!r}: expected one of "
                                    f"{', '.join(MODEL_CONTROL_MODES)}")
        if load_models and model_control_mode != "explicit":
            raise TritonServerError("load_models needs model_control_mode='explicit'; in the "
                                    "other modes the server loads every model in the repository")
        if int(repository_poll_secs) < 1:
            raise TritonServerError(f"repository_poll_secs {repository_poll_secs}: Triton polls "
                                    "in whole seconds, at least 1")
        self.host = host
        given = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._chosen = [kind for kind, port in given.items() if not port]   # ours to re-choose
        chosen = iter(free_ports(3, host))
        self.ports = {kind: port or next(chosen) for kind, port in given.items()}
        if len(set(self.ports.values())) < 3:
            raise TritonServerError(f"http, grpc and metrics need three different ports, "
                                    f"got {self.ports}")
        self.model_control_mode = model_control_mode
        self.repository_poll_secs = int(repository_poll_secs)
        self.load_models = tuple(load_models)
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.extra_env = dict(env or {})
        self.extra_args = tuple(extra_args)
        self._binary = Path(binary) if binary else None
        self._backend_directory = Path(backend_directory) if backend_directory else None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="tritonserver-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None
        self._log_offset = 0
        self.startup_s: float | None = None       # measured: start() to ready
        self.shutdown_s: float | None = None      # measured: stop() to process gone

    # Addresses a client uses: loopback when the server listens on every interface.
    @property
    def client_host(self) -> str:
        if self.host in ("0.0.0.0", "", "::"):
            return "127.0.0.1"
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def http_address(self) -> str:
        """host:port for tritonclient.http (no scheme)."""
        return f"{self.client_host}:{self.ports['http']}"

    @property
    def grpc_address(self) -> str:
        """host:port for tritonclient.grpc."""
        return f"{self.client_host}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint."""
        return f"http://{self.client_host}:{self.ports['metrics']}/metrics"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The tritonserver command line this server runs."""
        binary, backends = (self._binary, self._backend_directory)
        if binary is None:
            binary, found_backends = find_tritonserver()
            backends = backends or found_backends
        if backends is None:
            backends = pip_python_backend_dir(self.cache_dir)
        cmd = [str(binary), f"--model-repository={self.model_repository}",
               f"--backend-directory={backends}",
               f"--model-control-mode={self.model_control_mode}",
               *(f"--{kind}-address={self.host}" for kind in ("http", "grpc", "metrics")),
               *(f"--{kind}-port={port}" for kind, port in self.ports.items()),
               *CPU_FLAGS, *METRICS_FLAGS, f"--exit-timeout-secs={EXIT_TIMEOUT_S}"]
        if self.model_control_mode == "poll":
            cmd.append(f"--repository-poll-secs={self.repository_poll_secs}")
        cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd + list(self.extra_args)

    def start(self) -> "TritonServer":
        """Start the server and wait until it (and every loaded model) is ready."""
        if self.running:
            return self
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once(started)
                break
            except TritonServerError:
                if not (self._chosen and attempt < START_ATTEMPTS and self._port_was_taken()):
                    raise
                fresh = iter(free_ports(len(self._chosen), self.host))
                self.ports.update({kind: next(fresh) for kind in self._chosen})
        self.startup_s = time.monotonic() - started
        return self

    def _port_was_taken(self) -> bool:
        """The last start's log says one of its ports was already in use."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return bool(PORT_TAKEN.search(log.read().decode(errors="replace")))
        except OSError:
            return False

    def _start_once(self, started: float) -> None:
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()      # reports read this start's lines only
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            # Its own session: a Ctrl-C at the terminal reaches us, and we stop it in order.
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env=server_environment({**os.environ,
                                                                    **self.extra_env}))
        try:
            self._wait_until_ready(started + self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise

    def is_ready(self) -> bool:
        """True when /v2/health/ready answers 200 (strict: every model ready)."""
        url = f"http://{self.http_address}/v2/health/ready"
        try:
            with NO_PROXY.open(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _wait_until_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {self.process.returncode} before it was "
                    f"ready; {self.log_report()}")
            if self.is_ready():
                return
            time.sleep(0.1)
        raise TritonServerError(
            f"tritonserver was not ready at http://{self.http_address}/v2/health/ready after "
            f"{self.startup_timeout_s:.0f} s (raise startup_timeout_s, config "
            f"serving.startup_timeout_s, if models load slowly); "
            f"{self.log_report()}")

    def log_report(self, tail: int = 12) -> str:
        """The server log's error lines (less the harmless ones) and its last `tail` lines."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError as e:
            return f"its log {self.log_path} is unreadable: {e}"
        errors = [line for line in lines if ERROR_LINE.match(line)
                  and not any(harmless in line for harmless in HARMLESS_ERRORS)]
        report = f"its log {self.log_path}"
        if errors:
            report += " has these errors:\n" + "\n".join(errors[-20:]) + "\nand ends"
        return report + ":\n" + "\n".join(lines[-tail:])

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL to its process group after `stop_timeout_s`; the exit code."""
        if self.process is None:
            return None
        stopping = time.monotonic()
        if self.process.poll() is None:
            self.wait_until_settled(stopping + SETTLE_TIMEOUT_S)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                # The group: the server and its python-backend stubs (not reaped yet, so ours).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        code = self.process.wait()
        self.shutdown_s = time.monotonic() - stopping
        return code

    def changing_models(self) -> list[str] | None:
        """Models Triton is loading or unloading now; None when the server does not answer.

        Two sources: the repository index (a model's first load, an unload) and this start's
        log, whose "loading: name:version" lines without a "successfully loaded"/"failed to
        load" after them are loads in flight: a poll's reload of a version that stays READY
        meanwhile, which the index does not show (measured)."""
        request = urllib.request.Request(f"http://{self.http_address}/v2/repository/index",
                                         data=b"{}", method="POST")
        try:
            with NO_PROXY.open(request, timeout=2) as response:
                index = json.loads(response.read())
        except (OSError, ValueError):
            return None
        changing = [f"{m.get('name')}:{m.get('version')} {m['state']}" for m in index
                    if m.get("state") in ("LOADING", "UNLOADING")]
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return changing
        # per model, a load is in flight when its last line is a start: Triton logs one start
        # per version ("loading: m:1", "loading: m:2") and one end for them all
        last_start = {m.group(1): m.start() for m in LOAD_STARTED.finditer(text)}
        last_end = {m.group(1): m.start() for m in LOAD_ENDED.finditer(text)}
        return changing + [f"{name} LOADING" for name, at in last_start.items()
                           if at > last_end.get(name, -1)]

    def wait_until_settled(self, deadline: float) -> None:
        """Until no model has been loading or unloading for a whole poll interval (a poll may
        start a reload any second), or `deadline`; at once when the server does not answer."""
        quiet_s = self.repository_poll_secs + 0.5 if self.model_control_mode == "poll" else 0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and self.process.poll() is None:
            changing = self.changing_models()
            if changing is None:
                return
            now = time.monotonic()
            if changing:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            time.sleep(0.2)

    def serve_forever(self) -> int | None:
        """Start (if needed) and serve until SIGINT or SIGTERM, then stop; the exit code.

        For the command line; must run in the main thread (Python's signal handlers live there).
        """
        def request_stop(signum, frame):
            raise _StopRequested(signum)
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, request_stop) for sig in signals}
        try:
            self.start()
            while self.running:
                time.sleep(0.5)
            raise TritonServerError(
                f"tritonserver exited unexpectedly with code {self.process.returncode}; "
                f"{self.log_report()}")
        except _StopRequested:
            pass
        finally:
            for sig in previous:      # a second Ctrl-C must not interrupt the orderly stop
                signal.signal(sig, signal.SIG_IGN)
            code = self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.process.pid}" if self.running else "stopped"
        return (f"TritonServer({str(self.model_repository)!r}, http {self.http_address}, "
                f"grpc {self.grpc_address}, {self.model_control_mode}, {state})")
