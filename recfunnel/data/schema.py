"""The interaction-log schema: the contract between every data source and the rest of the funnel.

Three tables. `events` is one row per impression of an item to a user, with what the user did;
`users` and `items` carry the attributes that features and evaluation slices are built from.
Every source (synthetic, MovieLens-100K, your own parquet) is mapped to these columns before
anything else reads it; `recfunnel.data.validation` enforces them.
"""
from __future__ import annotations

from dataclasses import dataclass

# Kinds are what a column must be convertible to; validation converts and checks them.
INTEGER, FLOAT, BINARY, TIMESTAMP, STRING, BOOLEAN = (
    "integer", "float", "binary 0/1", "UTC timestamp", "string", "boolean")

PANDAS_DTYPE = {
    INTEGER: "int64",
    FLOAT: "float64",
    BINARY: "int8",
    TIMESTAMP: "datetime64[ns, UTC]",
    STRING: "object",
    BOOLEAN: "bool",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    required: bool
    nullable: bool
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table '{self.name}' has no column '{name}'")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def describe(self) -> str:
        """A Markdown table of the columns, used by the README and `recfunnel schema`."""
        rows = [f"### `{self.name}`", "", "| column | type | required | nulls | meaning |",
                "|---|---|---|---|---|"]
        rows += [f"| `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} | "
                 f"{'allowed' if c.nullable else 'no'} | {c.doc} |" for c in self.columns]
        return "\n".join(rows)


EVENTS = Table(
    name="events",
    key=("user_id", "item_id", "timestamp"),
    columns=(
        Column("user_id", INTEGER, True, False, "who saw the item"),
        Column("item_id", INTEGER, True, False, "what was shown"),
        Column("timestamp", TIMESTAMP, True, False,
               "when, in UTC; naive datetimes are read as UTC, numbers as epoch seconds, text as "
               "ISO-8601 (other formats: data.timestamp_format)"),
        Column("click", BINARY, True, False, "the user opened the item"),
        Column("like", BINARY, False, False, "explicit positive feedback; 0 when not observed"),
        Column("share", BINARY, False, False, "the user shared it; 0 when not observed"),
        Column("watch_seconds", FLOAT, False, True,
               "seconds watched, 0 without a click; null when the source does not record it"),
        Column("duration_seconds", FLOAT, False, True,
               "the item's length in seconds at the time of the event; null when unknown"),
    ),
)

USERS = Table(
    name="users",
    key=("user_id",),
    columns=(
        Column("user_id", INTEGER, True, False, "the user"),
        Column("age", INTEGER, False, True, "age in years"),
        Column("gender", STRING, False, True, "as reported: F, M, other"),
        Column("location", STRING, False, True,
               "country on synthetic data, zip-code region on MovieLens"),
    ),
)

ITEMS = Table(
    name="items",
    key=("item_id",),
    columns=(
        Column("item_id", INTEGER, True, False, "the item"),
        Column("category", STRING, False, True, "genre or topic; '|'-separated when several"),
        Column("creator", STRING, False, True, "uploader or studio"),
        Column("title", STRING, False, True, "display title"),
        Column("duration_seconds", FLOAT, False, True, "length in seconds"),
        Column("unsafe", BOOLEAN, False, False,
               "flagged by moderation as NSFW, harmful or illegal; false when absent"),
    ),
)

TABLES = {t.name: t for t in (EVENTS, USERS, ITEMS)}
