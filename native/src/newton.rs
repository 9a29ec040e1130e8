//! Online Newton Step (ONS) for the few parameters of a calibration map.
//!
//! State `(theta, A)`, `A` flat row-major. Per gradient `g` (Gupta & Ramdas 2023, with our
//! discount towards `A_0`):
//!
//! ```text
//! A     <- discount * A (+ (1 - discount) * A_0 on the diagonal) + g g^T
//! theta <- theta - A^{-1} g / exp_concavity
//! theta <- argmin_{||x|| <= radius} (x - theta)^T A (x - theta)     if ||theta|| > radius
//! ```
//!
//! Arithmetic order: every expression is evaluated in the order the Python reference
//! writes it (`tests/reference/newton.py`), sums left to right from the first term, so
//! the core and the reference agree bit for bit except where the reference calls numpy
//! (the projection's eigen-decomposition, which this module replaces by a solve per
//! bisection step: equal within ~1e-14 relative, and the projection is rare).

use pyo3::prelude::*;

/// Bisection steps of the projection's multiplier: each halves the bracket, and 200
/// halvings take any float64 bracket to adjacent floats.
const PROJECTION_BISECTIONS: usize = 200;

/// ONS state for a parameter vector of dimension `dimension` (plain Rust, no PyO3 types).
#[derive(Clone, Debug)]
pub struct Newton {
    pub dimension: usize,
    pub theta: Vec<f64>,
    pub curvature: Vec<f64>,
    pub initial_curvature: f64,
    pub exp_concavity: f64,
    pub radius: Option<f64>,
    pub discount: f64,
    /// What the discount adds back on the diagonal, `(1 - discount) * A_0`.
    pub identity_scale: f64,
}

impl Newton {
    pub fn new(
        start: Vec<f64>,
        initial_curvature: f64,
        exp_concavity: f64,
        radius: Option<f64>,
        discount: f64,
    ) -> Newton {
        let dimension = start.len();
        let mut newton = Newton {
            dimension,
            theta: start,
            curvature: vec![0.0; dimension * dimension],
            initial_curvature,
            exp_concavity,
            radius,
            discount,
            identity_scale: (1.0 - discount) * initial_curvature,
        };
        newton.reset_curvature();
        newton
    }

    /// `A <- A_0`, keeping `theta`: the next steps are as large as the first ones.
    pub fn reset_curvature(&mut self) {
        let d = self.dimension;
        for entry in self.curvature.iter_mut() {
            *entry = 0.0;
        }
        for index in 0..d {
            self.curvature[index * (d + 1)] = self.initial_curvature;
        }
    }

    /// One ONS update with the loss gradient at the current `theta` (any dimension).
    pub fn step(&mut self, gradient: &[f64]) {
        let d = self.dimension;
        let keep = self.discount;
        let add = self.identity_scale;
        for row in 0..d {
            let g_row = gradient[row];
            let diagonal = row * (d + 1);
            let kept_diagonal = keep * self.curvature[diagonal] + add;
            for (col, g) in gradient.iter().enumerate().take(d) {
                let index = row * d + col;
                self.curvature[index] = keep * self.curvature[index] + g_row * g;
            }
            self.curvature[diagonal] = kept_diagonal + g_row * g_row;
        }
        let direction = solve_positive_definite(&self.curvature, d, gradient);
        let scale = 1.0 / self.exp_concavity;
        for (t, v) in self.theta.iter_mut().zip(direction.iter()) {
            *t -= scale * v;
        }
        if let Some(radius) = self.radius {
            self.project_if_outside(radius);
        }
    }

    /// Project `theta` onto the ball when it left it (`sum theta^2 > radius^2`).
    pub fn project_if_outside(&mut self, radius: f64) {
        let mut squared = 0.0;
        for t in &self.theta {
            squared += t * t;
        }
        if squared > radius * radius {
            self.theta = project_onto_ball(&self.theta, &self.curvature, self.dimension, radius);
        }
    }

