//! [`AsyncResult`]: the handle on submitted work, filled by the client's IO task.
//!
//! The IO task only routes a reply (by its parent `msg_id`) into the result's slot; the
//! reply is parsed and its values decoded when the caller reads them, on the caller's task.
//! Reading never consumes anything, so a result can be read, waited on and inspected many
//! times.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::Stream;
use serde_json::Value;

use super::error::{ClientError, ClientResult, Failure};
use crate::protocol::apply::read_reply;
use crate::protocol::{date, JsonMap, Message, RemoteError, Timestamp, WireMessage};
use crate::serialize::Payload;

/// Turns the returned payloads of one reply into values.
pub(crate) type Decoder<T> = fn(&[Payload]) -> ClientResult<Vec<T>>;

/// Shape marker: the result of one request; awaiting it gives one value.
#[derive(Debug)]
pub struct One;

/// Shape marker: the result of several requests (or a map); awaiting it gives a `Vec`.
#[derive(Debug)]
pub struct Many;

/// What happened to one request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The reply arrived (still unparsed); `engine` is the engine id the IO task saw.
    Reply {
        wire: WireMessage,
        engine: Option<u32>,
        received: Timestamp,
    },
    /// The request failed without a reply (engine death, lost controller, timeout, close).
    Failed {
        failure: Failure,
        engine: Option<u32>,
        received: Timestamp,
    },
}

/// One request of a result.
#[derive(Debug)]
pub(crate) struct Slot {
    msg_id: String,
    /// The request header's date, as sent (parsed only when metadata is read).
    submitted: String,
    outcome: Option<Outcome>,
    stdout: String,
    stderr: String,
}

/// What a waiter waits for.
#[derive(Debug, Clone, Copy)]
enum Need {
    /// At least this many requests finished.
    Count(usize),
    /// This request finished.
    Slot(usize),
}

#[derive(Debug)]
struct ResultState {
    slots: Vec<Slot>,
    done: usize,
    /// Slot indices in the order their outcome arrived.
    arrivals: Vec<usize>,
    finished_at: Option<tokio::time::Instant>,
    wakers: Vec<(Need, Waker)>,
}

impl ResultState {
    fn satisfied(&self, need: Need) -> bool {
        match need {
            Need::Count(n) => self.done >= n,
            Need::Slot(i) => self.slots.get(i).is_none_or(|s| s.outcome.is_some()),
        }
    }
}

/// The state a result shares with the IO task.
#[derive(Debug)]
pub(crate) struct ResultShared {
    state: Mutex<ResultState>,
}

