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

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::chain::Sequence;
use crate::expert_losses::{read_flat, write_native};

#[pyclass(module = "streamweights._native")]
pub struct PortfolioCore {
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
    rows: Vec<f64>,
    input: Vec<f64>,
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

/// Hedge loss minus mix loss of one round (AdaHedge's delta), never negative.
fn mixability_gap(weights: &[f64], losses: &[f64], rate: f64) -> f64 {
    let mut hedge = 0.0;
    for (&weight, &loss) in weights.iter().zip(losses) {
        hedge += weight * loss;
    }
    let mut best = f64::INFINITY;
    for (&weight, &loss) in weights.iter().zip(losses) {
        if weight > 0.0 && loss < best {
            best = loss;
        }
    }
    let mix = if rate.is_infinite() {
        best
    } else {
        let mut kept = 0.0;
        for (&weight, &loss) in weights.iter().zip(losses) {
            if weight > 0.0 {
                kept += weight * (-rate * (loss - best)).exp();
            }
        }
        best - kept.ln() / rate
    };
    let gap = hedge - mix;
    if gap > 0.0 {
        gap
    } else {
        0.0
    }
}

impl PortfolioCore {
    fn count(&self) -> usize {
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

    fn step_weights(&mut self, probabilities: &[f64], served: f64) {
        let floor = self.probability_floor;
        let likelihoods: Vec<f64> = probabilities
            .iter()
            .map(|&p| if floor > p { floor } else { p })
            .collect();
        let posterior: Vec<f64> = self
            .weights
            .iter()
            .zip(&likelihoods)
            .map(|(&w, &q)| w * q)
            .collect();
        let mut total = 0.0;
        for &value in &posterior {
            total += value;
        }
        self.mixture_loss -= (if floor > served { floor } else { served }).ln();
        for (c, &q) in self.cumulative_loss.iter_mut().zip(&likelihoods) {
            *c -= q.ln();
        }
        self.n_learned += 1;
        let share = 1.0 / (self.n_learned + 1) as f64;
        let spread = share / posterior.len() as f64;
        let keep = (1.0 - share) / total;
        self.weights = posterior.iter().map(|&p| p * keep + spread).collect();
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
                let probabilities: Vec<f64> = (0..count).map(|i| rows[i * width + label]).collect();
                self.step_weights(&probabilities, rows[count * width + label]);
            }
        }
        Ok(())
    }

    fn trace_len(&self) -> usize {
        let later: usize = self.candidates.iter().map(Sequence::later_len).sum();
        (self.count() + 1) * self.width + later
    }
}

#[pymethods]
impl PortfolioCore {
    #[new]
    #[pyo3(signature = (n_candidates, n_classes, probability_floor, drift_share))]
    fn new(
        n_candidates: usize,
        n_classes: Option<usize>,
        probability_floor: f64,
        drift_share: f64,
    ) -> PyResult<Self> {
        if n_candidates == 0 {
            return Err(PyValueError::new_err("candidates: at least one"));
        }
        let mut core = PortfolioCore {
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
            rows: Vec::new(),
            input: Vec::new(),
        };
        if n_classes.is_none() {
            core.weights = exponential_weights(&core.cumulative_loss, core.rate());
        }
        Ok(core)
    }

    /// Drive the candidates here: one list of stage specs per candidate (see
    /// `chain.rs`'s `Stage::from_spec`).
    fn bind_candidates(&mut self, candidates: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut bound = Vec::new();
        for specs in candidates.try_iter()? {
            let sequence = Sequence::from_specs(&specs?)?;
            if sequence.output_len() != self.width {
                return Err(PyValueError::new_err(
                    "candidates: a candidate's output is not one served row",
                ));
            }
            bound.push(sequence);
        }
        if bound.len() != self.count() {
            return Err(PyValueError::new_err(format!(
                "candidates: {} bound for {} weights",
                bound.len(),
                self.count()
            )));
        }
        self.candidates = bound;
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

    /// `predict_traced` of checked model outputs: the trace (each candidate's output,
    /// the mixture, the later stage inputs) written into `rows`, a float64 array of
    /// `trace_size` values.
    fn predict_into(
        &mut self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if self.candidates.is_empty() {
            return Err(PyValueError::new_err(
                "PortfolioCore: no candidates bound (the Python handle drives them)",
            ));
        }
        self.input = read_flat(py, outputs)?;
        let count = self.count();
        let width = self.width;
        let total = self.trace_len();
        let mut trace = std::mem::take(&mut self.rows);
        trace.clear();
        trace.resize(total, 0.0);
        let (served, later) = trace.split_at_mut((count + 1) * width);
        let mut position = 0;
        for (index, candidate) in self.candidates.iter_mut().enumerate() {
            let length = candidate.later_len();
            candidate.predict(
                py,
                &self.input,
                &mut later[position..position + length],
                &mut served[index * width..(index + 1) * width],
            )?;
            position += length;
        }
        for column in 0..width {
            let mut mixed = 0.0;
            for (index, &weight) in self.weights.iter().enumerate() {
                mixed += weight * served[index * width + column];
            }
            served[count * width + column] = mixed;
        }
        let result = write_native(py, rows, &trace);
        self.rows = trace;
        result
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
        let input = read_flat(py, outputs)?;
        let trace = read_flat(py, rows)?;
        if trace.len() != self.trace_len() {
            return Err(PyValueError::new_err(format!(
                "trace: expected {} values, got {}",
                self.trace_len(),
                trace.len()
            )));
        }
        let later = &trace[(self.count() + 1) * self.width..];
        let mut position = 0;
        for candidate in self.candidates.iter_mut() {
            let length = candidate.later_len();
            candidate.learn(py, &input, &later[position..position + length], y)?;
            position += length;
        }
        self.step_on_rows(&trace, y)
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
        self.step_weights(&probabilities, served);
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
