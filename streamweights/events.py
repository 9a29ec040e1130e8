"""The wire contract: prediction, label, weights and adapted records (``"schema": 1``).

One JSON object per Kafka message or JSONL line (see ``design.md``)::

    prediction: {"schema":1,"stream":"fraud","id":"e-17","ts":1732600000.1,
                 "outputs":{"gbm":[0.1,0.9],"mlp":[0.3,0.7]}, "features":[...optional...]}
    label:      {"schema":1,"stream":"fraud","id":"e-17","ts":1732600123.4,"label":1}
    weights:    {"schema":1,"stream":"fraud","version":42,"ts":...,"ensemble":{...},
                 "calibration":{...},"prior":[...],"drift":{...}}
    adapted:    {"schema":1,"stream":"fraud","id":"e-17","proba":[0.2,0.8],"weights_version":42}

Decoding is strict and total: one orjson parse (no second parser ever reads the text),
and a record that is not valid JSON, not UTF-8 (lone surrogates included), nested past
the parser's limit, comes from a newer schema, lacks a field, has a field of the wrong
type, an unknown field, a duplicate key, NaN / Infinity, a number beyond
:data:`MAX_MAGNITUDE`, or is larger than the size limit raises :class:`RecordError`, a
``ValueError`` whose ``reason`` is a short stable label (used as a metric label and
dead-letter header) and whose message names the field. Nothing else escapes, whatever
the bytes (``tests/test_fuzz.py``, ``bench/fuzz.py``). Encoding is compact JSON via
orjson, chosen because it decodes and encodes these records several times faster than
the standard library (``bench/events.py`` measures both). A well-formed record's checks
run in the native core in one call (``_native.check_record``, a quick path that only ever
accepts); whatever it does not clear goes through the Python validators below, which stay
the reference and give every refusal its reason and message.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from streamweights._native import check_record as _check_record

SCHEMA_VERSION = 1

#: Default upper bound on one encoded record. A prediction for 10 models x 1,000
#: classes at ~20 bytes per number is ~200 KB; 1 MiB (Kafka's default message size)
#: leaves room for features while keeping one bad producer from exhausting memory.
DEFAULT_MAX_RECORD_BYTES = 1 << 20

#: Bound on the magnitude of every model output, feature and label. Far beyond any real
#: score or target, it keeps the arithmetic the adapters do finite: squares of
#: differences (squared loss, Brier, variances) stay below 4e200, their sums over any
#: feasible number of records stay finite, and so do products of three such numbers
#: (1e300 < 1.8e308). Without it, one output above ~1.3e154 overflows the squared loss.
MAX_MAGNITUDE = 1e100


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
    #: A stream whose first stage is a ``Portfolio``: ``{"weights": {candidate: w},
    #: "mean_loss": {candidate: nats}, "labels", "regret", "regret_bound"}``.
    portfolio: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        record = {"schema": SCHEMA_VERSION, "stream": self.stream, "version": self.version,
                  "ts": self.ts, "ensemble": self.ensemble, "calibration": self.calibration,
                  "prior": self.prior, "drift": self.drift}
        if self.artifact is not None:
            record["artifact"] = self.artifact
        if self.conformal is not None:
            record["conformal"] = self.conformal
        if self.portfolio is not None:
            record["portfolio"] = self.portfolio
        return record


Record = Prediction | Label

_COMMON = {"schema", "stream", "id", "ts"}
_PREDICTION_FIELDS = _COMMON | {"outputs", "features"}
_LABEL_FIELDS = _COMMON | {"label"}


def _slot_init(cls: type) -> None:
    """Give a frozen slots dataclass an ``__init__`` that sets each field through its
    slot's descriptor: what the generated one does through ``object.__setattr__``, the
    same object with the same signature and defaults, at about half the cost. A
    prediction, a label and an adapted record are made for every record."""
    parameters, lines = [], []
    namespace: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING:  # not needed so far
            raise TypeError(f"{cls.__name__}.{field.name}: a default factory")
        namespace[f"_set_{field.name}"] = getattr(cls, field.name).__set__
        if field.default is dataclasses.MISSING:
            parameters.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            parameters.append(f"{field.name}=_default_{field.name}")
        lines.append(f"    _set_{field.name}(self, {field.name})")
    exec(f"def __init__(self, {', '.join(parameters)}):\n" + "\n".join(lines), namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]


for _record_type in (Prediction, Label, Adapted):
    _slot_init(_record_type)


def encode(record: Prediction | Label | Adapted | Weights) -> bytes:
    """Compact JSON bytes for one record."""
    return orjson.dumps(record.to_json())


def encode_to_keep(record: Prediction | Label | Adapted | Weights) -> bytes:
    """:func:`encode`, for bytes held a long time (the HTTP view's latest weights of every
    stream): an exact-size copy, since the object orjson returns keeps its ~4 KiB working
    buffer while it lives (4 KiB per stream held, 40 MB at 10,000 streams)."""
    return bytes(memoryview(orjson.dumps(record.to_json())))


def decode(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Record:
    """Decode a prediction or a label (told apart by their fields).

    A well-formed record is validated by the core in one call (``check_record``); anything
    else goes to the Python validators, which raise the usual :class:`RecordError`."""
    if type(raw) is bytes and len(raw) <= max_bytes:  # _as_bytes and _parse, inlined
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise _parse_error(raw, error) from None
    else:
        raw = _as_bytes(raw)
        obj = _parse(raw, max_bytes)
    fields = _check_record(obj, raw, _ANY)
    if fields is not None:
        return Prediction(*fields) if len(fields) == 5 else Label(*fields)
    return _decode_python(obj, raw, _ANY)


def decode_prediction(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Prediction:
    """Decode a record that must be a prediction."""
    raw = _as_bytes(raw)
    obj = _parse(raw, max_bytes)
    fields = _check_record(obj, raw, _PREDICTION)
    if fields is not None:
        return Prediction(*fields)
    return _prediction(_check_schema(obj), raw)


def decode_label(raw: bytes | str, max_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Label:
    """Decode a record that must be a label."""
    raw = _as_bytes(raw)
    obj = _parse(raw, max_bytes)
    fields = _check_record(obj, raw, _LABEL)
    if fields is not None:
        return Label(*fields)
    return _label(_check_schema(obj), raw)


#: ``check_record``'s kinds: decide by the fields, a prediction, a label.
_ANY, _PREDICTION, _LABEL = 0, 1, 2


def _decode_python(obj: Any, raw: bytes, kind: int) -> Record:
    """The Python validators on a parsed record: the error path of the decoders, and the
    oracle the core's quick path is tested against."""
    obj = _check_schema(obj)
    if kind == _PREDICTION:
        return _prediction(obj, raw)
    if kind == _LABEL:
        return _label(obj, raw)
    if "outputs" in obj:
        return _prediction(obj, raw)
    if "label" in obj:
        return _label(obj, raw)
    raise RecordError("missing_field", "record: neither 'outputs' (prediction) nor 'label' "
                      "(label) present")


