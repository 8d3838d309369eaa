//! [`SqliteStore`]: the [`Store`] over one SQLite table, writes batched on a writer thread.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipp_core::store::{
    Query, ReceivedRequest, ReceivedResult, RecordKey, RecordUpdate, Store, StoreCapabilities,
    TaskRecord,
};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, watch};

use crate::checkpoint::Checkpointer;
use crate::config::SqliteConfig;
use crate::error::{Error, Result};
use crate::held::{Held, MOST_HELD};
use crate::ids::{Fingerprints, KnownIds};
use crate::query::{register_functions, translate, SUBMISSION_ORDER};
use crate::rows::{RequestRows, MOST_KEPT};
use crate::schema::{ensure, set_from_sql, Tables};
use crate::writer::{Op, PendingError, Writer};

/// How long a connection waits for a lock held by another connection to the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The page size of a new file: 16 KiB rather than SQLite's 4 KiB. A task's request row
/// is ~1.3 KB and its result's ~0.7 KB, three and five to a 4 KiB page: at 16 KiB the
/// b-trees split and rebalance a quarter as often and a commit writes a quarter as many
/// log frames (two `pwrite`s each). Measured at hwm 1: the writer thread's CPU −15–20%,
/// the checkpointer's about halved (BENCHMARKS.md).
const PAGE_SIZE: i64 = 16 * 1024;

