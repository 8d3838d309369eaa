//! Raw requests: any message type, with JSON content and metadata packed by the caller, and
//! replies kept whole (plus their IOPub output) until the caller forgets them.
//!
//! This is the layer a foreign-language client (the `ipp_rs` Python package) builds on: the
//! Rust client does the networking, signing, routing and failure handling, and the caller
//! decides what the content means. Every request sent with tracking ends with exactly one
//! [`RawReply`] in the client's [`RawReplies`] store: the reply the controller or an engine
//! sent, or a *synthetic* one the client made when the request can no longer be answered
//! (its engine died, the controller went away, the client closed). Synthetic replies look
//! like the controller's own error replies: `status: error` with `ename` `EngineError`
//! (engine death), `ConnectionError` (controller or client gone) or `TimeoutError`
//! ([`ClientConfig::request_timeout`](super::ClientConfig::request_timeout)). One exception:
//! a `shutdown_request` whose engine unregisters before its reply arrives gets a synthetic
//! `status: ok` reply (the engine did shut down), as the typed client counts it.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use bytes::Bytes;
//! # use ipp_core::client::{Client, RawChannel, RawRequest};
//! # use ipp_core::controller::{Controller, ControllerConfig};
//! # use ipp_core::transport::MemoryTransport;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let transport = Arc::new(MemoryTransport::new());
//! # let controller = Controller::builder(ControllerConfig::default())
//! #     .with_transport(transport.clone())
//! #     .start()
//! #     .await?;
//! let client = Client::from_controller(&controller, transport).await?;
//! // A Hub query with caller-packed content.
//! let reply = client
//!     .query_raw("queue_request", Bytes::from_static(br#"{"targets": null}"#), None)
//!     .await?;
//! assert_eq!(reply.content_map()["status"], "ok");
//! // A load-balanced request: with no engine it waits in the scheduler until the client
//! // closes, and then ends with a synthetic `ConnectionError` reply.
//! let ids = client
//!     .send_raw(vec![RawRequest::new(RawChannel::Task, "apply_request", Bytes::from_static(b"{}"))])
//!     .await?;
//! let msg_id = ids[0][0].clone();
//! let replies = client.raw_replies().clone();
//! assert!(!replies.wait_async(&[msg_id.clone()], Some(Duration::from_millis(10))).await);
//! client.close().await;
//! assert!(replies.wait_async(&[msg_id.clone()], None).await);
//! let reply = replies.reply(&msg_id).expect("every tracked request ends with a reply");
//! assert!(reply.is_synthetic());
//! assert_eq!(reply.message()?.content_map()["ename"], "ConnectionError");
//! # controller.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc::error::SendError;
use tokio::sync::{oneshot, Notify};

use super::call::SUBMIT_BATCH;
use super::error::{ClientError, ClientResult, Failure};
use super::io::{Channel, Command, OnEngines, Outgoing, Route, Sink};
use super::Client;
use crate::protocol::{
    date, new_id, to_json_bytes, Header, JsonMap, Message, WireMessage, PROTOCOL_VERSION,
};

/// How often a blocking wait calls its interrupt check.
pub const WAIT_TICK: Duration = Duration::from_millis(100);

/// The socket a raw request goes out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RawChannel {
    /// Direct requests: one message per target engine, routed to it.
    Mux,
    /// One load-balanced message; the task scheduler picks the engine (targets and other
    /// flags travel in the metadata, as ipyparallel puts them).
    Task,
    /// One message that the broadcast scheduler copies to every target.
    Broadcast,
    /// Control requests (abort, clear, shutdown, signal…): one message per target engine.
    Control,
}

impl RawChannel {
    /// The channel's name: `mux`, `task`, `broadcast` or `control`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mux => "mux",
            Self::Task => "task",
            Self::Broadcast => "broadcast",
            Self::Control => "control",
        }
    }

    fn channel(self) -> Channel {
        match self {
            Self::Mux => Channel::Mux,
            Self::Task => Channel::Task,
            Self::Broadcast => Channel::Broadcast,
            Self::Control => Channel::Control,
        }
    }
}

impl fmt::Display for RawChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A channel name that is none of `mux`, `task`, `broadcast`, `control`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown channel {0:?}: expected \"mux\", \"task\", \"broadcast\" or \"control\"")]
pub struct UnknownChannel(pub String);

impl FromStr for RawChannel {
    type Err = UnknownChannel;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "mux" => Ok(Self::Mux),
            "task" => Ok(Self::Task),
            "broadcast" => Ok(Self::Broadcast),
            "control" => Ok(Self::Control),
            other => Err(UnknownChannel(other.to_owned())),
        }
    }
}

/// One request to send with [`Client::send_raw`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RawRequest {
    /// Where it goes.
    pub channel: RawChannel,
    /// The header's `msg_type`, e.g. `apply_request`, `execute_request`, `abort_request`.
    pub msg_type: String,
    /// The content: packed JSON object text.
    pub content: Bytes,
    /// The metadata: packed JSON object text (empty means `{}`). For broadcasts the client
    /// adds `targets`, `is_broadcast` and `is_coalescing`.
    pub metadata: Bytes,
    /// Extra frames sent after the content, unchanged.
    pub buffers: Vec<Bytes>,
    /// Target engine ids for mux, control and broadcast requests; `None` means every
    /// registered engine. Ignored for task requests.
    pub targets: Option<Vec<u32>>,
    /// For broadcasts: one coalesced reply instead of one per engine.
    pub coalescing: bool,
    /// Keep the replies in the store (the default). Untracked requests are fire and forget.
    pub track: bool,
}

