"""DriftMemory: RoTTA's class-balanced memory plus a river drift detector (§4.2, §5)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streamweights.adapters import DriftMemory, restore_adapter
from streamweights.adapters.state_codec import dumps_state, encode_state, loads_state


def _bernoulli_errors(rng, rates_and_lengths):
    return np.concatenate([(rng.random(n) < rate).astype(float)
                           for rate, n in rates_and_lengths])


def _probabilities(rng, n, n_classes, scale=2.0):
    logits = rng.normal(scale=scale, size=(n, n_classes))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _fraction_after(memory, change_index):
    tags = np.array([item[0] for item, *_ in memory.items()])
    return float((tags >= change_index).mean())


def test_never_above_capacity_and_quota_holds_on_a_class_correlated_stream():
    """Scenario: a class-correlated stream (runs of 1-200 events of one class, as RoTTA's
    Dirichlet sampling makes) is offered to a 64-item memory over 5 classes.
    We expect: never more than 64 items, class counts summing to the size, and after the
    memory has filled no class above ceil(64 / 5) = 13 (algorithms.md §7 item 6)."""
    rng = np.random.default_rng(0)
    memory = DriftMemory(capacity=64, n_classes=5, detector=None)
    quota = math.ceil(64 / 5)
    event = 0
    while event < 4000:
        label = int(rng.integers(5))
        for _ in range(int(rng.integers(1, 200))):
            memory.add(np.array([event]), label, float(rng.uniform(0, math.log(5))))
            event += 1
            counts = memory.class_counts()
            assert len(memory) <= 64
            assert counts.sum() == len(memory)
            assert counts.max() <= quota
    assert len(memory) == 64


@pytest.mark.parametrize(("capacity", "n_classes"), [(64, 4), (64, 3), (10, 4)])
def test_class_counts_within_one_on_a_balanced_stream(capacity, n_classes):
    """Scenario: 5,000 observed probability vectors whose predicted classes are balanced.
    We expect: the memory is full and its class counts differ by at most one."""
    rng = np.random.default_rng(capacity + n_classes)
    memory = DriftMemory(capacity=capacity, n_classes=n_classes, detector=None)
    memory.observe_many(_probabilities(rng, 5000, n_classes))
    counts = memory.class_counts()
    assert len(memory) == capacity
    assert counts.min() > 0
    assert counts.max() - counts.min() <= 1


def test_age_replaces_the_memory_after_a_concept_change():
    """Scenario: items tagged by their index; at index 3,000 the item distribution changes.
    Uncertainties are low (below 0.2·ln C), so age dominates the score.
    We expect: 2 × capacity events after the change at least 90% of the memory is new."""
    rng = np.random.default_rng(1)
    capacity, n_classes, change = 64, 3, 3000
    memory = DriftMemory(capacity=capacity, n_classes=n_classes, detector=None)
    labels = rng.integers(0, n_classes, change + 2 * capacity)
    uncertainties = rng.uniform(0, 0.2 * math.log(n_classes), len(labels))
    for index, (label, uncertainty) in enumerate(zip(labels, uncertainties, strict=True)):
        memory.add(np.array([index]), int(label), float(uncertainty))
    assert _fraction_after(memory, change) >= 0.9


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_detector_eviction_replaces_the_memory_when_age_alone_does_not(detector):
    """Scenario: as above, but uncertainties spread over [0, ln C], so confident old items
    out-score uncertain new ones and age alone keeps many; at the change the 0/1 error of
    the model rises from 0.1 to 0.5 and every event's loss reaches the detector.
    We expect: without a detector less than 90% of the memory is new after 2 × capacity
    events; with one it fires, evicts what came before its change point, and at least 90%
    is new."""
    rng = np.random.default_rng(0)
    capacity, n_classes, change = 64, 3, 3000
    n = change + 2 * capacity
    labels = rng.integers(0, n_classes, n)
    uncertainties = rng.uniform(0, math.log(n_classes), n)
    errors = _bernoulli_errors(rng, [(0.1, change), (0.5, 2 * capacity)])
    without = DriftMemory(capacity=capacity, n_classes=n_classes, detector=None)
    with_detector = DriftMemory(capacity=capacity, n_classes=n_classes, detector=detector)
    for index in range(n):
        for memory in (without, with_detector):
            memory.add(np.array([index]), int(labels[index]), float(uncertainties[index]))
            memory.update_loss(errors[index])
    assert _fraction_after(without, change) < 0.9
    assert with_detector.drift_count >= 1
    assert _fraction_after(with_detector, change) >= 0.9


def test_adwin_fires_within_500_events_of_an_error_rise_and_locates_it():
    """Scenario: Bernoulli 0/1 errors at rate 0.1 for 3,000 events, then 0.4 (five seeds).
    We expect: ADWIN (δ = 0.002) fires within 500 events of the rise, and the change point
    it reports is within 100 events of the true one."""
    for seed in range(5):
        errors = _bernoulli_errors(np.random.default_rng(seed), [(0.1, 3000), (0.4, 1000)])
        memory = DriftMemory(capacity=64, n_classes=2)
        alarms = [i for i, error in enumerate(errors) if memory.update_loss(error)]
        assert alarms and 3000 <= alarms[0] < 3500, alarms
        assert memory.last_drift_step == alarms[-1] + 1
        assert abs(memory.change_point - 3000) < 100


def test_adwin_does_not_fire_on_a_stationary_stream():
    """Scenario: 10 seeds × 10,000 Bernoulli(0.1) errors, no change (river's ADWIN is
    measured to raise no alarm on 40 such streams).
    We expect: no alarm at all."""
    false_alarms = 0
    for seed in range(10):
        memory = DriftMemory(capacity=64, n_classes=2)
        for error in _bernoulli_errors(np.random.default_rng(100 + seed), [(0.1, 10_000)]):
            memory.update_loss(error)
        false_alarms += memory.drift_count
    assert false_alarms == 0


def test_page_hinkley_on_standardised_losses_fires_on_the_rise_only():
    """Scenario: the same 0.1 -> 0.4 rise, and a stationary 10,000-event stream.
    We expect: Page-Hinkley (standardised input, δ = 0.5, λ = 50) fires within 500 events of
    the rise and not on the stationary stream; with river's raw-scale δ = 0.005 the same
    stationary stream does raise detector alarms (why the default differs), which the
    evidence test then keeps from counting as drifts."""
    for seed in range(5):
        errors = _bernoulli_errors(np.random.default_rng(seed), [(0.1, 3000), (0.4, 1000)])
        memory = DriftMemory(capacity=64, n_classes=2, detector="page_hinkley")
        alarms = [i for i, error in enumerate(errors) if memory.update_loss(error)]
        assert alarms and 3000 <= alarms[0] < 3500, alarms
    stationary = _bernoulli_errors(np.random.default_rng(7), [(0.1, 10_000)])
    quiet = DriftMemory(capacity=64, n_classes=2, detector="page_hinkley")
    river_scale = DriftMemory(capacity=64, n_classes=2, detector="page_hinkley",
                              detector_options={"delta": 0.005}, significance=None)
    confirmed = DriftMemory(capacity=64, n_classes=2, detector="page_hinkley",
                            detector_options={"delta": 0.005})
    for error in stationary:
        quiet.update_loss(error)
        river_scale.update_loss(error)
        confirmed.update_loss(error)
    assert quiet.drift_count == 0
    assert river_scale.drift_count > 0
    assert confirmed.drift_count == 0 and confirmed.unconfirmed_count > 0


def test_learn_feeds_the_loss_and_relabels_the_observed_item():
    """Scenario: observe p (pseudo-class 0), then its label 2 arrives; then a label arrives
    for an input that was never observed.
    We expect: the stored copy changes class (no duplicate), the unseen input is stored as
    a new labelled item, and both losses reached the detector."""
    memory = DriftMemory(capacity=8, n_classes=3)
    p = np.array([0.7, 0.2, 0.1])
    memory.observe(p)
    assert memory.class_counts().tolist() == [1, 0, 0]
    memory.learn(p, 2)
    assert memory.class_counts().tolist() == [0, 0, 1]
    assert len(memory) == 1
    memory.learn(np.array([0.1, 0.8, 0.1]), 1)
    assert memory.class_counts().tolist() == [0, 1, 1]
    assert memory.signals_seen == 2
    assert [label for _, label, _, _ in memory.items()] == [2, 1]
    np.testing.assert_allclose(memory.items()[0][0], p, rtol=1e-15)
    np.testing.assert_allclose(memory.predict(p), p, rtol=1e-15)


def test_relabel_into_a_full_class_keeps_the_quota():
    """Scenario: capacity 2 over 2 classes; both slots hold class 0 and class 1 items; the
    label moves the class-0 item into class 1, which is at its quota.
    We expect: the highest-scoring class-1 item is evicted and counts stay within quota."""
    memory = DriftMemory(capacity=2, n_classes=2, detector=None)
    memory.add(np.array([1.0]), 1, 0.6)
    p = np.array([0.9, 0.1])
    memory.observe(p)
    memory.learn(p, 1)
    assert memory.class_counts().tolist() == [0, 1]
    assert memory.items()[0][1] == 1


def test_entropy_filter_and_entropy_signal():
    """Scenario: entropy_filter=0.5 (STAMP); then the entropy of the observed stream jumps
    from confident to near-uniform outputs, with no labels.
    We expect: uncertain inputs never enter the memory; the entropy-monitoring ADWIN fires
    after the jump."""
    rng = np.random.default_rng(3)
    filtered = DriftMemory(capacity=16, n_classes=3, detector=None, entropy_filter=0.5)
    filtered.observe(np.full(3, 1 / 3))
    assert len(filtered) == 0
    filtered.observe(np.array([0.98, 0.01, 0.01]))
    assert len(filtered) == 1

    monitor = DriftMemory(capacity=16, n_classes=3, signal="entropy")
    monitor.observe_many(_probabilities(rng, 2000, 3, scale=4.0))
    assert monitor.drift_count == 0
    monitor.observe_many(_probabilities(rng, 500, 3, scale=0.3))
    assert monitor.drift_count >= 1
    assert monitor.last_drift_step > 2000


def test_on_drift_is_idempotent_after_an_own_alarm():
    """Scenario: the detector fires and evicts; the pipeline then broadcasts the alarm.
    We expect: on_drift changes nothing more, and a memory without a detector keeps all."""
    rng = np.random.default_rng(4)
    memory = DriftMemory(capacity=32, n_classes=2)
    errors = _bernoulli_errors(rng, [(0.05, 2000), (0.6, 300)])
    for index, error in enumerate(errors):
        memory.add(np.array([index]), index % 2, 0.1)
        memory.update_loss(error)
    assert memory.drift_count >= 1
    before = dumps_state(memory.state_dict())
    memory.on_drift()
    assert dumps_state(memory.state_dict()) == before
    plain = DriftMemory(capacity=4, n_classes=2, detector=None)
    plain.add(np.zeros(2), 0, 0.1)
    plain.on_drift()
    assert len(plain) == 1


def test_items_of_any_shape_and_dtype_round_trip_bit_exactly():
    """Scenario: items of shapes (), (3,), (2, 2), (1, 2, 3) and dtypes float32/64, int16,
    uint8, bool go through state_dict -> JSON -> restore_adapter.
    We expect: identical bytes, dtypes and shapes; identical behaviour afterwards."""
    rng = np.random.default_rng(5)
    memory = DriftMemory(capacity=10, n_classes=3, detector="page_hinkley")
    items = [np.float64(np.pi), rng.normal(size=3).astype(np.float32),
             rng.integers(-5, 5, size=(2, 2)).astype(np.int16),
             rng.integers(0, 255, size=(1, 2, 3)).astype(np.uint8),
             np.array([True, False]), np.array([-0.0, 5e-324, 1e308])]
    for index, item in enumerate(items):
        memory.add(item, index % 3, float(index) / 10)
        memory.update_loss(float(index % 2))
    text = json.dumps(encode_state(memory.state_dict()))
    restored = restore_adapter(loads_state(text))
    assert len(restored) == len(items)
    for (a, *rest_a), (b, *rest_b) in zip(memory.items(), restored.items(), strict=True):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
        assert rest_a == rest_b
    assert dumps_state(restored.state_dict()) == dumps_state(memory.state_dict())


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_detector_state_round_trip_continues_identically(detector):
    """Scenario: snapshot in the middle of a stream that later drifts, restore, continue.
    We expect: the restored memory raises the same alarms at the same steps and ends in the
    same state as the original."""
    errors = _bernoulli_errors(np.random.default_rng(6), [(0.1, 1500), (0.5, 800)])
    original = DriftMemory(capacity=16, n_classes=2, detector=detector)
    for error in errors[:1400]:
        original.update_loss(error)
    restored = restore_adapter(loads_state(dumps_state(original.state_dict())))
    alarms = [[i for i, e in enumerate(errors[1400:]) if m.update_loss(e)]
              for m in (original, restored)]
    assert alarms[0] and alarms[0] == alarms[1]
    assert dumps_state(restored.state_dict()) == dumps_state(original.state_dict())


def test_snapshot_from_another_river_version_is_refused():
    memory = DriftMemory(capacity=4, n_classes=2)
    memory.update_loss(1.0)
    state = memory.state_dict()
    state["state"]["detector"]["river_version"] = "0.0.1"
    with pytest.raises(ValueError, match=r"river 0\.0\.1.*same river version"):
        DriftMemory(capacity=4, n_classes=2).load_state_dict(state)


def test_generic_inputs_are_validated_before_any_change():
    memory = DriftMemory(capacity=4, n_classes=2)
    memory.add(np.ones(2), 0, 0.1)
    before = dumps_state(memory.state_dict())
    bad_calls = [
        (lambda: memory.add(np.array([np.nan]), 0, 0.1), "NaN"),
        (lambda: memory.add(np.array(["a"]), 0, 0.1), "numeric"),
        (lambda: memory.add(np.ones(2), 2, 0.1), "unknown class"),
        (lambda: memory.add(np.ones(2), 0, -1.0), "uncertainty"),
        (lambda: memory.add(np.ones(2), 0, np.inf), "inf"),
        (lambda: memory.update_loss(np.nan), "NaN"),
        (lambda: memory.update_loss([1.0, 2.0]), "shape"),
        (lambda: memory.update_loss("x"), "numeric"),
    ]
    for call, word in bad_calls:
        with pytest.raises(ValueError, match=word):
            call()
    assert dumps_state(memory.state_dict()) == before


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"capacity": 0}, "capacity"), ({"n_classes": 1}, "n_classes"),
    ({"detector": "kswin"}, "detector"), ({"signal": "labels"}, "signal"),
    ({"loss": "hinge"}, "loss"), ({"detector_options": {"nonsense": 1}}, "detector_options"),
    ({"detector_options": {"delta": [1]}}, "detector_options"),
    ({"entropy_filter": 0.0}, "entropy_filter"), ({"timeliness_weight": -1}, "timeliness"),
    ({"standardise_warmup": 1}, "standardise_warmup"),
])
def test_hyper_parameters_are_validated(kwargs, field):
    arguments = {"capacity": 8, "n_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        DriftMemory(**arguments)


def test_rows_of_one_width_are_written_as_one_array_and_the_old_layout_still_loads():
    """Scenario: a memory of served probabilities (rows of 3 floats, as the service stores)
    after 400 observe/learn pairs, and one that also holds a float32 item. We expect: the
    first writes its items as one (items, 3) float64 array with no shapes; the same
    state in the layout of earlier records (a list of rows, shapes aside) loads to a
    memory that continues identically; a memory with an item of another kind, or none,
    keeps the list layout; a matrix of the wrong rank is refused, the state unchanged."""
    rng = np.random.default_rng(12)
    memory = DriftMemory(capacity=16, n_classes=3, detector="adwin")
    assert memory.state_dict()["state"]["item_shapes"] == []
    p = rng.dirichlet([0.5, 0.5, 0.5], size=700)
    labels = rng.integers(3, size=700)
    for row, label in zip(p[:400], labels[:400], strict=True):
        memory.observe(row)
        memory.learn(row, int(label))
    state = memory.state_dict()
    items = state["state"]["items"]
    assert state["state"]["item_shapes"] is None
    assert type(items) is np.ndarray and items.dtype == np.float64
    assert items.shape == (len(memory), 3) and len(memory) == 16
    old = {**state, "state": {**state["state"], "items": list(items.copy()),
                              "item_shapes": [[3]] * len(items)}}
    copies = [restore_adapter(loads_state(dumps_state(form))) for form in (state, old)]
    for row, label in zip(p[400:], labels[400:], strict=True):
        for target in (memory, *copies):
            target.observe(row)
            target.learn(row, int(label))
    assert all(dumps_state(copy.state_dict()) == dumps_state(memory.state_dict())
               for copy in copies)
    mixed = DriftMemory(capacity=4, n_classes=3)
    mixed.add(p[0], 0, 0.1)
    mixed.add(p[1].astype(np.float32), 1, 0.2)
    shapes = mixed.state_dict()["state"]["item_shapes"]
    assert shapes == [[3], [3]] and mixed.state_dict()["state"]["items"][1].dtype == np.float32
    before = dumps_state(memory.state_dict())
    bad = {**state, "state": {**state["state"], "items": items[0]}}
    with pytest.raises(ValueError, match="items"):
        memory.load_state_dict(bad)
    assert dumps_state(memory.state_dict()) == before
