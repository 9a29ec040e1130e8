"""Memory stays flat: resident set size after 1M vs after 2M events through the pipeline.

Goal (issue 3): RSS after 2M events within 5% of RSS after 1M. An *event* is one input
record, a prediction or a label (what ``streamweights_events_total`` counts), so 2M events
are ~1M predictions and their labels.

Every record goes through the same in-process path the service runs and
``bench/service.py`` times: ``events.decode`` → ``Pipeline.process`` (join, the config's
adapter chain, prequential scores, drift reaction, weights versions) → ``events.encode``
of the adapted record and of each weights version (the encoded bytes are dropped, as a
sink would write them out).

Source (``--source``):

* ``replay`` (default): the config's replay scenario (``configs/demo.yaml``: Agrawal
  concepts recurring, three frozen river models), generated lazily *in the same
  process*, record by record, as the embedded service does. What is measured is then the
  embedded service's footprint, generator included; generation runs at ~15k records/s,
  so 2M events take a few minutes.
* ``cyclic``: one block of replay records is generated up front (before the first
  reading) and replayed over and over; every pass rewrites each record's id (suffix
  ``~pass``) and shifts its timestamps by the block's span, so ids stay unique, event time
  keeps increasing and the join keeps matching labels to predictions. Faster, and the
  generator is out of the picture (its block is allocated before the baseline reading).

RSS is read from ``/proc/self/status`` (``VmRSS``, and ``VmHWM``, the peak) after
``gc.collect()``; ``sys.getallocatedblocks()`` (live Python objects' memory blocks) is
printed alongside, since a slow leak of Python objects shows there before it shows in
RSS. Readings are taken at 1/8, 1/4, 1/2, 3/4 and all of ``--events`` (0.25M, 0.5M, 1M,
1.5M, 2M by default).

Run: ``python bench/memory.py [--events 2000000] [--source replay|cyclic]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from the repo root without installing the package
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

import streamweights  # noqa: E402
from streamweights import events  # noqa: E402
from streamweights.config import ServiceConfig, load_config  # noqa: E402
from streamweights.pipeline import Pipeline  # noqa: E402
from streamweights.runtime.replay import ReplayStream  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "demo.yaml"
#: Fractions of --events at which memory is read; the goal compares the last with 1/2.
READINGS = (0.125, 0.25, 0.5, 0.75, 1.0)
#: Records per prediction event in the replay: a prediction plus (0.5% missing) a label.
RECORDS_PER_EVENT = 1.995


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes, from /proc/self/status."""
    found = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024  # the kernel reports kB
    return found


def replay_source(config: ServiceConfig, n_records: int) -> Iterator[bytes]:
    """The config's replay, long enough for ``n_records``, generated lazily."""
    n_events = math.ceil(n_records / RECORDS_PER_EVENT) + 10_000
    source = dataclasses.replace(config.source, events=max(config.source.events, n_events))
    return (raw for _, raw in ReplayStream(source).records())


