//! The Transport seam: how multipart messages move between peers.
//!
//! A transport opens [`Socket`]s of four kinds, modelled on ZeroMQ's: a routed endpoint that
//! knows which peer sent each message ([`SocketKind::Router`]), a connected endpoint with a
//! chosen identity ([`SocketKind::Dealer`]), and publish/subscribe with topic prefixes
//! ([`SocketKind::Pub`], [`SocketKind::Sub`]). Each socket is driven by a task the transport
//! owns; the user talks to it through bounded queues, so nothing above the transport ever
//! blocks on the network.
//!
//! # Contract
//! - Messages are lists of frames ([`Frames`]); frame boundaries and bytes arrive unchanged.
//! - A `Router` receives `[peer_id, frames…]` and sends `[peer_id, frames…]`; a send to a peer
//!   it does not know (or no longer knows) is dropped with one log line, never an error.
//! - A `Dealer` sends to and receives from its single peer; it reconnects with backoff when the
//!   peer goes away, queueing (bounded) what is sent meanwhile.
//! - A `Pub` delivers a message to every subscriber whose subscription is a prefix of its first
//!   frame; a `Sub` cannot send.
//! - `bind` to port 0 reports the port actually bound in [`Socket::address`].
//! - Dropping both halves of a socket closes it and stops its task.

pub mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

pub use memory::MemoryTransport;

/// One multipart message.
pub type Frames = Vec<Bytes>;

/// The kinds of socket a transport offers (ZeroMQ's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketKind {
    /// Routed endpoint: many peers, each message tagged with its peer's identity.
    Router,
    /// Identified connection to one peer.
    Dealer,
    /// Publisher: fans every message out to matching subscribers.
    Pub,
    /// Subscriber: receives what publishers send under its subscriptions.
    Sub,
}

impl fmt::Display for SocketKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Router => "ROUTER",
            Self::Dealer => "DEALER",
            Self::Pub => "PUB",
            Self::Sub => "SUB",
        })
    }
}

/// Settings of one socket.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SocketOptions {
    /// The routing identity this socket announces to peers (DEALER, or a ROUTER that
    /// connects). `None` lets the peer pick one.
    pub identity: Option<Bytes>,
    /// Topic prefixes a `Sub` subscribes to; an empty prefix subscribes to everything.
    pub subscriptions: Vec<Bytes>,
    /// Capacity, in messages, of each of the queues between the socket task and its user.
    pub queue_capacity: usize,
    /// How long one connection attempt may take before it counts as failed.
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts of a connecting socket.
    pub max_reconnect_interval: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            identity: None,
            subscriptions: Vec::new(),
            queue_capacity: 4096,
            connect_timeout: Duration::from_secs(5),
            max_reconnect_interval: Duration::from_secs(5),
        }
    }
}

impl SocketOptions {
    /// Sets the identity announced to peers.
    pub fn with_identity(mut self, identity: impl Into<Bytes>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// Adds a subscription prefix (for `Sub` sockets).
    pub fn with_subscription(mut self, prefix: impl Into<Bytes>) -> Self {
        self.subscriptions.push(prefix.into());
        self
    }

    /// Sets the queue capacity.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }
}

/// Moves multipart messages between peers.
///
/// # Contract
/// See the [module documentation](self).
#[async_trait]
pub trait Transport: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Binds a socket to `address` (`tcp://127.0.0.1:0`, …) and starts accepting peers.
    ///
    /// # Errors
    /// [`Error::Address`] for an address this transport cannot use or cannot bind.
    async fn bind(&self, kind: SocketKind, address: &str, options: SocketOptions)
        -> Result<Socket>;

