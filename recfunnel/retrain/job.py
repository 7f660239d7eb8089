"""The retraining job (`recfunnel retrain`, L7.3): the pipeline's batch steps (data, dataset,
models, evaluation) into a new run folder, each retried and timed out, then the quality gate,
then promotion of the new version into the served Triton repository; an alert to a webhook
when a step fails for good, the promotion fails, or the gate refuses.

Everything is recorded in `<job dir>/job.json` (rewritten after every attempt, so a job killed
from outside leaves its story) beside every attempt's stdout and stderr. The served repository
is written once, by the promotion (recfunnel.serving.export: atomic per version folder).
"""
from __future__ import annotations

import json
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from recfunnel.config import Config, ConfigError, RetrainConfig
from recfunnel.retrain.alert import send_alert
from recfunnel.retrain.gate import QualityGate
from recfunnel.retrain.steps import Attempt, RetryPolicy, Step, run_with_retries
from recfunnel.serving.export import export_run

PIPELINE_STEPS = ("data", "dataset", "models", "evaluation")
# Exit codes a scheduler understands (2 stays the CLI's "bad config or input").
PROMOTED, STEP_FAILED, GATE_REFUSED, INTERRUPTED = 0, 3, 4, 130


@dataclass
class Outcome:
    status: str                       # promoted | step_failed | gate_refused | interrupted
    exit_code: int
    message: str                      # one line


class RetrainJob:
    """Runs `steps` (which write the run folder `candidate_run`), gates the candidate against
    what `repo` serves and promotes it there. `job_dir` receives job.json and the step logs;
    progress lines go to `out` (None: silent)."""

    def __init__(self, steps: list[Step], candidate_run: Path, repo: Path, job_dir: Path,
                 policy: RetryPolicy, gate: QualityGate, webhook: str | None = None,
                 alert_timeout_s: float = 10.0, out: TextIO | None = sys.stdout):
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must differ (they name the logs), got {names}")
        self.steps, self.candidate_run, self.repo = steps, Path(candidate_run), Path(repo)
        self.job_dir, self.policy, self.gate = Path(job_dir), policy, gate
        self.webhook, self.alert_timeout_s, self.out = webhook, alert_timeout_s, out
        self.record: dict = {}

    @property
    def record_path(self) -> Path:
        return self.job_dir / "job.json"

    def run(self) -> Outcome:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.record = {"job": "retrain", "candidate_run": str(self.candidate_run),
                       "repo": str(self.repo), "started": _now(), "status": "running",
                       "policy": asdict(self.policy), "steps": [], "gate": None,
                       "promotion": None, "alert": None}
        self._save()
        try:
            outcome = self._run()
        except KeyboardInterrupt:         # SIGINT, or SIGTERM from a scheduler (the CLI's)
            outcome = Outcome("interrupted", INTERRUPTED,
                              "interrupted; the step in progress was stopped")
        self.record.update(status=outcome.status, exit_code=outcome.exit_code,
                           message=outcome.message, finished=_now())
        self._save()
        self._say(outcome.message)
        return outcome

    def _run(self) -> Outcome:
        for step in self.steps:
            entry = {"name": step.name, "argv": step.argv, "timeout_s": step.timeout_s,
                     "attempts": []}
            self.record["steps"].append(entry)
            attempts = run_with_retries(step, self.policy, self.job_dir,
                                        lambda attempt: self._attempted(entry, attempt))
            last = attempts[-1]
            entry["status"] = "ok" if last.ok else "failed"
            if not last.ok:
                return self._failed(step.name, len(attempts), last.describe(), last.stderr_tail)
        try:
            summary = json.loads((self.candidate_run / "summary.json").read_text())
            decision = self.gate.decide(summary.get("evaluation") or {}, self.repo)
        except (OSError, ValueError) as e:     # no run folder, no evaluation, unknown metric
            return self._failed("quality_gate", 1, "error", [str(e)])
        self.record["gate"] = asdict(decision)
        served = "nothing" if decision.served_version is None else \
            f"Triton version {decision.served_version} {_number(decision.served)}"
        comparison = (f"{decision.metric} {_number(decision.candidate)} (new) vs {served} "
                      f"(served): {decision.reason}")
        self._say(f"quality gate: {'promote' if decision.promote else 'refused'}; {comparison}")
        if not decision.promote:
            message = f"quality gate refused {self.candidate_run.name}: {comparison}"
            self._alert("gate_refused", message, {"gate": asdict(decision)})
            return Outcome("gate_refused", GATE_REFUSED, message)
        return self._promote()

    def _promote(self) -> Outcome:
        try:
            result = export_run(self.candidate_run, self.repo)
        except Exception as e:  # noqa: BLE001 - any failure here is the job's; the candidate
            return self._failed("promotion", 1, type(e).__name__, [str(e)])  # stays exportable
        self.record["promotion"] = {"triton_version": result.triton_version,
                                    "training_version": result.training_version,
                                    "versions_on_disk": result.versions_on_disk,
                                    "seconds": result.seconds}
        return Outcome("promoted", PROMOTED,
                       f"promoted {self.candidate_run.name} (training version "
                       f"{result.training_version}) as Triton version {result.triton_version} "
                       f"in {self.repo}")

    def _attempted(self, entry: dict, attempt: Attempt) -> None:
        entry["attempts"].append(asdict(attempt))
        self._save()
        total = self.policy.retries + 1
        more = "" if attempt.ok or attempt.attempt == total else \
            f"; retry in {self.policy.wait_before(attempt.attempt + 1):g} s"
        self._say(f"{attempt.step} attempt {attempt.attempt}/{total}: {attempt.describe()} "
                  f"({attempt.seconds:.1f} s){more}")

    def _failed(self, step: str, attempts: int, what: str, error: list[str]) -> Outcome:
        message = (f"failed for good at step {step} after {attempts} attempt(s) "
                   f"({what}): {error[-1] if error else 'no error output'}; the served version "
                   "is unchanged")
        self._alert("step_failed", message, {"step": step, "attempts": attempts, "error": error})
        return Outcome("step_failed", STEP_FAILED, message)

    def _alert(self, status: str, message: str, details: dict) -> None:
        payload = {"text": f"recfunnel retrain: {message}", "job": "retrain", "status": status,
                   "run": self.candidate_run.name, "host": socket.gethostname(),
                   "repo": str(self.repo.resolve()), "job_record": str(self.record_path.resolve()),
                   "time": _now(), **details}
        if not self.webhook:
            self.record["alert"] = {"sent": False, "error": "no webhook (retrain.alert_webhook)"}
            return
        sent = send_alert(self.webhook, payload, self.alert_timeout_s)
        self.record["alert"] = {**sent, "payload": payload}
        if not sent["sent"]:
            self._say(f"the alert could not be sent to {self.webhook}: {sent['error']}")

    def _save(self) -> None:
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        tmp.replace(self.record_path)

    def _say(self, text: str) -> None:
        if self.out is not None:
            print(f"retrain: {text}", file=self.out, flush=True)


