//! The table: ipyparallel's SQLiteDB columns, and how each TaskRecord field is stored.
//!
//! Columns, order and declared types are ipyparallel's (spec §8.3). Values:
//! - `dict text` columns and `execute_result` / `error`: JSON text of the object;
//! - `timestamp` columns: fixed-width ISO text, `2026-11-22T17:59:21.232133+00:00` (what
//!   Python's `isoformat()` writes for an aware UTC date with microseconds); fixed width
//!   makes text order equal time order, so date queries run in SQL;
//! - `bufs blob` columns: our own blob encoding (see [`encode_buffers`]), `NULL` when there
//!   are no buffers, as ipyparallel does; ipyparallel pickles the list instead.
//! - `stdout` / `stderr`: text, `''` when nothing was printed.

use std::path::Path;

use bytes::Bytes;
use ipp_core::protocol::{date, Timestamp};
use ipp_core::store::{JsonObject, RecordKey, TaskRecord};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// How a column's values are stored, which decides how queries on it translate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Text or NULL.
    Text,
    /// Text, never NULL in a record (`stdout`, `stderr`).
    Output,
    /// A date as fixed-width ISO text, or NULL.
    Date,
    /// A JSON object as text, or NULL.
    Json,
    /// Buffers as a blob, NULL for none.
    Buffers,
}

/// How `key`'s values are stored.
pub(crate) fn kind(key: RecordKey) -> Kind {
    match key {
        RecordKey::Header
        | RecordKey::Metadata
        | RecordKey::Content
        | RecordKey::ResultHeader
        | RecordKey::ResultMetadata
        | RecordKey::ResultContent
        | RecordKey::ExecuteResult
        | RecordKey::Error => Kind::Json,
        RecordKey::Buffers | RecordKey::ResultBuffers => Kind::Buffers,
        RecordKey::Submitted | RecordKey::Started | RecordKey::Completed | RecordKey::Received => {
            Kind::Date
        }
        RecordKey::Stdout | RecordKey::Stderr => Kind::Output,
        _ => Kind::Text,
    }
}

/// The column's declared type, exactly as ipyparallel declares it.
fn declared_type(key: RecordKey) -> &'static str {
    match key {
        RecordKey::MsgId => "text PRIMARY KEY",
        RecordKey::ExecuteResult | RecordKey::Error => "text",
        _ => match kind(key) {
            Kind::Json => "dict text",
            Kind::Buffers => "bufs blob",
            Kind::Date => "timestamp",
            Kind::Text | Kind::Output => "text",
        },
    }
}

/// `name` as an SQL identifier: double-quoted, inner quotes doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every column, comma-separated, in schema order.
pub(crate) fn all_columns() -> String {
    RecordKey::ALL.map(RecordKey::as_str).join(", ")
}

/// Creates `table` (and an index on `submitted`) if missing; checks an existing table's
/// columns and declared types against ipyparallel's schema.
pub(crate) fn ensure(conn: &Connection, path: &Path, table: &str) -> Result<()> {
    let sql_err = |operation| {
        move |source| Error::Sqlite {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let existing: Vec<(String, String)> = {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({})", quote(table)))
            .map_err(sql_err("schema check"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(1)?, row.get::<_, String>(2)?))
            })
            .map_err(sql_err("schema check"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(sql_err("schema check"))?
    };
    if existing.is_empty() {
        let columns: Vec<String> = RecordKey::ALL
            .iter()
            .map(|key| format!("{} {}", key.as_str(), declared_type(*key)))
            .collect();
        conn.execute_batch(&format!(
            "CREATE TABLE {} ({});",
            quote(table),
            columns.join(", ")
        ))
        .map_err(sql_err("create table"))?;
    } else {
        check_columns(&existing).map_err(|reason| Error::Schema {
            table: table.to_owned(),
            path: path.to_path_buf(),
            reason,
        })?;
    }
    // Not in ipyparallel's schema, but harmless to it: history and date ranges use it.
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} (submitted);",
        quote(&format!("{table}_submitted")),
        quote(table)
    ))
    .map_err(sql_err("create index"))?;
    Ok(())
}

/// Compares `(name, declared type)` pairs from `PRAGMA table_info` with the schema.
fn check_columns(existing: &[(String, String)]) -> std::result::Result<(), String> {
    if existing.len() != RecordKey::ALL.len() {
        return Err(format!(
            "it has {} columns, the schema has {}",
            existing.len(),
            RecordKey::ALL.len()
        ));
    }
    for ((name, declared), key) in existing.iter().zip(RecordKey::ALL) {
        // table_info reports the type without the PRIMARY KEY constraint.
        let want = declared_type(key).trim_end_matches(" PRIMARY KEY");
        if name != key.as_str() || !declared.eq_ignore_ascii_case(want) {
            return Err(format!(
                "column {name} {declared} where the schema has {} {want}",
                key.as_str()
            ));
        }
    }
    Ok(())
}

