//! [`JsonObject`]: a JSON object of a record (a header, metadata, content), kept as the Hub
//! received it and parsed only when someone reads it.
//!
//! Recording a task used to parse its request and reply into maps (dozens of small
//! allocations per task, freed in bulk when a store committed them) only for a store like
//! SQLite to serialize them back into the same text. A document made from received text
//! keeps that text (one allocation) and parses it on first read; a store that writes JSON
//! takes [`JsonObject::json_text`] as it is.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

use crate::error::Error;
use crate::protocol::JsonMap;

/// A JSON object: the received text, the parsed map, or both (once the text was read).
///
/// Reading it as a map ([`Deref`], [`JsonObject::map`]) parses the text once and keeps the
/// map. Equality compares the objects, never the spelling of the text.
#[derive(Clone)]
pub struct JsonObject {
    /// The object's JSON text, validated when the document was made; `None` for a document
    /// made from a map (or changed through [`JsonObject::map_mut`]).
    text: Option<Bytes>,
    /// The parsed object, filled on first read (boxed: records and updates hold eight of
    /// these, and a small record is cheaper to queue, move and free).
    map: OnceLock<Box<JsonMap>>,
}

impl JsonObject {
    /// A document of `map`.
    pub fn from_map(map: JsonMap) -> Self {
        Self {
            text: None,
            map: OnceLock::from(Box::new(map)),
        }
    }

    /// A document of the JSON object in `text`, checked now (without building it) and
    /// parsed on first read. `text` is kept as given: pass a copy, not a slice of a larger
    /// buffer the record should not keep alive.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when `text` is not one JSON object in UTF-8.
    pub fn from_json(text: Bytes) -> crate::Result<Self> {
        check_object(&text)?;
        Ok(Self {
            text: Some(text),
            map: OnceLock::new(),
        })
    }

    /// A document of `text` that the caller has already parsed in full as one JSON value
    /// (the Hub reads a header's fields that way): only what such a parse leaves unchecked
    /// is checked here, that the bytes are UTF-8 throughout (serde_json does not look
    /// inside strings it skips) and that the value is an object. Saves the second pass
    /// over the text that [`JsonObject::from_json`] makes.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when `text` is not UTF-8 or not an object.
    pub(crate) fn from_parsed_json(text: Bytes) -> crate::Result<Self> {
        check_utf8_object(&text)?;
        Ok(Self {
            text: Some(text),
            map: OnceLock::new(),
        })
    }

    /// The object as a map, parsed on first call.
    pub fn map(&self) -> &JsonMap {
        self.map.get_or_init(|| {
            Box::new(match &self.text {
                // Checked when made: a parse failure here cannot happen; an empty map is
                // the safe answer if it somehow did.
                Some(text) => serde_json::from_slice(text).unwrap_or_default(),
                None => JsonMap::new(),
            })
        })
    }

    /// The object as a map to change; the received text (if any) is dropped, as it no
    /// longer matches.
    pub fn map_mut(&mut self) -> &mut JsonMap {
        self.map();
        self.text = None;
        self.map.get_mut().expect("map() filled the cell")
    }

    /// The object as a map, moved out (parsed if it was never read).
    pub fn into_map(mut self) -> JsonMap {
        self.map();
        self.map.take().map(|map| *map).unwrap_or_default()
    }

    /// The text the document was made from, when it was made from text and not changed
    /// since (a store writing JSON text can write it as it is).
    pub fn received_text(&self) -> Option<&str> {
        self.text.as_ref().and_then(|t| std::str::from_utf8(t).ok())
    }

    /// The object's JSON text: the received text as it came, or the map serialized.
    pub fn json_text(&self) -> std::borrow::Cow<'_, str> {
        if let Some(text) = self.received_text() {
            return std::borrow::Cow::Borrowed(text);
        }
        std::borrow::Cow::Owned(serde_json::to_string(self.map()).unwrap_or_default())
    }

    /// The object as a JSON value (a copy).
    pub fn to_value(&self) -> Value {
        Value::Object(self.map().clone())
    }
}

