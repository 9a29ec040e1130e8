"""Poison records: counted by reason, dead-lettered with the reason, and harmless."""

from __future__ import annotations

import json
import random

from streamweights.config import SourceConfig
from streamweights.runtime.replay import ReplayStream
from tests.service.conftest import cli, read_json

PREDICTION = {"schema": 1, "stream": "demo", "id": "bad-1", "ts": 1750000100.0,
              "outputs": {"logistic_regression": [0.4, 0.6], "naive_bayes": [0.5, 0.5],
                          "hoeffding_tree": [0.9, 0.1]}}


def _bad_records():
    """(expected reason, raw line) for each kind of poison the issue lists."""

    def variant(**changes):
        record = json.loads(json.dumps(PREDICTION))
        record.update(changes)
        return json.dumps(record)

    nan = json.loads(json.dumps(PREDICTION))
    nan["outputs"]["naive_bayes"] = [float("nan"), 1.0]
    shape = json.loads(json.dumps(PREDICTION))
    shape["outputs"]["naive_bayes"] = [0.2, 0.3, 0.5]
    unknown = json.loads(json.dumps(PREDICTION))
    unknown["outputs"]["gbm"] = [0.5, 0.5]
    missing = json.loads(json.dumps(PREDICTION))
    del missing["id"]
    return [
        ("malformed_json", '{"schema": 1, "stream": "demo", "id": '),
        ("non_finite", json.dumps(nan)),
        ("missing_field", json.dumps(missing)),
        ("wrong_type", variant(ts="yesterday")),
        ("wrong_shape", json.dumps(shape)),
        ("unknown_model", json.dumps(unknown)),
        ("schema_version", variant(schema=2)),
        ("oversized", variant(features=[0.5] * 300_000)),
        ("unknown_stream", variant(stream="fraud")),
        ("unmatched_label", json.dumps({"schema": 1, "stream": "demo", "id": "never-seen",
                                        "ts": 1750000100.0, "label": 1})),
    ]


def test_poison_records_are_dead_lettered_and_change_nothing(config_factory, tmp_path):
    """Scenario: the same replay fed as JSONL twice, once clean and once with every
    kind of bad record interleaved at random places.
    We expect: both runs finish; the dirty run's dead-letter file holds each bad record
    once with its reason and origin; invalid counts by reason match; the stream's
    scores and the published weights equal the clean run's bit for bit."""
    clean_lines = [raw.decode() for _, raw in ReplayStream(SourceConfig(events=3000)).records()]
    bad = _bad_records()
    rng = random.Random(5)
    dirty_lines = list(clean_lines)
    for reason, line in bad:
        dirty_lines.insert(rng.randrange(len(dirty_lines) + 1), line)
        del reason
    runs = {}
    for name, lines in (("clean", clean_lines), ("dirty", dirty_lines)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        config = config_factory(name, source={"kind": "jsonl", "path": str(path)})
        summary = config.parent / "summary.json"
        result = cli("run", "--config", str(config), "--summary", str(summary))
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = (config.parent, read_json(summary))
    clean_folder, clean = runs["clean"]
    dirty_folder, dirty = runs["dirty"]
    assert clean["invalid"] == {}
    assert dirty["invalid"] == {reason: 1 for reason, _ in bad}
    assert dirty["streams"] == clean["streams"]
    assert (dirty_folder / "weights.jsonl").read_bytes() == (
        clean_folder / "weights.jsonl").read_bytes()
    letters = [json.loads(line) for line in
               (dirty_folder / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted(letter["reason"] for letter in letters) == sorted(r for r, _ in bad)
    for letter in letters:
        assert letter["error"] and letter["origin"].startswith("jsonl:")
        assert letter["record"]
    assert not (clean_folder / "dead-letter.jsonl").read_text()