impl RawRequest {
    /// A tracked request with empty metadata, no buffers and every engine as targets.
    pub fn new(channel: RawChannel, msg_type: impl Into<String>, content: Bytes) -> Self {
        Self {
            channel,
            msg_type: msg_type.into(),
            content,
            metadata: Bytes::new(),
            buffers: Vec::new(),
            targets: None,
            coalescing: false,
            track: true,
        }
    }

    /// Sets [`RawRequest::metadata`].
    pub fn with_metadata(mut self, metadata: Bytes) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets [`RawRequest::buffers`].
    pub fn with_buffers(mut self, buffers: Vec<Bytes>) -> Self {
        self.buffers = buffers;
        self
    }

    /// Sets [`RawRequest::targets`].
    pub fn with_targets(mut self, targets: Option<Vec<u32>>) -> Self {
        self.targets = targets;
        self
    }

    /// Sets [`RawRequest::coalescing`].
    pub fn with_coalescing(mut self, coalescing: bool) -> Self {
        self.coalescing = coalescing;
        self
    }

    /// Sets [`RawRequest::track`].
    pub fn with_track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }
}

/// The reply to one raw request, as it arrived (unparsed), or made by the client.
#[derive(Debug)]
pub struct RawReply {
    msg_id: String,
    wire: WireMessage,
    synthetic: bool,
    received: SystemTime,
    ran_on_engine: OnceLock<bool>,
}

impl RawReply {
    /// A reply as it arrived.
    pub(crate) fn from_wire(msg_id: String, wire: WireMessage) -> Self {
        Self::new(msg_id, wire, false)
    }

    fn new(msg_id: String, wire: WireMessage, synthetic: bool) -> Self {
        Self {
            msg_id,
            wire,
            synthetic,
            received: SystemTime::now(),
            ran_on_engine: OnceLock::new(),
        }
    }

    /// The id of the request this answers (a broadcast sub-id `<msg_id>_<uuid>` for
    /// non-coalescing broadcasts).
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The reply's parts, packed as received (the signature frame is empty for synthetic
    /// replies).
    pub fn wire(&self) -> &WireMessage {
        &self.wire
    }

    /// Whether the client made this reply (engine death, controller or client gone).
    pub fn is_synthetic(&self) -> bool {
        self.synthetic
    }

    /// When the reply arrived (or was made).
    pub fn received(&self) -> SystemTime {
        self.received
    }

    /// Parses the reply.
    ///
    /// # Errors
    /// [`crate::Error::InvalidMessage`] when a part is not JSON of the right shape.
    pub fn message(&self) -> crate::Result<Message> {
        self.wire.clone().parse()
    }

    /// Whether an engine ran the request (so its IOPub `status: idle` will come): true for
    /// engine replies (metadata with `started`), false for synthetic replies and errors the
    /// schedulers made.
    pub fn ran_on_engine(&self) -> bool {
        *self.ran_on_engine.get_or_init(|| {
            !self.synthetic
                && self
                    .wire
                    .parse_metadata()
                    .is_ok_and(|m| m.get("started").is_some_and(|s| !s.is_null()))
        })
    }

    /// A reply the client makes for a request that can no longer be answered.
    pub(crate) fn synthetic(
        msg_id: &str,
        request_header: &[u8],
        failure: &Failure,
        engine: Option<u32>,
    ) -> Self {
        let mut parent: JsonMap = serde_json::from_slice(request_header).unwrap_or_default();
        let request_type = parent
            .get("msg_type")
            .and_then(Value::as_str)
            .unwrap_or("apply_request")
            .to_owned();
        parent.insert("msg_id".into(), json!(msg_id));
        let reply_type = match request_type.strip_suffix("_request") {
            Some(base) => format!("{base}_reply"),
            None => format!("{request_type}_reply"),
        };
        let (mut content, mut metadata) = synthetic_parts(msg_id, failure, engine);
        if request_type == "shutdown_request" && is_engine_death(failure) {
            // The engine did what was asked; its reply lost the race with the controller's
            // unregistration notification.
            content = json!({"status": "ok", "restart": false});
            metadata["status"] = json!("ok");
        }
        let header = Header {
            msg_id: new_id(),
            msg_type: reply_type,
            username: String::new(),
            session: parent
                .get("session")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            date: date::format(&date::now()),
            version: PROTOCOL_VERSION.to_owned(),
            extra: JsonMap::new(),
        };
        let wire = WireMessage {
            idents: Vec::new(),
            signature: Bytes::new(),
            header: to_json_bytes(&header),
            parent_header: to_json_bytes(&parent),
            metadata: to_json_bytes(&metadata),
            content: to_json_bytes(&content),
            buffers: Vec::new(),
        };
        Self::new(msg_id.to_owned(), wire, true)
    }
}

fn is_engine_death(failure: &Failure) -> bool {
    matches!(failure, Failure::Remote(error) if error.ename == "EngineError")
}

