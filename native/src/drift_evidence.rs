//! RiseEvidence: a Shiryaev-Roberts e-detector over betting e-values, the evidence that a
//! non-negative loss rose above its own lagged baseline (see
//! `streamweights/adapters/drift_evidence.py` for the argument and the parameters).
//!
//! Arithmetic order: the Python reference's (`tests/reference/drift_evidence.py`),
//! operation for operation: each bet `min((1 + c·r)·(R + 1), CAP)`, the five statistics
//! summed left to right and divided by 5, the baseline's moments by Welford's update and
//! `m = (1 + margin)·mean + max(3·sqrt(S/(n − 1)/n), min_rise)`. Python's `min`/`max`
//! keep the first argument unless the second is strictly smaller/larger; so do these.
//! The dependence measure (successive differences at block lengths 1-256, pooled across
//! resets) follows the reference's `_measure_dependence` / `_pool_dependence` in the same
//! order: per length `ratio = B·spread/variance`, at length 1 `(1 + r)/(1 − r)` with
//! `r = 1 − ratio`, `excess = spread − short·variance/B`; the evidence block's length
//! `ceil(2·(v − 1)) + 1`. Results are identical bit for bit.

use std::collections::VecDeque;

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::arrays;
use crate::expert_losses::read_flat;

/// Bets as fractions of the largest allowed one (1/m).
pub const BET_FRACTIONS: [f64; 5] = [0.02, 0.05, 0.15, 0.3, 0.5];

/// Cap on each statistic (never overflows to inf; capping only lowers R).
const CAP: f64 = 1e200;

