//! The client against the real controller and real Rust engines on the in-memory transport,
//! with paused time (no sleeps, no timed assertions); engine death with a scripted engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::controller::{Controller, ControllerConfig};
use crate::engine::{Engine, RunningEngine, RustExecutor};
use crate::serialize::Json;
use crate::transport::{MemoryTransport, SocketKind, SocketOptions, Transport};

pub(super) const KEY: &str = "client-test-key";
pub(super) const LONG: Duration = Duration::from_secs(600);

fn controller_config() -> ControllerConfig {
    ControllerConfig {
        key: KEY.into(),
        heartbeat_period_ms: 100,
        heartbeat_max_misses: 3,
        ..ControllerConfig::default()
    }
}

fn executor() -> Arc<RustExecutor> {
    let executor = RustExecutor::new();
    executor
        .register_infallible("square", |x: i64| x * x)
        .register("fail_on_odd", |x: i64| {
            if x % 2 == 1 {
                Err(format!("odd: {x}"))
            } else {
                Ok(x)
            }
        })
        .register_with_context("shout", |ctx, text: String| {
            ctx.println(&text);
            Ok::<_, std::convert::Infallible>(text.to_uppercase())
        });
    Arc::new(executor)
}

pub(super) struct Cluster {
    pub(super) transport: Arc<dyn Transport>,
    pub(super) controller: Controller,
    pub(super) engines: Vec<RunningEngine>,
}

impl Cluster {
    pub(super) async fn start(n: usize) -> Self {
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
        let controller = Controller::builder(controller_config())
            .with_transport(Arc::clone(&transport))
            .start()
            .await
            .unwrap();
        let mut cluster = Self {
            transport,
            controller,
            engines: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_engine().await;
        }
        cluster
    }

    async fn add_engine(&mut self) {
        let engine = Engine::builder(self.controller.engine_info().clone())
            .with_transport(Arc::clone(&self.transport))
            .with_executor(executor())
            .start()
            .await
            .unwrap();
        self.engines.push(engine);
    }

    pub(super) async fn client(&self) -> Client {
        let client = Client::from_controller(&self.controller, Arc::clone(&self.transport))
            .await
            .unwrap();
        client
            .wait_for_engines(self.engines.len(), LONG)
            .await
            .unwrap();
        client
    }

