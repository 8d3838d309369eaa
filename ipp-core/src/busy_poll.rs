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
//! let runtime = BusyPoll::new(Duration::from_micros(100))
//!     .build(&mut tokio::runtime::Builder::new_current_thread())?;
//! runtime.block_on(async {
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

    /// Builds a runtime from `builder` (IO and time enabled) with this busy polling
    /// installed and its polling task spawned: [`BusyPoll::install`] and
    /// [`BusyPoll::start`] in one call.
    ///
    /// # Errors
    /// As `tokio::runtime::Builder::build`.
    pub fn build(
        &self,
        builder: &mut tokio::runtime::Builder,
    ) -> std::io::Result<tokio::runtime::Runtime> {
        let runtime = self.install(builder).enable_all().build()?;
        {
            // On a current-thread runtime the task runs whenever a thread drives it.
            let _entered = runtime.enter();
            self.start();
        }
        Ok(runtime)
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
/// sockets without blocking and runs what they woke) until [`Polling`] says to stop.
/// Wake-ups without data (timers, other threads' wakes) start nothing.
async fn poll_while_active(shared: Arc<Shared>) {
    let mut seen = activity();
    loop {
        shared.woken.notified().await;
        // Behind the tasks the wake-up made runnable, so their reads are counted.
        tokio::task::yield_now().await;
        if activity() == seen {
            continue;
        }
        let mut polling = Polling::new(shared.window, activity(), Instant::now());
        loop {
            // Another thread runnable on this CPU goes first; returns at once otherwise.
            let yielded = Instant::now();
            std::thread::yield_now();
            let yield_took = yielded.elapsed();
            // Back on the runtime's queue behind what IO woke: tokio polls its driver
            // (without blocking) before it runs this task again.
            tokio::task::yield_now().await;
            if !polling.goes_on(activity(), Instant::now(), yield_took) {
                break;
            }
        }
        seen = activity();
    }
}

/// One stretch of polling: whether to go on after each turn.
#[derive(Debug)]
struct Polling {
    window: Duration,
    seen: u64,
    last_activity: Instant,
}

impl Polling {
    fn new(window: Duration, activity: u64, now: Instant) -> Self {
        Self {
            window,
            seen: activity,
            last_activity: now,
        }
    }

    /// After a turn that ended at `now` with the activity count at `activity`, whose yield
    /// of the CPU took `yield_took`: poll on while data keeps arriving within the window,
    /// stop once it has not for a whole window, or at once when the yield went to another
    /// thread (the CPU has runnable work, and polling would take time from it: a task
    /// database's writer thread, other processes).
    fn goes_on(&mut self, activity: u64, now: Instant, yield_took: Duration) -> bool {
        if yield_took >= CONTENDED {
            return false;
        }
        if activity != self.seen {
            self.seen = activity;
            self.last_activity = now;
            return true;
        }
        now.saturating_duration_since(self.last_activity) < self.window
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

    #[test]
    fn polling_goes_on_while_data_arrives_within_the_window() {
        let start = Instant::now();
        let window = Duration::from_micros(100);
        let quick = Duration::from_micros(1);
        let mut polling = Polling::new(window, 7, start);
        let at = |micros| start + Duration::from_micros(micros);
        assert!(polling.goes_on(7, at(60), quick), "within the window");
        assert!(polling.goes_on(8, at(90), quick), "data arrived");
        // The window now counts from the last data: 90 µs.
        assert!(polling.goes_on(8, at(150), quick));
        assert!(
            !polling.goes_on(8, at(190), quick),
            "a whole window without data"
        );
    }

    #[test]
    fn polling_stops_when_a_yield_gave_the_cpu_to_another_thread() {
        let start = Instant::now();
        let mut polling = Polling::new(Duration::from_millis(1), 0, start);
        // Data keeps arriving, but the CPU is wanted elsewhere.
        assert!(!polling.goes_on(1, start, CONTENDED));
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

    /// How much a thread polls depends on the machine's load (it stops for other work),
    /// so this checks only what must hold under any load: a runtime with busy polling
    /// sleeps when no data arrives, before and after a window of polling.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_runtime_without_data_sleeps_before_and_after_polling() {
        let busy_poll = BusyPoll::new(Duration::from_millis(20));
        let runtime = busy_poll
            .install(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let task = busy_poll.start().expect("a nonzero window spawns");
            // Wake-ups without data (this timer's) start no polling.
            let idle = cpu_while_waiting(Duration::from_millis(40)).await;
            // Data arrived; the next wake-up (at the latest this timer's) starts a window
            // of polling, which ends 20 ms later without more data (sooner if the CPU is
            // busy); the wake-up after that brings no data and starts nothing.
            note_activity();
            tokio::time::sleep(Duration::from_millis(60)).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
            let after = cpu_while_waiting(Duration::from_millis(40)).await;
            assert!(
                idle < Duration::from_millis(5),
                "idle: {idle:?} of CPU in 40 ms"
            );
            assert!(
                after < Duration::from_millis(5),
                "after: {after:?} of CPU in 40 ms"
            );
            task.abort();
        });
    }
}
