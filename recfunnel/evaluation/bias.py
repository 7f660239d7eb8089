"""Popularity bias (L4.3): does a model's output concentrate on the items that were already
popular in training, beyond what the users' own held-out likes justify?

Read from any model's top-K lists ([n_users, K] item ids, -1 pads) against `ItemPopularity`, the
training interactions per catalogue item. Three kinds of measure:
- concentration, blind to preferences: the concentration curve, catalogue coverage, the Gini
  index, average recommendation popularity and the share of long-tail items;
- popularity-opportunity bias (Zhu et al., WSDM 2021), preference-aware: among items a user is
  known to like (held-out positives), are the popular ones ranked higher?
- statistical parity of hits between head and tail items the users liked alike.
Everything is vectorized over (user, item) pairs: 1M recommendations take well under a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from recfunnel.topk import key_range, pair_keys, relevant_pairs

HEAD_SHARE = 0.8        # the head is the most popular items making up 80 % of training interactions
CURVE_SHARES = tuple(np.round(np.arange(1, 11) / 10, 1))   # 10 %, 20 %, ..., 100 %


@dataclass(frozen=True)
class ItemPopularity:
    """Training popularity of every catalogue item: what each bias measure compares against.

    `item_ids` [n_items] is sorted; `counts` [n_items] holds each item's training interactions.
    The head is the smallest set of most popular items that together make up `head_share` of
    all training interactions (ties at the boundary broken by item id); every other item,
    including items never interacted with, is the long tail.
    """
    item_ids: np.ndarray
    counts: np.ndarray
    head_share: float = HEAD_SHARE

    @classmethod
    def from_interactions(cls, train_item_ids, catalogue=None,
                          head_share: float = HEAD_SHARE) -> "ItemPopularity":
        """Counts `train_item_ids` (one id per training interaction; negative ids are padding).

        `catalogue` lists every item that could be recommended, so that items nobody touched in
        training count for coverage and the long tail; without it, the catalogue is the items
        seen in training.
        """
        if not 0 < head_share <= 1:
            raise ValueError(f"head_share must be in (0, 1], got {head_share}")
        train = np.asarray(train_item_ids).ravel()
        train = train[train >= 0]
        known = train if catalogue is None else np.r_[np.asarray(catalogue).ravel(), train]
        ids = np.unique(known)
        counts = np.bincount(np.searchsorted(ids, train), minlength=len(ids))
        return cls(ids, counts, head_share)

    @property
    def is_head(self) -> np.ndarray:
        """[n_items] booleans: the item belongs to the head (see the class docstring)."""
        order = np.argsort(-self.counts, kind="stable")
        cumulative = np.cumsum(self.counts[order])
        n_head = int(np.searchsorted(cumulative, self.head_share * cumulative[-1] - 1e-9)) + 1 \
            if len(cumulative) and cumulative[-1] > 0 else 0
        head = np.zeros(len(self.counts), bool)
        head[order[:n_head]] = True
        return head

    def positions(self, item_ids: np.ndarray, what: str) -> np.ndarray:
        """The catalogue index of each id in `item_ids`; ValueError naming `what` if unknown."""
        item_ids = np.asarray(item_ids)
        if not len(self.item_ids):
            raise ValueError(f"the catalogue is empty, so the {what} cannot be placed in it")
        at = np.minimum(np.searchsorted(self.item_ids, item_ids), len(self.item_ids) - 1)
        known = self.item_ids[at] == item_ids
        if not known.all():
            raise ValueError(f"{what} hold {int((~known).sum())} item ids that are not in the "
                             f"catalogue, e.g. {np.unique(item_ids[~known])[:5].tolist()}; build "
                             f"ItemPopularity with catalogue= covering every item")
        return at


def _filled_slots(recommended: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, slot) of every non-padding entry of a [n_users, K] recommendation matrix."""
    if recommended.ndim != 2:
        raise ValueError(f"recommended must be [n_users, K] item ids; got shape "
                         f"{recommended.shape}")
    return np.nonzero(recommended >= 0)


def concentration_curve(item_ids, shares: Sequence[float] = CURVE_SHARES) -> pd.DataFrame:
    """Columns share, items: how many distinct items make up each share of all occurrences.

    `item_ids` is any array of ids, one per occurrence: a [n_users, K] recommendation matrix or
    the training interactions themselves (negative ids are padding). Items are taken most
    frequent first, so a steep start means few items dominate; at share 1.0 `items` is the
    number of distinct items.
    """
    ids = np.asarray(item_ids).ravel()
    _, counts = np.unique(ids[ids >= 0], return_counts=True)
    cumulative = np.cumsum(np.sort(counts)[::-1])
    total = cumulative[-1] if len(cumulative) else 0
    shares = np.asarray(shares, dtype=float)
    items = np.searchsorted(cumulative, shares * total - 1e-9 * max(total, 1)) + 1 \
        if total else np.zeros(len(shares), int)
    return pd.DataFrame({"share": shares, "items": np.asarray(items, dtype=np.int64)})


