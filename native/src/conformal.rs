//! Online conformal prediction in the core: nonconformity scores, the window of recent
//! scores, the three online methods (ACI, conformal PID, DtACI), coverage bookkeeping,
//! label-free performance estimates, and a stream's whole uncertainty layer served and
//! learned in one call per record.
//!
//! The Python classes (`streamweights.adapters.conformal`, `ConfidenceEstimate`,
//! `CoverageMonitor`, `StreamUncertainty`) keep their constructors, validation and state
//! formats and hold these as their state. The arithmetic follows the plain-Python
//! reference (`tests/reference/conformal.py`) operation for operation, so per-event
//! thresholds, weights and levels are the same floats; the estimates' window means sum
//! left to right where the reference used `math.fsum`.
//!
//! References: Gibbs & Candès (2021) ACI; Gibbs & Candès (2022) DtACI; Angelopoulos,
//! Candès & Tibshirani (2023) conformal PID; Romano, Sesia & Candès (2020) APS scores.

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;

use crate::arrays;
use crate::expert_losses::{read_flat, write_native};
use crate::scores::PROBABILITY_FLOOR;

/// How badly a label fits a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreKind {
    /// `1 - p_y` (classification).
    Probability,
    /// Adaptive prediction sets, non-randomised (classification).
    Aps,
    /// `|y - yhat|` (regression).
    Absolute,
}

impl ScoreKind {
    fn parse(name: &str) -> PyResult<Self> {
        match name {
            "probability" => Ok(Self::Probability),
            "aps" => Ok(Self::Aps),
            "absolute" => Ok(Self::Absolute),
            other => Err(PyValueError::new_err(format!(
                "score: unknown nonconformity score {other:?}"
            ))),
        }
    }

    /// The score of class `y` for probabilities `p`.
    fn of_class(self, p: &[f64], y: usize) -> f64 {
        match self {
            Self::Aps => aps_mass(p, y),
            _ => 1.0 - p[y],
        }
    }
}

/// Mass of the classes ranked at or above `y` (higher probability, or equal and a lower
/// index), summed in class order.
pub fn aps_mass(p: &[f64], y: usize) -> f64 {
    let target = p[y];
    let mut total = 0.0;
    for (k, &value) in p.iter().enumerate() {
        if value > target || (value == target && k <= y) {
            total += value;
        }
    }
    total
}

/// The classes whose score is at most `q`, in class order.
pub fn class_set_of(kind: ScoreKind, p: &[f64], q: f64) -> Vec<usize> {
    class_members(kind, p, q).collect()
}

/// The classes of `class_set_of`, one by one.
fn class_members(kind: ScoreKind, p: &[f64], q: f64) -> impl Iterator<Item = usize> + '_ {
    (0..p.len()).filter(move |&k| kind.of_class(p, k) <= q)
}

/// One set of classes per level (`class_set_of` of each level's threshold).
pub type ClassSets = Vec<Vec<usize>>;

/// How many classes `class_set_of` would hold.
pub fn class_set_len(kind: ScoreKind, p: &[f64], q: f64) -> usize {
    class_members(kind, p, q).count()
}

/// `[value - q, value + q]`; a negative threshold gives `[value, value]`.
pub fn interval_of(value: f64, q: f64) -> (f64, f64) {
    if q < 0.0 {
        (value, value)
    } else {
        (value - q, value + q)
    }
}

/// The `level` quantile of ascending `ordered` in the conformal sense: the
/// `ceil(level (n + 1))`-th smallest, `+inf` past the largest, `-inf` below the first.
/// (A NaN level, which validation never lets through, serves everything: `+inf`.)
///
/// The rank is rounded up in integers, not by libm's `ceil` (a call on baseline x86-64,
/// 72 of them per label in the default's layers): for an integer `n`, `ceil(x) > n`
/// exactly when `x > n`, and `ceil(x) < 1` exactly when `x <= 0`; between them the
/// truncation of `x` is exact and the rank is it, or one more when `x` has a fraction.
///
/// The count goes through `i64`, not `usize`: x86-64 converts signed integers to and
/// from doubles in one instruction each, unsigned 64-bit ones in a branchy sequence
/// (~1% of the default's record lane). A window holds far fewer than 2^53 scores, so
/// every count here is exact either way.
pub fn quantile(ordered: &[f64], level: f64) -> f64 {
    let n = ordered.len() as i64;
    let count = n as f64;
    let position = level * (count + 1.0);
    if position.is_nan() || position > count {
        f64::INFINITY // past the largest, or NaN
    } else if position <= 0.0 {
        f64::NEG_INFINITY
    } else {
        let whole = position as i64; // 0 < position <= n: exact
        let rank = if (whole as f64) < position {
            whole + 1
        } else {
            whole
        };
        ordered[(rank - 1) as usize]
    }
}

/// `1 - #{scores < value} / (n + 1)`: the largest miscoverage level still covering it.
pub fn covered(ordered: &[f64], value: f64) -> f64 {
    covered_by(ordered, ordered.partition_point(|&v| v < value))
}

/// `covered` when `below = #{scores < value}` is known.
fn covered_by(ordered: &[f64], below: usize) -> f64 {
    1.0 - below as i64 as f64 / (ordered.len() as i64 as f64 + 1.0)
}

/// `#{scores <= value}` from `below = #{scores < value}`: the equals of `value` follow
/// the scores below it (usually none; searched, not walked, when a run of ties is long).
fn not_above(ordered: &[f64], value: f64, below: usize) -> usize {
    match ordered.get(below) {
        Some(&next) if next <= value => below + ordered[below..].partition_point(|&v| v <= value),
        _ => below,
    }
}

/// The last `size` scores in arrival order (a ring) and sorted (for quantiles).
#[derive(Clone, Debug)]
pub struct Window {
    pub size: usize,
    pub ring: Vec<f64>,
    pub head: usize,
    pub ordered: Vec<f64>,
}

