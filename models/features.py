"""Serving features (L5.3): every known user's and item's model inputs as of serving time.

The saved NVTabular workflow, the one the training data went through, turns raw request fields
(raw user id, raw item id, the request time) into model inputs: Categorify ids, attributes and
point-in-time statistics as of that time. Running it once per user and per item at export gives
two tables keyed by the raw ids, which the funnel (offline and in Triton) looks rows up in, so a
served request sees exactly the transformation training saw, without NVTabular in the request
path. Users the workflow does not know (not in training) have no row: the funnel serves them the
popularity fallback.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

USER_FEATURES, ITEM_FEATURES = "user_features.parquet", "item_features.parquet"
USER_KEY, ITEM_KEY = "user_id_raw", "item_id_raw"
UNKNOWN_USER = -1    # the row the workflow gives an id it has never seen (out-of-vocabulary)


def build_feature_tables(dataset_dir: Path, out_dir: Path, as_of: pd.Timestamp) -> dict:
    """Writes `user_features.parquet` and `item_features.parquet` (raw id -> model inputs) for
    the users and items of the training split, as of `as_of`; returns their sizes."""
    import nvtabular as nvt
    from merlin.io import Dataset
    from merlin.schema import Tags

    import workflows  # noqa: F401  (Merlin's CPU fixes)
    from workflows.dataset import read_split

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    workflow = nvt.Workflow.load(str(dataset_dir / "workflow"))
    train = read_split(dataset_dir / "train", [USER_KEY, ITEM_KEY, "timestamp"])
    users = np.unique(np.append(train[USER_KEY].to_numpy(), UNKNOWN_USER))
    items = np.unique(train[ITEM_KEY].to_numpy())
    stamp = pd.Timestamp(as_of)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    when = stamp if getattr(train["timestamp"].dtype, "tz", None) else stamp.tz_convert(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = workflow.output_schema
    sizes = {}
    for name, ids, key, tag, path in (
            ("users", users, "user_id", Tags.USER, USER_FEATURES),
            ("items", items, "item_id", Tags.ITEM, ITEM_FEATURES)):
        other = "item_id" if key == "user_id" else "user_id"
        rows = _request_rows(workflow.input_schema, key, ids, other,
                             items[0] if key == "user_id" else users[-1], when)
        out = workflow.transform(Dataset(rows, cpu=True)).to_ddf().compute()
        columns = [f"{key}_raw", *schema.select_by_tag(tag).column_names]
        table = out[columns].sort_values(f"{key}_raw").reset_index(drop=True)
        table.to_parquet(out_dir / path, index=False)
        sizes[name] = int(len(table))
    return {"as_of": stamp.isoformat(), **sizes,
            "files": [USER_FEATURES, ITEM_FEATURES]}


def _request_rows(input_schema, key: str, ids: np.ndarray, other: str, other_id,
                  when) -> pd.DataFrame:
    """One raw request row per id: the id, a placeholder partner id, the request time, and
    zeros for the event columns (labels are not inputs of any model)."""
    frame = {}
    for col in input_schema:
        dtype = col.dtype.to_numpy
        frame[col.name] = np.zeros(len(ids), dtype=dtype)
    frame[key] = ids.astype(input_schema[key].dtype.to_numpy)
    frame[other] = np.full(len(ids), other_id, dtype=input_schema[other].dtype.to_numpy)
    frame = pd.DataFrame(frame)
    frame["timestamp"] = when
    return frame


def load_feature_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(users, items) indexed by raw id."""
    folder = Path(folder)
    return (pd.read_parquet(folder / USER_FEATURES).set_index(USER_KEY),
            pd.read_parquet(folder / ITEM_FEATURES).set_index(ITEM_KEY))
