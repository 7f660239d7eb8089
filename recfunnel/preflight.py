"""Before any step runs: the settings a user gave are checked against the data they will meet.

A default that cannot run on the data (the title classifier without flagged titles) is skipped
by its step with a warning in the summary and the report. A setting the user gave (in the config
file or with --set) that cannot run stops the run here: a ConfigError naming the setting
(exit 2), in seconds rather than after minutes of work.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from recfunnel.models.funnel import FunnelSettings
from recfunnel.config import Config, ConfigError, default_cache_dir, is_given
from recfunnel.data import files, movielens, schema, sources
from recfunnel.data.validation import validate_table
from recfunnel.experiments.assignment import Experiment, ExperimentError


def check(cfg: Config, run_dir: Path, steps: tuple[str, ...]) -> None:
    """Raises ConfigError for the first given setting that the data of this run cannot honour."""
    check_funnel(cfg)
    if "data" in steps and cfg.data.source == "parquet" and cfg.data.path:
        check_own_files(cfg)
    if "dataset" in steps:
        check_unsafe_filters(cfg)
        items = catalogue_for_dataset(cfg, Path(run_dir), steps)
        if items is not None:
            check_dataset_settings(cfg, items)
    if "experiments" in steps:
        check_experiment(cfg)


def check_experiment(cfg: Config) -> None:
    """experiments.arms and holdout_share make a split (Experiment's own checks) with a control
    and a treatment: the first two arms, which the analysis compares."""
    try:
        experiment = Experiment.from_config(cfg.experiments)
    except (ExperimentError, TypeError) as err:
        raise ConfigError(f"setting experiments.arms: {err}") from None
    if len(experiment.arms) < 2:
        raise ConfigError(f"setting experiments.arms: {[a.name for a in experiment.arms]} has one "
                          "arm; the analysis compares the first (the control) with the second")


def check_funnel(cfg: Config) -> None:
    """The declared funnel (config `funnel:`): every name registered, shares and cuts valid,
    and the last ranker's objectives covered by the blend."""
    settings = FunnelSettings.from_config(cfg)
    unknown = sorted(set(settings.blend) - set(cfg.models.objectives))
    if settings.rankers and unknown:
        raise ConfigError(f"funnel.blend weighs {unknown}, which are not among the rankers' "
                          f"objectives (models.objectives: {', '.join(cfg.models.objectives)})")


def check_own_files(cfg: Config) -> None:
    """data.columns and data.rating_signals against the headers of your files."""
    found = {name: path for name, path in sources.own_tables(cfg.data).items() if path}
    headers = {name: files.header(path) for name, path in found.items()}
    if is_given(cfg, "data.columns"):
        for name in cfg.data.columns:
            if not any(name in header for header in headers.values()):
                have = "; ".join(f"{t}: {', '.join(map(str, h))}" for t, h in headers.items())
                raise ConfigError(f"setting data.columns maps {name!r}, a column none of your "
                                  f"files has ({have})")
    if cfg.data.rating_signals and is_given(cfg, "data.rating_signals") and "events" in headers:
        renamed = [cfg.data.columns.get(c, c) for c in headers["events"]]
        if cfg.data.rating_column not in renamed:
            raise ConfigError(f"setting data.rating_signals reads the rating column "
                              f"{cfg.data.rating_column!r} (data.rating_column), which the events "
                              f"do not have; they have: {', '.join(renamed)}")


def catalogue_for_dataset(cfg: Config, run_dir: Path, steps) -> pd.DataFrame | None:
    """The items table the dataset step will see, when it can be known now (None: it cannot,
    or it is the synthetic world's, which has titles and flags)."""
    if "data" not in steps:
        path = run_dir / "data" / "items.parquet"
        return pd.read_parquet(path) if path.is_file() else None
    if cfg.data.source == "movielens100k":
        cache = Path(cfg.run.cache_dir) if cfg.run.cache_dir else default_cache_dir()
        return movielens.load(cfg.data.path, cache_dir=cache / "wheels").items
    if cfg.data.source != "parquet" or not cfg.data.path:
        return None
    path = sources.own_tables(cfg.data)["items"]
    frame = (sources.ImportSettings.from_config(cfg.data).apply(files.read_table(path), "items",
                                                                path.name)
             if path is not None else pd.DataFrame({"item_id": pd.Series(dtype="int64")}))
    return validate_table(frame, schema.ITEMS, cfg.validation, source="items").kept


def check_unsafe_filters(cfg: Config) -> None:
    """dataset.unsafe_filters name registered filters with the parameters they take."""
    # Imported here: the workflows package loads NVTabular, which only the dataset step needs.
    from recfunnel.workflows.unsafe import build_filters

    try:
        build_filters(cfg.dataset.unsafe_filters)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"setting dataset.unsafe_filters: {err}") from None


def check_dataset_settings(cfg: Config, items: pd.DataFrame) -> None:
    """dataset.unsafe_filters and dataset.duplicate_title_similarity against the catalogue."""
    from recfunnel.workflows.unsafe import runnable_filters

    if is_given(cfg, "dataset.unsafe_filters"):
        _, skipped = runnable_filters(cfg.dataset.unsafe_filters, items)
        if skipped:
            spec, why = skipped[0]
            raise ConfigError(f"setting dataset.unsafe_filters: filter {spec['kind']!r} cannot "
                              f"run on these items: {why}; remove it (left unset, the default "
                              "filters skip what cannot run, with a warning)")
    no_titles = "title" not in items or items["title"].isna().all()
    if is_given(cfg, "dataset.duplicate_title_similarity") and no_titles:
        raise ConfigError("setting dataset.duplicate_title_similarity: the items have no titles, "
                          "so duplicate detection cannot run; give items a title column "
                          "(data.columns) or remove the setting")
