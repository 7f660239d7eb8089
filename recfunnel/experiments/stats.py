"""Statistics of an online experiment (L7): the numbers that turn an A/B test's logs into a
decision, on numpy/scipy only.

Planning before a test (sample size, power, minimum detectable effect), the tests themselves
(two-proportion z-test, Welch's t-test, a delta-method z-test and a user-level bootstrap for ratio
metrics such as clicks per impression), the sample-ratio-mismatch check that blocks a decision
when the split is off, `decide` that reads them together, and simulated A/A and A/B runs that
show the false-positive rate and the power of each test. Everywhere, `a` is the control arm and
`b` the treatment; a difference is treatment minus control and a lift is that difference over
the control's value.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import optimize, stats

ALTERNATIVES = ("two-sided", "larger", "smaller")   # larger: treatment above control
SRM_THRESHOLD = 0.001       # an SRM check's p-value below this blocks the decision
SIMULATION_CELLS = 2_000_000    # values drawn at once in a simulation chunk: caps its memory
BOOTSTRAP_CELLS = 2_000_000     # resampled users held at once in a bootstrap chunk
# Simulated ratio-metric users: impressions are 1 + Poisson, and each user's CTR is drawn from a
# Beta with this concentration, so that clicks cluster within users as they do in real logs.
SIM_IMPRESSIONS_PER_USER = 10.0
SIM_CTR_CONCENTRATION = 20.0

SHIP = "ship treatment"
KEEP = "keep control"
NO_DECISION = "no decision: not significant"
BLOCKED_SRM = "blocked: sample ratio mismatch"


def _json_row(result, **derived) -> dict:
    """A result's fields and `derived` values as a dict; NaN and infinite bounds become None,
    so the dict passes strict JSON."""
    row = {key: None if isinstance(value, float) and not math.isfinite(value) else value
           for key, value in asdict(result).items()}
    return {**row, **derived}


@dataclass(frozen=True)
class TestResult:
    """One metric compared between control (a) and treatment (b).

    `difference` = treatment - control with its confidence interval [ci_low, ci_high];
    `lift` = difference / control with its interval (NaN where the control's value is not
    positive). One-sided alternatives give one-sided intervals (the other bound infinite).
    `higher_is_better` tells `decide` which direction of a guardrail is harm.
    """
    __test__ = False   # not a pytest test class, despite the name

    metric: str
    method: str
    control: float
    treatment: float
    difference: float
    ci_low: float
    ci_high: float
    lift: float
    lift_ci_low: float
    lift_ci_high: float
    std_error: float
    statistic: float
    p_value: float
    alpha: float
    n_control: int
    n_treatment: int
    alternative: str = "two-sided"
    df: float = math.nan
    higher_is_better: bool = True

    @property
    def significant(self) -> bool:
        return bool(self.p_value < self.alpha)

    @property
    def worse(self) -> bool:
        """Significantly worse for the treatment, in the metric's own good direction."""
        return self.significant and (self.difference < 0) == self.higher_is_better

    def to_dict(self) -> dict:
        return _json_row(self, significant=self.significant)


@dataclass(frozen=True)
class SRMCheck:
    """Chi-square goodness of fit of the arms' unit counts to the shares they were assigned."""
    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    expected_shares: tuple[float, ...]
    statistic: float
    df: int
    p_value: float
    threshold: float
    blocked: bool
    message: str

    def to_dict(self) -> dict:
        return _json_row(self)


@dataclass(frozen=True)
class Decision:
    """What an experiment's statistics say to do, and why."""
    outcome: str                 # SHIP, KEEP, NO_DECISION or BLOCKED_SRM
    reason: str
    primary: TestResult
    guardrails: tuple[TestResult, ...] = ()
    harmed_guardrails: tuple[str, ...] = ()
    srm: SRMCheck | None = None

    def to_dict(self) -> dict:
        return {"outcome": self.outcome, "reason": self.reason,
                "primary": self.primary.to_dict(),
                "guardrails": [g.to_dict() for g in self.guardrails],
                "harmed_guardrails": list(self.harmed_guardrails),
                "srm": self.srm.to_dict() if self.srm is not None else None}


@dataclass(frozen=True)
class SampleSize:
    """Units needed per arm to detect `mde_absolute` with `power` at `alpha`.

    `n_control_exact` is the unrounded solution; `n_control` and `n_treatment` are rounded up
    (the treatment gets `ratio` times the control's units).
    """
    metric: str
    baseline: float
    mde_absolute: float
    mde_relative: float
    alpha: float
    power: float
    ratio: float
    alternative: str
    n_control_exact: float
    n_control: int
    n_treatment: int

    @property
    def total(self) -> int:
        return self.n_control + self.n_treatment

    def to_dict(self) -> dict:
        return _json_row(self, total=self.total)


