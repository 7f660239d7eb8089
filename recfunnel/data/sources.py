"""The first step of a run: get the raw tables of the configured source and validate them.

`materialize` puts a source's raw tables on disk (generating synthetic data, or converting
MovieLens-100K) or finds your own files; `validate_source` streams them through
`recfunnel.data.validation` into the run's `data/` folder (clean parquet plus a quarantine) and
returns the summary's `data` section. Your own files are read through `ImportSettings` (column
names, timestamp format, ratings as signals); a users or items file you do not have is derived
from the events, and the section says what was derived and what that leaves out.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recfunnel.config import SOURCES, Config, DataConfig, ValidationConfig, default_cache_dir
from recfunnel.data import files, movielens, schema, synthetic
from recfunnel.data.validation import (DataSourceError, QuarantineLedger, SchemaError, SeenEvents,
                                       validate_table)


@dataclass(frozen=True)
class ImportSettings:
    """How your own files become schema tables (the `data` settings of the same names)."""
    columns: dict = field(default_factory=dict)   # your column -> schema column
    timestamp_format: str = "auto"
    rating_column: str = "rating"
    rating_signals: dict = field(default_factory=dict)   # signal -> lowest rating that sets it

    @classmethod
    def from_config(cls, data: DataConfig) -> "ImportSettings":
        return cls(dict(data.columns), data.timestamp_format, data.rating_column,
                   dict(data.rating_signals))

    def apply(self, frame: pd.DataFrame, table: str, source: str) -> pd.DataFrame:
        """`frame` with the schema's column names and, for events, the signals of its ratings."""
        renames = {k: v for k, v in self.columns.items() if k in frame.columns}
        clash = [v for k, v in renames.items() if v in frame.columns and v not in renames]
        if clash:
            raise SchemaError(f"{source}: data.columns renames a column to '{clash[0]}', which "
                              "the file already has; map only one of them")
        frame = frame.rename(columns=renames)
        if table != "events" or not self.rating_signals:
            return frame
        if self.rating_column not in frame.columns:
            raise SchemaError(f"{source}: data.rating_signals reads ratings from column "
                              f"'{self.rating_column}' (data.rating_column), which the events do "
                              f"not have; they have: {', '.join(map(str, frame.columns))}")
        rating = pd.to_numeric(frame[self.rating_column], errors="coerce")
        frame = frame.copy()
        for signal, lowest in self.rating_signals.items():
            if signal in frame.columns:
                raise SchemaError(f"{source}: the events have a '{signal}' column and "
                                  f"data.rating_signals derives '{signal}' from the rating too; "
                                  "keep one of them")
            frame[signal] = (rating >= lowest).astype("float64").where(rating.notna())
        if "click" not in frame.columns:
            frame["click"] = np.int8(1)
        return frame

    def derived(self, events_columns: list[str]) -> list[str]:
        """What `apply` derives, in words, for the summary."""
        notes = [f"{signal} = {self.rating_column} >= {lowest:g}"
                 for signal, lowest in self.rating_signals.items()]
        if self.rating_signals and "click" not in self.rating_signals and \
                "click" not in [self.columns.get(c, c) for c in events_columns]:
            notes.append("click = 1 for every rated event (a rating is an interaction)")
        return notes


@dataclass
class RawTables:
    source: str
    origin: str
    events: Path                  # a file or a folder of files
    users: Path | None = None
    items: Path | None = None
    info: dict = field(default_factory=dict)
    reading: ImportSettings = field(default_factory=ImportSettings)


