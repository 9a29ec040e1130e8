//! A stream's counters and clocks: the base class of `StreamPipeline`
//! (`streamweights/pipeline.py`). Every record moves some of them; held here, the record
//! lane (`lane.rs`) reads and writes them as fields instead of as entries of the
//! pipeline's `__dict__` (a dictionary lookup, and a new Python number, each), while
//! Python code reads and writes them as the plain attributes they were.
//!
//! The `changed` flag is also noted in the pipeline's `ChangedStreams` when it turns on
//! and off, so that a commit finds the streams to write, and how many, without reading
//! every stream's flag (a replica may hold 10,000 streams and change a handful between
//! two commits).

use numpy::{IntoPyArray, PyArray1};
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

/// The streams of one pipeline whose `changed` flag is on, by their index in the
/// pipeline's order. A stream notes its flag turning on and off here, so the register
/// knows every flag and their count without reading the streams (a replica may hold
/// 10,000 streams; a commit asks which changed twice, once for the count alone).
///
/// The indices noted on are kept in a list that may still name streams since turned off,
/// or one twice (off, then on again); `changed` sorts it and keeps those on, once each,
/// and so does a note that finds it past twice the number of streams, which bounds it.
#[pyclass(module = "streamweights._native")]
pub struct ChangedStreams {
    marked: Vec<usize>,
    /// Each stream's flag as last noted.
    on: Vec<bool>,
    /// How many of `on` are set.
    count: usize,
    /// Notes held before they are compacted.
    limit: usize,
}

impl ChangedStreams {
    fn note(&mut self, index: usize) {
        if index >= self.on.len() {
            self.on.resize(index + 1, false);
        }
        if self.on[index] {
            return;
        }
        self.on[index] = true;
        self.count += 1;
        if self.marked.len() >= self.limit {
            self.compact();
        }
        self.marked.push(index);
    }

    fn unnote(&mut self, index: usize) {
        if let Some(flag) = self.on.get_mut(index) {
            if *flag {
                *flag = false;
                self.count -= 1;
            }
        }
    }

    /// `marked` ascending, once each, only the streams still on.
    fn compact(&mut self) {
        self.marked.sort_unstable();
        self.marked.dedup();
        let on = &self.on;
        self.marked.retain(|&index| on[index]);
    }
}

#[pymethods]
impl ChangedStreams {
    /// A register for a pipeline of `streams` streams.
    #[new]
    fn new(streams: usize) -> Self {
        ChangedStreams {
            marked: Vec::new(),
            on: vec![false; streams],
            count: 0,
            limit: streams.saturating_mul(2).max(64),
        }
    }

    /// The indices of the streams whose flag is on, ascending (they stay noted).
    fn changed<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.compact();
        let indices: Vec<i64> = self.marked.iter().map(|&index| index as i64).collect();
        indices.into_pyarray(py)
    }

    /// How many streams' flags are on.
    fn count(&self) -> usize {
        self.count
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
        } else if self.changed {
            self.changed = false;
            if let Some((register, index)) = &self.register {
                register.bind(py).borrow_mut().unnote(*index);
            }
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
