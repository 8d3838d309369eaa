//! ROUTER send policy: messages to a peer the socket does not know are dropped, and each
//! such peer is logged once, not once per message.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use ipp_core::transport::Frames;

use crate::zmtp::socket::{SendError, Shared};

/// How many distinct unknown peers are remembered before the memory is reset (so a flood
/// of bogus ids cannot grow it without bound; the cost is at most a repeated warning).
const MAX_REMEMBERED: usize = 4096;

/// The unknown peers already warned about. Shared by every sender of a socket; the lock is
/// taken only on the error path and while some peer is remembered.
#[derive(Debug, Default)]
pub(crate) struct UnknownPeers {
    /// Whether `warned` may be non-empty (read without the lock on every send).
    any: AtomicBool,
    warned: Mutex<HashSet<Bytes>>,
}

impl UnknownPeers {
    /// Logs (once per peer) that messages to `peer` are being dropped.
    pub(crate) fn dropped(&self, peer: &Bytes, error: &dyn fmt::Display) {
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if warned.len() >= MAX_REMEMBERED {
            warned.clear();
        }
        let first = warned.insert(peer.clone());
        self.any.store(true, Ordering::Release);
        drop(warned);
        if first {
            tracing::warn!(
                peer = %String::from_utf8_lossy(peer),
                error = %error,
                "dropping messages to a peer this ROUTER does not know"
            );
        } else {
            tracing::debug!(peer = %String::from_utf8_lossy(peer), "dropped a message to an unknown peer");
        }
    }

    /// Forgets `peer`, so that if it vanishes again that is logged again.
    pub(crate) fn known(&self, peer: &Bytes) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        warned.remove(peer);
        if warned.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }
}

/// The peer id of a routable message; `None` (logged) for one that cannot be routed.
fn peer_of(frames: &Frames) -> Option<Bytes> {
    let peer = frames.first()?.clone();
    if frames.len() < 2 {
        tracing::warn!("dropped a ROUTER message that has a peer id but no content");
        return None;
    }
    Some(peer)
}

/// Sends `[peer_id, frames…]`, waiting while that peer's outbox is full; never fails: what
/// cannot be routed is dropped and logged.
pub(crate) async fn route(send: &Shared, frames: Frames, unknown: &UnknownPeers) {
    let Some(peer) = peer_of(&frames) else {
        return;
    };
    match send.send(frames).await {
        Ok(()) => unknown.known(&peer),
        Err(error) => unknown.dropped(&peer, &error),
    }
}

/// As [`route`] without waiting: gives the message back when the peer's outbox is full.
pub(crate) fn try_route(
    send: &Shared,
    frames: Frames,
    unknown: &UnknownPeers,
) -> Result<(), Frames> {
    let Some(peer) = peer_of(&frames) else {
        return Ok(());
    };
    match send.try_send(frames) {
        Ok(()) => unknown.known(&peer),
        Err(SendError::Full(frames, _)) => return Err(frames),
        Err(error) => unknown.dropped(&peer, &error),
    }
    Ok(())
}
