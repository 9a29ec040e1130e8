//! Page-Hinkley (Page 1954), two-sided with a fading factor, as river 0.26's
//! `drift.PageHinkley` runs it, ported so that the same values give the same detections.
//!
//! Running mean m_t; deviations d_t = x_t − m_t (the mean includes x_t). Two cumulative
//! sums fade by α: U_t = α·U_{t−1} + d_t − δ and L_t = α·L_{t−1} + d_t + δ. A rise is
//! U_t − min U, a fall max L − L_t; past `min_instances` values either one above λ
//! (`threshold`) is an alarm ("up"/"down" test only one). The update after an alarm
//! starts afresh.
//!
//! Arithmetic order: river's, expression for expression (its `stats.Mean` step is
//! `mean += (1 / n) * (x − mean)`; the sums are `(α·S + d) ∓ δ`), so results are
//! identical bit for bit; `tests/adapters/test_native_drift_river.py` checks it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Up,
    Down,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageHinkleyParams {
    pub min_instances: f64,
    pub delta: f64,
    pub threshold: f64,
    pub alpha: f64,
    mode: Mode,
}

impl PageHinkleyParams {
    pub fn new(
        min_instances: f64,
        delta: f64,
        threshold: f64,
        alpha: f64,
        mode: &str,
    ) -> Result<Self, String> {
        let mode = match mode {
            "up" => Mode::Up,
            "down" => Mode::Down,
            "both" => Mode::Both,
            other => {
                return Err(format!(
                    "mode: must be one of 'up', 'down', 'both', got {:?}",
                    other
                ))
            }
        };
        for (name, value) in [
            ("min_instances", min_instances),
            ("delta", delta),
            ("threshold", threshold),
            ("alpha", alpha),
        ] {
            if !value.is_finite() {
                return Err(format!("{}: must be finite, got {}", name, value));
            }
        }
        Ok(PageHinkleyParams {
            min_instances,
            delta,
            threshold,
            alpha,
            mode,
        })
    }
}

/// The running sums, in the order DriftMemory's snapshots store them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sums {
    pub sum_increase: f64,
    pub min_increase: f64,
    pub sum_decrease: f64,
    pub max_decrease: f64,
    pub count: f64,
    pub mean: f64,
}

