"""Where the workflows run: pandas or cuDF, one process or a dask cluster.

The code path is the same everywhere; only the backend differs. cuDF is chosen when it imports
and a GPU is visible (unless the config forces the CPU); a `local` cluster is a dask-cuda
LocalCUDACluster on a GPU machine and a distributed LocalCluster otherwise; an address joins an
existing scheduler. Our Merlin CPU fixes are registered on every worker.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from recfunnel.config import CLUSTER_MODES, SCHEDULER_SCHEMES, ComputeConfig
from recfunnel.workflows import merlin_cpu_fixes


def host_array(series) -> np.ndarray:
    """Column values as a host numpy array (cuDF columns come from the GPU)."""
    return series.to_numpy() if hasattr(series, "to_numpy") else np.asarray(series)


def host_frame(data):
    """A cuDF frame or series as pandas; pandas objects unchanged."""
    return data.to_pandas() if hasattr(data, "to_pandas") else data


def gpu_available() -> bool:
    try:
        import cudf  # noqa: F401
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - no cuDF, no driver, no device: all mean CPU
        return False


def use_cpu(compute: ComputeConfig) -> bool:
    return compute.cpu if compute.cpu is not None else not gpu_available()


@contextlib.contextmanager
def dask_client(compute: ComputeConfig) -> Iterator[object | None]:
    """The dask client for the run (None in one process), set as Merlin's global client."""
    from merlin.core.utils import set_dask_client

    if compute.cluster in ("none", "", None):
        yield None
        return
    from distributed import Client

    cluster = None
    if compute.cluster == "local":
        if not use_cpu(compute):
            from dask_cuda import LocalCUDACluster
            cluster = LocalCUDACluster()
        else:
            from distributed import LocalCluster
            cluster = LocalCluster(n_workers=compute.workers,
                                   threads_per_worker=compute.threads_per_worker,
                                   memory_limit=compute.memory_limit, processes=True,
                                   dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    elif compute.cluster.startswith(SCHEDULER_SCHEMES):
        client = Client(compute.cluster)
    else:
        raise ValueError(f"compute.cluster must be one of {CLUSTER_MODES} or a scheduler address "
                         f"(tcp://host:8786), got {compute.cluster!r}")
    merlin_cpu_fixes.register_on_client(client)
    set_dask_client(client)
    try:
        yield client
    finally:
        set_dask_client(None)
        client.close()
        if cluster is not None:
            cluster.close()
