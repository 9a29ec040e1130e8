//! Online stacking's own per-event arithmetic: the quick input check, the filter's design
//! rows built from one event's model outputs, the finiteness guard of an update, and the
//! floored, renormalised class mixture.
//!
//! The weights themselves are a Kalman filter's state, which lives in the core's Kalman
//! module behind `KalmanWeights`; `OnlineStacking` (Python) drives the two. The numpy
//! reference is `tests/reference/stacking.py`. Sums run left to right (see
//! `expert_losses`), as numpy's own sums over fewer than 8 terms do.

use pyo3::prelude::*;

use crate::arrays;
use crate::expert_losses::{
    read_event, read_flat, read_target, write_native, Experts, Loss, Target,
};
use crate::kalman::KalmanCore;

/// The shape of a stacking problem.
#[derive(Clone, Debug)]
pub struct Stacking {
    pub experts: Experts,
    pub fit_intercept: bool,
    pub probability_floor: f64,
}

impl Stacking {
    /// Weights of the filter: one per model, plus the intercept.
    pub fn n_features(&self) -> usize {
        self.experts.n_models + usize::from(self.fit_intercept)
    }

    /// Numbers in one event's design: one row for regression, C rows for classification.
    pub fn design_len(&self) -> usize {
        self.experts.width() * self.n_features()
    }

    /// The filter's design rows from checked outputs: the K outputs (+1) for regression;
    /// row c = the K models' probabilities of class c (+1) for classification.
    pub fn design(&self, outputs: &[f64], out: &mut [f64]) {
        let models = self.experts.n_models;
        let features = self.n_features();
        let width = self.experts.width();
        for (c, row) in out.chunks_exact_mut(features).enumerate().take(width) {
            for (k, slot) in row.iter_mut().enumerate().take(models) {
                *slot = outputs[k * width + c];
            }
            if self.fit_intercept {
                row[models] = 1.0;
            }
        }
    }

    /// A regression update squares the design and the residual: refuse (before any
    /// change) values whose squares overflow. `x·x + y²`, the reference's sum of the two.
    pub fn update_is_finite(design: &[f64], target: f64) -> bool {
        let mut squares = 0.0;
        for &value in design {
            squares += value * value;
        }
        (squares + target * target).is_finite()
    }

    /// Class probabilities from the filter's predictive means: floored, renormalised.
    pub fn combine(&self, means: &[f64], out: &mut [f64]) {
        let mut total = 0.0;
        for (slot, &mean) in out.iter_mut().zip(means) {
            *slot = mean.max(self.probability_floor);
            total += *slot;
        }
        out.iter_mut().for_each(|value| *value /= total);
    }
}

/// The stacking-specific half of `streamweights.adapters.OnlineStacking`.
#[pyclass(module = "streamweights._native")]
pub struct StackingCore {
    pub(crate) stacking: Stacking,
    pub(crate) outputs: Vec<f64>,
    pub(crate) design: Vec<f64>,
}

#[pymethods]
impl StackingCore {
    #[new]
    #[pyo3(signature = (n_models, n_classes, fit_intercept, probability_floor))]
    fn new(
        n_models: usize,
        n_classes: Option<usize>,
        fit_intercept: bool,
        probability_floor: f64,
    ) -> Self {
        let experts = Experts {
            n_models,
            n_classes,
            loss: Loss::Squared,
            probability_floor,
        };
        let stacking = Stacking {
            experts,
            fit_intercept,
            probability_floor,
        };
        StackingCore {
            outputs: vec![0.0; stacking.experts.event_len()],
            design: vec![0.0; stacking.design_len()],
            stacking,
        }
    }

    /// One event's design rows written into `out` when `x` clears the quick check.
    fn design(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if !read_event(py, x, &self.stacking.experts, &mut self.outputs) {
            return Ok(false);
        }
        self.stacking.design(&self.outputs, &mut self.design);
        write_native(py, out, &self.design)?;
        Ok(true)
    }

    /// The design rows of one checked event (its outputs, flat).
    fn design_checked(
        &mut self,
        py: Python<'_>,
        outputs: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let outputs = read_flat(py, outputs)?;
        self.stacking.design(&outputs, &mut self.design);
        write_native(py, out, &self.design)
    }

