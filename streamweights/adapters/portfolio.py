"""Portfolio: several candidate chains on the same records, served as an online mixture.

A user should not have to know which chain suits their stream. ``Portfolio`` runs N
candidate chains side by side (by default FixedShare → OnlinePlatt, FixedShare →
Calibeating, OnlineStacking → OnlinePlatt and FixedShare → OnlineBetaScaling on binary
streams, plus a feature-aware one when the stream's predictions carry ``features``) and
serves ``sum_i v_i p_i``, the mixture of their probabilities under weights ``v`` learned
online from each candidate's log-loss.

Which mixture, and why
----------------------
Fixed-Share (Herbster & Warmuth, 1998) with learning rate 1 and the *decreasing*
switching rate ``alpha_t = 1 / (t + 1)`` (Shamir & Merhav, 1999; Koolen & de Rooij,
2013), on the log-loss ``-ln p_i[y]`` of what each candidate served:

* log-loss is 1-mixable (exp-concave with eta = 1), so the mixture's probability of the
  label is ``sum_i v_i p_i[y]`` and the posterior is ``v_i p_i[y] / sum_j v_j p_j[y]``:
  a Bayes mixture, which needs no tuning;
* after each label the posterior is shared, ``v <- (1 - alpha_t) w + alpha_t / N``, so a
  candidate that falls behind keeps weight ``>= alpha_t / N`` and can take over when the
  best chain changes.

Regret bound (in nats, over T labels, for any sequence; candidates' probabilities of the
label above ``probability_floor``): against the best candidate in hindsight

    L_portfolio - min_i L_i <= ln N + ln T,

(the ``ln N`` of the Bayes mixture plus ``sum_t ln(1 / (1 - alpha_t)) = ln T`` for the
sharing), and against the best *sequence* of candidates that switches S times

    L_portfolio - L_sequence <= ln N + ln T + S (ln N + ln T).

A fixed ``alpha`` would pay ``alpha T`` nats against the best candidate, which on a
long stream with a small loss (say 10^5 labels at 0.01 nats) is a visible share of it;
``ln N + ln T`` is about 13 nats for N = 4, T = 10^5. Each drift reaction that moves the
weights (``on_drift``, when ``drift_share > 0``) adds at most ``ln(1 / (1 -
drift_share))`` to both bounds; by default the weights are left to the mixture and only
the candidates react.

The bound is proved for labels that arrive in order, each before the next prediction.
Labels that arrive late are learned in arrival order, and the mixture served meanwhile
uses the weights of its prediction time; ``describe()["regret"]`` accounts what was
actually served, and the tests check it against the bound with delayed labels too (no
proof: the delayed-feedback bounds cost a factor of about the delay).

Regression streams (``n_classes=None``, squared error, no bounded range and no
mixability to lean on) mix by AdaHedge (de Rooij et al., 2014) without sharing: the
weights are ``softmax(-eta L)`` on the cumulative squared errors ``L`` with ``eta = ln N /
Delta`` (``Delta`` the cumulative mixability gap), scale-free and tuning-free; since the
squared error is convex, the mean prediction does at least as well as the weighted
losses, whose regret against the best candidate is ``O(sqrt(L* ln N) + S ln N)`` for
per-label losses in ``[0, S]`` (de Rooij et al., Theorem 8).

Each candidate learns on what it saw at prediction time: ``predict_traced`` returns,
besides the output, every candidate's output and every later stage's input, and the
containing :class:`~streamweights.adapters.chain.Chain` keeps that with the pending
prediction and hands it back to ``learn_traced``. The candidates are driven only through
their public verbs (``predict``, ``observe``, ``learn``, ``on_drift``, ``state_dict``),
so they can be native-core handles.

Features: a candidate with a ``FeatureCorrection`` stage needs each prediction's
``features``. The containing chain passes them (``forwards_features``, ``n_features``);
each feature candidate's chain packs them as it would alone, and the portfolio's trace
keeps the stage's own input and, after the other rows, the features (zero-padded to
whole rows of width C), from which ``learn_traced`` packs the same input again.

Arithmetic order (kept so a port gives the same bits): sums over candidates run left to
right, ``i = 0 .. N-1``, in Python floats.

The mixture's state and arithmetic live in the native core (``native/src/portfolio.rs``).
When every stage of every candidate has a native core (the defaults do), the core also
drives the candidates: ``observe_predict_traced`` and ``learn_traced`` are one call each,
with the stages' own quick paths on slices (``native/src/chain.rs``); it packs a feature
stage's input and writes and reads the trace as the loop does. A candidate with a
stage the core does not know (a user's adapter, ``KalmanWeights``) keeps the Python loop
over :class:`~streamweights.adapters.chain.Chain` handles, and only the weight step runs
in the core; both paths give the same bits (the Python loop is the oracle
``tests/reference/portfolio.py``; ``tests/adapters/test_native_portfolio.py``; with
features, ``test_native_portfolio_features.py``).

References
----------
Herbster & Warmuth (1998), "Tracking the best expert", Machine Learning 32.
Shamir & Merhav (1999), "Low-complexity sequential lossless coding for piecewise-
stationary memoryless sources", IEEE Trans. Inf. Theory 45.
Koolen & de Rooij (2013), "Universal codes from switching strategies", IEEE Trans. Inf.
Theory 59.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar

import numpy as np

from streamweights import _native
from streamweights.adapters.base import (
    _REGISTRY,
    Adapter,
    build_adapter,
    constructor_signature,
    load_part,
    tree_copy,
)
from streamweights.adapters.chain import Chain, check_feature_vector, native_stage_specs
from streamweights.adapters.validation import (
    check_class_label,
    check_count,
    check_in_range,
    check_model_outputs,
    check_target,
)

#: Binary streams: the chains issue 14 names; OnlineBetaScaling stands for "beta scaling".
BINARY_CANDIDATES: tuple[tuple[dict[str, Any], ...], ...] = (
    ({"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"}),
    ({"type": "FixedShare", "share": 0.01}, {"type": "Calibeating", "base": "OnlinePlatt"}),
    ({"type": "OnlineStacking"}, {"type": "OnlinePlatt"}),
    ({"type": "FixedShare", "share": 0.01}, {"type": "OnlineBetaScaling"}),
)
#: More classes: the binary calibrators do not apply; temperature does.
MULTICLASS_CANDIDATES: tuple[tuple[dict[str, Any], ...], ...] = (
    ({"type": "FixedShare", "share": 0.01}, {"type": "OnlineTemperature"}),
    ({"type": "OnlineStacking"}, {"type": "OnlineTemperature"}),
    ({"type": "FixedShare", "share": 0.01},),
    ({"type": "OnlineStacking"},),
)


#: More classes, added to :data:`MULTICLASS_CANDIDATES`: the models averaged, then
#: temperature. Hedge with a slow fixed rate (0.01 per nat) stays near the uniform average
#: for hundreds of labels and moves off it only on a lasting difference: where the models
#: err in different ways (segment: the average beats every model) none of the other
#: candidates averages, since FixedShare's Bayes step concentrates on one model.
AVERAGING_CANDIDATE: tuple[dict[str, Any], ...] = (
    {"type": "Hedge", "learning_rate": 0.01}, {"type": "OnlineTemperature"})


def feature_candidate(n_classes: int, n_features: int) -> list[dict[str, Any]]:
    """The candidate added when predictions carry ``n_features`` features: the first
    default candidate (FixedShare, then OnlinePlatt or OnlineTemperature) followed by a
    :class:`~streamweights.adapters.feature_correction.FeatureCorrection` head, which
    learns what no re-weighting of frozen models can (a region of the feature space where
    all of them err the same way); on binary streams then Calibeating, because the head's
    output is miscalibrated in a shape no one-slope map fixes: under continuous drift
    (hyperplane-gradual) it is underconfident in mid-range (0.70 served, 0.89 right: its
    weights average over the concepts of its memory) and overconfident at the top (0.98
    served, 0.96 right: the label noise caps accuracy). Platt or beta scaling after it
    left the ECE at 0.062-0.065; Calibeating's per-bin correction brought it to 0.004
    and the log-loss from 0.285 to 0.245."""
    if n_classes == 2:
        return [{"type": "FixedShare", "share": 0.01}, {"type": "OnlinePlatt"},
                {"type": "FeatureCorrection", "n_features": n_features},
                {"type": "Calibeating", "base": "OnlinePlatt"}]
    return [{"type": "FixedShare", "share": 0.01}, {"type": "OnlineTemperature"},
            {"type": "FeatureCorrection", "n_features": n_features}]


#: Regression (``n_classes=None``): the three ensembles on the K values.
REGRESSION_CANDIDATES: tuple[tuple[dict[str, Any], ...], ...] = (
    ({"type": "FixedShare"},), ({"type": "Hedge"},), ({"type": "OnlineStacking"},),
)


def default_candidates(n_classes: int | None,
                       n_features: int | None = None) -> list[list[dict[str, Any]]]:
    """The candidate chains a stream with ``n_classes`` classes (``None``: regression)
    gets by default; with ``n_features`` (classification streams whose predictions carry
    that many features) also :func:`feature_candidate`, last."""
    chosen = REGRESSION_CANDIDATES if n_classes is None else \
        BINARY_CANDIDATES if n_classes == 2 else (*MULTICLASS_CANDIDATES, AVERAGING_CANDIDATE)
    candidates = [[dict(stage) for stage in chain] for chain in chosen]
    if n_classes is not None and n_features is not None:
        candidates.append(feature_candidate(n_classes, n_features))
    return candidates


def candidate_name(stages: list[dict[str, Any]]) -> str:
    """``FixedShare->OnlinePlatt``: the stage types in order (ASCII, a metric label)."""
    return "->".join(str(stage.get("type")) for stage in stages)


class Portfolio(Adapter):
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
    n_features
        Length of each prediction's ``features`` (set by the stream when it knows it;
        ``None``: the predictions carry none). With the default candidates of a
        classification stream it adds :func:`feature_candidate`; in given candidates it
        fills in the ``n_features`` of their ``FeatureCorrection`` stages. The portfolio
        then needs the features with every prediction (``predict_traced(x,
        features=...)``; the containing chain passes them along).

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

    fresh_state = True  # candidates' state_dicts and new arrays (Adapter.fresh_state)
    fresh_config = True  # scalars and a copy of the given candidates (Adapter.fresh_config)
    #: The containing chain hands ``predict_traced`` the prediction's features (when
    #: ``n_features`` is not ``None``); each feature candidate gets its packed input.
    forwards_features: ClassVar[bool] = True

    def __init__(self, n_models: int, n_classes: int | None = 2,
                 candidates: list[list[dict[str, Any]]] | None = None,
                 probability_floor: float = 1e-6, drift_share: float = 0.0,
                 n_features: int | None = None) -> None:
        self.n_models = check_count(n_models, "n_models")
        self.n_classes = None if n_classes is None else check_count(n_classes, "n_classes", 2)
        self._width = self.n_classes or 1  # columns of the traced rows
        self.probability_floor = check_in_range(probability_floor, "probability_floor",
                                                0.0, 1.0)
        self.drift_share = check_in_range(drift_share, "drift_share", 0.0, 1.0,
                                          low_open=False)
        self._given_n_features = None if n_features is None else \
            check_count(n_features, "n_features")
        specs = default_candidates(self.n_classes, self._given_n_features) \
            if candidates is None else candidates
        if not isinstance(specs, list | tuple) or not specs:
            raise ValueError("candidates: a non-empty list of chains (lists of stage specs)")
        self.candidates = [self._check_chain(chain, f"candidates[{i}]")
                           for i, chain in enumerate(specs)]
        self._given_candidates = None if candidates is None else tree_copy(self.candidates)
        self.chains = [Chain([self._build_stage(stage, f"candidates[{i}][{j}]")
                              for j, stage in enumerate(chain)])
                       for i, chain in enumerate(self.candidates)]
        self.names = _unique([candidate_name(chain) for chain in self.candidates])
        counts = {chain.n_features for chain in self.chains} - {None}
        if len(counts) > 1:
            raise ValueError(f"candidates: feature stages disagree on n_features "
                             f"({sorted(counts)})")
        #: Length of the ``features`` a candidate needs (``None``: no candidate needs them).
        self.n_features: int | None = counts.pop() if counts else None
        #: Rows of width ``C`` (1 for regression) that carry the features in the trace.
        self._feature_rows = 0 if self.n_features is None else \
            -(-self.n_features // self._width)
        self._make_core()

    def _make_core(self) -> None:
        """The core holding the mixture; it drives the candidates too when it can."""
        self._core = _native.PortfolioCore(len(self.chains), self.n_models, self.n_classes,
                                           self.probability_floor, self.drift_share)
        shape = (self.n_models,) if self.n_classes is None else (self.n_models,
                                                                  self.n_classes)
        # a feature stage gets its input packed by the core, as the loop packs it; never
        # the first stage (whose input is the models' outputs, not a trace row)
        specs = [None if _packs(chain.stages[0]) else
                 native_stage_specs(chain.stages, shape, features=True)
                 for chain in self.chains]
        if all(spec is not None for spec in specs):
            # stages that do not fit together stay unbound: the loop runs and says why
            with contextlib.suppress(ValueError):
                self._core.bind_candidates(specs, self.n_features)
        self._count = len(self.chains)
        self._native = bool(self._core.native)
        self._trace_shape = (self._core.trace_size // self._width, self._width)

    @property
    def native(self) -> bool:
        """Whether the core drives the candidates (one call per verb)."""
        return self._native

    # The mixture's state, read from the core (plain floats, as before).
    @property
    def _weights(self) -> list[float]:
        return self._core.weights()

    @property
    def _cumulative_loss(self) -> list[float]:
        return self._core.cumulative_loss()

    @property
    def _mixture_loss(self) -> float:
        return self._core.get_state()[2]

    @property
    def _mixability_gap(self) -> float:
        return self._core.get_state()[3]

    @property
    def _n_learned(self) -> int:
        return self._core.get_state()[4]

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
            stages.append(tree_copy(dict(stage)))
        return stages

    def _build_stage(self, spec: dict[str, Any], path: str) -> Adapter:
        """One stage of a candidate, with the sizes the portfolio knows filled in."""
        kind = spec["type"]
        if kind not in _REGISTRY:
            raise ValueError(f"{path}.type: unknown adapter {kind!r}; known: "
                             f"{', '.join(sorted(set(_REGISTRY) - {'Chain', 'Portfolio'}))}")
        options = {k: v for k, v in spec.items() if k != "type"}
        parameters = constructor_signature(_REGISTRY[kind]).parameters
        for name, value in (("n_models", self.n_models), ("n_classes", self.n_classes)):
            if name in options:
                raise ValueError(f"{path}.{name}: set by the portfolio; remove it")
            if name in parameters:
                options[name] = value
        if "n_features" in parameters and "n_features" not in options \
                and self._given_n_features is not None:
            options["n_features"] = self._given_n_features
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
            mixed = [m + weight * v for m, v in
                     zip(mixed, first.weights_.tolist(), strict=True)]
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
        return self._core.current_rate

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

    def check_features(self, features: Any) -> np.ndarray | None:
        """The prediction's ``features`` as a float64 vector when a candidate needs them
        (``None`` otherwise); ValueError naming ``features`` when missing or malformed."""
        return check_feature_vector(features, self.n_features)

    def _native_traced(self, x: Any, features: Any,
                       observe: bool) -> tuple[np.ndarray, np.ndarray]:
        """``predict_traced`` (``observe``: ``observe_predict_traced``) in one core call:
        the core checks ``x`` the quick way (``check_model_outputs``'s arithmetic) or
        Python checks it first; ``features`` are checked here (after ``x`` when both are
        wrong, as the loop does)."""
        vector = None
        if self.n_features is not None:
            try:
                vector = np.ascontiguousarray(self.check_features(features))
            except ValueError:
                self._check(x)  # the loop names x first
                raise
        rows = _empty(self._trace_shape)
        if not self._core.predict_raw(x, rows, observe, vector):
            self._core.predict_into(np.ascontiguousarray(self._check(x)), rows, observe,
                                    vector)
        served = rows[self._count]
        return (served.copy() if self.n_classes is not None else np.array(served[0])), rows

    def _served(self, x: Any, features: Any, observe: bool) -> tuple[np.ndarray, np.ndarray]:
        """The mixture and its trace: rows ``0..N-1`` each candidate's output, row ``N``
        the mixture served, then every candidate's stage inputs after its first stage
        (whose input is ``x``; a feature stage's own input ``p``, the first ``C`` numbers
        of its packed vector), then the features (zero-padded to whole rows), which
        ``learn_traced`` packs again with ``x``."""
        if self._native:
            return self._native_traced(x, features, observe)
        outputs = self._check(x)
        vector = self.check_features(features)
        rows, later = [], []
        for chain in self.chains:
            given = vector if chain.n_features is not None else None
            out, trace = chain.observe_predict_trace(outputs, given) if observe else \
                chain.predict_trace(outputs, given)
            rows.append(np.reshape(out, self._width).tolist())
            later.extend(stage_input[:self._width].tolist() if _packs(stage)
                         else stage_input.tolist()
                         for stage, stage_input in zip(chain.stages[1:], trace[1:],
                                                       strict=True))
        mixed = self._mix(rows)
        if vector is not None:
            padded = [*vector.tolist(), *[0.0] * (self._feature_rows * self._width
                                                  - len(vector))]
            later.extend(padded[i:i + self._width] for i in range(0, len(padded),
                                                                  self._width))
        return mixed, np.array([*rows, np.reshape(mixed, self._width).tolist(), *later])

    def predict_traced(self, x: Any, features: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The mixture and what it served from (see :meth:`_served`); ``features``: the
        prediction's features, needed when ``n_features`` is not ``None``."""
        return self._served(x, features, observe=False)

    def observe_predict_traced(self, x: Any,
                               features: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``observe`` then ``predict_traced`` in one pass (what the pipeline serves)."""
        return self._served(x, features, observe=True)

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
        if self._native and self._core.learn_raw(x, served, y):
            return  # the core's quick checks cleared x, the trace and y
        outputs = self._check(x)
        if self.n_classes is None:
            label: Any = float(check_target(y, "y")[0])
        else:
            label = check_class_label(y, "y", self.n_classes)
        rows = np.asarray(served, dtype=np.float64)
        count = len(self.chains)
        lengths = [len(chain.stages) - 1 for chain in self.chains]
        expected = (count + 1 + sum(lengths) + self._feature_rows, self._width)
        if rows.shape != expected:
            raise ValueError(f"trace: expected the portfolio's served rows of shape "
                             f"{expected}, got {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("trace: the portfolio's served rows are not finite")
        features = None if self.n_features is None else \
            rows[len(rows) - self._feature_rows:].ravel()[:self.n_features]
        if self._native:
            self._core.learn(np.ascontiguousarray(outputs), np.ascontiguousarray(rows), label)
            return
        position = count + 1
        for chain, length in zip(self.chains, lengths, strict=True):
            inputs = [_pack(row, outputs, features) if _packs(stage) else row
                      for stage, row in zip(chain.stages[1:],
                                            rows[position:position + length], strict=True)]
            chain.learn_trace((outputs, *inputs), label)
            position += length
        if self.n_classes is None:
            self._core.update_regression([float(rows[i, 0]) for i in range(count)],
                                         float(rows[count, 0]), label)
        else:
            self._core.update_weights([float(rows[i, label]) for i in range(count)],
                                      float(rows[count, label]))

    def on_drift(self) -> None:
        """Every candidate reacts its own way; the weights move ``drift_share`` of their
        mass back to uniform (none by default: the mixture tracks by itself)."""
        if self._native:
            self._core.on_drift()  # each stage's handle, then the weights
            return
        for chain in self.chains:
            chain.on_drift()
        self._core.drift_weights()

    # -- state -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        config = {"n_models": self.n_models, "n_classes": self.n_classes,
                  "candidates": tree_copy(self._given_candidates),
                  "probability_floor": self.probability_floor,
                  "drift_share": self.drift_share}
        if self._given_n_features is not None:  # absent otherwise: older snapshots load
            config["n_features"] = self._given_n_features
        return config

    def _get_state(self) -> dict[str, Any]:
        weights, cumulative_loss, mixture_loss, mixability_gap, n_learned = \
            self._core.get_state()
        return {"candidates": [chain.state_dict() for chain in self.chains],
                "weights": np.array(weights), "cumulative_loss": np.array(cumulative_loss),
                "mixture_loss": mixture_loss, "mixability_gap": mixability_gap,
                "n_learned": n_learned}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy: the core travels as the mixture's state and is rebuilt
        over the copied candidates (a compiled handle does not travel)."""
        return {**{k: v for k, v in self.__dict__.items() if k != "_core"},
                "_core_state": self._core.get_state()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        core_state = state.pop("_core_state")
        self.__dict__.update(state)
        self._make_core()
        self._core.set_state(*core_state)

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
        weights = [float(w) for w in np.asarray(state["weights"], dtype=np.float64).ravel()]
        cumulative = [float(v) for v in
                      np.asarray(state["cumulative_loss"], dtype=np.float64).ravel()]
        mixture_loss = float(state["mixture_loss"])
        mixability_gap = float(state["mixability_gap"])
        n_learned = int(state["n_learned"])
        if len(weights) != len(self.chains) or len(cumulative) != len(self.chains):
            raise ValueError(f"Portfolio.load_state_dict: weights and cumulative_loss need "
                             f"{len(self.chains)} values (one per candidate), got "
                             f"{len(weights)} and {len(cumulative)}")
        for chain, part in zip(self.chains, parts, strict=True):
            load_part(chain, part, upgraded=True)  # (by upgrade_snapshot)
        self._core.set_state(weights, cumulative, mixture_loss, mixability_gap, n_learned)


def _packs(stage: Adapter) -> bool:
    """A stage the chain hands the packed ``[its input, the models' outputs, features]``."""
    return bool(getattr(stage, "uses_features", False))


def _pack(row: np.ndarray, outputs: np.ndarray, features: np.ndarray | None) -> np.ndarray:
    """A feature stage's packed input, as ``Chain`` built it at prediction time."""
    assert features is not None  # the portfolio has feature rows when a stage packs
    return np.concatenate([row, np.ravel(outputs), features])


_empty = np.empty


def _unique(names: list[str]) -> list[str]:
    """Names made unique with ``#2``, ``#3`` suffixes (two candidates of the same types)."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique
