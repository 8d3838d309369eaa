//! The task scheduler against scripted engines on the in-memory transport: every scheme's
//! distribution, `hwm`, graph and functional dependencies, timeouts, retries, targets,
//! engine death and dependencies resolved through the store.
//!
//! Time is paused: a wait for "nothing more arrives" only ends once every task is idle, so
//! these tests never depend on the machine's speed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::tests::{config, register_engine, FakeEngine, Harness, KEY};
use super::{Controller, ControllerConfig};
use crate::protocol::{Message, Session, SigningKey};
use crate::scheduler::{scheme_by_name, EngineLoad, Pick, Scheduler};
use crate::store::{DictDb, Store, TaskRecord};
use crate::transport::{MemoryTransport, Socket, SocketKind, SocketOptions};

/// A scheme whose randomness comes from its own seeded RNG, so every pick replays.
#[derive(Debug)]
struct Seeded {
    inner: Box<dyn Scheduler>,
    rng: StdRng,
}

impl Scheduler for Seeded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn select(&mut self, candidates: &[EngineLoad], cx: &mut Pick<'_>) -> Option<usize> {
        let mut cx = Pick {
            now: cx.now,
            rng: &mut self.rng,
        };
        self.inner.select(candidates, &mut cx)
    }
}

/// A controller with scripted engines and one client on the task port.
struct Cluster {
    h: Harness,
    task: Socket,
    notifications: Socket,
}

impl Cluster {
    async fn start(config: ControllerConfig, scheme: &str, store: Arc<dyn Store>) -> Self {
        let transport = MemoryTransport::new();
        let seeded = Seeded {
            inner: scheme_by_name(scheme).unwrap(),
            rng: StdRng::seed_from_u64(7),
        };
        let controller = Controller::builder(config)
            .with_transport(Arc::new(transport.clone()))
            .with_store(store)
            .with_scheme(Box::new(seeded))
            .start()
            .await
            .unwrap();
        let h = Harness {
            transport,
            controller,
            session: Session::new(SigningKey::new(KEY.as_bytes())),
        };
        let client = h.controller.client_info().clone();
        let notifications = h
            .connect(
                SocketKind::Sub,
                client.notification,
                SocketOptions::default().with_subscription(Bytes::new()),
            )
            .await;
        let task = h
            .connect(SocketKind::Dealer, client.task, SocketOptions::default())
            .await;
        Self {
            h,
            task,
            notifications,
        }
    }

    async fn with_engines(
        config: ControllerConfig,
        scheme: &str,
        uuids: &[&str],
    ) -> (Self, Vec<FakeEngine>) {
        let mut cluster = Self::start(config, scheme, Arc::new(DictDb::default())).await;
        let engines = cluster.add_engines(uuids).await;
        (cluster, engines)
    }

    /// Registers engines and waits for their notifications, after which the scheduler
    /// knows them (the Hub tells it first).
    async fn add_engines(&mut self, uuids: &[&str]) -> Vec<FakeEngine> {
        let mut engines = Vec::new();
        for uuid in uuids {
            engines.push(register_engine(&self.h, uuid).await);
            let note = self.h.recv(&mut self.notifications).await;
            assert_eq!(note.header.msg_type, "registration_notification");
        }
        engines
    }

    /// Submits an `apply_request` with these task flags; returns its msg_id.
    async fn submit(&self, metadata: Value) -> String {
        let mut request = self.h.session.message("apply_request", json!({}));
        request.metadata = metadata.as_object().cloned().unwrap_or_default();
        let msg_id = request.header.msg_id.clone();
        self.h.send(&self.task, vec![], request).await;
        msg_id
    }

    /// The client's next reply.
    async fn reply(&mut self) -> Message {
        self.h.recv(&mut self.task).await
    }

    /// The client's next reply, checked to answer `msg_id`; returns its `ename` (or "ok").
    async fn outcome_of(&mut self, msg_id: &str) -> String {
        let reply = self.reply().await;
        assert_eq!(reply.parent_msg_id(), Some(msg_id));
        outcome(&reply)
    }
}

fn outcome(reply: &Message) -> String {
    match reply.content.get("ename").and_then(Value::as_str) {
        Some(ename) => ename.to_owned(),
        None => reply.content["status"].as_str().unwrap_or("?").to_owned(),
    }
}

/// How an engine answers a task.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Ok,
    Fail,
    Unmet,
}

/// The engine side: answer one received request.
async fn answer(h: &Harness, engine: &FakeEngine, request: &Message, how: Answer) {
    let (status, met, content) = match how {
        Answer::Ok => ("ok", true, json!({"status": "ok"})),
        Answer::Fail => (
            "error",
            true,
            json!({"status": "error", "ename": "ZeroDivisionError", "evalue": "boom",
                "traceback": [], "engine_info": {"engine_uuid": engine.uuid, "engine_id": engine.id,
                "method": "apply"}}),
        ),
        Answer::Unmet => (
            "error",
            false,
            json!({"status": "error", "ename": "UnmetDependency", "evalue": "",
                "traceback": [], "engine_info": {"engine_uuid": engine.uuid, "engine_id": engine.id,
                "method": "apply"}}),
        ),
    };
    let mut reply = h.session.reply(&request.header, "apply_reply", content);
    reply.metadata = json!({"status": status, "engine": engine.uuid, "dependencies_met": met})
        .as_object()
        .cloned()
        .unwrap();
    h.send(&engine.task, request.idents.clone(), reply).await;
}

