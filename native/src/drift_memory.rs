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

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::probability_input::{quick_label, quick_probabilities};

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
    n_classes: usize,
    quota: f64,
    timeliness_weight: f64,
    uncertainty_scale: f64,
    log_classes: f64,
    timeliness: Vec<f64>,
    entropy_filter: Option<f64>,
    entropy_signal: bool,
    log_loss: bool,
    slots: Vec<Slot>,
    counts: Vec<i64>,
    adds: i64,
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

impl DriftMemoryCore {
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

    fn recount(&mut self) {
        self.counts = vec![0; self.n_classes];
        for slot in &self.slots {
            self.counts[slot.label] += 1;
        }
    }

    /// `observe` on a checked row; the value to feed the detector, NaN for none.
    fn observe_row(&mut self, p: Vec<f64>, stamp: i64) -> f64 {
        let label = argmax(&p);
        let entropy = entropy(&p);
        let normalised = entropy / self.log_classes;
        if self.entropy_filter.map_or(true, |f| normalised < f) {
            self.add(p, None, label, entropy, true, stamp);
        }
        if self.entropy_signal {
            normalised
        } else {
            f64::NAN
        }
    }

    /// `learn` on a checked row and label; the loss to feed the detector, NaN for none.
    fn learn_row(&mut self, p: Vec<f64>, label: usize, stamp: i64) -> f64 {
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
        value
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
    #[pyo3(signature = (capacity, n_classes, timeliness, timeliness_weight, uncertainty_weight, entropy_filter, entropy_signal, log_loss))]
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
    ) -> PyResult<Self> {
        if capacity < 1 || n_classes < 2 || timeliness.is_empty() {
            return Err(PyValueError::new_err(
                "DriftMemoryCore: capacity >= 1, n_classes >= 2 and a timeliness table needed",
            ));
        }
        let log_classes = (n_classes as f64).ln();
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
        })
    }

    /// `predict(x)` (a pass-through, renormalised) when `x` clears the fast input check;
    /// None when it does not (the caller runs Python's full check).
    fn predict(&self, x: &Bound<'_, PyAny>) -> Option<Vec<f64>> {
        let mut p = vec![0.0; self.n_classes];
        if quick_probabilities(x, &mut p) {
            Some(p)
        } else {
            None
        }
    }

    /// `observe(x)` when `x` clears the fast input check: the value to feed the detector
    /// (NaN for none); None when it does not (the caller checks it and calls
    /// `observe_checked`).
    fn observe(&mut self, x: &Bound<'_, PyAny>, stamp: i64) -> Option<f64> {
        let mut p = vec![0.0; self.n_classes];
        if !quick_probabilities(x, &mut p) {
            return None;
        }
        Some(self.observe_row(p, stamp))
    }

    fn observe_checked(&mut self, p: Vec<f64>, stamp: i64) -> PyResult<f64> {
        self.check_row(&p)?;
        Ok(self.observe_row(p, stamp))
    }

    /// `learn(x, y)` when both clear the fast checks: the loss to feed (NaN for none);
    /// None when they do not (the caller checks them and calls `learn_checked`).
    fn learn(&mut self, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>, stamp: i64) -> Option<f64> {
        let label = quick_label(y, self.n_classes)? as usize;
        let mut p = vec![0.0; self.n_classes];
        if !quick_probabilities(x, &mut p) {
            return None;
        }
        Some(self.learn_row(p, label, stamp))
    }

    fn learn_checked(&mut self, p: Vec<f64>, label: i64, stamp: i64) -> PyResult<f64> {
        self.check_row(&p)?;
        let label = self.check_label(label)?;
        Ok(self.learn_row(p, label, stamp))
    }

    /// Offer a checked item: a float64 row, or any other array as `object`.
    #[pyo3(signature = (row, object, label, uncertainty, stamp))]
    fn add_item(
        &mut self,
        row: Vec<f64>,
        object: Option<Py<PyAny>>,
        label: i64,
        uncertainty: f64,
        stamp: i64,
    ) -> PyResult<bool> {
        let label = self.check_label(label)?;
        Ok(self.add(row, object, label, uncertainty, false, stamp))
    }

    /// Evict every item stored before the `change_point`-th monitored value.
    fn evict_before(&mut self, change_point: i64) {
        let before = self.slots.len();
        self.slots.retain(|s| s.stamp >= change_point);
        if self.slots.len() != before {
            self.recount();
        }
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
    fn entropy_and_argmax() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5, 0.1]), 1);
        assert!((entropy(&[0.5, 0.5]) - 2f64.ln()).abs() < 1e-15);
        assert_eq!(entropy(&[1.0, 0.0]), 0.0);
    }
}
