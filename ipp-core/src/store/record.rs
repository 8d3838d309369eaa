//! The TaskRecord: everything the Hub knows about one request and its result.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde_json::Value;

use super::JsonObject;
use crate::error::{Error, Result};
use crate::protocol::{date, JsonMap, Timestamp};

/// One task as the Hub records it (ipyparallel's TaskRecord, spec §8.1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRecord {
    /// The request's `msg_id`.
    pub msg_id: String,
    /// The request header.
    pub header: Option<JsonObject>,
    /// The request metadata.
    pub metadata: Option<JsonObject>,
    /// The request content.
    pub content: Option<JsonObject>,
    /// The request buffers.
    pub buffers: Vec<Bytes>,
    /// When the client sent it (the request header's date).
    pub submitted: Option<Timestamp>,
    /// The client's session id.
    pub client_uuid: Option<String>,
    /// The engine that ran (or runs) it.
    pub engine_uuid: Option<String>,
    /// When the engine started it.
    pub started: Option<Timestamp>,
    /// When the engine finished it (the reply header's date).
    pub completed: Option<Timestamp>,
    /// The new `msg_id` after a resubmit.
    pub resubmitted: Option<String>,
    /// When the result reached the Hub.
    pub received: Option<Timestamp>,
    /// The reply header.
    pub result_header: Option<JsonObject>,
    /// The reply metadata.
    pub result_metadata: Option<JsonObject>,
    /// The reply content.
    pub result_content: Option<JsonObject>,
    /// The reply buffers.
    pub result_buffers: Vec<Bytes>,
    /// `mux` or `task`.
    pub queue: Option<String>,
    /// Code of an `execute_input` seen on IOPub.
    pub execute_input: Option<String>,
    /// Content of an `execute_result` seen on IOPub.
    pub execute_result: Option<JsonObject>,
    /// Content of an `error` seen on IOPub.
    pub error: Option<JsonObject>,
    /// Concatenated stdout stream text.
    pub stdout: String,
    /// Concatenated stderr stream text.
    pub stderr: String,
    /// The request's label (request metadata `label`).
    pub label: Option<String>,
}

/// The name of a [`TaskRecord`] field, as queries and key projections spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    /// `msg_id`
    MsgId,
    /// `header`
    Header,
    /// `metadata`
    Metadata,
    /// `content`
    Content,
    /// `buffers`
    Buffers,
    /// `submitted`
    Submitted,
    /// `client_uuid`
    ClientUuid,
    /// `engine_uuid`
    EngineUuid,
    /// `started`
    Started,
    /// `completed`
    Completed,
    /// `resubmitted`
    Resubmitted,
    /// `received`
    Received,
    /// `result_header`
    ResultHeader,
    /// `result_metadata`
    ResultMetadata,
    /// `result_content`
    ResultContent,
    /// `result_buffers`
    ResultBuffers,
    /// `queue`
    Queue,
    /// `execute_input`
    ExecuteInput,
    /// `execute_result`
    ExecuteResult,
    /// `error`
    Error,
    /// `stdout`
    Stdout,
    /// `stderr`
    Stderr,
    /// `label`
    Label,
}

/// One field's value, typed for query comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum RecordValue {
    /// No value (JSON null / Python None).
    Null,
    /// A string.
    Str(String),
    /// A date.
    Date(Timestamp),
    /// A JSON object (header, metadata, contents).
    Json(Value),
    /// A list of binary buffers.
    Buffers(Vec<Bytes>),
}

