"""Validation at the door: every source's tables are checked against `recfunnel.data.schema`.

A table that cannot be used at all (a required column missing, a column of the wrong type, an
unreadable file, timestamps that cannot be read without a stated format) raises
`SchemaError`/`DataSourceError` naming what is wrong. Individual bad rows are set aside with a
reason each, exact copies of an earlier event as `duplicate_event`: rows in = rows kept + rows
quarantined, always.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recfunnel.config import ValidationConfig
from recfunnel.errors import RecfunnelError
from recfunnel.data import schema as S


class SchemaError(RecfunnelError, ValueError):
    """A table lacks a required column or holds a column that cannot be of its schema type."""


class DataSourceError(RecfunnelError, ValueError):
    """A file cannot be read as a table at all (empty, truncated, corrupt, unknown format)."""


@dataclass
class ValidationResult:
    kept: pd.DataFrame
    quarantined: pd.DataFrame          # the raw values as text, plus `reason`
    rows_in: int

    @property
    def reasons(self) -> dict[str, int]:
        return self.quarantined["reason"].value_counts().sort_index().to_dict() \
            if len(self.quarantined) else {}


@dataclass
class QuarantineLedger:
    """Running totals across chunks, so 10M-row sources are validated in bounded memory."""
    rows_in: int = 0
    rows_kept: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: ValidationResult) -> None:
        self.rows_in += result.rows_in
        self.rows_kept += len(result.kept)
        for reason, n in result.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + int(n)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.reasons.values())

    def check_balance(self) -> None:
        if self.rows_in != self.rows_kept + self.rows_quarantined:
            raise AssertionError(f"validation lost rows: {self.rows_in} in, {self.rows_kept} kept, "
                                 f"{self.rows_quarantined} quarantined")

    def to_dict(self) -> dict:
        return {"rows_in": self.rows_in, "rows_kept": self.rows_kept,
                "rows_quarantined": self.rows_quarantined,
                "quarantined_by_reason": dict(sorted(self.reasons.items()))}


class SeenEvents:
    """Fingerprints of the events kept so far, so that an exact copy of an event (every column
    equal: user, item, timestamp, signals, and any extra column) is caught in any later chunk.

    The first occurrence is kept, every later copy is quarantined as `duplicate_event` (not
    collapsed: the quarantine keeps each copy with its row). A 64-bit hash per kept row
    (8 bytes: 80 MB for 10M events); two different events share one with odds ~n^2 / 2^65.
    The schema's columns (`typed`) are compared as converted, every other column as numbers or
    text (`_comparable`), since each chunk of a CSV infers its own dtype: a rating "4" is 4 in
    one chunk and 4.0 in the next, where a 4.5 made the column float.
    """

    def __init__(self):
        self._seen = np.empty(0, np.uint64)     # sorted, unique

    def copies(self, frame: pd.DataFrame, typed=()) -> tuple[np.ndarray, np.ndarray]:
        """(mask of rows that copy an earlier row or an event kept before, their hashes)."""
        ordered = frame[sorted(frame.columns)]      # files may order their columns differently
        untyped = [c for c in ordered.columns if c not in typed]
        if untyped:
            ordered = ordered.assign(**{c: _comparable(ordered[c]) for c in untyped})
        hashes = pd.util.hash_pandas_object(ordered, index=False).to_numpy(np.uint64)
        within = pd.Series(hashes).duplicated(keep="first").to_numpy()
        return within | self._contains(hashes), hashes

    def add(self, hashes: np.ndarray) -> None:
        # Binary searches into the sorted hashes and one insertion: a chunk costs its own size
        # times log(seen) plus one copy, where a union (np.union1d) re-sorts everything seen
        # (at 100M events, minutes in all).
        new = np.unique(np.asarray(hashes, np.uint64))
        new = new[~self._contains(new)]
        self._seen = np.insert(self._seen, np.searchsorted(self._seen, new), new)

    def _contains(self, hashes: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self._seen, hashes)
        found = np.zeros(len(hashes), bool)
        inside = at < len(self._seen)
        found[inside] = self._seen[at[inside]] == hashes[inside]
        return found


def _comparable(values: pd.Series) -> pd.Series:
    """A column outside the schema in a form the same whatever dtype its chunk inferred: numbers
    as float64 (4 and 4.0 alike; integers beyond float64's exact range as text), other values as
    text, missing ones as NaN or "" (a column missing everywhere in its chunk: "")."""
    if values.isna().all():
        return pd.Series("", index=values.index)
    if pd.api.types.is_float_dtype(values):
        return values.astype("float64")
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        numbers = values.astype("float64")
        if not (numbers.abs() >= 2**53).any():
            return numbers
    elif values.dtype == object:
        numbers = pd.to_numeric(values, errors="coerce")
        if (numbers.notna() | values.isna()).all():      # every value a number: a number column
            return numbers.astype("float64")
    return values.astype(str).where(values.notna(), "")


def validate_table(df: pd.DataFrame, table: S.Table, rules: ValidationConfig | None = None,
                   known_items: np.ndarray | None = None, source: str = "input",
                   first_row: int = 0, timestamp_format: str = "auto",
                   seen: SeenEvents | None = None) -> ValidationResult:
    """Convert `df` to the schema types of `table` and set aside the rows that break a rule.

    Columns outside the schema pass through unchanged (e.g. MovieLens' `rating`). The first
    broken rule of a row is its reason; rules are checked in a fixed order so counts are stable.
    `first_row` is the file's row number of df's first row (quarantined rows carry theirs);
    `timestamp_format` is the `data.timestamp_format` setting; `seen` carries the events kept
    from earlier chunks (events only; a new one per call when None).
    """
    rules = rules or ValidationConfig()
    _require_columns(df, table, source)
    df = df.reset_index(drop=True)
    out = df.copy()
    reason = pd.Series(np.full(len(df), None, dtype=object))

    def flag(mask, why):
        mask = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        reason[mask] = why

    for col in table.columns:
        if col.name not in df.columns:
            if col.kind == S.BOOLEAN:
                out[col.name] = False
            elif col.kind == S.BINARY:
                out[col.name] = np.int8(0)
            elif col.nullable:
                out[col.name] = pd.Series(np.nan if col.kind == S.FLOAT else None, index=df.index,
                                          dtype="float64" if col.kind == S.FLOAT else object)
            continue
        converted, unparseable = _convert(df[col.name], col, source, timestamp_format)
        flag(unparseable, f"{col.name}_not_{_kind_word(col.kind)}")
        if not col.nullable:
            flag(converted.isna() & ~unparseable, f"null_{col.name}")
        out[col.name] = converted

    if table is S.EVENTS:
        _event_rules(out, rules, known_items, flag)
        seen = seen if seen is not None else SeenEvents()
        clean = reason.isna().to_numpy()
        copies, hashes = seen.copies(out.loc[clean], typed=table.names)
        flag(_spread(copies, clean), "duplicate_event")
        seen.add(hashes[~copies])
    else:
        key = list(table.key)
        flag(out.duplicated(subset=key, keep="first") & reason.isna(), f"duplicate_{key[0]}")

    bad = reason.notna().to_numpy()
    kept = out.loc[~bad].reset_index(drop=True)
    kept = _finalize_types(kept, table)
    quarantined = df.loc[bad].astype(str).reset_index(drop=True)
    quarantined["reason"] = reason[bad].to_numpy()
    quarantined["source"] = source
    quarantined["row"] = first_row + np.flatnonzero(bad)
    return ValidationResult(kept=kept, quarantined=quarantined, rows_in=len(df))


def _spread(mask: np.ndarray, where: np.ndarray) -> np.ndarray:
    """A mask over the rows selected by `where`, as a mask over all rows."""
    out = np.zeros(len(where), bool)
    out[where] = mask
    return out


def _require_columns(df: pd.DataFrame, table: S.Table, source: str) -> None:
    missing = [c for c in table.columns if c.required and c.name not in df.columns]
    if missing:
        wanted = ", ".join(f"'{c.name}' ({c.kind})" for c in missing)
        hint = ("; rename yours with data.columns (your name: schema name)"
                + ("; derive click and like from a rating column with data.rating_signals"
                   if any(c.name == "click" for c in missing) else ""))
        raise SchemaError(f"{source}: table '{table.name}' is missing required column(s) {wanted}; "
                          f"it has: {', '.join(map(str, df.columns)) or 'no columns'}{hint}")


def _kind_word(kind: str) -> str:
    return {S.INTEGER: "integer", S.FLOAT: "numeric", S.BINARY: "binary",
            S.TIMESTAMP: "timestamp", S.STRING: "string", S.BOOLEAN: "boolean"}[kind]


def _convert(values: pd.Series, col: S.Column, source: str, timestamp_format: str = "auto"
             ) -> tuple[pd.Series, np.ndarray]:
    """Returns the converted column and a mask of non-null values that did not convert.

    A column in which no non-null value converts is not a few bad rows but the wrong type:
    that raises SchemaError.
    """
    present = values.notna().to_numpy()
    kind = col.kind
    if kind == S.STRING:
        return values.where(values.isna(), values.astype(str)), np.zeros(len(values), bool)
    if kind == S.TIMESTAMP:
        converted = _to_utc(values, col, source, timestamp_format)
    elif kind == S.BOOLEAN:
        converted = _to_bool(values)
    else:
        if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
            raise _type_error(values, col, source)
        if pd.api.types.is_bool_dtype(values):
            if kind != S.BINARY:
                raise _type_error(values, col, source)
            values = values.astype("int8")
        converted = pd.to_numeric(values, errors="coerce").astype("float64")
        if kind == S.INTEGER:
            converted = converted.where(np.floor(converted) == converted)
        elif kind == S.BINARY:
            converted = converted.where(converted.isin([0.0, 1.0]))
        converted = converted.where(np.isfinite(converted))
    unparseable = present & converted.isna().to_numpy()
    if present.any() and unparseable[present].all():
        if kind == S.TIMESTAMP:
            raise _timestamp_error(values, col, source, timestamp_format)
        raise _type_error(values, col, source)
    return converted, unparseable


def _type_error(values: pd.Series, col: S.Column, source: str) -> SchemaError:
    sample = values.dropna().head(3).tolist()
    return SchemaError(f"{source}: column '{col.name}' has dtype {values.dtype} (values like "
                       f"{sample}); expected {col.kind}")


# ISO-8601 dates and times: 2026-01-31, 2026-01-31 08:00, 2026-01-31T08:00:00.5Z, ...+01:00
ISO_8601 = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?"
                      r"(?:Z|[+-]\d{2}(?::?\d{2})?)?")
# 03/04/2026, 3.4.26, 03-04-2026 (optionally with a time): the 3rd of April or the 4th of March
DAY_MONTH = re.compile(r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}(?:[T ,]+.*)?")
EPOCH_TEXT = re.compile(r"[+-]?\d+(?:\.\d*)?")
# Epoch seconds above this are after the year 5138, epoch milliseconds below it before March
# 1973: a log's typical stamp on the wrong side was written in the other unit.
MAX_EPOCH_SECONDS = 1e11
SETTING = "data.timestamp_format"


def _to_utc(values: pd.Series, col: S.Column, source: str, fmt: str = "auto") -> pd.Series:
    """Timestamps by the stated format; text in an unstated non-ISO format is never guessed."""
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
    elif pd.api.types.is_bool_dtype(values):
        raise _type_error(values, col, source)
    elif "%" in fmt:
        text = values.where(values.isna(), values.astype(str).str.strip())
        ts = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
    elif pd.api.types.is_numeric_dtype(values) or fmt in ("epoch_s", "epoch_ms"):
        if fmt == "iso8601":
            raise SchemaError(f"{source}: column '{col.name}' holds numbers (like "
                              f"{values.dropna().head(3).tolist()}) but {SETTING} is iso8601; "
                              "set it to epoch_s or epoch_ms")
        numbers = pd.to_numeric(values, errors="coerce")
        _check_epoch_unit(numbers, col, source, fmt)
        ts = pd.to_datetime(numbers, unit="ms" if fmt == "epoch_ms" else "s", errors="coerce")
    else:
        text = values.astype(str).str.strip()
        iso = text.str.fullmatch(ISO_8601.pattern) & values.notna()
        if fmt == "auto":
            epoch = text.str.fullmatch(EPOCH_TEXT.pattern) & values.notna()
            day_month = text.str.fullmatch(DAY_MONTH.pattern) & values.notna() & ~epoch
            if day_month.any():
                example = text[day_month].iloc[0]
                raise SchemaError(
                    f"{source}: column '{col.name}' holds dates like {example!r} whose day and "
                    f"month order cannot be told apart ({int(day_month.sum())} of "
                    f"{int(values.notna().sum())} values); set {SETTING} to the pattern, e.g. "
                    "'%d/%m/%Y' (day first) or '%m/%d/%Y' (month first)")
        else:
            epoch = pd.Series(False, index=values.index)
        ts = pd.to_datetime(text.where(iso), errors="coerce", utc=True)
        if epoch.any():
            numbers = pd.to_numeric(text.where(epoch), errors="coerce")
            _check_epoch_unit(numbers, col, source, fmt)
            ts = ts.where(~epoch, pd.to_datetime(numbers, unit="s", errors="coerce", utc=True))
    if getattr(ts.dt, "tz", None) is None:
        ts = ts.dt.tz_localize("UTC")
    return ts.dt.tz_convert("UTC")


def _check_epoch_unit(numbers: pd.Series, col: S.Column, source: str, fmt: str) -> None:
    """Epoch milliseconds read as seconds (or the reverse) are refused, naming the unit."""
    present = numbers.dropna()
    if present.empty:
        return
    typical = float(present.abs().median())
    if fmt != "epoch_ms" and typical > MAX_EPOCH_SECONDS:
        raise SchemaError(f"{source}: column '{col.name}' holds numbers like {int(present.iloc[0])}"
                          ", which as epoch seconds are after the year 5000: these look like "
                          f"epoch milliseconds; set {SETTING}: epoch_ms")
    if fmt == "epoch_ms" and typical < MAX_EPOCH_SECONDS:
        raise SchemaError(f"{source}: column '{col.name}' holds numbers like {int(present.iloc[0])}"
                          ", which as epoch milliseconds are before March 1973: these look like "
                          f"epoch seconds; set {SETTING}: epoch_s (or auto)")


def _timestamp_error(values: pd.Series, col: S.Column, source: str, fmt: str) -> SchemaError:
    sample = values.dropna().head(3).tolist()
    stated = (f"none matches {SETTING} {fmt!r}" if fmt != "auto" else
              "none is ISO-8601 (2026-01-31, 2026-01-31T08:00:00Z) or epoch seconds")
    return SchemaError(f"{source}: column '{col.name}' holds values like {sample}: {stated}; "
                       f"set {SETTING} (a strftime pattern such as '%d.%m.%Y %H:%M', epoch_ms, "
                       "epoch_s, iso8601)")


def _to_bool(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values):
        return values.astype(object)
    text = values.astype(str).str.strip().str.lower()
    mapping = {"true": True, "1": True, "1.0": True, "yes": True,
               "false": False, "0": False, "0.0": False, "no": False}
    out = text.map(mapping)
    return out.where(values.notna(), False)   # absent flag means not flagged


def _event_rules(out: pd.DataFrame, rules: ValidationConfig, known_items, flag) -> None:
    lo = pd.Timestamp(rules.min_timestamp, tz="UTC")
    hi = (pd.Timestamp(rules.max_timestamp, tz="UTC") if rules.max_timestamp
          else pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1))
    ts = out["timestamp"]
    flag(ts.notna() & ((ts < lo) | (ts > hi)), "timestamp_out_of_range")
    watch, duration = out["watch_seconds"], out["duration_seconds"]
    flag(duration.notna() & (duration <= 0), "nonpositive_duration")
    flag(watch.notna() & (watch < 0), "negative_watch_seconds")
    limit = duration * rules.max_watch_ratio + rules.watch_tolerance_seconds
    flag(watch.notna() & duration.notna() & (watch > limit), "watch_exceeds_duration")
    if known_items is not None:
        flag(out["item_id"].notna() & ~out["item_id"].isin(known_items), "item_not_in_catalogue")


def _finalize_types(df: pd.DataFrame, table: S.Table) -> pd.DataFrame:
    for col in table.columns:
        if col.kind in (S.INTEGER, S.BINARY) and not (col.nullable and df[col.name].isna().any()):
            df[col.name] = df[col.name].astype(S.PANDAS_DTYPE[col.kind])
        elif col.kind == S.INTEGER:
            df[col.name] = df[col.name].astype("Int64")
        elif col.kind == S.BOOLEAN:
            df[col.name] = df[col.name].astype(bool)
        elif col.kind == S.FLOAT:
            df[col.name] = df[col.name].astype("float64")
    return df