/// The engine's next task.
async fn take(h: &Harness, engine: &mut FakeEngine) -> Message {
    h.recv(&mut engine.task).await
}

/// Receives one task and answers it; returns its msg_id.
async fn serve(h: &Harness, engine: &mut FakeEngine, how: Answer) -> String {
    let request = take(h, engine).await;
    answer(h, engine, &request, how).await;
    request.header.msg_id
}

/// Every task already queued for the engine (waits until the whole controller is idle).
async fn take_all(engine: &mut FakeEngine) -> Vec<Message> {
    let mut taken = Vec::new();
    while let Ok(frames) = tokio::time::timeout(Duration::from_millis(1), engine.task.recv()).await
    {
        let wire = crate::protocol::WireMessage::split(frames.unwrap()).unwrap();
        taken.push(wire.parse().unwrap());
    }
    taken
}

/// Whether nothing arrives on `socket` before the controller is idle.
async fn nothing_on(socket: &mut Socket) -> bool {
    tokio::time::timeout(Duration::from_millis(1), socket.recv())
        .await
        .is_err()
}

fn unlimited() -> ControllerConfig {
    ControllerConfig { hwm: 0, ..config() }
}

fn dep(ids: &[&String], all: bool, success: bool, failure: bool) -> Value {
    json!({"dependencies": ids, "all": all, "success": success, "failure": failure})
}

// ---- schemes and hwm -------------------------------------------------------------------

/// Submits `n` tasks with hwm 0 and no answers; returns how many each engine received.
async fn distribution(scheme: &str, n: usize) -> Vec<usize> {
    let (c, mut engines) =
        Cluster::with_engines(unlimited(), scheme, &["e-0", "e-1", "e-2", "e-3"]).await;
    for _ in 0..n {
        c.submit(json!({})).await;
    }
    let mut counts = Vec::new();
    for engine in &mut engines {
        counts.push(take_all(engine).await.len());
    }
    assert_eq!(counts.iter().sum::<usize>(), n, "{scheme}: {counts:?}");
    counts
}

#[tokio::test(start_paused = true)]
async fn leastload_and_lru_spread_unanswered_tasks_evenly() {
    for scheme in ["leastload", "lru"] {
        assert_eq!(distribution(scheme, 40).await, vec![10; 4], "{scheme}");
    }
}

#[tokio::test(start_paused = true)]
async fn random_schemes_use_every_engine_over_many_tasks() {
    for scheme in ["plainrandom", "twobin", "weighted"] {
        let counts = distribution(scheme, 200).await;
        assert!(counts.iter().all(|&n| n >= 10), "{scheme}: {counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn weighted_and_leastload_favour_idle_engines() {
    for scheme in ["weighted", "leastload"] {
        let (c, mut engines) = Cluster::with_engines(unlimited(), scheme, &["busy", "idle"]).await;
        // Load "busy" with 5 tasks through targets, then send 20 free tasks one at a time,
        // each answered at once: the idle engine should take nearly all of them.
        for _ in 0..5 {
            c.submit(json!({"targets": ["busy"]})).await;
        }
        assert_eq!(take_all(&mut engines[0]).await.len(), 5);
        let mut on_idle = 0;
        for _ in 0..20 {
            c.submit(json!({})).await;
            let idle_got = take_all(&mut engines[1]).await;
            on_idle += idle_got.len();
            for request in &idle_got {
                answer(&c.h, &engines[1], request, Answer::Ok).await;
            }
            let _ = take_all(&mut engines[0]).await;
        }
        assert!(
            on_idle >= 18,
            "{scheme}: {on_idle} of 20 on the idle engine"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn lru_rotates_through_engines_when_each_task_is_answered_before_the_next() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "lru", &["a", "b", "c"]).await;
    let mut order = Vec::new();
    for _ in 0..6 {
        let msg_id = c.submit(json!({})).await;
        for (index, engine) in engines.iter_mut().enumerate() {
            for request in take_all(engine).await {
                answer(&c.h, engine, &request, Answer::Ok).await;
                order.push(index);
            }
        }
        assert_eq!(c.outcome_of(&msg_id).await, "ok");
    }
    // New engines join at the head: c (index 2) first, then b, then a, then around again.
    assert_eq!(order, vec![2, 1, 0, 2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn hwm_one_queues_tasks_while_every_engine_is_busy_and_releases_them_on_replies() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "leastload", &["a", "b"]).await;
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            ids.push(c.submit(json!({})).await);
        }
        ids
    };
    // hwm 1: one task per engine, three wait in the scheduler.
    let first_a = take_all(&mut engines[0]).await;
    let first_b = take_all(&mut engines[1]).await;
    assert_eq!((first_a.len(), first_b.len()), (1, 1));
    // Each reply frees one slot, and the oldest waiting task takes it.
    answer(&c.h, &engines[0], &first_a[0], Answer::Ok).await;
    let next = take_all(&mut engines[0]).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].header.msg_id, ids[2]);
    assert!(nothing_on(&mut engines[1].task).await);
    answer(&c.h, &engines[1], &first_b[0], Answer::Ok).await;
    answer(&c.h, &engines[0], &next[0], Answer::Ok).await;
    let mut rest = take_all(&mut engines[0]).await;
    rest.extend(take_all(&mut engines[1]).await);
    let mut rest_ids: Vec<String> = rest.iter().map(|m| m.header.msg_id.clone()).collect();
    rest_ids.sort();
    let mut expected = vec![ids[3].clone(), ids[4].clone()];
    expected.sort();
    assert_eq!(rest_ids, expected);
    for _ in 0..3 {
        assert_eq!(outcome(&c.reply().await), "ok");
    }
}

