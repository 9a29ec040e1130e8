//! Prequential (test-then-train) scores, one forecaster at a time: running sums of
//! log-loss, Brier score, accuracy and 15-bin top-label ECE (Guo et al. 2017) for
//! classification, squared and absolute error for regression.
//!
//! Python's `streamweights.scoring` re-exports these classes; `tests/reference/scoring.py`
//! keeps the plain-Python version they are checked against. Sums run left to right over
//! the classes (the Python version summed squares with `math.fsum`: the Brier sums can
//! differ from it in the last bits).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// Probabilities are floored here inside the log-loss: a confident miss costs
/// -ln(1e-6) ~ 13.8 nats instead of infinity.
pub const PROBABILITY_FLOOR: f64 = 1e-6;
/// Equal-width confidence bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// Reads a float vector from a list (fast path) or anything with `tolist()` (numpy).
pub fn float_vector(value: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Ok(list) = value.downcast::<PyList>() {
        return list.extract();
    }
    if value.hasattr("tolist")? {
        return value.call_method0("tolist")?.extract();
    }
    value.extract()
}

/// Running classification scores of one forecaster (plain Rust; see `ClassificationScore`).
#[derive(Clone, Debug, Default)]
pub struct ClassificationSums {
    pub count: u64,
    pub log_loss_sum: f64,
    pub brier_sum: f64,
    pub correct: u64,
    /// Per bin: events, summed confidence, hits.
    pub bins: [[f64; 3]; ECE_BINS],
}

impl ClassificationSums {
    /// Scores one probability vector against its label; returns the event's log-loss.
    /// The caller guarantees `label < proba.len()` and a non-empty vector.
    pub fn update(&mut self, proba: &[f64], label: usize) -> f64 {
        let chance = proba[label];
        let loss = -chance.max(PROBABILITY_FLOOR).ln();
        // first index of the largest value, as Python's `values.index(max(values))`
        let mut top = 0;
        let mut confidence = proba[0];
        let mut squares = 0.0;
        for (k, &v) in proba.iter().enumerate() {
            if v > confidence {
                confidence = v;
                top = k;
            }
            squares += v * v;
        }
        let hit = top == label;
        self.count += 1;
        self.log_loss_sum += loss;
        self.brier_sum += squares - 2.0 * chance + 1.0;
        self.correct += u64::from(hit);
        let index = ((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        let bin = &mut self.bins[index];
        bin[0] += 1.0;
        bin[1] += confidence;
        bin[2] += if hit { 1.0 } else { 0.0 };
        loss
    }

    /// Mean log-loss, Brier, accuracy and ECE over every event so far.
    pub fn means(&self) -> (f64, f64, f64, f64) {
        let n = self.count.max(1) as f64;
        let gap: f64 = self.bins.iter().map(|b| (b[1] - b[2]).abs()).sum();
        (
            self.log_loss_sum / n,
            self.brier_sum / n,
            self.correct as f64 / n,
            gap / n,
        )
    }
}

/// Running log-loss, Brier, accuracy and top-label ECE of one forecaster.
#[pyclass(module = "streamweights._native")]
#[derive(Clone, Default)]
pub struct ClassificationScore {
    pub sums: ClassificationSums,
}

#[pymethods]
impl ClassificationScore {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Score one prediction (probabilities, a list or array) on its label; return its
    /// log-loss.
    fn update(&mut self, proba: &Bound<'_, PyAny>, label: i64) -> PyResult<f64> {
        let values = float_vector(proba)?;
        if label < 0 || label as usize >= values.len() {
            return Err(PyValueError::new_err(format!(
                "label: class {label} is outside 0..{}",
                values.len()
            )));
        }
        Ok(self.sums.update(&values, label as usize))
    }

    #[getter]
    fn count(&self) -> u64 {
        self.sums.count
    }
    #[getter]
    fn log_loss_sum(&self) -> f64 {
        self.sums.log_loss_sum
    }
    #[getter]
    fn brier_sum(&self) -> f64 {
        self.sums.brier_sum
    }
    #[getter]
    fn correct(&self) -> u64 {
        self.sums.correct
    }

    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (log_loss, brier, accuracy, ece) = self.sums.means();
        let out = PyDict::new(py);
        out.set_item("count", self.sums.count)?;
        out.set_item("log_loss", log_loss)?;
        out.set_item("brier", brier)?;
        out.set_item("accuracy", accuracy)?;
        out.set_item("ece", ece)?;
        Ok(out)
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("count", self.sums.count)?;
        out.set_item("log_loss_sum", self.sums.log_loss_sum)?;
        out.set_item("brier_sum", self.sums.brier_sum)?;
        out.set_item("correct", self.sums.correct)?;
        let bins: Vec<Vec<f64>> = self.sums.bins.iter().map(|b| b.to_vec()).collect();
        out.set_item("bins", bins)?;
        Ok(out)
    }

    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let bins: Vec<Vec<f64>> = state.get_item("bins")?.extract()?;
        if bins.len() != ECE_BINS || bins.iter().any(|b| b.len() != 3) {
            return Err(PyValueError::new_err(format!(
                "scores.bins: expected {ECE_BINS} bins of 3 numbers"
            )));
        }
        let mut sums = ClassificationSums {
            count: state.get_item("count")?.extract()?,
            log_loss_sum: state.get_item("log_loss_sum")?.extract()?,
            brier_sum: state.get_item("brier_sum")?.extract()?,
            correct: state.get_item("correct")?.extract()?,
            ..ClassificationSums::default()
        };
        for (slot, saved) in sums.bins.iter_mut().zip(bins) {
            slot.copy_from_slice(&saved);
        }
        self.sums = sums;
        Ok(())
    }
}

