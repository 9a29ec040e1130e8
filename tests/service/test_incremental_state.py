"""Per-stream, incremental snapshots: a commit writes only the streams changed since the
last one, a restart from such a chain equals the uninterrupted run, and the previous
release's whole-state snapshots still load."""

from __future__ import annotations

import base64
import json
import pathlib
import random
import re
import signal
import zlib

import pytest
import yaml

from streamweights import _native, events
from streamweights.adapters import state_codec
from streamweights.adapters.state_codec import dumps_state
from streamweights.config import parse_config
from streamweights.pipeline import Pipeline
from streamweights.runtime.compression import ZSTD_MAGIC, compress, decompress
from streamweights.runtime.exceptions import SnapshotError
from streamweights.runtime.faults import KILL_AT_ENV
from streamweights.runtime.state_store import (
    STREAM_RECORD_FORMAT,
    LocalStateStore,
    SnapshotFormatError,
    decode_stream_record,
    encode_stream,
    encode_streams_payload,
    frame_payload,
    record_text,
    stream_record_head,
)
from tests.fuzzing import mutate
from tests.service.conftest import DEMO_CONFIG
from tests.service.drifting import OUTPUTS, outputs, run_cli

STREAMS = tuple(f"segment-{n}" for n in range(8))
MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")
CHECKPOINT_EVERY = 150
BLOCK = 60  # predictions in a row for one stream: a checkpoint sees 2-4 of the 8 change


