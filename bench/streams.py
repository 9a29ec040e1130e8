"""Many streams in one replica: records/s, RSS per stream, and commit cost vs changed streams.

One service (embedded runtime: JSONL input, JSONL outputs, local state folder) holding
``--streams`` streams (default 10,000; say one per merchant segment), each with the demo
config's stream (``configs/demo.yaml``: a portfolio of candidate chains, then
DriftMemory(64, ADWIN); DtACI conformal layers; a label-free performance estimate; the
first line printed names them), its own join and scores. Steps, each timed:

1. build: parse the config and build every stream's chain (RSS before and after);
2. first records: ``--first-rounds`` predictions per stream and their labels (3 s of
   event time later), interleaved over all streams, through ``Service.run`` (decode,
   pipeline, adapted/weights outputs, a checkpoint every ``--checkpoint-every`` records,
   and at the end of the input a weights version of every stream and a full checkpoint):
   this includes each stream's one-off costs (its Prometheus series, its first weights
   version), so records/s here is a floor; RSS after it, per stream;
3. steady: ``--steady-rounds`` more rounds through the service's own loop
   (``Service._loop`` over the records in memory: the core's lane or decode and
   pipeline, metrics, outputs), no checkpoint: records/s of a replica that holds every
   stream already, its records alone; then ``--cadence-rounds`` (12) rounds with the
   service's checkpoints on at the embedded default cadence (every 20,000 records or
   30 s; its writes spread over 8 checkpoints, ``checkpoint.spread_over``), as many
   again writing every changed stream at each checkpoint, and ``--steady-rounds`` at
   the Kafka runtime's cadence (10,000 records or 0.1 s), twice: every changed stream
   written (as before that runtime spread its commits) and spread as it does now, both
   held back after long checkpoints (``checkpoint.max_share``): what such a replica
   sustains.
   Records interleaved over many streams change a stream the last checkpoint did not
   write nearly every time, so its checkpoints bound it, not its records. After the
   spread line, a new service
   restores the folder (replaying the input into the streams left unwritten) and its
   state is checked against the live one's, byte for byte;
   then one /metrics of all of them: the service's writer against prometheus_client's
   ``generate_latest`` (the same bytes), CPU time each, and the gzip Prometheus gets;
4. commits: for k in 1, 10, 100, 1,000, 10,000 (capped at ``--streams``), one more
   prediction on each of k streams, then one checkpoint: its stream records, bytes and
   time. Commit cost should grow with k, not with the number of streams held; a commit
   that the store makes full (every stream, because the incremental ones since the last
   full snapshot outgrew it) is marked. Before the table, commits of one changed stream
   until one is full (the others' records copied from the chain: timed), and the first
   commit after it, which also deletes the files that snapshot replaced, timed apart;
5. restore: a new service on the same folder restores the latest snapshot (every stream
   read back through its chain);
6. mature streams (``--mature-streams``, default 200, 0 to skip; in a process of its
   own): the steps above see streams after a record or two, their windows nearly empty;
   these run ``--mature-rounds`` (default 1,500) predictions and labels each first, past
   the conformal windows' 1,000 scores, the coverage monitors' 500 labels and the
   memory's 64 items: RSS per stream, and a full commit and a restore of them, per
   stream; then a fresh process restores them (a replica restarting), and its RSS per
   stream is printed beside the one of the process that ran them.

The garbage collector is set up as ``streamweights run`` sets it (start-up objects, then
the streams built and restored, frozen out of its scans: ``runtime/heap.py``).

The Kafka runtime writes the same per-stream records (plus the task's offsets) to its
changelog, one message per changed stream, so its commit bytes follow the same column.
The machine may be shared: say so when quoting the figures.

Run: ``python bench/streams.py [--streams 10000] [--first-rounds 1] [--steady-rounds 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import gzip
import json
import math
import pathlib
import random
import subprocess
import sys
import tempfile
import time

import yaml
from prometheus_client import generate_latest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # (tests.process_memory, run from anywhere)
    sys.path.insert(0, str(ROOT))

from streamweights.adapters.state_codec import dumps_state  # noqa: E402
from streamweights.config import (  # noqa: E402
    KAFKA_CHECKPOINT_RECORDS,
    KAFKA_CHECKPOINT_SECONDS,
    KAFKA_SPREAD_ABOVE,
    KAFKA_SPREAD_OVER,
    ServiceConfig,
    parse_config,
)
from streamweights.runtime.checkpoint_pacing import CheckpointPacer  # noqa: E402
from streamweights.runtime.heap import startup_heap_frozen  # noqa: E402
from streamweights.runtime.service import Service  # noqa: E402
from streamweights.runtime.sources import RecordsSource  # noqa: E402
from streamweights.runtime.state_store import MAX_CHAIN  # noqa: E402
from tests.process_memory import resident_bytes  # noqa: E402

MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")


def stream_names(count: int) -> list[str]:
    return [f"segment-{n:05d}" for n in range(count)]


def input_records(names: list[str], rounds: range, seed: int = 7) -> list[bytes]:
    """Rounds over every stream: a prediction each, its label 3 s of event time later,
    in event-time order."""
    rng = random.Random(seed + rounds.start)
    records = []
    ts = 1_750_000_000.0 + rounds.start * len(names) * 0.001
    for round_number in rounds:
        for name in names:
            ts += 0.001
            p = round(rng.uniform(0.05, 0.95), 6)
            outputs = {m: [round(1 - q, 6), q] for m, q in
                       zip(MODELS, (p, round(min(0.99, p * 1.1), 6), 0.5), strict=True)}
            event_id = f"{name}-{round_number}"
            records.append((ts, 0, json.dumps({"schema": 1, "stream": name, "id": event_id,
                                               "ts": ts, "outputs": outputs})))
            records.append((ts + 3, 1, json.dumps({"schema": 1, "stream": name,
                                                   "id": event_id, "ts": ts + 3,
                                                   "label": int(rng.random() < p)})))
    records.sort(key=lambda r: (r[0], r[1]))
    return [line.encode() for _, _, line in records]


def config_document(folder: pathlib.Path, input_path: pathlib.Path, names: list[str],
                    checkpoint_every: int) -> dict:
    document = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    stream = document["streams"][0]
    document["streams"] = [{**stream, "name": name} for name in names]
    document["source"] = {"kind": "jsonl", "path": str(input_path)}
    document["state_dir"] = str(folder / "state")
    document["checkpoint"] = {"every_records": checkpoint_every, "every_seconds": 3600}
    document["http"] = {"host": "127.0.0.1", "port": None}
    document["outputs"] = {"adapted": str(folder / "adapted.jsonl"),
                           "weights": str(folder / "weights.jsonl"),
                           "dead_letter": str(folder / "dead-letter.jsonl")}
    document["logging"] = {"format": "text", "progress_every_seconds": 3600}
    return document


def describe_stream(document: dict) -> str:
    """What each stream runs, read from the config document (not written by hand: the
    demo config this bench borrows has changed since it was first written)."""
    stream = document["streams"][0]
    stages = []
    for adapter in stream["adapters"]:
        options = ", ".join(f"{key} {value}" for key, value in adapter.items() if key != "type")
        stages.append(f"{adapter['type']}({options})" if options else adapter["type"])
    parts = [" -> ".join(stages)]
    if stream.get("conformal"):
        conformal = stream["conformal"]
        parts.append(f"conformal {conformal.get('method', 'default')} at alpha "
                     f"{conformal.get('alpha')}")
    if stream.get("performance_estimate"):
        parts.append(f"performance estimate {stream['performance_estimate']}")
    return "; ".join(parts)


def touch(service: Service, names: list[str], tag: str) -> None:
    """One more prediction on each of ``names`` (marks them changed)."""
    from streamweights import events

    for name in names:
        stream = service.pipeline.streams[name]
        ts = (stream.latest_ts or 1_750_000_000.0) + 0.5
        record = events.decode(json.dumps({
            "schema": 1, "stream": name, "id": f"{name}-{tag}", "ts": ts,
            "outputs": {m: [0.4, 0.6] for m in MODELS}}).encode())
        service.pipeline.process(record)


def scrape_costs(service: Service, rounds: int = 3) -> str:
    """One /metrics of every stream held: the service's writer
    (``ServiceMetrics.exposition``) against prometheus_client's ``generate_latest`` of
    the same registry (what it used before; the same bytes), alternating, best of
    ``rounds`` each; then the gzip the HTTP side sends Prometheus (level 1). CPU time of
    this thread: a scrape holds the GIL the service loop needs for all of it but the
    compression. The collections each one's own garbage triggers are its own cost (a
    full one of 10,000 streams' objects takes ~1.5 s here)."""
    registry = service.metrics.registry
    ours = theirs = compress = math.inf
    for _ in range(rounds):
        gc.collect()  # each starts from a collected heap, not the other's garbage
        cpu = time.thread_time()
        text = service.metrics.exposition()
        ours = min(ours, time.thread_time() - cpu)
        gc.collect()
        cpu = time.thread_time()
        reference = generate_latest(registry)
        theirs = min(theirs, time.thread_time() - cpu)
        assert text == reference
        started = time.perf_counter()
        packed = gzip.compress(text, compresslevel=1, mtime=0)
        compress = min(compress, time.perf_counter() - started)
    series = sum(1 for line in text.splitlines() if not line.startswith(b"#"))
    return (f"scrape: {series:,} series ({series / len(service.pipeline.streams):,.0f} per "
            f"stream), {len(text):,} bytes, gzip {len(packed):,} bytes in {compress:.3f} s; "
            f"written in {ours:.3f} s CPU, prometheus_client's generate_latest "
            f"{theirs:.3f} s (x{theirs / ours:.1f})")


