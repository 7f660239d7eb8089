"""Dataset-build benchmark: the NVTabular workflows (one process, and a 2-worker dask
LocalCluster) against the hand-written pandas baseline (benchmarks/pandas_dataset.py), at 1M and
10M synthetic events.

Synthetic events are generated and validated once per size, then each build runs in its own
process, one at a time: wall seconds of the build, input events per second, peak memory, and the
rows of each split written. Peak memory is the process's own maximum RSS (getrusage) and, for
every build, the summed RSS of its whole process tree (the cluster's worker processes
included), sampled with psutil every 0.2 s. The CPU seconds of the build's process tree and of
everything else on the (shared) machine meanwhile are recorded too. After the three builds the
written splits are compared row by row. Results go to benchmarks/results/dataset.json and to the
`bench_dataset` section of BENCHMARKS.md.

    make bench                                              # everything
    python benchmarks/bench_dataset.py --sizes 1000000     # one size
    python benchmarks/bench_dataset.py --data-dir /tmp/bd  # keep (and reuse) the generated data
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
import threading
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import WORLD, machine, update_benchmarks_md  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "dataset.json"
BUILDS = ("nvtabular", "nvtabular_cluster", "pandas")
LABEL = {"nvtabular": "NVTabular, one process",
         "nvtabular_cluster": "NVTabular, LocalCluster 2 workers", "pandas": "pandas baseline"}
SPLITS = ("train", "valid", "test")
SAMPLE_EVERY_S = 0.2
# Columns NVTabular's Categorify encodes: their codes may differ where frequencies tie.
ENCODED = ("user_id", "item_id", "gender", "location", "category", "creator")


# ---- the measured child processes --------------------------------------------------------------

def child(spec: dict) -> dict:
    """Runs in a fresh interpreter: prepares data, or runs one build. Returns the JSON result."""
    import psutil

    kind = spec["kind"]
    if kind == "prepare":
        return prepare(spec)
    if kind == "compare":
        return compare(spec)
    t0 = time.perf_counter()
    from recfunnel.config import ComputeConfig, DatasetConfig
    if kind == "pandas":
        from benchmarks.pandas_dataset import PandasDatasetBuilder
    else:
        from recfunnel.workflows.backend import dask_client
        from recfunnel.workflows.dataset import DatasetBuilder
    cfg = DatasetConfig(**spec["dataset"])
    data, out = Path(spec["data"]), Path(spec["out"])
    result = {"import_s": time.perf_counter() - t0,
              "rss_after_import_mib": psutil.Process().memory_info().rss / 2**20}
    if kind == "pandas":
        t = time.perf_counter()
        section = PandasDatasetBuilder(cfg, data, out).build()
        result["build_s"] = time.perf_counter() - t
    else:
        compute = ComputeConfig(**spec["compute"])
        t = time.perf_counter()
        with dask_client(compute) as client:
            started = time.perf_counter()
            result["cluster_start_s"] = started - t if client is not None else None
            result["workers"] = len(client.scheduler_info()["workers"]) if client else 0
            section = DatasetBuilder(cfg, compute, data, out, progress=False).build()
            result["build_s"] = time.perf_counter() - started
    result.update(splits=section["splits"], positives=section["positives"],
                  steps=[{k: s[k] for k in ("name", "rows_after", "users_after", "items_after")}
                         for s in section["steps"]])
    return result


def prepare(spec: dict) -> dict:
    """Synthetic events of one size, generated and validated into `spec['root']` (not timed)."""
    from recfunnel.config import SyntheticConfig, ValidationConfig
    from recfunnel.data import sources, synthetic

    root, n, users, items = Path(spec["root"]), spec["events"], spec["users"], spec["items"]
    marker = root / "prepared.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    shutil.rmtree(root, ignore_errors=True)
    cfg = SyntheticConfig(n_events=n, n_users=users, n_items=items, n_creators=max(items // 20, 10))
    synthetic.generate(cfg, root / "raw", progress=False)
    raw = sources.RawTables("parquet", "bench", root / "raw" / "events",
                            root / "raw" / "users.parquet", root / "raw" / "items.parquet")
    section = sources.validate_source(raw, root / "data", ValidationConfig(), progress=False)
    shutil.rmtree(root / "raw")
    info = {"events": n, "users": users, "items": items, "validated_events": section["events"],
            "data": str(root / "data")}
    marker.write_text(json.dumps(info))
    return info


def compare(spec: dict) -> dict:
    """Row-by-row comparison of each build's splits with the first build's, by (user, item)."""
    import numpy as np
    import pandas as pd

    def read(path):
        parts = sorted(Path(path).glob("*.parquet"))
        frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        return frame.sort_values(["user_id_raw", "item_id_raw"], ignore_index=True)

    reference, others = spec["outs"][0], spec["outs"][1:]
    report = {}
    for name in SPLITS:
        ref = read(Path(reference[1]) / name)
        for kind, out in others:
            frame = read(Path(out) / name)
            entry = report.setdefault(kind, {"vs": reference[0], "splits": {}})
            diff = {"rows": [len(ref), len(frame)]}
            if len(ref) != len(frame):
                entry["splits"][name] = diff
                continue
            missing = sorted(set(ref.columns) ^ set(frame.columns))
            if missing:
                diff["columns_only_in_one"] = missing
            differing, codes = {}, {}
            for c in ref.columns:
                if c not in frame:
                    continue
                a, b = ref[c].to_numpy(), frame[c].to_numpy()
                if np.issubdtype(a.dtype, np.floating) and np.issubdtype(b.dtype, np.floating):
                    same = np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
                else:
                    same = a == b
                if same.all():
                    continue
                if c in ENCODED:      # same id space, other numbering where counts tie?
                    pairs = pd.DataFrame({"a": a, "b": b}).drop_duplicates()
                    codes[c] = {"rows_with_other_code": int((~same).sum()),
                                "one_to_one": bool(pairs["a"].nunique() == len(pairs)
                                                   == pairs["b"].nunique())}
                else:
                    differing[c] = int((~same).sum())
            diff["columns_differing"] = differing
            diff["encoded_columns_renumbered"] = codes
            entry["splits"][name] = diff
        del ref
    for entry in report.values():
        entry["identical_up_to_renumbering"] = all(
            d["rows"][0] == d["rows"][1] and not d.get("columns_differing")
            and not d.get("columns_only_in_one")
            and all(v["one_to_one"] for v in d.get("encoded_columns_renumbered", {}).values())
            for d in entry["splits"].values()) and len(entry["splits"]) == len(SPLITS)
    return {"by_build": report}


# ---- the parent: one child at a time, its process tree sampled ----------------------------------

class TreeRSS(threading.Thread):
    """The summed RSS of a process and all its descendants, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = SAMPLE_EVERY_S):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak, self.max_processes = 0, 0
        self.load: list[float] = []          # the machine's 1-minute load average, sampled
        self.done = threading.Event()

    def run(self):
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self.max_processes = max(self.max_processes, len(procs))
            self.load.append(os.getloadavg()[0])
            self.done.wait(self.interval)


