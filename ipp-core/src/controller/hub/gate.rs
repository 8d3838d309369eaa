//! How long the Hub waits for its task database, so that a store that stops keeping up
//! (a stalled disk, a server gone) degrades recording instead of stopping the Hub.
//!
//! The Hub runs registration, queries and the recording of every task on one loop, and the
//! schedulers hand it their events through a bounded queue: a Hub stuck on a store call
//! would, once that queue fills, stop routing too. Stores take writes onto queues of their
//! own and return, so a write that does not return within the write patience
//! (`ControllerConfig::store_write_patience_ms`, 1 s by default) means the store is not
//! keeping up. The Hub then drops that write, logs it once, and stops waiting: until the
//! store has taken every write at once for that long again, or answers a read sent off the
//! loop ([`StoreGate::probe`]), each write is offered once and dropped if the store cannot
//! take it right away, and reads are answered with an error instead of being waited for.
//! Reads otherwise wait at most [`READ_PATIENCE`]. With no write patience (0) the Hub waits
//! for every write as long as the store needs: nothing is dropped, and routing waits too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::controller::recent::RecentSet;
use crate::error::{Error, Result};
use crate::store::{direct, Store};

/// The default write patience (`ControllerConfig::store_write_patience_ms`).
#[cfg(test)]
const WRITE_PATIENCE: Duration = Duration::from_secs(1);

/// How long a read (a client's query) may take before the client gets a timeout error.
pub(super) const READ_PATIENCE: Duration = Duration::from_secs(30);

/// How long a probe of a store that is behind may go unanswered before another is sent.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);

/// Runs `read`, waiting at most [`READ_PATIENCE`] (a read may run off the Hub's loop).
///
/// # Errors
/// [`Error::Timeout`] when the store does not answer in time; the read's own error
/// otherwise.
pub(super) async fn bounded_read<T>(read: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(READ_PATIENCE, read).await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(after = ?READ_PATIENCE, "task database did not answer a query");
            Err(Error::Timeout {
                what: "the task database to answer",
                after: READ_PATIENCE,
            })
        }
    }
}

/// What the Hub knows about its store keeping up.
#[derive(Debug, Default)]
pub(super) struct StoreGate {
    /// How long a write may wait (`None`: as long as it takes; nothing is dropped).
    patience: Option<Duration>,
    /// When the store last failed to take a write in time, while it is behind.
    behind_since: Option<Instant>,
    /// When the last write was dropped (the store is behind until it takes writes for
    /// the write patience after this).
    last_drop: Option<Instant>,
    /// Writes dropped since the store fell behind.
    dropped: u64,
    /// Tasks with a dropped write (recently): their records are missing or incomplete.
    dropped_ids: RecentSet,
    /// Whether a store error was logged already (the first is an error, the rest debug).
    warned: bool,
    /// A read sent to a store that is behind, off the Hub's loop: its answer (whatever it
    /// is) shows that the store answers again.
    probe: Option<(Instant, JoinHandle<()>)>,
}

impl StoreGate {
    /// A gate that lets a write wait `patience` (`None`: as long as the store needs).
    pub(super) fn new(patience: Option<Duration>) -> Self {
        Self {
            patience,
            ..Self::default()
        }
    }

    /// Whether a write about `msg_id` was dropped (recently): its record is missing or
    /// incomplete.
    pub(super) fn was_dropped(&self, msg_id: &str) -> bool {
        self.dropped_ids.contains(msg_id)
    }

    /// Whether writes are being dropped rather than waited for.
    pub(super) fn is_behind(&self) -> bool {
        self.behind_since.is_some()
    }

    /// Runs `write` (a store call that queues a write): waits for it at most the write
    /// patience (without a bound if there is none), or not at all while the store is
    /// behind. `None` when it did not finish: the write is dropped (the call is cancelled,
    /// which stores' queueing allows).
    pub(super) async fn write<T>(
        &mut self,
        operation: &str,
        msg_id: &str,
        write: impl Future<Output = T>,
    ) -> Option<T> {
        // One poll first: a store with room takes the write at once, and then no timer is
        // made (this runs for every record the Hub writes).
        let mut write = std::pin::pin!(write);
        let done = match (write.as_mut().now_or_never(), self.patience) {
            (Some(result), _) => Some(result),
            (None, None) => Some(write.await),
            (None, Some(_)) if self.is_behind() => None,
            (None, Some(patience)) => tokio::time::timeout(patience, write).await.ok(),
        };
        match done {
            Some(result) => {
                self.note_taken();
                Some(result)
            }
            None => {
                self.note_dropped(operation, msg_id);
                None
            }
        }
    }

