"""Say so when the service spends most of its time in checkpoints.

A checkpoint writes the whole state of every stream changed since the last one it
wrote (~0.5 ms a young default stream, ~1 ms one whose windows are full). With records
spread over thousands of streams nearly every record changes a stream of its own, so a
checkpoint costs about 0.5-1 ms per record it covers, and a replica's rate is set by
its checkpoints rather than its records (README, "Many streams in one replica": 10,000
streams ran at ~1,000-3,000 records/s at the Kafka cadence, ~100,000 with no
checkpoint; both runtimes now spread those writes over several checkpoints,
``checkpoint.spread_over``). Nothing else shows it but the checkpoint histogram; this
turns it into a log line a user sees, with what to change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds of the service's loop over which the share of checkpoints is taken.
WINDOW_SECONDS = 60.0
#: Share of that time in checkpoints above which the service warns.
WARN_SHARE = 0.5


class CheckpointLoad:
    """The share of wall time spent in checkpoints, over windows of ``window`` seconds;
    :meth:`record` returns a warning once a window ends above ``share``."""

    def __init__(self, window: float = WINDOW_SECONDS, share: float = WARN_SHARE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.share, self._clock = window, share, clock
        self._since = clock()
        self._spent = 0.0
        self._count = 0
        self._longest = 0.0

    def record(self, seconds: float) -> str | None:
        """A checkpoint took ``seconds``; a warning text when the window it closes was
        mostly checkpoints (``None`` otherwise)."""
        self._spent += seconds
        self._count += 1
        self._longest = max(self._longest, seconds)
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self.window:
            return None
        spent, count, longest = self._spent, self._count, self._longest
        self._since, self._spent, self._count, self._longest = now, 0.0, 0, 0.0
        if spent <= self.share * elapsed:
            return None
        return (f"checkpoints took {spent / elapsed:.0%} of the last {elapsed:.0f} s "
                f"({count} of them, the longest {longest:.2f} s): the loop waits on them. "
                "Each writes the whole state of the streams changed since their last "
                "records (~0.5-1 ms a stream), so records spread over many streams cost that "
                "much each, and a checkpoint held back by checkpoint.max_share waits 1 s at "
                "most; raise checkpoint.spread_over (a checkpoint writes 1 / spread_over "
                "of its changed streams, at least spread_above) or checkpoint.every_records "
                "/ every_seconds, or hold fewer streams per replica (README: Many streams "
                "in one replica)")
