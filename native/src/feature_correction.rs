//! FeatureCorrection: a Kalman-filtered logistic head over the record's features and the
//! models' logits that corrects the chain's probabilities (Python face:
//! `streamweights/adapters/feature_correction.py`, reference: `tests/reference/
//! feature_correction.py`).
//!
//! The packed input is `[p (C), model outputs (K*C, row by row), features (d)]`, already
//! validated and renormalised at the Python edge. Every sum runs left to right over its
//! index (class `c = 0..C-1`, regressor `j = 0..m-1`); the numpy reference uses `@` and
//! `mean` (pairwise / BLAS order), so the two agree to rounding, not bit for bit.

use numpy::PyArray1;
use pyo3::exceptions::{PyArithmeticError, PyValueError};
use pyo3::prelude::*;

use crate::arrays;
use crate::expert_losses::read_flat;
use crate::kalman::{all_finite, copy_vector, dot};
use crate::probability_input::quick_label;
use crate::wide;

/// Probabilities are floored here before the log (as in the Python reference).
const PROBABILITY_FLOOR: f64 = 1e-6;
/// Added to a variance before the square root of the standardiser.
const VARIANCE_FLOOR: f64 = 1e-12;
/// Bound on a standardised regressor, in standard deviations.
const MAX_STANDARDISED: f64 = 5.0;
/// Probit moderation factor: logit differences have variance `2 zᵀPz`, and the probit
/// approximation of a logistic integral N(m, v) divides by sqrt(1 + π v / 8).
const MODERATION: f64 = std::f64::consts::PI / 4.0;

/// How far a probability vector may be off the simplex (the Python package's
/// `PROBABILITY_TOLERANCE`): entries in `[0, 1 + tol]`, sums within `1 ± tol`.
const PROBABILITY_TOLERANCE: f64 = 1e-3;

/// Check a packed input `[p (C), outputs (K*C), features]` of the right length the way
/// the Python validators do (same messages: the field, what is wrong) and renormalise
/// each probability vector by its sum taken left to right.
pub fn check_packed(packed: &mut [f64], n_classes: usize, n_models: usize) -> Result<(), String> {
    // One vectorised pass for the usual case; which fault it is only when there is one.
    if !all_finite(packed) {
        if packed.iter().any(|v| v.is_nan()) {
            return Err("x: contains NaN".to_string());
        }
        return Err("x: contains inf".to_string());
    }
    let c = n_classes;
    let blocks = [("x.proba", 0, 1), ("x.outputs", c, n_models)];
    for (name, start, rows) in blocks.iter() {
        let block = &packed[*start..*start + rows * c];
        let low = block.iter().cloned().fold(f64::INFINITY, f64::min);
        let high = block.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if low < 0.0 || high > 1.0 + PROBABILITY_TOLERANCE {
            return Err(format!(
                "{}: probabilities must lie in [0, 1], got min {}, max {}",
                name, low, high
            ));
        }
        let mut worst: f64 = 0.0;
        for row in block.chunks(c) {
            worst = worst.max((row_sum(row) - 1.0).abs());
        }
        if worst > PROBABILITY_TOLERANCE {
            return Err(format!(
                "{}: probabilities must sum to 1 (tolerance {}), off by {}",
                name, PROBABILITY_TOLERANCE, worst
            ));
        }
    }
    for row in packed[..c + n_models * c].chunks_mut(c) {
        let total = row_sum(row);
        for value in row.iter_mut() {
            *value /= total;
        }
    }
    Ok(())
}

fn row_sum(row: &[f64]) -> f64 {
    let mut total = 0.0;
    for value in row {
        total += value;
    }
    total
}

/// The settings a FeatureCorrection is built with (validated in Python).
#[derive(Clone, Debug)]
pub struct Settings {
    pub n_classes: usize,
    pub n_models: usize,
    pub n_features: usize,
    pub forgetting: f64,
    pub prior_variance: f64,
    pub scaling_window: usize,
    pub drift_forgetting: f64,
    pub moderate: bool,
    pub guard: bool,
    pub guard_share: f64,
}

