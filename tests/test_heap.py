"""startup_heap_frozen: start-up's objects leave the collector's scans for the block
only, and nothing frozen is leaked once it ends."""

import gc
import weakref

from streamweights.runtime.heap import startup_heap_frozen


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
