"""Reading tables from disk in bounded memory: parquet files or folders, CSV and TSV.

Each failure names the file and says what is wrong with it (empty, truncated, unknown format),
instead of surfacing a library's internal error.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

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


def iter_chunks(path: str | Path, batch_rows: int = 1_000_000) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yields (source label, frame) chunks of at most `batch_rows` rows from every file of a table."""
    for file in table_files(path):
        if file.stat().st_size == 0:
            raise DataSourceError(f"{file}: file is empty (0 bytes); expected a {file.suffix[1:]} table")
        if file.suffix == ".parquet":
            yield from _parquet_chunks(file, batch_rows)
        elif file.suffix in (".csv", ".tsv"):
            sep = "\t" if file.suffix == ".tsv" else ","
            try:
                for i, chunk in enumerate(pd.read_csv(file, sep=sep, chunksize=batch_rows)):
                    yield f"{file.name}#{i}", chunk
            except pd.errors.EmptyDataError:
                raise DataSourceError(f"{file}: file has no header and no rows") from None
        else:
            raise DataSourceError(f"{file}: unknown table format; expected one of {TABLE_SUFFIXES}")


def _parquet_chunks(file: Path, batch_rows: int):
    try:
        reader = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataSourceError(f"{file}: not a readable parquet file (truncated or corrupt?): {err}") \
            from None
    if reader.metadata.num_rows == 0:
        yield f"{file.name}#0", reader.schema_arrow.empty_table().to_pandas()
        return
    try:
        for i, batch in enumerate(reader.iter_batches(batch_size=batch_rows)):
            yield f"{file.name}#{i}", batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataSourceError(f"{file}: parquet data cannot be decoded (truncated or corrupt?): {err}") \
            from None


def read_table(path: str | Path) -> pd.DataFrame:
    """A whole (small) table, e.g. users or items."""
    frames = [chunk for _, chunk in iter_chunks(path)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
