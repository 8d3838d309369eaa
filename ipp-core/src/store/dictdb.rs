//! [`DictDb`]: the default, in-memory task database, with ipyparallel's culling limits.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Query, RecordKey, RecordUpdate, Store, StoreCapabilities, TaskRecord};
use crate::error::{Error, Result};
use crate::protocol::Timestamp;

/// How many culled `msg_id`s [`DictDb`] remembers, so that reading one says "culled"
/// rather than "not found". Older ones are forgotten and then read as not found.
const CULLED_MEMORY: usize = 100_000;

/// Settings for [`DictDb`]: the `[store]` table when `db = "dictdb"`.
///
/// Names and defaults are ipyparallel's `DictDB.record_limit`, `size_limit` and
/// `cull_fraction`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DictDbConfig {
    /// How many records to keep before culling the oldest completed ones. Default: 1024.
    pub record_limit: usize,
    /// How many bytes of `buffers` + `result_buffers` to keep before culling the oldest
    /// completed records. Default: 1 GiB.
    pub size_limit: u64,
    /// The share of `record_limit` culled at once when it is exceeded; a size cull goes
    /// down to `size_limit × (1 - cull_fraction)`. Between 0 (exclusive) and 1. Default: 0.1.
    pub cull_fraction: f64,
}

impl Default for DictDbConfig {
    fn default() -> Self {
        Self {
            record_limit: 1024,
            size_limit: 1 << 30,
            cull_fraction: 0.1,
        }
    }
}

impl DictDbConfig {
    /// Sets [`DictDbConfig::record_limit`].
    #[must_use]
    pub fn with_record_limit(mut self, record_limit: usize) -> Self {
        self.record_limit = record_limit;
        self
    }

    /// Sets [`DictDbConfig::size_limit`] (bytes).
    #[must_use]
    pub fn with_size_limit(mut self, size_limit: u64) -> Self {
        self.size_limit = size_limit;
        self
    }

    /// Sets [`DictDbConfig::cull_fraction`].
    #[must_use]
    pub fn with_cull_fraction(mut self, cull_fraction: f64) -> Self {
        self.cull_fraction = cull_fraction;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key when `record_limit` is 0 or `cull_fraction` is not
    /// in `(0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if self.record_limit == 0 {
            return Err(Error::Config(
                "dictdb record_limit must be at least 1".to_owned(),
            ));
        }
        if !(self.cull_fraction > 0.0 && self.cull_fraction <= 1.0) {
            return Err(Error::Config(format!(
                "dictdb cull_fraction must be above 0 and at most 1, got {}",
                self.cull_fraction
            )));
        }
        Ok(())
    }
}

/// The in-memory task database, ipyparallel's `DictDB` and the default store.
///
/// Records live in a map in insertion order behind a std mutex that is only held inside
/// each method (never across an `.await`). `find` returns records ordered by `submitted`
/// (records without one last), ties in insertion order.
///
/// # Culling
/// As in ipyparallel, when a record is added or updated and the store holds more than
/// `record_limit` records, the oldest (by `submitted`) `cull_fraction × record_limit` are
/// dropped; when `buffers` + `result_buffers` exceed `size_limit` bytes, the oldest are
/// dropped until the total is below `size_limit × (1 - cull_fraction)`.
///
/// Unlike ipyparallel, only **completed** records (with `completed` set) are ever culled: a
/// pending task's record is still needed to record its result, so the limits can be
/// exceeded while that many tasks are pending (logged once at `warn` until the store is back
/// under its limits). Then completed records are culled in batches of at least
/// `cull_fraction × record_limit` as they accumulate, not one per finished task, so the
/// store holds at most that many completed records beyond the limit. Culling is logged at
/// `info` with the count and the reason (at most one line every 10 s; each cull at `debug`),
/// and the last 100,000 culled ids are remembered: `get` or `update` of one fails with
/// [`Error::Culled`] instead of [`Error::NotFound`].
#[derive(Debug)]
pub struct DictDb {
    config: DictDbConfig,
    inner: Mutex<Inner>,
}

