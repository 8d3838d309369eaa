//! The Store conformance suite.
//!
//! Each check is a `pub async fn` that takes a **fresh, empty** store and panics with a
//! message naming the store and what broke. Run them all with [`run_all`], or one test per
//! check so that failures are reported separately:
//!
//! ```ignore
//! // ipp-store-sqlite/tests/conformance.rs (dev-dependency: ipp-core, features = ["testing"])
//! macro_rules! conformance { ($($check:ident),* $(,)?) => {$(
//!     #[tokio::test]
//!     async fn $check() {
//!         let dir = tempfile::tempdir().unwrap();
//!         let store = SqliteStore::open(dir.path().join("tasks.db")).await.unwrap();
//!         ipp_core::testing::store::$check(&store).await;
//!     }
//! )*}; }
//! conformance!(add_then_get_round_trips_every_field, add_twice_is_already_exists /* , … */);
//! ```
//!
//! [`CHECKS`] lists every check's name, so such a list can be checked for completeness.
//!
//! A store whose [`capabilities`](Store::capabilities) say it keeps no records (`NoDb`) is
//! exempt from the record checks: each says so (`tracing::info`) and returns. It must pass
//! [`nodb_answers_reads_with_unsupported`] instead.
//!
//! Semantics checked beyond the trait's contract: `$ne` and `$nin` match unset fields (as in
//! MongoDB and ipyparallel's DictDB; SQL needs `OR k IS NULL`), a `null` inside `$in`
//! matches unset fields, ordering against unset fields is false, `$gt` means greater-than,
//! and dates keep microsecond precision.

use std::future::Future;

use bytes::Bytes;
use chrono::TimeDelta;
use serde_json::{json, Value};

use crate::controller::wire_fields::ReadFields;
use crate::error::{Error, Result};
use crate::protocol::{date, Timestamp, WireMessage};
use crate::store::{
    Condition, JsonObject, Query, QueryValue, ReceivedRequest, ReceivedResult, RecordKey,
    RecordUpdate, Store, TaskRecord,
};

/// The name of every check, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "add_then_get_round_trips_every_field",
    "add_twice_is_already_exists",
    "update_changes_only_given_fields",
    "get_unknown_is_not_found",
    "string_operators",
    "date_operators",
    "combined_conditions",
    "in_and_nin",
    "ne_null_means_present",
    "key_projection",
    "drop_matching",
    "drop_records",
    "history_in_submission_order",
    "find_10k_records",
    "received_messages_are_recorded",
    "nodb_answers_reads_with_unsupported",
];

/// Runs every check, each on a fresh store from `new_store`.
pub async fn run_all<F, Fut, S>(mut new_store: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    add_then_get_round_trips_every_field(&new_store().await).await;
    add_twice_is_already_exists(&new_store().await).await;
    update_changes_only_given_fields(&new_store().await).await;
    get_unknown_is_not_found(&new_store().await).await;
    string_operators(&new_store().await).await;
    date_operators(&new_store().await).await;
    combined_conditions(&new_store().await).await;
    in_and_nin(&new_store().await).await;
    ne_null_means_present(&new_store().await).await;
    key_projection(&new_store().await).await;
    drop_matching(&new_store().await).await;
    drop_records(&new_store().await).await;
    history_in_submission_order(&new_store().await).await;
    find_10k_records(&new_store().await).await;
    received_messages_are_recorded(&new_store().await).await;
    nodb_answers_reads_with_unsupported(&new_store().await).await;
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Whether `store` keeps records; if not, logs that `check` does not apply.
fn keeps_records(store: &dyn Store, check: &str) -> bool {
    let records = store.capabilities().records;
    if !records {
        tracing::info!(store = %store, check, "store keeps no records; check does not apply");
    }
    records
}

/// The value of `result`, or a panic naming the store and the operation.
fn ok<T>(store: &dyn Store, what: &str, result: Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{store}: {what} failed: {err} ({err:?})"),
    }
}

/// A date `secs` seconds (plus a fixed 123456 µs, to test precision) after a fixed origin.
fn at(secs: i64) -> Timestamp {
    let origin = chrono::DateTime::from_timestamp(1_790_000_000, 123_456_000).unwrap_or_default();
    origin + TimeDelta::seconds(secs)
}

/// A JSON object literal as a record document (non-objects give an empty one).
fn obj(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map.into(),
        _ => JsonObject::default(),
    }
}

fn s(text: &str) -> QueryValue {
    QueryValue::Str(text.to_owned())
}

fn d(secs: i64) -> QueryValue {
    QueryValue::Date(at(secs))
}

/// The ids of `records`, sorted (for checks where order is not the point).
fn sorted_ids(records: &[TaskRecord]) -> Vec<String> {
    let mut ids: Vec<String> = records.iter().map(|rec| rec.msg_id.clone()).collect();
    ids.sort();
    ids
}

