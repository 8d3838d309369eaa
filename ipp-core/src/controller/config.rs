//! Settings of a controller.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How a controller is set up: addresses, heartbeat, scheduling and limits.
///
/// Keys follow ipyparallel's configuration names where one exists (`HeartMonitor.period`
/// is `heartbeat_period_ms`, `TaskScheduler.hwm` is `hwm`, …).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ControllerConfig {
    /// IP address every socket binds to. Default `127.0.0.1` (loopback only).
    pub ip: String,
    /// Host name written into the connection files as `location`.
    pub location: String,
    /// Ports to draw from, in order, before falling back to random free ports.
    pub ports: Vec<u16>,
    /// The HMAC key; empty disables signing (not recommended).
    pub key: String,
    /// Heartbeat period in milliseconds (`--ping`, ipyparallel's `HeartMonitor.period`).
    pub heartbeat_period_ms: u64,
    /// Consecutive missed heartbeats after which an engine is unregistered
    /// (`HeartMonitor.max_heartmonitor_misses`; the engine goes on the next miss).
    pub heartbeat_max_misses: u32,
    /// Seconds a registering engine has to send its first heartbeat.
    pub registration_timeout_s: u64,
    /// The load-balancing scheme's name (`--scheme`).
    pub scheme: String,
    /// Most tasks outstanding per engine from the task scheduler; 0 = unlimited.
    pub hwm: usize,
    /// Number of broadcast leaf sockets engines connect to (ipyparallel's default is 2).
    pub broadcast_leaves: usize,
    /// Capacity of the queues between the schedulers and the Hub.
    pub event_queue: usize,
    /// Largest message, in bytes, the controller accepts from a client (summed over frames).
    pub max_message_bytes: usize,
    /// How long the Hub waits for the task database to take one write, in milliseconds.
    /// A store that takes longer is not keeping up: the Hub drops records (logged) until
    /// it catches up, so that a stalled disk or a hung server never holds up routing.
    /// 0: wait as long as the store needs (nothing is dropped; routing waits with it).
    pub store_write_patience_ms: u64,
    /// The engine state file the Hub rewrites whenever an engine registers or goes away
    /// (`{"engines": {"<id>": "<uuid>"}, "next_id": N}`, ipyparallel's
    /// `Hub.engine_state_file`; `ipcontroller` uses `<profile_dir>/log/engines<cluster_id>.json`).
    /// `None` (the default for an embedded controller): no file. Set in code, not read from
    /// a configuration file (`ipcontroller` derives it from the profile).
    #[serde(skip)]
    pub engine_state_file: Option<PathBuf>,
    /// Take back the engines listed in `engine_state_file` by an earlier controller
    /// (`ipcontroller --restore`): each rejoins with its old id on its first heartbeat, and
    /// one that sends none within the registration timeout (or the heartbeat deadline, if
    /// longer) is dropped. Needs `engine_state_file`; a missing file restores nothing. Set
    /// in code (`ipcontroller --restore`), not read from a configuration file.
    #[serde(skip)]
    pub restore_engines: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            ip: "127.0.0.1".to_owned(),
            location: "localhost".to_owned(),
            ports: Vec::new(),
            key: crate::protocol::new_id(),
            heartbeat_period_ms: 3000,
            heartbeat_max_misses: 10,
            registration_timeout_s: 30,
            scheme: "leastload".to_owned(),
            hwm: 1,
            broadcast_leaves: 2,
            event_queue: 65_536,
            max_message_bytes: 1 << 30,
            store_write_patience_ms: 1000,
            engine_state_file: None,
            restore_engines: false,
        }
    }
}

impl ControllerConfig {
    /// The heartbeat period.
    pub fn heartbeat_period(&self) -> Duration {
        Duration::from_millis(self.heartbeat_period_ms.max(1))
    }

    /// How long the Hub waits for the store to take a write (`None`: as long as it takes).
    pub fn store_write_patience(&self) -> Option<Duration> {
        (self.store_write_patience_ms > 0)
            .then(|| Duration::from_millis(self.store_write_patience_ms))
    }

    /// How long after its last beat an engine is declared dead, at most.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_period() * (self.heartbeat_max_misses + 2)
    }
}
