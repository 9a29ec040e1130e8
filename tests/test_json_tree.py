"""The core's JSON parser for snapshot records (``_native.loads_hooked``) against the
stdlib's ``json.loads(text, object_hook=hook)``, its reference: on every text it parses,
the same tree (types, key order, float bits) and the same hook calls in the same order;
an exception the hook raises comes out as it is; every other text it leaves to the stdlib
(it never refuses one itself)."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest

from streamweights import _native
from streamweights.adapters import state_codec
from tests.fuzzing import FRAGMENTS, mutate, number_literal

GAVE_UP = object()


class _Hooked(tuple):
    """What the test hook makes of an object it is given (so a misplaced call shows)."""


def _hook_for(calls: list):
    """A hook acting, as the snapshot hooks do, only on objects with a key starting with
    ``__``: it records them, raises for ``__raise__`` and returns a marked copy."""

    def hook(value: dict):
        if not any(key.startswith("__") for key in value):
            return value
        calls.append(list(value.items()))
        if "__raise__" in value:
            raise ValueError(f"hook refuses {value['__raise__']!r}")
        return _Hooked(value.items())

    return hook


def _same(left, right) -> bool:
    """Equal, strictly: the same types all the way down, dict keys in the same order,
    floats with the same bits."""
    if type(left) is not type(right):
        return False
    if type(left) is float:
        return struct.pack("<d", left) == struct.pack("<d", right)
    if type(left) is dict:
        return list(left) == list(right) and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(_same, left, right))
    return left == right


def _reference(text: bytes):
    calls: list = []
    try:
        return ("tree", json.loads(text, object_hook=_hook_for(calls)), calls)
    except Exception as error:  # the reference's outcome, whatever it is
        return ("error", type(error), str(error), calls)


def _core(text: bytes):
    calls: list = []
    try:
        tree = _native.loads_hooked(text, _hook_for(calls), GAVE_UP)
    except Exception as error:
        return ("error", type(error), str(error), calls)
    if tree is GAVE_UP:
        return None
    return ("tree", tree, calls)


def _check(text: bytes) -> bool:
    """The core's outcome on ``text`` is the reference's; True if the core parsed it."""
    core = _core(text)
    if core is None:
        return False
    reference = _reference(text)
    if core[0] == "tree":
        assert reference[0] == "tree", (text[:200], reference)
        assert _same(core[1], reference[1]), text[:200]
        assert _same(core[2], reference[2]), text[:200]
    else:  # the hook raised: the reference raises it too, at the same object
        assert core[1:] == reference[1:], (text[:200], core, reference)
    return True


def _random_value(rng: random.Random, depth: int = 0):
    strings = ["", "a", "__nd__", "__f8__", "__raise__", "__x", "_y", "é", "\u2028", "\x00",
               "tab\there", 'quote"', "back\\slash", "\U0001f600", "\ud7ff", "\ue000",
               "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(8)))]
    draw = rng.random()
    if depth < 5 and draw < 0.25:
        return {rng.choice(strings): _random_value(rng, depth + 1)
                for _ in range(rng.randrange(5))}
    if depth < 5 and draw < 0.45:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    leaves = [  # (a leaf, its weight): the ones the core leaves to the stdlib are rare
        (lambda: rng.choice(strings), 10), (lambda: rng.randrange(-10**6, 10**6), 10),
        (lambda: rng.choice([0, -1, 2**63 - 1, -2**63, 10**18 - 1, -(10**18) + 1]), 3),
        (lambda: rng.choice([10**18, 10**19, 2**70]), 1),  # more than 18 digits
        (lambda: rng.uniform(-1e3, 1e3), 10),
        (lambda: struct.unpack("<d", rng.randbytes(8))[0], 3),  # NaN now and then
        (lambda: rng.choice([0.0, -0.0, 5e-324, 1.7976931348623157e308, 1e-7, 1e16]), 5),
        (lambda: rng.choice([True, False, None]), 5)]
    return rng.choices([leaf for leaf, _ in leaves], [w for _, w in leaves])[0]()


def _texts(rng: random.Random):
    """JSON texts as the stdlib writes them (ASCII or not, spaced or not, NaN and
    infinities left in), then damaged by the record fuzzer's edits."""
    value = _random_value(rng)
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5,
                      indent=rng.choice([None, None, 0, 2, "\t"]),
                      separators=rng.choice([None, (",", ":"), (" , ", " : ")]))
    raw = text.encode("utf-8", "surrogatepass")
    yield raw
    for _ in range(3):
        yield mutate(raw, rng)