    /// Connects a socket to `address`; the connection is (re)established in the background.
    ///
    /// # Errors
    /// [`Error::Address`] for an address this transport cannot use.
    async fn connect(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> Result<Socket>;
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Arc<T> {
    async fn bind(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> Result<Socket> {
        (**self).bind(kind, address, options).await
    }

    async fn connect(
        &self,
        kind: SocketKind,
        address: &str,
        options: SocketOptions,
    ) -> Result<Socket> {
        (**self).connect(kind, address, options).await
    }
}

/// Keeps a socket's driving task alive; when the last holder drops it, the task is told to
/// stop (its `oneshot` receiver resolves).
#[derive(Debug)]
struct CloseOnDrop {
    _stop: oneshot::Sender<()>,
}

/// The sending side of a socket that a transport drives without a task of its own: a send
/// goes straight into the transport, with no queue and no task switch in between.
///
/// # Contract
/// As [`SocketSender::send`] and [`SocketSender::try_send`] (which check the socket kind
/// before calling these).
#[async_trait]
pub trait DirectSend: fmt::Debug + Send + Sync + 'static {
    /// Hands one message to the transport, waiting while it has no room.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket is closed.
    async fn send(&self, frames: Frames) -> Result<()>;

    /// Hands one message to the transport if it has room now.
    ///
    /// # Errors
    /// [`Error::Timeout`] (with a zero duration) when it has no room; [`Error::Closed`] when
    /// the socket is closed.
    fn try_send(&self, frames: Frames) -> Result<()>;

    /// As [`DirectSend::try_send`], but a message the transport has no room for is given
    /// back. The default keeps a copy (one reference count per frame) around `try_send`.
    ///
    /// # Errors
    /// [`Refused::Full`] with the message when there is no room now; [`Refused::Closed`]
    /// when the socket is closed.
    fn offer(&self, frames: Frames) -> std::result::Result<(), Refused> {
        let copy = frames.clone();
        match self.try_send(frames) {
            Ok(()) => Ok(()),
            Err(Error::Timeout { .. }) => Err(Refused::Full(copy)),
            Err(_) => Err(Refused::Closed),
        }
    }

    /// Hands several messages to the transport, in order. A transport that can should
    /// write them together (one system call for the lot: a PUB publishing a request's
    /// `status: busy` and `status: idle` at once). The default sends them one by one.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket is closed (messages before the failure may have
    /// been sent).
    async fn send_batch(&self, batch: Vec<Frames>) -> Result<()> {
        for frames in batch {
            self.send(frames).await?;
        }
        Ok(())
    }

    /// Waits until the transport has room for a message (an [`DirectSend::offer`] by the
    /// only sender then succeeds). The default waits a millisecond: implementations that
    /// can wait for room should.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket is closed.
    async fn ready(&self) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

/// Why [`SocketSender::offer`] did not take a message.
#[derive(Debug)]
pub enum Refused {
    /// No room now: the message, given back.
    Full(Frames),
    /// The socket is closed (or cannot send); the message is dropped.
    Closed,
}

/// The receiving side of a socket that a transport drives without a task of its own.
#[async_trait]
pub trait DirectRecv: fmt::Debug + Send + Sync + 'static {
    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Must be cancel-safe: a message is either returned or left for the next call.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket is closed.
    async fn recv(&mut self) -> Result<Frames>;

    /// The next message if one is ready now.
    fn try_recv(&mut self) -> Option<Frames>;
}

/// An open socket: a bounded queue to send through and one to receive from.
#[derive(Debug)]
pub struct Socket {
    kind: SocketKind,
    address: String,
    sender: SocketSender,
    receiver: SocketReceiver,
}

/// What a transport implementation hands to [`Socket::new`] and keeps for its task.
#[derive(Debug)]
pub struct SocketTaskEnds {
    /// Messages the user sends; the task drains this.
    pub outgoing: mpsc::Receiver<Frames>,
    /// Messages the task received; the user drains this.
    pub incoming: mpsc::Sender<Frames>,
    /// Resolves (with an error) when the user has dropped the socket: the task must stop.
    pub stop: oneshot::Receiver<()>,
}

impl Socket {
    /// Creates the user's half of a socket and the ends its driving task holds.
    ///
    /// `address` is the address actually bound or connected (with the real port).
    pub fn new(kind: SocketKind, address: String, queue_capacity: usize) -> (Self, SocketTaskEnds) {
        let capacity = queue_capacity.max(1);
        let (out_tx, out_rx) = mpsc::channel(capacity);
        let (in_tx, in_rx) = mpsc::channel(capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let guard = Arc::new(CloseOnDrop { _stop: stop_tx });
        let label: Arc<str> = Arc::from(format!("{kind} {address}"));
        let socket = Self {
            kind,
            address,
            sender: SocketSender {
                kind,
                path: SendPath::Queue(out_tx),
                label: Arc::clone(&label),
                _guard: Some(Arc::clone(&guard)),
            },
            receiver: SocketReceiver {
                path: RecvPath::Queue(in_rx),
                label,
                _guard: Some(guard),
            },
        };
        let ends = SocketTaskEnds {
            outgoing: out_rx,
            incoming: in_tx,
            stop: stop_rx,
        };
        (socket, ends)
    }

    /// Creates a socket the transport drives directly: sends and receives call into the
    /// transport in the caller's task (no queue, no driving task). The transport keeps the
    /// contract of the [module documentation](self); the socket closes when both halves
    /// are dropped.
    pub fn direct(
        kind: SocketKind,
        address: String,
        send: Arc<dyn DirectSend>,
        recv: Box<dyn DirectRecv>,
    ) -> Self {
        let label: Arc<str> = Arc::from(format!("{kind} {address}"));
        Self {
            kind,
            address,
            sender: SocketSender {
                kind,
                path: SendPath::Direct(send),
                label: Arc::clone(&label),
                _guard: None,
            },
            receiver: SocketReceiver {
                path: RecvPath::Direct(recv),
                label,
                _guard: None,
            },
        }
    }

    /// The socket's kind.
    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// The address bound or connected, with the actual port.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The port of a `tcp://host:port` address, if it has one.
    pub fn port(&self) -> Option<u16> {
        self.address.rsplit(':').next()?.parse().ok()
    }

    /// Sends one message (see [`SocketSender::send`]).
    ///
    /// # Errors
    /// As [`SocketSender::send`].
    pub async fn send(&self, frames: Frames) -> Result<()> {
        self.sender.send(frames).await
    }

    /// Receives one message (see [`SocketReceiver::recv`]).
    ///
    /// # Errors
    /// As [`SocketReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Frames> {
        self.receiver.recv().await
    }

    /// Splits the socket so that one task can send while another receives.
    pub fn split(self) -> (SocketSender, SocketReceiver) {
        (self.sender, self.receiver)
    }
}

/// Where a [`SocketSender`] puts messages.
#[derive(Clone, Debug)]
enum SendPath {
    /// The queue a driving task drains.
    Queue(mpsc::Sender<Frames>),
    /// Straight into the transport.
    Direct(Arc<dyn DirectSend>),
}

/// The sending half of a [`Socket`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct SocketSender {
    kind: SocketKind,
    path: SendPath,
    label: Arc<str>,
    _guard: Option<Arc<CloseOnDrop>>,
}

impl SocketSender {
    /// Queues one message, waiting while the queue is full.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a `Sub` socket; [`Error::Closed`] when the socket's task has
    /// stopped.
    pub async fn send(&self, frames: Frames) -> Result<()> {
        if self.kind == SocketKind::Sub {
            return Err(Error::Unsupported {
                operation: "send",
                implementer: "SUB socket",
            });
        }
        match &self.path {
            SendPath::Queue(queue) => queue.send(frames).await.map_err(|_| Error::Closed {
                what: self.label.to_string(),
            }),
            SendPath::Direct(direct) => direct.send(frames).await,
        }
    }