/// Content and metadata of a synthetic reply.
fn synthetic_parts(msg_id: &str, failure: &Failure, engine: Option<u32>) -> (Value, Value) {
    let (ename, evalue, traceback, engine_info) = match failure {
        Failure::Remote(error) => (
            error.ename.clone(),
            error.evalue.clone(),
            error.traceback.clone(),
            error.engine_info.clone(),
        ),
        other => {
            let ename = match other {
                Failure::RequestTimeout(_) => "TimeoutError",
                _ => "ConnectionError",
            };
            let evalue = match other {
                Failure::ControllerShutdown => {
                    format!("the controller shut down before '{msg_id}' was answered")
                }
                Failure::Closed => format!("the client closed before '{msg_id}' was answered"),
                other => other.to_error(msg_id).to_string(),
            };
            (ename.to_owned(), evalue, Vec::new(), JsonMap::new())
        }
    };
    let mut metadata = JsonMap::new();
    let engine_id = engine_info
        .get("engine_id")
        .cloned()
        .or_else(|| engine.map(|id| json!(id)));
    if let Some(id) = engine_id {
        metadata.insert("engine_id".into(), id);
    }
    if let Some(uuid) = engine_info.get("engine_uuid") {
        metadata.insert("engine_uuid".into(), uuid.clone());
    }
    metadata.insert("status".into(), json!("error"));
    let content = json!({
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": traceback,
        "engine_info": engine_info,
    });
    (content, Value::Object(metadata))
}

/// One IOPub message whose parent is a tracked raw request (anything but `status`).
#[derive(Debug)]
pub struct RawOutput {
    msg_type: String,
    wire: WireMessage,
}

impl RawOutput {
    /// The message type: `stream`, `display_data`, `execute_result`, `error`,
    /// `execute_input`, `data_message`, …
    pub fn msg_type(&self) -> &str {
        &self.msg_type
    }

    /// The packed content.
    pub fn content(&self) -> &Bytes {
        &self.wire.content
    }

    /// The message as received.
    pub fn wire(&self) -> &WireMessage {
        &self.wire
    }
}

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitKind {
    /// The reply.
    Reply,
    /// The output: the IOPub `status: idle` (of every engine, for a coalesced broadcast),
    /// or a reply that no engine output will follow.
    Outputs,
}

#[derive(Debug)]
enum Wake {
    /// A thread blocked on the store's condition variable.
    Thread,
    /// An async task.
    Task(Arc<Notify>),
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    kind: WaitKind,
    any: bool,
    pending: HashSet<String>,
    satisfied: bool,
    wake: Wake,
    /// For a [`Completions`] stream: the ids finished since it last handed them out
    /// (`satisfied` while this is not empty).
    completed: Option<Vec<String>>,
}

#[derive(Debug, Default)]
struct Record {
    reply: Option<Arc<RawReply>>,
    outputs: Vec<Arc<RawOutput>>,
    idle: usize,
    idle_needed: usize,
    /// IOPub parent ids that count as this request (a coalesced broadcast's sub-ids).
    aliases: Vec<String>,
}

impl Record {
    fn is(&self, kind: WaitKind) -> bool {
        match kind {
            WaitKind::Reply => self.reply.is_some(),
            WaitKind::Outputs => self.outputs_complete(),
        }
    }

    fn outputs_complete(&self) -> bool {
        self.idle >= self.idle_needed || self.reply.as_ref().is_some_and(|r| !r.ran_on_engine())
    }
}

#[derive(Debug, Default)]
struct StoreState {
    records: HashMap<String, Record>,
    /// The records still without a reply.
    outstanding: HashSet<String>,
    aliases: HashMap<String, String>,
    waiters: Vec<Waiter>,
}

impl StoreState {
    /// Whether `msg_id` is finished for `kind` (unknown ids count as finished: nothing will
    /// come for them).
    fn is(&self, msg_id: &str, kind: WaitKind) -> bool {
        self.records.get(msg_id).is_none_or(|r| r.is(kind))
    }

    /// Re-evaluates the waiters after `msg_id` changed; returns whether a thread waiter
    /// became satisfied.
    fn changed(&mut self, msg_id: &str) -> bool {
        if self.waiters.is_empty() {
            return false;
        }
        let record = self.records.get(msg_id);
        let mut wake_threads = false;
        for waiter in &mut self.waiters {
            // A completions stream takes more ids while earlier ones wait to be handed out.
            if (waiter.satisfied && waiter.completed.is_none()) || !waiter.pending.contains(msg_id)
            {
                continue;
            }
            if !record.is_none_or(|r| r.is(waiter.kind)) {
                continue;
            }
            waiter.pending.remove(msg_id);
            if let Some(completed) = &mut waiter.completed {
                completed.push(msg_id.to_owned());
            }
            if waiter.any || waiter.completed.is_some() || waiter.pending.is_empty() {
                waiter.satisfied = true;
                match &waiter.wake {
                    Wake::Thread => wake_threads = true,
                    Wake::Task(notify) => notify.notify_one(),
                }
            }
        }
        wake_threads
    }
}

/// The `execution_state` of a packed `status` content.
#[derive(serde::Deserialize)]
struct ExecutionState<'a> {
    #[serde(borrow, default)]
    execution_state: Option<std::borrow::Cow<'a, str>>,
}

