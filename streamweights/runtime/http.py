"""HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``, ``/v1/streams``,
``/v1/streams/{stream}/weights``, ``/v1/streams/{stream}/artifacts/{version}``.

Served from a daemon thread. Handlers only read values the processing loop publishes by
replacing whole objects (a dict, a bytes record), so no lock is needed and a slow
scraper never blocks processing.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamweights.runtime.metrics import ServiceMetrics


class ServiceView:
    """What the HTTP side may read; written only by the processing loop."""

    def __init__(self) -> None:
        self.ready = False
        self.streams: dict[str, Any] = {}
        self.weights: dict[str, bytes] = {}
        #: The artifact store of torch streams' weight files (``None``: no torch stream).
        self.artifacts: Any = None


class HttpServer:
    """Runs the endpoints on ``host:port`` (port 0 picks a free one) in a daemon thread."""

    def __init__(self, host: str, port: int, view: ServiceView, metrics: ServiceMetrics) -> None:
        handler = _make_handler(view, metrics)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="streamweights-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(view: ServiceView, metrics: ServiceMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "streamweights"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # access logs would drown the service log

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b'{"status":"ok"}')
            elif path == "/readyz":
                if view.ready:
                    self._send(200, b'{"status":"ready"}')
                else:
                    self._send(503, b'{"status":"restoring"}')
            elif path == "/v1/streams":
                self._send(200, orjson.dumps({"streams": view.streams}))
            elif path.startswith("/v1/streams/") and path.endswith("/weights"):
                stream = unquote(path[len("/v1/streams/"):-len("/weights")])
                record = view.weights.get(stream)
                if record is not None:
                    self._send(200, record)
                elif stream in view.streams:
                    self._send(404, orjson.dumps({"error": f"stream {stream!r} has not "
                                                  "published weights yet"}))
                else:
                    self._send(404, orjson.dumps({"error": f"unknown stream {stream!r}"}))
            elif path.startswith("/v1/streams/") and "/artifacts/" in path:
                self._artifact(path)
            else:
                self._send(404, orjson.dumps({"error": f"no endpoint {path}"}))

        def _artifact(self, path: str) -> None:
            """One stored weights version: the safetensors bytes, digest-checked, with the
            digest and version in headers."""
            stream_part, _, version_part = path[len("/v1/streams/"):].rpartition("/artifacts/")
            stream = unquote(stream_part)
            if not version_part.isdigit():
                self._send(400, orjson.dumps({"error": f"version: expected an integer, got "
                                              f"{version_part!r}"}))
                return
            found = view.artifacts.read(stream, int(version_part)) if view.artifacts else None
            if found is None:
                self._send(404, orjson.dumps({"error": f"stream {stream!r} has no stored "
                                              f"artifact version {int(version_part)}"}))
                return
            data, manifest = found
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != manifest["digest"]:
                self._send(500, orjson.dumps({"error": f"artifact {stream}/{version_part} is "
                                              f"corrupted: digest {actual}, published "
                                              f"{manifest['digest']}"}))
                return
            self._send(200, data, "application/octet-stream",
                       {"X-Streamweights-Digest": manifest["digest"],
                        "X-Streamweights-Version": str(manifest["version"])})

    return Handler
