"""HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``, ``/v1/streams``,
``/v1/streams/{stream}/weights``, ``/v1/streams/{stream}/artifacts/{version}``.

Served from daemon threads. Handlers only read values the processing loop publishes by
replacing whole objects (a dict, a bytes record), so no lock is needed and a slow
scraper never blocks processing.

Hardening (the endpoints face a network in Kafka mode):

* a real listen backlog (:data:`LISTEN_BACKLOG`; socketserver's default of 5 made 20
  concurrent scrapers wait seconds on SYN retries), one thread per connection, at most
  :data:`MAX_CONNECTIONS` at once (more get a 503 and are closed);
* an idle/read timeout per connection (:data:`IDLE_TIMEOUT_SECONDS`): a silent client,
  or one whose request line and headers take longer than that in all (a byte every few
  seconds), is dropped instead of holding a thread;
* every handler is total: a bad path or version is a 400/404 with a JSON body, an
  unexpected error a 500 and one log line; a client that disconnects is a debug log
  line, never a traceback on stderr;
* stream names must be configured streams, versions short ASCII digit strings, and the
  artifact store confines paths to its root;
* optional bearer token for ``/v1/...`` (:func:`load_http_token`: ``http.token_file``
  or ``$STREAMWEIGHTS_HTTP_TOKEN``), compared in constant time; ``/metrics``,
  ``/healthz`` and ``/readyz`` stay open for Prometheus and the kubelet's probes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from streamweights.runtime.exceptions import RuntimeSetupError
from streamweights.runtime.metrics import ServiceMetrics

log = logging.getLogger("streamweights")

#: The environment variable a token is read from when ``http.token_file`` is not set.
TOKEN_ENVIRONMENT = "STREAMWEIGHTS_HTTP_TOKEN"
#: Connections the kernel queues before they are accepted.
LISTEN_BACKLOG = 1024
#: Seconds a connection may stay silent (between requests, or mid-request) before it is
#: closed; Prometheus sends a scrape's request at once, so 10 s is generous.
IDLE_TIMEOUT_SECONDS = 10.0
#: Connections served at once (each holds a thread while open, until it closes or idles
#: out); far above what scrapers and clients use, so idle sockets cannot exhaust it
#: within one idle timeout.
MAX_CONNECTIONS = 1024
#: A version is a non-negative integer of at most this many ASCII digits.
MAX_VERSION_DIGITS = 18
#: RFC 6750's token characters; a token with others (spaces, quotes) is refused at load.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_VERSION = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}", re.ASCII)
_DISCONNECTS = (ConnectionError, TimeoutError, socket.timeout)


def load_http_token(token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The bearer token ``/v1/...`` requires: the content of ``token_file`` (a mounted
    Secret; surrounding whitespace dropped), else ``$STREAMWEIGHTS_HTTP_TOKEN`` if set and
    not empty, else ``None`` (no token required). A file that cannot be read or holds no
    valid token is a :class:`RuntimeSetupError` naming ``http.token_file``."""
    if token_file is not None:
        try:
            with open(token_file, "rb") as handle:
                data = handle.read(4097)
        except OSError as error:
            raise RuntimeSetupError(f"http.token_file: cannot read {token_file} "
                                    f"({error.strerror or error})") from None
        where = f"http.token_file: {token_file}"
        if len(data) > 4096:
            raise RuntimeSetupError(f"{where}: longer than 4096 bytes; is this the token?")
        try:
            token = data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise RuntimeSetupError(f"{where}: the token must be ASCII") from None
    else:
        where = f"${TOKEN_ENVIRONMENT}"
        token = environ.get(TOKEN_ENVIRONMENT, "").strip()
        if not token:
            return None
    if not token:
        raise RuntimeSetupError(f"{where}: empty; put the token in it or remove the setting")
    if not _TOKEN.fullmatch(token):
        raise RuntimeSetupError(f"{where}: a bearer token is letters, digits and -._~+/ "
                                "(e.g. `openssl rand -hex 32`)")
    return token


class ServiceView:
    """What the HTTP side may read; written only by the processing loop."""

    def __init__(self) -> None:
        self.ready = False
        self.streams: dict[str, Any] = {}
        self.weights: dict[str, bytes] = {}
        #: The artifact store of torch streams' weight files (``None``: no torch stream).
        self.artifacts: Any = None


