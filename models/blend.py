"""The final score (L2.3): a weighted sum of the rankers' per-objective probabilities.

One pure function used both offline (evaluation) and in serving (the heavy-ranker stage), so the
order users see is the order we measured. Weights come from the config; they are normalised to
sum to 1, which keeps the blended score a probability-like value in [0, 1].
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


def blend(scores: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted sum of objective scores.

    Args:
      scores: objective name -> scores in [0, 1], each of shape [n] (or any common shape).
      weights: objective name -> non-negative weight; objectives with weight 0 may be absent
        from `scores`.
    Returns:
      [n] blended scores in [0, 1].
    """
    used = {k: float(w) for k, w in weights.items() if float(w) != 0.0}
    if not used:
        raise ValueError("blend weights are all zero; give at least one objective a weight > 0")
    negative = [k for k, w in used.items() if w < 0]
    if negative:
        raise ValueError(f"blend weights must be >= 0; negative for {', '.join(negative)}")
    missing = [k for k in used if k not in scores]
    if missing:
        raise ValueError(f"blend needs scores for {', '.join(missing)}; got {', '.join(scores)}")
    total = sum(used.values())
    arrays = [np.asarray(scores[k], dtype=np.float64) for k in used]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError(f"blend: objective scores differ in shape: "
                         f"{ {k: np.shape(scores[k]) for k in used} }")
    return sum(w / total * a for w, a in zip(used.values(), arrays))
