//! The Kafka source's merge of each task's two partitions, and the hand-out of the merged
//! records, in the core (`runtime/kafka_source.py` drives it; the Python merge it
//! replaced is the oracle in `tests/reference/kafka_merge.py`).
//!
//! A task is one partition number of the two co-partitioned input topics. Its fetched
//! records wait in two buffers (predictions, labels), each record under a merge key: its
//! event time, or, when that jumps more than `max_skew` past the partition's previous
//! readable one, the previous record's key (the pipeline refuses such a record; merged
//! at its own far-future time it would hold back every record behind it). `release`
//! takes out every record whose place is known before the next fetch, in the order
//! `(key, side, offset, task number)` with predictions (side 0) before labels at equal
//! keys; a task whose next head waits for its other, empty partition (not passable:
//! neither read to its end nor fetched to the end of a bounded replay) releases nothing
//! more until the next fetch. `next_record` then hands the run out one record at a time,
//! keeping what a commit reads (the offset after the last record handed out per
//! partition, the records handed out per task), the last record's origin (a dead
//! letter's) and, while asked to (`keep_log`), each task's values handed out since the
//! last `take_logs` (what a spread commit logs in the changelog). Keys compare as
//! Python's floats do: `-0.0` equals `0.0`; they are never NaN (a record without a
//! readable finite `ts` sorts first, at `-inf`).
//!
//! Per record this is a few loads and stores, where the Python merge cost ~1.7 µs
//! (buffering ~0.5, the run ~0.7, the per-record generator ~0.55): a fifth of a Kafka
//! replica's CPU at ~130k records/s (issue 11).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::PyTraverseError;

/// One buffered record: its merge key, offset and value (the raw bytes object).
struct Buffered {
    key: f64,
    offset: i64,
    raw: Py<PyAny>,
}

/// One task's two buffers and, per side, the latest readable event time and the key it
/// was merged at (the anchor of a record that jumps past the skew limit).
struct Task {
    buffers: [VecDeque<Buffered>; 2],
    last: [Option<f64>; 2],
    keys: [f64; 2],
}

impl Default for Task {
    fn default() -> Self {
        Task {
            buffers: [VecDeque::new(), VecDeque::new()],
            last: [None, None],
            keys: [f64::NEG_INFINITY; 2],
        }
    }
}

impl Task {
    fn len(&self) -> usize {
        self.buffers[0].len() + self.buffers[1].len()
    }
}

/// A buffered record as Python sees it: `(key, side, offset, raw)`.
type Entry = (f64, usize, i64, Py<PyAny>);

/// A record taken out of the buffers in merged order, waiting to be handed out.
struct Released {
    number: i64,
    side: usize,
    offset: i64,
    raw: Py<PyAny>,
}

/// A partition's head in the release heap: ordered by `(key, side, offset, number)`,
/// smallest first (the heap is a max-heap, so `Ord` is reversed).
struct Head {
    key: f64,
    side: usize,
    offset: i64,
    number: i64,
}

impl Head {
    fn order(&self, other: &Self) -> Ordering {
        // keys are never NaN; -0.0 and 0.0 are equal, as Python's tuple comparison has it
        self.key
            .partial_cmp(&other.key)
            .unwrap_or(Ordering::Equal)
            .then(self.side.cmp(&other.side))
            .then(self.offset.cmp(&other.offset))
            .then(self.number.cmp(&other.number))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        other.order(self)
    }
}

/// The merged input of the tasks one consumer owns (see the module doc).
#[pyclass(module = "streamweights._native")]
pub struct TaskMerges {
    tasks: BTreeMap<i64, Task>,
    /// The last run taken out by `release`, and how many of it were handed out.
    run: Vec<Released>,
    position: usize,
    /// How many more of the run may be handed out (a test hook holds input back).
    allowed: usize,
    /// Per `(task, side)`: the offset after the last record handed out, since `settle`.
    released: BTreeMap<(i64, usize), i64>,
    /// Per task: records handed out since `settle`.
    counts: BTreeMap<i64, i64>,
    /// `(task, side, offset)` of the record last handed out (kept across `reset`).
    last: Option<(i64, usize, i64)>,
    /// While logging is on (`keep_log`): per task, the values handed out since
    /// `take_logs`, each as its length (4 bytes, little-endian) and its bytes (a value
    /// that is not bytes, a tombstone's `None`, as length 0). The Kafka runtime writes
    /// them to the changelog, so that a stream left unwritten by a commit can be brought
    /// up to it again by replaying them (`runtime/commit_spread.py`).
    logs: Option<BTreeMap<i64, Vec<u8>>>,
}

