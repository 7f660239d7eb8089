"""Each ranking stage against its input's own order, and the logging policy's exposure of each
list: tiny arrays with the expected values worked out in the comments."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.evaluation.offline import Predictions, evaluate
from recfunnel.evaluation.stages import (exposure_report, is_worse, logged_order_change,
                                         paired_difference_interval, shown_items, stage_report,
                                         true_order_change)

D2 = 1 / np.log2(3)           # the discount of rank 2


def _reversal_lists(n_users: int = 5) -> dict:
    """Retrieval puts each user's positive first; the light ranker reverses its input and
    the heavy ranker keeps the light ranker's order."""
    candidates = np.arange(1, 4 * n_users + 1).reshape(n_users, 4)
    light = candidates[:, ::-1].copy()
    return {"funnel_candidates": candidates, "funnel_light": light, "funnel": light[:, :2].copy()}


def test_logged_order_change_against_a_hand_example():
    # user 0: input [1 2 3 4], positive 3; output [3 1] puts it first: NDCG 0 -> 1, recall 0 -> 1
    # user 1: input [5 6 7 8], positives 5 and 8 (ideal DCG 1 + D2); input top 2 [5 6] hits at
    #   rank 1: NDCG 1 / (1 + D2) = 0.6131; output [6 5] at rank 2: D2 / (1 + D2) = 0.3869;
    #   recall@2 1/2 either way
    # user 2: its positive 99 is not among the input's items: scored by neither order
    inputs = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    outputs = np.array([[3, 1], [6, 5], [9, 10]])
    relevant = [np.array([3]), np.array([5, 8]), np.array([99])]
    m = logged_order_change(inputs, outputs, relevant, k=2)
    assert m["users_scored"] == 2
    assert m["input_ndcg@2"] == pytest.approx((0 + 1 / (1 + D2)) / 2)
    assert m["output_ndcg@2"] == pytest.approx((1 + D2 / (1 + D2)) / 2)
    assert m["ndcg@2_difference"] == pytest.approx(m["output_ndcg@2"] - m["input_ndcg@2"])
    assert (m["input_recall@2"], m["output_recall@2"]) == pytest.approx((0.25, 0.75))


def test_recall_at_the_kept_width_compares_the_cut_with_retrieval_order():
    # input [1 2 3 4 5 6], positives 5 and 6; the stage keeps [5 6 1]: retrieval's top 3
    # [1 2 3] holds none of them, the kept 3 both
    m = logged_order_change(np.array([[1, 2, 3, 4, 5, 6]]), np.array([[5, 6, 1]]),
                            [np.array([5, 6])], k=1, widths=(3,))
    assert (m["input_recall@3"], m["output_recall@3"]) == (0.0, 1.0)
    assert (m["input_recall@1"], m["output_recall@1"]) == (0.0, 0.5)


def test_a_stage_that_reverses_its_input_is_flagged_worse():
    lists = _reversal_lists()
    relevant = [row[:1] for row in lists["funnel_candidates"]]
    light, heavy = stage_report(lists, relevant, k=2)
    # light ranker: the positive at rank 1 of its input, absent from its top 2: NDCG 1 -> 0 for
    # every user, so every bootstrap mean is -1
    assert light["stage"] == "light ranker" and (light["input_width"], light["kept"]) == (4, 4)
    assert light["logged"]["ndcg@2_difference"] == pytest.approx(-1.0)
    assert light["logged"]["ndcg@2_difference_interval"] == pytest.approx((-1.0, -1.0))
    assert light["worse_logged"] is True and light["worse"] is True
    assert light["truth"] is None and light["worse_truth"] is None
    assert light["logged"]["input_recall@4"] == light["logged"]["output_recall@4"] == 1.0
    # heavy ranker: keeps its input's order, so it changes nothing and is not flagged
    assert heavy["logged"]["ndcg@2_difference"] == 0.0
    assert heavy["worse"] is False


def test_a_stage_that_moves_the_positive_up_is_not_flagged():
    # input [1 2 3 4] with the positive 3 at rank 3; the stage puts it first
    lists = {"funnel_candidates": np.array([[1, 2, 3, 4]] * 3),
             "funnel_light": np.array([[3, 1, 2, 4]] * 3)}
    (light,) = stage_report(lists, [np.array([3])] * 3, k=2)
    assert light["logged"]["ndcg@2_difference"] == pytest.approx(1.0)
    assert light["worse_logged"] is False and light["worse"] is False


