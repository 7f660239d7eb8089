"""Shared fixtures: small, fast versions of the real data sources."""
import os
from pathlib import Path

import pytest

from recfunnel.config import SyntheticConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_synthetic() -> SyntheticConfig:
    return SyntheticConfig(seed=7, n_users=400, n_items=300, n_events=20_000, n_days=10,
                           n_creators=40, max_events_per_chunk=1_500)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The user's cache (holds the downloaded recbole wheel); tests never write elsewhere in it."""
    return Path(os.environ.get("RECFUNNEL_CACHE") or Path.home() / ".cache" / "recfunnel")