/// A date as stored: fixed-width ISO text with microseconds and `+00:00`.
pub(crate) fn format_date(date: &Timestamp) -> String {
    DateText::new(date).as_str().to_owned()
}

/// A date's stored text, `2026-11-22T17:59:21.232133+00:00`, built on the stack.
pub(crate) struct DateText {
    bytes: [u8; 32],
    /// Years outside 0–9999 do not fit the fixed width; they are formatted the slow way.
    wide: Option<String>,
}

impl DateText {
    /// Formats `date` (by hand: chrono's `format` parses its pattern on every call, and
    /// `format!` went through the formatting machinery per field, which showed in profiles).
    pub(crate) fn new(date: &Timestamp) -> Self {
        use chrono::{Datelike, Timelike};
        // A leap second shows as 1_000_000+ µs in chrono; keep the field six digits wide.
        let micros = (date.nanosecond() / 1_000).min(999_999);
        let year = date.year();
        let Ok(year4) = u32::try_from(year) else {
            return Self::wide(date, micros);
        };
        if year4 > 9999 {
            return Self::wide(date, micros);
        }
        let mut bytes = *b"0000-00-00T00:00:00.000000+00:00";
        put_digits(&mut bytes[0..4], year4);
        put_digits(&mut bytes[5..7], date.month());
        put_digits(&mut bytes[8..10], date.day());
        put_digits(&mut bytes[11..13], date.hour());
        put_digits(&mut bytes[14..16], date.minute());
        put_digits(&mut bytes[17..19], date.second());
        put_digits(&mut bytes[20..26], micros);
        Self { bytes, wide: None }
    }

    fn wide(date: &Timestamp, micros: u32) -> Self {
        use chrono::{Datelike, Timelike};
        let text = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            date.year(),
            date.month(),
            date.day(),
            date.hour(),
            date.minute(),
            date.second(),
            micros
        );
        Self {
            bytes: [0; 32],
            wide: Some(text),
        }
    }

    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        match &self.wide {
            Some(text) => text,
            // Only ASCII digits and punctuation were written.
            None => std::str::from_utf8(&self.bytes).unwrap_or_default(),
        }
    }
}

