"""The online simulator and the A/B analysis on plain numpy: fast, no server, no TensorFlow."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.config import ExperimentsConfig
from recfunnel.data import schema
from recfunnel.data.synthetic import build_world
from recfunnel.experiments.ab_test import analyze
from recfunnel.experiments.assignment import Experiment
from recfunnel.experiments.feedback_loop import concentration
from recfunnel.experiments.simulator import (SimulationSettings, list_recommender,
                                             online_metrics, simulate)


@pytest.fixture(scope="module")
def world(small_synthetic):
    return build_world(small_synthetic)


def ranked_by_truth(world, users, day, best=True):
    """Lists ordered by the true relevance (best first, or worst first)."""
    relevance = world.relevance_matrix(users - 1, day)
    order = np.argsort(-relevance if best else relevance, axis=1)
    return order + 1


def test_users_answer_the_lists_they_are_shown_and_are_logged_in_our_schema(world):
    users = world.users["user_id"].to_numpy()[:120]
    lists = ranked_by_truth(world, users, world.config.n_days)
    settings = SimulationSettings(days=3, k=5, seed=1)
    log = simulate(world, list_recommender(users, lists, "a"), users, world.config.n_days,
                   settings, progress=False)
    events = log.events
    assert set(schema.EVENTS.names) <= set(events.columns)
    assert events["position"].between(0, 4).all()
    # a feed does not repeat itself: no user is shown an item twice
    assert not events.duplicated(["user_id", "item_id"]).any()
    # only clicked items are watched, liked or shared; watch time within the item's length
    assert (events.loc[events.click == 0, ["like", "share", "watch_seconds"]] == 0).all().all()
    assert (events["watch_seconds"] <= events["duration_seconds"]).all()
    outcomes = log.outcomes
    assert outcomes["sessions"].between(1, 3).all()
    assert len(outcomes) == 120 and set(outcomes["arm"]) == {"a"}
    # a churned user has no session after the one they left in
    assert (outcomes.loc[outcomes.sessions < 3, "churned"] == 1).all()
    per_user = events.groupby("user_id")["click"].sum()
    assert per_user.reindex(outcomes.user_id, fill_value=0).to_numpy().tolist() == \
        outcomes["clicks"].astype(int).tolist()


def test_the_same_seed_gives_the_same_log(world):
    users = world.users["user_id"].to_numpy()[:50]
    lists = ranked_by_truth(world, users, world.config.n_days)
    runs = [simulate(world, list_recommender(users, lists, "a"), users, world.config.n_days,
                     SimulationSettings(days=2, k=4, seed=3), progress=False) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].events, runs[1].events)


def test_better_lists_earn_more_time_likes_and_fewer_churns(world):
    users = world.users["user_id"].to_numpy()
    day = world.config.n_days
    settings = SimulationSettings(days=3, k=10, seed=5)
    good = simulate(world, list_recommender(users, ranked_by_truth(world, users, day), "good"),
                    users, day, settings, progress=False)
    bad = simulate(world, list_recommender(users, ranked_by_truth(world, users, day, False),
                                           "bad"), users, day, settings, progress=False)
    table = online_metrics(pd.concat([good.outcomes, bad.outcomes]))
    for metric in ("watch_seconds_per_user", "likes_per_user", "ctr", "sessions_per_user"):
        assert table.loc["good", metric] > table.loc["bad", metric], metric
    assert table.loc["good", "churn_rate"] < table.loc["bad", "churn_rate"]


def test_unknown_users_are_refused(world):
    with pytest.raises(ValueError, match="not in the ground truth"):
        simulate(world, lambda u, d, k: None, np.array([10**9]), 0, SimulationSettings(),
                 progress=False)


def outcomes_for(experiment, n, effect, seed=0):
    """Per-user outcomes of an experiment whose treatment adds `effect` to watch time."""
    rng = np.random.default_rng(seed)
    users = np.arange(1, n + 1)
    arm = experiment.assign(users)
    watch = rng.gamma(1.0, 500.0, n) * (1 + effect * (arm == "treatment"))
    impressions = rng.integers(5, 30, n)
    clicks = rng.binomial(impressions, 0.4)
    return pd.DataFrame({"user_id": users, "arm": arm.astype(str), "sessions": 3,
                         "impressions": impressions, "clicks": clicks,
                         "likes": rng.poisson(1.5, n), "shares": rng.poisson(0.5, n),
                         "watch_seconds": watch, "churned": rng.binomial(1, 0.4, n)})


def test_analysis_ships_a_real_improvement_and_keeps_a_null_one():
    cfg = ExperimentsConfig(aa_runs=300)
    experiment = Experiment.from_config(cfg, holdout_version=1)
    better = analyze(outcomes_for(experiment, 6000, 0.2), experiment, cfg)
    assert better["decision"]["outcome"] == "ship treatment"
    lift = better["decision"]["primary"]
    assert lift["lift_ci_low"] < 0.2 < lift["lift_ci_high"]
    null = analyze(outcomes_for(experiment, 6000, 0.0, seed=1), experiment, cfg)
    assert null["decision"]["outcome"] == "no decision: not significant"
    assert null["holdout"]["users"] == (experiment.assign(np.arange(1, 6001)) == "holdout").sum()


def test_analysis_is_blocked_when_the_logs_lost_part_of_an_arm():
    cfg = ExperimentsConfig(aa_runs=100)
    experiment = Experiment.from_config(cfg)
    outcomes = outcomes_for(experiment, 6000, 0.2)
    treated = outcomes.index[outcomes.arm == "treatment"]
    lost = outcomes.drop(treated[: len(treated) // 10])           # 10 % of one arm missing
    assert analyze(lost, experiment, cfg)["decision"]["outcome"] == \
        "blocked: sample ratio mismatch"


def test_analysis_compares_the_first_arm_with_the_second_whatever_their_names():
    cfg = ExperimentsConfig(aa_runs=100, arms=[{"name": "old", "share": 0.49},
                                               {"name": "new", "share": 0.49}])
    experiment = Experiment.from_config(cfg)
    outcomes = outcomes_for(experiment, 6000, 0.0)       # no arm is called "treatment" ...
    outcomes["watch_seconds"] *= np.where(outcomes["arm"] == "new", 1.2, 1.0)   # ... new wins
    result = analyze(outcomes, experiment, cfg)
    assert result["decision"]["outcome"] == "ship treatment"
    assert result["aa"]["runs"] == 100 and 0 <= result["aa"]["false_positive_rate"] <= 1


def test_concentration_of_impressions():
    even = concentration(np.arange(1, 101), 100)
    assert even["gini"] == pytest.approx(0.0, abs=1e-9) and even["coverage"] == 1.0
    assert even["top10pct_share"] == pytest.approx(0.1)
    one = concentration(np.full(100, 7), 100)
    assert one["gini"] == pytest.approx(0.99) and one["coverage"] == 0.01
    at_5_percent = one["concentration_at_percent"].index(5)
    assert one["concentration"][at_5_percent] == 100.0       # the top 5 % hold everything
    assert even["concentration"][at_5_percent] == pytest.approx(5.0)