impl Window {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            ring: Vec::with_capacity(size),
            head: 0,
            ordered: Vec::with_capacity(size),
        }
    }

    /// The reference's steps (remove the first of the oldest score's equals, then insert
    /// after the new score's equals, `tests/reference/conformal/scores.py`), done as one
    /// shift of the values between the two places instead of two shifts of the tails:
    /// the same sorted copy, value for value, at a third of the moves on average.
    pub fn push(&mut self, value: f64) {
        let end = self.ordered.partition_point(|&v| v <= value);
        self.push_before(value, end);
    }

    /// `push`, told `end = #{scores <= value}` in the window as it is (the caller has
    /// searched for `value` already).
    fn push_before(&mut self, value: f64, end: usize) {
        if self.ring.len() < self.size {
            self.ring.push(value);
            self.ordered.insert(end, value);
            return;
        }
        let oldest = self.ring[self.head];
        self.ring[self.head] = value;
        self.head = (self.head + 1) % self.size;
        let removed = self.ordered.partition_point(|&v| v < oldest);
        // Where the reference inserts, counted once `removed` is gone: the removed value
        // is among those <= `value` exactly when it lies before their end.
        let at = if removed < end { end - 1 } else { end };
        match at.cmp(&removed) {
            std::cmp::Ordering::Greater => self.ordered.copy_within(removed + 1..at + 1, removed),
            std::cmp::Ordering::Less => self.ordered.copy_within(at..removed, at + 1),
            std::cmp::Ordering::Equal => {}
        }
        self.ordered[at] = value;
    }

    pub fn spread(&self) -> f64 {
        match (self.ordered.first(), self.ordered.last()) {
            (Some(low), Some(high)) => high - low,
            _ => 0.0,
        }
    }

    /// Restores the ring; the sorted copy is rebuilt (a stable sort, as Python's).
    pub fn load(&mut self, ring: Vec<f64>, head: usize) -> PyResult<()> {
        if ring.len() > self.size || (head > 0 && head >= ring.len()) {
            return Err(PyValueError::new_err(format!(
                "scores: a ring of {} scores with head {head} does not fit a window of {}",
                ring.len(),
                self.size
            )));
        }
        let mut ordered = ring.clone();
        ordered.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        self.ring = ring;
        self.head = head;
        self.ordered = ordered;
        Ok(())
    }
}

/// What each method keeps beyond the window.
#[derive(Clone, Debug)]
pub enum Method {
    /// One working level per target level, moved by `step` on every label.
    Aci { step: f64, levels: Vec<f64> },
    /// Quantile tracker plus a saturating integrator, per level.
    Pid {
        lr: f64,
        gain: f64,
        saturation: f64,
        tracked: Vec<f64>,
        error_sums: Vec<f64>,
    },
    /// One ACI expert per step, mixed by exponential weights with Fixed-Share.
    Dtaci {
        steps: Vec<f64>,
        etas: Vec<f64>,
        sigma: f64,
        levels: Vec<Vec<f64>>,
        weights: Vec<Vec<f64>>,
        expert_thresholds: Vec<Vec<f64>>,
    },
}

/// DtACI's default number of experts (the Python class's `steps`, one per expert).
const DTACI_EXPERTS: usize = 8;

/// What one DtACI level's experts learn from a label: its miscoverage target `alpha`,
/// learning rate `eta`, share `sigma`, the label's coverage level `beta` and its score
/// `value`.
struct DtaciExpert {
    alpha: f64,
    eta: f64,
    sigma: f64,
    beta: f64,
    value: f64,
}

impl DtaciExpert {
    /// The experts' weights raised, normalised and shared in place, then each expert's
    /// level moved by its step towards the target (judged by the thresholds `served`
    /// with the prediction). `K`: the number of experts when known at compile time (0:
    /// `steps.len()`); the same operations in the same order either way.
    fn step<const K: usize>(
        &self,
        steps: &[f64],
        levels: &mut [f64],
        weights: &mut Vec<f64>,
        served: &[f64],
    ) {
        let k = if K == 0 { steps.len() } else { K };
        let (steps, levels, served) = (&steps[..k], &mut levels[..k], &served[..k]);
        let (alpha, eta, sigma) = (self.alpha, self.eta, self.sigma);
        let share = sigma / k as f64;
        let mut total = 0.0;
        for (&level, weight) in levels.iter().zip(weights[..k].iter_mut()) {
            let gap = self.beta - level;
            let loss = alpha * gap - if gap < 0.0 { gap } else { 0.0 };
            let w = *weight * (-eta * loss).exp();
            *weight = w;
            total += w;
        }
        if total > 0.0 {
            for w in weights[..k].iter_mut() {
                *w = (1.0 - sigma) * *w / total + share;
            }
        } else {
            weights.clear();
            weights.resize(k, 1.0 / k as f64);
        }
        for ((level, &step), &q) in levels.iter_mut().zip(steps).zip(served) {
            *level += step * (alpha - miss(self.value, q));
        }
    }
}

/// `Σ weight_i level_i`, left to right, over `K` experts (0: as many as `levels`).
fn mixed_level<const K: usize>(levels: &[f64], weights: &[f64]) -> f64 {
    let k = if K == 0 { levels.len() } else { K };
    let mut mixed = 0.0;
    for (&level, &weight) in levels[..k].iter().zip(&weights[..k]) {
        mixed += weight * level;
    }
    mixed
}

/// `out` becomes each of `K` experts' threshold (0: as many as `levels`).
fn thresholds_into<const K: usize>(ordered: &[f64], levels: &[f64], out: &mut Vec<f64>) {
    let k = if K == 0 { levels.len() } else { K };
    out.resize(k, 0.0);
    for (threshold, &level) in out[..k].iter_mut().zip(&levels[..k]) {
        *threshold = quantile(ordered, 1.0 - level);
    }
}

/// One online conformal layer (plain Rust; `ConformalCore` is its Python handle).
#[derive(Clone, Debug)]
pub struct Layer {
    pub alphas: Vec<f64>,
    pub kind: ScoreKind,
    pub window: Window,
    pub labels: u64,
    pub method: Method,
    pub thresholds: Vec<f64>,
}

/// `out` becomes `values`, reusing its allocation (refreshed on every label).
fn overwrite(out: &mut Vec<f64>, values: impl Iterator<Item = f64>) {
    out.clear();
    out.extend(values);
}

fn miss(value: f64, q: f64) -> f64 {
    if value > q {
        1.0
    } else {
        0.0
    }
}

impl Layer {
    fn new(alphas: Vec<f64>, kind: ScoreKind, window: usize, method: Method) -> Self {
        let mut layer = Self {
            alphas,
            kind,
            window: Window::new(window),
            labels: 0,
            method,
            thresholds: vec![],
        };
        layer.refresh();
        layer
    }

    /// The thresholds a prediction served now is judged by: per level, then (DtACI)
    /// every expert's, level by level.
    pub fn served_state(&self) -> Vec<f64> {
        let mut served = Vec::with_capacity(self.served_len());
        self.extend_served(&mut served);
        served
    }

