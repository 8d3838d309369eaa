//! Recording what the relays and schedulers saw into the task table and the store.

use serde_json::{json, Value};

use super::Hub;
use crate::controller::wire_fields::{record_parts_with, ReadFields, RecordParts};
use crate::error::Error;
use crate::protocol::message::msg_id_of;
use crate::protocol::{date, error_content, WireMessage};
use crate::store::{direct, JsonObject, RecordUpdate, TaskRecord};

/// Buffers smaller than this are copied into the record rather than shared.
const SHARE_BUFFERS_FROM: usize = 64 * 1024;

/// The buffers to keep in a record. A received frame is a slice of the transport's read
/// buffer, and keeping the slice keeps the whole read buffer alive: small buffers are
/// copied out so a store of many small records does not pin kilobytes each; large ones
/// make up most of their read buffer and are shared without a copy.
fn detached(buffers: &[bytes::Bytes]) -> Vec<bytes::Bytes> {
    buffers
        .iter()
        .map(|buffer| {
            if buffer.len() < SHARE_BUFFERS_FROM {
                bytes::Bytes::copy_from_slice(buffer)
            } else {
                buffer.clone()
            }
        })
        .collect()
}

/// The record of a request as first seen: its parts kept as received text. Its msg_id is
/// `msg_id` when the caller read it already, else the header's; the parts in `read` are
/// not parsed again.
///
/// # Errors
/// [`Error::InvalidMessage`] when the header or metadata is not a JSON object, or the
/// msg_id is neither given nor in the header.
fn request_record(
    wire: &WireMessage,
    msg_id: Option<String>,
    read: ReadFields,
    queue: &str,
    engine_uuid: Option<String>,
) -> crate::Result<TaskRecord> {
    let RecordParts {
        header,
        metadata,
        documents: [header_doc, metadata_doc, content_doc],
        ..
    } = record_parts_with(wire, read)?;
    let msg_id = msg_id
        .or_else(|| header.msg_id.owned())
        .ok_or_else(|| Error::invalid_message("the header has no msg_id"))?;
    Ok(TaskRecord {
        submitted: header.date.date(),
        client_uuid: header.session.owned(),
        label: metadata.label.owned(),
        header: Some(header_doc),
        metadata: Some(metadata_doc),
        content: Some(content_doc),
        buffers: detached(&wire.buffers),
        msg_id,
        engine_uuid,
        queue: Some(queue.to_owned()),
        ..TaskRecord::default()
    })
}

/// The same fields as an update, for a record that already exists (made by early IOPub).
fn request_update(record: TaskRecord) -> RecordUpdate {
    RecordUpdate {
        header: record.header,
        metadata: record.metadata,
        content: record.content,
        buffers: Some(record.buffers),
        submitted: record.submitted,
        client_uuid: record.client_uuid,
        engine_uuid: record.engine_uuid,
        queue: record.queue,
        label: record.label,
        ..RecordUpdate::default()
    }
}

/// The result fields of a reply, its parts kept as received text, and the reply's status;
/// the parts in `read` are not parsed again.
///
/// # Errors
/// [`Error::InvalidMessage`] when the header or metadata is not a JSON object.
fn result_update(
    wire: &WireMessage,
    read: ReadFields,
) -> crate::Result<(RecordUpdate, Option<String>)> {
    let RecordParts {
        header,
        metadata,
        content,
        documents: [header_doc, metadata_doc, content_doc],
    } = record_parts_with(wire, read)?;
    let update = RecordUpdate {
        completed: header.date.date(),
        started: metadata.started.date(),
        engine_uuid: metadata.engine.owned(),
        result_header: Some(header_doc),
        result_metadata: Some(metadata_doc),
        result_content: Some(content_doc),
        result_buffers: Some(detached(&wire.buffers)),
        received: Some(date::now()),
        ..RecordUpdate::default()
    };
    Ok((update, content.status.owned()))
}

/// A request's msg_id and, when `recording`, its record. Recording reads the msg_id with
/// the rest of the header, in one pass; a request whose record cannot be made (a header or
/// metadata that is not an object) is still tracked when its msg_id can be read.
fn request_and_record(
    wire: &WireMessage,
    recording: bool,
    queue: &str,
    engine_uuid: Option<String>,
) -> Option<(String, Option<TaskRecord>)> {
    match recording.then(|| request_record(wire, None, ReadFields::default(), queue, engine_uuid)) {
        Some(Ok(record)) => Some((record.msg_id.clone(), Some(record))),
        _ => msg_id_of(&wire.header).map(|msg_id| (msg_id, None)),
    }
}

