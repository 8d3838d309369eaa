//! Connecting sockets that send without a hop through their driving task.
//!
//! A connecting socket keeps a driving task (it reconnects, and holds what is sent while
//! the peer is away), but most sends do not need it: when the connection is up and nothing
//! is waiting in the socket's queue, the user's task hands the message straight to the
//! connection ([`Link::try_direct`]), saving a queue, a task wake-up and often a
//! thread switch per message. Otherwise the message goes through the queue as before and
//! the driving task sends it.
//!
//! Order is kept: a direct send happens only under the lock of the live sending half and
//! only while the count of queued messages is zero; the driving task sends queued messages
//! under the same lock and counts each one off only once the connection has taken it (or it is
//! dropped). So a message never overtakes one queued before it.
//!
//! Receiving needs no hop at all: the user's task polls the socket's connections itself
//! ([`InboxRecv`]); the socket outlives its connections, so what a connection delivered
//! before it dropped is still received. A user that drops the receiving half while still
//! sending has the socket read (and discard) on a task, so a lost connection is noticed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use ipp_core::transport::{DirectRecv, DirectSend, Frames, Refused, Socket, SocketKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::raw::{RecvHalf, SendHalf};
use crate::router::{self, UnknownPeers};
use crate::session::Ends;
use crate::zmtp::socket::{Inbox, SendError};

/// The live connection's sending half, shared by the user's senders and the driving task.
#[derive(Default)]
pub(crate) struct Link {
    /// `None` while disconnected. The driving task holds the lock across a send that has
    /// to wait; the user's senders only ever `try_lock`.
    half: tokio::sync::Mutex<Option<SendHalf>>,
    /// Messages put in the socket's queue and not yet taken by the connection or dropped.
    queued: AtomicUsize,
    /// Peers a ROUTER already warned about.
    pub(crate) unknown_peers: UnknownPeers,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts one queued message off when dropped: when it is sent, dropped, or lost with its
/// connection (never when it is kept for the next connection; see [`Taken::keep`]).
pub(crate) struct Taken<'a>(&'a Link);

impl Taken<'_> {
    /// The message stays queued (held for the next connection): not counted off.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Link {
    /// Installs the sending half of a new connection.
    pub(crate) async fn connected(&self, half: SendHalf) {
        *self.half.lock().await = Some(half);
    }

    /// Forgets the sending half of a lost connection.
    pub(crate) async fn disconnected(&self) {
        self.half.lock().await.take();
    }

    /// The sending half, for the driving task (waits while a user's direct send runs).
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<SendHalf>> {
        self.half.lock().await
    }

    /// The driving task took a queued message: it is counted off when the guard drops.
    pub(crate) fn taken(&self) -> Taken<'_> {
        Taken(self)
    }

    /// A PUB's [`Link::try_direct`] of several messages, written together; any other kind,
    /// or a PUB that cannot send directly now, gives the batch back.
    fn try_publish(&self, kind: SocketKind, batch: Vec<Frames>) -> Result<(), Vec<Frames>> {
        if kind != SocketKind::Pub || self.queued.load(Ordering::Acquire) != 0 {
            return Err(batch);
        }
        let Ok(half) = self.half.try_lock() else {
            return Err(batch);
        };
        // Checked again under the lock: the driving task counts off under it.
        if self.queued.load(Ordering::Acquire) != 0 {
            return Err(batch);
        }
        match half.as_ref() {
            Some(send) => {
                send.publish(&batch);
                Ok(())
            }
            None => Err(batch),
        }
    }

    /// Sends `frames` now if the connection is up, nothing is queued and the crate takes
    /// it without waiting; gives the frames back otherwise (to be queued).
    fn try_direct(&self, kind: SocketKind, frames: Frames) -> Result<(), Frames> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Err(frames);
        }
        let Ok(mut half) = self.half.try_lock() else {
            return Err(frames);
        };
        // Checked again under the lock: the driving task counts off under it.
        if self.queued.load(Ordering::Acquire) != 0 {
            return Err(frames);
        }
        let Some(send) = half.as_mut() else {
            return Err(frames);
        };
        match kind {
            SocketKind::Router => router::try_route(send, frames, &self.unknown_peers),
            SocketKind::Dealer => match send.try_send(frames) {
                Ok(()) => Ok(()),
                // No peer (the connection just went) or no room: the driving task holds it.
                Err(SendError::NoPeer(frames) | SendError::Full(frames, _)) => Err(frames),
                Err(error @ SendError::UnknownPeer) => {
                    tracing::debug!(%error, "DEALER send failed");
                    Ok(())
                }
            },
            SocketKind::Pub => {
                // A PUB never waits: subscribers whose outbox is full miss the message.
                if let Err(error) = send.try_send(frames) {
                    tracing::debug!(%error, "PUB send failed");
                }
                Ok(())
            }
            // `SocketSender` refuses sends on a SUB before they get here.
            SocketKind::Sub => Ok(()),
        }
    }
}

/// Stops the driving task when both of the user's halves are dropped.
#[derive(Debug)]
struct StopGuard {
    _stop: oneshot::Sender<()>,
}

/// What the user's receiving half of a connecting socket needs.
pub(crate) struct Receiving {
    /// The socket's receiving half.
    pub(crate) recv: RecvHalf,
    /// A SUB's subscriptions (it keeps only matching messages).
    pub(crate) subscriptions: Vec<Bytes>,
    /// Cancelled when the driving task ends.
    pub(crate) driver_done: CancellationToken,
}

