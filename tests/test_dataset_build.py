"""The whole dataset build on real NVTabular workflows: one process and a dask cluster agree,
the saved workflow reloads in a fresh process, and the loud checks refuse bad splits."""
import json
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from recfunnel.config import ComputeConfig, DataConfig, DatasetConfig, ValidationConfig
from recfunnel.data import sources
from recfunnel.workflows.backend import dask_client
from recfunnel.workflows.dataset import DatasetBuilder, DatasetCheckError, read_split
from conftest import REPO

CFG = DatasetConfig(window_days=8, active_min_events=3, active_window_days=5,
                    unsafe_filters=[{"kind": "flag"}], valid_days=2, test_days=2)
ORDER = ["split", "user_id_raw", "item_id_raw"]
# The 20,000 events in 7 partitions (the default 256MB holds them in one), so that a user's
# rows start scattered over partitions and the cluster's two workers share them.
PART_SIZE = "256KB"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, small_synthetic):
    root = tmp_path_factory.mktemp("build")
    raw = sources.materialize(DataConfig(synthetic=small_synthetic), root,
                              cache_dir=root / "cache", progress=False)
    sources.validate_source(raw, root / "data", ValidationConfig(), progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "dataset"
    section = DatasetBuilder(CFG, ComputeConfig(part_size=PART_SIZE), data_dir, out,
                             progress=False).build()
    return out, section


def _all_splits(out):
    frames = [read_split(out / name) for name in ("train", "valid", "test")]
    return pd.concat(frames).sort_values(ORDER).reset_index(drop=True)


def test_steps_chain_and_checks_pass(single):
    out, section = single
    steps = section["steps"]
    assert [s["name"] for s in steps][0] == "canonical_items"
    for before, after in zip(steps, steps[1:]):
        assert after["rows_before"] == before["rows_after"]
    filters = {s["name"]: s for s in steps}
    assert filters["unsafe_content"]["rows_after"] < filters["unsafe_content"]["rows_before"]
    assert filters["active_users"]["users_after"] < filters["active_users"]["users_before"]
    assert filters["negative_sampling"]["rows_after"] == pytest.approx(
        2 * filters["examples"]["rows_after"], rel=0.01)
    assert len(section["checks"]) == 4
    left = pd.read_parquet(out / "artifacts" / "left_out_users.parquet")
    assert len(left) == section["left_out_users"]["count"] > 0
    kept = set(_all_splits(out)["user_id_raw"])
    assert not kept & set(left["user_id"])


def test_local_cluster_gives_identical_splits(single, data_dir, tmp_path):
    out, _ = single
    compute = ComputeConfig(cluster="local", workers=2, memory_limit="2GB", part_size=PART_SIZE)
    with dask_client(compute) as client:
        assert client is not None and len(client.scheduler_info()["workers"]) == 2
        DatasetBuilder(CFG, compute, data_dir, tmp_path / "dataset", progress=False).build()
    pd.testing.assert_frame_equal(_all_splits(out), _all_splits(tmp_path / "dataset"))


def test_saved_workflow_reloads_in_a_fresh_process(single, tmp_path):
    out, _ = single
    valid = read_split(out / "valid")
    raw = valid.drop(columns=["user_id", "item_id"]).rename(
        columns={"user_id_raw": "user_id", "item_id_raw": "item_id"})
    raw = raw.assign(duration_seconds=0.0)[
        ["user_id", "item_id", "timestamp", "click", "like", "share", "watch_75",
         "watch_duration_aware", "watch_seconds", "duration_seconds", "split",
         "sampled_negative", "events"]]
    raw.to_parquet(tmp_path / "raw.parquet")
    code = f"""
import nvtabular as nvt, pandas as pd
from merlin.io import Dataset
import recfunnel.workflows  # our Merlin fixes
wf = nvt.Workflow.load({str(out / 'workflow')!r})
out = wf.transform(Dataset(pd.read_parquet({str(tmp_path / 'raw.parquet')!r}), cpu=True)).to_ddf().compute()
out.to_parquet({str(tmp_path / 'again.parquet')!r})
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = pd.read_parquet(tmp_path / "again.parquet")
    pd.testing.assert_frame_equal(again[valid.columns].reset_index(drop=True), valid,
                                  check_dtype=False)


def test_an_empty_split_is_refused(data_dir, tmp_path):
    cfg = replace(CFG, train_end="2020-01-01")    # everything after the cut-off: no training data
    with pytest.raises(DatasetCheckError, match="split 'train' is empty"):
        DatasetBuilder(cfg, ComputeConfig(), data_dir, tmp_path / "d", progress=False).build()