#: The service's checkpoint cadences: (what, every_records, every_seconds,
#: (spread_above, spread_over), max_share, whether the line runs ``--cadence-rounds``
#: rather than ``--steady-rounds``).
#: The embedded runtime spreads its writes (``checkpoint.spread_over``, default 8), and
#: is timed again writing every changed stream (``spread_over: 1``, as before it could)
#: for the comparison, both over enough checkpoints to include the full snapshot that
#: comes every ~9 spread ones (two checkpoints alone would leave it out and flatter the
#: spread line ~1.3-1.6x). The Kafka runtime spreads its commits the same way since the
#: forty-seventh session (``runtime.commit_spread``; it also logs each task's records in
#: the changelog, ~2.5% of a core at 100k records/s, which this local stand-in leaves out:
#: ``bench/kafka.py --streams`` measures the real thing); its cadence is timed as the
#: service runs it (spread, held back after long checkpoints: ``checkpoint.max_share``
#: 0.5) and writing every changed stream at each commit (``spread_over: 1``, as before).
CADENCES = (
    ("the embedded default", ServiceConfig.checkpoint_every_records,
     ServiceConfig.checkpoint_every_seconds,
     (ServiceConfig.checkpoint_spread_above, ServiceConfig.checkpoint_spread_over),
     ServiceConfig.checkpoint_max_share, True),
    ("the embedded default, every changed stream written (spread_over: 1),",
     ServiceConfig.checkpoint_every_records, ServiceConfig.checkpoint_every_seconds,
     (ServiceConfig.checkpoint_spread_above, 1), ServiceConfig.checkpoint_max_share, True),
    ("the Kafka runtime's, every changed stream written (spread_over: 1, as before),",
     KAFKA_CHECKPOINT_RECORDS, KAFKA_CHECKPOINT_SECONDS, (KAFKA_SPREAD_ABOVE, 1),
     ServiceConfig.checkpoint_max_share, False),
    ("the Kafka runtime's (spread as it does: above 32, over 40)", KAFKA_CHECKPOINT_RECORDS,
     KAFKA_CHECKPOINT_SECONDS, (KAFKA_SPREAD_ABOVE, KAFKA_SPREAD_OVER),
     ServiceConfig.checkpoint_max_share, False),
)