    /// `served_state` appended to `out` (no vector of its own per prediction).
    pub fn extend_served(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&self.thresholds);
        if let Method::Dtaci {
            expert_thresholds, ..
        } = &self.method
        {
            for row in expert_thresholds {
                out.extend_from_slice(row);
            }
        }
    }

    pub fn served_len(&self) -> usize {
        match &self.method {
            Method::Dtaci { steps, .. } => self.alphas.len() * (1 + steps.len()),
            _ => self.alphas.len(),
        }
    }

    /// A label whose score is `value`, judged by what was `served` with its prediction.
    pub fn learn_scored(&mut self, value: f64, served: &[f64]) {
        // One search serves DtACI's coverage level and the window's insert point.
        let ordered = &self.window.ordered;
        let below = ordered.partition_point(|&v| v < value);
        let end = not_above(ordered, value, below);
        self.update(value, served, below);
        self.window.push_before(value, end);
        self.labels += 1;
        self.refresh();
    }

    /// `below`: how many of the window's scores are below `value`.
    fn update(&mut self, value: f64, served: &[f64], below: usize) {
        let alphas = &self.alphas;
        match &mut self.method {
            Method::Aci { step, levels } => {
                for ((level, &alpha), &q) in levels.iter_mut().zip(alphas).zip(served) {
                    *level += *step * (alpha - miss(value, q));
                }
            }
            Method::Pid {
                lr,
                tracked,
                error_sums,
                ..
            } => {
                let spread = self.window.spread();
                let scale = if spread > 0.0 {
                    spread
                } else {
                    value.abs().max(1e-12)
                };
                for (i, &alpha) in alphas.iter().enumerate() {
                    let err = miss(value, served[i]);
                    tracked[i] += *lr * scale * (err - alpha);
                    error_sums[i] += err - alpha;
                }
            }
            Method::Dtaci {
                steps,
                etas,
                sigma,
                levels,
                weights,
                ..
            } => {
                let beta = covered_by(&self.window.ordered, below);
                let k = steps.len();
                let n_levels = alphas.len();
                for (row, &alpha) in alphas.iter().enumerate() {
                    let start = n_levels + row * k;
                    let expert = DtaciExpert {
                        alpha,
                        eta: etas[row],
                        sigma: *sigma,
                        beta,
                        value,
                    };
                    let (levels, weights) = (&mut levels[row], &mut weights[row]);
                    let served = &served[start..start + k];
                    // DtACI's default of eight experts compiled for its size (its loops
                    // unroll); any other count as it comes.
                    if k == DTACI_EXPERTS {
                        expert.step::<DTACI_EXPERTS>(steps, levels, weights, served);
                    } else {
                        expert.step::<0>(steps, levels, weights, served);
                    }
                }
            }
        }
    }

    fn refresh(&mut self) {
        let ordered = &self.window.ordered;
        match &mut self.method {
            Method::Aci { levels, .. } => {
                let thresholds = levels.iter().map(|&l| quantile(ordered, 1.0 - l));
                overwrite(&mut self.thresholds, thresholds);
            }
            Method::Pid {
                gain,
                saturation,
                tracked,
                error_sums,
                ..
            } => {
                let t = self.labels;
                let scale = if t > 0 { self.window.spread() } else { 0.0 };
                let half_pi = std::f64::consts::FRAC_PI_2;
                self.thresholds = tracked
                    .iter()
                    .zip(error_sums.iter())
                    .map(|(&tracked, &total)| {
                        let mut integral = 0.0;
                        if *gain > 0.0 && t > 0 {
                            let next = (t + 1) as f64;
                            let argument = total * next.ln() / (*saturation * next);
                            integral = if argument >= half_pi {
                                f64::INFINITY
                            } else if argument <= -half_pi {
                                f64::NEG_INFINITY
                            } else {
                                *gain * scale * argument.tan()
                            };
                        }
                        tracked + integral
                    })
                    .collect();
            }
            Method::Dtaci {
                levels,
                weights,
                expert_thresholds,
                ..
            } => {
                let thresholds = levels.iter().zip(weights.iter()).map(|(levels, weights)| {
                    let mixed = if levels.len() == DTACI_EXPERTS {
                        mixed_level::<DTACI_EXPERTS>(levels, weights)
                    } else {
                        mixed_level::<0>(levels, weights)
                    };
                    quantile(ordered, 1.0 - mixed)
                });
                overwrite(&mut self.thresholds, thresholds);
                expert_thresholds.resize_with(levels.len(), Vec::new);
                for (row, out) in levels.iter().zip(expert_thresholds.iter_mut()) {
                    if row.len() == DTACI_EXPERTS {
                        thresholds_into::<DTACI_EXPERTS>(ordered, row, out);
                    } else {
                        thresholds_into::<0>(ordered, row, out);
                    }
                }
            }
        }
    }
}

/// Python handle of one conformal layer; the Python class validates and configures.
#[pyclass(module = "streamweights._native")]
pub struct ConformalCore {
    pub layer: Layer,
}

fn rows_of(
    value: &Bound<'_, PyAny>,
    name: &str,
    rows: usize,
    width: usize,
) -> PyResult<Vec<Vec<f64>>> {
    let found: Vec<Vec<f64>> = value.extract()?;
    if found.len() != rows || found.iter().any(|r| r.len() != width) {
        return Err(PyValueError::new_err(format!(
            "{name}: expected {rows} rows of {width}"
        )));
    }
    Ok(found)
}

#[pymethods]
impl ConformalCore {
    /// ACI with step `step`.
    #[staticmethod]
    fn aci(alphas: Vec<f64>, score: &str, window: usize, step: f64) -> PyResult<Self> {
        let levels = alphas.clone();
        let method = Method::Aci { step, levels };
        Ok(Self {
            layer: Layer::new(alphas, ScoreKind::parse(score)?, window, method),
        })
    }

    /// Conformal PID; `saturation` is `C_sat` (computed by the Python class).
    #[staticmethod]
    fn pid(
        alphas: Vec<f64>,
        score: &str,
        window: usize,
        lr: f64,
        gain: f64,
        saturation: f64,
    ) -> PyResult<Self> {
        let n = alphas.len();
        let method = Method::Pid {
            lr,
            gain,
            saturation,
            tracked: vec![0.0; n],
            error_sums: vec![0.0; n],
        };
        Ok(Self {
            layer: Layer::new(alphas, ScoreKind::parse(score)?, window, method),
        })
    }

    /// DtACI with the experts' `steps`, one `eta` per level and Fixed-Share `sigma`.
    #[staticmethod]
    fn dtaci(
        alphas: Vec<f64>,
        score: &str,
        window: usize,
        steps: Vec<f64>,
        etas: Vec<f64>,
        sigma: f64,
    ) -> PyResult<Self> {
        let k = steps.len();
        if k == 0 || etas.len() != alphas.len() {
            return Err(PyValueError::new_err(
                "dtaci: one eta per level and at least one step",
            ));
        }
        let method = Method::Dtaci {
            steps,
            etas,
            sigma,
            levels: alphas.iter().map(|&a| vec![a; k]).collect(),
            weights: alphas.iter().map(|_| vec![1.0 / k as f64; k]).collect(),
            expert_thresholds: vec![],
        };
        Ok(Self {
            layer: Layer::new(alphas, ScoreKind::parse(score)?, window, method),
        })
    }

    fn served_state(&self) -> Vec<f64> {
        self.layer.served_state()
    }

    fn served_len(&self) -> usize {
        self.layer.served_len()
    }

    #[getter]
    fn thresholds(&self) -> Vec<f64> {
        self.layer.thresholds.clone()
    }

    /// Learns a label whose score is `value` given the thresholds `served` (validated
    /// length; the caller validated the score).
    fn learn_scored(&mut self, value: f64, served: Vec<f64>) -> PyResult<()> {
        let expected = self.layer.served_len();
        if served.len() != expected {
            return Err(PyValueError::new_err(format!(
                "served: expected {expected} thresholds, got {}",
                served.len()
            )));
        }
        self.layer.learn_scored(value, &served);
        Ok(())
    }

