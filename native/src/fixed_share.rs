//! Fixed-Share: Hedge that spreads a share of the mass back to every model each event,
//! so it tracks a best model that switches.
//!
//! The state and the per-event arithmetic of `streamweights.adapters.FixedShare`; the
//! numpy reference is `tests/reference/fixed_share.py`. Per event: the exponential step
//! `u_k = w_k exp(-η (ℓ_k - min ℓ))`, then `w_k = u_k (1 - share) / Σu + share / K`. The
//! sum `Σu` runs left to right over k (the reference used `math.fsum`, exactly rounded:
//! the two differ by at most an ulp or two of `Σu`, and the sharing step contracts
//! errors, so the weights stay within ~1e-15 relative of the reference).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::expert_losses::{
    experts_from, learn_checked, learn_quick, minimum, predict_checked, predict_quick,
    predict_value_quick, read_flat, state_vector, sum, Experts, Mixer, Scratch,
};
use crate::hedge::{current_rate, is_adaptive, mixability_gap};

/// Fixed-Share's state: the shared weights, the cumulative losses and AdaHedge's gap
/// (for the `"auto"` rate), and the count of labels learned.
#[derive(Clone, Debug)]
pub struct FixedShareState {
    pub experts: Experts,
    /// `None` is `"auto"`.
    pub learning_rate: Option<f64>,
    pub share: f64,
    pub cumulative_loss: Vec<f64>,
    pub mixability_gap: f64,
    pub n_learned: i64,
    pub weights: Vec<f64>,
    log_models: f64,
    rate: f64,
    moved: Vec<f64>,
}

impl FixedShareState {
    pub fn new(experts: Experts, learning_rate: Option<f64>, share: f64) -> FixedShareState {
        let n_models = experts.n_models;
        let mut state = FixedShareState {
            log_models: (n_models as f64).ln(),
            experts,
            learning_rate,
            share,
            cumulative_loss: vec![0.0; n_models],
            mixability_gap: 0.0,
            n_learned: 0,
            weights: vec![1.0 / n_models as f64; n_models],
            rate: 0.0,
            moved: vec![0.0; n_models],
        };
        state.refresh();
        state
    }

    /// Recompute the rate (the weights are state of their own here).
    pub fn refresh(&mut self) {
        self.rate = current_rate(
            self.learning_rate,
            self.experts.loss,
            self.log_models,
            self.mixability_gap,
        );
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Whether `other` is in exactly this state and configuration, bit for bit: then the
    /// same input and label move both to the same state (the learning is a function of
    /// these alone), and [`FixedShareState::copy_state`] of one learned is the other's.
    pub fn same_as(&self, other: &FixedShareState) -> bool {
        let bits = |a: f64, b: f64| a.to_bits() == b.to_bits();
        let all_bits =
            |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| bits(x, y));
        let experts = (&self.experts, &other.experts);
        experts.0.n_models == experts.1.n_models
            && experts.0.n_classes == experts.1.n_classes
            && experts.0.loss == experts.1.loss
            && bits(experts.0.probability_floor, experts.1.probability_floor)
            && self.learning_rate.map(f64::to_bits) == other.learning_rate.map(f64::to_bits)
            && bits(self.share, other.share)
            && bits(self.mixability_gap, other.mixability_gap)
            && self.n_learned == other.n_learned
            && bits(self.log_models, other.log_models)
            && bits(self.rate, other.rate)
            && all_bits(&self.weights, &other.weights)
            && all_bits(&self.cumulative_loss, &other.cumulative_loss)
    }

    /// Take `source`'s learned state (its configuration is this one's: `same_as` held
    /// before both learned).
    pub fn copy_state(&mut self, source: &FixedShareState) {
        self.cumulative_loss.clone_from(&source.cumulative_loss);
        self.weights.clone_from(&source.weights);
        self.mixability_gap = source.mixability_gap;
        self.n_learned = source.n_learned;
        self.rate = source.rate;
    }

    /// Move half of the mass back to uniform.
    pub fn on_drift(&mut self) {
        let uniform_half = 0.5 / self.experts.n_models as f64;
        for weight in self.weights.iter_mut() {
            *weight = 0.5 * *weight + uniform_half;
        }
        self.refresh();
    }
}

impl Mixer for FixedShareState {
    fn experts(&self) -> &Experts {
        &self.experts
    }

    fn weights(&self) -> &[f64] {
        &self.weights
    }

