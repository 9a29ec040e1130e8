"""Crash and shutdown: a restarted service ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from streamweights.runtime.faults import KILL_AT_ENV
from streamweights.runtime.state_store import LocalStateStore
from tests.service.conftest import REPO, cli, read_json, start_cli
from tests.service.drifting import outputs, run_cli, write_config, write_drifting_input
from tests.service.drifting import start_cli as start_drifting

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
    time.sleep(rng.uniform(0.05, 0.4))  # the run goes on ~1.3 s past its first snapshot
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


def test_sigusr1_writes_every_threads_stack_and_the_run_goes_on(tmp_path):
    """Scenario: a service reading stdin has processed half its input and waits for
    more; it gets SIGUSR1. We expect: every thread's Python stack on stderr, the main
    thread's showing the service loop, and a log line with its position (the records
    read so far); the process still running; the rest of the
    input then processed to the same per-stream summary as a run on the whole file."""
    lines = write_drifting_input(tmp_path / "input.jsonl", predictions=600)
    reference = run_cli("run", "--config", str(write_config(tmp_path / "file",
                                                            tmp_path / "input.jsonl")),
                        "--summary", str(tmp_path / "file" / "summary.json"))
    assert reference.returncode == 0, reference.stderr[-2000:]
    config = write_config(tmp_path / "stdin", tmp_path / "input.jsonl")
    document = yaml.safe_load(config.read_text())
    document["source"] = {"kind": "jsonl", "path": "-"}
    config.write_text(yaml.safe_dump(document))
    stderr_path = tmp_path / "stdin" / "stderr.log"
    half = len(lines) // 2
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamweights", "run", "--config", str(config),
             "--summary", str(tmp_path / "stdin" / "summary.json")],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        assert process.stdin is not None
        process.stdin.write("".join(line + "\n" for line in lines[:half]).encode())
        process.stdin.flush()
        time.sleep(3)  # it reads and processes the first half, then waits on stdin
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not all(part in stderr_path.read_text(errors="replace")
                      for part in ("most recent call first", "state on request")):
            assert process.poll() is None, stderr_path.read_text()[-2000:]
            assert time.monotonic() < deadline, "no stack dump or state report on stderr"
            time.sleep(0.05)
        time.sleep(0.5)  # the rest of the dump
        assert process.poll() is None, "SIGUSR1 ended the process"
        process.stdin.write("".join(line + "\n" for line in lines[half:]).encode())
        process.stdin.close()
        assert process.wait(timeout=120) == 0, stderr_path.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
    dump = stderr_path.read_text()
    assert "_loop" in dump and "service.py" in dump, dump[-3000:]
    (report,) = [json.loads(line) for line in dump.splitlines()
                 if "state on request" in line]
    position = int(re.search(r"position (\d+),", report["message"]).group(1))
    assert 0 < position <= half, report  # half, unless the machine is slow to read it
    assert (read_json(tmp_path / "stdin" / "summary.json")["streams"]
            == read_json(tmp_path / "file" / "summary.json")["streams"])


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


# -- kill -9 at chosen points, each restart with the same command ------------------------
#
# The points are reached with the test-only hook of streamweights.runtime.faults (the
# process sends itself SIGKILL: a real kill -9, no handler runs, unflushed buffers are
# lost) or by this test's own SIGKILL at a random time once the process holds the state
# folder. A chain is: the command killed k times in a row, then the same command once more
# to its end; its outputs (adapted, weights, dead-letter files) and summary file must equal
# the uninterrupted run's, byte for byte.

CHECKPOINT_EVERY = 250


class KillPlan:
    """Draws kill points that the next process is sure to reach, given where the state
    folder's latest snapshot will make it resume."""

    def __init__(self, lines: list[str], rng: random.Random) -> None:
        self.lines = lines
        self.rng = rng

    def resume_position(self, folder) -> int:
        snapshot = LocalStateStore(folder / "state").load()
        return 0 if snapshot is None else int(snapshot["position"])

    def draw(self, folder, end: int) -> str:
        start = self.resume_position(folder)
        records = [n for n in range(start, end) if self.lines[n]]
        kind = self.rng.choices(("record", "snapshot", "restored", "external"), (4, 4, 1, 1))[0]
        if kind == "record" and records:
            # position n + 1 is reached once the record on line n is processed
            return f"record:{self.rng.choice(records) + 1}"
        if kind in ("record", "snapshot"):
            # saves of this process: one per CHECKPOINT_EVERY records (the bound's record
            # ends the loop before its checkpoint), then the final one
            saves = (len(records) - 1) // CHECKPOINT_EVERY + 1 if records else 1
            stage = self.rng.choice(("partial", "written", "renamed"))
            return f"snapshot:{self.rng.randint(1, saves)}:{stage}"
        return kind


