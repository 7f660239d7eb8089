"""A saved ranker scored through its SavedModel serving signature, with TensorFlow alone.

Kept apart from models.ranking (training, which imports Merlin Models): a served stage that
scores needs only TensorFlow, and importing Merlin Models cost each stage process 2.5 s and
memory at load (measured).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from recfunnel.models.artifacts import read_manifest
from recfunnel.models.candidates import RETRIEVAL_SCORE, load_retrieval, retrieval_scores
from recfunnel.models.features import Columns


class RankerScorer:
    """A saved ranker, scored through its SavedModel serving signature.

    The serving signature is what Triton runs; a Keras-reloaded model called directly can
    differ (measured up to 0.011 on a DCN), so offline and online scores both come from here.
    """

    def __init__(self, model_dir: str | Path):
        self.manifest = read_manifest(model_dir, kind="ranker")
        self.version = self.manifest["version"]
        self.features = self.manifest["schema"]           # name -> numpy dtype
        self.objectives = list(self.manifest["config"]["objectives"])
        self._signature = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
        self._retrieval = None
        kind = self.manifest["config"].get(RETRIEVAL_SCORE)
        if RETRIEVAL_SCORE in self.features:             # the previous stage's score, computed
            query, index, version = load_retrieval(      # by the version's own retrieval model
                Path(model_dir).parent / f"{kind}_query", Path(model_dir).parent / f"{kind}_items")
            if version != self.version:
                raise ValueError(f"ranker {self.version} scores with retrieval {version}")
            self._retrieval = (query, index)

    def score(self, rows, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """objective -> [n] probabilities for the feature rows in `rows` (Columns, or a
        DataFrame)."""
        rows = Columns.of(rows)
        if self._retrieval is not None and RETRIEVAL_SCORE not in rows:
            rows = rows.take(slice(None))          # a copy: the caller's rows stay as given
            rows[RETRIEVAL_SCORE] = retrieval_scores(*self._retrieval, rows)
        missing = [f for f in self.features if f not in rows]
        if missing:
            raise ValueError(f"ranker {self.version} needs features {missing}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(rows), batch_size):
            batch = rows.take(slice(start, start + batch_size))
            inputs = {f: tf.constant(batch[f].astype(dtype, copy=False).reshape(-1, 1))
                      for f, dtype in self.features.items()}
            for name, value in self._signature(**inputs).items():
                objective = name.split("/")[0]            # "click/binary_output" -> "click"
                parts.setdefault(objective, []).append(value.numpy().reshape(-1))
        return {name: np.concatenate(v) for name, v in parts.items()}
