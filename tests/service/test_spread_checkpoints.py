"""Checkpoints that spread their writes: past ``checkpoint.spread_above`` changed streams
a checkpoint writes the ``1 / spread_over`` of them with the oldest records, and a
restore replays the input into the others (``runtime.service.LocalCheckpoints``).

The bursty input of ``test_incremental_state`` (eight streams, records in blocks of 60, a
checkpoint every 150 records, so 2-4 streams change between two checkpoints) with
``spread_above: 1`` and ``spread_over: 2`` makes nearly every checkpoint leave a stream
unwritten.
"""

from __future__ import annotations

import json
import signal

import pytest
import yaml

from streamweights.adapters.state_codec import dumps_state
from streamweights.config import ConfigError, load_config, parse_config
from streamweights.evaluation.trace import TraceRecorder
from streamweights.runtime.faults import KILL_AT_ENV
from streamweights.runtime.service import Service
from streamweights.runtime.sources import JsonlSource
from streamweights.runtime.state_store import LocalStateStore
from tests.service.conftest import REPO
from tests.service.drifting import outputs, run_cli
from tests.service.test_incremental_state import (
    STREAMS,
    _run,
    _streams_between,
    write_bursty_input,
    write_config,
)


def spread_config(folder, input_path, above: int = 1, over: int = 2):
    path = write_config(folder, input_path)
    document = yaml.safe_load(path.read_text())
    document["checkpoint"].update(spread_above=above, spread_over=over)
    path.write_text(yaml.safe_dump(document))
    return path


def with_refusals(lines: list[str]) -> list[str]:
    """``lines`` with, after every 89th, a prediction its stream refuses (one model's
    outputs missing): counted by reason in the pipeline's state, which a replay must
    not count again."""
    out = []
    for number, line in enumerate(lines):
        out.append(line)
        if number % 89 == 88:
            try:
                record = json.loads(line)
            except ValueError:  # a truncated line
                continue
            out.append(json.dumps({"schema": 1, "stream": record["stream"],
                                   "id": f"refused-{number}", "ts": record["ts"],
                                   "outputs": {"naive_bayes": [0.5, 0.5]}}))
    return out


@pytest.fixture(scope="module")
def bursty(tmp_path_factory):
    """The input, its lines and the outputs of a run that writes every changed stream."""
    root = tmp_path_factory.mktemp("spread")
    input_path = root / "input.jsonl"
    lines = with_refusals(write_bursty_input(input_path))
    input_path.write_text("\n".join(lines) + "\n")
    folder = root / "reference"
    write_config(folder, input_path)
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return input_path, lines, outputs(folder)


def _stale(lines: list[str], written: dict[str, int], position: int) -> set[str]:
    """The streams with records between their own record's position and ``position``."""
    return {name for name in STREAMS if name in _streams_between(lines, written[name],
                                                                  position)}