    /// DtACI's served working level per target level (the experts' weighted mean).
    fn mixed_levels(&self) -> Vec<f64> {
        match &self.layer.method {
            Method::Dtaci {
                levels, weights, ..
            } => levels
                .iter()
                .zip(weights)
                .map(|(l, w)| {
                    let mut total = 0.0;
                    for (&level, &weight) in l.iter().zip(w) {
                        total += weight * level;
                    }
                    total
                })
                .collect(),
            Method::Aci { levels, .. } => levels.clone(),
            Method::Pid { .. } => self.layer.alphas.clone(),
        }
    }

    #[getter]
    fn labels(&self) -> u64 {
        self.layer.labels
    }
    #[getter]
    fn ring(&self) -> Vec<f64> {
        self.layer.window.ring.clone()
    }
    /// The ring as a new float64 array (what a snapshot keeps), without a Python float
    /// per score on the way (~25 us of a 1,000-score window's state).
    fn ring_array<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.layer.window.ring)
    }
    #[getter]
    fn head(&self) -> usize {
        self.layer.window.head
    }
    #[getter]
    fn ordered(&self) -> Vec<f64> {
        self.layer.window.ordered.clone()
    }

    /// Method state: `levels` (ACI: per level; DtACI: per level per expert),
    /// `weights` (DtACI), `tracked` and `error_sums` (PID).
    fn method_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        match &self.layer.method {
            Method::Aci { levels, .. } => out.set_item("levels", levels.clone())?,
            Method::Pid {
                tracked,
                error_sums,
                ..
            } => {
                out.set_item("tracked", tracked.clone())?;
                out.set_item("error_sums", error_sums.clone())?;
            }
            Method::Dtaci {
                levels, weights, ..
            } => {
                out.set_item("levels", levels.clone())?;
                out.set_item("weights", weights.clone())?;
            }
        }
        Ok(out)
    }

    /// Restores the window, the label count and the method state (keys as
    /// `method_state`), then the cached thresholds.
    fn load(
        &mut self,
        ring: &Bound<'_, PyAny>,
        head: usize,
        labels: u64,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ring = read_flat(ring.py(), ring)?;
        let n = self.layer.alphas.len();
        let mut method = self.layer.method.clone();
        match &mut method {
            Method::Aci { levels, .. } => {
                let found: Vec<f64> = state.get_item("levels")?.extract()?;
                if found.len() != n {
                    return Err(PyValueError::new_err(format!(
                        "levels: expected {n} levels"
                    )));
                }
                *levels = found;
            }
            Method::Pid {
                tracked,
                error_sums,
                ..
            } => {
                let t: Vec<f64> = state.get_item("tracked")?.extract()?;
                let e: Vec<f64> = state.get_item("error_sums")?.extract()?;
                if t.len() != n || e.len() != n {
                    return Err(PyValueError::new_err(format!(
                        "tracked/error_sums: expected {n}"
                    )));
                }
                *tracked = t;
                *error_sums = e;
            }
            Method::Dtaci {
                steps,
                levels,
                weights,
                ..
            } => {
                let k = steps.len();
                *levels = rows_of(&state.get_item("levels")?, "levels", n, k)?;
                *weights = rows_of(&state.get_item("weights")?, "weights", n, k)?;
            }
        }
        let mut window = self.layer.window.clone();
        window.load(ring, head)?;
        self.layer.window = window;
        self.layer.method = method;
        self.layer.labels = labels;
        self.layer.refresh();
        Ok(())
    }
}

/// The window of scores alone (the Python `ScoreWindow`).
#[pyclass(module = "streamweights._native")]
pub struct ScoreWindowCore {
    window: Window,
}

#[pymethods]
impl ScoreWindowCore {
    #[new]
    fn new(size: usize) -> PyResult<Self> {
        if size == 0 {
            return Err(PyValueError::new_err("window: must be at least 1"));
        }
        Ok(Self {
            window: Window::new(size),
        })
    }
    fn push(&mut self, value: f64) {
        self.window.push(value);
    }
    fn spread(&self) -> f64 {
        self.window.spread()
    }
    #[getter]
    fn size(&self) -> usize {
        self.window.size
    }
    #[getter]
    fn ring(&self) -> Vec<f64> {
        self.window.ring.clone()
    }
    /// The ring as a new float64 array (see the layer's `ring_array`).
    fn ring_array<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, &self.window.ring)
    }
    #[getter]
    fn head(&self) -> usize {
        self.window.head
    }
    #[getter]
    fn ordered(&self) -> Vec<f64> {
        self.window.ordered.clone()
    }
    /// Restores the ring (a float64 array, or a list from an older record).
    fn load(&mut self, ring: &Bound<'_, PyAny>, head: usize) -> PyResult<()> {
        self.window.load(read_flat(ring.py(), ring)?, head)
    }
}

/// Coverage and size of one forecaster's served sets, per level (the Python
/// `CoverageMonitor` keeps the summary; this keeps the counts).
#[derive(Clone, Debug)]
pub struct Coverage {
    pub rolling: usize,
    pub labelled: u64,
    pub covered: Vec<u64>,
    pub served: u64,
    pub size_sums: Vec<f64>,
    pub unbounded: Vec<u64>,
    /// The last `rolling` labels' flags, one row of `levels` flags per label, rows one
    /// after the other (once full, `head` is the oldest row): one buffer, not a vector
    /// per row (a full default stream's four monitors held 2,000 of those).
    pub ring: Vec<u8>,
    pub head: usize,
    pub ring_covered: Vec<u64>,
}

impl Coverage {
    fn new(levels: usize, rolling: usize) -> Self {
        Self {
            rolling,
            labelled: 0,
            covered: vec![0; levels],
            served: 0,
            size_sums: vec![0.0; levels],
            unbounded: vec![0; levels],
            ring: Vec::new(),
            head: 0,
            ring_covered: vec![0; levels],
        }
    }

    fn record_served(&mut self, sizes: &[f64]) {
        self.served += 1;
        for (i, &size) in sizes.iter().enumerate() {
            if size.is_infinite() {
                self.unbounded[i] += 1;
            } else {
                self.size_sums[i] += size;
            }
        }
    }

    fn levels(&self) -> usize {
        self.covered.len()
    }

    /// Rows (labels) in the rolling window.
    fn ring_rows(&self) -> usize {
        self.ring.len().checked_div(self.levels()).unwrap_or(0)
    }

    /// `flags` holds one flag per level (checked by the callers).
    fn record_label(&mut self, flags: &[u8]) {
        self.labelled += 1;
        for (i, &flag) in flags.iter().enumerate() {
            self.covered[i] += u64::from(flag);
            self.ring_covered[i] += u64::from(flag);
        }
        if self.ring_rows() < self.rolling {
            self.ring.extend_from_slice(flags);
        } else {
            // The oldest row leaves the rolling counts; its slot takes the new flags.
            let levels = self.levels();
            let oldest = &mut self.ring[self.head * levels..(self.head + 1) * levels];
            for (i, (slot, &flag)) in oldest.iter_mut().zip(flags).enumerate() {
                self.ring_covered[i] -= u64::from(*slot);
                *slot = flag;
            }
            self.head = (self.head + 1) % self.rolling;
        }
    }
}

