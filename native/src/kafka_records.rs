//! The records of one Kafka record batch (message format v2), read in one call.
//!
//! kafka-python reads a batch's records one at a time in Python (a varint at a time, a
//! `DefaultRecord` and then a `ConsumerRecord` per record): ~4.7 µs per record, as much
//! as the service's whole per-record pipeline. Here the same bytes are read in one pass
//! and each record comes back as the client's own `ConsumerRecord`, field for field what
//! its reader makes (`streamweights/runtime/kafka_records.py` runs the batch-level rules,
//! CRC, transactions and control batches, in Python, as the client does, and calls this
//! for the records; `tests/test_kafka_records.py` compares both on random batches).
//!
//! Record layout (KIP-98): length varint, attributes int8 (as a varint, unused),
//! timestamp delta varlong, offset delta varint, key and value as varint-length bytes
//! (a negative length is null), then a varint count of headers, each a varint-length
//! UTF-8 key and varint-length (nullable) value.

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::type_object::PyTypeInfo;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyString, PyTuple, PyType};

/// `timestamp_type` of a batch whose records carry the broker's append time.
const LOG_APPEND_TIME: i64 = 1;

/// The fields of the client's `ConsumerRecord`.
const RECORD_FIELDS: usize = 13;

/// Why a record could not be read (the caller raises the client's `CorruptRecordError`).
type ReadError = String;

/// A cursor over a record batch's bytes.
struct Reader<'a> {
    buffer: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ReadError> {
        let value = *self
            .buffer
            .get(self.pos)
            .ok_or_else(|| format!("record runs past the batch's end at byte {}", self.pos))?;
        self.pos += 1;
        Ok(value)
    }

    /// A zig-zag varint as kafka-python's `decode_varint` reads it: at most ten bytes
    /// (the tenth may carry bits past 64, which Python keeps, hence `i128`).
    fn varint(&mut self) -> Result<i128, ReadError> {
        let mut raw: u128 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            raw |= u128::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                let magnitude = (raw >> 1) as i128;
                return Ok(if raw & 1 == 1 {
                    -magnitude - 1
                } else {
                    magnitude
                });
            }
            shift += 7;
            if shift >= 64 {
                return Err("varint out of int64 range".to_string());
            }
        }
    }

    /// `length` bytes (`None` for a negative length, as the client reads null). As in
    /// the client (a Python slice), a field that runs past the end is cut short there and
    /// the cursor still moves by `length`: the record after it, or the batch's final
    /// check, then fails.
    fn bytes(&mut self, length: i128) -> Result<Option<&'a [u8]>, ReadError> {
        if length < 0 {
            return Ok(None);
        }
        let end = usize::try_from(length)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .ok_or_else(|| format!("a field of {length} bytes runs past the batch's end"))?;
        let size = self.buffer.len();
        let slice = &self.buffer[self.pos.min(size)..end.min(size)];
        self.pos = end;
        Ok(Some(slice))
    }
}

/// One record's fields, before they become Python objects.
struct Fields<'a> {
    size: i128,
    timestamp_delta: i128,
    offset_delta: i128,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

fn read_record<'a>(reader: &mut Reader<'a>) -> Result<Fields<'a>, ReadError> {
    let size = reader.varint()?;
    let start = reader.pos;
    reader.varint()?; // attributes: unused by format v2
    let timestamp_delta = reader.varint()?;
    let offset_delta = reader.varint()?;
    let key_length = reader.varint()?;
    let key = reader.bytes(key_length)?;
    let value_length = reader.varint()?;
    let value = reader.bytes(value_length)?;
    let count = reader.varint()?;
    if count < 0 {
        return Err(format!("invalid number of record headers {count}"));
    }
    let mut headers = Vec::new();
    for _ in 0..count {
        let key_length = reader.varint()?;
        if key_length < 0 {
            return Err(format!("invalid negative header key size {key_length}"));
        }
        let key = reader.bytes(key_length)?.unwrap_or_default();
        let key = std::str::from_utf8(key).map_err(|e| format!("header key: {e}"))?;
        let value_length = reader.varint()?;
        headers.push((key, reader.bytes(value_length)?));
    }
    let read = (reader.pos - start) as i128;
    if read != size {
        return Err(format!(
            "invalid record size: expected to read {size} bytes in record payload, but \
             instead read {read}"
        ));
    }
    Ok(Fields {
        size,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers,
    })
}

