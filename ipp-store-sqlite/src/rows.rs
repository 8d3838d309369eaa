//! The rows of the requests the writer added whose results are still to come.
//!
//! A result is a row of the results table keyed by its request's row ([`crate::schema`]).
//! Looking that row up by `msg_id` (`INSERT … SELECT rowid FROM requests WHERE msg_id = ?`)
//! is an index search per result: about a third of what writing a result cost the writer
//! (BENCHMARKS.md). The writer knows the row of every request it adds (SQLite's last
//! inserted rowid), so it keeps it here until the task's result is written, and binds it.
//!
//! A row is known only once the batch that added it commits (a rolled-back batch added
//! nothing), and is forgotten when its record is dropped (SQLite may give a later request
//! the same row). Updates of requests not known here (added by an earlier run of the
//! controller, or past [`RequestRows::new`]'s capacity) look their row up as before.

use std::collections::{HashMap, HashSet};

/// How many requests' rows are kept at most: ~100 bytes each (the id moved from the
/// written record, its row, the map's slot), so ~100 MB for a million tasks whose results
/// are outstanding; past that, their results look the row up.
pub(crate) const MOST_KEPT: usize = 1 << 20;

/// Rows of requests awaiting their result, by `msg_id`.
#[derive(Debug)]
pub(crate) struct RequestRows {
    /// Rows of requests added by committed batches.
    rows: HashMap<String, i64>,
    /// Rows of requests added by the batch being written.
    added: Vec<(String, i64)>,
    /// Requests dropped in the batch being written (their rows, if added by it, are not
    /// to be kept).
    dropped: HashSet<String>,
    capacity: usize,
}

impl RequestRows {
    /// Keeps at most `capacity` rows.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            rows: HashMap::new(),
            added: Vec::new(),
            dropped: HashSet::new(),
            capacity,
        }
    }

    /// Notes that the batch being written inserted request `msg_id` as row `row`.
    pub(crate) fn added(&mut self, msg_id: String, row: i64) {
        self.added.push((msg_id, row));
    }

    /// The row of request `msg_id`, if known; forgotten when `last` (the update is the
    /// task's result, after which its row is rarely wanted again).
    pub(crate) fn row(&mut self, msg_id: &str, last: bool) -> Option<i64> {
        if last {
            self.rows.remove(msg_id)
        } else {
            self.rows.get(msg_id).copied()
        }
    }

    /// Forgets the row of request `msg_id`, dropped by the batch being written.
    pub(crate) fn dropped(&mut self, msg_id: &str) {
        self.rows.remove(msg_id);
        if !self.added.is_empty() {
            self.dropped.insert(msg_id.to_owned());
        }
    }

    /// The batch being written committed: the rows it added (and did not drop) are known,
    /// up to the capacity.
    pub(crate) fn committed(&mut self) {
        let room = self.capacity.saturating_sub(self.rows.len());
        let dropped = std::mem::take(&mut self.dropped);
        let kept = self
            .added
            .drain(..)
            .filter(|(msg_id, _)| !dropped.contains(msg_id))
            .take(room);
        self.rows.extend(kept);
        self.added.clear();
    }

    /// The batch being written rolled back: nothing it added exists.
    pub(crate) fn rolled_back(&mut self) {
        self.added.clear();
        self.dropped.clear();
    }

    /// How many rows are known.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_known_once_their_batch_commits_and_until_the_result() {
        let mut rows = RequestRows::new(10);
        rows.added("a".to_owned(), 1);
        assert_eq!(rows.row("a", false), None, "not committed yet");
        rows.committed();
        assert_eq!(rows.row("a", false), Some(1));
        assert_eq!(rows.row("a", true), Some(1));
        assert_eq!(rows.row("a", false), None, "forgotten with the result");
    }

    #[test]
    fn a_rolled_back_batch_adds_nothing() {
        let mut rows = RequestRows::new(10);
        rows.added("a".to_owned(), 1);
        rows.rolled_back();
        rows.committed();
        assert_eq!(rows.row("a", false), None);
    }

    #[test]
    fn dropped_requests_are_forgotten_whichever_batch_added_them() {
        let mut rows = RequestRows::new(10);
        rows.added("a".to_owned(), 1);
        rows.committed();
        rows.added("b".to_owned(), 2);
        rows.added("c".to_owned(), 3);
        rows.dropped("a");
        rows.dropped("b");
        rows.committed();
        assert_eq!(rows.row("a", false), None);
        assert_eq!(rows.row("b", false), None);
        assert_eq!(rows.row("c", false), Some(3));
        // A later batch adding "b" again is not affected by the earlier drop.
        rows.added("b".to_owned(), 4);
        rows.committed();
        assert_eq!(rows.row("b", false), Some(4));
    }

    #[test]
    fn past_the_capacity_rows_are_not_kept() {
        let mut rows = RequestRows::new(2);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            rows.added(id.to_owned(), i as i64);
        }
        rows.committed();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.row("c", false), None);
        rows.row("a", true);
        rows.added("d".to_owned(), 3);
        rows.committed();
        assert_eq!(
            rows.row("d", false),
            Some(3),
            "room again once a result came"
        );
    }
}
