"""Experiment statistics against scipy, against statsmodels' numbers and against simulated A/A
and A/B runs, and their refusals of bad input.

statsmodels is not in the project's environment, so its reference values are constants below,
produced once with statsmodels 0.15.0 (scipy 1.17.1, numpy 2.4.6, Python 3.11.7) in a throwaway
venv (`python3.11 -m venv /tmp/sm && /tmp/sm/bin/pip install statsmodels`) by this script;
statsmodels' sample 1 is our treatment, so counts and nobs come treatment first:

    from statsmodels.stats.proportion import (proportions_ztest, confint_proportions_2indep,
        power_proportions_2indep, samplesize_proportions_2indep_onetail, proportion_effectsize)
    from statsmodels.stats.power import NormalIndPower, TTestIndPower, tt_ind_solve_power
    for alt in ("two-sided", "larger", "smaller"):
        print(proportions_ztest([560, 480], [5000, 5000], alternative=alt))
    print(proportions_ztest([130, 95], [1200, 1000]))
    print(confint_proportions_2indep(560, 5000, 480, 5000, method="wald", compare="diff"))
    print(confint_proportions_2indep(130, 1200, 95, 1000, method="wald", compare="diff",
                                     alpha=0.1))
    print(confint_proportions_2indep(560, 5000, 480, 5000, method="log", compare="ratio"))
    print(samplesize_proportions_2indep_onetail(0.01, 0.10, 0.8, ratio=1, alpha=0.05))
    print(samplesize_proportions_2indep_onetail(0.01, 0.10, 0.9, ratio=0.5, alpha=0.01))
    print(samplesize_proportions_2indep_onetail(0.005, 0.05, 0.8, alternative="larger"))
    print(power_proportions_2indep(0.01, 0.10, 14000, ratio=1).power)
    print(power_proportions_2indep(0.01, 0.10, 3000, ratio=1).power)
    print(power_proportions_2indep(0.01, 0.10, 20000, ratio=0.5).power)
    h = proportion_effectsize(0.11, 0.10)
    print(NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1))
    print(tt_ind_solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=1))
    print(tt_ind_solve_power(effect_size=0.5, alpha=0.05, power=0.9, ratio=2))
    print(tt_ind_solve_power(effect_size=0.2, alpha=0.05, power=0.8, alternative="larger"))
    print(TTestIndPower().power(effect_size=0.1, nobs1=1000, alpha=0.05, ratio=1))
    print(TTestIndPower().power(effect_size=0.3, nobs1=20, alpha=0.05, ratio=1.5))

Power and sample size of proportions follow the difference-of-proportions convention (pooled
variance under the null, unpooled under the alternative, as our pooled z-test), so they match
`power_proportions_2indep` / `samplesize_proportions_2indep_onetail`; Cohen's h with
`NormalIndPower` (the other convention) is checked only to agree within 0.1 %.
"""
import json
import math

import numpy as np
import pytest
from scipy import stats

from recfunnel.experiments.stats import (BLOCKED_SRM, KEEP, NO_DECISION, SHIP,
                                         aa_false_positive_rate, bootstrap_ratio, decide,
                                         delta_ratio_test, minimum_detectable_effect,
                                         power_means, power_proportions, sample_size_means,
                                         sample_size_proportions, simulated_power, srm_check,
                                         two_proportion_ztest, welch_ttest,
                                         welch_ttest_from_stats)

# proportions_ztest([560, 480], [5000, 5000], alternative=...): (z, p)
SM_ZTEST = {"two-sided": (2.620712091804796, 0.008774633060101168),
            "larger": (2.620712091804796, 0.004387316530050584),
            "smaller": (2.620712091804796, 0.9956126834699495)}
SM_ZTEST_UNEQUAL = (1.0276988984061817, 0.30409148617626824)    # ([130, 95], [1200, 1000])
# confint_proportions_2indep(560, 5000, 480, 5000, method="wald", compare="diff")
SM_WALD = (0.004038116446260863, 0.027961883553739138)
# confint_proportions_2indep(130, 1200, 95, 1000, method="wald", compare="diff", alpha=0.1)
SM_WALD_UNEQUAL = (-0.007889274510389937, 0.03455594117705661)
# confint_proportions_2indep(560, 5000, 480, 5000, method="log", compare="ratio"): ratio bounds
SM_RATIO_LOG = (1.0394705561203335, 1.3094272878601318)
# samplesize_proportions_2indep_onetail(diff, prop2, power, ratio, alpha, alternative): nobs1
SM_SAMPLESIZE = 14750.790469044945           # (0.01, 0.10, 0.8, ratio=1, alpha=0.05)
SM_SAMPLESIZE_RATIO = 42139.52310572137      # (0.01, 0.10, 0.9, ratio=0.5, alpha=0.01)
SM_SAMPLESIZE_LARGER = 24602.44014805983     # (0.005, 0.05, 0.8, alternative="larger")
# power_proportions_2indep(0.01, 0.10, nobs1, ratio).power
SM_POWER = {(14000, 1): 0.7791690999721127, (3000, 1): 0.24364009453714888,
            (20000, 0.5): 0.756421345810846}
