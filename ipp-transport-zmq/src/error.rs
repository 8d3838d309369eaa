//! The crate's error type, mapped into [`ipp_core::Error`] at the [`Transport`] boundary.
//!
//! [`Transport`]: ipp_core::transport::Transport

use crate::zmtp::ConnError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the ZeroMQ transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address is not one this transport can use.
    #[error("cannot use address {address}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// Why it is unusable.
        reason: &'static str,
    },
    /// Binding failed (port in use, no such interface, …).
    #[error("cannot bind {address}")]
    Bind {
        /// The address as given.
        address: String,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// One connection attempt failed or timed out; connecting sockets retry by themselves.
    #[error("cannot connect to {address}")]
    Connect {
        /// The address connected to.
        address: String,
        /// What went wrong: the TCP connection or the ZMTP handshake.
        #[source]
        source: ConnError,
    },
    /// A routing identity longer than ZeroMQ's limit of 255 bytes.
    #[error("routing identity of {length} bytes is longer than 255")]
    Identity {
        /// The identity's length.
        length: usize,
    },
}

impl From<Error> for ipp_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Address { address, reason } => Self::Address {
                address,
                reason: reason.to_owned(),
            },
            Error::Bind { address, source } => Self::Address {
                address,
                reason: source.to_string(),
            },
            Error::Identity { .. } => Self::Config(err.to_string()),
            Error::Connect { .. } => Self::Backend {
                backend: "zmq",
                operation: "connect",
                source: Box::new(err),
            },
        }
    }
}
