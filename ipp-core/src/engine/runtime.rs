//! The engine's main loop: one task owns the shell and control sockets, queues requests,
//! runs them one at a time, handles control at once, and re-registers when the controller
//! is lost.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::FutureExt;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::executor::parent_json;
use super::executor::{EngineIdentity, Executor, Publisher};
use super::heartbeat::{self, HeartLink, Loss};
use super::registration::{self, address, Registered, RegistrationFailure};
use super::request::{
    publish_status, reply_type, status_message, AbortHandle, Finished, Queued, RequestEnv, State,
};
use super::EngineConfig;
use crate::error::{Error, Result};
use crate::protocol::{EngineConnectionInfo, JsonMap, Message, Session};
use crate::transport::{
    Frames, Socket, SocketKind, SocketOptions, SocketReceiver, SocketSender, Transport,
};

/// Most ids remembered from `abort_request`s naming requests not seen yet.
const MAX_ABORT_IDS: usize = 65_536;

/// What [`Runtime::connect`] needs.
pub(crate) struct Parts {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) info: EngineConnectionInfo,
    pub(crate) session: Arc<Session>,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) config: EngineConfig,
    pub(crate) registered: Registered,
}

/// One shell socket, split.
struct Shell {
    sender: SocketSender,
    receiver: SocketReceiver,
}

impl Shell {
    fn new(socket: Socket) -> Self {
        let (sender, receiver) = socket.split();
        Self { sender, receiver }
    }
}

/// The request running now, polled by the engine's main task itself (no task of its own:
/// spawning one per request cost a task switch and a cross-thread wake-up each way).
/// `Err` when the request panicked (an executor bug; logged, no reply).
type RunningRequest = Pin<Box<dyn Future<Output = std::thread::Result<Finished>> + Send>>;

/// Holds the running request. The mutex is never locked (only `get_mut`): it makes the
/// engine's state `Sync`, which a boxed future is not.
type RunningSlot = std::sync::Mutex<Option<RunningRequest>>;

/// Waits for the running request to finish and empties the slot; never resolves when no
/// request runs.
///
/// # Cancel safety
/// Cancel-safe: a request not finished yet stays in the slot.
async fn next_finished(running: &mut RunningSlot) -> std::thread::Result<Finished> {
    let running = running.get_mut().unwrap_or_else(PoisonError::into_inner);
    let Some(request) = running.as_mut() else {
        return std::future::pending().await;
    };
    let finished = request.await;
    *running = None;
    finished
}

/// Why the engine stops (when it stops without an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// [`super::RunningEngine::shutdown`] was called.
    Owner,
    /// A client sent `shutdown_request`.
    ShutdownRequest,
}

/// Whether the controller is reachable.
#[derive(Debug, PartialEq, Eq)]
enum Link {
    Up,
    /// Re-registering since the loss was noticed.
    Reconnecting,
}

/// The engine's state, owned by its main task.
pub(crate) struct Runtime {
    transport: Arc<dyn Transport>,
    info: EngineConnectionInfo,
    session: Arc<Session>,
    identity: Arc<EngineIdentity>,
    config: EngineConfig,
    env: RequestEnv,
    heartbeat_period: Duration,
    mux: Shell,
    task: Shell,
    broadcast: Shell,
    broadcast_port: u16,
    control: Shell,
    heart: HeartLink,
    /// The heart task; dropping the set aborts it.
    background: JoinSet<()>,
    queue: VecDeque<Queued>,
    abort_ids: HashSet<String>,
    /// The request running now (at most one).
    running: RunningSlot,
    /// The running request's msg_id and its abort handle.
    running_request: Option<(String, Arc<AbortHandle>)>,
    /// The re-registration attempt in flight (at most one).
    registering: JoinSet<Result<Registered, RegistrationFailure>>,
    link: Link,
    /// When the engine last (re-)registered: silence is counted from here or the last
    /// ping, whichever is later.
    registered_at: Instant,
    held_replies: VecDeque<(SocketSender, Frames)>,
}

fn identity_options(uuid: &str) -> SocketOptions {
    SocketOptions::default().with_identity(uuid.to_owned())
}

async fn connect(
    transport: &Arc<dyn Transport>,
    info: &EngineConnectionInfo,
    kind: SocketKind,
    port: u16,
    options: SocketOptions,
) -> Result<Socket> {
    transport.connect(kind, &address(info, port), options).await
}

