//! [`BlockingClient`]: the client for programs without an async runtime.
//!
//! It owns a small tokio runtime whose threads run the client's IO task; each method
//! submits and then blocks the calling thread until the result (or an error) is there.
//! Do not use it from inside an async runtime (tokio refuses to block a runtime thread).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::runtime::Runtime;

use super::hub::{Purge, QueueStatus, ResultStatus};
use super::{
    BroadcastView, Client, ClientConfig, ClientError, ClientResult, DirectView, EngineMap,
    LoadBalancedView, MapOptions,
};
use crate::protocol::{ClientConnectionInfo, JsonMap};
use crate::transport::Transport;

/// Worker threads of a blocking client's runtime: it runs in the background, so IOPub
/// output is read while the program does something else. Two, measured against one with
/// the `BlockingClient` round trip of `bench` (BENCHMARKS.md): one worker was 10–25 µs
/// slower per round trip at the same CPU (the caller's thread and the one worker take
/// turns; with two, a worker is often awake when the reply lands).
const IO_THREADS: usize = 2;

/// Shared by a blocking client and its views.
#[derive(Debug)]
struct Blocker {
    runtime: Runtime,
    /// Longest a blocking call waits for its result; `None` waits until it arrives or fails.
    wait_timeout: Option<Duration>,
}

impl Blocker {
    fn run<T, F: Future<Output = ClientResult<T>>>(&self, future: F) -> ClientResult<T> {
        match self.wait_timeout {
            None => self.runtime.block_on(future),
            Some(after) => self.runtime.block_on(async {
                tokio::time::timeout(after, future)
                    .await
                    .map_err(|_| ClientError::Timeout {
                        what: "a blocking call",
                        after,
                    })?
            }),
        }
    }
}

/// A [`Client`] for synchronous programs: the same calls, returning results directly.
#[derive(Debug, Clone)]
pub struct BlockingClient {
    blocker: Arc<Blocker>,
    client: Client,
}

