//! `streamweights._native`: the per-record core of streamweights, compiled.
//!
//! Each algorithm lives in its own module and registers its Python classes and functions
//! here. Python's adapter classes are thin handles over these (design.md, "The native
//! core"): validation happens once at the Python edge, the arithmetic and the state live
//! here. Summation is left to right in the order the Python reference states it
//! (`tests/reference/`), so results are reproducible bit for bit on every platform.

use pyo3::prelude::*;

mod expert_losses;
mod fixed_share;
mod hedge;
mod stacking;

/// The core's version, to check that the compiled module matches the Python package.
#[pyfunction]
fn core_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(core_version, module)?)?;
    hedge::register(module)?;
    fixed_share::register(module)?;
    stacking::register(module)?;
    Ok(())
}