def _killed_run(args, point, folder, rng):
    """One run of ``args`` killed at ``point``; whether it was killed (an external kill
    can come too late)."""
    if point != "external":
        result = run_cli(*args, env={KILL_AT_ENV: point})
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
        return True
    process = start_drifting(*args)
    lock = folder / "state" / "lock"
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if lock.exists() and f"pid {process.pid}," in lock.read_text():
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    return process.returncode == -signal.SIGKILL


def _chains(tmp_path, chains, seed):
    """Run ``chains`` = [(kill points or a count of random ones, --max-records or None)];
    return the kill points used. Each chain's outputs must equal the uninterrupted run
    with the same bound."""
    input_path = tmp_path / "input.jsonl"
    lines = write_drifting_input(input_path)
    plan = KillPlan(lines, random.Random(seed))
    references = {}
    used = []
    for number, (points, bound) in enumerate(chains):
        extra = ("--max-records", str(bound)) if bound else ()
        if bound not in references:
            folder = tmp_path / f"reference-{bound}"
            config = write_config(folder, input_path, checkpoint_every_records=CHECKPOINT_EVERY)
            result = run_cli("run", "--config", str(config), "--summary",
                             str(folder / "summary.json"), *extra)
            assert result.returncode == 0, result.stderr[-2000:]
            references[bound] = outputs(folder)
        folder = tmp_path / f"chain-{number}"
        config = write_config(folder, input_path, checkpoint_every_records=CHECKPOINT_EVERY)
        args = ("run", "--config", str(config), "--summary", str(folder / "summary.json"),
                *extra)
        end = bound or len(lines)
        todo = list(points) if isinstance(points, list) else []
        for point in todo:
            assert _killed_run(args, point, folder, plan.rng), point
        while isinstance(points, int) and len(todo) < points:
            point = plan.draw(folder, end)
            if _killed_run(args, point, folder, plan.rng):  # else it ran to its end
                todo.append(point)
        used.extend(todo)
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr[-2000:]
        got = outputs(folder)
        for name, expected in references[bound].items():
            assert got[name] == expected, (f"chain {number} (kills {todo}, bound {bound}): "
                                           f"{name} differs")
    return used


def test_kill_minus_nine_at_chosen_points_each_restart_matches(tmp_path):
    """Scenario: a JSONL input with an early drift event, dead letters and blank lines,
    checkpoints every 250 records. Processes are killed with SIGKILL before the first
    snapshot, inside snapshot writes (half the temporary file written; written but not
    renamed; renamed but older ones not yet removed), right after a fresh start emptied
    the outputs and after a restore past the drift event, in bounded runs too; each time
    the same command is started again.
    We expect: after each chain the outputs and the summary are byte-identical to the
    uninterrupted run with the same bound."""
    used = _chains(tmp_path, [
        (["record:120"], None),                                  # before the first snapshot
        (["snapshot:1:partial", "snapshot:1:written"], None),    # inside the first writes
        (["record:2200", "restored", "snapshot:2:renamed"], None),  # past the drift
        (["record:900", "snapshot:3:written"], 2000),            # a bounded run
        (["snapshot:1:partial", "record:1999"], 2000),
    ], seed=1)
    assert len(used) == 10


@pytest.mark.slow
def test_kill_minus_nine_at_forty_random_points(tmp_path):
    """Scenario: as above, 40 kill points drawn at random (a record, a snapshot write
    stage, right after restore, or this test's own SIGKILL at a random instant) in chains
    of 1-4 kills, one chain in three bounded with --max-records.
    We expect: every chain's outputs and summary equal the uninterrupted run's."""
    rng = random.Random(20261130)
    chains, total = [], 0
    while total < 40:
        kills = min(rng.randint(1, 4), 40 - total)
        chains.append((kills, 1700 if len(chains) % 3 == 2 else None))
        total += kills
    used = _chains(tmp_path, chains, seed=20261130)
    assert len(used) == 40
    assert {point.split(":")[0] for point in used} == {"record", "snapshot", "restored",
                                                       "external"}
