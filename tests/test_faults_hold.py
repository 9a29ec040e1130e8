"""The test-only input gate (``STREAMWEIGHTS_TEST_HOLD_UNTIL``): input is held back while
the named file is missing, and released for good once it exists."""

from __future__ import annotations

from streamweights.runtime import faults
from streamweights.runtime.kafka_source import KafkaSource, TaskMerge


def test_gate_holds_until_the_file_exists_then_never_again(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setattr(faults, "_hold_path", str(gate))
    assert faults.holding()
    gate.touch()
    assert not faults.holding()
    gate.unlink()
    assert not faults.holding(), "once released, the gate stays open"


def test_source_releases_nothing_while_held(tmp_path, monkeypatch):
    source = KafkaSource("127.0.0.1:1", "p", "l", group_id="g")
    task = source.tasks[0] = TaskMerge()
    task.add(0, 0, 1.0, b"prediction")
    task.add(1, 0, 2.0, b"label")
    monkeypatch.setattr(faults, "_hold_path", str(tmp_path / "gate"))
    assert source._release_run() == []
    assert len(task) == 2, "held records stay buffered"
    (tmp_path / "gate").touch()
    # the prediction goes; the label then waits for its partner partition, as ever
    assert [entry[3] for _, entry in source._release_run()] == [b"prediction"]


def test_no_variable_means_no_gate(monkeypatch):
    monkeypatch.setattr(faults, "_hold_path", None)
    assert not faults.holding()
