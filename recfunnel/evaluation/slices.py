"""Metrics per user group (L4.2): is any group of users served worse than the rest?

Takes per-user metric values (e.g. `topk_per_user`, NaN where a user could not be scored) and
the users' attributes, and returns one tidy table: slice, group, users, metric, value,
gap_to_overall, too_small. Slices: age band, gender, location (the country on synthetic data;
the US zip-code region on MovieLens-100K, from `zip_code` if `location` is absent), occupation
where present, and activity (light / medium / heavy by tertiles of training interactions).
Groups with too few users to judge are flagged `too_small`, never dropped. A slice whose
attribute no evaluated user has is left out (its one group, `unknown`, would only repeat the
overall value); the run's data section warns about it.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from recfunnel.data.movielens import zip_region
from recfunnel.data.synthetic import AGE_BANDS, age_band

MIN_USERS = 30              # fewer scored users than this: the group's mean is too noisy to judge
UNKNOWN = "unknown"         # the group of users whose attribute is missing
ACTIVITY_LEVELS = ("light", "medium", "heavy")
SLICES = ("age_band", "gender", "location", "occupation", "activity")


def activity_levels(interactions: pd.Series) -> pd.Series:
    """light / medium / heavy per user, cut at the tertiles of `interactions` (training
    interactions per user, linear-interpolated quantiles). Tied users always share a level, so
    with many ties the groups differ in size and one may be empty (it stays in the table)."""
    counts = interactions.astype(float)
    low, high = np.quantile(counts, [1 / 3, 2 / 3]) if len(counts) else (0.0, 0.0)
    level = np.select([counts <= low, counts <= high], ACTIVITY_LEVELS[:2], ACTIVITY_LEVELS[2])
    return pd.Series(pd.Categorical(level, categories=ACTIVITY_LEVELS), index=interactions.index)


def _labels(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), UNKNOWN).astype(str)


def user_groups(user_ids, users: pd.DataFrame, interactions: pd.Series | None = None
                ) -> pd.DataFrame:
    """user_id plus one column per available slice for each of `user_ids`.

    Args:
      user_ids: [n_users] the evaluated users.
      users: the users table: user_id and any of age_band (labels; numeric codes are ignored
        in favour of age) or age, gender, location (or zip_code), occupation. Users missing
        from it, or missing an attribute, are `unknown`; an attribute every user lacks gives
        no slice.
      interactions: training interactions per user, indexed by user_id (absent users have 0);
        tertiles are taken over `user_ids`.
    """
    if "user_id" not in users.columns:
        raise ValueError(f"users must have a user_id column; got {list(users.columns)}")
    table = users.drop_duplicates("user_id").set_index("user_id")
    table = table.reindex(pd.Index(np.asarray(user_ids), name="user_id"))
    out = pd.DataFrame(index=table.index)
    bands = [name for _, _, name in AGE_BANDS]
    if "age_band" in table.columns and not pd.api.types.is_numeric_dtype(table["age_band"]):
        out["age_band"] = _labels(table["age_band"])
    elif "age" in table.columns:
        age = table["age"]
        out["age_band"] = _labels(age.where(age.isna(), pd.Series(
            age_band(age.fillna(0).to_numpy()), index=age.index)))
    if "age_band" in out.columns:
        out["age_band"] = pd.Categorical(out["age_band"], categories=[
            *bands, *sorted(set(out["age_band"]) - set(bands))])
    if "gender" in table.columns:
        out["gender"] = _labels(table["gender"])
    if "location" in table.columns:
        out["location"] = _labels(table["location"])
    elif "zip_code" in table.columns:
        out["location"] = _labels(zip_region(table["zip_code"]).where(table["zip_code"].notna()))
    if "occupation" in table.columns:
        out["occupation"] = _labels(table["occupation"])
    # an attribute nobody has is no slice (the data section says it is missing)
    out = out[[c for c in out.columns if not (out[c].astype(str) == UNKNOWN).all()]]
    if interactions is not None:
        counts = interactions.reindex(out.index).fillna(0)
        out["activity"] = activity_levels(counts).to_numpy()
    return out.reset_index()


def slice_metrics(per_user: pd.DataFrame, groups: pd.DataFrame,
                  metrics: Iterable[str] | None = None, min_users: int = MIN_USERS
                  ) -> pd.DataFrame:
    """Tidy table of every metric in every group of every slice, overall row first.

    Args:
      per_user: user_id plus one column per metric (NaN: the user is not scored on it).
      groups: user_id plus one column per slice (from `user_groups`); users absent from it
        fall in `unknown`.
      metrics: the columns of `per_user` to slice; default every numeric one but user_id and
        `relevant`.
      min_users: groups with fewer scored users are flagged too_small (kept in the table).

    Returns columns slice, group, users (scored users), metric, value (mean over them),
    gap_to_overall (value - overall value), too_small. Empty groups of a categorical slice
    (an age band nobody is in) appear with users 0 and value NaN.
    """
    if "user_id" not in per_user.columns or "user_id" not in groups.columns:
        raise ValueError("per_user and groups both need a user_id column")
    if metrics is None:
        metrics = [c for c in per_user.columns if c not in ("user_id", "relevant")
                   and pd.api.types.is_numeric_dtype(per_user[c])]
    metrics = list(metrics)
    missing = [m for m in metrics if m not in per_user.columns]
    if missing:
        raise ValueError(f"metrics {missing} are not columns of per_user {list(per_user.columns)}")
    slices = [c for c in groups.columns if c != "user_id"]
    frame = per_user[["user_id", *metrics]].merge(groups, on="user_id", how="left")
    overall = frame[metrics].mean()
    parts = [pd.DataFrame({"slice": "overall", "group": "all", "metric": metrics,
                           "users": frame[metrics].notna().sum().to_numpy(),
                           "value": overall.to_numpy()})]
    for name in slices:
        column = frame[name]
        if not isinstance(column.dtype, pd.CategoricalDtype):
            column = column.fillna(UNKNOWN).astype(str)
        elif column.isna().any():
            column = column.cat.add_categories([UNKNOWN]).fillna(UNKNOWN) \
                if UNKNOWN not in column.cat.categories else column.fillna(UNKNOWN)
        by = frame[metrics].groupby(column.rename("group"), observed=False, sort=True)
        value, users = by.mean(), by.count()
        long = value.stack(dropna=False).rename("value").to_frame() \
            .join(users.stack(dropna=False).rename("users"))
        long.index.names = ["group", "metric"]
        parts.append(long.reset_index().assign(slice=name, group=lambda d: d["group"].astype(str)))
    table = pd.concat(parts, ignore_index=True)
    table["users"] = table["users"].fillna(0).astype(np.int64)
    table["gap_to_overall"] = table["value"] - table["metric"].map(overall)
    table["too_small"] = table["users"] < min_users
    return table[["slice", "group", "users", "metric", "value", "gap_to_overall", "too_small"]]


def worst_groups(table: pd.DataFrame, lower_is_better: Iterable[str] = (),
                 include_too_small: bool = False) -> pd.DataFrame:
    """Per slice and metric, the group furthest on the bad side (lowest value, or highest for
    metrics in `lower_is_better`), among groups large enough to judge unless
    `include_too_small`. Same columns as `slice_metrics`; slices with no such group are left out.
    """
    lower = set(lower_is_better)
    rows = table[(table["slice"] != "overall") & table["value"].notna()]
    if not include_too_small:
        rows = rows[~rows["too_small"]]
    badness = np.where(rows["metric"].isin(lower), rows["value"], -rows["value"])
    worst = rows.assign(_bad=badness).sort_values("_bad", ascending=False, kind="stable")
    return worst.drop_duplicates(["slice", "metric"]).drop(columns="_bad") \
        .sort_values(["metric", "slice"]).reset_index(drop=True)
