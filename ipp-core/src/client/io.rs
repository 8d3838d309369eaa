//! The client's IO task: it owns the receiving halves of every socket, matches replies to
//! requests by parent `msg_id`, keeps the engine map from notifications, and watches the
//! Hub's liveness. It offers each message to its socket itself, without waiting.
//!
//! Why the IO task never awaits a send: a controller relay that cannot deliver a reply to
//! us stops reading our requests, so an IO task blocked on a full send queue (and therefore
//! not reading replies) could deadlock with it. Sends are offered to the sockets
//! ([`SocketSender::offer`]); when a socket is full the IO task keeps the message in an
//! ordered backlog, stops taking new commands (that is the back-pressure submitters feel),
//! and goes on reading replies until the socket has room ([`SocketSender::ready`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{engine_died, ClientError, ClientResult, Failure};
use super::raw::{is_idle_status, RawReply, RawShared};
use super::result::{Outcome, ResultShared};
use super::{ClientConfig, ConnectionState, EngineMap};
use crate::protocol::{date, Message, Session, WireMessage};
use crate::transport::{Frames, Refused, SocketReceiver, SocketSender};

/// How many messages one socket's branch takes per wake-up before the loop looks elsewhere.
const RECV_BATCH: usize = 256;
/// How many liveness pings we remember answers for.
const MAX_PINGS: usize = 16;
/// After the controller answers again, how long its ping answers (rather than only the
/// notifications, which our SUB may miss while it reconnects) define the engine list.
const RESYNC_WINDOW: Duration = Duration::from_secs(30);

/// The outgoing sockets, indexed by `Channel::index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// Hub queries (registration ROUTER).
    Query,
    /// Direct requests.
    Mux,
    /// Load-balanced requests.
    Task,
    /// Broadcast requests.
    Broadcast,
    /// Control requests (abort, shutdown).
    Control,
}

impl Channel {
    fn index(self) -> usize {
        match self {
            Self::Query => 0,
            Self::Mux => 1,
            Self::Task => 2,
            Self::Broadcast => 3,
            Self::Control => 4,
        }
    }
}

/// Where a reply goes.
#[derive(Debug)]
pub(crate) enum Sink {
    /// A slot of an [`AsyncResult`](super::AsyncResult).
    Result {
        shared: Arc<ResultShared>,
        index: usize,
    },
    /// A slot of a result that has its reply: kept only for late output, and weakly, so a
    /// result its user dropped is freed at once (a pulled 100 MB array among them) rather
    /// than when the route is forgotten.
    Finished {
        shared: Weak<ResultShared>,
        index: usize,
    },
    /// A one-off waiter (Hub queries, control requests).
    Reply(oneshot::Sender<ClientResult<Message>>),
    /// A raw request (see [`super::raw`]): the reply goes whole to the client's store.
    Raw {
        /// The request's packed header, for a synthetic reply.
        request: Bytes,
    },
}

/// The engines a request is outstanding on: it fails if one of them dies (direct, broadcast
/// and control requests; load-balanced ones are failed by the scheduler).
#[derive(Clone, Debug)]
pub(crate) enum OnEngines {
    /// None tracked.
    None,
    /// One engine.
    One(u32),
    /// Several (a coalescing broadcast).
    Many(Arc<[u32]>),
}

impl OnEngines {
    fn first(&self) -> Option<u32> {
        match self {
            Self::None => None,
            Self::One(id) => Some(*id),
            Self::Many(ids) => ids.first().copied(),
        }
    }

    fn contains(&self, id: u32) -> bool {
        match self {
            Self::None => false,
            Self::One(one) => *one == id,
            Self::Many(ids) => ids.contains(&id),
        }
    }
}

/// A request waiting for its reply.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) sink: Sink,
    pub(crate) engines: OnEngines,
}

/// One message to send and the replies it expects.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) channel: Channel,
    pub(crate) frames: Frames,
    /// Reply routes keyed by the `msg_id` the reply's parent will carry.
    pub(crate) routes: Vec<(String, Route)>,
}

/// What client handles ask of the IO task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Register the routes, then send the messages, in order.
    Send(Vec<Outgoing>),
}