#[pymethods]
impl TaskMerges {
    #[new]
    fn new() -> Self {
        TaskMerges {
            tasks: BTreeMap::new(),
            run: Vec::new(),
            position: 0,
            allowed: 0,
            released: BTreeMap::new(),
            counts: BTreeMap::new(),
            last: None,
            logs: None,
        }
    }

    /// Log the values handed out per task (`on`), or stop logging and drop the logs.
    fn keep_log(&mut self, on: bool) {
        self.logs = if on { Some(BTreeMap::new()) } else { None };
    }

    /// The logs kept since the last call, `{task: bytes}` (tasks with records only),
    /// emptied; `{}` while logging is off.
    fn take_logs<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let taken = PyDict::new(py);
        if let Some(logs) = self.logs.as_mut() {
            for (&number, log) in logs.iter_mut() {
                if !log.is_empty() {
                    taken.set_item(number, PyBytes::new(py, log))?;
                    log.clear();
                }
            }
        }
        Ok(taken)
    }

    /// Buffer one record of task `number`'s partition `side` with event time `ts`
    /// (`-inf`: unreadable), merged under the skew rule with `max_skew` (the source
    /// passes the same limit at every call).
    fn add(
        &mut self,
        number: i64,
        side: usize,
        offset: i64,
        ts: f64,
        raw: Py<PyAny>,
        max_skew: f64,
    ) -> PyResult<()> {
        check_side(side)?;
        let task = self.tasks.entry(number).or_default();
        push(task, side, offset, ts, raw, max_skew);
        Ok(())
    }

    /// Buffer a fetched batch of one partition: `records` are kafka-python
    /// `ConsumerRecord`s (anything with `offset` and `value`; `fields`, when given, is
    /// `(tuple type, offset's index, value's index)`: a record of exactly that type is
    /// read by index, without an attribute lookup). Event times are read by
    /// the core (`event_time.rs`); a record it leaves undecided goes to `event_time`
    /// (`kafka_source.event_time`), called before the merges are borrowed, so Python
    /// code run meanwhile (a signal handler's `describe`) may read them.
    #[pyo3(signature = (number, side, records, event_time, max_skew, fields=None))]
    fn add_records(
        merges: &Bound<'_, Self>,
        number: i64,
        side: usize,
        records: &Bound<'_, PyList>,
        event_time: &Bound<'_, PyAny>,
        max_skew: f64,
        fields: Option<(Bound<'_, PyAny>, usize, usize)>,
    ) -> PyResult<()> {
        check_side(side)?;
        let py = records.py();
        let mut batch = Vec::with_capacity(records.len());
        for record in records.iter() {
            let by_index = match &fields {
                Some((kind, offset, value)) if record.get_type().is(kind) => record
                    .downcast::<PyTuple>()
                    .ok()
                    .map(|tuple| (tuple, *offset, *value)),
                _ => None,
            };
            let (offset, raw) = match by_index {
                Some((tuple, offset, value)) => (tuple.get_item(offset)?, tuple.get_item(value)?),
                None => (
                    record.getattr(intern!(py, "offset"))?,
                    record.getattr(intern!(py, "value"))?,
                ),
            };
            let offset: i64 = offset.extract()?;
            let reading = match raw.downcast_exact::<PyBytes>() {
                Ok(bytes) => crate::event_time::read(bytes.as_bytes()),
                Err(_) => None,
            };
            let ts = match reading {
                Some(ts) => ts,
                None => event_time.call1((&raw,))?.extract()?,
            };
            batch.push((offset, ts, raw.unbind()));
        }
        let mut merges = merges.borrow_mut();
        let task = merges.tasks.entry(number).or_default();
        for (offset, ts, raw) in batch {
            push(task, side, offset, ts, raw, max_skew);
        }
        Ok(())
    }

    /// `{task: (predictions buffered, labels buffered)}` for every task held.
    fn buffer_sizes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let sizes = PyDict::new(py);
        for (number, task) in &self.tasks {
            sizes.set_item(number, (task.buffers[0].len(), task.buffers[1].len()))?;
        }
        Ok(sizes)
    }

    /// Records buffered over all tasks (not counting the run).
    fn buffered(&self) -> usize {
        self.tasks.values().map(Task::len).sum()
    }

    /// `[(key, side, offset, raw), ...]` of one side of task `number` (tests, diagnostics).
    fn entries<'py>(&self, py: Python<'py>, number: i64, side: usize) -> PyResult<Vec<Entry>> {
        check_side(side)?;
        Ok(match self.tasks.get(&number) {
            None => Vec::new(),
            Some(task) => task.buffers[side]
                .iter()
                .map(|entry| (entry.key, side, entry.offset, entry.raw.clone_ref(py)))
                .collect(),
        })
    }

    /// Drop the buffers of the tasks not in `owned` (their partitions moved away).
    fn forget_except(&mut self, owned: Vec<i64>) {
        self.tasks.retain(|number, _| owned.contains(number));
    }

    /// Drop every buffer, the run, what was not yet settled and the logs (a roll-back:
    /// the tasks restart from their snapshots). The last origin stays.
    fn reset(&mut self) {
        self.tasks.clear();
        self.run.clear();
        self.position = 0;
        self.allowed = 0;
        self.released.clear();
        self.counts.clear();
        if let Some(logs) = self.logs.as_mut() {
            logs.clear();
        }
    }

    /// Records of the run not yet handed out.
    fn run_left(&self) -> usize {
        self.run.len() - self.position
    }

    /// Whether any record of the current run was handed out.
    fn handed_out(&self) -> bool {
        self.position > 0
    }

    /// Let `count` more records of the run be handed out (from where it stands).
    fn allow(&mut self, count: usize) {
        self.allowed = count.min(self.run.len() - self.position);
    }

    /// Take out every record releasable now, in merged order, as the next run (the
    /// previous one must be handed out whole) and allow all of it out; returns its
    /// length. `passable(task)` says whether each partition of a task may be passed
    /// while empty; it is asked only for a task whose next head waits on an empty
    /// partner, at most once per task, and with no borrow of the merges held (it is
    /// Python, and may read them).
    fn release(merges: &Bound<'_, Self>, passable: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut heads = BinaryHeap::new();
        {
            let mut this = merges.borrow_mut();
            if this.position < this.run.len() {
                return Err(PyValueError::new_err(
                    "release: the previous run is not handed out",
                ));
            }
            this.run.clear();
            this.position = 0;
            this.allowed = 0;
            for (&number, task) in &this.tasks {
                for (side, buffer) in task.buffers.iter().enumerate() {
                    if let Some(entry) = buffer.front() {
                        heads.push(Head {
                            key: entry.key,
                            side,
                            offset: entry.offset,
                            number,
                        });
                    }
                }
            }
        }
        let mut flags: BTreeMap<i64, (bool, bool)> = BTreeMap::new();
        while let Some(head) = heads.pop() {
            let (number, side) = (head.number, head.side);
            let partner_empty = match merges.borrow().tasks.get(&number) {
                Some(task) => task.buffers[1 - side].is_empty(),
                None => continue, // dropped meanwhile
            };
            if partner_empty {
                // its partner may still bring something earlier
                let (predictions, labels) = match flags.get(&number) {
                    Some(&pair) => pair,
                    None => {
                        let pair: (bool, bool) = passable.call1((number,))?.extract()?;
                        flags.insert(number, pair);
                        pair
                    }
                };
                if !(if side == 0 { labels } else { predictions }) {
                    continue; // blocked until the next fetch (its only head)
                }
            }
            let mut this = merges.borrow_mut();
            let task = match this.tasks.get_mut(&number) {
                Some(task) => task,
                None => continue,
            };
            let entry = match task.buffers[side].pop_front() {
                Some(entry) => entry,
                None => continue,
            };
            if let Some(next) = task.buffers[side].front() {
                heads.push(Head {
                    key: next.key,
                    side,
                    offset: next.offset,
                    number,
                });
            }
            this.run.push(Released {
                number,
                side,
                offset: entry.offset,
                raw: entry.raw,
            });
        }
        let mut this = merges.borrow_mut();
        this.allowed = this.run.len();
        Ok(this.run.len())
    }

    /// The next record of the run (its raw value), or `None` when the run is handed out
    /// or held; keeps the offsets, counts and origin a commit and a dead letter read.
    fn next_record(&mut self, py: Python<'_>) -> Option<Py<PyAny>> {
        if self.allowed == 0 {
            return None;
        }
        let entry = self.run.get(self.position)?;
        self.position += 1;
        self.allowed -= 1;
        self.released
            .insert((entry.number, entry.side), entry.offset + 1);
        *self.counts.entry(entry.number).or_insert(0) += 1;
        self.last = Some((entry.number, entry.side, entry.offset));
        if let Some(logs) = self.logs.as_mut() {
            let value = entry.raw.bind(py);
            let bytes = value
                .downcast::<PyBytes>()
                .map(|value| value.as_bytes())
                .unwrap_or(&[]);
            let log = logs.entry(entry.number).or_default();
            // a value longer than 4 GiB never gets here (Kafka's messages are far smaller)
            log.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            log.extend_from_slice(bytes);
        }
        Some(entry.raw.clone_ref(py))
    }

    /// Move what was handed out since the last call into `released`
    /// (`{(topic, task): next offset}`) and `counts` (`{task: records}`), the dicts a
    /// commit reads; `topics` are the predictions and labels topic names.
    fn settle(
        &mut self,
        released: &Bound<'_, PyDict>,
        counts: &Bound<'_, PyDict>,
        topics: (Py<PyAny>, Py<PyAny>),
    ) -> PyResult<()> {
        let py = released.py();
        for (&(number, side), &offset) in &self.released {
            let topic = if side == 0 { &topics.0 } else { &topics.1 };
            released.set_item((topic.clone_ref(py), number), offset)?;
        }
        for (&number, &count) in &self.counts {
            let before: i64 = match counts.get_item(number)? {
                Some(value) => value.extract()?,
                None => 0,
            };
            counts.set_item(number, before + count)?;
        }
        self.released.clear();
        self.counts.clear();
        Ok(())
    }

    /// `(task, side, offset)` of the record last handed out, or `None`.
    fn last_origin(&self) -> Option<(i64, usize, i64)> {
        self.last
    }
}

