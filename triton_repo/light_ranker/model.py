"""Stage (c) of the served funnel: the light ranker's cut.

A small multi-task model scores every candidate; the candidates are ordered by the blend of its
objective scores and the best max(light_keep, K) are kept for the heavy ranker.
"""
import numpy as np
from funnel_stage import StageModel, decode_user_rows


class TritonPythonModel(StageModel):
    name = "light_ranker"

    def run(self, inputs):
        rows = decode_user_rows(self.funnel, inputs["USER_FEATURES"])
        settings = self.funnel.settings
        keep = max(settings.light_keep, int(inputs["K"][0]))
        kept, _, _ = self.funnel.rank(self.funnel.light, rows, inputs["CANDIDATES"], keep,
                                      settings.blend_weights)
        return {"KEPT": kept.astype(np.int64)}

    def warm_up(self):
        rows, _ = self.funnel.user_rows(self.known_user())
        self.funnel.rank(self.funnel.light, rows, self.some_items(), 1,
                         self.funnel.settings.blend_weights)
