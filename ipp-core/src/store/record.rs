//! The TaskRecord: everything the Hub knows about one request and its result.

use bytes::Bytes;
use serde_json::Value;

use crate::protocol::{JsonMap, Timestamp};

/// One task as the Hub records it (ipyparallel's TaskRecord, spec §8.1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskRecord {
    /// The request's `msg_id`.
    pub msg_id: String,
    /// The request header.
    pub header: Option<JsonMap>,
    /// The request metadata.
    pub metadata: Option<JsonMap>,
    /// The request content.
    pub content: Option<JsonMap>,
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
    pub result_header: Option<JsonMap>,
    /// The reply metadata.
    pub result_metadata: Option<JsonMap>,
    /// The reply content.
    pub result_content: Option<JsonMap>,
    /// The reply buffers.
    pub result_buffers: Vec<Bytes>,
    /// `mux` or `task`.
    pub queue: Option<String>,
    /// Code of an `execute_input` seen on IOPub.
    pub execute_input: Option<String>,
    /// Content of an `execute_result` seen on IOPub.
    pub execute_result: Option<JsonMap>,
    /// Content of an `error` seen on IOPub.
    pub error: Option<JsonMap>,
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
    pub header: Option<JsonMap>,
    /// New request metadata.
    pub metadata: Option<JsonMap>,
    /// New request content.
    pub content: Option<JsonMap>,
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
    pub result_header: Option<JsonMap>,
    /// New reply metadata.
    pub result_metadata: Option<JsonMap>,
    /// New reply content.
    pub result_content: Option<JsonMap>,
    /// New reply buffers.
    pub result_buffers: Option<Vec<Bytes>>,
    /// New `queue`.
    pub queue: Option<String>,
    /// New `execute_input`.
    pub execute_input: Option<String>,
    /// New `execute_result`.
    pub execute_result: Option<JsonMap>,
    /// New `error`.
    pub error: Option<JsonMap>,
    /// Text appended to `stdout`.
    pub append_stdout: Option<String>,
    /// Text appended to `stderr`.
    pub append_stderr: Option<String>,
    /// New `label`.
    pub label: Option<String>,
}
