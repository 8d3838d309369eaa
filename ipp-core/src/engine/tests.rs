//! The engine against the real controller on the in-memory transport, with a scripted
//! client. Time is paused: heartbeats and timeouts advance only when every task is idle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde_json::{json, Value};

use super::{
    Engine, EngineConfig, Executor, Outcome, Outputs, RunningEngine, RustExecutor, TaskContext,
};
use crate::controller::{Controller, ControllerConfig};
use crate::protocol::apply::{read_reply, RustCall, NOOP, PULL, PUSH};
use crate::protocol::{Message, Session, SigningKey, WireMessage};
use crate::serialize::{Bincode, Json, Payload, Serializer};
use crate::transport::{MemoryTransport, Socket, SocketKind, SocketOptions, Transport};

const KEY: &str = "engine-test-key";

fn config() -> ControllerConfig {
    ControllerConfig {
        key: KEY.into(),
        heartbeat_period_ms: 100,
        heartbeat_max_misses: 3,
        ..ControllerConfig::default()
    }
}

/// The test executor, and the sender that opens its `gate` function (which blocks until
/// the test says so, to keep a request running while others queue up).
fn executor() -> (RustExecutor, std::sync::mpsc::Sender<()>) {
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(gate);
    let executor = RustExecutor::new();
    executor
        .register_infallible("gate", move |_: ()| {
            let opened = gate.lock().map(|g| g.recv().is_ok()).unwrap_or(false);
            opened
        })
        .register_infallible("square", |n: i64| n * n)
        .register("checked_sqrt", |x: f64| {
            if x < 0.0 {
                Err(format!("cannot take the square root of {x}"))
            } else {
                Ok(x.sqrt())
            }
        })
        .register_infallible("boom", |_: ()| -> u8 { panic!("kaboom") })
        .register_with_context("chatty", |ctx: &TaskContext, n: u32| {
            ctx.println(format!("out {n}"));
            ctx.eprint("err");
            Ok::<_, std::convert::Infallible>(n + 1)
        })
        .register_inline_infallible("inline_square", |n: i64| n * n)
        .register_inline("inline_checked", |n: i64| {
            if n < 0 {
                Err(format!("negative: {n}"))
            } else {
                Ok(n)
            }
        })
        .register_inline_infallible("inline_boom", |_: ()| -> u8 { panic!("inline kaboom") })
        .register_infallible("slow", |n: u64| {
            // Real work on the blocking pool (no sleep: time is paused in these tests).
            (0..n).fold(0u64, |acc, i| acc.wrapping_add(i))
        });
    (executor, open)
}

/// The controller, one engine and a client's sockets.
struct Cluster {
    transport: MemoryTransport,
    controller: Controller,
    engine: RunningEngine,
    session: Session,
    mux: Socket,
    control: Socket,
    iopub: Socket,
    notifications: Socket,
    gate: std::sync::mpsc::Sender<()>,
}

impl Cluster {
    async fn start() -> Self {
        Self::start_with(EngineConfig::default()).await
    }

    async fn start_with(engine_config: EngineConfig) -> Self {
        let (executor, gate) = executor();
        Self::start_with_executor(engine_config, Arc::new(executor), gate).await
    }

