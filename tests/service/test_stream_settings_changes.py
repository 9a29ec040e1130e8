"""A restore under a config whose streams differ from the snapshot's in some streams, not
all: each stream is checked against its own settings digest (``settings_digest``).
A stream added starts fresh, one removed keeps its saved state in the snapshots (not
restored), and one whose settings changed is refused by name unless the run says
``--fresh-changed-streams``, which starts it fresh while the others restore.
``inspect STATE_DIR --config CONFIG`` says beforehand what a restore would do.

The input is the eight bursty streams of ``test_incremental_state``; every run is the
CLI's, bounded where a restart is wanted.
"""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from streamweights.runtime.state_store import LocalStateStore, decode_stream_record
from tests.service.drifting import outputs, run_cli
from tests.service.test_incremental_state import (
    STREAMS,
    _run,
    bursty_reference,
    write_config,
)

#: The stream whose settings the tests change, and the input line they restart at.
CHANGED, RESTART = "segment-3", 1000


@pytest.fixture(scope="module")
def bursty(tmp_path_factory):
    """The input, its lines, and the uninterrupted eight-stream run's outputs and folder."""
    return bursty_reference(tmp_path_factory.mktemp("settings"))


def edit_streams(folder: pathlib.Path, edit) -> None:
    """Rewrite ``folder``'s config with ``edit(streams)`` as its streams."""
    path = folder / "config.yaml"
    document = yaml.safe_load(path.read_text())
    document["streams"] = edit(document["streams"])
    path.write_text(yaml.safe_dump(document))


def changed_settings(streams: list[dict], changed: str = CHANGED) -> list[dict]:
    """The streams with ``changed``'s weights published every 30 labels, not 40."""
    return [{**stream, "publish": {**stream["publish"], "every_labels": 30}}
            if stream["name"] == changed else stream for stream in streams]


def lines_of(data: bytes, stream: str | None = None, but: str | None = None) -> list[bytes]:
    """The JSONL lines of ``stream`` (or of every stream but ``but``)."""
    out = []
    for line in data.splitlines():
        name = json.loads(line)["stream"]
        if (stream is None or name == stream) and name != but:
            out.append(line)
    return out


def newest_records(state: pathlib.Path) -> dict[str, dict]:
    """Each stream's newest record in the state folder's chain: its other fields."""
    store = LocalStateStore(state)
    files = dict(store.snapshots())
    latest = max(files)
    found: dict[str, dict] = {}
    for seq in range(latest, chain_base(state) - 1, -1):
        head = store.read(files[seq])
        segments: dict[str, dict[int, bytes]] = {}
        for name, segment, data in head["segment_records"]:
            segments.setdefault(name, {})[segment] = data
        for name, data in head["stream_records"]:
            if name not in found:  # (newest first)
                found[name] = decode_stream_record(data, name, segments.get(name, {}))[2]
    return found


def inspect(folder: pathlib.Path):
    """``streamweights inspect`` of ``folder``'s state under its config."""
    return run_cli("inspect", str(folder / "state"), "--config", str(folder / "config.yaml"))


def snapshot_files(state: pathlib.Path) -> dict[str, bytes]:
    """The folder's files but its lock (which names the last process that held it)."""
    return {path.name: path.read_bytes() for path in state.iterdir() if path.name != "lock"}


def chain_base(state: pathlib.Path) -> int:
    """The full snapshot the folder's latest one builds on."""
    store = LocalStateStore(state)
    latest = max(seq for seq, _ in store.snapshots())
    return int(store.read(dict(store.snapshots())[latest]).get("base", latest))


