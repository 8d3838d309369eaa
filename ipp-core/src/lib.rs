//! `ipp-core`: the heart of IPython Parallel in Rust.
//!
//! It holds the ipyparallel 9.x wire protocol ([`protocol`]), the controller
//! ([`controller`]: the Hub and its schedulers), and the seams integrators plug parts into:
//! [`transport::Transport`], [`store::Store`] and [`scheduler::Scheduler`]. Each seam has an
//! in-memory implementation here so the controller can be tested without any backend;
//! the ZeroMQ transport lives in `ipp-transport-zmq`.

pub mod busy_poll;
pub mod client;
pub mod controller;
pub mod engine;
pub mod error;
pub mod protocol;
pub mod scheduler;
pub mod serialize;
pub mod store;
pub mod transport;

pub use error::{BoxError, Error, Result};

#[cfg(any(test, feature = "testing"))]
pub mod testing;
