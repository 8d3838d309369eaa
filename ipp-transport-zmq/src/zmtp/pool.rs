//! Reusing the buffers of very large frames.
//!
//! A fresh buffer costs a page fault for every 4 KiB page the first time it is written (the
//! kernel maps, charges and zeroes each page): for a 100 MB frame that is ~25,000 faults,
//! which on loopback took about as long as the kernel's copy of the bytes. glibc gives
//! allocations above 32 MiB their own mapping and unmaps it on free, so every such frame
//! paid the faults again. Instead, the buffer of a frame of [`POOLED_FROM`] bytes or more
//! comes back here when the last `Bytes` of the frame is dropped, and the next large frame
//! is read into it: a process that keeps receiving large frames (a controller relaying
//! pushes and pulls, an engine receiving scatters) faults its pages in once.
//!
//! Bounded: at most [`MOST_KEPT_BYTES`] are kept, and a kept buffer unused for
//! [`KEEP_FOR`] is freed (by a sweeper task while anything is kept), so an idle process
//! gives the memory back. A reused buffer is handed out empty: only the bytes read into it
//! are ever visible.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Frames at least this large get pooled buffers (smaller ones come from malloc's heap,
/// which glibc reuses without new faults).
pub(crate) const POOLED_FROM: usize = 4 << 20;

/// Most bytes of buffers kept for reuse.
pub(crate) const MOST_KEPT_BYTES: usize = 256 << 20;

/// How long an unused buffer is kept.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(10);

/// A buffer waiting to be reused.
#[derive(Debug)]
struct Kept {
    buf: Vec<u8>,
    since: Instant,
}

/// The buffers kept for reuse.
#[derive(Debug)]
pub(crate) struct BufferPool {
    kept: Mutex<Vec<Kept>>,
    /// How long an unused buffer is kept ([`KEEP_FOR`]).
    keep_for: Duration,
}

impl Default for BufferPool {
    fn default() -> Self {
        Self {
            kept: Mutex::new(Vec::new()),
            keep_for: KEEP_FOR,
        }
    }
}

/// The process's pool.
static POOL: BufferPool = BufferPool {
    kept: Mutex::new(Vec::new()),
    keep_for: KEEP_FOR,
};

/// An empty buffer with room for a frame of `size` bytes (at most `eager` allocated now).
pub(crate) fn buffer_for(size: usize, eager: usize) -> Vec<u8> {
    POOL.buffer_for(size, eager)
}

/// The received frame in `buf` as `Bytes`, whose buffer returns to the pool once dropped.
pub(crate) fn freeze(buf: Vec<u8>) -> Bytes {
    POOL.freeze(buf)
}

impl BufferPool {
    fn buffer_for(&self, size: usize, eager: usize) -> Vec<u8> {
        if size >= POOLED_FROM {
            if let Some(buf) = self.take(size) {
                return buf;
            }
        }
        Vec::with_capacity(size.min(eager))
    }

    /// The smallest kept buffer that holds `size` bytes without wasting more than as much
    /// again, emptied.
    fn take(&self, size: usize) -> Option<Vec<u8>> {
        let mut kept = self.kept.lock().ok()?;
        let now = Instant::now();
        kept.retain(|k| now.saturating_duration_since(k.since) < self.keep_for);
        let fits = |k: &Kept| k.buf.capacity() >= size && k.buf.capacity() / 2 <= size;
        let (at, _) = kept
            .iter()
            .enumerate()
            .filter(|(_, k)| fits(k))
            .min_by_key(|(_, k)| k.buf.capacity())?;
        // `remove`, not `swap_remove`: the rest stay oldest first for `give`.
        let mut buf = kept.remove(at).buf;
        buf.clear();
        Some(buf)
    }

    fn freeze(&'static self, buf: Vec<u8>) -> Bytes {
        if buf.capacity() >= POOLED_FROM && buf.capacity() <= MOST_KEPT_BYTES {
            Bytes::from_owner(Pooled {
                buf,
                pool: self,
                // Frames are decoded on a runtime thread; they may be dropped anywhere.
                runtime: tokio::runtime::Handle::try_current().ok(),
            })
        } else {
            Bytes::from(buf)
        }
    }

