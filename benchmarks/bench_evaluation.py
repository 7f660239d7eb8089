"""Evaluation benchmark: the recfunnel.evaluation library on 1M recommendations (100k users x 10
over 20k items), for a uniform random recommender and a popularity-skewed one.

Times top-K metrics, the popularity-bias measures, slices and (on 1M scored rows) the ranker
metrics, each the median of a few repeats in one process, with peers where one exists:
scikit-learn for the ranker metrics, a row-by-row np.isin for the top-K hits. Inputs are
synthetic: Zipf item popularity for the training interactions and the held-out positives, random
user attributes. Results go to benchmarks/results/bench_evaluation.json and to the
`bench_evaluation` section of BENCHMARKS.md.

    python benchmarks/bench_evaluation.py                 # 100k users x 10, 20k items
    python benchmarks/bench_evaluation.py --users 10000   # smaller
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402
from recfunnel import topk  # noqa: E402
from recfunnel.evaluation import bias, ranker, slices  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "bench_evaluation.json"
ZIPF_EXPONENT = 1.1          # as SyntheticConfig.popularity_exponent
TRAIN_PER_USER = 20          # training interactions per user, on average
POSITIVES_PER_USER = 5       # held-out positives drawn per user (duplicates merged)
RANKER_ROWS = 1_000_000


def world(n_users: int, n_items: int, k: int, seed: int = 0) -> dict:
    """Training interactions, held-out positives, user attributes and two recommenders."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** ZIPF_EXPONENT
    p /= p.sum()
    item_ids = rng.permutation(n_items) + 1             # popularity unrelated to id; ids from 1
    train_items = item_ids[rng.choice(n_items, n_users * TRAIN_PER_USER, p=p)]
    train_users = rng.integers(0, n_users, len(train_items))
    held_out = item_ids[rng.choice(n_items, (n_users, POSITIVES_PER_USER), p=p)]
    users = pd.DataFrame({"user_id": np.arange(n_users), "age": rng.integers(13, 80, n_users),
                          "gender": rng.choice(["F", "M", "other"], n_users, p=[.48, .48, .04]),
                          "location": rng.choice(["US", "IN", "BR", "DE", "JP"], n_users)})
    return {
        "catalogue": item_ids, "train_items": train_items,
        "activity": pd.Series(np.bincount(train_users, minlength=n_users)),
        "relevant": [np.unique(row) for row in held_out], "users": users,
        "recommenders": {
            "uniform random": item_ids[rng.integers(0, n_items, (n_users, k))],
            "popularity-skewed": item_ids[rng.choice(n_items, (n_users, k), p=p)],
        },
    }


