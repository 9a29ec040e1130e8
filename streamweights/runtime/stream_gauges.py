"""A stream's gauges as a weights version sets them: each series found once, then set by
position.

A weights version sets ~70 series of its stream (its version, the models' and the
candidates' weights, each forecaster's loss and ECE, conformal coverage and sizes, the
performance estimates). Found through their families every time (the label values as a
tuple, hashed, looked up among every stream's series), then set through a method call
each, they took most of the ~60 µs a version's metrics cost on one warm stream, and
more with 10,000 streams, whose series tables are out of the caches: a replica of
sparse streams that publishes a version every minute each spent more on them than on
its records. Here the series a stream can have are listed once from its config
(:func:`gauge_keys`); each version reads the values in the same order
(:func:`gauge_values`) and :class:`StreamGauges` sets them by position, straight into
their families' dicts: a dict store per series (a tuple hash, the family's table out
of the caches at 10,000 streams: 16-18 µs a version of 57 series, against ~4 µs for an
attribute of a kept series object), but versions are rare (every 1,000 labels or
60 s by default) and those objects and their key tuples were ~12 KB of a mature
stream.

A value ``None`` is not known yet (no label, an empty window) and leaves its series
unset; the series appears with its first value, as it always has, so the exposition is
the same text, series in the same order.
"""

from __future__ import annotations

import sys
from typing import Any

from streamweights.adapters.conformal import level_key
from streamweights.adapters.performance_estimate import FIELDS
from streamweights.adapters.portfolio import Portfolio
from streamweights.runtime.metrics import LoopGauge, ServiceMetrics, check_label_values

#: A series: its family and its label values.
GaugeKey = tuple[LoopGauge, tuple[str, ...]]


class StreamGauges:
    """One stream's gauge series, each made on its first value, set by position: the
    values live in their families' dicts (``LoopGauge._children``), keyed by label
    values, so a series is a dict entry and nothing else."""

    __slots__ = ("_labels", "_stores")

    def __init__(self, keys: list[GaugeKey]) -> None:
        for family, labels in keys:
            check_label_values(family, labels)
        self._stores = [family._children for family, _ in keys]
        self._labels = [labels for _, labels in keys]

    def set_all(self, values: list[Any]) -> None:
        """Set series ``i`` to ``float(values[i])``; ``None`` leaves it as it is."""
        if len(values) != len(self._labels):
            raise ValueError(f"{len(values)} gauge values for {len(self._labels)} series")
        for store, labels, value in zip(self._stores, self._labels, values, strict=True):
            if value is not None:
                store[labels] = float(value)


def gauge_keys(metrics: ServiceMetrics, stream: Any) -> list[GaugeKey]:
    """Every series a weights version may set for ``stream`` (a ``StreamPipeline``), in
    the order :func:`gauge_values` reads them; fixed by the stream's config."""
    name = stream.name
    keys: list[GaugeKey] = [(metrics.weights_version, (name,)), (metrics.pending, (name,))]
    # (label values other than the stream's name are the same for many streams: one
    # copy of each string, however many streams' series name it)
    keys += [(metrics.ensemble_weight, (name, sys.intern(model)))
             for model in stream.config.models]
    keys += [(metrics.portfolio_weight, (name, sys.intern(candidate)))
             for candidate in _candidates(stream)]
    for forecaster in map(sys.intern, _forecasters(stream)):
        keys.append((metrics.log_loss, (name, forecaster)))
        if stream.classification:
            keys.append((metrics.ece, (name, forecaster)))
    uncertainty = stream.uncertainty
    if uncertainty is not None:
        for forecaster, monitor in zip(map(sys.intern, uncertainty.forecasters),
                                       uncertainty.monitors, strict=False):
            for alpha in (sys.intern(level_key(alpha)) for alpha in monitor.alphas):
                keys += [(metrics.conformal_target, (name, alpha)),
                         (metrics.conformal_coverage, (name, forecaster, alpha, "run")),
                         (metrics.conformal_coverage, (name, forecaster, alpha, "rolling")),
                         (metrics.conformal_size, (name, forecaster, alpha))]
        for forecaster in map(sys.intern, uncertainty.forecasters if uncertainty.estimates
                              else ()):
            for field in FIELDS:
                source, metric = (sys.intern(part) for part in field.split("_", 1))
                keys.append((metrics.performance, (name, forecaster, metric, source)))
    return keys


def gauge_values(stream: Any) -> list[Any]:
    """The values of :func:`gauge_keys`' series now, in its order (``None``: unknown)."""
    values: list[Any] = [stream.weights_version, len(stream.join)]
    weights = stream.ensemble_weights()
    values += [weights.get(model) for model in stream.config.models]
    values += list(stream.portfolio_weights().values())
    scores = stream.scores.summary()
    primary = "log_loss" if stream.classification else "mse"
    forecasters = [scores["adapted"]]
    if scores["raw_best"] is not None:
        forecasters.append(scores["raw_best"])
    forecasters += scores["models"].values()
    for score in forecasters:
        values.append(score[primary])
        if stream.classification:
            values.append(score["ece"])
    uncertainty = stream.uncertainty
    if uncertainty is not None:
        for _, monitor in zip(uncertainty.forecasters, uncertainty.monitors, strict=False):
            for level in monitor.levels():
                values += level
        for estimate in uncertainty.estimates:
            values += estimate.values()
    return values


def _candidates(stream: Any) -> list[str]:
    first = stream.chain.stages[0]
    return list(first.names) if isinstance(first, Portfolio) else []


def _forecasters(stream: Any) -> list[str]:
    """``adapted``, ``raw_best`` (when the stream has models) and ``raw:<model>``, as
    ``Scores.summary`` orders them."""
    models = list(stream.scores.model_names)
    return ["adapted", *(["raw_best"] if models else []), *(f"raw:{m}" for m in models)]
