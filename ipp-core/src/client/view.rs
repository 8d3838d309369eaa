//! [`DirectView`]: explicit engines, one request per engine; and [`MapOptions`].

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::call::{self, PackedCall, Request};
use super::error::ClientResult;
use super::io::Channel;
use super::result::{AsyncResult, Many};
use super::Client;
use crate::protocol::apply::{RustCall, PULL, PUSH};
use crate::protocol::to_json_bytes;
use crate::serialize::{Bincode, Payload, Serializer};

pub use super::balanced::LoadBalancedView;
pub use super::broadcast::BroadcastView;

/// How `map` splits and returns its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MapOptions {
    /// Items per task (load-balanced map): each task carries this many items and the engine
    /// applies the function to each. Default 1. A direct map sends one call per engine with
    /// that engine's share and ignores it.
    pub chunksize: usize,
    /// Whether streaming yields results in item order (true) or as they arrive. Awaiting
    /// the result always gives item order. Default true.
    pub ordered: bool,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            chunksize: 1,
            ordered: true,
        }
    }
}

impl MapOptions {
    /// Sets [`MapOptions::chunksize`] (at least 1).
    pub fn with_chunksize(mut self, chunksize: usize) -> Self {
        self.chunksize = chunksize.max(1);
        self
    }

    /// Sets [`MapOptions::ordered`].
    pub fn with_ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }
}

/// Runs calls on explicit engines: one request per target engine (over the MUX).
#[derive(Clone, Debug)]
pub struct DirectView {
    client: Client,
    /// `None`: every engine registered at the time of each call.
    targets: Option<Vec<u32>>,
    label: Option<String>,
}

impl DirectView {
    pub(crate) fn new(client: Client, targets: Option<Vec<u32>>) -> Self {
        Self {
            client,
            targets,
            label: None,
        }
    }

    /// Sets the task label recorded by the Hub (request metadata `label`).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The view's engine ids (resolved now for a view on all engines).
    pub fn targets(&self) -> Vec<u32> {
        match &self.targets {
            Some(ids) => ids.clone(),
            None => self.client.ids(),
        }
    }

