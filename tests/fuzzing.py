"""Shared pieces of the fuzzing (``tests/test_fuzz.py`` with hypothesis, bounded for CI;
``bench/fuzz.py`` for the long run): valid records to start from, byte mutations that
aim at the decoder's edges, the contract an accepted record must satisfy (checked
against an independent parser), and the pipeline's invariants."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from streamweights import events
from streamweights.config import parse_config
from streamweights.events import MAX_MAGNITUDE, Label, Prediction, RecordError
from streamweights.pipeline import Pipeline

#: Streams the pipeline fuzz feeds: a classification chain (the demo's) and regression
#: streams with each ensemble (the overflow of issue 12 was in regression).
STREAMS = [
    {"name": "c", "task": "classification", "classes": 2, "models": ["a", "b"],
     "adapters": [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
                  {"type": "DriftMemory", "capacity": 8, "detector": "adwin"}],
     "join": {"max_pending": 64, "ttl_seconds": 100}, "publish": {"every_labels": 5}},
    {"name": "r", "task": "regression", "models": ["a", "b"],
     "adapters": [{"type": "FixedShare"}], "join": {"max_pending": 64},
     "publish": {"every_labels": 5}},
    {"name": "h", "task": "regression", "models": ["a", "b"], "adapters": [{"type": "Hedge"}],
     "join": {"max_pending": 64}, "publish": {"every_labels": 5}},
    {"name": "k", "task": "regression", "models": ["a", "b"],
     "adapters": [{"type": "OnlineStacking"}], "join": {"max_pending": 64},
     "publish": {"every_labels": 5}},
]

#: Fragments a mutation inserts: structure, the tokens the old decoder mishandled, numbers
#: at and past the bounds, escapes, invalid UTF-8.
FRAGMENTS = [
    b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\", b" ", b"\n", b"NaN", b"Infinity",
    b"-Infinity", b"1e400", b"-1e400", b"1e308", b"2e154", b"1e100", b"1e101", b"1" + b"0" * 400,
    b"18446744073709551616", b"-0", b"0.0", b"1e-400", b"true", b"null", b"\\ud800",
    b"\\udc00", b"\\u0000", b"\\ud83d\\ude00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf",
    b'"ts":', b'"id":', b'"label":', b'"outputs":', b'"features":', b'"schema":',
    b'"stream":', b'"a":', b'"b":', b"[" * 40, b"]" * 40, b"[" * 2000, b'"c"', b'"r"',
]


def valid_record(rng: random.Random, index: int) -> bytes:
    """A record the decoder accepts, for one of ``STREAMS`` (predictions and labels)."""
    stream = rng.choice("crhk")
    ts = 1000.0 + index + rng.random()
    record_id = f"i{rng.randrange(40)}"
    if rng.random() < 0.5:
        record: dict[str, Any] = {"schema": 1, "stream": stream, "id": record_id, "ts": ts,
                                  "label": rng.randrange(2) if stream == "c"
                                  else rng.gauss(0, 10)}
    elif stream == "c":
        p, q = rng.random(), rng.random()
        record = {"schema": 1, "stream": stream, "id": record_id, "ts": ts,
                  "outputs": {"a": [p, 1 - p], "b": [q, 1 - q]}}
    else:
        scale = 10.0 ** rng.choice([0, 0, 3, 50, 99, 100])
        record = {"schema": 1, "stream": stream, "id": record_id, "ts": ts,
                  "outputs": {"a": rng.uniform(-1, 1) * scale, "b": rng.gauss(0, 10)}}
    return json.dumps(record, separators=(",", ":")).encode()


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """One to four edits: insert, replace or delete a fragment or a random byte, or
    duplicate a slice (duplicate keys, repeated members)."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        choice = rng.random()
        piece = rng.choice(FRAGMENTS) if rng.random() < 0.8 else bytes([rng.randrange(256)])
        if choice < 0.4:
            data[at:at] = piece
        elif choice < 0.7:
            data[at:at + len(piece)] = piece
        elif choice < 0.85:
            del data[at:at + rng.randint(1, 8)]
        else:
            end = min(len(data), at + rng.randint(1, 30))
            data[at:at] = data[at:end]
    return bytes(data)


def generated(rng: random.Random) -> bytes:
    """A document built from scratch: random fields, duplicate keys, odd values."""
    keys = ["schema", "stream", "id", "ts", "label", "outputs", "features", "x"]
    values = [b"1", b"0", b"-1", b"1.5", b"1e400", b"NaN", b"null", b"true", b'"c"', b'"r"',
              b'"\\ud800"', b'"\xff"', b"[]", b"{}", b'{"a":[0.5,0.5],"b":[0.2,0.8]}',
              b'{"a":1e100,"b":2}', b'{"a":2e154,"b":1}', b"[1,2]", b"1e308", b"[[[1]]]",
              b"18446744073709551615", b'"' + b"x" * rng.randrange(100) + b'"']
    members = [b'"' + rng.choice(keys).encode() + b'":' + rng.choice(values)
               for _ in range(rng.randint(0, 9))]
    return b"{" + b",".join(members) + b"}"


