"""Top-K metrics against hand-computed examples."""
import numpy as np
import pytest

from recfunnel.topk import (hits_matrix, sampled_topk_metrics, topk_metrics,
                                       topk_per_user)


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


def _full_rankings(n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.random((n_users, n_items))
    truth = rng.random((n_users, n_items)) < 0.15
    truth[:3] = False                                     # users without positives
    return scores, truth, np.argsort(-scores, axis=1)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_ndcg_and_map_match_scikit_learn_on_full_rankings(k):
    from sklearn.metrics import average_precision_score, ndcg_score
    scores, truth, ranking = _full_rankings()
    m = topk_metrics(ranking, [np.flatnonzero(t) for t in truth], k)
    scored = truth.any(axis=1)
    assert m["users_without_relevant"] == 3
    assert m[f"ndcg@{k}"] == pytest.approx(ndcg_score(truth[scored], scores[scored], k=k))
    if k == truth.shape[1]:        # MAP over the whole ranking is the mean average precision
        ap = [average_precision_score(t, s) for t, s in zip(truth[scored], scores[scored])]
        assert m[f"map@{k}"] == pytest.approx(np.mean(ap))


def test_per_user_rows_average_to_the_overall_metrics_and_keep_unscored_users():
    _, truth, ranking = _full_rankings(seed=1)
    relevant = [np.flatnonzero(t) for t in truth]
    per_user = topk_per_user(ranking, relevant, 10, user_ids=np.arange(100, 140))
    m = topk_metrics(ranking, relevant, 10)
    assert len(per_user) == 40 and per_user["user_id"].iloc[0] == 100
    assert per_user["recall@10"].isna().sum() == 3 == (per_user["relevant"] == 0).sum()
    for name in ("recall@10", "precision@10", "ndcg@10", "hit_rate@10", "mrr@10", "map@10"):
        assert per_user[name].mean() == pytest.approx(m[name])


def test_vectorized_hits_equal_a_row_by_row_isin():
    _, truth, ranking = _full_rankings(seed=2)
    relevant = [np.flatnonzero(t) for t in truth]
    padded = np.where(ranking[:, :12] % 7 == 0, -1, ranking[:, :12])
    expected = np.stack([np.isin(r, rel) & (r >= 0) for r, rel in zip(padded, relevant)])
    np.testing.assert_array_equal(hits_matrix(padded, relevant), expected)


def test_duplicate_relevant_ids_count_once():
    m = topk_metrics(np.array([[5, 6]]), [np.array([5, 5, 7])], 2)
    assert m["recall@2"] == 0.5


def test_sampled_metrics_are_labelled_and_ties_go_against_the_positive():
    m = sampled_topk_metrics(np.array([0.9, 0.5, 0.1]),
                             np.array([[0.1, 0.2], [0.5, 0.1], [0.3, 0.2]]), 1)
    assert set(m) == {"sampled_hit_rate@1", "sampled_ndcg@1", "sampled_mrr@1",
                      "sampled_negatives", "sampled_pairs"}
    assert m["sampled_hit_rate@1"] == pytest.approx(1 / 3) and m["sampled_negatives"] == 2
    m = sampled_topk_metrics(np.array([0.9, 0.5]), np.array([[0.1, 0.2], [0.5, 0.1]]), 2)
    assert m["sampled_ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert m["sampled_mrr@2"] == pytest.approx((1 + 1 / 2) / 2)