    fn learn_losses(&mut self, losses: &[f64]) {
        let rate = self.rate;
        if is_adaptive(self.learning_rate, self.experts.loss) {
            // The gap is measured on the exponential step, before sharing.
            self.mixability_gap += mixability_gap(&self.weights, losses, rate);
        }
        let best = minimum(losses);
        for ((slot, &weight), &loss) in self.moved.iter_mut().zip(&self.weights).zip(losses) {
            let excess = loss - best;
            let factor = if rate.is_infinite() {
                if excess == 0.0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                (-rate * excess).exp()
            };
            *slot = weight * factor;
        }
        let keep = 1.0 - self.share;
        let spread = self.share / self.experts.n_models as f64;
        let scale = keep / sum(&self.moved);
        for (weight, &moved) in self.weights.iter_mut().zip(&self.moved) {
            *weight = moved * scale + spread;
        }
        for (total, &loss) in self.cumulative_loss.iter_mut().zip(losses) {
            *total += loss;
        }
        self.n_learned += 1;
        self.refresh();
    }
}

/// The core of `streamweights.adapters.FixedShare` (see that class for the maths).
#[pyclass(module = "streamweights._native")]
pub struct FixedShareCore {
    pub(crate) state: FixedShareState,
    pub(crate) scratch: Scratch,
}

#[pymethods]
impl FixedShareCore {
    #[new]
    #[pyo3(signature = (n_models, n_classes, loss, share, learning_rate, probability_floor))]
    fn new(
        n_models: usize,
        n_classes: Option<usize>,
        loss: &str,
        share: f64,
        learning_rate: Option<f64>,
        probability_floor: f64,
    ) -> PyResult<Self> {
        if !(share > 0.0 && share < 1.0) {
            return Err(PyValueError::new_err(format!(
                "share: must be in (0, 1), got {share}"
            )));
        }
        let experts = experts_from(n_models, n_classes, loss, probability_floor)?;
        Ok(FixedShareCore {
            scratch: Scratch::new(&experts),
            state: FixedShareState::new(experts, learning_rate, share),
        })
    }

    /// One event's mixture written into `out` (C floats); `false` when `x` is not a
    /// clearly valid float64 array (then nothing is written).
    fn predict_into(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        predict_quick(py, &self.state, &mut self.scratch, x, out)
    }

    /// One regression event's mixed value; `None` when `x` is not cleared.
    fn predict_value(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> Option<f64> {
        predict_value_quick(py, &self.state, &mut self.scratch, x)
    }

    /// Mixtures of checked events (flat), `n * C` values (`n` for regression).
    fn predict_checked(&self, py: Python<'_>, outputs: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
        Ok(predict_checked(&self.state, &read_flat(py, outputs)?))
    }

    /// Learn one event; `false` (nothing changed) when it needs the full check.
    fn learn(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> bool {
        learn_quick(py, &mut self.state, &mut self.scratch, x, y)
    }

    /// Learn checked events in order; `false` (nothing changed) when one is not finite.
    fn learn_checked(
        &mut self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let outputs = read_flat(py, outputs)?;
        let labels = read_flat(py, labels)?;
        learn_checked(&mut self.state, &outputs, &labels)
    }

    fn on_drift(&mut self) {
        self.state.on_drift();
    }

    fn weights(&self) -> Vec<f64> {
        self.state.weights.clone()
    }

    fn rate(&self) -> f64 {
        self.state.rate()
    }

    /// `(cumulative_loss, mixability_gap, n_learned, weights)`.
    fn get_state(&self) -> (Vec<f64>, f64, i64, Vec<f64>) {
        (
            self.state.cumulative_loss.clone(),
            self.state.mixability_gap,
            self.state.n_learned,
            self.state.weights.clone(),
        )
    }

    fn set_state(
        &mut self,
        cumulative_loss: Vec<f64>,
        mixability_gap: f64,
        n_learned: i64,
        weights: Vec<f64>,
    ) -> PyResult<()> {
        let n_models = self.state.experts.n_models;
        self.state.cumulative_loss = state_vector(cumulative_loss, "cumulative_loss", n_models)?;
        self.state.weights = state_vector(weights, "weights", n_models)?;
        self.state.mixability_gap = mixability_gap;
        self.state.n_learned = n_learned;
        self.state.refresh();
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<FixedShareCore>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expert_losses::Loss;

    #[test]
    fn every_weight_keeps_its_share_and_the_total_is_one() {
        let experts = Experts {
            n_models: 3,
            n_classes: Some(2),
            loss: Loss::Log,
            probability_floor: 1e-6,
        };
        let mut mixer = FixedShareState::new(experts, None, 0.03);
        for _ in 0..200 {
            mixer.learn_losses(&[0.1, 5.0, 9.0]);
        }
        assert!(mixer.weights.iter().all(|&w| w >= 0.01 * (1.0 - 1e-12)));
        assert!((sum(&mixer.weights) - 1.0).abs() < 1e-12);
        assert_eq!(mixer.n_learned, 200);
    }
}
