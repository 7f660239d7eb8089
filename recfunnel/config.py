"""One typed configuration drives a run: every setting of every stage, with defaults that work.

A YAML file overrides any subset of it (`configs/default.yaml` is the demo's). Unknown keys,
wrong types, values outside a setting's fixed set and out of its range are refused when the
config loads, with the key's full path, so a typo never silently falls back to a default and a
bad value fails before any step runs. Each section declares its checks in `CHECKS`.

A leaf module: every layer may import it; it imports nothing of the project but the other
leaves (`recfunnel.errors`, `recfunnel.names`).
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import yaml

from recfunnel.errors import ConfigError  # what load_config raises (importable from here too)
from recfunnel.names import LABELS, OUTCOMES, SIGNALS


@dataclass(frozen=True)
class OneOf:
    """A setting with a fixed set of values; `otherwise` (what, test) admits values outside the
    set that pass the test (e.g. a strftime pattern). A list setting: each of its elements."""
    choices: tuple
    otherwise: tuple[str, Callable[[str], bool]] | None = None

    def problem(self, path: str, value) -> str | None:
        if value in self.choices:
            return None
        if self.otherwise and isinstance(value, str) and self.otherwise[1](value):
            return None
        other = f" or {self.otherwise[0]}" if self.otherwise else ""
        allowed = ", ".join(map(str, self.choices))
        return f"unknown {path} {value!r}; expected one of {allowed}{other}"


@dataclass(frozen=True)
class Range:
    """A number between `low` and `high` (None: unbounded), the ends included unless open.
    A list setting: each of its elements."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def problem(self, path: str, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"setting {path}: {value!r} is not a number"
        too_low = self.low is not None and (value <= self.low if self.open_low
                                            else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high
                                              else value > self.high)
        if not (too_low or too_high):
            return None
        if self.high is None:
            allowed = f"{'>' if self.open_low else '>='} {self.low:g}"
        else:
            allowed = (f"a value in {'(' if self.open_low else '['}{self.low:g}, "
                       f"{self.high:g}{')' if self.open_high else ']'}")
        return f"setting {path}: {value!r} is out of range; expected {allowed}"


AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, open_low=True)
SHARE = Range(0, 1)


@dataclass
class SyntheticConfig:
    """A simulated video platform with known ground truth (see `recfunnel.data.synthetic`)."""
    seed: int = 42
    n_users: int = 3_000
    n_items: int = 2_000
    n_events: int = 300_000
    n_days: int = 30
    start_date: str = "2026-01-01"
    n_creators: int = 300
    n_categories: int = 12
    latent_dim: int = 16
    popularity_exponent: float = 1.1      # Zipf exponent of item exposure
    clickbait_share: float = 0.05         # items clicked often and abandoned fast
    duplicate_share: float = 0.03         # items that are re-uploads of another item
    unsafe_share: float = 0.02            # items that are NSFW/harmful
    unsafe_flag_recall: float = 0.8       # share of unsafe items that moderation flagged
    drift: float = 0.5                    # how far user tastes move over the n_days
    weak_group_noise: float = 2.0         # the planted badly-served group answers this noisily
    weak_group_niche: float = 2.0         # ... and leans this far to the least-exposed category
    bad_row_share: float = 0.001          # corrupt log rows injected to exercise the quarantine
    max_events_per_chunk: int = 1_000_000

    CHECKS: ClassVar[dict] = {
        **dict.fromkeys(("n_users", "n_items", "n_events", "n_days", "n_creators",
                         "n_categories", "latent_dim", "max_events_per_chunk"), AT_LEAST_ONE),
        "popularity_exponent": POSITIVE,
        **dict.fromkeys(("clickbait_share", "duplicate_share", "unsafe_share",
                         "unsafe_flag_recall", "bad_row_share"), SHARE),
        **dict.fromkeys(("drift", "weak_group_noise", "weak_group_niche"), NON_NEGATIVE)}


SOURCES = ("synthetic", "movielens100k", "parquet")
TIMESTAMP_FORMATS = ("auto", "iso8601", "epoch_s", "epoch_ms")