def materialize(data: DataConfig, workdir: Path, cache_dir: Path | None = None,
                progress: bool = True) -> RawTables:
    """Raw tables of the configured source, on disk. Synthetic data is cached by its settings."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if data.source == "synthetic":
        settings = asdict(data.synthetic)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        folder = cache_dir / "synthetic" / key
        if not (folder / "info.json").is_file():
            tmp = folder.with_name(key + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            info = synthetic.generate(data.synthetic, tmp, progress=progress)
            (tmp / "info.json").write_text(json.dumps(info, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)      # a half-generated folder is never mistaken for a cached one
        info = json.loads((folder / "info.json").read_text())
        return RawTables("synthetic", f"synthetic seed {data.synthetic.seed} ({folder})",
                         folder / "events", folder / "users.parquet", folder / "items.parquet",
                         {**info, "truth": str(folder / "truth")})
    if data.source == "movielens100k":
        ml = movielens.load(data.path, cache_dir=cache_dir / "wheels")
        raw = Path(workdir) / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in ("events", "users", "items"):
            getattr(ml, name).to_parquet(raw / f"{name}.parquet", index=False)
        return RawTables("movielens100k", ml.origin, raw / "events.parquet",
                         raw / "users.parquet", raw / "items.parquet",
                         {"like_threshold": movielens.LIKE_THRESHOLD})
    if data.source == "parquet":
        if not data.path:
            raise DataSourceError("data.source is 'parquet' but data.path is not set; give the "
                                  "folder holding events (file or folder), users.*, items.*")
        root = Path(data.path)
        found = own_tables(data)
        if found["events"] is None:
            raise DataSourceError(f"{root}: no 'events' table (events.parquet, events.csv or an "
                                  "events/ folder); name your file with data.files.events")
        return RawTables("parquet", str(root), found["events"], found["users"], found["items"],
                         reading=ImportSettings.from_config(data))
    raise DataSourceError(f"unknown data.source {data.source!r}; expected one of {SOURCES}")


def own_tables(data: DataConfig) -> dict[str, Path | None]:
    """The files of your own tables: data.files names them, else path/<table>[.parquet|.csv|.tsv]."""
    root = Path(data.path)
    if not root.is_dir():
        raise DataSourceError(f"data.path {root}: no such folder; give the folder holding your "
                              "events (and optionally users and items) files")
    found = {}
    for name in schema.TABLES:
        if name in data.files:
            path = root / data.files[name]
            if not path.exists():
                raise DataSourceError(f"data.files.{name}: {path} does not exist")
            found[name] = path
        else:
            found[name] = _find(root, name)
    return found


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, *(root / f"{name}{s}" for s in files.TABLE_SUFFIXES)):
        if candidate.exists():
            return candidate
    return None


def validate_source(raw: RawTables, out_dir: Path, rules: ValidationConfig,
                    progress: bool = True, batch_rows: int = 1_000_000) -> dict:
    """Writes `events/`, `users.parquet`, `items.parquet`, `quarantine/` (and the synthetic
    source's `truth/`) under `out_dir`.

    Returns the `data` section of the run summary: counts, quarantined rows by reason, what was
    derived (`derived`) and what the data cannot support (`warnings`).
    """
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "events").mkdir(parents=True)
    (out_dir / "quarantine").mkdir()
    reading = raw.reading
    ledgers = {}
    tables = {}
    for name, path in (("users", raw.users), ("items", raw.items)):
        if path is None:
            continue
        frame = reading.apply(files.read_table(path), name, path.name)
        result = validate_table(frame, schema.TABLES[name], rules, source=path.name)
        result.kept.to_parquet(out_dir / f"{name}.parquet", index=False)
        if len(result.quarantined):
            result.quarantined.to_parquet(out_dir / "quarantine" / f"{name}.parquet", index=False)
        ledgers[name] = QuarantineLedger()
        ledgers[name].add(result)
        tables[name] = result.kept

    known_items = (tables["items"]["item_id"].to_numpy()
                   if "items" in tables and rules.require_known_items else None)
    ledger = QuarantineLedger()
    seen = SeenEvents()
    users_seen, items_seen = np.empty(0, np.int64), np.empty(0, np.int64)
    t_min, t_max = None, None
    events_columns: list[str] = []
    with tqdm(desc="validating events", unit="row", unit_scale=True, disable=not progress) as bar:
        for k, chunk in enumerate(files.iter_chunks(raw.events, batch_rows)):
            events_columns = events_columns or list(chunk.frame.columns)
            frame = reading.apply(chunk.frame, "events", chunk.source)
            result = validate_table(frame, schema.EVENTS, rules, known_items, source=chunk.source,
                                    first_row=chunk.first_row,
                                    timestamp_format=reading.timestamp_format, seen=seen)
            ledger.add(result)
            kept = result.kept
            kept.to_parquet(out_dir / "events" / f"part-{k:05d}.parquet", index=False)
            if len(result.quarantined):
                result.quarantined.to_parquet(out_dir / "quarantine" / f"events-{k:05d}.parquet",
                                              index=False)
            if len(kept):
                users_seen = np.union1d(users_seen, kept["user_id"].unique())
                items_seen = np.union1d(items_seen, kept["item_id"].unique())
                lo, hi = kept["timestamp"].min(), kept["timestamp"].max()
                t_min = lo if t_min is None else min(t_min, lo)
                t_max = hi if t_max is None else max(t_max, hi)
            bar.update(result.rows_in)
    ledger.check_balance()
    if ledger.rows_kept == 0:
        raise DataSourceError(f"{raw.events}: no usable events after validation "
                              f"({ledger.rows_in} rows in, quarantined: {ledger.reasons})")
    derived = reading.derived(events_columns)
    for name, ids in (("users", users_seen), ("items", items_seen)):
        if name not in tables:          # no file: the ids of the events, without attributes
            frame = pd.DataFrame({schema.TABLES[name].key[0]: ids})
            validate_table(frame, schema.TABLES[name], rules).kept.to_parquet(
                out_dir / f"{name}.parquet", index=False)
            derived.append(f"{name}: no {name} file; the {len(ids):,} {name} of the events, "
                           "without attributes")
    reasons: dict[str, int] = {}
    for part in (ledger, *ledgers.values()):
        for r, n in part.reasons.items():
            reasons[r] = reasons.get(r, 0) + n
    section = {
        "source": raw.source,
        "origin": raw.origin,
        "events": ledger.rows_kept,
        "users": int(len(users_seen)),
        "items": int(len(items_seen)),
        "catalogue_items": int(len(tables["items"])) if "items" in tables else None,
        "time_range": [t_min.isoformat(), t_max.isoformat()],
        "quarantined_rows": sum(reasons.values()),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "duplicate_events": int(reasons.get("duplicate_event", 0)),
        "validation": {"events": ledger.to_dict(),
                       **{n: led.to_dict() for n, led in ledgers.items()}},
        "derived": derived,
        "warnings": attribute_warnings(tables.get("users"), tables.get("items")),
        "path": str(out_dir),
    }
    if raw.source == "synthetic":
        section["bad_rows_injected"] = raw.info.get("bad_rows_injected", {})
        # The run keeps its own copy of the truth (small), so it stays valid if the cache goes.
        shutil.copytree(raw.info["truth"], out_dir / "truth")
        section["truth"] = "truth"
    return section


# The evaluation's slice each user attribute gives, for the warnings about missing ones.
USER_SLICES = {"age": "age_band", "gender": "gender", "location": "location"}


def attribute_warnings(users: pd.DataFrame | None, items: pd.DataFrame | None) -> list[str]:
    """What the data cannot support, in words: slices without their attribute, item filters
    without titles or flags. Each such part of the pipeline is skipped, never filled with
    "unknown"."""
    out = []
    missing = [col for col in USER_SLICES
               if users is None or col not in users or users[col].isna().all()]
    if missing:
        out.append(f"users have no {', '.join(missing)}: the evaluation's slices by "
                   f"{', '.join(USER_SLICES[c] for c in missing)} are skipped")
    if items is None or "title" not in items or items["title"].isna().all():
        out.append("items have no titles: duplicate detection (L1.3) and the title classifier "
                   "(L1.4) are skipped")
    if items is None or "unsafe" not in items or not items["unsafe"].any():
        out.append("no item is flagged unsafe: the flag filter (L1.4) blocks nothing and the "
                   "title classifier has no flagged titles to learn from")
    return out


def load_validated_events(data_dir: Path) -> pd.DataFrame:
    """All validated events of a run (small data; the workflows stream them instead)."""
    return pd.read_parquet(Path(data_dir) / "events")
