//! Signing, verifying and building messages, as `jupyter_client.Session` does.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore};
use serde_json::Value;
use sha2::Sha256;

use super::date;
use super::message::{Header, JsonMap, Message, WireMessage, DELIMITER, PROTOCOL_VERSION};
use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// How many signatures a session remembers to reject replays (jupyter_client's value).
pub const DIGEST_HISTORY_SIZE: usize = 65_536;

/// The HMAC-SHA256 key of a cluster: the raw bytes of the connection file's `key` string.
///
/// An empty key disables signing (the signature frame is empty and nothing is checked), as
/// in jupyter_client.
#[derive(Clone)]
pub struct SigningKey {
    mac: Option<HmacSha256>,
}

impl SigningKey {
    /// Builds a key from the connection file's `key` string.
    pub fn new(key: &[u8]) -> Self {
        let mac = if key.is_empty() {
            None
        } else {
            // HMAC accepts keys of any length, so this cannot fail.
            HmacSha256::new_from_slice(key).ok()
        };
        Self { mac }
    }

    /// Whether messages are signed at all.
    pub fn is_enabled(&self) -> bool {
        self.mac.is_some()
    }

    /// The lowercase hex signature of the four packed parts.
    pub fn sign(&self, parts: [&[u8]; 4]) -> Bytes {
        match &self.mac {
            None => Bytes::new(),
            Some(mac) => {
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                Bytes::from(hex::encode(mac.finalize().into_bytes()))
            }
        }
    }

    /// Checks a signature over the exact received bytes, in constant time.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when the message is unsigned or the signature is wrong.
    pub fn verify(&self, wire: &WireMessage) -> Result<()> {
        let Some(mac) = &self.mac else {
            return Ok(());
        };
        if wire.signature.is_empty() {
            return Err(Error::invalid_message("unsigned message"));
        }
        let expected = hex::decode(&wire.signature)
            .map_err(|_| Error::invalid_message("signature is not hex"))?;
        let mut mac = mac.clone();
        for part in [
            &wire.header,
            &wire.parent_header,
            &wire.metadata,
            &wire.content,
        ] {
            mac.update(part);
        }
        mac.verify_slice(&expected)
            .map_err(|_| Error::invalid_message("invalid signature"))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_enabled() {
            "<redacted>"
        } else {
            "<none>"
        };
        f.debug_struct("SigningKey").field("key", &state).finish()
    }
}

/// A remembered signature. Signatures are copied out of the received frame: a `Bytes`
/// clone would keep the whole receive buffer it was sliced from alive (kilobytes per
/// message, for as long as the signature is remembered).
///
/// An HMAC-SHA256 hex signature (every signature a keyed session accepts) is kept as its
/// first 128 bits: 16 bytes inline, no allocation, a small table. Two different messages
/// share them with probability 2⁻¹²⁸ per pair (and nobody without the key can make them
/// share), while a replay, byte for byte the same, always matches.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Signature {
    Sha256Prefix(u128),
    Other(Box<[u8]>),
}

impl Signature {
    fn new(signature: &[u8]) -> Self {
        // Lowercase hex only, as `SigningKey::sign` writes it: "AB" and "ab" are different
        // frames and must not be taken for each other.
        let lower_hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if signature.len() == 64 && signature.iter().all(lower_hex) {
            let nibble = |b: u8| {
                u128::from(if b.is_ascii_digit() {
                    b - b'0'
                } else {
                    b - b'a' + 10
                })
            };
            let prefix = signature[..32]
                .iter()
                .fold(0u128, |prefix, &b| (prefix << 4) | nibble(b));
            return Self::Sha256Prefix(prefix);
        }
        Self::Other(signature.into())
    }
}

/// Hashes remembered signatures without SipHash: they are HMAC outputs of messages that
/// passed verification, so nobody without the key can choose them (no collision flooding),
/// and their bits are already uniform. A `u128` prefix is folded to 64 bits; other bytes
/// (only in unusual setups) go through FNV-1a.
#[derive(Clone, Copy, Debug, Default)]
struct SignatureHasher(u64);

impl std::hash::Hasher for SignatureHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = self.0 ^ 0xcbf2_9ce4_8422_2325;
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
        self.0 = hash;
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation intended: both halves are uniform; mix them.
        self.0 ^= (value as u64) ^ ((value >> 64) as u64).rotate_left(29);
    }
}