@dataclass
class DataConfig:
    """Where the events come from: `synthetic`, `movielens100k`, or `parquet` (your own files).

    Your own files (docs/own_data.md) are read with the settings below them: which file is which
    table, which of their columns is which schema column, how timestamps are written, and which
    signals a rating stands for.
    """
    source: str = "synthetic"
    path: str | None = None               # the ML-100K folder or your parquet/CSV files
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # table -> file or folder (relative to path), e.g. {events: ratings.csv, items: movies.csv};
    # a table not named here is found as path/<table>, <table>.parquet, .csv or .tsv
    files: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)   # your column -> schema column, every table
    # auto: ISO-8601 text (2026-01-31, 2026-01-31T08:00:00Z) and epoch seconds (numbers);
    # iso8601 | epoch_s | epoch_ms, or a strftime pattern such as "%d/%m/%Y %H:%M"
    timestamp_format: str = "auto"
    rating_column: str = "rating"         # explicit ratings, read by rating_signals
    # signal -> the lowest rating that sets it, e.g. {like: 4}: like = rating >= 4; events
    # without a click column are then all clicks (a rating is an interaction)
    rating_signals: dict = field(default_factory=dict)

    CHECKS: ClassVar[dict] = {
        "source": OneOf(SOURCES),
        "timestamp_format": OneOf(TIMESTAMP_FORMATS,
                                  ("a strftime pattern such as '%d/%m/%Y'", lambda v: "%" in v))}

    def __post_init__(self):
        for signal, threshold in self.rating_signals.items():
            if signal not in SIGNALS:
                raise ConfigError(f"setting data.rating_signals: {signal!r} is not a signal; "
                                  f"expected some of {', '.join(SIGNALS)}")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise ConfigError(f"setting data.rating_signals.{signal}: expected the lowest "
                                  f"rating that sets it (a number), got {threshold!r}")
        for what, mapping in (("files", self.files), ("columns", self.columns)):
            bad = [k for k, v in mapping.items() if not isinstance(k, str) or not isinstance(v, str)]
            if bad:
                raise ConfigError(f"setting data.{what}: expected names to names, got "
                                  f"{bad[0]!r}: {mapping[bad[0]]!r}")
        unknown = sorted(set(self.files) - {"events", "users", "items"})
        if unknown:
            raise ConfigError(f"setting data.files: {unknown[0]!r} is not a table; expected "
                              "events, users or items")


@dataclass
class ValidationConfig:
    """What makes an event row unusable; such rows go to the quarantine with a reason."""
    max_watch_ratio: float = 1.0          # watch_seconds may not exceed duration x this ...
    watch_tolerance_seconds: float = 1.0  # ... plus this (player rounding)
    min_timestamp: str = "1990-01-01"  # earlier is a zero or default stamp
    max_timestamp: str | None = None      # None: one day after the run starts
    require_known_items: bool = True      # events of items missing from the catalogue are bad

    CHECKS: ClassVar[dict] = {"max_watch_ratio": POSITIVE, "watch_tolerance_seconds": NON_NEGATIVE}


CLUSTER_MODES = ("none", "local")
SCHEDULER_SCHEMES = ("tcp://", "tls://", "ucx://")     # or an existing dask scheduler's address


@dataclass
class ComputeConfig:
    """Where NVTabular runs: one process, a local dask cluster, or an existing scheduler.

    The backend (cuDF on a GPU, pandas on the CPU) is chosen automatically: cuDF when it imports
    and a GPU is visible, unless `cpu` is true.
    """
    cluster: str = "none"                 # none | local | tcp://scheduler:8786
    workers: int = 2                      # for cluster: local
    threads_per_worker: int = 1
    memory_limit: str = "4GB"             # per local worker
    cpu: bool | None = None               # None: automatic; true forces pandas even with a GPU
    part_size: str = "256MB"              # Merlin Dataset partition size

    CHECKS: ClassVar[dict] = {
        "cluster": OneOf(CLUSTER_MODES, ("a scheduler address (tcp://host:8786)",
                                         lambda v: v.startswith(SCHEDULER_SCHEMES))),
        "workers": AT_LEAST_ONE, "threads_per_worker": AT_LEAST_ONE}


# The learned candidate sources' item index (models.candidates.EmbeddingIndex): each kind with
# the parameters it takes (funnel.index_params) and their defaults, chosen by measurement at
# 1M items (benchmarks/bench_index.py, BENCHMARKS.md). Every parameter is a positive integer;
# `threads`: how many cores building or searching it may use.
INDEX_PARAMS = {
    "exact": {"threads": 1},
    "hnsw": {"M": 32, "ef_construction": 200, "ef_search": 1000, "threads": 1},
    "ivf": {"nlist": 1024, "nprobe": 384, "threads": 1},
    "ivfpq": {"nlist": 512, "nprobe": 192, "m": 32, "nbits": 4, "refine": 4, "threads": 1},
}
INDEX_KINDS = tuple(INDEX_PARAMS)


