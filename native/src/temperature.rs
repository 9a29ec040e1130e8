//! Online temperature scaling: `p = softmax(ln p_in / T (+ b))`, `tau = ln T` (and the
//! biases) fitted by ONS.
//!
//! The loops of `tests/reference/temperature.py`, expression for expression: sums over
//! the classes run left to right from the first class (Python 3.11's `sum` of floats),
//! `max` is the first largest score, and the bias mode takes the generic ONS step of
//! `newton.rs` in dimension `1 + C`. Bit for bit equal to the reference.

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays;
use crate::newton::Newton;
use crate::platt::check_state;
use crate::probability_input::{quick_label, quick_probabilities};

/// Probabilities are floored at this value before the log.
pub const PROBABILITY_FLOOR: f64 = 1e-6;

/// Online temperature scaling's state and arithmetic (plain Rust).
#[derive(Clone, Debug)]
pub struct Temperature {
    pub newton: Newton,
    pub n_classes: usize,
    pub bias: bool,
    pub bias_regularization: f64,
    low: f64,
    high: f64,
}

/// Each probability floored at `PROBABILITY_FLOOR` (the reference's `np.maximum`).
pub(crate) fn floored(values: Vec<f64>) -> Vec<f64> {
    values
        .into_iter()
        .map(|v| {
            if v > PROBABILITY_FLOOR {
                v
            } else {
                PROBABILITY_FLOOR
            }
        })
        .collect()
}

fn softmax_in_place(scores: &mut [f64]) {
    let mut top = scores[0];
    for &s in scores.iter().skip(1) {
        if s > top {
            top = s;
        }
    }
    let mut total = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - top).exp();
        total += *s;
    }
    for s in scores.iter_mut() {
        *s /= total;
    }
}

impl Temperature {
    pub fn new(
        n_classes: usize,
        bias: bool,
        bias_regularization: f64,
        discount: f64,
        exp_concavity: f64,
        initial_curvature: f64,
    ) -> Self {
        let dimension = 1 + if bias { n_classes } else { 0 };
        Temperature {
            newton: Newton::new(
                vec![0.0; dimension],
                initial_curvature,
                exp_concavity,
                None,
                discount,
            ),
            n_classes,
            bias,
            bias_regularization,
            low: 0.05_f64.ln(),
            high: 20.0_f64.ln(),
        }
    }

    /// Calibrated probabilities of one validated probability vector, into `out`.
    pub fn predict_into(&self, p: &[f64], out: &mut [f64]) {
        let theta = &self.newton.theta;
        let inverse_temperature = (-theta[0]).exp();
        for (k, &v) in p.iter().enumerate() {
            let floored = if v > PROBABILITY_FLOOR {
                v
            } else {
                PROBABILITY_FLOOR
            };
            out[k] = floored.ln() * inverse_temperature;
            if self.bias {
                out[k] += theta[1 + k];
            }
        }
        softmax_in_place(out);
    }

    fn clip(&self, tau: f64) -> f64 {
        if tau < self.low {
            self.low
        } else if tau > self.high {
            self.high
        } else {
            tau
        }
    }

    /// Learn from floored probability rows (flat, row-major, `n_classes` per row).
    pub fn learn(&mut self, rows: &[f64], labels: &[i64]) {
        if self.bias {
            self.learn_with_bias(rows, labels);
        } else if self.n_classes == 2 {
            self.learn_two_classes(rows, labels);
        } else {
            self.learn_temperature(rows, labels);
        }
    }

    fn learn_two_classes(&mut self, rows: &[f64], labels: &[i64]) {
        // d = ln(p_0 / p_1) / T; q_1 = 1 / (1 + e^d); tau-gradient (q_1 - y) d.
        let mut tau = self.newton.theta[0];
        let mut curvature = self.newton.curvature[0];
        let (keep, add, beta) = (
            self.newton.discount,
            self.newton.identity_scale,
            self.newton.exp_concavity,
        );
        for (row, &y) in rows.chunks_exact(2).zip(labels.iter()) {
            let d = (row[0] / row[1]).ln() * (-tau).exp();
            let gradient = (1.0 / (1.0 + d.exp()) - y as f64) * d;
            curvature = keep * curvature + add + gradient * gradient;
            tau -= gradient / (beta * curvature);
            tau = self.clip(tau);
        }
        self.newton.theta[0] = tau;
        self.newton.curvature[0] = curvature;
    }

