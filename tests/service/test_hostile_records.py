"""Hostile records (issue 12): each one used to crash the service or poison a stream.
Now each is dead-lettered with its reason, the run ends normally, and every other
record's results equal a run without it."""

from __future__ import annotations

import base64
import json
import random

import pytest
import yaml

from streamweights.config import SourceConfig, load_config
from streamweights.pipeline import Pipeline, StreamPipeline
from streamweights.runtime.replay import ReplayStream
from streamweights.runtime.service import (
    _DRAIN_ENDED,
    _DRAIN_FAILED,
    _DRAIN_GENERAL,
    Service,
)
from tests.service.conftest import cli, read_json

OUTPUTS = ('{"logistic_regression":[0.4,0.6],"naive_bayes":[0.5,0.5],'
           '"hoeffding_tree":[0.9,0.1]}')


def _hostile_classification() -> list[tuple[str, bytes]]:
    """(reason, raw line): each crashed or corrupted the demo stream before the fix."""
    head = '{"schema":1,"stream":"demo",'
    return [
        # NaN sent the text to the standard library: a 400-digit integer raised
        # OverflowError in the finiteness check.
        ("out_of_range", (head + '"id":"h-overflow","ts":1' + "0" * 400 + ',"outputs":'
                          + OUTPUTS + ',"features":[NaN]}').encode()),
        # ... deep nesting raised RecursionError.
        ("too_deep", (head + '"id":"h-deep","outputs":{"naive_bayes":' + "[" * 5000
                      + "]" * 5000 + '},"ts":NaN}').encode()),
        # ... a lone surrogate was accepted in an id and broke the output encoder.
        ("invalid_utf8", (head + '"id":"\\ud800NaN","ts":1750000100.0,"outputs":'
                          + OUTPUTS + "}").encode()),
        # ... bytes that are not UTF-8 were replaced silently and accepted.
        ("invalid_utf8", (head + '"id":"h-').encode() + b"\xff\xfe" + (
            'NaN","ts":1750000100.0,"outputs":' + OUTPUTS + "}").encode()),
        # A duplicate key could hide a value (orjson and json keep the last).
        ("duplicate_key", (head + '"id":"h-dup","ts":"later","ts":1750000100.0,'
                           '"outputs":' + OUTPUTS + "}").encode()),
        # A valid far-future ts expired every pending prediction and froze the stream.
        ("event_time_skew", (head + '"id":"h-future","ts":1e308,"outputs":' + OUTPUTS
                             + "}").encode()),
    ]


