//! Translating a [`Query`] into an SQL `WHERE` clause with exactly [`Query::matches`]'s
//! semantics.
//!
//! Every condition translates. The trick: for each column kind, a record's value is either
//! NULL or of one type, so a condition is "what it says of null" for NULL and an SQL test
//! for the rest:
//! - `dict` and `bufs` columns: whether a condition holds never depends on the object or
//!   buffers themselves (they equal and order against no query literal), so the SQL is
//!   `IS NULL` / `IS NOT NULL` or a constant, computed by asking [`Condition::matches`];
//! - text and date columns: `col IS NULL` decides the null case (again by asking
//!   [`Condition::matches`] about null), and the value case is a plain comparison, with
//!   literals of another type (numbers, booleans, dates against text…) a constant false.
//!
//! `$in` / `$nin` lists bind as one JSON array (`IN (SELECT value FROM json_each(?))`), so a
//! list of 100,000 `msg_id`s is one parameter. `$glob` calls `ipp_glob`, a function we
//! register that runs core's fnmatch.

use ipp_core::store::{Condition, Query, QueryValue, RecordKey, RecordValue};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::Value as Json;

use crate::schema::{format_date, kind, Kind};

/// A `WHERE` condition and its parameters.
#[derive(Debug, Default)]
pub(crate) struct Where {
    /// SQL text, `1` for the empty query.
    pub(crate) sql: String,
    /// Positional parameters, in order.
    pub(crate) params: Vec<Value>,
}

/// Translates `query`.
pub(crate) fn translate(query: &Query) -> Where {
    let mut params = Vec::new();
    let terms: Vec<String> = query
        .clauses
        .iter()
        .map(|(key, condition)| term(*key, condition, &mut params))
        .collect();
    let sql = if terms.is_empty() {
        "1".to_owned()
    } else {
        terms.join(" AND ")
    };
    Where { sql, params }
}

/// `ORDER BY` for submission order over [`Tables::select_records`] with its `_order`:
/// undated records last, ties in insertion order (as DictDb orders them).
///
/// [`Tables::select_records`]: crate::schema::Tables::select_records
pub(crate) const SUBMISSION_ORDER: &str = "submitted IS NULL, submitted, _order";

fn constant(holds: bool) -> String {
    if holds { "1" } else { "0" }.to_owned()
}

/// One clause as SQL.
fn term(key: RecordKey, condition: &Condition, params: &mut Vec<Value>) -> String {
    let column = key.as_str();
    match kind(key) {
        Kind::Buffers => constant(condition.matches(&RecordValue::Buffers(Vec::new()))),
        Kind::Json => {
            let on_null = condition.matches(&RecordValue::Null);
            let on_object = condition.matches(&RecordValue::Json(Json::Object(Default::default())));
            match (on_null, on_object) {
                (true, true) => constant(true),
                (false, false) => constant(false),
                (true, false) => format!("{column} IS NULL"),
                (false, true) => format!("{column} IS NOT NULL"),
            }
        }
        Kind::Output => {
            let expr = format!("ifnull({column}, '')");
            value_test(&expr, kind(key), condition, params)
        }
        Kind::Text | Kind::Date => {
            let test = value_test(column, kind(key), condition, params);
            if condition.matches(&RecordValue::Null) {
                format!("({column} IS NULL OR {test})")
            } else {
                format!("({column} IS NOT NULL AND {test})")
            }
        }
    }
}

/// The literal as a stored value of this kind, or `None` when it is of another type (and so
/// never equal or ordered to a stored value).
fn literal(kind: Kind, value: &QueryValue) -> Option<String> {
    match (kind, value) {
        (Kind::Text | Kind::Output, QueryValue::Str(text)) => Some(text.clone()),
        (Kind::Date, QueryValue::Date(date)) => Some(format_date(date)),
        _ => None,
    }
}

/// The condition for a non-NULL value of `expr` (a column of kind `kind`).
fn value_test(expr: &str, kind: Kind, condition: &Condition, params: &mut Vec<Value>) -> String {
    let mut compare = |op: &str, value: &QueryValue, otherwise: bool| match literal(kind, value) {
        Some(text) => {
            params.push(Value::Text(text));
            format!("{expr} {op} ?")
        }
        None => constant(otherwise),
    };
    match condition {
        Condition::Eq(value) => compare("=", value, false),
        Condition::Ne(value) => compare("!=", value, true),
        Condition::Lt(value) => compare("<", value, false),
        Condition::Lte(value) => compare("<=", value, false),
        Condition::Gt(value) => compare(">", value, false),
        Condition::Gte(value) => compare(">=", value, false),
        Condition::In(list) | Condition::Nin(list) => {
            let items: Vec<Json> = list
                .iter()
                .filter_map(|value| literal(kind, value))
                .map(Json::String)
                .collect();
            params.push(Value::Text(Json::Array(items).to_string()));
            let not = if matches!(condition, Condition::Nin(_)) {
                "NOT "
            } else {
                ""
            };
            format!("{expr} {not}IN (SELECT value FROM json_each(?))")
        }
        // Every non-NULL value is set.
        Condition::Exists(wanted) => constant(*wanted),
        Condition::Glob(pattern) => {
            if kind == Kind::Date {
                // A date is not a string: fnmatch never matches it.
                constant(false)
            } else {
                params.push(Value::Text(pattern.clone()));
                format!("ipp_glob(?, {expr})")
            }
        }
    }
}