    /// `A^{-1}`, flat row-major (derived from `A`; not part of the update).
    pub fn inverse(&self) -> Vec<f64> {
        invert_positive_definite(&self.curvature, self.dimension)
    }
}

/// `matrix^{-1} rhs` for a small symmetric positive definite matrix (flat): adjugate over
/// determinant up to 3x3, Cholesky and two triangular solves beyond (the reference's
/// formulas and order).
pub fn solve_positive_definite(matrix: &[f64], d: usize, rhs: &[f64]) -> Vec<f64> {
    match d {
        1 => vec![rhs[0] / matrix[0]],
        2 => {
            let (a, b, c) = (matrix[0], matrix[1], matrix[3]);
            let (g0, g1) = (rhs[0], rhs[1]);
            let scale = 1.0 / (a * c - b * b);
            vec![(c * g0 - b * g1) * scale, (a * g1 - b * g0) * scale]
        }
        3 => {
            let (a, b, c) = (matrix[0], matrix[1], matrix[2]);
            let (e, f, i) = (matrix[4], matrix[5], matrix[8]);
            let (m00, m01, m02) = (e * i - f * f, c * f - b * i, b * f - c * e);
            let (m11, m12, m22) = (a * i - c * c, b * c - a * f, a * e - b * b);
            let (g0, g1, g2) = (rhs[0], rhs[1], rhs[2]);
            let scale = 1.0 / (a * m00 + b * m01 + c * m02);
            vec![
                (m00 * g0 + m01 * g1 + m02 * g2) * scale,
                (m01 * g0 + m11 * g1 + m12 * g2) * scale,
                (m02 * g0 + m12 * g1 + m22 * g2) * scale,
            ]
        }
        _ => cholesky_solve(matrix, d, rhs),
    }
}

/// `matrix = L L^T`, then `L w = rhs`, `L^T x = w`; each dot product summed left to right.
fn cholesky_solve(matrix: &[f64], d: usize, rhs: &[f64]) -> Vec<f64> {
    let mut lower = vec![0.0; d * d]; // row-major, lower triangle used
    for row in 0..d {
        for col in 0..row {
            let mut dot = 0.0;
            for k in 0..col {
                dot += lower[row * d + k] * lower[col * d + k];
            }
            lower[row * d + col] = (matrix[row * d + col] - dot) / lower[col * d + col];
        }
        let mut dot = 0.0;
        for k in 0..row {
            dot += lower[row * d + k] * lower[row * d + k];
        }
        lower[row * d + row] = (matrix[row * (d + 1)] - dot).sqrt();
    }
    let mut forward = vec![0.0; d];
    for row in 0..d {
        let mut dot = 0.0;
        for k in 0..row {
            dot += lower[row * d + k] * forward[k];
        }
        forward[row] = (rhs[row] - dot) / lower[row * d + row];
    }
    let mut solution = vec![0.0; d];
    for row in (0..d).rev() {
        let mut total = forward[row];
        for k in row + 1..d {
            total -= lower[k * d + row] * solution[k];
        }
        solution[row] = total / lower[row * d + row];
    }
    solution
}

