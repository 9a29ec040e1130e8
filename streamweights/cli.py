"""Command line: ``streamweights run | validate | inspect | scenarios | evaluate | report``."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any

import orjson

from streamweights import __version__
from streamweights.config import TABLE_KINDS, ConfigError, load_config
from streamweights.runtime.exceptions import RuntimeSetupError, SnapshotError
from streamweights.runtime.heap import startup_heap_frozen
from streamweights.runtime.replay import SCENARIOS
from streamweights.runtime.settings_digest import (
    StreamChanges,
    combined,
    compare_streams,
    named,
    removed_only,
    settings_digests,
)
from streamweights.runtime.state_store import LocalStateStore, saved_stream_settings

log = logging.getLogger("streamweights")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": round(record.created, 3), "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage()})


def setup_logging(log_format: str, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               datefmt="%H:%M:%S"))
    root = logging.getLogger("streamweights")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamweights", description="Keep deployed models "
                                     "adapted online: re-weighting, calibration, prior shift, "
                                     "drift-aware memory.")
    parser.add_argument("--version", action="version", version=f"streamweights {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the service")
    run.add_argument("--config", required=True, help="YAML config (e.g. configs/demo.yaml)")
    run.add_argument("--state-dir", help="snapshot folder (overrides state_dir)")
    run.add_argument("--max-records", type=int, metavar="N", help="stop at input position "
                     "N: after the first N input records (lines of a file), counted from the "
                     "start of the input, not of this run, so the same command after a crash "
                     "ends at the same record")
    run.add_argument("--max-events", type=int, metavar="N", help=argparse.SUPPRESS)
    run.add_argument("--fresh-changed-streams", action="store_true",
                     help="at restore, start the streams whose settings changed since the "
                          "snapshot fresh (the others restore); without it such a restore "
                          "is refused, naming them")
    run.add_argument("--drop-removed-streams", action="store_true",
                     help="at restore, delete the saved state of the streams the config no "
                          "longer has (a full snapshot without them; in Kafka mode, "
                          "tombstones in the changelog); without it their state is kept as "
                          "saved, so that putting a stream back resumes it")
    run.add_argument("--summary", help="write the JSON summary here")
    run.add_argument("--http-port", type=int, help="override http.port (0 = any free port)")
    run.add_argument("--no-http", action="store_true", help="do not serve HTTP endpoints")
    run.add_argument("--log-format", choices=("text", "json"), help="override logging.format")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument("--report", metavar="DIR", help="record the run's time series in DIR "
                     "and write DIR/report.html (plots; needs matplotlib)")
    validate = commands.add_parser("validate", help="check a config file and exit")
    validate.add_argument("config")
    inspect = commands.add_parser("inspect", help="describe a state folder's snapshot")
    inspect.add_argument("state_dir", nargs="?", help="the state folder (default: the "
                                                      "config's state_dir)")
    inspect.add_argument("--config", help="also say what a restore under this config would "
                                          "do, stream by stream (exit 1 if it would be "
                                          "refused for changed stream settings, 0 if there "
                                          "is nothing to restore); a Kafka config's "
                                          "changelog topic is read for it")
    commands.add_parser("scenarios", help="list the built-in replay scenarios")
    evaluate = commands.add_parser("evaluate", help="run the evaluation suite: every adapter "
                                   "and river's answers on real and drifting streams")
    evaluate.add_argument("--streams", help="comma-separated stream names (default: all)")
    evaluate.add_argument("--events", type=int, help="at most this many events per stream")
    evaluate.add_argument("--train-window", type=int, help="at most this many training "
                          "examples for the deployed models")
    evaluate.add_argument("--seed", type=int, default=7)
    evaluate.add_argument("--jobs", type=int, default=1, help="streams run in parallel")
    evaluate.add_argument("--replicates", type=int, default=1_000, help="bootstrap replicates")
    evaluate.add_argument("--results", help="write the markdown results page here")
    evaluate.add_argument("--record", metavar="DIR", help="record the default chain's run "
                          "per stream in DIR/STREAM and write its report.html")
    evaluate.add_argument("--list", action="store_true", help="list the suite's streams")
    report = commands.add_parser("report", help="render a recorded run as an HTML page")
    report.add_argument("run_dir", help="a folder written by `run --report` or "
                        "`evaluate --record` (one per stream)")
    report.add_argument("--output", help="the page (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "validate":
            return _validate(args.config)
        if args.command == "inspect":
            return _inspect(args.state_dir, args.config)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "report":
            return _report(args.run_dir, args.output)
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:<20} {scenario.description}")
        return 0
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except (RuntimeSetupError, SnapshotError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _validate(path: str) -> int:
    """Check the config; for a table source also open the file and check its header, the
    label column, the classes (against ``streams[].classes``) and its first rows."""
    from streamweights.runtime.preflight import check_startup

    config = load_config(path)
    try:
        check_startup(config)  # what run's start-up would refuse, without any I/O
    except (ConfigError, RuntimeSetupError, SnapshotError):
        raise
    except Exception as error:  # a constructor's surprise: still one line
        raise ConfigError(f"start-up check failed ({type(error).__name__}: "
                          f"{error})") from None
    source = config.source
    if source.kind not in TABLE_KINDS:
        print(f"{path}: ok ({len(config.streams)} stream(s), source {source.kind})")
        return 0
    from streamweights.runtime.tabular import SAMPLE_ROWS, BadRow, Table

    # check_startup opened the table and matched its classes to the stream; this second
    # look lists what the first rows would dead-letter.
    table = Table(source)
    bad = [row for row in itertools.islice(table.rows(), SAMPLE_ROWS) if isinstance(row, BadRow)]
    print(f"{path}: ok ({len(config.streams)} stream(s), source {source.kind})")
    print(f"  {table.describe()}")
    checked = min(SAMPLE_ROWS, table.rows_total)
    print(f"  first {checked} rows: {checked - len(bad)} usable, {len(bad)} would be "
          "dead letters" + (":" if bad else ""))
    for row in bad[:10]:
        print(f"    {row.reason}: {row.error}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from streamweights.runtime.preflight import check_startup
    from streamweights.runtime.service import Service

    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.http_port is not None:
        overrides["http_port"] = args.http_port
    if args.no_http:
        overrides["http_port"] = None
    if args.log_format:
        overrides["log_format"] = args.log_format
    config = dataclasses.replace(config, **overrides)
    setup_logging(config.log_format, args.verbose)
    if args.max_events is not None:
        if args.max_records is not None:
            raise ConfigError("--max-events is the old name of --max-records; give one")
        log.warning("--max-events is deprecated: it is now --max-records, and counts input "
                    "records from the start of the input (not of this run)")
        args.max_records = args.max_events
    if args.max_records is not None and args.max_records < 1:
        raise ConfigError(f"--max-records: must be >= 1, got {args.max_records}")
    # What validate checks beyond the objects Service builds below: paths, the token
    # (so these are refused with one line, before any log line).
    check_startup(dataclasses.replace(config, state_dir=args.state_dir or config.state_dir),
                  os.environ, objects=False)
    started = time.monotonic()
    # Start-up's objects leave the full scans; the streams built and restored inside
    # join them (runtime/heap.py), so neither is walked by the collector while it runs.
    with startup_heap_frozen() as frozen:
        log.debug("froze %d start-up objects out of garbage collection", frozen)
        try:
            service = Service(config, state_dir=args.state_dir, max_records=args.max_records,
                              fresh_changed_streams=args.fresh_changed_streams,
                              drop_removed_streams=args.drop_removed_streams)
        except OSError as error:  # an output file or folder that cannot be opened: one line
            raise RuntimeSetupError(f"cannot open {error.filename or 'a file'} "
                                    f"({error.strerror or error})") from None
        except (ConfigError, RuntimeSetupError, SnapshotError):
            raise
        except Exception as error:
            if args.verbose:
                raise
            message = " ".join(str(error).split())[:300]
            raise RuntimeSetupError(f"start-up failed ({type(error).__name__}: {message}); "
                                    "--verbose shows the traceback") from None
        service.install_signal_handlers()
        recorder = None
        if args.report:
            from streamweights.evaluation.trace import TraceRecorder

            recorder = TraceRecorder(service.pipeline).install()
        log.info("streamweights %s: source %s, %d stream(s), state in %s", __version__,
                 service.source.name, len(config.streams), service.state_dir)
        try:
            summary = service.run()
        finally:
            service.close()
    elapsed = time.monotonic() - started
    if recorder is not None:
        recorder.save(args.report, meta={"source": service.source.name,
                                         "records_in_run": summary["records"]})
        _report(args.report, None)
    if args.summary:
        path = pathlib.Path(args.summary)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2 |
                                      orjson.OPT_SERIALIZE_NUMPY))
    print(format_summary(summary, elapsed))
    return 0


def format_summary(summary: dict[str, Any], elapsed: float | None = None) -> str:
    """A human-readable table of the run's prequential scores."""
    lines = [f"source {summary['source']}: {summary['records']:,} records"
             + (f" in {elapsed:.1f}s" if elapsed else "")
             + ("" if summary["complete"] else " (stopped before the end)")]
    for name, stream in summary["streams"].items():
        scores = stream["scores"]
        classification = stream["task"] == "classification"
        columns = ("log_loss", "brier", "accuracy", "ece") if classification else ("mse", "mae")
        lines.append("")
        lines.append(f"stream {name}: {stream['predictions']:,} predictions, {stream['labels']:,} "
                     f"labels, {stream['pending']:,} pending, {stream['expired']:,} expired, "
                     f"{stream['drift_events']} drift events, weights v{stream['weights_version']}")
        lines.append(f"  {'forecaster':<34}" + "".join(f"{c:>10}" for c in columns))
        rows = [(f"raw {m}", s) for m, s in scores["models"].items()]
        if scores["raw_best"]:
            rows.append((f"raw best ({scores['raw_best']['model']})", scores["raw_best"]))
        rows.append(("adapted", scores["adapted"]))
        for label, values in rows:
            lines.append(f"  {label:<34}" + "".join(f"{values[c]:>10.4f}" for c in columns))
        if scores["raw_best"] and classification:
            best = scores["raw_best"]
            adapted = scores["adapted"]
            ratio = adapted["log_loss"] / max(best["log_loss"], 1e-12)  # 0 with no labels
            lines.append(f"  adapted / raw best: log-loss x{ratio:.3f}, "
                         f"ECE x{adapted['ece'] / max(best['ece'], 1e-12):.3f}")
        weights = (stream.get("weights") or {}).get("ensemble") or {}
        if weights:
            lines.append("  ensemble weights: " + ", ".join(f"{m} {w:.3f}"
                                                            for m, w in weights.items()))
    if summary["invalid"]:
        lines.append("")
        lines.append("dead letters: " + ", ".join(f"{r} {n}" for r, n in
                                                  sorted(summary["invalid"].items())))
    return "\n".join(lines)


