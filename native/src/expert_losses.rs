//! What the exponential-weights ensembles (Hedge, FixedShare) share: one event's model
//! outputs checked the quick way, each model's loss on a label, and the weighted mixture.
//!
//! Arithmetic order (the reference for every port, `tests/reference/`): every sum runs
//! left to right over the model index `k = 0..K-1` (or the class index), starting from
//! the first term. numpy's `weights @ outputs` (BLAS) and `math.fsum` (exactly rounded)
//! differ from it in the last place or two; the differential tests bound that.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::arrays;

/// Absolute tolerance on `sum(p) == 1`, as `validation.PROBABILITY_TOLERANCE`.
pub const PROBABILITY_TOLERANCE: f64 = 1e-3;
/// A quick look clears a row only this far inside the tolerance (`_QUICK_SUM_MARGIN`);
/// rows at the edge go back to Python's full check, which decides and names the problem.
const QUICK_SUM_MARGIN: f64 = 1e-12;

/// The loss a model pays on one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// `-ln max(p_y, floor)` (classification only).
    Log,
    /// Squared error; the Brier score for classification.
    Squared,
    /// Absolute error; `1 - p_y` for classification.
    Absolute,
}

impl Loss {
    /// The loss named as in Python's `loss=` option.
    pub fn parse(name: &str) -> Option<Loss> {
        match name {
            "log" => Some(Loss::Log),
            "squared" => Some(Loss::Squared),
            "absolute" => Some(Loss::Absolute),
            _ => None,
        }
    }
}

/// What happened: a class index or a real target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Class(usize),
    Value(f64),
}

/// The shape of one event (K models, C classes or regression) and the loss in use.
#[derive(Clone, Debug)]
pub struct Experts {
    pub n_models: usize,
    pub n_classes: Option<usize>,
    pub loss: Loss,
    pub probability_floor: f64,
}

impl Experts {
    /// Numbers per model: C, or 1 for regression.
    pub fn width(&self) -> usize {
        self.n_classes.unwrap_or(1)
    }

    /// Numbers per event: K * C, or K.
    pub fn event_len(&self) -> usize {
        self.n_models * self.width()
    }

    /// Check one event's outputs in place, renormalising probability rows by their
    /// left-to-right sum, when they are clearly valid (the quick check of
    /// `validation.check_probability_vector`). `false`: not cleared here; Python's full
    /// check decides (and raises with the field named).
    pub fn clear_outputs(&self, values: &mut [f64]) -> bool {
        if values.len() != self.event_len() {
            return false;
        }
        match self.n_classes {
            None => values.iter().all(|value| value.is_finite()),
            Some(classes) => {
                let high = 1.0 + PROBABILITY_TOLERANCE;
                for row in values.chunks_exact_mut(classes) {
                    let mut total = 0.0;
                    for &item in row.iter() {
                        // `!(0 <= p <= high)` is also true for NaN; inf is above `high`.
                        if !(0.0..=high).contains(&item) {
                            return false;
                        }
                        total += item;
                    }
                    if (total - 1.0).abs() > PROBABILITY_TOLERANCE - QUICK_SUM_MARGIN {
                        return false;
                    }
                    for item in row.iter_mut() {
                        *item /= total;
                    }
                }
                true
            }
        }
    }

    /// Each model's loss on one event (`outputs` already checked), written to `out`.
    pub fn losses(&self, outputs: &[f64], target: Target, out: &mut [f64]) {
        match (self.n_classes, target) {
            (None, Target::Value(label)) => {
                for (slot, &output) in out.iter_mut().zip(outputs) {
                    let error = output - label;
                    *slot = match self.loss {
                        Loss::Absolute => error.abs(),
                        _ => error * error,
                    };
                }
            }
            (Some(classes), Target::Class(label)) => {
                for (slot, row) in out.iter_mut().zip(outputs.chunks_exact(classes)) {
                    let chance = row[label];
                    *slot = match self.loss {
                        Loss::Log => -chance.max(self.probability_floor).ln(),
                        Loss::Absolute => 1.0 - chance,
                        Loss::Squared => {
                            let mut brier = 0.0;
                            for &p in row {
                                brier += p * p;
                            }
                            brier - 2.0 * chance + 1.0
                        }
                    };
                }
            }
            // The handles never mix the two; a mismatch is a bug, and NaN is refused.
            _ => out.iter_mut().for_each(|slot| *slot = f64::NAN),
        }
    }

