//! Numbers as text: a float's shortest decimal digits (Python's `repr` digits, which Ryu
//! computes) and the layouts the core writes them in, orjson's for records
//! (`lane::write_float`), Prometheus' for `/metrics` (`exposition`) and Python's `repr`
//! (`Decimal::write_python_repr`: snapshot texts, and Prometheus' own scientific form);
//! integers' digits.

/// A finite float as sign, significant digits (no leading zeros, no trailing zeros but
/// the one digit of zero) and the decimal exponent of the first digit.
pub struct Decimal {
    pub negative: bool,
    all: [u8; 32],
    start: usize,
    end: usize,
    pub exponent: i32,
}

impl Decimal {
    /// Read back from Ryu's text of a finite value, in either of its layouts (fixed:
    /// `123.45`, `0.0001`; scientific: `1.5e16`, `1e-7`).
    pub fn of_ryu(text: &[u8]) -> Self {
        let (negative, text) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let (mantissa, mut exponent) = match text.iter().position(|&byte| byte == b'e') {
            Some(at) => (
                &text[..at],
                std::str::from_utf8(&text[at + 1..])
                    .ok()
                    .and_then(|e| e.parse::<i32>().ok())
                    .unwrap_or(0),
            ),
            None => (text, 0),
        };
        let point = mantissa
            .iter()
            .position(|&byte| byte == b'.')
            .unwrap_or(mantissa.len());
        // On the stack: Ryu writes at most 17 significant digits, and a fixed layout at
        // most 21 digits in all.
        let mut all = [0u8; 32];
        let mut count = 0;
        for &byte in mantissa.iter().filter(|byte| byte.is_ascii_digit()) {
            all[count] = byte;
            count += 1;
        }
        exponent += point as i32 - 1;
        let leading = all[..count]
            .iter()
            .take_while(|&&digit| digit == b'0')
            .count();
        let (start, end) = if leading == count {
            exponent = 0;
            all[0] = b'0';
            (0, 1)
        } else {
            exponent -= leading as i32;
            let mut end = count;
            while end - leading > 1 && all[end - 1] == b'0' {
                end -= 1;
            }
            (leading, end)
        };
        Self {
            negative,
            all,
            start,
            end,
            exponent,
        }
    }

    /// The shortest digits of a finite `value`.
    pub fn of(value: f64) -> Self {
        let mut buffer = ryu::Buffer::new();
        Self::of_ryu(buffer.format_finite(value).as_bytes())
    }

    pub fn digits(&self) -> &[u8] {
        &self.all[self.start..self.end]
    }

    /// Fixed notation, no sign: `123.0`, `1.5`, `0.0001` (at least one digit after the
    /// point).
    pub fn write_fixed(&self, out: &mut Vec<u8>) {
        let digits = self.digits();
        if self.exponent >= 0 {
            let whole = self.exponent as usize + 1;
            for index in 0..whole {
                out.push(*digits.get(index).unwrap_or(&b'0'));
            }
            out.push(b'.');
            if digits.len() > whole {
                out.extend_from_slice(&digits[whole..]);
            } else {
                out.push(b'0');
            }
        } else {
            out.extend_from_slice(b"0.");
            for _ in 0..(-self.exponent - 1) {
                out.push(b'0');
            }
            out.extend_from_slice(digits);
        }
    }

    /// The mantissa of scientific notation, no sign, no exponent: `1`, `1.5`.
    pub fn write_scientific(&self, out: &mut Vec<u8>) {
        let digits = self.digits();
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
    }

    /// Python's `repr` of the value: its sign, then fixed notation for decimal exponents
    /// -4 to 15 (`0.0001`, `1000000000000000.0`), else [`Self::write_python_scientific`].
    pub fn write_python_repr(&self, out: &mut Vec<u8>) {
        if self.negative {
            out.push(b'-');
        }
        if (-4..16).contains(&self.exponent) {
            self.write_fixed(out);
        } else {
            self.write_python_scientific(out);
        }
    }

    /// Scientific notation as Python's `repr` writes it, no sign: the mantissa, `e`, the
    /// exponent's sign and at least two of its digits (`1e-05`, `1.5e+300`).
    pub fn write_python_scientific(&self, out: &mut Vec<u8>) {
        self.write_scientific(out);
        out.push(b'e');
        out.push(if self.exponent < 0 { b'-' } else { b'+' });
        let magnitude = self.exponent.abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        write_integer(out, i64::from(magnitude));
    }
}

/// An integer's decimal digits, as Python writes it (no allocation).
pub fn write_integer(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    let mut magnitude = value.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
