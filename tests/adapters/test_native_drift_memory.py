"""DriftMemory on the core's detectors against DriftMemory on river's (issue 11 item 3).

The reference (``tests/reference/drift_monitor.py``) is the adapter as it ran before the
port: the same memory with river's own ADWIN / PageHinkley objects and their state read
through river's internals. Same events, same bits: alarms, change points, evictions and
snapshots; and snapshots written by the river-backed adapter load and continue here.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamweights.adapters import DriftMemory
from streamweights.adapters.state_codec import dumps_state, loads_state
from tests.reference.drift_monitor import load_into_river_memory, river_memory

#: Detector settings: the defaults of both detectors on each signal, a fast ADWIN clock
#: and a Page-Hinkley that alarms often (so alarms fall near snapshots).
CONFIGS = (
    {"detector": "adwin"},
    {"detector": "adwin", "loss": "log", "detector_options": {"clock": 1, "delta": 0.05}},
    {"detector": "adwin", "signal": "entropy"},
    {"detector": "page_hinkley"},
    {"detector": "page_hinkley", "loss": "log", "detector_options": {"threshold": 8.0}},
    {"detector": "page_hinkley", "signal": "entropy",
     "detector_options": {"threshold": 10.0, "mode": "up"}},
)


def _events(seed: int, n: int, n_classes: int = 3):
    """Probability rows and labels whose error rate drifts 0.1 -> 0.45 -> 0.2, and whose
    confidence drops in the middle third (an entropy drift)."""
    rng = np.random.default_rng([7, seed])
    scale = np.where((np.arange(n) > n // 3) & (np.arange(n) < 2 * n // 3), 0.7, 2.5)
    logits = rng.normal(size=(n, n_classes)) * scale[:, None]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    error_rate = np.where(np.arange(n) < n // 2, 0.1, np.where(np.arange(n) < 3 * n // 4,
                                                                0.45, 0.2))
    predicted = p.argmax(axis=1)
    wrong = rng.random(n) < error_rate
    labels = np.where(wrong, (predicted + rng.integers(1, n_classes, n)) % n_classes, predicted)
    return p, labels.tolist()


def _run(memory: DriftMemory, p: np.ndarray, labels: list[int]) -> list[int]:
    """The chain verbs the service calls, per event; returns the alarm steps."""
    alarms = []
    for row, label in zip(p, labels, strict=True):
        before = memory.drift_count
        memory.observe(row)
        memory.learn(row, label)
        if memory.drift_count != before:
            alarms.append(memory.signals_seen)
    return alarms


def _config(index: int) -> dict:
    return {"capacity": 32, "n_classes": 3, **CONFIGS[index]}


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_memory_on_native_detectors_equals_the_river_backed_memory(index):
    """Scenario: 12,000 events (observe + learn) with an error-rate and a confidence drift,
    through DriftMemory on the core's detector and on river's, for each detector setting.
    We expect: the same alarm steps (at least one), and bit-identical snapshots at every
    3,000 events (items, change points, detector state)."""
    p, labels = _events(index, 12_000)
    ours, theirs = DriftMemory(**_config(index)), river_memory(**_config(index))
    alarms = ([], [])
    for start in range(0, 12_000, 3000):
        chunk = slice(start, start + 3000)
        alarms[0].extend(_run(ours, p[chunk], labels[chunk]))
        alarms[1].extend(_run(theirs, p[chunk], labels[chunk]))
        assert dumps_state(ours.state_dict()) == dumps_state(theirs.state_dict()), start
    assert alarms[0] == alarms[1] and alarms[0], alarms


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_loss_stream_of_a_hundred_thousand_values_equals_river(detector):
    """Scenario: 10^5 Bernoulli losses with five rate changes fed by ``update_loss``.
    We expect: the same alarm steps and change points, the same final snapshot."""
    rng = np.random.default_rng(21)
    rates = np.repeat([0.1, 0.3, 0.05, 0.25, 0.1, 0.4], [20_000, 15_000, 20_000, 15_000,
                                                         20_000, 10_000])
    losses = (rng.random(100_000) < rates).astype(float).tolist()
    # The detectors' own alarms (no evidence test: it confirms only the three rises).
    config = {"capacity": 64, "n_classes": 2, "detector": detector, "significance": None}
    ours, theirs = DriftMemory(**config), river_memory(**config)
    found = ([], [])
    for loss in losses:
        for memory, seen in zip((ours, theirs), found, strict=True):
            if memory.update_loss(loss):
                seen.append((memory.last_drift_step, memory.change_point))
    assert found[0] == found[1] and len(found[0]) >= 5, found
    assert dumps_state(ours.state_dict()) == dumps_state(theirs.state_dict())


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_snapshot_of_the_river_backed_adapter_loads_and_continues_as_it_would(index):
    """Scenario: the river-backed adapter (before the port) runs 2,000-5,000 events and
    writes a snapshot through the JSON codec, at points chosen to include one right after
    an alarm (the detector's "drift detected" flag set); this release loads it, and both
    continue on the next 4,000 events.
    We expect: the load succeeds and the two stay bit-identical (alarms and snapshot); the
    river-backed adapter also loads this release's snapshot and continues identically (a
    rollback reads it)."""
    p, labels = _events(100 + index, 9000)
    probe = river_memory(**_config(index))
    alarm_steps = _run(probe, p[:5000], labels[:5000])
    # Each event feeds the detector one value (observe for the entropy signal, learn for
    # the loss), so the alarm at step s is raised by event s: cutting there snapshots the
    # detector with its alarm flag set.
    late = [step for step in alarm_steps if step > 2000]
    cuts = {3000} | ({late[0]} if late else set())
    for cut in sorted(cuts):
        old = river_memory(**_config(index))
        _run(old, p[:cut], labels[:cut])
        snapshot = loads_state(dumps_state(old.state_dict()))
        assert snapshot["state"]["detector"]["river_version"] == "0.26.1"
        ours = DriftMemory(**_config(index))
        ours.load_state_dict(snapshot)
        tail = slice(cut, cut + 4000)
        ours_new_snapshot = loads_state(dumps_state(ours.state_dict()))
        rolled_back = load_into_river_memory(ours_new_snapshot)
        runs = [_run(memory, p[tail], labels[tail]) for memory in (ours, old, rolled_back)]
        assert runs[0] == runs[1] == runs[2], (cut, runs)
        final = dumps_state(ours.state_dict())
        assert final == dumps_state(old.state_dict()) == dumps_state(rolled_back.state_dict())
    assert late, "the stream should raise an alarm after event 2,000 for this test to bite"


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_damaged_detector_state_is_refused_and_changes_nothing(detector):
    """Scenario: a snapshot whose detector state was damaged (ADWIN window bytes cut
    short; Page-Hinkley sums with a NaN) is loaded into a running memory.
    We expect: ValueError naming ``state.detector``, and the memory's state unchanged."""
    memory = DriftMemory(capacity=8, n_classes=2, detector=detector)
    for loss in np.random.default_rng(2).random(300).tolist():
        memory.update_loss(loss)
    snapshot = memory.state_dict()
    if detector == "adwin":
        snapshot["state"]["detector"]["window"] = snapshot["state"]["detector"]["window"][:-8]
    else:
        snapshot["state"]["detector"]["sums"][0] = np.nan
    target = DriftMemory(capacity=8, n_classes=2, detector=detector)
    target.update_loss(0.5)
    before = dumps_state(target.state_dict())
    with pytest.raises(ValueError, match=r"state\.detector\.(window|sums)"):
        target.load_state_dict(snapshot)
    assert dumps_state(target.state_dict()) == before


@pytest.mark.parametrize(("detector", "options"), [
    ("adwin", {"clock": 0}), ("adwin", {"max_buckets": 0}), ("adwin", {"delta": 2.0}),
    ("adwin", {"max_buckets": -1}), ("page_hinkley", {"threshold": float("nan")}),
])
def test_detector_options_river_would_crash_on_are_refused_at_construction(detector, options):
    """Scenario: ADWIN options with which river's detector panics at the first updates
    (clock 0: remainder by zero; max_buckets 0: index out of bounds; both raise
    PanicException, a BaseException that no per-record handler catches), a δ outside
    (0, 1), a negative bucket count, a NaN Page-Hinkley threshold.
    We expect: ValueError naming ``detector_options`` when the adapter is built, before
    any record is processed."""
    with pytest.raises(ValueError, match="detector_options"):
        DriftMemory(capacity=8, n_classes=2, detector=detector, detector_options=options)
