"""What the served funnel's models share; export copies it beside every model.py.

Each stage model holds one exported training version (`<stage>/<N>/artifacts/`), opens it as a
`models.funnel.Funnel` (checksums verified, one training version or refused) and runs one of
its stage methods per request, so Triton serves exactly what offline evaluation measured.
Stages pass the users' feature rows to each other as one FP64 matrix (every feature is an id
or a float32 statistic, both exact in float64), columns in the order of the version's
user table, so the tensors stay the same whatever features a dataset has.
"""
from __future__ import annotations

import gc
import json
import math
import os
import sys
import traceback
from pathlib import Path

# The stub runs CPython isolated from PYTHONPATH: a clone that is not pip-installed is found
# through RECFUNNEL_SOURCE, which `recfunnel serve` sets (NVIDIA's container installs it).
_SOURCE = os.environ.get("RECFUNNEL_SOURCE")
if _SOURCE and _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

ARTIFACTS = "artifacts"
MAX_BLEND_BYTES = 4096          # a BLEND is a few weights; anything longer is refused unread
DAY_SECONDS = 86_400            # a request's TIME (epoch seconds) -> its day


REFUSED = "refused: "           # begins a stage's answer to a request that is the caller's mistake


class RequestError(ValueError):
    """The request itself is wrong; the message says what to send instead (INVALID_ARG)."""


def refusal(error: RequestError) -> "pb_utils.InferenceResponse":
    """A stage's 400 for the caller's mistake. Its message begins with REFUSED, which is how
    the router tells it from a stage failure: a BLS caller gets every stage error with the
    code INTERNAL, whatever the stage answered (server#7804)."""
    return error_response(REFUSED + str(error), pb_utils.TritonError.INVALID_ARG)


def error_response(message: str, code=None) -> "pb_utils.InferenceResponse":
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def strings(values) -> np.ndarray:
    """A BYTES tensor's array: UTF-8 bytes in an object array."""
    return np.array([str(v).encode() for v in values], dtype=object)


def parse_blend(text, objectives) -> dict:
    """A BLEND's JSON {objective: weight} -> weights, refused (RequestError, the payload not
    echoed) unless it weighs some of `objectives` with finite numbers >= 0."""
    if len(text) > MAX_BLEND_BYTES:
        raise RequestError(f"BLEND must be one JSON object of at most {MAX_BLEND_BYTES} bytes")
    try:
        weights = json.loads(text.decode() if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"BLEND is not JSON {{objective: weight}} ({type(e).__name__} "
                           f"at character {getattr(e, 'pos', getattr(e, 'start', '?'))})"
                           ) from None
    known = set(objectives)
    if not isinstance(weights, dict) or not weights:
        raise RequestError(f"BLEND must be a JSON object weighing some of this version's "
                           f"objectives {sorted(known)}")
    unknown = sorted(map(str, set(weights) - known))
    if unknown:                       # named, each cut short: the payload is not echoed
        shown = ", ".join(repr(name[:40]) for name in unknown[:3])
        raise RequestError(f"BLEND weighs {shown}{' ...' if len(unknown) > 3 else ''}, "
                           f"not objectives of this version: {sorted(known)}")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
               and w >= 0 for w in weights.values()):
        raise RequestError("BLEND weights must be finite numbers >= 0")
    return {name: float(w) for name, w in weights.items()}


def encode_user_rows(funnel, rows) -> np.ndarray:
    """[n, features] float64: the users' feature rows, columns as in the version's user table."""
    return np.column_stack([np.asarray(rows[c], np.float64) for c in funnel.users.columns])


def decode_user_rows(funnel, matrix: np.ndarray):
    """The inverse of encode_user_rows: the feature rows (models.features.Columns) in their
    own dtypes (its shape is checked by StageModel.check before any run)."""
    # imported here: a stub without recfunnel stops in initialize, with the message saying how
    from recfunnel.models.features import Columns

    dtypes = funnel.user_table.dtypes
    return Columns({c: matrix[:, i].astype(dtypes[c]) for i, c in enumerate(dtypes)},
                   len(matrix))


