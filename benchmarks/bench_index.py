"""The candidates stage's item index at a million items (issue 15): recall against exact,
search latency, build and load time, and memory of each faiss kind at a few parameters.

Vectors, by default: the synthetic world of recfunnel.data.synthetic (build_world) at
1,000,000 items with latent_dim = the demo's models.embedding_dim (configs/default.yaml).
The items' content vectors are the item embeddings and the users' tastes on the last day the
queries: in that world relevance is a function of taste . content only, so they are the towers
an ideal two-tower model would learn (unit vectors, like the two-tower's L2-normed output).
With --items-dir, a trained version's `<source>_items` folder, queried by the version's own
query tower (`<source>_query`) on its users' feature rows (random items' vectors when the
version has no such tower beside it).

Every index is built the way an export builds it (models.candidates.save_index, into a copy of
the embeddings folder) and opened as a served stage opens it (EmbeddingIndex.load); latency is
the stage's own call, `search(query, 500, exclude)` with 20 excluded items per user, timed in
rounds that visit every setting in turn so a busy machine slows them alike.

    python benchmarks/bench_index.py                  # about 30 minutes on 2 shared cores
    python benchmarks/bench_index.py --items-dir runs/<run>/models/<version>/two_tower_items
Results: benchmarks/results/index.json and the `bench_index` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402
from recfunnel.models.artifacts import read_manifest, write_manifest  # noqa: E402
from recfunnel.models.candidates import (ITEM_EMBEDDINGS, ITEM_IDS, SEARCH_PARAMS,  # noqa: E402
                                         EmbeddingIndex, index_params, save_index,
                                         saved_index_name)

RESULTS = REPO / "benchmarks" / "results" / "index.json"
TRAINED_RESULTS = RESULTS.with_name("index_trained.json")
K = 500                     # the candidates stage's list (funnel.candidates_k)
EXCLUDED = 20               # items excluded per user in the timed calls (seen, unsafe)
RECALL_THREADS = 2          # the recall pass (1,000 queries at once) uses both cores
# (kind, parameters): the settings measured. Those of one kind that differ only in search
# parameters (ef_search, nprobe, refine) share one built index.
SETTINGS = [
    ("exact", {}),
    ("hnsw", {"M": 32, "ef_construction": 200, "ef_search": 500}),
    ("hnsw", {"M": 32, "ef_construction": 200, "ef_search": 1000}),
    ("hnsw", {"M": 32, "ef_construction": 200, "ef_search": 2000}),
    ("ivf", {"nlist": 1024, "nprobe": 128}),
    ("ivf", {"nlist": 1024, "nprobe": 256}),
    ("ivf", {"nlist": 1024, "nprobe": 384}),
    ("ivfpq", {"nlist": 1, "nprobe": 1, "m": 32, "nbits": 4, "refine": 10}),
    ("ivfpq", {"nlist": 1, "nprobe": 1, "m": 32, "nbits": 4, "refine": 6}),
    ("ivfpq", {"nlist": 256, "nprobe": 96, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 256, "nprobe": 112, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 512, "nprobe": 192, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 1024, "nprobe": 320, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 2048, "nprobe": 576, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 2048, "nprobe": 640, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 2048, "nprobe": 640, "m": 32, "nbits": 4, "refine": 2}),
    ("ivfpq", {"nlist": 2048, "nprobe": 1024, "m": 32, "nbits": 4, "refine": 4}),
    ("ivfpq", {"nlist": 256, "nprobe": 112, "m": 16, "nbits": 4, "refine": 8}),
    ("ivfpq", {"nlist": 256, "nprobe": 112, "m": 16, "nbits": 8, "refine": 4}),
]


# A served stage's start, alone: EmbeddingIndex.load in a fresh process, its time and the
# resident memory it adds (the vectors and ids the index keeps included).
LOAD = """
import json, sys, time, faiss, psutil  # faiss imported first: its own memory is not the index
from recfunnel.models.candidates import EmbeddingIndex
before, started = psutil.Process().memory_info().rss, time.perf_counter()
index = EmbeddingIndex.load(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
print(json.dumps({"load_s": round(time.perf_counter() - started, 2),
                  "rss_delta_mb": round((psutil.Process().memory_info().rss - before) / 2**20, 1)}))
"""


def load_in_new_process(folder: Path, kind: str, params: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), kind, json.dumps(params)],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_vectors(n_items: int, n_queries: int, seed: int) -> tuple[dict, np.ndarray,
                                                                         np.ndarray, np.ndarray]:
    """(what they are, item ids, item vectors, query vectors) from the synthetic world."""
    from recfunnel.config import SyntheticConfig, load_config
    from recfunnel.data.synthetic import build_world

    dim = load_config(REPO / "configs" / "default.yaml").models.embedding_dim
    cfg = SyntheticConfig(seed=seed, n_users=n_queries, n_items=n_items, latent_dim=dim)
    world = build_world(cfg)
    queries = world.taste(np.arange(n_queries), np.full(n_queries, cfg.n_days, np.float32))
    about = {"source": "synthetic", "items": n_items, "dim": dim, "seed": seed,
             "item_vectors": "build_world item content vectors (unit)",
             "queries": "users' taste on the last day (unit)"}
    return (about, world.items["item_id"].to_numpy(np.int64), world.item_vec,
            np.ascontiguousarray(queries, np.float32))


def trained_vectors(items_dir: Path, n_queries: int, seed: int):
    """(what they are, ids, vectors, queries) of a trained version's `<source>_items` folder."""
    manifest = read_manifest(items_dir, kind="item_embeddings")
    ids, vectors = np.load(items_dir / ITEM_IDS), np.load(items_dir / ITEM_EMBEDDINGS)
    tower = items_dir.parent / (items_dir.name.removesuffix("_items") + "_query")
    rng = np.random.default_rng(seed)
    about = {"source": str(items_dir), "version": manifest["version"], "items": int(len(ids)),
             "dim": int(vectors.shape[1]), "seed": seed, "item_vectors": "trained item tower"}
    if tower.is_dir():
        import tensorflow as tf

        from recfunnel.models.candidates import query_vectors
        from recfunnel.models.features import FEATURES, load_feature_tables

        users, _ = load_feature_tables(items_dir.parent / FEATURES)
        rows = users.iloc[rng.choice(len(users), min(n_queries, len(users)), replace=False)]
        signature = tf.saved_model.load(str(tower)).signatures["serving_default"]
        queries = np.concatenate([query_vectors(signature, rows.iloc[s:s + 1024])
                                  for s in range(0, len(rows), 1024)])
        about["queries"] = f"{tower.name} on {len(rows):,} of the version's users"
    else:
        queries = vectors[rng.choice(len(vectors), n_queries, replace=False)]
        about["queries"] = f"random items' vectors (no {tower.name} beside the items)"
    return about, ids, vectors, np.ascontiguousarray(queries, np.float32)


def open_settings(ids, vectors, folder: Path) -> list[dict]:
    """Every setting's index, built as an export builds it and loaded as a stage loads it."""
    folder.mkdir(parents=True)
    np.save(folder / ITEM_EMBEDDINGS, vectors)
    np.save(folder / ITEM_IDS, ids)
    write_manifest(folder, "bench", "item_embeddings")
    opened, rows = {}, []
    for kind, params in SETTINGS:
        name = saved_index_name(kind, params)
        if name not in opened:
            print(f"building {name} ...", flush=True)
            saved = save_index(folder, kind, params)     # as export builds it
            load = load_in_new_process(folder, kind, params)
            opened[name] = {
                "index": EmbeddingIndex.load(folder, kind, params), **load,
                # exact has nothing to save: its flat index is built when it loads
                "build_s": round(json.loads((saved / "manifest.json").read_text())["config"]
                                 ["build_seconds"], 1) if saved else load["load_s"],
                "index_mb": round((saved / "index.faiss").stat().st_size / 2**20, 1) if saved
                else round(vectors.nbytes / 2**20, 1)}
            print({k: v for k, v in opened[name].items() if k != "index"}, flush=True)
        search = {k: v for k, v in params.items() if k in SEARCH_PARAMS}
        rows.append({"kind": kind, "params": params, "search": search, **opened[name]})
    return rows


def recall_at_k(rows: list[dict], queries: np.ndarray) -> np.ndarray:
    """Each setting's recall@K against exact's top K (no exclusions); returns exact's lists."""
    exact = rows[0]["index"].tune(threads=RECALL_THREADS).search(queries, K)[0]
    for row in rows:
        got = row["index"].tune(**{**row["search"], "threads": RECALL_THREADS}).search(queries,
                                                                                     K)[0]
        row["recall"] = round(float(np.mean([np.intersect1d(g, e).size / K
                                             for g, e in zip(got, exact)])), 4)
        print(f"recall@{K} {row['kind']} {row['params']}: {row['recall']}", flush=True)
    return exact


def latency(rows: list[dict], queries: np.ndarray, exclude: list, batch: int, calls: int,
            rounds: int = 50) -> None:
    """p50/p99 ms of `calls` searches of `batch` queries per setting, at 1 and 2 threads,
    interleaved: each round times calls/rounds searches of every (setting, threads) in turn,
    in a new order each round (the one timed right after exact's scan of the whole matrix
    finds the caches cold; no setting should always be that one)."""
    cells = [(i, threads) for i in range(len(rows)) for threads in (1, 2)]
    times = {cell: [] for cell in cells}
    per_round = max(calls // rounds, 1)
    rng = np.random.default_rng(batch)
    for r in range(rounds):
        for i, threads in (cells[c] for c in rng.permutation(len(cells))):
            index = rows[i]["index"].tune(**{**rows[i]["search"], "threads": threads})
            for c in range(per_round):
                start = ((r * per_round + c) * batch) % (len(queries) - batch)
                q, ex = queries[start:start + batch], exclude[start:start + batch]
                began = time.perf_counter()
                index.search(q, K, ex)
                times[(i, threads)].append((time.perf_counter() - began) * 1e3)
    for (i, threads), ms in times.items():
        rows[i][f"batch{batch}_threads{threads}_p50_ms"] = round(float(np.percentile(ms, 50)), 3)
        rows[i][f"batch{batch}_threads{threads}_p99_ms"] = round(float(np.percentile(ms, 99)), 3)


def exclusion_cost(row: dict, queries: np.ndarray, ids: np.ndarray, seed: int) -> list[dict]:
    """What removing excluded items from faiss's answer costs: search's own step (one lookup
    for the whole batch) against the per-query np.isin loop it replaced, on the same answer of
    the index, for batches of 1, 16 and 64 users with 50 excluded items each, 10 of them among
    the user's results (median ms of 20 calls; the faiss search itself is not timed)."""
    index = row["index"].tune(**row["search"], threads=1)
    rng = np.random.default_rng(seed)
    out = []
    for n in (1, 16, 64):
        scores, found = index._index.search(queries[:n], K + 50)
        exclude = [np.concatenate([ids[found[i, :10]], rng.choice(ids, 40)]) for i in range(n)]
        timed = {}
        for name, step in (("vectorised", index._results), ("loop", _loop_results(index))):
            ms = []
            for _ in range(20):
                began = time.perf_counter()
                answer = step(found, scores, K, exclude)
                ms.append((time.perf_counter() - began) * 1e3)
            timed[name] = (float(np.median(ms)), answer)
        same = all(np.array_equal(a, b) for a, b in zip(timed["vectorised"][1], timed["loop"][1]))
        out.append({"kind": row["kind"], "params": row["params"], "users": n,
                    "vectorised_ms": round(timed["vectorised"][0], 3),
                    "loop_ms": round(timed["loop"][0], 3), "same_answers": same})
    return out


def _loop_results(index):
    """The step before issue 15: one np.isin per query over the fetched ids."""
    def step(rows, scores, k, exclude):
        items = np.full((len(rows), k), -1, np.int64)
        kept = np.full((len(rows), k), -np.inf, np.float32)
        for n in range(len(rows)):
            valid = rows[n] >= 0
            found, s = index.item_ids[rows[n][valid]], scores[n][valid]
            keep = ~np.isin(found, exclude[n])
            found, s = found[keep][:k], s[keep][:k]
            items[n, :len(found)], kept[n, :len(s)] = found, s
        return items, kept
    return step


def run(args) -> dict:
    load_before = os.getloadavg()[0]
    if args.items_dir:
        about, ids, vectors, queries = trained_vectors(Path(args.items_dir),
                                                      args.recall_queries + args.latency_queries,
                                                      args.seed)
    else:
        about, ids, vectors, queries = synthetic_vectors(args.items, args.recall_queries
                                                         + args.latency_queries, args.seed)
    print(f"{about}", flush=True)
    recall_q, latency_q = queries[:args.recall_queries], queries[args.recall_queries:]
    if len(latency_q) < 64:                # a version with few users: time the same queries
        latency_q = queries
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        rows = open_settings(ids, vectors, Path(tmp) / "items")
        # what a user has seen scores high: a quarter of the excluded items are among the
        # user's exact top 10, the rest drawn from the catalogue
        top = rows[0]["index"].tune(threads=RECALL_THREADS).search(latency_q, 10)[0]
        exclude = [np.concatenate([top[n, :EXCLUDED // 4], rng.choice(ids, EXCLUDED - EXCLUDED // 4)])
                   for n in range(len(latency_q))]
        recall_at_k(rows, recall_q)
        print("timing batch 1 ...", flush=True)
        latency(rows, latency_q, exclude, 1, args.latency_queries)
        print("timing batch 16 ...", flush=True)
        latency(rows, latency_q, exclude, 16, args.latency_queries // 10)
        # on the default approximate setting (or the first measured): its search is fast, so
        # what exclusions cost shows
        shown = next((row for row in rows if row["kind"] == DEFAULT_KIND and is_default(row)),
                     next((row for row in rows if row["kind"] != "exact"), rows[0]))
        exclusions = exclusion_cost(shown, recall_q, ids, args.seed)
        for row in rows:
            del row["index"]
    exact = rows[0]["batch1_threads1_p50_ms"]
    for row in rows:
        row["speedup_p50"] = round(exact / row["batch1_threads1_p50_ms"], 1)
    return {"command": "python benchmarks/bench_index.py" + (f" --items-dir {args.items_dir}"
                                                            if args.items_dir else ""),
            "date": time.strftime("%Y-%m-%d"), "machine": machine(), "vectors": about,
            "k": K, "excluded_per_user": EXCLUDED,
            "recall_queries": len(recall_q), "latency_queries": len(latency_q),
            "settings": rows, "exclusions": exclusions,
            "load_average_1min": {"before": round(load_before, 2),
                                  "after": round(os.getloadavg()[0], 2)}}


DEFAULT_KIND = "ivfpq"      # the kind this benchmark chose for a million items


def is_default(row: dict) -> bool:
    """The setting is its kind's defaults (config INDEX_PARAMS), search threads aside."""
    drop = lambda p: {k: v for k, v in p.items() if k != "threads"}  # noqa: E731
    return drop(index_params(row["kind"], row["params"])) == drop(index_params(row["kind"]))


def _params(row: dict) -> str:
    text = ", ".join(f"{k} {v}" for k, v in row["params"].items()) or "-"
    return text + (" (default)" if row["kind"] != "exact" and is_default(row) else "")


def markdown(r: dict) -> str:
    v = r["vectors"]
    out = [f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}. "
           f"1-minute load average before / after: {r['load_average_1min']['before']} / "
           f"{r['load_average_1min']['after']} (2 cores: above 1, other jobs shared the CPU).",
           f"Vectors: {v['items']:,} items, dim {v['dim']} ({v['source']}): item embeddings = "
           f"{v['item_vectors']}, queries = {v['queries']}. Recall@{r['k']}: share of exact's "
           f"top {r['k']} found, {r['recall_queries']:,} queries, no exclusions. Latency: "
           f"`EmbeddingIndex.search(query, {r['k']}, exclude)` with {r['excluded_per_user']} "
           f"excluded items per user, {r['latency_queries']} single queries and "
           f"{r['latency_queries'] // 10} batches of 16, every setting timed in turn in 50 "
           "rounds (in a new random order each round). Build: `save_index` as export runs it "
           "(the index's default threads: 1); load: `EmbeddingIndex.load` as a served stage opens "
           "it, in a new process (checksums verified, index read, no build); index MB: the saved "
           "file (exact: the vectors); RSS delta: resident memory that load added (the vectors "
           "and ids it keeps included).", "",
           "| kind | parameters | recall@500 | batch 1 p50 / p99 ms | speedup vs exact (p50) | "
           "batch 1 p50 ms, 2 threads | batch 16 p50 / p99 ms | batch 16 p50 ms, 2 threads | "
           "build s | load s | index MB | RSS delta MB |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r["settings"]:
        out.append(f"| {s['kind']} | {_params(s)} | {s['recall']:.4f} | "
                   f"{s['batch1_threads1_p50_ms']:.2f} / {s['batch1_threads1_p99_ms']:.2f} | "
                   f"{s['speedup_p50']}x | {s['batch1_threads2_p50_ms']:.2f} | "
                   f"{s['batch16_threads1_p50_ms']:.2f} / {s['batch16_threads1_p99_ms']:.2f} | "
                   f"{s['batch16_threads2_p50_ms']:.2f} | {s['build_s']} | {s['load_s']} | "
                   f"{s['index_mb']} | {s['rss_delta_mb']} |")
    goal = [s for s in r["settings"] if s["recall"] >= 0.99 and s["speedup_p50"] >= 10]
    best = max((s for s in r["settings"] if s["kind"] != "exact" and s["recall"] >= 0.99),
               key=lambda s: s["speedup_p50"], default=None)
    out.append("")
    if goal:
        out.append("Goal (recall@500 >= 0.99 of exact at >= 10x lower batch-1 latency) reached "
                   "by: " + "; ".join(f"{s['kind']} ({_params(s)}): {s['recall']}, "
                                      f"{s['speedup_p50']}x" for s in goal) + ".")
    else:
        out.append("Goal (recall@500 >= 0.99 of exact at >= 10x lower batch-1 latency) not "
                   "reached" + (f"; the fastest setting with recall >= 0.99: {best['kind']} "
                                f"({_params(best)}), {best['recall']}, "
                                f"{best['speedup_p50']}x." if best else "."))
    default = next((s for s in r["settings"] if s["kind"] == DEFAULT_KIND and is_default(s)),
                   None)
    if default:
        out.append(f"Threads, the default {DEFAULT_KIND}: p50 {default['batch1_threads1_p50_ms']} "
                   f"ms at 1 thread, {default['batch1_threads2_p50_ms']} at 2 (batch 1); "
                   f"{default['batch16_threads1_p50_ms']} and {default['batch16_threads2_p50_ms']}"
                   " ms (batch 16): faiss splits a batch by query, so one query never uses a "
                   "second core, and with other processes on both cores its waiting threads "
                   "only cost (`threads` defaults to 1).")
    hnsw = [s for s in r["settings"] if s["kind"] == "hnsw"]
    if hnsw:
        top = max(hnsw, key=lambda s: s["recall"])
        out.append(f"HNSW's best recall@{r['k']} here: {top['recall']} ({_params(top)}, "
                   f"{top['speedup_p50']}x).")
    e = r["exclusions"]
    out += ["", f"Removing excluded items from the index's answer ({e[0]['kind']}, "
            f"{_params(e[0])}; 50 excluded items per user, 10 of them among its "
            "results; median ms of 20 calls, the faiss search not timed): `search`'s step for "
            "the whole batch against the per-query np.isin loop it replaced, same answers: "
            + "; ".join(f"{x['users']} users {x['vectorised_ms']} vs {x['loop_ms']} ms"
                        f"{'' if x['same_answers'] else ' (answers differ!)'}" for x in e) + "."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items-dir", help="a trained version's <source>_items folder")
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic catalogue size")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=["exact", "hnsw", "ivf", "ivfpq"],
                        help="measure these kinds only (exact always)")
    parser.add_argument("--tmp", help="where the indexes are built (default: the system's)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--from-json", action="store_true",
                        help="only write the markdown again from benchmarks/results/index.json")
    args = parser.parse_args()
    # a trained version's vectors have their own results and section beside the synthetic ones
    where, section = (TRAINED_RESULTS, "bench_index_trained") if args.items_dir else \
        (RESULTS, "bench_index")
    if args.from_json:
        results = json.loads(where.read_text())
        publish(results, markdown(results), where, section, write=not args.no_write)
        return
    if args.only:
        SETTINGS[:] = [s for s in SETTINGS if s[0] == "exact" or s[0] in args.only]
    results = run(args)
    # a trained version is measured without HNSW (its build takes 20 minutes at 1M items)
    publish(results, markdown(results), where, section,
            write=not args.no_write and (not args.only or bool(args.items_dir)))


if __name__ == "__main__":
    main()
