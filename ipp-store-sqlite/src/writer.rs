//! The writer thread: owns the write connection and commits queued writes in batches.
//!
//! Callers queue [`Op`]s on a bounded channel and return; the thread takes what is queued
//! (up to `batch_size`) and commits it as one transaction, so under load batches grow and
//! the per-commit cost is shared, while a lone write is committed at once. After each
//! commit it publishes how many ops it has finished on a watch channel, which is how reads
//! wait for the writes queued before them.
//!
//! A failed write is logged once (until a batch succeeds again) and kept for the store to
//! return on its next call; the thread goes on with the next op.
//!
//! Assignments (the engine a task was sent to) whose request is already committed are held
//! back to be written with the task's next update ([`crate::held`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipp_core::store::{
    Query, ReceivedRequest, ReceivedResult, RecordKey, RecordUpdate, TaskRecord,
};
use rusqlite::{params_from_iter, Connection, Transaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bind::{update_fields, Binder, Field};
use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::held::Held;
use crate::ids::BuildBatchHasher;
use crate::query::translate;
use crate::rows::RequestRows;
use crate::schema::{all_columns, is_result_side, Tables};

/// One queued write.
#[derive(Debug)]
pub(crate) enum Op {
    /// Insert a new record (the store checked that its id is new).
    Add(Box<TaskRecord>),
    /// Change fields of a record.
    Update(String, Box<RecordUpdate>),
    /// Insert the record of a request as the Hub received it (built on this thread).
    AddReceived(Box<ReceivedRequest>),
    /// Change a record with a reply as the Hub received it (built on this thread).
    UpdateReceived(Box<ReceivedResult>),
    /// Delete these records.
    DropIds(Vec<String>),
    /// Delete the records matching a query; answers with their ids once committed.
    DropMatching(Query, oneshot::Sender<Result<Vec<String>>>),
    /// Finish everything queued before, then stop; answers once stopped.
    Close(oneshot::Sender<()>),
    /// Write every held assignment (someone is about to read).
    WriteHeld,
    /// What is left of an update once folded into the add earlier in its batch (never
    /// queued; removed before the batch is written).
    Folded,
}

impl Op {
    /// The record an add or update is about; empty for other ops.
    pub(crate) fn msg_id(&self) -> &str {
        match self {
            Op::Add(record) => &record.msg_id,
            Op::Update(msg_id, _) => msg_id,
            Op::AddReceived(request) => request.msg_id(),
            Op::UpdateReceived(result) => result.msg_id(),
            Op::DropIds(_) | Op::DropMatching(..) | Op::Close(_) | Op::WriteHeld | Op::Folded => "",
        }
    }

    /// Whether every held assignment must be written before this op: reads (which queue
    /// [`Op::WriteHeld`]) and drops see them, and closing loses none.
    fn needs_every_assignment(&self) -> bool {
        matches!(
            self,
            Op::DropIds(_) | Op::DropMatching(..) | Op::Close(_) | Op::WriteHeld
        )
    }
}

/// The first write error not yet returned to a caller.
pub(crate) type PendingError = Arc<Mutex<Option<Arc<Error>>>>;

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) table: String,
    pub(crate) batch_size: usize,
    /// Writes that make a full batch: `batch_size`, or the queue's capacity if smaller.
    pub(crate) full_batch: usize,
    /// How long a transaction that was not full waits before the next one begins.
    pub(crate) commit_interval: Duration,
    pub(crate) inbox: mpsc::Receiver<Op>,
    /// How many ops are finished (committed or failed), published after each batch.
    pub(crate) done: watch::Sender<u64>,
    pub(crate) pending_error: PendingError,
    /// Checkpoints the WAL off this thread; stopped when the writer stops.
    pub(crate) checkpointer: Checkpointer,
    /// Assignments held back to be written with their task's next update.
    pub(crate) held: Held,
    /// How many assignments are held, published before `done` (a read that finds any
    /// queues [`Op::WriteHeld`]).
    pub(crate) held_count: Arc<AtomicUsize>,
    /// Waits for the queue with a deadline while assignments are held (built on first use).
    pub(crate) timer: Option<tokio::runtime::Runtime>,
    /// The rows of the requests this writer added whose results are still to come.
    pub(crate) rows: RequestRows,
}

/// What the writer's wait for work ended with.
enum Received {
    /// Ops are in the batch.
    Ops,
    /// No ops, but a held assignment is due.
    Due,
    /// Every sender is gone.
    Closed,
}

/// What a batch owes callers once it is committed.
enum Reply {
    Dropped(oneshot::Sender<Result<Vec<String>>>, Result<Vec<String>>),
    Closed(oneshot::Sender<()>),
}

