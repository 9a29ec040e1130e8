"""The test-only input gate (``STREAMWEIGHTS_TEST_HOLD_UNTIL``): input is held back while
the named file is missing, and released for good once it exists."""

from __future__ import annotations

from streamweights.runtime import faults


def test_gate_holds_until_the_file_exists_then_never_again(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setattr(faults, "_hold_path", str(gate))
    assert faults.holding()
    gate.touch()
    assert not faults.holding()
    gate.unlink()
    assert not faults.holding(), "once released, the gate stays open"


def test_held_from_names_the_position_until_the_file_exists(tmp_path, monkeypatch):
    gate = tmp_path / "gate"
    monkeypatch.setattr(faults, "_hold_path", str(gate))
    monkeypatch.setattr(faults, "_hold_at", 250)
    assert faults.held_from() == 250 and faults.hold_file() == str(gate)
    gate.touch()
    assert faults.held_from() is None


def test_no_variable_means_no_gate(monkeypatch):
    monkeypatch.setattr(faults, "_hold_path", None)
    assert not faults.holding()
    assert faults.held_from() is None
