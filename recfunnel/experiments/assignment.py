"""Who sees what (L8.1, L8.2): a deterministic, salted hash of (experiment, user) picks the arm.

The long-term holdout is drawn first, with its own salt that does not depend on the experiment,
so the same users stay held out across experiments and rollouts; the other users are split
between the experiment's arms by a hash salted with the experiment's name (a new experiment
reshuffles them, so one experiment's treatment does not carry over into the next).
The hash is splitmix64 on 64-bit integers: the same in every process, restart and machine
(Python's own `hash` is salted per process), vectorized, and uniform enough that a 50/50 split
passes the sample-ratio check (tested). The served funnel consults `Experiment.assign` for every
request (triton_repo/funnel), the simulator and the analysis use the same function.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recfunnel.errors import RecfunnelError

HOLDOUT = "holdout"
HOLDOUT_SALT = "recfunnel-long-term-holdout"
EXPERIMENT_FILE = "experiment.json"          # in the served repository's root
_BUCKETS = 1 << 32


class ExperimentError(RecfunnelError, ValueError):
    """An experiment definition that cannot split users as written."""


def _salt(text: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):                 # wrapping uint64 arithmetic is the point
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def unit_hash(salt: str, user_ids) -> np.ndarray:
    """[n] float64 in [0, 1): each user's position for this salt; the same everywhere."""
    ids = np.asarray(user_ids).astype(np.int64).astype(np.uint64).reshape(-1)
    return (_splitmix64(ids ^ _salt(salt)) >> np.uint64(32)).astype(np.float64) / _BUCKETS


def in_holdout(user_ids, share: float, salt: str = HOLDOUT_SALT) -> np.ndarray:
    """[n] bool: the users in a long-term holdout of `share`; a larger share holds the smaller
    one's users too (the same hash, a longer range)."""
    return unit_hash(salt, user_ids) < share


@dataclass
class Arm:
    """One variant of the served funnel: its share of users and what it changes.

    `blend`: the heavy ranker's objective weights (None: the served version's own);
    `model_version`: a Triton version to pin (None: the newest ready one).
    """
    name: str
    share: float
    blend: dict | None = None
    model_version: int | None = None


@dataclass
class Experiment:
    """Arms plus a holdout; `assign` maps raw user ids to arm names."""
    name: str
    arms: list[Arm]
    holdout_share: float = 0.0
    holdout_version: int | None = None     # the Triton version the holdout stays on
    holdout_salt: str = HOLDOUT_SALT
    started: str | None = None
    notes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.arms = [a if isinstance(a, Arm) else Arm(**a) for a in self.arms]
        names = [a.name for a in self.arms]
        if not self.arms:
            raise ExperimentError(f"experiment {self.name!r} has no arms; give at least one")
        if len(set(names)) != len(names) or HOLDOUT in names:
            raise ExperimentError(f"experiment {self.name!r}: arm names {names} must be unique "
                                  f"and not {HOLDOUT!r} (the holdout is holdout_share)")
        bad = [a.name for a in self.arms if not a.share > 0]
        if bad or not 0 <= self.holdout_share < 1:
            raise ExperimentError(f"experiment {self.name!r}: shares must be > 0 (arms {bad}) "
                                  f"and holdout_share in [0, 1) (got {self.holdout_share})")
        total = sum(a.share for a in self.arms) + self.holdout_share
        if abs(total - 1.0) > 1e-6:
            raise ExperimentError(f"experiment {self.name!r}: arm shares plus holdout_share sum "
                                  f"to {total:.6f}; they must sum to 1")

    # ---- assignment ------------------------------------------------------------------------
    def assign(self, user_ids) -> np.ndarray:
        """[n] arm name of each raw user id (object array; `holdout` for the holdout)."""
        ids = np.asarray(user_ids).reshape(-1)
        held_out = in_holdout(ids, self.holdout_share, self.holdout_salt)
        position = unit_hash(self.name, ids)
        bounds = np.cumsum([a.share for a in self.arms]) / sum(a.share for a in self.arms)
        arm = np.minimum(np.searchsorted(bounds, position, side="right"), len(self.arms) - 1)
        names = np.array([a.name for a in self.arms], dtype=object)[arm]
        names[held_out] = HOLDOUT
        return names

    def expected_shares(self) -> dict[str, float]:
        """Share of users each arm should get (the sample-ratio check's expectation)."""
        rest = 1.0 - self.holdout_share
        total = sum(a.share for a in self.arms)
        shares = {a.name: rest * a.share / total for a in self.arms}
        return {**shares, HOLDOUT: self.holdout_share} if self.holdout_share else shares

    def arm(self, name: str) -> Arm:
        """The arm called `name`; the holdout is the served version's own blend at
        holdout_version."""
        if name == HOLDOUT:
            return Arm(HOLDOUT, self.holdout_share, None, self.holdout_version)
        for a in self.arms:
            if a.name == name:
                return a
        raise ExperimentError(f"experiment {self.name!r} has no arm {name!r}; arms: "
                              f"{[a.name for a in self.arms]}")

    # ---- persistence -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg, holdout_version: int | None = None, started: str | None = None
                    ) -> "Experiment":
        """From the run config's `experiments` section (recfunnel.config.ExperimentsConfig)."""
        return cls(cfg.name, [Arm(**a) for a in cfg.arms], cfg.holdout_share, holdout_version,
                   started=started)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Written atomically (a reader polling it never sees half a file)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Experiment":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
            return cls(**values)
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise ExperimentError(f"experiment file {path}: {e}") from None