/// The head's state and arithmetic, with no Python types inside.
#[derive(Clone, Debug)]
pub struct Correction {
    pub(crate) settings: Settings,
    /// Regressors: the constant, then the standardised logits and features.
    m: usize,
    /// `m × C`, row-major (`weights[j * C + c]`).
    weights: Vec<f64>,
    /// `m × m`, row-major, symmetric.
    covariance: Vec<f64>,
    mean: Vec<f64>,
    variance: Vec<f64>,
    /// `sqrt(variance + VARIANCE_FLOOR)` per regressor: the standardiser's divisors,
    /// derived from `variance` whenever it changes (not state), so a head takes no square
    /// root.
    scale: Vec<f64>,
    guard_weight: f64,
    n_learned: u64,
    /// Where `learn` writes the next covariance before it is kept (swapped in only
    /// when the whole update is finite): one allocation for the head's life, not one
    /// `m × m` vector per label. Not state.
    next_covariance: Vec<f64>,
}

/// What one event's head computes: regressors, raw regressors, corrected probabilities,
/// and `P z` with `zᵀ P z` when the moderation needed them (learn uses the same values).
struct Head {
    z: Vec<f64>,
    raw: Vec<f64>,
    corrected: Vec<f64>,
    gain: Option<(Vec<f64>, f64)>,
}

impl Correction {
    pub fn new(settings: Settings) -> Self {
        let c = settings.n_classes;
        let m = 1 + c + settings.n_models * c + settings.n_features;
        let mut correction = Correction {
            settings,
            m,
            weights: Vec::new(),
            covariance: Vec::new(),
            mean: Vec::new(),
            variance: Vec::new(),
            scale: Vec::new(),
            guard_weight: 0.5,
            n_learned: 0,
            next_covariance: Vec::new(),
        };
        correction.reset();
        correction
    }

    fn reset(&mut self) {
        let (m, c) = (self.m, self.settings.n_classes);
        self.weights = vec![0.0; m * c];
        self.covariance = vec![0.0; m * m];
        for j in 0..m {
            self.covariance[j * m + j] = self.settings.prior_variance;
        }
        self.mean = vec![0.0; m - 1];
        self.variance = vec![0.0; m - 1];
        self.rescale();
        self.guard_weight = 0.5;
        self.n_learned = 0;
    }

    /// The standardiser's divisors from the current variances.
    #[inline(always)]
    fn rescale(&mut self) {
        self.scale.clear();
        self.scale.extend(
            self.variance
                .iter()
                .map(|variance| (variance + VARIANCE_FLOOR).sqrt()),
        );
    }

    /// Length of the packed input.
    pub fn input_size(&self) -> usize {
        let s = &self.settings;
        s.n_classes + s.n_models * s.n_classes + s.n_features
    }

    /// Centred log-probabilities of the upstream output and of each model, then features.
    #[inline(always)]
    fn regressors(&self, packed: &[f64]) -> Vec<f64> {
        let c = self.settings.n_classes;
        let rows = 1 + self.settings.n_models;
        let mut raw = Vec::with_capacity(self.m - 1);
        for row in 0..rows {
            // The row's logs go in place, then are centred there (no vector per row).
            let start = raw.len();
            raw.extend(
                packed[row * c..(row + 1) * c]
                    .iter()
                    .map(|p| p.max(PROBABILITY_FLOOR).ln()),
            );
            let centre = row_sum(&raw[start..]) / c as f64;
            for value in &mut raw[start..] {
                *value -= centre;
            }
        }
        raw.extend_from_slice(&packed[rows * c..]);
        raw
    }

