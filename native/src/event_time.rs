//! The Kafka source's ordering key in the core: each record's top-level `ts`, read from
//! its JSON bytes without building the document (`kafka_source.event_time`'s quick path).
//!
//! `kafka_source.event_time(raw)` parses the record with orjson and takes `ts` when it
//! is a finite `int` or `float` (`-inf` otherwise, or when the record is not JSON). The
//! decoder parses the same bytes again later, so the source's parse was a second full
//! parse of every record. `event_times(values)` reads a fetched batch in one call and
//! answers for a record only when the answer is certainly orjson's:
//!
//! * the bytes are UTF-8 and JSON within a conservative subset — no `\u` escape, object
//!   keys without escapes, at most 128 levels deep, no number that could overflow a
//!   double (at most 100 integer digits, an exponent of at most 2 digits) — checked
//!   whole, so the record is one orjson accepts;
//! * the value is then `-inf` if the document is not an object or its (last, as orjson
//!   keeps the last of duplicate keys) `ts` is not a number, or the number: an integer
//!   literal of at most 18 digits converted as Python's `float(int)` does (round to
//!   nearest even), or a decimal literal of at most 17 significant digits with a small
//!   exponent, correctly rounded by Rust's parser, as by orjson's.
//!
//! Anything else (a `\u` escape, a longer number, invalid JSON, a value that is not
//! `bytes`) gets `None`, and Python's `event_time` decides: the core never disagrees
//! with it, it only leaves the unusual records to it (`tests/test_native_event_time.py`
//! compares both on random and mutated records).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// Deepest nesting the quick path follows (orjson's own limit is higher: deeper records
/// go to Python).
const MAX_DEPTH: usize = 128;

/// A reading of one record: `Some(value)` is orjson's answer, `None` leaves it to Python.
type Reading = Option<f64>;

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A string (the opening quote next); whether it held an escape. `None`: outside
    /// the subset (a `\u` escape) or not JSON.
    fn string(&mut self) -> Option<bool> {
        self.at += 1;
        let mut escaped = false;
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(escaped),
                b'\\' => {
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        _ => return None, // `\u` (left to Python) or an invalid escape
                    }
                    self.at += 1;
                    escaped = true;
                }
                0x00..=0x1f => return None, // a raw control character: not JSON
                _ => {}
            }
        }
    }

    /// A number (its first byte next) as its text, within the subset's bounds.
    fn number(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.digits();
        if digits == 0 || digits > 100 {
            return None;
        }
        if digits > 1 && self.bytes[self.at - digits] == b'0' {
            return None; // a leading zero: not JSON
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            let fraction = self.digits();
            if fraction == 0 || fraction > 100 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            let exponent = self.digits();
            if exponent == 0 || exponent > 2 {
                return None;
            }
        }
        Some(&self.bytes[start..self.at])
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// Any value (whitespace before it already skipped).
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(depth, false).map(|_| ()),
            b'[' => {
                self.at += 1;
                self.skip_space();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            b'"' => self.string().map(|_| ()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(|_| ()),
            _ => None,
        }
    }

    /// An object (the `{` next). At the top (`top`), the text of its last `ts` value
    /// when that is a number (`Some(None)`: no numeric `ts`).
    fn object(&mut self, depth: usize, top: bool) -> Option<Option<&'a [u8]>> {
        self.at += 1;
        self.skip_space();
        let mut ts = None;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(ts);
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.at + 1;
            if self.string()? {
                return None; // an escaped key: left to Python
            }
            let is_ts = top && &self.bytes[key_start..self.at - 1] == b"ts";
            self.skip_space();
            if self.peek()? != b':' {
                return None;
            }
            self.at += 1;
            self.skip_space();
            if is_ts {
                // the last `ts` counts, as in orjson's dict
                ts = match self.peek()? {
                    b'-' | b'0'..=b'9' => Some(self.number()?),
                    _ => {
                        self.value(depth + 1)?;
                        None
                    }
                };
            } else {
                self.value(depth + 1)?;
            }
            if !self.more(b'}')? {
                return Some(ts);
            }
        }
    }

    /// After an item of an array or object: `Some(true)` past a comma (another item
    /// follows), `Some(false)` past the closing `close`, `None` for anything else.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.skip_space();
        let byte = self.peek()?;
        self.at += 1;
        if byte == b',' {
            self.skip_space();
            Some(true)
        } else if byte == close {
            Some(false)
        } else {
            None
        }
    }
}

/// A numeric `ts` literal as Python's `float` of orjson's value, when certain.
pub(crate) fn number_value(text: &[u8]) -> Reading {
    let text = std::str::from_utf8(text).ok()?;
    if !text.contains(['.', 'e', 'E']) {
        let digits = text.trim_start_matches('-').len();
        if digits > 18 {
            return None; // orjson's int may be u64 or a float: left to Python
        }
        // i64 -> f64 rounds to nearest even, as Python's float(int)
        return Some(text.parse::<i64>().ok()? as f64);
    }
    let significant = text
        .split(['e', 'E'])
        .next()?
        .bytes()
        .filter(u8::is_ascii_digit)
        .skip_while(|&digit| digit == b'0')
        .count();
    if significant > 17 {
        return None;
    }
    let value = text.parse::<f64>().ok()?; // correctly rounded
    if value.is_finite() {
        Some(value)
    } else {
        None
    }
}

/// One record's reading (see the module doc).
pub(crate) fn read(bytes: &[u8]) -> Reading {
    std::str::from_utf8(bytes).ok()?; // orjson refuses what is not UTF-8
    let mut scanner = Scanner { bytes, at: 0 };
    scanner.skip_space();
    let ts = if scanner.peek()? == b'{' {
        scanner.object(0, true)?
    } else {
        scanner.value(0)?;
        None // JSON, but not an object: no `ts`
    };
    scanner.skip_space();
    if scanner.at != bytes.len() {
        return None; // trailing bytes: not JSON
    }
    match ts {
        None => Some(f64::NEG_INFINITY),
        Some(text) => number_value(text),
    }
}

/// `[event_time(value) or None, ...]` for a fetched batch's values: a float where the
/// core is certain of orjson's answer, `None` where Python's `event_time` must decide.
#[pyfunction]
fn event_times<'py>(py: Python<'py>, values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    let readings: Vec<Reading> = values
        .iter()
        .map(|value| match value.downcast_exact::<PyBytes>() {
            Ok(bytes) => read(bytes.as_bytes()),
            Err(_) => None,
        })
        .collect();
    PyList::new(py, readings)
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(event_times, module)?)?;
    Ok(())
}