/// The receiving halves the IO task reads.
#[derive(Debug)]
pub(crate) struct Receivers {
    pub(crate) query: SocketReceiver,
    pub(crate) mux: SocketReceiver,
    pub(crate) task: SocketReceiver,
    pub(crate) broadcast: SocketReceiver,
    pub(crate) control: SocketReceiver,
    pub(crate) notification: SocketReceiver,
    pub(crate) iopub: SocketReceiver,
}

/// Everything the IO task is started with.
#[derive(Debug)]
pub(crate) struct IoParts {
    pub(crate) config: ClientConfig,
    pub(crate) session: Arc<Session>,
    /// Senders in [`Channel::ALL`] order.
    pub(crate) senders: [SocketSender; 5],
    pub(crate) receivers: Receivers,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) engines: watch::Sender<EngineMap>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) stop: CancellationToken,
    /// Where replies of raw requests go.
    pub(crate) raw: Arc<RawShared>,
}

#[derive(Debug)]
struct Entry {
    route: Route,
    /// The reply arrived; the entry stays only so late IOPub output finds its slot.
    done: bool,
}

#[derive(Deserialize)]
struct ParentRef<'a> {
    #[serde(borrow, default)]
    msg_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    session: Option<std::borrow::Cow<'a, str>>,
}

struct Io {
    config: ClientConfig,
    session: Arc<Session>,
    writers: [SocketSender; 5],
    backlog: VecDeque<(Channel, Frames)>,
    routes: HashMap<String, Entry>,
    /// Finished routes kept for late output, oldest first.
    recent: VecDeque<String>,
    deadlines: VecDeque<(Instant, String)>,
    engines: watch::Sender<EngineMap>,
    uuids: HashMap<Bytes, u32>,
    state: watch::Sender<ConnectionState>,
    pings: VecDeque<String>,
    ping_sent: Option<Instant>,
    last_ping: Option<Instant>,
    resync_until: Option<Instant>,
    warned_bad_signature: bool,
    finished: bool,
    raw: Arc<RawShared>,
}

/// Runs the IO task until `stop` is cancelled, every client handle is gone, or the
/// controller announces its shutdown. Outstanding requests then fail with a clear error.
pub(crate) async fn run(parts: IoParts) {
    let IoParts {
        config,
        session,
        senders,
        receivers,
        mut commands,
        engines,
        state,
        stop,
        raw,
    } = parts;
    let Receivers {
        mut query,
        mut mux,
        mut task,
        mut broadcast,
        mut control,
        mut notification,
        mut iopub,
    } = receivers;
    // The IO task offers each message to its socket itself (never waiting: see the module
    // docs); a writer task per socket only moved messages from one queue to another.
    let writers = senders;
    let uuids = engines
        .borrow()
        .iter()
        .map(|(id, uuid)| (Bytes::from(uuid.clone()), *id))
        .collect();
    let mut io = Io {
        config,
        session,
        writers,
        backlog: VecDeque::new(),
        routes: HashMap::new(),
        recent: VecDeque::new(),
        deadlines: VecDeque::new(),
        engines,
        uuids,
        state,
        pings: VecDeque::new(),
        ping_sent: None,
        last_ping: Some(Instant::now()),
        resync_until: None,
        warned_bad_signature: false,
        finished: false,
        raw,
    };
    let mut tick = tokio::time::interval(io.config.housekeeping_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Frames> = Vec::with_capacity(RECV_BATCH);
    let mut exit_failure = Failure::Closed;
    while !io.finished {
        // The writer the head of the backlog waits for (a clone: the future owns it).
        let blocked = io
            .backlog
            .front()
            .map(|(channel, _)| io.writers[channel.index()].clone());
        // Every branch is cancel-safe: token `cancelled`, mpsc and socket `recv` (a message
        // is returned or stays queued), interval `tick`, and `reserve_owned` (we only lose
        // our place in the writer's queue, and we are its only sender).
        tokio::select! {
            () = stop.cancelled() => break,
            command = commands.recv(), if io.backlog.is_empty() => match command {
                Some(Command::Send(batch)) => io.send_batch(batch),
                None => break,
            },
            ready = async { blocked?.ready().await.ok() }, if blocked.is_some() => {
                match ready {
                    Some(()) => io.flush_backlog(),
                    None => break, // a socket is gone
                }
            }
            frames = query.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                query.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_reply(Channel::Query, frames); }
            }
            frames = mux.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                mux.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_reply(Channel::Mux, frames); }
            }
            frames = task.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                task.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_reply(Channel::Task, frames); }
            }
            frames = broadcast.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                broadcast.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_reply(Channel::Broadcast, frames); }
            }
            frames = control.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                control.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_reply(Channel::Control, frames); }
            }
            frames = notification.recv() => {
                let Ok(frames) = frames else { break };
                if let Some(failure) = io.on_notification(frames) {
                    exit_failure = failure;
                }
            }
            frames = iopub.recv() => {
                let Ok(frames) = frames else { break };
                batch.push(frames);
                iopub.drain_ready(RECV_BATCH, &mut batch);
                for frames in batch.drain(..) { io.on_iopub(frames); }
            }
            _ = tick.tick() => io.housekeeping(),
        }
    }
    if matches!(exit_failure, Failure::Closed) {
        io.set_state(ConnectionState::Closed);
    }
    io.fail_all(&exit_failure);
    // Batches queued but not taken yet fail too, so no result waits forever.
    commands.close();
    while let Ok(Command::Send(batch)) = commands.try_recv() {
        for outgoing in batch {
            for (msg_id, route) in outgoing.routes {
                fail_route(&io.raw, route, &msg_id, &exit_failure);
            }
        }
    }
    drop(io);
    tracing::debug!("client IO task stopped");
}

