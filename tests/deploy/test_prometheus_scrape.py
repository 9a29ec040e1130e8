"""Integration: the real Prometheus server scrapes the running service, evaluates the
recording and alert rules, and answers the dashboard's queries."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

from streamweights.config import load_config
from streamweights.runtime.service import Service
from tests.deploy.dashboard import concrete, load, panel_queries
from tests.deploy.metric_names import RULES_FILE, recorded_series
from tests.deploy.test_image import free_port
from tests.deploy.tools import REPO, tool

#: Series the embedded demo never creates: the Kafka runtime's, and dead letters (a
#: labelled counter has no series before its first increment; the demo has no bad record).
NO_DATA_IN_THE_DEMO = ("kafka", "invalid_records")
#: Rules are evaluated every 30 s in production; here every second, so the test waits
#: for two scrapes and one evaluation, not for half a minute.
FAST_INTERVAL = "1s"


def _query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": expression})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait_for(port: int, expression: str, process, timeout: float = 90.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited: {process.stderr.read().decode()[-3000:]}")
        try:
            result = _query(port, expression)
        except (urllib.error.URLError, ConnectionError):
            result = []
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"prometheus returned nothing for {expression} in {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture
def running_service(tmp_path):
    """The embedded demo on a free port, long enough to outlast the test."""
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    document["source"]["events"] = 400_000
    document["state_dir"] = str(tmp_path / "state")
    document["http"] = {"host": "127.0.0.1", "port": free_port()}
    document["outputs"] = {"adapted": None, "weights": None, "dead_letter": None}
    document["logging"] = {"format": "json", "progress_every_seconds": 1}
    document["streams"][0]["publish"] = {"every_labels": 200, "every_seconds": 5}
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(document))
    service = Service(load_config(path))
    service.start_http()
    worker = threading.Thread(target=service.run, daemon=True)
    worker.start()
    try:
        yield service
    finally:
        service.request_stop()
        worker.join(timeout=60)
        service.close()


@pytest.fixture
def prometheus(tmp_path, running_service):
    """The Debian prometheus binary scraping the service every second, with the rules
    file loaded (group intervals shortened to FAST_INTERVAL)."""
    rules = yaml.safe_load(RULES_FILE.read_text())
    for group in rules["groups"]:
        group["interval"] = FAST_INTERVAL
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    config = {"global": {"scrape_interval": FAST_INTERVAL, "evaluation_interval": FAST_INTERVAL},
              "rule_files": ["rules.yml"],
              "scrape_configs": [{"job_name": "streamweights", "static_configs": [
                  {"targets": [f"127.0.0.1:{running_service.http.port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--web.enable-lifecycle"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield port, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_prometheus_scrapes_the_service_and_evaluates_the_rules(prometheus):
    """Scenario: the service replays the demo with /metrics on a free port; a real
    Prometheus scrapes it every second with streamweights.rules.yml loaded.
    We expect: the target is up; the documented streamweights_ series are stored with
    the demo stream's labels; the recording rules produce series (throughput > 0,
    ensemble weights summing to 1, adapted-minus-raw-best loss); every rule evaluates
    without error; every dashboard query runs, and those that do not need Kafka return
    data."""
    port, process = prometheus
    up = _wait_for(port, 'up{job="streamweights"} == 1', process)
    assert len(up) == 1
    names = {series["metric"]["__name__"] for series in
             _wait_for(port, '{__name__=~"streamweights_.+", job="streamweights"}', process)}
    for name in ("streamweights_events_total", "streamweights_ready",
                 "streamweights_ensemble_weight", "streamweights_log_loss",
                 "streamweights_update_latency_seconds_bucket"):
        assert name in names, name
    rate = _wait_for(port, 'streamweights:events:rate5m{kind="prediction"}', process)
    assert rate[0]["metric"]["stream"] == "demo" and float(rate[0]["value"][1]) > 0
    weights = _wait_for(port, "sum by (stream) (streamweights:ensemble_weight:max)", process)
    assert abs(float(weights[0]["value"][1]) - 1.0) < 1e-6
    _wait_for(port, "streamweights:log_loss:adapted_minus_raw_best", process)
    _wait_for(port, "streamweights:update_latency_seconds:p99", process)
    # the demo turns the conformal layer and the label-free estimates on
    gaps = _wait_for(port, "streamweights:conformal_coverage:rolling_minus_target", process)
    assert {g["metric"]["alpha"] for g in gaps} == {"0.1", "0.05"}
    assert all(abs(float(g["value"][1])) < 0.1 for g in gaps), gaps
    _wait_for(port, 'streamweights_performance{source="estimated",metric="accuracy"}', process)
    _wait_for(port, "streamweights:estimated_accuracy:drop_from_6h_max", process)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as reply:
        groups = json.loads(reply.read())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules if r["type"] == "recording"} == recorded_series()
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken

    # Every dashboard query is valid; those the demo feeds return data (waited for: the
    # drift counter, a labelled series, exists only from the demo's first drift alarm,
    # after ~12,000 labels, and its recording rule needs two samples of it).
    for _, expression in panel_queries(load()):
        if any(word in expression for word in NO_DATA_IN_THE_DEMO):
            _query(port, concrete(expression))
        else:
            _wait_for(port, concrete(expression), process)
