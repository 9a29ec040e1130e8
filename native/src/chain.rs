//! Stages driven in sequence by the core: the per-event verbs of a `Chain` (and of each
//! candidate chain of a `Portfolio`) without going back to Python between stages.
//!
//! A [`Stage`] holds the compiled core of one Python adapter handle (`FixedShare`,
//! `Hedge`, `OnlineStacking`, `OnlinePlatt`, `OnlineBetaScaling`, `OnlineTemperature`,
//! `Calibeating` over a native base) as a `Py<...>` reference: the Python handle stays
//! the owner of the state (its `state_dict` / `load_state_dict` work unchanged) and the
//! stage borrows the core mutably for the length of one verb, under the GIL.
//!
//! Each verb is the handle's own quick path, on a slice instead of a Python object: the
//! same input check (the row renormalised by its left-to-right sum), the same arithmetic.
//! What the quick path does not clear (an input at the tolerance's edge, a non-finite
//! update, a label that is not a plain int) goes to the Python handle's verb with the
//! input as a numpy array, exactly as the Python loop would have called it: so an event
//! gives the same numbers, or raises the same error, on either path. `on_drift` always
//! goes through the handle (rare, and some handles do more than the core there).

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyList, PyTuple};

use crate::beta::BetaCore;
use crate::calibeating::CalibeatingCore;
use crate::drift_memory::DriftMemoryCore;
use crate::expert_losses::{
    learn_cleared, native_float64, read_flat, read_target, write_native, Mixer, Scratch, Target,
};
use crate::feature_correction::FeatureCorrectionCore;
use crate::fixed_share::FixedShareCore;
use crate::hedge::HedgeCore;
use crate::kalman::KalmanCore;
use crate::platt::{clip_probability, PlattCore};
use crate::portfolio::PortfolioCore;
use crate::prior_shift::PriorShiftCore;
use crate::probability_input::{clear_probabilities, quick_label};
use crate::stacking::{Stacking, StackingCore};
use crate::temperature::{floored, TemperatureCore};

// Platt and beta scaling are the same verbs on other core types (`PlattCore`, `BetaCore`),
// so their match arms share these bodies. Each is `false` with nothing changed when the
// input (a binary distribution) or the label does not clear the quick check.

/// Serve a binary calibrator: its probability of class 1 for the input's score.
macro_rules! serve_binary {
    ($py:expr, $core:expr, $input:expr, $out:expr) => {
        match binary_score($input) {
            Some(f) => {
                binary_output($core.bind($py).borrow().inner.probability(f), $out);
                true
            }
            None => false,
        }
    };
}

/// Serve Calibeating over a binary calibrator: the base's probability, then its forecast.
macro_rules! serve_calibeating {
    ($py:expr, $records:expr, $base:expr, $input:expr, $out:expr) => {
        match binary_score($input) {
            Some(f) => {
                let q = $base.bind($py).borrow().inner.probability(f);
                binary_output($records.bind($py).borrow().inner.forecast(q), $out);
                true
            }
            None => false,
        }
    };
}

/// Teach a binary calibrator one labelled score.
macro_rules! learn_binary {
    ($py:expr, $core:expr, $input:expr, $y:expr) => {
        match (binary_score($input), quick_label($y, 2)) {
            (Some(f), Some(label)) => {
                $core
                    .bind($py)
                    .borrow_mut()
                    .inner
                    .learn(&[f], &[label], None);
                true
            }
            _ => false,
        }
    };
}

/// Teach Calibeating over a binary calibrator: the base learns (and says what it had
/// served), then the records take that forecast and the label.
macro_rules! learn_calibeating {
    ($py:expr, $records:expr, $base:expr, $input:expr, $y:expr) => {
        match (binary_score($input), quick_label($y, 2)) {
            (Some(f), Some(label)) => {
                let mut served = Vec::with_capacity(1);
                $base
                    .bind($py)
                    .borrow_mut()
                    .inner
                    .learn(&[f], &[label], Some(&mut served));
                $records
                    .bind($py)
                    .borrow_mut()
                    .inner
                    .record(served[0], label);
                true
            }
            _ => false,
        }
    };
}

/// Which core a stage drives (and, for the two-core stages, the second one).
enum Kind {
    FixedShare(Py<FixedShareCore>),
    Hedge(Py<HedgeCore>),
    /// The stacking head and the `KalmanWeights` filter holding its weights.
    Stacking(Py<StackingCore>, Py<KalmanCore>),
    Platt(Py<PlattCore>),
    Beta(Py<BetaCore>),
    Temperature(Py<TemperatureCore>),
    /// Calibeating's records over an `OnlinePlatt` base.
    CalibeatingPlatt(Py<CalibeatingCore>, Py<PlattCore>),
    /// Calibeating's records over an `OnlineBetaScaling` base.
    CalibeatingBeta(Py<CalibeatingCore>, Py<BetaCore>),
    /// The only kind here whose `observe` does something.
    DriftMemory(Py<DriftMemoryCore>),
    /// Takes the packed `[its input, the chain's input, features]`.
    FeatureCorrection(Py<FeatureCorrectionCore>),
    /// Observes too (the label-free re-estimate of the class mix).
    PriorShift(Py<PriorShiftCore>),
}

