"""Online simulator (L7.1): users from the synthetic ground truth use a recommender for days.

We have no live traffic, so simulated users play it: each day every user still active opens
the app, is shown `k` items by the recommender under test (the real Triton server through
`served_recommender`, or any function with the same signature), examines them top-down with a
position bias, and answers each examined item as `World.respond` says (click, like, share,
watch seconds). What they did is logged as events in our schema (plus arm, position, day and
served version). Whether a user comes back the next day depends on how much they watched in
the session: the churn proxy. Plain numpy/pandas; no TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from recfunnel.data.synthetic import World
from recfunnel.names import OUTCOMES

# recommend(users_raw [n], day, k_needed) -> (items [n, >= k_needed] raw ids best first, -1 pads;
#                                             arm [n] str; model_version [n] int)
Recommender = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class SimulationSettings:
    """How simulated users behave; defaults are the experiments config's."""
    days: int = 3                   # sessions, one a day
    k: int = 10                     # items shown per session
    examine_decay: float = 0.85     # P(examine position r) = decay ** r (r = 0 for the first)
    return_base: float = 0.5        # P(return) = sigmoid(base + slope * log1p(watch minutes))
    return_slope: float = 1.0
    seed: int = 0


@dataclass
class SimulationLog:
    events: pd.DataFrame            # one row per examined item, our event schema + extra columns
    outcomes: pd.DataFrame          # one row per user: arm, sessions, impressions, ..., churned
    settings: SimulationSettings
    start_day: int


def simulate(world: World, recommend: Recommender, users_raw, start_day: int,
             settings: SimulationSettings, progress: bool = True,
             description: str = "simulated days") -> SimulationLog:
    """Every user in `users_raw` starts active on `start_day`; runs `settings.days` days.

    Items a user was shown earlier in the simulation are not shown again (the recommender is
    asked for enough items to skip them), as a real feed does not repeat itself.
    """
    users_raw = np.asarray(users_raw, np.int64).reshape(-1)
    if users_raw.size == 0:
        raise ValueError("simulate: no users given")
    unknown = users_raw[(users_raw < 1) | (users_raw > len(world.users))]
    if unknown.size:
        raise ValueError(f"simulate: users {unknown[:5].tolist()} are not in the ground truth "
                         f"(ids 1..{len(world.users)})")
    rng = np.random.default_rng(settings.seed)
    n, k = users_raw.size, settings.k
    active = np.ones(n, bool)
    shown = [set() for _ in range(n)]
    arms = np.full(n, "", dtype=object)
    totals = {c: np.zeros(n) for c in OUTCOMES}
    frames = []
    start = pd.Timestamp(world.config.start_date, tz="UTC")
    duration = world.items["duration_seconds"].to_numpy()
    for day in tqdm(range(start_day, start_day + settings.days), desc=description,
                    unit="day", disable=not progress):
        who = np.flatnonzero(active)
        if who.size == 0:
            break
        asked = k * (day - start_day + 1)           # enough to skip every item shown before
        items, arm, model_version = recommend(users_raw[who], day, asked)
        arms[who] = np.asarray(arm, dtype=object)
        lists = _fresh(items, [shown[i] for i in who], k)
        for row, i in enumerate(who):
            shown[i].update(lists[row][lists[row] >= 0].tolist())
        position = np.broadcast_to(np.arange(k), lists.shape)
        examined = (lists >= 0) & (rng.random(lists.shape) < settings.examine_decay ** position)
        rows, cols = np.nonzero(examined)
        user_idx = who[rows]
        item_raw = lists[rows, cols]
        answer = world.respond(users_raw[user_idx] - 1, item_raw - 1, day, rng)
        micros = rng.integers(0, 86_400 * 10**6, rows.size)
        frames.append(pd.DataFrame({
            "user_id": users_raw[user_idx], "item_id": item_raw,
            "timestamp": start + pd.Timedelta(days=day) + pd.to_timedelta(micros, unit="us"),
            **answer, "duration_seconds": duration[item_raw - 1].astype(np.float64),
            "arm": arms[user_idx], "position": cols.astype(np.int16), "day": day,
            "model_version": np.asarray(model_version)[rows].astype(np.int64)}))
        session_watch = np.bincount(rows, answer["watch_seconds"], minlength=who.size)
        totals["sessions"][who] += 1
        totals["impressions"][who] += examined.sum(axis=1)
        for name, column in (("clicks", "click"), ("likes", "like"), ("shares", "share"),
                             ("watch_seconds", "watch_seconds")):
            totals[name][who] += np.bincount(rows, answer[column], minlength=who.size)
        p_return = 1 / (1 + np.exp(-(settings.return_base + settings.return_slope
                                     * np.log1p(session_watch / 60.0))))
        active[who] = rng.random(who.size) < p_return
    events = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    outcomes = pd.DataFrame({"user_id": users_raw, "arm": arms.astype(str),
                             **{c: totals[c] for c in OUTCOMES},
                             "churned": (~active).astype(np.int8)})
    return SimulationLog(events, outcomes, settings, start_day)


