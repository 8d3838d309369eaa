//! The tables: ipyparallel's SQLiteDB columns (as a view over a requests table and a
//! results table, see [`Tables`]), and how each TaskRecord field is stored.
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
use ipp_core::store::{FieldValue, JsonObject, RecordKey, TaskRecord};
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

/// The columns a request's record changes in after it is recorded (its assignment, its
/// result, its output). Updates write them as rows of [`Tables::results`], an append
/// rather than a rewrite of the request's row; [`Tables::records`] reads them from there
/// when a record has them.
const RESULT_SIDE: [RecordKey; 14] = [
    RecordKey::EngineUuid,
    RecordKey::Started,
    RecordKey::Completed,
    RecordKey::Resubmitted,
    RecordKey::Received,
    RecordKey::ResultHeader,
    RecordKey::ResultMetadata,
    RecordKey::ResultContent,
    RecordKey::ResultBuffers,
    RecordKey::ExecuteInput,
    RecordKey::ExecuteResult,
    RecordKey::Error,
    RecordKey::Stdout,
    RecordKey::Stderr,
];

/// Whether updates write `key` to [`Tables::results`] (else to [`Tables::requests`]).
pub(crate) fn is_result_side(key: RecordKey) -> bool {
    RESULT_SIDE.contains(&key)
}

/// The SQL names (quoted) behind the store's table `name`.
///
/// `name` itself is a view with ipyparallel's columns, in its order: what every read uses,
/// and what `SELECT * FROM "ipython-tasks"` shows a person. Behind it, `<name>_requests`
/// holds each record as added (every column), and `<name>_results` the result-side columns
/// an update changed later, keyed by the request's row (and carrying its `msg_id`, which
/// the view checks too: see [`relink_results`]). A result that arrives after its request's
/// row was committed is then an `INSERT` of a small row instead of an `UPDATE` that grows
/// the request's row in place: the `UPDATE` was the writer's largest cost (BENCHMARKS.md).
#[derive(Clone, Debug)]
pub(crate) struct Tables {
    /// The view of whole records, named as configured.
    pub(crate) records: String,
    /// Records as added.
    pub(crate) requests: String,
    /// Result-side columns changed after the add.
    pub(crate) results: String,
    /// The trigger that drops a request's results with it.
    drop_results: String,
    /// The index on the requests' `submitted`.
    submitted_index: String,
}

impl Tables {
    /// The names for the store table `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            records: quote(name),
            requests: quote(&format!("{name}_requests")),
            results: quote(&format!("{name}_results")),
            drop_results: quote(&format!("{name}_drop_results")),
            submitted_index: quote(&format!("{name}_submitted")),
        }
    }

    /// `SELECT` of whole records with ipyparallel's columns (a result-side column from
    /// the results row when that has it), plus `_order`, the request's insertion order,
    /// when `with_order`.
    pub(crate) fn select_records(&self, with_order: bool) -> String {
        let columns: Vec<String> = RecordKey::ALL
            .iter()
            .map(|key| {
                let column = key.as_str();
                if is_result_side(*key) {
                    format!("coalesce(x.{column}, t.{column}) AS {column}")
                } else {
                    format!("t.{column} AS {column}")
                }
            })
            .collect();
        let order = if with_order {
            ", t.rowid AS _order"
        } else {
            ""
        };
        format!(
            "SELECT {}{order} FROM {} AS t LEFT JOIN {} AS x \
             ON x.row = t.rowid AND x.msg_id = t.msg_id",
            columns.join(", "),
            self.requests,
            self.results
        )
    }
}

/// What the name of the store's table is in the file.
#[derive(Debug)]
enum Found {
    Nothing,
    /// A table: ipyparallel's layout, or this store's before results had a table of
    /// their own. It becomes the requests table.
    OldTable,
    /// This store's view.
    View,
}

