//! Calibeating's bin records (tracking and hedging) and its seeded generator.
//!
//! The base calibrator is another handle (a native core or any Python adapter): the
//! Python adapter hands this core the base's class-1 probability `q` of each event. The
//! hedging choice draws from numpy's PCG64 (`Generator.random`), reimplemented here so
//! that a snapshot written by the numpy version continues bit for bit: the 128-bit LCG
//! step, then the XSL-RR output, then `(next >> 11) * 2^-53`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

const PCG_MULTIPLIER: u128 = 0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645;

/// numpy's PCG64 bit generator (the part `Generator.random` uses).
#[derive(Clone, Debug)]
pub struct Pcg64 {
    pub state: u128,
    pub increment: u128,
}

impl Pcg64 {
    pub fn next_u64(&mut self) -> u64 {
        self.state = self
            .state
            .wrapping_mul(PCG_MULTIPLIER)
            .wrapping_add(self.increment);
        let high = (self.state >> 64) as u64;
        let low = self.state as u64;
        (high ^ low).rotate_right((self.state >> 122) as u32)
    }

    /// A uniform double in `[0, 1)`, as numpy's `Generator.random()`.
    pub fn next_double(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// Calibeating's records (plain Rust). Tracking: per base bin, outcomes and ones.
/// Hedging: per base bin and output interval, outcomes and ones when it was played.
#[derive(Clone, Debug)]
pub struct Records {
    pub hedging: bool,
    pub n_bins: usize,
    pub counts: Vec<i64>,
    pub ones: Vec<i64>,
    pub midpoints: Vec<f64>,
    pub random: Pcg64,
    pub uniform: f64,
}

impl Records {
    pub fn new(hedging: bool, n_bins: usize, random: Pcg64, uniform: f64) -> Self {
        let size = if hedging { n_bins * n_bins } else { n_bins };
        Records {
            hedging,
            n_bins,
            counts: vec![0; size],
            ones: vec![0; size],
            midpoints: (0..n_bins)
                .map(|index| (index as f64 + 0.5) / n_bins as f64)
                .collect(),
            random,
            uniform,
        }
    }

    pub fn reset(&mut self) {
        for value in self.counts.iter_mut().chain(self.ones.iter_mut()) {
            *value = 0;
        }
    }

    /// The base bin of `q`: `min(max(int(q * n), 0), n - 1)` (truncation towards zero).
    pub fn bin(&self, q: f64) -> usize {
        let raw = (q * self.n_bins as f64) as i64;
        raw.max(0).min(self.n_bins as i64 - 1) as usize
    }

    /// Class-1 forecast for a base output `q`, from the records; changes nothing.
    pub fn forecast(&self, q: f64) -> f64 {
        let base_bin = self.bin(q);
        if !self.hedging {
            return (self.ones[base_bin] as f64 + self.midpoints[base_bin])
                / (self.counts[base_bin] + 1) as f64;
        }
        self.midpoints[self.hedged_interval(base_bin)]
    }

    /// Foster's choice of output interval in base bin `base_bin` (uses `uniform`); exact
    /// integer comparisons, as the reference.
    fn hedged_interval(&self, base_bin: usize) -> usize {
        let m = self.n_bins;
        let start = base_bin * m;
        let counts = &self.counts[start..start + m];
        let ones = &self.ones[start..start + m];
        let mi = m as i64;
        let consistent = |i: usize| {
            let (n, k, index) = (counts[i], ones[i], i as i64);
            n == 0 || (index * n <= k * mi && k * mi <= (index + 1) * n)
        };
        if consistent(base_bin) {
            return base_bin;
        }
        if let Some(i) = (0..m).find(|&i| consistent(i)) {
            return i;
        }
        // No interval is consistent: the first j whose mean is below it, and j - 1 above.
        let j = (1..m)
            .find(|&i| ones[i] * mi < i as i64 * counts[i])
            .unwrap_or(m - 1);
        let below = j as f64 / m as f64 - ones[j] as f64 / counts[j] as f64;
        let above = ones[j - 1] as f64 / counts[j - 1] as f64 - j as f64 / m as f64;
        if self.uniform < below / (below + above) {
            j - 1
        } else {
            j
        }
    }

    /// Record the outcome of an event whose base output was `q`.
    pub fn record(&mut self, q: f64, label: i64) {
        let base_bin = self.bin(q);
        if !self.hedging {
            self.counts[base_bin] += 1;
            self.ones[base_bin] += label;
            return;
        }
        let index = base_bin * self.n_bins + self.hedged_interval(base_bin);
        self.counts[index] += 1;
        self.ones[index] += label;
        self.uniform = self.random.next_double();
    }
}

/// Python handle of [`Records`].
#[pyclass(module = "streamweights._native", name = "CalibeatingCore")]
pub struct CalibeatingCore {
    pub(crate) inner: Records,
}

fn parse_u128(text: &str, name: &str) -> PyResult<u128> {
    text.parse::<u128>().map_err(|_| {
        PyValueError::new_err(format!(
            "state: random.{}: not a 128-bit unsigned integer: {:?}",
            name, text
        ))
    })
}

#[pymethods]
impl CalibeatingCore {
    /// `random_state` / `random_increment`: PCG64's state and increment as decimal text.
    #[new]
    fn py_new(
        hedging: bool,
        n_bins: usize,
        random_state: &str,
        random_increment: &str,
        uniform: f64,
    ) -> PyResult<Self> {
        if n_bins < 2 {
            return Err(PyValueError::new_err(format!(
                "n_bins: must be an integer >= 2, got {}",
                n_bins
            )));
        }
        let random = Pcg64 {
            state: parse_u128(random_state, "state")?,
            increment: parse_u128(random_increment, "inc")?,
        };
        Ok(CalibeatingCore {
            inner: Records::new(hedging, n_bins, random, uniform),
        })
    }

    fn forecast(&self, q: f64) -> f64 {
        self.inner.forecast(q)
    }

    fn forecasts(&self, qs: Vec<f64>) -> Vec<f64> {
        qs.iter().map(|&q| self.inner.forecast(q)).collect()
    }

    fn record(&mut self, q: f64, label: i64) {
        self.inner.record(q, label);
    }

    fn record_many(&mut self, qs: Vec<f64>, labels: Vec<i64>) -> PyResult<()> {
        crate::platt::check_lengths(qs.len(), labels.len())?;
        for (&q, &label) in qs.iter().zip(labels.iter()) {
            self.inner.record(q, label);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    /// `(counts, ones, random state, random increment, uniform)`; records flat.
    fn get_state(&self) -> (Vec<i64>, Vec<i64>, String, String, f64) {
        let records = &self.inner;
        (
            records.counts.clone(),
            records.ones.clone(),
            records.random.state.to_string(),
            records.random.increment.to_string(),
            records.uniform,
        )
    }

    fn set_state(
        &mut self,
        counts: Vec<i64>,
        ones: Vec<i64>,
        random_state: &str,
        random_increment: &str,
        uniform: f64,
    ) -> PyResult<()> {
        let size = self.inner.counts.len();
        if counts.len() != size || ones.len() != size {
            return Err(PyValueError::new_err(format!(
                "state: bin records of {} entries expected, got {} and {}",
                size,
                counts.len(),
                ones.len()
            )));
        }
        let random = Pcg64 {
            state: parse_u128(random_state, "state")?,
            increment: parse_u128(random_increment, "inc")?,
        };
        self.inner.counts = counts;
        self.inner.ones = ones;
        self.inner.random = random;
        self.inner.uniform = uniform;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<CalibeatingCore>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_starts_at_the_midpoints() {
        let records = Records::new(
            false,
            10,
            Pcg64 {
                state: 1,
                increment: 3,
            },
            0.5,
        );
        assert_eq!(records.forecast(0.42), 0.45);
        assert_eq!(records.forecast(1.0), 0.95);
    }

    #[test]
    fn hedging_records_one_outcome_per_event() {
        let mut records = Records::new(
            true,
            4,
            Pcg64 {
                state: 7,
                increment: 9,
            },
            0.5,
        );
        for step in 0..400 {
            records.record((step % 13) as f64 / 13.0, (step % 3 == 0) as i64);
        }
        assert_eq!(records.counts.iter().sum::<i64>(), 400);
        assert!(records.uniform >= 0.0 && records.uniform < 1.0);
    }
}
