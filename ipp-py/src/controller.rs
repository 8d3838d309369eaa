//! `ipp_rs._ipp_rs.Controller`: the `ipp-core` controller (Hub and schedulers over
//! ZeroMQ) running in this process, on the shared tokio runtime.
//!
//! What the reference binary (`examples/ipcontroller`) does for its stores and connection
//! files is repeated here in its minimal form (DictDb, NoDb or SQLite; no `ipcontroller.toml`,
//! no MongoDB, no `--reuse`): the binary's helpers live in an example, not a library.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipp_core::controller::{Controller, ControllerConfig};
use ipp_core::protocol::{ClientConnectionInfo, ConnectionFiles, EngineConnectionInfo};
use ipp_core::store::{DictDb, NoDb, Store};
use ipp_store_sqlite::{SqliteConfig, SqliteStore};
use ipp_transport_zmq::ZmqTransport;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::runtime::runtime;

/// Which task database the controller keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DbChoice {
    /// Records in memory (ipyparallel's `DictDB`, the default).
    Dict,
    /// Records nothing; task-database queries answer with an error.
    No,
    /// Records in an SQLite file.
    Sqlite(PathBuf),
}

impl DbChoice {
    /// Parses `db` (`dictdb`, `nodb`, `sqlite`/`sqlitedb`) with the SQLite file `db_path`
    /// (relative paths are taken from `profile_dir`, else from the working directory).
    fn parse(db: &str, db_path: Option<&Path>, profile_dir: Option<&Path>) -> Result<Self, String> {
        let db = db.trim().to_ascii_lowercase();
        let choice = match db.as_str() {
            "dictdb" | "dict" | "memory" => DbChoice::Dict,
            "nodb" | "none" => DbChoice::No,
            "sqlite" | "sqlitedb" => {
                let path = db_path.unwrap_or_else(|| Path::new("tasks.db"));
                let path = match profile_dir {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path.to_path_buf(),
                };
                DbChoice::Sqlite(path)
            }
            other => {
                return Err(format!(
                    "unknown task database {other:?}: use 'dictdb' (in memory), 'nodb' or 'sqlite'"
                ))
            }
        };
        if db_path.is_some() && !matches!(choice, DbChoice::Sqlite(_)) {
            return Err(format!("db_path is only for db='sqlite', not db={db:?}"));
        }
        Ok(choice)
    }
}

/// Everything needed to start a controller.
#[derive(Clone, Debug)]
struct Settings {
    config: ControllerConfig,
    db: DbChoice,
    /// Where the connection files go: `<profile_dir>/security/ipcontroller[-<id>]-*.json`.
    files: Option<ConnectionFiles>,
}

/// A started controller and what stopping it must close.
#[derive(Debug)]
struct Running {
    controller: Controller,
    sqlite: Option<Arc<SqliteStore>>,
    files: Option<ConnectionFiles>,
    client_info: ClientConnectionInfo,
    engine_info: EngineConnectionInfo,
}

/// Why starting failed.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The SQLite file could not be opened.
    #[error("cannot open the sqlite task database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        source: ipp_store_sqlite::Error,
    },
    /// The controller did not start (bad settings, a port in use, …).
    #[error("cannot start the controller: {0}")]
    Controller(ipp_core::Error),
    /// The connection files could not be written.
    #[error("cannot write the connection files: {0}")]
    Files(ipp_core::Error),
}

