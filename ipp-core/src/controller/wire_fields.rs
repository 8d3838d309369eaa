//! The few values a task record takes out of a message's packed parts, read in one pass
//! each without building the parts (the record keeps the parts as received text).

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::{date, Timestamp, WireMessage};
use crate::store::JsonObject;

/// A value kept only when it is a string: anything else (null, a number, an object) reads
/// as `None` rather than failing the whole part.
#[derive(Debug, Default)]
pub(crate) struct Text<'a>(pub(crate) Option<Cow<'a, str>>);

impl<'a> Text<'a> {
    pub(crate) fn owned(self) -> Option<String> {
        self.0.map(Cow::into_owned)
    }

    /// The value, copied out of the text it was read from.
    pub(crate) fn into_owned(self) -> Text<'static> {
        Text(self.owned().map(Cow::Owned))
    }

    pub(crate) fn date(&self) -> Option<Timestamp> {
        self.0.as_deref().and_then(date::parse)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// What a record takes from a header: the message's id, the sender's session and the send
/// date.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HeaderFields<'a> {
    #[serde(borrow)]
    pub(crate) msg_id: Text<'a>,
    #[serde(borrow)]
    pub(crate) session: Text<'a>,
    #[serde(borrow)]
    pub(crate) date: Text<'a>,
}

/// What a record takes from metadata: a request's label, a reply's engine and start time.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct MetadataFields<'a> {
    #[serde(borrow)]
    pub(crate) label: Text<'a>,
    #[serde(borrow)]
    pub(crate) engine: Text<'a>,
    #[serde(borrow)]
    pub(crate) started: Text<'a>,
}

/// What a record takes from a message: the few fields it reads, and the header, metadata
/// and content kept as received.
pub(crate) struct RecordParts<'a> {
    pub(crate) header: HeaderFields<'a>,
    pub(crate) metadata: MetadataFields<'a>,
    pub(crate) documents: [JsonObject; 3],
}

/// What another part of the controller (the task scheduler) already read from a message
/// for its record, so that the Hub does not parse those parts again. A part given here must
/// have been parsed in full, as a struct is (every value checked, skipped or not, and
/// nothing after it): only that it is UTF-8 and an object is left to check.
#[derive(Debug, Default)]
pub(crate) struct ReadFields {
    pub(crate) header: Option<HeaderFields<'static>>,
    pub(crate) metadata: Option<MetadataFields<'static>>,
}

impl ReadFields {
    /// These fields boxed to travel in an event, or `None` when nothing was read.
    pub(crate) fn boxed(self) -> Option<Box<Self>> {
        (self.header.is_some() || self.metadata.is_some()).then(|| Box::new(self))
    }
}

/// The [`RecordParts`] of `wire`, taking the parts in `read` as read already and parsing
/// the others once each.
///
/// # Errors
/// [`Error::InvalidMessage`] when the header or metadata is not a JSON object.
pub(crate) fn record_parts_with(wire: &WireMessage, read: ReadFields) -> Result<RecordParts<'_>> {
    let header = match read.header {
        Some(header) => header,
        None => fields(&wire.header, "header")?,
    };
    let metadata = match read.metadata {
        Some(metadata) => metadata,
        None => fields(&wire.metadata, "metadata")?,
    };
    // Content that is not an object is recorded as an empty one, as the Hub always did.
    let content_parsed = fields::<IgnoredAny>(&wire.content, "content").is_ok();
    Ok(RecordParts {
        header,
        metadata,
        documents: documents(wire, content_parsed)?,
    })
}

/// The fields of `part` (a header or metadata object).
///
/// # Errors
/// [`Error::InvalidMessage`] when the part is not a JSON object.
pub(crate) fn fields<'a, T: Deserialize<'a>>(part: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(part).map_err(|err| Error::invalid_message(format!("bad {what}: {err}")))
}