impl Io {
    fn set_state(&self, state: ConnectionState) {
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn connection_state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    fn send_batch(&mut self, batch: Vec<Outgoing>) {
        let state = self.connection_state();
        for outgoing in batch {
            if state != ConnectionState::Connected {
                let failure = match state {
                    ConnectionState::Shutdown => Failure::ControllerShutdown,
                    ConnectionState::Closed => Failure::Closed,
                    _ => Failure::ControllerUnreachable,
                };
                for (msg_id, route) in outgoing.routes {
                    fail_route(&self.raw, route, &msg_id, &failure);
                }
                continue;
            }
            let now = Instant::now();
            for (msg_id, route) in outgoing.routes {
                if let Some(timeout) = self.config.request_timeout {
                    self.deadlines.push_back((now + timeout, msg_id.clone()));
                }
                self.routes.insert(msg_id, Entry { route, done: false });
            }
            self.send(outgoing.channel, outgoing.frames);
        }
    }

    /// Hands a message to its socket, or to the backlog if the socket (or the backlog) is
    /// full.
    fn send(&mut self, channel: Channel, frames: Frames) {
        if !self.backlog.is_empty() {
            self.backlog.push_back((channel, frames));
            return;
        }
        match self.writers[channel.index()].offer(frames) {
            Ok(()) => {}
            Err(Refused::Full(frames)) => self.backlog.push_back((channel, frames)),
            Err(Refused::Closed) => {
                tracing::debug!(?channel, "client socket closed; message dropped");
            }
        }
    }

    /// Moves backlog messages to their sockets until one is full again.
    fn flush_backlog(&mut self) {
        while let Some((channel, frames)) = self.backlog.pop_front() {
            match self.writers[channel.index()].offer(frames) {
                Ok(()) => {}
                Err(Refused::Full(frames)) => {
                    self.backlog.push_front((channel, frames));
                    return;
                }
                Err(Refused::Closed) => {}
            }
        }
    }

    fn verify(&mut self, wire: &WireMessage) -> bool {
        match self
            .session
            .verify(wire)
            .and_then(|()| self.session.remember_signature(wire))
        {
            Ok(()) => true,
            Err(err) => {
                if !self.warned_bad_signature {
                    self.warned_bad_signature = true;
                    tracing::warn!(error = %err, "dropped a badly signed or replayed message");
                }
                false
            }
        }
    }

    /// Routes a reply by its parent `msg_id` (the hot path: only the parent header is parsed).
    fn on_reply(&mut self, channel: Channel, frames: Frames) {
        let wire = match WireMessage::split(frames) {
            Ok(wire) => wire,
            Err(err) => {
                tracing::debug!(error = %err, ?channel, "dropped a malformed reply");
                return;
            }
        };
        if !self.verify(&wire) {
            return;
        }
        let parent_bytes = wire.parent_header.clone();
        let Ok(parent) = serde_json::from_slice::<ParentRef<'_>>(&parent_bytes) else {
            tracing::debug!(?channel, "dropped a reply with an unreadable parent header");
            return;
        };
        let Some(parent_id) = parent.msg_id else {
            tracing::debug!(?channel, "dropped a reply without a parent");
            return;
        };
        if channel == Channel::Query && self.pings.iter().any(|p| *p == parent_id) {
            self.on_pong(wire);
            return;
        }
        let mut key: Option<String> = None;
        if !self.routes.contains_key(parent_id.as_ref()) && channel == Channel::Broadcast {
            // A coalesced broadcast reply carries the last target's sub-id as its parent;
            // the request is keyed by `original_msg_id`.
            key = wire
                .parse_metadata()
                .ok()
                .and_then(|m| m.get("original_msg_id")?.as_str().map(str::to_owned));
        }
        let key: &str = key.as_deref().unwrap_or(parent_id.as_ref());
        let engine_from_ident = wire
            .idents
            .first()
            .and_then(|id| self.uuids.get(id).copied());
        let Some(entry) = self.routes.get_mut(key) else {
            tracing::debug!(
                msg_id = key,
                ?channel,
                "reply to an unknown or finished request"
            );
            return;
        };
        if entry.done {
            return;
        }
        match &entry.route.sink {
            Sink::Result { shared, index } => {
                let engine = engine_from_ident.or(match &entry.route.engines {
                    OnEngines::One(id) => Some(*id),
                    _ => None,
                });
                shared.complete(
                    *index,
                    Outcome::Reply {
                        wire,
                        engine,
                        received: date::now(),
                    },
                );
                entry.done = true;
                let key = key.to_owned();
                self.retire(key);
            }
            Sink::Reply(_) => {
                if let Some(Entry {
                    route:
                        Route {
                            sink: Sink::Reply(reply),
                            ..
                        },
                    ..
                }) = self.routes.remove(key)
                {
                    let _ = reply.send(wire.parse().map_err(ClientError::from));
                }
            }
            Sink::Raw { .. } => {
                // Late IOPub output finds the request in the store, not here.
                self.routes.remove(key);
                self.raw.complete(RawReply::from_wire(key.to_owned(), wire));
            }
            Sink::Finished { .. } => {} // done: returned above
        }
    }

