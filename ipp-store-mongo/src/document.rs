//! TaskRecord ⇄ BSON document.
//!
//! Fields keep their TaskRecord names. Dates are BSON datetimes, which hold milliseconds;
//! the exact microseconds go in a companion subdocument `_ipp_us` (`{field: i64 µs since
//! the epoch}`), which is what we read back when present. Dicts are BSON documents, buffers
//! arrays of BSON binary, unset fields null.
//!
//! Reading is lenient about dates: a MongoDB-wire server may hand back a date written
//! through `$set` as a string (nx-27017 does: `"2026-01-02 00:00:00.123000"`), so strings
//! in date fields are parsed back into dates.

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime};
use ipp_core::protocol::{date, JsonMap, Timestamp};
use ipp_core::store::JsonObject;
use ipp_core::store::{FieldValue, RecordKey, TaskRecord};
use mongodb::bson::{self, doc, spec::BinarySubtype, Binary, Bson, Document};

use crate::error::{Error, Result};

/// The companion subdocument with exact microsecond dates.
pub(crate) const MICROS: &str = "_ipp_us";

/// The date fields.
pub(crate) const DATE_KEYS: [RecordKey; 4] = [
    RecordKey::Submitted,
    RecordKey::Started,
    RecordKey::Completed,
    RecordKey::Received,
];

fn date_of(record: &TaskRecord, key: RecordKey) -> Option<Timestamp> {
    match key {
        RecordKey::Submitted => record.submitted,
        RecordKey::Started => record.started,
        RecordKey::Completed => record.completed,
        RecordKey::Received => record.received,
        _ => None,
    }
}

/// `record` as a document (every field, unset ones as null).
pub(crate) fn encode(record: &TaskRecord) -> Result<Document> {
    let mut out = Document::new();
    for key in RecordKey::ALL {
        out.insert(key.as_str(), field(record, key)?);
    }
    out.insert(MICROS, micros(record));
    Ok(out)
}

/// The `_ipp_us` subdocument of `record`.
pub(crate) fn micros(record: &TaskRecord) -> Document {
    let mut out = Document::new();
    for key in DATE_KEYS {
        if let Some(date) = date_of(record, key) {
            out.insert(key.as_str(), date.timestamp_micros());
        }
    }
    out
}

/// One field of `record` as BSON.
pub(crate) fn field(record: &TaskRecord, key: RecordKey) -> Result<Bson> {
    let text = |value: &Option<String>| value.clone().map_or(Bson::Null, Bson::String);
    let when = |value: &Option<Timestamp>| {
        value.map_or(Bson::Null, |d| {
            Bson::DateTime(bson::DateTime::from_millis(d.timestamp_millis()))
        })
    };
    let json = |value: &Option<JsonObject>| -> Result<Bson> {
        match value {
            None => Ok(Bson::Null),
            Some(document) => bson::to_bson(document.map()).map_err(|err| Error::Encode {
                msg_id: record.msg_id.clone(),
                field: key.as_str(),
                reason: err.to_string(),
            }),
        }
    };
    let buffers = |value: &[Bytes]| {
        Bson::Array(
            value
                .iter()
                .map(|b| {
                    Bson::Binary(Binary {
                        subtype: BinarySubtype::Generic,
                        bytes: b.to_vec(),
                    })
                })
                .collect(),
        )
    };
    Ok(match key {
        RecordKey::MsgId => Bson::String(record.msg_id.clone()),
        RecordKey::Header => json(&record.header)?,
        RecordKey::Metadata => json(&record.metadata)?,
        RecordKey::Content => json(&record.content)?,
        RecordKey::Buffers => buffers(&record.buffers),
        RecordKey::Submitted => when(&record.submitted),
        RecordKey::ClientUuid => text(&record.client_uuid),
        RecordKey::EngineUuid => text(&record.engine_uuid),
        RecordKey::Started => when(&record.started),
        RecordKey::Completed => when(&record.completed),
        RecordKey::Resubmitted => text(&record.resubmitted),
        RecordKey::Received => when(&record.received),
        RecordKey::ResultHeader => json(&record.result_header)?,
        RecordKey::ResultMetadata => json(&record.result_metadata)?,
        RecordKey::ResultContent => json(&record.result_content)?,
        RecordKey::ResultBuffers => buffers(&record.result_buffers),
        RecordKey::Queue => text(&record.queue),
        RecordKey::ExecuteInput => text(&record.execute_input),
        RecordKey::ExecuteResult => json(&record.execute_result)?,
        RecordKey::Error => json(&record.error)?,
        RecordKey::Stdout => Bson::String(record.stdout.clone()),
        RecordKey::Stderr => Bson::String(record.stderr.clone()),
        RecordKey::Label => text(&record.label),
    })
}

