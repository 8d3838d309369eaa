//! [`MongoStore`]: the [`Store`] over one MongoDB collection, writes on a writer task.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipp_core::store::{Query, RecordKey, RecordUpdate, Store, StoreCapabilities, TaskRecord};
use mongodb::bson::{doc, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{MongoConfig, DEFAULT_COLLECTION, DEFAULT_QUEUE_CAPACITY, DEFAULT_URL};
use crate::error::{Error, Result};
use crate::ops::{self, timed};
use crate::writer::{Op, PendingError, Writer};

/// How long the driver looks for a usable server.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The Hub's task database in a MongoDB collection (ipyparallel's `MongoDB` backend).
///
/// `add`, `update` and `drop_records` check the `msg_id` against an in-memory set of the
/// stored ids (loaded at connect), queue the write for the writer task and return, so the
/// Hub never waits for a server round trip; reads first wait until the writes queued
/// before them are done. Queries select by `msg_id` on the server and evaluate every other
/// condition here with [`Query::matches`], so results have exactly its semantics on any
/// MongoDB-wire server (see the crate docs).
pub struct MongoStore {
    client: Client,
    collection: Collection<Document>,
    database: String,
    url: String,
    sender: mpsc::Sender<Op>,
    queue_capacity: usize,
    known: Mutex<HashSet<String>>,
    enqueued: AtomicU64,
    done: watch::Receiver<u64>,
    high_water: AtomicUsize,
    closed: AtomicBool,
    pending_error: PendingError,
    writer: Mutex<Option<JoinHandle<()>>>,
    capabilities: StoreCapabilities,
}

impl MongoStore {
    /// Connects, creates the indexes (unique on `msg_id`, and on `submitted`), loads the
    /// stored ids and starts the writer task on the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Driver`] for a bad URL or a server that cannot be reached or refuses the
    /// indexes; [`Error::Timeout`] when it does not answer.
    pub async fn connect(config: MongoConfig) -> Result<Self> {
        let queue_capacity = config.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(Error::Config(
                "queue_capacity must be at least 1".to_owned(),
            ));
        }
        let url = config.redacted_url();
        let mut options = timed(
            "parse url",
            ClientOptions::parse(config.url.as_deref().unwrap_or(DEFAULT_URL)),
        )
        .await?;
        options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.connect_timeout = Some(SERVER_SELECTION_TIMEOUT);
        options.app_name = Some("ipp-controller".to_owned());
        let client = Client::with_options(options).map_err(|source| Error::Driver {
            operation: "connect",
            source,
        })?;
        let database = config
            .database
            .clone()
            .unwrap_or_else(ipp_core::protocol::new_id);
        let collection_name = config
            .collection
            .clone()
            .unwrap_or_else(|| DEFAULT_COLLECTION.to_owned());
        let collection = client
            .database(&database)
            .collection::<Document>(&collection_name);
        let indexes = vec![
            IndexModel::builder()
                .keys(doc! {"msg_id": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
            IndexModel::builder().keys(doc! {"submitted": 1}).build(),
        ];
        timed("create indexes", collection.create_indexes(indexes)).await?;
        let known: HashSet<String> = ops::all_ids(&collection).await?.into_iter().collect();
        tracing::info!(url = %url, database = %database, collection = %collection_name,
            records = known.len(), "mongodb task database connected");
        let (sender, inbox) = mpsc::channel(queue_capacity);
        let (done_tx, done) = watch::channel(0);
        let pending_error = PendingError::default();
        let writer = Writer {
            collection: collection.clone(),
            inbox,
            done: done_tx,
            pending_error: Arc::clone(&pending_error),
        };
        let writer = tokio::spawn(writer.run());
        Ok(Self {
            client,
            collection,
            database,
            url,
            sender,
            queue_capacity,
            known: Mutex::new(known),
            enqueued: AtomicU64::new(0),
            done,
            high_water: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            pending_error,
            writer: Mutex::new(Some(writer)),
            capabilities: StoreCapabilities::RECORDS_EVERYTHING,
        })
    }

    /// The database in use (generated when the config named none).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The most writes that have waited in the queue at once.
    pub fn queue_high_water_mark(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Waits until every write queued so far is done (or has failed).
    ///
    /// # Errors
    /// [`ipp_core::Error::Closed`] if the writer task is gone.
    pub async fn flush(&self) -> ipp_core::Result<()> {
        let target = self.enqueued.load(Ordering::SeqCst);
        if *self.done.borrow() >= target {
            return Ok(());
        }
        let mut done = self.done.clone();
        done.wait_for(|finished| *finished >= target)
            .await
            .map(|_| ())
            .map_err(|_| stopped())
    }

    /// Finishes the queued writes and stops the writer task; later calls fail with
    /// [`ipp_core::Error::Closed`].
    ///
    /// # Errors
    /// A write error not yet reported, or `Closed` if the writer was already gone.
    pub async fn close(&self) -> ipp_core::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Op::Close(tx), |_| Ok(())).await?;
        rx.await.map_err(|_| stopped())?;
        self.closed.store(true, Ordering::SeqCst);
        let handle = self.writer.lock().map_err(|_| poisoned())?.take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        let kept = self.pending_error.lock().map_err(|_| poisoned())?.take();
        kept.map_or(Ok(()), |source| Err(writer_error(source)))
    }

    /// Drops the whole database (for tests and throw-away databases), after the queued
    /// writes.
    ///
    /// # Errors
    /// [`Error::Driver`] or [`Error::Timeout`], as core errors.
    pub async fn drop_database(&self) -> ipp_core::Result<()> {
        self.flush().await?;
        timed("drop database", self.client.database(&self.database).drop()).await?;
        Ok(())
    }

    /// The kept write error, if any; `Closed` after [`MongoStore::close`].
    fn take_error(&self) -> ipp_core::Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        let kept = self.pending_error.lock().map_err(|_| poisoned())?.take();
        kept.map_or(Ok(()), |source| Err(writer_error(source)))
    }

    /// Queues `op` after `check` accepted it, under the ids lock so that checks and queue
    /// agree. Waits for room when the queue is full.
    async fn enqueue(
        &self,
        op: Op,
        check: impl FnOnce(&mut HashSet<String>) -> ipp_core::Result<()>,
    ) -> ipp_core::Result<()> {
        let permit = self.sender.reserve().await.map_err(|_| stopped())?;
        {
            let mut known = self.known.lock().map_err(|_| poisoned())?;
            check(&mut known)?;
            permit.send(op);
            self.enqueued.fetch_add(1, Ordering::SeqCst);
        }
        let depth = self.queue_capacity - self.sender.capacity();
        self.high_water.fetch_max(depth, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for the queued writes, then reports a kept error (so that a failure of the
    /// writes waited for is reported by this read): what every read does first.
    async fn before_read(&self) -> ipp_core::Result<()> {
        self.flush().await?;
        self.take_error()
    }
}

fn stopped() -> ipp_core::Error {
    ipp_core::Error::Closed {
        what: "mongodb task database".to_owned(),
    }
}

fn poisoned() -> ipp_core::Error {
    ipp_core::Error::Closed {
        what: "mongodb task database (a thread panicked holding its lock)".to_owned(),
    }
}

fn writer_error(source: Arc<Error>) -> ipp_core::Error {
    ipp_core::Error::Backend {
        backend: "mongodb",
        operation: "write",
        source: Box::new(Error::Writer { source }),
    }
}

#[async_trait]
impl Store for MongoStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.capabilities
    }

    async fn add(&self, record: TaskRecord) -> ipp_core::Result<()> {
        self.take_error()?;
        let msg_id = record.msg_id.clone();
        self.enqueue(Op::Add(Box::new(record)), move |known| {
            if known.contains(&msg_id) {
                return Err(ipp_core::Error::AlreadyExists { msg_id });
            }
            known.insert(msg_id);
            Ok(())
        })
        .await
    }

    async fn update(&self, msg_id: &str, update: RecordUpdate) -> ipp_core::Result<()> {
        self.take_error()?;
        let known = |known: &mut HashSet<String>| {
            if known.contains(msg_id) {
                Ok(())
            } else {
                Err(ipp_core::Error::NotFound {
                    msg_id: msg_id.to_owned(),
                })
            }
        };
        if update.is_empty() {
            return known(&mut *self.known.lock().map_err(|_| poisoned())?);
        }
        self.enqueue(Op::Update(msg_id.to_owned(), Box::new(update)), known)
            .await
    }

    async fn get(&self, msg_id: &str) -> ipp_core::Result<TaskRecord> {
        self.before_read().await?;
        ops::get(&self.collection, msg_id)
            .await?
            .ok_or_else(|| ipp_core::Error::NotFound {
                msg_id: msg_id.to_owned(),
            })
    }

    async fn find(
        &self,
        query: &Query,
        keys: Option<&[RecordKey]>,
    ) -> ipp_core::Result<Vec<TaskRecord>> {
        self.before_read().await?;
        let found = ops::matching(&self.collection, query).await?;
        Ok(match keys {
            Some(keys) => found.iter().map(|record| record.project(keys)).collect(),
            None => found,
        })
    }

    async fn drop_matching(&self, query: &Query) -> ipp_core::Result<usize> {
        self.take_error()?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(Op::DropMatching(query.clone(), tx), |_| Ok(()))
            .await?;
        let ids = rx.await.map_err(|_| stopped())??;
        let mut known = self.known.lock().map_err(|_| poisoned())?;
        for id in &ids {
            known.remove(id);
        }
        Ok(ids.len())
    }

    async fn drop_records(&self, msg_ids: &[String]) -> ipp_core::Result<()> {
        self.take_error()?;
        if msg_ids.is_empty() {
            return Ok(());
        }
        self.enqueue(Op::DropIds(msg_ids.to_vec()), |known| {
            for id in msg_ids {
                known.remove(id);
            }
            Ok(())
        })
        .await
    }

    async fn history(&self) -> ipp_core::Result<Vec<String>> {
        self.before_read().await?;
        Ok(ops::history(&self.collection).await?)
    }
}

impl fmt::Display for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mongodb {} database {} collection {}",
            self.url,
            self.database,
            self.collection.name()
        )
    }
}

impl fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoStore")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("collection", &self.collection.name())
            .field("queue_high_water_mark", &self.queue_high_water_mark())
            .finish_non_exhaustive()
    }
}
