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


OPTIMIZER_STEPS = """
import json, sys, time
from dataclasses import replace
import recfunnel.workflows  # noqa: F401
from recfunnel.config import load_config
from recfunnel.models import ranking, retrieval
from recfunnel.models.data import Splits, to_dataset
from recfunnel.models.optimizers import optimizer
cfg = load_config({config!r}).models
splits = Splits.load({dataset!r})
batch, steps, out = 4096, 10, {{}}
for name in ("two_tower", "light_ranker", "heavy_ranker"):
    if name == "two_tower":
        schemas = retrieval.tower_schemas(name, splits, cfg)
        rows, schema = splits.positives(splits.train, "click"), schemas[0] + schemas[1]
        build = lambda: retrieval.build_two_tower(splits, cfg)
    else:
        kind = name.removesuffix("_ranker")
        rows, schema = splits.train, ranking.ranker_schema(splits, cfg, kind)
        build = lambda: ranking.build_ranker(schema, cfg, kind)
    rows = rows.iloc[:batch * steps]
    for opt in ("adam", "lazy_adam"):
        model = build()
        model.compile(optimizer=optimizer(opt, 0.003), metrics=[])
        model.fit(to_dataset(rows.iloc[:batch * 2], schema), batch_size=batch, verbose=0)
        t, c = time.perf_counter(), time.process_time()
        model.fit(to_dataset(rows, schema), batch_size=batch, verbose=0)
        out.setdefault(name, {{}})[opt] = {{
            "s_per_step": round((time.perf_counter() - t) / steps, 3),
            "cpu_s_per_step": round((time.process_time() - c) / steps, 3)}}
print(json.dumps(out))
"""


COLD_ITEMS = """
import json
import numpy as np
import recfunnel.workflows  # noqa: F401
from pathlib import Path
from recfunnel.config import load_config
from recfunnel.models.candidates import EmbeddingIndex, load_retrieval
from recfunnel.models.data import Splits, to_tensors
from recfunnel.models.retrieval import tower_schemas
from recfunnel.topk import topk_metrics
run = Path({run!r})
version = run / json.loads((run / "summary.json").read_text())["models"]["path"]
cfg = load_config(run / "config.yaml").models
splits = Splits.load(run / "dataset")
query, index, _ = load_retrieval(version / "two_tower_query", version / "two_tower_items")
positives = splits.positives(splits.valid, "click")
users = positives.sort_values("timestamp").drop_duplicates("user_id")
users = users.iloc[np.sort(np.random.default_rng(0).choice(len(users), min(2000, len(users)),
                                                           replace=False))]
truth = positives.groupby("user_id")["item_id"].apply(np.asarray)
truth = [truth[u] for u in users["user_id"]]
exclude = splits.seen_items("click", (splits.train,), users["user_id"].to_numpy())
inputs = to_tensors(users, tower_schemas("two_tower", splits, cfg)[0])
q = next(iter(query(**inputs).values())).numpy()
warm = np.isin(index.item_ids, splits.train["item_id"].unique())
out = {{"validation_positives_on_cold_items": round(float(np.mean(
    ~np.isin(positives["item_id"], splits.train["item_id"].unique()))), 4)}}
for name, keep in (("whole_catalogue", np.ones(len(warm), bool)), ("warm_items_only", warm)):
    top, _ = EmbeddingIndex(index.item_ids[keep], index.vectors[keep]).search(q, 500, exclude)
    out[name] = {{f"recall@{{k}}": round(topk_metrics(top[:, :k], truth, k)[f"recall@{{k}}"], 4)
                 for k in (10, 500)}}
    out[name]["cold_share_of_top_500"] = round(float(np.mean(
        ~np.isin(top[top >= 0], index.item_ids[warm]))), 4)
print(json.dumps(out))
"""


