//! The broadcast scheduler (BroadcastView): one request fanned out to many engines, with
//! replies relayed one by one or coalesced into one (spec §7.7).
//!
//! ipyparallel builds a binary tree of schedulers; we keep one root and several leaf
//! sockets in a single task, which engines cannot tell apart from the tree: engine `id`
//! connects to leaf `id % leaves`, and sees the sub-request ids ipyparallel would send.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{SelectAll, StreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::relay::{accept_from_peer, WarnOnce};
use crate::protocol::{to_json_bytes, Header, JsonMap, Session, WireMessage};
use crate::transport::{Frames, Socket, SocketReceiver, SocketSender};

/// A coalescing request waiting for every target's reply.
#[derive(Debug)]
struct Coalescing {
    client: Bytes,
    /// Targets in the client's order: (uuid, id).
    targets: Vec<(String, u64)>,
    replies: HashMap<String, WireMessage>,
}

struct Broadcast {
    session: Arc<Session>,
    client_tx: SocketSender,
    leaves: Vec<SocketSender>,
    coalescing: HashMap<String, Coalescing>,
    warned: WarnOnce,
    max_message_bytes: usize,
}

/// Runs the broadcast scheduler until shutdown.
pub(crate) async fn run_broadcast_scheduler(
    session: Arc<Session>,
    clients: Socket,
    leaves: Vec<Socket>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    let (client_tx, mut client_rx) = clients.split();
    let mut leaf_txs = Vec::new();
    let mut replies: SelectAll<_> = SelectAll::new();
    for leaf in leaves {
        let (tx, rx) = leaf.split();
        leaf_txs.push(tx);
        replies.push(receiver_stream(rx));
    }
    let mut scheduler = Broadcast {
        session,
        client_tx,
        leaves: leaf_txs,
        coalescing: HashMap::new(),
        warned: WarnOnce::default(),
        max_message_bytes,
    };
    loop {
        // Cancel-safe: socket `recv` and `SelectAll::next` lose nothing when dropped.
        tokio::select! {
            () = shutdown.cancelled() => break,
            frames = client_rx.recv() => {
                let Ok(frames) = frames else { break };
                scheduler.request(frames).await;
            }
            frames = replies.next() => {
                let Some(frames) = frames else { break };
                scheduler.reply(frames).await;
            }
        }
    }
}

fn receiver_stream(rx: SocketReceiver) -> impl futures::Stream<Item = Frames> + Unpin {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.ok().map(|frames| (frames, rx))
    }))
}

/// Reads `[[uuid, id], ...]` from request metadata.
fn targets(metadata: &JsonMap) -> Vec<(String, u64)> {
    metadata
        .get("targets")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|pair| {
                    let pair = pair.as_array()?;
                    Some((pair.first()?.as_str()?.to_owned(), pair.get(1)?.as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Broadcast {
    async fn request(&mut self, frames: Frames) {
        let Some(wire) = accept_from_peer(
            frames,
            &self.session,
            self.max_message_bytes,
            &mut self.warned,
            "broadcast",
        ) else {
            return;
        };
        let (header, mut metadata) = match (wire.parse_header(), wire.parse_metadata()) {
            (Ok(header), Ok(metadata)) => (header, metadata),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "dropped an unreadable broadcast request");
                return;
            }
        };
        let Some(client) = wire.idents.first().cloned() else {
            return;
        };
        let original = metadata
            .get("original_msg_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .unwrap_or(&header.msg_id)
            .to_owned();
        metadata.insert("original_msg_id".into(), json!(original));
        let targets = targets(&metadata);
        let coalescing = metadata
            .get("is_coalescing")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if coalescing && !targets.is_empty() {
            self.coalescing.insert(
                original.clone(),
                Coalescing {
                    client: client.clone(),
                    targets: targets.clone(),
                    replies: HashMap::new(),
                },
            );
        }
        let leaf_count = self.leaves.len().max(1) as u64;
        for (uuid, id) in &targets {
            let leaf = usize::try_from(id % leaf_count).unwrap_or(0);
            let leaf_targets: Vec<Value> = targets
                .iter()
                .filter(|(_, other)| other % leaf_count == id % leaf_count)
                .map(|(u, i)| json!([u, i]))
                .collect();
            let mut sub_metadata = metadata.clone();
            sub_metadata.insert("targets".into(), Value::Array(leaf_targets));
            let sub_header = Header {
                msg_id: format!("{original}_{uuid}"),
                ..header.clone()
            };
            let frames = self.session.serialize_parts(
                vec![Bytes::from(uuid.clone()), client.clone()],
                to_json_bytes(&sub_header),
                wire.parent_header.clone(),
                to_json_bytes(&sub_metadata),
                wire.content.clone(),
                wire.buffers.clone(),
            );
            if let Some(leaf) = self.leaves.get(leaf) {
                if let Err(err) = leaf.send(frames).await {
                    tracing::debug!(error = %err, "broadcast leaf socket closed");
                }
            }
        }
    }

    async fn reply(&mut self, frames: Frames) {
        let Ok(mut wire) = WireMessage::split(frames) else {
            return;
        };
        if wire.idents.len() < 2 {
            return;
        }
        let uuid = String::from_utf8_lossy(&wire.idents[0]).into_owned();
        wire.idents.remove(0); // [client_rid]
        let metadata = wire.parse_metadata().unwrap_or_default();
        let coalesced = metadata
            .get("is_coalescing")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let original = metadata
            .get("original_msg_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if coalesced {
            if let Some(pending) = self.coalescing.get_mut(&original) {
                pending.replies.insert(uuid, wire);
                if pending.replies.len() >= pending.targets.len() {
                    if let Some(done) = self.coalescing.remove(&original) {
                        self.send_coalesced(done, metadata).await;
                    }
                }
                return;
            }
        }
        if let Err(err) = self.client_tx.send(wire.into_frames()).await {
            tracing::debug!(error = %err, "client-facing broadcast socket closed");
        }
    }

    /// One message for all targets: the last reply's header, parent and content, the
    /// metadata plus `broadcast_targets`, and every target's buffers in target order.
    async fn send_coalesced(&mut self, mut done: Coalescing, mut metadata: JsonMap) {
        let mut buffers = Vec::new();
        let mut last = None;
        for (uuid, _) in &done.targets {
            if let Some(reply) = done.replies.remove(uuid) {
                buffers.extend(reply.buffers.iter().cloned());
                last = Some(reply);
            }
        }
        let Some(last) = last else { return };
        let pairs: Vec<Value> = done.targets.iter().map(|(u, i)| json!([u, i])).collect();
        metadata.insert("broadcast_targets".into(), Value::Array(pairs));
        let frames = self.session.serialize_parts(
            vec![done.client],
            last.header,
            last.parent_header,
            to_json_bytes(&metadata),
            last.content,
            buffers,
        );
        if let Err(err) = self.client_tx.send(frames).await {
            tracing::debug!(error = %err, "client-facing broadcast socket closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_read_as_pairs() {
        let metadata: JsonMap =
            serde_json::from_value(json!({"targets": [["a", 0], ["b", 3], "junk"]})).unwrap();
        assert_eq!(targets(&metadata), vec![("a".into(), 0), ("b".into(), 3)]);
    }
}
