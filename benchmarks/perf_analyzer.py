"""Triton's own load generator, `perf_analyzer`, against a served model: the second opinion beside
our client in the serving benchmark (benchmarks/bench_serving.py).

`measure` sends one request per row of real user ids (given as perf_analyzer's input-data JSON,
so requests differ) at a fixed concurrency over gRPC and reads perf_analyzer's CSV report.
The binary comes from scripts/get_perf_analyzer.sh (Triton 2.51's, in the cache's tool folder).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from recfunnel.config import default_cache_dir
from recfunnel.errors import RecfunnelError

GET_SCRIPT = "scripts/get_perf_analyzer.sh"
TOOL_GLOB = "tools/perf_analyzer-*/bin/perf_analyzer"     # what the get script installs
PROTOCOLS = ("grpc", "http")
USEC_PER_MS = 1000.0
# perf_analyzer 2.51 counts no failures: the first failed request stops it (exit code 99,
# "Thread [i] had error: ..."), so a measurement that finishes had none.
FAILED_NOTE = ("perf_analyzer stops at the first failed request, so a finished measurement "
               "had none")
# CSV columns (microseconds, but Inferences/Second) -> our names (milliseconds).
LATENCY_COLUMNS = {"p50_ms": "p50 latency", "p90_ms": "p90 latency", "p95_ms": "p95 latency",
                   "p99_ms": "p99 latency"}
CLIENT_COLUMNS = {"send": "Client Send", "network_and_server": "Network+Server Send/Recv",
                  "recv": "Client Recv"}
SERVER_COLUMNS = {"queue": "Server Queue", "compute_input": "Server Compute Input",
                  "compute_infer": "Server Compute Infer",
                  "compute_output": "Server Compute Output"}


class PerfAnalyzerError(RecfunnelError):
    """perf_analyzer could not measure: missing, refused its arguments, or stopped."""


class PerfAnalyzerMissing(PerfAnalyzerError):
    """No working perf_analyzer binary."""


class PerfAnalyzerUnstable(PerfAnalyzerError):
    """No stable measurement within the allowed windows."""


class PerfAnalyzerRequestFailed(PerfAnalyzerError):
    """A request failed, which stops perf_analyzer; `errors` holds what its threads reported."""

    def __init__(self, message: str, errors: list[str]):
        super().__init__(message)
        self.errors = errors


def _runs(binary: Path | str) -> bool:
    try:
        got = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             timeout=30)
    except OSError:
        return False
    return got.returncode == 0 and "Perf Analyzer Version" in got.stdout + got.stderr


def find_perf_analyzer() -> Path:
    """A perf_analyzer that runs: one on PATH, else the newest the get script installed.

    The Merlin venv's tritonclient 2.35.0 puts a bin/perf_analyzer on PATH that cannot load
    its libraries; it is passed over.
    """
    on_path = shutil.which("perf_analyzer")
    if on_path and _runs(on_path):
        return Path(on_path)
    installed = sorted(default_cache_dir().glob(TOOL_GLOB),
                       key=lambda p: [int(x) for x in re.findall(r"\d+", p.parts[-3])])
    for binary in reversed(installed):
        if _runs(binary):
            return binary
    raise PerfAnalyzerMissing(
        f"no working perf_analyzer on PATH or in {default_cache_dir() / 'tools'}; run "
        f"{GET_SCRIPT} (it installs Triton's load generator there)")


def version(binary: str | os.PathLike | None = None) -> str:
    """The version perf_analyzer reports, e.g. "2.51.0"."""
    binary = binary or find_perf_analyzer()
    got = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"Version (\S+)", got.stdout + got.stderr)
    if not found:
        raise PerfAnalyzerError(f"{binary} --version printed no version: "
                                f"{(got.stdout + got.stderr).strip()[:200]}")
    return found.group(1)


def input_data(user_ids, k: int | None = None) -> dict:
    """perf_analyzer's input-data JSON: one request per row of `user_ids` ([requests] one user
    each, or [requests, users_per_request]), each with K = `k` when given."""
    users = np.asarray(user_ids)
    if users.ndim == 1:
        users = users[:, None]
    if users.ndim != 2 or users.size == 0:
        raise PerfAnalyzerError(f"user_ids has shape {np.shape(user_ids)}; give [requests] or "
                                "[requests, users_per_request] raw user ids, at least one")
    if not np.issubdtype(users.dtype, np.integer):
        raise PerfAnalyzerError(f"user_ids are {users.dtype}; give integer raw user ids")
    steps = []
    for row in users:
        step = {"USER_ID": {"content": [int(u) for u in row], "shape": [len(row)]}}
        if k is not None:
            step["K"] = {"content": [int(k)], "shape": [1]}
        steps.append(step)
    return {"data": steps}


def command(binary: Path, url: str, model: str, concurrency: int, data_path: Path,
            csv_path: Path, *, protocol: str, window_ms: int, stability_pct: float,
            max_trials: int, requests: int | None) -> list[str]:
    """The perf_analyzer command line: sync calls (one thread per request in flight, as our
    client), stabilised on mean latency and throughput over `window_ms` windows, or exactly
    `requests` requests with no stability check."""
    args = [str(binary), "-m", model, "-u", url, "-i", protocol, "--input-data", str(data_path),
            "--concurrency-range", str(concurrency), "--sync", "-f", str(csv_path)]
    if requests is not None:
        return [*args, "--request-count", str(requests)]
    return [*args, "--measurement-mode", "time_windows", "-p", str(window_ms),
            "-s", str(stability_pct), "-r", str(max_trials)]


def parse_report(csv_text: str, stdout: str) -> dict:
    """perf_analyzer's CSV (one row: the measured concurrency) and the request count it printed,
    as milliseconds and requests/s."""
    rows = list(csv.DictReader(line for line in csv_text.splitlines() if line.strip()))
    if len(rows) != 1:
        raise PerfAnalyzerError(f"perf_analyzer's CSV has {len(rows)} measurement rows, "
                                "expected one (one concurrency per run)")
    row = rows[0]
    ms = lambda column: round(float(row[column]) / USEC_PER_MS, 3)  # noqa: E731
    count = re.search(r"Client:\s*\n\s*Request count: (\d+)", stdout)
    return {"concurrency": int(row["Concurrency"]),
            "requests": int(count.group(1)) if count else None,
            **{name: ms(column) for name, column in LATENCY_COLUMNS.items()},
            # one inference per request: batch size 1 (perf_analyzer's default, -b)
            "requests_per_s": round(float(row["Inferences/Second"]), 1),
            "client_ms": {name: ms(column) for name, column in CLIENT_COLUMNS.items()},
            "server_ms": {name: ms(column) for name, column in SERVER_COLUMNS.items()}}


def measure(url: str | int, model: str, concurrency: int, user_ids, *, k: int | None = None,
            protocol: str = "grpc", window_ms: int = 5000, stability_pct: float = 25.0,
            max_trials: int = 10, requests: int | None = None,
            binary: str | os.PathLike | None = None, timeout_s: float | None = None) -> dict:
    """perf_analyzer at `concurrency` against `model` at `url` ("host:port", or a port on
    loopback), one request per row of `user_ids` (cycled), USER_ID INT64 [n] and K INT32 [1].

    Time windows by default: `window_ms` each, until three in a row agree within
    `stability_pct` % (mean latency and throughput), at most `max_trials` windows; on 2 shared
    cores the default 10 % rarely holds, hence 25. `requests=N` sends exactly N instead, with
    no stability check; its requests/s look measured over whole seconds (500 requests of 0.8 ms
    at concurrency 2 gave 499.5/s), so take throughput from windows.
    Returns concurrency, requests, p50/p90/p95/p99_ms, requests_per_s, failed (always 0: see
    FAILED_NOTE), failed_note, the client's and server's mean ms per part, and the settings.
    """
    if protocol not in PROTOCOLS:
        raise PerfAnalyzerError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if int(concurrency) < 1:
        raise PerfAnalyzerError(f"concurrency {concurrency}: give at least 1")
    if k is not None and int(k) < 1:
        raise PerfAnalyzerError(f"k {k}: give at least 1, or None for the model's default")
    if requests is not None and int(requests) < 1:
        raise PerfAnalyzerError(f"requests {requests}: give at least 1, or None for windows")
    if isinstance(url, int):
        url = f"127.0.0.1:{url}"
    binary = Path(binary) if binary else find_perf_analyzer()
    if timeout_s is None:            # every window and a minute for start and stop
        timeout_s = 60 + (max_trials * window_ms / USEC_PER_MS if requests is None else 600)
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as tmp:
        data_path, csv_path = Path(tmp) / "input_data.json", Path(tmp) / "report.csv"
        data_path.write_text(json.dumps(input_data(user_ids, k)))
        args = command(binary, url, model, int(concurrency), data_path, csv_path,
                       protocol=protocol, window_ms=int(window_ms), stability_pct=stability_pct,
                       max_trials=int(max_trials), requests=requests)
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"perf_analyzer ran longer than {timeout_s:.0f} s at "
                                    f"concurrency {concurrency}; is the server at {url} "
                                    "answering?") from None
        out = done.stdout + done.stderr
        if done.returncode != 0 or not csv_path.is_file():
            errors = re.findall(r"Thread \[\d+\] had error: (.*)", out)
            if errors:
                raise PerfAnalyzerRequestFailed(
                    f"perf_analyzer stopped at a failed request at concurrency {concurrency}: "
                    f"{errors[0][:300]}", errors)
            if "Failed to obtain stable measurement" in out:
                raise PerfAnalyzerUnstable(
                    f"perf_analyzer found no stable measurement at concurrency {concurrency} "
                    f"within {max_trials} windows of {window_ms} ms ({stability_pct} %); give "
                    "a longer window_ms, a larger stability_pct, or requests=N")
            tail = " | ".join(line.strip() for line in out.strip().splitlines()[-4:])
            raise PerfAnalyzerError(f"perf_analyzer exited with {done.returncode} at "
                                    f"concurrency {concurrency}: {tail[:500]}")
        report = parse_report(csv_path.read_text(), done.stdout)
    settings = ({"mode": "request_count"} if requests is not None else
                {"mode": "time_windows", "window_ms": int(window_ms),
                 "stability_pct": stability_pct, "max_trials": int(max_trials)})
    return {"client": "perf_analyzer", **report, "failed": 0, "failed_note": FAILED_NOTE,
            "settings": {**settings, "protocol": protocol, "distinct_requests": len(
                np.asarray(user_ids))}}
