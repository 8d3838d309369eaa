//! The engine runtime: registers with a controller, answers heartbeats, runs requests one at
//! a time on an [`Executor`], publishes output on IOPub and answers control messages, as a
//! real ipyparallel `ipengine` does, toward our controller and toward ipyparallel's.
//!
//! ```
//! # async fn demo() -> ipp_core::Result<()> {
//! use std::sync::Arc;
//! use ipp_core::controller::{Controller, ControllerConfig};
//! use ipp_core::engine::{Engine, RustExecutor};
//! use ipp_core::transport::{MemoryTransport, Transport};
//!
//! let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
//! let controller = Controller::builder(ControllerConfig::default())
//!     .with_transport(Arc::clone(&transport))
//!     .start()
//!     .await?;
//!
//! let executor = RustExecutor::new();
//! executor.register_infallible("square", |n: i64| n * n);
//! let engine = Engine::builder(controller.engine_info().clone())
//!     .with_transport(transport)
//!     .with_executor(Arc::new(executor))
//!     .start()
//!     .await?;
//! assert_eq!(engine.id(), 0);
//! engine.shutdown().await;
//! controller.shutdown().await;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # What the engine does
//! - **Registration**: `registration_request {uuid[, id]}` on a DEALER whose identity is the
//!   engine uuid (the [`crate::protocol::Session`] id), then the shell ROUTERs
//!   (MUX, task, and broadcast leaf `id % len`), the control ROUTER, the IOPub PUB and the
//!   heart (SUB on `hb_ping`, DEALER to `hb_pong`), all with identity = uuid.
//! - **Requests** from MUX, task and broadcast run one at a time in arrival order; each is
//!   framed by IOPub `status busy` / `status idle`, and the reply carries ipyparallel's
//!   metadata (`started`, `dependencies_met`, `engine`, `is_broadcast`, `is_coalescing`,
//!   `original_msg_id`, `label`, `status`). Busy is dated when the request starts but
//!   published only before its first output, once it has run for a millisecond, or else
//!   with idle in one write after the reply: a no-op costs one write fewer here and at
//!   the controller, IOPub order stays busy, outputs, idle, and only the reply (another
//!   socket, never ordered against IOPub) may reach a client before busy.
//! - **Control** requests are handled at once, even while a request runs: `abort_request`
//!   (queued requests are answered `status: aborted` when their turn comes; a running one
//!   named in `msg_ids` is interrupted through [`Executor::signal`] (SIGINT) and answered
//!   `aborted` if it stops within a second; a Rust function cannot be interrupted and
//!   answers its real result; the `abort_reply` lists the running ids in `interrupting`,
//!   our extension), `clear_request`, `shutdown_request`, `signal_request` (handed to
//!   [`Executor::signal`]: the Python executor of `ipp-py` interrupts running Python code
//!   on SIGINT; a running Rust function cannot be interrupted, so the Rust executor
//!   acknowledges and drops it), `kernel_info_request`.
//! - **Heartbeats** are echoed by their own task, so a long request never delays them.
//!
//! # Losing the controller
//! When no ping arrives for [`EngineConfig::reconnect_after_beats`] heartbeat periods, or
//! the ping payload (the heart monitor's lifetime) goes backwards because the controller
//! restarted, the engine pauses its heartbeats and re-registers (asking for its old id; it
//! carries on with whatever id it gets). Its sockets reconnect by themselves. Replies
//! finished while the controller is away are held (up to
//! [`EngineConfig::max_held_replies`]) and sent after the re-registration: a client whose
//! connection to the controller survived receives them; a client that reconnected to a
//! restarted controller has a new routing id there, so those replies reach nobody, and the
//! restarted controller has no record of the requests (the client sees them as lost, or as
//! failed by the controller's own engine-death handling). If pings stay absent for
//! [`EngineConfig::max_silence`] and re-registration keeps failing, the engine stops with
//! an error (see [`RunningEngine::wait`]).

