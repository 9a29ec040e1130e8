//! Filling a parsed packed tree's slots from its data bytes (`state_codec.PackedSlots.fill`):
//! the parser made each marker's array (empty) or float list, in document order; here the
//! decoded base64 is copied into them in that order. A default-config stream's record
//! holds ~180 slots; in Python the per-slot work (a memoryview cast and copy per array, a
//! `frombuffer(...).tolist()` per float list) was ~7% of restoring such a stream.
//!
//! Each array receives its own bytes as they were written (any dtype, any byte order:
//! the bytewise copy Python made with `memoryview(slot).cast("B")[:] = ...`); each float
//! list gets its values from little-endian doubles, as `frombuffer(raw, "<f8")` read them.

use numpy::npyffi::NPY_ARRAY_WRITEABLE;
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

/// `raw[offset..offset + size]`, or the error a record too short for its slots gets.
fn bytes_at(raw: &[u8], offset: usize, size: usize) -> PyResult<&[u8]> {
    offset
        .checked_add(size)
        .and_then(|end| raw.get(offset..end))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "state: packed arrays end at byte {}, a slot of {} bytes starts at {}",
                raw.len(),
                size,
                offset
            ))
        })
}

/// A float list's values, `count` little-endian doubles at `offset`; returns the bytes
/// taken.
fn fill_floats(
    values: &Bound<'_, PyList>,
    count: usize,
    raw: &[u8],
    offset: usize,
) -> PyResult<usize> {
    let size = count.saturating_mul(8);
    let bytes = bytes_at(raw, offset, size)?;
    for chunk in bytes.chunks_exact(8) {
        let mut double = [0u8; 8];
        double.copy_from_slice(chunk);
        values.append(f64::from_le_bytes(double))?;
    }
    Ok(size)
}

/// An array's memory, its own bytes at `offset`; returns the bytes taken.
fn fill_array(array: &Bound<'_, PyUntypedArray>, raw: &[u8], offset: usize) -> PyResult<usize> {
    let size = array.len().saturating_mul(array.dtype().itemsize());
    if size == 0 {
        return Ok(0);
    }
    let bytes = bytes_at(raw, offset, size)?;
    // SAFETY: reading the flags word of a live array object (the GIL is held).
    let writeable = unsafe { (*array.as_array_ptr()).flags & NPY_ARRAY_WRITEABLE != 0 };
    if !array.is_c_contiguous() || !writeable {
        return Err(PyValueError::new_err(
            "state: a packed slot is not a writeable C-contiguous array",
        ));
    }
    // SAFETY: the array is C-contiguous and writeable, its data holds `len * itemsize`
    // = `size` bytes from its data pointer; `bytes` is exactly `size` bytes of a distinct
    // Python bytes object. The copy is bytewise, so no alignment is assumed, and it runs
    // with the GIL held; no Rust reference into the array's memory exists (the slot was
    // made empty by the parser's hook and is reached by nothing else yet).
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (*array.as_array_ptr()).data as *mut u8,
            size,
        );
    }
    Ok(size)
}

/// The bytes a slot takes: `count` doubles, or the array's `len * itemsize`.
fn slot_size(slot: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(pair) = slot.downcast::<PyTuple>() {
        let count: usize = pair.get_item(1)?.extract()?;
        Ok(count.saturating_mul(8))
    } else {
        let array = slot.downcast::<PyUntypedArray>()?;
        Ok(array.len().saturating_mul(array.dtype().itemsize()))
    }
}

/// Fill `slots` (arrays, and `(list, count)` pairs for float lists) from `raw`, in order;
/// ValueError, before anything is filled, if `raw` does not hold exactly their bytes.
#[pyfunction]
fn fill_packed(slots: &Bound<'_, PyList>, raw: &[u8]) -> PyResult<()> {
    let mut total: usize = 0;
    for slot in slots.iter() {
        total = total.saturating_add(slot_size(&slot)?);
    }
    if total != raw.len() {
        return Err(PyValueError::new_err(format!(
            "state: packed arrays take {} bytes, {} were written",
            total,
            raw.len()
        )));
    }
    let mut offset = 0;
    for slot in slots.iter() {
        let taken = if let Ok(pair) = slot.downcast::<PyTuple>() {
            let values = pair.get_item(0)?;
            let count: usize = pair.get_item(1)?.extract()?;
            fill_floats(values.downcast::<PyList>()?, count, raw, offset)?
        } else {
            fill_array(slot.downcast::<PyUntypedArray>()?, raw, offset)?
        };
        offset += taken;
    }
    if offset != raw.len() {
        return Err(PyValueError::new_err(format!(
            "state: packed arrays take {} bytes, {} were written",
            offset,
            raw.len()
        )));
    }
    Ok(())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(fill_packed, module)?)
}
