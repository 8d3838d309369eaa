//! The collection operations the store and its writer share.

use std::future::IntoFuture;
use std::time::Duration;

use futures::TryStreamExt;
use ipp_core::store::{Condition, Query, QueryValue, RecordKey, RecordUpdate, TaskRecord};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::FindOptions;
use mongodb::Collection;

use crate::document::{by_id, decode, encode, field, micros, MICROS};
use crate::error::{Error, Result};

/// How long one server operation may take before it fails with a timeout.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a driver action with [`OPERATION_TIMEOUT`], naming `operation` in errors.
pub(crate) async fn timed<T>(
    operation: &'static str,
    action: impl IntoFuture<Output = mongodb::error::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(OPERATION_TIMEOUT, action.into_future())
        .await
        .map_err(|_| Error::Timeout {
            operation,
            after: OPERATION_TIMEOUT,
        })?
        .map_err(|source| Error::Driver { operation, source })
}

/// Every stored `msg_id`.
pub(crate) async fn all_ids(collection: &Collection<Document>) -> Result<Vec<String>> {
    let options = FindOptions::builder()
        .projection(doc! {"msg_id": 1, "_id": 0})
        .build();
    let cursor = timed("load ids", collection.find(doc! {}).with_options(options)).await?;
    let documents: Vec<Document> = timed("load ids", cursor.try_collect()).await?;
    Ok(documents
        .iter()
        .filter_map(|d| d.get_str("msg_id").ok().map(str::to_owned))
        .collect())
}

/// The part of `query` the server evaluates: `msg_id` equalities and `$in` lists of
/// strings (msg_id is never null, and these mean the same on every server). Everything
/// else is evaluated here.
fn server_filter(query: &Query) -> Document {
    let mut and: Vec<Bson> = Vec::new();
    for (key, condition) in &query.clauses {
        if *key != RecordKey::MsgId {
            continue;
        }
        match condition {
            Condition::Eq(QueryValue::Str(id)) => and.push(Bson::Document(doc! {"msg_id": id})),
            Condition::In(values) => {
                let ids: Vec<Bson> = values
                    .iter()
                    .filter_map(|v| match v {
                        QueryValue::Str(s) => Some(Bson::String(s.clone())),
                        _ => None,
                    })
                    .collect();
                and.push(Bson::Document(doc! {"msg_id": {"$in": ids}}));
            }
            _ => {}
        }
    }
    if and.is_empty() {
        Document::new()
    } else {
        doc! {"$and": and}
    }
}

/// The records matching `query`, in submission order (undated last, ties in server order).
pub(crate) async fn matching(
    collection: &Collection<Document>,
    query: &Query,
) -> Result<Vec<TaskRecord>> {
    let cursor = timed("find", collection.find(server_filter(query))).await?;
    let documents: Vec<Document> = timed("find", cursor.try_collect()).await?;
    let mut found = Vec::new();
    for document in &documents {
        let record = decode(document)?;
        if query.matches(&record) {
            found.push(record);
        }
    }
    found.sort_by_key(|record| (record.submitted.is_none(), record.submitted));
    Ok(found)
}

/// The ids of the records with a `submitted` date, oldest first.
pub(crate) async fn history(collection: &Collection<Document>) -> Result<Vec<String>> {
    let dated = Query::new().and(RecordKey::Submitted, Condition::Ne(QueryValue::Null));
    Ok(matching(collection, &dated)
        .await?
        .into_iter()
        .map(|record| record.msg_id)
        .collect())
}

/// One record.
pub(crate) async fn get(
    collection: &Collection<Document>,
    msg_id: &str,
) -> Result<Option<TaskRecord>> {
    match timed("get", collection.find_one(by_id(msg_id))).await? {
        Some(document) => Ok(Some(decode(&document)?)),
        None => Ok(None),
    }
}

/// Inserts `records` in order.
pub(crate) async fn insert(
    collection: &Collection<Document>,
    records: &[TaskRecord],
) -> Result<()> {
    let documents = records.iter().map(encode).collect::<Result<Vec<_>>>()?;
    if documents.is_empty() {
        return Ok(());
    }
    timed("add", collection.insert_many(documents)).await?;
    Ok(())
}

/// Reads a record, applies `update`, and `$set`s the changed fields (appends to stdout
/// need the old text, and some MongoDB-wire servers reject whole-document replacements
/// holding binaries). A record that is gone is left gone.
pub(crate) async fn update(
    collection: &Collection<Document>,
    msg_id: &str,
    update: RecordUpdate,
) -> Result<()> {
    let Some(mut record) = get(collection, msg_id).await? else {
        return Ok(());
    };
    let changed = changed_keys(&update);
    record.apply(update);
    let mut set = Document::new();
    for key in changed {
        set.insert(key.as_str(), field(&record, key)?);
    }
    set.insert(MICROS, micros(&record));
    timed(
        "update",
        collection.update_one(by_id(msg_id), doc! {"$set": set}),
    )
    .await?;
    Ok(())
}

/// Deletes the listed records; returns how many were deleted.
pub(crate) async fn delete_ids(collection: &Collection<Document>, ids: &[String]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let result = timed(
        "delete",
        collection.delete_many(doc! {"msg_id": {"$in": ids}}),
    )
    .await?;
    Ok(result.deleted_count)
}

/// The fields an update changes (stdout/stderr for appends).
fn changed_keys(update: &RecordUpdate) -> Vec<RecordKey> {
    let present = [
        (update.header.is_some(), RecordKey::Header),
        (update.metadata.is_some(), RecordKey::Metadata),
        (update.content.is_some(), RecordKey::Content),
        (update.buffers.is_some(), RecordKey::Buffers),
        (update.submitted.is_some(), RecordKey::Submitted),
        (update.client_uuid.is_some(), RecordKey::ClientUuid),
        (update.engine_uuid.is_some(), RecordKey::EngineUuid),
        (update.started.is_some(), RecordKey::Started),
        (update.completed.is_some(), RecordKey::Completed),
        (update.resubmitted.is_some(), RecordKey::Resubmitted),
        (update.received.is_some(), RecordKey::Received),
        (update.result_header.is_some(), RecordKey::ResultHeader),
        (update.result_metadata.is_some(), RecordKey::ResultMetadata),
        (update.result_content.is_some(), RecordKey::ResultContent),
        (update.result_buffers.is_some(), RecordKey::ResultBuffers),
        (update.queue.is_some(), RecordKey::Queue),
        (update.execute_input.is_some(), RecordKey::ExecuteInput),
        (update.execute_result.is_some(), RecordKey::ExecuteResult),
        (update.error.is_some(), RecordKey::Error),
        (update.append_stdout.is_some(), RecordKey::Stdout),
        (update.append_stderr.is_some(), RecordKey::Stderr),
        (update.label.is_some(), RecordKey::Label),
    ];
    present
        .into_iter()
        .filter_map(|(is, key)| is.then_some(key))
        .collect()
}
