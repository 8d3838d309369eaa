//! Rust calls: our extension of `apply_request` for engines that run registered Rust
//! functions.
//!
//! ipyparallel puts a pickled function and arguments into the buffers of an
//! `apply_request` whose content is `{}`. A Rust call instead names a registered function
//! in the content and carries its arguments as [`Payload`]s:
//!
//! ```text
//! content  {"rust": {"function": "fib", "names": [], "formats": ["bincode"], "frames": [1]}}
//! buffers  [<argument frames…>]
//! ```
//!
//! A *map* call (`"map": true`) applies the function to each argument separately and
//! returns one payload per argument, in order: that is how a chunk of a `map` travels, so
//! a function registered for one item serves `map` unchanged.
//!
//! A reply's content carries `{"status": "ok", "rust": {"formats": […], "frames": […]}}` and
//! its buffers the returned payloads. `names` is used by the namespace built-ins
//! ([`PUSH`], [`PULL`]). A real ipyparallel engine answers a Rust call with an error (it
//! cannot unpickle it), and our Rust engines answer pickled calls with an error that says so.

use bytes::Bytes;
use serde_json::{json, Value};

use super::JsonMap;
use crate::error::{Error, Result};
use crate::serialize::Payload;

/// The content key that marks a Rust call or a Rust reply.
pub const RUST_KEY: &str = "rust";

/// Built-in: store each argument in the engine's namespace under the matching name.
pub const PUSH: &str = "ipp.push";
/// Built-in: return the values stored under the given names.
pub const PULL: &str = "ipp.pull";
/// Built-in: return nothing (for latency measurements and liveness checks).
pub const NOOP: &str = "ipp.noop";

/// A call of a registered Rust function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RustCall {
    /// The registered name.
    pub function: String,
    /// Namespace names (for [`PUSH`] and [`PULL`]).
    pub names: Vec<String>,
    /// The encoded arguments.
    pub args: Vec<Payload>,
    /// Apply the function to each argument separately (a chunk of a `map`).
    pub map: bool,
}

/// Writes payloads as `formats` + `frames` (counts) and the concatenated buffers.
fn write_payloads(payloads: &[Payload], into: &mut JsonMap) -> Vec<Bytes> {
    let formats: Vec<&str> = payloads.iter().map(|p| p.format.as_str()).collect();
    let counts: Vec<usize> = payloads.iter().map(|p| p.frames.len()).collect();
    into.insert("formats".into(), json!(formats));
    into.insert("frames".into(), json!(counts));
    payloads
        .iter()
        .flat_map(|p| p.frames.iter().cloned())
        .collect()
}

/// Reads payloads written by [`write_payloads`].
fn read_payloads(section: &JsonMap, buffers: &[Bytes]) -> Result<Vec<Payload>> {
    let strings = |key: &str| -> Vec<String> {
        section
            .get(key)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let formats = strings("formats");
    let counts: Vec<usize> = section
        .get("frames")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    if formats.len() != counts.len() {
        return Err(Error::invalid_message(
            "rust payload list: `formats` and `frames` differ in length",
        ));
    }
    let total: usize = counts.iter().sum();
    if total != buffers.len() {
        return Err(Error::invalid_message(format!(
            "rust payload list names {total} frames but the message has {}",
            buffers.len()
        )));
    }
    let mut rest = buffers;
    let mut payloads = Vec::with_capacity(formats.len());
    for (format, count) in formats.into_iter().zip(counts) {
        let (frames, tail) = rest.split_at(count);
        rest = tail;
        payloads.push(Payload {
            format,
            frames: frames.to_vec(),
        });
    }
    Ok(payloads)
}

impl RustCall {
    /// A call of `function` with the given arguments.
    pub fn new(function: impl Into<String>, args: Vec<Payload>) -> Self {
        Self {
            function: function.into(),
            names: Vec::new(),
            args,
            map: false,
        }
    }

    /// A map call: `function` applied to each of `items` separately.
    pub fn map(function: impl Into<String>, items: Vec<Payload>) -> Self {
        Self {
            map: true,
            ..Self::new(function, items)
        }
    }

    /// The `apply_request` content and buffers for this call.
    pub fn to_request(&self) -> (Value, Vec<Bytes>) {
        let mut section = JsonMap::new();
        section.insert("function".into(), json!(self.function));
        section.insert("names".into(), json!(self.names));
        if self.map {
            section.insert("map".into(), json!(true));
        }
        let buffers = write_payloads(&self.args, &mut section);
        (json!({ RUST_KEY: section }), buffers)
    }

    /// Reads a call from a request; `Ok(None)` when the request is not a Rust call (e.g. a
    /// pickled ipyparallel apply).
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] for a Rust call whose payload list does not add up.
    pub fn from_request(content: &JsonMap, buffers: &[Bytes]) -> Result<Option<Self>> {
        let Some(section) = content.get(RUST_KEY).and_then(Value::as_object) else {
            return Ok(None);
        };
        let function = section
            .get("function")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_message("rust call without a function name"))?
            .to_owned();
        let names = section
            .get("names")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Self {
            function,
            names,
            args: read_payloads(section, buffers)?,
            map: section.get("map").and_then(Value::as_bool).unwrap_or(false),
        }))
    }
}

