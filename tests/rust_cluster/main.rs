//! Rust client + Rust engines through our controller over real ZeroMQ on loopback: every
//! client call, remote errors, aborts, engine death mid-task and a controller restart.
//!
//! Timeouts here are hang guards only; nothing asserts on elapsed time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipp::core::client::{Client, ClientConfig, ClientError, MapOptions, Purge, QueueEntry};
use ipp::core::controller::{Controller, ControllerConfig};
use ipp::core::engine::{Engine, RunningEngine, RustExecutor};
use ipp::core::serialize::Json;
use ipp::core::transport::Transport;
use ipp::transport_zmq::ZmqTransport;
use serde_json::json;

const GUARD: Duration = Duration::from_secs(60);

fn zmq() -> Arc<dyn Transport> {
    Arc::new(ZmqTransport::new())
}

fn controller_config(ports: Vec<u16>) -> ControllerConfig {
    let mut config = ControllerConfig::default();
    config.key = "rust-cluster-key".into();
    config.heartbeat_period_ms = 500;
    config.heartbeat_max_misses = 10;
    config.ports = ports;
    config
}

/// The ports `controller` bound, in the order a controller binds them: a controller
/// configured with them restarts where the engines and clients will look for it.
fn ports_of(controller: &Controller) -> Vec<u16> {
    let (c, e) = (controller.client_info(), controller.engine_info());
    let mut ports = vec![
        c.registration,
        c.notification,
        c.mux,
        e.mux,
        c.control,
        e.control,
        c.task,
        e.task,
        e.iopub,
        c.iopub,
        e.hb_ping,
        e.hb_pong,
        c.broadcast,
    ];
    ports.extend(&e.broadcast);
    ports
}

/// Functions every engine offers; `sleep` naps in small steps until `release` is set, so no
/// blocking thread outlives the test.
fn executor(release: Arc<AtomicBool>) -> Arc<RustExecutor> {
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
        .register_infallible("sleep", move |ms: u64| {
            let until = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < until && !release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            ms
        });
    Arc::new(executor)
}

async fn start_engine(controller: &Controller, release: &Arc<AtomicBool>) -> Result<RunningEngine> {
    Ok(Engine::builder(controller.engine_info().clone())
        .with_transport(zmq())
        .with_executor(executor(Arc::clone(release)))
        .start()
        .await?)
}

struct Cluster {
    controller: Controller,
    engines: Vec<RunningEngine>,
    client: Client,
    release: Arc<AtomicBool>,
}

impl Cluster {
    async fn start(engines: usize) -> Result<Self> {
        let controller = Controller::builder(controller_config(Vec::new()))
            .with_transport(zmq())
            .start()
            .await?;
        let release = Arc::new(AtomicBool::new(false));
        let mut running = Vec::new();
        for _ in 0..engines {
            running.push(start_engine(&controller, &release).await?);
        }
        let client = Client::from_controller(&controller, zmq()).await?;
        client.wait_for_engines(engines, GUARD).await?;
        Ok(Self {
            controller,
            engines: running,
            client,
            release,
        })
    }