impl Writer {
    /// Runs until every sender is gone or a [`Op::Close`] is processed.
    pub(crate) fn run(mut self) {
        let mut binder = Binder::default();
        let mut sql = Sql::new(Tables::new(&self.table));
        let mut finished: u64 = 0;
        let mut failing = false;
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            if let Received::Closed = self.receive(&mut batch) {
                break;
            }
            let started = Instant::now();
            let full = batch.len() >= self.full_batch;
            let count = batch.len() as u64;
            let (replies, errors) = self.commit(&mut batch, &mut sql, &mut binder);
            finished += count;
            if errors.is_empty() {
                if failing {
                    tracing::info!(path = %self.path.display(), "sqlite task database writes succeed again");
                    failing = false;
                }
            } else {
                for err in errors {
                    if !failing {
                        tracing::error!(path = %self.path.display(), table = %self.table, error = %error_chain(&err),
                            "sqlite task database write failed; records are being lost \
                             (logged once until writes succeed again)");
                        failing = true;
                    } else {
                        tracing::debug!(error = %error_chain(&err), "sqlite task database write failed");
                    }
                    self.keep(err);
                }
            }
            self.held_count.store(self.held.len(), Ordering::SeqCst);
            self.done.send_replace(finished);
            let mut closing = false;
            for reply in replies {
                match reply {
                    Reply::Dropped(tx, result) => {
                        let _ = tx.send(result);
                    }
                    Reply::Closed(tx) => {
                        closing = true;
                        let _ = tx.send(());
                    }
                }
            }
            if closing {
                break;
            }
            if !full {
                self.linger(started);
            }
        }
        if !self.held.is_empty() {
            // Every sender dropped without a close: write what is held, as a close would.
            batch.push(Op::WriteHeld);
            let (_, errors) = self.commit(&mut batch, &mut sql, &mut binder);
            for err in errors {
                tracing::error!(path = %self.path.display(), error = %error_chain(&err),
                    "sqlite task database write failed while stopping");
            }
        }
        let Writer {
            conn,
            path,
            checkpointer,
            ..
        } = self;
        // The connection holds the WAL hook, which holds a sender of the checkpointer's.
        if let Err((_, err)) = conn.close() {
            tracing::debug!(path = %path.display(), error = %err, "closing the sqlite writer's connection failed");
        }
        checkpointer.stop();
        tracing::debug!(path = %path.display(), "sqlite writer stopped");
    }

    /// Waits for queued ops (up to a batch) and takes them; while assignments are held,
    /// only until the oldest is due.
    fn receive(&mut self, batch: &mut Vec<Op>) -> Received {
        let Some(due) = self.held.next_due() else {
            return self.receive_blocking(batch);
        };
        let wait = due.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            // Due now: whatever is queued (up to a batch) goes with it, without waiting.
            while batch.len() < self.batch_size {
                match self.inbox.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) if batch.is_empty() => {
                        return Received::Closed;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            }
            return if batch.is_empty() {
                Received::Due
            } else {
                Received::Ops
            };
        }
        let timer = match &self.timer {
            Some(timer) => timer,
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(timer) => self.timer.insert(timer),
                Err(err) => {
                    // Without a timer, wait as if nothing were held: held assignments are
                    // then written with the next ops, a read or the close.
                    tracing::debug!(error = %err, "sqlite writer: no timer for held assignments");
                    return self.receive_blocking(batch);
                }
            },
        };
        let (inbox, limit) = (&mut self.inbox, self.batch_size);
        match timer
            .block_on(async { tokio::time::timeout(wait, inbox.recv_many(batch, limit)).await })
        {
            Ok(0) => Received::Closed,
            Ok(_) => Received::Ops,
            Err(_) => Received::Due,
        }
    }

    /// Blocking receive (a dedicated thread, not a runtime worker) of everything queued, up
    /// to a batch; the queue's permits come back in one go.
    fn receive_blocking(&mut self, batch: &mut Vec<Op>) -> Received {
        match self.inbox.blocking_recv_many(batch, self.batch_size) {
            0 => Received::Closed,
            _ => Received::Ops,
        }
    }

    /// After a transaction that was not full (begun at `started`), waits until
    /// `commit_interval` has passed so that the next one holds more writes: under moderate
    /// load this turns one small transaction per write into one per interval. The store
    /// unparks the thread when someone waits for the writes (a read's flush, a
    /// `drop_matching`, `close`) or a full batch is queued; an unpark that came during the
    /// transaction ends the wait at once.
    fn linger(&self, started: Instant) {
        let deadline = started + self.commit_interval;
        let now = Instant::now();
        if now < deadline {
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Keeps `err` for the store to return, unless an earlier one is still waiting.
    fn keep(&self, err: Error) {
        if let Ok(mut slot) = self.pending_error.lock() {
            slot.get_or_insert_with(|| Arc::new(err));
        }
    }

    /// Applies `batch` in one transaction; returns the replies owed and the errors met.
    fn commit(
        &mut self,
        batch: &mut Vec<Op>,
        sql: &mut Sql,
        binder: &mut Binder,
    ) -> (Vec<Reply>, Vec<Error>) {
        let mut replies = Vec::new();
        let mut errors = Vec::new();
        let path = self.path.clone();
        let sql_err = |operation: &'static str| {
            let path = path.clone();
            move |source| Error::Sqlite {
                operation,
                path,
                source,
            }
        };
        let now = Instant::now();
        if batch.is_empty() && self.held.next_due().is_none_or(|due| due > now) {
            return (replies, errors);
        }
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(source) => {
                errors.push(sql_err("begin")(source));
                for op in batch.drain(..) {
                    fail(op, &mut replies);
                }
                return (replies, errors);
            }
        };
        let mut dead = Vec::with_capacity(batch.len());
        build_received(batch);
        merge_updates_into_adds(batch, &mut dead);
        {
            let mut stmts = BatchStatements::new(&tx);
            for op in batch.drain(..) {
                if op.needs_every_assignment() && !self.held.is_empty() {
                    // Reads and drops (which may match on the engine) see every
                    // assignment; closing loses none.
                    let held = self.held.take_all();
                    write_held(&mut stmts, sql, binder, held, &mut dead, &mut errors, &path);
                }
                match op {
                    Op::Add(mut record) => {
                        match insert(&mut stmts, &sql.insert, binder, &record)
                            .map_err(sql_err("add"))
                        {
                            // The id moves from the written record (freed below) to the map.
                            Ok(()) => self.rows.added(
                                std::mem::take(&mut record.msg_id),
                                stmts.tx.last_insert_rowid(),
                            ),
                            Err(err) => errors.push(err),
                        }
                        dead.push(Op::Add(record));
                    }
                    Op::Update(msg_id, update) if is_assignment(&update) => {
                        // Its request is committed (or it would have folded into the add).
                        if let Some((id, earlier)) = self.held.hold(msg_id, update, now) {
                            dead.push(Op::Update(id, earlier));
                        }
                    }
                    Op::Update(msg_id, mut update) => {
                        if !self.held.is_empty() {
                            if let Some((id, mut assignment)) = self.held.take(&msg_id) {
                                if update.engine_uuid.is_none() {
                                    update.engine_uuid = assignment.engine_uuid.take();
                                }
                                dead.push(Op::Update(id, assignment));
                            }
                        }
                        let row = self.rows.row(&msg_id, update.result_header.is_some());
                        if let Err(err) = apply(&mut stmts, sql, binder, &msg_id, &update, row)
                            .map_err(sql_err("update"))
                        {
                            errors.push(err);
                        }
                        dead.push(Op::Update(msg_id, update));
                    }
                    Op::DropIds(ids) => {
                        let sql = format!(
                            "DELETE FROM {} WHERE msg_id IN (SELECT value FROM json_each(?))",
                            sql.tables.requests
                        );
                        for id in &ids {
                            self.rows.dropped(id);
                        }
                        let list = serde_json::Value::from(ids).to_string();
                        if let Err(err) = tx.execute(&sql, [list]).map_err(sql_err("drop records"))
                        {
                            errors.push(err);
                        }
                    }
                    Op::DropMatching(query, reply) => {
                        let result = delete_matching(&tx, &sql.tables, &query)
                            .map_err(sql_err("drop matching"));
                        if let Ok(ids) = &result {
                            for id in ids {
                                self.rows.dropped(id);
                            }
                        }
                        replies.push(Reply::Dropped(reply, result));
                    }
                    Op::Close(reply) => replies.push(Reply::Closed(reply)),
                    // Received messages were built into adds and updates above.
                    Op::WriteHeld | Op::Folded | Op::AddReceived(_) | Op::UpdateReceived(_) => {}
                }
            }
            let due = self.held.take_due(now);
            write_held(&mut stmts, sql, binder, due, &mut dead, &mut errors, &path);
        }
        let committed = tx.commit();
        if committed.is_ok() {
            self.rows.committed();
        } else {
            self.rows.rolled_back();
        }
        drop(dead); // after the commit: freeing is no part of the transaction
        if let Err(source) = committed {
            errors.push(sql_err("commit")(source));
            // Nothing in the batch was kept: the drops answered above did not happen.
            for reply in &mut replies {
                if let Reply::Dropped(_, result) = reply {
                    *result = Err(Error::RolledBack {
                        operation: "drop matching",
                    });
                }
            }
        }
        (replies, errors)
    }
}

