//! The record lane: one core call takes a raw prediction or label from its JSON bytes to
//! the stream's updated state, for the records that need nothing else.
//!
//! `StreamPipeline`'s per-record path in Python decodes the record with orjson, checks
//! it field by field, builds a `Prediction` / `Label`, routes it, runs the chain in the
//! core, and updates the join, the clock and the counters: ~7 µs a record, of which the
//! chain's arithmetic is about one. `RecordLane.process(raw, adapted)` does the same
//! steps here for a classification stream whose chain the core drives whole (no torch
//! model, no feature stage; its conformal sets and estimates included), reading and
//! writing the same objects (`StreamPipeline`'s attributes, its native `PendingJoin`) so
//! that the state is exactly what the Python path leaves, bit for bit.
//!
//! The lane only takes a record when it is certain of every answer Python would give:
//!
//! * the bytes are UTF-8, at most `max_bytes` long, and a JSON object of exactly
//!   `schema` (the integer 1), `stream`, `id` (non-empty strings without escapes), `ts`
//!   and either `outputs` (an object of one non-empty list of numbers per model, each
//!   name once) or `label` (an integer literal); numbers within the subset whose value
//!   is certainly orjson's (as `event_time::number_value`'s: at most 17 significant
//!   digits, a two-digit exponent) and within the contract's bound;
//! * the stream is one of the lane's, the outputs name exactly its models with one
//!   probability per class, the label is a class;
//! * nothing on the record's path needs Python: no event-time skew to judge, no
//!   prediction waiting under the same id, no expiry or eviction in the join, no
//!   weights version due, no drift confirmed.
//!
//! For anything else `process` returns `None` with nothing changed and the Python path
//! runs as before, so every refusal, its reason and its message stay Python's. The
//! chain's own refusals (invalid probabilities, a non-finite update) and a confirmed
//! drift are handed back to the pipeline's own methods (`reject`, `_learned`), which
//! write the outcome the Python path would. `tests/test_record_lane.py` holds the lane
//! to the Python path on long streams mixed with malformed and unusual records.
//!
//! `RecordLane.drain` is the service loop's inner loop around `process`: it pulls raw
//! records from the source's iterator one at a time and applies them until one needs
//! Python or the loop must act between two records (`tests/test_lane_drain.py`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyBytes, PyDict, PyIterator, PyList, PyString, PyTuple};

use crate::arrays;
use crate::chain::ChainCore;
use crate::conformal::{ClassSets, UncertaintyCore};
use crate::expert_losses::read_flat;
use crate::float_text::{write_integer, Decimal};
use crate::join::{Held, PendingJoin};
use crate::label_step::learn_served_values;
use crate::pending::Flat;
use crate::record_check::{MAX_MAGNITUDE, SCHEMA_VERSION};
use crate::stream_counters::StreamCounters;

/// A number as read: an integer literal (Python's `int`) or any other (a `float`).
#[derive(Clone, Copy)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    /// The `float` Python makes of it (`float(int)` rounds to nearest even, as `as`).
    fn value(self) -> f64 {
        match self {
            Number::Int(whole) => whole as f64,
            Number::Float(value) => value,
        }
    }
}

/// What a record says, when it is within the lane's subset.
struct Record<'a> {
    stream: &'a [u8],
    id: &'a [u8],
    ts: f64,
    /// A prediction's outputs: each model's name and its numbers, in the record's order.
    outputs: Vec<(&'a [u8], Vec<f64>)>,
    /// A label's class (an integer literal); `None` for a prediction.
    label: Option<i64>,
}

/// A cursor over a record's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// `byte` next (after any space), stepped over.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_space();
        if self.peek()? != byte {
            return None;
        }
        self.at += 1;
        Some(())
    }

    /// After an item: `Some(true)` past a comma, `Some(false)` past `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(true),
            _ if byte == close => Some(false),
            _ => None,
        }
    }

    /// A string without escapes (the opening quote next, after any space): its bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(&self.bytes[start..self.at - 1]);
                }
                // an escape is left to Python; a raw control character is not JSON
                b'\\' | 0x00..=0x1f => return None,
                _ => self.at += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let count = self.bytes[self.at..]
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        self.at += count;
        count
    }

    /// A number (after any space) in the subset whose value is certainly orjson's: an
    /// integer literal of at most 18 digits, or a decimal one of at most 17 significant
    /// digits and an exponent of at most two (`event_time::number_value`'s subset),
    /// within the contract's bound.
    fn number(&mut self) -> Option<Number> {
        self.skip_space();
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits_start = self.at;
        let digits = self.digits();
        if digits == 0 || (digits > 1 && self.bytes[digits_start] == b'0') {
            return None; // no digit, or a leading zero: not JSON
        }
        // The mantissa's leading zeros, counted while scanning: a lone "0" before the
        // point, then the fraction's own leading zeros.
        let mut leading = usize::from(self.bytes[digits_start] == b'0');
        let mut fraction = 0;
        let mut whole = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction_start = self.at;
            fraction = self.digits();
            if fraction == 0 {
                return None;
            }
            if leading == 1 {
                let zeros = self.bytes[fraction_start..self.at].iter();
                leading += zeros.take_while(|&&byte| byte == b'0').count();
            }
            whole = false;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !(1..=2).contains(&self.digits()) {
                return None;
            }
            whole = false;
        }
        let number = &self.bytes[start..self.at];
        debug_assert!(number.is_ascii());
        // SAFETY: the scan above moved past ASCII bytes only (a sign, digits, a point, an
        // exponent mark and its sign), and ASCII is valid UTF-8. Checking again cost
        // ~1.4% of a default-config record (several numbers per prediction).
        let text = unsafe { std::str::from_utf8_unchecked(number) };
        if whole {
            if digits > 18 {
                return None; // orjson's int may be u64: left to Python
            }
            return Some(Number::Int(text.parse().ok()?));
        }
        let significant = digits + fraction - leading;
        if significant > 17 {
            return None;
        }
        let value: f64 = text.parse().ok()?; // correctly rounded, as orjson's
        if (-MAX_MAGNITUDE..=MAX_MAGNITUDE).contains(&value) {
            Some(Number::Float(value))
        } else {
            None
        }
    }

    /// A non-empty list of numbers, as floats.
    fn numbers(&mut self) -> Option<Vec<f64>> {
        self.expect(b'[')?;
        let mut values = Vec::with_capacity(4);
        loop {
            values.push(self.number()?.value());
            if !self.more(b']')? {
                return Some(values);
            }
        }
    }

    /// `outputs`: a non-empty object of lists, each name once.
    fn outputs(&mut self) -> Option<Vec<(&'a [u8], Vec<f64>)>> {
        self.expect(b'{')?;
        let mut outputs: Vec<(&'a [u8], Vec<f64>)> = Vec::with_capacity(4);
        loop {
            let name = self.string()?;
            if outputs.iter().any(|(seen, _)| *seen == name) {
                return None; // a duplicate key: Python refuses it
            }
            self.expect(b':')?;
            outputs.push((name, self.numbers()?));
            if !self.more(b'}')? {
                return Some(outputs);
            }
        }
    }
}