/// The length of an optional field as the client reports it (`-1` for null).
fn size_of(field: Option<&[u8]>) -> i128 {
    field.map_or(-1, |f| f.len() as i128)
}

/// `value` as a Python `int`: through `i64` when it fits (one CPython call; small values
/// come from its cache), else through its 128-bit bytes, which cost several times more
/// per call (five per record: offset, timestamp and three sizes).
fn py_int(py: Python<'_>, value: i128) -> PyObject {
    let made = match i64::try_from(value) {
        Ok(narrow) => narrow.into_pyobject(py),
        Err(_) => value.into_pyobject(py),
    };
    match made {
        Ok(int) => int.into_any().unbind(),
        Err(never) => match never {},
    }
}

/// Whether `record_type`'s instances are laid out as plain tuples (a namedtuple such as
/// the client's `ConsumerRecord`: a subclass of `tuple` with `__slots__ = ()`, so no
/// instance dict or extra fields), so that [`record_of`] may fill one directly.
fn tuple_layout(record_type: &Bound<'_, PyType>) -> bool {
    if !record_type.is_subclass_of::<PyTuple>().unwrap_or(false) {
        return false;
    }
    let tuple = PyTuple::type_object(record_type.py());
    // SAFETY: both are live type objects (the GIL is held through `record_type`); only
    // their size fields are read.
    unsafe {
        let (ours, plain) = (&*record_type.as_type_ptr(), &*tuple.as_type_ptr());
        ours.tp_basicsize == plain.tp_basicsize
            && ours.tp_itemsize == plain.tp_itemsize
            && ours.tp_dictoffset == 0
    }
}

/// A `record_type` instance holding `items`: what `tuple.__new__(record_type, items)`
/// makes (CPython's `tuple_subtype_new`: the type's `tp_alloc` for that many items, then
/// each item stored), without its temporary tuple and Python-level call (reading a record of
/// ~100 bytes: ~390 -> ~285 ns). Only for a type [`tuple_layout`] accepted.
fn record_of<'py>(
    record_type: &Bound<'py, PyType>,
    items: [PyObject; RECORD_FIELDS],
) -> PyResult<Bound<'py, PyAny>> {
    let py = record_type.py();
    // SAFETY: `tuple_layout` checked that the type's instances are tuples in layout (a
    // tuple subclass of the same basic and item size, no dict): `tp_alloc` returns a
    // zero-filled instance with room for `RECORD_FIELDS` item pointers (or null, with an
    // exception set), tracked by the GC when the type is, where null items are allowed;
    // `PyTuple_SET_ITEM` stores each into its slot once, taking over the reference that
    // `into_ptr` gives up. Nothing between the allocation and the last store can run
    // Python code, so no one sees the instance half filled.
    unsafe {
        let type_ptr = record_type.as_type_ptr();
        let alloc = (*type_ptr).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let raw = alloc(type_ptr, RECORD_FIELDS as ffi::Py_ssize_t);
        if raw.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (index, item) in items.into_iter().enumerate() {
            ffi::PyTuple_SET_ITEM(raw, index as ffi::Py_ssize_t, item.into_ptr());
        }
        Ok(Bound::from_owned_ptr(py, raw))
    }
}

/// The records of an (uncompressed or already decompressed) v2 batch whose records start
/// at `pos` of `buffer`: `(records, sizes, error)`. `records` are `record_type`
/// (`ConsumerRecord`) tuples in batch order, `sizes` each record's `size_in_bytes`;
/// `error` is `None`, or why reading stopped (the records before it are returned, as the
/// client yields them before it raises). `count` is the batch header's record count;
/// bytes left after the last record are an error, as in the client.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (buffer, pos, count, base_offset, first_timestamp, max_timestamp,
                    timestamp_type, topic, partition, leader_epoch, record_type))]
