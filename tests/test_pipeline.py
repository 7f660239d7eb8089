"""The main job from the command line, as `make demo` and a batch scheduler run it."""
import json
import os
import subprocess
import sys

from conftest import REPO

SMALL = ["--set", "data.synthetic.n_users=300", "--set", "data.synthetic.n_items=200",
         "--set", "data.synthetic.n_events=12000", "--set", "data.synthetic.n_days=12",
         "--set", "dataset.active_min_events=3", "--set", "dataset.window_days=6",
         # 200 items hold too few flagged titles to train the title classifier on
         "--set", "dataset.unsafe_filters=[{kind: flag}]",
         "--set", "models.retrieval_epochs=1", "--set", "models.mf_epochs=1",
         "--set", "models.ranker_epochs=1"]


def recfunnel(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recfunnel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_pipeline_run_writes_summary_and_report(tmp_path):
    done = recfunnel("pipeline", "run", "-c", str(REPO / "configs" / "default.yaml"), "-q",
                     "--set", f"run.runs_dir={tmp_path / 'runs'}",
                     "--set", f"run.cache_dir={tmp_path / 'cache'}", *SMALL, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "demo"
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]
    assert data["source"] == "synthetic"
    assert data["events"] + data["quarantined_rows"] == 12000
    assert data["users"] <= 300 and data["items"] <= 200
    assert set(data["quarantined_by_reason"]) <= {"null_user_id", "negative_watch_seconds",
                                                  "watch_exceeds_duration", "timestamp_out_of_range",
                                                  "item_not_in_catalogue"}
    page = (run / "report.html").read_text()
    assert '<section id="data">' in page
    assert ("data:image/png;base64" in page) == (data["quarantined_rows"] > 0)
    assert (run / "config.yaml").is_file() and (run / "data" / "events").is_dir()
    assert not (tmp_path / "categories").exists()
    dataset = summary["dataset"]
    names = [s["name"] for s in dataset["steps"]]
    assert names == ["canonical_items", "unsafe_content", "freshness_window", "active_users",
                     "examples", "negative_sampling"]
    for before, after in zip(dataset["steps"], dataset["steps"][1:]):
        assert after["rows_before"] == before["rows_after"]
    assert dataset["steps"][0]["rows_before"] == data["events"]
    assert all(dataset["splits"][s] > 0 for s in ("train", "valid", "test"))
    assert '<section id="dataset">' in page
    for split in ("train", "valid", "test"):
        assert list((run / "dataset" / split).glob("*.parquet"))
    assert (run / "dataset" / "workflow").is_dir()
    models = summary["models"]
    assert set(models["models"]) == {"popularity", "two_tower", "mf", "light_ranker",
                                     "heavy_ranker"}
    assert (run / models["path"] / "heavy_ranker" / "manifest.json").is_file()
    assert '<section id="models">' in page
    truth = {r["ranking"] for r in models["truth"]["rankings"]}
    assert {"click only", "watch_75 (naive)", "watch duration-aware"} <= truth
    assert set(models["truth"]["objectives"]) == {"click", "like", "share", "watch_75",
                                                  "watch_duration_aware"}
    assert models["features"]["users"] > 0 and models["features"]["items"] > 0
    # evaluation: every list scored on the same users, the funnel's cuts, bias, slices, truth
    evaluation = summary["evaluation"]
    assert set(evaluation["models"]) == {"two_tower", "mf", "popularity", "funnel"}
    assert evaluation["users"] == evaluation["models"]["funnel"]["users_scored"]
    stages = evaluation["funnel"]
    kept = [stages[s]["kept"] for s in ("candidates", "light ranker", "heavy ranker + blend")]
    assert kept == sorted(kept, reverse=True) and kept[-1] == evaluation["k"]
    assert set(evaluation["bias"]) == {"training_data", "two_tower", "mf", "popularity", "funnel"}
    assert evaluation["bias_flags"]["popularity"]["gini"]
    assert set(evaluation["truth"]) == {"two_tower", "mf", "popularity", "funnel"}
    # each ranking stage against its input's own order, by the logs and by the truth
    assert [s["stage"] for s in evaluation["stages"]] == ["light ranker", "heavy ranker"]
    assert all(isinstance(s["worse"], bool) and s["truth"] is not None
               for s in evaluation["stages"])
    assert set(evaluation["exposure"]["lists"]) >= {"two_tower", "funnel"}
    assert "Does each stage improve on its input?" in page
    assert models["features_offline"]["as_of"] == dataset["cutoffs"]["valid_end"] + "+00:00" \
        or models["features_offline"]["as_of"].startswith(dataset["cutoffs"]["valid_end"][:10])
    rows = models["models"]["heavy_ranker"]["training_rows"]
    assert rows["logged"] > 0 and "cascade" in rows          # the mix is stated either way
    metrics = json.loads((run / evaluation["metrics_path"]).read_text())
    assert {r["slice"] for r in metrics["slices"]} >= {"overall", "age_band", "gender",
                                                       "location", "activity"}
    assert '<section id="evaluation">' in page and "Popularity bias" in page
    # serving: the exported funnel in a real tritonserver answered every request
    serving = summary["serving"]
    assert serving["errors"] == 0 and serving["requests"] > 2
    assert serving["paths"].get("fallback") == 2 and serving["paths"].get("model", 0) > 0
    assert serving["version"] == models["version"]
    assert '<section id="serving">' in page
    # experiments: a simulated A/B test through a real server, decided with its interval
    experiments = summary["experiments"]
    assert experiments["outcome"] in ("ship treatment", "keep control",
                                      "no decision: not significant")
    low, high = experiments["lift_ci"]
    assert low <= experiments["lift"] <= high
    assert sum(experiments["arms"].values()) == 300           # every user of the ground truth
    assert experiments["served"]["model_versions"] == [experiments["served"]["triton_version"]]
    rows = {r["list"] for r in experiments["offline_vs_online"]["rows"]}
    assert rows == {"popularity", "mf", "two_tower", "light ranker cut", "funnel"}
    assert '<section id="experiments">' in page and "Offline vs online" in page
    assert not (run / "triton_repo" / "experiment.json").exists()


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