/// Whether a packed `status` content says `execution_state: idle` (read without building
/// the content).
pub(crate) fn is_idle_status(content: &[u8]) -> bool {
    serde_json::from_slice::<ExecutionState<'_>>(content)
        .is_ok_and(|c| c.execution_state.as_deref() == Some("idle"))
}

/// The state the IO task and the client handles share.
#[derive(Debug, Default)]
pub(crate) struct RawShared {
    state: Mutex<StoreState>,
    cond: Condvar,
    /// How many records there are (read without the lock by the IOPub filter).
    count: AtomicUsize,
    next_waiter: AtomicU64,
}

impl RawShared {
    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether any request is tracked (so IOPub status messages are worth reading).
    pub(crate) fn is_tracking(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Whether IOPub messages with this parent belong to a tracked request.
    pub(crate) fn knows(&self, parent_id: &str) -> bool {
        let state = self.lock();
        state.records.contains_key(parent_id) || state.aliases.contains_key(parent_id)
    }

    fn register(&self, records: Vec<(String, usize, Vec<String>)>) {
        let mut state = self.lock();
        for (msg_id, idle_needed, aliases) in records {
            for alias in &aliases {
                state.aliases.insert(alias.clone(), msg_id.clone());
            }
            state.outstanding.insert(msg_id.clone());
            state.records.insert(
                msg_id,
                Record {
                    idle_needed,
                    aliases,
                    ..Record::default()
                },
            );
        }
        self.count.store(state.records.len(), Ordering::Relaxed);
    }

    fn wake_threads(&self, wake: bool) {
        if wake {
            self.cond.notify_all();
        }
    }

    /// Stores a reply (the first one only: a late real reply after a synthetic one is
    /// dropped, so every request ends with exactly one reply).
    pub(crate) fn complete(&self, reply: RawReply) {
        let mut state = self.lock();
        let msg_id = reply.msg_id.clone();
        let Some(record) = state.records.get_mut(&msg_id) else {
            return;
        };
        if record.reply.is_some() {
            return;
        }
        record.reply = Some(Arc::new(reply));
        state.outstanding.remove(&msg_id);
        let wake = state.changed(&msg_id);
        drop(state);
        self.wake_threads(wake);
    }

    /// Records an IOPub message of a tracked request (`status: idle` counts, other statuses
    /// are dropped, everything else is kept in arrival order).
    pub(crate) fn on_iopub(&self, parent_id: &str, msg_type: String, wire: WireMessage) {
        let idle = if msg_type == "status" {
            // Half of all IOPub traffic: read the one field without building the content.
            if !is_idle_status(&wire.content) {
                return;
            }
            true
        } else {
            false
        };
        let mut state = self.lock();
        let key = match state.aliases.get(parent_id) {
            Some(key) => key.clone(),
            None => parent_id.to_owned(),
        };
        let Some(record) = state.records.get_mut(&key) else {
            return;
        };
        if idle {
            record.idle += 1;
        } else {
            record.outputs.push(Arc::new(RawOutput { msg_type, wire }));
            return;
        }
        let wake = state.changed(&key);
        drop(state);
        self.wake_threads(wake);
    }

    fn forget(&self, msg_ids: &[String]) {
        let mut state = self.lock();
        let mut wake = false;
        for msg_id in msg_ids {
            if let Some(record) = state.records.remove(msg_id) {
                state.outstanding.remove(msg_id);
                for alias in &record.aliases {
                    state.aliases.remove(alias);
                }
                wake |= state.changed(msg_id);
            }
        }
        self.count.store(state.records.len(), Ordering::Relaxed);
        drop(state);
        self.wake_threads(wake);
    }

    /// Registers a waiter unless it is satisfied already (then `None`).
    fn add_waiter(
        &self,
        state: &mut StoreState,
        msg_ids: &[String],
        kind: WaitKind,
        any: bool,
        wake: Wake,
    ) -> Option<u64> {
        let pending: HashSet<String> = msg_ids
            .iter()
            .filter(|id| !state.is(id, kind))
            .cloned()
            .collect();
        let satisfied = if any {
            msg_ids.is_empty() || pending.len() < msg_ids.len()
        } else {
            pending.is_empty()
        };
        if satisfied {
            return None;
        }
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        state.waiters.push(Waiter {
            id,
            kind,
            any,
            pending,
            satisfied: false,
            wake,
            completed: None,
        });
        Some(id)
    }

    /// Registers the waiter of a [`Completions`] stream: ids finished already are its
    /// first completions.
    fn add_completions_waiter(&self, msg_ids: &[String]) -> u64 {
        let mut state = self.lock();
        let (done, pending): (Vec<String>, Vec<String>) = msg_ids
            .iter()
            .cloned()
            .partition(|id| state.is(id, WaitKind::Reply));
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        state.waiters.push(Waiter {
            id,
            kind: WaitKind::Reply,
            any: false,
            pending: pending.into_iter().collect(),
            satisfied: !done.is_empty(),
            wake: Wake::Thread,
            completed: Some(done),
        });
        id
    }

    fn remove_waiter(state: &mut StoreState, id: u64) -> bool {
        let Some(index) = state.waiters.iter().position(|w| w.id == id) else {
            return true;
        };
        state.waiters.swap_remove(index).satisfied
    }

    fn is_satisfied(state: &StoreState, id: u64) -> bool {
        state
            .waiters
            .iter()
            .find(|w| w.id == id)
            .is_none_or(|w| w.satisfied)
    }

    /// Blocks the calling thread; see [`RawReplies::wait_interruptible`].
    fn wait_blocking(
        &self,
        msg_ids: &[String],
        kind: WaitKind,
        any: bool,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> WaitEnd {
        let mut state = self.lock();
        let Some(id) = self.add_waiter(&mut state, msg_ids, kind, any, Wake::Thread) else {
            return WaitEnd::Done;
        };
        let (mut state, end) = self.block_on_waiter(state, id, timeout, interrupt);
        if Self::remove_waiter(&mut state, id) {
            WaitEnd::Done
        } else {
            end
        }
    }

    /// Blocks until waiter `id` is satisfied (`Done`), `timeout` passes or `interrupt`
    /// (called every [`WAIT_TICK`], without the lock) says to stop. The waiter stays
    /// registered.
    fn block_on_waiter<'a>(
        &'a self,
        mut state: MutexGuard<'a, StoreState>,
        id: u64,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> (MutexGuard<'a, StoreState>, WaitEnd) {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let mut next_check = start + WAIT_TICK;
        loop {
            if Self::is_satisfied(&state, id) {
                return (state, WaitEnd::Done);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return (state, WaitEnd::TimedOut);
            }
            if now >= next_check {
                drop(state);
                let go_on = interrupt();
                state = self.lock();
                if !go_on {
                    return (state, WaitEnd::Interrupted);
                }
                next_check = Instant::now() + WAIT_TICK;
                continue;
            }
            let until = deadline.map_or(next_check, |d| d.min(next_check));
            let slice = until.saturating_duration_since(now);
            state = self
                .cond
                .wait_timeout(state, slice)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    async fn wait_async(
        &self,
        msg_ids: &[String],
        kind: WaitKind,
        any: bool,
        timeout: Option<Duration>,
    ) -> bool {
        let notify = Arc::new(Notify::new());
        let id = {
            let mut state = self.lock();
            self.add_waiter(
                &mut state,
                msg_ids,
                kind,
                any,
                Wake::Task(Arc::clone(&notify)),
            )
        };
        let Some(id) = id else { return true };
        // Removes the waiter however this future ends (done, timed out or dropped).
        struct Guard<'a>(&'a RawShared, u64);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                RawShared::remove_waiter(&mut self.0.lock(), self.1);
            }
        }
        let _guard = Guard(self, id);
        let waited = async {
            loop {
                if Self::is_satisfied(&self.lock(), id) {
                    return;
                }
                notify.notified().await;
            }
        };
        match timeout {
            None => {
                waited.await;
                true
            }
            Some(timeout) => {
                tokio::time::timeout(timeout, waited).await.is_ok()
                    || Self::is_satisfied(&self.lock(), id)
            }
        }
    }
}

/// How a blocking wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitEnd {
    /// What was waited for happened.
    Done,
    /// The timeout passed first.
    TimedOut,
    /// The interrupt check asked to stop.
    Interrupted,
}

