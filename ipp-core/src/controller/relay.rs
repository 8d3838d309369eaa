//! The MUX and control relays (ROUTER↔ROUTER with the two-frame swap) and the IOPub relay.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::{HubEvent, TaskCommand};
use crate::protocol::{Session, WireMessage};
use crate::transport::{Frames, Socket, SocketSender};

/// Logs a misbehaving peer once, not once per message.
#[derive(Debug, Default)]
pub(crate) struct WarnOnce {
    peers: HashSet<Bytes>,
}

impl WarnOnce {
    /// How many distinct peers we remember; past this we forget and may warn again.
    const CAPACITY: usize = 10_000;

    /// True the first time a peer is seen.
    pub(crate) fn first(&mut self, peer: &Bytes) -> bool {
        if self.peers.len() >= Self::CAPACITY {
            self.peers.clear();
        }
        self.peers.insert(peer.clone())
    }
}

/// Shows a routing id readably in logs (engine uuids are text, client ids are binary).
pub(crate) fn peer_name(peer: &[u8]) -> String {
    match std::str::from_utf8(peer) {
        Ok(text) if text.chars().all(|c| c.is_ascii_graphic()) => text.to_owned(),
        _ => hex::encode(peer),
    }
}

/// Total size of a multipart message.
pub(crate) fn message_bytes(frames: &Frames) -> usize {
    frames.iter().map(Bytes::len).sum()
}

/// Checks what every client-facing socket checks before acting on a message: size, shape and
/// signature. Logs a rejected peer once and returns `None` for a message to drop.
pub(crate) fn accept_from_peer(
    frames: Frames,
    session: &Session,
    max_bytes: usize,
    warned: &mut WarnOnce,
    channel: &'static str,
) -> Option<WireMessage> {
    let peer = frames.first().cloned().unwrap_or_default();
    let size = message_bytes(&frames);
    let checked = if size > max_bytes {
        Err(format!(
            "message of {size} bytes exceeds the {max_bytes}-byte limit"
        ))
    } else {
        WireMessage::split(frames)
            .and_then(|wire| session.verify(&wire).map(|()| wire))
            .map_err(|err| err.to_string())
    };
    match checked {
        Ok(wire) => Some(wire),
        Err(reason) => {
            if warned.first(&peer) {
                tracing::warn!(channel, peer = %peer_name(&peer), error = %reason,
                    "dropped a message (further drops from this peer are logged at debug)");
            } else {
                tracing::debug!(channel, peer = %peer_name(&peer), error = %reason, "dropped a message");
            }
            None
        }
    }
}

/// Which relay this is, and whom it reports to.
#[derive(Clone, Debug)]
pub(crate) enum RelayKind {
    /// Direct execution: requests and replies are recorded by the Hub.
    Mux,
    /// Control: nothing is recorded; `abort_request`s are shown to the task scheduler.
    Control(mpsc::Sender<TaskCommand>),
}

/// The msg_ids of an `abort_request`, if `wire` is one.
fn abort_ids(wire: &WireMessage) -> Option<Vec<String>> {
    let header = wire.parse_header().ok()?;
    if header.msg_type != "abort_request" {
        return None;
    }
    let content: serde_json::Value = serde_json::from_slice(&wire.content).ok()?;
    let ids = match content.get("msg_ids")? {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        serde_json::Value::String(one) => vec![one.clone()],
        _ => return None,
    };
    Some(ids)
}

/// Relays between a client-facing and an engine-facing ROUTER, swapping the first two
/// identity frames in each direction, as pyzmq's monitored queue does.
pub(crate) async fn run_router_relay(
    kind: RelayKind,
    client: Socket,
    engine: Socket,
    session: Arc<Session>,
    max_bytes: usize,
    hub: mpsc::Sender<HubEvent>,
    shutdown: CancellationToken,
) {
    let channel = match kind {
        RelayKind::Mux => "mux",
        RelayKind::Control(_) => "control",
    };
    let (client_tx, mut client_rx) = client.split();
    let (engine_tx, mut engine_rx) = engine.split();
    let mut warned = WarnOnce::default();
    loop {
        // Every branch is cancel-safe: `recv` leaves unreceived messages queued.
        tokio::select! {
            () = shutdown.cancelled() => break,
            frames = client_rx.recv() => {
                let Ok(frames) = frames else { break };
                let Some(wire) = accept_from_peer(frames, &session, max_bytes, &mut warned, channel)
                else { continue };
                if wire.idents.len() < 2 {
                    if let Some(peer) = wire.idents.first() {
                        if warned.first(peer) {
                            tracing::warn!(channel, peer = %peer_name(peer),
                                "dropped a request with no engine identity frame");
                        }
                    }
                    continue;
                }
                if let RelayKind::Control(tasks) = &kind {
                    if let Some(ids) = abort_ids(&wire) {
                        let _ = tasks.send(TaskCommand::Abort(ids)).await;
                    }
                }
                forward_swapped(wire, &engine_tx, &kind, &hub, HubEvent::MuxRequest).await;
            }
            frames = engine_rx.recv() => {
                let Ok(frames) = frames else { break };
                let Ok(wire) = WireMessage::split(frames) else {
                    tracing::debug!(channel, "dropped a malformed message from an engine");
                    continue;
                };
                if wire.idents.len() < 2 {
                    continue;
                }
                forward_swapped(wire, &client_tx, &kind, &hub, HubEvent::MuxReply).await;
            }
        }
    }
}

