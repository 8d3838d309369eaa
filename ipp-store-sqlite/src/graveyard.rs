//! Handing the writes the writer is done with back to the callers' thread to be freed.
//!
//! A record is built on the caller's thread (the Hub's): dozens of small allocations for
//! its JSON objects. Freed on the writer thread, each goes back to the caller's malloc
//! arena under the arena's lock, which the caller is taking at the same time for its own
//! allocations: in a profile of the controller this contention (and the futex wake-ups it
//! causes) cost the Hub's thread more than the store's own work. So the writer leaves the
//! small writes it has committed here, and each `add` / `update` frees a couple of them on
//! the thread that allocated them.
//!
//! Bounded: at most [`MOST_KEPT`] writes wait here; beyond that, and for records carrying
//! large buffers (a few allocations, much memory), the writer frees them itself.

use std::sync::Mutex;

use crate::writer::Op;

/// Most writes kept waiting to be freed.
const MOST_KEPT: usize = 8192;

/// Records whose buffers are larger than this are freed by the writer at once, so that
/// the graveyard never holds much memory.
const LARGEST_KEPT: u64 = 64 * 1024;

/// Writes the writer is done with, waiting for a caller to free them.
#[derive(Debug, Default)]
pub(crate) struct Graveyard {
    dead: Mutex<Vec<Op>>,
}

impl Graveyard {
    /// Takes `ops` (leaving it empty); frees at once what is not worth keeping.
    pub(crate) fn bury(&self, ops: &mut Vec<Op>) {
        ops.retain(|op| match op {
            Op::Add(record) => record.buffer_size() <= LARGEST_KEPT,
            Op::Update(_, update) => {
                let size = |buffers: &Option<Vec<bytes::Bytes>>| {
                    buffers
                        .iter()
                        .flatten()
                        .map(|buffer| buffer.len() as u64)
                        .sum::<u64>()
                };
                size(&update.buffers) + size(&update.result_buffers) <= LARGEST_KEPT
            }
            _ => false,
        });
        let Ok(mut dead) = self.dead.lock() else {
            ops.clear();
            return;
        };
        let room = MOST_KEPT.saturating_sub(dead.len());
        if ops.len() > room {
            let extra = ops.split_off(room);
            dead.append(ops);
            drop(dead);
            drop(extra); // freed here, outside the lock
        } else {
            dead.append(ops);
        }
    }

    /// Frees two of the waiting writes (none if the writer holds the lock): one call per
    /// `add` / `update` frees faster than the writer buries, one write per call.
    pub(crate) fn free_some(&self) {
        let freed = {
            let Ok(mut dead) = self.dead.try_lock() else {
                return;
            };
            (dead.pop(), dead.pop())
        };
        drop(freed); // outside the lock
    }
}
