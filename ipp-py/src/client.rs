//! `ipp_rs._ipp_rs.NativeClient` and `Reply`: the networking half of `ipp_rs.Client`.
//!
//! All sockets, signing, JSON framing, reply routing and failure handling run in the
//! `ipp-core` client's IO task on the shared tokio runtime (its raw-request API,
//! `ipp_core::client::RawReplies`). Python packs contents and metadata as JSON text and
//! pickles buffers; replies are stored unparsed in Rust and turned into Python objects only
//! when a `Reply` getter is read. Every blocking call releases the GIL and wakes at least
//! every 100 ms to run Python signal handlers (so Ctrl-C works).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use ipp_core::client::{
    Client, ClientConfig, ClientError, Completions, RawChannel, RawOutput, RawReplies, RawReply,
    RawRequest, WaitEnd, WAIT_TICK,
};
use ipp_core::protocol::ClientConnectionInfo;
use ipp_core::transport::Transport;
use ipp_transport_zmq::ZmqTransport;
use pyo3::exceptions::{
    PyConnectionError, PyIndexError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyString, PyTuple};
use serde_json::{json, Value};

use crate::runtime::runtime;

/// Python `bytes` at least this large are sent without copying (the frame keeps the Python
/// object alive); smaller ones are copied, which is cheaper than tracking the object.
const ZERO_COPY_MIN: usize = 64 * 1024;

/// `json.loads`, looked up once.
static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The C scanner of `json`'s default decoder (`scan_once(text, index) -> (value, end)`),
/// looked up once.
static JSON_SCAN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Parses packed JSON into Python objects with the C `json` module.
///
/// Calls the decoder's C scanner directly on the text (what `json.loads` ends up doing,
/// without its Python-level encoding detection, decoding and checks, which cost more than
/// the scan of a small reply); anything it does not take whole (leading or trailing
/// whitespace, invalid JSON or UTF-8) goes through `json.loads`, which also makes the error.
fn loads<'py>(py: Python<'py>, packed: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if let Ok(text) = std::str::from_utf8(packed) {
        let scan = JSON_SCAN.get_or_try_init(py, || {
            py.import("json")?
                .getattr("_default_decoder")?
                .getattr("scan_once")
                .map(Bound::unbind)
        })?;
        if let Ok(found) = scan.bind(py).call1((PyString::new(py, text), 0)) {
            if let Ok((value, end)) = found.extract::<(Bound<'py, PyAny>, usize)>() {
                if end == text.chars().count() {
                    return Ok(value);
                }
            }
        }
    }
    let loads = JSON_LOADS.import(py, "json", "loads")?;
    loads.call1((PyBytes::new(py, packed),))
}

/// The `status` of a packed reply content, read without building the content.
#[derive(serde::Deserialize)]
struct StatusOnly<'a> {
    #[serde(borrow, default)]
    status: Option<std::borrow::Cow<'a, str>>,
}

/// Packs a JSON value into Python objects.
fn value_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    let packed = serde_json::to_vec(value)
        .map_err(|err| PyValueError::new_err(format!("cannot pack a reply: {err}")))?;
    loads(py, &packed)
}

/// The bytes of a buffer-like object (`bytes`, `bytearray`, `memoryview`, numpy arrays,
/// anything `bytes()` accepts, or `str` as UTF-8), copied at most once.
fn to_bytes(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Bytes> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        let data = bytes.as_bytes();
        if data.len() < ZERO_COPY_MIN {
            return Ok(Bytes::copy_from_slice(data));
        }
        return Ok(Bytes::from_owner(PyBackedBytes::from(bytes.clone())));
    }
    if let Ok(array) = obj.cast::<PyByteArray>() {
        return Ok(Bytes::from(array.to_vec()));
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(text.to_cow()?.as_bytes()));
    }
    // Anything with the buffer protocol (memoryview, numpy, array.array): one copy into a
    // `bytes` object, which the frame then shares.
    let copied = obj.py().get_type::<PyBytes>().call1((obj,)).map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be bytes, bytearray, memoryview or another buffer, not {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let copied = copied.cast_into::<PyBytes>()?;
    Ok(Bytes::from_owner(PyBackedBytes::from(copied)))
}

