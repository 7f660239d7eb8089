"""Rankings against the synthetic truth: graded NDCG checked against scikit-learn."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from recfunnel.evaluation.truth import graded_ndcg, lists_vs_truth, rankings_vs_truth, top_k_rows


def test_graded_ndcg_matches_sklearn_per_group():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 30, 600)
    scores, gains = rng.random(600), rng.random(600)
    got = graded_ndcg(groups, scores, gains, k=5)
    for n, g in enumerate(np.unique(groups)):
        rows = groups == g
        want = ndcg_score([gains[rows]], [scores[rows]], k=5) if rows.sum() > 1 else 1.0
        assert got[n] == pytest.approx(want, abs=1e-12)


def test_graded_ndcg_edges():
    # perfect order, reversed order, all-zero gains (NaN), k beyond the list
    assert graded_ndcg([1, 1, 1], [3, 2, 1], [3, 2, 1], 10)[0] == pytest.approx(1.0)
    worst = graded_ndcg([1, 1], [0, 1], [1, 0], 1)[0]
    assert worst == 0.0
    assert np.isnan(graded_ndcg([1, 1], [1, 2], [0, 0], 2)[0])
    with pytest.raises(ValueError, match="k must be positive"):
        graded_ndcg([1], [1], [1], 0)


def test_top_k_rows_per_group():
    got = top_k_rows(np.array([2, 1, 2, 1, 2]), np.array([0.1, 0.9, 0.5, 0.2, 0.7]), 2)
    assert got.tolist() == [False, True, True, True, True]


def test_rankings_vs_truth_tells_bait_from_relevance():
    """A score that follows click-bait puts bait on top and loses NDCG to one that follows the
    relevance; the table's first row describes the candidates, the last the ideal."""
    rng = np.random.default_rng(1)
    users = np.repeat(np.arange(100), 20)
    rel = rng.random(2000)
    bait = rng.random(2000) < 0.2
    table = rankings_vs_truth(users, {"bait": bait + 0.01 * rng.random(2000),
                                      "relevance": rel + 0.05 * rng.random(2000)},
                              rel, bait, rng.integers(10, 600, 2000), k=5)
    by = table.set_index("ranking")
    assert by.loc["bait", "top_clickbait_share"] > 3 * bait.mean()    # ~4 bait per user of 20
    assert by.loc["relevance", "ndcg"] > by.loc["bait", "ndcg"] + 0.2
    assert by.loc["true relevance (ideal)", "ndcg"] == 1.0
    assert by.iloc[0]["top_clickbait_share"] == pytest.approx(bait.mean())
    with pytest.raises(ValueError, match="candidates"):
        rankings_vs_truth(np.arange(5), {"x": np.ones(5)}, np.ones(5), np.zeros(5), np.ones(5))


def test_lists_vs_truth_against_a_hand_example():
    rel = np.array([[0.9, 0.1, 0.5, 0.2],      # user 1: ideal top-2 mean 0.7
                    [0.2, 0.8, 0.4, 0.6]])     # user 2: ideal 0.7
    bait = np.array([False, True, False, False])
    lists = {"good": np.array([[1, 3], [2, 4]]), "bait": np.array([[2, -1], [2, 1]])}
    summary, frame = lists_vs_truth(lists, np.array([1, 2]), lambda idx: rel[idx], bait, k=2,
                                    chunk=1)
    assert summary["good"]["true_relevance@2"] == pytest.approx((0.9 + 0.5 + 0.8 + 0.6) / 4)
    assert summary["good"]["share_of_ideal@2"] == pytest.approx(1.0)
    assert summary["bait"]["true_relevance@2"] == pytest.approx((0.1 + 0.8 + 0.2) / 3, abs=1e-4)
    assert summary["bait"]["clickbait_share@2"] == pytest.approx(2 / 3, abs=1e-4)
    assert frame["bait:share_of_ideal@2"].tolist() == pytest.approx([0.1 / 0.7, 0.5 / 0.7])


def test_lists_vs_truth_scores_an_empty_list_nan_without_a_warning():
    rel = np.array([[0.9, 0.1], [0.2, 0.8]])
    lists = {"short": np.array([[1, -1], [-1, -1]])}       # user 2 got nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # numpy's "Mean of empty slice"
        summary, frame = lists_vs_truth(lists, np.array([1, 2]), lambda idx: rel[idx],
                                        np.array([False, False]), k=2)
    assert np.isnan(frame["short:share_of_ideal@2"][1])
    assert frame["short:share_of_ideal@2"][0] == pytest.approx(0.9 / 0.5)   # ideal (0.9+0.1)/2
    assert summary["short"]["share_of_ideal@2"] == pytest.approx(0.9 / 0.5 / 2)
