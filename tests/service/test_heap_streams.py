"""The CLI freezes the streams a service builds and restores out of the collector's scans
(runtime/heap.py). That is sound only if what replaces a stream's state later (a restore,
a Kafka rebalance rolling a task back) frees the old state without the cyclic collector:
the state must form no reference cycles."""

from __future__ import annotations

import gc

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import load_config
from streamweights.runtime.service import Service


def test_replacing_a_streams_state_leaves_no_garbage_cycle(config_factory):
    """Scenario: the demo's stream (a portfolio of chains, DriftMemory, conformal layers,
    estimates, its join) after 1,500 events, its state replaced 20 times, alternately
    by the state it had after the run and by its initial state, as a rebalance rolls a
    task back (``load_state_dict(loads_state(...), owned=True)``), with the collector off.
    We expect: the number of objects the collector tracks comes back to the same count
    after each pair of loads (nothing accumulates), and a collection then finds no
    garbage: each old state was freed by reference counts alone."""
    config = load_config(config_factory("heap", events=1500))
    service = Service(config)
    try:
        stream = service.pipeline.streams["demo"]
        initial = dumps_state(stream.state_dict())
        service.run()
        trained = dumps_state(stream.state_dict())
        assert trained != initial
        gc.collect()
        gc.disable()
        try:
            counts = []
            for _ in range(10):
                stream.load_state_dict(loads_state(initial), owned=True)
                stream.load_state_dict(loads_state(trained), owned=True)
                counts.append(len(gc.get_objects()))
            found = gc.collect()
        finally:
            gc.enable()
    finally:
        service.close()
    assert len(set(counts[1:])) == 1, counts
    assert found == 0
