"""Schema errors and quarantine accounting: rows in = rows kept + rows quarantined."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.config import ValidationConfig
from recfunnel.data import files, schema, sources
from recfunnel.data.validation import DataSourceError, SchemaError, SeenEvents, validate_table

RULES = ValidationConfig(max_timestamp="2030-01-01")


def events(n=6, **cols):
    base = {
        "user_id": np.arange(1, n + 1), "item_id": np.arange(10, 10 + n),
        "timestamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
        "click": [1] * n, "like": [0] * n, "share": [0] * n,
        "watch_seconds": [5.0] * n, "duration_seconds": [10.0] * n,
    }
    base.update(cols)
    return pd.DataFrame(base)


def test_clean_table_is_kept_whole_with_schema_types():
    result = validate_table(events(), schema.EVENTS, RULES)
    assert len(result.kept) == 6 and len(result.quarantined) == 0
    kept = result.kept
    assert str(kept["user_id"].dtype) == "int64"
    assert str(kept["click"].dtype) == "int8"
    assert str(kept["timestamp"].dtype) == "datetime64[ns, UTC]"


@pytest.mark.parametrize("missing", ["user_id", "item_id", "timestamp", "click"])
def test_missing_required_column_names_it_and_its_type(missing):
    with pytest.raises(SchemaError, match=f"'{missing}' \\({schema.EVENTS.column(missing).kind}\\)"):
        validate_table(events().drop(columns=[missing]), schema.EVENTS, RULES)


def test_optional_columns_may_be_absent():
    frame = events().drop(columns=["like", "share", "watch_seconds", "duration_seconds"])
    result = validate_table(frame, schema.EVENTS, RULES)
    assert len(result.kept) == 6
    assert (result.kept["like"] == 0).all() and result.kept["watch_seconds"].isna().all()


@pytest.mark.parametrize("column,values,expected", [
    ("user_id", ["a", "b", "c", "d", "e", "f"], "expected integer"),
    ("timestamp", [True] * 6, "expected UTC timestamp"),
    ("watch_seconds", ["x"] * 6, "expected float"),
    ("click", pd.date_range("2026-01-01", periods=6, tz="UTC"), "expected binary 0/1"),
])
def test_unusable_column_type_is_a_schema_error(column, values, expected):
    with pytest.raises(SchemaError, match=f"column '{column}'.*{expected}"):
        validate_table(events(**{column: values}), schema.EVENTS, RULES)


def test_bad_rows_are_quarantined_with_one_reason_each():
    frame = events(
        n=10,
        user_id=[1, None, 3, 4, 5, 6, 7, 8, 9, "x"],
        item_id=[1, 2, np.nan, 4, 5, 6, 7, 8, 9, 10],
        timestamp=["2026-01-01", "2026-01-01", "2026-01-01", "1970-01-01", "2026-01-01",
                   "2026-01-01", "2026-01-01", "2026-01-01", "not a date", "2026-01-01"],
        click=[1, 1, 1, 1, 2, 1, 1, 1, 1, 1],
        watch_seconds=[5, 5, 5, 5, 5, -3, 50, 5, 5, 5],
        duration_seconds=[10, 10, 10, 10, 10, 10, 10, -1, 10, 10],
    )
    result = validate_table(frame, schema.EVENTS, RULES)
    assert result.reasons == {
        "null_user_id": 1, "null_item_id": 1, "timestamp_out_of_range": 1, "click_not_binary": 1,
        "negative_watch_seconds": 1, "watch_exceeds_duration": 1, "nonpositive_duration": 1,
        "timestamp_not_timestamp": 1, "user_id_not_integer": 1,
    }
    assert len(result.kept) == 1 and result.kept["user_id"].tolist() == [1]
    assert len(result.kept) + len(result.quarantined) == len(frame)
    assert result.quarantined["row"].tolist() == list(range(1, 10))


def test_nans_in_a_float_id_column_and_fractional_ids():
    result = validate_table(events(user_id=[1.0, 2.5, np.nan, 4.0, 5.0, 6.0]), schema.EVENTS, RULES)
    assert result.reasons == {"null_user_id": 1, "user_id_not_integer": 1}
    assert result.kept["user_id"].dtype == np.int64


def test_timestamps_from_epoch_seconds_and_naive_datetimes_are_utc():
    epoch = validate_table(events(timestamp=[1767225600] * 6), schema.EVENTS, RULES).kept
    naive = validate_table(events(timestamp=pd.to_datetime(["2026-01-01"] * 6)), schema.EVENTS,
                           RULES).kept
    assert (epoch["timestamp"] == pd.Timestamp("2026-01-01", tz="UTC")).all()
    assert (naive["timestamp"] == epoch["timestamp"]).all()


def test_unknown_items_are_quarantined_when_a_catalogue_is_given():
    result = validate_table(events(), schema.EVENTS, RULES, known_items=np.array([10, 11, 12]))
    assert result.reasons == {"item_not_in_catalogue": 3}


def test_duplicate_user_rows_are_quarantined():
    users = pd.DataFrame({"user_id": [1, 2, 2], "age": [30, 40, 41], "gender": ["F", "M", "M"],
                          "location": ["US", "DE", "DE"]})
    result = validate_table(users, schema.USERS, RULES)
    assert result.reasons == {"duplicate_user_id": 1} and result.kept["age"].tolist() == [30, 40]


def test_unsafe_flag_parses_booleans_and_absence_means_safe():
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "unsafe": ["true", "0", None, "maybe"]})
    result = validate_table(items, schema.ITEMS, RULES)
    assert result.kept["unsafe"].tolist() == [True, False, False]
    assert result.reasons == {"unsafe_not_boolean": 1}


# ---- files ------------------------------------------------------------------------------------

def test_empty_file_is_named(tmp_path):
    empty = tmp_path / "events.csv"
    empty.write_text("")
    with pytest.raises(DataSourceError, match="events.csv: file is empty"):
        list(files.iter_chunks(empty))


def test_truncated_parquet_is_named(tmp_path):
    good = tmp_path / "good.parquet"
    events(n=1000).to_parquet(good)
    data = good.read_bytes()
    bad = tmp_path / "events.parquet"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataSourceError, match="events.parquet: not a readable parquet file"):
        list(files.iter_chunks(bad))


def test_header_only_csv_gives_a_clear_error_after_validation(tmp_path):
    (tmp_path / "events.csv").write_text(",".join(events().columns) + "\n")
    raw = sources.RawTables("parquet", "test", tmp_path / "events.csv")
    with pytest.raises(DataSourceError, match="no usable events"):
        sources.validate_source(raw, tmp_path / "out", RULES, progress=False)


def test_source_accounting_over_many_chunks(tmp_path):
    folder = tmp_path / "in" / "events"
    folder.mkdir(parents=True)
    frame = events(n=50, watch_seconds=[5.0] * 45 + [-1.0] * 5)
    frame.iloc[:25].to_parquet(folder / "a.parquet")
    frame.iloc[25:].to_csv(folder / "b.csv", index=False)
    raw = sources.RawTables("parquet", "test", folder)
    section = sources.validate_source(raw, tmp_path / "out", RULES, progress=False)
    v = section["validation"]["events"]
    assert (v["rows_in"], v["rows_kept"], v["rows_quarantined"]) == (50, 45, 5)
    assert section["quarantined_by_reason"] == {"negative_watch_seconds": 5}
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert len(quarantine) == 5 and set(quarantine["reason"]) == {"negative_watch_seconds"}
    assert len(pd.read_parquet(tmp_path / "out" / "events")) == 45


def test_seen_events_finds_copies_across_chunks_as_a_set_would():
    # Rows drawn from 50 distinct events in chunks of 40: a row is a copy when an equal row came
    # earlier, in its chunk or in any chunk before (the reference: a Python set of the rows).
    rng = np.random.default_rng(3)
    pool = pd.DataFrame({"user_id": rng.integers(1, 6, 50), "item_id": np.arange(50)})
    seen, reference = SeenEvents(), set()
    for _ in range(5):
        chunk = pool.iloc[rng.integers(0, 50, 40)].reset_index(drop=True)
        copies, hashes = seen.copies(chunk)
        seen.add(hashes[~copies])
        expected = []
        for row in chunk.itertuples(index=False):
            expected.append(tuple(row) in reference)
            reference.add(tuple(row))
        assert copies.tolist() == expected