    /// Keeps a finished route for late output, forgetting the oldest beyond the limit.
    fn retire(&mut self, key: String) {
        if let Some(entry) = self.routes.get_mut(&key) {
            if let Sink::Result { shared, index } = &entry.route.sink {
                entry.route.sink = Sink::Finished {
                    shared: Arc::downgrade(shared),
                    index: *index,
                };
            }
        }
        self.recent.push_back(key);
        while self.recent.len() > self.config.output_retention {
            if let Some(old) = self.recent.pop_front() {
                if self.routes.get(&old).is_some_and(|e| e.done) {
                    self.routes.remove(&old);
                }
            }
        }
    }

    fn on_pong(&mut self, wire: WireMessage) {
        self.ping_sent = None;
        let now = Instant::now();
        let regained = self.connection_state() == ConnectionState::Unreachable;
        let resyncing = self.resync_until.is_some_and(|until| now < until);
        if !regained && !resyncing {
            return;
        }
        let Ok(msg) = wire.parse() else { return };
        // We missed notifications while the controller was away (and may miss more while
        // our notification socket reconnects): take its engine list for a while.
        let map = engines_from_reply(msg.content_map());
        if *self.engines.borrow() != map {
            self.replace_engines(map);
        }
        if regained {
            tracing::info!(engines = self.uuids.len(), "the controller answers again");
            self.resync_until = Some(now + RESYNC_WINDOW);
            self.set_state(ConnectionState::Connected);
        }
    }

    fn replace_engines(&mut self, map: EngineMap) {
        self.uuids = map
            .iter()
            .map(|(id, uuid)| (Bytes::from(uuid.clone()), *id))
            .collect();
        self.engines.send_replace(map);
    }

