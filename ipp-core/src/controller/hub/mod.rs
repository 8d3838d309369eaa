//! The Hub: registration, engine membership, the task table and every query clients send.

mod engine_state;
mod engines;
mod gate;
mod queries;
mod records;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub(crate) use self::engine_state::{EngineState, Restore};
use self::engines::{Engines, RegisterError};
use self::gate::StoreGate;
use self::queries::ResubmitFound;
use super::events::{EngineEvent, HubEvent, TaskCommand};
use super::heartbeat::HeartCommand;
use super::ordered::OrderedIds;
use super::recent::RecentSet;
use super::relay::{accept_from_peer, WarnOnce};
use crate::protocol::{error_content, key_error_value, EngineConnectionInfo, Message, Session};
use crate::store::Store;
use crate::transport::{Frames, Socket, SocketSender};

/// The channels and sockets the Hub is wired to.
pub(crate) struct HubParts {
    pub(crate) session: Arc<Session>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) engine_info: EngineConnectionInfo,
    pub(crate) heartbeat_period: Duration,
    pub(crate) registration_timeout: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) query: Socket,
    pub(crate) notification: Socket,
    pub(crate) events: mpsc::Receiver<HubEvent>,
    pub(crate) engine_events: mpsc::Sender<EngineEvent>,
    pub(crate) hearts: mpsc::Sender<HeartCommand>,
    pub(crate) resubmit: mpsc::Sender<TaskCommand>,
    pub(crate) shutdown: CancellationToken,
    /// Where to keep the engine state file (`None`: nowhere).
    pub(crate) engine_state_file: Option<PathBuf>,
    /// Engines of an earlier controller to take back (read from the state file).
    pub(crate) restored: Option<Restore>,
    /// How long to wait for the store to take a write (`None`: as long as it takes).
    pub(crate) store_write_patience: Option<Duration>,
}

/// The Hub's state; one task owns it.
pub(crate) struct Hub {
    session: Arc<Session>,
    store: Arc<dyn Store>,
    engine_info: EngineConnectionInfo,
    heartbeat_period: Duration,
    registration_timeout: Duration,
    max_message_bytes: usize,
    query_tx: SocketSender,
    notify_tx: SocketSender,
    engine_events: mpsc::Sender<EngineEvent>,
    hearts: mpsc::Sender<HeartCommand>,
    resubmit: mpsc::Sender<TaskCommand>,
    /// Where resubmissions' store reads, done off the loop, come back to it.
    resubmits: mpsc::Sender<ResubmitFound>,
    shutdown: CancellationToken,
    engines: Engines,
    engine_state_file: Option<PathBuf>,
    /// Whether writing the engine state file failed already (logged once as an error).
    warned_state_file: bool,
    /// Requests (direct and load-balanced) without a result yet.
    pending: HashSet<String>,
    /// Load-balanced tasks not yet sent to an engine.
    unassigned: OrderedIds,
    /// Requests whose result the Hub has seen recently (older ones are in the store).
    completed: RecentSet,
    /// Ids whose record the Hub created as a stub, before their request was seen (IOPub
    /// output can overtake its request): the request then updates the stub.
    stubbed: RecentSet,
    /// Whether the store records anything (false for NoDb: then requests are not parsed).
    recording: bool,
    warned: WarnOnce,
    /// How long store calls may take, and what the store's failures and delays have been.
    gate: StoreGate,
}

/// Signs and sends answers on the query socket; cheap to clone.
#[derive(Clone)]
struct Replies {
    session: Arc<Session>,
    query_tx: SocketSender,
}

impl Replies {
    /// Sends a signed message to a peer of the query socket.
    async fn send_to(&self, idents: Vec<bytes::Bytes>, mut msg: Message) {
        msg.idents = idents;
        if let Err(err) = self.query_tx.send(self.session.serialize(&msg)).await {
            tracing::debug!(error = %err, "query socket closed");
        }
    }

    /// Answers `request` with `content` and `buffers`.
    async fn answer(
        &self,
        request: &Message,
        msg_type: &str,
        content: Value,
        buffers: Vec<bytes::Bytes>,
    ) {
        let mut reply = self.session.reply(&request.header, msg_type, content);
        reply.buffers = buffers;
        self.send_to(request.idents.clone(), reply).await;
    }
}

/// Resubmissions whose records are read and wait for the Hub's loop (more wait for room).
const RESUBMITS_IN_FLIGHT: usize = 16;

