//! The Jupyter v5 message as ipyparallel uses it, in parsed and in wire form.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::date::{self, Timestamp};
use crate::error::{Error, Result};

/// The frame that separates routing identities from the signed message parts.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// The protocol version we write into every header (jupyter_client 8.x).
pub const PROTOCOL_VERSION: &str = "5.4";

/// A JSON object, as header, parent header, metadata and content are.
pub type JsonMap = Map<String, Value>;

/// A message header. Keys other than the six standard ones are kept in `extra`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Unique id of this message.
    pub msg_id: String,
    /// What kind of message this is, e.g. `apply_request`.
    pub msg_type: String,
    /// The sender's user name (never checked).
    #[serde(default)]
    pub username: String,
    /// The sender's session id; for engines, the engine uuid.
    #[serde(default)]
    pub session: String,
    /// The send time as written by the sender (see [`Header::date`]).
    #[serde(default)]
    pub date: String,
    /// The protocol version, `5.x`.
    #[serde(default)]
    pub version: String,
    /// Any other keys the sender wrote.
    #[serde(flatten)]
    pub extra: JsonMap,
}

impl Header {
    /// The send time, if the sender wrote a parsable one.
    pub fn date(&self) -> Option<Timestamp> {
        date::parse(&self.date)
    }

    /// The header as a JSON object, for parent headers and task records.
    pub fn to_map(&self) -> JsonMap {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => JsonMap::new(),
        }
    }
}

/// A parsed message: routing identities, the four signed dicts and the raw buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// Routing frames before the delimiter (peer ids on ROUTER sockets, topics on PUB).
    pub idents: Vec<Bytes>,
    /// The header.
    pub header: Header,
    /// The header of the message this one answers; empty when it answers none.
    pub parent_header: JsonMap,
    /// Metadata (ipyparallel keeps task flags and engine info here).
    pub metadata: JsonMap,
    /// The content; an object for every message ipyparallel sends.
    pub content: Value,
    /// Extra binary frames, unsigned and never parsed.
    pub buffers: Vec<Bytes>,
}

impl Message {
    /// The `msg_id` of the parent header, if there is one.
    pub fn parent_msg_id(&self) -> Option<&str> {
        self.parent_header.get("msg_id").and_then(Value::as_str)
    }

    /// The content as an object (empty if the content is not an object).
    pub fn content_map(&self) -> &JsonMap {
        static EMPTY: std::sync::OnceLock<JsonMap> = std::sync::OnceLock::new();
        self.content
            .as_object()
            .unwrap_or_else(|| EMPTY.get_or_init(JsonMap::new))
    }
}

/// A message split at the delimiter but not parsed: what relays and schedulers move around.
///
/// Keeping the original frames lets a relay forward a message without re-signing it, and
/// lets a verifier check the signature over the exact bytes that were signed.
#[derive(Clone, Debug, PartialEq)]
pub struct WireMessage {
    /// Routing frames before the delimiter.
    pub idents: Vec<Bytes>,
    /// The hex HMAC frame (empty when the session has no key).
    pub signature: Bytes,
    /// Packed header.
    pub header: Bytes,
    /// Packed parent header.
    pub parent_header: Bytes,
    /// Packed metadata.
    pub metadata: Bytes,
    /// Packed content.
    pub content: Bytes,
    /// Raw buffers.
    pub buffers: Vec<Bytes>,
}

impl WireMessage {
    /// Splits a multipart message at the first delimiter frame.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when there is no delimiter or fewer than five frames follow it.
    pub fn split(mut frames: Vec<Bytes>) -> Result<Self> {
        let delimiter = frames
            .iter()
            .position(|frame| frame.as_ref() == DELIMITER)
            .ok_or_else(|| Error::invalid_message("no <IDS|MSG> delimiter frame"))?;
        if frames.len() < delimiter + 6 {
            return Err(Error::invalid_message(format!(
                "expected signature and four message frames after the delimiter, found {}",
                frames.len() - delimiter - 1
            )));
        }
        let buffers = frames.split_off(delimiter + 6);
        let mut signed = frames.split_off(delimiter + 1).into_iter();
        frames.truncate(delimiter);
        let mut next = || signed.next().unwrap_or_default();
        Ok(Self {
            idents: frames,
            signature: next(),
            header: next(),
            parent_header: next(),
            metadata: next(),
            content: next(),
            buffers,
        })
    }

