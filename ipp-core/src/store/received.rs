//! Messages the Hub records, as it received them: the request that makes a task's record
//! and the reply that completes it.
//!
//! Building a record reads the message's header, metadata and content and copies them out
//! of the received frames. The Hub hands the messages themselves to
//! [`Store::add_received`](super::Store::add_received) and
//! [`Store::update_received`](super::Store::update_received), whose default methods build
//! the record on the Hub's loop and [`add`](super::Store::add) or
//! [`update`](super::Store::update) it; a store that writes on a thread of its own can
//! override them to build it there, off the loop that also routes tasks.

use bytes::Bytes;

use super::{RecordUpdate, TaskRecord};
use crate::controller::wire_fields::{record_parts_with, ReadFields, RecordParts};
use crate::protocol::{date, Timestamp, WireMessage};

/// Buffers smaller than this are copied into the record rather than shared.
const SHARE_BUFFERS_FROM: usize = 64 * 1024;

/// The buffers to keep in a record. A received frame is a slice of the transport's read
/// buffer, and keeping the slice keeps the whole read buffer alive: small buffers are
/// copied out so a store of many small records does not pin kilobytes each; large ones
/// make up most of their read buffer and are shared without a copy.
fn detached(buffers: &[Bytes]) -> Vec<Bytes> {
    buffers
        .iter()
        .map(|buffer| {
            if buffer.len() < SHARE_BUFFERS_FROM {
                Bytes::copy_from_slice(buffer)
            } else {
                buffer.clone()
            }
        })
        .collect()
}

/// The record parts of `wire` (a `what` of task `msg_id`), or `None`, logged, when its
/// header or metadata is not a JSON object.
fn parts_of<'a>(
    wire: &'a WireMessage,
    read: ReadFields,
    msg_id: &str,
    what: &str,
) -> Option<RecordParts<'a>> {
    let parts = record_parts_with(wire, read);
    if let Err(err) = &parts {
        tracing::debug!(msg_id, error = %err,
            "a {what}'s header or metadata is not a JSON object; recorded without them");
    }
    parts.ok()
}

/// A task's request as the Hub received it (a client's load-balanced task, or a direct
/// request on its way to an engine), to become the task's [`TaskRecord`].
#[derive(Debug)]
pub struct ReceivedRequest {
    msg_id: String,
    wire: WireMessage,
    read: ReadFields,
    queue: &'static str,
    engine_uuid: Option<String>,
}

impl ReceivedRequest {
    /// The request `wire` of task `msg_id`, sent to queue `queue` (`task` or `mux`) and,
    /// for a direct request, to engine `engine_uuid`; `read` holds the parts the caller
    /// parsed already (they are not parsed again).
    pub(crate) fn new(
        msg_id: String,
        wire: WireMessage,
        read: ReadFields,
        queue: &'static str,
        engine_uuid: Option<String>,
    ) -> Self {
        Self {
            msg_id,
            wire,
            read,
            queue,
            engine_uuid,
        }
    }

    /// The task's `msg_id`.
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The task's record: the request's header, metadata and content as received text,
    /// its buffers, and the fields read from them (submit date, client session, label).
    /// A request whose header or metadata is not a JSON object (which the Hub does not
    /// refuse to route) is recorded with its msg_id, queue and engine only.
    pub fn into_record(self) -> TaskRecord {
        let Self {
            msg_id,
            wire,
            read,
            queue,
            engine_uuid,
        } = self;
        let queue = Some(queue.to_owned());
        let Some(RecordParts {
            header,
            metadata,
            documents: [header_doc, metadata_doc, content_doc],
        }) = parts_of(&wire, read, &msg_id, "request")
        else {
            return TaskRecord {
                msg_id,
                engine_uuid,
                queue,
                ..TaskRecord::default()
            };
        };
        TaskRecord {
            submitted: header.date.date(),
            client_uuid: header.session.owned(),
            label: metadata.label.owned(),
            header: Some(header_doc),
            metadata: Some(metadata_doc),
            content: Some(content_doc),
            buffers: detached(&wire.buffers),
            msg_id,
            engine_uuid,
            queue,
            ..TaskRecord::default()
        }
    }
}

/// A task's reply as the Hub received it (from an engine, or made by a scheduler), to
/// complete the task's record.
#[derive(Debug)]
pub struct ReceivedResult {
    msg_id: String,
    wire: WireMessage,
    read: ReadFields,
    received: Timestamp,
}

impl ReceivedResult {
    /// The reply `wire` to task `msg_id`, received now; `read` holds the parts the caller
    /// parsed already (they are not parsed again).
    pub(crate) fn new(msg_id: String, wire: WireMessage, read: ReadFields) -> Self {
        Self {
            msg_id,
            wire,
            read,
            received: date::now(),
        }
    }

    /// The task's `msg_id` (the reply's parent).
    pub fn msg_id(&self) -> &str {
        &self.msg_id
    }