    async fn start_with_executor(
        engine_config: EngineConfig,
        executor: Arc<dyn Executor>,
        gate: std::sync::mpsc::Sender<()>,
    ) -> Self {
        let transport = MemoryTransport::new();
        let controller = Controller::builder(config())
            .with_transport(Arc::new(transport.clone()))
            .start()
            .await
            .unwrap();
        let client = controller.client_info().clone();
        let connect = |kind, port: u16, options| {
            let transport = transport.clone();
            async move {
                transport
                    .connect(kind, &format!("tcp://127.0.0.1:{port}"), options)
                    .await
                    .unwrap()
            }
        };
        let all = || SocketOptions::default().with_subscription(Bytes::new());
        let notifications = connect(SocketKind::Sub, client.notification, all()).await;
        let iopub = connect(SocketKind::Sub, client.iopub, all()).await;
        let mux = connect(SocketKind::Dealer, client.mux, SocketOptions::default()).await;
        let control = connect(SocketKind::Dealer, client.control, SocketOptions::default()).await;
        let engine = Engine::builder(controller.engine_info().clone())
            .with_transport(Arc::new(transport.clone()))
            .with_executor(executor)
            .with_config(engine_config)
            .start()
            .await
            .unwrap();
        let mut cluster = Self {
            transport,
            controller,
            engine,
            session: Session::new(SigningKey::new(KEY.as_bytes())),
            mux,
            control,
            iopub,
            notifications,
            gate,
        };
        let note = recv(&mut cluster.notifications).await;
        assert_eq!(note.header.msg_type, "registration_notification");
        assert_eq!(note.content["uuid"], json!(cluster.engine.uuid()));
        cluster
    }

    /// Sends a Rust call to the engine on MUX; returns its msg_id.
    async fn call(&self, call: &RustCall) -> String {
        let (content, buffers) = call.to_request();
        let mut msg = self.session.message("apply_request", content);
        msg.metadata = json!({"label": "lbl"}).as_object().cloned().unwrap();
        msg.buffers = buffers;
        self.send(&self.mux, msg).await
    }

    async fn send(&self, socket: &Socket, mut msg: Message) -> String {
        msg.idents = vec![Bytes::from(self.engine.uuid().to_owned())];
        let msg_id = msg.header.msg_id.clone();
        socket.send(self.session.serialize(&msg)).await.unwrap();
        msg_id
    }

    async fn control(&mut self, msg_type: &str, content: Value) -> Message {
        let msg = self.session.message(msg_type, content);
        let msg_id = self.send(&self.control, msg).await;
        let reply = recv(&mut self.control).await;
        assert_eq!(reply.parent_msg_id(), Some(msg_id.as_str()));
        reply
    }

    async fn reply(&mut self) -> Message {
        recv(&mut self.mux).await
    }

    /// IOPub messages until (and including) `status idle` for `msg_id`.
    async fn outputs_of(&mut self, msg_id: &str) -> Vec<Message> {
        let mut seen = Vec::new();
        loop {
            let msg = recv(&mut self.iopub).await;
            if msg.parent_msg_id() != Some(msg_id) {
                continue;
            }
            let idle = msg.header.msg_type == "status" && msg.content["execution_state"] == "idle";
            seen.push(msg);
            if idle {
                return seen;
            }
        }
    }
}

async fn recv(socket: &mut Socket) -> Message {
    let frames = tokio::time::timeout(Duration::from_secs(60), socket.recv())
        .await
        .expect("no message within 60 s of paused time")
        .unwrap();
    WireMessage::split(frames).unwrap().parse().unwrap()
}

/// The `status: busy` of a request that keeps running on a blocking-pool thread: it is
/// published once the request has run for a millisecond, and a blocked blocking-pool
/// thread keeps paused time from advancing by itself, so this advances it.
async fn busy_of_running(iopub: &mut Socket) -> Message {
    for _ in 0..1_000 {
        tokio::time::advance(Duration::from_millis(1)).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        if let Some(frames) = iopub.recv().now_or_never() {
            return WireMessage::split(frames.unwrap())
                .unwrap()
                .parse()
                .unwrap();
        }
    }
    panic!("no status: busy within 1 s of paused time");
}

fn call(function: &str, arg: Payload) -> RustCall {
    RustCall::new(function, vec![arg])
}

