"""Crash and shutdown: a restarted service ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import random
import signal
import time

from tests.service.conftest import cli, read_json, start_cli

EVENTS = 5000


def _uninterrupted(config_factory, name="reference"):
    config = config_factory(name, events=EVENTS)
    summary = config.parent / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary))
    assert result.returncode == 0, result.stderr[-2000:]
    return config.parent, read_json(summary)


def _wait_for_snapshot(folder, process, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not list((folder / "state").glob("snapshot-*.snap")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no snapshot written"
        time.sleep(0.02)


def _label_records(folder):
    count = 0
    for line in (folder / "weights.jsonl").read_text().splitlines():
        json.loads(line)
        count += 1
    return count


def test_kill_minus_nine_then_restart_equals_uninterrupted_run(config_factory):
    """Scenario: the service is killed with SIGKILL at a random point after its first
    checkpoint, then restarted on the same state folder and run to the end.
    We expect: final summary and weights equal an uninterrupted run's bit for bit, the
    output files hold exactly the same lines (no duplicates, no gaps), and every label
    was learned exactly once."""
    reference, expected = _uninterrupted(config_factory)
    rng = random.Random(20261127)
    config = config_factory("crashed", events=EVENTS)
    folder = config.parent
    process = start_cli("run", "--config", str(config))
    _wait_for_snapshot(folder, process)
    time.sleep(rng.uniform(0.05, 0.6))
    assert process.poll() is None, "finished before the kill; shorten the wait"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    summary_path = folder / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "restored snapshot" in result.stderr
    summary = read_json(summary_path)
    assert summary == expected
    for name in ("weights.jsonl", "adapted.jsonl"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    stream = summary["streams"]["demo"]
    assert stream["scores"]["adapted"]["count"] == stream["labels"]
    assert stream["labels"] + stream["pending"] + stream["expired"] == stream["predictions"]


def test_sigterm_checkpoints_and_exits_zero_then_resumes(config_factory):
    """Scenario: SIGTERM mid-run. We expect: exit code 0 promptly with a checkpoint, a
    summary marked incomplete, and a restart that finishes with the uninterrupted
    result."""
    _, expected = _uninterrupted(config_factory)
    config = config_factory("terminated", events=EVENTS)
    folder = config.parent
    first_summary = folder / "first.json"
    process = start_cli("run", "--config", str(config), "--summary", str(first_summary))
    _wait_for_snapshot(folder, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0, process.stderr.read().decode()[-2000:]
    assert read_json(first_summary)["complete"] is False
    summary_path = folder / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_json(summary_path) == expected


def test_rerun_of_a_finished_state_changes_nothing(config_factory):
    """A second run on a state folder whose input is exhausted reports the same result
    and writes no new output lines."""
    folder, expected = _uninterrupted(config_factory, "finished")
    before = (folder / "weights.jsonl").read_bytes()
    summary_path = folder / "again.json"
    result = cli("run", "--config", str(folder / "config.yaml"), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_json(summary_path) == expected
    assert (folder / "weights.jsonl").read_bytes() == before
    assert _label_records(folder) >= 1