/// The client's store of raw replies and their IOPub output (see the module docs).
///
/// Cheap to clone; every clone sees the same store. Records stay until
/// [`RawReplies::forget`]. Ids the store does not know (never tracked, or forgotten) count
/// as finished in every wait, since nothing will arrive for them.
#[derive(Clone, Debug)]
pub struct RawReplies {
    shared: Arc<RawShared>,
}

/// The ids of a set of requests, handed out as their replies arrive
/// ([`RawReplies::completions`]): a caller waiting for many replies can work on each as it
/// comes instead of after the last one. Dropping it stops the tracking.
#[derive(Debug)]
pub struct Completions {
    shared: Arc<RawShared>,
    id: u64,
}

impl Completions {
    /// Blocks until at least one id not handed out yet has its reply, `timeout` passes, or
    /// `interrupt` (called about every 100 ms, as for
    /// [`RawReplies::wait_interruptible`]) says to stop; returns the ids finished since
    /// the last call, in the order their replies came, and how the wait ended. Returns at
    /// once, with no ids and `Done`, when every id has been handed out.
    pub fn next_interruptible(
        &self,
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> (Vec<String>, WaitEnd) {
        let state = self.shared.lock();
        if self.remaining_in(&state) == 0 {
            return (Vec::new(), WaitEnd::Done);
        }
        let (mut state, end) = self
            .shared
            .block_on_waiter(state, self.id, timeout, interrupt);
        let Some(waiter) = state.waiters.iter_mut().find(|w| w.id == self.id) else {
            return (Vec::new(), WaitEnd::Done);
        };
        let done = waiter
            .completed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        waiter.satisfied = false;
        let end = if done.is_empty() { end } else { WaitEnd::Done };
        (done, end)
    }

    /// How many ids have not been handed out yet.
    pub fn remaining(&self) -> usize {
        self.remaining_in(&self.shared.lock())
    }

    fn remaining_in(&self, state: &StoreState) -> usize {
        state
            .waiters
            .iter()
            .find(|w| w.id == self.id)
            .map_or(0, |w| {
                w.pending.len() + w.completed.as_ref().map_or(0, Vec::len)
            })
    }
}

impl Drop for Completions {
    fn drop(&mut self) {
        RawShared::remove_waiter(&mut self.shared.lock(), self.id);
    }
}

impl RawReplies {
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::default(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<RawShared> {
        &self.shared
    }

    /// The reply of `msg_id`, if it arrived and was not forgotten.
    pub fn reply(&self, msg_id: &str) -> Option<Arc<RawReply>> {
        self.shared.lock().records.get(msg_id)?.reply.clone()
    }

    /// Whether `msg_id` is tracked (sent with tracking and not forgotten).
    pub fn is_tracked(&self, msg_id: &str) -> bool {
        self.shared.lock().records.contains_key(msg_id)
    }

    /// Those of `msg_ids` that have their reply, in the given order.
    pub fn done(&self, msg_ids: &[String]) -> Vec<String> {
        let state = self.shared.lock();
        msg_ids
            .iter()
            .filter(|id| {
                state
                    .records
                    .get(id.as_str())
                    .is_some_and(|r| r.reply.is_some())
            })
            .cloned()
            .collect()
    }

    /// Every tracked id still without a reply.
    pub fn outstanding(&self) -> Vec<String> {
        self.shared.lock().outstanding.iter().cloned().collect()
    }

    /// The IOPub messages of `msg_id` so far, in arrival order (no `status` messages).
    pub fn outputs(&self, msg_id: &str) -> Vec<Arc<RawOutput>> {
        self.shared
            .lock()
            .records
            .get(msg_id)
            .map(|r| r.outputs.clone())
            .unwrap_or_default()
    }

    /// Whether the output of `msg_id` is complete (see [`RawReplies::wait_outputs`]).
    pub fn outputs_complete(&self, msg_id: &str) -> bool {
        self.shared.lock().is(msg_id, WaitKind::Outputs)
    }

    /// Drops the replies and outputs of `msg_ids`; a reply still to come is discarded.
    pub fn forget(&self, msg_ids: &[String]) {
        self.shared.forget(msg_ids);
    }

    /// Blocks the calling thread until every id has its reply; false on timeout (`None`
    /// waits for ever). Do not call from async code: use [`RawReplies::wait_async`].
    pub fn wait(&self, msg_ids: &[String], timeout: Option<Duration>) -> bool {
        self.wait_interruptible(msg_ids, timeout, &mut || true) == WaitEnd::Done
    }

    /// As [`RawReplies::wait`], calling `interrupt` at least every [`WAIT_TICK`] while
    /// waiting; the wait ends with [`WaitEnd::Interrupted`] when it returns false.
    pub fn wait_interruptible(
        &self,
        msg_ids: &[String],
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> WaitEnd {
        self.shared
            .wait_blocking(msg_ids, WaitKind::Reply, false, timeout, interrupt)
    }

    /// Blocks until at least one of `msg_ids` has its reply (or the timeout passes);
    /// returns those that have one. With no ids, returns at once.
    pub fn wait_any(&self, msg_ids: &[String], timeout: Option<Duration>) -> Vec<String> {
        self.wait_any_interruptible(msg_ids, timeout, &mut || true)
            .0
    }

    /// As [`RawReplies::wait_any`], with an interrupt check as in
    /// [`RawReplies::wait_interruptible`]; also returns how the wait ended.
    pub fn wait_any_interruptible(
        &self,
        msg_ids: &[String],
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> (Vec<String>, WaitEnd) {
        let end = self
            .shared
            .wait_blocking(msg_ids, WaitKind::Reply, true, timeout, interrupt);
        let state = self.shared.lock();
        let done = msg_ids
            .iter()
            .filter(|id| state.is(id, WaitKind::Reply))
            .cloned()
            .collect();
        (done, end)
    }

    /// A stream of the ids among `msg_ids` that get their reply, handed out as they do
    /// (see [`Completions::next_interruptible`]); ids that have one already come first.
    pub fn completions(&self, msg_ids: &[String]) -> Completions {
        Completions {
            id: self.shared.add_completions_waiter(msg_ids),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Blocks until the output of every id is complete: its IOPub `status: idle` arrived
    /// (from every engine, for a coalesced broadcast), or its reply says no engine ran it
    /// (synthetic replies, scheduler-made errors). False on timeout.
    pub fn wait_outputs(&self, msg_ids: &[String], timeout: Option<Duration>) -> bool {
        self.wait_outputs_interruptible(msg_ids, timeout, &mut || true) == WaitEnd::Done
    }

    /// As [`RawReplies::wait_outputs`], with an interrupt check as in
    /// [`RawReplies::wait_interruptible`].
    pub fn wait_outputs_interruptible(
        &self,
        msg_ids: &[String],
        timeout: Option<Duration>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> WaitEnd {
        self.shared
            .wait_blocking(msg_ids, WaitKind::Outputs, false, timeout, interrupt)
    }

    /// Waits (async) until every id has its reply; false on timeout.
    pub async fn wait_async(&self, msg_ids: &[String], timeout: Option<Duration>) -> bool {
        self.shared
            .wait_async(msg_ids, WaitKind::Reply, false, timeout)
            .await
    }

    /// Waits (async) until at least one id has its reply; returns those that have one.
    pub async fn wait_any_async(
        &self,
        msg_ids: &[String],
        timeout: Option<Duration>,
    ) -> Vec<String> {
        self.shared
            .wait_async(msg_ids, WaitKind::Reply, true, timeout)
            .await;
        let state = self.shared.lock();
        msg_ids
            .iter()
            .filter(|id| state.is(id, WaitKind::Reply))
            .cloned()
            .collect()
    }

    /// Waits (async) until the output of every id is complete; false on timeout.
    pub async fn wait_outputs_async(&self, msg_ids: &[String], timeout: Option<Duration>) -> bool {
        self.shared
            .wait_async(msg_ids, WaitKind::Outputs, false, timeout)
            .await
    }
}

/// Checks that `packed` is a JSON object (empty means `{}`).
fn json_object(packed: Bytes, what: &str) -> ClientResult<Bytes> {
    if packed.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    let starts_as_object = packed.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !starts_as_object || serde_json::from_slice::<serde::de::IgnoredAny>(&packed).is_err() {
        return Err(ClientError::Core(crate::Error::invalid_message(format!(
            "the {what} must be the text of a JSON object"
        ))));
    }
    Ok(packed)
}

/// Messages ready for the IO task, and the store records to create first.
struct Prepared {
    outgoing: Vec<Outgoing>,
    records: Vec<(String, usize, Vec<String>)>,
    ids: Vec<Vec<String>>,
}

impl Client {
    /// The store where replies of tracked raw requests arrive.
    pub fn raw_replies(&self) -> &RawReplies {
        &self.inner.raw
    }

    /// Sends raw requests (one message per target for mux and control; one for task and
    /// broadcast), in order; returns, per request, the ids its replies will carry:
    /// one per target for mux and control, `[msg_id]` for task and coalescing broadcasts,
    /// `<msg_id>_<engine uuid>` per target for other broadcasts. Tracked requests end with
    /// exactly one reply each in [`Client::raw_replies`].
    ///
    /// # Errors
    /// [`ClientError::UnknownEngine`] or [`ClientError::NoEngines`] for bad targets;
    /// [`ClientError::Core`] when content or metadata is not a JSON object;
    /// [`ClientError::Closed`] (or `ControllerShutdown`) when the client is closed.
    pub async fn send_raw(&self, requests: Vec<RawRequest>) -> ClientResult<Vec<Vec<String>>> {
        let prepared = self.prepare_raw(requests)?;
        let ids = prepared.ids.clone();
        self.inner.raw.shared.register(prepared.records);
        let mut first = true;
        let mut chunks = chunked(prepared.outgoing);
        while let Some(chunk) = chunks.next() {
            if let Err(SendError(command)) = self.inner.commands.send(Command::Send(chunk)).await {
                return self.submit_failed(first, &ids, command, chunks);
            }
            first = false;
        }
        Ok(ids)
    }

    /// As [`Client::send_raw`], blocking the calling thread while the IO task's queue is
    /// full. Must not be called from async code (it would block the runtime).
    ///
    /// # Errors
    /// As [`Client::send_raw`].
    pub fn send_raw_blocking(&self, requests: Vec<RawRequest>) -> ClientResult<Vec<Vec<String>>> {
        let prepared = self.prepare_raw(requests)?;
        let ids = prepared.ids.clone();
        self.inner.raw.shared.register(prepared.records);
        let mut first = true;
        let mut chunks = chunked(prepared.outgoing);
        while let Some(chunk) = chunks.next() {
            if let Err(SendError(command)) = self.inner.commands.blocking_send(Command::Send(chunk))
            {
                return self.submit_failed(first, &ids, command, chunks);
            }
            first = false;
        }
        Ok(ids)
    }

    /// The IO task is gone: nothing sent ⇒ the error (and no records); part sent ⇒ the rest
    /// get synthetic replies and the ids are returned (every id ends with one reply).
    fn submit_failed(
        &self,
        first: bool,
        ids: &[Vec<String>],
        refused: Command,
        rest: impl Iterator<Item = Vec<Outgoing>>,
    ) -> ClientResult<Vec<Vec<String>>> {
        if first {
            let all: Vec<String> = ids.iter().flatten().cloned().collect();
            self.inner.raw.shared.forget(&all);
            return Err(self.closed_error());
        }
        let Command::Send(refused) = refused;
        for outgoing in refused.into_iter().chain(rest.flatten()) {
            for (msg_id, route) in outgoing.routes {
                super::io::fail_route(&self.inner.raw.shared, route, &msg_id, &Failure::Closed);
            }
        }
        Ok(ids.to_vec())
    }

    fn prepare_raw(&self, requests: Vec<RawRequest>) -> ClientResult<Prepared> {
        // The IO task may still be winding down after a shutdown notification or `close`:
        // refuse now rather than hand it requests it can only fail one by one.
        self.ensure_open()?;
        let mut prepared = Prepared {
            outgoing: Vec::with_capacity(requests.len()),
            records: Vec::with_capacity(if requests.iter().any(|r| r.track) {
                requests.len()
            } else {
                0
            }),
            ids: Vec::with_capacity(requests.len()),
        };
        let session = self.session();
        let empty = Bytes::from_static(b"{}");
        for request in requests {
            let content = json_object(request.content, "content")?;
            let metadata = json_object(request.metadata, "metadata")?;
            let channel = request.channel.channel();
            let track = request.track;
            let mut ids = Vec::new();
            let mut add =
                |prepared: &mut Prepared,
                 frames: Vec<Bytes>,
                 routes: Vec<(String, Bytes, OnEngines, usize, Vec<String>)>| {
                    let mut outgoing = Outgoing {
                        channel,
                        frames,
                        routes: Vec::with_capacity(routes.len()),
                    };
                    for (key, header, engines, idle_needed, aliases) in routes {
                        ids.push(key.clone());
                        if track {
                            prepared.records.push((key.clone(), idle_needed, aliases));
                            outgoing.routes.push((
                                key,
                                Route {
                                    sink: Sink::Raw { request: header },
                                    engines,
                                },
                            ));
                        }
                    }
                    prepared.outgoing.push(outgoing);
                };
            match request.channel {
                RawChannel::Task => {
                    let header = session.header(&request.msg_type);
                    let packed = to_json_bytes(&header);
                    let frames = session.serialize_parts(
                        Vec::new(),
                        packed.clone(),
                        empty.clone(),
                        metadata,
                        content,
                        request.buffers,
                    );
                    add(
                        &mut prepared,
                        frames,
                        vec![(header.msg_id, packed, OnEngines::None, 1, Vec::new())],
                    );
                }
                RawChannel::Mux | RawChannel::Control => {
                    let targets = self.resolve(request.targets.as_deref())?;
                    for (id, uuid) in targets {
                        let header = session.header(&request.msg_type);
                        let packed = to_json_bytes(&header);
                        let frames = session.serialize_parts(
                            vec![Bytes::from(uuid)],
                            packed.clone(),
                            empty.clone(),
                            metadata.clone(),
                            content.clone(),
                            request.buffers.clone(),
                        );
                        add(
                            &mut prepared,
                            frames,
                            vec![(header.msg_id, packed, OnEngines::One(id), 1, Vec::new())],
                        );
                    }
                }
                RawChannel::Broadcast => {
                    let targets = self.resolve(request.targets.as_deref())?;
                    let mut map: JsonMap = serde_json::from_slice(&metadata).unwrap_or_default();
                    let pairs: Vec<Value> =
                        targets.iter().map(|(id, uuid)| json!([uuid, id])).collect();
                    map.insert("targets".into(), Value::Array(pairs));
                    map.insert("is_broadcast".into(), json!(true));
                    map.insert("is_coalescing".into(), json!(request.coalescing));
                    let header = session.header(&request.msg_type);
                    let packed = to_json_bytes(&header);
                    let frames = session.serialize_parts(
                        Vec::new(),
                        packed.clone(),
                        empty.clone(),
                        to_json_bytes(&map),
                        content,
                        request.buffers,
                    );
                    let sub_ids: Vec<String> = targets
                        .iter()
                        .map(|(_, uuid)| format!("{}_{uuid}", header.msg_id))
                        .collect();
                    let routes = if request.coalescing {
                        let engines: Arc<[u32]> = targets.iter().map(|(id, _)| *id).collect();
                        vec![(
                            header.msg_id,
                            packed,
                            OnEngines::Many(engines),
                            targets.len(),
                            sub_ids,
                        )]
                    } else {
                        sub_ids
                            .into_iter()
                            .zip(&targets)
                            .map(|(sub_id, (id, _))| {
                                (sub_id, packed.clone(), OnEngines::One(*id), 1, Vec::new())
                            })
                            .collect()
                    };
                    add(&mut prepared, frames, routes);
                }
            }
            prepared.ids.push(ids);
        }
        Ok(prepared)
    }

    /// Sends a Hub request (`queue_request`, `db_request`, `result_request`, …) with
    /// caller-packed content and returns the whole reply, whatever its status.
    /// `timeout: None` waits until the reply comes or the client gives up on the
    /// controller (see the module docs of [`super`]).
    ///
    /// # Errors
    /// [`ClientError::Timeout`]; [`ClientError::Core`] when the content is not a JSON
    /// object; the failures of a lost controller or a closed client.
    pub async fn query_raw(
        &self,
        msg_type: &str,
        content: Bytes,
        timeout: Option<Duration>,
    ) -> ClientResult<Message> {
        let content = json_object(content, "content")?;
        let session = self.session();
        let header = session.header(msg_type);
        let frames = session.serialize_parts(
            Vec::new(),
            to_json_bytes(&header),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            content,
            Vec::new(),
        );
        let (tx, rx) = oneshot::channel();
        self.submit(vec![Outgoing {
            channel: Channel::Query,
            frames,
            routes: vec![(
                header.msg_id,
                Route {
                    sink: Sink::Reply(tx),
                    engines: OnEngines::None,
                },
            )],
        }])
        .await?;
        let reply = match timeout {
            None => rx.await,
            Some(after) => {
                tokio::time::timeout(after, rx)
                    .await
                    .map_err(|_| ClientError::Timeout {
                        what: "the Hub's reply",
                        after,
                    })?
            }
        };
        reply.map_err(|_| self.closed_error())?
    }
}

/// Splits messages into IO-task commands of at most [`SUBMIT_BATCH`] messages.
fn chunked(outgoing: Vec<Outgoing>) -> impl Iterator<Item = Vec<Outgoing>> {
    let mut outgoing = outgoing.into_iter().peekable();
    std::iter::from_fn(move || {
        outgoing.peek()?;
        Some(outgoing.by_ref().take(SUBMIT_BATCH).collect())
    })
}
