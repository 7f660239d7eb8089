"""The synthetic platform: deterministic, and its planted properties are present in the logs."""
import hashlib
from pathlib import Path

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recfunnel.config import ValidationConfig
from recfunnel.data import sources, synthetic


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory, small_synthetic):
    out = tmp_path_factory.mktemp("synthetic")
    info = synthetic.generate(small_synthetic, out, progress=False)
    return out, info


@pytest.fixture(scope="module")
def logs(generated):
    out, _ = generated
    events = pd.read_parquet(out / "events")
    truth = pd.read_parquet(out / "truth" / "items_truth.parquet")
    return events.merge(truth, on="item_id", how="left", suffixes=("", "_item"))


def test_same_seed_same_bytes_and_another_seed_differs(generated, small_synthetic, tmp_path):
    out, _ = generated
    synthetic.generate(small_synthetic, tmp_path / "again", progress=False)
    assert _digest(out) == _digest(tmp_path / "again")
    other = small_synthetic.__class__(**{**small_synthetic.__dict__, "seed": 8})
    synthetic.generate(other, tmp_path / "other", progress=False)
    assert _digest(out)["events/part-0000-000.parquet"] != \
        _digest(tmp_path / "other")["events/part-0000-000.parquet"]


def test_event_count_and_chunked_partitions(generated, small_synthetic):
    out, info = generated
    parts = sorted((out / "events").glob("*.parquet"))
    assert info["events"] == small_synthetic.n_events
    assert sum(len(pd.read_parquet(p)) for p in parts) == small_synthetic.n_events
    # 20k events over 10 days with at most 1,500 a chunk: several files a day
    assert len(parts) > small_synthetic.n_days
    assert max(len(pd.read_parquet(p)) for p in parts) <= small_synthetic.max_events_per_chunk


