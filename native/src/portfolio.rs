//! The online mixture of `streamweights.adapters.Portfolio`, and its candidate chains
//! driven in one call per verb.
//!
//! The mixture's state (weights, cumulative losses, the regret account, AdaHedge's gap)
//! lives here; its arithmetic is portfolio.py's, in the same order (sums left to right
//! over the candidates, `f64` as Python's floats; the oracle is
//! `tests/reference/portfolio.py`). When every stage of every candidate has a native core
//! (see `chain.rs`), `predict_into` / `learn` run the candidates too, so a portfolio event
//! is one call from Python; otherwise the Python handle drives the candidates and calls
//! `update_weights` / `update_regression` here.
//!
//! A candidate's `FeatureCorrection` stage gets the packed `[its input, the models'
//! outputs, features]` (see `Sequence`); the trace keeps only the stage's own input and,
//! after every candidate's rows, the features zero-padded to whole rows of `width`, which
//! `learn` packs again: the layout of portfolio.py's `_served`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use pyo3::buffer::PyBuffer;
use pyo3::types::{PyFloat, PyInt};

use crate::chain::Sequence;
use crate::expert_losses::{native_float64, read_flat, write_native, PROBABILITY_TOLERANCE};
use crate::hedge::mixability_gap;

/// A quick look clears outputs only this far inside the tolerance (validation.py's
/// `_QUICK_SUM_MARGIN`): at the edge, Python's check decides.
const QUICK_SUM_MARGIN: f64 = 1e-12;
/// numpy sums a row of fewer than 8 values left to right; longer rows pairwise, which
/// the quick check does not reproduce (those go through Python's check).
const LEFT_TO_RIGHT_ROW: usize = 8;

/// Per candidate, the first earlier candidate (itself no twin) whose first stage is a
/// FixedShare in exactly the state of this one's, a different object: then one learns a
/// label and the other takes the state it reached, bit for bit what learning it again
/// gives (the default portfolio's three FixedShare candidates: 2.3% of the default's
/// record lane in instructions).
/// Checked on every label, so a stage whose state was set apart is learned on its own.
/// Only candidates whose first stage `may_share` (nothing else holds it) are paired.
fn find_twins(
    py: Python<'_>,
    candidates: &[Sequence],
    may_share: &[bool],
    twins: &mut Vec<Option<usize>>,
) {
    twins.clear();
    for (index, candidate) in candidates.iter().enumerate() {
        let core = candidate.first_fixed_share().filter(|_| may_share[index]);
        let twin = core.and_then(|core| {
            let state = core.bind(py).borrow();
            (0..index).find(|&earlier| {
                may_share[earlier]
                    && twins[earlier].is_none()
                    && candidates[earlier]
                        .first_fixed_share()
                        .map_or(false, |other| {
                            other.bind(py).borrow().state.same_as(&state.state)
                        })
            })
        });
        twins.push(twin);
    }
}

#[pyclass(module = "streamweights._native")]
pub struct PortfolioCore {
    n_models: usize,
    /// Classes per served row (`None`: regression, one value).
    n_classes: Option<usize>,
    width: usize,
    probability_floor: f64,
    drift_share: f64,
    weights: Vec<f64>,
    cumulative_loss: Vec<f64>,
    mixture_loss: f64,
    mixability_gap: f64,
    n_learned: i64,
    /// The squared error's exponent, kept in a field so that `powf` stays a call to the
    /// C library's `pow` (Python's `** 2`), which a constant 2 would let the compiler
    /// turn into a multiplication (they differ in the last bit about once in a
    /// thousand).
    square: f64,
    candidates: Vec<Sequence>,
    /// `learn_candidates`' twins, per candidate (see `find_twins`).
    twins: Vec<Option<usize>>,
    /// Per candidate, whether its first stage is a FixedShare that no other stage holds.
    may_share: Vec<bool>,
    rows: Vec<f64>,
    input: Vec<f64>,
    /// Length of each prediction's features when a candidate packs them (`None`: none
    /// does), and the features of the event being served.
    n_features: Option<usize>,
    features: Vec<f64>,
}

