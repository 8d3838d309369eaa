//! The Executor seam: what runs a request on an engine, and how it publishes output.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::Result;
use crate::protocol::session::to_json_bytes;
use crate::protocol::{JsonMap, Message, RemoteError, Session};

/// A request's header as JSON, the parent header of everything sent about it: serialized
/// once per request and reused by its status messages, outputs and reply.
pub(crate) fn parent_json(request: &Message) -> Bytes {
    to_json_bytes(&request.header)
}
use crate::transport::{Frames, SocketSender};

/// What running one request produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Success: `content` is merged into the reply content (after `"status": "ok"`), and
    /// `buffers` become the reply's buffers.
    Ok {
        /// Extra reply content (for a Rust call: the `rust` section naming the payloads).
        content: JsonMap,
        /// The reply's binary frames.
        buffers: Vec<Bytes>,
    },
    /// The request failed; the reply carries this error with the engine's `engine_info`.
    Error(RemoteError),
    /// The request's dependencies are not met on this engine (ipyparallel's
    /// `UnmetDependency`): the reply says `dependencies_met: false`, so the task scheduler
    /// tries another engine.
    UnmetDependency,
}

impl Outcome {
    /// A success with no extra content and no buffers.
    pub fn ok() -> Self {
        Self::Ok {
            content: JsonMap::new(),
            buffers: Vec::new(),
        }
    }

    /// A failure with the given exception name and message.
    pub fn error(ename: impl Into<String>, evalue: impl Into<String>) -> Self {
        Self::Error(RemoteError::new(ename, evalue))
    }
}

/// Runs the requests an engine receives, one at a time.
///
/// # Contract
/// - The engine calls [`Executor::apply`] / [`Executor::execute`] for one request at a time,
///   in arrival order; control messages (abort, clear, shutdown) are handled meanwhile.
/// - A method never blocks its runtime thread: long computations go to the blocking pool
///   (`tokio::task::spawn_blocking`), so heartbeats and control keep flowing.
/// - Failures are returned as [`Outcome::Error`], never as panics; the engine keeps serving.
/// - [`Executor::clear`] (a client's `clear_request`) empties whatever namespace the executor
///   keeps between requests.
/// - [`Executor::signal`] (a client's `signal_request`) is called from the engine's main
///   task while a request may be running: it must return at once.
#[async_trait]
pub trait Executor: fmt::Debug + Send + Sync + 'static {
    /// Runs an `apply_request` (the whole request: header, metadata, content, buffers).
    async fn apply(&self, request: &Message, outputs: &Outputs) -> Outcome;

    /// Runs an `execute_request` (content `{code, silent, …}`).
    async fn execute(&self, request: &Message, outputs: &Outputs) -> Outcome;

    /// Empties the executor's namespace.
    fn clear(&self);

    /// Delivers a client's `signal_request` (a signal number, e.g. 2 for SIGINT) to the
    /// request running now, as ipyparallel's nanny does with `os.kill`.
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] when this executor cannot deliver that signal; the
    /// client gets an error reply.
    fn signal(&self, signal: i32) -> Result<()>;
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: Executor + ?Sized> Executor for Arc<T> {
    async fn apply(&self, request: &Message, outputs: &Outputs) -> Outcome {
        (**self).apply(request, outputs).await
    }

    async fn execute(&self, request: &Message, outputs: &Outputs) -> Outcome {
        (**self).execute(request, outputs).await
    }

    fn clear(&self) {
        (**self).clear();
    }

    fn signal(&self, signal: i32) -> Result<()> {
        (**self).signal(signal)
    }
}

/// Who an engine is: its uuid (fixed) and its id (which may change when it re-registers
/// with a restarted controller).
#[derive(Debug)]
pub(crate) struct EngineIdentity {
    pub(crate) uuid: String,
    id: AtomicU32,
}