fn check_side(side: usize) -> PyResult<()> {
    if side > 1 {
        return Err(PyValueError::new_err(format!(
            "side must be 0 or 1, not {side}"
        )));
    }
    Ok(())
}

/// Buffer one record under the skew rule (see the module doc).
fn push(task: &mut Task, side: usize, offset: i64, ts: f64, raw: Py<PyAny>, max_skew: f64) {
    let mut key = ts;
    if let Some(previous) = task.last[side] {
        if ts - previous > max_skew {
            key = task.keys[side];
        }
    }
    if ts != f64::NEG_INFINITY {
        task.last[side] = Some(ts);
        task.keys[side] = key;
    }
    task.buffers[side].push_back(Buffered { key, offset, raw });
}

/// `(sequence number, raw value)` of the merged records, what `KafkaSource.open` returns:
/// records come from the merge's run while it has some; everything else (fetching,
/// roll-backs, holds, the end of a bounded replay) is `refill(sequence)`'s, a Python
/// method that returns whether there may be more. A roll-back the source has flagged
/// (`_rebalanced` with an `on_rebalance` set) is handled before the next record, as the
/// per-record generator did.
#[pyclass(module = "streamweights._native")]
pub struct MergedRecords {
    merges: Py<TaskMerges>,
    source: Py<PyAny>,
    refill: Py<PyAny>,
    sequence: i64,
    ended: bool,
}

