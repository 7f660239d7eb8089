"""The alert rules for real: a Prometheus server (Debian's package, unpacked into the cache by
scripts/get_promtool.sh, on 127.0.0.1) scrapes a real tritonserver with our recording and alert
rules loaded; an injected fault makes RecfunnelErrorRateHigh fire on /api/v1/alerts, and the
alert resolves once the fault is removed.

Twice: on a toy python-backend `funnel` that raises in `execute` while a fault file exists (a
minute, no training), and on the real funnel of the session's small run served by `recfunnel
serve`, whose heavy ranker fails every request while a broken experiment is in the repository.
Both raise in `execute`, which Triton counts as a BACKEND failure (monitoring/README.md). The
rules are monitoring/rules/recfunnel.rules.yml with shorter windows and `for:` durations,
derived from it here (RULE_WINDOW, ALERT_FOR), so a test takes a minute instead of ten; scrapes
and rule evaluations every second. The timelines they print are in monitoring/README.md.
"""
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import copy_repo, recfunnel_serve
from recfunnel.serving import ServingError, TritonClient, TritonServer
from recfunnel.serving.server import free_ports
from test_triton_server import python_model_config, wait_for

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
RULE_WINDOW = "15s"        # for the rules' [5m] rate windows
ALERT_FOR = "10s"          # for every alert's `for:`
INTERVAL = "1s"            # scrape and evaluation interval
ALERT = "RecfunnelErrorRateHigh"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FAULTY_FUNNEL = (python_model_config("X TYPE_FP32 -1", "Y TYPE_FP32 -1"), """
import json
import os

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.fault_file = parameters["FAULT_FILE"]["string_value"]

    def execute(self, requests):
        if os.path.exists(self.fault_file):        # the injected fault: every request fails
            raise RuntimeError("injected fault: a stage failed")
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1)]) for r in requests]
""")


def short_rules(rules: dict) -> dict:
    """The real rules with every range window RULE_WINDOW and every `for:` ALERT_FOR."""
    for group in rules["groups"]:
        group["interval"] = INTERVAL
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\[\d+[smh]\]", f"[{RULE_WINDOW}]", rule["expr"])
            if "for" in rule:
                rule["for"] = ALERT_FOR
    return rules


def prometheus_config(target: str, rules_file: Path) -> dict:
    """monitoring/prometheus.yml scraping `target` every second, with `rules_file`."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    config["rule_files"] = [str(rules_file)]
    triton = next(job for job in config["scrape_configs"] if job["job_name"] == "triton")
    triton["scrape_interval"] = INTERVAL
    triton["static_configs"][0]["targets"] = [target]
    return config


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with NO_PROXY.open(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def our_alerts(base: str) -> list[dict]:
    return [a for a in api(base, "/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == ALERT]


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    got = subprocess.run([str(REPO / "scripts" / "get_promtool.sh"), "prometheus"],
                         capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        pytest.fail(f"no Prometheus server to run: {got.stderr.strip()}")
    return got.stdout.strip()


@contextlib.contextmanager
def prometheus(root: Path, binary: str, target: str, rules: Path):
    """A Prometheus on 127.0.0.1 scraping `target` (host:port) with `rules`: its base URL."""
    port = free_ports(1)[0]
    (root / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(target, rules)))
    with open(root / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                with NO_PROXY.open(f"{base}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return process.poll() is not None      # exited: reported below
        wait_for(ready, 60, "Prometheus to be ready")
        assert process.poll() is None, (root / "prometheus.log").read_text()[-3000:]
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def short_rules_file(root: Path) -> Path:
    rules = root / "recfunnel.short.rules.yml"
    rules.write_text(yaml.safe_dump(short_rules(
        yaml.safe_load((MONITORING / "rules" / "recfunnel.rules.yml").read_text()))))
    return rules


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prometheus_binary):
    """A tritonserver serving the faulty toy funnel and a Prometheus scraping it."""
    root = tmp_path_factory.mktemp("alerting")
    fault = root / "fault"
    config, code = FAULTY_FUNNEL
    config += f'parameters: {{ key: "FAULT_FILE", value: {{ string_value: "{fault}" }} }}\n'
    (root / "repo" / "funnel" / "1").mkdir(parents=True)
    (root / "repo" / "funnel" / "config.pbtxt").write_text(config)
    (root / "repo" / "funnel" / "1" / "model.py").write_text(code.lstrip())
    with TritonServer(root / "repo", log_path=root / "tritonserver.log") as server:
        target = server.metrics_url.split("//")[1].split("/")[0]
        with prometheus(root, prometheus_binary, target, short_rules_file(root)) as base:
            yield {"server": server, "prometheus": base, "fault": fault, "log": root}


class Load:
    """Asks in a thread every 50 ms, `ask(client)` on `client()`; counts answers and failures
    (Triton's status of each)."""

    def __init__(self, client, ask):
        self.client, self.ask, self.ok, self.failed = client, ask, 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with self.client() as client:
            while not self.stop.is_set():
                try:
                    self.ask(client)
                    self.ok += 1
                except ServingError as e:
                    self.failed.append(e.status)
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)


