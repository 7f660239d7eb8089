"""The recfunnel batch jobs as Airflow DAGs (docs/batch_jobs.md): every pipeline step a task.

`recfunnel_nightly` runs data -> dataset -> models -> evaluation -> export as one BashOperator
each, into a run folder named after the scheduled day, and exports the new version into the
repository that `recfunnel serve` serves. `recfunnel_retrain` is the same job as one task,
`recfunnel retrain`, which retries, times out, gates and alerts by itself (L7.3). Both are
scheduled at 02:15 and both export to the served repository: unpause one of the two.

Copy this file into Airflow's dags/ folder on workers that have recfunnel (docker/Dockerfile.cpu
or .gpu, or the project's environment) and share RECFUNNEL_HOME/runs between them. A task fails
when its command exits non-zero; the reason is the `recfunnel: error:` line of its log.
Airflow is imported only when it is installed: without it this file just defines the commands
(the tests read them).
"""
from __future__ import annotations

from datetime import datetime, timedelta

RECFUNNEL_HOME = "/opt/recfunnel"        # the clone: the images' working directory
CONFIG = "configs/default.yaml"
RUN = "nightly-{{ ds_nodash }}"          # one run folder per scheduled day (Jinja, filled by Airflow)
SERVED_REPO = "runs/served/triton_repo"  # what `recfunnel serve --repo` serves


def recfunnel(*args: str) -> str:
    """A task's bash command: one recfunnel step, run in the clone."""
    return " ".join(("cd", RECFUNNEL_HOME, "&&", "recfunnel", *args))


# task id -> (command, time limit); the limits are RetrainConfig.step_timeout_s's defaults.
STEPS = {
    "data": (recfunnel("pipeline", "run", "-c", CONFIG, "--run-name", RUN, "--steps", "data",
                       "--quiet"), timedelta(minutes=30)),
    "dataset": (recfunnel("pipeline", "run", "-c", CONFIG, "--run-name", RUN, "--steps",
                          "dataset", "--quiet"), timedelta(hours=1)),
    "models": (recfunnel("train", "-c", CONFIG, "--run-name", RUN, "--quiet"),
               timedelta(hours=2)),
    "evaluation": (recfunnel("evaluate", "-c", CONFIG, "--run-name", RUN, "--quiet"),
                   timedelta(minutes=30)),
    "export": (recfunnel("export", "--run-name", RUN, "--repo", SERVED_REPO),
               timedelta(minutes=15)),
}
RETRAIN = recfunnel("retrain", "-c", CONFIG)
COMMANDS = {**{name: command for name, (command, _) in STEPS.items()}, "retrain": RETRAIN}

DEFAULT_ARGS = {
    "owner": "recfunnel",
    "retries": 2,                        # exit 1 (e.g. a lost worker) may pass on a retry
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
}

try:
    from airflow import DAG
    from airflow.operators.bash import BashOperator
except ImportError:                      # no Airflow here: the commands above are all there is
    DAG = None

if DAG is not None:
    with DAG("recfunnel_nightly", default_args=DEFAULT_ARGS, schedule="15 2 * * *",
             start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
             is_paused_upon_creation=True, tags=["recfunnel"]) as nightly:
        previous = None
        for task_id, (command, limit) in STEPS.items():
            task = BashOperator(task_id=task_id, bash_command=command, execution_timeout=limit)
            if previous is not None:
                previous >> task         # one step at a time: each reads what the last wrote
            previous = task

    with DAG("recfunnel_retrain", default_args={**DEFAULT_ARGS, "retries": 0},  # it retries itself
             schedule="15 2 * * *", start_date=datetime(2026, 1, 1), catchup=False,
             max_active_runs=1, is_paused_upon_creation=True, tags=["recfunnel"]) as retrain:
        BashOperator(task_id="retrain", bash_command=RETRAIN, execution_timeout=timedelta(hours=6))
