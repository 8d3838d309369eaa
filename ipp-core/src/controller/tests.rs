//! The controller against scripted fake engines and clients on the in-memory transport.
//!
//! Time is paused: heartbeats and timeouts advance only when every task is idle, so these
//! tests never sleep and never depend on the machine's speed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Controller, ControllerConfig};
use crate::protocol::{Message, Session, SigningKey};
use crate::store::DictDb;
use crate::transport::{MemoryTransport, Socket, SocketKind, SocketOptions, Transport};

pub(super) const KEY: &str = "test-key";

pub(super) struct Harness {
    pub(super) transport: MemoryTransport,
    pub(super) controller: Controller,
    pub(super) session: Session,
}

impl Harness {
    pub(super) async fn start(config: ControllerConfig) -> Self {
        let transport = MemoryTransport::new();
        let controller = Controller::builder(config)
            .with_transport(Arc::new(transport.clone()))
            .with_store(Arc::new(DictDb::default()))
            .start()
            .await
            .unwrap();
        Self {
            transport,
            controller,
            session: Session::new(SigningKey::new(KEY.as_bytes())),
        }
    }

    pub(super) async fn connect(
        &self,
        kind: SocketKind,
        port: u16,
        options: SocketOptions,
    ) -> Socket {
        let address = format!("tcp://127.0.0.1:{port}");
        self.transport
            .connect(kind, &address, options)
            .await
            .unwrap()
    }

    pub(super) async fn send(&self, socket: &Socket, idents: Vec<Bytes>, mut msg: Message) {
        msg.idents = idents;
        socket.send(self.session.serialize(&msg)).await.unwrap();
    }

    pub(super) async fn recv(&self, socket: &mut Socket) -> Message {
        let frames = tokio::time::timeout(Duration::from_secs(60), socket.recv())
            .await
            .expect("no message within 60 s of paused time")
            .unwrap();
        crate::protocol::WireMessage::split(frames)
            .unwrap()
            .parse()
            .unwrap()
    }
}

pub(super) fn config() -> ControllerConfig {
    ControllerConfig {
        key: KEY.into(),
        heartbeat_period_ms: 100,
        heartbeat_max_misses: 3,
        ..ControllerConfig::default()
    }
}

/// A fake engine: registration, heartbeat echo, and the shell sockets.
pub(super) struct FakeEngine {
    pub(super) uuid: String,
    pub(super) id: u64,
    pub(super) mux: Socket,
    pub(super) task: Socket,
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
}

