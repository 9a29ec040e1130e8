"""Replaying a user's own labelled CSV (or Parquet) file through simulated deployed models:
true numbers, or a clear error, never silent loss."""

from __future__ import annotations

import csv
import itertools
import json
import pathlib
import random
import re

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from river.datasets import synth

from streamweights.config import SourceConfig
from streamweights.runtime import tabular
from streamweights.runtime.replay import Rejected, ReplayStream
from streamweights.runtime.tabular import Table, TableError
from tests.service.conftest import cli, read_json, start_cli

MODELS = ["logistic_regression", "naive_bayes", "hoeffding_tree"]


def sea_rows(n: int, *, seed: int = 1, label=int, change_at: int | None = None) -> list[dict]:
    """``n`` SEA rows in time order (``when`` = row index), optionally changing concept."""
    first = synth.SEA(variant=0, seed=seed)
    second = synth.SEA(variant=2, seed=seed + 1)
    cut = n if change_at is None else change_at
    examples = itertools.chain(itertools.islice(first, cut), itertools.islice(second, n - cut))
    return [{"when": t, **{f"f{k}": v for k, v in x.items()}, "target": label(y)}
            for t, (x, y) in enumerate(examples)]


def write_csv(path: pathlib.Path, rows: list[dict], fieldnames: list[str] | None = None) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def replay(path: str, **options) -> tuple[ReplayStream, list]:
    """Every record of a table's replay, decoded; rejected rows stay ``Rejected``."""
    options.setdefault("label_column", "target")
    stream = ReplayStream(SourceConfig(kind=options.pop("kind", "csv"), path=path, **options))
    return stream, [raw if isinstance(raw, Rejected) else orjson.loads(raw)
                    for _, raw in stream.records()]


def predictions(records: list) -> list[dict]:
    return [r for r in records if isinstance(r, dict) and "outputs" in r]


def labels(records: list) -> list[dict]:
    return [r for r in records if isinstance(r, dict) and "label" in r]


def table_config(config_factory, name: str, source: dict, classes: int = 2) -> pathlib.Path:
    """The demo config with a table source (and ``classes`` on its stream)."""
    path = config_factory(name, source={"stream": "demo", "label_column": "target",
                                        "kind": "csv", **source})
    document = yaml.safe_load(path.read_text())
    document["streams"][0]["classes"] = classes
    if classes != 2:  # Platt scaling is binary
        document["streams"][0]["adapters"] = [{"type": "FixedShare", "share": 0.01},
                                              {"type": "OnlineTemperature"}]
    path.write_text(yaml.safe_dump(document))
    return path


def one_line_error(result) -> str:
    """A start-up error: non-zero exit, one line on stderr besides the (JSON) log lines,
    no traceback."""
    assert result.returncode != 0, result.stdout[-1000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith('{"ts"')]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_csv_file_replays_in_timestamp_order(config_factory, tmp_path):
    """Scenario: a labelled CSV (SEA concept change at row 3,500), rows shuffled but with
    a timestamp column. We expect: the rows are replayed in time order, the three deployed
    models train on the first 3,000, every later row is scored, no dead letters, and the
    adapted mixture beats the best raw model."""
    rows = sea_rows(5000, change_at=3500)
    path = write_csv(tmp_path / "mine.csv", rows[::2] + rows[1::2])
    config = table_config(config_factory, "csv", {"path": path, "timestamp_column": "when"})
    summary_path = config.parent / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_json(summary_path)
    assert summary["invalid"] == {}
    stream = summary["streams"]["demo"]
    assert stream["predictions"] == 5000 - 3000
    assert stream["labels"] == 5000 - 3000
    assert set(stream["scores"]["models"]) == set(MODELS)
    assert stream["scores"]["adapted"]["log_loss"] < stream["scores"]["raw_best"]["log_loss"]
    # the start-up log names the columns it uses
    assert "feature column(s) ['f0', 'f1', 'f2']" in result.stderr


