//! The Rust client: connect to a controller, run registered Rust functions on engines
//! directly or load-balanced, and query the Hub — with no Python anywhere.
//!
//! A [`Client`] connects by value ([`Client::connect`]), by connection file
//! ([`Client::from_file`]) or to a controller in the same process
//! ([`Client::from_controller`]). Views submit work and return [`AsyncResult`]s:
//!
//! - [`DirectView`] ([`Client::direct_view`], [`Client::view_all`]): explicit engines, one
//!   request per engine; `apply`, `map`, `push`/`pull`, `scatter`/`gather`, `abort`;
//! - [`LoadBalancedView`] ([`Client::load_balanced_view`]): the task scheduler picks the
//!   engine; `apply`, `map` (chunked, ordered or not) with `after`/`follow`/`timeout`/
//!   `targets`/`retries` flags;
//! - [`BroadcastView`] ([`Client::broadcast_view`]): one request fanned out to many engines,
//!   replies optionally coalesced.
//!
//! Calls name a function registered on the engines and pass one serde argument, encoded
//! with a [`Serializer`](crate::serialize::Serializer) (bincode unless you choose another
//! with `apply_with`). [`BlockingClient`] offers the same for programs without an async
//! runtime.
//!
//! ```
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use ipp_core::client::Client;
//! # use ipp_core::controller::{Controller, ControllerConfig};
//! # use ipp_core::transport::MemoryTransport;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let transport = Arc::new(MemoryTransport::new());
//! let controller = Controller::builder(ControllerConfig::default())
//!     .with_transport(transport.clone())
//!     .start()
//!     .await?;
//! let client = Client::from_controller(&controller, transport).await?;
//! // Engines would register here; with none, a load-balanced task waits for one,
//! // and queries answer right away.
//! assert!(client.ids().is_empty());
//! let status = client.queue_status(None, false).await?;
//! assert!(status.engines.is_empty());
//! client.close().await;
//! controller.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Engine death, controller loss and reconnection
//!
//! - A direct, broadcast or control request outstanding on an engine that unregisters fails
//!   with a client-made `EngineError` ([`ClientError::Remote`], ename `EngineError`,
//!   evalue `Engine <id> died while running task '<msg_id>'`), as ipyparallel does (§4.4).
//!   Load-balanced tasks are failed (or retried) by the controller's scheduler.
//! - The client pings the Hub every [`ClientConfig::liveness_interval`]. When a ping stays
//!   unanswered for [`ClientConfig::liveness_timeout`], the client marks the controller
//!   [`ConnectionState::Unreachable`] and fails every outstanding request with
//!   [`ClientError::ControllerLost`] (the request may or may not have run; a late reply is
//!   discarded). While unreachable, new requests fail at once with
//!   [`ClientError::ControllerUnreachable`] and are not sent. The sockets reconnect by
//!   themselves; when a ping is answered again the client takes the engine list from that
//!   answer and accepts requests again. Nothing is lost silently: every request ends with
//!   a reply or one of these errors (or [`ClientError::RequestTimeout`] when
//!   [`ClientConfig::request_timeout`] is set).
//! - A `shutdown_notification` closes the client: outstanding requests fail with
//!   [`ClientError::ControllerShutdown`].
//! - Dropping the last handle of a client (or [`Client::close`]) stops its IO task;
//!   outstanding results fail with [`ClientError::Closed`].
//!
//! # Raw requests
//!
//! [`Client::send_raw`] sends any message type with caller-packed JSON content and metadata
//! on the mux, task, broadcast or control socket, and keeps each reply whole, with its IOPub
//! output, in [`Client::raw_replies`] until forgotten; [`Client::query_raw`] does the same
//! for Hub queries. The failures above become synthetic error replies there, so every raw
//! request ends with exactly one reply (see [`RawReplies`]). The `ipp_rs` Python package
//! builds its client on this.