pub(super) async fn register_engine(h: &Harness, uuid: &str) -> FakeEngine {
    let engine = h.controller.engine_info().clone();
    let identity = SocketOptions::default().with_identity(uuid.to_owned());
    let mut registration = h
        .connect(SocketKind::Dealer, engine.registration, identity.clone())
        .await;
    let request = h
        .session
        .message("registration_request", json!({"uuid": uuid}));
    h.send(&registration, vec![], request).await;
    let reply = h.recv(&mut registration).await;
    assert_eq!(reply.header.msg_type, "registration_reply");
    assert_eq!(reply.content["status"], "ok", "{:?}", reply.content);
    let id = reply.content["id"].as_u64().unwrap();
    let mux = h
        .connect(SocketKind::Router, engine.mux, identity.clone())
        .await;
    let task = h
        .connect(SocketKind::Router, engine.task, identity.clone())
        .await;
    let mut ping = h
        .connect(
            SocketKind::Sub,
            engine.hb_ping,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let pong = h
        .connect(SocketKind::Dealer, engine.hb_pong, identity)
        .await;
    let heartbeat = tokio::spawn(async move {
        while let Ok(frames) = ping.recv().await {
            if pong.send(frames).await.is_err() {
                break;
            }
        }
    });
    FakeEngine {
        uuid: uuid.to_owned(),
        id,
        mux,
        task,
        heartbeat,
    }
}

/// The engine side of one request: receive, then reply with status ok.
pub(super) async fn serve_one(h: &Harness, socket: &mut Socket, uuid: &str) -> Message {
    let request = h.recv(socket).await;
    let mut reply = h
        .session
        .reply(&request.header, "apply_reply", json!({"status": "ok"}));
    reply.metadata = json!({"status": "ok", "engine": uuid, "dependencies_met": true,
        "started": crate::protocol::date::format(&crate::protocol::date::now())})
    .as_object()
    .cloned()
    .unwrap();
    reply.buffers = vec![Bytes::from_static(b"result")];
    h.send(socket, request.idents.clone(), reply).await;
    request
}

pub(super) async fn query(
    h: &Harness,
    socket: &mut Socket,
    msg_type: &str,
    content: Value,
) -> Message {
    let request = h.session.message(msg_type, content);
    let msg_id = request.header.msg_id.clone();
    h.send(socket, vec![], request).await;
    let reply = h.recv(socket).await;
    assert_eq!(reply.parent_msg_id(), Some(msg_id.as_str()));
    reply
}

#[tokio::test(start_paused = true)]
async fn an_engine_registers_after_its_first_heartbeat() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut notifications = h
        .connect(
            SocketKind::Sub,
            client.notification,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let engine = register_engine(&h, "engine-a").await;
    let note = h.recv(&mut notifications).await;
    assert_eq!(note.header.msg_type, "registration_notification");
    assert_eq!(note.content, json!({"id": engine.id, "uuid": "engine-a"}));

    let mut hub = h
        .connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    let reply = query(&h, &mut hub, "connection_request", json!({})).await;
    assert_eq!(reply.content["engines"], json!({"0": "engine-a"}));
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_uuid_is_refused_with_a_key_error() {
    let h = Harness::start(config()).await;
    let _engine = register_engine(&h, "engine-a").await;
    let engine = h.controller.engine_info().clone();
    let mut registration = h
        .connect(
            SocketKind::Dealer,
            engine.registration,
            SocketOptions::default(),
        )
        .await;
    let request = h
        .session
        .message("registration_request", json!({"uuid": "engine-a"}));
    h.send(&registration, vec![], request).await;
    let reply = h.recv(&mut registration).await;
    assert_eq!(reply.content["ename"], "KeyError");
    assert_eq!(reply.content["evalue"], "\"uuid 'engine-a' in use\"");
}

#[tokio::test(start_paused = true)]
async fn direct_and_load_balanced_requests_round_trip_and_are_recorded() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut notifications = h
        .connect(
            SocketKind::Sub,
            client.notification,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let mut engine = register_engine(&h, "engine-a").await;
    h.recv(&mut notifications).await;

    // Direct: the client names the engine; the engine sees mux_out's id and the client's.
    let mut mux = h
        .connect(SocketKind::Dealer, client.mux, SocketOptions::default())
        .await;
    let request = h.session.message("apply_request", json!({}));
    let mux_id = request.header.msg_id.clone();
    h.send(&mux, vec![Bytes::from("engine-a")], request).await;
    let seen = serve_one(&h, &mut engine.mux, &engine.uuid).await;
    assert_eq!(seen.idents[0].as_ref(), b"mux_out");
    let reply = h.recv(&mut mux).await;
    assert_eq!(reply.idents, vec![Bytes::from("engine-a")]);
    assert_eq!(reply.buffers, vec![Bytes::from_static(b"result")]);

    // Load-balanced: no identity from the client; the reply comes back tagged with the engine.
    let mut task = h
        .connect(SocketKind::Dealer, client.task, SocketOptions::default())
        .await;
    let request = h.session.message("apply_request", json!({}));
    let task_id = request.header.msg_id.clone();
    h.send(&task, vec![], request).await;
    serve_one(&h, &mut engine.task, &engine.uuid).await;
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.idents, vec![Bytes::from("engine-a")]);
    assert_eq!(reply.parent_msg_id(), Some(task_id.as_str()));

    let mut hub = h
        .connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    let status = query(
        &h,
        &mut hub,
        "queue_request",
        json!({"targets": null, "verbose": false}),
    )
    .await;
    assert_eq!(
        status.content["0"],
        json!({"queue": 0, "completed": 2, "tasks": 0})
    );
    assert_eq!(status.content["unassigned"], json!(0));

    let history = query(&h, &mut hub, "history_request", json!({})).await;
    assert_eq!(history.content["history"], json!([mux_id, task_id]));

    let results = query(
        &h,
        &mut hub,
        "result_request",
        json!({"msg_ids": [task_id], "status_only": false}),
    )
    .await;
    assert_eq!(results.content["completed"], json!([task_id]));
    assert_eq!(results.content[&task_id]["result_content"]["status"], "ok");
    assert_eq!(results.buffers, vec![Bytes::from_static(b"result")]);

    let found = query(
        &h,
        &mut hub,
        "db_request",
        json!({"query": {"msg_id": {"$in": [mux_id]}}, "keys": ["queue", "result_buffers"]}),
    )
    .await;
    assert_eq!(
        found.content["records"],
        json!([{"msg_id": mux_id, "queue": "mux"}])
    );
    assert_eq!(found.content["result_buffer_lens"], json!([1]));
}

#[tokio::test(start_paused = true)]
async fn a_silent_engine_is_unregistered_and_its_task_fails_with_engine_error() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut notifications = h
        .connect(
            SocketKind::Sub,
            client.notification,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let mut engine = register_engine(&h, "engine-a").await;
    h.recv(&mut notifications).await;

    let mut task = h
        .connect(SocketKind::Dealer, client.task, SocketOptions::default())
        .await;
    let request = h.session.message("apply_request", json!({}));
    let task_id = request.header.msg_id.clone();
    h.send(&task, vec![], request).await;
    h.recv(&mut engine.task).await; // the engine takes the task, then dies
    engine.heartbeat.abort();

    let note = h.recv(&mut notifications).await;
    assert_eq!(note.header.msg_type, "unregistration_notification");
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.parent_msg_id(), Some(task_id.as_str()));
    assert_eq!(reply.content["ename"], "EngineError");
    assert_eq!(reply.metadata["status"], "error");
}