@pytest.mark.parametrize("label", [int, lambda y: "yes" if y else "no"], ids=["digits", "words"])
def test_logistic_regression_learns_on_text_labels(tmp_path, label):
    """Scenario: labels read from a CSV are text ('0'/'1', 'no'/'yes'). We expect: the
    logistic-regression model is trained on the configured classes, so its outputs vary
    and are accurate -- before, river read '0' as True and every output was 0.5."""
    path = write_csv(tmp_path / "labels.csv", sea_rows(5000, label=label))
    stream, records = replay(path)
    outputs = predictions(records)
    lr = [r["outputs"]["logistic_regression"] for r in outputs]
    assert len({round(p[1], 3) for p in lr}) > 100
    truth = {r["id"]: r["label"] for r in labels(records)}
    assert len(outputs) == 2000 and len(truth) == 2000  # every label kept
    accuracy = sum((p[1] > 0.5) == (truth[r["id"]] == 1) for p, r in zip(lr, outputs,
                                                                          strict=True)) / 2000
    assert accuracy > 0.85
    assert stream.classes == (["0", "1"] if label is int else ["no", "yes"])


def test_three_classes_each_model_answers_for_every_class(tmp_path):
    """Scenario: three text classes. We expect: logistic regression runs one-vs-rest and
    every model's output is a 3-vector that tells the classes apart."""
    rows = [{"a": i % 3 + 0.1 * (i % 7), "b": (i * 7) % 11, "target": "xyz"[i % 3]}
            for i in range(1500)]
    path = write_csv(tmp_path / "three.csv", rows)
    stream, records = replay(path, train_rows=900)
    assert stream.classes == ["x", "y", "z"]
    truth = {r["id"]: r["label"] for r in labels(records)}
    assert sorted(set(truth.values())) == [0, 1, 2]
    for name in MODELS:
        outputs = [r["outputs"][name] for r in predictions(records)]
        assert all(len(p) == 3 for p in outputs)
        right = sum(max(range(3), key=p.__getitem__) == truth[r["id"]]
                    for p, r in zip(outputs, predictions(records), strict=True))
        assert right / len(outputs) > 0.6, name


def test_whole_file_is_replayed_unless_events_is_set(tmp_path, caplog):
    """Scenario: a CSV longer than the built-in scenarios' 60,000 events, with no
    ``source.events``. We expect: every row after the training window is replayed (before,
    the default 60,000 cut it short silently); an explicit ``events`` stops there and
    says so in the log."""
    rows = [{"a": i % 5, "target": i % 2} for i in range(63_100)]
    path = write_csv(tmp_path / "long.csv", rows)
    _, records = replay(path)
    assert len(predictions(records)) == 60_100
    assert len(labels(records)) == 60_100
    with caplog.at_level("INFO", logger="streamweights"):
        _, records = replay(path, events=500)
    assert len(predictions(records)) == 500
    assert "source.events: stopped after 500 events" in caplog.text


def write_bad_cells(path: pathlib.Path) -> str:
    """6,000 clean SEA rows, then spoilt: a word at row 50 (inside the rows that infer
    the feature columns), an empty cell at row 120, NaN and inf at 3,500 / 3,501, a word
    at 5,000, a short row at 5,100 and an empty label at 5,200."""
    rows = sea_rows(6000)
    rows[49]["f1"] = "oops"
    rows[119]["f2"] = ""
    rows[3499]["f0"] = "NaN"
    rows[3500]["f1"] = "inf"
    rows[4999]["f2"] = "n/a"
    rows[5199]["target"] = ""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(rows[0]))
        for number, row in enumerate(rows, start=1):
            values = list(row.values())
            writer.writerow(values[:3] if number == 5100 else values)
    return str(path)