def _cpu() -> tuple[float, float, float]:
    """CPU seconds so far: the machine's busy time, this process's, its reaped descendants'."""
    import resource

    import psutil
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return busy, me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run_child(spec: dict, log_dir: Path, timeout: float | None = None) -> dict:
    """Runs `spec` in a fresh interpreter; adds its wall time, peak RSS and the tree's peak RSS.

    Also the CPU seconds of the child's process tree and of everything else on the machine
    meanwhile (`other_cpu_s`: other users' jobs that slowed the measurement down).
    A failed child gives {"error": ...} with the end of its stderr instead of raising.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = log_dir / f"{spec['kind']}-{spec.get('events', '')}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    t, cpu0, load0 = time.perf_counter(), _cpu(), os.getloadavg()[0]
    with open(f"{stem}.out", "w") as out, open(f"{stem}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                stdout=out, stderr=err, env=env, cwd=REPO, start_new_session=True)
        sampler = TreeRSS(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)      # the child and its workers, nothing else
            proc.wait()
            code = f"killed after the {timeout:.0f} s timeout"
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - t
    busy, me, tree = (b - a for a, b in zip(cpu0, _cpu()))
    cpu = {"tree_cpu_s": tree, "other_cpu_s": max(busy - tree - me, 0.0),
           "load_average": {"before": round(load0, 2),
                            "mean": round(sum(sampler.load) / max(len(sampler.load), 1), 2),
                            "max": round(max(sampler.load, default=load0), 2)}}
    lines = Path(f"{stem}.out").read_text().strip().splitlines()
    if code != 0 or len(lines) < 2:
        tail = Path(f"{stem}.err").read_text().strip().splitlines()[-25:]
        return {"error": code if isinstance(code, str) else f"exit code {code}",
                "stderr_tail": tail, "process_s": round(wall, 1),
                "tree_peak_rss_mib": round(sampler.peak / 2**20, 1), **cpu}
    *_, result, peak = lines
    return {**json.loads(result), "process_s": wall,
            "peak_rss_mib": json.loads(peak)["peak_rss_mib"],
            "tree_peak_rss_mib": sampler.peak / 2**20, "tree_max_processes": sampler.max_processes,
            **cpu}


def run(sizes: list[int], data_dir: Path | None, worker_memory: str, timeout: float) -> dict:
    from recfunnel.config import ComputeConfig, DatasetConfig

    dataset = DatasetConfig()
    cluster = ComputeConfig(cluster="local", workers=2, threads_per_worker=1,
                            memory_limit=worker_memory, cpu=True)
    one = ComputeConfig(cpu=True)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "make bench  (python benchmarks/bench_dataset.py)",
               "dataset_config": asdict(dataset),
               "compute": {"nvtabular": asdict(one), "nvtabular_cluster": asdict(cluster)},
               "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as tmp:
        root = Path(data_dir) if data_dir else Path(tmp)
        logs = Path(tmp) / "logs"
        for n in sorted(sizes):
            users, items = WORLD.get(n, (max(n // 50, 100), max(n // 100, 100)))
            print(f"preparing {n:,} events ({users:,} users, {items:,} items) ...", flush=True)
            info = run_child({"kind": "prepare", "root": str(root / f"syn-{n}"), "events": n,
                              "users": users, "items": items}, logs)
            if "error" in info:
                raise RuntimeError(f"data preparation failed: {info}")
            entry = {"events": n, "users": users, "items": items,
                     "validated_events": info["validated_events"], "builds": {}}
            outs = []
            for kind in BUILDS:
                out = Path(tmp) / f"out-{n}-{kind}"
                spec = {"kind": kind, "events": n, "data": info["data"], "out": str(out),
                        "dataset": asdict(dataset),
                        "compute": asdict(cluster if kind == "nvtabular_cluster" else one)}
                print(f"{n:,} events: {LABEL[kind]} ...", flush=True)
                res = run_child(spec, logs, timeout)
                if "error" not in res:
                    res["events_per_s"] = info["validated_events"] / res["build_s"]
                    outs.append((kind, str(out)))
                entry["builds"][kind] = _rounded(res)
                print(json.dumps({k: v for k, v in entry["builds"][kind].items()
                                  if k not in ("steps", "positives")}), flush=True)
            entry["ratios"] = ratios(entry["builds"])
            entry["agreement"] = agreement(entry["builds"])
            if len(outs) > 1:
                print(f"{n:,} events: comparing the written splits ...", flush=True)
                comparison = run_child({"kind": "compare", "events": n, "outs": outs}, logs)
                entry["comparison"] = comparison.get("by_build", comparison)
            for _, out in outs:
                shutil.rmtree(out, ignore_errors=True)
            print(json.dumps({k: entry[k] for k in ("ratios", "agreement")}), flush=True)
            results["sizes"].append(entry)
    return results


def ratios(builds: dict) -> dict:
    """Time and memory of NVTabular over pandas, and of the cluster over one process."""
    def ratio(a, b, key):
        x, y = builds.get(a, {}), builds.get(b, {})
        if "error" in x or "error" in y:
            return None
        return round(x[key] / y[key], 2) if key in x and key in y and y[key] else None
    out = {}
    for name, (a, b) in {"nvtabular_over_pandas": ("nvtabular", "pandas"),
                         "cluster_over_one_process": ("nvtabular_cluster", "nvtabular"),
                         "cluster_over_pandas": ("nvtabular_cluster", "pandas")}.items():
        out[name] = {"build_s": ratio(a, b, "build_s"),
                     "tree_cpu_s": ratio(a, b, "tree_cpu_s"),
                     "tree_peak_rss": ratio(a, b, "tree_peak_rss_mib")}
    return out


def agreement(builds: dict) -> dict:
    """Do the builds that finished report the same split rows, positives and step counts?"""
    done = {k: v for k, v in builds.items() if "error" not in v}
    if len(done) < 2:
        return {"compared": list(done)}
    ref_kind, ref = next(iter(done.items()))
    out = {"compared": list(done)}
    for key in ("splits", "positives", "steps"):
        out[f"same_{key}"] = all(v[key] == ref[key] for v in done.values())
    out["differences"] = {k: {key: v[key] for key in ("splits", "positives", "steps")
                              if v[key] != ref[key]}
                          for k, v in done.items() if k != ref_kind and any(
                              v[key] != ref[key] for key in ("splits", "positives", "steps"))}
    return out


def _rounded(res: dict) -> dict:
    return {k: (round(v, 2 if k.endswith("_s") and v < 10 else 1)
                if isinstance(v, float) else v) for k, v in res.items()}


# ---- BENCHMARKS.md ------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    cfg, compute = results["dataset_config"], results["compute"]["nvtabular_cluster"]
    rows = ["| events | users | items | build | build s | events/s | process s | peak RSS MiB "
            "(process) | peak RSS MiB (process tree) | CPU s: build / other jobs | load average: "
            "before / mean / max | train rows | valid rows | test rows |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for size in results["sizes"]:
        head = f"| {size['events']:,} | {size['users']:,} | {size['items']:,}"
        for kind, b in size["builds"].items():
            if "error" in b:
                rows.append(f"{head} | {LABEL[kind]} | failed: {b['error']} | | "
                            f"{b['process_s']} | | {b['tree_peak_rss_mib']:,} | {_cpu_cell(b)} "
                            f"| {_load_cell(b)} | | | |")
                notes.append(f"- {size['events']:,} events, {LABEL[kind]}: failed "
                             f"({b['error']}): `{' / '.join(b['stderr_tail'][-3:])}`")
                continue
            s = b["splits"]
            rows.append(f"{head} | {LABEL[kind]} | {b['build_s']} | {round(b['events_per_s']):,} | "
                        f"{b['process_s']} | {b['peak_rss_mib']:,} | {b['tree_peak_rss_mib']:,} | "
                        f"{_cpu_cell(b)} | {_load_cell(b)} | {s['train']:,} | {s['valid']:,} | "
                        f"{s['test']:,} |")
        r = size["ratios"]
        notes.append(
            f"- {size['events']:,} events ({size['validated_events']:,} after validation): "
            f"NVTabular / pandas: build time {_x(r['nvtabular_over_pandas']['build_s'])}, "
            f"CPU s {_x(r['nvtabular_over_pandas'].get('tree_cpu_s'))}, "
            f"peak RSS (tree) {_x(r['nvtabular_over_pandas']['tree_peak_rss'])}; "
            f"LocalCluster / one process: build time "
            f"{_x(r['cluster_over_one_process']['build_s'])}, "
            f"CPU s {_x(r['cluster_over_one_process'].get('tree_cpu_s'))}, "
            f"peak RSS (tree) {_x(r['cluster_over_one_process']['tree_peak_rss'])}. "
            + _agreement_text(size))
    return "\n".join([
        f"Command: `{results['command']}`. Machine: {results['machine']}. Date: {results['date']}.",
        "The training-set build (`workflows/dataset.py`: canonical items, unsafe filter, freshness "
        "window, active users, time split, labels, examples, negatives, point-in-time features, "
        "Categorify, checks, parquet splits) on validated synthetic events, against "
        "`benchmarks/pandas_dataset.py`, the same build written by hand in pandas. "
        f"`DatasetConfig` defaults: time split ({cfg['valid_days']} valid + {cfg['test_days']} "
        f"test days), {cfg['window_days']}-day window, >= {cfg['active_min_events']} events in "
        f"{cfg['active_window_days']} days, {cfg['negatives_per_row']} {cfg['negative_sampling']} "
        "negative per example, unsafe filters flag + title classifier. The cluster is a dask "
        f"LocalCluster of {compute['workers']} worker processes x {compute['threads_per_worker']} "
        f"thread, memory_limit {compute['memory_limit']} each.",
        "Each build runs alone in its own process. Build s is the `build()` call only; process s "
        f"adds start-up: imports ({_import_range(results)}, mostly TensorFlow pulled in by Merlin, "
        "which the pandas baseline pays too because it reuses workflows/*.py) and the cluster's "
        "start. Peak RSS (process) is the build process's own "
        "maximum (getrusage); peak RSS (process tree) is the summed RSS of the process and all "
        "its descendants (for the cluster: the two worker processes; scheduler and nannies run "
        f"in the main process), sampled every {SAMPLE_EVERY_S} s. CPU s are the CPU seconds of "
        "the build's process tree (start-up included) and of everything else on the machine "
        "during it "
        "(the machine is shared: a large second figure means other jobs slowed that cell "
        f"down; {os.cpu_count()} cores x process s is the capacity); the machine's 1-minute "
        "load average before each build and its mean and maximum during it say the same "
        f"(above {os.cpu_count()}, jobs waited for a core). One run per cell.",
        "", *rows, "", *notes,
    ])


def _import_range(results: dict) -> str:
    done = [b for size in results["sizes"] for b in size["builds"].values() if "import_s" in b]
    if not done:
        return "n/a"
    secs = [b["import_s"] for b in done]
    rss = max(b["rss_after_import_mib"] for b in done)
    return f"{min(secs):.0f}-{max(secs):.0f} s, {rss:,.0f} MiB resident after them"


def _load_cell(b: dict) -> str:
    load = b.get("load_average")
    return "n/a" if not load else f"{load['before']:.1f} / {load['mean']:.1f} / {load['max']:.1f}"


def _cpu_cell(b: dict) -> str:
    if "tree_cpu_s" not in b:
        return "n/a"
    return f"{round(b['tree_cpu_s']):,} / {round(b['other_cpu_s']):,}"


def _differences(splits: dict) -> str:
    """Which split differs how, in a sentence: rows, or columns with their differing rows."""
    out = []
    for name, d in splits.items():
        if d["rows"][0] != d["rows"][1]:
            out.append(f"{name} has {d['rows'][1]:,} rows instead of {d['rows'][0]:,}")
            continue
        cols = [f"{c} ({n:,} rows)" for c, n in d.get("columns_differing", {}).items()]
        cols += [f"{c} (codes not one-to-one)" for c, v in
                 d.get("encoded_columns_renumbered", {}).items() if not v["one_to_one"]]
        cols += [f"{c} (in one build only)" for c in d.get("columns_only_in_one", [])]
        if cols:
            out.append(f"{name}: {', '.join(cols)}")
    return "; ".join(out)


def _x(v) -> str:
    return f"{v}x" if v is not None else "n/a"


def _agreement_text(size: dict) -> str:
    a = size.get("agreement", {})
    if len(a.get("compared", [])) < 2:
        return "Too few builds finished to compare."
    parts = []
    same = a.get("same_splits") and a.get("same_positives") and a.get("same_steps")
    parts.append("Split rows, label positives and every step's row/user/item counts "
                 + ("agree across the builds." if same else f"DIFFER: {json.dumps(a['differences'])}."))
    comp = size.get("comparison", {})
    if "error" in comp:
        parts.append(f"The row-by-row comparison failed ({comp['error']}).")
    else:
        for kind, c in comp.items():
            renumbered = sorted({col for d in c["splits"].values()
                                 for col in d.get("encoded_columns_renumbered", {})})
            if c["identical_up_to_renumbering"]:
                parts.append(f"Row by row, {LABEL[kind]} equals {LABEL[c['vs']]}"
                             + (f" except that Categorify numbers tied values differently in "
                                f"{', '.join(renumbered)} (one-to-one)." if renumbered else "."))
            else:
                parts.append(f"Row by row, {LABEL[kind]} DIFFERS from {LABEL[c['vs']]}: "
                             f"{_differences(c['splits'])}.")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the generated data here and reuse it on the next run "
                             "(default: a temporary folder)")
    parser.add_argument("--worker-memory", default="8GiB",
                        help="memory_limit of each of the 2 LocalCluster workers")
    parser.add_argument("--timeout", type=float, default=3 * 3600,
                        help="seconds after which a build is killed and recorded as failed")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--markdown-only", action="store_true",
                        help="no measurements: recompute ratios and the BENCHMARKS.md section "
                             "from the saved results JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"peak_rss_mib": peak}))
        return
    if args.markdown_only:          # derived figures are recomputed from the measurements
        results = json.loads(RESULTS.read_text())
        for size in results["sizes"]:
            size["ratios"], size["agreement"] = ratios(size["builds"]), agreement(size["builds"])
    else:
        results = run(args.sizes, args.data_dir, args.worker_memory, args.timeout)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str))
    body = markdown(results)
    print(body)
    if not args.no_write:
        if "<!-- bench_dataset:start -->" not in (REPO / "BENCHMARKS.md").read_text():
            with open(REPO / "BENCHMARKS.md", "a") as f:
                f.write("\n## Dataset build (NVTabular workflows vs a pandas baseline)\n\n"
                        "<!-- bench_dataset:start -->\n<!-- bench_dataset:end -->\n")
        update_benchmarks_md("bench_dataset", body)


if __name__ == "__main__":
    main()
