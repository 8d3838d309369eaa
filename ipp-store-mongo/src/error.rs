//! The crate's error type, mapped into [`ipp_core::Error`] at the [`Store`] seam.
//!
//! [`Store`]: ipp_core::store::Store

use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the MongoDB task database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The driver or the server failed.
    #[error("mongodb failed during {operation}")]
    Driver {
        /// What we were doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: mongodb::error::Error,
    },
    /// A stored document cannot be read back as a TaskRecord.
    #[error("cannot read field {field} of task {msg_id}: {reason}")]
    Decode {
        /// The record.
        msg_id: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A record cannot be written as a BSON document.
    #[error("cannot store field {field} of task {msg_id}: {reason}")]
    Encode {
        /// The record.
        msg_id: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("mongodb did not answer {operation} within {after:?}")]
    Timeout {
        /// What we were doing.
        operation: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// A setting is unusable.
    #[error("mongodb store configuration: {0}")]
    Config(String),
    /// The writer task failed earlier; this is its error, reported on the next call.
    #[error("an earlier write to the task database failed")]
    Writer {
        /// The writer's error (shared: it is also logged).
        #[source]
        source: std::sync::Arc<Error>,
    },
}

impl Error {
    fn operation(&self) -> &'static str {
        match self {
            Error::Driver { operation, .. } | Error::Timeout { operation, .. } => operation,
            Error::Decode { .. } => "read",
            Error::Encode { .. } | Error::Writer { .. } => "write",
            Error::Config(_) => "configuration",
        }
    }
}

impl From<Error> for ipp_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Config(reason) => ipp_core::Error::Config(reason),
            Error::Timeout { operation, after } => ipp_core::Error::Timeout {
                what: operation,
                after,
            },
            other => ipp_core::Error::Backend {
                backend: "mongodb",
                operation: other.operation(),
                source: Box::new(other),
            },
        }
    }
}
