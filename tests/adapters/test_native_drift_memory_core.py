"""DriftMemory's memory in the native core against its numpy reference (issue 11).

The reference (``tests/reference/drift_memory.py``) is the adapter as it ran before the
port. Same events, same decisions: alarms, change points, which items are stored (their
bytes, labels, ages, stamps, pseudo flags) after every event of 10^5 on drifting
streams; scores and uncertainties within 1e-9 relative.

Known last-bit drift: the core sums the entropy ``−Σ p_k ln p_k`` left to right with
libm's ``ln``; the reference used numpy (``p_0 + (p_1 + …)`` for C >= 3 and numpy's SIMD
``log``), so an uncertainty can differ in its last bits (counted below, and reported).
Scores use the same numpy timeliness table, so they differ only through the uncertainty.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamweights.adapters import DriftMemory
from streamweights.adapters.state_codec import dumps_state, loads_state
from tests.reference.drift_memory import DriftMemory as ReferenceDriftMemory

N_EVENTS = 100_000
RELATIVE = 1e-9

CONFIGS = (
    {"capacity": 64, "n_classes": 3},
    {"capacity": 32, "n_classes": 2, "detector": "page_hinkley", "loss": "log",
     "detector_options": {"threshold": 8.0}},
    {"capacity": 50, "n_classes": 10, "signal": "entropy", "entropy_filter": 0.8,
     "timeliness_weight": 0.5, "uncertainty_weight": 2.0},
    {"capacity": 7, "n_classes": 4, "detector": None, "significance": None},
)


def _events(seed: int, n_events: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors whose confidence and accuracy drift (jumps every ~12,000 events, a slow
    wave in between), and labels; every 7th posterior repeats an earlier one exactly."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n_events)
    segments = -(-n_events // 12_000)
    accuracy = np.repeat(rng.uniform(0.4, 0.95, size=segments), 12_000)[:n_events]
    sharpness = 1.0 + 4.0 * (1 + np.sin(np.arange(n_events) / 700))
    correct = rng.random(n_events) < accuracy
    peak = np.where(correct, labels, rng.integers(0, n_classes, size=n_events))
    logits = rng.normal(size=(n_events, n_classes))
    logits[np.arange(n_events), peak] += sharpness
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[::7][1:] = p[:-7:7][: len(p[::7]) - 1]
    return p, labels


def _schedule(seed: int, n_events: int) -> list[tuple[str, int]]:
    """observe every event; learn it 0-30 events later, for 80% of them."""
    rng = np.random.default_rng(seed + 1000)
    delays = rng.integers(0, 31, size=n_events)
    labelled = rng.random(n_events) < 0.8
    due: dict[int, list[int]] = {}
    for t in range(n_events):
        if labelled[t]:
            due.setdefault(t + int(delays[t]), []).append(t)
    steps: list[tuple[str, int]] = []
    for t in range(n_events):
        steps.append(("observe", t))
        steps.extend(("learn", s) for s in due.get(t, []))
    return steps


def _compare(ours: DriftMemory, reference: ReferenceDriftMemory, where: str) -> int:
    """Assert the same memory (bits where exact, 1e-9 relative where stated); return how
    many uncertainties differ in their bits."""
    assert len(ours) == len(reference), where
    assert ours.class_counts().tolist() == reference.class_counts().tolist(), where
    drifted = 0
    ours_state, reference_state = ours._get_state(), reference._get_state()
    for key in ("labels", "ages", "stamps", "pseudo"):
        assert np.array_equal(ours_state[key], reference_state[key]), (where, key)
    for a, b in zip(ours_state["items"], reference_state["items"], strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    u, v = ours_state["uncertainties"], reference_state["uncertainties"]
    np.testing.assert_allclose(u, v, rtol=RELATIVE, atol=0, err_msg=where)
    drifted += int(np.sum(u.view(np.int64) != v.view(np.int64)))
    scores = [item[3] for item in ours.items()]
    np.testing.assert_allclose(scores, [item[3] for item in reference.items()],
                               rtol=RELATIVE, atol=0, err_msg=where)
    for key in ("signals", "drift_count", "last_drift_step", "change_point", "candidate",
                "unconfirmed_count"):
        assert ours_state[key] == reference_state[key], (where, key)
    return drifted


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_core_matches_reference_over_a_hundred_thousand_events(index: int) -> None:
    """Scenario: 10^5 events (observe each, learn 80% of them 0-30 events later) on a
    drifting stream. We expect: the same memory after every step (compared in full
    every 97 steps and at the end), the same alarms, and for detector configs alarms to
    compare."""
    config = CONFIGS[index]
    p, labels = _events(index, N_EVENTS, config["n_classes"])
    rows = p.tolist()
    ours, reference = DriftMemory(**config), ReferenceDriftMemory(**config)
    drifted = 0
    for step, (verb, t) in enumerate(_schedule(index, N_EVENTS)):
        if verb == "observe":
            ours.observe(rows[t])
            reference.observe(p[t])
        else:
            ours.learn(p[t], int(labels[t]))
            reference.learn(p[t], int(labels[t]))
        assert ours.drift_count == reference.drift_count, step
        if step % 97 == 0:
            drifted += _compare(ours, reference, f"step {step}")
    drifted += _compare(ours, reference, "end")
    if config.get("detector", "adwin") is not None:
        assert ours.drift_count > 0
    print(f"config {index}: {drifted} uncertainties differing in their last bits")


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_reference_snapshots_load_and_continue(index: int) -> None:
    """Scenario: the reference writes a snapshot (through the JSON codec) after 6,000
    events; the core's adapter loads it, and both continue for 6,000 more. We expect the
    same memory and alarms; and the core's own snapshot round trip is bit-exact."""
    config = CONFIGS[index]
    p, labels = _events(index + 50, 12_000, config["n_classes"])
    steps = _schedule(index + 50, 12_000)
    reference = ReferenceDriftMemory(**config)
    half = len(steps) // 2

    def run(memory, part):
        for verb, t in part:
            if verb == "observe":
                memory.observe(p[t])
            else:
                memory.learn(p[t], int(labels[t]))

    run(reference, steps[:half])
    ours = DriftMemory(**config)
    ours.load_state_dict(loads_state(dumps_state(reference.state_dict())))
    assert dumps_state(ours.state_dict()) == dumps_state(reference.state_dict())
    run(ours, steps[half:])
    run(reference, steps[half:])
    _compare(ours, reference, "after the reference's snapshot")
    again = DriftMemory(**config)
    again.load_state_dict(loads_state(dumps_state(ours.state_dict())))
    assert dumps_state(again.state_dict()) == dumps_state(ours.state_dict())


