//! Bound ROUTER, PUB and SUB sockets without a driving task: the user's task calls the
//! ZMTP socket itself.
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use ipp_core::transport::{DirectRecv, DirectSend, Frames, Refused, Socket, SocketKind};
use tokio::sync::oneshot;

use crate::raw::{RawSocket, SendHalf};
use crate::router::{self, UnknownPeers};
use crate::zmtp::socket::Inbox;

/// Builds the user's socket for a bound `raw` socket of a kind that can go direct; gives
/// `raw` back for the others (a DEALER holds messages for an absent peer: it keeps its
/// driving task).
pub(crate) fn bound(
    kind: SocketKind,
    address: String,
    raw: RawSocket,
    subscriptions: Vec<Bytes>,
) -> Result<Socket, RawSocket> {
    if raw.kind() == SocketKind::Dealer {
        return Err(raw);
    }
    let (send, recv) = raw.split();
    let inbox = recv.into_inbox();
    Ok(match kind {
        SocketKind::Router => {
            let (alive, sender_gone) = oneshot::channel();
            let receiver_gone = Arc::new(AtomicBool::new(false));
            let send = RouterSend {
                half: send,
                unknown: UnknownPeers::default(),
                _alive: alive,
                receiver_gone: Arc::clone(&receiver_gone),
            };
            let recv = RouterRecv {
                inbox,
                sender_gone: Some(sender_gone),
                receiver_gone,
            };
            Socket::direct(kind, address, Arc::new(send), Box::new(recv))
        }
        SocketKind::Pub => Socket::direct(
            kind,
            address,
            Arc::new(PubSend { half: send }),
            Box::new(NoRecv),
        ),
        SocketKind::Sub | SocketKind::Dealer => Socket::direct(
            kind,
            address,
            Arc::new(NoSend { _half: send }),
            Box::new(SubRecv {
                inbox,
                subscriptions,
            }),
        ),
    })
}

/// A bound ROUTER's sending side.
struct RouterSend {
    half: SendHalf,
    /// Peers already warned about.
    unknown: UnknownPeers,
    /// Dropped with the sending side: tells a discarding receiver to stop.
    _alive: oneshot::Sender<()>,
    /// Set when the receiving side is dropped.
    receiver_gone: Arc<AtomicBool>,
}

impl Drop for RouterSend {
    /// The receiving side went first (and discards on a task of its own until now): the
    /// socket is closed, so its ports are freed here, not when that task next runs (a
    /// controller restarted on the same ports right after `shutdown` binds them).
    fn drop(&mut self) {
        if self.receiver_gone.load(Ordering::Acquire) {
            self.half.stop_listening();
        }
    }
}

impl std::fmt::Debug for RouterSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterSend").finish_non_exhaustive()
    }
}

#[async_trait]
impl DirectSend for RouterSend {
    async fn send(&self, frames: Frames) -> ipp_core::Result<()> {
        router::route(&self.half, frames, &self.unknown).await;
        Ok(())
    }

    fn try_send(&self, frames: Frames) -> ipp_core::Result<()> {
        router::try_route(&self.half, frames, &self.unknown).map_err(|_| ipp_core::Error::Timeout {
            what: "room in the send queue",
            after: std::time::Duration::ZERO,
        })
    }

    fn offer(&self, frames: Frames) -> Result<(), Refused> {
        router::try_route(&self.half, frames, &self.unknown).map_err(Refused::Full)
    }
}

/// A bound ROUTER's receiving side.
struct RouterRecv {
    /// Always `Some` until dropped.
    inbox: Option<Inbox>,
    /// Resolves when the sending side is dropped.
    sender_gone: Option<oneshot::Receiver<()>>,
    /// Set when this side is dropped (see [`RouterSend`]'s `Drop`).
    receiver_gone: Arc<AtomicBool>,
}

impl std::fmt::Debug for RouterRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterRecv").finish_non_exhaustive()
    }
}

/// The next message of a bound socket's inbox; a failed peer is skipped (it has already
/// been removed).
///
/// # Cancel safety
/// Cancel-safe: a partly received message stays in its connection's reader.
async fn next_message(inbox: &mut Inbox) -> Frames {
    loop {
        match inbox.recv().await {
            Ok(frames) => return frames,
            Err(error) => tracing::debug!(%error, "a peer's connection closed"),
        }
    }
}

#[async_trait]
impl DirectRecv for RouterRecv {
    async fn recv(&mut self) -> ipp_core::Result<Frames> {
        match &mut self.inbox {
            Some(inbox) => Ok(next_message(inbox).await),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&mut self) -> Option<Frames> {
        next_message(self.inbox.as_mut()?).now_or_never()
    }
}

impl Drop for RouterRecv {
    /// With the sending side still in use, keeps reading and discarding until it is
    /// dropped too, so peers sending to this ROUTER are not stalled.
    fn drop(&mut self) {
        self.receiver_gone.store(true, Ordering::Release);
        let (Some(mut inbox), Some(mut sender_gone)) = (self.inbox.take(), self.sender_gone.take())
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
                    _ = next_message(&mut inbox) => {
                        tracing::trace!("ROUTER receiver dropped; message discarded");
                    }
                }
            }
        });
    }
}

/// A bound PUB's sending side: writes to each matching subscriber in the caller's task.
#[derive(Debug)]
struct PubSend {
    half: SendHalf,
}

#[async_trait]
impl DirectSend for PubSend {
    async fn send(&self, frames: Frames) -> ipp_core::Result<()> {
        self.try_send(frames)
    }

    fn try_send(&self, frames: Frames) -> ipp_core::Result<()> {
        // A PUB never waits: a subscriber whose outbox is full misses the message.
        if let Err(error) = self.half.try_send(frames) {
            tracing::debug!(%error, "PUB send failed");
        }
        Ok(())
    }

    async fn send_batch(&self, batch: Vec<Frames>) -> ipp_core::Result<()> {
        self.half.publish(&batch);
        Ok(())
    }
}

/// A bound SUB's receiving side.
#[derive(Debug)]
struct SubRecv {
    /// Always `Some` for a SUB.
    inbox: Option<Inbox>,
    subscriptions: Vec<Bytes>,
}

impl SubRecv {
    /// # Cancel safety
    /// Cancel-safe, as [`next_message`].
    async fn next(&mut self) -> Frames {
        let Some(inbox) = self.inbox.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let frames = next_message(inbox).await;
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
/// SUB before they get here); it keeps the socket open while the user holds it.
#[derive(Debug)]
struct NoSend {
    _half: SendHalf,
}

#[async_trait]
impl DirectSend for NoSend {
    async fn send(&self, _frames: Frames) -> ipp_core::Result<()> {
        Ok(())
    }

    fn try_send(&self, _frames: Frames) -> ipp_core::Result<()> {
        Ok(())
    }
}

/// The receiving side of a PUB: nothing ever arrives (subscriptions are applied inside
/// [`crate::zmtp`]).
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
