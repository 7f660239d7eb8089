"""The cost curve (issue 14): the whole pipeline (data, dataset, models, evaluation, export) at
300k, 1M and 10M synthetic events, and the data and dataset steps out of core (dask) at 100M.

The world grows as a platform's would: users, items and creators as events^0.8 from the demo's
(3,000 users, 2,000 items, 300 creators at 300k events), so each user has more events as the
platform grows (100 at 300k, about 200 at 10M) and the catalogue grows more slowly than the log.
configs/scale.yaml holds the rest: the demo's settings with a fixed training budget.

Each step is its own `recfunnel pipeline run --steps <step>` process (the export:
`recfunnel export`), timed, with the peak RSS of its process tree (dask workers included) and
the machine's load meanwhile. Every step's figures are merged into
benchmarks/results/scale.json (per size) as soon as it finishes, and the `bench_scale` section
of BENCHMARKS.md is rewritten from that file, so sizes and steps can be (re)run one at a time:

    python benchmarks/bench_scale.py                                # 300k, 1m, 10m, every step
    python benchmarks/bench_scale.py --sizes 10m --steps models     # one step; the others kept
    python benchmarks/bench_scale.py --sizes 100m                   # data, dataset on dask
    python benchmarks/bench_scale.py --markdown-only                # BENCHMARKS.md from the JSON

Sizes above 10M (OUT_OF_CORE) run the dataset step on a local dask cluster
(compute.cluster=local) whose workers spill to disk at their memory limit. The data step
generates into a fresh cache folder (removed after it), so generation is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, update_benchmarks_md  # noqa: E402
from benchmarks.bench_dataset import TreeRSS, _cpu  # noqa: E402

CONFIG = REPO / "configs" / "scale.yaml"
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
SECTION = "bench_scale"
HEADING = "## The cost curve: the whole pipeline from 300k to 10M events, 100M out of core"
STEPS = ("data", "dataset", "models", "evaluation", "export")
SIZES = {"300k": 300_000, "1m": 1_000_000, "3m": 3_000_000, "10m": 10_000_000,
         "30m": 30_000_000, "100m": 100_000_000}
DEFAULT_SIZES = ("300k", "1m", "10m")
# The demo's world (configs/default.yaml) and how it grows with the events.
BASE = {"events": 300_000, "users": 3_000, "items": 2_000, "creators": 300}
GROWTH = 0.8
# Above this the dataset step runs on a local dask cluster, and only data and dataset by default.
OUT_OF_CORE = 10_000_000
CLUSTER = {"cluster": "local", "workers": 2, "threads_per_worker": 1, "memory_limit": "3GB"}
GOAL = {"size": "10m", "minutes": 30, "peak_rss_mb": 8 * 1024}
SAMPLE_EVERY_S = 0.5
MAX_RSS_MB = 10_000       # above the goal, so that a step beyond it is still measured


def world(events: int) -> dict:
    """Users, items and creators for `events`, grown as events^GROWTH from the demo's world."""
    scale = (events / BASE["events"]) ** GROWTH
    return {"events": events, **{k: int(round(BASE[k] * scale))
                                 for k in ("users", "items", "creators")}}


def overrides(label: str) -> list[str]:
    """The `--set` arguments of a size: its world, its run folder, its compute."""
    w = world(SIZES[label])
    sets = [f"data.synthetic.n_events={w['events']}", f"data.synthetic.n_users={w['users']}",
            f"data.synthetic.n_items={w['items']}", f"data.synthetic.n_creators={w['creators']}",
            f"run.name=scale_{label}"]
    if w["events"] > OUT_OF_CORE:
        sets += [f"compute.{k}={v}" for k, v in CLUSTER.items()]
    args = []
    for s in sets:
        args += ["--set", s]
    return args


def command(label: str, step: str) -> list[str]:
    if step == "export":
        return [sys.executable, "-m", "recfunnel", "export", "--run-name", f"scale_{label}",
                "--runs-dir", str(REPO / "runs")]
    return [sys.executable, "-m", "recfunnel", "pipeline", "run", "-c", str(CONFIG), "-q",
            "--steps", step, *overrides(label)]


