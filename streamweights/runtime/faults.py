"""Test-only fault injection: the process kills itself with SIGKILL at a named point.

SIGKILL is what ``kill -9`` sends: no handler, no ``atexit``, Python's unflushed buffers
lost, so a test can land a real hard kill exactly inside a snapshot write or right after
a given input record, which a timer cannot do reliably. Nothing here runs unless the
variable is set::

    STREAMWEIGHTS_TEST_KILL_AT=record:N            once input position N is reached (the
                                                   record at N-1 processed, its outputs
                                                   written to the sinks' buffers)
    STREAMWEIGHTS_TEST_KILL_AT=snapshot:K:STAGE    in this process's K-th snapshot write;
                                                   STAGE is ``partial`` (half the temporary
                                                   file written), ``written`` (temporary
                                                   file complete, not yet renamed) or
                                                   ``renamed`` (in place, older ones not
                                                   yet removed)
    STREAMWEIGHTS_TEST_KILL_AT=restored            after a restore (or a fresh start) has
                                                   truncated the outputs

A second variable holds the Kafka source's input back, so that a test can first let a
consumer group settle (which replica owns which task) and only then let records flow,
whatever the speed of the machine::

    STREAMWEIGHTS_TEST_HOLD_UNTIL=PATH             release no input record from position
    STREAMWEIGHTS_TEST_HOLD_AT=N  (default 0)      N on until the file PATH exists (the
                                                   consumer keeps polling, joining
                                                   rebalances and buffering; no idle commit)
"""

from __future__ import annotations

import os
import signal

KILL_AT_ENV = "STREAMWEIGHTS_TEST_KILL_AT"
HOLD_UNTIL_ENV = "STREAMWEIGHTS_TEST_HOLD_UNTIL"
HOLD_AT_ENV = "STREAMWEIGHTS_TEST_HOLD_AT"
_POINT = tuple(os.environ.get(KILL_AT_ENV, "").split(":")) if os.environ.get(KILL_AT_ENV) \
    else None
_hold_path: str | None = os.environ.get(HOLD_UNTIL_ENV) or None
_hold_at = int(os.environ.get(HOLD_AT_ENV) or 0)


def kill() -> None:
    """Die now, as ``kill -9`` would make the process die."""
    os.kill(os.getpid(), signal.SIGKILL)


def armed(*point: object) -> bool:
    """Whether the variable names this point (e.g. ``armed("snapshot", 2, "written")``)."""
    return _POINT is not None and tuple(str(part) for part in point) == _POINT


def at(*point: object) -> None:
    """Die here if the variable names this point."""
    if armed(*point):
        kill()


def kill_position() -> int | None:
    """N of ``record:N``, else ``None`` (the service loop compares its position)."""
    if _POINT is not None and len(_POINT) == 2 and _POINT[0] == "record":
        return int(_POINT[1])
    return None


def holding() -> bool:
    """Whether input is still held back (see the module docstring); once the file
    exists, never again (one look at the file system per call until then)."""
    global _hold_path
    if _hold_path is None:
        return False
    if os.path.exists(_hold_path):
        _hold_path = None
        return False
    return True


def held_from() -> int | None:
    """The input position from which input is held back, or ``None`` (no gate, or the
    gate's file exists)."""
    return _hold_at if holding() else None


def hold_file() -> str | None:
    """The gate's file while input is held back (for the log line that says so)."""
    return _hold_path