/// A change to some fields of a record; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordUpdate {
    /// New request header.
    pub header: Option<JsonObject>,
    /// New request metadata.
    pub metadata: Option<JsonObject>,
    /// New request content.
    pub content: Option<JsonObject>,
    /// New request buffers.
    pub buffers: Option<Vec<Bytes>>,
    /// New `submitted`.
    pub submitted: Option<Timestamp>,
    /// New `client_uuid`.
    pub client_uuid: Option<String>,
    /// New `engine_uuid`.
    pub engine_uuid: Option<String>,
    /// New `started`.
    pub started: Option<Timestamp>,
    /// New `completed`.
    pub completed: Option<Timestamp>,
    /// New `resubmitted`.
    pub resubmitted: Option<String>,
    /// New `received`.
    pub received: Option<Timestamp>,
    /// New reply header.
    pub result_header: Option<JsonObject>,
    /// New reply metadata.
    pub result_metadata: Option<JsonObject>,
    /// New reply content.
    pub result_content: Option<JsonObject>,
    /// New reply buffers.
    pub result_buffers: Option<Vec<Bytes>>,
    /// New `queue`.
    pub queue: Option<String>,
    /// New `execute_input`.
    pub execute_input: Option<String>,
    /// New `execute_result`.
    pub execute_result: Option<JsonObject>,
    /// New `error`.
    pub error: Option<JsonObject>,
    /// Text appended to `stdout`.
    pub append_stdout: Option<String>,
    /// Text appended to `stderr`.
    pub append_stderr: Option<String>,
    /// New `label`.
    pub label: Option<String>,
}

impl RecordKey {
    /// Every key, in the order of spec §8.1 (`msg_id` first).
    pub const ALL: [RecordKey; 23] = [
        RecordKey::MsgId,
        RecordKey::Header,
        RecordKey::Metadata,
        RecordKey::Content,
        RecordKey::Buffers,
        RecordKey::Submitted,
        RecordKey::ClientUuid,
        RecordKey::EngineUuid,
        RecordKey::Started,
        RecordKey::Completed,
        RecordKey::Resubmitted,
        RecordKey::Received,
        RecordKey::ResultHeader,
        RecordKey::ResultMetadata,
        RecordKey::ResultContent,
        RecordKey::ResultBuffers,
        RecordKey::Queue,
        RecordKey::ExecuteInput,
        RecordKey::ExecuteResult,
        RecordKey::Error,
        RecordKey::Stdout,
        RecordKey::Stderr,
        RecordKey::Label,
    ];

