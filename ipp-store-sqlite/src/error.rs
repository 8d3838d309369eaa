//! The crate's error type, mapped into [`ipp_core::Error`] at the [`Store`] seam.
//!
//! [`Store`]: ipp_core::store::Store

use std::path::PathBuf;
use std::sync::Arc;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SQLite task database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite failed.
    #[error("sqlite failed during {operation} on {}", path.display())]
    Sqlite {
        /// What we were doing.
        operation: &'static str,
        /// The database file.
        path: PathBuf,
        /// SQLite's own error.
        #[source]
        source: rusqlite::Error,
    },
    /// The table exists with other columns than ipyparallel's TaskRecord schema.
    #[error(
        "table {table:?} in {} does not have the task record schema ({reason}); \
         choose another table name with the `table` setting",
        path.display()
    )]
    Schema {
        /// The table name.
        table: String,
        /// The database file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// A stored value cannot be read back as a TaskRecord field.
    #[error("cannot read column {column} of task {msg_id}: {reason}")]
    Decode {
        /// The record.
        msg_id: String,
        /// The column.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A setting is unusable.
    #[error("sqlite store configuration: {0}")]
    Config(String),
    /// The writer thread failed earlier; this is its error, reported on the next call.
    #[error("an earlier write to the task database failed")]
    Writer {
        /// The writer's error (shared: it is also logged).
        #[source]
        source: Arc<Error>,
    },
    /// A write was not kept because its transaction could not begin or commit (the cause
    /// is logged and returned by the next call).
    #[error("the transaction holding this {operation} was rolled back")]
    RolledBack {
        /// What was being written.
        operation: &'static str,
    },
    /// The writer thread has stopped (after [`SqliteStore::close`](crate::SqliteStore::close)
    /// or a crash), so nothing more can be written or read.
    #[error("the sqlite writer thread has stopped")]
    WriterStopped,
    /// A blocking-pool task running a read died.
    #[error("the blocking task running {operation} failed")]
    Worker {
        /// What it was doing.
        operation: &'static str,
        /// Why it died.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A thread panicked while holding the connection's lock.
    #[error("the sqlite connection lock is poisoned")]
    Poisoned,
    /// Starting the writer thread failed.
    #[error("cannot start the sqlite writer thread")]
    Thread(#[source] std::io::Error),
}

impl Error {
    /// The operation to name in [`ipp_core::Error::Backend`].
    fn operation(&self) -> &'static str {
        match self {
            Error::Sqlite { operation, .. }
            | Error::Worker { operation, .. }
            | Error::RolledBack { operation } => operation,
            Error::Schema { .. } => "schema check",
            Error::Decode { .. } => "read",
            Error::Config(_) => "configuration",
            Error::Writer { .. } => "write",
            Error::WriterStopped | Error::Thread(_) => "writer thread",
            Error::Poisoned => "lock",
        }
    }
}

impl From<Error> for ipp_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Config(reason) => ipp_core::Error::Config(reason),
            Error::WriterStopped => ipp_core::Error::Closed {
                what: "sqlite task database".to_owned(),
            },
            other => ipp_core::Error::Backend {
                backend: "sqlite",
                operation: other.operation(),
                source: Box::new(other),
            },
        }
    }
}