    pub(super) async fn stop(self) {
        for engine in self.engines {
            engine.shutdown().await;
        }
        self.controller.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn direct_load_balanced_and_broadcast_applies_round_trip() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    assert_eq!(client.ids(), vec![0, 1]);

    let direct = client.view_all();
    let result = direct.apply::<_, i64>("square", &7i64).await.unwrap();
    assert_eq!(result.msg_ids().len(), 2);
    assert_eq!(result.get(LONG).await.unwrap(), vec![49, 49]);
    let dict = result.get_dict(LONG).await.unwrap();
    assert_eq!(dict.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(result.successful(), Some(true));
    let meta = result.metadata();
    assert_eq!(meta[0].engine_id, Some(0));
    assert_eq!(meta[0].status.as_deref(), Some("ok"));
    assert!(meta[0].started.is_some() && meta[0].completed.is_some());

    let lb = client.load_balanced_view();
    assert_eq!(
        lb.apply::<_, i64>("square", &9i64)
            .await
            .unwrap()
            .await
            .unwrap(),
        81
    );
    let json: i64 = lb
        .apply_with(&Json, "square", &3i64)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(json, 9);
    let unit: () = lb.apply("ipp.noop", &()).await.unwrap().await.unwrap();
    assert_eq!(unit, ());

    for coalescing in [false, true] {
        let view = client.broadcast_view(coalescing);
        let result = view.apply::<_, i64>("square", &5i64).await.unwrap();
        assert_eq!(
            result.get(LONG).await.unwrap(),
            vec![25, 25],
            "coalescing {coalescing}"
        );
        let dict = result.get_dict(LONG).await.unwrap();
        assert_eq!(dict.len(), 2, "coalescing {coalescing}");
    }
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn maps_are_chunked_ordered_and_streamed() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let items: Vec<i64> = (0..100).collect();
    let expected: Vec<i64> = items.iter().map(|x| x * x).collect();

    let lb = client.load_balanced_view();
    for chunksize in [1, 7, 100] {
        let options = MapOptions::default().with_chunksize(chunksize);
        let result = lb.map::<_, i64>("square", &items, options).await.unwrap();
        assert_eq!(result.msg_ids().len(), items.len().div_ceil(chunksize));
        assert_eq!(result.await.unwrap(), expected);
    }
    let unordered = lb
        .map::<_, i64>("square", &items, MapOptions::default().with_ordered(false))
        .await
        .unwrap();
    let mut streamed: Vec<i64> = unordered
        .into_stream()
        .map(|item| item.unwrap())
        .collect()
        .await;
    streamed.sort_unstable();
    assert_eq!(streamed, expected);

    let direct = client.view_all();
    let result = direct
        .map::<_, i64>("square", &items, MapOptions::default())
        .await
        .unwrap();
    assert_eq!(result.msg_ids().len(), 2);
    let mut stream = result.into_stream();
    let mut ordered = Vec::new();
    while let Some(item) = stream.next().await {
        ordered.push(item.unwrap());
    }
    assert_eq!(ordered, expected);
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn push_pull_scatter_and_gather_use_the_engine_namespace() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let view = client.view_all();
    view.push(&[("a", 1i64), ("b", 2i64)])
        .await
        .unwrap()
        .await
        .unwrap();
    let pulled: Vec<Vec<i64>> = view.pull(&["a", "b"]).await.unwrap().await.unwrap();
    assert_eq!(pulled, vec![vec![1, 2], vec![1, 2]]);

    let items: Vec<u32> = (0..11).collect();
    view.scatter("xs", &items).await.unwrap().await.unwrap();
    let one: Vec<Vec<Vec<u32>>> = client
        .direct_view(&[1])
        .pull(&["xs"])
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(one, vec![vec![vec![6, 7, 8, 9, 10]]]);
    let gathered: Vec<u32> = view.gather("xs").await.unwrap().await.unwrap();
    assert_eq!(gathered, items);

    let missing = view
        .pull::<i64>(&["nope"])
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ClientError::Composite(ref e) if e.len() == 2),
        "{missing}"
    );
    assert!(missing.is_remote("NameError"));
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_finished_result_its_user_dropped_is_freed_not_kept_for_late_output() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let view = client.view_all();
    let big = vec![7u8; 1 << 20];
    view.push(&[("big", big.clone())])
        .await
        .unwrap()
        .await
        .unwrap();
    let result = view.pull::<Vec<u8>>(&["big"]).await.unwrap();
    let shared = result.shared_weak();
    let pulled = result.await.unwrap();
    assert_eq!(pulled, vec![vec![big]]);
    assert!(
        shared.upgrade().is_none(),
        "the client still holds the reply of a result nobody holds"
    );
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn remote_failures_are_remote_and_composite_errors() {
    let cluster = Cluster::start(2).await;
    let client = cluster.client().await;
    let lb = client.load_balanced_view();
    let error = lb
        .apply::<_, i64>("fail_on_odd", &3i64)
        .await
        .unwrap()
        .await
        .unwrap_err();
    let ClientError::Remote(remote) = &error else {
        panic!("expected a remote error, got {error}");
    };
    assert_eq!(remote.ename, crate::engine::RUST_ERROR);
    assert!(remote.evalue.contains("odd: 3"), "{remote:?}");

    let error = client
        .view_all()
        .apply::<_, i64>("fail_on_odd", &1i64)
        .await
        .unwrap()
        .await
        .unwrap_err();
    let ClientError::Composite(errors) = &error else {
        panic!("expected a composite error, got {error}");
    };
    let engines: Vec<Option<u32>> = errors.iter().map(|(id, _)| *id).collect();
    assert_eq!(engines, vec![Some(0), Some(1)]);

    let result = lb
        .map::<_, i64>("square", &[1i64], MapOptions::default())
        .await
        .unwrap();
    assert!(result.wait(LONG).await);
    let error = lb
        .apply::<_, i64>("no_such_function", &1i64)
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(error.is_remote("NameError"), "{error}");
    let timeout = client
        .load_balanced_view()
        .with_targets(&[0])
        .with_after(&["never-submitted".to_owned()])
        .apply::<_, i64>("square", &1i64)
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(timeout.is_remote("InvalidDependency"), "{timeout}");
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hub_queries_answer() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let lb = client.load_balanced_view();
    let result = lb.apply::<_, i64>("square", &4i64).await.unwrap();
    let msg_id = result.msg_ids().remove(0);
    assert_eq!(result.await.unwrap(), 16);
    let shout = client
        .direct_view(&[0])
        .apply::<_, String>("shout", &"hi")
        .await
        .unwrap();
    assert_eq!(shout.get(LONG).await.unwrap(), vec!["HI".to_owned()]);

    let status = client.queue_status(None, false).await.unwrap();
    assert_eq!(status.engines[&0].completed, QueueEntry::Count(2));
    assert_eq!(status.unassigned, QueueEntry::Count(0));
    let verbose = client.queue_status(Some(&[0]), true).await.unwrap();
    assert!(
        matches!(verbose.engines[&0].completed, QueueEntry::Ids(ref ids) if ids.contains(&msg_id))
    );

    let history = client.hub_history().await.unwrap();
    assert!(history.contains(&msg_id));
    let records = client
        .db_query(json!({"msg_id": msg_id}), Some(&["msg_id", "engine_uuid"]))
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["engine_uuid"], json!(cluster.engines[0].uuid()));
    let done = client
        .result_status(std::slice::from_ref(&msg_id))
        .await
        .unwrap();
    assert_eq!(done.completed, vec![msg_id.clone()]);
    assert_eq!(
        client.get_result::<i64>(&msg_id, LONG).await.unwrap(),
        vec![16]
    );

