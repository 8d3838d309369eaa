//! The Python executor: the `ipp-core` [`Executor`] whose requests run as Python code on
//! one Python thread (the one in `Engine.serve`, which also drives the engine's runtime
//! while it waits for a job; see `engine.rs`).
//!
//! The engine runtime calls [`PythonExecutor::apply`] / [`PythonExecutor::execute`] in a
//! request task. Each call queues a [`Job`] for the Python thread and then publishes, on
//! IOPub, the [`Event`]s the job sends back (stdout/stderr text, `execute_input`,
//! `execute_result`, `display_data`), until the job's [`Event::Done`] carries its
//! [`Outcome`]. Events and the outcome share one channel, so every output is published
//! before the reply is sent.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use ipp_core::engine::{Executor, Outcome, Outputs};
use ipp_core::protocol::{JsonMap, Message};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

/// Events a running job may queue before its publisher catches up.
pub(crate) const EVENT_QUEUE: usize = 256;

/// How long after a `signal_request` a `KeyboardInterrupt` reaching the idle Python thread
/// is taken for that request's late signal (and ignored) rather than a Ctrl-C.
const LATE_SIGNAL: Duration = Duration::from_secs(5);

/// Work for the Python thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// An `apply_request`: its `msg_id` and buffers (ipyparallel's apply layout).
    Apply {
        msg_id: String,
        buffers: Vec<Bytes>,
        events: mpsc::Sender<Event>,
    },
    /// An `execute_request`.
    Execute {
        code: String,
        silent: bool,
        events: mpsc::Sender<Event>,
    },
    /// A `clear_request`: reset the namespace.
    Clear,
}

/// What a job sends back while it runs, in order; [`Event::Done`] comes last. Large
/// payloads are boxed: each request's channel allocates room for 32 events at once.
#[derive(Debug)]
pub(crate) enum Event {
    Stream {
        /// `"stdout"` or `"stderr"`.
        name: &'static str,
        text: String,
    },
    ExecuteInput {
        code: String,
        execution_count: u64,
    },
    ExecuteResult(Box<Display>),
    DisplayData(Box<Display>),
    Done(Box<Outcome>),
}

/// The payload of `execute_result` (with its `execution_count`) and `display_data`.
#[derive(Debug)]
pub(crate) struct Display {
    pub(crate) data: JsonMap,
    pub(crate) metadata: JsonMap,
    pub(crate) execution_count: u64,
}

/// A thread handle that may be signalled from another thread.
#[derive(Clone, Copy, Debug)]
struct ThreadHandle(libc::pthread_t);

// SAFETY: a `pthread_t` is an opaque id (a pointer on some platforms); we only pass it to
// `pthread_kill`, which any thread may call with any thread's id.
unsafe impl Send for ThreadHandle {}
// SAFETY: as above; the id is never dereferenced.
unsafe impl Sync for ThreadHandle {}

/// What the executor (tokio threads) and the Python thread share to deliver interrupts.
#[derive(Debug, Default)]
pub(crate) struct Interrupts {
    /// A job is running Python code now.
    busy: AtomicBool,
    /// The Python thread, when it is the interpreter's main thread (only that thread runs
    /// Python's signal handlers).
    python_thread: Mutex<Option<ThreadHandle>>,
    /// When the last signal was delivered.
    last_signal: Mutex<Option<Instant>>,
}

impl Interrupts {
    /// Records the calling thread as the one to interrupt (call it on the main thread).
    pub(crate) fn set_python_thread_to_current(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = ThreadHandle(unsafe { libc::pthread_self() });
        *self
            .python_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(me);
    }

    /// Forgets the Python thread (when `serve` returns).
    pub(crate) fn clear_python_thread(&self) {
        *self
            .python_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    pub(crate) fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::SeqCst);
    }

    /// Whether a signal was delivered recently (see [`LATE_SIGNAL`]).
    pub(crate) fn recently_signalled(&self) -> bool {
        self.last_signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < LATE_SIGNAL)
    }

    /// Interrupts the running Python code with SIGINT (a `KeyboardInterrupt`, raised even
    /// inside `time.sleep` and other calls that return on `EINTR`).
    fn interrupt(&self, signal: i32) -> ipp_core::Result<()> {
        if signal != libc::SIGINT {
            return Err(ipp_core::Error::Unsupported {
                operation: "signals other than SIGINT (2)",
                implementer: "the ipp_rs Python engine",
            });
        }
        if !self.busy.load(Ordering::SeqCst) {
            tracing::debug!(signal, "signal ignored: no request is running");
            return Ok(());
        }
        let thread = *self
            .python_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(thread) = thread else {
            return Err(ipp_core::Error::Unsupported {
                operation: "interrupting Python code that does not run on the main thread",
                implementer: "the ipp_rs Python engine",
            });
        };
        *self
            .last_signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        // SAFETY: `thread` is the live main thread (recorded by `serve`, which runs until
        // the engine stops); Python's own SIGINT handler turns the signal into a
        // KeyboardInterrupt on that thread.
        let rc = unsafe { libc::pthread_kill(thread.0, signal) };
        if rc != 0 {
            tracing::warn!(signal, errno = rc, "pthread_kill failed");
        } else {
            tracing::info!(signal, "interrupted the running request");
        }
        Ok(())
    }
}