mod balanced;
mod blocking;
mod broadcast;
mod call;
mod error;
mod hub;
mod io;
mod raw;
mod result;
mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_raw;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use blocking::{
    BlockingBroadcastView, BlockingClient, BlockingDirectView, BlockingLoadBalancedView,
};
pub use error::{ClientError, ClientResult};
pub use hub::{EngineQueue, Purge, QueueEntry, QueueStatus, ResultStatus};
pub use raw::{
    Completions, RawChannel, RawOutput, RawReplies, RawReply, RawRequest, UnknownChannel, WaitEnd,
    WAIT_TICK,
};
pub use result::{AsyncResult, Many, One, ResultStream, TaskMetadata};
pub use view::{BroadcastView, DirectView, LoadBalancedView, MapOptions};

use self::io::{Channel, Command, Outgoing, Route, Sink};
use crate::controller::Controller;
use crate::error::Error;
use crate::protocol::{ClientConnectionInfo, Message, Session, SigningKey, WireMessage};
use crate::transport::{SocketKind, SocketOptions, Transport};

/// Engine id → engine uuid, as the client knows them.
pub type EngineMap = BTreeMap<u32, String>;

/// Whether the client can reach its controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The Hub answers.
    Connected,
    /// A liveness ping went unanswered; requests fail until the Hub answers again.
    Unreachable,
    /// The controller announced its shutdown; the client is closed.
    Shutdown,
    /// The client was closed.
    Closed,
}

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long to wait for the Hub's `connection_reply`. Default 10 s.
    pub connect_timeout: Duration,
    /// How long to wait for a Hub query or control reply. Default 10 s.
    pub reply_timeout: Duration,
    /// Fail a request with [`ClientError::RequestTimeout`] if no reply came within this
    /// time. Default: none (tasks may run for as long as they need).
    pub request_timeout: Option<Duration>,
    /// How often to ping the Hub. Default 2 s; `None` disables liveness checks.
    pub liveness_interval: Option<Duration>,
    /// How long a ping may stay unanswered before the Hub counts as unreachable. Default 10 s.
    pub liveness_timeout: Duration,
    /// Capacity, in messages, of each socket queue and each writer queue. Default 65 536.
    pub queue_capacity: usize,
    /// Capacity, in batches, of the queue from client handles to the IO task. Default 1024.
    pub command_capacity: usize,
    /// How many finished requests keep collecting late IOPub output (for as long as their
    /// `AsyncResult` is held: a dropped result is freed at once). Default 4096.
    pub output_retention: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(10),
            request_timeout: None,
            liveness_interval: Some(Duration::from_secs(2)),
            liveness_timeout: Duration::from_secs(10),
            queue_capacity: 65_536,
            command_capacity: 1024,
            output_retention: 4096,
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::reply_timeout`].
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::liveness_interval`] and [`ClientConfig::liveness_timeout`].
    pub fn with_liveness(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.liveness_interval = interval;
        self.liveness_timeout = timeout;
        self
    }

    /// Sets [`ClientConfig::queue_capacity`].
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    fn housekeeping_interval(&self) -> Duration {
        io::housekeeping_interval(self)
    }
}

/// A connection to a controller. Cheap to clone; the connection closes when the last
/// clone (including those inside views) is dropped, or on [`Client::close`].
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    session: Arc<Session>,
    config: ClientConfig,
    commands: mpsc::Sender<Command>,
    engines: watch::Receiver<EngineMap>,
    state: watch::Receiver<ConnectionState>,
    stop: CancellationToken,
    io: Mutex<Option<JoinHandle<()>>>,
    raw: RawReplies,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The IO task owns the sockets; it stops and fails what is outstanding.
        self.stop.cancel();
    }
}

