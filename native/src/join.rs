//! `PendingJoin`: the served predictions waiting for their labels, keyed by id and kept
//! in arrival order, bounded in count and in event-time age (Python face:
//! `streamweights.join.PendingJoin`, a subclass that adds the snapshot verbs, which
//! encode entries with Python's codec). The rules are `join.py`'s module doc.
//!
//! It was an `OrderedDict` of `Pending`s beside a few attributes, which the record lane
//! read and wrote through the object's `__dict__`: about ten dict lookups a record and
//! each id hashed as a new Python string twice. Here the lane asks the join directly.
//!
//! Layout: a hash map from id to entry, and the ids in arrival order in a queue. An
//! entry that leaves from the middle (its label came) marks its place in the queue
//! stale (found by its sequence number, which grows along the queue: a binary search,
//! no hashing): stale places are dropped when they reach the front, and swept out
//! whenever they outnumber the live ones, so the front is always the oldest live entry,
//! every operation is O(1) amortised but the search's O(log n), and the queue holds at
//! most about twice the entries.
//!
//! Borrowing: the join is changed only in plain Rust sections; Python objects (a
//! `Pending` made for an entry that leaves, an entry's snapshot text from Python's
//! codec) are made with the join let go or only read, so another thread reading it
//! meanwhile (the HTTP endpoints' summaries: `len`, the counters) never meets a join
//! borrowed to change.

use std::cmp::Ordering::{Equal, Greater};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyList, PyString};
use pyo3::PyTraverseError;

use crate::entry_text::{entry_ends, shape_of, FlatShape};
use crate::pending::{flat_payload, Flat, Pending};

/// One waiting prediction: its place in arrival order, its event time (as a float, for
/// the expiry tests), what it holds, its snapshot text once made, and the snapshot
/// segment that text was written in (`(segment, index)`) once written.
struct Entry {
    seq: u64,
    ts: f64,
    held: Held,
    encoded: Option<Py<PyString>>,
    place: Option<(u32, u32)>,
}

/// A place in arrival order: the entry's sequence number, its event time and its id,
/// and whether the entry still waits there (`live`: the entry under `id` has this
/// `seq`). The time is the entry's own (set once, at insertion), kept here so that the
/// oldest entry's time, asked for on every record, is read without hashing its id.
struct Place {
    seq: u64,
    ts: f64,
    id: Arc<str>,
    live: bool,
}

/// Entries written to snapshots together (consecutive in arrival order): how many the
/// segment holds and the indices of those that have left the join since.
struct Segment {
    size: u32,
    gone: Vec<u32>,
}

/// What a snapshot of the join writes: the new segments' texts (`[id, text]`), the
/// layout of every live segment in arrival order (`[id, size, gone indices, sorted]`),
/// the next segment id, and the segments no longer needed since the last delta.
type SegmentDelta = (Vec<(u32, String)>, Vec<(u32, u32, Vec<u32>)>, u32, Vec<u32>);

/// What a waiting prediction holds: the `Pending` it was added as (from Python, or a
/// restore), or the record lane's flat payload, kept without any Python object (a
/// `Pending` is made of it when Python asks: `get`, `waiting`, and as it leaves).
pub enum Held {
    Object(Py<Pending>),
    Flat(Flat),
}

impl Held {
    /// The lane's flat payload, held bare or inside a `Pending` (one the lane's payload
    /// was handed out in and given back, as by a restore of `waiting()`).
    pub fn flat(&self) -> Option<&Flat> {
        match self {
            Held::Flat(flat) => Some(flat),
            Held::Object(pending) => pending.get().flat.as_ref(),
        }
    }

    /// The payload as Python sees it (`Pending.payload`).
    pub fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Held::Flat(flat) => flat_payload(py, flat),
            Held::Object(pending) => pending.get().payload_object(py),
        }
    }
}

/// The `Pending` Python sees for an entry, made anew for a flat one (`flat` cloned).
fn pending_of(py: Python<'_>, id: &str, entry: &Entry) -> PyResult<Py<Pending>> {
    match &entry.held {
        Held::Object(pending) => Ok(pending.clone_ref(py)),
        Held::Flat(flat) => made(py, id, entry.ts, flat.clone()),
    }
}

