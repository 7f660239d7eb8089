"""Labels (L2.1, L2.2): what counts as a good recommendation, one label per signal.

`click`, `like` and `share` come from the log as they are. Watch time needs care: "watched at
least 75 %" (`watch_75`) is easy for a 20 s clip and hard for an hour-long tutorial, so it
favours short items. The duration-aware label (`watch_duration_aware`) compares an event's watch
time with clicked events on items of similar length: it is 1 when the watch time reaches the
`quantile` of its duration bucket, fitted on training events.
"""
from __future__ import annotations

import numpy as np

from merlin.dag.ops.stat_operator import StatOperator
from merlin.schema import Tags
from nvtabular.ops.operator import ColumnSelector, Operator

from recfunnel.config import DURATION_EDGES
from recfunnel.names import DURATION_AWARE_WATCH, NAIVE_WATCH
from recfunnel.workflows.backend import host_array
from recfunnel.workflows.splits import TRAIN

WATCH_COLUMNS = ["click", "watch_seconds", "duration_seconds"]


# ---- pure logic (numpy) -----------------------------------------------------------------------

def watch_at_least(watch, duration, threshold: float) -> np.ndarray:
    """1 where the watched fraction of the item reaches `threshold`; 0 where unknown."""
    watch, duration = np.asarray(watch, float), np.asarray(duration, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((duration > 0) & (watch >= threshold * duration)).astype(np.int8)


def duration_bucket(duration, edges) -> np.ndarray:
    """Bucket index 0..len(edges) of each duration; unknown durations go to bucket 0."""
    duration = np.nan_to_num(np.asarray(duration, float), nan=0.0)
    return np.searchsorted(np.asarray(edges, float), duration, side="right")


def bucket_thresholds(click, watch, duration, edges, quantile: float) -> np.ndarray:
    """Per duration bucket, the `quantile` of watch seconds among clicked events.

    Buckets without clicked events get +inf (no positive can be earned there).
    """
    click, watch = np.asarray(click), np.asarray(watch, float)
    bucket = duration_bucket(duration, edges)
    out = np.full(len(edges) + 1, np.inf)
    seen = (click == 1) & np.isfinite(watch)
    for b in range(len(out)):
        values = watch[seen & (bucket == b)]
        if len(values):
            out[b] = np.quantile(values, quantile)
    return out


def duration_aware_label(click, watch, duration, edges, thresholds) -> np.ndarray:
    click, watch = np.asarray(click), np.asarray(watch, float)
    thr = np.asarray(thresholds)[duration_bucket(duration, edges)]
    with np.errstate(invalid="ignore"):
        return ((click == 1) & (watch > 0) & (watch >= thr)).astype(np.int8)


# ---- NVTabular operators ----------------------------------------------------------------------

class WatchLabels(StatOperator):
    """[click, watch_seconds, duration_seconds] -> [watch_75, watch_duration_aware].

    Fit on training events: it learns the per-bucket watch-time thresholds. Given a `split`
    column too, it fits on the rows of the training split (TRAIN) of whatever it is fitted on.
    """

    def __init__(self, threshold: float = 0.75, edges=DURATION_EDGES, quantile: float = 0.8,
                 naive_name: str = NAIVE_WATCH, aware_name: str = DURATION_AWARE_WATCH):
        super().__init__()
        self.threshold, self.edges, self.quantile = threshold, list(edges), quantile
        self.naive_name, self.aware_name = naive_name, aware_name
        self.thresholds: list[float] | None = None

    def fit(self, col_selector: ColumnSelector, ddf):
        clicked = ddf[ddf["click"] == 1]
        if "split" in col_selector.names:       # given the split, it learns from train only
            clicked = clicked[clicked["split"] == TRAIN]
        return clicked[WATCH_COLUMNS]   # small enough to collect: three columns of clicks

    def fit_finalize(self, clicked):
        self.thresholds = bucket_thresholds(
            host_array(clicked["click"]), host_array(clicked["watch_seconds"]),
            host_array(clicked["duration_seconds"]), self.edges, self.quantile).tolist()

    def clear(self):
        self.thresholds = None

    def transform(self, col_selector: ColumnSelector, df):
        click, watch, duration = (host_array(df[c]) for c in WATCH_COLUMNS)
        out = type(df)()
        out[self.naive_name] = watch_at_least(watch, duration, self.threshold)
        out[self.aware_name] = duration_aware_label(click, watch, duration, self.edges,
                                                    self.thresholds)
        return out

    def column_mapping(self, col_selector):
        return {self.naive_name: list(WATCH_COLUMNS), self.aware_name: list(WATCH_COLUMNS)}

    @property
    def output_dtype(self):
        return np.int8

    @property
    def output_tags(self):
        return [Tags.TARGET, Tags.BINARY_CLASSIFICATION]