def test_bad_cells_are_dead_letters_with_row_and_column(config_factory, tmp_path):
    """Scenario: a CSV with a non-numeric cell in its first 100 rows, an empty cell, a
    literal NaN and inf, a non-numeric cell at row 5,000, a short row and an empty label.
    We expect: the run completes (exit 0, no traceback); each bad row is one dead-letter
    record naming its row and column, counted by reason; no column is dropped (before, the
    word at row 50 removed column f1 from every row, NaN went into the models, and the
    word at row 5,000 crashed the run)."""
    path = write_bad_cells(tmp_path / "bad.csv")
    table = Table(SourceConfig(kind="csv", path=path, label_column="target",
                               timestamp_column="when"))
    assert table.features == ["f0", "f1", "f2"]
    config = table_config(config_factory, "bad", {"path": path, "timestamp_column": "when"})
    summary_path = config.parent / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = read_json(summary_path)
    assert summary["complete"]
    assert summary["invalid"] == {"bad_cell": 3, "non_finite": 2, "ragged_row": 1,
                                  "missing_label": 1}
    letters = [json.loads(line) for line in
               (config.parent / "dead-letter.jsonl").read_text().splitlines()]
    errors = sorted(letter["error"] for letter in letters)
    assert errors == sorted([
        "row 50: column 'f1' holds 'oops', not a number",
        "row 120: column 'f2' is empty",
        "row 3500: column 'f0' holds 'NaN'; features must be finite numbers",
        "row 3501: column 'f1' holds 'inf'; features must be finite numbers",
        "row 5000: column 'f2' holds 'n/a', not a number",
        "row 5100: 3 cells, the header has 5; fix the row's quoting or commas",
        "row 5200: label column 'target' is empty",
    ])
    assert {letter["id"] for letter in letters} >= {"demo-row50", "demo-row5000"}
    # 6,000 rows - 7 bad - 3,000 training rows
    assert summary["streams"]["demo"]["predictions"] == 6000 - 7 - 3000
    assert summary["streams"]["demo"]["labels"] == 6000 - 7 - 3000


def test_restart_skips_to_the_saved_position_with_rejected_rows(tmp_path):
    """Scenario: a replay with bad rows is resumed from positions inside and after the
    training window. We expect: the same records from there as an uninterrupted replay."""
    path = write_bad_cells(tmp_path / "bad.csv")
    stream = ReplayStream(SourceConfig(kind="csv", path=path, label_column="target",
                                       timestamp_column="when"))
    whole = list(stream.records())
    assert sum(isinstance(raw, Rejected) for _, raw in whole) == 7
    for start in (1, 3, 1500, len(whole) - 5):
        assert list(stream.records(start)) == whole[start:]


def test_class_after_the_training_window_is_not_left_pending(config_factory, tmp_path):
    """Scenario: class 2 first appears at row 4,000, after the 3,000 training rows.
    We expect: the classes come from the whole file, so with ``streams[].classes: 2`` the
    run refuses to start in one line (before: its labels stayed pending forever); with
    ``classes: 3`` every label is joined; with ``source.classes: [0, 1]`` the row is named."""
    rows = sea_rows(5000)
    for row in rows[3999::50]:
        row["target"] = 2
    path = write_csv(tmp_path / "late.csv", rows)
    source = {"path": path, "timestamp_column": "when"}
    line = one_line_error(cli("run", "--config", str(table_config(config_factory, "two",
                                                                  source))))
    assert line.startswith("error: streams[demo].classes: 2, but") and "['0', '1', '2']" in line
    line = one_line_error(cli("run", "--config", str(table_config(
        config_factory, "listed", {**source, "classes": [0, 1]}))))
    assert line.startswith("error: source.classes: row 4000 of") and "'2'" in line
    config = table_config(config_factory, "three", source, classes=3)
    summary_path = config.parent / "summary.json"
    result = cli("run", "--config", str(config), "--summary", str(summary_path))
    assert result.returncode == 0, result.stderr[-2000:]
    stream = read_json(summary_path)["streams"]["demo"]
    assert stream["labels"] == 2000 and stream["pending"] == 0


def test_class_count_disagreeing_with_config_is_a_startup_error(config_factory, tmp_path):
    """Scenario: a two-class CSV with ``streams[].classes: 3``. We expect: exit non-zero
    with one line naming the field (before: exit 0 and a summary of zeros, every record
    dead-lettered)."""
    path = write_csv(tmp_path / "two.csv", sea_rows(3500))
    config = table_config(config_factory, "mismatch", {"path": path}, classes=3)
    line = one_line_error(cli("run", "--config", str(config)))
    assert line.startswith("error: streams[demo].classes: 3, but ") and "set" in line
    line = one_line_error(cli("validate", str(config)))
    assert line.startswith("error: streams[demo].classes: 3")


