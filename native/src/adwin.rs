//! ADWIN (adaptive windowing, Bifet & Gavaldà 2007) as river 0.26 runs it, ported so that
//! the same values give the same detections, width and estimation, bit for bit.
//!
//! The window is kept in exponential histograms: row `i` holds up to `max_buckets`
//! summaries (a total and a sum of squared deviations) of `2^i` values each, oldest
//! first. A new value enters row 0; when a row holds `max_buckets + 1` summaries its two
//! oldest merge into one summary of the next row. Every `clock` values (once the window
//! is wider than `grace_period`) each split of the window into an old part W0 and a new
//! part W1 is tested, oldest summaries first; when |mean(W0) − mean(W1)| exceeds the
//! Hoeffding-type bound the oldest summary is dropped and the test starts again.
//!
//! Arithmetic order: every expression keeps river's operand order and grouping (river's
//! `rust_src/adwin.rs`, itself a line port of the Cython `adwin_c.pyx`), so f64 rounding is
//! identical; `tests/adapters/test_native_drift_river.py` checks it against river itself.
//! The byte state is river 0.26's `AdaptiveWindowing.__getstate__` layout, so snapshots
//! written while DriftMemory held river's detector load here and the reverse.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// One row of the histogram: up to `max_size` summaries of `2^row` values each, oldest
/// first. One spare slot holds the overflowing summary until it is merged away.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    max_size: usize,
    used: usize,
    totals: Vec<f64>,
    variances: Vec<f64>,
}

impl Row {
    fn new(max_size: usize) -> Self {
        Row {
            max_size,
            used: 0,
            totals: vec![0.0; max_size + 1],
            variances: vec![0.0; max_size + 1],
        }
    }

    fn push(&mut self, total: f64, variance: f64) {
        self.totals[self.used] = total;
        self.variances[self.used] = variance;
        self.used += 1;
    }

    /// Drop the `count` oldest summaries; vacated slots are zeroed (they are part of the
    /// byte state, which must match river's).
    fn drop_oldest(&mut self, count: usize) {
        let used = self.used;
        self.totals.copy_within(count..used, 0);
        self.variances.copy_within(count..used, 0);
        for slot in used - count..used {
            self.totals[slot] = 0.0;
            self.variances[slot] = 0.0;
        }
        self.used = used - count;
    }
}

/// ADWIN's window: river's `AdaptiveWindowing`, field for field.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    delta: f64,
    clock: i32,
    max_buckets: usize,
    min_window_length: f64,
    grace_period: f64,
    total: f64,
    variance: f64,
    width: f64,
    total_width: f64,
    n_buckets: i32,
    max_n_buckets: i32,
    tick: i32,
    n_detections: i32,
    rows: Vec<Row>,
}

/// The parameters river's `ADWIN` takes, checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdwinParams {
    pub delta: f64,
    pub clock: i32,
    pub max_buckets: usize,
    pub min_window_length: i32,
    pub grace_period: i32,
}

impl AdwinParams {
    /// River accepts these values without checking; the ones refused here would make it
    /// panic (clock 0: modulo by zero; max_buckets 0: a merge reads past the row) or
    /// never test anything meaningful (delta outside (0, 1), not finite).
    pub fn check(&self) -> Result<(), String> {
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("delta: must be in (0, 1), got {}", self.delta));
        }
        if self.clock < 1 {
            return Err(format!("clock: must be >= 1, got {}", self.clock));
        }
        if self.max_buckets < 1 || self.max_buckets > 1 << 20 {
            return Err(format!(
                "max_buckets: must be in [1, 1048576], got {}",
                self.max_buckets
            ));
        }
        Ok(())
    }
}

impl Window {
    pub fn new(params: &AdwinParams) -> Self {
        Window {
            delta: params.delta,
            clock: params.clock,
            max_buckets: params.max_buckets,
            min_window_length: f64::from(params.min_window_length),
            grace_period: f64::from(params.grace_period),
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            total_width: 0.0,
            n_buckets: 0,
            max_n_buckets: 0,
            tick: 0,
            n_detections: 0,
            rows: vec![Row::new(params.max_buckets)],
        }
    }

    /// Add one value; true when the window was cut (a change was detected).
    pub fn update(&mut self, value: f64) -> bool {
        self.insert(value);
        self.detect()
    }

