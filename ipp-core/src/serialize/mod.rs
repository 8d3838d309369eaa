//! The Serializer seam: how Rust values become message buffers and back.
//!
//! Only clients and engines serialize; the controller never looks inside payloads. A value
//! travels as a [`Payload`]: the serializer's name (so the receiver knows how to read it)
//! and one or more frames. Three serializers ship here:
//!
//! - [`Json`]: human-readable, interoperable, slower;
//! - [`Bincode`]: compact and fast (bincode 2, serde mode, standard config);
//! - [`Raw`]: bytes in, bytes out, without a copy: for large binary values.
//!
//! ```
//! use ipp_core::serialize::{Bincode, Serializer};
//!
//! let payload = Bincode.encode(&vec![1u32, 2, 3]).unwrap();
//! let back: Vec<u32> = payload.decode().unwrap();
//! assert_eq!(back, [1, 2, 3]);
//! ```

mod formats;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

pub use formats::{Bincode, Json, Raw};

/// An encoded value: the name of the serializer that wrote it and its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The serializer's name: `json`, `bincode` or `raw`.
    pub format: String,
    /// The encoded frames; large raw values are their own frames, never copied.
    pub frames: Vec<Bytes>,
}

impl Payload {
    /// A raw payload of one frame, without copying it.
    pub fn raw(frame: impl Into<Bytes>) -> Self {
        Self {
            format: Raw.name().to_owned(),
            frames: vec![frame.into()],
        }
    }

    /// Decodes the payload with the serializer named in it.
    ///
    /// # Errors
    /// [`Error::Serialization`] when the format is unknown or the frames do not hold a `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        match self.format.as_str() {
            "json" => Json.decode(&self.frames),
            "bincode" => Bincode.decode(&self.frames),
            "raw" => Raw.decode(&self.frames),
            other => Err(Error::serialization(format!(
                "unknown payload format {other:?} (expected json, bincode or raw)"
            ))),
        }
    }

    /// Total size of the frames in bytes.
    pub fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum()
    }

    /// Whether the payload holds no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes values into frames and decodes them back.
///
/// # Contract
/// - `decode(encode(v)) == v` for every value the format can represent.
/// - `decode` of frames that do not hold a `T` is an [`Error::Serialization`], never a panic.
/// - [`Serializer::name`] is what [`Payload::decode`] dispatches on.
pub trait Serializer: std::fmt::Debug + Send + Sync + 'static {
    /// The name written into payloads.
    fn name(&self) -> &'static str;

    /// Encodes a value.
    ///
    /// # Errors
    /// [`Error::Serialization`] when the value cannot be represented in this format.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload>
    where
        Self: Sized;

    /// Decodes a value from frames this serializer wrote.
    ///
    /// # Errors
    /// [`Error::Serialization`] when the frames do not hold a `T`.
    fn decode<T: DeserializeOwned>(&self, frames: &[Bytes]) -> Result<T>
    where
        Self: Sized;
}