/// PriorShift's quick input check (its own bounds, as its handle's) on a slice: the
/// vector renormalised by its left-to-right sum, or `None`.
fn prior_input(core: &PriorShiftCore, input: &[f64]) -> Option<Vec<f64>> {
    if input.len() != core.config.n_classes {
        return None;
    }
    let mut total = 0.0;
    for &item in input {
        if !(0.0 <= item && item <= core.high) {
            return None;
        }
        total += item;
    }
    if (total - 1.0).abs() > core.quick_tolerance {
        return None;
    }
    Some(input.iter().map(|&item| item / total).collect())
}

/// One stage: its core, its Python handle (for what the quick path does not clear) and
/// the shape of its input.
pub struct Stage {
    kind: Kind,
    handle: PyObject,
    shape: Vec<usize>,
    input_len: usize,
    output_len: usize,
    scratch: Vec<f64>,
}

/// An ensemble's mixture of one event (`input` K*C values) into `out`, or `false`.
fn mix_quick<M: Mixer>(mixer: &M, scratch: &mut Scratch, input: &[f64], out: &mut [f64]) -> bool {
    if input.len() != scratch.outputs.len() {
        return false;
    }
    scratch.outputs.copy_from_slice(input);
    if !mixer.experts().clear_outputs(&mut scratch.outputs) {
        return false;
    }
    mixer.experts().mix(mixer.weights(), &scratch.outputs, out);
    true
}

/// An ensemble's `learn` of one event, or `false` with nothing changed.
fn mixer_learn<M: Mixer>(
    mixer: &mut M,
    scratch: &mut Scratch,
    input: &[f64],
    y: &Bound<'_, PyAny>,
) -> bool {
    if input.len() != scratch.outputs.len() {
        return false;
    }
    scratch.outputs.copy_from_slice(input);
    if !mixer.experts().clear_outputs(&mut scratch.outputs) {
        return false;
    }
    learn_cleared(mixer, scratch, y)
}

/// A binary probability pair's class-1 score, cleared and clipped, or `None`.
fn binary_score(input: &[f64]) -> Option<f64> {
    if input.len() != 2 {
        return None;
    }
    let mut p = [input[0], input[1]];
    if clear_probabilities(&mut p) {
        Some(clip_probability(p[1]))
    } else {
        None
    }
}

fn binary_output(q: f64, out: &mut [f64]) {
    out[0] = 1.0 - q;
    out[1] = q;
}

fn extract<T: pyo3::PyClass>(item: &Bound<'_, PyAny>, what: &str) -> PyResult<Py<T>> {
    item.downcast::<T>()
        .map(|bound| bound.clone().unbind())
        .map_err(|_| PyValueError::new_err(format!("stage core: expected a {what}")))
}

impl Stage {
    /// A stage from its spec `(kind, handle, cores, input shape, output length)`, as
    /// `streamweights.adapters.chain.native_stage` writes it.
    pub fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<Stage> {
        let (kind, handle, cores, shape, output_len): (
            String,
            PyObject,
            Bound<'_, PyTuple>,
            Vec<usize>,
            usize,
        ) = spec.extract()?;
        let core = |index: usize| cores.get_item(index);
        let kind = match kind.as_str() {
            "FixedShare" => Kind::FixedShare(extract(&core(0)?, "FixedShareCore")?),
            "Hedge" => Kind::Hedge(extract(&core(0)?, "HedgeCore")?),
            "Stacking" => Kind::Stacking(
                extract(&core(0)?, "StackingCore")?,
                extract(&core(1)?, "KalmanCore")?,
            ),
            "Platt" => Kind::Platt(extract(&core(0)?, "PlattCore")?),
            "Beta" => Kind::Beta(extract(&core(0)?, "BetaCore")?),
            "Temperature" => Kind::Temperature(extract(&core(0)?, "TemperatureCore")?),
            "CalibeatingPlatt" => Kind::CalibeatingPlatt(
                extract(&core(0)?, "CalibeatingCore")?,
                extract(&core(1)?, "PlattCore")?,
            ),
            "CalibeatingBeta" => Kind::CalibeatingBeta(
                extract(&core(0)?, "CalibeatingCore")?,
                extract(&core(1)?, "BetaCore")?,
            ),
            "DriftMemory" => Kind::DriftMemory(extract(&core(0)?, "DriftMemoryCore")?),
            "PriorShift" => Kind::PriorShift(extract(&core(0)?, "PriorShiftCore")?),
            "FeatureCorrection" => {
                Kind::FeatureCorrection(extract(&core(0)?, "FeatureCorrectionCore")?)
            }
            other => {
                return Err(PyValueError::new_err(format!(
                    "stage kind: no native stage {other:?}"
                )))
            }
        };
        let input_len = shape.iter().product();
        Ok(Stage {
            kind,
            handle,
            shape,
            input_len,
            output_len,
            scratch: Vec::new(),
        })
    }

