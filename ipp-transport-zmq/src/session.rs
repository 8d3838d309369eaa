//! Driving one ZMTP socket: the user's queues on one side, the socket on the other.
//!
//! The send and receive loops are separate futures polled concurrently, so a full incoming
//! queue (a user not reading) never stops messages going out, and vice versa. A connecting
//! socket's user receives from the socket directly (see [`crate::link`]): its driver only
//! sends what was queued and watches for the connection to drop.

use std::future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipp_core::transport::{Frames, SocketKind, SocketTaskEnds};
use tokio::sync::{mpsc, oneshot};

use crate::link::Link;
use crate::raw::{Monitor, RecvHalf};
use crate::router;
use crate::zmtp::socket::{Event, SendError};

/// How long a bound DEALER with no peer waits before offering a held message again.
const NO_PEER_RETRY: Duration = Duration::from_millis(50);

/// Whether the socket was bound (serves many peers, never reconnects) or connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Bound,
    Connected,
}

/// Why [`Driver::run`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The user dropped the socket: stop for good.
    Stopped,
    /// The connection was lost: reconnect.
    Disconnected,
}

/// The ends of the user's queues a driving task holds.
#[derive(Debug)]
pub(crate) struct Ends {
    /// Messages the user sends.
    pub(crate) outgoing: mpsc::Receiver<Frames>,
    /// Messages for the user (`None` when the user receives from the socket directly).
    pub(crate) incoming: Option<mpsc::Sender<Frames>>,
    /// Resolves when the user has dropped the socket.
    pub(crate) stop: oneshot::Receiver<()>,
}

impl From<SocketTaskEnds> for Ends {
    fn from(ends: SocketTaskEnds) -> Self {
        Self {
            outgoing: ends.outgoing,
            incoming: Some(ends.incoming),
            stop: ends.stop,
        }
    }
}

/// The user's side of a socket plus what must survive reconnections.
#[derive(Debug)]
pub(crate) struct Driver {
    pub(crate) kind: SocketKind,
    pub(crate) ends: Ends,
    pub(crate) subscriptions: Vec<Bytes>,
    /// The live connection's sending half, shared with the user's direct sends.
    pub(crate) link: Arc<Link>,
    /// A message taken from the user's queue that the last connection could not take.
    pending: Option<Frames>,
}

impl Driver {
    pub(crate) fn new(
        kind: SocketKind,
        ends: Ends,
        subscriptions: Vec<Bytes>,
        link: Arc<Link>,
    ) -> Self {
        Self {
            kind,
            ends,
            subscriptions,
            link,
            pending: None,
        }
    }

    /// Moves messages between the user's queues and the socket until the user drops the
    /// socket or (when connected) the connection is lost. The connection's sending half is
    /// in [`Driver::link`] (see [`Link::connected`]).
    pub(crate) async fn run(
        &mut self,
        recv: Option<RecvHalf>,
        monitor: Option<&mut Monitor>,
        mode: Mode,
    ) -> Outcome {
        let Self {
            kind,
            ends,
            subscriptions,
            link,
            pending,
        } = self;
        let Ends {
            outgoing,
            incoming,
            stop,
        } = ends;
        let sending = send_loop(*kind, mode, link, outgoing, pending);
        let receiving = async {
            match (recv, incoming.as_ref()) {
                (Some(mut recv), Some(incoming)) => {
                    recv_loop(*kind, mode, &mut recv, incoming, subscriptions).await
                }
                _ => future::pending().await,
            }
        };
        // Every branch is cancel-safe up to messages in flight in a connection when it dies
        // (which ZeroMQ itself would lose too); see each loop.
        tokio::select! {
            _ = stop => Outcome::Stopped,
            outcome = sending => outcome,
            outcome = receiving => outcome,
            outcome = watch(monitor) => outcome,
        }
    }
}