def index_params_problem(kind: str, params: dict, path: str = "funnel.index_params"
                         ) -> str | None:
    """What is wrong with `params` for an index of `kind` (None: nothing): only the kind's own
    parameters, each a positive integer."""
    if not isinstance(params, dict):
        return f"setting {path}: expected a mapping of parameters, got {params!r}"
    known = INDEX_PARAMS.get(kind, {})
    unknown = sorted(set(params) - set(known), key=str)
    if unknown:
        return (f"setting {path}: {unknown[0]!r} is not a parameter of the {kind} index; "
                f"its parameters: {', '.join(known)}")
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"setting {path}.{name}: expected a positive integer, got {value!r}"
    return None


RANKER_ARCHITECTURES = ("mlp", "dcn")    # models.ranking.ARCHITECTURES
OPTIMIZERS = ("adam", "lazy_adam")        # models.optimizers.optimizer
TRAINING_INPUTS = ("memory", "merlin_loader")   # models.data.training_data
SPLIT_KINDS = ("time", "random", "random_per_user")
NEGATIVE_SAMPLING = ("popularity", "uniform")
DURATION_EDGES = (15, 30, 60, 120, 300, 600, 1200, 2400)   # seconds: similar-length buckets


@dataclass
class DatasetConfig:
    """How the training set is built from the validated events (workflows/, L1, L2, L4.4, L5)."""
    # Splits (L5.4). Time split: train < train_end <= valid < train_end + valid_days <= test.
    split: str = "time"                   # time | random | random_per_user
    train_end: str | None = None          # None: valid_days + test_days before the data's end
    valid_days: int = 3
    test_days: int = 3
    random_fractions: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    # Filters (L1)
    window_days: int | None = 21          # freshness (L1.2): train on the last D days; None: all
    active_min_events: int = 10           # active users (L1.1): at least K events ...
    active_window_days: int = 10          # ... in the last N days before train_end
    duplicate_title_similarity: float = 0.9   # L1.3; 1.0 keeps exact (normalised) matches only
    unsafe_filters: list = field(default_factory=lambda: [{"kind": "flag"},
                                                           {"kind": "title_classifier"}])
    # Labels (L2)
    watch_threshold: float = 0.75         # naive watch_75: watched at least this fraction
    duration_edges: list = field(default_factory=lambda: list(DURATION_EDGES))
    watch_quantile: float = 0.8           # duration-aware: watch time above this quantile of
                                          # clicked events on items of similar length
    # Negatives (L4.4)
    negatives_per_row: float = 1.0        # sampled unseen items per example row, labelled 0
    negative_sampling: str = "popularity" # popularity | uniform
    # Id spaces (L3.1)
    freq_threshold: int = 1               # ids seen fewer times in train share the OOV row
    hash_buckets: int | None = None       # set to bound user/item ids by hashing
    embedding_dim: int = 64               # for the table-size report

    CHECKS: ClassVar[dict] = {
        "split": OneOf(SPLIT_KINDS), "negative_sampling": OneOf(NEGATIVE_SAMPLING),
        "random_fractions": SHARE, "valid_days": AT_LEAST_ONE, "test_days": AT_LEAST_ONE,
        "window_days": AT_LEAST_ONE, "active_min_events": NON_NEGATIVE,
        "active_window_days": AT_LEAST_ONE, "duplicate_title_similarity": SHARE,
        "watch_threshold": Range(0, 1, open_low=True), "duration_edges": POSITIVE,
        "watch_quantile": Range(0, 1, open_low=True, open_high=True),
        "negatives_per_row": NON_NEGATIVE, "freq_threshold": NON_NEGATIVE,
        "hash_buckets": AT_LEAST_ONE, "embedding_dim": AT_LEAST_ONE}