/// Builds the records and updates of the messages in `batch` as the Hub received them: on
/// this thread, so that the Hub's loop (which also routes tasks) only hands them over.
fn build_received(batch: &mut [Op]) {
    for op in batch {
        if !matches!(op, Op::AddReceived(_) | Op::UpdateReceived(_)) {
            continue;
        }
        *op = match std::mem::replace(op, Op::Folded) {
            Op::AddReceived(request) => Op::Add(Box::new(request.into_record())),
            Op::UpdateReceived(result) => {
                let (msg_id, update) = result.into_update();
                Op::Update(msg_id, Box::new(update))
            }
            other => other,
        };
    }
}

/// Folds each update into an earlier op of the same batch about the same record: into the
/// record's add (one `INSERT` with its final values), or into the record's first update
/// (one `UPDATE` with every change). Drops end the folding (an update after a drop must
/// stay an update of whatever is left). Order among the remaining ops is kept; an update
/// folded into an earlier op only moves past ops about other records.
///
/// The emptied updates go to `dead`, freed once the batch is committed.
fn merge_updates_into_adds(batch: &mut Vec<Op>, dead: &mut Vec<Op>) {
    // Which earlier op each foldable update goes into (found without copying any id).
    let mut folds: Vec<(usize, usize)> = Vec::new();
    {
        let mut first: HashMap<&str, usize, BuildBatchHasher> =
            HashMap::with_capacity_and_hasher(batch.len(), BuildBatchHasher::default());
        for (at, op) in batch.iter().enumerate() {
            match op {
                Op::Add(record) => {
                    first.insert(record.msg_id.as_str(), at);
                }
                Op::Update(msg_id, _) => match first.get(msg_id.as_str()) {
                    Some(&into) => folds.push((at, into)),
                    None => {
                        first.insert(msg_id.as_str(), at);
                    }
                },
                // (Received messages are built before: none is left here.)
                Op::Folded | Op::WriteHeld | Op::AddReceived(_) | Op::UpdateReceived(_) => {}
                Op::DropIds(_) | Op::DropMatching(..) | Op::Close(_) => first.clear(),
            }
        }
    }
    if folds.is_empty() {
        return;
    }
    for (at, into) in folds {
        let Some(slot) = batch.get_mut(at) else {
            continue;
        };
        let Op::Update(msg_id, mut update) = std::mem::replace(slot, Op::Folded) else {
            continue;
        };
        let changes = std::mem::take(&mut *update);
        match batch.get_mut(into) {
            Some(Op::Add(record)) => record.apply(changes),
            Some(Op::Update(_, earlier)) => earlier.merge(changes),
            _ => {}
        }
        dead.push(Op::Update(msg_id, update));
    }
    batch.retain(|op| !matches!(op, Op::Folded));
}

/// Writes held assignments on their own (into their requests' rows, see [`apply`]).
fn write_held(
    stmts: &mut BatchStatements<'_>,
    sql: &mut Sql,
    binder: &mut Binder,
    held: Vec<(String, Box<RecordUpdate>)>,
    dead: &mut Vec<Op>,
    errors: &mut Vec<Error>,
    path: &std::path::Path,
) {
    for (msg_id, update) in held {
        if let Err(source) = apply(stmts, sql, binder, &msg_id, &update, None) {
            errors.push(Error::Sqlite {
                operation: "update",
                path: path.to_path_buf(),
                source,
            });
        }
        dead.push(Op::Update(msg_id, update));
    }
}

/// Answers an op that could not run.
fn fail(op: Op, replies: &mut Vec<Reply>) {
    match op {
        Op::DropMatching(_, reply) => replies.push(Reply::Dropped(
            reply,
            Err(Error::RolledBack {
                operation: "drop matching",
            }),
        )),
        Op::Close(reply) => replies.push(Reply::Closed(reply)),
        Op::Add(_)
        | Op::Update(..)
        | Op::AddReceived(_)
        | Op::UpdateReceived(_)
        | Op::DropIds(_)
        | Op::WriteHeld
        | Op::Folded => {}
    }
}

/// The error and its sources on one line, for the log.
fn error_chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The writer's statements' text, built once: the `INSERT` of a record, and the results
/// row's upsert for each set of columns an update changes (a handful of shapes; building
/// the text per update showed in profiles).
struct Sql {
    tables: Tables,
    insert: String,
    upserts: HashMap<u32, String>,
}

