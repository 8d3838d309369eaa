//! A bounded set of recently seen ids.

use std::collections::{HashSet, VecDeque};

/// A bounded set of recent ids: membership in O(1), the oldest forgotten first.
#[derive(Debug)]
pub(crate) struct RecentSet {
    capacity: usize,
    members: HashSet<String>,
    order: VecDeque<String>,
}

impl Default for RecentSet {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl RecentSet {
    /// Enough for any client still polling its results, small enough that the controller's
    /// memory stays flat over millions of tasks.
    pub(crate) const DEFAULT_CAPACITY: usize = 65_536;

    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            members: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: &str) {
        if self.members.contains(id) {
            return;
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.members.insert(id.to_owned());
        self.order.push_back(id.to_owned());
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.members.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_id_is_forgotten_first() {
        let mut set = RecentSet::with_capacity(2);
        set.insert("a");
        set.insert("b");
        set.insert("a"); // already there: no change of order
        set.insert("c");
        assert!(!set.contains("a"));
        assert!(set.contains("b") && set.contains("c"));
    }
}
