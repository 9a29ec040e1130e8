"""State-folder integrity: one process per folder, checksummed snapshots with a fallback,
outputs that always match the state, restores that re-publish the same bytes, bounds by
input position."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
import urllib.request

import pytest

from streamweights.adapters.state_codec import dumps_state
from streamweights.config import load_config
from streamweights.runtime.exceptions import SnapshotError
from streamweights.runtime.service import Service
from streamweights.runtime.state_store import (
    LocalStateStore,
    decode_snapshot,
    encode_snapshot,
)
from tests.service.drifting import (
    OUTPUTS,
    outputs,
    run_cli,
    start_cli,
    write_config,
    write_drifting_input,
)


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """The drifting input and its uninterrupted run (checkpoint every 250 records)."""
    root = tmp_path_factory.mktemp("drifting")
    input_path = root / "input.jsonl"
    lines = write_drifting_input(input_path)
    folder = root / "reference"
    config = write_config(folder, input_path)
    result = run_cli("run", "--config", str(config), "--summary", str(folder / "summary.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    return input_path, lines, outputs(folder)


def _error_line(result) -> str:
    """The one non-log line of a run that failed at start-up (JSON log lines before it
    are the normal start-up lines); no traceback."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    other = [line for line in result.stderr.splitlines() if not line.startswith('{"ts"')]
    assert len(other) == 1 and other[0].startswith("error: "), result.stderr
    return other[0]


def _run(folder, *extra, env=None):
    return run_cli("run", "--config", str(folder / "config.yaml"), "--summary",
                   str(folder / "summary.json"), *extra, env=env)


def test_second_process_on_a_locked_state_folder_exits_with_one_line(tmp_path, drifting):
    """Scenario: a service runs on a state folder (held still with SIGSTOP so that it is
    surely running); a second one is started with the same config.
    We expect: the second exits 1 with exactly one line naming the holder's pid and host,
    before touching anything: the outputs are byte for byte what they were, and the first
    service, resumed, finishes with the uninterrupted run's outputs."""
    input_path, _, expected = drifting
    folder = tmp_path / "locked"
    config = write_config(folder, input_path)
    first = start_cli("run", "--config", str(config), "--summary", str(folder / "summary.json"))
    lock = folder / "state" / "lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"pid {first.pid}," in lock.read_text()):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    first.send_signal(signal.SIGSTOP)
    try:
        before = {name: (folder / name).read_bytes() for name in OUTPUTS
                  if (folder / name).exists()}
        second = _run(folder)
        after = {name: (folder / name).read_bytes() for name in OUTPUTS
                 if (folder / name).exists()}
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: state_dir {folder / 'state'} is in use by another "
                               f"streamweights process (pid {first.pid}, host ")
    assert after == before
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    assert outputs(folder) == expected


def test_fresh_start_empties_stale_outputs(tmp_path, drifting):
    """Scenario: the outputs hold lines of an earlier run but the state folder is new
    (deleted to start over, or a run killed before its first snapshot).
    We expect: the run empties them first (a warning says so) and ends with exactly the
    uninterrupted run's outputs, not the old lines followed by the new ones."""
    input_path, _, expected = drifting
    folder = tmp_path / "stale"
    write_config(folder, input_path)
    for name in OUTPUTS:
        (folder / name).write_bytes(b'{"stale":true}\n' * 3)
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fresh start: emptying adapted output" in result.stderr
    assert outputs(folder) == expected


def test_output_cut_behind_the_snapshot_is_refused(tmp_path, drifting):
    """Scenario: a run stops half way (bounded); someone empties its weights file; the
    run is started again. We expect: exit 1 and one line saying which file is shorter
    than the snapshot says, instead of padding it with zero bytes."""
    input_path, _, _ = drifting
    folder = tmp_path / "cut"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "1500").returncode == 0
    (folder / "weights.jsonl").write_bytes(b"")
    line = _error_line(_run(folder))
    assert f"{folder / 'weights.jsonl'}: holds 0 bytes, but the snapshot says" in line


def _small_snapshot(tmp_path, drifting) -> bytes:
    input_path, _, _ = drifting
    folder = tmp_path / "small"
    write_config(folder, input_path, checkpoint_every_records=10_000)
    assert _run(folder, "--max-records", "400").returncode == 0
    (path,) = sorted((folder / "state").glob("snapshot-*.snap"))
    return path.read_bytes()


