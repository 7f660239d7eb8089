"""The demo's blend weights by measurement (issue 13): truth offline and the simulator online.

The blend of the rankers' objectives orders every ranker's cut. On the demo's synthetic world
two of the issue's goals pull it apart: the truth's share of the ideal list rewards likes and
shares, the simulator's watch time rewards clicks. For each blend, on `make demo`'s trained
version (no retraining: the blend is a serving setting):
  - the funnel's and the light ranker's cut's truth share of ideal@10 for the validation users
    (the validation protocol: training items excluded) and the test users (training and
    validation items excluded), as the evaluation step computes it;
  - both lists shown once to the simulated test users on the first day after the data (the
    experiments step's offline_vs_online): watch seconds and likes per user.
The chosen blend is the best validation truth share among those whose funnel earns at least
the light ranker's cut's watch time and likes online.

    python benchmarks/bench_demo_blend.py           # about 5 minutes once runs/demo exists
Results: benchmarks/results/demo_blend.json and the `demo_blend` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "demo_blend.json"
K = 10
BLENDS = (
    {"click": 0.1, "like": 0.3, "share": 0.2, "watch_duration_aware": 0.4},   # the code's default
    {"like": 0.8, "share": 0.2},
    {"like": 1.0},
    {"like": 0.5, "share": 0.2, "watch_duration_aware": 0.3},
    {"like": 0.5, "watch_duration_aware": 0.5},
    {"click": 0.1, "like": 0.7, "share": 0.2},
    {"click": 0.15, "like": 0.65, "share": 0.2},
    {"click": 0.2, "like": 0.6, "share": 0.2},
    {"click": 0.3, "like": 0.5, "share": 0.2},
)


def protocols(splits, label: str) -> dict:
    """Per split, its users with a positive and the items each has to be excluded."""
    out = {}
    for name, seen_frames, target in (("valid", (splits.train,), splits.valid),
                                      ("test", (splits.train, splits.valid), splits.test)):
        users = np.unique(splits.positives(target, label)["user_id_raw"].to_numpy())
        out[name] = (users, splits.seen_items(label, seen_frames, users, "user_id_raw",
                                              "item_id_raw"))
    return out


def measure(run_dir: Path) -> dict:
    import recfunnel.workflows  # noqa: F401  (the clone's workflows/ and models/ on the path)
    from recfunnel.audit import TruthAudit
    from recfunnel.config import load_config
    from recfunnel.evaluation.truth import lists_vs_truth
    from recfunnel.experiments.simulator import (SimulationSettings, list_recommender,
                                                 online_metrics, simulate)
    from recfunnel.models.data import Splits
    from recfunnel.models.funnel import OFFLINE_FEATURES, Funnel, FunnelSettings
    from recfunnel.models.predict import recommend_by_blocks

    cfg = load_config(run_dir / "config.yaml")
    summary = json.loads((run_dir / "summary.json").read_text())
    version = run_dir / summary["models"]["path"]
    world = TruthAudit().world(run_dir)
    day = world.config.n_days
    clickbait = world.item_truth["is_clickbait"].to_numpy()
    protos = protocols(Splits.load(run_dir / "dataset"), cfg.models.retrieval_positive)
    online = SimulationSettings(days=1, k=K, seed=cfg.experiments.seed)
    base = FunnelSettings.from_config(cfg)
    light = base.rankers[0]["name"]
    rows = []
    for blend in BLENDS:
        started = time.perf_counter()
        funnel = Funnel(version, replace(base, blend=blend), features=OFFLINE_FEATURES)
        row = {"blend": blend}
        for split, (users, exclude) in protos.items():
            recs = [got for _, got in recommend_by_blocks(funnel, users, exclude, k=K,
                                                          keep_stages=True)]
            lists = {"funnel": np.concatenate([r.items for r in recs]),
                     "light_cut": np.concatenate([r.kept[light][:, :K] for r in recs])}
            judged, _ = lists_vs_truth(lists, users, lambda idx: world.relevance_matrix(idx, day),
                                       clickbait, K)
            for name in lists:
                row[f"{split}_{name}_truth_share"] = round(judged[name][f"share_of_ideal@{K}"], 4)
            if split == "test":
                for name, top in lists.items():
                    log = simulate(world, list_recommender(users, top, name), users, day, online,
                                   progress=False)
                    seen = online_metrics(log.outcomes).iloc[0]
                    row[f"{name}_watch_seconds"] = round(float(seen["watch_seconds_per_user"]), 1)
                    row[f"{name}_likes"] = round(float(seen["likes_per_user"]), 4)
        row["online_at_least_light_cut"] = bool(
            row["funnel_watch_seconds"] >= row["light_cut_watch_seconds"]
            and row["funnel_likes"] >= row["light_cut_likes"])
        row["seconds"] = round(time.perf_counter() - started, 1)
        print(row, flush=True)
        rows.append(row)
    eligible = [r for r in rows if r["online_at_least_light_cut"]] or rows
    chosen = max(eligible, key=lambda r: r["valid_funnel_truth_share"])
    return {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/bench_demo_blend.py", "run": str(run_dir),
            "version": summary["models"]["version"], "users": {s: int(p[0].size)
                                                                for s, p in protos.items()},
            "configured_blend": base.blend, "rows": rows, "chosen": chosen["blend"]}


def markdown(r: dict) -> str:
    def weights(blend):
        return ", ".join(f"{k} {v:g}" for k, v in blend.items())
    out = [f"Command: `{r['command']}` (on `make demo`'s trained version {r['version']}; the "
           f"blend is a serving setting, nothing retrained). Machine: {r['machine']}. Date: "
           f"{r['date']}. Truth share of ideal@{K}: validation users ({r['users']['valid']}) and "
           f"test users ({r['users']['test']}); online: both lists shown once to the simulated "
           "test users on the day after the data. Chosen: the best validation truth share among "
           "the blends whose funnel earns at least the light ranker's cut's watch time and likes.",
           "", "| blend | valid truth funnel | test truth funnel | test truth light cut | "
           "online watch s funnel / light cut | online likes funnel / light cut |",
           "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        mark = " **(chosen)**" if row["blend"] == r["chosen"] else ""
        out.append(f"| {weights(row['blend'])}{mark} | {row['valid_funnel_truth_share']:.4f} | "
                   f"{row['test_funnel_truth_share']:.4f} | "
                   f"{row['test_light_cut_truth_share']:.4f} | "
                   f"{row['funnel_watch_seconds']:.1f} / {row['light_cut_watch_seconds']:.1f} | "
                   f"{row['funnel_likes']:.3f} / {row['light_cut_likes']:.3f} |")
    out += ["", f"`configs/default.yaml` serves {weights(r['configured_blend'])}."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--no-write", action="store_true", help="print, write nothing")
    args = parser.parse_args()
    if not (args.run / "summary.json").is_file():
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "-c",
                        "configs/default.yaml", "-q", "--steps", "data,dataset,models",
                        "--set", f"run.name={args.run.name}",
                        "--set", f"run.runs_dir={args.run.parent}"], cwd=REPO, check=True)
    results = measure(args.run)
    publish(results, markdown(results), RESULTS, "demo_blend", not args.no_write)


if __name__ == "__main__":
    main()
