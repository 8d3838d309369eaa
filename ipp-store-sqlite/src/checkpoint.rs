//! The checkpointer thread: copies the WAL back into the database file off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold, so the
//! writer would copy the log into the file and wait for two `fsync`s every ~4 MB of log.
//! Instead the writer's connection has a WAL hook ([`wal_hook`]) that nudges this thread,
//! which runs a `PASSIVE` checkpoint on its own connection while the writer goes on
//! committing. A passive checkpoint never blocks the writer. If the log still grows past
//! [`INLINE_CHECKPOINT_PAGES`] (a slow disk, or a writer so busy that the log never gets
//! a moment to be reset), the writer checkpoints inline as SQLite would, which bounds the
//! log's size.
//!
//! Durability is SQLite's `synchronous=NORMAL` in WAL mode either way: the log is synced
//! at the start of each checkpoint, so a power loss or OS crash can lose the commits since
//! the last checkpoint (never the file's consistency); a process crash loses nothing
//! committed.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::Connection;

use crate::error::{Error, Result};

/// Log size after which the checkpointer is nudged: SQLite's own autocheckpoint default,
/// 1,000 pages of its default 4 KiB, kept in bytes whatever the file's page size.
pub(crate) const CHECKPOINT_BYTES: i64 = 1000 * 4096;

/// Log size after which the writer checkpoints inline, as SQLite's autocheckpoint would.
pub(crate) const INLINE_CHECKPOINT_BYTES: i64 = 16 * CHECKPOINT_BYTES;

/// `bytes` of log in pages of `page_size` bytes (at least one).
fn pages(bytes: i64, page_size: i64) -> i32 {
    i32::try_from(bytes / page_size.max(512)).map_or(i32::MAX, |pages| pages.max(1))
}

/// How long the checkpointer's connection waits for a lock (the writer never holds one
/// that a passive checkpoint needs for long).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The running checkpointer thread.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    nudge: SyncSender<()>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens a connection to `path` and starts the thread.
    pub(crate) fn start(path: &Path) -> Result<Self> {
        let sql_err = |operation| {
            move |source| Error::Sqlite {
                operation,
                path: path.to_path_buf(),
                source,
            }
        };
        let conn = Connection::open(path).map_err(sql_err("open checkpointer"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql_err("open checkpointer"))?;
        // One pending nudge is enough: the checkpoint it starts covers every commit so far.
        let (nudge, nudged) = sync_channel(1);
        let path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("ipp-sqlite-checkpoint".to_owned())
            .spawn(move || run(&conn, &path, &nudged))
            .map_err(Error::Thread)?;
        Ok(Self { nudge, handle })
    }

    /// The hook to install on the writer's connection with `Connection::wal_hook`: called
    /// after each commit with the log's size in pages (of `page_size` bytes).
    pub(crate) fn wal_hook(
        &self,
        page_size: i64,
    ) -> impl FnMut(&mut Wal, i32) -> rusqlite::Result<()> + Send {
        let nudge = self.nudge.clone();
        let (nudge_at, inline_at) = (
            pages(CHECKPOINT_BYTES, page_size),
            pages(INLINE_CHECKPOINT_BYTES, page_size),
        );
        move |wal, pages| {
            if pages >= inline_at {
                // Busy when the checkpointer is at it; then the next commit tries again.
                if let Err(err) = wal.checkpoint() {
                    tracing::debug!(error = %err, "inline sqlite checkpoint did not run");
                }
            } else if pages >= nudge_at {
                match nudge.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => {
                        tracing::debug!("sqlite checkpointer is gone");
                    }
                }
            }
            Ok(())
        }
    }

    /// Stops the thread after a last checkpoint that empties the log. Call after the
    /// writer's connection (which holds the hook, and so a sender) is closed.
    pub(crate) fn stop(self) {
        let Self { nudge, handle } = self;
        drop(nudge);
        if handle.join().is_err() {
            tracing::error!("sqlite checkpointer thread panicked");
        }
    }
}

/// Checkpoints on every nudge until the senders are gone, then empties the log.
fn run(conn: &Connection, path: &Path, nudged: &Receiver<()>) {
    let mut failing = false;
    while nudged.recv().is_ok() {
        match checkpoint(conn, "PASSIVE") {
            Ok(()) => failing = false,
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(path = %path.display(), error = %err,
                    "sqlite checkpoint failed; the WAL keeps every commit and grows until a \
                     checkpoint succeeds (logged once until one does)");
            }
            Err(err) => tracing::debug!(error = %err, "sqlite checkpoint failed"),
        }
    }
    // Closing: copy everything back and truncate the log, so the file stands alone.
    if let Err(err) = checkpoint(conn, "TRUNCATE") {
        tracing::debug!(path = %path.display(), error = %err, "final sqlite checkpoint failed");
    }
}

/// Runs `PRAGMA wal_checkpoint(<mode>)`.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<()> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_the_same_log_size_in_any_page_size() {
        assert_eq!(pages(CHECKPOINT_BYTES, 4096), 1000, "SQLite's default");
        assert_eq!(pages(CHECKPOINT_BYTES, 16 * 1024), 250);
        assert_eq!(pages(INLINE_CHECKPOINT_BYTES, 16 * 1024), 4000);
        assert_eq!(pages(CHECKPOINT_BYTES, 65536), 62);
        assert_eq!(pages(1, 65536), 1, "at least one page");
    }
}