def random_input(rng: random.Random, index: int) -> bytes:
    """The fuzz mix: mostly mutated valid records, some generated, some random bytes."""
    draw = rng.random()
    if draw < 0.6:
        return mutate(valid_record(rng, index), rng)
    if draw < 0.75:
        return valid_record(rng, index)
    if draw < 0.95:
        return generated(rng)
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


#: A number token as the wire writes it: one right after ``:``, ``[`` or ``,`` (a digit
#: inside an id or a model name follows a letter, a dash or a quote, so is not matched).
_NUMBER = re.compile(rb"(?<=[:\[,])-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _digits(rng: random.Random, count: int, lead: bool = False) -> bytes:
    first = str(rng.randint(1, 9)) if lead else str(rng.randint(0, 9))
    return (first + "".join(str(rng.randint(0, 9)) for _ in range(count - 1))).encode()


def number_literal(rng: random.Random) -> bytes:
    """A number as JSON may spell it, or nearly: signs, leading zeros, fractions of up
    to 25 digits, exponents of every form, and invalid neighbours (``+1``, ``01``,
    ``1.``, ``.5``, ``1e``) now and then."""
    sign = rng.choice([b"", b"", b"", b"-", b"+"])
    draw = rng.random()
    whole = (b"0" if draw < 0.5 else _digits(rng, rng.randint(1, 20), lead=True)
             if draw < 0.95 else rng.choice([b"00", b"01", b""]))
    draw = rng.random()
    fraction = (b"" if draw < 0.2 else b"." + _digits(rng, rng.randint(1, 25))
                if draw < 0.97 else b".")
    draw = rng.random()
    exponent = (b"" if draw < 0.6 else rng.choice([b"e", b"E"]) + rng.choice([b"", b"+", b"-"])
                + _digits(rng, rng.randint(1, 3)) if draw < 0.98 else b"e")
    return sign + whole + fraction + exponent


def same_number(token: bytes, rng: random.Random) -> bytes:
    """``token`` (a JSON number) spelled another way with the same exact value: the point
    moved against the exponent, trailing or leading zeros, ``e``/``E``, a ``+`` or
    leading zeros in the exponent (``0.25`` -> ``25e-2``, ``0.0025E+02``, ``2.50e-01``)."""
    sign, digits, exponent = Decimal(token.decode()).as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):  # a zero: a float one's fraction and exponent can change
        if not any(mark in token for mark in (b".", b"e", b"E")):
            return token  # an integer 0 (or -0, which reads as +0) stays as it is
        return (("-" if sign else "") + "0" + rng.choice([".0", ".000", "e0", ".0E+00"])
                ).encode()
    zeros = rng.randint(0, 3)
    text = "".join(map(str, digits)) + "0" * zeros
    exponent -= zeros
    if rng.random() < 0.3:  # 0.000ddd form
        lead = rng.randint(0, 3)
        mantissa, power = "0." + "0" * lead + text, exponent + len(text) + lead
    else:
        point = rng.randint(1, len(text))
        mantissa = text[:point] + ("." + text[point:] if point < len(text) else "")
        power = exponent + len(text) - point
    spelled = ("-" if sign else "") + mantissa
    if power or rng.random() < 0.3:
        digits_of_power = str(abs(power)).rjust(rng.randint(1, 3), "0")
        spelled += (rng.choice("eE") + ("-" if power < 0 else rng.choice(["", "+"]))
                    + digits_of_power)
    return spelled.encode()


def respell(raw: bytes, rng: random.Random) -> bytes:
    """``raw`` with one to three of its numbers spelled anew (mostly the same value,
    ``same_number``; else any ``number_literal``) or, half the time, with whitespace of
    every JSON kind put between its tokens: records a parser must read exactly as the
    decoder does, or refuse as it does."""
    if rng.random() < 0.5:
        numbers = list(_NUMBER.finditer(raw))
        data = bytearray(raw)
        for match in sorted(rng.sample(numbers, min(len(numbers), rng.randint(1, 3))),
                            key=lambda m: m.start(), reverse=True):
            data[match.start():match.end()] = (same_number(match.group(), rng)
                                               if rng.random() < 0.7 else number_literal(rng))
        return bytes(data)
    out = bytearray()
    for byte in raw:
        out.append(byte)
        if byte in b":,[]{}" and rng.random() < 0.3:
            out += bytes(rng.choice(b" \t\n\r") for _ in range(rng.randint(1, 3)))
    return bytes(out)