/// The record's fields when it is a prediction or label within the subset.
///
/// The bytes are not checked as UTF-8 whole: outside strings the lane reads only ASCII,
/// every name it reads must equal a configured one, and the id is checked when it
/// becomes a Python string, so a record with invalid UTF-8 is never taken.
fn read_record(bytes: &[u8]) -> Option<Record<'_>> {
    let mut cursor = Cursor { bytes, at: 0 };
    cursor.expect(b'{')?;
    let (mut schema, mut stream, mut id, mut ts) = (None, None, None, None);
    let (mut outputs, mut label) = (None, None);
    loop {
        let key = cursor.string()?;
        cursor.expect(b':')?;
        let fresh = match key {
            b"schema" => schema.replace(cursor.number()?).is_none(),
            b"stream" => stream.replace(cursor.string()?).is_none(),
            b"id" => id.replace(cursor.string()?).is_none(),
            b"ts" => ts.replace(cursor.number()?).is_none(),
            b"outputs" => outputs.replace(cursor.outputs()?).is_none(),
            b"label" => label.replace(cursor.number()?).is_none(),
            _ => return None, // `features`, or an unknown field: Python decides
        };
        if !fresh {
            return None; // a duplicate key
        }
        if !cursor.more(b'}')? {
            break;
        }
    }
    cursor.skip_space();
    if cursor.at != bytes.len() {
        return None;
    }
    match schema? {
        Number::Int(version) if version == SCHEMA_VERSION => {}
        _ => return None,
    }
    let (stream, id) = (stream?, id?);
    if stream.is_empty() || id.is_empty() {
        return None;
    }
    let ts = ts?.value();
    let label = match (outputs.is_some(), label) {
        (true, None) => None,
        (false, Some(Number::Int(class))) => Some(class),
        _ => return None,
    };
    Some(Record {
        stream,
        id,
        ts,
        outputs: outputs.unwrap_or_default(),
        label,
    })
}

/// A float as orjson writes it: Python's `repr` digits (the shortest that read back,
/// the closest of those to the value: Ryu's), fixed notation for decimal exponents -5
/// to 15 (`1.0`, `0.00001`), else scientific with a signed exponent and no padding
/// (`1e-6`, `1.5e+16`); `null` for NaN and the infinities, as orjson.
pub fn write_float(out: &mut Vec<u8>, value: f64) {
    if !value.is_finite() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(value).as_bytes();
    // Ryu writes fixed notation for exactly the decimal exponents -5 to 15, digits and
    // point as below (`0.0`, `123.0`, `0.00012`): then its text is the answer as it is
    // (`layout_float` would rebuild the same bytes; a unit test compares the two).
    if !text.contains(&b'e') {
        out.extend_from_slice(text);
        return;
    }
    layout_float(out, text);
}

/// `write_float` from Ryu's text in any of its layouts: its digits and decimal exponent
/// read back and written in orjson's.
fn layout_float(out: &mut Vec<u8>, text: &[u8]) {
    let decimal = Decimal::of_ryu(text);
    let exponent = decimal.exponent;
    if decimal.negative {
        out.push(b'-');
    }
    if (-5..16).contains(&exponent) {
        decimal.write_fixed(out);
    } else {
        decimal.write_scientific(out);
        out.push(b'e');
        if exponent > 0 {
            out.push(b'+');
        }
        write_integer(out, i64::from(exponent));
    }
}

/// `write_float` as text: how the tests hold it to orjson.
#[pyfunction]
fn json_float(value: f64) -> PyResult<String> {
    if !value.is_finite() {
        return Err(PyValueError::new_err("value: not finite"));
    }
    let mut out = Vec::new();
    write_float(&mut out, value);
    Ok(String::from_utf8(out).expect("ASCII"))
}

