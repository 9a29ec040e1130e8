"""HTTP endpoints of a running service: /metrics, /healthz, /readyz, /v1/streams."""

from __future__ import annotations

import json
import pathlib
import threading
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from streamweights.config import load_config
from streamweights.runtime.service import Service


def _get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_endpoints_before_and_after_restore(config_factory):
    """Scenario: a service with HTTP on a free port; we look before its state is
    restored, then let it run a short replay to the end.
    We expect: /healthz answers at once, /readyz says 503 until restore is done and 200
    after; /metrics parses with prometheus-client's parser and carries the documented
    series; the weights endpoint returns exactly the last record the sink published."""
    config = load_config(config_factory("http", events=2000, http_port=0))
    service = Service(config)
    service.start_http()
    port = service.http.port
    try:
        assert _get(port, "/healthz")[0] == 200
        status, body = _get(port, "/readyz")
        assert status == 503 and json.loads(body)["status"] == "restoring"
        assert _get(port, "/v1/streams/demo/weights")[0] == 404
        worker = threading.Thread(target=service.run)
        worker.start()
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert _get(port, "/readyz")[0] == 200
        status, body = _get(port, "/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        for name in ("streamweights_events", "streamweights_labels_joined",
                     "streamweights_pending_labels", "streamweights_ensemble_weight",
                     "streamweights_log_loss", "streamweights_ece",
                     "streamweights_weights_version", "streamweights_update_latency_seconds",
                     "streamweights_checkpoint_duration_seconds", "streamweights_ready"):
            assert name in families, name
        events = {tuple(sorted(s.labels.items())): s.value
                  for s in families["streamweights_events"].samples if s.name.endswith("_total")}
        assert events[(("kind", "prediction"), ("stream", "demo"))] == 2000
        forecasters = {s.labels["forecaster"] for s in families["streamweights_log_loss"].samples}
        assert {"adapted", "raw_best", "raw:naive_bayes"} <= forecasters
        status, body = _get(port, "/v1/streams")
        assert status == 200
        streams = json.loads(body)["streams"]
        assert streams["demo"]["predictions"] == 2000
        status, body = _get(port, "/v1/streams/demo/weights")
        assert status == 200
        published = (config_factory_output(config) / "weights.jsonl").read_bytes().splitlines()
        assert body == published[-1]
        assert json.loads(body)["version"] == streams["demo"]["weights_version"]
        assert _get(port, "/v1/streams/nope/weights")[0] == 404
        assert _get(port, "/nothing")[0] == 404
    finally:
        service.close()


def config_factory_output(config):
    return pathlib.Path(config.weights_path).parent