mod executor;
mod heartbeat;
mod registration;
mod request;
mod runtime;
mod rust_executor;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use executor::{Executor, Outcome, Outputs};
pub use rust_executor::{RustExecutor, TaskContext, RUST_ERROR, RUST_PANIC};

use crate::error::{Error, Result};
use crate::protocol::{EngineConnectionInfo, Session, SigningKey};
use crate::transport::Transport;

/// The environment variable ipyparallel engines read their connection info from (the JSON
/// of `ipcontroller-engine.json`).
pub const CONNECTION_INFO_ENV: &str = "IPP_CONNECTION_INFO";

/// Reads an engine connection file (`ipcontroller-engine.json`).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Config`] when it does not parse.
pub fn connection_info_from_file(path: &Path) -> Result<EngineConnectionInfo> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        operation: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| {
        Error::Config(format!(
            "{} is not a valid engine connection file: {err}",
            path.display()
        ))
    })
}

/// Reads the connection info from `$IPP_CONNECTION_INFO`; `Ok(None)` when it is unset or empty.
///
/// # Errors
/// [`Error::Config`] when the variable holds something other than an engine connection
/// file's JSON.
pub fn connection_info_from_env() -> Result<Option<EngineConnectionInfo>> {
    let Some(text) = std::env::var_os(CONNECTION_INFO_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = text.to_string_lossy();
    serde_json::from_str(&text).map(Some).map_err(|err| {
        Error::Config(format!(
            "${CONNECTION_INFO_ENV} is not an engine connection file's JSON: {err}"
        ))
    })
}

/// Timeouts and limits of an engine. The defaults are ipyparallel's where it has one.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How long to wait for `registration_reply` (ipyparallel's `IPEngine.timeout`, 5 s).
    pub registration_timeout: Duration,
    /// Heartbeat periods without a ping after which the engine re-registers (10).
    pub reconnect_after_beats: u32,
    /// Silence after which the engine gives up and stops with an error, if re-registration
    /// has not succeeded by then. `None`: ipyparallel's `50 × (hb_period + 500 ms)`.
    pub max_silence: Option<Duration>,
    /// Pause between failed re-registration attempts (1 s).
    pub registration_retry: Duration,
    /// Requests queued at most; beyond, the engine stops reading its shell sockets and the
    /// transport's queues fill up (65 536).
    pub max_queued_requests: usize,
    /// Replies held while the controller is away (1024; the oldest are dropped beyond).
    pub max_held_replies: usize,
    /// How long sockets stay open after the engine's last messages (the replies to a
    /// `shutdown_request`, or the `unregistration_request` of [`RunningEngine::shutdown`]),
    /// so the transport can deliver them: it has no flush (200 ms).
    pub linger: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            registration_timeout: Duration::from_secs(5),
            reconnect_after_beats: 10,
            max_silence: None,
            registration_retry: Duration::from_secs(1),
            max_queued_requests: 65_536,
            max_held_replies: 1024,
            linger: Duration::from_millis(200),
        }
    }
}

impl EngineConfig {
    /// The silence after which the engine re-registers, for a heartbeat period.
    pub(crate) fn reconnect_after(&self, period: Duration) -> Duration {
        period * self.reconnect_after_beats.max(1)
    }

    /// The silence after which the engine stops, for a heartbeat period.
    pub(crate) fn give_up_after(&self, period: Duration) -> Duration {
        self.max_silence
            .unwrap_or_else(|| (period + Duration::from_millis(500)) * 50)
    }
}

/// The entry point: `Engine::builder(info)…start()` gives a [`RunningEngine`].
#[derive(Debug)]
pub struct Engine {
    _private: (),
}

impl Engine {
    /// Starts assembling an engine for the controller described by `info`.
    pub fn builder(info: EngineConnectionInfo) -> EngineBuilder {
        EngineBuilder {
            info,
            transport: None,
            executor: None,
            requested_id: None,
            config: EngineConfig::default(),
        }
    }
}

/// Assembles and starts an engine.
#[derive(Debug)]
pub struct EngineBuilder {
    info: EngineConnectionInfo,
    transport: Option<Arc<dyn Transport>>,
    executor: Option<Arc<dyn Executor>>,
    requested_id: Option<u32>,
    config: EngineConfig,
}