/// One stream the lane takes records for, with what its per-record path reads from
/// its frozen config.
struct LaneStream {
    pipeline: Py<PyAny>,
    /// The stream's counters and clocks (the pipeline itself, whose base class they are).
    counters: Py<StreamCounters>,
    /// The stream's join (native: asked and changed directly).
    join: Py<PendingJoin>,
    /// The `__dict__` of the stream's chain: its core read directly (a plain attribute).
    chain_state: Py<PyDict>,
    /// `(name, "prediction")` and `(name, "label")`: what `process` returns.
    prediction_key: Py<PyTuple>,
    label_key: Py<PyTuple>,
    /// `(prediction_key, None)` and `(label_key, None)`: a record done with nothing to
    /// route, returned without making a tuple per record.
    prediction_done: Py<PyTuple>,
    label_done: Py<PyTuple>,
    name: Py<PyString>,
    models: Vec<Vec<u8>>,
    width: usize,
    skew_limit: f64,
    ttl: f64,
    max_pending: usize,
    every_labels: i64,
    every_seconds: f64,
    size: usize,
    output: (usize, usize),
    scores: Py<PyList>,
    evidence: Py<PyList>,
    ranges: Vec<(usize, usize)>,
    clip: f64,
    uncertainty: Option<LaneUncertainty>,
    /// Records this lane applied and returned as done (`prediction_done` /
    /// `label_done`): predictions, labels, and labels joined (every done label joined
    /// one). The service adds them to its event counters when scraped (read by
    /// `done_counts`) instead of a Python increment per record.
    done_counts: [AtomicU64; 3],
}

/// Indices into `LaneStream::done_counts`.
const DONE_PREDICTIONS: usize = 0;
const DONE_LABELS: usize = 1;
const DONE_JOINED: usize = 2;

/// A stream's conformal layers and estimates (`StreamUncertainty`), as the lane serves
/// and teaches them (`serve_flat`, then `learn_served`).
struct LaneUncertainty {
    /// The `StreamUncertainty`'s `__dict__` (its `_core`, read per record).
    state: Py<PyDict>,
    /// Whether there are conformal layers (sets and kept thresholds) or only estimates.
    layers: bool,
    /// `_kept_shape`: the thresholds kept with a prediction, one row per layer.
    kept_shape: (usize, usize),
    /// The wire keys of the levels, each as JSON text (`"0.1"`).
    keys: Vec<Vec<u8>>,
    /// Where the models' rows lie in the chain's flat record.
    raw: (usize, usize),
}

/// `(StreamUncertainty, has layers, kept shape, JSON keys, raw range)` as Python passes it.
type UncertaintyFields<'py> = (
    Bound<'py, PyAny>,
    bool,
    (usize, usize),
    Vec<Vec<u8>>,
    (usize, usize),
);

/// What the lane needs from Python: classes and functions it calls.
struct Helpers {
    label: Py<PyAny>,
    record_error: Py<PyAny>,
    non_finite: Py<PyAny>,
    outcome: Py<PyAny>,
}

/// `Helpers` as Python passes them.
type HelperObjects = (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>);

/// How long the lane took over the records it applied, by kind (prediction, label):
/// a histogram's counts per bucket (not cumulative, the last is past every bound) and
/// the sum, in seconds. The service's latency histogram adds them at scrape time
/// (`latency_counts`) instead of timing each of those records in Python.
struct LaneLatency {
    bounds: Vec<f64>,
    counts: [Vec<AtomicU64>; 2],
    /// Each kind's sum as the bits of an `f64`. Only the thread holding the GIL writes
    /// or reads them (every method runs under it), so a load then a store is exact.
    sums: [AtomicU64; 2],
}

impl LaneLatency {
    fn new(bounds: Vec<f64>) -> Self {
        let counts = || (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        LaneLatency {
            counts: [counts(), counts()],
            sums: Default::default(),
            bounds,
        }
    }

    /// One record of `kind` (0 prediction, 1 label) that took `seconds`: counted in the
    /// first bucket whose bound it does not exceed (Prometheus' `le`).
    fn observe(&self, kind: usize, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[kind][bucket].fetch_add(1, Ordering::Relaxed);
        let sum = f64::from_bits(self.sums[kind].load(Ordering::Relaxed)) + seconds;
        self.sums[kind].store(sum.to_bits(), Ordering::Relaxed);
    }
}

/// The kinds `LaneLatency` counts, by their index in its counts and sums.
const KIND_NAMES: [&str; 2] = ["prediction", "label"];

/// A stop request the service's loop and `RecordLane.drain` read after every record:
/// set once (by a signal handler, or another thread), never cleared.
#[pyclass(module = "streamweights._native", frozen)]
pub struct StopFlag {
    requested: AtomicBool,
}

#[pymethods]
impl StopFlag {
    #[new]
    fn new() -> Self {
        StopFlag {
            requested: AtomicBool::new(false),
        }
    }

    fn set(&self) {
        self.requested.store(true, Ordering::SeqCst);
    }

    fn is_set(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// What `RecordLane.drain` stopped at (its second result).
/// The limit, a bound, a kill position or a stop request: nothing is pending.
const DRAIN_PAUSED: u8 = 0;
/// The records ran out.
const DRAIN_ENDED: u8 = 1;
/// A record the lane did not take, or not a `(position, bytes)` item: Python's.
const DRAIN_GENERAL: u8 = 2;
/// A record the lane applied with something to route (the result is handed back).
const DRAIN_APPLIED: u8 = 3;
/// A record the lane raised on (the exception is handed back).
const DRAIN_FAILED: u8 = 4;

/// `drain`'s answer: `(records applied and done, status, item, result)`.
type Drained<'py> = (
    usize,
    u8,
    Option<Bound<'py, PyAny>>,
    Option<Bound<'py, PyAny>>,
);

/// The record lane of one `Pipeline` (see the module doc).
#[pyclass(module = "streamweights._native")]
pub struct RecordLane {
    /// A weak reference to the `Pipeline` (it holds the lane: no cycle for the
    /// collector to find, which a pyclass without `__traverse__` would leak).
    pipeline: Py<PyAny>,
    streams: Vec<LaneStream>,
    index: HashMap<Vec<u8>, usize>,
    max_bytes: usize,
    helpers: Helpers,
    /// Set by `time_records`: each record the lane applies is timed here.
    latency: Option<LaneLatency>,
}

/// `dict[key]` of an object's `__dict__` (a missing attribute is a bug: KeyError).
fn get<'py>(dict: &Bound<'py, PyDict>, key: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    dict.get_item(key)?
        .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(key.clone().unbind()))
}

