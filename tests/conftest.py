"""Shared fixtures: small, fast versions of the real data sources, and one small trained run.

Tiers (markers registered in pyproject.toml): `training` trains Merlin models, `server` starts a
real tritonserver or Prometheus, `slow` builds the container image; `make test-fast` leaves the
three out. A test that asks for `small_run` or `small_repo` is marked `training` here, so a new
test reusing them lands in its tier without a marker of its own.

`small_run` and `small_repo` are built once per session and shared read-only: a test that changes
a run or a repository copies it first (`copy_run`, `copy_repo`) or makes its own;
`recfunnel_serve(repo, log)` serves a repository with the real `recfunnel serve`.
"""
import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from recfunnel.config import Config, SyntheticConfig, load_config
from recfunnel.serving.server import free_ports

REPO = Path(__file__).resolve().parents[1]

# The small settings of every trained run in the tests: 300 users, 200 items, 12 days, one epoch.
SMALL = ["--set", "data.synthetic.n_users=300", "--set", "data.synthetic.n_items=200",
         "--set", "data.synthetic.n_events=12000", "--set", "data.synthetic.n_days=12",
         "--set", "dataset.active_min_events=3", "--set", "dataset.window_days=6",
         # 200 items hold too few flagged titles to train the title classifier on
         "--set", "dataset.unsafe_filters=[{kind: flag}]",
         "--set", "models.retrieval_epochs=1", "--set", "models.mf_epochs=1",
         "--set", "models.ranker_epochs=1",
         # the demo's three heavy members cost the small run and every test that trains from
         # it about a minute each; members are tested in test_models_train, through the scorer
         # the served stages use
         "--set", "models.heavy_ranker_members=1"]
MAX_USERS = 64                # users per request in the exported small repository
TRAINED_FIXTURES = {"small_run", "small_repo"}


def recfunnel(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """`python -m recfunnel ARGS` with this clone on PYTHONPATH, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recfunnel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def small_synthetic() -> SyntheticConfig:
    return SyntheticConfig(seed=7, n_users=400, n_items=300, n_events=20_000, n_days=10,
                           n_creators=40, max_events_per_chunk=1_500)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The user's cache (holds the downloaded recbole wheel); tests never write elsewhere in it."""
    return Path(os.environ.get("RECFUNNEL_CACHE") or Path.home() / ".cache" / "recfunnel")


@dataclass(frozen=True)
class SmallRun:
    """`recfunnel pipeline run` with every step on the SMALL settings, as `make demo` runs it."""
    done: subprocess.CompletedProcess       # the command: exit code, stdout, stderr
    dir: Path                               # runs/demo
    cfg: Config                             # the run's config.yaml
    version_dir: Path                       # the trained version (models/<version>)
    version: str                            # its training version


def once_per_session(tmp_path_factory, config, name: str,
                     command) -> tuple[Path, subprocess.CompletedProcess]:
    """`command(folder)` run once for the whole session, even under `make test`'s two workers
    (the first to ask runs it, the other waits for it): the folder and what the command did."""
    base = tmp_path_factory.getbasetemp()
    if hasattr(config, "workerinput"):        # an xdist worker: the session's folder is above
        base = base.parent
    folder, record = base / name, base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.is_file():
            folder.mkdir()
            done = command(folder)
            record.write_text(json.dumps({"args": done.args, "returncode": done.returncode,
                                          "stdout": done.stdout, "stderr": done.stderr}))
    done = subprocess.CompletedProcess(**json.loads(record.read_text()))
    assert done.returncode == 0, done.stderr[-5000:]
    return folder, done


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, pytestconfig) -> SmallRun:
    """One small run for the session (2-3 minutes): read-only, copy it to change it."""
    def pipeline(root):
        return recfunnel("pipeline", "run", "-c", str(REPO / "configs" / "default.yaml"), "-q",
                         "--set", f"run.runs_dir={root / 'runs'}",
                         "--set", f"run.cache_dir={root / 'cache'}", *SMALL, cwd=root,
                         timeout=900)
    root, done = once_per_session(tmp_path_factory, pytestconfig, "small-run", pipeline)
    run_dir = root / "runs" / "demo"
    cfg = load_config(run_dir / "config.yaml")
    models = json.loads((run_dir / "summary.json").read_text())["models"]
    return SmallRun(done, run_dir, cfg, run_dir / models["path"], models["version"])


