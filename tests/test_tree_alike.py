"""The core's fast config comparison (``_native.plainly_alike``, used by
``state_codec.encodes_alike`` on every snapshot load) against its Python reference below:
the same answer on random config-like trees and on every way two trees can differ that a
fast walk could get wrong (types, signs of zero, NaNs, lists vs tuples, subclasses, key
order, missing keys, non-string keys, arrays, depth); and whenever it says alike, the
sorted encodings really are equal."""

from __future__ import annotations

import copy
import math
import random

import numpy as np

from streamweights import _native
from streamweights.adapters.state_codec import dumps_state

_MISSING = object()


def reference_alike(left, right) -> bool:
    """The Python walk the core replaced, kept as the reference."""
    kind = type(left)
    if kind is not type(right):
        return False
    if kind is dict:
        if len(left) != len(right):
            return False
        for key, value in left.items():
            if type(key) is not str:
                return False
            other = right.get(key, _MISSING)
            if other is _MISSING or not reference_alike(value, other):
                return False
        return True
    if kind is list or kind is tuple:
        return len(left) == len(right) and all(map(reference_alike, left, right))
    if kind is float:
        if left == right:
            return left != 0.0 or math.copysign(1.0, left) == math.copysign(1.0, right)
        return math.isnan(left) and math.isnan(right)
    if kind is str or kind is int or kind is bool or left is None:
        return left == right
    return False


class _Text(str):
    pass


class _Number(float):
    pass


class _Mapping(dict):
    pass


#: Leaves a config can hold, and some it cannot, each a different encoding or type.
LEAVES = [0, 1, -1, 2**80, 1.0, 0.0, -0.0, 1.5, 1e-300, math.inf, -math.inf,
          float("nan"), -float("nan"), True, False, None, "", "a", "é", "1", _Text("a"),
          _Number(1.5), np.float64(1.5), np.int64(1), np.ones(2)]


def random_tree(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        return rng.choice(LEAVES)
    if roll < 0.75:
        return {rng.choice("abcdefg"): random_tree(rng, depth + 1)
                for _ in range(rng.randrange(0, 5))}
    items = [random_tree(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return items if roll < 0.9 else tuple(items)


def changed(rng: random.Random, tree):
    """A copy of ``tree`` with one change somewhere (or none, now and then)."""
    roll = rng.random()
    if type(tree) is dict and tree and roll < 0.7:
        key = rng.choice(list(tree))
        out = dict(tree)
        pick = rng.random()
        if pick < 0.6:
            out[key] = changed(rng, tree[key])
        elif pick < 0.7:
            del out[key]
        elif pick < 0.8:
            out = dict(reversed(list(out.items())))  # key order only: still alike
        elif pick < 0.9:
            out[rng.choice([1, "zz", 2.5])] = 0
        else:
            out = _Mapping(out)
        return out
    if type(tree) in (list, tuple) and tree and roll < 0.7:
        items = list(tree)
        at = rng.randrange(len(items))
        pick = rng.random()
        if pick < 0.7:
            items[at] = changed(rng, items[at])
        elif pick < 0.85:
            items.pop(at)
        else:
            return tuple(items) if type(tree) is list else items
        return type(tree)(items)
    if roll < 0.5:
        return copy.deepcopy(tree)
    return rng.choice(LEAVES)


def test_the_core_answers_as_the_reference_on_random_trees():
    rng = random.Random(20261204)
    answers = {True: 0, False: 0}
    for _ in range(20_000):
        left = random_tree(rng)
        right = changed(rng, left) if rng.random() < 0.8 else random_tree(rng)
        for a, b in ((left, right), (right, left)):
            expected = reference_alike(a, b)
            assert _native.plainly_alike(a, b) is expected, (a, b)
            answers[expected] += 1
            if expected:  # "alike" must be certain: the sorted encodings agree
                assert dumps_state(a, sort_keys=True) == dumps_state(b, sort_keys=True)
    assert min(answers.values()) > 2_000, answers


def test_each_difference_a_fast_walk_could_miss():
    pairs = [(1, 1.0), (1, True), (0, False), (0.0, -0.0), (-0.0, -0.0), (None, 0),
             ("1", 1), ("a", _Text("a")), (1.5, _Number(1.5)), (1.5, np.float64(1.5)),
             (float("nan"), -float("nan")), (float("nan"), 1.0), (math.inf, -math.inf),
             (2**80, 2**80), (2**80, 2**80 + 1), ([1, 2], (1, 2)), ([], []), ((), ()),
             ({}, {}), ({"a": 1}, _Mapping(a=1)), ({"a": 1}, {"b": 1}),
             ({"a": 1}, {"a": 1, "b": 2}), ({1: 1}, {1: 1}), ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
             (np.ones(2), np.ones(2)), ("é", "é"), ("\ud800", "\ud800")]
    for left, right in pairs:
        for a, b in ((left, right), (right, left)):
            assert _native.plainly_alike(a, b) is reference_alike(a, b), (a, b)
            wrapped = ({"x": [a, {"y": a}]}, {"x": [b, {"y": b}]})
            assert _native.plainly_alike(*wrapped) is reference_alike(*wrapped), wrapped


def test_deep_trees_are_left_to_the_encodings():
    """Past 200 levels the core says "not certainly" (its stack stays bounded); below,
    it walks them as the reference does."""
    def nested(levels: int):
        tree: object = 1.5
        for level in range(levels):
            tree = {"k": tree} if level % 2 else [tree]
        return tree

    assert _native.plainly_alike(nested(150), nested(150)) is True
    assert _native.plainly_alike(nested(150), nested(151)) is False
    assert _native.plainly_alike(nested(5_000), nested(5_000)) is False
