//! ROUTER send policy: messages to a peer the socket does not know are dropped, and each
//! such peer is logged once, not once per message.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use zeromq::{ZmqError, ZmqMessage};

use crate::raw::SendHalf;

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
    pub(crate) fn dropped(&self, peer: &Bytes, error: &ZmqError) {
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

/// Sends `[peer_id, frames…]`; never fails: what cannot be routed is dropped and logged.
pub(crate) async fn route(send: &mut SendHalf, message: ZmqMessage, unknown: &UnknownPeers) {
    let Some(peer) = message.get(0).cloned() else {
        return;
    };
    if message.len() < 2 {
        tracing::warn!("dropped a ROUTER message that has a peer id but no content");
        return;
    }
    match send.send(message).await {
        Ok(()) => unknown.known(&peer),
        // The crate reports an unknown identity as `Other`, and a peer whose connection just
        // closed as a broken send queue; both mean "that peer is gone".
        Err(error) => unknown.dropped(&peer, &error),
    }
}