    /// Whether the stage takes the packed `[input, chain input, features]`.
    pub fn packs(&self) -> bool {
        matches!(self.kind, Kind::FeatureCorrection(_))
    }

    pub fn input_len(&self) -> usize {
        self.input_len
    }

    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// `predict(input)` into `out` (`output_len` values).
    pub fn predict(&mut self, py: Python<'_>, input: &[f64], out: &mut [f64]) -> PyResult<()> {
        if self.predict_quick(py, input, out) {
            return Ok(());
        }
        let result = self
            .handle
            .bind(py)
            .call_method1("predict", (self.as_array(py, input)?,))?;
        self.read_output(py, &result, out)
    }

    /// `learn(input, y)` with `y` the label object the chain was given.
    pub fn learn(&mut self, py: Python<'_>, input: &[f64], y: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.learn_quick(py, input, y) {
            return Ok(());
        }
        self.handle
            .bind(py)
            .call_method1("learn", (self.as_array(py, input)?, y))?;
        Ok(())
    }

    /// `observe(input)`: only a drift memory's does something.
    pub fn observe(&mut self, py: Python<'_>, input: &[f64]) -> PyResult<()> {
        if let Kind::PriorShift(core) = &self.kind {
            let mut guard = core.bind(py).borrow_mut();
            let core = &mut *guard;
            if let Some(p) = prior_input(core, input) {
                core.estimator.observe(&core.config, &p);
                return Ok(());
            }
            drop(guard);
            self.handle
                .bind(py)
                .call_method1("observe", (self.as_array(py, input)?,))?;
            return Ok(());
        }
        if let Kind::DriftMemory(core) = &self.kind {
            let mut core = core.bind(py).borrow_mut();
            if input.len() == core.n_classes {
                let mut p = input.to_vec();
                if clear_probabilities(&mut p) {
                    core.observe_row(py, p);
                    return Ok(());
                }
            }
            drop(core);
            self.handle
                .bind(py)
                .call_method1("observe", (self.as_array(py, input)?,))?;
        }
        Ok(())
    }

    /// The handle's `on_drift`.
    pub fn on_drift(&self, py: Python<'_>) -> PyResult<()> {
        self.handle.bind(py).call_method0("on_drift")?;
        Ok(())
    }

    fn predict_quick(&mut self, py: Python<'_>, input: &[f64], out: &mut [f64]) -> bool {
        match &self.kind {
            Kind::FixedShare(core) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                mix_quick(&core.state, &mut core.scratch, input, out)
            }
            Kind::Hedge(core) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                mix_quick(&core.state, &mut core.scratch, input, out)
            }
            Kind::Stacking(core, kalman) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                if !core.take_outputs(input) {
                    return false;
                }
                core.stacking.design(&core.outputs, &mut core.design);
                let filter = &kalman.bind(py).borrow().filter;
                let features = core.stacking.n_features();
                let width = core.stacking.experts.width();
                self.scratch.resize(width, 0.0);
                for (row, mean) in core
                    .design
                    .chunks_exact(features)
                    .zip(self.scratch.iter_mut())
                {
                    let mut one = [0.0];
                    filter.predictive_means(row, &mut one);
                    *mean = one[0];
                }
                if core.stacking.experts.n_classes.is_none() {
                    out[..width].copy_from_slice(&self.scratch);
                } else {
                    core.stacking.combine(&self.scratch, out);
                }
                true
            }
            Kind::Platt(core) => serve_binary!(py, core, input, out),
            Kind::Beta(core) => serve_binary!(py, core, input, out),
            Kind::Temperature(core) => {
                let core = core.bind(py).borrow();
                if input.len() != core.inner.n_classes {
                    return false;
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(input);
                if !clear_probabilities(&mut self.scratch) {
                    return false;
                }
                core.inner.predict_into(&self.scratch, out);
                true
            }
            Kind::CalibeatingPlatt(records, base) => {
                serve_calibeating!(py, records, base, input, out)
            }
            Kind::CalibeatingBeta(records, base) => {
                serve_calibeating!(py, records, base, input, out)
            }
            Kind::DriftMemory(core) => {
                if input.len() != core.bind(py).borrow().n_classes || out.len() != input.len() {
                    return false;
                }
                out.copy_from_slice(input);
                clear_probabilities(out)
            }
            Kind::PriorShift(core) => {
                let core = core.bind(py).borrow();
                match prior_input(&core, input) {
                    Some(p) if out.len() == p.len() => {
                        core.estimator.predict(&core.config, &p, out);
                        true
                    }
                    _ => false,
                }
            }
            Kind::FeatureCorrection(core) => {
                let core = core.bind(py).borrow();
                let mut packed = input.to_vec();
                if core.check(&mut packed).is_err() {
                    return false;
                }
                let served = core.inner.predict(&packed);
                if served.len() != out.len() {
                    return false;
                }
                out.copy_from_slice(&served);
                true
            }
        }
    }

    fn learn_quick(&mut self, py: Python<'_>, input: &[f64], y: &Bound<'_, PyAny>) -> bool {
        match &self.kind {
            Kind::FixedShare(core) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                mixer_learn(&mut core.state, &mut core.scratch, input, y)
            }
            Kind::Hedge(core) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                mixer_learn(&mut core.state, &mut core.scratch, input, y)
            }
            Kind::Stacking(core, kalman) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                if !core.take_outputs(input) {
                    return false;
                }
                let target = match read_target(y, &core.stacking.experts) {
                    Some(target) => target,
                    None => return false,
                };
                core.stacking.design(&core.outputs, &mut core.design);
                let mut filter_guard = kalman.bind(py).borrow_mut();
                let design = &core.design;
                let outcome = match target {
                    Target::Value(value) => {
                        if !Stacking::update_is_finite(design, value) {
                            return false;
                        }
                        filter_guard.filter.guarded(|filter| {
                            filter.learn_one(design, Some(&[value]), None);
                            Ok(())
                        })
                    }
                    Target::Class(label) => {
                        let classes = core.stacking.experts.width();
                        let mut targets = vec![0.0; classes];
                        targets[label] = 1.0;
                        filter_guard
                            .filter
                            .guarded(|filter| filter.learn_block(design, Some(&targets), None))
                    }
                };
                outcome.is_ok()
            }
            Kind::Platt(core) => learn_binary!(py, core, input, y),
            Kind::Beta(core) => learn_binary!(py, core, input, y),
            Kind::Temperature(core) => {
                let mut core = core.bind(py).borrow_mut();
                let classes = core.inner.n_classes;
                if input.len() != classes {
                    return false;
                }
                let mut p = input.to_vec();
                if !clear_probabilities(&mut p) {
                    return false;
                }
                match quick_label(y, classes) {
                    Some(label) => {
                        core.inner.learn(&floored(p), &[label]);
                        true
                    }
                    None => false,
                }
            }
            Kind::CalibeatingPlatt(records, base) => {
                learn_calibeating!(py, records, base, input, y)
            }
            Kind::CalibeatingBeta(records, base) => learn_calibeating!(py, records, base, input, y),
            Kind::DriftMemory(core) => {
                let mut core = core.bind(py).borrow_mut();
                let classes = core.n_classes;
                let label = match quick_label(y, classes) {
                    Some(label) => label as usize,
                    None => return false,
                };
                if input.len() != classes {
                    return false;
                }
                let mut p = input.to_vec();
                if !clear_probabilities(&mut p) {
                    return false;
                }
                core.learn_row(py, p, label);
                true
            }
            Kind::PriorShift(core) => {
                let mut guard = core.bind(py).borrow_mut();
                let core = &mut *guard;
                match (
                    quick_label(y, core.config.n_classes),
                    prior_input(core, input),
                ) {
                    (Some(label), Some(p)) => {
                        core.estimator.learn(&core.config, &p, label as usize);
                        true
                    }
                    _ => false,
                }
            }
            Kind::FeatureCorrection(core) => {
                let mut core = core.bind(py).borrow_mut();
                let label = match quick_label(y, core.inner.settings.n_classes) {
                    Some(label) => label as usize,
                    None => return false,
                };
                let mut packed = input.to_vec();
                // a refused (non-finite) update changes nothing: the handle then raises
                core.check(&mut packed).is_ok() && core.inner.learn(&packed, label).is_ok()
            }
        }
    }

    /// `input` as the numpy array the Python loop would have passed (its shape).
    fn as_array<'py>(&self, py: Python<'py>, input: &[f64]) -> PyResult<Bound<'py, PyAny>> {
        let numpy = py.import("numpy")?;
        let array = numpy.call_method1("array", (PyList::new(py, input)?,))?;
        array.call_method1("reshape", (PyTuple::new(py, &self.shape)?,))
    }

    /// A handle's output, flattened, into `out`.
    fn read_output(
        &self,
        py: Python<'_>,
        result: &Bound<'_, PyAny>,
        out: &mut [f64],
    ) -> PyResult<()> {
        let numpy = py.import("numpy")?;
        let flat = numpy.call_method1("ravel", (result,))?;
        let values = read_flat(py, &flat)?;
        if values.len() != out.len() {
            return Err(PyValueError::new_err(format!(
                "stage output: expected {} values, got {}",
                out.len(),
                values.len()
            )));
        }
        out.copy_from_slice(&values);
        Ok(())
    }
}

