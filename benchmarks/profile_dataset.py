"""Where the dataset build's time goes: each step's wall and CPU seconds, and cProfile's top
functions, on validated synthetic events (made by benchmarks/bench_dataset.py's prepare step).

Two passes in one process, after the imports: the build as it runs (dask's default threaded
scheduler) for each step's wall and CPU seconds (CPU below wall is time waiting: disk, or the
other jobs of a shared machine; above wall, two threads at work), then the build under cProfile
with dask's synchronous scheduler, because cProfile sees only the thread that calls it.
Results go to benchmarks/results/dataset_profile.json under a label (`before`, `after`) and to
the `dataset_profile` section of BENCHMARKS.md, every label side by side.

    python benchmarks/bench_dataset.py --data-dir /tmp/bd --sizes 1000000   # makes the data
    python benchmarks/profile_dataset.py --data /tmp/bd/syn-1000000/data --label after
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dataset_profile.json"
STEPS = ("canonical_items", "unsafe_content", "freshness_window", "active_users", "examples",
         "negative_sampling", "features", "check")
TOP = 15
# The build's own code and the operators it runs: where "which function" is answered.
OWN_CODE = ("workflows/", "nvtabular/ops/", "merlin/dag/ops/", "merlin/io/dataset.py")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_steps(builder_cls, timings: dict):
    """Wraps each step method of `builder_cls` to add its wall and CPU seconds to `timings`."""
    originals = {}
    for name in STEPS:
        method = getattr(builder_cls, name)
        originals[name] = method

        @functools.wraps(method)
        def wrapper(self, *args, _method=method, _name=name, **kwargs):
            wall, cpu = time.perf_counter(), _cpu_s()
            try:
                return _method(self, *args, **kwargs)
            finally:
                entry = timings.setdefault(_name, {"wall_s": 0.0, "cpu_s": 0.0})
                entry["wall_s"] += time.perf_counter() - wall
                entry["cpu_s"] += _cpu_s() - cpu
        setattr(builder_cls, name, wrapper)
    return originals


def _where(func: tuple) -> str:
    path, line, name = func
    if path == "~":
        return name
    if Path(path).is_relative_to(REPO):                  # this clone's code: from its root
        return f"{Path(path).relative_to(REPO)}:{line}({name})"
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    return f"{'/'.join(parts[-3:])}:{line}({name})"


def top_functions(profile: cProfile.Profile, key: str, n: int = TOP,
                  within: tuple[str, ...] = ()) -> list[dict]:
    stats = pstats.Stats(profile)
    rows = []
    for func, (cc, nc, tt, ct, _) in stats.stats.items():
        if within and not any(part in func[0] for part in within):
            continue
        rows.append({"function": _where(func), "calls": nc, "tottime_s": round(tt, 2),
                     "cumtime_s": round(ct, 2)})
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:n]


def profile(data: Path, label: str) -> dict:
    import dask

    from recfunnel.config import ComputeConfig, DatasetConfig
    from recfunnel.workflows.dataset import DatasetBuilder

    cfg, compute = DatasetConfig(), ComputeConfig(cpu=True)
    events = json.loads((data.parent / "prepared.json").read_text())["validated_events"] \
        if (data.parent / "prepared.json").is_file() else None
    result = {"label": label, "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "events": events, "load_average_before": os.getloadavg()}
    timings: dict = {}
    originals = timed_steps(DatasetBuilder, timings)
    try:
        with tempfile.TemporaryDirectory(prefix="profile-dataset-") as tmp:
            wall, cpu = time.perf_counter(), _cpu_s()
            DatasetBuilder(cfg, compute, data, Path(tmp) / "timed", progress=False).build()
            result["build"] = {"wall_s": round(time.perf_counter() - wall, 1),
                               "cpu_s": round(_cpu_s() - cpu, 1)}
            result["steps"] = {k: {m: round(v, 1) for m, v in t.items()}
                               for k, t in timings.items()}
            result["load_average_mid"] = os.getloadavg()
            prof = cProfile.Profile()
            with dask.config.set(scheduler="synchronous"):
                wall = time.perf_counter()
                prof.enable()
                DatasetBuilder(cfg, compute, data, Path(tmp) / "profiled", progress=False).build()
                prof.disable()
            result["profiled_wall_s"] = round(time.perf_counter() - wall, 1)
    finally:
        for name, method in originals.items():
            setattr(DatasetBuilder, name, method)
    result["top_cumulative"] = top_functions(prof, "cumtime_s", 25)
    result["top_own_code"] = [row for row in top_functions(prof, "cumtime_s", 40, OWN_CODE)
                              if not row["function"].endswith(("(build)", "(wrapper)"))][:25]
    result["top_own_time"] = top_functions(prof, "tottime_s")
    result["load_average_after"] = os.getloadavg()
    return result


# ---- BENCHMARKS.md ------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    lines = ["Command: `python benchmarks/profile_dataset.py --data DIR --label LABEL` on the "
             "1M-event synthetic data of `benchmarks/bench_dataset.py` (`DatasetConfig` and "
             "`ComputeConfig(cpu=True)` defaults, one process). Step seconds come from a plain "
             "build (dask's threaded scheduler): CPU below wall means waiting (disk, or other "
             "jobs on the shared machine), CPU above wall two threads at work. The functions come "
             "from a second build under cProfile with dask's synchronous scheduler (cProfile sees "
             "one thread), so their seconds include the profiler's overhead; own time is time in "
             "the function itself, cumulative includes what it calls.", ""]
    runs = results["runs"]
    labels = list(runs)
    head = " | ".join(f"{lab}: wall s | {lab}: CPU s" for lab in labels)
    lines += [f"| step | {head} |", "|---|" + "---|" * (2 * len(labels))]
    for step in STEPS:
        cells = []
        for lab in labels:
            t = runs[lab]["steps"].get(step, {})
            cells += [str(t.get("wall_s", "")), str(t.get("cpu_s", ""))]
        lines.append(f"| {step} | {' | '.join(cells)} |")
    cells = []
    for lab in labels:
        cells += [f"**{runs[lab]['build']['wall_s']}**", f"**{runs[lab]['build']['cpu_s']}**"]
    lines.append(f"| whole build | {' | '.join(cells)} |")
    lines.append("")
    for lab in labels:
        r = runs[lab]
        la = ", ".join(f"{a:.1f}" for a in (r["load_average_before"][0], r["load_average_mid"][0],
                                            r["load_average_after"][0]))
        lines += [f"**{lab}** ({r['date']}, {r['events']:,} events; 1-minute load average before / "
                  f"between the passes / after: {la} on {os.cpu_count()} cores; profiled build "
                  f"{r['profiled_wall_s']} s). {r.get('note', '')}", "",
                  "| top functions by own time | calls | own s | cumulative s |",
                  "|---|---|---|---|"]
        for row in r["top_own_time"][:TOP]:
            lines.append(f"| `{row['function']}` | {row['calls']:,} | {row['tottime_s']} | "
                         f"{row['cumtime_s']} |")
        lines += ["", "| the build's functions and operators (workflows/, NVTabular and Merlin "
                  "ops) by cumulative time | calls | own s | cumulative s |", "|---|---|---|---|"]
        for row in r.get("top_own_code", r["top_cumulative"])[:TOP + 5]:
            lines.append(f"| `{row['function']}` | {row['calls']:,} | {row['tottime_s']} | "
                         f"{row['cumtime_s']} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="validated data (events/, users, items)")
    parser.add_argument("--label", default="after", help="the run's name in the results")
    parser.add_argument("--note", default="", help="a sentence shown under the run's label")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--markdown-only", action="store_true",
                        help="no measurement: re-render the section from the results JSON")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}
    if not args.markdown_only:
        run = profile(args.data, args.label)
        run["note"] = args.note
        results["runs"][args.label] = run
    publish(results, markdown(results), RESULTS, "dataset_profile", not args.no_write)


if __name__ == "__main__":
    main()