def write_bursty_input(path: pathlib.Path, predictions: int = 1800, seed: int = 11,
                       delay: float = 6) -> list[str]:
    """Eight streams whose predictions come in blocks of ``BLOCK`` (block b goes to stream
    ``5b mod 8``), labels ``delay`` s later, a drift in every stream half way; a truncated
    line (dead letter) every 97 records. Returns the lines."""
    rng = random.Random(seed)
    records = []
    for i in range(predictions):
        stream = STREAMS[(i // BLOCK * 5) % len(STREAMS)]
        y = rng.random() < 0.4
        outputs = {}
        for k, model in enumerate(MODELS):
            right = 0.15 if k == 0 and i >= predictions // 2 else (0.9, 0.7, 0.6)[k]
            sign = 1 if rng.random() < right else -1
            p_true = round(0.5 + 0.45 * sign * rng.uniform(0.5, 1), 6)
            p1 = p_true if y else round(1 - p_true, 6)
            outputs[model] = [round(1 - p1, 6), p1]
        ts = 1_750_000_000 + i
        records.append((ts, 0, json.dumps({"schema": 1, "stream": stream, "id": f"e{i}",
                                           "ts": ts, "outputs": outputs})))
        records.append((ts + delay, 1, json.dumps({"schema": 1, "stream": stream,
                                                   "id": f"e{i}", "ts": ts + delay,
                                                   "label": int(y)})))
    records.sort(key=lambda r: (r[0], r[1]))
    lines = []
    for n, (_, _, line) in enumerate(records):
        if n % 97 == 40:
            lines.append(line[: len(line) // 2])
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return lines


def stream_configs() -> list[dict]:
    """The eight streams: the demo stream's settings, a weights version every 40 labels."""
    stream = yaml.safe_load(DEMO_CONFIG.read_text())["streams"][0]
    stream = {**stream, "publish": {"every_labels": 40, "every_seconds": 60}}
    return [{**stream, "name": name} for name in STREAMS]


def write_config(folder: pathlib.Path, input_path: pathlib.Path) -> pathlib.Path:
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    document["streams"] = stream_configs()
    document["source"] = {"kind": "jsonl", "path": str(input_path)}
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": CHECKPOINT_EVERY, "every_seconds": 3600}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {name.split(".")[0].replace("-", "_"): str(folder / name)
                           for name in OUTPUTS}
    document["logging"] = {"format": "json", "progress_every_seconds": 60}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _run(folder: pathlib.Path, *extra: str, env: dict | None = None):
    return run_cli("run", "--config", str(folder / "config.yaml"), "--summary",
                   str(folder / "summary.json"), *extra, env=env)


@pytest.fixture(scope="module")
def bursty(tmp_path_factory):
    """The input, its lines, and the uninterrupted run's outputs and folder."""
    return bursty_reference(tmp_path_factory.mktemp("bursty"))


def bursty_reference(root: pathlib.Path) -> tuple[pathlib.Path, list[str], dict, pathlib.Path]:
    """The bursty input written in ``root``, its lines, and the outputs and folder of an
    uninterrupted run over it (what a restarted run is compared with)."""
    input_path = root / "input.jsonl"
    lines = write_bursty_input(input_path)
    folder = root / "reference"
    write_config(folder, input_path)
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return input_path, lines, outputs(folder), folder


def _streams_between(lines: list[str], start: int, end: int) -> set[str]:
    """The streams whose (whole) records sit on input lines ``start .. end - 1``."""
    found = set()
    for line in lines[start:end]:
        try:
            found.add(json.loads(line)["stream"])
        except ValueError:
            continue  # a truncated line: a dead letter, counted in the meta
    return found


def test_each_commit_writes_only_the_streams_changed_since_the_last(tmp_path, bursty):
    """Scenario: eight streams whose records come in blocks, a checkpoint every 150
    records, a run bounded at 2,000 records (so not ended by the final publication of
    every stream). We expect: the folder keeps the latest snapshot and every one back to
    the full snapshot it builds on; each incremental one holds exactly the streams that
    had records since the snapshot before it (2-4 of 8), the full one all eight."""
    input_path, lines, _, _ = bursty
    folder = tmp_path / "bounded"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "2000").returncode == 0
    store = LocalStateStore(folder / "state")
    kept = sorted(store.snapshots())
    heads = {seq: store.read(path) for seq, path in kept}
    latest_seq = kept[-1][0]
    base = heads[latest_seq]["base"]
    assert [seq for seq, _ in kept if seq >= base] == list(range(base, latest_seq + 1))
    assert latest_seq - base >= 2, "the run should end on a chain of incremental snapshots"
    assert sorted(name for name, _ in heads[base]["stream_records"]) == sorted(STREAMS)
    for seq in range(base + 1, latest_seq + 1):
        written = {name for name, _ in heads[seq]["stream_records"]}
        changed = _streams_between(lines, heads[seq - 1]["position"], heads[seq]["position"])
        assert written == changed, seq
        assert 0 < len(written) < len(STREAMS)


def test_restart_from_an_incremental_chain_equals_the_uninterrupted_run(tmp_path, bursty):
    """Scenario: the same run killed with SIGKILL (the process kills itself) at input
    records and inside snapshot writes (half written, written not renamed, renamed with
    the older ones not yet removed), restarted after each kill; the restores read
    per-stream records from chains of incremental snapshots.
    We expect: adapted, weights and dead-letter files and the summary equal the
    uninterrupted run's, byte for byte, and at least one restore started from an
    incremental snapshot (one that builds on earlier ones)."""
    input_path, _, expected, _ = bursty
    folder = tmp_path / "killed"
    write_config(folder, input_path)
    store_path = folder / "state"
    from_chain = 0
    for point in ("record:700", "snapshot:3:partial", "record:1650", "snapshot:2:written",
                  "snapshot:4:renamed", "record:3100"):
        loaded = LocalStateStore(store_path).load_latest(set_aside=False)
        if loaded is not None:
            from_chain += loaded.snapshot["base"] < int(loaded.path.name[9:21])
        result = _run(folder, env={KILL_AT_ENV: point})
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    assert from_chain >= 2
    got = outputs(folder)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs after the kills"


def _segment_entry_ids(store: LocalStateStore, incremental_only: bool) -> list[str]:
    """The ids of the waiting predictions written in the folder's join segment records
    (only in incremental snapshots, if asked), one per time written."""
    ids = []
    for seq, path in store.snapshots():
        snapshot = store.read(path)
        if incremental_only and snapshot["base"] == seq:
            continue
        for _, _, data in snapshot["segment_records"]:
            ids.extend(entry[0] for entry in json.loads(decompress(data))["entries"])
    return ids


def test_long_label_delays_write_each_waiting_prediction_once(tmp_path):
    """Scenario: labels 600 s (600 predictions) after their predictions, so each of the
    eight streams holds ~75 waiting predictions at every checkpoint (every 150 records);
    the run is killed with SIGKILL at records and inside snapshot writes, restarted after
    each kill, and a second folder runs once without interruption.
    We expect: the incremental snapshots write a waiting prediction in a join segment
    about once (not again at every checkpoint of its stream, as a whole join would; a
    join whose segments hold more entries gone than waiting writes the waiting ones once
    more, into fresh segments, so at most a few are written twice), the
    restores read joins from chains of segment records, and adapted, weights and
    dead-letter files and the summary equal the uninterrupted run's byte for byte."""
    input_path = tmp_path / "input.jsonl"
    write_bursty_input(input_path, predictions=1800, delay=600)
    reference = tmp_path / "reference"
    write_config(reference, input_path)
    assert _run(reference, "--max-records", "2600").returncode == 0
    store = LocalStateStore(reference / "state")
    ids = _segment_entry_ids(store, incremental_only=True)
    assert len(ids) > 200 and len(set(ids)) >= 0.75 * len(ids), (len(ids), len(set(ids)))
    latest = store.load()
    assert sum(len(s["join"]["entries"]) for s in latest["pipeline"]["streams"].values()) > 300
    assert _run(reference).returncode == 0
    expected = outputs(reference)

    folder = tmp_path / "killed"
    write_config(folder, input_path)
    for point in ("record:900", "snapshot:3:partial", "record:2100", "snapshot:4:renamed"):
        result = _run(folder, env={KILL_AT_ENV: point})
        assert result.returncode == -signal.SIGKILL, (point, result.stderr[-2000:])
        assert _segment_entry_ids(LocalStateStore(folder / "state"), incremental_only=False)
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    got = outputs(folder)
    for name, data in expected.items():
        assert got[name] == data, f"{name} differs after the kills"


def test_whole_state_snapshot_of_the_previous_release_loads(tmp_path, bursty):
    """Scenario: a folder whose only snapshot is a whole-state format-2 JSON document, as
    the previous release wrote it (taken from a bounded run's state).
    We expect: the run restores it, its first checkpoint is a full per-stream one, and
    the run continued to the end has the uninterrupted run's outputs byte for byte."""
    input_path, _, expected, _ = bursty
    folder = tmp_path / "previous"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "1000").returncode == 0
    store = LocalStateStore(folder / "state")
    whole = store.load()
    for path in (folder / "state").glob("snapshot-*.snap"):
        path.unlink()
    whole = {k: v for k, v in whole.items() if k not in ("format", "base", "invalid")}
    LocalStateStore(folder / "state").save(whole)
    assert (folder / "state" / "snapshot-000000000001.snap").read_bytes().split(b"\n")[1][:1] \
        == b"{"
    result = _run(folder, "--max-records", "1200")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "restored snapshot" in result.stderr
    second = LocalStateStore(folder / "state").read(folder / "state" /
                                                    "snapshot-000000000002.snap")
    assert second["base"] == 2 and len(second["stream_records"]) == len(STREAMS)
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    got = outputs(folder)
    for name, data in expected.items():
        assert got[name] == data, name


def _pipeline(names=("demo",)) -> Pipeline:
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    document["streams"] = [{**document["streams"][0], "name": name} for name in names]
    return Pipeline(parse_config(document).streams)


def format_2_stream_record(name: str, state: dict, meta: dict | None = None) -> bytes:
    """A stream record as the previous release wrote it (format 2): the whole state,
    waiting predictions included, as ``dumps_state`` writes it."""
    document = {"format": 2, **(meta or {}), "streams": {name: state}}
    return zlib.compress(dumps_state(document).encode("utf-8"), 1)


def format_6_stream_record(data: bytes) -> bytes:
    """A format-7 stream record as the release before wrote the same state (format 6):
    the packed state's data as a base64 string inside the text."""
    text, raw = record_text(decompress(data))
    document = json.loads(text)
    assert document["format"] == 7
    ((_, packed),) = document["streams"].items()
    assert packed["data"] == len(raw)
    head, tail = text.split(b',"data":%d,' % len(raw))
    assert b'"data":' not in tail and head.startswith(b'{"format":7,')
    # (that release's records carried no settings digest of their stream)
    head = re.sub(rb'^\{"format":7,"stream_settings":"[0-9a-f]{32}",', b'{"format":7,', head)
    assert b"stream_settings" not in head
    text = (b'{"format":6,' + head[len(b'{"format":7,'):] + b',"data":"'
            + base64.b64encode(raw) + b'",' + tail)
    return compress(text)


@pytest.mark.parametrize("previous", ["format 2", "format 6"])
def test_per_stream_snapshots_of_the_previous_release_load(tmp_path, bursty, previous):
    """Scenario: a folder of per-stream snapshots whose stream records are all format 2
    (an older release's: waiting predictions as tagged JSON arrays) or format 6 (the
    previous release's: the packed data as base64 in the text), rewritten from a bounded
    run's own snapshots.
    We expect: the run restores them, its next checkpoints write this release's records on top
    of that chain, and the run continued to the end has the uninterrupted run's outputs
    byte for byte."""
    input_path, _, expected, _ = bursty
    folder = tmp_path / "previous"
    write_config(folder, input_path)
    assert _run(folder, "--max-records", "1000").returncode == 0
    store = LocalStateStore(folder / "state")
    rewritten = 0
    read = [(path, store.read(path)) for _, path in store.snapshots()]  # newest first
    for index, (path, snapshot) in enumerate(read):
        segments: dict = {}  # each stream's join segments, from this file back
        for _, older in read[index:]:
            for name, segment, data in older["segment_records"]:
                segments.setdefault(name, {}).setdefault(segment, data)
        snapshot = dict(snapshot)
        kept = snapshot.pop("segment_records")  # format 6 reads them, 2 holds its own
        records = []
        for name, data in snapshot.pop("stream_records"):
            decoded_name, state, meta = decode_stream_record(data, name, segments.get(name))
            assert meta.pop("stream_settings") and decoded_name == name
            assert meta == {"format": STREAM_RECORD_FORMAT}
            if previous == "format 6":
                old = format_6_stream_record(data)
                old_name, old_state, _ = decode_stream_record(old, name, segments.get(name))
                assert old_name == name and dumps_state(old_state) == dumps_state(state)
                records.append((name, old))
                rewritten += 1
                continue
            state["join"].pop("segments")
            records.append((name, format_2_stream_record(name, state)))
            rewritten += bool(state["join"]["entries"])
        path.write_bytes(frame_payload(encode_streams_payload(
            snapshot, records, kept if previous == "format 6" else ())))
    assert rewritten > 0  # records in the old form (format 2: with waiting predictions)
    result = _run(folder, "--max-records", "1200")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "restored snapshot" in result.stderr
    newest = store.read(store.snapshots()[0][1])
    assert newest["stream_records"]
    for _, data in newest["stream_records"]:
        assert json.loads(record_text(decompress(data))[0])["format"] == STREAM_RECORD_FORMAT
    result = _run(folder)
    assert result.returncode == 0, result.stderr[-2000:]
    got = outputs(folder)
    for name, data in expected.items():
        assert got[name] == data, name


def test_stream_record_is_the_state_dict_byte_for_byte():
    """The join's kept compact entry encoding changes nothing: after every record
    (predictions joining, labels leaving, entries evicted by max_pending), the state
    decoded from a stream record encodes to the same text as ``state_dict()`` encoded
    afresh, and a stream restored from it writes the same record bytes (deterministic
    across a restore); the previous release's format-2 record of the same state decodes
    to the same state. The join's segments (a few entries each here) are kept as a
    changelog keeps them: new ones added, dropped ones deleted; the record's layout
    lists exactly the ones kept."""
    pipeline = _pipeline()
    held: dict[int, bytes] = {}
    most = 0
    restored = _pipeline().streams["demo"]
    stream = pipeline.streams["demo"]
    stream.join.max_pending = 7  # evictions too
    models = list(stream.config.models)
    rng = random.Random(3)
    for i in range(300):
        p = round(rng.uniform(0.05, 0.95), 6)
        pipeline.process(events.decode(json.dumps({
            "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i,
            "outputs": {m: [round(1 - p, 6), p] for m in models}}).encode()))
        for j in range(i - 5, i + 1, 2):
            if rng.random() < 0.5:
                pipeline.process(events.decode(json.dumps({
                    "schema": 1, "stream": "demo", "id": f"e{j}", "ts": 1e9 + i,
                    "label": rng.randint(0, 1)}).encode()))
        meta_in = {"task": 4} if i % 2 else None
        written = encode_stream("demo", stream, meta_in, rebase=i % 50 == 7,
                                segment_bytes=4000)
        held.update(written.segments)
        for segment in written.dropped:
            del held[segment]
        record = written.record
        name, state, meta = decode_stream_record(record, "x", held)
        assert name == "demo" and meta == {"format": STREAM_RECORD_FORMAT, **(meta_in or {})}
        layout = state["join"].pop("segments")
        assert sorted(held) == [segment for segment, _, _ in layout["segments"]]
        tight = json.dumps(layout, separators=(",", ":")).encode()  # the text it always was
        assert record_text(decompress(record))[0].endswith(b'"join":' + tight + b"}}}"), i
        most = max(most, len(held))
        assert dumps_state(state) == dumps_state(stream.state_dict()), i
        _, old_state, old_meta = decode_stream_record(
            format_2_stream_record("demo", stream.state_dict(), meta_in), "x")
        assert old_meta == {"format": 2, **(meta_in or {})}
        assert dumps_state(old_state) == dumps_state(state), i
        if i % 10 == 0:
            state["join"]["segments"] = layout
            restored.load_state_dict(state)
            again = encode_stream("demo", restored, meta_in, segment_bytes=4000,
                                  head=stream_record_head(meta_in) if i % 20 else None)
            assert (again.record, again.segments, again.dropped) == (record, [], []), i
    assert stream.join.evicted_total > 0 and stream.join.joined_total > 0
    assert most > 3  # the join was written in several segments at once


def test_stream_record_of_another_format_is_refused_with_what_to_do():
    data = zlib.compress(b'{"format":4,"streams":{"demo":{}}}')
    with pytest.raises(SnapshotFormatError, match="stream record format 4, this build reads 2, "
                       "3, 5, 6 and 7; restore with the release that wrote it"):
        decode_stream_record(data, "x")
    with pytest.raises(SnapshotError, match="x: stream record cannot be decoded"):
        decode_stream_record(b"not zlib", "x")


def _serve(pipeline: Pipeline, count: int, label_every: int = 0) -> None:
    """``count`` predictions of stream "demo" (and a label for every ``label_every``-th)."""
    models = list(pipeline.streams["demo"].config.models)
    for i in range(count):
        pipeline.process(events.decode(json.dumps({
            "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i,
            "outputs": {m: [0.4, 0.6] for m in models}}).encode()))
        if label_every and i % label_every == 0:
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i + 0.5,
                "label": 1}).encode()))