/// Python handle of one coverage monitor.
#[pyclass(module = "streamweights._native")]
pub struct CoverageCore {
    pub coverage: Coverage,
}

#[pymethods]
impl CoverageCore {
    #[new]
    fn new(levels: usize, rolling: usize) -> PyResult<Self> {
        if rolling == 0 {
            return Err(PyValueError::new_err("rolling: must be at least 1"));
        }
        Ok(Self {
            coverage: Coverage::new(levels, rolling),
        })
    }
    fn record_served(&mut self, sizes: Vec<f64>) -> PyResult<()> {
        if sizes.len() != self.coverage.covered.len() {
            return Err(PyValueError::new_err("sizes: one per level"));
        }
        self.coverage.record_served(&sizes);
        Ok(())
    }
    fn record_label(&mut self, covered: Vec<u8>) -> PyResult<()> {
        if covered.len() != self.coverage.covered.len() || covered.iter().any(|&f| f > 1) {
            return Err(PyValueError::new_err("covered: one 0/1 flag per level"));
        }
        self.coverage.record_label(&covered);
        Ok(())
    }
    /// `(labelled, covered, served, size_sums, unbounded, ring length, ring_covered)`.
    #[allow(clippy::type_complexity)]
    fn counts(&self) -> (u64, Vec<u64>, u64, Vec<f64>, Vec<u64>, usize, Vec<u64>) {
        let c = &self.coverage;
        (
            c.labelled,
            c.covered.clone(),
            c.served,
            c.size_sums.clone(),
            c.unbounded.clone(),
            c.ring_rows(),
            c.ring_covered.clone(),
        )
    }
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.coverage;
        let out = PyDict::new(py);
        out.set_item("labelled", c.labelled)?;
        out.set_item("covered", c.covered.clone())?;
        out.set_item("served", c.served)?;
        out.set_item("size_sums", c.size_sums.clone())?;
        out.set_item("unbounded", c.unbounded.clone())?;
        // A (labels, levels) uint8 array: packed as bytes in a snapshot, where a list
        // of lists of ints was ~40% of a full default stream's skeleton text.
        let ring = PyArray1::from_slice(py, &c.ring).reshape([c.ring_rows(), c.levels()])?;
        out.set_item("ring", ring)?;
        out.set_item("head", c.head)?;
        Ok(out)
    }
    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let levels = self.coverage.covered.len();
        let ring = ring_rows(&state.get_item("ring")?, levels)?;
        let head: usize = state.get_item("head")?.extract()?;
        let mut loaded = Coverage {
            rolling: self.coverage.rolling,
            labelled: state.get_item("labelled")?.extract()?,
            covered: state.get_item("covered")?.extract()?,
            served: state.get_item("served")?.extract()?,
            size_sums: state.get_item("size_sums")?.extract()?,
            unbounded: state.get_item("unbounded")?.extract()?,
            ring,
            head,
            ring_covered: vec![0; levels],
        };
        if loaded.covered.len() != levels
            || loaded.size_sums.len() != levels
            || loaded.unbounded.len() != levels
            || loaded.ring_rows() > loaded.rolling
            || loaded.ring.iter().any(|&f| f > 1)
            || (head > 0 && head >= loaded.ring_rows())
        {
            return Err(PyValueError::new_err(
                "coverage: snapshot does not fit the monitor",
            ));
        }
        for row in loaded.ring.chunks_exact(levels.max(1)) {
            // (a monitor of no levels has no flags: `max` only keeps `chunks_exact` from
            // panicking on 0)
            for (i, &flag) in row.iter().enumerate() {
                loaded.ring_covered[i] += u64::from(flag);
            }
        }
        self.coverage = loaded;
        Ok(())
    }
}

/// A snapshot's coverage ring as one buffer of rows of `levels` flags: a
/// `(labels, levels)` uint8 array as `state_dict` writes it, or the list of rows of ints
/// that releases before wrote. A row of another length is refused.
fn ring_rows(value: &Bound<'_, PyAny>, levels: usize) -> PyResult<Vec<u8>> {
    let misfit = || PyValueError::new_err("coverage: snapshot does not fit the monitor");
    if let Ok(array) = value.downcast::<PyArray2<u8>>() {
        if array.shape()[1] != levels {
            return Err(misfit());
        }
        if array.is_c_contiguous() {
            if let Ok(flat) = array.to_vec() {
                return Ok(flat);
            }
        }
        // Another layout (`to_vec` copies memory order, column-major for Fortran
        // order): read it in row order.
        return Ok(array.to_owned_array().iter().copied().collect());
    }
    let rows: Vec<Vec<u8>> = value.extract()?;
    if rows.iter().any(|row| row.len() != levels) {
        return Err(misfit());
    }
    Ok(rows.concat())
}

/// A window kept as blocks of `[count, sum_0, sum_1, sum_2]`; the oldest block is
/// dropped once the others cover `size` items (see `performance_estimate.py`).
#[derive(Clone, Debug)]
pub struct Blocks {
    pub size: usize,
    pub block: usize,
    pub blocks: Vec<[f64; 4]>,
}

/// Blocks per window (the Python module's `BLOCKS`).
pub const BLOCKS: usize = 10;

impl Blocks {
    fn new(size: usize) -> Self {
        Self {
            size,
            block: (size + BLOCKS - 1) / BLOCKS,
            blocks: Vec::new(),
        }
    }

    fn push(&mut self, item: (f64, f64, f64)) {
        let full = self
            .blocks
            .last()
            .map_or(true, |b| b[0] >= self.block as f64);
        if full {
            self.blocks.push([0.0; 4]);
        }
        if let Some(last) = self.blocks.last_mut() {
            last[0] += 1.0;
            last[1] += item.0;
            last[2] += item.1;
            last[3] += item.2;
        }
        loop {
            let total: f64 = self.blocks.iter().map(|b| b[0]).sum();
            if total - self.blocks[0][0] >= self.size as f64 {
                self.blocks.remove(0);
            } else {
                break;
            }
        }
    }

    fn means(&self) -> [f64; 3] {
        let count: f64 = self.blocks.iter().map(|b| b[0]).sum();
        if count == 0.0 {
            return [f64::NAN; 3];
        }
        let mut out = [0.0; 3];
        for (j, slot) in out.iter_mut().enumerate() {
            let total: f64 = self.blocks.iter().map(|b| b[j + 1]).sum();
            *slot = total / count;
        }
        out
    }

