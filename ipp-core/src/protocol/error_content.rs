//! ipyparallel's "wrapped exception" content dict.

use serde_json::{json, Value};

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
    fn error_dict_has_every_key() {
        let value = error_content("KeyError", "'x'");
        for key in ["status", "traceback", "ename", "evalue", "engine_info"] {
            assert!(value.get(key).is_some(), "{key}");
        }
    }
}
