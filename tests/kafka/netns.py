"""Separate "hosts" on one machine for fault tests: Linux network namespaces and veth links.

``Network(["broker", "client", "r0"], forwarded=["lossy"])`` makes, on ``create()``:

* a hub namespace holding one bridge (``br0``) and no address at all;
* one namespace per node, its ``eth0`` (address ``10.200.0.<10+i>/24``) a veth whose peer
  ``h-<node>`` is a port of the hub's bridge, and its loopback up.

Addresses exist only inside the namespaces made here and no namespace has a default
route, so nothing the tests run can reach (or be reached from) anything else; the
machine's own namespace gets no interface at all (every veth is created directly inside
its namespaces). Names carry the creating process id and a random tag, so parallel or
crashed runs never collide; ``create()`` first deletes namespaces of earlier runs whose
process is gone, and ``destroy()`` (always called, also when ``create()`` fails half way)
deletes every namespace it made, which deletes their veths and the bridge with them.

Faults:

* ``link_down(node)`` / ``link_up(node)``: the node's bridge port goes down (the node's
  ``eth0`` loses carrier), a real cut between hosts.
* Nodes named in ``forwarded`` reach the bridge through a forwarder process in a namespace
  of its own: ``eth0`` <-> ``f-in`` | forwarder | ``f-out`` <-> ``h-<node>``. It copies
  Ethernet frames between two packet sockets and ``impair(node, loss=, delay_ms=)`` makes
  it drop that share of frames (seeded) and hold each one that long, in both directions.
  This does what ``tc qdisc ... netem loss 5% delay 50ms`` does; it exists because the
  kernel these tests run on has no ``sch_netem`` (``tc`` answers "Specified qdisc kind is
  unknown"). Checksum and segmentation offloads are switched off (``ethtool -K``) on the
  links the forwarder copies from, so every frame it sees is a complete, checksummed
  packet of at most one MTU.

The test process itself stays in the machine's namespace; ``inside(node)`` moves the
calling thread into a node's namespace for a ``with`` block (``setns``), so ordinary
kafka-python clients made there talk to the broker as that node. Their IO threads start
in that namespace and stay in it.

Needs root, ``ip`` (iproute2) and ``ethtool`` for forwarded nodes.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import json
import os
import pathlib
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence

PREFIX = "swnf"
SUBNET = "10.200.0"
CLONE_NEWNET = 0x40000000
_ETH_P_ALL = 0x0003


class NetworkSetupError(RuntimeError):
    """A namespace, link or forwarder could not be made; the message says which command."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS``; raise with the command and its message when it fails."""
    completed = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                               timeout=30)
    if check and completed.returncode != 0:
        raise NetworkSetupError(f"`ip {' '.join(args)}` failed: {completed.stderr.strip()}")
    return completed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces of earlier runs whose creating process no longer exists."""
    removed = []
    listed = ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}-(\d+)-[0-9a-f]+-\S+)", listed, re.MULTILINE):
        namespace, pid = name[0], int(name[1])
        if not _alive(pid):
            ip("netns", "delete", namespace, check=False)
            removed.append(namespace)
    return removed


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


class Network:
    """Namespaces and links for ``nodes`` (see the module docstring)."""

    def __init__(self, nodes: Sequence[str], *, forwarded: Sequence[str] = (),
                 workdir: pathlib.Path | None = None) -> None:
        for node in (*nodes, *forwarded):
            if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", node):
                raise ValueError(f"node name {node!r}: 1-10 lower-case letters/digits")
        self.tag = f"{PREFIX}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.nodes = [*nodes, *forwarded]
        self.forwarded = list(forwarded)
        self.addresses = {node: f"{SUBNET}.{10 + i}" for i, node in enumerate(self.nodes)}
        self.workdir = pathlib.Path(workdir) if workdir else pathlib.Path("/tmp") / self.tag
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.created: list[str] = []
        self.forwarders: dict[str, subprocess.Popen] = {}

    # -- names ------------------------------------------------------------------------
    def namespace(self, node: str) -> str:
        return f"{self.tag}-{node}"

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    def exec_prefix(self, node: str) -> list[str]:
        """The command prefix that runs a program on ``node`` (``ip netns exec NS``)."""
        return ["ip", "netns", "exec", self.namespace(node)]

    # -- life cycle -------------------------------------------------------------------
    def create(self) -> Network:
        for tool in ("ip", *(("ethtool",) if self.forwarded else ())):
            if shutil.which(tool) is None:
                raise NetworkSetupError(f"network namespace tests need `{tool}` (Debian: "
                                        f"apt-get install {'iproute2' if tool == 'ip' else tool})")
        sweep_stale()
        try:
            self._add_namespace(self.hub)
            ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            ip("-n", self.hub, "link", "set", "br0", "up")
            for node in self.nodes:
                self._add_node(node)
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _add_node(self, node: str) -> None:
        namespace, port = self.namespace(node), f"h-{node}"
        self._add_namespace(namespace)
        if node in self.forwarded:
            middle = f"{self.tag}-fwd-{node}"
            self._add_namespace(middle)
            ip("link", "add", "name", "eth0", "netns", namespace, "type", "veth",
               "peer", "name", "f-in", "netns", middle)
            ip("link", "add", "name", "f-out", "netns", middle, "type", "veth",
               "peer", "name", port, "netns", self.hub)
            for name in ("f-in", "f-out"):
                ip("-n", middle, "link", "set", name, "up", "promisc", "on")
            self._no_offloads(namespace, "eth0")
            self._no_offloads(self.hub, port)
            self._start_forwarder(node, middle)
        else:
            ip("link", "add", "name", "eth0", "netns", namespace, "type", "veth",
               "peer", "name", port, "netns", self.hub)
        ip("-n", self.hub, "link", "set", port, "master", "br0")
        ip("-n", self.hub, "link", "set", port, "up")
        ip("-n", namespace, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")

    @staticmethod
    def _no_offloads(namespace: str, device: str) -> None:
        completed = subprocess.run(
            ["ip", "netns", "exec", namespace, "ethtool", "-K", device, "tx", "off", "sg", "off",
             "tso", "off", "gso", "off", "gro", "off"],
            capture_output=True, text=True, check=False, timeout=30)
        if completed.returncode != 0:
            raise NetworkSetupError(f"ethtool -K {device} in {namespace} failed: "
                                    f"{completed.stderr.strip()}")

    def _control_path(self, node: str) -> pathlib.Path:
        return self.workdir / f"forward-{node}.json"

    def _start_forwarder(self, node: str, middle: str) -> None:
        control = self._control_path(node)
        control.write_text(json.dumps({"loss": 0.0, "delay_ms": 0.0}))
        log = open(self.workdir / f"forward-{node}.log", "wb")  # noqa: SIM115 (child owns it)
        try:
            self.forwarders[node] = subprocess.Popen(
                ["ip", "netns", "exec", middle, sys.executable, str(pathlib.Path(__file__)),
                 "forward", "f-in", "f-out", str(control)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        finally:
            log.close()

    def destroy(self) -> None:
        """Stop forwarders and delete every namespace made here (veths and bridge go too)."""
        for process in self.forwarders.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.forwarders.clear()
        for name in reversed(self.created):
            ip("netns", "delete", name, check=False)
        self.created.clear()

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # -- faults -----------------------------------------------------------------------
    def link_down(self, node: str) -> None:
        ip("-n", self.hub, "link", "set", f"h-{node}", "down")

    def link_up(self, node: str) -> None:
        ip("-n", self.hub, "link", "set", f"h-{node}", "up")

    def impair(self, node: str, *, loss: float = 0.0, delay_ms: float = 0.0) -> None:
        """Drop ``loss`` of the frames on ``node``'s link and delay each by ``delay_ms``
        (each direction); the forwarder picks the change up within 0.1 s."""
        if node not in self.forwarders:
            raise ValueError(f"{node!r} was not made a forwarded node")
        path = self._control_path(node)
        # Each writer has a temporary name of its own: the forwarder writes its stats
        # next to this file, and one shared ".partial" let either rename the other's.
        partial = path.with_suffix(".control-partial")
        partial.write_text(json.dumps({"loss": loss, "delay_ms": delay_ms}))
        partial.rename(path)
        time.sleep(0.3)

    def forward_stats(self, node: str) -> dict[str, int]:
        """Frames the forwarder of ``node`` copied and dropped so far (updated ~4 times/s)."""
        path = self._control_path(node).with_suffix(".stats")
        return json.loads(path.read_text()) if path.exists() else {"forwarded": 0, "dropped": 0}

    @contextlib.contextmanager
    def inside(self, node: str) -> Iterator[None]:
        """Run the ``with`` block's network calls (this thread's) from ``node``."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.namespace(node)}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(original)