/// `task-<n>` for each n.
fn task_ids(numbers: &[usize]) -> Vec<String> {
    numbers.iter().map(|n| format!("task-{n}")).collect()
}

/// Asserts that `query` finds exactly the records `task-<n>` for `expected`.
async fn assert_finds(store: &dyn Store, what: &str, query: Query, expected: &[usize]) {
    let found = ok(
        store,
        &format!("find {what}"),
        store.find(&query, None).await,
    );
    assert_eq!(
        sorted_ids(&found),
        task_ids(expected),
        "{store}: query {what} ({}) found the wrong records",
        query.to_json()
    );
}

/// Short description of a field's value for messages (buffers summarized, not dumped).
fn describe(record: &TaskRecord, key: RecordKey) -> String {
    match key {
        RecordKey::Buffers | RecordKey::ResultBuffers => {
            let buffers = if key == RecordKey::Buffers {
                &record.buffers
            } else {
                &record.result_buffers
            };
            let lens: Vec<usize> = buffers.iter().map(Bytes::len).collect();
            format!("{} buffers of lengths {lens:?}", buffers.len())
        }
        _ => format!("{:?}", record.value(key)),
    }
}

/// Asserts `got == want` field by field, naming the first field that differs.
fn assert_same_record(store: &dyn Store, context: &str, got: &TaskRecord, want: &TaskRecord) {
    for key in RecordKey::ALL {
        assert!(
            got.value(key) == want.value(key),
            "{store}: {context}: record {}: field {key} is {}, expected {}",
            want.msg_id,
            describe(got, key),
            describe(want, key),
        );
    }
}

/// A record with every field set, including awkward values.
fn full_record(msg_id: &str) -> TaskRecord {
    let one_mb: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    TaskRecord {
        msg_id: msg_id.to_owned(),
        header: Some(obj(json!({
            "msg_id": msg_id,
            "msg_type": "apply_request",
            "session": "client-session",
            "username": "ünïcødé",
            "date": "2026-11-22T17:59:21.232133Z",
            "version": "5.4",
        }))),
        metadata: Some(obj(json!({
            "after": [], "follow": ["a", "b"], "targets": [0, 1], "retries": 2,
            "timeout": 1.5, "label": "λ label", "nested": {"deep": {"deeper": [1, {"x": null}]}},
            "flag": true,
        }))),
        content: Some(obj(json!({}))),
        buffers: vec![
            Bytes::new(),
            Bytes::from_static(b"\x00\x01pickle\xff"),
            Bytes::from(one_mb),
        ],
        submitted: Some(at(0)),
        client_uuid: Some("client-session".to_owned()),
        engine_uuid: Some("4ba47f88-a7bee9fd1a286041774b1a09".to_owned()),
        started: Some(at(1)),
        completed: Some(at(2)),
        resubmitted: Some("resubmitted-id".to_owned()),
        received: Some(at(3)),
        result_header: Some(obj(
            json!({"msg_type": "apply_reply", "date": "2026-11-22T17:59:21Z"}),
        )),
        result_metadata: Some(obj(json!({"status": "ok", "engine": "e", "started": null}))),
        result_content: Some(obj(json!({"status": "ok"}))),
        result_buffers: vec![Bytes::from(all_bytes)],
        queue: Some("task".to_owned()),
        execute_input: Some("print('héllo ✓ 🚀')\n".to_owned()),
        execute_result: Some(obj(
            json!({"data": {"text/plain": "42"}, "execution_count": 1}),
        )),
        error: Some(obj(
            json!({"ename": "ValueError", "evalue": "bad ☃", "traceback": []}),
        )),
        stdout: "héllo ✓ 🚀\nline two\n".to_owned(),
        stderr: "warning: ⚠\n".to_owned(),
        label: Some("my label 日本".to_owned()),
    }
}