/// Runs the Hub until shutdown.
pub(crate) async fn run_hub(parts: HubParts) {
    let HubParts {
        session,
        store,
        engine_info,
        heartbeat_period,
        registration_timeout,
        max_message_bytes,
        query,
        notification,
        mut events,
        engine_events,
        hearts,
        resubmit,
        shutdown,
        engine_state_file,
        restored,
        store_write_patience,
    } = parts;
    let store_records = store.capabilities().records;
    let (query_tx, mut query_rx) = query.split();
    let (notify_tx, _) = notification.split();
    let (resubmits, mut resubmits_found) = mpsc::channel(RESUBMITS_IN_FLIGHT);
    let mut hub = Hub {
        session,
        store,
        engine_info,
        heartbeat_period,
        registration_timeout,
        max_message_bytes,
        query_tx,
        notify_tx,
        engine_events,
        hearts,
        resubmit,
        resubmits,
        shutdown: shutdown.clone(),
        engines: Engines::default(),
        engine_state_file,
        warned_state_file: false,
        pending: HashSet::new(),
        unassigned: OrderedIds::new(),
        completed: RecentSet::default(),
        stubbed: RecentSet::default(),
        recording: store_records,
        warned: WarnOnce::default(),
        gate: StoreGate::new(store_write_patience),
    };
    if let Some(restore) = restored {
        hub.restore_engines(restore);
    }
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Every branch is cancel-safe: channel and socket `recv`, interval `tick`.
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                hub.handle_event(event).await;
            }
            frames = query_rx.recv() => {
                let Ok(frames) = frames else { break };
                hub.handle_query(frames, &mut events).await;
            }
            Some(found) = resubmits_found.recv() => hub.resubmit_found(found).await,
            _ = housekeeping.tick() => {
                hub.purge_stalled_registrations();
                hub.gate.probe(&hub.store);
            }
        }
    }
}

impl Hub {
    /// Remembers that a request finished.
    fn note_completed(&mut self, msg_id: &str) {
        self.completed.insert(msg_id);
    }

    /// Sends a signed message to a peer of the query socket.
    async fn send_to(&self, idents: Vec<bytes::Bytes>, msg: Message) {
        self.replies().send_to(idents, msg).await;
    }

    /// What answers queries, for an answer sent from outside the Hub's loop.
    fn replies(&self) -> Replies {
        Replies {
            session: Arc::clone(&self.session),
            query_tx: self.query_tx.clone(),
        }
    }

    /// Publishes a notification (topic-less, parent `{}` unless given).
    async fn notify(&self, msg: Message) {
        if let Err(err) = self.notify_tx.send(self.session.serialize(&msg)).await {
            tracing::debug!(error = %err, "notification socket closed");
        }
    }

    /// Handles the events queued now (only those: a busy stream of new events never
    /// starves queries). A relay queues its event before it forwards the reply, so these
    /// include everything a client asking now has seen.
    async fn catch_up(&mut self, events: &mut mpsc::Receiver<HubEvent>) {
        for _ in 0..events.len() {
            match events.try_recv() {
                Ok(event) => self.handle_event(event).await,
                Err(_) => break,
            }
        }
    }

