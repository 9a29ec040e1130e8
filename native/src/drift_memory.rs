//! DriftMemory's class-balanced memory (RoTTA's CSTU memory) and the per-event path of
//! its chain verbs: the input check, argmax, entropy, the accept/evict rules, the
//! relabelling of a stored pseudo-labelled copy (matched by its bytes) and the loss or
//! entropy value the detector is fed. See `streamweights/adapters/drift_memory.py` for
//! the rules; the numpy version it replaced is `tests/reference/drift_memory.py`.
//!
//! Arithmetic: scores `λ_t · T[min(age, len T − 1)] + λ_u/ln C · u` with the timeliness
//! table `T` computed by Python (numpy's `exp`, handed over as is, so scores are the
//! reference's bit for bit); the entropy `−Σ_k p_k ln max(p_k, 1e−300)` summed left to
//! right over k (numpy's `.sum()` adds p_0 to the left-to-right sum of the rest, and
//! numpy's SIMD `log` may differ from libm's by an ulp: the entropies, hence the stored
//! uncertainties, can differ from the reference's in the last bits; documented in the
//! differential test). Ties go to the first item in storage order, as `argmax` does.

use std::sync::{Arc, Mutex, Weak};

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::adwin::PyAdwin;
use crate::arrays;
use crate::drift_evidence::PyRiseEvidence;
use crate::expert_losses::read_flat;
use crate::page_hinkley::PyPageHinkley;
use crate::probability_input::{quick_label, quick_probabilities};

/// Monitored values kept to locate a change point (drift_memory.py's `_HISTORY`).
const HISTORY: usize = 1024;

/// The detector objects are shared with Python (their snapshots are written there).
enum Detector {
    Adwin(Py<PyAdwin>),
    PageHinkley(Py<PyPageHinkley>),
}

/// Number of newest values after the most likely single change of mean in `values`
/// (the CUSUM split; numpy's expression order: `|S_k − k/m·S_m| / sqrt(k·(m − k)/m)`).
fn run_length(values: &[f64]) -> usize {
    let m = values.len();
    if m < 2 {
        return m;
    }
    let mut cumulative = Vec::with_capacity(m);
    let mut total = 0.0;
    for value in values {
        total += *value;
        cumulative.push(total);
    }
    let last = cumulative[m - 1];
    let mf = m as f64;
    let mut best = 0;
    let mut best_statistic = f64::NEG_INFINITY;
    for k in 1..m {
        let kf = k as f64;
        let statistic = (cumulative[k - 1] - kf / mf * last).abs() / (kf * (mf - kf) / mf).sqrt();
        if statistic > best_statistic || k == 1 {
            best_statistic = statistic;
            best = k - 1;
        }
    }
    m - (best + 1)
}

/// Probabilities are clipped here before the log-loss (drift_memory.py's `_LOG_LOSS_CLIP`).
const LOG_LOSS_CLIP: f64 = 1e-6;

struct Slot {
    /// The item as float64 values (every probability row; other items: empty).
    row: Vec<f64>,
    /// An item that is not a 1-d float64 array (from `add`), kept as the array itself.
    object: Option<Py<PyAny>>,
    label: usize,
    uncertainty: f64,
    uncertainty_score: f64,
    birth: i64,
    stamp: i64,
    pseudo: bool,
}

/// The memory plus the per-event arithmetic of `observe` and `learn`.
#[pyclass(name = "DriftMemoryCore", module = "streamweights._native")]
pub struct DriftMemoryCore {
    capacity: usize,
    pub(crate) n_classes: usize,
    quota: f64,
    timeliness_weight: f64,
    uncertainty_scale: f64,
    log_classes: f64,
    /// Shared by every core built with the same table (see `shared_timeliness`).
    timeliness: Arc<[f64]>,
    entropy_filter: Option<f64>,
    entropy_signal: bool,
    log_loss: bool,
    slots: Vec<Slot>,
    counts: Vec<i64>,
    adds: i64,
    detector: Option<Detector>,
    evidence: Option<Py<PyRiseEvidence>>,
    history: Vec<f64>,
    since_alarm: i64,
    standardise_warmup: i64,
    moments: (i64, f64, f64),
    signals: i64,
    pub(crate) drift_count: i64,
    last_drift_step: Option<i64>,
    change_point: Option<i64>,
    candidate: Option<(i64, i64)>,
    unconfirmed_count: i64,
}

fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (k, value) in p.iter().enumerate() {
        if *value > p[best] {
            best = k;
        }
    }
    best
}

fn entropy(p: &[f64]) -> f64 {
    let mut total = 0.0;
    for value in p {
        let clipped = if 1e-300 > *value { 1e-300 } else { *value };
        total += value * clipped.ln();
    }
    -total
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The timeliness tables alive in this process, one per distinct table.
static TIMELINESS_TABLES: Mutex<Vec<Weak<[f64]>>> = Mutex::new(Vec::new());

/// `table` as an `Arc` shared with every live core whose table has the same bits: the
/// table depends only on the capacity (2,561 doubles, 20 KiB, at the default 64), so a
/// replica of 10,000 streams held 10,000 copies of it. Tables no core holds any more
/// are dropped from the registry as new ones arrive.
fn shared_timeliness(table: Vec<f64>) -> Arc<[f64]> {
    // A poisoned lock only means another thread panicked while holding it; the registry
    // is a cache of Weak pointers, valid whatever that thread was doing.
    let mut tables = TIMELINESS_TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tables.retain(|weak| weak.strong_count() > 0);
    for weak in tables.iter() {
        if let Some(existing) = weak.upgrade() {
            if same_bits(&existing, &table) {
                return existing;
            }
        }
    }
    let shared: Arc<[f64]> = Arc::from(table);
    tables.push(Arc::downgrade(&shared));
    shared
}

impl DriftMemoryCore {
    /// The width of the stored rows when there is at least one item and every item is a
    /// float64 row of that one width (no item kept as an array of another kind).
    fn rows_width(&self) -> Option<usize> {
        let width = self.slots.first()?.row.len();
        self.slots
            .iter()
            .all(|slot| slot.object.is_none() && slot.row.len() == width)
            .then_some(width)
    }

    fn score(&self, slot: &Slot) -> f64 {
        let last = self.timeliness.len() as i64 - 1;
        let age = self.adds - slot.birth;
        let index = if age < last { age } else { last };
        self.timeliness_weight * self.timeliness[index.max(0) as usize] + slot.uncertainty_score
    }

    /// Index of the highest-scoring item among `candidates` if it scores above `above`.
    fn highest<F: Fn(&Slot) -> bool>(&self, candidates: F, above: f64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            if !candidates(slot) {
                continue;
            }
            let score = self.score(slot);
            match best {
                Some((_, top)) if score <= top => {}
                _ => best = Some((index, score)),
            }
        }
        match best {
            Some((index, score)) if score > above => Some(index),
            _ => None,
        }
    }

    fn add(
        &mut self,
        row: Vec<f64>,
        object: Option<Py<PyAny>>,
        label: usize,
        uncertainty: f64,
        pseudo: bool,
        stamp: i64,
    ) -> bool {
        let n = self.slots.len();
        let uncertainty_score = self.uncertainty_scale * uncertainty;
        let new_score = 0.5 * self.timeliness_weight + uncertainty_score;
        let slot = if (self.counts[label] as f64) < self.quota {
            if n < self.capacity {
                Some(n)
            } else {
                let counts = &self.counts;
                let largest = self
                    .slots
                    .iter()
                    .map(|s| counts[s.label])
                    .max()
                    .unwrap_or(0);
                self.highest(|s| counts[s.label] == largest, new_score)
            }
        } else {
            self.highest(|s| s.label == label, new_score)
        };
        if let Some(index) = slot {
            let stored = Slot {
                row,
                object,
                label,
                uncertainty,
                uncertainty_score,
                birth: self.adds,
                stamp,
                pseudo,
            };
            if index == n {
                self.slots.push(stored);
            } else {
                self.counts[self.slots[index].label] -= 1;
                self.slots[index] = stored;
            }
            self.counts[label] += 1;
        }
        self.adds += 1;
        slot.is_some()
    }

    /// Give the stored pseudo-labelled copy of `p` (youngest first) its true label.
    fn relabel(&mut self, p: &[f64], predicted: usize, entropy: f64, label: usize) -> bool {
        let mut found: Option<usize> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.pseudo
                && slot.label == predicted
                && slot.uncertainty == entropy
                && same_bits(&slot.row, p)
                && found.map_or(true, |f| slot.birth > self.slots[f].birth)
            {
                found = Some(index);
            }
        }
        let index = match found {
            Some(index) => index,
            None => return false,
        };
        let slot = &mut self.slots[index];
        slot.pseudo = false;
        slot.uncertainty = 0.0;
        slot.uncertainty_score = 0.0;
        if label != predicted {
            let was_full = self.counts[label] as f64 >= self.quota;
            self.counts[predicted] -= 1;
            self.counts[label] += 1;
            self.slots[index].label = label;
            if was_full {
                if let Some(victim) = self.highest(|s| s.label == label, f64::NEG_INFINITY) {
                    self.slots.remove(victim);
                    self.recount();
                }
            }
        }
        true
    }

    /// Page-Hinkley on standardised values (drift_memory.py's `_update_page_hinkley`).
    fn update_page_hinkley(
        &mut self,
        py: Python<'_>,
        detector: &Py<PyPageHinkley>,
        value: f64,
    ) -> bool {
        let (count, mean, squares) = self.moments;
        let standardised = if count >= self.standardise_warmup && squares > 0.0 {
            Some((value - mean) / (squares / (count - 1) as f64).sqrt())
        } else {
            None
        };
        let count = count + 1;
        let delta = value - mean;
        let mean = mean + delta / count as f64;
        let squares = squares + delta * (value - mean);
        self.moments = (count, mean, squares);
        let standardised = match standardised {
            Some(v) => v,
            None => return false,
        };
        if !detector.borrow_mut(py).inner.update(standardised) {
            return false;
        }
        self.moments = (0, 0.0, 0.0);
        true
    }

    /// The monitor's update: on an alarm, how many of the newest values belong to the
    /// new concept.
    fn monitor_update(&mut self, py: Python<'_>, value: f64, position: i64) -> Option<usize> {
        self.history[position.rem_euclid(HISTORY as i64) as usize] = value;
        self.since_alarm += 1;
        let window = match self.detector.as_ref()? {
            Detector::Adwin(adwin) => {
                let mut adwin = adwin.borrow_mut(py);
                if !adwin.inner.update(value) {
                    return None;
                }
                adwin.inner.width() as i64
            }
            Detector::PageHinkley(ph) => {
                let ph = ph.clone_ref(py);
                if !self.update_page_hinkley(py, &ph, value) {
                    return None;
                }
                self.since_alarm
            }
        };
        let searched = window.min(self.since_alarm).min(HISTORY as i64).max(0) as usize;
        self.since_alarm = 0;
        let end = position.rem_euclid(HISTORY as i64) as usize + 1;
        let recent: Vec<f64> = if searched <= end {
            self.history[end - searched..end].to_vec()
        } else {
            let mut values = self.history[HISTORY - (searched - end)..].to_vec();
            values.extend_from_slice(&self.history[..end]);
            values
        };
        Some(run_length(&recent))
    }

    /// The change point of a detector alarm once the evidence confirms it.
    fn confirmed(&mut self, py: Python<'_>, value: f64, change_point: Option<i64>) -> Option<i64> {
        let evidence = self.evidence.as_ref()?.clone_ref(py);
        let mut evidence = evidence.borrow_mut(py);
        let evident = evidence.inner.update(if 0.0 > value { 0.0 } else { value });
        if let Some(point) = change_point {
            self.candidate = Some((point, self.signals));
        }
        let (point, step) = self.candidate?;
        if evident {
            self.candidate = None;
            evidence.inner.reset();
            return Some(point);
        }
        if self.signals - step >= HISTORY as i64 {
            self.candidate = None;
            self.unconfirmed_count += 1;
        }
        None
    }

    /// Feed one monitored value; whether it counted as a drift (items evicted).
    fn feed_value(&mut self, py: Python<'_>, value: f64) -> bool {
        self.signals += 1;
        if self.detector.is_none() {
            return false;
        }
        let run = self.monitor_update(py, value, self.signals);
        let mut change_point = run.map(|r| self.signals - r as i64);
        if self.evidence.is_some() {
            change_point = self.confirmed(py, value, change_point);
        }
        let point = match change_point {
            Some(point) => point,
            None => return false,
        };
        self.drift_count += 1;
        self.last_drift_step = Some(self.signals);
        self.change_point = Some(point);
        self.evict(point);
        true
    }

    fn evict(&mut self, change_point: i64) {
        let before = self.slots.len();
        self.slots.retain(|s| s.stamp >= change_point);
        if self.slots.len() != before {
            self.recount();
        }
    }

    fn recount(&mut self) {
        self.counts = vec![0; self.n_classes];
        for slot in &self.slots {
            self.counts[slot.label] += 1;
        }
    }

    /// `observe` on a checked row (feeding the detector its entropy if it monitors that).
    pub(crate) fn observe_row(&mut self, py: Python<'_>, p: Vec<f64>) {
        let label = argmax(&p);
        let entropy = entropy(&p);
        let normalised = entropy / self.log_classes;
        if self.entropy_filter.map_or(true, |f| normalised < f) {
            let stamp = self.signals;
            self.add(p, None, label, entropy, true, stamp);
        }
        if self.entropy_signal {
            self.feed_value(py, normalised);
        }
    }

    /// `learn` on a checked row and label (feeding the detector the loss if it monitors it).
    pub(crate) fn learn_row(&mut self, py: Python<'_>, p: Vec<f64>, label: usize) {
        let stamp = self.signals;
        let predicted = argmax(&p);
        let entropy = entropy(&p);
        let value = if self.entropy_signal {
            f64::NAN
        } else if self.log_loss {
            let q = p[label];
            -(if LOG_LOSS_CLIP > q { LOG_LOSS_CLIP } else { q }).ln()
        } else if predicted == label {
            0.0
        } else {
            1.0
        };
        if !self.relabel(&p, predicted, entropy, label) {
            self.add(p, None, label, 0.0, false, stamp);
        }
        if !value.is_nan() {
            self.feed_value(py, value);
        }
    }

    fn check_label(&self, label: i64) -> PyResult<usize> {
        if label < 0 || label as u64 >= self.n_classes as u64 {
            return Err(PyValueError::new_err(format!(
                "label: must be in [0, {}), got {}",
                self.n_classes, label
            )));
        }
        Ok(label as usize)
    }

    fn check_row(&self, p: &[f64]) -> PyResult<()> {
        if p.len() != self.n_classes {
            return Err(PyValueError::new_err(format!(
                "x: expected {} probabilities, got {}",
                self.n_classes,
                p.len()
            )));
        }
        Ok(())
    }
}

