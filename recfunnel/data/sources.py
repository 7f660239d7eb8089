"""The first step of a run: get the raw tables of the configured source and validate them.

`materialize` puts a source's raw tables on disk (generating synthetic data, or converting
MovieLens-100K); `validate_source` streams them through `recfunnel.data.validation` into the
run's `data/` folder (clean parquet plus a quarantine) and returns the summary's `data` section.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recfunnel.config import Config, DataConfig, ValidationConfig
from recfunnel.data import files, movielens, schema, synthetic
from recfunnel.data.validation import DataSourceError, QuarantineLedger, validate_table

SOURCES = ("synthetic", "movielens100k", "parquet")


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECFUNNEL_CACHE") or Path.home() / ".cache" / "recfunnel")


@dataclass
class RawTables:
    source: str
    origin: str
    events: Path                  # a file or a folder of files
    users: Path | None = None
    items: Path | None = None
    info: dict = field(default_factory=dict)


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
        found = {n: _find(root, n) for n in ("events", "users", "items")}
        if found["events"] is None:
            raise DataSourceError(f"{root}: no 'events' table (events.parquet, events.csv or an "
                                  "events/ folder)")
        return RawTables("parquet", str(root), found["events"], found["users"], found["items"])
    raise DataSourceError(f"unknown data.source {data.source!r}; expected one of {SOURCES}")


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, *(root / f"{name}{s}" for s in files.TABLE_SUFFIXES)):
        if candidate.exists():
            return candidate
    return None


def validate_source(raw: RawTables, out_dir: Path, rules: ValidationConfig,
                    progress: bool = True) -> dict:
    """Writes `events/`, `users.parquet`, `items.parquet`, `quarantine/` (and the synthetic
    source's `truth/`) under `out_dir`.

    Returns the `data` section of the run summary: counts, and quarantined rows by reason.
    """
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / "events").mkdir(parents=True)
    (out_dir / "quarantine").mkdir()
    ledgers = {}
    tables = {}
    for name, path in (("users", raw.users), ("items", raw.items)):
        if path is None:
            continue
        result = validate_table(files.read_table(path), schema.TABLES[name], rules, source=path.name)
        result.kept.to_parquet(out_dir / f"{name}.parquet", index=False)
        if len(result.quarantined):
            result.quarantined.to_parquet(out_dir / "quarantine" / f"{name}.parquet", index=False)
        ledgers[name] = QuarantineLedger()
        ledgers[name].add(result)
        tables[name] = result.kept

    known_items = (tables["items"]["item_id"].to_numpy()
                   if "items" in tables and rules.require_known_items else None)
    ledger = QuarantineLedger()
    users_seen, items_seen = np.empty(0, np.int64), np.empty(0, np.int64)
    t_min, t_max = None, None
    with tqdm(desc="validating events", unit="row", unit_scale=True, disable=not progress) as bar:
        for k, (label, chunk) in enumerate(files.iter_chunks(raw.events)):
            result = validate_table(chunk, schema.EVENTS, rules, known_items, source=label)
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
        "validation": {"events": ledger.to_dict(),
                       **{n: led.to_dict() for n, led in ledgers.items()}},
        "path": str(out_dir),
    }
    if raw.source == "synthetic":
        section["bad_rows_injected"] = raw.info.get("bad_rows_injected", {})
        # The run keeps its own copy of the truth (small), so it stays valid if the cache goes.
        shutil.copytree(raw.info["truth"], out_dir / "truth")
        section["truth"] = "truth"
    return section


def load_validated_events(data_dir: Path) -> pd.DataFrame:
    """All validated events of a run (small data; the workflows stream them instead)."""
    return pd.read_parquet(Path(data_dir) / "events")