/// Running squared and absolute error of one forecaster (plain Rust).
#[derive(Clone, Debug, Default)]
pub struct RegressionSums {
    pub count: u64,
    pub squared_sum: f64,
    pub absolute_sum: f64,
}

impl RegressionSums {
    /// Scores one value against its target; returns the squared error.
    pub fn update(&mut self, value: f64, target: f64) -> f64 {
        let error = value - target;
        self.count += 1;
        self.squared_sum += error * error;
        self.absolute_sum += error.abs();
        error * error
    }
}

/// Running mean squared and mean absolute error of one forecaster.
#[pyclass(module = "streamweights._native")]
#[derive(Clone, Default)]
pub struct RegressionScore {
    pub sums: RegressionSums,
}

#[pymethods]
impl RegressionScore {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Score one prediction; return its squared error.
    fn update(&mut self, value: f64, target: f64) -> f64 {
        self.sums.update(value, target)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.sums.count
    }
    #[getter]
    fn squared_sum(&self) -> f64 {
        self.sums.squared_sum
    }
    #[getter]
    fn absolute_sum(&self) -> f64 {
        self.sums.absolute_sum
    }

    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let n = self.sums.count.max(1) as f64;
        let out = PyDict::new(py);
        out.set_item("count", self.sums.count)?;
        out.set_item("mse", self.sums.squared_sum / n)?;
        out.set_item("mae", self.sums.absolute_sum / n)?;
        Ok(out)
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("count", self.sums.count)?;
        out.set_item("squared_sum", self.sums.squared_sum)?;
        out.set_item("absolute_sum", self.sums.absolute_sum)?;
        Ok(out)
    }

    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.sums = RegressionSums {
            count: state.get_item("count")?.extract()?,
            squared_sum: state.get_item("squared_sum")?.extract()?,
            absolute_sum: state.get_item("absolute_sum")?.extract()?,
        };
        Ok(())
    }
}

/// `scores[i].update(rows[i], label)` for every `i` in order, in one call (a stream
/// scores each deployed model and the served output on every label). The same numbers
/// and errors as the calls one by one; a length mismatch is refused before any update.
#[pyfunction]
fn update_classification_scores(
    scores: &Bound<'_, PyList>,
    rows: &Bound<'_, PyList>,
    label: i64,
) -> PyResult<()> {
    if scores.len() != rows.len() {
        return Err(PyValueError::new_err(format!(
            "rows: {} forecasts for {} scores",
            rows.len(),
            scores.len()
        )));
    }
    for (score, row) in scores.iter().zip(rows.iter()) {
        score
            .downcast::<ClassificationScore>()?
            .borrow_mut()
            .update(&row, label)?;
    }
    Ok(())
}

/// `scores[i].update(values[i], target)` for every `i` in order, in one call.
#[pyfunction]
fn update_regression_scores(
    scores: &Bound<'_, PyList>,
    values: Vec<f64>,
    target: f64,
) -> PyResult<()> {
    if scores.len() != values.len() {
        return Err(PyValueError::new_err(format!(
            "values: {} forecasts for {} scores",
            values.len(),
            scores.len()
        )));
    }
    for (score, value) in scores.iter().zip(values) {
        score
            .downcast::<RegressionScore>()?
            .borrow_mut()
            .update(value, target);
    }
    Ok(())
}

/// Adds the score classes and constants to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ClassificationScore>()?;
    module.add_class::<RegressionScore>()?;
    module.add_function(wrap_pyfunction!(update_classification_scores, module)?)?;
    module.add_function(wrap_pyfunction!(update_regression_scores, module)?)?;
    module.add("PROBABILITY_FLOOR", PROBABILITY_FLOOR)?;
    module.add("ECE_BINS", ECE_BINS)?;
    Ok(())
}
