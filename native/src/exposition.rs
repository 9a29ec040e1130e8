//! `/metrics` sample lines of many labelled series, in Prometheus' text format (0.0.4),
//! exactly as `prometheus_client.generate_latest` writes them.
//!
//! A replica holding 10,000 default streams exposes ~750,000 series. prometheus_client
//! builds a `Sample` and a label dict per series, then sorts and escapes every label of
//! every sample (~7 s a scrape here); a Python loop over ready templates still took
//! ~1.1 s. Both hold the GIL the service loop needs. Here a series costs a tuple read,
//! a float's shortest digits and a few copies.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyList, PyString, PyTuple};

use crate::float_text::Decimal;

/// A sample's value as Prometheus' Go code writes it (`floatToGoString`): `+Inf`,
/// `-Inf`, `NaN`; Python's `repr` (fixed notation for decimal exponents -4 to 15, else
/// scientific with a two-digit or longer exponent), except that positive values with
/// seven or more integer digits take Go's scientific form (`1.234567e+06`).
pub fn write_go_float(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    let decimal = Decimal::of(value);
    let exponent = decimal.exponent;
    if decimal.negative {
        out.push(b'-');
    }
    if (value > 0.0 && exponent >= 6) || !(-4..16).contains(&exponent) {
        decimal.write_python_scientific(out);
    } else {
        decimal.write_fixed(out);
    }
}

/// A label value between its quotes: backslash, newline and double quote escaped.
fn write_label_value(out: &mut Vec<u8>, value: &[u8]) {
    if !value.iter().any(|&b| b == b'\\' || b == b'\n' || b == b'"') {
        out.extend_from_slice(value);
        return;
    }
    for &byte in value {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' => out.extend_from_slice(b"\\\""),
            other => out.push(other),
        }
    }
}

/// `value`, or its `attribute`, as a float (`float(v)`, as prometheus_client takes it).
fn value_of(value: Bound<'_, PyAny>, attribute: Option<&Bound<'_, PyString>>) -> PyResult<f64> {
    let value = match attribute {
        Some(name) => value.getattr(name)?,
        None => value,
    };
    match value.downcast::<PyFloat>() {
        Ok(float) => Ok(float.value()),
        Err(_) => value.extract::<f64>(),
    }
}

/// One family's sample lines, written into one buffer.
struct Lines<'a> {
    name: &'a str,
    width: usize,
    order: Vec<usize>,
    /// What goes before each label's value, in name order: `{name="` or `,name="`.
    openers: Vec<Vec<u8>>,
    out: Vec<u8>,
}

impl<'a> Lines<'a> {
    fn new(name: &'a str, labelnames: &[String], rows: usize) -> Self {
        let width = labelnames.len();
        let mut order: Vec<usize> = (0..width).collect();
        order.sort_by(|&a, &b| labelnames[a].cmp(&labelnames[b]));
        let openers = order
            .iter()
            .enumerate()
            .map(|(k, &i)| format!("{}{}=\"", if k == 0 { "{" } else { "," }, labelnames[i]))
            .map(String::into_bytes)
            .collect();
        Self {
            name,
            width,
            order,
            openers,
            out: Vec::with_capacity(rows * (name.len() + 24 * width + 24)),
        }
    }

    /// One line: `values` (a tuple of `str`, in `labelnames` order) and the value.
    fn push(&mut self, values: &Bound<'_, PyAny>, value: f64) -> PyResult<()> {
        let name = self.name;
        let values = values.downcast::<PyTuple>()?;
        if values.len() != self.width {
            return Err(PyValueError::new_err(format!(
                "{name}: {} label values expected, got {}",
                self.width,
                values.repr()?
            )));
        }
        let out = &mut self.out;
        out.extend_from_slice(name.as_bytes());
        for (opener, &i) in self.openers.iter().zip(&self.order) {
            out.extend_from_slice(opener);
            let label = values.get_item(i)?;
            let label = label
                .downcast::<PyString>()
                .map_err(|_| PyTypeError::new_err(format!("{name}: label values must be str")))?;
            write_label_value(out, label.to_str()?.as_bytes());
            out.push(b'"');
        }
        if self.width > 0 {
            out.push(b'}');
        }
        out.push(b' ');
        write_go_float(out, value);
        out.push(b'\n');
        Ok(())
    }
}

/// One line per series of `rows`: a dict (label values tuple -> value, or with
/// `attribute` the object holding it: a family's children, read in place, so that a
/// scrape makes no tuple per series for the collector to chase), or a list of tuples
/// whose `row[0]` holds the label values and `row[value_at]` the value. Label values
/// come in `labelnames` order; they are written sorted by name.
#[pyfunction]
#[pyo3(signature = (name, labelnames, rows, value_at = 1, attribute = None))]
pub fn exposition_lines<'py>(
    py: Python<'py>,
    name: &str,
    labelnames: Vec<String>,
    rows: &Bound<'py, PyAny>,
    value_at: usize,
    attribute: Option<&Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let lines = if let Ok(series) = rows.downcast::<PyDict>() {
        let mut lines = Lines::new(name, &labelnames, series.len());
        for (values, value) in series.iter() {
            lines.push(&values, value_of(value, attribute)?)?;
        }
        lines
    } else {
        let rows = rows.downcast::<PyList>()?;
        let mut lines = Lines::new(name, &labelnames, rows.len());
        for row in rows.iter() {
            let row = row.downcast::<PyTuple>()?;
            lines.push(
                &row.get_item(0)?,
                value_of(row.get_item(value_at)?, attribute)?,
            )?;
        }
        lines
    };
    Ok(PyBytes::new(py, &lines.out))
}

/// `write_go_float` as text: how the tests hold it to prometheus_client.
#[pyfunction]
pub fn go_float(value: f64) -> String {
    let mut out = Vec::new();
    write_go_float(&mut out, value);
    String::from_utf8(out).expect("ASCII")
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(exposition_lines, module)?)?;
    module.add_function(wrap_pyfunction!(go_float, module)?)
}
