"""How much of the demo's figures is the draw (issue 13): the same config, other dataset seeds.

The dataset step's seed (`dataset.seed`) draws the sampled negatives the rankers train on; the
data, the splits and every other setting stay the same. Each seed is one run of the demo's steps
through the evaluation (data, dataset, models, evaluation); the table gives, per seed, the
truth share of ideal@10 of the funnel and its peers and the rankers' test ROC-AUC, then their
mean and range. A goal met on one seed and missed on the next is met by the draw, not by design.

    python benchmarks/bench_demo_seeds.py                # about 4 minutes per seed
    python benchmarks/bench_demo_seeds.py --seeds 0 1 2 3 4
Runs: runs/demo-seed<N> (reused when its config is the demo's with that seed). Results:
benchmarks/results/demo_seeds.json and the `demo_seeds` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "demo_seeds.json"
CONFIG = REPO / "configs" / "default.yaml"
STEPS = "data,dataset,models,evaluation"
LISTS = ("funnel", "two_tower", "ease", "popularity")


def demo_config(seed: int, runs_dir: Path, name: str) -> dict:
    from recfunnel.config import load_config
    return load_config(CONFIG, {"run": {"name": name, "runs_dir": str(runs_dir)},
                                "dataset": {"seed": seed}}).to_dict()


def same_settings(run_dir: Path, wanted: dict) -> bool:
    """The run has an evaluation and was made with `wanted` (the run section aside)."""
    from recfunnel.config import load_config
    summary = run_dir / "summary.json"
    if not summary.is_file() or "evaluation" not in json.loads(summary.read_text()):
        return False
    made = load_config(run_dir / "config.yaml").to_dict()
    return all(made.get(section) == wanted.get(section)
               for section in ("data", "dataset", "models", "funnel"))


def seed_run(seed: int, runs_dir: Path) -> dict:
    name = f"demo-seed{seed}"
    run_dir = runs_dir / name
    wanted = demo_config(seed, runs_dir, name)
    made = runs_dir / "demo"                  # `make demo`'s run, when it has this seed
    if not same_settings(run_dir, wanted) and same_settings(made, wanted):
        run_dir = made
    if not same_settings(run_dir, wanted):
        started = time.perf_counter()
        print(f"seed {seed}: running {STEPS} into {run_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "-c", str(CONFIG),
                        "-q", "--steps", STEPS, "--set", f"run.name={name}",
                        "--set", f"run.runs_dir={runs_dir}", "--set", f"dataset.seed={seed}"],
                       cwd=REPO, check=True)
        print(f"seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    evaluation = json.loads((run_dir / "summary.json").read_text())["evaluation"]
    return {"seed": seed, "run": str(run_dir),
            "truth_share_of_ideal@10": {n: evaluation["truth"][n]["share_of_ideal@10"]
                                        for n in LISTS if n in evaluation["truth"]},
            "roc_auc": {ranker: {objective: m["roc_auc"] for objective, m in heads.items()}
                        for ranker, heads in evaluation["rankers"].items()}}


def spread(values: list[float]) -> dict:
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
            "max": round(float(np.max(values)), 4)}


def markdown(r: dict) -> str:
    rows, objectives = r["seeds"], list(r["seeds"][0]["roc_auc"]["heavy"])
    out = [f"Command: `{r['command']}`. Machine: {r['machine']}. Date: {r['date']}. The demo's "
           "config with `dataset.seed` (the sampled negatives' draw) changed, nothing else; "
           "truth share of ideal@10 on the test users and the rankers' test ROC-AUC.", "",
           "| dataset seed | " + " | ".join(f"truth {n}" for n in LISTS) + " | "
           + " | ".join(f"heavy / light {o}" for o in objectives) + " |",
           "|---" * (1 + len(LISTS) + len(objectives)) + "|"]
    for row in rows:
        truth, auc = row["truth_share_of_ideal@10"], row["roc_auc"]
        out.append(f"| {row['seed']} | " + " | ".join(f"{truth.get(n, float('nan')):.4f}"
                                                     for n in LISTS) + " | " +
                   " | ".join(f"{auc['heavy'][o]:.4f} / {auc['light'][o]:.4f}"
                              for o in objectives) + " |")
    summary = r["summary"]
    lift = summary["two_tower_over_popularity"]
    out += ["", "Over the seeds: " + "; ".join(
        f"{n} {s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"
        for n, s in summary["truth_share_of_ideal@10"].items()) +
        f". Heavy above light on every objective in {summary['heavy_above_light_seeds']} of "
        f"{len(rows)} seeds; the two-tower over popularity {lift['mean']:.2f}x "
        f"[{lift['min']:.2f}, {lift['max']:.2f}]."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--no-write", action="store_true", help="print, write nothing")
    args = parser.parse_args()
    rows = [seed_run(seed, args.runs_dir.resolve()) for seed in args.seeds]
    truth = {n: spread([row["truth_share_of_ideal@10"][n] for row in rows])
             for n in LISTS if all(n in row["truth_share_of_ideal@10"] for row in rows)}
    ratio = [row["truth_share_of_ideal@10"]["two_tower"] /
             row["truth_share_of_ideal@10"]["popularity"] for row in rows]
    above = sum(all(row["roc_auc"]["heavy"][o] >= row["roc_auc"]["light"][o]
                    for o in row["roc_auc"]["heavy"]) for row in rows)
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/bench_demo_seeds.py --seeds "
                          + " ".join(map(str, args.seeds)),
               "seeds": rows, "summary": {"truth_share_of_ideal@10": truth,
                                          "two_tower_over_popularity": spread(ratio),
                                          "heavy_above_light_seeds": above}}
    publish(results, markdown(results), RESULTS, "demo_seeds", not args.no_write)


if __name__ == "__main__":
    main()
