"""Every pipeline step is a batch job a scheduler can run (docs/batch_jobs.md).

Every `recfunnel ...` command that the batch docs, the Airflow DAG, the Dockerfiles, the compose
file and the containers' README name is parsed by the real command-line parser, and a failing
step ends with exit code 2 and one `recfunnel: error:` line on stderr, never a traceback.
"""
import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from recfunnel.cli import build_parser

# A command's start: `recfunnel ARGS`, an image run `recfunnel:cpu ARGS`, or a compose service
# whose entrypoint is recfunnel, `run --rm pipeline ARGS`. Not /opt/recfunnel, recfunnel-runs,
# nor an image's tag (`docker build -t recfunnel:cpu .`).
COMMAND = re.compile(r"(?:(?<![\w/.:$-])(?<!-t )recfunnel(?::(?:cpu|gpu))?"
                     r"|\brun\s+--rm\s+(?:pipeline|triton))\s+(.+)")
REDIRECTION = re.compile(r"\s\d*>>?&?\d*\s*(?:[^\s&]\S*)?")


def shell_commands(text: str) -> list[list[str]]:
    """The arguments of each recfunnel command in shell text (code blocks, cron lines, bash -c
    strings): Jinja and $(...) stand for a value, comments and redirections are dropped."""
    text = re.sub(r"\{\{.*?\}\}", "X", text)
    text = re.sub(r"\$\([^)]*\)", "X", text).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line)
        for segment in re.split(r"&&|\|\||;|\|", line):
            found = COMMAND.search(segment)
            if found:
                args = REDIRECTION.sub(" ", found.group(1)).strip()
                if args.count("'") % 2:          # the end of a quoted bash -c '...' string
                    args = args.rstrip("'")
                commands.append(shlex.split(args))
    return commands


def markdown_commands(text: str) -> list[list[str]]:
    """Commands in fenced code blocks and inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    return [c for code in [*blocks, *re.findall(r"`([^`\n]+)`", prose)]
            for c in shell_commands(code)]


def commented_commands(text: str) -> list[list[str]]:
    """Commands in comment lines that are docker commands (`# docker run ...`), not prose."""
    return [c for line in re.findall(r"^\s*#\s*(docker\s.*)$", text, flags=re.M)
            for c in shell_commands(line)]


def dockerfile_commands(text: str) -> list[list[str]]:
    """The entrypoint with its default CMD, and the commands in the comments."""
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, flags=re.M)
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, flags=re.M)
    found = commented_commands(text)
    if entry and json.loads(entry.group(1)) == ["recfunnel"]:
        found.append(json.loads(cmd.group(1)) if cmd else [])
    return found


def compose_commands(text: str) -> list[list[str]]:
    """Each recfunnel service's command (recfunnel is its image's entrypoint, or inside a bash -c
    string), and the commands in the comments."""
    found = commented_commands(text)
    for service in yaml.safe_load(text)["services"].values():
        if not str(service.get("image", "")).startswith("recfunnel:"):
            continue
        command = service.get("command", [])
        if "entrypoint" in service:
            found += [c for part in command for c in shell_commands(part)]
        else:
            found.append(command)
    return found


def dag_commands(path) -> list[list[str]]:
    """The bash commands of the DAG's tasks, imported without Airflow (it is imported only when
    installed)."""
    spec = importlib.util.spec_from_file_location("airflow_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    commands = [shell_commands(command) for command in module.COMMANDS.values()]
    assert all(len(c) == 1 for c in commands), "each task runs exactly one recfunnel command"
    return [c[0] for c in commands]


SOURCES = {
    "docs/batch_jobs.md": lambda p: markdown_commands(p.read_text()),
    "docs/airflow_dag.py": dag_commands,
    "docker/Dockerfile.cpu": lambda p: dockerfile_commands(p.read_text()),
    "docker/Dockerfile.gpu": lambda p: dockerfile_commands(p.read_text()),
    "docker/compose.yaml": lambda p: compose_commands(p.read_text()),
    "docker/README.md": lambda p: markdown_commands(p.read_text()),
}


def parse_error(args: list[str]) -> str | None:
    """None when recfunnel's own parser takes `args` (--help included), else its complaint."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parsed = build_parser().parse_args(args)
    except SystemExit as stop:
        return None if stop.code == 0 else err.getvalue().strip().splitlines()[-1]
    config = getattr(parsed, "config", None)
    if config and not config.isupper() and not (REPO / config).is_file():   # CONFIG: a placeholder
        return f"config file {config} is not in the repository"
    return None