    /// The weighted mixture of one event's outputs: `out[c] = Σ_k w_k o_kc`, k ascending.
    pub fn mix(&self, weights: &[f64], outputs: &[f64], out: &mut [f64]) {
        let width = self.width();
        for (c, slot) in out.iter_mut().enumerate().take(width) {
            let mut total = 0.0;
            for (k, &weight) in weights.iter().enumerate() {
                total += weight * outputs[k * width + c];
            }
            *slot = total;
        }
    }
}

/// `true` when the losses can be applied: every one finite and so is their sum taken left
/// to right (an overflowing sum means the running totals would overflow too). The rule of
/// `validation.check_finite_update`, per event.
pub fn finite_update(losses: &[f64]) -> bool {
    let mut total = 0.0;
    for &loss in losses {
        total += loss;
    }
    total.is_finite()
}

/// The smallest value (NaN-free inputs).
pub fn minimum(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Left-to-right sum.
pub fn sum(values: &[f64]) -> f64 {
    let mut total = 0.0;
    for &value in values {
        total += value;
    }
    total
}

// -- PyO3 glue shared by the ensemble handles -----------------------------------------

/// One event's raw outputs from a C-contiguous float64 buffer of exactly `shape`, copied
/// into `out` through the quick check; `false` when the object is anything else or is not
/// cleared (the Python handle then runs the full check).
pub fn read_event(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    experts: &Experts,
    out: &mut [f64],
) -> bool {
    let fast = match experts.n_classes {
        None => arrays::copy_exact(x, &[experts.n_models], out),
        Some(classes) => arrays::copy_exact(x, &[experts.n_models, classes], out),
    };
    if let Some(read) = fast {
        return read && experts.clear_outputs(out);
    }
    let buffer = match PyBuffer::<f64>::get(x) {
        Ok(buffer) => buffer,
        Err(_) => return false,
    };
    if !native_float64(&buffer) {
        return false;
    }
    let shape_ok = match experts.n_classes {
        None => buffer.shape() == [experts.n_models],
        Some(classes) => buffer.shape() == [experts.n_models, classes],
    };
    if !shape_ok {
        return false;
    }
    let cells = match buffer.as_slice(py) {
        Some(cells) => cells,
        None => return false,
    };
    if cells.len() != out.len() {
        return false;
    }
    for (slot, cell) in out.iter_mut().zip(cells) {
        *slot = cell.get();
    }
    experts.clear_outputs(out)
}

/// The label of one event when it is clearly valid: a Python int in `0..C`, or a finite
/// Python float or int for regression. `None`: Python's full check decides.
pub fn read_target(y: &Bound<'_, PyAny>, experts: &Experts) -> Option<Target> {
    use pyo3::types::{PyFloat, PyInt};
    match experts.n_classes {
        Some(classes) => {
            if !y.is_instance_of::<PyInt>() {
                return None;
            }
            let label: i64 = y.extract().ok()?;
            (0..classes as i64)
                .contains(&label)
                .then_some(Target::Class(label as usize))
        }
        None => {
            if !(y.is_instance_of::<PyFloat>() || y.is_instance_of::<PyInt>()) {
                return None;
            }
            let value: f64 = y.extract().ok()?;
            value.is_finite().then_some(Target::Value(value))
        }
    }
}

/// `true` when the buffer holds float64 in this machine's byte order. PyO3 takes any
/// 8-byte float format as `f64`, a byte-swapped one (`>f8` on x86) included, whose
/// values it would read as garbage.
pub fn native_float64(buffer: &PyBuffer<f64>) -> bool {
    let format = buffer.format().to_bytes();
    let swapped_free: &[u8] = if cfg!(target_endian = "little") {
        b"<d"
    } else {
        b">d"
    };
    format == b"d" || format == b"@d" || format == b"=d" || format == swapped_free
}

/// Write `values` into `out`, a writable, C-contiguous native float64 buffer of their size.
pub fn write_native(py: Python<'_>, out: &Bound<'_, PyAny>, values: &[f64]) -> PyResult<()> {
    let buffer = PyBuffer::<f64>::get(out)?;
    if !native_float64(&buffer) {
        return Err(PyValueError::new_err(
            "out: expected a native float64 array",
        ));
    }
    buffer.copy_from_slice(py, values)
}

/// A checked batch as one flat vector: a C-contiguous float64 buffer, or any sequence.
pub fn read_flat(py: Python<'_>, values: &Bound<'_, PyAny>) -> PyResult<Vec<f64>> {
    if let Some(values) = arrays::read(values) {
        return Ok(values); // a NumPy array: no buffer protocol
    }
    if let Ok(buffer) = PyBuffer::<f64>::get(values) {
        if buffer.is_c_contiguous() && native_float64(&buffer) {
            return buffer.to_vec(py);
        }
    }
    values.extract()
}

/// Checked targets of a batch (classes passed as floats) for this experts' kind.
pub fn targets_of(labels: &[f64], experts: &Experts) -> PyResult<Vec<Target>> {
    labels
        .iter()
        .map(|&label| match experts.n_classes {
            None => Ok(Target::Value(label)),
            Some(classes) => {
                if label >= 0.0 && label < classes as f64 && label.fract() == 0.0 {
                    Ok(Target::Class(label as usize))
                } else {
                    Err(PyValueError::new_err(format!(
                        "label: unknown class {label}, expected 0..{}",
                        classes - 1
                    )))
                }
            }
        })
        .collect()
}

/// Build the experts of a handle, refusing what Python's constructor would.
pub fn experts_from(
    n_models: usize,
    n_classes: Option<usize>,
    loss: &str,
    probability_floor: f64,
) -> PyResult<Experts> {
    let loss = Loss::parse(loss)
        .ok_or_else(|| PyValueError::new_err(format!("loss: unknown loss {loss:?}")))?;
    if n_models == 0 || n_classes.map_or(false, |c| c < 2) {
        return Err(PyValueError::new_err(
            "n_models >= 1 and n_classes >= 2 or None",
        ));
    }
    if loss == Loss::Log && n_classes.is_none() {
        return Err(PyValueError::new_err(
            "loss: 'log' needs class probabilities",
        ));
    }
    Ok(Experts {
        n_models,
        n_classes,
        loss,
        probability_floor,
    })
}

/// An exponential-weights mixer as its handle drives it: weights to mix with, and one
/// event's per-model losses to learn from (already checked finite).
pub trait Mixer {
    fn experts(&self) -> &Experts;
    fn weights(&self) -> &[f64];
    fn learn_losses(&mut self, losses: &[f64]);
}

/// Scratch space of a handle, so the per-event verbs allocate nothing but their result.
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    pub(crate) outputs: Vec<f64>,
    pub(crate) losses: Vec<f64>,
}

