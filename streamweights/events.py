"""The wire contract: prediction, label, weights and adapted records (``"schema": 1``).

One JSON object per Kafka message or JSONL line (see ``design.md``)::

    prediction: {"schema":1,"stream":"fraud","id":"e-17","ts":1732600000.1,
                 "outputs":{"gbm":[0.1,0.9],"mlp":[0.3,0.7]}, "features":[...optional...]}
    label:      {"schema":1,"stream":"fraud","id":"e-17","ts":1732600123.4,"label":1}
    weights:    {"schema":1,"stream":"fraud","version":42,"ts":...,"ensemble":{...},
                 "calibration":{...},"prior":[...],"drift":{...}}
    adapted:    {"schema":1,"stream":"fraud","id":"e-17","proba":[0.2,0.8],"weights_version":42}

Decoding is strict: a record that is not valid JSON, comes from a newer schema, lacks a
field, has a field of the wrong type, an unknown field, a non-finite number, or is
larger than the size limit raises :class:`RecordError`, a ``ValueError`` whose
``reason`` is a short stable label (used as a metric label and dead-letter header) and
whose message names the field. Encoding is compact JSON via orjson, chosen because it
decodes and encodes these records several times faster than the standard library
(``bench/events.py`` measures both).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = 1

#: Default upper bound on one encoded record. A prediction for 10 models x 1,000
#: classes at ~20 bytes per number is ~200 KB; 1 MiB (Kafka's default message size)
#: leaves room for features while keeping one bad producer from exhausting memory.
DEFAULT_MAX_RECORD_BYTES = 1 << 20


class RecordError(ValueError):
    """A record that breaks the wire contract. ``reason`` is a stable short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the deployed models said about one request."""

    stream: str
    id: str
    ts: float
    outputs: dict[str, Any]
    features: list[float] | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"schema": SCHEMA_VERSION, "stream": self.stream, "id": self.id, "ts": self.ts,
                  "outputs": self.outputs}
        if self.features is not None:
            record["features"] = self.features
        return record


@dataclass(frozen=True, slots=True)
class Label:
    """What actually happened for a request, joined to its prediction by ``id``."""

    stream: str
    id: str
    ts: float
    label: int | float

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "stream": self.stream, "id": self.id, "ts": self.ts,
                "label": self.label}


@dataclass(frozen=True, slots=True)
class Adapted:
    """The adapted prediction published for a request."""

    stream: str
    id: str
    ts: float
    proba: list[float] | None
    value: float | None
    weights_version: int
    #: Conformal prediction sets per miscoverage level (``{"0.1": [1], ...}``, class
    #: indices) or intervals (``{"0.1": [lo, hi]}``, ``null`` for an unbounded end);
    #: present only on streams with a ``conformal:`` block.
    sets: dict[str, list[int]] | None = None
    intervals: dict[str, list[float | None]] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"schema": SCHEMA_VERSION, "stream": self.stream, "id": self.id,
                                  "ts": self.ts}
        if self.proba is not None:
            record["proba"] = self.proba
        else:
            record["value"] = self.value
        if self.sets is not None:
            record["sets"] = self.sets
        if self.intervals is not None:
            record["intervals"] = self.intervals
        record["weights_version"] = self.weights_version
        return record


@dataclass(frozen=True, slots=True)
class Weights:
    """A published version of a stream's adapted weights."""

    stream: str
    version: int
    ts: float
    ensemble: dict[str, float]
    calibration: dict[str, Any]
    prior: list[float] | None
    drift: dict[str, Any]
    #: A torch stream's latest exported weights file: ``{"version", "digest", "location",
    #: "format", "bytes"}`` (never the tensors); absent for other streams.
    artifact: dict[str, Any] | None = None
    #: A stream with a ``conformal:`` block: the method and the score threshold served
    #: now per level (``{"method": "dtaci", "thresholds": {"0.1": 0.83}, ...}``).
    conformal: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"schema": SCHEMA_VERSION, "stream": self.stream, "version": self.version,
                  "ts": self.ts, "ensemble": self.ensemble, "calibration": self.calibration,
                  "prior": self.prior, "drift": self.drift}
        if self.artifact is not None:
            record["artifact"] = self.artifact
        if self.conformal is not None:
            record["conformal"] = self.conformal
        return record


Record = Prediction | Label

_COMMON = {"schema", "stream", "id", "ts"}
_PREDICTION_FIELDS = _COMMON | {"outputs", "features"}
_LABEL_FIELDS = _COMMON | {"label"}


def encode(record: Prediction | Label | Adapted | Weights) -> bytes:
    """Compact JSON bytes for one record."""
    return orjson.dumps(record.to_json())


