"""A user's own labelled table (CSV, or Parquet with the ``parquet`` extra) as a stream
of rows, read in chunks so that memory stays flat however long the file.

Opening a :class:`Table` reads the header and makes one streaming pass over the label
(and time) columns, so that everything that would make the whole run wrong is an error
at start-up, in one line naming the setting and what to do: a missing column, an empty
file, a label outside ``source.classes``. Everything that spoils
only one row is a :class:`BadRow` the service dead-letters (row number, column, reason),
counted and never dropped silently: a non-numeric, empty or non-finite cell, a row with
the wrong number of cells, a missing label.

Dead-letter reasons (``streamweights_invalid_records_total{reason}``): ``bad_cell``,
``non_finite``, ``missing_label``, ``ragged_row``, ``bad_label_time``.
"""

from __future__ import annotations

import csv
import datetime
import heapq
import itertools
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from streamweights.config import SourceConfig

log = logging.getLogger("streamweights.source")

#: Rows looked at to infer which columns hold numbers (feature columns when
#: ``source.feature_columns`` is not given) and what ``validate`` parses.
SAMPLE_ROWS = 100
#: More distinct labels than this is not a class column (a float target, an id).
MAX_CLASSES = 1_000
#: Rows per Parquet record batch: a few MiB for tens of columns.
PARQUET_BATCH_ROWS = 8_192
#: Rows sorted in memory at a time when a table is not in time order: tens of MiB
#: for tens of columns (a row of text cells is ~100 bytes + ~60 per cell).
SORT_CHUNK_ROWS = 50_000
#: A column with this name is taken as the row id (not a feature) unless
#: ``source.id_column`` says otherwise.
DEFAULT_ID_COLUMN = "id"