/// `(submitted, engine_uuid, completed, queue, label)` of one dataset record.
#[rustfmt::skip]
type DatasetRow = (Option<i64>, Option<&'static str>, Option<i64>, Option<&'static str>, Option<&'static str>);

/// Adds the five records the query checks use (`task-0` … `task-4`):
///
/// | id | submitted | engine_uuid | completed | queue | label |
/// |---|---|---|---|---|---|
/// | task-0 | t0 | engine-a | t5 | mux | alpha |
/// | task-1 | t10 | engine-b | t15 | task | – |
/// | task-2 | t20 | engine-c | – | task | beta |
/// | task-3 | t30 | – | – | task | gamma |
/// | task-4 | – | – | – | – | – |
/// A record whose objects are kept as received text, as the Hub records a request and its
/// reply: spacing, escapes and key order as a sender wrote them.
fn received_record(msg_id: &str) -> TaskRecord {
    let text = |json: String| {
        JsonObject::from_json(Bytes::from(json)).unwrap_or_else(|err| panic!("test JSON: {err}"))
    };
    TaskRecord {
        msg_id: msg_id.to_owned(),
        header: Some(text(format!(
            r#"{{ "msg_id" : "{msg_id}", "msg_type": "apply_request", "session": "s\u00e9" }}"#
        ))),
        metadata: Some(text(
            r#"{"z": [1, 2.5, null], "a": {"b": "\"quoted\""}}"#.to_owned(),
        )),
        content: Some(text("{}".to_owned())),
        result_content: Some(text(r#"{"status":"ok","note":"☃"}"#.to_owned())),
        submitted: Some(at(7)),
        ..TaskRecord::default()
    }
}

async fn add_dataset(store: &dyn Store) {
    #[rustfmt::skip]
    let rows: [DatasetRow; 5] = [
        (Some(0),  Some("engine-a"), Some(5),  Some("mux"),  Some("alpha")),
        (Some(10), Some("engine-b"), Some(15), Some("task"), None),
        (Some(20), Some("engine-c"), None,     Some("task"), Some("beta")),
        (Some(30), None,             None,     Some("task"), Some("gamma")),
        (None,     None,             None,     None,         None),
    ];
    for (n, (submitted, engine, completed, queue, label)) in rows.into_iter().enumerate() {
        let mut rec = TaskRecord::new(format!("task-{n}"));
        rec.submitted = submitted.map(at);
        rec.engine_uuid = engine.map(str::to_owned);
        rec.completed = completed.map(at);
        rec.queue = queue.map(str::to_owned);
        rec.label = label.map(str::to_owned);
        rec.client_uuid = submitted.map(|_| "client-1".to_owned());
        ok(store, &format!("add task-{n}"), store.add(rec).await);
    }
}

// ---------------------------------------------------------------------------------------
// Checks

/// Every field survives `add` then `get` (and `find`) with its type: dates to the
/// microsecond, buffers including an empty one and 1 MB, nested dicts, unset fields,
/// unicode text.
pub async fn add_then_get_round_trips_every_field(store: &dyn Store) {
    if !keeps_records(store, "add_then_get_round_trips_every_field") {
        return;
    }
    let full = full_record("full");
    let sparse = TaskRecord::new("sparse");
    let received = received_record("received");
    ok(store, "add full record", store.add(full.clone()).await);
    ok(store, "add sparse record", store.add(sparse.clone()).await);
    ok(
        store,
        "add received record",
        store.add(received.clone()).await,
    );

    for want in [&full, &sparse, &received] {
        let got = ok(store, "get", store.get(&want.msg_id).await);
        assert_same_record(store, "get after add", &got, want);

        let found = ok(
            store,
            "find by msg_id",
            store
                .find(&Query::msg_ids([want.msg_id.as_str()]), None)
                .await,
        );
        assert_eq!(
            found.len(),
            1,
            "{store}: find by msg_id {} found {} records",
            want.msg_id,
            found.len()
        );
        assert_same_record(store, "find after add", &found[0], want);
    }
}

/// `add` of a known `msg_id` fails with `AlreadyExists` and leaves the record unchanged.
pub async fn add_twice_is_already_exists(store: &dyn Store) {
    if !keeps_records(store, "add_twice_is_already_exists") {
        return;
    }
    let mut first = TaskRecord::new("dup");
    first.engine_uuid = Some("first".to_owned());
    first.submitted = Some(at(0));
    ok(store, "add", store.add(first.clone()).await);

    let mut second = TaskRecord::new("dup");
    second.engine_uuid = Some("second".to_owned());
    second.stdout = "overwritten".to_owned();
    match store.add(second).await {
        Err(Error::AlreadyExists { msg_id }) => {
            assert_eq!(
                msg_id, "dup",
                "{store}: AlreadyExists names the wrong msg_id"
            );
        }
        other => panic!("{store}: second add of \"dup\" gave {other:?}, expected AlreadyExists"),
    }
    let got = ok(store, "get after duplicate add", store.get("dup").await);
    assert_same_record(store, "after a rejected duplicate add", &got, &first);
    let history = ok(store, "history", store.history().await);
    assert_eq!(
        history,
        ["dup"],
        "{store}: history after a rejected duplicate add"
    );
}

/// `update` changes exactly the given fields; `append_stdout` / `append_stderr` append.
pub async fn update_changes_only_given_fields(store: &dyn Store) {
    if !keeps_records(store, "update_changes_only_given_fields") {
        return;
    }
    let mut want = full_record("upd");
    want.completed = None;
    want.result_buffers = Vec::new();
    want.engine_uuid = None;
    ok(store, "add", store.add(want.clone()).await);

    let updates = [
        RecordUpdate {
            engine_uuid: Some("engine-x".to_owned()),
            append_stdout: Some("more ✓".to_owned()),
            ..RecordUpdate::default()
        },
        RecordUpdate {
            completed: Some(at(9)),
            result_buffers: Some(vec![Bytes::from_static(b"result"), Bytes::new()]),
            result_content: Some(obj(json!({"status": "error", "ename": "X"}))),
            append_stdout: Some(" and more".to_owned()),
            append_stderr: Some("err".to_owned()),
            ..RecordUpdate::default()
        },
        RecordUpdate::default(),
    ];
    for (step, update) in updates.into_iter().enumerate() {
        want.apply(update.clone());
        ok(
            store,
            &format!("update step {step}"),
            store.update("upd", update).await,
        );
        let got = ok(store, "get after update", store.get("upd").await);
        assert_same_record(store, &format!("after update step {step}"), &got, &want);
    }
    let stdout = ok(store, "get", store.get("upd").await).stdout;
    assert_eq!(
        stdout, "héllo ✓ 🚀\nline two\nmore ✓ and more",
        "{store}: stdout after appends"
    );
}

/// `get` and `update` of an unknown `msg_id` fail with `NotFound` naming it.
pub async fn get_unknown_is_not_found(store: &dyn Store) {
    if !keeps_records(store, "get_unknown_is_not_found") {
        return;
    }
    ok(store, "add", store.add(TaskRecord::new("known")).await);
    match store.get("unknown").await {
        Err(Error::NotFound { msg_id }) => {
            assert_eq!(msg_id, "unknown", "{store}: NotFound names the wrong id")
        }
        other => panic!("{store}: get of an unknown id gave {other:?}, expected NotFound"),
    }
    match store.update("unknown", RecordUpdate::default()).await {
        Err(Error::NotFound { msg_id }) => {
            assert_eq!(msg_id, "unknown", "{store}: NotFound names the wrong id")
        }
        other => panic!("{store}: update of an unknown id gave {other:?}, expected NotFound"),
    }
    let found = ok(
        store,
        "find unknown",
        store.find(&Query::msg_ids(["unknown"]), None).await,
    );
    assert!(
        found.is_empty(),
        "{store}: find of an unknown id found {}",
        found.len()
    );
}

/// Every comparison operator on a string field; unset fields never order, and `$ne`
/// matches them.
pub async fn string_operators(store: &dyn Store) {
    if !keeps_records(store, "string_operators") {
        return;
    }
    add_dataset(store).await;
    let key = RecordKey::EngineUuid;
    let cases: [(&str, Condition, &[usize]); 6] = [
        ("$eq", Condition::Eq(s("engine-b")), &[1]),
        ("$ne", Condition::Ne(s("engine-b")), &[0, 2, 3, 4]),
        ("$lt", Condition::Lt(s("engine-b")), &[0]),
        ("$lte", Condition::Lte(s("engine-b")), &[0, 1]),
        ("$gt", Condition::Gt(s("engine-b")), &[2]),
        ("$gte", Condition::Gte(s("engine-b")), &[1, 2]),
    ];
    for (what, condition, expected) in cases {
        assert_finds(store, what, Query::new().and(key, condition), expected).await;
    }
    assert_finds(
        store,
        "$eq on msg_id",
        Query::new().and(RecordKey::MsgId, Condition::Eq(s("task-3"))),
        &[3],
    )
    .await;
    assert_finds(
        store,
        "$eq with no match",
        Query::new().and(key, Condition::Eq(s("engine-z"))),
        &[],
    )
    .await;
}

/// Every comparison operator on a date field, to the microsecond, also from a parsed
/// JSON query as a `db_request` carries it.
pub async fn date_operators(store: &dyn Store) {
    if !keeps_records(store, "date_operators") {
        return;
    }
    add_dataset(store).await;
    let key = RecordKey::Submitted;
    let cases: [(&str, Condition, &[usize]); 6] = [
        ("$eq", Condition::Eq(d(10)), &[1]),
        ("$ne", Condition::Ne(d(10)), &[0, 2, 3, 4]),
        ("$lt", Condition::Lt(d(10)), &[0]),
        ("$lte", Condition::Lte(d(10)), &[0, 1]),
        ("$gt", Condition::Gt(d(10)), &[2, 3]),
        ("$gte", Condition::Gte(d(10)), &[1, 2, 3]),
    ];
    for (what, condition, expected) in cases {
        assert_finds(store, what, Query::new().and(key, condition), expected).await;
    }
    // One microsecond off is another date.
    let off = QueryValue::Date(at(10) + TimeDelta::microseconds(1));
    assert_finds(
        store,
        "$eq 1 µs later",
        Query::new().and(key, Condition::Eq(off.clone())),
        &[],
    )
    .await;
    assert_finds(
        store,
        "$lt 1 µs later",
        Query::new().and(key, Condition::Lt(off)),
        &[0, 1],
    )
    .await;
    assert_finds(
        store,
        "$gt on completed",
        Query::new().and(RecordKey::Completed, Condition::Gt(d(4))),
        &[0, 1],
    )
    .await;

    let text = json!({"submitted": {"$gt": date::format(&at(0)), "$lte": date::format(&at(20))}});
    let query = match Query::from_json(&text) {
        Ok(query) => query,
        Err(err) => panic!("parsing {text}: {err}"),
    };
    assert_finds(store, "parsed date range", query, &[1, 2]).await;
}

/// Several clauses are ANDed, including several operators on one key and a plain
/// equality followed by another key (where upstream DictDB never matches).
pub async fn combined_conditions(store: &dyn Store) {
    if !keeps_records(store, "combined_conditions") {
        return;
    }
    add_dataset(store).await;
    let engine_done = |engine: &str| {
        Query::new()
            .and(RecordKey::EngineUuid, Condition::Eq(s(engine)))
            .and(RecordKey::Completed, Condition::Ne(QueryValue::Null))
    };
    assert_finds(
        store,
        "engine-b and completed",
        engine_done("engine-b"),
        &[1],
    )
    .await;
    assert_finds(
        store,
        "engine-c and completed",
        engine_done("engine-c"),
        &[],
    )
    .await;

    let range = Query::new()
        .and(RecordKey::Submitted, Condition::Gte(d(10)))
        .and(RecordKey::Submitted, Condition::Lt(d(30)));
    assert_finds(store, "date range", range, &[1, 2]).await;

    let two_keys = Query::new()
        .and(RecordKey::Queue, Condition::Eq(s("task")))
        .and(RecordKey::Label, Condition::Eq(s("beta")));
    assert_finds(store, "queue and label", two_keys, &[2]).await;

    let pending = Query::new()
        .and(RecordKey::Completed, Condition::Eq(QueryValue::Null))
        .and(RecordKey::Submitted, Condition::Ne(QueryValue::Null));
    assert_finds(store, "submitted and not completed", pending, &[2, 3]).await;

    let text = json!({"engine_uuid": "engine-a", "completed": {"$ne": null}});
    let query = match Query::from_json(&text) {
        Ok(query) => query,
        Err(err) => panic!("parsing {text}: {err}"),
    };
    assert_finds(store, "parsed per-engine purge query", query, &[0]).await;
}

/// `$in` and `$nin` on strings and dates, with `null` in the list meaning "unset", and
/// empty lists.
pub async fn in_and_nin(store: &dyn Store) {
    if !keeps_records(store, "in_and_nin") {
        return;
    }
    add_dataset(store).await;
    let engine = RecordKey::EngineUuid;
    #[rustfmt::skip]
    let cases: [(&str, RecordKey, Condition, &[usize]); 9] = [
        ("msg_id $in", RecordKey::MsgId, Condition::In(vec![s("task-1"), s("task-3"), s("nope")]), &[1, 3]),
        ("$in", engine, Condition::In(vec![s("engine-a"), s("engine-c")]), &[0, 2]),
        ("$in with null", engine, Condition::In(vec![s("engine-a"), QueryValue::Null]), &[0, 3, 4]),
        ("$nin", engine, Condition::Nin(vec![s("engine-a"), s("engine-c")]), &[1, 3, 4]),
        ("$nin with null", engine, Condition::Nin(vec![s("engine-a"), QueryValue::Null]), &[1, 2]),
        ("empty $in", engine, Condition::In(vec![]), &[]),
        ("empty $nin", engine, Condition::Nin(vec![]), &[0, 1, 2, 3, 4]),
        ("dates $in", RecordKey::Submitted, Condition::In(vec![d(0), d(20)]), &[0, 2]),
        ("dates $nin", RecordKey::Submitted, Condition::Nin(vec![d(0), d(20)]), &[1, 3, 4]),
    ];
    for (what, key, condition, expected) in cases {
        assert_finds(store, what, Query::new().and(key, condition), expected).await;
    }
}

/// `$ne: null` means the field is set and `null` equality means it is unset.
pub async fn ne_null_means_present(store: &dyn Store) {
    if !keeps_records(store, "ne_null_means_present") {
        return;
    }
    add_dataset(store).await;
    let cases: [(RecordKey, bool, &[usize]); 8] = [
        (RecordKey::Completed, true, &[0, 1]),
        (RecordKey::Completed, false, &[2, 3, 4]),
        (RecordKey::EngineUuid, true, &[0, 1, 2]),
        (RecordKey::EngineUuid, false, &[3, 4]),
        (RecordKey::Label, true, &[0, 2, 3]),
        (RecordKey::Label, false, &[1, 4]),
        (RecordKey::Submitted, true, &[0, 1, 2, 3]),
        (RecordKey::Submitted, false, &[4]),
    ];
    for (key, present, expected) in cases {
        let (what, condition) = if present {
            (format!("{key} $ne null"), Condition::Ne(QueryValue::Null))
        } else {
            (format!("{key} = null"), Condition::Eq(QueryValue::Null))
        };
        assert_finds(store, &what, Query::new().and(key, condition), expected).await;
    }
}

/// `find` with keys returns `msg_id` and the requested fields with their values.
pub async fn key_projection(store: &dyn Store) {
    if !keeps_records(store, "key_projection") {
        return;
    }
    let full = full_record("proj");
    ok(store, "add", store.add(full.clone()).await);
    add_dataset(store).await;

    let keysets: [&[RecordKey]; 4] = [
        &[],
        &[RecordKey::EngineUuid, RecordKey::Submitted],
        &[
            RecordKey::Buffers,
            RecordKey::ResultBuffers,
            RecordKey::Stdout,
        ],
        &[
            RecordKey::Header,
            RecordKey::Completed,
            RecordKey::Label,
            RecordKey::MsgId,
        ],
    ];
    for keys in keysets {
        let found = ok(
            store,
            "find with keys",
            store.find(&Query::msg_ids(["proj"]), Some(keys)).await,
        );
        assert_eq!(
            found.len(),
            1,
            "{store}: find with keys {keys:?} found {} records",
            found.len()
        );
        let got = &found[0];
        assert_eq!(
            got.msg_id, "proj",
            "{store}: find with keys {keys:?} lost msg_id"
        );
        for &key in keys {
            assert!(
                got.value(key) == full.value(key),
                "{store}: find with keys {keys:?}: field {key} is {}, expected {}",
                describe(got, key),
                describe(&full, key),
            );
        }
    }

    let all = ok(
        store,
        "find all with keys",
        store.find(&Query::all(), Some(&[RecordKey::Queue])).await,
    );
    let mut want = task_ids(&[0, 1, 2, 3, 4]);
    want.push("proj".to_owned());
    want.sort();
    assert_eq!(sorted_ids(&all), want, "{store}: find all with keys");
    for rec in &all {
        if let Some(n) = rec.msg_id.strip_prefix("task-") {
            let expected = if n == "0" {
                Some("mux")
            } else if n == "4" {
                None
            } else {
                Some("task")
            };
            assert_eq!(
                rec.queue.as_deref(),
                expected,
                "{store}: projected queue of {}",
                rec.msg_id
            );
        }
    }
}

/// `drop_matching` removes exactly the matching records and counts them.
pub async fn drop_matching(store: &dyn Store) {
    if !keeps_records(store, "drop_matching") {
        return;
    }
    add_dataset(store).await;
    let engine_done = Query::new()
        .and(RecordKey::EngineUuid, Condition::Eq(s("engine-a")))
        .and(RecordKey::Completed, Condition::Ne(QueryValue::Null));
    let dropped = ok(
        store,
        "drop engine-a's completed",
        store.drop_matching(&engine_done).await,
    );
    assert_eq!(
        dropped, 1,
        "{store}: drop_matching of engine-a's completed records"
    );
    assert_finds(
        store,
        "all after the per-engine drop",
        Query::all(),
        &[1, 2, 3, 4],
    )
    .await;

    let completed = Query::new().and(RecordKey::Completed, Condition::Ne(QueryValue::Null));
    let dropped = ok(
        store,
        "drop completed",
        store.drop_matching(&completed).await,
    );
    assert_eq!(
        dropped, 1,
        "{store}: drop_matching of the completed records"
    );
    let dropped = ok(
        store,
        "drop completed again",
        store.drop_matching(&completed).await,
    );
    assert_eq!(
        dropped, 0,
        "{store}: a second drop_matching found records again"
    );
    assert_finds(
        store,
        "all after dropping the completed",
        Query::all(),
        &[2, 3, 4],
    )
    .await;

    match store.get("task-1").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{store}: get of a dropped record gave {other:?}, expected NotFound"),
    }
    let history = ok(store, "history", store.history().await);
    assert_eq!(
        history,
        task_ids(&[2, 3]),
        "{store}: history after drop_matching"
    );
}

/// `drop_records` removes the listed records and ignores unknown ids.
pub async fn drop_records(store: &dyn Store) {
    if !keeps_records(store, "drop_records") {
        return;
    }
    add_dataset(store).await;
    let ids = vec![
        "task-1".to_owned(),
        "task-3".to_owned(),
        "unknown".to_owned(),
    ];
    ok(store, "drop_records", store.drop_records(&ids).await);
    assert_finds(store, "all after drop_records", Query::all(), &[0, 2, 4]).await;
    ok(
        store,
        "drop_records of no ids",
        store.drop_records(&[]).await,
    );
    assert_finds(
        store,
        "all after an empty drop_records",
        Query::all(),
        &[0, 2, 4],
    )
    .await;
    let history = ok(store, "history", store.history().await);
    assert_eq!(
        history,
        task_ids(&[0, 2]),
        "{store}: history after drop_records"
    );
    match store.get("task-3").await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("{store}: get of a dropped record gave {other:?}, expected NotFound"),
    }
}

/// `history` lists the records with a `submitted` date, oldest first, whatever the order
/// they were added in, and `find` lists them in that order too; a record that gains its
/// `submitted` by update takes its place.
pub async fn history_in_submission_order(store: &dyn Store) {
    if !keeps_records(store, "history_in_submission_order") {
        return;
    }
    let adds: [(&str, Option<Timestamp>); 5] = [
        ("late", Some(at(30))),
        ("early", Some(at(0))),
        ("stub", None),
        ("mid-2", Some(at(10) + TimeDelta::microseconds(1))),
        ("mid", Some(at(10))),
    ];
    for (id, submitted) in adds {
        let mut rec = TaskRecord::new(id);
        rec.submitted = submitted;
        ok(store, &format!("add {id}"), store.add(rec).await);
    }
    let history = ok(store, "history", store.history().await);
    assert_eq!(
        history,
        ["early", "mid", "mid-2", "late"],
        "{store}: history order"
    );

    let found = ok(store, "find all", store.find(&Query::all(), None).await);
    let dated: Vec<&str> = found
        .iter()
        .filter(|rec| rec.submitted.is_some())
        .map(|rec| rec.msg_id.as_str())
        .collect();
    assert_eq!(
        dated,
        ["early", "mid", "mid-2", "late"],
        "{store}: find order"
    );

    let update = RecordUpdate {
        submitted: Some(at(5)),
        ..RecordUpdate::default()
    };
    ok(
        store,
        "update stub's submitted",
        store.update("stub", update).await,
    );
    let history = ok(store, "history after update", store.history().await);
    assert_eq!(
        history,
        ["early", "stub", "mid", "mid-2", "late"],
        "{store}: history after a record gained its date"
    );
}

/// 10,000 records (the store must hold that many without culling); a date range selects
/// the right count, in submission order.
pub async fn find_10k_records(store: &dyn Store) {
    if !keeps_records(store, "find_10k_records") {
        return;
    }
    const COUNT: i64 = 10_000;
    for i in 0..COUNT {
        let mut rec = TaskRecord::new(format!("bulk-{i:05}"));
        rec.submitted = Some(at(i));
        rec.engine_uuid = Some(format!("engine-{}", i % 4));
        rec.completed = (i % 2 == 1).then(|| at(i + 1));
        ok(store, "add", store.add(rec).await);
    }
    let range = Query::new()
        .and(RecordKey::Submitted, Condition::Gte(d(2_000)))
        .and(RecordKey::Submitted, Condition::Lt(d(5_000)));
    let found = ok(
        store,
        "find date range",
        store.find(&range, Some(&[RecordKey::Submitted])).await,
    );
    assert_eq!(found.len(), 3_000, "{store}: records in [t2000, t5000)");
    let in_order = found
        .windows(2)
        .all(|pair| pair[0].submitted < pair[1].submitted);
    assert!(
        in_order,
        "{store}: find over 10k records is not in submission order"
    );
    assert_eq!(
        found.first().map(|rec| rec.msg_id.as_str()),
        Some("bulk-02000")
    );

    let done_on_engine_1 = range
        .and(RecordKey::Completed, Condition::Ne(QueryValue::Null))
        .and(RecordKey::EngineUuid, Condition::Eq(s("engine-1")));
    let found = ok(
        store,
        "find combined",
        store.find(&done_on_engine_1, Some(&[])).await,
    );
    assert_eq!(
        found.len(),
        750,
        "{store}: completed records on engine-1 in [t2000, t5000)"
    );

    let history = ok(store, "history", store.history().await);
    assert_eq!(history.len(), COUNT as usize, "{store}: history length");
}

/// A message as a transport hands it over: routing id, delimiter, signature, the four
/// packed parts and `buffers`.
fn wire(parts: [&str; 4], buffers: Vec<Bytes>) -> WireMessage {
    let mut frames = vec![
        Bytes::from_static(b"client"),
        Bytes::from_static(b"<IDS|MSG>"),
        Bytes::new(),
    ];
    frames.extend(parts.map(|part| Bytes::copy_from_slice(part.as_bytes())));
    frames.extend(buffers);
    WireMessage::split(frames).unwrap_or_else(|err| panic!("test message: {err}"))
}

/// A load-balanced task's request as the Hub hands it to [`Store::add_received`]: from
/// session `client-s`, labelled `λ`, with a small buffer and one of 100 kB.
pub fn received_request(msg_id: &str) -> ReceivedRequest {
    let header = format!(
        r#"{{"msg_id": "{msg_id}", "msg_type": "apply_request", "session": "client-s",
            "date": "2026-11-22T17:59:21.232133Z"}}"#
    );
    let parts = [
        header.as_str(),
        "{}",
        r#"{"label": "\u03bb", "after": []}"#,
        "{}",
    ];
    let large: Bytes = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let buffers = vec![Bytes::from_static(b"\x00pickled"), large];
    ReceivedRequest::new(
        msg_id.to_owned(),
        wire(parts, buffers),
        ReadFields::default(),
        "task",
        None,
    )
}