@dataclass(frozen=True)
class SimulationResult:
    """Share of simulated experiments whose test rejected at `alpha`, with its 95 %
    Clopper-Pearson interval: the false-positive rate when `effect` is 0 (A/A runs), the power
    otherwise."""
    method: str
    n_runs: int
    n_per_arm: int
    effect: float
    alpha: float
    rejections: int
    rate: float
    ci_low: float
    ci_high: float
    seed: int

    def to_dict(self) -> dict:
        return _json_row(self)


# ---------------------------------------------------------------- input checks (the boundary)

def _check_alpha(alpha: float, name: str = "alpha") -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"{name} must lie in (0, 1), e.g. 0.05; got {alpha}")
    return float(alpha)


def _check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES} ('larger': treatment above "
                         f"control); got {alternative!r}")
    return alternative


def _check_count(value, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}; got {value!r}")
    return int(value)


def _check_values(values, name: str, min_len: int = 2) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < min_len:
        raise ValueError(f"{name} must be a 1-D array of per-unit values with at least "
                         f"{min_len} units; got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} must be finite; {int((~np.isfinite(values)).sum())} values "
                         f"are NaN or infinite")
    return values


# ---------------------------------------------------------------- shared pieces of every test

def _p_value(statistic, alternative: str, sf: Callable = stats.norm.sf):
    """P-value of a statistic whose null distribution has survival function `sf`."""
    if alternative == "two-sided":
        return np.minimum(1.0, 2 * sf(np.abs(statistic)))
    return sf(statistic) if alternative == "larger" else sf(-statistic)


def _bounds(center: float, se: float, alpha: float, alternative: str,
            quantile: Callable = stats.norm.ppf) -> tuple[float, float]:
    """Confidence bounds center -/+ quantile * se, one-sided for a one-sided alternative."""
    if alternative == "two-sided":
        half = quantile(1 - alpha / 2) * se
        return float(center - half), float(center + half)
    half = quantile(1 - alpha) * se
    return (float(center - half), math.inf) if alternative == "larger" else \
        (-math.inf, float(center + half))


def _lift_bounds(control: float, treatment: float, var_control: float, var_treatment: float,
                 alpha: float, alternative: str) -> tuple[float, float]:
    """Interval of treatment / control - 1 from the delta method on the log of the ratio
    (Katz's interval for two proportions); `var_*` are the variances of the arm estimates.
    Defined only when both estimates are positive."""
    if control <= 0 or treatment <= 0:
        return math.nan, math.nan
    se_log = math.sqrt(var_control / control ** 2 + var_treatment / treatment ** 2)
    low, high = _bounds(math.log(treatment / control), se_log, alpha, alternative)
    return math.expm1(low), math.expm1(high)


def _lift(control: float, difference: float) -> float:
    return difference / control if control != 0 else math.nan


def _normal_test(metric: str, method: str, control: float, treatment: float,
                 var_control: float, var_treatment: float, n_control: int, n_treatment: int,
                 alpha: float, alternative: str, higher_is_better: bool,
                 se_null: float | None = None) -> TestResult:
    """A z-test of treatment - control with a Wald interval; `se_null` (e.g. pooled) replaces
    the unpooled standard error in the statistic only."""
    difference = treatment - control
    se = math.sqrt(var_control + var_treatment)
    se_test = se if se_null is None else se_null
    if se_test > 0:
        statistic = difference / se_test
    elif difference == 0:
        statistic = 0.0     # e.g. no conversion in either arm: nothing differs
    else:
        raise ValueError(f"{metric}: both arms have zero variance (every unit has the same "
                         f"value) but differ, so a test is meaningless; supply data with spread")
    low, high = _bounds(difference, se, alpha, alternative)
    lift_low, lift_high = _lift_bounds(control, treatment, var_control, var_treatment, alpha,
                                       alternative)
    return TestResult(metric, method, float(control), float(treatment), float(difference), low,
                      high, _lift(control, difference), lift_low, lift_high, float(se),
                      float(statistic), float(_p_value(statistic, alternative)), alpha,
                      n_control, n_treatment, alternative, math.nan, higher_is_better)


# ---------------------------------------------------------------- two proportions

def _ztest_statistic(successes_a, n_a, successes_b, n_b):
    """Pooled two-proportion z statistic, vectorized over runs; 0 where both arms are all
    failures or all successes (no spread, no difference)."""
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    difference = successes_b / n_b - successes_a / n_a
    return np.divide(difference, se, out=np.zeros_like(se, dtype=float), where=se > 0)