@dataclass(frozen=True)
class SmallRepo:
    """The small run's trained version exported by `recfunnel export` as Triton version 1."""
    done: subprocess.CompletedProcess
    path: Path


@pytest.fixture(scope="session")
def small_repo(small_run, tmp_path_factory, pytestconfig) -> SmallRepo:
    """A Triton repository of the small run (version 1, MAX_USERS per request): read-only, copy
    it to serve or change it (`copy_repo`)."""
    def export(folder):
        return recfunnel("export", "--run-name", small_run.dir.name, "--runs-dir",
                         str(small_run.dir.parent), "--repo", str(folder / "triton_repo"),
                         "--max-users", str(MAX_USERS), timeout=300)
    folder, done = once_per_session(tmp_path_factory, pytestconfig, "small-repo", export)
    return SmallRepo(done, folder / "triton_repo")


def copy_run(run: SmallRun, to: Path, repo: Path | None = None) -> Path:
    """A copy of the small run at `to`, to change: without its triton_repo, or with a link to
    `repo` in its place (the run whose repository a server of `repo` serves)."""
    shutil.copytree(run.dir, to, ignore=shutil.ignore_patterns("triton_repo"))
    if repo is not None:
        (to / "triton_repo").symlink_to(repo, target_is_directory=True)
    return to


def copy_repo(repo: SmallRepo, to: Path) -> Path:
    """A copy of the small repository at `to`, to serve or change."""
    shutil.copytree(repo.path, to, symlinks=True)
    return to


@contextlib.contextmanager
def recfunnel_serve(repo: Path, log: Path):
    """`recfunnel serve` in its own process, polling the repository every second, until the
    block ends (then SIGTERM, if the block did not stop it)."""
    ports = free_ports(3)
    cli = subprocess.Popen(
        [sys.executable, "-m", "recfunnel", "serve", "--repo", str(repo), "--poll-secs", "1",
         "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
         str(ports[2]), "--log", str(log)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in cli.stdout:
            lines.append(line)
            if line.startswith("ready in"):
                break
        assert cli.poll() is None, f"recfunnel serve exited: {''.join(lines)}"
        pid = int(re.search(r"tritonserver pid (\d+)", "".join(lines)).group(1))
        yield {"cli": cli, "ports": ports, "log": log, "pid": pid, "stdout": lines, "repo": repo,
               "http": f"127.0.0.1:{ports[0]}", "grpc": f"127.0.0.1:{ports[1]}"}
    finally:
        if cli.poll() is None:
            cli.send_signal(signal.SIGTERM)
            cli.wait(timeout=90)


# ---- tiers and order ---------------------------------------------------------------------------
def pytest_addoption(parser):
    parser.addoption("--shuffle", type=int, metavar="SEED",
                     help="run the modules, and the tests in each module, in an order shuffled "
                          "with SEED: shows a test that depends on another having run first")


# Under `make test`'s two workers (--dist loadscope --no-loadscope-reorder) a module is one unit
# of work, handed out in the order of the items: the longest modules start first, the one that
# builds the small run before its other users (so that none waits for it), the rest after.
LONGEST_FIRST = ("test_pipeline.py", "test_image.py", "test_notebooks.py",
                 "test_serving_funnel.py", "test_retrain.py", "test_own_data.py",
                 "test_declared_funnel.py")


def start_order(item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def uses_the_small_run(item) -> bool:
    return bool(TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())))


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    # Before the other hooks, so that -m sees the markers; after them, the shuffle.
    for item in items:
        if uses_the_small_run(item):
            item.add_marker(pytest.mark.training)
    items.sort(key=start_order)
    yield
    seed = config.getoption("--shuffle")
    if seed is not None:
        rng = random.Random(seed)
        modules: dict = {}
        for item in items:
            modules.setdefault(item.module, []).append(item)
        groups = list(modules.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        items[:] = [item for group in groups for item in group]


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return None if seed is None else f"tests shuffled with --shuffle {seed}"