def _evaluate(args: argparse.Namespace) -> int:
    from streamweights.evaluation.command import evaluate
    from streamweights.evaluation.streams import suite_streams

    if args.list:
        for stream in suite_streams():
            print(f"{stream.name:<22} {stream.kind:<9} {stream.task:<14} {stream.drift:<24} "
                  f"{stream.description}")
        return 0
    for option in ("events", "train_window", "jobs", "replicates"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ConfigError(f"--{option.replace('_', '-')}: must be >= 1, got {value}")
    names = [n.strip() for n in args.streams.split(",") if n.strip()] if args.streams else None
    try:
        evaluate(names, events=args.events, train_window=args.train_window, seed=args.seed,
                 jobs=args.jobs, replicates=args.replicates, results_path=args.results,
                 record_dir=args.record)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _report(run_dir: str, output: str | None) -> int:
    try:
        from streamweights.report import build_report
    except ImportError as error:
        print(f"error: the report needs matplotlib ({error}); pip install "
              "'streamweights[report]'", file=sys.stderr)
        return 1
    try:
        page, plots = build_report(run_dir, output)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {page} ({sum(len(p) for p in plots.values())} plots)")
    return 0


def _inspect(state_dir: str | None, config_path: str | None = None) -> int:
    if state_dir is None:
        if config_path is None:
            print("inspect: give a state folder, or --config", file=sys.stderr)
            return 2
        config = load_config(config_path)
        if config.source.kind == "kafka":
            return _kafka_restore_plan(config, config_path)
        state_dir = config.state_dir
    store = LocalStateStore(state_dir)
    for seq, path in store.snapshots():  # each file verified; nothing is changed
        try:
            found = store.read(path)
            records = found.get("stream_records")
            segments = found.get("segment_records") or ()
            print(f"{path.name}: intact" + ("" if records is None else
                  f" ({len(records):,} stream record(s), {len(segments):,} join "
                  "segment(s), " + (
                      "full)" if found["base"] == seq else f"builds on {found['base']})")))
        except SnapshotError as error:
            print(f"{path.name}: {error}")
    snapshot = store.load()
    if snapshot is None:
        if config_path is not None:  # (the question is whether a restore is refused)
            print(f"{state_dir}: no snapshot (a first start: every stream starts fresh)")
            return 0
        print(f"{state_dir}: no snapshot")
        return 1
    print(f"{state_dir}: snapshot format {snapshot['format']}, source {snapshot['source']}, "
          f"next input position {snapshot['position']}, {snapshot['records_seen']:,} records "
          f"seen{' (input exhausted)' if snapshot.get('exhausted') else ''}")
    if "input" in snapshot:
        print(f"  a restore first checks that the source file still starts with the "
              f"{snapshot['input']['bytes']:,} bytes read (CRC-32 "
              f"{snapshot['input']['crc32']:08x})")
    if "replay_from" in snapshot:
        print(f"  spread checkpoints left streams unwritten: a restore replays input positions "
              f"{snapshot['replay_from']} to {snapshot['position'] - 1} into them (the figures "
              "below are each stream's as its newest record holds them)")
    for name, stream in snapshot["pipeline"]["streams"].items():
        weights = stream["latest_weights"] or {}
        print(f"  stream {name}: {stream['predictions']:,} predictions, {stream['labels']:,} "
              f"labels, {len(stream['join']['entries']):,} pending, weights "
              f"v{stream['weights_version']}, {stream['drift_total']} drift events")
        for model, weight in (weights.get("ensemble") or {}).items():
            print(f"    {model:<24} {weight:.4f}")
    if snapshot["pipeline"]["invalid"]:
        print("  dead letters: " + ", ".join(f"{r} {n}" for r, n in
                                             sorted(snapshot["pipeline"]["invalid"].items())))
    if snapshot.get("kept"):
        print(f"  kept as saved, not restored (no longer in the config when it was "
              f"written): {named(snapshot['kept'], shown=len(snapshot['kept']))}")
    return 0 if config_path is None else _restore_plan(snapshot, config_path)


def _restore_plan(snapshot: dict[str, Any], config_path: str) -> int:
    """Print what a restore of ``snapshot`` under the config at ``config_path`` would do
    with each stream (``runtime.settings_digest``); 1 if it would be refused."""
    streams = load_config(config_path).streams
    digests = settings_digests(streams)
    changes = compare_streams(digests, saved_stream_settings(snapshot),
                              [stream.name for stream in streams])
    return _print_plan(config_path, len(streams),
                       removed_only(changes) if digests.match(snapshot) else changes)


def _kafka_restore_plan(config: Any, config_path: str) -> int:
    """:func:`_restore_plan` for a Kafka-mode config: each task's records in the
    changelog topic against the config's streams of that task."""
    from streamweights.runtime.kafka_runtime import read_changelog, task_of

    reader = read_changelog(config.kafka)
    if not reader.partitions:
        print(f"kafka.changelog_topic {config.kafka.changelog_topic}: no such topic (a first "
              "start: every stream starts fresh)")
        return 0
    digests = settings_digests(config.streams)
    held: dict[int, list[str]] = {}
    for stream in config.streams:
        held.setdefault(task_of(stream.name, len(reader.partitions)), []).append(stream.name)
    parts = []
    saved_tasks = reader.stream_settings()
    for number, (meta, saved) in sorted(saved_tasks.items()):
        changes = compare_streams(digests, saved, held.get(number, ()))
        parts.append(removed_only(changes) if digests.match(meta) else changes)
    unsaved = sum(len(names) for number, names in held.items() if number not in saved_tasks)
    print(f"kafka.changelog_topic {config.kafka.changelog_topic}: "
          f"{len(reader.partitions):,} task(s), {len(saved_tasks):,} with records"
          + (f" (the {unsaved:,} stream(s) of the others start fresh)" if unsaved else ""))
    return _print_plan(config_path, len(config.streams) - unsaved, combined(parts))


def _print_plan(config_path: str, streams: int, changes: StreamChanges) -> int:
    """Print a restore plan: every stream restored, or what differs; 1 if the restore
    would be refused (streams whose settings changed)."""
    if not (changes.added or changes.changed or changes.removed):
        print(f"under {config_path}: " + (
            f"the same stream settings; a restore restores all {streams:,} stream(s) it "
            "has records of" if streams else "nothing to restore"))
        return 0
    restored = streams - len(changes.added) - len(changes.changed)
    print(f"under {config_path}: a restore restores {restored:,} stream(s) as saved")
    for label, found in (("added (start fresh)", changes.added),
                         ("removed (kept as saved, not restored; run --drop-removed-streams "
                          "deletes them)", changes.removed),
                         ("changed (refused without --fresh-changed-streams, which starts "
                          "them fresh)", changes.changed)):
        if found:
            print(f"  {label}: {named(found, shown=20)}")
    if changes.unrecorded:
        print(f"  of the changed, saved by a release that recorded no per-stream settings: "
              f"{named(changes.unrecorded, shown=20)}")
    return 1 if changes.changed else 0