def forward(inner: str, outer: str, control: str, seed: int = 12) -> None:
    """Copy Ethernet frames between two interfaces, dropping and delaying them as the
    JSON ``control`` file says (``{"loss": 0.05, "delay_ms": 50}``; re-read when it
    changes); counts go to ``control`` with suffix ``.stats``."""
    sockets = []
    for name in (inner, outer):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
        sock.bind((name, 0))
        sock.setblocking(False)
        sockets.append(sock)
    peer = {sockets[0]: sockets[1], sockets[1]: sockets[0]}
    rng = random.Random(seed)
    control_path = pathlib.Path(control)
    stats_path = control_path.with_suffix(".stats")
    loss, delay, mtime = 0.0, 0.0, None
    queue: list[tuple[float, int, socket.socket, bytes]] = []
    counts = {"forwarded": 0, "dropped": 0}
    sequence = 0
    last_check = 0.0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    while not stop:
        now = time.monotonic()
        if now - last_check > 0.1:
            last_check = now
            with contextlib.suppress(OSError, ValueError):
                stamp = control_path.stat().st_mtime_ns
                if stamp != mtime:
                    settings = json.loads(control_path.read_text())
                    loss, delay = float(settings["loss"]), float(settings["delay_ms"]) / 1000
                    mtime = stamp
            partial = stats_path.with_suffix(".stats-partial")
            partial.write_text(json.dumps(counts))
            partial.rename(stats_path)
        timeout = min(0.05, max(0.0, queue[0][0] - now)) if queue else 0.05
        try:
            ready, _, _ = select.select(sockets, [], [], timeout)
        except InterruptedError:
            continue
        for sock in ready:
            while True:
                try:
                    frame, address = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if address[2] == socket.PACKET_OUTGOING:
                    continue  # our own transmission, seen on the way out
                if loss and rng.random() < loss:
                    counts["dropped"] += 1
                    continue
                heapq.heappush(queue, (time.monotonic() + delay, sequence, peer[sock], frame))
                sequence += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            with contextlib.suppress(OSError):
                out.send(frame)
                counts["forwarded"] += 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "forward":
        forward(*sys.argv[2:5])
    else:
        sys.exit("usage: netns.py forward INNER OUTER CONTROL_JSON")