def _child_json(code: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cold_items(run_dir: Path, env: dict) -> dict:
    """The two-tower's validation recall@10 and @500 (2,000 users) searching the whole index
    and only its items with a training example, and the cold items' share of the top 500."""
    return _child_json(COLD_ITEMS.format(run=str(run_dir)), env)


def optimizer_steps(run_dir: Path, env: dict) -> dict:
    """Seconds per training step at batch 4096 with Adam and with LazyAdam on the run's dataset
    (10 steps after 2 of warm-up, per model), in a fresh process."""
    return _child_json(OPTIMIZER_STEPS.format(config=str(CONFIG),
                                              dataset=str(run_dir / "dataset")), env)


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
                   models={name: _training(m) for name, m in trained.items()},
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


def _training(m: dict) -> dict:
    """A model's training time; `fit_seconds` are its epochs' own (without each epoch's
    validation, which train_seconds include), `fit_examples_per_second` by them."""
    out = {k: m[k] for k in ("train_seconds", "examples_per_second", "best_epoch", "skipped")
           if k in m}
    fit = sum(h.get("seconds", 0.0) for h in m.get("history", []))
    if fit and m.get("examples_per_second"):
        out["fit_seconds"] = round(fit, 1)
        out["fit_examples_per_second"] = round(m["examples_per_second"] * m["train_seconds"] / fit)
    return out


def _catalogue(run_dir: Path):
    import pandas as pd
    return pd.read_parquet(run_dir / "dataset" / "artifacts" / "catalogue.parquet")


def _train_items(run_dir: Path) -> np.ndarray:
    import pandas as pd
    parts = sorted((run_dir / "dataset" / "train").glob("*.parquet"))
    return np.concatenate([pd.read_parquet(p, columns=["item_id"])["item_id"].to_numpy()
                           for p in parts])


# What crawled at a million items before the fixes of this run's commits, found with cProfile
# (the dataset step under dask's synchronous scheduler, so worker tasks are profiled; a
# profiled run, 2026-12-02): recorded here because the code that measured them is gone.
BEFORE = """Found by profiling before the fixes (cProfile; the dataset step with dask's synchronous
scheduler so that worker tasks are seen; 2026-12-02, profiled seconds):
- duplicate detection compared every pair within the (creator, duration) blocks (5.1M pairs
  in 709k blocks at 1M items; a catalogue without those columns is one block: 10k titles 15.9 s,
  a million impossible) -> blocks by title numbers too, prefix and count filters on 3-grams,
  exact for the similarity bound: 1M items 11.6 s, 10k titles without blocking columns 0.2 s;
- JoinExternal merged every partition with the whole million-row item table: 26 s of key
  factorising in 970 merges -> KeyedJoin, an index lookup (same rows and dtypes);
- negative sampling recomputed the popularity distribution over 179k candidates in every
  rng.choice call: 21.5 s in 17.7k calls -> computed once, the same draws;
- the truth audit walked a million one-item duplicate groups twice: 104 s -> groups of two or
  more only;
- each epoch's validation ranked the whole catalogue for all 15k validation users: 55 s an
  epoch -> a fixed sample of models.retrieval_eval_users (2,000 here);
- Keras' Adam: see the table above.
Before them the index held only the 144,577 items with a training example, and a cold item
had no id of its own (Categorify mapped every one to its out-of-vocabulary row)."""


def markdown(r: dict) -> str:
    rows = ["| step | seconds | peak RSS MB (process tree) | CPU s (tree / other jobs) |",
            "|---|---|---|---|"]
    for step, s in r["steps"].items():
        rows.append(f"| {step} | {s['seconds']:,} | {s['peak_rss_mb']:,} | "
                    f"{s['cpu_s']:,} / {s['other_jobs_cpu_s']:,} |")
    total = sum(s["seconds"] for s in r["steps"].values())
    models = r.get("models", {})
    trained = ", ".join(f"{name} {m['train_seconds']} s ({m['fit_seconds']} s of it in its "
                        f"epochs, {m['fit_examples_per_second']:,} examples/s)"
                        for name, m in models.items() if m.get("fit_seconds"))
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
            "embedded by their attributes through the two-tower's item tower. Training (the rest "
            "of a model's seconds is its validation after each epoch, for retrieval a ranking "
            "of the whole catalogue): "
            f"{trained}; EASE: {models.get('ease', {}).get('skipped', 'trained')}.")
    if r.get("cold_items"):
        c = r["cold_items"]
        whole, warm = c["whole_catalogue"], c["warm_items_only"]
        lines.append(
            f"Cold items in retrieval (2,000 validation users, exact search of the exported "
            f"two-tower index): recall@10 {whole['recall@10']} and recall@500 "
            f"{whole['recall@500']} over the whole catalogue, {warm['recall@10']} and "
            f"{warm['recall@500']} over the items with a training example only; cold items are "
            f"{c['whole_catalogue']['cold_share_of_top_500']:.2%} of the top 500, while "
            f"{c['validation_positives_on_cold_items']:.1%} of the validation clicks are on "
            "items without a training example: embedded by attributes alone, they are "
            "reachable but rarely retrieved (cold-start exploration is left open).")
    if r.get("optimizer_steps"):
        lines += ["", "Seconds per training step at batch 4096 on this dataset (10 steps after 2 "
                  "of warm-up; CPU seconds are the steadier figure on a shared machine), with Keras' Adam, which rewrites every row of the "
                  f"{r['index_items']:,}-row item tables on every step, and with "
                  "`models.optimizer: lazy_adam`, which updates only the rows a batch used:", "",
                  "| model | adam s/step (wall / CPU) | lazy_adam s/step (wall / CPU) | "
                  "speed-up (wall / CPU) |", "|---|---|---|---|"]
        for name, m in r["optimizer_steps"].items():
            a, z = m["adam"], m["lazy_adam"]
            ratio = {k: a[k] / max(z[k], 1e-9) for k in ("s_per_step", "cpu_s_per_step")}
            lines.append(f"| {name} | {a['s_per_step']} / {a['cpu_s_per_step']} | "
                         f"{z['s_per_step']} / {z['cpu_s_per_step']} | "
                         f"{ratio['s_per_step']:.1f}x / {ratio['cpu_s_per_step']:.1f}x |")
        lines.append("")
    lines += [BEFORE, ""]
    if r.get("repository"):
        s = r["serving"]
        lines.append(
            f"The serving step refreshed the served feature tables (the whole catalogue), "
            f"exported Triton version {s['triton_version']} in {s['export_seconds']} s, "
            f"started tritonserver in {s['startup_seconds']} s and asked it "
            f"for {s['requests']} users one at a time ({s['errors']} errors; p50 "
            f"{s['latency_ms']['p50']} ms: a smoke test, not the latency benchmark, which is "
            f"benchmarks/bench_serving.py). Run `{r['run']}`, version `{r['version']}`, "
            f"repository `{r['repository']}`.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=STEPS,
                        help="the steps to (re)run; none: only describe the run and time the optimizers")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--no-optimizers", action="store_true",
                        help="skip the Adam vs LazyAdam step timings")
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
    timings = previous.get("optimizer_steps")
    if not args.no_optimizers:
        print("optimizer step timings ...", flush=True)
        timings = optimizer_steps(run_dir, env)
    print("cold items in retrieval ...", flush=True)
    results = {**describe(run_dir), "steps": {s: steps[s] for s in STEPS if s in steps},
               "optimizer_steps": timings, "cold_items": cold_items(run_dir, env),
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
