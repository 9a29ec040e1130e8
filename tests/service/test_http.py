"""HTTP endpoints of a running service: /metrics, /healthz, /readyz, /v1/streams."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import pathlib
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamweights.config import load_config
from streamweights.runtime.artifact_store import ArtifactStore
from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.http import TOKEN_ENVIRONMENT, HttpServer, ServiceView, load_http_token
from streamweights.runtime.metrics import ServiceMetrics
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
        # the default chain's portfolio: one gauge per candidate, as published
        portfolio = json.loads(body)["portfolio"]["weights"]
        gauges = {s.labels["candidate"]: s.value
                  for s in families["streamweights_portfolio_weight"].samples}
        assert gauges == pytest.approx(portfolio) and len(gauges) == 4
        assert sum(gauges.values()) == pytest.approx(1.0)
        assert _get(port, "/v1/streams/nope/weights")[0] == 404
        assert _get(port, "/nothing")[0] == 404
    finally:
        service.close()


def config_factory_output(config):
    return pathlib.Path(config.weights_path).parent


# -- hardening: token, confinement, total handlers, idle sockets, concurrent scrapers -----
def _request(port, path, headers=None, method="GET"):
    """One request on its own connection: ``(status, headers, body)``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _raw(port, target: bytes, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send a request line as raw bytes (http.client refuses non-ASCII): ``(status,
    body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
                       b"Connection: close\r\n\r\n")
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture
def server(tmp_path):
    """``start(**options)``: a real HttpServer on a free port over a view with stream
    'demo' (published weights, one stored artifact version 7 in a real ArtifactStore)."""
    started = []

    def start(**options):
        view = ServiceView()
        view.ready = True
        view.streams = {"demo": {"task": "classification"}}
        view.weights = {"demo": b'{"schema":1,"stream":"demo","version":3}'}
        view.artifacts = ArtifactStore(tmp_path / "state" / "artifacts")
        data = b"weights of demo v7"
        view.artifacts.write("demo", 7, data, "sha256:" + hashlib.sha256(data).hexdigest())
        options.setdefault("stream_names", ("demo",))
        server = HttpServer("127.0.0.1", 0, view, ServiceMetrics(), **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_v1_needs_the_token_and_metrics_and_probes_stay_open(server):
    """Scenario: a server with a bearer token; requests to /v1 without it, with a wrong
    one, with another scheme, and with the right one; the open endpoints without any.
    We expect: 401 with a Bearer WWW-Authenticate challenge (error="invalid_token" when
    a wrong credential came), 200 with the token; /metrics, /healthz, /readyz answer
    without a token (Prometheus and the kubelet have none)."""
    port = server(token="s3cret-token_1").port
    for path in ("/v1/streams", "/v1/streams/demo/weights", "/v1/streams/demo/artifacts/7",
                 "/v1/streams/nope/weights", "/v1/anything"):
        status, headers, body = _request(port, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"] == 'Bearer realm="streamweights"'
        assert b"s3cret" not in body
        for wrong in ("Bearer s3cret-token_2", "Bearer s3cret-token_", "Basic czNjcmV0",
                      "Bearer  ", "bearer"):
            status, headers, _ = _request(port, path, {"Authorization": wrong})
            assert status == 401, (path, wrong)
            assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    good = {"Authorization": "Bearer s3cret-token_1"}
    assert _request(port, "/v1/streams", good)[0] == 200
    assert _request(port, "/v1/streams", {"Authorization": "bearer s3cret-token_1"})[0] == 200
    status, _, body = _request(port, "/v1/streams/demo/weights", good)
    assert (status, body) == (200, b'{"schema":1,"stream":"demo","version":3}')
    assert _request(port, "/v1/streams/demo/artifacts/7", good)[2] == b"weights of demo v7"
    for path in ("/metrics", "/healthz", "/readyz"):
        assert _request(port, path)[0] == 200, path


def test_the_token_comes_from_the_token_file_or_the_environment(tmp_path, config_factory):
    """The service reads the token from `http.token_file` (a mounted Secret, trailing
    newline dropped) or, without one, from $STREAMWEIGHTS_HTTP_TOKEN; a token file that
    is empty is refused at start-up with one line naming the setting."""
    path = config_factory("token", events=200, http_port=0)
    document = yaml.safe_load(path.read_text())
    secret = tmp_path / "token.txt"
    secret.write_text("from-the-file\n")
    document["http"]["token_file"] = str(secret)
    path.write_text(yaml.safe_dump(document))
    service = Service(load_config(path))
    try:
        service.start_http()
        port = service.http.port
        assert _request(port, "/v1/streams")[0] == 401
        assert _request(port, "/v1/streams", {"Authorization": "Bearer from-the-file"})[0] == 200
        assert _request(port, "/healthz")[0] == 200
    finally:
        service.close()
    assert load_http_token(None, {TOKEN_ENVIRONMENT: " from-env "}) == "from-env"
    assert load_http_token(None, {TOKEN_ENVIRONMENT: ""}) is None
    assert load_http_token(None, {}) is None
    assert load_http_token(str(secret), {TOKEN_ENVIRONMENT: "other"}) == "from-the-file"
    secret.write_text("\n")
    with pytest.raises(RuntimeSetupError, match=r"^http.token_file: .*: empty"):
        load_http_token(str(secret), {})
    secret.write_text("two words")
    with pytest.raises(RuntimeSetupError, match=r"^http.token_file: .*bearer token is"):
        load_http_token(str(secret), {})


def test_artifact_paths_stay_inside_the_store(server, tmp_path):
    """Scenario: a file planted one folder above the artifact root under the name that
    `/v1/streams/%2E%2E/artifacts/7` used to read; requests that try to reach it with
    encoded dots, slashes and unconfigured names.
    We expect: each is a 400/404 with a JSON error and never the planted bytes, whether
    the server checks names against the configured streams or only the store confines
    them; the store itself refuses '.' and '..'; the real artifact still serves."""
    checked, unchecked = server().port, server(stream_names=None).port
    above = tmp_path / "state"
    (above / "0000000007.safetensors").write_bytes(b"SECRET outside the root")
    (above / "0000000007.json").write_bytes(json.dumps(
        {"stream": "x", "version": 7, "digest": "sha256:" + hashlib.sha256(
            b"SECRET outside the root").hexdigest(), "bytes": 23}).encode())
    for path in ("/v1/streams/%2E%2E/artifacts/7", "/v1/streams/../artifacts/7",
                 "/v1/streams/%2e%2e/artifacts/0000000007", "/v1/streams/./artifacts/7",
                 "/v1/streams/demo%2F..%2F..%2F/artifacts/7", "/v1/streams/%2F/artifacts/7",
                 "/v1/streams/demo/../../artifacts/7", "/v1/streams/%252E%252E/artifacts/7"):
        for port in (checked, unchecked):  # with and without the configured-name check
            status, _, body = _request(port, path)
            assert status in (400, 404), path
            assert b"SECRET" not in body, path
            assert "error" in json.loads(body), path
    store = ArtifactStore(tmp_path / "state" / "artifacts")
    assert store.read("..", 7) is None and store.read(".", 7) is None
    assert store.versions("..") == []
    with pytest.raises(ValueError, match="cannot name an artifact folder"):
        store.write("..", 8, b"x", "sha256:x")
    assert _request(checked, "/v1/streams/demo/artifacts/7")[2] == b"weights of demo v7"


def test_every_handler_is_total_and_disconnects_leave_no_traceback(server, capfd, caplog):
    """Scenario: malformed versions (a superscript digit, 5,000 digits, signs, dots),
    undecodable percent-escapes, unknown endpoints, unsupported methods; then clients
    that reset their connection right after sending a request.
    We expect: 400/404/405-family answers with a body, never a 500; nothing on the
    process's stderr (no traceback) and the server still answers afterwards; a
    disconnect is at most a one-line debug log record."""
    port = server().port
    cases = {
        "/v1/streams/demo/artifacts/%C2%B2": 400, "/v1/streams/demo/artifacts/²": 400,
        "/v1/streams/demo/artifacts/" + "9" * 5000: 400, "/v1/streams/demo/artifacts/-1": 400,
        "/v1/streams/demo/artifacts/1.5": 400, "/v1/streams/demo/artifacts/%20": 400,
        "/v1/streams/demo/artifacts/99": 404, "/v1/streams/demo/artifacts/": 404,
        "/v1/streams/%FF%FE/weights": 400, "/v1/streams/nope/weights": 404,
        "/v1/streams/demo": 404, "/v1/streams/demo/weights/extra": 404, "/v1": 404,
        "/nothing": 404, "/metrics/../../etc/passwd": 404, "//": 404, "/?": 404,
        "http://example.com/healthz": 200, "/healthz?x=%FF": 200,
    }
    for path, expected in cases.items():
        status, body = _raw(port, path.encode("utf-8"))
        assert status == expected, (path[:60], status)
        assert body, path[:60]
    assert _raw(port, b"/healthz", b"POST")[0] == 501
    assert _raw(port, b"/v1/streams/demo/artifacts/\xff")[0] == 400
    assert _raw(port, b"/v1/streams/demo/artifacts/\xb2")[0] == 400  # '\xb2'.isdigit()
    assert _raw(port, b"/\x00")[0] in (400, 404)
    assert _request(port, "/healthz", method="HEAD")[0] == 200
    caplog.set_level(logging.DEBUG, logger="streamweights")
    for index in range(30):
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        path = "/metrics" if index % 2 else "/v1/streams/demo/artifacts/7"
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if index % 3 == 0:
            time.sleep(0.01)
        client.close()  # RST: the server's read or write fails mid-request
        # a half-sent request line, then gone
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"GET /metr")
        client.close()
    time.sleep(0.5)
    assert _request(port, "/healthz")[0] == 200
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and "Exception" not in captured.err, captured.err
    for record in caplog.records:
        assert record.exc_info is None and "\n" not in record.getMessage()
        assert record.levelno <= logging.DEBUG or "failed" not in record.getMessage()


def test_idle_connections_do_not_hold_the_server(server):
    """Scenario: 200 connections that send nothing and 50 that send half a request line,
    all left open; then a normal request.
    We expect: the request answers at once (each connection has its own thread, the
    backlog is real); after the idle timeout the server has closed the silent ones (a
    read on them sees EOF) instead of holding a thread per socket for ever."""
    port = server(idle_timeout=1.0).port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
    try:
        for client in slow:
            client.sendall(b"GET /metr")
        started = time.monotonic()
        assert _request(port, "/healthz")[0] == 200
        assert time.monotonic() - started < 2.0
        time.sleep(2.5)
        closed = 0
        for client in idle + slow:
            client.settimeout(5)
            try:
                closed += client.recv(4096) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == len(idle) + len(slow)
        assert _request(port, "/healthz")[0] == 200
    finally:
        for client in idle + slow:
            client.close()


def test_a_request_trickled_byte_by_byte_is_cut_off(server):
    """Scenario ("slowloris"): a client sends its request line and headers one byte every
    0.2 s, so no single read ever waits as long as the 1 s idle timeout.
    We expect: the server closes the connection once the request has taken longer than
    the timeout in all (well before the 40 s the trickle would take), and keeps serving."""
    port = server(idle_timeout=1.0).port
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 150 + b"\r\n\r\n"
    started = time.monotonic()
    cut_off = None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        for byte in request:
            try:
                client.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_off = time.monotonic() - started
                break
            readable, _, _ = select.select([client], [], [], 0.2)
            if readable:
                try:
                    data = client.recv(4096)
                except ConnectionResetError:
                    data = b""
                if data == b"":
                    cut_off = time.monotonic() - started
                    break
    assert cut_off is not None, "the trickled request was served to the end"
    assert cut_off < 5.0, cut_off
    assert _request(port, "/healthz")[0] == 200


def test_fifty_concurrent_scrapers_all_answer(server):
    """Scenario: 50 scrapers start together (a barrier), each scraping /metrics 10 times
    on a fresh connection, as Prometheus instances and dashboards do.
    We expect: all 500 scrapes answer 200 with a parseable body, none times out (a
    backlog of 5 made 20 scrapers wait seconds on SYN retries, one timed out); the
    latency figures are printed (bench/http_scrapers.py measures them properly)."""
    port = server().port
    barrier = threading.Barrier(50)
    latencies: list[float] = []
    errors: list[str] = []

    def scrape() -> None:
        barrier.wait()
        for _ in range(10):
            started = time.perf_counter()
            try:
                status, _, body = _request(port, "/metrics")
                if status != 200 or b"streamweights_ready" not in body:
                    errors.append(f"status {status}")
            except OSError as error:
                errors.append(repr(error))
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=scrape) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:5]
    assert len(latencies) == 500
    ordered = sorted(latencies)
    p99 = ordered[int(0.99 * len(ordered)) - 1]
    print(f"50 concurrent scrapers: p50 {ordered[250] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
          f" max {ordered[-1] * 1000:.1f} ms")
    assert ordered[-1] < 5.0  # a timeout-sized wait would mean the backlog overflowed