impl ResultShared {
    /// A result for the given requests (`msg_id`, submission date).
    pub(crate) fn new(requests: Vec<(String, String)>) -> Arc<Self> {
        let slots = requests
            .into_iter()
            .map(|(msg_id, submitted)| Slot {
                msg_id,
                submitted,
                outcome: None,
                stdout: String::new(),
                stderr: String::new(),
            })
            .collect::<Vec<_>>();
        let finished_at = slots.is_empty().then(tokio::time::Instant::now);
        Arc::new(Self {
            state: Mutex::new(ResultState {
                arrivals: Vec::with_capacity(slots.len()),
                slots,
                done: 0,
                finished_at,
                wakers: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ResultState> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the outcome of request `index`; false if it already had one.
    pub(crate) fn complete(&self, index: usize, outcome: Outcome) -> bool {
        let wake: Vec<Waker> = {
            let mut state = self.lock();
            let Some(slot) = state.slots.get_mut(index) else {
                return false;
            };
            if slot.outcome.is_some() {
                return false;
            }
            slot.outcome = Some(outcome);
            state.done += 1;
            state.arrivals.push(index);
            if state.done == state.slots.len() {
                state.finished_at = Some(tokio::time::Instant::now());
            }
            if state.wakers.is_empty() {
                return true;
            }
            let waiting = std::mem::take(&mut state.wakers);
            let (ready, still): (Vec<_>, Vec<_>) = waiting
                .into_iter()
                .partition(|(need, _)| state.satisfied(*need));
            state.wakers = still;
            ready.into_iter().map(|(_, waker)| waker).collect()
        };
        for waker in wake {
            waker.wake();
        }
        true
    }

    /// Appends iopub stream text (`stdout`/`stderr`) to request `index`.
    pub(crate) fn append_output(&self, index: usize, name: &str, text: &str) {
        let mut state = self.lock();
        if let Some(slot) = state.slots.get_mut(index) {
            match name {
                "stderr" => slot.stderr.push_str(text),
                _ => slot.stdout.push_str(text),
            }
        }
    }

    fn poll_need(&self, need: Need, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.satisfied(need) {
            return Poll::Ready(());
        }
        if !state.wakers.iter().any(|(_, w)| w.will_wake(cx.waker())) {
            state.wakers.push((need, cx.waker().clone()));
        }
        Poll::Pending
    }
}

/// One request's failure as the reader sees it.
#[derive(Debug)]
enum SlotError {
    Remote(Option<u32>, Box<RemoteError>),
    Aborted(String),
    Local(ClientError),
}

impl SlotError {
    fn into_error(self) -> ClientError {
        match self {
            Self::Remote(_, error) => ClientError::Remote(error),
            Self::Aborted(msg_id) => ClientError::TaskAborted { msg_id },
            Self::Local(error) => error,
        }
    }
}

/// Values of one reply, each with the engine that produced it.
type SlotValues<T> = Vec<(Option<u32>, T)>;

fn engine_id_of(error: &RemoteError) -> Option<u32> {
    error
        .engine_info
        .get("engine_id")
        .and_then(Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
}

/// Reads `broadcast_targets` (`[[uuid, id], …]` or `[uuid, …]`) of a coalesced reply.
fn broadcast_targets(metadata: &JsonMap) -> Option<Vec<Option<u32>>> {
    let targets = metadata.get("broadcast_targets")?.as_array()?;
    Some(
        targets
            .iter()
            .map(|t| {
                t.as_array()
                    .and_then(|pair| pair.get(1))
                    .and_then(Value::as_u64)
                    .and_then(|id| u32::try_from(id).ok())
            })
            .collect(),
    )
}

fn read_slot<T>(slot: &Slot, decode: Decoder<T>) -> Result<SlotValues<T>, SlotError> {
    match &slot.outcome {
        None => Err(SlotError::Local(ClientError::Timeout {
            what: "a result that is not ready",
            after: Duration::ZERO,
        })),
        Some(Outcome::Failed {
            failure, engine, ..
        }) => Err(match failure {
            Failure::Remote(error) => SlotError::Remote(*engine, Box::new(error.clone())),
            other => SlotError::Local(other.to_error(&slot.msg_id)),
        }),
        Some(Outcome::Reply { wire, engine, .. }) => {
            let msg = wire
                .clone()
                .parse()
                .map_err(|e| SlotError::Local(e.into()))?;
            read_reply_values(&slot.msg_id, &msg, *engine, decode)
        }
    }
}

fn read_reply_values<T>(
    msg_id: &str,
    msg: &Message,
    engine: Option<u32>,
    decode: Decoder<T>,
) -> Result<SlotValues<T>, SlotError> {
    let content = msg.content_map();
    match content.get("status").and_then(Value::as_str) {
        Some("ok") => {}
        Some("aborted") => return Err(SlotError::Aborted(msg_id.to_owned())),
        _ => {
            let error = RemoteError::from_content(content);
            let engine = engine.or_else(|| engine_id_of(&error));
            return Err(SlotError::Remote(engine, Box::new(error)));
        }
    }
    let local = |e: crate::Error| SlotError::Local(e.into());
    if let Some(targets) = broadcast_targets(&msg.metadata) {
        // A coalesced broadcast reply: every target's buffers, concatenated in target order,
        // under the content of the last reply. We assume every engine returned the same
        // number of frames (true for one function and one serializer).
        let count = targets.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        if !msg.buffers.len().is_multiple_of(count) {
            return Err(local(crate::Error::invalid_message(format!(
                "coalesced reply with {} frames for {count} engines",
                msg.buffers.len()
            ))));
        }
        let per = msg.buffers.len() / count;
        let mut values = Vec::new();
        for (i, engine) in targets.into_iter().enumerate() {
            let frames = &msg.buffers[i * per..(i + 1) * per];
            let payloads = read_reply(content, frames).map_err(local)?;
            let decoded = decode(&payloads).map_err(SlotError::Local)?;
            values.extend(decoded.into_iter().map(|v| (engine, v)));
        }
        return Ok(values);
    }
    let payloads = read_reply(content, &msg.buffers).map_err(local)?;
    let decoded = decode(&payloads).map_err(SlotError::Local)?;
    Ok(decoded.into_iter().map(|v| (engine, v)).collect())
}

/// Folds per-request failures into one error, as ipyparallel does: one failure is itself,
/// several remote ones are a `Composite`; a local failure (lost controller, close) wins.
fn fold_errors(errors: Vec<SlotError>) -> ClientError {
    let mut remote = Vec::new();
    let count = errors.len();
    for error in errors {
        match error {
            SlotError::Local(error) => return error,
            SlotError::Remote(engine, error) if count == 1 => {
                let _ = engine;
                return ClientError::Remote(error);
            }
            SlotError::Aborted(msg_id) if count == 1 => {
                return ClientError::TaskAborted { msg_id };
            }
            SlotError::Remote(engine, error) => remote.push((engine, *error)),
            SlotError::Aborted(msg_id) => remote.push((
                None,
                RemoteError::new("TaskAborted", format!("task {msg_id} was aborted")),
            )),
        }
    }
    ClientError::Composite(remote)
}

/// Per-request metadata, as ipyparallel's `AsyncResult.metadata` holds it.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct TaskMetadata {
    /// The request's id.
    pub msg_id: String,
    /// The engine that answered (or died), if known.
    pub engine_id: Option<u32>,
    /// That engine's uuid, if known.
    pub engine_uuid: Option<String>,
    /// When the client sent the request.
    pub submitted: Option<Timestamp>,
    /// When the engine started it (reply metadata `started`).
    pub started: Option<Timestamp>,
    /// When the engine finished it (reply header date).
    pub completed: Option<Timestamp>,
    /// When the client received the reply.
    pub received: Option<Timestamp>,
    /// `ok`, `error` or `aborted`; `None` while pending.
    pub status: Option<String>,
    /// Text the task wrote to stdout (from IOPub, this client's requests only).
    pub stdout: String,
    /// Text the task wrote to stderr.
    pub stderr: String,
}

fn slot_metadata(slot: &Slot) -> TaskMetadata {
    let mut meta = TaskMetadata {
        msg_id: slot.msg_id.clone(),
        submitted: date::parse(&slot.submitted),
        stdout: slot.stdout.clone(),
        stderr: slot.stderr.clone(),
        ..TaskMetadata::default()
    };
    match &slot.outcome {
        None => {}
        Some(Outcome::Failed {
            engine, received, ..
        }) => {
            meta.engine_id = *engine;
            meta.received = Some(*received);
            meta.status = Some("error".into());
        }
        Some(Outcome::Reply {
            wire,
            engine,
            received,
        }) => {
            meta.engine_id = *engine;
            meta.received = Some(*received);
            if let Ok(msg) = wire.clone().parse() {
                let text = |map: &JsonMap, key: &str| {
                    map.get(key).and_then(Value::as_str).map(str::to_owned)
                };
                meta.engine_uuid = text(&msg.metadata, "engine");
                meta.started = text(&msg.metadata, "started").and_then(|d| date::parse(&d));
                meta.completed = msg.header.date();
                meta.status = text(msg.content_map(), "status");
                if meta.engine_id.is_none() {
                    meta.engine_id = engine_id_of(&RemoteError::from_content(msg.content_map()));
                }
            }
        }
    }
    meta
}

/// A handle on submitted work: await it, poll it, or stream its values as they arrive.
///
/// `T` is the value type; `S` is [`One`] (awaiting gives a `T`) or [`Many`] (awaiting gives
/// a `Vec<T>`, flattened in submission order). Reading never consumes the result.
///
/// # Errors
/// A task that raised is [`ClientError::Remote`]; several failures are a
/// [`ClientError::Composite`]; `status: aborted` is [`ClientError::TaskAborted`].
pub struct AsyncResult<T, S = Many> {
    shared: Arc<ResultShared>,
    decode: Decoder<T>,
    ordered: bool,
    created: tokio::time::Instant,
    _shape: PhantomData<fn() -> S>,
}

impl<T, S> std::fmt::Debug for AsyncResult<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("AsyncResult")
            .field("requests", &state.slots.len())
            .field("done", &state.done)
            .finish()
    }
}

impl<T, S> AsyncResult<T, S> {
    /// A weak handle on the shared state, to check that nothing else keeps it alive.
    #[cfg(test)]
    pub(crate) fn shared_weak(&self) -> std::sync::Weak<ResultShared> {
        Arc::downgrade(&self.shared)
    }

    pub(crate) fn new(shared: Arc<ResultShared>, decode: Decoder<T>, ordered: bool) -> Self {
        Self {
            shared,
            decode,
            ordered,
            created: tokio::time::Instant::now(),
            _shape: PhantomData,
        }
    }

    /// The ids of the requests behind this result, in submission order.
    pub fn msg_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .slots
            .iter()
            .map(|s| s.msg_id.clone())
            .collect()
    }

    /// Whether every request has an outcome.
    pub fn ready(&self) -> bool {
        let state = self.shared.lock();
        state.done == state.slots.len()
    }

    /// How many requests have an outcome.
    pub fn progress(&self) -> usize {
        self.shared.lock().done
    }

    /// `Some(true)` when ready and every request succeeded, `Some(false)` when ready with a
    /// failure, `None` while not ready.
    pub fn successful(&self) -> Option<bool> {
        let state = self.shared.lock();
        if state.done < state.slots.len() {
            return None;
        }
        Some(state.slots.iter().all(|slot| {
            match &slot.outcome {
                Some(Outcome::Reply { wire, .. }) => wire
                    .clone()
                    .parse()
                    .is_ok_and(|m| m.content_map().get("status") == Some(&Value::from("ok"))),
                _ => false,
            }
        }))
    }

    /// Waits up to `timeout` for every request to finish; true if they did.
    pub async fn wait(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.finished()).await.is_ok()
    }

    /// Waits (cancellably, without a time limit) until every request has an outcome.
    pub async fn finished(&self) {
        let need = Need::Count(self.shared.lock().slots.len());
        std::future::poll_fn(|cx| self.shared.poll_need(need, cx)).await;
    }

    /// Time since submission, until the last outcome arrived (or until now while pending).
    pub fn elapsed(&self) -> Duration {
        match self.shared.lock().finished_at {
            Some(at) => at.saturating_duration_since(self.created),
            None => self.created.elapsed(),
        }
    }

    /// Per-request metadata, in submission order (a snapshot).
    pub fn metadata(&self) -> Vec<TaskMetadata> {
        self.shared.lock().slots.iter().map(slot_metadata).collect()
    }

    /// Sum over finished requests of the time each ran on its engine (`completed - started`).
    pub fn serial_time(&self) -> Duration {
        self.metadata()
            .iter()
            .filter_map(|m| Some((m.completed? - m.started?).to_std().unwrap_or_default()))
            .sum()
    }

    /// Time from the first submission to the last completion (engine clock for the latter).
    pub fn wall_time(&self) -> Duration {
        let meta = self.metadata();
        let first = meta.iter().filter_map(|m| m.submitted).min();
        let last = meta.iter().filter_map(|m| m.completed.or(m.received)).max();
        match (first, last) {
            (Some(first), Some(last)) => (last - first).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Every value with its engine, in submission order; fails as described on the type.
    fn collect(&self) -> ClientResult<SlotValues<T>> {
        let state = self.shared.lock();
        let mut values = Vec::new();
        let mut errors = Vec::new();
        for slot in &state.slots {
            match read_slot(slot, self.decode) {
                Ok(v) => values.extend(v),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(values)
        } else {
            Err(fold_errors(errors))
        }
    }

    /// Waits up to `timeout`, then maps engine id → value (direct and broadcast results).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if not ready in time; the result's failure otherwise.
    pub async fn get_dict(&self, timeout: Duration) -> ClientResult<BTreeMap<u32, T>> {
        self.ready_within(timeout).await?;
        let mut dict = BTreeMap::new();
        for (engine, value) in self.collect()? {
            let engine = engine.ok_or_else(|| {
                ClientError::Core(crate::Error::invalid_message(
                    "a reply without an engine id (load-balanced results have no engine dict)",
                ))
            })?;
            dict.insert(engine, value);
        }
        Ok(dict)
    }

    async fn ready_within(&self, timeout: Duration) -> ClientResult<()> {
        if self.wait(timeout).await {
            Ok(())
        } else {
            Err(ClientError::Timeout {
                what: "the result",
                after: timeout,
            })
        }
    }

    /// Streams the values as they arrive: in submission order, or, for an unordered map,
    /// in arrival order. A failed request yields one `Err` item.
    pub fn into_stream(self) -> ResultStream<T> {
        let ordered = self.ordered;
        ResultStream {
            shared: self.shared,
            decode: self.decode,
            ordered,
            position: 0,
            buffer: VecDeque::new(),
        }
    }
}

impl<T> AsyncResult<T, One> {
    /// Waits up to `timeout` for the value.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if not ready in time; the task's failure otherwise.
    pub async fn get(&self, timeout: Duration) -> ClientResult<T> {
        self.ready_within(timeout).await?;
        self.take_one()
    }

    fn take_one(&self) -> ClientResult<T> {
        self.collect()?
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| {
                ClientError::Core(crate::Error::invalid_message("the reply returned no value"))
            })
    }
}

impl<T> AsyncResult<T, Many> {
    /// Waits up to `timeout` for every value (flattened, in submission order).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] if not ready in time; the tasks' failures otherwise.
    pub async fn get(&self, timeout: Duration) -> ClientResult<Vec<T>> {
        self.ready_within(timeout).await?;
        self.take_all()
    }

    fn take_all(&self) -> ClientResult<Vec<T>> {
        Ok(self.collect()?.into_iter().map(|(_, v)| v).collect())
    }
}

impl<T> Future for AsyncResult<T, One> {
    type Output = ClientResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let need = Need::Count(self.shared.lock().slots.len());
        match self.shared.poll_need(need, cx) {
            Poll::Ready(()) => Poll::Ready(self.take_one()),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Future for AsyncResult<T, Many> {
    type Output = ClientResult<Vec<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let need = Need::Count(self.shared.lock().slots.len());
        match self.shared.poll_need(need, cx) {
            Poll::Ready(()) => Poll::Ready(self.take_all()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The values of an [`AsyncResult`] as they arrive (see [`AsyncResult::into_stream`]).
pub struct ResultStream<T> {
    shared: Arc<ResultShared>,
    decode: Decoder<T>,
    ordered: bool,
    /// Next slot (ordered) or next arrival (unordered) to read.
    position: usize,
    buffer: VecDeque<ClientResult<T>>,
}

impl<T> std::fmt::Debug for ResultStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("ordered", &self.ordered)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<T> ResultStream<T> {
    /// The next value, or `None` when every value has been yielded.
    pub async fn next(&mut self) -> Option<ClientResult<T>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<ClientResult<T>>> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                return Poll::Ready(Some(item));
            }
            let state = self.shared.lock();
            if self.position >= state.slots.len() {
                return Poll::Ready(None);
            }
            let index = if self.ordered {
                self.position
            } else {
                match state.arrivals.get(self.position) {
                    Some(&index) => index,
                    None => {
                        drop(state);
                        let need = Need::Count(self.position + 1);
                        match self.shared.poll_need(need, cx) {
                            Poll::Ready(()) => continue,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }
            };
            let Some(slot) = state.slots.get(index) else {
                return Poll::Ready(None);
            };
            if slot.outcome.is_none() {
                drop(state);
                match self.shared.poll_need(Need::Slot(index), cx) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            match read_slot(slot, self.decode) {
                Ok(values) => self.buffer.extend(values.into_iter().map(|(_, v)| Ok(v))),
                Err(error) => self.buffer.push_back(Err(error.into_error())),
            }
            self.position += 1;
        }
    }
}

impl<T> Stream for ResultStream<T> {
    type Item = ClientResult<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // `ResultStream` holds no self-references, so it is `Unpin` whenever `T` is; we only
        // need `&mut`, which `get_mut` gives for `Unpin` types.
        self.get_mut().poll_item(cx)
    }
}

impl<T> Unpin for ResultStream<T> {}
impl<T, S> Unpin for AsyncResult<T, S> {}