#[tokio::test(start_paused = true)]
async fn hwm_zero_sends_every_task_at_once() {
    let (c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    for _ in 0..25 {
        c.submit(json!({})).await;
    }
    assert_eq!(take_all(&mut engines[0]).await.len(), 25);
}

#[tokio::test(start_paused = true)]
async fn a_higher_hwm_caps_each_engine_at_that_many_tasks() {
    let config = ControllerConfig { hwm: 3, ..config() };
    let (c, mut engines) = Cluster::with_engines(config, "leastload", &["a", "b"]).await;
    for _ in 0..10 {
        c.submit(json!({})).await;
    }
    let a = take_all(&mut engines[0]).await;
    assert_eq!(a.len(), 3);
    assert_eq!(take_all(&mut engines[1]).await.len(), 3);
    answer(&c.h, &engines[0], &a[0], Answer::Ok).await;
    assert_eq!(take_all(&mut engines[0]).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn tasks_wait_for_the_first_engine_to_register() {
    let mut c = Cluster::start(config(), "leastload", Arc::new(DictDb::default())).await;
    let msg_id = c.submit(json!({})).await;
    let mut engines = c.add_engines(&["late"]).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, msg_id);
    assert_eq!(c.outcome_of(&msg_id).await, "ok");
}

// ---- graph dependencies ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn after_waits_for_all_parents_to_succeed() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let p1 = c.submit(json!({})).await;
    let p2 = c.submit(json!({})).await;
    let child = c.submit(json!({"after": [p1, p2]})).await;
    let parents = take_all(&mut engines[0]).await;
    assert_eq!(parents.len(), 2, "the child must wait");
    answer(&c.h, &engines[0], &parents[0], Answer::Ok).await;
    assert!(take_all(&mut engines[0]).await.is_empty());
    answer(&c.h, &engines[0], &parents[1], Answer::Ok).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, child);
    assert_eq!(c.outcome_of(&p1).await, "ok");
    assert_eq!(c.outcome_of(&p2).await, "ok");
    assert_eq!(c.outcome_of(&child).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn after_any_runs_on_the_first_parent_to_finish() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let p1 = c.submit(json!({})).await;
    let p2 = c.submit(json!({})).await;
    let child = c
        .submit(json!({"after": dep(&[&p1, &p2], false, true, false)}))
        .await;
    let parents = take_all(&mut engines[0]).await;
    assert_eq!(parents.len(), 2);
    answer(&c.h, &engines[0], &parents[1], Answer::Ok).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, child);
    assert_eq!(c.outcome_of(&p2).await, "ok");
    assert_eq!(c.outcome_of(&child).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn failure_only_dependencies_run_after_a_failure_and_fail_after_a_success() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let parent = c.submit(json!({})).await;
    let on_failure = c
        .submit(json!({"after": dep(&[&parent], true, false, true)}))
        .await;
    let on_success = c.submit(json!({"after": [parent]})).await;
    let on_either = c
        .submit(json!({"after": dep(&[&parent], true, true, true)}))
        .await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Fail).await, parent);
    assert_eq!(c.outcome_of(&parent).await, "ZeroDivisionError");
    // The success-only child can never run; the two others can.
    assert_eq!(c.outcome_of(&on_success).await, "ImpossibleDependency");
    let mut ran = vec![
        serve(&c.h, &mut engines[0], Answer::Ok).await,
        serve(&c.h, &mut engines[0], Answer::Ok).await,
    ];
    ran.sort();
    let mut expected = vec![on_failure.clone(), on_either.clone()];
    expected.sort();
    assert_eq!(ran, expected);

    // And the other way round: a failure-only dependency on a success is impossible.
    let ok_parent = c.submit(json!({})).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, ok_parent);
    let mut seen = HashMap::new();
    for _ in 0..3 {
        let reply = c.reply().await;
        seen.insert(reply.parent_msg_id().unwrap().to_owned(), outcome(&reply));
    }
    assert_eq!(seen[&ok_parent], "ok");
    let late = c
        .submit(json!({"after": dep(&[&ok_parent], true, false, true)}))
        .await;
    assert_eq!(c.outcome_of(&late).await, "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn follow_runs_where_the_parent_ran() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "lru", &["a", "b"]).await;
    let parent = c.submit(json!({})).await;
    // lru: the newest engine ("b", index 1) is first in line.
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Ok).await, parent);
    assert_eq!(c.outcome_of(&parent).await, "ok");
    for _ in 0..3 {
        let child = c.submit(json!({"follow": [parent]})).await;
        assert_eq!(serve(&c.h, &mut engines[1], Answer::Ok).await, child);
        assert_eq!(c.outcome_of(&child).await, "ok");
    }
    assert!(take_all(&mut engines[0]).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn follow_any_runs_on_an_engine_that_ran_either_parent() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "lru", &["a", "b", "c"]).await;
    let p_c = c.submit(json!({})).await;
    let p_b = c.submit(json!({})).await;
    assert_eq!(serve(&c.h, &mut engines[2], Answer::Ok).await, p_c);
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Ok).await, p_b);
    c.reply().await;
    c.reply().await;
    for _ in 0..4 {
        let child = c
            .submit(json!({"follow": dep(&[&p_b, &p_c], false, true, false)}))
            .await;
        let on_b = take_all(&mut engines[1]).await;
        let on_c = take_all(&mut engines[2]).await;
        assert_eq!(on_b.len() + on_c.len(), 1);
        let (engine, request) = if on_b.is_empty() {
            (&engines[2], &on_c[0])
        } else {
            (&engines[1], &on_b[0])
        };
        answer(&c.h, engine, request, Answer::Ok).await;
        assert_eq!(c.outcome_of(&child).await, "ok");
    }
    assert!(take_all(&mut engines[0]).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn follow_all_on_two_engines_is_impossible() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "lru", &["a", "b"]).await;
    let p1 = c.submit(json!({})).await;
    let p2 = c.submit(json!({})).await;
    serve(&c.h, &mut engines[1], Answer::Ok).await;
    serve(&c.h, &mut engines[0], Answer::Ok).await;
    c.reply().await;
    c.reply().await;
    let child = c.submit(json!({"follow": [p1, p2]})).await;
    assert_eq!(c.outcome_of(&child).await, "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn invalid_dependencies_on_itself_or_an_unknown_id() {
    let (mut c, _engines) = Cluster::with_engines(config(), "leastload", &["a"]).await;
    let unknown = c.submit(json!({"after": ["no-such-task"]})).await;
    assert_eq!(c.outcome_of(&unknown).await, "InvalidDependency");
    let unknown_follow = c.submit(json!({"follow": ["no-such-task"]})).await;
    assert_eq!(c.outcome_of(&unknown_follow).await, "InvalidDependency");

    let mut request = c.h.session.message("apply_request", json!({}));
    let own = request.header.msg_id.clone();
    request.metadata = json!({"after": [own]}).as_object().cloned().unwrap();
    c.h.send(&c.task, vec![], request).await;
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(own.as_str()));
    assert_eq!(outcome(&reply), "InvalidDependency");
    assert_eq!(reply.content["evalue"], "");
    assert_eq!(reply.content["engine_info"], json!({}));
    assert_eq!(reply.header.msg_type, "apply_reply");
    assert!(reply.idents.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_dependency_fails_queued_children_and_new_ones() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let parent = c.submit(json!({})).await;
    let child = c.submit(json!({"after": [parent]})).await;
    let grandchild = c.submit(json!({"after": [child]})).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Fail).await, parent);
    let mut seen = HashMap::new();
    for _ in 0..3 {
        let reply = c.reply().await;
        seen.insert(reply.parent_msg_id().unwrap().to_owned(), outcome(&reply));
    }
    assert_eq!(seen[&parent], "ZeroDivisionError");
    assert_eq!(seen[&child], "ImpossibleDependency");
    assert_eq!(seen[&grandchild], "ImpossibleDependency");
    let late = c.submit(json!({"after": [parent]})).await;
    assert_eq!(c.outcome_of(&late).await, "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn children_of_one_parent_are_released_in_submission_order() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let parent = c.submit(json!({})).await;
    let mut children = Vec::new();
    for i in 0..200 {
        // Every other child also waits on an earlier sibling that has not run yet.
        let after = match children.get(i / 2) {
            Some(sibling) if i % 2 == 1 => json!([parent, sibling]),
            _ => json!([parent]),
        };
        children.push(c.submit(json!({ "after": after })).await);
    }
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, parent);
    assert_eq!(c.outcome_of(&parent).await, "ok");
    let mut ran = Vec::new();
    while ran.len() < children.len() {
        for request in take_all(&mut engines[0]).await {
            answer(&c.h, &engines[0], &request, Answer::Ok).await;
            ran.push(request.header.msg_id);
        }
    }
    for msg_id in &ran {
        assert_eq!(c.outcome_of(msg_id).await, "ok");
    }
    // Children waiting on the parent only ran first, in the order they were submitted.
    let parent_only: Vec<&String> = children.iter().step_by(2).collect();
    let first: Vec<&String> = ran.iter().take(parent_only.len()).collect();
    assert_eq!(first, parent_only);
}

