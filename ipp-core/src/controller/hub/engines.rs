//! The Hub's engine table: ids, uuids, pending registrations and per-engine queues.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;

use super::engine_state::EngineState;
use crate::controller::ordered::OrderedIds;

/// One registered engine and the work the Hub knows it has.
#[derive(Debug)]
pub(crate) struct EngineEntry {
    pub(crate) id: u32,
    pub(crate) uuid: String,
    /// Direct requests sent to it and not yet answered.
    pub(crate) queue: OrderedIds,
    /// Load-balanced tasks assigned to it and not yet answered.
    pub(crate) tasks: OrderedIds,
    /// How many requests it finished (aborted tasks excluded); the ids are in the store.
    pub(crate) completed: usize,
}

/// A registration waiting for the engine's first heartbeat.
#[derive(Debug)]
struct PendingRegistration {
    id: u32,
    deadline: Instant,
    /// Read from the engine state file of an earlier controller (not asked for by the
    /// engine): it stays in the state file until the engine is back or given up on.
    restored: bool,
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RegisterError {
    /// The uuid is registered or registering already.
    UuidInUse,
}

/// Engine ids and uuids, live and registering.
#[derive(Debug, Default)]
pub(crate) struct Engines {
    by_id: BTreeMap<u32, EngineEntry>,
    by_uuid: HashMap<String, u32>,
    pending: HashMap<String, PendingRegistration>,
    next_id: u32,
}

impl Engines {
    /// Starts a registration: the requested id if free, else the next counter value.
    /// Ids are never reused while the Hub lives.
    pub(crate) fn begin_registration(
        &mut self,
        uuid: &str,
        requested: Option<u32>,
        deadline: Instant,
    ) -> Result<u32, RegisterError> {
        if self.by_uuid.contains_key(uuid) || self.pending.contains_key(uuid) {
            return Err(RegisterError::UuidInUse);
        }
        let taken =
            |id: u32| self.by_id.contains_key(&id) || self.pending.values().any(|p| p.id == id);
        let id = match requested {
            Some(id) if !taken(id) => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                id
            }
            _ => {
                while taken(self.next_id) {
                    self.next_id += 1;
                }
                let id = self.next_id;
                self.next_id += 1;
                id
            }
        };
        self.pending.insert(
            uuid.to_owned(),
            PendingRegistration {
                id,
                deadline,
                restored: false,
            },
        );
        Ok(id)
    }

    /// Takes back the engines of an earlier controller's state file: each waits, with its
    /// old id, for its first heartbeat (until `deadline`), as a registering engine does; the
    /// id counter goes on from the state's (or past the highest id).
    pub(crate) fn restore(&mut self, state: EngineState, deadline: Instant) {
        let EngineState { engines, next_id } = state;
        for (id, uuid) in engines {
            self.next_id = self.next_id.max(id.saturating_add(1));
            self.pending.insert(
                uuid,
                PendingRegistration {
                    id,
                    deadline,
                    restored: true,
                },
            );
        }
        self.next_id = self.next_id.max(next_id);
    }

    /// What the engine state file holds: the registered engines, those restored and not
    /// back yet, and the id counter.
    pub(crate) fn state(&self) -> EngineState {
        let registered = self
            .by_id
            .values()
            .map(|entry| (entry.id, entry.uuid.clone()));
        let restored = self
            .pending
            .iter()
            .filter(|(_, pending)| pending.restored)
            .map(|(uuid, pending)| (pending.id, uuid.clone()));
        EngineState::new(registered.chain(restored), self.next_id)
    }

    /// Completes a pending registration; returns its id, or `None` if it was not pending.
    pub(crate) fn complete_registration(&mut self, uuid: &str) -> Option<u32> {
        let pending = self.pending.remove(uuid)?;
        self.by_uuid.insert(uuid.to_owned(), pending.id);
        self.by_id.insert(
            pending.id,
            EngineEntry {
                id: pending.id,
                uuid: uuid.to_owned(),
                queue: OrderedIds::new(),
                tasks: OrderedIds::new(),
                completed: 0,
            },
        );
        Some(pending.id)
    }

    /// Cancels a pending registration by uuid or id; true if one was pending.
    pub(crate) fn cancel_pending(&mut self, uuid: Option<&str>, id: Option<u32>) -> bool {
        let before = self.pending.len();
        self.pending
            .retain(|pending_uuid, p| Some(pending_uuid.as_str()) != uuid && Some(p.id) != id);
        self.pending.len() != before
    }