def test_stream_record_is_a_zstd_frame_and_a_zlib_one_reads_alike():
    """A record this release writes is one zstd frame (runtime/compression.py); the same
    document as an earlier release's zlib record decodes to the same state and meta."""
    pipeline = _pipeline()
    _serve(pipeline, 40, label_every=3)
    written = encode_stream("demo", pipeline.streams["demo"], {"task": 0})
    record, segments = written.record, dict(written.segments)
    assert record.startswith(ZSTD_MAGIC) and segments
    assert all(data.startswith(ZSTD_MAGIC) for data in segments.values())
    legacy = zlib.compress(decompress(record), 1)
    old_segments = {k: zlib.compress(decompress(v), 1) for k, v in segments.items()}
    name, state, meta = decode_stream_record(record, "new", segments)
    old_name, old_state, old_meta = decode_stream_record(legacy, "old", old_segments)
    assert (old_name, old_meta) == (name, meta)
    assert dumps_state(old_state) == dumps_state(state)
    assert name == "demo" and meta["task"] == 0 and len(state["join"]["entries"]) > 20


def test_damaged_stream_record_is_refused_not_misread():
    """A record of this release whose packed bytes do not fit its skeleton (here: the state's
    data cut short, or longer than its text says, or without the newline before it, an
    entry's array bytes cut short, an entry of three items, a segment of another stream,
    a segment missing) is a SnapshotError naming where, not a state read from the wrong
    bytes or a crash."""
    pipeline = _pipeline()
    stream = pipeline.streams["demo"]
    _serve(pipeline, 30)
    written = encode_stream("demo", stream)
    text, raw = record_text(decompress(written.record))
    document = json.loads(text)
    ((segment, data),) = written.segments
    entries = json.loads(decompress(data))
    assert document["streams"]["demo"]["join"]["segments"] == [[segment, 30, []]]
    assert len(entries["entries"]) == 30
    assert document["streams"]["demo"]["data"] == len(raw) > 8
    assert decode_stream_record(_stream_record(document, raw), "intact", {segment: data})

    def says(size):
        return lambda d: d["streams"]["demo"].update(data=size)

    damages = {"state": (says(len(raw)), raw[:-8], None),
               "longer": (says(len(raw) - 8), raw, None),
               "spelled": (says(str(len(raw))), raw, None),
               "unsplit": (None, None, None),
               "entry": (None, raw, lambda e: e["entries"][3].__setitem__(
                   3, e["entries"][3][3][:-8])),
               "form": (None, raw, lambda e: e["entries"][0].pop())}
    for what, (damage_record, data_bytes, damage_segment) in damages.items():
        record, segment_copy = json.loads(json.dumps(document)), json.loads(json.dumps(entries))
        if damage_record:
            damage_record(record)
        if damage_segment:
            damage_segment(segment_copy)
        with pytest.raises(SnapshotError, match=f"{what}: stream record cannot be decoded"):
            decode_stream_record(_stream_record(record, data_bytes), what,
                                 {segment: zlib.compress(json.dumps(segment_copy).encode())})
    other = json.loads(json.dumps(entries))
    other["stream"] = "other"
    with pytest.raises(SnapshotError, match="join segment 0 is not the one its record lists"):
        decode_stream_record(written.record, "x", {segment: zlib.compress(
            json.dumps(other).encode())})
    with pytest.raises(SnapshotError, match="lacks segment 0 of its join"):
        decode_stream_record(written.record, "x", {})


