"""The resilient retraining job (L7.3): retries with backoff, timeouts that kill a hung step's
whole process group, the quality gate, atomic promotion, the webhook alert, exit codes.

One real `recfunnel retrain` on the SMALL settings (the pipeline's steps as child processes,
first deployment: promoted) is checked on its own. The failure tests run the job with injected
steps (small real scripts: fails twice then succeeds, hangs, always fails) against a copy of the
session's small repository (tests/conftest.py: `small_repo`, Triton version 1 of `small_run`)
and a local HTTP receiver for the alert; the gate tests use copies of the small run whose
recorded evaluation metric is lowered or raised.
"""
import hashlib
import json
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, SMALL, copy_repo, copy_run, recfunnel
from test_triton_server import live_processes_in_group, wait_for

from recfunnel.config import ConfigError, load_config
from recfunnel.retrain import (GATE_REFUSED, PIPELINE_STEPS, PROMOTED, STEP_FAILED, QualityGate,
                               RetrainJob, RetryPolicy, Step, gate_decision, retrain_job)
from recfunnel.serving.export import VERSIONS_FILE, models_in, versions_in

METRIC = "funnel.ndcg@10"


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """`recfunnel retrain` with the real steps into an empty runs folder: the served run
    `served` gets its first version, trained in the new run <served>-retrain-<time>."""
    root = tmp_path_factory.mktemp("retrain")
    done = recfunnel("retrain", "-c", str(REPO / "configs" / "default.yaml"), *SMALL,
                     "--set", f"run.runs_dir={root / 'runs'}",
                     "--set", f"run.cache_dir={root / 'cache'}",
                     "--set", "retrain.backoff_s=1", "--run-name", "served", cwd=root,
                     timeout=1200)
    jobs = list((root / "runs" / "served" / "retrain").glob("*/job.json"))
    record = json.loads(jobs[0].read_text()) if jobs else {}
    return SimpleNamespace(done=done, root=root, record=record, job_json=jobs[0] if jobs else None,
                           repo=root / "runs" / "served" / "triton_repo",
                           candidate=Path(record.get("candidate_run", root / "missing")))


@pytest.fixture
def served(small_repo, tmp_path):
    """A copy of the small repository (version 1, the small run's) for one test to run a job
    against."""
    return copy_repo(small_repo, tmp_path / "served" / "triton_repo")


@pytest.fixture
def receiver():
    """A local webhook: every POSTed JSON body, in order."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"],
                             "payload": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}/hooks/retrain",
                          received=received)
    server.shutdown()
    server.server_close()
    thread.join()


def snapshot(repo: Path) -> dict:
    """Every folder and file of a repository: path -> sha256 of the bytes (None: a folder)."""
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else None for p in sorted(repo.rglob("*"))}


def version_files(repo: Path, n: int) -> dict:
    return {k: v for k, v in snapshot(repo).items() if k.split("/")[1:2] == [str(n)]}


def python_step(name: str, code: str, *args, timeout_s: float = 60) -> Step:
    return Step(name, [sys.executable, "-c", code, *map(str, args)], timeout_s)


def injected_job(steps, tmp_path, repo, candidate=None, webhook=None, retries=2, out=None):
    """A job with tiny waits: backoff 0.01 s doubling up to 0.015 s, SIGKILL 0.5 s after
    SIGTERM."""
    return RetrainJob(steps, candidate or tmp_path / "runs" / "never-made", repo,
                      tmp_path / "job", RetryPolicy(retries, 0.01, 0.015, 0.5),
                      QualityGate("funnel.ndcg@{k}", 0.05, tmp_path / "runs"), webhook,
                      alert_timeout_s=5, out=out)


def candidate_copy(small_run, tmp_path, name: str, scale: float) -> Path:
    """The small run copied as a new candidate whose recorded gate metric is `scale` times
    the real one (the gate reads the recorded metric, so this makes a better or worse run)."""
    run = copy_run(small_run, tmp_path / "runs" / name)
    summary = json.loads((run / "summary.json").read_text())
    summary["evaluation"]["models"]["funnel"]["ndcg@10"] *= scale
    (run / "summary.json").write_text(json.dumps(summary))
    return run


FLAKY = """
import sys
from pathlib import Path
counter = Path(sys.argv[1])
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
if n < 2:
    sys.exit(f"attempt {n + 1}: no capacity on the training cluster")