/// `interface:port`, with a wildcard interface replaced by loopback.
fn address(info: &ClientConnectionInfo, port: u16) -> String {
    let interface = info
        .interface
        .replace("tcp://0.0.0.0", "tcp://127.0.0.1")
        .replace("tcp://*", "tcp://127.0.0.1");
    format!("{interface}:{port}")
}

impl Client {
    /// Connects with default settings (see [`Client::connect_with`]).
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn connect(
        info: ClientConnectionInfo,
        transport: Arc<dyn Transport>,
    ) -> ClientResult<Self> {
        Self::connect_with(info, transport, ClientConfig::default()).await
    }

    /// Reads `ipcontroller-client.json` and connects with default settings.
    ///
    /// # Errors
    /// [`ClientError::Core`] when the file cannot be read or parsed; as
    /// [`Client::connect_with`] otherwise.
    pub async fn from_file(
        path: impl AsRef<Path>,
        transport: Arc<dyn Transport>,
    ) -> ClientResult<Self> {
        let path = path.as_ref();
        let text = tokio::fs::read(path).await.map_err(|source| Error::Io {
            operation: format!("reading {}", path.display()),
            source,
        })?;
        let info: ClientConnectionInfo = serde_json::from_slice(&text).map_err(|err| {
            Error::Config(format!(
                "{} is not a client connection file: {err}",
                path.display()
            ))
        })?;
        Self::connect(info, transport).await
    }

    /// Connects to a controller running in this process (on the same transport, or over
    /// TCP with another transport).
    ///
    /// # Errors
    /// As [`Client::connect_with`].
    pub async fn from_controller(
        controller: &Controller,
        transport: Arc<dyn Transport>,
    ) -> ClientResult<Self> {
        Self::connect(controller.client_info().clone(), transport).await
    }