    async fn handle_query(&mut self, frames: Frames, events: &mut mpsc::Receiver<HubEvent>) {
        let Some(wire) = accept_from_peer(
            frames,
            &self.session,
            self.max_message_bytes,
            &mut self.warned,
            "registration",
        ) else {
            return;
        };
        let peer = wire.idents.first().cloned().unwrap_or_default();
        let parsed = self
            .session
            .remember_signature(&wire)
            .and_then(|()| wire.parse());
        let msg = match parsed {
            Ok(msg) => msg,
            Err(err) => {
                if self.warned.first(&peer) {
                    tracing::warn!(peer = %super::relay::peer_name(&peer), error = %err,
                        "dropped an unreadable query");
                }
                return;
            }
        };
        tracing::debug!(msg_type = %msg.header.msg_type, msg_id = %msg.header.msg_id, "query");
        // `connection_request` is also the clients' liveness ping: it answers from the
        // engine table (kept by registration, here) without waiting for a backlog of task
        // events, so a flood of tasks never makes the controller look dead.
        if msg.header.msg_type != "connection_request" {
            self.catch_up(events).await;
        }
        match msg.header.msg_type.as_str() {
            "registration_request" => self.register_engine(msg).await,
            "unregistration_request" => self.unregistration_request(&msg).await,
            "connection_request" => self.connection_request(msg).await,
            "queue_request" => self.queue_request(msg).await,
            "result_request" => self.result_request(msg).await,
            "history_request" => self.history_request(msg).await,
            "db_request" => self.db_request(msg).await,
            "purge_request" => self.purge_request(msg).await,
            "resubmit_request" => self.resubmit_request(msg).await,
            "shutdown_request" => self.shutdown_request(msg).await,
            "load_request" => self.load_request(msg).await,
            "stop_distributed_request" => {
                let reply = json!({"status": "ok"});
                self.answer(&msg, "stop_distributed_reply", reply).await;
            }
            "become_dask_request" => {
                let error = error_content(
                    "NotImplementedError",
                    "this controller does not run a dask scheduler",
                );
                self.answer(&msg, "hub_error", error).await;
            }
            other => {
                let evalue = key_error_value(&format!("Bad Message Type: '{other}'"));
                let error = error_content("KeyError", &evalue);
                self.answer(&msg, "hub_error", error).await;
            }
        }
    }

    /// Replies to a query with `parent = request header`.
    async fn answer(&self, request: &Message, msg_type: &str, content: Value) {
        self.replies()
            .answer(request, msg_type, content, Vec::new())
            .await;
    }

    async fn handle_event(&mut self, event: HubEvent) {
        match event {
            HubEvent::MuxRequest(wire) => self.record_mux_request(wire).await,
            HubEvent::MuxReply(wire) => self.record_mux_reply(wire).await,
            HubEvent::TaskSubmitted { msg_id, read, wire } => {
                let read = read.map(|read| *read).unwrap_or_default();
                self.record_task_request(msg_id, read, wire).await;
            }
            HubEvent::TaskAssigned { msg_id, engine } => {
                self.record_task_assignment(msg_id, engine).await;
            }
            HubEvent::TaskResult { msg_id, read, wire } => {
                let read = read.map(|read| *read).unwrap_or_default();
                self.record_task_result(msg_id, read, wire).await;
            }
            HubEvent::Iopub(wire) => self.record_iopub(wire).await,
            HubEvent::HeartsStarted(uuids) => {
                for uuid in uuids {
                    self.finish_registration(&uuid).await;
                }
            }
            HubEvent::HeartsStopped(uuids) => {
                for uuid in uuids {
                    if let Some(id) = self.engines.id_of(&uuid) {
                        tracing::warn!(engine.id = id, engine.uuid = %uuid,
                            "engine missed too many heartbeats; unregistering it");
                        self.unregister(id).await;
                    } else if self.engines.cancel_pending(Some(&uuid), None) {
                        // A restored engine still listed in the state file may be among them.
                        self.save_engine_state();
                    }
                }
            }
        }
    }

