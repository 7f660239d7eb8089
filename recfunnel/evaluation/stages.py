"""Does each ranking stage of the funnel earn its place (L6)? Its output order against its input's
own order over the same items, by held-out positives and, on synthetic data, by the truth; and
how much of each top-k the logging policy ever showed, which is all that logged recall can count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from recfunnel.topk import hits_matrix, key_range, pair_keys, relevant_pairs
from recfunnel.evaluation.truth import list_relevance, relevance_chunks

BOOTSTRAP_RESAMPLES = 1000      # paired bootstrap of the per-user NDCG difference
CONFIDENCE = 0.95               # a stage is worse when this interval lies entirely below 0
_BOOTSTRAP_BLOCK = 2_000_000    # resampled values held in memory at once (16 MB)


@dataclass(frozen=True)
class Stage:
    """A ranking stage named by the prediction lists it reads and writes: `input` holds its
    candidates in the order of the stage before it, `output` what it keeps, in its own order."""
    name: str
    input: str
    output: str


STAGES = (Stage("light ranker", "funnel_candidates", "funnel_light"),
          Stage("heavy ranker", "funnel_light", "funnel"))
EXPOSURE_LISTS = ("two_tower", "mf", "ease", "popularity", "funnel_light", "funnel")


def paired_difference_interval(differences, resamples: int = BOOTSTRAP_RESAMPLES,
                               confidence: float = CONFIDENCE,
                               seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user paired differences (users drawn with
    replacement; NaN users left out); (nan, nan) when no user is left."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.asarray(differences, np.float64)
    d = d[~np.isnan(d)]
    if not len(d):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK // len(d))
    means = np.concatenate([d[rng.integers(0, len(d), (min(block, resamples - s), len(d)))]
                            .mean(axis=1) for s in range(0, resamples, block)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def is_worse(interval: Sequence[float]) -> bool:
    """The output is worse than its input: the whole interval of (output - input) is below 0.
    A strict comparison of means would flag noise; this flags a loss the users agree on."""
    high = interval[1]
    return high is not None and not np.isnan(high) and high < 0


def logged_order_change(input_order: np.ndarray, output_order: np.ndarray,
                        relevant: Sequence[np.ndarray], k: int, widths: Sequence[int] = (),
                        resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = 0) -> dict:
    """A stage's output order against its input's order, by held-out positives, over the input's
    items: a positive the input never held is neither order's miss, so both share one ideal.

    Args:
      input_order: [n_users, W_in] raw item ids as the stage received them, best first (-1 pads).
      output_order: [n_users, W_out] what the stage kept of its row of `input_order`, best first.
      relevant: per user row, the ids of its held-out positives.
      k: the evaluation cut for NDCG and recall; widths: further cuts for recall (the kept width).
    Returns:
      users_scored (users with a positive in the input); input_/output_ ndcg@k and recall@w for
      w in (k, *widths), averaged over those users; `<metric>_difference` = output - input; and
      `ndcg@k_difference_interval`, the paired bootstrap interval of the mean NDCG difference.
    """
    input_order, output_order = _checked_stage_lists(input_order, output_order, k)
    in_hits = hits_matrix(input_order, relevant)
    n_rel = in_hits.sum(axis=1)                  # a list holds an item at most once
    scored = n_rel > 0
    in_hits, n_rel = in_hits[scored], n_rel[scored]
    out_hits = hits_matrix(output_order, relevant)[scored]
    ndcg_in, ndcg_out = _binary_ndcg(in_hits, n_rel, k), _binary_ndcg(out_hits, n_rel, k)
    out = {"users_scored": int(scored.sum()), **_paired(f"ndcg@{k}", ndcg_in, ndcg_out)}
    for w in dict.fromkeys((k, *widths)):
        out.update(_paired(f"recall@{w}", in_hits[:, :w].sum(axis=1) / n_rel,
                           out_hits[:, :w].sum(axis=1) / n_rel))
    out[f"ndcg@{k}_difference_interval"] = paired_difference_interval(
        ndcg_out - ndcg_in, resamples, confidence, seed)
    return out


def true_order_change(input_order: np.ndarray, output_order: np.ndarray, users: np.ndarray,
                      relevance_rows, k: int, widths: Sequence[int] = (), chunk: int = 2048,
                      resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                      seed: int = 0) -> dict:
    """The same comparison judged by the synthetic truth: NDCG@k of the true relevance, whose
    ideal is the input's k truly best items, and the mean true relevance of each order's top w.

    Args:
      input_order, output_order: as in `logged_order_change`.
      users: [n_users] raw user ids of the rows (ids start at 1).
      relevance_rows: function (0-based user indices) -> [len, n_items] true relevance, as for
        `truth.lists_vs_truth`.
    Returns:
      users_scored, input_/output_ ndcg@k and true_relevance@w for w in (k, *widths), their
      `_difference`s (output - input) and `ndcg@k_difference_interval`.
    """
    input_order, output_order = _checked_stage_lists(input_order, output_order, k)
    users = np.asarray(users)
    if len(users) != len(input_order):
        raise ValueError(f"users must name each of the {len(input_order)} list rows; got "
                         f"{len(users)} ids")
    n = len(users)
    ndcg_in, ndcg_out = np.full(n, np.nan), np.full(n, np.nan)
    cuts = tuple(dict.fromkeys((k, *widths)))
    true_in = {w: np.full(n, np.nan) for w in cuts}
    true_out = {w: np.full(n, np.nan) for w in cuts}
    for rows, rel in relevance_chunks(users, relevance_rows, chunk):
        gains_in = list_relevance(rel, input_order[rows])
        gains_out = list_relevance(rel, output_order[rows])
        ideal = _dcg(-np.sort(-np.nan_to_num(gains_in, nan=0.0), axis=1), k)
        with np.errstate(invalid="ignore", divide="ignore"):
            ndcg_in[rows] = np.where(ideal > 0, _dcg(gains_in, k) / ideal, np.nan)
            ndcg_out[rows] = np.where(ideal > 0, _dcg(gains_out, k) / ideal, np.nan)
        for w in cuts:
            true_in[w][rows] = _row_mean(gains_in[:, :w])
            true_out[w][rows] = _row_mean(gains_out[:, :w])
    scored = ~np.isnan(ndcg_in)
    out = {"users_scored": int(scored.sum()),
           **_paired(f"ndcg@{k}", ndcg_in[scored], ndcg_out[scored])}
    for w in cuts:
        out.update(_paired(f"true_relevance@{w}", true_in[w][scored], true_out[w][scored]))
    out[f"ndcg@{k}_difference_interval"] = paired_difference_interval(
        ndcg_out[scored] - ndcg_in[scored], resamples, confidence, seed)
    return out


def stage_report(lists: Mapping[str, np.ndarray], relevant: Sequence[np.ndarray], k: int,
                 users: np.ndarray | None = None, relevance_rows=None,
                 stages: Sequence[Stage] = STAGES, chunk: int = 2048,
                 resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> list[dict]:
    """`evaluation.stages`: one entry per stage whose input and output lists are present.

    Each entry: stage, input, output (list names), input_width, kept, k, interval_confidence;
    `logged`
    (`logged_order_change`, recall also at the kept width when wider than k); `truth`
    (`true_order_change`, with `relevance_rows` on synthetic data; None otherwise); worse_logged
    and worse_truth (`is_worse` of each judge's NDCG@k interval; worse_truth None without the
    truth) and `worse`, either judge finding the output worse than its input.
    """
    if relevance_rows is not None and users is None:
        raise ValueError("judging the stages by the truth needs `users`, the raw user ids of "
                         "the list rows")
    out = []
    for stage in stages:
        if stage.input not in lists or stage.output not in lists:
            continue
        before, after = np.asarray(lists[stage.input]), np.asarray(lists[stage.output])
        kept = after.shape[1]
        widths = (kept,) if kept > k else ()
        options = dict(resamples=resamples, confidence=confidence, seed=seed)
        logged = logged_order_change(before, after, relevant, k, widths, **options)
        truth = None if relevance_rows is None else true_order_change(
            before, after, users, relevance_rows, k, widths, chunk, **options)
        worse_logged = is_worse(logged[f"ndcg@{k}_difference_interval"])
        worse_truth = None if truth is None else is_worse(truth[f"ndcg@{k}_difference_interval"])
        out.append({"stage": stage.name, "input": stage.input, "output": stage.output,
                    "input_width": int(before.shape[1]), "kept": int(kept), "k": k,
                    "interval_confidence": confidence, "logged": logged, "truth": truth,
                    "worse_logged": worse_logged, "worse_truth": worse_truth,
                    "worse": worse_logged or bool(worse_truth)})
    return out


def shown_items(users: np.ndarray, test_rows: pd.DataFrame) -> list[np.ndarray]:
    """Per user, the distinct raw item ids the logging policy showed them in the test period:
    its test rows that are logged impressions (`sampled_negative` == 0), not sampled negatives.

    Args:
      users: [n_users] raw user ids, one per list row.
      test_rows: the test split's rows (`rankers.parquet`): user_id_raw, item_id_raw,
        sampled_negative.
    """
    missing = [c for c in ("user_id_raw", "item_id_raw", "sampled_negative")
               if c not in test_rows]
    if missing:
        raise ValueError(f"the test rows lack {missing}; exposure needs each row's user, item "
                         "and whether it is a logged impression (sampled_negative == 0)")
    logged = test_rows.loc[test_rows["sampled_negative"] == 0, ["user_id_raw", "item_id_raw"]]
    by_user = logged.groupby("user_id_raw")["item_id_raw"].apply(lambda s: np.unique(s.to_numpy()))
    empty = np.empty(0, np.int64)
    return [by_user.get(u, empty) for u in np.asarray(users)]


def exposure_report(lists: Mapping[str, np.ndarray], relevant: Sequence[np.ndarray],
                    shown: Sequence[np.ndarray], k: int,
                    rows: Mapping[str, np.ndarray] | None = None, users: np.ndarray | None = None,
                    relevance_rows=None, catalogue_items: int | None = None,
                    chunk: int = 2048) -> dict:
    """How much of each top-k the logging policy showed its user (`evaluation.exposure`).

    A held-out positive exists only where the old system made an impression, so logged recall
    can only count recommended items that were shown: a list that finds what users want but the
    old system never showed them scores nothing for it.

    Per list, pooled over its users' filled top-k slots: shown_share@k (slots holding an item the
    user was shown in the test period); positive_rate_of_shown@k (of those, the share that are
    held-out positives, the clicks logged recall counts); precision@k, which is their product
    while every positive is an impression (positives_not_shown counts the exceptions); with the
    truth, true_relevance_shown@k and true_relevance_not_shown@k, the mean true relevance of the
    top k's shown and never-shown items. `logging_policy`: what it showed the same users (per
    user, share that are positives, its truth relevance), positives_shown_share (share of the
    held-out positives that were impressions) and random_list_shown_share (shown per user over
    the catalogue: a uniformly random list's shown share).

    Args:
      lists: name -> [n_users, >= k] raw item ids, best first (-1 pads).
      relevant, shown: per user row, held-out positives and shown items (`shown_items`).
      rows: name -> the user rows to score that list on (default: every row).
      users, relevance_rows: raw user ids of the rows and the truth's lookup (as for
        `truth.lists_vs_truth`), for the truth columns.
      catalogue_items: how many items could be recommended, for random_list_shown_share.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if relevance_rows is not None and users is None:
        raise ValueError("the truth columns need `users`, the raw user ids of the list rows")
    if len(shown) != len(relevant):
        raise ValueError(f"shown and relevant must hold one entry per user row; got "
                         f"{len(shown)} and {len(relevant)}")
    n = len(relevant)
    tops = {name: np.asarray(top)[:, :k] for name, top in lists.items()}
    counts = {}
    for name, top in tops.items():
        is_shown = hits_matrix(top, shown)
        is_positive = hits_matrix(top, relevant)
        counts[name] = {"slots": (top >= 0).sum(axis=1), "shown": is_shown.sum(axis=1),
                        "positives": is_positive.sum(axis=1),
                        "positives_shown": (is_positive & is_shown).sum(axis=1),
                        "is_shown": is_shown}
    shown_rows, shown_ids = relevant_pairs(shown)
    pos_rows, pos_ids = relevant_pairs(relevant)
    low, span = key_range(shown_ids, pos_ids)
    shown_keys = np.unique(pair_keys(shown_rows, shown_ids, low, span))
    pos_keys = np.unique(pair_keys(pos_rows, pos_ids, low, span))
    policy = {"users": n, "shown_items": int(len(shown_keys)),
              "shown_per_user": _ratio(len(shown_keys), n),
              "positive_rate_of_shown": _ratio(np.isin(shown_keys, pos_keys).sum(),
                                               len(shown_keys)),
              "positives_shown_share": _ratio(np.isin(pos_keys, shown_keys).sum(), len(pos_keys))}
    if catalogue_items:
        policy["random_list_shown_share"] = _ratio(len(shown_keys), n * catalogue_items)
    if relevance_rows is not None:
        users = np.asarray(users)
        policy_true = np.zeros(n)
        for name in tops:
            counts[name]["true_shown"] = np.zeros(n)
            counts[name]["true_not_shown"] = np.zeros(n)
        flat_rows, flat_ids = shown_keys // span, shown_keys % span + low
        for part, rel in relevance_chunks(users, relevance_rows, chunk):
            for name, top in tops.items():
                gains = np.nan_to_num(list_relevance(rel, top[part]), nan=0.0)
                seen = counts[name]["is_shown"][part]
                counts[name]["true_shown"][part] = np.where(seen, gains, 0.0).sum(axis=1)
                counts[name]["true_not_shown"][part] = np.where(~seen, gains, 0.0).sum(axis=1)
            mine = (flat_rows >= part.start) & (flat_rows < part.start + len(rel))
            local = flat_rows[mine] - part.start
            policy_true[part] = np.bincount(local, rel[local, flat_ids[mine] - 1],
                                            minlength=len(rel))
        policy["true_relevance_shown"] = _ratio(policy_true.sum(), len(shown_keys))
    out = {"k": k, "logging_policy": policy, "lists": {}}
    for name, c in counts.items():
        at = np.arange(n) if rows is None or name not in rows else np.asarray(rows[name])
        total = {key: float(v[at].sum()) for key, v in c.items() if key != "is_shown"}
        m = {"users": int(len(at)), "slots": int(total["slots"]),
             f"shown_share@{k}": _ratio(total["shown"], total["slots"]),
             f"positive_rate_of_shown@{k}": _ratio(total["positives_shown"], total["shown"]),
             f"precision@{k}": _ratio(total["positives"], total["slots"]),
             "positives_not_shown": int(total["positives"] - total["positives_shown"])}
        if "true_shown" in total:
            m[f"true_relevance_shown@{k}"] = _ratio(total["true_shown"], total["shown"])
            m[f"true_relevance_not_shown@{k}"] = _ratio(total["true_not_shown"],
                                                        total["slots"] - total["shown"])
        out["lists"][name] = m
    return out