impl BlockingClient {
    /// Starts a runtime and connects (see [`Client::connect_with`]).
    ///
    /// # Errors
    /// [`ClientError::Core`] if the runtime cannot start; as [`Client::connect_with`].
    pub fn connect(
        info: ClientConnectionInfo,
        transport: Arc<dyn Transport>,
        config: ClientConfig,
    ) -> ClientResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("ipp-client")
            .enable_all()
            .build()
            .map_err(|source| crate::Error::Io {
                operation: "starting the client runtime".into(),
                source,
            })?;
        let client = runtime.block_on(Client::connect_with(info, transport, config))?;
        Ok(Self {
            blocker: Arc::new(Blocker {
                runtime,
                wait_timeout: None,
            }),
            client,
        })
    }

    /// Reads `ipcontroller-client.json` and connects with default settings.
    ///
    /// # Errors
    /// As [`Client::from_file`].
    pub fn from_file(path: impl AsRef<Path>, transport: Arc<dyn Transport>) -> ClientResult<Self> {
        let text = std::fs::read(path.as_ref()).map_err(|source| crate::Error::Io {
            operation: format!("reading {}", path.as_ref().display()),
            source,
        })?;
        let info: ClientConnectionInfo = serde_json::from_slice(&text).map_err(|err| {
            crate::Error::Config(format!(
                "{} is not a client connection file: {err}",
                path.as_ref().display()
            ))
        })?;
        Self::connect(info, transport, ClientConfig::default())
    }

    /// Limits how long each blocking call waits (default: until the result arrives or
    /// fails). Applies to views created afterwards.
    ///
    /// # Panics
    /// Never; a client whose views are alive keeps the old limit for them.
    pub fn with_wait_timeout(mut self, timeout: Option<Duration>) -> Self {
        if let Some(blocker) = Arc::get_mut(&mut self.blocker) {
            blocker.wait_timeout = timeout;
        }
        self
    }

    /// The async client inside.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs any future of the client to completion on the client's runtime.
    ///
    /// # Errors
    /// The future's error, or [`ClientError::Timeout`] past the wait timeout.
    pub fn block_on<T, F: Future<Output = ClientResult<T>>>(&self, future: F) -> ClientResult<T> {
        self.blocker.run(future)
    }

    /// The registered engines' ids.
    pub fn ids(&self) -> Vec<u32> {
        self.client.ids()
    }

    /// The registered engines: id → uuid.
    pub fn engines(&self) -> EngineMap {
        self.client.engines()
    }

    /// Waits until at least `n` engines are registered.
    ///
    /// # Errors
    /// As [`Client::wait_for_engines`].
    pub fn wait_for_engines(&self, n: usize, timeout: Duration) -> ClientResult<Vec<u32>> {
        self.block_on(self.client.wait_for_engines(n, timeout))
    }

    /// A view on the given engines.
    pub fn direct_view(&self, targets: &[u32]) -> BlockingDirectView {
        BlockingDirectView {
            blocker: Arc::clone(&self.blocker),
            view: self.client.direct_view(targets),
        }
    }

    /// A view on every engine.
    pub fn view_all(&self) -> BlockingDirectView {
        BlockingDirectView {
            blocker: Arc::clone(&self.blocker),
            view: self.client.view_all(),
        }
    }

    /// A load-balanced view.
    pub fn load_balanced_view(&self) -> BlockingLoadBalancedView {
        BlockingLoadBalancedView {
            blocker: Arc::clone(&self.blocker),
            view: self.client.load_balanced_view(),
        }
    }

    /// A broadcast view on every engine.
    pub fn broadcast_view(&self, coalescing: bool) -> BlockingBroadcastView {
        BlockingBroadcastView {
            blocker: Arc::clone(&self.blocker),
            view: self.client.broadcast_view(coalescing),
        }
    }

    /// See [`Client::queue_status`].
    ///
    /// # Errors
    /// As [`Client::queue_status`].
    pub fn queue_status(
        &self,
        targets: Option<&[u32]>,
        verbose: bool,
    ) -> ClientResult<QueueStatus> {
        self.block_on(self.client.queue_status(targets, verbose))
    }

    /// See [`Client::db_query`].
    ///
    /// # Errors
    /// As [`Client::db_query`].
    pub fn db_query(&self, query: Value, keys: Option<&[&str]>) -> ClientResult<Vec<JsonMap>> {
        self.block_on(self.client.db_query(query, keys))
    }

    /// See [`Client::result_status`].
    ///
    /// # Errors
    /// As [`Client::result_status`].
    pub fn result_status(&self, msg_ids: &[String]) -> ClientResult<ResultStatus> {
        self.block_on(self.client.result_status(msg_ids))
    }

    /// See [`Client::get_result`].
    ///
    /// # Errors
    /// As [`Client::get_result`].
    pub fn get_result<T: DeserializeOwned>(
        &self,
        msg_id: &str,
        timeout: Duration,
    ) -> ClientResult<Vec<T>> {
        self.block_on(self.client.get_result(msg_id, timeout))
    }

    /// See [`Client::hub_history`].
    ///
    /// # Errors
    /// As [`Client::hub_history`].
    pub fn hub_history(&self) -> ClientResult<Vec<String>> {
        self.block_on(self.client.hub_history())
    }

    /// See [`Client::resubmit`].
    ///
    /// # Errors
    /// As [`Client::resubmit`].
    pub fn resubmit(&self, msg_ids: &[String]) -> ClientResult<BTreeMap<String, String>> {
        self.block_on(self.client.resubmit(msg_ids))
    }

    /// See [`Client::purge`].
    ///
    /// # Errors
    /// As [`Client::purge`].
    pub fn purge(&self, records: Purge<'_>, engine_ids: &[u32]) -> ClientResult<()> {
        self.block_on(self.client.purge(records, engine_ids))
    }

    /// See [`Client::abort`].
    ///
    /// # Errors
    /// As [`Client::abort`].
    pub fn abort(&self, targets: Option<&[u32]>, msg_ids: Option<&[String]>) -> ClientResult<()> {
        self.block_on(self.client.abort(targets, msg_ids))
    }

    /// See [`Client::shutdown`].
    ///
    /// # Errors
    /// As [`Client::shutdown`].
    pub fn shutdown(&self, targets: Option<&[u32]>, hub: bool) -> ClientResult<()> {
        self.block_on(self.client.shutdown(targets, hub))
    }

    /// Closes the client (see [`Client::close`]).
    pub fn close(&self) {
        self.blocker.runtime.block_on(self.client.close());
    }
}

/// A [`DirectView`] whose calls block until their results are there.
#[derive(Debug, Clone)]
pub struct BlockingDirectView {
    blocker: Arc<Blocker>,
    view: DirectView,
}

impl BlockingDirectView {
    /// The async view inside.
    pub fn view(&self) -> &DirectView {
        &self.view
    }

