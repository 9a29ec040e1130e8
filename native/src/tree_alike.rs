//! Whether two trees of plain values certainly encode alike (`state_codec.encodes_alike`'s
//! fast test): every snapshot load compares the config it stored with the adapter's, at
//! each nesting level that is not compared by its container, ~14 comparisons of nested
//! dicts per default-config stream. In Python the walk was ~8% of restoring a young
//! such stream (one call per node, ~220 per stream).
//!
//! The answer is the Python reference's (`tests/test_tree_alike.py` holds it and compares
//! them): `true` only for the same structure of exact dicts with exact `str` keys, exact
//! lists and tuples (a list never alike a tuple), and exact `str`, `int`, `bool`, `float`
//! and `None` leaves of equal value, floats alike in sign (0.0, -0.0) and every NaN alike
//! (JSON writes `NaN`). `false` means "not certainly": the caller then compares the
//! encodings, which settle it (arrays, other types, a real difference).

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Trees nested deeper than this get `false` (the encodings decide, with the recursion
/// limit of the stdlib encoder): a pathological tree cannot exhaust this thread's stack.
const DEPTH_MAX: usize = 200;

/// What a value is, told apart by exact type only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dict,
    List,
    Tuple,
    Float,
    /// str, int, bool: alike when equal.
    Compared,
    None,
    Other,
}

fn kind_of(value: &Bound<'_, PyAny>) -> Kind {
    if value.is_exact_instance_of::<PyDict>() {
        Kind::Dict
    } else if value.is_exact_instance_of::<PyFloat>() {
        Kind::Float
    } else if value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyBool>()
    {
        Kind::Compared
    } else if value.is_exact_instance_of::<PyList>() {
        Kind::List
    } else if value.is_exact_instance_of::<PyTuple>() {
        Kind::Tuple
    } else if value.is_none() {
        Kind::None
    } else {
        Kind::Other
    }
}

/// The two floats encode alike: equal and of the same sign, or both NaN.
fn floats_alike(left: f64, right: f64) -> bool {
    if left == right {
        left != 0.0 || left.is_sign_negative() == right.is_sign_negative()
    } else {
        left.is_nan() && right.is_nan()
    }
}

/// The items of two equally long lists (or tuples) alike pairwise, one level down.
fn items_alike<'py>(
    left: impl Iterator<Item = Bound<'py, PyAny>>,
    right: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> bool {
    depth < DEPTH_MAX && left.zip(right).all(|(l, r)| alike(&l, &r, depth + 1))
}

fn alike(left: &Bound<'_, PyAny>, right: &Bound<'_, PyAny>, depth: usize) -> bool {
    let kind = kind_of(left);
    if kind != kind_of(right) {
        return false;
    }
    // (`Compared` holds three types: the same exact type on both sides is checked here.)
    if kind == Kind::Compared && !left.get_type().is(&right.get_type()) {
        return false;
    }
    match kind {
        Kind::Dict => {
            if depth >= DEPTH_MAX {
                return false;
            }
            // (exact dicts: the downcasts cannot fail)
            let (left, right) = match (left.downcast::<PyDict>(), right.downcast::<PyDict>()) {
                (Ok(left), Ok(right)) => (left, right),
                _ => return false,
            };
            if left.len() != right.len() {
                return false;
            }
            for (key, value) in left.iter() {
                if !key.is_exact_instance_of::<PyString>() {
                    return false;
                }
                match right.get_item(&key) {
                    Ok(Some(other)) => {
                        if !alike(&value, &other, depth + 1) {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
            true
        }
        Kind::List => match (left.downcast::<PyList>(), right.downcast::<PyList>()) {
            (Ok(left), Ok(right)) => {
                left.len() == right.len() && items_alike(left.iter(), right.iter(), depth)
            }
            _ => false,
        },
        Kind::Tuple => match (left.downcast::<PyTuple>(), right.downcast::<PyTuple>()) {
            (Ok(left), Ok(right)) => {
                left.len() == right.len() && items_alike(left.iter(), right.iter(), depth)
            }
            _ => false,
        },
        Kind::Float => match (left.downcast::<PyFloat>(), right.downcast::<PyFloat>()) {
            (Ok(left), Ok(right)) => floats_alike(left.value(), right.value()),
            _ => false,
        },
        // (str, int and bool compare without raising)
        Kind::Compared => left.eq(right).unwrap_or(false),
        Kind::None => true,
        Kind::Other => false,
    }
}

/// `True` when `left` and `right` certainly encode alike (see the module docs).
#[pyfunction]
fn plainly_alike(left: &Bound<'_, PyAny>, right: &Bound<'_, PyAny>) -> bool {
    alike(left, right, 0)
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(plainly_alike, module)?)
}

#[cfg(test)]
mod tests {
    use super::floats_alike;

    #[test]
    fn floats_are_alike_as_json_writes_them() {
        assert!(floats_alike(1.5, 1.5));
        assert!(floats_alike(0.0, 0.0));
        assert!(!floats_alike(0.0, -0.0));
        assert!(floats_alike(f64::NAN, -f64::NAN));
        assert!(!floats_alike(f64::NAN, 1.0));
        assert!(floats_alike(f64::INFINITY, f64::INFINITY));
        assert!(!floats_alike(f64::INFINITY, f64::NEG_INFINITY));
    }
}
