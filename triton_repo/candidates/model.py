"""Stage (b) of the served funnel: candidate generation, `candidates_k` items per user.

The query tower turns a user's features into a vector searched in the faiss index over the item
embeddings (exact or HNSW, FunnelSettings.index); users on the fallback path get the most
popular items instead. Either way the items the user has already seen and the unsafe items are
excluded. Ids are the workflow's categorified item ids; -1 pads a short list.
"""
from funnel_stage import StageModel, decode_user_rows


class TritonPythonModel(StageModel):
    name = "candidates"

    def run(self, inputs):
        users = inputs["USER_ID"]
        rows = decode_user_rows(self.funnel, inputs["USER_FEATURES"])
        path = inputs["PATH"].astype(str)
        exclude = self.funnel.exclusions(users, None)
        return {"CANDIDATES": self.funnel.retrieve(rows, path, exclude)}

    def warm_up(self):
        rows, path = self.funnel.user_rows(self.known_user())
        self.funnel.retrieve(rows, path, [self.funnel.unsafe_ids])