class StageModel:
    """One funnel stage as a Triton python model: `run(inputs) -> outputs` per request.

    Subclasses name the stage and implement `run` (numpy arrays by tensor name in and out) and
    `warm_up` (one call through the stage at load, so TensorFlow traces its graphs before the
    version is ready and the router sends it traffic). Every response carries VERSION, the
    training version, which the router compares across stages.
    """
    name = "stage"

    def initialize(self, args):
        try:
            from recfunnel.serving.export import open_served_version
        except ImportError as e:
            raise RuntimeError(
                f"{self.name}: cannot import recfunnel ({e}); install the package into the "
                "server's Python or set RECFUNNEL_SOURCE to the clone (recfunnel serve does)"
            ) from None
        folder = Path(args["model_repository"]) / args["model_version"] / ARTIFACTS
        self.funnel = open_served_version(folder)
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_users = int(parameters.get("max_users", 64))
        # the widest list a stage is sent: the candidates (a ranker's input)
        self.max_width = min(self.funnel.settings.candidates_k, self.funnel.catalogue_size)
        self.max_item_id = int(self.funnel.items["item_id"].max())
        self.version_tensor = strings([self.funnel.version])
        self.warm_up()
        # With TensorFlow and the version loaded a process holds ~700k objects, and one full
        # collection of them took 650 ms (measured): a stalled request whenever it runs.
        # What is loaded now lives as long as the process, so it leaves the collector's sight.
        gc.collect()
        gc.freeze()

    def warm_up(self) -> None:
        pass

    def finalize(self):
        # Measured: the stub's interpreter teardown with TensorFlow loaded took 10-15 s per
        # stage, longer than Triton's own 30 s shutdown budget on a busy machine. Nothing of
        # ours needs it (no files open for writing); Triton unloads the version cleanly.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {t.name(): t.as_numpy() for t in request.inputs()}
                self.check(inputs)
                outputs = self.run(inputs)
            except RequestError as e:
                responses.append(refusal(e))
                continue
            except Exception as e:  # noqa: BLE001 - answered, logged, and the stage serves on
                traceback.print_exc()
                responses.append(error_response(
                    f"{self.name} (training version {self.funnel.version}) failed: "
                    f"{type(e).__name__}: {e}"))
                continue
            outputs["VERSION"] = self.version_tensor
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(value))
                 for name, value in outputs.items()]))
        return responses

    def check(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuses (400, a short message that never echoes the payload) what no router would
        send: a batch of no users or more than max_users, tensors of different batch sizes,
        feature rows of the wrong width, more candidates than candidates_k, ids outside the
        catalogue, a K or KEEP outside 1 .. the list's width, a path that is not model/fallback."""
        sizes = {name: len(inputs[name]) for name in ("USER_ID", "USER_FEATURES", "PATH",
                                                      "CANDIDATES") if name in inputs}
        if sizes:
            n = next(iter(sizes.values()))
            if len(set(sizes.values())) > 1:
                raise RequestError(f"batch sizes differ: {sizes}; send one row per user in each")
            if not 1 <= n <= self.max_users:
                raise RequestError(f"{n} users in one request; this stage takes 1 to "
                                   f"{self.max_users} (max_users)")
        if "USER_FEATURES" in inputs:
            width = len(self.funnel.users.columns)
            got = inputs["USER_FEATURES"].shape
            if len(got) != 2 or got[1] != width:
                raise RequestError(f"USER_FEATURES has shape {list(got)}; expected [n, {width}] "
                                   f"(this version's user features)")
        if "PATH" in inputs and not set(inputs["PATH"].astype(str)) <= {"model", "fallback"}:
            raise RequestError("PATH holds values other than 'model' and 'fallback'")
        width = None
        if "CANDIDATES" in inputs:
            ids = inputs["CANDIDATES"]
            if ids.ndim != 2 or not 1 <= ids.shape[1] <= self.max_width:
                raise RequestError(f"CANDIDATES has shape {list(ids.shape)}; expected [n, 1 to "
                                   f"{self.max_width}] (candidates_k)")
            top = self.max_item_id
            if ids.size and (ids.min() < -1 or ids.max() > top):
                raise RequestError(f"CANDIDATES holds ids outside -1 .. {top} (this version's "
                                   "categorified item ids; -1 pads)")
            width = ids.shape[1]
        for name in ("K", "KEEP"):
            if name in inputs:
                value = inputs[name].reshape(-1)
                limit = width or self.funnel.catalogue_size
                if value.size != 1 or not 1 <= int(value[0]) <= limit:
                    raise RequestError(f"{name} must be one integer from 1 to {limit}")
        if "BLEND" in inputs:
            text = inputs["BLEND"].reshape(-1)
            if text.size != 1 or len(text[0]) > MAX_BLEND_BYTES:
                raise RequestError(f"BLEND must be one JSON object of at most "
                                   f"{MAX_BLEND_BYTES} bytes")

    # helpers for the stages' warm-up: a user the model knows and a few catalogue items
    def known_user(self) -> np.ndarray:
        from recfunnel.models.features import UNKNOWN_USER

        users = self.funnel.users.index.to_numpy()
        return users[users != UNKNOWN_USER][:1]

    def some_items(self, n: int = 8) -> np.ndarray:
        return self.funnel.items["item_id"].to_numpy(np.int64)[None, :n]