/// The reply to task `msg_id` as the Hub hands it to [`Store::update_received`]: from
/// engine `engine-2`, status `ok`, with one small buffer; received now.
pub fn received_result(msg_id: &str) -> ReceivedResult {
    let parent = format!(r#"{{"msg_id": "{msg_id}"}}"#);
    let parts = [
        r#"{"msg_id": "rp", "msg_type": "apply_reply", "date": "2026-11-22T17:59:22.5Z"}"#,
        parent.as_str(),
        r#"{"engine": "engine-2", "started": "2026-11-22T17:59:22.000001Z", "status": "ok"}"#,
        r#"{"status": "ok", "note": "\u2603"}"#,
    ];
    let buffers = vec![Bytes::from_static(b"result")];
    ReceivedResult::new(
        msg_id.to_owned(),
        wire(parts, buffers),
        ReadFields::default(),
    )
}

/// `add_received` and `update_received` record a request and its reply as the Hub received
/// them, as `add` of the request's record and `update` with the reply's update would
/// (whichever thread the store builds them on); their id checks are `add`'s and `update`'s.
pub async fn received_messages_are_recorded(store: &dyn Store) {
    if !keeps_records(store, "received_messages_are_recorded") {
        return;
    }
    let mut want = received_request("rq").into_record();
    assert_eq!(
        want.client_uuid.as_deref(),
        Some("client-s"),
        "test request"
    );
    assert_eq!(want.label.as_deref(), Some("λ"), "test request");
    assert!(want.submitted.is_some(), "test request");
    ok(
        store,
        "add_received",
        store.add_received(received_request("rq")).await,
    );
    let got = ok(store, "get after add_received", store.get("rq").await);
    assert_same_record(store, "after add_received", &got, &want);
    match store.add_received(received_request("rq")).await {
        Err(Error::AlreadyExists { msg_id }) => {
            assert_eq!(
                msg_id, "rq",
                "{store}: AlreadyExists names the wrong msg_id"
            );
        }
        other => {
            panic!("{store}: add_received of a known id gave {other:?}, expected AlreadyExists")
        }
    }

    let assignment = RecordUpdate {
        engine_uuid: Some("engine-1".to_owned()),
        ..RecordUpdate::default()
    };
    want.apply(assignment.clone());
    ok(store, "update engine", store.update("rq", assignment).await);
    let before = date::now();
    let result = received_result("rq");
    let after = date::now();
    let (_, update) = received_result("rq").into_update();
    assert_eq!(
        update.engine_uuid.as_deref(),
        Some("engine-2"),
        "test reply"
    );
    want.apply(update);
    ok(
        store,
        "update_received",
        store.update_received(result).await,
    );
    let got = ok(store, "get after update_received", store.get("rq").await);
    let received = got
        .received
        .unwrap_or_else(|| panic!("{store}: no received date"));
    let micros = |at: Timestamp| at.timestamp_micros();
    assert!(
        micros(before) <= micros(received) && micros(received) <= micros(after),
        "{store}: received {received} is not when the reply was received ({before} … {after})"
    );
    want.received = Some(received);
    assert_same_record(store, "after update_received", &got, &want);
    match store.update_received(received_result("unknown")).await {
        Err(Error::NotFound { msg_id }) => {
            assert_eq!(msg_id, "unknown", "{store}: NotFound names the wrong id");
        }
        other => {
            panic!("{store}: update_received of an unknown id gave {other:?}, expected NotFound")
        }
    }
}

/// A store that keeps no records answers every read with `Unsupported`, and accepts
/// writes. (Stores that keep records are exempt.)
pub async fn nodb_answers_reads_with_unsupported(store: &dyn Store) {
    if store.capabilities().records {
        tracing::info!(store = %store, "store keeps records; nodb_answers_reads_with_unsupported does not apply");
        return;
    }
    ok(store, "add", store.add(full_record("n")).await);
    ok(
        store,
        "update",
        store.update("n", RecordUpdate::default()).await,
    );
    ok(
        store,
        "drop_records",
        store.drop_records(&["n".to_owned()]).await,
    );
    let unsupported = |what: &str, err: Option<Error>| match err {
        Some(Error::Unsupported { .. }) => {}
        other => panic!("{store}: {what} gave {other:?}, expected Unsupported"),
    };
    unsupported("get", store.get("n").await.err());
    unsupported("find", store.find(&Query::all(), None).await.err());
    unsupported("history", store.history().await.err());
}