/// `softmax(-rate * L)` (an infinite rate: uniform over the leaders), sums left to right.
fn exponential_weights(cumulative: &[f64], rate: f64) -> Vec<f64> {
    let best = cumulative.iter().copied().fold(f64::INFINITY, f64::min);
    let raw: Vec<f64> = cumulative
        .iter()
        .map(|&c| {
            if rate.is_infinite() {
                if c == best {
                    1.0
                } else {
                    0.0
                }
            } else {
                (-rate * (c - best)).exp()
            }
        })
        .collect();
    let mut total = 0.0;
    for &value in &raw {
        total += value;
    }
    raw.iter().map(|&value| value / total).collect()
}

impl PortfolioCore {
    fn require_candidates(&self) -> PyResult<()> {
        if self.candidates.is_empty() {
            return Err(PyValueError::new_err(
                "PortfolioCore: no candidates bound (the Python handle drives them)",
            ));
        }
        Ok(())
    }

    pub(crate) fn count(&self) -> usize {
        self.weights.len()
    }

    /// AdaHedge's `eta = ln N / Delta` (`inf` while nothing was mixed).
    fn rate(&self) -> f64 {
        if self.mixability_gap <= 0.0 {
            f64::INFINITY
        } else {
            (self.count() as f64).ln() / self.mixability_gap
        }
    }

    /// The Fixed-Share step on the label: `probabilities` holds each of the `count`
    /// candidates' probability of it, `served` the mixture's. The weights become the
    /// posterior, then the shared mix, in place (the same operations, in the same
    /// order, as building each vector anew: this runs on every label).
    fn step_weights(&mut self, count: usize, probability: impl Fn(usize) -> f64, served: f64) {
        let floor = self.probability_floor;
        let likelihood = |i: usize| {
            let p = probability(i);
            if floor > p {
                floor
            } else {
                p
            }
        };
        self.weights.truncate(count);
        let mut total = 0.0;
        for (i, weight) in self.weights.iter_mut().enumerate() {
            *weight *= likelihood(i); // the posterior, summed left to right
            total += *weight;
        }
        self.mixture_loss -= (if floor > served { floor } else { served }).ln();
        for (i, c) in self.cumulative_loss.iter_mut().take(count).enumerate() {
            *c -= likelihood(i).ln();
        }
        self.n_learned += 1;
        let share = 1.0 / (self.n_learned + 1) as f64;
        let spread = share / self.weights.len() as f64;
        let keep = (1.0 - share) / total;
        for weight in self.weights.iter_mut() {
            *weight = *weight * keep + spread;
        }
    }

    fn step_regression(&mut self, values: &[f64], served: f64, target: f64) {
        let square = self.square;
        let losses: Vec<f64> = values.iter().map(|&v| (v - target).powf(square)).collect();
        self.mixability_gap += mixability_gap(&self.weights, &losses, self.rate());
        self.mixture_loss += (served - target).powf(square);
        for (c, &loss) in self.cumulative_loss.iter_mut().zip(&losses) {
            *c += loss;
        }
        self.n_learned += 1;
        self.weights = exponential_weights(&self.cumulative_loss, self.rate());
    }

    /// The weight step on the served rows (`rows` as `predict_into` writes them).
    fn step_on_rows(&mut self, rows: &[f64], y: &Bound<'_, PyAny>) -> PyResult<()> {
        let count = self.count();
        let width = self.width;
        match self.n_classes {
            None => {
                let target: f64 = y.extract()?;
                let values: Vec<f64> = (0..count).map(|i| rows[i * width]).collect();
                self.step_regression(&values, rows[count * width], target);
            }
            Some(_) => {
                let label: usize = y.extract()?;
                let served = rows[count * width + label];
                self.step_weights(count, |i| rows[i * width + label], served);
            }
        }
        Ok(())
    }

