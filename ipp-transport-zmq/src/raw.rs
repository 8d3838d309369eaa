//! Our ZMTP sockets ([`crate::zmtp`]) as the rest of the crate drives them: one socket of
//! any kind, split into a sending and a receiving half.
//!
//! Our SUB behaves like libzmq's XSUB: its subscriptions are raw byte prefixes, it
//! remembers them and sends them to every peer that connects; ZeroMQ PUB and XPUB peers
//! accept it exactly like a SUB.

use std::future;
use std::sync::Arc;

use bytes::Bytes;
use ipp_core::transport::{Frames, SocketKind, SocketOptions};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::zmtp::socket::{Event, Inbox, Shared, Socket};
use crate::zmtp::ConnError;

/// Events about a socket's peers (connected, disconnected).
pub(crate) type Monitor = mpsc::UnboundedReceiver<Event>;

/// The longest routing identity ZeroMQ allows.
const MAX_IDENTITY: usize = 255;

/// One socket of any kind we offer.
#[derive(Debug)]
pub(crate) struct RawSocket {
    kind: SocketKind,
    socket: Socket,
}

/// Checks options that would make every socket creation fail.
pub(crate) fn check_options(options: &SocketOptions) -> Result<()> {
    match &options.identity {
        Some(identity) if identity.len() > MAX_IDENTITY => Err(Error::Identity {
            length: identity.len(),
        }),
        _ => Ok(()),
    }
}

impl RawSocket {
    /// Creates an unbound, unconnected socket with our options applied.
    pub(crate) fn new(kind: SocketKind, options: &SocketOptions) -> Result<Self> {
        check_options(options)?;
        let identity = options.identity.clone().unwrap_or_default();
        Ok(Self {
            kind,
            socket: Socket::new(kind, identity),
        })
    }

    /// The socket's kind.
    pub(crate) fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Starts reporting peer events (connected, disconnected).
    pub(crate) fn monitor(&mut self) -> Monitor {
        self.socket.monitor()
    }

    /// Binds `tcp://host:port` and starts accepting peers; returns the address with the
    /// real port.
    pub(crate) async fn bind(&mut self, address: &str) -> std::io::Result<String> {
        let local = self.socket.bind(crate::address::host_port(address)).await?;
        Ok(format!("tcp://{local}"))
    }

    /// Subscribes a SUB to each prefix; other kinds ignore subscriptions.
    pub(crate) fn subscribe(&mut self, prefixes: &[Bytes]) {
        self.socket.subscribe(prefixes);
    }

    /// Splits into halves that can be driven concurrently; the socket lives until both drop.
    pub(crate) fn split(self) -> (SendHalf, RecvHalf) {
        let (send, inbox) = self.socket.split();
        match self.kind {
            SocketKind::Pub => (send, RecvHalf(None)),
            _ => (send, RecvHalf(Some(inbox))),
        }
    }
}

/// The sending half of a [`RawSocket`] (a SUB's sends do nothing).
pub(crate) type SendHalf = Arc<Shared>;

/// The receiving half of a [`RawSocket`] (`None` for a PUB: it receives nothing; the
/// subscriptions its peers send are applied inside [`crate::zmtp`]).
#[derive(Debug)]
pub(crate) struct RecvHalf(Option<Inbox>);

impl RecvHalf {
    /// Waits for the next message; `Err` once for each peer connection that fails.
    ///
    /// # Cancel safety
    /// Cancel-safe: a partly received message stays in its connection's reader.
    pub(crate) async fn recv(&mut self) -> std::result::Result<Frames, ConnError> {
        match &mut self.0 {
            Some(inbox) => inbox.recv().await,
            None => future::pending().await,
        }
    }

    /// The inbox of a kind that receives.
    pub(crate) fn into_inbox(self) -> Option<Inbox> {
        self.0
    }
}
