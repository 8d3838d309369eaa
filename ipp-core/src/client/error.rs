//! The client's error type.

use std::time::Duration;

use crate::protocol::RemoteError;

/// Result alias for client calls.
pub type ClientResult<T> = std::result::Result<T, ClientError>;

/// Everything a client call can fail with, named by what a caller can react to.
///
/// Remote failures keep ipyparallel's names: a task that raised is [`ClientError::Remote`]
/// (its `ename` says what: `EngineError`, `TaskTimeout`, `ImpossibleDependency`, …), several
/// failed tasks of one result are a [`ClientError::Composite`] (ipyparallel's
/// `CompositeError`), and an aborted task is [`ClientError::TaskAborted`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A task failed on its engine, or the controller or the client failed it (engine death).
    #[error("remote error: {0}")]
    Remote(Box<RemoteError>),
    /// Several tasks of one result failed: `(engine id if known, error)` per failed task.
    #[error("{} tasks failed; first: {}", .0.len(), composite_first(.0))]
    Composite(Vec<(Option<u32>, RemoteError)>),
    /// The task was aborted before it ran (`status: aborted`).
    #[error("task {msg_id} was aborted")]
    TaskAborted {
        /// The aborted request.
        msg_id: String,
    },
    /// A wait (for a result, a reply or engines) took longer than the caller allowed.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The request had no answer within the client's `request_timeout`; it may still run.
    #[error("no reply to {msg_id} within the request timeout of {after:?}; it may still run")]
    RequestTimeout {
        /// The request.
        msg_id: String,
        /// The configured timeout.
        after: Duration,
    },
    /// The controller stopped answering while the request was outstanding; whether it ran is
    /// unknown (its reply, if any, is discarded).
    #[error(
        "lost contact with the controller before {msg_id} was answered; it may or may not have run"
    )]
    ControllerLost {
        /// The request.
        msg_id: String,
    },
    /// The controller is unreachable, so the request was not sent.
    #[error("the controller is unreachable; {msg_id} was not sent")]
    ControllerUnreachable {
        /// The request that was not sent.
        msg_id: String,
    },
    /// The controller announced its shutdown; the client is closed.
    #[error("the controller shut down")]
    ControllerShutdown,
    /// The client was closed (dropped or [`Client::close`](super::Client::close)d).
    #[error("the client is closed")]
    Closed,
    /// No engine is registered, or none of the requested targets is.
    #[error("no engines are registered{}", if .0.is_empty() { String::new() } else { format!(" ({})", .0) })]
    NoEngines(String),
    /// A target engine id the client does not know.
    #[error("no such engine: {0}")]
    UnknownEngine(u32),
    /// The reply had an unexpected shape, or a value did not decode.
    #[error(transparent)]
    Core(#[from] crate::error::Error),
}

fn composite_first(errors: &[(Option<u32>, RemoteError)]) -> String {
    match errors.first() {
        Some((Some(id), error)) => format!("[engine {id}] {error}"),
        Some((None, error)) => error.to_string(),
        None => String::new(),
    }
}

impl ClientError {
    /// The remote errors this error carries (one for `Remote`, all for `Composite`).
    pub fn remote_errors(&self) -> Vec<&RemoteError> {
        match self {
            Self::Remote(error) => vec![error.as_ref()],
            Self::Composite(errors) => errors.iter().map(|(_, e)| e).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether this is (or holds only) a remote error with the given `ename`.
    pub fn is_remote(&self, ename: &str) -> bool {
        let errors = self.remote_errors();
        !errors.is_empty() && errors.iter().all(|e| e.ename == ename)
    }

    /// Whether trying again later may succeed (time-outs and a lost controller).
    pub fn is_temporary(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::RequestTimeout { .. }
            | Self::ControllerLost { .. }
            | Self::ControllerUnreachable { .. } => true,
            Self::Core(err) => err.is_temporary(),
            _ => false,
        }
    }
}

/// A failure the IO task records for a request; cloneable, so a result can be read twice.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    /// A remote-style error (engine death fabricated by the client).
    Remote(RemoteError),
    /// See [`ClientError::RequestTimeout`].
    RequestTimeout(Duration),
    /// See [`ClientError::ControllerLost`].
    ControllerLost,
    /// See [`ClientError::ControllerUnreachable`].
    ControllerUnreachable,
    /// See [`ClientError::ControllerShutdown`].
    ControllerShutdown,
    /// See [`ClientError::Closed`].
    Closed,
}

impl Failure {
    /// The error a caller sees for the request `msg_id`.
    pub(crate) fn to_error(&self, msg_id: &str) -> ClientError {
        match self {
            Self::Remote(error) => ClientError::Remote(Box::new(error.clone())),
            Self::RequestTimeout(after) => ClientError::RequestTimeout {
                msg_id: msg_id.to_owned(),
                after: *after,
            },
            Self::ControllerLost => ClientError::ControllerLost {
                msg_id: msg_id.to_owned(),
            },
            Self::ControllerUnreachable => ClientError::ControllerUnreachable {
                msg_id: msg_id.to_owned(),
            },
            Self::ControllerShutdown => ClientError::ControllerShutdown,
            Self::Closed => ClientError::Closed,
        }
    }
}

/// The error the client fabricates for a request outstanding on an engine that died
/// (spec §4.4): ename `EngineError`, evalue `Engine <id> died while running task '<msg_id>'`.
pub(crate) fn engine_died(engine_id: u32, engine_uuid: &str, msg_id: &str) -> RemoteError {
    let evalue = format!("Engine {engine_id} died while running task '{msg_id}'");
    let mut error = RemoteError::new("EngineError", evalue.clone());
    error.traceback = vec![format!("EngineError: {evalue}")];
    error
        .engine_info
        .insert("engine_uuid".into(), engine_uuid.into());
    error
        .engine_info
        .insert("engine_id".into(), engine_id.into());
    error
}
