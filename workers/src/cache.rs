//! Least-recently-used caches of compiled models and of evaluators bound to key sets.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// A least-recently-used map bounded by the sum of its entries' costs (bytes, or 1 per entry).
/// Lookups are rare (one per job) and entries few, so eviction scans.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    budget: u64,
    inner: Mutex<Entries<K, V>>,
}

#[derive(Debug)]
struct Entries<K, V> {
    tick: u64,
    used: u64,
    map: HashMap<K, Entry<V>>,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    cost: u64,
    used_at: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache holding at most `budget` in cost.
    pub(crate) fn new(budget: u64) -> Self {
        Self { budget, inner: Mutex::new(Entries { tick: 0, used: 0, map: HashMap::new() }) }
    }

    /// The cached value, marked as just used.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.tick += 1;
        let tick = entries.tick;
        entries.map.get_mut(key).map(|entry| {
            entry.used_at = tick;
            entry.value.clone()
        })
    }

    /// Caches `value`, evicting the least recently used entries until it fits. An entry larger
    /// than the whole budget is not kept (the caller still uses its own copy).
    pub(crate) fn insert(&self, key: K, value: V, cost: u64) {
        if cost > self.budget {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = entries.map.remove(&key) {
            entries.used -= old.cost;
        }
        while entries.used + cost > self.budget {
            let Some(oldest) = entries.map.iter().min_by_key(|(_, e)| e.used_at).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(evicted) = entries.map.remove(&oldest) {
                entries.used -= evicted.cost;
            }
        }
        entries.tick += 1;
        let used_at = entries.tick;
        entries.used += cost;
        entries.map.insert(key, Entry { value, cost, used_at });
    }

    /// Total cost of the entries held.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_until_the_new_entry_fits() {
        let cache = Lru::new(10);
        cache.insert("a", 1, 4);
        cache.insert("b", 2, 4);
        assert_eq!(cache.get(&"a"), Some(1)); // b is now the oldest
        cache.insert("c", 3, 4);
        assert_eq!(cache.get(&"b"), None);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"c"), Some(3));
        assert_eq!(cache.used(), 8);
    }

    #[test]
    fn an_entry_over_budget_is_not_kept_and_evicts_nothing() {
        let cache = Lru::new(10);
        cache.insert("a", 1, 4);
        cache.insert("huge", 2, 11);
        assert_eq!(cache.get(&"huge"), None);
        assert_eq!(cache.get(&"a"), Some(1));
    }

    #[test]
    fn replacing_a_key_frees_its_old_cost() {
        let cache = Lru::new(10);
        cache.insert("a", 1, 6);
        cache.insert("a", 2, 6);
        assert_eq!(cache.used(), 6);
        assert_eq!(cache.get(&"a"), Some(2));
    }
}
