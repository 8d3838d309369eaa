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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipp_core::store::{Query, RecordKey, RecordUpdate, TaskRecord};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::query::translate;
use crate::schema::{all_columns, blob, json_text, quote, to_sql};

/// One queued write.
#[derive(Debug)]
pub(crate) enum Op {
    /// Insert a new record (the store checked that its id is new).
    Add(Box<TaskRecord>),
    /// Change fields of a record.
    Update(String, Box<RecordUpdate>),
    /// Delete these records.
    DropIds(Vec<String>),
    /// Delete the records matching a query; answers with their ids once committed.
    DropMatching(Query, oneshot::Sender<Result<Vec<String>>>),
    /// Finish everything queued before, then stop; answers once stopped.
    Close(oneshot::Sender<()>),
}

/// The first write error not yet returned to a caller.
pub(crate) type PendingError = Arc<Mutex<Option<Arc<Error>>>>;

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) table: String,
    pub(crate) batch_size: usize,
    pub(crate) inbox: mpsc::Receiver<Op>,
    /// How many ops are finished (committed or failed), published after each batch.
    pub(crate) done: watch::Sender<u64>,
    pub(crate) pending_error: PendingError,
}

/// What a batch owes callers once it is committed.
enum Reply {
    Dropped(oneshot::Sender<Result<Vec<String>>>, Result<Vec<String>>),
    Closed(oneshot::Sender<()>),
}

impl Writer {
    /// Runs until every sender is gone or a [`Op::Close`] is processed.
    pub(crate) fn run(mut self) {
        let mut finished: u64 = 0;
        let mut failing = false;
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            // Blocking receive: this is a dedicated thread, not a runtime worker.
            let Some(first) = self.inbox.blocking_recv() else {
                break;
            };
            batch.push(first);
            while batch.len() < self.batch_size {
                match self.inbox.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            let (replies, errors) = self.commit(&mut batch);
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
        }
        tracing::debug!(path = %self.path.display(), "sqlite writer stopped");
    }

    /// Keeps `err` for the store to return, unless an earlier one is still waiting.
    fn keep(&self, err: Error) {
        if let Ok(mut slot) = self.pending_error.lock() {
            slot.get_or_insert_with(|| Arc::new(err));
        }
    }

