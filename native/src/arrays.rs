//! NumPy arrays made and read through NumPy's C API (rust-numpy) rather than a Python
//! call (`numpy.empty`, `numpy.array(list)`) or the buffer protocol. The per-record path
//! makes one or two small arrays per prediction and reads them back with its label;
//! each Python-level route cost several times the copy itself.

use numpy::{PyArray0, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A new one-dimensional float64 array holding `values`.
pub fn vector<'py>(py: Python<'py>, values: &[f64]) -> Bound<'py, PyArray1<f64>> {
    PyArray1::from_slice(py, values)
}

/// A new zero-dimensional float64 array holding `value` (a regression output).
pub fn scalar(py: Python<'_>, value: f64) -> Bound<'_, PyArray0<f64>> {
    // SAFETY: `new` leaves the one element uninitialised; the array was just made and
    // nothing else can reach it yet, and its element is written here before it is
    // handed out.
    unsafe {
        let array = PyArray0::<f64>::new(py, [], false);
        array.data().write(value);
        array
    }
}

/// A new C-ordered `(rows, columns)` float64 array holding `values` row by row.
pub fn matrix<'py>(
    py: Python<'py>,
    values: &[f64],
    rows: usize,
    columns: usize,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    if rows.checked_mul(columns) != Some(values.len()) {
        return Err(PyValueError::new_err(format!(
            "matrix: {} values do not fill {rows} x {columns}",
            values.len()
        )));
    }
    // SAFETY: `new` leaves the elements uninitialised; the array was just made,
    // C-ordered and `rows * columns` elements long, nothing else (Python or Rust) can
    // reach it yet, and all of its elements are written here before it is handed out.
    unsafe {
        let array = PyArray2::<f64>::new(py, [rows, columns], false);
        std::ptr::copy_nonoverlapping(values.as_ptr(), array.data(), values.len());
        Ok(array)
    }
}

/// The values of a C-contiguous float64 NumPy array (native byte order, any shape) in
/// memory order; `None` for anything else (a list, another dtype, a strided view), which
/// callers read their slower way.
pub fn read(value: &Bound<'_, PyAny>) -> Option<Vec<f64>> {
    contiguous_values(value.downcast::<PyArrayDyn<f64>>().ok()?)
}

/// The values, row after row, of a C-contiguous `(rows, columns)` float64 array; `None`
/// for anything else (another number of columns included), which callers read their
/// slower way, refusing what does not fit there.
pub fn matrix_values(value: &Bound<'_, PyAny>, columns: usize) -> Option<Vec<f64>> {
    let array = value.downcast::<PyArrayDyn<f64>>().ok()?;
    if array.ndim() != 2 || array.shape()[1] != columns {
        return None;
    }
    contiguous_values(array)
}

/// The elements of a C-contiguous float64 array in a new vector; `None` for a strided one.
fn contiguous_values(array: &Bound<'_, PyArrayDyn<f64>>) -> Option<Vec<f64>> {
    if !array.is_c_contiguous() {
        return None;
    }
    let mut out = vec![0.0; array.len()];
    copy_contiguous(array, &mut out);
    Some(out)
}

/// `value` copied into `out` when it is a C-contiguous float64 NumPy array (native byte
/// order) of exactly `shape`: `Some(true)`; `Some(false)` for such an array of another
/// shape; `None` for anything else, which callers read their slower way (the buffer
/// protocol), so what they accept does not change.
pub fn copy_exact(value: &Bound<'_, PyAny>, shape: &[usize], out: &mut [f64]) -> Option<bool> {
    let array = value.downcast::<PyArrayDyn<f64>>().ok()?;
    if !array.is_c_contiguous() {
        return None;
    }
    if array.shape() != shape || array.len() != out.len() {
        return Some(false);
    }
    copy_contiguous(array, out);
    Some(true)
}

/// The elements of a C-contiguous float64 array copied into `out` (as long), byte for
/// byte. Not through rust-numpy's borrow checker (`try_readonly`): its registration and
/// release cost more than the copy of a few numbers, and it protects nothing here; no
/// Rust reference into the array is made, so this is the memory copy the buffer
/// protocol's `PyBuffer_ToContiguous` (the slower way) makes of the same bytes.
fn copy_contiguous(array: &Bound<'_, PyArrayDyn<f64>>, out: &mut [f64]) {
    let bytes = std::mem::size_of_val(out);
    debug_assert_eq!(array.len(), out.len());
    if bytes == 0 {
        return;
    }
    // SAFETY: `array` is C-contiguous (checked by every caller) with `array.len()`
    // elements of 8 bytes (its dtype is float64: the downcast checked it), so its data
    // pointer starts `bytes` readable bytes; `out` is a distinct Rust allocation of the
    // same length. The copy is bytewise (`u8`), so neither side needs f64 alignment (a
    // NumPy array may be unaligned), and it runs with the GIL held, as the buffer
    // protocol's copy does.
    unsafe {
        std::ptr::copy_nonoverlapping(
            array.data() as *const u8,
            out.as_mut_ptr() as *mut u8,
            bytes,
        );
    }
}

/// Whether `value` is an array of the kind `read` takes (what a caller checks before it
/// changes anything: `read` then reads it).
pub fn is_readable(value: &Bound<'_, PyAny>) -> bool {
    match value.downcast::<PyArrayDyn<f64>>() {
        Ok(array) => array.is_c_contiguous(),
        Err(_) => false,
    }
}

/// `[1 - q, q]` as a new float64 array: a binary calibrator's output for its class-1
/// probability `q` (Python's `1.0 - q`, the same double).
#[pyfunction]
pub fn binary_output(py: Python<'_>, q: f64) -> Bound<'_, PyArray1<f64>> {
    vector(py, &[1.0 - q, q])
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(binary_output, module)?)
}
