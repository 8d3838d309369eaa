//! `ipp_rs._ipp_rs.Engine`: an ipyparallel-compatible engine whose requests run as Python
//! code on the thread that calls `serve` (see `python/ipp_rs/engine/` for the kernel that
//! runs them and the command line).
//!
//! # Threads
//!
//! The engine's Rust side (sockets, heartbeats, control, the request tasks) runs on a
//! runtime of its own, tokio's current-thread flavour, driven by the Python thread itself
//! whenever it waits for a request: a request is received, run and answered on that one
//! thread, with no hand-off between threads (each hand-off is a wake-up and a context
//! switch, which cost more than the rest of a no-op request). While a request runs Python
//! code for longer than [`TAKEOVER`], a second thread ([`Backup`]) drives the runtime until
//! the request ends, so heartbeats, control messages (abort, signal) and the request's
//! output keep flowing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
use tokio::sync::mpsc;

use crate::executor::{Event, Interrupts, Job, PythonExecutor};
use crate::runtime::engine_runtime;
use crate::sink::OutputSink;

/// Jobs queued for the Python thread at most (one request plus clears).
const JOB_QUEUE: usize = 64;

/// Result `bytes` from this size on are sent without a copy (smaller ones are copied: that
/// is cheaper than keeping the Python object alive until the frame is sent).
const ZERO_COPY_MIN: usize = 64 * 1024;

/// How long the Python thread waits for a job before it checks for signals and for the
/// engine having stopped.
const POLL: Duration = Duration::from_millis(100);

/// How long a request may run Python code before the [`Backup`] thread takes over driving
/// the engine's runtime (at most twice this after the request started).
const TAKEOVER: Duration = Duration::from_millis(10);

