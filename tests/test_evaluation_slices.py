"""Metrics per user group: the groups built from each source's attributes, the tidy table by
hand and against a plain groupby, small and empty groups marked, and a planted weak group found."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.evaluation.slices import activity_levels, slice_metrics, user_groups, worst_groups


def test_groups_from_synthetic_attributes_with_missing_values_and_unknown_users():
    users = pd.DataFrame({"user_id": [1, 2, 3, 4, 5], "age": [16, 20, 30, 61, None],
                          "gender": ["F", "M", None, "F", "other"],
                          "location": ["US", "IN", "US", "DE", "BR"]})
    activity = pd.Series([1, 5, 9, 20, 30], index=[1, 2, 3, 4, 5])
    groups = user_groups([1, 2, 3, 4, 5, 6], users, activity)
    assert groups.columns.tolist() == ["user_id", "age_band", "gender", "location", "activity"]
    assert groups["age_band"].astype(str).tolist() == ["<18", "18-24", "25-34", "55+", "unknown",
                                                       "unknown"]
    assert groups["gender"].tolist() == ["F", "M", "unknown", "F", "other", "unknown"]
    # tertiles of (1, 5, 9, 20, 30, 0): user 6 has no training events
    assert groups["activity"].astype(str).tolist() == ["light", "medium", "medium", "heavy",
                                                       "heavy", "light"]


def test_groups_from_movielens_attributes_use_the_zip_region_and_occupation():
    users = pd.DataFrame({"user_id": [1, 2, 3], "age": [24, 53, 33], "gender": ["M", "F", "M"],
                          "occupation": ["writer", "other", "writer"],
                          "zip_code": ["85711", "94043", "T8H1N"]})
    groups = user_groups([1, 2, 3], users)
    assert groups["location"].tolist() == ["mountain", "pacific", "non-US"]
    assert groups["occupation"].tolist() == ["writer", "other", "writer"]
    assert "activity" not in groups.columns
    with pytest.raises(ValueError, match="user_id"):
        user_groups([1], users.drop(columns="user_id"))


def test_activity_tertiles_keep_tied_users_together_even_if_a_level_empties():
    levels = activity_levels(pd.Series([1, 1, 1, 1, 2, 3]))
    assert levels.astype(str).tolist() == ["light"] * 4 + ["heavy"] * 2
    assert levels.cat.categories.tolist() == ["light", "medium", "heavy"]


def test_tidy_table_by_hand_with_small_empty_and_unscored_groups():
    per_user = pd.DataFrame({"user_id": [1, 2, 3, 4], "recall@2": [1.0, 0.0, 0.5, np.nan],
                             "ndcg@2": [1.0, 0.0, 0.25, 0.5], "relevant": [1, 2, 2, 0]})
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "age": [20, 22, 60, 61],
                          "gender": ["F", "F", "M", "M"]})
    table = slice_metrics(per_user, user_groups([1, 2, 3, 4], users), min_users=2)
    assert table.columns.tolist() == ["slice", "group", "users", "metric", "value",
                                      "gap_to_overall", "too_small"]
    row = table.set_index(["slice", "group", "metric"])
    assert row.loc[("overall", "all", "recall@2"), "value"] == 0.5
    assert row.loc[("overall", "all", "recall@2"), "users"] == 3       # user 4 is not scored
    assert row.loc[("gender", "M", "recall@2"), ["users", "value", "too_small"]].tolist() \
        == [1, 0.5, True]
    assert row.loc[("gender", "M", "ndcg@2"), "value"] == pytest.approx(0.375)
    assert row.loc[("gender", "M", "ndcg@2"), "gap_to_overall"] == pytest.approx(0.375 - 0.4375)
    assert not row.loc[("gender", "F", "ndcg@2"), "too_small"]
    empty = row.loc[("age_band", "35-44", "recall@2")]                  # nobody is 35-44
    assert empty["users"] == 0 and np.isnan(empty["value"]) and empty["too_small"]
    assert "relevant" not in set(table["metric"])


def test_values_equal_a_plain_groupby_on_random_users():
    rng = np.random.default_rng(5)
    n = 3_000
    users = pd.DataFrame({"user_id": np.arange(n), "age": rng.integers(12, 80, n),
                          "gender": rng.choice(["F", "M", "other"], n),
                          "location": rng.choice(["US", "IN", "BR"], n)})
    per_user = pd.DataFrame({"user_id": np.arange(n), "hit_rate@10": rng.random(n)})
    per_user.loc[rng.random(n) < 0.2, "hit_rate@10"] = np.nan
    table = slice_metrics(per_user, user_groups(np.arange(n), users))
    expected = per_user.merge(users, on="user_id").groupby("location")["hit_rate@10"]
    got = table[table["slice"] == "location"].set_index("group")
    np.testing.assert_allclose(got.loc[expected.mean().index, "value"], expected.mean())
    assert got.loc[expected.count().index, "users"].tolist() == expected.count().tolist()


def test_worst_group_finds_the_planted_group_and_skips_small_ones():
    rng = np.random.default_rng(8)
    n = 4_000
    users = pd.DataFrame({"user_id": np.arange(n), "age": rng.integers(15, 75, n),
                          "gender": rng.choice(["F", "M"], n)})
    users.loc[:9, "gender"] = "other"                                   # 10 users: too small
    weak = users["age"].to_numpy() >= 55
    recall = np.clip(rng.normal(0.4, 0.1, n) - 0.25 * weak, 0, 1)
    recall[:10] = 0.0                                                   # worst, but too small
    per_user = pd.DataFrame({"user_id": np.arange(n), "recall@10": recall,
                             "logloss": 1 - recall})
    table = slice_metrics(per_user, user_groups(np.arange(n), users))
    worst = worst_groups(table, lower_is_better=["logloss"]).set_index(["metric", "slice"])
    assert worst.loc[("recall@10", "age_band"), "group"] == "55+"
    assert worst.loc[("logloss", "age_band"), "group"] == "55+"
    assert worst.loc[("recall@10", "gender"), "group"] != "other"
    with_small = worst_groups(table, include_too_small=True).set_index(["metric", "slice"])
    assert with_small.loc[("recall@10", "gender"), "group"] == "other"
    assert "overall" not in worst.index.get_level_values("slice")


def test_unknown_metric_is_refused_by_name():
    per_user = pd.DataFrame({"user_id": [1], "recall@10": [1.0]})
    with pytest.raises(ValueError, match=r"\['ndcg@10'\]"):
        slice_metrics(per_user, pd.DataFrame({"user_id": [1]}), metrics=["ndcg@10"])