#[tokio::test(start_paused = true)]
async fn a_task_timed_out_while_waiting_fails_its_own_dependents_at_once() {
    let (mut c, _engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let slow = c.submit(json!({})).await;
    let waiting = c.submit(json!({"after": [slow], "timeout": 2.0})).await;
    let grandchild = c.submit(json!({"after": [waiting]})).await;
    // `slow` never finishes: only the timeout can settle the other two.
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let reply = c.reply().await;
        seen.insert(reply.parent_msg_id().unwrap().to_owned(), outcome(&reply));
    }
    assert_eq!(seen[&waiting], "TaskTimeout");
    assert_eq!(seen[&grandchild], "ImpossibleDependency");
}

// ---- timeouts, retries, targets, functional dependencies, engine death ------------------

#[tokio::test(start_paused = true)]
async fn a_task_whose_dependency_does_not_finish_in_time_fails_with_task_timeout() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a"]).await;
    let slow = c.submit(json!({})).await;
    let child = c.submit(json!({"after": [slow], "timeout": 2.0})).await;
    assert_eq!(c.outcome_of(&child).await, "TaskTimeout");
    // The timer covers waiting only: the running parent is untouched and still answers.
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, slow);
    assert_eq!(c.outcome_of(&slow).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn a_running_task_is_not_timed_out() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "leastload", &["a"]).await;
    let msg_id = c.submit(json!({"timeout": 1.0})).await;
    let request = take(&c.h, &mut engines[0]).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    answer(&c.h, &engines[0], &request, Answer::Ok).await;
    assert_eq!(c.outcome_of(&msg_id).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn a_failed_task_with_retries_reruns_on_another_engine() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b"]).await;
    let msg_id = c.submit(json!({"retries": 1})).await;
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Fail).await, msg_id);
    // Same msg_id, other engine, and the client heard nothing of the first failure.
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, msg_id);
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(msg_id.as_str()));
    assert_eq!(outcome(&reply), "ok");
    assert_eq!(reply.idents, vec![Bytes::from("a")]);
}