def run_step(label: str, step: str, log_dir: Path, env: dict, max_rss_mb: float) -> dict:
    """One step in its own process: wall seconds, the tree's peak RSS, CPU and the load. A step
    whose tree grows beyond `max_rss_mb` is killed (the machine is shared) and recorded so."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t, cpu0, load0 = time.perf_counter(), _cpu(), os.getloadavg()[0]
    stem = log_dir / f"{label}-{step}"
    killed = None
    with open(f"{stem}.out", "w") as out, open(f"{stem}.err", "w") as err:
        proc = subprocess.Popen(command(label, step), stdout=out, stderr=err, cwd=REPO, env=env,
                                start_new_session=True)
        sampler = TreeRSS(proc.pid, interval=SAMPLE_EVERY_S)
        sampler.start()
        try:
            while proc.poll() is None:
                if sampler.peak > max_rss_mb * 2**20:
                    killed = f"killed: the process tree's RSS passed --max-rss-mb {max_rss_mb:,.0f}"
                    os.killpg(proc.pid, signal.SIGKILL)   # the step and its workers only
                    break
                time.sleep(SAMPLE_EVERY_S / 2)
            code = proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            raise
        finally:
            sampler.done.set()
            sampler.join()
    seconds = time.perf_counter() - t
    busy, me, tree = (b - a for a, b in zip(cpu0, _cpu()))
    result = {"seconds": round(seconds, 1), "peak_rss_mb": round(sampler.peak / 2**20, 1),
              "cpu_s": round(tree, 1), "other_jobs_cpu_s": round(max(busy - tree - me, 0.0), 1),
              "load_average": {"before": round(load0, 2),
                               "mean": round(sum(sampler.load) / max(len(sampler.load), 1), 2),
                               "max": round(max(sampler.load, default=load0), 2)},
              "processes": sampler.max_processes, "started": started}
    if killed or code != 0:
        tail = Path(f"{stem}.err").read_text().strip().splitlines()[-30:]
        result["error"] = killed or f"exit code {code}: " + " / ".join(tail[-3:])
        print("\n".join(tail), file=sys.stderr)
    return result


def describe(label: str) -> dict:
    """What the run's summary says about its size: validated events, users, items, splits, and
    each model's training seconds."""
    path = REPO / "runs" / f"scale_{label}" / "summary.json"
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    data, dataset, models = (summary.get(k, {}) for k in ("data", "dataset", "models"))
    out = {}
    if data:
        out.update(validated_events=data["events"], users_with_events=data["users"],
                   items_with_events=data["items"], catalogue_items=data["catalogue_items"])
    if dataset:
        out["splits"] = dataset.get("splits")
        out["dataset_backend"] = dataset.get("backend")
    if models.get("models"):
        out["train_seconds"] = {name: m.get("train_seconds", m.get("skipped"))
                                for name, m in models["models"].items()
                                if m.get("train_seconds", m.get("skipped")) is not None}
    return out


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(RESULTS)