    let resubmitted = client
        .resubmit(std::slice::from_ref(&msg_id))
        .await
        .unwrap();
    let new_id = resubmitted[&msg_id].clone();
    assert_eq!(
        client.get_result::<i64>(&new_id, LONG).await.unwrap(),
        vec![16]
    );
    client
        .purge(Purge::MsgIds(std::slice::from_ref(&msg_id)), &[])
        .await
        .unwrap();
    assert!(!client.hub_history().await.unwrap().contains(&msg_id));
    client.purge(Purge::All, &[]).await.unwrap();
    let unknown = client
        .result_status(&["nope".to_owned()])
        .await
        .unwrap_err();
    assert!(unknown.is_remote("KeyError"), "{unknown}");
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_engines_and_the_hub_and_closes_the_client() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client().await;
    let engines = std::mem::take(&mut cluster.engines);
    client.shutdown(None, true).await.unwrap();
    for engine in engines {
        engine.stopped().await;
    }
    cluster.controller.stopped().await;
    let error = client
        .load_balanced_view()
        .apply::<_, i64>("square", &1i64)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Closed | ClientError::ControllerShutdown),
        "{error}"
    );
    cluster.controller.shutdown().await;
}

/// A registered engine that takes requests and never answers: it dies when told to.
pub(super) struct SilentEngine {
    pub(super) mux: crate::transport::Socket,
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
}

pub(super) async fn silent_engine(cluster: &Cluster, uuid: &str) -> SilentEngine {
    let info = cluster.controller.engine_info().clone();
    let session = crate::protocol::Session::with_id(
        crate::protocol::SigningKey::new(KEY.as_bytes()),
        uuid.to_owned(),
    );
    let connect = |kind, port: u16, options| {
        let transport = Arc::clone(&cluster.transport);
        async move {
            transport
                .connect(kind, &format!("tcp://127.0.0.1:{port}"), options)
                .await
                .unwrap()
        }
    };
    let identity = SocketOptions::default().with_identity(uuid.to_owned());
    let mut registration = connect(SocketKind::Dealer, info.registration, identity.clone()).await;
    let request = session.message("registration_request", json!({"uuid": uuid}));
    registration
        .send(session.serialize(&request))
        .await
        .unwrap();
    registration.recv().await.unwrap();
    let mux = connect(SocketKind::Router, info.mux, identity.clone()).await;
    let mut ping = connect(
        SocketKind::Sub,
        info.hb_ping,
        SocketOptions::default().with_subscription(Bytes::new()),
    )
    .await;
    let pong = connect(SocketKind::Dealer, info.hb_pong, identity).await;
    let heartbeat = tokio::spawn(async move {
        while let Ok(frames) = ping.recv().await {
            if pong.send(frames).await.is_err() {
                break;
            }
        }
    });
    SilentEngine { mux, heartbeat }
}

