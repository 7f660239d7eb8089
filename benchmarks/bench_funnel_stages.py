"""The funnel stage by stage (issue 13): does every stage improve on the one before it?

Reads what two runs measured and puts it side by side:
  demo      `make demo` (runs/demo, made here when missing): each ranking stage against its own
            input's order over the same items by the logs and by the synthetic truth
            (`evaluation.stages`), what share of each list the old system ever showed
            (`evaluation.exposure`), the rankers' test AUC, and the lists shown once to simulated
            users (`experiments.offline_vs_online`).
  ML-100K   the `funnel` row of benchmarks/results/retrieval_ml100k.json
            (`python benchmarks/bench_retrieval_ml100k.py --only funnel`): real ratings, no
            exposure confound, beside the two-tower, EASE and the other peers of that run.

    python benchmarks/bench_funnel_stages.py        # seconds, once both runs exist
Results: benchmarks/results/funnel_stages.json and the `funnel_stages` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_data import machine, publish  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "funnel_stages.json"
ML100K = REPO / "benchmarks" / "results" / "retrieval_ml100k.json"
K = 10


def demo_run(run_dir: Path) -> dict:
    if not (run_dir / "summary.json").is_file() or \
            "experiments" not in json.loads((run_dir / "summary.json").read_text()):
        subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "-c",
                        "configs/default.yaml", "-q", "--set", f"run.name={run_dir.name}",
                        "--set", f"run.runs_dir={run_dir.parent}"], cwd=REPO, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluation, models = summary["evaluation"], summary["models"]
    return {"run": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
            "version": models["version"], "stages": evaluation["stages"],
            "exposure": evaluation["exposure"], "rankers": evaluation["rankers"],
            "truth": evaluation["truth"], "models": evaluation["models"],
            "training_rows": {n: models["models"][n].get("training_rows")
                              for n in ("light_ranker", "heavy_ranker")},
            "offline_vs_online": summary["experiments"]["offline_vs_online"]["rows"],
            "timings_s": summary["run"]["timings_s"]}


def ml100k() -> dict | None:
    if not ML100K.is_file():
        return None
    models = json.loads(ML100K.read_text())["models"]
    if "funnel" not in models:
        return None
    keep = ("two_tower", "mf", "ease", "implicit_als", "funnel")
    return {name: {k: models[name].get(k) for k in ("chosen", "valid", "test", "stages",
                                                     "pipeline_evaluation")}
            for name in keep if name in models}


def markdown(r: dict) -> str:
    d = r["demo"]
    out = [f"Command: `python benchmarks/bench_funnel_stages.py` (reads `make demo`'s run and "
           f"`python benchmarks/bench_retrieval_ml100k.py --only funnel`'s row). Machine: "
           f"{r['machine']}. Date: {r['date']}. Each stage is judged against its own input's "
           "order over the same items (recfunnel/evaluation/stages.py; worse = the whole 95 % "
           "paired-bootstrap interval of the NDCG@10 difference below 0).", ""]
    ml = r.get("ml100k")
    if ml:
        out += ["ML-100K (real ratings, no exposure confound; full ranking, train and validation "
                "items excluded; each row's setting chosen on validation):", "",
                "| list | test recall@10 | test NDCG@10 | chosen |", "|---|---|---|---|"]
        for name, m in ml.items():
            chosen = ", ".join(f"{k}={v}" for k, v in (m.get("chosen") or {}).items()) or "-"
            out.append(f"| {name} | {m['test']['recall@10']:.4f} | {m['test']['ndcg@10']:.4f} | "
                       f"{chosen} |")
        out += ["", "| stage (ML-100K, the pipeline's setting) | input NDCG@10 | output NDCG@10 "
                "| input recall@10 | output recall@10 | worse |", "|---|---|---|---|---|---|"]
        for s in ml["funnel"].get("stages") or []:
            lg = s["logged"]
            out.append(f"| {s['stage']} ({s['input_width']} -> {s['kept']}) | "
                       f"{lg['input_ndcg@10']:.4f} | {lg['output_ndcg@10']:.4f} | "
                       f"{lg['input_recall@10']:.4f} | {lg['output_recall@10']:.4f} | "
                       f"{'yes' if s['worse'] else 'no'} |")
        out.append("")
    out += [f"Demo (synthetic, exposure-dominated logs; {d['models']['funnel']['users_scored']:,} "
            f"test users; version {d['version']}):", "",
            "| stage (demo) | logged NDCG@10 in -> out | truth NDCG@10 in -> out | true relevance@10 "
            "in -> out | worse by logs | worse by truth |", "|---|---|---|---|---|---|"]
    for s in d["stages"]:
        lg, t = s["logged"], s["truth"]
        out.append(f"| {s['stage']} ({s['input_width']} -> {s['kept']}) | "
                   f"{lg['input_ndcg@10']:.4f} -> {lg['output_ndcg@10']:.4f} | "
                   f"{t['input_ndcg@10']:.4f} -> {t['output_ndcg@10']:.4f} | "
                   f"{t['input_true_relevance@10']:.4f} -> {t['output_true_relevance@10']:.4f} | "
                   f"{'yes' if s['worse_logged'] else 'no'} | {'yes' if s['worse_truth'] else 'no'} |")
    x = d["exposure"]
    out += ["", f"Exposure: {x['logging_policy']['positives_shown_share']:.0%} of the held-out "
            "clicks were impressions of the old system; of each list's top-10, the share the "
            "user was ever shown and the click rate among those:", "",
            "| list | shown share@10 | click rate of shown | true relevance of never shown |",
            "|---|---|---|---|"]
    for name, v in x["lists"].items():
        out.append(f"| {name} | {v['shown_share@10']:.4f} | {v['positive_rate_of_shown@10']:.4f} | "
                   f"{v.get('true_relevance_not_shown@10', float('nan')):.4f} |")
    out += ["", "| demo list | logged recall@10 | truth share of ideal@10 | online watch s/user | "
            "online likes/user |", "|---|---|---|---|---|"]
    for row in d["offline_vs_online"]:
        out.append(f"| {row['list']} | {row['offline_recall']:.4f} | "
                   f"{row['offline_truth_share_of_ideal']:.4f} | "
                   f"{row['online_watch_seconds_per_user']:.0f} | "
                   f"{row['online_likes_per_user']:.3f} |")
    heavy, light = d["rankers"]["heavy"], d["rankers"]["light"]
    out += ["", "| test ROC-AUC (demo) | " + " | ".join(heavy) + " |",
            "|---|" + "---|" * len(heavy),
            "| heavy ranker | " + " | ".join(f"{heavy[o]['roc_auc']:.4f}" for o in heavy) + " |",
            "| light ranker | " + " | ".join(f"{light[o]['roc_auc']:.4f}" for o in heavy) + " |"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-run", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
               "command": "python benchmarks/bench_funnel_stages.py",
               "demo": demo_run(Path(args.demo_run).resolve()), "ml100k": ml100k()}
    publish(results, markdown(results), RESULTS, "funnel_stages", write=not args.no_write)


if __name__ == "__main__":
    main()