    pub fn width(&self) -> f64 {
        self.width
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    pub fn variance(&self) -> f64 {
        self.variance
    }

    pub fn n_detections(&self) -> i32 {
        self.n_detections
    }

    fn insert(&mut self, value: f64) {
        self.rows[0].push(value, 0.0);
        self.n_buckets = self.n_buckets.wrapping_add(1);
        if self.n_buckets > self.max_n_buckets {
            self.max_n_buckets = self.n_buckets;
        }
        self.width += 1.0;
        // Welford's step on the sum of squared deviations, grouped as river groups it:
        // ((w - 1) * d * d) / w with d = value - mean of the previous w - 1 values.
        let mut step = 0.0;
        if self.width > 1.0 {
            let deviation = value - self.total / (self.width - 1.0);
            step = (self.width - 1.0) * deviation * deviation / self.width;
        }
        self.variance += step;
        self.total += value;
        self.merge_full_rows();
    }

    fn merge_full_rows(&mut self) {
        let mut row = 0;
        while self.rows[row].used == self.max_buckets + 1 {
            let size = (1u64 << row) as f64;
            let (first, second) = (self.rows[row].totals[0], self.rows[row].totals[1]);
            let (first_var, second_var) =
                (self.rows[row].variances[0], self.rows[row].variances[1]);
            let first_mean = first / size;
            let second_mean = second / size;
            let total = first + second;
            let between = size * 0.5 * (first_mean - second_mean) * (first_mean - second_mean);
            let variance = first_var + second_var + between;
            if row + 1 == self.rows.len() {
                self.rows.push(Row::new(self.max_buckets));
            }
            self.rows[row + 1].push(total, variance);
            self.n_buckets = self.n_buckets.wrapping_add(1);
            self.rows[row].drop_oldest(2);
            if self.rows[row + 1].used <= self.max_buckets {
                break;
            }
            row += 1;
        }
    }

    /// Drop the oldest summary (the first of the last row).
    fn drop_oldest(&mut self) {
        let last = self.rows.len() - 1;
        let size = (1u64 << last) as f64;
        let total = self.rows[last].totals[0];
        let variance = self.rows[last].variances[0];
        let mean = total / size;
        self.width -= size;
        self.total -= total;
        let rest_mean = self.total / self.width;
        let step = variance
            + size * self.width * (mean - rest_mean) * (mean - rest_mean) / (size + self.width);
        self.variance -= step;
        self.rows[last].drop_oldest(1);
        self.n_buckets = self.n_buckets.wrapping_sub(1);
        // An emptied last row goes; row 0 always stays (river pops it too, but only
        // when the window would be empty, which a cut never leaves).
        if self.rows[last].used == 0 && last > 0 {
            self.rows.pop();
        }
    }

    fn detect(&mut self) -> bool {
        let mut detected = false;
        self.tick = self.tick.wrapping_add(1);
        if self.tick % self.clock == 0 && self.width > self.grace_period {
            let mut cut = true;
            while cut {
                cut = self.cut_once();
                detected |= cut;
            }
        }
        self.total_width += self.width;
        if detected {
            self.n_detections = self.n_detections.wrapping_add(1);
        }
        detected
    }

    /// Test the splits oldest first; on the first that differs, drop the oldest summary
    /// and say so (the caller tests again).
    fn cut_once(&mut self) -> bool {
        // Per pass, not per split as river does: the width and variance only change when a
        // summary is dropped, which ends the pass, so the values are the same bits.
        let delta_prime = (2.0 * self.width.ln() / self.delta).ln();
        let variance_per_value = self.variance / self.width;
        let mut old_count = 0.0_f64;
        let mut new_count = self.width;
        let mut old_total = 0.0_f64;
        let mut new_total = self.total;
        for row in (0..self.rows.len()).rev() {
            let size = (1u64 << row) as f64;
            let used = self.rows[row].used;
            for slot in 0..used {
                old_count += size;
                new_count -= size;
                let total = self.rows[row].totals[slot];
                old_total += total;
                new_total -= total;
                if row == 0 && slot == used - 1 {
                    return false;
                }
                let mean_difference = (old_total / old_count) - (new_total / new_count);
                if new_count >= self.min_window_length
                    && old_count >= self.min_window_length
                    && self.differs(
                        old_count,
                        new_count,
                        mean_difference,
                        delta_prime,
                        variance_per_value,
                    )
                    && self.width > 0.0
                {
                    self.drop_oldest();
                    return true;
                }
            }
        }
        false
    }

    /// The Hoeffding-type test of one split (river's `_evaluate_cut`).
    fn differs(
        &self,
        old_count: f64,
        new_count: f64,
        mean_difference: f64,
        delta_prime: f64,
        variance_per_value: f64,
    ) -> bool {
        let harmonic = 1.0 / (old_count - self.min_window_length + 1.0)
            + 1.0 / (new_count - self.min_window_length + 1.0);
        let epsilon = (2.0 * harmonic * variance_per_value * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * harmonic;
        mean_difference.abs() > epsilon
    }

    /// The state in river 0.26's `AdaptiveWindowing.__getstate__` layout (little-endian:
    /// the fields in declaration order, each row as max_size, used and two length-prefixed
    /// f64 vectors, then the constructor arguments again).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.rows.len() * (40 + 16 * self.max_buckets));
        out.extend_from_slice(&self.delta.to_le_bytes());
        out.extend_from_slice(&self.clock.to_le_bytes());
        out.extend_from_slice(&(self.max_buckets as u64).to_le_bytes());
        for value in [
            self.min_window_length,
            self.grace_period,
            self.total,
            self.variance,
            self.width,
            self.total_width,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for value in [
            self.n_buckets,
            self.max_n_buckets,
            self.tick,
            self.n_detections,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.rows.len() as u64).to_le_bytes());
        for row in &self.rows {
            out.extend_from_slice(&(row.max_size as u64).to_le_bytes());
            out.extend_from_slice(&(row.used as u64).to_le_bytes());
            for values in [&row.totals, &row.variances] {
                out.extend_from_slice(&(values.len() as u64).to_le_bytes());
                for value in values.iter() {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&self.delta.to_le_bytes());
        out.extend_from_slice(&self.clock.to_le_bytes());
        out.extend_from_slice(&(self.max_buckets as u64).to_le_bytes());
        out.extend_from_slice(&(self.min_window_length as i32).to_le_bytes());
        out.extend_from_slice(&(self.grace_period as i32).to_le_bytes());
        out
    }

    /// Read `to_bytes`'s layout back, for a window built with `params`. Everything is
    /// checked (lengths, the parameters, counts consistent with the width), so corrupt or
    /// tampered bytes give an error, never a panic later.
    pub fn from_bytes(bytes: &[u8], params: &AdwinParams) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        let delta = reader.f64()?;
        let clock = reader.i32()?;
        let max_buckets = reader.u64()?;
        let min_window_length = reader.f64()?;
        let grace_period = reader.f64()?;
        let mut window = Window::new(params);
        let same = delta.to_bits() == params.delta.to_bits()
            && clock == params.clock
            && max_buckets == params.max_buckets as u64
            && min_window_length == f64::from(params.min_window_length)
            && grace_period == f64::from(params.grace_period);
        if !same {
            return Err(format!(
                "written for ADWIN(delta={}, clock={}, max_buckets={}, min_window_length={}, \
                 grace_period={}), this detector has {:?}",
                delta, clock, max_buckets, min_window_length, grace_period, params
            ));
        }
        window.total = reader.finite("total")?;
        window.variance = reader.finite("variance")?;
        window.width = reader.finite("width")?;
        window.total_width = reader.finite("total_width")?;
        window.n_buckets = reader.i32()?;
        window.max_n_buckets = reader.i32()?;
        window.tick = reader.i32()?;
        window.n_detections = reader.i32()?;
        let n_rows = reader.u64()?;
        if n_rows == 0 || n_rows > 64 {
            return Err(format!("{} histogram rows, expected 1 to 64", n_rows));
        }
        let mut rows = Vec::with_capacity(n_rows as usize);
        let mut counted = 0.0_f64;
        for index in 0..n_rows as usize {
            let max_size = reader.u64()?;
            let used = reader.u64()?;
            if max_size != params.max_buckets as u64 || used > max_size {
                return Err(format!(
                    "row {}: max_size {} and used {}, expected max_size {} and used <= it",
                    index, max_size, used, params.max_buckets
                ));
            }
            let mut row = Row::new(params.max_buckets);
            row.used = used as usize;
            for (name, values) in [
                ("totals", &mut row.totals),
                ("variances", &mut row.variances),
            ] {
                let length = reader.u64()?;
                if length != params.max_buckets as u64 + 1 {
                    return Err(format!(
                        "row {}: {} {} values, expected {}",
                        index,
                        length,
                        name,
                        params.max_buckets + 1
                    ));
                }
                for value in values.iter_mut() {
                    *value = reader.finite(name)?;
                }
            }
            counted += row.used as f64 * (1u64 << index) as f64;
            rows.push(row);
        }
        let last = &rows[rows.len() - 1];
        if rows.len() > 1 && last.used == 0 {
            return Err("the last histogram row is empty".to_string());
        }
        if counted != window.width {
            return Err(format!(
                "the rows hold {} values, the width says {}",
                counted, window.width
            ));
        }
        window.rows = rows;
        let trailer = (
            reader.f64()?,
            reader.i32()?,
            reader.u64()?,
            reader.i32()?,
            reader.i32()?,
        );
        let expected = (
            params.delta,
            params.clock,
            params.max_buckets as u64,
            params.min_window_length,
            params.grace_period,
        );
        if trailer.0.to_bits() != expected.0.to_bits()
            || trailer.1 != expected.1
            || trailer.2 != expected.2
            || trailer.3 != expected.3
            || trailer.4 != expected.4
        {
            return Err("the trailing constructor arguments differ from the header".to_string());
        }
        if reader.at != bytes.len() {
            return Err(format!("{} bytes left over", bytes.len() - reader.at));
        }
        Ok(window)
    }
}

/// Little-endian reader over a byte state; running out is an error naming the offset.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at + N;
        if end > self.bytes.len() {
            return Err(format!(
                "ends at byte {}, {} more expected",
                self.bytes.len(),
                end - self.bytes.len()
            ));
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(out)
    }

    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take::<8>()?))
    }

    fn finite(&mut self, name: &str) -> Result<f64, String> {
        let at = self.at;
        let value = self.f64()?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(format!("{} at byte {} is {}", name, at, value))
        }
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.take::<4>()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take::<8>()?))
    }
}

