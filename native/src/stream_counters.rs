//! A stream's counters and clocks: the base class of `StreamPipeline`
//! (`streamweights/pipeline.py`). Every record moves some of them; held here, the record
//! lane (`lane.rs`) reads and writes them as fields instead of as entries of the
//! pipeline's `__dict__` (a dictionary lookup, and a new Python number, each), while
//! Python code reads and writes them as the plain attributes they were.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// What a stream has applied and where its clocks stand.
#[pyclass(module = "streamweights._native", subclass)]
pub struct StreamCounters {
    /// Predictions applied.
    #[pyo3(get, set)]
    pub predictions: i64,
    /// Labels applied (joined and learned).
    #[pyo3(get, set)]
    pub labels: i64,
    /// The last weights version published (0: none yet).
    #[pyo3(get, set)]
    pub weights_version: i64,
    /// Labels applied since that version.
    #[pyo3(get, set)]
    pub labels_since_publish: i64,
    /// The event time of that version (or of the first record, before one).
    #[pyo3(get, set)]
    pub last_publish_ts: Option<f64>,
    /// The stream's event-time clock: the latest `ts` applied.
    #[pyo3(get, set)]
    pub latest_ts: Option<f64>,
    /// Touched since the state was last saved or loaded (an incremental snapshot writes
    /// only the streams with this set).
    #[pyo3(get, set)]
    pub changed: bool,
}

#[pymethods]
impl StreamCounters {
    /// Zeros and no clocks; a subclass's own constructor arguments are its business.
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        StreamCounters {
            predictions: 0,
            labels: 0,
            weights_version: 0,
            labels_since_publish: 0,
            last_publish_ts: None,
            latest_ts: None,
            changed: false,
        }
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<StreamCounters>()
}