/// The pipeline's time after `ts` (`latest_ts` moves forward only).
fn advanced(latest: Option<f64>, ts: f64) -> f64 {
    match latest {
        Some(latest) if ts <= latest => latest,
        _ => ts,
    }
}

#[pymethods]
impl RecordLane {
    /// `pipeline`: a weak reference to the `Pipeline`; `streams`: per stream the tuple `(stream_pipeline,
    /// name, models, width, skew_limit, ttl, max_pending, every_labels, every_seconds,
    /// size, (output_start, output_stop), scores, evidence, ranges, clip)`; `helpers`:
    /// `(Label, RecordError, NonFiniteUpdate, Outcome)`.
    #[new]
    fn new(
        py: Python<'_>,
        pipeline: Py<PyAny>,
        streams: &Bound<'_, PyList>,
        helpers: HelperObjects,
        max_bytes: usize,
    ) -> PyResult<Self> {
        let mut lane_streams = Vec::with_capacity(streams.len());
        let mut index = HashMap::new();
        for item in streams.iter() {
            let item = item.downcast::<PyTuple>()?;
            if item.len() != 16 {
                return Err(PyValueError::new_err(
                    "streams: expected tuples of 16 fields",
                ));
            }
            let field = |at: usize| item.get_item(at);
            let stream: Py<PyAny> = field(0)?.unbind();
            let name: String = field(1)?.extract()?;
            let models: Vec<String> = field(2)?.extract()?;
            let width: usize = field(3)?.extract()?;
            let skew_limit: f64 = field(4)?.extract()?;
            let ttl: f64 = field(5)?.extract()?;
            let max_pending: usize = field(6)?.extract()?;
            let every_labels: i64 = field(7)?.extract()?;
            let every_seconds: f64 = field(8)?.extract()?;
            let size: usize = field(9)?.extract()?;
            let output: (usize, usize) = field(10)?.extract()?;
            let scores: Py<PyList> = field(11)?.downcast_into::<PyList>()?.unbind();
            let evidence: Py<PyList> = field(12)?.downcast_into::<PyList>()?.unbind();
            let ranges: Vec<(usize, usize)> = field(13)?.extract()?;
            let clip: f64 = field(14)?.extract()?;
            let uncertainty = field(15)?;
            let uncertainty = if uncertainty.is_none() {
                None
            } else {
                let (holder, layers, kept_shape, keys, raw): UncertaintyFields<'_> =
                    uncertainty.extract()?;
                Some(LaneUncertainty {
                    state: holder
                        .getattr("__dict__")?
                        .downcast_into::<PyDict>()?
                        .unbind(),
                    layers,
                    kept_shape,
                    keys,
                    raw,
                })
            };
            if output.1 != size || output.1 - output.0 != width || width == 0 {
                return Err(PyValueError::new_err(format!(
                    "streams: {name}: the output {output:?} is not the last {width} of {size} values"
                )));
            }
            if index
                .insert(name.as_bytes().to_vec(), lane_streams.len())
                .is_some()
            {
                return Err(PyValueError::new_err(format!("streams: {name} twice")));
            }
            let key = |kind: &str| PyTuple::new(py, [name.as_str(), kind]).map(Bound::unbind);
            let done = |key: &Py<PyTuple>| {
                PyTuple::new(py, [key.bind(py).as_any(), &py.None().into_bound(py)])
                    .map(Bound::unbind)
            };
            let (prediction_key, label_key) = (key("prediction")?, key("label")?);
            let bound = stream.bind(py);
            let join = bound.getattr("join")?;
            let dict_of = |object: &Bound<'_, PyAny>| -> PyResult<Py<PyDict>> {
                Ok(object
                    .getattr("__dict__")?
                    .downcast_into::<PyDict>()?
                    .unbind())
            };
            lane_streams.push(LaneStream {
                counters: bound.downcast::<StreamCounters>()?.clone().unbind(),
                join: join.downcast_into::<PendingJoin>()?.unbind(),
                chain_state: dict_of(&bound.getattr("chain")?)?,
                pipeline: stream,
                prediction_done: done(&prediction_key)?,
                label_done: done(&label_key)?,
                prediction_key,
                label_key,
                name: PyString::new(py, &name).unbind(),
                models: models.iter().map(|m| m.as_bytes().to_vec()).collect(),
                width,
                skew_limit,
                ttl,
                max_pending,
                every_labels,
                every_seconds,
                size,
                output,
                scores,
                evidence,
                ranges,
                clip,
                uncertainty,
                done_counts: Default::default(),
            });
        }
        let (label, record_error, non_finite, outcome) = helpers;
        Ok(RecordLane {
            pipeline,
            streams: lane_streams,
            index,
            max_bytes,
            helpers: Helpers {
                label,
                record_error,
                non_finite,
                outcome,
            },
            latency: None,
        })
    }

    /// From now on, time every record the lane applies (from its bytes to the result
    /// returned, whatever that is) into a histogram with these bucket bounds (seconds,
    /// ascending), read by `latency_counts`. Asked again with the same bounds it keeps
    /// its counts (they only grow, as a Prometheus histogram's must).
    fn time_records(&mut self, bounds: Vec<f64>) -> PyResult<()> {
        if bounds.iter().any(|bound| bound.is_nan())
            || bounds.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(PyValueError::new_err("bounds: expected ascending numbers"));
        }
        match &self.latency {
            None => self.latency = Some(LaneLatency::new(bounds)),
            Some(latency) if latency.bounds == bounds => {}
            Some(latency) => {
                return Err(PyValueError::new_err(format!(
                    "bounds: the lane already times records with bounds {:?}",
                    latency.bounds
                )))
            }
        }
        Ok(())
    }

    /// `[(kind, counts, sum)]` for `"prediction"` and `"label"`: the records the lane
    /// applied since `time_records`, per bucket (not cumulative; the last past every
    /// bound), and the seconds they took in all. Empty when not timing.
    fn latency_counts(&self) -> Vec<(&'static str, Vec<u64>, f64)> {
        match &self.latency {
            None => Vec::new(),
            Some(latency) => KIND_NAMES
                .iter()
                .enumerate()
                .map(|(kind, &name)| {
                    let counts = latency.counts[kind]
                        .iter()
                        .map(|count| count.load(Ordering::Relaxed))
                        .collect();
                    let sum = f64::from_bits(latency.sums[kind].load(Ordering::Relaxed));
                    (name, counts, sum)
                })
                .collect(),
        }
    }

    /// `[(stream, predictions, labels, joined)]`: per stream, the records this lane
    /// returned as done (`(key, None)`) since it was made, and the labels among them
    /// (each joined its prediction). Only the loop's thread changes them; a reader on
    /// another thread sees each count as it stands (monotonic).
    fn done_counts<'py>(&self, py: Python<'py>) -> Vec<(Bound<'py, PyString>, u64, u64, u64)> {
        self.streams
            .iter()
            .map(|stream| {
                let [predictions, labels, joined] = &stream.done_counts;
                (
                    stream.name.bind(py).clone(),
                    predictions.load(Ordering::Relaxed),
                    labels.load(Ordering::Relaxed),
                    joined.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// The service loop's inner loop: pull `(position, raw)` items from `records` one at a
    /// time and apply each the lane takes with nothing to route, as `Service._loop`
    /// would (after each, `position` and `records_seen` in the service's `state`, its
    /// `__dict__`), until `limit` records are done or one needs Python. Each item is
    /// pulled only when the one before is finished, so a record waits for nothing
    /// that came after it. Stops, returning `(done, status, item, result)`:
    ///
    /// * `DRAIN_PAUSED` (0): `limit` records done, or after the record that reaches
    ///   `kill_at` or `bound` (the position after it), or a stop request (`stop`);
    /// * `DRAIN_ENDED` (1): `records` ran out;
    /// * `DRAIN_GENERAL` (2): `item` was pulled and not applied: the lane did not take
    ///   it, it is not a `(position, bytes)` pair, or its position is at `bound`;
    /// * `DRAIN_APPLIED` (3): the lane applied `item` and `result` is `process`'s
    ///   answer to route; `position` and `records_seen` are not moved for it;
    /// * `DRAIN_FAILED` (4): the lane raised `result` (an exception) on `item`.
    ///
    /// An exception from `records` itself propagates, as from Python's `for`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (records, state, adapted, limit, stop, bound, kill_at))]
    fn drain<'py>(
        &self,
        py: Python<'py>,
        records: &Bound<'py, PyAny>,
        state: &Bound<'py, PyDict>,
        adapted: bool,
        limit: usize,
        stop: &Bound<'py, StopFlag>,
        bound: Option<i64>,
        kill_at: Option<i64>,
    ) -> PyResult<Drained<'py>> {
        let mut iterator = records.downcast::<PyIterator>()?.clone();
        let stop = stop.get();
        let mut done = 0;
        while done < limit {
            let item = match iterator.next() {
                None => return Ok((done, DRAIN_ENDED, None, None)),
                Some(item) => item?,
            };
            let pair = match item.downcast::<PyTuple>() {
                Ok(pair) if pair.len() == 2 => pair.clone(),
                _ => return Ok((done, DRAIN_GENERAL, Some(item), None)),
            };
            let position: i64 = match pair.get_item(0)?.extract() {
                Ok(position) => position,
                Err(_) => return Ok((done, DRAIN_GENERAL, Some(item), None)),
            };
            if matches!(bound, Some(bound) if position >= bound) {
                return Ok((done, DRAIN_GENERAL, Some(item), None));
            }
            let raw = pair.get_item(1)?;
            let raw = match raw.downcast::<PyBytes>() {
                Ok(raw) => raw,
                Err(_) => return Ok((done, DRAIN_GENERAL, Some(item), None)),
            };
            let result = match self.process(py, raw, adapted) {
                Err(error) => {
                    let error = error.into_value(py).into_bound(py).into_any();
                    return Ok((done, DRAIN_FAILED, Some(item), Some(error)));
                }
                Ok(None) => return Ok((done, DRAIN_GENERAL, Some(item), None)),
                Ok(Some(result)) => result,
            };
            if !result.get_item(1)?.is_none() {
                return Ok((done, DRAIN_APPLIED, Some(item), Some(result.into_any())));
            }
            done += 1;
            let next = position + 1;
            state.set_item(intern!(py, "position"), next)?;
            let seen: i64 = get(state, intern!(py, "records_seen"))?.extract()?;
            state.set_item(intern!(py, "records_seen"), seen + 1)?;
            if kill_at == Some(next)
                || matches!(bound, Some(bound) if next >= bound)
                || stop.is_set()
            {
                break;
            }
        }
        Ok((done, DRAIN_PAUSED, None, None))
    }

    /// Apply one raw record if the lane can (see the module doc). Returns `None`, with
    /// nothing changed, when Python must; otherwise `(key, result)`: `key` is `(stream,
    /// kind)`, `result` the adapted record's bytes (a prediction, when `adapted`), `None`
    /// (done, nothing to route: counted in `done_counts`) or the `Outcome` to route (a
    /// refusal or a drift). With `time_records` on, a record applied is timed too.
    fn process<'py>(
        &self,
        py: Python<'py>,
        raw: &Bound<'py, PyBytes>,
        adapted: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let began = self.latency.as_ref().map(|_| Instant::now());
        let bytes = raw.as_bytes();
        if bytes.len() > self.max_bytes {
            return Ok(None);
        }
        let record = match read_record(bytes) {
            Some(record) => record,
            None => return Ok(None),
        };
        let stream = match self.index.get(record.stream) {
            Some(&at) => &self.streams[at],
            None => return Ok(None),
        };
        let (kind, result) = match record.label {
            None => (0, self.prediction(py, stream, &record, adapted)),
            Some(label) => (1, self.label(py, stream, &record, label)),
        };
        if let (Some(began), Some(latency), Ok(Some(_))) = (began, &self.latency, &result) {
            latency.observe(kind, began.elapsed().as_secs_f64());
        }
        result
    }
}

