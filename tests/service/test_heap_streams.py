"""The CLI freezes the streams a service builds and restores out of the collector's scans
(runtime/heap.py). That is sound only if what replaces a stream's state later (a restore,
a Kafka rebalance rolling a task back) frees the old state without the cyclic collector:
the state must form no reference cycles."""

from __future__ import annotations

import gc
import subprocess
import sys

import yaml

from streamweights.adapters.state_codec import dumps_state, loads_state
from streamweights.config import load_config
from streamweights.runtime.service import Service
from tests.service.conftest import REPO


def _replaced_again_and_again(service: Service, name: str) -> tuple[list[int], int]:
    """Run ``service``; then, with the collector off, replace stream ``name``'s state
    20 times, alternately by its initial and its trained state, as a rebalance rolls a
    task back. The tracked-object count after each pair, and what a collection then
    finds."""
    try:
        stream = service.pipeline.streams[name]
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
            return counts, gc.collect()
        finally:
            gc.enable()
    finally:
        service.close()


def test_replacing_a_streams_state_leaves_no_garbage_cycle(config_factory):
    """Scenario: the demo's stream (a portfolio of chains, DriftMemory, conformal layers,
    estimates, its join) after 1,500 events, its state replaced 20 times.
    We expect: the objects the collector tracks come back to the same count after each
    pair of loads (nothing accumulates), and a collection then finds no garbage: each
    old state was freed by reference counts alone."""
    service = Service(load_config(config_factory("heap", events=1500)))
    counts, found = _replaced_again_and_again(service, "demo")
    assert len(set(counts[1:])) == 1, counts
    assert found == 0


def test_replacing_a_torch_streams_state_leaves_no_garbage_cycle(tmp_path, monkeypatch):
    """Scenario: as above for ``configs/torch-digits.yaml``'s stream (a CNN with
    test-time adaptation, a Kalman head, weight exports), on the example's records.
    We expect: the same: nothing accumulates, no garbage cycle."""
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "torch_digits_example.py"),
                           "--out", str(tmp_path / "torch-example")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    monkeypatch.chdir(tmp_path)  # the config's paths are relative to where it runs
    document = yaml.safe_load((REPO / "configs" / "torch-digits.yaml").read_text())
    document["http"] = {"host": "127.0.0.1", "port": None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    config = load_config(path)
    counts, found = _replaced_again_and_again(Service(config), "digits")
    assert len(set(counts[1:])) == 1, counts
    assert found == 0
