//! MongoDB-style queries over task records: `{"key": value | {"$op": operand}}`.

use super::record::RecordKey;
use crate::protocol::Timestamp;

/// A literal in a query; ISO date strings become [`QueryValue::Date`].
#[derive(Clone, Debug, PartialEq)]
pub enum QueryValue {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number.
    Number(f64),
    /// A string that is not a date.
    Str(String),
    /// A date (parsed from an ISO-8601 string).
    Date(Timestamp),
}

/// One condition on one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Plain value or `$eq`.
    Eq(QueryValue),
    /// `$ne`
    Ne(QueryValue),
    /// `$lt`
    Lt(QueryValue),
    /// `$lte`
    Lte(QueryValue),
    /// `$gt`
    Gt(QueryValue),
    /// `$gte`
    Gte(QueryValue),
    /// `$in`: the record's value is one of these.
    In(Vec<QueryValue>),
    /// `$nin`: the record's value is none of these.
    Nin(Vec<QueryValue>),
}

/// A conjunction of conditions; the empty query matches every record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Every clause must hold.
    pub clauses: Vec<(RecordKey, Condition)>,
}
