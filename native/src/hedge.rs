//! Hedge (exponentially weighted average, with AdaHedge's rate) over K deployed models.
//!
//! The state and the per-event arithmetic of `streamweights.adapters.Hedge`; the Python
//! class is a thin handle that checks its inputs and owns the public API. The numpy
//! reference is `tests/reference/hedge.py`. Sums run left to right over the model index
//! (see `expert_losses`); exponentials and logarithms are the platform's `exp` / `ln`.

use pyo3::prelude::*;

use crate::expert_losses::{
    experts_from, learn_checked, learn_quick, minimum, predict_checked, predict_quick,
    predict_value_quick, read_flat, state_vector, sum, Experts, Loss, Mixer, Scratch,
};

/// The learning rate in use: a fixed one, 1 for log-loss with `"auto"` (the Bayesian
/// mixture), otherwise AdaHedge's `ln K / Δ` (infinite while `Δ` is 0: follow the leader).
pub fn current_rate(fixed: Option<f64>, loss: Loss, log_models: f64, gap: f64) -> f64 {
    match fixed {
        Some(rate) => rate,
        None if loss == Loss::Log => 1.0,
        None if gap <= 0.0 || log_models == 0.0 => f64::INFINITY,
        None => log_models / gap,
    }
}

/// `"auto"` and not log-loss: the rate follows the mixability gap, event by event.
pub fn is_adaptive(fixed: Option<f64>, loss: Loss) -> bool {
    fixed.is_none() && loss != Loss::Log
}

/// `softmax(-rate * L)` computed on `L - min L`; an infinite rate is uniform on the leaders.
pub fn exponential_weights(cumulative_loss: &[f64], rate: f64, out: &mut [f64]) {
    let best = minimum(cumulative_loss);
    for (slot, &loss) in out.iter_mut().zip(cumulative_loss) {
        let shifted = loss - best;
        *slot = if rate.is_infinite() {
            if shifted == 0.0 {
                1.0
            } else {
                0.0
            }
        } else {
            (-rate * shifted).exp()
        };
    }
    let total = sum(out);
    out.iter_mut().for_each(|weight| *weight /= total);
}