    #[inline(always)]
    fn head(&self, packed: &[f64]) -> Head {
        let (m, c) = (self.m, self.settings.n_classes);
        let raw = self.regressors(packed);
        let mut z = vec![1.0; m];
        for (((slot, value), mean), scale) in
            z[1..].iter_mut().zip(&raw).zip(&self.mean).zip(&self.scale)
        {
            *slot = ((value - mean) / scale).clamp(-MAX_STANDARDISED, MAX_STANDARDISED);
        }
        let mut correction = vec![0.0; c];
        for (class, slot) in correction.iter_mut().enumerate() {
            let mut total = 0.0;
            for (j, zj) in z.iter().enumerate() {
                total += zj * self.weights[j * c + class];
            }
            *slot = total;
        }
        let mut gain = None;
        if self.settings.moderate {
            let pz = self.gain(&z);
            let spread = dot(&z, &pz);
            let shrink = (1.0 + MODERATION * spread).sqrt();
            for value in correction.iter_mut() {
                *value /= shrink;
            }
            gain = Some((pz, spread));
        }
        let mut logits: Vec<f64> = packed[..c]
            .iter()
            .zip(&correction)
            .map(|(p, add)| p.max(PROBABILITY_FLOOR).ln() + add)
            .collect();
        let top = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for value in logits.iter_mut() {
            *value = (*value - top).exp();
            total += *value;
        }
        for value in logits.iter_mut() {
            *value /= total;
        }
        Head {
            z,
            raw,
            corrected: logits,
            gain,
        }
    }

    /// `P z`, each entry summed left to right over `j`. `P` is symmetric (bit for bit:
    /// every update writes `(i, j)` and `(j, i)` from the same products, and `set_state`
    /// refuses anything else), so row `i` is column `i`: adding `z_j` times row `j` to
    /// all entries at once keeps each entry's order (the same bits as a dot product per
    /// row) and reads the matrix contiguously, which the compiler vectorises.
    #[inline(always)]
    fn gain(&self, z: &[f64]) -> Vec<f64> {
        let m = self.m;
        let mut gain = vec![0.0; m];
        wide::add_rows_scaled(&mut gain, &self.covariance, z);
        gain
    }

    #[inline(always)]
    fn served(&self, proba: &[f64], corrected: Vec<f64>) -> Vec<f64> {
        if !self.settings.guard {
            return corrected;
        }
        let share = self.guard_weight;
        proba
            .iter()
            .zip(&corrected)
            .map(|(p, q)| (1.0 - share) * p + share * q)
            .collect()
    }

    /// The served probabilities for one packed input; changes nothing. (The AVX build
    /// where the CPU has AVX: see `predict_built_for_the_cpu`.)
    pub fn predict(&self, packed: &[f64]) -> Vec<f64> {
        predict_built_for_the_cpu(self, packed)
    }

    #[inline(always)]
    fn predict_inline(&self, packed: &[f64]) -> Vec<f64> {
        let head = self.head(packed);
        self.served(&packed[..self.settings.n_classes], head.corrected)
    }

    /// One extended-Kalman step on the label, the drift transition, then the guard and
    /// the standardiser take the event in. Refuses (changing nothing) an update whose
    /// result is not finite.
    pub fn learn(&mut self, packed: &[f64], label: usize) -> Result<(), String> {
        learn_built_for_the_cpu(self, packed, label)
    }

