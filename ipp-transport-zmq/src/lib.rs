#![doc = include_str!("../README.md")]

mod address;
mod connector;
mod direct;
mod error;
mod link;
mod raw;
mod router;
mod session;
pub mod zmtp;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use ipp_core::transport::{Socket, SocketKind, SocketOptions, Transport};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::error::{Error, Result};
use crate::link::Link;
use crate::raw::RawSocket;
use crate::session::{Driver, Mode};

/// ZeroMQ transport: our own ZMTP 3.1 on tokio TCP, wire-compatible with pyzmq/libzmq.
///
/// Stateless: clones and separate instances are interchangeable; each socket is driven by
/// its own task on the current tokio runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct ZmqTransport;

impl ZmqTransport {
    /// Creates the transport.
    pub fn new() -> Self {
        Self
    }
}

impl fmt::Display for ZmqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zmq")
    }
}

#[async_trait]
impl Transport for ZmqTransport {
    async fn bind(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> ipp_core::Result<Socket> {
        let address = address::parse(address)?;
        let mut raw = RawSocket::new(kind, &options)?;
        let bound = raw.bind(&address).await.map_err(|source| Error::Bind {
            address: address.clone(),
            source,
        })?;
        raw.subscribe(&options.subscriptions);
        let span = tracing::info_span!("zmq_socket", socket = %kind, address = %bound);
        // ROUTER, PUB and SUB go direct: no driving task between the user and the socket.
        let raw = match direct::bound(kind, bound.clone(), raw, options.subscriptions.clone()) {
            Ok(socket) => {
                span.in_scope(|| tracing::info!("bound"));
                return Ok(socket);
            }
            Err(raw) => raw,
        };
        let (socket, ends) = Socket::new(kind, bound.clone(), options.queue_capacity);
        let (send, recv) = raw.split();
        let link = Arc::new(Link::default());
        let mut driver = Driver::new(kind, ends.into(), options.subscriptions, Arc::clone(&link));
        span.in_scope(|| tracing::info!("bound"));
        tokio::spawn(
            async move {
                link.connected(send).await;
                driver.run(Some(recv), None, Mode::Bound).await;
                tracing::debug!("closed");
            }
            .instrument(span),
        );
        Ok(socket)
    }

    async fn connect(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> ipp_core::Result<Socket> {
        let address = address::parse(address)?;
        if address.ends_with(":0") {
            return Err(Error::Address {
                address,
                reason: "cannot connect to port 0",
            }
            .into());
        }
        let mut raw = RawSocket::new(kind, &options)?;
        raw.subscribe(&options.subscriptions);
        let monitor = raw.monitor();
        let (send, recv) = raw.split();
        // Sends go straight to the live connection when they can, and the user receives
        // from the socket directly (see `link`).
        let link = Arc::new(Link::default());
        let driver_done = CancellationToken::new();
        let receiving = link::Receiving {
            recv,
            subscriptions: options.subscriptions.clone(),
            driver_done: driver_done.clone(),
        };
        let (socket, ends) = link::socket(
            kind,
            address.clone(),
            options.queue_capacity,
            Arc::clone(&link),
            receiving,
        );
        let driver = Driver::new(kind, ends, options.subscriptions.clone(), link);
        let span = tracing::info_span!("zmq_socket", socket = %kind, address = %address);
        tokio::spawn(
            async move {
                let _done = driver_done.drop_guard();
                connector::run(driver, send, monitor, address, options).await;
                tracing::debug!("closed");
            }
            .instrument(span),
        );
        Ok(socket)
    }
}
