"""The join's waiting predictions in a snapshot: per-entry encode cost, old form and new.

One stream with the demo config's chain (``configs/demo.yaml``: the Portfolio of four
candidate chains, DriftMemory, conformal sets) serves ``--entries`` predictions whose
labels have not come yet, so they all wait in its join. Then, side by side in this run:

* per entry, encode: the previous release's form (``dumps_state([id, ts, payload])``:
  a tagged dict and a base64 per array) against ``join.encode_entry`` (all the entry's
  arrays in one base64 string, the skeleton of dtypes and shapes cached by structure);
* per entry, decode: ``loads_state`` of the old text against ``json.loads`` +
  ``join.decode_entry``;
* the stream record with every entry encoded afresh (the kept texts dropped first), the
  previous release's format 2 (``dumps_state`` of the whole document, zlib level 1)
  against ``encode_stream`` with a rebase (format 6: the record and every join segment),
  with its bytes;
* an incremental commit as the service makes it with long label delays: ``--churn`` new
  predictions and the labels of the ``--churn`` oldest since the last commit, so only
  the new predictions go into a new segment and the labels are marks in the layout;
* the rest of a stream record: the stream's state without the waiting predictions as
  the previous release wrote it (``dumps_state``, a ``repr`` per float, a base64 per
  array) against ``pack_state`` (format 3), the parts that cost most, and zlib at level 1
  (and 6, for comparison) of the whole text.

Labels for all but the newest ``--waiting`` predictions arrive too (the state's
windows fill as a running stream's do); ``--config`` picks another stream configuration
(``configs/kafka.yaml`` is the Kafka bench's).

Each figure is the best of ``--repeats`` timed runs (the machine may be shared: say how
loaded it was when quoting them).

Run: ``python bench/join_codec.py [--entries 2000] [--churn 100] [--repeats 7]
[--config configs/kafka.yaml]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import time
import zlib
from collections.abc import Callable

import yaml

from streamweights import events
from streamweights.adapters.state_codec import dumps_state, loads_state, pack_state
from streamweights.config import parse_config
from streamweights.join import decode_entry, encode_entry
from streamweights.pipeline import Pipeline
from streamweights.runtime.compression import compress, decompress
from streamweights.runtime.state_store import StreamRecords, encode_stream

REPO = pathlib.Path(__file__).resolve().parents[1]


def best_of(repeats: int, work: Callable[[], object],
            before: Callable[[], object] | None = None) -> float:
    """The fastest of ``repeats`` runs of ``work``, in seconds (``before`` runs untimed
    ahead of each)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def demo_stream(entries: int, seed: int = 3, config: pathlib.Path = REPO / "configs" / "demo.yaml",
                labelled: int = 0, pipelines: list[Pipeline] | None = None):
    """The config's first stream after ``labelled`` predictions with their labels, then
    ``entries`` predictions waiting in its join (its pipeline appended to ``pipelines``)."""
    document = yaml.safe_load(config.read_text())
    document["streams"] = [{**document["streams"][0], "name": "demo"}]
    pipeline = Pipeline(parse_config(document).streams)
    if pipelines is not None:
        pipelines.append(pipeline)
    stream = pipeline.streams["demo"]
    stream.join.max_pending = max(stream.join.max_pending, entries)
    # (one record a second of event time: no entry may expire before the last arrives)
    stream.join.ttl_seconds = max(stream.join.ttl_seconds, labelled + entries + 1.0)
    models = list(stream.config.models)
    rng = random.Random(seed)
    for i in range(labelled + entries):
        p = round(rng.uniform(0.05, 0.95), 6)
        pipeline.process(events.decode(json.dumps({
            "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i,
            "outputs": {m: [round(1 - p, 6), p] for m in models}}).encode()))
        if i < labelled:
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": f"e{i}", "ts": 1e9 + i,
                "label": int(rng.random() < p)}).encode()))
    assert len(stream.join) == entries
    return stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--churn", type=int, default=100,
                        help="new predictions (and labels) between two commits")
    parser.add_argument("--config", type=pathlib.Path, default=REPO / "configs" / "demo.yaml")
    args = parser.parse_args()
    stream_pipelines: list[Pipeline] = []
    stream = demo_stream(args.entries, config=args.config, labelled=args.labelled,
                         pipelines=stream_pipelines)
    waiting = stream.join.waiting()
    n = len(waiting)
    payload = waiting[0].payload
    shapes = [(k, getattr(v, "shape", None) or [a.shape for a in v]) for k, v in payload.items()]
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {n} entries, "
          f"payload {shapes}")

    old_texts = [dumps_state([e.id, e.ts, e.payload]) for e in waiting]
    new_texts = [encode_entry(e.id, e.ts, e.payload) for e in waiting]
    old = best_of(args.repeats, lambda: [dumps_state([e.id, e.ts, e.payload])
                                         for e in waiting])
    new = best_of(args.repeats, lambda: [encode_entry(e.id, e.ts, e.payload)
                                         for e in waiting])
    print(f"encode per entry: old {old / n * 1e6:.2f} µs, new {new / n * 1e6:.2f} µs "
          f"(x{old / new:.1f}); text {sum(map(len, old_texts)) / n:.0f} -> "
          f"{sum(map(len, new_texts)) / n:.0f} chars")
    old = best_of(args.repeats, lambda: [loads_state(t) for t in old_texts])
    new = best_of(args.repeats, lambda: [decode_entry(json.loads(t)) for t in new_texts])
    print(f"decode per entry: old {old / n * 1e6:.2f} µs, new {new / n * 1e6:.2f} µs "
          f"(x{old / new:.1f})")

    def old_record() -> bytes:
        document = {"format": 2, "streams": {"demo": stream.state_dict()}}
        return zlib.compress(dumps_state(document).encode("utf-8"), 1)

    def forget_texts() -> None:
        """The join as restored from its own state: no entry encoded, as at a first commit."""
        join = stream.join
        join.restore(join.waiting(), join.expired_total, join.evicted_total, join.joined_total)

    def whole(written: StreamRecords) -> int:
        """The bytes a commit writes for the stream: its record and new segments."""
        return len(written.record) + sum(len(data) for _, data in written.segments)

    def new_record() -> StreamRecords:
        forget_texts()
        return encode_stream("demo", stream, rebase=True)

    old = best_of(args.repeats, old_record)
    new = best_of(args.repeats, lambda: encode_stream("demo", stream, rebase=True),
                  forget_texts)
    cached = best_of(args.repeats, lambda: encode_stream("demo", stream, rebase=True))
    print(f"stream record, all entries afresh: old {old * 1e3:.2f} ms ({len(old_record()):,} "
          f"bytes), new {new * 1e3:.2f} ms ({whole(new_record()):,} bytes) (x{old / new:.1f}); "
          f"new with every entry kept from the last commit {cached * 1e3:.2f} ms (a rebase: "
          "a full local snapshot)")

    # A commit as the service makes it with long label delays: since the last commit,
    # --churn new predictions came and the labels of the --churn oldest; the join was
    # written before, so only the new predictions and the labels' marks are written.
    models = list(stream.config.models)
    served = iter(range(10**9))
    next_ts = 1e9 + args.labelled + n  # one a second after the last one waiting
    encode_stream("demo", stream)  # every waiting entry written once

    def churn() -> None:
        pipeline = stream_pipelines[0]
        oldest = [e.id for e in stream.join.waiting()[:args.churn]]
        for _ in range(args.churn):
            i = next(served)
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": f"c{i}", "ts": next_ts + i,
                "outputs": {m: [0.4, 0.6] for m in models}}).encode()))
        for event_id in oldest:
            pipeline.process(events.decode(json.dumps({
                "schema": 1, "stream": "demo", "id": event_id, "ts": next_ts + i,
                "label": 1}).encode()))
        assert len(stream.join) == n

    sizes = []

    def incremental() -> None:
        sizes.append(whole(encode_stream("demo", stream)))

    took = best_of(args.repeats, incremental, churn)
    print(f"incremental commit after {args.churn} new predictions and {args.churn} labels, "
          f"{n:,} waiting: {took * 1e3:.2f} ms, {min(sizes):,}-{max(sizes):,} bytes "
          f"(the whole join, kept texts: {cached * 1e3:.2f} ms, "
          f"{whole(encode_stream('demo', stream, rebase=True)):,} bytes)")

    state = stream.state_dict(join_entries=False)
    old = best_of(args.repeats, lambda: dumps_state(state))
    new = best_of(args.repeats, lambda: pack_state(state))
    skeleton, data = pack_state(state)
    print(f"rest of the record (state without the waiting predictions): old {old * 1e6:.0f} "
          f"µs ({len(dumps_state(state)):,} chars), new {new * 1e6:.0f} µs "
          f"({len(skeleton) + len(data):,} chars) (x{old / new:.1f}); old by part: " + ", ".join(
              f"{key} {took * 1e6:.0f} µs" for key, value in state.items()
              if (took := best_of(args.repeats, lambda v=value: dumps_state(v))) > 20e-6))
    written = encode_stream("demo", stream, rebase=True)
    text = decompress(written.record) + b"".join(decompress(d) for _, d in written.segments)
    took = best_of(args.repeats, lambda: compress(text))
    print(f"zstd level 1 of the {len(text):,}-byte text: {took * 1e3:.2f} ms, "
          f"{len(compress(text)):,} bytes")
    for level in (1, 6):
        took = best_of(args.repeats, lambda lv=level: zlib.compress(text, lv))
        print(f"zlib level {level} of the {len(text):,}-byte text: {took * 1e3:.2f} ms, "
              f"{len(zlib.compress(text, level)):,} bytes")


if __name__ == "__main__":
    main()
