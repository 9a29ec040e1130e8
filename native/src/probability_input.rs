//! The per-event input check of the calibrators, in the core: a fast path of Python's
//! `check_probability_vector` and `check_class_label` (`streamweights/adapters/validation.py`).
//!
//! It clears only what Python's fast path clears, with the same arithmetic: a list or
//! tuple of `n` floats, or a C-contiguous float64 buffer (a numpy row) of shape `(n,)`,
//! every entry in `[0, 1 + tolerance]`, summing (left to right) to 1 well inside the
//! tolerance; the result is renormalised `p_k / total`. A label is cleared when it is a
//! plain `int` in `[0, n)`. Anything else returns "not cleared" and the Python adapter
//! runs its own checks, which raise with the usual message or accept: so an input is
//! accepted with the same numbers, or refused with the same error, on either path.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyList, PyTuple};

use crate::arrays;

/// Absolute tolerance on `sum(p) == 1` (validation.py's `PROBABILITY_TOLERANCE`).
pub const PROBABILITY_TOLERANCE: f64 = 1e-3;
/// Sums this close to the tolerance's edge go to Python's full check (`_QUICK_SUM_MARGIN`).
const QUICK_SUM_MARGIN: f64 = 1e-12;

fn float_items<'py, I>(items: I, out: &mut [f64]) -> bool
where
    I: Iterator<Item = Bound<'py, PyAny>>,
{
    for (slot, item) in out.iter_mut().zip(items) {
        match item.downcast::<PyFloat>() {
            Ok(value) => *slot = value.value(),
            Err(_) => return false,
        }
    }
    true
}

/// `x` renormalised into `out` (length `n`) when the fast path clears it.
pub fn quick_probabilities(x: &Bound<'_, PyAny>, out: &mut [f64]) -> bool {
    let n = out.len();
    let read = if let Ok(list) = x.downcast_exact::<PyList>() {
        list.len() == n && float_items(list.iter(), out)
    } else if let Ok(tuple) = x.downcast_exact::<PyTuple>() {
        tuple.len() == n && float_items(tuple.iter(), out)
    } else if let Some(read) = arrays::copy_exact(x, &[n], out) {
        read
    } else {
        match PyBuffer::<f64>::get(x) {
            Ok(buffer) => {
                buffer.shape() == [n]
                    && buffer.is_c_contiguous()
                    && buffer.copy_to_slice(x.py(), out).is_ok()
            }
            Err(_) => false,
        }
    };
    read && clear_probabilities(out)
}

/// The fast path's check of values already read: every entry in `[0, 1 + tolerance]`,
/// the left-to-right sum well inside the tolerance; renormalised in place. `false`: not
/// cleared (the values may be half renormalised; callers keep their own copy).
pub fn clear_probabilities(out: &mut [f64]) -> bool {
    let high = 1.0 + PROBABILITY_TOLERANCE;
    let mut total = 0.0;
    for &value in out.iter() {
        if !(0.0 <= value && value <= high) {
            return false; // also NaN; inf is above `high`
        }
        total += value;
    }
    if (total - 1.0).abs() > PROBABILITY_TOLERANCE - QUICK_SUM_MARGIN {
        return false;
    }
    for value in out.iter_mut() {
        *value /= total;
    }
    true
}

/// The class label `y` when it is a plain `int` in `[0, n_classes)`.
pub fn quick_label(y: &Bound<'_, PyAny>, n_classes: usize) -> Option<i64> {
    let label: i64 = y.downcast_exact::<PyInt>().ok()?.extract().ok()?;
    if label >= 0 && (label as u64) < n_classes as u64 {
        Some(label)
    } else {
        None
    }
}
