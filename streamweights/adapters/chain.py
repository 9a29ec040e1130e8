"""Stages in sequence, each learning on exactly what it saw when the label comes late.

A deployed stream typically runs ``ensemble (K, C) -> calibrator (C,) -> prior-shift
corrector (C,)``. Labels arrive minutes after the prediction, by which time the earlier
stages have moved on; if a later stage learned on a re-computed input it would learn on
something it never served. ``Chain.predict_trace`` therefore returns, with the output,
the input each stage received; the caller keeps that trace with the pending prediction
(the pipeline's join buffer does, and snapshots it) and hands it back to
``learn_trace`` when the label arrives. ``learn(x, y)`` re-computes the trace with the
current state, which is what the contract means when the label arrives immediately.

A stage with ``uses_features = True`` (``FeatureCorrection``) also needs the record's
``features``: ``predict_trace(x, features=...)`` hands it the packed vector
``[its input, the chain's input (the models' outputs), features]``, and that packed
vector is what the trace keeps for it, so ``learn_trace`` needs nothing more. A stage
with ``forwards_features = True`` and an ``n_features`` (a ``Portfolio`` with a feature
candidate) gets the features as they are (``predict_traced(x, features=...)``) and keeps
what its candidates need in its own trace.

The verbs the pipeline calls per record (``observe_predict_trace``, ``learn_trace``) run
in the native core (``native/src/chain.rs``, one call each) when every stage has a core it
can drive: the ensembles, the calibrators, ``PriorShift``, ``DriftMemory``,
``FeatureCorrection`` (the core packs its input), and a ``Portfolio`` of such stages as
the first stage. The Python loop below stays for the rest, and it is the same
computation: a chain with a stage that has no native core the chain core knows
(``TestTimeAdapter``, ``KalmanHead``, ``KalmanWeights``, a user's own ``Adapter``
subclass, a portfolio whose candidates the portfolio core cannot drive), an input
the core's quick checks do not clear (a list, an entry at the tolerance's edge: Python's
checks decide and name the field), and the verbs nobody calls per record. The loop is
also the oracle (``tests/reference/chain.py``, ``tests/adapters/test_native_chain.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from streamweights import _native
from streamweights.adapters.base import Adapter, adapter_spec, build_adapter, load_part

#: What ``predict_trace`` returns besides the output: the input of every stage, in order,
#: then the own trace of each stage that keeps one (a ``Portfolio``'s candidates).
Trace = tuple[np.ndarray, ...]


class Chain(Adapter):
    """Run ``stages`` one after another; stage ``i+1`` consumes stage ``i``'s output.

    Parameters
    ----------
    stages
        Adapters, or their specs (``{"adapter": name, "config": {...}}``) as written by
        ``get_config``, so a chain can be rebuilt from a snapshot.

    Example
    -------
    >>> import numpy as np
    >>> from streamweights.adapters import Chain, FixedShare, OnlineTemperature
    >>> chain = Chain([FixedShare(n_models=2, n_classes=2), OnlineTemperature(n_classes=2)])
    >>> outputs = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> proba, trace = chain.predict_trace(outputs)
    >>> [stage_input.shape for stage_input in trace]
    [(2, 2), (2,)]
    >>> chain.learn_trace(trace, 1)
    """

    fresh_state = True  # the stages' state_dicts, each a fresh copy (Adapter.fresh_state)
    fresh_config = True  # the stages' specs, each a fresh copy (Adapter.fresh_config)

    def __init__(self, stages: list[Adapter | dict[str, Any]]) -> None:
        if not stages:
            raise ValueError("stages: a chain needs at least one stage")
        self.stages: list[Adapter] = []
        for index, stage in enumerate(stages):
            if isinstance(stage, Adapter):
                self.stages.append(stage)
            elif isinstance(stage, dict):
                try:
                    self.stages.append(build_adapter(stage))
                except (TypeError, ValueError) as error:
                    raise ValueError(f"stages[{index}]: {error}") from None
            else:
                raise ValueError(f"stages[{index}]: expected an Adapter or a spec dict, got "
                                 f"{type(stage).__name__}")
        class_counts = {getattr(stage, "n_classes", None) for stage in self.stages} - {None}
        if len(class_counts) > 1:
            raise ValueError(f"stages: stages disagree on the number of classes "
                             f"({sorted(class_counts)})")
        feature_counts = {stage.n_features for stage in self.stages  # type: ignore[attr-defined]
                          if getattr(stage, "uses_features", False)
                          or _forwards(stage)}
        if len(feature_counts) > 1:
            raise ValueError(f"stages: feature stages disagree on n_features "
                             f"({sorted(feature_counts)})")
        #: Length of the ``features`` a feature stage needs (``None``: no stage needs them).
        self.n_features: int | None = feature_counts.pop() if feature_counts else None
        self._make_core()

    def _make_core(self) -> None:
        """The native core over the stages' cores, when every stage has one (else
        ``None``: the Python loop runs), and the layout of its flat trace."""
        self._core = None
        core = _chain_core(self.stages)
        if core is None:
            return
        self._core = core
        layout, start = [], 0
        for shape in core.shapes:
            stop = start + math.prod(shape)  # (the core's shapes: lists of ints)
            layout.append((start, stop, tuple(shape)))
            start = stop
        self._layout = layout
        #: The same, as what ``observe_predict_trace`` slices: a 1-D entry is its slice
        #: already (no reshape), an entry of another shape is reshaped.
        self._views = [(slice(start, stop), None if len(shape) == 1 else shape)
                       for start, stop, shape in layout]
        self._size = core.size
        self._output = (start, self._size)
        width = getattr(self.stages[-1], "n_classes", None)
        self._scalar_output = width is None

    @property
    def native(self) -> bool:
        """Whether the per-record verbs run in the native core."""
        return self._core is not None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy: the core is rebuilt over the copied stages."""
        return {k: v for k, v in self.__dict__.items() if k != "_core"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_core()

    def check_features(self, features: Any) -> np.ndarray | None:
        """The prediction's ``features`` as a float64 vector when a stage needs them
        (``None`` otherwise); ValueError naming ``features`` when missing or malformed."""
        return check_feature_vector(features, self.n_features)

    def _stage_input(self, stage: Adapter, x: Any, outputs: Any,
                     features: np.ndarray | None) -> Any:
        """What ``stage`` receives: ``x``, or for a feature stage the packed
        ``[x, the chain's input (the models' outputs), features]``."""
        if not getattr(stage, "uses_features", False):
            return x
        if features is None:
            raise ValueError(f"features: {type(stage).__name__} learns from the prediction's "
                             "features; pass them (predict_trace(x, features=...))")
        return np.concatenate([np.ravel(np.asarray(x, dtype=np.float64)),
                               np.ravel(np.asarray(outputs, dtype=np.float64)), features])

    def predict(self, x: Any) -> np.ndarray:
        return self.predict_trace(x)[0]

    def predict_trace(self, x: Any, features: Any = None) -> tuple[np.ndarray, Trace]:
        """Output of the last stage and the input each stage received (then, for each
        stage that keeps a trace of its own, such as a ``Portfolio``, that trace);
        ``features``: the prediction's features, for a chain with a feature stage."""
        features = self.check_features(features)
        outputs, inputs, extras = x, [], []
        for stage in self.stages:
            x = self._stage_input(stage, x, outputs, features)
            if _forwards(stage):
                output, extra = stage.predict_traced(x, features=features)
                extras.append(extra)
            elif _traced(stage):
                output, extra = stage.predict_traced(x)
                extras.append(extra)
            else:
                output = stage.predict(x)  # validates x before it is recorded
            inputs.append(np.asarray(x, dtype=np.float64))
            x = output
        return np.asarray(x), tuple(inputs) + tuple(extras)

    def observe_predict_trace(self, x: Any, features: Any = None) -> tuple[np.ndarray, Trace]:
        """``observe`` then ``predict_trace`` in one pass: each stage observes its input,
        then its (updated) output feeds the next stage. This is what the pipeline does
        with every served prediction."""
        core = self._core
        if core is not None:
            buffer = _empty(self._size)
            # (the loop's first check too; without a feature stage it gives None)
            checked = None if self.n_features is None else self.check_features(features)
            if core.observe_predict(x, buffer, checked):
                return self.split(buffer)
        features = self.check_features(features)
        outputs, inputs, extras = x, [], []
        for stage in self.stages:
            x = self._stage_input(stage, x, outputs, features)
            if _forwards(stage):
                output, extra = stage.observe_predict_traced(x, features=features)
                extras.append(extra)
            elif _traced(stage):
                output, extra = stage.observe_predict_traced(x)
                extras.append(extra)
            else:
                stage.observe(x)
                output = stage.predict(x)
            inputs.append(np.asarray(x, dtype=np.float64))
            x = output
        return np.asarray(x), tuple(inputs) + tuple(extras)

    def observe_predict_rows(self, rows: list[Any]) -> tuple[np.ndarray, Trace] | None:
        """``observe_predict_trace`` for a chain without feature stages whose input comes
        as Python lists of numbers (one list per model, or one list of values), as a
        decoded record holds them, when the core clears them: no array of them is made
        (the trace's first entry is the core's copy). ``None``, with nothing changed,
        otherwise: call ``observe_predict_trace`` with the array, which decides."""
        buffer = self.observe_predict_buffer(rows)
        return None if buffer is None else self.split(buffer)

    def observe_predict_buffer(self, rows: list[Any]) -> np.ndarray | None:
        """``observe_predict_rows`` without splitting: the core's flat record of the
        event (the trace, then the output; ``split`` gives the arrays), which the core
        can learn from as it is (``_native.learn_served``). ``None`` as there."""
        core = self._core
        if core is None or self.n_features is not None:
            return None
        buffer = _empty(self._size)
        return buffer if core.observe_predict_rows(rows, buffer) else None

    def split(self, buffer: np.ndarray) -> tuple[np.ndarray, Trace]:
        """The output and the trace entries in the core's flat buffer (views of it)."""
        start, stop = self._output
        out = buffer[start:stop]
        # (the output's own part of the fresh buffer: no trace entry shares it)
        return (np.array(out[0]) if self._scalar_output else out,
                tuple([buffer[part] if shape is None else buffer[part].reshape(shape)
                       for part, shape in self._views]))

    def output_of(self, buffer: np.ndarray) -> np.ndarray:
        """The output in the core's flat buffer, as ``split`` gives it."""
        start, stop = self._output
        return np.array(buffer[start]) if self._scalar_output else buffer[start:stop]

    def input_of(self, buffer: np.ndarray) -> np.ndarray:
        """The chain's input (the models' outputs) in the core's flat buffer, as the
        first trace entry ``split`` gives."""
        part, shape = self._views[0]
        return buffer[part] if shape is None else buffer[part].reshape(shape)

    def trace_ranges(self) -> list[tuple[int, int]]:
        """Where each trace entry, then the output, lies in the core's flat buffer."""
        return [(start, stop) for start, stop, _ in self._layout] + [self._output]

    @property
    def core(self) -> Any:
        """The native core (``None``: the Python loop runs)."""
        return self._core

    def learn_trace(self, trace: Trace, y: Any) -> None:
        """Teach every stage the label ``y`` on the input it saw at prediction time.

        Every adapter checks ``(x, y)`` before it changes anything, and the stages of a
        chain share one label space (checked at construction), so a bad label is
        rejected by the first stage and leaves the whole chain unchanged.
        """
        core = self._core
        if core is not None and core.learn(trace, y):
            return  # every stage learnt in one core call
        traced = [stage for stage in self.stages if _traced(stage)]
        expected = len(self.stages) + len(traced)
        if len(trace) != expected:
            raise ValueError(f"trace: expected {expected} stage inputs and traces, got "
                             f"{len(trace)}")
        extras = iter(trace[len(self.stages):])
        for stage, stage_input in zip(self.stages, trace[:len(self.stages)], strict=True):
            if _traced(stage):
                stage.learn_traced(stage_input, next(extras), y)
            else:
                stage.learn(stage_input, y)

    def learn(self, x: Any, y: Any) -> None:
        self.learn_trace(self.predict_trace(x)[1], y)

    def observe(self, x: Any) -> None:
        """Each stage observes its own input, computed through the stages before it."""
        features = self.check_features(None)  # a feature stage needs observe_predict_trace
        outputs = x
        for stage in self.stages:
            x = self._stage_input(stage, x, outputs, features)
            stage.observe(x)
            x = stage.predict(x)

    def on_drift(self) -> None:
        for stage in self.stages:
            stage.on_drift()

    def get_config(self) -> dict[str, Any]:
        return {"stages": [adapter_spec(stage) for stage in self.stages]}

    def _get_state(self) -> dict[str, Any]:
        return {"stages": [stage.state_dict() for stage in self.stages]}

    def upgrade_snapshot(self, state_dict: Any) -> Any:
        """Each stage upgrades its own part (snapshot and spec in the chain's config), so a
        chain snapshot from before a stage gained an option still loads."""
        try:
            specs = state_dict["config"]["stages"]
            parts = state_dict["state"]["stages"]
        except (KeyError, TypeError):
            return state_dict  # not a chain snapshot: load_state_dict says what is wrong
        if not (isinstance(specs, list) and isinstance(parts, list)
                and len(specs) == len(parts) == len(self.stages)):
            return state_dict
        upgraded = [stage.upgrade_snapshot(part) for stage, part in
                    zip(self.stages, parts, strict=True)]
        new_specs = [dict(spec, config=part["config"]) if isinstance(spec, dict)
                     and isinstance(part, dict) and "config" in part else spec
                     for spec, part in zip(specs, upgraded, strict=True)]
        return {**state_dict, "config": {**state_dict["config"], "stages": new_specs},
                "state": {**state_dict["state"], "stages": upgraded}}

    def _set_state(self, state: dict[str, Any]) -> None:
        for stage, stage_state in zip(self.stages, state["stages"], strict=True):
            # (its spec is in the chain's config, its part upgraded by upgrade_snapshot)
            load_part(stage, stage_state, config_checked=True, upgraded=True)


def check_feature_vector(features: Any, n_features: int | None) -> np.ndarray | None:
    """``features`` as a float64 vector of ``n_features`` finite numbers (``None`` when
    ``n_features`` is); ValueError naming ``features`` when missing or malformed."""
    if n_features is None:
        return None
    if features is None:
        raise ValueError(f"features: a stage of this chain learns from the prediction's "
                         f"features ({n_features} numbers); send them with every "
                         "prediction")
    vector = np.asarray(features, dtype=np.float64) if isinstance(features, list | tuple
                                                                  | np.ndarray) else None
    if vector is None or vector.shape != (n_features,):
        got = "not a list" if vector is None else f"shape {vector.shape}"
        raise ValueError(f"features: expected {n_features} numbers, got {got}")
    if not np.all(np.isfinite(vector)):
        raise ValueError("features: contains NaN or inf")
    return vector


def _forwards(stage: Adapter) -> bool:
    """A stage that takes the prediction's features as they are (a ``Portfolio`` with a
    feature candidate)."""
    return bool(getattr(stage, "forwards_features", False)) \
        and getattr(stage, "n_features", None) is not None
_empty = np.empty


def _chain_core(stages: list[Adapter]) -> Any:
    """A ``ChainCore`` over ``stages``, or ``None`` when one of them has no core it can
    drive (or the first stage does not say its input's shape)."""
    from streamweights.adapters.portfolio import Portfolio

    first = stages[0]
    n_models, n_classes = getattr(first, "n_models", None), getattr(first, "n_classes", None)
    if not isinstance(n_models, int):
        return None
    shape = (n_models,) if n_classes is None else (n_models, n_classes)
    head, rest, rest_shape = None, stages, shape
    if type(first) is Portfolio:
        if not first.native:
            return None
        head, rest = first._core, stages[1:]
        rest_shape = () if n_classes is None else (n_classes,)
    specs = native_stage_specs(rest, rest_shape, features=True) if rest else []
    if specs is None:
        return None
    return _native.ChainCore(head, list(shape), specs)


def native_stage(stage: Adapter, shape: tuple[int, ...]) -> tuple[Any, ...] | None:
    """The spec by which the core drives ``stage`` on inputs of ``shape`` (``native/src/
    chain.rs``): ``(kind, handle, cores, shape, output length)``; ``None`` when the stage
    has no native core the chain core knows (a subclass counts as unknown: it may
    override a verb)."""
    cores = _stage_cores().get(type(stage))
    spec = None if cores is None else cores(stage)
    if spec is None:
        return None
    width = getattr(stage, "n_classes", None) or 1
    return (spec[0], stage, spec[1], tuple(shape), width)


@functools.cache
def _stage_cores() -> dict[type, Callable[[Any], tuple[str, tuple[Any, ...]] | None]]:
    """By adapter class: the core's name for the stage and the cores it drives (``None``
    for a stage of that class it cannot drive). Made at the first call (the adapters
    import this module), once: importing them at every call was ~5% of building a
    stream (~17 stages each)."""
    from streamweights.adapters.calibration import (
        Calibeating,
        OnlineBetaScaling,
        OnlinePlatt,
        OnlineTemperature,
    )
    from streamweights.adapters.drift_memory import DriftMemory
    from streamweights.adapters.ensemble import FixedShare, Hedge, OnlineStacking
    from streamweights.adapters.feature_correction import FeatureCorrection
    from streamweights.adapters.prior_shift import PriorShift

    def calibeating(stage: Any) -> tuple[str, tuple[Any, ...]] | None:
        base = stage.base
        if type(base) is OnlinePlatt:
            return "CalibeatingPlatt", (stage._core, base._core)
        if type(base) is OnlineBetaScaling:
            return "CalibeatingBeta", (stage._core, base._core)
        return None

    def single(name: str) -> Callable[[Any], tuple[str, tuple[Any, ...]]]:
        return lambda stage: (name, (stage._core,))

    return {FixedShare: single("FixedShare"), Hedge: single("Hedge"),
            OnlineStacking: lambda stage: ("Stacking", (stage._core, stage._filter._core)),
            OnlinePlatt: single("Platt"), OnlineBetaScaling: single("Beta"),
            OnlineTemperature: single("Temperature"), DriftMemory: single("DriftMemory"),
            PriorShift: single("PriorShift"), FeatureCorrection: single("FeatureCorrection"),
            Calibeating: calibeating}


def native_stage_specs(stages: list[Adapter], shape: tuple[int, ...],
                       features: bool = False) -> list[tuple[Any, ...]] | None:
    """Specs of a sequence of stages whose first takes inputs of ``shape`` (each later
    one the previous output: ``(C,)``, or ``()`` for a regression value); ``None`` when
    one of them has no native core. ``features``: the driver packs a feature stage's
    input (``[its input, the chain's input, features]``: a ``Chain``, and a portfolio's
    candidates, whose core keeps only the stage's own input in the trace)."""
    specs = []
    for stage in stages:
        packs = getattr(stage, "uses_features", False)
        if packs and not features:
            return None
        spec = native_stage(stage, (stage.input_size,) if packs else shape)  # type: ignore[attr-defined]
        if spec is None:
            return None
        specs.append(spec)
        width = getattr(stage, "n_classes", None)
        shape = () if width is None else (width,)
    return specs


def _traced(stage: Adapter) -> bool:
    """A stage that keeps its own trace (``predict_traced`` / ``learn_traced``)."""
    return hasattr(stage, "learn_traced")
