"""The served funnel's entry point: one request for users' recommendations runs every stage.

A business-logic (BLS) python model. It checks the request, then runs the version's declared
funnel at one Triton version: by default with one call to `chain` (every stage in one process,
dynamically batched across requests; serving.path chain), or with one call per stage model
(serving.path stages): user_features -> candidates -> each ranker (e.g. light_ranker ->
heavy_ranker), each ranker given the list the one before kept. Which stages version N has, and
which path it is served by, is `funnel/<N>/stages.json`, written by export.
Which version: the newest one that every one of its stages has loaded and ready, looked up for
each request. Stages keep two versions loaded, so during a rollout the old version
serves until the new one is ready in all its stages, and a rollback (the newest version
leaves) falls back to the one still loaded. A stage version that goes away under a request
(unloading) is retried once at the next ready version, so no request fails or mixes versions;
every stage also answers its training version, and the router refuses to mix them.

Experiments (L8): when the repository holds `experiment.json` (`recfunnel experiment start`),
each user is assigned an arm by recfunnel.experiments.assignment (a salted hash: the same arm
in every request) and served that arm's variant: its own blend of the heavy ranker's
objectives, or a pinned Triton version (the long-term holdout stays on the version served when
the experiment began, for as long as that version is loaded). Without the file every user is
in arm `default`. Users of one request in different arms are served in one group per arm.

Request:  USER_ID INT64 [n] raw user ids (1 <= n <= max_users);
          K INT32 [1] optional, list length (default: the version's FunnelSettings.k);
          TIME INT64 [1] optional, the request's time in epoch seconds, for time-relative
          features such as days since the user's last event (default: the day the version's
          feature tables count events up to).
Response: ITEMS INT64 [n, K] raw item ids, best first, -1 pads a short list; SCORES FP64 [n, K]
          blended; OBJECTIVE_SCORES FP64 [n, objectives, K]; OBJECTIVES BYTES [objectives];
          PATH BYTES [n] "model" or "fallback" (a user the models do not know: popularity);
          ARM BYTES [n] the user's experiment arm; VERSION BYTES [n] training version;
          MODEL_VERSION INT64 [n] Triton version.
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from funnel_stage import REFUSED, RequestError, error_response, strings

from recfunnel.experiments.assignment import EXPERIMENT_FILE, Experiment

DEFAULT_ARM = "default"
STAGES_FILE = "stages.json"          # funnel/<N>/stages.json: version N's stage models, in order


class StageUnavailable(Exception):
    """The stage version went away (rollback or rollout) while the request was in flight."""


class NoVersionReady(Exception):
    """No Triton version is loaded in every stage."""


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_users = int(parameters["max_users"])
        self.repository = Path(args["model_repository"]).parent
        self._experiment, self._experiment_stamp = None, None
        self._stages: dict[int, list[str]] = {}

    def stages(self, version: int) -> dict | None:
        """Triton version `version`'s declared funnel: {"stages": stage models in request
        order, "keep": ranker -> keep, "chain": the model running them all in one call, or
        null to call each stage} (None: no such version of the router on disk); a version's
        file never changes once installed."""
        if version not in self._stages:
            path = self.repository / "funnel" / str(version) / STAGES_FILE
            if not path.is_file():
                return None
            self._stages[version] = json.loads(path.read_text())
        return self._stages[version]

    def experiment(self) -> Experiment | None:
        """The repository's experiment.json, re-read when it changes (written atomically)."""
        path = self.repository / EXPERIMENT_FILE
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._experiment, self._experiment_stamp = None, None
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._experiment_stamp:
            self._experiment, self._experiment_stamp = Experiment.load(path), stamp
        return self._experiment

    # ---- which version serves ----------------------------------------------------------------
    def ready_version(self, below: int | None = None, pinned: int | None = None) -> int:
        """The newest Triton version (below `below`) whose every stage has it on disk and
        ready. Asked on every request (one readiness call per stage, about 1 ms), so all router
        instances switch together; a version whose folder left (rollback) is not used even
        while Triton still unloads it."""
        def usable(version: int) -> bool:
            declared = self.stages(version)
            return declared is not None and all(
                (self.repository / stage / str(version)).is_dir()
                and pb_utils.is_model_ready(stage, str(version)) for stage in called(declared))

        folder = self.repository / "funnel"
        on_disk = sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()),
                         reverse=True) if folder.is_dir() else []
        if pinned is not None and pinned in on_disk and usable(pinned):
            return pinned
        for version in on_disk:
            if (below is None or version < below) and usable(version):
                return version
        raise NoVersionReady(f"no Triton version is ready in every one of its stages"
                             f"{f' below {below}' if below else ''}; router versions on disk: "
                             f"{sorted(on_disk)}; see the server log")

    # ---- one request ---------------------------------------------------------------------------
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.recommend(request))
            except RequestError as e:      # the client's mistake (400), not a server failure
                responses.append(error_response(str(e), pb_utils.TritonError.INVALID_ARG))
            except Exception as e:  # noqa: BLE001 - a failed stage or no version ready
                if len(requests) == 1:
                    # Raised, not answered: Triton 2.51 counts an error *response* of a python
                    # model as a success (server#7713), so only a raised error reaches
                    # nv_inference_request_failure and the error-rate alert (monitoring/).
                    # Without a batcher Triton hands this model one request per call.
                    raise pb_utils.TritonModelException(f"funnel: {e}") from None
                responses.append(error_response(f"funnel: {e}"))
        return responses

    def recommend(self, request):
        users_tensor = pb_utils.get_input_tensor_by_name(request, "USER_ID")
        if users_tensor is None:      # Triton lets it through when K alone is sent
            raise RequestError("missing required input USER_ID: INT64 [n] raw user ids")
        users = users_tensor.as_numpy()
        if users.size == 0:
            raise RequestError("USER_ID is empty: send at least one raw user id")
        if users.size > self.max_users:
            raise RequestError(f"USER_ID holds {users.size} users; this server takes at most "
                               f"{self.max_users} per request (max_users in "
                               "funnel/config.pbtxt): split the batch")
        k_tensor = pb_utils.get_input_tensor_by_name(request, "K")
        k = None if k_tensor is None else int(k_tensor.as_numpy().reshape(-1)[0])
        if k is not None and k < 1:
            raise RequestError(f"K must be at least 1, got {k}")
        time_tensor = pb_utils.get_input_tensor_by_name(request, "TIME")
        when = None if time_tensor is None else time_tensor.as_numpy().reshape(-1)[:1]
        experiment = self.experiment()
        arms = (experiment.assign(users) if experiment is not None
                else np.full(users.size, DEFAULT_ARM, dtype=object))
        parts = []
        for arm in dict.fromkeys(arms):                     # one group per arm, in first-seen order
            rows = np.flatnonzero(arms == arm)
            variant = experiment.arm(arm) if experiment is not None else None
            out = self.serve_group(users[rows], k, variant, when)
            out["ARM"] = strings([arm] * rows.size)
            parts.append((rows, arm, out))
        return self.merge(users.size, parts)

    def serve_group(self, users: np.ndarray, k: int | None, variant, when=None) -> dict:
        """The stages for users of one arm: at its pinned Triton version when that is ready
        (else the newest ready one), with its blend (None: the version's own)."""
        pinned = getattr(variant, "model_version", None)
        blend = getattr(variant, "blend", None)
        version = self.ready_version(pinned=pinned)
        try:
            return self.run_stages(version, users, k, blend, when)
        except StageUnavailable:
            return self.run_stages(self.ready_version(below=version), users, k, blend, when)

    @staticmethod
    def merge(n: int, parts: list) -> "pb_utils.InferenceResponse":
        """The groups' answers back in the request's user order."""
        names = parts[0][2]["OBJECTIVES"]
        for _, arm, out in parts[1:]:
            if list(out["OBJECTIVES"]) != list(names):
                raise RuntimeError(f"arm {arm} is served by a version with objectives "
                                   f"{list(out['OBJECTIVES'])}, another arm by {list(names)}")
        tensors = {}
        for name in ("ITEMS", "SCORES", "OBJECTIVE_SCORES", "PATH", "ARM", "VERSION",
                     "MODEL_VERSION"):
            first = parts[0][2][name]
            merged = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for rows, _, out in parts:
                merged[rows] = out[name]
            tensors[name] = merged
        tensors["OBJECTIVES"] = names
        return pb_utils.InferenceResponse([pb_utils.Tensor(name, value)
                                           for name, value in tensors.items()])

    def run_stages(self, version: int, users: np.ndarray, k: int | None,
                   blend: dict | None, when=None) -> dict:
        """Every stage at one Triton version; the answer as numpy arrays by output name."""
        chain = self.stages(version).get("chain")
        if chain:
            return self.run_chain(chain, version, users, k, blend, when)
        feature_inputs = [pb_utils.Tensor("USER_ID", users)]
        if when is not None:
            feature_inputs.append(pb_utils.Tensor("TIME", when.astype(np.int64)))
        features = self.call("user_features", version, feature_inputs,
                             ["USER_FEATURES", "PATH", "DEFAULT_K", "CATALOGUE_SIZE", "VERSION"])
        catalogue = int(features["CATALOGUE_SIZE"].as_numpy()[0])
        k = int(features["DEFAULT_K"].as_numpy()[0]) if k is None else k
        if k > catalogue:
            raise RequestError(f"K {k} is larger than the catalogue ({catalogue} items); "
                               f"ask for 1 to {catalogue}")
        user_features = features["USER_FEATURES"]
        candidates = self.call("candidates", version,
                               [pb_utils.Tensor("USER_ID", users), user_features,
                                features["PATH"]], ["CANDIDATES", "ITEMS", "SCORES", "VERSION"])
        answers = {"user_features": features, "candidates": candidates}
        declared = self.stages(version)
        rankers, keeps = declared["stages"][2:], declared["keep"]
        items, scores = candidates["ITEMS"].as_numpy()[:, :k], candidates["SCORES"].as_numpy()[:, :k]
        objective_scores, objectives = np.zeros((users.size, 0, items.shape[1])), strings([])
        listed = candidates["CANDIDATES"]
        for i, ranker in enumerate(rankers):
            last = i == len(rankers) - 1
            keep = min(k if last else max(int(keeps[ranker]), k), listed.as_numpy().shape[1])
            inputs = [user_features, pb_utils.Tensor("CANDIDATES", listed.as_numpy()),
                      pb_utils.Tensor("KEEP", np.array([keep], np.int32))]
            if last and blend is not None:
                inputs.append(pb_utils.Tensor("BLEND", strings([json.dumps(blend)])))
            out = self.call(ranker, version, inputs, ["KEPT", "ITEMS", "SCORES",
                                                      "OBJECTIVE_SCORES", "OBJECTIVES", "VERSION"])
            answers[ranker], listed = out, out["KEPT"]
            if last:
                items, scores = out["ITEMS"].as_numpy(), out["SCORES"].as_numpy()
                objective_scores = out["OBJECTIVE_SCORES"].as_numpy()
                objectives = out["OBJECTIVES"].as_numpy()
        trained = {stage: out["VERSION"].as_numpy()[0].decode() for stage, out in answers.items()}
        if len(set(trained.values())) != 1:
            raise RuntimeError(f"Triton version {version} mixes training versions {trained}; "
                               "re-export the run (recfunnel export)")
        n = users.size
        return {"ITEMS": items, "SCORES": scores, "OBJECTIVE_SCORES": objective_scores,
                "OBJECTIVES": objectives, "PATH": features["PATH"].as_numpy(),
                "VERSION": strings([trained["user_features"]] * n),
                "MODEL_VERSION": np.full(n, version, np.int64)}

    def run_chain(self, chain: str, version: int, users: np.ndarray, k: int | None,
                  blend: dict | None, when=None) -> dict:
        """The stages in one call to `chain` at one Triton version (every row of its inputs
        carries the request's K, time and blend, which the chain's batcher needs)."""
        n = users.size
        column = lambda value, dtype: np.full((n, 1), value, dtype)  # noqa: E731
        inputs = [pb_utils.Tensor("USER_ID", users.astype(np.int64).reshape(n, 1)),
                  pb_utils.Tensor("K", column(k or 0, np.int32)),
                  pb_utils.Tensor("TIME", column(-1 if when is None else int(when[0]), np.int64)),
                  pb_utils.Tensor("BLEND", np.full((n, 1), json.dumps(blend).encode()
                                                   if blend is not None else b"", dtype=object))]
        out = self.call(chain, version, inputs, ["ITEMS", "SCORES", "OBJECTIVE_SCORES",
                                                 "OBJECTIVES", "PATH", "VERSION"])
        return {"ITEMS": out["ITEMS"].as_numpy(), "SCORES": out["SCORES"].as_numpy(),
                "OBJECTIVE_SCORES": out["OBJECTIVE_SCORES"].as_numpy(),
                "OBJECTIVES": out["OBJECTIVES"].as_numpy()[0],
                "PATH": out["PATH"].as_numpy().reshape(n),
                "VERSION": out["VERSION"].as_numpy().reshape(n),
                "MODEL_VERSION": np.full(n, version, np.int64)}

    def call(self, stage: str, version: int, inputs: list, outputs: list[str]) -> dict:
        """One stage at one version (BLS); its named outputs as pb_utils tensors."""
        response = pb_utils.InferenceRequest(model_name=stage, model_version=version,
                                             requested_output_names=outputs,
                                             inputs=inputs).exec()
        if response.has_error():
            if not pb_utils.is_model_ready(stage, str(version)):
                raise StageUnavailable(f"{stage} version {version}")
            message = response.error().message()
            refused = message.split(REFUSED, 1)[1] if REFUSED in message else None
            # what the client sent (users, K, time) is the client's mistake; a blend comes from
            # the experiment's arms, which are the server's
            if refused is not None and not refused.startswith("BLEND"):
                raise RequestError(f"{stage}: {refused}")
            raise RuntimeError(f"stage {stage} (Triton version {version}): "
                               f"{response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}


def called(declared: dict) -> list[str]:
    """The models the router calls for a version: its chain, or each of its stages."""
    return [declared["chain"]] if declared.get("chain") else declared["stages"]
