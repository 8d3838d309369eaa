//! Recording what the relays and schedulers saw into the task table and the store.

use serde_json::{json, Value};

use super::Hub;
use crate::controller::wire_fields::ReadFields;
use crate::error::Error;
use crate::protocol::message::msg_id_of;
use crate::protocol::{date, error_content, WireMessage};
use crate::store::{direct, JsonObject, ReceivedRequest, ReceivedResult, RecordUpdate, TaskRecord};

/// The reply's engine and status, which the Hub tracks whether or not it records the
/// reply: the engine from what the scheduler read of the metadata when it did, else
/// (and the status always) parsed from the reply.
fn engine_and_status(wire: &WireMessage, read: &ReadFields) -> (Option<String>, Option<String>) {
    #[derive(Default, serde::Deserialize)]
    struct Engine {
        engine: Option<String>,
    }
    #[derive(Default, serde::Deserialize)]
    struct Status {
        status: Option<String>,
    }
    let engine = match &read.metadata {
        Some(metadata) => metadata.engine.0.as_deref().map(str::to_owned),
        None => {
            serde_json::from_slice::<Engine>(&wire.metadata)
                .unwrap_or_default()
                .engine
        }
    };
    let status = serde_json::from_slice::<Status>(&wire.content)
        .unwrap_or_default()
        .status;
    (engine, status)
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

impl Hub {
    /// Adds a request's record, or merges it into the stub that early IOPub output created.
    ///
    /// The request goes to the store as received, and the store builds its record (off the
    /// Hub's loop when it can): only a stub the Hub made itself is known to exist already.
    async fn save_request(&mut self, request: ReceivedRequest) {
        let msg_id = request.msg_id().to_owned();
        if self.stubbed.contains(&msg_id) {
            let update = request_update(request.into_record());
            let update = direct(&self.store).update(&msg_id, update);
            if let Some(Err(err)) = self.gate.write("update", &msg_id, update).await {
                self.gate.note_error("update", &msg_id, &err);
            }
            return;
        }
        match self
            .gate
            .write("add", &msg_id, direct(&self.store).add_received(request))
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

    /// Makes sure the store has a record of `msg_id` to update: a stub when the request
    /// was not recorded (output that overtook its request, or a result of a request older
    /// than the Hub's memory, or of an earlier run). `false` when there is none to update.
    async fn ensure_record(&mut self, msg_id: &str) -> bool {
        if self.has_record(msg_id) {
            return true;
        }
        let stub = TaskRecord {
            msg_id: msg_id.to_owned(),
            ..TaskRecord::default()
        };
        match self
            .gate
            .write("add", msg_id, direct(&self.store).add(stub))
            .await
        {
            Some(Ok(())) => {
                self.stubbed.insert(msg_id);
                true
            }
            Some(Err(Error::AlreadyExists { .. })) => true,
            Some(Err(err)) => {
                self.gate.note_error("add", msg_id, &err);
                false
            }
            None => false,
        }
    }

    /// Updates a record, creating a stub first when the request has not been recorded.
    ///
    /// The update is moved into the store, not copied: whether a record exists is known
    /// beforehand for every request this Hub saw.
    async fn update_record(&mut self, msg_id: &str, update: RecordUpdate) {
        if !self.ensure_record(msg_id).await {
            return;
        }
        let written = self
            .gate
            .write("update", msg_id, direct(&self.store).update(msg_id, update))
            .await;
        if let Some(Err(err)) = written {
            self.gate.note_error("update", msg_id, &err);
        }
    }

    /// Records a task's reply as received (the store builds the update, off the Hub's
    /// loop when it can), creating a stub first when the request has not been recorded.
    async fn save_result(&mut self, result: ReceivedResult) {
        let msg_id = result.msg_id().to_owned();
        if !self.ensure_record(&msg_id).await {
            return;
        }
        let written = self
            .gate
            .write(
                "update",
                &msg_id,
                direct(&self.store).update_received(result),
            )
            .await;
        if let Some(Err(err)) = written {
            self.gate.note_error("update", &msg_id, &err);
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
        let Some(msg_id) = msg_id_of(&wire.header) else {
            return;
        };
        self.pending.insert(msg_id.clone());
        if let Some(engine) = self.engines.by_uuid_mut(&uuid) {
            engine.queue.insert(msg_id.clone());
        }
        if self.recording {
            let request =
                ReceivedRequest::new(msg_id, wire, ReadFields::default(), "mux", Some(uuid));
            self.save_request(request).await;
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
            self.save_result(ReceivedResult::new(msg_id, wire, ReadFields::default()))
                .await;
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
            let request = ReceivedRequest::new(msg_id, wire, read, "task", None);
            self.save_request(request).await;
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
        let (engine, status) = engine_and_status(&wire, &read);
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
        if self.recording {
            self.save_result(ReceivedResult::new(msg_id, wire, read))
                .await;
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
