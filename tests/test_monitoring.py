"""Monitoring: monitoring/ (Prometheus config, rules, Grafana) and recfunnel.monitoring.

promtool (fetched by scripts/get_promtool.sh when not on PATH) checks the config and the rules
and runs the rules' unit tests; the dashboard's and the rules' expressions may name only
metrics a real Triton exposes or rules the rules file records; and recfunnel.monitoring, on a
real tritonserver with toy python models, counts exactly the requests that were sent.
"""
import json
import math
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from recfunnel.monitoring import (MetricsError, histogram_quantile, parse_exposition,
                                  serving_window)
from recfunnel.serving import ServingError, TritonClient, TritonServer
from test_triton_server import GREET, python_model_config, write_model

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "rules" / "recfunnel.rules.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "recfunnel.json"
PROMETHEUS_BUILTINS = {"up"}       # series Prometheus writes itself for every target


@pytest.fixture(scope="session")
def promtool() -> str:
    got = subprocess.run([str(REPO / "scripts" / "get_promtool.sh")], capture_output=True,
                         text=True)
    if got.returncode != 0:
        pytest.fail(f"no promtool for the monitoring checks: {got.stderr.strip()}")
    return got.stdout.strip()


def run_promtool(promtool: str, *args: str) -> str:
    got = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=REPO)
    assert got.returncode == 0, f"promtool {' '.join(args)} failed:\n{got.stdout}{got.stderr}"
    return got.stdout + got.stderr


def test_prometheus_config_is_valid_and_loads_the_rules_file(promtool):
    out = run_promtool(promtool, "check", "config", "monitoring/prometheus.yml")
    assert "1 rule files found" in out             # the rules, not their unit tests
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    triton = next(job for job in config["scrape_configs"] if job["job_name"] == "triton")
    assert triton["static_configs"][0]["targets"] == ["triton:8002"]


def test_rules_are_valid(promtool):
    run_promtool(promtool, "check", "rules", str(RULES.relative_to(REPO)))


def test_rules_unit_tests_pass(promtool):
    out = run_promtool(promtool, "test", "rules", "monitoring/rules/recfunnel.rules.test.yml")
    assert "SUCCESS" in out


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def test_rules_cover_latency_errors_cpu_memory_and_target_down():
    alerts = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(alerts) == {"RecfunnelTritonDown", "RecfunnelLatencyP95High",
                           "RecfunnelLatencyP99High", "RecfunnelErrorRateHigh",
                           "RecfunnelCpuHigh", "RecfunnelMemoryHigh"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_has_the_panels_on_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    for wanted in ("Requests per second", "Latency p50 / p95 / p99", "Non-success rate",
                   "Queue vs compute time", "CPU", "Memory"):
        assert wanted in titles
    latency = next(p for p in dashboard["panels"] if p["title"] == "Latency p50 / p95 / p99")
    assert [t["legendFormat"] for t in latency["targets"]] == [
        "{{model}} p50", "{{model}} p95", "{{model}} p99"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    provisioned = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources" /
                                  "prometheus.yml").read_text())["datasources"][0]
    assert provisioned["url"] == "http://prometheus:9090"
    assert variables["datasource"]["current"]["value"] == provisioned["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert all('model=~"$model"' in e for e in dashboard_expressions() if "model" in e)
    providers = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards" /
                                "recfunnel.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


# PromQL words that look like metric names; label lists after them are labels, not metrics.
GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
OPERATORS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric (and recorded rule) names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)         # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)          # label matchers, ranges
    expr = re.sub(GROUPING, "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", expr):
        is_function = expr[match.end():].lstrip().startswith("(")
        if not is_function and match[0] not in OPERATORS:
            names.add(match[0])
    return names


def test_metric_names_reads_promql():
    assert metric_names('sum by (model) (rate(x_total{model=~"a|b"}[5m])) / 1e6 / '
                        '(y:z:rate5m > 0) and on (model) up') == {"x_total", "y:z:rate5m", "up"}


# --- recfunnel.monitoring on hand-written exposition text -------------------------------------