def cyclic_source(config: ServiceConfig, block_events: int) -> Iterator[bytes]:
    """One replay block, generated now, then cycled with rewritten ids and timestamps."""
    started = time.perf_counter()
    source = dataclasses.replace(config.source, events=block_events)
    block = [orjson.loads(raw) for _, raw in ReplayStream(source).records()]
    first, last = block[0]["ts"], max(record["ts"] for record in block)
    span = last - first + 1.0  # the next pass starts a second after this one's last record
    print(f"generated a block of {len(block):,} records ({block_events:,} events, "
          f"{span:,.0f} s of event time) in {time.perf_counter() - started:.1f}s", flush=True)

    def cycle() -> Iterator[bytes]:
        for index in itertools.count():
            shift = index * span
            for record in block:
                rewritten = dict(record)
                rewritten["id"] = f"{record['id']}~{index}"
                rewritten["ts"] = round(record["ts"] + shift, 3)
                yield orjson.dumps(rewritten)

    return cycle()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="service config whose source and streams are used "
                             "(default: configs/demo.yaml)")
    parser.add_argument("--events", type=int, default=2_000_000,
                        help="records (predictions + labels) to process; readings at 1/8, "
                             "1/4, 1/2, 3/4 and all of it")
    parser.add_argument("--source", choices=("replay", "cyclic"), default="replay",
                        help="lazy in-process replay (default) or a cycled pre-generated block")
    parser.add_argument("--block-events", type=int, default=100_000,
                        help="--source cyclic: prediction events in the block")
    parser.add_argument("--progress-every", type=int, default=100_000,
                        help="print a progress line every this many records")
    parser.add_argument("--json", default=None, help="write the readings here as JSON")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    print(f"python {platform.python_version()}, streamweights {streamweights.__version__}, "
          f"config {args.config}, source {args.source}, {args.events:,} events (records)",
          flush=True)
    if args.source == "cyclic":
        records = cyclic_source(config, args.block_events)
    else:
        records = replay_source(config, args.events)
    pipeline = Pipeline(config.streams)
    decode, encode, record_error = events.decode, events.encode, events.RecordError
    process, reject = pipeline.process, pipeline.reject
    marks = sorted({max(1, round(args.events * fraction)) for fraction in READINGS})

    def reading(count: int) -> dict[str, float]:
        gc.collect()
        status = proc_status()
        pending = sum(len(stream.join) for stream in pipeline.streams.values())
        row = {"events": count, "rss_bytes": status["VmRSS"], "peak_rss_bytes": status["VmHWM"],
               "allocated_blocks": sys.getallocatedblocks(), "pending": pending}
        print(f"  {count:>10,} events: RSS {status['VmRSS'] / 2**20:8.1f} MiB  (peak "
              f"{status['VmHWM'] / 2**20:6.1f} MiB)  Python blocks "
              f"{row['allocated_blocks']:>9,}  pending {pending:,}", flush=True)
        return row

    rows = [reading(0)]
    started = last_time = time.perf_counter()
    count = last_count = 0
    next_mark = iter(marks)
    mark = next(next_mark)
    for raw in records:
        try:
            record = decode(raw)
        except record_error as error:
            reject(error, raw)
        else:
            outcome = process(record)
            if outcome.adapted is not None:
                encode(outcome.adapted)
            for weights in outcome.weights:
                encode(weights)
        count += 1
        if count % args.progress_every == 0:
            now = time.perf_counter()
            print(f"  ... {count:,} events, {(count - last_count) / (now - last_time):,.0f}/s "
                  f"(source + pipeline)", flush=True)
            last_time, last_count = now, count
        if count == mark:
            rows.append(reading(count))
            mark = next(next_mark, None)
            if mark is None:
                break
    elapsed = time.perf_counter() - started
    if count < args.events:
        print(f"the source ended after {count:,} events", flush=True)
        return 1

    by_count = {row["events"]: row for row in rows}
    half, full = by_count[max(1, round(args.events * 0.5))], by_count[marks[-1]]
    ratio = full["rss_bytes"] / half["rss_bytes"]
    summary = next(iter(pipeline.summary()["streams"].values()))
    print(f"\nprocessed {count:,} events in {elapsed:.0f}s ({count / elapsed:,.0f}/s, source "
          f"included): {summary['predictions']:,} predictions, {summary['labels']:,} labels, "
          f"{summary['expired']:,} expired, {summary['drift_events']} drift events, "
          f"invalid {pipeline.invalid or 0}")
    print(f"RSS at {full['events']:,} / RSS at {half['events']:,} = {ratio:.4f} "
          f"({100 * (ratio - 1):+.2f}%; goal within 5%)")
    print(f"Python blocks at {full['events']:,} / at {half['events']:,} = "
          f"{full['allocated_blocks'] / half['allocated_blocks']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": args.source, "readings": rows,
                                               "ratio": ratio}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