/// Inverse of a small symmetric positive definite matrix (flat): closed forms up to 3x3,
/// Gauss-Jordan without pivoting beyond, symmetrised.
pub fn invert_positive_definite(matrix: &[f64], d: usize) -> Vec<f64> {
    match d {
        1 => vec![1.0 / matrix[0]],
        2 => {
            let (a, b, c) = (matrix[0], matrix[1], matrix[3]);
            let determinant = a * c - b * b;
            let off = -b / determinant;
            vec![c / determinant, off, off, a / determinant]
        }
        3 => {
            let (a, b, c) = (matrix[0], matrix[1], matrix[2]);
            let (e, f, i) = (matrix[4], matrix[5], matrix[8]);
            let (m00, m01, m02) = (e * i - f * f, c * f - b * i, b * f - c * e);
            let (m11, m12, m22) = (a * i - c * c, b * c - a * f, a * e - b * b);
            let determinant = a * m00 + b * m01 + c * m02;
            let (m01, m02, m12) = (m01 / determinant, m02 / determinant, m12 / determinant);
            vec![
                m00 / determinant,
                m01,
                m02,
                m01,
                m11 / determinant,
                m12,
                m02,
                m12,
                m22 / determinant,
            ]
        }
        _ => {
            let width = 2 * d;
            let mut work = vec![0.0; d * width];
            for row in 0..d {
                work[row * width..row * width + d].copy_from_slice(&matrix[row * d..row * d + d]);
                work[row * width + d + row] = 1.0;
            }
            for pivot in 0..d {
                let factor = 1.0 / work[pivot * width + pivot];
                for col in 0..width {
                    work[pivot * width + col] *= factor;
                }
                for row in 0..d {
                    if row == pivot {
                        continue;
                    }
                    let ratio = work[row * width + pivot];
                    if ratio != 0.0 {
                        for col in 0..width {
                            work[row * width + col] -= ratio * work[pivot * width + col];
                        }
                    }
                }
            }
            let mut inverse = vec![0.0; d * d];
            for row in 0..d {
                for col in 0..d {
                    inverse[row * d + col] = work[row * width + d + col];
                }
            }
            for row in 0..d {
                for col in row + 1..d {
                    let mean = 0.5 * (inverse[row * d + col] + inverse[col * d + row]);
                    inverse[row * d + col] = mean;
                    inverse[col * d + row] = mean;
                }
            }
            inverse
        }
    }
}

/// `||x||` for the projection (sum of squares left to right, then the root).
fn norm(values: &[f64]) -> f64 {
    let mut squared = 0.0;
    for v in values {
        squared += v * v;
    }
    squared.sqrt()
}

/// `(A + lam I)^{-1} A theta`: the minimiser for multiplier `lam`.
fn shifted_solution(curvature: &[f64], d: usize, pulled: &[f64], lam: f64) -> Vec<f64> {
    let mut shifted = curvature.to_vec();
    for index in 0..d {
        shifted[index * (d + 1)] += lam;
    }
    cholesky_solve(&shifted, d, pulled)
}

/// `target` becomes `values`, in its own allocation (the calibrators write their
/// parameters back on every label).
pub fn overwrite(target: &mut Vec<f64>, values: &[f64]) {
    target.clear();
    target.extend_from_slice(values);
}

/// `argmin_{||x|| <= radius} (x - theta)^T A (x - theta)`.
///
/// The minimiser is `x(lam) = (A + lam I)^{-1} A theta` with the multiplier `lam >= 0` at
/// which `||x(lam)|| = radius`; `||x(lam)||` decreases in `lam`, so bisection finds it,
/// starting from `[0, ||A theta|| / radius]` (at the upper end `||x|| <= radius`). The
/// feasible end of the bracket is returned. The reference evaluates `||x(lam)||` in A's
/// eigenbasis (numpy); here each step solves the shifted system by Cholesky: the same
/// function, rounded differently (a few ulp).
pub fn project_onto_ball(theta: &[f64], curvature: &[f64], d: usize, radius: f64) -> Vec<f64> {
    let mut pulled = vec![0.0; d];
    for (row, value) in pulled.iter_mut().enumerate() {
        let mut total = 0.0;
        for col in 0..d {
            total += curvature[row * d + col] * theta[col];
        }
        *value = total;
    }
    let mut low = 0.0;
    let mut high = norm(&pulled) / radius;
    for _ in 0..PROJECTION_BISECTIONS {
        let middle = 0.5 * (low + high);
        if middle == low || middle == high {
            break;
        }
        if norm(&shifted_solution(curvature, d, &pulled, middle)) > radius {
            low = middle;
        } else {
            high = middle;
        }
    }
    shifted_solution(curvature, d, &pulled, high)
}

/// The generic ONS as a Python object, for tests and inspection (the calibrators keep
/// their own hand-written loops for their dimension, on the same `Newton`).
#[pyclass(module = "streamweights._native", name = "NewtonStep")]
pub struct PyNewtonStep {
    inner: Newton,
}