/// A sequence of stages, each consuming the previous one's output (a portfolio's
/// candidate). A feature stage (not the first) takes the packed `[its input, the
/// sequence's input, features]`; its slot of the trace keeps only its own input, as the
/// Python portfolio's trace does, and the packed vector is built again to learn.
pub struct Sequence {
    pub stages: Vec<Stage>,
    packed: Vec<f64>,
}

impl Sequence {
    pub fn from_specs(specs: &Bound<'_, PyAny>) -> PyResult<Sequence> {
        let mut stages = Vec::new();
        for spec in specs.try_iter()? {
            stages.push(Stage::from_spec(&spec?)?);
        }
        if stages.is_empty() {
            return Err(PyValueError::new_err(
                "stages: a chain needs at least one stage",
            ));
        }
        if stages[0].packs() {
            return Err(PyValueError::new_err(
                "stages: a candidate's first stage cannot take features",
            ));
        }
        Ok(Sequence {
            stages,
            packed: Vec::new(),
        })
    }

    /// Whether a stage takes the packed input (the sequence needs the features).
    pub fn packs(&self) -> bool {
        self.stages.iter().any(Stage::packs)
    }

    /// Whether each feature stage's input is its own input, `input_len` values of the
    /// sequence's input and `n_features` features (and every other stage's input the
    /// previous output).
    pub fn fits(&self, input_len: usize, n_features: usize) -> bool {
        (1..self.stages.len()).all(|index| {
            let own = self.stages[index - 1].output_len();
            let expected = if self.stages[index].packs() {
                own + input_len + n_features
            } else {
                own
            };
            self.stages[index].input_len() == expected
        })
    }

