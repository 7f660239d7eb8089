"""Heavy-ranker ablations (issue 13, item 5): what each group of features adds.

Protocol: for each existing pipeline run (the demo, runs/demo as `make demo` leaves it, and
MovieLens-100K, runs/bench-ml100k as benchmarks/bench_retrieval_ml100k.py leaves it) the heavy
ranker (DCN-V2) is retrained once per variant on the run's dataset with the run's `models`
config (early stopping on validation AUC, best epoch kept), adding one group of features at a
time:
  ids           user_id, item_id
  + attributes  every user and item attribute that is not a point-in-time statistic
                (demo: age_band, gender, location, category, creator, item_duration)
  + statistics  the point-in-time statistics, user_* / item_* of workflows.point_in_time
  + category history  the user's own earlier events on items of the example item's category
                (user_category_*, workflows.point_in_time.UserGroupStats)
  + score       the previous stage's score: the dot product of the run's two-tower query
                vector of the row's user and the row's item vector (0 for items the index
                does not hold)
Every variant trains on the splits' own training rows (the dataset's logged impressions plus its
sampled negatives); the pipeline's cascade negatives are left out so that the rows differ
only in their features. Reported per variant: test ROC-AUC per objective (scored through the
saved model's serving signature), best epoch and training seconds; on the demo also the truth's
judgement of the blend's ordering of each user's test rows (NDCG@k of true relevance and the
mean true relevance of the top k).

The runs are not made here; make them with
    make demo                                           # runs/demo
    python benchmarks/bench_retrieval_ml100k.py --only funnel   # runs/bench-ml100k
then
    make bench                                        # all benchmarks
    python benchmarks/bench_ranker_ablations.py       # this one (a few minutes on 2 cores)
    python benchmarks/bench_ranker_ablations.py --quick   # one epoch, one data set, prints only
Results: benchmarks/results/ranker_ablations.json and the `bench_ranker_ablations` section of
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from merlin.schema import ColumnSchema, Schema, Tags  # noqa: E402

from benchmarks.bench_data import machine, publish  # noqa: E402
from recfunnel.models.candidates import RETRIEVAL_SCORE, load_retrieval, retrieval_scores  # noqa: E402
from recfunnel.models.data import Splits  # noqa: E402
from recfunnel.models.ranking import train_ranker  # noqa: E402
from recfunnel.models.scorer import RankerScorer  # noqa: E402
from recfunnel.audit import ranking_vs_truth  # noqa: E402
from recfunnel.config import load_config  # noqa: E402
from recfunnel.data.synthetic import World  # noqa: E402
from recfunnel.evaluation.ranker import ranker_metrics  # noqa: E402
from recfunnel.workflows.point_in_time import STAT_NAMES  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ranker_ablations.json"
VARIANTS = ("ids", "+ attributes", "+ point-in-time statistics", "+ user's category history",
            "+ retrieval score")
GROUP_PREFIX = "user_category_"      # workflows.point_in_time.UserGroupStats' columns
DATASETS = {   # name -> (default run folder, config that makes it)
    "demo": ("runs/demo", "configs/default.yaml"),
    "ml100k": ("runs/bench-ml100k", "configs/movielens100k.yaml"),
}


def pipeline_command(config: str, run_name: str) -> str:
    return (f"python -m recfunnel pipeline run -c {config} --steps data,dataset,models "
            f"--set run.name={run_name}")


def models_root(run: Path, config: str) -> Path:
    """The run's trained version folder, named by summary.json's models.path."""
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    path = summary.get("models", {}).get("path")
    if not path or not (run / "dataset").is_dir():
        raise SystemExit(f"{run}: no dataset or trained models version (summary.json has no "
                         f"models.path); make it with `{pipeline_command(config, run.name)}`")
    return run / path


def add_retrieval_score(splits: Splits, root: Path) -> float:
    """Adds the two-tower's score of each row to every split and to the schema; returns the
    share of test rows whose item the index holds (the others score 0)."""
    query, index, _ = load_retrieval(root / "two_tower_query", root / "two_tower_items")
    for frame in (splits.train, splits.valid, splits.test):
        frame[RETRIEVAL_SCORE] = retrieval_scores(query, index, frame)
    splits.schema = splits.schema + Schema([ColumnSchema(RETRIEVAL_SCORE, dtype=np.float32,
                                                         tags=[Tags.CONTINUOUS, Tags.ITEM])])
    return float(np.isin(splits.test["item_id"].to_numpy(), index.item_ids).mean())


def feature_sets(splits: Splits) -> dict[str, list[str]]:
    """The nested feature lists of VARIANTS, in the schema's order."""
    features = splits.schema.select_by_tag([Tags.USER, Tags.ITEM])
    ids = features.select_by_tag(Tags.ID).column_names
    stats = {f"{side}_{name}" for side in ("user", "item") for name in STAT_NAMES}
    history = [c for c in features.column_names if c.startswith(GROUP_PREFIX)]
    attributes = [c for c in features.column_names if c not in ids and c not in stats
                  and c != RETRIEVAL_SCORE and c not in history]
    statistics = [c for c in features.column_names if c in stats]
    groups = [ids, attributes, statistics, history, [RETRIEVAL_SCORE]]
    return {name: [c for g in groups[:i + 1] for c in g] for i, name in enumerate(VARIANTS)}


