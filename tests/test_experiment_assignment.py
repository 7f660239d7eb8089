"""Assignment: deterministic across processes, split as configured, holdout kept across experiments."""
import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO
from recfunnel.config import load_config
from recfunnel.experiments.assignment import (HOLDOUT, Arm, Experiment, ExperimentError,
                                              unit_hash)

USERS = np.arange(1, 200_001)


def default_experiment(**changes) -> Experiment:
    cfg = load_config().experiments
    values = {"name": cfg.name, "arms": cfg.arms, "holdout_share": cfg.holdout_share, **changes}
    return Experiment(**values)


def test_same_assignment_in_another_process():
    experiment = default_experiment()
    code = ("import json, numpy as np; from recfunnel.experiments.assignment import Experiment;"
            f"e = Experiment(**json.loads({json.dumps(json.dumps(experiment.to_dict()))}));"
            "print(json.dumps(e.assign(np.arange(1, 2001)).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == experiment.assign(np.arange(1, 2001)).tolist()


def test_known_positions_do_not_change_between_releases():
    # Changing the hash would silently move every user to another arm mid-experiment.
    assert np.round(unit_hash("blend-vs-click", [1, 2, 3]), 6).tolist() == [0.847065, 0.911099,
                                                                             0.155824]


def test_split_matches_the_configured_shares():
    experiment = default_experiment()
    arms = experiment.assign(USERS)
    expected = experiment.expected_shares()
    names = list(expected)
    observed = [int((arms == n).sum()) for n in names]
    p = stats.chisquare(observed, [expected[n] * len(USERS) for n in names]).pvalue
    assert p > 0.001, (observed, expected)
    assert set(arms) == set(names)


def test_holdout_is_the_same_users_in_every_experiment_and_arms_reshuffle():
    a = default_experiment().assign(USERS)
    b = default_experiment(name="another-experiment").assign(USERS)
    assert ((a == HOLDOUT) == (b == HOLDOUT)).all()
    both = a != HOLDOUT
    agreement = (a[both] == b[both]).mean()
    assert 0.48 < agreement < 0.52        # independent 50/50 splits agree half the time


def test_assignment_does_not_depend_on_the_batch():
    experiment = default_experiment()
    whole = experiment.assign(USERS[:5000])
    one_by_one = np.concatenate([experiment.assign([u]) for u in USERS[:200]])
    assert (whole[:200] == one_by_one).all()


def test_arm_lookup_and_holdout_version():
    experiment = default_experiment(holdout_version=3)
    assert experiment.arm("control").blend == {"click": 1.0}
    assert experiment.arm(HOLDOUT).model_version == 3
    with pytest.raises(ExperimentError, match="no arm 'nope'"):
        experiment.arm("nope")


def test_round_trip_through_the_file(tmp_path):
    experiment = default_experiment(holdout_version=2, started="2026-11-29T00:00:00Z")
    loaded = Experiment.load(experiment.save(tmp_path / "experiment.json"))
    assert loaded == experiment
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ExperimentError, match="broken.json"):
        Experiment.load(tmp_path / "broken.json")


@pytest.mark.parametrize("arms, holdout, message", [
    ([], 0.0, "no arms"),
    ([Arm("a", 0.5), Arm("a", 0.5)], 0.0, "unique"),
    ([Arm(HOLDOUT, 1.0)], 0.0, "unique"),
    ([Arm("a", 0.5), Arm("b", 0.4)], 0.0, "sum to 0.900000"),
    ([Arm("a", 0.0), Arm("b", 1.0)], 0.0, r"must be > 0 \(arms \['a'\]\)"),
    ([Arm("a", 1.0)], 1.0, "holdout_share in"),
])
def test_bad_definitions_say_what_is_wrong(arms, holdout, message):
    with pytest.raises(ExperimentError, match=message):
        Experiment("x", arms, holdout)