    /// Sends several messages in order, waiting while the queue is full; a transport that
    /// can writes them together (see [`DirectSend::send_batch`]).
    ///
    /// # Errors
    /// As [`SocketSender::send`].
    pub async fn send_batch(&self, batch: Vec<Frames>) -> Result<()> {
        match &self.path {
            SendPath::Direct(direct) if self.kind != SocketKind::Sub => {
                direct.send_batch(batch).await
            }
            _ => {
                for frames in batch {
                    self.send(frames).await?;
                }
                Ok(())
            }
        }
    }

    /// Queues one message if there is room now.
    ///
    /// # Errors
    /// [`Error::Unsupported`] on a `Sub` socket; [`Error::Closed`] when the socket's task has
    /// stopped; [`Error::Timeout`] (with a zero duration) when the queue is full.
    pub fn try_send(&self, frames: Frames) -> Result<()> {
        if self.kind == SocketKind::Sub {
            return Err(Error::Unsupported {
                operation: "send",
                implementer: "SUB socket",
            });
        }
        match &self.path {
            SendPath::Queue(queue) => queue.try_send(frames).map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => Error::Timeout {
                    what: "room in the send queue",
                    after: Duration::ZERO,
                },
                mpsc::error::TrySendError::Closed(_) => Error::Closed {
                    what: self.label.to_string(),
                },
            }),
            SendPath::Direct(direct) => direct.try_send(frames),
        }
    }
}