fn read_batch_records<'py>(
    py: Python<'py>,
    buffer: &Bound<'py, PyAny>,
    pos: usize,
    count: i64,
    base_offset: i64,
    first_timestamp: i64,
    max_timestamp: i64,
    timestamp_type: i64,
    topic: &Bound<'py, PyString>,
    partition: &Bound<'py, PyAny>,
    leader_epoch: &Bound<'py, PyAny>,
    record_type: &Bound<'py, PyType>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Option<String>)> {
    // A copy: the records are made while the bytes are read, and a copy cannot change
    // under them (the batch's bytearray is the client's).
    let data: Vec<u8> = if let Ok(array) = buffer.downcast::<PyByteArray>() {
        array.to_vec()
    } else if let Ok(bytes) = buffer.downcast::<PyBytes>() {
        bytes.as_bytes().to_vec()
    } else {
        return Err(PyValueError::new_err(
            "buffer: expected bytes or a bytearray",
        ));
    };
    if pos > data.len() {
        return Err(PyValueError::new_err("pos: past the end of the buffer"));
    }
    // `tuple.__new__`, looked up only for a record type that cannot be filled directly
    let new = if tuple_layout(record_type) {
        None
    } else {
        Some(py.get_type::<PyTuple>().getattr("__new__")?)
    };
    let records = PyList::empty(py);
    let sizes = PyList::empty(py);
    let mut reader = Reader { buffer: &data, pos };
    let mut read = 0i64;
    while read < count {
        let fields = match read_record(&mut reader) {
            Ok(fields) => fields,
            Err(why) => return Ok((records, sizes, Some(why))),
        };
        read += 1;
        let timestamp = if timestamp_type == LOG_APPEND_TIME {
            i128::from(max_timestamp)
        } else {
            i128::from(first_timestamp) + fields.timestamp_delta
        };
        let offset = i128::from(base_offset) + fields.offset_delta;
        let header_size: i128 = if fields.headers.is_empty() {
            -1
        } else {
            fields
                .headers
                .iter()
                .map(|(k, v)| k.len() as i128 + v.map_or(0, |v| v.len() as i128))
                .sum()
        };
        let headers = PyList::empty(py);
        for (key, value) in &fields.headers {
            let value =
                value.map_or_else(|| py.None(), |v| PyBytes::new(py, v).into_any().unbind());
            headers.append((PyString::new(py, key), value))?;
        }
        let optional = |field: Option<&[u8]>| {
            field.map_or_else(|| py.None(), |f| PyBytes::new(py, f).into_any().unbind())
        };
        let items: [PyObject; RECORD_FIELDS] = [
            topic.clone().into_any().unbind(),
            partition.clone().unbind(),
            leader_epoch.clone().unbind(),
            py_int(py, offset),
            py_int(py, timestamp),
            timestamp_type.into_pyobject(py)?.into_any().unbind(),
            optional(fields.key),
            optional(fields.value),
            headers.into_any().unbind(),
            py.None(),
            py_int(py, size_of(fields.key)),
            py_int(py, size_of(fields.value)),
            py_int(py, header_size),
        ];
        let record = match &new {
            None => record_of(record_type, items)?,
            Some(new) => new.call1((record_type, PyTuple::new(py, items)?))?,
        };
        records.append(record)?;
        sizes.append(fields.size)?;
    }
    if reader.pos != data.len() {
        let left = data.len() as i128 - reader.pos as i128;
        return Ok((
            records,
            sizes,
            Some(format!(
                "{left} unconsumed bytes after all records consumed"
            )),
        ));
    }
    Ok((records, sizes, None))
}

/// Adds the batch reader to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(read_batch_records, module)?)?;
    Ok(())
}
