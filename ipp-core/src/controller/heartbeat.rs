//! The heart monitor: pings engines on a period and reports hearts that start or stop.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::events::HubEvent;
use crate::transport::Socket;

/// The bookkeeping of the heart monitor, apart from its sockets (so it can be unit-tested).
#[derive(Debug)]
pub(crate) struct Hearts {
    max_misses: u32,
    /// Known hearts and their consecutive misses.
    beating: HashMap<String, u32>,
    /// Who answered the current or previous ping since the last beat.
    responses: HashSet<String>,
    current_ping: Bytes,
    previous_ping: Bytes,
}

/// What one beat found: the hearts that missed too many beats.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BeatOutcome {
    pub(crate) stopped: Vec<String>,
}

/// What the Hub asks of the heart monitor.
#[derive(Debug)]
pub(crate) enum HeartCommand {
    /// Forget a heart: its engine unregistered, or is registering (anew) and must be
    /// reported again on its next echo.
    Forget(String),
    /// Send the current ping again, a few times over the next moments, so a registering
    /// engine (which connects its heart after the registration reply) echoes without
    /// waiting for the next period.
    PingNow,
}

impl Hearts {
    pub(crate) fn new(max_misses: u32) -> Self {
        Self {
            max_misses,
            beating: HashMap::new(),
            responses: HashSet::new(),
            current_ping: Bytes::new(),
            previous_ping: Bytes::new(),
        }
    }

    /// Records a pong; only echoes of the current or previous ping count. Returns the
    /// heart's uuid when this is its first echo, so a registering engine is reported at
    /// once instead of at the next beat.
    pub(crate) fn pong(&mut self, heart: &[u8], payload: &[u8]) -> Option<String> {
        if payload != self.current_ping.as_ref() && payload != self.previous_ping.as_ref() {
            return None;
        }
        let uuid = std::str::from_utf8(heart).ok()?;
        if !self.responses.contains(uuid) {
            self.responses.insert(uuid.to_owned());
        }
        if self.beating.contains_key(uuid) {
            return None;
        }
        self.beating.insert(uuid.to_owned(), 0);
        Some(uuid.to_owned())
    }

    /// Closes a period: new hearts start, silent ones miss a beat, and those past the allowed
    /// misses stop. Then `next_ping` becomes the payload to expect.
    pub(crate) fn beat(&mut self, next_ping: Bytes) -> BeatOutcome {
        let responded = std::mem::take(&mut self.responses);
        let max_misses = self.max_misses;
        let mut outcome = BeatOutcome::default();
        self.beating.retain(|uuid, misses| {
            if responded.contains(uuid) {
                *misses = 0;
                return true;
            }
            *misses += 1;
            if *misses > max_misses {
                outcome.stopped.push(uuid.clone());
                false
            } else {
                true
            }
        });
        // New hearts were reported by `pong` as their first echo arrived.
        drop(responded);
        outcome.stopped.sort();
        self.previous_ping = std::mem::replace(&mut self.current_ping, next_ping);
        outcome
    }

    /// Makes `next` the ping to expect without closing a period (an extra ping: nobody
    /// misses a beat for it).
    pub(crate) fn rotate(&mut self, next: Bytes) {
        self.previous_ping = std::mem::replace(&mut self.current_ping, next);
    }

    /// The payload of the ping now outstanding.
    pub(crate) fn current_ping(&self) -> &Bytes {
        &self.current_ping
    }

    /// Forgets a heart (its engine unregistered by other means).
    pub(crate) fn forget(&mut self, uuid: &str) {
        self.beating.remove(uuid);
    }

    #[cfg(test)]
    pub(crate) fn is_beating(&self, uuid: &str) -> bool {
        self.beating.contains_key(uuid)
    }
}