@pytest.mark.parametrize("case", ["missing_label_column", "empty_file", "header_only",
                                  "missing_file", "feature_not_in_file", "single_class"])
def test_startup_errors_are_one_line_naming_the_field(config_factory, tmp_path, case):
    """Scenario: a CSV that cannot be replayed at all. We expect: ``run`` and ``validate``
    exit non-zero with one line naming the setting and what to do (before: tracebacks for
    several, and ``validate`` said ok without opening the file)."""
    path = tmp_path / "table.csv"
    source: dict = {"path": str(path)}
    expected = {"missing_label_column": "error: source.label_column: column 'target' is not",
                "empty_file": "error: source.path: ",
                "header_only": "error: source.path: ",
                "missing_file": "error: source.path: cannot read",
                "feature_not_in_file": "error: source.feature_columns: column 'f9' is not",
                "single_class": "error: source.label_column: 'target' holds a single class"}
    rows = sea_rows(3200)
    if case == "missing_label_column":
        write_csv(path, [{k: v for k, v in r.items() if k != "target"} for r in rows])
    elif case == "empty_file":
        path.write_text("")
    elif case == "header_only":
        path.write_text("when,f0,target\n")
    elif case == "feature_not_in_file":
        write_csv(path, rows)
        source["feature_columns"] = ["f0", "f9"]
    elif case == "single_class":
        write_csv(path, [{**r, "target": 1} for r in rows])
    config = table_config(config_factory, case, source)
    for command in (["run", "--config", str(config)], ["validate", str(config)]):
        line = one_line_error(cli(*command))
        assert line.startswith(expected[case]), line


def test_validate_opens_the_file_and_checks_the_first_rows(config_factory, tmp_path):
    """Scenario: ``validate`` on a table config. We expect: it names the rows, classes and
    feature columns it found, and the bad rows among the first 100."""
    path = write_bad_cells(tmp_path / "bad.csv")
    config = table_config(config_factory, "validate", {"path": path,
                                                       "timestamp_column": "when"})
    result = cli("validate", str(config))
    assert result.returncode == 0, result.stderr
    assert "6,000 rows, label 'target', classes ['0', '1'], 3 feature column(s)" in result.stdout
    assert "first 100 rows: 99 usable, 1 would be dead letters" in result.stdout
    assert "bad_cell: row 50: column 'f1' holds 'oops', not a number" in result.stdout


def test_id_column_is_an_id_not_a_feature(tmp_path):
    """Scenario: a CSV with an ``id`` column. We expect: it is not a feature, and the
    records carry it as their id (before, it became a feature)."""
    rows = [{"id": f"tx-{i}", **r} for i, r in enumerate(sea_rows(3100))]
    path = write_csv(tmp_path / "ids.csv", rows)
    stream, records = replay(path)
    assert stream.table is not None and stream.table.features == ["when", "f0", "f1", "f2"]
    assert [r["id"] for r in predictions(records)] == [f"tx-{i}" for i in range(3000, 3100)]
    assert Table(SourceConfig(kind="csv", path=path, label_column="target",
                              id_column=None, timestamp_column="when")).features == [
        "f0", "f1", "f2"]


def test_text_columns_are_listed_not_silently_dropped(tmp_path, caplog):
    """Scenario: a CSV with a text column. We expect: the start-up log lists it as not
    used, next to the feature columns it uses."""
    rows = [{"city": "Oslo", **r} for r in sea_rows(3100)]
    path = write_csv(tmp_path / "text.csv", rows)
    with caplog.at_level("INFO", logger="streamweights"):
        replay(path, timestamp_column="when")
    assert "feature column(s) ['f0', 'f1', 'f2']" in caplog.text
    assert "not used (no number in the first 100 rows): ['city']" in caplog.text


