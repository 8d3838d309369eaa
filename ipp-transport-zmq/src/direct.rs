//! Bound ROUTER, PUB and SUB sockets without a driving task: the user's task calls the
//! `zeromq` socket itself.
//!
//! A bound socket never reconnects and these three kinds never hold a message back for a
//! missing peer, so the driving task of [`crate::session`] only moved each message through
//! one more queue and one more task wake-up. A controller routes every message of every
//! task through such sockets: going direct saves a queue hop and a task switch per message
//! in each direction.
//!
//! The rules stay those of the driven sockets: a ROUTER drops (and logs once) what it cannot
//! route, a PUB drops what no subscriber takes, a SUB keeps only what matches its
//! subscriptions, and a ROUTER whose receiving half is dropped while its sending half lives
//! keeps reading and discarding, so peers are never stalled.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use ipp_core::transport::{DirectRecv, DirectSend, Frames, Socket, SocketKind};
use tokio::sync::oneshot;
use zeromq::ZmqMessage;
use zeromq::{PubSocket, RouterRecvHalf, RouterSendHalf, SocketRecv, SocketSend, XSubSocket};

use crate::raw::{RawSocket, SendHalf};
use crate::router::{self, UnknownPeers};

/// Builds the user's socket for a bound `raw` socket of a kind that can go direct; gives
/// `raw` back for the others (a DEALER holds messages for an absent peer: it keeps its
/// driving task).
pub(crate) fn bound(
    kind: SocketKind,
    address: String,
    raw: RawSocket,
    subscriptions: Vec<Bytes>,
) -> Result<Socket, RawSocket> {
    match raw {
        RawSocket::Router(socket) => {
            let (send, recv) = socket.split();
            let (alive, sender_gone) = oneshot::channel();
            let send = RouterSend {
                half: send,
                unknown: UnknownPeers::default(),
                _alive: alive,
            };
            let recv = RouterRecv {
                half: Some(recv),
                sender_gone: Some(sender_gone),
            };
            Ok(Socket::direct(
                kind,
                address,
                Arc::new(send),
                Box::new(recv),
            ))
        }
        RawSocket::Pub(socket) => Ok(Socket::direct(
            kind,
            address,
            Arc::new(PubSend {
                socket: tokio::sync::Mutex::new(socket),
            }),
            Box::new(NoRecv),
        )),
        RawSocket::Sub(socket) => Ok(Socket::direct(
            kind,
            address,
            Arc::new(NoSend),
            Box::new(SubRecv {
                socket,
                subscriptions,
            }),
        )),
        other @ RawSocket::Dealer(_) => Err(other),
    }
}

/// Turns a user's frames into a `zeromq` message; `None` (logged) for an empty one.
fn message(frames: Frames) -> Option<ZmqMessage> {
    match ZmqMessage::try_from(frames) {
        Ok(message) => Some(message),
        Err(_) => {
            tracing::warn!("dropped a message with no frames");
            None
        }
    }
}

/// A bound ROUTER's sending side.
struct RouterSend {
    half: RouterSendHalf,
    /// Peers already warned about.
    unknown: UnknownPeers,
    /// Dropped with the sending side: tells a discarding receiver to stop.
    _alive: oneshot::Sender<()>,
}

impl std::fmt::Debug for RouterSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterSend").finish_non_exhaustive()
    }
}

#[async_trait]
impl DirectSend for RouterSend {
    async fn send(&self, frames: Frames) -> ipp_core::Result<()> {
        let Some(message) = message(frames) else {
            return Ok(());
        };
        // The half is a handle on the shared socket: a clone is one reference count.
        let mut half = SendHalf::Router(self.half.clone());
        router::route(&mut half, message, &self.unknown).await;
        Ok(())
    }

    fn try_send(&self, frames: Frames) -> ipp_core::Result<()> {
        let Some(message) = message(frames) else {
            return Ok(());
        };
        let mut half = SendHalf::Router(self.half.clone());
        // The crate only waits when the peer's queue is full; a send not finished now is
        // dropped unsent, which is what a full queue means here.
        match router::route(&mut half, message, &self.unknown).now_or_never() {
            Some(()) => Ok(()),
            None => Err(ipp_core::Error::Timeout {
                what: "room in the send queue",
                after: std::time::Duration::ZERO,
            }),
        }
    }
}

/// A bound ROUTER's receiving side.
struct RouterRecv {
    /// Always `Some` until dropped.
    half: Option<RouterRecvHalf>,
    /// Resolves when the sending side is dropped.
    sender_gone: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for RouterRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterRecv").finish_non_exhaustive()
    }
}

