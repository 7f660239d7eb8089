"""A simulated video platform with known ground truth: the embedded default data set.

Users have demographics, latent tastes that drift over the days and an activity level; items have
a category, a creator, a title, a duration from seconds to an hour and a power-law popularity.
Some items are click-bait (clicked, then abandoned), some are re-uploads of another item under a
new id, some are unsafe. What a user does with a shown item (click, like, share, watch time)
follows from the true relevance of the pair and the item's length, so every later stage can be
scored against the truth. `World.respond` is the user model; the online simulator reuses it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from recfunnel.config import SyntheticConfig

COUNTRIES = ("US", "IN", "BR", "DE", "JP", "NG", "FR", "MX")
COUNTRY_SHARES = (0.30, 0.20, 0.12, 0.10, 0.10, 0.08, 0.06, 0.04)
GENDERS = ("F", "M", "other")
GENDER_SHARES = (0.48, 0.48, 0.04)
AGE_BANDS = ((0, 17, "<18"), (18, 24, "18-24"), (25, 34, "25-34"), (35, 44, "35-44"),
             (45, 54, "45-54"), (55, 120, "55+"))
# The planted badly-served group: their answers depend on relevance only through heavy noise.
WEAK_GROUP = {"column": "age_band", "value": "55+"}

CATEGORY_WORDS = ("music", "gaming", "cooking", "travel", "science", "comedy", "sports", "news",
                  "fitness", "diy", "fashion", "tech", "pets", "history", "art", "finance")
TITLE_ADJECTIVES = ("quick", "ultimate", "easy", "deep", "live", "classic", "new", "honest",
                    "tiny", "epic", "daily", "secret", "simple", "wild", "calm", "bold")
TITLE_NOUNS = ("guide", "session", "review", "story", "challenge", "mix", "tour", "lesson",
               "moments", "breakdown", "recap", "vlog", "experiment", "tips", "highlights", "jam")
UNSAFE_WORDS = ("gore", "nsfw", "explicit", "violent", "leaked", "uncensored")
EDGY_WORDS = ("raw", "intense", "extreme")            # harmless words that look risky
CLICKBAIT_SUFFIXES = ("(YOU WON'T BELIEVE THIS)", "!!! SHOCKING", "- gone wrong?!")
REUPLOAD_MARKS = (" (HD)", " [reupload]", " - full", " (1)")

MIN_DURATION, MAX_DURATION = 5.0, 3600.0
CANDIDATES_PER_IMPRESSION = 8    # the previous recommender chooses each shown item among these
EXPOSURE_RELEVANCE_WEIGHT = 3.0  # ... by softmax(weight x relevance): logs are not random


def age_band(age) -> np.ndarray:
    age = np.asarray(age)
    out = np.full(age.shape, AGE_BANDS[-1][2], dtype=object)
    for lo, hi, name in AGE_BANDS:
        out[(age >= lo) & (age <= hi)] = name
    return out


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    """The ground truth: who the users are, what the items are, and how users respond.

    Arrays are indexed by id - 1 (ids start at 1). `users` and `items` hold the observable
    attributes written to the data set; the `*_truth` frames and factor arrays are the secrets.
    """
    config: SyntheticConfig
    users: pd.DataFrame          # user_id, age, gender, location
    user_truth: pd.DataFrame     # user_id, activity, age_band, weak_group
    user_base: np.ndarray        # [n_users, dim] taste at day 0
    user_drift: np.ndarray       # [n_users, dim] direction the taste moves over n_days
    items: pd.DataFrame          # item_id, category, creator, title, duration_seconds, unsafe, upload_day
    item_truth: pd.DataFrame     # item_id, canonical_id, is_duplicate, is_clickbait, is_unsafe, exposure
    item_vec: np.ndarray         # [n_items, dim] content vector (copies share their original's)

    # ---- the user model -------------------------------------------------------------------
    def taste(self, user_idx: np.ndarray, day: np.ndarray | float) -> np.ndarray:
        """[n, dim] unit taste vectors of users (0-based) on a day (0 .. n_days)."""
        t = np.asarray(day, dtype=np.float32) / max(self.config.n_days, 1)
        t = t[:, None] if np.ndim(t) else t
        return _unit(self.user_base[user_idx] + self.user_drift[user_idx] * t)

    def true_relevance(self, user_idx, item_idx, day) -> np.ndarray:
        """[n] relevance in (0, 1) of each (user, item) pair on `day`; 0-based indices."""
        user_idx, item_idx = np.asarray(user_idx), np.asarray(item_idx)
        day = np.broadcast_to(np.asarray(day, dtype=np.float32), user_idx.shape)
        out = np.empty(len(user_idx), dtype=np.float32)
        for s in range(0, len(user_idx), 262_144):   # bounded memory for 10M pairs
            sl = slice(s, s + 262_144)
            dot = np.einsum("nd,nd->n", self.taste(user_idx[sl], day[sl]), self.item_vec[item_idx[sl]])
            out[sl] = _sigmoid(4.0 * dot - 1.0)
        return out

    def relevance_matrix(self, user_idx, day) -> np.ndarray:
        """[len(user_idx), n_items] true relevance of every item for the given users."""
        day = np.broadcast_to(np.asarray(day, dtype=np.float32), np.shape(user_idx))
        return _sigmoid(4.0 * self.taste(np.asarray(user_idx), day) @ self.item_vec.T - 1.0)

    def respond(self, user_idx, item_idx, day, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """What users do when shown items: click, like, share (0/1) and watch_seconds.

        Click-bait items attract clicks but are abandoned fast and rarely liked. Watch fraction
        falls with length even for relevant items, which is why "watched 75 %" favours short
        items (L2.2). The planted weak group answers with heavy noise around its relevance (and
        its tastes lean to the least-exposed category, see `build_world`).
        """
        user_idx, item_idx = np.asarray(user_idx), np.asarray(item_idx)
        n = len(user_idx)
        rel = self.true_relevance(user_idx, item_idx, day)
        logit = np.log(rel / (1 - rel))
        weak = self.user_truth["weak_group"].to_numpy()[user_idx]
        logit = logit + weak * self.config.weak_group_noise * rng.standard_normal(n)
        r = _sigmoid(logit)
        bait = self.item_truth["is_clickbait"].to_numpy()[item_idx]
        duration = self.items["duration_seconds"].to_numpy()[item_idx]
        click = rng.random(n) < _sigmoid(-2.0 + 3.5 * r + 2.0 * bait)
        length_factor = 1.0 / (1.0 + 0.35 * np.log10(1.0 + duration / 30.0))
        mean_fraction = np.clip(r ** 0.7 * length_factor * np.where(bait, 0.2, 1.0), 0.02, 0.98)
        fraction = rng.beta(mean_fraction * 6.0, (1.0 - mean_fraction) * 6.0)
        like = click & (rng.random(n) < _sigmoid(-4.0 + 5.0 * r - 3.0 * bait))
        share = click & (rng.random(n) < _sigmoid(-5.5 + 5.0 * r - 2.0 * bait))
        watch = np.where(click, np.round(fraction * duration, 1), 0.0)
        return {"click": click.astype(np.int8), "like": like.astype(np.int8),
                "share": share.astype(np.int8), "watch_seconds": watch}

    # ---- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _write(self.user_truth.merge(self.users, on="user_id"), folder / "users_truth.parquet")
        _write(self.item_truth.merge(self.items, on="item_id"), folder / "items_truth.parquet")
        np.save(folder / "user_base.npy", self.user_base)
        np.save(folder / "user_drift.npy", self.user_drift)
        np.save(folder / "item_vec.npy", self.item_vec)
        (folder / "world.json").write_text(json.dumps(
            {"config": asdict(self.config), "weak_group": WEAK_GROUP}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "World":
        folder = Path(folder)
        meta = json.loads((folder / "world.json").read_text())
        users = pd.read_parquet(folder / "users_truth.parquet")
        items = pd.read_parquet(folder / "items_truth.parquet")
        ucols = ["user_id", "age", "gender", "location"]
        icols = ["item_id", "category", "creator", "title", "duration_seconds", "unsafe", "upload_day"]
        return cls(config=SyntheticConfig(**meta["config"]),
                   users=users[ucols], user_truth=users.drop(columns=ucols[1:]),
                   user_base=np.load(folder / "user_base.npy"),
                   user_drift=np.load(folder / "user_drift.npy"),
                   items=items[icols], item_truth=items.drop(columns=icols[1:]),
                   item_vec=np.load(folder / "item_vec.npy"))


def build_world(cfg: SyntheticConfig) -> World:
    """Draws users, items and their latent factors; deterministic for `cfg.seed`."""
    rng = _rng(cfg.seed, 0)
    dim = cfg.latent_dim

    # Users: demographics shift tastes, so metrics differ by slice.
    n_u = cfg.n_users
    age = np.clip(np.round(rng.gamma(4.0, 8.0, n_u) + 13), 13, 80).astype(np.int64)
    gender = rng.choice(GENDERS, n_u, p=GENDER_SHARES)
    location = rng.choice(COUNTRIES, n_u, p=COUNTRY_SHARES)
    bands = age_band(age)
    band_vec = {b: rng.standard_normal(dim) for _, _, b in AGE_BANDS}
    gender_vec = {g: rng.standard_normal(dim) for g in GENDERS}
    group = np.stack([band_vec[b] for b in bands]) * 0.6 + np.stack([gender_vec[g] for g in gender]) * 0.4
    user_base = _unit(group + rng.standard_normal((n_u, dim))).astype(np.float32)
    user_drift = (cfg.drift * _unit(rng.standard_normal((n_u, dim)))).astype(np.float32)
    users = pd.DataFrame({"user_id": np.arange(1, n_u + 1, dtype=np.int64), "age": age,
                          "gender": gender, "location": location})
    user_truth = pd.DataFrame({"user_id": users["user_id"],
                               "activity": rng.lognormal(0.0, 1.0, n_u),
                               "age_band": bands,
                               "weak_group": bands == WEAK_GROUP["value"]})

    # Items: originals first in draw order, then re-uploads placed at random ids.
    n_i = cfg.n_items
    n_dup = int(round(cfg.duplicate_share * n_i))
    n_orig = n_i - n_dup
    centroids = rng.standard_normal((cfg.n_categories, dim))
    creator_cat = rng.integers(0, cfg.n_categories, cfg.n_creators)
    creator_weight = 1.0 / np.arange(1, cfg.n_creators + 1) ** 0.8
    creator = rng.choice(cfg.n_creators, n_orig, p=creator_weight / creator_weight.sum())
    category = np.where(rng.random(n_orig) < 0.8, creator_cat[creator],
                        rng.integers(0, cfg.n_categories, n_orig))
    vec = _unit(centroids[category] + 0.8 * rng.standard_normal((n_orig, dim)))
    duration = np.round(np.exp(rng.uniform(np.log(MIN_DURATION), np.log(MAX_DURATION), n_orig)))
    is_bait = rng.random(n_orig) < cfg.clickbait_share
    is_unsafe = rng.random(n_orig) < cfg.unsafe_share
    titles = _titles(rng, category, is_bait, is_unsafe)
    upload_day = np.where(rng.random(n_orig) < 0.7, -rng.integers(1, 365, n_orig),
                          rng.integers(0, max(cfg.n_days, 1), n_orig))

    pop_rank = rng.permutation(n_orig) + 1
    exposure = 1.0 / pop_rank ** cfg.popularity_exponent
    original_of = rng.choice(n_orig, n_dup, p=exposure / exposure.sum())  # popular items get copied
    reupload_titles = [_alter_title(rng, titles[o]) for o in original_of]

    # Place all n_i items at random ids.
    order = rng.permutation(n_i)            # position -> item index in [originals..., copies...]
    src = np.concatenate([np.arange(n_orig), original_of])  # content source of each draw
    ids = np.empty(n_i, dtype=np.int64)
    ids[order] = np.arange(1, n_i + 1)      # draw k gets id ids[k]
    all_titles = np.array(list(titles) + reupload_titles, dtype=object)
    dup_upload = np.maximum(upload_day[original_of] + rng.integers(1, 60, n_dup), upload_day[original_of] + 1)
    table = pd.DataFrame({
        "item_id": ids,
        "category": np.array(CATEGORY_WORDS)[category[src] % len(CATEGORY_WORDS)],
        "creator": [f"creator_{c:04d}" for c in creator[src]],
        "title": all_titles,
        "duration_seconds": duration[src].astype(np.float64),
        "unsafe_true": is_unsafe[src],
        "upload_day": np.concatenate([upload_day, dup_upload]).astype(np.int64),
        "canonical_id": ids[src],
        "is_duplicate": np.arange(n_i) >= n_orig,
        "is_clickbait": is_bait[src],
        "exposure": np.concatenate([exposure, exposure[original_of] * 0.3]),
        "vec_row": src,
    }).sort_values("item_id").reset_index(drop=True)
    flagged = table["unsafe_true"].to_numpy() & (rng.random(n_i) < cfg.unsafe_flag_recall)
    items = table[["item_id", "category", "creator", "title", "duration_seconds"]].assign(
        unsafe=flagged, upload_day=table["upload_day"])
    item_truth = table[["item_id", "canonical_id", "is_duplicate", "is_clickbait", "exposure"]].assign(
        is_unsafe=table["unsafe_true"])
    item_vec = vec[table["vec_row"].to_numpy()].astype(np.float32)
    # The planted weak group also wants what the platform shows least: its tastes lean to the
    # category with the lowest total exposure, so popularity-driven exposure and the models
    # trained on it serve this group badly (on top of its noisy answers, see `respond`).
    niche = int(np.argmin(np.bincount(category, weights=exposure, minlength=cfg.n_categories)))
    weak = user_truth["weak_group"].to_numpy()
    user_base[weak] = _unit(cfg.weak_group_niche * centroids[niche]
                            + user_base[weak]).astype(np.float32)
    return World(cfg, users, user_truth, user_base, user_drift, items, item_truth, item_vec)


def _titles(rng, category, is_bait, is_unsafe) -> list[str]:
    n = len(category)
    adj = rng.choice(TITLE_ADJECTIVES, n)
    noun = rng.choice(TITLE_NOUNS, n)
    number = rng.integers(1, 10_000, n)
    out = []
    for k in range(n):
        words = [adj[k], CATEGORY_WORDS[category[k] % len(CATEGORY_WORDS)], noun[k]]
        if is_unsafe[k] and rng.random() < 0.9:
            words.insert(int(rng.integers(0, 3)), str(rng.choice(UNSAFE_WORDS)))
        elif rng.random() < 0.05:
            words.insert(0, str(rng.choice(EDGY_WORDS)))
        title = " ".join(words).capitalize() + f" #{number[k]}"
        if is_bait[k]:
            title += " " + str(rng.choice(CLICKBAIT_SUFFIXES))
        out.append(title)
    return out


def _alter_title(rng, title: str) -> str:
    """A re-upload's title: the same, or lightly altered (case, a mark, one typo)."""
    kind = rng.integers(0, 4)
    if kind == 0:
        return title
    if kind == 1:
        return title.lower()
    if kind == 2:
        return title + str(rng.choice(REUPLOAD_MARKS))
    pos = int(rng.integers(1, max(len(title) - 1, 2)))
    return title[:pos] + title[pos + 1:]      # one character dropped


