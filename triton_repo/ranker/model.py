"""A ranking stage of the served funnel: one declared ranker (its Triton model is named after it).

The ranker scores every objective of each candidate it is sent, the objectives are blended
(models.blend, the function offline evaluation uses) and the best KEEP are kept, in the order of
the blend. The router sends each ranker the previous stage's list: the first ranker the
candidates, each next one what the one before kept; the last one's answer is the final list.
An experiment arm may send its own blend (BLEND: JSON {objective: weight}); else the version's.

Inputs:  USER_FEATURES FP64 [n, features]; CANDIDATES INT64 [n, width] categorified ids (-1
         pads); KEEP INT32 [1]; BLEND BYTES [1] optional.
Outputs: KEPT INT64 [n, keep] categorified ids; ITEMS INT64 [n, keep] raw ids; SCORES FP64
         [n, keep] blended; OBJECTIVE_SCORES FP64 [n, objectives, keep]; OBJECTIVES BYTES.
"""
import numpy as np
from funnel_stage import StageModel, decode_user_rows, parse_blend, strings


class TritonPythonModel(StageModel):
    def initialize(self, args):
        self.name = args["model_name"]
        super().initialize(args)

    def run(self, inputs):
        rows = decode_user_rows(self.funnel, inputs["USER_FEATURES"])
        kept, score, objectives = self.funnel.rank(self.name, rows, inputs["CANDIDATES"],
                                                   int(inputs["KEEP"][0]),
                                                   self.blend_weights(inputs))
        names = list(objectives)
        per_objective = (np.stack([objectives[o] for o in names], axis=1) if names
                         else np.zeros((len(kept), 0, kept.shape[1])))
        return {"KEPT": kept.astype(np.int64),
                "ITEMS": self.funnel.raw_ids(kept).astype(np.int64),
                "SCORES": score.astype(np.float64),
                "OBJECTIVE_SCORES": per_objective.astype(np.float64),
                "OBJECTIVES": strings(names)}

    def blend_weights(self, inputs) -> dict:
        if "BLEND" not in inputs:
            return self.funnel.settings.blend
        return parse_blend(inputs["BLEND"].reshape(-1)[0],
                           self.funnel.ranker(self.name).objectives)

    def warm_up(self):
        rows, _ = self.funnel.user_rows(self.known_user())
        self.funnel.rank(self.name, rows, self.some_items(), 1, self.funnel.settings.blend)