def decode(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Record:
    """Decode a prediction or a label (told apart by their fields)."""
    obj = _load(raw, max_bytes)
    if "outputs" in obj:
        return _prediction(obj)
    if "label" in obj:
        return _label(obj)
    raise RecordError("missing_field", "record: neither 'outputs' (prediction) nor 'label' "
                      "(label) present")


def decode_prediction(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Prediction:
    """Decode a record that must be a prediction."""
    return _prediction(_load(raw, max_bytes))


def decode_label(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Label:
    """Decode a record that must be a label."""
    return _label(_load(raw, max_bytes))


def _load(raw: bytes | str, max_bytes: int) -> dict[str, Any]:
    # The limit is in bytes: a str is measured as the UTF-8 it would be on the wire.
    size = len(raw) if isinstance(raw, bytes | bytearray) else len(raw.encode("utf-8"))
    if size > max_bytes:
        raise RecordError("oversized", f"record: {size} bytes exceeds the limit of {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        obj = _load_non_finite(raw)
        if obj is None:
            raise RecordError("malformed_json", f"record: malformed JSON ({error})") from None
    if not isinstance(obj, dict):
        raise RecordError("wrong_type", f"record: expected a JSON object, got "
                          f"{type(obj).__name__}")
    schema = obj.get("schema")
    if schema is None:
        raise RecordError("missing_field", "schema: missing")
    if type(schema) is not int:
        raise RecordError("wrong_type", f"schema: expected an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise RecordError("schema_version", f"schema: version {schema} is newer than this "
                          f"build understands ({SCHEMA_VERSION}); upgrade streamweights")
    if schema < 1:
        raise RecordError("schema_version", f"schema: unknown version {schema}")
    return obj


def _load_non_finite(raw: bytes | str) -> Any:
    """Producers in Python write NaN / Infinity, which strict JSON (orjson) refuses. Parse
    those with the lenient standard library so the error names the field that held them;
    anything else that failed stays malformed."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if "NaN" not in text and "Infinity" not in text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _check_fields(obj: dict[str, Any], allowed: set[str]) -> tuple[str, str, float]:
    unknown = obj.keys() - allowed
    if unknown:
        raise RecordError("unknown_field", f"{sorted(unknown)[0]}: unknown field")
    stream = _string(obj, "stream")
    record_id = _string(obj, "id")
    ts = obj.get("ts")
    if ts is None:
        raise RecordError("missing_field", "ts: missing")
    if type(ts) not in (int, float):
        raise RecordError("wrong_type", f"ts: expected a number, got {ts!r}")
    if not math.isfinite(ts):
        raise RecordError("non_finite", f"ts: not finite ({ts})")
    return stream, record_id, float(ts)


def _string(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise RecordError("missing_field", f"{name}: missing")
    if type(value) is not str or not value:
        raise RecordError("wrong_type", f"{name}: expected a non-empty string, got {value!r}")
    return value


def _prediction(obj: dict[str, Any]) -> Prediction:
    stream, record_id, ts = _check_fields(obj, _PREDICTION_FIELDS)
    outputs = obj.get("outputs")
    if outputs is None:
        raise RecordError("missing_field", "outputs: missing")
    features = obj.get("features")
    # A stream whose only model is a torch model run by the service sends its input as
    # features and no outputs.
    if type(outputs) is not dict or (not outputs and features is None):
        raise RecordError("wrong_type", "outputs: expected a non-empty object of model outputs")
    for model, value in outputs.items():
        _numbers(value, f"outputs.{model}", allow_scalar=True)
    if features is not None:
        _numbers(features, "features", allow_scalar=False)
    return Prediction(stream, record_id, ts, outputs, features)


def _label(obj: dict[str, Any]) -> Label:
    stream, record_id, ts = _check_fields(obj, _LABEL_FIELDS)
    label = obj.get("label")
    if label is None:
        raise RecordError("missing_field", "label: missing")
    if type(label) not in (int, float):
        raise RecordError("wrong_type", f"label: expected a number, got {label!r}")
    if not math.isfinite(label):
        raise RecordError("non_finite", f"label: not finite ({label})")
    return Label(stream, record_id, ts, label)


def _numbers(value: Any, name: str, allow_scalar: bool) -> None:
    if type(value) in (int, float):
        if not allow_scalar:
            raise RecordError("wrong_type", f"{name}: expected a list of numbers")
        items = (value,)
    elif type(value) is list and value:
        items = value
    else:
        raise RecordError("wrong_type", f"{name}: expected a number or a non-empty list of "
                          f"numbers, got {type(value).__name__}")
    for item in items:
        if type(item) not in (int, float):
            raise RecordError("wrong_type", f"{name}: expected numbers, got {item!r}")
        if not math.isfinite(item):
            raise RecordError("non_finite", f"{name}: not finite ({item})")