"""
HANGS = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)          # deaf to SIGTERM: needs the SIGKILL
child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
with open(sys.argv[1], "a") as f:
    f.write(f"{os.getpid()} {child.pid}\\n")
print("waiting for a GPU", file=sys.stderr, flush=True)
time.sleep(3600)
"""
FAILS = "raise RuntimeError('no GPU available for training')"
TOUCH = "import sys; open(sys.argv[1], 'w').close()"


# ---- the real job through the CLI --------------------------------------------------------------
@pytest.mark.training
def test_retrain_command_runs_the_pipeline_steps_and_promotes_a_first_version(retrained):
    done = retrained.done
    assert done.returncode == PROMOTED, done.stderr
    record = retrained.record
    assert [s["name"] for s in record["steps"]] == list(PIPELINE_STEPS)
    for step in record["steps"]:
        assert step["status"] == "ok" and len(step["attempts"]) == 1
        assert step["argv"][-2:] == ["--steps", step["name"]]
        assert step["argv"][step["argv"].index("--run-name") + 1] == retrained.candidate.name
        assert (retrained.job_json.parent / f"{step['name']}.1.err").is_file()
    # the new run holds every step's section; the gate saw nothing served: first deployment
    summary = json.loads((retrained.candidate / "summary.json").read_text())
    assert set(PIPELINE_STEPS) <= set(summary)
    assert retrained.candidate.name.startswith("served-retrain-")
    gate = record["gate"]
    assert gate["promote"] and gate["metric"] == METRIC and gate["served_version"] is None
    assert gate["candidate"] == summary["evaluation"]["models"]["funnel"]["ndcg@10"]
    assert record["status"] == "promoted" and record["promotion"]["triton_version"] == 1
    assert record["alert"] is None
    # promoted: version 1 of every model, recorded with its run and its evaluation
    assert versions_in(retrained.repo) == [1]
    entry = json.loads((retrained.repo / VERSIONS_FILE).read_text())["1"]
    assert entry["origin"] == f"{retrained.candidate.name}/{summary['models']['path']}"
    assert entry["training_version"] == summary["models"]["version"]
    assert entry["evaluation"]["models"]["funnel"] == summary["evaluation"]["models"]["funnel"]
    # progress lines: each step's attempt, the gate's numbers, the promotion
    for name in PIPELINE_STEPS:
        assert f"retrain: {name} attempt 1/3: ok" in done.stdout
    assert f"retrain: quality gate: promote; {METRIC} {gate['candidate']:.4f} (new) vs " \
           "nothing (served): first deployment" in done.stdout
    assert "as Triton version 1 in" in done.stdout
    assert not list(retrained.repo.parent.glob(".triton_repo.*"))      # no staging left


def test_retrain_command_exits_3_and_alerts_when_a_real_step_fails_for_good(
        served, receiver, tmp_path):
    before = snapshot(served)
    done = recfunnel("retrain", "-c", str(REPO / "configs" / "default.yaml"),
                     "--set", "data.source=parquet", "--set", f"data.path={tmp_path / 'none'}",
                     "--set", f"run.runs_dir={tmp_path / 'runs'}", "--set", "retrain.retries=1",
                     "--set", "retrain.backoff_s=0.01", "--run-name", "served",
                     "--repo", str(served), "--webhook", receiver.url, cwd=tmp_path,
                     timeout=300)
    assert done.returncode == STEP_FAILED
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("recfunnel retrain: failed for good at step data after 2 "
                                "attempt(s) (exit code 2): recfunnel: error: ")
    assert "job record" in lines[-1]
    assert re.search(r"retrain: data attempt 1/2: exit code 2 \([\d.]+ s\); retry in 0.01 s",
                     done.stdout)
    [alert] = receiver.received
    assert alert["path"] == "/hooks/retrain" and alert["type"] == "application/json"
    payload = alert["payload"]
    assert payload["status"] == "step_failed" and payload["step"] == "data"
    assert payload["attempts"] == 2 and payload["repo"] == str(served.resolve())
    assert payload["error"][-1].startswith("recfunnel: error: ")
    assert payload["text"].startswith("recfunnel retrain: failed for good at step data")
    assert snapshot(served) == before