def _as_bytes(raw: bytes | str) -> bytes:
    """The record as the UTF-8 bytes it is on the wire (a str is encoded, strictly)."""
    if type(raw) is not bytes:
        if isinstance(raw, bytearray | memoryview):
            raw = bytes(raw)
        elif isinstance(raw, str):
            try:  # a str holding a lone surrogate has no UTF-8 form: it cannot be on a wire
                raw = raw.encode("utf-8")
            except UnicodeEncodeError as error:
                raise RecordError("invalid_utf8", f"record: not valid UTF-8 at character "
                                  f"{error.start} (a lone surrogate); send UTF-8 text") from None
        else:
            raise RecordError("wrong_type", f"record: expected bytes or text, got "
                              f"{type(raw).__name__}")
    return raw


def _parse(raw: bytes, max_bytes: int) -> Any:
    """One strict parse: size first, then orjson, whose refusals are sorted into reasons
    without a second parser ever seeing the text."""
    size = len(raw)
    if size > max_bytes:
        raise RecordError("oversized", f"record: {size} bytes exceeds the limit of {max_bytes}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise _parse_error(raw, error) from None


def _check_schema(obj: Any) -> dict[str, Any]:
    """A JSON object of a schema version this build understands."""
    if type(obj) is not dict:
        raise RecordError("wrong_type", f"record: expected a JSON object, got "
                          f"{type(obj).__name__}")
    schema = obj.get("schema")
    if schema is None:
        raise RecordError("missing_field", "schema: missing")
    if type(schema) is not int:
        raise RecordError("wrong_type", f"schema: expected an integer, got {_show(schema)}")
    if schema > SCHEMA_VERSION:
        raise RecordError("schema_version", f"schema: version {schema} is newer than this "
                          f"build understands ({SCHEMA_VERSION}); upgrade streamweights")
    if schema < 1:
        raise RecordError("schema_version", f"schema: unknown version {schema}")
    return obj


#: orjson's refusal messages that get a reason of their own (the rest are malformed JSON).
_PARSE_REASONS = (
    ("UTF-8", "invalid_utf8"), ("surrogate", "invalid_utf8"),
    ("depth limit", "too_deep"), ("infinity when parsed", "out_of_range"),
)
_NON_FINITE_TOKENS = (b"NaN", b"Infinity", b"-Infinity")


def _parse_error(raw: bytes, error: orjson.JSONDecodeError) -> RecordError:
    """Name why orjson refused ``raw``. NaN / Infinity (which Python producers write) are
    recognised by the token where parsing stopped, never by parsing again."""
    message = str(error)
    position = error.pos
    if not raw.isascii():  # orjson counts characters; find the byte offset they end at
        position = len(raw.decode("utf-8", "replace")[:position].encode("utf-8"))
    for start in (position, position - 1):
        if 0 <= start < len(raw) and raw.startswith(_NON_FINITE_TOKENS, start):
            return RecordError("non_finite", f"{_field_at(raw, start)}: not finite (NaN / "
                               f"Infinity at byte {start} is not JSON); send finite numbers")
    for fragment, reason in _PARSE_REASONS:
        if fragment in message:
            if reason == "out_of_range":
                return RecordError(reason, f"{_field_at(raw, position)}: a number too large "
                                   f"for a double at byte {position}; rescale the values")
            return RecordError(reason, f"record: {message}")
    return RecordError("malformed_json", f"record: malformed JSON ({message})")


#: Strings and the structural characters that open, close or name a JSON value.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:]')


def _field_at(raw: bytes, position: int) -> str:
    """The dotted field path of the value at byte ``position`` of a document that parsed
    well up to there: a scan over its strings and brackets (no values are parsed), so
    a refusal can name the field as the validators do."""
    enclosing: list[bytes | None] = []
    key = last = None
    for match in _TOKENS.finditer(raw, 0, position):
        token = match.group()
        first = token[0]
        if first == 0x22:  # "
            last = token
        elif first == 0x3A:  # :
            key = last
        elif first in (0x7B, 0x5B):  # { [
            enclosing.append(key)
            key = None
        elif enclosing:  # } ]
            key = enclosing.pop()
    path = [k for k in (*enclosing, key) if k is not None]
    return ".".join(k[1:-1].decode("utf-8", "replace") for k in path) or "record"


def _show(value: Any) -> str:
    """A refused value for an error message, cut short (a message is not a second copy
    of a megabyte record)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _check_unique_keys(raw: bytes, members: int) -> None:
    """Refuse a record whose text holds more object members than were parsed: orjson keeps
    the last of duplicate keys silently, and a duplicate can hide a value from review.

    After shape validation the only objects are the record and its ``outputs``, so every
    name separator (``:`` outside a string) is one of their ``members``. Counting all colons
    is a ~100 ns ``bytes.count``; only when strings hold colons too are strings blanked
    out first (one regex pass in C)."""
    colons = raw.count(b":")
    if colons != members:
        colons = _STRING.sub(b'""', raw).count(b":")
    if colons != members:
        raise RecordError("duplicate_key", f"record: {colons - members} duplicate key(s); each "
                          "field may appear once")


def _check_fields(obj: dict[str, Any], allowed: set[str]) -> tuple[str, str, float]:
    unknown = obj.keys() - allowed
    if unknown:
        raise RecordError("unknown_field", f"{sorted(unknown)[0][:80]}: unknown field")
    stream = _string(obj, "stream")
    record_id = _string(obj, "id")
    ts = obj.get("ts")
    if ts is None:
        raise RecordError("missing_field", "ts: missing")
    if type(ts) not in (int, float):
        raise RecordError("wrong_type", f"ts: expected a number, got {_show(ts)}")
    if not math.isfinite(ts):  # unreachable through orjson; kept for hand-built objects
        raise RecordError("non_finite", f"ts: not finite ({ts})")
    return stream, record_id, float(ts)


def _string(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise RecordError("missing_field", f"{name}: missing")
    if type(value) is not str or not value:
        raise RecordError("wrong_type", f"{name}: expected a non-empty string, got "
                          f"{_show(value)}")
    return value


def _prediction(obj: dict[str, Any], raw: bytes) -> Prediction:
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
    _check_unique_keys(raw, len(obj) + len(outputs))
    return Prediction(stream, record_id, ts, outputs, features)


def _label(obj: dict[str, Any], raw: bytes) -> Label:
    stream, record_id, ts = _check_fields(obj, _LABEL_FIELDS)
    label = obj.get("label")
    if label is None:
        raise RecordError("missing_field", "label: missing")
    if type(label) not in (int, float):
        raise RecordError("wrong_type", f"label: expected a number, got {_show(label)}")
    if not -MAX_MAGNITUDE <= label <= MAX_MAGNITUDE:
        raise _range_error("label", label)
    _check_unique_keys(raw, len(obj))
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
    low, high = -MAX_MAGNITUDE, MAX_MAGNITUDE
    for item in items:
        if type(item) not in (int, float):
            raise RecordError("wrong_type", f"{name}: expected numbers, got {_show(item)}")
        if not low <= item <= high:  # also false for NaN
            raise _range_error(name, item)


def _range_error(name: str, value: float) -> RecordError:
    if isinstance(value, float) and not math.isfinite(value):
        return RecordError("non_finite", f"{name}: not finite ({value})")
    return RecordError("out_of_range", f"{name}: {_show(value)} is beyond the contract's bound "
                       f"of +-{MAX_MAGNITUDE:g}; rescale the values")
