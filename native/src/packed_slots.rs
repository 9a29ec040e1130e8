//! The packed form's slots (`state_codec.PackedSlots`): made while a stream record is
//! parsed, then filled from its data bytes.
//!
//! Making ([`SlotMaker`], called by the core's JSON parser): a default-config stream's
//! record holds ~170 markers, `{"__f8__": n}` for a float list and
//! `{"__nd__": [dtype, shape]}` for an array, each a Python hook call before. The usual
//! ones, float lists and arrays of the numeric dtypes of [`Kind`], are made here,
//! exactly as `PackedSlots.hook` makes them (an empty list, an uninitialised array of the
//! shape), and appended to the same slot list in document order; any other marker, or a
//! marker spelt any other way, still goes to the hook, whose errors say what is wrong.
//!
//! Filling ([`fill_packed`]): the decoded base64 is copied into the slots in order. Each
//! array receives its own bytes as they were written (any dtype, any byte order: the
//! bytewise copy Python made with `memoryview(slot).cast("B")[:] = ...`); each float list
//! gets its values from little-endian doubles, as `frombuffer(raw, "<f8")` read them.

use numpy::npyffi::NPY_ARRAY_WRITEABLE;
use numpy::{Element, PyArrayDescrMethods, PyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

/// The float-list marker's key (`state_codec._FLOATS_TAG`).
const FLOATS_TAG: &str = "__f8__";
/// The array marker's key (`state_codec._PACKED_TAG`).
const PACKED_TAG: &str = "__nd__";
/// The byte-order character of a multi-byte dtype string in this machine's order (as
/// `pack_state` names a native array: `"<f8"` on the machines we run on).
const NATIVE_ORDER: u8 = if cfg!(target_endian = "little") {
    b'<'
} else {
    b'>'
};

/// The arrays made here: float64 above all, and the int64, uint8 and bool arrays a
/// default stream's record also holds (~11 of its ~50 arrays, each a hook call before),
/// and float32 and int32. Any other dtype goes to the hook.
#[derive(Clone, Copy)]
enum Kind {
    F8,
    I8,
    U1,
    B1,
    F4,
    I4,
}

impl Kind {
    /// The kind a dtype string names as `dtype.str` writes it: native byte order for a
    /// multi-byte kind, `|` for a one-byte one (`"<f8"`, `"|b1"`); `None` for any other.
    fn of(code: &str) -> Option<Kind> {
        let (order, name) = match code.as_bytes() {
            [order, name @ ..] => (*order, name),
            [] => return None,
        };
        let kind = match name {
            b"f8" => Kind::F8,
            b"i8" => Kind::I8,
            b"u1" => Kind::U1,
            b"b1" => Kind::B1,
            b"f4" => Kind::F4,
            b"i4" => Kind::I4,
            _ => return None,
        };
        let wanted = if kind.item_size() == 1 {
            b'|'
        } else {
            NATIVE_ORDER
        };
        (order == wanted).then_some(kind)
    }

    fn item_size(self) -> usize {
        match self {
            Kind::F8 | Kind::I8 => 8,
            Kind::F4 | Kind::I4 => 4,
            Kind::U1 | Kind::B1 => 1,
        }
    }

    /// An uninitialised C-ordered array of this kind and `dims`, as `np.empty` makes it.
    fn empty<'py>(self, py: Python<'py>, dims: Vec<usize>) -> Bound<'py, PyAny> {
        match self {
            Kind::F8 => empty::<f64>(py, dims),
            Kind::I8 => empty::<i64>(py, dims),
            Kind::U1 => empty::<u8>(py, dims),
            Kind::B1 => empty::<bool>(py, dims),
            Kind::F4 => empty::<f32>(py, dims),
            Kind::I4 => empty::<i32>(py, dims),
        }
    }
}