/// river's `drift.ADWIN`: the window plus the alarm flag; the update after an alarm
/// starts a fresh window (river's `_reset`), which is what makes detections repeat.
#[derive(Clone, Debug)]
pub struct Adwin {
    params: AdwinParams,
    window: Window,
    drift_detected: bool,
}

impl Adwin {
    pub fn new(params: AdwinParams) -> Result<Self, String> {
        params.check()?;
        Ok(Adwin {
            window: Window::new(&params),
            params,
            drift_detected: false,
        })
    }

    pub fn update(&mut self, value: f64) -> bool {
        if self.drift_detected {
            self.window = Window::new(&self.params);
        }
        self.drift_detected = self.window.update(value);
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

    /// Number of values in the window (a float, as river returns it).
    pub fn width(&self) -> f64 {
        self.window.width()
    }
}

/// Python face: `streamweights._native.Adwin`, river's `ADWIN` verbs and properties.
#[pyclass(name = "Adwin", module = "streamweights._native")]
pub struct PyAdwin {
    pub(crate) inner: Adwin,
}

#[pymethods]
impl PyAdwin {
    #[new]
    #[pyo3(signature = (delta=0.002, clock=32, max_buckets=5, min_window_length=5, grace_period=10))]
    fn new(
        delta: f64,
        clock: i32,
        max_buckets: usize,
        min_window_length: i32,
        grace_period: i32,
    ) -> PyResult<Self> {
        let params = AdwinParams {
            delta,
            clock,
            max_buckets,
            min_window_length,
            grace_period,
        };
        Adwin::new(params)
            .map(|inner| PyAdwin { inner })
            .map_err(PyValueError::new_err)
    }

