"""Validation at the door: every source's tables are checked against `recfunnel.data.schema`.

A table that cannot be used at all (a required column missing, a column of the wrong type, an
unreadable file) raises `SchemaError`/`DataSourceError` naming what is wrong. Individual bad
rows are set aside with a reason each: rows in = rows kept + rows quarantined, always.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recfunnel.config import ValidationConfig
from recfunnel.data import schema as S


class SchemaError(ValueError):
    """A table lacks a required column or holds a column that cannot be of its schema type."""


class DataSourceError(ValueError):
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


def validate_table(df: pd.DataFrame, table: S.Table, rules: ValidationConfig | None = None,
                   known_items: np.ndarray | None = None, source: str = "input",
                   ) -> ValidationResult:
    """Convert `df` to the schema types of `table` and set aside the rows that break a rule.

    Columns outside the schema pass through unchanged (e.g. MovieLens' `rating`). The first
    broken rule of a row is its reason; rules are checked in a fixed order so counts are stable.
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
        converted, unparseable = _convert(df[col.name], col, source)
        flag(unparseable, f"{col.name}_not_{_kind_word(col.kind)}")
        if not col.nullable:
            flag(converted.isna() & ~unparseable, f"null_{col.name}")
        out[col.name] = converted

    if table is S.EVENTS:
        _event_rules(out, rules, known_items, flag)
    else:
        key = list(table.key)
        flag(out.duplicated(subset=key, keep="first") & reason.isna(), f"duplicate_{key[0]}")

    bad = reason.notna().to_numpy()
    kept = out.loc[~bad].reset_index(drop=True)
    kept = _finalize_types(kept, table)
    quarantined = df.loc[bad].astype(str).reset_index(drop=True)
    quarantined["reason"] = reason[bad].to_numpy()
    quarantined["source"] = source
    quarantined["row"] = np.flatnonzero(bad)
    return ValidationResult(kept=kept, quarantined=quarantined, rows_in=len(df))


def _require_columns(df: pd.DataFrame, table: S.Table, source: str) -> None:
    missing = [c for c in table.columns if c.required and c.name not in df.columns]
    if missing:
        wanted = ", ".join(f"'{c.name}' ({c.kind})" for c in missing)
        raise SchemaError(f"{source}: table '{table.name}' is missing required column(s) {wanted}; "
                          f"it has: {', '.join(map(str, df.columns)) or 'no columns'}")


def _kind_word(kind: str) -> str:
    return {S.INTEGER: "integer", S.FLOAT: "numeric", S.BINARY: "binary",
            S.TIMESTAMP: "timestamp", S.STRING: "string", S.BOOLEAN: "boolean"}[kind]


def _convert(values: pd.Series, col: S.Column, source: str) -> tuple[pd.Series, np.ndarray]:
    """Returns the converted column and a mask of non-null values that did not convert.

    A column in which no non-null value converts is not a few bad rows but the wrong type:
    that raises SchemaError.
    """
    present = values.notna().to_numpy()
    kind = col.kind
    if kind == S.STRING:
        return values.where(values.isna(), values.astype(str)), np.zeros(len(values), bool)
    if kind == S.TIMESTAMP:
        converted = _to_utc(values, col, source)
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
        raise _type_error(values, col, source)
    return converted, unparseable


def _type_error(values: pd.Series, col: S.Column, source: str) -> SchemaError:
    sample = values.dropna().head(3).tolist()
    return SchemaError(f"{source}: column '{col.name}' has dtype {values.dtype} (values like "
                       f"{sample}); expected {col.kind}")


def _to_utc(values: pd.Series, col: S.Column, source: str) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
    elif pd.api.types.is_bool_dtype(values):
        raise _type_error(values, col, source)
    elif pd.api.types.is_numeric_dtype(values):
        ts = pd.to_datetime(values, unit="s", errors="coerce")
    else:
        ts = pd.to_datetime(values, errors="coerce", utc=True)
    if getattr(ts.dt, "tz", None) is None:
        ts = ts.dt.tz_localize("UTC")
    return ts.dt.tz_convert("UTC")


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