# ---- injected failures ---------------------------------------------------------------------------
def test_a_step_failing_twice_then_succeeding_is_retried_and_the_job_goes_on(
        small_run, served, receiver, tmp_path):
    counter, marker = tmp_path / "counter", tmp_path / "next-step-ran"
    candidate = candidate_copy(small_run, tmp_path, "flaky-run", 1.0)
    out = StringIO()
    job = injected_job([python_step("models", FLAKY, counter), python_step("after", TOUCH, marker)],
                       tmp_path, served, candidate, receiver.url, out=out)
    outcome = job.run()
    assert outcome.exit_code == PROMOTED, outcome.message
    record = json.loads(job.record_path.read_text())
    attempts = record["steps"][0]["attempts"]
    assert [a["exit_code"] for a in attempts] == [1, 1, 0]
    assert [a["waited_s"] for a in attempts] == [0.0, 0.01, 0.015]     # doubled, then capped
    assert attempts[0]["stderr_tail"] == ["attempt 1: no capacity on the training cluster"]
    assert (job.job_dir / "models.2.err").read_text().strip() == \
        "attempt 2: no capacity on the training cluster"
    assert marker.exists() and record["steps"][1]["status"] == "ok"
    assert re.search(r"models attempt 1/3: exit code 1 \([\d.]+ s\); retry in 0.01 s",
                     out.getvalue())
    assert "models attempt 3/3: ok" in out.getvalue()
    assert versions_in(served) == [1, 2] and receiver.received == []


def test_a_hung_step_is_killed_at_its_timeout_with_its_process_group(served, receiver, tmp_path):
    pids = tmp_path / "pids"
    before = snapshot(served)
    job = injected_job([python_step("dataset", HANGS, pids, timeout_s=3)], tmp_path, served,
                       webhook=receiver.url, retries=1)
    outcome = job.run()
    assert outcome.exit_code == STEP_FAILED
    attempts = json.loads(job.record_path.read_text())["steps"][0]["attempts"]
    assert len(attempts) == 2
    for attempt in attempts:
        assert attempt["timed_out"] and attempt["exit_code"] == -9      # SIGTERM was ignored
        assert attempt["stderr_tail"] == ["waiting for a GPU"]
    groups = [tuple(map(int, line.split())) for line in pids.read_text().splitlines()]
    assert len(groups) == 2
    for leader, child in groups:                  # the step and the process it started
        wait_for(lambda: not live_processes_in_group(leader), 10, f"group {leader} to end")
        assert not Path(f"/proc/{child}").exists() or \
            Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    [alert] = receiver.received
    assert alert["payload"]["step"] == "dataset" and alert["payload"]["attempts"] == 2
    assert "killed at its timeout" in outcome.message
    assert snapshot(served) == before


