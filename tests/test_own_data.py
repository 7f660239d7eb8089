"""Your own logs, right the first time (issue 17): each case of a corpus of awkward files, and
docs/own_data.md run as written on a small rating log in its layout.

The corpus: day-first dates, epoch milliseconds, a stated strftime format, ratings as signals,
renamed columns, no users or items file, exact copies of events across files and chunks (also
where chunks read a column as different dtypes), row numbers past a chunk boundary, a catalogue
the title classifier cannot learn from, sequels and remakes that share a title.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from recfunnel import preflight
from recfunnel.config import ConfigError, DataConfig, ValidationConfig, load_config
from recfunnel.data import files, sources
from recfunnel.data.validation import SchemaError
from recfunnel.evaluation.slices import slice_metrics, user_groups, worst_groups

RULES = ValidationConfig(max_timestamp="2030-01-01")
MAPPING = {"userId": "user_id", "movieId": "item_id", "genres": "category"}


def write_rating_log(folder: Path, n_users=80, n_items=60, per_user=25, seed=0) -> Path:
    """A rating log in MovieLens' current CSV layout: ratings.csv (userId, movieId, rating,
    timestamp in epoch seconds) and movies.csv (movieId, title, genres); no users file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    titles = [f"Movie {chr(65 + i % 26)}{i // 26} ({1980 + i % 40})" for i in range(n_items)]
    titles[:6] = ["Hamlet (1948)", "Hamlet (1996)", "Human Condition I, The (1959)",
                  "Human Condition II, The (1959)", "Toy Story (1995)", "Toy Story (1995)"]
    pd.DataFrame({"movieId": np.arange(1, n_items + 1), "title": titles,
                  "genres": rng.choice(["Drama", "Comedy|Drama", "Action"], n_items)}
                 ).to_csv(folder / "movies.csv", index=False)
    popularity = rng.zipf(1.3, n_items).astype(float)
    popularity /= popularity.sum()
    rows = []
    for user in range(1, n_users + 1):
        items = rng.choice(n_items, per_user, replace=False, p=popularity) + 1
        stamps = 1_700_000_000 + np.sort(rng.integers(0, 40 * 86400, per_user))
        rows.append(pd.DataFrame({"userId": user, "movieId": items,
                                  "rating": rng.choice(np.arange(1, 11) / 2, per_user),
                                  "timestamp": stamps}))
    pd.concat(rows).to_csv(folder / "ratings.csv", index=False)
    return folder