/// Opens the store, starts the controller and writes the connection files.
async fn start(settings: Settings) -> Result<Running, StartError> {
    let (store, sqlite): (Arc<dyn Store>, _) = match &settings.db {
        DbChoice::Dict => (Arc::new(DictDb::default()), None),
        DbChoice::No => (Arc::new(NoDb), None),
        DbChoice::Sqlite(path) => {
            let store = SqliteStore::open_with(SqliteConfig::new(path))
                .await
                .map_err(|source| StartError::Sqlite {
                    path: path.clone(),
                    source,
                })?;
            let store = Arc::new(store);
            (Arc::clone(&store) as Arc<dyn Store>, Some(store))
        }
    };
    let started = Controller::builder(settings.config)
        .with_transport(Arc::new(ZmqTransport::new()))
        .with_store(store)
        .start()
        .await;
    let controller = match started {
        Ok(controller) => controller,
        Err(err) => {
            close_sqlite(sqlite.as_deref()).await;
            return Err(StartError::Controller(err));
        }
    };
    let client_info = controller.client_info().clone();
    let engine_info = controller.engine_info().clone();
    if let Some(files) = &settings.files {
        if let Err(err) = files.write(&client_info, &engine_info) {
            files.remove();
            controller.shutdown().await;
            close_sqlite(sqlite.as_deref()).await;
            return Err(StartError::Files(err));
        }
        tracing::info!(client = %files.client.display(), engine = %files.engine.display(),
            "connection files written");
    }
    Ok(Running {
        controller,
        sqlite,
        files: settings.files,
        client_info,
        engine_info,
    })
}

/// Finishes the SQLite writer's queued writes.
async fn close_sqlite(sqlite: Option<&SqliteStore>) {
    if let Some(sqlite) = sqlite {
        if let Err(err) = sqlite.close().await {
            tracing::error!(error = %err, "closing the sqlite task database failed");
        }
    }
}

impl Running {
    /// Stops every task of the controller, closes the store and removes the files.
    async fn stop(self) {
        if let Some(files) = &self.files {
            files.remove();
        }
        self.controller.shutdown().await;
        close_sqlite(self.sqlite.as_deref()).await;
        tracing::info!("controller stopped");
    }
}

/// Where a `Controller` object is in its life.
#[derive(Debug)]
enum State {
    /// Created; `start()` not called yet.
    Idle(Box<Settings>),
    /// `start()` is running on another thread.
    Starting,
    Running(Box<Running>),
    /// Stopped (or failed to start): cannot start again.
    Stopped,
}

/// An IPython Parallel controller (Hub and schedulers) running in this process.
///
/// `Controller(ip='127.0.0.1', ...)` only records the settings; `start()` binds the
/// sockets (random free ports unless `ports` lists some) and writes
/// `<profile_dir>/security/ipcontroller[-<cluster_id>]-{client,engine}.json` when
/// `profile_dir` is given, as `ipcontroller` does. `stop()` stops it, closes the task
/// database and removes those files. Also a context manager.
#[pyclass(module = "ipp_rs._ipp_rs", name = "Controller", frozen)]
#[derive(Debug)]
pub(crate) struct PyController {
    state: Mutex<State>,
}

/// `tcp://` addresses bind to an IP; `*` means every interface, as for `ipcontroller`.
fn bind_ip(ip: &str) -> String {
    if ip == "*" {
        "0.0.0.0".to_owned()
    } else {
        ip.to_owned()
    }
}

/// This machine's host name, for the connection files' `location` (as the reference
/// binary does).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A JSON-serialisable value as a Python object (through the `json` module).
fn to_python<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value)
        .map_err(|err| PyRuntimeError::new_err(format!("cannot encode JSON: {err}")))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