def _unpickled(path: str) -> Iterator[tuple[tuple[float, int], int, list[Any]]]:
    with open(path, "rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return


class TableError(ValueError):
    """The table cannot be replayed at all; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class Row:
    """One usable row: features, label as a class index, event and label times."""

    number: int
    id: str | None
    features: dict[str, float]
    label: int
    ts: float | None
    label_ts: float | None


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be used, with why: it becomes a dead-letter record."""

    number: int
    reason: str
    error: str
    raw: bytes
    id: str | None = None


class _CellError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def label_key(value: Any) -> str:
    """The text a label is matched by: ``1``, ``1.0`` and ``"1"`` are the same class;
    other values are compared as their stripped text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer() and "_" not in text:
        return str(int(number))
    return text


def _number(value: Any, column: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _CellError("bad_cell", f"column {column!r} is empty")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _CellError("bad_cell", f"column {column!r} holds {value!r}, not a "
                             "number") from None
    if not math.isfinite(number):
        raise _CellError("non_finite", f"column {column!r} holds {value!r}; features must be "
                         "finite numbers")
    return number


def _time(value: Any, column: str) -> float:
    """Seconds since the epoch from a number of seconds or an ISO 8601 text (naive
    times are UTC), or a Parquet timestamp/date."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, datetime.date):
        moment = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                moment = datetime.datetime.fromisoformat(text)
            except ValueError:
                raise _CellError("bad_cell", f"column {column!r} holds {value!r}, neither "
                                 "seconds nor an ISO 8601 time") from None
        else:
            if not math.isfinite(number):
                raise _CellError("bad_cell", f"column {column!r} holds {value!r}, not a time")
            return number
    else:
        return _number(value, column)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _raw(header: list[str], cells: list[Any]) -> bytes:
    """A bad row as the dead-letter record's text: column -> cell, as read."""
    return orjson.dumps(dict(zip(header, cells, strict=False)) if len(cells) <= len(header)
                        else {"cells": cells}, default=str)


def _csv_cells(path: str) -> Iterator[tuple[int, list[Any]]]:
    """(data row number, cells) of a CSV file, header first as row 0. The csv module
    reads the file in buffered chunks, one row at a time."""
    # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first name
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        reader = csv.reader(handle)
        number = -1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:  # a NUL byte, an over-long field: one bad row
                number += 1
                if number == 0:
                    raise TableError(f"source.path: cannot read the header of {path} "
                                     f"({error}); is it a CSV file?") from None
                yield number, [_MalformedRow(str(error), reader.line_num)]
                continue
            if not cells:  # a blank line holds no row
                continue
            number += 1
            yield number, cells


def _parquet_cells(path: str) -> Iterator[tuple[int, list[Any]]]:
    """(data row number, cells) of a Parquet file, header first as row 0, read one
    record batch at a time."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise TableError(f"source.path: {path} is Parquet, which needs pyarrow; pip install "
                         "'streamweights[parquet]'") from None
    try:
        handle = parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own types for a bad file
        raise TableError(f"source.path: cannot read {path} as Parquet ({error})") from None
    with handle:
        names = list(handle.schema_arrow.names)
        yield 0, names
        number = 0
        for batch in handle.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for cells in zip(*columns, strict=True):
                number += 1
                yield number, list(cells)


@dataclass(frozen=True, slots=True)
class _MalformedRow:
    error: str
    line: int


class Table:
    """A labelled table opened for replay: its columns resolved and checked, its classes
    known, its rows streamed by :meth:`rows` (in time order: a file that is not is sorted
on disk by :meth:`_sorted_cells`)."""

    def __init__(self, config: SourceConfig) -> None:
        assert config.path is not None  # the config requires it
        self.config = config
        self.path = config.path
        self.parquet = (config.kind == "parquet" or self.path.endswith(".parquet")
                        or self.path.endswith(".pq"))
        try:
            open(self.path, "rb").close()
        except OSError as error:
            raise TableError(f"source.path: cannot read {self.path} ({error.strerror})") \
                from None
        cells = self._cells()
        try:
            _, header = next(cells)
        except StopIteration:
            raise TableError(f"source.path: {self.path} is empty; it needs a header line and "
                             "data rows") from None
        finally:
            cells.close()
        self.header = [str(c).strip() for c in header]
        self._resolve_columns()
        self._scan()

    # -- start-up checks --------------------------------------------------------------
    def _cells(self) -> Iterator[tuple[int, list[Any]]]:
        return _parquet_cells(self.path) if self.parquet else _csv_cells(self.path)

    def _column(self, setting: str, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.header:
            raise TableError(f"source.{setting}: column {name!r} is not in {self.path} "
                             f"(columns: {', '.join(self.header)}); fix the name or the header")
        return self.header.index(name)

    def _resolve_columns(self) -> None:
        config = self.config
        duplicates = sorted({c for c in self.header if self.header.count(c) > 1})
        if duplicates:
            raise TableError(f"source.path: {self.path} has column {duplicates[0]!r} twice; "
                             "give every column its own name")
        self.label_index = self._column("label_column", config.label_column)
        assert self.label_index is not None
        self.ts_index = self._column("timestamp_column", config.timestamp_column)
        self.label_ts_index = self._column("label_time_column", config.label_time_column)
        id_column = config.id_column
        if id_column is None and DEFAULT_ID_COLUMN in self.header:
            id_column = DEFAULT_ID_COLUMN
        self.id_column = id_column
        self.id_index = self._column("id_column", id_column)
        reserved = {config.label_column, config.timestamp_column, config.label_time_column,
                    id_column} - {None}
        if config.feature_columns:
            for name in config.feature_columns:
                self._column("feature_columns", name)
                if name in reserved:
                    raise TableError(f"source.feature_columns: {name!r} is the label, time or "
                                     "id column; remove it from the features")
            self.features = list(config.feature_columns)
            self.not_features: list[str] = []
        else:
            self.features, self.not_features = self._infer_features(reserved)
        if not self.features:
            raise TableError(f"source.feature_columns: {self.path} has no numeric column "
                             "besides the label, time and id columns; list the feature columns")
        self.feature_indexes = [self.header.index(c) for c in self.features]

    def _infer_features(self, reserved: set[str]) -> tuple[list[str], list[str]]:
        """Every column but the label, time and id ones that holds a number in one of
        the first rows; a cell that is not a number later is that row's dead letter, it
        never drops the column."""
        candidates = [c for c in self.header if c not in reserved]
        numeric: set[str] = set()
        cells = self._cells()
        number = 0
        try:
            next(cells)
            for number, row in cells:
                if number > SAMPLE_ROWS:
                    break
                for name, value in zip(self.header, row, strict=False):
                    if name in numeric or name not in candidates:
                        continue
                    try:
                        _number(value, name)
                    except _CellError as error:
                        if error.reason == "non_finite":
                            numeric.add(name)
                        continue
                    numeric.add(name)
        finally:
            cells.close()
        if number == 0:
            raise TableError(f"source.path: {self.path} has a header but no data rows")
        return ([c for c in candidates if c in numeric],
                [c for c in candidates if c not in numeric])

    def _scan(self) -> None:
        """One streaming pass over the label and time columns: classes, time order and
        row count, so that no label is left pending forever and no order is faked."""
        config = self.config
        wanted = None if config.classes is None else {label_key(c): i
                                                      for i, c in enumerate(config.classes)}
        if wanted is not None and len(wanted) != len(config.classes or ()):
            raise TableError("source.classes: two entries name the same class; list each "
                             "class once")
        seen: dict[str, int] = {}
        previous: tuple[float, int] | None = None
        self.in_order = True
        self.rows_total = 0
        cells = self._cells()
        try:
            next(cells)
            for number, row in cells:
                self.rows_total = number
                if len(row) != len(self.header):
                    continue  # a dead letter when streamed
                key = label_key(row[self.label_index])
                if key and key not in seen:
                    if wanted is not None and key not in wanted:
                        raise TableError(
                            f"source.classes: row {number} of {self.path} has label "
                            f"{row[self.label_index]!r}, not one of {list(config.classes or ())}; "
                            "add it to source.classes (and streams[].classes) or fix the row")
                    seen[key] = number
                    if len(seen) > MAX_CLASSES:
                        raise TableError(f"source.label_column: {config.label_column!r} has more "
                                         f"than {MAX_CLASSES} distinct values; is it a class "
                                         "label? (regression from a table is not supported)")
                if self.ts_index is not None:
                    try:
                        ts = _time(row[self.ts_index], config.timestamp_column or "")
                    except _CellError:
                        continue  # a dead letter when streamed
                    if previous is not None and ts < previous[0] and self.in_order:
                        self.in_order = False
                        log.info("source: row %d of %s is earlier than row %d; the rows are "
                                 "sorted by %r on disk, %d at a time, for each replay", number,
                                 self.path, previous[1], config.timestamp_column, SORT_CHUNK_ROWS)
                    previous = (ts, number)
        finally:
            cells.close()
        if self.rows_total == 0:
            raise TableError(f"source.path: {self.path} has a header but no data rows")
        if config.classes is not None:
            self.classes: list[Any] = list(config.classes)
        else:
            keys = list(seen)
            try:
                keys.sort(key=float)
            except ValueError:
                keys.sort()
            self.classes = keys
        if len(self.classes) < 2:
            raise TableError(f"source.label_column: {config.label_column!r} holds a single "
                             f"class ({self.classes!r}) in {self.path}; a classifier needs two")
        self.class_index = {label_key(c): i for i, c in enumerate(self.classes)}

    def describe(self) -> str:
        """One line for the start-up log and ``validate``: rows, columns, classes."""
        text = (f"{self.path}: {self.rows_total:,} rows, label {self.config.label_column!r}, "
                f"classes {self.classes}, {len(self.features)} feature column(s) "
                f"{self.features}")
        if self.id_column:
            text += f", id column {self.id_column!r}"
        if self.not_features:
            text += f"; not used (no number in the first {SAMPLE_ROWS} rows): {self.not_features}"
        return text

    # -- streaming --------------------------------------------------------------------
    def rows(self) -> Iterator[Row | BadRow]:
        """Every data row in file order, usable or not."""
        config = self.config
        header = self.header
        width = len(header)
        cells = self._cells() if self.in_order else self._sorted_cells()
        try:
            next(cells)
            for number, row in cells:
                if len(row) == 1 and isinstance(row[0], _MalformedRow):
                    yield BadRow(number, "ragged_row", f"row {number} (line {row[0].line}): "
                                 f"unreadable ({row[0].error})", b"")
                    continue
                if len(row) != width:
                    yield BadRow(number, "ragged_row", f"row {number}: {len(row)} cells, the "
                                 f"header has {width}; fix the row's quoting or commas",
                                 _raw(header, row))
                    continue
                yield self._row(number, row, config)
        finally:
            cells.close()

    def _sorted_cells(self) -> Iterator[tuple[int, list[Any]]]:
        """The rows in time order (ties and unreadable times: file order; unreadable times
        first, they are dead letters) by an external merge sort: runs of
        ``SORT_CHUNK_ROWS`` rows sorted in memory and pickled to a temporary folder, then
        merged, so memory stays bounded by one run however long the file."""
        column = self.config.timestamp_column or ""
        assert self.ts_index is not None
        index = self.ts_index

        def key(number: int, row: list[Any]) -> tuple[float, int]:
            try:
                return (_time(row[index], column) if len(row) > index else -math.inf, number)
            except _CellError:
                return (-math.inf, number)

        with tempfile.TemporaryDirectory(prefix="streamweights-sort-") as folder:
            runs: list[str] = []
            cells = self._cells()
            try:
                yield next(cells)
                while True:
                    run = sorted(((key(n, row), n, row) for n, row in
                                  itertools.islice(cells, SORT_CHUNK_ROWS)),
                                 key=lambda item: item[0])
                    if not run:
                        break
                    runs.append(os.path.join(folder, f"run-{len(runs):05d}"))
                    with open(runs[-1], "wb") as handle:
                        for item in run:
                            pickle.dump(item, handle, protocol=pickle.HIGHEST_PROTOCOL)
                    del run
            finally:
                cells.close()
            for _, number, row in heapq.merge(*(_unpickled(path) for path in runs),
                                              key=lambda item: item[0]):
                yield number, row

    def _row(self, number: int, row: list[Any], config: SourceConfig) -> Row | BadRow:
        row_id = None
        if self.id_index is not None:
            value = row[self.id_index]
            row_id = "" if value is None else str(value).strip()
            if not row_id:
                return BadRow(number, "bad_cell", f"row {number}: id column "
                              f"{self.id_column!r} is empty", _raw(self.header, row))
        try:
            features = {name: _number(row[i], name)
                        for name, i in zip(self.features, self.feature_indexes, strict=True)}
            ts = None if self.ts_index is None else _time(row[self.ts_index],
                                                          config.timestamp_column or "")
            label_ts = None
            if self.label_ts_index is not None:
                column = config.label_time_column or ""
                try:
                    label_ts = _time(row[self.label_ts_index], column)
                except _CellError as error:
                    raise _CellError("bad_label_time", str(error)) from None
                if ts is not None and label_ts < ts:
                    raise _CellError("bad_label_time", f"column {column!r} ({label_ts}) is "
                                     f"earlier than the event time ({ts})")
        except _CellError as error:
            return BadRow(number, error.reason, f"row {number}: {error}", _raw(self.header, row),
                          row_id)
        key = label_key(row[self.label_index])
        if not key:
            return BadRow(number, "missing_label", f"row {number}: label column "
                          f"{config.label_column!r} is empty", _raw(self.header, row), row_id)
        return Row(number, row_id, features, self.class_index[key], ts, label_ts)