/// A message's header, metadata and content as documents, copied out of the received
/// frames into one allocation (a record must not keep the transport's read buffer alive).
/// Content that is not a JSON object in UTF-8 is recorded as an empty object. The header,
/// the metadata and (when `content_parsed`) the content must have been parsed in full by
/// [`fields`] already (reading a struct's fields parses every value, skipped or not, and
/// nothing may follow the object): only what such a parse leaves unchecked is checked here.
///
/// # Errors
/// [`Error::InvalidMessage`] when the header or metadata is not a JSON object in UTF-8.
fn documents(wire: &WireMessage, content_parsed: bool) -> Result<[JsonObject; 3]> {
    let parts = [&wire.header, &wire.metadata, &wire.content];
    let mut joined = BytesMut::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        joined.extend_from_slice(part);
    }
    let mut joined: Bytes = joined.freeze();
    let header = joined.split_to(wire.header.len());
    let metadata = joined.split_to(wire.metadata.len());
    Ok([
        JsonObject::from_parsed_json(header)?,
        JsonObject::from_parsed_json(metadata)?,
        if content_parsed {
            JsonObject::from_parsed_json(joined).unwrap_or_default()
        } else {
            JsonObject::default()
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record parts of a message nothing has read yet.
    fn record_parts(wire: &WireMessage) -> Result<RecordParts<'_>> {
        record_parts_with(wire, ReadFields::default())
    }

    #[test]
    fn fields_keep_strings_and_skip_other_values() {
        let header: HeaderFields<'_> = fields(
            br#"{"session": "s\u00e9", "date": 5, "x": {"y": [1]}}"#,
            "header",
        )
        .unwrap();
        assert_eq!(header.session.owned().as_deref(), Some("s\u{e9}"));
        assert!(header.date.0.is_none());
        let metadata: MetadataFields<'_> = fields(
            br#"{"label": null, "started": "2026-11-27T20:00:00.000001Z"}"#,
            "metadata",
        )
        .unwrap();
        assert!(metadata.label.0.is_none());
        assert!(metadata.started.date().is_some());
    }

    #[test]
    fn documents_are_the_three_parts_and_content_falls_back_to_empty() {
        let frames = [
            &b"x"[..],
            b"<IDS|MSG>",
            b"",
            br#"{"msg_id": "a"}"#,
            b"{}",
            br#"{"l": 1}"#,
            b"[1]",
        ]
        .map(Bytes::copy_from_slice)
        .to_vec();
        let wire = WireMessage::split(frames).unwrap();
        let [header, metadata, content] = record_parts(&wire).unwrap().documents;
        assert_eq!(header.json_text(), r#"{"msg_id": "a"}"#);
        assert_eq!(metadata.json_text(), r#"{"l": 1}"#);
        assert!(content.is_empty());
    }

    #[test]
    fn a_replys_content_is_kept_and_bad_content_is_recorded_empty() {
        let reply = |content: &[u8]| {
            let frames = [
                &b"<IDS|MSG>"[..],
                b"",
                br#"{"msg_id": "r"}"#,
                br#"{"msg_id": "a"}"#,
                b"{}",
                content,
            ]
            .map(Bytes::copy_from_slice)
            .to_vec();
            WireMessage::split(frames).unwrap()
        };
        let wire = reply(br#"{"status": "aborted", "x": [1, {"y": null}]}"#);
        let parts = record_parts(&wire).unwrap();
        assert_eq!(parts.header.msg_id.owned().as_deref(), Some("r"));
        assert_eq!(parts.documents[2].get("status"), Some(&"aborted".into()));
        let bad: [&[u8]; 4] = [
            b"{\"status\": \"ok\", \"x\": \"\xff\"}", // not UTF-8 in a skipped string
            br#"{"status": "ok"} {}"#,                // trailing text
            br#"["ok"]"#,                             // not an object
            br#"{"status": "ok""#,                    // cut short
        ];
        for content in bad {
            let wire = reply(content);
            let parts = record_parts(&wire).unwrap();
            assert!(parts.documents[2].is_empty(), "{content:?}");
        }
    }

    #[test]
    fn parts_read_already_are_taken_as_read_and_only_checked_for_utf8_and_object() {
        let read = || ReadFields {
            header: Some(HeaderFields {
                session: Text(Some("from the scheduler".into())),
                ..HeaderFields::default()
            }),
            metadata: Some(MetadataFields {
                engine: Text(Some("e".into())),
                ..MetadataFields::default()
            }),
        };
        let wire = message(br#"{"session": "in the text"}"#, br#"{"engine": "x"}"#);
        let parts = record_parts_with(&wire, read()).unwrap();
        assert_eq!(
            parts.header.session.owned().as_deref(),
            Some("from the scheduler")
        );
        assert_eq!(parts.metadata.engine.owned().as_deref(), Some("e"));
        assert_eq!(
            parts.documents[0].json_text(),
            r#"{"session": "in the text"}"#
        );
        for (header, metadata) in [
            (&br#"["s"]"#[..], &b"{}"[..]),
            (&b"{}"[..], &b"{\"x\": \"\xff\"}"[..]),
        ] {
            assert!(
                record_parts_with(&message(header, metadata), read()).is_err(),
                "{header:?} {metadata:?}"
            );
        }
    }

    /// A message of these header and metadata frames.
    fn message(header: &[u8], metadata: &[u8]) -> WireMessage {
        let frames = [&b"<IDS|MSG>"[..], b"", header, b"{}", metadata, b"{}"]
            .map(Bytes::copy_from_slice)
            .to_vec();
        WireMessage::split(frames).unwrap()
    }

    #[test]
    fn a_header_or_metadata_that_is_not_one_json_object_is_refused() {
        let object = &br#"{"session": "s"}"#[..];
        let bad: [&[u8]; 5] = [
            br#"["s", "2026-11-27T20:00:00Z"]"#, // a struct's fields as an array
            br#"{"session": "s"} {}"#,           // trailing text
            br#"{"session": "s""#,               // cut short
            b"{\"x\": \"\xff\"}",                // not UTF-8 in a skipped string
            b"  ",
        ];
        for part in bad {
            let shown = String::from_utf8_lossy(part);
            assert!(
                matches!(
                    record_parts(&message(part, object)),
                    Err(Error::InvalidMessage { .. })
                ),
                "header {shown}"
            );
            assert!(
                matches!(
                    record_parts(&message(object, part)),
                    Err(Error::InvalidMessage { .. })
                ),
                "metadata {shown}"
            );
        }
        assert!(record_parts(&message(b" {} ", object)).is_ok());
    }
}
