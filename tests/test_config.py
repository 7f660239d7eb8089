"""The typed config: defaults work, typos and wrong types are refused with the key's path."""
import pytest

from recfunnel.config import ConfigError, load_config, parse_override
from conftest import REPO


def test_shipped_configs_load():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.data.source == "synthetic" and cfg.run.name == "demo"
    assert load_config(REPO / "configs" / "movielens100k.yaml").data.source == "movielens100k"


def test_unknown_key_is_named_with_its_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  synthetic:\n    n_event: 5\n")
    with pytest.raises(ConfigError, match=r"unknown setting data\.synthetic\.n_event; known .*n_events"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  synthetic:\n    n_events: lots\n")
    with pytest.raises(ConfigError, match=r"data\.synthetic\.n_events: expected int, got str 'lots'"):
        load_config(path)


def test_overrides_are_yaml_values_on_dotted_paths():
    cfg = load_config(None, parse_override("data.synthetic.n_events=1000"))
    assert cfg.data.synthetic.n_events == 1000
    cfg = load_config(None, parse_override("validation.max_timestamp=null"))
    assert cfg.validation.max_timestamp is None
    assert load_config(None, parse_override("validation.max_watch_ratio=2")).validation.max_watch_ratio == 2.0
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("data.source")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml does not exist"):
        load_config(tmp_path / "does-not-exist.yaml")
