//! `json.loads(text, object_hook=hook)` for the snapshot records streams are restored
//! from, compiled: the stdlib parser and its hook, called for each of a young default
//! stream's ~215 objects, were ~260 us of its ~900 us restore.
//!
//! The parse is the stdlib's, value for value: objects become dicts built key by key
//! (a repeated key keeps its first place and its last value), arrays lists, strings str
//! (escapes and surrogate pairs decoded), integers int, numbers with a fraction or an
//! exponent float (correctly rounded, as `float()` reads them), `true`, `false` and `null`
//! their constants. The hook is called with each object whose keys include one starting
//! with `__` (the only ones the snapshot hooks change: markers and tagged arrays), in
//! document order as the stdlib calls it, and its result takes the object's place; every
//! other object is kept as parsed, which is what those hooks return for it. An exception
//! the hook raises is raised as it is.
//!
//! Anything unusual makes the parse give up, and the caller runs the stdlib parser from the
//! start, which is the reference: its result, or its error, stands. Unusual: a text that
//! is not strict UTF-8 or whose first two bytes could make the stdlib read it as UTF-16 or
//! UTF-32, any syntax error, `NaN` and `Infinity`, an integer of more than 18 digits, an
//! escape that leaves a lone surrogate, a raw control character in a string (the stdlib's
//! strict mode refuses it), more than `DEPTH_MAX` nested containers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};

use crate::packed_slots::SlotMaker;

/// Nested containers past this are left to the stdlib (its recursion limit answers).
const DEPTH_MAX: usize = 200;
/// Distinct strings a parse makes room for at once (a stream record has ~210).
const STRINGS_EXPECTED: usize = 256;
/// Strings longer than this are made as they come, not shared (keys and codes are short).
const SHARED_LENGTH_MAX: usize = 64;
/// Integers this long or shorter fit an i64; longer ones are left to the stdlib.
const INT_DIGITS_MAX: usize = 18;

/// Why a parse stopped: give up (the stdlib decides), or the hook raised.
enum Stop {
    Unusual,
    Raised(PyErr),
}

type Parsed<T> = Result<T, Stop>;

struct Parser<'py, 'a> {
    py: Python<'py>,
    text: &'a [u8],
    /// The same text as a `str` (checked once, whole): strings and numbers are sliced from
    /// it at ASCII bytes (quotes, digits), so no slice needs checking again.
    source: &'a str,
    at: usize,
    hook: &'a Bound<'py, PyAny>,
    /// What makes the packed form's markers into slots instead of the hook, if given.
    slots: Option<SlotMaker<'py, 'a>>,
    /// Strings already made (short ones without escapes), reused as the stdlib's scanner
    /// reuses keys: one str per distinct text, its hash computed once. Values too (a
    /// stream record's 129 string values are 30 texts: dtype codes, adapter names).
    strings: HashMap<&'a [u8], Bound<'py, PyString>, BuildHasherDefault<QuickHash>>,
    /// The float `0.0`, made at its first `0.0` (a young stream's record writes it 176
    /// times of its 333 floats) and shared, as floats are immutable.
    zero: Option<Bound<'py, PyAny>>,
}

/// A multiply-rotate hash over eight bytes at a time (FxHash's step): keys are short and
/// the table lives for one parse, so no defence against chosen collisions is needed
/// beyond the table's own (a colliding key costs a comparison, not a wrong result).
#[derive(Default)]
struct QuickHash(u64);

impl QuickHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for QuickHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        // The last bytes, read without copying a variable length into a buffer (the load
        // of such a buffer waited on its stores: ~a fifth of a parse's key lookups). A
        // text of 8 bytes or more ends with its last 8, overlapping; a shorter one's bytes
        // are folded one by one. (The length was written first, as `Hash` for slices does.)
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let word = if bytes.len() >= 8 {
                let mut last = [0u8; 8];
                last.copy_from_slice(&bytes[bytes.len() - 8..]);
                u64::from_le_bytes(last)
            } else {
                rest.iter()
                    .rev()
                    .fold(0u64, |word, &byte| (word << 8) | u64::from(byte))
            };
            self.add(word);
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
}

