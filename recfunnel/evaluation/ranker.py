"""Ranker metrics (L4.1): how well the light and heavy rankers' scores separate positives from
negatives, read from binary labels and scores of scored (user, item) rows.

ROC-AUC, PR-AUC as average precision (the step-wise area, as scikit-learn computes it; the
trapezoid over-rates a ranker), logloss for probabilities, and the ROC and PR curves thinned to a
few hundred points for plotting. Tied scores form one threshold, so ties neither help nor hurt.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CURVE_POINTS = 200      # enough for a smooth plot, small enough for metrics.json


def _checked(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Boolean labels and float scores, both [n], or a ValueError saying what to supply."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if labels.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length; got shapes "
                         f"{labels.shape} and {scores.shape}")
    if not len(labels):
        raise ValueError("labels and scores are empty: supply at least one scored row")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be binary (0/1 or bool); got values "
                         f"{np.unique(labels)[:5].tolist()}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(scores)).sum())} are NaN "
                         f"or infinite")
    return labels.astype(bool), scores


def _both_classes(labels: np.ndarray, metric: str) -> None:
    positives = int(labels.sum())
    if positives in (0, len(labels)):
        only = "positives (1)" if positives else "negatives (0)"
        raise ValueError(f"{metric} needs both classes; labels hold only {only}, "
                         f"{len(labels)} rows")


def _threshold_counts(labels: np.ndarray, scores: np.ndarray):
    """At each distinct score, highest first: true and false positives when every row scoring
    at least that much is called positive, and the score itself."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    return tps, last_of_tie + 1 - tps, scores[last_of_tie]


def _roc_area(tps: np.ndarray, fps: np.ndarray) -> float:
    return float(np.trapz(np.r_[0, tps] / tps[-1], np.r_[0, fps] / fps[-1]))


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    return float(np.sum(np.diff(np.r_[0, tps / tps[-1]]) * tps / (tps + fps)))


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative
    (ties count half). Raises ValueError when labels hold one class only."""
    labels, scores = _checked(labels, scores)
    _both_classes(labels, "ROC-AUC")
    return _roc_area(*_threshold_counts(labels, scores)[:2])


def pr_auc(labels, scores) -> float:
    """Average precision: sum over thresholds of (recall gained) x (precision there). Raises
    ValueError when there is no positive (undefined) or no negative (trivially 1)."""
    labels, scores = _checked(labels, scores)
    _both_classes(labels, "PR-AUC")
    return _average_precision(*_threshold_counts(labels, scores)[:2])


def logloss(labels, scores) -> float:
    """Mean binary cross-entropy of probabilities; clipped to [eps, 1 - eps] like scikit-learn.

    Defined for one class too. Raises ValueError when scores are not probabilities in [0, 1]
    (logits must go through a sigmoid first).
    """
    labels, scores = _checked(labels, scores)
    if scores.min() < 0 or scores.max() > 1:
        raise ValueError(f"logloss needs scores that are probabilities in [0, 1]; got scores in "
                         f"[{scores.min():.4g}, {scores.max():.4g}] (apply a sigmoid to logits)")
    eps = np.finfo(scores.dtype).eps
    p = np.clip(scores, eps, 1 - eps)
    return float(-np.mean(np.where(labels, np.log(p), np.log1p(-p))))


def _thinned(frame: pd.DataFrame, max_points: int) -> pd.DataFrame:
    """At most `max_points` rows, evenly spaced along the curve, first and last kept."""
    if len(frame) <= max_points:
        return frame.reset_index(drop=True)
    keep = np.unique(np.linspace(0, len(frame) - 1, max_points).round().astype(int))
    return frame.iloc[keep].reset_index(drop=True)


def roc_curve(labels, scores, max_points: int = CURVE_POINTS) -> pd.DataFrame:
    """Columns fpr, tpr, threshold, from (0, 0) at threshold +inf to (1, 1); at most
    `max_points` rows. Raises ValueError when labels hold one class only."""
    labels, scores = _checked(labels, scores)
    _both_classes(labels, "ROC curve")
    tps, fps, thresholds = _threshold_counts(labels, scores)
    curve = pd.DataFrame({"fpr": np.r_[0, fps] / fps[-1], "tpr": np.r_[0, tps] / tps[-1],
                          "threshold": np.r_[np.inf, thresholds]})
    return _thinned(curve, max_points)


def pr_curve(labels, scores, max_points: int = CURVE_POINTS) -> pd.DataFrame:
    """Columns recall, precision, threshold, from (0, 1) at threshold +inf to the lowest
    score, as scikit-learn's precision_recall_curve (in reverse order); at most `max_points`
    rows. Raises ValueError when labels hold one class only."""
    labels, scores = _checked(labels, scores)
    _both_classes(labels, "PR curve")
    tps, fps, thresholds = _threshold_counts(labels, scores)
    curve = pd.DataFrame({"recall": np.r_[0, tps / tps[-1]],
                          "precision": np.r_[1, tps / (tps + fps)],
                          "threshold": np.r_[np.inf, thresholds]})
    return _thinned(curve, max_points)


def ranker_metrics(labels, scores) -> dict:
    """roc_auc, pr_auc, logloss, positives, rows; plus `undefined` {metric: reason}.

    A single-class set of labels (a small slice, say) is data, not a mistake: its AUCs are NaN
    and `undefined` says why. Scores outside [0, 1] are a mistake and raise (see `logloss`).
    """
    labels, scores = _checked(labels, scores)
    out: dict = {"rows": int(len(labels)), "positives": int(labels.sum()), "undefined": {}}
    try:
        _both_classes(labels, "ROC-AUC and PR-AUC")
        tps, fps, _ = _threshold_counts(labels, scores)
        out["roc_auc"], out["pr_auc"] = _roc_area(tps, fps), _average_precision(tps, fps)
    except ValueError as why:
        out["roc_auc"] = out["pr_auc"] = float("nan")
        out["undefined"] = {"roc_auc": str(why), "pr_auc": str(why)}
    out["logloss"] = logloss(labels, scores)
    return out