    /// Applies `batch` in one transaction; returns the replies owed and the errors met.
    fn commit(&mut self, batch: &mut Vec<Op>) -> (Vec<Reply>, Vec<Error>) {
        let mut replies = Vec::new();
        let mut errors = Vec::new();
        let path = self.path.clone();
        let table = quote(&self.table);
        let insert_sql = insert_sql(&table);
        let sql_err = |operation: &'static str| {
            let path = path.clone();
            move |source| Error::Sqlite {
                operation,
                path,
                source,
            }
        };
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
        for op in merge_updates_into_adds(batch.drain(..)) {
            match op {
                Op::Add(record) => {
                    if let Err(err) = insert(&tx, &insert_sql, &record).map_err(sql_err("add")) {
                        errors.push(err);
                    }
                }
                Op::Update(msg_id, update) => {
                    if let Err(err) =
                        apply(&tx, &table, &msg_id, &update).map_err(sql_err("update"))
                    {
                        errors.push(err);
                    }
                }
                Op::DropIds(ids) => {
                    let sql = format!(
                        "DELETE FROM {table} WHERE msg_id IN (SELECT value FROM json_each(?))"
                    );
                    let list = serde_json::Value::from(ids).to_string();
                    if let Err(err) = tx.execute(&sql, [list]).map_err(sql_err("drop records")) {
                        errors.push(err);
                    }
                }
                Op::DropMatching(query, reply) => {
                    let result =
                        delete_matching(&tx, &table, &query).map_err(sql_err("drop matching"));
                    replies.push(Reply::Dropped(reply, result));
                }
                Op::Close(reply) => replies.push(Reply::Closed(reply)),
            }
        }
        if let Err(source) = tx.commit() {
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

/// Folds each update of a record added earlier in the same batch into that add, so the
/// record is written once. Drops end the folding (an update after a drop must stay an
/// update of whatever is left). Order among the remaining ops is kept.
fn merge_updates_into_adds(ops: impl Iterator<Item = Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    let mut added: HashMap<String, usize> = HashMap::new();
    for op in ops {
        match op {
            Op::Update(msg_id, update) => match added.get(&msg_id) {
                Some(&at) => {
                    if let Some(Op::Add(record)) = out.get_mut(at) {
                        record.apply(*update);
                    }
                }
                None => out.push(Op::Update(msg_id, update)),
            },
            Op::Add(record) => {
                added.insert(record.msg_id.clone(), out.len());
                out.push(Op::Add(record));
            }
            other => {
                added.clear();
                out.push(other);
            }
        }
    }
    out
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
        Op::Add(_) | Op::Update(..) | Op::DropIds(_) => {}
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

/// The `INSERT` statement for `table` (already quoted).
fn insert_sql(table: &str) -> String {
    let marks = vec!["?"; RecordKey::ALL.len()].join(", ");
    format!("INSERT INTO {table} ({}) VALUES ({marks})", all_columns())
}

fn insert(conn: &Connection, sql: &str, record: &TaskRecord) -> rusqlite::Result<()> {
    let values = RecordKey::ALL.map(|key| to_sql(record, key));
    conn.prepare_cached(sql)?
        .execute(params_from_iter(values))?;
    Ok(())
}

fn apply(
    conn: &Connection,
    table: &str,
    msg_id: &str,
    update: &RecordUpdate,
) -> rusqlite::Result<()> {
    let mut sets: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut set = |column: &str, value: Value| {
        sets.push(format!("{column} = ?"));
        values.push(value);
    };
    let text = |value: &Option<String>| value.clone().map(Value::Text);
    let when = |value: &Option<ipp_core::protocol::Timestamp>| {
        value
            .as_ref()
            .map(|d| Value::Text(crate::schema::format_date(d)))
    };
    let json = |value: &Option<ipp_core::protocol::JsonMap>| value.as_ref().map(json_text);
    let fields: [(&str, Option<Value>); 20] = [
        ("header", json(&update.header)),
        ("metadata", json(&update.metadata)),
        ("content", json(&update.content)),
        ("buffers", update.buffers.as_deref().map(blob)),
        ("submitted", when(&update.submitted)),
        ("client_uuid", text(&update.client_uuid)),
        ("engine_uuid", text(&update.engine_uuid)),
        ("started", when(&update.started)),
        ("completed", when(&update.completed)),
        ("resubmitted", text(&update.resubmitted)),
        ("received", when(&update.received)),
        ("result_header", json(&update.result_header)),
        ("result_metadata", json(&update.result_metadata)),
        ("result_content", json(&update.result_content)),
        ("result_buffers", update.result_buffers.as_deref().map(blob)),
        ("queue", text(&update.queue)),
        ("execute_input", text(&update.execute_input)),
        ("execute_result", json(&update.execute_result)),
        ("error", json(&update.error)),
        ("label", text(&update.label)),
    ];
    for (column, value) in fields {
        if let Some(value) = value {
            set(column, value);
        }
    }
    for (column, appended) in [
        ("stdout", &update.append_stdout),
        ("stderr", &update.append_stderr),
    ] {
        if let Some(appended) = appended {
            sets.push(format!("{column} = ifnull({column}, '') || ?"));
            values.push(Value::Text(appended.clone()));
        }
    }
    if sets.is_empty() {
        return Ok(());
    }
    values.push(Value::Text(msg_id.to_owned()));
    let sql = format!("UPDATE {table} SET {} WHERE msg_id = ?", sets.join(", "));
    conn.prepare_cached(&sql)?
        .execute(params_from_iter(values))?;
    Ok(())
}

fn delete_matching(conn: &Connection, table: &str, query: &Query) -> rusqlite::Result<Vec<String>> {
    let clause = translate(query);
    let sql = format!("DELETE FROM {table} WHERE {} RETURNING msg_id", clause.sql);
    let mut stmt = conn.prepare(&sql)?;
    let ids = stmt
        .query_map(params_from_iter(clause.params), |row| {
            row.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}
