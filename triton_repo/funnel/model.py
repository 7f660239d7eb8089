"""The served funnel's entry point: one request for users' recommendations runs every stage.

A business-logic (BLS) python model. It checks the request, then calls the stage models in
order, all at one Triton version: user_features -> candidates -> light_ranker -> heavy_ranker.
Which version: the newest one that every stage has loaded and ready, looked up for each
request. Stages keep two versions loaded, so during a rollout the old version
serves until the new one is ready in all four stages, and a rollback (the newest version
leaves) falls back to the one still loaded. A stage version that goes away under a request
(unloading) is retried once at the next ready version, so no request fails or mixes versions;
every stage also answers its training version, and the router refuses to mix them.

Request:  USER_ID INT64 [n] raw user ids (1 <= n <= max_users);
          K INT32 [1] optional, list length (default: the version's FunnelSettings.k).
Response: ITEMS INT64 [n, K] raw item ids, best first, -1 pads a short list; SCORES FP64 [n, K]
          blended; OBJECTIVE_SCORES FP64 [n, objectives, K]; OBJECTIVES BYTES [objectives];
          PATH BYTES [n] "model" or "fallback" (a user the models do not know: popularity);
          VERSION BYTES [1] training version; MODEL_VERSION INT64 [1] Triton version.
"""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from funnel_stage import RequestError, error_response, strings

STAGES = ("user_features", "candidates", "light_ranker", "heavy_ranker")


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

    # ---- which version serves ----------------------------------------------------------------
    def ready_version(self, below: int | None = None) -> int:
        """The newest Triton version (below `below`) that is in every stage's folder and ready
        in every stage. Asked on every request (4 readiness calls, about 1 ms), so all router
        instances switch together; a version whose folder left (rollback) is not used even
        while Triton still unloads it."""
        on_disk = None
        for stage in STAGES:
            folder = self.repository / stage
            present = ({int(p.name) for p in folder.iterdir() if p.name.isdigit()}
                       if folder.is_dir() else set())
            on_disk = present if on_disk is None else on_disk & present
        for version in sorted(on_disk, reverse=True):
            if (below is None or version < below) and all(
                    pb_utils.is_model_ready(stage, str(version)) for stage in STAGES):
                return version
        raise NoVersionReady(f"no Triton version is ready in every stage ({', '.join(STAGES)})"
                             f"{f' below {below}' if below else ''}; versions in every stage "
                             f"folder: {sorted(on_disk)}; see the server log")

    # ---- one request ---------------------------------------------------------------------------
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self.recommend(request))
            except RequestError as e:
                responses.append(error_response(str(e), pb_utils.TritonError.INVALID_ARG))
            except NoVersionReady as e:
                responses.append(error_response(str(e), pb_utils.TritonError.UNAVAILABLE))
            except Exception as e:  # noqa: BLE001 - a failed stage; the server serves on
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
        version = self.ready_version()
        try:
            return self.run_stages(version, users, k)
        except StageUnavailable:
            return self.run_stages(self.ready_version(below=version), users, k)

    def run_stages(self, version: int, users: np.ndarray, k: int | None):
        features = self.call("user_features", version, [pb_utils.Tensor("USER_ID", users)],
                             ["USER_FEATURES", "PATH", "DEFAULT_K", "CATALOGUE_SIZE", "VERSION"])
        catalogue = int(features["CATALOGUE_SIZE"].as_numpy()[0])
        k = int(features["DEFAULT_K"].as_numpy()[0]) if k is None else k
        if k > catalogue:
            raise RequestError(f"K {k} is larger than the catalogue ({catalogue} items); "
                               f"ask for 1 to {catalogue}")
        k_tensor = pb_utils.Tensor("K", np.array([k], np.int32))
        user_features = features["USER_FEATURES"]
        candidates = self.call("candidates", version,
                               [pb_utils.Tensor("USER_ID", users), user_features,
                                features["PATH"]], ["CANDIDATES", "VERSION"])
        light = self.call("light_ranker", version,
                          [user_features, candidates["CANDIDATES"], k_tensor],
                          ["KEPT", "VERSION"])
        final = self.call("heavy_ranker", version, [user_features, light["KEPT"], k_tensor],
                          ["ITEMS", "SCORES", "OBJECTIVE_SCORES", "OBJECTIVES", "VERSION"])
        trained = {stage: out["VERSION"].as_numpy()[0].decode() for stage, out in
                   zip(STAGES, (features, candidates, light, final))}
        if len(set(trained.values())) != 1:
            raise RuntimeError(f"Triton version {version} mixes training versions {trained}; "
                               "re-export the run (recfunnel export)")
        return pb_utils.InferenceResponse([
            final["ITEMS"], final["SCORES"], final["OBJECTIVE_SCORES"], final["OBJECTIVES"],
            features["PATH"], pb_utils.Tensor("VERSION", strings([trained["heavy_ranker"]])),
            pb_utils.Tensor("MODEL_VERSION", np.array([version], np.int64))])

    def call(self, stage: str, version: int, inputs: list, outputs: list[str]) -> dict:
        """One stage at one version (BLS); its named outputs as pb_utils tensors."""
        response = pb_utils.InferenceRequest(model_name=stage, model_version=version,
                                             requested_output_names=outputs,
                                             inputs=inputs).exec()
        if response.has_error():
            if not pb_utils.is_model_ready(stage, str(version)):
                raise StageUnavailable(f"{stage} version {version}")
            raise RuntimeError(f"stage {stage} (Triton version {version}): "
                               f"{response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}