/// Registers `ipp_glob(pattern, text)`: Python's `fnmatchcase`, as core implements it (0
/// for a NULL or non-text value).
pub(crate) fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "ipp_glob",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let pattern: String = ctx.get(0)?;
            let matched = match ctx.get_raw(1) {
                rusqlite::types::ValueRef::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes).into_owned();
                    Condition::Glob(pattern).matches(&RecordValue::Str(text))
                }
                _ => false,
            };
            Ok(matched)
        },
    )
}

#[cfg(test)]
mod tests {
    //! Checks the translation against [`Query::matches`] on every column kind with every
    //! operator and literal type, over records that cover NULL and non-NULL values.

    use super::*;
    use crate::bind::Binder;
    use crate::schema::{all_columns, ensure};
    use bytes::Bytes;
    use ipp_core::protocol::date;
    use ipp_core::store::TaskRecord;
    use std::path::Path;

    fn records() -> Vec<TaskRecord> {
        let d = |text: &str| date::parse(text).unwrap();
        let obj = |v: Json| ipp_core::store::JsonObject::from(v.as_object().unwrap().clone());
        let mut out = Vec::new();
        for i in 0..6 {
            let mut rec = TaskRecord::new(format!("m{i}"));
            if i % 2 == 0 {
                rec.engine_uuid = Some(["a", "b", "c"][i / 2].to_owned());
                rec.submitted = Some(d([
                    "2026-01-01T00:00:00Z",
                    "2026-01-01T00:00:00.000001Z",
                    "2027-01-01T00:00:00Z",
                ][i / 2]));
                rec.header = Some(obj(serde_json::json!({"x": i})));
                rec.buffers = vec![Bytes::from_static(b"x")];
            }
            if i % 3 == 0 {
                rec.stdout = format!("out {i}");
                rec.label = Some("x".to_owned());
            }
            out.push(rec);
        }
        out
    }

    fn literals() -> Vec<QueryValue> {
        vec![
            QueryValue::Null,
            QueryValue::Bool(true),
            QueryValue::Number(1.0),
            QueryValue::Str("b".to_owned()),
            QueryValue::Str("out 0".to_owned()),
            QueryValue::Str("x".to_owned()),
            QueryValue::Str(String::new()),
            QueryValue::Date(date::parse("2026-01-01T00:00:00.000001Z").unwrap()),
        ]
    }

    fn conditions() -> Vec<Condition> {
        let mut out = vec![
            Condition::Exists(true),
            Condition::Exists(false),
            Condition::Glob("*".to_owned()),
            Condition::Glob("out [!3]".to_owned()),
            Condition::In(vec![]),
            Condition::Nin(vec![]),
        ];
        let lits = literals();
        for value in &lits {
            out.extend([
                Condition::Eq(value.clone()),
                Condition::Ne(value.clone()),
                Condition::Lt(value.clone()),
                Condition::Lte(value.clone()),
                Condition::Gt(value.clone()),
                Condition::Gte(value.clone()),
            ]);
        }
        for pair in lits.windows(2) {
            out.push(Condition::In(pair.to_vec()));
            out.push(Condition::Nin(pair.to_vec()));
        }
        out
    }

    #[test]
    fn translation_agrees_with_query_matches_everywhere() {
        let conn = Connection::open_in_memory().unwrap();
        register_functions(&conn).unwrap();
        ensure(&conn, Path::new(":memory:"), "t").unwrap();
        let records = records();
        let marks = vec!["?"; RecordKey::ALL.len()].join(", ");
        let mut insert = conn
            .prepare(&format!(
                "INSERT INTO t_requests ({}) VALUES ({marks})",
                all_columns()
            ))
            .unwrap();
        let mut binder = Binder::default();
        for rec in &records {
            binder.bind_record(&mut insert, rec).unwrap();
            insert.raw_execute().unwrap();
        }
        drop(insert);
        let mut checked = 0;
        for key in RecordKey::ALL {
            for condition in conditions() {
                let query = Query::new().and(key, condition.clone());
                let clause = translate(&query);
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT msg_id FROM t WHERE {} ORDER BY msg_id",
                        clause.sql
                    ))
                    .unwrap();
                let got: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(clause.params), |row| row.get(0))
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                let want: Vec<String> = records
                    .iter()
                    .filter(|rec| query.matches(rec))
                    .map(|rec| rec.msg_id.clone())
                    .collect();
                assert_eq!(got, want, "{key} {condition:?} -> {}", clause.sql);
                checked += 1;
            }
        }
        assert!(checked > 1000);
    }
}
