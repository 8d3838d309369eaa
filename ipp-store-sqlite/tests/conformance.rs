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
    received_messages_are_recorded,
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
    // Another connection drops the table of requests under the store: its next write fails.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("DROP TABLE \"ipython-tasks_requests\"")
        .unwrap();
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

/// The same calls on SQLite and on DictDb (the reference), each read checked against
/// DictDb's answer: reads see every write issued before them, whether the writer folded an
/// update into its add (same batch) or ran it on its own (a later batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_updates_drops_and_reads_interleaved_answer_as_dictdb_does() {
    use ipp_core::store::DictDb;
    let dir = tempfile::tempdir().unwrap();
    for batch_size in [1, 1000] {
        let config = SqliteConfig::new(dir.path().join(format!("tasks-{batch_size}.db")))
            .with_batch_size(batch_size);
        let sqlite = SqliteStore::open_with(config).await.unwrap();
        let dict = DictDb::new();
        let result = |n: i64| RecordUpdate {
            engine_uuid: Some(format!("engine-{n}")),
            completed: date::parse("2026-03-01T02:00:00.000007Z")
                .map(|d| d + chrono::TimeDelta::seconds(n)),
            result_content: serde_json::json!({"status": "ok", "n": n})
                .as_object()
                .cloned()
                .map(Into::into),
            result_buffers: Some(vec![Bytes::from(vec![n as u8; 3])]),
            append_stdout: Some(format!("out {n};")),
            ..RecordUpdate::default()
        };
        let done = Query::new().and(RecordKey::Completed, Condition::Ne(QueryValue::Null));
        for i in 0..40i64 {
            let id = format!("t{i:02}");
            for store in [&sqlite as &dyn Store, &dict] {
                store.add(task(&id, i)).await.unwrap();
                if i % 4 == 0 {
                    // A read between the add and its update sees the add.
                    let got = store.get(&id).await.unwrap();
                    assert_eq!(got.engine_uuid.as_deref(), Some("engine-a"), "{store}");
                }
                store.update(&id, result(i)).await.unwrap();
                if i % 3 == 0 {
                    store.update(&id, result(i + 100)).await.unwrap();
                }
                if i % 5 == 0 {
                    store.drop_records(std::slice::from_ref(&id)).await.unwrap();
                    assert!(matches!(
                        store.update(&id, result(i)).await,
                        Err(ipp_core::Error::NotFound { .. })
                    ));
                }
            }
            if i % 7 == 0 {
                assert_eq!(
                    sqlite.find(&done, None).await.unwrap(),
                    dict.find(&done, None).await.unwrap(),
                    "batch_size {batch_size}, after t{i:02}"
                );
            }
            match (sqlite.get(&id).await, dict.get(&id).await) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "batch_size {batch_size}"),
                (Err(ipp_core::Error::NotFound { .. }), Err(ipp_core::Error::NotFound { .. })) => {}
                other => panic!("{id}: {other:?}"),
            }
        }
        assert_eq!(
            sqlite.find(&Query::all(), None).await.unwrap(),
            dict.find(&Query::all(), None).await.unwrap()
        );
        sqlite.close().await.unwrap();
    }
}

/// The checkpointer copies the log back into the file while the store writes (the log
/// passes its threshold many times here), and closing empties the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_leaves_every_record_in_the_file_and_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    // ~12 MB of records: about three times the log size that triggers a checkpoint.
    for i in 0..1500 {
        let mut rec = task(&format!("big{i:04}"), i);
        rec.buffers = vec![Bytes::from(vec![(i % 251) as u8; 8192])];
        store.add(rec).await.unwrap();
    }
    store.close().await.unwrap();
    let wal = dir.path().join("tasks.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(
        wal_len, 0,
        "the log still holds {wal_len} bytes after close"
    );
    // Read the file alone (no log to replay): every record is there.
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM \"ipython-tasks\"", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(count, 1500);
}

/// With a commit interval far longer than any test, whoever waits for the writes wakes the
/// writer from its wait: reads, `drop_matching`, a full queue, and `close` all return.
/// (The timeout only guards against a hang; nothing here measures speed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_writes_ends_the_writers_wait_between_transactions() {
    let run = async {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::new(dir.path().join("tasks.db"))
            .with_batch_size(10)
            .with_queue_capacity(10)
            .with_commit_interval_ms(3_600_000);
        let store = SqliteStore::open_with(config).await.unwrap();
        store.add(task("first", 0)).await.unwrap();
        assert_eq!(store.history().await.unwrap(), ["first"]);
        // More writes than the queue holds: a full queue wakes the writer.
        for i in 1..=35 {
            store.add(task(&format!("t{i:02}"), i)).await.unwrap();
        }
        let all = Query::all();
        assert_eq!(store.find(&all, None).await.unwrap().len(), 36);
        assert_eq!(store.drop_matching(&all).await.unwrap(), 36);
        store.add(task("last", 99)).await.unwrap();
        store.close().await.unwrap();
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("a wait for the writer's commit interval was not ended");
}