#[pymethods]
impl DriftMemoryCore {
    #[new]
    #[pyo3(signature = (capacity, n_classes, timeliness, timeliness_weight, uncertainty_weight, entropy_filter, entropy_signal, log_loss, detector, evidence, standardise_warmup))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        capacity: usize,
        n_classes: usize,
        timeliness: Vec<f64>,
        timeliness_weight: f64,
        uncertainty_weight: f64,
        entropy_filter: Option<f64>,
        entropy_signal: bool,
        log_loss: bool,
        detector: Option<&Bound<'_, PyAny>>,
        evidence: Option<Py<PyRiseEvidence>>,
        standardise_warmup: i64,
    ) -> PyResult<Self> {
        let detector = match detector {
            None => None,
            Some(object) => {
                if let Ok(adwin) = object.downcast::<PyAdwin>() {
                    Some(Detector::Adwin(adwin.clone().unbind()))
                } else if let Ok(ph) = object.downcast::<PyPageHinkley>() {
                    Some(Detector::PageHinkley(ph.clone().unbind()))
                } else {
                    return Err(PyValueError::new_err(
                        "DriftMemoryCore: detector must be a core Adwin or PageHinkley",
                    ));
                }
            }
        };
        if capacity < 1 || n_classes < 2 || timeliness.is_empty() {
            return Err(PyValueError::new_err(
                "DriftMemoryCore: capacity >= 1, n_classes >= 2 and a timeliness table needed",
            ));
        }
        let log_classes = (n_classes as f64).ln();
        let timeliness = shared_timeliness(timeliness);
        Ok(DriftMemoryCore {
            capacity,
            n_classes,
            quota: capacity as f64 / n_classes as f64,
            timeliness_weight,
            uncertainty_scale: uncertainty_weight / log_classes,
            log_classes,
            timeliness,
            entropy_filter,
            entropy_signal,
            log_loss,
            slots: Vec::new(),
            counts: vec![0; n_classes],
            adds: 0,
            detector,
            evidence,
            history: vec![0.0; HISTORY],
            since_alarm: 0,
            standardise_warmup,
            moments: (0, 0.0, 0.0),
            signals: 0,
            drift_count: 0,
            last_drift_step: None,
            change_point: None,
            candidate: None,
            unconfirmed_count: 0,
        })
    }

    /// `predict(x)` (a pass-through, renormalised) when `x` clears the fast input check;
    /// None when it does not (the caller runs Python's full check).
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> Option<Bound<'py, PyArray1<f64>>> {
        let mut p = vec![0.0; self.n_classes];
        if quick_probabilities(x, &mut p) {
            Some(arrays::vector(py, &p))
        } else {
            None
        }
    }

    /// `observe(x)` when `x` clears the fast input check: the value to feed the detector
    /// (NaN for none); None when it does not (the caller checks it and calls
    /// `observe_checked`).
    fn observe(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>) -> bool {
        let mut p = vec![0.0; self.n_classes];
        if !quick_probabilities(x, &mut p) {
            return false;
        }
        self.observe_row(py, p);
        true
    }

    fn observe_checked(&mut self, py: Python<'_>, p: Vec<f64>) -> PyResult<()> {
        self.check_row(&p)?;
        self.observe_row(py, p);
        Ok(())
    }

    /// `observe_checked` over checked rows (flattened), as a loop of it.
    fn observe_many(&mut self, py: Python<'_>, rows: &Bound<'_, PyAny>) -> PyResult<()> {
        let rows = read_flat(py, rows)?; // an array read directly, or a list
        if rows.len() % self.n_classes != 0 {
            return Err(PyValueError::new_err("xs: not a whole number of rows"));
        }
        let n = self.n_classes;
        for row in rows.chunks(n) {
            self.observe_row(py, row.to_vec());
        }
        Ok(())
    }

    /// `learn(x, y)` when both clear the fast checks: the loss to feed (NaN for none);
    /// None when they do not (the caller checks them and calls `learn_checked`).
    fn learn(&mut self, py: Python<'_>, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> bool {
        let label = match quick_label(y, self.n_classes) {
            Some(label) => label as usize,
            None => return false,
        };
        let mut p = vec![0.0; self.n_classes];
        if !quick_probabilities(x, &mut p) {
            return false;
        }
        self.learn_row(py, p, label);
        true
    }

    fn learn_checked(&mut self, py: Python<'_>, p: Vec<f64>, label: i64) -> PyResult<()> {
        self.check_row(&p)?;
        let label = self.check_label(label)?;
        self.learn_row(py, p, label);
        Ok(())
    }

    /// `learn_checked` over checked rows (flattened) and labels, as a loop of it; the
    /// labels are all checked first.
    fn learn_many(
        &mut self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        labels: Vec<i64>,
    ) -> PyResult<()> {
        let rows = read_flat(py, rows)?; // an array read directly, or a list
        let n = self.n_classes;
        if rows.len() != labels.len() * n {
            return Err(PyValueError::new_err(
                "learn_many: rows and labels differ in number",
            ));
        }
        let labels = labels
            .into_iter()
            .map(|label| self.check_label(label))
            .collect::<PyResult<Vec<usize>>>()?;
        for (row, label) in rows.chunks(n).zip(labels) {
            self.learn_row(py, row.to_vec(), label);
        }
        Ok(())
    }

    /// Feed one value to the detector (``update_loss``); whether it counted as a drift.
    fn feed(&mut self, py: Python<'_>, value: f64) -> bool {
        self.feed_value(py, value)
    }

    /// Offer a checked item: a float64 row, or any other array as `object`.
    #[pyo3(signature = (row, object, label, uncertainty))]
    fn add_item(
        &mut self,
        row: Vec<f64>,
        object: Option<Py<PyAny>>,
        label: i64,
        uncertainty: f64,
    ) -> PyResult<bool> {
        let label = self.check_label(label)?;
        let stamp = self.signals;
        Ok(self.add(row, object, label, uncertainty, false, stamp))
    }

    /// Evict every item stored before the `change_point`-th monitored value.
    fn evict_before(&mut self, change_point: i64) {
        self.evict(change_point);
    }

    /// `(signals, drift_count, last_drift_step, change_point, candidate, unconfirmed)`.
    #[allow(clippy::type_complexity)]
    fn counters(&self) -> (i64, i64, Option<i64>, Option<i64>, Option<(i64, i64)>, i64) {
        (
            self.signals,
            self.drift_count,
            self.last_drift_step,
            self.change_point,
            self.candidate,
            self.unconfirmed_count,
        )
    }

    #[pyo3(signature = (signals, drift_count, last_drift_step, change_point, candidate, unconfirmed_count))]
    fn set_counters(
        &mut self,
        signals: i64,
        drift_count: i64,
        last_drift_step: Option<i64>,
        change_point: Option<i64>,
        candidate: Option<(i64, i64)>,
        unconfirmed_count: i64,
    ) {
        self.signals = signals;
        self.drift_count = drift_count;
        self.last_drift_step = last_drift_step;
        self.change_point = change_point;
        self.candidate = candidate;
        self.unconfirmed_count = unconfirmed_count;
    }

    #[getter]
    fn signals(&self) -> i64 {
        self.signals
    }

    #[getter]
    fn drift_count(&self) -> i64 {
        self.drift_count
    }

    #[getter]
    fn change_point(&self) -> Option<i64> {
        self.change_point
    }

    /// `(history, since_alarm, (count, mean, squares))` of the monitor, the history a new
    /// float64 array (1,024 values: as a list, its floats were made one by one and
    /// parsed back into an array: ~13% of writing a young stream's record).
    #[allow(clippy::type_complexity)]
    fn monitor_state<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyArray1<f64>>, i64, (i64, f64, f64)) {
        (
            arrays::vector(py, &self.history),
            self.since_alarm,
            self.moments,
        )
    }

    /// Swap in a (loaded) detector object and the monitor's values; checked first.
    fn set_monitor(
        &mut self,
        detector: &Bound<'_, PyAny>,
        history: &Bound<'_, PyAny>,
        since_alarm: i64,
        moments: (i64, f64, f64),
    ) -> PyResult<()> {
        // (a float64 array of the length, as a restore hands it: copied whole; a list
        // or any other sequence of floats: read a value at a time)
        let mut copied = vec![0.0; HISTORY];
        let history = match arrays::copy_exact(history, &[HISTORY], &mut copied) {
            Some(true) => copied,
            _ => history.extract::<Vec<f64>>()?,
        };
        if history.len() != HISTORY {
            return Err(PyValueError::new_err(format!(
                "state.detector.history: expected {} values, got {}",
                HISTORY,
                history.len()
            )));
        }
        let swapped = if let Ok(adwin) = detector.downcast::<PyAdwin>() {
            Detector::Adwin(adwin.clone().unbind())
        } else if let Ok(ph) = detector.downcast::<PyPageHinkley>() {
            Detector::PageHinkley(ph.clone().unbind())
        } else {
            return Err(PyValueError::new_err(
                "DriftMemoryCore: detector must be a core Adwin or PageHinkley",
            ));
        };
        self.detector = Some(swapped);
        self.history = history;
        self.since_alarm = since_alarm;
        self.moments = moments;
        Ok(())
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.counts = vec![0; self.n_classes];
        self.adds = 0;
    }

    fn __len__(&self) -> usize {
        self.slots.len()
    }

    fn class_counts(&self) -> Vec<i64> {
        self.counts.clone()
    }

    /// The memory as its snapshot holds it: `(items, item_shapes, labels, uncertainties,
    /// ages, stamps, pseudo)`, the last five as arrays. When every item is a float64 row
    /// of one width (what the service stores: served probabilities), `items` is one
    /// `(items, width)` float64 array and `item_shapes` is `None`: a mature stream's 64
    /// rows were 64 arrays, each with its shape and marker in the record's text.
    /// Otherwise (no item yet, or an item kept as an array of another kind, from `add`)
    /// `items` is a list of new float64 vectors with their shapes aside, an item of
    /// another kind as that array with shape `None`, for Python to flatten. One call, no
    /// Python float per value.
    #[allow(clippy::type_complexity)]
    fn snapshot_items<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        PyObject,
        Option<Vec<Option<Vec<usize>>>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<i64>>,
        Bound<'py, PyArray1<bool>>,
    )> {
        let (items, shapes) = match self.rows_width() {
            Some(width) => {
                let values: Vec<f64> = self
                    .slots
                    .iter()
                    .flat_map(|slot| slot.row.iter().copied())
                    .collect();
                let matrix = arrays::matrix(py, &values, self.slots.len(), width)?;
                (matrix.into_any().unbind(), None)
            }
            None => {
                let mut items = Vec::with_capacity(self.slots.len());
                let mut shapes = Vec::with_capacity(self.slots.len());
                for slot in &self.slots {
                    match &slot.object {
                        Some(object) => {
                            items.push(object.clone_ref(py));
                            shapes.push(None);
                        }
                        None => {
                            items.push(arrays::vector(py, &slot.row).into_any().unbind());
                            shapes.push(Some(vec![slot.row.len()]));
                        }
                    }
                }
                (PyList::new(py, items)?.into_any().unbind(), Some(shapes))
            }
        };
        let column =
            |read: &dyn Fn(&Slot) -> i64| -> Vec<i64> { self.slots.iter().map(read).collect() };
        let labels = column(&|slot| slot.label as i64);
        let ages = column(&|slot| self.adds - slot.birth);
        let stamps = column(&|slot| slot.stamp);
        let uncertainties: Vec<f64> = self.slots.iter().map(|slot| slot.uncertainty).collect();
        let pseudo: Vec<bool> = self.slots.iter().map(|slot| slot.pseudo).collect();
        Ok((
            items,
            shapes,
            PyArray1::from_vec(py, labels),
            PyArray1::from_vec(py, uncertainties),
            PyArray1::from_vec(py, ages),
            PyArray1::from_vec(py, stamps),
            PyArray1::from_vec(py, pseudo),
        ))
    }

    /// Stored `(row or object, label, age, score, uncertainty, stamp, pseudo)` in storage
    /// order (`row` is None when the item is an object).
    #[allow(clippy::type_complexity)]
    fn items(&self, py: Python<'_>) -> Vec<(PyObject, usize, i64, f64, f64, i64, bool)> {
        self.slots
            .iter()
            .map(|s| {
                let item = match &s.object {
                    Some(object) => object.clone_ref(py),
                    None => s
                        .row
                        .clone()
                        .into_pyobject(py)
                        .map(|v| v.into_any().unbind())
                        .unwrap_or_else(|_| py.None()),
                };
                (
                    item,
                    s.label,
                    self.adds - s.birth,
                    self.score(s),
                    s.uncertainty,
                    s.stamp,
                    s.pseudo,
                )
            })
            .collect()
    }

    /// Replace the memory with loaded items (ages relative to now); checks everything
    /// before changing anything.
    #[allow(clippy::too_many_arguments)]
    fn load(
        &mut self,
        rows: Vec<Option<Vec<f64>>>,
        objects: Vec<Option<Py<PyAny>>>,
        labels: Vec<i64>,
        uncertainties: Vec<f64>,
        ages: Vec<i64>,
        stamps: Vec<i64>,
        pseudo: Vec<bool>,
    ) -> PyResult<()> {
        let n = rows.len();
        if [
            objects.len(),
            labels.len(),
            uncertainties.len(),
            ages.len(),
            stamps.len(),
            pseudo.len(),
        ]
        .iter()
        .any(|&len| len != n)
        {
            return Err(PyValueError::new_err(
                "state: items, labels, uncertainties, ages, stamps and pseudo differ in length",
            ));
        }
        if n > self.capacity {
            return Err(PyValueError::new_err(format!(
                "state.items: {} items, more than the capacity {}",
                n, self.capacity
            )));
        }
        for (index, label) in labels.iter().enumerate() {
            if *label < 0 || *label as u64 >= self.n_classes as u64 {
                return Err(PyValueError::new_err(format!(
                    "state.labels[{}]: must be in [0, {}), got {}",
                    index, self.n_classes, label
                )));
            }
        }
        let mut slots = Vec::with_capacity(n);
        for (i, (row, object)) in rows.into_iter().zip(objects).enumerate() {
            slots.push(Slot {
                row: row.unwrap_or_default(),
                object,
                label: labels[i] as usize,
                uncertainty: uncertainties[i],
                uncertainty_score: self.uncertainty_scale * uncertainties[i],
                birth: -ages[i],
                stamp: stamps[i],
                pseudo: pseudo[i],
            });
        }
        self.slots = slots;
        self.adds = 0;
        self.recount();
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<DriftMemoryCore>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_timeliness_tables_are_one_allocation_until_dropped() {
        // Tables no other test builds (tests run in threads sharing the registry).
        let table = vec![0.25, 0.5, 0.75, 0.125];
        let first = shared_timeliness(table.clone());
        let second = shared_timeliness(table.clone());
        assert!(Arc::ptr_eq(&first, &second));
        let other = shared_timeliness(vec![0.25, 0.5, 0.75, 0.375]);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&other[..], &[0.25, 0.5, 0.75, 0.375]);
        // -0.0 and 0.0 compare equal but are different tables: bits decide.
        let zero = shared_timeliness(vec![0.0, 1.5]);
        let negative_zero = shared_timeliness(vec![-0.0, 1.5]);
        assert!(!Arc::ptr_eq(&zero, &negative_zero));
        drop((first, second));
        let registered = |probe: &[f64]| {
            let tables = TIMELINESS_TABLES.lock().unwrap();
            tables
                .iter()
                .filter_map(Weak::upgrade)
                .any(|table| same_bits(&table, probe))
        };
        assert!(!registered(&table)); // nobody holds it: gone
        assert!(registered(&[0.25, 0.5, 0.75, 0.375]));
    }

    #[test]
    fn run_length_finds_a_step() {
        let values: Vec<f64> = (0..100).map(|i| if i < 70 { 0.0 } else { 1.0 }).collect();
        assert_eq!(run_length(&values), 30);
        assert_eq!(run_length(&[1.0]), 1);
    }

    #[test]
    fn entropy_and_argmax() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5, 0.1]), 1);
        assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
    }
}
