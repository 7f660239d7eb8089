"""Data-source benchmarks: synthetic generation and validation throughput and peak memory at
1M and 10M events, and the MovieLens-100K load time.

Each measurement runs in its own process so its peak RSS is its own. Results go to
benchmarks/results/data.json and to the `bench_data` section of BENCHMARKS.md.

    make bench                       # everything
    python benchmarks/bench_data.py --sizes 1000000   # one size
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "data.json"

# Scale users and items with the events, as a growing platform would.
WORLD = {1_000_000: (20_000, 10_000), 10_000_000: (100_000, 50_000)}


PEAK = """
import resource
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(code: str) -> dict:
    """Runs `code` in a fresh interpreter; it prints a JSON dict, then its own peak RSS."""
    done = subprocess.run([sys.executable, "-c", code + PEAK], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    *_, result, peak = done.stdout.strip().splitlines()
    return {**json.loads(result), "peak_rss_mib": round(json.loads(peak)["peak_rss_mib"], 1)}


GENERATE = """
import json, time
from recfunnel.config import SyntheticConfig
from recfunnel.data import synthetic
cfg = SyntheticConfig(n_events={n}, n_users={u}, n_items={i}, n_creators={c})
t = time.perf_counter()
info = synthetic.generate(cfg, {out!r}, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "events": info["events"]}}))
"""

VALIDATE = """
import json, time
from pathlib import Path
from recfunnel.config import ValidationConfig
from recfunnel.data import sources
src = Path({src!r})
raw = sources.RawTables("parquet", "bench", src / "events", src / "users.parquet", src / "items.parquet")
t = time.perf_counter()
section = sources.validate_source(raw, Path({out!r}), ValidationConfig(), progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t, "events": section["validation"]["events"]["rows_in"],
                  "quarantined": section["quarantined_rows"]}}))
"""

MOVIELENS = """
import json, time
from recfunnel.data import movielens
movielens.load()            # fetch the wheel into the cache if absent (not timed)
t = time.perf_counter()
ml = movielens.load()
print(json.dumps({"seconds": time.perf_counter() - t, "events": len(ml.events)}))
"""


def machine() -> str:
    import psutil
    return (f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU, Python {platform.python_version()}")


def run(sizes: list[int]) -> dict:
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "synthetic": [],
               "command": "make bench  (python benchmarks/bench_data.py)"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(sizes):
            users, items = WORLD.get(n, (max(n // 50, 100), max(n // 100, 100)))
            out = Path(tmp) / f"syn-{n}"
            print(f"generating {n:,} events ({users:,} users, {items:,} items) ...", flush=True)
            gen = _child(GENERATE.format(n=n, u=users, i=items, c=max(items // 20, 10), out=str(out)))
            print(f"validating {n:,} events ...", flush=True)
            val = _child(VALIDATE.format(src=str(out), out=str(Path(tmp) / f"val-{n}")))
            results["synthetic"].append({
                "events": n, "users": users, "items": items,
                "generate_s": round(gen["seconds"], 1),
                "generate_events_per_s": round(n / gen["seconds"]),
                "generate_peak_rss_mib": gen["peak_rss_mib"],
                "validate_s": round(val["seconds"], 1),
                "validate_events_per_s": round(n / val["seconds"]),
                "validate_peak_rss_mib": val["peak_rss_mib"],
                "quarantined": val["quarantined"],
            })
            print(json.dumps(results["synthetic"][-1]), flush=True)
    ml = _child(MOVIELENS)
    results["movielens100k_load_s"] = round(ml["seconds"], 2)
    return results


def markdown(results: dict) -> str:
    rows = ["| events | users | items | generate s | events/s | peak RSS MiB | validate s | "
            "events/s | peak RSS MiB | quarantined |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["synthetic"]:
        rows.append(f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['generate_s']} | "
                    f"{r['generate_events_per_s']:,} | {r['generate_peak_rss_mib']:,} | "
                    f"{r['validate_s']} | {r['validate_events_per_s']:,} | "
                    f"{r['validate_peak_rss_mib']:,} | {r['quarantined']:,} |")
    return "\n".join([
        f"Command: `{results['command']}`. Machine: {results['machine']}. Date: {results['date']}.",
        "Each step runs in its own process; peak RSS is that process's maximum resident memory.",
        "Generation writes day-partitioned parquet in chunks of at most 1M events; validation",
        "streams those files through the schema checks into clean parquet plus a quarantine.",
        "", *rows, "",
        f"MovieLens-100K load (recbole wheel from the cache, parse and map to the schema): "
        f"{results['movielens100k_load_s']} s.",
    ])


def update_benchmarks_md(section: str, body: str) -> None:
    path = REPO / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)


def publish(results: dict, body: str, results_path: Path, section: str, write: bool) -> None:
    """Prints a benchmark's markdown `body`; if `write`, saves its results JSON and puts the
    body in its `section` of BENCHMARKS.md."""
    print(body)
    if not write:
        return
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2, default=str))
    update_benchmarks_md(section, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = run(args.sizes)
    publish(results, markdown(results), RESULTS, "bench_data", write=not args.no_write)


if __name__ == "__main__":
    main()