def timed(fn, repeats: int):
    """(median seconds, last result) of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t)
    return float(np.median(seconds)), out


def row_by_row_hits(recommended, relevant):
    """The peer: one np.isin per user, as hits_matrix did before it was vectorized."""
    return np.stack([np.isin(row, rel) & (row >= 0) for row, rel in zip(recommended, relevant)])


def evaluate_model(w: dict, recommended: np.ndarray, k: int, popularity, repeats: int) -> dict:
    relevant, out = w["relevant"], {}
    out["topk_metrics_s"], metrics = timed(lambda: topk.topk_metrics(recommended, relevant, k),
                                           repeats)
    out["topk_per_user_s"], per_user = timed(
        lambda: topk.topk_per_user(recommended, relevant, k), repeats)
    out["hits_vectorized_s"], _ = timed(lambda: topk.hits_matrix(recommended, relevant), repeats)
    out["hits_row_by_row_s"], _ = timed(lambda: row_by_row_hits(recommended, relevant), 1)
    out["concentration_curve_s"], _ = timed(lambda: bias.concentration_curve(recommended),
                                            repeats)
    out["bias_summary_s"], _ = timed(
        lambda: bias.popularity_bias_summary(recommended, popularity), repeats)
    out["positive_ranks_s"], ranks = timed(lambda: bias.positive_ranks(recommended, relevant),
                                           repeats)
    out["popularity_opportunity_s"], _ = timed(
        lambda: bias.popularity_opportunity_bias(ranks, popularity), repeats)
    out["parity_s"], _ = timed(lambda: bias.popularity_parity(ranks, popularity, k), repeats)
    out["bias_report_s"], report = timed(
        lambda: bias.popularity_bias_report(recommended, popularity, relevant), repeats)
    out["user_groups_s"], groups = timed(
        lambda: slices.user_groups(per_user["user_id"], w["users"], w["activity"]), repeats)
    out["slice_metrics_s"], table = timed(lambda: slices.slice_metrics(per_user, groups),
                                          repeats)
    out["worst_groups_s"], _ = timed(lambda: slices.worst_groups(table), repeats)
    out["everything_s"] = round(sum(out[key] for key in (
        "topk_per_user_s", "topk_metrics_s", "bias_report_s", "user_groups_s",
        "slice_metrics_s", "worst_groups_s")), 3)
    out = {key: round(value, 3) for key, value in out.items()}
    out["numbers"] = {
        f"ndcg@{k}": round(metrics[f"ndcg@{k}"], 4), f"recall@{k}": round(metrics[f"recall@{k}"], 4),
        **{key: round(report[key], 4) for key in ("coverage", "gini", "popularity_lift",
                                                   "long_tail_share")},
        "distinct_items": report["distinct_items"],
        "pru_top10": round(report["popularity_opportunity"]["pru"], 3),
        "parity_ratio": round(report["parity"]["parity_ratio"], 3),
        "slice_rows": len(table)}
    return out


def ranker_timings(repeats: int) -> dict:
    from sklearn import metrics as sk
    rng = np.random.default_rng(1)
    labels = rng.random(RANKER_ROWS) < 0.1
    scores = np.clip(rng.normal(0.3 + 0.2 * labels, 0.15), 0, 1).round(3)   # ties, as in logs
    out = {"rows": RANKER_ROWS}
    out["ranker_metrics_s"], _ = timed(lambda: ranker.ranker_metrics(labels, scores), repeats)
    out["curves_s"], _ = timed(lambda: (ranker.roc_curve(labels, scores),
                                        ranker.pr_curve(labels, scores)), repeats)
    out["sklearn_same_three_s"], _ = timed(lambda: (
        sk.roc_auc_score(labels, scores), sk.average_precision_score(labels, scores),
        sk.log_loss(labels, scores)), repeats)
    return {key: round(value, 3) for key, value in out.items()}


def run(n_users: int, n_items: int, k: int, repeats: int) -> dict:
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    w = world(n_users, n_items, k)
    setup_s = time.perf_counter() - t
    popularity_s, popularity = timed(lambda: bias.ItemPopularity.from_interactions(
        w["train_items"], catalogue=w["catalogue"]), repeats)
    results = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_evaluation.py",
        "users": n_users, "items": n_items, "k": k, "repeats": repeats,
        "recommendations": n_users * k,
        "train_interactions": len(w["train_items"]),
        "held_out_positives": int(sum(len(r) for r in w["relevant"])),
        "setup_s": round(setup_s, 2), "item_popularity_s": round(popularity_s, 3),
        "models": {}, "load_average_1min": {"before": round(load_before, 2)},
    }
    for name, recommended in w["recommenders"].items():
        print(f"{name} ...", flush=True)
        results["models"][name] = evaluate_model(w, recommended, k, popularity, repeats)
    print("ranker metrics ...", flush=True)
    results["ranker"] = ranker_timings(repeats)
    results["load_average_1min"]["after"] = round(os.getloadavg()[0], 2)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


STEPS = (("topk_metrics_s", "top-K metrics (6 metrics)"),
         ("topk_per_user_s", "top-K per user (for slices)"),
         ("hits_vectorized_s", "hits matrix, vectorized"),
         ("hits_row_by_row_s", "hits matrix, row-by-row np.isin (peer)"),
         ("concentration_curve_s", "concentration curve"),
         ("bias_summary_s", "coverage, Gini, ARP, long tail"),
         ("positive_ranks_s", "ranks of held-out positives"),
         ("popularity_opportunity_s", "popularity-opportunity bias (PRU, PRI)"),
         ("parity_s", "head/tail parity"),
         ("bias_report_s", "whole bias report (all of the above)"),
         ("user_groups_s", "user groups (age band, gender, location, activity)"),
         ("slice_metrics_s", "slice table (6 metrics x 4 slices)"),
         ("worst_groups_s", "worst group per slice"),
         ("everything_s", "one model, everything (per-user + metrics + bias report + slices)"))


def markdown(r: dict) -> str:
    names = list(r["models"])
    rows = ["| step | " + " | ".join(f"{n} s" for n in names) + " |",
            "|---|" + "---|" * len(names)]
    rows += [f"| {label} | " + " | ".join(str(r["models"][n][key]) for n in names) + " |"
             for key, label in STEPS]
    numbers = ["| model | " + " | ".join(r["models"][names[0]]["numbers"]) + " |",
               "|---|" + "---|" * len(r["models"][names[0]]["numbers"])]
    numbers += [f"| {n} | " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v)
                                         for v in r["models"][n]["numbers"].values()) + " |"
                for n in names]
    rk = r["ranker"]
    return "\n".join([
        f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}.",
        f"{r['users']:,} users x {r['k']} recommendations = {r['recommendations']:,} over "
        f"{r['items']:,} items; {r['train_interactions']:,} training interactions and "
        f"{r['held_out_positives']:,} held-out positives, both Zipf({ZIPF_EXPONENT}) popular. "
        f"Each time is the median of {r['repeats']} runs in one process (the row-by-row peer "
        f"runs once); peak RSS {r['peak_rss_mib']:,} MiB. The machine is shared: 1-minute "
        f"load average {r['load_average_1min']['before']} before, "
        f"{r['load_average_1min']['after']} after. Training popularity of the catalogue "
        f"(`ItemPopularity.from_interactions`): {r['item_popularity_s']} s.",
        "", *rows, "",
        "What the measures say about the two recommenders (PRU through the top-10 lists only):",
        "", *numbers, "",
        f"Ranker metrics on {rk['rows']:,} scored rows (scores rounded to 3 decimals, so ties): "
        f"ROC-AUC + PR-AUC + logloss {rk['ranker_metrics_s']} s (scikit-learn, the same "
        f"three: {rk['sklearn_same_three_s']} s); ROC and PR curves {rk['curves_s']} s.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = run(args.users, args.items, args.k, args.repeats)
    publish(results, markdown(results), RESULTS, "bench_evaluation", write=not args.no_write)


if __name__ == "__main__":
    main()
