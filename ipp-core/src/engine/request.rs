//! Running one shell request: status busy, the executor, the reply with ipyparallel's
//! metadata, status idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;

use bytes::Bytes;

use super::executor::{
    parent_json, EngineIdentity, Executor, Outcome, Outputs, PendingBusy, Publisher,
};
use crate::protocol::{date, to_json_bytes, JsonMap, Message, RemoteError, Session};
use crate::transport::{Frames, SocketSender};

/// A request waiting for its turn.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) msg: Message,
    /// The shell socket it came in on: the reply goes back the same way.
    pub(crate) reply_to: SocketSender,
    /// A client asked to abort it (answered `status: aborted` without running it).
    pub(crate) aborted: bool,
}

/// A client's request to abort the request that is running now (`abort_request` naming
/// it): the running task interrupts its executor and answers `status: aborted` if the work
/// stops.
#[derive(Debug, Default)]
pub(crate) struct AbortHandle {
    requested: AtomicBool,
    notify: Notify,
}

impl AbortHandle {
    /// Asks the running request to stop; later calls change nothing.
    pub(crate) fn abort(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once [`AbortHandle::abort`] has been called.
    async fn requested(&self) {
        while !self.is_requested() {
            self.notify.notified().await;
        }
    }
}

/// A request that has run: its signed reply, still to be sent.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) reply: Frames,
    pub(crate) reply_to: SocketSender,
    /// The request's header as JSON (see [`parent_json`]).
    pub(crate) parent: Bytes,
    pub(crate) msg_id: String,
    /// Its `status: busy`, if not published yet: sent with `status: idle`.
    pub(crate) busy: Arc<PendingBusy>,
}

/// What the request tasks share.
#[derive(Clone, Debug)]
pub(crate) struct RequestEnv {
    pub(crate) session: Arc<Session>,
    pub(crate) publisher: Publisher,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) identity: Arc<EngineIdentity>,
}

/// `apply_request` → `apply_reply`; anything else `x` → `x_reply`.
pub(crate) fn reply_type(msg_type: &str) -> String {
    match msg_type.strip_suffix("_request") {
        Some(stem) => format!("{stem}_reply"),
        None => format!("{msg_type}_reply"),
    }
}

/// An engine's execution state, as published in `status` messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Busy,
    Idle,
}

impl State {
    /// The `status` content, serialized once for all messages.
    fn content(self) -> Bytes {
        Bytes::from_static(match self {
            Self::Busy => br#"{"execution_state":"busy"}"#,
            Self::Idle => br#"{"execution_state":"idle"}"#,
        })
    }
}

/// The signed `status {execution_state}` message for the request whose header is
/// `parent` (JSON).
pub(crate) fn status_message(publisher: &Publisher, parent: &Bytes, state: State) -> Frames {
    publisher.message(
        "status",
        "status",
        parent,
        state.content(),
        publisher.engine_metadata_json(),
    )
}

/// Publishes `status {execution_state}` for the request whose header is `parent` (JSON).
pub(crate) async fn publish_status(publisher: &Publisher, parent: &Bytes, state: State) {
    let sent = publisher
        .iopub
        .send(status_message(publisher, parent, state))
        .await;
    if let Err(err) = sent {
        tracing::debug!(error = %err, "status not published: the engine is stopping");
    }
}

/// How long a request runs before its `status: busy` is published on its own (see
/// [`PendingBusy`]; a request that ends or publishes output sooner sends it then).
const BUSY_AFTER: Duration = Duration::from_millis(1);

/// How long an interrupted task gets to stop before the engine answers without it.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// SIGINT: what a time limit sends to the executor.
const SIGINT: i32 = 2;

/// The request's `time_limit` (seconds, our extension of ipyparallel's metadata), if any.
fn time_limit(msg: &Message) -> Option<Duration> {
    msg.metadata
        .get("time_limit")
        .and_then(Value::as_f64)
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        .map(Duration::from_secs_f64)
}