    /// Handles a Hub notification; returns the failure to close with on shutdown.
    fn on_notification(&mut self, frames: Frames) -> Option<Failure> {
        let wire = WireMessage::split(frames).ok()?;
        if !self.verify(&wire) {
            return None;
        }
        let msg = wire.parse().ok()?;
        let content = msg.content_map();
        let id = content
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        let uuid = content.get("uuid").and_then(Value::as_str);
        match (msg.header.msg_type.as_str(), id, uuid) {
            ("registration_notification", Some(id), Some(uuid)) => {
                tracing::info!(engine.id = id, "engine registered");
                self.uuids.insert(Bytes::from(uuid.to_owned()), id);
                self.engines.send_modify(|map| {
                    map.insert(id, uuid.to_owned());
                });
                None
            }
            ("unregistration_notification", Some(id), uuid) => {
                tracing::info!(engine.id = id, "engine unregistered");
                let uuid = uuid
                    .map(str::to_owned)
                    .or_else(|| self.engines.borrow().get(&id).cloned())
                    .unwrap_or_default();
                self.uuids.retain(|_, known| *known != id);
                self.engines.send_modify(|map| {
                    map.remove(&id);
                });
                self.fail_engine(id, &uuid);
                None
            }
            ("shutdown_notification", _, _) => {
                tracing::info!("the controller is shutting down; closing the client");
                self.set_state(ConnectionState::Shutdown);
                self.finished = true;
                Some(Failure::ControllerShutdown)
            }
            (other, _, _) => {
                tracing::debug!(msg_type = other, "ignored a notification");
                None
            }
        }
    }

    /// Fails every request outstanding on a dead engine with a client-made `EngineError`.
    fn fail_engine(&mut self, id: u32, uuid: &str) {
        let doomed: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, e)| !e.done && e.route.engines.contains(id))
            .map(|(k, _)| k.clone())
            .collect();
        for msg_id in doomed {
            let failure = Failure::Remote(engine_died(id, uuid, &msg_id));
            self.fail_key(&msg_id, &failure, Some(id));
        }
    }

    fn fail_key(&mut self, msg_id: &str, failure: &Failure, engine: Option<u32>) {
        let Some(entry) = self.routes.get_mut(msg_id) else {
            return;
        };
        if entry.done {
            return;
        }
        match &entry.route.sink {
            Sink::Result { shared, index } => {
                shared.complete(
                    *index,
                    Outcome::Failed {
                        failure: failure.clone(),
                        engine: engine.or_else(|| entry.route.engines.first()),
                        received: date::now(),
                    },
                );
                entry.done = true;
                self.retire(msg_id.to_owned());
            }
            Sink::Reply(_) => {
                if let Some(entry) = self.routes.remove(msg_id) {
                    fail_route(&self.raw, entry.route, msg_id, failure);
                }
            }
            Sink::Raw { request } => {
                let engine = engine.or_else(|| entry.route.engines.first());
                let reply = RawReply::synthetic(msg_id, request, failure, engine);
                self.routes.remove(msg_id);
                self.raw.complete(reply);
            }
            Sink::Finished { .. } => {} // done: returned above
        }
    }

    fn fail_all(&mut self, failure: &Failure) {
        let keys: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, e)| !e.done)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.fail_key(&key, failure, None);
        }
    }

    fn on_iopub(&mut self, frames: Frames) {
        // Raw requests keep every IOPub message (and count `status: idle`).
        let raw = self.raw.is_tracking();
        // Cheap filter on the topic frame: only stream output is collected otherwise.
        let mut status = false;
        if let Some(topic) = frames.first() {
            status = topic.ends_with(b".status");
            if !raw && (status || topic.ends_with(b"execute_input")) {
                return;
            }
        }
        let Ok(wire) = WireMessage::split(frames) else {
            return;
        };
        // Raw requests count only `status: idle`: every other status (a `busy` per request)
        // is dropped before its parent is parsed or its signature checked.
        if status && !is_idle_status(&wire.content) {
            return;
        }
        let Ok(parent) = serde_json::from_slice::<ParentRef<'_>>(&wire.parent_header) else {
            return;
        };
        // As ipyparallel does: only output of this client's own requests.
        if parent.session.as_deref() != Some(self.session.id()) {
            return;
        }
        let Some(msg_id) = parent.msg_id.map(|m| m.into_owned()) else {
            return;
        };
        let is_result = matches!(
            self.routes.get(&msg_id),
            Some(Entry {
                route: Route {
                    sink: Sink::Result { .. } | Sink::Finished { .. },
                    ..
                },
                ..
            })
        );
        if !is_result {
            if raw && self.raw.knows(&msg_id) && self.verify(&wire) {
                if let Ok(header) = wire.parse_header() {
                    self.raw.on_iopub(&msg_id, header.msg_type, wire);
                }
            }
            return;
        }
        let Ok(header) = wire.parse_header() else {
            return;
        };
        if header.msg_type != "stream" || !self.verify(&wire) {
            return;
        }
        let Ok(msg) = wire.parse() else { return };
        let content = msg.content_map();
        let name = content
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("stdout");
        let text = content.get("text").and_then(Value::as_str).unwrap_or("");
        let Some(entry) = self.routes.get(&msg_id) else {
            return;
        };
        match &entry.route.sink {
            Sink::Result { shared, index } => shared.append_output(*index, name, text),
            Sink::Finished { shared, index } => {
                if let Some(shared) = shared.upgrade() {
                    shared.append_output(*index, name, text);
                }
            }
            Sink::Reply(_) | Sink::Raw { .. } => {}
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        // Per-request deadlines (in submission order, since the timeout is one value).
        if let Some(timeout) = self.config.request_timeout {
            while self.deadlines.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, msg_id)) = self.deadlines.pop_front() {
                    self.fail_key(&msg_id, &Failure::RequestTimeout(timeout), None);
                }
            }
        }
        // Liveness: ping the Hub; no answer within the timeout ⇒ it is unreachable.
        let Some(interval) = self.config.liveness_interval else {
            return;
        };
        if let Some(sent) = self.ping_sent {
            if now.saturating_duration_since(sent) >= self.config.liveness_timeout
                && self.connection_state() == ConnectionState::Connected
            {
                tracing::warn!(
                    after = ?self.config.liveness_timeout,
                    "the controller does not answer; failing outstanding requests"
                );
                self.set_state(ConnectionState::Unreachable);
                self.fail_all(&Failure::ControllerLost);
                self.deadlines.clear();
            }
        }
        let due = self
            .last_ping
            .is_none_or(|last| now.saturating_duration_since(last) >= interval);
        let waiting =
            self.ping_sent.is_some() && self.connection_state() == ConnectionState::Connected;
        if due && !waiting {
            self.ping(now);
        }
    }

    fn ping(&mut self, now: Instant) {
        let msg = self.session.message("connection_request", json!({}));
        self.pings.push_back(msg.header.msg_id.clone());
        while self.pings.len() > MAX_PINGS {
            self.pings.pop_front();
        }
        if self.ping_sent.is_none() {
            self.ping_sent = Some(now);
        }
        self.last_ping = Some(now);
        let frames = self.session.serialize(&msg);
        self.send(Channel::Query, frames);
    }
}