    /// The blocks as a `(blocks, 4)` float64 array, one `[count, s0, s1, s2]` row each.
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let values: Vec<f64> = self.blocks.iter().flatten().copied().collect();
        arrays::matrix(py, &values, self.blocks.len(), 4)
    }

    /// Load blocks from a `(blocks, 4)` float64 array (how `rows` gives them) or a
    /// sequence of `[count, s0, s1, s2]` sequences (records written before).
    fn load(&mut self, blocks: &Bound<'_, PyAny>) -> PyResult<()> {
        let refused = || PyValueError::new_err("blocks: expected [count, s0, s1, s2] each");
        if let Some(values) = arrays::matrix_values(blocks, 4) {
            self.blocks = values
                .chunks_exact(4)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect();
            return Ok(());
        }
        let rows: Vec<Vec<f64>> = blocks.extract()?;
        if rows.iter().any(|b| b.len() != 4) {
            return Err(refused());
        }
        self.blocks = rows.into_iter().map(|b| [b[0], b[1], b[2], b[3]]).collect();
        Ok(())
    }
}

fn top_class(p: &[f64]) -> (usize, f64) {
    let mut top = 0;
    let mut best = p[0];
    for (k, &v) in p.iter().enumerate() {
        if v > best {
            best = v;
            top = k;
        }
    }
    (top, best)
}

/// Expected accuracy, Brier and log-loss of `p` if its label were drawn from `p`.
pub fn expected_scores(p: &[f64]) -> (f64, f64, f64) {
    let mut squares = 0.0;
    let mut entropy = 0.0;
    for &value in p {
        squares += value * value;
        entropy -= value * value.max(PROBABILITY_FLOOR).ln();
    }
    (top_class(p).1, 1.0 - squares, entropy)
}

/// Accuracy (first top class is `y`), Brier and log-loss of `p` on label `y`.
pub fn realised_scores(p: &[f64], y: usize) -> (f64, f64, f64) {
    let mut squares = 0.0;
    for &value in p {
        squares += value * value;
    }
    let hit = if top_class(p).0 == y { 1.0 } else { 0.0 };
    (
        hit,
        squares - 2.0 * p[y] + 1.0,
        -p[y].max(PROBABILITY_FLOOR).ln(),
    )
}

/// Label-free (expected) and realised accuracy, Brier and log-loss over a window.
#[derive(Clone, Debug)]
pub struct Estimate {
    pub expected: Blocks,
    pub realised: Blocks,
}

/// Python handle of a `ConfidenceEstimate`'s state.
#[pyclass(module = "streamweights._native")]
pub struct EstimateCore {
    pub estimate: Estimate,
}

#[pymethods]
impl EstimateCore {
    #[new]
    fn new(window: usize) -> PyResult<Self> {
        if window == 0 {
            return Err(PyValueError::new_err("window: must be at least 1"));
        }
        Ok(Self {
            estimate: Estimate {
                expected: Blocks::new(window),
                realised: Blocks::new(window),
            },
        })
    }
    /// A served prediction (validated probabilities).
    fn observe(&mut self, p: Vec<f64>) {
        self.estimate.expected.push(expected_scores(&p));
    }
    /// Its label (validated).
    fn learn(&mut self, p: Vec<f64>, label: usize) -> PyResult<()> {
        if label >= p.len() {
            return Err(PyValueError::new_err("y: class outside the probabilities"));
        }
        self.estimate.realised.push(realised_scores(&p, label));
        Ok(())
    }
    /// Estimated accuracy, Brier, log-loss, then the realised three (NaN when empty).
    fn means(&self) -> Vec<f64> {
        let mut out = self.estimate.expected.means().to_vec();
        out.extend_from_slice(&self.estimate.realised.means());
        out
    }
    /// The two windows' blocks, each a `(blocks, 4)` float64 array (a snapshot packs an
    /// array's bytes as they are, where lists of lists were 200 Python objects each).
    #[allow(clippy::type_complexity)]
    fn blocks<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<f64>>)> {
        Ok((
            self.estimate.expected.rows(py)?,
            self.estimate.realised.rows(py)?,
        ))
    }
    /// Load the two windows' blocks, as arrays or as lists of rows (`Blocks::load`).
    fn load(&mut self, expected: &Bound<'_, PyAny>, realised: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut estimate = self.estimate.clone();
        estimate.expected.load(expected)?;
        estimate.realised.load(realised)?;
        self.estimate = estimate;
        Ok(())
    }
}

/// A stream's uncertainty layer in one object: per forecaster (the adapted output, then
/// each deployed model) a conformal layer and coverage monitor (when configured) and a
/// performance estimate (when configured). It holds the same objects the Python layers
/// hold, so their `state_dict` sees every change.
#[pyclass(module = "streamweights._native")]
pub struct UncertaintyCore {
    classification: bool,
    layers: Vec<Py<ConformalCore>>,
    monitors: Vec<Py<CoverageCore>>,
    estimates: Vec<Py<EstimateCore>>,
}

/// A Rust value as a Python object (lists of lists, `None` for `Option::None`).
fn to_object<'py, T>(py: Python<'py>, value: T) -> PyResult<PyObject>
where
    T: IntoPyObject<'py>,
    PyErr: From<T::Error>,
{
    Ok(value.into_bound_py_any(py)?.unbind())
}

fn finite(value: f64) -> Option<f64> {
    if value.is_infinite() {
        None
    } else {
        Some(value)
    }
}

#[pymethods]
impl UncertaintyCore {
    #[new]
    fn new(
        classification: bool,
        layers: Vec<Py<ConformalCore>>,
        monitors: Vec<Py<CoverageCore>>,
        estimates: Vec<Py<EstimateCore>>,
    ) -> PyResult<Self> {
        if layers.len() != monitors.len() {
            return Err(PyValueError::new_err(
                "one coverage monitor per conformal layer",
            ));
        }
        Ok(Self {
            classification,
            layers,
            monitors,
            estimates,
        })
    }

    /// A served prediction: `rows` are the forecasters' outputs (probability lists, or
    /// one value each), adapted first. Returns the adapted output's sets or intervals
    /// per level (`None` without layers) and every layer's served thresholds, flat, with
    /// the row length.
    fn serve(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
    ) -> PyResult<(Option<PyObject>, Vec<f64>, usize)> {
        self.serve_rows(py, rows)
    }

