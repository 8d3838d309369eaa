//! Raw requests (see `raw.rs`) against the real controller and Rust engines on the
//! in-memory transport, with paused time; engine death with a scripted engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use super::tests::{silent_engine, Cluster, SilentEngine, LONG};
use super::*;
use crate::protocol::apply::{read_reply, RustCall};
use crate::protocol::{to_json_bytes, JsonMap};
use crate::serialize::{Bincode, Serializer};

/// An `apply_request` content and buffers calling a registered Rust function.
fn call<A: serde::Serialize>(function: &str, arg: &A) -> (Bytes, Vec<Bytes>) {
    let call = RustCall::new(function, vec![Bincode.encode(arg).unwrap()]);
    let (content, buffers) = call.to_request();
    (to_json_bytes(&content), buffers)
}

fn apply<A: serde::Serialize>(channel: RawChannel, function: &str, arg: &A) -> RawRequest {
    let (content, buffers) = call(function, arg);
    RawRequest::new(channel, "apply_request", content).with_buffers(buffers)
}

/// The single returned value of an ok `apply_reply`.
fn value<T: serde::de::DeserializeOwned>(reply: &RawReply) -> T {
    let msg = reply.message().unwrap();
    assert_eq!(msg.content_map()["status"], "ok", "{:?}", msg.content);
    let payloads = read_reply(msg.content_map(), &msg.buffers).unwrap();
    payloads[0].decode().unwrap()
}

fn content(reply: &RawReply) -> JsonMap {
    reply.message().unwrap().content_map().clone()
}

