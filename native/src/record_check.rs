//! The record decoder's validation, in the core: a quick path of `streamweights/events.py`
//! (`_load`'s schema check, `_prediction` / `_label` with `_check_fields`, `_string`,
//! `_numbers` and `_check_unique_keys`).
//!
//! `check_record(obj, raw, kind)` takes the object orjson parsed from `raw` and, when the
//! record is a well-formed prediction or label by every rule those validators apply,
//! returns its fields in one call: `(stream, id, ts, outputs, features)` for a prediction,
//! `(stream, id, ts, label)` for a label. For anything else it returns `None` and Python's
//! validators run unchanged, raising their usual error: the core never decides a refusal,
//! so every reason and message stays Python's (the validators are the oracle and the
//! error path; `tests/test_native_record_check.py` compares both on random records).
//!
//! What is returned is the parsed objects themselves (`outputs`, `features`, `label` as
//! given, `int` stays `int`) except `ts`, which Python turns into a `float`: an exact
//! `float` is returned as is, an `int` is converted with round-to-nearest-even, as
//! Python's `float(int)` does. Integers outside `i128` (orjson's are `i64` or `u64`) and
//! anything orjson does not make (subclasses, NaN) go to Python.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// The wire schema version this build understands (`events.SCHEMA_VERSION`).
pub const SCHEMA_VERSION: i64 = 1;
/// Bound on every output, feature and label (`events.MAX_MAGNITUDE`).
pub const MAX_MAGNITUDE: f64 = 1e100;

/// `kind`: decide by the fields, as `events.decode` does.
const ANY: u8 = 0;
/// `kind`: the record must be a prediction (`decode_prediction`).
const PREDICTION: u8 = 1;
/// `kind`: the record must be a label (`decode_label`).
const LABEL: u8 = 2;

/// A number as `_numbers` accepts it: an exact `float` within the bound (NaN is not), or
/// an exact `int` (`bool` is not) that fits `i128` (orjson's fit `i64` or `u64`), so far
/// inside the bound.
fn is_number(item: &Bound<'_, PyAny>) -> bool {
    if let Ok(value) = item.downcast_exact::<PyFloat>() {
        let value = value.value();
        return (-MAX_MAGNITUDE..=MAX_MAGNITUDE).contains(&value);
    }
    match item.downcast_exact::<PyInt>() {
        Ok(value) => value.extract::<i128>().is_ok(),
        Err(_) => false,
    }
}

/// `_numbers(value, allow_scalar)`: a number (when allowed) or a non-empty list of numbers.
fn numbers(value: &Bound<'_, PyAny>, allow_scalar: bool) -> bool {
    if let Ok(list) = value.downcast_exact::<PyList>() {
        return !list.is_empty() && list.iter().all(|item| is_number(&item));
    }
    allow_scalar && is_number(value)
}

/// `_string`: a non-empty exact `str`.
fn is_text(value: &Bound<'_, PyAny>) -> bool {
    match value.downcast_exact::<PyString>() {
        Ok(text) => text.len().map(|n| n > 0).unwrap_or(false),
        Err(_) => false,
    }
}

/// `_check_fields`'s `ts` as the `float` Python makes of it.
fn timestamp<'py>(value: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    if let Ok(float) = value.downcast_exact::<PyFloat>() {
        return float.value().is_finite().then(|| value.clone());
    }
    let whole: i128 = value.downcast_exact::<PyInt>().ok()?.extract().ok()?;
    // `as` rounds to nearest, ties to even: what Python's `float(int)` does.
    Some(PyFloat::new(value.py(), whole as f64).into_any())
}

/// Colons (name separators) outside JSON strings, as `_check_unique_keys` counts them
/// after blanking strings out; `None` when a string does not end well (not the text of a
/// parsed document: Python decides).
fn colons_outside_strings(raw: &[u8]) -> Option<usize> {
    let mut count = 0;
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'"' => {
                at += 1;
                loop {
                    match raw.get(at)? {
                        b'"' => break,
                        b'\\' => {
                            if *raw.get(at + 1)? == b'\n' {
                                return None;
                            }
                            at += 2;
                        }
                        _ => at += 1,
                    }
                }
            }
            b':' => count += 1,
            _ => {}
        }
        at += 1;
    }
    Some(count)
}