impl EngineIdentity {
    pub(crate) fn new(uuid: String, id: u32) -> Self {
        Self {
            uuid,
            id: AtomicU32::new(id),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id.load(Ordering::Relaxed)
    }

    pub(crate) fn set_id(&self, id: u32) {
        self.id.store(id, Ordering::Relaxed);
    }
}

/// Publishes on the engine's IOPub socket: used by the engine itself (status, errors) and by
/// executors (the request's stdout, stderr and display data).
#[derive(Clone, Debug)]
pub(crate) struct Publisher {
    pub(crate) session: Arc<Session>,
    pub(crate) iopub: SocketSender,
    pub(crate) identity: Arc<EngineIdentity>,
    /// [`Publisher::engine_metadata`] as JSON, serialized once.
    engine_metadata_json: Bytes,
}

impl Publisher {
    pub(crate) fn new(
        session: Arc<Session>,
        iopub: SocketSender,
        identity: Arc<EngineIdentity>,
    ) -> Self {
        let mut md = JsonMap::new();
        md.insert("engine".into(), json!(identity.uuid));
        Self {
            session,
            iopub,
            identity,
            engine_metadata_json: to_json_bytes(&md),
        }
    }

    /// Sends one IOPub message with topic `engine.<id>.<topic>`; a closed socket (the
    /// engine is stopping) is logged, not an error for the request. `parent` is the
    /// parent header as JSON (serialized once per request, see [`parent_json`]).
    pub(crate) async fn publish(
        &self,
        topic: &str,
        msg_type: &str,
        parent: &Bytes,
        content: Value,
        metadata: JsonMap,
    ) -> Result<()> {
        let frames = self.message(
            topic,
            msg_type,
            parent,
            to_json_bytes(&content),
            to_json_bytes(&metadata),
        );
        self.iopub.send(frames).await
    }

    /// A signed IOPub message with topic `engine.<id>.<topic>` and content and metadata
    /// already serialized, built now (its header dated now) to be sent now or later.
    pub(crate) fn message(
        &self,
        topic: &str,
        msg_type: &str,
        parent: &Bytes,
        content: Bytes,
        metadata: Bytes,
    ) -> Frames {
        let topic = Bytes::from(format!("engine.{}.{topic}", self.identity.id()));
        let header = to_json_bytes(&self.session.header(msg_type));
        self.session.serialize_parts(
            vec![topic],
            header,
            parent.clone(),
            metadata,
            content,
            Vec::new(),
        )
    }

    /// [`Publisher::engine_metadata`] as JSON.
    pub(crate) fn engine_metadata_json(&self) -> Bytes {
        self.engine_metadata_json.clone()
    }

    /// `{"engine": uuid}`: the metadata ipyparallel engines put on messages they send by type.
    pub(crate) fn engine_metadata(&self) -> JsonMap {
        let mut md = JsonMap::new();
        md.insert("engine".into(), json!(self.identity.uuid));
        md
    }
}

/// A request's `status: busy`, signed (and dated) when the request starts but published
/// only once something needs it: before the request's first output, once it has run for
/// a while (see `request.rs`), or together with its `status: idle`, in one write, when
/// it ends sooner. A no-op request then costs its engine, the controller's IOPub relay
/// and every subscribed client one write and one wake-up fewer. Order on IOPub is kept
/// (busy, outputs, idle); only the reply, on another socket, may now arrive before busy,
/// which no ipyparallel client relies on (sockets never ordered messages between them).
#[derive(Debug)]
pub(crate) struct PendingBusy {
    /// `None` once published.
    frames: tokio::sync::Mutex<Option<Frames>>,
}

impl PendingBusy {
    pub(crate) fn new(frames: Frames) -> Arc<Self> {
        Arc::new(Self {
            frames: tokio::sync::Mutex::new(Some(frames)),
        })
    }

    /// Publishes busy now unless it already was. Whoever publishes after this returns
    /// publishes after busy (the slot stays locked until busy is handed to the socket).
    pub(crate) async fn publish(&self, publisher: &Publisher) {
        let mut slot = self.frames.lock().await;
        if let Some(frames) = slot.take() {
            if let Err(err) = publisher.iopub.send(frames).await {
                tracing::debug!(error = %err, "status not published: the engine is stopping");
            }
        }
    }

