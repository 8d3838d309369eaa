//! The load-balanced task scheduler: dependencies, targets, retries, timeouts and `hwm`
//! around a [`Scheduler`](crate::scheduler::Scheduler) scheme (spec §6).

mod dependency;
mod lookup;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::ordered::OrderedIds;
use bytes::Bytes;
use foldhash::{HashMap, HashSet};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::dependency::{Dependency, IdSet};
use self::lookup::{lookup, Lookup};
use super::events::{EngineEvent, HubEvent, TaskCommand};
use super::recent::RecentSet;
use super::relay::{accept_from_peer, WarnOnce};
use super::wire_fields::{HeaderFields, MetadataFields, ReadFields, Text};
use crate::protocol::message::msg_id_of;
use crate::protocol::{date, error_content, to_json_bytes, Session, WireMessage};
use crate::scheduler::{EngineLoad, Pick, Scheduler};
use crate::store::Store;
use crate::transport::{Frames, Socket, SocketReceiver, SocketSender};
use serde::de::IgnoredAny;

/// A task the scheduler holds, from submission to its final reply.
#[derive(Debug)]
struct Job {
    msg_id: String,
    /// Routing id of the submitting client; `None` for tasks the Hub resubmitted.
    client: Option<Bytes>,
    /// The original signed frames (identities stripped).
    wire: WireMessage,
    /// The request's packed header: the parent of replies we make ourselves.
    header: Bytes,
    targets: Vec<String>,
    after: Dependency,
    follow: Dependency,
    retries: u64,
    blacklist: HashSet<String>,
    timeout: Option<Duration>,
    /// The deadline armed when the job was last queued.
    deadline: Option<Instant>,
}

/// A field the scheduler reads only for the Hub's record: kept ([`Text`]) when the Hub
/// records tasks, skipped unread ([`IgnoredAny`]) when it does not.
trait RecordField<'de>: serde::Deserialize<'de> + Default {
    /// The value, owned, for the Hub.
    fn into_text(self) -> Text<'static>;
}

impl<'de: 'a, 'a> RecordField<'de> for Text<'a> {
    fn into_text(self) -> Text<'static> {
        self.into_owned()
    }
}

impl RecordField<'_> for IgnoredAny {
    fn into_text(self) -> Text<'static> {
        Text::default()
    }
}

/// What the scheduler reads of a request's header: its id and type, and (`F`) the sender's
/// session and the send date for the Hub's record.
#[derive(serde::Deserialize)]
struct RequestHeader<F> {
    msg_id: String,
    msg_type: String,
    #[serde(default)]
    session: F,
    #[serde(default)]
    date: F,
}

/// The task flags of a request's metadata (spec §6.2); missing keys take their defaults.
/// `F`: the label, for the Hub's record.
#[derive(Debug, Default, serde::Deserialize)]
struct TaskFlags<F> {
    #[serde(default)]
    after: Option<Value>,
    #[serde(default)]
    follow: Option<Value>,
    #[serde(default)]
    targets: Option<Value>,
    #[serde(default)]
    retries: Option<u64>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    label: F,
}

/// A request as the scheduler read it; `read` has what the Hub's record takes from its
/// header and metadata (nothing when the Hub records no tasks).
struct ReadRequest {
    msg_id: String,
    msg_type: String,
    flags: TaskFlags<IgnoredAny>,
    read: ReadFields,
}

impl ReadRequest {
    /// Reads `wire`'s header and metadata, each in one pass, keeping the record's fields
    /// when `F` is [`Text`].
    fn parse<'de, F: RecordField<'de>>(wire: &'de WireMessage) -> Result<Self, String> {
        let header = serde_json::from_slice::<RequestHeader<F>>(&wire.header)
            .map_err(|err| format!("bad header: {err}"))?;
        let flags = serde_json::from_slice::<TaskFlags<F>>(&wire.metadata)
            .map_err(|err| format!("bad metadata: {err}"))?;
        let TaskFlags {
            after,
            follow,
            targets,
            retries,
            timeout,
            label,
        } = flags;
        Ok(Self {
            msg_id: header.msg_id,
            msg_type: header.msg_type,
            flags: TaskFlags {
                after,
                follow,
                targets,
                retries,
                timeout,
                label: IgnoredAny,
            },
            read: ReadFields {
                header: Some(HeaderFields {
                    session: header.session.into_text(),
                    date: header.date.into_text(),
                    ..HeaderFields::default()
                }),
                metadata: Some(MetadataFields {
                    label: label.into_text(),
                    ..MetadataFields::default()
                }),
            },
        })
    }
}