    /// Keeps `buf` for reuse, freeing the oldest kept buffers beyond the byte limit; a
    /// sweeper starts on `runtime` if the pool was empty.
    fn give(&'static self, buf: Vec<u8>, runtime: Option<&tokio::runtime::Handle>) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let was_empty = kept.is_empty();
        kept.push(Kept {
            buf,
            since: Instant::now(),
        });
        let mut total: usize = kept.iter().map(|k| k.buf.capacity()).sum();
        while total > MOST_KEPT_BYTES {
            // The oldest is first: buffers are pushed in the order they come back.
            let oldest = kept.remove(0);
            total -= oldest.buf.capacity();
        }
        drop(kept);
        if let (true, Some(runtime)) = (was_empty, runtime) {
            self.sweep_later(runtime);
        }
    }

    /// Frees the buffers unused for `keep_for`; whether any are still kept.
    fn sweep(&self, now: Instant) -> bool {
        let Ok(mut kept) = self.kept.lock() else {
            return false;
        };
        kept.retain(|k| now.saturating_duration_since(k.since) < self.keep_for);
        !kept.is_empty()
    }

    /// Starts a task on `runtime` that sweeps the pool until it is empty (a runtime shut
    /// down meanwhile drops the task; then the next large frame's `take` sweeps).
    fn sweep_later(&'static self, runtime: &tokio::runtime::Handle) {
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(self.keep_for).await;
                if !self.sweep(Instant::now()) {
                    break;
                }
            }
        });
    }
}

/// A frame's buffer that goes back to its pool when the frame's last `Bytes` is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: &'static BufferPool,
    /// Where the pool's sweeper runs.
    runtime: Option<tokio::runtime::Handle>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool
            .give(std::mem::take(&mut self.buf), self.runtime.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> &'static BufferPool {
        Box::leak(Box::default())
    }

    fn received(pool: &'static BufferPool, size: usize, byte: u8) -> Bytes {
        let mut buf = pool.buffer_for(size, usize::MAX);
        buf.resize(size, byte);
        pool.freeze(buf)
    }

    #[test]
    fn a_dropped_large_frame_lends_its_buffer_to_the_next_one() {
        let pool = pool();
        let first = received(pool, POOLED_FROM, 1);
        let address = first.as_ptr();
        let clone = first.clone();
        drop(first);
        assert!(pool.take(POOLED_FROM).is_none(), "a clone still holds it");
        drop(clone);
        let second = pool.buffer_for(POOLED_FROM, usize::MAX);
        assert_eq!(second.as_ptr(), address);
        assert!(second.is_empty(), "a reused buffer is handed out empty");
    }

    #[test]
    fn small_frames_and_ill_fitting_buffers_are_not_reused() {
        let pool = pool();
        drop(received(pool, POOLED_FROM - 1, 1));
        assert!(pool.kept.lock().expect("lock").is_empty());
        drop(received(pool, 4 * POOLED_FROM, 1));
        assert!(
            pool.take(POOLED_FROM).is_none(),
            "a buffer four times the size is not wasted on a small frame"
        );
        assert!(pool.take(3 * POOLED_FROM).is_some());
    }

    #[tokio::test]
    async fn kept_buffers_are_freed_when_unused_even_if_dropped_off_the_runtime() {
        let pool: &'static BufferPool = Box::leak(Box::new(BufferPool {
            kept: Mutex::new(Vec::new()),
            keep_for: Duration::from_millis(50),
        }));
        let frame = received(pool, POOLED_FROM, 1);
        std::thread::spawn(move || drop(frame))
            .join()
            .expect("thread");
        assert_eq!(pool.kept.lock().expect("lock").len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            pool.kept.lock().expect("lock").is_empty(),
            "the sweeper freed it"
        );
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_bytes_and_forgets_old_buffers() {
        let pool = pool();
        let size = MOST_KEPT_BYTES / 3 + 1;
        let frames: Vec<Bytes> = (0..3).map(|i| received(pool, size, i)).collect();
        drop(frames);
        let kept: usize = pool
            .kept
            .lock()
            .expect("lock")
            .iter()
            .map(|k| k.buf.capacity())
            .sum();
        assert!(kept <= MOST_KEPT_BYTES, "kept {kept} bytes");
        assert!(pool.sweep(Instant::now()), "fresh buffers are kept");
        assert!(!pool.sweep(Instant::now() + KEEP_FOR), "old ones are freed");
    }
}
