"""Bit-exact JSON encoding of adapter state.

``Adapter.state_dict()`` returns plain Python values plus numpy arrays. To store it as
JSON (snapshots, changelog topics) every numpy array becomes::

    {"__ndarray__": "<base64 of the raw little-endian bytes>", "dtype": "<f8", "shape": [3, 3]}

and numpy scalars become Python numbers. Python floats survive JSON unchanged (``repr``
round-trips float64 exactly), big integers (random-generator states) stay integers, and
arrays keep every bit because their bytes are copied, not printed. ``decode_state``
reverses the mapping. Dict keys must be strings.

``pack_state`` / ``unpack_state`` write the same trees more compactly and faster (all the
arrays' and long float lists' bytes in one base64 string beside a JSON skeleton): the form
stream records use for a stream's state and for each of the join's waiting predictions.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
import orjson

from streamweights import _native

_ARRAY_TAG = "__ndarray__"
#: A dtype as ``dtype.str`` writes one of an array these forms hold (byte order, kind,
#: size, a datetime unit): anything else where a dtype is read is refused before numpy
#: parses it (numpy reads "<f8," as a structured dtype through ``ast.literal_eval``: a
#: damaged snapshot raised SyntaxError).
_TYPESTR = re.compile(r"[<>|=][a-zA-Z][0-9]{1,9}(\[[0-9]{0,4}[a-zA-Z]{1,2}\])?")


def encode_state(tree: Any) -> Any:
    """Turn a state tree into JSON-able values (arrays -> tagged base64 dicts)."""
    if isinstance(tree, np.ndarray):
        array = np.asarray(tree, order="C")
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        array = array.astype(dtype, copy=False)
        if array.dtype == object:
            raise ValueError("state: object arrays cannot be encoded")
        return {_ARRAY_TAG: base64.b64encode(array.tobytes()).decode("ascii"),
                "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(tree, dict):
        encoded = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ValueError(f"state: dict keys must be strings, got {key!r}")
            encoded[key] = encode_state(value)
        return encoded
    if isinstance(tree, list | tuple):
        return [encode_state(value) for value in tree]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise ValueError(f"state: cannot encode value of type {type(tree).__name__}")


def decode_state(tree: Any) -> Any:
    """Inverse of :func:`encode_state`."""
    if isinstance(tree, dict):
        if _ARRAY_TAG in tree:
            return _decode_object(tree)
        return {key: decode_state(value) if isinstance(value, dict | list) else value
                for key, value in tree.items()}
    if isinstance(tree, list):
        # only containers are descended into: a long list of numbers costs a type test
        # per item, not a call
        return [decode_state(value) if isinstance(value, dict | list) else value
                for value in tree]
    return tree


def _encode_leaf(value: Any) -> Any:
    """``json.dumps`` hook: the values JSON has no type for (arrays, numpy scalars)."""
    if isinstance(value, np.ndarray | np.generic):
        return encode_state(value)
    raise ValueError(f"state: cannot encode value of type {type(value).__name__}")


def _check_keys(tree: Any) -> None:
    """Refuse non-string dict keys anywhere in ``tree``. Only containers are descended
    into, so long lists of numbers cost one type test per item, not a call."""
    containers = dict, list, tuple
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ValueError(f"state: dict keys must be strings, got {key!r}")
            if isinstance(value, containers):
                _check_keys(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            if isinstance(value, containers):
                _check_keys(value)


def dumps_state(tree: Any, *, sort_keys: bool = False) -> str:
    """Encode a state tree as compact JSON, keys in the tree's own order.

    Key order is kept, not sorted, so ``loads_state(dumps_state(s))`` rebuilds dicts in
    the order they were made: a published weights record kept in a snapshot encodes to
    the same bytes after a restore as before it (with sorted keys it did not). Pass
    ``sort_keys=True`` to compare two trees regardless of how their dicts were built.

    The same text as ``json.dumps(encode_state(tree), ...)``, but the C encoder walks the
    tree and only calls back for arrays and numpy scalars (about 4x faster on a stream's
    state with a few hundred pending predictions; snapshots are taken every checkpoint).
    """
    _check_keys(tree)  # json.dumps would quietly turn 1 into "1": not a round trip
    return json.dumps(tree, sort_keys=sort_keys, separators=(",", ":"), allow_nan=True,
                      default=_encode_leaf)


def encodes_alike(left: Any, right: Any) -> bool:
    """``dumps_state(left, sort_keys=True) == dumps_state(right, sort_keys=True)``: the
    test a snapshot's stored config passes against the adapter's (on every load, at each
    nesting level). Trees of plain values are compared as they are, ~5x faster than
    encoding both; anything else (arrays, other types, a difference) is settled by the
    encodings, so the answer, strictness included (1 vs 1.0, 0.0 vs -0.0), is theirs."""
    return _plainly_alike(left, right) or (
        dumps_state(left, sort_keys=True) == dumps_state(right, sort_keys=True))


#: True when two trees of dicts (string keys), lists, tuples, strings, ints, floats, bools
#: and None certainly encode alike: the same structure, leaves of the same type and value,
#: floats alike in sign (0.0, -0.0) and all NaNs alike (JSON writes ``NaN``). False means
#: "not certainly". In the core (``native/src/tree_alike.rs``): the walk in Python took
#: ~8% of restoring a young default-config stream.
_plainly_alike = _native.plainly_alike


def loads_state(text: str | bytes) -> Any:
    """Decode a JSON string written by :func:`dumps_state`: ``decode_state(json.loads(
    text))``, with each tagged array decoded as the parser closes its object, so the tree
    is not walked again in Python (the walk over long lists of numbers was most of the
    time to restore a default stream from a snapshot chain)."""
    tree = _core_loads(text, _decode_object)
    return json.loads(text, object_hook=_decode_object) if tree is _UNUSUAL else tree


def _core_loads(text: str | bytes, hook: Callable[[dict[str, Any]], Any],
                slots: list | None = None, limit: int | None = None) -> Any:
    """``json.loads(text, object_hook=hook)`` by the core, for UTF-8 bytes (~2-3x faster:
    it calls ``hook`` only for objects with a key starting with ``__``, which is where
    this module's hooks act), or ``_UNUSUAL`` for a text it leaves to the stdlib parser
    (see ``native/src/json_tree.rs``), which the caller then runs from the start. With
    ``slots`` (a ``PackedSlots``' list), the usual packed markers (float lists, arrays of
    the numeric dtypes a state holds, in native order) become slots in the core,
    appended there as ``PackedSlots.hook`` appends them, not hook calls
    (``native/src/packed_slots.rs``), naming at most ``limit`` bytes (default: the
    text's length)."""
    if type(text) is not bytes:
        return _UNUSUAL
    return _native.loads_hooked(text, hook, _UNUSUAL, slots, limit)


def _decode_object(value: dict[str, Any]) -> Any:
    """One parsed JSON object: the array it tags, or itself."""
    if _ARRAY_TAG in value:
        dtype = value.get("dtype")
        if type(dtype) is not str or not _TYPESTR.fullmatch(dtype):
            raise ValueError(f"state: a tagged array of dtype {str(dtype)[:40]!r} was not "
                             "written by encode_state")
        raw = base64.b64decode(value[_ARRAY_TAG])
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(value["shape"]).copy()
    return value


# -- Packed form: one byte string for all of a tree's arrays -------------------------------
#
# A tree written this way is two texts: its *skeleton*, the compact JSON of the tree with
# every array replaced by ``{"__nd__": [dtype, shape]}`` and every list of at least
# ``_FLOATS_MIN`` Python floats by ``{"__f8__": length}``, and the base64 of all those
# arrays' and lists' bytes (arrays in C order, each in its own dtype, byte order included;
# float lists as little-endian float64) one after the other, in the order the skeleton
# names them (depth first, dict keys in their order). Encoding a tree of small arrays this
# way costs one base64 for the lot instead of a tagged dict and a base64 per array, a long
# list of floats costs a copy instead of a ``repr`` per float (a DriftMemory's evidence
# window: 500 of them), and a tree whose arrays have the same dtypes, shapes and keys as
# one packed before reuses that one's skeleton text (the join's waiting predictions all
# look alike). Decoding gives back the same tree as ``loads_state(dumps_state(tree))``:
# same keys in the same order, arrays with the same dtype, shape and bits, float lists as
# lists of the same floats, numpy scalars as Python numbers, tuples as lists. A dict of
# one key named like a marker is refused (it would read back as an array).

_PACKED_TAG = "__nd__"
_FLOATS_TAG = "__f8__"
_TAGS = frozenset((_PACKED_TAG, _FLOATS_TAG))
#: Shorter float lists stay JSON (their marker would be about as long as the numbers).
_FLOATS_MIN = 4
_FLOAT64_LE = np.dtype("<f8")
#: Values written as they are, without a look inside.
_PLAIN = frozenset((str, int, float, bool, type(None)))
_FLOAT_ONLY = frozenset((float,))
_LIST_ONLY = frozenset((list,))
#: Skeletons kept by structure (see ``pack_state``); a handful per stream configuration.
#: Cleared when it grows past this, so odd shapes cannot grow it without bound.
_SKELETONS_MAX = 1024
_skeletons: dict[tuple[Any, ...], str] = {}


class _NonFiniteError(Exception):
    """A NaN or infinity among a tree's plain floats: orjson would write it as ``null``,
    so the skeleton is written by ``json`` instead (see ``_packed_skeleton``)."""


def _check_floats(values: Any) -> None:
    """Raise _NonFiniteError if a float among ``values`` is NaN or infinite (``x - x`` is 0.0
    for a finite one, NaN otherwise)."""
    for value in values:
        if type(value) is float and value - value:
            raise _NonFiniteError


def _marked(tree: Any, arrays: list[np.ndarray], finite: bool = True) -> Any:
    """A copy of ``tree`` with its arrays and long float lists replaced by their markers
    (appended to ``arrays`` in order) and numpy scalars by Python numbers; refuses
    non-string dict keys (``json.dumps`` would quietly turn 1 into "1"). With ``finite``
    raises _NonFiniteError on a plain float that is NaN or infinite (packed ones may be)."""
    if isinstance(tree, dict):
        if len(tree) == 1 and next(iter(tree)) in _TAGS:
            raise ValueError(f"state: a dict of the one key {next(iter(tree))!r} cannot be "
                             "packed (it is the packed form's marker)")
        marked = {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ValueError(f"state: dict keys must be strings, got {key!r}")
            kind = type(value)
            if kind is float:
                if finite and value - value:
                    raise _NonFiniteError
                marked[key] = value
            else:
                marked[key] = value if kind in _PLAIN else _marked(value, arrays, finite)
        return marked
    if isinstance(tree, list | tuple):
        kinds = set(map(type, tree))
        if not kinds <= _PLAIN and any(issubclass(kind, np.generic) for kind in kinds):
            # numpy scalars as the Python numbers they read back as, first: the choice
            # to pack must be the same for the list a restore reads back (determinism)
            tree = [value.item() if isinstance(value, np.generic) else value
                    for value in tree]
            kinds = set(map(type, tree))
        if kinds <= _PLAIN:  # (a list of numbers, strings: as it is, or packed if floats)
            if len(tree) >= _FLOATS_MIN and kinds == _FLOAT_ONLY:
                arrays.append(np.array(tree, dtype=_FLOAT64_LE))
                return {_FLOATS_TAG: len(tree)}
            if finite and float in kinds:
                _check_floats(tree)
            return tree
        if kinds == _LIST_ONLY:  # rows (a ring of pairs): short plain rows without a call
            if max(map(len, tree)) < _FLOATS_MIN:
                row_kinds = set(map(type, chain.from_iterable(tree)))
                if row_kinds <= _PLAIN:
                    if finite and float in row_kinds:
                        _check_floats(chain.from_iterable(tree))
                    return tree  # every row short and plain: kept as it is, as below, in C
            rows = []
            for row in tree:
                row_kinds = set(map(type, row))
                if row_kinds <= _PLAIN and (len(row) < _FLOATS_MIN
                                            or row_kinds != _FLOAT_ONLY):
                    if finite and float in row_kinds:
                        _check_floats(row)
                    rows.append(row)
                else:
                    rows.append(_marked(row, arrays, finite))
            return rows
        if finite and float in kinds:
            _check_floats(tree)
        return [value if type(value) in _PLAIN else _marked(value, arrays, finite)
                for value in tree]
    if type(tree) is PackedPart:
        return _marked(tree.tree, arrays, finite)  # (the same tree, the long way)
    if isinstance(tree, np.ndarray):
        if tree.dtype.hasobject or tree.dtype.fields is not None:
            raise ValueError("state: object and structured arrays cannot be packed")
        arrays.append(tree)
        return {_PACKED_TAG: [tree.dtype.str, list(tree.shape)]}
    if isinstance(tree, np.generic):
        tree = tree.item()
    if finite and type(tree) is float and tree - tree:
        raise _NonFiniteError
    return tree  # anything else: the encoder calls _refuse


def _marked_usual(tree: Any, arrays: list[np.ndarray]) -> Any:
    """``_marked(tree, arrays)``, by the core for the usual trees (exact dicts, lists,
    tuples, arrays of numbers, plain finite leaves: ~15x faster); any other tree, and any
    refusal or non-finite float, by :func:`_marked` itself from the start."""
    start = len(arrays)
    marked = _native.mark_packed(tree, arrays, _UNUSUAL, PackedPart)
    if marked is _UNUSUAL:
        del arrays[start:]
        return _marked(tree, arrays)
    return marked


_UNUSUAL = object()


def _refuse(value: Any) -> Any:
    raise ValueError(f"state: cannot encode value of type {type(value).__name__}")


#: orjson writes these natively where ``json`` would call ``default``: pass them to it
#: too, so that both refuse the same values.
_ORJSON_STRICT = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
                  | orjson.OPT_PASSTHROUGH_SUBCLASS)


class PackedPart:
    """A part of a state tree packed once, written as it is wherever a tree holds it: an
    adapter's config, the same at every commit of its stream, was ~20% of writing a
    stream's record when built, copied, marked and written again each time
    (``Adapter.state_dict`` inside ``configs_packed``). ``pack_state`` writes the same
    bytes for a tree holding it as for one holding ``tree`` itself."""

    __slots__ = ("arrays", "text", "tree")

    def __init__(self, tree: Any, text: orjson.Fragment, arrays: tuple[np.ndarray, ...]):
        self.tree = tree
        #: Its skeleton text, as ``_packed_skeleton`` writes it with orjson.
        self.text = text
        #: Its arrays and long float lists, in order (their bytes follow the ones before).
        self.arrays = arrays

    # Never changed once made, so a copy is itself (an adapter's state copied whole
    # inside ``configs_packed`` holds its parts' configs); pickled, it is made again from
    # its tree (orjson's Fragment does not pickle).
    def __copy__(self) -> PackedPart:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedPart:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return _part_again, (self.tree,)


def _part_again(tree: Any) -> PackedPart | Any:
    """A pickled ``PackedPart`` read back: the part of its tree (or the tree itself, if
    this build does not pack it)."""
    part = packed_part(tree)
    return tree if part is None else part


def packed_part(tree: Any) -> PackedPart | None:
    """``tree`` packed now, to be written as it is later; None when the core's pass does
    not take it (a NaN, a value only the Python pass writes): such a tree is written
    with its state each time, as before. Parts that pack alike are one object (the
    streams of a replica share their configs): kept once each, a part made in the midst
    of a commit's passing garbage held the memory around it (~120 KB a stream)."""
    arrays: list[np.ndarray] = []
    marked = _native.mark_packed(tree, arrays, _UNUSUAL, PackedPart)
    if marked is _UNUSUAL:
        return None
    try:
        text = _skeleton_text(marked)
    except (orjson.JSONEncodeError, ValueError):
        return None
    # (the text names each array's dtype and shape, so their bytes complete the key)
    key = (text, *[array.tobytes() for array in arrays])
    part = _parts.get(key)
    if part is None:
        kept = []
        for array in arrays:  # copies (an array the config holds stays its own), shared
            copied = array.copy()
            copied.flags.writeable = False
            kept.append(copied)
        # (its tree a copy too: a list the config holds may be changed by its owner)
        part = PackedPart(copy.deepcopy(tree), orjson.Fragment(text), tuple(kept))
        if len(_parts) >= _PARTS_MAX:
            _parts.clear()
        _parts[key] = part
    return part


#: Parts made so far, by text and array bytes (a few per stream configuration; cleared
#: when it grows past the bound, so configs of every kind cannot grow it without bound).
_PARTS_MAX = 4096
_parts: dict[tuple[bytes, ...], PackedPart] = {}


def _skeleton_text(marked: Any) -> bytes:
    """A marked tree's skeleton as orjson writes it: one place for its options, so a
    part packed before (``packed_part``) is the very text the tree holding it would
    have had."""
    return orjson.dumps(marked, default=_refuse, option=_ORJSON_STRICT)


def _packed_skeleton(tree: Any, arrays: list[np.ndarray]) -> str:
    """The skeleton text of ``tree``, appending its arrays to ``arrays`` in order.

    Written by orjson (a tenth of ``json``'s time on a stream's state: 0.7 ms of a default
    config stream's 3.9 ms record) when every plain float is finite; by ``json`` (which
    writes ``NaN`` and ``Infinity``, read back by ``json.loads``) when one is not, or
    when orjson refuses a value (an int beyond 64 bits, a lone surrogate, a type
    ``_refuse`` names). The two texts differ in spelling only (``0.00001`` / ``1e-05``,
    raw UTF-8 / ``\\u`` escapes): both read back as the same tree, and the same tree
    always takes the same path (deterministic)."""
    start = len(arrays)
    try:
        return _skeleton_text(_marked_usual(tree, arrays)).decode("utf-8")
    except (_NonFiniteError, orjson.JSONEncodeError):
        del arrays[start:]
    return json.dumps(_marked(tree, arrays, finite=False), separators=(",", ":"),
                      allow_nan=True, default=_refuse)


def pack_state(tree: Any) -> tuple[str, str]:
    """``(skeleton, data)``: ``tree`` in packed form (see above); ``data`` is base64
    (:func:`pack_state_raw`'s bytes, for a text that must hold them: the join's waiting
    predictions)."""
    skeleton, raw = pack_state_raw(tree)
    return skeleton, b2a_base64(raw, newline=False).decode("ascii")


def pack_state_raw(tree: Any) -> tuple[str, bytes]:
    """``(skeleton, data)``: ``tree`` in packed form (see above), ``data`` the arrays'
    bytes themselves, for a record that carries them beside its text (a stream record:
    base64 took ~130 µs of writing a mature stream's ~740 µs record and ~400 µs of
    reading it back).

    Fast path for what the join holds, a dict whose values are arrays or lists of arrays:
    its structure (keys, dtypes, shapes) is looked up among the skeletons made before, so
    the cost is a few attribute reads and one copy of the arrays' bytes (about 2 µs for
    the demo chain's 5 arrays against 15 µs as tagged JSON)."""
    arrays: list[np.ndarray] = []
    key: list[Any] = []
    ndarray = np.ndarray
    add_array, add_key = arrays.append, key.append
    if type(tree) is dict:
        for name, value in tree.items():
            add_key(name)
            if type(value) is ndarray:
                add_array(value)
                add_key(value.dtype)
                add_key(value.shape)
            elif type(value) is list:
                add_key(len(value))
                for item in value:
                    if type(item) is not ndarray:
                        break
                    add_array(item)
                    add_key(item.dtype)
                    add_key(item.shape)
                else:
                    continue
                key = []
                break
            else:
                key = []
                break
    if key:
        structure = tuple(key)
        skeleton = _skeletons.get(structure)
        if skeleton is None:
            skeleton = _packed_skeleton(tree, [])
            if len(_skeletons) >= _SKELETONS_MAX:
                _skeletons.clear()
            _skeletons[structure] = skeleton
    else:
        arrays = []
        skeleton = _packed_skeleton(tree, arrays)
    return skeleton, _native.packed_bytes(arrays)


def _packed_array(spec: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape a ``{"__nd__": [dtype, shape]}`` marker names, or ValueError.
    A dtype string is checked and made once (a young stream's record names ~40 arrays
    of two or three dtypes; checking each took ~0.9 us of the ~1.6 us its marker cost)."""
    if type(spec) is list and len(spec) == 2:
        code, shape = spec
        if type(code) is str and type(shape) is list:
            dtype = _DTYPES.get(code)
            if dtype is None and _TYPESTR.fullmatch(code):
                dtype = np.dtype(code)
                if len(_DTYPES) >= _DTYPES_MAX:
                    _DTYPES.clear()
                _DTYPES[code] = dtype
            if dtype is not None:
                if not dtype.hasobject:
                    for n in shape:
                        if type(n) is not int or n < 0:
                            break
                    else:
                        return dtype, tuple(shape)
                raise ValueError(f"state: a packed array of dtype {dtype.str} and "
                                 f"shape {shape} cannot be (not written by pack_state)")
    raise ValueError(f"state: a packed array marker {str(spec)[:80]} was not written "
                     "by pack_state")


#: Dtype strings of packed arrays already checked, and their dtypes; cleared when it
#: grows past the bound (damaged records may name any number of odd ones).
_DTYPES: dict[str, np.dtype] = {}
_DTYPES_MAX = 64


def _packed_floats(count: Any) -> int:
    """The length a ``{"__f8__": length}`` marker names, or ValueError."""
    if type(count) is not int or count < 0:
        raise ValueError(f"state: a packed float list of length {count!r} "
                         "cannot be (not written by pack_state)")
    return count


def unpack_state(skeleton: Any, data: str) -> Any:
    """The tree packed as ``(skeleton, data)`` by :func:`pack_state`, ``skeleton`` already
    parsed from its JSON. ValueError if the arrays' bytes do not fit the skeleton."""
    raw = a2b_base64(data)
    offset = 0

    def take(dtype: np.dtype, count: int) -> np.ndarray:
        nonlocal offset
        size = dtype.itemsize * count
        if offset + size > len(raw):
            raise ValueError(f"state: packed arrays end at byte {len(raw)}, an array of "
                             f"{size} bytes starts at {offset}")
        array = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
        offset += size
        return array

    def walk(tree: Any) -> Any:
        if isinstance(tree, dict):
            if len(tree) == 1:
                if _PACKED_TAG in tree:
                    dtype, shape = _packed_array(tree[_PACKED_TAG])
                    return take(dtype, math.prod(shape)).reshape(shape).copy()
                if _FLOATS_TAG in tree:
                    return take(_FLOAT64_LE, _packed_floats(tree[_FLOATS_TAG])).tolist()
            return {key: walk(value) if isinstance(value, dict | list) else value
                    for key, value in tree.items()}
        if isinstance(tree, list):
            return [walk(value) if isinstance(value, dict | list) else value
                    for value in tree]
        return tree

    tree = walk(skeleton)
    if offset != len(raw):
        raise ValueError(f"state: packed arrays take {offset} bytes, {len(raw)} were written")
    return tree


class PackedSlots:
    """The arrays and float lists a JSON text's packed markers name, made (empty) by the
    parser itself and filled from their data afterwards (:meth:`fill`, :meth:`fill_raw`).

    :func:`unpack_state` walks a parsed skeleton and builds the tree a second time; for a
    stream record, with one skeleton and one data string, the parser can build the final
    tree at once (:func:`loads_packed`): the walk was ~40% of restoring a default-config
    stream. Markers are read as :func:`unpack_state` reads them, in the same (document)
    order, so both give the same tree; only a text with a single packed tree (markers
    nowhere else) may be read this way."""

    def __init__(self, limit: int) -> None:
        self._slots: list[np.ndarray | tuple[list[float], int]] = []
        # Bytes the hook's slots name, checked against ``limit`` (the most the data can
        # hold: the text's length for base64 inside it) before an array is allocated;
        # the core checks the arrays it makes against the same limit. Filling checks
        # every slot's size.
        self._size = 0
        self._limit = limit

    def hook(self, value: dict[str, Any]) -> Any:
        """``json.loads`` object hook: a marker's (empty) array or list, a tagged array
        (:func:`encode_state`), or the object itself."""
        if len(value) == 1:
            if _PACKED_TAG in value:
                dtype, shape = _packed_array(value[_PACKED_TAG])
                self._claim(dtype.itemsize * math.prod(shape))
                array = np.empty(shape, dtype)
                self._slots.append(array)
                return array
            if _FLOATS_TAG in value:
                count = _packed_floats(value[_FLOATS_TAG])
                self._claim(8 * count)
                values: list[float] = []
                self._slots.append((values, count))
                return values
        return _decode_object(value)

    def _claim(self, size: int) -> None:
        self._size += size
        if self._size > self._limit:  # refused before a huge shape is allocated
            raise ValueError(f"state: packed arrays name {self._size} bytes or more, "
                             f"more than their data's {self._limit} bytes can hold")

    def fill(self, data: str) -> None:
        """Copy ``data``'s bytes (base64) into the slots, in order; ValueError, before
        any is filled, if they do not fit them exactly (``native/src/packed_slots.rs``)."""
        _native.fill_packed(self._slots, a2b_base64(data))

    def fill_raw(self, data: bytes) -> None:
        """As :meth:`fill`, from the bytes themselves (:func:`pack_state_raw`)."""
        _native.fill_packed(self._slots, data)


def loads_packed(text: str | bytes, limit: int | None = None) -> tuple[Any, PackedSlots]:
    """Parse a JSON text holding one packed tree (see :class:`PackedSlots`): the parsed
    document, its packed markers already the (empty) arrays and lists they name, and the
    slots to fill from the tree's data. The markers may name at most ``limit`` bytes
    (default: the text's length, which bounds a base64 data string inside it; a record
    whose data follows its text passes the data's length)."""
    if limit is None:
        limit = len(text)
    slots = PackedSlots(limit)
    tree = _core_loads(text, slots.hook, slots._slots, limit)  # (usual markers: by the core)
    if tree is _UNUSUAL:
        slots = PackedSlots(limit)  # the core's hook calls claimed slots: start over
        tree = json.loads(text, object_hook=slots.hook)
    return tree, slots
