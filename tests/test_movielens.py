"""MovieLens-100K from the recbole wheel and from the official archive layout."""
import numpy as np
import pandas as pd
import pytest

from recfunnel.config import DataConfig, ValidationConfig
from recfunnel.data import movielens, sources


@pytest.fixture(scope="module")
def ml(cache_dir):
    return movielens.load(cache_dir=cache_dir / "wheels")


def test_counts(ml):
    assert len(ml.events) == 100_000
    assert ml.events["user_id"].nunique() == 943 and len(ml.users) == 943
    assert ml.events["item_id"].nunique() == 1682 and len(ml.items) == 1682


def test_signal_mapping_is_explicit(ml):
    ev = ml.events
    assert (ev["click"] == 1).all() and (ev["share"] == 0).all()
    assert ((ev["rating"] >= 4) == (ev["like"] == 1)).all()
    assert 0.5 < ev["like"].mean() < 0.6          # 55,375 of the 100,000 ratings are 4 or 5
    assert ev["watch_seconds"].isna().all() and ev["duration_seconds"].isna().all()
    assert ev["timestamp"].min() >= pd.Timestamp("1997-09-01", tz="UTC")
    assert ev["timestamp"].max() <= pd.Timestamp("1998-05-01", tz="UTC")


def test_attributes(ml):
    users = ml.users.set_index("user_id")
    assert users.loc[1, ["age", "gender", "occupation", "zip_code"]].tolist() == \
        [24, "M", "technician", "85711"]
    assert users.loc[1, "location"] == "mountain"          # 85711 is Tucson, AZ
    assert set(users["gender"]) == {"F", "M"}
    assert users["occupation"].nunique() == 21
    assert "non-US" in set(users["location"])              # Canadian postal codes exist
    items = ml.items.set_index("item_id")
    assert items.loc[1, "title"] == "Toy Story" and items.loc[1, "year"] == 1995
    assert items.loc[1, "category"] == "Animation|Children's|Comedy"


def test_real_duplicate_titles_exist(ml):
    """Some movies are in the catalogue twice under two ids (same title and year)."""
    dup = ml.items[ml.items.duplicated(["title", "year"], keep=False) & ml.items["title"].notna()]
    assert len(dup) >= 2
    assert dup.groupby(["title", "year"])["item_id"].nunique().min() == 2


def test_official_archive_layout(ml, tmp_path):
    """The official files, written in their own formats, load to the same tables."""
    first = ml.events.head(500)
    pd.DataFrame({"u": first["user_id"], "i": first["item_id"], "r": first["rating"],
                  "t": first["timestamp"].astype("int64") // 10**9}).to_csv(
        tmp_path / "u.data", sep="\t", header=False, index=False)
    ml.users[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(
        tmp_path / "u.user", sep="|", header=False, index=False)
    genres = ml.items["category"].fillna("").str.split("|")
    flags = np.array([[int(g in gs) for g in movielens.GENRES] for gs in genres])
    title = ml.items["title"] + " (" + ml.items["year"].astype(str) + ")"
    release = "01-Jan-" + ml.items["year"].astype(str)
    official = pd.concat([ml.items["item_id"], title, release, pd.Series([""] * len(title)),
                          pd.Series(["http://x"] * len(title)),
                          pd.DataFrame(flags)], axis=1)
    official.to_csv(tmp_path / "u.item", sep="|", header=False, index=False, encoding="latin-1")

    got = movielens.load(tmp_path)
    pd.testing.assert_frame_equal(got.events, first.reset_index(drop=True))
    pd.testing.assert_frame_equal(got.users, ml.users)
    known = ml.items["year"].notna()
    pd.testing.assert_frame_equal(got.items[known].reset_index(drop=True),
                                  ml.items[known].reset_index(drop=True))


def test_missing_official_files_are_named(tmp_path):
    (tmp_path / "u.data").write_text("1\t1\t5\t881250949\n")
    with pytest.raises(Exception, match="missing u.user, u.item"):
        movielens.load(tmp_path)


def test_validates_clean(tmp_path, cache_dir):
    raw = sources.materialize(DataConfig(source="movielens100k"), tmp_path, cache_dir=cache_dir)
    section = sources.validate_source(raw, tmp_path / "data", ValidationConfig(), progress=False)
    assert (section["events"], section["users"], section["items"]) == (100_000, 943, 1682)
    assert section["quarantined_rows"] == 0
