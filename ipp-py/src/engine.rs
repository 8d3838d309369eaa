//! `ipp_rs._ipp_rs.Engine`: an ipyparallel-compatible engine whose requests run as Python
//! code on the thread that calls `serve` (see `python/ipp_rs/engine/` for the kernel that
//! runs them and the command line).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ipp_core::engine::{Engine, Outcome, RunningEngine};
use ipp_core::protocol::{EngineConnectionInfo, JsonMap, RemoteError};
use ipp_core::transport::Transport;
use ipp_transport_zmq::ZmqTransport;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyTuple};
use serde_json::json;
use tokio::sync::mpsc::error::TrySendError;

use crate::executor::{Event, Interrupts, Job, PythonExecutor};
use crate::runtime::runtime;
use crate::sink::OutputSink;

/// Jobs queued for the Python thread at most (one request plus clears).
const JOB_QUEUE: usize = 64;

/// Result `bytes` from this size on are sent without a copy (smaller ones are copied: that
/// is cheaper than keeping the Python object alive until the frame is sent).
const ZERO_COPY_MIN: usize = 64 * 1024;

/// How long the Python thread waits for a job before it checks for signals and for the
/// engine having stopped.
const POLL: Duration = Duration::from_millis(100);

/// An engine that runs its requests as Python code.
///
/// `Engine(connection_info, requested_id=None)` takes the engine connection file's JSON
/// text; `serve(kernel)` registers, then runs requests on the calling thread until the
/// engine stops (a client's `shutdown_request`, `stop()`, or a lost controller). The
/// kernel is a Python object with `apply(msg_id, buffers, sink)`,
/// `execute(code, silent, sink)` and `clear()` (see `ipp_rs.engine.kernel`).
#[pyclass(module = "ipp_rs._ipp_rs", name = "Engine", frozen)]
#[derive(Debug)]
pub(crate) struct PyEngine {
    info: EngineConnectionInfo,
    requested_id: Option<u32>,
    stop: AtomicBool,
    interrupts: Arc<Interrupts>,
    /// `(id, uuid)` once registered.
    registered: Mutex<Option<(u32, String)>>,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (connection_info, requested_id = None))]
    fn new(connection_info: &str, requested_id: Option<u32>) -> PyResult<Self> {
        let info: EngineConnectionInfo = serde_json::from_str(connection_info).map_err(|err| {
            PyValueError::new_err(format!(
                "not an engine connection file's JSON (ipcontroller-engine.json): {err}"
            ))
        })?;
        Ok(Self {
            info,
            requested_id,
            stop: AtomicBool::new(false),
            interrupts: Arc::default(),
            registered: Mutex::new(None),
        })
    }

    /// The engine id the controller assigned, once registered.
    #[getter]
    fn id(&self) -> Option<u32> {
        self.lock_registered().as_ref().map(|(id, _)| *id)
    }

    /// The engine uuid, once registered.
    #[getter]
    fn uuid(&self) -> Option<String> {
        self.lock_registered()
            .as_ref()
            .map(|(_, uuid)| uuid.clone())
    }

    /// Asks `serve` to stop the engine (unregistering it) after the current request.
    /// Safe to call from a signal handler or another thread.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a request is running Python code now.
    #[getter]
    fn busy(&self) -> bool {
        self.interrupts.is_busy()
    }

    /// Registers with the controller and serves requests on this thread until the engine
    /// stops. Waits with the GIL released; Python signal handlers run every 100 ms.
    ///
    /// Raises `RuntimeError` when registration fails or the controller is lost for good,
    /// and re-raises an exception from a signal handler (e.g. `KeyboardInterrupt` from
    /// Ctrl-C) after stopping the engine.
    fn serve(&self, py: Python<'_>, kernel: Py<PyAny>) -> PyResult<()> {
        let on_main_thread = py
            .import("threading")?
            .call_method0("current_thread")?
            .is(py.import("threading")?.call_method0("main_thread")?);
        if on_main_thread {
            self.interrupts.set_python_thread_to_current();
        }
        let result = self.serve_inner(py, kernel.bind(py));
        self.interrupts.clear_python_thread();
        result
    }
}

