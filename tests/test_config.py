"""The typed config: defaults work; typos, wrong types and values outside a setting's choices or
range are refused with the key's path when it loads."""
import dataclasses
import subprocess
import sys
import time

import pytest

from recfunnel.config import Config, ConfigError, check_values, load_config, merge, parse_override
from recfunnel.data.validation import DataSourceError, SchemaError
from recfunnel.errors import RecfunnelError
from recfunnel.experiments.assignment import ExperimentError
from recfunnel.serving.client import ServingError
from conftest import REPO


def test_shipped_configs_load():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.data.source == "synthetic" and cfg.run.name == "demo"
    assert load_config(REPO / "configs" / "movielens100k.yaml").data.source == "movielens100k"
    big = load_config(REPO / "configs" / "catalogue_1m.yaml")
    assert big.data.synthetic.n_items == 1_000_000
    # EASE holds items^2 floats: above models.ease_max_items the funnel must not name it
    assert "ease" not in [s["name"] for s in big.funnel.sources]
    scale = load_config(REPO / "configs" / "scale.yaml")     # benchmarks/bench_scale.py
    assert scale.data.synthetic.n_events == 300_000 and scale.models.retrieval_epochs == 3


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


@pytest.mark.parametrize("override,message", [
    ("dataset.split=tme", r"^unknown dataset\.split 'tme'; expected one of time, random, "
                          r"random_per_user$"),
    ("dataset.negative_sampling=inverse", r"^unknown dataset\.negative_sampling 'inverse'; "
                                          "expected one of popularity, uniform$"),
    ("compute.cluster=lan", r"^unknown compute\.cluster 'lan'; expected one of none, local or a "
                            "scheduler address"),
    ("models.objectives=[click,wtch]", r"^unknown models\.objectives 'wtch'; expected one of "
                                       r"click, like, .* \(the list: \['click', 'wtch'\]\)$"),
    ("models.retrieval_positive=view", r"^unknown models\.retrieval_positive 'view'; .*watch_75"),
    ("data.source=kaggle", r"^unknown data\.source 'kaggle'; expected one of synthetic, "
                           "movielens100k, parquet$"),
    ("data.timestamp_format=unix", r"^unknown data\.timestamp_format 'unix'; .* or a strftime "
                                   "pattern"),
    ("data.synthetic.clickbait_share=1.5", r"^setting data\.synthetic\.clickbait_share: 1\.5 is "
                                           r"out of range; expected a value in \[0, 1\]$"),
    ("models.ranker_epochs=0", r"^setting models\.ranker_epochs: 0 is out of range; expected "
                               ">= 1$"),
    ("experiments.alpha=0", r"^setting experiments\.alpha: 0\.0 is out of range; expected a "
                            r"value in \(0, 1\)$"),
    ("models.optimizer=sgd", r"^unknown models\.optimizer 'sgd'; expected one of adam, "
                             "lazy_adam$"),
    ("serving.versions_loaded=1", r"^setting serving\.versions_loaded: 1 is out of range; "
                                  "expected >= 2$"),
])
def test_a_value_outside_its_choices_or_range_names_key_value_and_the_allowed(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, parse_override(override))


def test_strftime_patterns_addresses_and_none_pass_the_checks():
    cfg = load_config(None, merge(merge(parse_override('data.timestamp_format="%d/%m/%Y"'),
                                        parse_override("compute.cluster=tcp://10.0.0.1:8786")),
                                  parse_override("dataset.window_days=null")))
    assert cfg.data.timestamp_format == "%d/%m/%Y" and cfg.dataset.window_days is None


def test_every_default_passes_its_section_checks():
    check_values(Config())
    for section in dataclasses.fields(Config):
        checks = getattr(section.default_factory, "CHECKS", {})
        known = {f.name for f in dataclasses.fields(section.default_factory)}
        assert set(checks) <= known, f"{section.name}: checks of unknown settings"


def test_config_errors_belong_to_the_one_error_family():
    assert issubclass(ConfigError, RecfunnelError) and issubclass(ConfigError, ValueError)
    for error in (SchemaError, DataSourceError, ServingError, ExperimentError):
        assert issubclass(error, RecfunnelError)


def test_the_serving_config_carries_the_exported_repository_settings():
    cfg = load_config(None, parse_override("serving.max_users=128"))
    assert (cfg.serving.max_users, cfg.serving.keep_versions, cfg.serving.versions_loaded) == \
        (128, 2, 2)


def test_a_bad_setting_exits_2_with_one_line_before_any_step_runs(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"run:\n  runs_dir: {tmp_path / 'runs'}\ndataset:\n  split: tme\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recfunnel", "pipeline", "run", "--config",
                           str(bad)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "recfunnel: error: unknown dataset.split 'tme'; expected one of time, random, "
        "random_per_user"]
    assert not (tmp_path / "runs").exists() and time.perf_counter() - started < 30