/// Fails a route that never reached the map (or was just removed from it).
pub(crate) fn fail_route(raw: &RawShared, route: Route, msg_id: &str, failure: &Failure) {
    match route.sink {
        Sink::Result { shared, index } => {
            shared.complete(
                index,
                Outcome::Failed {
                    failure: failure.clone(),
                    engine: route.engines.first(),
                    received: date::now(),
                },
            );
        }
        Sink::Reply(reply) => {
            let _ = reply.send(Err(failure.to_error(msg_id)));
        }
        Sink::Raw { request } => {
            let engine = route.engines.first();
            raw.complete(RawReply::synthetic(msg_id, &request, failure, engine));
        }
        Sink::Finished { .. } => {} // answered already
    }
}

/// The engine map a `connection_reply` carries.
pub(crate) fn engines_from_reply(content: &crate::protocol::JsonMap) -> EngineMap {
    let mut map = BTreeMap::new();
    if let Some(engines) = content.get("engines").and_then(Value::as_object) {
        for (id, uuid) in engines {
            if let (Ok(id), Some(uuid)) = (id.parse::<u32>(), uuid.as_str()) {
                map.insert(id, uuid.to_owned());
            }
        }
    }
    map
}

/// How long `Duration` values of the config imply between housekeeping passes.
pub(crate) fn housekeeping_interval(config: &ClientConfig) -> Duration {
    let mut interval = Duration::from_millis(500);
    if let Some(timeout) = config.request_timeout {
        interval = interval.min(timeout / 4);
    }
    if let Some(liveness) = config.liveness_interval {
        interval = interval.min(liveness / 2);
    }
    interval.max(Duration::from_millis(10))
}
