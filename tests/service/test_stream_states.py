"""A per-stream snapshot's states are decoded one stream at a time, when asked for
(``state_store.StreamStates``): a restore then frees each stream's parse tree before it
builds the next, and Python's memory arenas are not left pinned by a few objects of
each tree (RSS measured in ``bench/streams.py``'s mature step)."""

from __future__ import annotations

import gc
import weakref

from streamweights.adapters.state_codec import dumps_state
from streamweights.runtime import state_store
from streamweights.runtime.state_store import LocalStateStore, StreamStates, encode_stream
from tests.service.test_incremental_state import _pipeline, _serve

META = {"position": 7, "records_seen": 7, "exhausted": False, "sinks": {}, "source": "t",
        "invalid": {}}


def saved(tmp_path):
    """A folder with one full per-stream snapshot of streams "demo" (with predictions
    waiting in its join) and "other", and the pipeline it was taken from."""
    pipeline = _pipeline(("demo", "other"))
    _serve(pipeline, 50, label_every=3)
    written = {name: encode_stream(name, stream, settings=f"{name:>32}")
               for name, stream in pipeline.streams.items()}
    LocalStateStore(tmp_path).save_streams(
        META, [(name, item.record) for name, item in written.items()], True,
        [(name, segment, data) for name, item in written.items()
         for segment, data in item.segments])
    return pipeline, written


def test_states_are_decoded_when_asked_for_and_load_as_the_pipeline_saved_them(
        tmp_path, monkeypatch):
    pipeline, written = saved(tmp_path)
    decoded = []
    decode = state_store.decode_stream_record
    monkeypatch.setattr(state_store, "decode_stream_record",
                        lambda data, where, segments=None: decoded.append(where)
                        or decode(data, where, segments))
    snapshot = LocalStateStore(tmp_path).load_latest().snapshot
    states = snapshot["pipeline"]["streams"]
    assert isinstance(states, StreamStates)
    assert list(states) == ["demo", "other"] and len(states) == 2
    assert "demo" in states and "none" not in states
    assert "demo" in snapshot["stream_settings"] and "none" not in snapshot["listed"]
    assert decoded == []  # names alone decode nothing
    first = states["demo"]
    assert states["demo"] is not first  # (decoded again: nothing held)
    assert len(decoded) == 2 and "(stream 'demo')" in decoded[0]
    assert snapshot["stream_settings"]["demo"] == f"{'demo':>32}"
    assert snapshot["listed"]["demo"] == [segment for segment, _ in written["demo"].segments]
    assert snapshot["listed"]["demo"]  # (the join has segments)
    assert len(decoded) == 2  # (the fields of a stream decoded are kept)
    assert snapshot["stream_settings"]["other"] == f"{'other':>32}"
    assert len(decoded) == 3  # (one not decoded yet is decoded for them)

    restored = _pipeline(("demo", "other"))
    restored.load_state_dict(snapshot["pipeline"], owned=True)
    for name, stream in pipeline.streams.items():
        assert dumps_state(restored.streams[name].state_dict()) == dumps_state(
            stream.state_dict()), name


def test_a_snapshot_and_its_states_are_freed_without_the_collector(tmp_path):
    """The restore's heap is frozen out of the collector's scans (``runtime/heap.py``),
    so a reference cycle through the states would keep every record read for good."""
    saved(tmp_path)
    snapshot = LocalStateStore(tmp_path).load_latest().snapshot
    held = weakref.ref(snapshot["pipeline"]["streams"])
    assert snapshot["listed"]["demo"] and snapshot["stream_settings"]["other"]
    gc.disable()
    try:
        del snapshot
        assert held() is None
    finally:
        gc.enable()


def test_load_gives_every_stream_decoded_as_plain_dicts(tmp_path):
    saved(tmp_path)
    whole = LocalStateStore(tmp_path).load()
    assert type(whole["pipeline"]["streams"]) is dict
    assert type(whole["listed"]) is dict and type(whole["stream_settings"]) is dict
    assert whole["stream_settings"] == {"demo": f"{'demo':>32}", "other": f"{'other':>32}"}
    assert dumps_state(whole)  # (a plain document: it can be written again)