impl RecordLane {
    /// A record the stream refused: the dead letter `Pipeline.process` makes of the
    /// `RecordError` (`reject`, which counts it), returned with the record's key.
    fn refused<'py>(
        &self,
        py: Python<'py>,
        stream: &LaneStream,
        key: &Bound<'py, PyAny>,
        reason: &str,
        message: String,
        id: &Bound<'py, PyString>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let error = self
            .helpers
            .record_error
            .bind(py)
            .call1((reason, message))?;
        let pipeline = self.pipeline.bind(py).call0()?; // (a weak reference)
        let outcome = pipeline.call_method1(
            intern!(py, "reject"),
            (error, py.None(), stream.name.bind(py), id),
        )?;
        Ok(Some(PyTuple::new(py, [key, &outcome])?))
    }

    /// `on_prediction` then `_served`, when nothing on the way needs Python: every
    /// check before the first change, then the chain, the uncertainty layers, the join,
    /// the clock and the counters, in the general path's order.
    fn prediction<'py>(
        &self,
        py: Python<'py>,
        stream: &LaneStream,
        record: &Record<'_>,
        adapted: bool,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if record.outputs.len() != stream.models.len() {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(stream.models.len() * stream.width);
        for model in &stream.models {
            match record.outputs.iter().find(|(name, _)| name == model) {
                Some((_, row)) if row.len() == stream.width => rows.extend_from_slice(row),
                _ => return Ok(None),
            }
        }
        let ts = record.ts;
        let counters = stream.counters.bind(py);
        let join = stream.join.bind(py);
        let (latest, since, last) = {
            let c = counters.borrow();
            (c.latest_ts, c.labels_since_publish, c.last_publish_ts)
        };
        if let Some(latest) = latest {
            if ts - latest > stream.skew_limit {
                return Ok(None); // the skew rule decides, in Python
            }
        }
        let now = advanced(latest, ts);
        let id_text = match std::str::from_utf8(record.id) {
            Ok(id) => id,
            Err(_) => return Ok(None), // not UTF-8: Python's refusal
        };
        {
            let join = join.borrow();
            if join.head_ts() < now - stream.ttl {
                return Ok(None); // something expires
            }
            if join.len() >= stream.max_pending || join.contains(id_text) {
                return Ok(None); // an eviction, or a duplicate id
            }
        }
        let due = since >= stream.every_labels
            || (since > 0 && ts - last.unwrap_or(ts) >= stream.every_seconds);
        if due {
            return Ok(None); // a weights version
        }
        counters.borrow_mut().mark_changed(py);
        let core = get(stream.chain_state.bind(py), intern!(py, "_core"))?;
        let core = core.downcast::<ChainCore>()?;
        let served = core.borrow_mut().serve(py, rows, Vec::new());
        let values = match served {
            Ok(Some(values)) if values.len() == stream.size => values,
            Ok(_) => return Ok(None), // not cleared, nothing changed
            Err(error) => {
                // `on_prediction`'s refusal
                let message = error.value(py).str()?.to_string();
                let key = stream.prediction_key.bind(py).as_any();
                let id = PyString::new(py, id_text);
                return self.refused(py, stream, key, "invalid_outputs", message, &id);
            }
        };
        if latest.is_none_or_less(ts) {
            counters.borrow_mut().latest_ts = Some(ts);
        }
        // `StreamUncertainty.serve_flat`: the sets served now are the ones scored later.
        let mut sets = None;
        let mut kept_rows = None;
        if let Some(uncertainty) = &stream.uncertainty {
            let core = get(uncertainty.state.bind(py), intern!(py, "_core"))?;
            let core = core.downcast::<UncertaintyCore>()?.borrow();
            let rows = core.flat_rows(&values, uncertainty.raw, stream.width)?;
            let (wire, kept, _) = core.serve_probabilities(py, &rows)?;
            if uncertainty.layers {
                let (count, width) = uncertainty.kept_shape;
                if count.checked_mul(width) != Some(kept.len()) {
                    return Err(PyValueError::new_err(format!(
                        "conformal: {} thresholds do not fill {count} x {width}",
                        kept.len()
                    )));
                }
                kept_rows = Some((kept, count, width));
                sets = wire;
            }
        }
        let version = counters.borrow().weights_version;
        // The adapted record, made before the flat record moves into the join (an error
        // is raised after the state changes below, as when it was made after them).
        let encoded = if adapted {
            let served = &values[stream.output.0..stream.output.1];
            let sets = match (&stream.uncertainty, sets) {
                (Some(uncertainty), Some(wire)) => Some((&uncertainty.keys, wire)),
                _ => None,
            };
            Some(encode_adapted(record, ts, served, sets, version))
        } else {
            None
        };
        // The payload stays the core's vectors, in the join itself (no Python object),
        // read back by the label.
        let flat = Flat {
            buffer: values,
            kept: kept_rows,
        };
        join.borrow_mut().insert(id_text, ts, Held::Flat(flat));
        {
            let mut counters = counters.borrow_mut();
            counters.predictions += 1;
            if last.is_none() {
                counters.last_publish_ts = Some(ts);
            }
        }
        let key = stream.prediction_key.bind(py).as_any().clone();
        let encoded = match encoded {
            Some(encoded) => encoded?,
            None => {
                stream.done_counts[DONE_PREDICTIONS].fetch_add(1, Ordering::Relaxed);
                return Ok(Some(stream.prediction_done.bind(py).clone()));
            }
        };
        Ok(Some(PyTuple::new(
            py,
            [key, PyBytes::new(py, &encoded).into_any()],
        )?))
    }

    /// `on_label` on the flat record then `_learned`: `learn_served`, then the join,
    /// the clock and the counters (or `_learned` itself for a drift, an expiry or a
    /// weights version).
    fn label<'py>(
        &self,
        py: Python<'py>,
        stream: &LaneStream,
        record: &Record<'_>,
        class: i64,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if class < 0 || class as usize >= stream.width {
            return Ok(None);
        }
        let ts = record.ts;
        let pipeline = stream.pipeline.bind(py);
        let counters = stream.counters.bind(py);
        let join = stream.join.bind(py);
        let latest = counters.borrow().latest_ts;
        if let Some(latest) = latest {
            if ts - latest > stream.skew_limit {
                return Ok(None);
            }
        }
        let id_text = match std::str::from_utf8(record.id) {
            Ok(id) => id,
            Err(_) => return Ok(None), // not UTF-8: Python's refusal
        };
        // Read in place: nothing on the way to the join's own change below asks the join
        // (the borrow ends before any call back into the pipeline).
        let waiting = join.borrow();
        let held = match waiting.held(id_text) {
            Some(held) => held,
            None => return Ok(None), // unmatched: Python's letter
        };
        let layers = matches!(&stream.uncertainty, Some(u) if u.layers);
        // The core's flat record and, with conformal layers, the thresholds served: as
        // the lane kept them, or (an entry restored from a snapshot) a payload dict with
        // a native array of thresholds, read here; anything else, a snapshot's lists,
        // takes the general path, which reads them back first.
        let read_back: (Vec<f64>, Option<Vec<f64>>);
        let (values, kept): (&[f64], Option<&[f64]>) = match held.flat() {
            Some(flat) => {
                if flat.kept.is_some() != layers {
                    return Ok(None);
                }
                (
                    &flat.buffer,
                    flat.kept.as_ref().map(|(kept, _, _)| &kept[..]),
                )
            }
            None => {
                let payload = held.payload(py)?;
                let payload = match payload.downcast::<PyDict>() {
                    Ok(payload) => payload.clone(),
                    Err(_) => return Ok(None),
                };
                let buffer = match payload.get_item(intern!(py, "buffer"))? {
                    Some(buffer) => buffer,
                    None => return Ok(None),
                };
                let kept = payload.get_item(intern!(py, "conformal"))?;
                if payload.len() != 1 + usize::from(layers) || kept.is_some() != layers {
                    return Ok(None);
                }
                if let Some(kept) = &kept {
                    if !arrays::is_readable(kept) {
                        return Ok(None);
                    }
                }
                let kept = match &kept {
                    Some(kept) => Some(read_flat(py, kept)?),
                    None => None,
                };
                read_back = (read_flat(py, &buffer)?, kept);
                (&read_back.0, read_back.1.as_deref())
            }
        };
        let uncertainty = match &stream.uncertainty {
            Some(uncertainty) => Some(
                get(uncertainty.state.bind(py), intern!(py, "_core"))?
                    .downcast_into::<UncertaintyCore>()?,
            ),
            None => None,
        };
        let core = get(stream.chain_state.bind(py), intern!(py, "_core"))?;
        let core = core.downcast::<ChainCore>()?;
        counters.borrow_mut().mark_changed(py);
        let label = class.into_pyobject(py)?;
        let fired = learn_served_values(
            py,
            core,
            values,
            (class as usize, label.as_any()),
            stream.scores.bind(py),
            stream.evidence.bind(py),
            stream.ranges.clone(),
            stream.clip,
            uncertainty.as_ref().map(|core| (core, kept.unwrap_or(&[]))),
        );
        // The oldest entry's event time once this one leaves; then the join is let go.
        let head_after = waiting.head_ts_without(id_text);
        drop(waiting);
        let key = stream.label_key.bind(py).as_any().clone();
        let fired = match fired {
            Ok(Some(fired)) => fired,
            Ok(None) => return Ok(None), // not cleared, nothing changed
            Err(error) if error.is_instance(py, self.helpers.non_finite.bind(py)) => {
                let message = format!(
                    "label: {}; the stream keeps its last good state",
                    error.value(py).str()?
                );
                let id = PyString::new(py, id_text);
                return self.refused(py, stream, &key, "non_finite_state", message, &id);
            }
            Err(error) => return Err(error),
        };
        // What `_learned` does next, unless something on its path needs Python.
        let now = advanced(latest, ts);
        let (since, last) = {
            let counters = counters.borrow();
            (counters.labels_since_publish + 1, counters.last_publish_ts)
        };
        let due = since >= stream.every_labels
            || (since > 0 && ts - last.unwrap_or(ts) >= stream.every_seconds);
        if !fired.is_empty() || due || head_after < now - stream.ttl {
            let label =
                self.helpers
                    .label
                    .bind(py)
                    .call1((stream.name.bind(py), id_text, ts, &label))?;
            let outcome = self.helpers.outcome.bind(py).call(
                (),
                Some(&[("stream", stream.name.bind(py))].into_py_dict(py)?),
            )?;
            let outcome =
                pipeline.call_method1(intern!(py, "_learned"), (label, fired, outcome))?;
            return Ok(Some(PyTuple::new(py, [key, outcome])?));
        }
        // `PendingJoin.pop`, then the clock and the counters.
        join.borrow_mut().remove(id_text);
        {
            let mut counters = counters.borrow_mut();
            if latest.is_none_or_less(ts) {
                counters.latest_ts = Some(ts);
            }
            counters.labels += 1;
            counters.labels_since_publish = since;
            if last.is_none() {
                counters.last_publish_ts = Some(ts);
            }
        }
        stream.done_counts[DONE_LABELS].fetch_add(1, Ordering::Relaxed);
        stream.done_counts[DONE_JOINED].fetch_add(1, Ordering::Relaxed);
        Ok(Some(stream.label_done.bind(py).clone()))
    }
}