def test_batch_equals_loop_and_bad_input_changes_nothing() -> None:
    """Scenario: observe_many/learn_many over 5,000 events against the per-event verbs;
    then a batch with one bad row, a bad label and a damaged snapshot. We expect equal
    snapshots, and each refusal to leave the snapshot as it was."""
    config = CONFIGS[0]
    p, labels = _events(3, 5000, config["n_classes"])
    batch, loop = DriftMemory(**config), DriftMemory(**config)
    for start in range(0, 5000, 250):
        chunk = slice(start, start + 250)
        batch.observe_many(p[chunk])
        batch.learn_many(p[chunk], labels[chunk].tolist())
        for row in p[chunk]:
            loop.observe(row)
        for row, label in zip(p[chunk], labels[chunk].tolist(), strict=True):
            loop.learn(row, label)
    assert dumps_state(batch.state_dict()) == dumps_state(loop.state_dict())
    before = dumps_state(batch.state_dict())
    bad = p[:4].copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError):
        batch.observe_many(bad)
    with pytest.raises(ValueError):
        batch.learn_many(p[:3], [0, 1, 7])
    with pytest.raises(ValueError):
        batch.learn(p[0], -1)
    damaged = json.loads(json.dumps(loads_state(before), default=lambda a: a.tolist()))
    damaged["state"]["labels"][0] = 99
    with pytest.raises(ValueError):
        batch.load_state_dict(damaged)
    assert dumps_state(batch.state_dict()) == before


def test_predict_is_the_reference_pass_through_bit_for_bit() -> None:
    """Scenario: 20,000 rows as numpy rows, lists and tuples, some off their sum by up to
    5e-4 (inside the tolerance) or refused. We expect predict's output (renormalised) to
    be the reference's bit for bit, and the same refusals."""
    rng = np.random.default_rng(9)
    p, _ = _events(9, 20_000, 4)
    p = p * (1 + rng.uniform(-5e-4, 5e-4, size=(len(p), 1)))
    ours, reference = DriftMemory(8, 4), ReferenceDriftMemory(8, 4)
    for index, row in enumerate(p):
        shown = (row, row.tolist(), tuple(row.tolist()))[index % 3]
        assert ours.predict(shown).tobytes() == reference.predict(row).tobytes(), index
    for bad in ([0.5, 0.5], [0.6, 0.6, 0.0, 0.0], [np.nan, 0.5, 0.25, 0.25]):
        with pytest.raises(ValueError):
            reference.predict(bad)
        with pytest.raises(ValueError):
            ours.predict(bad)


def test_pickle_and_deepcopy_carry_the_core_state() -> None:
    """Scenario: a DriftMemory (memory, detector, evidence held by the core) after 3,000
    events is pickled and deep-copied. We expect copies with the same snapshot that
    continue identically, and the original independent of them."""
    import copy
    import pickle

    config = {**CONFIGS[1], "significance": None}  # every detector alarm counts
    p, labels = _events(4, 6000, config["n_classes"])
    memory = DriftMemory(**config)
    for row, label in zip(p[:3000], labels[:3000].tolist(), strict=True):
        memory.observe(row)
        memory.learn(row, label)
    copies = [pickle.loads(pickle.dumps(memory)), copy.deepcopy(memory)]
    for other in copies:
        assert dumps_state(other.state_dict()) == dumps_state(memory.state_dict())
    for target in (memory, *copies):
        for row, label in zip(p[3000:], labels[3000:].tolist(), strict=True):
            target.observe(row)
            target.learn(row, label)
    assert memory.drift_count > 0
    for other in copies:
        assert dumps_state(other.state_dict()) == dumps_state(memory.state_dict())
