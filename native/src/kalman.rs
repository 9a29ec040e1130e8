//! KalmanWeights: a Kalman filter over the weights of a linear head, with learned
//! forgetting γ, learned noise σ² and a learned calibration β of the class probabilities.
//!
//! The Python class `streamweights.adapters.KalmanWeights` is a thin handle over
//! [`KalmanCore`]: it validates its inputs and configuration, this module keeps the state
//! and does the per-event arithmetic. The numpy implementation this was ported from is the
//! reference oracle in `tests/reference/kalman.py`; the comments name its lines.
//!
//! Arithmetic order: every dot product and matrix product sums left to right over its
//! inner index (k = 0..n-1), and every scalar expression keeps the reference's grouping
//! (`a * b * c` is `(a * b) * c`). numpy's `@` (BLAS) and pairwise `sum` group some sums
//! differently, so results agree with the oracle to rounding (tests: 1e-9 relative over
//! 10^5 events), and bit for bit with themselves whatever the batch boundaries.
//!
//! Every update is all or nothing: the state is backed up, updated, and restored when
//! the update left anything non-finite (an input too large for the arithmetic), so one
//! bad record can never leave the filter NaN for good.

// Index loops read like the matrix algebra they implement (A[i, j], Φ[i, l]).
#![allow(clippy::needless_range_loop)]

use numpy::PyArray1;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays;