    /// The deployed models' outputs `x` as `check_model_outputs` returns them (rows
    /// renormalised by numpy's row sum), into `self.input`, when `x` is a C-contiguous
    /// native float64 array of the right shape whose values are clearly valid; `false`
    /// (Python checks it, and raises or accepts) otherwise.
    fn clear_input(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> bool {
        let buffer = match PyBuffer::<f64>::get(x) {
            Ok(buffer) => buffer,
            Err(_) => return false,
        };
        let shape_ok = match self.n_classes {
            None => buffer.shape() == [self.n_models],
            Some(classes) => buffer.shape() == [self.n_models, classes],
        };
        if !shape_ok || !native_float64(&buffer) || !buffer.is_c_contiguous() {
            return false;
        }
        let mut raw = vec![0.0; self.n_models * self.width];
        buffer.copy_to_slice(py, &mut raw).is_ok() && self.clear_values(&raw)
    }

    /// `clear_input` of raw values already read (row-major, `n_models * width`), into
    /// `self.input`.
    pub(crate) fn clear_values(&mut self, raw: &[f64]) -> bool {
        if raw.len() != self.n_models * self.width
            || self
                .n_classes
                .map_or(false, |classes| classes >= LEFT_TO_RIGHT_ROW)
        {
            return false;
        }
        self.input.clear();
        self.input.extend_from_slice(raw);
        match self.n_classes {
            None => self.input.iter().all(|value| value.is_finite()),
            Some(classes) => {
                let high = 1.0 + PROBABILITY_TOLERANCE;
                for row in self.input.chunks_exact_mut(classes) {
                    let mut total = 0.0;
                    for &value in row.iter() {
                        if !(0.0..=high).contains(&value) {
                            return false; // also NaN; inf is above `high`
                        }
                        total += value;
                    }
                    if (total - 1.0).abs() > PROBABILITY_TOLERANCE - QUICK_SUM_MARGIN {
                        return false;
                    }
                    for value in row.iter_mut() {
                        *value /= total;
                    }
                }
                true
            }
        }
    }

    /// The label as Python's check passes it on (an exact `int` in range; a finite
    /// `float` or `int` as a `float` for regression), or `None`.
    pub(crate) fn clear_label<'py>(&self, y: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        match self.n_classes {
            Some(classes) => {
                let label: i64 = y.downcast_exact::<PyInt>().ok()?.extract().ok()?;
                (label >= 0 && (label as u64) < classes as u64).then(|| y.clone())
            }
            None => {
                let value: f64 =
                    if y.is_exact_instance_of::<PyFloat>() || y.is_exact_instance_of::<PyInt>() {
                        y.extract().ok()?
                    } else {
                        return None;
                    };
                value
                    .is_finite()
                    .then(|| PyFloat::new(y.py(), value).into_any())
            }
        }
    }

    /// The served rows `rows` of a trace when they are a C-contiguous native float64
    /// array of the trace's shape, all finite.
    fn clear_rows(&self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> Option<Vec<f64>> {
        let buffer = PyBuffer::<f64>::get(rows).ok()?;
        let total = self.trace_len();
        let shape_ok = buffer.shape() == [total / self.width, self.width];
        if !shape_ok || !native_float64(&buffer) || !buffer.is_c_contiguous() {
            return None;
        }
        let values = buffer.to_vec(py).ok()?;
        values
            .iter()
            .all(|value| value.is_finite())
            .then_some(values)
    }

    /// Every candidate on `self.input` (each stage observing its input first when
    /// `observe`): the trace into `self.rows`.
    pub(crate) fn run_candidates(&mut self, py: Python<'_>, observe: bool) -> PyResult<()> {
        let count = self.count();
        let width = self.width;
        let total = self.trace_len();
        let mut trace = std::mem::take(&mut self.rows);
        trace.clear();
        trace.resize(total, 0.0);
        let feature_len = self.feature_rows() * width;
        let (trace_rows, feature_rows) = trace.split_at_mut(total - feature_len);
        feature_rows[..self.features.len()].copy_from_slice(&self.features);
        let (served, later) = trace_rows.split_at_mut((count + 1) * width);
        let mut position = 0;
        let mut outcome = Ok(());
        for (index, candidate) in self.candidates.iter_mut().enumerate() {
            let length = candidate.later_len();
            outcome = candidate.predict(
                py,
                &self.input,
                &self.features,
                &mut later[position..position + length],
                &mut served[index * width..(index + 1) * width],
                observe,
            );
            if outcome.is_err() {
                break;
            }
            position += length;
        }
        for column in 0..width {
            let mut mixed = 0.0;
            for (index, &weight) in self.weights.iter().enumerate() {
                mixed += weight * served[index * width + column];
            }
            served[count * width + column] = mixed;
        }
        self.rows = trace;
        outcome
    }

    /// Every candidate learns `y` on what it saw (`self.input`, the later rows of
    /// `trace`), then the weights step.
    pub(crate) fn learn_candidates(
        &mut self,
        py: Python<'_>,
        trace: &[f64],
        y: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let input = std::mem::take(&mut self.input);
        let feature_start = trace.len() - self.feature_rows() * self.width;
        let features = &trace[feature_start..feature_start + self.n_features.unwrap_or(0)];
        let later = &trace[(self.count() + 1) * self.width..feature_start];
        let mut twins = std::mem::take(&mut self.twins);
        find_twins(py, &self.candidates, &self.may_share, &mut twins);
        let mut position = 0;
        let mut outcome = Ok(());
        for (index, &twin) in twins.iter().enumerate() {
            if let Some(source) = twin {
                // The source learned this label already (it comes first): its state now
                // is the one this stage would reach.
                let candidates = &self.candidates;
                if let (Some(source), Some(target)) = (
                    candidates[source].first_fixed_share(),
                    candidates[index].first_fixed_share(),
                ) {
                    let source = source.bind(py).borrow();
                    target.bind(py).borrow_mut().state.copy_state(&source.state);
                }
            }
            let candidate = &mut self.candidates[index];
            let length = candidate.later_len();
            let later = &later[position..position + length];
            outcome = candidate.learn(py, &input, features, later, y, twin.is_some());
            if outcome.is_err() {
                break;
            }
            position += length;
        }
        self.twins = twins;
        self.input = input;
        outcome?;
        self.step_on_rows(trace, y)
    }

    /// The trace of the last `run_candidates`.
    pub(crate) fn rows(&self) -> &[f64] {
        &self.rows
    }

    pub(crate) fn is_native(&self) -> bool {
        !self.candidates.is_empty()
    }

    pub(crate) fn width(&self) -> usize {
        self.width
    }

    pub(crate) fn trace_len(&self) -> usize {
        let later: usize = self.candidates.iter().map(Sequence::later_len).sum();
        (self.count() + 1 + self.feature_rows()) * self.width + later
    }

    /// Whether the candidates need each prediction's features.
    pub(crate) fn needs_features(&self) -> bool {
        self.n_features.is_some()
    }

    /// Rows of width `width` that carry the features at the end of the trace.
    fn feature_rows(&self) -> usize {
        self.n_features
            .map_or(0, |count| (count + self.width - 1) / self.width)
    }

    /// Take `features` for the next `run_candidates` when the candidates need that many
    /// (none when they need none); `false` otherwise.
    pub(crate) fn set_features(&mut self, features: &[f64]) -> bool {
        if features.len() != self.n_features.unwrap_or(0) {
            return false;
        }
        self.features.clear();
        self.features.extend_from_slice(features);
        true
    }

    /// The features of `features` (a float64 array, or `None`) when they fit.
    fn read_features(&mut self, py: Python<'_>, features: Option<&Bound<'_, PyAny>>) -> bool {
        match features {
            Some(features) => match read_flat(py, features) {
                Ok(values) => self.set_features(&values),
                Err(_) => false,
            },
            None => self.set_features(&[]),
        }
    }
}

