"""Stream records too large for one changelog message, written in parts
(``runtime/changelog_parts.py``) and the runtime's choice of what a commit writes."""

from __future__ import annotations

import os
import types

import pytest

from streamweights.adapters.state_codec import loads_state
from streamweights.runtime.changelog_parts import (
    SPLIT_STREAM_RECORD_FORMAT,
    is_split_head,
    join_parts,
    parse_part_key,
    part_key,
    split_record,
    strip_head,
)
from streamweights.runtime.compression import decompress
from streamweights.runtime.exceptions import SnapshotError
from streamweights.runtime.kafka_runtime import KafkaRuntime

META = {"task": 0, "config_digest": "d", "invalid": {}, "records": 7,
        "offsets": {"predictions": 4, "labels": 3}, "exhausted": False}


def test_parts_join_back_to_the_record_and_the_head_keeps_the_task_fields():
    data = os.urandom(2500)
    parts, head_bytes = split_record(data, META, 1000)
    assert [len(part) for part in parts] == [1000, 1000, 500]
    head = loads_state(decompress(head_bytes))
    assert is_split_head(head) and head["format"] == SPLIT_STREAM_RECORD_FORMAT
    assert join_parts(head, dict(enumerate(parts)), "here") == data
    assert strip_head(head) == {"format": SPLIT_STREAM_RECORD_FORMAT, **META}


def test_a_missing_or_foreign_part_is_refused_naming_where():
    data = os.urandom(300)
    parts, head_bytes = split_record(data, META, 100)
    head = loads_state(decompress(head_bytes))
    with pytest.raises(SnapshotError, match=r"task 0: .*3 parts lacks part\(s\) \[1\]"):
        join_parts(head, {0: parts[0], 2: parts[2]}, "task 0")
    other, _ = split_record(os.urandom(300), META, 100)
    with pytest.raises(SnapshotError, match="does not check"):
        join_parts(head, {0: parts[0], 1: other[1], 2: parts[2]}, "task 0")
    with pytest.raises(SnapshotError, match="lacks parts, bytes or crc32"):
        join_parts({"format": SPLIT_STREAM_RECORD_FORMAT}, {}, "task 0")


@pytest.mark.parametrize("name", ["demo", "a/b/c", "12", "ünïcode"])
def test_part_keys_round_trip_any_stream_name(name):
    assert parse_part_key(part_key(name, 12)) == (name, 12)


@pytest.mark.parametrize("key", [b"s/demo", b"p/x/demo", b"p/12", b"0", b"p//demo"])
def test_other_keys_are_not_parts(key):
    assert parse_part_key(key) is None


def _runtime(limit: int) -> KafkaRuntime:
    runtime = object.__new__(KafkaRuntime)  # the splitting alone: no broker
    runtime.limit = limit
    runtime.kafka = types.SimpleNamespace(snapshot_limit_fraction=0.5)
    runtime._parts_written = {}
    runtime._split_reported = set()
    return runtime


def test_a_commit_tombstones_the_parts_a_smaller_record_no_longer_uses():
    runtime = _runtime(limit=200)  # parts of at most 100 bytes
    big = runtime._split_large([(b"s/demo", os.urandom(350))], META)
    assert [key for key, _ in big] == [b"p/0/demo", b"p/1/demo", b"p/2/demo", b"p/3/demo",
                                       b"s/demo"]
    smaller = runtime._split_large([(b"s/demo", os.urandom(150))], META)
    assert [(key, value is None) for key, value in smaller] == [
        (b"p/0/demo", False), (b"p/1/demo", False), (b"p/2/demo", True),
        (b"p/3/demo", True), (b"s/demo", False)]
    record = os.urandom(80)
    fits = runtime._split_large([(b"s/demo", record)], META)
    assert fits == [(b"p/0/demo", None), (b"p/1/demo", None), (b"s/demo", record)]
    assert runtime._split_large([(b"s/demo", record)], META) == [(b"s/demo", record)]


