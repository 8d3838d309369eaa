//! Every Store conformance check against a real SQLite file in a temporary directory (a
//! fresh store per check), and the restart and failure behaviour of the file.

use bytes::Bytes;
use ipp_core::protocol::date;
use ipp_core::store::{Condition, Query, QueryValue, RecordKey, RecordUpdate, Store, TaskRecord};
use ipp_core::testing::store as suite;
use ipp_store_sqlite::{SqliteConfig, SqliteStore};

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path().join("tasks.db")).await.unwrap();
            suite::$check(&store).await;
            store.close().await.unwrap();
        }
    )*
        #[test]
        fn conformance_list_is_complete() {
            let ours = [$(stringify!($check)),*];
            assert_eq!(ours.as_slice(), suite::CHECKS);
        }
    };
}

conformance!(
    add_then_get_round_trips_every_field,
    add_twice_is_already_exists,
    update_changes_only_given_fields,
    get_unknown_is_not_found,
    string_operators,
    date_operators,
    combined_conditions,
    in_and_nin,
    ne_null_means_present,
    key_projection,
    drop_matching,
    drop_records,
    history_in_submission_order,
    find_10k_records,
    nodb_answers_reads_with_unsupported,
);

fn task(id: &str, secs: i64) -> TaskRecord {
    let mut rec = TaskRecord::new(id);
    rec.submitted =
        date::parse("2026-03-01T00:00:00.5Z").map(|d| d + chrono::TimeDelta::seconds(secs));
    rec.engine_uuid = Some("engine-a".to_owned());
    rec.buffers = vec![Bytes::from_static(b"request \x00 bytes")];
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_file_restores_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        for i in 0..50 {
            store.add(task(&format!("t{i:02}"), i)).await.unwrap();
        }
        let done = RecordUpdate {
            completed: date::parse("2026-03-01T01:00:00Z"),
            result_buffers: Some(vec![Bytes::from_static(b"result")]),
            append_stdout: Some("printed".to_owned()),
            ..RecordUpdate::default()
        };
        store.update("t07", done).await.unwrap();
        store.drop_records(&["t00".to_owned()]).await.unwrap();
        store.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    let history = store.history().await.unwrap();
    assert_eq!(history.len(), 49);
    assert_eq!(history.first().map(String::as_str), Some("t01"));
    let t07 = store.get("t07").await.unwrap();
    assert_eq!(t07.stdout, "printed");
    assert_eq!(t07.result_buffers, vec![Bytes::from_static(b"result")]);
    assert_eq!(t07.buffers, vec![Bytes::from_static(b"request \x00 bytes")]);
    let done = Query::new().and(RecordKey::Completed, Condition::Ne(QueryValue::Null));
    let found = store
        .find(&done, Some(&[RecordKey::Completed]))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    // The ids came back too: a known id is refused, an old record can be updated.
    assert!(matches!(
        store.add(task("t01", 0)).await,
        Err(ipp_core::Error::AlreadyExists { .. })
    ));
    store
        .update(
            "t01",
            RecordUpdate {
                resubmitted: Some("new".to_owned()),
                ..RecordUpdate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get("t01").await.unwrap().resubmitted.as_deref(),
        Some("new")
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_table_lives_beside_the_default_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open_with(SqliteConfig::new(&path).with_table("other \"quoted\" table"))
        .await
        .unwrap();
    a.add(task("in-a", 0)).await.unwrap();
    b.add(task("in-b", 0)).await.unwrap();
    assert_eq!(a.history().await.unwrap(), ["in-a"]);
    assert_eq!(b.history().await.unwrap(), ["in-b"]);
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_reported_by_the_next_call_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.add(task("ok", 0)).await.unwrap();
    store.flush().await.unwrap();
    // Another connection drops the table under the store: its next write fails.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("DROP TABLE \"ipython-tasks\"").unwrap();
    store.add(task("lost", 1)).await.unwrap();
    // The read waits for that write, and reports its failure.
    let err = store.history().await.unwrap_err();
    assert!(
        matches!(
            err,
            ipp_core::Error::Backend {
                backend: "sqlite",
                ..
            }
        ),
        "{err:?}"
    );
    let report = format!("{:?}", err);
    assert!(report.contains("no such table"), "{report}");
    // Reported once: the following call is answered on its own merits.
    store.add(task("after", 3)).await.unwrap();
    store.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_write_queued_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path().join("tasks.db"))
        .with_batch_size(7)
        .with_queue_capacity(16);
    let store = SqliteStore::open_with(config).await.unwrap();
    for i in 0..500 {
        store.add(task(&format!("r{i:03}"), i)).await.unwrap();
        if i % 50 == 49 {
            assert_eq!(store.history().await.unwrap().len(), i as usize + 1);
        }
    }
    assert!(store.queue_high_water_mark() <= 16);
    assert!(store.queue_high_water_mark() >= 1);
    store.close().await.unwrap();
    let err = store.history().await.unwrap_err();
    assert!(matches!(err, ipp_core::Error::Closed { .. }), "{err:?}");
}