    /// Whether a read may be sent to the store: not while it is behind on writes (it would
    /// answer without them, or not at all).
    ///
    /// # Errors
    /// [`Error::Timeout`] while the store is behind.
    pub(super) fn admit_read(&self) -> Result<()> {
        if self.is_behind() {
            // Whether it caught up is for the probe to find out, off the Hub's loop.
            return Err(Error::Timeout {
                what: "the task database to catch up with the Hub's writes (records are \
                       being dropped until it does; try again later)",
                after: self.patience.unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// While the store is behind, checks (off the Hub's loop) whether it answers again: a
    /// read's answer shows that the store has done every write queued before it, and the
    /// Hub then waits for it again (should it still be slow, the next write that waits too
    /// long says so). Call it now and then (the Hub does on its housekeeping tick): a Hub
    /// that writes nothing would otherwise never find out that the store came back.
    pub(super) fn probe(&mut self, store: &Arc<dyn Store>) {
        if !self.is_behind() {
            return;
        }
        match &self.probe {
            Some((_, handle)) if handle.is_finished() => self.caught_up(),
            // A call may hang past the store's recovery (a dead connection): ask anew.
            Some((sent, handle)) if sent.elapsed() >= PROBE_PATIENCE => {
                handle.abort();
                self.probe = None;
            }
            Some(_) => {}
            None => {
                let store = Arc::clone(store);
                let handle = tokio::spawn(async move {
                    // Any answer will do (this id is never recorded: NotFound).
                    let _ = direct(&store).get("ipp-hub-store-probe").await;
                });
                self.probe = Some((Instant::now(), handle));
            }
        }
    }

    /// Logs a store call's error: the first at `error`, later ones at `debug` (a failing
    /// store fails every call). What NoDb refuses by design is not an error.
    pub(super) fn note_error(&mut self, operation: &str, msg_id: &str, err: &Error) {
        if matches!(err, Error::Unsupported { .. }) {
            return; // NoDb: recording nothing is its job.
        }
        if !self.warned {
            self.warned = true;
            tracing::error!(operation, msg_id, error = %err,
                "task database failed; recording is degraded, scheduling goes on");
        } else {
            tracing::debug!(operation, msg_id, error = %err, "task database failed");
        }
    }

    fn note_dropped(&mut self, operation: &str, msg_id: &str) {
        let now = Instant::now();
        self.last_drop = Some(now);
        self.dropped += 1;
        self.dropped_ids.insert(msg_id);
        if self.behind_since.is_none() {
            self.behind_since = Some(now);
            tracing::error!(operation, msg_id, after = ?self.patience,
                "task database is not keeping up: a write waited too long; the Hub drops \
                 records until it catches up, and routing goes on");
        } else {
            tracing::debug!(operation, msg_id, "task database behind: record dropped");
        }
    }

    fn note_taken(&mut self) {
        let Some(last_drop) = self.last_drop else {
            return;
        };
        if last_drop.elapsed() >= self.patience.unwrap_or_default() {
            self.caught_up();
        }
    }

    fn caught_up(&mut self) {
        if let Some(since) = self.behind_since {
            tracing::warn!(dropped = self.dropped, behind_for = ?since.elapsed(),
                "task database caught up; records are written again (the dropped ones are \
                 missing from it)");
        }
        self.behind_since = None;
        self.last_drop = None;
        self.dropped = 0;
        if let Some((_, handle)) = self.probe.take() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_too_long_is_dropped_and_later_ones_are_not_waited_for() {
        let mut gate = StoreGate::new(Some(WRITE_PATIENCE));
        assert_eq!(gate.write("add", "a", async { 1 }).await, Some(1));
        let started = Instant::now();
        assert_eq!(
            gate.write("add", "b", std::future::pending::<u8>()).await,
            None
        );
        assert_eq!(started.elapsed(), WRITE_PATIENCE);
        assert!(gate.is_behind());
        // Behind: offered once, not waited for.
        let started = Instant::now();
        assert_eq!(
            gate.write("add", "c", std::future::pending::<u8>()).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A write the store takes at once goes through, but the gate stays behind until
        // the store has kept up for a while.
        assert_eq!(gate.write("add", "d", async { 4 }).await, Some(4));
        assert!(gate.is_behind());
        assert!(matches!(gate.admit_read(), Err(Error::Timeout { .. })));
        tokio::time::sleep(WRITE_PATIENCE).await;
        assert_eq!(gate.write("add", "e", async { 5 }).await, Some(5));
        assert!(!gate.is_behind());
        assert!(gate.admit_read().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_behind_is_probed_off_the_loop_until_it_answers() {
        let store: Arc<dyn Store> = Arc::new(crate::store::DictDb::default());
        let mut gate = StoreGate::new(Some(WRITE_PATIENCE));
        assert_eq!(
            gate.write("add", "a", std::future::pending::<u8>()).await,
            None
        );
        assert!(gate.is_behind());
        gate.probe(&store); // sends the read
        assert!(gate.is_behind());
        tokio::task::yield_now().await; // the read is answered
        gate.probe(&store); // sees the answer
        assert!(!gate.is_behind());
        assert!(gate.admit_read().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn without_patience_a_write_is_waited_for_as_long_as_it_takes() {
        let mut gate = StoreGate::new(None);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            8
        };
        assert_eq!(gate.write("add", "a", slow).await, Some(8));
        assert!(!gate.is_behind());
    }
}