#[tokio::test(start_paused = true)]
async fn an_engine_registers_and_runs_a_function_with_json_and_bincode() {
    let mut c = Cluster::start().await;
    assert_eq!(c.engine.id(), 0);

    let id = c.call(&call("square", Json.encode(&7i64).unwrap())).await;
    let reply = c.reply().await;
    assert_eq!(reply.idents, vec![Bytes::from(c.engine.uuid().to_owned())]);
    assert_eq!(reply.header.msg_type, "apply_reply");
    assert_eq!(reply.header.session, c.engine.uuid());
    assert_eq!(reply.parent_msg_id(), Some(id.as_str()));
    assert_eq!(reply.content["status"], "ok");
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].format, "json");
    assert_eq!(values[0].decode::<i64>().unwrap(), 49);
    let md = &reply.metadata;
    assert_eq!(md["status"], "ok");
    assert_eq!(md["engine"], json!(c.engine.uuid()));
    assert_eq!(md["dependencies_met"], true);
    assert_eq!(md["is_broadcast"], false);
    assert_eq!(md["is_coalescing"], false);
    assert_eq!(md["original_msg_id"], "");
    assert_eq!(md["label"], "lbl");
    assert!(md["started"].as_str().unwrap().ends_with('Z'));

    c.call(&call("square", Bincode.encode(&-3i64).unwrap()))
        .await;
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].format, "bincode");
    assert_eq!(values[0].decode::<i64>().unwrap(), 9);

    c.engine.shutdown().await;
    c.controller.shutdown().await;
}

