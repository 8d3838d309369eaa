//! The built-in serializers.

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Payload, Serializer};
use crate::error::{Error, Result};

fn one_frame(frames: &[Bytes], format: &str) -> Result<Bytes> {
    match frames {
        [frame] => Ok(frame.clone()),
        [] => Ok(Bytes::new()),
        _ => {
            let total = frames.iter().map(Bytes::len).sum();
            let mut joined = BytesMut::with_capacity(total);
            for frame in frames {
                joined.extend_from_slice(frame);
            }
            tracing::trace!(
                format,
                frames = frames.len(),
                "joined a multi-frame payload"
            );
            Ok(joined.freeze())
        }
    }
}

/// JSON (serde_json): readable by anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Serializer for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload> {
        let bytes = serde_json::to_vec(value)
            .map_err(|err| Error::serialization(format!("json encode: {err}")))?;
        Ok(Payload {
            format: self.name().to_owned(),
            frames: vec![Bytes::from(bytes)],
        })
    }

    fn decode<T: DeserializeOwned>(&self, frames: &[Bytes]) -> Result<T> {
        let frame = one_frame(frames, "json")?;
        serde_json::from_slice(&frame)
            .map_err(|err| Error::serialization(format!("json decode: {err}")))
    }
}

/// bincode 2 in serde mode with the standard configuration: compact and fast.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

impl Serializer for Bincode {
    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload> {
        let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|err| Error::serialization(format!("bincode encode: {err}")))?;
        Ok(Payload {
            format: self.name().to_owned(),
            frames: vec![Bytes::from(bytes)],
        })
    }

    fn decode<T: DeserializeOwned>(&self, frames: &[Bytes]) -> Result<T> {
        let frame = one_frame(frames, "bincode")?;
        let (value, used) = bincode::serde::decode_from_slice(&frame, bincode::config::standard())
            .map_err(|err| Error::serialization(format!("bincode decode: {err}")))?;
        if used != frame.len() {
            return Err(Error::serialization(format!(
                "bincode decode: {} trailing bytes",
                frame.len() - used
            )));
        }
        Ok(value)
    }
}

/// Raw bytes: a value that serializes as bytes (`Bytes`, `serde_bytes`-style byte buffers,
/// `Vec<u8>` written with `serialize_bytes`) becomes one frame. Use [`Payload::raw`] to send
/// a `Bytes` without any copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Serializer for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Payload> {
        let bytes = value.serialize(raw::BytesCapture)?;
        Ok(Payload {
            format: self.name().to_owned(),
            frames: vec![bytes],
        })
    }

    fn decode<T: DeserializeOwned>(&self, frames: &[Bytes]) -> Result<T> {
        let frame = one_frame(frames, "raw")?;
        T::deserialize(raw::BytesDeserializer(frame))
    }
}

/// The serde plumbing of [`Raw`]: only byte strings pass.
mod raw {
    use bytes::Bytes;
    use serde::de::{self, Visitor};
    use serde::ser::{self, Impossible};

    use crate::error::Error;

    impl ser::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Error::serialization(msg.to_string())
        }
    }

    impl de::Error for Error {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Error::serialization(msg.to_string())
        }
    }

    fn not_bytes<T>() -> Result<T, Error> {
        Err(Error::serialization(
            "the raw serializer takes byte strings only (Bytes, serde_bytes buffers); use json or bincode for other values",
        ))
    }

    pub(super) struct BytesCapture;

    macro_rules! reject {
        ($($method:ident($($ty:ty),*)),* $(,)?) => {$(
            fn $method(self, $(_: $ty),*) -> Result<Bytes, Error> { not_bytes() }
        )*};
    }

    impl ser::Serializer for BytesCapture {
        type Ok = Bytes;
        type Error = Error;
        type SerializeSeq = Impossible<Bytes, Error>;
        type SerializeTuple = Impossible<Bytes, Error>;
        type SerializeTupleStruct = Impossible<Bytes, Error>;
        type SerializeTupleVariant = Impossible<Bytes, Error>;
        type SerializeMap = Impossible<Bytes, Error>;
        type SerializeStruct = Impossible<Bytes, Error>;
        type SerializeStructVariant = Impossible<Bytes, Error>;

        fn serialize_bytes(self, v: &[u8]) -> Result<Bytes, Error> {
            Ok(Bytes::copy_from_slice(v))
        }

        reject!(
            serialize_bool(bool),
            serialize_i8(i8),
            serialize_i16(i16),
            serialize_i32(i32),
            serialize_i64(i64),
            serialize_u8(u8),
            serialize_u16(u16),
            serialize_u32(u32),
            serialize_u64(u64),
            serialize_f32(f32),
            serialize_f64(f64),
            serialize_char(char),
            serialize_str(&str),
            serialize_none(),
            serialize_unit(),
            serialize_unit_struct(&'static str),
            serialize_unit_variant(&'static str, u32, &'static str),
        );

        fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<Bytes, Error> {
            not_bytes()
        }
        fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Bytes, Error> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Bytes, Error> {
            not_bytes()
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
            not_bytes()
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
            not_bytes()
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Error> {
            not_bytes()
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Error> {
            not_bytes()
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Error> {
            not_bytes()
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Error> {
            not_bytes()
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Error> {
            not_bytes()
        }
    }

    pub(super) struct BytesDeserializer(pub(super) Bytes);

    impl<'de> de::Deserializer<'de> for BytesDeserializer {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_byte_buf(self.0.to_vec())
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct seq tuple
            tuple_struct map struct enum identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serialize::Payload;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Point {
        x: f64,
        label: String,
        tags: Vec<u32>,
    }

    fn point() -> Point {
        Point {
            x: 1.5,
            label: "ü".into(),
            tags: vec![1, 2],
        }
    }

    #[test]
    fn json_and_bincode_round_trip_structs() {
        for payload in [
            Json.encode(&point()).unwrap(),
            Bincode.encode(&point()).unwrap(),
        ] {
            assert_eq!(payload.decode::<Point>().unwrap(), point());
        }
    }

    #[test]
    fn raw_round_trips_bytes_without_a_copy() {
        let big = Bytes::from(vec![7u8; 1 << 20]);
        let payload = Payload::raw(big.clone());
        assert_eq!(payload.frames[0].as_ptr(), big.as_ptr());
        let back: Bytes = payload.decode().unwrap();
        assert_eq!(back, big);
    }

    #[test]
    fn raw_refuses_non_bytes_clearly() {
        let err = Raw.encode(&5u32).unwrap_err();
        assert!(err.to_string().contains("byte strings only"), "{err}");
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let garbage = [Bytes::from_static(b"\xff\xfe\x00")];
        assert!(Json.decode::<Point>(&garbage).is_err());
        assert!(Bincode.decode::<Point>(&garbage).is_err());
        let payload = Payload {
            format: "pickle".into(),
            frames: vec![],
        };
        assert!(payload.decode::<u32>().is_err());
    }
}
