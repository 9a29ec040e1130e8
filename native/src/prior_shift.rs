//! PriorShift: online EM estimate of a drifting class mix (Saerens et al. 2002) with a
//! learned source prior and a likelihood-ratio CUSUM gate on serving the correction.
//!
//! The Python class `streamweights.adapters.PriorShift` is a thin handle over
//! [`PriorShiftCore`]: it validates inputs (probability vectors, class labels) and
//! configuration; this module keeps the state and does the per-event arithmetic. The
//! implementation it was ported from is the oracle in `tests/reference/prior_shift.py`.
//!
//! Arithmetic order: every sum over classes is plain left to right (k = 0..C-1). The
//! reference summed with Python's `sum()` (left to right up to Python 3.11, which this
//! project runs; compensated, Neumaier, from 3.12 on) and renormalised in `predict` with
//! numpy's `sum` (left to right below 8 classes, pairwise from 8 on). So the two agree
//! bit for bit below 8 classes on Python 3.11, and to rounding otherwise.

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays;
use crate::expert_losses::read_flat;
use crate::probability_input::quick_label;

/// The fixed configuration (validated by the Python handle).
#[derive(Clone, Debug)]
pub struct Config {
    pub n_classes: usize,
    pub step_offset: f64,
    pub min_step: f64,
    pub label_weight: f64,
    pub reset_on_drift: bool,
    pub prior_floor: f64,
    pub max_ratio: f64,
    pub source_window: i64,
    pub evidence_threshold: f64,
}

/// State and per-event arithmetic of one corrector.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimator {
    pub prior: Vec<f64>,
    pub source: Vec<f64>,
    /// min(π̂_k / π_s,k, max_ratio), kept in step with `prior` and `source`.
    pub ratio: Vec<f64>,
    /// Sum of the model outputs while π_s is learned; None once it is fixed.
    pub source_sum: Option<Vec<f64>>,
    pub source_count: i64,
    pub steps: i64,
    pub evidence: f64,
}

fn sum(values: &[f64]) -> f64 {
    let mut total = 0.0;
    for value in values {
        total += value;
    }
    total
}

impl Estimator {
    /// A fresh corrector: `source` is the configured π_s (normalised) or, when it is
    /// learned, the uniform placeholder with `learn_source` set.
    pub fn new(config: &Config, source: Vec<f64>, learn_source: bool) -> Estimator {
        let n = config.n_classes;
        let mut estimator = Estimator {
            prior: vec![0.0; n],
            source,
            ratio: vec![0.0; n],
            source_sum: if learn_source {
                Some(vec![0.0; n])
            } else {
                None
            },
            source_count: 0,
            steps: 0,
            evidence: 0.0,
        };
        estimator.reset_estimate(config);
        estimator
    }

    pub fn warming_up(&self, config: &Config) -> bool {
        self.source_sum.is_some() && self.source_count < config.source_window
    }

    pub fn correcting(&self, config: &Config) -> bool {
        !self.warming_up(config) && self.evidence >= config.evidence_threshold
    }

    /// The served output for a validated, renormalised probability vector `p`.
    pub fn predict(&self, config: &Config, p: &[f64], out: &mut [f64]) {
        if self.correcting(config) {
            for ((value, ratio), probability) in out.iter_mut().zip(&self.ratio).zip(p) {
                *value = ratio * probability;
            }
        } else {
            out.copy_from_slice(p);
        }
        let total = sum(out);
        for value in out.iter_mut() {
            *value /= total;
        }
    }

    /// One unlabelled model output (reference `_observe_unchecked`).
    ///
    /// Like every step below, in place: no vector is made per event (the reference's
    /// intermediate vectors are the same doubles, computed in the same order).
    pub fn observe(&mut self, config: &Config, p: &[f64]) {
        if self.warming_up(config) {
            self.learn_source(config, p);
            return;
        }
        let mut total = 0.0;
        for (w, v) in self.ratio.iter().zip(p) {
            total += w * v;
        }
        // log of the input's likelihood under the corrected mix over the source mix
        self.add_evidence(total.ln());
        // the E step's responsibilities, `ratio_k p_k / total`, moved toward
        let (step, keep) = self.next_step(config, 1.0);
        let mut moved_total = 0.0;
        for ((prior, w), v) in self.prior.iter_mut().zip(&self.ratio).zip(p) {
            let responsibility = w * v / total;
            let moved = (keep * *prior + step * responsibility).max(config.prior_floor);
            *prior = moved;
            moved_total += moved;
        }
        self.normalise_prior(config, moved_total);
        self.refine_source(config, p);
    }

