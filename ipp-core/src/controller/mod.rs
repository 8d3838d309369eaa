//! The controller: the Hub plus its schedulers, assembled from a transport, a store and a
//! load-balancing scheme.
//!
//! ```no_run
//! # async fn demo() -> ipp_core::Result<()> {
//! use std::sync::Arc;
//! use ipp_core::controller::{Controller, ControllerConfig};
//! use ipp_core::store::DictDb;
//! use ipp_core::transport::MemoryTransport;
//!
//! let controller = Controller::builder(ControllerConfig::default())
//!     .with_transport(Arc::new(MemoryTransport::new()))
//!     .with_store(Arc::new(DictDb::default()))
//!     .start()
//!     .await?;
//! println!("clients connect with {:?}", controller.client_info());
//! controller.shutdown().await;
//! # Ok(()) }
//! ```

mod broadcast;
mod config;
mod events;
mod heartbeat;
mod hub;
mod ordered;
mod recent;
mod relay;
mod task;
pub(crate) mod wire_fields;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::ControllerConfig;

use crate::error::{Error, Result};
use crate::protocol::{ClientConnectionInfo, EngineConnectionInfo, Session, SigningKey};
use crate::scheduler::{scheme_by_name, Scheduler};
use crate::store::{DictDb, Store};
use crate::transport::{Socket, SocketKind, SocketOptions, Transport};

/// Assembles a [`Controller`] from parts.
#[derive(Debug)]
pub struct ControllerBuilder {
    config: ControllerConfig,
    transport: Option<Arc<dyn Transport>>,
    store: Option<Arc<dyn Store>>,
    scheme: Option<Box<dyn Scheduler>>,
}

impl ControllerBuilder {
    /// Sets the transport (required).
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sets the task database. Default: a [`DictDb`] with default limits.
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Sets the load-balancing scheme. Default: the one named by `config.scheme`.
    pub fn with_scheme(mut self, scheme: Box<dyn Scheduler>) -> Self {
        self.scheme = Some(scheme);
        self
    }

    /// Binds every socket and starts the Hub and the schedulers.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing transport or bad settings; [`Error::Address`] when a
    /// socket cannot be bound.
    pub async fn start(self) -> Result<Controller> {
        let transport = self
            .transport
            .ok_or_else(|| Error::Config("a controller needs a transport".into()))?;
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(DictDb::default()) as Arc<dyn Store>);
        let scheme = match self.scheme {
            Some(scheme) => scheme,
            None => scheme_by_name(&self.config.scheme)?,
        };
        Controller::start(self.config, transport, store, scheme).await
    }
}

/// A running controller. Dropping it does not stop it: call [`Controller::shutdown`].
#[derive(Debug)]
pub struct Controller {
    client_info: ClientConnectionInfo,
    engine_info: EngineConnectionInfo,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

/// Hands out the configured ports in order, then port 0 (a random free port).
struct Ports {
    pool: std::vec::IntoIter<u16>,
}

impl Ports {
    fn next(&mut self) -> u16 {
        self.pool.next().unwrap_or(0)
    }
}

impl Controller {
    /// Starts assembling a controller.
    pub fn builder(config: ControllerConfig) -> ControllerBuilder {
        ControllerBuilder {
            config,
            transport: None,
            store: None,
            scheme: None,
        }
    }

    async fn start(
        config: ControllerConfig,
        transport: Arc<dyn Transport>,
        store: Arc<dyn Store>,
        scheme: Box<dyn Scheduler>,
    ) -> Result<Self> {
        if config.broadcast_leaves == 0 {
            return Err(Error::Config(
                "broadcast_leaves must be at least 1 (engines pick a leaf by id modulo the count)"
                    .into(),
            ));
        }
        let restored = match (&config.engine_state_file, config.restore_engines) {
            (_, false) => None,
            (None, true) => {
                return Err(Error::Config(
                    "restore_engines needs engine_state_file: the file to restore the engines \
                     from"
                        .into(),
                ))
            }
            (Some(path), true) => hub::EngineState::read(path)?.map(|state| hub::Restore {
                state,
                wait: config
                    .heartbeat_deadline()
                    .max(Duration::from_secs(config.registration_timeout_s.max(1))),
            }),
        };
        let mut ports = Ports {
            pool: config.ports.clone().into_iter(),
        };
        let ip = config.ip.clone();
        let bind = |kind: SocketKind, port: u16, identity: Option<&'static str>| {
            let transport = Arc::clone(&transport);
            let address = format!("tcp://{ip}:{port}");
            async move {
                let mut options = SocketOptions::default();
                if let Some(identity) = identity {
                    options = options.with_identity(identity);
                }
                if kind == SocketKind::Sub {
                    options = options.with_subscription(bytes::Bytes::new());
                }
                transport.bind(kind, &address, options).await
            }
        };
        let registration = bind(SocketKind::Router, ports.next(), None).await?;
        let notification = bind(SocketKind::Pub, ports.next(), None).await?;
        let mux_in = bind(SocketKind::Router, ports.next(), Some("mux_in")).await?;
        let mux_out = bind(SocketKind::Router, ports.next(), Some("mux_out")).await?;
        let control_in = bind(SocketKind::Router, ports.next(), Some("control_in")).await?;
        let control_out = bind(SocketKind::Router, ports.next(), Some("control_out")).await?;
        let task_in = bind(SocketKind::Router, ports.next(), Some("task_in")).await?;
        let task_out = bind(SocketKind::Router, ports.next(), Some("task_out")).await?;
        let iopub_in = bind(SocketKind::Sub, ports.next(), None).await?;
        let iopub_out = bind(SocketKind::Pub, ports.next(), None).await?;
        let hb_ping = bind(SocketKind::Pub, ports.next(), None).await?;
        let hb_pong = bind(SocketKind::Router, ports.next(), None).await?;
        let broadcast_root =
            bind(SocketKind::Router, ports.next(), Some("sub_scheduler_0")).await?;
        let mut leaves = Vec::new();
        for leaf in 0..config.broadcast_leaves {
            let identity: &'static str = if leaf == 0 {
                "sub_scheduler_00"
            } else {
                "sub_scheduler_01"
            };
            leaves.push(bind(SocketKind::Router, ports.next(), Some(identity)).await?);
        }
        let port = |socket: &Socket| {
            socket.port().ok_or_else(|| Error::Address {
                address: socket.address().to_owned(),
                reason: "the transport reported no port".into(),
            })
        };
        let interface = format!("tcp://{}", config.ip);
        let client_info = ClientConnectionInfo {
            ssh: String::new(),
            interface: interface.clone(),
            registration: port(&registration)?,
            control: port(&control_in)?,
            mux: port(&mux_in)?,
            task: port(&task_in)?,
            task_scheme: scheme.name().to_owned(),
            iopub: port(&iopub_out)?,
            notification: port(&notification)?,
            broadcast: port(&broadcast_root)?,
            key: config.key.clone(),
            curve_serverkey: None,
            location: config.location.clone(),
            pack: "json".into(),
            unpack: "json".into(),
            signature_scheme: "hmac-sha256".into(),
        };
        let engine_info = EngineConnectionInfo {
            ssh: String::new(),
            interface,
            registration: client_info.registration,
            control: port(&control_out)?,
            mux: port(&mux_out)?,
            task: port(&task_out)?,
            iopub: port(&iopub_in)?,
            hb_ping: port(&hb_ping)?,
            hb_pong: port(&hb_pong)?,
            broadcast: leaves.iter().map(port).collect::<Result<_>>()?,
            key: config.key.clone(),
            curve_serverkey: None,
            location: config.location.clone(),
            pack: "json".into(),
            unpack: "json".into(),
            signature_scheme: "hmac-sha256".into(),
        };