/// Drains the user's send queue into the socket.
async fn send_loop(
    kind: SocketKind,
    mode: Mode,
    link: &Link,
    outgoing: &mut mpsc::Receiver<Frames>,
    pending: &mut Option<Frames>,
) -> Outcome {
    loop {
        let frames = match pending.take() {
            Some(frames) => frames,
            // Cancel-safe: a message is either returned or left in the queue.
            None => match outgoing.recv().await {
                Some(frames) => frames,
                // Every sender is gone but the user may still be receiving.
                None => return future::pending().await,
            },
        };
        // Counted off when this iteration ends, unless kept for the next connection.
        let taken = link.taken();
        if frames.is_empty() {
            tracing::warn!("dropped a message with no frames");
            continue;
        }
        let mut half = link.lock().await;
        let Some(send) = half.as_mut() else {
            // The connection is being replaced: hold the message for the next one.
            *pending = Some(frames);
            taken.keep();
            return Outcome::Disconnected;
        };
        match kind {
            SocketKind::Router => router::route(send, frames, &link.unknown_peers).await,
            SocketKind::Dealer => match send.send(frames).await {
                Ok(()) => {}
                Err(SendError::NoPeer(frames) | SendError::Full(frames, _)) => {
                    // No peer: keep the message for the next connection (or peer).
                    *pending = Some(frames);
                    taken.keep();
                    drop(half);
                    match mode {
                        Mode::Connected => return Outcome::Disconnected,
                        Mode::Bound => tokio::time::sleep(NO_PEER_RETRY).await,
                    }
                }
                Err(error @ SendError::UnknownPeer) => {
                    tracing::debug!(%error, "DEALER send failed");
                }
            },
            SocketKind::Pub => {
                // A PUB never blocks: subscribers whose outbox is full miss the message.
                if let Err(error) = send.try_send(frames) {
                    tracing::debug!(%error, "PUB send failed");
                }
            }
            // `SocketSender` refuses sends on a SUB before they reach the queue.
            SocketKind::Sub => {}
        }
    }
}

/// Moves received messages into the user's queue.
async fn recv_loop(
    kind: SocketKind,
    mode: Mode,
    recv: &mut RecvHalf,
    incoming: &mpsc::Sender<Frames>,
    subscriptions: &[Bytes],
) -> Outcome {
    loop {
        // Reserve room first, so a message is never taken from the socket and then lost
        // because this future was dropped while waiting for room. `None`: the user dropped
        // the receiver; keep reading (and discarding) so peers are not stalled.
        let permit = incoming.reserve().await.ok();
        match recv.recv().await {
            Ok(frames) => {
                if kind == SocketKind::Sub && !subscribed(subscriptions, &frames) {
                    continue;
                }
                if let Some(permit) = permit {
                    permit.send(frames);
                }
            }
            Err(error) => match mode {
                Mode::Connected => {
                    tracing::debug!(%error, "receive failed; connection lost");
                    return Outcome::Disconnected;
                }
                // One peer of a bound socket failed; it has already been removed.
                Mode::Bound => tracing::debug!(%error, "a peer's connection failed"),
            },
        }
    }
}

/// ZeroMQ's SUB rule: the first frame starts with one of the subscribed prefixes. The
/// publisher filters too; this keeps the contract when several publishers are connected.
pub(crate) fn subscribed(subscriptions: &[Bytes], frames: &Frames) -> bool {
    let topic = frames.first().map(Bytes::as_ref).unwrap_or_default();
    subscriptions.iter().any(|prefix| topic.starts_with(prefix))
}

/// Resolves when a connected socket loses its peer; never for a bound one.
async fn watch(monitor: Option<&mut Monitor>) -> Outcome {
    let Some(monitor) = monitor else {
        return future::pending().await;
    };
    while let Some(event) = monitor.recv().await {
        if event == Event::Disconnected {
            tracing::debug!("peer disconnected");
            return Outcome::Disconnected;
        }
    }
    // The socket dropped its end of the monitor: it is gone.
    Outcome::Disconnected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_is_a_prefix_of_the_first_frame() {
        let frames = vec![Bytes::from_static(b"news.today"), Bytes::from_static(b"x")];
        assert!(subscribed(&[Bytes::from_static(b"news.")], &frames));
        assert!(subscribed(&[Bytes::new()], &frames));
        assert!(!subscribed(&[Bytes::from_static(b"weather")], &frames));
        assert!(!subscribed(&[], &frames));
    }
}