    /// One labelled model output (reference `_learn_unchecked`).
    pub fn learn(&mut self, config: &Config, p: &[f64], label: usize) {
        if self.warming_up(config) {
            self.learn_source(config, p);
            return;
        }
        let mut total = 0.0;
        for (w, v) in self.ratio.iter().zip(p) {
            total += w * v;
        }
        // log of the label's probability, corrected over uncorrected
        self.add_evidence(self.ratio[label].ln() - total.ln());
        // moved toward the label's one-hot vector
        let (step, keep) = self.next_step(config, config.label_weight);
        let mut moved_total = 0.0;
        for (class, prior) in self.prior.iter_mut().enumerate() {
            let target = if class == label { 1.0 } else { 0.0 };
            let moved = (keep * *prior + step * target).max(config.prior_floor);
            *prior = moved;
            moved_total += moved;
        }
        self.normalise_prior(config, moved_total);
        self.refine_source(config, p);
    }

    /// A drift alarm: restart the averaging, and reset π̂ to π_s when so configured.
    pub fn on_drift(&mut self, config: &Config) {
        if config.reset_on_drift {
            self.reset_estimate(config);
        } else {
            self.steps = 0;
        }
    }

    fn refine_source(&mut self, config: &Config, p: &[f64]) {
        if self.source_sum.is_none() {
            return;
        }
        if self.evidence >= config.evidence_threshold {
            self.source_sum = None;
        } else {
            self.learn_source(config, p);
        }
    }

    fn add_evidence(&mut self, log_ratio: f64) {
        self.evidence = (self.evidence + log_ratio).max(0.0);
    }

    /// The next averaging step's size, `min(weight max(1 / (t + offset), min_step), 1)`,
    /// and what the old estimate keeps (`1 - step`).
    fn next_step(&mut self, config: &Config, weight: f64) -> (f64, f64) {
        self.steps += 1;
        let mut step = 1.0 / (self.steps as f64 + config.step_offset);
        if step < config.min_step {
            step = config.min_step;
        }
        step = (weight * step).min(1.0);
        (step, 1.0 - step)
    }

    /// `prior` holds the moved (floored) estimate summing to `total`: normalise it and
    /// bring the ratios in step.
    fn normalise_prior(&mut self, config: &Config, total: f64) {
        for value in self.prior.iter_mut() {
            *value /= total;
        }
        self.refresh_ratio(config);
    }

    fn learn_source(&mut self, config: &Config, p: &[f64]) {
        let source_sum = self
            .source_sum
            .as_mut()
            .expect("learn_source runs only while the source prior is learned");
        for (total, value) in source_sum.iter_mut().zip(p) {
            *total += value;
        }
        self.source_count += 1;
        let count = self.source_count as f64;
        // π_s: the mean output, normalised, floored, normalised again (in place)
        self.source.clear();
        self.source.extend(source_sum.iter().map(|s| s / count));
        let total = sum(&self.source);
        // The floor keeps π_s > 0 for a class the model never predicts.
        let mut floored_total = 0.0;
        for value in self.source.iter_mut() {
            *value = (*value / total).max(config.prior_floor);
            floored_total += *value;
        }
        for value in self.source.iter_mut() {
            *value /= floored_total;
        }
        if self.source_count <= config.source_window {
            self.reset_estimate(config);
        } else {
            self.refresh_ratio(config); // the ratios change with π_s
        }
    }

    pub fn set_prior(&mut self, config: &Config, prior: Vec<f64>) {
        self.prior = prior;
        self.refresh_ratio(config);
    }

    /// `ratio_k = min(π̂_k / π_s,k, max_ratio)` from the current `prior` and `source`.
    fn refresh_ratio(&mut self, config: &Config) {
        for ((ratio, value), source) in self.ratio.iter_mut().zip(&self.prior).zip(&self.source) {
            *ratio = (value / source).min(config.max_ratio);
        }
    }

    fn reset_estimate(&mut self, config: &Config) {
        self.steps = 0;
        self.evidence = 0.0;
        self.prior.clear();
        self.prior.extend_from_slice(&self.source);
        self.refresh_ratio(config);
    }
}

// ---------------------------------------------------------------------------------------
// Python binding

/// The core of `PriorShift` (see the module docs). Inputs are validated by the handle.
#[pyclass(module = "streamweights._native")]
pub struct PriorShiftCore {
    pub(crate) config: Config,
    pub(crate) estimator: Estimator,
    /// The quick probability check (`check_probability_vector`'s): entries in [0, high],
    /// |Σ - 1| <= quick_tolerance.
    pub(crate) high: f64,
    pub(crate) quick_tolerance: f64,
    scratch: Vec<f64>,
}