    /// `serve`, with the thresholds written into `out` (a float64 array of exactly their
    /// size, e.g. layers x `served_len`) instead of returned as a list: the pipeline keeps
    /// them as an array with the prediction, and a list of ~70 floats made into an
    /// array cost more than the serving itself. Returns the sets or intervals.
    fn serve_into(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<Option<PyObject>> {
        let (wire, kept, _) = self.serve_rows(py, rows)?;
        write_native(py, out, &kept)?;
        Ok(wire)
    }

    /// `serve_into` for a classification stream from the chain core's flat record of the
    /// prediction (`ChainCore`'s buffer): the rows are the adapted output (the buffer's
    /// last `width` values) then the models' rows (`raw`, the trace's first entry, a
    /// `(start, stop)` range of the buffer, `width` values per model). The same numbers
    /// as `serve_into` of those rows as lists. `out`: `None` when there are no layers.
    #[pyo3(signature = (buffer, raw, width, out=None))]
    fn serve_flat(
        &self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        raw: (usize, usize),
        width: usize,
        out: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PyObject>> {
        let values = read_flat(py, buffer)?;
        let rows = self.flat_rows(&values, raw, width)?;
        let (sets, kept, _) = self.serve_probabilities(py, &rows)?;
        if let Some(out) = out {
            write_native(py, out, &kept)?;
        }
        sets.map(|sets| to_object(py, sets)).transpose()
    }

    /// The label of a prediction served from `rows` with thresholds `kept` (flat, as
    /// `serve` returned them, or the array `serve_into` filled): estimates, coverage,
    /// then every layer learns.
    fn learn(
        &self,
        py: Python<'_>,
        kept: &Bound<'_, PyAny>,
        rows: &Bound<'_, PyList>,
        label: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let kept = read_flat(py, kept)?;
        self.learn_rows(py, kept, rows, label)
    }
}

impl UncertaintyCore {
    fn serve_rows(
        &self,
        py: Python<'_>,
        rows: &Bound<'_, PyList>,
    ) -> PyResult<(Option<PyObject>, Vec<f64>, usize)> {
        if self.classification {
            let rows: Vec<Vec<f64>> = rows.extract()?;
            let (sets, kept, width) = self.serve_probabilities(py, &rows)?;
            return Ok((
                sets.map(|sets| to_object(py, sets)).transpose()?,
                kept,
                width,
            ));
        }
        let values: Vec<f64> = rows.extract()?;
        self.serve_layers(py, |_, index, levels, sizes| {
            sizes.extend(levels.iter().map(|&q| {
                if q.is_infinite() {
                    f64::INFINITY
                } else {
                    2.0 * q.max(0.0)
                }
            }));
            let intervals = if index == 0 {
                let intervals: Vec<Vec<Option<f64>>> = levels
                    .iter()
                    .map(|&q| {
                        let (lo, hi) = interval_of(values[index], q);
                        vec![finite(lo), finite(hi)]
                    })
                    .collect();
                Some(to_object(py, intervals)?)
            } else {
                None
            };
            Ok(intervals)
        })
    }

    /// The adapted output's row then the models' rows in a chain core's flat record.
    pub(crate) fn flat_rows<'v>(
        &self,
        values: &'v [f64],
        raw: (usize, usize),
        width: usize,
    ) -> PyResult<Vec<&'v [f64]>> {
        let (start, stop) = raw;
        if !self.classification
            || width == 0
            || start > stop
            || stop > values.len()
            || values.len() < width
            || (stop - start) % width != 0
        {
            return Err(PyValueError::new_err(format!(
                "buffer: no classification rows of width {width} at {start}..{stop} of {}",
                values.len()
            )));
        }
        let mut rows = Vec::with_capacity(1 + (stop - start) / width);
        rows.push(&values[values.len() - width..]);
        rows.extend(values[start..stop].chunks(width));
        Ok(rows)
    }

    /// `serve` of a classification stream's rows (adapted first, then each model's);
    /// the adapted output's sets per level come back as the core's vectors.
    pub(crate) fn serve_probabilities<R: AsRef<[f64]>>(
        &self,
        py: Python<'_>,
        rows: &[R],
    ) -> PyResult<(Option<ClassSets>, Vec<f64>, usize)> {
        for (estimate, row) in self.estimates.iter().zip(rows) {
            estimate
                .borrow_mut(py)
                .estimate
                .expected
                .push(expected_scores(row.as_ref()));
        }
        self.serve_layers(py, |layer, index, levels, sizes| {
            let row = rows[index].as_ref();
            if index > 0 {
                // Only the adapted output's sets go on the wire: the models' are counted.
                sizes.extend(
                    levels
                        .iter()
                        .map(|&q| class_set_len(layer.kind, row, q) as f64),
                );
                return Ok(None);
            }
            let sets: Vec<Vec<usize>> = levels
                .iter()
                .map(|&q| class_set_of(layer.kind, row, q))
                .collect();
            sizes.extend(sets.iter().map(|s| s.len() as f64));
            Ok(Some(sets))
        })
    }

    /// Every layer's served thresholds, flat, with their count per layer: each monitor
    /// records the set sizes `serve(layer, index, levels, sizes)` appends to the empty
    /// `sizes` for its layer (one buffer for all layers), and the wire form it returns
    /// for the adapted output's layer (index 0) is returned.
    fn serve_layers<T>(
        &self,
        py: Python<'_>,
        mut serve: impl FnMut(&Layer, usize, &[f64], &mut Vec<f64>) -> PyResult<Option<T>>,
    ) -> PyResult<(Option<T>, Vec<f64>, usize)> {
        let mut wire = None;
        let mut width = 0;
        let mut sizes = Vec::new();
        let capacity = self.layers.iter().map(|l| l.borrow(py).layer.served_len());
        let mut kept = Vec::with_capacity(capacity.sum());
        for (index, (layer, monitor)) in self.layers.iter().zip(&self.monitors).enumerate() {
            let layer = layer.borrow(py);
            let layer = &layer.layer;
            let start = kept.len();
            layer.extend_served(&mut kept);
            width = kept.len() - start;
            let served = &kept[start..start + layer.alphas.len()];
            sizes.clear();
            let form = serve(layer, index, served, &mut sizes)?;
            monitor.borrow_mut(py).coverage.record_served(&sizes);
            if index == 0 {
                wire = form;
            }
        }
        Ok((wire, kept, width))
    }

    /// Refuses thresholds kept with a prediction that the layers do not expect back.
    fn check_kept(&self, py: Python<'_>, kept: &[f64]) -> PyResult<()> {
        let expected: usize = self
            .layers
            .iter()
            .map(|l| l.borrow(py).layer.served_len())
            .sum();
        if kept.len() != expected {
            return Err(PyValueError::new_err(format!(
                "conformal: the pending prediction kept {} thresholds, the layers expect \
                 {expected}",
                kept.len()
            )));
        }
        Ok(())
    }

    /// Every layer learns its score of the label (`score(layer, index)`, index 0 the
    /// adapted output) on the thresholds it served, and its monitor records the cover.
    fn learn_layers(&self, py: Python<'_>, kept: &[f64], score: impl Fn(&Layer, usize) -> f64) {
        let mut start = 0;
        let mut flags = Vec::new();
        for (index, (layer, monitor)) in self.layers.iter().zip(&self.monitors).enumerate() {
            let mut layer = layer.borrow_mut(py);
            let layer = &mut layer.layer;
            let width = layer.served_len();
            let thresholds = &kept[start..start + width];
            start += width;
            let s = score(layer, index);
            flags.clear();
            flags.extend(
                thresholds[..layer.alphas.len()]
                    .iter()
                    .map(|&q| if s > q { 0 } else { 1 }),
            );
            monitor.borrow_mut(py).coverage.record_label(&flags);
            layer.learn_scored(s, thresholds);
        }
    }