def _stream_record(document: dict, data: bytes | None) -> bytes:
    """A stream record of ``document`` (compact JSON, as written) and ``data`` after its
    text (``None``: none, not even the newline)."""
    text = json.dumps(document, separators=(",", ":")).encode()
    return compress(text if data is None else text + b"\n" + data)


def test_a_stream_record_with_random_damage_is_read_or_refused_never_a_crash():
    """The stream record is parsed straight into its tree (markers made into arrays by
    the parser, filled from the data afterwards): 600 records, then 300 join segments,
    each with one to four edits of the record fuzzer's (``tests.fuzzing.mutate``) are read
    (when the damage hit a value) or refused as a SnapshotError; no other exception, and
    nothing huge allocated."""
    pipeline = _pipeline()
    stream = pipeline.streams["demo"]
    _serve(pipeline, 40, label_every=2)
    written = encode_stream("demo", stream)
    segments = dict(written.segments)
    ((segment, segment_record),) = segments.items()
    rng = random.Random(5)

    def damage(data: bytes) -> bytes:  # the record fuzzer's JSON mutations, recompressed
        return zlib.compress(mutate(decompress(data), rng))

    outcomes = {"read": 0, "refused": 0}
    for index in range(900):  # the stream's record, then its join segment
        record, held = ((damage(written.record), segments) if index < 600
                        else (written.record, {segment: damage(segment_record)}))
        try:
            decode_stream_record(record, "fuzz", held)
            outcomes["read"] += 1
        except SnapshotError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 450 and outcomes["read"] > 10, outcomes
    # and aimed: dtypes numpy would parse as structured (through ast.literal_eval, which
    # raised SyntaxError), a marker of the wrong form
    for old, new in (('"<f8"', '"<f8,"'), ('"<f8"', '"(2,)<f8"'), ('"<f8",[', '"<f8",7,[')):
        text, data = record_text(decompress(written.record))
        segment_text = decompress(segment_record).decode()
        assert old.encode() in text and old in segment_text
        for record, held in ((compress(text.replace(old.encode(), new.encode(), 1) + b"\n"
                                       + data), segments),
                             (written.record, {segment: zlib.compress(
                                 segment_text.replace(old, new, 1).encode())})):
            with pytest.raises(SnapshotError, match="stream record cannot be decoded"):
                decode_stream_record(record, "aimed", held)