async fn forward_swapped(
    mut wire: WireMessage,
    to: &SocketSender,
    kind: &RelayKind,
    hub: &mpsc::Sender<HubEvent>,
    event: fn(WireMessage) -> HubEvent,
) {
    wire.idents.swap(0, 1);
    if matches!(kind, RelayKind::Mux) {
        // The Hub reads the same frames the peer receives (the monitor's view).
        let _ = hub.send(event(wire.clone())).await;
    }
    if let Err(err) = to.send(wire.into_frames()).await {
        tracing::debug!(error = %err, "relay socket closed");
    }
}

/// Whether the Hub does anything with an IOPub message (see `Hub::record_iopub`): not with
/// `status`, two of which every task publishes, so those are only relayed (no copy, no
/// event, no parse on the Hub's side).
fn hub_records(wire: &WireMessage) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        msg_type: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<Kind<'_>>(&wire.header).map_or(true, |kind| kind.msg_type != "status")
}

/// At most this many IOPub messages already received are relayed in one write.
const RELAY_BATCH: usize = 64;

/// Relays what engines publish to every client, unchanged, and shows the Hub what it
/// records.
///
/// Messages that are malformed, badly signed or replayed are dropped here: an engine never
/// sends them, and forwarding them would only make every client's IOPub handler choke.
/// `session` must be the relay's own (its replay history is per receiver).
pub(crate) async fn run_iopub_relay(
    engines: Socket,
    clients: Socket,
    session: Arc<Session>,
    max_bytes: usize,
    hub: mpsc::Sender<HubEvent>,
    shutdown: CancellationToken,
) {
    let (_, mut engine_rx) = engines.split();
    let (client_tx, _) = clients.split();
    let mut warned = WarnOnce::default();
    let mut received = Vec::with_capacity(RELAY_BATCH);
    let mut relayed = Vec::with_capacity(RELAY_BATCH);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            frames = engine_rx.recv() => {
                let Ok(frames) = frames else { break };
                received.push(frames);
            }
        }
        // What arrived with it (an engine's `status: busy` and `idle` come together) goes
        // out to the clients in one write.
        engine_rx.drain_ready(RELAY_BATCH, &mut received);
        for frames in received.drain(..) {
            let Some(wire) = accept_from_peer(frames, &session, max_bytes, &mut warned, "iopub")
            else {
                continue;
            };
            // What a client would choke on: replayed frames and parts that are not JSON.
            if let Err(err) = session
                .remember_signature(&wire)
                .and_then(|()| wire.check_json())
            {
                tracing::debug!(error = %err, "dropped an IOPub message");
                continue;
            }
            relayed.push(if hub_records(&wire) {
                let frames = wire.clone().into_frames();
                let _ = hub.send(HubEvent::Iopub(wire)).await;
                frames
            } else {
                wire.into_frames()
            });
        }
        let sent = match relayed.len() {
            0 => Ok(()),
            1 => client_tx.send(relayed.remove(0)).await,
            _ => client_tx.send_batch(std::mem::take(&mut relayed)).await,
        };
        if sent.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(header: &'static [u8]) -> WireMessage {
        WireMessage {
            idents: Vec::new(),
            signature: Bytes::new(),
            header: Bytes::from_static(header),
            parent_header: Bytes::from_static(b"{}"),
            metadata: Bytes::from_static(b"{}"),
            content: Bytes::from_static(b"{}"),
            buffers: Vec::new(),
        }
    }

    #[test]
    fn the_hub_is_shown_everything_but_status() {
        assert!(!hub_records(&with_header(
            br#"{"msg_id": "a", "msg_type": "status"}"#
        )));
        assert!(hub_records(&with_header(br#"{"msg_type":"stream"}"#)));
        assert!(hub_records(&with_header(
            br#"{"msg_type":"shutdown_reply"}"#
        )));
        // Unreadable headers go to the Hub, which decides (as before).
        assert!(hub_records(&with_header(b"{}")));
    }
}