#[tokio::test(start_paused = true)]
async fn raw_requests_round_trip_on_every_channel() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let replies = client.raw_replies().clone();
    let engines = client.engines();

    let ids = client
        .send_raw(vec![
            apply(RawChannel::Mux, "square", &3i64).with_targets(Some(vec![1, 0])),
            apply(RawChannel::Task, "square", &4i64),
            apply(RawChannel::Broadcast, "square", &5i64),
            apply(RawChannel::Broadcast, "square", &6i64).with_coalescing(true),
            RawRequest::new(
                RawChannel::Control,
                "abort_request",
                Bytes::from_static(br#"{"msg_ids": ["not-a-request"]}"#),
            )
            .with_targets(Some(vec![0])),
        ])
        .await
        .unwrap();
    assert_eq!(
        ids.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 1, 2, 1, 1]
    );
    // Broadcast sub-ids name each target's uuid.
    for (sub_id, uuid) in ids[2].iter().zip(engines.values()) {
        assert!(sub_id.ends_with(&format!("_{uuid}")), "{sub_id}");
    }
    let all: Vec<String> = ids.iter().flatten().cloned().collect();
    assert!(replies.wait_async(&all, Some(LONG)).await);
    assert!(replies.outstanding().is_empty());
    assert_eq!(replies.done(&all), all);

    // Mux: one reply per target, in targets order, each from its engine.
    for (msg_id, engine) in ids[0].iter().zip([1u32, 0]) {
        let reply = replies.reply(msg_id).unwrap();
        assert!(!reply.is_synthetic());
        assert_eq!(reply.msg_id(), msg_id);
        let msg = reply.message().unwrap();
        assert_eq!(msg.header.msg_type, "apply_reply");
        assert_eq!(msg.parent_msg_id(), Some(msg_id.as_str()));
        assert_eq!(msg.metadata["engine"], json!(engines[&engine]));
        assert_eq!(value::<i64>(&reply), 9);
    }
    assert_eq!(value::<i64>(&replies.reply(&ids[1][0]).unwrap()), 16);
    for sub_id in &ids[2] {
        assert_eq!(value::<i64>(&replies.reply(sub_id).unwrap()), 25);
    }
    let coalesced = replies.reply(&ids[3][0]).unwrap().message().unwrap();
    assert_eq!(coalesced.content_map()["status"], "ok");
    // Every engine's returned frames, concatenated in target order.
    assert_eq!(
        coalesced.metadata["broadcast_targets"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(!coalesced.buffers.is_empty() && coalesced.buffers.len() % 2 == 0);
    let abort = replies.reply(&ids[4][0]).unwrap().message().unwrap();
    assert_eq!(abort.header.msg_type, "abort_reply");
    assert_eq!(abort.content_map()["status"], "ok");

    // Outputs of an engine that ran the request are complete once its idle status came.
    assert!(replies.wait_outputs_async(&all, Some(LONG)).await);
    replies.forget(&all);
    assert!(replies.reply(&ids[1][0]).is_none());
    assert!(!replies.is_tracked(&ids[1][0]));
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn iopub_output_is_kept_per_request_until_idle() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let replies = client.raw_replies().clone();
    let ids = client
        .send_raw(vec![
            apply(RawChannel::Task, "shout", &"hello"),
            apply(RawChannel::Broadcast, "shout", &"all").with_coalescing(true),
        ])
        .await
        .unwrap();
    let all: Vec<String> = ids.iter().flatten().cloned().collect();
    assert!(replies.wait_outputs_async(&all, Some(LONG)).await);
    assert!(replies.wait_async(&all, Some(LONG)).await);
    for (msg_id, text) in all.iter().zip(["hello\n", "all\n"]) {
        let outputs = replies.outputs(msg_id);
        let streams: Vec<JsonMap> = outputs
            .iter()
            .filter(|o| o.msg_type() == "stream")
            .map(|o| serde_json::from_slice(o.content()).unwrap())
            .collect();
        assert_eq!(streams.len(), 1, "{outputs:?}");
        assert_eq!(streams[0]["name"], "stdout");
        assert_eq!(streams[0]["text"], text);
        assert!(outputs.iter().all(|o| o.msg_type() != "status"));
        assert!(replies.outputs_complete(msg_id));
    }
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_engine_ends_its_requests_with_synthetic_engine_errors() {
    let cluster = Cluster::start(0).await;
    let mut engine = silent_engine(&cluster, "silent-raw-engine").await;
    let client = Client::from_controller(&cluster.controller, Arc::clone(&cluster.transport))
        .await
        .unwrap();
    let id = client.wait_for_engines(1, LONG).await.unwrap()[0];
    let replies = client.raw_replies().clone();
    let ids = client
        .send_raw(vec![
            apply(RawChannel::Mux, "square", &2i64).with_targets(Some(vec![id])),
            apply(RawChannel::Broadcast, "square", &2i64).with_coalescing(true),
            apply(RawChannel::Broadcast, "square", &2i64),
            RawRequest::new(
                RawChannel::Control,
                "abort_request",
                Bytes::from_static(br#"{"msg_ids": []}"#),
            ),
        ])
        .await
        .unwrap();
    let shutdown = client
        .send_raw(vec![RawRequest::new(
            RawChannel::Control,
            "shutdown_request",
            Bytes::from_static(br#"{"restart": false}"#),
        )])
        .await
        .unwrap()
        .remove(0);
    engine.mux.recv().await.unwrap(); // it took the request, then dies
    assert!(
        !replies
            .wait_async(&ids[0], Some(Duration::from_millis(50)))
            .await
    );
    engine.heartbeat.abort();

    let all: Vec<String> = ids.iter().flatten().cloned().collect();
    assert!(replies.wait_async(&all, Some(LONG)).await);
    for (msg_id, msg_type) in
        all.iter()
            .zip(["apply_reply", "apply_reply", "apply_reply", "abort_reply"])
    {
        let reply = replies.reply(msg_id).unwrap();
        assert!(reply.is_synthetic(), "{msg_id}");
        assert!(!reply.ran_on_engine());
        let msg = reply.message().unwrap();
        assert_eq!(msg.header.msg_type, msg_type);
        assert_eq!(msg.parent_msg_id(), Some(msg_id.as_str()));
        let content = msg.content_map();
        assert_eq!(content["status"], "error");
        assert_eq!(content["ename"], "EngineError");
        assert_eq!(
            content["evalue"],
            json!(format!("Engine {id} died while running task '{msg_id}'"))
        );
        assert_eq!(content["engine_info"]["engine_id"], json!(id));
        assert_eq!(msg.metadata["engine_id"], json!(id));
        assert_eq!(msg.metadata["engine_uuid"], "silent-raw-engine");
        assert_eq!(msg.metadata["status"], "error");
    }
    // No engine output will come: the outputs count as complete.
    assert!(replies.wait_outputs_async(&all, Some(Duration::ZERO)).await);
    // A shutdown request whose engine unregistered did its job.
    assert!(replies.wait_async(&shutdown, Some(LONG)).await);
    let reply = replies.reply(&shutdown[0]).unwrap();
    assert!(reply.is_synthetic());
    let msg = reply.message().unwrap();
    assert_eq!(msg.header.msg_type, "shutdown_reply");
    assert_eq!(msg.content, json!({"status": "ok", "restart": false}));
    assert_eq!(msg.metadata["status"], "ok");
    assert_eq!(msg.metadata["engine_id"], json!(id));
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn closing_the_client_ends_outstanding_requests_with_connection_errors() {
    let cluster = Cluster::start(0).await;
    let client = cluster.client().await;
    let replies = client.raw_replies().clone();
    let ids = client
        .send_raw(vec![apply(RawChannel::Task, "square", &1i64)])
        .await
        .unwrap();
    assert_eq!(replies.outstanding(), ids[0]);
    assert!(replies
        .wait_any_async(&ids[0], Some(Duration::from_millis(20)))
        .await
        .is_empty());
    // Forgetting an id a waiter waits for releases the waiter.
    let forgotten = client
        .send_raw(vec![apply(RawChannel::Task, "square", &2i64)])
        .await
        .unwrap()
        .remove(0);
    let waiting = {
        let replies = replies.clone();
        let ids = forgotten.clone();
        tokio::spawn(async move { replies.wait_async(&ids, None).await })
    };
    tokio::task::yield_now().await;
    replies.forget(&forgotten);
    assert!(waiting.await.unwrap());
    client.close().await;
    assert_eq!(replies.wait_any_async(&ids[0], None).await, ids[0]);
    let reply = replies.reply(&ids[0][0]).unwrap();
    assert!(reply.is_synthetic());
    let content = content(&reply);
    assert_eq!(content["ename"], "ConnectionError");
    assert!(
        content["evalue"].as_str().unwrap().contains("closed"),
        "{content:?}"
    );
    // Nothing can be sent any more.
    let error = client
        .send_raw(vec![apply(RawChannel::Task, "square", &1i64)])
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Closed), "{error}");
    assert!(replies.outstanding().is_empty());
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_controller_shutdown_ends_requests_with_connection_errors() {
    let cluster = Cluster::start(0).await;
    let client = cluster.client().await;
    let replies = client.raw_replies().clone();
    let ids = client
        .send_raw(vec![apply(RawChannel::Task, "square", &1i64)])
        .await
        .unwrap();
    let reply = client
        .query_raw("shutdown_request", Bytes::new(), Some(LONG))
        .await;
    // The notification may overtake the reply.
    assert!(
        reply.is_ok() || matches!(reply, Err(ClientError::ControllerShutdown)),
        "{reply:?}"
    );
    assert!(replies.wait_async(&ids[0], Some(LONG)).await);
    let content = content(&replies.reply(&ids[0][0]).unwrap());
    assert_eq!(content["ename"], "ConnectionError");
    assert!(
        content["evalue"].as_str().unwrap().contains("shut down"),
        "{content:?}"
    );
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queries_bad_requests_untracked_sends_and_waits_on_unknown_ids() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let replies = client.raw_replies().clone();

    let queue = client
        .query_raw(
            "queue_request",
            Bytes::from_static(br#"{"targets": null, "verbose": false}"#),
            None,
        )
        .await
        .unwrap();
    assert_eq!(queue.header.msg_type, "queue_reply");
    assert_eq!(queue.content_map()["status"], "ok");
    assert!(queue.content_map().contains_key("0"));
    // Error replies are returned, not raised.
    let unknown = client
        .query_raw(
            "result_request",
            Bytes::from_static(br#"{"msg_ids": ["nope"], "status_only": true}"#),
            Some(LONG),
        )
        .await
        .unwrap();
    assert_eq!(unknown.content_map()["status"], "error");
    assert_eq!(unknown.content_map()["ename"], "KeyError");

    let bad = client
        .send_raw(vec![RawRequest::new(
            RawChannel::Task,
            "apply_request",
            Bytes::from_static(b"[1, 2]"),
        )])
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("content"), "{bad}");
    let bad = client
        .send_raw(vec![apply(RawChannel::Task, "square", &1i64)
            .with_metadata(Bytes::from_static(b"{not json"))])
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("metadata"), "{bad}");
    let unknown_engine = client
        .send_raw(vec![
            apply(RawChannel::Mux, "square", &1i64).with_targets(Some(vec![0, 7]))
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(unknown_engine, ClientError::UnknownEngine(7)),
        "{unknown_engine}"
    );
    assert!(replies.outstanding().is_empty());

    // Untracked: sent, but nothing is stored.
    let ids = client
        .send_raw(vec![
            apply(RawChannel::Task, "square", &1i64).with_track(false)
        ])
        .await
        .unwrap();
    assert!(!replies.is_tracked(&ids[0][0]));
    // Unknown ids count as finished.
    assert!(replies.wait_async(&ids[0], Some(Duration::ZERO)).await);
    assert!(replies.wait_async(&[], None).await);
    assert!(replies.wait_any_async(&[], None).await.is_empty());

    client.close().await;
    cluster.stop().await;
}

/// A cluster with one Rust engine and one that never answers (`uuid`), a client that
/// sees both, and the silent engine's id.
async fn with_a_silent_engine(uuid: &str) -> (Cluster, SilentEngine, Client, u32) {
    let cluster = Cluster::start(1).await;
    let silent = silent_engine(&cluster, uuid).await;
    let client = cluster.client().await;
    let ids = client.wait_for_engines(2, LONG).await.unwrap();
    let silent_id = *ids.iter().find(|id| client.engines()[id] == uuid).unwrap();
    (cluster, silent, client, silent_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_waits_from_a_thread() {
    let (cluster, _silent, client, silent_id) = with_a_silent_engine("silent-blocking").await;
    let replies = client.raw_replies().clone();
    let sender = client.clone();
    let (ids, done, any, end, interrupted) = tokio::task::spawn_blocking(move || {
        let requests = (0..300)
            .map(|i| {
                apply(RawChannel::Mux, "square", &(i as i64))
                    .with_targets(Some(vec![u32::from(silent_id == 0)]))
            })
            .collect();
        let ids: Vec<String> = sender
            .send_raw_blocking(requests)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let any = replies.wait_any(&ids, Some(LONG));
        let done = replies.wait(&ids, Some(LONG));
        // A request that never ends: the interrupt check stops the wait.
        let stuck = sender
            .send_raw_blocking(vec![
                apply(RawChannel::Mux, "square", &1i64).with_targets(Some(vec![silent_id]))
            ])
            .unwrap()
            .remove(0);
        let end = replies.wait_interruptible(&stuck, Some(Duration::from_millis(50)), &mut || true);
        let mut calls = 0;
        let interrupted = replies.wait_interruptible(&stuck, None, &mut || {
            calls += 1;
            calls < 2
        });
        (ids, done, any, end, interrupted)
    })
    .await
    .unwrap();
    assert!(done);
    assert!(!any.is_empty());
    assert_eq!(end, WaitEnd::TimedOut);
    assert_eq!(interrupted, WaitEnd::Interrupted);
    let replies = client.raw_replies();
    for (i, msg_id) in ids.iter().enumerate() {
        let reply = replies.reply(msg_id).unwrap();
        assert_eq!(value::<i64>(&reply), (i * i) as i64);
    }
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_hand_out_each_finished_id_once_as_replies_arrive() {
    let (cluster, _silent, client, silent_id) = with_a_silent_engine("silent-completions").await;
    let working_id = u32::from(silent_id == 0);
    let replies = client.raw_replies().clone();
    let sender = client.clone();
    let (first, ids, handed_out, stuck_end, after_all) = tokio::task::spawn_blocking(move || {
        let send = |target: u32, n: usize| -> Vec<String> {
            let requests = (0..n)
                .map(|i| {
                    apply(RawChannel::Mux, "square", &(i as i64)).with_targets(Some(vec![target]))
                })
                .collect();
            sender
                .send_raw_blocking(requests)
                .unwrap()
                .into_iter()
                .flatten()
                .collect()
        };
        // One finished before the stream starts: it comes first.
        let first = send(working_id, 1);
        assert!(replies.wait(&first, Some(LONG)));
        let mut ids = first.clone();
        ids.extend(send(working_id, 200));
        let completions = replies.completions(&ids);
        let mut handed_out = Vec::new();
        while completions.remaining() > 0 {
            let (done, end) = completions.next_interruptible(Some(LONG), &mut || true);
            assert_eq!(end, WaitEnd::Done);
            assert!(!done.is_empty());
            handed_out.extend(done);
        }
        let after_all = completions.next_interruptible(Some(LONG), &mut || true);
        // A request the silent engine never answers: the stream times out, then stops
        // when interrupted.
        let stuck = replies.completions(&send(silent_id, 1));
        let (none, stuck_end) =
            stuck.next_interruptible(Some(Duration::from_millis(50)), &mut || true);
        assert!(none.is_empty());
        let mut calls = 0;
        let (_, interrupted) = stuck.next_interruptible(None, &mut || {
            calls += 1;
            calls < 2
        });
        assert_eq!(interrupted, WaitEnd::Interrupted);
        (first, ids, handed_out, stuck_end, after_all)
    })
    .await
    .unwrap();
    assert_eq!(handed_out[0], first[0]);
    let mut sorted = handed_out.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), handed_out.len(), "an id was handed out twice");
    let mut expected = ids;
    expected.sort();
    assert_eq!(sorted, expected);
    assert_eq!(stuck_end, WaitEnd::TimedOut);
    assert_eq!(after_all, (Vec::new(), WaitEnd::Done));
    client.close().await;
    cluster.stop().await;
}