/// What the scheduler reads of an engine reply's metadata; `F`: the engine and start time,
/// for the Hub's record.
#[derive(Debug, Default, serde::Deserialize)]
struct ReplyFlags<F> {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    dependencies_met: Option<bool>,
    #[serde(default)]
    engine: F,
    #[serde(default)]
    started: F,
}

impl<'de, F: RecordField<'de>> ReplyFlags<F> {
    /// The flags of a reply's metadata and what the Hub's record takes from it; `None`
    /// when the metadata cannot be read.
    fn parse(metadata: &'de [u8]) -> Option<(Option<String>, Option<bool>, ReadFields)> {
        let flags = serde_json::from_slice::<Self>(metadata).ok()?;
        let read = ReadFields {
            header: None,
            metadata: Some(MetadataFields {
                engine: flags.engine.into_text(),
                started: flags.started.into_text(),
                ..MetadataFields::default()
            }),
        };
        Some((flags.status, flags.dependencies_met, read))
    }
}

/// One engine as the scheduler tracks it.
#[derive(Debug)]
struct EngineSlot {
    uuid: String,
    load: usize,
}

/// What happened when the scheduler tried to run a job.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Dispatched,
    Failed,
    Wait,
}

/// How many finished task ids the scheduler remembers for dependencies; older ones are
/// looked up in the store.
const HISTORY_WINDOW: usize = 262_144;

/// Most engine replies handled ahead of an engine's unregistration (see `run_task_scheduler`).
const DRAIN_BEFORE_UNREGISTER: usize = 65_536;

/// Routing id used in place of a client's for tasks the Hub resubmits.
const HUB_IDENTITY: &[u8] = b"\x00hub-resubmit";

/// The scheduler's sockets and channels.
pub(crate) struct TaskSchedulerParts {
    pub(crate) session: Arc<Session>,
    pub(crate) scheme: Box<dyn Scheduler>,
    pub(crate) hwm: usize,
    pub(crate) max_message_bytes: usize,
    /// The Hub's task database, read to resolve dependencies on forgotten ids.
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clients: Socket,
    pub(crate) engines: Socket,
    pub(crate) hub: mpsc::Sender<HubEvent>,
    pub(crate) engine_events: mpsc::Receiver<EngineEvent>,
    pub(crate) commands: mpsc::Receiver<TaskCommand>,
    pub(crate) shutdown: CancellationToken,
}

struct TaskScheduler {
    session: Arc<Session>,
    scheme: Box<dyn Scheduler>,
    rng: StdRng,
    hwm: usize,
    client_tx: SocketSender,
    engine_tx: SocketSender,
    hub: mpsc::Sender<HubEvent>,
    store: Arc<dyn Store>,
    /// Whether the store keeps records (NoDb does not: then nothing is looked up).
    store_records: bool,
    /// Jobs waiting for the store to resolve ids the scheduler does not know.
    parked: HashSet<String>,
    /// The store lookups of parked jobs; owned here, so they stop with the scheduler.
    lookups: JoinSet<Lookup>,
    /// Which parked job each lookup task serves (to unpark it if the lookup panics).
    lookup_jobs: HashMap<tokio::task::Id, String>,
    /// Engines in least-recently-used order.
    engines: Vec<EngineSlot>,
    jobs: HashMap<String, Job>,
    /// Jobs whose `after` is met, waiting for an engine, oldest first.
    ready: VecDeque<String>,
    /// Jobs whose `after` is not met yet.
    blocked: OrderedIds,
    /// For each id a blocked job depends on (`after` or `follow`), the blocked jobs that
    /// wait on it: a finished task re-checks only its own dependents, not every blocked job.
    /// Entries of jobs that left `blocked` otherwise (timeout, abort) are skipped when read.
    dependents: HashMap<String, Vec<String>>,
    /// Finished ids with dependents, not yet acted on by [`TaskScheduler::update_graph`].
    newly_finished: Vec<String>,
    running: HashMap<String, OrderedIds>,
    // Finished and submitted ids, for dependencies: bounded, so memory stays flat over
    // millions of tasks; a dependency on an id older than the window is InvalidDependency.
    submitted: RecentSet,
    completed: RecentSet,
    failed: RecentSet,
    engine_completed: HashMap<String, RecentSet>,
    engine_failed: HashMap<String, RecentSet>,
    timeouts: BinaryHeap<Reverse<(Instant, String)>>,
    warned: WarnOnce,
    max_message_bytes: usize,
}