impl Hub {
    /// Adds a request's record, or merges it into the stub that early IOPub output created.
    ///
    /// The record is moved into the store, not copied (this runs once per task): only a
    /// stub the Hub made itself is known to exist already.
    async fn save_request(&mut self, record: TaskRecord) {
        let msg_id = record.msg_id.clone();
        if self.stubbed.contains(&msg_id) {
            let update = direct(&self.store).update(&msg_id, request_update(record));
            if let Some(Err(err)) = self.gate.write("update", &msg_id, update).await {
                self.gate.note_error("update", &msg_id, &err);
            }
            return;
        }
        match self
            .gate
            .write("add", &msg_id, direct(&self.store).add(record))
            .await
        {
            None | Some(Ok(())) => {}
            Some(Err(Error::AlreadyExists { .. })) => {
                // Only a client reusing a msg_id (or one recorded by an earlier run of a
                // reused database) gets here: the earlier record is kept.
                tracing::warn!(
                    msg_id,
                    "a request reused a msg_id the task database already holds; \
                     the earlier record is kept"
                );
            }
            Some(Err(err)) => self.gate.note_error("add", &msg_id, &err),
        }
    }

    /// Whether this Hub recorded the request of `msg_id` (or a stub for it) recently.
    fn has_record(&self, msg_id: &str) -> bool {
        self.pending.contains(msg_id)
            || self.completed.contains(msg_id)
            || self.stubbed.contains(msg_id)
    }

    /// Updates a record, creating a stub first when the request has not been recorded.
    ///
    /// The update is moved into the store, not copied: whether a record exists is known
    /// beforehand for every request this Hub saw.
    async fn update_record(&mut self, msg_id: &str, update: RecordUpdate) {
        if !self.has_record(msg_id) {
            // Output that overtook its request, or a result of a request older than the
            // Hub's memory (or of an earlier run): make sure a record exists.
            let stub = TaskRecord {
                msg_id: msg_id.to_owned(),
                ..TaskRecord::default()
            };
            match self
                .gate
                .write("add", msg_id, direct(&self.store).add(stub))
                .await
            {
                Some(Ok(())) => self.stubbed.insert(msg_id),
                Some(Err(Error::AlreadyExists { .. })) => {}
                Some(Err(err)) => return self.gate.note_error("add", msg_id, &err),
                None => return,
            }
        }
        let written = self
            .gate
            .write("update", msg_id, direct(&self.store).update(msg_id, update))
            .await;
        if let Some(Err(err)) = written {
            self.gate.note_error("update", msg_id, &err);
        }
    }

    pub(super) async fn record_mux_request(&mut self, wire: WireMessage) {
        let Some(uuid) = wire
            .idents
            .first()
            .and_then(|id| std::str::from_utf8(id).ok())
        else {
            return;
        };
        let uuid = uuid.to_owned();
        if self.engines.id_of(&uuid).is_none() {
            return; // as ipyparallel: requests to engines not (yet) registered are not recorded
        }
        let Some((msg_id, record)) =
            request_and_record(&wire, self.recording, "mux", Some(uuid.clone()))
        else {
            return;
        };
        self.pending.insert(msg_id.clone());
        if let Some(engine) = self.engines.by_uuid_mut(&uuid) {
            engine.queue.insert(msg_id);
        }
        if let Some(record) = record {
            self.save_request(record).await;
        }
    }

    pub(super) async fn record_mux_reply(&mut self, wire: WireMessage) {
        let Some(uuid) = wire
            .idents
            .get(1)
            .and_then(|id| std::str::from_utf8(id).ok())
        else {
            return;
        };
        let uuid = uuid.to_owned();
        let Some(msg_id) = msg_id_of(&wire.parent_header) else {
            return;
        };
        if self.pending.remove(&msg_id) {
            self.note_completed(&msg_id);
            if let Some(engine) = self.engines.by_uuid_mut(&uuid) {
                engine.queue.remove(&msg_id);
                engine.completed += 1;
            }
        } else if !self.completed.contains(&msg_id) {
            return; // a reply to nothing we recorded
        }
        if self.recording {
            let Ok((update, _)) = result_update(&wire, ReadFields::default()) else {
                return;
            };
            self.update_record(&msg_id, update).await;
        }
    }

    pub(super) async fn record_task_request(
        &mut self,
        msg_id: String,
        read: ReadFields,
        wire: WireMessage,
    ) {
        self.pending.insert(msg_id.clone());
        self.unassigned.insert(msg_id.clone());
        if self.recording {
            let Ok(record) = request_record(&wire, Some(msg_id), read, "task", None) else {
                return;
            };
            self.save_request(record).await;
        }
    }

