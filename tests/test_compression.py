"""State records are zstd frames; the zlib records of earlier releases still read; anything
else (cut short, followed by other bytes, a bomb) is a ValueError, never a wrong text."""

import json
import pathlib
import zlib

import pytest
import yaml

from streamweights import events
from streamweights.adapters.state_codec import dumps_state
from streamweights.config import parse_config
from streamweights.pipeline import Pipeline
from streamweights.runtime.compression import MAX_RATIO, ZSTD_MAGIC, compress, decompress
from streamweights.runtime.state_store import decode_stream_record, encode_stream_record

DEMO_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_round_trip_and_the_zlib_of_earlier_releases():
    text = json.dumps({"a": list(range(2000)), "b": "x" * 5000}).encode()
    frame = compress(text)
    assert frame.startswith(ZSTD_MAGIC) and len(frame) < len(text) // 4
    assert decompress(frame) == text
    assert compress(text) == frame  # deterministic: restart equality compares bytes
    for level in (1, 6, 9):
        assert decompress(zlib.compress(text, level)) == text
    assert decompress(compress(b"")) == b""


def test_damaged_frames_are_refused():
    text = json.dumps(list(range(5000))).encode()
    frame = compress(text)
    damaged = {"cut": frame[:-4], "header only": frame[:6], "trailing": frame + b"\0",
               "two frames": frame + frame, "garbage": b"not a record",
               "zlib cut": zlib.compress(text)[:-3], "empty": b""}
    for what, data in damaged.items():
        with pytest.raises(ValueError):
            decompress(data)
        assert what


def test_a_frame_claiming_far_more_than_its_size_is_refused_before_decoding():
    bomb = compress(b"\0" * (300 << 20))  # 300 MiB of zeros in a few KiB
    assert len(bomb) * MAX_RATIO + (1 << 20) < 300 << 20
    with pytest.raises(ValueError, match="out of bounds"):
        decompress(bomb)


def test_stream_record_is_a_zstd_frame_and_a_zlib_one_reads_alike():
    """A record this release writes is one zstd frame; the same document as an earlier
    release's zlib record decodes to the same state and meta."""
    document = yaml.safe_load(DEMO_CONFIG.read_text())
    pipeline = Pipeline(parse_config(document).streams)
    stream = pipeline.streams["demo"]
    models = list(stream.config.models)
    for i in range(40):
        pipeline.process(events.decode(json.dumps({
            "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i,
            "outputs": {m: [0.3, 0.7] for m in models}}).encode()))
        if i % 3 == 0:
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i + 0.5,
                "label": 1}).encode()))
    record = encode_stream_record("demo", stream, {"task": 0})
    assert record.startswith(ZSTD_MAGIC)
    legacy = zlib.compress(decompress(record), 1)
    name, state, meta = decode_stream_record(record, "new")
    old_name, old_state, old_meta = decode_stream_record(legacy, "old")
    assert (old_name, old_meta) == (name, meta)
    assert dumps_state(old_state) == dumps_state(state)
    assert name == "demo" and meta["task"] == 0 and len(state["join"]["entries"]) > 20
