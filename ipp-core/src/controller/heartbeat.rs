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

/// What one beat found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BeatOutcome {
    pub(crate) started: Vec<String>,
    pub(crate) stopped: Vec<String>,
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

    /// Records a pong; only echoes of the current or previous ping count.
    pub(crate) fn pong(&mut self, heart: &[u8], payload: &[u8]) {
        if payload != self.current_ping.as_ref() && payload != self.previous_ping.as_ref() {
            return;
        }
        if let Ok(uuid) = std::str::from_utf8(heart) {
            self.responses.insert(uuid.to_owned());
        }
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
        for uuid in responded {
            if !self.beating.contains_key(&uuid) {
                self.beating.insert(uuid.clone(), 0);
                outcome.started.push(uuid);
            }
        }
        outcome.started.sort();
        outcome.stopped.sort();
        self.previous_ping = std::mem::replace(&mut self.current_ping, next_ping);
        outcome
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

/// Runs the heart monitor until shutdown: one ping per period on `ping`, pongs `[uuid,
/// payload]` on `pong`, and `HeartsStarted` / `HeartsStopped` events to the Hub.
pub(crate) async fn run_heart_monitor(
    ping: Socket,
    pong: Socket,
    period: Duration,
    max_misses: u32,
    hub: mpsc::Sender<HubEvent>,
    mut forget: mpsc::Receiver<String>,
    shutdown: CancellationToken,
) {
    let (ping_tx, _) = ping.split();
    let (_, mut pong_rx) = pong.split();
    let mut hearts = Hearts::new(max_misses);
    let started_at = Instant::now();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // All branches are cancel-safe (`tick`, channel `recv`).
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                // ipyparallel pings with the monitor's lifetime as a Python float string.
                let lifetime = started_at.elapsed().as_secs_f64();
                let next = Bytes::from(format!("{lifetime:?}"));
                let outcome = hearts.beat(next.clone());
                if !outcome.started.is_empty() {
                    tracing::debug!(hearts = ?outcome.started, "new hearts");
                    let _ = hub.send(HubEvent::HeartsStarted(outcome.started)).await;
                }
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
                    hearts.pong(heart, payload);
                }
            }
            uuid = forget.recv() => {
                if let Some(uuid) = uuid {
                    hearts.forget(&uuid);
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
        hearts.pong(b"engine-a", b"1");
        let outcome = hearts.beat(ping(2));
        assert_eq!(outcome.started, vec!["engine-a".to_owned()]);
        assert!(hearts.is_beating("engine-a"));
    }

    #[test]
    fn stale_or_foreign_payloads_do_not_count() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.beat(ping(2));
        hearts.beat(ping(3));
        hearts.pong(b"engine-a", b"1");
        hearts.pong(b"engine-b", b"junk");
        assert!(hearts.beat(ping(4)).started.is_empty());
    }

    #[test]
    fn the_previous_ping_still_counts() {
        let mut hearts = Hearts::new(2);
        hearts.beat(ping(1));
        hearts.beat(ping(2));
        hearts.pong(b"engine-a", b"1");
        assert_eq!(hearts.beat(ping(3)).started.len(), 1);
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