def with_checkpoints(service: Service, config: ServiceConfig, records: list[bytes],
                     cadence: str, every_records: int, every_seconds: float,
                     spread: tuple[int, int], max_share: float) -> str:
    """The steady loop again over ``records``, now with the service's checkpoints at a
    cadence of its own: what a replica of these streams sustains. Interleaved over many
    streams, nearly every record changes a stream the last checkpoint did not write, so
    each checkpoint writes about as many streams as it covers records (up to all of
    them), unless it spreads them over ``spread_over`` checkpoints, or fewer checkpoints
    are taken (``max_share``: after a long one, the next waits). (The Kafka runtime
    sends the same stream records to its changelog in a transaction; here they go to the
    local state folder, fsynced, as embedded.)"""
    service.state.write_floor, service.state.write_spread = spread
    service._pacer = CheckpointPacer(max_share)
    service.source = RecordsSource(records, first=service.position)
    service.max_records = service.position + len(records)
    service.config = dataclasses.replace(config, checkpoint_every_records=every_records,
                                         checkpoint_every_seconds=every_seconds,
                                         checkpoint_max_share=max_share)
    written: list[int] = []
    checkpoint = service.checkpoint  # (the bound method: counted below, then put back)

    def counted() -> None:
        checkpoint()
        written.append(service.state.last_commit[0])

    service.checkpoint = counted
    started, cpu = time.perf_counter(), time.process_time()
    try:
        service._loop()
        service.checkpoint()  # the records since the last one (the loop ends at the bound)
    finally:
        del service.checkpoint
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    streams = sum(written)
    return (f"steady, checkpoints at {cadence} cadence (every {every_records:,} records or "
            f"{every_seconds:g} s, max_share {max_share:g}): {len(records):,} records in "
            f"{seconds:.2f} s = "
            f"{len(records) / seconds:,.0f} records/s ({len(records) / cpu:,.0f} per CPU "
            f"second), {len(written)} checkpoints (one at the end) writing {streams:,} "
            f"stream records, {streams / len(written):,.0f} each")