/// The first column of every row `sql` returns, read through a plain connection.
fn column<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> Vec<T> {
    conn.prepare(sql)
        .expect("the query prepares")
        .query_map([], |row| row.get(0))
        .expect("the query runs")
        .collect::<rusqlite::Result<_>>()
        .expect("every row reads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_the_single_table_layout_keeps_its_records_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    {
        // The layout this store wrote before results had a table of their own
        // (ipyparallel's columns, one table), with one finished and one pending task.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE \"ipython-tasks\" (msg_id text PRIMARY KEY, header dict text, \
             metadata dict text, content dict text, buffers bufs blob, submitted timestamp, \
             client_uuid text, engine_uuid text, started timestamp, completed timestamp, \
             resubmitted text, received timestamp, result_header dict text, \
             result_metadata dict text, result_content dict text, result_buffers bufs blob, \
             queue text, execute_input text, execute_result text, error text, stdout text, \
             stderr text, label text);
             CREATE INDEX \"ipython-tasks_submitted\" ON \"ipython-tasks\" (submitted);
             INSERT INTO \"ipython-tasks\" (msg_id, submitted, completed, stdout, stderr) VALUES
               ('done', '2026-03-01T00:00:00.000001+00:00', '2026-03-01T00:00:01.000000+00:00', 'out', ''),
               ('pending', '2026-03-01T00:00:00.000002+00:00', NULL, '', '');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.history().await.unwrap(), ["done", "pending"]);
    let done = store.get("done").await.unwrap();
    assert_eq!(done.completed, date::parse("2026-03-01T00:00:01Z"));
    assert_eq!(done.stdout, "out");
    store
        .update(
            "pending",
            RecordUpdate {
                completed: date::parse("2026-03-01T00:00:02Z"),
                append_stdout: Some("late".to_owned()),
                ..RecordUpdate::default()
            },
        )
        .await
        .unwrap();
    let pending = store.get("pending").await.unwrap();
    assert_eq!(pending.completed, date::parse("2026-03-01T00:00:02Z"));
    assert_eq!(pending.stdout, "late");
    store.close().await.unwrap();

    let conn = rusqlite::Connection::open(&path).unwrap();
    let kind = |name: &str| -> String {
        conn.query_row(
            "SELECT type FROM sqlite_master WHERE name = ?",
            [name],
            |row| row.get(0),
        )
        .unwrap()
    };
    assert_eq!(kind("ipython-tasks"), "view");
    assert_eq!(kind("ipython-tasks_requests"), "table");
    assert_eq!(kind("ipython-tasks_results"), "table");
    // The view reads as ipyparallel's table did: its columns, whole records.
    let columns: Vec<String> = conn
        .prepare("SELECT * FROM \"ipython-tasks\"")
        .unwrap()
        .column_names()
        .map(str::to_owned)
        .collect();
    let want: Vec<&str> = RecordKey::ALL.iter().map(|key| key.as_str()).collect();
    assert_eq!(columns, want);
    let completed: Vec<Option<String>> = column(
        &conn,
        "SELECT completed FROM \"ipython-tasks\" ORDER BY msg_id",
    );
    assert_eq!(
        completed,
        [
            Some("2026-03-01T00:00:01.000000+00:00".to_owned()),
            Some("2026-03-01T00:00:02.000000+00:00".to_owned())
        ]
    );
    // And it opens again as it now is.
    drop(conn);
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.history().await.unwrap(), ["done", "pending"]);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_follow_their_requests_when_rows_are_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).await.unwrap();
    for i in 0..3 {
        store.add(task(&format!("t{i}"), i)).await.unwrap();
    }
    store.flush().await.unwrap();
    // Committed before their results: each result is a row of the results table.
    for i in 0..3 {
        let update = RecordUpdate {
            completed: date::parse(&format!("2026-03-01T00:00:0{i}Z")),
            ..RecordUpdate::default()
        };
        store.update(&format!("t{i}"), update).await.unwrap();
    }
    store.close().await.unwrap();
    {
        // What a VACUUM may do to a table without an INTEGER PRIMARY KEY: new row numbers
        // (here 1, 2, 3 become 3, 2, 1: t0 and t2 swap numbers).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "UPDATE \"ipython-tasks_requests\" SET rowid = 100 - rowid;
             UPDATE \"ipython-tasks_requests\" SET rowid = rowid - 96;",
        )
        .unwrap();
        let shown: Vec<String> = column(
            &conn,
            "SELECT msg_id FROM \"ipython-tasks\" WHERE completed IS NOT NULL",
        );
        assert_eq!(
            shown,
            ["t1"],
            "a stale link shows no result, never another record's"
        );
    }
    let store = SqliteStore::open(&path).await.unwrap();
    for i in 0..3 {
        let record = store.get(&format!("t{i}")).await.unwrap();
        let want = date::parse(&format!("2026-03-01T00:00:0{i}Z"));
        assert_eq!(record.completed, want, "t{i}");
    }
    store.close().await.unwrap();
}

/// The page size of the file at `path`, read through a plain connection.
fn page_size(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(path).expect("the file opens");
    column(&conn, "PRAGMA page_size")[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_has_16_kib_pages_and_an_existing_file_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.db");
    let store = SqliteStore::open(&new).await.unwrap();
    store.add(task("a", 1)).await.unwrap();
    store.close().await.unwrap();
    assert_eq!(page_size(&new), 16 * 1024);

    // A file SQLite made with its default pages (and something in it, as any used file).
    let old = dir.path().join("old.db");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (1);")
        .unwrap();
    assert_eq!(page_size(&old), 4096);
    let store = SqliteStore::open(&old).await.unwrap();
    for i in 0..2_000 {
        store.add(task(&format!("t{i}"), i)).await.unwrap();
    }
    assert_eq!(store.get("t1999").await.unwrap(), task("t1999", 1999));
    store.close().await.unwrap();
    assert_eq!(page_size(&old), 4096);
}