def run_size(label: str, steps: list[str], results: dict, write: bool, max_rss_mb: float) -> None:
    """Runs `steps` of one size, merging each step's figures into `results` (and the file)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run_dir = REPO / "runs" / f"scale_{label}"
    if "data" in steps:
        shutil.rmtree(run_dir, ignore_errors=True)        # a fresh run, as anyone would start
        results.pop(label, None)                          # its old figures are for other data
    if "export" in steps:
        shutil.rmtree(run_dir / "triton_repo", ignore_errors=True)   # version 1, every time
    entry = results.setdefault(label, {})
    entry.update(world(SIZES[label]), config=str(CONFIG.relative_to(REPO)),
                 overrides=[a for a in overrides(label) if a != "--set"], machine=machine())
    entry.setdefault("steps", {})
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for step in (s for s in STEPS if s in steps):
            step_env = {**env, "RECFUNNEL_CACHE": str(Path(tmp) / "cache")} if step == "data" \
                else env
            print(f"{label} {step} ...", flush=True)
            result = run_step(label, step, Path(tmp), step_env, max_rss_mb)
            entry["steps"][step] = result
            entry["steps"] = {s: entry["steps"][s] for s in STEPS if s in entry["steps"]}
            entry.update(describe(label))
            print(f"{label} {step}: {json.dumps(result)}", flush=True)
            if write:
                save_results(results)
                publish(results)
            if "error" in result:
                raise SystemExit(f"{label}: step {step} failed; the steps after it need it")


# ---- BENCHMARKS.md ---------------------------------------------------------------------------

def _ordered(results: dict) -> list[tuple[str, dict]]:
    return sorted(((k, v) for k, v in results.items() if k in SIZES), key=lambda kv: SIZES[kv[0]])


def totals(entry: dict) -> dict | None:
    """Seconds summed over the steps and the largest step peak, when every step it ran finished."""
    steps = entry.get("steps", {})
    if not steps or any("error" in s for s in steps.values()):
        return None
    return {"steps": list(steps), "seconds": round(sum(s["seconds"] for s in steps.values()), 1),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values())}


def markdown(results: dict) -> str:
    rows = ["| size | events | users | items | creators | step | seconds | peak RSS MB (process "
            "tree) | CPU s: step / other jobs | load average: before / mean / max | when (UTC) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for label, e in _ordered(results):
        head = f"| {label} | {e['events']:,} | {e['users']:,} | {e['items']:,} | {e['creators']:,}"
        for step, s in e.get("steps", {}).items():
            load = s["load_average"]
            secs = f"failed ({s['error'][:80]})" if "error" in s else f"{s['seconds']:,}"
            rows.append(f"{head} | {step} | {secs} | {s['peak_rss_mb']:,} | {s['cpu_s']:,} / "
                        f"{s['other_jobs_cpu_s']:,} | {load['before']:.1f} / {load['mean']:.1f} "
                        f"/ {load['max']:.1f} | {s['started'][:16].replace('T', ' ')} |")
        total = totals(e)
        if total:
            rows.append(f"{head} | total ({', '.join(total['steps'])}) | {total['seconds']:,} "
                        f"({total['seconds'] / 60:.1f} min) | {total['peak_rss_mb']:,} (largest "
                        "step) | | | |")
        if "validated_events" in e:
            splits = e.get("splits") or {}
            split_text = (", splits " + " / ".join(f"{splits[k]:,}" for k in ("train", "valid",
                                                                              "test") if k in splits)
                          + " rows (train / valid / test)") if splits else ""
            backend = e.get("dataset_backend") or {}
            notes.append(
                f"- {label}: {e['validated_events']:,} events after validation, "
                f"{e['users_with_events']:,} users and {e['items_with_events']:,} of the "
                f"{e['catalogue_items']:,} catalogue items with an event{split_text}; dataset "
                f"step on {'a local dask cluster' if backend.get('cluster') == 'local' else 'one process'}"
                + (f"; training seconds {json.dumps(e['train_seconds'])}" if e.get("train_seconds")
                   else "") + ".")
    goal = results.get(GOAL["size"], {})
    goal_total = totals(goal)
    if goal_total and all(s in goal_total["steps"] for s in STEPS):
        met = goal_total["seconds"] <= GOAL["minutes"] * 60 and \
            goal_total["peak_rss_mb"] <= GOAL["peak_rss_mb"]
        notes.append(f"- Goal: the {GOAL['size']} pipeline through evaluation and export in <= "
                     f"{GOAL['minutes']} minutes with peak RSS <= {GOAL['peak_rss_mb']:,} MB: "
                     f"{goal_total['seconds'] / 60:.1f} minutes, {goal_total['peak_rss_mb']:,} MB "
                     f"({'met' if met else 'not met'}).")
    notes += extrapolation(results)
    w = {label: world(n) for label, n in SIZES.items()}
    machines = sorted({e.get("machine", "") for _, e in _ordered(results)})
    return "\n".join([
        "Command: `python benchmarks/bench_scale.py` (300k, 1m, 10m: every step) and "
        "`python benchmarks/bench_scale.py --sizes 100m` (data and dataset, out of core); sizes "
        f"and steps can be rerun one at a time, each merges into `benchmarks/results/scale.json`. "
        f"Machine: {'; '.join(machines)}.",
        f"configs/scale.yaml: the demo's settings with a fixed training budget (two-tower and MF "
        "3 epochs, rankers at most 3, batch 4096, lazy_adam, 2,000 users for each epoch's "
        "retrieval validation). The world grows as events^0.8 from the demo's 3,000 users, "
        f"2,000 items and 300 creators at 300k events: {w['1m']['users']:,} users and "
        f"{w['1m']['items']:,} items at 1M, {w['10m']['users']:,} / {w['10m']['items']:,} at "
        f"10M, {w['100m']['users']:,} / {w['100m']['items']:,} at 100M (events per user 100, "
        f"{1_000_000 / w['1m']['users']:.0f}, {10_000_000 / w['10m']['users']:.0f}, "
        f"{100_000_000 / w['100m']['users']:.0f}); above 20,000 items EASE is skipped "
        "(models.ease_max_items). Sizes above 10M run the dataset step on a local dask cluster "
        f"({CLUSTER['workers']} worker processes x {CLUSTER['threads_per_worker']} thread, "
        f"memory_limit {CLUSTER['memory_limit']} each: they spill to disk beyond it).",
        "Each step is its own process (`recfunnel pipeline run --steps <step>`; the export is "
        "`recfunnel export`, which writes the Triton repository without starting a server), "
        "start-up and imports included; the data step generates the world and its events into "
        "a fresh cache and validates them. Peak RSS is the summed RSS of the step's process and "
        f"all its descendants, sampled every {SAMPLE_EVERY_S} s. The machine is shared with "
        "other jobs: CPU s of other jobs and the 1-minute load average during a step (above 2, "
        "jobs waited for one of the 2 cores) say how much they slowed it. One run per cell.",
        "", *rows, "", *notes,
    ])


def extrapolation(results: dict, target: str = "100m") -> list[str]:
    """Without a measured `target`, the steps of the largest out-of-core size that finished,
    scaled linearly in events to `target` (an estimate, said so)."""
    if results.get(target, {}).get("steps"):
        return []
    done = [(label, e) for label, e in _ordered(results)
            if SIZES[label] > OUT_OF_CORE and e.get("steps")
            and not any("error" in s for s in e["steps"].values())]
    if not done:
        return []
    label, e = done[-1]
    factor = SIZES[target] / e["events"]
    parts = [f"{step} ~{s['seconds'] * factor / 60:,.0f} min" for step, s in e["steps"].items()]
    return [f"- {target} not measured; scaled linearly from {label} ({factor:.2g}x the events): "
            f"{', '.join(parts)} (an estimate: it assumes time grows with the events, which the "
            "measured sizes above support only as far as they go)."]


def publish(results: dict) -> None:
    path = REPO / "BENCHMARKS.md"
    if f"<!-- {SECTION}:start -->" not in path.read_text():
        with open(path, "a") as f:
            f.write(f"\n{HEADING}\n\n<!-- {SECTION}:start -->\n<!-- {SECTION}:end -->\n")
    update_benchmarks_md(SECTION, markdown(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), choices=list(SIZES),
                        help="events: " + ", ".join(f"{k} = {v:,}" for k, v in SIZES.items()))
    parser.add_argument("--steps", default=None,
                        help=f"comma-separated subset of {','.join(STEPS)} (default: every "
                             f"step; data,dataset above {OUT_OF_CORE:,} events)")
    parser.add_argument("--max-rss-mb", type=float, default=MAX_RSS_MB,
                        help="kill a step whose process tree grows beyond this (a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--markdown-only", action="store_true",
                        help="no measurements: the BENCHMARKS.md section from the results JSON")
    args = parser.parse_args()
    results = load_results()
    if not args.markdown_only:
        for label in args.sizes:
            steps = args.steps.split(",") if args.steps else \
                (list(STEPS) if SIZES[label] <= OUT_OF_CORE else ["data", "dataset"])
            unknown = sorted(set(steps) - set(STEPS))
            if unknown:
                parser.error(f"unknown step(s) {unknown}; known: {', '.join(STEPS)}")
            run_size(label, steps, results, write=not args.no_write, max_rss_mb=args.max_rss_mb)
    print(markdown(results))
    if not args.no_write:
        publish(results)


if __name__ == "__main__":
    main()