def test_event_time_and_label_delay(tmp_path):
    """Scenario: a CSV with ISO 8601 event times and a label-time column. We expect: each
    prediction's ts is its row's time, each label's its label time (column), or ts plus a
    fixed delay, or ts plus an exponential delay with the configured mean."""
    rows = sea_rows(3400)
    for row in rows:
        second = row.pop("when")
        row["at"] = f"2026-01-01T00:{second // 60 % 60:02d}:{second % 60:02d}+00:00" \
            if second < 3600 else ""
        row["labelled_at"] = 1_767_225_600 + second + 30
    path = write_csv(tmp_path / "times.csv", rows)
    base = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    _, records = replay(path, timestamp_column="at", label_delay="column",
                        label_time_column="labelled_at")
    ts = {r["id"]: r["ts"] for r in predictions(records)}
    assert ts["demo-row3001"] == base + 3000
    assert all(r["ts"] == ts[r["id"]] + 30 for r in labels(records))
    _, records = replay(path, timestamp_column="at", label_delay="fixed",
                        label_delay_seconds=5.0)
    assert all(r["ts"] == ts[r["id"]] + 5 for r in labels(records))
    _, records = replay(path, timestamp_column="at", label_delay_seconds=100.0)
    delays = [r["ts"] - ts[r["id"]] for r in labels(records)]
    assert 70 < sum(delays) / len(delays) < 130 and len(set(delays)) > 300
    # merged in event-time order
    times = [r["ts"] for r in records]
    assert times == sorted(times)