    /// The client behind the view.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn metadata(&self) -> Bytes {
        to_json_bytes(&json!({ "label": self.label }))
    }

    /// Sends one packed call per `(engine, call)` pair.
    async fn send<T, S>(
        &self,
        calls: Vec<((u32, String), PackedCall)>,
        decode: super::result::Decoder<T>,
        ordered: bool,
    ) -> ClientResult<AsyncResult<T, S>> {
        let requests = calls
            .into_iter()
            .map(|((id, uuid), call)| Request {
                channel: Channel::Mux,
                idents: vec![Bytes::from(uuid)],
                call,
                engine: Some(id),
            })
            .collect();
        call::submit_each(&self.client, &self.metadata(), requests, decode, ordered).await
    }

    /// Sends the same call to every target.
    async fn broadcast_call<T>(
        &self,
        call: PackedCall,
        decode: super::result::Decoder<T>,
    ) -> ClientResult<AsyncResult<T, Many>> {
        let targets = self.client.resolve(self.targets.as_deref())?;
        let calls = targets.into_iter().map(|t| (t, call.clone())).collect();
        self.send(calls, decode, true).await
    }

    /// Calls the registered `function` with `arg` (bincode) on every target; the result
    /// holds one value per engine, in target order.
    ///
    /// # Errors
    /// [`ClientError::NoEngines`](super::ClientError::NoEngines) /
    /// [`UnknownEngine`](super::ClientError::UnknownEngine) for bad targets, a
    /// serialization error, or a closed client. Remote failures arrive in the result.
    pub async fn apply<A, R>(&self, function: &str, arg: &A) -> ClientResult<AsyncResult<R>>
    where
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        self.apply_with(&Bincode, function, arg).await
    }

    /// As [`DirectView::apply`], encoding the argument with `serializer`.
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn apply_with<S, A, R>(
        &self,
        serializer: &S,
        function: &str,
        arg: &A,
    ) -> ClientResult<AsyncResult<R>>
    where
        S: Serializer,
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        let call = PackedCall::encode(serializer, function, arg)?;
        self.broadcast_call(call, call::decode_one::<R>).await
    }

    /// Partitions `items` across the targets (contiguously, in target order) and sends each
    /// engine its share in one map call: the engine applies `function` to each item, and
    /// the result is every `R` in item order.
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn map<A, R>(
        &self,
        function: &str,
        items: &[A],
        options: MapOptions,
    ) -> ClientResult<AsyncResult<R>>
    where
        A: Serialize + Sync,
        R: DeserializeOwned,
    {
        let targets = self.client.resolve(self.targets.as_deref())?;
        let ranges = call::partition(items.len(), targets.len());
        let mut calls = Vec::with_capacity(targets.len());
        for (target, range) in targets.into_iter().zip(ranges) {
            calls.push((
                target,
                PackedCall::encode_map(&Bincode, function, &items[range])?,
            ));
        }
        self.send(calls, call::decode_values::<R>, options.ordered)
            .await
    }

    /// Stores each value under its name in every target's namespace (bincode).
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn push<T: Serialize + Sync>(
        &self,
        values: &[(&str, T)],
    ) -> ClientResult<AsyncResult<()>> {
        let payloads = values
            .iter()
            .map(|(name, value)| Ok(((*name).to_owned(), Bincode.encode(value)?)))
            .collect::<crate::Result<Vec<_>>>()?;
        self.push_payloads(payloads).await
    }

    /// Stores already-encoded values (any mix of formats) in every target's namespace.
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn push_payloads(
        &self,
        values: Vec<(String, Payload)>,
    ) -> ClientResult<AsyncResult<()>> {
        let (names, args) = values.into_iter().unzip();
        let call = RustCall {
            function: PUSH.to_owned(),
            names,
            args,
            map: false,
        };
        self.broadcast_call(PackedCall::new(&call), call::decode_unit)
            .await
    }

    /// Reads the named values from every target: one `Vec<T>` (one value per name) per
    /// engine, in target order.
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn pull<T: DeserializeOwned>(
        &self,
        names: &[&str],
    ) -> ClientResult<AsyncResult<Vec<T>>> {
        let call = RustCall {
            function: PULL.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            args: Vec::new(),
            map: false,
        };
        self.broadcast_call(PackedCall::new(&call), call::decode_each::<T>)
            .await
    }

    /// As [`DirectView::pull`], but returns the stored payloads undecoded (any format; a
    /// large raw value comes back as its frames, without a copy).
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn pull_payloads(&self, names: &[&str]) -> ClientResult<AsyncResult<Vec<Payload>>> {
        let call = RustCall {
            function: PULL.to_owned(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            args: Vec::new(),
            map: false,
        };
        self.broadcast_call(PackedCall::new(&call), call::decode_payloads)
            .await
    }

    /// Partitions `items` across the targets and stores each share (a `Vec<T>`) under
    /// `name` on its engine.
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn scatter<T: Serialize + Sync>(
        &self,
        name: &str,
        items: &[T],
    ) -> ClientResult<AsyncResult<()>> {
        let targets = self.client.resolve(self.targets.as_deref())?;
        let ranges = call::partition(items.len(), targets.len());
        let mut calls = Vec::with_capacity(targets.len());
        for (target, range) in targets.into_iter().zip(ranges) {
            let call = RustCall {
                function: PUSH.to_owned(),
                names: vec![name.to_owned()],
                args: vec![Bincode.encode(&items[range])?],
                map: false,
            };
            calls.push((target, PackedCall::new(&call)));
        }
        self.send(calls, call::decode_unit, true).await
    }

    /// Reads the `Vec<T>` stored under `name` on every target and concatenates them in
    /// target order (the inverse of [`DirectView::scatter`]).
    ///
    /// # Errors
    /// As [`DirectView::apply`].
    pub async fn gather<T: DeserializeOwned>(&self, name: &str) -> ClientResult<AsyncResult<T>> {
        let call = RustCall {
            function: PULL.to_owned(),
            names: vec![name.to_owned()],
            args: Vec::new(),
            map: false,
        };
        self.broadcast_call(PackedCall::new(&call), call::decode_chunk::<T>)
            .await
    }

    /// Aborts queued requests on the targets: the given ids, or every queued one for
    /// `None`. Aborted requests finish with [`ClientError::TaskAborted`](super::ClientError::TaskAborted).
    ///
    /// # Errors
    /// As [`Client::abort`].
    pub async fn abort(&self, msg_ids: Option<&[String]>) -> ClientResult<()> {
        self.client.abort(self.targets.as_deref(), msg_ids).await
    }
}
