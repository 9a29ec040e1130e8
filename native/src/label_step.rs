//! One label of a classification stream, in one core call: what `StreamPipeline.on_label`
//! does with the core's own record of the prediction (the flat buffer `ChainCore` wrote
//! when it served it, kept whole in the join) instead of its trace split into arrays.
//!
//! In order, as the pipeline's general path does them: every stage of the chain learns
//! (the chain core's quick path; what it does not clear declines the whole call, with
//! nothing changed, and the pipeline's general path decides), then the raw models and
//! the served output are scored, the uncertainty layers (conformal sets, performance
//! estimates) learn it, then each tracked stage's rise evidence takes the
//! log-loss of that stage's output. What comes back says which drift memories fired.
//! The arithmetic is the same code as the per-object calls (`ClassificationSums::update`,
//! `clipped_log_loss` and `RiseEvidence::update`), so the numbers are the same bit for bit.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::chain::ChainCore;
use crate::conformal::UncertaintyCore;
use crate::drift_evidence::{clipped_log_loss, PyRiseEvidence};
use crate::expert_losses::read_flat;
use crate::scores::ClassificationScore;

/// The label `y` (a class, an `int` the pipeline checked) of the prediction the chain
/// core served into `buffer`.
///
/// `scores`: one `ClassificationScore` per deployed model (their rows are the trace's
/// first entry, `(K, C)`) then the served output's (the buffer's last `C` values);
/// `evidence` with `ranges`: each tracked stage's `RiseEvidence` and where its output
/// lies in the buffer (`(start, stop)`), fed the log-loss clipped at `clip`;
/// `uncertainty` (with `kept`, the thresholds its `serve_flat` wrote for the prediction,
/// `None` for none): the stream's conformal layers and estimates learn the label.
///
/// Returns `None`, with nothing changed, when the buffer does not have the length of
/// this chain's records, the label is outside the classes, or the chain's quick path
/// does not clear the record; otherwise the Python
/// stage index of every drift memory whose drift count moved (usually none).
#[pyfunction]
#[pyo3(signature = (chain, buffer, y, scores, evidence, ranges, clip, uncertainty=None, kept=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn learn_served(
    py: Python<'_>,
    chain: &Bound<'_, ChainCore>,
    buffer: &Bound<'_, PyAny>,
    y: &Bound<'_, PyAny>,
    scores: &Bound<'_, PyList>,
    evidence: &Bound<'_, PyList>,
    ranges: Vec<(usize, usize)>,
    clip: f64,
    uncertainty: Option<&Bound<'_, UncertaintyCore>>,
    kept: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Vec<usize>>> {
    check_ranges(evidence, &ranges)?;
    let label: usize = match y.extract() {
        Ok(label) => label,
        Err(_) => return Ok(None),
    };
    let values = read_flat(py, buffer)?;
    let thresholds = match (uncertainty, kept) {
        (Some(_), Some(kept)) => read_flat(py, kept)?,
        _ => Vec::new(),
    };
    learn_served_values(
        py,
        chain,
        &values,
        (label, y),
        scores,
        evidence,
        ranges,
        clip,
        uncertainty.map(|core| (core, &thresholds[..])),
    )
}

/// `learn_served` on the flat record `values` and the label (`label`, the object it was
/// read from); `uncertainty` with the thresholds kept for the prediction (empty for none).
#[allow(clippy::too_many_arguments)]
pub(crate) fn learn_served_values(
    py: Python<'_>,
    chain: &Bound<'_, ChainCore>,
    values: &[f64],
    (label, y): (usize, &Bound<'_, PyAny>),
    scores: &Bound<'_, PyList>,
    evidence: &Bound<'_, PyList>,
    ranges: Vec<(usize, usize)>,
    clip: f64,
    uncertainty: Option<(&Bound<'_, UncertaintyCore>, &[f64])>,
) -> PyResult<Option<Vec<usize>>> {
    check_ranges(evidence, &ranges)?;
    let mut core = chain.borrow_mut();
    let items = match core.split_trace(values) {
        Some(items) => items,
        None => return Ok(None),
    };
    let raw = items[0];
    let width = values.len() - core.trace_len();
    if width == 0 || raw.len() % width != 0 || scores.len() != raw.len() / width + 1 {
        return Err(PyValueError::new_err(format!(
            "scores: {} for a trace whose models' rows are {} values of width {width}",
            scores.len(),
            raw.len()
        )));
    }
    let outside = |&(start, stop): &(usize, usize)| {
        stop > values.len() || stop.saturating_sub(start) <= label
    };
    if label >= width || ranges.iter().any(outside) {
        return Ok(None);
    }
    let drifted = match core.learn_items_drifted(py, &items, y)? {
        Some(drifted) => drifted,
        None => return Ok(None),
    };
    drop(core);
    let served = &values[values.len() - width..];
    for (index, score) in scores.iter().enumerate() {
        let row = if index * width < raw.len() {
            &raw[index * width..(index + 1) * width]
        } else {
            served
        };
        score
            .downcast::<ClassificationScore>()?
            .borrow_mut()
            .sums
            .update(row, label);
    }
    if let Some((uncertainty, thresholds)) = uncertainty {
        let uncertainty = uncertainty.borrow();
        let rows = uncertainty.flat_rows(values, (0, raw.len()), width)?;
        uncertainty.learn_probabilities(py, thresholds, &rows, label)?;
    }
    for (statistic, &(start, _)) in evidence.iter().zip(&ranges) {
        statistic
            .downcast::<PyRiseEvidence>()?
            .borrow_mut()
            .update(clipped_log_loss(values[start + label], clip))?;
    }
    Ok(Some(drifted))
}

/// One `(start, stop)` range per tracked stage's evidence statistic.
fn check_ranges(evidence: &Bound<'_, PyList>, ranges: &[(usize, usize)]) -> PyResult<()> {
    if evidence.len() != ranges.len() {
        return Err(PyValueError::new_err(format!(
            "ranges: {} for {} evidence statistics",
            ranges.len(),
            evidence.len()
        )));
    }
    Ok(())
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(learn_served, module)?)
}