    /// Values stage `index` (>= 1) keeps in the trace: its input, or for a feature
    /// stage its own part of it (the previous stage's output).
    fn slot_len(&self, index: usize) -> usize {
        if self.stages[index].packs() {
            self.stages[index - 1].output_len()
        } else {
            self.stages[index].input_len()
        }
    }

    /// Values of the trace after the first stage's input: the slots of stages 1..
    pub fn later_len(&self) -> usize {
        (1..self.stages.len())
            .map(|index| self.slot_len(index))
            .sum()
    }

    pub fn output_len(&self) -> usize {
        self.stages.last().map_or(0, Stage::output_len)
    }

    /// Run `input` through every stage: the last output into `out`, the slots of stages
    /// 1.. (each the previous output) into `later`, in order. `observe`: each stage first
    /// observes its input (`Chain.observe_predict_trace`), else it is pure. `features`:
    /// what a feature stage's packed input ends with.
    pub fn predict(
        &mut self,
        py: Python<'_>,
        input: &[f64],
        features: &[f64],
        later: &mut [f64],
        out: &mut [f64],
        observe: bool,
    ) -> PyResult<()> {
        let count = self.stages.len();
        let mut packed = std::mem::take(&mut self.packed);
        let mut position = 0;
        let mut outcome = Ok(());
        for index in 0..count {
            let slot_len = if index == 0 { 0 } else { self.slot_len(index) };
            let width = self.stages[index].output_len();
            let (before, after) = later.split_at_mut(position);
            let slot: &[f64] = if index == 0 {
                input
            } else {
                &before[position - slot_len..]
            };
            let stage = &mut self.stages[index];
            let source: &[f64] = if stage.packs() {
                packed.clear();
                packed.extend_from_slice(slot);
                packed.extend_from_slice(input);
                packed.extend_from_slice(features);
                &packed
            } else {
                slot
            };
            if observe {
                outcome = stage.observe(py, source);
                if outcome.is_err() {
                    break;
                }
            }
            outcome = if index + 1 == count {
                stage.predict(py, source, out)
            } else {
                stage.predict(py, source, &mut after[..width])
            };
            if outcome.is_err() {
                break;
            }
            position += width;
        }
        self.packed = packed;
        outcome
    }

    /// The first stage's core when the first stage is a FixedShare.
    pub fn first_fixed_share(&self) -> Option<&Py<FixedShareCore>> {
        match &self.stages[0].kind {
            Kind::FixedShare(core) => Some(core),
            _ => None,
        }
    }

    /// The first stage's Python handle.
    pub fn first_handle(&self) -> *mut pyo3::ffi::PyObject {
        self.stages[0].handle.as_ptr()
    }