/// The next message of a bound socket's receiving half; a failed peer is skipped (the crate
/// has already dropped it).
///
/// # Cancel safety
/// Cancel-safe: the crate reads from a stream whose `next` loses nothing when dropped.
async fn next_message<R: SocketRecv + Send>(half: &mut R) -> Frames {
    loop {
        match half.recv().await {
            Ok(message) => return message.into_vec(),
            Err(error) => tracing::debug!(%error, "a peer's connection failed"),
        }
    }
}

#[async_trait]
impl DirectRecv for RouterRecv {
    async fn recv(&mut self) -> ipp_core::Result<Frames> {
        match &mut self.half {
            Some(half) => Ok(next_message(half).await),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&mut self) -> Option<Frames> {
        next_message(self.half.as_mut()?).now_or_never()
    }
}

impl Drop for RouterRecv {
    /// With the sending side still in use, keeps reading and discarding until it is
    /// dropped too, so peers sending to this ROUTER are not stalled.
    fn drop(&mut self) {
        let (Some(mut half), Some(mut sender_gone)) = (self.half.take(), self.sender_gone.take())
        else {
            return;
        };
        if sender_gone.try_recv() != Err(oneshot::error::TryRecvError::Empty) {
            return; // the sending side is gone: the socket closes now
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut sender_gone => break,
                    _ = next_message(&mut half) => {
                        tracing::trace!("ROUTER receiver dropped; message discarded");
                    }
                }
            }
        });
    }
}

/// A bound PUB's sending side.
struct PubSend {
    /// The crate's PUB sends through `&mut self`; the lock is never held across a wait
    /// (its send only queues for the crate's fan-out task).
    socket: tokio::sync::Mutex<PubSocket>,
}

impl std::fmt::Debug for PubSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSend").finish_non_exhaustive()
    }
}

impl PubSend {
    async fn publish(&self, message: ZmqMessage) {
        // A PUB never blocks: the crate drops what slow or absent subscribers miss.
        if let Err(error) = self.socket.lock().await.send(message).await {
            tracing::debug!(%error, "PUB send failed");
        }
    }
}

#[async_trait]
impl DirectSend for PubSend {
    async fn send(&self, frames: Frames) -> ipp_core::Result<()> {
        if let Some(message) = message(frames) {
            self.publish(message).await;
        }
        Ok(())
    }

    fn try_send(&self, frames: Frames) -> ipp_core::Result<()> {
        let Some(message) = message(frames) else {
            return Ok(());
        };
        // Publishing never waits for room; only another sender holding the lock can make
        // this not finish at once, and a PUB may drop a message then.
        if self.publish(message).now_or_never().is_none() {
            tracing::trace!("PUB busy; message dropped");
        }
        Ok(())
    }
}

/// A bound SUB's receiving side.
struct SubRecv {
    socket: XSubSocket,
    subscriptions: Vec<Bytes>,
}

impl std::fmt::Debug for SubRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubRecv").finish_non_exhaustive()
    }
}

impl SubRecv {
    /// # Cancel safety
    /// Cancel-safe, as [`next_message`].
    async fn next(&mut self) -> Frames {
        loop {
            let frames = next_message(&mut self.socket).await;
            if crate::session::subscribed(&self.subscriptions, &frames) {
                return frames;
            }
        }
    }
}

#[async_trait]
impl DirectRecv for SubRecv {
    async fn recv(&mut self) -> ipp_core::Result<Frames> {
        Ok(self.next().await)
    }

    fn try_recv(&mut self) -> Option<Frames> {
        self.next().now_or_never()
    }
}

/// The sending side of a SUB ([`ipp_core::transport::SocketSender`] refuses sends on a
/// SUB before they get here).
#[derive(Debug)]
struct NoSend;

#[async_trait]
impl DirectSend for NoSend {
    async fn send(&self, _frames: Frames) -> ipp_core::Result<()> {
        Ok(())
    }

    fn try_send(&self, _frames: Frames) -> ipp_core::Result<()> {
        Ok(())
    }
}

/// The receiving side of a PUB: nothing ever arrives (subscriptions are handled inside the
/// crate).
#[derive(Debug)]
struct NoRecv;

#[async_trait]
impl DirectRecv for NoRecv {
    async fn recv(&mut self) -> ipp_core::Result<Frames> {
        std::future::pending().await
    }

    fn try_recv(&mut self) -> Option<Frames> {
        None
    }
}