def test_every_single_byte_corruption_of_a_snapshot_is_detected(tmp_path, drifting):
    """Scenario: a real snapshot (a run of 400 input records: ~25 kB); every byte in turn
    is replaced. Header bytes get all 255 other values, payload bytes one random other
    value each (CRC-32 detects any change within 4 consecutive bytes by construction, so
    one value per byte exercises the check without 6 million SHA-256 runs).
    We expect: each corrupt copy is refused with SnapshotError (never a traceback of
    another type, never a snapshot), and the intact one decodes."""
    data = _small_snapshot(tmp_path, drifting)
    assert decode_snapshot(data, "x")["format"] == 2
    header_end = data.index(b"\n") + 1
    rng = random.Random(12)
    checked = 0
    for offset in range(len(data)):
        values = ([v for v in range(256) if v != data[offset]] if offset < header_end
                  else [data[offset] ^ rng.randrange(1, 256)])
        for value in values:
            corrupt = bytearray(data)
            corrupt[offset] = value
            with pytest.raises(SnapshotError):
                decode_snapshot(bytes(corrupt), "x")
            checked += 1
    assert len(data) > 10_000
    hit = data.replace(b"snapshot 2 ", b"snapshot 3 ", 1)  # the format digit alone: damage
    with pytest.raises(SnapshotError, match="damaged snapshot"):
        decode_snapshot(hit, "x")
    assert checked == (len(data) - header_end) + 255 * header_end
    for cut in (0, 1, header_end - 1, header_end, len(data) // 2, len(data) - 1):
        with pytest.raises(SnapshotError):
            decode_snapshot(data[:cut], "x")
    with pytest.raises(SnapshotError):
        decode_snapshot(data + b" ", "x")


def test_damaged_latest_snapshot_falls_back_to_the_previous_one(tmp_path, drifting):
    """Scenario: a bounded run leaves two snapshots; one byte of the latest is flipped;
    the run is continued to the end.
    We expect: a loud error line names the damaged file and the fallback, the damaged
    file is set aside as *.corrupt, and the outputs and summary equal the uninterrupted
    run's. With every snapshot damaged the run exits 1 with one line saying what to do."""
    input_path, _, expected = drifting
    folder = tmp_path / "fallback"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "1700").returncode == 0
    snapshots = sorted((folder / "state").glob("snapshot-*.snap"))
    assert len(snapshots) == 2
    latest = snapshots[-1]
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x01
    latest.write_bytes(bytes(data))
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [json.loads(line) for line in result.stderr.splitlines()
              if line.startswith("{") and json.loads(line)["level"] == "error"]
    assert len(errors) == 1
    assert f"snapshot {latest.name} is damaged" in errors[0]["message"]
    assert f"falling back to the previous snapshot {snapshots[0].name}" in errors[0]["message"]
    assert latest.with_name(latest.name + ".corrupt").exists()
    assert outputs(folder) == expected

    for path in (folder / "state").glob("snapshot-*.snap"):
        path.write_bytes(path.read_bytes()[:-1])
    line = _error_line(_run(folder))
    assert "no intact snapshot to restore" in line
    assert "Move the folder away to start from the beginning" in line


def test_format_one_snapshot_is_restored_with_a_warning_and_replaced(tmp_path, drifting):
    """Scenario: a state folder written by the previous release (``snapshot.json``,
    format 1: plain JSON with sorted keys, no checksum). We expect: it is restored with a
    warning, the run ends with the uninterrupted summary, and the next checkpoint leaves
    only checksummed snapshots. A snapshot of an unknown newer format is refused with one
    line naming its format."""
    input_path, _, expected = drifting
    folder = tmp_path / "legacy"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "1500").returncode == 0
    state = folder / "state"
    snapshot = LocalStateStore(state).load()
    for path in state.glob("snapshot-*.snap"):
        path.unlink()
    (state / "snapshot.json").write_text(dumps_state({**snapshot, "format": 1},
                                                     sort_keys=True))
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is a format-1 snapshot (no checksum): restored as it is" in result.stderr
    assert json.loads(outputs(folder)["summary.json"]) == json.loads(expected["summary.json"])
    assert not (state / "snapshot.json").exists()
    assert list(state.glob("snapshot-*.snap"))

    newest = sorted(state.glob("snapshot-*.snap"))[-1]
    payload = newest.read_bytes().split(b"\n", 1)[1]
    newest.write_bytes(b"streamweights-snapshot 4 zstd=1 xxh3=0123abcd\n" + payload)
    line = _error_line(_run(folder))
    assert "snapshot format 4, this build reads formats 1, 2 and 3" in line