impl Scratch {
    pub fn new(experts: &Experts) -> Scratch {
        Scratch {
            outputs: vec![0.0; experts.event_len()],
            losses: vec![0.0; experts.n_models],
        }
    }
}

/// `predict(x)` when `x` clears the quick check: the C mixed probabilities (or the one
/// mixed value) written into the writable float64 buffer `out`; `false` otherwise, with
/// `out` untouched.
pub fn predict_quick<M: Mixer>(
    py: Python<'_>,
    mixer: &M,
    scratch: &mut Scratch,
    x: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    if !read_event(py, x, mixer.experts(), &mut scratch.outputs) {
        return Ok(false);
    }
    let width = mixer.experts().width();
    let mut mixed = [0.0; 16];
    let mut long = Vec::new();
    let slot: &mut [f64] = if width <= mixed.len() {
        &mut mixed[..width]
    } else {
        long.resize(width, 0.0);
        &mut long
    };
    mixer.experts().mix(mixer.weights(), &scratch.outputs, slot);
    write_native(py, out, slot)?;
    Ok(true)
}

/// `predict(x)` for regression when `x` clears the quick check: the mixed value.
pub fn predict_value_quick<M: Mixer>(
    py: Python<'_>,
    mixer: &M,
    scratch: &mut Scratch,
    x: &Bound<'_, PyAny>,
) -> Option<f64> {
    if mixer.experts().n_classes.is_some()
        || !read_event(py, x, mixer.experts(), &mut scratch.outputs)
    {
        return None;
    }
    let mut mixed = [0.0];
    mixer
        .experts()
        .mix(mixer.weights(), &scratch.outputs, &mut mixed);
    Some(mixed[0])
}

/// The mixture of every event of a checked batch (flat, `n * K * C`), `n * C` values.
pub fn predict_checked<M: Mixer>(mixer: &M, outputs: &[f64]) -> Vec<f64> {
    let experts = mixer.experts();
    let width = experts.width();
    let events = outputs.len() / experts.event_len().max(1);
    let mut out = vec![0.0; events * width];
    for (event, slot) in outputs
        .chunks_exact(experts.event_len())
        .zip(out.chunks_exact_mut(width))
    {
        experts.mix(mixer.weights(), event, slot);
    }
    out
}

