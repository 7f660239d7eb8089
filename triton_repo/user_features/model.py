"""Stage (a) of the served funnel: raw user ids -> the users' model inputs and their path.

Looks each user up in the version's serving feature table (the saved NVTabular workflow's output
at export time, models.features); a user the models do not know gets the workflow's row for an
unseen id and the path "fallback" (the popularity candidates), which is not an error.
Recency features are computed for the request's TIME (epoch seconds; default the day the tables
count events up to). Also answers the version's default list length and catalogue size, for the
router to check K.
"""
import numpy as np
from funnel_stage import DAY_SECONDS, RequestError, StageModel, encode_user_rows, strings


class TritonPythonModel(StageModel):
    name = "user_features"

    def run(self, inputs):
        day = None
        if "TIME" in inputs:
            day = int(inputs["TIME"].reshape(-1)[0]) // DAY_SECONDS
            if day < self.funnel.as_of_day:
                raise RequestError(f"TIME is before day {self.funnel.as_of_day} (epoch days), up "
                                   "to which this version's feature tables count events")
        rows, path = self.funnel.user_rows(inputs["USER_ID"].astype(np.int64), day)
        return {"USER_FEATURES": encode_user_rows(self.funnel, rows), "PATH": strings(path),
                "DEFAULT_K": np.array([self.funnel.settings.k], np.int32),
                "CATALOGUE_SIZE": np.array([self.funnel.catalogue_size], np.int32)}

    def warm_up(self):
        self.funnel.user_rows(self.known_user())