    #[inline(always)]
    fn learn_inline(&mut self, packed: &[f64], label: usize) -> Result<(), String> {
        let (m, c) = (self.m, self.settings.n_classes);
        let head = self.head(packed);
        let q = &head.corrected;
        let mut guard_weight = self.guard_weight;
        if self.settings.guard {
            let trusted = guard_weight * q[label];
            let evidence = trusted + (1.0 - guard_weight) * packed[label];
            if evidence > 0.0 {
                guard_weight = trusted / evidence;
            }
            let share = self.settings.guard_share;
            guard_weight = (1.0 - share) * guard_weight + share / 2.0;
        }
        let mut residual: Vec<f64> = q.iter().map(|value| -value).collect();
        residual[label] += 1.0;
        let mut curvature = 0.0;
        for value in q {
            curvature += value * (1.0 - value);
        }
        // `P z` and `zᵀ P z`: the moderation's, when it computed them (the same bits).
        let (gain, spread) = match head.gain {
            Some(computed) => computed,
            None => {
                let gain = self.gain(&head.z);
                let spread = dot(&head.z, &gain);
                (gain, spread)
            }
        };
        let denominator = 1.0 + curvature * spread;
        let factor = curvature / denominator;
        let gamma = self.settings.forgetting;
        let keep = gamma * gamma;
        let refill = (1.0 - keep) * self.settings.prior_variance;
        let mut covariance = std::mem::take(&mut self.next_covariance);
        covariance.resize(m * m, 0.0);
        let finite = wide::rank_one_step(
            &mut covariance,
            &self.covariance,
            &gain,
            factor,
            keep,
            refill,
        );
        let mut weights = vec![0.0; m * c];
        for j in 0..m {
            let step = gain[j] / denominator;
            for class in 0..c {
                let updated = self.weights[j * c + class] + step * residual[class];
                weights[j * c + class] = updated * gamma;
            }
        }
        let rate =
            (1.0 / (self.n_learned as f64 + 1.0)).max(1.0 / self.settings.scaling_window as f64);
        let mut mean = self.mean.clone();
        let mut variance = self.variance.clone();
        for i in 0..m - 1 {
            let delta = head.raw[i] - self.mean[i];
            mean[i] = self.mean[i] + rate * delta;
            variance[i] = (1.0 - rate) * (self.variance[i] + rate * delta * delta);
        }
        let finite = finite
            && weights.iter().all(|v| v.is_finite())
            && variance.iter().all(|v| v.is_finite())
            && mean.iter().all(|v| v.is_finite());
        if !finite {
            self.next_covariance = covariance; // (its buffer, for the next label)
            return Err(
                "FeatureCorrection: the update is not finite for this event \
                        (features too large for the arithmetic)"
                    .to_string(),
            );
        }
        self.weights = weights;
        self.next_covariance = std::mem::replace(&mut self.covariance, covariance);
        self.mean = mean;
        self.variance = variance;
        self.rescale();
        self.guard_weight = guard_weight;
        self.n_learned += 1;
        Ok(())
    }

    /// A detected change: the one-off transition with `drift_forgetting`.
    pub fn on_drift(&mut self) {
        let m = self.m;
        let gamma = self.settings.drift_forgetting;
        let keep = gamma * gamma;
        let refill = (1.0 - keep) * self.settings.prior_variance;
        for value in self.weights.iter_mut() {
            *value *= gamma;
        }
        for i in 0..m {
            for j in 0..m {
                let value = keep * self.covariance[i * m + j];
                self.covariance[i * m + j] = value + if i == j { refill } else { 0.0 };
            }
        }
    }
}

wide::avx_dispatch! {
    /// `Correction::predict` compiled for 256-bit registers where the CPU has AVX (the
    /// same bits: see `wide`). `P z` and the covariance step are `wide` kernels with
    /// their own dispatch: compiled apart, they keep their slices' no-alias facts and ran
    /// ~3% faster per event than inlined here.
    fn predict_built_for_the_cpu(correction: &Correction, packed: &[f64]) -> Vec<f64>
        => Correction::predict_inline
}

wide::avx_dispatch! {
    /// `Correction::learn` compiled for AVX where the CPU has it, as `predict`.
    fn learn_built_for_the_cpu(
        correction: &mut Correction,
        packed: &[f64],
        label: usize,
    ) -> Result<(), String> => Correction::learn_inline
}

/// Python handle over [`Correction`]: ``streamweights._native.FeatureCorrectionCore``.
#[pyclass(module = "streamweights._native")]
pub struct FeatureCorrectionCore {
    pub(crate) inner: Correction,
}

type State = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, f64, u64);

