"""One step of the retraining job (a pipeline step, as a batch command) run as a child process:
killed with its whole process group at its timeout, retried with exponential backoff, every
attempt recorded with its exit code, time and last stderr lines (L7.3).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

STDERR_TAIL_LINES = 20                # of each attempt, in the job record and the alert


@dataclass
class Step:
    """A named command of the job, e.g. `models`: `python -m recfunnel pipeline run --steps
    models ...`; `timeout_s` is wall time, after which the step and its children are killed."""
    name: str
    argv: list[str]
    timeout_s: float

    def __post_init__(self):
        if not self.argv:
            raise ValueError(f"step {self.name!r}: argv is empty; give the command to run")
        if self.timeout_s <= 0:
            raise ValueError(f"step {self.name!r}: timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class Attempt:
    """One run of a step. `exit_code` is negative when a signal ended it (-9: SIGKILL)."""
    step: str
    attempt: int                      # 1 for the first run
    waited_s: float                   # the backoff slept before it
    exit_code: int
    timed_out: bool
    seconds: float
    stderr_tail: list[str] = field(default_factory=list)
    log: str = ""                     # its stdout/stderr files: <log>.out, <log>.err

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def describe(self) -> str:
        if self.timed_out:
            return f"killed at its timeout after {self.seconds:.0f} s"
        return "ok" if self.ok else f"exit code {self.exit_code}"


@dataclass
class RetryPolicy:
    """How often a failed step runs again and how long the job waits before each retry."""
    retries: int = 2                  # extra attempts after the first
    backoff_s: float = 60.0           # wait before the first retry, doubled before each next
    backoff_max_s: float = 900.0      # ... up to this
    kill_grace_s: float = 30.0        # SIGTERM at the timeout, SIGKILL this much later

    def __post_init__(self):
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        for name in ("backoff_s", "backoff_max_s", "kill_grace_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (1-based): none before the first, then
        backoff_s, 2 x backoff_s, 4 x ... capped at backoff_max_s."""
        if attempt <= 1:
            return 0.0
        return min(self.backoff_s * 2 ** (attempt - 2), self.backoff_max_s)


def run_with_retries(step: Step, policy: RetryPolicy, log_dir: Path,
                     on_attempt: Callable[[Attempt], None] = lambda attempt: None
                     ) -> list[Attempt]:
    """Runs `step` until it succeeds or has failed 1 + policy.retries times; the attempts in
    order (the last one tells whether the step succeeded). `on_attempt` sees each as it ends."""
    attempts = []
    for n in range(1, policy.retries + 2):
        waited = policy.wait_before(n)
        time.sleep(waited)
        attempt = run_attempt(step, n, log_dir, policy.kill_grace_s, waited)
        attempts.append(attempt)
        on_attempt(attempt)
        if attempt.ok:
            break
    return attempts


def run_attempt(step: Step, n: int, log_dir: Path, kill_grace_s: float,
                waited_s: float = 0.0) -> Attempt:
    """One run of `step` in a session of its own, its output in `log_dir/<step>.<n>.out|err`.

    The step and anything it started share its process group, and the group is ended however
    the attempt ends (timeout, success, or this job interrupted): nothing of a hung step, such as
    a dask worker or a TensorFlow child, outlives its attempt.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log = f"{step.name}.{n}"
    started = time.monotonic()
    timed_out = False
    with open(log_dir / f"{log}.out", "wb") as out, open(log_dir / f"{log}.err", "wb") as err:
        process = subprocess.Popen(step.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                   start_new_session=True)
        try:
            process.wait(timeout=step.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            end_process_group(process, kill_grace_s)
    return Attempt(step.name, n, waited_s, process.returncode, timed_out,
                   round(time.monotonic() - started, 2), _tail(log_dir / f"{log}.err"), log)


def end_process_group(process: subprocess.Popen, kill_grace_s: float) -> None:
    """SIGTERM to the group of a still running `process` (it may save and exit), SIGKILL after
    `kill_grace_s`; then SIGKILL to whatever of its group is left (children deaf to SIGTERM or
    left behind by a leader that exited)."""
    group = process.pid                   # start_new_session: the leader's pid is the group id
    if process.poll() is None:
        _signal_group(group, signal.SIGTERM)
        try:
            process.wait(timeout=kill_grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(group, signal.SIGKILL)
            process.wait()
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:            # nobody left in the group
        pass


def _tail(path: Path, lines: int = STDERR_TAIL_LINES) -> list[str]:
    text = path.read_bytes().decode("utf-8", errors="replace") if path.is_file() else ""
    return [line for line in text.splitlines() if line.strip()][-lines:]