/// Hedge loss minus mix loss for one event (AdaHedge's `δ`), never negative. Only models
/// with weight take part in the mix loss, so one whose weight underflowed to 0 cannot
/// make it overflow.
pub fn mixability_gap(weights: &[f64], losses: &[f64], rate: f64) -> f64 {
    let mut hedge_loss = 0.0;
    let mut best = f64::INFINITY;
    for (&weight, &loss) in weights.iter().zip(losses) {
        hedge_loss += weight * loss;
        if weight > 0.0 {
            best = best.min(loss);
        }
    }
    let mix_loss = if rate.is_infinite() {
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
    // `max` keeps 0 for a NaN difference, as Python's `max(0.0, nan)` does.
    0.0f64.max(hedge_loss - mix_loss)
}

/// Hedge's state: each model's cumulative loss, AdaHedge's cumulative gap, the count of
/// labels learned, and the rate and weights derived from them.
#[derive(Clone, Debug)]
pub struct HedgeState {
    pub experts: Experts,
    /// `None` is `"auto"`.
    pub learning_rate: Option<f64>,
    pub cumulative_loss: Vec<f64>,
    pub mixability_gap: f64,
    pub n_learned: i64,
    log_models: f64,
    rate: f64,
    weights: Vec<f64>,
}

impl HedgeState {
    pub fn new(experts: Experts, learning_rate: Option<f64>) -> HedgeState {
        let n_models = experts.n_models;
        let mut state = HedgeState {
            log_models: (n_models as f64).ln(),
            experts,
            learning_rate,
            cumulative_loss: vec![0.0; n_models],
            mixability_gap: 0.0,
            n_learned: 0,
            rate: 0.0,
            weights: vec![0.0; n_models],
        };
        state.refresh();
        state
    }

    /// Recompute the rate and the weights from the cumulative losses and the gap.
    pub fn refresh(&mut self) {
        self.rate = current_rate(
            self.learning_rate,
            self.experts.loss,
            self.log_models,
            self.mixability_gap,
        );
        exponential_weights(&self.cumulative_loss, self.rate, &mut self.weights);
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Halve every model's lead over the best one (weights become ∝ √ of the old ones).
    pub fn on_drift(&mut self) {
        let best = minimum(&self.cumulative_loss);
        for loss in self.cumulative_loss.iter_mut() {
            *loss = best + 0.5 * (*loss - best);
        }
        self.refresh();
    }
}

impl Mixer for HedgeState {
    fn experts(&self) -> &Experts {
        &self.experts
    }

    fn weights(&self) -> &[f64] {
        &self.weights
    }

    fn learn_losses(&mut self, losses: &[f64]) {
        if is_adaptive(self.learning_rate, self.experts.loss) {
            self.mixability_gap += mixability_gap(&self.weights, losses, self.rate);
        }
        for (total, &loss) in self.cumulative_loss.iter_mut().zip(losses) {
            *total += loss;
        }
        self.n_learned += 1;
        self.refresh();
    }
}

/// The core of `streamweights.adapters.Hedge` (see that class for the maths and options).
#[pyclass(module = "streamweights._native")]
pub struct HedgeCore {
    pub(crate) state: HedgeState,
    pub(crate) scratch: Scratch,
}

#[pymethods]
impl HedgeCore {
    #[new]
    #[pyo3(signature = (n_models, n_classes, loss, learning_rate, probability_floor))]
    fn new(
        n_models: usize,
        n_classes: Option<usize>,
        loss: &str,
        learning_rate: Option<f64>,
        probability_floor: f64,
    ) -> PyResult<Self> {
        let experts = experts_from(n_models, n_classes, loss, probability_floor)?;
        Ok(HedgeCore {
            scratch: Scratch::new(&experts),
            state: HedgeState::new(experts, learning_rate),
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

    /// `(cumulative_loss, mixability_gap, n_learned)`.
    fn get_state(&self) -> (Vec<f64>, f64, i64) {
        (
            self.state.cumulative_loss.clone(),
            self.state.mixability_gap,
            self.state.n_learned,
        )
    }

    fn set_state(
        &mut self,
        cumulative_loss: Vec<f64>,
        mixability_gap: f64,
        n_learned: i64,
    ) -> PyResult<()> {
        let n_models = self.state.experts.n_models;
        self.state.cumulative_loss = state_vector(cumulative_loss, "cumulative_loss", n_models)?;
        self.state.mixability_gap = mixability_gap;
        self.state.n_learned = n_learned;
        self.state.refresh();
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<HedgeCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absolute(n_models: usize) -> Experts {
        Experts {
            n_models,
            n_classes: None,
            loss: Loss::Absolute,
            probability_floor: 1e-6,
        }
    }

    #[test]
    fn gap_ignores_models_without_weight() {
        // A model whose weight underflowed to 0 but whose loss is lowest must not make the
        // gap overflow (it once turned into NaN and was clipped to 0).
        let gap = mixability_gap(&[1.0, 0.0], &[5.0, -5000.0], 1.0);
        assert!(gap.abs() < 1e-12, "{gap}");
    }

    #[test]
    fn adahedge_rate_follows_the_gap() {
        let mut hedge = HedgeState::new(absolute(2), None);
        assert!(hedge.rate().is_infinite());
        // Uniform weights, losses 0 and 1: hedge loss 0.5, mix loss 0 (the leader's).
        hedge.learn_losses(&[0.0, 1.0]);
        assert_eq!(hedge.mixability_gap, 0.5);
        assert_eq!(hedge.rate(), 2f64.ln() / 0.5);
        assert!((hedge.weights()[0] - 0.8).abs() < 1e-15);
    }

    #[test]
    fn on_drift_halves_the_lead() {
        let mut hedge = HedgeState::new(absolute(2), Some(1.0));
        hedge.learn_losses(&[0.0, 4.0]);
        hedge.on_drift();
        assert_eq!(hedge.cumulative_loss, vec![0.0, 2.0]);
    }
}