/// Writes `value`'s last `out.len()` decimal digits into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u32) {
    for byte in out.iter_mut().rev() {
        // `value % 10` is below 10, so the cast cannot truncate.
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Magic bytes that open a buffers blob (version 1 of our encoding).
const BUFFERS_MAGIC: &[u8; 8] = b"IPPBUF1\0";

/// Appends the blob of a non-empty list of buffers to `out`: the 8 bytes `IPPBUF1\0`, the
/// count as a little-endian u32, then each buffer as its length (little-endian u64) and
/// its bytes. (An empty list is stored as NULL, not as a blob.)
pub(crate) fn encode_buffers_into(buffers: &[Bytes], out: &mut Vec<u8>) {
    let total: usize = buffers.iter().map(|b| b.len() + 8).sum();
    out.reserve(BUFFERS_MAGIC.len() + 4 + total);
    out.extend_from_slice(BUFFERS_MAGIC);
    // More than u32::MAX buffers cannot arrive in one message; saturate rather than wrap.
    out.extend_from_slice(
        &u32::try_from(buffers.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for buffer in buffers {
        out.extend_from_slice(&(buffer.len() as u64).to_le_bytes());
        out.extend_from_slice(buffer);
    }
}

/// Decodes [`encode_buffers_into`]'s blob; the buffers share one allocation.
pub(crate) fn decode_buffers(blob: &[u8]) -> std::result::Result<Vec<Bytes>, String> {
    if blob.first() == Some(&0x80) {
        return Err("this looks like a Python pickle (written by ipyparallel), \
                    which this store cannot read"
            .to_owned());
    }
    let Some(rest) = blob.strip_prefix(BUFFERS_MAGIC.as_slice()) else {
        return Err("not a buffers blob (bad magic bytes)".to_owned());
    };
    let truncated = || "truncated buffers blob".to_owned();
    let all = Bytes::copy_from_slice(rest);
    let count = u32::from_le_bytes(
        all.get(..4)
            .ok_or_else(truncated)?
            .try_into()
            .map_err(|_| truncated())?,
    );
    let mut at = 4usize;
    let mut out = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let len_bytes: [u8; 8] = all
            .get(at..at + 8)
            .ok_or_else(truncated)?
            .try_into()
            .map_err(|_| truncated())?;
        let len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| truncated())?;
        at += 8;
        let end = at
            .checked_add(len)
            .filter(|&end| end <= all.len())
            .ok_or_else(truncated)?;
        out.push(all.slice(at..end));
        at = end;
    }
    if at != all.len() {
        return Err("trailing bytes after the buffers".to_owned());
    }
    Ok(out)
}

/// Sets `record`'s `key` field from a stored value.
pub(crate) fn set_from_sql(
    record: &mut TaskRecord,
    key: RecordKey,
    value: ValueRef<'_>,
) -> Result<()> {
    let column = key.as_str();
    let bad = |reason: String| Error::Decode {
        msg_id: record.msg_id.clone(),
        column,
        reason,
    };
    let text = |value: ValueRef<'_>| -> Result<Option<String>> {
        match value {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| bad("text is not UTF-8".to_owned())),
            other => Err(bad(format!("expected text, found {:?}", other.data_type()))),
        }
    };
    // Checked now, parsed only when read.
    let json = |value: ValueRef<'_>| -> Result<Option<JsonObject>> {
        text(value)?
            .map(|text| {
                JsonObject::from_json(Bytes::from(text))
                    .map_err(|err| bad(format!("not a JSON object: {err}")))
            })
            .transpose()
    };
    let when = |value: ValueRef<'_>| -> Result<Option<Timestamp>> {
        text(value)?
            .map(|text| date::parse(&text).ok_or_else(|| bad(format!("{text:?} is not a date"))))
            .transpose()
    };
    let buffers = |value: ValueRef<'_>| -> Result<Vec<Bytes>> {
        match value {
            ValueRef::Null => Ok(Vec::new()),
            ValueRef::Blob(bytes) => decode_buffers(bytes).map_err(&bad),
            other => Err(bad(format!(
                "expected a blob, found {:?}",
                other.data_type()
            ))),
        }
    };
    match key {
        RecordKey::MsgId => {}
        RecordKey::Header => record.header = json(value)?,
        RecordKey::Metadata => record.metadata = json(value)?,
        RecordKey::Content => record.content = json(value)?,
        RecordKey::Buffers => record.buffers = buffers(value)?,
        RecordKey::Submitted => record.submitted = when(value)?,
        RecordKey::ClientUuid => record.client_uuid = text(value)?,
        RecordKey::EngineUuid => record.engine_uuid = text(value)?,
        RecordKey::Started => record.started = when(value)?,
        RecordKey::Completed => record.completed = when(value)?,
        RecordKey::Resubmitted => record.resubmitted = text(value)?,
        RecordKey::Received => record.received = when(value)?,
        RecordKey::ResultHeader => record.result_header = json(value)?,
        RecordKey::ResultMetadata => record.result_metadata = json(value)?,
        RecordKey::ResultContent => record.result_content = json(value)?,
        RecordKey::ResultBuffers => record.result_buffers = buffers(value)?,
        RecordKey::Queue => record.queue = text(value)?,
        RecordKey::ExecuteInput => record.execute_input = text(value)?,
        RecordKey::ExecuteResult => record.execute_result = json(value)?,
        RecordKey::Error => record.error = json(value)?,
        RecordKey::Stdout => record.stdout = text(value)?.unwrap_or_default(),
        RecordKey::Stderr => record.stderr = text(value)?.unwrap_or_default(),
        RecordKey::Label => record.label = text(value)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_buffers(buffers: &[Bytes]) -> Option<Vec<u8>> {
        if buffers.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        encode_buffers_into(buffers, &mut out);
        Some(out)
    }

    #[test]
    fn buffers_round_trip_including_empty_ones() {
        let buffers = vec![
            Bytes::new(),
            Bytes::from_static(b"\x00\xffabc"),
            Bytes::from(vec![7u8; 70_000]),
        ];
        let blob = encode_buffers(&buffers).unwrap();
        assert_eq!(decode_buffers(&blob).unwrap(), buffers);
        assert_eq!(encode_buffers(&[]), None);
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        let blob = encode_buffers(&[Bytes::from_static(b"abcdef")]).unwrap();
        for cut in 0..blob.len() {
            assert!(decode_buffers(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let err = decode_buffers(b"\x80\x05\x95pickle").unwrap_err();
        assert!(err.contains("pickle"), "{err}");
        let mut long = blob.clone();
        long.push(0);
        assert!(decode_buffers(&long).is_err());
    }

    #[test]
    fn dates_are_fixed_width_and_sort_as_text() {
        let a = date::parse("2026-01-01T00:00:00Z").unwrap();
        let b = date::parse("2026-01-01T00:00:00.000001Z").unwrap();
        let (fa, fb) = (format_date(&a), format_date(&b));
        assert_eq!(fa, "2026-01-01T00:00:00.000000+00:00");
        let c = date::parse("0999-12-31T23:59:59.123456Z").unwrap();
        assert_eq!(format_date(&c), "0999-12-31T23:59:59.123456+00:00");
        assert_eq!(fa.len(), fb.len());
        assert!(fa < fb);
        assert_eq!(date::parse(&fb), Some(b));
    }

    #[test]
    fn an_existing_table_with_other_columns_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (msg_id text PRIMARY KEY, x text)")
            .unwrap();
        let err = ensure(&conn, Path::new(":memory:"), "t").unwrap_err();
        assert!(matches!(err, Error::Schema { .. }), "{err}");
        ensure(&conn, Path::new(":memory:"), "ipython-tasks").unwrap();
        ensure(&conn, Path::new(":memory:"), "ipython-tasks").unwrap();
    }
}
