//! Assignments the writer holds back, to write them with their task's result.
//!
//! When the Hub sends a task to an engine it records the assignment: an update that only
//! sets `engine_uuid`. Written on its own, it is an `UPDATE` that rewrites the request's
//! whole row (~650 bytes), and the task's result follows a moment later (at hwm 1, within
//! milliseconds) to be written anyway (~16,000 instructions per task in the store bench; in
//! the controller at hwm 1 the writer does 11% less without it, BENCHMARKS.md). So the
//! writer holds an assignment whose request is already committed, and gives its engine to
//! the next update of the same task (the result, or output before it) instead; one that is
//! held too long or too many is written on its own, as before.
//!
//! Nobody sees the difference through the store: reads and drops write every held
//! assignment first (drops may match on `engine_uuid`), as does closing. Another process
//! reading the file sees an assignment at most the hold (`SqliteConfig::assignment_hold_ms`,
//! [`HOLD_MS`] by default; plus a commit) after it was made.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ipp_core::store::RecordUpdate;

/// The longest an assignment is held before it is written on its own, by default
/// (`SqliteConfig::assignment_hold_ms`), in milliseconds.
pub(crate) const HOLD_MS: u64 = 1000;

/// The most assignments held at once; beyond it the oldest are written (each holds its
/// boxed update, a few hundred bytes).
pub(crate) const MOST_HELD: usize = 4096;

/// An assignment held back, and the ticket of its place in the order of holding.
#[derive(Debug)]
struct HeldUpdate {
    ticket: u64,
    update: Box<RecordUpdate>,
}

/// The held assignments by task id, oldest first.
#[derive(Debug)]
pub(crate) struct Held {
    by_id: HashMap<String, HeldUpdate>,
    /// `(ticket, held since, msg_id)` in the order held; entries whose ticket no longer
    /// matches `by_id` (taken, or held again since) are skipped.
    order: VecDeque<(u64, Instant, String)>,
    next_ticket: u64,
    hold: Duration,
    most: usize,
}