impl Sql {
    fn new(tables: Tables) -> Self {
        let marks = vec!["?"; RecordKey::ALL.len()].join(", ");
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({marks})",
            tables.requests,
            all_columns()
        );
        Self {
            tables,
            insert,
            upserts: HashMap::new(),
        }
    }

    /// The upsert for `update`'s result-side columns and appended output, with the shape
    /// that names it (`None` when it has none): `?1` is the msg_id, then each value in order.
    /// The request's row is looked up by msg_id, or `by_row`, given as the last parameter
    /// (for updates without appended output, which must start from the request's): an
    /// `INSERT … VALUES` that reads nothing, whose conflict with a results row of another
    /// msg_id changes nothing.
    fn upsert(&mut self, update: &RecordUpdate, by_row: bool) -> Option<(u32, &str)> {
        let mut shape = 0u32;
        for (key, _) in update_fields(update).filter(|(key, _)| is_result_side(*key)) {
            shape |= 1 << (key as u32);
        }
        let appended = [
            ("stdout", update.append_stdout.is_some()),
            ("stderr", update.append_stderr.is_some()),
        ];
        for (bit, (_, present)) in appended.iter().enumerate() {
            if *present {
                shape |= 1 << (RecordKey::ALL.len() + bit);
            }
        }
        if shape == 0 {
            return None;
        }
        if by_row {
            shape |= 1 << (RecordKey::ALL.len() + appended.len());
        }
        let tables = &self.tables;
        let text = self.upserts.entry(shape).or_insert_with(|| {
            // `values`: each value's parameter, after the row and the msg_id.
            let (mut columns, mut values, mut set) =
                (String::from("row, msg_id"), String::new(), Vec::new());
            let mut index = 1;
            for (key, _) in update_fields(update).filter(|(key, _)| is_result_side(*key)) {
                index += 1;
                let column = key.as_str();
                let _ = write!(columns, ", {column}");
                let _ = write!(values, ", ?{index}");
                set.push(format!("{column} = excluded.{column}"));
            }
            let results = &tables.results;
            for (column, present) in appended {
                if present {
                    index += 1;
                    let _ = write!(columns, ", {column}");
                    let _ = write!(values, ", ifnull({column}, '') || ?{index}");
                    set.push(format!(
                        "{column} = CASE WHEN {results}.{column} IS NULL THEN \
                         excluded.{column} ELSE {results}.{column} || ?{index} END"
                    ));
                }
            }
            let set = set.join(", ");
            if by_row {
                format!(
                    "INSERT INTO {results} ({columns}) VALUES (?{row}, ?1{values}) \
                     ON CONFLICT (row) DO UPDATE SET {set} WHERE msg_id = excluded.msg_id",
                    row = index + 1,
                )
            } else {
                format!(
                    "INSERT INTO {results} ({columns}) SELECT rowid, msg_id{values} FROM {} \
                     WHERE msg_id = ?1 ON CONFLICT (row) DO UPDATE SET {set}",
                    tables.requests,
                )
            }
        });
        Some((shape, text))
    }
}

/// The statements of one batch's transaction, each prepared (from the connection's cache)
/// on its first use in the batch and bound per write: taking the statement from the cache
/// and giving it back for every write cost the writer 3–4% of its instructions.
struct BatchStatements<'tx> {
    tx: &'tx Transaction<'tx>,
    insert: Option<rusqlite::CachedStatement<'tx>>,
    /// Results-row upserts by the shape of the update ([`Sql::upsert`]).
    upserts: HashMap<u32, rusqlite::CachedStatement<'tx>>,
}

impl<'tx> BatchStatements<'tx> {
    fn new(tx: &'tx Transaction<'tx>) -> Self {
        Self {
            tx,
            insert: None,
            upserts: HashMap::new(),
        }
    }
}

/// Inserts `record` with the batch's insert statement, preparing it on first use.
fn insert(
    stmts: &mut BatchStatements<'_>,
    sql: &str,
    binder: &mut Binder,
    record: &TaskRecord,
) -> rusqlite::Result<()> {
    let stmt = match &mut stmts.insert {
        Some(stmt) => stmt,
        None => stmts.insert.insert(stmts.tx.prepare_cached(sql)?),
    };
    // Every parameter is bound each time: bindings outlive a statement's reset.
    binder.bind_record(stmt, record)?;
    stmt.raw_execute()?;
    Ok(())
}

/// Changes the columns `update` gives of the record `msg_id`: request-side columns in its
/// requests row (rare: a request recorded after output that overtook it), result-side
/// columns and appended output in its results row, made by its first change. `row`: the
/// request's row when the writer remembers it ([`RequestRows`]).
fn apply(
    stmts: &mut BatchStatements<'_>,
    sql: &mut Sql,
    binder: &mut Binder,
    msg_id: &str,
    update: &RecordUpdate,
    row: Option<i64>,
) -> rusqlite::Result<()> {
    let conn = stmts.tx;
    if is_assignment(update) {
        // The engine a task was sent to, alone, goes into the request's row, where the view
        // shows it until a result's engine takes its place. As a results row it would be a
        // small row that the result later grows in place, splitting its page: ~18,000
        // instructions per task more for the writer (BENCHMARKS.md).
        return update_request(conn, &sql.tables, binder, msg_id, update, |_| true);
    }
    if update_fields(update).any(|(key, _)| !is_result_side(key)) {
        update_request(conn, &sql.tables, binder, msg_id, update, |key| {
            !is_result_side(key)
        })?;
    }
    // Appended output starts from the request row's: only the lookup reads it.
    let appends = update.append_stdout.is_some() || update.append_stderr.is_some();
    if let Some(row) = row.filter(|_| !appends) {
        if upsert_result(stmts, sql, binder, msg_id, update, Some(row))? {
            return Ok(());
        }
        // Not that request's row (cannot happen while the writer's rows are right):
        // look the row up.
        tracing::debug!(msg_id, row, "a request's remembered row did not match");
    }
    upsert_result(stmts, sql, binder, msg_id, update, None).map(drop)
}

/// Whether `update` only names the engine a task was sent to (the Hub's record of an
/// assignment).
fn is_assignment(update: &RecordUpdate) -> bool {
    let mut fields = update_fields(update);
    matches!(fields.next(), Some((RecordKey::EngineUuid, _)))
        && fields.next().is_none()
        && update.append_stdout.is_none()
        && update.append_stderr.is_none()
}