def top_items_share(counts, fractions: Sequence[float]) -> np.ndarray:
    """[len(fractions)] share of all occurrences taken by the most frequent `fraction` of the
    catalogue (`counts`: one per catalogue item, zeros included; fractions in [0, 1]): the
    concentration curve read along its other axis, 0 at 0 and 1 at 1 (0 everywhere when no
    item occurs)."""
    ordered = np.sort(np.asarray(counts, dtype=float).ravel())[::-1]
    cumulative = np.concatenate([[0.0], np.cumsum(ordered) / max(ordered.sum(), 1.0)])
    at = np.round(np.asarray(fractions, dtype=float) * len(ordered)).astype(int)
    return cumulative[np.clip(at, 0, len(ordered))]


def gini_index(counts) -> float:
    """Gini index of non-negative counts: 0 when every item is equally frequent, (n - 1) / n
    when one item takes everything. NaN for an all-zero or empty input."""
    x = np.sort(np.asarray(counts, dtype=float).ravel())
    if not len(x) or x.sum() == 0:
        return float("nan")
    n = len(x)
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / (n * x.sum()))


def popularity_bias_summary(recommended, popularity: ItemPopularity) -> dict:
    """Concentration of a [n_users, K] recommendation matrix over the catalogue.

    - coverage: share of catalogue items recommended to anyone;
    - gini: Gini index of recommendation counts over the whole catalogue (unrecommended = 0);
    - average_recommendation_popularity (ARP, Abdollahpouri et al.): per user, the mean training
      count of the recommended items, averaged over users with a non-empty list; and
      popularity_lift, ARP / the mean training count of a catalogue item (about 1 for a uniform
      random recommender);
    - long_tail_share: share of recommendation slots filled with long-tail items (see
      `ItemPopularity`), next to long_tail_catalogue_share, the share a uniform draw would give.
    """
    recommended = np.asarray(recommended)
    rows, slots = _filled_slots(recommended)
    at = popularity.positions(recommended[rows, slots], "recommended")
    n_items = len(popularity.item_ids)
    per_item = np.bincount(at, minlength=n_items)
    n_users = recommended.shape[0]
    listed_per_user = np.bincount(rows, minlength=n_users)
    listed = listed_per_user > 0
    user_pop = np.bincount(rows, popularity.counts[at], minlength=n_users)[listed] \
        / listed_per_user[listed]
    arp = float(user_pop.mean()) if len(user_pop) else float("nan")
    tail = ~popularity.is_head
    return {
        "recommendations": int(len(at)),
        "users": int(n_users),
        "catalogue_items": int(n_items),
        "distinct_items": int((per_item > 0).sum()),
        "coverage": float((per_item > 0).mean()) if n_items else float("nan"),
        "gini": gini_index(per_item),
        "average_recommendation_popularity": arp,
        "popularity_lift": arp / float(popularity.counts.mean()) if n_items else float("nan"),
        "long_tail_share": float(tail[at].mean()) if len(at) else float("nan"),
        "long_tail_catalogue_share": float(tail.mean()) if n_items else float("nan"),
    }


def positive_ranks(recommended, relevant: Sequence[np.ndarray]) -> pd.DataFrame:
    """Columns row, item_id, rank: each distinct held-out positive and its 0-based position in
    its user's list (row i of `recommended` belongs to `relevant[i]`).

    Positives missing from the list share the rank K (the list width): censored. Pass full
    rankings (every item not seen in training, best first), for the exact ranks of Zhu et al.,
    or long lists (the candidate generator's). Through a top-10 list most ranks tie at 10: PRU
    is then undefined for most users and PRI is biased (a uniform random top-10 scores PRI
    about 0.3 in the tests, as rarely liked items' averages sit on the tie); head/tail parity
    (`popularity_parity`) is the measure that reads top-K lists without that bias.
    """
    recommended = np.asarray(recommended)
    rows, slots = _filled_slots(recommended)
    listed = recommended[rows, slots]
    pos_rows, pos_items = relevant_pairs(relevant)
    keep = pos_items >= 0
    pos_rows, pos_items = pos_rows[keep], pos_items[keep]
    low, span = key_range(listed, pos_items)
    wanted = np.unique(pair_keys(pos_rows, pos_items, low, span))
    keys = pair_keys(rows, listed, low, span)
    order = np.lexsort((slots, keys))                 # first slot of a repeated item wins
    keys, slots = keys[order], slots[order]
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    found = keys[at] == wanted if len(keys) else np.zeros(len(wanted), bool)
    return pd.DataFrame({"row": wanted // span, "item_id": wanted % span + low,
                         "rank": np.where(found, slots[at] if len(keys) else 0,
                                          recommended.shape[1])})