# NormalIndPower().solve_power(effect_size=proportion_effectsize(0.11, 0.10), power=0.8)
SM_COHEN_H_N = 14744.104836925611
# tt_ind_solve_power(effect_size, alpha=0.05, power, ratio, alternative): nobs1
SM_TT_N = {(0.1, 0.8, 1, "two-sided"): 1570.7330430520037,
           (0.5, 0.9, 2, "two-sided"): 63.691614060374,
           (0.2, 0.8, 1, "larger"): 309.8064697603095}
# TTestIndPower().power(effect_size, nobs1, alpha=0.05, ratio)
SM_TT_POWER = {(0.1, 1000, 1): 0.6083667058091785, (0.3, 20, 1.5): 0.17468963221244285}


def _aa_tolerance(alpha: float, n_runs: int) -> float:
    """Three binomial standard errors of a false-positive rate of alpha over n_runs."""
    return 3 * math.sqrt(alpha * (1 - alpha) / n_runs)


def _users(rng, n, ctr, impressions=10):
    """Per-user impressions and clicks, CTRs varying by user (clicks cluster within users)."""
    shown = 1 + rng.poisson(impressions - 1, n)
    return rng.binomial(shown, rng.beta(ctr * 20, (1 - ctr) * 20, n)), shown


# ---------------------------------------------------------------- two proportions

@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
def test_ztest_matches_statsmodels(alternative):
    result = two_proportion_ztest(480, 5000, 560, 5000, alternative=alternative)
    z, p = SM_ZTEST[alternative]
    assert result.statistic == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert (result.control, result.treatment) == (0.096, 0.112)
    assert result.difference == pytest.approx(0.016)
    assert result.lift == pytest.approx(1 / 6)


def test_ztest_intervals_match_statsmodels_and_normal_formulas():
    result = two_proportion_ztest(480, 5000, 560, 5000)
    assert (result.ci_low, result.ci_high) == pytest.approx(SM_WALD, rel=1e-9)
    assert (1 + result.lift_ci_low, 1 + result.lift_ci_high) == pytest.approx(SM_RATIO_LOG,
                                                                              rel=1e-9)
    unequal = two_proportion_ztest(95, 1000, 130, 1200, alpha=0.1)
    assert (unequal.statistic, unequal.p_value) == pytest.approx(SM_ZTEST_UNEQUAL, rel=1e-9)
    assert (unequal.ci_low, unequal.ci_high) == pytest.approx(SM_WALD_UNEQUAL, rel=1e-9)
    # the same from the normal distribution by hand
    p_a, p_b, pooled = 95 / 1000, 130 / 1200, 225 / 2200
    z = (p_b - p_a) / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 1200))
    assert unequal.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-12)
    half = stats.norm.ppf(0.95) * math.sqrt(p_a * (1 - p_a) / 1000 + p_b * (1 - p_b) / 1200)
    assert unequal.ci_high - unequal.ci_low == pytest.approx(2 * half, rel=1e-12)
    assert not unequal.significant and result.significant


def test_ztest_one_sided_interval_is_one_sided():
    larger = two_proportion_ztest(480, 5000, 560, 5000, alternative="larger")
    assert larger.ci_high == math.inf and 0 < larger.ci_low < SM_WALD[0] + 0.002
    assert larger.to_dict()["ci_high"] is None


def test_ztest_without_any_conversion_is_not_significant():
    result = two_proportion_ztest(0, 100, 0, 120)
    assert result.p_value == 1.0 and not result.significant


# ---------------------------------------------------------------- Welch

@pytest.mark.parametrize("alternative", ["two-sided", "larger", "smaller"])
def test_welch_matches_scipy(alternative):
    rng = np.random.default_rng(3)
    a, b = rng.exponential(2.0, 80), rng.exponential(2.6, 130)   # skewed, unequal sizes
    result = welch_ttest(a, b, alpha=0.1, alternative=alternative)
    reference = stats.ttest_ind(b, a, equal_var=False, alternative={
        "two-sided": "two-sided", "larger": "greater", "smaller": "less"}[alternative])
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert result.df == pytest.approx(reference.df, rel=1e-10)
    interval = reference.confidence_interval(0.9)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high),
                                                            rel=1e-10)
    assert result.difference == pytest.approx(b.mean() - a.mean())


