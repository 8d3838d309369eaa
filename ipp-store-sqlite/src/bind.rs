//! Binding a record's values to the writer's statements without a heap value per column.
//!
//! [`Field`] borrows each value from the record or update; [`Binder`] turns it into what
//! the column stores (see [`crate::schema`]): JSON objects and buffer blobs are encoded into
//! one reused scratch buffer, dates into a stack array, text is bound as it is. SQLite copies
//! every bound value (`SQLITE_TRANSIENT`), so the scratch buffer can be reused at once.

use bytes::Bytes;
use ipp_core::protocol::Timestamp;
use ipp_core::store::{JsonObject, RecordKey, RecordUpdate, TaskRecord};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::Statement;

use crate::schema::{encode_buffers_into, DateText};

/// One column's value, borrowed from a record or an update.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Field<'a> {
    /// SQL NULL.
    Null,
    /// Text as it is.
    Text(&'a str),
    /// A date, stored as fixed-width ISO text.
    Date(&'a Timestamp),
    /// A JSON object, stored as its JSON text (received text is bound as it came).
    Json(&'a JsonObject),
    /// Buffers, stored as our blob encoding (NULL when there are none).
    Buffers(&'a [Bytes]),
}

impl<'a> Field<'a> {
    fn text(value: &'a Option<String>) -> Self {
        value.as_deref().map_or(Field::Null, Field::Text)
    }

    fn date(value: &'a Option<Timestamp>) -> Self {
        value.as_ref().map_or(Field::Null, Field::Date)
    }

    fn json(value: &'a Option<JsonObject>) -> Self {
        value.as_ref().map_or(Field::Null, Field::Json)
    }
}

/// `record`'s value of the column `key`.
pub(crate) fn record_field(record: &TaskRecord, key: RecordKey) -> Field<'_> {
    match key {
        RecordKey::MsgId => Field::Text(&record.msg_id),
        RecordKey::Header => Field::json(&record.header),
        RecordKey::Metadata => Field::json(&record.metadata),
        RecordKey::Content => Field::json(&record.content),
        RecordKey::Buffers => Field::Buffers(&record.buffers),
        RecordKey::Submitted => Field::date(&record.submitted),
        RecordKey::ClientUuid => Field::text(&record.client_uuid),
        RecordKey::EngineUuid => Field::text(&record.engine_uuid),
        RecordKey::Started => Field::date(&record.started),
        RecordKey::Completed => Field::date(&record.completed),
        RecordKey::Resubmitted => Field::text(&record.resubmitted),
        RecordKey::Received => Field::date(&record.received),
        RecordKey::ResultHeader => Field::json(&record.result_header),
        RecordKey::ResultMetadata => Field::json(&record.result_metadata),
        RecordKey::ResultContent => Field::json(&record.result_content),
        RecordKey::ResultBuffers => Field::Buffers(&record.result_buffers),
        RecordKey::Queue => Field::text(&record.queue),
        RecordKey::ExecuteInput => Field::text(&record.execute_input),
        RecordKey::ExecuteResult => Field::json(&record.execute_result),
        RecordKey::Error => Field::json(&record.error),
        RecordKey::Stdout => Field::Text(&record.stdout),
        RecordKey::Stderr => Field::Text(&record.stderr),
        RecordKey::Label => Field::text(&record.label),
    }
}

/// The columns an update replaces, with their new values, in schema order. The appended
/// `stdout` / `stderr` text is not among them (see [`RecordUpdate::append_stdout`]).
pub(crate) fn update_fields(update: &RecordUpdate) -> impl Iterator<Item = (RecordKey, Field<'_>)> {
    let set = |key, present: bool, field| present.then_some((key, field));
    [
        set(
            RecordKey::Header,
            update.header.is_some(),
            Field::json(&update.header),
        ),
        set(
            RecordKey::Metadata,
            update.metadata.is_some(),
            Field::json(&update.metadata),
        ),
        set(
            RecordKey::Content,
            update.content.is_some(),
            Field::json(&update.content),
        ),
        update
            .buffers
            .as_deref()
            .map(|b| (RecordKey::Buffers, Field::Buffers(b))),
        set(
            RecordKey::Submitted,
            update.submitted.is_some(),
            Field::date(&update.submitted),
        ),
        set(
            RecordKey::ClientUuid,
            update.client_uuid.is_some(),
            Field::text(&update.client_uuid),
        ),
        set(
            RecordKey::EngineUuid,
            update.engine_uuid.is_some(),
            Field::text(&update.engine_uuid),
        ),
        set(
            RecordKey::Started,
            update.started.is_some(),
            Field::date(&update.started),
        ),
        set(
            RecordKey::Completed,
            update.completed.is_some(),
            Field::date(&update.completed),
        ),
        set(
            RecordKey::Resubmitted,
            update.resubmitted.is_some(),
            Field::text(&update.resubmitted),
        ),
        set(
            RecordKey::Received,
            update.received.is_some(),
            Field::date(&update.received),
        ),
        set(
            RecordKey::ResultHeader,
            update.result_header.is_some(),
            Field::json(&update.result_header),
        ),
        set(
            RecordKey::ResultMetadata,
            update.result_metadata.is_some(),
            Field::json(&update.result_metadata),
        ),
        set(
            RecordKey::ResultContent,
            update.result_content.is_some(),
            Field::json(&update.result_content),
        ),
        update
            .result_buffers
            .as_deref()
            .map(|b| (RecordKey::ResultBuffers, Field::Buffers(b))),
        set(
            RecordKey::Queue,
            update.queue.is_some(),
            Field::text(&update.queue),
        ),
        set(
            RecordKey::ExecuteInput,
            update.execute_input.is_some(),
            Field::text(&update.execute_input),
        ),
        set(
            RecordKey::ExecuteResult,
            update.execute_result.is_some(),
            Field::json(&update.execute_result),
        ),
        set(
            RecordKey::Error,
            update.error.is_some(),
            Field::json(&update.error),
        ),
        set(
            RecordKey::Label,
            update.label.is_some(),
            Field::text(&update.label),
        ),
    ]
    .into_iter()
    .flatten()
}

/// Binds [`Field`]s to statement parameters, encoding through one reused buffer.
#[derive(Debug, Default)]
pub(crate) struct Binder {
    scratch: Vec<u8>,
}

impl Binder {
    /// Binds `field` as parameter `index` (1-based) of `stmt`.
    pub(crate) fn bind(
        &mut self,
        stmt: &mut Statement<'_>,
        index: usize,
        field: Field<'_>,
    ) -> rusqlite::Result<()> {
        match field {
            Field::Null => stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(ValueRef::Null)),
            Field::Text(text) => stmt.raw_bind_parameter(index, text),
            Field::Date(date) => stmt.raw_bind_parameter(index, DateText::new(date).as_str()),
            Field::Json(document) => {
                if let Some(text) = document.received_text() {
                    return stmt.raw_bind_parameter(index, text);
                }
                self.scratch.clear();
                // Writing a map of JSON values into a Vec cannot fail (string keys, no
                // foreign types, no I/O); keep `{}` rather than a partial text if it did.
                if serde_json::to_writer(&mut self.scratch, document.map()).is_err() {
                    self.scratch.clear();
                    self.scratch.extend_from_slice(b"{}");
                }
                stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(ValueRef::Text(&self.scratch)))
            }
            Field::Buffers(buffers) => {
                if buffers.is_empty() {
                    return stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(ValueRef::Null));
                }
                self.scratch.clear();
                encode_buffers_into(buffers, &mut self.scratch);
                stmt.raw_bind_parameter(index, ToSqlOutput::Borrowed(ValueRef::Blob(&self.scratch)))
            }
        }
    }

    /// Binds every column of `record`, in schema order, as parameters 1..=23.
    pub(crate) fn bind_record(
        &mut self,
        stmt: &mut Statement<'_>,
        record: &TaskRecord,
    ) -> rusqlite::Result<()> {
        for (i, key) in RecordKey::ALL.into_iter().enumerate() {
            self.bind(stmt, i + 1, record_field(record, key))?;
        }
        Ok(())
    }
}