fn to_buffers(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Bytes>> {
    let mut buffers = Vec::new();
    for item in obj.try_iter()? {
        buffers.push(to_bytes(&item?, "each buffer")?);
    }
    Ok(buffers)
}

fn to_ids(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "msg_ids must be a sequence of str, not a single str",
        ));
    }
    let mut ids = Vec::with_capacity(obj.len().unwrap_or(0));
    for item in obj.try_iter()? {
        ids.push(item?.extract::<String>()?);
    }
    Ok(ids)
}

fn duration(seconds: Option<f64>) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_nan() => Err(PyValueError::new_err("timeout must be a number, not NaN")),
        Some(s) if s <= 0.0 => Ok(Some(Duration::ZERO)),
        Some(s) => Ok(Some(
            Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(u64::MAX / 4)),
        )),
    }
}

/// A client error as the Python exception a caller expects.
fn client_error(err: ClientError) -> PyErr {
    let text = err.to_string();
    match err {
        ClientError::Timeout { .. } | ClientError::RequestTimeout { .. } => {
            PyTimeoutError::new_err(text)
        }
        ClientError::ControllerLost { .. }
        | ClientError::ControllerUnreachable { .. }
        | ClientError::ControllerShutdown
        | ClientError::Closed => PyConnectionError::new_err(text),
        ClientError::UnknownEngine(id) => {
            PyIndexError::new_err(format!("Engine {id} not registered"))
        }
        ClientError::NoEngines(_) => PyValueError::new_err(text),
        ClientError::Core(ipp_core::Error::InvalidMessage { .. }) => PyValueError::new_err(text),
        _ => PyRuntimeError::new_err(text),
    }
}

/// Reads a client connection file's JSON, filling what older or hand-written files omit.
fn connection_info(text: &str) -> PyResult<ClientConnectionInfo> {
    let bad = |err: &dyn std::fmt::Display| {
        PyValueError::new_err(format!(
            "not a client connection file's JSON (ipcontroller-client.json): {err}"
        ))
    };
    let mut map: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| bad(&e))?;
    for (key, default) in [
        ("task_scheme", "leastload"),
        ("pack", "json"),
        ("unpack", "json"),
        ("signature_scheme", "hmac-sha256"),
        ("ssh", ""),
        ("location", ""),
    ] {
        if map.get(key).is_none_or(Value::is_null) {
            map.insert(key.into(), json!(default));
        }
    }
    let scheme = map
        .get("signature_scheme")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if scheme != "hmac-sha256" {
        return Err(PyValueError::new_err(format!(
            "signature scheme {scheme:?} is not supported: ipp_rs signs with hmac-sha256"
        )));
    }
    serde_json::from_value(Value::Object(map)).map_err(|e| bad(&e))
}

/// Runs `step` with the GIL released in slices of at most [`WAIT_TICK`], running Python
/// signal handlers between slices, until it returns `Some` or `timeout` passes (`None`).
fn interruptible<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut step: impl FnMut(Duration) -> Option<T> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            None => WAIT_TICK,
            Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_TICK),
        };
        if let Some(value) = py.detach(|| step(slice)) {
            return Ok(Some(value));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

/// A wait on the store with the GIL released; Python signal handlers run every 100 ms and
/// an exception they raise ends the wait.
fn store_wait<T: Send>(
    py: Python<'_>,
    wait: impl FnOnce(&mut dyn FnMut() -> bool) -> T + Send,
) -> PyResult<T> {
    let mut raised: Option<PyErr> = None;
    let value = py.detach(|| {
        let mut check = || {
            Python::attach(|py| match py.check_signals() {
                Ok(()) => true,
                Err(err) => {
                    raised = Some(err);
                    false
                }
            })
        };
        wait(&mut check)
    });
    match raised {
        Some(err) => Err(err),
        None => Ok(value),
    }
}

/// The ids of a set of requests, handed out as their replies arrive, so a caller waiting
/// for many can work on each as it comes (`ipp_rs.Client.wait` resolves its
/// AsyncResults this way).
#[pyclass(module = "ipp_rs._ipp_rs", name = "Completions", frozen)]
#[derive(Debug)]
pub(crate) struct PyCompletions {
    inner: Completions,
}

#[pymethods]
impl PyCompletions {
    /// Blocks (GIL released, Ctrl-C checked) until at least one id not handed out yet has
    /// its reply or `timeout` seconds pass; returns the ids finished since the last call
    /// (`[]` on timeout, or at once when every id has been handed out).
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<String>> {
        let timeout = duration(timeout)?;
        let inner = &self.inner;
        let (done, _) = store_wait(py, |check| inner.next_interruptible(timeout, check))?;
        Ok(done)
    }

    /// How many ids have not been handed out yet.
    #[getter]
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }
}

/// A connection to a controller: sends requests and keeps their replies (see the module
/// docs and `ipp_rs/_ipp_rs.pyi`).
#[pyclass(module = "ipp_rs._ipp_rs", name = "NativeClient", frozen)]
#[derive(Debug)]
pub(crate) struct NativeClient {
    client: Client,
    replies: RawReplies,
    closed: AtomicBool,
}

impl NativeClient {
    fn check_targets(&self, targets: Option<&[i64]>) -> PyResult<Option<Vec<u32>>> {
        let Some(targets) = targets else {
            return Ok(None);
        };
        if targets.is_empty() {
            return Err(PyValueError::new_err(
                "no targets: give at least one engine id",
            ));
        }
        let engines = self.client.engines();
        let unknown: Vec<i64> = targets
            .iter()
            .copied()
            .filter(|id| u32::try_from(*id).map_or(true, |id| !engines.contains_key(&id)))
            .collect();
        match unknown.as_slice() {
            [] => Ok(Some(targets.iter().map(|id| *id as u32).collect())),
            [one] => Err(PyIndexError::new_err(format!(
                "Engine {one} not registered"
            ))),
            many => Err(PyIndexError::new_err(format!(
                "Engines {many:?} not registered"
            ))),
        }
    }

    fn send_blocking(&self, py: Python<'_>, requests: Vec<RawRequest>) -> PyResult<Vec<String>> {
        let client = &self.client;
        let ids = py
            .detach(|| client.send_raw_blocking(requests))
            .map_err(client_error)?;
        Ok(ids.into_iter().flatten().collect())
    }
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (connection_info, *, connect_timeout = 10.0))]
    fn new(py: Python<'_>, connection_info: &str, connect_timeout: f64) -> PyResult<Self> {
        let info = self::connection_info(connection_info)?;
        let timeout = duration(Some(connect_timeout))?.unwrap_or(Duration::from_secs(10));
        let rt = runtime()?;
        let transport: Arc<dyn Transport> = Arc::new(ZmqTransport::new());
        let config = ClientConfig::default().with_connect_timeout(timeout);
        let registration = format!("{}:{}", info.interface, info.registration);
        let client = py
            .detach(|| rt.block_on(Client::connect_with(info, transport, config)))
            .map_err(|err| match err {
                ClientError::Timeout { after, .. } => PyTimeoutError::new_err(format!(
                    "the controller at {registration} did not answer the connection request \
                     within {:.1} s: is it running, and is this its connection file?",
                    after.as_secs_f64()
                )),
                other => PyConnectionError::new_err(format!(
                    "cannot connect to the controller at {registration}: {other}"
                )),
            })?;
        let replies = client.raw_replies().clone();
        Ok(Self {
            client,
            replies,
            closed: AtomicBool::new(false),
        })
    }

    /// This client's session id (the `session` of every request header).
    #[getter]
    fn session_id(&self) -> String {
        self.client.session_id().to_owned()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Registered engine ids, ascending.
    fn ids(&self) -> Vec<u32> {
        self.client.ids()
    }

    /// Engine id → engine uuid.
    fn engines(&self) -> BTreeMap<u32, String> {
        self.client.engines()
    }

    /// Blocks until at least `n` engines are registered; returns their ids.
    #[pyo3(signature = (n, timeout = None))]
    fn wait_for_engines(
        &self,
        py: Python<'_>,
        n: usize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<u32>> {
        let limit = duration(timeout)?;
        let rt = runtime()?;
        let client = &self.client;
        let outcome = interruptible(py, limit, |slice| {
            match rt.block_on(client.wait_for_engines(n, slice)) {
                Ok(ids) => Some(Ok(ids)),
                Err(ClientError::Timeout { .. }) => None,
                Err(err) => Some(Err(err)),
            }
        })?;
        match outcome {
            Some(ids) => ids.map_err(client_error),
            None => Err(PyTimeoutError::new_err(format!(
                "{} of {n} engines registered within {:.1} s",
                self.client.ids().len(),
                timeout.unwrap_or(0.0)
            ))),
        }
    }

    /// Signs and sends a request; returns the msg_ids its replies will carry.
    #[pyo3(signature = (channel, msg_type, content, metadata, buffers, targets = None, coalescing = false, track = true))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        channel: &str,
        msg_type: &str,
        content: &Bound<'_, PyAny>,
        metadata: &Bound<'_, PyAny>,
        buffers: &Bound<'_, PyAny>,
        targets: Option<Vec<i64>>,
        coalescing: bool,
        track: bool,
    ) -> PyResult<Vec<String>> {
        let channel: RawChannel =
            channel
                .parse()
                .map_err(|err: ipp_core::client::UnknownChannel| {
                    PyValueError::new_err(err.to_string())
                })?;
        let targets = match channel {
            RawChannel::Task => None,
            _ => self.check_targets(targets.as_deref())?,
        };
        let request = RawRequest::new(channel, msg_type, to_bytes(content, "content")?)
            .with_metadata(to_bytes(metadata, "metadata")?)
            .with_buffers(to_buffers(buffers)?)
            .with_targets(targets)
            .with_coalescing(coalescing)
            .with_track(track);
        self.send_blocking(py, vec![request])
    }

    /// Sends a batch of load-balanced requests `(content, metadata, buffers)` in one hop;
    /// one msg_id each, in order.
    fn send_many(
        &self,
        py: Python<'_>,
        channel: &str,
        msg_type: &str,
        requests: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<String>> {
        if channel != "task" {
            return Err(PyValueError::new_err(format!(
                "send_many sends load-balanced requests: channel must be \"task\", not {channel:?}"
            )));
        }
        let mut batch = Vec::with_capacity(requests.len().unwrap_or(0));
        for item in requests.try_iter()? {
            let item = item?;
            let parts = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("each request must be a tuple (content, metadata, buffers)")
            })?;
            if parts.len() != 3 {
                return Err(PyTypeError::new_err(
                    "each request must be a tuple (content, metadata, buffers)",
                ));
            }
            batch.push(
                RawRequest::new(
                    RawChannel::Task,
                    msg_type,
                    to_bytes(&parts.get_item(0)?, "content")?,
                )
                .with_metadata(to_bytes(&parts.get_item(1)?, "metadata")?)
                .with_buffers(to_buffers(&parts.get_item(2)?)?),
            );
        }
        self.send_blocking(py, batch)
    }

    /// Blocks until every id has its reply; True if all done, False on timeout.
    #[pyo3(signature = (msg_ids, timeout = None))]
    fn wait(
        &self,
        py: Python<'_>,
        msg_ids: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let ids = to_ids(msg_ids)?;
        let timeout = duration(timeout)?;
        let replies = &self.replies;
        let end = store_wait(py, |check| replies.wait_interruptible(&ids, timeout, check))?;
        Ok(end == WaitEnd::Done)
    }

    /// The ids among `msg_ids` handed out as their replies arrive (see `Completions`).
    fn completions(&self, msg_ids: &Bound<'_, PyAny>) -> PyResult<PyCompletions> {
        Ok(PyCompletions {
            inner: self.replies.completions(&to_ids(msg_ids)?),
        })
    }

    /// Blocks until at least one id has its reply (or timeout); returns the done ones.
    #[pyo3(signature = (msg_ids, timeout = None))]
    fn wait_any(
        &self,
        py: Python<'_>,
        msg_ids: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Vec<String>> {
        let ids = to_ids(msg_ids)?;
        let timeout = duration(timeout)?;
        let replies = &self.replies;
        let (done, _) = store_wait(py, |check| {
            replies.wait_any_interruptible(&ids, timeout, check)
        })?;
        Ok(done)
    }

    /// The subset of msg_ids already replied, without waiting.
    fn done(&self, msg_ids: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        Ok(self.replies.done(&to_ids(msg_ids)?))
    }

    /// Tracked ids still without a reply.
    fn outstanding(&self) -> HashSet<String> {
        self.replies.outstanding().into_iter().collect()
    }

    /// The stored reply of msg_id, or None if none (yet).
    fn reply(&self, msg_id: &str) -> Option<Reply> {
        self.replies.reply(msg_id).map(Reply::new)
    }

    /// Drops stored replies and outputs.
    fn forget(&self, msg_ids: &Bound<'_, PyAny>) -> PyResult<()> {
        self.replies.forget(&to_ids(msg_ids)?);
        Ok(())
    }

    /// IOPub messages of msg_id in arrival order, without `status`: `(msg_type, content)`.
    fn outputs<'py>(&self, py: Python<'py>, msg_id: &str) -> PyResult<Bound<'py, PyList>> {
        let outputs = self.replies.outputs(msg_id);
        let list = PyList::empty(py);
        for output in outputs {
            list.append(output_to_py(py, &output)?)?;
        }
        Ok(list)
    }

    /// Blocks until the IOPub `status: idle` of each id arrived (its output is complete),
    /// or timeout; True if all complete.
    #[pyo3(signature = (msg_ids, timeout = None))]
    fn wait_outputs(
        &self,
        py: Python<'_>,
        msg_ids: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let ids = to_ids(msg_ids)?;
        let timeout = duration(timeout)?;
        let replies = &self.replies;
        let end = store_wait(py, |check| {
            replies.wait_outputs_interruptible(&ids, timeout, check)
        })?;
        Ok(end == WaitEnd::Done)
    }

    /// A Hub request on the query socket; returns the reply content (status ok or error,
    /// not raised) and buffers.
    #[pyo3(signature = (msg_type, content, timeout = None))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        msg_type: &str,
        content: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<(Bound<'py, PyAny>, Vec<Bound<'py, PyBytes>>)> {
        let content = to_bytes(content, "content")?;
        let limit = duration(timeout)?;
        let rt = runtime()?;
        let client = self.client.clone();
        let owned_type = msg_type.to_owned();
        let mut handle =
            rt.spawn(async move { client.query_raw(&owned_type, content, None).await });
        let outcome = interruptible(py, limit, |slice| {
            rt.block_on(async { tokio::time::timeout(slice, &mut handle).await.ok() })
        });
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                handle.abort();
                return Err(err);
            }
        };
        let Some(joined) = outcome else {
            handle.abort();
            return Err(PyTimeoutError::new_err(format!(
                "the controller did not answer {msg_type} within {:.1} s",
                timeout.unwrap_or(0.0)
            )));
        };
        let reply =
            joined.map_err(|err| PyRuntimeError::new_err(format!("query failed: {err}")))?;
        match reply {
            Ok(msg) => {
                let content = value_to_py(py, &msg.content)?;
                let buffers = msg.buffers.iter().map(|b| PyBytes::new(py, b)).collect();
                Ok((content, buffers))
            }
            // The controller's shutdown notification can overtake its reply.
            Err(ClientError::ControllerShutdown) if msg_type == "shutdown_request" => {
                Ok((value_to_py(py, &json!({"status": "ok"}))?, Vec::new()))
            }
            Err(err) => Err(client_error(err)),
        }
    }

    /// Closes the connection (idempotent); outstanding requests end with synthetic
    /// `ConnectionError` replies. Stored replies stay readable.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let rt = runtime()?;
        let client = &self.client;
        py.detach(|| rt.block_on(client.close()));
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<NativeClient session={} engines={}{}>",
            self.client.session_id(),
            self.client.ids().len(),
            if self.closed.load(Ordering::SeqCst) {
                " closed"
            } else {
                ""
            }
        )
    }
}

/// `(msg_type, content)`; a message with buffers (`data_message`) carries them as
/// `content["buffers"]`, a list of memoryviews.
fn output_to_py<'py>(py: Python<'py>, output: &RawOutput) -> PyResult<Bound<'py, PyTuple>> {
    let content = loads(py, output.content())?;
    let buffers = &output.wire().buffers;
    if !buffers.is_empty() {
        let views = memoryviews(py, buffers)?;
        content.set_item("buffers", PyList::new(py, views)?)?;
    }
    PyTuple::new(
        py,
        [PyString::new(py, output.msg_type()).into_any(), content],
    )
}

fn memoryviews<'py>(py: Python<'py>, buffers: &[Bytes]) -> PyResult<Vec<Bound<'py, PyMemoryView>>> {
    buffers
        .iter()
        .map(|b| PyMemoryView::from(PyBytes::new(py, b).as_any()))
        .collect()
}

/// One reply, parsed lazily: each field becomes a Python object the first time it is read.
#[pyclass(module = "ipp_rs._ipp_rs", name = "Reply", frozen)]
pub(crate) struct Reply {
    inner: Arc<RawReply>,
    header: PyOnceLock<Py<PyAny>>,
    parent_header: PyOnceLock<Py<PyAny>>,
    metadata: PyOnceLock<Py<PyAny>>,
    content: PyOnceLock<Py<PyAny>>,
    buffers: PyOnceLock<Py<PyTuple>>,
}

impl Reply {
    fn new(inner: Arc<RawReply>) -> Self {
        Self {
            inner,
            header: PyOnceLock::new(),
            parent_header: PyOnceLock::new(),
            metadata: PyOnceLock::new(),
            content: PyOnceLock::new(),
            buffers: PyOnceLock::new(),
        }
    }

    fn field<'py>(
        &self,
        py: Python<'py>,
        cell: &PyOnceLock<Py<PyAny>>,
        packed: &[u8],
    ) -> PyResult<Bound<'py, PyAny>> {
        cell.get_or_try_init(py, || loads(py, packed).map(Bound::unbind))
            .map(|obj| obj.bind(py).clone())
    }
}

#[pymethods]
impl Reply {
    /// The request's msg_id (a broadcast sub-id for non-coalescing broadcasts).
    #[getter]
    fn msg_id(&self) -> &str {
        self.inner.msg_id()
    }

    /// The reply's type, e.g. `apply_reply`.
    #[getter]
    fn msg_type<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.header(py)?.get_item("msg_type")
    }

    /// The reply header (dates as ISO text).
    #[getter]
    fn header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.field(py, &self.header, &self.inner.wire().header)
    }

    /// The request's header, as the reply quotes it.
    #[getter]
    fn parent_header<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.field(py, &self.parent_header, &self.inner.wire().parent_header)
    }

    /// The reply metadata, as the engine or scheduler sent it.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.field(py, &self.metadata, &self.inner.wire().metadata)
    }

    /// The reply content (`status` ok, error or aborted, …).
    #[getter]
    fn content<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.field(py, &self.content, &self.inner.wire().content)
    }

    /// The content's `status` (`ok`, `error`, `aborted`, …), or None when it has none;
    /// read without building the content.
    #[getter]
    fn status(&self) -> Option<String> {
        serde_json::from_slice::<StatusOnly<'_>>(&self.inner.wire().content)
            .ok()
            .and_then(|c| c.status)
            .map(std::borrow::Cow::into_owned)
    }

    /// The reply's buffers, as memoryviews (a new list each time; the views are shared).
    #[getter]
    fn buffers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let views = self.buffers.get_or_try_init(py, || {
            PyTuple::new(py, memoryviews(py, &self.inner.wire().buffers)?).map(Bound::unbind)
        })?;
        PyList::new(py, views.bind(py).iter())
    }

    /// Whether the client made this reply (engine died, controller or client gone).
    #[getter]
    fn synthetic(&self) -> bool {
        self.inner.is_synthetic()
    }

    /// When the reply arrived, as `time.time()`.
    #[getter]
    fn received(&self) -> f64 {
        self.inner
            .received()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let msg_type = self
            .msg_type(py)
            .and_then(|t| t.extract::<String>())
            .unwrap_or_default();
        let status = self
            .content(py)
            .and_then(|c| c.get_item("status"))
            .and_then(|s| s.extract::<String>())
            .unwrap_or_default();
        format!(
            "<Reply {msg_type} to {} status={status}{}>",
            self.inner.msg_id(),
            if self.inner.is_synthetic() {
                " synthetic"
            } else {
                ""
            }
        )
    }
}
