"""Headless Debian Chromium driven over the DevTools protocol, for tests that open a page.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from its
file descriptor 3 and writes answers and events to descriptor 4, one JSON message per
NUL-terminated chunk (what Puppeteer's ``pipe: true`` does), so no port, no websocket
library and nothing else on the machine can talk to it. A page is opened in its own
target with a flat session; every event is kept, so a test can read the console errors,
uncaught exceptions and browser log errors the page caused.

The browser comes from Debian's ``chromium`` package, which the test command installs;
a missing browser fails the test with that instruction (tests never skip).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import select
import shutil
import subprocess
import time
from typing import Any

import orjson
import pytest

#: Flags for a quiet, reproducible headless run as root in a container: no sandbox (root),
#: no GPU, nothing fetched in the background, a fresh profile per browser.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe")


class ProtocolError(RuntimeError):
    """Chromium answered a command with an error, or did not answer in time."""


class Chromium:
    """One headless browser process; ``open`` a page, ``send`` commands, read ``events``."""

    def __init__(self, profile: pathlib.Path, timeout: float = 60.0) -> None:
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed; install it with: apt-get install -y "
                        "chromium   (the README test command does)")
        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"   # its stderr, shown when it fails
        self.timeout = timeout
        self.events: list[tuple[str, dict, str | None]] = []
        self._next_id = 0
        self._buffer = b""
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()

        def descriptors_3_and_4() -> None:   # runs in the child before exec
            high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(answers_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                pass_fds=(3, 4), preexec_fn=descriptors_3_and_4)
        os.close(commands_read)
        os.close(answers_write)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             ) -> dict:
        """Run one protocol command and return its result (events that arrive meanwhile
        are kept in ``events``)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, orjson.dumps(message) + b"\0")
        while True:
            answer = self._receive(f"the answer to {method}")
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise ProtocolError(f"{method}: {answer['error']}")
                return answer["result"]

    def wait_for(self, method: str, session: str | None) -> dict:
        """The first event ``method`` of ``session``, waiting for it if it has not come."""
        for name, params, where in self.events:
            if name == method and where == session:
                return params
        while True:
            message = self._receive(method)
            if message.get("method") == method and message.get("sessionId") == session:
                return message.get("params", {})

    def open(self, url: str, width: int, height: int) -> str:
        """Open ``url`` in a new page of ``width`` x ``height`` CSS pixels with the page,
        console and log domains on; return the session once the load event fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=session)
        if "exceptionDetails" in result:
            raise ProtocolError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors of a page so far."""
        found = []
        for name, params, where in self.events:
            if where != session:
                continue
            if name == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(
                    str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))
            elif name == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + details.get("exception", {}).get(
                    "description", details.get("text", "")))
            elif name == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}")
        return found

    def _receive(self, waiting_for: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if self.process.poll() is not None or left <= 0:
                raise ProtocolError(self._failure(waiting_for))
            ready, _, _ = select.select([self._answers], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise ProtocolError(self._failure(waiting_for))
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = orjson.loads(raw)
        if "method" in message:
            self.events.append((message["method"], message.get("params", {}),
                                message.get("sessionId")))
        return message

    def _failure(self, waiting_for: str) -> str:
        state = ("exited with " + str(self.process.returncode)
                 if self.process.poll() is not None else f"silent for {self.timeout:.0f} s")
        tail = self.log.read_text(errors="replace")[-3000:]
        return f"chromium {state} while waiting for {waiting_for}; its log ends:\n{tail}"

    def close(self) -> None:
        """Ask the browser to quit; kill it if it does not within 10 s."""
        if self.process.poll() is None:
            try:
                os.write(self._commands, orjson.dumps(
                    {"id": self._next_id + 1, "method": "Browser.close", "params": {}}) + b"\0")
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        os.close(self._commands)
        os.close(self._answers)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