def two_proportion_ztest(successes_a: int, n_a: int, successes_b: int, n_b: int,
                         alpha: float = 0.05, alternative: str = "two-sided", *,
                         metric: str = "conversion", higher_is_better: bool = True) -> TestResult:
    """Two-proportion z-test: conversions `successes_a` of `n_a` units in control against
    `successes_b` of `n_b` in treatment.

    The p-value uses the pooled proportion (the null's variance, as statsmodels'
    `proportions_ztest`); the interval of the difference is the unpooled Wald interval (as
    `confint_proportions_2indep(method='wald')`), so at the margin the two can disagree: the
    p-value decides. The lift's interval is Katz's log-ratio interval.
    """
    alpha, alternative = _check_alpha(alpha), _check_alternative(alternative)
    n_a, n_b = _check_count(n_a, "n_a", 1), _check_count(n_b, "n_b", 1)
    for name, successes, n in (("successes_a", successes_a, n_a), ("successes_b", successes_b,
                                                                    n_b)):
        if _check_count(successes, name) > n:
            raise ValueError(f"{name} must lie in [0, {n}] (the arm's units); got {successes}")
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    return _normal_test(metric, "two-proportion z-test (pooled p-value, Wald interval)", p_a,
                        p_b, p_a * (1 - p_a) / n_a, p_b * (1 - p_b) / n_b, n_a, n_b, alpha,
                        alternative, higher_is_better,
                        se_null=math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b)))


# ---------------------------------------------------------------- means (Welch)

def _welch_statistic(mean_a, var_a, n_a, mean_b, var_b, n_b):
    """Welch's t, its standard error and Welch-Satterthwaite df, vectorized over runs."""
    va, vb = var_a / n_a, var_b / n_b
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return (mean_b - mean_a) / se, se, df


def welch_ttest_from_stats(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float,
                           n_b: int, alpha: float = 0.05, alternative: str = "two-sided", *,
                           metric: str = "mean", higher_is_better: bool = True) -> TestResult:
    """Welch's t-test from each arm's mean, sample standard deviation (ddof=1) and units, as
    scipy's `ttest_ind_from_stats(equal_var=False)`; t interval of the mean difference with
    Welch-Satterthwaite df, delta-method interval of the lift."""
    alpha, alternative = _check_alpha(alpha), _check_alternative(alternative)
    n_a, n_b = _check_count(n_a, "n_a", 2), _check_count(n_b, "n_b", 2)
    for name, sd in (("sd_a", sd_a), ("sd_b", sd_b)):
        if not sd >= 0:
            raise ValueError(f"{name} must be a standard deviation >= 0; got {sd}")
    if sd_a == 0 and sd_b == 0:
        raise ValueError(f"{metric}: sd_a and sd_b are both 0 (every unit has the same value), "
                         f"so Welch's t is undefined; supply data with some spread")
    statistic, se, df = (float(x) for x in _welch_statistic(mean_a, sd_a ** 2, n_a, mean_b,
                                                             sd_b ** 2, n_b))
    difference = mean_b - mean_a
    low, high = _bounds(difference, se, alpha, alternative, lambda q: stats.t.ppf(q, df))
    lift_low, lift_high = _lift_bounds(mean_a, mean_b, sd_a ** 2 / n_a, sd_b ** 2 / n_b, alpha,
                                       alternative)
    p_value = float(_p_value(statistic, alternative, lambda x: stats.t.sf(x, df)))
    return TestResult(metric, "Welch's t-test", float(mean_a), float(mean_b), float(difference),
                      low, high, _lift(mean_a, difference), lift_low, lift_high, se, statistic,
                      p_value, alpha, n_a, n_b, alternative, df, higher_is_better)


def welch_ttest(a, b, alpha: float = 0.05, alternative: str = "two-sided", *,
                metric: str = "mean", higher_is_better: bool = True) -> TestResult:
    """Welch's t-test of per-unit values: `a` [n_control] and `b` [n_treatment], one value per
    unit of randomisation (e.g. each user's watch time)."""
    a, b = _check_values(a, "a"), _check_values(b, "b")
    return welch_ttest_from_stats(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1),
                                  len(b), alpha, alternative, metric=metric,
                                  higher_is_better=higher_is_better)


# ---------------------------------------------------------------- ratio metrics

def _ratio_arm(numerator, denominator, arm: str) -> tuple[np.ndarray, np.ndarray]:
    numerator = _check_values(numerator, f"num_{arm}")
    denominator = _check_values(denominator, f"den_{arm}")
    if numerator.shape != denominator.shape:
        raise ValueError(f"num_{arm} and den_{arm} must hold one value per unit each; got "
                         f"{len(numerator)} and {len(denominator)} units")
    if (denominator < 0).any() or denominator.sum() <= 0:
        raise ValueError(f"den_{arm} must be >= 0 per unit with a positive total (e.g. "
                         f"impressions per user); got total {denominator.sum()}")
    return numerator, denominator


