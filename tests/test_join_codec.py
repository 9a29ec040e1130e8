"""The join's compact entry encoding: a waiting prediction written as ``[id, ts, skeleton,
data]`` (all its arrays' bytes in one base64 string) reads back bit for bit as it was,
with the same Python types as the tagged-JSON form (``dumps_state``) gave back."""

from __future__ import annotations

import base64
import copy
import json
import math
import pickle
import sys

import numpy as np
import orjson
import pytest

from streamweights import _native
from streamweights.adapters import dumps_state, loads_state, state_codec
from streamweights.adapters.state_codec import (
    PackedPart,
    pack_state,
    pack_state_raw,
    unpack_state,
)
from streamweights.join import PendingJoin, decode_entry, encode_entry


def assert_same_tree(got, expected, where="payload"):
    """Same types, same dict keys in the same order, arrays with the same dtype, shape
    and bytes (so NaN payloads and signed zeros count), floats with the same bits."""
    assert type(got) is type(expected), f"{where}: {type(got)} != {type(expected)}"
    if isinstance(expected, dict):
        assert list(got) == list(expected), where
        for key in expected:
            assert_same_tree(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_tree(a, b, f"{where}[{i}]")
    elif isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype and got.dtype.str == expected.dtype.str, where
        assert got.shape == expected.shape, where
        assert got.tobytes() == expected.tobytes(), where
        assert got.flags.writeable and got.flags.c_contiguous, where
    elif isinstance(expected, float):
        assert np.float64(got).tobytes() == np.float64(expected).tobytes(), where
    else:
        assert got == expected, where


def odd_floats(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random float64s with the values a careless codec loses: NaNs with payloads and
    sign, signed zeros, infinities, subnormals."""
    values = rng.standard_normal(shape)
    flat = values.reshape(-1)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 5e-324, -2.2250738585072014e-308])
    specials = np.concatenate([specials, np.frombuffer(
        np.array([0x7FF8000000000001, 0xFFF0000000000123], dtype="<u8").tobytes(), "<f8")])
    for i in range(0, flat.size, 3):
        flat[i] = specials[(i // 3) % specials.size]
    return values


def demo_payload(rng: np.random.Generator) -> dict:
    """What the demo chain keeps per prediction: a trace of three stage inputs, the
    served probabilities and the conformal thresholds every layer served."""
    return {"trace": [odd_floats(rng, (3, 2)), odd_floats(rng, (2,)), odd_floats(rng, (9, 2))],
            "served": odd_floats(rng, (2,)), "conformal": odd_floats(rng, (4, 18))}


def payloads() -> list:
    rng = np.random.default_rng(7)
    big_endian = odd_floats(rng, (2, 3)).astype(">f8")
    return [
        demo_payload(rng),
        # torch-style: frozen probabilities as a list of floats, head features
        {"trace": [odd_floats(rng, (2, 3))], "served": odd_floats(rng, (3,)),
         "head_features": rng.standard_normal(5).astype(np.float32),
         "frozen": [0.25, -0.0, 1e-300, math.inf]},
        # regression: a 0-d served value, an empty trace stage, other dtypes
        {"trace": [np.zeros((0, 2)), big_endian, np.arange(4, dtype=np.int64)],
         "served": np.array(0.5), "mask": np.array([True, False])},
        # non-array parts: nested dicts, tuples (come back as lists), numpy scalars
        # (come back as Python numbers), None, strings
        {"conformal": None, "note": "é\"\\", "pair": (1, 2.5), "scale": np.float64(0.1),
         "count": np.int32(3), "nested": {"a": [np.ones(2), {"b": np.float32(2.0)}]},
         "served": np.array([np.nan])},
        {},
        [np.ones(3), 1, "x"],
        np.arange(6.0).reshape(2, 3)[:, ::2],  # not contiguous
    ]


@pytest.mark.parametrize("index", range(len(payloads())))
def test_packed_round_trip_is_bit_exact_and_matches_the_tagged_json_form(index):
    payload = payloads()[index]
    skeleton, data = pack_state(payload)
    got = unpack_state(json.loads(skeleton), data)
    assert_same_tree(got, loads_state(dumps_state(payload)) if not _has_big_endian(payload)
                     else _expected_with_byte_order(payload))
    again = pack_state(got)
    assert again == (skeleton, data)  # same state, same text: restores are deterministic


def _has_big_endian(tree) -> bool:
    if isinstance(tree, dict):
        return any(_has_big_endian(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return any(_has_big_endian(v) for v in tree)
    return isinstance(tree, np.ndarray) and tree.dtype.byteorder == ">"


def _expected_with_byte_order(payload):
    """The tagged JSON form turns big-endian arrays little-endian; the packed form keeps
    the dtype as it was (a stricter round trip): the expectation is the payload itself,
    with the tagged form's type mapping for everything else."""
    expected = loads_state(dumps_state(payload))
    expected["trace"][1] = payload["trace"][1]
    return expected


def test_fast_path_and_generic_path_write_the_same_text():
    """A payload of arrays and lists of arrays takes the cached-skeleton path; the same
    payload with one extra plain value takes the generic one: same skeleton text for the
    shared part, and a second payload of the same structure reuses the first's skeleton
    (cache hit) with its own values."""
    rng = np.random.default_rng(1)
    first, second = demo_payload(rng), demo_payload(rng)
    state_codec._skeletons.clear()
    skeleton, data = pack_state(first)
    assert len(state_codec._skeletons) == 1
    generic = state_codec._packed_skeleton(first, [])
    assert skeleton == generic
    skeleton2, data2 = pack_state(second)
    assert skeleton2 == skeleton and data2 != data and len(state_codec._skeletons) == 1
    assert_same_tree(unpack_state(json.loads(skeleton2), data2), second)
    with_extra = {**first, "frozen": [0.5, 0.5]}
    skeleton3, data3 = pack_state(with_extra)
    assert skeleton3 == skeleton[:-1] + ',"frozen":[0.5,0.5]}' and data3 == data
    assert len(state_codec._skeletons) == 1  # (not cached: it holds values)


def test_structure_changes_are_not_mistaken_for_a_cached_one():
    """Same keys, other dtype / shape / trace length / key order: each its own skeleton."""
    base = {"trace": [np.ones(2)], "served": np.ones(2)}
    variants = [base,
                {"trace": [np.ones(2, dtype=np.float32)], "served": np.ones(2)},
                {"trace": [np.ones((2, 1))], "served": np.ones(2)},
                {"trace": [np.ones(2), np.ones(2)], "served": np.ones(2)},
                {"served": np.ones(2), "trace": [np.ones(2)]},
                {"trace": [np.ones(2)], "served": np.ones(2).astype(">f8")},
                {"trace": np.ones(2), "served": [np.ones(2)]}]
    for payload in variants:
        skeleton, data = pack_state(payload)
        assert_same_tree(unpack_state(json.loads(skeleton), data),
                         {k: list(v) if isinstance(v, list) else v for k, v in payload.items()})
    assert len({pack_state(p)[0] for p in variants}) == len(variants)


def test_what_cannot_round_trip_is_refused():
    with pytest.raises(ValueError, match="object and structured arrays cannot be packed"):
        pack_state({"trace": [np.array([object()])]})
    with pytest.raises(ValueError, match="object and structured arrays cannot be packed"):
        pack_state({"served": np.zeros(2, dtype=[("a", "<f8")])})
    with pytest.raises(ValueError, match="dict keys must be strings"):
        pack_state({1: np.ones(2)})
    with pytest.raises(ValueError, match="dict keys must be strings"):
        pack_state({"nested": {2: 1.0}})
    with pytest.raises(ValueError, match="cannot encode value of type set"):
        pack_state({"served": {1, 2}})


def test_damaged_packed_data_is_refused_not_misread():
    skeleton, data = pack_state({"served": np.ones(2), "trace": [np.ones(3)]})
    parsed = json.loads(skeleton)
    short = json.loads(skeleton)
    short["trace"][0]["__nd__"][1] = [4]
    with pytest.raises(ValueError, match="an array of 32 bytes starts at 16"):
        unpack_state(short, data)
    long = json.loads(skeleton)
    long["trace"][0]["__nd__"][1] = [2]
    with pytest.raises(ValueError, match="packed arrays take 32 bytes, 40 were written"):
        unpack_state(long, data)
    negative = json.loads(skeleton)
    negative["served"]["__nd__"][1] = [-1]
    with pytest.raises(ValueError, match=r"shape \[-1\] cannot be"):
        unpack_state(negative, data)
    for marker in (["|O", [1]], ["<f8,", [1]], ["<f8"], [8, [1]], ["<f8", 1]):
        # an object dtype; one numpy reads through ast.literal_eval (a SyntaxError)
        with pytest.raises(ValueError, match=r"packed array marker .* not written by pack"):
            unpack_state({"a": {"__nd__": marker}}, "AAAAAAAAAAA=")
    assert_same_tree(unpack_state(parsed, data), {"served": np.ones(2), "trace": [np.ones(3)]})


def test_entry_text_is_json_and_reads_back_as_the_state_dict_holds_it():
    payload = demo_payload(np.random.default_rng(3))
    for event_id, ts in (("e1", 1e9 + 0.25), ('quo"te/é\n', 1_700_000_000), ("x", math.nan),
                         ("y", -math.inf)):
        text = encode_entry(event_id, ts, payload)
        entry = json.loads(text)
        assert len(entry) == 4 and entry[0] == event_id
        got_id, got_ts, got_payload = decode_entry(entry)
        assert got_id == event_id and isinstance(got_ts, float)
        assert np.float64(got_ts).tobytes() == np.float64(float(ts)).tobytes()
        assert_same_tree(got_payload, payload)
        assert encode_entry(got_id, got_ts, got_payload) == text
    with pytest.raises(ValueError, match=r"expected \[id, ts, skeleton, data\]"):
        decode_entry(["e1", 1.0, {"served": 1}])


def _all_texts(join: PendingJoin, encode=encode_entry) -> str:
    """Every waiting entry's text as a full snapshot writes them (one segment)."""
    texts, _, _, _ = join.segment_delta(encode, 1 << 40, True)
    return "[]" if not texts else texts[0][1]


def test_join_encodes_each_entry_once_and_reads_back_its_state():
    """A full snapshot's segment is the JSON array of the entries' texts, in arrival
    order; an entry leaving (joined, evicted, expired) drops its kept text, and a new one
    is encoded."""
    rng = np.random.default_rng(5)
    join = PendingJoin(max_pending=4, ttl_seconds=10)
    kept = {}
    for i in range(12):
        payload = demo_payload(rng)
        kept[f"e{i}"] = payload
        join.add(f"e{i}", 100.0 + i, payload)
        if i % 3 == 1:
            join.pop(f"e{i - 1}")
        if i == 9:
            assert join.expire(118.0)  # (ts < 108: the oldest ones)
        entries = json.loads(_all_texts(join))
        assert [e[0] for e in entries] == [e.id for e in join.waiting()]
        for entry in entries:
            event_id, ts, payload = decode_entry(entry)
            assert ts == join.get(event_id).ts
            assert_same_tree(payload, kept[event_id])
    assert join.evicted_total and join.joined_total and join.expired_total
    # Each entry's text is made once: a second snapshot encodes nothing anew, one more
    # entry only that one (incremental or full), and the texts are the same as made
    # afresh after a restore.
    encoded: list[str] = []

    def counting(event_id, ts, payload):
        encoded.append(event_id)
        return encode_entry(event_id, ts, payload)

    kept_text = _all_texts(join, counting)
    assert encoded == []
    join.add("new", 200.0, demo_payload(rng))
    new_text = encode_entry("new", 200.0, join.get("new").payload)
    assert join.segment_delta(counting, 1 << 40, False)[0][0][1] == f"[{new_text}]"
    assert encoded == ["new"]
    assert _all_texts(join, counting) == kept_text[:-1] + "," + new_text + "]"
    assert encoded == ["new"]
    join.restore(join.waiting(), 0, 0, 0)
    assert _all_texts(join, counting) == _all_texts(join)
    assert encoded == ["new", *(entry.id for entry in join.waiting())]


def test_long_float_lists_are_packed_and_read_back_as_the_same_floats():
    """A list (or tuple) of at least four Python floats goes into the packed bytes and
    comes back as a list of the same floats, bit for bit (signed zeros, NaN payloads);
    shorter or mixed lists stay JSON as ``dumps_state`` wrote them; numpy scalars count as
    the Python numbers they read back as; rows of a ring (lists of pairs) come back as
    they were; and what was read back packs to the same text again."""
    nan_payload = float(np.frombuffer(np.array([0x7FF8000000000abc], "<u8").tobytes(),
                                      "<f8")[0])
    floats = [0.1, -0.0, math.inf, nan_payload, 5e-324, 1e308]
    tree = {"recent": floats, "window": tuple(floats[:4]), "short": [0.5, 0.25, 1.0],
            "mixed": [0.5, 1, 0.25, 0.75], "scalars": [np.float64(0.5)] * 4,
            "scalars32": [np.float32(0.1)] * 3 + [0.5], "ints": [np.int64(1)] * 4,
            "ring": [[i, i + 1] for i in range(6)] + [[0.5, 0.5, 0.5, 0.5]],
            "nested": {"rows": [floats, [1, 2]]}}
    skeleton, data = pack_state(tree)
    parsed = json.loads(skeleton)
    assert parsed["recent"] == {"__f8__": 6} and parsed["window"] == {"__f8__": 4}
    assert parsed["short"] == [0.5, 0.25, 1.0] and parsed["mixed"] == [0.5, 1, 0.25, 0.75]
    # numpy scalars are decided on as the Python numbers a restore reads back
    assert parsed["scalars"] == parsed["scalars32"] == {"__f8__": 4}
    assert parsed["ints"] == [1, 1, 1, 1]
    assert parsed["ring"][:6] == tree["ring"][:6] and parsed["ring"][6] == {"__f8__": 4}
    got = unpack_state(parsed, data)
    # as dumps_state's round trip gives it, except that NaN payloads survive (JSON's NaN
    # does not keep them: the packed form is the stricter round trip)
    assert_same_tree(got, {**tree, "window": floats[:4], "scalars": [0.5] * 4,
                           "scalars32": [float(np.float32(0.1))] * 3 + [0.5], "ints": [1] * 4})
    assert pack_state(got) == (skeleton, data)  # the same bytes after a restore
    damaged = json.loads(skeleton)
    damaged["recent"] = {"__f8__": -1}
    with pytest.raises(ValueError, match="float list of length -1 cannot be"):
        unpack_state(damaged, data)
    with pytest.raises(ValueError, match="it is the packed form's marker"):
        pack_state({"a": {"__f8__": 3}})


def test_a_ring_of_short_plain_rows_is_kept_as_it_is_and_others_are_looked_into():
    """Rows that are all short and plain are written as they are in one check; a row with
    a numpy scalar or of four floats or more sends the ring through the per-row path."""
    plain = [[i, i % 2 == 0] for i in range(50)] + [["a", None, 0.5]]
    assert json.loads(pack_state({"ring": plain})[0]) == {"ring": plain}
    with_numpy = [[1, 2], [np.int64(3), 4]]
    assert json.loads(pack_state({"ring": with_numpy})[0]) == {"ring": [[1, 2], [3, 4]]}
    with_long = [[1, 2], [0.1, 0.2, 0.3, 0.4]]
    skeleton, data = pack_state({"ring": with_long})
    assert json.loads(skeleton)["ring"] == [[1, 2], {"__f8__": 4}]
    assert unpack_state(json.loads(skeleton), data) == {"ring": with_long}


@pytest.mark.parametrize("tree", [
    pytest.param({"a": math.nan}, id="dict value"),
    pytest.param({"a": [1, -math.inf]}, id="short list"),
    pytest.param({"ring": [[1, 0.5], [2, math.inf]]}, id="short rows"),
    pytest.param({"rows": [[0.1, 0.2, 0.3, 0.4], [1, math.nan]]}, id="a short row among rows"),
    pytest.param({"mixed": [np.ones(2), math.inf]}, id="list with an array"),
    pytest.param({"scalar": np.float64(math.nan)}, id="numpy scalar"),
    pytest.param(math.inf, id="the tree itself")])
def test_a_non_finite_plain_float_is_written_as_json_writes_it_and_reads_back(tree):
    """orjson would write NaN and infinities as null: a skeleton holding one is written by
    json (NaN, Infinity), and reads back as the same floats."""
    skeleton, data = pack_state(tree)
    assert "NaN" in skeleton or "Infinity" in skeleton
    got = unpack_state(json.loads(skeleton), data)
    assert_same_tree(got, loads_state(dumps_state(tree)))
    assert pack_state(got) == (skeleton, data)


def test_a_finite_skeleton_is_orjson_text_and_refusals_are_unchanged():
    """A skeleton of finite floats is orjson's spelling (``0.00001`` where json writes
    ``1e-05``, UTF-8 as it is); what orjson writes but json refuses is still refused; what
    orjson refuses but json writes (an int beyond 64 bits, a lone surrogate) is written
    by json."""
    import dataclasses
    import datetime

    skeleton, _ = pack_state({"tiny": 1e-05, "name": "é", "pair": (1, 2.5)})
    assert skeleton == '{"tiny":0.00001,"name":"é","pair":[1,2.5]}'

    @dataclasses.dataclass
    class Point:
        x: float

    for value in (Point(1.0), datetime.date(2026, 12, 1)):
        with pytest.raises(ValueError, match="cannot encode value of type"):
            pack_state({"odd": value})
    for tree in ({"big": 2**70}, {"surrogate": "\ud800"}):
        skeleton, data = pack_state(tree)
        assert json.loads(skeleton) == tree and unpack_state(json.loads(skeleton), data) == tree


def _record_text(skeleton: str, data: str) -> str:
    """A stream record's text around one packed tree, as ``encode_stream`` writes it."""
    return (f'{{"format":6,"offset":3,"streams":{{"s":{{"state":{skeleton},'
            f'"data":"{data}","join":{{"segments":[]}}}}}}}}')


@pytest.mark.parametrize("index", range(len(payloads())))
def test_a_packed_record_parsed_whole_equals_the_skeleton_walked(index):
    """``loads_packed`` builds the tree in the parser (no walk afterwards): the same tree,
    bit for bit, writeable C-ordered arrays, as ``unpack_state`` gives."""
    payload = payloads()[index]
    skeleton, data = pack_state(payload)
    document, slots = state_codec.loads_packed(_record_text(skeleton, data))
    packed = document["streams"]["s"]
    slots.fill(packed["data"])
    assert_same_tree(packed["state"], unpack_state(json.loads(skeleton), data))
    assert document["offset"] == 3 and packed["join"] == {"segments": []}


def test_a_damaged_packed_record_is_refused_before_anything_huge_is_made():
    skeleton, data = pack_state({"served": np.ones(2), "trace": [np.ones(3), [0.5] * 6]})
    for bad in (skeleton.replace("[3]", "[4]"), skeleton.replace("[3]", "[2]"),
                skeleton.replace('"__f8__":6', '"__f8__":5')):
        document, slots = state_codec.loads_packed(_record_text(bad, data))
        with pytest.raises(ValueError, match=r"packed arrays take \d+ bytes, 88 were"):
            slots.fill(document["streams"]["s"]["data"])
    # a shape of 10^12 doubles is refused at parse time, not allocated
    with pytest.raises(ValueError, match="more than their data's"):
        state_codec.loads_packed(_record_text(skeleton.replace("[3]", "[1000000000000]"),
                                              data))
    # the data's bytes beside the text (a format-7 record): their count is the limit, by
    # the core's slots (bytes) and by the stdlib's hook (a str) alike
    raw = pack_state_raw({"served": np.ones(2), "trace": [np.ones(3), [0.5] * 6]})[1]
    assert len(raw) == 88
    text = _record_text(skeleton, "").replace('"data":""', '"data":88')
    for parsed in (text.encode(), text):
        document, slots = state_codec.loads_packed(parsed, len(raw))
        slots.fill_raw(raw)
        assert_same_tree(document["streams"]["s"]["state"], unpack_state(
            json.loads(skeleton), data))
        # (arrays are claimed as they are made; the core's float lists are allocated
        # empty and checked when filled, above)
        with pytest.raises(ValueError, match="more than their data's 39 bytes"):
            state_codec.loads_packed(parsed, 39)
    for marker, message in (('{"__nd__":["<f8",[-1]]}', r"shape \[-1\] cannot be"),
                            ('{"__nd__":["|O",[1]]}', r"marker \['\|O', \[1\]\] was not"),
                            ('{"__nd__":["<f8,",[1]]}', "was not written by pack_state"),
                            ('{"__f8__":-2}', "float list of length -2"),
                            ('{"__f8__":1.5}', "float list of length 1.5")):
        with pytest.raises(ValueError, match=message):
            state_codec.loads_packed(_record_text(f'{{"a":{marker}}}', "AAAAAAAAAAA="))


def _parsed_packed(text: bytes, core: bool):
    """A packed text parsed by ``loads_packed`` (the core making float-list slots) or by
    the stdlib with ``PackedSlots.hook`` (the reference), then filled with as many bytes
    as its slots name (at most as many as the text could hold): the tree and its slots,
    or the error either step raised."""
    try:
        if core:
            tree, slots = state_codec.loads_packed(text)
        else:
            slots = state_codec.PackedSlots(len(text))
            tree = json.loads(text, object_hook=slots.hook)
        size = min(len(text), sum(8 * slot[1] if type(slot) is tuple else slot.nbytes
                                  for slot in slots._slots))
        slots.fill(base64.b64encode(bytes(index % 251 for index in range(size))).decode())
    except ValueError as error:
        return ("error", str(error))
    return tree, [("list", slot[1]) if type(slot) is tuple else
                  (type(slot).__name__, slot.shape, slot.dtype.str, slot.flags.c_contiguous,
                   slot.flags.writeable, slot.flags.owndata) for slot in slots._slots]


@pytest.mark.parametrize("marker", ['{"__f8__":2}', '{"__f8__":0}', '{"__f8__":2,"__f8__":1}',
                                    '{"__f8__":1,"x":1}', '{"x":1,"__f8__":1}',
                                    '{"__f8__":true}', '{"__f8__":-1}', '{"__f8__":1.0}',
                                    '{"__f8__":"1"}', '{"__f8__":null}', '{"__f8__":[1]}',
                                    '{"__f8__":123456789012345678}', '{"__f8":1}',
                                    '{"__nd__":["<f8",[2]]}', '{"__nd__":["<f8",[]]}',
                                    '{"__nd__":["<f8",[0,3]]}', '{"__nd__":["<f8",[2,1,2]]}',
                                    '{"__nd__":[">f8",[2]]}', '{"__nd__":["<f4",[3]]}',
                                    '{"__nd__":["|b1",[3]]}', '{"__nd__":["|O",[1]]}',
                                    '{"__nd__":["<i8",[2,2]]}', '{"__nd__":["|u1",[5]]}',
                                    '{"__nd__":["<i4",[3]]}', '{"__nd__":[">i8",[1]]}',
                                    '{"__nd__":["<u8",[1]]}', '{"__nd__":["=f8",[1]]}',
                                    '{"__nd__":["|b1",[1000000]]}',
                                    '{"__nd__":["<f8",[-1]]}', '{"__nd__":["<f8",[1.0]]}',
                                    '{"__nd__":["<f8",[true]]}', '{"__nd__":["<f8",2]}',
                                    '{"__nd__":["<f8"]}', '{"__nd__":["<f8",[2],1]}',
                                    '{"__nd__":["<f8",[2]],"x":1}', '{"__nd__":{"a":1}}',
                                    '{"__nd__":["<f8",[2]],"__nd__":["<f8",[3]]}',
                                    '{"__nd__":["<f8",[100000000]]}'])
def test_packed_markers_the_core_makes_are_those_the_hook_makes(marker):
    """``loads_packed`` lets the core turn the usual markers (float lists, arrays of
    float64, int64, uint8, bool, float32 and int32 in this machine's byte order) into
    slots itself (no hook call); on every spelling of a marker, valid or
    not, the tree, the slots (kind, shape, dtype, flags) and any error equal the stdlib
    parse with ``PackedSlots.hook``. (One difference: a float-list count past what the
    text can hold is refused by the hook as it parses, by the core's slots when filled,
    with another message; neither allocates for it.)"""
    text = f'{{"a":[{marker},{{"__nd__":["<f8",[2]]}},{marker},{{"b":{marker}}}]}}'.encode()
    core, reference = _parsed_packed(text, core=True), _parsed_packed(text, core=False)
    if reference[0] == "error" and "more than their data's" in reference[1]:
        assert core[0] == "error" and ("packed arrays take" in core[1]
                                       or "more than their data's" in core[1]), core
    elif reference[0] == "error":
        assert core == reference
    else:
        assert core[1] == reference[1]
        assert_same_tree(core[0], reference[0])


def test_the_core_makes_the_numeric_arrays_a_record_holds_without_the_hook():
    """A default stream's record names int64, uint8 and bool arrays beside its float64
    ones (~11 of ~50 arrays, each a Python hook call before): the core makes all of them
    itself, of the dtype and shape named, and sends only other dtypes to the hook."""
    native = "<" if sys.byteorder == "little" else ">"
    made = [f"{native}f8", f"{native}i8", "|u1", "|b1", f"{native}f4", f"{native}i4"]
    hooked = ["<u8", "|i1", "<f2", f"{'>' if native == '<' else '<'}i8"]
    items = ",".join(f'{{"__nd__":["{code}",[2,1]]}}' for code in made + hooked)
    text = f'{{"a":[{items}]}}'.encode()
    calls: list[dict] = []
    slots = state_codec.PackedSlots(len(text))

    def hook(value):
        calls.append(value)
        return slots.hook(value)

    tree = state_codec._core_loads(text, hook, slots._slots, len(text))
    assert [call["__nd__"][0] for call in calls] == hooked
    assert [array.dtype.str for array in tree["a"]] == made + hooked
    assert all(array.shape == (2, 1) and array.flags.c_contiguous and array.flags.writeable
               for array in tree["a"])
    assert [slot is array for slot, array in zip(slots._slots, tree["a"], strict=True)] == \
        [True] * len(tree["a"])


def _alike_cases() -> list:
    """Pairs of trees whose sorted encodings are equal or differ in the ways a fast
    comparison could miss."""
    rng = np.random.default_rng(3)
    base = {"stages": [{"adapter": "OnlinePlatt", "config": {"lr": 0.1, "n": 2}},
                       {"adapter": "DriftMemory", "config": {"capacity": 64, "d": None,
                                                              "on": True, "x": [1.5, 2]}}],
            "share": 0.01}
    cases = [(base, json.loads(json.dumps(base))),
             (base, dict(reversed(list(base.items()))))]  # key order: alike
    for old, new in ((1, 1.0), (0.0, -0.0), (True, 1), (None, 0), ("1", 1), (1.5, 1.5000001),
                     (float("nan"), float("nan")), (float("nan"), -float("nan")),
                     (math.inf, math.inf), ([1, 2], (1, 2)), ([1, 2], [1, 2, 3]),
                     ({"a": 1}, {"b": 1}), ({"a": 1}, {"a": 1, "b": 2}), (np.float64(1.5), 1.5),
                     (np.ones(2), np.ones(2)), (np.ones(2), np.zeros(2)), (2**80, 2**80),
                     (2**80, float(2**80)), ("é", "é"), (-0.0, -0.0)):
        cases.append(({"share": old, "k": [1]}, {"share": new, "k": [1]}))
        cases.append(({"share": new}, {"share": old}))
    for _ in range(200):
        keys = rng.integers(0, 5, 4)
        values = rng.choice([0.0, -0.0, 1.0, 2.5], 4)
        left = {f"k{int(i)}": float(v) for i, v in zip(keys, values, strict=True)}
        cases.append((left, dict(reversed(list(left.items())))))
        cases.append((left, {k: -v for k, v in left.items()}))
    return cases


def test_encodes_alike_answers_what_comparing_the_sorted_encodings_answers():
    from streamweights.adapters.state_codec import encodes_alike
    answers = set()
    for left, right in _alike_cases():
        expected = dumps_state(left, sort_keys=True) == dumps_state(right, sort_keys=True)
        assert encodes_alike(left, right) is expected, (left, right)
        assert encodes_alike(right, left) is expected, (right, left)
        answers.add(expected)
    assert answers == {True, False}
    with pytest.raises(ValueError, match="dict keys must be strings"):
        encodes_alike({1: 2}, {1: 2})  # refused as the encoding refuses it


class _Floaty(float):
    """A float subclass: not a plain value to either marking pass."""


def _random_tree(rng: np.random.Generator, depth: int = 0, odd: bool = False):
    """A state-like tree: dicts, lists, tuples, rows, arrays, plain leaves; with ``odd``,
    now and then what only the Python pass handles or refuses."""
    leaves = [lambda: float(rng.standard_normal()), lambda: int(rng.integers(-5, 5)),
              lambda: "s" + str(int(rng.integers(9))), lambda: bool(rng.integers(2)),
              lambda: None, lambda: -0.0, lambda: 2**70]
    if odd:
        leaves += [lambda: math.nan, lambda: math.inf, lambda: np.float64(0.5),
                   lambda: np.int32(3), lambda: _Floaty(1.5), lambda: {"__nd__": 1},
                   lambda: {1: 2.0}, lambda: np.array([object()]),
                   lambda: np.ones(2, dtype=">f8"), lambda: np.zeros((2, 0))]
    choice = int(rng.integers(0 if depth < 4 else 6, 10))
    if choice == 0:
        return {f"k{i}": _random_tree(rng, depth + 1, odd) for i in range(rng.integers(0, 5))}
    if choice == 1:
        return [_random_tree(rng, depth + 1, odd) for _ in range(rng.integers(0, 6))]
    if choice == 2:
        return tuple(_random_tree(rng, depth + 1, odd) for _ in range(rng.integers(0, 4)))
    if choice == 3:  # rows: short plain ones, long float ones, or mixed
        width = int(rng.integers(0, 7))
        return [[float(v) for v in rng.standard_normal(width)] if rng.integers(3)
                else [int(v) for v in rng.integers(0, 9, width)]
                for _ in range(rng.integers(1, 5))]
    if choice == 4:
        return [float(v) for v in rng.standard_normal(int(rng.integers(0, 9)))]
    if choice == 5:
        return rng.standard_normal(tuple(int(n) for n in rng.integers(0, 4, rng.integers(0, 3))))
    return leaves[int(rng.integers(len(leaves)))]()


def _marking(marker, tree):
    """(JSON of the marked tree, the appended arrays' dtypes/shapes/bytes) or the error."""
    arrays: list = []
    try:
        marked = marker(tree, arrays)
    except (ValueError, state_codec._NonFiniteError) as error:
        return type(error).__name__, str(error)
    text = json.dumps(marked, default=repr, allow_nan=True)
    kinds = [type(value).__name__ for value in _walk_leaves(marked)]
    return text, kinds, [(a.dtype.str, a.shape, a.tobytes()) for a in arrays]


def _walk_leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _walk_leaves(value)
    elif isinstance(tree, list | tuple):
        yield type(tree)()
        for value in tree:
            yield from _walk_leaves(value)
    else:
        yield tree


@pytest.mark.parametrize("odd", [False, True])
def test_the_core_marks_trees_as_the_python_pass_does(odd):
    """``_marked_usual`` (the core's pass, falling back to Python's) against ``_marked``
    on 3,000 random trees: the same marked tree (types of leaves and containers included),
    the same arrays in the same order, the same refusals. Without odd parts the core must
    mark nearly every tree itself (or this would test the fallback alone)."""
    from streamweights import _native
    rng = np.random.default_rng(11 + odd)
    marked_by_core = 0
    for _ in range(3000):
        tree = {"state": _random_tree(rng, odd=odd),
                "parts": [_random_tree(rng, 1, odd) for _ in range(3)]}
        assert _marking(state_codec._marked_usual, tree) == _marking(state_codec._marked, tree)
        gave_up = object()
        marked_by_core += _native.mark_packed(tree, [], gave_up, PackedPart) is not gave_up
    if odd:
        assert 300 < marked_by_core < 2700  # both paths taken
    else:
        assert marked_by_core == 3000  # -0.0, 2**70, empty arrays: all usual


def test_the_core_leaves_deeply_nested_trees_to_the_python_pass():
    """Past 200 levels the core gives up (the Python pass and its recursion limit decide):
    a pathological tree cannot exhaust the native stack."""
    from streamweights import _native
    gave_up = object()
    shallow: list = [1.5]
    for _ in range(150):
        shallow = [shallow, {"k": 2}]
    marked = _native.mark_packed(shallow, [], gave_up, PackedPart)
    assert marked is not gave_up and marked == shallow  # plain all the way down
    deep: list = [1.5]
    for _ in range(200_000):
        deep = [deep, {"k": 2}]
    assert _native.mark_packed(deep, [], gave_up, PackedPart) is gave_up
    with pytest.raises(RecursionError):
        pack_state({"deep": deep})


def _odd_ids(rng: np.random.Generator, count: int) -> list[str]:
    """Ids with what ``encode_basestring_ascii`` escapes: quotes, backslashes, the short
    escapes, other control characters, DEL, non-ASCII and characters past the BMP."""
    pool = ['"', "\\", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f", "é", "\u2028",
            "\uffff", "😀", "\U0010ffff", "a", "Z", "0", " ", "~", "/"]
    return [("".join(rng.choice(pool, size=int(rng.integers(0, 12))))) for _ in range(count)]


def _odd_times(rng: np.random.Generator, count: int) -> list[float]:
    """Doubles of every magnitude (random bit patterns), the edges of ``repr``'s fixed
    and scientific layouts, signed zeros, subnormals and the non-finite."""
    edges = [0.0, -0.0, 1e-4, 9.999e-5, 1e-5, 1e15, 9.999999999999998e15, 1e16, 1e22,
             5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1 / 3,
             1_700_000_000.25, -1.5, 123456789.0, math.nan, math.inf, -math.inf]
    bits = rng.integers(0, 2**64, size=count, dtype=np.uint64).view(np.float64)
    return edges + [float(value) for value in bits]


def test_the_cores_entry_text_is_encode_entrys_around_the_same_skeleton():
    """Scenario: the ends the core writes around a flat payload's skeleton (``[id,ts,``
    and ``,"data"]``), for odd ids, times of every magnitude (random bit patterns,
    NaN payloads included) and buffers and conformal rows of several shapes. We expect:
    prefix + ``pack_state``'s skeleton + suffix is ``encode_entry``'s text exactly."""
    rng = np.random.default_rng(11)
    times = _odd_times(rng, 3000)
    ids = _odd_ids(rng, len(times))
    for index, (event_id, ts) in enumerate(zip(ids, times, strict=True)):
        buffer = rng.standard_normal(int(rng.integers(0, 12)))
        if index % 7 == 0:
            buffer = rng.integers(0, 2**64, size=buffer.size, dtype=np.uint64).view(np.float64)
        payload = {"buffer": buffer.copy()}
        kept = None
        if index % 2:
            rows, width = int(rng.integers(0, 4)), int(rng.integers(1, 4))
            matrix = rng.standard_normal((rows, width))
            payload["conformal"] = matrix.copy()
            kept = (matrix.ravel().tolist(), rows, width)
        prefix, suffix = _native.flat_entry_ends(event_id, ts, buffer.tolist(), kept)
        skeleton, _ = pack_state(payload)
        assert prefix + skeleton + suffix == encode_entry(event_id, ts, payload), (event_id, ts)


def test_the_join_writes_flat_entries_itself_once_it_knows_their_skeleton():
    """Scenario: the demo's predictions, with odd ids, through the record lane (which
    keeps payloads flat), then a full snapshot of the join with a codec that counts its
    calls. We expect: the
    snapshot's text is what ``encode_entry`` writes for every waiting entry; the codec
    was asked once (the first entry teaches the join the skeleton of that shape, the
    core writes the rest); a different codec is asked again (what was learned holds for
    its own codec only)."""
    from streamweights.pipeline import Pipeline
    from tests.test_pipeline_batch import _replay, _streams

    predictions = [orjson.loads(raw) for raw in _replay(400) if b'"label"' not in raw]
    rng = np.random.default_rng(2)
    # (the lane leaves records with escapes in the id to Python: no quotes, backslashes
    # or control characters here; ``_odd_ids`` covers those in the test above)
    pool = ["é", "\u2028", "\uffff", "😀", "\U0010ffff", "\x7f", "a", " ", "~", "/"]
    for index, record in enumerate(predictions):
        picked = rng.choice(pool, size=int(rng.integers(0, 6)))
        record["id"] = "".join(picked) + f"-{index}"
    predictions = [orjson.dumps(record) for record in predictions]
    pipeline = Pipeline(_streams("demo.yaml"))
    lane = pipeline.record_lane()
    for raw in predictions:
        assert lane.process(raw, False) is not None  # the lane's, so held flat
    join = pipeline.streams["demo"].join
    waiting = join.waiting()
    assert len(waiting) > 100
    expected = "[" + ",".join(encode_entry(p.id, p.ts, p.payload) for p in waiting) + "]"
    calls = []

    def counting(event_id, ts, payload):
        calls.append(event_id)
        return encode_entry(event_id, ts, payload)

    assert _all_texts(join, counting) == expected
    assert len(calls) == 1

    def other(event_id, ts, payload):
        calls.append(event_id)
        return encode_entry(event_id, ts, payload)

    calls.clear()
    assert _all_texts(join, other) == expected  # (texts kept: nothing is encoded anew)
    assert calls == []
    more = [orjson.loads(raw) for raw in _replay(480)[400:] if b'"label"' not in raw]
    for record in more:
        assert lane.process(orjson.dumps(record), False) is not None
    texts, _, _, _ = join.segment_delta(other, 1 << 40, False)
    assert len(calls) == 1 and len(texts) == 1  # asked again: a new codec
    assert texts[0][1] == "[" + ",".join(encode_entry(p.id, p.ts, p.payload)
                                         for p in join.waiting()[len(waiting):]) + "]"


def test_a_packed_part_writes_the_bytes_of_the_tree_it_holds():
    """``PackedPart`` (an adapter's config packed once, ``Adapter.state_dict`` inside
    ``configs_packed``) in a tree: the same skeleton and data as the tree it holds, with
    its long float lists' bytes in their place among the others', by the core's pass and
    by the Python pass (a NaN elsewhere in the state sends the whole tree there)."""
    config = {"steps": [0.001, 0.002, 0.004, 0.008], "alphas": [0.1], "name": "x"}
    part = state_codec.packed_part(config)
    assert part is not None and len(part.arrays) == 1
    for value in (1.5, float("nan")):
        plain = {"before": np.arange(3.0), "config": config, "after": [value] * 5,
                 "last": value}
        with_part = {**plain, "config": part}
        assert pack_state(with_part) == pack_state(plain)
        skeleton, data = pack_state(with_part)
        assert dumps_state(unpack_state(json.loads(skeleton), data)) == dumps_state(plain)
    # never changed once made: a copy is itself; pickled, it comes back as the same part
    assert copy.deepcopy({"config": part})["config"] is part and copy.copy(part) is part
    assert pickle.loads(pickle.dumps(part)) is part
    # its arrays are read-only copies: an array a config holds stays its own
    held = np.arange(3.0)
    with_array = state_codec.packed_part({"mean": held})
    assert held.flags.writeable and not with_array.arrays[0].flags.writeable
    assert pack_state({"config": with_array}) == pack_state({"config": {"mean": held}})
    # configs that pack alike share one part (a replica's streams, one config each)
    assert state_codec.packed_part(dict(config)) is part
    other = state_codec.packed_part({**config, "steps": [0.001, 0.002, 0.004, 0.009]})
    assert other is not None and other is not part
    # what the core's pass does not take stays a tree, written with its state each time
    assert state_codec.packed_part({"radius": float("inf")}) is None
    assert state_codec.packed_part({"big": 2**70}) is None


def test_packed_bytes_are_the_arrays_tobytes_joined():
    """The core's ``packed_bytes`` writes what ``b"".join(a.tobytes() for a in arrays)``
    writes, for every kind of array a packed tree may name: C-contiguous ones copied
    from memory, others (transposed, strided, Fortran-ordered) through ``tobytes``; any
    dtype and byte order, 0-d, empty; and refuses what is not an array."""
    rng = np.random.default_rng(4)
    square = rng.normal(size=(4, 5))
    arrays = [square, square.T, square[:, ::2], np.asfortranarray(square),
              np.array(3.5), np.zeros(0), np.zeros((0, 3)), np.arange(7, dtype=">i4"),
              np.array([True, False, True]), rng.integers(0, 9, size=(2, 3), dtype=np.uint8),
              square.astype(">f8"), np.arange(12, dtype=np.int64).reshape(3, 4)[1:, 1:]]
    for count in range(len(arrays) + 1):
        chosen = arrays[:count]
        assert _native.packed_bytes(chosen) == b"".join(a.tobytes() for a in chosen)
    assert _native.packed_bytes([]) == b""
    with pytest.raises(TypeError):
        _native.packed_bytes([square, [1.0, 2.0]])
