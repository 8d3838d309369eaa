//! A set of ids kept in insertion order, with O(log n) insert and remove.

use std::collections::BTreeMap;

use foldhash::HashMap;

/// A set of ids in insertion order. Unlike `IndexSet::shift_remove` (O(n): it moves every
/// later entry), removing from anywhere costs O(log n), so a queue of 100,000 waiting tasks
/// costs no more per task than a queue of ten.
#[derive(Debug, Default)]
pub(crate) struct OrderedIds {
    next: u64,
    position: HashMap<String, u64>,
    order: BTreeMap<u64, String>,
}

impl OrderedIds {
    /// An empty set.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds `id` at the end; `false` (and no change of place) if it is already there.
    pub(crate) fn insert(&mut self, id: String) -> bool {
        if self.position.contains_key(&id) {
            return false;
        }
        let at = self.next;
        self.next += 1;
        self.position.insert(id.clone(), at);
        self.order.insert(at, id);
        true
    }

    /// Removes `id`, keeping the order of the others; `true` if it was there.
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        match self.position.remove(id) {
            Some(at) => {
                self.order.remove(&at);
                true
            }
            None => false,
        }
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.position.contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.position.len()
    }

    /// The ids, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &String> {
        self.order.values()
    }
}

impl<'a> IntoIterator for &'a OrderedIds {
    type Item = &'a String;
    type IntoIter = std::collections::btree_map::Values<'a, u64, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.order.values()
    }
}

impl IntoIterator for OrderedIds {
    type Item = String;
    type IntoIter = std::collections::btree_map::IntoValues<u64, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.order.into_values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_insertion_order_across_removals_and_repeats() {
        let mut ids = OrderedIds::new();
        for id in ["a", "b", "c", "d"] {
            assert!(ids.insert(id.to_owned()));
        }
        assert!(!ids.insert("b".to_owned()));
        assert!(ids.remove("b"));
        assert!(!ids.remove("b"));
        assert!(ids.insert("b".to_owned()));
        assert_eq!(
            ids.iter().cloned().collect::<Vec<_>>(),
            ["a", "c", "d", "b"]
        );
        assert!(ids.contains("c") && !ids.contains("z"));
        assert_eq!(ids.len(), 4);
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "b"]);
    }
}