/// `Option<f64>` as the pipeline's clock: whether `ts` moves it (`None`, or later).
trait Clock {
    fn is_none_or_less(&self, ts: f64) -> bool;
}

impl Clock for Option<f64> {
    fn is_none_or_less(&self, ts: f64) -> bool {
        match self {
            None => true,
            Some(latest) => ts > *latest,
        }
    }
}

/// The adapted record `events.encode(Adapted(...))` writes for a served prediction:
/// the stream's name and the id as they came (no escapes in them), the rest as orjson.
fn encode_adapted(
    record: &Record<'_>,
    ts: f64,
    served: &[f64],
    sets: Option<(&Vec<Vec<u8>>, ClassSets)>,
    version: i64,
) -> PyResult<Vec<u8>> {
    let mut out = Vec::with_capacity(96 + record.id.len() + 24 * served.len());
    out.extend_from_slice(b"{\"schema\":1,\"stream\":\"");
    out.extend_from_slice(record.stream);
    out.extend_from_slice(b"\",\"id\":\"");
    out.extend_from_slice(record.id);
    out.extend_from_slice(b"\",\"ts\":");
    write_float(&mut out, ts);
    out.extend_from_slice(b",\"proba\":[");
    for (index, &value) in served.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_float(&mut out, value);
    }
    out.push(b']');
    if let Some((keys, wire)) = sets {
        // `dict(zip(keys, wire))`: each level's set of classes
        if wire.len() != keys.len() {
            return Err(PyValueError::new_err("sets: one per level expected"));
        }
        out.extend_from_slice(b",\"sets\":{");
        for (index, (key, set)) in keys.iter().zip(&wire).enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key);
            out.extend_from_slice(b":[");
            for (at, &class) in set.iter().enumerate() {
                if at > 0 {
                    out.push(b',');
                }
                write_integer(&mut out, class as i64);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b",\"weights_version\":");
    write_integer(&mut out, version);
    out.push(b'}');
    Ok(out)
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<RecordLane>()?;
    module.add_class::<StopFlag>()?;
    module.add_function(wrap_pyfunction!(json_float, module)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ryu's fixed-notation text is what the full layout writes, for every value that
    /// takes the short way: random bit patterns, round numbers, powers of ten at the
    /// edges of the fixed range, signed zeros and subnormals.
    #[test]
    fn ryus_fixed_text_is_the_layouts() {
        let mut state = 0x853c_49e6_748f_ea9b_u64;
        let mut values: Vec<f64> = vec![0.0, -0.0, 1.0, -1.0, 0.5, 123.0, 1e15, 9.999e15];
        values.extend([
            1e16,
            1e-5,
            1e-6,
            0.00012,
            1.5e-5,
            5e-324,
            f64::MAX,
            f64::MIN,
        ]);
        for exponent in -8..18 {
            let power = 10f64.powi(exponent);
            values.extend([power, -power, power * 1.25, power * 0.999_999_9]);
        }
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push(f64::from_bits(state));
            values.push((state >> 11) as f64 / (1u64 << 53) as f64); // in [0, 1)
        }
        let mut short = 0;
        for value in values.into_iter().filter(|v| v.is_finite()) {
            let mut fast = Vec::new();
            write_float(&mut fast, value);
            let mut full = Vec::new();
            let mut buffer = ryu::Buffer::new();
            layout_float(&mut full, buffer.format_finite(value).as_bytes());
            assert_eq!(fast, full, "{value:e}");
            short += usize::from(!fast.contains(&b'e'));
        }
        assert!(short > 200_000, "the short way was taken {short} times");
    }
}