#[pymethods]
impl PortfolioCore {
    #[new]
    #[pyo3(signature = (n_candidates, n_models, n_classes, probability_floor, drift_share))]
    fn new(
        n_candidates: usize,
        n_models: usize,
        n_classes: Option<usize>,
        probability_floor: f64,
        drift_share: f64,
    ) -> PyResult<Self> {
        if n_candidates == 0 {
            return Err(PyValueError::new_err("candidates: at least one"));
        }
        let mut core = PortfolioCore {
            n_models,
            n_classes,
            width: n_classes.unwrap_or(1),
            probability_floor,
            drift_share,
            weights: vec![1.0 / n_candidates as f64; n_candidates],
            cumulative_loss: vec![0.0; n_candidates],
            mixture_loss: 0.0,
            mixability_gap: 0.0,
            n_learned: 0,
            square: 2.0,
            candidates: Vec::new(),
            twins: Vec::new(),
            may_share: Vec::new(),
            rows: Vec::new(),
            input: Vec::new(),
            n_features: None,
            features: Vec::new(),
        };
        if n_classes.is_none() {
            core.weights = exponential_weights(&core.cumulative_loss, core.rate());
        }
        Ok(core)
    }

    /// Drive the candidates here: one list of stage specs per candidate (see
    /// `chain.rs`'s `Stage::from_spec`); `n_features`: the length of each prediction's
    /// features, when a candidate's feature stage packs them.
    #[pyo3(signature = (candidates, n_features=None))]
    fn bind_candidates(
        &mut self,
        candidates: &Bound<'_, PyAny>,
        n_features: Option<usize>,
    ) -> PyResult<()> {
        let mut bound = Vec::new();
        let input_len = self.n_models * self.width;
        for specs in candidates.try_iter()? {
            let sequence = Sequence::from_specs(&specs?)?;
            if sequence.output_len() != self.width {
                return Err(PyValueError::new_err(
                    "candidates: a candidate's output is not one served row",
                ));
            }
            if sequence.packs() && n_features.is_none()
                || !sequence.fits(input_len, n_features.unwrap_or(0))
            {
                return Err(PyValueError::new_err(
                    "candidates: a stage's input is not the previous output (with the \
                     models' outputs and the features, for a feature stage)",
                ));
            }
            bound.push(sequence);
        }
        if n_features == Some(0) {
            return Err(PyValueError::new_err("n_features: at least one"));
        }
        if bound.len() != self.count() {
            return Err(PyValueError::new_err(format!(
                "candidates: {} bound for {} weights",
                bound.len(),
                self.count()
            )));
        }
        // A candidate may share its first stage's state only when nothing else in the
        // portfolio holds that stage (the same adapter twice would learn twice).
        let objects: Vec<_> = bound.iter().flat_map(Sequence::objects).collect();
        let once = |pointer| objects.iter().filter(|&&other| other == pointer).count() == 1;
        self.may_share = bound
            .iter()
            .map(|candidate| {
                candidate.first_fixed_share().map_or(false, |core| {
                    once(core.as_ptr()) && once(candidate.first_handle())
                })
            })
            .collect();
        self.candidates = bound;
        self.n_features = n_features;
        self.features = vec![0.0; n_features.unwrap_or(0)];
        Ok(())
    }

