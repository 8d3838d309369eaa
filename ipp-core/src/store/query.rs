//! MongoDB-style queries over task records: `{"key": value | {"$op": operand}}`.

use std::cmp::Ordering;

use serde_json::Value;

use super::record::{RecordKey, RecordValue, TaskRecord};
use crate::error::{Error, Result};
use crate::protocol::{date, JsonMap, Timestamp};

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
    /// `$exists`: `true` matches a field that is set (not null), `false` one that is unset.
    Exists(bool),
    /// `$glob`: the record's string value matches this shell pattern (`*`, `?`, `[seq]`,
    /// `[!seq]`, as Python's `fnmatch`); never matches a null or non-string field.
    Glob(String),
}

/// A conjunction of conditions; the empty query matches every record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Every clause must hold.
    pub clauses: Vec<(RecordKey, Condition)>,
}

impl QueryValue {
    /// Converts one JSON scalar; ISO date strings become [`QueryValue::Date`], as the Hub
    /// converts every date string in a `db_request` query (spec §5.4).
    ///
    /// # Errors
    /// [`Error::InvalidQuery`] for arrays and objects, which are not comparable values.
    pub fn from_json(value: &Value) -> Result<Self> {
        Self::parse(value).map_err(Error::invalid_query)
    }

    /// [`QueryValue::from_json`] with the reason alone, for callers that add context.
    fn parse(value: &Value) -> std::result::Result<Self, String> {
        match value {
            Value::Null => Ok(QueryValue::Null),
            Value::Bool(b) => Ok(QueryValue::Bool(*b)),
            Value::Number(n) => n
                .as_f64()
                .map(QueryValue::Number)
                .ok_or_else(|| format!("number {n} is out of range")),
            Value::String(text) => {
                Ok(date::parse(text)
                    .map_or_else(|| QueryValue::Str(text.clone()), QueryValue::Date))
            }
            Value::Array(_) | Value::Object(_) => Err(format!(
                "expected a null, boolean, number or string, got {value}"
            )),
        }
    }

    /// The value as JSON, dates as ISO strings with `Z` (for backends that speak JSON).
    pub fn to_json(&self) -> Value {
        match self {
            QueryValue::Null => Value::Null,
            QueryValue::Bool(b) => Value::Bool(*b),
            QueryValue::Number(n) => {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
            QueryValue::Str(text) => Value::String(text.clone()),
            QueryValue::Date(d) => Value::String(date::format(d)),
        }
    }
}

impl Condition {
    /// The operator as a query spells it: `$eq`, `$in`, …
    pub fn operator(&self) -> &'static str {
        match self {
            Condition::Eq(_) => "$eq",
            Condition::Ne(_) => "$ne",
            Condition::Lt(_) => "$lt",
            Condition::Lte(_) => "$lte",
            Condition::Gt(_) => "$gt",
            Condition::Gte(_) => "$gte",
            Condition::In(_) => "$in",
            Condition::Nin(_) => "$nin",
            Condition::Exists(_) => "$exists",
            Condition::Glob(_) => "$glob",
        }
    }

    /// Parses `operand` for operator `op` on `key` (the key only names errors).
    fn parse(key: RecordKey, op: &str, operand: &Value) -> Result<Self> {
        let scalar = || {
            QueryValue::parse(operand)
                .map_err(|reason| Error::invalid_query(format!("{op} on key {key:?}: {reason}")))
        };
        let list = || -> Result<Vec<QueryValue>> {
            let Value::Array(items) = operand else {
                return Err(Error::invalid_query(format!(
                    "{op} on key {key:?} expects a list, got {operand}"
                )));
            };
            items
                .iter()
                .map(QueryValue::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|reason| Error::invalid_query(format!("{op} on key {key:?}: {reason}")))
        };
        let key = key.as_str();
        Ok(match op {
            "$eq" => Condition::Eq(scalar()?),
            "$ne" => Condition::Ne(scalar()?),
            "$lt" => Condition::Lt(scalar()?),
            "$lte" => Condition::Lte(scalar()?),
            "$gt" => Condition::Gt(scalar()?),
            "$gte" => Condition::Gte(scalar()?),
            "$in" => Condition::In(list()?),
            "$nin" => Condition::Nin(list()?),
            "$exists" => match operand {
                Value::Bool(b) => Condition::Exists(*b),
                _ => {
                    return Err(Error::invalid_query(format!(
                        "$exists on key {key:?} expects true or false, got {operand}"
                    )))
                }
            },
            "$glob" => match operand {
                Value::String(pattern) => Condition::Glob(pattern.clone()),
                _ => {
                    return Err(Error::invalid_query(format!(
                        "$glob on key {key:?} expects a pattern string, got {operand}"
                    )))
                }
            },
            // ipyparallel's DictDB knows these, but no client feature uses them.
            "$all" | "$mod" => {
                return Err(Error::invalid_query(format!(
                    "operator {op} is not supported (key {key:?})"
                )))
            }
            _ => {
                return Err(Error::invalid_query(format!(
                    "unknown operator {op:?} on key {key:?}"
                )))
            }
        })
    }

