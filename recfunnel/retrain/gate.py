"""The quality gate between retraining and promotion: a new version replaces the served one only
when its offline metric is not worse than the served version's by more than a set share (L7.3).

The served version is the newest complete Triton version in the repository; its metric comes
from the repository's versions.json (the export records the run's evaluation) or, for versions
exported before that record existed, from its run's summary.json in the runs folder.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from recfunnel.serving.export import VERSIONS_FILE, versions_in

ROUNDING = 1e-9                       # float error allowed in the relative drop


@dataclass
class GateDecision:
    promote: bool
    metric: str                       # e.g. funnel.ndcg@10
    candidate: float | None           # the new version's value
    served: float | None              # the served version's value (None: nothing served)
    served_version: int | None        # its Triton version
    max_drop: float                   # the relative drop that still promotes
    reason: str


def metric_value(evaluation: dict, path: str) -> float:
    """`funnel.ndcg@10` of an evaluation's overall metrics ({"k": 10, "models": {"funnel":
    {"ndcg@10": ...}}}); a missing list or metric is an error naming what there is."""
    models = evaluation.get("models") or {}
    name, _, metric = path.partition(".")
    if name not in models:
        raise ValueError(f"gate metric {path!r}: no list {name!r} in the evaluation; lists: "
                       f"{', '.join(sorted(models)) or 'none (run the evaluation step)'}")
    if metric not in models[name]:
        raise ValueError(f"gate metric {path!r}: list {name!r} has no {metric!r}; its metrics: "
                       f"{', '.join(sorted(models[name]))}")
    return float(models[name][metric])


def served_evaluation(repo: Path, runs_dir: Path) -> tuple[int | None, dict | None]:
    """(Triton version, its evaluation) of the version the repository serves; (None, None)
    when it serves nothing yet, (version, None) when its metrics cannot be found."""
    versions = versions_in(repo) if repo.is_dir() else []
    if not versions:
        return None, None
    record_path = repo / VERSIONS_FILE
    record = json.loads(record_path.read_text()).get(str(versions[-1]), {}) \
        if record_path.is_file() else {}
    if record.get("evaluation"):
        return versions[-1], record["evaluation"]
    origin_run = record.get("origin", "").split("/")[0]       # <run>/models/<version>
    summary = runs_dir / origin_run / "summary.json"
    if origin_run and summary.is_file():
        return versions[-1], json.loads(summary.read_text()).get("evaluation")
    return versions[-1], None


@dataclass
class QualityGate:
    """Whether a candidate (a run's summary `evaluation` section) may replace what a repository
    serves. `metric` may hold {k}, the candidate's top-K cut: `funnel.ndcg@{k}`. `runs_dir`
    holds the served version's run, for a versions.json without its evaluation."""
    metric: str
    max_drop: float
    runs_dir: Path

    def __post_init__(self):
        if not 0 <= self.max_drop < 1:
            raise ValueError(f"gate max_drop is a share of the served value in [0, 1), got "
                             f"{self.max_drop}")

    def decide(self, candidate_evaluation: dict, repo: Path) -> GateDecision:
        path = self.metric.replace("{k}", str(candidate_evaluation.get("k")))
        candidate = metric_value(candidate_evaluation, path)
        version, served_eval = served_evaluation(repo, self.runs_dir)
        refused = partial(GateDecision, False, path, candidate, None, version, self.max_drop)
        if version is None:
            return GateDecision(True, path, candidate, None, None, self.max_drop,
                                "first deployment: nothing served yet")
        if served_eval is None:
            return refused(f"the served Triton version {version} has no recorded evaluation "
                           f"(versions.json, nor its run's summary in {self.runs_dir}); promote "
                           "by hand with recfunnel export if the new version is wanted")
        try:
            served = metric_value(served_eval, path)
        except ValueError as e:
            return refused(f"the served Triton version {version} cannot be compared: {e}")
        promote, reason = gate_decision(candidate, served, self.max_drop)
        return GateDecision(promote, path, candidate, served, version, self.max_drop, reason)


def gate_decision(candidate: float, served: float, max_drop: float) -> tuple[bool, str]:
    """(promote, why) for higher-is-better values: the candidate may fall below the served
    value by at most `max_drop` of it (0.05: 5 %)."""
    if math.isnan(candidate):
        return False, "the new version's metric is NaN"
    if math.isnan(served) or served <= 0:
        ok = math.isnan(served) or candidate >= served
        return ok, ("no served value to fall below" if ok else "worse than the served version")
    drop = (served - candidate) / served
    within = drop <= max_drop + ROUNDING           # a drop of exactly max_drop promotes
    return within, (f"{-drop:+.1%} against the served version, "
                    f"{'within' if within else 'beyond'} the allowed drop of {max_drop:.1%}")