def test_welch_from_stats_matches_scipy():
    result = welch_ttest_from_stats(10.0, 3.0, 40, 11.5, 5.0, 25)
    reference = stats.ttest_ind_from_stats(11.5, 5.0, 25, 10.0, 3.0, 40, equal_var=False)
    assert (result.statistic, result.p_value) == pytest.approx(tuple(reference), rel=1e-10)
    assert result.n_control == 40 and result.n_treatment == 25


def test_welch_lift_interval_from_the_delta_method():
    rng = np.random.default_rng(4)
    a, b = rng.normal(10, 2, 400), rng.normal(10.5, 2, 400)
    result = welch_ttest(a, b)
    assert result.lift_ci_low < result.lift < result.lift_ci_high
    # on this scale the log-ratio interval is close to difference interval / control mean
    assert result.lift_ci_low == pytest.approx(result.ci_low / a.mean(), abs=0.003)
    assert result.lift_ci_high == pytest.approx(result.ci_high / a.mean(), abs=0.003)


# ---------------------------------------------------------------- ratio metrics

def test_bootstrap_and_delta_method_agree_and_are_deterministic():
    rng = np.random.default_rng(5)
    clicks_a, shown_a = _users(rng, 800, 0.10)
    clicks_b, shown_b = _users(rng, 800, 0.12)
    boot = bootstrap_ratio(clicks_a, shown_a, clicks_b, shown_b, n_boot=2000, seed=1)
    delta = delta_ratio_test(clicks_a, shown_a, clicks_b, shown_b)
    assert boot.to_dict() == bootstrap_ratio(clicks_a, shown_a, clicks_b, shown_b,
                                             n_boot=2000, seed=1).to_dict()
    assert boot.control == pytest.approx(clicks_a.sum() / shown_a.sum(), rel=1e-12)
    assert delta.control == pytest.approx(boot.control, rel=1e-12)
    assert boot.std_error == pytest.approx(delta.std_error, rel=0.08)
    assert boot.ci_low == pytest.approx(delta.ci_low, abs=0.15 * delta.std_error)
    assert boot.ci_high == pytest.approx(delta.ci_high, abs=0.15 * delta.std_error)
    assert boot.lift_ci_low < boot.lift < boot.lift_ci_high
    assert boot.significant and delta.significant


def test_delta_method_is_wider_than_a_test_of_impressions_when_clicks_cluster():
    rng = np.random.default_rng(6)
    clicks_a, shown_a = _users(rng, 1000, 0.1)
    clicks_b, shown_b = _users(rng, 1000, 0.1)
    delta = delta_ratio_test(clicks_a, shown_a, clicks_b, shown_b)
    naive = two_proportion_ztest(clicks_a.sum(), shown_a.sum(), clicks_b.sum(), shown_b.sum())
    assert delta.std_error > 1.1 * naive.std_error


# ---------------------------------------------------------------- planning

def test_sample_size_proportions_matches_statsmodels():
    plan = sample_size_proportions(0.10, 0.01, relative=False)
    assert plan.n_control_exact == pytest.approx(SM_SAMPLESIZE, rel=1e-9)
    assert (plan.n_control, plan.n_treatment, plan.total) == (14751, 14751, 29502)
    relative = sample_size_proportions(0.10, 0.10, relative=True)
    assert relative.n_control_exact == pytest.approx(SM_SAMPLESIZE, rel=1e-9)
    assert relative.mde_absolute == pytest.approx(0.01)
    # statsmodels' nobs1 is the treatment, its ratio = control / treatment
    uneven = sample_size_proportions(0.10, 0.01, relative=False, alpha=0.01, power=0.9, ratio=2)
    assert 2 * uneven.n_control_exact == pytest.approx(SM_SAMPLESIZE_RATIO, rel=1e-9)
    one_sided = sample_size_proportions(0.05, 0.005, relative=False, alternative="larger")
    assert one_sided.n_control_exact == pytest.approx(SM_SAMPLESIZE_LARGER, rel=1e-9)
    # Cohen's h convention: a different formula, nearly the same answer
    assert plan.n_control_exact == pytest.approx(SM_COHEN_H_N, rel=1e-3)


@pytest.mark.parametrize("n_treatment,sm_ratio", [(14000, 1), (3000, 1), (20000, 0.5)])
def test_power_proportions_matches_statsmodels(n_treatment, sm_ratio):
    power = power_proportions(0.10, 0.01, n_treatment * sm_ratio, relative=False,
                              ratio=1 / sm_ratio)
    assert power == pytest.approx(SM_POWER[(n_treatment, sm_ratio)], rel=1e-9)