    /// Whether a record's `value` satisfies this condition (the intended semantics; see
    /// [`Query::matches`]).
    pub fn matches(&self, value: &RecordValue) -> bool {
        match self {
            Condition::Eq(q) => equals(value, q),
            Condition::Ne(q) => !equals(value, q),
            Condition::Lt(q) => compare(value, q) == Some(Ordering::Less),
            Condition::Lte(q) => {
                matches!(compare(value, q), Some(Ordering::Less | Ordering::Equal))
            }
            Condition::Gt(q) => compare(value, q) == Some(Ordering::Greater),
            Condition::Gte(q) => {
                matches!(compare(value, q), Some(Ordering::Greater | Ordering::Equal))
            }
            Condition::In(list) => list.iter().any(|q| equals(value, q)),
            Condition::Nin(list) => !list.iter().any(|q| equals(value, q)),
            Condition::Exists(wanted) => (*value != RecordValue::Null) == *wanted,
            Condition::Glob(pattern) => match value {
                RecordValue::Str(text) => glob_matches(pattern, text),
                _ => false,
            },
        }
    }

    /// The condition as a MongoDB-style operator object, e.g. `{"$in": [...]}`.
    pub fn to_json(&self) -> Value {
        let operand = match self {
            Condition::Eq(q)
            | Condition::Ne(q)
            | Condition::Lt(q)
            | Condition::Lte(q)
            | Condition::Gt(q)
            | Condition::Gte(q) => q.to_json(),
            Condition::In(list) | Condition::Nin(list) => {
                Value::Array(list.iter().map(QueryValue::to_json).collect())
            }
            Condition::Exists(b) => Value::Bool(*b),
            Condition::Glob(pattern) => Value::String(pattern.clone()),
        };
        let mut map = JsonMap::new();
        map.insert(self.operator().to_owned(), operand);
        Value::Object(map)
    }
}

/// Equality as a query means it: `null` equals only an unset field; otherwise both sides
/// must have the same type and compare equal.
fn equals(value: &RecordValue, q: &QueryValue) -> bool {
    match (value, q) {
        (RecordValue::Null, QueryValue::Null) => true,
        (RecordValue::Null, _) | (_, QueryValue::Null) => false,
        (RecordValue::Json(Value::Bool(a)), QueryValue::Bool(b)) => a == b,
        _ => compare(value, q) == Some(Ordering::Equal),
    }
}