impl RequestEnv {
    /// Runs `work` for at most `limit`. Past it, the executor is interrupted (SIGINT: a
    /// Python executor raises `KeyboardInterrupt`) and given [`INTERRUPT_GRACE`] to stop;
    /// either way the task is answered with a `TaskTimeLimit` error and the engine serves
    /// the next request. Work that cannot be interrupted (a Rust function) finishes in the
    /// background and its result is dropped.
    async fn run_limited(
        &self,
        work: impl std::future::Future<Output = Outcome>,
        limit: Duration,
    ) -> Outcome {
        tokio::pin!(work);
        if let Ok(outcome) = tokio::time::timeout(limit, &mut work).await {
            return outcome;
        }
        let interrupted = self.executor.signal(SIGINT).is_ok()
            && tokio::time::timeout(INTERRUPT_GRACE, &mut work)
                .await
                .is_ok();
        let what = if interrupted {
            "was interrupted"
        } else {
            "could not be interrupted; it goes on in the background and its result is dropped"
        };
        tracing::warn!(limit = ?limit, interrupted, "a task exceeded its time limit");
        Outcome::error(
            "TaskTimeLimit",
            format!("the task ran longer than its time limit of {limit:?} and {what}"),
        )
    }

    /// Runs `work` until it finishes or `abort` is requested. On abort the executor is
    /// interrupted (SIGINT) and given [`INTERRUPT_GRACE`] to stop: `None` if it stopped
    /// (the request is answered `aborted`), else the work runs to its end and its real
    /// outcome is answered (a Rust function cannot be interrupted).
    async fn run_abortable(
        &self,
        work: impl std::future::Future<Output = Outcome>,
        abort: &AbortHandle,
    ) -> Option<Outcome> {
        tokio::pin!(work);
        tokio::select! {
            biased;
            outcome = &mut work => return Some(outcome),
            () = abort.requested() => {}
        }
        if self.executor.signal(SIGINT).is_ok() {
            if let Ok(outcome) = tokio::time::timeout(INTERRUPT_GRACE, &mut work).await {
                tracing::info!("the running request was aborted");
                // Whatever the interrupted work answered (KeyboardInterrupt, or a result
                // that beat the signal), the client asked for an abort: say so, unless
                // it had already succeeded.
                return match outcome {
                    ok @ Outcome::Ok { .. } => Some(ok),
                    _ => None,
                };
            }
        }
        tracing::warn!(
            "abort of the running request: the executor could not interrupt it; it runs to \
             its end and its result is answered"
        );
        Some(work.await)
    }

