"""Many streams in one replica: records/s, RSS per stream, and commit cost vs changed streams.

One service (embedded runtime: JSONL input, JSONL outputs, local state folder) holding
``--streams`` streams (default 10,000; say one per merchant segment), each with the demo
config's chain (FixedShare -> OnlinePlatt -> DriftMemory(64, ADWIN)), its own join and
scores. Steps, each timed:

1. build: parse the config and build every stream's chain (RSS before and after);
2. run: ``--records-per-stream`` predictions per stream and their labels (a few seconds of
   event time later), interleaved over all streams, through ``Service.run`` (decode,
   pipeline, adapted/weights outputs, a checkpoint every ``--checkpoint-every`` records):
   records/s and RSS after it, per stream;
3. commits: for k in 1, 10, 100, 1,000, 10,000 (capped at ``--streams``), one more
   prediction on each of k streams, then one checkpoint: its stream records, bytes and
   time. Commit cost should grow with k, not with the number of streams held; a commit
   that the store makes full (every stream, because the incremental ones since the last
   full snapshot outgrew it) is marked;
4. restore: a new service on the same folder restores the latest snapshot (every stream
   read back through its chain).

The Kafka runtime writes the same per-stream records (plus the task's offsets) to its
changelog, one message per changed stream, so its commit bytes follow the same column.
The machine may be shared: say so when quoting the figures.

Run: ``python bench/streams.py [--streams 10000] [--records-per-stream 4]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import random
import tempfile
import time

import yaml

from streamweights.config import parse_config
from streamweights.runtime.service import Service

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("logistic_regression", "naive_bayes", "hoeffding_tree")


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS``), in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def stream_names(count: int) -> list[str]:
    return [f"segment-{n:05d}" for n in range(count)]


def write_input(path: pathlib.Path, names: list[str], per_stream: int, seed: int = 7) -> int:
    """``per_stream`` rounds over every stream: a prediction each, labels 3 s of event
    time later. Returns the number of lines."""
    rng = random.Random(seed)
    records = []
    ts = 1_750_000_000.0
    for round_number in range(per_stream):
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
    path.write_text("\n".join(line for _, _, line in records) + "\n")
    return len(records)


def config_document(folder: pathlib.Path, input_path: pathlib.Path, names: list[str],
                    checkpoint_every: int) -> dict:
    document = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--records-per-stream", type=int, default=4,
                        help="predictions per stream in the run (each with its label)")
    parser.add_argument("--checkpoint-every", type=int, default=20_000)
    args = parser.parse_args()
    names = stream_names(args.streams)
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp:
        folder = pathlib.Path(tmp)
        input_path = folder / "input.jsonl"
        lines = write_input(input_path, names, args.records_per_stream)
        document = config_document(folder, input_path, names, args.checkpoint_every)

        rss_start = rss_bytes()
        started = time.perf_counter()
        config = parse_config(document)
        service = Service(config)
        build_seconds = time.perf_counter() - started
        rss_built = rss_bytes()

        service.restore()
        started, cpu = time.perf_counter(), time.process_time()
        summary = service.run()
        run_seconds, run_cpu = time.perf_counter() - started, time.process_time() - cpu
        rss_run = rss_bytes()
        assert summary["records"] == lines, summary["records"]
        pending = sum(s["pending"] for s in summary["streams"].values())

        print(f"streams held: {args.streams:,}  (one chain each: FixedShare -> OnlinePlatt "
              "-> DriftMemory(64, ADWIN))")
        print(f"build: {build_seconds:.2f} s, RSS {(rss_built - rss_start) / args.streams:,.0f}"
              " B per stream")
        print(f"run: {lines:,} records in {run_seconds:.2f} s = "
              f"{lines / run_seconds:,.0f} records/s ({lines / run_cpu:,.0f} per CPU second; "
              "checkpoints included); RSS "
              f"{(rss_run - rss_start) / args.streams:,.0f} B per stream after it "
              f"({pending:,} predictions pending), {rss_run / 2**20:,.0f} MiB in all")
        print()
        print(f"{'changed':>8} {'records':>8} {'commit bytes':>13} {'bytes/changed':>14} "
              f"{'wall ms':>9} {'CPU ms':>9} {'CPU ms/changed':>15}  kind")
        state = service.state
        sizes = [k for k in (1, 10, 100, 1_000, 10_000) if k <= args.streams]
        if args.streams not in sizes:
            sizes.append(args.streams)
        rng = random.Random(1)
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

        started = time.perf_counter()
        again = Service(parse_config(document))
        again.restore()
        restore_seconds = time.perf_counter() - started
        again.close()
        files = sorted((folder / "state").glob("snapshot-*.snap"))
        print()
        print(f"restore of {args.streams:,} streams (config + chain of {len(files)} file(s), "
              f"{sum(f.stat().st_size for f in files):,} bytes): {restore_seconds:.2f} s")


if __name__ == "__main__":
    main()