    /// For `learn(x, y)`: the design rows written into `out` when `x` and `y` clear the
    /// quick checks and (regression) the update is finite; `false` otherwise.
    fn learn_design(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if !read_event(py, x, &self.stacking.experts, &mut self.outputs) {
            return Ok(false);
        }
        let target = match read_target(y, &self.stacking.experts) {
            Some(target) => target,
            None => return Ok(false),
        };
        self.stacking.design(&self.outputs, &mut self.design);
        if let Target::Value(value) = target {
            if !Stacking::update_is_finite(&self.design, value) {
                return Ok(false);
            }
        }
        write_native(py, out, &self.design)?;
        Ok(true)
    }

    /// Whether a regression update of these checked design rows and target is finite.
    #[staticmethod]
    fn update_is_finite(py: Python<'_>, design: &Bound<'_, PyAny>, target: f64) -> PyResult<bool> {
        Ok(Stacking::update_is_finite(&read_flat(py, design)?, target))
    }

    /// Floored, renormalised class probabilities from the predictive means, into `out`.
    fn combine(
        &self,
        py: Python<'_>,
        means: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let means = read_flat(py, means)?;
        let mut combined = vec![0.0; means.len()];
        self.stacking.combine(&means, &mut combined);
        write_native(py, out, &combined)
    }

