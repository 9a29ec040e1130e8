//! RiseEvidence: a Shiryaev-Roberts e-detector over betting e-values, the evidence that a
//! non-negative loss rose above its own lagged baseline (see
//! `streamweights/adapters/drift_evidence.py` for the argument and the parameters).
//!
//! Arithmetic order: the Python reference's (`tests/reference/drift_evidence.py`),
//! operation for operation: each bet `min((1 + c·r)·(R + 1), CAP)`, the five statistics
//! summed left to right and divided by 5, the baseline's moments by Welford's update and
//! `m = (1 + margin)·mean + max(3·sqrt(S/(n − 1)/n), min_rise)`. Python's `min`/`max`
//! keep the first argument unless the second is strictly smaller/larger; so do these.
//! Results are identical bit for bit.

use std::collections::VecDeque;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Bets as fractions of the largest allowed one (1/m).
pub const BET_FRACTIONS: [f64; 5] = [0.02, 0.05, 0.15, 0.3, 0.5];

/// Cap on each statistic (never overflows to inf; capping only lowers R).
const CAP: f64 = 1e200;

#[derive(Clone, Debug)]
pub struct RiseEvidence {
    margin: f64,
    warmup: i64,
    lag: usize,
    min_rise: f64,
    threshold: f64,
    count: i64,
    mean: f64,
    squares: f64,
    recent: VecDeque<f64>,
    statistics: [f64; 5],
    baseline: Option<f64>,
}

impl RiseEvidence {
    pub fn new(significance: f64, margin: f64, warmup: i64, lag: usize, min_rise: f64) -> Self {
        let mut evidence = RiseEvidence {
            margin,
            warmup,
            lag,
            min_rise,
            threshold: 1.0 / significance,
            count: 0,
            mean: 0.0,
            squares: 0.0,
            recent: VecDeque::new(),
            statistics: [0.0; 5],
            baseline: None,
        };
        evidence.reset();
        evidence
    }

    /// Forget the statistic and the baseline (after a reaction: a new concept).
    pub fn reset(&mut self) {
        self.count = 0;
        self.mean = 0.0;
        self.squares = 0.0;
        self.recent.clear();
        self.statistics = [0.0; 5];
        self.refresh_baseline();
    }

    fn refresh_baseline(&mut self) {
        if self.count < self.warmup {
            self.baseline = None;
            return;
        }
        let count = self.count as f64;
        let spread = (self.squares / (count - 1.0) / count).sqrt();
        let three = 3.0 * spread;
        let floor = if self.min_rise > three {
            self.min_rise
        } else {
            three
        };
        self.baseline = Some((1.0 + self.margin) * self.mean + floor);
    }

    /// The current evidence R_t (mean of the bets' statistics, summed left to right).
    pub fn statistic(&self) -> f64 {
        let mut total = 0.0;
        for statistic in self.statistics.iter() {
            total += *statistic;
        }
        total / self.statistics.len() as f64
    }

    /// Feed one loss (the caller checked it is finite and >= 0); return whether the
    /// evidence is at its alarm level now.
    pub fn update(&mut self, value: f64) -> bool {
        let mut alarm = false;
        if let Some(baseline) = self.baseline {
            let relative = (value - baseline) / baseline;
            for (statistic, fraction) in self.statistics.iter_mut().zip(BET_FRACTIONS.iter()) {
                let grown = (1.0 + fraction * relative) * (*statistic + 1.0);
                *statistic = if CAP < grown { CAP } else { grown };
            }
            alarm = self.statistic() >= self.threshold;
        }
        self.recent.push_back(value);
        if self.recent.len() <= self.lag {
            return alarm;
        }
        let value = self.recent.pop_front().unwrap_or(0.0);
        let count = self.count + 1;
        let delta = value - self.mean;
        self.mean += delta / count as f64;
        self.squares += delta * (value - self.mean);
        self.count = count;
        self.refresh_baseline();
        alarm
    }

    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    #[allow(clippy::type_complexity)]
    pub fn state(&self) -> (i64, f64, f64, Vec<f64>, Vec<f64>) {
        (
            self.count,
            self.mean,
            self.squares,
            self.recent.iter().copied().collect(),
            self.statistics.to_vec(),
        )
    }

