"""Popularity-bias measures: hand-computed examples, scipy's Spearman as the reference, and a
model that shows everyone the same popular items flagged by every measure against a random one."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recfunnel.evaluation.bias import (ItemPopularity, concentration_curve, gini_index,
                                       grouped_spearman, popularity_bias_report,
                                       popularity_bias_summary, popularity_opportunity_bias,
                                       popularity_parity, positive_ranks, top_items_share,
                                       user_popularity_rank_correlation)


def test_concentration_curve_counts_items_most_frequent_first():
    ids = np.array([[1, 1, 1, 1, 1], [2, 2, 2, 3, 3], [-1, -1, -1, -1, -1]])   # 5, 3, 2 of 10
    curve = concentration_curve(ids)
    assert curve["share"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert curve["items"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 3, 3]
    assert concentration_curve(np.array([7, 8, 9, 7]), shares=[0.5, 0.75])["items"].tolist() \
        == [1, 2]
    assert concentration_curve(np.array([-1]))["items"].eq(0).all()


def test_gini_index_against_the_mean_absolute_difference():
    assert gini_index([5, 5, 5, 5]) == 0
    assert gini_index([0, 0, 0, 10]) == pytest.approx(3 / 4)
    x = np.random.default_rng(0).integers(0, 50, 300).astype(float)
    reference = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini_index(x) == pytest.approx(reference)
    assert np.isnan(gini_index([0, 0]))


def test_head_is_the_items_making_up_80_percent_of_training_and_the_catalogue_counts():
    train = np.repeat([10, 11, 12, 13], [50, 30, 10, 10])
    pop = ItemPopularity.from_interactions(train, catalogue=[10, 11, 12, 13, 14])
    assert pop.item_ids.tolist() == [10, 11, 12, 13, 14]
    assert pop.counts.tolist() == [50, 30, 10, 10, 0]
    assert pop.is_head.tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="recommended hold 1 item ids that are not in the "
                                         "catalogue, e.g. \\[99\\]"):
        popularity_bias_summary(np.array([[10, 99]]), pop)


def test_summary_by_hand():
    pop = ItemPopularity.from_interactions(np.repeat([10, 11, 12, 13], [50, 30, 10, 10]),
                                           catalogue=[10, 11, 12, 13, 14])
    s = popularity_bias_summary(np.array([[10, 11], [10, 12], [13, -1]]), pop)
    assert s["recommendations"] == 5 and s["distinct_items"] == 4
    assert s["coverage"] == pytest.approx(4 / 5)
    assert s["gini"] == pytest.approx(gini_index([2, 1, 1, 1, 0]))
    assert s["average_recommendation_popularity"] == pytest.approx((40 + 30 + 10) / 3)
    assert s["popularity_lift"] == pytest.approx(((40 + 30 + 10) / 3) / 20)
    assert s["long_tail_share"] == pytest.approx(2 / 5)
    assert s["long_tail_catalogue_share"] == pytest.approx(3 / 5)


def test_positive_ranks_find_each_positive_once_and_censor_the_missing_at_k():
    ranks = positive_ranks(np.array([[5, 6, 7, 6], [7, -1, -1, -1], [1, 2, 3, 4]]),
                           [np.array([6, 9]), np.array([7, 7, -1]), np.array([], int)])
    assert ranks.to_dict("list") == {"row": [0, 0, 1], "item_id": [6, 9, 7], "rank": [1, 4, 0]}


def test_grouped_spearman_equals_scipy_per_group_with_ties_and_nan_when_constant():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 30, 600)
    x, y = rng.integers(0, 5, 600), rng.integers(0, 8, 600) + rng.integers(0, 5, 600)
    rho = grouped_spearman(groups, x, y)
    for g in range(30):
        assert rho[g] == pytest.approx(stats.spearmanr(x[groups == g], y[groups == g])[0])
    constant = grouped_spearman(np.array([0, 0, 1, 1, 2]), np.array([1, 1, 1, 2, 3]),
                                np.array([1, 2, 1, 2, 3]))
    assert np.isnan(constant[0]) and constant[1] == pytest.approx(1) and np.isnan(constant[2])


def test_popularity_opportunity_bias_by_hand_and_against_scipy():
    pop = ItemPopularity.from_interactions(np.repeat([1, 2, 3, 4], [40, 30, 20, 10]))
    # user 0 ranks its likes by popularity (SRC -1), user 1 against it (SRC +1),
    # user 2 has one positive only (undefined)
    ranks = pd.DataFrame({"row": [0, 0, 0, 1, 1, 2], "item_id": [1, 2, 4, 1, 3, 2],
                          "rank": [0, 3, 7, 9, 2, 5]})
    per_user = user_popularity_rank_correlation(ranks, pop)
    assert per_user[0] == pytest.approx(-1) and per_user[1] == pytest.approx(1)
    assert np.isnan(per_user[2])
    po = popularity_opportunity_bias(ranks, pop)
    assert po["pru"] == pytest.approx(0) and po["users_scored"] == 2
    assert po["users_undefined"] == 1 and po["items_scored"] == 4
    avg_rank = [(0 + 9) / 2, (3 + 5) / 2, 2, 7]      # items 1, 2, 3, 4
    assert po["pri"] == pytest.approx(-stats.spearmanr([40, 30, 20, 10], avg_rank)[0])


def test_parity_by_hand():
    pop = ItemPopularity.from_interactions(np.repeat([1, 2, 3, 4], [60, 25, 10, 5]))  # head 1, 2
    ranks = pd.DataFrame({"row": [0, 0, 1, 1, 2], "item_id": [1, 3, 2, 4, 3],
                          "rank": [0, 5, 1, 0, 9]})
    p = popularity_parity(ranks, pop, k=2)
    assert p["head_hit_rate@2"] == 1.0 and p["tail_hit_rate@2"] == pytest.approx(1 / 3)
    assert p["parity_difference"] == pytest.approx(2 / 3)
    assert p["parity_ratio"] == pytest.approx(1 / 3)
    assert (p["head_positives"], p["tail_positives"]) == (2, 3)


@pytest.fixture(scope="module")
def world():
    """Zipf-popular items; training and held-out likes both follow popularity, as in real logs."""
    rng = np.random.default_rng(11)
    n_users, n_items, k = 2_000, 500, 10
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    train = rng.choice(n_items, 40_000, p=p)
    relevant = [np.unique(rng.choice(n_items, 5, p=p)) for _ in range(n_users)]
    popularity = ItemPopularity.from_interactions(train, catalogue=np.arange(n_items))
    by_popularity = np.argsort(-popularity.counts, kind="stable")
    # the full rankings, best first; their first k columns are the top-k lists
    popular = np.tile(by_popularity, (n_users, 1))
    uniform = np.argsort(rng.random((n_users, n_items)), axis=1)
    return popularity, relevant, k, popular, uniform


def test_a_same_items_for_everyone_model_is_flagged_by_every_measure(world):
    popularity, relevant, k, popular, uniform = world
    top, rnd = (popularity_bias_report(m[:, :k], popularity, relevant) for m in (popular, uniform))
    assert top["concentration_curve"][-1]["items"] == k
    assert rnd["concentration_curve"][-1]["items"] > 40 * k
    assert top["coverage"] == pytest.approx(k / 500) and rnd["coverage"] > 0.95
    assert top["gini"] > 0.97 and rnd["gini"] < 0.2
    assert top["popularity_lift"] > 10 and rnd["popularity_lift"] == pytest.approx(1, abs=0.1)
    assert top["long_tail_share"] == 0 and rnd["long_tail_share"] == pytest.approx(
        top["long_tail_catalogue_share"], abs=0.02)
    assert top["parity"]["tail_hit_rate@10"] == 0 and top["parity"]["parity_ratio"] == 0
    assert rnd["parity"]["parity_ratio"] == pytest.approx(1, abs=0.25)
    # preference-aware: on the full rankings the popular model is maximally biased
    full = {name: popularity_bias_report(m[:, :k], popularity, relevant, rankings=m)
            ["popularity_opportunity"] for name, m in (("popular", popular), ("uniform", uniform))}
    assert full["popular"]["pru"] > 0.95 and full["popular"]["pri"] > 0.95
    assert abs(full["uniform"]["pru"]) < 0.05 and abs(full["uniform"]["pri"]) < 0.1
    assert full["uniform"]["ranked_positions"] == 500
    # through the top-10 alone, PRU still flags the popular model, on the users it can score
    assert top["popularity_opportunity"]["pru"] > 0.5
    assert top["popularity_opportunity"]["ranked_positions"] == k
    assert rnd["popularity_opportunity"]["users_undefined"] > 0.8 * len(relevant)


def test_report_is_json_ready_and_omits_preference_measures_without_positives(world):
    import json
    popularity, relevant, k, popular, _ = world
    report = popularity_bias_report(popular[:, :k], popularity)
    assert "parity" not in report and "popularity_opportunity" not in report
    json.dumps(report)
    json.dumps(popularity_bias_report(popular[:, :k], popularity, relevant))


def test_top_items_share_reads_the_concentration_curve_along_the_catalogue():
    counts = np.array([1, 6, 0, 3])        # 10 occurrences over 4 catalogue items
    # the top quarter (the item seen 6 times) takes 6 of 10, the top half 9, the whole catalogue all
    assert top_items_share(counts, [0, 0.25, 0.5, 1]).tolist() == [0, 0.6, 0.9, 1.0]
    assert top_items_share(np.zeros(3), [0.5, 1]).tolist() == [0, 0]