/// Block lengths whose successive differences measure the loss's dependence (1: the
/// lag-1 autocorrelation; 4-256: batch means).
const SCALES: [f64; 5] = [1.0, 4.0, 16.0, 64.0, 256.0];
/// Degrees of freedom (pooled blocks − segments) a length needs before it counts.
const MIN_FREEDOM: f64 = 9.0;
/// A length counts only if its variance ratio exceeds 1 by this many standard errors.
const SIGNIFICANCE: f64 = 3.0;
/// The lag-1 autocorrelation's AR(1) extrapolation stops here (v <= 1,999).
const MAX_CORRELATION: f64 = 0.999;
/// The wander (local mean's own spread) is measured at block lengths from this one.
const WANDER_SCALE: f64 = 16.0;
/// The baseline's allowance for the wander, in its standard deviations.
const WANDER_SPREADS: f64 = 2.0;
/// The dependence state: the values' pooled squares and degrees of freedom, then per
/// block length [partial sum, partial count, blocks, previous block's mean, half the
/// summed squared successive differences, pooled such sum, pooled degrees of freedom],
/// then the evidence's own block [sum, count, length].
const EVIDENCE_BLOCK: usize = 2 + 7 * 5;
pub const DEPENDENCE_VALUES: usize = EVIDENCE_BLOCK + 3;
/// Evidence bets on the means of blocks of 1 + ceil(BLOCK_FACTOR · (v − 1)) values.
const BLOCK_FACTOR: f64 = 2.0;
/// The longest evidence block.
const MAX_BLOCK: f64 = 512.0;

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
    dependence: [f64; DEPENDENCE_VALUES],
    inflation: f64,
    wander: f64,
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
            dependence: [0.0; DEPENDENCE_VALUES],
            inflation: 1.0,
            wander: 0.0,
        };
        evidence.reset();
        evidence
    }

    /// Forget the statistic and the baseline (after a reaction: a new concept); the
    /// dependence measured so far is kept (pooled).
    pub fn reset(&mut self) {
        self.pool_dependence();
        self.count = 0;
        self.mean = 0.0;
        self.squares = 0.0;
        self.recent.clear();
        self.statistics = [0.0; 5];
        self.dependence[EVIDENCE_BLOCK] = 0.0;
        self.dependence[EVIDENCE_BLOCK + 1] = 0.0;
        self.dependence[EVIDENCE_BLOCK + 2] = 1.0;
        self.refresh_baseline();
    }

    /// Move the finished segment's sums of squares (values and complete blocks) into the
    /// pooled ones and start new blocks.
    fn pool_dependence(&mut self) {
        let state = &mut self.dependence;
        if self.count >= 2 {
            state[0] += self.squares;
            state[1] += self.count as f64 - 1.0;
        }
        for j in 0..SCALES.len() {
            let block = 2 + 7 * j;
            if state[block + 2] >= 2.0 {
                state[block + 5] += state[block + 4];
                state[block + 6] += state[block + 2] - 1.0;
            }
            for k in 0..5 {
                state[block + k] = 0.0;
            }
        }
    }

    /// The variance-inflation factor v and the wander from the pooled block means.
    fn measure_dependence(&mut self) {
        self.inflation = 1.0;
        self.wander = 0.0;
        let state = &self.dependence;
        // The inflation the lag-1 autocorrelation alone explains.
        let mut short = 1.0;
        let freedom = state[1] + (self.count as f64 - 1.0);
        if freedom <= 0.0 {
            return;
        }
        let variance = (state[0] + self.squares) / freedom;
        if variance <= 0.0 {
            return;
        }
        for (j, scale) in SCALES.iter().enumerate() {
            let block = 2 + 7 * j;
            let blocks = state[block + 6] + (state[block + 2] - 1.0);
            if blocks < MIN_FREEDOM {
                continue;
            }
            let mut squares = state[block + 5];
            if state[block + 2] >= 2.0 {
                squares += state[block + 4];
            }
            let spread = squares / blocks;
            let ratio = scale * spread / variance;
            if *scale == 1.0 {
                // Successive values: the lag-1 autocorrelation, extrapolated as an AR(1).
                let mut correlation = 1.0 - ratio;
                if correlation <= SIGNIFICANCE * (1.0 / blocks).sqrt() {
                    continue;
                }
                if correlation > MAX_CORRELATION {
                    correlation = MAX_CORRELATION;
                }
                short = (1.0 + correlation) / (1.0 - correlation);
                if short > self.inflation {
                    self.inflation = short;
                }
                continue;
            }
            if ratio - 1.0 <= SIGNIFICANCE * (2.0 / blocks).sqrt() {
                continue;
            }
            if ratio > self.inflation {
                self.inflation = ratio;
            }
            let excess = spread - short * variance / scale;
            if *scale >= WANDER_SCALE && excess > 0.0 {
                let wander = excess.sqrt();
                if wander > self.wander {
                    self.wander = wander;
                }
            }
        }
    }

    fn refresh_baseline(&mut self) {
        self.measure_dependence();
        if self.count < self.warmup || (self.count as f64) < self.warmup as f64 * self.inflation {
            self.baseline = None;
            return;
        }
        let count = self.count as f64;
        let variance = self.squares / (count - 1.0);
        let spread = (self.inflation * variance / count).sqrt();
        let three = 3.0 * spread;
        let floor = if self.min_rise > three {
            self.min_rise
        } else {
            three
        };
        let baseline = (1.0 + self.margin) * self.mean + floor + WANDER_SPREADS * self.wander;
        self.baseline = Some(baseline);
    }

    /// The variance-inflation factor v of the baseline's values (1: independent).
    pub fn inflation(&self) -> f64 {
        self.inflation
    }

    /// The standard deviation of the loss's local mean beyond sampling noise.
    pub fn wander(&self) -> f64 {
        self.wander
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
            // Bets on the mean of a block of values (one value while they look independent).
            let block = EVIDENCE_BLOCK;
            self.dependence[block] += value;
            self.dependence[block + 1] += 1.0;
            if self.dependence[block + 1] >= self.dependence[block + 2] {
                let mean = self.dependence[block] / self.dependence[block + 1];
                let relative = (mean - baseline) / baseline;
                for (statistic, fraction) in self.statistics.iter_mut().zip(BET_FRACTIONS.iter()) {
                    let grown = (1.0 + fraction * relative) * (*statistic + 1.0);
                    *statistic = if CAP < grown { CAP } else { grown };
                }
                alarm = self.statistic() >= self.threshold;
                let length = (BLOCK_FACTOR * (self.inflation - 1.0)).ceil() + 1.0;
                self.dependence[block] = 0.0;
                self.dependence[block + 1] = 0.0;
                self.dependence[block + 2] = if length > MAX_BLOCK {
                    MAX_BLOCK
                } else {
                    length
                };
            }
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
        let state = &mut self.dependence;
        for (j, scale) in SCALES.iter().enumerate() {
            let block = 2 + 7 * j;
            state[block] += value;
            state[block + 1] += 1.0;
            if state[block + 1] == *scale {
                let mean = state[block] / scale;
                if state[block + 2] >= 1.0 {
                    let difference = mean - state[block + 3];
                    state[block + 4] += 0.5 * difference * difference;
                }
                state[block + 3] = mean;
                state[block + 2] += 1.0;
                state[block] = 0.0;
                state[block + 1] = 0.0;
            }
        }
        self.refresh_baseline();
        alarm
    }

    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    #[allow(clippy::type_complexity)]
    pub fn state(&self) -> (i64, f64, f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        (
            self.count,
            self.mean,
            self.squares,
            self.recent.iter().copied().collect(),
            self.statistics.to_vec(),
            self.dependence.to_vec(),
        )
    }

    /// Load a state; `dependence` `None` (a snapshot from before the dependence measure)
    /// starts it afresh.
    pub fn set_state(
        &mut self,
        count: i64,
        mean: f64,
        squares: f64,
        recent: Vec<f64>,
        statistics: &[f64],
        dependence: Option<&[f64]>,
    ) -> Result<(), String> {
        if statistics.len() != BET_FRACTIONS.len() {
            return Err(format!(
                "state.evidence.statistics: expected {} values, got {}",
                BET_FRACTIONS.len(),
                statistics.len()
            ));
        }
        if let Some(values) = dependence {
            if values.len() != DEPENDENCE_VALUES {
                return Err(format!(
                    "state.evidence.dependence: expected {} values, got {}",
                    DEPENDENCE_VALUES,
                    values.len()
                ));
            }
        }
        match dependence {
            Some(values) => self.dependence.copy_from_slice(values),
            None => {
                self.dependence = [0.0; DEPENDENCE_VALUES];
                self.dependence[EVIDENCE_BLOCK + 2] = 1.0;
            }
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
    pub(crate) fn update(&mut self, value: f64) -> PyResult<bool> {
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

    #[getter]
    fn inflation(&self) -> f64 {
        self.inner.inflation()
    }

    #[getter]
    fn wander(&self) -> f64 {
        self.inner.wander()
    }

    /// `(count, mean, squares, recent, statistics, dependence)`: the two windows as
    /// float64 arrays (a snapshot packs an array's bytes as they are; a list of 500
    /// floats was 500 Python objects made and then read back), the five statistics as
    /// floats.
    #[allow(clippy::type_complexity)]
    fn get_state<'py>(
        &self,
        py: Python<'py>,
    ) -> (
        i64,
        f64,
        f64,
        Bound<'py, PyArray1<f64>>,
        Vec<f64>,
        Bound<'py, PyArray1<f64>>,
    ) {
        let (count, mean, squares, recent, statistics, dependence) = self.inner.state();
        (
            count,
            mean,
            squares,
            arrays::vector(py, &recent),
            statistics,
            arrays::vector(py, &dependence),
        )
    }

    #[pyo3(signature = (count, mean, squares, recent, statistics, dependence=None))]
    fn set_state(
        &mut self,
        count: i64,
        mean: f64,
        squares: f64,
        recent: &Bound<'_, PyAny>,
        statistics: Vec<f64>,
        dependence: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = recent.py();
        let dependence = dependence.map(|values| read_flat(py, values)).transpose()?;
        self.inner
            .set_state(
                count,
                mean,
                squares,
                read_flat(py, recent)?,
                &statistics,
                dependence.as_deref(),
            )
            .map_err(PyValueError::new_err)
    }
}

/// `-ln(min(max(p, clip), 1))`, the comparisons made as Python's `min` / `max` make them
/// (a NaN stays NaN, and the evidence refuses it): a stage's log-loss on one label.
pub(crate) fn clipped_log_loss(probability: f64, clip: f64) -> f64 {
    let floored = if clip > probability {
        clip
    } else {
        probability
    };
    let clipped = if 1.0 < floored { 1.0 } else { floored };
    -clipped.ln()
}

/// A stream's per-stage evidence on one label, in one call: for each pair in order,
/// `evidence.update(-ln(min(max(output[label], clip), 1)))` (the comparisons as
/// Python's `min` / `max` make them), `output` a float64 array or a list. The same
/// losses and updates as that Python loop, bit for bit.
#[pyfunction]
fn update_log_losses(
    py: Python<'_>,
    evidence: &Bound<'_, PyList>,
    outputs: &Bound<'_, PyList>,
    label: usize,
    clip: f64,
) -> PyResult<()> {
    if evidence.len() != outputs.len() {
        return Err(PyValueError::new_err(format!(
            "outputs: {} for {} evidence statistics",
            outputs.len(),
            evidence.len()
        )));
    }
    for (core, output) in evidence.iter().zip(outputs.iter()) {
        let values = read_flat(py, &output)?;
        let probability = match values.get(label) {
            Some(&value) => value,
            None => {
                return Err(PyValueError::new_err(format!(
                    "label: class {label} is outside 0..{}",
                    values.len()
                )))
            }
        };
        core.downcast::<PyRiseEvidence>()?
            .borrow_mut()
            .update(clipped_log_loss(probability, clip))?;
    }
    Ok(())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyRiseEvidence>()?;
    module.add_function(wrap_pyfunction!(update_log_losses, module)?)?;
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
        let (count, mean, squares, recent, statistics, dependence) = a.state();
        let mut b = RiseEvidence::new(1e-5, 0.1, 20, 50, 0.005);
        b.set_state(count, mean, squares, recent, &statistics, Some(&dependence))
            .unwrap();
        for t in 0..500u32 {
            let x = f64::from(t % 5) / 3.0;
            assert_eq!(a.update(x), b.update(x));
            assert_eq!(a.statistic().to_bits(), b.statistic().to_bits());
        }
        assert!(b.set_state(0, 0.0, 0.0, vec![], &[0.0], None).is_err());
        assert!(b
            .set_state(0, 0.0, 0.0, vec![], &[0.0; 5], Some(&[0.0; 3]))
            .is_err());
    }

    /// A 0/1 loss that repeats the previous one with probability rho (xorshift draws).
    fn persistent_losses(n: usize, rho: f64, rate: f64) -> Vec<f64> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut draw = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut values = Vec::with_capacity(n);
        let mut previous = 0.0;
        for _ in 0..n {
            let keep = draw() < rho;
            let fresh = if draw() < rate { 1.0 } else { 0.0 };
            previous = if keep { previous } else { fresh };
            values.push(previous);
        }
        values
    }

    #[test]
    fn dependent_losses_inflate_and_do_not_alarm() {
        let mut evidence = RiseEvidence::new(1e-5, 0.1, 200, 500, 0.005);
        let mut alarms = 0;
        for value in persistent_losses(60_000, 0.9, 0.1) {
            if evidence.update(value) {
                alarms += 1;
                evidence.reset();
            }
        }
        assert_eq!(alarms, 0);
        assert!(evidence.inflation() > 5.0, "{}", evidence.inflation());
        // An AR(1) chain: its block means add nothing beyond what the lag-1 correlation
        // explains, so (almost) no wander allowance.
        assert!(evidence.wander() < 0.05, "{}", evidence.wander());
        // A reset keeps the measured dependence (pooled), so the next baseline waits
        // for count / v >= warmup.
        evidence.reset();
        for value in persistent_losses(300, 0.9, 0.1) {
            evidence.update(value);
        }
        assert!(evidence.inflation() > 5.0);
        assert!(evidence.baseline().is_none());
    }
}
