//! The writer task: performs queued writes in order, so that callers (the Hub) never wait
//! for a server round trip.
//!
//! It takes what is queued (up to [`BATCH_SIZE`]), folds each update of a record added in
//! the same batch into that add, sends runs of adds as one `insert_many`, and publishes how
//! many ops are finished on a watch channel, which is how reads wait for the writes queued
//! before them. A failed write is logged once (until writes succeed again) and kept for the
//! store to return on its next call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ipp_core::store::{Query, RecordUpdate, TaskRecord};
use mongodb::bson::Document;
use mongodb::Collection;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::ops;

/// Most queued ops handled as one batch.
pub(crate) const BATCH_SIZE: usize = 1000;

/// One queued write.
#[derive(Debug)]
pub(crate) enum Op {
    /// Insert a new record (the store checked that its id is new).
    Add(Box<TaskRecord>),
    /// Change fields of a record.
    Update(String, Box<RecordUpdate>),
    /// Delete these records.
    DropIds(Vec<String>),
    /// Delete the records matching a query; answers with their ids.
    DropMatching(Query, oneshot::Sender<Result<Vec<String>>>),
    /// Finish everything queued before, then stop; answers once stopped.
    Close(oneshot::Sender<()>),
}

/// The first write error not yet returned to a caller.
pub(crate) type PendingError = Arc<Mutex<Option<Arc<Error>>>>;

/// The writer task's state.
pub(crate) struct Writer {
    pub(crate) collection: Collection<Document>,
    pub(crate) inbox: mpsc::Receiver<Op>,
    pub(crate) done: watch::Sender<u64>,
    pub(crate) pending_error: PendingError,
}

impl Writer {
    /// Runs until every sender is gone or an [`Op::Close`] is handled.
    pub(crate) async fn run(mut self) {
        let mut finished: u64 = 0;
        let mut failing = false;
        let mut batch = Vec::with_capacity(BATCH_SIZE);
        // `recv` is cancel-safe, and this loop is the only consumer.
        while let Some(first) = self.inbox.recv().await {
            batch.push(first);
            while batch.len() < BATCH_SIZE {
                match self.inbox.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let count = batch.len() as u64;
            let (errors, close) = self.apply(merge_updates_into_adds(batch.drain(..))).await;
            finished += count;
            if errors.is_empty() && failing {
                tracing::info!(collection = %self.collection.name(), "mongodb task database writes succeed again");
                failing = false;
            }
            for err in errors {
                if failing {
                    tracing::debug!(error = %error_chain(&err), "mongodb task database write failed");
                } else {
                    tracing::error!(collection = %self.collection.name(), error = %error_chain(&err),
                        "mongodb task database write failed; records are being lost \
                         (logged once until writes succeed again)");
                    failing = true;
                }
                if let Ok(mut slot) = self.pending_error.lock() {
                    slot.get_or_insert_with(|| Arc::new(err));
                }
            }
            self.done.send_replace(finished);
            if let Some(reply) = close {
                let _ = reply.send(());
                break;
            }
        }
        tracing::debug!("mongodb writer stopped");
    }

    /// Performs `ops` in order; returns the errors met and a pending close.
    async fn apply(&self, ops: Vec<Op>) -> (Vec<Error>, Option<oneshot::Sender<()>>) {
        let mut errors = Vec::new();
        let mut adds: Vec<TaskRecord> = Vec::new();
        let mut close = None;
        for op in ops {
            if let Op::Add(record) = op {
                adds.push(*record);
                continue;
            }
            // Anything else must see the adds queued before it.
            if let Err(err) = ops::insert(&self.collection, &std::mem::take(&mut adds)).await {
                errors.push(err);
            }
            match op {
                Op::Add(_) => {}
                Op::Update(msg_id, update) => {
                    if let Err(err) = ops::update(&self.collection, &msg_id, *update).await {
                        errors.push(err);
                    }
                }
                Op::DropIds(ids) => {
                    if let Err(err) = ops::delete_ids(&self.collection, &ids).await {
                        errors.push(err);
                    }
                }
                Op::DropMatching(query, reply) => {
                    let result = drop_matching(&self.collection, &query).await;
                    let _ = reply.send(result);
                }
                Op::Close(reply) => close = Some(reply),
            }
        }
        if let Err(err) = ops::insert(&self.collection, &adds).await {
            errors.push(err);
        }
        (errors, close)
    }
}

async fn drop_matching(collection: &Collection<Document>, query: &Query) -> Result<Vec<String>> {
    let ids: Vec<String> = ops::matching(collection, query)
        .await?
        .into_iter()
        .map(|record| record.msg_id)
        .collect();
    ops::delete_ids(collection, &ids).await?;
    Ok(ids)
}

/// Folds each update of a record added earlier in the same batch into that add. Drops
/// end the folding. Order among the remaining ops is kept.
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
