//! The connection files `ipcontroller[-<cluster_id>]-{client,engine}.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The settings common to both connection files, in the order ipyparallel writes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientConnectionInfo {
    /// SSH server for tunnelling; empty for none.
    #[serde(default)]
    pub ssh: String,
    /// `tcp://<ip>`; peers build URLs as `interface:port`.
    pub interface: String,
    /// Hub ROUTER port (registration and queries).
    pub registration: u16,
    /// Client-facing control port.
    pub control: u16,
    /// Client-facing MUX (direct) port.
    pub mux: u16,
    /// Client-facing task (load-balanced) port.
    pub task: u16,
    /// The load-balancing scheme's name.
    pub task_scheme: String,
    /// Client-facing IOPub port.
    pub iopub: u16,
    /// Notification PUB port.
    pub notification: u16,
    /// Root broadcast scheduler port.
    pub broadcast: u16,
    /// The HMAC key string.
    pub key: String,
    /// CurveZMQ server key; we do not support CURVE, so always `None`.
    #[serde(default)]
    pub curve_serverkey: Option<String>,
    /// Controller host name, used by peers to resolve `0.0.0.0`.
    #[serde(default)]
    pub location: String,
    /// Packer name, `json`.
    pub pack: String,
    /// Unpacker name, `json`.
    pub unpack: String,
    /// `hmac-sha256`.
    pub signature_scheme: String,
}

/// The engine connection file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConnectionInfo {
    /// SSH server for tunnelling; empty for none.
    #[serde(default)]
    pub ssh: String,
    /// `tcp://<ip>`.
    pub interface: String,
    /// Hub ROUTER port (the same as the client's).
    pub registration: u16,
    /// Engine-facing control port.
    pub control: u16,
    /// Engine-facing MUX port.
    pub mux: u16,
    /// Engine-facing task port.
    pub task: u16,
    /// Engine-facing IOPub port (a bound SUB).
    pub iopub: u16,
    /// Heartbeat ping PUB port.
    pub hb_ping: u16,
    /// Heartbeat pong ROUTER port.
    pub hb_pong: u16,
    /// Broadcast leaf ports; engine `id` connects to `broadcast[id % len]`.
    pub broadcast: Vec<u16>,
    /// The HMAC key string.
    #[serde(default)]
    pub key: String,
    /// CurveZMQ server key; always `None` here.
    #[serde(default)]
    pub curve_serverkey: Option<String>,
    /// Controller host name.
    #[serde(default)]
    pub location: String,
    /// Packer name, `json`.
    pub pack: String,
    /// Unpacker name, `json`.
    pub unpack: String,
    /// `hmac-sha256`.
    pub signature_scheme: String,
}

impl EngineConnectionInfo {
    /// The address dict sent inside `registration_reply` (no key, location or ssh).
    pub fn addresses(&self) -> serde_json::Value {
        serde_json::json!({
            "interface": self.interface,
            "registration": self.registration,
            "control": self.control,
            "mux": self.mux,
            "task": self.task,
            "iopub": self.iopub,
            "hb_ping": self.hb_ping,
            "hb_pong": self.hb_pong,
            "broadcast": self.broadcast,
        })
    }
}

/// Where the two connection files of a cluster live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionFiles {
    /// `<profile>/security/ipcontroller[-<id>]-client.json`.
    pub client: PathBuf,
    /// `<profile>/security/ipcontroller[-<id>]-engine.json`.
    pub engine: PathBuf,
}

impl ConnectionFiles {
    /// The file names ipyparallel uses for a profile directory and optional cluster id.
    pub fn in_profile(profile_dir: &Path, cluster_id: &str) -> Self {
        let security = profile_dir.join("security");
        let stem = if cluster_id.is_empty() {
            "ipcontroller".to_owned()
        } else {
            format!("ipcontroller-{cluster_id}")
        };
        Self {
            client: security.join(format!("{stem}-client.json")),
            engine: security.join(format!("{stem}-engine.json")),
        }
    }