    pub fn set_state(
        &mut self,
        count: i64,
        mean: f64,
        squares: f64,
        recent: Vec<f64>,
        statistics: &[f64],
    ) -> Result<(), String> {
        if statistics.len() != BET_FRACTIONS.len() {
            return Err(format!(
                "state.evidence.statistics: expected {} values, got {}",
                BET_FRACTIONS.len(),
                statistics.len()
            ));
        }
        self.statistics.copy_from_slice(statistics);
        self.count = count;
        self.mean = mean;
        self.squares = squares;
        self.recent = recent.into_iter().collect();
        self.refresh_baseline();
        Ok(())
    }
}

/// The core of `streamweights.adapters.drift_evidence.RiseEvidence` (validation there).
#[pyclass(name = "RiseEvidence", module = "streamweights._native")]
pub struct PyRiseEvidence {
    pub(crate) inner: RiseEvidence,
}

#[pymethods]
impl PyRiseEvidence {
    #[new]
    fn new(significance: f64, margin: f64, warmup: i64, lag: usize, min_rise: f64) -> Self {
        PyRiseEvidence {
            inner: RiseEvidence::new(significance, margin, warmup, lag, min_rise),
        }
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    /// Feed one loss; refuses anything but a finite number >= 0 (state untouched).
    fn update(&mut self, value: f64) -> PyResult<bool> {
        if !(0.0..f64::INFINITY).contains(&value) {
            return Err(PyValueError::new_err(
                "loss: must be a finite number >= 0".to_string(),
            ));
        }
        Ok(self.inner.update(value))
    }

    /// Feed several losses; the alarm flag after each (as a loop of `update`). Checks all
    /// first, so a bad value leaves the state untouched.
    fn update_many(&mut self, values: Vec<f64>) -> PyResult<Vec<bool>> {
        if let Some(index) = values
            .iter()
            .position(|v| !(0.0..f64::INFINITY).contains(v))
        {
            return Err(PyValueError::new_err(format!(
                "losses[{}]: must be a finite number >= 0, got {}",
                index, values[index]
            )));
        }
        Ok(values.into_iter().map(|v| self.inner.update(v)).collect())
    }

    #[getter]
    fn statistic(&self) -> f64 {
        self.inner.statistic()
    }

    #[getter]
    fn baseline(&self) -> Option<f64> {
        self.inner.baseline()
    }

    #[allow(clippy::type_complexity)]
    fn get_state(&self) -> (i64, f64, f64, Vec<f64>, Vec<f64>) {
        self.inner.state()
    }

    fn set_state(
        &mut self,
        count: i64,
        mean: f64,
        squares: f64,
        recent: Vec<f64>,
        statistics: Vec<f64>,
    ) -> PyResult<()> {
        self.inner
            .set_state(count, mean, squares, recent, &statistics)
            .map_err(PyValueError::new_err)
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyRiseEvidence>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_after_a_rise_and_not_before() {
        let mut evidence = RiseEvidence::new(1e-5, 0.1, 200, 500, 0.005);
        let mut alarms = Vec::new();
        for t in 0..6000u32 {
            let rate = if t < 3000 { 10 } else { 2 };
            let x = if t % rate == 0 { 1.0 } else { 0.0 };
            if evidence.update(x) {
                alarms.push(t);
            }
        }
        assert!(!alarms.is_empty());
        assert!(alarms[0] >= 3000);
    }

    #[test]
    fn state_round_trip_continues_bit_for_bit() {
        let mut a = RiseEvidence::new(1e-5, 0.1, 20, 50, 0.005);
        for t in 0..500u32 {
            a.update(f64::from(t % 7) / 7.0);
        }
        let (count, mean, squares, recent, statistics) = a.state();
        let mut b = RiseEvidence::new(1e-5, 0.1, 20, 50, 0.005);
        b.set_state(count, mean, squares, recent, &statistics)
            .unwrap();
        for t in 0..500u32 {
            let x = f64::from(t % 5) / 3.0;
            assert_eq!(a.update(x), b.update(x));
            assert_eq!(a.statistic().to_bits(), b.statistic().to_bits());
        }
        assert!(b.set_state(0, 0.0, 0.0, vec![], &[0.0]).is_err());
    }
}
