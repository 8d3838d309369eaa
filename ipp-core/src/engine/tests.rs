//! The engine against the real controller on the in-memory transport, with a scripted
//! client. Time is paused: heartbeats and timeouts advance only when every task is idle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Engine, EngineConfig, RunningEngine, RustExecutor, TaskContext};
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

fn executor() -> RustExecutor {
    let executor = RustExecutor::new();
    executor
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
        .register_infallible("slow", |n: u64| {
            // Real work on the blocking pool (no sleep: time is paused in these tests).
            (0..n).fold(0u64, |acc, i| acc.wrapping_add(i))
        });
    executor
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
}

impl Cluster {
    async fn start() -> Self {
        Self::start_with(EngineConfig::default()).await
    }

    async fn start_with(engine_config: EngineConfig) -> Self {
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
            .with_executor(Arc::new(executor()))
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
