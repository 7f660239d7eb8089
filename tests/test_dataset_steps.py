"""Every filter, label and feature of the dataset build on small hand-built fixtures."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.workflows import (dataset, duplicates, labels, negatives, point_in_time, splits,
                                 unsafe)


# ---- duplicates (L1.3) ------------------------------------------------------------------------

CATALOGUE = pd.DataFrame({
    "item_id": [1, 2, 3, 4, 5, 6, 7],
    "title": ["Deep cooking guide #12", "deep cooking guide #12 (HD)", "Deep cookng guide #12",
              "Deep cooking guide #13", "Deep cooking guide #12", "Other thing", None],
    "creator": ["a", "a", "a", "a", "b", "a", "a"],
    "duration_seconds": [60.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0],
})


def test_copies_map_to_the_most_watched_member():
    mapping = duplicates.canonical_ids(CATALOGUE, pd.Series({1: 5, 2: 50, 3: 1}))
    got = dict(zip(mapping["item_id"], mapping["canonical_id"]))
    # 1, 2 (mark), 3 (typo) are one item; 4 is episode 13; 5 is another creator; 7 has no title
    assert got == {1: 2, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6, 7: 7}
    assert mapping.set_index("item_id").loc[3, "group_size"] == 3


def test_exact_only_when_similarity_is_one():
    mapping = duplicates.canonical_ids(CATALOGUE, min_similarity=1.0)
    got = dict(zip(mapping["item_id"], mapping["canonical_id"]))
    assert got[2] == 1 and got[3] == 3       # the mark is normalised away, the typo is not


def every_pair_canonical(items, counts, min_similarity):
    """The definition the blocked detection must keep: every pair of titled items with equal
    blocking columns compared with titles_match, groups joined, the most-watched canonical."""
    titles = items["title"].fillna("")
    norm = titles.map(duplicates.normalize_title).to_numpy()
    numbers = titles.map(duplicates.title_numbers).to_numpy()
    block = items[duplicates.blocking_columns(items)].astype(str).agg("|".join, axis=1) \
        if duplicates.blocking_columns(items) else pd.Series("", index=items.index)
    block, ids = block.to_numpy(), items["item_id"].to_numpy()
    parent = list(range(len(items)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            if norm[a] and norm[b] and block[a] == block[b] and duplicates.titles_match(
                    norm[a], norm[b], min_similarity, numbers[a], numbers[b]):
                parent[find(b)] = find(a)
    root = np.array([find(i) for i in range(len(items))])
    events = counts.reindex(ids).fillna(0).to_numpy()
    best = {r: ids[min(np.flatnonzero(root == r), key=lambda i: (-events[i], ids[i]))]
            for r in set(root)}
    return [best[r] for r in root]


def typo_catalogue(seed: int, n: int) -> pd.DataFrame:
    """Short, repetitive titles with typos, marks, case changes and numbers: many near pairs,
    titles too short for the 3-gram bounds, sequels that must stay apart."""
    rng = np.random.default_rng(seed)
    words = ["deep", "cook", "guide", "mix", "up", "ran", "the", "a", "rocky", "ii", "part", "x"]
    titles = []
    for _ in range(n):
        title = " ".join(rng.choice(words, rng.integers(1, 4)))
        title += f" #{rng.integers(1, 4)}" if rng.random() < 0.3 else ""
        edit, at = rng.integers(0, 5), int(rng.integers(0, len(title)))
        title = [title[:at] + title[at + 1:], title.upper(), title + " (HD)",
                 title[:at] + "z" + title[at:], title][edit]
        titles.append(title if rng.random() > 0.05 else None)
    items = pd.DataFrame({"item_id": np.arange(1, n + 1), "title": titles})
    if seed % 2:
        items["creator"] = rng.choice(["a", "b"], n)
    return items


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_similarity", [0.0, 0.5, 0.8, 0.9, 1.0])
def test_blocked_detection_finds_what_comparing_every_pair_finds(seed, min_similarity):
    items = typo_catalogue(seed, 120)
    counts = pd.Series(np.random.default_rng(seed).integers(0, 5, len(items)),
                       index=items["item_id"])
    mapping = duplicates.canonical_ids(items, counts, min_similarity)
    assert mapping["canonical_id"].tolist() == every_pair_canonical(items, counts, min_similarity)


def test_blocked_detection_keeps_the_fixture_groups():
    for similarity in (0.9, 1.0):
        assert duplicates.canonical_ids(CATALOGUE, min_similarity=similarity)[
            "canonical_id"].tolist() == every_pair_canonical(CATALOGUE, pd.Series(dtype=float),
                                                             similarity)


def test_movielens_real_duplicates_are_found(cache_dir):
    from recfunnel.data import movielens

    ml = movielens.load(cache_dir=cache_dir / "wheels")
    mapping = duplicates.canonical_ids(ml.items, ml.events["item_id"].value_counts())
    copies = mapping[mapping["item_id"] != mapping["canonical_id"]]
    assert len(copies) == 18
    titles = ml.items.set_index("item_id")["title"]
    assert (titles[copies["item_id"]].to_numpy() == titles[copies["canonical_id"]].to_numpy()).all()
    assert {"Chasing Amy", "Ice Storm, The", "Sliding Doors"} <= set(titles[copies["item_id"]])


# ---- unsafe (L1.4) ---------------------------------------------------------------------------

def test_unsafe_filters_flag_blocklist_and_union(tmp_path):
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "unsafe": [True, False, False, False],
                          "title": ["a", "b", "c", "d"]})
    blocked = tmp_path / "blocked.txt"
    blocked.write_text("# reported by users\n3\n99  # not in the catalogue\n")
    table = unsafe.unsafe_item_table(items, unsafe.build_filters(
        [{"kind": "flag"}, {"kind": "blocklist", "path": str(blocked)}]))
    assert table.to_dict("list") == {"item_id": [1, 3], "filters": ["flag", "blocklist"]}
    blocked.write_text("three\n")
    with pytest.raises(ValueError, match="blocked.txt:1: expected one integer item id"):
        unsafe.BlockListFilter(str(blocked)).unsafe_items(items)
    with pytest.raises(ValueError, match="unsafe filter kind 'nsfw_model' is unknown"):
        unsafe.build_filters([{"kind": "nsfw_model"}])


def test_title_classifier_finds_unflagged_unsafe_titles():
    rng = np.random.default_rng(0)
    words = ["cooking", "travel", "music", "guide", "review", "tips"]
    safe = [" ".join(rng.choice(words, 3)) for _ in range(60)]
    bad = [" ".join([*rng.choice(words, 2), "gore"]) for _ in range(16)]
    items = pd.DataFrame({"item_id": np.arange(76), "title": safe + bad,
                          "unsafe": [False] * 60 + [True] * 13 + [False] * 3})  # 3 missed
    found = set(unsafe.TitleClassifierFilter().unsafe_items(items))
    assert set(range(73, 76)) <= found                  # the ones moderation missed
    assert set(range(60, 76)) <= found and not found & set(range(60))


# ---- the servable catalogue and its item ids (L3.1, L6.1) -------------------------------------

def test_the_servable_catalogue_is_every_canonical_safe_item_with_or_without_events():
    canonical = pd.DataFrame({"item_id": [1, 2, 3, 4, 5], "canonical_id": [1, 1, 3, 4, 5]})
    # 2 is a copy of 1, 4 is unsafe; 5 never had an event and is served all the same
    assert dataset.servable_items(canonical, np.array([4])).tolist() == [1, 3, 5]


def test_items_without_a_training_example_get_ids_of_their_own_after_the_frequent_ones():
    counts = pd.Series({7: 3, 5: 3, 9: 1})
    # 5 and 7 tie on count (by id); 9 had one example, below the threshold: the OOV id;
    # 8 had none: its own id, after the training items
    assert dataset.item_vocabulary(counts, np.array([5, 7, 8, 9]), 2).tolist() == [5, 7, 8]
    assert dataset.item_vocabulary(counts, np.array([5, 7, 8, 9]), 1).tolist() == [5, 7, 9, 8]
    assert dataset.item_vocabulary(counts, np.array([5, 7, 8, 9]), 0).tolist() == [5, 7, 9, 8]


# ---- labels (L2.2) ---------------------------------------------------------------------------

def test_watch_75_and_duration_buckets():
    assert labels.watch_at_least([15, 14, 30, 5], [20, 20, 3600, np.nan], 0.75).tolist() == [1, 0, 0, 0]
    assert labels.duration_bucket([5, 15, 16, 5000, np.nan], [15, 60]).tolist() == [0, 1, 1, 2, 0]


def test_duration_aware_label_is_fair_across_lengths():
    # short clips watched 15-20 s of 20; hour-long items watched 20-40 min of 60: same spread
    click = np.ones(8, int)
    watch = np.array([15, 16, 19, 20, 1200, 1500, 2100, 2400], float)
    duration = np.array([20] * 4 + [3600] * 4, float)
    thresholds = labels.bucket_thresholds(click, watch, duration, [60], 0.5)
    assert thresholds.tolist() == [17.5, 1800.0]
    aware = labels.duration_aware_label(click, watch, duration, [60], thresholds)
    naive = labels.watch_at_least(watch, duration, 0.75)
    assert aware.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]      # the top half of each length
    assert naive.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]      # only the short ones
    no_click = labels.duration_aware_label(np.zeros(8, int), watch, duration, [60], thresholds)
    assert no_click.sum() == 0


# ---- point-in-time features (L5.3) -----------------------------------------------------------

def test_point_in_time_stats_use_only_earlier_days():
    day = np.array([10, 10, 11, 13])
    daily = point_in_time.daily_activity(key=[1, 1, 1, 1], day=day, click=[1, 0, 1, 1],
                                         watch=[5, 0, 10, 0], duration=[10, 10, 10, 10])
    table = point_in_time.cumulative_table(daily)
    stats = point_in_time.lookup(table, key=[1, 1, 1, 1, 2], day=[10, 11, 12, 14, 12])
    assert stats["events"].tolist() == [0, 2, 3, 4, 0]
    assert stats["clicks"].tolist() == [0, 1, 2, 3, 0]
    assert stats["watch_fraction"].tolist() == [0, 0.5, 0.75, 0.5, 0]
    assert stats["days_since_last"].tolist() == [999, 1, 1, 1, 999]


def test_a_planted_future_event_does_not_leak(tmp_path):
    """Through the real NVTabular workflow: an example sees nothing from its own day on."""
    import nvtabular as nvt
    from merlin.io import Dataset

    t = pd.Timestamp("2026-01-10")
    events = pd.DataFrame({
        "user_id": [1, 1, 1, 1], "item_id": [7, 8, 9, 9],
        "timestamp": [t - pd.Timedelta(days=2), t - pd.Timedelta(days=1), t,
                      t + pd.Timedelta(days=5)],           # the last one is the planted future
        "click": [1, 1, 1, 1], "watch_seconds": [5.0, 5.0, 5.0, 10.0],
        "duration_seconds": [10.0] * 4,
    })
    op = point_in_time.PointInTimeStats("user_id", "user")
    graph = ["user_id", "timestamp", "click", "watch_seconds", "duration_seconds"] >> op
    workflow = nvt.Workflow(graph + ["item_id"])
    workflow.fit(Dataset(events, cpu=True))
    out = workflow.transform(Dataset(events, cpu=True)).to_ddf().compute()
    # the example at t sees the two earlier events only, not the one at t nor the future one
    assert out["user_events"].tolist() == [0, 1, 2, 3]
    assert out.loc[2, "user_watch_fraction"] == pytest.approx(0.5)
    with_future = events.copy()
    with_future.loc[3, "watch_seconds"] = 0.0          # change only the future event
    workflow.fit(Dataset(with_future, cpu=True))
    again = workflow.transform(Dataset(events, cpu=True)).to_ddf().compute()
    pd.testing.assert_frame_equal(out.iloc[:3], again.iloc[:3])


def test_user_group_stats_count_the_users_history_with_the_items_category(tmp_path):
    """Items 7 and 8 share category 0, item 9 is category 1: an example of (user 1, item 8)
    on day t counts the user's earlier events on item 7 (same category), not those on item 9,
    and nothing of user 2."""
    import nvtabular as nvt
    from merlin.io import Dataset

    t = pd.Timestamp("2026-01-10")
    day = pd.Timedelta(days=1)
    events = pd.DataFrame({
        "user_id": [1, 1, 1, 2, 1], "item_id": [7, 7, 9, 7, 8],
        "timestamp": [t - 3 * day, t - 2 * day, t - day, t - day, t],
        "click": [1, 0, 1, 1, 1], "watch_seconds": [5.0, 0.0, 5.0, 5.0, 5.0],
        "duration_seconds": [10.0] * 5})
    op = point_in_time.UserGroupStats(pd.Series([0, 0, 1], index=[7, 8, 9]))
    assert op.n_groups == 3 and op.group_of([7, 9, 42]).tolist() == [0, 1, 2]   # 42: no group
    inputs = ["user_id", "item_id", "timestamp", "click", "watch_seconds", "duration_seconds"]
    workflow = nvt.Workflow(inputs >> op)
    workflow.fit(Dataset(events, cpu=True))
    out = workflow.transform(Dataset(events, cpu=True)).to_ddf().compute()
    last = out.iloc[4]          # (user 1, item 8) on day t: the two category-0 events before
    assert last["user_category_events"] == 2 and last["user_category_clicks"] == 1
    assert last["user_category_click_rate"] == pytest.approx(0.5)
    assert out.iloc[2]["user_category_events"] == 0      # item 9: category 1, no earlier event
    assert out.iloc[3]["user_category_events"] == 0      # user 2 has no history


# ---- splits and negatives (L5.4, L4.4) ---------------------------------------------------------

def test_time_split_boundaries():
    ns = pd.to_datetime(["2026-01-01", "2026-01-04 23:59", "2026-01-05", "2026-01-07", "2026-01-08"])
    got = splits.time_split(ns.values.astype(np.int64), pd.Timestamp("2026-01-05").value,
                            pd.Timestamp("2026-01-08").value)
    assert got.tolist() == [0, 0, 1, 1, 2]


def test_random_split_is_stable_and_proportional():
    user, item = np.repeat(np.arange(1000), 10), np.tile(np.arange(10), 1000)
    a = splits.random_split(user, item, [0.8, 0.1, 0.1], seed=3)
    assert (a == splits.random_split(user, item, [0.8, 0.1, 0.1], seed=3)).all()
    shares = np.bincount(a) / len(a)
    assert np.allclose(shares, [0.8, 0.1, 0.1], atol=0.01)
    with pytest.raises(ValueError, match="three shares summing to 1"):
        splits.random_split(user, item, [0.8, 0.3], seed=0)


def test_pairs_are_aggregated_per_split():
    events = pd.DataFrame({
        "user_id": [1, 1, 1, 1], "item_id": [5, 5, 5, 6], "split": [0, 0, 1, 0],
        "timestamp": pd.to_datetime(["2026-01-02", "2026-01-01", "2026-01-09", "2026-01-03"]),
        "click": [0, 1, 0, 1], "like": [0, 1, 0, 0], "share": [0, 0, 0, 0],
        "watch_75": [0, 1, 0, 0], "watch_duration_aware": [0, 1, 0, 1],
        "watch_seconds": [0.0, 9.0, 0.0, 3.0], "duration_seconds": [10.0] * 4,
    })
    out = splits.aggregate_pairs(events)
    assert sorted(out[["item_id", "split", "click", "like", "events"]].values.tolist()) == \
        [[5, 0, 1, 1, 2], [5, 1, 0, 0, 1], [6, 0, 1, 0, 1]]
    assert out.loc[(out["item_id"] == 5) & (out["split"] == 0), "timestamp"].item() == \
        pd.Timestamp("2026-01-01")


def test_negatives_never_touch_the_users_items():
    examples = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [10, 11, 10], "split": [0, 1, 0],
                             "timestamp": pd.to_datetime(["2026-01-01", "2026-01-09", "2026-01-02"])})
    candidates = np.arange(10, 20)
    probs = np.full(10, 0.1)
    neg = negatives.sample_negatives(examples, 2.0, candidates, probs, seed=0)
    assert (neg.groupby("user_id").size() == [4, 2]).all()
    for user, rows in neg.groupby("user_id"):
        touched = set(examples.loc[examples["user_id"] == user, "item_id"])
        assert not touched & set(rows["item_id"]) and rows["item_id"].is_unique
    assert set(neg["split"]) <= {0, 1}
    again = negatives.sample_negatives(examples.iloc[::-1], 2.0, candidates, probs, seed=0)
    pd.testing.assert_frame_equal(neg, again)           # independent of row order / partitioning


def test_negatives_stop_when_the_catalogue_is_exhausted():
    examples = pd.DataFrame({"user_id": [4, 4], "item_id": [1, 2], "split": [0, 0],
                             "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    neg = negatives.sample_negatives(examples, 2.5, np.array([1, 2, 3]), None, seed=0)
    assert neg["item_id"].tolist() == [3]        # 5 asked, only item 3 is left


def _many_users(n_users=400, rows=10, n_items=50, seed=3):
    """Users with `rows` examples each among the first 10 items; items 10.. are untouched."""
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), rows)
    item = np.concatenate([rng.choice(10, rows, replace=False) for _ in range(n_users)])
    return pd.DataFrame({"user_id": user, "item_id": item, "split": np.int8(0),
                         "timestamp": pd.Timestamp("2026-01-01")}), np.arange(n_items)


def test_popularity_negatives_follow_the_popularity_of_untouched_items():
    examples, candidates = _many_users()
    weights = np.where(candidates < 10, 1.0, 1.0 + (candidates - 10))   # item 49 weighs 40
    probs = weights / weights.sum()
    neg = negatives.sample_negatives(examples, 0.2, candidates, probs, seed=0)  # 2 per user
    assert len(neg) == 800 and set(neg["item_id"]) <= set(range(10, 50))
    # 800 draws without replacement (2 per user) over items 10..49 weighing 1..40:
    # expected share of item k is about w_k / 820; compare halves of the range
    heavy = (neg["item_id"] >= 30).mean()
    assert heavy == pytest.approx((21 + 40) * 20 / 2 / 820, abs=0.05)    # 0.744


def test_uniform_negatives_spread_evenly_over_untouched_items():
    examples, candidates = _many_users()
    neg = negatives.sample_negatives(examples, 0.5, candidates, None, seed=0)
    counts = neg["item_id"].value_counts().reindex(range(10, 50), fill_value=0)
    assert len(neg) == 2000 and counts.sum() == 2000
    assert counts.min() > 25 and counts.max() < 75            # 50 expected per item


def test_negatives_depend_only_on_the_seed_and_the_users_own_rows():
    examples, candidates = _many_users(n_users=40)
    probs = np.full(len(candidates), 1 / len(candidates))
    whole = negatives.sample_negatives(examples, 1.0, candidates, probs, seed=5)
    halves = pd.concat([negatives.sample_negatives(part, 1.0, candidates, probs, seed=5)
                        for part in (examples[examples["user_id"] % 2 == 0],
                                     examples[examples["user_id"] % 2 == 1])])
    pd.testing.assert_frame_equal(whole, halves.sort_values("user_id", kind="stable")
                                  .reset_index(drop=True))
    other = negatives.sample_negatives(examples, 1.0, candidates, probs, seed=6)
    assert not whole["item_id"].equals(other["item_id"])


def test_per_user_split_follows_recbole_counts():
    """RecBole's RS [0.8, 0.1, 0.1] grouped by user: valid and test get int(0.1 n) of each
    user's pairs, a user with 0 < 0.1 n < 1 still gives one to each while train keeps > 1."""
    assert splits.split_counts(np.array([100, 25, 9, 3, 2, 1]), [0.8, 0.1, 0.1]).tolist() == [
        [80, 10, 10], [21, 2, 2], [7, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 0]]
    rng = np.random.default_rng(1)
    user = np.repeat(np.arange(50), 40)
    item = np.concatenate([rng.choice(500, 40, replace=False) for _ in range(50)])
    user, item = np.concatenate([user, user[:30]]), np.concatenate([item, item[:30]])  # repeats
    a = splits.random_per_user_split(user, item, [0.8, 0.1, 0.1], seed=5)
    assert (a == splits.random_per_user_split(user[::-1], item[::-1], [0.8, 0.1, 0.1], 5)[::-1]).all()
    frame = pd.DataFrame({"u": user, "i": item, "s": a})
    assert (frame.groupby(["u", "i"])["s"].nunique() == 1).all()      # a pair never straddles
    per_user = frame.drop_duplicates(["u", "i"]).groupby("u")["s"].value_counts().unstack()
    assert (per_user[0] == 32).all() and (per_user[1] == 4).all() and (per_user[2] == 4).all()
    assert not (a == splits.random_per_user_split(user, item, [0.8, 0.1, 0.1], seed=6)).all()