@pytest.mark.parametrize("source", SOURCES)
def test_every_command_named_parses(source):
    commands = SOURCES[source](REPO / source)
    assert commands, f"{source} names no recfunnel command"
    failed = {shlex.join(args): error for args in commands if (error := parse_error(args))}
    assert not failed, f"{source}: commands the parser refuses: {failed}"


def test_the_command_finder_reads_the_forms_the_docs_use():
    cron = ("15 2 * * * cd /opt/recfunnel && flock -n /tmp/recfunnel.lock bash -c 'set -e; "
            "RUN=n-$(date +\\%Y); recfunnel train -c c.yaml --run-name \"$RUN\" && recfunnel "
            "export --run-name \"$RUN\"' >> /var/log/recfunnel.log 2>&1")
    assert shell_commands(cron) == [["train", "-c", "c.yaml", "--run-name", "$RUN"],
                                    ["export", "--run-name", "$RUN"]]
    assert shell_commands("docker run --rm -v recfunnel-runs:/opt/recfunnel/runs recfunnel:cpu "
                          "serve --run-name demo") == [["serve", "--run-name", "demo"]]
    assert shell_commands("docker build -f docker/Dockerfile.cpu -t recfunnel:cpu .") == []
    assert shell_commands("docker compose -f docker/compose.yaml run --rm pipeline export "
                          "--run-name {{ ds }}") == [["export", "--run-name", "X"]]
    assert markdown_commands("the `recfunnel` command; `recfunnel: error: x`; "
                             "`recfunnel schema`") == [["schema"]]
    assert parse_error(["pipeline", "run", "--stepz", "data"]).endswith(
        "unrecognized arguments: --stepz data")


def recfunnel(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "recfunnel", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# (files to write, command, what the one line says); runs go to the test's folder.
FAILURES = {
    "config-bad-key": ({"bad.yaml": "models:\n  embeding_dim: 3\n"},
                       ["pipeline", "run", "-c", "bad.yaml", "--steps", "data"],
                       "unknown setting models.embeding_dim"),
    "config-not-yaml": ({"bad.yaml": "models: [1\n"},
                        ["pipeline", "run", "-c", "bad.yaml", "--steps", "data"],
                        "is not valid YAML at line 2, column 1"),
    "config-missing": ({}, ["train", "-c", "missing.yaml"], "config file missing.yaml does not "
                                                            "exist"),
    "set-not-yaml": ({}, ["evaluate", "--set", "models.eval_k=[1"], "is not valid YAML"),
    "export-missing-run": ({}, ["export", "--run-name", "nothing", "--runs-dir", "runs"],
                           "runs/nothing: no summary.json"),
    "export-no-run-name": ({}, ["export"], "export needs --run-name"),
    "retire-missing-version": ({}, ["export", "--repo", "repo", "--retire", "3"],
                               "no Triton version 3 to retire"),
    "serve-nothing-exported": ({}, ["serve", "--run-name", "nothing", "--runs-dir", "runs"],
                               "no exported funnel; run recfunnel export first"),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failing_step_exits_2_with_one_line_on_stderr(case, tmp_path):
    files, args, message = FAILURES[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = recfunnel(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("recfunnel: error:")]
    # library warnings may come first (TensorFlow's imports); the reason is one line, the last
    assert errors == [lines[-1]] and message in lines[-1], done.stderr


def test_a_step_reads_what_the_step_before_wrote(tmp_path):
    """data exits 0 and writes runs/RUN/data; models, run next, finds no dataset and says which
    step to run: the order a scheduler must keep."""
    base = ["-q", "--run-name", "chain", "--set", "run.runs_dir=runs", "--set",
            "run.cache_dir=cache", "--set", "data.synthetic.n_users=50", "--set",
            "data.synthetic.n_items=40", "--set", "data.synthetic.n_events=2000"]
    done = recfunnel("pipeline", "run", "--steps", "data", *base, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "chain"
    assert (run / "data" / "events").is_dir() and (run / "config.yaml").is_file()
    assert "data" in json.loads((run / "summary.json").read_text())
    done = recfunnel("train", *base, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"recfunnel: error: {run.relative_to(tmp_path) / 'dataset'} has no training split; run "
        "the dataset step first (recfunnel pipeline run --steps dataset,models)")