def test_a_step_that_always_fails_alerts_and_leaves_the_served_version(
        served, receiver, tmp_path):
    marker = tmp_path / "evaluation-ran"
    before = snapshot(served)
    job = injected_job([python_step("data", "pass"), python_step("models", FAILS),
                        python_step("evaluation", TOUCH, marker)], tmp_path, served,
                       webhook=receiver.url)
    outcome = job.run()
    assert outcome.exit_code == STEP_FAILED and outcome.status == "step_failed"
    assert outcome.message.endswith("RuntimeError: no GPU available for training; the served "
                                    "version is unchanged")
    record = json.loads(job.record_path.read_text())
    assert [s["status"] for s in record["steps"]] == ["ok", "failed"]
    assert [a["exit_code"] for a in record["steps"][1]["attempts"]] == [1, 1, 1]
    assert not marker.exists() and record["gate"] is None and record["promotion"] is None
    [alert] = receiver.received
    payload = alert["payload"]
    assert payload["status"] == "step_failed" and payload["step"] == "models"
    assert payload["attempts"] == 3 and payload["job"] == "retrain"
    assert payload["error"][0].startswith("Traceback")
    assert payload["error"][-1] == "RuntimeError: no GPU available for training"
    assert payload["job_record"] == str(job.record_path) and payload["time"]
    assert record["alert"]["sent"] and record["alert"]["status"] == 200
    assert snapshot(served) == before


def test_an_unreachable_webhook_is_logged_and_the_job_still_fails(served, tmp_path):
    with socket.socket() as s:                     # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    out = StringIO()
    job = injected_job([python_step("data", FAILS)], tmp_path, served, webhook=url, retries=0,
                       out=out)
    assert job.run().exit_code == STEP_FAILED
    alert = json.loads(job.record_path.read_text())["alert"]
    assert not alert["sent"] and "refused" in alert["error"].lower()
    assert f"the alert could not be sent to {url}" in out.getvalue()


# ---- the quality gate and the promotion ----------------------------------------------------------
def test_a_worse_candidate_is_not_promoted_and_the_repository_is_unchanged(
        small_run, served, receiver, tmp_path):
    candidate = candidate_copy(small_run, tmp_path, "worse-run", 0.8)
    before = snapshot(served)
    out = StringIO()
    outcome = injected_job([], tmp_path, served, candidate, receiver.url, out=out).run()
    assert outcome.exit_code == GATE_REFUSED and outcome.status == "gate_refused"
    served_value = json.loads((small_run.dir / "summary.json").read_text())[
        "evaluation"]["models"]["funnel"]["ndcg@10"]
    gate = receiver.received[0]["payload"]["gate"]
    assert not gate["promote"] and gate["served_version"] == 1
    assert gate["served"] == served_value and gate["candidate"] == pytest.approx(served_value * 0.8)
    assert "-20.0% against the served version, beyond the allowed drop of 5.0%" in gate["reason"]
    assert receiver.received[0]["payload"]["status"] == "gate_refused"
    assert f"quality gate: refused; {METRIC} {served_value * 0.8:.4f} (new) vs Triton version 1 " \
           f"{served_value:.4f} (served)" in out.getvalue()
    assert snapshot(served) == before


def test_a_good_candidate_is_promoted_as_a_new_version(small_run, served, tmp_path):
    candidate = candidate_copy(small_run, tmp_path, "better-run", 1.1)
    version_1 = version_files(served, 1)
    job = injected_job([], tmp_path, served, candidate)
    outcome = job.run()
    assert outcome.exit_code == PROMOTED, outcome.message
    assert versions_in(served) == [1, 2] and all((served / m / "2").is_dir() for m in models_in(served))
    record = json.loads((served / VERSIONS_FILE).read_text())
    assert record["2"]["origin"].startswith("better-run/models/")
    assert record["2"]["evaluation"]["models"]["funnel"]["ndcg@10"] == \
        json.loads((candidate / "summary.json").read_text())["evaluation"]["models"]["funnel"][
            "ndcg@10"]
    assert version_files(served, 1) == version_1
    assert json.loads(job.record_path.read_text())["promotion"]["triton_version"] == 2
    assert not list(served.parent.glob(".triton_repo.*"))           # assembled beside, moved in


@pytest.mark.parametrize("candidate, served, promote", [
    (0.96, 1.0, True), (0.95, 1.0, True), (0.94, 1.0, False), (1.2, 1.0, True),
    (float("nan"), 1.0, False), (0.0, 0.0, True), (0.1, float("nan"), True)])