    /// Feed one value; true when this value made the window cut (drift detected).
    fn update(&mut self, value: f64) -> bool {
        self.inner.update(value)
    }

    /// Feed the values in order; returns the 0-based positions where drift was detected.
    fn update_many(&mut self, py: Python<'_>, values: Vec<f64>) -> Vec<usize> {
        let inner = &mut self.inner;
        py.allow_threads(move || inner.update_many(&values))
    }

    #[getter]
    fn drift_detected(&self) -> bool {
        self.inner.drift_detected
    }

    /// Number of values in the window (a float, as river returns it).
    #[getter]
    fn width(&self) -> f64 {
        self.inner.window.width()
    }

    #[getter]
    fn total(&self) -> f64 {
        self.inner.window.total()
    }

    /// Sum of squared deviations in the window (river's `ADWIN.variance`).
    #[getter]
    fn variance(&self) -> f64 {
        self.inner.window.variance()
    }

    /// Mean of the window, 0 when it is empty.
    #[getter]
    fn estimation(&self) -> f64 {
        let width = self.inner.window.width();
        if width == 0.0 {
            0.0
        } else {
            self.inner.window.total() / width
        }
    }

    /// Detections since the window was last started afresh (river's `n_detections`).
    #[getter]
    fn n_detections(&self) -> i32 {
        self.inner.window.n_detections()
    }