def test_random_documents_parse_as_the_stdlib_parses_them():
    """8,000 texts: random documents in every spelling the stdlib writes, and three
    damaged copies of each. Most are the core's to parse (else this would test the
    fallback alone), the rest are left to the stdlib, none decided otherwise."""
    rng = random.Random(3)
    parsed = {"written": 0, "damaged": 0}
    for _ in range(2000):
        for index, text in enumerate(_texts(rng)):
            parsed["damaged" if index else "written"] += _check(text)
    assert 1600 < parsed["written"] < 2000 and 300 < parsed["damaged"] < 6000, parsed


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=repr)
def test_fuzzer_fragments_inside_documents(fragment):
    """Each of the record fuzzer's fragments (NaN, infinities, big integers, lone
    surrogates, a byte-order mark, invalid UTF-8, deep nesting) where a value, a key, a
    string's inside or the whole text would be."""
    for text in (fragment, b"[" + fragment + b"]", b'{"k":' + fragment + b"}",
                 b'{"' + fragment + b'":1}', b'["a' + fragment + b'b"]',
                 b'{"__nd__":' + fragment + b"}", b" " + fragment + b" ",
                 fragment + b'{"a":1}', b'{"a":1}' + fragment):
        _check(text)


def test_numbers_in_every_spelling():
    """5,000 number literals as JSON spells them or nearly (signs, leading zeros, long
    fractions, every exponent form, invalid neighbours): same ints, same float bits."""
    rng = random.Random(9)
    parsed = 0
    for _ in range(5000):
        literal = number_literal(rng)
        parsed += _check(literal)
        _check(b"[" + literal + b"," + literal + b"]")
    assert parsed > 2500
    for exact in (b"1e400", b"-1e400", b"1e-400", b"2.4703282292062328e-324",
                  b"179769313486231580793728971405301e276", b"0.1e-999999999999999999999",
                  b"1" + b"0" * 17, b"-" + b"9" * 18, b"1" * 5000 + b".5", b"0." + b"3" * 800):
        assert _check(exact), exact  # all read by the core: inf, subnormals, long digits
    for wide in (b"1" + b"0" * 18, b"-" + b"9" * 19, b"1" * 5000):
        assert not _check(wide), wide  # integers past 18 digits: the stdlib's


def test_escapes_and_surrogates():
    """Every escape; surrogate pairs are one character; a lone surrogate (which the
    stdlib keeps) and a raw control character (which it refuses) are left to it."""
    for text, core_parses in (
            (rb'["\"\\\/\b\f\n\r\t"]', True), (rb'["\u00e9\u2028\uFFFF\u0000"]', True),
            (rb'["\ud83d\ude00"]', True), (rb'["\ud83d"]', False), (rb'["\ude00"]', False),
            (rb'["\ud83d\u0041"]', False), (rb'["\ud83dx"]', False), (rb'["\x"]', False),
            (rb'["\u12"]', False), (b'["a\x01b"]', False), (b'["a\x7fb"]', True),
            (b'["\xed\xa0\x80"]', False), (b'["\xff"]', False), (b'["caf\xc3\xa9"]', True),
            (rb'{"\u005f_nd__":1}', True), (b'\xef\xbb\xbf{"a":1}', False),
            (b'{"a":1}\x00', False), (b'\x00{"a":1}', False), (b'{\x00"a":1}', False)):
        assert _check(text) is core_parses, text