    /// Joins the parts back into frames: identities, delimiter, signature, dicts, buffers.
    pub fn into_frames(self) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(self.idents.len() + 6 + self.buffers.len());
        frames.extend(self.idents);
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(self.signature);
        frames.push(self.header);
        frames.push(self.parent_header);
        frames.push(self.metadata);
        frames.push(self.content);
        frames.extend(self.buffers);
        frames
    }

    /// Parses the header only: what schedulers need to route a message.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when the header is not a JSON object with `msg_id` and
    /// `msg_type` strings.
    pub fn parse_header(&self) -> Result<Header> {
        parse_json(&self.header, "header")
    }

    /// Parses the metadata frame.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when it is not a JSON object.
    pub fn parse_metadata(&self) -> Result<JsonMap> {
        parse_json(&self.metadata, "metadata")
    }

    /// Checks that the four packed parts are JSON objects, without building them.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] naming the first part that is not a JSON object.
    pub fn check_json(&self) -> Result<()> {
        for (frame, what) in [
            (&self.header, "header"),
            (&self.parent_header, "parent header"),
            (&self.metadata, "metadata"),
            (&self.content, "content"),
        ] {
            parse_json::<serde::de::IgnoredAny>(frame, what)?;
            if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(Error::invalid_message(format!(
                    "{what} is not a JSON object"
                )));
            }
        }
        Ok(())
    }

    /// Parses every part into a [`Message`], keeping identities and buffers as they are.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when a part is not valid JSON of the right shape.
    pub fn parse(self) -> Result<Message> {
        Ok(Message {
            header: self.parse_header()?,
            parent_header: parse_json(&self.parent_header, "parent header")?,
            metadata: self.parse_metadata()?,
            content: parse_json(&self.content, "content")?,
            idents: self.idents,
            buffers: self.buffers,
        })
    }
}

/// Reads only the `msg_id` of a packed header (or parent header): the cheap parse the
/// routing paths need.
pub fn msg_id_of(packed: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct MsgIdOnly {
        msg_id: String,
    }
    serde_json::from_slice::<MsgIdOnly>(packed)
        .ok()
        .map(|header| header.msg_id)
}

fn parse_json<T: serde::de::DeserializeOwned>(frame: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(frame)
        .map_err(|err| Error::invalid_message(format!("bad {what}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[test]
    fn split_finds_identities_and_buffers() {
        let wire = WireMessage::split(frames(&[
            b"peer", DELIMITER, b"sig", b"{}", b"{}", b"{}", b"{}", b"buf1", b"buf2",
        ]))
        .unwrap();
        assert_eq!(wire.idents, frames(&[b"peer"]));
        assert_eq!(wire.signature.as_ref(), b"sig");
        assert_eq!(wire.buffers, frames(&[b"buf1", b"buf2"]));
        assert_eq!(wire.into_frames().len(), 9);
    }

    #[test]
    fn split_rejects_short_and_undelimited_messages() {
        assert!(WireMessage::split(frames(&[b"a", b"b"])).is_err());
        assert!(WireMessage::split(frames(&[DELIMITER, b"sig", b"{}", b"{}"])).is_err());
    }

    #[test]
    fn header_keeps_unknown_keys() {
        let header: Header =
            serde_json::from_str(r#"{"msg_id":"a","msg_type":"t","subshell_id":null}"#).unwrap();
        assert_eq!(header.msg_id, "a");
        assert!(header.to_map().contains_key("subshell_id"));
    }

    #[test]
    fn parse_rejects_bad_json() {
        let wire =
            WireMessage::split(frames(&[DELIMITER, b"", b"{", b"{}", b"{}", b"{}"])).unwrap();
        assert!(wire.parse().is_err());
    }
}