class _Exposition:
    """The ``/metrics`` text, generated once for every request that arrives while a
    generation is running (single flight): 50 scrapers at once cost a few generations
    (~1 ms each for the demo's series), not 50, so none waits behind the others' work.
    A request may get text whose generation began up to one generation before it
    arrived, never older. Gzipped (level 1, once per generation) for scrapers that
    accept it, as Prometheus does: the text of 1,000 default streams is ~8 MB, its gzip
    ~1/10 of that; zlib lets the service loop run while it compresses."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics
        self._condition = threading.Condition()
        self._running = False
        self._finished = 0
        self._latest: bytes | None = None
        self._gzipped: tuple[bytes, bytes] | None = None  # (text, its gzip)
        self._gzip_lock = threading.Lock()

    def text(self) -> bytes:
        with self._condition:
            if self._running:
                seen = self._finished
                while self._finished == seen:
                    self._condition.wait()
                if self._latest is not None:
                    return self._latest
            self._running = True
        body = None
        try:
            body = self._metrics.exposition()
            return body
        finally:
            with self._condition:
                self._latest = body
                self._running = False
                self._finished += 1
                self._condition.notify_all()

    def gzipped(self) -> bytes:
        """:meth:`text`, gzipped; scrapers that share a generation share its gzip."""
        body = self.text()
        with self._gzip_lock:
            if self._gzipped is None or self._gzipped[0] is not body:
                self._gzipped = (body, gzip.compress(body, compresslevel=1, mtime=0))
            return self._gzipped[1]


def _accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip: named with a quality above 0,
    else through ``*`` (RFC 9110, 12.5.3)."""
    through_wildcard = False
    for part in (header or "").split(","):
        coding, *parameters = (piece.strip().lower() for piece in part.split(";"))
        if coding not in ("gzip", "*"):
            continue
        quality = 1.0
        for parameter in parameters:
            if parameter.startswith("q="):
                try:
                    quality = float(parameter[2:])
                except ValueError:
                    quality = 0.0
        if coding == "gzip":
            return quality > 0
        through_wildcard = quality > 0
    return through_wildcard


class _Server(ThreadingHTTPServer):
    """A threading server with a real backlog, a connection cap, and errors as log
    lines instead of socketserver's tracebacks on stderr."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int, request_deadline: float) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        # Connections waiting for (or reading) a request's line and headers, with the
        # time by which those must have arrived. The socket timeout bounds each silent
        # gap; this bounds the whole: a client trickling a byte every few seconds
        # ("slowloris") is cut off too.
        self.request_deadline = request_deadline
        self._waiting: dict[Any, float] = {}
        self._waiting_lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="streamweights-http-reaper",
                                        daemon=True)
        self._reaper.start()

    def waiting(self, connection: Any) -> None:
        """``connection`` starts waiting for a request (line and headers)."""
        with self._waiting_lock:
            self._waiting[connection] = time.monotonic() + self.request_deadline

    def received(self, connection: Any) -> None:
        """``connection``'s request line and headers are in (or it is done)."""
        with self._waiting_lock:
            self._waiting.pop(connection, None)

    def _reap(self) -> None:
        interval = min(1.0, self.request_deadline / 4)
        while not self._closed.wait(interval):
            now = time.monotonic()
            with self._waiting_lock:
                late = [c for c, deadline in self._waiting.items() if deadline <= now]
                for connection in late:
                    del self._waiting[connection]
            for connection in late:  # the handler's blocked read returns; it ends quietly
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("http: %d connections open; refusing one from %s",
                        self.max_connections, _client(client_address))
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _DISCONNECTS):
            log.debug("http: client %s went away (%s)", _client(client_address),
                      type(error).__name__)
        else:
            log.warning("http: request from %s failed: %s: %s", _client(client_address),
                        type(error).__name__, _one_line(error))


