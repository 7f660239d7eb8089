"""Offline evaluation on plain numpy/pandas: any model's output, ours or a peer's, is scored the
same way, and nothing here imports TensorFlow or Merlin.

ranker: ROC-AUC, PR-AUC, logloss and curves of scores; slices: any per-user metric per user
group; bias: popularity bias of top-K lists against training popularity; stages: each ranking
stage's order against its input's, and how much of each list the logging policy showed
(exposure). The metrics of top-K lists (full ranking; sampled only on request) are
`recfunnel.topk`'s, a leaf the models' validation shares; they are re-exported here.
"""
from recfunnel.evaluation.bias import (ItemPopularity, concentration_curve, gini_index,
                                       popularity_bias_report, popularity_bias_summary,
                                       popularity_opportunity_bias, popularity_parity,
                                       positive_ranks, user_popularity_rank_correlation)
from recfunnel.evaluation.ranker import (logloss, pr_auc, pr_curve, ranker_metrics, roc_auc,
                                         roc_curve)
from recfunnel.evaluation.slices import (activity_levels, slice_metrics, user_groups,
                                         worst_groups)
from recfunnel.evaluation.stages import (STAGES, Stage, exposure_report, logged_order_change,
                                         paired_difference_interval, shown_items, stage_report,
                                         true_order_change)
from recfunnel.topk import sampled_topk_metrics, topk_metrics, topk_per_user

__all__ = [
    "ItemPopularity", "concentration_curve", "gini_index", "popularity_bias_report",
    "popularity_bias_summary", "popularity_opportunity_bias", "popularity_parity",
    "positive_ranks", "user_popularity_rank_correlation",
    "logloss", "pr_auc", "pr_curve", "ranker_metrics", "roc_auc", "roc_curve",
    "activity_levels", "slice_metrics", "user_groups", "worst_groups",
    "STAGES", "Stage", "exposure_report", "logged_order_change", "paired_difference_interval",
    "shown_items", "stage_report", "true_order_change",
    "sampled_topk_metrics", "topk_metrics", "topk_per_user",
]