def test_hostile_records_are_dead_lettered_and_change_nothing(config_factory, tmp_path):
    """Scenario: the demo replay fed as JSONL, once clean and once with each hostile
    record at a random place.
    We expect: both runs exit 0; each hostile record is in the dead-letter file with its
    reason; the dirty run's summary and weights equal the clean run's byte for byte."""
    clean = [raw for _, raw in ReplayStream(SourceConfig(events=3000)).records()]
    hostile = _hostile_classification()
    rng = random.Random(12)
    dirty = list(clean)
    for _, line in hostile:
        # After the first thousand records, so the stream has a watermark to skew from.
        dirty.insert(rng.randrange(1000, len(dirty)), line)
    runs = {}
    for name, lines in (("clean", clean), ("dirty", dirty)):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        config = config_factory(name, source={"kind": "jsonl", "path": str(path)})
        summary = config.parent / "summary.json"
        result = cli("run", "--config", str(config), "--summary", str(summary))
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = (config.parent, read_json(summary))
    (clean_folder, clean_summary), (dirty_folder, dirty_summary) = runs["clean"], runs["dirty"]
    expected: dict[str, int] = {}
    for reason, _ in hostile:
        expected[reason] = expected.get(reason, 0) + 1
    assert dirty_summary["invalid"] == expected
    assert dirty_summary["streams"] == clean_summary["streams"]
    assert (dirty_folder / "weights.jsonl").read_bytes() == (
        clean_folder / "weights.jsonl").read_bytes()
    assert (dirty_folder / "adapted.jsonl").read_bytes() == (
        clean_folder / "adapted.jsonl").read_bytes()
    letters = [json.loads(line) for line in
               (dirty_folder / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted(letter["reason"] for letter in letters) == sorted(r for r, _ in hostile)
    for letter in letters:
        assert letter["error"] and letter["origin"].startswith("jsonl:") and letter["record"]
    # Bytes that are not UTF-8 are kept as they came (base64) beside the readable text.
    kept = [base64.b64decode(letter["record_base64"]) for letter in letters
            if "record_base64" in letter]
    assert kept == [line for _, line in hostile if b"\xff\xfe" in line]


def _regression_lines(events: int, seed: int) -> list[bytes]:
    """Two regression models on a noisy target; labels arrive three events later."""
    rng = random.Random(seed)
    lines, waiting = [], []
    for i in range(events):
        ts = 1750000000.0 + i
        target = rng.gauss(10.0, 3.0)
        outputs = {"a": target + rng.gauss(0.0, 1.0), "b": target + rng.gauss(0.5, 2.0)}
        lines.append(json.dumps({"schema": 1, "stream": "r", "id": f"r-{i}", "ts": ts,
                                 "outputs": outputs}).encode())
        waiting.append((f"r-{i}", target))
        if len(waiting) > 3:
            rid, value = waiting.pop(0)
            lines.append(json.dumps({"schema": 1, "stream": "r", "id": rid, "ts": ts,
                                     "label": value}).encode())
    return lines


@pytest.mark.parametrize("ensemble", ["FixedShare", "Hedge", "OnlineStacking"])
def test_huge_regression_output_cannot_poison_the_ensemble(ensemble, config_factory,
                                                           tmp_path):
    """Scenario: a regression stream where one prediction holds an output of 2e154 (valid
    JSON, but its squared loss overflows) followed by its label.
    We expect: the run ends normally; the prediction is refused (out_of_range) and its
    label finds nothing waiting; the weights equal a run without either record. Before,
    FixedShare raised ZeroDivisionError on every later label, Hedge ValueError, and
    OnlineStacking's weights all became NaN."""
    streams = [{"name": "r", "task": "regression", "models": ["a", "b"],
                "adapters": [{"type": ensemble}], "publish": {"every_labels": 50}}]
    clean = _regression_lines(400, seed=3)
    hostile = [b'{"schema":1,"stream":"r","id":"huge","ts":1750000100.5,'
               b'"outputs":{"a":2e154,"b":10.0}}',
               b'{"schema":1,"stream":"r","id":"huge","ts":1750000101.5,"label":10.0}']
    at = clean.index(next(line for line in clean if b'"ts": 1750000101.0' in line))
    dirty = clean[:at] + hostile + clean[at:]
    results = {}
    for name, lines in (("clean", clean), ("dirty", dirty)):
        path = tmp_path / f"{ensemble}-{name}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        config = load_config(config_factory(f"{ensemble}-{name}", streams=streams,
                                            source={"kind": "jsonl", "path": str(path)}))
        service = Service(config)
        try:
            summary = service.run()
        finally:
            service.close()
        results[name] = (summary, (tmp_path / f"{ensemble}-{name}" / "weights.jsonl")
                         .read_bytes())
    (clean_summary, clean_weights), (dirty_summary, dirty_weights) = (results["clean"],
                                                                      results["dirty"])
    assert dirty_summary["invalid"] == {"out_of_range": 1, "unmatched_label": 1}
    assert dirty_summary["streams"] == clean_summary["streams"]
    assert dirty_weights == clean_weights
    weights = json.loads(dirty_weights.splitlines()[-1])["ensemble"]
    assert all(value == value for value in weights.values())  # no NaN


def _write_config(config_factory, name, lines, tmp_path):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return config_factory(name, source={"kind": "jsonl", "path": str(path)})