/// What the mutex guards.
#[derive(Debug, Default)]
struct Inner {
    /// Records by insertion sequence number.
    records: BTreeMap<u64, TaskRecord>,
    /// `msg_id` → sequence number in `records`.
    index: HashMap<String, u64>,
    /// The completed records, in culling order: oldest `submitted` first (unset first),
    /// ties by insertion. Culling takes from the front without scanning every record.
    completed: BTreeSet<CullKey>,
    /// The next sequence number.
    next_seq: u64,
    /// Sum of [`TaskRecord::buffer_size`] over `records`.
    buffer_bytes: u64,
    /// Recently culled ids and the reason, bounded by [`CULLED_MEMORY`].
    culled: HashMap<String, &'static str>,
    /// The ids in `culled`, oldest first, to forget the oldest.
    culled_order: VecDeque<String>,
    /// Whether we already warned that limits are exceeded by pending records alone (reset
    /// when the store is back under its limits).
    warned_uncullable: bool,
    /// When culling was last logged at `info`, and how many culls were not logged since.
    cull_log: Option<Instant>,
    unlogged_culls: usize,
}

/// The least time between two `info` lines about culling.
const CULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl DictDb {
    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self {
            config: DictDbConfig::default(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// An empty store with these limits.
    ///
    /// # Errors
    /// [`Error::Config`] if the config is invalid (see [`DictDbConfig::validate`]).
    pub fn with_config(config: DictDbConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The limits in force.
    pub fn config(&self) -> &DictDbConfig {
        &self.config
    }

    /// How many records are held.
    pub fn len(&self) -> Result<usize> {
        Ok(self.lock("len")?.records.len())
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Total bytes of `buffers` + `result_buffers` held.
    pub fn buffer_bytes(&self) -> Result<u64> {
        Ok(self.lock("buffer_bytes")?.buffer_bytes)
    }

    /// Locks the records. A poisoned lock (a panic while it was held) is reported, not
    /// trusted: the state it guards may be half-changed.
    fn lock(&self, operation: &'static str) -> Result<MutexGuard<'_, Inner>> {
        self.inner.lock().map_err(|_| Error::Backend {
            backend: "dictdb",
            operation,
            source: "the record lock was poisoned by an earlier panic".into(),
        })
    }
}

impl Default for DictDb {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DictDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dictdb")
    }
}

/// A completed record's place in the culling order.
type CullKey = (Option<Timestamp>, u64);

/// The culling key of the record at `seq`, if it is completed.
fn cull_key(seq: u64, record: &TaskRecord) -> Option<CullKey> {
    record.completed.map(|_| (record.submitted, seq))
}

impl Inner {
    fn get(&self, msg_id: &str) -> Option<&TaskRecord> {
        self.index.get(msg_id).and_then(|seq| self.records.get(seq))
    }

    /// The error for a `msg_id` that is not held: culled if we remember culling it.
    fn missing(&self, msg_id: &str) -> Error {
        match self.culled.get(msg_id) {
            Some(reason) => Error::Culled {
                msg_id: msg_id.to_owned(),
                reason: (*reason).to_owned(),
            },
            None => Error::NotFound {
                msg_id: msg_id.to_owned(),
            },
        }
    }

    fn remove(&mut self, msg_id: &str) -> Option<TaskRecord> {
        let seq = self.index.remove(msg_id)?;
        let record = self.records.remove(&seq)?;
        if let Some(key) = cull_key(seq, &record) {
            self.completed.remove(&key);
        }
        self.buffer_bytes = self.buffer_bytes.saturating_sub(record.buffer_size());
        Some(record)
    }

    fn remember_culled(&mut self, msg_id: String, reason: &'static str) {
        if self.culled.insert(msg_id.clone(), reason).is_none() {
            self.culled_order.push_back(msg_id);
        }
        while self.culled_order.len() > CULLED_MEMORY {
            if let Some(old) = self.culled_order.pop_front() {
                self.culled.remove(&old);
            }
        }
    }

    /// Up to `limit` completed records' ids in culling order (see `Inner::completed`).
    fn cull_candidates(&self, limit: usize) -> Vec<String> {
        self.completed
            .iter()
            .take(limit)
            .filter_map(|(_, seq)| self.records.get(seq))
            .map(|record| record.msg_id.clone())
            .collect()
    }

    /// Applies both limits (see [`DictDb`]'s culling rules).
    fn maybe_cull(&mut self, config: &DictDbConfig) {
        if self.records.len() <= config.record_limit && self.buffer_bytes <= config.size_limit {
            self.warned_uncullable = false;
            return;
        }
        if self.records.len() > config.record_limit {
            // At least what brings us back to the limit, and at least one record; when
            // pending records alone exceed the limit, wait for a whole share of completed
            // ones (one cull per finished task would cost each task a scan and a log line).
            let share = ((config.cull_fraction * config.record_limit as f64) as usize).max(1);
            let wanted = share.max(self.records.len() - config.record_limit);
            let available = self.completed.len();
            let batch = if available >= share {
                wanted.min(available)
            } else {
                0
            };
            let mut culled = 0;
            for msg_id in self.cull_candidates(batch) {
                self.remove(&msg_id);
                self.remember_culled(msg_id, "record limit exceeded");
                culled += 1;
            }
            self.report(culled, "record_limit", config.record_limit as u64);
        }
        if self.buffer_bytes > config.size_limit {
            let target = (config.size_limit as f64 * (1.0 - config.cull_fraction)) as u64;
            let mut culled = 0;
            while self.buffer_bytes > target {
                let Some(msg_id) = self.cull_candidates(1).pop() else {
                    break;
                };
                self.remove(&msg_id);
                self.remember_culled(msg_id, "buffer size limit exceeded");
                culled += 1;
            }
            self.report(culled, "size_limit", config.size_limit);
        }
    }

    /// Logs a cull (at `info` at most every [`CULL_LOG_INTERVAL`]), or (once until the store
    /// is back under its limits) that not enough could be culled.
    fn report(&mut self, culled: usize, limit: &'static str, value: u64) {
        if culled > 0 {
            tracing::debug!(culled, reason = limit, "culled task records");
            self.unlogged_culls += culled;
            if self
                .cull_log
                .is_none_or(|last| last.elapsed() >= CULL_LOG_INTERVAL)
            {
                tracing::info!(
                    culled = self.unlogged_culls,
                    reason = limit,
                    limit = value,
                    records = self.records.len(),
                    buffer_bytes = self.buffer_bytes,
                    "culled the oldest completed task records"
                );
                self.cull_log = Some(Instant::now());
                self.unlogged_culls = 0;
            }
        } else if !self.warned_uncullable {
            self.warned_uncullable = true;
            tracing::warn!(
                reason = limit,
                limit = value,
                records = self.records.len(),
                buffer_bytes = self.buffer_bytes,
                "task database is over its limit while its records are mostly of pending tasks; \
                 completed ones are culled in batches as tasks finish"
            );
        }
    }

    /// Matching records ordered by `submitted` (unset last), ties by insertion.
    fn matching<'a>(&'a self, query: &'a Query) -> Vec<&'a TaskRecord> {
        let mut found: Vec<&TaskRecord> = self
            .records
            .values()
            .filter(|rec| query.matches(rec))
            .collect();
        // Stable sort: insertion order breaks ties.
        found.sort_by_key(|rec| (rec.submitted.is_none(), rec.submitted));
        found
    }
}

#[async_trait]
impl Store for DictDb {
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities { records: true }
    }

    async fn add(&self, record: TaskRecord) -> Result<()> {
        let mut inner = self.lock("add")?;
        if inner.index.contains_key(&record.msg_id) {
            return Err(Error::AlreadyExists {
                msg_id: record.msg_id,
            });
        }
        // A culled id that comes back (e.g. re-added by hand) is live again.
        if inner.culled.remove(&record.msg_id).is_some() {
            inner.culled_order.retain(|id| *id != record.msg_id);
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.buffer_bytes += record.buffer_size();
        inner.index.insert(record.msg_id.clone(), seq);
        if let Some(key) = cull_key(seq, &record) {
            inner.completed.insert(key);
        }
        inner.records.insert(seq, record);
        inner.maybe_cull(&self.config);
        Ok(())
    }

    async fn update(&self, msg_id: &str, update: RecordUpdate) -> Result<()> {
        let mut inner = self.lock("update")?;
        let seq = match inner.index.get(msg_id) {
            Some(seq) => *seq,
            None => return Err(inner.missing(msg_id)),
        };
        let Some(record) = inner.records.get_mut(&seq) else {
            return Err(inner.missing(msg_id));
        };
        let before = record.buffer_size();
        let old_key = cull_key(seq, record);
        record.apply(update);
        let after = record.buffer_size();
        let new_key = cull_key(seq, record);
        if old_key != new_key {
            if let Some(key) = old_key {
                inner.completed.remove(&key);
            }
            if let Some(key) = new_key {
                inner.completed.insert(key);
            }
        }
        inner.buffer_bytes = inner.buffer_bytes.saturating_sub(before) + after;
        // Results arrive by update, so this is where buffers grow and records complete.
        inner.maybe_cull(&self.config);
        Ok(())
    }

    async fn get(&self, msg_id: &str) -> Result<TaskRecord> {
        let inner = self.lock("get")?;
        inner
            .get(msg_id)
            .cloned()
            .ok_or_else(|| inner.missing(msg_id))
    }

    async fn find(&self, query: &Query, keys: Option<&[RecordKey]>) -> Result<Vec<TaskRecord>> {
        let inner = self.lock("find")?;
        let found = inner.matching(query);
        Ok(match keys {
            Some(keys) => found.into_iter().map(|rec| rec.project(keys)).collect(),
            None => found.into_iter().cloned().collect(),
        })
    }

    async fn drop_matching(&self, query: &Query) -> Result<usize> {
        let mut inner = self.lock("drop_matching")?;
        let ids: Vec<String> = inner
            .records
            .values()
            .filter(|rec| query.matches(rec))
            .map(|rec| rec.msg_id.clone())
            .collect();
        for id in &ids {
            inner.remove(id);
        }
        Ok(ids.len())
    }

    async fn drop_records(&self, msg_ids: &[String]) -> Result<()> {
        let mut inner = self.lock("drop_records")?;
        for id in msg_ids {
            inner.remove(id);
        }
        Ok(())
    }

    async fn history(&self) -> Result<Vec<String>> {
        let inner = self.lock("history")?;
        let mut dated: Vec<(Timestamp, u64, &str)> = inner
            .records
            .iter()
            .filter_map(|(seq, rec)| Some((rec.submitted?, *seq, rec.msg_id.as_str())))
            .collect();
        dated.sort_unstable();
        Ok(dated.into_iter().map(|(_, _, id)| id.to_owned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use bytes::Bytes;
    use chrono::TimeDelta;

    use super::*;
    use crate::store::{Condition, QueryValue};
    use crate::testing::store as suite;

    /// A DictDb large enough for every conformance check (`find_10k_records`).
    fn conformance_store() -> DictDb {
        DictDb::with_config(DictDbConfig::default().with_record_limit(100_000)).unwrap()
    }

    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $check() {
                suite::$check(&conformance_store()).await;
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

    #[tokio::test]
    async fn run_all_passes_on_a_shared_arc() {
        suite::run_all(|| async { Arc::new(conformance_store()) }).await;
    }

    fn at(secs: i64) -> Timestamp {
        crate::protocol::date::parse("2026-01-01T00:00:00Z").unwrap() + TimeDelta::seconds(secs)
    }

    fn record(n: i64, completed: bool, bytes: usize) -> TaskRecord {
        let mut rec = TaskRecord::new(format!("m{n}"));
        rec.submitted = Some(at(n));
        rec.completed = completed.then(|| at(n + 1));
        if bytes > 0 {
            rec.result_buffers = vec![Bytes::from(vec![0u8; bytes])];
        }
        rec
    }

    /// Collects the text of `info`/`warn` events (message and fields) while `f` runs.
    fn capture_logs(f: impl FnOnce()) -> Vec<String> {
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata, Subscriber};

        struct Capture(Arc<StdMutex<Vec<String>>>);
        struct Text(String);
        impl Visit for Text {
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", field.name(), value));
            }
        }
        impl Subscriber for Capture {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut text = Text(format!("{} ", event.metadata().level()));
                event.record(&mut text);
                self.0.lock().unwrap().push(text.0);
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        /// Interested in every callsite, enabled for nothing: alive for the whole test
        /// process, so that a callsite another test thread registers (with no subscriber
        /// of its own) never caches "never", which a rebuild cannot correct when the
        /// registration straddles it.
        struct KeepInterest;
        impl Subscriber for KeepInterest {
            fn register_callsite(
                &self,
                _: &'static Metadata<'static>,
            ) -> tracing::subscriber::Interest {
                tracing::subscriber::Interest::sometimes()
            }
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                false
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        static KEEP_INTEREST: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEP_INTEREST.get_or_init(|| tracing::Dispatch::new(KeepInterest));

        let lines = Arc::new(StdMutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(Arc::clone(&lines)), || {
            // A callsite first hit by another test thread before `KEEP_INTEREST` existed
            // may have cached "never"; recompute with ours in place.
            tracing::callsite::rebuild_interest_cache();
            f();
        });
        let lines = lines.lock().unwrap().clone();
        lines
    }

    #[test]
    fn config_defaults_match_ipyparallel_and_unknown_keys_are_rejected() {
        let config = DictDbConfig::default();
        assert_eq!(
            (config.record_limit, config.size_limit, config.cull_fraction),
            (1024, 1 << 30, 0.1)
        );
        let parsed: DictDbConfig = serde_json::from_str(r#"{"record_limit": 5}"#).unwrap();
        assert_eq!(parsed, DictDbConfig::default().with_record_limit(5));
        let err = serde_json::from_str::<DictDbConfig>(r#"{"records": 5}"#).unwrap_err();
        assert!(err.to_string().contains("records"), "{err}");
        for bad in [
            DictDbConfig::default().with_record_limit(0),
            DictDbConfig::default().with_cull_fraction(0.0),
            DictDbConfig::default().with_cull_fraction(1.5),
            DictDbConfig::default().with_cull_fraction(f64::NAN),
        ] {
            assert!(matches!(DictDb::with_config(bad), Err(Error::Config(_))));
        }
        assert_eq!(DictDb::new().to_string(), "dictdb");
    }

    #[test]
    fn record_limit_culls_the_oldest_completed_share_and_logs_it() {
        let db = DictDb::with_config(DictDbConfig::default().with_record_limit(10)).unwrap();
        let logs = capture_logs(|| {
            futures::executor::block_on(async {
                // Added newest-first, so insertion order is not submission order.
                for n in (0..11).rev() {
                    db.add(record(n, true, 0)).await.unwrap();
                }
            });
        });
        // 11 > 10: cull max(10 × 0.1, 11 - 10) = 1, the oldest by `submitted`.
        assert_eq!(db.len().unwrap(), 10);
        let culled = futures::executor::block_on(db.get("m0")).unwrap_err();
        match culled {
            Error::Culled { msg_id, reason } => {
                assert_eq!(msg_id, "m0");
                assert!(reason.contains("record limit"), "{reason}");
            }
            other => panic!("expected Culled, got {other:?}"),
        }
        let update = futures::executor::block_on(db.update("m0", RecordUpdate::new()));
        assert!(matches!(update, Err(Error::Culled { .. })), "{update:?}");
        assert!(
            logs.iter().any(|line| line.starts_with("INFO")
                && line.contains("culled=1")
                && line.contains("record_limit")),
            "{logs:?}"
        );
    }

    #[test]
    fn many_pending_tasks_are_culled_in_batches_with_few_log_lines() {
        // limit 100, share 10: 300 tasks in flight, then they finish one by one.
        let db = DictDb::with_config(DictDbConfig::default().with_record_limit(100)).unwrap();
        let mut most_held = 0;
        let logs = capture_logs(|| {
            futures::executor::block_on(async {
                for n in 0..300 {
                    db.add(record(n, false, 0)).await.unwrap();
                }
                for n in 0..300 {
                    let mut done = RecordUpdate::new();
                    done.completed = Some(at(n + 1));
                    db.update(&format!("m{n}"), done).await.unwrap();
                    let pending = 300 - (n as usize + 1);
                    let held = db.len().unwrap();
                    // Never more than a share of completed records beyond the limit.
                    assert!(
                        held <= 100.max(pending) + 10,
                        "{held} held, {pending} pending"
                    );
                    most_held = most_held.max(held - pending);
                }
            });
        });
        assert_eq!(db.len().unwrap(), 100);
        assert!(most_held >= 10, "culls waited for a share: {most_held}");
        let warns = logs.iter().filter(|l| l.starts_with("WARN")).count();
        let infos = logs.iter().filter(|l| l.starts_with("INFO")).count();
        assert_eq!(warns, 1, "{logs:?}");
        assert_eq!(infos, 1, "one info line per 10 s: {logs:?}");
    }

    #[tokio::test]
    async fn pending_records_are_never_culled() {
        let db = DictDb::with_config(DictDbConfig::default().with_record_limit(4)).unwrap();
        for n in 0..3 {
            db.add(record(n, false, 0)).await.unwrap(); // old, pending
        }
        for n in 3..8 {
            db.add(record(n, true, 0)).await.unwrap();
        }
        // Only completed records went; the three oldest, pending, are all still here.
        for n in 0..3 {
            db.get(&format!("m{n}")).await.unwrap();
        }
        assert!(matches!(db.get("m3").await, Err(Error::Culled { .. })));
        assert_eq!(db.len().unwrap(), 4);

        // Over the limit with nothing completed: keeps everything.
        for n in 8..12 {
            db.add(record(n, false, 0)).await.unwrap();
        }
        let pending = Query::new().and(RecordKey::Completed, Condition::Eq(QueryValue::Null));
        assert_eq!(db.find(&pending, None).await.unwrap().len(), 7);
    }

    #[tokio::test]
    async fn size_limit_culls_oldest_completed_until_below_the_fraction() {
        let config = DictDbConfig::default()
            .with_size_limit(1000)
            .with_cull_fraction(0.5);
        let db = DictDb::with_config(config).unwrap();
        db.add(record(0, false, 300)).await.unwrap(); // pending: stays
        for n in 1..4 {
            db.add(record(n, true, 200)).await.unwrap();
        }
        assert_eq!(db.buffer_bytes().unwrap(), 900);
        // The result of m4 arrives by update and pushes the total to 1100 > 1000: cull the
        // oldest completed until at most 500 bytes remain: m1, m2, m3 (300 left).
        db.add(record(4, false, 0)).await.unwrap();
        let update = RecordUpdate {
            completed: Some(at(5)),
            result_buffers: Some(vec![Bytes::from(vec![1u8; 200])]),
            ..RecordUpdate::new()
        };
        db.update("m4", update).await.unwrap();
        assert_eq!(db.buffer_bytes().unwrap(), 500);
        assert_eq!(db.history().await.unwrap(), ["m0", "m4"]);
        match db.get("m2").await {
            Err(Error::Culled { reason, .. }) => assert!(reason.contains("size"), "{reason}"),
            other => panic!("expected Culled, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_record_is_not_found_and_a_culled_one_can_come_back() {
        let db = DictDb::with_config(DictDbConfig::default().with_record_limit(1)).unwrap();
        db.add(record(0, true, 0)).await.unwrap();
        db.add(record(1, true, 0)).await.unwrap();
        assert!(matches!(db.get("m0").await, Err(Error::Culled { .. })));
        db.drop_records(&["m1".to_owned()]).await.unwrap();
        assert!(matches!(db.get("m1").await, Err(Error::NotFound { .. })));
        db.add(record(0, false, 0)).await.unwrap();
        assert_eq!(db.get("m0").await.unwrap(), record(0, false, 0));
        assert!(db.is_empty().map(|empty| !empty).unwrap());
    }

    #[tokio::test]
    async fn find_orders_by_submitted_with_undated_records_last() {
        let db = DictDb::new();
        db.add(TaskRecord::new("stub")).await.unwrap();
        db.add(record(5, false, 0)).await.unwrap();
        db.add(record(1, false, 0)).await.unwrap();
        let ids: Vec<String> = db
            .find(&Query::all(), Some(&[]))
            .await
            .unwrap()
            .into_iter()
            .map(|rec| rec.msg_id)
            .collect();
        assert_eq!(ids, ["m1", "m5", "stub"]);
    }
}