@dataclass
class ModelsConfig:
    """Retrieval and ranking models (models/, L2.3, L3, L6)."""
    embedding_dim: int = 64               # two-tower / MF output dimension (L6.1: recall vs latency)
    retrieval_epochs: int = 3
    retrieval_batch_size: int = 1024
    retrieval_learning_rate: float = 0.005
    logq_correction: bool = True          # popularity correction of in-batch negatives
    retrieval_temperature: float = 0.1    # two-tower logits = similarity / temperature
    two_tower_features: list | None = None  # None: the categorical user and item attributes;
                                          # else these (user_id and item_id are always in)
    two_tower_l2_norm: bool = True        # cosine similarity (True) or plain dot product
    retrieval_l2_reg: float = 0.0         # L2 penalty on the embedding rows of each batch
    retrieval_dropout: float = 0.0        # dropout in the two-tower MLPs
    retrieval_positive: str = "click"     # which label makes a (user, item) pair a positive
    mf_epochs: int = 3
    mf_learning_rate: float | None = None # None: retrieval_learning_rate
    ease_regularization: float = 250.0    # EASE's lambda (the candidate source `ease`; 250: the
                                          # ML-100K validation optimum, BENCHMARKS.md)
    ease_max_items: int = 20_000          # EASE holds items^2 floats: none above this size
    retrieval_patience: int = 0           # > 0: stop after this many epochs without a better
                                          # validation recall and keep the best epoch's weights
    # Each epoch's validation recall ranks the whole catalogue for every validation user (a
    # million items: about 4 ms a user); at most this many users, a fixed sample, are ranked
    retrieval_eval_users: int = 5_000
    # adam | lazy_adam: Adam that updates only the embedding rows of the batch (models.optimizers;
    # Adam reads and writes every row of every table on every step)
    optimizer: str = "adam"
    # How fit is fed: `merlin_loader`, Merlin's Loader over a Merlin Dataset; `memory`, the
    # split's rows as in-memory tensors batched by tf.data (no Loader start in the first step:
    # the two-tower's fit about 2x faster on the demo, BENCHMARKS.md training_profile; its
    # quality on ML-100K is not yet checked, so not the default)
    training_input: str = "merlin_loader"
    # Each ranker has one head per objective; watch_75 is a diagnostic head (no blend weight)
    # that shows what ranking by the naive label would do (models.truth in the summary).
    objectives: list = field(default_factory=lambda: ["click", "like", "share", "watch_75",
                                                       "watch_duration_aware"])
    ranker_epochs: int = 8                # at most; early stopping keeps the best epoch
    ranker_patience: int = 2              # > 0: stop after this many epochs without a better
                                          # mean validation AUC of the blended objectives
    ranker_batch_size: int = 1024
    ranker_learning_rate: float = 0.003
    # Cascade-consistent negatives (L6): per observed row, items drawn from what the stage
    # before returns for the user (the candidates for the light ranker, the light ranker's
    # kept set for the heavy ranker), labelled 0, beside the logged and sampled rows.
    light_cascade_negatives: float = 1.0
    heavy_cascade_negatives: float = 1.0
    ranker_retrieval_score: bool = True   # both rankers see the candidate generator's score
    light_ranker_features: list = field(default_factory=lambda: [
        "user_id", "item_id", "item_click_rate", "item_events", "user_click_rate"])
    light_ranker_group_features: bool = True   # also the user's history with the item's
                                          # category (user_category_click_rate, _events) when
                                          # the data set has item categories
    light_ranker_architecture: str = "mlp"   # mlp | dcn (models.ranking.ARCHITECTURES)
    light_ranker_layers: list = field(default_factory=lambda: [32])
    heavy_ranker_features: list | None = None   # None: every user and item feature
    ranker_embedding_dim: int | None = None   # None: Merlin's size per id cardinality
    ranker_l2_reg: float = 0.0            # L2 penalty on the embedding rows of each batch
    ranker_dropout: float = 0.0           # dropout in the rankers' MLPs
    heavy_ranker_architecture: str = "dcn"   # mlp | dcn
    heavy_ranker_layers: list = field(default_factory=lambda: [128, 64])
    # Rankers trained alike with seeds seed, seed + 1, ... and served as one: the mean of their
    # probabilities in logit space (models.saving.MeanOfMembers); the stage's cost times as many
    light_ranker_members: int = 1
    heavy_ranker_members: int = 1
    ranker_cross_depth: int = 2           # cross layers of a dcn ranker
    eval_k: int = 10
    window_sweep_days: list = field(default_factory=lambda: [1, 3, 7, 14, 21])
    window_sweep_models: list = field(default_factory=lambda: ["two_tower", "heavy_ranker"])
    seed: int = 0

    CHECKS: ClassVar[dict] = {
        **dict.fromkeys(("embedding_dim", "retrieval_epochs", "retrieval_batch_size", "mf_epochs",
                         "ranker_epochs", "ranker_batch_size", "ranker_embedding_dim", "eval_k",
                         "retrieval_eval_users", "window_sweep_days", "light_ranker_members",
                         "heavy_ranker_members"), AT_LEAST_ONE),
        **dict.fromkeys(("retrieval_learning_rate", "retrieval_temperature", "mf_learning_rate",
                         "ranker_learning_rate"), POSITIVE),
        **dict.fromkeys(("retrieval_l2_reg", "ranker_l2_reg", "retrieval_patience",
                         "ranker_patience", "light_cascade_negatives", "heavy_cascade_negatives",
                         "ranker_cross_depth"), NON_NEGATIVE),
        "ease_regularization": POSITIVE, "ease_max_items": AT_LEAST_ONE,
        **dict.fromkeys(("light_ranker_architecture", "heavy_ranker_architecture"),
                        OneOf(RANKER_ARCHITECTURES)),
        **dict.fromkeys(("retrieval_dropout", "ranker_dropout"), Range(0, 1, open_high=True)),
        "retrieval_positive": OneOf(LABELS), "objectives": OneOf(LABELS),
        "optimizer": OneOf(OPTIMIZERS),
        "training_input": OneOf(TRAINING_INPUTS),
        "light_ranker_layers": AT_LEAST_ONE, "heavy_ranker_layers": AT_LEAST_ONE}