    /// The key as queries and `db_reply` records spell it, e.g. `"engine_uuid"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKey::MsgId => "msg_id",
            RecordKey::Header => "header",
            RecordKey::Metadata => "metadata",
            RecordKey::Content => "content",
            RecordKey::Buffers => "buffers",
            RecordKey::Submitted => "submitted",
            RecordKey::ClientUuid => "client_uuid",
            RecordKey::EngineUuid => "engine_uuid",
            RecordKey::Started => "started",
            RecordKey::Completed => "completed",
            RecordKey::Resubmitted => "resubmitted",
            RecordKey::Received => "received",
            RecordKey::ResultHeader => "result_header",
            RecordKey::ResultMetadata => "result_metadata",
            RecordKey::ResultContent => "result_content",
            RecordKey::ResultBuffers => "result_buffers",
            RecordKey::Queue => "queue",
            RecordKey::ExecuteInput => "execute_input",
            RecordKey::ExecuteResult => "execute_result",
            RecordKey::Error => "error",
            RecordKey::Stdout => "stdout",
            RecordKey::Stderr => "stderr",
            RecordKey::Label => "label",
        }
    }

    /// Whether the field holds binary buffers, which the Hub sends as frames, not JSON.
    pub fn is_buffers(self) -> bool {
        matches!(self, RecordKey::Buffers | RecordKey::ResultBuffers)
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKey {
    type Err = Error;

    /// Parses a key name.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] naming the key when it is not a TaskRecord field.
    fn from_str(name: &str) -> Result<Self> {
        RecordKey::ALL
            .iter()
            .copied()
            .find(|key| key.as_str() == name)
            .ok_or_else(|| Error::invalid_query(format!("unknown key {name:?}")))
    }
}

/// One stored field as a backend holds it, read as the type its [`RecordKey`] holds: what a
/// store implements over its own value type to fill a record with
/// [`TaskRecord::set_field`]. Each method fails with the reason a person should read (the
/// caller adds which record and field).
pub trait FieldValue {
    /// A JSON object (`header`, `content`, `execute_result`, …), `None` when unset.
    fn json(self) -> std::result::Result<Option<JsonObject>, String>;
    /// A list of buffers (`buffers`, `result_buffers`), empty when unset.
    fn buffers(self) -> std::result::Result<Vec<Bytes>, String>;
    /// A date (`submitted`, `started`, …), `None` when unset.
    fn date(self) -> std::result::Result<Option<Timestamp>, String>;
    /// Text (`client_uuid`, `stdout`, …), `None` when unset.
    fn text(self) -> std::result::Result<Option<String>, String>;
}

impl TaskRecord {
    /// Sets the field of `key` from a stored value; `msg_id` is left as it is (a record is
    /// made with its id first).
    ///
    /// # Errors
    /// Why `value` is not of the field's type.
    pub fn set_field(
        &mut self,
        key: RecordKey,
        value: impl FieldValue,
    ) -> std::result::Result<(), String> {
        match key {
            RecordKey::MsgId => {}
            RecordKey::Header => self.header = value.json()?,
            RecordKey::Metadata => self.metadata = value.json()?,
            RecordKey::Content => self.content = value.json()?,
            RecordKey::Buffers => self.buffers = value.buffers()?,
            RecordKey::Submitted => self.submitted = value.date()?,
            RecordKey::ClientUuid => self.client_uuid = value.text()?,
            RecordKey::EngineUuid => self.engine_uuid = value.text()?,
            RecordKey::Started => self.started = value.date()?,
            RecordKey::Completed => self.completed = value.date()?,
            RecordKey::Resubmitted => self.resubmitted = value.text()?,
            RecordKey::Received => self.received = value.date()?,
            RecordKey::ResultHeader => self.result_header = value.json()?,
            RecordKey::ResultMetadata => self.result_metadata = value.json()?,
            RecordKey::ResultContent => self.result_content = value.json()?,
            RecordKey::ResultBuffers => self.result_buffers = value.buffers()?,
            RecordKey::Queue => self.queue = value.text()?,
            RecordKey::ExecuteInput => self.execute_input = value.text()?,
            RecordKey::ExecuteResult => self.execute_result = value.json()?,
            RecordKey::Error => self.error = value.json()?,
            RecordKey::Stdout => self.stdout = value.text()?.unwrap_or_default(),
            RecordKey::Stderr => self.stderr = value.text()?.unwrap_or_default(),
            RecordKey::Label => self.label = value.text()?,
        }
        Ok(())
    }

    /// An empty record for `msg_id`: every optional field unset, no buffers, no output.
    pub fn new(msg_id: impl Into<String>) -> Self {
        Self {
            msg_id: msg_id.into(),
            ..Self::default()
        }
    }

    /// One field's value, typed for comparison: dates as [`RecordValue::Date`], strings as
    /// [`RecordValue::Str`], dicts as [`RecordValue::Json`], buffers as
    /// [`RecordValue::Buffers`], an unset field as [`RecordValue::Null`]. `stdout` and
    /// `stderr` are always strings (empty when nothing was printed).
    pub fn value(&self, key: RecordKey) -> RecordValue {
        fn str_or_null(value: &Option<String>) -> RecordValue {
            value.clone().map_or(RecordValue::Null, RecordValue::Str)
        }
        fn date_or_null(value: &Option<Timestamp>) -> RecordValue {
            value.map_or(RecordValue::Null, RecordValue::Date)
        }
        fn json_or_null(value: &Option<JsonObject>) -> RecordValue {
            value
                .as_ref()
                .map_or(RecordValue::Null, |doc| RecordValue::Json(doc.to_value()))
        }
        match key {
            RecordKey::MsgId => RecordValue::Str(self.msg_id.clone()),
            RecordKey::Header => json_or_null(&self.header),
            RecordKey::Metadata => json_or_null(&self.metadata),
            RecordKey::Content => json_or_null(&self.content),
            RecordKey::Buffers => RecordValue::Buffers(self.buffers.clone()),
            RecordKey::Submitted => date_or_null(&self.submitted),
            RecordKey::ClientUuid => str_or_null(&self.client_uuid),
            RecordKey::EngineUuid => str_or_null(&self.engine_uuid),
            RecordKey::Started => date_or_null(&self.started),
            RecordKey::Completed => date_or_null(&self.completed),
            RecordKey::Resubmitted => str_or_null(&self.resubmitted),
            RecordKey::Received => date_or_null(&self.received),
            RecordKey::ResultHeader => json_or_null(&self.result_header),
            RecordKey::ResultMetadata => json_or_null(&self.result_metadata),
            RecordKey::ResultContent => json_or_null(&self.result_content),
            RecordKey::ResultBuffers => RecordValue::Buffers(self.result_buffers.clone()),
            RecordKey::Queue => str_or_null(&self.queue),
            RecordKey::ExecuteInput => str_or_null(&self.execute_input),
            RecordKey::ExecuteResult => json_or_null(&self.execute_result),
            RecordKey::Error => json_or_null(&self.error),
            RecordKey::Stdout => RecordValue::Str(self.stdout.clone()),
            RecordKey::Stderr => RecordValue::Str(self.stderr.clone()),
            RecordKey::Label => str_or_null(&self.label),
        }
    }

    /// The record as the Hub sends it in a `db_reply`: `msg_id` first, then `keys` in the
    /// order given (every field when `None`), dates as ISO strings with `Z`, unset fields
    /// as `null`.
    ///
    /// `buffers` and `result_buffers` are never included, even when listed in `keys`: the
    /// Hub sends them as message frames (spec §5.4).
    pub fn to_json(&self, keys: Option<&[RecordKey]>) -> JsonMap {
        let keys = keys.unwrap_or(&RecordKey::ALL);
        let mut map = JsonMap::new();
        map.insert("msg_id".to_owned(), Value::String(self.msg_id.clone()));
        for &key in keys {
            if key == RecordKey::MsgId || key.is_buffers() {
                continue;
            }
            let value = match self.value(key) {
                RecordValue::Null => Value::Null,
                RecordValue::Str(text) => Value::String(text),
                RecordValue::Date(date) => Value::String(date::format(&date)),
                RecordValue::Json(json) => json,
                // Excluded above; kept exhaustive so a new variant is a compile error here.
                RecordValue::Buffers(_) => continue,
            };
            map.insert(key.as_str().to_owned(), value);
        }
        map
    }

    /// A copy carrying only `keys` (and always `msg_id`); the other fields are left at
    /// their defaults, as [`Store::find`](super::Store::find) allows.
    pub fn project(&self, keys: &[RecordKey]) -> TaskRecord {
        let mut out = TaskRecord::new(self.msg_id.clone());
        for &key in keys {
            match key {
                RecordKey::MsgId => {}
                RecordKey::Header => out.header.clone_from(&self.header),
                RecordKey::Metadata => out.metadata.clone_from(&self.metadata),
                RecordKey::Content => out.content.clone_from(&self.content),
                RecordKey::Buffers => out.buffers.clone_from(&self.buffers),
                RecordKey::Submitted => out.submitted = self.submitted,
                RecordKey::ClientUuid => out.client_uuid.clone_from(&self.client_uuid),
                RecordKey::EngineUuid => out.engine_uuid.clone_from(&self.engine_uuid),
                RecordKey::Started => out.started = self.started,
                RecordKey::Completed => out.completed = self.completed,
                RecordKey::Resubmitted => out.resubmitted.clone_from(&self.resubmitted),
                RecordKey::Received => out.received = self.received,
                RecordKey::ResultHeader => out.result_header.clone_from(&self.result_header),
                RecordKey::ResultMetadata => {
                    out.result_metadata.clone_from(&self.result_metadata);
                }
                RecordKey::ResultContent => out.result_content.clone_from(&self.result_content),
                RecordKey::ResultBuffers => out.result_buffers.clone_from(&self.result_buffers),
                RecordKey::Queue => out.queue.clone_from(&self.queue),
                RecordKey::ExecuteInput => out.execute_input.clone_from(&self.execute_input),
                RecordKey::ExecuteResult => out.execute_result.clone_from(&self.execute_result),
                RecordKey::Error => out.error.clone_from(&self.error),
                RecordKey::Stdout => out.stdout.clone_from(&self.stdout),
                RecordKey::Stderr => out.stderr.clone_from(&self.stderr),
                RecordKey::Label => out.label.clone_from(&self.label),
            }
        }
        out
    }

    /// Applies `update`: each given field replaces the record's; `append_stdout` and
    /// `append_stderr` are appended to the text already there.
    pub fn apply(&mut self, update: RecordUpdate) {
        let RecordUpdate {
            header,
            metadata,
            content,
            buffers,
            submitted,
            client_uuid,
            engine_uuid,
            started,
            completed,
            resubmitted,
            received,
            result_header,
            result_metadata,
            result_content,
            result_buffers,
            queue,
            execute_input,
            execute_result,
            error,
            append_stdout,
            append_stderr,
            label,
        } = update;
        fn set<T>(field: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *field = value;
            }
        }
        set(&mut self.header, header);
        set(&mut self.metadata, metadata);
        set(&mut self.content, content);
        if let Some(buffers) = buffers {
            self.buffers = buffers;
        }
        set(&mut self.submitted, submitted);
        set(&mut self.client_uuid, client_uuid);
        set(&mut self.engine_uuid, engine_uuid);
        set(&mut self.started, started);
        set(&mut self.completed, completed);
        set(&mut self.resubmitted, resubmitted);
        set(&mut self.received, received);
        set(&mut self.result_header, result_header);
        set(&mut self.result_metadata, result_metadata);
        set(&mut self.result_content, result_content);
        if let Some(result_buffers) = result_buffers {
            self.result_buffers = result_buffers;
        }
        set(&mut self.queue, queue);
        set(&mut self.execute_input, execute_input);
        set(&mut self.execute_result, execute_result);
        set(&mut self.error, error);
        if let Some(text) = append_stdout {
            self.stdout.push_str(&text);
        }
        if let Some(text) = append_stderr {
            self.stderr.push_str(&text);
        }
        set(&mut self.label, label);
    }

    /// Total bytes held in `buffers` and `result_buffers` (what DictDB's size limit counts).
    pub fn buffer_size(&self) -> u64 {
        self.buffers
            .iter()
            .chain(&self.result_buffers)
            .map(|buffer| buffer.len() as u64)
            .sum()
    }
}