/// The Hub's task database in an SQLite file, with ipyparallel's SQLiteDB schema.
///
/// `add`, `update` and `drop_records` check the `msg_id` against an in-memory set of the
/// recorded ids (loaded when the file is opened), queue the write for the writer thread and
/// return; reads first wait until every write queued before them is committed, then run on
/// tokio's blocking pool with their own connection (WAL lets it read while the writer
/// writes). See the crate docs for the file format and limits.
pub struct SqliteStore {
    path: PathBuf,
    table: String,
    queue_capacity: usize,
    sender: mpsc::Sender<Op>,
    /// Ids recorded or queued to be; locked together with queueing, so that the queue's
    /// order is the order in which ids were checked.
    known: Mutex<KnownIds>,
    /// The keys of `known`'s fingerprints.
    fingerprints: Fingerprints,
    /// Ops queued so far (changed under `known`'s lock, right after each send).
    enqueued: AtomicU64,
    /// Ops the writer has finished (published after each committed batch).
    done: watch::Receiver<u64>,
    high_water: AtomicUsize,
    /// Set by [`SqliteStore::close`]: every later call fails.
    closed: AtomicBool,
    pending_error: PendingError,
    reader: Arc<Mutex<Connection>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread, to wake from its wait between transactions ([`Writer::linger`]).
    writer: std::thread::Thread,
    /// Assignments the writer holds back ([`crate::held`]), as of its last batch.
    held_count: Arc<AtomicUsize>,
    /// Queued writes that make a full batch (`batch_size`, or the whole queue if smaller).
    full_batch: usize,
    capabilities: StoreCapabilities,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default settings.
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(SqliteConfig::new(path)).await
    }

    /// Opens (creating if needed) the database and table described by `config`, loads the
    /// recorded ids and starts the writer thread. An existing table keeps its records.
    ///
    /// # Errors
    /// [`Error::Config`] for bad settings, [`Error::Sqlite`] when the file cannot be opened
    /// or switched to WAL, [`Error::Schema`] when the table exists with other columns.
    pub async fn open_with(config: SqliteConfig) -> Result<Self> {
        config.validate()?;
        let SqliteConfig {
            path,
            table,
            batch_size,
            queue_capacity,
            commit_interval_ms,
            assignment_hold_ms,
        } = config;
        let (writer_conn, reader, (fingerprints, known), checkpointer) = {
            let (path, table) = (path.clone(), table.clone());
            tokio::task::spawn_blocking(move || open_connections(&path, &table))
                .await
                .map_err(|source| Error::Worker {
                    operation: "open",
                    source,
                })??
        };
        tracing::info!(path = %path.display(), table = %table, records = known.len(),
            "sqlite task database open");
        let (sender, inbox) = mpsc::channel(queue_capacity);
        let (done_tx, done) = watch::channel(0);
        let pending_error = PendingError::default();
        let held_count = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            conn: writer_conn,
            path: path.clone(),
            table: table.clone(),
            batch_size,
            full_batch: batch_size.min(queue_capacity),
            commit_interval: Duration::from_millis(commit_interval_ms),
            inbox,
            done: done_tx,
            pending_error: Arc::clone(&pending_error),
            checkpointer,
            held: Held::new(Duration::from_millis(assignment_hold_ms), MOST_HELD),
            held_count: Arc::clone(&held_count),
            timer: None,
            rows: RequestRows::new(MOST_KEPT),
        };
        let handle = std::thread::Builder::new()
            .name("ipp-sqlite-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(Error::Thread)?;
        let writer_thread = handle.thread().clone();
        Ok(Self {
            path,
            table,
            queue_capacity,
            sender,
            known: Mutex::new(known),
            fingerprints,
            enqueued: AtomicU64::new(0),
            done,
            high_water: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            pending_error,
            reader: Arc::new(Mutex::new(reader)),
            writer_thread: Mutex::new(Some(handle)),
            writer: writer_thread,
            held_count,
            full_batch: batch_size.min(queue_capacity),
            capabilities: StoreCapabilities::RECORDS_EVERYTHING,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The most writes that have waited in the queue at once since the store opened.
    pub fn queue_high_water_mark(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Waits until every write queued so far is committed (or has failed), including the
    /// assignments the writer holds back to write with their results.
    ///
    /// # Errors
    /// [`Error::WriterStopped`] if the writer thread is gone.
    pub async fn flush(&self) -> Result<()> {
        self.wait_until_done(self.enqueued.load(Ordering::SeqCst))
            .await?;
        // Published before `done`: what the writes waited for left held.
        if self.held_count.load(Ordering::SeqCst) > 0 {
            let queued = self
                .enqueue(Op::WriteHeld, |_, _| Ok(()))
                .await
                .map_err(|_| Error::WriterStopped)?;
            self.wait_until_done(queued).await?;
        }
        Ok(())
    }

    /// Waits until the writer has finished the first `target` ops queued.
    async fn wait_until_done(&self, target: u64) -> Result<()> {
        if *self.done.borrow() >= target {
            return Ok(());
        }
        // Someone waits for these writes: no point in the writer waiting for more.
        self.writer.unpark();
        let mut done = self.done.clone();
        done.wait_for(|finished| *finished >= target)
            .await
            .map(|_| ())
            .map_err(|_| Error::WriterStopped)
    }

    /// Commits every queued write and stops the writer thread; later calls fail with
    /// [`Error::WriterStopped`]. Dropping the store without closing it also commits what
    /// is queued, but nobody waits for it (a process that exits right after may lose it).
    ///
    /// # Errors
    /// [`Error::WriterStopped`] if the writer was already gone; a write error not yet
    /// reported.
    pub async fn close(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        // With a check that accepts, only a stopped writer (or a poisoned lock) fails here.
        self.enqueue(Op::Close(tx), |_, _| Ok(()))
            .await
            .map_err(|_| Error::WriterStopped)?;
        self.writer.unpark();
        rx.await.map_err(|_| Error::WriterStopped)?;
        self.closed.store(true, Ordering::SeqCst);
        let handle = self
            .writer_thread
            .lock()
            .map_err(|_| Error::Poisoned)?
            .take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|source| Error::Worker {
                    operation: "close",
                    source,
                })?
                .map_err(|_| Error::WriterStopped)?;
        }
        tracing::info!(path = %self.path.display(), "sqlite task database closed");
        let kept = self
            .pending_error
            .lock()
            .map_err(|_| Error::Poisoned)?
            .take();
        kept.map_or(Ok(()), |source| Err(Error::Writer { source }))
    }

    /// The write error kept since the last call, if any; [`Error::WriterStopped`] after
    /// [`SqliteStore::close`].
    fn take_error(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::WriterStopped);
        }
        let kept = self
            .pending_error
            .lock()
            .map_err(|_| Error::Poisoned)?
            .take();
        match kept {
            Some(source) => Err(Error::Writer { source }),
            None => Ok(()),
        }
    }

    /// Queues `op` after `check` accepted it (under the ids lock, so checks and queue
    /// agree). Waits for room when the queue is full. Returns how many ops are queued with
    /// it, for [`SqliteStore::wait_until_done`].
    async fn enqueue(
        &self,
        op: Op,
        check: impl FnOnce(&mut KnownIds, &Op) -> ipp_core::Result<()>,
    ) -> ipp_core::Result<u64> {
        let permit = self
            .sender
            .reserve()
            .await
            .map_err(|_| Error::WriterStopped)?;
        let queued = {
            let mut known = self.known.lock().map_err(|_| Error::Poisoned)?;
            check(&mut known, &op)?;
            permit.send(op);
            self.enqueued.fetch_add(1, Ordering::SeqCst) + 1
        };
        let depth = self.queue_capacity - self.sender.capacity();
        self.high_water.fetch_max(depth, Ordering::Relaxed);
        if depth >= self.full_batch {
            // A full batch is waiting: the writer need not wait for more. (Cheap when it
            // is not parked: an atomic swap.)
            self.writer.unpark();
        }
        Ok(queued)
    }

    /// Queues `op` (an add) if its record is new.
    ///
    /// # Errors
    /// [`ipp_core::Error::AlreadyExists`] when the id is known; a write error kept from
    /// earlier; the writer gone.
    async fn queue_add(&self, op: Op) -> ipp_core::Result<()> {
        self.take_error()?;
        let id = self.fingerprints.of(op.msg_id());
        self.enqueue(op, move |known, op| {
            if known.insert(id) {
                Ok(())
            } else {
                Err(ipp_core::Error::AlreadyExists {
                    msg_id: op.msg_id().to_owned(),
                })
            }
        })
        .await?;
        Ok(())
    }

    /// Queues `op` (an update) if its record is known.
    ///
    /// # Errors
    /// [`ipp_core::Error::NotFound`] when the id is not known; a write error kept from
    /// earlier; the writer gone.
    async fn queue_update(&self, op: Op) -> ipp_core::Result<()> {
        self.take_error()?;
        let id = self.fingerprints.of(op.msg_id());
        self.enqueue(op, move |known, op| require_known(known, id, op.msg_id()))
            .await?;
        Ok(())
    }

    /// Runs `f` with the read connection on the blocking pool, off the runtime's threads,
    /// after the writes queued before this call are committed.
    async fn with_conn<T, F>(&self, operation: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Tables) -> Result<T> + Send + 'static,
    {
        // Wait first, so that a failure of the writes waited for is reported by this read.
        self.flush().await?;
        self.take_error()?;
        let conn = Arc::clone(&self.reader); // std Mutex, locked only inside the closure
        let tables = Tables::new(&self.table);
        let out = tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| Error::Poisoned)?;
            f(&conn, &tables)
        })
        .await
        .map_err(|source| Error::Worker { operation, source })?;
        out
    }

    fn sql_err(&self, operation: &'static str) -> impl Fn(rusqlite::Error) -> Error {
        let path = self.path.clone();
        move |source| Error::Sqlite {
            operation,
            path: path.clone(),
            source,
        }
    }
}

