//! `streamweights._native`: the per-record core of streamweights, compiled.
//!
//! Each algorithm lives in its own module and registers its Python classes and functions
//! here. Python's adapter classes are thin handles over these (design.md, "The native
//! core"): validation happens once at the Python edge, the arithmetic and the state live
//! here. Summation is left to right in the order the Python reference states it
//! (`tests/reference/`), so results are reproducible bit for bit on every platform.

use pyo3::prelude::*;

/// mimalloc for the core's own allocations (many small vectors per record; Python's
/// objects keep Python's allocator). About 8% of a default-config record (Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adwin;
mod arrays;
mod beta;
mod calibeating;
mod chain;
mod conformal;
mod drift_evidence;
mod drift_memory;
mod entry_text;
mod event_time;
mod expert_losses;
mod exposition;
mod feature_correction;
mod fixed_share;
mod float_text;
mod hedge;
mod join;
mod json_tree;
mod kafka_batch;
mod kafka_merge;
mod kafka_records;
mod kalman;
mod label_step;
mod lane;
mod newton;
mod packed_slots;
mod page_hinkley;
mod pending;
mod platt;
mod portfolio;
mod prior_shift;
mod probability_input;
mod record_check;
mod scores;
mod stacking;
mod state_marks;
mod stream_counters;
mod temperature;
mod tree_alike;
mod wide;

/// The core's version, to check that the compiled module matches the Python package.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(core_version, module)?)?;
    arrays::register(module)?;
    scores::register(module)?;
    conformal::register(module)?;
    adwin::register(module)?;
    page_hinkley::register(module)?;
    newton::register(module)?;
    platt::register(module)?;
    beta::register(module)?;
    temperature::register(module)?;
    calibeating::register(module)?;
    kalman::register(module)?;
    prior_shift::register(module)?;
    feature_correction::register(module)?;
    hedge::register(module)?;
    fixed_share::register(module)?;
    stacking::register(module)?;
    drift_evidence::register(module)?;
    label_step::register(module)?;
    drift_memory::register(module)?;
    portfolio::register(module)?;
    chain::register(module)?;
    record_check::register(module)?;
    kafka_records::register(module)?;
    kafka_batch::register(module)?;
    kafka_merge::register(module)?;
    state_marks::register(module)?;
    packed_slots::register(module)?;
    event_time::register(module)?;
    lane::register(module)?;
    pending::register(module)?;
    join::register(module)?;
    entry_text::register(module)?;
    json_tree::register(module)?;
    stream_counters::register(module)?;
    tree_alike::register(module)?;
    exposition::register(module)?;
    Ok(())
}