/// Creates the store's tables, view, trigger and index for `table` where missing, after
/// checking what exists: an existing requests table (or an old single table, which is
/// renamed to become it, keeping its records) must have ipyparallel's columns.
pub(crate) fn ensure(conn: &Connection, path: &Path, table: &str) -> Result<()> {
    let sql_err = |operation| {
        move |source| Error::Sqlite {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let schema_err = |reason: String| Error::Schema {
        table: table.to_owned(),
        path: path.to_path_buf(),
        reason,
    };
    let names = Tables::new(table);
    let tx = conn
        .unchecked_transaction()
        .map_err(sql_err("schema check"))?;
    let found = match object_type(&tx, table).map_err(sql_err("schema check"))? {
        None => Found::Nothing,
        Some(kind) if kind == "table" => Found::OldTable,
        Some(kind) if kind == "view" => Found::View,
        Some(kind) => return Err(schema_err(format!("it is an SQLite {kind}, not a table"))),
    };
    let requests = format!("{table}_requests");
    let requests_exist = object_type(&tx, &requests)
        .map_err(sql_err("schema check"))?
        .is_some();
    match found {
        Found::OldTable if requests_exist => {
            return Err(schema_err(format!(
                "both the table and a table {requests} exist; remove one"
            )));
        }
        Found::OldTable => {
            check_columns(&columns_of(&tx, &names.records).map_err(sql_err("schema check"))?)
                .map_err(&schema_err)?;
            tx.execute_batch(&format!(
                "ALTER TABLE {} RENAME TO {};",
                names.records, names.requests
            ))
            .map_err(sql_err("rename the old table"))?;
            tracing::info!(path = %path.display(), table,
                "task table moved to {requests}; results now have a table of their own, \
                 and {table} is a view of whole records");
        }
        Found::Nothing | Found::View if requests_exist => {
            check_columns(&columns_of(&tx, &names.requests).map_err(sql_err("schema check"))?)
                .map_err(&schema_err)?;
        }
        Found::Nothing | Found::View => {
            let columns: Vec<String> = RecordKey::ALL
                .iter()
                .map(|key| format!("{} {}", key.as_str(), declared_type(*key)))
                .collect();
            tx.execute_batch(&format!(
                "CREATE TABLE {} ({});",
                names.requests,
                columns.join(", ")
            ))
            .map_err(sql_err("create table"))?;
        }
    }
    let result_columns: Vec<String> = RESULT_SIDE
        .iter()
        .map(|key| format!("{} {}", key.as_str(), declared_type(*key)))
        .collect();
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {results} (row INTEGER PRIMARY KEY, msg_id text, {columns});
         CREATE TRIGGER IF NOT EXISTS {trigger} AFTER DELETE ON {requests}
             BEGIN DELETE FROM {results} WHERE row = old.rowid; END;
         CREATE INDEX IF NOT EXISTS {index} ON {requests} (submitted);",
        results = names.results,
        columns = result_columns.join(", "),
        trigger = names.drop_results,
        requests = names.requests,
        index = names.submitted_index,
    ))
    .map_err(sql_err("create the results table"))?;
    relink_results(&tx, &names).map_err(sql_err("relink results"))?;
    // Made afresh on every open, so the view always matches this code's layout.
    tx.execute_batch(&format!(
        "DROP VIEW IF EXISTS {records}; CREATE VIEW {records} AS {select};",
        records = names.records,
        select = names.select_records(false)
    ))
    .map_err(sql_err("create the records view"))?;
    tx.commit().map_err(sql_err("schema check"))
}

/// Points every results row at its request's row again, when some do not: `VACUUM` may
/// renumber the rows of a table without an `INTEGER PRIMARY KEY`, as the requests table
/// (ipyparallel's schema) is. Until then the view shows no results for such rows rather
/// than another record's (it joins on the row and the msg_id). Results whose request is
/// gone are dropped.
fn relink_results(conn: &Connection, names: &Tables) -> rusqlite::Result<()> {
    let (requests, results) = (&names.requests, &names.results);
    let stale: bool = conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {results} AS x LEFT JOIN {requests} AS t \
             ON t.rowid = x.row WHERE t.msg_id IS NOT x.msg_id)"
        ),
        [],
        |row| row.get(0),
    )?;
    if !stale {
        return Ok(());
    }
    let columns = RESULT_SIDE.map(RecordKey::as_str).join(", ");
    let from_x = RESULT_SIDE
        .map(|key| format!("x.{}", key.as_str()))
        .join(", ");
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE ipp_relinked AS SELECT t.rowid AS row, x.msg_id AS msg_id, {from_x}
             FROM {results} AS x JOIN {requests} AS t ON t.msg_id = x.msg_id;
         DELETE FROM {results};
         INSERT INTO {results} (row, msg_id, {columns})
             SELECT row, msg_id, {columns} FROM ipp_relinked;
         DROP TABLE ipp_relinked;"
    ))?;
    tracing::info!(table = %names.records, "task results relinked to their requests' rows");
    Ok(())
}

/// The type (`table`, `view`, `index`, `trigger`) of the schema object `name`, if any.
fn object_type(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        "SELECT type FROM sqlite_master WHERE name = ?",
        [name],
        |row| row.get(0),
    )
    .optional()
}

/// `(name, declared type)` of each column of the (quoted) table `table`.
fn columns_of(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(1)?, row.get::<_, String>(2)?))
    })?;
    rows.collect()
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
///
/// # Errors
/// [`Error::Decode`] when the value is not of the field's type.
pub(crate) fn set_from_sql(
    record: &mut TaskRecord,
    key: RecordKey,
    value: ValueRef<'_>,
) -> Result<()> {
    record
        .set_field(key, Stored(value))
        .map_err(|reason| Error::Decode {
            msg_id: record.msg_id.clone(),
            column: key.as_str(),
            reason,
        })
}

/// A column's value as this store writes it: JSON and dates as text, buffers as one blob.
#[derive(Clone, Copy)]
struct Stored<'a>(ValueRef<'a>);

impl FieldValue for Stored<'_> {
    fn text(self) -> std::result::Result<Option<String>, String> {
        match self.0 {
            ValueRef::Null => Ok(None),
            ValueRef::Text(bytes) => String::from_utf8(bytes.to_vec())
                .map(Some)
                .map_err(|_| "text is not UTF-8".to_owned()),
            other => Err(format!("expected text, found {:?}", other.data_type())),
        }
    }

    /// Checked now, parsed only when read.
    fn json(self) -> std::result::Result<Option<JsonObject>, String> {
        self.text()?
            .map(|text| {
                JsonObject::from_json(Bytes::from(text))
                    .map_err(|err| format!("not a JSON object: {err}"))
            })
            .transpose()
    }

    fn date(self) -> std::result::Result<Option<Timestamp>, String> {
        self.text()?
            .map(|text| date::parse(&text).ok_or_else(|| format!("{text:?} is not a date")))
            .transpose()
    }

    fn buffers(self) -> std::result::Result<Vec<Bytes>, String> {
        match self.0 {
            ValueRef::Null => Ok(Vec::new()),
            ValueRef::Blob(bytes) => decode_buffers(bytes),
            other => Err(format!("expected a blob, found {:?}", other.data_type())),
        }
    }
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