    /// The objects every stage holds (its Python handle and, for a FixedShare, its
    /// core), to tell whether a stage is referenced once only.
    pub fn objects(&self) -> impl Iterator<Item = *mut pyo3::ffi::PyObject> + '_ {
        self.stages.iter().flat_map(|stage| {
            let core = match &stage.kind {
                Kind::FixedShare(core) => Some(core.as_ptr()),
                _ => None,
            };
            std::iter::once(stage.handle.as_ptr()).chain(core)
        })
    }

    /// Teach every stage `y` on the input it saw: `input` for the first, `later` (as
    /// [`Sequence::predict`] wrote it, with `features` for a feature stage) for the
    /// others. `first_learned`: the first stage has been brought to its state after
    /// this label already (see `PortfolioCore::learn_candidates`) and is skipped.
    pub fn learn(
        &mut self,
        py: Python<'_>,
        input: &[f64],
        features: &[f64],
        later: &[f64],
        y: &Bound<'_, PyAny>,
        first_learned: bool,
    ) -> PyResult<()> {
        let mut packed = std::mem::take(&mut self.packed);
        let mut position = 0;
        let mut outcome = Ok(());
        for index in 0..self.stages.len() {
            if index == 0 && first_learned {
                continue;
            }
            let source: &[f64] = if index == 0 {
                input
            } else {
                let length = self.slot_len(index);
                let slot = &later[position..position + length];
                position += length;
                if self.stages[index].packs() {
                    packed.clear();
                    packed.extend_from_slice(slot);
                    packed.extend_from_slice(input);
                    packed.extend_from_slice(features);
                    &packed
                } else {
                    slot
                }
            };
            outcome = self.stages[index].learn(py, source, y);
            if outcome.is_err() {
                break;
            }
        }
        self.packed = packed;
        outcome
    }

    pub fn on_drift(&self, py: Python<'_>) -> PyResult<()> {
        for stage in &self.stages {
            stage.on_drift(py)?;
        }
        Ok(())
    }
}

/// A whole C-contiguous native float64 array of exactly `shape`, read; `None` otherwise.
fn read_shaped(py: Python<'_>, x: &Bound<'_, PyAny>, shape: &[usize]) -> Option<Vec<f64>> {
    let buffer = PyBuffer::<f64>::get(x).ok()?;
    if buffer.shape() != shape || !native_float64(&buffer) || !buffer.is_c_contiguous() {
        return None;
    }
    buffer.to_vec(py).ok()
}

/// The core of `streamweights.adapters.Chain` when every stage has a native core: a
/// `Portfolio` head (optional) and plain stages, each verb one call.
///
/// The trace is written flat into one float64 array: the input of every stage in order
/// (the chain's input first), then the portfolio's rows, then the chain's output; the
/// Python handle splits it into views of the shapes `shapes` lists.
#[pyclass(module = "streamweights._native")]
pub struct ChainCore {
    head: Option<Py<PortfolioCore>>,
    stages: Vec<Stage>,
    shapes: Vec<Vec<usize>>,
    output_len: usize,
    /// `serve`'s buffers, kept between events: the values entering the stage at hand,
    /// those it puts out, and the head's rows.
    current: Vec<f64>,
    next: Vec<f64>,
    rows: Vec<f64>,
    /// `learn_items_drifted`'s drift counts from before the label.
    drift_before: Vec<i64>,
}

impl ChainCore {
    /// Values of the trace in the flat buffer (the output follows them).
    pub fn trace_len(&self) -> usize {
        self.shapes
            .iter()
            .map(|shape| shape.iter().product::<usize>())
            .sum()
    }
}

#[pymethods]
impl ChainCore {
    /// `head`: the portfolio core of a first `Portfolio` stage (`None`: none), whose
    /// inputs have `head_shape`; `specs`: the other stages (see `Stage::from_spec`).
    #[new]
    #[pyo3(signature = (head, head_shape, specs))]
    fn new(
        head: Option<Bound<'_, PortfolioCore>>,
        head_shape: Vec<usize>,
        specs: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let mut stages = Vec::new();
        for spec in specs.try_iter()? {
            stages.push(Stage::from_spec(&spec?)?);
        }
        let mut shapes: Vec<Vec<usize>> = Vec::new();
        let mut output_len = 0;
        if let Some(core) = &head {
            let core = core.borrow();
            if core.count() == 0 || !core.is_native() {
                return Err(PyValueError::new_err(
                    "head: the portfolio's candidates are not driven by its core",
                ));
            }
            shapes.push(head_shape);
            output_len = core.width();
        } else if stages.is_empty() {
            return Err(PyValueError::new_err(
                "stages: a chain needs at least one stage",
            ));
        }
        for stage in &stages {
            if !shapes.is_empty() && !stage.packs() && stage.input_len() != output_len {
                return Err(PyValueError::new_err(
                    "stages: a stage's input is not the previous stage's output",
                ));
            }
            shapes.push(stage.shape.clone());
            output_len = stage.output_len();
        }
        if let Some(core) = &head {
            let core = core.borrow();
            let width = core.width();
            shapes.push(vec![core.trace_len() / width, width]);
        }
        Ok(ChainCore {
            head: head.map(Bound::unbind),
            stages,
            shapes,
            output_len,
            current: Vec::new(),
            next: Vec::new(),
            rows: Vec::new(),
            drift_before: Vec::new(),
        })
    }