    /// Runs one request (or answers it as aborted) and returns its reply. Status busy is
    /// published here if the request runs longer than [`BUSY_AFTER`] or has output;
    /// otherwise by the caller, with status idle, once the reply is sent.
    pub(crate) async fn run(self, queued: Queued, abort: Arc<AbortHandle>) -> Finished {
        let Queued {
            msg,
            reply_to,
            aborted,
        } = queued;
        let parent = parent_json(&msg);
        let busy = PendingBusy::new(status_message(&self.publisher, &parent, State::Busy));
        let started = date::format(&date::now());
        let method = if msg.header.msg_type == "execute_request" {
            "execute"
        } else {
            "apply"
        };
        let outcome = if aborted {
            None
        } else {
            let outputs = Outputs::new(
                self.publisher.clone(),
                &msg,
                parent.clone(),
                Arc::clone(&busy),
            );
            let work = async {
                match msg.header.msg_type.as_str() {
                    "apply_request" => self.executor.apply(&msg, &outputs).await,
                    "execute_request" => self.executor.execute(&msg, &outputs).await,
                    other => Outcome::error(
                        "NotImplementedError",
                        format!("this engine does not handle {other} on its shell sockets"),
                    ),
                }
            };
            let announced = async {
                tokio::pin!(work);
                tokio::select! {
                    biased;
                    outcome = &mut work => outcome,
                    () = tokio::time::sleep(BUSY_AFTER) => {
                        busy.publish(&self.publisher).await;
                        work.await
                    }
                }
            };
            let limited = async {
                match time_limit(&msg) {
                    None => announced.await,
                    Some(limit) => self.run_limited(announced, limit).await,
                }
            };
            self.run_abortable(limited, &abort).await
        };

        let mut metadata = self.reply_metadata(&msg, started);
        let mut content = JsonMap::new();
        let mut buffers = Vec::new();
        match outcome {
            None => {
                content.insert("status".into(), json!("aborted"));
                metadata.insert("status".into(), json!("aborted"));
            }
            Some(Outcome::Ok {
                content: extra,
                buffers: frames,
            }) => {
                content.insert("status".into(), json!("ok"));
                if method == "execute" {
                    content.insert("execution_count".into(), json!(0));
                    content.insert("user_expressions".into(), json!({}));
                    content.insert("payload".into(), json!([]));
                }
                content.extend(extra);
                buffers = frames;
                metadata.insert("status".into(), json!("ok"));
            }
            Some(Outcome::Error(error)) => {
                content = self.error_content(error, method, &mut metadata);
                busy.publish(&self.publisher).await;
                self.publish_error(&parent, &content).await;
            }
            Some(Outcome::UnmetDependency) => {
                let error = RemoteError {
                    ename: "UnmetDependency".into(),
                    evalue: String::new(),
                    traceback: vec!["UnmetDependency: dependencies not met on this engine\n".into()],
                    engine_info: JsonMap::new(),
                };
                metadata.insert("dependencies_met".into(), json!(false));
                content = self.error_content(error, method, &mut metadata);
            }
        }
        let header = self.session.header(&reply_type(&msg.header.msg_type));
        let reply = self.session.serialize_parts(
            msg.idents,
            to_json_bytes(&header),
            parent.clone(),
            to_json_bytes(&metadata),
            to_json_bytes(&content),
            buffers,
        );
        Finished {
            reply,
            reply_to,
            parent,
            msg_id: msg.header.msg_id,
            busy,
        }
    }

    /// The reply metadata ipyparallel engines send (spec §7.4), without `status`.
    fn reply_metadata(&self, request: &Message, started: String) -> JsonMap {
        let md = &request.metadata;
        let flag = |key: &str| md.get(key).and_then(Value::as_bool).unwrap_or(false);
        let mut out = JsonMap::new();
        out.insert("started".into(), json!(started));
        out.insert("dependencies_met".into(), json!(true));
        out.insert("engine".into(), json!(self.identity.uuid));
        out.insert("is_broadcast".into(), json!(flag("is_broadcast")));
        out.insert("is_coalescing".into(), json!(flag("is_coalescing")));
        out.insert(
            "original_msg_id".into(),
            md.get("original_msg_id").cloned().unwrap_or(json!("")),
        );
        out.insert(
            "label".into(),
            md.get("label").cloned().unwrap_or(Value::Null),
        );
        out
    }

    /// The error dict for the reply content, and the error parts of the metadata.
    fn error_content(
        &self,
        mut error: RemoteError,
        method: &str,
        metadata: &mut JsonMap,
    ) -> JsonMap {
        let id = self.identity.id();
        error.engine_info = json!({
            "engine_uuid": self.identity.uuid,
            "engine_id": id,
            "method": method,
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        metadata.insert("status".into(), json!("error"));
        metadata.insert(
            "engine_info".into(),
            json!({"engine_uuid": self.identity.uuid, "engine_id": id}),
        );
        error.to_content()
    }

    /// ipyparallel engines also publish failures on IOPub (topic `engine.<id>.error`).
    async fn publish_error(&self, parent: &Bytes, content: &JsonMap) {
        let sent = self
            .publisher
            .publish(
                "error",
                "error",
                parent,
                Value::Object(content.clone()),
                self.publisher.engine_metadata(),
            )
            .await;
        if let Err(err) = sent {
            tracing::debug!(error = %err, "error not published: the engine is stopping");
        }
    }
}
