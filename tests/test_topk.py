"""Top-K metrics against hand-computed examples."""
import numpy as np
import pytest

from recfunnel.evaluation.topk import topk_metrics


def test_hand_computed_example():
    recommended = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 1, 2, 3]])
    relevant = [np.array([2, 4, 10]), np.array([11]), np.array([], dtype=int)]
    m = topk_metrics(recommended, relevant, 4)
    # user 0: hits at ranks 2 and 4; user 1: none; user 2: no relevant items (not scored)
    assert m["users_scored"] == 2 and m["users_without_relevant"] == 1
    assert m["recall@4"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["precision@4"] == pytest.approx((2 / 4 + 0) / 2)
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg@4"] == pytest.approx((dcg / idcg) / 2)
    assert m["hit_rate@4"] == 0.5 and m["mrr@4"] == pytest.approx(0.25)
    assert m["map@4"] == pytest.approx(((1 / 2 + 2 / 4) / 3) / 2)


def test_k_larger_than_list_and_padding():
    m = topk_metrics(np.array([[3, -1, -1]]), [np.array([3, -1])], 10)
    assert m["recall@10"] == 0.5 and m["ndcg@10"] == pytest.approx(1 / (1 + 1 / np.log2(3)))


def test_perfect_list():
    m = topk_metrics(np.array([[1, 2], [3, 4]]), [np.array([2, 1]), np.array([3])], 2)
    assert m["ndcg@2"] == 1.0 and m["recall@2"] == 1.0 and m["map@2"] == 1.0