impl Held {
    /// Holds assignments at most `hold` and `most` at once.
    pub(crate) fn new(hold: Duration, most: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            next_ticket: 0,
            hold,
            most,
        }
    }

    /// How many assignments are held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Holds `update` (an assignment of `msg_id`) from `now`; returns the assignment it
    /// replaces, if one was held (a task sent again: the later engine is the one to keep).
    pub(crate) fn hold(
        &mut self,
        msg_id: String,
        update: Box<RecordUpdate>,
        now: Instant,
    ) -> Option<(String, Box<RecordUpdate>)> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.order.push_back((ticket, now, msg_id.clone()));
        let replaced = match self.by_id.entry(msg_id) {
            Entry::Occupied(mut held) => {
                let earlier = std::mem::replace(held.get_mut(), HeldUpdate { ticket, update });
                Some((held.key().clone(), earlier.update))
            }
            Entry::Vacant(slot) => {
                slot.insert(HeldUpdate { ticket, update });
                None
            }
        };
        self.compact();
        replaced
    }

    /// Takes the assignment held for `msg_id`, if any.
    pub(crate) fn take(&mut self, msg_id: &str) -> Option<(String, Box<RecordUpdate>)> {
        let taken = self
            .by_id
            .remove_entry(msg_id)
            .map(|(id, held)| (id, held.update));
        if taken.is_some() {
            self.compact();
        }
        taken
    }

    /// When the oldest held assignment is due to be written on its own.
    pub(crate) fn next_due(&mut self) -> Option<Instant> {
        self.skip_stale();
        self.order.front().map(|(_, since, _)| *since + self.hold)
    }

    /// Takes, oldest first, the assignments held `hold` or longer at `now`, and the oldest
    /// beyond the `most` held.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<(String, Box<RecordUpdate>)> {
        let mut due = Vec::new();
        loop {
            self.skip_stale();
            let Some((_, since, _)) = self.order.front() else {
                break;
            };
            if self.by_id.len() <= self.most && now < *since + self.hold {
                break;
            }
            if let Some((_, _, msg_id)) = self.order.pop_front() {
                due.extend(
                    self.by_id
                        .remove_entry(&msg_id)
                        .map(|(id, h)| (id, h.update)),
                );
            }
        }
        due
    }

    /// Takes every held assignment, oldest first.
    pub(crate) fn take_all(&mut self) -> Vec<(String, Box<RecordUpdate>)> {
        let mut all = Vec::with_capacity(self.by_id.len());
        for (ticket, _, msg_id) in self.order.drain(..) {
            if self.by_id.get(&msg_id).is_some_and(|h| h.ticket == ticket) {
                all.extend(
                    self.by_id
                        .remove_entry(&msg_id)
                        .map(|(id, h)| (id, h.update)),
                );
            }
        }
        all
    }

    /// Drops stale entries from the front of the order.
    fn skip_stale(&mut self) {
        while let Some((ticket, _, msg_id)) = self.order.front() {
            if self.by_id.get(msg_id).is_some_and(|h| h.ticket == *ticket) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Keeps the order's stale entries (of assignments taken before they were due) from
    /// outgrowing the live ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.by_id.len() + 64 {
            let by_id = &self.by_id;
            self.order.retain(|(ticket, _, msg_id)| {
                by_id.get(msg_id).is_some_and(|h| h.ticket == *ticket)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(engine: &str) -> Box<RecordUpdate> {
        Box::new(RecordUpdate {
            engine_uuid: Some(engine.to_owned()),
            ..RecordUpdate::default()
        })
    }

    fn ids(taken: &[(String, Box<RecordUpdate>)]) -> Vec<(&str, &str)> {
        taken
            .iter()
            .map(|(id, u)| (id.as_str(), u.engine_uuid.as_deref().unwrap_or("")))
            .collect()
    }

    #[test]
    fn assignments_come_due_oldest_first_after_the_hold() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut held = Held::new(Duration::from_millis(100), 10);
        held.hold("a".into(), assign("e1"), at(0));
        held.hold("b".into(), assign("e1"), at(10));
        held.hold("c".into(), assign("e2"), at(20));
        assert_eq!(held.next_due(), Some(at(100)));
        assert!(held.take("a").is_some());
        assert_eq!(held.next_due(), Some(at(110)), "a taken: b is the oldest");
        // b held again later: its first place is stale, c comes first.
        let replaced = held.hold("b".into(), assign("e2"), at(50));
        assert_eq!(
            replaced.map(|(_, u)| u.engine_uuid),
            Some(Some("e1".into()))
        );
        assert!(held.take_due(at(119)).is_empty());
        assert_eq!(ids(&held.take_due(at(120))), [("c", "e2")]);
        assert_eq!(ids(&held.take_due(at(200))), [("b", "e2")]);
        assert!(held.is_empty());
        assert_eq!(held.next_due(), None);
    }

    #[test]
    fn beyond_the_most_held_the_oldest_are_due_at_once() {
        let now = Instant::now();
        let mut held = Held::new(Duration::from_secs(60), 2);
        for id in ["a", "b", "c", "d"] {
            held.hold(id.into(), assign(id), now);
        }
        assert_eq!(ids(&held.take_due(now)), [("a", "a"), ("b", "b")]);
        assert_eq!(held.len(), 2);
        assert_eq!(ids(&held.take_all()), [("c", "c"), ("d", "d")]);
    }

    #[test]
    fn stale_places_do_not_pile_up() {
        let now = Instant::now();
        let mut held = Held::new(Duration::from_secs(60), 10);
        for n in 0..10_000 {
            let id = format!("t{n}");
            held.hold(id.clone(), assign("e"), now);
            assert!(held.take(&id).is_some());
        }
        assert!(held.order.len() <= 64 + 1, "{}", held.order.len());
    }
}