impl RecordUpdate {
    /// Makes `self` the update that applying `self` then `later` makes: `later`'s fields
    /// replace `self`'s, appended output is appended in order (the companion of
    /// [`TaskRecord::apply`]: a store that folds queued updates uses it).
    pub fn merge(&mut self, later: RecordUpdate) {
        fn set<T>(field: &mut Option<T>, value: Option<T>) {
            if value.is_some() {
                *field = value;
            }
        }
        fn append(field: &mut Option<String>, value: Option<String>) {
            match (field.as_mut(), value) {
                (Some(text), Some(more)) => text.push_str(&more),
                (None, more) => *field = more,
                (Some(_), None) => {}
            }
        }
        // Every field by name, so that a new field cannot be forgotten here.
        let RecordUpdate {
            header,
            metadata,
            content,
            buffers,
            submitted,
            client_uuid,
            engine_uuid,
            started,
            completed,
            resubmitted,
            received,
            result_header,
            result_metadata,
            result_content,
            result_buffers,
            queue,
            execute_input,
            execute_result,
            error,
            append_stdout,
            append_stderr,
            label,
        } = later;
        set(&mut self.header, header);
        set(&mut self.metadata, metadata);
        set(&mut self.content, content);
        set(&mut self.buffers, buffers);
        set(&mut self.submitted, submitted);
        set(&mut self.client_uuid, client_uuid);
        set(&mut self.engine_uuid, engine_uuid);
        set(&mut self.started, started);
        set(&mut self.completed, completed);
        set(&mut self.resubmitted, resubmitted);
        set(&mut self.received, received);
        set(&mut self.result_header, result_header);
        set(&mut self.result_metadata, result_metadata);
        set(&mut self.result_content, result_content);
        set(&mut self.result_buffers, result_buffers);
        set(&mut self.queue, queue);
        set(&mut self.execute_input, execute_input);
        set(&mut self.execute_result, execute_result);
        set(&mut self.error, error);
        append(&mut self.append_stdout, append_stdout);
        append(&mut self.append_stderr, append_stderr);
        set(&mut self.label, label);
    }