/// How far from `at` the bytes go before the first `"`, `\\` or control character (or
/// the end): eight bytes at a time while none of them is one.
fn plain_run(text: &[u8], at: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS;
    let mut end = at;
    while let Some(chunk) = text.get(end..end + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        let stops = zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS); // a byte below 0x20
        if stops != 0 {
            break;
        }
        end += 8;
    }
    while end < text.len() && !matches!(text[end], b'"' | b'\\' | 0..=0x1f) {
        end += 1;
    }
    end - at
}

fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

fn hex_digit(byte: u8) -> Option<u32> {
    match byte {
        b'0'..=b'9' => Some(u32::from(byte - b'0')),
        b'a'..=b'f' => Some(u32::from(byte - b'a') + 10),
        b'A'..=b'F' => Some(u32::from(byte - b'A') + 10),
        _ => None,
    }
}

impl<'py, 'a> Parser<'py, 'a> {
    fn skip_space(&mut self) {
        while self.at < self.text.len() && is_space(self.text[self.at]) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// After a container's member: `true` past a `,` (another member follows), `false`
    /// past the `close` byte (the container ends); anything else is unusual.
    fn more(&mut self, close: u8) -> Parsed<bool> {
        self.skip_space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(byte) if byte == close => {
                self.at += 1;
                Ok(false)
            }
            _ => Err(Stop::Unusual),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Parsed<()> {
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Stop::Unusual)
        }
    }