def test_a_checkpoint_leaves_the_newest_streams_for_the_next_and_says_where_to_replay(
        tmp_path, bursty):
    """Scenario: the run bounded at 1,700 records, spreading over 2 checkpoints (where
    the chain is three incremental snapshots past its full one: where a chain rebases
    moves with the records' sizes, so the bound is chosen for it).
    We expect: every incremental snapshot writes a part of the streams changed since
    their records (those whose records are oldest), never one unchanged; a stream left
    unwritten is written by a later one; ``replay_from`` is the oldest position among
    the records of the streams left changed, absent when none is; the snapshots that
    have it are of format 3, the others of format 2 (``inspect`` says what the latest
    one replays). A full snapshot (the chain's base)
    holds every stream's record, those it did not write copied from the snapshots before
    with the positions they were taken at."""
    input_path, lines, _ = bursty
    folder = tmp_path / "bounded"
    spread_config(folder, input_path)
    assert _run(folder, "--max-records", "1700").returncode == 0
    store = LocalStateStore(folder / "state")
    kept = dict(store.snapshots())
    heads = {seq: store.read(path) for seq, path in kept.items()}
    latest = max(kept)
    base = heads[latest]["base"]
    assert latest - base >= 3
    written = {name: heads[base].get("written", {}).get(name, heads[base]["position"])
               for name, _ in heads[base]["stream_records"]}
    assert sorted(written) == sorted(STREAMS)
    left_some = 0
    for seq in range(base, latest + 1):
        head = heads[seq]
        if seq > base:
            stale = _stale(lines, written, head["position"])
            names = [name for name, _ in head["stream_records"]]
            assert set(names) <= stale
            oldest = sorted(stale, key=lambda name: (written[name], STREAMS.index(name)))
            assert sorted(names) == sorted(oldest[:max(1, -(-len(stale) // 2))]), seq
            for name in names:
                written[name] = head["position"]
        stale = _stale(lines, written, head["position"])
        left_some += bool(stale)
        assert head.get("replay_from") == (min(written[name] for name in stale)
                                           if stale else None), seq
        # format 3 exactly when a restore must replay: a release that reads 2 refuses it
        assert kept[seq].read_bytes()[:25] == (b"streamweights-snapshot 3 " if stale
                                               else b"streamweights-snapshot 2 "), seq
    assert left_some >= 3
    shown = run_cli("inspect", str(folder / "state"))
    assert shown.returncode == 0, shown.stderr
    assert (f"a restore replays input positions {heads[latest]['replay_from']} to "
            f"{heads[latest]['position'] - 1} into them") in shown.stdout


def _restored_state(config_path, max_records=None) -> tuple[bytes, Service]:
    """The pipeline state a new service restores from the folder of ``config_path``
    (with ``run --report``'s recorder installed, which must trace none of a replay)."""
    service = Service(load_config(config_path), max_records=max_records)
    recorder = TraceRecorder(service.pipeline).install()
    try:
        service.restore()
        assert service.position > 0
        assert recorder.records == 0
        return dumps_state(service.pipeline.state_dict()).encode(), service
    finally:
        service.close()


def test_a_restore_that_replays_gives_the_state_of_one_that_does_not(tmp_path, bursty):
    """Scenario: the same bounded run (2,000 records) twice, writing every changed stream
    at each checkpoint and spreading over 2 and over 3 checkpoints; each folder restored
    by a new service. We expect: the spread ones replay records into the streams their
    latest snapshot left unwritten, and every pipeline state restored is the same, byte
    for byte (weights, joins, scores, detectors, counts)."""
    input_path, _, _ = bursty
    states = []
    for name, over in (("all", 1), ("two", 2), ("three", 3)):
        folder = tmp_path / name
        path = spread_config(folder, input_path, over=over)
        assert _run(folder, "--max-records", "2000").returncode == 0
        state, service = _restored_state(path)
        assert (service.state.replayed > 0) == (over > 1), name
        states.append(state)
    assert states[1] == states[0]
    assert states[2] == states[0]


def test_restarts_that_replay_equal_the_uninterrupted_run(tmp_path, bursty):
    """Scenario: the run spreading its writes, killed with SIGKILL at input records and
    inside snapshot writes, restarted after each kill, then run to the end.
    We expect: adapted, weights and dead-letter files and the summary equal those of the
    uninterrupted run that wrote every stream, byte for byte; some restores replayed
    input (their log line says how many records, from where); the last snapshot, taken
    at the input's end, left no stream unwritten."""
    input_path, _, expected = bursty
    folder = tmp_path / "killed"
    spread_config(folder, input_path)
    replays = 0
    for point in ("record:700", "snapshot:3:partial", "record:1650", "snapshot:2:written",
                  "snapshot:4:renamed", "record:3100"):
        result = _run(folder, env={KILL_AT_ENV: point})
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
        replays += "records replayed into the streams" in result.stderr
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    replays += "records replayed into the streams" in result.stderr
    assert replays >= 3
    got = outputs(folder)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs after the kills"
    store = LocalStateStore(folder / "state")
    assert "replay_from" not in store.read(store.snapshots()[0][1])


def test_standard_input_and_few_streams_write_every_changed_stream(tmp_path, bursty):
    """Scenario: the checkpoint's choice with 8 streams changed: spreading above 1 with
    a file source, above 8 with a file source, above 1 reading standard input.
    We expect: a part of them, then all, then all (standard input cannot be read again
    from an earlier position)."""
    input_path, _, _ = bursty
    path = spread_config(tmp_path / "choice", input_path)
    service = Service(load_config(path))
    try:
        service.restore()
        state = service.state
        state.written = {name: index for index, name in enumerate(STREAMS)}
        assert state._due(list(STREAMS), service) == list(STREAMS[:4])
        state.write_floor = 8
        assert state._due(list(STREAMS), service) == list(STREAMS)
        state.write_floor = 1
        service.source = JsonlSource("-")
        assert state._due(list(STREAMS), service) == list(STREAMS)
    finally:
        service.close()


def test_spread_settings_are_checked_and_reach_the_kafka_runtime_too(tmp_path):
    """Scenario: ``spread_over: 0``; the keys in a Kafka config; the defaults.
    We expect: the first refused with a line that names the key; the second read (the
    Kafka runtime spreads its commits too: ``runtime.commit_spread``); the defaults 256
    and 8 embedded, 32 and 160 in Kafka mode, as the annotated ``configs/kafka.yaml``
    says."""
    document = yaml.safe_load(write_config(tmp_path, tmp_path / "in.jsonl").read_text())
    defaults = parse_config(document)
    assert (defaults.checkpoint_spread_above, defaults.checkpoint_spread_over) == (256, 8)
    with pytest.raises(ConfigError, match=r"checkpoint\.spread_over"):
        parse_config({**document, "checkpoint": {"spread_over": 0}})
    kafka = {**document, "source": {"kind": "kafka"},
             "kafka": {"bootstrap_servers": "127.0.0.1:9"},
             "checkpoint": {"spread_above": 10, "spread_over": 4}}
    config = parse_config(json.loads(json.dumps(kafka)))
    assert (config.checkpoint_spread_above, config.checkpoint_spread_over) == (10, 4)
    kafka_defaults = parse_config({**kafka, "checkpoint": {}})
    assert (kafka_defaults.checkpoint_spread_above,
            kafka_defaults.checkpoint_spread_over) == (32, 160)
    example = load_config(REPO / "configs" / "kafka.yaml")
    assert (example.checkpoint_spread_above, example.checkpoint_spread_over) == (32, 160)


@pytest.mark.parametrize("damaged", [False, True])
def test_a_full_snapshot_after_a_restore_copies_or_encodes_when_it_cannot(
        tmp_path, bursty, caplog, damaged):
    """Scenario: a service restores a spread folder, takes ten more records and is made
    to write a full snapshot; in the second case a byte of the chain's base was flipped
    after the restore read it. We expect: the full snapshot encodes the streams due and
    copies the others (intact chain), or, unable to read the chain back, says so and
    encodes all eight; either way a new service restores the same state as the live
    one, byte for byte."""
    input_path, _, _ = bursty
    path = spread_config(tmp_path / "full", input_path)
    assert _run(tmp_path / "full", "--max-records", "2000").returncode == 0
    service = Service(load_config(path))
    try:
        service.restore()
        store = service.state.store
        if damaged:
            base = tmp_path / "full" / "state" / f"snapshot-{store._chain.base:012d}.snap"
            data = bytearray(base.read_bytes())
            data[len(data) // 2] ^= 0x40
            base.write_bytes(bytes(data))
        store._chain.delta_bytes = 1 << 40  # the next snapshot full
        service.max_records = service.position + 10
        service._loop()  # ten more records, through the service's own loop
        with caplog.at_level("WARNING", logger="streamweights"):
            service.checkpoint()
        encoded = service.state.last_commit[0]
        live = dumps_state(service.pipeline.state_dict())
    finally:
        service.close()
    copy_failed = "reading the snapshots a full one copies from" in caplog.text
    assert copy_failed == damaged
    assert encoded == 8 if damaged else 0 < encoded < 8
    again = Service(load_config(path))
    try:
        again.restore()
        assert dumps_state(again.pipeline.state_dict()) == live
    finally:
        again.close()
