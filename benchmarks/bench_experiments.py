"""Online experiments on the demo run (L7, L8): the simulated A/B test through the real Triton
server, the A/A false-positive rate and power, offline vs online, and the feedback loop.

Needs the demo run (`make demo`; built here if missing). Runs `recfunnel experiment ab` (a real
tritonserver, every simulated user for experiments.sim_days days) and `recfunnel experiment
loop` (retrains on the system's own logs, minutes per round), then writes the
`bench_experiments` section of BENCHMARKS.md and benchmarks/results/experiments.json.

    python benchmarks/bench_experiments.py [--reuse] [--rounds 3]
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
from recfunnel.experiments.report import lift_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "experiments.json"
RUN = REPO / "runs" / "demo"


def recfunnel(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recfunnel", *args, "--config",
                    "configs/default.yaml", "--run-name", "demo", "-q"], cwd=REPO, check=True)
    return round(time.perf_counter() - start, 1)


def run(reuse: bool, rounds: int) -> dict:
    summary_path = RUN / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    seconds = {}
    if "evaluation" not in summary:
        seconds["pipeline"] = recfunnel("pipeline", "run")
    summary = json.loads(summary_path.read_text())
    if not (reuse and "outcome" in summary.get("experiments", {})):
        seconds["ab"] = recfunnel("experiment", "ab")
    summary = json.loads(summary_path.read_text())
    if not (reuse and "feedback_loop" in summary.get("experiments", {})):
        seconds["loop"] = recfunnel("experiment", "loop", "--rounds", str(rounds))
    summary = json.loads(summary_path.read_text())
    return {"machine": machine(), "seconds": seconds, "experiments": summary["experiments"],
            "data": {k: summary["data"][k] for k in ("events", "users", "items")}}


def markdown(results: dict) -> str:
    ex = results["experiments"]
    served, power, aa = ex["served"], ex["power"], ex["aa"]
    lines = [
        f"Demo run ({results['data']['events']:,} events, {results['data']['users']:,} users, "
        f"{results['data']['items']:,} items); {results['machine']}. "
        f"Command: `python benchmarks/bench_experiments.py` (seconds: {results['seconds']}).",
        "",
        f"**A/B test through the served funnel** (`recfunnel experiment ab`): "
        f"{served['simulated_users']:,} simulated users, {served['days']} days, arms assigned "
        f"by the Triton server; {served['events']:,} examined items in {served['seconds']} s. "
        f"Control: the heavy ranker ordered by click alone; treatment: the multi-objective "
        f"blend. Decision: **{ex['outcome']}** ({ex['reason']}).",
        "",
        "| arm | users | watch s/user | clicks/user | likes/user | shares/user | CTR | churn |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {r['arm']} | {r['users']:,} | {r['watch_seconds_per_user']:.1f} | "
          f"{r['clicks_per_user']:.3f} | {r['likes_per_user']:.3f} | "
          f"{r['shares_per_user']:.3f} | {r['ctr']:.4f} | {r['churn_rate']:.4f} |"
          for r in ex["online"]],
        "",
        "| test | metric | lift | 95 % CI | p |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {role} | {t['metric']} | {t['lift']:+.2%} | {t['lift_ci_low']:+.2%} to "
          f"{t['lift_ci_high']:+.2%} | {t['p_value']:.3g} |"
          for role, t in [("primary", ex["decision"]["primary"])]
          + [("guardrail", g) for g in ex["decision"]["guardrails"]]],
        "",
        "| arm | click-bait share shown | mean length s | true relevance shown |",
        "| --- | --- | --- | --- |",
        *[f"| {r['arm']} | {r['clickbait']:.4f} | {r['duration_seconds']:.0f} | "
          f"{r['true_relevance']:.4f} |" for r in ex["exposure"]],
        "",
        f"Sample-ratio check: {ex['decision']['srm']['message']}. Power at "
        f"{power['n_per_arm']:,} users per arm for a {power['mde_relative']:.0%} lift in watch "
        f"time: {power['power']:.2f} (80 % needs {power['needed_per_arm']:,} per arm). "
        f"A/A ({aa['runs']:,} random halvings of the control's users): false-positive rate "
        f"{aa['false_positive_rate']:.2%} (95 % CI {aa['ci95'][0]:.2%}-{aa['ci95'][1]:.2%}) at "
        f"alpha {aa['alpha']}.",
    ]
    ovo = ex.get("offline_vs_online")
    if ovo:
        lines += ["", f"**Offline vs online**: each offline list shown once to the "
                      f"{ovo['users']:,} test users.", "",
                  "| list | recall@10 (logged) | NDCG@10 (logged) | truth share of ideal | "
                  "online watch s/user | likes/user | CTR | churn |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |",
                  *[f"| {r['list']} | {r['offline_recall']:.4f} | {r['offline_ndcg']:.4f} | "
                    f"{r['offline_truth_share_of_ideal']:.4f} | "
                    f"{r['online_watch_seconds_per_user']:.1f} | "
                    f"{r['online_likes_per_user']:.3f} | {r['online_ctr']:.4f} | "
                    f"{r['online_churn_rate']:.4f} |" for r in ovo["rows"]],
                  "", "Spearman rank correlation across the lists: " + "; ".join(
                      f"{off} vs watch time {c['online_watch_seconds_per_user']}, vs likes "
                      f"{c['online_likes_per_user']}" for off, c in ovo["spearman"].items())]
    loop = ex.get("feedback_loop")
    if loop:
        lines += ["", f"**Feedback loop** (`recfunnel experiment loop`): {loop['description']}",
                  "", "| round | treated watch s/user | holdout watch s/user | treated vs holdout "
                  "lift [95 % CI], p | treated true relevance | holdout true relevance | Gini of "
                  "treated impressions | coverage | top-10 % items' share |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  *[f"| {r['round']} | {r['treated']['watch_seconds_per_user']} | "
                    f"{r['holdout']['watch_seconds_per_user']} | "
                    f"{lift_text(r.get('treated_vs_holdout'))} | "
                    f"{r['treated']['true_relevance']} | {r['holdout']['true_relevance']} | "
                    f"{r['treated']['gini']} | {r['treated']['coverage']} | "
                    f"{r['treated']['top10pct_share']} |" for r in loop["rounds"]]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep results already in the run")
    parser.add_argument("--rounds", type=int, default=3, help="feedback-loop retrains")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    results = run(args.reuse, args.rounds)
    publish(results, markdown(results), RESULTS, "bench_experiments", write=not args.no_write)


if __name__ == "__main__":
    main()