/// A stored document as a record.
pub(crate) fn decode(document: &Document) -> Result<TaskRecord> {
    let msg_id = match document.get("msg_id") {
        Some(Bson::String(id)) => id.clone(),
        other => {
            return Err(Error::Decode {
                msg_id: String::new(),
                field: "msg_id",
                reason: format!("expected a string, found {other:?}"),
            })
        }
    };
    let mut record = TaskRecord::new(msg_id);
    let exact = match document.get(MICROS) {
        Some(Bson::Document(d)) => Some(d),
        _ => None,
    };
    for key in RecordKey::ALL {
        let value = document.get(key.as_str()).unwrap_or(&Bson::Null);
        set(&mut record, key, value, exact)?;
    }
    Ok(record)
}

fn set(
    record: &mut TaskRecord,
    key: RecordKey,
    value: &Bson,
    exact: Option<&Document>,
) -> Result<()> {
    let field = key.as_str();
    record
        .set_field(
            key,
            Stored {
                value,
                exact,
                field,
            },
        )
        .map_err(|reason| Error::Decode {
            msg_id: record.msg_id.clone(),
            field,
            reason,
        })
}

/// A field's value as this store writes it, with the document's exact microseconds (for
/// dates, which BSON keeps to the millisecond).
#[derive(Clone, Copy)]
struct Stored<'a> {
    value: &'a Bson,
    exact: Option<&'a Document>,
    field: &'static str,
}

impl FieldValue for Stored<'_> {
    fn text(self) -> std::result::Result<Option<String>, String> {
        match self.value {
            Bson::Null | Bson::Undefined => Ok(None),
            Bson::String(text) => Ok(Some(text.clone())),
            other => Err(format!("expected a string, found {other:?}")),
        }
    }

    fn json(self) -> std::result::Result<Option<JsonObject>, String> {
        match self.value {
            Bson::Null | Bson::Undefined => Ok(None),
            Bson::Document(d) => bson::from_document::<JsonMap>(d.clone())
                .map(|map| Some(map.into()))
                .map_err(|err| err.to_string()),
            other => Err(format!("expected a document, found {other:?}")),
        }
    }

    fn date(self) -> std::result::Result<Option<Timestamp>, String> {
        let coarse = match self.value {
            Bson::Null | Bson::Undefined => return Ok(None),
            Bson::DateTime(d) => DateTime::from_timestamp_millis(d.timestamp_millis())
                .ok_or_else(|| format!("date {d} is out of range"))?,
            Bson::String(text) => {
                parse_lenient(text).ok_or_else(|| format!("{text:?} is not a date"))?
            }
            other => return Err(format!("expected a date, found {other:?}")),
        };
        let precise = self
            .exact
            .and_then(|d| match d.get(self.field) {
                Some(Bson::Int64(us)) => Some(*us),
                Some(Bson::Int32(us)) => Some(i64::from(*us)),
                _ => None,
            })
            .and_then(DateTime::from_timestamp_micros)
            // Only if it is the same instant to the millisecond (guards a stale companion).
            .filter(|p| p.timestamp_millis() == coarse.timestamp_millis());
        Ok(Some(precise.unwrap_or(coarse)))
    }

    fn buffers(self) -> std::result::Result<Vec<Bytes>, String> {
        match self.value {
            Bson::Null | Bson::Undefined => Ok(Vec::new()),
            Bson::Array(items) => items
                .iter()
                .map(|item| match item {
                    Bson::Binary(b) => Ok(Bytes::from(b.bytes.clone())),
                    other => Err(format!("expected binary, found {other:?}")),
                })
                .collect(),
            other => Err(format!("expected an array of binary, found {other:?}")),
        }
    }
}

/// ISO dates, and the `YYYY-MM-DD HH:MM:SS[.ffffff]` text (UTC) some servers return for
/// dates written through `$set`.
fn parse_lenient(text: &str) -> Option<Timestamp> {
    date::parse(text)
        .or_else(|| date::parse(&text.replacen(' ', "T", 1)))
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|naive| naive.and_utc())
        })
}

/// The filter selecting one record.
pub(crate) fn by_id(msg_id: &str) -> Document {
    doc! {"msg_id": msg_id}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_microseconds() {
        let mut rec = TaskRecord::new("a");
        rec.submitted = date::parse("2026-01-01T00:00:00.123456Z");
        rec.header = serde_json::json!({"x": [1, 2.5, null, {"y": true}]})
            .as_object()
            .cloned()
            .map(Into::into);
        rec.buffers = vec![Bytes::new(), Bytes::from_static(b"\x00\xff")];
        rec.stdout = "out".to_owned();
        let back = decode(&encode(&rec).unwrap()).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn string_dates_from_set_are_read_as_dates() {
        let mut document = encode(&TaskRecord::new("a")).unwrap();
        document.insert("completed", "2026-01-02 00:00:00.123000");
        document.insert(MICROS, doc! {"completed": 1_767_312_000_123_456_i64});
        let rec = decode(&document).unwrap();
        assert_eq!(rec.completed, date::parse("2026-01-02T00:00:00.123456Z"));
        document.insert(MICROS, doc! {});
        let rec = decode(&document).unwrap();
        assert_eq!(rec.completed, date::parse("2026-01-02T00:00:00.123Z"));
    }
}