/// The signatures a session has accepted, to reject replayed messages.
#[derive(Debug, Default)]
struct DigestHistory {
    seen: HashSet<Signature, std::hash::BuildHasherDefault<SignatureHasher>>,
}

impl DigestHistory {
    /// Records a signature; false if it was seen before.
    fn insert(&mut self, signature: &[u8]) -> bool {
        if !self.seen.insert(Signature::new(signature)) {
            return false;
        }
        if self.seen.len() > DIGEST_HISTORY_SIZE {
            // As jupyter_client does: forget a random tenth, so the set stays bounded.
            // Selection sampling: each entry goes with probability (still to remove) /
            // (still to visit), which removes exactly that many, uniformly, in one pass and
            // without copying any entry.
            let mut rng = rand::thread_rng();
            let mut to_remove = DIGEST_HISTORY_SIZE / 10;
            let mut to_visit = self.seen.len();
            self.seen.retain(|_| {
                let remove = rng.gen_range(0..to_visit) < to_remove;
                to_visit -= 1;
                if remove {
                    to_remove -= 1;
                }
                !remove
            });
        }
        true
    }
}

/// One peer's messaging session: its id, its key, its message counter and replay guard.
pub struct Session {
    key: SigningKey,
    id: String,
    username: String,
    msg_id_prefix: String,
    counter: AtomicU64,
    history: Mutex<DigestHistory>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A new random id in jupyter_client's `new_id()` format: `4ba47f88-a7bee9fd1a286041774b1a09`.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex = hex::encode(bytes);
    format!("{}-{}", &hex[..8], &hex[8..])
}

impl Session {
    /// A session with a fresh random id.
    pub fn new(key: SigningKey) -> Self {
        Self::with_id(key, new_id())
    }

    /// A session with a chosen id (engines use their uuid).
    pub fn with_id(key: SigningKey, id: String) -> Self {
        let msg_id_prefix = format!("{id}_{}_", std::process::id());
        Self {
            key,
            id,
            username: std::env::var("USER").unwrap_or_else(|_| "username".to_owned()),
            msg_id_prefix,
            counter: AtomicU64::new(0),
            history: Mutex::new(DigestHistory::default()),
        }
    }

    /// The session id, written into every header's `session`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key this session signs with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// A new message id, `<session>_<pid>_<counter>` as jupyter_client 8 makes them.
    pub fn new_msg_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.msg_id_prefix)
    }

    /// A fresh header of the given type, dated now.
    pub fn header(&self, msg_type: &str) -> Header {
        Header {
            msg_id: self.new_msg_id(),
            msg_type: msg_type.to_owned(),
            username: self.username.clone(),
            session: self.id.clone(),
            date: date::format(&date::now()),
            version: PROTOCOL_VERSION.to_owned(),
            extra: JsonMap::new(),
        }
    }

    /// A new message with no parent, metadata or buffers.
    pub fn message(&self, msg_type: &str, content: Value) -> Message {
        Message {
            header: self.header(msg_type),
            content,
            ..Message::default()
        }
    }

    /// A new message answering `parent`.
    pub fn reply(&self, parent: &Header, msg_type: &str, content: Value) -> Message {
        Message {
            header: self.header(msg_type),
            parent_header: parent.to_map(),
            content,
            ..Message::default()
        }
    }

    /// Packs and signs a message into frames.
    pub fn serialize(&self, msg: &Message) -> Vec<Bytes> {
        self.serialize_parts(
            msg.idents.clone(),
            to_json_bytes(&msg.header),
            to_json_bytes(&msg.parent_header),
            to_json_bytes(&msg.metadata),
            to_json_bytes(&msg.content),
            msg.buffers.clone(),
        )
    }

    /// Signs already-packed parts and joins them into frames.
    pub fn serialize_parts(
        &self,
        idents: Vec<Bytes>,
        header: Bytes,
        parent_header: Bytes,
        metadata: Bytes,
        content: Bytes,
        buffers: Vec<Bytes>,
    ) -> Vec<Bytes> {
        let signature = self
            .key
            .sign([&header, &parent_header, &metadata, &content]);
        WireMessage {
            idents,
            signature,
            header,
            parent_header,
            metadata,
            content,
            buffers,
        }
        .into_frames()
    }

    /// Checks the signature of a split message without recording it (schedulers forward
    /// the original frames, so they must not consume the replay slot).
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] for an unsigned or wrongly signed message.
    pub fn verify(&self, wire: &WireMessage) -> Result<()> {
        self.key.verify(wire)
    }

    /// Checks the signature, rejects replays, and parses the message.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] for malformed frames, a bad or replayed signature, or
    /// unparsable JSON.
    pub fn deserialize(&self, frames: Vec<Bytes>) -> Result<Message> {
        let wire = WireMessage::split(frames)?;
        self.verify(&wire)?;
        self.remember_signature(&wire)?;
        wire.parse()
    }

    /// Records a verified message's signature, rejecting one seen before.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] when the signature was seen before.
    pub fn remember_signature(&self, wire: &WireMessage) -> Result<()> {
        if !self.key.is_enabled() {
            return Ok(());
        }
        let mut history = self
            .history
            .lock()
            .map_err(|_| Error::invalid_message("signature history is poisoned"))?;
        if history.insert(&wire.signature) {
            Ok(())
        } else {
            Err(Error::invalid_message("duplicate signature"))
        }
    }
}