/// `learn(x, y)` when both clear the quick checks and the update is finite; `false`
/// otherwise, with nothing changed (the handle then checks fully and raises).
pub fn learn_quick<M: Mixer>(
    py: Python<'_>,
    mixer: &mut M,
    scratch: &mut Scratch,
    x: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
) -> bool {
    if !read_event(py, x, mixer.experts(), &mut scratch.outputs) {
        return false;
    }
    learn_cleared(mixer, scratch, y)
}

/// The rest of `learn` once the event's outputs in `scratch.outputs` cleared the quick
/// check: the label's quick check, the losses, the finiteness guard and the step;
/// `false` with nothing changed when the label or the update is refused.
pub fn learn_cleared<M: Mixer>(mixer: &mut M, scratch: &mut Scratch, y: &Bound<'_, PyAny>) -> bool {
    let target = match read_target(y, mixer.experts()) {
        Some(target) => target,
        None => return false,
    };
    mixer
        .experts()
        .losses(&scratch.outputs, target, &mut scratch.losses);
    if !finite_update(&scratch.losses) {
        return false;
    }
    mixer.learn_losses(&scratch.losses);
    true
}

/// Learn a checked batch in order, all or nothing: `false` (nothing changed) when any
/// event's update is not finite.
pub fn learn_checked<M: Mixer>(mixer: &mut M, outputs: &[f64], labels: &[f64]) -> PyResult<bool> {
    let experts = mixer.experts().clone();
    if outputs.len() != labels.len() * experts.event_len() {
        return Err(PyValueError::new_err(format!(
            "learn_many: {} outputs for {} labels",
            outputs.len(),
            labels.len()
        )));
    }
    let targets = targets_of(labels, &experts)?;
    let mut losses = vec![0.0; targets.len() * experts.n_models];
    for ((event, &target), row) in outputs
        .chunks_exact(experts.event_len())
        .zip(&targets)
        .zip(losses.chunks_exact_mut(experts.n_models))
    {
        experts.losses(event, target, row);
        if !finite_update(row) {
            return Ok(false);
        }
    }
    for row in losses.chunks_exact(experts.n_models) {
        mixer.learn_losses(row);
    }
    Ok(true)
}

/// A state vector of K values from a snapshot, refused with its name when it is not.
pub fn state_vector(values: Vec<f64>, name: &str, n_models: usize) -> PyResult<Vec<f64>> {
    if values.len() != n_models {
        return Err(PyValueError::new_err(format!(
            "{name}: expected {n_models} values (one per model), got {}; the snapshot is \
             of another configuration",
            values.len()
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(loss: Loss) -> Experts {
        Experts {
            n_models: 2,
            n_classes: Some(2),
            loss,
            probability_floor: 1e-6,
        }
    }

    #[test]
    fn quick_check_renormalises_and_refuses() {
        let experts = classes(Loss::Log);
        let mut good = [0.3, 0.7005, 0.5, 0.5];
        assert!(experts.clear_outputs(&mut good));
        assert_eq!(good[0], 0.3 / (0.3 + 0.7005));
        assert!(!experts.clear_outputs(&mut [f64::NAN, 1.0, 0.5, 0.5]));
        assert!(!experts.clear_outputs(&mut [0.2, 0.2, 0.5, 0.5]));
        assert!(!experts.clear_outputs(&mut [-0.1, 1.1, 0.5, 0.5]));
        assert!(!experts.clear_outputs(&mut [0.5, 0.5]));
    }

    #[test]
    fn losses_per_kind() {
        let mut out = [0.0; 2];
        let outputs = [0.25, 0.75, 0.0, 1.0];
        classes(Loss::Log).losses(&outputs, Target::Class(0), &mut out);
        assert_eq!(out, [-(0.25f64).ln(), -(1e-6f64).ln()]);
        classes(Loss::Absolute).losses(&outputs, Target::Class(1), &mut out);
        assert_eq!(out, [0.25, 0.0]);
        classes(Loss::Squared).losses(&outputs, Target::Class(1), &mut out);
        assert_eq!(out, [0.125, 0.0]);
        let regression = Experts {
            n_models: 2,
            n_classes: None,
            loss: Loss::Absolute,
            probability_floor: 1e-6,
        };
        regression.losses(&[1.0, -2.0], Target::Value(0.5), &mut out);
        assert_eq!(out, [0.5, 2.5]);
    }

    #[test]
    fn overflowing_sum_is_not_finite() {
        assert!(finite_update(&[1.0, 2.0]));
        assert!(!finite_update(&[1.7e308, 1.7e308]));
        assert!(!finite_update(&[f64::NAN, 0.0]));
    }
}