#[pymethods]
impl MergedRecords {
    #[new]
    fn new(merges: Py<TaskMerges>, source: Py<PyAny>, refill: Py<PyAny>, start: i64) -> Self {
        MergedRecords {
            merges,
            source,
            refill,
            sequence: start,
            ended: false,
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if self.ended {
            return Ok(None);
        }
        loop {
            let source = self.source.bind(py);
            let rolling_back = source.getattr(intern!(py, "_rebalanced"))?.is_truthy()?
                && !source.getattr(intern!(py, "on_rebalance"))?.is_none();
            if !rolling_back {
                let raw = self.merges.borrow_mut(py).next_record(py);
                if let Some(raw) = raw {
                    let sequence = self.sequence;
                    self.sequence += 1;
                    return Ok(Some(PyTuple::new(
                        py,
                        [sequence.into_pyobject(py)?.into_any(), raw.into_bound(py)],
                    )?));
                }
            }
            // no borrow of the merges is held here: refill calls into them
            if !self.refill.call1(py, (self.sequence,))?.is_truthy(py)? {
                self.ended = true;
                return Ok(None);
            }
        }
    }

    /// The collector may find a cycle through the source (should it ever hold the
    /// iterator): the three references are visited.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.merges)?;
        visit.call(&self.source)?;
        visit.call(&self.refill)
    }

    /// End the iteration (as a generator's ``close``).
    fn close(&mut self) {
        self.ended = true;
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<TaskMerges>()?;
    module.add_class::<MergedRecords>()?;
    Ok(())
}
