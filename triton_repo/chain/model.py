"""The declared funnel's stages in one process: what the router calls when serving.path is
`chain` (the default, measured faster than a call per stage: BENCHMARKS.md bench_router).

One request is one group of users of the router's (one arm, one Triton version): raw user ids,
the list length, the request's time and the blend of the last ranker's objectives. The stages
run as models.funnel.Funnel.recommend runs them offline, so what is served is what evaluation
measured. Triton's dynamic batcher hands this model every request queued while it was busy;
requests alike (same K, time and blend) are answered by one pass through the stages.

Inputs (one row per user; every row of a request carries the request's values):
  USER_ID INT64 [n, 1] raw user ids; K INT32 [n, 1] list length (0: the version's default);
  TIME INT64 [n, 1] epoch seconds (-1: the day the feature tables count events up to);
  BLEND BYTES [n, 1] JSON {objective: weight} ("": the version's blend).
Outputs: ITEMS INT64 [n, K] raw ids; SCORES FP64 [n, K]; OBJECTIVE_SCORES FP64 [n, objectives,
  K]; OBJECTIVES BYTES [n, objectives]; PATH BYTES [n, 1]; VERSION BYTES [n, 1].

Triton's own statistics see the chain as one model, so its stages' times go to /metrics as
counters per stage (features, retrieval, each ranker) and training version:
`recfunnel_chain_stage_ms_total` (ms spent) and `recfunnel_chain_stage_passes_total` (passes,
each one batch of users); their rates' ratio is the mean ms per pass of that stage.
"""
import traceback

import numpy as np
import triton_python_backend_utils as pb_utils
from funnel_stage import (DAY_SECONDS, RequestError, StageModel, error_response, parse_blend,
                          refusal, strings)


STAGE_MS = "recfunnel_chain_stage_ms_total"
STAGE_PASSES = "recfunnel_chain_stage_passes_total"


class TritonPythonModel(StageModel):
    name = "chain"

    def initialize(self, args):
        super().initialize(args)
        self._stage_metrics: dict = {}
        try:
            self._families = (
                pb_utils.MetricFamily(name=STAGE_MS, kind=pb_utils.MetricFamily.COUNTER,
                                      description="ms the chain spent in each funnel stage"),
                pb_utils.MetricFamily(name=STAGE_PASSES, kind=pb_utils.MetricFamily.COUNTER,
                                      description="passes (batches of users) through each "
                                                  "stage"))
        except Exception:  # noqa: BLE001 - a server without custom metrics still serves
            traceback.print_exc()
            self._families = None

    def count_stages(self, stage_ms: dict) -> None:
        """Adds one pass's per-stage ms to the /metrics counters."""
        if self._families is None:
            return
        for stage, ms in stage_ms.items():
            if stage not in self._stage_metrics:
                labels = {"stage": stage, "version": self.funnel.version}
                self._stage_metrics[stage] = tuple(f.Metric(labels=labels)
                                                   for f in self._families)
            spent, passes = self._stage_metrics[stage]
            spent.increment(float(ms))
            passes.increment(1.0)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict = {}
        for i, request in enumerate(requests):
            try:
                users, key = self.parse({t.name(): t.as_numpy() for t in request.inputs()})
            except RequestError as e:
                responses[i] = refusal(e)
                continue
            groups.setdefault(key, []).append((i, users))
        for (k, day, blend_text), members in groups.items():
            try:
                self.serve(members, k, day, blend_text, responses)
            except Exception as e:  # noqa: BLE001 - answered, logged, and the stage serves on
                traceback.print_exc()
                for i, _ in members:
                    responses[i] = error_response(
                        f"chain (training version {self.funnel.version}) failed: "
                        f"{type(e).__name__}: {e}")
        return responses

    def parse(self, inputs: dict) -> tuple[np.ndarray, tuple]:
        """A request's users and what it asks of them: (K, day, blend); refused when the rows
        disagree or any is out of range (400, the payload not echoed)."""
        for name in ("USER_ID", "K", "TIME", "BLEND"):
            if name not in inputs:
                raise RequestError(f"missing input {name}")
        users = inputs["USER_ID"].reshape(-1).astype(np.int64)
        if not 1 <= users.size <= self.max_users:
            raise RequestError(f"{users.size} users in one request; this stage takes 1 to "
                               f"{self.max_users} (max_users)")
        values = {}
        for name in ("K", "TIME", "BLEND"):
            column = inputs[name].reshape(-1)
            if column.size != users.size or any(v != column[0] for v in column[1:]):
                raise RequestError(f"{name} must hold one value, repeated for every user")
            values[name] = column[0]
        k = int(values["K"]) or self.funnel.settings.k
        catalogue = self.funnel.catalogue_size
        if k < 1:
            raise RequestError(f"K must be at least 1, got {k}")
        if k > catalogue:
            raise RequestError(f"K {k} is larger than the catalogue ({catalogue} items); "
                               f"ask for 1 to {catalogue}")
        day = None
        if int(values["TIME"]) >= 0:
            day = int(values["TIME"]) // DAY_SECONDS
            if day < self.funnel.as_of_day:
                raise RequestError(f"TIME is before day {self.funnel.as_of_day} (epoch days), "
                                   "up to which this version's feature tables count events")
        text = values["BLEND"]
        text = text.decode() if isinstance(text, bytes) else str(text)
        if text:
            parse_blend(text, self.funnel.objectives)     # refused here, before any work
        return users, (k, day, text)

    def serve(self, members: list, k: int, day, blend_text: str, responses: list) -> None:
        """One pass through the stages for the users of every request in `members`."""
        users = np.concatenate([u for _, u in members])
        blend = parse_blend(blend_text, self.funnel.objectives) if blend_text else None
        out = self.funnel.recommend(users, k=k, blend_weights=blend, day=day)
        self.count_stages(out.stage_ms)
        names = list(out.objectives)
        per_objective = (np.stack([out.objectives[o] for o in names], axis=1) if names
                         else np.zeros((len(users), 0, out.items.shape[1])))
        start = 0
        for i, mine in members:
            rows = slice(start, start + len(mine))
            start += len(mine)
            n = len(mine)
            tensors = {"ITEMS": out.items[rows].astype(np.int64),
                       "SCORES": out.score[rows].astype(np.float64),
                       "OBJECTIVE_SCORES": per_objective[rows].astype(np.float64),
                       "OBJECTIVES": np.tile(strings(names), (n, 1)).reshape(n, len(names)),
                       "PATH": strings(out.path[rows]).reshape(n, 1),
                       "VERSION": np.repeat(self.version_tensor, n).reshape(n, 1)}
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(v)) for name, v in tensors.items()])

    def warm_up(self):
        self.funnel.recommend(self.known_user())