// Adam constants for the forgetting logit and the log noise (Kingma & Ba).
const ADAM_MEAN_DECAY: f64 = 0.9;
const ADAM_SQUARE_DECAY: f64 = 0.999;
/// The first whole step count at which Adam's bias correction `1 - decay^steps` is
/// exactly 1 (doubling, then bisection).
///
/// `1 - x` rounds to 1 exactly when `x <= 2^-54`, and `decay^steps` only falls as the
/// count grows, by a factor `decay` per step, far more than `powf`'s rounding error:
/// from that count on the correction stays 1, and `bias_correction` skips the `powf`.
fn first_settled_step(decay: f64) -> f64 {
    let is_one = |count: f64| 1.0 - decay.powf(count) == 1.0;
    let mut high = 1.0;
    while !is_one(high) {
        high *= 2.0;
    }
    let mut low = high / 2.0; // not 1 there (or high is the first count, 1)
    while high - low > 1.0 {
        let middle = ((low + high) / 2.0).floor();
        if is_one(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}

/// `1 - decay^steps`, the same double, without the `powf` from `settled` (the decay's
/// `first_settled_step`) on: two `powf` calls per label saved, ~1% of the default's
/// record lane.
fn bias_correction(decay: f64, steps: f64, settled: f64) -> f64 {
    if steps >= settled {
        1.0
    } else {
        1.0 - decay.powf(steps)
    }
}
const ADAM_EPSILON: f64 = 1e-12;
/// Bounds on a learned log noise variance.
const LOG_NOISE_BOUND: f64 = 30.0;
/// Probit approximation factor π/4 (see the Python class docstring).
const PROBIT_FACTOR: f64 = std::f64::consts::PI / 4.0;
const ADAGRAD_EPSILON: f64 = 1e-12;
/// Bounds on the learned log calibration.
const LOG_CALIBRATION_BOUND: f64 = 5.0;

/// The fixed configuration of one filter (validated by the Python handle).
#[derive(Clone, Debug)]
pub struct Config {
    pub n_features: usize,
    pub n_outputs: usize,
    pub classify: bool,
    pub probit: bool,
    pub learns_forgetting: bool,
    pub fixed_forgetting: f64,
    pub learns_noise: bool,
    pub fixed_noise: f64,
    pub learns_calibration: bool,
    pub prior_variance: f64,
    pub min_forgetting: f64,
    pub max_forgetting: f64,
    pub rho_low: f64,
    pub rho_high: f64,
    pub forgetting_learning_rate: f64,
    pub noise_learning_rate: f64,
    pub drift_forgetting: f64,
    pub calibration_learning_rate: f64,
    pub initial_rho: f64,
    pub initial_log_noise: f64,
    pub initial_log_calibration: f64,
    /// μ0, row-major `(n_features, n_outputs)`.
    pub prior_mean: Vec<f64>,
    /// Fixed standard-normal draws, row-major `(n_samples, n_outputs)` (Monte-Carlo only).
    pub draws: Vec<f64>,
}

/// The scalar part of the state (copied whole for the all-or-nothing updates).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scalars {
    pub rho: f64,
    pub gamma: f64,
    pub log_noise: f64,
    pub noise: f64,
    pub adam_steps: i64,
    pub adam_moments: [f64; 4],
    pub log_calibration: f64,
    pub calibration_square_sum: f64,
    pub n_updates: i64,
}

impl Scalars {
    fn all_finite(&self) -> bool {
        self.rho.is_finite()
            && self.gamma.is_finite()
            && self.log_noise.is_finite()
            && self.noise.is_finite()
            && self.adam_moments.iter().all(|v| v.is_finite())
            && self.log_calibration.is_finite()
            && self.calibration_square_sum.is_finite()
    }
}

/// Plain-Rust filter: the state and the per-event arithmetic.
#[derive(Clone, Debug)]
pub struct Filter {
    pub config: Config,
    has_prior_mean: bool,
    /// Posterior mean minus prior mean, row-major `(n_features, n_outputs)`.
    pub deviation: Vec<f64>,
    /// Shared posterior covariance, row-major `(n_features, n_features)`.
    pub covariance: Vec<f64>,
    pub scalars: Scalars,
    // Backups for the all-or-nothing updates and scratch space (no state).
    backup_deviation: Vec<f64>,
    backup_covariance: Vec<f64>,
    backup_scalars: Scalars,
    scratch_x: Vec<f64>,
    scratch_covariance_x: Vec<f64>,
    scratch_outputs: Vec<f64>,
    scratch_along: Vec<f64>,
    scratch_base: Vec<f64>,
    scratch_residual: Vec<f64>,
    scratch_target: Vec<f64>,
    scratch_draws: Vec<f64>,
    scratch_block: Vec<f64>,
    /// `first_settled_step` of the two Adam decays (configuration, not state).
    adam_settled: [f64; 2],
}

/// `Σ left_j right_j`, left to right.
pub(crate) fn dot(left: &[f64], right: &[f64]) -> f64 {
    let mut total = 0.0;
    for (a, b) in left.iter().zip(right) {
        total += a * b;
    }
    total
}

/// True when no value is NaN or ±inf. An integer fold over the exponent bits (no early
/// exit), so the compiler can vectorise it: this runs on the whole state every update.
#[inline]
pub(crate) fn all_finite(values: &[f64]) -> bool {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    values.iter().fold(0u64, |bad, v| {
        bad | u64::from(v.to_bits() & EXPONENT == EXPONENT)
    }) == 0
}

fn logistic(rho: f64) -> f64 {
    1.0 / (1.0 + (-rho).exp())
}

/// Update Adam moments `moments[at..at + 2]` in place; return the normalised step.
fn adam_step(
    moments: &mut [f64; 4],
    at: usize,
    gradient: f64,
    mean_correction: f64,
    square_correction: f64,
) -> f64 {
    let mean = ADAM_MEAN_DECAY * moments[at] + (1.0 - ADAM_MEAN_DECAY) * gradient;
    let square =
        ADAM_SQUARE_DECAY * moments[at + 1] + (1.0 - ADAM_SQUARE_DECAY) * gradient * gradient;
    moments[at] = mean;
    moments[at + 1] = square;
    (mean / mean_correction) / ((square / square_correction).sqrt() + ADAM_EPSILON)
}

/// Lower Cholesky factor of the symmetric matrix `matrix` (`n × n`, row-major; only the
/// lower triangle is read, as LAPACK's `potrf('L')` does). `None` if not positive definite.
#[cfg(test)]
fn cholesky(matrix: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut factor = vec![0.0; n * n];
    cholesky_into(matrix, n, &mut factor).then_some(factor)
}

/// `cholesky` into `factor` (n × n, zero above the diagonal on entry); false when not
/// positive definite. Inlined, so that a block update of a size known when compiled
/// unrolls it.
#[inline(always)]
fn cholesky_into(matrix: &[f64], n: usize, factor: &mut [f64]) -> bool {
    for i in 0..n {
        for j in 0..=i {
            let mut total = matrix[i * n + j];
            for k in 0..j {
                total -= factor[i * n + k] * factor[j * n + k];
            }
            if i == j {
                if total.is_nan() || total <= 0.0 {
                    return false;
                }
                factor[i * n + i] = total.sqrt();
            } else {
                factor[i * n + j] = total / factor[j * n + j];
            }
        }
    }
    true
}

/// Inverse of a lower-triangular matrix (forward substitution, column by column).
#[cfg(test)]
fn invert_lower(factor: &[f64], n: usize) -> Vec<f64> {
    let mut inverse = vec![0.0; n * n];
    invert_lower_into(factor, n, &mut inverse);
    inverse
}

/// `invert_lower` into `inverse` (n × n, zero above the diagonal on entry); inlined as
/// `cholesky_into` is.
#[inline(always)]
fn invert_lower_into(factor: &[f64], n: usize, inverse: &mut [f64]) {
    for column in 0..n {
        for i in column..n {
            let mut total = if i == column { 1.0 } else { 0.0 };
            for k in column..i {
                total -= factor[i * n + k] * inverse[k * n + column];
            }
            inverse[i * n + column] = total / factor[i * n + i];
        }
    }
}

impl Filter {
    /// A fresh filter at its prior.
    pub fn new(config: Config) -> Filter {
        let d = config.n_features;
        let k = config.n_outputs;
        let has_prior_mean = config.prior_mean.iter().any(|v| *v != 0.0);
        let n_draws = config.draws.len();
        let zero = Scalars {
            rho: 0.0,
            gamma: 0.0,
            log_noise: 0.0,
            noise: 0.0,
            adam_steps: 0,
            adam_moments: [0.0; 4],
            log_calibration: 0.0,
            calibration_square_sum: 0.0,
            n_updates: 0,
        };
        let mut filter = Filter {
            config,
            has_prior_mean,
            deviation: vec![0.0; d * k],
            covariance: vec![0.0; d * d],
            scalars: zero,
            backup_deviation: vec![0.0; d * k],
            backup_covariance: vec![0.0; d * d],
            backup_scalars: zero,
            scratch_x: vec![0.0; d],
            scratch_covariance_x: vec![0.0; d],
            scratch_outputs: vec![0.0; k],
            scratch_along: vec![0.0; k],
            scratch_base: vec![0.0; k],
            scratch_residual: vec![0.0; k],
            scratch_target: vec![0.0; k],
            scratch_draws: vec![0.0; n_draws * 2],
            scratch_block: Vec::new(),
            adam_settled: [
                first_settled_step(ADAM_MEAN_DECAY),
                first_settled_step(ADAM_SQUARE_DECAY),
            ],
        };
        filter.reset();
        filter
    }

    /// Back to the prior (reference `_reset`).
    pub fn reset(&mut self) {
        let d = self.config.n_features;
        self.deviation.iter_mut().for_each(|v| *v = 0.0);
        self.covariance.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..d {
            self.covariance[i * d + i] = self.config.prior_variance;
        }
        self.set_rho(self.config.initial_rho);
        self.set_log_noise(self.config.initial_log_noise);
        self.scalars.adam_moments = [0.0; 4];
        self.scalars.adam_steps = 0;
        self.scalars.log_calibration = self.config.initial_log_calibration;
        self.scalars.calibration_square_sum = 0.0;
        self.scalars.n_updates = 0;
    }

    pub fn set_rho(&mut self, rho: f64) {
        self.scalars.rho = rho;
        self.scalars.gamma = if self.config.learns_forgetting {
            logistic(rho)
                .max(self.config.min_forgetting)
                .min(self.config.max_forgetting)
        } else {
            self.config.fixed_forgetting
        };
    }

    pub fn set_log_noise(&mut self, log_noise: f64) {
        self.scalars.log_noise = log_noise;
        self.scalars.noise = if self.config.learns_noise {
            log_noise.exp()
        } else {
            self.config.fixed_noise
        };
    }

    fn learns_variances(&self) -> bool {
        self.config.learns_forgetting || self.config.learns_noise
    }

    /// The classification target of `label`: one-hot minus 1/C (reference `_check_label`).
    fn class_target(&self, label: usize, target: &mut [f64]) {
        let offset = 1.0 / self.config.n_outputs as f64;
        for value in target.iter_mut() {
            *value = -offset;
        }
        target[label] += 1.0;
    }

    /// The drift transition in place: the mean shrinks, the covariance blends to σ_w² I.
    pub fn transition(&mut self, gamma: f64) {
        let d = self.config.n_features;
        let squared = gamma * gamma;
        for value in self.deviation.iter_mut() {
            *value *= gamma;
        }
        for value in self.covariance.iter_mut() {
            *value *= squared;
        }
        let blend = (1.0 - squared) * self.config.prior_variance;
        for i in 0..d {
            self.covariance[i * d + i] += blend;
        }
    }

    /// `out[k] = Σ_i x_i m[i, k]` for a row-major `(d, K)` matrix `m`.
    fn row_times(x: &[f64], matrix: &[f64], k: usize, out: &mut [f64]) {
        for (column, value) in out.iter_mut().enumerate() {
            let mut total = 0.0;
            for (i, xi) in x.iter().enumerate() {
                total += xi * matrix[i * k + column];
            }
            *value = total;
        }
    }

    /// `out = A x` (left to right over the columns of A).
    fn covariance_times(&self, x: &[f64], out: &mut [f64]) {
        let d = self.config.n_features;
        for (i, value) in out.iter_mut().enumerate() {
            *value = dot(&self.covariance[i * d..(i + 1) * d], x);
        }
    }

    /// Predictive means at the current γ (reference `_predictive_means`).
    pub fn predictive_means(&self, x: &[f64], out: &mut [f64]) {
        let k = self.config.n_outputs;
        Self::row_times(x, &self.deviation, k, out);
        let gamma = self.scalars.gamma;
        for value in out.iter_mut() {
            *value *= gamma;
        }
        if self.has_prior_mean {
            for (column, value) in out.iter_mut().enumerate() {
                let mut total = 0.0;
                for (i, xi) in x.iter().enumerate() {
                    total += xi * self.config.prior_mean[i * k + column];
                }
                *value += total;
            }
        }
    }

    /// One prediction (reference `_predict_row`): means, or class probabilities.
    pub fn predict(&mut self, x: &[f64], out: &mut [f64]) {
        self.predictive_means(x, out);
        if !self.config.classify {
            return;
        }
        let squared = self.scalars.gamma * self.scalars.gamma;
        let mut covariance_x = std::mem::take(&mut self.scratch_covariance_x);
        self.covariance_times(x, &mut covariance_x);
        let variance = squared * dot(x, &covariance_x)
            + (1.0 - squared) * self.config.prior_variance * dot(x, x);
        self.scratch_covariance_x = covariance_x;
        let mut gradient = 0.0;
        self.class_probabilities_row(out, variance, None, &mut gradient);
        // `out` held the means; class_probabilities_row wrote the probabilities over them.
    }

    /// Probabilities of one row from logits N(means, variance I), written over `means`.
    /// With `label`, adds this row's term of the log-loss gradient with respect to log β
    /// into `gradient` (before the final factor, see `finish_gradient`), left to right.
    fn class_probabilities_row(
        &mut self,
        means: &mut [f64],
        variance: f64,
        label: Option<usize>,
        gradient: &mut f64,
    ) {
        let beta = self.scalars.log_calibration.exp();
        let c = means.len();
        if self.config.probit {
            let shrink = 1.0 / (1.0 + PROBIT_FACTOR * beta * beta * variance).sqrt();
            let scale = beta * shrink;
            let mut largest = f64::NEG_INFINITY;
            let logits = &mut self.scratch_outputs;
            for (logit, mean) in logits.iter_mut().zip(means.iter()) {
                *logit = mean * scale;
                if *logit > largest {
                    largest = *logit;
                }
            }
            let mut total = 0.0;
            for logit in logits.iter_mut() {
                *logit = (*logit - largest).exp();
                total += *logit;
            }
            let cubed = shrink.powf(3.0);
            for (index, mean) in means.iter_mut().enumerate() {
                let probability = logits[index] / total;
                if let Some(y) = label {
                    let error = if index == y {
                        probability - 1.0
                    } else {
                        probability
                    };
                    *gradient += error * *mean * cubed;
                }
                *mean = probability;
            }
            return;
        }
        // Monte-Carlo over the fixed draws: per draw s, logits β (μ + √s z_s).
        let n_samples = self.config.draws.len() / c;
        let deviation = variance.sqrt();
        let mut sums = vec![0.0; c];
        let mut derivative = 0.0;
        let mut unscaled = std::mem::take(&mut self.scratch_draws);
        unscaled.resize(2 * c, 0.0);
        let (raw, weights) = unscaled.split_at_mut(c);
        for sample in 0..n_samples {
            let draw = &self.config.draws[sample * c..(sample + 1) * c];
            let mut largest = f64::NEG_INFINITY;
            for index in 0..c {
                raw[index] = means[index] + deviation * draw[index];
                weights[index] = beta * raw[index];
                if weights[index] > largest {
                    largest = weights[index];
                }
            }
            let mut total = 0.0;
            for weight in weights.iter_mut() {
                *weight = (*weight - largest).exp();
                total += *weight;
            }
            for weight in weights.iter_mut() {
                *weight /= total;
            }
            for index in 0..c {
                sums[index] += weights[index];
            }
            if let Some(y) = label {
                let mut expected = 0.0;
                for index in 0..c {
                    expected += weights[index] * raw[index];
                }
                derivative += weights[y] * (raw[y] - expected);
            }
        }
        self.scratch_draws = unscaled;
        for (mean, sum) in means.iter_mut().zip(&sums) {
            *mean = sum / n_samples as f64;
        }
        if let Some(y) = label {
            let derivative = derivative / n_samples as f64;
            *gradient += derivative / means[y].max(1e-300);
        }
    }

    /// The log β gradient from the summed per-row terms (probit: β Σ; Monte-Carlo: -β Σ).
    fn finish_gradient(&self, total: f64) -> f64 {
        let beta = self.scalars.log_calibration.exp();
        if self.config.probit {
            beta * total
        } else {
            -beta * total
        }
    }

    /// One Adam ascent step on ρ and/or log σ², then clamp (reference `_step_variances`).
    fn step_variances(&mut self, forgetting_gradient: f64, noise_gradient: f64) {
        self.scalars.adam_steps += 1;
        let steps = self.scalars.adam_steps as f64;
        let mean_correction = bias_correction(ADAM_MEAN_DECAY, steps, self.adam_settled[0]);
        let square_correction = bias_correction(ADAM_SQUARE_DECAY, steps, self.adam_settled[1]);
        if self.config.learns_forgetting {
            let step = adam_step(
                &mut self.scalars.adam_moments,
                0,
                forgetting_gradient,
                mean_correction,
                square_correction,
            );
            let rho = self.scalars.rho + self.config.forgetting_learning_rate * step;
            self.set_rho(rho.max(self.config.rho_low).min(self.config.rho_high));
        }
        if self.config.learns_noise {
            let step = adam_step(
                &mut self.scalars.adam_moments,
                2,
                noise_gradient,
                mean_correction,
                square_correction,
            );
            let log_noise = self.scalars.log_noise + self.config.noise_learning_rate * step;
            self.set_log_noise(log_noise.clamp(-LOG_NOISE_BOUND, LOG_NOISE_BOUND));
        }
    }

    /// One Adagrad descent step on log β (reference `_step_calibration`).
    fn step_calibration(&mut self, gradient: f64) {
        self.scalars.calibration_square_sum += gradient * gradient;
        let step = self.config.calibration_learning_rate * gradient
            / (self.scalars.calibration_square_sum.sqrt() + ADAGRAD_EPSILON);
        self.scalars.log_calibration = (self.scalars.log_calibration - step)
            .clamp(-LOG_CALIBRATION_BOUND, LOG_CALIBRATION_BOUND);
    }

    /// One labelled event (reference `_learn_row`): calibration step, γ and σ² steps,
    /// transition, rank-one update. Not guarded; see [`Filter::guarded`].
    fn learn_row_unguarded(&mut self, x: &[f64], target: &[f64], label: Option<usize>) {
        let d = self.config.n_features;
        let k = self.config.n_outputs;
        let prior_variance = self.config.prior_variance;
        let mut covariance_x = std::mem::take(&mut self.scratch_covariance_x);
        self.covariance_times(x, &mut covariance_x);
        let weight_variance = dot(x, &covariance_x);
        let squared_norm = dot(x, x);
        let prior_spread = prior_variance * squared_norm;
        let mut along = std::mem::take(&mut self.scratch_along);
        Self::row_times(x, &self.deviation, k, &mut along);
        let mut base = std::mem::take(&mut self.scratch_base);
        if self.has_prior_mean {
            Self::row_times(x, &self.config.prior_mean, k, &mut base);
        } else {
            base.iter_mut().for_each(|v| *v = 0.0);
        }
        let mut residual = std::mem::take(&mut self.scratch_residual);
        let mut gamma = self.scalars.gamma;
        if let (Some(y), true) = (label, self.config.learns_calibration) {
            let squared = gamma * gamma;
            let mut mean: Vec<f64> = (0..k).map(|c| base[c] + gamma * along[c]).collect();
            let variance = squared * weight_variance + (1.0 - squared) * prior_spread;
            let mut total = 0.0;
            self.class_probabilities_row(&mut mean, variance, Some(y), &mut total);
            let gradient = self.finish_gradient(total);
            self.step_calibration(gradient);
        }
        if self.learns_variances() {
            let squared = gamma * gamma;
            let innovation =
                squared * weight_variance + (1.0 - squared) * prior_spread + self.scalars.noise;
            for c in 0..k {
                residual[c] = target[c] - base[c] - gamma * along[c];
            }
            let spread = 0.5
                * (dot(&residual, &residual) / (innovation * innovation) - k as f64 / innovation);
            let forgetting_gradient = dot(&residual, &along) / innovation
                + 2.0 * gamma * (weight_variance - prior_spread) * spread;
            self.step_variances(
                forgetting_gradient * gamma * (1.0 - gamma),
                spread * self.scalars.noise,
            );
            gamma = self.scalars.gamma;
        }
        let squared = gamma * gamma;
        let blend = (1.0 - squared) * prior_variance;
        let innovation = squared * weight_variance + blend * squared_norm + self.scalars.noise;
        for c in 0..k {
            residual[c] = target[c] - base[c] - gamma * along[c];
        }
        // A⁻x, kept in covariance_x.
        for (value, xi) in covariance_x.iter_mut().zip(x) {
            *value = *value * squared + blend * xi;
        }
        let gain = 1.0 / innovation;
        for i in 0..d {
            let scaled_gain = covariance_x[i] * gain;
            for c in 0..k {
                let at = i * k + c;
                self.deviation[at] = self.deviation[at] * gamma + scaled_gain * residual[c];
            }
        }
        let root = 1.0 / innovation.sqrt();
        for value in covariance_x.iter_mut() {
            *value *= root;
        }
        for i in 0..d {
            for j in 0..d {
                let at = i * d + j;
                let mut value = self.covariance[at] * squared;
                if i == j {
                    value += blend;
                }
                self.covariance[at] = value - covariance_x[i] * covariance_x[j];
            }
        }
        self.scalars.n_updates += 1;
        self.scratch_covariance_x = covariance_x;
        self.scratch_along = along;
        self.scratch_base = base;
        self.scratch_residual = residual;
    }

    /// `b` simultaneous rows (reference `_learn_block`): calibration step, γ and σ² steps,
    /// one transition, a `b × b` Cholesky update. Not guarded; see [`Filter::guarded`].
    fn learn_block_unguarded(
        &mut self,
        rows: &[f64],
        targets: &[f64],
        labels: Option<&[usize]>,
    ) -> Result<(), String> {
        // Every intermediate lives in one arena kept between calls (a block of one row
        // per label in OnlineStacking's classification: ~17 small vectors otherwise).
        let mut arena = std::mem::take(&mut self.scratch_block);
        let b = rows.len() / self.config.n_features;
        let outcome = match (b, self.config.n_outputs, self.config.n_features) {
            // OnlineStacking's classification over two classes (one design row per
            // class, one output) of three to six models (or two to five and an
            // intercept); two rows and one output with other feature counts have the
            // rows and outputs compiled only; everything else takes the general path.
            (2, 1, 3) => self.learn_block_in::<2, 1, 3>(rows, targets, labels, &mut arena),
            (2, 1, 4) => self.learn_block_in::<2, 1, 4>(rows, targets, labels, &mut arena),
            (2, 1, 5) => self.learn_block_in::<2, 1, 5>(rows, targets, labels, &mut arena),
            (2, 1, 6) => self.learn_block_in::<2, 1, 6>(rows, targets, labels, &mut arena),
            (2, 1, _) => self.learn_block_in::<2, 1, 0>(rows, targets, labels, &mut arena),
            _ => self.learn_block_in::<0, 0, 0>(rows, targets, labels, &mut arena),
        };
        self.scratch_block = arena;
        outcome
    }

    /// The block update for `B` rows, `K` outputs and `D` features known when compiled
    /// (0: read from the arguments). The same operations in the same order either way,
    /// so the same bits; with the sizes known the compiler unrolls the many short loops
    /// (for two rows, one output and three features they cost more than the
    /// arithmetic: ~4,400 instructions per label in the default's OnlineStacking
    /// candidate, ~1,200 compiled for its sizes).
    fn learn_block_in<const B: usize, const K: usize, const D: usize>(
        &mut self,
        rows: &[f64],
        targets: &[f64],
        labels: Option<&[usize]>,
        arena: &mut Vec<f64>,
    ) -> Result<(), String> {
        let d = if D == 0 { self.config.n_features } else { D };
        let k = if K == 0 { self.config.n_outputs } else { K };
        let b = if B == 0 { rows.len() / d } else { B };
        debug_assert!(
            k == self.config.n_outputs && b == rows.len() / d && d == self.config.n_features
        );
        let prior_variance = self.config.prior_variance;
        let row = |i: usize| &rows[i * d..(i + 1) * d];
        arena.clear();
        arena.resize(2 * d * b + 8 * b * b + 7 * b * k + k, 0.0);
        let (covariance_rows, rest) = arena.split_at_mut(d * b);
        let (weight_block, rest) = rest.split_at_mut(b * b);
        let (prior_block, rest) = rest.split_at_mut(b * b);
        let (along, rest) = rest.split_at_mut(b * k);
        let (base, rest) = rest.split_at_mut(b * k);
        let (mean, rest) = rest.split_at_mut(k);
        let (innovation, rest) = rest.split_at_mut(b * b);
        let (residual, rest) = rest.split_at_mut(b * k);
        let (factor, rest) = rest.split_at_mut(b * b);
        let (inverse_factor, rest) = rest.split_at_mut(b * b);
        let (inverse, rest) = rest.split_at_mut(b * b);
        let (scaled_residual, rest) = rest.split_at_mut(b * k);
        let (spread, rest) = rest.split_at_mut(b * b);
        let (whitened_gain, whitened_residual) = rest.split_at_mut(b * d);
        // A Φᵀ, (d, b)
        for l in 0..d {
            for j in 0..b {
                covariance_rows[l * b + j] = dot(&self.covariance[l * d..(l + 1) * d], row(j));
            }
        }
        for i in 0..b {
            for j in 0..b {
                let mut total = 0.0;
                for l in 0..d {
                    total += rows[i * d + l] * covariance_rows[l * b + j];
                }
                weight_block[i * b + j] = total;
                prior_block[i * b + j] = dot(row(i), row(j)) * prior_variance;
            }
        }
        for i in 0..b {
            Self::row_times(row(i), &self.deviation, k, &mut along[i * k..(i + 1) * k]);
            if self.has_prior_mean {
                Self::row_times(
                    row(i),
                    &self.config.prior_mean,
                    k,
                    &mut base[i * k..(i + 1) * k],
                );
            }
        }
        let mut gamma = self.scalars.gamma;
        if let (Some(labels), true) = (labels, self.config.learns_calibration) {
            let squared = gamma * gamma;
            let mut total = 0.0;
            for i in 0..b {
                let variance =
                    squared * weight_block[i * b + i] + (1.0 - squared) * prior_block[i * b + i];
                for c in 0..k {
                    mean[c] = base[i * k + c] + gamma * along[i * k + c];
                }
                self.class_probabilities_row(mean, variance, Some(labels[i]), &mut total);
            }
            let gradient = self.finish_gradient(total);
            self.step_calibration(gradient);
        }
        let innovation_at = |innovation: &mut [f64], gamma: f64, noise: f64| {
            let squared = gamma * gamma;
            for at in 0..b * b {
                innovation[at] = squared * weight_block[at] + (1.0 - squared) * prior_block[at];
            }
            for i in 0..b {
                innovation[i * b + i] += noise;
            }
        };
        let residual_at = |residual: &mut [f64], gamma: f64| {
            for at in 0..b * k {
                residual[at] = targets[at] - base[at] - gamma * along[at];
            }
        };
        let not_positive = || {
            "innovation covariance is not positive definite (an input too large for the \
             arithmetic)"
                .to_string()
        };
        if self.learns_variances() {
            innovation_at(innovation, gamma, self.scalars.noise);
            residual_at(residual, gamma);
            // S⁻¹ = L⁻ᵀ L⁻¹ (the reference inverts S by LU; equal to rounding).
            if !cholesky_into(innovation, b, factor) {
                return Err(not_positive());
            }
            invert_lower_into(factor, b, inverse_factor);
            for i in 0..b {
                for j in 0..b {
                    let mut total = 0.0;
                    for l in 0..b {
                        total += inverse_factor[l * b + i] * inverse_factor[l * b + j];
                    }
                    inverse[i * b + j] = total;
                }
            }
            for i in 0..b {
                for c in 0..k {
                    let mut total = 0.0;
                    for j in 0..b {
                        total += inverse[i * b + j] * residual[j * k + c];
                    }
                    scaled_residual[i * k + c] = total;
                }
            }
            for i in 0..b {
                for j in 0..b {
                    let outer = dot(
                        &scaled_residual[i * k..(i + 1) * k],
                        &scaled_residual[j * k..(j + 1) * k],
                    );
                    spread[i * b + j] = (outer - k as f64 * inverse[i * b + j]) * 0.5;
                }
            }
            let mut across = 0.0;
            for at in 0..b * b {
                across += spread[at] * (weight_block[at] - prior_block[at]);
            }
            let forgetting_gradient = dot(along, scaled_residual) + 2.0 * gamma * across;
            let mut trace = 0.0;
            for i in 0..b {
                trace += spread[i * b + i];
            }
            let noise = self.scalars.noise;
            self.step_variances(forgetting_gradient * gamma * (1.0 - gamma), trace * noise);
            gamma = self.scalars.gamma;
        }
        let squared = gamma * gamma;
        let blend = (1.0 - squared) * prior_variance;
        innovation_at(innovation, gamma, self.scalars.noise);
        residual_at(residual, gamma);
        if !cholesky_into(innovation, b, factor) {
            return Err(not_positive());
        }
        invert_lower_into(factor, b, inverse_factor);
        // A⁻ Φᵀ, (d, b), in place of A Φᵀ.
        for l in 0..d {
            for j in 0..b {
                let at = l * b + j;
                covariance_rows[at] = covariance_rows[at] * squared + blend * rows[j * d + l];
            }
        }
        // V = L⁻¹ Φ A⁻, (b, d)
        for i in 0..b {
            for l in 0..d {
                let mut total = 0.0;
                for j in 0..b {
                    total += inverse_factor[i * b + j] * covariance_rows[l * b + j];
                }
                whitened_gain[i * d + l] = total;
            }
        }
        // W = L⁻¹ R, (b, K)
        for i in 0..b {
            for c in 0..k {
                let mut total = 0.0;
                for j in 0..b {
                    total += inverse_factor[i * b + j] * residual[j * k + c];
                }
                whitened_residual[i * k + c] = total;
            }
        }
        self.transition(gamma);
        for l in 0..d {
            for c in 0..k {
                let mut total = 0.0;
                for i in 0..b {
                    total += whitened_gain[i * d + l] * whitened_residual[i * k + c];
                }
                self.deviation[l * k + c] += total;
            }
        }
        // Vᵀ V is exactly symmetric (the same products in the same order), so the
        // reference's symmetrisation (C + Cᵀ) / 2 leaves it unchanged.
        for l in 0..d {
            for m in 0..d {
                let mut total = 0.0;
                for i in 0..b {
                    total += whitened_gain[i * d + l] * whitened_gain[i * d + m];
                }
                self.covariance[l * d + m] -= total;
            }
        }
        self.scalars.n_updates += b as i64;
        Ok(())
    }

    fn save(&mut self) {
        self.backup_deviation.copy_from_slice(&self.deviation);
        self.backup_covariance.copy_from_slice(&self.covariance);
        self.backup_scalars = self.scalars;
    }

    fn restore(&mut self) {
        self.deviation.copy_from_slice(&self.backup_deviation);
        self.covariance.copy_from_slice(&self.backup_covariance);
        self.scalars = self.backup_scalars;
    }

    fn state_is_finite(&self) -> bool {
        self.scalars.all_finite() && all_finite(&self.deviation) && all_finite(&self.covariance)
    }

    /// Run `update` all or nothing: if it fails or leaves the state non-finite, the state
    /// is put back as it was and the error says so.
    pub fn guarded<F>(&mut self, update: F) -> Result<(), String>
    where
        F: FnOnce(&mut Filter) -> Result<(), String>,
    {
        self.save();
        let outcome = update(self);
        let outcome = match outcome {
            Ok(()) if !self.state_is_finite() => Err("the filter state would become \
                                                      non-finite (an input or a target too \
                                                      large for the arithmetic)"
                .to_string()),
            other => other,
        };
        if outcome.is_err() {
            self.restore();
        }
        outcome
    }

    /// Learn one event: `target` for regression, or a class `label`.
    pub fn learn_one(&mut self, x: &[f64], target: Option<&[f64]>, label: Option<usize>) {
        let mut own_target = std::mem::take(&mut self.scratch_target);
        let target = match (target, label) {
            (Some(values), _) => values,
            (None, Some(y)) => {
                self.class_target(y, &mut own_target);
                &own_target[..]
            }
            (None, None) => unreachable!("a target or a label"),
        };
        self.learn_row_unguarded(x, target, label);
        self.scratch_target = own_target;
    }

    /// Learn a block of simultaneous rows: `targets` `(b, K)` or class `labels`.
    pub fn learn_block(
        &mut self,
        rows: &[f64],
        targets: Option<&[f64]>,
        labels: Option<&[usize]>,
    ) -> Result<(), String> {
        let k = self.config.n_outputs;
        let owned: Vec<f64>;
        let targets = match (targets, labels) {
            (Some(values), _) => values,
            (None, Some(ys)) => {
                let mut values = vec![0.0; ys.len() * k];
                for (i, y) in ys.iter().enumerate() {
                    self.class_target(*y, &mut values[i * k..(i + 1) * k]);
                }
                owned = values;
                &owned[..]
            }
            (None, None) => return Err("a target or a label".to_string()),
        };
        self.learn_block_unguarded(rows, targets, labels)
    }
}

// ---------------------------------------------------------------------------------------
// Python binding

/// Copy a 1-d float64 buffer of length `n` into `target`; `Ok(false)` when `value` is not
/// such a buffer (the handle then converts and validates it in Python); a ValueError
/// naming `name` when it holds NaN or inf.
fn read_vector(value: &Bound<'_, PyAny>, target: &mut [f64], name: &str) -> PyResult<bool> {
    let read = copy_vector(value, target)?;
    if read {
        check_finite(target, name)?;
    }
    Ok(read)
}

/// Copy a 1-d native float64 buffer of exactly `target`'s length into it (a NumPy array
/// through NumPy's C API, anything else through the buffer protocol); `Ok(false)` when
/// `value` is not such a buffer.
pub fn copy_vector(value: &Bound<'_, PyAny>, target: &mut [f64]) -> PyResult<bool> {
    let n = target.len();
    if let Some(read) = arrays::copy_exact(value, &[n], target) {
        return Ok(read);
    }
    let buffer = match PyBuffer::<f64>::get(value) {
        Ok(buffer) => buffer,
        Err(_) => return Ok(false),
    };
    if !native_float64(&buffer) || buffer.dimensions() != 1 || buffer.item_count() != n {
        return Ok(false);
    }
    buffer.copy_to_slice(value.py(), target)?;
    Ok(true)
}

/// True when the buffer holds float64 in this machine's byte order. PyO3 accepts any
/// 8-byte float format, a byte-swapped (`>d` on x86) array included, whose values it
/// would read as garbage.
pub fn native_float64(buffer: &PyBuffer<f64>) -> bool {
    let format = buffer.format().to_bytes();
    let native: &[u8] = if cfg!(target_endian = "little") {
        b"<"
    } else {
        b">"
    };
    match format {
        [b'd'] => true,
        [order, b'd'] => matches!(order, b'@' | b'=') || *order == native[0],
        _ => false,
    }
}

/// A ValueError `"{name}: contains NaN"` (or inf), as `as_finite_array` words it.
pub fn check_finite(values: &[f64], name: &str) -> PyResult<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let bad = if values.iter().any(|v| v.is_nan()) {
        "NaN"
    } else {
        "inf"
    };
    Err(PyValueError::new_err(format!("{name}: contains {bad}")))
}