#[tokio::test(start_paused = true)]
async fn scheduler_made_failures_reach_the_client() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut task = h
        .connect(SocketKind::Dealer, client.task, SocketOptions::default())
        .await;

    let mut request = h.session.message("apply_request", json!({}));
    request.metadata = json!({"after": ["never-submitted"]})
        .as_object()
        .cloned()
        .unwrap();
    h.send(&task, vec![], request).await;
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.content["ename"], "InvalidDependency");
    assert!(
        reply.idents.is_empty(),
        "scheduler failures carry no engine frame"
    );

    let bogus = h.session.message("bogus_request", json!({}));
    h.send(&task, vec![], bogus).await;
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.content["ename"], "TypeError");

    let mut request = h.session.message("apply_request", json!({}));
    request.metadata = json!({"timeout": 1.0}).as_object().cloned().unwrap();
    h.send(&task, vec![], request).await; // no engine: it waits, then times out
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.content["ename"], "TaskTimeout");
}

#[tokio::test(start_paused = true)]
async fn bad_queries_get_hub_errors_and_bad_signatures_no_answer() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut hub = h
        .connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    let reply = query(&h, &mut hub, "bogus_request", json!({})).await;
    assert_eq!(reply.header.msg_type, "hub_error");
    assert_eq!(
        reply.content["evalue"],
        "\"Bad Message Type: 'bogus_request'\""
    );

    let forger = Session::new(SigningKey::new(b"wrong key"));
    let forged = forger.serialize(&forger.message("connection_request", json!({})));
    hub.send(forged).await.unwrap();
    hub.send(vec![Bytes::from_static(b"junk")]).await.unwrap();
    // The Hub is still serving, and the forged request got no answer before this one.
    let reply = query(&h, &mut hub, "connection_request", json!({})).await;
    assert_eq!(reply.content["status"], "ok");
}