    fn learn_temperature(&mut self, rows: &[f64], labels: &[i64]) {
        // tau-gradient s_y - sum_k q_k s_k with s = ln p / T.
        let c = self.n_classes;
        let mut tau = self.newton.theta[0];
        let mut curvature = self.newton.curvature[0];
        let (keep, add, beta) = (
            self.newton.discount,
            self.newton.identity_scale,
            self.newton.exp_concavity,
        );
        let mut scaled = vec![0.0; c];
        for (row, &y) in rows.chunks_exact(c).zip(labels.iter()) {
            let inverse_temperature = (-tau).exp();
            for (s, &v) in scaled.iter_mut().zip(row.iter()) {
                *s = v.ln() * inverse_temperature;
            }
            let mut top = scaled[0];
            for &s in scaled.iter().skip(1) {
                if s > top {
                    top = s;
                }
            }
            let mut weighted = 0.0;
            let mut total = 0.0;
            for &s in &scaled {
                let w = (s - top).exp();
                weighted += w * s;
                total += w;
            }
            let gradient = scaled[y as usize] - weighted / total;
            curvature = keep * curvature + add + gradient * gradient;
            tau -= gradient / (beta * curvature);
            tau = self.clip(tau);
        }
        self.newton.theta[0] = tau;
        self.newton.curvature[0] = curvature;
    }

    fn learn_with_bias(&mut self, rows: &[f64], labels: &[i64]) {
        // d/d tau = s_y - sum_k q_k s_k; d/d b_k = q_k - 1{k = y} + pull * b_k.
        let c = self.n_classes;
        let pull = self.bias_regularization;
        let mut scaled = vec![0.0; c];
        let mut calibrated = vec![0.0; c];
        let mut gradient = vec![0.0; 1 + c];
        for (row, &y) in rows.chunks_exact(c).zip(labels.iter()) {
            let y = y as usize;
            let theta = &self.newton.theta;
            let inverse_temperature = (-theta[0]).exp();
            for k in 0..c {
                scaled[k] = row[k].ln() * inverse_temperature;
                calibrated[k] = scaled[k] + theta[1 + k];
            }
            softmax_in_place(&mut calibrated);
            let mut mean = 0.0;
            for k in 0..c {
                mean += calibrated[k] * scaled[k];
            }
            gradient[0] = scaled[y] - mean;
            gradient[1..].copy_from_slice(&calibrated);
            gradient[1 + y] -= 1.0;
            if pull != 0.0 {
                for k in 0..c {
                    gradient[1 + k] += pull * theta[1 + k];
                }
            }
            self.newton.step(&gradient);
            self.newton.theta[0] = self.clip(self.newton.theta[0]);
        }
    }
}

/// Python handle of [`Temperature`]; inputs are validated by the Python adapter.
#[pyclass(module = "streamweights._native", name = "TemperatureCore")]
pub struct TemperatureCore {
    pub(crate) inner: Temperature,
}