def respelled(raws: Sequence[bytes], rng: random.Random) -> tuple[list[bytes], set[int]]:
    """A copy of ``raws`` with a quarter of them respelled (``respell``) and a twentieth
    mutated (``mutate``), each at its place; also the indices respelled. The lane fuzz's
    input: records the core's own JSON reader takes must read exactly as
    ``events.decode`` reads them."""
    out, changed = [], set()
    for index, raw in enumerate(raws):
        draw = rng.random()
        if draw < 0.25:
            changed.add(index)
            out.append(respell(raw, rng))
        else:
            out.append(mutate(raw, rng) if draw < 0.3 else raw)
    return out, changed


class ContractBreachError(AssertionError):
    """An accepted record that breaks the wire contract."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ContractBreachError(f"accepted a record with duplicate keys {keys}")
    return dict(pairs)


def _integer(text: str) -> int | float:
    """An integer as orjson reads it: exact within 64 bits (signed or unsigned), beyond
    that the nearest double."""
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(text)


def _refuse_constant(name: str) -> Any:
    raise ContractBreachError(f"accepted a record holding {name}")


def _bounded_number(value: Any, where: str) -> None:
    if type(value) not in (int, float):
        raise ContractBreachError(f"{where}: {value!r} is not a number")
    if not (math.isfinite(value) and abs(value) <= MAX_MAGNITUDE):
        raise ContractBreachError(f"{where}: {value!r} is not finite and bounded")


def check_contract(raw: bytes, record: Prediction | Label) -> None:
    """What an accepted record must be, checked against the standard library's parser
    (an independent reading of the same bytes; duplicates and NaN refused there)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractBreachError("accepted bytes that are not UTF-8") from None
    oracle = json.loads(text, object_pairs_hook=_reject_duplicates,
                        parse_constant=_refuse_constant, parse_int=_integer)
    for name in ("stream", "id"):
        value = getattr(record, name)
        if type(value) is not str or not value or value != oracle[name]:
            raise ContractBreachError(f"{name}: {value!r} differs or is empty")
        value.encode("utf-8")  # a lone surrogate would raise here
    # The decoder reads ts as a double (an integer ts past 2**53 rounds, as documented).
    if (type(record.ts) is not float or not math.isfinite(record.ts)
            or record.ts != float(oracle["ts"])):
        raise ContractBreachError(f"ts: {record.ts!r}")
    if isinstance(record, Label):
        _bounded_number(record.label, "label")
        if record.label != oracle["label"]:
            raise ContractBreachError("label differs from the oracle's")
    else:
        if record.outputs != oracle["outputs"] or record.features != oracle.get("features"):
            raise ContractBreachError("outputs/features differ from the oracle's")
        for model, value in record.outputs.items():
            model.encode("utf-8")
            for item in value if type(value) is list else [value]:
                _bounded_number(item, f"outputs.{model}")
        for item in record.features or []:
            _bounded_number(item, "features")
    if events.decode(events.encode(record)) != record:
        raise ContractBreachError("the record does not survive encode -> decode")


def new_pipeline() -> Pipeline:
    document = {"source": {"kind": "jsonl", "path": "-"}, "streams": STREAMS}
    return Pipeline(parse_config(document).streams)


def check_outcome(pipeline: Pipeline, outcome: Any) -> None:
    """The pipeline's invariants after one record: outputs finite and encodable, the
    ensemble's weights finite and summing to one."""
    if outcome.adapted is not None:
        adapted = outcome.adapted
        values = adapted.proba if adapted.proba is not None else [adapted.value]
        if not all(math.isfinite(v) for v in values):
            raise ContractBreachError(f"adapted output not finite: {values}")
        events.encode(adapted)
    for weights in outcome.weights:
        events.encode(weights)
    if outcome.stream in pipeline.streams:
        stream = pipeline.streams[outcome.stream]
        weights = np.asarray(list(stream.ensemble_weights().values()))
        if not np.isfinite(weights).all():
            raise ContractBreachError(f"stream {outcome.stream}: weights not finite: {weights}")


def run_one(pipeline: Pipeline, raw: bytes) -> bool:
    """Decode one input and, if accepted, check it and apply it; ``True`` if accepted.
    Anything but a RecordError (or a breach) propagates to the caller."""
    try:
        record = events.decode(raw)
    except RecordError:
        return False
    check_contract(raw, record)
    check_outcome(pipeline, pipeline.process(record))
    return True


def worst_inputs() -> list[bytes]:
    """The decoder's slowest refusals, each under the record size limit: a megabyte of
    strings holding colons (the duplicate-key check), a NaN at the end of a megabyte (its
    field is named by a scan), and deep nesting."""
    big_strings = (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{"a":1},"features":['
                   + b",".join([b"1"] * 200_000) + b'],"x":"' + b"a:" * 100_000 + b'"}')
    nan_at_end = (b'{"schema":1,"stream":"s","id":"i","ts":1,"outputs":{'
                  + b",".join(b'"m%d":"[{:}]"' % i for i in range(40_000)) + b',"z":NaN}}')
    deep = b"[" * 500_000 + b"]" * 500_000
    return [big_strings, nan_at_end, deep]