#[pymethods]
impl PyController {
    #[new]
    #[pyo3(signature = (
        ip = "127.0.0.1",
        *,
        location = None,
        ports = None,
        scheme = "leastload",
        hwm = 1,
        db = "dictdb",
        db_path = None,
        ping = None,
        key = None,
        profile_dir = None,
        cluster_id = "",
        registration_timeout = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ip: &str,
        location: Option<String>,
        ports: Option<Vec<u16>>,
        scheme: &str,
        hwm: usize,
        db: &str,
        db_path: Option<PathBuf>,
        ping: Option<u64>,
        key: Option<String>,
        profile_dir: Option<PathBuf>,
        cluster_id: &str,
        registration_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let db = DbChoice::parse(db, db_path.as_deref(), profile_dir.as_deref())
            .map_err(PyValueError::new_err)?;
        // Fail now rather than at start() for a scheme the controller does not know.
        ipp_core::scheduler::scheme_by_name(scheme)
            .map_err(|err| PyValueError::new_err(err.to_string()))?;
        let mut config = ControllerConfig::default();
        config.ip = bind_ip(ip);
        config.location = location.unwrap_or_else(host_name);
        config.ports = ports.unwrap_or_default();
        config.scheme = scheme.to_owned();
        config.hwm = hwm;
        if let Some(ping) = ping {
            if ping == 0 {
                return Err(PyValueError::new_err(
                    "ping (the heartbeat period, ms) must be > 0",
                ));
            }
            config.heartbeat_period_ms = ping;
        }
        if let Some(key) = key {
            config.key = key;
        }
        if let Some(timeout) = registration_timeout {
            if !(timeout.is_finite() && timeout > 0.0) {
                return Err(PyValueError::new_err(
                    "registration_timeout must be a positive number of seconds",
                ));
            }
            config.registration_timeout_s = timeout.ceil() as u64;
        }
        let files = profile_dir
            .as_deref()
            .map(|dir| ConnectionFiles::in_profile(dir, cluster_id));
        Ok(Self {
            state: Mutex::new(State::Idle(Box::new(Settings { config, db, files }))),
        })
    }

    /// Binds the sockets, starts the Hub and the schedulers and writes the connection
    /// files (GIL released). Returns `self`. Raises `RuntimeError` if already started or
    /// stopped, `OSError` if a socket cannot be bound or a file written.
    fn start(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let this = slf.get();
        let py = slf.py();
        let settings = {
            let mut state = this.lock();
            match std::mem::replace(&mut *state, State::Starting) {
                State::Idle(settings) => settings,
                other => {
                    let what = match &other {
                        State::Starting => "is starting",
                        State::Running(_) => "is already running",
                        _ => "was stopped; create a new Controller",
                    };
                    *state = other;
                    return Err(PyRuntimeError::new_err(format!("the controller {what}")));
                }
            }
        };
        let rt = runtime()?;
        let result = py.detach(|| rt.block_on(start(*settings)).map_err(|err| err.to_string()));
        let mut state = this.lock();
        match result {
            Ok(running) => {
                *state = State::Running(Box::new(running));
                drop(state);
                Ok(slf)
            }
            Err(err) => {
                *state = State::Stopped;
                Err(PyOSError::new_err(err))
            }
        }
    }

    /// Stops the controller (GIL released): every task ends, the task database is closed
    /// and the connection files are removed. Does nothing if not running.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let running = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Stopped) {
                State::Running(running) => running,
                // start() on another thread owns the controller until it returns.
                State::Starting => {
                    *state = State::Starting;
                    return Err(PyRuntimeError::new_err(
                        "the controller is starting on another thread; stop it after start() returns",
                    ));
                }
                State::Idle(_) | State::Stopped => return Ok(()),
            }
        };
        let rt = runtime()?;
        py.detach(|| rt.block_on(running.stop()));
        Ok(())
    }

    /// Whether the controller is running: started and not stopped (a client's
    /// `shutdown(hub=True)` stops it too).
    #[getter]
    fn running(&self) -> bool {
        match &*self.lock() {
            State::Running(running) => !running.controller.shutdown_token().is_cancelled(),
            _ => false,
        }
    }

    /// The client connection info (the content of `ipcontroller-client.json`) as a dict.
    #[getter]
    fn client_info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let info = self.with_running(|running| running.client_info.clone())?;
        to_python(py, &info)
    }

    /// The engine connection info (the content of `ipcontroller-engine.json`) as a dict.
    #[getter]
    fn engine_info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let info = self.with_running(|running| running.engine_info.clone())?;
        to_python(py, &info)
    }

    /// The path of `ipcontroller[-<cluster_id>]-client.json`, or None without a profile_dir.
    #[getter]
    fn client_file(&self) -> Option<PathBuf> {
        self.files().map(|files| files.client)
    }

    /// The path of `ipcontroller[-<cluster_id>]-engine.json`, or None without a profile_dir.
    #[getter]
    fn engine_file(&self) -> Option<PathBuf> {
        self.files().map(|files| files.engine)
    }

    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        let idle = matches!(&*slf.get().lock(), State::Idle(_));
        if idle {
            Self::start(slf)
        } else {
            Ok(slf)
        }
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        match &*self.lock() {
            State::Idle(_) => "<Controller (not started)>".to_owned(),
            State::Starting => "<Controller (starting)>".to_owned(),
            State::Running(running) => format!(
                "<Controller {}:{} scheme={}{}>",
                running.client_info.interface,
                running.client_info.registration,
                running.client_info.task_scheme,
                if running.controller.shutdown_token().is_cancelled() {
                    " (shut down by a client)"
                } else {
                    ""
                }
            ),
            State::Stopped => "<Controller (stopped)>".to_owned(),
        }
    }
}

