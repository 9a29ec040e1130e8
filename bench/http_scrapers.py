"""HTTP under concurrent scrapers: latency of ``/metrics`` with N scrapers at once.

Goal (issue 12): 50 concurrent scrapers get p99 < 100 ms. Before the hardening the
server's listen backlog was socketserver's default of 5: connections beyond it waited on
SYN retransmits (1 s, 3 s, ...), so 20 scrapers saw a p99 of 4.9 s and a timeout.

What runs: the real service, ``python -m streamweights run`` in its own process (so the
scrapers' client work does not share its interpreter), on ``configs/demo.yaml``'s
stream with HTTP on a free port, in one of two states (``--service``):

* ``busy`` (default): replaying the demo scenario (a million events), so every scrape
  competes with the processing loop for the interpreter, the service's normal state;
* ``idle``: reading JSONL from a standard input that stays empty.

Then ``--scrapers`` threads released together by a barrier each do ``--rounds`` scrapes
of ``/metrics`` on a fresh connection (as separate Prometheus instances and dashboards
do), optionally with ``--idle`` extra connections held open and silent the whole time,
and with ``--token`` every other request is ``/v1/streams`` with a bearer token. Every
request must answer 200; latency is per request from connect to the last byte.
``/metrics`` is asked for as Prometheus asks (``Accept-Encoding: gzip``; the service
gzips it once per generation); ``--plain`` asks for plain text.

Run: ``python bench/http_scrapers.py [--service busy|idle] [--scrapers 50] [--rounds 20]
[--idle 0] [--token]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _start_service(folder: Path, state: str, token: bool) -> tuple[subprocess.Popen, int]:
    """The service in its own process; returns it and its HTTP port once /readyz is 200."""
    document = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    document["source"]["events"] = 1_000_000
    if state == "idle":
        document["source"] = {"kind": "jsonl", "path": "-"}
    with socket.socket() as probe:  # a free port for the service
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    document["state_dir"] = str(folder / "state")
    document["http"] = {"host": "127.0.0.1", "port": port}
    document["outputs"] = {"weights": str(folder / "weights.jsonl")}
    document["logging"] = {"format": "json", "progress_every_seconds": 60}
    if token:
        (folder / "token").write_text("bench-token\n")
        document["http"]["token_file"] = str(folder / "token")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    service = subprocess.Popen(
        [sys.executable, "-m", "streamweights", "run", "--config", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                connection.close()
                time.sleep(1.0)  # let a busy service get going, and publish some series
                return service, port
        except OSError:
            time.sleep(0.2)
    service.kill()
    raise SystemExit("the service did not become ready within 60 s")


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _scrape(port: int, args: argparse.Namespace) -> tuple[list[float], list[str], int, float]:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.idle)]
    barrier = threading.Barrier(args.scrapers)
    latencies: list[float] = []
    errors: list[str] = []
    size = 0

    def scrape(index: int) -> None:
        nonlocal size
        for round_ in range(args.rounds):
            if args.interval > 0 or round_ == 0:
                barrier.wait()  # every scraper of this round starts together
                if args.interval > 0 and index == 0:
                    time.sleep(args.interval)
                if args.interval > 0:
                    barrier.wait()
            path, headers = "/metrics", ({} if args.plain else {"Accept-Encoding": "gzip"})
            if args.token and (index + round_) % 2:
                path, headers = "/v1/streams", {"Authorization": "Bearer bench-token"}
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status != 200:
                    errors.append(f"{path}: {response.status}")
                elif path == "/metrics":
                    size = len(body)
            except OSError as error:
                errors.append(repr(error))
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(args.scrapers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for connection in idle:
        connection.close()
    return latencies, errors, size, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=int, default=0, help="silent connections held open")
    parser.add_argument("--plain", action="store_true", help="ask for /metrics without "
                        "gzip (Prometheus asks for gzip)")
    parser.add_argument("--token", action="store_true", help="also time /v1/streams with a "
                        "bearer token (the scrapers alternate)")
    parser.add_argument("--service", choices=("busy", "idle"), default="busy")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between rounds, "
                        "in which all scrapers scrape at once (0: back to back, saturating)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        service, port = _start_service(Path(folder), args.service, args.token)
        try:
            latencies, errors, size, wall = _scrape(port, args)
            still_running = service.poll() is None
        finally:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                service.kill()
    if not still_running:
        errors.append("the service ended during the measurement (raise its events)")
    ordered = sorted(latencies)
    result = {
        "service": args.service, "scrapers": args.scrapers, "rounds": args.rounds,
        "interval_s": args.interval,
        "idle_connections": args.idle,
        "requests": len(ordered), "errors": len(errors), "metrics_bytes": size,
        "p50_ms": round(_percentile(ordered, 0.50) * 1000, 1),
        "p99_ms": round(_percentile(ordered, 0.99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "requests_per_second": round(len(ordered) / wall, 1),
    }
    print(json.dumps(result))
    if errors:
        print("errors:", errors[:5], file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
