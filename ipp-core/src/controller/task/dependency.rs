//! Graph dependencies (`after`, `follow`) as ipyparallel encodes them in task metadata.

use std::collections::HashSet;
use std::hash::BuildHasher;

use serde_json::Value;

/// A set of finished task ids, as the dependency checks read it.
pub(crate) trait IdSet {
    fn has(&self, id: &str) -> bool;
}

impl<S: BuildHasher> IdSet for HashSet<String, S> {
    fn has(&self, id: &str) -> bool {
        self.contains(id)
    }
}

impl IdSet for crate::controller::recent::RecentSet {
    fn has(&self, id: &str) -> bool {
        self.contains(id)
    }
}

/// A set of task ids with the flags that say when it is met.
///
/// On the wire it is either a plain list of msg_ids (all = true, success = true,
/// failure = false) or `{"dependencies": [...], "all": bool, "success": bool, "failure": bool}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dependency {
    pub(crate) ids: Vec<String>,
    pub(crate) all: bool,
    pub(crate) success: bool,
    pub(crate) failure: bool,
}

impl Dependency {
    /// Reads a dependency from request metadata; anything unreadable counts as empty.
    pub(crate) fn from_metadata(value: Option<&Value>) -> Self {
        let mut dep = Self {
            ids: Vec::new(),
            all: true,
            success: true,
            failure: false,
        };
        let ids = match value {
            Some(Value::Array(items)) => Some(items),
            Some(Value::Object(map)) => {
                let flag = |key: &str, default: bool| {
                    map.get(key).and_then(Value::as_bool).unwrap_or(default)
                };
                dep.all = flag("all", true);
                dep.success = flag("success", true);
                dep.failure = flag("failure", false);
                map.get("dependencies").and_then(Value::as_array)
            }
            _ => None,
        };
        if let Some(ids) = ids {
            for id in ids.iter().filter_map(Value::as_str) {
                if !dep.ids.iter().any(|known| known == id) {
                    dep.ids.push(id.to_owned());
                }
            }
        }
        dep
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the dependency holds, given the finished tasks.
    pub(crate) fn is_met(&self, completed: &impl IdSet, failed: &impl IdSet) -> bool {
        if self.ids.is_empty() {
            return true;
        }
        let counts =
            |id: &String| (self.success && completed.has(id)) || (self.failure && failed.has(id));
        if self.all {
            self.ids.iter().all(counts)
        } else {
            self.ids.iter().any(counts)
        }
    }

    /// Whether the dependency can never hold, given the finished tasks.
    pub(crate) fn is_unreachable(&self, completed: &impl IdSet, failed: &impl IdSet) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let spoiled =
            |id: &String| (!self.success && completed.has(id)) || (!self.failure && failed.has(id));
        if self.all {
            self.ids.iter().any(spoiled)
        } else {
            self.ids.iter().all(spoiled)
        }
    }

    /// Drops ids that are already satisfied (only for `all` dependencies, as ipyparallel).
    pub(crate) fn reduce(&mut self, completed: &impl IdSet, failed: &impl IdSet) {
        if !self.all {
            return;
        }
        let (success, failure) = (self.success, self.failure);
        self.ids
            .retain(|id| !((success && completed.has(id)) || (failure && failed.has(id))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_plain_list_means_all_succeeded() {
        let dep = Dependency::from_metadata(Some(&json!(["a", "b"])));
        assert!(dep.all && dep.success && !dep.failure);
        assert!(!dep.is_met(&set(&["a"]), &set(&[])));
        assert!(dep.is_met(&set(&["a", "b"]), &set(&[])));
        assert!(dep.is_unreachable(&set(&["a"]), &set(&["b"])));
    }

    #[test]
    fn any_with_failure_allowed() {
        let dep = Dependency::from_metadata(Some(
            &json!({"dependencies": ["a", "b"], "all": false, "success": false, "failure": true}),
        ));
        assert!(dep.is_met(&set(&[]), &set(&["b"])));
        assert!(!dep.is_unreachable(&set(&["a"]), &set(&[])));
        assert!(dep.is_unreachable(&set(&["a", "b"]), &set(&[])));
    }

    #[test]
    fn empty_is_met_and_reachable() {
        let dep = Dependency::from_metadata(None);
        assert!(dep.is_met(&set(&[]), &set(&[])));
        assert!(!dep.is_unreachable(&set(&[]), &set(&[])));
    }

    #[test]
    fn reduce_drops_satisfied_ids_of_all_dependencies() {
        let mut dep = Dependency::from_metadata(Some(&json!(["a", "b"])));
        dep.reduce(&set(&["a"]), &set(&[]));
        assert_eq!(dep.ids, vec!["b".to_owned()]);
    }
}