def _delta_ratio(numerator, denominator):
    """Ratio sum(num) / sum(den) over units and its delta-method variance, along the last axis
    (vectorized over runs): var = (var(num) - 2 r cov + r^2 var(den)) / (n mean(den)^2)."""
    n = numerator.shape[-1]
    mean_num, mean_den = numerator.mean(-1), denominator.mean(-1)
    ratio = mean_num / mean_den
    centred_num = numerator - mean_num[..., None]
    centred_den = denominator - mean_den[..., None]
    var_num = (centred_num ** 2).sum(-1) / (n - 1)
    var_den = (centred_den ** 2).sum(-1) / (n - 1)
    cov = (centred_num * centred_den).sum(-1) / (n - 1)
    return ratio, (var_num - 2 * ratio * cov + ratio ** 2 * var_den) / (n * mean_den ** 2)


def delta_ratio_test(num_a, den_a, num_b, den_b, alpha: float = 0.05,
                     alternative: str = "two-sided", *, metric: str = "ratio",
                     higher_is_better: bool = True) -> TestResult:
    """Z-test of a ratio metric (sum of numerators over sum of denominators, e.g. clicks per
    impression) whose unit of randomisation is the unit of the arrays (e.g. the user): arrays
    [n_units] per arm, the variance from the delta method, so clicks that cluster within users
    do not make the test over-confident."""
    alpha, alternative = _check_alpha(alpha), _check_alternative(alternative)
    num_a, den_a = _ratio_arm(num_a, den_a, "a")
    num_b, den_b = _ratio_arm(num_b, den_b, "b")
    ratio_a, var_a = (float(x) for x in _delta_ratio(num_a, den_a))
    ratio_b, var_b = (float(x) for x in _delta_ratio(num_b, den_b))
    return _normal_test(metric, "delta-method z-test", ratio_a, ratio_b, var_a, var_b,
                        len(num_a), len(num_b), alpha, alternative, higher_is_better)