#[pymethods]
impl PyNewtonStep {
    #[new]
    #[pyo3(signature = (start, initial_curvature, exp_concavity, radius, discount))]
    fn py_new(
        start: Vec<f64>,
        initial_curvature: f64,
        exp_concavity: f64,
        radius: Option<f64>,
        discount: f64,
    ) -> Self {
        PyNewtonStep {
            inner: Newton::new(start, initial_curvature, exp_concavity, radius, discount),
        }
    }

    fn step(&mut self, gradient: Vec<f64>) -> PyResult<()> {
        if gradient.len() != self.inner.dimension {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "gradient: {} entries expected, got {}",
                self.inner.dimension,
                gradient.len()
            )));
        }
        self.inner.step(&gradient);
        Ok(())
    }

    fn reset_curvature(&mut self) {
        self.inner.reset_curvature();
    }

    #[getter]
    fn theta(&self) -> Vec<f64> {
        self.inner.theta.clone()
    }

    #[getter]
    fn curvature(&self) -> Vec<f64> {
        self.inner.curvature.clone()
    }

    #[getter]
    fn inverse(&self) -> Vec<f64> {
        self.inner.inverse()
    }
}

/// `argmin_{||x|| <= radius} (x - theta)^T A (x - theta)` (``A`` flat row-major).
#[pyfunction]
#[pyo3(name = "project_onto_ball")]
fn py_project_onto_ball(
    theta: Vec<f64>,
    curvature: Vec<f64>,
    d: usize,
    radius: f64,
) -> PyResult<Vec<f64>> {
    if theta.len() != d || curvature.len() != d * d {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "project_onto_ball: theta of {} and curvature of {} entries for dimension {}",
            theta.len(),
            curvature.len(),
            d
        )));
    }
    Ok(project_onto_ball(&theta, &curvature, d, radius))
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyNewtonStep>()?;
    module.add_function(wrap_pyfunction!(py_project_onto_ball, module)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_matches_inverse_times_rhs() {
        for d in 1..6 {
            let mut matrix = vec![0.0; d * d];
            for row in 0..d {
                for col in 0..d {
                    matrix[row * d + col] = 1.0 / (1.0 + (row + col) as f64);
                }
                matrix[row * (d + 1)] += 2.0;
            }
            let rhs: Vec<f64> = (0..d).map(|k| k as f64 - 1.5).collect();
            let solution = solve_positive_definite(&matrix, d, &rhs);
            for row in 0..d {
                let mut total = 0.0;
                for col in 0..d {
                    total += matrix[row * d + col] * solution[col];
                }
                assert!((total - rhs[row]).abs() < 1e-12);
            }
            let inverse = invert_positive_definite(&matrix, d);
            for row in 0..d {
                for col in 0..d {
                    let mut total = 0.0;
                    for k in 0..d {
                        total += inverse[row * d + k] * matrix[k * d + col];
                    }
                    let want = if row == col { 1.0 } else { 0.0 };
                    assert!((total - want).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn projection_lands_on_the_sphere() {
        let curvature = vec![3.0, 1.0, 1.0, 2.0];
        let projected = project_onto_ball(&[4.0, -3.0], &curvature, 2, 1.0);
        assert!((norm(&projected) - 1.0).abs() < 1e-12);
        assert!(norm(&projected) <= 1.0);
    }

    #[test]
    fn discount_keeps_the_curvature_above_its_start() {
        let mut newton = Newton::new(vec![0.0, 0.0, 0.0, 0.0], 10.0, 0.1, Some(5.0), 0.9);
        for step in 0..500 {
            let x = step as f64 * 0.01;
            newton.step(&[x.sin(), x.cos(), 0.0, 0.0]);
        }
        assert!(newton.curvature[15] >= 10.0 - 1e-12);
        assert!(norm(&newton.theta) <= 5.0);
    }
}
