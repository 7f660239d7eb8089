"""The main job from the command line, as `make demo` and a batch scheduler run it.

The session's small run (tests/conftest.py: `recfunnel pipeline run` with every step on the SMALL
settings) is read here section by section; the error and separate-step cases run their own.
"""
import json

import pytest

from conftest import REPO, SMALL, recfunnel

QUARANTINE_REASONS = {"null_user_id", "negative_watch_seconds", "watch_exceeds_duration",
                      "timestamp_out_of_range", "item_not_in_catalogue"}


@pytest.fixture(scope="module")
def summary(small_run) -> dict:
    return json.loads((small_run.dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def page(small_run) -> str:
    return (small_run.dir / "report.html").read_text()


def test_pipeline_run_writes_its_config_and_nothing_outside_the_run(small_run):
    assert small_run.done.returncode == 0, small_run.done.stderr
    assert (small_run.dir / "config.yaml").is_file()
    assert (small_run.dir / "data" / "events").is_dir()
    assert not (small_run.dir.parents[1] / "categories").exists()     # the command's cwd


def test_the_demo_run_prints_only_its_own_lines(small_run):
    """`make demo`'s command: no start-up notes of TensorFlow, absl or Merlin on either stream,
    only recfunnel's lines (progress bars are off with -q)."""
    ours = ("recfunnel: warning: ", "run ", "summary: ", "report: ", "data: ", "dataset: ")
    theirs = [line for line in small_run.done.stderr.splitlines()
              if line.strip() and not line.startswith(ours)]
    assert theirs == [], "\n".join(theirs[:20])
    notes = ("tensorflow", "absl", "merlin", "cpu mode", "pytorch", "cuda", "oneDNN", "W0000")
    assert [line for line in small_run.done.stdout.splitlines()
            if any(n.lower() in line.lower() for n in notes)] == []


@pytest.mark.parametrize("section", ["data", "dataset", "models", "evaluation", "serving",
                                     "experiments"])
def test_the_report_has_a_section_per_step(page, section):
    assert f'<section id="{section}">' in page


def test_data_section_accounts_for_every_generated_event(summary):
    data = summary["data"]
    assert data["source"] == "synthetic"
    assert data["events"] + data["quarantined_rows"] == 12000
    assert data["users"] <= 300 and data["items"] <= 200
    assert set(data["quarantined_by_reason"]) <= QUARANTINE_REASONS


def test_the_report_plots_the_quarantine_only_when_there_is_one(summary, page):
    assert ("data:image/png;base64" in page) == (summary["data"]["quarantined_rows"] > 0)


def test_dataset_steps_each_start_from_the_rows_the_previous_kept(summary):
    dataset = summary["dataset"]
    names = [s["name"] for s in dataset["steps"]]
    assert names == ["canonical_items", "unsafe_content", "freshness_window", "active_users",
                     "examples", "negative_sampling"]
    for before, after in zip(dataset["steps"], dataset["steps"][1:]):
        assert after["rows_before"] == before["rows_after"]
    assert dataset["steps"][0]["rows_before"] == summary["data"]["events"]


def test_dataset_writes_three_non_empty_splits_and_its_workflow(small_run, summary):
    assert all(summary["dataset"]["splits"][s] > 0 for s in ("train", "valid", "test"))
    for split in ("train", "valid", "test"):
        assert list((small_run.dir / "dataset" / split).glob("*.parquet"))
    assert (small_run.dir / "dataset" / "workflow").is_dir()


def test_models_section_names_every_model_and_writes_their_manifests(small_run, summary):
    models = summary["models"]
    assert set(models["models"]) == {"popularity", "two_tower", "mf", "ease", "light_ranker",
                                     "heavy_ranker"}
    for folder in ("popularity", "two_tower_query", "two_tower_items", "mf_query", "mf_items",
                   "ease", "light_ranker", "heavy_ranker"):
        assert (small_run.dir / models["path"] / folder / "manifest.json").is_file(), folder
    assert models["features"]["users"] > 0 and models["features"]["items"] > 0


def test_models_are_compared_with_the_truth_per_objective_and_ranking(summary):
    truth = summary["models"]["truth"]
    assert {"click only", "watch_75 (naive)", "watch duration-aware"} <= \
        {r["ranking"] for r in truth["rankings"]}
    assert set(truth["objectives"]) == {"click", "like", "share", "watch_75",
                                        "watch_duration_aware"}


def test_offline_features_are_as_of_the_end_of_validation(summary):
    as_of = summary["models"]["features_offline"]["as_of"]
    valid_end = summary["dataset"]["cutoffs"]["valid_end"]
    assert as_of == valid_end + "+00:00" or as_of.startswith(valid_end[:10])


def test_the_heavy_rankers_training_rows_state_their_mix(summary):
    rows = summary["models"]["models"]["heavy_ranker"]["training_rows"]
    assert rows["logged"] > 0 and "cascade" in rows          # the mix is stated either way


def test_evaluation_scores_every_list_on_the_same_users(summary):
    evaluation = summary["evaluation"]
    assert set(evaluation["models"]) == {"two_tower", "mf", "ease", "popularity", "funnel"}
    assert evaluation["users"] == evaluation["models"]["funnel"]["users_scored"]
    assert set(evaluation["truth"]) == {"two_tower", "mf", "ease", "popularity", "funnel"}


def test_each_funnel_stage_keeps_fewer_items_down_to_k(summary):
    evaluation = summary["evaluation"]
    stages = evaluation["funnel"]
    kept = [stages[s]["kept"] for s in ("candidates", "light ranker", "heavy ranker + blend")]
    assert kept == sorted(kept, reverse=True) and kept[-1] == evaluation["k"]


def test_evaluation_measures_popularity_bias_and_exposure(summary, page):
    evaluation = summary["evaluation"]
    assert set(evaluation["bias"]) == {"training_data", "two_tower", "mf", "ease", "popularity",
                                       "funnel"}
    assert evaluation["bias_flags"]["popularity"]["gini"]
    assert set(evaluation["exposure"]["lists"]) >= {"two_tower", "funnel"}
    assert "Popularity bias" in page


def test_each_ranking_stage_is_compared_with_its_input_by_logs_and_truth(summary, page):
    stages = summary["evaluation"]["stages"]
    assert [s["stage"] for s in stages] == ["light ranker", "heavy ranker"]
    assert all(isinstance(s["worse"], bool) and s["truth"] is not None for s in stages)
    assert "Does each stage improve on its input?" in page


def test_evaluation_writes_metrics_per_user_slice(small_run, summary):
    metrics = json.loads((small_run.dir / summary["evaluation"]["metrics_path"]).read_text())
    assert {r["slice"] for r in metrics["slices"]} >= {"overall", "age_band", "gender",
                                                       "location", "activity"}


def test_the_served_funnel_answered_every_request_of_the_serving_step(summary):
    serving = summary["serving"]
    assert serving["errors"] == 0 and serving["requests"] > 2
    assert serving["paths"].get("fallback") == 2 and serving["paths"].get("model", 0) > 0
    assert serving["version"] == summary["models"]["version"]


def test_the_ab_test_is_decided_with_its_interval_on_every_user(summary, page):
    experiments = summary["experiments"]
    assert experiments["outcome"] in ("ship treatment", "keep control",
                                      "no decision: not significant")
    low, high = experiments["lift_ci"]
    assert low <= experiments["lift"] <= high
    assert sum(experiments["arms"].values()) == 300           # every user of the ground truth
    assert experiments["served"]["model_versions"] == [experiments["served"]["triton_version"]]
    assert "Offline vs online" in page


def test_offline_vs_online_compares_every_list_and_the_repository_is_left_clean(small_run,
                                                                               summary):
    rows = {r["list"] for r in summary["experiments"]["offline_vs_online"]["rows"]}
    assert rows == {"popularity", "mf", "two_tower", "light ranker cut", "funnel"}
    assert not (small_run.dir / "triton_repo" / "experiment.json").exists()


def test_bad_config_exits_2_with_a_message(tmp_path):
    done = recfunnel("pipeline", "run", "--set", "data.source=csv", "-q",
                     "--set", f"run.runs_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown data.source 'csv'" in done.stderr
    done = recfunnel("pipeline", "run", "--set", "data.synthetic.n_event=3", cwd=tmp_path)
    assert done.returncode == 2 and "unknown setting data.synthetic.n_event" in done.stderr


def test_missing_user_file_exits_2(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "events.csv").write_text("user_id,item_id\n1,2\n")
    done = recfunnel("pipeline", "run", "-q", "--set", "data.source=parquet",
                     "--set", f"data.path={tmp_path / 'in'}", "--set", f"run.runs_dir={tmp_path}",
                     cwd=tmp_path)
    assert done.returncode == 2
    assert "missing required column(s) 'timestamp' (UTC timestamp), 'click'" in done.stderr


def test_schema_command_documents_every_column(tmp_path):
    done = recfunnel("schema", cwd=tmp_path)
    assert done.returncode == 0
    for column in ("user_id", "watch_seconds", "duration_seconds", "location", "unsafe"):
        assert f"`{column}`" in done.stdout


def test_steps_as_separate_jobs_share_one_summary(tmp_path):
    base = ["-c", str(REPO / "configs" / "default.yaml"), "-q", "--set",
            f"run.runs_dir={tmp_path / 'runs'}", "--set", f"run.cache_dir={tmp_path / 'cache'}",
            *SMALL]
    assert recfunnel("pipeline", "run", "--steps", "data", *base, cwd=tmp_path).returncode == 0
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert "data" in summary and "dataset" not in summary
    done = recfunnel("pipeline", "run", "--steps", "dataset", *base, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "runs" / "demo" / "summary.json").read_text())
    assert {"data", "dataset"} <= set(summary) and summary["run"]["steps"] == ["dataset"]
    assert set(summary["run"]["timings_s"]) == {"data", "dataset"}


def test_dataset_step_without_data_exits_2(tmp_path):
    done = recfunnel("pipeline", "run", "--steps", "dataset", "-q", "--set",
                     f"run.runs_dir={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2 and "has no validated events" in done.stderr
