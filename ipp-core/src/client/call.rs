//! Building `apply_request` messages for Rust calls, and decoding what they return.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{ClientError, ClientResult};
use super::io::{Channel, OnEngines, Outgoing, Route, Sink};
use super::result::{AsyncResult, ResultShared};
use super::Client;
use crate::protocol::apply::RustCall;
use crate::protocol::{to_json_bytes, Header};
use crate::serialize::{Payload, Serializer};

/// How many messages go to the IO task in one command.
pub(crate) const SUBMIT_BATCH: usize = 512;

/// The empty parent header, packed.
fn empty_dict() -> Bytes {
    Bytes::from_static(b"{}")
}

/// A Rust call packed once: content and buffers, reused for every copy sent.
#[derive(Clone, Debug)]
pub(crate) struct PackedCall {
    content: Bytes,
    buffers: Vec<Bytes>,
}

impl PackedCall {
    pub(crate) fn new(call: &RustCall) -> Self {
        let (content, buffers) = call.to_request();
        Self {
            content: to_json_bytes(&content),
            buffers,
        }
    }

    /// A call of `function` with one argument encoded by `serializer`.
    pub(crate) fn encode<S: Serializer, A: Serialize + ?Sized>(
        serializer: &S,
        function: &str,
        arg: &A,
    ) -> ClientResult<Self> {
        Ok(Self::new(&RustCall::new(
            function,
            vec![serializer.encode(arg)?],
        )))
    }

    /// A map call: `function` applied on the engine to each of `items` separately, so a
    /// function registered for one item serves `map` unchanged.
    pub(crate) fn encode_map<S: Serializer, A: Serialize>(
        serializer: &S,
        function: &str,
        items: &[A],
    ) -> ClientResult<Self> {
        let args = items
            .iter()
            .map(|item| serializer.encode(item))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Self::new(&RustCall::map(function, args)))
    }
}

/// Signs and frames an `apply_request` with the given header and metadata.
pub(crate) fn frames(
    client: &Client,
    idents: Vec<Bytes>,
    header: &Header,
    metadata: &Bytes,
    call: &PackedCall,
) -> Vec<Bytes> {
    client.session().serialize_parts(
        idents,
        to_json_bytes(header),
        empty_dict(),
        metadata.clone(),
        call.content.clone(),
        call.buffers.clone(),
    )
}

/// One request of a result: where to send it and which engine it is tied to.
pub(crate) struct Request {
    pub(crate) channel: Channel,
    pub(crate) idents: Vec<Bytes>,
    pub(crate) call: PackedCall,
    pub(crate) engine: Option<u32>,
}

/// Sends one request per entry with shared metadata; returns a result over all of them.
pub(crate) async fn submit_each<T, S>(
    client: &Client,
    metadata: &Bytes,
    requests: Vec<Request>,
    decode: super::result::Decoder<T>,
    ordered: bool,
) -> ClientResult<AsyncResult<T, S>> {
    let session = client.session();
    let headers: Vec<Header> = requests
        .iter()
        .map(|_| session.header("apply_request"))
        .collect();
    let shared = ResultShared::new(
        headers
            .iter()
            .map(|h| (h.msg_id.clone(), h.date.clone()))
            .collect(),
    );
    let mut batch = Vec::with_capacity(requests.len().min(SUBMIT_BATCH));
    for (index, (request, header)) in requests.into_iter().zip(headers).enumerate() {
        let frames = frames(client, request.idents, &header, metadata, &request.call);
        let engines = match request.engine {
            Some(id) => OnEngines::One(id),
            None => OnEngines::None,
        };
        batch.push(Outgoing {
            channel: request.channel,
            frames,
            routes: vec![(
                header.msg_id,
                Route {
                    sink: Sink::Result {
                        shared: Arc::clone(&shared),
                        index,
                    },
                    engines,
                },
            )],
        });
        if batch.len() == SUBMIT_BATCH {
            client.submit(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        client.submit(batch).await?;
    }
    Ok(AsyncResult::new(shared, decode, ordered))
}

/// Decodes a reply of exactly one value.
pub(crate) fn decode_one<T: DeserializeOwned>(payloads: &[Payload]) -> ClientResult<Vec<T>> {
    match payloads {
        [payload] => Ok(vec![payload.decode()?]),
        // A function that returns nothing (the `ipp.noop` built-in): fine for `()` and
        // `Option<_>`, which read JSON `null`.
        [] => serde_json::from_slice::<T>(b"null")
            .map(|value| vec![value])
            .map_err(|_| {
                ClientError::Core(crate::Error::invalid_message(
                    "the function returned no value",
                ))
            }),
        other => Err(ClientError::Core(crate::Error::invalid_message(format!(
            "expected one returned value, got {}",
            other.len()
        )))),
    }
}

/// Decodes a map chunk's reply: one value per item.
pub(crate) fn decode_values<T: DeserializeOwned>(payloads: &[Payload]) -> ClientResult<Vec<T>> {
    Ok(payloads
        .iter()
        .map(Payload::decode)
        .collect::<crate::Result<Vec<T>>>()?)
}

/// Decodes a reply of one list and flattens it (a gather part).
pub(crate) fn decode_chunk<T: DeserializeOwned>(payloads: &[Payload]) -> ClientResult<Vec<T>> {
    let mut values = Vec::new();
    for payload in payloads {
        values.extend(payload.decode::<Vec<T>>()?);
    }
    Ok(values)
}

/// Decodes every returned value into one list (a pull of several names).
pub(crate) fn decode_each<T: DeserializeOwned>(payloads: &[Payload]) -> ClientResult<Vec<Vec<T>>> {
    Ok(vec![payloads
        .iter()
        .map(Payload::decode)
        .collect::<crate::Result<Vec<T>>>()?])
}

/// Keeps the returned payloads undecoded, one list per reply (a pull of raw values).
pub(crate) fn decode_payloads(payloads: &[Payload]) -> ClientResult<Vec<Vec<Payload>>> {
    Ok(vec![payloads.to_vec()])
}

/// Ignores the returned values: one `()` per reply (push, scatter).
pub(crate) fn decode_unit(_payloads: &[Payload]) -> ClientResult<Vec<()>> {
    Ok(vec![()])
}

/// Splits `len` items into `parts` contiguous ranges of near-equal size (earlier parts get
/// the remainder), as ipyparallel's scatter does.
pub(crate) fn partition(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let base = len / parts;
    let extra = len % parts;
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_everything_in_order() {
        assert_eq!(partition(5, 2), vec![0..3, 3..5]);
        assert_eq!(partition(2, 3), vec![0..1, 1..2, 2..2]);
        assert_eq!(partition(0, 1), vec![0..0]);
    }
}