/// A 2-d float64 buffer `(n, width)` (validated by the handle) as a flat row-major vector.
fn read_rows(value: &Bound<'_, PyAny>, width: usize) -> PyResult<Vec<f64>> {
    let buffer = PyBuffer::<f64>::get(value)?;
    let shape = buffer.shape();
    if !native_float64(&buffer) || buffer.dimensions() != 2 || shape[1] != width {
        return Err(PyValueError::new_err(format!(
            "rows: expected a native float64 array of shape (n, {width}), got shape {shape:?}"
        )));
    }
    buffer.to_vec(value.py())
}

/// The Python `NonFiniteUpdate` (a ValueError) for a refused update; a plain ValueError
/// if that class cannot be imported (only on this error path).
fn refused(message: String) -> PyErr {
    Python::with_gil(|py| {
        let class = py
            .import("streamweights.adapters.validation")
            .and_then(|module| module.getattr("NonFiniteUpdate"));
        match class {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(error) => PyErr::from_value(error),
                Err(_) => PyValueError::new_err(message),
            },
            Err(_) => PyValueError::new_err(message),
        }
    })
}

/// The core of `KalmanWeights`: state and per-event arithmetic (see the module docs).
#[pyclass(module = "streamweights._native")]
pub struct KalmanCore {
    pub(crate) filter: Filter,
}