def restore_with_replay(service: Service, document: dict, records: list[bytes]) -> str:
    """A new service restores the folder while ``service`` leaves it unwritten (its lock
    let go meanwhile), the input being ``records`` (every record so far, from position
    0): the streams the latest checkpoints left unwritten are replayed. Its pipeline
    state must equal the live one's, byte for byte."""
    service.state.lock.release()
    try:
        probe = Service(parse_config(document))
        probe.source = RecordsSource(records)
        started, cpu = time.perf_counter(), time.process_time()
        probe.restore()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        equal = (dumps_state(probe.pipeline.state_dict())
                 == dumps_state(service.pipeline.state_dict()))
        replayed = probe.state.replayed
        probe.close()
    finally:
        service.state.lock.acquire()
    if not equal:
        raise AssertionError("the restored state differs from the live one")
    return (f"restore of that folder by a new service: {seconds:.2f} s ({cpu:.2f} s CPU), "
            f"{replayed:,} records replayed into the streams its checkpoints left "
            "unwritten; the state equals the live one's, byte for byte")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--first-rounds", type=int, default=1,
                        help="predictions per stream (each with its label) in the first run")
    parser.add_argument("--steady-rounds", type=int, default=2,
                        help="predictions per stream (each with its label) timed after it")
    parser.add_argument("--cadence-rounds", type=int, default=12,
                        help="predictions per stream (each with its label) of the lines at "
                             "the embedded cadence (12 rounds: 12 checkpoints of 10,000 "
                             "streams)")
    parser.add_argument("--checkpoint-every", type=int, default=20_000)
    parser.add_argument("--mature-streams", type=int, default=200,
                        help="streams in the last step, each fed --mature-rounds first "
                             "(0: skip that step)")
    parser.add_argument("--mature-rounds", type=int, default=1_500,
                        help="predictions (each with its label) per mature stream")
    parser.add_argument("--mature-only", action="store_true",
                        help="run the last step alone (the bench runs it so, in a process "
                             "of its own, so that RSS is its own)")
    parser.add_argument("--restore-rss", metavar="DOCUMENT",
                        help="(the last step's own) restore the state folder of a config "
                             "DOCUMENT (JSON) in this process; print the RSS per stream "
                             "it took")
    parser.add_argument("--write-mature-input", metavar="FILE",
                        help="(the last step's own) write its input to FILE in this "
                             "process")
    args = parser.parse_args()
    if args.write_mature_input:
        write_input(pathlib.Path(args.write_mature_input), stream_names(args.mature_streams),
                    args.mature_rounds)
        return
    if args.restore_rss:
        print(restore_rss(pathlib.Path(args.restore_rss)))
        return
    if args.mature_only and args.mature_streams <= 0:
        parser.error("--mature-only needs --mature-streams of at least 1")
    if args.mature_only:
        mature(args.mature_streams, args.mature_rounds)
        return
    names = stream_names(args.streams)
    # The heap as `streamweights run` keeps it: start-up objects frozen before the
    # service is built, the streams built and restored frozen with them (runtime/heap.py).
    with startup_heap_frozen(), tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        folder = pathlib.Path(tmp)
        input_path = folder / "input.jsonl"
        first = input_records(names, range(args.first_rounds))
        input_path.write_bytes(b"\n".join(first) + b"\n")
        lines = len(first)
        steady = input_records(names, range(args.first_rounds,
                                            args.first_rounds + args.steady_rounds))
        document = config_document(folder, input_path, names, args.checkpoint_every)

        rss_start = resident_bytes()
        started = time.perf_counter()
        config = parse_config(document)
        service = Service(config)
        build_seconds = time.perf_counter() - started
        rss_built = resident_bytes()

        service.restore()
        started, cpu = time.perf_counter(), time.process_time()
        summary = service.run()
        run_seconds, run_cpu = time.perf_counter() - started, time.process_time() - cpu
        service._exhausted = False  # the steps below go on reading, as a live replica
        rss_run = resident_bytes()
        assert summary["records"] == lines, summary["records"]
        pending = sum(s["pending"] for s in summary["streams"].values())

        print(f"streams held: {args.streams:,}  (each: {describe_stream(document)})")
        print(f"build: {build_seconds:.2f} s, RSS {(rss_built - rss_start) / args.streams:,.0f}"
              " B per stream")
        print(f"first records: {lines:,} in {run_seconds:.2f} s = "
              f"{lines / run_seconds:,.0f} records/s ({lines / run_cpu:,.0f} per CPU second; "
              "one-off costs per stream and the final full checkpoint included); RSS "
              f"{(rss_run - rss_start) / args.streams:,.0f} B per stream after it "
              f"({pending:,} predictions pending), {rss_run / 2**20:,.0f} MiB in all")
        # The service's own loop over the steady records (the lane or the general path,
        # counters, the latency histogram, position and cadence checks), without its
        # checkpoints (the table below times those), ending at the bound before the
        # end-of-input weights versions.
        service.source = RecordsSource(steady, first=service.position)
        service.max_records = service.position + len(steady)
        service.config = dataclasses.replace(config, checkpoint_every_records=1 << 62,
                                             checkpoint_every_seconds=math.inf)
        started, cpu = time.perf_counter(), time.process_time()
        service._loop()
        steady_seconds, steady_cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"steady: {len(steady):,} records in {steady_seconds:.2f} s = "
              f"{len(steady) / steady_seconds:,.0f} records/s ({len(steady) / steady_cpu:,.0f}"
              f" per CPU second), all {args.streams:,} streams held; RSS "
              f"{(resident_bytes() - rss_start) / args.streams:,.0f} B per stream after it")
        rounds = args.first_rounds + args.steady_rounds
        so_far = [*first, *steady]
        for cadence, every_records, every_seconds, spread, share, long in CADENCES:
            count = args.cadence_rounds if long else args.steady_rounds
            records = input_records(names, range(rounds, rounds + count))
            rounds += count
            so_far += records
            print(with_checkpoints(service, config, records, cadence, every_records,
                                   every_seconds, spread, share))
            if spread[1] > 1:
                print(restore_with_replay(service, document, so_far))
        # The table below times the writing of k changed streams: each commit writes
        # every one (the touches are not in any input a restore could replay).
        service.state.write_spread = 1
        print(scrape_costs(service))
        print()
        state = service.state
        service.checkpoint()  # the streams the spread ones left: written, before the table
        rng = random.Random(1)
        # Then commits of one changed stream until the store makes one full: it encodes
        # that stream and copies every other one's newest record from the chain (timed
        # as a line of its own).
        for attempt in range(MAX_CHAIN + 1):
            touch(service, rng.sample(names, 1), f"to-full-{attempt}")
            full = state.store.needs_full()
            started, cpu = time.perf_counter(), time.process_time()
            service.checkpoint()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            if full:
                print(f"a full snapshot of 1 changed stream, every other one's record copied "
                      f"from the chain: {state.last_commit[1]:,} bytes, {seconds:.2f} s wall, "
                      f"{cpu:.2f} s CPU")
                break
        # The first incremental snapshot after a full one also deletes the files of the
        # chain the full one replaced (tens of MB here, ~7 ms of unlinking): timed apart,
        # so that the table's first row is a commit like the others.
        before = {path: path.stat().st_size
                  for path in (folder / "state").glob("snapshot-*.snap")}
        touch(service, rng.sample(names, 1), "after-full")
        started, cpu = time.perf_counter(), time.process_time()
        service.checkpoint()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        removed = set(before) - set((folder / "state").glob("snapshot-*.snap"))
        print(f"first commit after a full one: 1 changed stream, {len(removed)} file(s) "
              f"no longer needed deleted ({sum(before[path] for path in removed):,} bytes): "
              f"{seconds * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU")
        print(f"{'changed':>8} {'records':>8} {'commit bytes':>13} {'bytes/changed':>14} "
              f"{'wall ms':>9} {'CPU ms':>9} {'CPU ms/changed':>15}  kind")
        sizes = [k for k in (1, 10, 100, 1_000, 10_000) if k <= args.streams]
        if args.streams not in sizes:
            sizes.append(args.streams)
        for k in sizes:
            chosen = rng.sample(names, k)
            touch(service, chosen, f"touch-{k}")
            full = state.store.needs_full()
            started, cpu = time.perf_counter(), time.process_time()
            service.checkpoint()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            records, size = state.last_commit
            kind = "full" if full or records == args.streams else "incremental"
            print(f"{k:>8,} {records:>8,} {size:>13,} {size / k:>14,.0f} "
                  f"{seconds * 1e3:>9.1f} {cpu * 1e3:>9.1f} {cpu * 1e3 / k:>15.3f}  {kind}")
        service.close()

        again = Service(parse_config(document))
        started, cpu = time.perf_counter(), time.process_time()
        again.restore()
        restore_seconds, restore_cpu = time.perf_counter() - started, time.process_time() - cpu
        again.close()
        files = sorted((folder / "state").glob("snapshot-*.snap"))
        print()
        print(f"restore of {args.streams:,} streams (a chain of {len(files)} file(s), "
              f"{sum(f.stat().st_size for f in files):,} bytes; the service built before): "
              f"{restore_seconds:.2f} s, {restore_cpu:.2f} s CPU")
    print(flush=True)
    if args.mature_streams <= 0:
        return
    subprocess.run([sys.executable, __file__, "--mature-only",
                    "--mature-streams", str(args.mature_streams),
                    "--mature-rounds", str(args.mature_rounds)], check=True)


