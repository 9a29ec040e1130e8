"""How soon the next checkpoint may follow one that took long: a replica of many streams
must not spend its time writing them.

A checkpoint costs about its changed streams' encoding (0.3-1 ms each), so with
thousands of streams one takes seconds, and at the Kafka runtime's cadence (every 0.1 s)
the next was due before the last ended: a replica of 1,000 streams ran at 16.6% of the
client's consume rate, one of 10,000 at 1,000-1,750 records/s, nearly all of it
encoding. The pacer keeps checkpoints to at most ``checkpoint.max_share`` of the loop's
time: after one that used ``d`` seconds of the loop thread's CPU, the next waits for
``d × (1 − share) / share`` seconds of processing, at most :data:`PACING_CAP_SECONDS` (a
Kafka transaction must commit well within the producer's timeout), on top of the usual
cadence. Checkpoints of fewer than :data:`PACING_MIN_STREAMS` changed streams hold
nothing back: the cadence set holds exactly. A longer interval
means more records per checkpoint and later visible outputs (``read_committed`` readers
of a Kafka replica), not different ones: what a checkpoint holds never depends on when
it is taken.
"""

from __future__ import annotations

import math

#: The longest a checkpoint is held back after the previous one ended.
PACING_CAP_SECONDS = 1.0
#: A checkpoint of fewer changed streams than this holds nothing back: the cadence set
#: holds exactly for a replica of a few streams (a few ms a checkpoint, which a garbage
#: collection inside it can make 80 ms), and a rest that short would barely bind.
PACING_MIN_STREAMS = 64


class CheckpointPacer:
    """Whether a due checkpoint may be taken now (``allows``), given how long the last
    one took (``taken``). ``max_share`` is in (0, 1]; 1 never holds one back."""

    def __init__(self, max_share: float) -> None:
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.rest_per_second = (1 - max_share) / max_share
        self.earliest = -math.inf
        #: Seconds the last checkpoint took and the rest it asked for.
        self.last = (0.0, 0.0)

    def allows(self, now: float) -> bool:
        return now >= self.earliest

    def taken(self, seconds: float, ended: float, streams: int) -> float:
        """A checkpoint of ``streams`` changed streams used ``seconds`` of the loop
        thread's CPU (encoding and writing them; not the wait for a broker's answer,
        which is not work the loop could do fewer of) and ended at ``ended`` (monotonic
        seconds); returns the rest that follows it."""
        rest = (0.0 if streams < PACING_MIN_STREAMS
                else min(seconds * self.rest_per_second, PACING_CAP_SECONDS))
        self.earliest = ended + rest
        self.last = (seconds, rest)
        return rest
