"""Router by measurement (issue 15, item 3): how should one request reach the funnel's stages?

One exported repository, one tritonserver, the same users, four ways through the same stages:
  router -> stages   the BLS router calls each stage model (serving.path stages)
  router -> chain    the BLS router calls `chain`, every stage in one process, dynamically
                     batched across requests (serving.path chain, the default)
  chain alone        the client calls `chain` itself: no router (no experiment arms, no
                     version choice), what the router costs
  ensemble           a Triton ensemble of the stage models (Triton's scheduler, no python in
                     between; written here: fixed keeps, no arms, no version guarantee)
Each way is measured at concurrency 1 and 16 (gRPC, one user per request) in one run, so the
comparison is a ratio on the same machine; the router's ways with 4 and 16 router instances
(each instance waits on its BLS call: the chain batches at most that many requests).

    python benchmarks/bench_router.py --repository runs/demo/triton_repo     # an exported repo
    python benchmarks/bench_router.py --run runs/demo                        # export it first
Results: benchmarks/results/router.json and the `bench_router` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402
from recfunnel.serving.client import ServingError, TritonClient  # noqa: E402
from recfunnel.serving.export import (ROUTER, STAGES_FILE, export_run,  # noqa: E402
                                      stage_environment, versions_in)
from recfunnel.serving.server import TritonServer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "router.json"
ENSEMBLE = "funnel_ensemble"
LEVELS = (1, 16)


def write_ensemble(repo: Path, version: int) -> None:
    """A Triton ensemble over version `version`'s stages: user_features -> candidates -> each
    ranker, the keeps as inputs (the client sends them), the last ranker's list as the answer."""
    declared = json.loads((repo / ROUTER / str(version) / STAGES_FILE).read_text())
    stages = declared["stages"]
    rankers = stages[2:]
    steps = [f'''{{ model_name: "user_features" model_version: {version}
     input_map {{ key: "USER_ID" value: "USER_ID" }}
     output_map {{ key: "USER_FEATURES" value: "features" }}
     output_map {{ key: "PATH" value: "path" }} }}''',
             f'''{{ model_name: "candidates" model_version: {version}
     input_map {{ key: "USER_ID" value: "USER_ID" }}
     input_map {{ key: "USER_FEATURES" value: "features" }}
     input_map {{ key: "PATH" value: "path" }}
     output_map {{ key: "CANDIDATES" value: "list_0" }} }}''']
    for i, ranker in enumerate(rankers):
        last = i == len(rankers) - 1
        out = ('output_map { key: "ITEMS" value: "ITEMS" }\n     '
               'output_map { key: "SCORES" value: "SCORES" }' if last
               else f'output_map {{ key: "KEPT" value: "list_{i + 1}" }}')
        steps.append(f'''{{ model_name: "{ranker}" model_version: {version}
     input_map {{ key: "USER_FEATURES" value: "features" }}
     input_map {{ key: "CANDIDATES" value: "list_{i}" }}
     input_map {{ key: "KEEP" value: "KEEP_{i}" }}
     {out} }}''')
    keeps = "\n".join(f'  {{ name: "KEEP_{i}", data_type: TYPE_INT32, dims: [ 1 ] }},'
                      for i in range(len(rankers)))
    folder = repo / ENSEMBLE
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(f'''name: "{ENSEMBLE}"
platform: "ensemble"
max_batch_size: 0
input [
{keeps}
  {{ name: "USER_ID", data_type: TYPE_INT64, dims: [ -1 ] }}
]
output [
  {{ name: "ITEMS", data_type: TYPE_INT64, dims: [ -1, -1 ] }},
  {{ name: "SCORES", data_type: TYPE_FP64, dims: [ -1, -1 ] }}
]
ensemble_scheduling {{ step [
  {(","+chr(10)+"  ").join(steps)}
] }}
''')


def way_inputs(way: str, declared: dict, k: int):
    """(model, inputs for one user) of a way through the stages."""
    rankers = declared["stages"][2:]
    if way in ("router -> stages", "router -> chain"):
        return ROUTER, lambda user: {"USER_ID": np.array([user], np.int64),
                                     "K": np.array([k], np.int32)}
    if way == "chain alone":
        return "chain", lambda user: {"USER_ID": np.array([[user]], np.int64),
                                      "K": np.array([[k]], np.int32),
                                      "TIME": np.array([[-1]], np.int64),
                                      "BLEND": np.array([[b""]], dtype=object)}
    keeps = [max(int(declared["keep"][r] or k), k) for r in rankers[:-1]] + [k]
    return ENSEMBLE, lambda user: {"USER_ID": np.array([user], np.int64),
                                   **{f"KEEP_{i}": np.array([v], np.int32)
                                      for i, v in enumerate(keeps)}}