/// The `Pending` of an entry that leaves (its flat payload moved, not copied).
fn into_pending(py: Python<'_>, id: &str, entry: Entry) -> PyResult<Py<Pending>> {
    match entry.held {
        Held::Object(pending) => Ok(pending),
        Held::Flat(flat) => made(py, id, entry.ts, flat),
    }
}

fn checked_max_pending(max_pending: i64) -> PyResult<usize> {
    if max_pending < 1 {
        return Err(PyValueError::new_err(format!(
            "max_pending: must be >= 1, got {max_pending}"
        )));
    }
    Ok(max_pending as usize)
}

/// `not ttl > 0` is refused (NaN too), named as Python shows the float.
fn checked_ttl(py: Python<'_>, ttl_seconds: f64) -> PyResult<f64> {
    if ttl_seconds.is_nan() || ttl_seconds <= 0.0 {
        let shown = PyFloat::new(py, ttl_seconds).repr()?;
        return Err(PyValueError::new_err(format!(
            "ttl_seconds: must be > 0, got {shown}"
        )));
    }
    Ok(ttl_seconds)
}

/// The `Pending`s of entries that left (evicted or expired), in the order they left.
fn leaving(py: Python<'_>, left: Vec<(Arc<str>, Entry)>) -> PyResult<Vec<Py<Pending>>> {
    left.into_iter()
        .map(|(id, entry)| into_pending(py, &id, entry))
        .collect()
}

fn made(py: Python<'_>, id: &str, ts: f64, flat: Flat) -> PyResult<Py<Pending>> {
    let id = PyString::new(py, id).into_any().unbind();
    let ts = PyFloat::new(py, ts).into_any().unbind();
    Py::new(py, Pending::flat(id, ts, flat))
}

/// How an entry's snapshot text is made (`PendingJoin::encode_missing`): by the
/// Python codec, from these arguments, or by the core around the skeleton of its shape.
enum Text<'py> {
    Codec(
        u64,
        Arc<str>,
        (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>),
    ),
    Core(u64, Arc<str>, FlatShape, String, String),
}

/// Pending predictions keyed by id, bounded in count and in event-time age.
#[pyclass(module = "streamweights._native", subclass)]
pub struct PendingJoin {
    #[pyo3(get)]
    max_pending: usize,
    #[pyo3(get)]
    ttl_seconds: f64,
    #[pyo3(get)]
    expired_total: u64,
    #[pyo3(get)]
    evicted_total: u64,
    #[pyo3(get)]
    joined_total: u64,
    entries: HashMap<Arc<str>, Entry>,
    /// The places in arrival order; the front is live whenever any entry is.
    order: VecDeque<Place>,
    next_seq: u64,
    /// The snapshot segments that still hold a waiting entry, by id (ids grow with
    /// arrival order); see `segment_delta`.
    segments: BTreeMap<u32, Segment>,
    next_segment: u32,
    /// Entries that left from live segments (their `gone` lengths added up).
    gone_total: usize,
    /// Segments whose last entry left since the last `segment_delta`.
    dropped: Vec<u32>,
    /// Per flat payload shape, the skeleton text `encode` wrote for it: the core then
    /// writes such entries' texts itself (`entry_text.rs`). A cache, not state; it
    /// holds for the codec it was learned from only (`skeleton_codec`).
    skeletons: HashMap<FlatShape, String>,
    skeleton_codec: Option<Py<PyAny>>,
}

impl PendingJoin {
    /// Drops stale places at the front; sweeps them all once they outnumber the live.
    fn settle(&mut self) {
        while self.order.front().map_or(false, |place| !place.live) {
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            self.order.retain(|place| place.live);
        }
    }

    /// Marks stale the place of the entry placed at `seq`, which has left.
    fn mark_left(&mut self, seq: u64) {
        let at = self.order.partition_point(|place| place.seq < seq);
        if let Some(place) = self.order.get_mut(at) {
            if place.seq == seq {
                place.live = false;
            }
        }
    }