/// Builds the user's socket for a connecting socket and the ends its driving task keeps.
pub(crate) fn socket(
    kind: SocketKind,
    address: String,
    queue_capacity: usize,
    link: Arc<Link>,
    receiving: Receiving,
) -> (Socket, Ends) {
    let capacity = queue_capacity.max(1);
    let (out_tx, out_rx) = mpsc::channel(capacity);
    let (stop_tx, stop_rx) = oneshot::channel();
    let guard = Arc::new(StopGuard { _stop: stop_tx });
    let label: Arc<str> = Arc::from(format!("{kind} {address}"));
    let send = LinkSend {
        kind,
        link,
        outgoing: out_tx,
        label: Arc::clone(&label),
        _guard: Arc::clone(&guard),
    };
    let recv = InboxRecv {
        inbox: receiving.recv.into_inbox(),
        subscriptions: (kind == SocketKind::Sub).then_some(receiving.subscriptions),
        driver_done: receiving.driver_done,
        _guard: guard,
    };
    let socket = Socket::direct(kind, address, Arc::new(send), Box::new(recv));
    let ends = Ends {
        outgoing: out_rx,
        incoming: None,
        stop: stop_rx,
    };
    (socket, ends)
}

/// The sending side of a connecting socket.
#[derive(Debug)]
struct LinkSend {
    kind: SocketKind,
    link: Arc<Link>,
    outgoing: mpsc::Sender<Frames>,
    label: Arc<str>,
    _guard: Arc<StopGuard>,
}

impl LinkSend {
    fn closed(&self) -> ipp_core::Error {
        ipp_core::Error::Closed {
            what: self.label.to_string(),
        }
    }
}

#[async_trait]
impl DirectSend for LinkSend {
    async fn send(&self, frames: Frames) -> ipp_core::Result<()> {
        let frames = match self.link.try_direct(self.kind, frames) {
            Ok(()) => return Ok(()),
            Err(frames) => frames,
        };
        // Cancel-safe: nothing is counted until the queue has room for the message.
        let permit = self.outgoing.reserve().await.map_err(|_| self.closed())?;
        self.link.queued.fetch_add(1, Ordering::AcqRel);
        permit.send(frames);
        Ok(())
    }

    async fn send_batch(&self, batch: Vec<Frames>) -> ipp_core::Result<()> {
        let batch = match self.link.try_publish(self.kind, batch) {
            Ok(()) => return Ok(()),
            Err(batch) => batch,
        };
        for frames in batch {
            self.send(frames).await?;
        }
        Ok(())
    }

    fn try_send(&self, frames: Frames) -> ipp_core::Result<()> {
        self.offer(frames).map_err(|refused| match refused {
            Refused::Full(_) => ipp_core::Error::Timeout {
                what: "room in the send queue",
                after: std::time::Duration::ZERO,
            },
            Refused::Closed => self.closed(),
        })
    }

    fn offer(&self, frames: Frames) -> Result<(), Refused> {
        let frames = match self.link.try_direct(self.kind, frames) {
            Ok(()) => return Ok(()),
            Err(frames) => frames,
        };
        match self.outgoing.try_reserve() {
            Ok(permit) => {
                self.link.queued.fetch_add(1, Ordering::AcqRel);
                permit.send(frames);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(Refused::Full(frames)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(Refused::Closed),
        }
    }

    async fn ready(&self) -> ipp_core::Result<()> {
        // Room in the queue; the permit is given back at once (we are waiting, not sending).
        self.outgoing
            .reserve()
            .await
            .map(drop)
            .map_err(|_| self.closed())
    }
}

/// The receiving side of a connecting socket: polls the socket's connections in the
/// user's task.
struct InboxRecv {
    /// `None` for a PUB (it receives nothing).
    inbox: Option<Inbox>,
    /// A SUB's subscriptions.
    subscriptions: Option<Vec<Bytes>>,
    driver_done: CancellationToken,
    _guard: Arc<StopGuard>,
}

impl std::fmt::Debug for InboxRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxRecv").finish_non_exhaustive()
    }
}

/// The next message (a SUB's: the next matching one); a failed connection is skipped (the
/// driving task reconnects).
///
/// # Cancel safety
/// Cancel-safe: a partly received message stays in its connection's reader.
async fn next_message(inbox: &mut Inbox, subscriptions: Option<&[Bytes]>) -> Frames {
    loop {
        match inbox.recv().await {
            Ok(frames) => {
                if subscriptions
                    .is_none_or(|subscriptions| crate::session::subscribed(subscriptions, &frames))
                {
                    return frames;
                }
            }
            Err(error) => tracing::debug!(%error, "connection lost"),
        }
    }
}

#[async_trait]
impl DirectRecv for InboxRecv {
    async fn recv(&mut self) -> ipp_core::Result<Frames> {
        match &mut self.inbox {
            Some(inbox) => Ok(next_message(inbox, self.subscriptions.as_deref()).await),
            None => std::future::pending().await,
        }
    }

    fn try_recv(&mut self) -> Option<Frames> {
        next_message(self.inbox.as_mut()?, self.subscriptions.as_deref()).now_or_never()
    }
}

impl Drop for InboxRecv {
    /// Keeps reading (and discarding) until the driving task ends, so a lost connection is
    /// still noticed and peers sending to this socket are not stalled.
    fn drop(&mut self) {
        let Some(mut inbox) = self.inbox.take() else {
            return;
        };
        if self.driver_done.is_cancelled() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let done = self.driver_done.clone();
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = done.cancelled() => break,
                    _ = next_message(&mut inbox, None) => {
                        tracing::trace!("receiver dropped; message discarded");
                    }
                }
            }
        });
    }
}