def test_join_segments_in_parts_and_their_tombstones_read_back_as_the_state():
    """A stream with predictions waiting, its records split as a 600-byte message limit
    asks (the stream record and each join segment in parts, keys ``p/<k>/<stream>`` and
    ``q/<k>/<id>/<stream>``), over three commits in which labels empty the first
    segments (a tombstone for each, parts and all). We expect: a reader of everything
    written gives back the stream's state at each commit, and the parts of the dropped
    segments are deleted by the commit that drops them."""
    import json

    from streamweights import events
    from streamweights.adapters.state_codec import dumps_state
    from streamweights.runtime.changelog_parts import parse_segment_part_key
    from streamweights.runtime.kafka_runtime import ChangelogReader
    from streamweights.runtime.state_store import encode_stream
    from tests.service.test_incremental_state import _pipeline

    pipeline = _pipeline()
    stream = pipeline.streams["demo"]
    models = list(stream.config.models)
    runtime = _runtime(limit=600)
    log: list[tuple[bytes, bytes | None]] = []
    served = 0
    for commit in range(3):
        for _ in range(12):
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": f"e{served}", "ts": 1e9 + served,
                "outputs": {m: [round(1 - p, 6), p] for m in models
                            if (p := round(0.05 + (served * 0.618 % 0.9), 6))}}).encode()))
            served += 1
        for event in [e.id for e in stream.join.waiting()][:10 if commit else 0]:
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": event, "ts": 1e9 + served,
                "label": 1}).encode()))
        written = encode_stream("demo", stream, META, segment_bytes=6000)
        records = [(f"j/{s}/demo".encode(), data) for s, data in written.segments]
        records += [(f"j/{s}/demo".encode(), None) for s in written.dropped]
        records.append((b"s/demo", written.record))
        out = runtime._split_large(records, META)
        if commit:
            assert written.dropped
            deleted = {parse_segment_part_key(k)[1] for k, v in out
                       if v is None and parse_segment_part_key(k)}
            assert deleted == set(written.dropped)
        assert all(v is None or len(v) <= 300 for _, v in out)
        log.extend(out)
        reader = ChangelogReader()
        for key, value in log:
            reader.add(0, key, value)
        (task,) = reader.tasks().values()
        state = task.streams["demo"]
        state["join"].pop("segments")
        assert dumps_state(state) == dumps_state(stream.state_dict()), commit
        assert any(key.startswith(b"q/") for key, _ in log)


def test_a_dropped_streams_tombstones_delete_its_record_segments_and_parts():
    """A stream with predictions waiting, its record and join segments written in parts
    (a 600-byte message limit), then dropped as ``--drop-removed-streams`` does: a
    tombstone for each key its read-back record lists (``TaskRecords.keys``), each with
    the parts its key was written in, before a task record. We expect: every key ever
    written for the stream ends in a tombstone (so compaction deletes all of it), and a
    reader of the whole log finds the task without the stream."""
    import json

    from streamweights import events
    from streamweights.runtime.kafka_runtime import ChangelogReader
    from streamweights.runtime.state_store import encode_stream
    from tests.service.test_incremental_state import _pipeline

    pipeline = _pipeline()
    stream = pipeline.streams["demo"]
    models = list(stream.config.models)
    for served in range(60):
        pipeline.process(events.decode(json.dumps({
            "schema": 1, "stream": "demo", "id": f"e{served}", "ts": 1e9 + served,
            "outputs": {m: [round(1 - p, 6), p] for m in models
                        if (p := round(0.05 + (served * 0.618 % 0.9), 6))}}).encode()))
    written = encode_stream("demo", stream, META, segment_bytes=6000)
    writer = _runtime(limit=600)
    log = writer._split_large([*((f"j/{s}/demo".encode(), data)
                                 for s, data in written.segments),
                               (b"s/demo", written.record)], META)
    assert any(key.startswith(b"q/") for key, _ in log)  # segments in parts, too

    reader = ChangelogReader()
    for key, value in log:
        reader.add(0, key, value)
    (task,) = reader.tasks().values()
    assert task.keys["demo"][-1] == b"s/demo" and len(task.keys["demo"]) == 1 + len(
        written.segments)
    task.count_parts("demo")  # (as a restore that drops it does: it is not loaded)
    restored = _runtime(limit=600)  # a restore's runtime: the parts it read back
    restored._parts_written = dict(task.parts)
    log += restored._split_large([(key, None) for key in task.keys["demo"]], META)
    log.append((b"0", b"a task record"))

    last: dict[bytes, bytes | None] = {}
    for key, value in log:
        last[key] = value
    assert [key for key, value in last.items() if value is not None] == [b"0"]
    reader = ChangelogReader()
    for key, value in log:
        reader.add(0, key, value)
    assert reader.latest[0] == {} and reader.segments[0]["demo"] == {}