/// Runs requests as Python code on the Python thread (see the module guide).
pub(crate) struct PythonExecutor {
    jobs: mpsc::Sender<Job>,
    interrupts: Arc<Interrupts>,
}

impl fmt::Debug for PythonExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PythonExecutor").finish_non_exhaustive()
    }
}

impl PythonExecutor {
    pub(crate) fn new(jobs: mpsc::Sender<Job>, interrupts: Arc<Interrupts>) -> Self {
        Self { jobs, interrupts }
    }

    /// Hands `job` to the Python thread and publishes what it sends back.
    async fn run(&self, job: Job, events: mpsc::Receiver<Event>, outputs: &Outputs) -> Outcome {
        match self.jobs.try_send(job) {
            Ok(()) => forward(events, outputs).await,
            // The engine runs one request at a time, so the queue only fills if the Python
            // thread is stuck; say so instead of blocking a runtime thread.
            Err(TrySendError::Full(_)) => Outcome::error(
                "RuntimeError",
                "the Python thread of this engine is not taking requests",
            ),
            Err(TrySendError::Closed(_)) => Outcome::error(
                "RuntimeError",
                "the Python thread of this engine has stopped",
            ),
        }
    }
}

/// Publishes a job's events until its outcome arrives. Consecutive stream text of one
/// stream already queued is sent as one message.
async fn forward(mut events: mpsc::Receiver<Event>, outputs: &Outputs) -> Outcome {
    let mut next = events.recv().await;
    loop {
        let Some(event) = next.take() else {
            return Outcome::error(
                "RuntimeError",
                "the Python thread of this engine stopped while running the request",
            );
        };
        let published = match event {
            Event::Done(outcome) => return *outcome,
            Event::Stream { name, mut text } => {
                while let Ok(more) = events.try_recv() {
                    match more {
                        Event::Stream {
                            name: other,
                            text: ref extra,
                        } if other == name => text.push_str(extra),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                outputs.stream(name, &text).await
            }
            Event::ExecuteInput {
                code,
                execution_count,
            } => outputs.execute_input(&code, execution_count).await,
            Event::ExecuteResult(display) => {
                let Display {
                    data,
                    metadata,
                    execution_count,
                } = *display;
                outputs
                    .execute_result(data, metadata, execution_count)
                    .await
            }
            Event::DisplayData(display) => {
                outputs.display_data(display.data, display.metadata).await
            }
        };
        if let Err(err) = published {
            tracing::debug!(error = %err, "output not published: the engine is stopping");
        }
        if next.is_none() {
            next = events.recv().await;
        }
    }
}

#[async_trait]
impl Executor for PythonExecutor {
    async fn apply(&self, request: &Message, outputs: &Outputs) -> Outcome {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let job = Job::Apply {
            msg_id: request.header.msg_id.clone(),
            buffers: request.buffers.clone(),
            events: tx,
        };
        self.run(job, rx, outputs).await
    }

    async fn execute(&self, request: &Message, outputs: &Outputs) -> Outcome {
        let content = request.content_map();
        let Some(code) = content.get("code").and_then(Value::as_str) else {
            return Outcome::error("ValueError", "execute_request content has no 'code' string");
        };
        // ipykernel's default is silent=false; ipyparallel's DirectView sends true.
        let silent = content
            .get("silent")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let job = Job::Execute {
            code: code.to_owned(),
            silent,
            events: tx,
        };
        self.run(job, rx, outputs).await
    }

    fn clear(&self) {
        // Runs after the current request, before the next (the engine starts one request
        // at a time, and control messages are handled in between).
        if let Err(err) = self.jobs.try_send(Job::Clear) {
            tracing::warn!(error = %err, "clear_request not delivered to the Python thread");
        }
    }

    fn signal(&self, signal: i32) -> ipp_core::Result<()> {
        self.interrupts.interrupt(signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sigint_is_supported() {
        let interrupts = Interrupts::default();
        assert!(matches!(
            interrupts.interrupt(libc::SIGTERM),
            Err(ipp_core::Error::Unsupported { .. })
        ));
    }

    #[test]
    fn sigint_with_nothing_running_is_a_no_op() {
        let interrupts = Interrupts::default();
        assert!(interrupts.interrupt(libc::SIGINT).is_ok());
        assert!(!interrupts.recently_signalled());
    }

    #[test]
    fn sigint_while_busy_off_the_main_thread_is_unsupported() {
        let interrupts = Interrupts::default();
        interrupts.set_busy(true);
        assert!(matches!(
            interrupts.interrupt(libc::SIGINT),
            Err(ipp_core::Error::Unsupported { .. })
        ));
    }

    #[test]
    fn clear_with_a_full_job_queue_is_dropped_not_awaited() {
        let (tx, mut rx) = mpsc::channel(1);
        let executor = PythonExecutor::new(tx, Arc::default());
        executor.clear();
        // The queue holds one job: the second clear returns at once (logged, dropped).
        executor.clear();
        assert!(matches!(rx.try_recv(), Ok(Job::Clear)));
        assert!(rx.try_recv().is_err());
    }
}