    /// `learn` of a classification stream's label `y` (rows as `serve_probabilities`).
    pub(crate) fn learn_probabilities<R: AsRef<[f64]>>(
        &self,
        py: Python<'_>,
        kept: &[f64],
        rows: &[R],
        y: usize,
    ) -> PyResult<()> {
        self.check_kept(py, kept)?;
        if rows.iter().any(|r| y >= r.as_ref().len()) {
            return Err(PyValueError::new_err(
                "label: class outside the probabilities",
            ));
        }
        for (estimate, row) in self.estimates.iter().zip(rows) {
            estimate
                .borrow_mut(py)
                .estimate
                .realised
                .push(realised_scores(row.as_ref(), y));
        }
        self.learn_layers(py, kept, |layer, index| {
            layer.kind.of_class(rows[index].as_ref(), y)
        });
        Ok(())
    }

    fn learn_rows(
        &self,
        py: Python<'_>,
        kept: Vec<f64>,
        rows: &Bound<'_, PyList>,
        label: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.check_kept(py, &kept)?;
        if self.classification {
            let rows: Vec<Vec<f64>> = rows.extract()?;
            let y: usize = label.extract()?;
            return self.learn_probabilities(py, &kept, &rows, y);
        }
        let values: Vec<f64> = rows.extract()?;
        let y: f64 = label.extract()?;
        self.learn_layers(py, &kept, |_, index| (y - values[index]).abs());
        Ok(())
    }
}

/// The nonconformity of label `y` for prediction `x` (probabilities or one value).
#[pyfunction]
fn nonconformity(kind: &str, x: &Bound<'_, PyAny>, y: &Bound<'_, PyAny>) -> PyResult<f64> {
    match ScoreKind::parse(kind)? {
        ScoreKind::Absolute => Ok((y.extract::<f64>()? - x.extract::<f64>()?).abs()),
        other => {
            let p = crate::scores::float_vector(x)?;
            let label: usize = y.extract()?;
            if label >= p.len() {
                return Err(PyValueError::new_err("y: class outside the probabilities"));
            }
            Ok(other.of_class(&p, label))
        }
    }
}

/// The classes whose score is at most `q`, in class order.
#[pyfunction]
fn class_set(kind: &str, p: &Bound<'_, PyAny>, q: f64) -> PyResult<Vec<usize>> {
    Ok(class_set_of(
        ScoreKind::parse(kind)?,
        &crate::scores::float_vector(p)?,
        q,
    ))
}

/// The conformal quantile of ascending scores (see `quantile`).
#[pyfunction]
fn empirical_quantile(ordered: Vec<f64>, level: f64) -> f64 {
    quantile(&ordered, level)
}

/// The largest miscoverage level whose quantile still covers `value`.
#[pyfunction]
fn covered_level(ordered: Vec<f64>, value: f64) -> f64 {
    covered(&ordered, value)
}

/// Expected accuracy, Brier and log-loss of `p` if its label were drawn from `p`.
#[pyfunction(name = "expected_scores")]
fn py_expected_scores(p: &Bound<'_, PyAny>) -> PyResult<(f64, f64, f64)> {
    let p = crate::scores::float_vector(p)?;
    if p.is_empty() {
        return Err(PyValueError::new_err("p: no probabilities"));
    }
    Ok(expected_scores(&p))
}

/// Accuracy (first top class is `y`), Brier and log-loss of `p` on label `y`.
#[pyfunction(name = "realised_scores")]
fn py_realised_scores(p: &Bound<'_, PyAny>, y: usize) -> PyResult<(f64, f64, f64)> {
    let p = crate::scores::float_vector(p)?;
    if y >= p.len() {
        return Err(PyValueError::new_err("y: class outside the probabilities"));
    }
    Ok(realised_scores(&p, y))
}

/// Adds the conformal classes and functions to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<ConformalCore>()?;
    module.add_class::<ScoreWindowCore>()?;
    module.add_class::<CoverageCore>()?;
    module.add_class::<EstimateCore>()?;
    module.add_class::<UncertaintyCore>()?;
    module.add_function(wrap_pyfunction!(nonconformity, module)?)?;
    module.add_function(wrap_pyfunction!(class_set, module)?)?;
    module.add_function(wrap_pyfunction!(empirical_quantile, module)?)?;
    module.add_function(wrap_pyfunction!(covered_level, module)?)?;
    module.add_function(wrap_pyfunction!(py_expected_scores, module)?)?;
    module.add_function(wrap_pyfunction!(py_realised_scores, module)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `quantile` as first written, with libm's `ceil`: the integer rounding must agree.
    fn quantile_by_ceil(ordered: &[f64], level: f64) -> f64 {
        let n = ordered.len();
        let rank = (level * (n as f64 + 1.0)).ceil();
        if rank.is_nan() || rank > n as f64 {
            f64::INFINITY
        } else if rank < 1.0 {
            f64::NEG_INFINITY
        } else {
            ordered[rank as usize - 1]
        }
    }

    #[test]
    fn quantile_rounds_the_rank_up_as_ceil_does() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            0.05,
            0.1,
            0.9,
            0.95,
            1.0 - f64::EPSILON,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            2.0,
        ];
        for n in [0usize, 1, 2, 3, 9, 10, 99, 1000] {
            let ordered: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let mut levels: Vec<f64> = specials.to_vec();
            // exact multiples of 1 / (n + 1), and their neighbours
            for k in 0..=n + 1 {
                let level = k as f64 / (n as f64 + 1.0);
                levels.extend([level, level.next_up_compat(), level.next_down_compat()]);
            }
            levels.extend((0..2000).map(|_| uniform() * 1.2 - 0.1));
            for level in levels {
                let (got, want) = (quantile(&ordered, level), quantile_by_ceil(&ordered, level));
                assert_eq!(got.to_bits(), want.to_bits(), "n {n}, level {level:e}");
            }
        }
    }

    #[test]
    fn one_search_pushes_as_two_do() {
        // Scores with many ties (a few distinct values) and without, windows full and not.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |distinct: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % distinct) as f64 / distinct as f64
        };
        for (size, distinct) in [(1, 3), (5, 2), (50, 4), (200, 1_000_000), (64, 1)] {
            let mut plain = Window::new(size);
            let mut shared = Window::new(size);
            for _ in 0..5_000 {
                let value = next(distinct);
                plain.push(value);
                let below = shared.ordered.partition_point(|&v| v < value);
                let end = not_above(&shared.ordered, value, below);
                assert_eq!(
                    covered_by(&shared.ordered, below),
                    covered(&shared.ordered, value)
                );
                shared.push_before(value, end);
                assert_eq!(plain.ordered, shared.ordered);
                assert_eq!(plain.ring, shared.ring);
            }
        }
    }

    /// `f64::next_up` / `next_down` (stable only from Rust 1.86; the crate builds on 1.63).
    trait NextCompat {
        fn next_up_compat(self) -> f64;
        fn next_down_compat(self) -> f64;
    }

    impl NextCompat for f64 {
        fn next_up_compat(self) -> f64 {
            if self.is_nan() || self == f64::INFINITY {
                return self;
            }
            if self == 0.0 {
                return f64::from_bits(1);
            }
            let bits = self.to_bits();
            f64::from_bits(if self > 0.0 { bits + 1 } else { bits - 1 })
        }

        fn next_down_compat(self) -> f64 {
            -(-self).next_up_compat()
        }
    }
}
