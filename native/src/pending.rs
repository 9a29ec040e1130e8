//! `Pending`: a served prediction waiting in the join for its label (Python face:
//! `streamweights.join.Pending`, which re-exports this class).
//!
//! A plain frozen record of three objects. It used to be a slotted dataclass: the record
//! lane made one per prediction by calling the class (a Python `__init__` frame) and read
//! its payload back by attribute lookup; made and read here, each is a struct write and
//! a field read. Python code sees the same attributes (`id`, `ts`, `payload`, read-only,
//! as nothing ever rebinds them) and the same dataclass-style `repr` and equality.
//!
//! The record lane keeps its payload as plain vectors (`Flat`: the chain's flat record
//! and the conformal thresholds served with it), held in the native join itself
//! (`join.rs`) and read back with the label: no `Pending`, dict or NumPy array made per
//! prediction, none read and freed per label. Python code that asks the join for such
//! an entry (a snapshot, the general path, an expiry) gets a `Pending` made then, whose
//! `payload` is the dict the lane used to store, `{"buffer": 1-d array, "conformal":
//! 2-d array}`, made on each read.

use pyo3::basic::CompareOp;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::PyTraverseError;

use crate::arrays;

/// A served prediction waiting for its label: its id, its event time and what the
/// chain kept to learn from the label (the payload), each the object it was given, or
/// the lane's flat payload.
#[pyclass(module = "streamweights._native", frozen)]
pub struct Pending {
    #[pyo3(get)]
    pub id: Py<PyAny>,
    #[pyo3(get)]
    pub ts: Py<PyAny>,
    /// The payload given (`None` when `flat` holds it).
    pub given: Option<Py<PyAny>>,
    pub flat: Option<Flat>,
}

/// The record lane's payload: the chain core's flat record of the prediction and, with
/// conformal layers, the thresholds each layer served (`rows × width`, row after row).
#[derive(Clone, Debug, PartialEq)]
pub struct Flat {
    pub buffer: Vec<f64>,
    pub kept: Option<(Vec<f64>, usize, usize)>,
}

impl Pending {
    /// A waiting prediction holding the payload given (`PendingJoin.add`'s).
    pub fn given(id: Py<PyAny>, ts: Py<PyAny>, payload: Py<PyAny>) -> Self {
        Pending {
            id,
            ts,
            given: Some(payload),
            flat: None,
        }
    }

    /// A waiting prediction holding the lane's flat payload.
    pub fn flat(id: Py<PyAny>, ts: Py<PyAny>, flat: Flat) -> Self {
        Pending {
            id,
            ts,
            given: None,
            flat: Some(flat),
        }
    }

    /// The payload as Python sees it: the object given, or the dict made from `flat`.
    pub fn payload_object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(given) = &self.given {
            return Ok(given.bind(py).clone());
        }
        let flat = self
            .flat
            .as_ref()
            .expect("a pending prediction holds a given or a flat payload");
        flat_payload(py, flat)
    }
}

/// The payload dict Python sees for a flat payload: `{"buffer": 1-d array}`, plus
/// `"conformal"` (a 2-d array) with conformal layers.
pub fn flat_payload<'py>(py: Python<'py>, flat: &Flat) -> PyResult<Bound<'py, PyAny>> {
    let payload = PyDict::new(py);
    payload.set_item(intern!(py, "buffer"), arrays::vector(py, &flat.buffer))?;
    if let Some((kept, rows, width)) = &flat.kept {
        let kept = arrays::matrix(py, kept, *rows, *width)?;
        payload.set_item(intern!(py, "conformal"), kept)?;
    }
    Ok(payload.into_any())
}

#[pymethods]
impl Pending {
    #[new]
    fn new(id: Py<PyAny>, ts: Py<PyAny>, payload: Py<PyAny>) -> Self {
        Pending::given(id, ts, payload)
    }

    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.payload_object(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Pending(id={}, ts={}, payload={})",
            self.id.bind(py).repr()?,
            self.ts.bind(py).repr()?,
            self.payload_object(py)?.repr()?
        ))
    }

    /// Equal to another `Pending` whose three fields are equal (a dataclass's `==`; two
    /// flat payloads compare by their numbers).
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<PyObject> {
        let py = other.py();
        let other = match other.downcast::<Pending>() {
            Ok(other) => other.get(),
            Err(_) => return Ok(py.NotImplemented()),
        };
        let same = || -> PyResult<bool> {
            if !(self.id.bind(py).eq(&other.id)? && self.ts.bind(py).eq(&other.ts)?) {
                return Ok(false);
            }
            match (&self.flat, &other.flat) {
                (Some(mine), Some(theirs)) => Ok(mine == theirs),
                _ => self.payload_object(py)?.eq(other.payload_object(py)?),
            }
        };
        match op {
            CompareOp::Eq => Ok(same()?.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!same()?).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    /// The collector may find a cycle through a payload: the objects are visited.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.id)?;
        visit.call(&self.ts)?;
        if let Some(given) = &self.given {
            visit.call(given)?;
        }
        Ok(())
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Pending>()
}
