//! `ipp_rs._ipp_rs`: the native half of the `ipp_rs` Python package.
//!
//! The public package is the Python code in `python/ipp_rs`; this module gives it the parts
//! that run in Rust:
//! - `engine::PyEngine` (`ipp_rs._ipp_rs.Engine`): the `ipp-core` engine runtime over
//!   ZeroMQ with a `executor::PythonExecutor`, which hands each request to Python code
//!   running on the thread that called `Engine.serve` (the main thread of
//!   `python -m ipp_rs.engine`). Networking, heartbeats and control stay on the shared
//!   tokio runtime's threads; the GIL is held only while Python code runs.
//! - `init_logging`: a `tracing` subscriber on stderr, filtered by `$IPP_RS_LOG`.

mod client;
mod controller;
mod engine;
mod executor;
mod runtime;
mod sink;

use pyo3::prelude::*;

/// The allocator of the module's Rust code (Python's objects keep Python's allocator):
/// mimalloc, built without transparent huge pages, as in the reference binaries.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Installs a `tracing` subscriber writing to stderr: `$IPP_RS_LOG` (an `EnvFilter`
/// directive such as `ipp_core=debug`) if set, else `level` (`debug`, `info`, `warn`,
/// `error`). Later calls change nothing.
#[pyfunction]
#[pyo3(signature = (level = "info"))]
fn init_logging(level: &str) {
    runtime::init_logging(level);
}

/// The native module `ipp_rs._ipp_rs`.
#[pymodule]
fn _ipp_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    m.add_class::<client::NativeClient>()?;
    m.add_class::<client::Reply>()?;
    m.add_class::<client::PyCompletions>()?;
    m.add_class::<controller::PyController>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<sink::OutputSink>()?;
    Ok(())
}
