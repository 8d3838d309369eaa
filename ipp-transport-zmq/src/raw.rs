//! The `zeromq` crate's sockets behind one enum, split into a sending and a receiving half.
//!
//! Our SUB is the crate's `XSubSocket`: its subscriptions are raw bytes (the crate's
//! `SubSocket::subscribe` takes `&str`), it remembers them and re-sends them to every peer
//! that connects, and ZeroMQ PUB and XPUB peers accept it exactly like a SUB.

use std::future;

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::mpsc;
use ipp_core::transport::{SocketKind, SocketOptions};
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Endpoint, PubSocket, RouterRecvHalf,
    RouterSendHalf, RouterSocket, SocketEvent, XSubSocket, ZmqMessage, ZmqResult,
};

use crate::error::{Error, Result};

/// Events the `zeromq` crate reports about a socket's peers.
pub(crate) type Monitor = mpsc::Receiver<SocketEvent>;

/// One `zeromq` socket of any kind we offer.
pub(crate) enum RawSocket {
    Router(RouterSocket),
    Dealer(DealerSocket),
    Pub(PubSocket),
    Sub(XSubSocket),
}

/// Checks options that would make every socket creation fail.
pub(crate) fn check_options(options: &SocketOptions) -> Result<()> {
    match &options.identity {
        Some(identity) if identity.len() > PeerIdentity::MAX_LENGTH => Err(Error::Identity {
            length: identity.len(),
        }),
        _ => Ok(()),
    }
}

impl RawSocket {
    /// Creates an unbound, unconnected socket with our options applied.
    pub(crate) fn new(kind: SocketKind, options: &SocketOptions) -> Result<Self> {
        let mut zmq_options = zeromq::SocketOptions::default();
        if let Some(identity) = options.identity.clone().filter(|id| !id.is_empty()) {
            let length = identity.len();
            let identity =
                PeerIdentity::try_from(identity).map_err(|_| Error::Identity { length })?;
            zmq_options.peer_identity(identity);
        }
        zmq_options.connect_timeout(options.connect_timeout);
        Ok(match kind {
            SocketKind::Router => Self::Router(RouterSocket::with_options(zmq_options)),
            SocketKind::Dealer => Self::Dealer(DealerSocket::with_options(zmq_options)),
            SocketKind::Pub => Self::Pub(PubSocket::with_options(zmq_options)),
            SocketKind::Sub => Self::Sub(XSubSocket::with_options(zmq_options)),
        })
    }

    /// Starts reporting peer events (connected, disconnected, …).
    pub(crate) fn monitor(&mut self) -> Monitor {
        match self {
            Self::Router(socket) => socket.monitor(),
            Self::Dealer(socket) => socket.monitor(),
            Self::Pub(socket) => socket.monitor(),
            Self::Sub(socket) => socket.monitor(),
        }
    }

    /// Binds and starts accepting peers; returns the endpoint with the real port.
    pub(crate) async fn bind(&mut self, address: &str) -> ZmqResult<Endpoint> {
        match self {
            Self::Router(socket) => socket.bind(address).await,
            Self::Dealer(socket) => socket.bind(address).await,
            Self::Pub(socket) => socket.bind(address).await,
            Self::Sub(socket) => socket.bind(address).await,
        }
    }

    /// Makes one connection (the crate retries refused connections until its connect
    /// timeout, which we set to `SocketOptions::connect_timeout`).
    pub(crate) async fn connect(&mut self, address: &str) -> ZmqResult<()> {
        match self {
            Self::Router(socket) => socket.connect(address).await,
            Self::Dealer(socket) => socket.connect(address).await,
            Self::Pub(socket) => socket.connect(address).await,
            Self::Sub(socket) => socket.connect(address).await,
        }
    }

    /// Subscribes a SUB to each prefix; other kinds ignore subscriptions.
    pub(crate) async fn subscribe(&mut self, prefixes: &[Bytes]) -> Result<()> {
        let Self::Sub(socket) = self else {
            return Ok(());
        };
        for prefix in prefixes {
            // ZMTP subscription message: 0x01 followed by the prefix.
            let mut frame = BytesMut::with_capacity(prefix.len() + 1);
            frame.put_u8(1);
            frame.extend_from_slice(prefix);
            socket
                .send(ZmqMessage::from(frame.freeze()))
                .await
                .map_err(|source| Error::Subscribe { source })?;
        }
        Ok(())
    }

    /// Splits into halves that can be driven concurrently; the socket lives until both drop.
    pub(crate) fn split(self) -> (SendHalf, RecvHalf) {
        match self {
            Self::Router(socket) => {
                let (send, recv) = socket.split();
                (SendHalf::Router(send), RecvHalf::Router(recv))
            }
            Self::Dealer(socket) => {
                let (send, recv) = socket.split();
                (SendHalf::Dealer(send), RecvHalf::Dealer(recv))
            }
            Self::Pub(socket) => (SendHalf::Pub(socket), RecvHalf::Nothing),
            Self::Sub(socket) => (SendHalf::Nothing, RecvHalf::Sub(socket)),
        }
    }
}

/// The sending half of a [`RawSocket`].
pub(crate) enum SendHalf {
    Router(RouterSendHalf),
    Dealer(DealerSendHalf),
    Pub(PubSocket),
    /// A SUB sends nothing.
    Nothing,
}

impl SendHalf {
    pub(crate) async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        match self {
            Self::Router(half) => half.send(message).await,
            Self::Dealer(half) => half.send(message).await,
            Self::Pub(socket) => socket.send(message).await,
            Self::Nothing => Ok(()),
        }
    }
}

/// The receiving half of a [`RawSocket`].
pub(crate) enum RecvHalf {
    Router(RouterRecvHalf),
    Dealer(DealerRecvHalf),
    Sub(XSubSocket),
    /// A PUB receives nothing (subscriptions are handled inside the crate).
    Nothing,
}

impl RecvHalf {
    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel-safe: the crate reads from a stream whose `next` loses nothing when dropped.
    pub(crate) async fn recv(&mut self) -> ZmqResult<ZmqMessage> {
        match self {
            Self::Router(half) => half.recv().await,
            Self::Dealer(half) => half.recv().await,
            Self::Sub(socket) => socket.recv().await,
            Self::Nothing => future::pending().await,
        }
    }
}
