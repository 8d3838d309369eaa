//! A bounded set of recently seen ids.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use foldhash::HashSet;

/// A bounded set of recent ids: membership in O(1), the oldest forgotten first.
///
/// Ids are kept as 128-bit fingerprints (two SipHash values), not strings: about 40 bytes
/// an entry instead of ~170, so the windows of a controller that has run millions of tasks
/// stay small. Two distinct ids share a fingerprint with probability ~n²/2¹²⁹ (about
/// 10⁻²⁷ for a million ids).
#[derive(Debug)]
pub(crate) struct RecentSet {
    capacity: usize,
    members: HashSet<u128>,
    order: VecDeque<u128>,
}

/// The 128-bit fingerprint of an id.
fn fingerprint(id: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
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
            members: HashSet::default(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: &str) {
        let key = fingerprint(id);
        if self.members.contains(&key) {
            return;
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.members.remove(&oldest);
            }
        }
        self.members.insert(key);
        self.order.push_back(key);
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.members.contains(&fingerprint(id))
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
