"""Ranker metrics against scikit-learn, ties included, and their refusals."""
import numpy as np
import pytest
from sklearn import metrics as sk

from recfunnel.evaluation.ranker import (logloss, pr_auc, pr_curve, ranker_metrics, roc_auc,
                                         roc_curve)


def _cases():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    yield "continuous", labels, rng.random(500) * 0.5 + 0.3 * labels
    yield "heavy ties", labels, np.round(rng.random(500) * 0.6 + 0.2 * labels, 1)
    yield "constant", labels, np.full(500, 0.4)
    yield "tiny", np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.4, 0.4, 0.9])


@pytest.mark.parametrize("name,labels,scores", list(_cases()))
def test_matches_scikit_learn(name, labels, scores):
    assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert pr_auc(labels, scores) == pytest.approx(sk.average_precision_score(labels, scores),
                                                   abs=1e-12)
    assert logloss(labels, scores) == pytest.approx(sk.log_loss(labels, scores), abs=1e-12)


@pytest.mark.parametrize("name,labels,scores", list(_cases()))
def test_curves_match_scikit_learn(name, labels, scores):
    fpr, tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
    roc = roc_curve(labels, scores, max_points=10_000)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    precision, recall, thresholds = sk.precision_recall_curve(labels, scores)
    pr = pr_curve(labels, scores, max_points=10_000)
    np.testing.assert_allclose(pr["precision"], precision[::-1])
    np.testing.assert_allclose(pr["recall"], recall[::-1])
    np.testing.assert_allclose(pr["threshold"].iloc[1:], thresholds[::-1])


def test_ties_count_half_and_constant_scores_are_chance():
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == pytest.approx(0.875)   # 3.5 of 4 pairs
    assert pr_auc([0, 1, 1, 0], [0.3, 0.3, 0.3, 0.3]) == 0.5                     # the base rate


def test_curves_are_thinned_for_plotting_and_keep_their_ends():
    rng = np.random.default_rng(1)
    labels, scores = rng.random(20_000) < 0.5, rng.random(20_000)
    roc, pr = roc_curve(labels, scores), pr_curve(labels, scores)
    assert len(roc) <= 200 and len(pr) <= 200
    assert tuple(roc.iloc[0][["fpr", "tpr"]]) == (0, 0)
    assert tuple(roc.iloc[-1][["fpr", "tpr"]]) == (1, 1)
    assert roc["fpr"].is_monotonic_increasing and pr["recall"].is_monotonic_increasing
    assert pr.iloc[-1]["recall"] == 1 and pr.iloc[-1]["precision"] == pytest.approx(labels.mean())


def test_single_class_raises_alone_and_is_nan_with_a_reason_in_the_summary():
    with pytest.raises(ValueError, match="only positives"):
        roc_auc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="only negatives"):
        pr_auc([0, 0], [0.2, 0.5])
    m = ranker_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert "only negatives" in m["undefined"]["roc_auc"]
    assert m["logloss"] == pytest.approx(sk.log_loss([0, 0, 0], [0.1, 0.2, 0.3], labels=[0, 1]))
    assert ranker_metrics([0, 1], [0.2, 0.7])["undefined"] == {}


def test_logloss_refuses_scores_that_are_not_probabilities():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*sigmoid"):
        logloss([0, 1], [-2.0, 3.0])
    with pytest.raises(ValueError, match="probabilities"):
        ranker_metrics([0, 1], [0.5, 1.5])
    assert logloss([0, 1], [0.0, 1.0]) == pytest.approx(sk.log_loss([0, 1], [0.0, 1.0]))


@pytest.mark.parametrize("labels,scores,message", [
    ([0, 2], [0.1, 0.2], "binary"),
    ([0, 1, 1], [0.1, 0.2], "equal length"),
    ([], [], "empty"),
    ([0, 1], [0.1, np.nan], "finite"),
])
def test_bad_inputs_say_what_to_supply(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)
