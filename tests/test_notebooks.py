"""The notebooks run top to bottom against the real code, and are stored without outputs.

Each notebook runs (nbclient) in a fresh kernel of this environment's Python, with the clone on
PYTHONPATH and its runs folder in a temp dir; they run in order, so 02, 03 and 04 reuse the run 01
built, as a reader going through them would. 04 starts a real tritonserver and stops it in its
last cell; one left running by a notebook that failed halfway is stopped here.
"""
import contextlib
import json
import os
import signal
import sys
import time

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import REPO

NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "recfunnel-test"
# The section of the run's summary each notebook writes.
WRITES = {"01_dataset": "dataset", "02_models": "models", "03_evaluation": "evaluation"}
SERVES = "04_serve"           # exports the run into notebook-small/triton_repo and serves it
AB_TEST = "05_ab_test"        # a simulated A/B test through a server it starts and stops

# requirements.lock has IPython 8.23, which imports typing_extensions.TypeAliasType, absent from
# the typing_extensions < 4.6 that TensorFlow 2.12 needs: without this stand-in the kernel dies
# at start. It does nothing once the lock pins an IPython that does not import it (8.22.2).
KERNEL_START = """\
import typing_extensions
if not hasattr(typing_extensions, "TypeAliasType"):
    class TypeAliasType:          # IPython only asks isinstance(x, TypeAliasType): never true
        pass
    typing_extensions.TypeAliasType = TypeAliasType
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """A kernelspec for this Python, and the folder the notebooks' runs go to."""
    root = tmp_path_factory.mktemp("notebooks")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    env = {"PYTHONPATH": str(REPO), "RECFUNNEL_NOTEBOOK_RUNS": str(root / "runs"),
           "RECFUNNEL_CACHE": str(root / "cache")}       # synthetic data not in the user's cache
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", KERNEL_START, "-f", "{connection_file}"],
        "display_name": "recfunnel (test)", "language": "python", "env": env}))
    specs = KernelSpecManager(kernel_dirs=[str(root / "kernels")], ensure_native_kernel=False)
    return specs, root / "runs"


def test_every_stage_has_its_notebook():
    assert [p.stem for p in PATHS][:len(WRITES)] == list(WRITES)


def stop_servers_left_on(runs) -> list[int]:
    """The pids of tritonservers still serving a repository under `runs`, stopped: SIGTERM, then
    SIGKILL to the process group (the server's python-backend stubs) after 60 s."""
    flag = f"--model-repository={runs.resolve()}"
    left = [p for p in psutil.process_iter(["cmdline"])
            if any(arg.startswith(flag) for arg in p.info["cmdline"] or [])]
    for proc in left:
        proc.terminate()
    for proc in psutil.wait_procs(left, timeout=60)[1]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return [p.pid for p in left]


def tier(path):
    """01 builds the data set; 02 and 03 train (when run alone, the steps before too); 04 and
    05 also start a tritonserver."""
    marks = [] if path.stem == "01_dataset" else [pytest.mark.training]
    if path.stem in (SERVES, AB_TEST):
        marks.append(pytest.mark.server)
    return pytest.param(path, marks=marks, id=path.stem)


@pytest.mark.parametrize("path", [tier(p) for p in PATHS])
def test_notebook_runs_top_to_bottom(path, notebook_env):
    specs, runs = notebook_env
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    client = NotebookClient(nb, km=km, timeout=900,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    try:
        client.execute()         # raises CellExecutionError naming the failing cell
    finally:
        if km.has_kernel:        # a kernel manager passed in is ours to shut down
            km.shutdown_kernel(now=True)
        # the executed copy, outputs and all, beside the runs: what a reader would have seen
        nbformat.write(nb, runs.parent / path.name)
        left = stop_servers_left_on(runs)
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was shown inline"
    assert any("text/html" in o.get("data", {}) for o in outputs), "no table was shown"
    if path.stem in WRITES:
        summary = json.loads((runs / "notebook-small" / "summary.json").read_text())
        assert WRITES[path.stem] in summary
    if path.stem == SERVES:
        exported = json.loads((runs / "notebook-small" / "triton_repo" / "versions.json")
                              .read_text())
        assert list(exported) == ["1", "2"] and "retired" in exported["2"]   # rolled out and back
    if path.stem == AB_TEST:
        analysis = json.loads((runs / "notebook-small" / "experiments" / "analysis.json")
                              .read_text())
        assert analysis["decision"]["outcome"] and analysis["offline_vs_online"]["rows"]
    assert not left, f"{path.name} left tritonserver {left} running"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    for n, cell in enumerate(code):
        assert not cell.outputs and cell.execution_count is None, \
            f"{path.name}: code cell {n} holds outputs; clear them before committing"
        # %%time prints the cell's exception and returns: the cell passes, a later one fails
        assert not cell.source.lstrip().startswith("%%time"), \
            f"{path.name}: code cell {n} is timed by %%time, which hides its errors"