def retrain_job(cfg: Config, config_path: str | None = None, settings: list[str] = (),
                repo: str | None = None, webhook: str | None = None,
                out: TextIO | None = sys.stdout) -> RetrainJob:
    """The job `recfunnel retrain -c CONFIG --set K=V ...` runs: every pipeline step as
    `python -m recfunnel pipeline run --steps <step>` with the same config and settings into
    the new run `<run>-retrain-<UTC time>`, promoted into `repo` (default: retrain.repo, else
    runs/<run>/triton_repo, where <run> is run.name); the job's record goes to
    runs/<run>/retrain/<UTC time>/."""
    r = cfg.retrain
    unknown = sorted(set(r.step_timeout_s) - set(PIPELINE_STEPS))
    if unknown:
        raise ConfigError(f"retrain.step_timeout_s names unknown step(s) {unknown}; the job's "
                          f"steps: {', '.join(PIPELINE_STEPS)}")
    timeouts = {**RetrainConfig().step_timeout_s, **r.step_timeout_s}
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    served = cfg.run.name or cfg.data.source
    runs_dir = Path(cfg.run.runs_dir)
    candidate = f"{served}-retrain-{stamp}"
    command = [sys.executable, "-m", "recfunnel", "pipeline", "run", "-q", "--run-name", candidate,
               *(["-c", str(config_path)] if config_path else []),
               *[part for setting in settings for part in ("--set", setting)]]
    try:
        steps = [Step(name, [*command, "--steps", name], float(timeouts[name]))
                 for name in PIPELINE_STEPS]
        policy = RetryPolicy(r.retries, r.backoff_s, r.backoff_max_s, r.kill_grace_s)
        gate = QualityGate(r.gate_metric, r.gate_max_drop, runs_dir)
    except ValueError as e:
        raise ConfigError(f"retrain: {e}") from None
    return RetrainJob(steps, runs_dir / candidate, Path(repo or r.repo or
                                                        runs_dir / served / "triton_repo"),
                      runs_dir / served / "retrain" / stamp, policy, gate,
                      webhook or r.alert_webhook, r.alert_timeout_s, out)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
