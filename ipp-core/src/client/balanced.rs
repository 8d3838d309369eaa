//! [`LoadBalancedView`]: the task scheduler picks the engine (spec §6.2 flags).

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::call::{self, PackedCall, Request};
use super::error::ClientResult;
use super::io::Channel;
use super::result::{AsyncResult, One};
use super::view::MapOptions;
use super::Client;
use crate::protocol::to_json_bytes;
use crate::serialize::{Bincode, Serializer};

/// Runs calls wherever the task scheduler sends them.
///
/// The flags are set builder-style and apply to every later call of this view:
/// `client.load_balanced_view().with_retries(2).with_timeout(Duration::from_secs(5))`.
#[derive(Clone, Debug)]
pub struct LoadBalancedView {
    client: Client,
    after: Vec<String>,
    follow: Vec<String>,
    timeout: Option<Duration>,
    targets: Option<Vec<u32>>,
    retries: u32,
    label: Option<String>,
    time_limit: Option<Duration>,
}

impl LoadBalancedView {
    pub(crate) fn new(client: Client) -> Self {
        Self {
            client,
            after: Vec::new(),
            follow: Vec::new(),
            timeout: None,
            targets: None,
            retries: 0,
            label: None,
            time_limit: None,
        }
    }

    /// Run only after these tasks finished successfully (a time dependency).
    pub fn with_after(mut self, msg_ids: &[String]) -> Self {
        self.after = msg_ids.to_vec();
        self
    }

    /// Run only where these tasks ran (a location dependency).
    pub fn with_follow(mut self, msg_ids: &[String]) -> Self {
        self.follow = msg_ids.to_vec();
        self
    }

    /// Fail with `TaskTimeout` if still queued after this long.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run only on these engines.
    pub fn with_targets(mut self, targets: &[u32]) -> Self {
        self.targets = Some(targets.to_vec());
        self
    }

    /// Limits how long each task may run on its engine (our extension, not in
    /// ipyparallel): past it the engine interrupts the task where it can and answers
    /// with a `TaskTimeLimit` error, then serves the next request.
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Retry a failed task on another engine up to this many times.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the task label recorded by the Hub.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The client behind the view.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn metadata(&self) -> ClientResult<Bytes> {
        let targets: Vec<String> = match &self.targets {
            Some(ids) => self
                .client
                .resolve(Some(ids))?
                .into_iter()
                .map(|(_, uuid)| uuid)
                .collect(),
            None => Vec::new(),
        };
        Ok(to_json_bytes(&json!({
            "after": self.after,
            "follow": self.follow,
            "timeout": self.timeout.map(|t| t.as_secs_f64()),
            "targets": targets,
            "retries": self.retries,
            "label": self.label,
            "time_limit": self.time_limit.map(|t| t.as_secs_f64()),
        })))
    }

    /// Calls the registered `function` with `arg` (bincode) on one engine.
    ///
    /// # Errors
    /// Unknown targets, a serialization error, or a closed client. Remote failures
    /// (including `TaskTimeout`, `ImpossibleDependency`, `EngineError`) arrive in the result.
    pub async fn apply<A, R>(&self, function: &str, arg: &A) -> ClientResult<AsyncResult<R, One>>
    where
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        self.apply_with(&Bincode, function, arg).await
    }

    /// As [`LoadBalancedView::apply`], encoding the argument with `serializer`.
    ///
    /// # Errors
    /// As [`LoadBalancedView::apply`].
    pub async fn apply_with<S, A, R>(
        &self,
        serializer: &S,
        function: &str,
        arg: &A,
    ) -> ClientResult<AsyncResult<R, One>>
    where
        S: Serializer,
        A: Serialize + Sync + ?Sized,
        R: DeserializeOwned,
    {
        let call = PackedCall::encode(serializer, function, arg)?;
        let request = Request {
            channel: Channel::Task,
            idents: Vec::new(),
            call,
            engine: None,
        };
        call::submit_each(
            &self.client,
            &self.metadata()?,
            vec![request],
            call::decode_one::<R>,
            true,
        )
        .await
    }

    /// Calls `function` once per chunk of `options.chunksize` items; each call gets a
    /// `Vec<A>` and returns a `Vec<R>`. Awaiting gives every `R` in item order; streaming
    /// follows `options.ordered`. Every request is sent without waiting for replies.
    ///
    /// # Errors
    /// As [`LoadBalancedView::apply`].
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
        let metadata = self.metadata()?;
        let requests = items
            .chunks(options.chunksize.max(1))
            .map(|chunk| {
                Ok(Request {
                    channel: Channel::Task,
                    idents: Vec::new(),
                    call: PackedCall::encode_map(&Bincode, function, chunk)?,
                    engine: None,
                })
            })
            .collect::<ClientResult<Vec<_>>>()?;
        call::submit_each(
            &self.client,
            &metadata,
            requests,
            call::decode_values::<R>,
            options.ordered,
        )
        .await
    }

    /// Aborts queued tasks (the given ids, or all for `None`) on every engine.
    ///
    /// # Errors
    /// As [`Client::abort`].
    pub async fn abort(&self, msg_ids: Option<&[String]>) -> ClientResult<()> {
        self.client.abort(self.targets.as_deref(), msg_ids).await
    }
}