/// The connections and state [`open_connections`] prepares.
pub(crate) type Opened = (
    Connection,
    Connection,
    (Fingerprints, KnownIds),
    Checkpointer,
);

/// Opens the writer's and the reader's connections, prepares the table, reads the
/// recorded ids, and starts the checkpointer (hooked to the writer's connection).
/// `Ok` when `id` (the fingerprint of `msg_id`) is a known record's.
///
/// # Errors
/// [`ipp_core::Error::NotFound`] otherwise.
fn require_known(known: &KnownIds, id: u128, msg_id: &str) -> ipp_core::Result<()> {
    if known.contains(&id) {
        Ok(())
    } else {
        Err(ipp_core::Error::NotFound {
            msg_id: msg_id.to_owned(),
        })
    }
}

pub(crate) fn open_connections(path: &Path, table: &str) -> Result<Opened> {
    let sql_err = |operation| {
        move |source| Error::Sqlite {
            operation,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut writer = Connection::open(path).map_err(sql_err("open"))?;
    writer.busy_timeout(BUSY_TIMEOUT).map_err(sql_err("open"))?;
    // Only a new file takes it (an existing one keeps the page size it was made with).
    writer
        .pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(sql_err("set page_size"))?;
    let mode: String = writer
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(sql_err("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "sqlite did not switch to WAL mode");
    }
    // With WAL, NORMAL syncs the log at each checkpoint rather than at each commit: a power
    // loss or OS crash loses at most the commits since the last checkpoint, never
    // consistency; a process crash loses nothing committed.
    writer
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql_err("set synchronous"))?;
    writer.set_prepared_statement_cache_capacity(64);
    // A small page cache (SQLite's default 2 MiB) and the file memory-mapped for reads.
    // Every commit that split a b-tree page (results grow rows added long before; the
    // msg_id index is written at random places) scans the whole page-cache hash table:
    // `balance_nonroot` parks a page at the locking page's number, so the commit's cache
    // truncation cannot take its short path. With a 16 MiB cache that scan was half of
    // the writer thread's CPU at 100k tasks; with 2 MiB it is gone from the profile, and
    // pages outside the cache are read from the map without a copy or a syscall.
    writer
        .pragma_update(None, "cache_size", -2048)
        .map_err(sql_err("set cache_size"))?;
    writer
        .pragma_update(None, "mmap_size", 1i64 << 30)
        .map_err(sql_err("set mmap_size"))?;
    register_functions(&writer).map_err(sql_err("register functions"))?;
    ensure(&writer, path, table)?;

    let fingerprints = Fingerprints::new();
    let mut known = KnownIds::default();
    {
        let mut stmt = writer
            .prepare(&format!(
                "SELECT msg_id FROM {}",
                Tables::new(table).requests
            ))
            .map_err(sql_err("load ids"))?;
        let mut rows = stmt.query([]).map_err(sql_err("load ids"))?;
        while let Some(row) = rows.next().map_err(sql_err("load ids"))? {
            let msg_id = row.get_ref(0).map_err(sql_err("load ids"))?;
            let msg_id = msg_id
                .as_str()
                .map_err(|err| sql_err("load ids")(err.into()))?;
            known.insert(fingerprints.of(msg_id));
        }
    }

    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sql_err("open reader"))?;
    reader
        .busy_timeout(BUSY_TIMEOUT)
        .map_err(sql_err("open reader"))?;
    register_functions(&reader).map_err(sql_err("register functions"))?;
    // Installing the hook replaces SQLite's automatic checkpoint in the commit.
    let checkpointer = Checkpointer::start(path)?;
    let page_size: i64 = writer
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .map_err(sql_err("read page_size"))?;
    writer
        .wal_hook(Some(checkpointer.wal_hook(page_size)))
        .map_err(sql_err("install the WAL hook"))?;
    Ok((writer, reader, (fingerprints, known), checkpointer))
}

/// Reads rows of `msg_id` followed by `keys` into records.
fn read_records(
    conn: &Connection,
    sql: &str,
    params: Vec<Value>,
    keys: &[RecordKey],
) -> rusqlite::Result<std::result::Result<Vec<TaskRecord>, Error>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut record = TaskRecord::new(row.get::<_, String>(0)?);
        for (i, key) in keys.iter().enumerate() {
            if let Err(err) = set_from_sql(&mut record, *key, row.get_ref(i + 1)?) {
                return Ok(Err(err));
            }
        }
        out.push(record);
    }
    Ok(Ok(out))
}