class HttpServer:
    """Runs the endpoints on ``host:port`` (port 0 picks a free one) in a daemon thread.

    ``token``: the bearer token ``/v1/...`` requires (``None``: open).
    ``stream_names``: the configured streams, the only names ``/v1/streams/{stream}/...``
    accepts (``None``, for a server without a service: any name; the artifact store
    still confines paths to its root). ``idle_timeout`` / ``max_connections``:
    see :data:`IDLE_TIMEOUT_SECONDS` and :data:`MAX_CONNECTIONS`."""

    def __init__(self, host: str, port: int, view: ServiceView, metrics: ServiceMetrics,
                 token: str | None = None, stream_names: tuple[str, ...] | None = None, *,
                 idle_timeout: float = IDLE_TIMEOUT_SECONDS,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        handler = _make_handler(view, metrics, token, stream_names, idle_timeout)
        self._server = _Server((host, port), handler, max_connections, idle_timeout)
        self.port = self._server.server_address[1]
        self.host = host
        self.token_required = token is not None
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="streamweights-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.token_required and self.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("http: /v1 endpoints on %s:%d need no token; set http.token_file or "
                        "$%s (see README, HTTP)", self.host, self.port, TOKEN_ENVIRONMENT)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _client(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _one_line(error: BaseException | None) -> str:
    return " ".join(str(error).split())[:300]


def _json(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document)


def _make_handler(view: ServiceView, metrics: ServiceMetrics, token: str | None,
                  stream_names: tuple[str, ...] | None,
                  idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    expected = token.encode("ascii") if token is not None else None
    exposition = _Exposition(metrics)

    class Handler(BaseHTTPRequestHandler):
        server_version = "streamweights"
        protocol_version = "HTTP/1.1"   # keep-alive for scrapers; idle ones time out
        timeout = idle_timeout

        def log_message(self, format: str, *args: Any) -> None:
            return None  # access logs would drown the service log

        def log_error(self, format: str, *args: Any) -> None:
            log.debug("http: %s: %s", _client(self.client_address), format % args)

        def handle(self) -> None:
            try:
                super().handle()
            except _DISCONNECTS as error:
                self.close_connection = True
                log.debug("http: client %s went away (%s)", _client(self.client_address),
                          type(error).__name__)
            finally:
                self.server.received(self.connection)

        def handle_one_request(self) -> None:
            self.server.waiting(self.connection)  # line and headers due within the deadline
            super().handle_one_request()

        def parse_request(self) -> bool:
            parsed = super().parse_request()
            self.server.received(self.connection)
            return parsed

        def _send(self, status: int, body: bytes, content_type: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, message: str,
                   headers: dict[str, str] | None = None) -> None:
            self._send(status, _json({"error": message}), headers=headers)

        def do_GET(self) -> None:
            try:
                self._route()
            except _DISCONNECTS:
                raise
            except Exception as error:  # a handler bug is a 500 and a log line, not a trace
                log.warning("http: GET %s failed: %s: %s", self.path[:200],
                            type(error).__name__, _one_line(error))
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self._error(500, "internal error; see the service log")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _route(self) -> None:
            try:
                raw = urlsplit(self.path).path
                segments = [unquote(s, errors="strict") for s in raw.strip("/").split("/")]
            except (UnicodeDecodeError, ValueError):
                self._error(400, "the path is not valid percent-encoded UTF-8")
                return
            if segments == ["metrics"]:
                if _accepts_gzip(self.headers.get("Accept-Encoding")):
                    self._send(200, exposition.gzipped(), CONTENT_TYPE_LATEST,
                               {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
                else:
                    self._send(200, exposition.text(), CONTENT_TYPE_LATEST,
                               {"Vary": "Accept-Encoding"})
            elif segments == ["healthz"]:
                self._send(200, b'{"status":"ok"}')
            elif segments == ["readyz"]:
                if view.ready:
                    self._send(200, b'{"status":"ready"}')
                else:
                    self._send(503, b'{"status":"restoring"}')
            elif segments[0] == "v1":
                if self._authorized():
                    self._v1(segments[1:])
            else:
                self._error(404, f"no endpoint {raw[:200]}")

        def _authorized(self) -> bool:
            if expected is None:
                return True
            scheme, _, credentials = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    credentials.strip().encode("utf-8", "replace"), expected):
                return True
            challenge = 'Bearer realm="streamweights"'
            if scheme:
                challenge += ', error="invalid_token"'
            self._error(401, "/v1 needs 'Authorization: Bearer <token>' (http.token_file or "
                        f"${TOKEN_ENVIRONMENT} on the service)", {"WWW-Authenticate": challenge})
            return False

        def _v1(self, segments: list[str]) -> None:
            if segments == ["streams"]:
                self._send(200, _json({"streams": view.streams}))
                return
            if len(segments) < 3 or segments[0] != "streams":
                self._error(404, "no endpoint /v1/" + "/".join(segments)[:200])
                return
            stream = segments[1]
            if stream_names is not None and stream not in stream_names:
                self._error(404, f"unknown stream {stream[:200]!r}")
                return
            if segments[2:] == ["weights"]:
                record = view.weights.get(stream)
                if record is not None:
                    self._send(200, record)
                elif stream_names is not None or stream in view.streams:
                    self._error(404, f"stream {stream!r} has not published weights yet")
                else:
                    self._error(404, f"unknown stream {stream[:200]!r}")
            elif len(segments) == 4 and segments[2] == "artifacts":
                self._artifact(stream, segments[3])
            else:
                self._error(404, "no endpoint /v1/" + "/".join(segments)[:200])

        def _artifact(self, stream: str, version_text: str) -> None:
            """One stored weights version: the safetensors bytes, digest-checked, with the
            digest and version in headers."""
            if not _VERSION.fullmatch(version_text):
                self._error(400, f"version: expected an integer of at most "
                            f"{MAX_VERSION_DIGITS} digits, got {version_text[:40]!r}")
                return
            version = int(version_text)
            found = view.artifacts.read(stream, version) if view.artifacts else None
            if found is None:
                self._error(404, f"stream {stream!r} has no stored artifact version {version}")
                return
            data, manifest = found
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != manifest["digest"]:
                self._error(500, f"artifact {stream}/{version} is corrupted: digest {actual}, "
                            f"published {manifest['digest']}")
                return
            self._send(200, data, "application/octet-stream",
                       {"X-Streamweights-Digest": manifest["digest"],
                        "X-Streamweights-Version": str(manifest["version"])})

    return Handler