def test_metrics_are_gzipped_for_scrapers_that_accept_it():
    """Scenario: a server over metrics with per-stream series for 300 streams; /metrics
    asked as Prometheus asks (``Accept-Encoding: gzip``), with gzip refused (``q=0``),
    through ``*``, and with no header.
    We expect: gzip (``Content-Encoding: gzip``) whose content is byte for byte the
    plain text, which is prometheus_client's ``generate_latest`` of the registry, and
    several times smaller; plain text when gzip is not accepted; ``Vary`` each time."""
    metrics = ServiceMetrics()
    for number in range(300):
        stream = f"segment-{number:05d}"
        metrics.pending.labels(stream).set(number)
        for forecaster in ("adapted", "raw_best"):
            metrics.log_loss.labels(stream, forecaster).set(0.3 + number / 1e4)
    view = ServiceView()
    view.ready = True
    server = HttpServer("127.0.0.1", 0, view, metrics)
    server.start()
    try:
        plain_answers = []
        for header in (None, "gzip;q=0", "identity"):
            status, headers, body = _request(server.port, "/metrics",
                                             {"Accept-Encoding": header} if header else {})
            assert status == 200 and "Content-Encoding" not in headers, header
            assert headers["Vary"] == "Accept-Encoding"
            plain_answers.append(body)
        assert plain_answers[0] == generate_latest(metrics.registry)
        assert len(set(plain_answers)) == 1
        for header in ("gzip", "deflate, gzip;q=0.5", "*"):
            status, headers, body = _request(server.port, "/metrics",
                                             {"Accept-Encoding": header})
            assert status == 200 and headers["Content-Encoding"] == "gzip", header
            assert int(headers["Content-Length"]) == len(body)
            assert gzip.decompress(body) == plain_answers[0]
            assert len(body) * 5 < len(plain_answers[0])
    finally:
        server.stop()
