"""Stage (d) of the served funnel: the heavy ranker and the blend -> the final top K.

The heavy (DCN-V2) multi-task ranker scores every objective of each kept candidate, the
objectives are blended (models.blend, the function offline evaluation uses) and the best K
become the answer, in raw item ids, with the blended and the per-objective scores.
An experiment arm may send its own blend (BLEND: JSON {objective: weight}); else the version's.
"""
import json

import numpy as np
from funnel_stage import RequestError, StageModel, decode_user_rows, strings


class TritonPythonModel(StageModel):
    name = "heavy_ranker"

    def run(self, inputs):
        rows = decode_user_rows(self.funnel, inputs["USER_FEATURES"])
        kept = inputs["KEPT"]
        final, score, objectives = self.funnel.rank(
            self.funnel.heavy, rows, kept, int(inputs["K"][0]), self.blend_weights(inputs))
        names = list(objectives)
        per_objective = (np.stack([objectives[o] for o in names], axis=1) if names
                         else np.zeros((len(kept), 0, final.shape[1])))
        return {"ITEMS": self.funnel.raw_ids(final).astype(np.int64),
                "SCORES": score.astype(np.float64),
                "OBJECTIVE_SCORES": per_objective.astype(np.float64),
                "OBJECTIVES": strings(names)}

    def blend_weights(self, inputs) -> dict:
        if "BLEND" not in inputs:
            return self.funnel.settings.blend_weights
        text = inputs["BLEND"].reshape(-1)[0]
        try:
            weights = json.loads(text.decode() if isinstance(text, bytes) else text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"BLEND is not JSON {{objective: weight}}: {e}") from None
        known = set(self.funnel.heavy.objectives)
        if not isinstance(weights, dict) or not weights or not set(weights) <= known:
            raise RequestError(f"BLEND {weights!r}: expected weights of this version's "
                               f"objectives {sorted(known)}")
        return {name: float(w) for name, w in weights.items()}

    def warm_up(self):
        rows, _ = self.funnel.user_rows(self.known_user())
        self.funnel.rank(self.funnel.heavy, rows, self.some_items(), 1,
                         self.funnel.settings.blend_weights)