def test_a_stream_record_is_parsed_by_the_core_as_the_stdlib_parses_it():
    """The core's JSON parser (``_native.loads_hooked``, tested against the stdlib in
    tests/test_json_tree.py) takes a demo stream's record itself, and the state it gives,
    packed arrays filled, is the stdlib parser's (with the same hook), bit for bit."""
    pipeline = _pipeline()
    _serve(pipeline, 60, label_every=2)
    text, data = record_text(decompress(encode_stream("demo", pipeline.streams["demo"]).record))
    gave_up = object()
    assert _native.loads_hooked(text, lambda value: value, gave_up) is not gave_up
    tree, slots = state_codec.loads_packed(text, len(data))
    reference_slots = state_codec.PackedSlots(len(data))
    reference = json.loads(text, object_hook=reference_slots.hook)
    slots.fill_raw(data)
    reference_slots.fill_raw(data)

    def bits(value):
        return [value.dtype.str, value.shape, value.tobytes().hex()]

    assert (json.dumps(tree, default=bits) == json.dumps(reference, default=bits)
            and "<f8" in json.dumps(tree, default=bits))


def test_changed_marks_only_touched_streams():
    """A record marks its own stream changed; a save clears it (state_dict loading)."""
    pipeline = _pipeline(("a", "b", "c"))
    assert pipeline.changed_streams() == []
    models = list(pipeline.streams["b"].config.models)
    pipeline.process(events.decode(json.dumps({
        "schema": 1, "stream": "b", "id": "x", "ts": 1e9,
        "outputs": {m: [0.5, 0.5] for m in models}}).encode()))
    assert pipeline.changed_streams() == ["b"]
    pipeline.streams["b"].load_state_dict(pipeline.streams["b"].state_dict())
    assert pipeline.changed_streams() == []