def test_minimum_detectable_effect_inverts_the_sample_size():
    # the sample size ignores the far tail, the mde does not: they agree to ~1e-6
    assert minimum_detectable_effect(0.10, SM_SAMPLESIZE, relative=False) == \
        pytest.approx(0.01, rel=1e-5)
    assert minimum_detectable_effect(0.10, SM_SAMPLESIZE, relative=True) == \
        pytest.approx(0.10, rel=1e-5)
    decrease = minimum_detectable_effect(0.10, 14750, relative=False, alternative="smaller")
    assert decrease < 0
    assert power_proportions(0.10, decrease, 14750, relative=False,
                             alternative="smaller") == pytest.approx(0.8, abs=1e-9)


@pytest.mark.parametrize("effect,power,ratio,alternative", list(SM_TT_N))
def test_sample_size_means_matches_statsmodels(effect, power, ratio, alternative):
    plan = sample_size_means(2.0, 2.0 * effect, power=power, ratio=ratio,
                             alternative=alternative, baseline=20.0)
    assert plan.n_control_exact == pytest.approx(SM_TT_N[(effect, power, ratio, alternative)],
                                                 rel=1e-8)
    assert plan.mde_relative == pytest.approx(plan.mde_absolute / 20.0)


@pytest.mark.parametrize("effect,n,ratio", list(SM_TT_POWER))
def test_power_means_matches_statsmodels(effect, n, ratio):
    assert power_means(1.0, effect, n, ratio=ratio) == \
        pytest.approx(SM_TT_POWER[(effect, n, ratio)], rel=1e-7)


# ---------------------------------------------------------------- simulated A/A and A/B runs

@pytest.mark.parametrize("method,n_runs,n_per_arm", [
    ("two_proportion_ztest", 4000, 2000),
    ("welch_ttest", 4000, 200),
    ("delta_ratio_test", 2000, 300),
    ("bootstrap_ratio", 300, 200),
])
def test_simulated_aa_false_positive_rate_is_alpha(method, n_runs, n_per_arm):
    result = simulated_power(method, n_runs, n_per_arm, 0.0, seed=11, n_boot=300)
    assert result.rate == pytest.approx(0.05, abs=_aa_tolerance(0.05, n_runs))
    assert result.ci_low < result.rate < result.ci_high
    assert result.effect == 0 and result.n_runs == n_runs


def test_aa_runs_are_deterministic_for_a_seed():
    first = simulated_power("welch_ttest", 500, 50, 0.0, seed=2)
    assert first == simulated_power("welch_ttest", 500, 50, 0.0, seed=2)
    values = np.random.default_rng(0).gamma(0.3, 1000.0, 400)
    assert aa_false_positive_rate(values, 50, seed=3) == aa_false_positive_rate(values, 50, seed=3)


def test_aa_on_skewed_outcomes_rejects_about_alpha_of_the_time():
    values = np.random.default_rng(0).gamma(0.3, 1000.0, 3000)     # heavy-tailed, many near 0
    aa = aa_false_positive_rate(values, 2000, alpha=0.05, seed=0)
    assert aa.ci_low <= 0.05 <= aa.ci_high + 0.01 and aa.n_per_arm == 1500
    assert abs(aa.rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000)


def test_simulated_power_at_the_planned_sample_size_is_the_planned_power():
    plan = sample_size_proportions(0.10, 0.01, relative=False)
    proportions = simulated_power("two_proportion_ztest", 4000, plan.n_control, 0.01, seed=12)
    assert proportions.rate == pytest.approx(0.8, abs=0.04)
    plan = sample_size_means(1.0, 0.1)
    means = simulated_power("welch_ttest", 2000, plan.n_control, 0.1, sd=1.0, seed=13)
    assert means.rate == pytest.approx(0.8, abs=0.04)
    json.dumps(means.to_dict(), allow_nan=False)


# ---------------------------------------------------------------- SRM and the decision

def test_srm_matches_scipy_chisquare():
    check = srm_check({"control": 3300, "treatment": 3350, "holdout": 300},
                      {"control": 0.475, "treatment": 0.475, "holdout": 0.05})
    reference = stats.chisquare([3300, 3350, 300], np.array([0.475, 0.475, 0.05]) * 6950)
    assert (check.statistic, check.p_value) == pytest.approx(tuple(reference), rel=1e-10)
    assert check.df == 2 and check.arms == ("control", "treatment", "holdout")