/// Runs the task scheduler until shutdown.
pub(crate) async fn run_task_scheduler(parts: TaskSchedulerParts) {
    let TaskSchedulerParts {
        session,
        scheme,
        hwm,
        max_message_bytes,
        store,
        clients,
        engines,
        hub,
        mut engine_events,
        mut commands,
        shutdown,
    } = parts;
    let (client_tx, mut client_rx) = clients.split();
    let (engine_tx, mut engine_rx) = engines.split();
    let mut scheduler = TaskScheduler {
        session,
        scheme,
        rng: StdRng::from_entropy(),
        hwm,
        client_tx,
        engine_tx,
        hub,
        store_records: store.capabilities().records,
        store,
        parked: HashSet::default(),
        lookups: JoinSet::new(),
        lookup_jobs: HashMap::default(),
        engines: Vec::new(),
        jobs: HashMap::default(),
        ready: VecDeque::new(),
        blocked: OrderedIds::new(),
        dependents: HashMap::default(),
        newly_finished: Vec::new(),
        running: HashMap::default(),
        submitted: RecentSet::with_capacity(HISTORY_WINDOW),
        completed: RecentSet::with_capacity(HISTORY_WINDOW),
        failed: RecentSet::with_capacity(HISTORY_WINDOW),
        engine_completed: HashMap::default(),
        engine_failed: HashMap::default(),
        timeouts: BinaryHeap::new(),
        warned: WarnOnce::default(),
        max_message_bytes,
    };
    loop {
        let next_timeout = scheduler.timeouts.peek().map(|Reverse((at, _))| *at);
        // Every branch is cancel-safe: channel/socket `recv`, `JoinSet::join_next` (a
        // finished task's output stays in the set until returned) and `sleep_until`.
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = engine_events.recv() => {
                let Some(event) = event else { break };
                scheduler.membership(event, &mut engine_rx).await;
            }
            joined = scheduler.lookups.join_next_with_id(), if !scheduler.lookups.is_empty() => {
                match joined {
                    Some(Ok((id, answer))) => {
                        scheduler.lookup_jobs.remove(&id);
                        scheduler.lookup_done(answer).await;
                    }
                    Some(Err(err)) => {
                        let msg_id = scheduler.lookup_jobs.remove(&err.id()).unwrap_or_default();
                        scheduler.lookup_done(Lookup {
                            msg_id,
                            outcome: Err(format!("the lookup task failed: {err}")),
                        }).await;
                    }
                    None => {}
                }
            }
            frames = client_rx.recv() => {
                let Ok(frames) = frames else { break };
                // Membership changes the Hub announced before this submission apply first
                // (spec §6.1): a client that saw an engine register may count on it.
                while let Ok(event) = engine_events.try_recv() {
                    scheduler.membership(event, &mut engine_rx).await;
                }
                let Some(wire) = accept_from_peer(
                    frames, &scheduler.session, scheduler.max_message_bytes,
                    &mut scheduler.warned, "task",
                ) else { continue };
                scheduler.submit(wire).await;
            }
            command = commands.recv() => {
                match command {
                    Some(TaskCommand::Resubmit(mut wire)) => {
                        wire.idents = vec![Bytes::from_static(HUB_IDENTITY)];
                        scheduler.submit(wire).await;
                    }
                    Some(TaskCommand::Abort(msg_ids)) => scheduler.abort_queued(&msg_ids).await,
                    None => break,
                }
            }
            frames = engine_rx.recv() => {
                let Ok(frames) = frames else { break };
                scheduler.engine_frames(frames).await;
            }
            () = sleep_until(next_timeout) => scheduler.expire_timeouts().await,
        }
        // A job failed inside a handler (timeout, impossible or invalid dependency) may
        // release or doom its dependents: act on it before the next event.
        if !scheduler.newly_finished.is_empty() {
            scheduler.update_graph().await;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl TaskScheduler {
    /// Applies an engine registration or loss.
    async fn membership(&mut self, event: EngineEvent, engine_rx: &mut SocketReceiver) {
        if matches!(event, EngineEvent::Unregistered { .. }) {
            // Replies the engine sent before it went are already queued: handle them
            // first, so a finished task is not failed or rerun as stranded.
            let mut ready = Vec::new();
            engine_rx.drain_ready(DRAIN_BEFORE_UNREGISTER, &mut ready);
            for frames in ready {
                self.engine_frames(frames).await;
            }
        }
        self.engine_event(event).await;
    }

    async fn engine_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Registered { uuid } => {
                // New engines go to the head of the line, as in ipyparallel.
                self.engines.insert(0, EngineSlot { uuid, load: 0 });
                self.update_graph().await;
            }
            EngineEvent::Unregistered { uuid } => {
                self.engines.retain(|slot| slot.uuid != uuid);
                let stranded = self.running.remove(&uuid).unwrap_or_default();
                for msg_id in stranded {
                    self.engine_died(&uuid, &msg_id).await;
                }
                self.update_graph().await;
            }
        }
    }

    /// Answers a task stranded on a dead engine as if the engine had failed it, so that
    /// retries apply. ipyparallel waits 5 s first; we need not.
    async fn engine_died(&mut self, uuid: &str, msg_id: &str) {
        let Some(job) = self.jobs.get(msg_id) else {
            return;
        };
        let mut error = error_content(
            "EngineError",
            &format!("Engine b'{uuid}' died while running task '{msg_id}'"),
        );
        if let Some(map) = error.as_object_mut() {
            map.insert("engine_info".into(), json!({}));
        }
        let header = self.session.header("apply_reply");
        let metadata =
            json!({"status": "error", "engine": uuid, "date": date::format(&date::now())});
        let frames = self.session.serialize_parts(
            vec![
                Bytes::from(uuid.to_owned()),
                job.wire.idents.first().cloned().unwrap_or_default(),
            ],
            to_json_bytes(&header),
            job.header.clone(),
            to_json_bytes(&metadata),
            to_json_bytes(&error),
            Vec::new(),
        );
        if let Ok(wire) = WireMessage::split(frames) {
            self.handle_result(wire, uuid.to_owned(), msg_id.to_owned())
                .await;
        }
    }

    async fn submit(&mut self, wire: WireMessage) {
        // The msg_id, the type and the task flags, and (only when the Hub records tasks)
        // what its record takes from the same parts: each part read once, for both.
        let parsed = if self.store_records {
            ReadRequest::parse::<Text<'_>>(&wire)
        } else {
            ReadRequest::parse::<IgnoredAny>(&wire).map(|request| ReadRequest {
                read: ReadFields::default(),
                ..request
            })
        };
        let ReadRequest {
            msg_id,
            msg_type,
            flags:
                TaskFlags {
                    after,
                    follow,
                    targets,
                    retries,
                    timeout,
                    ..
                },
            read,
        } = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::warn!(error = %err, "dropped an unreadable task");
                return;
            }
        };
        let client = wire.idents.first().cloned();
        let _ = self
            .hub
            .send(HubEvent::TaskSubmitted {
                msg_id: msg_id.clone(),
                read: read.boxed(),
                wire: wire.clone(),
            })
            .await;
        self.submitted.insert(&msg_id);
        let timeout = timeout
            // ipyparallel treats 0 (its default) as "no timeout".
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(Duration::from_secs_f64);
        let job = Job {
            msg_id: msg_id.clone(),
            client: client.filter(|c| c.as_ref() != HUB_IDENTITY),
            header: wire.header.clone(),
            targets: string_list(targets.as_ref()),
            after: Dependency::from_metadata(after.as_ref()),
            follow: Dependency::from_metadata(follow.as_ref()),
            retries: retries.unwrap_or(0),
            blacklist: HashSet::default(),
            timeout,
            deadline: None,
            wire: WireMessage {
                idents: Vec::new(),
                ..wire
            },
        };
        if msg_type != "apply_request" && msg_type != "execute_request" {
            // An engine would never answer it, and it would hold the engine's slot forever.
            tracing::warn!(
                msg_id,
                msg_type,
                "refused a task that is not an apply or execute request"
            );
            return self.fail(job, "TypeError").await;
        }
        let unknown = self.unknown_ids(&job);
        let on_itself = job.after.ids.contains(&msg_id) || job.follow.ids.contains(&msg_id);
        if !unknown.is_empty() && !on_itself && self.store_records {
            // Ids outside our window may be in the task database: park the job and ask it,
            // off this loop, so a slow store never holds up scheduling.
            tracing::debug!(msg_id, unknown = unknown.len(), "looking up dependencies");
            let store = Arc::clone(&self.store);
            let handle = self.lookups.spawn(lookup(store, msg_id.clone(), unknown));
            self.lookup_jobs.insert(handle.id(), msg_id.clone());
            self.parked.insert(msg_id.clone());
            self.jobs.insert(msg_id, job);
            return;
        }
        self.admit(job).await;
    }

    /// The dependency ids of `job` that are neither its own nor known to the scheduler.
    fn unknown_ids(&self, job: &Job) -> Vec<String> {
        let mut unknown: Vec<String> = Vec::new();
        for id in job.after.ids.iter().chain(&job.follow.ids) {
            if *id != job.msg_id && !self.is_known(id) && !unknown.contains(id) {
                unknown.push(id.clone());
            }
        }
        unknown
    }

    /// Whether `msg_id` was submitted to this scheduler (recently, or it is still held) or
    /// found finished in the store.
    fn is_known(&self, msg_id: &str) -> bool {
        self.submitted.contains(msg_id) || self.jobs.contains_key(msg_id)
    }

    /// Unparks a job once the store has answered about its unknown dependencies.
    async fn lookup_done(&mut self, answer: Lookup) {
        if !self.parked.remove(&answer.msg_id) {
            return; // aborted while parked
        }
        let Some(job) = self.jobs.remove(&answer.msg_id) else {
            return;
        };
        match answer.outcome {
            Ok(found) => {
                for done in found {
                    self.submitted.insert(&done.msg_id);
                    self.record_finished(&done.msg_id, done.succeeded, done.engine.as_deref());
                }
            }
            Err(err) => {
                tracing::warn!(msg_id = %job.msg_id, error = %err,
                    "could not look up dependencies in the task database");
            }
        }
        self.admit(job).await;
        // Jobs submitted meanwhile may depend on this one, which may have just failed.
        self.update_graph().await;
    }

    /// Remembers a finished task for the dependencies of later ones, and marks it for
    /// [`Self::update_graph`] when blocked jobs wait on it.
    fn record_finished(&mut self, msg_id: &str, succeeded: bool, engine: Option<&str>) {
        let (all, per_engine) = if succeeded {
            (&mut self.completed, &mut self.engine_completed)
        } else {
            (&mut self.failed, &mut self.engine_failed)
        };
        all.insert(msg_id);
        if let Some(engine) = engine {
            per_engine
                .entry(engine.to_owned())
                .or_insert_with(|| RecentSet::with_capacity(HISTORY_WINDOW / 4))
                .insert(msg_id);
        }
        if self.dependents.contains_key(msg_id) {
            self.newly_finished.push(msg_id.to_owned());
        }
    }

    /// Validates a job's dependencies and runs or queues it (spec §6.3 steps 1-3).
    async fn admit(&mut self, mut job: Job) {
        let msg_id = job.msg_id.clone();
        job.after.reduce(&self.completed, &self.failed);
        let mut invalid = None;
        for dep in [&job.after, &job.follow] {
            if dep.ids.iter().any(|id| *id == msg_id || !self.is_known(id)) {
                invalid = invalid.or(Some("InvalidDependency"));
            } else if dep.is_unreachable(&self.completed, &self.failed) {
                invalid = invalid.or(Some("ImpossibleDependency"));
            }
        }
        if let Some(ename) = invalid {
            return self.fail(job, ename).await;
        }
        let runnable = job.after.is_met(&self.completed, &self.failed);
        self.jobs.insert(msg_id.clone(), job);
        if runnable {
            if self.ready.is_empty() {
                if self.try_run(&msg_id).await == Attempt::Wait {
                    self.enqueue_ready(msg_id);
                }
            } else {
                // Others are waiting already: keep submission order.
                self.enqueue_ready(msg_id);
                self.update_graph().await;
            }
        } else {
            self.arm_timeout(&msg_id);
            self.block(msg_id);
        }
    }

    /// Holds a job until its `after` is met, indexed under every id it depends on.
    fn block(&mut self, msg_id: String) {
        if let Some(job) = self.jobs.get(&msg_id) {
            let mut seen = HashSet::default();
            for id in job.after.ids.iter().chain(&job.follow.ids) {
                if seen.insert(id) {
                    self.dependents
                        .entry(id.clone())
                        .or_default()
                        .push(msg_id.clone());
                }
            }
        }
        self.blocked.insert(msg_id);
    }

    fn enqueue_ready(&mut self, msg_id: String) {
        self.arm_timeout(&msg_id);
        self.ready.push_back(msg_id);
    }

    fn arm_timeout(&mut self, msg_id: &str) {
        let Some(job) = self.jobs.get_mut(msg_id) else {
            return;
        };
        if let Some(timeout) = job.timeout {
            let at = Instant::now() + timeout;
            job.deadline = Some(at);
            self.timeouts.push(Reverse((at, msg_id.to_owned())));
        }
    }

    async fn expire_timeouts(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timeouts.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, msg_id))) = self.timeouts.pop() else {
                break;
            };
            // Cheap test first: most expired entries are of tasks long finished.
            let current = self
                .jobs
                .get(&msg_id)
                .is_some_and(|job| job.deadline == Some(at));
            let queued =
                current && (self.blocked.contains(&msg_id) || self.ready.contains(&msg_id));
            if queued {
                self.blocked.remove(&msg_id);
                self.ready.retain(|id| *id != msg_id);
                if let Some(job) = self.jobs.remove(&msg_id) {
                    self.fail(job, "TaskTimeout").await;
                }
            }
        }
    }

    fn is_available(&self, slot: &EngineSlot) -> bool {
        self.hwm == 0 || slot.load < self.hwm
    }

    /// Tries to send a job to an engine.
    async fn try_run(&mut self, msg_id: &str) -> Attempt {
        let Some(job) = self.jobs.get(msg_id) else {
            return Attempt::Failed;
        };
        if !self.engines.iter().any(|slot| self.is_available(slot)) {
            return Attempt::Wait;
        }
        let candidates: Vec<usize> = self
            .engines
            .iter()
            .enumerate()
            .filter(|(_, slot)| {
                self.is_available(slot)
                    && !job.blacklist.contains(&slot.uuid)
                    && (job.targets.is_empty() || job.targets.contains(&slot.uuid))
                    && (job.follow.is_empty() || self.follow_met_on(&job.follow, &slot.uuid))
            })
            .map(|(index, _)| index)
            .collect();
        if candidates.is_empty() {
            return if self.is_impossible(job) {
                if let Some(job) = self.jobs.remove(msg_id) {
                    self.fail(job, "ImpossibleDependency").await;
                }
                Attempt::Failed
            } else {
                Attempt::Wait
            };
        }
        let loads: Vec<EngineLoad> = candidates
            .iter()
            .map(|&index| EngineLoad {
                load: self.engines[index].load,
            })
            .collect();
        let choice = {
            let mut cx = Pick {
                now: Instant::now(),
                rng: &mut self.rng,
            };
            self.scheme.select(&loads, &mut cx)
        };
        let Some(choice) = choice else {
            return Attempt::Wait;
        };
        let Some(&index) = candidates.get(choice) else {
            return Attempt::Wait;
        };
        self.dispatch(msg_id, index).await;
        Attempt::Dispatched
    }

    fn follow_met_on(&self, follow: &Dependency, uuid: &str) -> bool {
        let empty = HashSet::default();
        match (
            self.engine_completed.get(uuid),
            self.engine_failed.get(uuid),
        ) {
            (Some(done), Some(failed)) => follow.is_met(done, failed),
            (Some(done), None) => follow.is_met(done, &empty),
            (None, Some(failed)) => follow.is_met(&empty, failed),
            (None, None) => follow.is_met(&empty, &empty),
        }
    }

    /// Whether no engine can ever take the job (spec §6.3 step 4, plus: every engine has
    /// refused it).
    fn is_impossible(&self, job: &Job) -> bool {
        if job.follow.all && !job.follow.is_empty() {
            let ran_on: HashSet<&String> = self
                .engine_completed
                .iter()
                .chain(self.engine_failed.iter())
                .filter(|(_, done)| job.follow.ids.iter().any(|id| done.has(id)))
                .map(|(uuid, _)| uuid)
                .collect();
            if ran_on.len() > 1 {
                return true;
            }
        }
        if !job.targets.is_empty() {
            let left: Vec<&String> = job
                .targets
                .iter()
                .filter(|uuid| !job.blacklist.contains(*uuid))
                .collect();
            return left.is_empty()
                || !left
                    .iter()
                    .any(|uuid| self.engines.iter().any(|slot| &&slot.uuid == uuid));
        }
        !job.blacklist.is_empty()
            && !self.engines.is_empty()
            && self
                .engines
                .iter()
                .all(|slot| job.blacklist.contains(&slot.uuid))
    }

    async fn dispatch(&mut self, msg_id: &str, index: usize) {
        let slot = self.engines.remove(index);
        let uuid = slot.uuid.clone();
        self.engines.push(EngineSlot {
            load: slot.load + 1,
            ..slot
        });
        let Some(job) = self.jobs.get_mut(msg_id) else {
            return;
        };
        job.deadline = None;
        let mut wire = job.wire.clone();
        wire.idents = vec![
            Bytes::from(uuid.clone()),
            job.client
                .clone()
                .unwrap_or_else(|| Bytes::from_static(HUB_IDENTITY)),
        ];
        self.running
            .entry(uuid.clone())
            .or_default()
            .insert(msg_id.to_owned());
        let _ = self
            .hub
            .send(HubEvent::TaskAssigned {
                msg_id: msg_id.to_owned(),
                engine: uuid,
            })
            .await;
        if let Err(err) = self.engine_tx.send(wire.into_frames()).await {
            tracing::debug!(error = %err, "engine-facing task socket closed");
        }
    }

    /// Handles frames from the engine-facing socket; unreadable ones are dropped.
    async fn engine_frames(&mut self, frames: Frames) {
        if let Ok(wire) = WireMessage::split(frames) {
            self.engine_reply(wire).await;
        }
    }

    async fn engine_reply(&mut self, wire: WireMessage) {
        let Some(uuid) = wire
            .idents
            .first()
            .and_then(|id| std::str::from_utf8(id).ok())
            .map(str::to_owned)
        else {
            return;
        };
        let parent = msg_id_of(&wire.parent_header);
        let Some(msg_id) = parent else {
            tracing::debug!(engine.uuid = %uuid, "dropped an engine reply without a parent");
            return;
        };
        if let Some(slot) = self.engines.iter_mut().find(|slot| slot.uuid == uuid) {
            slot.load = slot.load.saturating_sub(1);
        }
        let was_running = self
            .running
            .get_mut(&uuid)
            .is_some_and(|running| running.remove(&msg_id));
        if !was_running {
            tracing::debug!(msg_id, "dropped a reply to a task not running there");
            return;
        }
        self.handle_result(wire, uuid, msg_id).await;
    }

    /// Acts on a task's reply: reschedule (unmet dependency, retry) or deliver it.
    async fn handle_result(&mut self, wire: WireMessage, uuid: String, msg_id: String) {
        let flags = if self.store_records {
            ReplyFlags::<Text<'_>>::parse(&wire.metadata)
        } else {
            ReplyFlags::<IgnoredAny>::parse(&wire.metadata)
                .map(|(status, met, _)| (status, met, ReadFields::default()))
        };
        // Unreadable flags count as a failure; the Hub then reads the reply itself.
        let (status, dependencies_met, read) = flags.unwrap_or((None, None, ReadFields::default()));
        let Some(job) = self.jobs.get_mut(&msg_id) else {
            return;
        };
        // ipyparallel drops a reply without `status`; we count it as a failure instead.
        let status = status.as_deref().unwrap_or("error");
        let unmet = dependencies_met == Some(false);
        let retry = status != "ok" && status != "aborted" && job.retries > 0;
        if unmet || retry {
            job.blacklist.insert(uuid.clone());
        }
        // A failure is retried only where another engine could take it; when none is left
        // the client gets the real error (ipyparallel would hold the task forever).
        let retry = retry && {
            let job = &*job;
            self.engines.iter().any(|slot| {
                !job.blacklist.contains(&slot.uuid)
                    && (job.targets.is_empty() || job.targets.contains(&slot.uuid))
            })
        };
        if unmet || retry {
            if let Some(job) = self.jobs.get_mut(&msg_id) {
                if !unmet {
                    job.retries -= 1;
                }
            }
            tracing::debug!(msg_id, engine.uuid = %uuid, unmet, "rescheduling a task");
            self.enqueue_ready(msg_id);
            self.update_graph().await;
            return;
        }
        let Some(job) = self.jobs.remove(&msg_id) else {
            return;
        };
        self.record_finished(&msg_id, status == "ok", Some(&uuid));
        let mut wire = wire;
        wire.idents = match job.client {
            Some(client) => vec![client, Bytes::from(uuid)],
            None => Vec::new(),
        };
        self.deliver(&msg_id, read, wire).await;
        self.update_graph().await;
    }

    /// Sends the final reply of task `msg_id` to its client (if any) and shows it to the Hub.
    async fn deliver(&mut self, msg_id: &str, read: ReadFields, wire: WireMessage) {
        let _ = self
            .hub
            .send(HubEvent::TaskResult {
                msg_id: msg_id.to_owned(),
                read: read.boxed(),
                wire: wire.clone(),
            })
            .await;
        if wire.idents.is_empty() {
            return; // a Hub resubmission: nobody waits on this socket
        }
        if let Err(err) = self.client_tx.send(wire.into_frames()).await {
            tracing::debug!(error = %err, "client-facing task socket closed");
        }
    }

    /// Answers queued (not yet dispatched) jobs as aborted; running ones are left to their
    /// engine, which answers the same `abort_request`.
    async fn abort_queued(&mut self, msg_ids: &[String]) {
        for msg_id in msg_ids {
            let queued = self.parked.remove(msg_id) || self.blocked.remove(msg_id) || {
                let before = self.ready.len();
                self.ready.retain(|id| id != msg_id);
                self.ready.len() != before
            };
            if !queued {
                continue;
            }
            let Some(job) = self.jobs.remove(msg_id) else {
                continue;
            };
            tracing::debug!(msg_id, "aborted a queued task");
            self.record_finished(&job.msg_id, false, None);
            let header = self.session.header("apply_reply");
            let frames = self.session.serialize_parts(
                job.client.iter().cloned().collect(),
                to_json_bytes(&header),
                job.header.clone(),
                Bytes::from_static(br#"{"status":"aborted"}"#),
                Bytes::from_static(br#"{"status":"aborted"}"#),
                Vec::new(),
            );
            if let Ok(wire) = WireMessage::split(frames) {
                self.deliver(&job.msg_id, ReadFields::default(), wire).await;
            }
        }
        self.update_graph().await;
    }

    /// Fails a job with a scheduler-made error reply (`apply_reply`, metadata `{}`).
    async fn fail(&mut self, job: Job, ename: &str) {
        tracing::debug!(msg_id = %job.msg_id, ename, "task failed in the scheduler");
        self.record_finished(&job.msg_id, false, None);
        let header = self.session.header("apply_reply");
        let evalue = match ename {
            "TypeError" => "the task scheduler runs apply_request and execute_request only",
            _ => "",
        };
        let content = error_content(ename, evalue);
        let frames = self.session.serialize_parts(
            job.client.iter().cloned().collect(),
            to_json_bytes(&header),
            job.header.clone(),
            Bytes::from_static(b"{}"),
            to_json_bytes(&content),
            Vec::new(),
        );
        if let Ok(wire) = WireMessage::split(frames) {
            let mut wire = wire;
            if job.client.is_none() {
                wire.idents.clear();
            }
            self.deliver(&job.msg_id, ReadFields::default(), wire).await;
        }
    }

    /// Re-evaluates waiting jobs: fail the impossible, release the met, run what can run.
    ///
    /// Only the dependents of tasks finished since the last call are re-checked (O(their
    /// count), not O(blocked)); a job failed here finishes too, so its own dependents follow
    /// in the same call.
    async fn update_graph(&mut self) {
        loop {
            self.release_dependents().await;
            self.run_ready().await;
            // A job that failed while running the queue (impossible dependency) may have
            // dependents of its own.
            if self.newly_finished.is_empty() {
                break;
            }
        }
    }

    /// Fails the blocked dependents of newly finished tasks that can never run, and moves
    /// those whose `after` is met to the ready queue (in the order they were blocked).
    async fn release_dependents(&mut self) {
        while !self.newly_finished.is_empty() {
            for done in std::mem::take(&mut self.newly_finished) {
                let Some(waiting) = self.dependents.remove(&done) else {
                    continue;
                };
                for msg_id in waiting {
                    if !self.blocked.contains(&msg_id) {
                        continue; // released, timed out or aborted already
                    }
                    let Some(job) = self.jobs.get(&msg_id) else {
                        self.blocked.remove(&msg_id);
                        continue;
                    };
                    let unreachable = job.after.is_unreachable(&self.completed, &self.failed)
                        || job.follow.is_unreachable(&self.completed, &self.failed);
                    if unreachable {
                        self.blocked.remove(&msg_id);
                        if let Some(job) = self.jobs.remove(&msg_id) {
                            self.fail(job, "ImpossibleDependency").await;
                        }
                    } else if job.after.is_met(&self.completed, &self.failed) {
                        self.blocked.remove(&msg_id);
                        self.ready.push_back(msg_id);
                    }
                }
            }
        }
    }

    /// Runs ready jobs, oldest first, while engines have room.
    async fn run_ready(&mut self) {
        let mut waiting = VecDeque::new();
        while let Some(msg_id) = self.ready.pop_front() {
            if !self.engines.iter().any(|slot| self.is_available(slot)) {
                self.ready.push_front(msg_id);
                break;
            }
            let follow_unreachable = self
                .jobs
                .get(&msg_id)
                .is_some_and(|job| job.follow.is_unreachable(&self.completed, &self.failed));
            if follow_unreachable {
                if let Some(job) = self.jobs.remove(&msg_id) {
                    self.fail(job, "ImpossibleDependency").await;
                }
                continue;
            }
            if self.try_run(&msg_id).await == Attempt::Wait {
                waiting.push_back(msg_id);
            }
        }
        // Jobs that could not run yet keep their place at the front.
        while let Some(msg_id) = waiting.pop_back() {
            self.ready.push_front(msg_id);
        }
    }
}