impl PyController {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_running<T>(&self, f: impl FnOnce(&Running) -> T) -> PyResult<T> {
        match &*self.lock() {
            State::Running(running) => Ok(f(running)),
            State::Idle(_) | State::Starting => Err(PyRuntimeError::new_err(
                "the controller is not started: call start() first",
            )),
            State::Stopped => Err(PyRuntimeError::new_err("the controller was stopped")),
        }
    }

    fn files(&self) -> Option<ConnectionFiles> {
        match &*self.lock() {
            State::Idle(settings) => settings.files.clone(),
            State::Running(running) => running.files.clone(),
            State::Starting | State::Stopped => None,
        }
    }
}

impl Drop for PyController {
    /// A controller garbage-collected while running stops in the background (its files
    /// are removed now).
    fn drop(&mut self) {
        let state = std::mem::replace(
            self.state.get_mut().unwrap_or_else(PoisonError::into_inner),
            State::Stopped,
        );
        if let State::Running(running) = state {
            if let Some(files) = &running.files {
                files.remove();
            }
            running.controller.shutdown_token().cancel();
            if let Ok(rt) = runtime() {
                rt.spawn(running.stop());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, db: DbChoice) -> Settings {
        let mut config = ControllerConfig::default();
        config.location = "localhost".into();
        Settings {
            config,
            db,
            files: Some(ConnectionFiles::in_profile(dir, "t1")),
        }
    }

    #[test]
    fn db_choices_parse() {
        let dir = Path::new("/p");
        assert_eq!(DbChoice::parse("DictDB", None, None), Ok(DbChoice::Dict));
        assert_eq!(DbChoice::parse("nodb", None, None), Ok(DbChoice::No));
        assert_eq!(
            DbChoice::parse("sqlite", None, Some(dir)),
            Ok(DbChoice::Sqlite(PathBuf::from("/p/tasks.db")))
        );
        assert_eq!(
            DbChoice::parse("sqlitedb", Some(Path::new("/x/t.db")), Some(dir)),
            Ok(DbChoice::Sqlite(PathBuf::from("/x/t.db")))
        );
        assert!(DbChoice::parse("redis", None, None).is_err());
        assert!(DbChoice::parse("nodb", Some(Path::new("t.db")), None).is_err());
    }

    #[test]
    fn starts_writes_files_and_stops_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime().expect("runtime");
        for db in [
            DbChoice::Dict,
            DbChoice::No,
            DbChoice::Sqlite(dir.path().join("tasks.db")),
        ] {
            let running = rt
                .block_on(start(settings(dir.path(), db.clone())))
                .expect("start");
            let files = running.files.clone().expect("files");
            assert!(files
                .client
                .ends_with("security/ipcontroller-t1-client.json"));
            let (client, engine) = files.read().expect("files read back");
            assert_eq!(client, running.client_info);
            assert_eq!(engine.registration, client.registration);
            assert_ne!(client.registration, 0);
            rt.block_on(running.stop());
            assert!(!files.client.exists() && !files.engine.exists(), "{db:?}");
        }
        assert!(dir.path().join("tasks.db").exists());
    }

    #[test]
    fn a_port_in_use_is_an_error_and_leaves_no_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = runtime().expect("runtime");
        let first = rt
            .block_on(start(settings(dir.path(), DbChoice::Dict)))
            .expect("start");
        let mut second = settings(dir.path(), DbChoice::Dict);
        second.files = Some(ConnectionFiles::in_profile(dir.path(), "t2"));
        second.config.ports = vec![first.client_info.registration];
        let err = rt.block_on(start(second)).expect_err("port in use");
        assert!(matches!(err, StartError::Controller(_)), "{err}");
        assert!(!dir
            .path()
            .join("security/ipcontroller-t2-client.json")
            .exists());
        rt.block_on(first.stop());
    }
}
