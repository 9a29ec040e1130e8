"""A small progress bar on stderr (no dependency): one line redrawn in place on a
terminal, one line per finished step otherwise (CI logs stay readable).

>>> import io
>>> out = io.StringIO()
>>> bar = ProgressBar(stream=out)
>>> bar.start(2); bar.advance("a done"); bar.advance("b done"); bar.finish()
>>> "2/2" in out.getvalue()
True
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``start(total)``, ``update(text)`` for the step in progress, ``advance(text)`` when
    a step ends, ``finish()``. ``width`` is the bar's length in characters."""

    def __init__(self, stream: TextIO | None = None, width: int = 28) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.total = 0
        self.done = 0
        self.started = time.monotonic()
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0

    def start(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self._draw("starting", force=True)

    def update(self, text: str) -> None:
        if self.interactive:
            self._draw(text)

    def advance(self, text: str) -> None:
        self.done += 1
        self._draw(text, force=True, newline=not self.interactive)

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")
        self.stream.flush()

    def _draw(self, text: str, force: bool = False, newline: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        filled = round(self.width * self.done / max(self.total, 1))
        elapsed = now - self.started
        eta = ""
        if 0 < self.done < self.total:
            eta = f" eta {_clock(elapsed / self.done * (self.total - self.done))}"
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{_clock(elapsed)}{eta}  {text}")
        if self.interactive:
            self.stream.write("\r\x1b[K" + line[:160])
        elif newline or force:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"
