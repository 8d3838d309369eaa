//! The crate's error type.

use std::time::Duration;

/// A boxed error from a backend, kept as the `source` of [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout `ipp-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `ipp-core`, named by what a caller can react to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The implementation does not offer this operation.
    #[error("{implementer} does not support {operation}")]
    Unsupported {
        /// What was asked for.
        operation: &'static str,
        /// Who was asked.
        implementer: &'static str,
    },
    /// A message could not be parsed or failed its signature check.
    #[error("invalid message: {reason}")]
    InvalidMessage {
        /// What is wrong with it.
        reason: String,
    },
    /// A task with this `msg_id` is already recorded.
    #[error("task {msg_id} is already recorded")]
    AlreadyExists {
        /// The duplicate id.
        msg_id: String,
    },
    /// No task with this `msg_id` is recorded.
    #[error("no such task: {msg_id}")]
    NotFound {
        /// The unknown id.
        msg_id: String,
    },
    /// A query names a key or operator that does not exist, or has a bad operand.
    #[error("invalid query: {reason}")]
    InvalidQuery {
        /// What is wrong with it.
        reason: String,
    },
    /// The record was dropped by the store's culling policy before it was read.
    #[error("task {msg_id} was culled from the task database ({reason})")]
    Culled {
        /// The culled id.
        msg_id: String,
        /// Which limit culled it.
        reason: String,
    },
    /// Waiting for something took too long.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// A socket address could not be used.
    #[error("bad address {address}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// Why it is unusable.
        reason: String,
    },
    /// A socket or channel closed while it was in use.
    #[error("{what} is closed")]
    Closed {
        /// Which socket or channel.
        what: String,
    },
    /// A value could not be encoded or decoded.
    #[error("serialization failed: {reason}")]
    Serialization {
        /// What went wrong.
        reason: String,
    },
    /// A configuration value or file is unusable.
    #[error("configuration error: {0}")]
    Config(String),
    /// An I/O operation failed.
    #[error("{operation} failed")]
    Io {
        /// What was being done, including the path where there is one.
        operation: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A backend (transport, store) failed.
    #[error("{backend} failed during {operation}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it was doing.
        operation: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds an [`Error::InvalidMessage`].
    pub fn invalid_message(reason: impl Into<String>) -> Self {
        Self::InvalidMessage {
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::InvalidQuery`].
    pub fn invalid_query(reason: impl Into<String>) -> Self {
        Self::InvalidQuery {
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Serialization`].
    pub fn serialization(reason: impl Into<String>) -> Self {
        Self::Serialization {
            reason: reason.into(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Backend { .. } | Self::Io { .. }
        )
    }
}