    /// Writes both files, 2-space indented with mode 0600, as the Python controller does.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be written.
    pub fn write(
        &self,
        client: &ClientConnectionInfo,
        engine: &EngineConnectionInfo,
    ) -> Result<()> {
        write_private_json(&self.client, client)?;
        write_private_json(&self.engine, engine)
    }

    /// Reads both files back (for `--reuse`).
    ///
    /// # Errors
    /// [`Error::Io`] when a file is missing, [`Error::Config`] when it does not parse or the
    /// two files disagree on the key or the registration port.
    pub fn read(&self) -> Result<(ClientConnectionInfo, EngineConnectionInfo)> {
        let client: ClientConnectionInfo = read_json(&self.client)?;
        let engine: EngineConnectionInfo = read_json(&self.engine)?;
        if client.key != engine.key
            || client.registration != engine.registration
            || client.signature_scheme != engine.signature_scheme
        {
            return Err(Error::Config(format!(
                "{} and {} disagree on key, registration port or signature scheme; \
                 delete them or start without --reuse",
                self.client.display(),
                self.engine.display()
            )));
        }
        Ok((client, engine))
    }

    /// Removes both files; missing files are not an error.
    pub fn remove(&self) {
        for path in [&self.client, &self.engine] {
            if let Err(err) = std::fs::remove_file(path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %err, "could not remove connection file");
                }
            }
        }
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        operation: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text).map_err(|err| {
        Error::Config(format!(
            "{} is not a valid connection file: {err}",
            path.display()
        ))
    })
}

fn write_private_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let io_err = |source| Error::Io {
        operation: format!("writing {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|err| Error::Config(format!("cannot encode {}: {err}", path.display())))?;
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    // A file that existed before keeps its old mode through `open`; force 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err)?;
    file.write_all(text.as_bytes()).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientConnectionInfo {
        ClientConnectionInfo {
            ssh: String::new(),
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 2,
            mux: 3,
            task: 4,
            task_scheme: "leastload".into(),
            iopub: 5,
            notification: 6,
            broadcast: 7,
            key: "k".into(),
            curve_serverkey: None,
            location: "host".into(),
            pack: "json".into(),
            unpack: "json".into(),
            signature_scheme: "hmac-sha256".into(),
        }
    }

    fn engine() -> EngineConnectionInfo {
        EngineConnectionInfo {
            ssh: String::new(),
            interface: "tcp://127.0.0.1".into(),
            registration: 1,
            control: 12,
            mux: 13,
            task: 14,
            iopub: 15,
            hb_ping: 16,
            hb_pong: 17,
            broadcast: vec![18, 19],
            key: "k".into(),
            curve_serverkey: None,
            location: "host".into(),
            pack: "json".into(),
            unpack: "json".into(),
            signature_scheme: "hmac-sha256".into(),
        }
    }

    #[test]
    fn files_are_named_like_ipyparallel() {
        let files = ConnectionFiles::in_profile(Path::new("/p"), "x");
        assert_eq!(
            files.client,
            Path::new("/p/security/ipcontroller-x-client.json")
        );
        let files = ConnectionFiles::in_profile(Path::new("/p"), "");
        assert_eq!(
            files.engine,
            Path::new("/p/security/ipcontroller-engine.json")
        );
    }

    #[test]
    fn written_files_are_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = ConnectionFiles::in_profile(dir.path(), "");
        files.write(&client(), &engine()).unwrap();
        let mode = std::fs::metadata(&files.client)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&files.client).unwrap();
        assert!(
            text.starts_with("{\n  \"ssh\": \"\",\n  \"interface\""),
            "{text}"
        );
        assert_eq!(files.read().unwrap(), (client(), engine()));
        files.remove();
        assert!(!files.client.exists());
    }

    #[test]
    fn disagreeing_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let files = ConnectionFiles::in_profile(dir.path(), "");
        let mut other = engine();
        other.key = "different".into();
        files.write(&client(), &other).unwrap();
        assert!(matches!(files.read(), Err(Error::Config(_))));
    }
}