    /// `predict(x)` in one call: quick check, design, the filter's predictive means
    /// (`kalman`, the `KalmanWeights` core holding the weights) and, for classes, the
    /// floored mixture, as a new array (one value per class, or a zero-dimensional one
    /// for regression); `None` when `x` is not cleared.
    fn predict_with<'py>(
        &mut self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        kalman: &Bound<'py, KalmanCore>,
    ) -> Option<Bound<'py, PyAny>> {
        if !read_event(py, x, &self.stacking.experts, &mut self.outputs) {
            return None;
        }
        self.stacking.design(&self.outputs, &mut self.design);
        let mut served = vec![0.0; self.stacking.experts.width()];
        self.predict_design(&kalman.borrow(), &mut served);
        Some(match self.stacking.experts.n_classes {
            Some(_) => arrays::vector(py, &served).into_any(),
            None => arrays::scalar(py, served[0]).into_any(),
        })
    }

    /// `predict_many` of a checked batch (`(n, K)` or `(n, K, C)`, flat): every row as
    /// `predict_with` computes it, into `out` (`n × width`), in one call.
    fn predict_checked_many(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        kalman: &Bound<'_, KalmanCore>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let batch = read_flat(py, batch)?;
        let width = self.stacking.experts.width();
        let rows = batch.len() / self.outputs.len();
        let mut served = vec![0.0; rows * width];
        let core = kalman.borrow();
        for (outputs, slot) in batch
            .chunks_exact(self.outputs.len())
            .zip(served.chunks_exact_mut(width))
        {
            self.stacking.design(outputs, &mut self.design);
            self.predict_design(&core, slot);
        }
        write_native(py, out, &served)
    }

    /// `learn(x, y)` in one call; `false` (nothing changed) when `x` or `y` is not
    /// cleared or the update is refused (the handle then checks fully and raises).
    fn learn_with(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        kalman: &Bound<'_, KalmanCore>,
    ) -> PyResult<bool> {
        if !read_event(py, x, &self.stacking.experts, &mut self.outputs) {
            return Ok(false);
        }
        let target = match read_target(y, &self.stacking.experts) {
            Some(target) => target,
            None => return Ok(false),
        };
        self.stacking.design(&self.outputs, &mut self.design);
        Ok(self.learn_design_into(&mut kalman.borrow_mut(), target))
    }

    /// `learn_many` of a checked batch (flat, as `predict_checked_many`) and its checked
    /// targets (class indices as floats for classification), one event after the other
    /// as `learn_with` learns them. Returns `None` when every row was learned, or the
    /// index of the first refused row: the rows before it are learned, it and the rest
    /// are not (the handle then learns that row through its full check, which raises the
    /// error the per-event loop would, and goes on past it if it does not).
    fn learn_checked_many(
        &mut self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        targets: Vec<f64>,
        kalman: &Bound<'_, KalmanCore>,
    ) -> PyResult<Option<usize>> {
        let batch = read_flat(py, batch)?;
        let mut core = kalman.borrow_mut();
        for (index, (outputs, &value)) in batch
            .chunks_exact(self.outputs.len())
            .zip(&targets)
            .enumerate()
        {
            let target = match self.stacking.experts.n_classes {
                None => Target::Value(value),
                Some(_) => Target::Class(value as usize),
            };
            self.stacking.design(outputs, &mut self.design);
            if !self.learn_design_into(&mut core, target) {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }
}

impl StackingCore {
    /// Copy one event's outputs (a chain's slice) into `outputs` when they clear the
    /// quick check (the right length, probabilities renormalised as Python's check
    /// does); `false` otherwise.
    pub(crate) fn take_outputs(&mut self, input: &[f64]) -> bool {
        if input.len() != self.outputs.len() {
            return false;
        }
        self.outputs.copy_from_slice(input);
        self.stacking.experts.clear_outputs(&mut self.outputs)
    }

    /// The prediction of the design rows in `self.design`: the filter's predictive
    /// means and, for classes, their floored mixture, into `out` (`width` values).
    fn predict_design(&self, core: &KalmanCore, out: &mut [f64]) {
        let features = self.stacking.n_features();
        let width = self.stacking.experts.width();
        let mut means = [0.0; 16];
        let mut long = Vec::new();
        let means: &mut [f64] = if width <= means.len() {
            &mut means[..width]
        } else {
            long.resize(width, 0.0);
            &mut long
        };
        for (row, mean) in self.design.chunks_exact(features).zip(means.iter_mut()) {
            let mut one = [0.0];
            core.filter.predictive_means(row, &mut one);
            *mean = one[0];
        }
        if self.stacking.experts.n_classes.is_none() {
            out.copy_from_slice(means);
        } else {
            self.stacking.combine(means, out);
        }
    }

    /// Learn the design rows in `self.design` with `target`; `false` (nothing changed)
    /// when the update is refused.
    fn learn_design_into(&self, core: &mut KalmanCore, target: Target) -> bool {
        let design = &self.design;
        let outcome = match target {
            Target::Value(value) => {
                if !Stacking::update_is_finite(design, value) {
                    return false;
                }
                core.filter.guarded(|filter| {
                    filter.learn_one(design, Some(&[value]), None);
                    Ok(())
                })
            }
            Target::Class(label) => {
                let classes = self.stacking.experts.width();
                let mut targets = vec![0.0; classes];
                targets[label] = 1.0;
                core.filter
                    .guarded(|filter| filter.learn_block(design, Some(&targets), None))
            }
        };
        outcome.is_ok()
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<StackingCore>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stacking(n_classes: Option<usize>, fit_intercept: bool) -> Stacking {
        Stacking {
            experts: Experts {
                n_models: 2,
                n_classes,
                loss: Loss::Squared,
                probability_floor: 1e-3,
            },
            fit_intercept,
            probability_floor: 1e-3,
        }
    }

    #[test]
    fn classification_design_is_the_transpose_plus_intercept() {
        let shape = stacking(Some(3), true);
        let mut out = vec![0.0; shape.design_len()];
        shape.design(&[0.1, 0.2, 0.7, 0.3, 0.3, 0.4], &mut out);
        assert_eq!(out, vec![0.1, 0.3, 1.0, 0.2, 0.3, 1.0, 0.7, 0.4, 1.0]);
    }

    #[test]
    fn combine_floors_and_renormalises() {
        let shape = stacking(Some(2), false);
        let mut out = [0.0; 2];
        shape.combine(&[-0.5, 1.5], &mut out);
        assert_eq!(out, [1e-3 / 1.501, 1.5 / 1.501]);
    }

    #[test]
    fn overflowing_squares_are_refused() {
        assert!(Stacking::update_is_finite(&[1.0, 2.0], 3.0));
        assert!(!Stacking::update_is_finite(&[2e154, 1.0], 1.0));
        assert!(!Stacking::update_is_finite(&[1.0, 1.0], 1.7e308));
    }
}