/// A signal number from `signal_request`'s `sig`: an integer, or a name as Python's
/// `signal` module spells it (`"SIGINT"`, also `"INT"`).
fn signal_number(sig: &Value) -> Option<i32> {
    if let Some(n) = sig.as_i64() {
        return i32::try_from(n).ok();
    }
    let name = sig.as_str()?;
    let name = name.strip_prefix("SIG").unwrap_or(name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "TERM" => 15,
        _ => return None,
    })
}

fn broadcast_port(info: &EngineConnectionInfo, id: u32) -> u16 {
    let len = info.broadcast.len().max(1);
    let index = usize::try_from(id).unwrap_or(0) % len;
    info.broadcast.get(index).copied().unwrap_or_default()
}

impl Runtime {
    /// Connects the shell, control, IOPub and heartbeat sockets (in ipyparallel's order:
    /// the heart last, since its first echo completes the registration).
    pub(crate) async fn connect(parts: Parts) -> Result<Self> {
        let Parts {
            transport,
            info,
            session,
            executor,
            config,
            registered,
        } = parts;
        let uuid = session.id().to_owned();
        let identity = Arc::new(EngineIdentity::new(uuid.clone(), registered.id));
        let shell = |port: u16| {
            connect(
                &transport,
                &info,
                SocketKind::Router,
                port,
                identity_options(&uuid),
            )
        };
        let mux = Shell::new(shell(info.mux).await?);
        let task = Shell::new(shell(info.task).await?);
        let bcast_port = broadcast_port(&info, registered.id);
        let broadcast = Shell::new(shell(bcast_port).await?);
        let control = Shell::new(shell(info.control).await?);
        let iopub = connect(
            &transport,
            &info,
            SocketKind::Pub,
            info.iopub,
            identity_options(&uuid),
        )
        .await?;
        let (iopub, _) = iopub.split();
        let ping = connect(
            &transport,
            &info,
            SocketKind::Sub,
            info.hb_ping,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await?;
        let pong = connect(
            &transport,
            &info,
            SocketKind::Dealer,
            info.hb_pong,
            identity_options(&uuid),
        )
        .await?;
        let (heart, heart_task) = heartbeat::start(
            ping,
            pong,
            config.reconnect_after(registered.heartbeat_period),
        );
        let mut background = JoinSet::new();
        background.spawn(heart_task);
        let publisher = Publisher::new(Arc::clone(&session), iopub, Arc::clone(&identity));
        let env = RequestEnv {
            session: Arc::clone(&session),
            publisher,
            executor,
            identity: Arc::clone(&identity),
        };
        Ok(Self {
            transport,
            info,
            session,
            identity,
            config,
            env,
            heartbeat_period: registered.heartbeat_period,
            mux,
            task,
            broadcast,
            broadcast_port: bcast_port,
            control,
            heart,
            background,
            queue: VecDeque::new(),
            abort_ids: HashSet::new(),
            running: RunningSlot::new(None),
            running_request: None,
            registering: JoinSet::new(),
            link: Link::Up,
            registered_at: Instant::now(),
            held_replies: VecDeque::new(),
        })
    }

    pub(crate) fn identity(&self) -> Arc<EngineIdentity> {
        Arc::clone(&self.identity)
    }

    /// Serves until `shutdown` is cancelled, a client sends `shutdown_request`, or the
    /// controller is lost for good; cancels `stopped` on the way out.
    #[tracing::instrument(name = "engine", skip_all, fields(engine.uuid = %self.identity.uuid))]
    pub(crate) async fn run(
        mut self,
        shutdown: CancellationToken,
        stopped: CancellationToken,
    ) -> Result<()> {
        let result = self.serve(&shutdown).await;
        match result {
            // Our owner stopped us: tell the controller, unless it is gone.
            Ok(Stop::Owner) if self.link == Link::Up => {
                registration::unregister(
                    &self.transport,
                    &self.info,
                    &self.session,
                    self.identity.id(),
                    self.config.linger,
                )
                .await;
            }
            // A client's shutdown_request: the IOPub shutdown_reply unregisters us at the
            // controller. The transport has no flush, so keep the sockets open a moment for
            // it to deliver that and the control reply.
            Ok(Stop::ShutdownRequest) => tokio::time::sleep(self.config.linger).await,
            Ok(Stop::Owner) | Err(_) => {}
        }
        let result = result.map(|_| ());
        // Stop owned tasks: the running request (its blocking thread, if any, finishes on
        // its own), a registration attempt, the heart.
        *self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.registering.shutdown().await;
        self.background.shutdown().await;
        match &result {
            Ok(()) => tracing::info!("engine stopped"),
            Err(err) => tracing::error!(error = %err, "engine stopped"),
        }
        stopped.cancel();
        result
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> Result<Stop> {
        let mut watchdog = self.new_watchdog();
        loop {
            self.start_next();
            let room = self.queue.len() < self.config.max_queued_requests.max(1);
            // Every branch is cancel-safe: socket and channel `recv`, `JoinSet::join_next`,
            // `Interval::tick` and `cancelled()` lose nothing when another branch wins.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Stop::Owner),
                done = next_finished(&mut self.running) => match done {
                    Ok(finished) => self.deliver(finished).await,
                    Err(_) => {
                        self.running_request = None;
                        tracing::error!("request task failed: the executor panicked");
                    }
                },
                frames = self.control.receiver.recv() => {
                    let frames = frames?;
                    if self.control_message(frames).await {
                        return Ok(Stop::ShutdownRequest);
                    }
                }
                frames = self.mux.receiver.recv(), if room => {
                    let sender = self.mux.sender.clone();
                    self.enqueue(frames?, sender);
                }
                frames = self.task.receiver.recv(), if room => {
                    let sender = self.task.sender.clone();
                    self.enqueue(frames?, sender);
                }
                frames = self.broadcast.receiver.recv(), if room => {
                    let sender = self.broadcast.sender.clone();
                    self.enqueue(frames?, sender);
                }
                Some(loss) = self.heart.losses.recv() => self.begin_reconnect(loss),
                _ = watchdog.tick() => self.check_silence()?,
                Some(attempt) = self.registering.join_next() => {
                    let attempt = attempt.map_err(|err| Error::Closed {
                        what: format!("registration task ({err})"),
                    })?;
                    if self.finish_reconnect(attempt).await? {
                        watchdog = self.new_watchdog();
                    }
                }
            }
        }
    }

    fn new_watchdog(&self) -> tokio::time::Interval {
        let mut watchdog = tokio::time::interval(self.heartbeat_period);
        watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
        watchdog
    }

    /// Parses a shell request and queues it.
    fn enqueue(&mut self, frames: Frames, reply_to: SocketSender) {
        let msg = match self.session.deserialize(frames) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(error = %err, "dropped a bad shell message");
                return;
            }
        };
        if !msg.header.msg_type.ends_with("_request") {
            // e.g. comm_msg / comm_close: nothing here handles them, and they expect no reply.
            tracing::debug!(msg_type = %msg.header.msg_type, "ignored shell message");
            return;
        }
        tracing::debug!(msg_id = %msg.header.msg_id, msg_type = %msg.header.msg_type, "queued");
        let aborted = self.abort_ids.remove(&msg.header.msg_id);
        self.queue.push_back(Queued {
            msg,
            reply_to,
            aborted,
        });
    }

    /// Starts the next queued request when none is running.
    fn start_next(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if running.is_some() {
            return;
        }
        if let Some(queued) = self.queue.pop_front() {
            let abort = Arc::new(AbortHandle::default());
            self.running_request = Some((queued.msg.header.msg_id.clone(), Arc::clone(&abort)));
            let request = self.env.clone().run(queued, abort);
            *running = Some(Box::pin(AssertUnwindSafe(request).catch_unwind()));
        }
    }

    /// Sends a finished request's reply (or holds it while the controller is away), then
    /// publishes `status idle`.
    async fn deliver(&mut self, finished: Finished) {
        let Finished {
            reply,
            reply_to,
            parent,
            msg_id,
            busy,
        } = finished;
        self.running_request = None;
        if self.link == Link::Up {
            if let Err(err) = reply_to.send(reply).await {
                tracing::warn!(error = %err, %msg_id, "reply not sent");
            }
        } else {
            if self.held_replies.len() >= self.config.max_held_replies.max(1) {
                self.held_replies.pop_front();
                tracing::warn!(
                    "too many replies held while the controller is away; dropped the oldest"
                );
            }
            tracing::debug!(%msg_id, "reply held until the controller is back");
            self.held_replies.push_back((reply_to, reply));
        }
        let idle = status_message(&self.env.publisher, &parent, State::Idle);
        busy.publish_with_idle(&self.env.publisher, idle).await;
    }

    /// Handles one control message; `true` when the engine must stop (shutdown_request).
    async fn control_message(&mut self, frames: Frames) -> bool {
        let msg = match self.session.deserialize(frames) {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(error = %err, "dropped a bad control message");
                return false;
            }
        };
        let msg_type = msg.header.msg_type.clone();
        tracing::debug!(msg_id = %msg.header.msg_id, msg_type = %msg_type, "control");
        let parent = parent_json(&msg);
        publish_status(&self.env.publisher, &parent, State::Busy).await;
        let mut stop = false;
        let content = match msg_type.as_str() {
            "abort_request" => self.abort(msg.content_map()),
            "clear_request" => {
                self.env.executor.clear();
                json!({"status": "ok"})
            }
            "shutdown_request" => {
                stop = true;
                json!({"status": "ok", "restart": false})
            }
            "signal_request" => self.signal(msg.content_map()),
            "kernel_info_request" => self.kernel_info(),
            other => crate::protocol::error_content(
                "NotImplementedError",
                &format!("this engine does not handle {other} on its control socket"),
            ),
        };
        if stop {
            // The controller unregisters us when it sees this on IOPub (spec §4.5).
            let sent = self
                .env
                .publisher
                .publish(
                    "shutdown",
                    "shutdown_reply",
                    &parent,
                    content.clone(),
                    JsonMap::new(),
                )
                .await;
            if let Err(err) = sent {
                tracing::debug!(error = %err, "iopub shutdown_reply not sent");
            }
        }
        self.reply_control(&msg, content).await;
        publish_status(&self.env.publisher, &parent, State::Idle).await;
        stop
    }

    async fn reply_control(&self, request: &Message, content: Value) {
        let mut reply = self.session.reply(
            &request.header,
            &reply_type(&request.header.msg_type),
            content,
        );
        reply.metadata = self.env.publisher.engine_metadata();
        reply.idents = request.idents.clone();
        if let Err(err) = self
            .control
            .sender
            .send(self.session.serialize(&reply))
            .await
        {
            tracing::warn!(error = %err, "control reply not sent");
        }
    }

    /// `abort_request {msg_ids}`: a list (empty = everything queued now) or one string.
    /// Queued requests are answered `aborted` when their turn comes; the running one, when
    /// named, is interrupted (see `RequestEnv::run_abortable`) and listed in the reply's
    /// `interrupting` (our extension of the `abort_reply` content).
    fn abort(&mut self, content: &JsonMap) -> Value {
        let ids: Vec<String> = match content.get("msg_ids") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(id)) => vec![id.clone()],
            _ => Vec::new(),
        };
        if ids.is_empty() {
            for queued in &mut self.queue {
                queued.aborted = true;
            }
            tracing::info!(count = self.queue.len(), "aborting every queued request");
            return json!({"status": "ok"});
        }
        let mut interrupting = Vec::new();
        for id in ids {
            if let Some((running, handle)) = &self.running_request {
                if *running == id {
                    tracing::info!(msg_id = %id, "aborting the running request");
                    handle.abort();
                    interrupting.push(id);
                    continue;
                }
            }
            match self.queue.iter_mut().find(|q| q.msg.header.msg_id == id) {
                Some(queued) => queued.aborted = true,
                // Not here yet (or already done): remember it, as ipykernel does.
                None if self.abort_ids.len() < MAX_ABORT_IDS => {
                    self.abort_ids.insert(id);
                }
                None => tracing::warn!(msg_id = %id, "too many pending aborts; ignored"),
            }
        }
        json!({"status": "ok", "interrupting": interrupting})
    }

    /// `signal_request {sig}` (a number or a name such as `"SIGINT"`): handed to the
    /// executor, which interrupts the running request if it can.
    fn signal(&self, content: &JsonMap) -> Value {
        let Some(signal) = content.get("sig").and_then(signal_number) else {
            return crate::protocol::error_content(
                "ValueError",
                &format!("signal_request needs a signal number or name, not {content:?}"),
            );
        };
        match self.env.executor.signal(signal) {
            Ok(()) => json!({"status": "ok"}),
            Err(err) => crate::protocol::error_content("NotImplementedError", &err.to_string()),
        }
    }

    fn kernel_info(&self) -> Value {
        json!({
            "status": "ok",
            "protocol_version": crate::protocol::PROTOCOL_VERSION,
            "implementation": "ipp-rust-engine",
            "implementation_version": env!("CARGO_PKG_VERSION"),
            "language_info": {
                "name": "rust",
                "version": "",
                "mimetype": "text/x-rust",
                "file_extension": ".rs",
            },
            "banner": "ipp Rust engine: runs registered Rust functions",
            "help_links": [],
        })
    }

    /// The heart noticed a loss (silence or a restarted controller): re-register.
    fn begin_reconnect(&mut self, loss: Loss) {
        if self.link == Link::Reconnecting {
            return;
        }
        tracing::warn!(?loss, "lost the controller; re-registering");
        self.link = Link::Reconnecting;
        self.heart.echo.send_replace(None);
        self.spawn_registration(Duration::ZERO);
    }

    fn spawn_registration(&mut self, delay: Duration) {
        let transport = Arc::clone(&self.transport);
        let info = self.info.clone();
        let session = Arc::clone(&self.session);
        let requested = Some(self.identity.id());
        let timeout = self.config.registration_timeout;
        self.registering.spawn(async move {
            tokio::time::sleep(delay).await;
            registration::register(&transport, &info, &session, requested, timeout).await
        });
    }

    /// Watchdog tick: re-register after too long a silence, give up after much longer.
    fn check_silence(&mut self) -> Result<()> {
        let last = (*self.heart.last_ping.borrow()).max(self.registered_at);
        let silence = Instant::now().saturating_duration_since(last);
        match self.link {
            Link::Up if silence > self.config.reconnect_after(self.heartbeat_period) => {
                self.begin_reconnect(Loss::Silence);
            }
            Link::Reconnecting => {
                let limit = self.config.give_up_after(self.heartbeat_period);
                if silence > limit {
                    return Err(Error::Timeout {
                        what: "heartbeats from the controller (re-registration kept failing)",
                        after: limit,
                    });
                }
            }
            Link::Up => {}
        }
        Ok(())
    }

    /// A re-registration attempt ended; `Ok(true)` when the heartbeat period changed.
    async fn finish_reconnect(
        &mut self,
        attempt: Result<Registered, RegistrationFailure>,
    ) -> Result<bool> {
        let registered = match attempt {
            Ok(registered) => registered,
            Err(RegistrationFailure::Refused(error)) if error.ename == "KeyError" => {
                // "uuid in use": the controller still knows us; it never went away.
                tracing::info!("the controller still has this engine registered; resuming");
                Registered {
                    id: self.identity.id(),
                    heartbeat_period: self.heartbeat_period,
                }
            }
            Err(failure) => {
                let error = failure.into_error();
                tracing::warn!(error = %error, "re-registration failed; retrying");
                self.spawn_registration(self.config.registration_retry);
                return Ok(false);
            }
        };
        let old_id = self.identity.id();
        self.identity.set_id(registered.id);
        let port = broadcast_port(&self.info, registered.id);
        if port != self.broadcast_port {
            let socket = connect(
                &self.transport,
                &self.info,
                SocketKind::Router,
                port,
                identity_options(&self.identity.uuid),
            )
            .await?;
            self.broadcast = Shell::new(socket);
            self.broadcast_port = port;
        }
        let period_changed = registered.heartbeat_period != self.heartbeat_period;
        self.heartbeat_period = registered.heartbeat_period;
        self.link = Link::Up;
        self.registered_at = Instant::now();
        self.heart
            .echo
            .send_replace(Some(self.config.reconnect_after(self.heartbeat_period)));
        tracing::info!(
            engine.id = registered.id,
            old_id,
            "re-registered with the controller"
        );
        for (sender, reply) in std::mem::take(&mut self.held_replies) {
            if let Err(err) = sender.send(reply).await {
                tracing::warn!(error = %err, "held reply not sent");
            }
        }
        Ok(period_changed)
    }
}
