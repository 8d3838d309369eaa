//! The process-wide tokio runtime and logging setup shared by everything in `ipp_rs`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use ipp_core::busy_poll::BusyPoll;

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyResult;

/// The one runtime of the process (STYLE §9): created on first use, never shut down, so
/// tasks spawned by one Python object can outlive it.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Worker threads of the shared runtime unless `$IPP_RS_IO_THREADS` says otherwise.
///
/// One: a client's IO task (and an in-process controller, itself built for one thread as
/// `ipcontroller` runs it) then never hands a message to another worker; with two, the
/// runtime's idle worker kept waking to look for work, which cost the client's IO ~30% more
/// CPU per no-op task (`benchmarks/bench_python_engine.py`, 2 CPUs).
const IO_THREADS: usize = 1;

/// The environment variable that sets the number of worker threads (at least 1).
const IO_THREADS_ENV: &str = "IPP_RS_IO_THREADS";

/// The environment variable that sets how many microseconds the runtimes keep polling
/// their sockets after data arrives before they sleep (`ipp_core::busy_poll`; default
/// [`ipp_core::busy_poll::DEFAULT_WINDOW`], 0: sleep at once).
const BUSY_POLL_ENV: &str = "IPP_RS_BUSY_POLL_US";

/// The busy polling of this process's runtimes, from [`BUSY_POLL_ENV`].
fn busy_poll() -> PyResult<BusyPoll> {
    let window = match std::env::var(BUSY_POLL_ENV) {
        Err(_) => ipp_core::busy_poll::DEFAULT_WINDOW,
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(micros) => Duration::from_micros(micros),
            Err(_) => {
                return Err(PyRuntimeError::new_err(format!(
                    "{BUSY_POLL_ENV} must be a whole number of microseconds (0 turns busy \
                     polling off), not {text:?}"
                )))
            }
        },
    };
    Ok(BusyPoll::new(window))
}

/// The shared runtime, created on first use with [`IO_THREADS`] worker threads
/// (networking only: Python code never runs on them).
pub(crate) fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let threads = match std::env::var(IO_THREADS_ENV) {
        Err(_) => IO_THREADS,
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => {
                return Err(PyRuntimeError::new_err(format!(
                    "{IO_THREADS_ENV} must be a whole number of threads, at least 1, not {text:?}"
                )))
            }
        },
    };
    let built = busy_poll()?
        .build(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("ipp-rs-io"),
        )
        .map_err(|err| PyRuntimeError::new_err(format!("cannot start the tokio runtime: {err}")))?;
    // Two threads may race to build one; the loser's runtime is dropped unused.
    Ok(RUNTIME.get_or_init(|| built))
}

/// A new runtime for one engine, tokio's current-thread flavour: it runs only while a
/// thread drives it (`block_on`), which the engine's Python thread does whenever it waits
/// for a request, so a request is received, run and answered without a thread hand-off
/// (see `engine.rs`). The exception to [`runtime`] being the process's one runtime: the
/// engine's tasks must not wake a worker thread for each request.
pub(crate) fn engine_runtime() -> PyResult<tokio::runtime::Runtime> {
    busy_poll()?
        .build(&mut tokio::runtime::Builder::new_current_thread())
        .map_err(|err| {
            PyRuntimeError::new_err(format!("cannot start the engine's tokio runtime: {err}"))
        })
}

/// Installs the stderr subscriber once (see `init_logging` in lib.rs).
pub(crate) fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IPP_RS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // An error means a subscriber is already installed: keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: engine logs usually go to files.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