def test_parquet_replays_the_same_records_as_csv(tmp_path):
    """Scenario: the same table as CSV and as Parquet (several row groups). We expect:
    byte-identical records -- Parquet is read in record batches through the same rows."""
    rows = sea_rows(4000, change_at=3500)
    rows[3600]["f1"] = float("nan")
    csv_path = write_csv(tmp_path / "t.csv", rows)
    parquet_path = str(tmp_path / "t.parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet_path, row_group_size=700)
    options = {"timestamp_column": "when", "label_delay_seconds": 3.0}
    _, from_csv = replay(csv_path, **options)
    _, from_parquet = replay(parquet_path, kind="parquet", **options)
    assert len(predictions(from_csv)) == 999
    assert predictions(from_parquet) == predictions(from_csv)
    assert labels(from_parquet) == labels(from_csv)
    assert [(i, r.reason, r.id) for i, r in enumerate(from_parquet) if isinstance(r, Rejected)] \
        == [(i, r.reason, r.id) for i, r in enumerate(from_csv) if isinstance(r, Rejected)] \
        == [(1196, "non_finite", "demo-row3601")]


def test_table_errors_name_the_setting(tmp_path):
    """Scenario: a label list naming one class twice. We expect: a TableError naming
    ``source.classes``."""
    path = write_csv(tmp_path / "t.csv", sea_rows(10))
    with pytest.raises(TableError, match=r"^source.classes: two entries"):
        Table(SourceConfig(kind="csv", path=path, label_column="target", classes=(1, "1")))


def test_long_csv_replays_in_flat_memory(config_factory, tmp_path):
    """Scenario: a 300,000-row CSV (an id, a time and four feature columns, a concept
    change half-way) replayed by the full service. We expect: its resident memory after
    all 300,000 rows is within 5% of what it was after 100,000 (before, the whole file
    was loaded first: 337 MiB for 277k rows). RSS is read from /proc at each progress
    line, whose record count (a prediction and a label per row) says where the replay
    is."""
    rng = random.Random(3)
    path = tmp_path / "long.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "when", "a", "b", "c", "d", "target"])
        for i in range(300_000):
            a, b, c, d = (round(rng.gauss(0.0, 1.0), 6) for _ in range(4))
            score = a + (b if i < 150_000 else -b) + 0.3 * c + rng.gauss(0.0, 0.5)
            writer.writerow([f"r{i}", i, a, b, c, d, int(score > 0)])
    config = table_config(config_factory, "long", {"path": str(path),
                                                   "timestamp_column": "when"})
    document = yaml.safe_load(config.read_text())
    document["checkpoint"] = {"every_records": 20_000, "every_seconds": 30}
    config.write_text(yaml.safe_dump(document))
    summary_path = config.parent / "summary.json"
    process = start_cli("run", "--config", str(config), "--summary", str(summary_path))
    samples: list[tuple[int, int]] = []  # (records, RSS in KiB)
    assert process.stderr is not None
    for line in process.stderr:
        match = re.search(rb'"message": "(\d+) records \(', line)
        if match is None:
            continue
        status = pathlib.Path(f"/proc/{process.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
        samples.append((int(match.group(1)), rss))
    assert process.wait(timeout=600) == 0
    summary = read_json(summary_path)
    assert summary["complete"] and summary["invalid"] == {}
    assert summary["streams"]["demo"]["labels"] == 297_000
    at_100k = next(rss for records, rss in samples if records >= 2 * 100_000)
    records_at_end, at_end = samples[-1]
    assert records_at_end >= 2 * 280_000, samples
    print(f"RSS {at_100k / 1024:.1f} MiB after 100k rows, {at_end / 1024:.1f} MiB after "
          f"{records_at_end // 2:,} rows")
    assert at_end <= 1.05 * at_100k, samples


def test_rows_out_of_time_order_are_sorted_on_disk(tmp_path, monkeypatch, caplog):
    """Scenario: the same rows in time order and shuffled (with an unreadable time in
    one), sorted in runs of 700 rows. We expect: the shuffled file replays exactly the
    records of the sorted one, and the log says it sorted."""
    rows = [{"id": f"e{r['when']}", **r} for r in sea_rows(4000)]
    rows[10]["when"] = "soon"
    in_order = write_csv(tmp_path / "sorted.csv", rows)
    shuffled = write_csv(tmp_path / "shuffled.csv", rows[1::3] + rows[0::3] + rows[2::3])
    monkeypatch.setattr(tabular, "SORT_CHUNK_ROWS", 700)
    _, expected = replay(in_order, timestamp_column="when")
    with caplog.at_level("INFO", logger="streamweights"):
        stream, records = replay(shuffled, timestamp_column="when")
    assert stream.table is not None and not stream.table.in_order
    assert "the rows are sorted by 'when' on disk, 700 at a time" in caplog.text
    assert [r for r in records if not isinstance(r, Rejected)] == \
        [r for r in expected if not isinstance(r, Rejected)]
    assert [(r.reason, r.id) for r in records if isinstance(r, Rejected)] == \
        [("bad_cell", "e10")]


def test_stop_and_resume_equals_an_uninterrupted_run(config_factory, tmp_path):
    """Scenario: a shuffled CSV with bad rows is run to ``--max-records 1500`` (a stop
    with a checkpoint, past the training window's dead letters), then resumed on the same
    state folder. We expect: the summary and the weights, adapted and dead-letter files
    equal an uninterrupted run's byte for byte."""
    path = pathlib.Path(write_bad_cells(tmp_path / "bad.csv"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[2::2], *lines[1::2]]) + "\n")
    outputs = {"adapted": "adapted.jsonl", "weights": "weights.jsonl",
               "dead_letter": "dead-letter.jsonl"}
    runs = {}
    for name in ("reference", "resumed"):
        config = table_config(config_factory, name, {"path": str(path),
                                                      "timestamp_column": "when"})
        summary_path = config.parent / "summary.json"
        if name == "resumed":
            first = cli("run", "--config", str(config), "--max-records", "1500")
            assert first.returncode == 0, first.stderr[-2000:]
        result = cli("run", "--config", str(config), "--summary", str(summary_path))
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("restored snapshot" in result.stderr) == (name == "resumed")
        runs[name] = (read_json(summary_path),
                      {k: (config.parent / v).read_bytes() for k, v in outputs.items()})
    assert runs["resumed"][0] == runs["reference"][0]
    assert runs["resumed"][0]["invalid"] == {"bad_cell": 3, "non_finite": 2, "ragged_row": 1,
                                             "missing_label": 1}
    for key in outputs:
        assert runs["resumed"][1][key] == runs["reference"][1][key], key


def test_excel_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    """Scenario: a CSV saved with a UTF-8 byte-order mark (as spreadsheets do). We expect:
    its first column is found by name."""
    path = tmp_path / "bom.csv"
    write_csv(path, sea_rows(3010))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, records = replay(str(path), timestamp_column="when")
    assert len(predictions(records)) == 10


def test_bad_rows_are_counted_in_the_invalid_records_metric(config_factory, tmp_path):
    """Scenario: the service, in-process, on a CSV with bad rows. We expect:
    ``streamweights_invalid_records_total{reason}`` counts them by reason, as for any bad
    record."""
    from prometheus_client import generate_latest

    from streamweights.config import load_config
    from streamweights.runtime.service import Service

    path = write_bad_cells(tmp_path / "bad.csv")
    config = load_config(str(table_config(config_factory, "metric", {
        "path": path, "timestamp_column": "when"})))
    service = Service(config)
    try:
        service.run()
    finally:
        service.close()
    text = generate_latest(service.metrics.registry).decode()
    counts = dict(re.findall(r'streamweights_invalid_records_total\{reason="(\w+)"\} (\S+)',
                             text))
    assert counts == {"bad_cell": "3.0", "non_finite": "2.0", "ragged_row": "1.0",
                      "missing_label": "1.0"}


def test_parquet_timestamps_and_typed_labels(tmp_path):
    """Scenario: a Parquet file whose time column is a timestamp type, labels booleans
    and a null feature cell. We expect: event times from the timestamps, classes
    [False, True] as class indexes 0 and 1, the null cell a ``bad_cell`` dead letter."""
    import datetime as dt

    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = [{"at": start + dt.timedelta(seconds=r["when"]), "f0": r["f0"], "f1": r["f1"],
             "f2": r["f2"], "target": bool(r["target"])} for r in sea_rows(3100)]
    rows[3050]["f2"] = None
    path = str(tmp_path / "typed.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    stream, records = replay(path, kind="parquet", timestamp_column="at")
    assert stream.classes == ["False", "True"]
    outputs = predictions(records)
    assert len(outputs) == 99
    assert outputs[0]["ts"] == start.timestamp() + 3000
    assert {r["label"] for r in labels(records)} == {0, 1}
    assert [(r.reason, r.error) for r in records if isinstance(r, Rejected)] == [
        ("bad_cell", "row 3051: column 'f2' is empty")]


def test_features_ride_along_and_feed_a_feature_correction_stage(tmp_path):
    """Scenario: a SEA table whose concept changes after the models were trained, replayed
    into a chain with a FeatureCorrection stage. We expect: every prediction carries its
    row's features in column order, none is refused, and the stage, learning from the
    features, beats the same chain without it on log-loss after the change."""
    import math

    from streamweights import events
    from streamweights.config import parse_config
    from streamweights.pipeline import Pipeline

    rows = sea_rows(6000, change_at=3500)
    path = write_csv(tmp_path / "sea.csv", rows)
    stream, records = replay(path, train_rows=2000, timestamp_column="when")
    first = predictions(records)[0]
    row = next(r for r in rows if r["when"] == first["ts"])
    assert first["features"] == [float(row[c]) for c in stream.table.features]
    chains = {"plain": [{"type": "FixedShare"}, {"type": "OnlinePlatt"}],
              "features": [{"type": "FixedShare"}, {"type": "OnlinePlatt"},
                           {"type": "FeatureCorrection",
                            "n_features": len(stream.table.features)}]}
    losses = {}
    for name, adapters in chains.items():
        (config,) = parse_config({"streams": [{
            "name": "demo", "classes": 2, "models": MODELS, "adapters": adapters}]}).streams
        pipeline = Pipeline([config])
        served, total, count = {}, 0.0, 0
        for raw in stream.records():
            outcome = pipeline.process(events.decode(raw[1]))
            assert not outcome.dead_letters, outcome.dead_letters[0].error
            if outcome.adapted is not None:
                served[outcome.adapted.id] = (outcome.adapted.proba, outcome.adapted.ts)
        for label in labels(records):
            proba, ts = served[label["id"]]
            if ts >= 3500:
                total -= math.log(max(proba[label["label"]], 1e-15))
                count += 1
        losses[name] = total / count
    assert losses["features"] < 0.97 * losses["plain"], losses
