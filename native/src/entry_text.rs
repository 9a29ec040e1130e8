//! A waiting prediction's snapshot text written by the core, for the record lane's flat
//! payloads: the same text as `join.encode_entry` (`[id, ts, skeleton, "data"]`), which
//! cost ~4.5 µs per entry in Python (making the payload's arrays, `pack_state`'s lookups,
//! a base64 and an f-string) and runs for every prediction still waiting at a commit.
//!
//! The pieces are written as Python writes them: the id as `json`'s ASCII-only string
//! (`encode_basestring_ascii`), the event time as `float.__repr__` (`NaN`, `Infinity`,
//! `-Infinity` when not finite), the data as standard base64 of the arrays' native bytes
//! in the payload's order (buffer, then the kept conformal rows). The skeleton depends on
//! the payload's shape only; the join learns it from a text `encode_entry` wrote
//! (`join.rs`), so the core never spells it. `tests/test_join_codec.py` compares the
//! core's texts with `encode_entry`'s on random ids, times and payloads.

use std::fmt::Write;

use pyo3::prelude::*;

use crate::float_text::Decimal;
use crate::pending::Flat;

/// The shape of a flat payload: the buffer's length and the kept matrix's rows and
/// width (the skeleton is a function of it).
pub type FlatShape = (usize, Option<(usize, usize)>);

pub fn shape_of(flat: &Flat) -> FlatShape {
    (
        flat.buffer.len(),
        flat.kept.as_ref().map(|(_, rows, width)| (*rows, *width)),
    )
}

/// `[id,ts,` and `,"data"]` of an entry's text: the skeleton goes between them.
pub fn entry_ends(id: &str, ts: f64, flat: &Flat) -> (String, String) {
    let mut prefix = String::with_capacity(id.len() + 32);
    prefix.push('[');
    push_json_ascii(&mut prefix, id);
    prefix.push(',');
    push_float_repr(&mut prefix, ts);
    prefix.push(',');
    let mut bytes = Vec::with_capacity(8 * (flat.buffer.len() + 8));
    for value in &flat.buffer {
        bytes.extend_from_slice(&value.to_ne_bytes());
    }
    if let Some((kept, _, _)) = &flat.kept {
        for value in kept {
            bytes.extend_from_slice(&value.to_ne_bytes());
        }
    }
    let mut suffix = String::with_capacity(bytes.len() * 4 / 3 + 8);
    suffix.push_str(",\"");
    push_base64(&mut suffix, &bytes);
    suffix.push_str("\"]");
    (prefix, suffix)
}

/// `text` as `json.encoder.encode_basestring_ascii` writes it: quoted, `"` and `\` and
/// the five short escapes, everything else outside printable ASCII as `\uXXXX` (UTF-16
/// units, lowercase hex).
pub fn push_json_ascii(out: &mut String, text: &str) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(character),
            _ => {
                let mut units = [0u16; 2];
                for unit in character.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// `value` as `float.__repr__` writes it (`NaN`, `Infinity`, `-Infinity` as `json` does
/// for the others): the shortest digits, fixed notation for decimal exponents -4 to 15
/// (`0.0001`, `1e+16` past them), at least two exponent digits.
pub fn push_float_repr(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let mut text = Vec::with_capacity(32);
    Decimal::of(value).write_python_repr(&mut text);
    // Digits, signs, '.', 'e': ASCII only.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, no line breaks (`binascii.b2a_base64(newline=False)`).
pub fn push_base64(out: &mut String, bytes: &[u8]) {
    let mut text = Vec::with_capacity((bytes.len() + 2) / 3 * 4);
    let letter = |group: u32, shift: u32| ALPHABET[(group >> shift) as usize & 63];
    let mut chunks = bytes.chunks_exact(3);
    for chunk in &mut chunks {
        let group = (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32;
        text.extend_from_slice(&[
            letter(group, 18),
            letter(group, 12),
            letter(group, 6),
            letter(group, 0),
        ]);
    }
    match *chunks.remainder() {
        [first] => {
            let group = (first as u32) << 16;
            text.extend_from_slice(&[letter(group, 18), letter(group, 12), b'=', b'=']);
        }
        [first, second] => {
            let group = (first as u32) << 16 | (second as u32) << 8;
            text.extend_from_slice(&[letter(group, 18), letter(group, 12), letter(group, 6), b'=']);
        }
        _ => {}
    }
    // The alphabet and '=' are ASCII.
    out.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// `(prefix, suffix)` the core writes around the skeleton of a flat payload's entry
/// (`tests/test_join_codec.py` holds them to `encode_entry`'s text).
#[pyfunction]
#[pyo3(signature = (id, ts, buffer, kept=None))]
fn flat_entry_ends(
    id: &str,
    ts: f64,
    buffer: Vec<f64>,
    kept: Option<(Vec<f64>, usize, usize)>,
) -> (String, String) {
    entry_ends(id, ts, &Flat { buffer, kept })
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(flat_entry_ends, module)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(value: f64) -> String {
        let mut out = String::new();
        push_float_repr(&mut out, value);
        out
    }

    #[test]
    fn floats_read_as_python_writes_them() {
        assert_eq!(repr(0.0), "0.0");
        assert_eq!(repr(-0.0), "-0.0");
        assert_eq!(repr(1.0), "1.0");
        assert_eq!(repr(0.0001), "0.0001");
        assert_eq!(repr(0.00001), "1e-05");
        assert_eq!(repr(1e15), "1000000000000000.0");
        assert_eq!(repr(1e16), "1e+16");
        assert_eq!(repr(1.5e300), "1.5e+300");
        assert_eq!(repr(-2.5e-7), "-2.5e-07");
        assert_eq!(repr(1_700_000_000.25), "1700000000.25");
        assert_eq!(repr(f64::NAN), "NaN");
        assert_eq!(repr(f64::NEG_INFINITY), "-Infinity");
    }

    #[test]
    fn base64_pads_as_the_standard_says() {
        let encode = |bytes: &[u8]| {
            let mut out = String::new();
            push_base64(&mut out, bytes);
            out
        };
        assert_eq!(encode(b""), "");
        assert_eq!(encode(b"f"), "Zg==");
        assert_eq!(encode(b"fo"), "Zm8=");
        assert_eq!(encode(b"foo"), "Zm9v");
        assert_eq!(encode(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn ids_escape_as_json_ascii() {
        let mut out = String::new();
        push_json_ascii(&mut out, "a\"b\\c\n\u{1}\u{7f}é😀");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001\\u007f\\u00e9\\ud83d\\ude00\"");
    }
}
