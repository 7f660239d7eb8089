"""Reading tables from disk in bounded memory: parquet files or folders, CSV and TSV.

Each failure names the file and says what is wrong with it (empty, truncated, unknown format),
instead of surfacing a library's internal error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfunnel.data.validation import DataSourceError

TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")


def table_files(path: str | Path) -> list[Path]:
    """The files of a table: the file itself, or the table files in a folder, in name order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TABLE_SUFFIXES)
        if not files:
            raise DataSourceError(f"{path}: folder holds no {'/'.join(TABLE_SUFFIXES)} files")
        return files
    if not path.exists():
        raise DataSourceError(f"{path}: no such file or folder")
    return [path]


class Chunk(NamedTuple):
    source: str          # the file, relative to the table's folder
    first_row: int       # the file's row number of the chunk's first row (0: first data row)
    frame: pd.DataFrame


def iter_chunks(path: str | Path, batch_rows: int = 1_000_000) -> Iterator[Chunk]:
    """Chunks of at most `batch_rows` rows from every file of a table, numbered within the file."""
    root = Path(path)
    for file in table_files(root):
        if file.stat().st_size == 0:
            raise DataSourceError(f"{file}: file is empty (0 bytes); expected a {file.suffix[1:]} table")
        label = str(file.relative_to(root)) if root.is_dir() else file.name
        if file.suffix == ".parquet":
            frames = _parquet_chunks(file, batch_rows)
        elif file.suffix in (".csv", ".tsv"):
            frames = _csv_chunks(file, batch_rows)
        else:
            raise DataSourceError(f"{file}: unknown table format; expected one of {TABLE_SUFFIXES}")
        first = 0
        for frame in frames:
            yield Chunk(label, first, frame)
            first += len(frame)


def header(path: str | Path) -> list[str]:
    """The column names of a table (of its first file), without reading its rows."""
    file = table_files(path)[0]
    if file.stat().st_size == 0:
        return []
    if file.suffix == ".parquet":
        try:
            return list(pq.read_schema(file).names)
        except (pa.ArrowInvalid, OSError):
            return []                        # reading it says what is wrong, in the data step
    try:
        return list(pd.read_csv(file, sep="\t" if file.suffix == ".tsv" else ",", nrows=0).columns)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        return []


def _csv_chunks(file: Path, batch_rows: int):
    sep = "\t" if file.suffix == ".tsv" else ","
    try:
        yield from pd.read_csv(file, sep=sep, chunksize=batch_rows)
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"{file}: file has no header and no rows") from None


def _parquet_chunks(file: Path, batch_rows: int):
    try:
        reader = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataSourceError(f"{file}: not a readable parquet file (truncated or corrupt?): {err}") \
            from None
    if reader.metadata.num_rows == 0:
        yield reader.schema_arrow.empty_table().to_pandas()
        return
    try:
        for batch in reader.iter_batches(batch_size=batch_rows):
            yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataSourceError(f"{file}: parquet data cannot be decoded (truncated or corrupt?): {err}") \
            from None


def read_table(path: str | Path) -> pd.DataFrame:
    """A whole (small) table, e.g. users or items."""
    frames = [chunk.frame for chunk in iter_chunks(path)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