def _checked_stage_lists(input_order, output_order, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both lists as [n_users, width] arrays; ValueError unless the output only reorders and
    cuts its own row of the input."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    before, after = np.asarray(input_order), np.asarray(output_order)
    if before.ndim != 2 or after.ndim != 2 or len(before) != len(after):
        raise ValueError(f"input_order and output_order must be [n_users, width] with the same "
                         f"users; got shapes {before.shape} and {after.shape}")
    rows_in, rows_out = (np.broadcast_to(np.arange(len(a))[:, None], a.shape)
                         for a in (before, after))
    filled_in, filled_out = before >= 0, after >= 0
    low, span = key_range(before[filled_in], after[filled_out])
    outside = ~np.isin(pair_keys(rows_out[filled_out], after[filled_out], low, span),
                       pair_keys(rows_in[filled_in], before[filled_in], low, span))
    if outside.any():
        row = int(rows_out[filled_out][outside][0])
        raise ValueError(f"output_order holds {int(outside.sum())} items that are not in its "
                         f"row of input_order (e.g. item {int(after[filled_out][outside][0])} "
                         f"of row {row}); a ranking stage can only reorder and cut its input")
    return before, after


def _discount(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _binary_ndcg(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per row NDCG@k of [n, width] hits; the ideal ranks min(n_relevant, k) hits first, so an
    order shorter than k counts its missing ranks as misses."""
    hits = hits[:, :k]
    discount = _discount(k)
    ideal = np.cumsum(discount)[np.minimum(n_relevant, k) - 1]
    return (hits @ discount[:hits.shape[1]]) / ideal


def _dcg(gains: np.ndarray, k: int) -> np.ndarray:
    """Per row DCG@k of [n, width] graded gains (NaN pads gain nothing)."""
    top = np.nan_to_num(gains[:, :k], nan=0.0)
    return top @ _discount(k)[:top.shape[1]]


def _row_mean(values: np.ndarray) -> np.ndarray:
    """Per row mean of the non-NaN values; NaN for a row without any."""
    filled = ~np.isnan(values)
    count = filled.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(filled, values, 0.0).sum(axis=1) / count, np.nan)


def _paired(metric: str, before: np.ndarray, after: np.ndarray) -> dict:
    """input_<metric>, output_<metric> and <metric>_difference (output - input), means over
    users (NaN without users)."""
    mean = (lambda x: float(np.mean(x)) if len(x) else float("nan"))  # noqa: E731
    return {f"input_{metric}": mean(before), f"output_{metric}": mean(after),
            f"{metric}_difference": mean(after) - mean(before)}


def _ratio(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")