impl TemperatureCore {
    fn check_rows(&self, rows: &[f64], labels: &[i64]) -> PyResult<()> {
        if rows.len() != labels.len() * self.inner.n_classes {
            return Err(PyValueError::new_err(format!(
                "ys: {} labels for {} probabilities of {} classes",
                labels.len(),
                rows.len(),
                self.inner.n_classes
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl TemperatureCore {
    #[new]
    fn py_new(
        n_classes: usize,
        bias: bool,
        bias_regularization: f64,
        discount: f64,
        exp_concavity: f64,
        initial_curvature: f64,
    ) -> PyResult<Self> {
        if n_classes < 2 {
            return Err(PyValueError::new_err(format!(
                "n_classes: must be an integer >= 2, got {}",
                n_classes
            )));
        }
        Ok(TemperatureCore {
            inner: Temperature::new(
                n_classes,
                bias,
                bias_regularization,
                discount,
                exp_concavity,
                initial_curvature,
            ),
        })
    }

    /// `predict` of a raw input `x`, or `None` when the core's input check does not
    /// clear it (the Python adapter then checks it itself).
    fn predict_input<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> Option<Bound<'py, PyArray1<f64>>> {
        let mut p = vec![0.0; self.inner.n_classes];
        if !quick_probabilities(x, &mut p) {
            return None;
        }
        let mut out = vec![0.0; p.len()];
        self.inner.predict_into(&p, &mut out);
        Some(arrays::vector(py, &out))
    }

    /// `learn(x, y)` on raw inputs: `true` when the core's input check cleared both and
    /// the event was learnt, `false` (nothing changed) to let Python check them.
    fn learn_input(&mut self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> bool {
        let mut p = vec![0.0; self.inner.n_classes];
        if !quick_probabilities(x, &mut p) {
            return false;
        }
        match quick_label(y, self.inner.n_classes) {
            Some(label) => {
                self.inner.learn(&floored(p), &[label]);
                true
            }
            None => false,
        }
    }

    /// Calibrated probabilities of one validated probability vector.
    fn predict<'py>(&self, py: Python<'py>, p: Vec<f64>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        self.check_rows(&p, &[0])?;
        let mut out = vec![0.0; p.len()];
        self.inner.predict_into(&p, &mut out);
        Ok(arrays::vector(py, &out))
    }

    /// `predict` of each row of a flat row-major batch, flat.
    fn predict_many(&self, rows: Vec<f64>) -> PyResult<Vec<f64>> {
        let c = self.inner.n_classes;
        if rows.len() % c != 0 {
            return Err(PyValueError::new_err(format!(
                "xs: {} probabilities is not a whole number of rows of {}",
                rows.len(),
                c
            )));
        }
        let mut out = vec![0.0; rows.len()];
        for (row, target) in rows.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            self.inner.predict_into(row, target);
        }
        Ok(out)
    }

    /// Learn from validated probability rows (flat, row-major; floored here) and labels.
    fn learn_many(&mut self, py: Python<'_>, rows: Vec<f64>, labels: Vec<i64>) -> PyResult<()> {
        self.check_rows(&rows, &labels)?;
        let inner = &mut self.inner;
        py.allow_threads(|| inner.learn(&floored(rows), &labels));
        Ok(())
    }

    fn learn(&mut self, row: Vec<f64>, label: i64) -> PyResult<()> {
        self.check_rows(&row, &[label])?;
        self.inner.learn(&floored(row), &[label]);
        Ok(())
    }

    fn reset_curvature(&mut self) {
        self.inner.newton.reset_curvature();
    }

    #[getter]
    fn theta(&self) -> Vec<f64> {
        self.inner.newton.theta.clone()
    }

    /// `(theta, A, A^{-1})`, flat row-major.
    fn get_state(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let newton = &self.inner.newton;
        (
            newton.theta.clone(),
            newton.curvature.clone(),
            newton.inverse(),
        )
    }

    fn set_state(&mut self, theta: Vec<f64>, curvature: Vec<f64>) -> PyResult<()> {
        check_state(&theta, &curvature, self.inner.newton.dimension)?;
        self.inner.newton.theta = theta;
        self.inner.newton.curvature = curvature;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TemperatureCore>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_identity() {
        let temperature = Temperature::new(3, true, 1e-3, 0.9999, 0.1, 100.0);
        let mut out = [0.0; 3];
        temperature.predict_into(&[0.7, 0.2, 0.1], &mut out);
        for (got, want) in out.iter().zip([0.7, 0.2, 0.1].iter()) {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn a_sure_and_wrong_model_hits_the_upper_clip() {
        let mut temperature = Temperature::new(3, false, 0.0, 0.9999, 0.1, 100.0);
        let rows: Vec<f64> = (0..3000).flat_map(|_| vec![0.999998, 1e-6, 1e-6]).collect();
        let labels: Vec<i64> = (0..3000).map(|k| 1 + (k % 2)).collect();
        temperature.learn(&rows, &labels);
        assert!((temperature.newton.theta[0] - 20.0_f64.ln()).abs() < 1e-12);
    }
}
