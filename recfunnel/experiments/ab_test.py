"""A whole online A/B test in one call (L7.1, L8): assignment -> serving -> logs -> metrics -> decision.

`run_ab_test` serves a run's exported funnel with a real Triton server, writes the experiment
(arms, holdout) into the served repository so the funnel assigns every request's users
itself, lets the simulated users of the ground truth use it for `sim_days` days, and
`analyze`s their logs: sample-ratio check, the primary metric with Welch's test, guardrails
(churn, CTR by a user-level bootstrap, likes), the test's power at the sample it had, and the
false-positive rate of A/A splits of the control's own users. `offline_vs_online` shows the
run's offline lists to the same simulated users and relates offline metrics to online ones.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from recfunnel.data.synthetic import World
from recfunnel.evaluation.truth import lists_vs_truth
from recfunnel.experiments import stats
from recfunnel.experiments.assignment import (EXPERIMENT_FILE, HOLDOUT, Experiment,
                                              ExperimentError)
from recfunnel.experiments.simulator import (SimulationSettings, list_recommender,
                                             online_metrics, served_recommender,
                                             shown_relevance, simulate)
from recfunnel.serving.export import export_run, stage_environment, versions_in
from recfunnel.serving.funnel_client import FunnelClient
from recfunnel.serving.server import TritonServer
from recfunnel.topk import topk_metrics

# per-user outcome -> (test, direction); the primary metric is chosen in the config
GUARDRAILS = {"churned": False, "likes": True}
SECONDARY = ("clicks", "shares", "sessions")
# three TensorFlow stages load in 30-90 s on 2 idle cores; far longer on a busy machine
STARTUP_TIMEOUT_S = 600.0
# the offline evaluation's lists compared online: key in lists.npz -> label
LISTS = {"popularity": "popularity", "mf": "mf", "two_tower": "two_tower",
         "funnel_light": "light ranker cut", "funnel": "funnel"}
ONLINE = ("watch_seconds_per_user", "clicks_per_user", "likes_per_user", "ctr", "churn_rate")


def settings_from_config(cfg) -> SimulationSettings:
    return SimulationSettings(days=cfg.sim_days, k=cfg.sim_k, seed=cfg.seed)


def simulated_users(world, cfg) -> np.ndarray:
    """Every user of the ground truth, or a seeded sample of `sim_users` of them."""
    users = world.users["user_id"].to_numpy(np.int64)
    if cfg.sim_users and cfg.sim_users < users.size:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, cfg.sim_users,
                                                               replace=False))
    return users


# ---- the analysis (numpy/scipy) ----------------------------------------------------------------
def analyze(outcomes: pd.DataFrame, experiment: Experiment, cfg, control: str | None = None,
            treatment: str | None = None) -> dict:
    """The decision and everything it rests on, from the per-user outcomes of a simulation.

    `control` and `treatment` are arm names; by default the experiment's first arm is the
    control and its second the treatment (experiments.arms in the config)."""
    if control is None or treatment is None:
        if len(experiment.arms) < 2:
            raise ExperimentError(f"experiment {experiment.name!r} has one arm; the analysis "
                                  "compares its first arm (the control) with its second")
        control = control or experiment.arms[0].name
        treatment = treatment or experiment.arms[1].name
    counts = outcomes["arm"].value_counts()
    expected = experiment.expected_shares()
    unexpected = sorted(set(counts.index) - set(expected))
    if unexpected:
        raise ValueError(f"outcomes hold arms {unexpected} that experiment {experiment.name!r} "
                         f"does not define ({sorted(expected)})")
    srm = stats.srm_check({arm: int(counts.get(arm, 0)) for arm in expected}, expected,
                          cfg.srm_threshold)
    a = outcomes[outcomes["arm"] == control]
    b = outcomes[outcomes["arm"] == treatment]
    metric = cfg.primary_metric
    if metric not in outcomes.columns:
        raise ValueError(f"experiments.primary_metric {metric!r} is not a per-user outcome; "
                         f"choose one of {sorted(set(outcomes.columns) - {'user_id', 'arm'})}")
    primary = stats.welch_ttest(a[metric], b[metric], cfg.alpha,
                                metric=f"{metric}_per_user")
    guardrails = [
        stats.two_proportion_ztest(int(a["churned"].sum()), len(a), int(b["churned"].sum()),
                                   len(b), cfg.alpha, metric="churn_rate",
                                   higher_is_better=False),
        stats.welch_ttest(a["likes"], b["likes"], cfg.alpha, metric="likes_per_user"),
        stats.bootstrap_ratio(a["clicks"], a["impressions"], b["clicks"], b["impressions"],
                              seed=cfg.seed, alpha=cfg.alpha, metric="ctr"),
    ]
    # a secondary metric every user has alike (sessions in a one-day test) has nothing to test
    secondary = [stats.welch_ttest(a[m], b[m], cfg.alpha, metric=f"{m}_per_user")
                 for m in SECONDARY if a[m].std() > 0 or b[m].std() > 0]
    decision = stats.decide(primary, guardrails, srm)
    return {
        "arms": {arm: int(counts.get(arm, 0)) for arm in expected},
        "expected_shares": expected,
        "online": online_metrics(outcomes).round(4).reset_index().to_dict("records"),
        "decision": decision.to_dict(),
        "secondary": [t.to_dict() for t in secondary],
        "power": power_at_sample(a[metric].to_numpy(float), min(len(a), len(b)), cfg),
        "aa": aa_section(a[metric].to_numpy(float), cfg),
        "holdout": holdout_comparison(outcomes, treatment, metric, cfg.alpha),
    }


def power_at_sample(control_values: np.ndarray, n_per_arm: int, cfg) -> dict:
    """The test's power at the sample it had, for the lift it should detect, and the sample
    that lift needs (the control's mean and spread stand in for the plan's)."""
    mean, sd = float(control_values.mean()), float(control_values.std(ddof=1))
    mde = cfg.min_detectable_lift * mean
    plan = stats.sample_size_means(sd, mde, alpha=cfg.alpha, power=cfg.power, baseline=mean)
    return {"n_per_arm": int(n_per_arm), "planned_power": cfg.power,
            "mde_relative": cfg.min_detectable_lift,
            "mde_absolute": round(mde, 4), "sd": round(sd, 4),
            "power": round(stats.power_means(sd, mde, n_per_arm, alpha=cfg.alpha), 4),
            "needed_per_arm": plan.n_control}


def aa_section(control_values: np.ndarray, cfg) -> dict:
    """The analysis' `aa`: `aa_runs` A/A tests on the control's own users
    (stats.aa_false_positive_rate), the rate with its 95 % Clopper-Pearson interval."""
    aa = stats.aa_false_positive_rate(control_values, cfg.aa_runs, cfg.alpha, cfg.seed)
    return {"runs": aa.n_runs, "n_per_arm": aa.n_per_arm, "alpha": aa.alpha,
            "rejections": aa.rejections, "false_positive_rate": round(aa.rate, 4),
            "ci95": [round(aa.ci_low, 4), round(aa.ci_high, 4)]}


def holdout_comparison(outcomes: pd.DataFrame, treatment: str, metric: str, alpha: float
                       ) -> dict | None:
    """The long-term holdout (still on the version served when the experiment began) against
    the treatment: what the change bought, measured on users who never got it."""
    held = outcomes[outcomes["arm"] == HOLDOUT]
    if len(held) < 2:
        return None
    treated = outcomes[outcomes["arm"] == treatment]
    test = stats.welch_ttest(held[metric], treated[metric], alpha, metric=f"{metric}_per_user")
    return {"users": int(len(held)), "test_vs_treatment": test.to_dict()}


def exposure_mix(events: pd.DataFrame, world) -> pd.DataFrame:
    """Per arm, what was shown: click-bait share, mean length, and its mean true relevance
    (the ground truth's, which no real platform observes; it explains the online numbers)."""
    bait = world.item_truth["is_clickbait"].to_numpy()
    frame = pd.DataFrame({"arm": events["arm"],
                          "clickbait": bait[events["item_id"].to_numpy() - 1],
                          "duration_seconds": events["duration_seconds"],
                          "true_relevance": shown_relevance(events, world)})
    return frame.groupby("arm").mean().round(4)


# ---- offline vs online -------------------------------------------------------------------------
def offline_vs_online(run_dir: Path, world, cfg, progress: bool = True) -> dict:
    """Each list of the run's offline evaluation (retrievers' top-k, the light ranker's cut, the
    funnel) shown once to the same simulated test users on the first day after the data;
    its offline metrics (logged test clicks; the truth's share of the ideal list) next to the
    online ones, and their rank correlation across the lists."""
    predictions = Path(run_dir) / "evaluation" / "predictions"
    if not (predictions / "lists.npz").is_file():
        raise FileNotFoundError(f"{predictions} holds no lists: run the evaluation step first "
                                "(recfunnel evaluate)")
    users = pd.read_parquet(predictions / "users.parquet")["user_id_raw"].to_numpy(np.int64)
    relevant = pd.read_parquet(predictions / "relevant.parquet").groupby("user_id_raw")[
        "item_id_raw"].apply(np.asarray)
    relevant = [relevant.get(u, np.zeros(0, np.int64)) for u in users]
    stored = np.load(predictions / "lists.npz")
    k = cfg.sim_k
    lists = {label: stored[key][:, :k] for key, label in LISTS.items() if key in stored}
    judged, _ = lists_vs_truth(lists, users, lambda idx: world.relevance_matrix(
        idx, world.config.n_days), world.item_truth["is_clickbait"].to_numpy(), k)
    settings = SimulationSettings(days=1, k=k, seed=cfg.seed)
    rows = []
    for label, top in lists.items():
        log = simulate(world, list_recommender(users, top, label), users, world.config.n_days,
                       settings, progress=progress, description=f"online: {label}")
        online = online_metrics(log.outcomes).iloc[0]
        logged = topk_metrics(top, relevant, k)
        rows.append({"list": label,
                     "offline_recall": round(logged[f"recall@{k}"], 4),
                     "offline_ndcg": round(logged[f"ndcg@{k}"], 4),
                     "offline_truth_share_of_ideal": round(judged[label][f"share_of_ideal@{k}"], 4),
                     **{f"online_{m}": round(float(online[m]), 4) for m in ONLINE}})
    table = pd.DataFrame(rows)
    offline_cols = [c for c in table.columns if c.startswith("offline_")]
    correlation = {off: {f"online_{on}": _spearman(table[off], table[f"online_{on}"])
                         for on in ONLINE} for off in offline_cols}
    return {"users": int(users.size), "k": k, "day": world.config.n_days,
            "rows": table.to_dict("records"), "spearman": correlation}


def _spearman(x: pd.Series, y: pd.Series) -> float | None:
    ok = x.notna() & y.notna()
    if ok.sum() < 3:
        return None
    return round(float(scipy_stats.spearmanr(x[ok], y[ok]).statistic), 3)


# ---- end to end against the real server ----------------------------------------------------------
def run_ab_test(run_dir: str | Path, cfg, progress: bool = True, address: str | None = None,
                exported: tuple[Path, int] | None = None) -> dict:
    """The run's `experiments` section: the A/B test through a real Triton server, then
    offline vs online. Writes `experiments/` in the run (outcomes, events, analysis.json).

    The server is started on the run's repository and stopped after, unless `address` (gRPC
    host:port) names one that already serves it. `exported` (repository, Triton version) is
    what the pipeline's serving step just exported; without it the run is exported again. The experiment file is in the repository only
    while the simulation runs; one that was there before is put back."""
    run_dir = Path(run_dir).resolve()
    truth = run_dir / "data" / "truth"
    if not (truth / "world.json").is_file():
        raise FileNotFoundError(f"{truth} holds no ground truth: the simulated A/B test needs "
                                "the synthetic source (data.source: synthetic)")
    world = World.load(truth)
    out = run_dir / "experiments"
    out.mkdir(parents=True, exist_ok=True)
    if exported is not None:                # the pipeline's serving step exported it just now
        repo, served_version = Path(exported[0]), int(exported[1])
    elif address is None:
        # exported again, so the served code is this checkout's (an older export may predate it)
        done = export_run(run_dir)
        repo, served_version = Path(done.repo), done.triton_version
    else:                                   # that server serves the run's repository as it is
        repo = run_dir / "triton_repo"
        served_version = max(versions_in(repo))
    experiment = Experiment.from_config(cfg.experiments, holdout_version=served_version,
                                        started=datetime.now(timezone.utc).isoformat())
    users = simulated_users(world, cfg.experiments)
    previous = repo / EXPERIMENT_FILE
    kept = previous.with_name(EXPERIMENT_FILE + ".before-simulation")
    if previous.exists():
        shutil.copy2(previous, kept)
    t = time.perf_counter()
    try:
        experiment.save(repo / EXPERIMENT_FILE)
        with contextlib.ExitStack() as stack:
            if address is None:
                server = stack.enter_context(TritonServer(
                    repo, model_control_mode="poll", env=stage_environment(),
                    log_path=run_dir / "tritonserver-experiment.log",
                    startup_timeout_s=STARTUP_TIMEOUT_S))
                address = server.grpc_address
            def make_client():                  # one per thread, all closed at the end
                return stack.enter_context(FunnelClient(address, "grpc"))
            log = simulate(world, served_recommender(make_client), users, world.config.n_days,
                           settings_from_config(cfg.experiments), progress=progress,
                           description="A/B test (served)")
    finally:
        (repo / EXPERIMENT_FILE).unlink(missing_ok=True)
        if kept.exists():
            kept.replace(previous)
    seconds = round(time.perf_counter() - t, 1)
    log.outcomes.to_parquet(out / "outcomes.parquet", index=False)
    log.events.to_parquet(out / "events.parquet", index=False)
    analysis = analyze(log.outcomes, experiment, cfg.experiments)
    analysis.update({
        "experiment": experiment.to_dict(), "served": {
            "triton_version": served_version,
            "simulated_users": int(users.size), "days": cfg.experiments.sim_days,
            "events": int(len(log.events)), "seconds": seconds,
            "model_versions": sorted(int(v) for v in log.events["model_version"].unique())},
        "exposure": exposure_mix(log.events, world).reset_index().to_dict("records"),
    })
    if (run_dir / "evaluation" / "predictions" / "lists.npz").is_file():
        analysis["offline_vs_online"] = offline_vs_online(run_dir, world, cfg.experiments,
                                                          progress)
    (out / "analysis.json").write_text(json.dumps(analysis, indent=2))
    return {**_headline(analysis), "analysis_path": "experiments/analysis.json", **analysis}


def _headline(analysis: dict) -> dict:
    decision = analysis["decision"]
    primary = decision["primary"]
    return {"outcome": decision["outcome"], "reason": decision["reason"],
            "primary_metric": primary["metric"], "lift": primary["lift"],
            "lift_ci": [primary["lift_ci_low"], primary["lift_ci_high"]],
            "p_value": primary["p_value"]}