def _fresh(items: np.ndarray, seen: list[set], k: int) -> np.ndarray:
    """[n, k] each row's first k items not in its `seen` set, in order; -1 pads."""
    items = np.asarray(items, np.int64)
    out = np.full((items.shape[0], k), -1, np.int64)
    for row, (candidates, already) in enumerate(zip(items, seen)):
        fresh = [i for i in candidates.tolist() if i >= 0 and i not in already][:k]
        out[row, :len(fresh)] = fresh
    return out


def online_metrics(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per arm: users, time spent, engagement and clicks per user, CTR and the churn proxy."""
    grouped = outcomes.groupby("arm")
    table = pd.DataFrame({
        "users": grouped.size(),
        "watch_seconds_per_user": grouped["watch_seconds"].mean(),
        "clicks_per_user": grouped["clicks"].mean(),
        "likes_per_user": grouped["likes"].mean(),
        "shares_per_user": grouped["shares"].mean(),
        "sessions_per_user": grouped["sessions"].mean(),
        "ctr": grouped["clicks"].sum() / grouped["impressions"].sum().clip(lower=1),
        "churn_rate": grouped["churned"].mean(),
    })
    return table


def shown_relevance(events: pd.DataFrame, world: World) -> np.ndarray:
    """[n] the ground truth's relevance of each logged (user, item) on its day."""
    return world.true_relevance(events["user_id"].to_numpy() - 1,
                                events["item_id"].to_numpy() - 1, events["day"].to_numpy())


# ---- recommenders ----------------------------------------------------------------------------
def served_recommender(make_client, max_users: int = 64, concurrency: int = 2) -> Recommender:
    """The funnel served by Triton, asked in batches of at most `max_users` users, `concurrency`
    requests in flight (one client per thread: `make_client()` gives a FunnelClient); the
    server assigns each user's arm."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def ask(users, k_needed):
        if not hasattr(local, "client"):
            local.client = make_client()
        served = local.client.recommend(users, k_needed)
        return served.items, served.arm, served.model_versions

    def recommend(users, day, k_needed):
        batches = [users[s:s + max_users] for s in range(0, len(users), max_users)]
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(lambda batch: ask(batch, k_needed), batches))
        return tuple(np.concatenate(part) for part in zip(*answers))
    return recommend


def list_recommender(users_raw, lists: np.ndarray, arm: str) -> Recommender:
    """Fixed ranked lists (e.g. a model's offline predictions, [n_users, width] raw ids) shown
    as they are: for comparing models' offline metrics with their online outcome."""
    position = pd.Series(np.arange(len(users_raw)), index=np.asarray(users_raw, np.int64))

    def recommend(users, day, k_needed):
        chosen = lists[position.loc[users].to_numpy()]
        return chosen, np.full(len(users), arm, dtype=object), np.zeros(len(users), np.int64)
    return recommend
