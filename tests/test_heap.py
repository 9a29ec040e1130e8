"""startup_heap_frozen: start-up's objects leave the collector's scans for the block
only, and nothing frozen is leaked once it ends. collections_paused: no collections in
the block, its survivors land in the oldest generation, or join someone else's frozen
objects, which stay frozen. (That a stream's state, frozen so, is still freed when
replaced: tests/service/test_heap_streams.py.) return_freed_pages: freed memory between
live blocks leaves the resident set (a restore's: test_heap_streams.py too)."""

import gc
import weakref

from streamweights.runtime.heap import (
    YOUNG_GENERATION_THRESHOLD,
    collections_paused,
    return_freed_pages,
    startup_heap_frozen,
)
from tests.process_memory import resident_bytes


class Node:
    def __init__(self) -> None:
        self.partner = self  # a reference cycle: only the cyclic collector frees it


def test_objects_alive_at_entry_are_frozen_for_the_block_and_collectable_after():
    before = Node()
    alive = weakref.ref(before)
    with startup_heap_frozen() as frozen:
        assert frozen > 1_000 and gc.get_freeze_count() > 1_000  # pytest and the package
        assert not any(obj is before for obj in gc.get_objects())  # no longer scanned
        during = Node()
        during_alive = weakref.ref(during)
        del before, during
        gc.collect()
        assert alive() is not None  # frozen: the collector does not see its cycle
        assert during_alive() is None  # created in the block: collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert alive() is None  # back in the oldest generation, so freed


def test_the_young_generation_is_collected_less_often_in_the_block_only():
    caller = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        with startup_heap_frozen():
            assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, 10, 10)
            gc.collect()
            before = gc.get_stats()[0]["collections"]
            kept = [[] for _ in range(YOUNG_GENERATION_THRESHOLD // 2)]  # tracked lists
            assert gc.get_stats()[0]["collections"] == before  # 700 would have run ~35
            del kept
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(90_000, 5, 5)  # a caller's larger threshold stays as it is
        with startup_heap_frozen():
            assert gc.get_threshold() == (90_000, 5, 5)
        assert gc.get_threshold() == (90_000, 5, 5)
    finally:
        gc.set_threshold(*caller)


def test_collections_paused_moves_survivors_to_the_oldest_generation_unwalked():
    gc.collect()
    with collections_paused():
        assert not gc.isenabled()
        survivor = Node()
        garbage = Node()
        garbage_alive = weakref.ref(garbage)
        del garbage
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    # The block's objects skipped the young generations: already in the oldest one.
    assert any(obj is survivor for obj in gc.get_objects(generation=2))
    assert garbage_alive() is not None  # a cycle made in the block waits for a collection
    gc.collect()
    assert garbage_alive() is None


def test_under_someone_elses_freeze_the_survivors_are_frozen_with_theirs():
    with startup_heap_frozen() as frozen:
        with collections_paused():
            made = Node()
            made_alive = weakref.ref(made)
        # Not released by the inner block (an unfreeze would leave none frozen; a frozen
        # object freed by its reference count may leave the count meanwhile), and the
        # block's survivor joined them: no young collection walks it on its way up.
        assert gc.get_freeze_count() > frozen - 100 > 1_000
        assert gc.isenabled()
        assert not any(obj is made for obj in gc.get_objects())
        del made
        gc.collect()
        assert made_alive() is not None  # its cycle waits for the outer block's end
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert made_alive() is None


def test_collections_paused_keeps_a_disabled_collector_disabled():
    gc.disable()
    try:
        with collections_paused():
            Node()
        assert not gc.isenabled()
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_freed_memory_between_live_blocks_leaves_the_resident_set():
    """Scenario: 64 MiB in 48 KiB blocks (below glibc's mmap threshold: heap memory,
    every page written), then seven in eight freed, the kept ones spread through it, so
    the heap cannot shrink from its top. We expect: ``return_freed_pages`` reports pages
    returned and the resident set falls by at least half of what was freed (~56 MiB)."""
    blocks = [bytes([index % 251 + 1]) * (48 * 1024) for index in range(64 * 1024 // 48)]
    kept = blocks[::8]
    del blocks
    before = resident_bytes()
    assert return_freed_pages() is True
    assert before - resident_bytes() > 28 * 2**20
    assert len(kept) == 171 and kept[1][0] == 9  # (alive until here)