def _bootstrap_ratios(numerator: np.ndarray, denominator: np.ndarray, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """[n_boot] ratios of units resampled with replacement, in chunks of bounded memory."""
    n = len(numerator)
    chunk = max(1, BOOTSTRAP_CELLS // n)
    ratios = []
    for start in range(0, n_boot, chunk):
        resampled = rng.integers(0, n, (min(chunk, n_boot - start), n), dtype=np.int32)
        # two 1-D gathers: about 5x faster than one gather of [n, 2] pairs
        ratios.append(numerator[resampled].sum(1) / denominator[resampled].sum(1))
    return np.concatenate(ratios)


def _bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value by inverting the percentile interval: twice the smaller share of
    bootstrap differences on either side of 0 (with the +1 that keeps it above 0)."""
    n = len(differences)
    below = (np.count_nonzero(differences <= 0) + 1) / (n + 1)
    above = (np.count_nonzero(differences >= 0) + 1) / (n + 1)
    return float(min(1.0, 2 * min(below, above)))


def bootstrap_ratio(num_a, den_a, num_b, den_b, n_boot: int = 2000, seed: int = 0,
                    alpha: float = 0.05, *, metric: str = "ratio",
                    higher_is_better: bool = True) -> TestResult:
    """Bootstrap of a ratio metric (e.g. clicks per impression) resampling whole units of
    randomisation (e.g. users: num_*/den_* [n_units] hold each user's clicks and impressions),
    each arm on its own. Percentile intervals of the difference and the lift; the two-sided
    p-value inverts the percentile interval (resolution 1 / n_boot). Deterministic for a seed."""
    alpha = _check_alpha(alpha)
    n_boot = _check_count(n_boot, "n_boot", 100)
    num_a, den_a = _ratio_arm(num_a, den_a, "a")
    num_b, den_b = _ratio_arm(num_b, den_b, "b")
    rng = np.random.default_rng(seed)
    boot_a = _bootstrap_ratios(num_a, den_a, n_boot, rng)
    boot_b = _bootstrap_ratios(num_b, den_b, n_boot, rng)
    ratio_a, ratio_b = num_a.sum() / den_a.sum(), num_b.sum() / den_b.sum()
    difference = ratio_b - ratio_a
    levels = [alpha / 2, 1 - alpha / 2]
    low, high = np.quantile(boot_b - boot_a, levels)
    lift_low, lift_high = (np.quantile(boot_b / boot_a - 1, levels) if ratio_a > 0
                           else (math.nan, math.nan))
    se = float(np.std(boot_b - boot_a, ddof=1))
    return TestResult(metric, f"bootstrap of units ({n_boot} resamples, seed {seed})",
                      float(ratio_a), float(ratio_b), float(difference), float(low), float(high),
                      _lift(ratio_a, difference), float(lift_low), float(lift_high), se,
                      float(difference / se) if se > 0 else math.nan,
                      _bootstrap_p_value(boot_b - boot_a), alpha, len(num_a), len(num_b),
                      "two-sided", math.nan, higher_is_better)


# ---------------------------------------------------------------- planning before a test

def _treatment_rate(baseline: float, mde: float, relative: bool) -> float:
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be the control's rate in (0, 1); got {baseline}")
    if mde == 0:
        raise ValueError("mde must be non-zero: the smallest change worth detecting")
    rate = baseline * (1 + mde) if relative else baseline + mde
    if not 0 < rate < 1:
        kind = "relative (a share of baseline)" if relative else "absolute"
        raise ValueError(f"baseline {baseline} with {kind} mde {mde} gives a treatment rate "
                         f"{rate}, outside (0, 1)")
    return rate


def _proportion_sds(baseline: float, rate: float, ratio: float) -> tuple[float, float]:
    """Standard deviations of the difference per sqrt(control units) under the null (pooled
    rate) and under the alternative, the treatment having `ratio` times the control's units."""
    pooled = (baseline + ratio * rate) / (1 + ratio)
    sd_null = math.sqrt(pooled * (1 - pooled) * (1 + 1 / ratio))
    sd_alt = math.sqrt(baseline * (1 - baseline) + rate * (1 - rate) / ratio)
    return sd_null, sd_alt


def _check_plan(alpha: float, power: float | None, ratio: float, alternative: str) -> None:
    _check_alpha(alpha)
    _check_alternative(alternative)
    if power is not None and not alpha < power < 1:
        raise ValueError(f"power must lie in (alpha, 1), e.g. 0.8; got {power} with alpha "
                         f"{alpha}")
    if not ratio > 0:
        raise ValueError(f"ratio must be treatment units per control unit, > 0 (1 for an even "
                         f"split); got {ratio}")


def _direction(mde: float, alternative: str) -> None:
    if (alternative == "larger" and mde < 0) or (alternative == "smaller" and mde > 0):
        raise ValueError(f"mde {mde} points against alternative {alternative!r}: a one-sided "
                         f"test only detects changes in its own direction")


def power_proportions(baseline: float, mde: float, n_per_arm: float, *, relative: bool,
                      alpha: float = 0.05, ratio: float = 1.0,
                      alternative: str = "two-sided") -> float:
    """Power of the pooled two-proportion z-test with `n_per_arm` control units (and ratio times
    as many treated) when the treatment's rate is baseline + mde (`relative=False`) or
    baseline * (1 + mde) (`relative=True`). Normal approximation with the pooled variance under
    the null and the unpooled one under the alternative, both tails for a two-sided test: the
    convention of statsmodels' `power_proportions_2indep`."""
    _check_plan(alpha, None, ratio, alternative)
    _direction(mde, alternative)
    rate = _treatment_rate(baseline, mde, relative)
    sd_null, sd_alt = _proportion_sds(baseline, rate, ratio)
    if not n_per_arm > 0:
        raise ValueError(f"n_per_arm must be the control arm's units, > 0; got {n_per_arm}")
    shift = (rate - baseline) * math.sqrt(n_per_arm) / sd_alt
    if alternative == "two-sided":
        crit = stats.norm.isf(alpha / 2) * sd_null / sd_alt
        return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))
    crit = stats.norm.isf(alpha) * sd_null / sd_alt
    return float(stats.norm.sf(crit - abs(shift)))


def sample_size_proportions(baseline: float, mde: float, *, relative: bool, alpha: float = 0.05,
                            power: float = 0.8, ratio: float = 1.0,
                            alternative: str = "two-sided") -> SampleSize:
    """Units per arm for the two-proportion z-test to detect a change of `mde` in a rate of
    `baseline`: absolute (0.01 = one percentage point) with `relative=False`, a share of the
    baseline (0.05 = +5 %) with `relative=True`. Closed form with the pooled variance under the
    null and the unpooled one under the alternative, ignoring the far tail of a two-sided test,
    as statsmodels' `samplesize_proportions_2indep_onetail`."""
    _check_plan(alpha, power, ratio, alternative)
    _direction(mde, alternative)
    rate = _treatment_rate(baseline, mde, relative)
    sd_null, sd_alt = _proportion_sds(baseline, rate, ratio)
    crit = stats.norm.isf(alpha / 2 if alternative == "two-sided" else alpha)
    exact = ((crit * sd_null + stats.norm.isf(1 - power) * sd_alt) / (rate - baseline)) ** 2
    return _sample_size("proportion", baseline, rate - baseline, alpha, power, ratio,
                        alternative, exact)


def _sample_size(metric: str, baseline: float, mde_absolute: float, alpha: float, power: float,
                 ratio: float, alternative: str, exact: float) -> SampleSize:
    relative = mde_absolute / baseline if baseline else math.nan
    return SampleSize(metric, baseline, mde_absolute, relative, alpha, power, ratio, alternative,
                      float(exact), math.ceil(exact), math.ceil(ratio * exact))


def minimum_detectable_effect(baseline: float, n_per_arm: float, *, relative: bool,
                              alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0,
                              alternative: str = "two-sided") -> float:
    """Smallest increase of a rate of `baseline` that the two-proportion z-test detects with
    `power` at `n_per_arm` control units: absolute, or a share of baseline with
    `relative=True`. Solves `power_proportions`: an increase, a decrease (negative) for
    alternative 'smaller'."""
    _check_plan(alpha, power, ratio, alternative)
    if not 0 < baseline < 1:
        raise ValueError(f"baseline must be the control's rate in (0, 1); got {baseline}")
    # the furthest rate a treatment can reach in the tested direction (a rate of 1, or 0)
    furthest = -baseline if alternative == "smaller" else 1 - baseline
    furthest *= 1 - 1e-9

    def power_at(d: float) -> float:
        return power_proportions(baseline, d, n_per_arm, relative=False, alpha=alpha,
                                 ratio=ratio, alternative=alternative)

    if power_at(furthest) < power:
        raise ValueError(f"n_per_arm {n_per_arm} is too small: even a treatment rate of "
                         f"{baseline + furthest:.0f} is detected with less than power {power}")
    mde = optimize.brentq(lambda d: power_at(d) - power, furthest * 1e-12, furthest, xtol=1e-14)
    return mde / baseline if relative else mde


def power_means(sd: float, mde: float, n_per_arm: float, *, alpha: float = 0.05,
                ratio: float = 1.0, alternative: str = "two-sided") -> float:
    """Power of the two-sample t-test to detect a mean difference `mde` (in the metric's units)
    of a metric with standard deviation `sd`, `n_per_arm` control units and ratio times as many
    treated: noncentral t with df = n_control + n_treatment - 2 and both tails, as statsmodels'
    `tt_ind_solve_power` (for Welch's test the same up to its slightly smaller df)."""
    _check_plan(alpha, None, ratio, alternative)
    _direction(mde, alternative)
    if not sd > 0:
        raise ValueError(f"sd must be the metric's standard deviation per unit, > 0; got {sd}")
    if not n_per_arm > 1:
        raise ValueError(f"n_per_arm must be the control arm's units, > 1; got {n_per_arm}")
    n_treatment = ratio * n_per_arm
    df = n_per_arm + n_treatment - 2
    noncentrality = mde / sd * math.sqrt(1 / (1 / n_per_arm + 1 / n_treatment))
    if alternative == "two-sided":
        crit = stats.t.isf(alpha / 2, df)
        return float(stats.nct.sf(crit, df, noncentrality)
                     + stats.nct.cdf(-crit, df, noncentrality))
    return float(stats.nct.sf(stats.t.isf(alpha, df), df, abs(noncentrality)))


def sample_size_means(sd: float, mde: float, *, alpha: float = 0.05, power: float = 0.8,
                      ratio: float = 1.0, alternative: str = "two-sided",
                      baseline: float = math.nan) -> SampleSize:
    """Units per arm for the two-sample t-test to detect a mean difference `mde` (absolute, in
    the metric's units) of a metric with standard deviation `sd`; `baseline`, the control's
    mean, only fills in the relative mde of the plan. Solves `power_means` for n."""
    _check_plan(alpha, power, ratio, alternative)
    if mde == 0:
        raise ValueError("mde must be non-zero: the smallest mean difference worth detecting")
    if power_means(sd, mde, 2, alpha=alpha, ratio=ratio, alternative=alternative) >= power:
        exact = 2.0
    else:
        high = 4.0
        while power_means(sd, mde, high, alpha=alpha, ratio=ratio,
                          alternative=alternative) < power:
            high *= 2
        exact = optimize.brentq(lambda n: power_means(sd, mde, n, alpha=alpha, ratio=ratio,
                                                      alternative=alternative) - power,
                                2, high, xtol=1e-10, rtol=1e-12)
    return _sample_size("mean", baseline, mde, alpha, power, ratio, alternative, exact)


# ---------------------------------------------------------------- sample ratio mismatch

def srm_check(observed_counts: Mapping[str, int] | Sequence[int],
              expected_shares: Mapping[str, float] | Sequence[float] | None = None,
              threshold: float = SRM_THRESHOLD) -> SRMCheck:
    """Sample-ratio-mismatch check: a chi-square goodness-of-fit test of the units counted in
    each arm against the shares they were assigned (equal shares when None). A p-value below
    `threshold` means assignment or logging lost units unevenly, and every metric of the
    experiment is suspect: the decision is blocked.

    `observed_counts` is {arm: units} (then `expected_shares` is {arm: share} over the same
    arms) or a sequence of counts (then a sequence of shares in the same order)."""
    _check_alpha(threshold, "threshold")
    if isinstance(observed_counts, Mapping):
        arms = tuple(str(arm) for arm in observed_counts)
        counts = list(observed_counts.values())
        if isinstance(expected_shares, Mapping):
            if set(map(str, expected_shares)) != set(arms):
                raise ValueError(f"expected_shares must name the same arms as observed_counts "
                                 f"{arms}; got {tuple(expected_shares)}")
            expected_shares = [dict((str(k), v) for k, v in expected_shares.items())[arm]
                               for arm in arms]
    elif isinstance(expected_shares, Mapping):
        raise ValueError("expected_shares is a mapping of arms: pass observed_counts as "
                         "{arm: units} too, or both as sequences in the same order")
    else:
        counts = list(observed_counts)
        arms = tuple(f"arm {i}" for i in range(len(counts)))
    if len(counts) < 2:
        raise ValueError(f"observed_counts must hold at least two arms; got {len(counts)}")
    observed = np.array([_check_count(c, f"observed_counts[{arm}]") for arm, c in
                         zip(arms, counts)], dtype=float)
    if observed.sum() == 0:
        raise ValueError("observed_counts are all 0: count the units in each arm first")
    shares = (np.full(len(observed), 1 / len(observed)) if expected_shares is None
              else np.asarray(expected_shares, dtype=float))
    if shares.shape != observed.shape or not (shares > 0).all() \
            or not math.isclose(shares.sum(), 1, abs_tol=1e-6):
        raise ValueError(f"expected_shares must be one positive share per arm summing to 1 "
                         f"(e.g. 0.5, 0.5); got {shares.tolist()} for {len(observed)} arms")
    expected = shares * observed.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    p_value = float(stats.chi2.sf(statistic, df))
    blocked = p_value < threshold
    counts_text = ", ".join(f"{arm} {int(o)} (expected {e:.0f})"
                            for arm, o, e in zip(arms, observed, expected))
    if blocked:
        message = (f"sample ratio mismatch: {counts_text}; chi-square {statistic:.2f}, "
                   f"p = {p_value:.2g} < {threshold}: the split is off, so no metric can be "
                   f"trusted; find where units were lost (assignment, logging) before deciding")
    else:
        message = f"split as assigned: {counts_text}; p = {p_value:.2g} >= {threshold}"
    return SRMCheck(arms, tuple(int(o) for o in observed), tuple(float(e) for e in expected),
                    tuple(float(s) for s in shares), statistic, df, p_value, float(threshold),
                    blocked, message)


# ---------------------------------------------------------------- the decision

def decide(primary: TestResult, guardrails: Sequence[TestResult] = (),
           srm: SRMCheck | None = None) -> Decision:
    """The decision as data. A sample ratio mismatch blocks it; a guardrail significantly worse
    for the treatment keeps control; otherwise a primary metric significantly better ships the
    treatment, significantly worse keeps control, and not significant decides nothing."""
    guardrails = tuple(guardrails)
    harmed = tuple(g.metric for g in guardrails if g.worse)

    def decision(outcome: str, reason: str) -> Decision:
        return Decision(outcome, reason, primary, guardrails, harmed, srm)

    if srm is not None and srm.blocked:
        return decision(BLOCKED_SRM, srm.message)
    if harmed:
        return decision(KEEP, f"guardrail(s) significantly worse in treatment: "
                              f"{', '.join(harmed)}")
    summary = (f"{primary.metric}: {primary.control:.4g} -> {primary.treatment:.4g} "
               f"(lift {primary.lift:+.2%}, p = {primary.p_value:.3g}, alpha {primary.alpha})")
    if not primary.significant:
        return decision(NO_DECISION, summary)
    if primary.worse:
        return decision(KEEP, f"{summary}: significantly worse")
    checked = "" if srm is not None else " (the split was not checked for SRM)"
    return decision(SHIP, f"{summary}: significantly better, no guardrail harmed{checked}")


# ---------------------------------------------------------------- simulated A/A and A/B runs

def _simulated_p_values(method: str, rng: np.random.Generator, runs: int, n: int,
                        effect: float, alpha: float, baseline: float, sd: float,
                        impressions_per_user: float, n_boot: int) -> np.ndarray:
    """P-values of `runs` simulated experiments of `n` units per arm, the treatment shifted by
    `effect` (absolute: on the rate, the mean or the users' CTR)."""
    if method == "two_proportion_ztest":
        successes = rng.binomial(n, [[baseline], [baseline + effect]], (2, runs))
        return _p_value(_ztest_statistic(successes[0], n, successes[1], n), "two-sided")
    if method == "welch_ttest":
        values = rng.normal([[[baseline]], [[baseline + effect]]], sd, (2, runs, n))
        means, variances = values.mean(-1), values.var(-1, ddof=1)
        statistic, _, df = _welch_statistic(means[0], variances[0], n, means[1], variances[1],
                                            n)
        return _p_value(statistic, "two-sided", lambda x: stats.t.sf(x, df))
    impressions = 1 + rng.poisson(impressions_per_user - 1, (2, runs, n))
    ctr = np.array([[[baseline]], [[baseline + effect]]])
    user_ctr = rng.beta(ctr * SIM_CTR_CONCENTRATION, (1 - ctr) * SIM_CTR_CONCENTRATION,
                        (2, runs, n))
    clicks = rng.binomial(impressions, user_ctr)
    if method == "delta_ratio_test":
        (ratio_a, ratio_b), (var_a, var_b) = _delta_ratio(clicks, impressions)
        return _p_value((ratio_b - ratio_a) / np.sqrt(var_a + var_b), "two-sided")
    return np.array([bootstrap_ratio(clicks[0, run], impressions[0, run], clicks[1, run],
                                     impressions[1, run], n_boot, seed=int(rng.integers(2**32)),
                                     alpha=alpha).p_value for run in range(runs)])


SIMULATED_METHODS = ("two_proportion_ztest", "welch_ttest", "delta_ratio_test",
                     "bootstrap_ratio")


def simulated_power(method: str, n_runs: int, n_per_arm: int, effect: float, *,
                    alpha: float = 0.05, seed: int = 0, baseline: float = 0.1, sd: float = 1.0,
                    impressions_per_user: float = SIM_IMPRESSIONS_PER_USER,
                    n_boot: int = 500) -> SimulationResult:
    """Share of `n_runs` simulated experiments with `n_per_arm` units per arm in which `method`
    (one of SIMULATED_METHODS) rejects at `alpha`, the treatment's true value being the
    control's plus `effect` (absolute):
    - two_proportion_ztest: conversions at rate `baseline`;
    - welch_ttest: normal values of mean `baseline` and standard deviation `sd`;
    - delta_ratio_test, bootstrap_ratio: clicks per impression of users whose impressions are
      1 + Poisson(impressions_per_user - 1) and whose CTRs follow a Beta of mean `baseline`
      (the bootstrap with `n_boot` resamples per run: keep n_runs in the hundreds).
    Vectorized over runs (but the bootstrap) and deterministic for a seed."""
    if method not in SIMULATED_METHODS:
        raise ValueError(f"method must be one of {SIMULATED_METHODS}; got {method!r}")
    alpha = _check_alpha(alpha)
    n_runs, n_per_arm = _check_count(n_runs, "n_runs", 1), _check_count(n_per_arm,
                                                                          "n_per_arm", 2)
    if method != "welch_ttest" and not (0 < baseline < 1 and 0 < baseline + effect < 1):
        raise ValueError(f"baseline {baseline} and baseline + effect {baseline + effect} must "
                         f"both be rates in (0, 1) for {method}")
    if method in ("delta_ratio_test", "bootstrap_ratio") and not impressions_per_user >= 1:
        raise ValueError(f"impressions_per_user must be >= 1; got {impressions_per_user}")
    rng = np.random.default_rng(seed)
    chunk = max(1, SIMULATION_CELLS // (2 * n_per_arm))
    rejections = sum(int(np.count_nonzero(
        _simulated_p_values(method, rng, min(chunk, n_runs - start), n_per_arm, effect, alpha,
                            baseline, sd, impressions_per_user, n_boot) < alpha))
        for start in range(0, n_runs, chunk))
    return _simulation_result(method, n_runs, n_per_arm, effect, alpha, rejections, seed)


def aa_false_positive_rate(values, n_runs: int, alpha: float = 0.05, seed: int = 0
                           ) -> SimulationResult:
    """Share of `n_runs` A/A tests on real outcomes in which Welch's test rejects at `alpha`:
    `values` (one per unit, e.g. the control's users) split at random into two halves each
    time. A sound test rejects in about `alpha` of them, whatever the metric's (skewed,
    zero-heavy) distribution; `simulated_power` with effect 0 asks the same of drawn values."""
    values = _check_values(values, "values", min_len=4)
    alpha = _check_alpha(alpha)
    n_runs = _check_count(n_runs, "n_runs", 1)
    rng = np.random.default_rng(seed)
    n = values.size // 2
    order = np.argsort(rng.random((n_runs, values.size)), axis=1)[:, :2 * n]
    halves = values[order].reshape(n_runs, 2, n)
    p = stats.ttest_ind(halves[:, 0], halves[:, 1], axis=1, equal_var=False).pvalue
    return _simulation_result("welch_ttest", n_runs, n, 0.0, alpha, int((p < alpha).sum()),
                              seed)


def _simulation_result(method: str, n_runs: int, n_per_arm: int, effect: float, alpha: float,
                       rejections: int, seed: int) -> SimulationResult:
    low, high = stats.binomtest(rejections, n_runs).proportion_ci(0.95, method="exact")
    return SimulationResult(method, n_runs, n_per_arm, float(effect), alpha, rejections,
                            rejections / n_runs, float(low), float(high), seed)