    /// See [`DirectView::apply`]: one value per target.
    ///
    /// # Errors
    /// As [`DirectView::apply`], plus the tasks' failures.
    pub fn apply<A: Serialize + Sync + ?Sized, R: DeserializeOwned>(
        &self,
        function: &str,
        arg: &A,
    ) -> ClientResult<Vec<R>> {
        self.blocker
            .run(async { self.view.apply(function, arg).await?.await })
    }

    /// See [`DirectView::map`].
    ///
    /// # Errors
    /// As [`DirectView::map`], plus the tasks' failures.
    pub fn map<A: Serialize + Sync, R: DeserializeOwned>(
        &self,
        function: &str,
        items: &[A],
        options: MapOptions,
    ) -> ClientResult<Vec<R>> {
        self.blocker
            .run(async { self.view.map(function, items, options).await?.await })
    }

    /// See [`DirectView::push`].
    ///
    /// # Errors
    /// As [`DirectView::push`].
    pub fn push<T: Serialize + Sync>(&self, values: &[(&str, T)]) -> ClientResult<()> {
        self.blocker
            .run(async { self.view.push(values).await?.await.map(|_| ()) })
    }

    /// See [`DirectView::pull`].
    ///
    /// # Errors
    /// As [`DirectView::pull`].
    pub fn pull<T: DeserializeOwned>(&self, names: &[&str]) -> ClientResult<Vec<Vec<T>>> {
        self.blocker
            .run(async { self.view.pull(names).await?.await })
    }

    /// See [`DirectView::scatter`].
    ///
    /// # Errors
    /// As [`DirectView::scatter`].
    pub fn scatter<T: Serialize + Sync>(&self, name: &str, items: &[T]) -> ClientResult<()> {
        self.blocker
            .run(async { self.view.scatter(name, items).await?.await.map(|_| ()) })
    }

    /// See [`DirectView::gather`].
    ///
    /// # Errors
    /// As [`DirectView::gather`].
    pub fn gather<T: DeserializeOwned>(&self, name: &str) -> ClientResult<Vec<T>> {
        self.blocker
            .run(async { self.view.gather(name).await?.await })
    }

    /// See [`DirectView::abort`].
    ///
    /// # Errors
    /// As [`DirectView::abort`].
    pub fn abort(&self, msg_ids: Option<&[String]>) -> ClientResult<()> {
        self.blocker.run(self.view.abort(msg_ids))
    }
}

/// A [`LoadBalancedView`] whose calls block until their results are there.
#[derive(Debug, Clone)]
pub struct BlockingLoadBalancedView {
    blocker: Arc<Blocker>,
    view: LoadBalancedView,
}

impl BlockingLoadBalancedView {
    /// Changes the view's flags, e.g. `v.configure(|v| v.with_retries(2))`.
    pub fn configure(mut self, f: impl FnOnce(LoadBalancedView) -> LoadBalancedView) -> Self {
        self.view = f(self.view);
        self
    }

    /// The async view inside.
    pub fn view(&self) -> &LoadBalancedView {
        &self.view
    }

    /// See [`LoadBalancedView::apply`].
    ///
    /// # Errors
    /// As [`LoadBalancedView::apply`], plus the task's failure.
    pub fn apply<A: Serialize + Sync + ?Sized, R: DeserializeOwned>(
        &self,
        function: &str,
        arg: &A,
    ) -> ClientResult<R> {
        self.blocker
            .run(async { self.view.apply(function, arg).await?.await })
    }

    /// See [`LoadBalancedView::map`].
    ///
    /// # Errors
    /// As [`LoadBalancedView::map`], plus the tasks' failures.
    pub fn map<A: Serialize + Sync, R: DeserializeOwned>(
        &self,
        function: &str,
        items: &[A],
        options: MapOptions,
    ) -> ClientResult<Vec<R>> {
        self.blocker
            .run(async { self.view.map(function, items, options).await?.await })
    }
}

/// A [`BroadcastView`] whose calls block until their results are there.
#[derive(Debug, Clone)]
pub struct BlockingBroadcastView {
    blocker: Arc<Blocker>,
    view: BroadcastView,
}

impl BlockingBroadcastView {
    /// See [`BroadcastView::apply`]: one value per engine.
    ///
    /// # Errors
    /// As [`BroadcastView::apply`], plus the tasks' failures.
    pub fn apply<A: Serialize + Sync + ?Sized, R: DeserializeOwned>(
        &self,
        function: &str,
        arg: &A,
    ) -> ClientResult<Vec<R>> {
        self.blocker
            .run(async { self.view.apply(function, arg).await?.await })
    }
}