# ---- the event log ----------------------------------------------------------------------------

BAD_ROW_KINDS = ("null_user_id", "negative_watch_seconds", "watch_exceeds_duration",
                 "timestamp_out_of_range", "item_not_in_catalogue")

EVENT_SCHEMA = pa.schema([
    ("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.timestamp("us", tz="UTC")),
    ("click", pa.int8()), ("like", pa.int8()), ("share", pa.int8()),
    ("watch_seconds", pa.float64()), ("duration_seconds", pa.float64()),
])


def generate(cfg: SyntheticConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Writes `events/` (parquet, one or more files a day), `users.parquet`, `items.parquet` and
    the ground truth in `truth/`. Memory stays bounded by `max_events_per_chunk`.

    Returns counts, including the corrupt rows injected per kind (`bad_rows_injected`).
    """
    out_dir = Path(out_dir)
    world = build_world(cfg)
    (out_dir / "events").mkdir(parents=True, exist_ok=True)
    world.save(out_dir / "truth")
    _write(world.users, out_dir / "users.parquet")
    _write(world.items.drop(columns=["upload_day"]), out_dir / "items.parquet")

    day_weight = np.linspace(1.0, 1.5, cfg.n_days)           # the platform grows
    per_day = _rng(cfg.seed, 1).multinomial(cfg.n_events, day_weight / day_weight.sum())
    activity = world.user_truth["activity"].to_numpy()
    user_p = activity / activity.sum()
    upload_day = world.items["upload_day"].to_numpy()
    exposure = world.item_truth["exposure"].to_numpy()
    start = pd.Timestamp(cfg.start_date, tz="UTC")
    injected = dict.fromkeys(BAD_ROW_KINDS, 0)
    written = 0
    with tqdm(total=cfg.n_events, unit="ev", unit_scale=True, desc="synthetic events",
              disable=not progress) as bar:
        for day, n_day in enumerate(per_day):
            available = np.flatnonzero(upload_day <= day)
            item_p = exposure[available] / exposure[available].sum()
            for c, s in enumerate(range(0, n_day, cfg.max_events_per_chunk)):
                n = min(cfg.max_events_per_chunk, n_day - s)
                rng = _rng(cfg.seed, 2, day, c)
                frame = _impressions(world, rng, n, day, available, item_p, user_p, start)
                _inject_bad_rows(frame, rng, cfg.bad_row_share, cfg.n_items, injected)
                _write(frame, out_dir / "events" / f"part-{day:04d}-{c:03d}.parquet", EVENT_SCHEMA)
                written += n
                bar.update(n)
    return {"events": int(written), "users": cfg.n_users, "items": cfg.n_items,
            "days": cfg.n_days, "bad_rows_injected": injected}


def _impressions(world, rng, n, day, available, item_p, user_p, start) -> pd.DataFrame:
    users = rng.choice(len(user_p), n, p=user_p)
    cand = available[rng.choice(len(available), (n, CANDIDATES_PER_IMPRESSION), p=item_p)]
    rel = world.true_relevance(np.repeat(users, CANDIDATES_PER_IMPRESSION), cand.ravel(),
                               day).reshape(cand.shape)
    # The incumbent recommender: prefers relevant candidates, imperfectly.
    logits = EXPOSURE_RELEVANCE_WEIGHT * rel + rng.gumbel(size=rel.shape)
    items = cand[np.arange(n), logits.argmax(axis=1)]
    micros = np.sort(rng.integers(0, 86_400 * 10**6, n))      # microseconds within the day, in order
    answer = world.respond(users, items, day, rng)
    return pd.DataFrame({
        "user_id": users.astype(np.int64) + 1,
        "item_id": items.astype(np.int64) + 1,
        "timestamp": start + pd.Timedelta(days=day) + pd.to_timedelta(micros, unit="us"),
        **answer,
        "duration_seconds": world.items["duration_seconds"].to_numpy()[items],
    })


def _inject_bad_rows(frame, rng, share, n_items, injected) -> None:
    """Corrupts a few rows the way real logs get corrupted; the truth of how many is returned."""
    n_bad = rng.binomial(len(frame), share) if share > 0 else 0
    if n_bad == 0:
        return
    rows = rng.choice(len(frame), n_bad, replace=False)
    kinds = rng.integers(0, len(BAD_ROW_KINDS), n_bad)
    frame["user_id"] = frame["user_id"].astype("Int64")
    for row, k in zip(rows, kinds):
        kind = BAD_ROW_KINDS[k]
        if kind == "null_user_id":
            frame.loc[row, "user_id"] = pd.NA
        elif kind == "negative_watch_seconds":
            frame.loc[row, "watch_seconds"] = -1.0 - frame.loc[row, "watch_seconds"]
        elif kind == "watch_exceeds_duration":
            frame.loc[row, "watch_seconds"] = 3.0 * frame.loc[row, "duration_seconds"] + 10.0
        elif kind == "timestamp_out_of_range":
            frame.loc[row, "timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")
        else:
            frame.loc[row, "item_id"] = n_items + 1 + row
        injected[kind] += 1


def _write(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    pq.write_table(table, path)