@dataclass
class FunnelConfig:
    """The served funnel, declared (models.funnel.FunnelSettings, models.components, L6): the
    same declaration is trained for (the cascade), evaluated offline, exported and served."""
    # Candidate sources (registered: two_tower, mf, popularity), each filling its share of
    # candidates_k without repeating another's items; unknown users get popularity.
    sources: list = field(default_factory=lambda: [{"name": "two_tower", "share": 1.0}])
    candidates_k: int = 500               # the candidate list's length (L6.1)
    index: str = "exact"                  # the learned sources' item index (INDEX_KINDS)
    index_params: dict = field(default_factory=dict)   # the index's parameters (INDEX_PARAMS),
                                          # e.g. {ef_search: 1000}; any not given: its default
    filters: list = field(default_factory=lambda: ["seen", "unsafe"])   # items never shown
    # Rankers in order (registered: light_ranker, heavy_ranker); each keeps max(keep, k) of
    # what it is given, the last one the final k (models.eval_k). [] serves the candidates.
    rankers: list = field(default_factory=lambda: [{"name": "light_ranker", "keep": 100},
                                                   {"name": "heavy_ranker"}])
    # The objectives' weights that order every ranker's cut (an experiment arm may send its
    # own for the last ranker)
    blend: dict = field(default_factory=lambda: {
        "click": 0.1, "like": 0.3, "share": 0.2, "watch_duration_aware": 0.4})
    # How each ranker orders its cut (registered: blend, the blend's order; fusion, the blend's
    # order fused with the stage's input order, selector_params {input_weight, offset})
    selector: str = "blend"
    selector_params: dict = field(default_factory=dict)

    # names, shares and keeps are checked against the registries (models.funnel, preflight)
    CHECKS: ClassVar[dict] = {"candidates_k": AT_LEAST_ONE, "index": OneOf(INDEX_KINDS)}

    def __post_init__(self):      # an unknown kind is left to the `index` check
        problem = self.index in INDEX_PARAMS and index_params_problem(self.index,
                                                                      self.index_params)
        if problem:
            raise ConfigError(problem)


@dataclass
class EvaluationConfig:
    """Offline evaluation (recfunnel.evaluation, L4): top-K at models.eval_k, full ranking."""
    min_group_users: int = 30             # slices with fewer users are marked too small
    head_share: float = 0.8               # popularity head: items making 80 % of interactions

    CHECKS: ClassVar[dict] = {"min_group_users": AT_LEAST_ONE,
                              "head_share": Range(0, 1, open_low=True)}