impl PriorShiftCore {
    /// The quick path of `check_probability_vector` for a 1-d float64 buffer of length C:
    /// the vector renormalised by its left-to-right sum into `scratch`, or false when
    /// `value` is not such a buffer or does not pass (the handle then validates it in
    /// Python, which accepts it with the same result or raises the usual message).
    fn quick_probabilities(&mut self, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        if !crate::kalman::copy_vector(value, &mut self.scratch)? {
            return Ok(false);
        }
        let mut total = 0.0;
        for item in &self.scratch {
            if !(0.0 <= *item && *item <= self.high) {
                return Ok(false);
            }
            total += item;
        }
        if (total - 1.0).abs() > self.quick_tolerance {
            return Ok(false);
        }
        for item in self.scratch.iter_mut() {
            *item /= total;
        }
        Ok(true)
    }
}

fn check_length(values: &[f64], n: usize, name: &str) -> PyResult<()> {
    if values.len() != n {
        return Err(PyValueError::new_err(format!(
            "{name}: expected {n} values, got {}",
            values.len()
        )));
    }
    Ok(())
}

#[pymethods]
impl PriorShiftCore {
    #[new]
    #[pyo3(signature = (n_classes, source, learn_source, step_offset, min_step, label_weight,
        reset_on_drift, prior_floor, max_ratio, source_window, evidence_threshold, high,
        quick_tolerance))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_classes: usize,
        source: Vec<f64>,
        learn_source: bool,
        step_offset: f64,
        min_step: f64,
        label_weight: f64,
        reset_on_drift: bool,
        prior_floor: f64,
        max_ratio: f64,
        source_window: i64,
        evidence_threshold: f64,
        high: f64,
        quick_tolerance: f64,
    ) -> PyResult<Self> {
        check_length(&source, n_classes, "source")?;
        let config = Config {
            n_classes,
            step_offset,
            min_step,
            label_weight,
            reset_on_drift,
            prior_floor,
            max_ratio,
            source_window,
            evidence_threshold,
        };
        let estimator = Estimator::new(&config, source, learn_source);
        Ok(PriorShiftCore {
            config,
            estimator,
            high,
            quick_tolerance,
            scratch: vec![0.0; n_classes],
        })
    }

    /// `predict(x)` when `x` passes the quick check; None otherwise (see
    /// `quick_probabilities`).
    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
        if !self.quick_probabilities(x)? {
            return Ok(None);
        }
        let mut out = vec![0.0; self.config.n_classes];
        self.estimator
            .predict(&self.config, &self.scratch, &mut out);
        Ok(Some(arrays::vector(py, &out)))
    }

    /// The served output (a new array) for one probability vector validated by the handle.
    fn predict_checked<'py>(
        &self,
        py: Python<'py>,
        p: Vec<f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        check_length(&p, self.config.n_classes, "x")?;
        let mut out = vec![0.0; p.len()];
        self.estimator.predict(&self.config, &p, &mut out);
        Ok(arrays::vector(py, &out))
    }

    /// Served outputs for validated rows, flat (n * C), row after row, as a new float64
    /// array. `rows`: a float64 array read directly (any shape, read flat), or a list.
    fn predict_many<'py>(
        &self,
        py: Python<'py>,
        rows: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let rows = read_flat(py, rows)?;
        let n = self.config.n_classes;
        let mut out = vec![0.0; rows.len()];
        for (row, target) in rows.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            self.estimator.predict(&self.config, row, target);
        }
        Ok(arrays::vector(py, &out))
    }

    /// `observe(x)` when `x` passes the quick check; false otherwise.
    fn observe(&mut self, x: &Bound<'_, PyAny>) -> PyResult<bool> {
        if !self.quick_probabilities(x)? {
            return Ok(false);
        }
        self.estimator.observe(&self.config, &self.scratch);
        Ok(true)
    }

    fn observe_checked(&mut self, p: Vec<f64>) -> PyResult<()> {
        check_length(&p, self.config.n_classes, "x")?;
        self.estimator.observe(&self.config, &p);
        Ok(())
    }

    /// Observe validated rows (flat, n * C) in order (an array or a list, as
    /// `predict_many`).
    fn observe_many(&mut self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = read_flat(py, rows)?;
        let n = self.config.n_classes;
        for row in rows.chunks_exact(n) {
            self.estimator.observe(&self.config, row);
        }
        Ok(())
    }

    /// `learn(x, y)` when `y` is a plain `int` class and `x` passes the quick check; false
    /// otherwise, with nothing learned (the handle then checks both in Python, with the
    /// usual messages: a bool, a NumPy integer or an integral float are labels too).
    fn learn(&mut self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<bool> {
        let label = match quick_label(y, self.config.n_classes) {
            Some(label) => label as usize,
            None => return Ok(false),
        };
        if !self.quick_probabilities(x)? {
            return Ok(false);
        }
        self.estimator.learn(&self.config, &self.scratch, label);
        Ok(true)
    }

    fn learn_checked(&mut self, p: Vec<f64>, label: usize) -> PyResult<()> {
        check_length(&p, self.config.n_classes, "x")?;
        if label >= self.config.n_classes {
            return Err(PyValueError::new_err(format!("y: unknown class {label}")));
        }
        self.estimator.learn(&self.config, &p, label);
        Ok(())
    }

    /// Learn validated rows (flat, n * C) with their labels, in order.
    fn learn_many(
        &mut self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        labels: Vec<usize>,
    ) -> PyResult<()> {
        let rows = read_flat(py, rows)?;
        let n = self.config.n_classes;
        if rows.len() != labels.len() * n || labels.iter().any(|y| *y >= n) {
            return Err(PyValueError::new_err(
                "learn_many: rows and labels do not match (validated labels expected)",
            ));
        }
        for (row, label) in rows.chunks_exact(n).zip(labels) {
            self.estimator.learn(&self.config, row, label);
        }
        Ok(())
    }

    fn on_drift(&mut self) {
        self.estimator.on_drift(&self.config);
    }

    #[getter]
    fn correcting(&self) -> bool {
        self.estimator.correcting(&self.config)
    }

    #[getter]
    fn warming_up(&self) -> bool {
        self.estimator.warming_up(&self.config)
    }

    #[getter]
    fn prior(&self) -> Vec<f64> {
        self.estimator.prior.clone()
    }

    #[getter]
    fn source(&self) -> Vec<f64> {
        self.estimator.source.clone()
    }

    #[getter]
    fn steps(&self) -> i64 {
        self.estimator.steps
    }

    #[getter]
    fn evidence(&self) -> f64 {
        self.estimator.evidence
    }

    /// (prior, steps, source, source_sum or None, source_count, evidence).
    #[allow(clippy::type_complexity)]
    fn get_state(&self) -> (Vec<f64>, i64, Vec<f64>, Option<Vec<f64>>, i64, f64) {
        let e = &self.estimator;
        (
            e.prior.clone(),
            e.steps,
            e.source.clone(),
            e.source_sum.clone(),
            e.source_count,
            e.evidence,
        )
    }

    /// Load a validated state: π_s first, then π̂ (whose ratios depend on it).
    #[pyo3(signature = (prior, steps, source, source_sum, source_count, evidence))]
    fn set_state(
        &mut self,
        prior: Vec<f64>,
        steps: i64,
        source: Vec<f64>,
        source_sum: Option<Vec<f64>>,
        source_count: i64,
        evidence: f64,
    ) -> PyResult<()> {
        let n = self.config.n_classes;
        check_length(&prior, n, "state.prior")?;
        check_length(&source, n, "state.source")?;
        if let Some(values) = &source_sum {
            check_length(values, n, "state.source_sum")?;
        }
        self.estimator.source = source;
        self.estimator.source_sum = source_sum;
        self.estimator.source_count = source_count;
        self.estimator.set_prior(&self.config, prior);
        self.estimator.steps = steps;
        self.estimator.evidence = evidence;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PriorShiftCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window: i64, threshold: f64) -> Config {
        Config {
            n_classes: 2,
            step_offset: 10.0,
            min_step: 0.01,
            label_weight: 1.0,
            reset_on_drift: true,
            prior_floor: 1e-4,
            max_ratio: 20.0,
            source_window: window,
            evidence_threshold: threshold,
        }
    }

    #[test]
    fn warm_up_learns_the_source_and_corrects_nothing() {
        let config = config(4, 0.0);
        let mut estimator = Estimator::new(&config, vec![0.5, 0.5], true);
        for _ in 0..4 {
            estimator.observe(&config, &[0.7, 0.3]);
        }
        assert!(!estimator.warming_up(&config));
        assert!((estimator.source[0] - 0.7).abs() < 1e-15);
        assert_eq!(estimator.prior, estimator.source);
        let mut out = [0.0; 2];
        estimator.predict(&config, &[0.6, 0.4], &mut out);
        assert!((out[0] - 0.6).abs() < 1e-15);
    }

    #[test]
    fn a_shift_opens_the_gate_and_moves_the_estimate() {
        let config = config(1, (1000.0f64).ln());
        let mut estimator = Estimator::new(&config, vec![0.5, 0.5], false);
        for _ in 0..3000 {
            estimator.observe(&config, &[0.9, 0.1]);
        }
        assert!(estimator.correcting(&config));
        assert!(estimator.prior[0] > 0.8);
        estimator.on_drift(&config);
        assert_eq!(estimator.prior, vec![0.5, 0.5]);
        assert!(!estimator.correcting(&config));
    }
}