BEFORE = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="funnel",version="1"} 10
nv_inference_request_failure{model="funnel",reason="BACKEND",version="1"} 1
nv_inference_request_failure{model="funnel",reason="OTHER",version="1"} 0
nv_inference_request_duration_us{model="funnel",version="1"} 100000
nv_inference_queue_duration_us{model="funnel",version="1"} 1000
nv_inference_compute_infer_duration_us{model="funnel",version="1"} 90000
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us_count{model="funnel",version="1"} 10
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.5"} 9000
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.95"} 12000
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.99"} 13000
nv_cpu_utilization 0.25
nv_cpu_memory_total_bytes 1000
nv_cpu_memory_used_bytes 400
"""

AFTER = """\
nv_inference_request_success{model="funnel",version="1"} 40
nv_inference_request_success{model="funnel",version="2"} 20
nv_inference_request_failure{model="funnel",reason="BACKEND",version="1"} 4
nv_inference_request_failure{model="funnel",reason="OTHER",version="2"} 1
nv_inference_request_duration_us{model="funnel",version="1"} 400000
nv_inference_request_duration_us{model="funnel",version="2"} 300000
nv_inference_queue_duration_us{model="funnel",version="1"} 7000
nv_inference_compute_infer_duration_us{model="funnel",version="1"} 290000
nv_inference_compute_infer_duration_us{model="funnel",version="2"} 200000
nv_inference_request_summary_us_count{model="funnel",version="1"} 40
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.5"} 10000
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.95"} 15000
nv_inference_request_summary_us{model="funnel",version="1",quantile="0.99"} 20000
nv_inference_request_summary_us_count{model="funnel",version="2"} 20
nv_inference_request_summary_us{model="funnel",version="2",quantile="0.5"} 11000
nv_inference_request_summary_us{model="funnel",version="2",quantile="0.95"} 14000
nv_inference_request_summary_us{model="funnel",version="2",quantile="0.99"} 30000
nv_inference_request_summary_us_count{model="idle",version="1"} 0
nv_inference_request_summary_us{model="idle",version="1",quantile="0.5"} Nan
nv_cpu_utilization 0.5
nv_cpu_memory_total_bytes 1000
nv_cpu_memory_used_bytes 600
"""


def test_parser_reads_names_labels_values_and_types():
    scrape = parse_exposition(
        '# HELP odd A metric\n# TYPE odd gauge\n# a free comment\n\n'
        'odd{path="C:\\\\tmp",quote="say \\"hi\\"",nl="a\\nb",} +Inf 1700000000000\n'
        'bare 3e-3\nnan_metric{model="x"} Nan\nneg{a="}"} -Inf\n')
    odd, bare, nan, neg = scrape.samples
    assert (odd.name, odd.value) == ("odd", math.inf)
    assert odd.labels == {"path": "C:\\tmp", "quote": 'say "hi"', "nl": "a\nb"}
    assert (bare.name, bare.labels, bare.value) == ("bare", {}, 0.003)
    assert math.isnan(nan.value) and nan.labels == {"model": "x"}
    assert neg.labels == {"a": "}"} and neg.value == -math.inf
    assert scrape.types == {"odd": "gauge"}
    assert parse_exposition(BEFORE).types["nv_inference_request_summary_us"] == "summary"


@pytest.mark.parametrize("line, message", [
    ("just_a_name", "line 2 is not a sample"),
    ("m{model=unquoted} 1", "not name=\"value\" pairs"),
    ("m{model=\"x\"} twelve", "'twelve' is not a number")])
def test_parser_names_the_bad_line(line, message):
    with pytest.raises(MetricsError, match=re.escape(message)):
        parse_exposition(f"good 1\n{line}\n")


def test_window_counts_summary_quantiles_and_means_per_model():
    window = serving_window(parse_exposition(BEFORE), parse_exposition(AFTER))
    funnel = window.models["funnel"]
    assert (funnel.successes, funnel.failures, funnel.requests) == (50, 4, 54)
    assert funnel.failures_by_reason == {"BACKEND": 3, "OTHER": 1}
    assert funnel.non_success_rate == pytest.approx(4 / 54)
    # Summaries: the worst version's quantile, as the recording rules' max by (model).
    assert (funnel.p50_ms, funnel.p95_ms, funnel.p99_ms) == (11.0, 15.0, 30.0)
    assert funnel.latency_source == "summary"
    assert funnel.mean_request_ms == pytest.approx(600 / 50)      # 600 ms over 50 requests
    assert funnel.mean_queue_ms == pytest.approx(6 / 50)
    assert funnel.mean_compute_ms == pytest.approx(400 / 50)
    assert "idle" not in window.models                            # no counters, no requests
    assert (window.cpu_utilization, window.memory_used_fraction) == (0.5, 0.6)


def test_window_without_requests_has_no_rate_and_no_quantiles():
    window = serving_window(parse_exposition(AFTER), parse_exposition(AFTER))
    funnel = window.models["funnel"]
    assert funnel.requests == 0 and math.isnan(funnel.non_success_rate)
    assert math.isnan(funnel.p99_ms) and funnel.latency_source == "none"
    assert math.isnan(funnel.mean_request_ms)


def test_histogram_quantile_interpolates_linearly_like_prometheus():
    buckets = [(0.1, 10), (0.5, 60), (1.0, 90), (math.inf, 100)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * 40 / 50)
    assert histogram_quantile(0.05, buckets) == pytest.approx(0.05)     # from 0 in the first
    assert histogram_quantile(0.99, buckets) == 1.0          # in +Inf: the highest finite bound
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0), (math.inf, 0)]))
    with pytest.raises(MetricsError, match="Inf"):
        histogram_quantile(0.5, [(1.0, 3)])


def test_window_reads_a_histogram_from_the_bucket_deltas():
    def with_buckets(text, counts):
        return parse_exposition(text + "".join(
            f'lat_ms_bucket{{model="funnel",version="1",le="{le}"}} {count}\n'
            for le, count in zip(("10", "20", "40", "+Inf"), counts)))
    # 100 requests between the scrapes: 50 up to 10 ms, 40 in 10-20 ms, 10 in 20-40 ms.
    window = serving_window(with_buckets(BEFORE, [5, 5, 5, 5]),
                            with_buckets(AFTER, [55, 95, 105, 105]), latency_metric="lat_ms")
    funnel = window.models["funnel"]
    assert funnel.latency_source == "histogram"
    assert funnel.p50_ms == pytest.approx(10.0)
    assert funnel.p95_ms == pytest.approx(20 + 20 * 5 / 10)
    assert funnel.p99_ms == pytest.approx(20 + 20 * 9 / 10)


def test_a_missing_metric_names_the_flag_that_provides_it():
    without_summary = "\n".join(line for line in AFTER.splitlines() if "summary" not in line)
    with pytest.raises(MetricsError, match="summary_latencies=true"):
        serving_window(parse_exposition(without_summary), parse_exposition(without_summary))
    without_cpu = AFTER.replace("nv_cpu_utilization 0.5\n", "")
    with pytest.raises(MetricsError, match="'nv_cpu_utilization'.*allow-cpu-metrics"):
        serving_window(parse_exposition(BEFORE), parse_exposition(without_cpu))


def test_a_restarted_server_is_an_error_not_negative_counts():
    with pytest.raises(MetricsError, match="restarted"):
        serving_window(parse_exposition(AFTER), parse_exposition(BEFORE))


# --- a real tritonserver ------------------------------------------------------------------------

# Refuses negative input by raising: Triton counts an exception in execute as a failed request
# (reason BACKEND). An error *response* would count as a success (see the last test).
CHECKED = (python_model_config("X TYPE_FP32 -1", "Y TYPE_FP32 -1"), """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            if (x < 0).any():
                raise ValueError("X must not be negative")
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x + 1)]))
        return responses