def test_any_exception_on_one_record_is_an_internal_error_dead_letter(
        config_factory, tmp_path, monkeypatch, caplog):
    """Scenario: a fault injected into processing (a stand-in for a bug not yet found)
    raises a KeyError on one label, and one into decoding raises on one line.
    We expect: the run ends normally; each record is dead-lettered as internal_error with
    the exception type, origin and raw bytes, counted, and logged; every other record's
    results equal a run without those two lines."""
    lines = [raw for _, raw in ReplayStream(SourceConfig(events=1500)).records()]
    label_line = next(line for line in lines[800:] if b'"label"' in line)
    poisoned_id = json.loads(label_line)["id"]
    marker = b'{"schema":1,"stream":"demo","id":"decoder-bug"}'
    dirty = [*lines[:900], marker, *lines[900:]]
    without = [line for line in lines if line != label_line]

    real_on_label = StreamPipeline.on_label

    def faulty_on_label(self, label):
        if label.id == poisoned_id:
            raise KeyError("injected")
        return real_on_label(self, label)

    real_record_lane = Pipeline.record_lane

    class FaultyLane:
        """The core's record lane with the same fault: it raises on the label (the loop
        gets the exception from ``drain``, as when the core raises) and hands every other
        record to the general path, one per call."""

        def __init__(self, lane):
            self.lane = lane

        def __getattr__(self, name):  # counting and timing: the real lane's
            return getattr(self.lane, name)

        def drain(self, records, state, adapted, limit, stop, bound, kill_at):
            item = next(records, None)
            if item is None:
                return 0, _DRAIN_ENDED, None, None
            if item[1] == label_line:
                return 0, _DRAIN_FAILED, item, KeyError("injected")
            return 0, _DRAIN_GENERAL, item, None

    def faulty_record_lane(self):
        lane = real_record_lane(self)
        return None if lane is None else FaultyLane(lane)

    from streamweights import events

    real_decode = events.decode

    def faulty_decode(raw, *args, **kwargs):
        if raw == marker:
            raise RecursionError("injected")
        return real_decode(raw, *args, **kwargs)

    summaries = {}
    for name, run_lines in (("without", without), ("dirty", dirty)):
        config = load_config(_write_config(config_factory, name, run_lines, tmp_path))
        with monkeypatch.context() as patch:
            if name == "dirty":
                patch.setattr(StreamPipeline, "on_label", faulty_on_label)
                patch.setattr(Pipeline, "record_lane", faulty_record_lane)
                patch.setattr(events, "decode", faulty_decode)
            service = Service(config)
            try:
                summaries[name] = service.run()
            finally:
                service.close()
            if name == "dirty":
                assert service.metrics.invalid.labels("internal_error")._value.get() == 2
    assert summaries["dirty"]["invalid"] == {"internal_error": 2}
    assert summaries["dirty"]["streams"] == summaries["without"]["streams"]
    folder = tmp_path / "dirty"
    assert (folder / "weights.jsonl").read_bytes() == (tmp_path / "without" /
                                                       "weights.jsonl").read_bytes()
    letters = [json.loads(line) for line in
               (folder / "dead-letter.jsonl").read_text().splitlines()]
    assert [letter["reason"] for letter in letters] == ["internal_error"] * 2
    decode_letter, process_letter = sorted(letters, key=lambda letter: letter["error"])
    assert decode_letter["error"].startswith("decode: RecursionError")
    assert decode_letter["record"] == marker.decode()
    assert process_letter["error"].startswith("process: KeyError")
    assert process_letter["id"] == poisoned_id and process_letter["record"] == label_line.decode()
    assert all(letter["origin"].startswith("jsonl:") for letter in letters)
    assert sum("internal error" in r.getMessage() for r in caplog.records) == 2


def test_max_event_time_skew_is_configurable(config_factory, tmp_path):
    """A record further ahead than ``join.max_event_time_skew_seconds`` is refused;
    the setting is read from the stream's join block."""
    document = yaml.safe_load(config_factory("skew").read_text())
    document["streams"][0]["join"]["max_event_time_skew_seconds"] = 5
    path = tmp_path / "skew" / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    config = load_config(path)
    assert config.streams[0].max_event_time_skew_seconds == 5.0