def test_strings_of_every_length_keys_and_values_alike():
    """Keys and string values of 0 to 80 characters (one- to four-byte UTF-8, texts that
    share their first or last 8 bytes, a text and its own prefix), each written several
    times as keys and as values, and ``0.0`` beside its look-alikes: the reference's tree.
    Short texts without escapes are made once per parse and shared (a key and a value
    of the same text are one str); floats read ``0.0`` as one float, ``-0.0`` apart."""
    rng = random.Random(5)
    texts = []
    for length in range(81):
        for alphabet in ("ab", "aé", "a\u2028", "a\U0001f600"):
            texts.append("".join(rng.choice(alphabet) for _ in range(length)))
    texts += ["x" * 9 + "same-end", "y" * 9 + "same-end", "same-start" + "x" * 9,
              "same-start" + "y" * 9, "prefix", "prefix!", "__nd__", "__nd_", "__"]
    for ensure_ascii in (False, True):
        for chunk in range(0, len(texts), 40):
            part = texts[chunk:chunk + 40]
            document = [{text: [text, text, 0.0, -0.0, 0.00, 1.0] for text in part},
                        {text: text for text in reversed(part)}, part, part]
            text = json.dumps(document, ensure_ascii=ensure_ascii).encode()
            text = text.replace(b"0.0, -0.0, 0.0, 1.0", b"0.0, -0.0, 0.00, 0.0e0")
            assert text.count(b"0.00, 0.0e0") == len(document[0])
            assert _check(text), text[:200]
            tree = _native.loads_hooked(text, lambda value: value, GAVE_UP)
            for index, text_value in enumerate(part):
                if len(text_value.encode()) <= 64 and not ensure_ascii:
                    assert tree[2][index] is tree[3][index], text_value
                zero, minus_zero, other_zero, exponent_zero = tree[0][text_value][2:]
                assert zero is tree[0][part[0]][2]
                assert struct.pack("<d", minus_zero) != struct.pack("<d", zero)
                assert other_zero == exponent_zero == 0.0


def test_deep_nesting_is_left_to_the_stdlib():
    assert _check(b"[" * 200 + b"]" * 200)
    assert not _check(b"[" * 201 + b"]" * 201)
    assert not _check(b"[" * 100_000 + b"]" * 100_000)  # the stdlib: RecursionError
    with pytest.raises(RecursionError):  # what loading a state says to such a text
        state_codec.loads_state(b"[" * 100_000 + b"]" * 100_000)


def test_the_hook_runs_where_the_stdlib_runs_it_and_its_error_comes_out():
    text = b'[{"__a":1},{"b":{"__raise__":"inner"},"c":{"__b":2}},{"__c":3}]'
    core, reference = _core(text), _reference(text)
    assert core[0] == "error" and core[1:] == reference[1:]
    assert core[1] is ValueError and "hook refuses 'inner'" in core[2]
    assert core[3] == [[("__a", 1)], [("__raise__", "inner")]]  # stopped there
    # a repeated key: its first place, its last value, the hook sees the final object
    assert _check(b'{"__x":1,"a":2,"__x":3}')
    assert _native.loads_hooked(b'{"a":1,"b":2,"a":3}', _hook_for([]), GAVE_UP) == \
        {"a": 3, "b": 2}


def test_marker_checks_are_the_same_with_the_dtype_cache():
    """``_packed_array`` checks a dtype string once and keeps it: the cached answer is
    the first one, refusals are not kept, and the cache stays bounded."""
    for _ in range(2):
        assert state_codec._packed_array(["<f8", [2, 3]]) == (np.dtype("<f8"), (2, 3))
        with pytest.raises(ValueError, match=r"shape \[2, -1\] cannot be"):
            state_codec._packed_array(["<f8", [2, -1]])
        with pytest.raises(ValueError, match=r"shape \[1\.0\] cannot be"):
            state_codec._packed_array(["<f8", [1.0]])
        with pytest.raises(ValueError, match=r"dtype \|O and shape"):
            state_codec._packed_array(["|O8", [1]])
        for bad in (["<f8,", [1]], ["<f8"], ["<f8", 3], [8, [1]], "x"):
            with pytest.raises(ValueError, match="was not written by pack_state"):
                state_codec._packed_array(bad)
    for size in range(1, 300):
        state_codec._packed_array([f"|V{size}", [1]])
    assert len(state_codec._DTYPES) <= state_codec._DTYPES_MAX
