"""The adapter contract every online algorithm in ``streamweights.adapters`` follows.

An adapter is a small stateful object with the same verbs (see ``design.md``):

* ``predict(x)`` — current output for one input; pure, changes nothing.
* ``learn(x, y)`` — a label arrived for an input that was earlier given to ``predict``.
* ``observe(x)`` — an unlabelled input; a no-op unless the adapter uses unlabelled data.
* ``on_drift()`` — a drift detector fired upstream; each adapter reacts its own way
  (forget faster, re-mix weights, reset a curvature estimate). No-op by default.
* ``predict_many`` / ``learn_many`` / ``observe_many`` — the same over a batch; the
  result equals the sequential loop.
* ``state_dict()`` / ``load_state_dict(d)`` — the full state as plain values and numpy
  arrays; a round trip is bit exact, so a restored adapter continues exactly where the
  original would have.

Adapters never do I/O, never read the clock and take their randomness from an explicit
seed, so the same inputs and seed give the same numbers bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from streamweights.adapters.state_codec import (
    PackedPart,
    encode_state,
    encodes_alike,
    packed_part,
)

_REGISTRY: dict[str, type[Adapter]] = {}


class Adapter:
    """Base class: subclasses implement ``predict``, ``learn``, ``get_config`` and the two
    private state hooks ``_get_state`` / ``_set_state``."""

    #: Bumped when the layout of ``_get_state`` changes; ``load_state_dict`` refuses a
    #: snapshot of another version with a message saying what to do.
    state_version: ClassVar[int] = 1
    #: ``True`` when ``_get_state`` builds every object it returns anew on each call (a
    #: native handle reading its core, a container gathering its parts' ``state_dict``):
    #: ``state_dict`` then hands it out without the deep copy, which was most of a
    #: checkpoint's cost (containers copied their parts' copies again, level by level).
    fresh_state: ClassVar[bool] = False
    #: ``True`` when ``get_config`` builds every container it returns anew on each call
    #: (a container naming its parts by ``adapter_spec``): ``state_dict`` then does not
    #: copy it again (a chain's stage configs were copied twice per level, ~6% of
    #: writing a default stream's record).
    fresh_config: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    # -- the five verbs ---------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def learn(self, x: Any, y: Any) -> None:
        raise NotImplementedError

    def observe(self, x: Any) -> None:
        """Take an unlabelled input into account. Default: nothing to do."""
        return None

    def on_drift(self) -> None:
        """React to a drift alarm raised by the pipeline. Default: nothing to do."""
        return None

    # -- batch forms ------------------------------------------------------------------
    def predict_many(self, xs: Any) -> np.ndarray:
        """Outputs for a batch of inputs; row ``i`` equals ``predict(xs[i])``."""
        return np.stack([self.predict(x) for x in xs]) if len(xs) else np.empty((0,))

    def learn_many(self, xs: Any, ys: Any) -> None:
        """Learn from a batch of labelled inputs, in order; equals the sequential loop."""
        if len(xs) != len(ys):
            raise ValueError(f"learn_many: {len(xs)} inputs but {len(ys)} labels")
        for x, y in zip(xs, ys, strict=True):
            self.learn(x, y)

    def observe_many(self, xs: Any) -> None:
        """Observe a batch of unlabelled inputs, in order."""
        for x in xs:
            self.observe(x)

    # -- state ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able) that rebuild an equivalent fresh adapter."""
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Full state: ``{"adapter", "version", "config", "state"}``; arrays are copies.
        Inside :func:`configs_packed` the config is packed once and kept (see there)."""
        state = self._get_state()
        config = self._packed_config() if _CONFIGS_PACKED.get() else None
        if config is None:
            config = self.get_config() if self.fresh_config else tree_copy(self.get_config())
        return {
            "adapter": type(self).__name__,
            "version": type(self).state_version,
            "config": config,
            "state": state if self.fresh_state else copy.deepcopy(state),
        }

    def _packed_config(self) -> PackedPart | None:
        """The config as ``state_codec.PackedPart``, packed at the first call and kept (a
        config is its constructor's arguments: it does not change), or None when it does
        not pack that way (``state_dict`` then writes it as a dict, as outside).

        Read with ``getattr``, not ``self.__dict__``: asking for ``__dict__`` makes
        CPython (3.11+) give the instance a dict of its own instead of its inline values,
        one more object for the collector. Made at a replica's first commit, after its
        start-up heap was frozen (``runtime/heap.py``), 10,000 streams' 30,000 such dicts
        were walked by every full collection (~26 ms each, ~2 s of a 70 s benchmark run)."""
        part = getattr(self, "_config_part", _NOT_PACKED)
        if part is _NOT_PACKED:
            part = self._config_part = packed_part(self.get_config())
        return part

    def upgrade_snapshot(self, state_dict: Any) -> Any:
        """A snapshot written before options or state fields were added, in today's layout
        (added options take this adapter's values); adapters that added some override
        this, containers pass it on to their parts. Default: unchanged."""
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state written by ``state_dict`` of an adapter with the same config.
        The adapter keeps a copy: the caller's tree stays the caller's."""
        self._load_checked(state_dict, owned=False)

    def _load_checked(self, state_dict: Any, *, owned: bool, config_checked: bool = False,
                      upgraded: bool = False) -> None:
        """Check the snapshot's header and set its state, copied unless ``owned``; the
        configs are not compared again when ``config_checked``, nor the snapshot upgraded
        again when ``upgraded`` (see :func:`load_part`)."""
        if not upgraded:
            state_dict = self.upgrade_snapshot(state_dict)
        state = snapshot_state(state_dict, type(self).__name__, type(self).state_version,
                               None if config_checked else self.get_config())
        self._set_state(state if owned else tree_copy(state))

    # -- pickle / deepcopy ----------------------------------------------------------------
    # A compiled core is no Python object and does not pickle, so an adapter travels as
    # its snapshot: rebuilt from its config, then its state loaded (a round trip is bit
    # exact, the contract every adapter keeps). A container's snapshot holds its parts', so
    # this serves containers too; Chain and Portfolio keep their own (a copy of their dict,
    # the core re-bound over the copied stages, which pickle through this).
    def __getstate__(self) -> dict[str, Any]:
        return {"snapshot": self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        snapshot = state["snapshot"]
        self.__init__(**snapshot["config"])  # type: ignore[misc]
        # (the tree is the copy pickle or deepcopy just made, and its config built this
        # adapter: nothing to copy, compare or upgrade)
        load_part(self, snapshot, config_checked=True, upgraded=True)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


_NOT_PACKED = object()
_CONFIGS_PACKED = contextvars.ContextVar("configs_packed", default=False)


@contextlib.contextmanager
def configs_packed() -> Iterator[None]:
    """Within it (in this thread), ``state_dict`` gives each adapter's config as a
    ``state_codec.PackedPart`` packed at its first such call and kept, for
    ``pack_state`` to write as it is: a stream's record (``runtime.state_store``) is
    the same bytes, written ~20% faster (its configs were built, copied and marked at
    every commit). Such a tree is for ``pack_state`` only: elsewhere a config is a dict."""
    token = _CONFIGS_PACKED.set(True)
    try:
        yield
    finally:
        _CONFIGS_PACKED.reset(token)


def load_part(adapter: Adapter, state_dict: Any, *, config_checked: bool = False,
              upgraded: bool = False) -> None:
    """``adapter.load_state_dict(state_dict)`` for a part of a state its container's
    ``_set_state`` received: that tree is already a private copy, so it is handed over, not
    copied again (a portfolio's stages were copied once per nesting level, four times in
    all). ``config_checked``: the container's config holds this part's whole spec
    (``adapter_spec``: a chain's stages, a calibeating's base) and was just compared with
    the snapshot's, so the part's own copy of it is not compared again (each comparison
    re-made and re-walked the nested configs: ~15% of restoring a default stream); its
    adapter name and format version still are. ``upgraded``: the container's
    ``upgrade_snapshot`` has upgraded this part already (a chain's stages, a portfolio's
    chains), so it is not upgraded a second time (each pass re-made the part's dicts).
    Adapters that load their own way (torch ones) get their ``load_state_dict``."""
    if type(adapter).load_state_dict is Adapter.load_state_dict:
        adapter._load_checked(state_dict, owned=True, config_checked=config_checked,
                              upgraded=upgraded)
    else:
        adapter.load_state_dict(state_dict)


def snapshot_state(state_dict: Any, name: str, state_version: int,
                   config: dict[str, Any] | None) -> Any:
    """The ``state`` of an adapter snapshot, once its header says it was written by
    adapter ``name`` in format ``state_version`` with this ``config`` (``None``: its
    container compared it already); otherwise a ValueError saying which of the three
    differs (shared by every adapter, torch ones included, so a foreign snapshot is
    refused the same way everywhere)."""
    if not isinstance(state_dict, dict) or "state" not in state_dict:
        raise ValueError(f"{name}.load_state_dict: not a state dict (missing 'state')")
    if state_dict.get("adapter") != name:
        raise ValueError(f"{name}.load_state_dict: snapshot is of adapter "
                         f"{state_dict.get('adapter')!r}, not {name!r}")
    version = state_dict.get("version")
    if version != state_version:
        raise ValueError(
            f"{name}.load_state_dict: snapshot format version {version}, this build reads "
            f"version {state_version}; replay the stream from the last offsets "
            "or restore with the streamweights release that wrote it")
    # (encodes_alike: the same config written another way, keys in another order, is no
    # change)
    if config is not None and not encodes_alike(state_dict.get("config"), config):
        differing = _differing_keys(state_dict.get("config") or {}, config)
        raise ValueError(f"{name}.load_state_dict: snapshot was taken with another "
                         f"configuration (differs in: {', '.join(differing)})")
    return state_dict["state"]


def _differing_keys(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    keys = sorted(set(left) | set(right))
    return [k for k in keys if encode_state(left.get(k)) != encode_state(right.get(k))] or ["?"]


_IMMUTABLE = frozenset((str, int, float, bool, type(None)))


def tree_copy(tree: Any) -> Any:
    """A deep copy of a configuration or a state (JSON-like: dicts, lists, tuples of plain
    values, and arrays): containers rebuilt, plain values shared, arrays of numbers copied
    as ``deepcopy`` copies them, anything else through ``copy.deepcopy``. No memo, so a
    subtree named twice is copied twice (these trees share none). A state_dict copies each
    nested adapter's config at every level it is named (a portfolio's candidates' stages
    four times over); ``copy.deepcopy``'s memo made that half of a default-config stream's
    ``state_dict`` time, and 40% of its restore (for arrays, ~60% of copying them)."""
    kind = type(tree)
    if kind is dict:
        return {key: value if type(value) in _IMMUTABLE else tree_copy(value)
                for key, value in tree.items()}
    if kind is list:
        return [value if type(value) in _IMMUTABLE else tree_copy(value) for value in tree]
    if kind is tuple:
        return tuple(tree_copy(value) for value in tree)
    if kind is np.ndarray and not tree.dtype.hasobject:
        return tree.copy(order="K")  # what deepcopy does for it, without deepcopy's memo
    return tree if kind in _IMMUTABLE else copy.deepcopy(tree)


def adapter_spec(adapter: Adapter) -> dict[str, Any]:
    """``{"adapter": name, "config": {...}}``: enough to rebuild a fresh copy."""
    return {"adapter": type(adapter).__name__, "config": tree_copy(adapter.get_config())}


@functools.cache
def constructor_signature(cls: type) -> inspect.Signature:
    """``inspect.signature(cls)``, once per class: building a stream asks it of every
    stage (~10 times for the default portfolio), and working it out took ~30% of the
    time to build 10,000 streams. Signatures are immutable, so sharing one is safe."""
    return inspect.signature(cls)


def build_adapter(spec: dict[str, Any]) -> Adapter:
    """Build a fresh adapter from ``adapter_spec`` output (or a snapshot)."""
    name = spec.get("adapter") if isinstance(spec, dict) else None
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"adapter: unknown adapter {name!r}; known: {known}")
    return _REGISTRY[name](**tree_copy(spec.get("config") or {}))


def restore_adapter(state_dict: dict[str, Any]) -> Adapter:
    """Build an adapter from its snapshot and load the snapshot's state into it."""
    adapter = build_adapter(state_dict)
    adapter.load_state_dict(state_dict)
    return adapter


def rng_state(generator: np.random.Generator) -> dict[str, Any]:
    """JSON-able state of a PCG64 generator (big integers written as decimal strings)."""
    state = generator.bit_generator.state
    inner = state["state"]
    return {"state": str(inner["state"]), "inc": str(inner["inc"]),
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


#: What PCG64's state setter takes: 128-bit state and increment, a C ``int`` flag, and
#: a spare 32-bit output.
_RNG_BOUNDS = {"state": (0, 1 << 128), "inc": (0, 1 << 128),
               "has_uint32": (-(1 << 31), 1 << 31), "uinteger": (0, 1 << 32)}


def rng_state_checked(state: dict[str, Any]) -> dict[str, Any]:
    """``rng_state(rng_from_state(state))`` without building a generator: the values
    PCG64's state setter accepts (integers, or what ``int`` reads as one, in its ranges),
    written as :func:`rng_state` writes them, else the error it raises (``OverflowError``
    out of range). A generator costs ~12-50 us to build, ~8% of restoring a default
    stream; this ~2 us. A test holds the two to the same answers."""
    values = {name: int(state[name]) for name in _RNG_BOUNDS}
    for name, (low, high) in _RNG_BOUNDS.items():
        if not low <= values[name] < high:
            raise OverflowError(f"random state: {name} {values[name]} is out of range")
    return {"state": str(values["state"]), "inc": str(values["inc"]),
            "has_uint32": values["has_uint32"], "uinteger": values["uinteger"]}


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """Rebuild a PCG64 generator from :func:`rng_state` output."""
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int(state["state"]), "inc": int(state["inc"])},
        "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"]),
    }
    return np.random.Generator(bit_generator)