def test_snapshot_round_trip_is_byte_identical():
    """A snapshot decoded and encoded again gives the same bytes (key order kept)."""
    snapshot = {"b": 1, "a": {"z": [1.5, None], "y": "text"}, "n": float("1e300")}
    data = encode_snapshot(snapshot)
    decoded = decode_snapshot(data, "x")
    assert list(decoded) == ["format", "b", "a", "n"]
    assert encode_snapshot({k: v for k, v in decoded.items() if k != "format"}) == data


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read()


def test_weights_endpoint_serves_the_published_bytes_after_a_restore(tmp_path, drifting):
    """Scenario: a run bounded past the drift event (its weights records carry the drift
    event and the models in config order) stops; a new service restores the folder.
    We expect: before processing anything, GET /v1/streams/demo/weights returns the last
    weights line of the sink byte for byte (sorted snapshot keys used to reorder it)."""
    input_path, _, _ = drifting
    folder = tmp_path / "endpoint"
    write_config(folder, input_path)
    config = load_config(str(folder / "config.yaml"))
    first = Service(config, max_records=2400)
    try:
        first.run()
    finally:
        first.close()
    published = (folder / "weights.jsonl").read_bytes().splitlines()[-1]
    assert b'"recent":[{"n":1,' in published  # the drift event is in it
    restarted = Service(dataclasses.replace(config, http_port=0), max_records=2400)
    restarted.start_http()
    try:
        restarted.restore()
        assert _get(restarted.http.port, "/v1/streams/demo/weights") == published
    finally:
        restarted.close()


def test_bounded_run_ends_at_the_same_input_position_after_a_stop(tmp_path, drifting):
    """Scenario: ``run --max-records 1800`` is killed (SIGKILL) at input position 1100
    and started again with the same command; then the same command once more.
    We expect: it ends where an uninterrupted bounded run ends (same outputs and summary;
    it used to count the records of the second run from its restart point), and the third
    run processes nothing. The old option name still works, with a deprecation warning."""
    input_path, lines, _ = drifting
    reference = tmp_path / "bounded-reference"
    write_config(reference, input_path)
    assert _run(reference, "--max-records", "1800").returncode == 0
    expected = outputs(reference)
    summary = json.loads(expected["summary.json"])
    assert summary["records"] == sum(1 for line in lines[:1800] if line)
    assert summary["complete"] is False

    folder = tmp_path / "bounded"
    write_config(folder, input_path)
    result = _run(folder, "--max-records", "1800",
                  env={"STREAMWEIGHTS_TEST_KILL_AT": "record:1100"})
    assert result.returncode == -signal.SIGKILL
    assert _run(folder, "--max-records", "1800").returncode == 0
    assert outputs(folder) == expected
    again = _run(folder, "--max-events", "1800")
    assert again.returncode == 0
    assert "--max-events is deprecated: it is now --max-records" in again.stderr
    assert outputs(folder) == expected


def test_bound_just_past_a_blank_line_stops_before_the_next_record(tmp_path, drifting):
    """Scenario: the bound's last position (2017) is a blank line, so the source hands
    over the record at 2018 next. We expect: that record is not processed (the run holds
    exactly the records before position 2018), and the same command again changes
    nothing."""
    input_path, lines, _ = drifting
    assert lines[2017] == "" and lines[2018]
    folder = tmp_path / "blank"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "2018").returncode == 0
    first = outputs(folder)
    assert json.loads(first["summary.json"])["records"] == sum(1 for line in lines[:2018]
                                                                 if line)
    assert _run(folder, "--max-records", "2018").returncode == 0
    assert outputs(folder) == first