def test_true_order_change_against_a_hand_example():
    rel = np.array([[0.9, 0.1, 0.5, 0.2],      # user 1
                    [0.2, 0.8, 0.4, 0.6]])     # user 2
    # user 1: input [1 2 3 4], ideal top 2 (0.9, 0.5): 0.9 + 0.5 D2; input top 2 (0.9, 0.1),
    #   output [3 1] (0.5, 0.9); true relevance@2 0.5 -> 0.7
    # user 2: input [4 3 2 1], ideal (0.8, 0.6); input top 2 (0.6, 0.4); output [2 4] is ideal;
    #   true relevance@2 0.5 -> 0.7
    ideal = [0.9 + 0.5 * D2, 0.8 + 0.6 * D2]
    m = true_order_change(np.array([[1, 2, 3, 4], [4, 3, 2, 1]]), np.array([[3, 1], [2, 4]]),
                          np.array([1, 2]), lambda idx: rel[idx], k=2, chunk=1)
    assert m["users_scored"] == 2
    assert m["input_ndcg@2"] == pytest.approx(
        ((0.9 + 0.1 * D2) / ideal[0] + (0.6 + 0.4 * D2) / ideal[1]) / 2)
    assert m["output_ndcg@2"] == pytest.approx(((0.5 + 0.9 * D2) / ideal[0] + 1.0) / 2)
    assert (m["input_true_relevance@2"], m["output_true_relevance@2"]) == pytest.approx((0.5, 0.7))


def test_a_reversal_is_flagged_by_the_truth_too():
    lists = _reversal_lists(n_users=3)
    n_items = int(lists["funnel_candidates"].max())
    # true relevance falls along each user's retrieval order: 0.8, 0.6, 0.4, 0.2
    rel = np.zeros((3, n_items))
    for u, row in enumerate(lists["funnel_candidates"]):
        rel[u, row - 1] = [0.8, 0.6, 0.4, 0.2]
    relevant = [row[:1] for row in lists["funnel_candidates"]]
    light, heavy = stage_report(lists, relevant, k=2, users=np.array([1, 2, 3]),
                                relevance_rows=lambda idx: rel[idx])
    assert light["truth"]["ndcg@2_difference"] < 0
    assert light["worse_truth"] is True and light["worse"] is True
    assert light["truth"]["output_true_relevance@4"] == pytest.approx(0.5)   # all four kept
    assert heavy["worse_truth"] is False


def test_an_output_not_drawn_from_its_input_is_refused():
    with pytest.raises(ValueError, match="can only reorder and cut its input"):
        logged_order_change(np.array([[1, 2, 3]]), np.array([[4, 1]]), [np.array([1])], k=2)


def test_paired_difference_interval_edges():
    assert paired_difference_interval(np.full(7, -0.25)) == pytest.approx((-0.25, -0.25))
    assert np.isnan(paired_difference_interval(np.array([np.nan]))[0])
    low, high = paired_difference_interval(np.array([-1.0, 1.0] * 50), resamples=200)
    assert low < 0 < high and not is_worse((low, high))
    with pytest.raises(ValueError, match="confidence"):
        paired_difference_interval(np.ones(3), confidence=1.0)


def test_shown_items_are_the_logged_impressions_only():
    rows = pd.DataFrame({"user_id_raw": [1, 1, 1, 2, 2], "item_id_raw": [5, 6, 5, 7, 8],
                         "sampled_negative": [0, 1, 0, 0, 0]})
    got = shown_items(np.array([2, 1, 3]), rows)
    assert [g.tolist() for g in got] == [[7, 8], [5], []]
    with pytest.raises(ValueError, match="sampled_negative"):
        shown_items(np.array([1]), rows.drop(columns="sampled_negative"))