    async fn stop(self) {
        self.release.store(true, Ordering::Relaxed);
        self.client.close().await;
        for engine in self.engines {
            engine.shutdown().await;
        }
        self.controller.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_call_works_over_zeromq() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = &cluster.client;
    assert_eq!(client.ids(), vec![0, 1, 2]);

    // Direct apply: one request per engine; values, dict and metadata.
    let direct = client.view_all().apply::<_, i64>("square", &7i64).await?;
    assert_eq!(direct.get(GUARD).await?, vec![49, 49, 49]);
    assert_eq!(direct.get_dict(GUARD).await?.len(), 3);
    let meta = direct.metadata();
    assert_eq!(
        meta.iter().map(|m| m.engine_id).collect::<Vec<_>>(),
        vec![Some(0), Some(1), Some(2)]
    );
    assert!(meta
        .iter()
        .all(|m| m.status.as_deref() == Some("ok") && m.completed.is_some()));
    assert!(direct.wall_time() >= direct.serial_time() / 3);

    // Load-balanced apply, another serializer, map with chunks, unordered streaming.
    let lb = client.load_balanced_view();
    assert_eq!(lb.apply::<_, i64>("square", &9i64).await?.await?, 81);
    assert_eq!(
        lb.apply_with::<_, _, i64>(&Json, "square", &3i64)
            .await?
            .await?,
        9
    );
    let items: Vec<i64> = (0..1000).collect();
    let expected: Vec<i64> = items.iter().map(|x| x * x).collect();
    let mapped = lb
        .map::<_, i64>("square", &items, MapOptions::default().with_chunksize(10))
        .await?;
    assert_eq!(mapped.msg_ids().len(), 100);
    assert_eq!(mapped.get(GUARD).await?, expected);
    assert_eq!(mapped.progress(), 100);
    let unordered = lb
        .map::<_, i64>(
            "square",
            &items,
            MapOptions::default().with_chunksize(3).with_ordered(false),
        )
        .await?;
    let mut stream = unordered.into_stream();
    let mut streamed = Vec::new();
    while let Some(value) = tokio::time::timeout(GUARD, stream.next()).await? {
        streamed.push(value?);
    }
    streamed.sort_unstable();
    assert_eq!(streamed, expected);
    let direct_map = client
        .view_all()
        .map::<_, i64>("square", &items, MapOptions::default())
        .await?;
    assert_eq!(direct_map.get(GUARD).await?, expected);

    // Broadcast, with and without coalescing.
    for coalescing in [false, true] {
        let result = client
            .broadcast_view(coalescing)
            .apply::<_, i64>("square", &5i64)
            .await?;
        assert_eq!(result.get(GUARD).await?, vec![25, 25, 25]);
        assert_eq!(
            result
                .get_dict(GUARD)
                .await?
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    // Namespaces: push/pull, scatter/gather.
    let all = client.view_all();
    all.push(&[("a", 1i64), ("b", 2i64)])
        .await?
        .get(GUARD)
        .await?;
    assert_eq!(
        all.pull::<i64>(&["a", "b"]).await?.get(GUARD).await?,
        vec![vec![1, 2]; 3]
    );
    let data: Vec<u64> = (0..10).collect();
    all.scatter("xs", &data).await?.get(GUARD).await?;
    assert_eq!(
        client
            .direct_view(&[2])
            .pull::<Vec<u64>>(&["xs"])
            .await?
            .get(GUARD)
            .await?,
        vec![vec![vec![7, 8, 9]]]
    );
    assert_eq!(all.gather::<u64>("xs").await?.get(GUARD).await?, data);

    // Remote errors: one, and a CompositeError from every engine.
    let one = lb
        .apply::<_, i64>("fail_on_odd", &1i64)
        .await?
        .get(GUARD)
        .await
        .unwrap_err();
    assert!(
        matches!(one, ClientError::Remote(ref e) if e.evalue.contains("odd: 1")),
        "{one}"
    );
    let many = all
        .apply::<_, i64>("fail_on_odd", &1i64)
        .await?
        .get(GUARD)
        .await
        .unwrap_err();
    let ClientError::Composite(errors) = &many else {
        anyhow::bail!("expected a CompositeError, got {many}");
    };
    assert_eq!(errors.len(), 3);
    assert!(many.is_remote("RustError"));

    // Abort: a queued request behind a long one finishes as aborted.
    let engine0 = client.direct_view(&[0]);
    let long = engine0.apply::<_, u64>("sleep", &60_000u64).await?;
    let queued = engine0.apply::<_, i64>("square", &2i64).await?;
    engine0.abort(Some(&queued.msg_ids())).await?;
    cluster.release.store(true, Ordering::Relaxed);
    let aborted = queued.get(GUARD).await.unwrap_err();
    assert!(
        matches!(aborted, ClientError::TaskAborted { .. }),
        "{aborted}"
    );
    assert_eq!(long.get(GUARD).await?, vec![60_000]);
    cluster.release.store(false, Ordering::Relaxed);

    // Hub queries.
    let task = lb.apply::<_, i64>("square", &4i64).await?;
    let msg_id = task.msg_ids().remove(0);
    assert_eq!(task.get(GUARD).await?, 16);
    let status = client.queue_status(None, false).await?;
    assert_eq!(status.engines.len(), 3);
    assert_eq!(status.unassigned, QueueEntry::Count(0));
    assert!(client.hub_history().await?.contains(&msg_id));
    let records = client
        .db_query(json!({"msg_id": msg_id}), Some(&["msg_id", "completed"]))
        .await?;
    assert_eq!(records.len(), 1);
    assert_eq!(
        client
            .result_status(std::slice::from_ref(&msg_id))
            .await?
            .completed,
        vec![msg_id.clone()]
    );
    assert_eq!(client.get_result::<i64>(&msg_id, GUARD).await?, vec![16]);
    let renamed = client.resubmit(std::slice::from_ref(&msg_id)).await?;
    assert_eq!(
        client.get_result::<i64>(&renamed[&msg_id], GUARD).await?,
        vec![16]
    );
    client
        .purge(Purge::MsgIds(std::slice::from_ref(&msg_id)), &[])
        .await?;
    assert!(!client.hub_history().await?.contains(&msg_id));
    client.purge(Purge::All, &[]).await?;

    // A blocking client on the same cluster, from a plain thread.
    let info = cluster.controller.client_info().clone();
    let blocking = tokio::task::spawn_blocking(move || -> Result<Vec<i64>> {
        let client =
            ipp::core::client::BlockingClient::connect(info, zmq(), ClientConfig::default())?
                .with_wait_timeout(Some(GUARD));
        client.wait_for_engines(3, GUARD)?;
        let mut values = client.view_all().apply::<_, i64>("square", &3i64)?;
        values.push(
            client
                .load_balanced_view()
                .apply::<_, i64>("square", &4i64)?,
        );
        values.extend(client.load_balanced_view().map::<_, i64>(
            "square",
            &[5i64, 6],
            MapOptions::default(),
        )?);
        client.close();
        Ok(values)
    })
    .await??;
    assert_eq!(blocking, vec![9, 9, 9, 16, 25, 36]);

    // Shutdown of engines and Hub through the client.
    let Cluster {
        controller,
        engines,
        client,
        release,
    } = cluster;
    client.shutdown(None, true).await?;
    for engine in engines {
        tokio::time::timeout(GUARD, engine.stopped())
            .await
            .context("engine did not stop")?;
    }
    tokio::time::timeout(GUARD, controller.stopped()).await?;
    release.store(true, Ordering::Relaxed);
    controller.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_death_mid_task_fails_direct_and_load_balanced_tasks() -> Result<()> {
    let mut cluster = Cluster::start(2).await?;
    let client = cluster.client.clone();
    let victim = cluster.engines.remove(0);
    let id = victim.id();
    let direct = client
        .direct_view(&[id])
        .apply::<_, u64>("sleep", &60_000u64)
        .await?;
    let balanced = client
        .load_balanced_view()
        .with_targets(&[id])
        .apply::<_, u64>("sleep", &60_000u64)
        .await?;
    // Wait until the engine is running the direct task (the Hub sees it queued), then stop it.
    let started = Instant::now();
    while client.queue_status(Some(&[id]), false).await?.engines[&id].queue != QueueEntry::Count(1)
    {
        anyhow::ensure!(
            started.elapsed() < GUARD,
            "the direct task never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.shutdown().await;

    let error = direct.get(GUARD).await.unwrap_err();
    assert!(error.is_remote("EngineError"), "{error}");
    assert!(
        error.remote_errors()[0]
            .evalue
            .contains(&format!("Engine {id} died")),
        "{error}"
    );
    let error = balanced.get(GUARD).await.unwrap_err();
    assert!(
        error.is_remote("EngineError") || error.is_remote("ImpossibleDependency"),
        "{error}"
    );
    assert!(!client.ids().contains(&id));
    // The survivor still works.
    assert_eq!(
        client
            .load_balanced_view()
            .apply::<_, i64>("square", &3i64)
            .await?
            .get(GUARD)
            .await?,
        9
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_controller_is_found_again_and_nothing_is_lost_silently() -> Result<()> {
    let release = Arc::new(AtomicBool::new(true));
    // A short heartbeat, so the engines notice the restart quickly and re-register.
    let mut first_config = controller_config(Vec::new());
    first_config.heartbeat_period_ms = 200;
    first_config.heartbeat_max_misses = 5;
    let first = Controller::builder(first_config.clone())
        .with_transport(zmq())
        .start()
        .await?;
    // Restart on the ports the first one got.
    let mut config = first_config;
    config.ports = ports_of(&first);
    let engines = vec![
        start_engine(&first, &release).await?,
        start_engine(&first, &release).await?,
    ];
    let client = Client::connect_with(
        first.client_info().clone(),
        zmq(),
        ClientConfig::default()
            .with_liveness(Some(Duration::from_millis(250)), Duration::from_secs(2)),
    )
    .await?;
    client.wait_for_engines(2, GUARD).await?;
    let lb = client.load_balanced_view();
    assert_eq!(
        lb.apply::<_, i64>("square", &2i64)
            .await?
            .get(GUARD)
            .await?,
        4
    );

    first.shutdown().await;
    // Submitted while the controller is down: delivered later or failed clearly, never lost.
    let during = lb.apply::<_, i64>("square", &3i64).await?;
    match during.get(GUARD).await {
        Ok(value) => assert_eq!(value, 9),
        Err(ClientError::ControllerLost { .. } | ClientError::ControllerUnreachable { .. }) => {}
        Err(other) => anyhow::bail!("unexpected outcome for a task sent while down: {other}"),
    }

    let second = Controller::builder(config)
        .with_transport(zmq())
        .start()
        .await?;
    client.wait_connected(GUARD).await?;
    client.wait_for_engines(2, GUARD).await?;
    let after = tokio::time::timeout(GUARD, async {
        loop {
            // The engines may still be re-registering; a clear error is retried.
            match lb.apply::<_, i64>("square", &5i64).await?.get(GUARD).await {
                Ok(value) => return Ok::<i64, ClientError>(value),
                Err(err) if err.is_temporary() => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => return Err(err),
            }
        }
    })
    .await??;
    assert_eq!(after, 25);
    let direct = square_on_every_engine(&client, 6).await?;
    assert_eq!(direct, vec![36, 36]);
    client.close().await;
    for engine in engines {
        engine.shutdown().await;
    }
    second.shutdown().await;
    Ok(())
}

/// `square(n)` run on every engine the client knows, one result per engine.
async fn square_on_every_engine(client: &Client, n: i64) -> Result<Vec<i64>> {
    Ok(client
        .view_all()
        .apply::<_, i64>("square", &n)
        .await?
        .get(GUARD)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_controller_takes_its_engines_back_with_their_ids() -> Result<()> {
    let release = Arc::new(AtomicBool::new(true));
    let dir = tempfile::tempdir()?;
    let state_file = dir.path().join("engines.json");
    let mut config = controller_config(Vec::new());
    config.heartbeat_period_ms = 200;
    config.heartbeat_max_misses = 5;
    config.engine_state_file = Some(state_file.clone());
    let first = Controller::builder(config.clone())
        .with_transport(zmq())
        .start()
        .await?;
    config.ports = ports_of(&first);
    config.restore_engines = true;
    let engines = vec![
        start_engine(&first, &release).await?,
        start_engine(&first, &release).await?,
    ];
    let client = Client::connect(first.client_info().clone(), zmq()).await?;
    client.wait_for_engines(2, GUARD).await?;
    let before = client.engines();
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file)?)?;
    let listed: serde_json::Map<String, serde_json::Value> = before
        .iter()
        .map(|(id, uuid)| (id.to_string(), json!(uuid)))
        .collect();
    assert_eq!(state, json!({"engines": listed, "next_id": 2}));
    client.close().await;
    first.shutdown().await;

    let second = Controller::builder(config)
        .with_transport(zmq())
        .start()
        .await?;
    // A new engine at once: ids 0 and 1 stay with the restored engines (a controller that
    // forgot them would give this one id 0), the counter goes on at 2.
    let newcomer = start_engine(&second, &release).await?;
    assert_eq!(newcomer.id(), 2);
    let client = Client::connect(second.client_info().clone(), zmq()).await?;
    client.wait_for_engines(3, GUARD).await?;
    let mut expected = before.clone();
    expected.insert(2, newcomer.uuid().to_owned());
    assert_eq!(
        client.engines(),
        expected,
        "the same engines, with the same ids"
    );
    let direct = square_on_every_engine(&client, 6).await?;
    assert_eq!(direct, vec![36, 36, 36]);
    let balanced = client
        .load_balanced_view()
        .apply::<_, i64>("square", &7i64)
        .await?
        .get(GUARD)
        .await?;
    assert_eq!(balanced, 49);
    client.close().await;
    for engine in engines.into_iter().chain([newcomer]) {
        engine.shutdown().await;
    }
    second.shutdown().await;
    Ok(())
}
