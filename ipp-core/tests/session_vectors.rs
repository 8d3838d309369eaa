//! Signing and date vectors produced by the real `jupyter_client.Session`.
//!
//! The fixture `tests/fixtures/session/vectors.json` is committed; the script beside it,
//! `make_vectors.py`, regenerates it with the test virtualenv's jupyter_client.

use ipp_core::protocol::{date, SigningKey};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/session/vectors.json"
    );
    let text = std::fs::read_to_string(path).expect("vectors.json is committed beside this test");
    serde_json::from_str(&text).expect("vectors.json is valid JSON")
}

fn list<'a>(vectors: &'a Value, name: &str) -> &'a Vec<Value> {
    let list = vectors[name]
        .as_array()
        .unwrap_or_else(|| panic!("`{name}` is a list"));
    assert!(!list.is_empty(), "`{name}` has vectors");
    list
}

fn text<'a>(vector: &'a Value, field: &str) -> &'a str {
    vector[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is a string in {vector}"))
}

#[test]
fn signatures_match_jupyter_client() {
    let vectors = vectors();
    for vector in list(&vectors, "signing") {
        let key = SigningKey::new(text(vector, "key").as_bytes());
        let parts =
            ["header", "parent_header", "metadata", "content"].map(|f| text(vector, f).as_bytes());
        let signature = key.sign(parts);
        assert_eq!(
            std::str::from_utf8(&signature).expect("hex is ASCII"),
            text(vector, "signature"),
            "signature of {vector}"
        );
        assert_eq!(key.is_enabled(), !text(vector, "key").is_empty());
    }
}

#[test]
fn the_spec_test_vector_signs_as_jupyter_client_does() {
    let key = SigningKey::new(b"3661a519-f3be1f1394f30f8e1a8db473");
    let header = br#"{"msg_id": "tap-session-0001_5493_0", "msg_type": "connection_request", "username": "tapuser", "session": "tap-session-0001", "date": "2026-11-22T17:59:19.509005Z", "version": "5.4"}"#;
    let signature = key.sign([header, b"{}", b"{}", b"{}"]);
    assert_eq!(
        &signature[..],
        b"38f6cde2ea41033f79bac39c0565101742bc563d3e3917e218dc321b58a334e4"
    );
}

#[test]
fn dates_are_formatted_as_jupyter_client_formats_them() {
    let vectors = vectors();
    for vector in list(&vectors, "format") {
        let micros = vector["unix_micros"]
            .as_i64()
            .expect("unix_micros is an integer");
        let when = chrono::DateTime::from_timestamp_micros(micros).expect("a representable date");
        assert_eq!(
            date::format(&when),
            text(vector, "formatted"),
            "format of {vector}"
        );
        assert_eq!(
            date::parse(text(vector, "formatted")),
            Some(when),
            "parse of {vector}"
        );
    }
}

#[test]
fn dates_jupyter_client_accepts_parse_to_the_same_instant() {
    let vectors = vectors();
    for vector in list(&vectors, "parse") {
        let parsed = date::parse(text(vector, "text")).unwrap_or_else(|| panic!("parses {vector}"));
        assert_eq!(
            date::format(&parsed),
            text(vector, "canonical"),
            "canonical form of {vector}"
        );
    }
}

#[test]
fn strings_jupyter_client_does_not_take_for_dates_are_not_dates() {
    let vectors = vectors();
    for value in list(&vectors, "not_dates") {
        let text = value.as_str().expect("a string");
        assert_eq!(date::parse(text), None, "{text:?} is not a date");
    }
}
