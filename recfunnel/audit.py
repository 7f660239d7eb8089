"""Audits against the synthetic ground truth: they observe the pipeline from the side.

No production step knows about the truth. After a step, `run_pipeline` hands its section to every
observer; `TruthAudit` adds what the truth says of it, when the run's data has one (the synthetic
source writes `data/truth/`): the dataset's duplicate and unsafe detection and its labels, the
heavy ranker's objectives and rankings by true relevance, and the truth lists the offline
evaluation judges. Other sources have no truth, and the audit adds nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from recfunnel.models.blend import blend
from recfunnel.config import Config, ModelsConfig
from recfunnel.data import truth_audit
from recfunnel.data.synthetic import World
from recfunnel.evaluation.ranker import ranker_metrics
from recfunnel.evaluation.truth import lists_vs_truth, rankings_vs_truth
from recfunnel.names import DURATION_AWARE_WATCH, LABELS, NAIVE_WATCH

# the heavy ranker's heads ranked alone, beside its blend: label in the table -> head
RANKINGS = {"click only": "click", f"{NAIVE_WATCH} (naive)": NAIVE_WATCH,
            "watch duration-aware": DURATION_AWARE_WATCH}
# the offline lists judged by the truth
TRUTH_LISTS = ("two_tower", "mf", "ease", "popularity", "funnel")


class StepObserver(Protocol):
    """Sees each step's section after the step ran; may add keys to it, never changes a run."""

    def after_step(self, step: str, cfg: Config, run_dir: Path, section: dict) -> None: ...


class TruthAudit:
    """The truth's verdict on a synthetic run, added to the dataset and models sections."""

    def __init__(self):
        self._world: World | None = None

    def world(self, run_dir: Path) -> World | None:
        """The run's ground truth (loaded once), or None when its data has none."""
        truth = Path(run_dir) / "data" / "truth"
        if self._world is None and truth.is_dir():
            self._world = World.load(truth)
        return self._world

    def after_step(self, step: str, cfg: Config, run_dir: Path, section: dict) -> None:
        audit = {"dataset": self.dataset, "models": self.models}.get(step)
        world = self.world(run_dir) if audit else None
        if world is not None:
            audit(cfg, Path(run_dir), section, world)

    def dataset(self, cfg: Config, run_dir: Path, section: dict, world: World) -> None:
        """Duplicate and unsafe detection against the planted ones; labels against true taste."""
        from recfunnel.workflows.dataset import read_split    # NVTabular: only when a run is audited

        out = run_dir / "dataset"
        artifacts = out / "artifacts"
        section["duplicates"].update(truth_audit.duplicate_detection(
            pd.read_parquet(artifacts / "canonical_items.parquet"), world))
        section["unsafe"].update(truth_audit.unsafe_detection(
            pd.read_parquet(artifacts / "unsafe_items.parquet"), world))
        train = read_split(out / "train", ["user_id_raw", "item_id_raw", "timestamp",
                                           "sampled_negative", *LABELS])
        section["labels_vs_truth"] = truth_audit.label_audit(
            train[train["sampled_negative"] == 0], world, cfg.dataset.duration_edges)

    def models(self, cfg: Config, run_dir: Path, section: dict, world: World) -> None:
        """The heavy ranker on the test split against the truth (`ranking_vs_truth`)."""
        from recfunnel.models.data import Splits      # Merlin: only when a run is audited

        heavy = run_dir / section.get("path", "") / "heavy_ranker"
        if "path" in section and heavy.is_dir():
            section["truth"] = ranking_vs_truth(Splits.load(run_dir / "dataset"), heavy, world,
                                                cfg.models, cfg.funnel.blend)

    def evaluation_truth(self, run_dir: Path, predictions, k: int):
        """(lists_vs_truth's summary and per-user frame, the relevance lookup) for the offline
        evaluation's lists, as of the test period's end; (None, None) without a truth."""
        world = self.world(run_dir)
        if world is None:
            return None, None
        day = float(world.config.n_days)             # the test period's end: serving time

        def relevance_rows(idx):
            return world.relevance_matrix(idx, day)

        lists = {n: predictions.lists[n] for n in TRUTH_LISTS if n in predictions.lists}
        truth = lists_vs_truth(lists, predictions.users["user_id_raw"].to_numpy(),
                               relevance_rows, world.item_truth["is_clickbait"].to_numpy(), k)
        return truth, relevance_rows


def ranking_vs_truth(splits, ranker_dir: Path, world: World, cfg: ModelsConfig,
                     weights: dict) -> dict:
    """A ranker on the test split against the synthetic truth: its AUC per objective, and the
    NDCG@K of true relevance when each user's test candidates (impressions and sampled
    negatives) are ranked by click only, naive watch_75, the duration-aware label or the blend
    of `weights` (the funnel's)."""
    from scipy.stats import spearmanr

    from recfunnel.models.scorer import RankerScorer     # TensorFlow: loaded only when a run is audited

    test = splits.test
    scores = RankerScorer(ranker_dir).score(test)
    relevance = truth_audit.true_relevance_of(test, world)
    objectives = {}
    for name, score in scores.items():
        m = ranker_metrics(test[name].to_numpy(), score)
        m["spearman_vs_true_relevance"] = float(spearmanr(score, relevance).statistic)
        objectives[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
    rankings = {label: scores[head] for label, head in RANKINGS.items() if head in scores}
    rankings["blend " + ", ".join(f"{k} {v:g}" for k, v in weights.items())] = \
        blend(scores, weights)
    item = test["item_id_raw"].to_numpy() - 1
    table = rankings_vs_truth(test["user_id"].to_numpy(), rankings, relevance,
                              world.item_truth["is_clickbait"].to_numpy()[item],
                              world.items["duration_seconds"].to_numpy()[item], k=cfg.eval_k)
    return {"split": "test", "users": table.attrs["users"], "rows": table.attrs["rows"],
            "k": cfg.eval_k, "objectives": objectives,
            "rankings": table.round(4).replace({np.nan: None}).to_dict(orient="records")}