def test_a_stream_added_to_the_config_starts_fresh_and_the_others_restore(tmp_path, bursty):
    """Scenario: the eight streams run to line 1,000; a ninth stream is added to the config
    (no input names it) and the run goes on to the end. We expect: the restore is not
    refused; the outputs are byte for byte the uninterrupted run's for the eight streams;
    the log names the new stream; its record carries its own settings digest."""
    input_path, _, reference, _ = bursty
    folder = tmp_path / "added"
    write_config(folder, input_path)
    first = inspect(folder)  # (nothing to restore yet: not a refusal)
    assert first.returncode == 0 and "no snapshot (a first start" in first.stdout
    assert _run(folder, "--max-records", str(RESTART)).returncode == 0
    edit_streams(folder, lambda streams: [*streams, {**streams[0], "name": "segment-new"}])
    plan = inspect(folder)
    assert plan.returncode == 0, plan.stderr
    assert "a restore restores 8 stream(s) as saved\n  added (start fresh): 'segment-new'\n" \
        in plan.stdout
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'segment-new' new to the config: start(s) fresh" in result.stderr
    got = outputs(folder)
    for name in ("adapted.jsonl", "weights.jsonl"):
        assert got[name] == reference[name], name
    fields = newest_records(folder / "state")
    assert set(fields) == {*STREAMS, "segment-new"}
    digests = {name: fields[name]["stream_settings"] for name in fields}
    assert len(digests["segment-new"]) == 32
    assert digests["segment-new"] != digests["segment-0"]  # (the name is a setting)


def test_a_changed_stream_is_refused_by_name_unless_the_run_starts_it_fresh(tmp_path, bursty):
    """Scenario: the eight streams run to line 1,000; ``segment-3``'s publishing setting
    changes; the run restarts without, then with ``--fresh-changed-streams`` (bounded
    at line 2,000), then once more without it to the end. We expect: the first restart
    exits 1 with one line naming the stream and the flag, writing nothing; the second
    restores the seven others (their outputs to the end are the uninterrupted run's
    lines) and starts ``segment-3`` fresh: its weights lines after the restart are those
    of a run of the new settings over the input without ``segment-3``'s lines before
    line 1,000; the third restarts without the flag (the fresh stream's record carries
    its new settings)."""
    input_path, lines, reference, _ = bursty
    folder = tmp_path / "changed"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", str(RESTART)).returncode == 0
    before = snapshot_files(folder / "state")
    edit_streams(folder, changed_settings)
    plan = inspect(folder)
    assert plan.returncode == 1
    assert ("a restore restores 7 stream(s) as saved\n  changed (refused without "
            "--fresh-changed-streams, which starts them fresh): 'segment-3'\n") in plan.stdout
    refused = _run(folder)
    assert refused.returncode == 1
    assert "1 stream(s) changed since, 'segment-3';" in refused.stderr
    assert "--fresh-changed-streams" in refused.stderr
    assert snapshot_files(folder / "state") == before
    fresh = _run(folder, "--fresh-changed-streams", "--max-records", "2000")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "'segment-3' start(s) fresh under new settings" in fresh.stderr
    again = _run(folder)
    assert again.returncode == 0, again.stderr[-2000:]
    got = outputs(folder)
    for name in ("adapted.jsonl", "weights.jsonl"):
        assert lines_of(got[name], but=CHANGED) == lines_of(reference[name], but=CHANGED)
    # segment-3 alone, from line 1,000 on, under its new settings
    alone = tmp_path / "alone"
    trimmed = tmp_path / "trimmed.jsonl"
    kept = [line for number, line in enumerate(lines)
            if number >= RESTART or f'"stream": "{CHANGED}"' not in line]
    trimmed.write_text("\n".join(kept) + "\n")
    write_config(alone, trimmed)
    edit_streams(alone, changed_settings)
    assert _run(alone).returncode == 0
    expected = lines_of(outputs(alone)["weights.jsonl"], CHANGED)
    restarted = [line for line in lines_of(got["weights.jsonl"], CHANGED)
                 if json.loads(line)["version"] > 0][-len(expected):]
    assert len(expected) >= 5
    assert restarted == expected


