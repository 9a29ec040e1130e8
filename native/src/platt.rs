//! Online Platt scaling: `q = sigmoid(a * logit(f) + b)`, `(a, b)` fitted by ONS.
//!
//! The per-event loop of `tests/reference/platt.py`, expression for expression: the
//! update of `A` is `discount * A (+ (1 - discount) A_0) + g g^T` per entry and the step
//! `theta -= adj(A) g / (beta * det A)`, in the reference's order, so the two agree bit
//! for bit (libm's `log` and `exp`, as Python's `math` module calls them).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::newton::{overwrite, project_onto_ball, Newton};

/// The sigmoid's argument is clipped to +-100 (authors' code).
pub const SIGMOID_ARGUMENT_LIMIT: f64 = 100.0;

/// Scores are clipped to `[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]` before a logit or a
/// log (authors' code: 1e-5).
pub const PROBABILITY_CLIP: f64 = 1e-5;

/// `f` clipped to `[PROBABILITY_CLIP, 1 - PROBABILITY_CLIP]` (the reference's
/// `min(max(f, low), high)` for every non-NaN `f`).
pub fn clip_probability(f: f64) -> f64 {
    f.clamp(PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
}

/// Logistic function of a score clipped to `+-SIGMOID_ARGUMENT_LIMIT`.
pub fn sigmoid(score: f64) -> f64 {
    // Equal to the reference's min(max(..)) for every non-NaN score.
    let z = score.clamp(-SIGMOID_ARGUMENT_LIMIT, SIGMOID_ARGUMENT_LIMIT);
    1.0 / (1.0 + (-z).exp())
}

/// Online Platt scaling's state and arithmetic (plain Rust).
#[derive(Clone, Debug)]
pub struct Platt {
    pub newton: Newton,
}

impl Platt {
    pub fn new(discount: f64, exp_concavity: f64, initial_curvature: f64, radius: f64) -> Self {
        Platt {
            newton: Newton::new(
                vec![1.0, 0.0],
                initial_curvature,
                exp_concavity,
                Some(radius),
                discount,
            ),
        }
    }

    /// Calibrated class-1 probability of a clipped score `f`.
    pub fn probability(&self, f: f64) -> f64 {
        let (a, b) = (self.newton.theta[0], self.newton.theta[1]);
        sigmoid(a * (f / (1.0 - f)).ln() + b)
    }

    /// ONS over clipped scores and 0/1 labels; `served` gets the probability of each
    /// event before its update (what `probability` said), when given.
    pub fn learn(&mut self, scores: &[f64], labels: &[i64], mut served: Option<&mut Vec<f64>>) {
        let newton = &mut self.newton;
        let (mut a, mut b) = (newton.theta[0], newton.theta[1]);
        let (mut k00, mut k01, mut k11) = (
            newton.curvature[0],
            newton.curvature[1],
            newton.curvature[3],
        );
        let (keep, add, beta) = (newton.discount, newton.identity_scale, newton.exp_concavity);
        let radius = newton.radius.unwrap_or(f64::INFINITY);
        let squared_radius = radius * radius;
        for (&f, &y) in scores.iter().zip(labels.iter()) {
            let x = (f / (1.0 - f)).ln();
            let q = sigmoid(a * x + b);
            if let Some(out) = served.as_mut() {
                out.push(q);
            }
            let r = q - y as f64; // gradient (r x, r)
            let g = r * x;
            k00 = keep * k00 + add + g * g;
            k01 = keep * k01 + g * r;
            k11 = keep * k11 + add + r * r;
            let scale = 1.0 / (beta * (k00 * k11 - k01 * k01));
            a -= (k11 * g - k01 * r) * scale;
            b -= (k00 * r - k01 * g) * scale;
            if a * a + b * b > squared_radius {
                let projected = project_onto_ball(&[a, b], &[k00, k01, k01, k11], 2, radius);
                a = projected[0];
                b = projected[1];
            }
        }
        // (written over in place: this runs on every label)
        overwrite(&mut newton.theta, &[a, b]);
        overwrite(&mut newton.curvature, &[k00, k01, k01, k11]);
    }
}

pub fn check_lengths(scores: usize, labels: usize) -> PyResult<()> {
    if scores != labels {
        return Err(PyValueError::new_err(format!(
            "ys: {} inputs but {} labels",
            scores, labels
        )));
    }
    Ok(())
}

pub fn check_state(theta: &[f64], curvature: &[f64], d: usize) -> PyResult<()> {
    if theta.len() != d || curvature.len() != d * d {
        return Err(PyValueError::new_err(format!(
            "state: ONS arrays of dimension {} expected, got {} and {} entries",
            d,
            theta.len(),
            curvature.len()
        )));
    }
    Ok(())
}

/// Generates the Python handle of a binary ONS calibrator: a `#[pyclass]` named `$name`
/// holding an `$inner` (which has `new(discount, exp_concavity, initial_curvature,
/// radius)`, `probability(f)`, `learn(scores, labels, served)` and a `newton` field of
/// dimension `$dimension`). Inputs are validated by the Python adapter and clipped here.
/// OnlinePlatt and OnlineBetaScaling differ only in their arithmetic, not in their handle.
macro_rules! binary_calibrator_handle {
    ($handle:ident, $name:literal, $inner:ident, $dimension:expr) => {
        #[doc = concat!("Python handle of [`", stringify!($inner), "`].")]
        #[pyclass(module = "streamweights._native", name = $name)]
        pub struct $handle {
            pub(crate) inner: $inner,
        }

        #[pymethods]
        impl $handle {
            #[new]
            fn py_new(
                discount: f64,
                exp_concavity: f64,
                initial_curvature: f64,
                radius: f64,
            ) -> Self {
                $handle {
                    inner: $inner::new(discount, exp_concavity, initial_curvature, radius),
                }
            }

            /// Calibrated class-1 probability of a class-1 score (clipped here).
            fn probability(&self, f: f64) -> f64 {
                self.inner.probability($crate::platt::clip_probability(f))
            }

            fn probabilities(&self, scores: Vec<f64>) -> Vec<f64> {
                scores
                    .iter()
                    .map(|&f| self.inner.probability($crate::platt::clip_probability(f)))
                    .collect()
            }

            /// `predict`'s class-1 probability for a raw input `x`, or `None` when the
            /// core's input check does not clear it (the Python adapter then checks it).
            fn predict_input(&self, x: &Bound<'_, PyAny>) -> Option<f64> {
                let mut p = [0.0; 2];
                if $crate::probability_input::quick_probabilities(x, &mut p) {
                    Some(
                        self.inner
                            .probability($crate::platt::clip_probability(p[1])),
                    )
                } else {
                    None
                }
            }

            /// `learn(x, y)` on raw inputs: `true` when the core's input check cleared
            /// both and the event was learnt, `false` (nothing changed) to let Python
            /// check them.
            fn learn_input(&mut self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> bool {
                self.learn_served_input(x, y).is_some()
            }

            /// `learn_input` that returns the probability served to the event before its
            /// update.
            fn learn_served_input(
                &mut self,
                x: &Bound<'_, PyAny>,
                y: &Bound<'_, PyAny>,
            ) -> Option<f64> {
                let mut p = [0.0; 2];
                if !$crate::probability_input::quick_probabilities(x, &mut p) {
                    return None;
                }
                let label = $crate::probability_input::quick_label(y, 2)?;
                let mut served = Vec::with_capacity(1);
                self.inner.learn(
                    &[$crate::platt::clip_probability(p[1])],
                    &[label],
                    Some(&mut served),
                );
                Some(served[0])
            }

            fn learn(&mut self, f: f64, y: i64) {
                self.inner
                    .learn(&[$crate::platt::clip_probability(f)], &[y], None);
            }

            /// `learn` that returns the probability served to the event before its update.
            fn learn_served_one(&mut self, f: f64, y: i64) -> f64 {
                let mut served = Vec::with_capacity(1);
                self.inner.learn(
                    &[$crate::platt::clip_probability(f)],
                    &[y],
                    Some(&mut served),
                );
                served[0]
            }

            /// The batch loop, with the GIL released (the arrays are copied in already).
            fn learn_many(
                &mut self,
                py: Python<'_>,
                scores: Vec<f64>,
                labels: Vec<i64>,
            ) -> PyResult<()> {
                $crate::platt::check_lengths(scores.len(), labels.len())?;
                let inner = &mut self.inner;
                py.allow_threads(|| {
                    let scores: Vec<f64> = scores
                        .into_iter()
                        .map($crate::platt::clip_probability)
                        .collect();
                    inner.learn(&scores, &labels, None);
                });
                Ok(())
            }

            /// `learn_many` that returns the probability served to each event before its
            /// update.
            fn learn_served(
                &mut self,
                py: Python<'_>,
                scores: Vec<f64>,
                labels: Vec<i64>,
            ) -> PyResult<Vec<f64>> {
                $crate::platt::check_lengths(scores.len(), labels.len())?;
                let inner = &mut self.inner;
                Ok(py.allow_threads(|| {
                    let scores: Vec<f64> = scores
                        .into_iter()
                        .map($crate::platt::clip_probability)
                        .collect();
                    let mut served = Vec::with_capacity(scores.len());
                    inner.learn(&scores, &labels, Some(&mut served));
                    served
                }))
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
                $crate::platt::check_state(&theta, &curvature, $dimension)?;
                self.inner.newton.theta = theta;
                self.inner.newton.curvature = curvature;
                Ok(())
            }
        }
    };
}
pub(crate) use binary_calibrator_handle;

binary_calibrator_handle!(PlattCore, "PlattCore", Platt, 2);

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PlattCore>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_identity() {
        let platt = Platt::new(0.9999, 0.1, 100.0, 100.0);
        for &f in &[0.01, 0.3, 0.5, 0.77] {
            assert!((platt.probability(f) - f).abs() < 1e-12);
        }
    }

    #[test]
    fn batch_equals_loop() {
        let scores: Vec<f64> = (1..200).map(|k| k as f64 / 200.0).collect();
        let labels: Vec<i64> = (1..200).map(|k| (k % 3 == 0) as i64).collect();
        let mut batch = Platt::new(0.999, 0.1, 100.0, 1.0);
        let mut looped = batch.clone();
        batch.learn(&scores, &labels, None);
        for (f, y) in scores.iter().zip(labels.iter()) {
            looped.learn(&[*f], &[*y], None);
        }
        assert_eq!(batch.newton.theta, looped.newton.theta);
        assert_eq!(batch.newton.curvature, looped.newton.curvature);
    }
}