def test_gate_decision_allows_a_relative_drop_of_at_most_max_drop(candidate, served, promote):
    assert gate_decision(candidate, served, 0.05)[0] is promote


def fake_repo(path: Path, record: dict) -> Path:
    """A repository with version 1 in every model folder (no artifacts) and this record."""
    from test_export_record import empty_version

    empty_version(path, 1)
    (path / VERSIONS_FILE).write_text(json.dumps({"1": record}))
    return path


def test_gate_finds_the_served_metric_in_the_record_or_in_its_run(tmp_path):
    gate = QualityGate("funnel.ndcg@{k}", 0.05, tmp_path / "runs")
    new = {"k": 10, "models": {"funnel": {"ndcg@10": 0.2}}}
    assert gate.decide(new, tmp_path / "empty").reason == "first deployment: nothing served yet"
    recorded = fake_repo(tmp_path / "a", {"evaluation": {"k": 10, "models": {
        "funnel": {"ndcg@10": 0.25}}}})
    decision = gate.decide(new, recorded)
    assert not decision.promote and decision.served == 0.25 and decision.served_version == 1
    # exported before versions.json kept the evaluation: the served run's summary has it
    older = fake_repo(tmp_path / "b", {"origin": "old-run/models/v1"})
    (tmp_path / "runs" / "old-run").mkdir(parents=True)
    (tmp_path / "runs" / "old-run" / "summary.json").write_text(json.dumps(
        {"evaluation": {"k": 10, "models": {"funnel": {"ndcg@10": 0.19}}}}))
    assert gate.decide(new, older).promote and gate.decide(new, older).served == 0.19
    lost = fake_repo(tmp_path / "c", {"origin": "gone-run/models/v1"})
    assert "has no recorded evaluation" in gate.decide(new, lost).reason
    with pytest.raises(ValueError, match="list 'funnel' has no 'ndcg@20'; its metrics: ndcg@10"):
        QualityGate("funnel.ndcg@20", 0.05, tmp_path).decide(new, recorded)
    with pytest.raises(ValueError, match="no list 'heavy' in the evaluation; lists: funnel"):
        QualityGate("heavy.auc", 0.05, tmp_path).decide(new, recorded)


def test_retry_waits_double_up_to_the_cap():
    policy = RetryPolicy(retries=5, backoff_s=1, backoff_max_s=5)
    assert [policy.wait_before(n) for n in range(1, 7)] == [0, 1, 2, 4, 5, 5]
    with pytest.raises(ValueError, match="retries must be >= 0"):
        RetryPolicy(retries=-1)


def test_retrain_job_runs_each_pipeline_step_with_the_same_config(tmp_path):
    cfg = load_config(REPO / "configs" / "default.yaml", {
        "run": {"runs_dir": str(tmp_path)}, "retrain": {"step_timeout_s": {"models": 60}}})
    job = retrain_job(cfg, "configs/default.yaml", ["models.mf_epochs=1"], out=None)
    assert [s.name for s in job.steps] == list(PIPELINE_STEPS)
    assert [s.timeout_s for s in job.steps] == [1800, 3600, 60, 1800]   # defaults kept
    candidate = job.candidate_run.name
    assert candidate.startswith("demo-retrain-") and job.candidate_run.parent == tmp_path
    assert job.steps[2].argv[1:] == ["-m", "recfunnel", "pipeline", "run", "-q", "--run-name",
                                     candidate, "-c", "configs/default.yaml",
                                     "--set", "models.mf_epochs=1", "--steps", "models"]
    assert job.repo == tmp_path / "demo" / "triton_repo"
    assert job.job_dir.parent == tmp_path / "demo" / "retrain"
    assert job.gate.metric == "funnel.ndcg@{k}" and job.policy.retries == 2
    cfg.retrain.step_timeout_s = {"model": 60}
    with pytest.raises(ConfigError, match=r"unknown step\(s\) \['model'\]"):
        retrain_job(cfg)