def test_exposure_share_and_click_rate_of_shown():
    # user 0 was shown {1, 5} and clicked 1; user 1 was shown {3, 4} and clicked 4; k = 2
    # list a: [1 2] -> 2 slots, 1 shown (1, a click); [3 -] -> 1 slot, shown, no click
    #   pooled: shown 2/3, click rate of shown 1/2, precision 1/3 = 2/3 x 1/2
    # list b: [2 5] -> shown 5, no click; [4 3] -> both shown, one click
    #   pooled: shown 3/4, click rate of shown 1/3, precision 1/4
    lists = {"a": np.array([[1, 2], [3, -1]]), "b": np.array([[2, 5], [4, 3]])}
    shown = [np.array([1, 5]), np.array([3, 4])]
    relevant = [np.array([1]), np.array([4])]
    rel = np.array([[0.9, 0.1, 0.5, 0.2, 0.3],
                    [0.2, 0.8, 0.4, 0.6, 0.7]])
    out = exposure_report(lists, relevant, shown, k=2, users=np.array([1, 2]),
                          relevance_rows=lambda idx: rel[idx], catalogue_items=10, chunk=1)
    a, b = out["lists"]["a"], out["lists"]["b"]
    assert (a["slots"], a["shown_share@2"], a["positive_rate_of_shown@2"], a["precision@2"]) \
        == pytest.approx((3, 2 / 3, 1 / 2, 1 / 3))
    assert (b["shown_share@2"], b["positive_rate_of_shown@2"], b["precision@2"]) \
        == pytest.approx((3 / 4, 1 / 3, 1 / 4))
    assert a["positives_not_shown"] == b["positives_not_shown"] == 0
    # truth, list a: shown items 1 (0.9, user 0) and 3 (0.4, user 1); not shown: 2 (0.1)
    assert (a["true_relevance_shown@2"], a["true_relevance_not_shown@2"]) \
        == pytest.approx((0.65, 0.1))
    # the logging policy: 4 shown items for 2 users, both clicks among them; 4 / (2 x 10)
    # of the catalogue; their true relevance (0.9 + 0.3 + 0.4 + 0.6) / 4
    policy = out["logging_policy"]
    assert (policy["shown_per_user"], policy["positive_rate_of_shown"],
            policy["positives_shown_share"], policy["random_list_shown_share"],
            policy["true_relevance_shown"]) == pytest.approx((2, 0.5, 1.0, 0.2, 0.55))


def test_exposure_scores_each_list_on_its_own_rows():
    out = exposure_report({"a": np.array([[1, 2], [3, -1]])}, [np.array([1]), np.array([4])],
                          [np.array([1, 5]), np.array([3, 4])], k=2, rows={"a": np.array([0])})
    a = out["lists"]["a"]
    assert (a["users"], a["shown_share@2"], a["positive_rate_of_shown@2"]) == (1, 0.5, 1.0)
    assert "true_relevance_shown@2" not in a


def test_evaluate_writes_stages_and_exposure():
    lists = _reversal_lists(n_users=4)
    lists.update(two_tower=lists["funnel_candidates"][:, :2].copy(),
                 popularity=lists["funnel_light"][:, :2].copy())
    users = pd.DataFrame({"user_id_raw": [1, 2, 3, 4], "path": ["model"] * 4})
    relevant = [row[:1] for row in lists["funnel_candidates"]]
    shown = pd.DataFrame({"user_id_raw": [1, 2, 3, 4, 1], "item_id_raw": [1, 5, 9, 13, 4],
                          "sampled_negative": [0, 0, 0, 0, 1], "click": [1, 1, 1, 1, 0]})
    pred = Predictions(users, relevant, lists, shown,
                       pd.DataFrame({"user_id_raw": [1, 2], "item_id_raw": [2, 3]}))
    metrics = evaluate(pred, pd.DataFrame({"user_id": [1, 2, 3, 4]}), np.arange(1, 17), k=2,
                       objectives=["click"], min_users=1)
    light = metrics["stages"][0]
    assert light["worse"] is True and metrics["stages"][1]["worse"] is False
    assert isinstance(light["logged"]["ndcg@2_difference_interval"], list)      # JSON-ready
    # two-tower's top 2 holds each user's one shown (and clicked) item; popularity's none
    exposure = metrics["exposure"]["lists"]
    assert exposure["two_tower"]["shown_share@2"] == 0.5
    assert exposure["popularity"]["shown_share@2"] == 0.0
    assert set(exposure) == {"two_tower", "popularity", "funnel_light", "funnel"}