    /// Shapes of the trace's arrays, in order.
    #[getter]
    fn shapes(&self) -> Vec<Vec<usize>> {
        self.shapes.clone()
    }

    /// Values the flat buffer holds: the trace, then the output.
    #[getter]
    fn size(&self) -> usize {
        self.trace_len() + self.output_len
    }

    /// `observe_predict_trace(x)` into `buffer` when `x` is a C-contiguous float64
    /// array of the first shape that the first stage's quick check clears (`true`);
    /// `false`, with nothing changed, otherwise (the Python loop runs).
    #[pyo3(signature = (x, buffer, features=None))]
    fn observe_predict(
        &mut self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
        features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        match read_shaped(py, x, &self.shapes[0]) {
            Some(raw) => self.observe_predict_raw(py, raw, buffer, features),
            None => Ok(false),
        }
    }

    /// `observe_predict` for the chain's input given as Python lists of numbers (one
    /// list per model for a `(K, C)` input, one list for `(K,)`), read with the shape
    /// checked: the pipeline's per-record path, which then makes no array of the
    /// decoded outputs. The same numbers as the float64 array of those lists; `false`,
    /// with nothing changed, for anything else.
    #[pyo3(signature = (rows, buffer, features=None))]
    fn observe_predict_rows(
        &mut self,
        py: Python<'_>,
        rows: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
        features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        match read_rows(rows, &self.shapes[0]) {
            Some(raw) => self.observe_predict_raw(py, raw, buffer, features),
            None => Ok(false),
        }
    }
    /// `learn_trace(trace, y)` when every array of `trace` is a C-contiguous float64
    /// array of its shape and the head's quick checks clear them and `y` (`true`);
    /// `false`, with nothing changed, otherwise (the Python loop runs and decides).
    fn learn(
        &mut self,
        py: Python<'_>,
        trace: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let mut items = Vec::with_capacity(self.shapes.len());
        for item in trace.try_iter()? {
            let item = item?;
            if items.len() == self.shapes.len() {
                return Ok(false);
            }
            match read_shaped(py, &item, &self.shapes[items.len()]) {
                Some(values) => items.push(values),
                None => return Ok(false),
            }
        }
        if items.len() != self.shapes.len() {
            return Ok(false);
        }
        let slices: Vec<&[f64]> = items.iter().map(Vec::as_slice).collect();
        self.learn_items(py, &slices, y)
    }
}

impl ChainCore {
    /// The trace's entries in a flat buffer of `size` values as `observe_predict` wrote
    /// it (the output, last, is not part of the trace); `None` for another length.
    pub fn split_trace<'a>(&self, values: &'a [f64]) -> Option<Vec<&'a [f64]>> {
        if values.len() != self.trace_len() + self.output_len {
            return None;
        }
        let mut items = Vec::with_capacity(self.shapes.len());
        let mut start = 0;
        for shape in &self.shapes {
            let stop = start + shape.iter().product::<usize>();
            items.push(&values[start..stop]);
            start = stop;
        }
        Some(items)
    }

    /// Every drift memory among the stages after the head, with its index in the Python
    /// chain's stages (the head, when there is one, is stage 0), and its drift count.
    fn drift_memories<'a>(&'a self, py: Python<'a>) -> impl Iterator<Item = (usize, i64)> + 'a {
        let offset = usize::from(self.head.is_some());
        self.stages
            .iter()
            .enumerate()
            .filter_map(move |(index, stage)| match &stage.kind {
                Kind::DriftMemory(core) => {
                    Some((index + offset, core.bind(py).borrow().drift_count))
                }
                _ => None,
            })
    }

    /// `learn_items`, and which drift memories (their stage indices, as
    /// `drift_memories` gives them) detected a drift while learning: `None` when the
    /// label was not learned. The counts before are kept in a buffer of the chain's
    /// (two small allocations per label otherwise; nothing when nothing drifted).
    pub fn learn_items_drifted(
        &mut self,
        py: Python<'_>,
        items: &[&[f64]],
        y: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Vec<usize>>> {
        let mut before = std::mem::take(&mut self.drift_before);
        before.clear();
        before.extend(self.drift_memories(py).map(|(_, count)| count));
        let learned = self.learn_items(py, items, y)?;
        let drifted = learned.then(|| {
            self.drift_memories(py)
                .zip(&before)
                .filter(|((_, now), was)| now != *was)
                .map(|((index, _), _)| index)
                .collect()
        });
        self.drift_before = before;
        Ok(drifted)
    }

    /// `learn` once the trace is read (one slice per shape, in order).
    pub fn learn_items(
        &mut self,
        py: Python<'_>,
        items: &[&[f64]],
        y: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let inputs = match &self.head {
            Some(head) => {
                let mut core = head.bind(py).borrow_mut();
                let label = match core.clear_label(y) {
                    Some(label) => label,
                    None => return Ok(false),
                };
                let rows = items[items.len() - 1];
                if !rows.iter().all(|value| value.is_finite()) || !core.clear_values(items[0]) {
                    return Ok(false);
                }
                core.learn_candidates(py, rows, &label)?;
                &items[1..items.len() - 1]
            }
            None => items,
        };
        for (stage, input) in self.stages.iter_mut().zip(inputs) {
            stage.learn(py, input, y)?;
        }
        Ok(true)
    }
}

