"""Asks the served funnel (the `funnel` model of an exported repository) for recommendations.

`recfunnel recommend`, the benchmark and the tests use it; any Triton client can send the same
request (USER_ID INT64 [n], optional K INT32 [1]; see triton_repo/README.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfunnel.serving.client import ServingError, TritonClient
from recfunnel.serving.export import ExportResult, stage_environment
from recfunnel.serving.server import TritonServer

FUNNEL_MODEL = "funnel"


@dataclass
class ServedRecommendations:
    """The served funnel's answer; item arrays hold raw ids, -1 pads a short list."""
    users: np.ndarray                       # [n] raw user ids, as asked
    items: np.ndarray                       # [n, k] best first
    score: np.ndarray                       # [n, k] blended score
    objectives: dict[str, np.ndarray]       # objective -> [n, k] heavy-ranker probability
    path: np.ndarray                        # [n] "model" | "fallback"
    arm: np.ndarray                         # [n] experiment arm ("default" without one)
    versions: np.ndarray                    # [n] training version that served each user
    model_versions: np.ndarray              # [n] Triton version that served each user

    @property
    def version(self) -> str:
        """The training version (of the first user: one per request unless an arm is pinned)."""
        return str(self.versions[0])

    @property
    def model_version(self) -> int:
        return int(self.model_versions[0])

    def table(self) -> str:
        """One block per user: rank, item, blended score and every objective's score."""
        names = list(self.objectives)
        widths = [max(8, len(name)) for name in names]
        lines = []
        for n, user in enumerate(self.users):
            note = ("" if self.path[n] == "model" else
                    "  (unknown to the models: served by the popularity fallback)")
            arm = "" if self.arm[n] == "default" else f", arm {self.arm[n]}"
            lines.append(f"user {user}: path {self.path[n]}{arm}{note}")
            lines.append("  rank     item    score  " + "  ".join(
                f"{o:>{w}}" for o, w in zip(names, widths)))
            for rank, item in enumerate(self.items[n]):
                if item < 0:
                    continue
                per = "  ".join(f"{self.objectives[o][n, rank]:>{w}.4f}"
                                for o, w in zip(names, widths))
                lines.append(f"  {rank + 1:>4} {item:>8} {self.score[n, rank]:>8.4f}  {per}")
        for version, model_version in sorted(set(zip(self.versions, self.model_versions))):
            lines.append(f"training version {version} (Triton version {model_version})")
        return "\n".join(lines)


class FunnelClient:
    """The funnel over HTTP or gRPC at `address` (host:port); one client per thread."""

    def __init__(self, address: str, protocol: str = "http", timeout_s: float = 30.0,
                 model: str = FUNNEL_MODEL):
        self.triton = TritonClient(address, protocol, timeout_s=timeout_s)
        self.model = model

    @classmethod
    def for_server(cls, server, protocol: str = "http", **kwargs) -> "FunnelClient":
        address = server.http_address if protocol == "http" else server.grpc_address
        return cls(address, protocol, **kwargs)

    def recommend(self, users, k: int | None = None, at: int | None = None
                  ) -> ServedRecommendations:
        """Top-k for each raw user id in `users` (k None: the served version's default), with
        time-relative features as of `at` (epoch seconds; None: the served tables' own day)."""
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        inputs = {"USER_ID": users}
        if k is not None:
            inputs["K"] = np.array([k], np.int32)
        if at is not None:
            inputs["TIME"] = np.array([int(at)], np.int64)
        out = self.triton.infer(self.model, inputs)
        names = [o.decode() for o in out["OBJECTIVES"]]
        return ServedRecommendations(
            users, out["ITEMS"], out["SCORES"],
            {name: out["OBJECTIVE_SCORES"][:, i, :] for i, name in enumerate(names)},
            out["PATH"].astype(str), out["ARM"].astype(str), out["VERSION"].astype(str),
            out["MODEL_VERSION"].astype(np.int64))

    def close(self) -> None:
        self.triton.close()

    def __enter__(self) -> "FunnelClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ask_funnel(address: str, users, k: int | None = None, protocol: str = "grpc") -> dict:
    """One request per user, in turn: latency percentiles, failures, what served them.

    For `make demo`'s serving section; the load benchmark is benchmarks/bench_serving.py.
    """
    latencies, failures, paths, served = [], [], {}, None
    with FunnelClient(address, protocol) as client:
        for user in users:
            start = time.perf_counter()
            try:
                served = client.recommend([user], k)
            except ServingError as e:
                failures.append(f"user {user}: {e}")
                continue
            latencies.append((time.perf_counter() - start) * 1000)
            paths[str(served.path[0])] = paths.get(str(served.path[0]), 0) + 1
    ms = np.array(latencies) if latencies else np.full(1, np.nan)
    return {"requests": len(latencies) + len(failures), "errors": len(failures),
            "first_errors": failures[:3], "paths": paths,
            "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
            "version": served.version if served else None,
            "model_version": served.model_version if served else None,
            "example": ({"user": int(served.users[0]), "items": served.items[0].tolist(),
                         "score": np.round(served.score[0], 4).tolist()} if served else None)}


def serving_summary(exported: ExportResult, run_dir, users, k: int | None = None,
                    startup_timeout_s: float = 300.0) -> dict:
    """Serves an exported repository, asks it for `users`, stops: the run's `serving` section
    (`make demo` ends with it)."""
    with TritonServer(exported.repo, model_control_mode="poll", env=stage_environment(),
                      log_path=Path(run_dir) / "tritonserver.log",
                      startup_timeout_s=startup_timeout_s) as server:
        asked = ask_funnel(server.grpc_address, users, k)
    return {"repo": str(exported.repo.relative_to(Path(run_dir).resolve())),
            "triton_version": exported.triton_version, "export_seconds": exported.seconds,
            "startup_seconds": round(server.startup_s, 1),
            "shutdown_seconds": round(server.shutdown_s, 1), **asked}