/// After this long without a request the [`Backup`] thread stops looking every
/// [`TAKEOVER`] and sleeps until the next request begins (an idle engine wakes no thread).
const IDLE: Duration = Duration::from_secs(1);

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
        let rt = engine_runtime()?;
        let (jobs_tx, jobs) = mpsc::channel(JOB_QUEUE);
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

        let backup = Backup::new();
        let mut serving = Serving {
            rt: &rt,
            jobs,
            finished: None,
            backup: &backup,
        };
        let outcome = std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("ipp-rs-engine".into())
                .spawn_scoped(scope, || backup.run(&rt))
                .map_err(|err| {
                    PyRuntimeError::new_err(format!("cannot start the engine's thread: {err}"))
                })?;
            let outcome = self.serve_jobs(py, kernel, &mut serving, &engine);
            backup.finish();
            py.detach(|| thread.join())
                .map_err(|_| PyRuntimeError::new_err("the engine's thread panicked"))?;
            outcome
        });
        let Serving { jobs, finished, .. } = serving;
        drop(jobs);
        // Stop the engine (unless it stopped by itself) and learn why it stopped.
        let stopped = py.detach(|| {
            let stopped = rt.block_on(async {
                deliver(finished).await;
                if engine.is_stopped() {
                    engine.wait().await
                } else {
                    engine.shutdown().await;
                    Ok(())
                }
            });
            drop(rt);
            stopped
        });
        outcome?;
        stopped.map_err(|err| PyRuntimeError::new_err(format!("engine stopped: {err}")))
    }

    /// Runs jobs until the engine stops or `stop()` is called, driving the engine's runtime
    /// while it waits for the next one.
    fn serve_jobs(
        &self,
        py: Python<'_>,
        kernel: &Bound<'_, PyAny>,
        serving: &mut Serving<'_>,
        engine: &RunningEngine,
    ) -> PyResult<()> {
        let Serving {
            rt,
            jobs,
            finished,
            backup,
        } = serving;
        loop {
            if self.stop.load(Ordering::SeqCst) || engine.is_stopped() {
                return Ok(());
            }
            let next = py.detach(|| {
                rt.block_on(async {
                    deliver(finished.take()).await;
                    // Made in here: the timer registers with the runtime's clock.
                    tokio::time::timeout(POLL, jobs.recv()).await
                })
            });
            match next {
                Ok(Some(job)) => {
                    backup.begin();
                    *finished = self.run_job(py, kernel, job);
                    backup.end();
                }
                Ok(None) => return Ok(()),
                Err(_elapsed) => {}
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

    /// Runs one job; what to tell its request task (delivered by [`deliver`]).
    fn run_job(&self, py: Python<'_>, kernel: &Bound<'_, PyAny>, job: Job) -> Option<Finished> {
        let (events, outcome) = match job {
            Job::Clear => {
                if let Err(err) = kernel.call_method0(intern!(py, "clear")) {
                    tracing::error!(error = %err, "the kernel failed to clear its namespace");
                }
                return None;
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
        Some((events, outcome))
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

/// A job's outcome, for its request task.
type Finished = (mpsc::Sender<Event>, Outcome);

/// What the Python thread serves requests with.
struct Serving<'a> {
    /// The engine's runtime, which this thread drives while it waits for a job.
    rt: &'a tokio::runtime::Runtime,
    jobs: mpsc::Receiver<Job>,
    /// The last job's outcome, until it is handed to its request task.
    finished: Option<Finished>,
    backup: &'a Backup,
}

/// Hands a finished job's outcome to its request task. Called inside the runtime, on the
/// Python thread's next wait: waking the task from outside the runtime would cost a write
/// to the runtime's eventfd and another turn of its poll loop.
async fn deliver(finished: Option<Finished>) {
    if let Some((events, outcome)) = finished {
        if events.send(Event::Done(Box::new(outcome))).await.is_err() {
            tracing::debug!("reply dropped: the engine stopped while the request ran");
        }
    }
}

/// The thread that drives the engine's runtime while the Python thread runs a request for
/// longer than [`TAKEOVER`] (see the module guide). While requests come, it looks every
/// [`TAKEOVER`] (signalling it at each request would cost a wake-up per request); after
/// [`IDLE`] without one it sleeps until the next request begins (which then wakes it).
#[derive(Debug)]
struct Backup {
    /// When the running request started (nanoseconds after `epoch`, at least 1); 0 when
    /// none runs.
    started: AtomicU64,
    /// When the last request started (as `started`).
    last_started: AtomicU64,
    /// Notified when a request ends and when serving ends.
    changed: tokio::sync::Notify,
    finished: AtomicBool,
    /// The thread sleeps until a request begins (`idle` is locked meanwhile but in its wait).
    asleep: AtomicBool,
    idle: Mutex<()>,
    wake: Condvar,
    epoch: Instant,
}

impl Backup {
    fn new() -> Self {
        Self {
            started: AtomicU64::new(0),
            last_started: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            finished: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            idle: Mutex::new(()),
            wake: Condvar::new(),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The Python thread starts a request (it no longer drives the runtime).
    fn begin(&self) {
        let now = self.now().max(1);
        self.started.store(now, Ordering::SeqCst);
        self.last_started.store(now, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            self.wake_up();
        }
    }

    /// The request has ended: stop driving the runtime for it.
    fn end(&self) {
        self.started.store(0, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Serving ends: the thread returns.
    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        self.wake_up();
    }

    fn wake_up(&self) {
        let _idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_one();
    }

    fn run(&self, rt: &tokio::runtime::Runtime) {
        let takeover = u64::try_from(TAKEOVER.as_nanos()).unwrap_or(u64::MAX);
        let idle = u64::try_from(IDLE.as_nanos()).unwrap_or(u64::MAX);
        while !self.finished.load(Ordering::SeqCst) {
            if self
                .now()
                .saturating_sub(self.last_started.load(Ordering::SeqCst))
                > idle
            {
                self.sleep_until_a_request();
            } else {
                std::thread::sleep(TAKEOVER);
            }
            let started = self.started.load(Ordering::SeqCst);
            if started == 0 || self.now().saturating_sub(started) < takeover {
                continue;
            }
            tracing::trace!("driving the engine while a request runs Python code");
            rt.block_on(async {
                loop {
                    // Created before the check, so an end() in between is not missed.
                    let changed = self.changed.notified();
                    if self.finished.load(Ordering::SeqCst)
                        || self.started.load(Ordering::SeqCst) != started
                    {
                        return;
                    }
                    changed.await;
                }
            });
        }
    }

    /// Waits until a request begins or serving ends (or [`IDLE`] passes: a safety net).
    fn sleep_until_a_request(&self) {
        let guard = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.asleep.store(true, Ordering::SeqCst);
        // Checked after `asleep` is set (and under the lock `begin` takes to wake us), so a
        // request that began meanwhile is seen here or wakes the wait below.
        if self.started.load(Ordering::SeqCst) == 0 && !self.finished.load(Ordering::SeqCst) {
            let (guard, _) = self
                .wake
                .wait_timeout(guard, IDLE)
                .unwrap_or_else(PoisonError::into_inner);
            drop(guard);
        }
        self.asleep.store(false, Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A runtime with a task that counts milliseconds while someone drives the runtime.
    fn counting_runtime() -> (tokio::runtime::Runtime, Arc<AtomicUsize>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ticks);
        rt.spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            loop {
                interval.tick().await;
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        (rt, ticks)
    }

    /// Ends the backup thread even when an assertion fails (the scope joins it).
    struct Finish<'a>(&'a Backup);

    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.0.finish();
        }
    }

    #[test]
    fn backup_drives_the_runtime_during_a_long_job_and_gives_it_back() {
        let (rt, ticks) = counting_runtime();
        let backup = Backup::new();
        std::thread::scope(|scope| {
            let _finish = Finish(&backup);
            scope.spawn(|| backup.run(&rt));
            // The "Python thread" drives the runtime while it waits for a job...
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(5)).await });
            // ...then runs a long job, driving nothing: the backup takes over.
            backup.begin();
            let before = ticks.load(Ordering::SeqCst);
            std::thread::sleep(TAKEOVER * 6);
            let during = ticks.load(Ordering::SeqCst) - before;
            backup.end();
            assert!(during > 0, "nobody drove the runtime during the job");
            // The runtime is this thread's again (the backup let go of it).
            let start = Instant::now();
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
            assert!(start.elapsed() < Duration::from_secs(2));
        });
    }

    #[test]
    fn an_idle_backup_sleeps_and_wakes_for_the_next_long_job() {
        let (rt, ticks) = counting_runtime();
        let backup = Backup::new();
        std::thread::scope(|scope| {
            let _finish = Finish(&backup);
            scope.spawn(|| backup.run(&rt));
            // No request for longer than IDLE: the backup sleeps until one begins.
            let deadline = Instant::now() + IDLE * 3;
            while !backup.asleep.load(Ordering::SeqCst) {
                assert!(
                    Instant::now() < deadline,
                    "the idle backup never went to sleep"
                );
                std::thread::sleep(TAKEOVER);
            }
            backup.begin();
            let before = ticks.load(Ordering::SeqCst);
            std::thread::sleep(TAKEOVER * 6);
            let during = ticks.load(Ordering::SeqCst) - before;
            backup.end();
            assert!(during > 0, "the backup did not wake up for the long job");
        });
    }
}