/// The content (`{"status": "ok", "rust": {...}}`) and buffers of a successful reply.
pub fn reply_content(values: &[Payload]) -> (JsonMap, Vec<Bytes>) {
    let mut section = JsonMap::new();
    let buffers = write_payloads(values, &mut section);
    let mut content = JsonMap::new();
    content.insert("status".into(), json!("ok"));
    content.insert(RUST_KEY.into(), Value::Object(section));
    (content, buffers)
}

/// Reads the returned payloads of a successful Rust reply.
///
/// # Errors
/// [`Error::InvalidMessage`] when the reply is not a Rust reply or does not add up.
pub fn read_reply(content: &JsonMap, buffers: &[Bytes]) -> Result<Vec<Payload>> {
    let section = content
        .get(RUST_KEY)
        .and_then(Value::as_object)
        .ok_or_else(|| {
            Error::invalid_message(
                "the reply is not from a Rust engine (no `rust` section); was this sent to a Python engine?",
            )
        })?;
    read_payloads(section, buffers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serialize::{Bincode, Serializer};

    #[test]
    fn a_call_round_trips_through_content_and_buffers() {
        let mut call = RustCall::new(
            "f",
            vec![
                Bincode.encode(&1u8).unwrap(),
                Payload::raw(Bytes::from_static(b"xy")),
            ],
        );
        call.names = vec!["a".into(), "b".into()];
        let (content, buffers) = call.to_request();
        let parsed = RustCall::from_request(content.as_object().unwrap(), &buffers)
            .unwrap()
            .unwrap();
        assert_eq!(parsed, call);
    }

    #[test]
    fn a_map_call_keeps_its_flag() {
        let call = RustCall::map("f", vec![Bincode.encode(&1u8).unwrap(); 3]);
        let (content, buffers) = call.to_request();
        let parsed = RustCall::from_request(content.as_object().unwrap(), &buffers)
            .unwrap()
            .unwrap();
        assert!(parsed.map);
        assert_eq!(parsed.args.len(), 3);
    }

    #[test]
    fn a_pickled_apply_is_not_a_rust_call() {
        assert_eq!(RustCall::from_request(&JsonMap::new(), &[]).unwrap(), None);
    }

    #[test]
    fn frame_counts_that_do_not_add_up_are_rejected() {
        let call = RustCall::new("f", vec![Bincode.encode(&1u8).unwrap()]);
        let (content, _) = call.to_request();
        assert!(RustCall::from_request(content.as_object().unwrap(), &[]).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let values = vec![Bincode.encode(&"hi").unwrap()];
        let (content, buffers) = reply_content(&values);
        assert_eq!(read_reply(&content, &buffers).unwrap(), values);
    }
}