    pub(super) async fn record_task_assignment(&mut self, msg_id: String, engine: String) {
        self.unassigned.remove(&msg_id);
        if let Some(entry) = self.engines.by_uuid_mut(&engine) {
            entry.tasks.insert(msg_id.clone());
        }
        if self.recording {
            let update = RecordUpdate {
                engine_uuid: Some(engine),
                ..RecordUpdate::default()
            };
            self.update_record(&msg_id, update).await;
        }
    }

    pub(super) async fn record_task_result(
        &mut self,
        msg_id: String,
        read: ReadFields,
        wire: WireMessage,
    ) {
        #[derive(Default, serde::Deserialize)]
        struct Engine {
            engine: Option<String>,
        }
        #[derive(Default, serde::Deserialize)]
        struct Status {
            status: Option<String>,
        }
        // Recording reads the engine and the status with the rest of the reply, in one pass
        // over each part; without a record (or a database) only they are read.
        let (update, engine, status) = match self.recording.then(|| result_update(&wire, read)) {
            Some(Ok((update, status))) => {
                let engine = update.engine_uuid.clone();
                (Some(update), engine, status)
            }
            _ => {
                let engine = serde_json::from_slice::<Engine>(&wire.metadata)
                    .unwrap_or_default()
                    .engine;
                let status = serde_json::from_slice::<Status>(&wire.content)
                    .unwrap_or_default()
                    .status;
                (None, engine, status)
            }
        };
        let aborted = status.as_deref() == Some("aborted");
        if self.pending.remove(&msg_id) {
            self.unassigned.remove(&msg_id);
            self.note_completed(&msg_id);
        }
        if let Some(entry) = engine
            .as_deref()
            .and_then(|uuid| self.engines.by_uuid_mut(uuid))
        {
            entry.tasks.remove(&msg_id);
            if !aborted {
                entry.completed += 1;
            }
        }
        if let Some(update) = update {
            self.update_record(&msg_id, update).await;
        }
    }

    pub(super) async fn record_iopub(&mut self, wire: WireMessage) {
        // The IOPub relay has checked the signature already. Without a database only an
        // engine's own `shutdown_reply` matters; skip parsing everything else.
        if !self.recording && !wire.header.windows(14).any(|w| w == b"shutdown_reply") {
            return;
        }
        let Ok(msg) = wire.parse() else { return };
        let msg_type = msg.header.msg_type.as_str();
        if msg_type == "shutdown_reply" {
            if let Some(id) = self.engines.id_of(&msg.header.session) {
                tracing::info!(engine.id = id, "engine shut down");
                self.unregister(id).await;
            }
            return;
        }
        let Some(parent) = msg.parent_msg_id().map(str::to_owned) else {
            return; // iopub_welcome and other messages with no request
        };
        let content = msg.content_map();
        let text = |key: &str| content.get(key).and_then(Value::as_str).map(str::to_owned);
        if !self.recording {
            return;
        }
        let update = match msg_type {
            "stream" => match text("name").as_deref() {
                Some("stdout") => RecordUpdate {
                    append_stdout: text("text"),
                    ..RecordUpdate::default()
                },
                Some("stderr") => RecordUpdate {
                    append_stderr: text("text"),
                    ..RecordUpdate::default()
                },
                _ => return,
            },
            "execute_input" => RecordUpdate {
                execute_input: text("code"),
                ..RecordUpdate::default()
            },
            "execute_result" => RecordUpdate {
                execute_result: Some(content.clone().into()),
                ..RecordUpdate::default()
            },
            "error" => RecordUpdate {
                error: Some(content.clone().into()),
                ..RecordUpdate::default()
            },
            _ => return, // status, display_data, data_message, comms: not recorded
        };
        self.update_record(&parent, update).await;
    }

    /// Records the engine-died error for a direct request stranded on a dead engine.
    pub(super) async fn record_engine_died(&mut self, msg_id: &str, id: u32, uuid: &str) {
        if !self.pending.remove(msg_id) {
            return;
        }
        self.note_completed(msg_id);
        let now = date::now();
        let error = error_content(
            "EngineError",
            &format!("Engine {id} died while running task '{msg_id}'"),
        );
        let update = RecordUpdate {
            result_header: json!({"engine": uuid, "date": date::format(&now)})
                .as_object()
                .cloned()
                .map(JsonObject::from),
            result_content: error.as_object().cloned().map(JsonObject::from),
            result_buffers: Some(Vec::new()),
            completed: Some(now),
            received: Some(now),
            ..RecordUpdate::default()
        };
        self.update_record(msg_id, update).await;
    }
}