#[tokio::test(start_paused = true)]
async fn broadcast_fans_out_with_sub_ids_and_coalesces() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let engine_info = h.controller.engine_info().clone();
    let mut a = register_engine(&h, "engine-a").await;
    let identity = SocketOptions::default().with_identity("engine-a");
    let leaf = engine_info.broadcast[usize::try_from(a.id).unwrap() % engine_info.broadcast.len()];
    let mut a_leaf = h.connect(SocketKind::Router, leaf, identity).await;
    let _ = &mut a.mux;

    let mut bcast = h
        .connect(
            SocketKind::Dealer,
            client.broadcast,
            SocketOptions::default(),
        )
        .await;
    let mut request = h.session.message("apply_request", json!({}));
    let original = request.header.msg_id.clone();
    request.metadata =
        json!({"targets": [["engine-a", a.id]], "is_broadcast": true, "is_coalescing": true})
            .as_object()
            .cloned()
            .unwrap();
    h.send(&bcast, vec![], request).await;
    let seen = h.recv(&mut a_leaf).await;
    assert_eq!(seen.header.msg_id, format!("{original}_engine-a"));
    assert_eq!(seen.metadata["original_msg_id"], json!(original));
    let mut reply = h
        .session
        .reply(&seen.header, "apply_reply", json!({"status": "ok"}));
    reply.metadata = json!({"status": "ok", "engine": "engine-a", "is_coalescing": true,
        "original_msg_id": original})
    .as_object()
    .cloned()
    .unwrap();
    reply.buffers = vec![Bytes::from_static(b"r")];
    h.send(&a_leaf, seen.idents.clone(), reply).await;
    let coalesced = h.recv(&mut bcast).await;
    assert_eq!(
        coalesced.metadata["broadcast_targets"],
        json!([["engine-a", a.id]])
    );
    assert_eq!(coalesced.buffers, vec![Bytes::from_static(b"r")]);
}

#[tokio::test(start_paused = true)]
async fn aborting_a_queued_task_answers_it_at_once() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut notifications = h
        .connect(
            SocketKind::Sub,
            client.notification,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let mut engine = register_engine(&h, "engine-a").await;
    h.recv(&mut notifications).await;
    let mut task = h
        .connect(SocketKind::Dealer, client.task, SocketOptions::default())
        .await;
    let busy = h.session.message("apply_request", json!({}));
    h.send(&task, vec![], busy).await;
    h.recv(&mut engine.task).await; // the engine is busy (hwm 1): the next task must queue
    let queued = h.session.message("apply_request", json!({}));
    let queued_id = queued.header.msg_id.clone();
    h.send(&task, vec![], queued).await;

    let control = h
        .connect(SocketKind::Dealer, client.control, SocketOptions::default())
        .await;
    let abort = h
        .session
        .message("abort_request", json!({"msg_ids": [queued_id]}));
    h.send(&control, vec![Bytes::from("engine-a")], abort).await;
    let reply = h.recv(&mut task).await;
    assert_eq!(reply.parent_msg_id(), Some(queued_id.as_str()));
    assert_eq!(reply.content, json!({"status": "aborted"}));
}

#[tokio::test(start_paused = true)]
async fn output_that_overtakes_its_request_is_kept_in_the_request_record() {
    let h = Harness::start(config()).await;
    let client = h.controller.client_info().clone();
    let mut notifications = h
        .connect(
            SocketKind::Sub,
            client.notification,
            SocketOptions::default().with_subscription(Bytes::new()),
        )
        .await;
    let mut engine = register_engine(&h, "engine-a").await;
    h.recv(&mut notifications).await; // registered: its requests are recorded
    let iopub = h
        .connect(
            SocketKind::Pub,
            h.controller.engine_info().iopub,
            SocketOptions::default(),
        )
        .await;
    let mut request = h.session.message("apply_request", json!({}));
    request.metadata.insert("label".into(), json!("early"));
    let msg_id = request.header.msg_id.clone();
    // The engine's stdout for the request reaches the Hub first: the Hub makes a stub.
    let stream = h.session.reply(
        &request.header,
        "stream",
        json!({"name": "stdout", "text": "early output\n"}),
    );
    h.send(&iopub, vec![Bytes::from("engine.0.stream")], stream)
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut mux = h
        .connect(SocketKind::Dealer, client.mux, SocketOptions::default())
        .await;
    h.send(&mux, vec![Bytes::from("engine-a")], request).await;
    serve_one(&h, &mut engine.mux, &engine.uuid).await;
    h.recv(&mut mux).await;

    let mut hub = h
        .connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    let found = query(
        &h,
        &mut hub,
        "db_request",
        json!({"query": {"msg_id": msg_id}, "keys": ["stdout", "label", "queue", "result_content"]}),
    )
    .await;
    let record = &found.content["records"][0];
    assert_eq!(record["stdout"], "early output\n", "{record}");
    assert_eq!(record["label"], "early", "{record}");
    assert_eq!(record["queue"], "mux", "{record}");
    assert_eq!(record["result_content"]["status"], "ok", "{record}");
}
