"""Keep what start-up loaded out of the garbage collector's full scans while records flow,
and the collector out of bulk building (streams built, a snapshot restored).

A replica holds ~110,000 GC-tracked objects before its first record: the modules of
numpy, river, kafka-python, prometheus_client and the pipeline itself. None of them
ever becomes garbage, yet CPython's full (generation 2) collection walks every one of
them each time the objects that outlived younger collections grow by a quarter. In
``bench/kafka.py``'s latency phase on the 2-core benchmark machine (collections timed
with ``gc.callbacks``, two runs each) a replica's longest pause was 126-172 ms, mostly
collecting nothing, and it spent 0.9-1.9 s per run in collections. ``gc.freeze`` moves
them to the permanent generation, which no collection scans; what the stream creates
afterwards is collected as before. Frozen: longest pause 67-73 ms, 0.25-0.27 s per run.
This is the usual recipe for long-running CPython services: collect, then freeze, once
start-up is done. The CLI freezes before it builds the service, and the streams it
builds and restores (and a Kafka rebalance restores) join the frozen set
(:func:`collections_paused`): at 10,000 streams they are millions of objects, which a
full collection took ~1 s to walk.

While records flow the youngest generation is also collected less often
(:data:`YOUNG_GENERATION_THRESHOLD`). A replica allocates and frees millions of
short-lived containers (decoded records, commit trees), and CPython's default of a
collection per 700 net allocations made ~9,400 young collections a run at 10,000
streams; each tenth promoted its survivors, so the long-lived objects a warming replica
adds (its streams' Prometheus series, ~15 per stream) triggered ~74 full collections,
the late ones walking ~430,000 objects for 130-200 ms each and freeing nothing.

After a restore the pages of the memory it freed go back to the system
(:func:`return_freed_pages`). Reading states back allocates a stream's decompressed
record, its parsed tree and copies of its arrays, frees them, and keeps the arrays
built from them between those holes, so glibc's heap cannot shrink from its top: 200
streams of the default config that had run 1,500 records each restored into a fresh
process at 314 KB of RSS a stream, ~100 KB of it freed memory, against 186 KB in the
process that ran them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from collections.abc import Callable, Iterator

#: The youngest generation's collection threshold while records flow (CPython's default
#: is 700). ``bench/kafka.py``'s 10,000-stream replica (2,992,880 records, gc.callbacks
#: timing every collection, runs alternated on one kept broker): 2.4-3.5 s a run in
#: collections at 700, 1.1-1.5 s at 10,000, 0.5-0.6 s at 50,000, its young collections
#: 7-10 ms each. What unreachable reference cycles hold waits longer to be freed: up to
#: that many net allocations instead of 700 (objects freed by their reference counts, as
#: a record's and a commit's are, go at once as before).
YOUNG_GENERATION_THRESHOLD = 50_000


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[int]:
    """Collect start-up's garbage, then exempt every object alive now from collections
    for the ``with`` block, and collect the youngest generation only every
    :data:`YOUNG_GENERATION_THRESHOLD` net allocations in it; yields how many objects
    that froze. On exit the thresholds are the caller's again and the frozen objects go
    back to the oldest generation, so a caller that runs the service in-process (tests,
    the benchmarks) leaks nothing: frozen objects that form unreachable cycles are freed
    only after the unfreeze."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], YOUNG_GENERATION_THRESHOLD), *thresholds[1:])
    try:
        yield gc.get_freeze_count()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@contextlib.contextmanager
def collections_paused() -> Iterator[None]:
    """No automatic collections inside the ``with`` block. Building or restoring many
    streams allocates millions of objects that all stay alive, and the collector walked
    them over and over as they grew (gen 0, then gen 1, then a full walk each time the
    old generation grew by a quarter): ~2 of the ~7 s to build 10,000 streams, finding
    nothing to free. On exit the block's survivors go straight to the oldest generation
    (``gc.freeze`` then ``gc.unfreeze``, which move lists, not objects), so they are not
    walked on the way there either; the next full collection sees them, and any garbage
    cycle made in the block, as usual.

    When something else holds objects frozen (the CLI's :func:`startup_heap_frozen`),
    unfreezing would release those too, so the block's survivors are frozen with them
    instead, until that block ends. Left to the young generations, 10,000 restored
    streams' objects were walked three times on their way up (~1.2 s of collections, the
    last a full one freeing nothing, right after the restore). Frozen, a stream's state
    is still freed when it is replaced (a restore replacing the built state, a Kafka
    rebalance rolling a task back): its objects form no reference cycles, so their
    reference counts free them (``tests/service/test_heap_streams.py`` checks the demo's
    and the torch example's streams). A cycle made in the block would wait for the outer
    block's end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            others_frozen = gc.get_freeze_count() > 0
            gc.freeze()
            if not others_frozen:
                gc.unfreeze()
            gc.enable()


def return_freed_pages() -> bool:
    """Give the pages of freed heap memory back to the system (glibc's
    ``malloc_trim(0)``, which also releases free pages inside the heap, not only at its
    top as ``free`` does). True when some were returned; False when none were, or when
    the C library has no such call (musl, macOS): nothing is done there. Results are
    unaffected; the next allocations there fault fresh pages in, so call it after bulk
    work (a restore), not per record."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # (the process's own C library)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
