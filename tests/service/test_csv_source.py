"""Replaying a user's own labelled CSV through simulated deployed models."""

from __future__ import annotations

import csv
import itertools

from river.datasets import synth

from tests.service.conftest import cli, read_json


def test_csv_file_replays_in_timestamp_order(config_factory, tmp_path):
    """Scenario: a labelled CSV (SEA concept change half-way, rows shuffled but with a
    timestamp column). We expect: the run orders rows by timestamp, trains the three
    deployed models on the first rows, and scores every later row; no dead letters."""
    rows = []
    first = synth.SEA(variant=0, seed=1)
    second = synth.SEA(variant=2, seed=2)
    for t, (x, y) in enumerate(itertools.chain(itertools.islice(first, 3500),
                                               itertools.islice(second, 1500))):
        rows.append({"when": t, **{f"f{k}": v for k, v in x.items()}, "target": int(y)})
    rows = rows[::2] + rows[1::2]
    path = tmp_path / "mine.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    config = config_factory("csv", source={"kind": "csv", "path": str(path),
                                           "label_column": "target", "timestamp_column": "when",
                                           "events": 100000, "stream": "demo"})
    summary_path = config.parent / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_json(summary_path)
    assert summary["invalid"] == {}
    stream = summary["streams"]["demo"]
    assert stream["predictions"] == 5000 - 3000
    assert set(stream["scores"]["models"]) == {"logistic_regression", "naive_bayes",
                                               "hoeffding_tree"}
    assert stream["scores"]["adapted"]["log_loss"] < stream["scores"]["raw_best"]["log_loss"]