/// See [`Kind::empty`].
fn empty<T: Element>(py: Python<'_>, dims: Vec<usize>) -> Bound<'_, PyAny> {
    // SAFETY: the array's memory is left uninitialised, as `np.empty` leaves it: no Rust
    // reference to its elements is ever made here (so no `bool` with another byte than 0
    // or 1 is ever read by Rust; NumPy holds any byte), and `fill_packed` writes all of
    // it, bytewise, before the tree is used (a record whose data does not cover its slots
    // is refused there).
    unsafe { PyArrayDyn::<T>::new(py, dims, false) }.into_any()
}

/// Makes the usual markers' slots during a parse (see the module docs).
pub struct SlotMaker<'py, 'a> {
    slots: &'a Bound<'py, PyList>,
    /// Bytes the arrays made here name, refused past `limit` before one is allocated.
    claimed: usize,
    /// The text's length: its base64 data cannot hold more bytes.
    limit: usize,
}

impl<'py, 'a> SlotMaker<'py, 'a> {
    pub fn new(slots: &'a Bound<'py, PyList>, limit: usize) -> Self {
        SlotMaker {
            slots,
            claimed: 0,
            limit,
        }
    }

    /// The slot a one-key marker object stands for, appended to the slots, or `None` for
    /// any object left to the hook. ValueError when an array's bytes would pass the
    /// limit (as `PackedSlots._claim` refuses it).
    pub fn make(&mut self, object: &Bound<'py, PyDict>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if object.len() != 1 {
            return Ok(None);
        }
        if let Some(count) = object.get_item(FLOATS_TAG)? {
            return self.float_list(&count);
        }
        match object.get_item(PACKED_TAG)? {
            Some(spec) => self.array(&spec),
            None => Ok(None),
        }
    }

    /// `{"__f8__": n}`, `n` a non-negative int: an empty list, appended as `(list, n)`.
    fn float_list(&mut self, count: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        if natural(count).is_none() {
            return Ok(None);
        }
        let list = PyList::empty(count.py());
        self.slots.append((list.clone(), count))?;
        Ok(Some(list.into_any()))
    }

    /// `{"__nd__": [dtype, shape]}` for a dtype of a [`Kind`] and a shape of
    /// non-negative ints: an uninitialised C-ordered array of that dtype and shape.
    fn array(&mut self, spec: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let spec = match spec.downcast_exact::<PyList>() {
            Ok(spec) if spec.len() == 2 => spec,
            _ => return Ok(None),
        };
        let (code, shape) = (spec.get_item(0)?, spec.get_item(1)?);
        let kind = code
            .downcast_exact::<PyString>()
            .ok()
            .and_then(|code| code.to_str().ok().and_then(Kind::of));
        let (kind, shape) = match (kind, shape.downcast_exact::<PyList>()) {
            (Some(kind), Ok(shape)) => (kind, shape),
            _ => return Ok(None),
        };
        let mut dims = Vec::with_capacity(shape.len());
        let mut elements: usize = 1;
        for dim in shape.iter() {
            match natural(&dim) {
                Some(n) => {
                    dims.push(n);
                    elements = elements.saturating_mul(n);
                }
                None => return Ok(None),
            }
        }
        self.claimed = self
            .claimed
            .saturating_add(elements.saturating_mul(kind.item_size()));
        if self.claimed > self.limit {
            return Err(PyValueError::new_err(format!(
                "state: packed arrays name {} bytes or more, more than their data's {} \
                 bytes can hold",
                self.claimed, self.limit
            )));
        }
        let array = kind.empty(spec.py(), dims);
        self.slots.append(&array)?;
        Ok(Some(array))
    }
}

/// An exact non-negative int that fits an i64, as a usize.
fn natural(value: &Bound<'_, PyAny>) -> Option<usize> {
    if !value.is_exact_instance_of::<PyInt>() {
        return None;
    }
    match value.extract::<i64>() {
        Ok(n) if n >= 0 => usize::try_from(n).ok(),
        _ => None,
    }
}

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

/// The bytes of `arrays`, one after the other: what `b"".join(a.tobytes() for a in
/// arrays)` gives, in one copy per array (a mature stream's record names ~210 arrays;
/// their `tobytes` calls and the join took ~100 µs of writing it). A C-contiguous array's
/// bytes are its memory as it is (what `tobytes` copies); any other array's come from
/// its own `tobytes()`, as before.
#[pyfunction]
fn packed_bytes<'py>(
    py: Python<'py>,
    arrays: &Bound<'py, PyList>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut pieces: Vec<Piece<'py>> = Vec::with_capacity(arrays.len());
    let mut total: usize = 0;
    for item in arrays.iter() {
        let array = item.downcast::<PyUntypedArray>()?;
        let size = array.len().saturating_mul(array.dtype().itemsize());
        let piece = if array.is_c_contiguous() {
            Piece::Memory(array.clone(), size)
        } else {
            let bytes = item.call_method0("tobytes")?.downcast_into::<PyBytes>()?;
            Piece::Copied(bytes)
        };
        total = total.saturating_add(match &piece {
            Piece::Memory(_, size) => *size,
            Piece::Copied(bytes) => bytes.as_bytes().len(),
        });
        pieces.push(piece);
    }
    PyBytes::new_with(py, total, |out| {
        let mut at = 0;
        for piece in &pieces {
            match piece {
                Piece::Memory(array, size) => {
                    if *size > 0 {
                        // SAFETY: the array is C-contiguous, so its data pointer starts
                        // `len * itemsize` = `size` bytes of its elements; `out` is the
                        // fresh bytes object's buffer of `total` bytes, of which
                        // `at..at + size` is still unwritten (the sizes were summed
                        // above, and nothing runs Python code in between: the GIL is
                        // held, and no array can change). The copy is bytewise: no
                        // alignment assumed.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                (*array.as_array_ptr()).data as *const u8,
                                out[at..at + size].as_mut_ptr(),
                                *size,
                            );
                        }
                    }
                    at += size;
                }
                Piece::Copied(bytes) => {
                    let bytes = bytes.as_bytes();
                    out[at..at + bytes.len()].copy_from_slice(bytes);
                    at += bytes.len();
                }
            }
        }
        Ok(())
    })
}

/// One array's share of [`packed_bytes`]: its memory (C-contiguous, with its byte
/// count), or what its `tobytes()` gave.
enum Piece<'py> {
    Memory(Bound<'py, PyUntypedArray>, usize),
    Copied(Bound<'py, PyBytes>),
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(fill_packed, module)?)?;
    module.add_function(wrap_pyfunction!(packed_bytes, module)?)
}