#[pymethods]
impl FeatureCorrectionCore {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_classes: usize,
        n_models: usize,
        n_features: usize,
        forgetting: f64,
        prior_variance: f64,
        scaling_window: usize,
        drift_forgetting: f64,
        moderate: bool,
        guard: bool,
        guard_share: f64,
    ) -> PyResult<Self> {
        if n_classes < 2 || n_models < 1 || n_features < 1 || scaling_window < 1 {
            return Err(PyValueError::new_err(
                "FeatureCorrectionCore: needs n_classes >= 2 and n_models, n_features, \
                 scaling_window >= 1",
            ));
        }
        Ok(FeatureCorrectionCore {
            inner: Correction::new(Settings {
                n_classes,
                n_models,
                n_features,
                forgetting,
                prior_variance,
                scaling_window,
                drift_forgetting,
                moderate,
                guard,
                guard_share,
            }),
        })
    }

    /// Served probabilities (a new array) for one packed input given as a float64
    /// vector of the packed length (see `kalman::copy_vector`), checked and renormalised
    /// first; `None` for any other form, which the handle converts and passes to
    /// `predict_checked`.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
        let mut packed = vec![0.0; self.inner.input_size()];
        if !copy_vector(x, &mut packed)? {
            return Ok(None);
        }
        self.predict_checked(py, packed).map(Some)
    }

    /// Served probabilities (a new array) for one packed input the handle converted.
    fn predict_checked<'py>(
        &self,
        py: Python<'py>,
        mut packed: Vec<f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check(&mut packed)?;
        Ok(arrays::vector(py, &self.inner.predict(&packed)))
    }

    /// Served probabilities for a batch of packed inputs (flat, row by row: a list, or
    /// a C-contiguous float64 array read in memory order).
    fn predict_many(&self, py: Python<'_>, packed: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        let mut packed = read_flat(py, packed)?;
        self.check_many(&mut packed)?;
        let size = self.inner.input_size();
        let inner = &self.inner;
        Ok(py.allow_threads(|| {
            packed
                .chunks(size)
                .flat_map(|row| inner.predict(row))
                .collect()
        }))
    }

    /// Learn one label when `y` is a plain `int` class and `x` a float64 vector of the
    /// packed length (as `predict`): true; false (nothing read, nothing changed) for any
    /// other form, which the handle checks, converts and passes to `learn_checked`.
    fn learn(&mut self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<bool> {
        let label = match quick_label(y, self.inner.settings.n_classes) {
            Some(label) => label as usize,
            None => return Ok(false),
        };
        let mut packed = vec![0.0; self.inner.input_size()];
        if !copy_vector(x, &mut packed)? {
            return Ok(false);
        }
        self.learn_checked(packed, label)?;
        Ok(true)
    }

    /// Learn one label: ValueError for a bad input, ArithmeticError (state unchanged) for
    /// an update that would not be finite.
    fn learn_checked(&mut self, mut packed: Vec<f64>, label: usize) -> PyResult<()> {
        self.check_label(label)?;
        self.check(&mut packed)?;
        self.inner
            .learn(&packed, label)
            .map_err(PyArithmeticError::new_err)
    }

    /// Learn a batch in order (flat packed rows); stops at the first refused update,
    /// returning how many were learned, like the sequential loop.
    fn learn_many(
        &mut self,
        py: Python<'_>,
        packed: &Bound<'_, PyAny>,
        labels: Vec<usize>,
    ) -> PyResult<usize> {
        let mut packed = read_flat(py, packed)?;
        let size = self.inner.input_size();
        if packed.len() != size * labels.len() {
            return Err(PyValueError::new_err(format!(
                "learn_many: {} labels need {} packed numbers, got {}",
                labels.len(),
                size * labels.len(),
                packed.len()
            )));
        }
        for label in &labels {
            self.check_label(*label)?;
        }
        self.check_many(&mut packed)?;
        let inner = &mut self.inner;
        let outcome = py.allow_threads(|| {
            for (done, (row, label)) in packed.chunks(size).zip(&labels).enumerate() {
                if let Err(error) = inner.learn(row, *label) {
                    return Err((done, error));
                }
            }
            Ok(labels.len())
        });
        outcome.map_err(|(done, error)| {
            PyArithmeticError::new_err(format!("{} (after {} learned)", error, done))
        })
    }

    fn on_drift(&mut self) {
        self.inner.on_drift();
    }

    /// `(weights m×C, covariance m×m, mean, variance, guard_weight, n_learned)`, flat.
    fn get_state(&self) -> State {
        let inner = &self.inner;
        (
            inner.weights.clone(),
            inner.covariance.clone(),
            inner.mean.clone(),
            inner.variance.clone(),
            inner.guard_weight,
            inner.n_learned,
        )
    }

    fn set_state(&mut self, state: State) -> PyResult<()> {
        let (weights, covariance, mean, variance, guard_weight, n_learned) = state;
        let (m, c) = (self.inner.m, self.inner.settings.n_classes);
        if weights.len() != m * c
            || covariance.len() != m * m
            || mean.len() != m - 1
            || variance.len() != m - 1
        {
            return Err(PyValueError::new_err(
                "state: array sizes do not match this FeatureCorrection's configuration",
            ));
        }
        let symmetric = (0..m).all(|i| {
            (i + 1..m).all(|j| covariance[i * m + j].to_bits() == covariance[j * m + i].to_bits())
        });
        if !symmetric {
            return Err(PyValueError::new_err(
                "state.covariance: must be symmetric, entry for entry (every covariance \
                 this head writes is: was the saved state edited?)",
            ));
        }
        let inner = &mut self.inner;
        inner.weights = weights;
        inner.covariance = covariance;
        inner.mean = mean;
        inner.variance = variance;
        inner.rescale();
        inner.guard_weight = guard_weight;
        inner.n_learned = n_learned;
        Ok(())
    }
}