def ablate(name: str, run: Path, config: str, epochs: int | None, work: Path) -> dict:
    root = models_root(run, config)
    full = load_config(run / "config.yaml")
    cfg, weights = full.models, full.funnel.blend
    if epochs is not None:
        cfg = replace(cfg, ranker_epochs=epochs)
    splits = Splits.load(run / "dataset")
    coverage = add_retrieval_score(splits, root)
    truth_dir = run / "data" / "truth"
    world = World.load(truth_dir) if truth_dir.is_dir() else None
    shown = run.resolve().relative_to(REPO) if run.resolve().is_relative_to(REPO) else run
    out = {"run": str(shown), "version": root.name, "objectives": list(cfg.objectives),
           "rows": {"train": len(splits.train), "valid": len(splits.valid),
                    "test": len(splits.test),
                    "train_sampled_negatives": int(splits.train["sampled_negative"].sum())},
           "test_rows_with_indexed_item": round(coverage, 4), "k": cfg.eval_k, "variants": []}
    for variant, features in feature_sets(splits).items():
        print(f"[{name}] {variant}: {len(features)} features ...", flush=True)
        folder = work / name / variant.strip("+ ").replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("two_tower_query", "two_tower_items"):   # the scorer finds the retrieval
            (folder / part).symlink_to(root.resolve() / part)  # model beside the ranker
        result = train_ranker("heavy", splits, cfg, folder, root.name, features=features,
                              blend=weights)
        scores = RankerScorer(folder / "heavy_ranker").score(splits.test)
        row = {"variant": variant, "features": features, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "train_seconds": result.train_seconds,
               "roc_auc": {o: round(ranker_metrics(splits.test[o].to_numpy(), s)["roc_auc"], 4)
                           for o, s in scores.items()}}
        if world is not None:
            judged = ranking_vs_truth(splits, folder / "heavy_ranker", world, cfg, weights)
            blend_row = next(r for r in judged["rankings"] if r["ranking"].startswith("blend"))
            row["truth_blend"] = {"ranking": blend_row["ranking"], "ndcg": blend_row["ndcg"],
                                  "top_true_relevance": blend_row["top_true_relevance"]}
        print(json.dumps({k: v for k, v in row.items() if k != "features"}), flush=True)
        out["variants"].append(row)
    return out


def table(name: str, d: dict) -> list[str]:
    objectives = d["objectives"]
    truth = "truth_blend" in d["variants"][0]
    head = ["variant", "features", *objectives, "best epoch", "train s"]
    if truth:
        head += [f"truth NDCG@{d['k']} (blend)", f"truth relevance of top {d['k']}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in d["variants"]:
        cells = [r["variant"], str(len(r["features"])),
                 *(str(r["roc_auc"].get(o, "-")) for o in objectives),
                 f"{r['best_epoch']} of {r['epochs_run']}", str(r["train_seconds"])]
        if truth:
            cells += [str(r["truth_blend"]["ndcg"]), str(r["truth_blend"]["top_true_relevance"])]
        lines.append("| " + " | ".join(cells) + " |")
    rows = d["rows"]
    added = [", ".join(c for c in r["features"] if c not in prev["features"])
             for prev, r in zip(d["variants"], d["variants"][1:])]
    return [f"**{name}** ({d['run']}, models version {d['version']}): {rows['train']:,} training "
            f"rows ({rows['train_sampled_negatives']:,} of them sampled negatives), "
            f"{rows['valid']:,} validation, {rows['test']:,} test rows; test ROC-AUC per "
            f"objective. Added at each step: {' | '.join(added)}. Share of test rows whose item "
            f"the two-tower index holds: {d['test_rows_with_indexed_item']}.", "", *lines]


def markdown(results: dict) -> str:
    parts = [f"Command: `{results['command']}`. Machine: {results['machine']}. Date: "
             f"{results['date']}. The heavy ranker (DCN-V2) retrained on each run's dataset with "
             "the run's config, one group of features added per row; trained on the dataset's "
             "logged impressions plus its sampled negatives (no cascade negatives), early-stopped "
             "on validation AUC (best epoch kept); test ROC-AUC from the saved serving signature."]
    titles = {"demo": "Demo (synthetic)", "ml100k": "MovieLens-100K"}
    for name, d in results["datasets"].items():
        parts += ["", *table(titles.get(name, name), d)]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-run", type=Path, default=REPO / DATASETS["demo"][0])
    parser.add_argument("--ml-run", type=Path, default=REPO / DATASETS["ml100k"][0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the config's ranker_epochs (a quick check)")
    parser.add_argument("--quick", action="store_true",
                        help="one epoch, the first data set only, nothing written")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    datasets = args.datasets[:1] if args.quick else args.datasets
    epochs = 1 if args.quick else args.epochs
    runs = {"demo": args.demo_run, "ml100k": args.ml_run}
    for name in datasets:       # fail in a second, before any training, if a run is missing
        models_root(runs[name], DATASETS[name][1])
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/bench_ranker_ablations.py", "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in datasets:
            results["datasets"][name] = ablate(name, runs[name], DATASETS[name][1], epochs,
                                               Path(tmp))
    write = not (args.quick or args.no_write or args.epochs is not None)
    publish(results, markdown(results), RESULTS, "bench_ranker_ablations", write=write)


if __name__ == "__main__":
    main()