fn error_of(reply: &Message) -> (String, String) {
    assert_eq!(reply.content["status"], "error", "{:?}", reply.content);
    assert_eq!(reply.metadata["status"], "error");
    (
        reply.content["ename"].as_str().unwrap().to_owned(),
        reply.content["evalue"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_function_error_becomes_a_remote_error_with_engine_info() {
    let mut c = Cluster::start().await;
    let id = c
        .call(&call("checked_sqrt", Json.encode(&-4.0f64).unwrap()))
        .await;
    let reply = c.reply().await;
    let (ename, evalue) = error_of(&reply);
    assert_eq!(ename, "RustError");
    assert_eq!(evalue, "cannot take the square root of -4");
    let traceback = reply.content["traceback"].as_array().unwrap();
    assert!(traceback
        .iter()
        .any(|l| l.as_str().unwrap().contains("checked_sqrt")));
    let uuid = json!(c.engine.uuid());
    assert_eq!(
        reply.content["engine_info"],
        json!({"engine_uuid": uuid, "engine_id": 0, "method": "apply"})
    );
    assert_eq!(
        reply.metadata["engine_info"],
        json!({"engine_uuid": uuid, "engine_id": 0})
    );
    assert_eq!(reply.metadata["dependencies_met"], true);
    // The error is also published on IOPub, between busy and idle.
    let outputs = c.outputs_of(&id).await;
    let types: Vec<&str> = outputs.iter().map(|m| m.header.msg_type.as_str()).collect();
    assert_eq!(types, ["status", "error", "status"]);
    assert_eq!(outputs[1].idents[0].as_ref(), b"engine.0.error");
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_panic_becomes_a_rust_panic_error_and_the_engine_keeps_serving() {
    let mut c = Cluster::start().await;
    c.call(&RustCall::new("boom", vec![])).await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "RustPanic");
    assert_eq!(evalue, "kaboom");

    c.call(&call("square", Bincode.encode(&5i64).unwrap()))
        .await;
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].decode::<i64>().unwrap(), 25);
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn inline_functions_answer_results_errors_and_panics_like_pooled_ones() {
    let mut c = Cluster::start().await;
    c.call(&call("inline_square", Bincode.encode(&7i64).unwrap()))
        .await;
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].decode::<i64>().unwrap(), 49);

    c.call(&call("inline_checked", Json.encode(&-3i64).unwrap()))
        .await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "RustError");
    assert_eq!(evalue, "negative: -3");

    c.call(&RustCall::new("inline_boom", vec![])).await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "RustPanic");
    assert_eq!(evalue, "inline kaboom");

    // The engine keeps serving, pooled and inline alike.
    c.call(&call("square", Bincode.encode(&5i64).unwrap()))
        .await;
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].decode::<i64>().unwrap(), 25);
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unknown_functions_bad_arguments_and_pickled_applies_are_refused() {
    let mut c = Cluster::start().await;
    c.call(&call("nope", Json.encode(&1).unwrap())).await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "NameError");
    assert!(
        evalue.contains("'nope'") && evalue.contains("square, "),
        "{evalue}"
    );

    c.call(&call("square", Json.encode(&"seven").unwrap()))
        .await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "TypeError");
    assert!(evalue.contains("i64"), "{evalue}");

    // What ipyparallel sends: content {} and pickled buffers.
    let mut pickled = c.session.message("apply_request", json!({}));
    pickled.buffers = vec![Bytes::from_static(b"\x80\x04pickle")];
    c.send(&c.mux, pickled).await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "NotImplementedError");
    assert!(
        evalue.contains("registered Rust functions, not Python"),
        "{evalue}"
    );

    let execute = c
        .session
        .message("execute_request", json!({"code": "1+1", "silent": false}));
    c.send(&c.mux, execute).await;
    let reply = c.reply().await;
    assert_eq!(reply.header.msg_type, "execute_reply");
    let (ename, evalue) = error_of(&reply);
    assert_eq!(ename, "NotImplementedError");
    assert!(
        evalue.contains("execute of code is not supported"),
        "{evalue}"
    );
    assert_eq!(reply.content["engine_info"]["method"], "execute");
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn push_pull_noop_and_clear_use_the_namespace() {
    let mut c = Cluster::start().await;
    let mut push = RustCall::new(
        PUSH,
        vec![
            Bincode.encode(&vec![1u32, 2]).unwrap(),
            Payload::raw(Bytes::from_static(b"raw!")),
        ],
    );
    push.names = vec!["a".into(), "b".into()];
    c.call(&push).await;
    assert_eq!(c.reply().await.content["status"], "ok");

    let mut pull = RustCall::new(PULL, vec![]);
    pull.names = vec!["b".into(), "a".into()];
    c.call(&pull).await;
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0], Payload::raw(Bytes::from_static(b"raw!")));
    assert_eq!(values[1].decode::<Vec<u32>>().unwrap(), [1, 2]);

    c.call(&RustCall::new(NOOP, vec![])).await;
    assert_eq!(c.reply().await.content["status"], "ok");

    let reply = c.control("clear_request", json!({})).await;
    assert_eq!(reply.header.msg_type, "clear_reply");
    assert_eq!(reply.content["status"], "ok");
    c.call(&pull).await;
    let (ename, evalue) = error_of(&c.reply().await);
    assert_eq!(ename, "NameError");
    assert_eq!(evalue, "name 'b' is not defined");
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn status_and_stream_output_frame_each_request_on_iopub() {
    let mut c = Cluster::start().await;
    let id = c.call(&call("chatty", Json.encode(&5u32).unwrap())).await;
    let outputs = c.outputs_of(&id).await;
    let summary: Vec<(String, String)> = outputs
        .iter()
        .map(|m| {
            let topic = String::from_utf8(m.idents[0].to_vec()).unwrap();
            let detail = match m.header.msg_type.as_str() {
                "status" => m.content["execution_state"].as_str().unwrap().to_owned(),
                _ => m.content["text"].as_str().unwrap().to_owned(),
            };
            (topic, detail)
        })
        .collect();
    let expected = [
        ("engine.0.status", "busy"),
        ("engine.0.stdout", "out 5\n"),
        ("engine.0.stderr", "err"),
        ("engine.0.status", "idle"),
    ]
    .map(|(t, d)| (t.to_owned(), d.to_owned()));
    assert_eq!(summary, expected);
    assert!(outputs.iter().all(|m| m.header.session == c.engine.uuid()));
    assert_eq!(outputs[0].metadata["engine"], json!(c.engine.uuid()));
    let reply = c.reply().await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].decode::<u32>().unwrap(), 6);
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn aborted_requests_are_answered_aborted_when_their_turn_comes() {
    let mut c = Cluster::start().await;
    let running = c.call(&RustCall::new("gate", vec![])).await;
    let busy = busy_of_running(&mut c.iopub).await; // the gate is running now
    assert_eq!(busy.parent_msg_id(), Some(running.as_str()));
    let doomed = c.call(&call("square", Json.encode(&2i64).unwrap())).await;
    let kept = c.call(&call("square", Json.encode(&3i64).unwrap())).await;

    let reply = c
        .control("abort_request", json!({"msg_ids": [doomed]}))
        .await;
    assert_eq!(reply.header.msg_type, "abort_reply");
    assert_eq!(reply.content["status"], "ok");
    assert_eq!(reply.metadata["engine"], json!(c.engine.uuid()));

    // Control is answered while the gate still runs; the running request is not interrupted.
    c.gate.send(()).unwrap();
    let first = c.reply().await;
    assert_eq!(first.parent_msg_id(), Some(running.as_str()));
    assert_eq!(first.content["status"], "ok");
    let second = c.reply().await;
    assert_eq!(second.parent_msg_id(), Some(doomed.as_str()));
    assert_eq!(second.content, json!({"status": "aborted"}));
    assert_eq!(second.metadata["status"], "aborted");
    let third = c.reply().await;
    assert_eq!(third.parent_msg_id(), Some(kept.as_str()));
    assert_eq!(third.content["status"], "ok");
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn signal_and_kernel_info_are_answered_on_control() {
    let mut c = Cluster::start().await;
    let reply = c.control("signal_request", json!({"sig": 2})).await;
    assert_eq!(reply.header.msg_type, "signal_reply");
    assert_eq!(reply.content["status"], "ok");
    let reply = c.control("signal_request", json!({"sig": "SIGINT"})).await;
    assert_eq!(reply.content["status"], "ok");
    let reply = c.control("signal_request", json!({"sig": "SIGNOPE"})).await;
    assert_eq!(reply.content["status"], "error");
    assert_eq!(reply.content["ename"], "ValueError");
    let reply = c.control("kernel_info_request", json!({})).await;
    assert_eq!(reply.header.msg_type, "kernel_info_reply");
    assert_eq!(reply.content["language_info"]["name"], "rust");
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_request_replies_on_control_and_iopub_then_unregisters() {
    let mut c = Cluster::start().await;
    let reply = c
        .control("shutdown_request", json!({"restart": false}))
        .await;
    assert_eq!(reply.header.msg_type, "shutdown_reply");
    assert_eq!(reply.content, json!({"status": "ok", "restart": false}));
    let published = loop {
        let msg = recv(&mut c.iopub).await;
        if msg.header.msg_type == "shutdown_reply" {
            break msg;
        }
    };
    assert_eq!(published.idents[0].as_ref(), b"engine.0.shutdown");
    let note = recv(&mut c.notifications).await;
    assert_eq!(note.header.msg_type, "unregistration_notification");
    c.engine.stopped().await;
    let uuid = c.engine.uuid().to_owned();
    c.engine.wait().await.unwrap();
    assert_eq!(note.content["uuid"], json!(uuid));
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_echoed_while_a_long_request_runs() {
    let mut c = Cluster::start().await;
    let running = c.call(&RustCall::new("gate", vec![])).await;
    busy_of_running(&mut c.iopub).await; // the gate blocks a blocking-pool thread now
                                         // Well past the controller's allowed misses (3 × 100 ms): the echo task keeps answering.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(100)).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    let client = c.controller.client_info().clone();
    let mut hub = c
        .transport
        .connect(
            SocketKind::Dealer,
            &format!("tcp://127.0.0.1:{}", client.registration),
            SocketOptions::default(),
        )
        .await
        .unwrap();
    let query = c.session.message("connection_request", json!({}));
    hub.send(c.session.serialize(&query)).await.unwrap();
    let engines = recv(&mut hub).await;
    assert_eq!(engines.content["engines"], json!({"0": c.engine.uuid()}));
    c.gate.send(()).unwrap();
    assert_eq!(c.reply().await.parent_msg_id(), Some(running.as_str()));
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_engine_re_registers_with_a_restarted_controller() {
    let transport = MemoryTransport::new();
    let ports: Vec<u16> = (41_000..41_020).collect();
    let config = ControllerConfig {
        ports: ports.clone(),
        ..config()
    };
    let first = Controller::builder(config.clone())
        .with_transport(Arc::new(transport.clone()))
        .start()
        .await
        .unwrap();
    let (executor, _gate) = executor();
    let engine = Engine::builder(first.engine_info().clone())
        .with_transport(Arc::new(transport.clone()))
        .with_executor(Arc::new(executor))
        .start()
        .await
        .unwrap();
    let uuid = engine.uuid().to_owned();
    let notifications_of = |controller: &Controller| {
        let transport = transport.clone();
        let port = controller.client_info().notification;
        async move {
            transport
                .connect(
                    SocketKind::Sub,
                    &format!("tcp://127.0.0.1:{port}"),
                    SocketOptions::default().with_subscription(Bytes::new()),
                )
                .await
                .unwrap()
        }
    };
    let mut notifications = notifications_of(&first).await;
    let note = recv(&mut notifications).await;
    assert_eq!(note.header.msg_type, "registration_notification");
    // The controller restarts at once: the engine notices because the new heart monitor's
    // pings (its lifetime) start again from zero.
    // Subscribe before the new controller binds (same ports): the engine re-registers as
    // soon as it sees the new monitor's first ping, and that notification must not be missed.
    let mut notifications = notifications_of(&first).await;
    first.shutdown().await;

    let second = Controller::builder(config)
        .with_transport(Arc::new(transport.clone()))
        .start()
        .await
        .unwrap();
    let note = recv(&mut notifications).await;
    assert_eq!(note.header.msg_type, "registration_notification");
    assert_eq!(note.content["uuid"], json!(uuid));
    assert_eq!(engine.id(), 0, "the engine asked for its old id and got it");

    // And it serves requests there.
    let session = Session::new(SigningKey::new(KEY.as_bytes()));
    let mut mux = transport
        .connect(
            SocketKind::Dealer,
            &format!("tcp://127.0.0.1:{}", second.client_info().mux),
            SocketOptions::default(),
        )
        .await
        .unwrap();
    let (content, buffers) = call("square", Json.encode(&9i64).unwrap()).to_request();
    let mut msg = session.message("apply_request", content);
    msg.buffers = buffers;
    msg.idents = vec![Bytes::from(uuid.clone())];
    mux.send(session.serialize(&msg)).await.unwrap();
    let reply = recv(&mut mux).await;
    let values = read_reply(reply.content_map(), &reply.buffers).unwrap();
    assert_eq!(values[0].decode::<i64>().unwrap(), 81);
    engine.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_engine_stops_with_an_error_when_the_controller_never_returns() {
    let transport = MemoryTransport::new();
    let controller = Controller::builder(config())
        .with_transport(Arc::new(transport.clone()))
        .start()
        .await
        .unwrap();
    let (executor, _gate) = executor();
    let engine = Engine::builder(controller.engine_info().clone())
        .with_transport(Arc::new(transport.clone()))
        .with_executor(Arc::new(executor))
        .start()
        .await
        .unwrap();
    controller.shutdown().await;
    let err = engine.wait().await.unwrap_err();
    assert!(matches!(err, crate::Error::Timeout { .. }), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_registration_fails_start() {
    let transport = MemoryTransport::new();
    let controller = Controller::builder(config())
        .with_transport(Arc::new(transport.clone()))
        .start()
        .await
        .unwrap();
    let mut info = controller.engine_info().clone();
    info.registration = 1; // nobody listens there
    let err = Engine::builder(info)
        .with_transport(Arc::new(transport.clone()))
        .with_executor(Arc::new(RustExecutor::new()))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, crate::Error::Timeout { .. }), "{err}");
    controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_over_its_time_limit_is_answered_with_task_time_limit() {
    let mut c = Cluster::start().await;
    let (content, buffers) = RustCall::new("gate", vec![]).to_request();
    let mut msg = c.session.message("apply_request", content);
    msg.metadata = json!({"time_limit": 1.0}).as_object().cloned().unwrap();
    msg.buffers = buffers;
    let limited = c.send(&c.mux, msg).await;
    let busy = busy_of_running(&mut c.iopub).await; // the gate is running now
    assert_eq!(busy.parent_msg_id(), Some(limited.as_str()));
    // A blocked blocking-pool thread keeps paused time from advancing by itself.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_millis(600)).await;
    }
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(limited.as_str()));
    assert_eq!(reply.content["ename"], "TaskTimeLimit");
    assert_eq!(reply.metadata["status"], "error");
    // A Rust function cannot be interrupted: it is let go; the engine serves the next one.
    c.gate.send(()).unwrap();
    let next = c.call(&call("square", Json.encode(&4i64).unwrap())).await;
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(next.as_str()));
    assert_eq!(reply.content["status"], "ok");
    c.controller.shutdown().await;
}

/// An executor whose requests run until interrupted (as Python code stopped by SIGINT).
#[derive(Debug, Default)]
struct Interruptible {
    interrupt: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Executor for Interruptible {
    async fn apply(&self, _request: &Message, _outputs: &Outputs) -> Outcome {
        self.interrupt.notified().await;
        Outcome::error("KeyboardInterrupt", "interrupted")
    }

    async fn execute(&self, request: &Message, outputs: &Outputs) -> Outcome {
        self.apply(request, outputs).await
    }

    fn clear(&self) {}

    fn signal(&self, _signal: i32) -> crate::Result<()> {
        self.interrupt.notify_one();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn aborting_the_running_request_interrupts_it_and_answers_aborted() {
    let (gate, _unused) = std::sync::mpsc::channel();
    let mut c = Cluster::start_with_executor(
        EngineConfig::default(),
        Arc::new(Interruptible::default()),
        gate,
    )
    .await;
    let running = c.call(&RustCall::new("anything", vec![])).await;
    let busy = recv(&mut c.iopub).await;
    assert_eq!(busy.parent_msg_id(), Some(running.as_str()));
    let queued = c.call(&RustCall::new("anything", vec![])).await;

    let reply = c
        .control("abort_request", json!({"msg_ids": [running, queued]}))
        .await;
    assert_eq!(reply.content["status"], "ok");
    assert_eq!(reply.content["interrupting"], json!([running]));

    let first = c.reply().await;
    assert_eq!(first.parent_msg_id(), Some(running.as_str()));
    assert_eq!(first.content, json!({"status": "aborted"}));
    assert_eq!(first.metadata["status"], "aborted");
    let second = c.reply().await;
    assert_eq!(second.parent_msg_id(), Some(queued.as_str()));
    assert_eq!(second.content, json!({"status": "aborted"}));
    c.controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn aborting_a_running_rust_function_lets_it_finish_and_answers_its_result() {
    let mut c = Cluster::start().await;
    let running = c.call(&RustCall::new("gate", vec![])).await;
    let busy = busy_of_running(&mut c.iopub).await;
    assert_eq!(busy.parent_msg_id(), Some(running.as_str()));
    let reply = c
        .control("abort_request", json!({"msg_ids": [running]}))
        .await;
    assert_eq!(reply.content["interrupting"], json!([running]));
    // The Rust function ignores the interrupt; past the grace period it still runs.
    for _ in 0..3 {
        tokio::time::advance(Duration::from_millis(600)).await;
    }
    c.gate.send(()).unwrap();
    let done = c.reply().await;
    assert_eq!(done.parent_msg_id(), Some(running.as_str()));
    assert_eq!(done.content["status"], "ok");
    c.controller.shutdown().await;
}