def mature(count: int, rounds: int) -> None:
    """Streams that have run a while: the steps above see streams after a record or two,
    when their windows are nearly empty (the conformal layers' 1,000 scores, the coverage
    monitors' 500 labels, the memory's 64 items fill later), so what a stream weighs
    and costs to commit and restore once it has run for a while is measured here, on
    fewer streams: RSS per stream (this process's own, from before the build), and a full
    commit and a restore of them all, per stream."""
    names = stream_names(count)
    with startup_heap_frozen(), \
            tempfile.TemporaryDirectory(prefix="bench-streams-mature-") as tmp:
        folder = pathlib.Path(tmp)
        input_path = folder / "input.jsonl"
        # Written by a process of its own: the records' memory, freed in this one, was
        # taken up again by the run and left out of its RSS per stream (167 KB a stream
        # read, where the same run measured from a clean start took 209-251 KB).
        subprocess.run([sys.executable, __file__, "--write-mature-input", str(input_path),
                        "--mature-streams", str(count), "--mature-rounds", str(rounds)],
                       check=True)
        document = config_document(folder, input_path, names, 2**53 - 1)
        config_path = folder / "mature.json"  # (for the fresh process, below)
        config_path.write_text(json.dumps(document))
        rss_start = resident_bytes()
        service = Service(parse_config(document))
        service.restore()
        started = time.perf_counter()
        service.run()  # ends with a full checkpoint: its records are the ones measured
        run_seconds = time.perf_counter() - started
        rss_run = resident_bytes()
        touch(service, names, "mature")
        started, cpu = time.perf_counter(), time.process_time()
        service.checkpoint()
        commit_seconds, commit_cpu = time.perf_counter() - started, time.process_time() - cpu
        written, size = service.state.last_commit
        service.close()
        again = Service(parse_config(document))
        started, cpu = time.perf_counter(), time.process_time()
        again.restore()
        restore_cpu = time.process_time() - cpu
        again.close()
        restarted = subprocess.run([sys.executable, __file__, "--restore-rss",
                                    str(config_path)], check=True, stdout=subprocess.PIPE,
                                   text=True).stdout.strip()
    print(f"mature streams: {count:,} streams after {rounds:,} predictions and labels each "
          f"({2 * count * rounds:,} records in {run_seconds:.1f} s): RSS "
          f"{(rss_run - rss_start) / count:,.0f} B per stream; a commit of all "
          f"{written:,}: {size / written:,.0f} bytes and {commit_cpu * 1e3 / written:.3f} ms "
          f"CPU per stream ({commit_seconds * 1e3:.0f} ms wall in all); restore "
          f"{restore_cpu * 1e3 / count:.3f} ms CPU per stream; {restarted}")


def write_input(path: pathlib.Path, names: list[str], rounds: int) -> None:
    """The mature step's input: ``rounds`` predictions and labels of each stream."""
    path.write_bytes(b"\n".join(input_records(names, range(rounds), seed=11)) + b"\n")


def restore_rss(config_path: pathlib.Path) -> str:
    """A fresh process (this one) restores the state folder of ``config_path``, as a
    restarted replica does: its RSS per stream from before the service is built."""
    document = json.loads(config_path.read_text())
    with startup_heap_frozen():
        rss_start = resident_bytes()
        service = Service(parse_config(document))
        service.restore()
        rss_restored = resident_bytes()
        count = len(service.pipeline.streams)
        service.close()
    return (f"a fresh process restoring them: RSS {(rss_restored - rss_start) / count:,.0f} "
            "B per stream")


if __name__ == "__main__":
    main()