def test_changed_streams_equal_a_scan_of_every_flag_whatever_marks_them():
    """``changed_streams`` reads the streams' notes of their flag turning on and off
    instead of every flag. Scenario: 400 random steps over six streams: a prediction or
    a label through the core's record lane or through ``process``, the flag set or
    cleared from Python, a stream's state loaded, a save that clears the names it was
    given, a save that fails (flags left on).
    We expect: after every step, the names in config order that a scan of every stream's
    ``changed`` flag gives (and their count and places, ``changed_count`` and
    ``changed_indices``), and the lane took some of the records."""
    names = ("a", "b", "c", "d", "e", "f")
    pipeline = _pipeline(names)
    lane = pipeline.record_lane()
    models = list(pipeline.streams["a"].config.models)
    rng = random.Random(3)
    laned = 0

    def record(name: str, step: int) -> bytes:
        if rng.random() < 0.6:
            return json.dumps({"schema": 1, "stream": name, "id": f"{name}{step}",
                               "ts": 1e9 + step,
                               "outputs": {m: [0.3, 0.7] for m in models}}).encode()
        return json.dumps({"schema": 1, "stream": name, "id": f"{name}{step - 1}",
                           "ts": 1e9 + step, "label": rng.randrange(2)}).encode()

    for step in range(400):
        name = rng.choice(names)
        stream = pipeline.streams[name]
        action = rng.randrange(7)
        if action in (0, 1):
            laned += lane.process(record(name, step), True) is not None
        elif action == 2:
            pipeline.process(events.decode(record(name, step)))
        elif action == 3:
            stream.changed = rng.random() < 0.5
        elif action == 4:
            stream.load_state_dict(stream.state_dict())
        elif action == 5:  # a save: written, then cleared
            for written in pipeline.changed_streams():
                pipeline.streams[written].changed = False
        else:  # a save that failed: the flags stay on
            pipeline.changed_streams()
        scanned = [n for n, s in pipeline.streams.items() if s.changed]
        assert pipeline.changed_streams() == scanned, step
        assert pipeline.changed_count() == len(scanned), step
        order = list(pipeline.streams)
        assert [order[i] for i in pipeline.changed_indices().tolist()] == scanned, step
    assert laned > 50


def test_notes_of_changed_streams_stay_bounded_when_no_one_asks():
    """Full snapshots write every stream without asking which changed. Scenario: six
    streams' flags turned on and off 10,000 times, ``changed_streams`` never called.
    We expect: the notes held stay under the register's bound (twice the streams, at
    least 64, plus the note being added), the count of flags on is right throughout,
    and then the notes name exactly the streams whose flag is on."""
    pipeline = _pipeline(("a", "b", "c", "d", "e", "f"))
    rng = random.Random(5)
    for _ in range(10_000):
        stream = rng.choice(list(pipeline.streams.values()))
        stream.changed = not stream.changed
        assert len(pipeline._changes) <= 65
        assert pipeline.changed_count() == sum(s.changed for s in pipeline.streams.values())
    scanned = [n for n, s in pipeline.streams.items() if s.changed]
    assert scanned and pipeline.changed_streams() == scanned