    fn value(&mut self, depth: usize) -> Parsed<Bound<'py, PyAny>> {
        self.skip_space();
        let py = self.py;
        match self.peek().ok_or(Stop::Unusual)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => Ok(self.string()?.0.into_any()),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => {
                self.literal(b"true")?;
                Ok(PyBool::new(py, true).to_owned().into_any())
            }
            b'f' => {
                self.literal(b"false")?;
                Ok(PyBool::new(py, false).to_owned().into_any())
            }
            b'n' => {
                self.literal(b"null")?;
                Ok(py.None().into_bound(py))
            }
            _ => Err(Stop::Unusual), // NaN, Infinity, or not JSON
        }
    }

    fn object(&mut self, depth: usize) -> Parsed<Bound<'py, PyAny>> {
        if depth > DEPTH_MAX {
            return Err(Stop::Unusual);
        }
        self.at += 1; // '{'
        let dict = PyDict::new(self.py);
        let mut hooked = false;
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(dict.into_any());
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(Stop::Unusual);
            }
            let (key, marked) = self.string()?;
            hooked |= marked;
            self.skip_space();
            if self.peek() != Some(b':') {
                return Err(Stop::Unusual);
            }
            self.at += 1;
            let value = self.value(depth)?;
            dict.set_item(key, value).map_err(Stop::Raised)?;
            if !self.more(b'}')? {
                break;
            }
        }
        if hooked {
            if let Some(slots) = self.slots.as_mut() {
                if let Some(slot) = slots.make(&dict).map_err(Stop::Raised)? {
                    return Ok(slot);
                }
            }
            return self.hook.call1((dict,)).map_err(Stop::Raised);
        }
        Ok(dict.into_any())
    }

    fn array(&mut self, depth: usize) -> Parsed<Bound<'py, PyAny>> {
        if depth > DEPTH_MAX {
            return Err(Stop::Unusual);
        }
        self.at += 1; // '['
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                items.push(self.value(depth)?);
                if !self.more(b']')? {
                    break;
                }
            }
        }
        PyList::new(self.py, items)
            .map(Bound::into_any)
            .map_err(Stop::Raised)
    }

    /// A string (a key or a value), from its opening quote, and whether it starts with
    /// `__` (a key's object then goes to the hook): made once per distinct short text
    /// without escapes (see `strings`).
    fn string(&mut self) -> Parsed<(Bound<'py, PyString>, bool)> {
        let start = self.at + 1;
        let length = plain_run(self.text, start);
        if self.text.get(start + length) != Some(&b'"') || length > SHARED_LENGTH_MAX {
            // escapes, or a long text: made as they come
            let text = self.string_text()?;
            return Ok((PyString::new(self.py, &text), text.starts_with("__")));
        }
        let source: &'a str = self.source;
        let raw = source.get(start..start + length).ok_or(Stop::Unusual)?;
        self.at = start + length + 1;
        let marked = raw.starts_with("__");
        if let Some(made) = self.strings.get(raw.as_bytes()) {
            return Ok((made.clone(), marked));
        }
        let made = PyString::new(self.py, raw);
        self.strings.insert(raw.as_bytes(), made.clone());
        Ok((made, marked))
    }

    /// A string's text, from its opening quote (the whole text is known to be UTF-8).
    fn string_text(&mut self) -> Parsed<Cow<'a, str>> {
        let start = self.at + 1;
        let mut end = start + plain_run(self.text, start);
        loop {
            match self.text.get(end) {
                Some(b'"') => break,
                Some(b'\\') => return self.escaped_string(start).map(Cow::Owned),
                Some(&byte) if byte < 0x20 => return Err(Stop::Unusual),
                Some(_) => end += 1,
                None => return Err(Stop::Unusual),
            }
        }
        self.at = end + 1;
        let source: &'a str = self.source;
        source
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or(Stop::Unusual)
    }

    /// A string with escapes, from its first character at `start`.
    fn escaped_string(&mut self, start: usize) -> Parsed<String> {
        let mut out: Vec<u8> = Vec::new();
        let mut at = start;
        loop {
            let byte = *self.text.get(at).ok_or(Stop::Unusual)?;
            match byte {
                b'"' => break,
                b'\\' => {
                    let code = *self.text.get(at + 1).ok_or(Stop::Unusual)?;
                    at += 2;
                    let plain = match code {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            let (character, next) = self.unicode_escape(at)?;
                            at = next;
                            let mut buffer = [0u8; 4];
                            out.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
                            continue;
                        }
                        _ => return Err(Stop::Unusual),
                    };
                    out.push(plain);
                }
                _ if byte < 0x20 => return Err(Stop::Unusual),
                _ => {
                    out.push(byte);
                    at += 1;
                }
            }
        }
        self.at = at + 1;
        String::from_utf8(out).map_err(|_| Stop::Unusual)
    }

    /// The character of a `\uXXXX` escape whose digits start at `at` (a surrogate pair
    /// read as one), and where the text goes on; a lone surrogate is unusual.
    fn unicode_escape(&self, at: usize) -> Parsed<(char, usize)> {
        let unit = self.hex4(at)?;
        if (0xD800..0xDC00).contains(&unit) {
            if self.text.get(at + 4) == Some(&b'\\') && self.text.get(at + 5) == Some(&b'u') {
                let low = self.hex4(at + 6)?;
                if (0xDC00..0xE000).contains(&low) {
                    let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                    return char::from_u32(code)
                        .map(|c| (c, at + 10))
                        .ok_or(Stop::Unusual);
                }
            }
            return Err(Stop::Unusual);
        }
        char::from_u32(unit)
            .map(|c| (c, at + 4))
            .ok_or(Stop::Unusual) // a lone low surrogate
    }

    fn hex4(&self, at: usize) -> Parsed<u32> {
        let digits = self.text.get(at..at + 4).ok_or(Stop::Unusual)?;
        digits.iter().try_fold(0u32, |total, &byte| {
            hex_digit(byte)
                .map(|digit| total * 16 + digit)
                .ok_or(Stop::Unusual)
        })
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.at < self.text.len() && self.text[self.at].is_ascii_digit() {
            self.at += 1;
        }
        self.at - start
    }

    /// A number as the stdlib's scanner reads it: `-?(0|[1-9][0-9]*)`, then a fraction
    /// only if a digit follows the point, an exponent only if a digit follows `e` and its
    /// sign; what is left over is the next token's business.
    fn number(&mut self) -> Parsed<Bound<'py, PyAny>> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Stop::Unusual), // -Infinity, or not a number
        }
        let integer_end = self.at;
        let mut float = false;
        if self.peek() == Some(b'.')
            && self
                .text
                .get(self.at + 1)
                .map_or(false, |byte| byte.is_ascii_digit())
        {
            self.at += 1;
            self.digits();
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let exponent_start = self.at;
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                self.at = exponent_start;
            } else {
                float = true;
            }
        }
        // ASCII digits and signs only: a slice of the text at char boundaries.
        let text = self.source.get(start..self.at).ok_or(Stop::Unusual)?;
        if float {
            if text == "0.0" {
                let py = self.py;
                return Ok(self
                    .zero
                    .get_or_insert_with(|| PyFloat::new(py, 0.0).into_any())
                    .clone());
            }
            let value: f64 = text.parse().map_err(|_| Stop::Unusual)?;
            return Ok(PyFloat::new(self.py, value).into_any());
        }
        let digits = integer_end - start - usize::from(self.text[start] == b'-');
        if digits > INT_DIGITS_MAX {
            return Err(Stop::Unusual);
        }
        let value: i64 = text.parse().map_err(|_| Stop::Unusual)?;
        value
            .into_pyobject(self.py)
            .map(Bound::into_any)
            .map_err(|e| match e {})
    }
}