impl FeatureCorrectionCore {
    pub(crate) fn check(&self, packed: &mut [f64]) -> PyResult<()> {
        if packed.len() != self.inner.input_size() {
            return Err(PyValueError::new_err(format!(
                "x: expected shape ({},), got ({},)",
                self.inner.input_size(),
                packed.len()
            )));
        }
        let s = &self.inner.settings;
        check_packed(packed, s.n_classes, s.n_models).map_err(PyValueError::new_err)
    }

    /// Every row of a flat batch checked (in order) before anything is used.
    fn check_many(&self, packed: &mut [f64]) -> PyResult<()> {
        let size = self.inner.input_size();
        if packed.len() % size != 0 {
            return Err(PyValueError::new_err(format!(
                "xs: a batch of packed inputs of {} numbers each, got {} numbers",
                size,
                packed.len()
            )));
        }
        let s = &self.inner.settings;
        for (index, row) in packed.chunks_mut(size).enumerate() {
            check_packed(row, s.n_classes, s.n_models)
                .map_err(|error| PyValueError::new_err(format!("xs[{}]: {}", index, error)))?;
        }
        Ok(())
    }

    fn check_label(&self, label: usize) -> PyResult<()> {
        if label >= self.inner.settings.n_classes {
            return Err(PyValueError::new_err(format!(
                "y: unknown class {}, expected 0..{}",
                label,
                self.inner.settings.n_classes - 1
            )));
        }
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FeatureCorrectionCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            n_classes: 2,
            n_models: 1,
            n_features: 1,
            forgetting: 0.9999,
            prior_variance: 1.0,
            scaling_window: 1000,
            drift_forgetting: 0.7,
            moderate: true,
            guard: true,
            guard_share: 0.01,
        }
    }

    #[test]
    fn check_packed_names_the_field_and_renormalises() {
        let mut good = [0.2, 0.8005, 0.5, 0.5, 3.0];
        check_packed(&mut good, 2, 1).unwrap();
        assert!((good[0] + good[1] - 1.0).abs() < 1e-15);
        let mut off = [0.2, 0.8, 0.5, 0.7, 3.0];
        assert!(check_packed(&mut off, 2, 1)
            .unwrap_err()
            .starts_with("x.outputs: "));
        let mut negative = [-0.2, 1.2, 0.5, 0.5, 3.0];
        assert!(check_packed(&mut negative, 2, 1)
            .unwrap_err()
            .contains("[0, 1]"));
        let mut nan = [0.5, 0.5, 0.5, 0.5, f64::NAN];
        assert_eq!(check_packed(&mut nan, 2, 1).unwrap_err(), "x: contains NaN");
    }

    #[test]
    fn the_avx_build_of_the_verbs_gives_the_baseline_build_s_bits() {
        // `predict`/`learn` take the AVX build where this CPU has AVX; the `_inline`
        // bodies called directly are the baseline build (the `wide` kernels inside both
        // dispatch on their own; `wide`'s tests compare those with their plain loops).
        // Over a drifting stream with the moderation and the guard on, every served value
        // and the state agree bit for bit.
        let settings = Settings {
            n_classes: 3,
            n_models: 2,
            n_features: 5,
            ..settings()
        };
        let (mut wide, mut plain) = (Correction::new(settings.clone()), Correction::new(settings));
        let mut state = 12345u64;
        let mut uniform = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for t in 0..3000 {
            let mut packed = Vec::new();
            for _ in 0..3 {
                let (a, b) = (uniform() + 0.05, uniform() + 0.05);
                let total = a + b + 0.3;
                packed.extend_from_slice(&[a / total, b / total, 0.3 / total]);
            }
            let shift = if t < 1500 { 0.0 } else { 2.0 };
            for _ in 0..5 {
                packed.push(4.0 * uniform() - 2.0 + shift);
            }
            let label = (t * 7) % 3;
            let served = wide.predict(&packed);
            let expected = plain.predict_inline(&packed);
            let bits = |values: &[f64]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&served), bits(&expected), "event {t}");
            wide.learn(&packed, label).unwrap();
            plain.learn_inline(&packed, label).unwrap();
            if t == 2000 {
                wide.on_drift();
                plain.on_drift();
            }
        }
        let bits = |values: &[f64]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&wide.covariance), bits(&plain.covariance));
        assert_eq!(bits(&wide.weights), bits(&plain.weights));
        assert_eq!(bits(&wide.variance), bits(&plain.variance));
        assert_eq!(wide.guard_weight.to_bits(), plain.guard_weight.to_bits());
    }

    #[test]
    fn starts_as_the_identity() {
        let head = Correction::new(settings());
        let served = head.predict(&[0.3, 0.7, 0.3, 0.7, 2.0]);
        assert!((served[0] - 0.3).abs() < 1e-12 && (served[1] - 0.7).abs() < 1e-12);
    }

    #[test]
    fn learns_a_feature_the_model_ignores() {
        let mut head = Correction::new(settings());
        let mut late_loss = 0.0;
        for t in 0..4000 {
            let x = if t % 2 == 0 { 1.5 } else { -1.5 };
            let label = usize::from(x > 0.0);
            let packed = [0.5, 0.5, 0.5, 0.5, x];
            if t >= 3000 {
                late_loss -= head.predict(&packed)[label].ln();
            }
            head.learn(&packed, label).unwrap();
        }
        assert!(late_loss / 1000.0 < 0.2, "{}", late_loss / 1000.0);
    }

    #[test]
    fn covariance_stays_below_the_prior_and_drift_refills_it() {
        let mut head = Correction::new(settings());
        for t in 0..500 {
            let x = (t as f64 * 0.37).sin();
            head.learn(&[0.4, 0.6, 0.2, 0.8, x], t % 2).unwrap();
        }
        let m = head.m;
        let before: f64 = (0..m).map(|j| head.covariance[j * m + j]).sum();
        assert!((0..m).all(|j| head.covariance[j * m + j] <= 1.0 + 1e-12));
        head.on_drift();
        let after: f64 = (0..m).map(|j| head.covariance[j * m + j]).sum();
        assert!(after > before);
    }
}
