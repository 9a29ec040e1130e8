//! A stream's counters and clocks: the base class of `StreamPipeline`
//! (`streamweights/pipeline.py`). Every record moves some of them; held here, the record
//! lane (`lane.rs`) reads and writes them as fields instead of as entries of the
//! pipeline's `__dict__` (a dictionary lookup, and a new Python number, each), while
//! Python code reads and writes them as the plain attributes they were.
//!
//! The `changed` flag is also noted in the pipeline's `ChangedStreams` when it turns on,
//! so that a commit finds the streams to write without reading every stream's flag (a
//! replica may hold 10,000 streams and change a handful between two commits).

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
    /// only the streams with this set). Set it through `mark_changed` (Rust) or the
    /// attribute (Python), which note it in the pipeline's `ChangedStreams`.
    changed: bool,
    /// The pipeline's register of changed streams and this stream's place in it.
    register: Option<(Py<ChangedStreams>, usize)>,
}

impl StreamCounters {
    /// Set `changed`, noting the stream in its pipeline's register when it turns on.
    pub fn mark_changed(&mut self, py: Python<'_>) {
        if !self.changed {
            self.changed = true;
            self.note(py);
        }
    }

    fn note(&self, py: Python<'_>) {
        if let Some((register, index)) = &self.register {
            register.bind(py).borrow_mut().note(*index);
        }
    }
}

/// The streams of one pipeline whose `changed` flag turned on, by their index in the
/// pipeline's order: every stream whose flag is on is here (perhaps more than once, or
/// with its flag since turned off; `drain` hands them over once each, in order, and
/// the pipeline notes again those still changed).
///
/// A full snapshot writes every stream without asking which changed, so the notes may
/// pile up between two drains: past twice the number of streams they are sorted and
/// deduplicated in place (at most one note per stream remains), which bounds them.
#[pyclass(module = "streamweights._native")]
pub struct ChangedStreams {
    marked: Vec<usize>,
    /// Notes held before they are deduplicated.
    limit: usize,
}

impl ChangedStreams {
    fn note(&mut self, index: usize) {
        if self.marked.len() >= self.limit {
            self.marked.sort_unstable();
            self.marked.dedup();
        }
        self.marked.push(index);
    }
}

#[pymethods]
impl ChangedStreams {
    /// A register for a pipeline of `streams` streams.
    #[new]
    fn new(streams: usize) -> Self {
        ChangedStreams {
            marked: Vec::new(),
            limit: streams.saturating_mul(2).max(64),
        }
    }

    /// The noted indices, ascending, each once; the register is left empty.
    fn drain(&mut self) -> Vec<usize> {
        let mut marked = std::mem::take(&mut self.marked);
        marked.sort_unstable();
        marked.dedup();
        marked
    }

    /// Note `indices` (those of `drain` whose stream is still changed).
    fn note_again(&mut self, indices: Vec<usize>) {
        for index in indices {
            self.note(index);
        }
    }

    /// Notes held now (a test's view of the bound).
    fn __len__(&self) -> usize {
        self.marked.len()
    }
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
            register: None,
        }
    }

    #[getter]
    fn changed(&self) -> bool {
        self.changed
    }

    #[setter]
    fn set_changed(&mut self, py: Python<'_>, value: bool) {
        if value {
            self.mark_changed(py);
        } else {
            self.changed = false;
        }
    }

    /// Note this stream (index `index` of its pipeline) in `register` whenever its
    /// `changed` flag turns on from now on, and now if it is on.
    fn attach_changes(&mut self, py: Python<'_>, register: Py<ChangedStreams>, index: usize) {
        self.register = Some((register, index));
        if self.changed {
            self.note(py);
        }
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<StreamCounters>()?;
    module.add_class::<ChangedStreams>()
}