impl SocketSender {
    /// Hands one message over if there is room now, else gives it back: for a task that
    /// must never wait on a send (it keeps its own backlog and waits with
    /// [`SocketSender::ready`]).
    ///
    /// # Errors
    /// [`Refused::Full`] with the message when there is no room now; [`Refused::Closed`]
    /// when the socket is closed or is a `Sub`.
    pub fn offer(&self, frames: Frames) -> std::result::Result<(), Refused> {
        if self.kind == SocketKind::Sub {
            return Err(Refused::Closed);
        }
        match &self.path {
            SendPath::Queue(queue) => queue.try_send(frames).map_err(|err| match err {
                mpsc::error::TrySendError::Full(frames) => Refused::Full(frames),
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }),
            SendPath::Direct(direct) => direct.offer(frames),
        }
    }

    /// Waits until there is room for one message (see [`SocketSender::offer`]).
    ///
    /// # Cancel safety
    /// Cancel-safe: it takes nothing.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket is closed.
    pub async fn ready(&self) -> Result<()> {
        match &self.path {
            SendPath::Queue(queue) => queue.reserve().await.map(drop).map_err(|_| Error::Closed {
                what: self.label.to_string(),
            }),
            SendPath::Direct(direct) => direct.ready().await,
        }
    }
}

/// Where a [`SocketReceiver`] takes messages from.
#[derive(Debug)]
enum RecvPath {
    /// The queue a driving task fills.
    Queue(mpsc::Receiver<Frames>),
    /// Straight from the transport.
    Direct(Box<dyn DirectRecv>),
}

/// The receiving half of a [`Socket`].
#[derive(Debug)]
pub struct SocketReceiver {
    path: RecvPath,
    label: Arc<str>,
    _guard: Option<Arc<CloseOnDrop>>,
}

impl SocketReceiver {
    /// Waits for the next message.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is either returned or left in the queue.
    ///
    /// # Errors
    /// [`Error::Closed`] when the socket's task has stopped.
    pub async fn recv(&mut self) -> Result<Frames> {
        let received = match &mut self.path {
            RecvPath::Queue(queue) => queue.recv().await,
            RecvPath::Direct(direct) => return direct.recv().await,
        };
        received.ok_or_else(|| Error::Closed {
            what: self.label.to_string(),
        })
    }

    /// Takes every message already queued, up to `max`, without waiting.
    pub fn drain_ready(&mut self, max: usize, into: &mut Vec<Frames>) {
        while into.len() < max {
            let next = match &mut self.path {
                RecvPath::Queue(queue) => queue.try_recv().ok(),
                RecvPath::Direct(direct) => direct.try_recv(),
            };
            match next {
                Some(frames) => into.push(frames),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn offer_gives_back_what_a_full_queue_cannot_take_and_ready_waits_for_room() {
        let (socket, mut ends) = Socket::new(SocketKind::Dealer, "test".into(), 1);
        let (sender, _receiver) = socket.split();
        let one = vec![Bytes::from_static(b"one")];
        let two = vec![Bytes::from_static(b"two")];
        assert!(sender.offer(one.clone()).is_ok());
        match sender.offer(two.clone()) {
            Err(Refused::Full(back)) => assert_eq!(back, two),
            other => panic!("expected the message back, got {other:?}"),
        }
        assert!(sender.ready().now_or_never().is_none(), "the queue is full");
        assert_eq!(ends.outgoing.recv().await, Some(one));
        sender.ready().await.expect("room again");
        assert!(sender.offer(two.clone()).is_ok());
        assert_eq!(ends.outgoing.recv().await, Some(two));

        drop(ends);
        assert!(matches!(
            sender.offer(vec![Bytes::new()]),
            Err(Refused::Closed)
        ));
        assert!(sender.ready().await.is_err());
    }
}