""")
N_GOOD, N_BAD = 40, 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("monitoring") / "repo"
    write_model(repo, "checked", CHECKED)
    write_model(repo, "greet", GREET)
    with TritonServer(repo, log_path=repo.parent / "tritonserver.log") as server:
        yield server


def scrape(client: TritonClient):
    return parse_exposition(client.metrics_text())


def scrape_when_counted(client: TritonClient, before, model: str, requests: int):
    """The next scrape that counts `requests` more of `model` and has the host's gauges.

    The backend reports a request's statistics just after sending its response, and Triton
    reads CPU and memory every 2 s (0 until then), so a scrape right away may miss them.
    """
    deadline = time.monotonic() + 20
    while True:
        after = scrape(client)
        window = serving_window(before, after)
        if (window.models[model].requests >= requests and window.memory_total_bytes > 0) \
                or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


@pytest.mark.server
def test_every_expression_names_a_triton_metric_or_a_recorded_rule(server):
    with TritonClient.for_server(server) as client:
        exposed = {sample.name for sample in scrape(client).samples}
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][1]["definition"]
    model_list = re.fullmatch(r"label_values\((\w+), model\)", variable)[1]  # the $model list
    expressions = dashboard_expressions() + [rule["expr"] for rule in rules()]
    for expr in expressions + [model_list]:
        unknown = metric_names(expr) - exposed - recorded - PROMETHEUS_BUILTINS
        assert not unknown, f"{expr!r} reads {unknown}: neither Triton nor the rules have them"
    used = set().union(*map(metric_names, expressions))
    assert recorded <= used                               # every rule is used somewhere
    assert {"nv_inference_request_summary_us", "nv_cpu_utilization",
            "nv_cpu_memory_used_bytes", "nv_inference_request_failure"} <= used & exposed


@pytest.mark.server
def test_window_counts_exactly_what_a_real_server_answered(server):
    bad = np.random.default_rng(5).permutation([False] * N_GOOD + [True] * N_BAD)
    with TritonClient.for_server(server) as client:
        before = scrape(client)
        good_ms, refusals = [], []
        for is_bad in bad:
            x = np.full((1, 4), -1.0 if is_bad else 1.0, np.float32)
            started = time.perf_counter()
            try:
                client.infer("checked", {"X": x})
            except ServingError as e:
                refusals.append(e.status)
                continue
            good_ms.append((time.perf_counter() - started) * 1e3)
        window = serving_window(before, scrape_when_counted(client, before, "checked",
                                                            N_GOOD + N_BAD))
    assert len(good_ms) == N_GOOD and refusals == ["500"] * N_BAD      # as the client saw it
    checked = window.models["checked"]
    assert (checked.successes, checked.failures) == (N_GOOD, N_BAD)
    assert checked.failures_by_reason == {"BACKEND": N_BAD}
    assert checked.non_success_rate == pytest.approx(N_BAD / (N_GOOD + N_BAD))
    assert window.models["greet"].requests == 0
    # Triton times each request inside the client's round trip, so its quantiles (values it
    # observed, within the summary's rank error) lie under the client's slowest request.
    assert checked.latency_source == "summary"
    assert 0 < checked.p50_ms <= checked.p95_ms <= checked.p99_ms <= max(good_ms)
    assert all(math.isfinite(v) for v in (checked.p50_ms, checked.p95_ms, checked.p99_ms))
    assert checked.p50_ms <= np.percentile(good_ms, 75)
    assert 0 < checked.mean_request_ms <= np.mean(good_ms)
    assert checked.mean_queue_ms + checked.mean_compute_ms <= checked.mean_request_ms
    assert 0 < window.cpu_utilization <= 1 and 0 < window.memory_used_fraction < 1


@pytest.mark.server
def test_what_tritons_failure_counter_does_not_see(server):
    """Triton 2.51: a python model's error response is a success, and a request Triton
    refuses before the model is counted nowhere (triton-inference-server/server#7713)."""
    with TritonClient.for_server(server) as client:
        before = scrape(client)
        for _ in range(3):
            with pytest.raises(ServingError, match="NAME is empty") as error:
                client.infer("greet", {"NAME": np.array([[b""]], dtype=object)})
            assert error.value.status == "400"
        with pytest.raises(ServingError, match="data-type"):
            client.infer("checked", {"X": np.zeros((1, 2), np.int64)})   # wrong datatype
        window = serving_window(before, scrape_when_counted(client, before, "greet", 3))
    assert (window.models["greet"].successes, window.models["greet"].failures) == (3, 0)
    assert window.models["checked"].requests == 0