def test_item_exposure_follows_a_power_law(logs):
    counts = np.sort(logs["item_id"].value_counts().to_numpy())[::-1]
    top_decile_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile_share > 0.4, top_decile_share
    ranks = np.arange(1, len(counts) + 1)
    head = slice(0, len(counts) // 2)
    slope = np.polyfit(np.log(ranks[head]), np.log(counts[head]), 1)[0]
    assert -2.5 < slope < -0.5, slope


def test_clickbait_is_clicked_more_and_watched_less(logs):
    bait = logs[logs["is_clickbait"] == True]  # noqa: E712
    honest = logs[logs["is_clickbait"] == False]  # noqa: E712
    assert bait["click"].mean() > honest["click"].mean() + 0.1
    frac = lambda f: (f["watch_seconds"] / f["duration_seconds"])[f["click"] == 1].mean()  # noqa: E731
    assert frac(bait) < 0.5 * frac(honest)


def test_watch_75_favours_short_items(logs):
    clicked = logs[(logs["click"] == 1) & (logs["watch_seconds"] >= 0)]
    watched_75 = clicked["watch_seconds"] >= 0.75 * clicked["duration_seconds"]
    short = clicked["duration_seconds"] < 60
    long = clicked["duration_seconds"] > 900
    assert watched_75[short].mean() > 2 * watched_75[long].mean()


def test_duplicates_unsafe_and_clickbait_in_configured_shares(generated, small_synthetic):
    out, _ = generated
    items = pd.read_parquet(out / "truth" / "items_truth.parquet")
    n = small_synthetic.n_items
    assert items["is_duplicate"].sum() == round(small_synthetic.duplicate_share * n)
    for share, column in ((small_synthetic.unsafe_share, "is_unsafe"),
                          (small_synthetic.clickbait_share, "is_clickbait")):
        k = items[column].sum()
        assert abs(k - share * n) <= 4 * np.sqrt(n * share * (1 - share)) + 1, (column, k)
    assert not (items["unsafe"] & ~items["is_unsafe"]).any(), "a flag on a safe item"
    copies = items[items["is_duplicate"]].merge(items, left_on="canonical_id", right_on="item_id",
                                                suffixes=("", "_orig"))
    assert (copies["creator"] == copies["creator_orig"]).all()
    assert (copies["duration_seconds"] == copies["duration_seconds_orig"]).all()
    assert (copies["upload_day"] > copies["upload_day_orig"]).all()
    assert not items.loc[~items["is_duplicate"], "canonical_id"].ne(
        items.loc[~items["is_duplicate"], "item_id"]).any()
    # the same content: same vector, hence the same true relevance for everyone
    world = synthetic.World.load(out / "truth")
    rel = world.true_relevance(np.zeros(len(copies), int), copies["item_id"] - 1, 3)
    rel_orig = world.true_relevance(np.zeros(len(copies), int), copies["item_id_orig"] - 1, 3)
    np.testing.assert_allclose(rel, rel_orig)


def test_public_tables_hide_the_truth(generated):
    out, _ = generated
    assert set(pd.read_parquet(out / "items.parquet").columns) == \
        {"item_id", "category", "creator", "title", "duration_seconds", "unsafe"}
    assert set(pd.read_parquet(out / "users.parquet").columns) == \
        {"user_id", "age", "gender", "location"}


def test_tastes_drift_and_the_world_reloads(generated, small_synthetic):
    out, _ = generated
    world = synthetic.World.load(out / "truth")
    users = np.arange(small_synthetic.n_users)
    start, end = world.taste(users, 0), world.taste(users, small_synthetic.n_days)
    cos = (start * end).sum(axis=1)
    assert np.median(cos) < 0.99
    fresh = synthetic.build_world(small_synthetic)
    np.testing.assert_array_equal(fresh.item_vec, world.item_vec)
    pd.testing.assert_frame_equal(fresh.items.reset_index(drop=True), world.items)


def test_weak_group_is_noisy_and_poorly_served_by_exposure(generated, small_synthetic):
    """The planted weak group answers noisily (its clicks follow its relevance less than the
    same users' clicks without the noise) and wants what the platform shows least (the most
    exposed items give it a smaller share of what it could have than they give the others)."""
    out, _ = generated
    world = synthetic.World.load(out / "truth")
    weak = np.flatnonzero(world.user_truth["weak_group"].to_numpy())
    strong = np.flatnonzero(~world.user_truth["weak_group"].to_numpy())
    assert len(weak) > 0
    items = np.random.default_rng(0).integers(0, small_synthetic.n_items, 20_000)
    users = np.random.default_rng(1).choice(weak, len(items))
    quiet = dataclasses.replace(world, config=dataclasses.replace(world.config,
                                                                  weak_group_noise=0.0))

    def click_relevance_corr(w):
        clicks = w.respond(users, items, 0, np.random.default_rng(2))["click"]
        return np.corrcoef(clicks, w.true_relevance(users, items, 0))[0, 1]

    assert click_relevance_corr(world) < 0.8 * click_relevance_corr(quiet)
    top = np.argsort(-world.item_truth["exposure"].to_numpy())[:50]
    relevance = world.relevance_matrix(np.arange(len(world.users)), 0)
    # what the most exposed items give each user, as a share of the user's own best 50
    share = relevance[:, top].mean(axis=1) / -np.sort(-relevance, axis=1)[:, :50].mean(axis=1)
    assert share[weak].mean() < share[strong].mean() - 0.02


def test_injected_bad_rows_are_exactly_the_quarantine(tmp_path, small_synthetic):
    from recfunnel.config import DataConfig

    cfg = small_synthetic.__class__(**{**small_synthetic.__dict__, "bad_row_share": 0.01})
    raw = sources.materialize(DataConfig(synthetic=cfg), tmp_path, cache_dir=tmp_path / "cache",
                              progress=False)
    section = sources.validate_source(raw, tmp_path / "data", ValidationConfig(), progress=False)
    injected = {k: v for k, v in section["bad_rows_injected"].items() if v}
    assert sum(injected.values()) > 100
    assert section["quarantined_by_reason"] == injected
    assert section["events"] + section["quarantined_rows"] == cfg.n_events
    assert (tmp_path / "data" / "truth" / "world.json").is_file()