/// `UPDATE`s the columns of `update` that `wanted` picks in the requests row.
fn update_request(
    conn: &Connection,
    tables: &Tables,
    binder: &mut Binder,
    msg_id: &str,
    update: &RecordUpdate,
    wanted: impl Fn(RecordKey) -> bool,
) -> rusqlite::Result<()> {
    let fields = || update_fields(update).filter(|(key, _)| wanted(*key));
    let assignments: Vec<String> = fields()
        .map(|(key, _)| format!("{} = ?", key.as_str()))
        .collect();
    let sql = format!(
        "UPDATE {} SET {} WHERE msg_id = ?",
        tables.requests,
        assignments.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut index = 0;
    for (_, field) in fields() {
        index += 1;
        binder.bind(&mut stmt, index, field)?;
    }
    binder.bind(&mut stmt, index + 1, Field::Text(msg_id))?;
    stmt.raw_execute()?;
    Ok(())
}

/// Writes the result-side columns and appended output of `update` into the results row,
/// adding the row on the record's first change (only while its request is recorded).
/// Appended output starts from what the request's row holds. The request's row is `row`
/// when given (only for an update that appends no output), else looked up by its msg_id.
/// Returns whether a row was written (or there was nothing to write).
fn upsert_result(
    stmts: &mut BatchStatements<'_>,
    sql: &mut Sql,
    binder: &mut Binder,
    msg_id: &str,
    update: &RecordUpdate,
    row: Option<i64>,
) -> rusqlite::Result<bool> {
    let Some((shape, text)) = sql.upsert(update, row.is_some()) else {
        return Ok(true); // nothing to change
    };
    let stmt = match stmts.upserts.entry(shape) {
        std::collections::hash_map::Entry::Occupied(prepared) => prepared.into_mut(),
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(stmts.tx.prepare_cached(text)?)
        }
    };
    binder.bind(stmt, 1, Field::Text(msg_id))?;
    let mut index = 1;
    for (_, field) in update_fields(update).filter(|(key, _)| is_result_side(*key)) {
        index += 1;
        binder.bind(stmt, index, field)?;
    }
    for text in [&update.append_stdout, &update.append_stderr]
        .into_iter()
        .filter_map(Option::as_deref)
    {
        index += 1;
        binder.bind(stmt, index, Field::Text(text))?;
    }
    if let Some(row) = row {
        stmt.raw_bind_parameter(index + 1, row)?;
    }
    Ok(stmt.raw_execute()? > 0)
}