def grouped_spearman(groups: np.ndarray, x: np.ndarray, y: np.ndarray) -> pd.Series:
    """Spearman's rank correlation of x and y within each group (ties get average ranks, as in
    scipy.stats.spearmanr), indexed by group; NaN where x or y is constant (one pair included)."""
    frame = pd.DataFrame({"g": groups, "x": x, "y": y})
    codes, uniques = pd.factorize(frame["g"], sort=True)
    by = frame.groupby(codes, sort=False)
    rx, ry = by["x"].rank(method="average").to_numpy(), by["y"].rank(method="average").to_numpy()
    n = np.bincount(codes, minlength=len(uniques))
    dx = rx - (np.bincount(codes, rx, len(uniques)) / n)[codes]
    dy = ry - (np.bincount(codes, ry, len(uniques)) / n)[codes]
    vx, vy = np.bincount(codes, dx * dx, len(uniques)), np.bincount(codes, dy * dy, len(uniques))
    defined = (vx > 1e-9) & (vy > 1e-9)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.bincount(codes, dx * dy, len(uniques)) / np.sqrt(vx * vy)
    return pd.Series(np.where(defined, rho, np.nan), index=uniques)


def user_popularity_rank_correlation(ranks: pd.DataFrame,
                                     popularity: ItemPopularity) -> pd.Series:
    """Per user row: Spearman correlation between the training popularity of the user's held-out
    positives and their ranks (from `positive_ranks`). Negative = popular likes ranked higher.
    NaN for users with fewer than two positives, or whose positives tie in popularity or rank."""
    pop = popularity.counts[popularity.positions(ranks["item_id"].to_numpy(), "relevant items")]
    return grouped_spearman(ranks["row"].to_numpy(), pop, ranks["rank"].to_numpy())


def popularity_opportunity_bias(ranks: pd.DataFrame, popularity: ItemPopularity) -> dict:
    """Popularity-opportunity bias (Zhu et al., WSDM 2021) from held-out positives' ranks.

    - pru (user side): -mean over users of SRC(popularity of the user's held-out positives, their
      rank positions), over users where it is defined;
    - pri (item side): -SRC(item popularity, the item's average rank among the users who liked
      it in the held-out data), over items liked by anyone.
    Both are 0 without bias and approach 1 when popular liked items always come first.
    """
    per_user = user_popularity_rank_correlation(ranks, popularity)
    at = popularity.positions(ranks["item_id"].to_numpy(), "relevant items")
    liked = np.bincount(at, minlength=len(popularity.item_ids))
    scored = np.flatnonzero(liked)
    avg_rank = np.bincount(at, ranks["rank"].to_numpy(float), len(liked))[scored] / liked[scored]
    item_rho = grouped_spearman(np.zeros(len(scored)), popularity.counts[scored], avg_rank)
    return {
        "pru": -float(per_user.mean()) if per_user.notna().any() else float("nan"),
        "pri": -float(item_rho.iloc[0]) if len(item_rho) else float("nan"),
        "users_scored": int(per_user.notna().sum()),
        "users_undefined": int(per_user.isna().sum()),
        "items_scored": int(len(scored)),
    }


def popularity_parity(ranks: pd.DataFrame, popularity: ItemPopularity, k: int) -> dict:
    """Statistical parity of hits between head and tail items among held-out positives.

    Every held-out positive is an item its user likes, so a fair model finds head and tail
    positives in its top-k equally often: head_hit_rate and tail_hit_rate are the shares of
    such positives ranked below k; parity_difference = head - tail (0 is parity) and
    parity_ratio = tail / head (1 is parity, 0 means tail likes are never found).
    """
    head = popularity.is_head[popularity.positions(ranks["item_id"].to_numpy(), "relevant items")]
    hit = ranks["rank"].to_numpy() < k
    rate = (lambda m: float(hit[m].mean()) if m.any() else float("nan"))  # noqa: E731
    head_rate, tail_rate = rate(head), rate(~head)
    return {
        f"head_hit_rate@{k}": head_rate, f"tail_hit_rate@{k}": tail_rate,
        "parity_difference": head_rate - tail_rate,
        "parity_ratio": tail_rate / head_rate if head_rate > 0 else float("nan"),
        "head_positives": int(head.sum()), "tail_positives": int((~head).sum()),
    }


def popularity_bias_report(recommended, popularity: ItemPopularity,
                           relevant: Sequence[np.ndarray] | None = None,
                           rankings=None) -> dict:
    """Every measure above for one model's [n_users, K] lists, as plain JSON-ready values.

    With `relevant` (held-out positives per user row) the preference-aware measures are added:
    head/tail parity at K = the list width, and popularity-opportunity bias read from
    `rankings` ([n_users, L] longer lists of the same users, ideally the full ranking) or, if
    absent, from the top-K lists themselves; `ranked_positions` says which L it used.
    """
    recommended = np.asarray(recommended)
    curve = concentration_curve(recommended)
    report = {"concentration_curve": curve.to_dict("records"),
              **popularity_bias_summary(recommended, popularity)}
    if relevant is not None:
        ranks = positive_ranks(recommended, relevant)
        report["parity"] = popularity_parity(ranks, popularity, recommended.shape[1])
        if rankings is not None:
            rankings = np.asarray(rankings)
            ranks = positive_ranks(rankings, relevant)
        report["popularity_opportunity"] = {
            **popularity_opportunity_bias(ranks, popularity),
            "ranked_positions": int((recommended if rankings is None else rankings).shape[1])}
    return report