/// Spacing of the extra pings sent while an engine registers.
const BURST_STEP: Duration = Duration::from_millis(50);
/// How long extra pings go on after a registration request.
const BURST_LENGTH: Duration = Duration::from_secs(2);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the heart monitor until shutdown: one ping per period on `ping`, pongs `[uuid,
/// payload]` on `pong`, and `HeartsStarted` / `HeartsStopped` events to the Hub.
pub(crate) async fn run_heart_monitor(
    ping: Socket,
    pong: Socket,
    period: Duration,
    max_misses: u32,
    hub: mpsc::Sender<HubEvent>,
    mut commands: mpsc::Receiver<HeartCommand>,
    shutdown: CancellationToken,
) {
    let (ping_tx, _) = ping.split();
    let (_, mut pong_rx) = pong.split();
    let mut hearts = Hearts::new(max_misses);
    let started_at = Instant::now();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Extra pings while engines register: (next extra ping, last one).
    let mut burst: Option<(Instant, Instant)> = None;
    loop {
        let next_burst = burst.map(|(next, _)| next);
        // All branches are cancel-safe (`tick`, channel `recv`).
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                // ipyparallel pings with the monitor's lifetime as a Python float string.
                let lifetime = started_at.elapsed().as_secs_f64();
                let next = Bytes::from(format!("{lifetime:?}"));
                let outcome = hearts.beat(next.clone());
                if !outcome.stopped.is_empty() {
                    tracing::info!(hearts = ?outcome.stopped, "hearts stopped beating");
                    let _ = hub.send(HubEvent::HeartsStopped(outcome.stopped)).await;
                }
                if ping_tx.send(vec![hearts.current_ping().clone()]).await.is_err() {
                    break;
                }
            }
            frames = pong_rx.recv() => {
                let Ok(frames) = frames else { break };
                if let [heart, payload, ..] = frames.as_slice() {
                    if let Some(uuid) = hearts.pong(heart, payload) {
                        tracing::debug!(heart = %uuid, "new heart");
                        let _ = hub.send(HubEvent::HeartsStarted(vec![uuid])).await;
                    }
                }
            }
            command = commands.recv() => match command {
                Some(HeartCommand::Forget(uuid)) => hearts.forget(&uuid),
                Some(HeartCommand::PingNow) => {
                    let now = Instant::now();
                    burst = Some((now + BURST_STEP, now + BURST_LENGTH.min(period)));
                }
                None => {}
            },
            () = sleep_until(next_burst) => {
                let now = Instant::now();
                burst = burst.and_then(|(_, end)| (now < end).then_some((now + BURST_STEP, end)));
                // A fresh lifetime, so the payloads engines see keep growing (our engines
                // detect a restarted controller by its lifetime going backwards).
                let next = Bytes::from(format!("{:?}", started_at.elapsed().as_secs_f64()));
                hearts.rotate(next.clone());
                if ping_tx.send(vec![next]).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(n: u32) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[test]
    fn a_heart_starts_on_its_first_echo() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        assert_eq!(hearts.pong(b"engine-a", b"1"), Some("engine-a".to_owned()));
        assert_eq!(hearts.pong(b"engine-a", b"1"), None);
        assert!(hearts.is_beating("engine-a"));
    }

    #[test]
    fn an_extra_ping_keeps_the_previous_one_valid() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.rotate(ping(2));
        assert!(hearts.pong(b"engine-a", b"1").is_some());
        assert!(hearts.pong(b"engine-b", b"2").is_some());
    }

    #[test]
    fn a_forgotten_heart_is_reported_again() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.pong(b"engine-a", b"1");
        hearts.forget("engine-a");
        assert_eq!(hearts.pong(b"engine-a", b"1"), Some("engine-a".to_owned()));
    }

    #[test]
    fn stale_or_foreign_payloads_do_not_count() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.beat(ping(2));
        hearts.beat(ping(3));
        assert_eq!(hearts.pong(b"engine-a", b"1"), None);
        assert_eq!(hearts.pong(b"engine-b", b"junk"), None);
    }

    #[test]
    fn the_previous_ping_still_counts() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.beat(ping(2));
        assert!(hearts.pong(b"engine-a", b"1").is_some());
    }

    #[test]
    fn a_heart_stops_after_more_than_max_misses() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.pong(b"engine-a", b"1");
        hearts.beat(ping(2));
        assert!(hearts.beat(ping(3)).stopped.is_empty()); // miss 1
        assert!(hearts.beat(ping(4)).stopped.is_empty()); // miss 2
        assert_eq!(hearts.beat(ping(5)).stopped, vec!["engine-a".to_owned()]); // miss 3
        assert!(!hearts.is_beating("engine-a"));
    }

    #[test]
    fn an_answer_resets_the_misses() {
        let mut hearts = Hearts::new(1);
        hearts.beat(ping(1));
        hearts.pong(b"e", b"1");
        hearts.beat(ping(2));
        hearts.beat(ping(3)); // miss 1
        hearts.pong(b"e", b"3");
        hearts.beat(ping(4));
        assert!(hearts.beat(ping(5)).stopped.is_empty()); // miss 1 again
    }
}