/// The columns to read for `keys`: each once, without `msg_id` (always read first).
fn columns_for(keys: Option<&[RecordKey]>) -> Vec<RecordKey> {
    let keys = keys.unwrap_or(&RecordKey::ALL);
    let mut out: Vec<RecordKey> = Vec::with_capacity(keys.len());
    for &key in keys {
        if key != RecordKey::MsgId && !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn select_list(keys: &[RecordKey]) -> String {
    std::iter::once("msg_id")
        .chain(keys.iter().map(|key| key.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl Store for SqliteStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.capabilities
    }

    async fn add(&self, record: TaskRecord) -> ipp_core::Result<()> {
        self.queue_add(Op::Add(Box::new(record))).await
    }

    async fn update(&self, msg_id: &str, update: RecordUpdate) -> ipp_core::Result<()> {
        if update.is_empty() {
            self.take_error()?;
            let id = self.fingerprints.of(msg_id);
            let ids = self.known.lock().map_err(|_| Error::Poisoned)?;
            return require_known(&ids, id, msg_id);
        }
        self.queue_update(Op::Update(msg_id.to_owned(), Box::new(update)))
            .await
    }

    /// Queues the request as received: the writer builds its record, off the Hub's loop.
    async fn add_received(&self, request: ReceivedRequest) -> ipp_core::Result<()> {
        self.queue_add(Op::AddReceived(Box::new(request))).await
    }

    /// Queues the reply as received: the writer builds its update, off the Hub's loop.
    async fn update_received(&self, result: ReceivedResult) -> ipp_core::Result<()> {
        self.queue_update(Op::UpdateReceived(Box::new(result)))
            .await
    }

    async fn get(&self, msg_id: &str) -> ipp_core::Result<TaskRecord> {
        let id = msg_id.to_owned();
        let sql_err = self.sql_err("get");
        let found = self
            .with_conn("get", move |conn, tables| {
                let keys = columns_for(None);
                let sql = format!(
                    "SELECT {} FROM {} WHERE msg_id = ?",
                    select_list(&keys),
                    tables.records
                );
                read_records(conn, &sql, vec![Value::Text(id)], &keys).map_err(sql_err)?
            })
            .await?;
        found
            .into_iter()
            .next()
            .ok_or_else(|| ipp_core::Error::NotFound {
                msg_id: msg_id.to_owned(),
            })
    }

    async fn find(
        &self,
        query: &Query,
        keys: Option<&[RecordKey]>,
    ) -> ipp_core::Result<Vec<TaskRecord>> {
        let columns = columns_for(keys);
        let clause = translate(query);
        let sql_err = self.sql_err("find");
        let found = self
            .with_conn("find", move |conn, tables| {
                let sql = format!(
                    "SELECT {} FROM ({}) WHERE {} ORDER BY {SUBMISSION_ORDER}",
                    select_list(&columns),
                    tables.select_records(true),
                    clause.sql
                );
                read_records(conn, &sql, clause.params, &columns).map_err(sql_err)?
            })
            .await?;
        Ok(found)
    }

    async fn drop_matching(&self, query: &Query) -> ipp_core::Result<usize> {
        self.take_error()?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(Op::DropMatching(query.clone(), tx), |_, _| Ok(()))
            .await?;
        self.writer.unpark(); // the caller waits for the answer

        let ids = rx.await.map_err(|_| Error::WriterStopped)??;
        let mut known = self.known.lock().map_err(|_| Error::Poisoned)?;
        for id in &ids {
            known.remove(&self.fingerprints.of(id));
        }
        Ok(ids.len())
    }

    async fn drop_records(&self, msg_ids: &[String]) -> ipp_core::Result<()> {
        self.take_error()?;
        if msg_ids.is_empty() {
            return Ok(());
        }
        self.enqueue(Op::DropIds(msg_ids.to_vec()), |known, _| {
            for id in msg_ids {
                known.remove(&self.fingerprints.of(id));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn history(&self) -> ipp_core::Result<Vec<String>> {
        let sql_err = self.sql_err("history");
        let ids = self
            .with_conn("history", move |conn, tables| {
                // `submitted` is a request-side column: the requests table has it.
                let sql = format!(
                    "SELECT msg_id FROM {} WHERE submitted IS NOT NULL ORDER BY submitted, rowid",
                    tables.requests
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(&sql_err)?;
                let ids = stmt
                    .query_map([], |row| row.get::<_, String>(0))
                    .map_err(&sql_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(&sql_err)?;
                Ok(ids)
            })
            .await?;
        Ok(ids)
    }
}

impl fmt::Display for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqlite {} table {}", self.path.display(), self.table)
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("table", &self.table)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_high_water_mark", &self.queue_high_water_mark())
            .finish_non_exhaustive()
    }
}