/// Checks that `text` is exactly one JSON object in UTF-8, without building it.
fn check_object(text: &[u8]) -> crate::Result<()> {
    std::str::from_utf8(text).map_err(|_| Error::invalid_message("JSON text is not UTF-8"))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(text)
        .map_err(|err| Error::invalid_message(format!("bad JSON object: {err}")))?;
    check_starts_as_object(text)
}

/// What [`check_object`] checks beyond the JSON syntax, for text already parsed.
fn check_utf8_object(text: &[u8]) -> crate::Result<()> {
    std::str::from_utf8(text).map_err(|_| Error::invalid_message("JSON text is not UTF-8"))?;
    check_starts_as_object(text)
}

/// Whether the (valid) JSON value in `text` is an object.
fn check_starts_as_object(text: &[u8]) -> crate::Result<()> {
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::invalid_message("JSON text is not an object"));
    }
    Ok(())
}

impl Deref for JsonObject {
    type Target = JsonMap;

    fn deref(&self) -> &JsonMap {
        self.map()
    }
}

impl From<JsonMap> for JsonObject {
    fn from(map: JsonMap) -> Self {
        Self::from_map(map)
    }
}

impl From<JsonObject> for JsonMap {
    fn from(document: JsonObject) -> Self {
        document.into_map()
    }
}

impl Default for JsonObject {
    /// An empty object.
    fn default() -> Self {
        Self::from_map(JsonMap::new())
    }
}

impl serde::Serialize for JsonObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(serializer)
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        match (&self.text, &other.text) {
            (Some(a), Some(b)) if a == b => true,
            _ => self.map() == other.map(),
        }
    }
}

impl PartialEq<JsonMap> for JsonObject {
    fn eq(&self, other: &JsonMap) -> bool {
        self.map() == other
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.map(), f)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> JsonMap {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn received_text_is_kept_as_it_came_and_read_as_a_map() {
        let text = Bytes::from_static(br#"{"b": 1, "a": [true, null]}"#);
        let document = JsonObject::from_json(text).unwrap();
        assert_eq!(document.json_text(), r#"{"b": 1, "a": [true, null]}"#);
        assert_eq!(document.get("b"), Some(&json!(1)));
        assert_eq!(document, object(json!({"a": [true, null], "b": 1})));
    }

    #[test]
    fn a_map_document_serializes_its_map() {
        let document = JsonObject::from(object(json!({"x": "y"})));
        assert_eq!(document.json_text(), r#"{"x":"y"}"#);
    }

    #[test]
    fn text_that_is_not_one_object_is_refused() {
        for bad in [
            &b"[1, 2]"[..],
            b"{\"a\": 1",
            b"{} {}",
            b"\"text\"",
            b"{\"a\": \xff}",
        ] {
            assert!(
                JsonObject::from_json(Bytes::copy_from_slice(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn changing_the_map_drops_the_received_text() {
        let mut document = JsonObject::from_json(Bytes::from_static(br#"{"a": 1}"#)).unwrap();
        document.map_mut().insert("b".into(), json!(2));
        assert_eq!(document.json_text(), r#"{"a":1,"b":2}"#);
        assert_eq!(document.into_map(), object(json!({"a": 1, "b": 2})));
    }

    #[test]
    fn an_object_stays_small() {
        // Records and updates hold eight; they are queued and moved once per task.
        assert!(std::mem::size_of::<JsonObject>() <= 48);
    }

    #[test]
    fn documents_compare_by_object_not_by_spelling() {
        let spaced = JsonObject::from_json(Bytes::from_static(br#"{ "a" : 1 }"#)).unwrap();
        let tight = JsonObject::from_json(Bytes::from_static(br#"{"a":1}"#)).unwrap();
        assert_eq!(spaced, tight);
        assert_ne!(spaced, JsonObject::from(object(json!({"a": 2}))));
    }
}