def test_prometheus_loads_our_rules_and_scrapes_triton(stack):
    groups = api(stack["prometheus"], "/api/v1/rules")["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {ALERT, "RecfunnelTritonDown", "model:nv_inference_request_failure:ratio_rate5m"} <= names
    wait_for(lambda: [t for t in api(stack["prometheus"], "/api/v1/targets")["activeTargets"]
                      if t["labels"]["job"] == "triton" and t["health"] == "up"],
             30, "the triton target to be up")


def fault_timeline(base: str, load: Load, fault_in, fault_out) -> dict:
    """Healthy traffic for a rule window, `fault_in()`, until the alert fires, `fault_out()`,
    until it resolves; checks each state on /api/v1/alerts and returns when each came (s from
    the start of the load)."""
    ratio = 'model:nv_inference_request_failure:ratio_rate5m{model="funnel"}'
    requests = 'model:nv_inference_requests:rate5m{model="funnel"}'

    def value(query):
        result = api(base, "/api/v1/query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    timeline = {}
    start = time.monotonic()
    wait_for(lambda: (value(requests) or 0) > 0, 60, "the request rate to be recorded")
    timeline["recorded_s"] = time.monotonic() - start
    healthy_until = time.monotonic() + 15               # one rule window of healthy traffic
    while time.monotonic() < healthy_until:
        assert our_alerts(base) == []                  # healthy: nothing pending or firing
        time.sleep(1)
    healthy_ok = load.ok
    fault_in()
    timeline["fault_in_s"] = time.monotonic() - start
    states = []

    def firing():
        alerts = our_alerts(base)
        for alert in alerts:
            if alert["state"] not in states:
                states.append(alert["state"])
                timeline[f"{alert['state']}_s"] = time.monotonic() - start
        return any(a["state"] == "firing" for a in alerts)
    wait_for(firing, 120, f"{ALERT} to fire")
    fired = our_alerts(base)[0]
    assert fired["labels"]["model"] == "funnel" and fired["labels"]["severity"] == "critical"
    assert float(fired["value"]) > 0.05 and "fail" in fired["annotations"]["summary"]
    assert states[0] == "pending" and states[-1] == "firing"
    failed_during_fault = len(load.failed)
    fault_out()
    timeline["fault_out_s"] = time.monotonic() - start
    ok_at_fault_out = load.ok
    wait_for(lambda: our_alerts(base) == [], 120, f"{ALERT} to resolve")
    timeline["resolved_s"] = time.monotonic() - start
    assert value(ratio) <= 0.05                        # back under the alert's threshold
    assert healthy_ok > 0 and failed_during_fault > 0 and set(load.failed) == {"500"}
    assert load.ok > ok_at_fault_out                   # served again after the fault
    timeline = {k: round(v, 1) for k, v in timeline.items()}
    print(f"\nalert timeline (s from load start; windows {RULE_WINDOW}, for {ALERT_FOR}, "
          f"every {INTERVAL}): {json.dumps(timeline)}; requests ok {load.ok}, "
          f"failed {len(load.failed)}")
    return timeline


def test_an_injected_fault_fires_the_failure_rate_alert_and_its_removal_resolves_it(stack):
    ask = lambda client: client.infer("funnel", {"X": np.ones((1, 4), np.float32)})  # noqa: E731
    with Load(lambda: TritonClient.for_server(stack["server"]), ask) as load:
        timeline = fault_timeline(stack["prometheus"], load, stack["fault"].touch,
                                  stack["fault"].unlink)
    (stack["log"] / "timeline.json").write_text(json.dumps(timeline))


# ---- the real funnel ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def funnel_stack(small_repo, tmp_path_factory, prometheus_binary):
    """The session's small funnel (four stages and the router) served by `recfunnel serve`, and
    a Prometheus scraping it."""
    root = tmp_path_factory.mktemp("alerting-funnel")
    repo = copy_repo(small_repo, root / "triton_repo")
    with recfunnel_serve(repo, root / "tritonserver.log") as served:
        target = f"127.0.0.1:{served['ports'][2]}"
        with prometheus(root, prometheus_binary, target, short_rules_file(root)) as base:
            yield {**served, "prometheus": base, "root": root}


def test_a_stage_failing_every_request_of_the_real_funnel_fires_the_alert_until_it_is_fixed(
        funnel_stack, small_run):
    """The fault: an experiment whose one arm weighs an objective the heavy ranker does not
    have, so that stage fails every request and the funnel raises (HTTP 500, a BACKEND
    failure); removing the experiment file is the fix."""
    from recfunnel.experiments.assignment import EXPERIMENT_FILE, Arm, Experiment
    from recfunnel.serving.funnel_client import FunnelClient

    experiment = funnel_stack["repo"] / EXPERIMENT_FILE
    broken = Experiment("broken", [Arm("only", 1.0, {"no_such_objective": 1.0})])
    # the most active users: known to every stage, so each request reaches the heavy ranker
    events = pd.read_parquet(small_run.dir / "data" / "events", columns=["user_id"])
    users = events["user_id"].value_counts().index[:3].to_numpy()
    with Load(lambda: FunnelClient(funnel_stack["http"]),
              lambda client: client.recommend(users, k=5)) as load:
        timeline = fault_timeline(funnel_stack["prometheus"], load,
                                  lambda: broken.save(experiment), experiment.unlink)
    (funnel_stack["root"] / "timeline.json").write_text(json.dumps(timeline))