    /// An update that changes nothing; set fields on it with struct update syntax or the
    /// field directly.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether applying this update would change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    /// A stored value that is a piece of text or nothing.
    #[derive(Clone, Copy)]
    struct Stored(Option<&'static str>);

    impl FieldValue for Stored {
        fn json(self) -> std::result::Result<Option<JsonObject>, String> {
            self.0
                .map(|text| JsonObject::from_json(Bytes::from(text)).map_err(|e| e.to_string()))
                .transpose()
        }
        fn buffers(self) -> std::result::Result<Vec<Bytes>, String> {
            Ok(self
                .0
                .map(|text| vec![Bytes::from(text)])
                .unwrap_or_default())
        }
        fn date(self) -> std::result::Result<Option<Timestamp>, String> {
            self.0
                .map(|text| date::parse(text).ok_or_else(|| format!("{text:?} is not a date")))
                .transpose()
        }
        fn text(self) -> std::result::Result<Option<String>, String> {
            Ok(self.0.map(str::to_owned))
        }
    }

    #[test]
    fn set_field_reads_each_key_as_its_type() {
        let mut record = TaskRecord::new("a");
        record
            .set_field(RecordKey::ClientUuid, Stored(Some("c")))
            .unwrap();
        record
            .set_field(RecordKey::Header, Stored(Some(r#"{"k": 1}"#)))
            .unwrap();
        record
            .set_field(RecordKey::ResultBuffers, Stored(Some("b")))
            .unwrap();
        let date = "2026-11-28T10:00:00.000001Z";
        record
            .set_field(RecordKey::Started, Stored(Some(date)))
            .unwrap();
        record.set_field(RecordKey::Stdout, Stored(None)).unwrap();
        record
            .set_field(RecordKey::MsgId, Stored(Some("ignored")))
            .unwrap();
        assert_eq!(record.client_uuid.as_deref(), Some("c"));
        assert_eq!(
            record.header.as_ref().map(JsonObject::json_text),
            Some(r#"{"k": 1}"#.into())
        );
        assert_eq!(record.result_buffers, [Bytes::from("b")]);
        assert_eq!(record.started, date::parse(date));
        assert_eq!(record.stdout, "");
        assert_eq!(record.msg_id, "a");
        let err = record
            .set_field(RecordKey::Submitted, Stored(Some("soon")))
            .unwrap_err();
        assert!(err.contains("not a date"), "{err}");
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn a_merged_update_applies_as_the_two_in_order() {
        let first = RecordUpdate {
            engine_uuid: Some("a".into()),
            append_stdout: Some("one ".into()),
            label: Some("old".into()),
            ..RecordUpdate::default()
        };
        let second = RecordUpdate {
            engine_uuid: Some("b".into()),
            append_stdout: Some("two".into()),
            queue: Some("task".into()),
            ..RecordUpdate::default()
        };
        let mut in_order = TaskRecord::new("m");
        in_order.apply(first.clone());
        in_order.apply(second.clone());
        let mut merged = first;
        merged.merge(second);
        let mut folded = TaskRecord::new("m");
        folded.apply(merged);
        assert_eq!(folded, in_order);
        assert_eq!(folded.stdout, "one two");
        assert_eq!(folded.label.as_deref(), Some("old"));
    }

    fn date(text: &str) -> Timestamp {
        date::parse(text).unwrap()
    }

    #[test]
    fn every_key_round_trips_through_its_name() {
        for key in RecordKey::ALL {
            assert_eq!(key.as_str().parse::<RecordKey>().unwrap(), key);
            assert_eq!(key.to_string(), key.as_str());
        }
    }

    #[test]
    fn an_unknown_key_is_an_invalid_query_naming_it() {
        let err = "bogus".parse::<RecordKey>().unwrap_err();
        assert!(matches!(err, Error::InvalidQuery { .. }), "{err:?}");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn values_are_typed() {
        let mut rec = TaskRecord::new("a");
        rec.submitted = Some(date("2026-01-01T00:00:00Z"));
        rec.engine_uuid = Some("e".into());
        rec.header = Some(json!({"x": 1}).as_object().unwrap().clone().into());
        assert_eq!(rec.value(RecordKey::MsgId), RecordValue::Str("a".into()));
        assert_eq!(
            rec.value(RecordKey::Submitted),
            RecordValue::Date(date("2026-01-01T00:00:00Z"))
        );
        assert_eq!(rec.value(RecordKey::Completed), RecordValue::Null);
        assert_eq!(
            rec.value(RecordKey::Stdout),
            RecordValue::Str(String::new())
        );
        assert_eq!(
            rec.value(RecordKey::Header),
            RecordValue::Json(json!({"x": 1}))
        );
        assert_eq!(rec.value(RecordKey::Buffers), RecordValue::Buffers(vec![]));
    }

    #[test]
    fn to_json_renders_dates_with_z_and_never_buffers() {
        let mut rec = TaskRecord::new("a");
        rec.submitted = Some(date("2026-11-22T17:59:21.232133Z"));
        rec.buffers = vec![Bytes::from_static(b"x")];
        rec.result_buffers = vec![Bytes::from_static(b"y")];
        let all = rec.to_json(None);
        assert_eq!(all["submitted"], json!("2026-11-22T17:59:21.232133Z"));
        assert_eq!(all["completed"], Value::Null);
        assert_eq!(all["stdout"], json!(""));
        assert!(!all.contains_key("buffers") && !all.contains_key("result_buffers"));
        assert_eq!(all.len(), RecordKey::ALL.len() - 2);
        assert_eq!(all.keys().next().map(String::as_str), Some("msg_id"));

        let some = rec.to_json(Some(&[RecordKey::Completed, RecordKey::ResultBuffers]));
        assert_eq!(
            Value::Object(some),
            json!({"msg_id": "a", "completed": null})
        );
    }

    #[test]
    fn apply_replaces_given_fields_and_appends_output() {
        let mut rec = TaskRecord::new("a");
        rec.stdout = "one ".into();
        rec.engine_uuid = Some("e".into());
        rec.apply(RecordUpdate {
            append_stdout: Some("two".into()),
            queue: Some("mux".into()),
            result_buffers: Some(vec![Bytes::from_static(b"abc")]),
            ..RecordUpdate::new()
        });
        assert_eq!(rec.stdout, "one two");
        assert_eq!(rec.queue.as_deref(), Some("mux"));
        assert_eq!(rec.engine_uuid.as_deref(), Some("e"));
        assert_eq!(rec.buffer_size(), 3);
        assert!(RecordUpdate::new().is_empty());
    }

    #[test]
    fn project_keeps_msg_id_and_the_listed_keys() {
        let mut rec = TaskRecord::new("a");
        rec.engine_uuid = Some("e".into());
        rec.queue = Some("task".into());
        let projected = rec.project(&[RecordKey::Queue]);
        assert_eq!(projected.msg_id, "a");
        assert_eq!(projected.queue.as_deref(), Some("task"));
        assert_eq!(projected.engine_uuid, None);
    }
}