impl ChainCore {
    /// The body of `observe_predict` once the input is read (`raw`, in C order).
    fn observe_predict_raw(
        &mut self,
        py: Python<'_>,
        raw: Vec<f64>,
        buffer: &Bound<'_, PyAny>,
        features: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let features = match features {
            Some(features) => read_flat(py, features)?,
            None if self.stages.iter().any(Stage::packs) => return Ok(false),
            None => Vec::new(),
        };
        match self.serve(py, raw, features)? {
            Some(out) => {
                write_native(py, buffer, &out)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Observe and predict one event whose input is `raw` (in C order): the flat
    /// record `observe_predict` writes (the trace, then the output), or `None`, with
    /// nothing changed, when the head's quick checks do not clear it.
    pub(crate) fn serve(
        &mut self,
        py: Python<'_>,
        raw: Vec<f64>,
        features: Vec<f64>,
    ) -> PyResult<Option<Vec<f64>>> {
        // The stage-to-stage values and the head's rows live in buffers kept between
        // events (three to five allocations per prediction otherwise); `raw` itself is
        // the chain's input that a packing stage appends.
        let mut out = Vec::with_capacity(self.trace_len() + self.output_len);
        out.extend_from_slice(&raw);
        let Self {
            head,
            stages,
            current,
            next,
            rows,
            ..
        } = self;
        current.clear();
        rows.clear();
        if let Some(head) = head {
            let mut core = head.bind(py).borrow_mut();
            let head_features: &[f64] = if core.needs_features() {
                &features
            } else {
                &[]
            };
            if !core.set_features(head_features) || !core.clear_values(&raw) {
                return Ok(None);
            }
            core.run_candidates(py, true)?;
            let (count, width) = (core.count(), core.width());
            rows.extend_from_slice(core.rows());
            current.extend_from_slice(&rows[count * width..(count + 1) * width]);
        } else {
            current.extend_from_slice(&raw);
        }
        let recorded = head.is_some();
        for (index, stage) in stages.iter_mut().enumerate() {
            if stage.packs() {
                current.extend_from_slice(&raw);
                current.extend_from_slice(&features);
                if current.len() != stage.input_len() {
                    return Err(PyValueError::new_err(format!(
                        "features: the packed input of a feature stage needs {} numbers, \
                         got {}",
                        stage.input_len(),
                        current.len()
                    )));
                }
            }
            if recorded || index > 0 {
                out.extend_from_slice(current);
            }
            stage.observe(py, current)?;
            next.clear();
            next.resize(stage.output_len(), 0.0);
            stage.predict(py, current, next)?;
            std::mem::swap(current, next);
        }
        out.extend_from_slice(rows);
        out.extend_from_slice(current);
        Ok(Some(out))
    }
}

/// Python lists of numbers of `shape` (`[K, C]`: K lists of C; `[K]`: one list of K), in
/// C order; `None` for anything else (a tuple, an array, a wrong length, a non-number).
fn read_rows(rows: &Bound<'_, PyAny>, shape: &[usize]) -> Option<Vec<f64>> {
    let rows = rows.downcast::<PyList>().ok()?;
    match shape {
        [count] => {
            if rows.len() != *count {
                return None;
            }
            rows.iter().map(|value| read_number(&value)).collect()
        }
        [count, width] => {
            if rows.len() != *count {
                return None;
            }
            let mut out = Vec::with_capacity(count * width);
            for row in rows.iter() {
                let row = row.downcast::<PyList>().ok()?;
                if row.len() != *width {
                    return None;
                }
                for value in row.iter() {
                    out.push(read_number(&value)?);
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// A Python float, or an int as numpy's float64 conversion rounds it; `None` for
/// anything else (a bool included: the decoder never gives one).
fn read_number(value: &Bound<'_, PyAny>) -> Option<f64> {
    if let Ok(float) = value.downcast_exact::<PyFloat>() {
        return Some(float.value());
    }
    if value.downcast_exact::<PyInt>().is_ok() {
        return value.extract::<f64>().ok();
    }
    None
}

pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ChainCore>()
}