    /// `registration_request {uuid[, id]}` → `registration_reply`, then wait for a heartbeat.
    async fn register_engine(&mut self, msg: Message) {
        let content = msg.content_map();
        let Some(uuid) = content
            .get("uuid")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            let error = error_content("KeyError", &key_error_value("uuid"));
            self.send_to(
                msg.idents.clone(),
                self.session.message("registration_reply", error),
            )
            .await;
            return;
        };
        let requested = content
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        let deadline = Instant::now() + self.registration_timeout;
        let reply = match self.engines.begin_registration(&uuid, requested, deadline) {
            Ok(id) => {
                tracing::info!(engine.id = id, engine.uuid = %uuid, "engine registering");
                // Its first echo completes the registration: make sure it counts as new,
                // and ping now rather than at the next period.
                let _ = self.hearts.send(HeartCommand::Forget(uuid.clone())).await;
                let _ = self.hearts.send(HeartCommand::PingNow).await;
                let period_ms =
                    u64::try_from(self.heartbeat_period.as_millis()).unwrap_or(u64::MAX);
                json!({
                    "id": id,
                    "status": "ok",
                    "hb_period": period_ms,
                    "connection_info": self.engine_info.addresses(),
                })
            }
            Err(RegisterError::UuidInUse) => {
                tracing::warn!(engine.uuid = %uuid, "refused a registration: uuid in use");
                error_content(
                    "KeyError",
                    &key_error_value(&format!("uuid '{uuid}' in use")),
                )
            }
        };
        // ipyparallel sends the registration reply with an empty parent header.
        let reply = self.session.message("registration_reply", reply);
        self.send_to(msg.idents.clone(), reply).await;
    }

    /// The engine's first heartbeat arrived: it is now usable.
    async fn finish_registration(&mut self, uuid: &str) {
        let Some(id) = self.engines.complete_registration(uuid) else {
            if self.engines.id_of(uuid).is_none() {
                // The heart monitor reports a heart once, so this is said once per engine.
                tracing::warn!(engine.uuid = %uuid,
                    "heartbeats from an engine that is not registered here (it registered \
                     with an earlier controller, or its registration expired): it gets no \
                     work. Restarting the controller with --restore takes back the engines \
                     of the one before; an engine of ours registers again by itself");
            }
            return;
        };
        tracing::info!(engine.id = id, engine.uuid = %uuid, "engine registered");
        self.save_engine_state();
        let _ = self
            .engine_events
            .send(EngineEvent::Registered {
                uuid: uuid.to_owned(),
            })
            .await;
        let note = self
            .session
            .message("registration_notification", json!({"id": id, "uuid": uuid}));
        self.notify(note).await;
    }

    async fn unregistration_request(&mut self, msg: &Message) {
        let id = msg
            .content_map()
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|id| u32::try_from(id).ok());
        match id {
            Some(id) if self.engines.get(id).is_some() => {
                tracing::info!(engine.id = id, "engine asked to unregister");
                self.unregister(id).await;
            }
            Some(id) => {
                if self.engines.cancel_pending(None, Some(id)) {
                    self.save_engine_state();
                }
            }
            None => tracing::debug!("unregistration_request without a known id"),
        }
    }

    /// Removes an engine, tells everyone, and fails its direct requests in the task table.
    async fn unregister(&mut self, id: u32) {
        let Some(entry) = self.engines.remove(id) else {
            return;
        };
        tracing::info!(engine.id = id, engine.uuid = %entry.uuid, "engine unregistered");
        self.save_engine_state();
        let _ = self
            .hearts
            .send(HeartCommand::Forget(entry.uuid.clone()))
            .await;
        let _ = self
            .engine_events
            .send(EngineEvent::Unregistered {
                uuid: entry.uuid.clone(),
            })
            .await;
        let note = self.session.message(
            "unregistration_notification",
            json!({"id": id, "uuid": entry.uuid}),
        );
        self.notify(note).await;
        // Clients fail their own direct requests on the notification (as ipyparallel's do);
        // the Hub records the same error so queries agree. ipyparallel waits 30 s first.
        for msg_id in &entry.queue {
            self.record_engine_died(msg_id, id, &entry.uuid).await;
        }
    }

    fn purge_stalled_registrations(&mut self) {
        let mut restored_gone = false;
        for (uuid, id, restored) in self.engines.purge_stalled(Instant::now()) {
            if restored {
                restored_gone = true;
                tracing::warn!(engine.id = id, engine.uuid = %uuid,
                    "restored engine did not come back (no heartbeat); dropped");
            } else {
                tracing::warn!(engine.id = id, engine.uuid = %uuid,
                    "registration expired: the engine sent no heartbeat in time");
            }
        }
        if restored_gone {
            self.save_engine_state();
        }
    }

    /// Takes back the engines of an earlier controller: each rejoins with its id on its
    /// first heartbeat (as a registering engine does), or is dropped if none comes in time.
    fn restore_engines(&mut self, Restore { state, wait }: Restore) {
        tracing::info!(
            engines = state.engines.len(),
            next_id = state.next_id,
            "restoring engines; each rejoins with its id on its first heartbeat"
        );
        self.engines.restore(state, Instant::now() + wait);
    }

    /// Rewrites the engine state file (if there is one) after a change of membership. A
    /// failure is logged (an error the first time) and changes nothing else.
    fn save_engine_state(&mut self) {
        let Some(path) = &self.engine_state_file else {
            return;
        };
        if let Err(err) = self.engines.state().write(path) {
            if self.warned_state_file {
                tracing::debug!(file = %path.display(), error = %err, "engine state not saved");
            } else {
                self.warned_state_file = true;
                tracing::error!(file = %path.display(), error = %err,
                    "cannot save the engine state file; a controller restarted with --restore \
                     will not know the engines registered now");
            }
        }
    }
}