impl Sums {
    fn fresh() -> Self {
        Sums {
            sum_increase: 0.0,
            min_increase: f64::INFINITY,
            sum_decrease: 0.0,
            max_decrease: -1.0,
            count: 0.0,
            mean: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PageHinkley {
    params: PageHinkleyParams,
    sums: Sums,
    drift_detected: bool,
}

impl PageHinkley {
    pub fn new(params: PageHinkleyParams) -> Self {
        PageHinkley {
            params,
            sums: Sums::fresh(),
            drift_detected: false,
        }
    }

    pub fn update(&mut self, value: f64) -> bool {
        if self.drift_detected {
            self.sums = Sums::fresh();
            self.drift_detected = false;
        }
        let p = &self.params;
        let s = &mut self.sums;
        s.count += 1.0;
        s.mean += (1.0 / s.count) * (value - s.mean);
        let deviation = value - s.mean;
        s.sum_increase = p.alpha * s.sum_increase + deviation - p.delta;
        s.sum_decrease = p.alpha * s.sum_decrease + deviation + p.delta;
        if s.sum_increase < s.min_increase {
            s.min_increase = s.sum_increase;
        }
        if s.sum_decrease > s.max_decrease {
            s.max_decrease = s.sum_decrease;
        }
        if s.count >= p.min_instances {
            let rise = s.sum_increase - s.min_increase;
            let fall = s.max_decrease - s.sum_decrease;
            self.drift_detected = match p.mode {
                Mode::Up => rise > p.threshold,
                Mode::Down => fall > p.threshold,
                Mode::Both => rise > p.threshold || fall > p.threshold,
            };
        }
        self.drift_detected
    }

    /// `update` over `values`; the positions (0-based) where it returned true.
    pub fn update_many(&mut self, values: &[f64]) -> Vec<usize> {
        let mut alarms = Vec::new();
        for (index, &value) in values.iter().enumerate() {
            if self.update(value) {
                alarms.push(index);
            }
        }
        alarms
    }
}

/// Python face: `streamweights._native.PageHinkley`, river's `PageHinkley` verbs.
#[pyclass(name = "PageHinkley", module = "streamweights._native")]
pub struct PyPageHinkley {
    pub(crate) inner: PageHinkley,
}

#[pymethods]
impl PyPageHinkley {
    #[new]
    #[pyo3(signature = (min_instances=30.0, delta=0.005, threshold=50.0, alpha=1.0 - 0.0001, mode="both"))]
    fn new(
        min_instances: f64,
        delta: f64,
        threshold: f64,
        alpha: f64,
        mode: &str,
    ) -> PyResult<Self> {
        PageHinkleyParams::new(min_instances, delta, threshold, alpha, mode)
            .map(|params| PyPageHinkley {
                inner: PageHinkley::new(params),
            })
            .map_err(PyValueError::new_err)
    }

    /// Feed one value; true when it raised an alarm.
    fn update(&mut self, value: f64) -> bool {
        self.inner.update(value)
    }

    /// Feed the values in order; returns the 0-based positions of the alarms.
    fn update_many(&mut self, py: Python<'_>, values: Vec<f64>) -> Vec<usize> {
        let inner = &mut self.inner;
        py.allow_threads(move || inner.update_many(&values))
    }

    #[getter]
    fn drift_detected(&self) -> bool {
        self.inner.drift_detected
    }

    /// Values seen since the last fresh start (river's `_x_mean.n`).
    #[getter]
    fn count(&self) -> f64 {
        self.inner.sums.count
    }

    /// Their running mean (river's `_x_mean.get()`).
    #[getter]
    fn mean(&self) -> f64 {
        self.inner.sums.mean
    }

    /// `(sum_increase, min_increase, sum_decrease, max_decrease, count, mean)`.
    fn sums(&self) -> (f64, f64, f64, f64, f64, f64) {
        let s = self.inner.sums;
        (
            s.sum_increase,
            s.min_increase,
            s.sum_decrease,
            s.max_decrease,
            s.count,
            s.mean,
        )
    }

    /// Restore `sums()` and the alarm flag; checked before anything changes.
    fn load_sums(&mut self, sums: Vec<f64>, drift_detected: bool) -> PyResult<()> {
        if sums.len() != 6 {
            return Err(PyValueError::new_err(format!(
                "Page-Hinkley sums: 6 values expected, got {}",
                sums.len()
            )));
        }
        // min_increase is +inf until the first value; the others are always finite.
        let bad = sums
            .iter()
            .enumerate()
            .any(|(index, v)| v.is_nan() || (index != 1 && v.is_infinite()));
        if bad || sums[4] < 0.0 || sums[4].fract() != 0.0 {
            return Err(PyValueError::new_err(format!(
                "Page-Hinkley sums: not a state this detector writes: {:?}",
                sums
            )));
        }
        self.inner.sums = Sums {
            sum_increase: sums[0],
            min_increase: sums[1],
            sum_decrease: sums[2],
            max_decrease: sums[3],
            count: sums[4],
            mean: sums[5],
        };
        self.inner.drift_detected = drift_detected;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyPageHinkley>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PageHinkleyParams {
        PageHinkleyParams::new(30.0, 0.005, 50.0, 1.0 - 0.0001, "both").unwrap()
    }

    #[test]
    fn a_step_raises_an_alarm_and_the_next_update_starts_afresh() {
        let mut detector = PageHinkley::new(defaults());
        let values: Vec<f64> = (0..2000)
            .map(|i| if i < 1000 { 0.0 } else { 5.0 })
            .collect();
        let alarms = detector.update_many(&values);
        assert!(!alarms.is_empty() && alarms[0] >= 1000 && alarms[0] < 1030);
        detector.drift_detected = true;
        detector.update(1.0);
        assert_eq!(detector.sums.count, 1.0);
        assert_eq!(detector.sums.mean, 1.0);
    }

    #[test]
    fn no_alarm_before_min_instances() {
        let mut detector = PageHinkley::new(defaults());
        let values: Vec<f64> = (0..29).map(|i| f64::from(i) * 100.0).collect();
        assert!(detector.update_many(&values).is_empty());
    }

    #[test]
    fn up_mode_ignores_a_fall() {
        let params = PageHinkleyParams::new(30.0, 0.005, 50.0, 1.0, "up").unwrap();
        let mut detector = PageHinkley::new(params);
        let values: Vec<f64> = (0..2000)
            .map(|i| if i < 1000 { 5.0 } else { 0.0 })
            .collect();
        assert!(detector.update_many(&values).is_empty());
        assert!(PageHinkleyParams::new(30.0, 0.005, 50.0, 1.0, "sideways").is_err());
    }
}