@dataclass
class ServingConfig:
    """The served funnel (recfunnel.serving, triton_repo/, L6): the exported repository's
    sizes (`recfunnel export` reads them as its ServingSettings; its flags override them)."""
    demo_users: int = 20                  # known users the pipeline's serving step asks for
    max_users: int = 64                   # users per request; more is refused with a clear error
    # requests in flight through the router; each waits on its BLS call, so the chain can
    # batch at most this many (demo, c=16: 188 req/s with 4, 311 with 16; bench_router)
    router_instances: int = 16
    stage_instances: int = 1              # processes per stage version (each TF one ~650 MB)
    versions_loaded: int = 2              # Triton versions every stage keeps loaded (rollback)
    keep_versions: int = 2                # version folders kept on disk after an export
    # How the router runs the stages: `chain`, one call to a model holding them all (batched
    # across concurrent requests), or `stages`, one call per stage model (BENCHMARKS.md
    # bench_serving measures both); every stage model is exported either way.
    path: str = "chain"
    chain_instances: int = 1              # processes per chain version (each holds every model)
    # how long the pipeline's own servers (the serving and experiments steps) may take to load
    # every model: each stage and the chain load TensorFlow, on 2 busy cores minutes
    startup_timeout_s: float = 300.0

    CHECKS: ClassVar[dict] = {
        "demo_users": NON_NEGATIVE, "path": OneOf(("chain", "stages")),
        "startup_timeout_s": POSITIVE,
        **dict.fromkeys(("max_users", "router_instances", "stage_instances", "keep_versions",
                         "chain_instances"), AT_LEAST_ONE),
        # a rollback needs the previous version still loaded in every stage
        "versions_loaded": Range(2)}




@dataclass
class ExperimentsConfig:
    """Online experiments (recfunnel.experiments, L7, L8): arms, holdout, simulated users."""
    name: str = "blend-vs-click"          # salts the assignment: a new name reshuffles users
    # Arms besides the holdout, any names: the analysis tests the second arm (the treatment)
    # against the first (the control). `blend`: the heavy ranker's objective weights for the
    # arm (None: the served version's funnel.blend). Shares and holdout_share sum to 1.
    arms: list = field(default_factory=lambda: [
        {"name": "control", "share": 0.49, "blend": {"click": 1.0}},
        {"name": "treatment", "share": 0.49, "blend": None}])
    holdout_share: float = 0.02           # stays on the model served when the experiment began
    primary_metric: str = "watch_seconds"  # per user: one of recfunnel.names.OUTCOMES
    min_detectable_lift: float = 0.05     # the relative effect the test should be powered for
    alpha: float = 0.05
    power: float = 0.8
    srm_threshold: float = 0.001          # SRM p-value below this blocks the decision
    sim_users: int = 0                    # simulated users (0: every known user)
    sim_days: int = 3                     # sessions per user, one a day after the data ends
    sim_k: int = 10                       # list length shown per session
    aa_runs: int = 2000                   # simulated A/A tests for the false-positive rate
    feedback_rounds: int = 3              # retrain-on-own-logs rounds (recfunnel experiment loop)
    # The loop's holdout: large enough to compare with the treated users every round (the
    # A/B test's 2 % of 3,000 users is 60, too few to see a drift of a few percent)
    feedback_holdout_share: float = 0.2
    seed: int = 0

    CHECKS: ClassVar[dict] = {
        "primary_metric": OneOf(OUTCOMES),
        **dict.fromkeys(("holdout_share", "feedback_holdout_share"), Range(0, 1, open_high=True)),
        **dict.fromkeys(("alpha", "power", "srm_threshold"),
                        Range(0, 1, open_low=True, open_high=True)),
        "min_detectable_lift": POSITIVE, "sim_users": NON_NEGATIVE,
        **dict.fromkeys(("sim_days", "sim_k", "aa_runs"), AT_LEAST_ONE),
        "feedback_rounds": NON_NEGATIVE}