    /// Publishes `idle`, preceded by busy if that is still pending (both in one write).
    pub(crate) async fn publish_with_idle(&self, publisher: &Publisher, idle: Frames) {
        let mut slot = self.frames.lock().await;
        let sent = match slot.take() {
            Some(busy) => publisher.iopub.send_batch(vec![busy, idle]).await,
            None => publisher.iopub.send(idle).await,
        };
        if let Err(err) = sent {
            tracing::debug!(error = %err, "status not published: the engine is stopping");
        }
    }
}

/// Where an executor sends the current request's output: stdout/stderr text and display
/// data, published on IOPub with the request as parent (so clients attach it to the right
/// result) under the topics `engine.<id>.stdout`, `engine.<id>.stderr` and
/// `engine.<id>.displaypub`.
#[derive(Clone, Debug)]
pub struct Outputs {
    publisher: Publisher,
    /// The request's header as JSON: the parent header of what is published.
    parent: Bytes,
    msg_id: Arc<str>,
    /// Published before the first output.
    busy: Arc<PendingBusy>,
}

impl Outputs {
    pub(crate) fn new(
        publisher: Publisher,
        parent: &Message,
        parent_json: Bytes,
        busy: Arc<PendingBusy>,
    ) -> Self {
        Self {
            publisher,
            parent: parent_json,
            msg_id: Arc::from(parent.header.msg_id.as_str()),
            busy,
        }
    }

    /// Publishes one output of the request, after its `status: busy`.
    async fn publish(
        &self,
        topic: &str,
        msg_type: &str,
        content: Value,
        metadata: JsonMap,
    ) -> Result<()> {
        self.busy.publish(&self.publisher).await;
        self.publisher
            .publish(topic, msg_type, &self.parent, content, metadata)
            .await
    }

    /// The engine's id (as the controller assigned it).
    pub fn engine_id(&self) -> u32 {
        self.publisher.identity.id()
    }

    /// The engine's uuid.
    pub fn engine_uuid(&self) -> &str {
        &self.publisher.identity.uuid
    }

    /// The `msg_id` of the request being run.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// Publishes `text` on a stream (`stdout` or `stderr`), waiting while the IOPub queue is
    /// full.
    ///
    /// # Errors
    /// [`crate::Error::Closed`] when the engine is stopping.
    pub async fn stream(&self, name: &str, text: &str) -> Result<()> {
        self.publish(
            name,
            "stream",
            json!({"name": name, "text": text}),
            JsonMap::new(),
        )
        .await
    }

    /// Publishes `text` on stdout.
    ///
    /// # Errors
    /// As [`Outputs::stream`].
    pub async fn stdout(&self, text: &str) -> Result<()> {
        self.stream("stdout", text).await
    }

    /// Publishes `text` on stderr.
    ///
    /// # Errors
    /// As [`Outputs::stream`].
    pub async fn stderr(&self, text: &str) -> Result<()> {
        self.stream("stderr", text).await
    }

    /// Publishes `execute_input {code, execution_count}` (topic `engine.<id>.execute_input`),
    /// as ipykernel does before running a non-silent `execute_request`.
    ///
    /// # Errors
    /// As [`Outputs::stream`].
    pub async fn execute_input(&self, code: &str, execution_count: u64) -> Result<()> {
        self.publish(
            "execute_input",
            "execute_input",
            json!({"code": code, "execution_count": execution_count}),
            self.publisher.engine_metadata(),
        )
        .await
    }

    /// Publishes `execute_result {data, metadata, execution_count}` (topic
    /// `engine.<id>.execute_result`): the value of a code string's last expression.
    ///
    /// # Errors
    /// As [`Outputs::stream`].
    pub async fn execute_result(
        &self,
        data: JsonMap,
        metadata: JsonMap,
        execution_count: u64,
    ) -> Result<()> {
        self.publish(
            "execute_result",
            "execute_result",
            json!({"data": data, "metadata": metadata, "execution_count": execution_count}),
            JsonMap::new(),
        )
        .await
    }

    /// Publishes a `display_data` message (`data` maps MIME types to representations, e.g.
    /// `{"text/plain": "…"}`).
    ///
    /// # Errors
    /// As [`Outputs::stream`].
    pub async fn display_data(&self, data: JsonMap, metadata: JsonMap) -> Result<()> {
        self.publish(
            "displaypub",
            "display_data",
            json!({"data": data, "metadata": metadata, "transient": {}}),
            JsonMap::new(),
        )
        .await
    }
}