/// `json.loads(text, object_hook=hook)` for a UTF-8 `text` and a hook that returns any
/// object without a key starting with `__` unchanged (see the module docs), or `unusual`
/// when this parse gave up (the caller then runs `json.loads` itself). With `slots` (a
/// list), the packed form's usual markers do not reach the hook but become slots in that
/// list (see `packed_slots::SlotMaker`), naming at most `limit` bytes in all (default: the
/// text's length, which a base64 data string inside it cannot exceed; a record whose
/// data follows the text as raw bytes passes their length).
#[pyfunction]
#[pyo3(signature = (text, hook, unusual, slots=None, limit=None))]
fn loads_hooked<'py>(
    py: Python<'py>,
    text: &[u8],
    hook: &Bound<'py, PyAny>,
    unusual: PyObject,
    slots: Option<Bound<'py, PyList>>,
    limit: Option<usize>,
) -> PyResult<PyObject> {
    // Bytes the stdlib would decode as UTF-16 or UTF-32 (a zero in the first two), or
    // not as UTF-8: it decodes the whole text before it parses (so before any hook call,
    // whose error would otherwise come out instead of its decoding error).
    if text.iter().take(2).any(|&byte| byte == 0) {
        return Ok(unusual);
    }
    let source = match std::str::from_utf8(text) {
        Ok(source) => source,
        Err(_) => return Ok(unusual),
    };
    let mut parser = Parser {
        py,
        text,
        source,
        at: 0,
        hook,
        slots: slots
            .as_ref()
            .map(|slots| SlotMaker::new(slots, limit.unwrap_or(text.len()))),
        // (a stream record holds ~210 distinct keys and short strings: room from the start)
        strings: HashMap::with_capacity_and_hasher(STRINGS_EXPECTED, Default::default()),
        zero: None,
    };
    let parsed = parser.value(0).and_then(|tree| {
        parser.skip_space();
        if parser.at == text.len() {
            Ok(tree)
        } else {
            Err(Stop::Unusual) // extra data
        }
    });
    match parsed {
        Ok(tree) => Ok(tree.unbind()),
        Err(Stop::Unusual) => Ok(unusual),
        Err(Stop::Raised(error)) => Err(error),
    }
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(loads_hooked, module)?)
}