fn delete_matching(
    conn: &Connection,
    tables: &Tables,
    query: &Query,
) -> rusqlite::Result<Vec<String>> {
    let clause = translate(query);
    let sql = format!(
        "DELETE FROM {} WHERE msg_id IN (SELECT msg_id FROM {} WHERE {}) RETURNING msg_id",
        tables.requests, tables.records, clause.sql
    );
    let mut stmt = conn.prepare(&sql)?;
    let ids = stmt
        .query_map(params_from_iter(clause.params), |row| {
            row.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    //! Batches written by a real writer on a real file, every op queued before it starts, so
    //! that `batch_size` alone decides which ops share a batch (and so which updates fold).

    use super::*;
    use bytes::Bytes;
    use ipp_core::protocol::date;
    use ipp_core::store::{Condition, QueryValue, Store};
    use serde_json::json;

    use crate::held::HOLD_MS;
    use crate::rows::MOST_KEPT;
    use crate::{SqliteStore, DEFAULT_TABLE};

    /// A writer on `path` (not running) taking `batch_size` ops per batch from a queue of
    /// `capacity`, holding assignments `hold` at most: the writer, its queue, and how many
    /// ops it has finished.
    fn test_writer(
        path: &std::path::Path,
        batch_size: usize,
        capacity: usize,
        hold: Duration,
    ) -> (Writer, mpsc::Sender<Op>, watch::Receiver<u64>) {
        let (conn, _reader, _known, checkpointer) =
            crate::store::open_connections(path, DEFAULT_TABLE).unwrap();
        let (sender, inbox) = mpsc::channel(capacity);
        let (done, finished) = watch::channel(0);
        let writer = Writer {
            conn,
            path: path.to_path_buf(),
            table: DEFAULT_TABLE.to_owned(),
            batch_size,
            full_batch: batch_size,
            commit_interval: Duration::ZERO,
            inbox,
            done,
            pending_error: PendingError::default(),
            checkpointer,
            held: Held::new(hold, 100),
            held_count: Arc::default(),
            timer: None,
            rows: RequestRows::new(MOST_KEPT),
        };
        (writer, sender, finished)
    }

    /// Runs `ops` through a writer in batches of `batch_size`; returns the error it kept.
    fn write(path: &std::path::Path, batch_size: usize, ops: Vec<Op>) -> Option<Arc<Error>> {
        let (writer, sender, _) = test_writer(
            path,
            batch_size,
            ops.len() + 1,
            Duration::from_millis(HOLD_MS),
        );
        for op in ops {
            sender.try_send(op).unwrap();
        }
        let (close, _closed) = oneshot::channel();
        sender.try_send(Op::Close(close)).unwrap();
        let pending_error = Arc::clone(&writer.pending_error);
        // `blocking_recv` refuses to run inside a runtime: a plain thread, as in the store.
        std::thread::spawn(move || writer.run()).join().unwrap();
        let kept = pending_error.lock().unwrap().take();
        kept
    }

    fn when(micros: i64) -> Option<ipp_core::protocol::Timestamp> {
        date::parse("2026-03-01T00:00:00Z").map(|d| d + chrono::TimeDelta::microseconds(micros))
    }

    /// An object as the Hub records it: JSON text kept as received.
    fn obj(value: serde_json::Value) -> Option<ipp_core::store::JsonObject> {
        ipp_core::store::JsonObject::from_json(value.to_string().into()).ok()
    }

    fn request(id: &str) -> TaskRecord {
        TaskRecord {
            msg_id: id.to_owned(),
            header: obj(
                json!({"msg_id": id, "msg_type": "apply_request", "date": "2026-03-01T00:00:00Z"}),
            ),
            metadata: obj(json!({"after": [], "targets": [0], "label": "ünï"})),
            content: obj(json!({})),
            buffers: vec![Bytes::from_static(b"\x80pickled"), Bytes::new()],
            submitted: when(1),
            client_uuid: Some("client".to_owned()),
            queue: Some("task".to_owned()),
            stdout: "early ".to_owned(),
            ..TaskRecord::default()
        }
    }

    fn result(engine: &str) -> RecordUpdate {
        RecordUpdate {
            engine_uuid: Some(engine.to_owned()),
            started: when(2),
            completed: when(3),
            received: when(4),
            result_header: obj(json!({"msg_type": "apply_reply"})),
            result_metadata: obj(json!({"status": "ok", "engine": engine})),
            result_content: obj(json!({"status": "ok"})),
            result_buffers: Some(vec![Bytes::from_static(b"result \x00")]),
            append_stdout: Some("printed".to_owned()),
            ..RecordUpdate::default()
        }
    }

    fn output() -> RecordUpdate {
        RecordUpdate {
            append_stdout: Some(" more".to_owned()),
            append_stderr: Some("warned".to_owned()),
            execute_result: obj(json!({"data": {"text/plain": "42"}})),
            label: Some("relabelled".to_owned()),
            ..RecordUpdate::default()
        }
    }

    fn applied(mut record: TaskRecord, updates: &[RecordUpdate]) -> TaskRecord {
        for update in updates {
            record.apply(update.clone());
        }
        record
    }

    fn by_id(id: &str) -> Query {
        Query::new().and(
            RecordKey::MsgId,
            Condition::Eq(QueryValue::Str(id.to_owned())),
        )
    }

    /// The ops of a sequence with adds, updates and drops, and the records it must leave.
    fn sequence() -> (Vec<Op>, Vec<TaskRecord>) {
        let (drop_tx, _) = oneshot::channel();
        let ops = vec![
            // Two updates folded into (or applied after) their add.
            Op::Add(Box::new(request("a"))),
            Op::Update("a".to_owned(), Box::new(result("engine-1"))),
            Op::Add(Box::new(request("b"))),
            Op::Update("a".to_owned(), Box::new(output())),
            Op::Update("b".to_owned(), Box::new(result("engine-2"))),
            // An update after its record is dropped changes nothing.
            Op::Add(Box::new(request("c"))),
            Op::DropIds(vec!["c".to_owned()]),
            Op::Update("c".to_owned(), Box::new(result("engine-3"))),
            // Added again after a drop: the update goes to the new record only.
            Op::Add(Box::new(request("d"))),
            Op::DropMatching(by_id("d"), drop_tx),
            Op::Add(Box::new(TaskRecord {
                label: Some("second".to_owned()),
                ..request("d")
            })),
            Op::Update("d".to_owned(), Box::new(output())),
            // Two updates of a record added in an earlier batch: one UPDATE with both.
            Op::Update("old".to_owned(), Box::new(result("engine-4"))),
            Op::Add(Box::new(request("e"))),
            Op::Update("old".to_owned(), Box::new(output())),
            Op::Update("old".to_owned(), Box::new(output())),
        ];
        let want = vec![
            applied(request("a"), &[result("engine-1"), output()]),
            applied(request("b"), &[result("engine-2")]),
            applied(
                TaskRecord {
                    label: Some("second".to_owned()),
                    ..request("d")
                },
                &[output()],
            ),
            request("e"),
            applied(
                TaskRecord {
                    submitted: when(9),
                    ..request("old")
                },
                &[result("engine-4"), output(), output()],
            ),
        ];
        (ops, want)
    }

    /// Writes "old" (as an earlier writer, a previous controller say, would have), then
    /// [`sequence`]'s ops in batches of `batch_size`; returns the records it must leave.
    fn write_sequence(path: &std::path::Path, batch_size: usize) -> Vec<TaskRecord> {
        let (ops, want) = sequence();
        let old = TaskRecord {
            submitted: when(9),
            ..request("old")
        };
        assert!(write(path, 1, vec![Op::Add(Box::new(old))]).is_none());
        assert!(write(path, batch_size, ops).is_none());
        want
    }

    /// Every record in the file at `path`, read through a store opened on it.
    fn stored_records(path: &std::path::Path) -> Vec<TaskRecord> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStore::open(path).await.unwrap();
            let got = store.find(&Query::all(), None).await.unwrap();
            store.close().await.unwrap();
            got
        })
    }

    #[test]
    fn folding_an_update_into_its_add_leaves_the_add_then_update_record() {
        for batch_size in [1, 2, 3, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tasks.db");
            let want = write_sequence(&path, batch_size);
            let got = stored_records(&path);
            assert_eq!(got, want, "batch_size {batch_size}");
        }
    }

    #[test]
    fn received_messages_are_built_and_written_as_their_record_in_any_batching() {
        use ipp_core::testing::store::{received_request, received_result};
        let (_, update) = received_result("r").into_update();
        let mut want = received_request("r").into_record();
        want.apply(*assignment("assigned"));
        want.apply(update);
        for batch_size in [1, 2, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tasks.db");
            let ops = vec![
                Op::AddReceived(Box::new(received_request("r"))),
                Op::Update("r".to_owned(), assignment("assigned")),
                Op::UpdateReceived(Box::new(received_result("r"))),
            ];
            assert!(write(&path, batch_size, ops).is_none());
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut got = rt.block_on(async {
                let store = SqliteStore::open(&path).await.unwrap();
                let got = store.get("r").await.unwrap();
                store.close().await.unwrap();
                got
            });
            // Each reply is received when it is made (a few microseconds apart here).
            assert!(got.received.is_some(), "batch_size {batch_size}");
            got.received = want.received;
            assert_eq!(got, want, "batch_size {batch_size}");
        }
    }

    #[test]
    fn folding_finds_each_update_its_add_and_stops_at_drops() {
        let (ops, _) = sequence();
        let mut batch = ops;
        let mut dead = Vec::new();
        merge_updates_into_adds(&mut batch, &mut dead);
        assert_eq!(dead.len(), 6, "one emptied update per fold");
        let shape: Vec<String> = batch
            .iter()
            .map(|op| match op {
                Op::Add(record) => format!("add {}", record.msg_id),
                Op::Update(id, _) => format!("update {id}"),
                Op::DropIds(_) => "drop ids".to_owned(),
                Op::DropMatching(..) => "drop matching".to_owned(),
                Op::Close(_) => "close".to_owned(),
                Op::WriteHeld => "write held".to_owned(),
                Op::Folded => "folded".to_owned(),
                Op::AddReceived(_) | Op::UpdateReceived(_) => "received".to_owned(),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "add a",
                "add b",
                "add c",
                "drop ids",
                "update c",
                "add d",
                "drop matching",
                "add d",
                "update old",
                "add e"
            ]
        );
        let Some(Op::Add(a)) = batch.first() else {
            panic!("first op is not an add")
        };
        assert_eq!(**a, applied(request("a"), &[result("engine-1"), output()]));
        let Some(Op::Update(_, old)) = batch.get(8) else {
            panic!("ninth op is not an update")
        };
        let mut want = result("engine-4");
        want.append_stdout = Some("printed more more".to_owned());
        want.append_stderr = Some("warnedwarned".to_owned());
        want.execute_result = output().execute_result;
        want.label = output().label;
        assert_eq!(**old, want);
    }

    /// The two columns of the first row `sql` returns.
    fn pair<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
        conn: &Connection,
        sql: &str,
    ) -> (A, B) {
        conn.query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
    }

    #[test]
    fn an_assignment_goes_into_the_requests_row_and_the_results_engine_takes_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let engine = |uuid: &str| RecordUpdate {
            engine_uuid: Some(uuid.to_owned()),
            ..RecordUpdate::default()
        };
        // One op per batch: the assignment and the result come after the add's commit.
        let ops = vec![
            Op::Add(Box::new(request("a"))),
            Op::Update("a".to_owned(), Box::new(engine("assigned"))),
        ];
        assert!(write(&path, 1, ops).is_none());
        let conn = Connection::open(&path).unwrap();
        let results: i64 = conn
            .query_row(
                "SELECT count(*) FROM \"ipython-tasks_results\"",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(results, 0, "no results row for an assignment");
        let (in_request, shown): (String, String) = pair(
            &conn,
            "SELECT t.engine_uuid, v.engine_uuid FROM \"ipython-tasks_requests\" AS t \
             JOIN \"ipython-tasks\" AS v ON v.msg_id = t.msg_id WHERE t.msg_id = 'a'",
        );
        assert_eq!(
            (in_request.as_str(), shown.as_str()),
            ("assigned", "assigned")
        );
        drop(conn);
        let result = RecordUpdate {
            completed: when(5),
            ..engine("replied")
        };
        let ops = vec![Op::Update("a".to_owned(), Box::new(result))];
        assert!(write(&path, 1, ops).is_none());
        let conn = Connection::open(&path).unwrap();
        let (shown, completed): (String, String) = pair(
            &conn,
            "SELECT engine_uuid, completed FROM \"ipython-tasks\" WHERE msg_id = 'a'",
        );
        assert_eq!(shown, "replied");
        assert!(completed.starts_with("2026-"), "{completed}");
    }

    fn assignment(engine: &str) -> Box<RecordUpdate> {
        Box::new(RecordUpdate {
            engine_uuid: Some(engine.to_owned()),
            ..RecordUpdate::default()
        })
    }

    /// The engine in `msg_id`'s requests row, and the one the view shows.
    fn engines(path: &std::path::Path, msg_id: &str) -> (Option<String>, Option<String>) {
        let conn = Connection::open(path).unwrap();
        pair(
            &conn,
            &format!(
                "SELECT t.engine_uuid, v.engine_uuid FROM \"ipython-tasks_requests\" AS t \
                 JOIN \"ipython-tasks\" AS v ON v.msg_id = t.msg_id WHERE t.msg_id = '{msg_id}'"
            ),
        )
    }

    #[test]
    fn an_assignment_is_written_with_its_tasks_result_not_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let completed = RecordUpdate {
            completed: when(5),
            ..RecordUpdate::default()
        };
        // One op per batch: each assignment comes after its add's commit.
        let ops = vec![
            Op::Add(Box::new(request("a"))),
            Op::Add(Box::new(request("b"))),
            Op::Update("a".to_owned(), assignment("assigned")),
            Op::Update("b".to_owned(), assignment("first")),
            Op::Update("b".to_owned(), assignment("second")),
            // A result naming no engine takes the assignment's; one naming it keeps its own.
            Op::Update("a".to_owned(), Box::new(completed)),
            Op::Update("b".to_owned(), Box::new(result("replied"))),
        ];
        assert!(write(&path, 1, ops).is_none());
        assert_eq!(engines(&path, "a"), (None, Some("assigned".to_owned())));
        assert_eq!(engines(&path, "b"), (None, Some("replied".to_owned())));
    }

    #[test]
    fn results_go_to_their_requests_rows_and_never_to_a_dropped_requests_reused_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        // Results without output: written at the row the writer remembers for the request.
        let plain = |engine: &str| {
            Box::new(RecordUpdate {
                append_stdout: None,
                ..result(engine)
            })
        };
        // One op per batch. "b" is dropped and "c" added after it takes its row (the
        // requests table's largest row was freed); "b"'s result comes after.
        let ops = vec![
            Op::Add(Box::new(request("a"))),
            Op::Add(Box::new(request("b"))),
            Op::DropIds(vec!["b".to_owned()]),
            Op::Add(Box::new(request("c"))),
            Op::Update("b".to_owned(), plain("engine-b")),
            Op::Update("c".to_owned(), plain("engine-c")),
            Op::Update("a".to_owned(), plain("engine-a")),
        ];
        assert!(write(&path, 1, ops).is_none());
        let conn = Connection::open(&path).unwrap();
        let rows: (i64, i64) = pair(
            &conn,
            "SELECT (SELECT rowid FROM \"ipython-tasks_requests\" WHERE msg_id = 'c'), \
             (SELECT count(*) FROM \"ipython-tasks_results\" WHERE msg_id = 'b')",
        );
        assert_eq!(rows, (2, 0), "c took b's row; b's result wrote nothing");
        for id in ["a", "c"] {
            assert_eq!(
                engines(&path, id),
                (None, Some(format!("engine-{id}"))),
                "{id}"
            );
        }
        let got = stored_records(&path);
        let want: Vec<TaskRecord> = ["a", "c"]
            .into_iter()
            .map(|id| applied(request(id), &[*plain(&format!("engine-{id}"))]))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn held_assignments_are_written_before_a_drop_that_may_match_their_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let (dropped_tx, mut dropped) = oneshot::channel();
        let on_engine = Query::new().and(
            RecordKey::EngineUuid,
            Condition::Eq(QueryValue::Str("doomed".to_owned())),
        );
        let ops = vec![
            Op::Add(Box::new(request("a"))),
            Op::Add(Box::new(request("b"))),
            Op::Update("a".to_owned(), assignment("doomed")),
            Op::Update("b".to_owned(), assignment("spared")),
            Op::DropMatching(on_engine, dropped_tx),
        ];
        assert!(write(&path, 1, ops).is_none());
        assert_eq!(dropped.try_recv().unwrap().unwrap(), ["a"]);
        assert_eq!(
            engines(&path, "b"),
            (Some("spared".to_owned()), Some("spared".to_owned()))
        );
    }

    /// A writer on `path` running on its own thread, one op per batch, holding assignments
    /// `hold` at most: its queue, how many ops it has finished, and its thread.
    fn running_writer(
        path: &std::path::Path,
        hold: Duration,
    ) -> (
        mpsc::Sender<Op>,
        watch::Receiver<u64>,
        std::thread::JoinHandle<()>,
    ) {
        let (writer, sender, finished) = test_writer(path, 1, 8, hold);
        (sender, finished, std::thread::spawn(move || writer.run()))
    }

    /// Waits until the writer has finished `ops` ops.
    fn wait_for(finished: &mut watch::Receiver<u64>, ops: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(finished.wait_for(|n| *n >= ops)).unwrap();
    }

    #[test]
    fn an_assignment_held_too_long_is_written_on_its_own_while_the_writer_idles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let hold = Duration::from_millis(500);
        let (sender, mut finished, thread) = running_writer(&path, hold);
        sender.try_send(Op::Add(Box::new(request("a")))).unwrap();
        let sent = Instant::now();
        sender
            .try_send(Op::Update("a".to_owned(), assignment("slow")))
            .unwrap();
        wait_for(&mut finished, 2);
        assert_eq!(engines(&path, "a"), (None, None), "held, not written");
        let deadline = sent + Duration::from_secs(30);
        while engines(&path, "a").0.is_none() {
            assert!(
                Instant::now() < deadline,
                "the held assignment was never written"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sent.elapsed() >= hold, "written before it was due");
        assert_eq!(
            engines(&path, "a"),
            (Some("slow".to_owned()), Some("slow".to_owned()))
        );
        drop(sender);
        thread.join().unwrap();
    }

    #[test]
    fn a_due_assignment_takes_the_whole_queue_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let (mut writer, sender, _) = test_writer(&path, 4, 8, Duration::ZERO);
        writer
            .held
            .hold("held".to_owned(), assignment("e"), Instant::now());
        for n in 0..6 {
            sender
                .try_send(Op::Add(Box::new(request(&format!("t{n}")))))
                .unwrap();
        }
        let mut batch = Vec::new();
        assert!(matches!(writer.receive(&mut batch), Received::Ops));
        assert_eq!(batch.len(), 4, "a batch's worth, not one op");
        batch.clear();
        assert!(matches!(writer.receive(&mut batch), Received::Ops));
        assert_eq!(batch.len(), 2);
        batch.clear();
        assert!(matches!(writer.receive(&mut batch), Received::Due));
        drop(sender);
        assert!(matches!(writer.receive(&mut batch), Received::Closed));
    }

    #[test]
    fn with_no_hold_an_assignment_is_written_with_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let (sender, mut finished, thread) = running_writer(&path, Duration::ZERO);
        sender.try_send(Op::Add(Box::new(request("a")))).unwrap();
        sender
            .try_send(Op::Update("a".to_owned(), assignment("at-once")))
            .unwrap();
        wait_for(&mut finished, 2);
        assert_eq!(
            engines(&path, "a"),
            (Some("at-once".to_owned()), Some("at-once".to_owned()))
        );
        drop(sender);
        thread.join().unwrap();
    }

    #[test]
    fn reads_see_held_assignments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            store.add(request("a")).await.unwrap();
            store.flush().await.unwrap(); // the add committed: the assignment is held
            store.update("a", *assignment("engine-7")).await.unwrap();
            let on_engine = Query::new().and(
                RecordKey::EngineUuid,
                Condition::Eq(QueryValue::Str("engine-7".to_owned())),
            );
            let found = store
                .find(&on_engine, Some(&[RecordKey::MsgId]))
                .await
                .unwrap();
            assert_eq!(found.len(), 1);
            let got = store.get("a").await.unwrap();
            assert_eq!(got.engine_uuid.as_deref(), Some("engine-7"));
            store.close().await.unwrap();
        });
    }

    #[test]
    fn late_updates_are_rows_of_the_results_table_and_leave_with_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        // One op per batch: no update folds into its add.
        write_sequence(&path, 1);
        let conn = Connection::open(&path).unwrap();
        let ids = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |row| row.get(0)).unwrap();
            rows.collect::<rusqlite::Result<_>>().unwrap()
        };
        // "c" was dropped before its update, the first "d" with its results.
        assert_eq!(
            ids("SELECT msg_id FROM \"ipython-tasks_results\" ORDER BY msg_id"),
            ["a", "b", "d", "old"]
        );
        // Requests rows keep what was added; the view shows the whole record.
        let (completed, label): (Option<String>, Option<String>) = pair(
            &conn,
            "SELECT completed, label FROM \"ipython-tasks_requests\" WHERE msg_id = 'old'",
        );
        assert_eq!(completed, None);
        assert_eq!(
            label.as_deref(),
            Some("relabelled"),
            "request-side: in place"
        );
        let (completed, stdout): (String, String) = pair(
            &conn,
            "SELECT completed, stdout FROM \"ipython-tasks\" WHERE msg_id = 'old'",
        );
        assert_eq!(completed, "2026-03-01T00:00:00.000003+00:00");
        assert_eq!(
            stdout, "early printed more more",
            "appended to what the add had"
        );
        conn.execute_batch("DELETE FROM \"ipython-tasks_requests\"")
            .unwrap();
        assert!(ids("SELECT msg_id FROM \"ipython-tasks_results\"").is_empty());
    }

    #[test]
    fn dates_bind_as_the_stored_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let mut record = request("x");
        record.submitted = date::parse("0999-12-31T23:59:59.123456Z");
        record.completed = date::parse("2026-11-22T17:59:21Z");
        assert!(write(&path, 10, vec![Op::Add(Box::new(record))]).is_none());
        let conn = Connection::open(&path).unwrap();
        let (submitted, completed): (String, String) =
            pair(&conn, "SELECT submitted, completed FROM \"ipython-tasks\"");
        assert_eq!(submitted, "0999-12-31T23:59:59.123456+00:00");
        assert_eq!(completed, "2026-11-22T17:59:21.000000+00:00");
    }
}
