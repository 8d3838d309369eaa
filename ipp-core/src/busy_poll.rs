//! Busy polling: a runtime that keeps polling its sockets for a short while after network
//! activity instead of going to sleep at once.
//!
//! A message between two processes on different CPUs costs a wake-up of the receiver
//! when it sleeps. On a virtual machine whose idle CPUs halt (most cloud VMs), that wake-up
//! is an inter-processor interrupt through the hypervisor: tens of microseconds, several
//! times what the message's own work costs (`perf bench sched pipe` on the 2-vCPU VMs we
//! measure on: 33–58 µs per round trip across CPUs, 2.5 µs on one CPU). A no-op task's
//! round trip crosses four such sleeps (client, controller, engine, controller).
//!
//! With [`BusyPoll`] installed, a runtime that has just received data keeps polling (a
//! non-blocking `epoll_wait` between yields of the CPU to other runnable threads) until
//! `window` passes without any data received, and only then sleeps. Replies that arrive
//! within the window are read without any wake-up. The cost is CPU time: at most `window`
//! of spinning after each burst of traffic, and none while nothing arrives. Polling also
//! stops as soon as a yield of the CPU finds another thread waiting for it, so a busy
//! machine's CPUs go to work (a task database's writer thread, other processes) rather
//! than to spinning.
//!
//! ```no_run
//! use std::time::Duration;
//! use ipp_core::busy_poll::BusyPoll;
//!
//! let busy_poll = BusyPoll::new(Duration::from_micros(100));
//! let runtime = busy_poll
//!     .install(&mut tokio::runtime::Builder::new_current_thread())
//!     .enable_all()
//!     .build()?;
//! runtime.block_on(async {
//!     busy_poll.start();
//!     // ... the controller, engines or client ...
//! });
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Activity is what transports report with [`note_activity`] (the ZeroMQ transport: each
//! read from a socket); the count is process-wide.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The window the reference binaries use unless told otherwise: longer than a no-op
/// task's round trip with busy polling (~75 µs on the 2-vCPU VMs of BENCHMARKS.md), so a
/// client, controller or engine waiting on one catches it without sleeping.
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(100);

/// A yield of the CPU that took this long gave it to another thread: the CPU has more
/// runnable work than it can run, and polling stops (a yield to nobody takes ~1 µs).
const CONTENDED: Duration = Duration::from_micros(20);

/// Reads of network data in this process, as transports report them.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// Records that data arrived from the network (transports call it for each read).
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

fn activity() -> u64 {
    ACTIVITY.load(Ordering::Relaxed)
}

/// Keeps a tokio runtime polling for `window` after network activity before it sleeps.
///
/// [`BusyPoll::install`] hooks the runtime's wake-ups (from its builder);
/// [`BusyPoll::start`] spawns the task that polls (inside the runtime). A zero window
/// turns it off: nothing is hooked or spawned.
#[derive(Clone, Debug)]
pub struct BusyPoll {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    window: Duration,
    /// Signalled each time a worker of the runtime wakes from sleep.
    woken: Notify,
}

impl BusyPoll {
    /// Polls for up to `window` after the last data received; zero: never.
    pub fn new(window: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                window,
                woken: Notify::new(),
            }),
        }
    }

    /// The window after the last activity during which the runtime keeps polling.
    pub fn window(&self) -> Duration {
        self.shared.window
    }

    /// Adds the hook that starts polling whenever a worker of the runtime wakes up.
    pub fn install<'b>(
        &self,
        builder: &'b mut tokio::runtime::Builder,
    ) -> &'b mut tokio::runtime::Builder {
        if self.shared.window.is_zero() {
            return builder;
        }
        let shared = Arc::clone(&self.shared);
        builder.on_thread_unpark(move || shared.woken.notify_one())
    }

    /// Spawns the polling task on the current runtime (the one [`BusyPoll::install`]
    /// hooked); `None` when the window is zero.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(&self) -> Option<JoinHandle<()>> {
        if self.shared.window.is_zero() {
            return None;
        }
        Some(tokio::spawn(poll_while_active(Arc::clone(&self.shared))))
    }
}

/// After each wake-up of the runtime that brought data, yields (so the runtime polls its
/// sockets without blocking and runs what they woke) until `window` passes without data
/// received. Wake-ups without data (timers, other threads' wakes) start nothing.
async fn poll_while_active(shared: Arc<Shared>) {
    let mut seen = activity();
    loop {
        shared.woken.notified().await;
        // Behind the tasks the wake-up made runnable, so their reads are counted.
        tokio::task::yield_now().await;
        if activity() == seen {
            continue;
        }
        let mut last_activity = Instant::now();
        loop {
            // Another thread runnable on this CPU goes first; returns at once otherwise.
            let yielded = Instant::now();
            std::thread::yield_now();
            if yielded.elapsed() >= CONTENDED {
                // Another thread needed this CPU: spinning takes CPU time from real work
                // (a store's writer thread, other processes), so sleep until the next
                // wake-up instead.
                seen = activity();
                break;
            }
            // Back on the runtime's queue behind what IO woke: tokio polls its driver
            // (without blocking) before it runs this task again.
            tokio::task::yield_now().await;
            let now = activity();
            if now != seen {
                seen = now;
                last_activity = Instant::now();
            } else if last_activity.elapsed() >= shared.window {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_window_installs_and_spawns_nothing() {
        let busy_poll = BusyPoll::new(Duration::ZERO);
        let runtime = busy_poll
            .install(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
            .expect("a runtime");
        assert!(runtime.block_on(async { busy_poll.start() }).is_none());
    }

    /// CPU time of the calling thread (Linux: `/proc/thread-self/schedstat`, in ns).
    #[cfg(target_os = "linux")]
    fn thread_cpu() -> Duration {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|field| field.parse().ok())
            .expect("on-CPU nanoseconds");
        Duration::from_nanos(ns)
    }

    /// CPU time the calling thread uses while the runtime waits `for_how_long`.
    #[cfg(target_os = "linux")]
    async fn cpu_while_waiting(for_how_long: Duration) -> Duration {
        let before = thread_cpu();
        tokio::time::sleep(for_how_long).await;
        thread_cpu().saturating_sub(before)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn it_polls_after_a_wake_up_and_stops_when_the_window_passes_without_activity() {
        let busy_poll = BusyPoll::new(Duration::from_millis(60));
        let runtime = busy_poll
            .install(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let task = busy_poll.start().expect("a nonzero window spawns");
            // Wake-ups without data (this timer's) start no polling.
            let idle = cpu_while_waiting(Duration::from_millis(40)).await;
            // Data arrived; the wake-up after it starts the window.
            note_activity();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let polling = cpu_while_waiting(Duration::from_millis(40)).await;
            // Nothing more arrives: polling ends 60 ms after that wake-up, and the timer's
            // wake-up at the end of this sleep brings no data.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let after = cpu_while_waiting(Duration::from_millis(40)).await;
            assert!(
                idle < Duration::from_millis(5),
                "idle: {idle:?} of CPU in 40 ms"
            );
            assert!(
                polling > Duration::from_millis(5),
                "polling: only {polling:?} of CPU in 40 ms"
            );
            assert!(
                after < Duration::from_millis(5),
                "after: {after:?} of CPU in 40 ms"
            );
            task.abort();
        });
    }
}