/// Orders a record's value against a query value of the same type: strings
/// lexicographically, dates in time, numbers numerically. `None` (so every ordering
/// condition is false) for null on either side and for mismatched types.
fn compare(value: &RecordValue, q: &QueryValue) -> Option<Ordering> {
    match (value, q) {
        (RecordValue::Str(a), QueryValue::Str(b)) => Some(a.as_str().cmp(b.as_str())),
        (RecordValue::Date(a), QueryValue::Date(b)) => Some(a.cmp(b)),
        (RecordValue::Json(Value::String(a)), QueryValue::Str(b)) => Some(a.as_str().cmp(b)),
        (RecordValue::Json(Value::Number(a)), QueryValue::Number(b)) => a.as_f64()?.partial_cmp(b),
        (RecordValue::Json(Value::Bool(a)), QueryValue::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

/// Python `fnmatch.fnmatchcase`: `*` any run, `?` one character, `[seq]` / `[!seq]` a set
/// with `a-z` ranges; an unclosed `[` is a literal.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point for the last `*` (linear for typical input).
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some('?') => Some(p + 1),
            Some('[') => match class_matches(&pattern, p, text[t]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                None => (text[t] == '[').then_some(p + 1),
            },
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Matches `c` against the `[...]` class starting at `pattern[start]`; returns whether it
/// matched and the index after the class, or `None` if the class is unclosed.
fn class_matches(pattern: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negated = matches!(pattern.get(i), Some('!'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &item = pattern.get(i)?;
        if item == ']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|&end| end != ']') {
            let end = pattern[i + 2];
            matched |= item <= c && c <= end;
            i += 3;
        } else {
            matched |= item == c;
            i += 1;
        }
    }
}

impl Query {
    /// The empty query, which matches every record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The query that matches every record (same as [`Query::new`], reads better at a call).
    pub fn all() -> Self {
        Self::default()
    }

    /// Adds a clause: `key` must also satisfy `condition`.
    #[must_use]
    pub fn and(mut self, key: RecordKey, condition: Condition) -> Self {
        self.clauses.push((key, condition));
        self
    }

    /// The records whose `msg_id` is one of `ids` (`{"msg_id": {"$in": ids}}`).
    pub fn msg_ids<I, S>(ids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids = ids
            .into_iter()
            .map(|id| QueryValue::Str(id.into()))
            .collect();
        Self::new().and(RecordKey::MsgId, Condition::In(ids))
    }

    /// Parses a MongoDB-style query as a `db_request` carries it:
    /// `{"key": value | {"$op": operand, ...}, ...}`.
    ///
    /// A plain value means `$eq`; several operators on one key, and all keys, are ANDed.
    /// Operators: `$eq $ne $lt $lte $gt $gte` (one value), `$in $nin` (a list), `$exists`
    /// (a boolean), `$glob` (a shell pattern). ISO date strings become dates.
    ///
    /// # Errors
    /// [`Error::InvalidQuery`], naming the culprit, for a query that is not an object, an
    /// unknown key, an unknown or unsupported operator (`$all`, `$mod`), a bad operand, or
    /// an object value that is not an operator object (document equality is not supported).
    pub fn from_json(query: &Value) -> Result<Query> {
        let Value::Object(map) = query else {
            return Err(Error::invalid_query(format!(
                "a query must be a JSON object, got {query}"
            )));
        };
        let mut out = Query::new();
        for (name, value) in map {
            let key: RecordKey = name.parse()?;
            match value {
                Value::Object(ops) => {
                    if ops.is_empty() {
                        return Err(Error::invalid_query(format!(
                            "key {name:?} has an empty operator object"
                        )));
                    }
                    for (op, operand) in ops {
                        if !op.starts_with('$') {
                            return Err(Error::invalid_query(format!(
                                "key {name:?}: expected operators such as \"$eq\", got {op:?} \
                                 (matching a whole object is not supported)"
                            )));
                        }
                        out.clauses.push((key, Condition::parse(key, op, operand)?));
                    }
                }
                _ => {
                    let q = QueryValue::parse(value).map_err(|reason| {
                        Error::invalid_query(format!("key {name:?}: {reason}"))
                    })?;
                    out.clauses.push((key, Condition::Eq(q)));
                }
            }
        }
        Ok(out)
    }

    /// The query as a MongoDB-style object; conditions on one key are merged into one
    /// operator object (a repeated operator on one key keeps the last).
    pub fn to_json(&self) -> Value {
        let mut map = JsonMap::new();
        for (key, condition) in &self.clauses {
            let entry = map
                .entry(key.as_str().to_owned())
                .or_insert_with(|| Value::Object(JsonMap::new()));
            if let (Value::Object(ops), Value::Object(op)) = (entry, condition.to_json()) {
                ops.extend(op);
            }
        }
        Value::Object(map)
    }

    /// Whether `record` satisfies every clause.
    ///
    /// These are the intended semantics, which differ from ipyparallel's DictDB (spec §8.2)
    /// in two ways: there `$gt` is implemented with reversed arguments and behaves like
    /// `$lt`, and every plain-equality clause compares against the value of the query's
    /// *last* key (a late-binding closure bug), so `{"engine_uuid": X, "completed":
    /// {"$ne": null}}` never matches there. Here `$gt` means greater-than and each clause
    /// compares against its own value. Ordering against `null` or a value of another type
    /// is false; equality with `null` means the field is unset; `$ne: null` means it is set.
    pub fn matches(&self, record: &TaskRecord) -> bool {
        self.clauses
            .iter()
            .all(|(key, condition)| condition.matches(&record.value(*key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn date(text: &str) -> Timestamp {
        date::parse(text).unwrap()
    }

    fn invalid(query: Value) -> String {
        match Query::from_json(&query) {
            Err(err @ Error::InvalidQuery { .. }) => err.to_string(),
            other => panic!("expected InvalidQuery for {query}, got {other:?}"),
        }
    }

    fn record() -> TaskRecord {
        let mut rec = TaskRecord::new("m1");
        rec.engine_uuid = Some("engine-b".into());
        rec.submitted = Some(date("2026-01-01T00:00:10Z"));
        rec.completed = Some(date("2026-01-01T00:00:20Z"));
        rec.stdout = "hello world".into();
        rec
    }

    fn matches(query: Value) -> bool {
        Query::from_json(&query).unwrap().matches(&record())
    }

    #[test]
    fn parses_plain_values_and_operators() {
        let q = Query::from_json(&json!({
            "engine_uuid": "e",
            "submitted": {"$gte": "2026-01-01T00:00:00Z", "$lt": "2026-01-02T00:00:00Z"},
            "msg_id": {"$in": ["a", null]},
            "label": {"$exists": false},
        }))
        .unwrap();
        assert_eq!(
            q,
            Query::new()
                .and(
                    RecordKey::EngineUuid,
                    Condition::Eq(QueryValue::Str("e".into()))
                )
                .and(
                    RecordKey::Submitted,
                    Condition::Gte(QueryValue::Date(date("2026-01-01T00:00:00Z")))
                )
                .and(
                    RecordKey::Submitted,
                    Condition::Lt(QueryValue::Date(date("2026-01-02T00:00:00Z")))
                )
                .and(
                    RecordKey::MsgId,
                    Condition::In(vec![QueryValue::Str("a".into()), QueryValue::Null])
                )
                .and(RecordKey::Label, Condition::Exists(false))
        );
        assert_eq!(Query::from_json(&q.to_json()).unwrap(), q);
    }

    #[test]
    fn errors_name_the_bad_key_or_operator() {
        assert!(invalid(json!({"bogus": 1})).contains("bogus"));
        assert!(invalid(json!({"msg_id": {"$regex": "x"}})).contains("$regex"));
        assert!(invalid(json!({"msg_id": {"$all": ["x"]}})).contains("$all is not supported"));
        assert!(invalid(json!({"msg_id": {"$in": "x"}})).contains("$in"));
        assert!(invalid(json!({"msg_id": {"$exists": 1}})).contains("$exists"));
        assert!(invalid(json!({"header": {"msg_type": "x"}})).contains("header"));
        assert!(invalid(json!({"header": {}})).contains("header"));
        assert!(invalid(json!({"msg_id": [1]})).contains("msg_id"));
        assert!(invalid(json!(["msg_id"])).contains("object"));
        assert!(invalid(json!(null)).contains("object"));
    }

    #[test]
    fn gt_means_greater_than_unlike_upstream() {
        assert!(matches(
            json!({"submitted": {"$gt": "2026-01-01T00:00:05Z"}})
        ));
        assert!(!matches(
            json!({"submitted": {"$gt": "2026-01-01T00:00:15Z"}})
        ));
        assert!(matches(json!({"engine_uuid": {"$gt": "engine-a"}})));
        assert!(!matches(json!({"engine_uuid": {"$gt": "engine-b"}})));
        assert!(matches(json!({"engine_uuid": {"$gte": "engine-b"}})));
    }

    #[test]
    fn plain_equality_uses_its_own_value_unlike_upstream() {
        // Upstream never matches this (the equality reads the last key's operand).
        assert!(matches(
            json!({"engine_uuid": "engine-b", "completed": {"$ne": null}})
        ));
        assert!(!matches(
            json!({"engine_uuid": "engine-a", "completed": {"$ne": null}})
        ));
    }

    #[test]
    fn null_semantics() {
        assert!(matches(json!({"label": null})));
        assert!(!matches(json!({"engine_uuid": null})));
        assert!(matches(json!({"engine_uuid": {"$ne": null}})));
        assert!(!matches(json!({"label": {"$ne": null}})));
        assert!(matches(json!({"label": {"$ne": "x"}})));
        assert!(!matches(json!({"label": {"$lt": "x"}})));
        assert!(!matches(json!({"label": {"$gte": null}})));
        assert!(matches(json!({"label": {"$in": ["x", null]}})));
        assert!(!matches(json!({"label": {"$nin": [null]}})));
        assert!(matches(json!({"label": {"$exists": false}})));
        assert!(matches(json!({"stdout": {"$exists": true}})));
    }

    #[test]
    fn mismatched_types_never_order() {
        assert!(!matches(json!({"submitted": {"$lt": "zzz"}})));
        assert!(!matches(json!({"engine_uuid": {"$lt": 5}})));
        assert!(!matches(
            json!({"engine_uuid": {"$gt": "2020-01-01T00:00:00Z"}})
        ));
        assert!(!matches(json!({"engine_uuid": true})));
    }

    #[test]
    fn glob_is_fnmatch() {
        assert!(matches(json!({"stdout": {"$glob": "hello*"}})));
        assert!(matches(json!({"stdout": {"$glob": "*o w*"}})));
        assert!(matches(json!({"stdout": {"$glob": "h?llo [vw]orld"}})));
        assert!(matches(json!({"stdout": {"$glob": "[a-h]ello*"}})));
        assert!(!matches(json!({"stdout": {"$glob": "[!h]ello*"}})));
        assert!(!matches(json!({"stdout": {"$glob": "hello"}})));
        assert!(!matches(json!({"label": {"$glob": "*"}})));
        assert!(glob_matches("a[b", "a[b"));
        assert!(glob_matches("[]]x", "]x"));
        assert!(glob_matches("**", ""));
        assert!(!glob_matches("a*b*c", "abxbx"));
    }

    #[test]
    fn msg_ids_builder() {
        let q = Query::msg_ids(["m0", "m1"]);
        assert!(q.matches(&record()));
        assert!(!Query::msg_ids(["m0"]).matches(&record()));
        assert!(Query::all().matches(&record()));
    }
}