def recfunnel(*args, cwd, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recfunnel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def own_source(tmp_path, events: pd.DataFrame, items: pd.DataFrame | None = None, **data):
    """`events` (and items) as CSV files of a parquet-source folder, validated into out/."""
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    events.to_csv(folder / "events.csv", index=False)
    if items is not None:
        items.to_csv(folder / "items.csv", index=False)
    cfg = DataConfig(source="parquet", path=str(folder), **data)
    raw = sources.materialize(cfg, tmp_path)
    return sources.validate_source(raw, tmp_path / "out", RULES, progress=False)


def ratings(n=6, **cols) -> pd.DataFrame:
    base = {"userId": np.arange(1, n + 1), "movieId": np.arange(10, 10 + n),
            "rating": [4.5, 2.0, 4.0, 1.0, 5.0, 3.5][:n] * (n // 6 + 1),
            "timestamp": 1_767_225_600 + np.arange(n) * 3600}
    base["rating"] = base["rating"][:n]
    base.update(cols)
    return pd.DataFrame(base)


def events_out(tmp_path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "out" / "events").sort_values("user_id").reset_index(drop=True)


# ---- 1. dates: never guessed -------------------------------------------------------------------

def test_day_first_text_is_refused_naming_the_setting(tmp_path):
    days = ["03/04/2026", "25/04/2026", "01/05/2026", "12/05/2026", "13/05/2026", "02/06/2026"]
    with pytest.raises(SchemaError, match=r"day and month.*data\.timestamp_format.*%d/%m/%Y"):
        own_source(tmp_path, ratings(timestamp=days), columns=MAPPING, rating_signals={"like": 4})


def test_a_stated_day_first_format_reads_every_date_right(tmp_path):
    days = ["03/04/2026", "25/04/2026", "01/05/2026", "12/05/2026", "13/05/2026", "02/06/2026"]
    own_source(tmp_path, ratings(timestamp=days), columns=MAPPING, rating_signals={"like": 4},
               timestamp_format="%d/%m/%Y")
    got = events_out(tmp_path)["timestamp"].dt.strftime("%d/%m/%Y").tolist()
    assert got == days                          # the 3rd of April, not the 4th of March


def test_text_that_misses_the_stated_format_is_quarantined_with_its_row(tmp_path):
    days = ["03/04/2026 10:00", "2026-04-25", "01/05/2026 11:30", "12/05/2026 00:00",
            "13/05/2026 08:15", "02/06/2026 23:59"]
    section = own_source(tmp_path, ratings(timestamp=days), columns=MAPPING,
                         rating_signals={"like": 4}, timestamp_format="%d/%m/%Y %H:%M")
    assert section["quarantined_by_reason"] == {"timestamp_not_timestamp": 1}
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine")
    assert quarantine["row"].tolist() == [1] and quarantine["timestamp"].tolist() == ["2026-04-25"]


def test_epoch_milliseconds_are_refused_as_milliseconds_and_read_when_stated(tmp_path):
    ms = 1_767_225_600_000 + np.arange(6) * 3_600_000
    with pytest.raises(SchemaError, match=r"epoch milliseconds; set data\.timestamp_format: "
                                          r"epoch_ms"):
        own_source(tmp_path, ratings(timestamp=ms), columns=MAPPING, rating_signals={"like": 4})
    own_source(tmp_path, ratings(timestamp=ms), columns=MAPPING, rating_signals={"like": 4},
               timestamp_format="epoch_ms")
    assert events_out(tmp_path)["timestamp"].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")


def test_iso_8601_with_offsets_and_epoch_seconds_are_read_by_default(tmp_path):
    iso = ["2026-01-01T01:00:00+01:00", "2026-01-01", "2026-01-01 00:00", "2026-01-01T00:00:00Z",
           "1767225600", "2025-12-31T19:00:00-05:00"]
    own_source(tmp_path, ratings(timestamp=iso), columns=MAPPING, rating_signals={"like": 4})
    assert (events_out(tmp_path)["timestamp"] == pd.Timestamp("2026-01-01", tz="UTC")).all()


def test_unknown_timestamp_format_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown data\.timestamp_format 'dd/mm/yyyy'; "
                                          "expected one of auto, .* or a strftime pattern"):
        load_config(None, {"data": {"timestamp_format": "dd/mm/yyyy"}})


# ---- 1. ratings as signals, column names -------------------------------------------------------

def test_ratings_become_signals_by_the_settings(tmp_path):
    section = own_source(tmp_path, ratings(), columns=MAPPING, rating_signals={"like": 4})
    out = events_out(tmp_path)
    assert out["like"].tolist() == [1, 0, 1, 0, 1, 0]        # rating >= 4
    assert out["click"].tolist() == [1] * 6 and out["rating"].tolist()[0] == 4.5
    assert section["derived"][:2] == ["like = rating >= 4",
                                      "click = 1 for every rated event (a rating is an interaction)"]


def test_a_signal_given_twice_is_refused(tmp_path):
    with pytest.raises(SchemaError, match="have a 'like' column and data.rating_signals derives"):
        own_source(tmp_path, ratings(like=[1] * 6), columns=MAPPING, rating_signals={"like": 4})


def test_without_mapping_the_missing_columns_are_named_with_the_settings_that_map_them(tmp_path):
    with pytest.raises(SchemaError, match=r"missing required column\(s\) 'user_id'.*data\.columns"
                                          r".*data\.rating_signals"):
        own_source(tmp_path, ratings())


def test_a_mapped_column_no_file_has_stops_the_run_before_any_step(tmp_path):
    folder = write_rating_log(tmp_path / "logs", n_users=5, n_items=8, per_user=3)
    done = recfunnel("pipeline", "run", "-q", "--set", "data.source=parquet",
                     "--set", f"data.path={folder}", "--set", f"run.runs_dir={tmp_path / 'runs'}",
                     "--set", "data.files={events: ratings.csv, items: movies.csv}",
                     "--set", "data.columns={userid: user_id, movieId: item_id}",
                     "--set", "data.rating_signals={like: 4}", "--set", "run.name=r", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "data.columns maps 'userid', a column none of your files has" in done.stderr
    assert not (tmp_path / "runs" / "r" / "data").exists()


# ---- 1. optional users and items ---------------------------------------------------------------

def test_without_users_and_items_files_both_are_derived_and_said(tmp_path):
    section = own_source(tmp_path, ratings(), columns=MAPPING, rating_signals={"like": 4})
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert sorted(users["user_id"]) == list(range(1, 7)) and users["age"].isna().all()
    assert sorted(items["item_id"]) == list(range(10, 16)) and not items["unsafe"].any()
    derived = " ".join(section["derived"])
    assert "no users file" in derived and "no items file" in derived
    warnings = " ".join(section["warnings"])
    assert "slices by age_band, gender, location are skipped" in warnings
    assert "items have no titles" in warnings


# ---- 3. exact duplicate events -----------------------------------------------------------------

def test_exact_copies_are_quarantined_across_files_and_chunks_and_counted(tmp_path):
    folder = tmp_path / "in" / "events"
    folder.mkdir(parents=True)
    log = ratings(n=12)
    copies = pd.concat([log.iloc[[0, 0, 3]], log.iloc[[5]].assign(timestamp=1_767_300_000)])
    pd.concat([log, log.iloc[[1]]]).to_csv(folder / "a.csv", index=False)   # a copy inside
    copies.to_csv(folder / "b.csv", index=False)        # two copies of 0, one of 3; 5 re-rated
    raw = sources.materialize(DataConfig(source="parquet", path=str(tmp_path / "in"),
                                         columns=MAPPING, rating_signals={"like": 4}), tmp_path)
    section = sources.validate_source(raw, tmp_path / "out", RULES, progress=False, batch_rows=5)
    assert section["quarantined_by_reason"] == {"duplicate_event": 4}
    assert section["duplicate_events"] == 4 and section["events"] == 13    # the re-rating stays
    quarantine = pd.read_parquet(tmp_path / "out" / "quarantine").sort_values(["source", "row"])
    assert list(zip(quarantine["source"], quarantine["row"])) == [("a.csv", 12), ("b.csv", 0),
                                                                 ("b.csv", 1), ("b.csv", 2)]


def test_exact_copies_are_caught_whatever_dtype_each_chunk_reads_a_column_as(tmp_path):
    """Each chunk of a CSV infers its own dtypes: the rating "4" is an integer in a chunk of
    whole ratings and a float in one with a 4.5; a column empty in one chunk is float there and
    text in the next. Copies are the same copies for every chunk size."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "events.csv").write_text(
        "userId,movieId,rating,device,timestamp\n1,10,4,,1767225600\n2,11,3,,1767225600\n"
        "3,12,5,,1767225600\n1,10,4,,1767225600\n4,13,4.5,ios,1767225600\n2,11,3,,1767225600\n")
    raw = sources.materialize(DataConfig(source="parquet", path=str(folder), columns=MAPPING,
                                         rating_signals={"like": 4}), tmp_path)
    rows = {}
    for batch_rows in range(1, 8):
        section = sources.validate_source(raw, tmp_path / "out", RULES, progress=False,
                                          batch_rows=batch_rows)
        parts = sorted((tmp_path / "out" / "quarantine").glob("*.parquet"))
        quarantined = [r for p in parts for r in pd.read_parquet(p)["row"]]
        rows[batch_rows] = (section["duplicate_events"], tuple(sorted(quarantined)))
    assert set(rows.values()) == {(2, (3, 5))}, rows       # rows 3 and 5 copy rows 0 and 1


# ---- 7. row numbers count within the file -------------------------------------------------------

def test_quarantine_rows_are_numbered_within_the_file_past_chunk_boundaries(tmp_path):
    log = ratings(n=12, rating=[4.0] * 12)
    log.loc[[2, 7, 11], "userId"] = -1.5                    # not integers, in chunks 0, 1, 2
    section = own_source(tmp_path, log, columns=MAPPING, rating_signals={"like": 4})
    assert section["quarantined_by_reason"] == {"user_id_not_integer": 3}
    raw = sources.RawTables("parquet", "test", tmp_path / "in" / "events.csv",
                            reading=sources.ImportSettings(MAPPING, rating_signals={"like": 4}))
    sources.validate_source(raw, tmp_path / "chunked", RULES, progress=False, batch_rows=4)
    quarantine = pd.read_parquet(tmp_path / "chunked" / "quarantine")
    assert sorted(quarantine["row"]) == [2, 7, 11]
    assert [c.first_row for c in files.iter_chunks(tmp_path / "in" / "events.csv", 4)] == [0, 4, 8]


# ---- 2. defaults that adapt, given settings that must run --------------------------------------

def rating_run(tmp_path, *extra, files="{events: ratings.csv, items: movies.csv}"):
    """data,dataset on a rating log (movies without flags, year column or creator)."""
    folder = write_rating_log(tmp_path / "logs", n_users=40, n_items=30, per_user=12)
    return recfunnel("pipeline", "run", "-q", "--steps", "data,dataset",
                     "--set", "data.source=parquet", "--set", f"data.path={folder}",
                     "--set", f"data.files={files}",
                     "--set", "data.columns={userId: user_id, movieId: item_id}",
                     "--set", "data.rating_signals={like: 4}", "--set", "run.name=r",
                     "--set", f"run.runs_dir={tmp_path / 'runs'}",
                     "--set", "dataset.split=random_per_user", "--set", "dataset.window_days=null",
                     "--set", "dataset.active_min_events=3", *extra, cwd=tmp_path)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """A rating log through data,dataset with the default filters: (process, run folder)."""
    root = tmp_path_factory.mktemp("defaults")
    return rating_run(root), root / "runs" / "r"


def test_the_default_title_classifier_is_skipped_with_a_warning_where_nothing_is_flagged(
        default_run):
    done, run = default_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recfunnel: warning: dataset: unsafe filter 'title_classifier' skipped: needs at " \
           "least 5 flagged" in done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert any("title_classifier" in w for w in summary["dataset"]["warnings"])
    page = (run / "report.html").read_text()
    assert '<div class="warnings"' in page and "title_classifier" in page
    # only our own words: no traceback, no start-up notes of TensorFlow, absl or Merlin
    assert [line for line in done.stderr.splitlines()
            if line.strip() and not line.startswith("recfunnel: warning: ")] == []


def test_duplicate_detection_without_blocking_columns_says_titles_alone_decide(default_run):
    done, run = default_run
    warnings = json.loads((run / "summary.json").read_text())["dataset"]["warnings"]
    assert any("compares titles only" in w and "year" in w for w in warnings)
    mapping = pd.read_parquet(run / "dataset" / "artifacts" / "canonical_items.parquet")
    copies = mapping[mapping["item_id"] != mapping["canonical_id"]]
    assert copies.to_dict("list") == {"item_id": [6], "canonical_id": [5], "group_size": [2]} \
        or copies.to_dict("list") == {"item_id": [5], "canonical_id": [6], "group_size": [2]}


def test_a_log_alone_without_users_or_items_files_goes_through_the_dataset_step(tmp_path):
    """The dataset step once stopped on '<run>/data/items.parquet': no such file."""
    done = rating_run(tmp_path, files="{events: ratings.csv}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["dataset"]["splits"]["train"] > 0
    assert "duplicate detection skipped: the catalogue has no titles" in \
        summary["dataset"]["warnings"]
    assert any(d.startswith("items: no items file") for d in summary["data"]["derived"])
    assert "Traceback" not in done.stderr


def test_a_given_title_classifier_that_cannot_run_is_exit_2_before_any_step(tmp_path):
    done = rating_run(tmp_path, "--set", "dataset.unsafe_filters=[{kind: title_classifier}]")
    assert done.returncode == 2
    assert "setting dataset.unsafe_filters: filter 'title_classifier' cannot run" in done.stderr
    assert not (tmp_path / "runs" / "r" / "data").exists()     # refused before the data step


def test_preflight_refuses_only_given_settings():
    items = pd.DataFrame({"item_id": [1, 2], "title": ["a", "b"], "unsafe": [False, False]})
    default = load_config(None, {})
    preflight.check_dataset_settings(default, items)                 # defaults: no error
    given = load_config(None, {"dataset": {"unsafe_filters": [{"kind": "title_classifier"}]}})
    with pytest.raises(ConfigError, match="dataset.unsafe_filters"):
        preflight.check_dataset_settings(given, items)
    written_out = load_config(None, {"dataset": {"unsafe_filters": default.dataset.unsafe_filters}})
    preflight.check_dataset_settings(written_out, items)   # the default, written out: a default


def test_a_given_title_similarity_without_titles_is_refused_naming_it():
    items = pd.DataFrame({"item_id": [1, 2], "title": [None, None], "unsafe": [False, False]})
    preflight.check_dataset_settings(load_config(None, {}), items)     # the default: skipped
    given = load_config(None, {"dataset": {"duplicate_title_similarity": 0.8,
                                           "unsafe_filters": [{"kind": "flag"}]}})
    with pytest.raises(ConfigError, match=r"setting dataset\.duplicate_title_similarity: the "
                                          "items have no titles"):
        preflight.check_dataset_settings(given, items)


def test_an_unknown_unsafe_filter_stops_any_run_with_a_dataset_step(tmp_path):
    """Also where the catalogue is not known before the run (the synthetic source)."""
    bad = load_config(None, {"dataset": {"unsafe_filters": [{"kind": "nsfw"}]}})
    with pytest.raises(ConfigError, match="unsafe filter kind 'nsfw' is unknown"):
        preflight.check(bad, tmp_path / "run", ("data", "dataset"))


def test_slices_without_their_attribute_are_left_out_not_filled_with_unknown():
    users = pd.DataFrame({"user_id": np.arange(90), "age": np.nan, "gender": None,
                          "location": ["US", "DE", "FR"] * 30})
    groups = user_groups(np.arange(90), users, pd.Series(np.arange(90) % 7, index=np.arange(90)))
    assert set(groups.columns) == {"user_id", "location", "activity"}
    per_user = pd.DataFrame({"user_id": np.arange(90), "recall@10": np.linspace(0, 1, 90)})
    table = slice_metrics(per_user, groups, min_users=10)
    assert "unknown" not in set(worst_groups(table)["group"])


# ---- 3. duplicate items: numbers never merge ---------------------------------------------------

@pytest.mark.parametrize("first,second", [
    ("Human Condition I, The", "Human Condition II, The"),
    ("Volume I", "Volume II"), ("Rocky IV", "Rocky V"), ("part ii", "part iii"),
    ("Hamlet (1948)", "Hamlet (1996)"), ("The Godfather Part Two", "The Godfather Part Three"),
])
def test_titles_whose_numbers_differ_are_never_one_item(first, second):
    from recfunnel.workflows.duplicates import canonical_ids

    items = pd.DataFrame({"item_id": [1, 2], "title": [first, second]})
    mapping = canonical_ids(items, min_similarity=0.5)
    assert mapping["canonical_id"].tolist() == [1, 2]


def test_same_title_with_the_same_numbers_is_one_item_in_any_case():
    from recfunnel.workflows.duplicates import canonical_ids

    items = pd.DataFrame({"item_id": [1, 2, 3], "title": ["Rocky IV", "rocky iv", "Rocky IV (HD)"]})
    assert canonical_ids(items)["canonical_id"].tolist() == [1, 1, 1]


def test_year_is_a_blocking_column():
    from recfunnel.workflows.duplicates import BLOCK_COLUMNS, canonical_ids

    assert "year" in BLOCK_COLUMNS
    items = pd.DataFrame({"item_id": [1, 2], "title": ["Psycho", "Psycho"], "year": [1960, 1998]})
    assert canonical_ids(items)["canonical_id"].tolist() == [1, 2]


def test_synthetic_reuploads_are_still_found(tmp_path, small_synthetic):
    from recfunnel.data import synthetic, truth_audit
    from recfunnel.workflows.duplicates import canonical_ids

    synthetic.generate(small_synthetic, tmp_path / "w", progress=False)
    world = synthetic.World.load(tmp_path / "w" / "truth")
    found = truth_audit.duplicate_detection(
        canonical_ids(pd.read_parquet(tmp_path / "w" / "items.parquet")), world)
    assert found["pairs_true"] > 0
    assert found["precision"] == 1.0 and found["recall"] >= 0.9


# ---- docs/own_data.md, as written ---------------------------------------------------------------

def doc_blocks(kind: str) -> list[str]:
    text = (REPO / "docs" / "own_data.md").read_text()
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.S)


@pytest.mark.training
@pytest.mark.server
def test_own_data_doc_runs_a_rating_log_into_a_full_run(tmp_path):
    write_rating_log(tmp_path / "my_ratings")
    (tmp_path / "my_ratings.yaml").write_text(doc_blocks("yaml")[0])
    commands = [line.split() for block in doc_blocks("sh") for line in block.splitlines()
                if line.startswith("recfunnel ")]
    assert [c[:3] for c in commands] == [["recfunnel", "pipeline", "run"]] * 2
    fast = ["--set", "models.retrieval_epochs=1", "--set", "models.mf_epochs=1",
            "--set", "models.ranker_epochs=1", "--set", f"run.cache_dir={tmp_path / 'cache'}"]
    first = recfunnel(*commands[0][1:], *fast, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # the doc's example output, numbers aside
    example = re.search(r"for this log:\n\n```\n(.*?)```", (REPO / "docs" / "own_data.md")
                        .read_text(), flags=re.S).group(1)
    said = first.stdout + first.stderr
    for line in example.splitlines():
        assert re.search(re.sub(r"\d+", r"\\d+", re.escape(line)), said), line
    done = recfunnel(*commands[1][1:], *fast, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    progress = re.compile(r"\[\d+:\d+[<,\]]")               # tqdm's bars: [00:06<00:09, ...]
    noise = [line for line in done.stderr.splitlines() if line.strip()
             and not line.startswith("recfunnel: warning: ") and not progress.search(line)]
    assert noise == [], "\n".join(noise[:20])          # no TensorFlow/Merlin start-up flood
    run = tmp_path / "runs" / "my-ratings"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["source"] == "parquet" and summary["data"]["duplicate_events"] == 0
    assert summary["dataset"]["duplicates"]["copies"] == 1          # the two Toy Storys only
    assert set(summary["evaluation"]["models"]) >= {"two_tower", "funnel"}
    assert summary["serving"]["errors"] == 0
    assert "skipped" in summary["experiments"]
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {r["slice"] for r in metrics["slices"]} == {"overall", "activity"}
    assert (run / "report.html").is_file()
