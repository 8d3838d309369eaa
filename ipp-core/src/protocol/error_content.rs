//! ipyparallel's "wrapped exception" content dict.

use serde_json::{json, Value};

use super::JsonMap;

/// Builds a controller-side error dict: `{status, traceback, ename, evalue, engine_info}`.
///
/// `evalue` is used as given; for a Python `KeyError` ipyparallel shows the repr of the
/// message, so callers pass [`key_error_value`] for those.
pub fn error_content(ename: &str, evalue: &str) -> Value {
    json!({
        "status": "error",
        "traceback": [
            "Traceback (most recent call last):\n",
            format!("{ename}: {evalue}\n"),
        ],
        "ename": ename,
        "evalue": evalue,
        "engine_info": {},
    })
}

/// Python's `str(KeyError(msg))`: the repr of `msg`, single-quoted unless it contains `'`.
pub fn key_error_value(message: &str) -> String {
    if message.contains('\'') && !message.contains('"') {
        format!("\"{message}\"")
    } else {
        format!("'{}'", message.replace('\'', "\\'"))
    }
}

/// An error raised on an engine (or made by the controller), as clients see it: ipyparallel's
/// `RemoteError` fields.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{ename}: {evalue}")]
pub struct RemoteError {
    /// The exception class name, e.g. `ZeroDivisionError`, `EngineError`, `TaskTimeout`.
    pub ename: String,
    /// The exception's message.
    pub evalue: String,
    /// Traceback lines.
    pub traceback: Vec<String>,
    /// `engine_uuid`, `engine_id` and `method` where an engine raised it; empty otherwise.
    pub engine_info: JsonMap,
}

impl RemoteError {
    /// An error with no traceback or engine info.
    pub fn new(ename: impl Into<String>, evalue: impl Into<String>) -> Self {
        Self {
            ename: ename.into(),
            evalue: evalue.into(),
            traceback: Vec::new(),
            engine_info: JsonMap::new(),
        }
    }

    /// Reads an error dict (`{status: "error", ename, evalue, traceback, engine_info}`).
    /// Missing fields are left empty, so any error reply yields a `RemoteError`.
    pub fn from_content(content: &JsonMap) -> Self {
        let text = |key: &str| {
            content
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            ename: text("ename"),
            evalue: text("evalue"),
            traceback: content
                .get("traceback")
                .and_then(Value::as_array)
                .map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            engine_info: content
                .get("engine_info")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The error dict for a reply's content.
    pub fn to_content(&self) -> JsonMap {
        let mut map = JsonMap::new();
        map.insert("status".into(), json!("error"));
        map.insert("traceback".into(), json!(self.traceback));
        map.insert("ename".into(), json!(self.ename));
        map.insert("evalue".into(), json!(self.evalue));
        map.insert(
            "engine_info".into(),
            Value::Object(self.engine_info.clone()),
        );
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_errors_quote_like_python() {
        assert_eq!(
            key_error_value("No such message: x"),
            "'No such message: x'"
        );
        assert_eq!(key_error_value("uuid 'x' in use"), "\"uuid 'x' in use\"");
    }

    #[test]
    fn remote_errors_round_trip_through_error_dicts() {
        let content = error_content("ZeroDivisionError", "division by zero");
        let error = RemoteError::from_content(content.as_object().unwrap());
        assert_eq!(error.ename, "ZeroDivisionError");
        assert_eq!(RemoteError::from_content(&error.to_content()), error);
    }

    #[test]
    fn error_dict_has_every_key() {
        let value = error_content("KeyError", "'x'");
        for key in ["status", "traceback", "ename", "evalue", "engine_info"] {
            assert!(value.get(key).is_some(), "{key}");
        }
    }
}
