"""The dataset-build fixture of tests/test_dataset_identity.py: its input, its settings, and the
splits as that test compares them (categorical codes read back as the values they encode).

    PYTHONPATH=. python tests/dataset_build_fixture.py data      # the validated input, once
    PYTHONPATH=. python tests/dataset_build_fixture.py before    # (was run at main 6636b93)
    PYTHONPATH=. python tests/dataset_build_fixture.py expected  # the splits the code builds now

`data` wrote tests/fixtures/dataset_build/data/ (5,000 synthetic events in 10 day files; the
input is committed, so a change to the generator leaves it alone). `before` wrote
expected_before.parquet with the code of main 6636b93, the build before its negative sampling
was vectorised (the same splits as main 05bb0f6 but that items without a training example now
have ids of their own); `expected` writes expected.parquet, what the build gives now for the
seed: rerun it only for a change meant to alter the splits, and say why in the commit.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.config import (ComputeConfig, DataConfig, DatasetConfig, SyntheticConfig,
                              ValidationConfig)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dataset_build"
DATA = FIXTURE / "data"
EXPECTED_BEFORE = FIXTURE / "expected_before.parquet"
EXPECTED = FIXTURE / "expected.parquet"
SYNTHETIC = SyntheticConfig(seed=7, n_users=150, n_items=200, n_events=5_000, n_days=10,
                            n_creators=20, max_events_per_chunk=1_000)
# Every filter removes something here: copies, flagged items, the first days, idle users.
CFG = DatasetConfig(window_days=5, active_min_events=3, active_window_days=4,
                    unsafe_filters=[{"kind": "flag"}], valid_days=2, test_days=2)
ENCODED = ("user_id", "item_id", "gender", "location", "category", "creator")
ORDER = ["split", "user_id_raw", "item_id_raw"]
RESERVED = {0: "<pad>", 1: "<null>", 2: "<oov>"}    # Categorify's first codes


def decoded_splits(out: Path) -> pd.DataFrame:
    """Every written split of the build at `out`, sorted by ORDER, each Categorify column
    replaced by the value its code stands for (read from the build's categories folder):
    numbering follows frequencies in the training rows, which the sampled negatives change."""
    from recfunnel.workflows.dataset import read_split

    frame = pd.concat([read_split(out / name) for name in ("train", "valid", "test")])
    for column in ENCODED:
        if column not in frame:
            continue
        vocab = pd.read_parquet(out / "categories" / "categories" / f"unique.{column}.parquet")
        values = {**RESERVED, **dict(zip(vocab.index, vocab[column].astype(str)))}
        frame[column] = frame[column].map(values)
    frame["split"] = frame["split"].astype(np.int64)
    return frame.sort_values(ORDER, kind="stable").reset_index(drop=True)


def build(data: Path, out: Path, compute: ComputeConfig | None = None) -> dict:
    from recfunnel.workflows.dataset import DatasetBuilder

    return DatasetBuilder(CFG, compute or ComputeConfig(), data, out, progress=False).build()


def write_data() -> None:
    from recfunnel.data import sources

    with tempfile.TemporaryDirectory() as tmp:
        raw = sources.materialize(DataConfig(synthetic=SYNTHETIC), Path(tmp),
                                  cache_dir=Path(tmp) / "cache", progress=False)
        shutil.rmtree(DATA, ignore_errors=True)
        sources.validate_source(raw, DATA, ValidationConfig(), progress=False)
    for unused in ("quarantine", "truth"):         # the build reads events, users and items
        shutil.rmtree(DATA / unused, ignore_errors=True)


def write_splits(path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        build(DATA, Path(tmp) / "dataset")
        decoded_splits(Path(tmp) / "dataset").to_parquet(path, index=False)


if __name__ == "__main__":
    {"data": write_data, "before": lambda: write_splits(EXPECTED_BEFORE),
     "expected": lambda: write_splits(EXPECTED)}[sys.argv[1]]()
