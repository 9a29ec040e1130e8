//! `Pending`: a served prediction waiting in the join for its label (Python face:
//! `streamweights.join.Pending`, which re-exports this class).
//!
//! A plain frozen record of three objects. It used to be a slotted dataclass: the record
//! lane made one per prediction by calling the class (a Python `__init__` frame) and read
//! its payload back by attribute lookup; made and read here, each is a struct write and
//! a field read. Python code sees the same attributes (`id`, `ts`, `payload`, read-only,
//! as nothing ever rebinds them) and the same dataclass-style `repr` and equality.

use pyo3::basic::CompareOp;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

/// A served prediction waiting for its label: its id, its event time and what the
/// chain kept to learn from the label (the payload), each the object it was given.
#[pyclass(module = "streamweights._native", frozen)]
pub struct Pending {
    #[pyo3(get)]
    pub id: Py<PyAny>,
    #[pyo3(get)]
    pub ts: Py<PyAny>,
    #[pyo3(get)]
    pub payload: Py<PyAny>,
}

#[pymethods]
impl Pending {
    #[new]
    fn new(id: Py<PyAny>, ts: Py<PyAny>, payload: Py<PyAny>) -> Self {
        Pending { id, ts, payload }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Pending(id={}, ts={}, payload={})",
            self.id.bind(py).repr()?,
            self.ts.bind(py).repr()?,
            self.payload.bind(py).repr()?
        ))
    }

    /// Equal to another `Pending` whose three fields are equal (a dataclass's `==`).
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<PyObject> {
        let py = other.py();
        let other = match other.downcast::<Pending>() {
            Ok(other) => other.get(),
            Err(_) => return Ok(py.NotImplemented()),
        };
        let same = || -> PyResult<bool> {
            Ok(self.id.bind(py).eq(&other.id)?
                && self.ts.bind(py).eq(&other.ts)?
                && self.payload.bind(py).eq(&other.payload)?)
        };
        match op {
            CompareOp::Eq => Ok(same()?.into_pyobject(py)?.to_owned().into_any().unbind()),
            CompareOp::Ne => Ok((!same()?).into_pyobject(py)?.to_owned().into_any().unbind()),
            _ => Ok(py.NotImplemented()),
        }
    }

    /// The collector may find a cycle through a payload: the three objects are visited.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.id)?;
        visit.call(&self.ts)?;
        visit.call(&self.payload)
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Pending>()
}