    /// Whether the candidates run here.
    #[getter]
    fn native(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// Rows of the trace: `(N + 1) * width` served values, then every candidate's stage
    /// inputs after its first.
    #[getter]
    fn trace_size(&self) -> usize {
        self.trace_len()
    }

    /// `predict_traced` of checked model outputs (`observe`: `observe_predict_traced`):
    /// the trace (each candidate's output, the mixture, the later stage inputs) written
    /// into `rows`, a float64 array of `trace_size` values.
    /// `features`: the prediction's checked features (a float64 array), when the
    /// candidates need them.
    #[pyo3(signature = (outputs, rows, observe=false, features=None))]
    fn predict_into(
        &mut self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
        observe: bool,
        features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.require_candidates()?;
        if !self.read_features(py, features) {
            return Err(PyValueError::new_err(format!(
                "features: expected {} numbers",
                self.n_features.unwrap_or(0)
            )));
        }
        self.input = read_flat(py, outputs)?;
        self.run_candidates(py, observe)?;
        write_native(py, rows, &self.rows)
    }

    /// `predict_traced` of the raw outputs `x` when the quick check clears them (the
    /// trace into `rows`, `true`); `false`, with nothing done, otherwise.
    #[pyo3(signature = (x, rows, observe=false, features=None))]
    fn predict_raw(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
        observe: bool,
        features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.candidates.is_empty()
            || !self.read_features(py, features)
            || !self.clear_input(py, x)
        {
            return Ok(false);
        }
        self.run_candidates(py, observe)?;
        write_native(py, rows, &self.rows)?;
        Ok(true)
    }

    /// `learn_traced` of checked outputs, the trace rows `predict_into` wrote (checked
    /// finite, of the right size) and the checked label: every candidate learns on what
    /// it saw, then the weights step.
    fn learn(
        &mut self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.require_candidates()?;
        self.input = read_flat(py, outputs)?;
        let trace = read_flat(py, rows)?;
        if trace.len() != self.trace_len() {
            return Err(PyValueError::new_err(format!(
                "trace: expected {} values, got {}",
                self.trace_len(),
                trace.len()
            )));
        }
        self.learn_candidates(py, &trace, y)
    }

    /// `learn_traced` on raw `x`, `rows`, `y` when the quick checks clear all three
    /// (`true`); `false`, with nothing changed, otherwise (Python checks them).
    fn learn_raw(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if self.candidates.is_empty() {
            return Ok(false);
        }
        let label = match self.clear_label(y) {
            Some(label) => label,
            None => return Ok(false),
        };
        let trace = match self.clear_rows(py, rows) {
            Some(trace) => trace,
            None => return Ok(false),
        };
        if !self.clear_input(py, x) {
            return Ok(false);
        }
        self.learn_candidates(py, &trace, &label)?;
        Ok(true)
    }

    /// Every candidate's `on_drift` (through its handles); then the weights' share.
    fn on_drift(&mut self, py: Python<'_>) -> PyResult<()> {
        for candidate in &self.candidates {
            candidate.on_drift(py)?;
        }
        self.drift_weights();
        Ok(())
    }

    /// Move `drift_share` of the weight back to uniform (classification only).
    fn drift_weights(&mut self) {
        if self.drift_share > 0.0 && self.n_classes.is_some() {
            let spread = self.drift_share / self.count() as f64;
            let keep = 1.0 - self.drift_share;
            for weight in self.weights.iter_mut() {
                *weight = keep * *weight + spread;
            }
        }
    }

    /// The Fixed-Share step on each candidate's probability of the label and the
    /// mixture's (what the Python-driven path calls after its candidates learned).
    fn update_weights(&mut self, probabilities: Vec<f64>, served: f64) -> PyResult<()> {
        if probabilities.len() != self.count() {
            return Err(PyValueError::new_err("probabilities: one per candidate"));
        }
        self.step_weights(probabilities.len(), |i| probabilities[i], served);
        Ok(())
    }

    /// The AdaHedge step on each candidate's value, the mixture's and the target.
    fn update_regression(&mut self, values: Vec<f64>, served: f64, target: f64) -> PyResult<()> {
        if values.len() != self.count() {
            return Err(PyValueError::new_err("values: one per candidate"));
        }
        self.step_regression(&values, served, target);
        Ok(())
    }

    fn weights(&self) -> Vec<f64> {
        self.weights.clone()
    }

    fn cumulative_loss(&self) -> Vec<f64> {
        self.cumulative_loss.clone()
    }

    /// AdaHedge's current rate (`inf` while nothing was mixed).
    #[getter]
    fn current_rate(&self) -> f64 {
        self.rate()
    }

    /// `(weights, cumulative_loss, mixture_loss, mixability_gap, n_learned)`.
    fn get_state(&self) -> (Vec<f64>, Vec<f64>, f64, f64, i64) {
        (
            self.weights.clone(),
            self.cumulative_loss.clone(),
            self.mixture_loss,
            self.mixability_gap,
            self.n_learned,
        )
    }

    fn set_state(
        &mut self,
        weights: Vec<f64>,
        cumulative_loss: Vec<f64>,
        mixture_loss: f64,
        mixability_gap: f64,
        n_learned: i64,
    ) -> PyResult<()> {
        let count = self.count();
        if weights.len() != count || cumulative_loss.len() != count {
            return Err(PyValueError::new_err(format!(
                "state: weights and cumulative_loss need {count} values (one per candidate), \
                 got {} and {}; the snapshot is of another configuration",
                weights.len(),
                cumulative_loss.len()
            )));
        }
        self.weights = weights;
        self.cumulative_loss = cumulative_loss;
        self.mixture_loss = mixture_loss;
        self.mixability_gap = mixability_gap;
        self.n_learned = n_learned;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PortfolioCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_weights_are_uniform_over_leaders_at_infinite_rate() {
        assert_eq!(
            exponential_weights(&[1.0, 0.5, 0.5], f64::INFINITY),
            vec![0.0, 0.5, 0.5]
        );
        let weights = exponential_weights(&[0.0, 1.0], 1.0);
        assert!((weights[0] + weights[1] - 1.0).abs() < 1e-15);
    }

    #[test]
    fn gap_is_never_negative() {
        assert_eq!(mixability_gap(&[0.5, 0.5], &[1.0, 1.0], 2.0), 0.0);
        assert!(mixability_gap(&[0.5, 0.5], &[0.0, 4.0], 1.0) > 0.0);
    }
}