@dataclass
class RetrainConfig:
    """The resilient retraining job (`recfunnel retrain`, L7.3): the pipeline's steps into a new
    run, each retried and timed out, a quality gate, then promotion into the served repository."""
    retries: int = 2                      # extra attempts per step after a failure
    backoff_s: float = 60.0               # wait before the first retry; doubles each time ...
    backoff_max_s: float = 900.0          # ... up to this
    step_timeout_s: dict = field(default_factory=lambda: {   # a step still running is killed
        "data": 1800, "dataset": 3600, "models": 7200, "evaluation": 1800})
    kill_grace_s: float = 30.0            # SIGTERM to a timed-out step, SIGKILL this much later
    # Higher is better: `<list>.<metric>` of the evaluation's overall metrics, {k}: models.eval_k
    gate_metric: str = "funnel.ndcg@{k}"
    gate_max_drop: float = 0.05           # relative drop below the served version that still
                                          # promotes (0.05: at least 95 % of its value)
    repo: str | None = None               # the served repository (None: runs/<run>/triton_repo)
    alert_webhook: str | None = None      # POSTed a JSON alert when the job fails for good
                                          # or the gate refuses (Slack-style {"text": ...})
    alert_timeout_s: float = 10.0

    CHECKS: ClassVar[dict] = {
        **dict.fromkeys(("retries", "backoff_s", "backoff_max_s", "kill_grace_s"), NON_NEGATIVE),
        "gate_max_drop": SHARE, "alert_timeout_s": POSITIVE}


@dataclass
class RunConfig:
    name: str | None = None               # None: <source>-<UTC time>
    runs_dir: str = "runs"
    cache_dir: str | None = None          # None: default_cache_dir()


def default_cache_dir() -> Path:
    """Where downloads and generated data sets are kept: $RECFUNNEL_CACHE or ~/.cache/recfunnel."""
    return Path(os.environ.get("RECFUNNEL_CACHE") or Path.home() / ".cache" / "recfunnel")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    funnel: FunnelConfig = field(default_factory=FunnelConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Settings that moved when the funnel became declared (config `funnel:`)
MOVED = {("models", "candidates_k"): "funnel.candidates_k", ("models", "index"): "funnel.index",
         ("models", "blend_weights"): "funnel.blend",
         ("models", "light_ranker_keep"): "funnel.rankers (the light_ranker's keep)",
         ("models", "heavy_ranker_cross_depth"): "models.ranker_cross_depth"}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    moved = [f"{where}.{k} moved to {MOVED[(where, k)]}" for k in unknown if (where, k) in MOVED]
    if moved:
        raise ConfigError(f"setting {moved[0]}; rename it in your config")
    if unknown:
        raise ConfigError(f"unknown setting {where + '.' if where else ''}{unknown[0]}; "
                          f"known settings here: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, path)
        else:
            kwargs[name] = _check_type(value, hint, path)
    return cls(**kwargs)


def _check_type(value, hint, path):
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (str, bool) and isinstance(value, t):
            return value
        if (t is list or typing.get_origin(t) is list) and isinstance(value, (list, tuple)):
            return list(value)
        if (t is dict or typing.get_origin(t) is dict) and isinstance(value, dict):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"setting {path}: expected {names}, got {type(value).__name__} {value!r}")


_UnionType = type(int | None)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """The defaults, updated by the YAML file at `path` and then by `overrides` (nested dicts)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    if overrides:
        values = merge(values, overrides)
    cfg = _build(Config, values, "")
    check_values(cfg)
    cfg.given = frozenset(_given_paths(Config, values, ""))
    return cfg


def check_values(section, where: str = "") -> None:
    """Every setting of `section` (and the sections in it) against its section's CHECKS: a
    ConfigError naming the key, the value and what is allowed. None (a setting's "off" or
    "automatic") passes; a list setting is checked element by element."""
    checks = getattr(type(section), "CHECKS", {})
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            check_values(value, path)
            continue
        check = checks.get(f.name)
        if check is None or value is None:
            continue
        for element in value if isinstance(value, list) else [value]:
            problem = check.problem(path, element)
            if problem:
                listed = f" (the list: {value!r})" if isinstance(value, list) else ""
                raise ConfigError(problem + listed)


def _given_paths(cls, values: dict, where: str):
    """The dotted paths of the settings a file or override gave (not left to their default)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            yield from _given_paths(hints[name], value, path)
        else:
            yield path


def is_given(cfg: Config, path: str) -> bool:
    """Whether the user set `path` (e.g. "dataset.unsafe_filters") to something other than its
    default: a default that cannot run on the data is skipped with a warning, a given setting
    is an error. A value equal to the default counts as the default, so a run's resolved
    config.yaml (every setting written out) behaves as the settings it was made from."""
    if path not in getattr(cfg, "given", frozenset()):
        return False
    value, default = cfg, Config()
    for part in path.split("."):
        value, default = getattr(value, part), getattr(default, part)
    return value != default


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def parse_override(text: str) -> dict:
    """`data.synthetic.n_events=1000` -> {'data': {'synthetic': {'n_events': 1000}}} (YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value