    /// The task's `msg_id` and the update its reply makes to the record: the reply's
    /// header, metadata and content as received text, its buffers, the fields read from
    /// them (completed and started dates, engine) and when the Hub received it. A reply
    /// whose header or metadata is not a JSON object updates only the received date.
    pub fn into_update(self) -> (String, RecordUpdate) {
        let Self {
            msg_id,
            wire,
            read,
            received,
        } = self;
        let Some(RecordParts {
            header,
            metadata,
            documents: [header_doc, metadata_doc, content_doc],
        }) = parts_of(&wire, read, &msg_id, "reply")
        else {
            let update = RecordUpdate {
                received: Some(received),
                ..RecordUpdate::default()
            };
            return (msg_id, update);
        };
        let update = RecordUpdate {
            completed: header.date.date(),
            started: metadata.started.date(),
            engine_uuid: metadata.engine.owned(),
            result_header: Some(header_doc),
            result_metadata: Some(metadata_doc),
            result_content: Some(content_doc),
            result_buffers: Some(detached(&wire.buffers)),
            received: Some(received),
            ..RecordUpdate::default()
        };
        (msg_id, update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::wire_fields::{HeaderFields, Text};

    /// A record document's text.
    fn text(document: Option<&crate::store::JsonObject>) -> Option<String> {
        document.map(|document| document.json_text().into_owned())
    }

    fn wire(header: &str, metadata: &str, buffers: &[Bytes]) -> WireMessage {
        let mut frames = vec![
            Bytes::from_static(b"<IDS|MSG>"),
            Bytes::new(),
            Bytes::copy_from_slice(header.as_bytes()),
            Bytes::from_static(br#"{"msg_id": "rq"}"#),
            Bytes::copy_from_slice(metadata.as_bytes()),
            Bytes::from_static(br#"{"status": "ok"}"#),
        ];
        frames.extend_from_slice(buffers);
        WireMessage::split(frames).unwrap()
    }

    #[test]
    fn a_request_becomes_its_record_with_small_buffers_copied_and_large_ones_shared() {
        let large = Bytes::from(vec![7u8; SHARE_BUFFERS_FROM]);
        let header = r#"{"msg_id": "rq", "session": "s", "date": "2026-11-22T17:59:21Z"}"#;
        let wire = wire(
            header,
            r#"{"label": "l"}"#,
            &[Bytes::from_static(b"small"), large.clone()],
        );
        let small_at = wire.buffers[0].as_ptr();
        let record = ReceivedRequest::new(
            "rq".into(),
            wire,
            ReadFields::default(),
            "mux",
            Some("e".into()),
        )
        .into_record();
        assert_eq!(record.msg_id, "rq");
        assert_eq!(record.client_uuid.as_deref(), Some("s"));
        assert_eq!(record.label.as_deref(), Some("l"));
        assert_eq!(record.queue.as_deref(), Some("mux"));
        assert_eq!(record.engine_uuid.as_deref(), Some("e"));
        assert!(record.submitted.is_some());
        assert_eq!(text(record.header.as_ref()).as_deref(), Some(header));
        assert_ne!(
            record.buffers[0].as_ptr(),
            small_at,
            "a small buffer is copied out"
        );
        assert_eq!(
            record.buffers[1].as_ptr(),
            large.as_ptr(),
            "a large one is shared"
        );
    }

    #[test]
    fn fields_the_caller_read_are_taken_as_read() {
        let read = ReadFields {
            header: Some(HeaderFields {
                session: Text(Some("as read".into())),
                ..HeaderFields::default()
            }),
            metadata: None,
        };
        let wire = wire(r#"{"session": "in the text"}"#, "{}", &[]);
        let record = ReceivedRequest::new("rq".into(), wire, read, "task", None).into_record();
        assert_eq!(record.client_uuid.as_deref(), Some("as read"));
    }

    #[test]
    fn a_request_that_is_not_json_objects_is_recorded_with_what_is_known() {
        let wire = wire("[1]", "{}", &[Bytes::from_static(b"b")]);
        let record = ReceivedRequest::new("rq".into(), wire, ReadFields::default(), "task", None)
            .into_record();
        let want = TaskRecord {
            msg_id: "rq".into(),
            queue: Some("task".into()),
            ..TaskRecord::default()
        };
        assert_eq!(record, want);
    }

    #[test]
    fn a_reply_becomes_its_update_received_when_it_was_handed_over() {
        let metadata = r#"{"engine": "e", "started": "2026-11-22T17:59:21Z"}"#;
        let header = r#"{"msg_id": "rp", "date": "2026-11-22T17:59:22Z"}"#;
        let result = ReceivedResult::new(
            "rq".into(),
            wire(header, metadata, &[]),
            ReadFields::default(),
        );
        let received = result.received;
        let (msg_id, update) = result.into_update();
        assert_eq!(msg_id, "rq");
        assert_eq!(update.engine_uuid.as_deref(), Some("e"));
        assert!(update.started.is_some() && update.completed.is_some());
        assert_eq!(update.received, Some(received));
        assert_eq!(
            text(update.result_content.as_ref()).as_deref(),
            Some(r#"{"status": "ok"}"#)
        );

        let bad = ReceivedResult::new("rq".into(), wire("{", metadata, &[]), ReadFields::default());
        let received = bad.received;
        let (_, update) = bad.into_update();
        let want = RecordUpdate {
            received: Some(received),
            ..RecordUpdate::default()
        };
        assert_eq!(update, want);
    }
}