    /// The window's state, in river 0.26's `AdaptiveWindowing.__getstate__` byte layout.
    fn window_state<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.window.to_bytes())
    }

    /// Restore `window_state`'s bytes and the alarm flag; checked before anything changes.
    fn load_window_state(&mut self, state: &[u8], drift_detected: bool) -> PyResult<()> {
        let window = Window::from_bytes(state, &self.inner.params)
            .map_err(|error| PyValueError::new_err(format!("ADWIN window state: {}", error)))?;
        self.inner.window = window;
        self.inner.drift_detected = drift_detected;
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyAdwin>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> AdwinParams {
        AdwinParams {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }

    #[test]
    fn sums_and_width_follow_the_values() {
        let mut window = Window::new(&defaults());
        for value in [1.0, 2.0, 3.0, 4.0, 5.0] {
            assert!(!window.update(value));
        }
        assert_eq!(window.width(), 5.0);
        assert_eq!(window.total(), 15.0);
        assert_eq!(window.variance(), 10.0);
    }

    #[test]
    fn merged_rows_keep_every_value_counted() {
        let mut window = Window::new(&defaults());
        for index in 0..1000 {
            window.update(f64::from(index % 7));
        }
        let counted: usize = window
            .rows
            .iter()
            .enumerate()
            .map(|(row, r)| r.used << row)
            .sum();
        assert_eq!(counted as f64, window.width());
        assert!(window.rows.iter().all(|r| r.used <= 5));
    }

    #[test]
    fn a_jump_in_the_mean_is_cut_and_the_next_update_starts_afresh() {
        let mut adwin = Adwin::new(defaults()).unwrap();
        let values: Vec<f64> = (0..2000)
            .map(|i| if i < 1000 { 0.0 } else { 1.0 })
            .collect();
        let alarms = adwin.update_many(&values);
        assert!(!alarms.is_empty() && alarms[0] >= 1000 && alarms[0] < 1100);
        let before = adwin.window.width();
        adwin.drift_detected = true;
        adwin.update(1.0);
        assert_eq!(adwin.window.width(), 1.0);
        assert!(before > 1.0);
    }

    #[test]
    fn bytes_round_trip_and_refuse_damage() {
        let mut window = Window::new(&defaults());
        for index in 0..777 {
            window.update(f64::from(index % 3) * 0.5);
        }
        let bytes = window.to_bytes();
        assert_eq!(Window::from_bytes(&bytes, &defaults()).unwrap(), window);
        assert!(Window::from_bytes(&bytes[..bytes.len() - 1], &defaults()).is_err());
        let mut other = defaults();
        other.clock = 1;
        assert!(Window::from_bytes(&bytes, &other).is_err());
        let mut wrong_width = bytes.clone();
        // width is the 7th f64 field after delta/clock/max_buckets (8 + 4 + 8 + 4 * 8).
        wrong_width[52..60].copy_from_slice(&1.0f64.to_le_bytes());
        assert!(Window::from_bytes(&wrong_width, &defaults()).is_err());
    }

    #[test]
    fn parameters_that_would_panic_are_refused() {
        let mut params = defaults();
        params.clock = 0;
        assert!(Adwin::new(params).is_err());
        let mut params = defaults();
        params.max_buckets = 0;
        assert!(Adwin::new(params).is_err());
    }
}