def test_srm_blocks_an_off_split_and_passes_a_fair_one():
    off = srm_check({"control": 5200, "treatment": 4800}, {"control": 0.5, "treatment": 0.5})
    assert off.blocked and off.p_value < 0.001 and off.expected == (5000.0, 5000.0)
    assert "sample ratio mismatch" in off.message
    fair = srm_check([5030, 4970])
    assert not fair.blocked and fair.p_value == pytest.approx(stats.chisquare([5030, 4970])[1])
    json.dumps(off.to_dict(), allow_nan=False)

    better = two_proportion_ztest(4800, 50_000, 5400, 50_000)
    assert better.significant
    assert decide(better, [], off).outcome == BLOCKED_SRM
    assert decide(better, [], fair).outcome == SHIP


def test_decide_reads_primary_and_guardrails():
    better = two_proportion_ztest(4800, 50_000, 5400, 50_000, metric="click")
    worse = two_proportion_ztest(5400, 50_000, 4800, 50_000, metric="click")
    flat = two_proportion_ztest(5000, 50_000, 5010, 50_000, metric="click")
    fair = srm_check([50_000, 50_000])
    rng = np.random.default_rng(7)
    slower = welch_ttest(rng.normal(200, 30, 2000), rng.normal(210, 30, 2000),
                         metric="latency_ms", higher_is_better=False)
    faster = welch_ttest(rng.normal(200, 30, 2000), rng.normal(190, 30, 2000),
                         metric="latency_ms", higher_is_better=False)
    assert decide(better, [faster], fair).outcome == SHIP
    assert decide(worse, [faster], fair).outcome == KEEP
    assert decide(flat, [faster], fair).outcome == NO_DECISION
    harmed = decide(better, [faster, slower], fair)
    assert harmed.outcome == KEEP and harmed.harmed_guardrails == ("latency_ms",)
    assert "latency_ms" in harmed.reason
    unchecked = decide(better, [], None)
    assert unchecked.outcome == SHIP and "not checked" in unchecked.reason
    json.dumps(harmed.to_dict(), allow_nan=False)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("call,names", [
    (lambda: two_proportion_ztest(10, 0, 5, 100), "n_a"),
    (lambda: two_proportion_ztest(10, 100, 120, 100), "successes_b"),
    (lambda: two_proportion_ztest(-1, 100, 5, 100), "successes_a"),
    (lambda: two_proportion_ztest(1, 100, 5, 100, alpha=1.5), "alpha"),
    (lambda: two_proportion_ztest(1, 100, 5, 100, alternative="greater"), "alternative"),
    (lambda: welch_ttest([1.0], [1.0, 2.0]), "a must"),
    (lambda: welch_ttest([1.0, 2.0], [1.0, np.nan]), "b must"),
    (lambda: welch_ttest([1.0, 1.0], [2.0, 2.0]), "sd_a and sd_b"),
    (lambda: bootstrap_ratio([1, 2], [3, 4], [1, 2], [3, 4, 5], n_boot=200), "num_b and den_b"),
    (lambda: delta_ratio_test([1, 2], [0, 0], [1, 2], [3, 4]), "den_a"),
    (lambda: bootstrap_ratio([1, 2], [3, 4], [1, 2], [3, 4], n_boot=10), "n_boot"),
    (lambda: sample_size_proportions(1.2, 0.01, relative=False), "baseline"),
    (lambda: sample_size_proportions(0.5, 0.6, relative=False), "mde"),
    (lambda: sample_size_proportions(0.5, 0.01, relative=False, power=0.01), "power"),
    (lambda: sample_size_proportions(0.5, 0.01, relative=False, ratio=0), "ratio"),
    (lambda: sample_size_proportions(0.5, -0.01, relative=False, alternative="larger"),
     "alternative"),
    (lambda: sample_size_means(0.0, 0.1), "sd"),
    (lambda: sample_size_means(1.0, 0.0), "mde"),
    (lambda: minimum_detectable_effect(0.1, 1, relative=False), "n_per_arm"),
    (lambda: srm_check([100]), "observed_counts"),
    (lambda: srm_check([100, -5]), "observed_counts"),
    (lambda: srm_check([100, 100], [0.7, 0.7]), "expected_shares"),
    (lambda: srm_check({"control": 1, "treatment": 2}, {"control": 0.5, "b": 0.5}),
     "expected_shares"),
    (lambda: simulated_power("t_test", 10, 10, 0.0), "method"),
    (lambda: aa_false_positive_rate(np.ones(10), 0), "n_runs"),
    (lambda: aa_false_positive_rate(np.ones(3), 10), "values"),
])
def test_bad_input_is_refused_by_name(call, names):
    with pytest.raises(ValueError, match=names):
        call()
