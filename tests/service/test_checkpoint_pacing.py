"""A long checkpoint holds the next one back (``runtime.checkpoint_pacing``): after one
that took ``d`` seconds the loop processes records for ``d (1 - share) / share`` seconds
(at most 1 s) before the next, so that many streams' checkpoints cannot take all of its
time; what the run writes does not depend on it."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import yaml

from streamweights.config import ConfigError, load_config, parse_config
from streamweights.runtime import checkpoint_pacing
from streamweights.runtime.checkpoint_pacing import (
    PACING_CAP_SECONDS,
    PACING_MIN_STREAMS,
    CheckpointPacer,
)
from streamweights.runtime.service import Service
from tests.service.drifting import OUTPUTS, write_config, write_drifting_input


def test_rest_is_the_share_of_the_checkpoint_capped():
    """Scenario: checkpoints of 0.4 s, 0.1 s and 5 s of CPU under shares 0.5, 0.25, 1,
    and one of too few streams. We expect: rests of 0.4 s (half the time), 0.3 s (a
    quarter), the cap for the longest, none at share 1 nor for too few streams; a
    checkpoint may be taken exactly when its rest ends."""
    pacer = CheckpointPacer(0.5)
    assert pacer.allows(0.0)
    many = PACING_MIN_STREAMS
    assert pacer.taken(0.4, 10.4, many) == pytest.approx(0.4)
    assert not pacer.allows(10.79)
    assert pacer.allows(10.8 + 1e-9)
    assert CheckpointPacer(0.25).taken(0.1, 0.1, many) == pytest.approx(0.3)
    few = CheckpointPacer(0.25)
    assert few.taken(0.1, 1.0, many - 1) == 0.0 and few.allows(1.0)
    long = CheckpointPacer(0.5)
    assert long.taken(5.0, 5.0, many) == PACING_CAP_SECONDS
    assert long.last == (5.0, PACING_CAP_SECONDS)
    never = CheckpointPacer(1.0)
    assert never.taken(5.0, 5.0, many) == 0.0 and never.allows(5.0)
    for share in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="max_share"):
            CheckpointPacer(share)


@pytest.mark.parametrize("value", [0, 1.5, -1, "half"])
def test_config_refuses_a_share_outside_zero_to_one(tmp_path, value):
    path = write_config(tmp_path, tmp_path / "input.jsonl")
    assert load_config(path).checkpoint_max_share == 0.5  # (the default)
    raw = yaml.safe_load(path.read_text())
    raw["checkpoint"]["max_share"] = value
    with pytest.raises(ConfigError, match=r"checkpoint\.max_share"):
        parse_config(raw)


def _run(folder, input_path, share: float, checkpoint_seconds: float) -> tuple[int, dict]:
    """The drifting input with a checkpoint due after every record, each made to use
    ``checkpoint_seconds`` more of the CPU than it does (a busy loop: the pacer counts
    the thread's CPU, not waits): the checkpoints taken and the outputs."""
    config = load_config(write_config(folder, input_path))
    config = dataclasses.replace(config, checkpoint_every_records=1,
                                 checkpoint_max_share=share)
    service = Service(config)
    write = service.state.checkpoint
    taken = []

    def slow(target):
        taken.append(target.position)
        until = time.thread_time() + checkpoint_seconds
        while time.thread_time() < until:
            pass
        return write(target)

    service.state.checkpoint = slow
    service.run()
    return len(taken), {name: (folder / name).read_bytes() for name in OUTPUTS}


@pytest.fixture
def any_stream_count(monkeypatch):
    """Hold back after checkpoints of any number of changed streams (the drifting input
    has one stream; the threshold is what ``test_a_few_streams_are_never_held_back``
    checks)."""
    monkeypatch.setattr(checkpoint_pacing, "PACING_MIN_STREAMS", 0)


def test_long_checkpoints_are_paced_and_the_outputs_do_not_change(tmp_path,
                                                                  any_stream_count):
    """Scenario: 400 records with a checkpoint due after each: once with checkpoints of
    5 ms never held back (share 1), once with checkpoints of 150 ms at share 0.5, where
    400 records take far less than the 150 ms rest. We expect: a checkpoint after
    nearly every record in the first, a handful in the second (the first record's, the
    end's), and the same output bytes from both."""
    input_path = tmp_path / "input.jsonl"
    lines = write_drifting_input(input_path, predictions=200)
    records = sum(1 for line in lines if line.strip())
    every, unpaced = _run(tmp_path / "every", input_path, 1.0, 0.005)
    assert every >= records * 0.9
    few, paced = _run(tmp_path / "paced", input_path, 0.5, 0.15)
    assert 2 <= few <= 6, few
    assert paced == unpaced


def test_a_few_streams_are_never_held_back(tmp_path):
    """Scenario: one stream, a checkpoint due after every record, each taking 20 ms of
    CPU at share 0.5. We expect: a checkpoint after every record all the same (fewer
    than ``PACING_MIN_STREAMS`` changed streams hold nothing back)."""
    input_path = tmp_path / "input.jsonl"
    lines = write_drifting_input(input_path, predictions=40)
    records = sum(1 for line in lines if line.strip())
    count, _ = _run(tmp_path / "few", input_path, 0.5, 0.02)
    assert count >= records


def test_a_wait_inside_a_checkpoint_is_not_held_against_the_next(tmp_path,
                                                                 any_stream_count):
    """Scenario: a checkpoint that sleeps 200 ms (as when it waits for a broker), then
    one that computes for 200 ms, at share 0.5. We expect: the first asks for no rest
    (its CPU time is the write's own, milliseconds), the second for as long as it
    took."""
    input_path = tmp_path / "input.jsonl"
    write_drifting_input(input_path, predictions=20)
    service = Service(load_config(write_config(tmp_path / "run", input_path)))
    write = service.state.checkpoint
    service.restore()

    def asleep(target):
        time.sleep(0.2)
        return write(target)

    def busy(target):
        until = time.thread_time() + 0.2
        while time.thread_time() < until:
            pass
        return write(target)

    try:
        service.state.checkpoint = asleep
        service.checkpoint()
        cpu, rest = service._pacer.last
        assert cpu < 0.1 and rest == pytest.approx(cpu)
        service.state.checkpoint = busy
        service.checkpoint()
        cpu, rest = service._pacer.last
        assert cpu >= 0.2 and rest == pytest.approx(cpu)
    finally:
        service.close()