        let session = Arc::new(Session::new(SigningKey::new(config.key.as_bytes())));
        let shutdown = CancellationToken::new();
        let (hub_tx, hub_rx) = mpsc::channel(config.event_queue.max(1));
        let (engine_events_tx, engine_events_rx) = mpsc::channel(1024);
        let (hearts_tx, hearts_rx) = mpsc::channel(1024);
        let (task_commands_tx, task_commands_rx) = mpsc::channel(1024);
        let max_bytes = config.max_message_bytes;
        let mut tasks = JoinSet::new();

        tasks.spawn(hub::run_hub(hub::HubParts {
            session: Arc::clone(&session),
            store: Arc::clone(&store),
            engine_info: engine_info.clone(),
            heartbeat_period: config.heartbeat_period(),
            registration_timeout: Duration::from_secs(config.registration_timeout_s.max(1)),
            max_message_bytes: max_bytes,
            query: registration,
            notification,
            events: hub_rx,
            engine_events: engine_events_tx,
            hearts: hearts_tx,
            resubmit: task_commands_tx.clone(),
            shutdown: shutdown.clone(),
            engine_state_file: config.engine_state_file.clone(),
            restored,
            store_write_patience: config.store_write_patience(),
        }));
        tasks.spawn(relay::run_router_relay(
            relay::RelayKind::Mux,
            mux_in,
            mux_out,
            Arc::clone(&session),
            max_bytes,
            hub_tx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(relay::run_router_relay(
            relay::RelayKind::Control(task_commands_tx),
            control_in,
            control_out,
            Arc::clone(&session),
            max_bytes,
            hub_tx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(relay::run_iopub_relay(
            iopub_in,
            iopub_out,
            Arc::new(Session::new(SigningKey::new(config.key.as_bytes()))),
            max_bytes,
            hub_tx.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(heartbeat::run_heart_monitor(
            hb_ping,
            hb_pong,
            config.heartbeat_period(),
            config.heartbeat_max_misses,
            hub_tx.clone(),
            hearts_rx,
            shutdown.clone(),
        ));
        tasks.spawn(task::run_task_scheduler(task::TaskSchedulerParts {
            session: Arc::clone(&session),
            scheme,
            hwm: config.hwm,
            max_message_bytes: max_bytes,
            store: Arc::clone(&store),
            clients: task_in,
            engines: task_out,
            hub: hub_tx,
            engine_events: engine_events_rx,
            commands: task_commands_rx,
            shutdown: shutdown.clone(),
        }));
        tasks.spawn(broadcast::run_broadcast_scheduler(
            session,
            broadcast_root,
            leaves,
            max_bytes,
            shutdown.clone(),
        ));
        tracing::info!(
            registration = client_info.registration,
            interface = %client_info.interface,
            scheme = %client_info.task_scheme,
            "controller started"
        );
        Ok(Self {
            client_info,
            engine_info,
            shutdown,
            tasks,
        })
    }

    /// What clients need to connect (the content of `ipcontroller-client.json`).
    pub fn client_info(&self) -> &ClientConnectionInfo {
        &self.client_info
    }

    /// What engines need to connect (the content of `ipcontroller-engine.json`).
    pub fn engine_info(&self) -> &EngineConnectionInfo {
        &self.engine_info
    }

    /// A token that is cancelled when the controller stops (also by a client's
    /// `shutdown_request`); cancelling it stops the controller.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the controller stops (a client asked, or the token was cancelled).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
    }

    /// Stops every task and waits for them to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_scheduling;