impl EngineBuilder {
    /// Sets the transport (required): `ZmqTransport` for real controllers,
    /// [`MemoryTransport`](crate::transport::MemoryTransport) in tests.
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sets what runs the requests (required), e.g. a [`RustExecutor`].
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> Self {
        self.executor = Some(executor);
        self
    }

    /// Asks the controller for this engine id (granted when free, as ipyparallel's
    /// `IPEngine.id`).
    pub fn with_requested_id(mut self, id: Option<u32>) -> Self {
        self.requested_id = id;
        self
    }

    /// Sets timeouts and limits.
    pub fn with_config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers with the controller, connects every socket and starts serving.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing transport or executor, an unusable connection info,
    /// or a refused registration (e.g. `uuid in use`); [`Error::Timeout`] when no
    /// `registration_reply` arrives in time.
    pub async fn start(self) -> Result<RunningEngine> {
        let transport = self
            .transport
            .ok_or_else(|| Error::Config("an engine needs a transport".into()))?;
        let executor = self
            .executor
            .ok_or_else(|| Error::Config("an engine needs an executor".into()))?;
        if self.info.broadcast.is_empty() {
            return Err(Error::Config(
                "the engine connection info lists no broadcast ports".into(),
            ));
        }
        if !self.info.signature_scheme.is_empty() && self.info.signature_scheme != "hmac-sha256" {
            return Err(Error::Config(format!(
                "unsupported signature scheme {:?} (only hmac-sha256)",
                self.info.signature_scheme
            )));
        }
        let session = Arc::new(Session::new(SigningKey::new(self.info.key.as_bytes())));
        let registered = registration::register(
            &transport,
            &self.info,
            &session,
            self.requested_id,
            self.config.registration_timeout,
        )
        .await
        .map_err(registration::RegistrationFailure::into_error)?;
        let uuid = session.id().to_owned();
        tracing::info!(engine.id = registered.id, engine.uuid = %uuid, "engine registered");
        let parts = runtime::Parts {
            transport,
            info: self.info,
            session,
            executor,
            config: self.config,
            registered,
        };
        let runtime = runtime::Runtime::connect(parts).await?;
        let identity = runtime.identity();
        let shutdown = CancellationToken::new();
        let stopped = CancellationToken::new();
        let task = tokio::spawn(runtime.run(shutdown.clone(), stopped.clone()));
        Ok(RunningEngine {
            identity,
            shutdown,
            stopped,
            task,
        })
    }
}

/// A running engine. Dropping it does not stop it: call [`RunningEngine::shutdown`].
#[derive(Debug)]
pub struct RunningEngine {
    identity: Arc<executor::EngineIdentity>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl RunningEngine {
    /// The engine id the controller assigned (it changes if the engine had to re-register
    /// with a restarted controller that gave it another one).
    pub fn id(&self) -> u32 {
        self.identity.id()
    }

    /// The engine uuid (its session id, and the identity of all its sockets).
    pub fn uuid(&self) -> &str {
        &self.identity.uuid
    }

    /// Waits until the engine stops (a client sent `shutdown_request`, the controller was
    /// lost for good, or [`RunningEngine::shutdown`] was called).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// Whether the engine has stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.is_cancelled()
    }

    /// Stops the engine: tells the controller (`unregistration_request`) and waits for every
    /// task. A request still running is abandoned (its blocking-pool thread finishes on its
    /// own; its result is discarded).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(err) = self.wait().await {
            tracing::debug!(error = %err, "engine had stopped with an error");
        }
    }

    /// Waits until the engine stops by itself and says why: `Ok` after a `shutdown_request`
    /// (or [`RunningEngine::shutdown`]), an error when the controller was lost for good.
    ///
    /// # Errors
    /// [`Error::Timeout`] when heartbeats stopped and re-registration kept failing;
    /// [`Error::Closed`] when the engine's task ended abnormally.
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(err) => Err(Error::Closed {
                what: format!("engine task ({err})"),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