    /// The waiting entries in arrival order, with their ids (stale places skipped).
    fn in_order(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.order
            .iter()
            .filter_map(move |place| match self.entries.get(&place.id) {
                Some(entry) if entry.seq == place.seq => Some((&place.id, entry)),
                _ => None,
            })
    }

    /// The oldest entry's event time; `inf` when none waits. (The front place is the
    /// oldest live entry's whenever one waits, and none is left once none does.)
    pub fn head_ts(&self) -> f64 {
        self.order.front().map_or(f64::INFINITY, |place| place.ts)
    }

    /// `head_ts` as it will be once `id` (waiting) has left.
    pub fn head_ts_without(&self, id: &str) -> f64 {
        match self.order.front() {
            Some(front) if &*front.id == id => self
                .in_order()
                .nth(1)
                .map_or(f64::INFINITY, |(_, entry)| entry.ts),
            _ => self.head_ts(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// What the entry under `id` holds, if one waits.
    pub fn held(&self, id: &str) -> Option<&Held> {
        self.entries.get(id).map(|entry| &entry.held)
    }

    /// Holds `held` under `id`, the newest; the caller has made sure that `id` is not
    /// waiting and that there is room.
    pub fn insert(&mut self, id: &str, ts: f64, held: Held) {
        let id: Arc<str> = Arc::from(id);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back(Place {
            seq,
            ts,
            id: id.clone(),
            live: true,
        });
        self.entries.insert(
            id,
            Entry {
                seq,
                ts,
                held,
                encoded: None,
                place: None,
            },
        );
    }

    /// Takes the entry under `id` (a label joined it), if one waits.
    fn take(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.joined_total += 1;
        self.forget(&entry);
        self.mark_left(entry.seq);
        self.settle();
        Some(entry)
    }

    /// Notes in its snapshot segment that `entry` left; a segment left empty is dropped.
    fn forget(&mut self, entry: &Entry) {
        if let Some((id, index)) = entry.place {
            if let Some(segment) = self.segments.get_mut(&id) {
                segment.gone.push(index);
                self.gone_total += 1;
                if segment.gone.len() >= segment.size as usize {
                    self.gone_total -= segment.gone.len();
                    self.segments.remove(&id);
                    self.dropped.push(id);
                }
            }
        }
    }

    /// `take` for the record lane, which has read what it needed already.
    pub fn remove(&mut self, id: &str) -> bool {
        self.take(id).is_some()
    }

    fn take_oldest(&mut self) -> Option<(Arc<str>, Entry)> {
        let id = self.order.pop_front()?.id;
        let entry = self.entries.remove(&id);
        if let Some(entry) = &entry {
            self.forget(entry);
        }
        self.settle();
        entry.map(|entry| (id, entry))
    }

    fn clear_entries(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.segments.clear();
        self.next_segment = 0;
        self.gone_total = 0;
        self.dropped.clear();
    }

    /// Makes the snapshot text of each of `wanted` (`(seq, id)` of waiting entries) that
    /// has none and keeps it. A flat payload of a shape whose skeleton is known gets its
    /// text from the core (`entry_text.rs`); every other entry from `encode(id, ts,
    /// payload)` (Python's codec, run with the join let go). A text `encode` wrote for a
    /// flat payload teaches the join that shape's skeleton when the core's id, time and
    /// data around it are exactly the text's (they always are: a check, not a guess).
    fn encode_missing(
        slf: &Bound<'_, Self>,
        encode: &Bound<'_, PyAny>,
        wanted: &[(u64, Arc<str>)],
    ) -> PyResult<()> {
        let py = slf.py();
        // What to write for each entry without a text: `encode`'s arguments, or, for a
        // flat payload, what the core writes around its skeleton; and the skeletons
        // learned (dropped if they were learned from another codec).
        let mut work = Vec::new();
        let mut skeletons = {
            let mut join = slf.borrow_mut();
            let same_codec =
                matches!(&join.skeleton_codec, Some(codec) if codec.bind(py).is(encode));
            if !same_codec {
                join.skeletons.clear();
                join.skeleton_codec = Some(encode.clone().unbind());
            }
            for (seq, id) in wanted {
                let entry = match join.entries.get(id) {
                    Some(entry) if entry.seq == *seq && entry.encoded.is_none() => entry,
                    _ => continue,
                };
                work.push(match &entry.held {
                    Held::Object(pending) => {
                        let pending = pending.get();
                        let arguments = (
                            pending.id.bind(py).clone(),
                            pending.ts.bind(py).clone(),
                            pending.payload_object(py)?,
                        );
                        Text::Codec(*seq, id.clone(), arguments)
                    }
                    Held::Flat(flat) => {
                        let (prefix, suffix) = entry_ends(id, entry.ts, flat);
                        Text::Core(*seq, id.clone(), shape_of(flat), prefix, suffix)
                    }
                });
            }
            // taken, not copied: put back below (a codec error leaves it to be relearned)
            std::mem::take(&mut join.skeletons)
        };
        let mut made = Vec::with_capacity(work.len());
        for item in work {
            let (seq, id, text) = match item {
                Text::Codec(seq, id, arguments) => (
                    seq,
                    id,
                    encode.call1(arguments)?.downcast_into::<PyString>()?,
                ),
                Text::Core(seq, id, shape, prefix, suffix) => {
                    if let Some(skeleton) = skeletons.get(&shape) {
                        let text = [prefix.as_str(), skeleton, suffix.as_str()].concat();
                        made.push((seq, id, PyString::new(py, &text).unbind()));
                        continue;
                    }
                    // Unknown shape: the codec writes this one, and its text teaches it.
                    let arguments = {
                        let join = slf.borrow();
                        match join.entries.get(&id) {
                            Some(entry) if entry.seq == seq => (
                                PyString::new(py, &id).into_any(),
                                PyFloat::new(py, entry.ts).into_any(),
                                entry.held.payload(py)?,
                            ),
                            _ => continue, // left meanwhile
                        }
                    };
                    let text = encode.call1(arguments)?.downcast_into::<PyString>()?;
                    let written = text.to_str()?;
                    if written.len() > prefix.len() + suffix.len()
                        && written.starts_with(&prefix)
                        && written.ends_with(&suffix)
                    {
                        let skeleton = &written[prefix.len()..written.len() - suffix.len()];
                        skeletons.insert(shape, skeleton.to_string());
                    }
                    (seq, id, text)
                }
            };
            made.push((seq, id, text.unbind()));
        }
        let mut join = slf.borrow_mut();
        join.skeletons = skeletons;
        for (seq, id, text) in made {
            if let Some(entry) = join.entries.get_mut(&id) {
                if entry.seq == seq {
                    entry.encoded = Some(text);
                }
            }
        }
        Ok(())
    }

    /// Records a segment just written with `size` entries (none: not recorded, so
    /// neither listed in the layout nor written).
    fn record_segment(&mut self, segment: u32, size: u32) {
        if size > 0 {
            self.segments.insert(
                segment,
                Segment {
                    size,
                    gone: Vec::new(),
                },
            );
        }
    }

    /// The entries the next snapshot writes, `(seq, id)` in arrival order: every one
    /// for a rebase, else those not written yet. Those are the newest (an entry is
    /// written in arrival order, and a restore either places every entry or none), so
    /// the walk goes back from the newest and stops at the first one written.
    fn to_write(&self, rebase: bool) -> Vec<(u64, Arc<str>)> {
        if rebase {
            return self
                .in_order()
                .map(|(id, entry)| (entry.seq, id.clone()))
                .collect();
        }
        let mut fresh = Vec::new();
        for place in self.order.iter().rev() {
            match self.entries.get(&place.id) {
                Some(entry) if entry.seq == place.seq => {
                    if entry.place.is_some() {
                        break;
                    }
                    fresh.push((place.seq, place.id.clone()));
                }
                _ => {} // a stale place
            }
        }
        fresh.reverse();
        fresh
    }
}

#[pymethods]
impl PendingJoin {
    #[new]
    #[pyo3(signature = (max_pending = 100_000, ttl_seconds = 86_400.0))]
    fn new(py: Python<'_>, max_pending: i64, ttl_seconds: f64) -> PyResult<Self> {
        Ok(PendingJoin {
            max_pending: checked_max_pending(max_pending)?,
            ttl_seconds: checked_ttl(py, ttl_seconds)?,
            expired_total: 0,
            evicted_total: 0,
            joined_total: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            segments: BTreeMap::new(),
            next_segment: 0,
            gone_total: 0,
            dropped: Vec::new(),
            skeletons: HashMap::new(),
            skeleton_codec: None,
        })
    }

    /// The bounds can be changed (a test does; the pipeline sets them once). A lower
    /// `max_pending` takes effect at the next `add`, as the `OrderedDict` join's did.
    #[setter]
    fn set_max_pending(&mut self, max_pending: i64) -> PyResult<()> {
        self.max_pending = checked_max_pending(max_pending)?;
        Ok(())
    }

    #[setter]
    fn set_ttl_seconds(&mut self, py: Python<'_>, ttl_seconds: f64) -> PyResult<()> {
        self.ttl_seconds = checked_ttl(py, ttl_seconds)?;
        Ok(())
    }

    /// The oldest entry's event time (`inf` when empty): `expire(now)` removes something
    /// exactly when `not head_ts >= now - ttl_seconds`.
    #[getter(head_ts)]
    fn py_head_ts(&self) -> f64 {
        self.head_ts()
    }

    fn __len__(&self) -> usize {
        self.entries.len()
    }

    /// How many snapshot segments hold waiting entries (0: a snapshot of the join
    /// writes every entry anyway).
    #[getter]
    fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn __contains__(&self, event_id: &Bound<'_, PyAny>) -> bool {
        match event_id.downcast::<PyString>() {
            Ok(id) => id.to_str().map_or(false, |id| self.contains(id)),
            Err(_) => false,
        }
    }

    /// Hold a prediction; return the entries pushed out to make room (counted).
    fn add(
        slf: &Bound<'_, Self>,
        event_id: &Bound<'_, PyString>,
        ts: &Bound<'_, PyAny>,
        payload: Py<PyAny>,
    ) -> PyResult<Vec<Py<Pending>>> {
        let py = slf.py();
        let id = event_id.to_str()?;
        if slf.borrow().contains(id) {
            return Err(PyValueError::new_err(format!(
                "id: prediction {} is already waiting for its label",
                event_id.repr()?
            )));
        }
        let value: f64 = ts.extract()?;
        let pending = Py::new(
            py,
            Pending::given(
                event_id.clone().into_any().unbind(),
                ts.clone().unbind(),
                payload,
            ),
        )?;
        let evicted = {
            let mut join = slf.borrow_mut();
            let mut evicted = Vec::new();
            while join.entries.len() >= join.max_pending {
                match join.take_oldest() {
                    Some(left) => evicted.push(left),
                    None => break,
                }
            }
            join.evicted_total += evicted.len() as u64;
            join.insert(id, value, Held::Object(pending));
            evicted
        };
        leaving(py, evicted)
    }

    /// The waiting prediction for `event_id` (left in place), or `None`.
    #[pyo3(name = "get")]
    fn py_get(&self, event_id: &Bound<'_, PyAny>) -> PyResult<Option<Py<Pending>>> {
        let id = match event_id.downcast::<PyString>() {
            Ok(id) => id.to_str()?,
            Err(_) => return Ok(None),
        };
        match self.entries.get(id) {
            Some(entry) => pending_of(event_id.py(), id, entry).map(Some),
            None => Ok(None),
        }
    }

    /// Take the prediction a label belongs to, or `None` if it is not (or no longer) here.
    fn pop(slf: &Bound<'_, Self>, event_id: &Bound<'_, PyAny>) -> PyResult<Option<Py<Pending>>> {
        let id = match event_id.downcast::<PyString>() {
            Ok(id) => id.to_str()?,
            Err(_) => return Ok(None),
        };
        let entry = slf.borrow_mut().take(id);
        match entry {
            Some(entry) => into_pending(slf.py(), id, entry).map(Some),
            None => Ok(None),
        }
    }

    /// Remove and return predictions older than `now - ttl_seconds` (event time), oldest
    /// first; an entry that arrived out of order leaves when it reaches the head.
    fn expire(slf: &Bound<'_, Self>, now: f64) -> PyResult<Vec<Py<Pending>>> {
        let expired = {
            let mut join = slf.borrow_mut();
            let horizon = now - join.ttl_seconds;
            let mut expired = Vec::new();
            // `not ts >= horizon`: a NaN event time expires as soon as it is the head.
            let stays = |ts: f64| matches!(ts.partial_cmp(&horizon), Some(Greater | Equal));
            while join.len() > 0 && !stays(join.head_ts()) {
                match join.take_oldest() {
                    Some(left) => expired.push(left),
                    None => break,
                }
            }
            join.expired_total += expired.len() as u64;
            expired
        };
        leaving(slf.py(), expired)
    }

    /// The waiting predictions in arrival order.
    fn waiting(&self, py: Python<'_>) -> PyResult<Vec<Py<Pending>>> {
        self.in_order()
            .map(|(id, entry)| pending_of(py, id, entry))
            .collect()
    }

    /// What a snapshot of the join writes, incrementally: the entries not written
    /// before go into new segments (texts of at most about `cap` bytes, `[text, ...]`,
    /// in arrival order), and the layout says which entries of the live segments still
    /// wait. Everything is written afresh (every live segment dropped) when `rebase`
    /// is asked (a snapshot that cannot build on the ones before) or when more entries
    /// have left the written segments than wait. The segments emptied since the last
    /// call come back as dropped (once).
    fn segment_delta(
        slf: &Bound<'_, Self>,
        encode: &Bound<'_, PyAny>,
        cap: usize,
        rebase: bool,
    ) -> PyResult<SegmentDelta> {
        let py = slf.py();
        let (rebase, wanted) = {
            let join = slf.borrow();
            let rebase = rebase || join.gone_total > join.entries.len();
            (rebase, join.to_write(rebase))
        };
        Self::encode_missing(slf, encode, &wanted)?;
        let mut join = slf.borrow_mut();
        // Checked before anything changes: an entry placed without its segment recorded
        // would never be written.
        let unencoded = wanted.iter().any(|(seq, id)| {
            join.entries
                .get(id)
                .map_or(false, |entry| entry.seq == *seq && entry.encoded.is_none())
        });
        if unencoded {
            return Err(PyValueError::new_err(
                "join segments: an entry has no snapshot text",
            ));
        }
        if rebase {
            let ids: Vec<u32> = join.segments.keys().copied().collect();
            join.dropped.extend(ids);
            join.segments.clear();
            join.gone_total = 0;
            for entry in join.entries.values_mut() {
                entry.place = None;
            }
        }
        let mut written: Vec<(u32, String)> = Vec::new();
        let mut size: u32 = 0;
        for (seq, id) in wanted {
            let full = written.last().map_or(true, |(_, text)| text.len() >= cap);
            if full {
                if let Some((segment, _)) = written.last() {
                    join.record_segment(*segment, size);
                }
                let segment = join.next_segment;
                join.next_segment += 1;
                written.push((segment, String::from("[")));
                size = 0;
            }
            let (segment, out) = match written.last_mut() {
                Some((segment, out)) => (*segment, out),
                None => continue,
            };
            let entry = match join.entries.get_mut(&id) {
                Some(entry) if entry.seq == seq => entry,
                _ => continue,
            };
            let text = match &entry.encoded {
                Some(text) => text.bind(py).to_str()?,
                None => continue, // (checked above)
            };
            if size > 0 {
                out.push(',');
            }
            out.push_str(text);
            entry.place = Some((segment, size));
            size += 1;
        }
        if let Some((segment, _)) = written.last() {
            join.record_segment(*segment, size);
        }
        // (a segment left empty: its entries left while the codec ran; never read)
        written.retain(|(segment, _)| join.segments.contains_key(segment));
        for (_, text) in written.iter_mut() {
            text.push(']');
        }
        let layout = join
            .segments
            .iter()
            .map(|(id, segment)| {
                let mut gone = segment.gone.clone();
                gone.sort_unstable();
                (*id, segment.size, gone)
            })
            .collect();
        let dropped = std::mem::take(&mut join.dropped);
        Ok((written, layout, join.next_segment, dropped))
    }

    /// After a `restore` from a snapshot: which segment each waiting entry was written
    /// in, from the snapshot's `layout` (`[id, size, gone indices]` in arrival order) and
    /// `next` segment id, so the next `segment_delta` builds on that snapshot. A layout
    /// that does not fit the entries is refused (ValueError) and changes nothing.
    fn assign_segments(&mut self, layout: Vec<(u32, u32, Vec<u32>)>, next: u32) -> PyResult<()> {
        let mut segments = BTreeMap::new();
        let mut places = Vec::new();
        let mut gone_total = 0;
        let mut previous: Option<u32> = None;
        for (id, size, mut gone) in layout {
            if id >= next || previous.map_or(false, |previous| id <= previous) {
                return Err(PyValueError::new_err(format!(
                    "join segments: segment {id} out of order (next {next})"
                )));
            }
            previous = Some(id);
            gone.sort_unstable();
            gone.dedup();
            if gone.len() >= size as usize || gone.last().map_or(false, |last| *last >= size) {
                return Err(PyValueError::new_err(format!(
                    "join segments: segment {id} of {size} entries lists {} gone",
                    gone.len()
                )));
            }
            let mut next_gone = gone.iter().peekable();
            for index in 0..size {
                if next_gone.peek() == Some(&&index) {
                    next_gone.next();
                } else {
                    places.push((id, index));
                }
            }
            gone_total += gone.len();
            segments.insert(id, Segment { size, gone });
        }
        if places.len() != self.entries.len() {
            return Err(PyValueError::new_err(format!(
                "join segments: the layout holds {} waiting entries, the join {}",
                places.len(),
                self.entries.len()
            )));
        }
        let ids: Vec<Arc<str>> = self.in_order().map(|(id, _)| id.clone()).collect();
        for (id, place) in ids.iter().zip(places) {
            if let Some(entry) = self.entries.get_mut(id) {
                entry.place = Some(place);
            }
        }
        self.segments = segments;
        self.next_segment = next;
        self.gone_total = gone_total;
        self.dropped.clear();
        Ok(())
    }

    /// Replaces the whole join: `entries` (`Pending`s in arrival order; a repeated id
    /// keeps its first place and its last entry, as an ordered dict built from them
    /// would) and the three counters.
    fn restore(
        slf: &Bound<'_, Self>,
        entries: &Bound<'_, PyList>,
        expired_total: u64,
        evicted_total: u64,
        joined_total: u64,
    ) -> PyResult<()> {
        let py = slf.py();
        // Everything is read before anything changes: a bad entry leaves the join as it was.
        let mut read = Vec::with_capacity(entries.len());
        for item in entries.iter() {
            let pending = item.downcast_into::<Pending>()?;
            let id: String = pending.get().id.bind(py).extract()?;
            let ts: f64 = pending.get().ts.bind(py).extract()?;
            read.push((id, ts, pending.unbind()));
        }
        let mut join = slf.borrow_mut();
        join.clear_entries();
        for (id, ts, pending) in read {
            match join.entries.get_mut(id.as_str()) {
                Some(entry) => {
                    entry.ts = ts;
                    entry.held = Held::Object(pending);
                }
                None => join.insert(&id, ts, Held::Object(pending)),
            }
        }
        // A repeated id's entry took the later time: its place takes it too.
        let PendingJoin { order, entries, .. } = &mut *join;
        for place in order.iter_mut() {
            if let Some(entry) = entries.get(&place.id) {
                place.ts = entry.ts;
            }
        }
        join.expired_total = expired_total;
        join.evicted_total = evicted_total;
        join.joined_total = joined_total;
        Ok(())
    }

    /// The collector may find a cycle through a payload: the entries are visited.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for entry in self.entries.values() {
            if let Held::Object(pending) = &entry.held {
                visit.call(pending)?;
            }
        }
        if let Some(codec) = &self.skeleton_codec {
            visit.call(codec)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.clear_entries();
        self.skeleton_codec = None;
        self.skeletons.clear();
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PendingJoin>()
}