/// `_check_unique_keys(raw, members)` passes.
fn unique_keys(raw: &[u8], members: usize) -> bool {
    let colons = raw.iter().filter(|&&byte| byte == b':').count();
    colons == members || colons_outside_strings(raw) == Some(members)
}

/// The record's members, looked up in one pass over the dict (`None` is a missing key or
/// a JSON `null`, as `dict.get` gives); `None` overall on an unknown field.
#[derive(Default)]
struct Members<'py> {
    schema: Option<Bound<'py, PyAny>>,
    stream: Option<Bound<'py, PyAny>>,
    id: Option<Bound<'py, PyAny>>,
    ts: Option<Bound<'py, PyAny>>,
    outputs: Option<Bound<'py, PyAny>>,
    features: Option<Bound<'py, PyAny>>,
    label: Option<Bound<'py, PyAny>>,
    has_outputs: bool,
    has_features: bool,
    has_label: bool,
}

fn members<'py>(obj: &Bound<'py, PyDict>) -> Option<Members<'py>> {
    let mut found = Members::default();
    for (key, value) in obj.iter() {
        let key = key.downcast_exact::<PyString>().ok()?;
        let value = (!value.is_none()).then_some(value);
        match key.to_str().ok()? {
            "schema" => found.schema = value,
            "stream" => found.stream = value,
            "id" => found.id = value,
            "ts" => found.ts = value,
            "outputs" => {
                found.has_outputs = true;
                found.outputs = value;
            }
            "features" => {
                found.has_features = true;
                found.features = value;
            }
            "label" => {
                found.has_label = true;
                found.label = value;
            }
            _ => return None,
        }
    }
    Some(found)
}

fn quick<'py>(obj: &Bound<'py, PyAny>, raw: &[u8], kind: u8) -> Option<Bound<'py, PyTuple>> {
    let py = obj.py();
    let dict = obj.downcast_exact::<PyDict>().ok()?;
    let found = members(dict)?;
    let schema: i64 = found
        .schema?
        .downcast_exact::<PyInt>()
        .ok()?
        .extract()
        .ok()?;
    if !(1..=SCHEMA_VERSION).contains(&schema) {
        return None;
    }
    let prediction = match kind {
        ANY if found.has_outputs => true,
        ANY if found.has_label => false,
        PREDICTION => true,
        LABEL => false,
        _ => return None,
    };
    // The field sets differ: a label's `outputs` or a prediction's `label` is unknown.
    // The field sets differ: a label's `outputs` or `features` (even `null`) or a
    // prediction's `label` is an unknown field.
    let unknown = if prediction {
        found.has_label
    } else {
        found.has_outputs || found.has_features
    };
    if unknown {
        return None;
    }
    let stream = found.stream.filter(is_text)?;
    let id = found.id.filter(is_text)?;
    let ts = timestamp(&found.ts?)?;
    let size = dict.len();
    if prediction {
        let outputs = found.outputs?;
        let models = outputs.downcast_exact::<PyDict>().ok()?;
        if models.is_empty() && found.features.is_none() {
            return None;
        }
        if !models.values().iter().all(|value| numbers(&value, true)) {
            return None;
        }
        let features = match found.features {
            Some(features) if numbers(&features, false) => features,
            Some(_) => return None,
            None => py.None().into_bound(py),
        };
        if !unique_keys(raw, size + models.len()) {
            return None;
        }
        PyTuple::new(py, [stream, id, ts, outputs, features]).ok()
    } else {
        let label = found.label.filter(is_number)?;
        if !unique_keys(raw, size) {
            return None;
        }
        PyTuple::new(py, [stream, id, ts, label]).ok()
    }
}

/// The fields of a well-formed record, or `None` (Python's validators then decide).
/// `obj` must be what `orjson.loads(raw)` returned; `kind` 0 decides prediction or label
/// by the fields, 1 requires a prediction, 2 a label.
#[pyfunction]
fn check_record<'py>(obj: &Bound<'py, PyAny>, raw: &[u8], kind: u8) -> Option<Bound<'py, PyTuple>> {
    quick(obj, raw, kind)
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(check_record, module)?)?;
    module.add("SCHEMA_VERSION", SCHEMA_VERSION)?;
    module.add("MAX_MAGNITUDE", MAX_MAGNITUDE)?;
    Ok(())
}
