"""Stage (b) of the served funnel: the declared candidate sources, `candidates_k` items per user.

Every source of the version's funnel fills its share (the query tower's vector searched in the
faiss index, popularity, ...), none repeating another's item, and the popularity fallback fills
what is left (users the models do not know get it all); the declared filters' items (already
seen, unsafe) are never among them. Ids are the workflow's categorified item ids; -1 pads.
ITEMS and SCORES (raw ids, the sources' scores) are the answer of a funnel with no rankers.
"""
import numpy as np
from funnel_stage import StageModel, decode_user_rows


class TritonPythonModel(StageModel):
    name = "candidates"

    def run(self, inputs):
        users = inputs["USER_ID"].astype(np.int64)
        rows = decode_user_rows(self.funnel, inputs["USER_FEATURES"])
        request = self.funnel.request(users, rows, inputs["PATH"].astype(str))
        ids, scores = self.funnel.retrieve(request, self.funnel.exclusions(request))
        return {"CANDIDATES": ids, "ITEMS": self.funnel.raw_ids(ids).astype(np.int64),
                "SCORES": scores.astype(np.float64)}

    def warm_up(self):
        users = self.known_user()
        rows, path = self.funnel.user_rows(users)
        request = self.funnel.request(users, rows, path)
        self.funnel.retrieve(request, self.funnel.exclusions(request))