#[tokio::test(start_paused = true)]
async fn retries_run_out_and_the_last_error_is_delivered() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b", "c"]).await;
    let msg_id = c.submit(json!({"retries": 1})).await;
    assert_eq!(serve(&c.h, &mut engines[2], Answer::Fail).await, msg_id);
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Fail).await, msg_id);
    assert_eq!(c.outcome_of(&msg_id).await, "ZeroDivisionError");
    assert!(take_all(&mut engines[0]).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn retries_with_no_other_engine_deliver_the_error_instead_of_waiting() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a"]).await;
    let msg_id = c.submit(json!({"retries": 5})).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Fail).await, msg_id);
    assert_eq!(c.outcome_of(&msg_id).await, "ZeroDivisionError");
}

#[tokio::test(start_paused = true)]
async fn targets_are_honoured() {
    let (mut c, mut engines) =
        Cluster::with_engines(unlimited(), "leastload", &["a", "b", "c"]).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(c.submit(json!({"targets": ["a", "c"]})).await);
    }
    assert!(take_all(&mut engines[1]).await.is_empty());
    let on_a = take_all(&mut engines[0]).await.len();
    let on_c = take_all(&mut engines[2]).await.len();
    assert_eq!((on_a, on_c), (3, 3));

    let gone = c.submit(json!({"targets": ["not-registered"]})).await;
    assert_eq!(c.outcome_of(&gone).await, "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn an_unmet_dependency_moves_the_task_until_every_engine_has_refused() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b", "c"]).await;
    let msg_id = c.submit(json!({})).await;
    // c refuses, then b refuses, then a runs it: no retry is consumed by refusals.
    assert_eq!(serve(&c.h, &mut engines[2], Answer::Unmet).await, msg_id);
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Unmet).await, msg_id);
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, msg_id);
    assert_eq!(c.outcome_of(&msg_id).await, "ok");

    let hopeless = c.submit(json!({})).await;
    for engine in [2, 1, 0] {
        let request = take_all(&mut engines[engine]).await;
        assert_eq!(request.len(), 1, "engine {engine}");
        answer(&c.h, &engines[engine], &request[0], Answer::Unmet).await;
    }
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(hopeless.as_str()));
    assert_eq!(outcome(&reply), "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn an_unmet_dependency_on_every_target_is_impossible() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b", "c"]).await;
    let msg_id = c.submit(json!({"targets": ["a"]})).await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Unmet).await, msg_id);
    assert_eq!(c.outcome_of(&msg_id).await, "ImpossibleDependency");
}

#[tokio::test(start_paused = true)]
async fn engine_death_reruns_a_task_with_retries_on_a_survivor() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b"]).await;
    let retried = c.submit(json!({"retries": 1})).await;
    let doomed = c.submit(json!({})).await;
    assert_eq!(take(&c.h, &mut engines[1]).await.header.msg_id, retried);
    let on_a = take(&c.h, &mut engines[0]).await;
    assert_eq!(on_a.header.msg_id, doomed);
    // "b" dies holding `retried`: it moves to "a" once "a" is free.
    engines[1].heartbeat.abort();
    let note = c.h.recv(&mut c.notifications).await;
    assert_eq!(note.header.msg_type, "unregistration_notification");
    answer(&c.h, &engines[0], &on_a, Answer::Ok).await;
    assert_eq!(c.outcome_of(&doomed).await, "ok");
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, retried);
    assert_eq!(c.outcome_of(&retried).await, "ok");
}

