"""Reference Portfolio: candidates and mixture in Python, the oracle of
``native/src/portfolio.rs``.

Moved here from ``streamweights/adapters/portfolio.py`` unchanged but for the base class
(``Oracle``) and the candidate chains, which are the reference ``Chain`` (the Python
loop). Its stages are the production adapters, so a differential test compares the
same stages driven two ways: the mixture's arithmetic and the candidates' traces must
agree bit for bit. The maths and the arithmetic order are in the production module's
docstring.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import numpy as np

from streamweights.adapters.base import _REGISTRY, Adapter, build_adapter
from streamweights.adapters.portfolio import candidate_name, default_candidates
from streamweights.adapters.validation import (
    check_class_label,
    check_count,
    check_in_range,
    check_model_outputs,
    check_target,
)
from tests.reference import Oracle
from tests.reference.chain import Chain


class Portfolio(Oracle):
    """Online Fixed-Share mixture (eta = 1, alpha_t = 1/(t+1)) of candidate chains.

    Parameters
    ----------
    n_models, n_classes
        K deployed models and C classes (classification only): inputs are ``(K, C)``
        probability rows, the output is ``(C,)``. Set by the stream in a config.
    candidates
        The candidate chains, each a list of stage specs as in a stream's ``adapters``
        list (``{"type": "FixedShare", "share": 0.01}``; ``n_models`` / ``n_classes`` are
        filled in). Each chain starts with an ensemble stage. ``None``: the defaults of
        :func:`default_candidates`.
    probability_floor
        A candidate's probability of the label is floored here in its loss, so one
        candidate saying 0 costs ``-ln 1e-6 ~ 13.8`` nats, not infinity.
    drift_share
        On a drift alarm, this share of the weight goes back to uniform (0: only the
        candidates react; each reaction costs at most ``ln(1/(1 - drift_share))`` nats
        of the bound).

    Example
    -------
    Two candidates, one of which serves a constant 0.5: the weight moves to the other.

    >>> import numpy as np
    >>> from streamweights.adapters import Portfolio
    >>> portfolio = Portfolio(n_models=2, n_classes=2, candidates=[
    ...     [{"type": "FixedShare"}], [{"type": "Hedge", "learning_rate": 1e-9}]])
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(300):
    ...     y = int(rng.integers(2))
    ...     good = np.eye(2)[y] * 0.8 + 0.1
    ...     portfolio.learn(np.array([good, 1.0 - good]), y)
    >>> {name: round(w, 2) for name, w in portfolio.candidate_weights().items()}
    {'FixedShare': 1.0, 'Hedge': 0.0}
    """

    def __init__(self, n_models: int, n_classes: int | None = 2,
                 candidates: list[list[dict[str, Any]]] | None = None,
                 probability_floor: float = 1e-6, drift_share: float = 0.0) -> None:
        self.n_models = check_count(n_models, "n_models")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        self._width = self.n_classes or 1  # columns of the traced rows
        self.probability_floor = check_in_range(probability_floor, "probability_floor",
                                                0.0, 1.0)
        self.drift_share = check_in_range(drift_share, "drift_share", 0.0, 1.0,
                                          low_open=False)
        specs = default_candidates(self.n_classes) if candidates is None else candidates
        if not isinstance(specs, list | tuple) or not specs:
            raise ValueError("candidates: a non-empty list of chains (lists of stage specs)")
        self.candidates = [self._check_chain(chain, f"candidates[{i}]")
                           for i, chain in enumerate(specs)]
        self._given_candidates = None if candidates is None else copy.deepcopy(self.candidates)
        self.chains = [Chain([self._build_stage(stage, f"candidates[{i}][{j}]")
                              for j, stage in enumerate(chain)])
                       for i, chain in enumerate(self.candidates)]
        self.names = _unique([candidate_name(chain) for chain in self.candidates])
        count = len(self.chains)
        self._weights = [1.0 / count] * count
        self._cumulative_loss = [0.0] * count
        self._mixture_loss = 0.0
        self._mixability_gap = 0.0  # regression (AdaHedge) only
        self._n_learned = 0
        if self.n_classes is None:
            self._weights = _exponential_weights(self._cumulative_loss, self._rate())

    # -- configuration ---------------------------------------------------------------
    @staticmethod
    def _check_chain(chain: Any, path: str) -> list[dict[str, Any]]:
        if not isinstance(chain, list | tuple) or not chain:
            raise ValueError(f"{path}: a candidate is a non-empty list of stage specs")
        stages = []
        for j, stage in enumerate(chain):
            if not isinstance(stage, dict) or not isinstance(stage.get("type"), str):
                raise ValueError(f"{path}[{j}]: expected a mapping with a 'type' (an adapter "
                                 "name)")
            if stage["type"] in ("Portfolio", "Chain"):
                raise ValueError(f"{path}[{j}].type: {stage['type']} cannot be a stage of a "
                                 "candidate")
            stages.append(copy.deepcopy(dict(stage)))
        return stages

    def _build_stage(self, spec: dict[str, Any], path: str) -> Adapter:
        """One stage of a candidate, with the sizes the portfolio knows filled in."""
        kind = spec["type"]
        if kind not in _REGISTRY:
            raise ValueError(f"{path}.type: unknown adapter {kind!r}; known: "
                             f"{', '.join(sorted(set(_REGISTRY) - {'Chain', 'Portfolio'}))}")
        options = {k: v for k, v in spec.items() if k != "type"}
        parameters = inspect.signature(_REGISTRY[kind]).parameters
        for name, value in (("n_models", self.n_models), ("n_classes", self.n_classes)):
            if name in options:
                raise ValueError(f"{path}.{name}: set by the portfolio; remove it")
            if name in parameters:
                options[name] = value
        if kind == "Calibeating" and isinstance(options.get("base"), str):
            options["base"] = {"adapter": options["base"], "config": {}}
        try:
            return build_adapter({"adapter": kind, "config": options})
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from None

    # -- weights -----------------------------------------------------------------------
    @property
    def weights_(self) -> np.ndarray:
        """Current mixture weight of each candidate (a copy), in ``names`` order."""
        return np.array(self._weights)

    def candidate_weights(self) -> dict[str, float]:
        """``{candidate name: weight}`` (what the weights record and the gauge show)."""
        return dict(zip(self.names, self._weights, strict=True))

    def model_weights(self) -> np.ndarray | None:
        """Weight of each deployed model: the candidates' ensemble weights averaged under
        the portfolio's weights, over the candidates whose first stage mixes models
        (``Hedge``, ``FixedShare``; a stacking head's coefficients are no mixture);
        ``None`` if none does."""
        total, mixed = 0.0, [0.0] * self.n_models
        for weight, chain in zip(self._weights, self.chains, strict=True):
            first = chain.stages[0]
            if type(first).__name__ not in ("Hedge", "FixedShare"):
                continue
            total += weight
            mixed = [m + weight * float(v) for m, v in
                     zip(mixed, first.weights_, strict=True)]
        if total <= 0.0:
            return None
        return np.array([m / total for m in mixed])

    def before_calibration(self, x: Any) -> np.ndarray:
        """The candidates' first stages (their ensembles) mixed under the portfolio's
        weights: what a report shows as the output "before calibration"; pure."""
        outputs = self._check(x)
        return self._mix([np.reshape(chain.stages[0].predict(outputs), self._width).tolist()
                          for chain in self.chains])

    def regret_bound(self) -> float | None:
        """The bound ``ln N + ln T`` (nats) on the loss above the best candidate so far
        (classification; ``None`` for regression, whose bound needs the loss range)."""
        if self.n_classes is None:
            return None
        return math.log(len(self.chains)) + math.log(max(self._n_learned, 1))

    def _rate(self) -> float:
        """AdaHedge's ``eta = ln N / Delta`` (``inf`` while nothing was mixed)."""
        if self._mixability_gap <= 0.0:
            return math.inf
        return math.log(len(self.chains)) / self._mixability_gap

    def describe(self) -> dict[str, Any]:
        """Weights, mean losses and the regret so far against its bound (plain floats)."""
        n = max(self._n_learned, 1)
        return {"weights": self.candidate_weights(),
                "mean_loss": {name: loss / n for name, loss in
                              zip(self.names, self._cumulative_loss, strict=True)},
                "labels": self._n_learned,
                "regret": self._mixture_loss - min(self._cumulative_loss),
                "regret_bound": self.regret_bound()}

    # -- verbs -------------------------------------------------------------------------
    def _check(self, x: Any) -> np.ndarray:
        return check_model_outputs(x, "x", self.n_models, self.n_classes)

    def _mix(self, rows: list[list[float]]) -> np.ndarray:
        """``sum_i v_i p_i`` per class, summed left to right over candidates (a 0-d
        array for regression, as the ensembles return)."""
        mixed = [0.0] * self._width
        for weight, row in zip(self._weights, rows, strict=True):
            mixed = [m + weight * p for m, p in zip(mixed, row, strict=True)]
        return np.array(mixed) if self.n_classes is not None else np.array(mixed[0])

    def predict_traced(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """The mixture and what it served from: rows ``0..N-1`` each candidate's output,
        row ``N`` the mixture served, then every candidate's stage inputs after its first
        stage (whose input is ``x``)."""
        outputs = self._check(x)
        rows, later = [], []
        for chain in self.chains:
            out, trace = chain.predict_trace(outputs)
            rows.append(np.reshape(out, self._width).tolist())
            later.extend(stage_input.tolist() for stage_input in trace[1:])
        mixed = self._mix(rows)
        return mixed, np.array([*rows, np.reshape(mixed, self._width).tolist(), *later])

    def observe_predict_traced(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """``observe`` then ``predict_traced`` in one pass (what the pipeline serves)."""
        outputs = self._check(x)
        rows, later = [], []
        for chain in self.chains:
            out, trace = chain.observe_predict_trace(outputs)
            rows.append(np.reshape(out, self._width).tolist())
            later.extend(stage_input.tolist() for stage_input in trace[1:])
        mixed = self._mix(rows)
        return mixed, np.array([*rows, np.reshape(mixed, self._width).tolist(), *later])

    def predict(self, x: Any) -> np.ndarray:
        return self.predict_traced(x)[0]

    def observe(self, x: Any) -> None:
        outputs = self._check(x)
        for chain in self.chains:
            chain.observe(outputs)

    def learn(self, x: Any, y: Any) -> None:
        """Learn with the trace re-computed now (the label arrived immediately)."""
        self.learn_traced(x, self.predict_traced(x)[1], y)

    def learn_traced(self, x: Any, served: Any, y: Any) -> None:
        """Every candidate learns on what it saw when ``served`` was computed, then the
        weights take the Fixed-Share step on the candidates' losses. Everything is
        checked before the first change, so a refused label changes nothing."""
        outputs = self._check(x)
        if self.n_classes is None:
            label: Any = float(check_target(y, "y")[0])
        else:
            label = check_class_label(y, "y", self.n_classes)
        rows = np.asarray(served, dtype=np.float64)
        count = len(self.chains)
        lengths = [len(chain.stages) - 1 for chain in self.chains]
        expected = (count + 1 + sum(lengths), self._width)
        if rows.shape != expected:
            raise ValueError(f"trace: expected the portfolio's served rows of shape "
                             f"{expected}, got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("trace: the portfolio's served rows are not finite")
        position = count + 1
        for chain, length in zip(self.chains, lengths, strict=True):
            chain.learn_trace((outputs, *rows[position:position + length]), label)
            position += length
        if self.n_classes is None:
            self._update_regression([float(rows[i, 0]) for i in range(count)],
                                    float(rows[count, 0]), label)
        else:
            self._update_weights([float(rows[i, label]) for i in range(count)],
                                 float(rows[count, label]))

    def _update_regression(self, values: list[float], served: float, target: float) -> None:
        """AdaHedge step on the candidates' squared errors (regression)."""
        losses = [(v - target) ** 2 for v in values]
        self._mixability_gap += _mixability_gap(self._weights, losses, self._rate())
        self._mixture_loss += (served - target) ** 2
        self._cumulative_loss = [c + loss for c, loss in
                                 zip(self._cumulative_loss, losses, strict=True)]
        self._n_learned += 1
        self._weights = _exponential_weights(self._cumulative_loss, self._rate())

    def _update_weights(self, probabilities: list[float], served: float) -> None:
        """Bayes step (eta = 1) on the floored probabilities of the label, then share
        ``alpha_t = 1 / (t + 1)`` back to uniform (t = labels learned, this one
        included). ``served``: the mixture's probability of the label when it was served
        (with late labels the weights have moved since), for the regret account."""
        floor = self.probability_floor
        likelihoods = [max(p, floor) for p in probabilities]
        posterior = [w * q for w, q in zip(self._weights, likelihoods, strict=True)]
        total = 0.0
        for value in posterior:
            total += value
        self._mixture_loss -= math.log(max(served, floor))
        self._cumulative_loss = [c - math.log(q) for c, q in
                                 zip(self._cumulative_loss, likelihoods, strict=True)]
        self._n_learned += 1
        share = 1.0 / (self._n_learned + 1)
        spread = share / len(posterior)
        keep = (1.0 - share) / total
        self._weights = [p * keep + spread for p in posterior]

    def on_drift(self) -> None:
        """Every candidate reacts its own way; the weights move ``drift_share`` of their
        mass back to uniform (none by default: the mixture tracks by itself)."""
        for chain in self.chains:
            chain.on_drift()
        if self.drift_share > 0.0 and self.n_classes is not None:
            spread = self.drift_share / len(self._weights)
            self._weights = [(1.0 - self.drift_share) * w + spread for w in self._weights]

    # -- state -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"n_models": self.n_models, "n_classes": self.n_classes,
                "candidates": copy.deepcopy(self._given_candidates),
                "probability_floor": self.probability_floor,
                "drift_share": self.drift_share}

    def _get_state(self) -> dict[str, Any]:
        return {"candidates": [chain.state_dict() for chain in self.chains],
                "weights": np.array(self._weights), "cumulative_loss":
                np.array(self._cumulative_loss), "mixture_loss": self._mixture_loss,
                "mixability_gap": self._mixability_gap, "n_learned": self._n_learned}

    def upgrade_snapshot(self, state_dict: Any) -> Any:
        """Each candidate chain upgrades its own part (see ``Chain.upgrade_snapshot``)."""
        try:
            parts = state_dict["state"]["candidates"]
        except (KeyError, TypeError):
            return state_dict
        if not isinstance(parts, list) or len(parts) != len(self.chains):
            return state_dict
        upgraded = [chain.upgrade_snapshot(part) for chain, part in
                    zip(self.chains, parts, strict=True)]
        return {**state_dict, "state": {**state_dict["state"], "candidates": upgraded}}

    def _set_state(self, state: dict[str, Any]) -> None:
        parts = state["candidates"]
        if len(parts) != len(self.chains):
            raise ValueError(f"Portfolio.load_state_dict: snapshot has {len(parts)} "
                             f"candidates, this portfolio {len(self.chains)}")
        for chain, part in zip(self.chains, parts, strict=True):
            chain.load_state_dict(part)
        self._weights = [float(w) for w in np.asarray(state["weights"], dtype=np.float64)]
        self._cumulative_loss = [float(v) for v in
                                 np.asarray(state["cumulative_loss"], dtype=np.float64)]
        self._mixture_loss = float(state["mixture_loss"])
        self._mixability_gap = float(state["mixability_gap"])
        self._n_learned = int(state["n_learned"])


def _exponential_weights(cumulative: list[float], rate: float) -> list[float]:
    """``softmax(-rate * L)`` (an infinite rate: uniform over the leaders); sums left to
    right."""
    best = min(cumulative)
    if math.isinf(rate):
        raw = [1.0 if c == best else 0.0 for c in cumulative]
    else:
        raw = [math.exp(-rate * (c - best)) for c in cumulative]
    total = 0.0
    for value in raw:
        total += value
    return [value / total for value in raw]


def _mixability_gap(weights: list[float], losses: list[float], rate: float) -> float:
    """Hedge loss minus mix loss of one round (AdaHedge's delta), never negative."""
    hedge = 0.0
    for weight, loss in zip(weights, losses, strict=True):
        hedge += weight * loss
    support = [(w, loss) for w, loss in zip(weights, losses, strict=True) if w > 0.0]
    best = min(loss for _, loss in support)
    if math.isinf(rate):
        mix = best
    else:
        kept = 0.0
        for weight, loss in support:
            kept += weight * math.exp(-rate * (loss - best))
        mix = best - math.log(kept) / rate
    return max(0.0, hedge - mix)


def _unique(names: list[str]) -> list[str]:
    """Names made unique with ``#2``, ``#3`` suffixes (two candidates of the same types)."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique
