//! `OutputSink`: how Python code running a request sends its output (stdout/stderr text,
//! `execute_input`, `execute_result`, `display_data`) to the engine's IOPub socket.

use ipp_core::protocol::JsonMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::executor::{Display, Event};

/// The output channel of the request being run, handed to the Python kernel's `apply` and
/// `execute`. Each call queues one event for the request's IOPub publisher (a tokio task,
/// run once the engine's runtime is driven again: after the request, or by the engine's
/// backup thread when the request runs long); when that queue is full the call waits with
/// the GIL released.
#[pyclass(module = "ipp_rs._ipp_rs", name = "OutputSink", frozen)]
#[derive(Debug)]
pub(crate) struct OutputSink {
    events: mpsc::Sender<Event>,
}

impl OutputSink {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Self {
        Self { events }
    }

    /// Queues `event`; a request whose publisher has gone (the engine is stopping) drops it.
    fn send(&self, py: Python<'_>, event: Event) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                // Wait for room without the GIL: the publisher never needs it.
                let events = self.events.clone();
                if py.detach(move || events.blocking_send(event).is_err()) {
                    tracing::debug!("output dropped: the request's publisher has stopped");
                }
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!("output dropped: the request's publisher has stopped");
            }
        }
    }
}

fn json_map(what: &str, text: &str) -> PyResult<JsonMap> {
    serde_json::from_str(text)
        .map_err(|err| PyValueError::new_err(format!("{what} is not a JSON object: {err}")))
}

#[pymethods]
impl OutputSink {
    /// Publishes `text` on the stream `name` (`"stdout"` or `"stderr"`).
    fn stream(&self, py: Python<'_>, name: &str, text: &str) -> PyResult<()> {
        let name = match name {
            "stdout" => "stdout",
            "stderr" => "stderr",
            _ => {
                return Err(PyValueError::new_err(format!(
                    "stream name must be 'stdout' or 'stderr', not {name:?}"
                )))
            }
        };
        if !text.is_empty() {
            let event = Event::Stream {
                name,
                text: text.to_owned(),
            };
            self.send(py, event);
        }
        Ok(())
    }

    /// Publishes `execute_input {code, execution_count}`.
    fn execute_input(&self, py: Python<'_>, code: &str, execution_count: u64) {
        let event = Event::ExecuteInput {
            code: code.to_owned(),
            execution_count,
        };
        self.send(py, event);
    }

    /// Publishes `execute_result`; `data` and `metadata` are JSON objects (MIME type →
    /// representation), given as JSON text.
    fn execute_result(
        &self,
        py: Python<'_>,
        data: &str,
        metadata: &str,
        execution_count: u64,
    ) -> PyResult<()> {
        let event = Event::ExecuteResult(Box::new(Display {
            data: json_map("data", data)?,
            metadata: json_map("metadata", metadata)?,
            execution_count,
        }));
        self.send(py, event);
        Ok(())
    }

    /// Publishes `display_data`; `data` and `metadata` as for `execute_result`.
    fn display_data(&self, py: Python<'_>, data: &str, metadata: &str) -> PyResult<()> {
        let event = Event::DisplayData(Box::new(Display {
            data: json_map("data", data)?,
            metadata: json_map("metadata", metadata)?,
            execution_count: 0,
        }));
        self.send(py, event);
        Ok(())
    }
}