def test_a_removed_stream_keeps_its_state_and_resumes_when_put_back(tmp_path, bursty):
    """Scenario: the eight streams run to line 1,000; ``segment-7`` is removed from the
    config and the run goes on to line 2,000, then to 3,000 (its records there are dead
    letters), past at least one full snapshot; then it is put back and the run ends. We
    expect: both restores warn, naming the stream, and are not refused; the full snapshots written
    without it in the config still hold its record as it was at line 1,000 (nothing
    lost); put back, it restores from that record without a refusal, and its weights
    lines are those of a run over the input without its lines from 1,000 to 3,000 (the
    records it missed stay dead letters: none is replayed into it)."""
    input_path, lines, _, _ = bursty
    folder = tmp_path / "removed"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", str(RESTART)).returncode == 0
    saved = newest_records(folder / "state")["segment-7"]
    edit_streams(folder, lambda streams: [s for s in streams if s["name"] != "segment-7"])
    base_before = chain_base(folder / "state")
    for bound in (2000, 3000):  # (the second restore's snapshot has the new config's digest)
        result = _run(folder, "--max-records", str(bound))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "holds the state of 'segment-7', no longer in the config" in result.stderr
    assert chain_base(folder / "state") > base_before  # a full snapshot since
    assert newest_records(folder / "state")["segment-7"] == saved
    dead = (folder / "dead-letter.jsonl").read_text()
    assert "segment-7" in dead
    assert "kept as saved, not restored (no longer in the config when it was written): " \
        "'segment-7'" in inspect(folder).stdout
    edit_streams(folder, lambda streams: [*streams, {**streams[0], "name": "segment-7"}])
    plan = inspect(folder)
    assert plan.returncode == 0
    assert "the same stream settings; a restore restores all 8 stream(s)" in plan.stdout
    back = _run(folder)
    assert back.returncode == 0, back.stderr[-2000:]
    assert "no longer in the config" not in back.stderr
    # segment-7 as if its lines from 1,000 to 3,000 had not been in the input
    trimmed = tmp_path / "trimmed.jsonl"
    trimmed.write_text("\n".join(line for number, line in enumerate(lines)
                                 if not (RESTART <= number < 3000
                                         and '"stream": "segment-7"' in line)) + "\n")
    alone = tmp_path / "alone"
    write_config(alone, trimmed)
    assert _run(alone).returncode == 0
    expected = lines_of(outputs(alone)["weights.jsonl"], "segment-7")
    assert len(expected) >= 3
    assert lines_of(outputs(folder)["weights.jsonl"], "segment-7") == expected


def snapshot_streams(state: pathlib.Path) -> set[str]:
    """Every stream that a record in any snapshot file of the folder is of."""
    store = LocalStateStore(state)
    return {name for _, path in store.snapshots()
            for name, _ in store.read(path)["stream_records"]}


def test_a_removed_stream_is_deleted_when_the_run_drops_it(tmp_path, bursty):
    """Scenario: the eight streams run to line 900 (where the snapshot chain does not ask
    for a full snapshot next); ``segment-7`` is removed from the config and the run goes
    on to line 1,000 with ``--drop-removed-streams`` (one checkpoint), then to the end
    without it; then ``segment-7`` is put back in the config. We expect: the dropping
    run warns, naming the stream, and its checkpoint is a full snapshot without it; once
    the run after it has checkpointed, no snapshot file holds a record of it; that run
    neither warns nor names it kept; the seven others' outputs are the uninterrupted
    run's; put back, ``inspect`` says it would start fresh."""
    input_path, _, reference, _ = bursty
    folder = tmp_path / "dropped"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "900").returncode == 0
    state = folder / "state"
    store = LocalStateStore(state)
    assert store.load_latest() is not None and not store.needs_full()  # (what is tested)
    edit_streams(folder, lambda streams: [s for s in streams if s["name"] != "segment-7"])
    plan = inspect(folder)
    assert plan.returncode == 0
    assert "removed (kept as saved, not restored; run --drop-removed-streams deletes " \
        "them): 'segment-7'" in plan.stdout
    latest = max(seq for seq, _ in store.snapshots())
    dropping = _run(folder, "--drop-removed-streams", "--max-records", str(RESTART))
    assert dropping.returncode == 0, dropping.stderr[-2000:]
    assert "drops the state of 'segment-7', no longer in the config" in dropping.stderr
    assert chain_base(state) == latest + 1  # its one checkpoint: a full snapshot
    assert set(newest_records(state)) == set(STREAMS) - {"segment-7"}
    after = _run(folder)
    assert after.returncode == 0, after.stderr[-2000:]
    assert "segment-7" not in after.stderr
    assert snapshot_streams(state) == set(STREAMS) - {"segment-7"}
    assert "kept as saved" not in inspect(folder).stdout
    got = outputs(folder)
    for name in ("adapted.jsonl", "weights.jsonl"):
        assert lines_of(got[name], but="segment-7") == lines_of(reference[name],
                                                                but="segment-7"), name
    edit_streams(folder, lambda streams: [*streams, {**streams[0], "name": "segment-7"}])
    assert "added (start fresh): 'segment-7'" in inspect(folder).stdout
