"""Reference Chain: the Python loop over stages, the oracle of ``native/src/chain.rs``.

Moved here from ``streamweights/adapters/chain.py`` unchanged but for the base class
(``Oracle``, so it stays out of the adapter registry): every verb drives the stages one
by one through their Python handles. The production ``Chain`` runs the same stages in
one core call per verb when every stage has a native core.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamweights.adapters.base import Adapter, adapter_spec, build_adapter
from tests.reference import Oracle

#: What ``predict_trace`` returns besides the output: the input of every stage, in order,
#: then the own trace of each stage that keeps one (a ``Portfolio``'s candidates).
Trace = tuple[np.ndarray, ...]


class Chain(Oracle):
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
                          if getattr(stage, "uses_features", False)}
        if len(feature_counts) > 1:
            raise ValueError(f"stages: feature stages disagree on n_features "
                             f"({sorted(feature_counts)})")
        #: Length of the ``features`` a feature stage needs (``None``: no stage needs them).
        self.n_features: int | None = feature_counts.pop() if feature_counts else None

    def check_features(self, features: Any) -> np.ndarray | None:
        """The prediction's ``features`` as a float64 vector when a stage needs them
        (``None`` otherwise); ValueError naming ``features`` when missing or malformed."""
        if self.n_features is None:
            return None
        if features is None:
            raise ValueError(f"features: a stage of this chain learns from the prediction's "
                             f"features ({self.n_features} numbers); send them with every "
                             "prediction")
        vector = np.asarray(features, dtype=np.float64) if isinstance(features, list | tuple
                                                                      | np.ndarray) else None
        if vector is None or vector.shape != (self.n_features,):
            got = "not a list" if vector is None else f"shape {vector.shape}"
            raise ValueError(f"features: expected {self.n_features} numbers, got {got}")
        if not np.all(np.isfinite(vector)):
            raise ValueError("features: contains NaN or inf")
        return vector

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
            if _traced(stage):
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
        features = self.check_features(features)
        outputs, inputs, extras = x, [], []
        for stage in self.stages:
            x = self._stage_input(stage, x, outputs, features)
            if _traced(stage):
                output, extra = stage.observe_predict_traced(x)
                extras.append(extra)
            else:
                stage.observe(x)
                output = stage.predict(x)
            inputs.append(np.asarray(x, dtype=np.float64))
            x = output
        return np.asarray(x), tuple(inputs) + tuple(extras)

    def learn_trace(self, trace: Trace, y: Any) -> None:
        """Teach every stage the label ``y`` on the input it saw at prediction time.

        Every adapter checks ``(x, y)`` before it changes anything, and the stages of a
        chain share one label space (checked at construction), so a bad label is
        rejected by the first stage and leaves the whole chain unchanged.
        """
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
            stage.load_state_dict(stage_state)


def _traced(stage: Adapter) -> bool:
    """A stage that keeps its own trace (``predict_traced`` / ``learn_traced``)."""
    return hasattr(stage, "learn_traced")