impl PyEngine {
    fn lock_registered(&self) -> std::sync::MutexGuard<'_, Option<(u32, String)>> {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn serve_inner(&self, py: Python<'_>, kernel: &Bound<'_, PyAny>) -> PyResult<()> {
        let rt = runtime()?;
        let (jobs_tx, jobs_rx) = sync_channel(JOB_QUEUE);
        let executor = PythonExecutor::new(jobs_tx, Arc::clone(&self.interrupts));
        let transport: Arc<dyn Transport> = Arc::new(ZmqTransport::new());
        let builder = Engine::builder(self.info.clone())
            .with_transport(transport)
            .with_executor(Arc::new(executor))
            .with_requested_id(self.requested_id);
        let engine = py
            .detach(|| rt.block_on(builder.start()))
            .map_err(|err| PyRuntimeError::new_err(format!("engine registration failed: {err}")))?;
        *self.lock_registered() = Some((engine.id(), engine.uuid().to_owned()));
        tracing::info!(engine.id = engine.id(), engine.uuid = %engine.uuid(), "engine running");

        let jobs = Mutex::new(jobs_rx);
        let outcome = self.serve_jobs(py, kernel, &jobs, &engine);
        drop(jobs);
        // Stop the engine (unless it stopped by itself) and learn why it stopped.
        let stopped = py.detach(|| {
            rt.block_on(async {
                if engine.is_stopped() {
                    engine.wait().await
                } else {
                    engine.shutdown().await;
                    Ok(())
                }
            })
        });
        outcome?;
        stopped.map_err(|err| PyRuntimeError::new_err(format!("engine stopped: {err}")))
    }

    /// Runs jobs until the engine stops or `stop()` is called.
    fn serve_jobs(
        &self,
        py: Python<'_>,
        kernel: &Bound<'_, PyAny>,
        jobs: &Mutex<Receiver<Job>>,
        engine: &RunningEngine,
    ) -> PyResult<()> {
        loop {
            if self.stop.load(Ordering::SeqCst) || engine.is_stopped() {
                return Ok(());
            }
            let next = py.detach(|| {
                jobs.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv_timeout(POLL)
            });
            match next {
                Ok(job) => self.run_job(py, kernel, job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if let Err(err) = py.check_signals() {
                // A signal_request's SIGINT that arrived just after its request finished.
                if err.is_instance_of::<PyKeyboardInterrupt>(py)
                    && self.interrupts.recently_signalled()
                {
                    tracing::debug!("ignored a late interrupt: no request is running");
                    continue;
                }
                return Err(err);
            }
        }
    }

    fn run_job(&self, py: Python<'_>, kernel: &Bound<'_, PyAny>, job: Job) {
        let (events, outcome) = match job {
            Job::Clear => {
                if let Err(err) = kernel.call_method0(intern!(py, "clear")) {
                    tracing::error!(error = %err, "the kernel failed to clear its namespace");
                }
                return;
            }
            Job::Apply {
                msg_id,
                buffers,
                events,
            } => {
                let outcome = self.call_kernel(py, &events, |sink| {
                    let buffers = PyList::new(py, buffers.iter().map(|b| PyBytes::new(py, b)))?;
                    kernel.call_method1(intern!(py, "apply"), (msg_id, buffers, sink))
                });
                (events, outcome.and_then(|reply| apply_outcome(&reply)))
            }
            Job::Execute {
                code,
                silent,
                events,
            } => {
                let outcome = self.call_kernel(py, &events, |sink| {
                    kernel.call_method1(intern!(py, "execute"), (code, silent, sink))
                });
                (events, outcome.and_then(|reply| execute_outcome(&reply)))
            }
        };
        let outcome = outcome.unwrap_or_else(|err| python_error(py, &err));
        let dropped = match events.try_send(Event::Done(outcome)) {
            Ok(()) => false,
            // The publisher task is behind on output: wait for room, never with the GIL.
            Err(TrySendError::Full(done)) => py.detach(|| events.blocking_send(done).is_err()),
            Err(TrySendError::Closed(_)) => true,
        };
        if dropped {
            tracing::debug!("reply dropped: the engine stopped while the request ran");
        }
    }

    /// Calls the kernel with a fresh sink, marking the executor busy meanwhile (so
    /// `signal_request` knows there is something to interrupt).
    fn call_kernel<'py>(
        &self,
        py: Python<'py>,
        events: &tokio::sync::mpsc::Sender<Event>,
        call: impl FnOnce(Bound<'py, OutputSink>) -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sink = Bound::new(py, OutputSink::new(events.clone()))?;
        self.interrupts.set_busy(true);
        let reply = call(sink);
        self.interrupts.set_busy(false);
        reply
    }
}

/// An exception from the kernel itself (not from user code, which the kernel reports).
fn python_error(py: Python<'_>, err: &PyErr) -> Outcome {
    let ename = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    Outcome::error(ename, err.value(py).to_string())
}

/// The kernel's `("error", ename, evalue, traceback)` or `("unmet",)`, if `reply` is one.
fn failure(reply: &Bound<'_, PyTuple>) -> PyResult<Option<Outcome>> {
    let status: String = reply.get_item(0)?.extract()?;
    match status.as_str() {
        "ok" => Ok(None),
        "unmet" => Ok(Some(Outcome::UnmetDependency)),
        "error" => Ok(Some(Outcome::Error(RemoteError {
            ename: reply.get_item(1)?.extract()?,
            evalue: reply.get_item(2)?.extract()?,
            traceback: reply.get_item(3)?.extract()?,
            engine_info: JsonMap::new(),
        }))),
        other => Err(PyValueError::new_err(format!(
            "the kernel answered with an unknown status {other:?}"
        ))),
    }
}

/// `("ok", [buffer, ...])` → the reply buffers (each copied once).
fn apply_outcome(reply: &Bound<'_, PyAny>) -> PyResult<Outcome> {
    let reply = reply.cast::<PyTuple>()?;
    if let Some(outcome) = failure(reply)? {
        return Ok(outcome);
    }
    let items = reply.get_item(1)?;
    let mut buffers = Vec::new();
    for item in items.try_iter()? {
        buffers.push(buffer_bytes(&item?)?);
    }
    Ok(Outcome::Ok {
        content: JsonMap::new(),
        buffers,
    })
}

/// The bytes of `item`: `bytes`, or any object with the buffer protocol (`memoryview`,
/// `bytearray`, a numpy array, ...) read as `bytes(item)` reads it (C order). Small ones
/// are copied into the frame; from [`ZERO_COPY_MIN`] bytes on, the frame keeps a `bytes`
/// object alive instead: `item` itself, or the one copy `bytes(item)` makes.
fn buffer_bytes(item: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    let bytes = match item.cast::<PyBytes>() {
        Ok(bytes) => bytes.clone(),
        Err(_) => item
            .py()
            .get_type::<PyBytes>()
            .call1((item,))?
            .cast_into::<PyBytes>()?,
    };
    if bytes.as_bytes().len() < ZERO_COPY_MIN {
        return Ok(Bytes::copy_from_slice(bytes.as_bytes()));
    }
    Ok(Bytes::from_owner(PyBackedBytes::from(bytes)))
}

/// `("ok", execution_count)` → the reply content's `execution_count`.
fn execute_outcome(reply: &Bound<'_, PyAny>) -> PyResult<Outcome> {
    let reply = reply.cast::<PyTuple>()?;
    if let Some(outcome) = failure(reply)? {
        return Ok(outcome);
    }
    let count: u64 = reply.get_item(1)?.extract()?;
    let mut content = JsonMap::new();
    content.insert("execution_count".into(), json!(count));
    Ok(Outcome::Ok {
        content,
        buffers: Vec::new(),
    })
}