#[tokio::test(start_paused = true)]
async fn requests_on_a_dead_engine_fail_with_engine_error() {
    let cluster = Cluster::start(0).await;
    let mut engine = silent_engine(&cluster, "silent-engine").await;
    let client = Client::from_controller(&cluster.controller, Arc::clone(&cluster.transport))
        .await
        .unwrap();
    let ids = client.wait_for_engines(1, LONG).await.unwrap();
    let direct = client
        .direct_view(&ids)
        .apply::<_, i64>("square", &2i64)
        .await
        .unwrap();
    let broadcast = client
        .broadcast_view(true)
        .apply::<_, i64>("square", &2i64)
        .await
        .unwrap();
    engine.mux.recv().await.unwrap(); // it took the request, then dies
    engine.heartbeat.abort();

    let error = direct.await.unwrap_err();
    let ClientError::Remote(remote) = &error else {
        panic!("expected EngineError, got {error}");
    };
    assert_eq!(remote.ename, "EngineError");
    let msg_id = &remote.evalue;
    assert!(
        msg_id.starts_with(&format!("Engine {} died while running task '", ids[0])),
        "{msg_id}"
    );
    assert!(broadcast.await.unwrap_err().is_remote("EngineError"));
    assert!(client.ids().is_empty());
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_controller_fails_outstanding_requests_and_a_new_one_is_found_again() {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let ports: Vec<u16> = (41_000..41_020).collect();
    let config = ControllerConfig {
        ports: ports.clone(),
        ..controller_config()
    };
    let controller = Controller::builder(config.clone())
        .with_transport(Arc::clone(&transport))
        .start()
        .await
        .unwrap();
    let client_config =
        ClientConfig::default().with_liveness(Some(Duration::from_secs(1)), Duration::from_secs(3));
    let client = Client::connect_with(
        controller.client_info().clone(),
        Arc::clone(&transport),
        client_config,
    )
    .await
    .unwrap();
    // No engine: the task waits in the scheduler, then the controller goes away.
    let pending = client
        .load_balanced_view()
        .apply::<_, i64>("square", &3i64)
        .await
        .unwrap();
    controller.shutdown().await;
    let error = pending.await.unwrap_err();
    assert!(
        matches!(error, ClientError::ControllerLost { .. }),
        "{error}"
    );
    assert_eq!(client.connection_state(), ConnectionState::Unreachable);
    let refused = client
        .load_balanced_view()
        .apply::<_, i64>("square", &3i64)
        .await
        .unwrap();
    assert!(matches!(
        refused.await.unwrap_err(),
        ClientError::ControllerUnreachable { .. }
    ));

    let controller = Controller::builder(config)
        .with_transport(Arc::clone(&transport))
        .start()
        .await
        .unwrap();
    let engine = Engine::builder(controller.engine_info().clone())
        .with_transport(Arc::clone(&transport))
        .with_executor(executor())
        .start()
        .await
        .unwrap();
    client.wait_for_engines(1, LONG).await.unwrap();
    client.wait_connected(LONG).await.unwrap();
    let value = client
        .load_balanced_view()
        .apply::<_, i64>("square", &3i64)
        .await
        .unwrap();
    assert_eq!(value.await.unwrap(), 9);
    client.close().await;
    engine.shutdown().await;
    controller.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn request_timeout_fails_unanswered_requests() {
    let cluster = Cluster::start(0).await;
    let client = Client::connect_with(
        cluster.controller.client_info().clone(),
        Arc::clone(&cluster.transport),
        ClientConfig::default().with_request_timeout(Some(Duration::from_secs(5))),
    )
    .await
    .unwrap();
    let result = client
        .load_balanced_view()
        .apply::<_, i64>("square", &3i64)
        .await
        .unwrap();
    let error = result.await.unwrap_err();
    assert!(
        matches!(error, ClientError::RequestTimeout { .. }),
        "{error}"
    );
    client.close().await;
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn closing_the_client_fails_outstanding_results() {
    let cluster = Cluster::start(0).await;
    let client = cluster.client().await;
    let result = client
        .load_balanced_view()
        .apply::<_, i64>("square", &3i64)
        .await
        .unwrap();
    assert!(!result.ready());
    client.close().await;
    assert!(matches!(result.await.unwrap_err(), ClientError::Closed));
    assert!(matches!(
        client
            .view_all()
            .apply::<_, i64>("square", &1i64)
            .await
            .unwrap_err(),
        ClientError::NoEngines(_)
    ));
    cluster.stop().await;
}

#[tokio::test(start_paused = true)]
async fn connecting_to_nobody_times_out() {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let controller = Controller::builder(controller_config())
        .with_transport(Arc::new(MemoryTransport::new()))
        .start()
        .await
        .unwrap();
    let error = Client::connect(controller.client_info().clone(), transport)
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    controller.shutdown().await;
}