#[tokio::test(start_paused = true)]
async fn engine_death_without_retries_fails_the_task_with_engine_error() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "lru", &["a", "b"]).await;
    let msg_id = c.submit(json!({})).await;
    take(&c.h, &mut engines[1]).await;
    engines[1].heartbeat.abort();
    let reply = c.reply().await;
    assert_eq!(reply.parent_msg_id(), Some(msg_id.as_str()));
    assert_eq!(outcome(&reply), "EngineError");
    assert_eq!(
        reply.content["evalue"],
        format!("Engine b'b' died while running task '{msg_id}'")
    );
    assert_eq!(reply.idents, vec![Bytes::from("b")]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_task_is_aborted_but_its_dependents_then_fail() {
    let (mut c, mut engines) = Cluster::with_engines(config(), "leastload", &["a"]).await;
    let running = c.submit(json!({})).await;
    let queued = c.submit(json!({})).await;
    let child = c.submit(json!({"after": [queued]})).await;
    let request = take(&c.h, &mut engines[0]).await;
    assert_eq!(request.header.msg_id, running);
    let client = c.h.controller.client_info().clone();
    let control =
        c.h.connect(SocketKind::Dealer, client.control, SocketOptions::default())
            .await;
    let abort =
        c.h.session
            .message("abort_request", json!({"msg_ids": [queued]}));
    c.h.send(&control, vec![Bytes::from("a")], abort).await;
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let reply = c.reply().await;
        seen.insert(reply.parent_msg_id().unwrap().to_owned(), outcome(&reply));
    }
    assert_eq!(seen[&queued], "aborted");
    assert_eq!(seen[&child], "ImpossibleDependency");
}

// ---- dependencies resolved through the store -------------------------------------------

fn finished_record(msg_id: &str, engine: &str, status: Option<&str>) -> TaskRecord {
    let mut record = TaskRecord::new(msg_id);
    record.submitted = Some(crate::protocol::date::now());
    record.engine_uuid = Some(engine.to_owned());
    record.queue = Some("task".to_owned());
    record.result_content =
        status.and_then(|s| json!({"status": s}).as_object().cloned().map(Into::into));
    record
}