    /// Drops registrations whose engines never sent a heartbeat in time: (uuid, id,
    /// whether it was restored).
    pub(crate) fn purge_stalled(&mut self, now: Instant) -> Vec<(String, u32, bool)> {
        let stalled: Vec<(String, u32, bool)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(uuid, p)| (uuid.clone(), p.id, p.restored))
            .collect();
        for (uuid, ..) in &stalled {
            self.pending.remove(uuid);
        }
        stalled
    }

    /// Removes a registered engine.
    pub(crate) fn remove(&mut self, id: u32) -> Option<EngineEntry> {
        let entry = self.by_id.remove(&id)?;
        self.by_uuid.remove(&entry.uuid);
        Some(entry)
    }

    /// The id of a registered engine.
    pub(crate) fn id_of(&self, uuid: &str) -> Option<u32> {
        self.by_uuid.get(uuid).copied()
    }

    /// A registered engine by uuid.
    pub(crate) fn by_uuid_mut(&mut self, uuid: &str) -> Option<&mut EngineEntry> {
        let id = self.by_uuid.get(uuid)?;
        self.by_id.get_mut(id)
    }

    /// A registered engine by id.
    pub(crate) fn get(&self, id: u32) -> Option<&EngineEntry> {
        self.by_id.get(&id)
    }

    /// Every registered engine, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &EngineEntry> {
        self.by_id.values()
    }

    /// Finds an engine by id or uuid as a client names it (an int, or a string).
    pub(crate) fn resolve(&self, target: &serde_json::Value) -> Option<u32> {
        match target {
            serde_json::Value::Number(n) => {
                let id = u32::try_from(n.as_u64()?).ok()?;
                self.by_id.contains_key(&id).then_some(id)
            }
            serde_json::Value::String(s) => self
                .by_uuid
                .get(s)
                .copied()
                .or_else(|| s.parse().ok().filter(|id| self.by_id.contains_key(id))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(30)
    }

    #[test]
    fn ids_count_up_and_are_never_reused() {
        let mut engines = Engines::default();
        assert_eq!(engines.begin_registration("a", None, later()), Ok(0));
        engines.complete_registration("a");
        engines.remove(0);
        assert_eq!(engines.begin_registration("b", None, later()), Ok(1));
    }

    #[test]
    fn a_free_requested_id_is_granted_and_moves_the_counter() {
        let mut engines = Engines::default();
        assert_eq!(engines.begin_registration("a", Some(5), later()), Ok(5));
        assert_eq!(engines.begin_registration("b", Some(5), later()), Ok(6));
        assert_eq!(engines.begin_registration("c", None, later()), Ok(7));
    }

    #[test]
    fn a_uuid_in_use_is_refused() {
        let mut engines = Engines::default();
        engines.begin_registration("a", None, later()).unwrap();
        assert_eq!(
            engines.begin_registration("a", None, later()),
            Err(RegisterError::UuidInUse)
        );
        engines.complete_registration("a");
        assert_eq!(
            engines.begin_registration("a", None, later()),
            Err(RegisterError::UuidInUse)
        );
    }

    #[test]
    fn stalled_registrations_are_purged() {
        let mut engines = Engines::default();
        let now = Instant::now();
        engines.begin_registration("a", None, now).unwrap();
        assert_eq!(engines.purge_stalled(now), vec![("a".to_owned(), 0, false)]);
        assert_eq!(engines.complete_registration("a"), None);
    }

    #[test]
    fn restored_engines_keep_their_ids_until_they_are_back_or_given_up() {
        let mut engines = Engines::default();
        let deadline = later();
        engines.restore(
            EngineState::new([(0, "a".to_owned()), (4, "b".to_owned())], 2),
            deadline,
        );
        // Their ids are taken, the counter is past them, and a restored uuid is in use.
        assert_eq!(engines.begin_registration("c", Some(4), later()), Ok(5));
        assert_eq!(
            engines.begin_registration("a", None, later()),
            Err(RegisterError::UuidInUse)
        );
        assert_eq!(
            engines.state(),
            EngineState::new([(0, "a".to_owned()), (4, "b".to_owned())], 6),
            "restored engines stay in the state; a registering new one does not"
        );
        // Back on its first heartbeat, with its old id.
        assert_eq!(engines.complete_registration("a"), Some(0));
        assert_eq!(engines.complete_registration("c"), Some(5));
        // Given up on at the deadline.
        assert_eq!(
            engines.purge_stalled(deadline),
            vec![("b".to_owned(), 4, true)]
        );
        assert_eq!(
            engines.state(),
            EngineState::new([(0, "a".to_owned()), (5, "c".to_owned())], 6)
        );
    }

    #[test]
    fn targets_resolve_by_id_or_uuid() {
        let mut engines = Engines::default();
        engines.begin_registration("a", None, later()).unwrap();
        engines.complete_registration("a");
        assert_eq!(engines.resolve(&serde_json::json!(0)), Some(0));
        assert_eq!(engines.resolve(&serde_json::json!("a")), Some(0));
        assert_eq!(engines.resolve(&serde_json::json!(3)), None);
    }
}
