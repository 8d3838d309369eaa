//! [`NoDb`]: the store that records nothing (ipyparallel's `--nodb`).

use std::fmt;

use async_trait::async_trait;

use super::{Query, RecordKey, RecordUpdate, Store, StoreCapabilities, TaskRecord};
use crate::error::{Error, Result};

/// A task database that records nothing, by design: for controllers that must not keep
/// task data (memory, privacy).
///
/// Writes (`add`, `update`, `drop_*`) succeed and do nothing, since there is nothing to
/// keep; [`capabilities`](Store::capabilities) reports `records: false` so callers can
/// tell. Every read (`get`, `find`, `history`) fails with [`Error::Unsupported`], which the
/// Hub turns into a client error, as ipyparallel answers "NoDB backend doesn't store any
/// data".
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDb;

impl NoDb {
    /// The store.
    pub fn new() -> Self {
        Self
    }

    fn unsupported<T>(operation: &'static str) -> Result<T> {
        Err(Error::Unsupported {
            operation,
            implementer: "nodb",
        })
    }
}

impl fmt::Display for NoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("nodb")
    }
}

#[async_trait]
impl Store for NoDb {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities { records: false }
    }

    /// Keeps nothing, by design.
    async fn add(&self, _record: TaskRecord) -> Result<()> {
        Ok(())
    }

    /// Keeps nothing, by design.
    async fn update(&self, _msg_id: &str, _update: RecordUpdate) -> Result<()> {
        Ok(())
    }

    async fn get(&self, _msg_id: &str) -> Result<TaskRecord> {
        Self::unsupported("reading task records")
    }

    async fn find(&self, _query: &Query, _keys: Option<&[RecordKey]>) -> Result<Vec<TaskRecord>> {
        Self::unsupported("querying task records")
    }

    /// Nothing is held, so nothing matches: always 0.
    async fn drop_matching(&self, _query: &Query) -> Result<usize> {
        Ok(0)
    }

    /// Nothing is held, so there is nothing to drop.
    async fn drop_records(&self, _msg_ids: &[String]) -> Result<()> {
        Ok(())
    }

    async fn history(&self) -> Result<Vec<String>> {
        Self::unsupported("task history")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::store as suite;

    #[tokio::test]
    async fn nodb_answers_reads_with_unsupported() {
        suite::nodb_answers_reads_with_unsupported(&NoDb).await;
    }

    #[tokio::test]
    async fn every_record_check_is_skipped_not_failed() {
        suite::run_all(|| async { NoDb::new() }).await;
    }

    #[tokio::test]
    async fn unsupported_names_nodb() {
        let err = NoDb.history().await.unwrap_err();
        assert_eq!(err.to_string(), "nodb does not support task history");
        assert_eq!(NoDb.to_string(), "nodb");
        assert!(!NoDb.capabilities().records);
    }
}
