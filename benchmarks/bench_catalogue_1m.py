"""A million-item catalogue through the pipeline (issue 15): configs/catalogue_1m.yaml's data,
dataset, models and serving steps, each its own `recfunnel pipeline run --steps <step>`
process, timed, with the peak RSS of its process tree (the serving step's tritonserver and its
stage processes included). Results go to benchmarks/results/catalogue_1m.json and the
`catalogue_1m` section of BENCHMARKS.md; the trained run stays in runs/catalogue_1m.

    python benchmarks/bench_catalogue_1m.py                       # the whole run, ~40 min
    python benchmarks/bench_catalogue_1m.py --steps models serving   # on the run's dataset

The data step generates the world into a fresh cache folder (removed after), so it is timed
with generation, not a cached copy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, update_benchmarks_md  # noqa: E402
from benchmarks.bench_dataset import TreeRSS, _cpu  # noqa: E402

CONFIG = REPO / "configs" / "catalogue_1m.yaml"
RESULTS = REPO / "benchmarks" / "results" / "catalogue_1m.json"
STEPS = ("data", "dataset", "models", "serving")


def run_step(step: str, log_dir: Path, env: dict) -> dict:
    """One pipeline step in its own process: wall seconds, the tree's peak RSS and CPU."""
    command = [sys.executable, "-m", "recfunnel", "pipeline", "run", "-c", str(CONFIG), "-q",
               "--steps", step]
    t, cpu0 = time.perf_counter(), _cpu()
    with open(log_dir / f"{step}.out", "w") as out, open(log_dir / f"{step}.err", "w") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, env=env)
        sampler = TreeRSS(proc.pid, interval=0.5)
        sampler.start()
        code = proc.wait()
        sampler.done.set()
        sampler.join()
    seconds = time.perf_counter() - t
    busy, me, tree = (b - a for a, b in zip(cpu0, _cpu()))
    if code != 0:
        tail = (log_dir / f"{step}.err").read_text().strip().splitlines()[-30:]
        raise RuntimeError(f"step {step} failed (exit {code}):\n" + "\n".join(tail))
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(sampler.peak / 2**20, 1),
            "cpu_s": round(tree, 1), "other_jobs_cpu_s": round(max(busy - tree - me, 0.0), 1),
            "processes": sampler.max_processes}


def describe(run_dir: Path) -> dict:
    """What the run holds: sizes, the trained version, the candidate index, the repository."""
    summary = json.loads((run_dir / "summary.json").read_text())
    data, dataset, models = summary["data"], summary.get("dataset", {}), summary.get("models", {})
    out = {"items": data["catalogue_items"], "users": data["users"], "events": data["events"],
           "items_with_events": data["items"], "run": str(run_dir.relative_to(REPO))}
    if dataset:
        out["servable_items"] = int(len(_catalogue(run_dir)))
        out["splits"] = dataset["splits"]
    if "path" in models:
        version = run_dir / models["path"]
        ids = np.load(version / "two_tower_items" / "item_ids.npy", mmap_mode="r")
        trained = models["models"]
        out.update(version=str(version.relative_to(REPO)), index_items=int(len(ids)),
                   models={name: {k: m.get(k) for k in ("train_seconds", "examples_per_second",
                                                        "best_epoch", "skipped") if k in m}
                           for name, m in trained.items()},
                   cold_items_in_index=int(len(ids)) - int(
                       np.unique(_train_items(run_dir)).size))
    if "serving" in summary:
        serving = summary["serving"]
        out["repository"] = str((run_dir / serving["repo"]).resolve().relative_to(REPO)) \
            if "repo" in serving else None
        out["serving"] = {k: serving.get(k) for k in (
            "triton_version", "export_seconds", "startup_seconds", "requests", "errors",
            "latency_ms") if k in serving}
    return out


def _catalogue(run_dir: Path):
    import pandas as pd
    return pd.read_parquet(run_dir / "dataset" / "artifacts" / "catalogue.parquet")


def _train_items(run_dir: Path) -> np.ndarray:
    import pandas as pd
    parts = sorted((run_dir / "dataset" / "train").glob("*.parquet"))
    return np.concatenate([pd.read_parquet(p, columns=["item_id"])["item_id"].to_numpy()
                           for p in parts])


def markdown(r: dict) -> str:
    rows = ["| step | seconds | peak RSS MB (process tree) | CPU s (tree / other jobs) |",
            "|---|---|---|---|"]
    for step, s in r["steps"].items():
        rows.append(f"| {step} | {s['seconds']:,} | {s['peak_rss_mb']:,} | "
                    f"{s['cpu_s']:,} / {s['other_jobs_cpu_s']:,} |")
    total = sum(s["seconds"] for s in r["steps"].values())
    models = r.get("models", {})
    trained = ", ".join(f"{name} {m['train_seconds']} s ({m['examples_per_second']:,} ex/s)"
                        for name, m in models.items() if m.get("train_seconds") and
                        m.get("examples_per_second"))
    lines = [
        f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}.",
        f"configs/catalogue_1m.yaml: {r['items']:,} catalogue items ({r['items_with_events']:,} "
        f"with any event), {r['users']:,} users, {r['events']:,} validated events over 30 days. "
        "Each step is its own `recfunnel pipeline run --steps <step>` process (start-up and "
        "imports included); peak RSS is the summed RSS of the step's process and all its "
        "descendants (serving: tritonserver and its stage processes), sampled every 0.5 s. The "
        "machine is shared: CPU s of other jobs during a step say how much they slowed it.",
        "", *rows, f"| total | {total:,.1f} | | |", ""]
    if "version" in r:
        lines.append(
            f"The candidate index holds {r['index_items']:,} items: the whole servable catalogue "
            f"(canonical, safe), {r['cold_items_in_index']:,} of them without a training example, "
            "embedded by their attributes through the two-tower's item tower. Training: "
            f"{trained}; EASE: {models.get('ease', {}).get('skipped', 'trained')}.")
    if r.get("repository"):
        s = r["serving"]
        lines.append(
            f"The serving step exported Triton version {s['triton_version']} in "
            f"{s['export_seconds']} s (the served feature tables refreshed over the whole "
            f"catalogue first), started tritonserver in {s['startup_seconds']} s and asked it "
            f"for {s['requests']} users one at a time ({s['errors']} errors; p50 "
            f"{s['latency_ms']['p50']} ms: a smoke test, not the latency benchmark, which is "
            f"benchmarks/bench_serving.py). Run `{r['run']}`, version `{r['version']}`, "
            f"repository `{r['repository']}`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    run_dir = REPO / "runs" / "catalogue_1m"
    if "data" in args.steps:
        shutil.rmtree(run_dir, ignore_errors=True)        # a fresh run, as anyone would start
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    steps = dict(previous.get("steps", {}))
    with tempfile.TemporaryDirectory() as tmp:
        for step in args.steps:
            step_env = {**env, "RECFUNNEL_CACHE": str(Path(tmp) / "cache")} if step == "data" \
                else env
            print(f"{step} ...", flush=True)
            steps[step] = run_step(step, Path(tmp), step_env)
            print(f"{step}: {steps[step]}", flush=True)
    results = {**describe(run_dir), "steps": {s: steps[s] for s in STEPS if s in steps},
               "command": "python benchmarks/bench_catalogue_1m.py", "machine": machine(),
               "date": time.strftime("%Y-%m-%d")}
    body = markdown(results)
    print(body)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str))
        update_benchmarks_md("catalogue_1m", body)


if __name__ == "__main__":
    main()
