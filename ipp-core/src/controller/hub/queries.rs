//! The Hub's query protocol (spec §5): each `*_request` and its reply.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::gate::bounded_read;
use super::Hub;
use crate::controller::events::TaskCommand;
use crate::error::Error;
use crate::protocol::{date, error_content, key_error_value, to_json_bytes, JsonMap, Message};
use crate::store::{direct, Condition, JsonObject, Query, QueryValue, RecordKey, TaskRecord};

/// A store error as the error dict a client sees.
fn store_error(err: &Error) -> Value {
    match err {
        Error::Unsupported { .. } => error_content(
            "KeyError",
            &key_error_value("NoDB backend doesn't store any data. Start the controller with a task database (--dictdb or --sqlitedb) to query it."),
        ),
        Error::NotFound { msg_id } => {
            error_content("KeyError", &key_error_value(&format!("No such message: {msg_id}")))
        }
        Error::InvalidQuery { reason } => error_content("KeyError", &key_error_value(reason)),
        Error::Culled { .. } => error_content("KeyError", &key_error_value(&err.to_string())),
        other => error_content("RuntimeError", &other.to_string()),
    }
}

fn msg_ids_query(ids: &[String]) -> Query {
    Query {
        clauses: vec![(
            RecordKey::MsgId,
            Condition::In(ids.iter().cloned().map(QueryValue::Str).collect()),
        )],
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

fn date_value(value: Option<crate::protocol::Timestamp>) -> Value {
    value.map_or(Value::Null, |d| Value::String(date::format(&d)))
}

fn map_value(value: Option<&JsonObject>) -> Value {
    value.map_or(Value::Null, JsonObject::to_value)
}

/// One deletion a `purge_request` asks for.
enum Purge {
    /// These records.
    Listed(Vec<String>),
    /// The records matching this query.
    Matching(Query),
}

/// The records a `resubmit_request` asked for, read off the Hub's loop, handed back to it.
pub(super) struct ResubmitFound {
    msg: Message,
    /// The ids asked for (a missing record is an error for the whole request).
    ids: Vec<String>,
    records: crate::Result<Vec<TaskRecord>>,
}

/// The ids of a `result_request`, by what the Hub knows of them.
#[derive(Default)]
struct ResultIds {
    pending: Vec<String>,
    completed: Vec<String>,
    /// Neither pending nor recently completed: only the task database can say.
    unknown: Vec<String>,
}

/// A `result_reply`'s content and buffers: `records` are the store's for the completed and
/// unknown ids (the unknown ones only, with `status_only`). An id nobody knows is a
/// `KeyError`, as in ipyparallel.
fn result_reply(
    mut ids: ResultIds,
    records: Vec<TaskRecord>,
    status_only: bool,
) -> (Value, Vec<Bytes>) {
    let records: HashMap<String, TaskRecord> = records
        .into_iter()
        .map(|record| (record.msg_id.clone(), record))
        .collect();
    // Ids only the database knows (another Hub run, a culled table entry…).
    for id in std::mem::take(&mut ids.unknown) {
        match records.get(&id) {
            Some(record) if record.completed.is_some() => ids.completed.push(id),
            Some(_) => ids.pending.push(id),
            None => {
                let evalue = key_error_value(&format!("No such message: {id}"));
                return (error_content("KeyError", &evalue), Vec::new());
            }
        }
    }
    ids.completed.sort();
    let mut reply = JsonMap::new();
    reply.insert("status".into(), json!("ok"));
    reply.insert("pending".into(), json!(ids.pending));
    reply.insert("completed".into(), json!(ids.completed));
    let mut buffers: Vec<Bytes> = Vec::new();
    if !status_only {
        for id in &ids.completed {
            let Some(record) = records.get(id) else {
                let error = store_error(&Error::NotFound { msg_id: id.clone() });
                return (error, Vec::new());
            };
            reply.insert(
                id.clone(),
                json!({
                    "header": map_value(record.header.as_ref()),
                    "metadata": map_value(record.metadata.as_ref()),
                    "result_metadata": map_value(record.result_metadata.as_ref()),
                    "result_header": map_value(record.result_header.as_ref()),
                    "result_content": map_value(record.result_content.as_ref()),
                    "received": date_value(record.received),
                    "io": {
                        "execute_input": record.execute_input,
                        "execute_result": map_value(record.execute_result.as_ref()),
                        "error": map_value(record.error.as_ref()),
                        "stdout": record.stdout,
                        "stderr": record.stderr,
                    },
                }),
            );
            buffers.extend(record.result_buffers.iter().cloned());
        }
    }
    (Value::Object(reply), buffers)
}

/// A `db_reply`'s content and buffers for `records`, each with `keys` (or every field);
/// the request's and result's buffers travel as frames when their keys are asked for.
fn db_reply(records: &[TaskRecord], keys: Option<&[RecordKey]>) -> (Value, Vec<Bytes>) {
    let wants = |key: RecordKey| keys.is_some_and(|keys| keys.contains(&key));
    let (with_buffers, with_results) = (wants(RecordKey::Buffers), wants(RecordKey::ResultBuffers));
    let mut buffers = Vec::new();
    let mut buffer_lens = Vec::new();
    let mut result_buffer_lens = Vec::new();
    let rendered: Vec<Value> = records
        .iter()
        .map(|record| {
            if with_buffers {
                buffer_lens.push(record.buffers.len());
                buffers.extend(record.buffers.iter().cloned());
            }
            if with_results {
                result_buffer_lens.push(record.result_buffers.len());
                buffers.extend(record.result_buffers.iter().cloned());
            }
            Value::Object(record.to_json(keys))
        })
        .collect();
    let content = json!({
        "status": "ok",
        "records": rendered,
        "buffer_lens": if with_buffers { json!(buffer_lens) } else { Value::Null },
        "result_buffer_lens": if with_results { json!(result_buffer_lens) } else { Value::Null },
    });
    (content, buffers)
}

impl Hub {
    pub(super) async fn connection_request(&mut self, msg: Message) {
        let engines: JsonMap = self
            .engines
            .iter()
            .map(|e| (e.id.to_string(), Value::String(e.uuid.clone())))
            .collect();
        self.answer(
            &msg,
            "connection_reply",
            json!({"status": "ok", "engines": engines}),
        )
        .await;
    }

    /// Resolves `targets` (null = all) to engine ids, or the error dict to send.
    fn resolve_targets(&self, targets: Option<&Value>) -> Result<Vec<u32>, Value> {
        match targets {
            None | Some(Value::Null) => Ok(self.engines.iter().map(|e| e.id).collect()),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(error_content("IndexError", "No Engines Registered"));
                }
                let mut ids = Vec::new();
                let mut bad = Vec::new();
                for item in items {
                    match self.engines.resolve(item) {
                        Some(id) => ids.push(id),
                        None => bad.push(item.to_string()),
                    }
                }
                if bad.is_empty() {
                    Ok(ids)
                } else {
                    Err(error_content(
                        "IndexError",
                        &format!("No Such Engine: [{}]", bad.join(", ")),
                    ))
                }
            }
            Some(one) => self
                .engines
                .resolve(one)
                .map(|id| vec![id])
                .ok_or_else(|| error_content("IndexError", &format!("No Such Engine: [{one}]"))),
        }
    }

    /// Counts (or, `verbose`, ids) from the Hub's own tables; with `verbose`, each
    /// engine's completed ids come from the task database in one query, off the Hub's loop.
    pub(super) async fn queue_request(&mut self, msg: Message) {
        let content = msg.content_map();
        let verbose = content
            .get("verbose")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ids = match self.resolve_targets(content.get("targets")) {
            Ok(ids) => ids,
            Err(error) => return self.answer(&msg, "hub_error", error).await,
        };
        let list = |ids: &mut dyn Iterator<Item = &String>| -> Value {
            Value::Array(ids.map(|id| Value::String(id.clone())).collect())
        };
        let mut reply = JsonMap::new();
        reply.insert("status".into(), json!("ok"));
        // Each engine's entry, and (verbose) whose completed ids to fill in.
        let mut completed_of: Vec<(String, String)> = Vec::new();
        for id in ids {
            let Some(engine) = self.engines.get(id) else {
                continue;
            };
            let entry = if verbose {
                completed_of.push((id.to_string(), engine.uuid.clone()));
                json!({
                    "queue": list(&mut engine.queue.iter()),
                    "completed": [],
                    "tasks": list(&mut engine.tasks.iter()),
                })
            } else {
                json!({
                    "queue": engine.queue.len(),
                    "completed": engine.completed,
                    "tasks": engine.tasks.len(),
                })
            };
            reply.insert(id.to_string(), entry);
        }
        let unassigned = if verbose {
            list(&mut self.unassigned.iter())
        } else {
            json!(self.unassigned.len())
        };
        reply.insert("unassigned".into(), unassigned);
        if completed_of.is_empty() {
            return self.answer(&msg, "queue_reply", Value::Object(reply)).await;
        }
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "queue_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let replies = self.replies();
        tokio::spawn(async move {
            let uuids = completed_of
                .iter()
                .map(|(_, uuid)| QueryValue::Str(uuid.clone()));
            let done = Query {
                clauses: vec![
                    (RecordKey::EngineUuid, Condition::In(uuids.collect())),
                    (RecordKey::Completed, Condition::Ne(QueryValue::Null)),
                ],
            };
            let keys = [RecordKey::MsgId, RecordKey::EngineUuid];
            let content = match bounded_read(direct(&store).find(&done, Some(&keys))).await {
                Ok(records) => {
                    let mut by_engine: HashMap<String, Vec<String>> = HashMap::new();
                    for record in records {
                        if let Some(uuid) = record.engine_uuid {
                            by_engine.entry(uuid).or_default().push(record.msg_id);
                        }
                    }
                    for (id, uuid) in completed_of {
                        let done = by_engine.remove(&uuid).unwrap_or_default();
                        if let Some(Value::Object(entry)) = reply.get_mut(&id) {
                            entry.insert("completed".into(), json!(done));
                        }
                    }
                    Value::Object(reply)
                }
                Err(err) => store_error(&err),
            };
            replies
                .answer(&msg, "queue_reply", content, Vec::new())
                .await;
        });
    }

    pub(super) async fn load_request(&mut self, msg: Message) {
        let ids = match self.resolve_targets(msg.content_map().get("targets")) {
            Ok(ids) => ids,
            Err(error) => return self.answer(&msg, "hub_error", error).await,
        };
        let mut reply = JsonMap::new();
        reply.insert("status".into(), json!("ok"));
        for id in ids {
            if let Some(engine) = self.engines.get(id) {
                reply.insert(
                    id.to_string(),
                    json!(engine.queue.len() + engine.tasks.len()),
                );
            }
        }
        self.answer(&msg, "load_reply", Value::Object(reply)).await;
    }

    /// Sorts the ids by what the Hub knows of them here; the records come from the store
    /// off the Hub's loop (a `get_result` of many tasks must not hold up routing).
    pub(super) async fn result_request(&mut self, msg: Message) {
        let content = msg.content_map();
        let status_only = content
            .get("status_only")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ids: BTreeSet<String> = string_list(content.get("msg_ids")).into_iter().collect();
        let mut known = ResultIds::default();
        for id in ids {
            if self.pending.contains(&id) {
                known.pending.push(id);
            } else if self.completed.contains(&id) {
                known.completed.push(id);
            } else {
                known.unknown.push(id);
            }
        }
        let wanted: Vec<String> = if status_only {
            known.unknown.clone()
        } else {
            known
                .completed
                .iter()
                .chain(&known.unknown)
                .cloned()
                .collect()
        };
        if let Some(id) = wanted.iter().find(|id| self.gate.was_dropped(id)) {
            let evalue = key_error_value(&format!(
                "Task {id} was not fully recorded: the task database was not keeping up \
                 when it ran (see the controller's log)"
            ));
            let error = error_content("KeyError", &evalue);
            return self.answer(&msg, "result_reply", error).await;
        }
        if wanted.is_empty() {
            let (content, buffers) = result_reply(known, Vec::new(), status_only);
            return self
                .replies()
                .answer(&msg, "result_reply", content, buffers)
                .await;
        }
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "result_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let replies = self.replies();
        tokio::spawn(async move {
            let (content, buffers) =
                match bounded_read(direct(&store).find(&msg_ids_query(&wanted), None)).await {
                    Ok(records) => result_reply(known, records, status_only),
                    Err(err) => (store_error(&err), Vec::new()),
                };
            replies.answer(&msg, "result_reply", content, buffers).await;
        });
    }

    /// Answers off the Hub's loop (a long history must not hold up recording and routing).
    pub(super) async fn history_request(&mut self, msg: Message) {
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "history_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let replies = self.replies();
        tokio::spawn(async move {
            let content = match bounded_read(direct(&store).history()).await {
                Ok(history) => json!({"status": "ok", "history": history}),
                Err(err) => store_error(&err),
            };
            replies
                .answer(&msg, "history_reply", content, Vec::new())
                .await;
        });
    }

    /// Answers off the Hub's loop (a query over a large table must not hold up recording
    /// and routing). It sees every record of what the client had seen when it asked: the
    /// Hub handled the events queued before the query, and a store's reads wait for the
    /// writes queued before them.
    pub(super) async fn db_request(&mut self, msg: Message) {
        let content = msg.content_map();
        let query = match Query::from_json(content.get("query").unwrap_or(&json!({}))) {
            Ok(query) => query,
            Err(err) => return self.answer(&msg, "db_reply", store_error(&err)).await,
        };
        let keys: Option<Vec<RecordKey>> = match content.get("keys") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let parsed: Result<Vec<RecordKey>, Error> = string_list(Some(value))
                    .iter()
                    .map(|key| RecordKey::from_str(key))
                    .collect();
                match parsed {
                    Ok(keys) => Some(keys),
                    Err(err) => return self.answer(&msg, "db_reply", store_error(&err)).await,
                }
            }
        };
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "db_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let replies = self.replies();
        tokio::spawn(async move {
            let (content, buffers) =
                match bounded_read(direct(&store).find(&query, keys.as_deref())).await {
                    Ok(records) => db_reply(&records, keys.as_deref()),
                    Err(err) => (store_error(&err), Vec::new()),
                };
            replies.answer(&msg, "db_reply", content, buffers).await;
        });
    }

    /// Checks the request here (no id still pending, every engine known: nothing is
    /// dropped otherwise), then drops off the Hub's loop (purging a large table takes a
    /// while).
    pub(super) async fn purge_request(&mut self, msg: Message) {
        let content = msg.content_map();
        let drops = if content.get("msg_ids").and_then(Value::as_str) == Some("all") {
            vec![Purge::Matching(Query {
                clauses: vec![(RecordKey::Completed, Condition::Ne(QueryValue::Null))],
            })]
        } else {
            let ids = string_list(content.get("msg_ids"));
            match self.purges(ids, content.get("engine_ids")) {
                Ok(drops) => drops,
                Err(error) => return self.answer(&msg, "purge_reply", error).await,
            }
        };
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "purge_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let replies = self.replies();
        tokio::spawn(async move {
            let mut reply = json!({"status": "ok"});
            for drop in drops {
                let dropped = match drop {
                    Purge::Listed(ids) => bounded_read(direct(&store).drop_records(&ids)).await,
                    Purge::Matching(query) => bounded_read(direct(&store).drop_matching(&query))
                        .await
                        .map(|_| ()),
                };
                if let Err(err) = dropped {
                    reply = store_error(&err);
                    break;
                }
            }
            replies.answer(&msg, "purge_reply", reply, Vec::new()).await;
        });
    }

    /// What purging `msg_ids` and the finished tasks of `engine_ids` drops.
    ///
    /// # Errors
    /// The `IndexError` content for an id still pending or an unknown engine.
    fn purges(
        &self,
        msg_ids: Vec<String>,
        engine_ids: Option<&Value>,
    ) -> Result<Vec<Purge>, Value> {
        if let Some(busy) = msg_ids.iter().find(|id| self.pending.contains(*id)) {
            return Err(error_content(
                "IndexError",
                &format!("msg pending: '{busy}'"),
            ));
        }
        let mut drops = vec![Purge::Listed(msg_ids)];
        let engine_ids = engine_ids
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for eid in engine_ids {
            let Some(uuid) = self
                .engines
                .resolve(eid)
                .and_then(|id| self.engines.get(id))
                .map(|e| e.uuid.clone())
            else {
                return Err(error_content(
                    "IndexError",
                    &format!("No such engine: {eid}"),
                ));
            };
            drops.push(Purge::Matching(Query {
                clauses: vec![
                    (RecordKey::EngineUuid, Condition::Eq(QueryValue::Str(uuid))),
                    (RecordKey::Completed, Condition::Ne(QueryValue::Null)),
                ],
            }));
        }
        Ok(drops)
    }

    /// Reads the records to resubmit off the Hub's loop (a slow store must not hold up the
    /// events that routing waits on); [`Hub::resubmit_found`] goes on once they are read.
    pub(super) async fn resubmit_request(&mut self, msg: Message) {
        let ids = string_list(msg.content_map().get("msg_ids"));
        if let Err(err) = self.gate.admit_read() {
            return self.answer(&msg, "resubmit_reply", store_error(&err)).await;
        }
        let store = Arc::clone(&self.store);
        let found = self.resubmits.clone();
        tokio::spawn(async move {
            let records = bounded_read(direct(&store).find(&msg_ids_query(&ids), None)).await;
            // Gone only when the Hub is: nobody is left to answer.
            let _ = found.send(ResubmitFound { msg, ids, records }).await;
        });
    }

    /// Resubmits the records a [`Hub::resubmit_request`] read: each as a new task with a
    /// new msg_id, recorded before it is queued; answers with the new ids.
    pub(super) async fn resubmit_found(&mut self, found: ResubmitFound) {
        let ResubmitFound { msg, ids, records } = found;
        let records = match records {
            Ok(records) => records,
            Err(err) => return self.answer(&msg, "resubmit_reply", store_error(&err)).await,
        };
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| !records.iter().any(|r| &r.msg_id == *id))
            .collect();
        if !missing.is_empty() {
            let evalue = key_error_value(&format!("No such msg(s): {missing:?}"));
            let error = error_content("KeyError", &evalue);
            return self.answer(&msg, "resubmit_reply", error).await;
        }
        let mut resubmitted = JsonMap::new();
        for record in records {
            let Some(mut header) = record.header.clone().map(JsonObject::into_map) else {
                let error = error_content(
                    "KeyError",
                    &key_error_value(&format!("no request recorded for {}", record.msg_id)),
                );
                return self.answer(&msg, "resubmit_reply", error).await;
            };
            let new_id = self.session.new_msg_id();
            header.insert("msg_id".into(), json!(new_id));
            header.insert("date".into(), json!(date::format(&date::now())));
            let content = Value::Object(record.content.clone().unwrap_or_default().into_map());
            let header_bytes = to_json_bytes(&header);
            let frames = self.session.serialize_parts(
                Vec::new(),
                header_bytes.clone(),
                header_bytes,
                Bytes::from_static(b"{}"),
                to_json_bytes(&content),
                record.buffers.clone(),
            );
            let Ok(wire) = crate::protocol::WireMessage::split(frames) else {
                continue;
            };
            // Record the new task now, so a client polling for it finds it pending.
            self.record_task_request(new_id.clone(), Default::default(), wire.clone())
                .await;
            if self
                .resubmit
                .send(TaskCommand::Resubmit(wire))
                .await
                .is_err()
            {
                let error = error_content("RuntimeError", "the task scheduler is not running");
                return self.answer(&msg, "resubmit_reply", error).await;
            }
            let update = crate::store::RecordUpdate {
                resubmitted: Some(new_id.clone()),
                ..crate::store::RecordUpdate::default()
            };
            let marked = direct(&self.store).update(&record.msg_id, update);
            if let Some(Err(err)) = self.gate.write("update", &record.msg_id, marked).await {
                tracing::debug!(error = %err, "could not mark a task resubmitted");
            }
            resubmitted.insert(record.msg_id.clone(), json!(new_id));
        }
        let reply = json!({"status": "ok", "resubmitted": resubmitted});
        self.answer(&msg, "resubmit_reply", reply).await;
    }

    pub(super) async fn shutdown_request(&mut self, msg: Message) {
        tracing::info!("shutdown requested by a client");
        self.answer(&msg, "shutdown_reply", json!({"status": "ok"}))
            .await;
        let note = self.session.reply(
            &msg.header,
            "shutdown_notification",
            json!({"status": "ok"}),
        );
        self.notify(note).await;
        // Give the reply and the notification a moment to leave before the sockets close.
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            shutdown.cancel();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodb_errors_say_what_to_do() {
        let error = store_error(&Error::Unsupported {
            operation: "find",
            implementer: "nodb",
        });
        assert_eq!(error["ename"], "KeyError");
        assert!(error["evalue"].as_str().unwrap().contains("NoDB"));
    }

    #[test]
    fn string_lists_accept_one_string() {
        assert_eq!(string_list(Some(&json!("a"))), vec!["a".to_owned()]);
        assert_eq!(string_list(Some(&json!(["a", 1, "b"]))).len(), 2);
    }
}