/// Packs a value as compact JSON (valid JSON is all a Python peer needs).
pub fn to_json_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Bytes {
    // Serializing maps of strings and JSON values cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// The delimiter frame as `Bytes`.
pub fn delimiter() -> Bytes {
    Bytes::from_static(DELIMITER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"3661a519-f3be1f1394f30f8e1a8db473";

    #[test]
    fn signature_matches_the_protocol_vector() {
        let header = br#"{"msg_id": "tap-session-0001_5493_0", "msg_type": "connection_request", "username": "tapuser", "session": "tap-session-0001", "date": "2026-11-22T17:59:19.509005Z", "version": "5.4"}"#;
        let sig = SigningKey::new(KEY).sign([header, b"{}", b"{}", b"{}"]);
        assert_eq!(
            sig.as_ref(),
            b"38f6cde2ea41033f79bac39c0565101742bc563d3e3917e218dc321b58a334e4"
        );
    }

    #[test]
    fn round_trip_then_replay_is_rejected() {
        let session = Session::new(SigningKey::new(KEY));
        let frames = session.serialize(&session.message("ping", json!({"a": 1})));
        let msg = session.deserialize(frames.clone()).unwrap();
        assert_eq!(msg.header.msg_type, "ping");
        assert_eq!(msg.content, json!({"a": 1}));
        let err = session.deserialize(frames).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
    }

    #[test]
    fn wrong_key_and_unsigned_messages_are_rejected() {
        let sender = Session::new(SigningKey::new(b"other"));
        let receiver = Session::new(SigningKey::new(KEY));
        let frames = sender.serialize(&sender.message("ping", json!({})));
        assert!(receiver.deserialize(frames).is_err());
        let unsigned = Session::new(SigningKey::new(b""));
        let frames = unsigned.serialize(&unsigned.message("ping", json!({})));
        assert!(receiver.deserialize(frames).is_err());
    }

    #[test]
    fn msg_ids_are_identifier_safe_and_unique() {
        let session = Session::new(SigningKey::new(KEY));
        let a = session.new_msg_id();
        let b = session.new_msg_id();
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn digest_history_stays_bounded() {
        let mut history = DigestHistory::default();
        for i in 0..(DIGEST_HISTORY_SIZE + 1) {
            assert!(history.insert(&Bytes::from(i.to_string())));
        }
        assert_eq!(
            history.seen.len(),
            DIGEST_HISTORY_SIZE + 1 - DIGEST_HISTORY_SIZE / 10
        );
        // Hex HMACs (kept as a prefix) and other signatures are both remembered.
        let hex = [b'a'; 64];
        assert!(history.insert(&hex));
        assert!(!history.insert(&hex));
        let mut upper = hex;
        upper[0] = b'A';
        assert!(
            history.insert(&upper),
            "case matters: these are different frames"
        );
        let mut other_tail = hex;
        other_tail[63] = b'b';
        assert_eq!(
            Signature::new(&other_tail),
            Signature::new(&hex),
            "only the first 128 bits of a hex HMAC are kept"
        );
        assert!(history.insert(b"short"));
        assert!(!history.insert(b"short"));
    }
}