#[tokio::test(start_paused = true)]
async fn dependencies_on_tasks_only_in_the_store_are_resolved_there() {
    // As after a restart: the store holds tasks this scheduler never saw.
    let store = Arc::new(DictDb::default());
    for record in [
        finished_record("old-ok", "a", Some("ok")),
        finished_record("old-failed", "a", Some("error")),
        finished_record("old-on-b", "b", Some("ok")),
        finished_record("old-unfinished", "a", None),
    ] {
        store.add(record).await.unwrap();
    }
    let mut c = Cluster::start(unlimited(), "lru", store).await;
    let mut engines = c.add_engines(&["a", "b"]).await;

    let after_ok = c.submit(json!({"after": ["old-ok"]})).await;
    assert_eq!(serve(&c.h, &mut engines[1], Answer::Ok).await, after_ok);
    assert_eq!(c.outcome_of(&after_ok).await, "ok");

    let on_failure = c
        .submit(
            json!({"after": {"dependencies": ["old-failed"], "success": false, "failure": true}}),
        )
        .await;
    assert_eq!(serve(&c.h, &mut engines[0], Answer::Ok).await, on_failure);
    assert_eq!(c.outcome_of(&on_failure).await, "ok");

    let impossible = c.submit(json!({"after": ["old-failed"]})).await;
    assert_eq!(c.outcome_of(&impossible).await, "ImpossibleDependency");

    for _ in 0..2 {
        let follows = c.submit(json!({"follow": ["old-on-b"]})).await;
        assert_eq!(serve(&c.h, &mut engines[1], Answer::Ok).await, follows);
        assert_eq!(c.outcome_of(&follows).await, "ok");
    }

    for unknown in ["old-unfinished", "never-anywhere"] {
        let invalid = c.submit(json!({"after": [unknown, "old-ok"]})).await;
        assert_eq!(
            c.outcome_of(&invalid).await,
            "InvalidDependency",
            "{unknown}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_depending_on_one_parked_for_a_lookup_waits_for_it() {
    let store = Arc::new(DictDb::default());
    store
        .add(finished_record("old-failed", "a", Some("error")))
        .await
        .unwrap();
    let mut c = Cluster::start(unlimited(), "lru", store).await;
    let mut engines = c.add_engines(&["a"]).await;
    // `parked` is being looked up when `child` arrives; `parked` then fails (success-only
    // on a failed task), and `child` with it.
    let parked = c.submit(json!({"after": ["old-failed"]})).await;
    let child = c.submit(json!({"after": [parked]})).await;
    let mut seen = HashMap::new();
    for _ in 0..2 {
        let reply = c.reply().await;
        seen.insert(reply.parent_msg_id().unwrap().to_owned(), outcome(&reply));
    }
    assert_eq!(seen[&parked], "ImpossibleDependency");
    assert_eq!(seen[&child], "ImpossibleDependency");
    assert!(take_all(&mut engines[0]).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_nodb_an_unknown_id_is_invalid_at_once() {
    let mut c = Cluster::start(config(), "leastload", Arc::new(crate::store::NoDb)).await;
    let _engines = c.add_engines(&["a"]).await;
    let msg_id = c.submit(json!({"after": ["forgotten"]})).await;
    assert_eq!(c.outcome_of(&msg_id).await, "InvalidDependency");
}

// ---- a store that stops answering -----------------------------------------------------

/// A DictDb that can be made to stop answering, as a store on a stalled disk (or with its
/// server gone and its queue full) would: its calls then wait until it is resumed. Reads
/// alone can be held too, as a long query over a large table would be.
#[derive(Debug)]
struct StallingStore {
    inner: DictDb,
    writes_stalled: tokio::sync::watch::Sender<bool>,
    reads_stalled: tokio::sync::watch::Sender<bool>,
}

impl Default for StallingStore {
    fn default() -> Self {
        Self {
            inner: DictDb::default(),
            writes_stalled: tokio::sync::watch::Sender::new(false),
            reads_stalled: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl StallingStore {
    fn stall(&self, stalled: bool) {
        self.writes_stalled.send_replace(stalled);
        self.reads_stalled.send_replace(stalled);
    }

    fn stall_reads(&self, stalled: bool) {
        self.reads_stalled.send_replace(stalled);
    }

    async fn write(&self) {
        let _ = self.writes_stalled.subscribe().wait_for(|s| !s).await;
    }

    async fn read(&self) {
        let _ = self.reads_stalled.subscribe().wait_for(|s| !s).await;
    }
}

impl std::fmt::Display for StallingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a stalling store")
    }
}

#[async_trait::async_trait]
impl Store for StallingStore {
    fn capabilities(&self) -> crate::store::StoreCapabilities {
        self.inner.capabilities()
    }
    async fn add(&self, record: TaskRecord) -> crate::Result<()> {
        self.write().await;
        self.inner.add(record).await
    }
    async fn update(&self, msg_id: &str, update: crate::store::RecordUpdate) -> crate::Result<()> {
        self.write().await;
        self.inner.update(msg_id, update).await
    }
    async fn get(&self, msg_id: &str) -> crate::Result<TaskRecord> {
        self.read().await;
        self.inner.get(msg_id).await
    }
    async fn find(
        &self,
        query: &crate::store::Query,
        keys: Option<&[crate::store::RecordKey]>,
    ) -> crate::Result<Vec<TaskRecord>> {
        self.read().await;
        self.inner.find(query, keys).await
    }
    async fn drop_matching(&self, query: &crate::store::Query) -> crate::Result<usize> {
        self.read().await;
        self.inner.drop_matching(query).await
    }
    async fn drop_records(&self, msg_ids: &[String]) -> crate::Result<()> {
        self.read().await;
        self.inner.drop_records(msg_ids).await
    }
    async fn history(&self) -> crate::Result<Vec<String>> {
        self.read().await;
        self.inner.history().await
    }
}

/// A cluster on a [`StallingStore`] with one engine and a socket for Hub queries, and a
/// queue of a few events between the scheduler and the Hub: a Hub stuck on the store would
/// stop the scheduler within a few tasks.
async fn on_a_stalling_store() -> (Arc<StallingStore>, Cluster, FakeEngine, Socket) {
    let store = Arc::new(StallingStore::default());
    let config = ControllerConfig {
        event_queue: 4,
        ..unlimited()
    };
    let mut c = Cluster::start(config, "leastload", store.clone()).await;
    let engine = c.add_engines(&["a"]).await.remove(0);
    let client = c.h.controller.client_info().clone();
    let hub =
        c.h.connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    (store, c, engine, hub)
}

/// Submits `n` tasks, serves them on `engine`, and checks that each succeeded.
async fn run_ok(c: &mut Cluster, engine: &mut FakeEngine, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(c.submit(json!({})).await);
    }
    for _ in 0..n {
        serve(&c.h, engine, Answer::Ok).await;
    }
    for id in &ids {
        assert_eq!(c.outcome_of(id).await, "ok");
    }
    ids
}

#[tokio::test(start_paused = true)]
async fn a_stalled_store_drops_records_and_routing_goes_on() {
    let (store, mut c, mut engine, mut hub) = on_a_stalling_store().await;

    store.stall(true);
    let started = tokio::time::Instant::now();
    let unrecorded = run_ok(&mut c, &mut engine, 40).await;
    // The Hub waited for the store once (one write's patience), not per task.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Queries are answered (with an error that says why) rather than left waiting.
    let reply = super::tests::query(&c.h, &mut hub, "db_request", json!({"query": {}})).await;
    assert_eq!(reply.content["status"], "error", "{:?}", reply.content);
    let evalue = reply.content["evalue"].as_str().unwrap_or_default();
    assert!(evalue.contains("task database"), "{evalue}");
    // A result whose record was dropped says so, rather than "no such message".
    let asked = json!({"msg_ids": [unrecorded[5]]});
    let reply = super::tests::query(&c.h, &mut hub, "result_request", asked).await;
    let evalue = reply.content["evalue"].as_str().unwrap_or_default();
    assert!(evalue.contains("not fully recorded"), "{:?}", reply.content);

    // The store recovers: the Hub finds out by itself (no task needed), answers queries
    // again, and records new tasks.
    store.stall(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reply = super::tests::query(&c.h, &mut hub, "db_request", json!({"query": {}})).await;
    assert_eq!(reply.content["status"], "ok", "{:?}", reply.content);
    let first = run_ok(&mut c, &mut engine, 1).await.remove(0);
    let found = super::tests::query(
        &c.h,
        &mut hub,
        "db_request",
        json!({"query": {"msg_id": first}, "keys": ["msg_id", "result_content"]}),
    )
    .await;
    assert_eq!(found.content["status"], "ok", "{:?}", found.content);
    assert_eq!(
        found.content["records"][0]["result_content"]["status"],
        "ok"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_query_does_not_hold_up_routing() {
    let (store, mut c, mut engine, mut hub) = on_a_stalling_store().await;
    let first = run_ok(&mut c, &mut engine, 1).await.remove(0);

    // A query the store takes its time over, asked before a burst of tasks.
    store.stall_reads(true);
    let started = tokio::time::Instant::now();
    let query = c.h.session.message(
        "db_request",
        json!({"query": {"msg_id": first}, "keys": ["msg_id"]}),
    );
    c.h.send(&hub, vec![], query).await;
    let results =
        c.h.session
            .message("result_request", json!({"msg_ids": [first]}));
    c.h.send(&hub, vec![], results).await;
    let resubmit =
        c.h.session
            .message("resubmit_request", json!({"msg_ids": [first]}));
    c.h.send(&hub, vec![], resubmit).await;
    run_ok(&mut c, &mut engine, 40).await;
    // Routed, recorded and answered while the query waited (no read timeout passed).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    store.stall_reads(false);
    let mut answered = Vec::new();
    let mut resubmitted = None;
    for _ in 0..3 {
        let reply = c.h.recv(&mut hub).await;
        assert_eq!(reply.content["status"], "ok", "{:?}", reply.content);
        match reply.header.msg_type.as_str() {
            "db_reply" => assert_eq!(reply.content["records"][0]["msg_id"], first.as_str()),
            "result_reply" => assert_eq!(reply.content["completed"][0], first.as_str()),
            "resubmit_reply" => {
                resubmitted = reply.content["resubmitted"][first.as_str()]
                    .as_str()
                    .map(str::to_owned);
            }
            other => panic!("unexpected {other}"),
        }
        answered.push(reply.header.msg_type);
    }
    answered.sort();
    assert_eq!(answered, ["db_reply", "resubmit_reply", "result_reply"]);
    // The resubmitted task runs once its record is read.
    let resubmitted = resubmitted.expect("the resubmit reply names the new task");
    assert_ne!(resubmitted, first);
    assert_eq!(serve(&c.h, &mut engine, Answer::Ok).await, resubmitted);
}

#[tokio::test(start_paused = true)]
async fn a_purge_naming_an_unknown_engine_drops_nothing() {
    let (_store, mut c, mut engine, mut hub) = on_a_stalling_store().await;
    let first = run_ok(&mut c, &mut engine, 1).await.remove(0);
    let query = |id: &str| json!({"query": {"msg_id": id}, "keys": ["msg_id"]});
    let purge = json!({"msg_ids": [first], "engine_ids": [99]});
    let refused = super::tests::query(&c.h, &mut hub, "purge_request", purge).await;
    assert_eq!(
        refused.content["ename"], "IndexError",
        "{:?}",
        refused.content
    );
    let kept = super::tests::query(&c.h, &mut hub, "db_request", query(&first)).await;
    assert_eq!(kept.content["records"].as_array().map(Vec::len), Some(1));

    let purge = json!({"msg_ids": [first]});
    let purged = super::tests::query(&c.h, &mut hub, "purge_request", purge).await;
    assert_eq!(purged.content["status"], "ok", "{:?}", purged.content);
    let gone = super::tests::query(&c.h, &mut hub, "db_request", query(&first)).await;
    assert_eq!(gone.content["records"].as_array().map(Vec::len), Some(0));
}

#[tokio::test(start_paused = true)]
async fn verbose_queue_status_lists_each_engines_completed_tasks() {
    let (mut c, mut engines) = Cluster::with_engines(unlimited(), "leastload", &["a", "b"]).await;
    let ids: Vec<String> = futures::future::join_all((0..4).map(|_| c.submit(json!({})))).await;
    let mut served: Vec<Vec<String>> = Vec::new();
    for engine in &mut engines {
        let taken = take_all(engine).await;
        for request in &taken {
            answer(&c.h, engine, request, Answer::Ok).await;
        }
        served.push(taken.into_iter().map(|r| r.header.msg_id).collect());
    }
    assert!(served.iter().all(|ids| !ids.is_empty()), "{served:?}");
    for _ in &ids {
        assert_eq!(outcome(&c.reply().await), "ok");
    }
    let client = c.h.controller.client_info().clone();
    let mut hub =
        c.h.connect(
            SocketKind::Dealer,
            client.registration,
            SocketOptions::default(),
        )
        .await;
    let reply = super::tests::query(
        &c.h,
        &mut hub,
        "queue_request",
        json!({"targets": null, "verbose": true}),
    )
    .await;
    for (engine, served) in engines.iter().zip(&served) {
        let mut completed: Vec<String> =
            serde_json::from_value(reply.content[engine.id.to_string()]["completed"].clone())
                .unwrap();
        completed.sort();
        let mut expected = served.clone();
        expected.sort();
        assert_eq!(
            completed, expected,
            "engine {}: {:?}",
            engine.id, reply.content
        );
    }
    assert_eq!(reply.content["unassigned"], json!([]));
}
