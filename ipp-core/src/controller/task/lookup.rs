//! Dependencies on tasks the scheduler does not remember, resolved through the task database.
//!
//! The scheduler keeps a bounded window of task ids. A dependency on an id outside it (a
//! task finished before a controller restart, or millions of tasks ago) is looked up in the
//! store the Hub writes to. The lookup runs in its own task so a slow store never blocks
//! scheduling: the job is parked until the answer arrives.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::store::{direct, Query, RecordKey, Store};

/// How long a dependency lookup may take before the ids count as unknown.
pub(super) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A task the store says has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Finished {
    pub(super) msg_id: String,
    /// The engine that ran it, when recorded (for `follow`).
    pub(super) engine: Option<String>,
    /// Whether its result's status was `ok`.
    pub(super) succeeded: bool,
}

/// The answer to one parked job's lookup.
#[derive(Debug)]
pub(super) struct Lookup {
    /// The parked job.
    pub(super) msg_id: String,
    /// The finished tasks among the ids asked about, or why the store could not say.
    pub(super) outcome: Result<Vec<Finished>, String>,
}

/// Asks `store` which of `ids` have finished, on behalf of the job `msg_id`.
///
/// Only records with a result count: a recorded task without one can never finish as far as
/// this scheduler can tell (it ran before a restart, or was not a load-balanced task), so
/// depending on it stays an `InvalidDependency`.
pub(super) async fn lookup(store: Arc<dyn Store>, msg_id: String, ids: Vec<String>) -> Lookup {
    let query = Query::msg_ids(ids);
    let keys = [
        RecordKey::MsgId,
        RecordKey::EngineUuid,
        RecordKey::ResultContent,
    ];
    let outcome = match tokio::time::timeout(
        LOOKUP_TIMEOUT,
        direct(&store).find(&query, Some(&keys)),
    )
    .await
    {
        Ok(Ok(records)) => Ok(records
            .into_iter()
            .filter_map(|record| {
                let status = record.result_content.as_ref()?.get("status");
                Some(Finished {
                    msg_id: record.msg_id,
                    engine: record.engine_uuid,
                    succeeded: status.and_then(Value::as_str) == Some("ok"),
                })
            })
            .collect()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "the task database did not answer within {LOOKUP_TIMEOUT:?}"
        )),
    };
    Lookup { msg_id, outcome }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{DictDb, TaskRecord};

    fn record(msg_id: &str, status: Option<&str>) -> TaskRecord {
        let mut record = TaskRecord::new(msg_id);
        record.engine_uuid = Some("engine-a".into());
        record.submitted = Some(crate::protocol::date::now());
        record.result_content =
            status.and_then(|s| json!({"status": s}).as_object().cloned().map(Into::into));
        record
    }

    #[tokio::test]
    async fn finished_records_count_by_their_status_and_others_stay_unknown() {
        let store = Arc::new(DictDb::default());
        store.add(record("good", Some("ok"))).await.unwrap();
        store.add(record("bad", Some("error"))).await.unwrap();
        store.add(record("pending", None)).await.unwrap();
        let ids = ["good", "bad", "pending", "unknown"].map(String::from);
        let answer = lookup(store, "job".into(), ids.to_vec()).await;
        assert_eq!(answer.msg_id, "job");
        let mut found = answer.outcome.unwrap();
        found.sort_by(|a, b| a.msg_id.cmp(&b.msg_id));
        let engine = Some("engine-a".to_owned());
        assert_eq!(
            found,
            vec![
                Finished {
                    msg_id: "bad".into(),
                    engine: engine.clone(),
                    succeeded: false
                },
                Finished {
                    msg_id: "good".into(),
                    engine,
                    succeeded: true
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_store_that_cannot_read_is_reported() {
        let answer = lookup(Arc::new(crate::store::NoDb), "job".into(), vec!["x".into()]).await;
        assert!(answer.outcome.is_err());
    }
}
