//! Online beta scaling: `q = sigmoid(a ln f + b ln(1 - f) + c)`, `(a, b, c)` fitted by ONS.
//!
//! The per-event loop of `tests/reference/beta.py`, expression for expression: `A^{-1} g`
//! solved by `A = L D L^T` in the reference's order (bit for bit equal; `ln` and `ln_1p`
//! are libm's `log` and `log1p`, as Python's `math` calls them).

use pyo3::prelude::*;

use crate::newton::{overwrite, project_onto_ball, Newton};
use crate::platt::{binary_calibrator_handle, sigmoid};

/// Online beta scaling's state and arithmetic (plain Rust).
#[derive(Clone, Debug)]
pub struct Beta {
    pub newton: Newton,
}

impl Beta {
    pub fn new(discount: f64, exp_concavity: f64, initial_curvature: f64, radius: f64) -> Self {
        Beta {
            newton: Newton::new(
                vec![1.0, -1.0, 0.0],
                initial_curvature,
                exp_concavity,
                Some(radius),
                discount,
            ),
        }
    }

    /// Calibrated class-1 probability of a clipped score `f`.
    pub fn probability(&self, f: f64) -> f64 {
        let theta = &self.newton.theta;
        sigmoid(theta[0] * f.ln() + theta[1] * (-f).ln_1p() + theta[2])
    }

    /// ONS over clipped scores and 0/1 labels; `served` gets the probability of each
    /// event before its update, when given.
    pub fn learn(&mut self, scores: &[f64], labels: &[i64], mut served: Option<&mut Vec<f64>>) {
        let newton = &mut self.newton;
        let (mut a, mut b, mut c) = (newton.theta[0], newton.theta[1], newton.theta[2]);
        let k = &newton.curvature;
        let (mut k00, mut k01, mut k02) = (k[0], k[1], k[2]);
        let (mut k11, mut k12, mut k22) = (k[4], k[5], k[8]);
        let (keep, add) = (newton.discount, newton.identity_scale);
        let rate = 1.0 / newton.exp_concavity;
        let radius = newton.radius.unwrap_or(f64::INFINITY);
        let squared_radius = radius * radius;
        for (&f, &y) in scores.iter().zip(labels.iter()) {
            let u = f.ln();
            let v = (-f).ln_1p();
            let q = sigmoid(a * u + b * v + c);
            if let Some(out) = served.as_mut() {
                out.push(q);
            }
            let r = q - y as f64; // gradient (g0, g1, r)
            let g0 = r * u;
            let g1 = r * v;
            k00 = keep * k00 + add + g0 * g0;
            k01 = keep * k01 + g0 * g1;
            k02 = keep * k02 + g0 * r;
            k11 = keep * k11 + add + g1 * g1;
            k12 = keep * k12 + g1 * r;
            k22 = keep * k22 + add + r * r;
            // L = [[1, 0, 0], [l10, 1, 0], [l20, l21, 1]], D = diag(k00, d1, d2)
            let l10 = k01 / k00;
            let l20 = k02 / k00;
            let d1 = k11 - l10 * k01;
            let e21 = k12 - l20 * k01; // l21 * d1
            let l21 = e21 / d1;
            let d2 = k22 - l20 * k02 - l21 * e21;
            // forward (L w = g / beta), scale by D^-1, back (L^T x = ...)
            let w0 = rate * g0;
            let w1 = rate * g1 - l10 * w0;
            let x2 = (rate * r - l20 * w0 - l21 * w1) / d2;
            let x1 = w1 / d1 - l21 * x2;
            a -= w0 / k00 - l10 * x1 - l20 * x2;
            b -= x1;
            c -= x2;
            if a * a + b * b + c * c > squared_radius {
                let projected = project_onto_ball(
                    &[a, b, c],
                    &[k00, k01, k02, k01, k11, k12, k02, k12, k22],
                    3,
                    radius,
                );
                a = projected[0];
                b = projected[1];
                c = projected[2];
            }
        }
        // (written over in place: this runs on every label)
        overwrite(&mut newton.theta, &[a, b, c]);
        overwrite(
            &mut newton.curvature,
            &[k00, k01, k02, k01, k11, k12, k02, k12, k22],
        );
    }
}

binary_calibrator_handle!(BetaCore, "BetaCore", Beta, 3);

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<BetaCore>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_identity() {
        let beta = Beta::new(0.9999, 0.1, 25.0, 100.0);
        for &f in &[0.01, 0.3, 0.5, 0.77] {
            assert!((beta.probability(f) - f).abs() < 1e-12);
        }
    }

    #[test]
    fn stays_inside_the_radius() {
        let mut beta = Beta::new(0.99, 0.1, 25.0, 1.5);
        let scores: Vec<f64> = (1..2000).map(|k| (k % 97) as f64 / 98.0 + 0.005).collect();
        let labels: Vec<i64> = scores.iter().map(|&f| (f > 0.8) as i64).collect();
        beta.learn(&scores, &labels, None);
        let t = &beta.newton.theta;
        assert!(t[0] * t[0] + t[1] * t[1] + t[2] * t[2] <= 1.5 * 1.5 + 1e-12);
    }
}
