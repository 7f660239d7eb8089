"""A thin client for the funnel served by Triton: HTTP or gRPC, numpy arrays in and out.

`recfunnel recommend`, the benchmarks and the tests talk to the server through it. Whatever
Triton refuses (a bad input, an unknown model, a model raising `pb_utils.TritonError`) comes
back as `ServingError` carrying Triton's own message. Strings travel as BYTES tensors.
One client per thread: tritonclient's HTTP client is not thread-safe.
"""
from __future__ import annotations

import contextlib
import urllib.request
from dataclasses import dataclass

import numpy as np
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from recfunnel.errors import RecfunnelError

PROTOCOLS = ("http", "grpc")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # as tritonclient


class ServingError(RecfunnelError, RuntimeError):
    """Triton refused or failed a request, or could not be reached; str() is Triton's message.

    `status` is Triton's status: an HTTP code ("400") or a gRPC code ("StatusCode.INTERNAL").
    """

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's counters for one model, all its versions together, since the server started.

    Times are means per successful request, measured inside Triton (no network).
    """
    model: str
    versions: tuple[str, ...]
    requests: int          # successful requests
    failures: int          # failed requests
    inferences: int        # a request with a batch of n counts n
    executions: int        # model executions; dynamic batching puts several requests in one
    mean_ms: float         # request arrival to response; 0.0 when no request succeeded
    queue_ms: float        # waiting in the scheduler's queue
    compute_ms: float      # input copy + execute + output copy


class TritonClient:
    """Talks to one Triton server over `protocol` ("http" or "grpc") at `address` (host:port).

    `metrics_url` (http://host:port/metrics) is needed only by `metrics_text`; `for_server`
    fills everything in from a running `TritonServer`.
    """

    def __init__(self, address: str, protocol: str = "http", *, metrics_url: str | None = None,
                 timeout_s: float = 30.0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        self.address = address.split("://", 1)[-1]     # tritonclient wants no scheme
        self.protocol = protocol
        self.metrics_url = metrics_url
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as module
            self._client = module.InferenceServerClient(
                self.address, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module
            self._client = module.InferenceServerClient(self.address)
        self._module = module

    @classmethod
    def for_server(cls, server, protocol: str = "http", **kwargs) -> "TritonClient":
        """A client for a running `recfunnel.serving.TritonServer`."""
        address = server.http_address if protocol == "http" else server.grpc_address
        return cls(address, protocol, metrics_url=server.metrics_url, **kwargs)

    @contextlib.contextmanager
    def _server_errors(self):
        try:
            yield
        except InferenceServerException as e:
            raise ServingError(e.message(), status=e.status()) from None
        except OSError as e:      # refused, reset, timed out (HTTP; gRPC reports UNAVAILABLE)
            raise ServingError(f"cannot reach Triton at {self.address} over {self.protocol}: "
                               f"{e}") from None

    def _call_options(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def is_ready(self) -> bool:
        """True when the server answers and every model it serves is ready."""
        try:
            with self._server_errors():
                return bool(self._client.is_server_ready())
        except ServingError:
            return False

    def is_model_ready(self, model: str, version: str | int = "") -> bool:
        """True when `model` (its latest version, or `version`) is loaded and ready."""
        try:
            with self._server_errors():
                return bool(self._client.is_model_ready(model, str(version)))
        except ServingError:
            return False

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
              version: str | int = "") -> dict[str, np.ndarray]:
        """Run `model` on `inputs` (name -> array, first axis the batch for batching models).

        Returns the requested `outputs` (default: every output) as arrays; BYTES outputs are
        object arrays of `bytes`. Str arrays are sent as UTF-8 BYTES, bytes arrays as they are.
        """
        tensors = []
        for name, value in inputs.items():
            array = _as_tensor(name, value)
            datatype = np_to_triton_dtype(array.dtype)
            tensor = self._module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [self._module.InferRequestedOutput(n) for n in outputs] if outputs else None
        with self._server_errors():
            result = self._client.infer(model, tensors, model_version=str(version),
                                        outputs=requested, **self._call_options())
        if outputs is None:
            response = result.get_response()
            outputs = ([o["name"] for o in response["outputs"]] if self.protocol == "http"
                       else [o.name for o in response.outputs])
        return {name: result.as_numpy(name) for name in outputs}

    def model_statistics(self, model: str = "") -> dict[str, ModelStatistics]:
        """Per model (all of them when `model` is ""), Triton's request counts and mean times."""
        with self._server_errors():
            if self.protocol == "http":
                raw = self._client.get_inference_statistics(model)
            else:
                raw = self._client.get_inference_statistics(model, as_json=True)
        return summarize_statistics(raw)

    def metrics_text(self) -> str:
        """The Prometheus metrics page (nv_inference_request_success, nv_cpu_utilization, ...)."""
        if not self.metrics_url:
            raise ValueError("metrics_text needs metrics_url (http://host:port/metrics); pass it "
                             "to TritonClient or build the client with TritonClient.for_server")
        try:
            with NO_PROXY.open(self.metrics_url, timeout=self.timeout_s) as response:
                return response.read().decode()
        except OSError as e:
            raise ServingError(f"cannot read Triton's metrics at {self.metrics_url}: {e}") from None

    def load_model(self, model: str) -> None:
        """Load (or reload) `model` from the repository; needs model_control_mode="explicit"."""
        with self._server_errors():
            self._client.load_model(model)

    def unload_model(self, model: str) -> None:
        """Unload `model`; needs model_control_mode="explicit"."""
        with self._server_errors():
            self._client.unload_model(model)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "TritonClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_tensor(name: str, value) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind == "U":       # str -> object, which tritonclient encodes as UTF-8
        array = array.astype(object)
    if np_to_triton_dtype(array.dtype) is None:
        raise ValueError(f"input {name!r}: numpy dtype {array.dtype} has no Triton datatype; "
                         "send bool, (u)int8-64, float16/32/64, str or bytes")
    return array


def summarize_statistics(raw: dict) -> dict[str, ModelStatistics]:
    """Triton's statistics response (HTTP JSON, or gRPC as JSON) -> ModelStatistics per model.

    gRPC's JSON writes 64-bit counters as strings and leaves out zeros; both are handled.
    """
    totals: dict[str, dict] = {}
    for entry in raw.get("model_stats", []):
        stats = entry.get("inference_stats", {})
        t = totals.setdefault(entry["name"], {"versions": [], "requests": 0, "failures": 0,
                                              "inferences": 0, "executions": 0, "ns": 0,
                                              "queue_ns": 0, "compute_ns": 0})
        t["versions"].append(str(entry.get("version", "")))
        t["requests"] += _count(stats, "success")
        t["failures"] += _count(stats, "fail")
        t["inferences"] += int(entry.get("inference_count", 0))
        t["executions"] += int(entry.get("execution_count", 0))
        t["ns"] += _ns(stats, "success")
        t["queue_ns"] += _ns(stats, "queue")
        t["compute_ns"] += sum(_ns(stats, k) for k in
                               ("compute_input", "compute_infer", "compute_output"))
    out = {}
    for name, t in totals.items():
        per_request_ms = 1e-6 / t["requests"] if t["requests"] else 0.0
        out[name] = ModelStatistics(
            model=name, versions=tuple(sorted(t["versions"])), requests=t["requests"],
            failures=t["failures"], inferences=t["inferences"], executions=t["executions"],
            mean_ms=t["ns"] * per_request_ms, queue_ms=t["queue_ns"] * per_request_ms,
            compute_ms=t["compute_ns"] * per_request_ms)
    return out


def _count(stats: dict, key: str) -> int:
    return int(stats.get(key, {}).get("count", 0))


def _ns(stats: dict, key: str) -> int:
    return int(stats.get(key, {}).get("ns", 0))