    /// Sends `connection_request`, waits for the reply, then connects the other sockets and
    /// starts the IO task.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when the Hub does not answer within
    /// [`ClientConfig::connect_timeout`]; [`ClientError::Remote`] when it refuses;
    /// [`ClientError::Core`] when a socket cannot be opened.
    pub async fn connect_with(
        info: ClientConnectionInfo,
        transport: Arc<dyn Transport>,
        config: ClientConfig,
    ) -> ClientResult<Self> {
        let session = Arc::new(Session::new(SigningKey::new(info.key.as_bytes())));
        let options = SocketOptions::default().with_queue_capacity(config.queue_capacity);
        let sub = options.clone().with_subscription(Bytes::new());
        // Subscribe first, so no registration published after the reply is missed, and
        // no output of this client's first request either (a subscription takes effect at
        // the publisher a moment after the connection: the connection round trip covers it).
        let notification = transport
            .connect(
                SocketKind::Sub,
                &address(&info, info.notification),
                sub.clone(),
            )
            .await?;
        let iopub = transport
            .connect(SocketKind::Sub, &address(&info, info.iopub), sub)
            .await?;
        let mut query = transport
            .connect(
                SocketKind::Dealer,
                &address(&info, info.registration),
                options.clone(),
            )
            .await?;
        let request = session.message("connection_request", json!({}));
        let request_id = request.header.msg_id.clone();
        query.send(session.serialize(&request)).await?;
        let reply = tokio::time::timeout(config.connect_timeout, async {
            loop {
                let frames = query.recv().await?;
                let Ok(wire) = WireMessage::split(frames) else {
                    continue;
                };
                if session.verify(&wire).is_err() {
                    tracing::warn!("dropped a badly signed message while connecting (wrong key?)");
                    continue;
                }
                let Ok(msg) = wire.parse() else { continue };
                if msg.parent_msg_id() == Some(request_id.as_str()) {
                    return Ok::<Message, Error>(msg);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout {
            what: "the controller's connection_reply",
            after: config.connect_timeout,
        })??;
        if reply.content_map().get("status").and_then(|s| s.as_str()) != Some("ok") {
            return Err(ClientError::Remote(Box::new(
                crate::protocol::RemoteError::from_content(reply.content_map()),
            )));
        }
        let engines = io::engines_from_reply(reply.content_map());
        tracing::info!(engines = engines.len(), registration = %address(&info, info.registration), "client connected");

        let mux = transport
            .connect(
                SocketKind::Dealer,
                &address(&info, info.mux),
                options.clone(),
            )
            .await?;
        let task = transport
            .connect(
                SocketKind::Dealer,
                &address(&info, info.task),
                options.clone(),
            )
            .await?;
        let broadcast = transport
            .connect(
                SocketKind::Dealer,
                &address(&info, info.broadcast),
                options.clone(),
            )
            .await?;
        let control = transport
            .connect(SocketKind::Dealer, &address(&info, info.control), options)
            .await?;

        let (query_tx, query_rx) = query.split();
        let (mux_tx, mux_rx) = mux.split();
        let (task_tx, task_rx) = task.split();
        let (broadcast_tx, broadcast_rx) = broadcast.split();
        let (control_tx, control_rx) = control.split();
        let (_, notification_rx) = notification.split();
        let (_, iopub_rx) = iopub.split();
        let (commands_tx, commands_rx) = mpsc::channel(config.command_capacity.max(1));
        let (engines_tx, engines_rx) = watch::channel(engines);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected);
        let stop = CancellationToken::new();
        let raw = RawReplies::new();
        let handle = tokio::spawn(io::run(io::IoParts {
            config: config.clone(),
            session: Arc::clone(&session),
            senders: [query_tx, mux_tx, task_tx, broadcast_tx, control_tx],
            receivers: io::Receivers {
                query: query_rx,
                mux: mux_rx,
                task: task_rx,
                broadcast: broadcast_rx,
                control: control_rx,
                notification: notification_rx,
                iopub: iopub_rx,
            },
            commands: commands_rx,
            engines: engines_tx,
            state: state_tx,
            stop: stop.clone(),
            raw: Arc::clone(raw.shared()),
        }));
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                config,
                commands: commands_tx,
                engines: engines_rx,
                state: state_rx,
                stop,
                io: Mutex::new(Some(handle)),
                raw,
            }),
        })
    }

    /// The client's session id (the `session` of every request it sends).
    pub fn session_id(&self) -> &str {
        self.inner.session.id()
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Whether the controller is reachable.
    pub fn connection_state(&self) -> ConnectionState {
        *self.inner.state.borrow()
    }

    /// Waits until the controller is reachable (after it came back, see the module docs).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after `timeout`; [`ClientError::Closed`] or
    /// [`ClientError::ControllerShutdown`] if the client closes meanwhile.
    pub async fn wait_connected(&self, timeout: Duration) -> ClientResult<()> {
        let mut state = self.inner.state.clone();
        let waited = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected
                        | ConnectionState::Shutdown
                        | ConnectionState::Closed
                )
            }),
        )
        .await;
        match waited {
            Ok(Ok(state)) if *state == ConnectionState::Connected => Ok(()),
            Ok(_) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                what: "the controller to answer",
                after: timeout,
            }),
        }
    }

    /// The registered engines' ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.inner.engines.borrow().keys().copied().collect()
    }

    /// The registered engines: id → uuid.
    pub fn engines(&self) -> EngineMap {
        self.inner.engines.borrow().clone()
    }

    /// Waits until at least `n` engines are registered.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] after `timeout`; [`ClientError::Closed`] if the client closes.
    pub async fn wait_for_engines(&self, n: usize, timeout: Duration) -> ClientResult<Vec<u32>> {
        let mut engines = self.inner.engines.clone();
        let waited = tokio::time::timeout(timeout, engines.wait_for(|map| map.len() >= n)).await;
        match waited {
            Ok(Ok(map)) => Ok(map.keys().copied().collect()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                what: "engines to register",
                after: timeout,
            }),
        }
    }

    /// Stops the IO task and waits for it; outstanding results fail with
    /// [`ClientError::Closed`]. Other handles of this client stop working too.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let handle = self
            .inner
            .io
            .lock()
            .map(|mut slot| slot.take())
            .unwrap_or_default();
        if let Some(handle) = handle {
            if let Err(err) = handle.await {
                tracing::warn!(error = %err, "client IO task failed");
            }
        }
    }

    /// A view on the given engines.
    pub fn direct_view(&self, targets: &[u32]) -> DirectView {
        DirectView::new(self.clone(), Some(targets.to_vec()))
    }

    /// A view on every engine registered at the time of each call.
    pub fn view_all(&self) -> DirectView {
        DirectView::new(self.clone(), None)
    }

    /// A load-balanced view.
    pub fn load_balanced_view(&self) -> LoadBalancedView {
        LoadBalancedView::new(self.clone())
    }

    /// A broadcast view on every engine registered at the time of each call.
    pub fn broadcast_view(&self, coalescing: bool) -> BroadcastView {
        BroadcastView::new(self.clone(), None, coalescing)
    }

    pub(crate) fn session(&self) -> &Session {
        &self.inner.session
    }

    fn closed_error(&self) -> ClientError {
        match self.connection_state() {
            ConnectionState::Shutdown => ClientError::ControllerShutdown,
            _ => ClientError::Closed,
        }
    }

    /// [`ClientError::ControllerShutdown`] or [`ClientError::Closed`] once the client is
    /// closed, even while its IO task is still winding down.
    pub(crate) fn ensure_open(&self) -> ClientResult<()> {
        match self.connection_state() {
            ConnectionState::Shutdown | ConnectionState::Closed => Err(self.closed_error()),
            ConnectionState::Connected | ConnectionState::Unreachable => Ok(()),
        }
    }

    /// Hands a batch to the IO task (waiting while its queue is full).
    pub(crate) async fn submit(&self, batch: Vec<Outgoing>) -> ClientResult<()> {
        self.ensure_open()?;
        self.inner
            .commands
            .send(Command::Send(batch))
            .await
            .map_err(|_| self.closed_error())
    }

    /// Resolves engine ids (or every engine for `None`) to `(id, uuid)`.
    pub(crate) fn resolve(&self, targets: Option<&[u32]>) -> ClientResult<Vec<(u32, String)>> {
        let map = self.inner.engines.borrow();
        let resolved: Vec<(u32, String)> = match targets {
            None => map.iter().map(|(id, uuid)| (*id, uuid.clone())).collect(),
            Some(ids) => ids
                .iter()
                .map(|id| {
                    map.get(id)
                        .map(|uuid| (*id, uuid.clone()))
                        .ok_or(ClientError::UnknownEngine(*id))
                })
                .collect::<ClientResult<_>>()?,
        };
        if resolved.is_empty() {
            return Err(ClientError::NoEngines(String::new()));
        }
        Ok(resolved)
    }

    /// Sends one message expecting one reply, and waits for it (with the reply timeout).
    pub(crate) async fn request(
        &self,
        channel: Channel,
        idents: Vec<Bytes>,
        msg: Message,
        engine: Option<u32>,
    ) -> ClientResult<Message> {
        let msg_id = msg.header.msg_id.clone();
        let mut msg = msg;
        msg.idents = idents;
        let frames = self.session().serialize(&msg);
        let (tx, rx) = oneshot::channel();
        let engines = match engine {
            Some(id) => io::OnEngines::One(id),
            None => io::OnEngines::None,
        };
        self.submit(vec![Outgoing {
            channel,
            frames,
            routes: vec![(
                msg_id,
                Route {
                    sink: Sink::Reply(tx),
                    engines,
                },
            )],
        }])
        .await?;
        let timeout = self.inner.config.reply_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(ClientError::Timeout {
                what: "a reply from the controller",
                after: timeout,
            }),
        }
    }
}
