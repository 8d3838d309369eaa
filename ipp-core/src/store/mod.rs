//! The Store seam: the Hub's task database, one [`TaskRecord`] per `msg_id`.
//!
//! Implementations in core: [`DictDb`] (in memory, the default, with culling limits) and
//! [`NoDb`] (records nothing and says so when asked to read). Other crates provide SQLite and
//! MongoDB stores; every implementation runs the conformance suite in
//! `ipp_core::testing::store`.

mod dictdb;
mod json_object;
mod nodb;
mod query;
mod received;
mod record;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;

pub use dictdb::{DictDb, DictDbConfig};
pub use json_object::JsonObject;
pub use nodb::NoDb;
pub use query::{Condition, Query, QueryValue};
pub use received::{ReceivedRequest, ReceivedResult};
pub use record::{FieldValue, RecordKey, RecordUpdate, RecordValue, TaskRecord};

/// What a store can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Whether records are kept at all (false for [`NoDb`]).
    pub records: bool,
}

impl StoreCapabilities {
    /// A store that records every task and answers every query.
    pub const RECORDS_EVERYTHING: Self = Self { records: true };

    /// A store that records nothing (like [`NoDb`]).
    pub const RECORDS_NOTHING: Self = Self { records: false };
}

/// The Hub's task database.
///
/// # Contract
/// - `add` of a known `msg_id` fails with [`Error::AlreadyExists`](crate::Error::AlreadyExists)
///   and changes nothing.
/// - `update` and `get` of an unknown `msg_id` fail with
///   [`Error::NotFound`](crate::Error::NotFound), or with
///   [`Error::Culled`](crate::Error::Culled) when a culling policy dropped it.
/// - `find` returns matching records in submission order; with `keys`, a record need only
///   carry those fields (and always `msg_id`); the others may be left at their defaults.
/// - What a backend cannot do returns [`Error::Unsupported`](crate::Error::Unsupported); it
///   never silently succeeds.
/// - The controller's Hub records every task on the loop that also serves registration
///   and queries, so a store should queue writes and return. The Hub waits for a write
///   at most `ControllerConfig::store_write_patience_ms` (1 s by default): one that takes
///   longer is cancelled and dropped, the store counts as not keeping up (logged once),
///   and until it has taken every write at once for that long again (or answered a read
///   the Hub sends it now and then), writes are offered once and dropped if not taken,
///   and queries get an error. A read may take up to 30 s. A cancelled call must leave the
///   store consistent: the write happened or it did not.
#[async_trait]
pub trait Store: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// What this store can do.
    fn capabilities(&self) -> StoreCapabilities;

    /// Records a new task.
    async fn add(&self, record: TaskRecord) -> Result<()>;

    /// Changes some fields of a recorded task.
    async fn update(&self, msg_id: &str, update: RecordUpdate) -> Result<()>;

    /// Records a new task from its request as the Hub received it: as [`Store::add`] of
    /// [`ReceivedRequest::into_record`], which is what this default does. The Hub records
    /// every request this way; a store that writes on a thread of its own may override it
    /// to build the record there, off the Hub's loop (the contract is `add`'s, checked
    /// against [`ReceivedRequest::msg_id`]).
    async fn add_received(&self, request: ReceivedRequest) -> Result<()> {
        self.add(request.into_record()).await
    }

    /// Records a task's result from its reply as the Hub received it: as [`Store::update`]
    /// with [`ReceivedResult::into_update`], which is what this default does. As with
    /// [`Store::add_received`], a store may override it to build the update elsewhere.
    async fn update_received(&self, result: ReceivedResult) -> Result<()> {
        let (msg_id, update) = result.into_update();
        self.update(&msg_id, update).await
    }

    /// One task's record.
    async fn get(&self, msg_id: &str) -> Result<TaskRecord>;

    /// The records matching `query`, in submission order, optionally with only `keys`.
    async fn find(&self, query: &Query, keys: Option<&[RecordKey]>) -> Result<Vec<TaskRecord>>;

    /// Removes the records matching `query`; returns how many were removed.
    async fn drop_matching(&self, query: &Query) -> Result<usize>;

    /// Removes the listed records; unknown ids are ignored.
    async fn drop_records(&self, msg_ids: &[String]) -> Result<()>;

    /// The `msg_id`s of every record with a `submitted` date, oldest first.
    async fn history(&self) -> Result<Vec<String>>;
}

/// The store behind `store`, to call directly. `Arc<dyn Store>` is a [`Store`] itself (the
/// impl below), and a method called on the `Arc` goes through that impl: two boxed futures
/// per call instead of one, and a record moved through both. The Hub calls a store a few
/// times for every task.
pub(crate) fn direct(store: &Arc<dyn Store>) -> &dyn Store {
    store.as_ref()
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: Store + ?Sized> Store for Arc<T> {
    fn capabilities(&self) -> StoreCapabilities {
        (**self).capabilities()
    }
    async fn add(&self, record: TaskRecord) -> Result<()> {
        (**self).add(record).await
    }
    async fn update(&self, msg_id: &str, update: RecordUpdate) -> Result<()> {
        (**self).update(msg_id, update).await
    }
    async fn add_received(&self, request: ReceivedRequest) -> Result<()> {
        (**self).add_received(request).await
    }
    async fn update_received(&self, result: ReceivedResult) -> Result<()> {
        (**self).update_received(result).await
    }
    async fn get(&self, msg_id: &str) -> Result<TaskRecord> {
        (**self).get(msg_id).await
    }
    async fn find(&self, query: &Query, keys: Option<&[RecordKey]>) -> Result<Vec<TaskRecord>> {
        (**self).find(query, keys).await
    }
    async fn drop_matching(&self, query: &Query) -> Result<usize> {
        (**self).drop_matching(query).await
    }
    async fn drop_records(&self, msg_ids: &[String]) -> Result<()> {
        (**self).drop_records(msg_ids).await
    }
    async fn history(&self) -> Result<Vec<String>> {
        (**self).history().await
    }
}