impl KalmanCore {
    fn learn_one_checked(
        &mut self,
        x: &Bound<'_, PyAny>,
        target: Option<&[f64]>,
        label: Option<usize>,
    ) -> PyResult<bool> {
        let mut features = std::mem::take(&mut self.filter.scratch_x);
        let result = match read_vector(x, &mut features, "x") {
            Ok(true) => self
                .filter
                .guarded(|filter| {
                    filter.learn_one(&features, target, label);
                    Ok(())
                })
                .map(|_| true)
                .map_err(|message| refused(format!("update: {message}"))),
            other => other,
        };
        self.filter.scratch_x = features;
        result
    }
}

#[pymethods]
impl KalmanCore {
    #[new]
    #[pyo3(signature = (n_features, n_outputs, classify, probit, learns_forgetting,
        fixed_forgetting, learns_noise, fixed_noise, learns_calibration, prior_variance,
        min_forgetting, max_forgetting, rho_low, rho_high, forgetting_learning_rate,
        noise_learning_rate, drift_forgetting, calibration_learning_rate, initial_rho,
        initial_log_noise, initial_log_calibration, prior_mean, draws))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        n_features: usize,
        n_outputs: usize,
        classify: bool,
        probit: bool,
        learns_forgetting: bool,
        fixed_forgetting: f64,
        learns_noise: bool,
        fixed_noise: f64,
        learns_calibration: bool,
        prior_variance: f64,
        min_forgetting: f64,
        max_forgetting: f64,
        rho_low: f64,
        rho_high: f64,
        forgetting_learning_rate: f64,
        noise_learning_rate: f64,
        drift_forgetting: f64,
        calibration_learning_rate: f64,
        initial_rho: f64,
        initial_log_noise: f64,
        initial_log_calibration: f64,
        prior_mean: Vec<f64>,
        draws: Vec<f64>,
    ) -> PyResult<Self> {
        if n_features == 0 || n_outputs == 0 || prior_mean.len() != n_features * n_outputs {
            return Err(PyValueError::new_err(
                "KalmanCore: n_features and n_outputs must be >= 1 and prior_mean hold \
                 n_features * n_outputs values",
            ));
        }
        if classify && !probit && (draws.is_empty() || draws.len() % n_outputs != 0) {
            return Err(PyValueError::new_err(
                "KalmanCore: Monte-Carlo probabilities need (n_samples, n_outputs) draws",
            ));
        }
        let config = Config {
            n_features,
            n_outputs,
            classify,
            probit,
            learns_forgetting,
            fixed_forgetting,
            learns_noise,
            fixed_noise,
            learns_calibration,
            prior_variance,
            min_forgetting,
            max_forgetting,
            rho_low,
            rho_high,
            forgetting_learning_rate,
            noise_learning_rate,
            drift_forgetting,
            calibration_learning_rate,
            initial_rho,
            initial_log_noise,
            initial_log_calibration,
            prior_mean,
            draws,
        };
        Ok(KalmanCore {
            filter: Filter::new(config),
        })
    }

    /// `predict(x)` (a new array) for a 1-d float64 buffer of length n_features; None
    /// when `x` is not one (the handle validates and converts it, then calls again).
    fn predict<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyArray1<f64>>>> {
        let mut features = std::mem::take(&mut self.filter.scratch_x);
        let outcome = read_vector(x, &mut features, "x");
        let result = match outcome {
            Ok(true) => {
                let mut out = vec![0.0; self.filter.config.n_outputs];
                self.filter.predict(&features, &mut out);
                Ok(Some(arrays::vector(py, &out)))
            }
            Ok(false) => Ok(None),
            Err(error) => Err(error),
        };
        self.filter.scratch_x = features;
        result
    }

    /// Predictions for validated rows `(n, n_features)`, flat `(n * n_outputs)`; with
    /// `means_only`, the predictive means (no probabilities).
    #[pyo3(signature = (rows, means_only=false))]
    fn predict_rows(&mut self, rows: &Bound<'_, PyAny>, means_only: bool) -> PyResult<Vec<f64>> {
        let d = self.filter.config.n_features;
        let k = self.filter.config.n_outputs;
        let rows = read_rows(rows, d)?;
        let n = rows.len() / d;
        let mut out = vec![0.0; n * k];
        for i in 0..n {
            let x = &rows[i * d..(i + 1) * d];
            let target = &mut out[i * k..(i + 1) * k];
            if means_only {
                self.filter.predictive_means(x, target);
            } else {
                self.filter.predict(x, target);
            }
        }
        Ok(out)
    }

    /// `learn(x, y)` for regression: `target` (length n_outputs, validated). False when
    /// `x` is not a 1-d float64 buffer of length n_features (the handle converts it and
    /// calls again). Refuses (NonFiniteUpdate, state unchanged) an update that would
    /// leave the state non-finite.
    fn learn_target(&mut self, x: &Bound<'_, PyAny>, target: Vec<f64>) -> PyResult<bool> {
        if target.len() != self.filter.config.n_outputs {
            return Err(PyValueError::new_err("y: wrong number of target values"));
        }
        self.learn_one_checked(x, Some(&target), None)
    }

    /// `learn(x, y)` for classification: a validated class `label`; as `learn_target`.
    fn learn_label(&mut self, x: &Bound<'_, PyAny>, label: usize) -> PyResult<bool> {
        if label >= self.filter.config.n_outputs {
            return Err(PyValueError::new_err(format!("y: unknown class {label}")));
        }
        self.learn_one_checked(x, None, Some(label))
    }

    /// `learn_many`: validated rows `(n, n_features)` and targets `(n, n_outputs)` or
    /// labels, one event after the other; all or nothing (a refused row leaves the state
    /// as it was before the batch).
    #[pyo3(signature = (rows, targets=None, labels=None))]
    fn learn_many(
        &mut self,
        rows: &Bound<'_, PyAny>,
        targets: Option<&Bound<'_, PyAny>>,
        labels: Option<Vec<usize>>,
    ) -> PyResult<()> {
        let py = rows.py();
        let d = self.filter.config.n_features;
        let k = self.filter.config.n_outputs;
        let rows = read_rows(rows, d)?;
        let targets = match targets {
            Some(values) => Some(read_rows(values, k)?),
            None => None,
        };
        let n = rows.len() / d;
        let filter = &mut self.filter;
        // The loop holds no Python object: other threads may run meanwhile.
        let outcome = py.allow_threads(|| {
            filter.guarded(|filter| {
                for i in 0..n {
                    let x = &rows[i * d..(i + 1) * d];
                    let target = targets.as_ref().map(|t| &t[i * k..(i + 1) * k]);
                    let label = labels.as_ref().map(|ys| ys[i]);
                    filter.learn_one(x, target, label);
                    if !filter.state_is_finite() {
                        return Err(format!(
                            "row {i}: the filter state would become non-finite (an input \
                             or a target too large for the arithmetic)"
                        ));
                    }
                }
                Ok(())
            })
        });
        outcome.map_err(|message| refused(format!("update: {message}")))
    }

    /// `learn_rows`: one block of simultaneous rows (validated); all or nothing.
    #[pyo3(signature = (rows, targets=None, labels=None))]
    fn learn_block(
        &mut self,
        rows: &Bound<'_, PyAny>,
        targets: Option<&Bound<'_, PyAny>>,
        labels: Option<Vec<usize>>,
    ) -> PyResult<()> {
        let d = self.filter.config.n_features;
        let k = self.filter.config.n_outputs;
        let rows = read_rows(rows, d)?;
        if rows.is_empty() {
            return Ok(());
        }
        let targets = match targets {
            Some(values) => Some(read_rows(values, k)?),
            None => None,
        };
        self.filter
            .guarded(|filter| filter.learn_block(&rows, targets.as_deref(), labels.as_deref()))
            .map_err(|message| refused(format!("update: {message}")))
    }

    /// The one-off transition with γ = drift_forgetting.
    fn on_drift(&mut self) {
        let gamma = self.filter.config.drift_forgetting;
        self.filter.transition(gamma);
    }

    /// Current (γ, σ², log β, n_updates).
    fn current(&self) -> (f64, f64, f64, i64) {
        let s = &self.filter.scalars;
        (s.gamma, s.noise, s.log_calibration, s.n_updates)
    }

    /// The state: (deviation flat, covariance flat, rho, log_noise, adam_steps,
    /// adam_moments, log_calibration, calibration_square_sum, n_updates).
    #[allow(clippy::type_complexity)]
    fn get_state(&self) -> (Vec<f64>, Vec<f64>, f64, f64, i64, Vec<f64>, f64, f64, i64) {
        let s = &self.filter.scalars;
        (
            self.filter.deviation.clone(),
            self.filter.covariance.clone(),
            s.rho,
            s.log_noise,
            s.adam_steps,
            s.adam_moments.to_vec(),
            s.log_calibration,
            s.calibration_square_sum,
            s.n_updates,
        )
    }

    /// Load a state written by `get_state` (validated by the handle).
    #[allow(clippy::too_many_arguments)]
    fn set_state(
        &mut self,
        deviation: Vec<f64>,
        covariance: Vec<f64>,
        rho: f64,
        log_noise: f64,
        adam_steps: i64,
        adam_moments: Vec<f64>,
        log_calibration: f64,
        calibration_square_sum: f64,
        n_updates: i64,
    ) -> PyResult<()> {
        if deviation.len() != self.filter.deviation.len()
            || covariance.len() != self.filter.covariance.len()
            || adam_moments.len() != 4
        {
            return Err(PyValueError::new_err(
                "KalmanCore.set_state: state arrays have the wrong sizes",
            ));
        }
        self.filter.deviation.copy_from_slice(&deviation);
        self.filter.covariance.copy_from_slice(&covariance);
        self.filter.set_rho(rho);
        self.filter.set_log_noise(log_noise);
        self.filter.scalars.adam_steps = adam_steps;
        self.filter
            .scalars
            .adam_moments
            .copy_from_slice(&adam_moments);
        self.filter.scalars.log_calibration = log_calibration;
        self.filter.scalars.calibration_square_sum = calibration_square_sum;
        self.filter.scalars.n_updates = n_updates;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<KalmanCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(learns: bool, d: usize, k: usize) -> Config {
        let logit = |p: f64| p.ln() - (-p).ln_1p();
        Config {
            n_features: d,
            n_outputs: k,
            classify: false,
            probit: true,
            learns_forgetting: learns,
            fixed_forgetting: 1.0,
            learns_noise: false,
            fixed_noise: 0.3,
            learns_calibration: false,
            prior_variance: 2.0,
            min_forgetting: 0.9,
            max_forgetting: 1.0 - 1e-6,
            rho_low: logit(0.9),
            rho_high: logit(1.0 - 1e-6),
            forgetting_learning_rate: 0.01,
            noise_learning_rate: 0.01,
            drift_forgetting: 0.7,
            calibration_learning_rate: 0.05,
            initial_rho: if learns { logit(0.999) } else { 0.0 },
            initial_log_noise: 0.3f64.ln(),
            initial_log_calibration: 0.0,
            prior_mean: vec![0.0; d * k],
            draws: vec![],
        }
    }

    #[test]
    fn bias_correction_equals_the_formula_at_every_step() {
        for decay in [ADAM_MEAN_DECAY, ADAM_SQUARE_DECAY, 0.5, 0.99999] {
            let settled = first_settled_step(decay);
            let mut first_one = None;
            for steps in 1..200_000u32 {
                let steps = f64::from(steps);
                let plain = 1.0 - decay.powf(steps);
                assert_eq!(
                    bias_correction(decay, steps, settled).to_bits(),
                    plain.to_bits()
                );
                if plain == 1.0 && first_one.is_none() {
                    first_one = Some(steps);
                }
            }
            if let Some(first) = first_one {
                assert_eq!(settled, first);
            }
        }
    }

    #[test]
    fn cholesky_and_inverse_recover_the_identity() {
        let matrix = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let factor = cholesky(&matrix, 3).unwrap();
        let inverse = invert_lower(&factor, 3);
        for i in 0..3 {
            for j in 0..3 {
                let total: f64 = (0..3).map(|l| inverse[i * 3 + l] * factor[l * 3 + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((total - want).abs() < 1e-12);
            }
        }
        assert!(cholesky(&[1.0, 0.0, 0.0, -1.0], 2).is_none());
    }

    #[test]
    fn one_row_blocks_equal_single_rows_without_forgetting() {
        let mut one = Filter::new(config(false, 3, 1));
        let mut block = one.clone();
        let rows = [[0.5, -1.0, 2.0], [1.5, 0.3, -0.2], [-0.7, 0.9, 0.1]];
        for (i, x) in rows.iter().enumerate() {
            let target = [i as f64 - 1.0];
            one.learn_one(x, Some(&target), None);
            block.learn_block(x, Some(&target), None).unwrap();
        }
        for (a, b) in one.covariance.iter().zip(&block.covariance) {
            assert!((a - b).abs() < 1e-12);
        }
        for (a, b) in one.deviation.iter().zip(&block.deviation) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(one.scalars.n_updates, 3);
    }

    #[test]
    fn a_non_finite_update_changes_nothing() {
        let mut filter = Filter::new(config(true, 2, 1));
        filter.learn_one(&[1.0, 2.0], Some(&[0.5]), None);
        let before = filter.clone();
        let outcome = filter.guarded(|f| {
            f.learn_one(&[1e200, 1e200], Some(&[1e200]), None);
            Ok(())
        });
        assert!(outcome.is_err());
        assert_eq!(filter.deviation, before.deviation);
        assert_eq!(filter.covariance, before.covariance);
        assert_eq!(filter.scalars, before.scalars);
    }

    #[test]
    fn covariance_stays_symmetric() {
        let mut filter = Filter::new(config(true, 3, 2));
        for i in 0..200 {
            let t = i as f64;
            let x = [t.sin(), (0.3 * t).cos(), 1.0];
            filter.learn_one(&x, Some(&[x[0] - x[1], 0.5 * x[2]]), None);
        }
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(filter.covariance[i * 3 + j], filter.covariance[j * 3 + i]);
            }
        }
    }
}
