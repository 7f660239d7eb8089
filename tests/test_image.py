"""The CPU image for real: scripts/build_image.sh builds docker/Dockerfile.cpu with podman (from
python:3.11-slim where a registry serves it, else from a debootstrapped Debian base), then a
batch step runs inside it on a mounted run folder (exit code and outputs checked), and the
funnel trained and exported inside it is served by the image's tritonserver, which answers.

Slow tier (marker `slow`): the first build takes minutes (the environment's 2.2 GB), later ones
reuse podman's layers. Skipped, with the reason, where podman is not installed.
"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import REPO, SMALL

pytestmark = pytest.mark.slow
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def image() -> dict:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed, so the image is not built here "
                    "(Debian: apt-get install -y podman runc debootstrap)")
    built = subprocess.run([str(REPO / "scripts" / "build_image.sh")], capture_output=True,
                           text=True, timeout=3600)
    assert built.returncode == 0, built.stderr[-5000:]
    info = dict(line.split(" ", 1) for line in built.stdout.splitlines() if " " in line)
    print(f"\nimage {info['image']} from {info['base']}: {int(info['size_bytes']) / 1e9:.2f} GB, "
          f"built in {info['build_s']} s")
    return info


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The mounted run folder; the image's user (10001) writes into it."""
    folder = tmp_path_factory.mktemp("image") / "runs"
    folder.mkdir()
    os.chmod(folder, 0o777)
    return folder


def in_image(image: dict, runs, *args, timeout=1800):
    return subprocess.run([*PODMAN, "run", "--rm", *LIMITS, "--shm-size", "1g",
                           "-v", f"{runs}:/opt/recfunnel/runs", image["image"], *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def batch(image, runs):
    """`recfunnel pipeline run --steps data,dataset` on a small config, inside the image."""
    return in_image(image, runs, "pipeline", "run", "-c", "configs/default.yaml", "-q",
                    "--run-name", "img", "--steps", "data,dataset", *SMALL)


def test_a_batch_step_runs_inside_the_image(batch, runs):
    assert batch.returncode == 0, batch.stderr[-3000:]
    run = runs / "img"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["events"] > 0 and summary["run"]["steps"] == ["data", "dataset"]
    assert all(summary["dataset"]["splits"][s] > 0 for s in ("train", "valid", "test"))
    assert list((run / "dataset" / "train").glob("*.parquet"))
    assert (run / "summary.json").stat().st_uid == 10001        # written by the image's user


def test_a_bad_config_inside_the_image_is_exit_2_with_one_line(image, runs):
    done = in_image(image, runs, "pipeline", "run", "-q", "--set", "data.source=csv")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "recfunnel: error: unknown data.source 'csv'; expected one of "
        "synthetic, movielens100k, parquet"]


@pytest.mark.training
@pytest.mark.server
def test_the_images_tritonserver_serves_the_funnel_it_exported(image, runs, batch):
    assert batch.returncode == 0, batch.stderr[-3000:]
    done = in_image(image, runs, "pipeline", "run", "-c", "configs/default.yaml", "-q",
                    "--run-name", "img", "--steps", "models,evaluation,serving", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    serving = json.loads((runs / "img" / "summary.json").read_text())["serving"]
    assert serving["requests"] > 0 and serving["errors"] == 0
    assert serving["paths"].get("model", 0) > 0 and serving["paths"].get("fallback") == 2
