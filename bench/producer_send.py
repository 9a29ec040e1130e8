"""Output records into a transaction: the runtime's lean sender against kafka-python's
``KafkaProducer.send``, side by side on the same broker, topic and producer settings.

What runs: the real single-node broker of the test harness (``tests/kafka/broker.py``)
unless ``--bootstrap`` names one; one topic of ``--partitions`` partitions; a
transactional producer with the replica's own settings
(``kafka_runtime.transactional_producer_settings``: 256 KiB batches, linger 5 ms,
acks=all, idempotent). Each round sends ``--records`` records shaped like adapted
predictions (~170 bytes of JSON keyed by one of ``--streams`` streams) in one
transaction, then commits, once with ``producer.send`` per record (the baseline: the
client's own path, tuned as the runtime tunes it) and once with
``lean_send.LeanSender`` (what the runtime uses: core-built batches handed over before
the commit), alternating, best of ``--rounds``. Timed: from the first send to the
commit's answer, wall and CPU of this process (both the loop's thread and the client's
sender thread, which shares the interpreter), per record. Every round's records are
read back and counted, so a round that lost records fails instead of looking fast.

``--changelog``: records shaped like a commit's changelog records instead (a stream's
record, ~6 KB of zstd frame, and a join segment, ~1 KB, per stream; keys ``s/<stream>``
and ``j/<segment>/<stream>``; each to its task's partition, named by the caller, as the
runtime sends them): ``producer.send(topic, key=, value=, partition=)`` against
``LeanSender.send_to``, which a commit up to ``kafka_runtime.LEAN_CHANGELOG_MAX`` uses.
Incompressible bytes, as zstd's output is.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
import tempfile
import time
import uuid
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path; the repository must.
sys.path[:] = [str(REPO)] + [entry for entry in sys.path
                             if pathlib.Path(entry or ".").resolve() != REPO / "bench"]

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402

from streamweights.runtime.kafka_runtime import transactional_producer_settings  # noqa: E402
from streamweights.runtime.lean_send import LeanSender  # noqa: E402


def records(count: int, streams: int) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs like the runtime's adapted predictions."""
    out = []
    for n in range(count):
        stream = f"stream-{n % streams}"
        value = (b'{"stream":"%s","id":"p-%09d","ts":%d.25,"adapted":[0.%06d,0.%06d],'
                 b'"kind":"adapted","models":["logistic_regression","naive_bayes",'
                 b'"hoeffding_tree"]}' % (stream.encode(), n, 1_700_000_000 + n,
                                          n % 999_999, 999_999 - n % 999_999))
        out.append((stream.encode(), value))
    return out


def changelog_records(count: int, streams: int) -> list[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` like a commit's changelog records (see the module
    doc); a stream's task is its number modulo the partitions, applied by the caller."""
    import random

    generator = random.Random(11)
    out = []
    for n in range(count):
        stream = n // 2 % streams
        if n % 2 == 0:
            key, size = b"s/segment-%d" % stream, 6000
        else:
            key, size = b"j/%d/segment-%d" % (n, stream), 1000
        out.append((stream, key, generator.randbytes(size)))
    return out


def committed_records(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in ``topic``, written by one committed transaction: the end offsets, less
    the one commit marker each partition it wrote to holds."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    try:
        parts = [TopicPartition(topic, n) for n in range(partitions)]
        ends = consumer.end_offsets(parts).values()
        return sum(ends) - sum(1 for end in ends if end > 0)
    finally:
        consumer.close()


def one_round(bootstrap: str, topic: str, pairs: list[tuple[Any, ...]],
              lean: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one transaction of ``pairs`` (send ... commit): ``(key,
    value)`` pairs, or ``(partition, key, value)`` triples sent to that partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap,
                             transactional_id=f"bench-send-{uuid.uuid4().hex[:8]}",
                             **transactional_producer_settings(1 << 20, {}))
    try:
        producer.init_transactions()
        producer.partitions_for(topic)  # metadata first, as a running replica has it
        sender = LeanSender(producer) if lean else None
        producer.begin_transaction()
        wall, cpu = time.perf_counter(), time.process_time()
        named = len(pairs[0]) == 3
        if sender is not None and named:
            send_to = sender.send_to
            futures = [future for number, key, value in pairs
                       if (future := send_to(topic, number, key, value)) is not None]
            futures += sender.hand_over()
        elif sender is not None:
            send = sender.send
            for key, value in pairs:
                send(topic, value, key, None)
            futures = sender.hand_over()
        elif named:
            send = producer.send
            futures = [send(topic, value=value, key=key, partition=number)
                       for number, key, value in pairs]
        else:
            send = producer.send
            futures = [send(topic, value=value, key=key) for key, value in pairs]
        producer.commit_transaction()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if any(not future.succeeded() for future in futures):
            raise RuntimeError("a send of the round failed")
        return wall, cpu
    finally:
        producer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="an existing broker (default: start one)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--changelog", action="store_true",
                        help="changelog-shaped records to named partitions (module doc)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from tests.kafka.broker import KafkaBroker

            print("starting a Kafka broker (tests/kafka/broker.py) ...", flush=True)
            broker = KafkaBroker(pathlib.Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-send-"))))
            broker.start()
            stack.callback(broker.stop)
            bootstrap = broker.bootstrap
        # a fresh topic per round, so each round's records are counted exactly
        topics = [f"bench-send-{uuid.uuid4().hex[:8]}" for _ in range(2 * args.rounds)]
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.create_topics([NewTopic(topic, args.partitions, 1) for topic in topics])
        finally:
            admin.close()
        if args.changelog:
            pairs = [(stream % args.partitions, key, value) for stream, key, value
                     in changelog_records(args.records, args.streams)]
            size = sum(len(value) for _, _, value in pairs) // len(pairs)
        else:
            pairs = records(args.records, args.streams)
            size = len(pairs[0][1])
        print(f"broker {bootstrap}; {args.records:,} records of ~{size} bytes "
              f"per transaction, {args.streams} keys over {args.partitions} partitions"
              + (" (changelog-shaped, to named partitions)" if args.changelog else ""),
              flush=True)
        best: dict[str, tuple[float, float]] = {}
        for number in range(1, args.rounds + 1):
            for name, lean in (("KafkaProducer.send", False), ("LeanSender", True)):
                topic = topics.pop()
                wall, cpu = one_round(bootstrap, topic, pairs, lean)
                found = committed_records(bootstrap, topic, args.partitions)
                if found != len(pairs):
                    raise RuntimeError(f"{name}: {found:,} records committed, expected "
                                       f"{len(pairs):,}")
                print(f"  round {number}: {name}: {wall / len(pairs) * 1e6:.2f} µs wall, "
                      f"{cpu / len(pairs) * 1e6:.2f} µs CPU per record", flush=True)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
        base, ours = best["KafkaProducer.send"], best["LeanSender"]
        print(f"\nbest of {args.rounds} (per record, send ... commit): KafkaProducer.send "
              f"{base[0] / len(pairs) * 1e6:.2f} µs wall / {base[1] / len(pairs) * 1e6:.2f} "
              f"µs CPU; LeanSender {ours[0] / len(pairs) * 1e6:.2f} µs wall / "
              f"{ours[1] / len(pairs) * 1e6:.2f} µs CPU -> x{base[0] / ours[0]:.1f} wall, "
              f"x{base[1] / ours[1]:.1f} CPU")


if __name__ == "__main__":
    main()