def load(server, model: str, make, users: np.ndarray, concurrency: int, requests: int) -> dict:
    """`requests` one-user requests from `concurrency` threads; latency percentiles, req/s."""
    latencies, failures, lock = [], [], threading.Lock()
    share = requests // concurrency

    def worker(seed: int) -> None:
        client = TritonClient(server.grpc_address, "grpc")
        rng = np.random.default_rng(seed)
        for user in rng.choice(users, share):
            start = time.perf_counter()
            try:
                client.infer(model, make(int(user)), ["ITEMS"])
            except ServingError as e:
                with lock:
                    failures.append(str(e)[:200])
                continue
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)
        client.close()

    worker(10_000)                                          # warm: one thread's worth
    latencies.clear()
    failures.clear()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.array(latencies) if latencies else np.full(1, np.nan)
    return {"concurrency": concurrency, "requests": len(latencies) + len(failures),
            "failed": len(failures), "first_failures": failures[:2],
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "requests_per_s": round(len(latencies) / seconds, 1)}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the server and every process under it (stubs), in MB."""
    import psutil

    root = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                 / 2**20, 1)


def set_path(repo: Path, version: int, chain: bool) -> None:
    """Switches version `version`'s router between the chain and the stages (stages.json is
    read once per router process: the server is restarted after)."""
    path = repo / ROUTER / str(version) / STAGES_FILE
    declared = json.loads(path.read_text())
    declared["chain"] = "chain" if chain else None
    path.write_text(json.dumps(declared))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repository", type=Path, help="an exported repository (copied)")
    where.add_argument("--run", type=Path, help="a trained run folder (exported first)")
    parser.add_argument("--requests", type=int, default=600, help="per way and level")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--router-instances", type=int, nargs="+", default=[4, 16],
                        help="router instance counts to measure the router's ways with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        repo = Path(tmp) / "repo"
        if args.repository:
            shutil.copytree(args.repository, repo, symlinks=True)
        else:
            export_run(args.run, repo)
        version = versions_in(repo)[-1]
        write_ensemble(repo, version)
        declared = json.loads((repo / ROUTER / str(version) / STAGES_FILE).read_text())
        features = next(repo.glob(f"user_features/{version}/artifacts")) / "features"
        users = pd.read_parquet(features / "user_features.parquet")["user_id_raw"].to_numpy()
        users = users[users >= 0]
        items = len(pd.read_parquet(features / "item_features.parquet", columns=["item_id_raw"]))
        results, rss_mb = [], {}
        for n, instances in enumerate(args.router_instances):
            set_router_instances(repo, instances)
            for chain in (False, True):    # the router's path is read at load: one server each
                set_path(repo, version, chain)
                ways = ["router -> chain" if chain else "router -> stages"]
                if n == 0:                 # the ways without the router, measured once
                    ways.append("chain alone" if chain else "ensemble")
                with TritonServer(repo, env=stage_environment(), startup_timeout_s=600,
                                  log_path=Path(tmp) / f"tritonserver-{chain}.log") as server:
                    for way in ways:
                        model, make = way_inputs(way, declared, args.k)
                        for level in LEVELS:
                            row = {"way": way, "router_instances": instances
                                   if way.startswith("router") else None, "items": items,
                                   **load(server, model, make, users, level, args.requests)}
                            print(row, flush=True)
                            results.append(row)
                    rss_mb[f"{'chain' if chain else 'stages'}, {instances} routers"] = \
                        tree_rss_mb(server.process.pid)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "items": items,
           "stages": declared["stages"], "k": args.k, "requests_per_level": args.requests,
           "source": str(args.repository or args.run), "server_rss_mb": rss_mb,
           "results": results}
    publish(out, report(out), RESULTS, "bench_router", write=True)


def set_router_instances(repo: Path, count: int) -> None:
    config = repo / ROUTER / "config.pbtxt"
    config.write_text(re.sub(r"count: \d+", f"count: {count}", config.read_text()))


def report(out: dict) -> str:
    lines = [f"Command: `python benchmarks/bench_router.py --repository <exported repo>`. "
             f"Machine: {out['machine']}. Date: {out['date']}. Repository: {out['source']} "
             f"({out['items']:,} items; stages {' -> '.join(out['stages'])}), k {out['k']}, "
             f"{out['requests_per_level']} one-user gRPC requests per row, client threads on "
             f"the same 2 cores. Server memory (process tree RSS, MB): "
             + ", ".join(f"{k} {v:,.0f}" for k, v in out["server_rss_mb"].items()) + ".", "",
             "| way | router instances | concurrency | p50 ms | p99 ms | requests/s | failed |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["results"]:
        lines.append(f"| {r['way']} | {r['router_instances'] or ''} | {r['concurrency']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['requests_per_s']} | {r['failed']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
