//! A bounded map whose entries expire, evicting the least recently used entry when full.
//!
//! Every per-peer structure of the server (verified and refused tokens, API key records, rate
//! buckets) lives in one of these, so no flood of distinct keys can grow memory past the bound,
//! and a full cache drops one cold entry instead of everything it knows.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// At most `capacity` entries; lookups and inserts are O(log n).
#[derive(Debug)]
pub(crate) struct BoundedCache<K, V> {
    capacity: usize,
    entries: HashMap<K, Entry<V>>,
    /// Use stamp → key, oldest first.
    by_use: BTreeMap<u64, K>,
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    until: Instant,
    used: u64,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The live entry for `key`, marked as just used. An expired entry is removed.
    pub(crate) fn get(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let expired = self.entries.get(key).is_some_and(|e| e.until <= now);
        if expired {
            self.remove(key);
            return None;
        }
        self.clock += 1;
        let stamp = self.clock;
        let entry = self.entries.get_mut(key)?;
        self.by_use.remove(&entry.used);
        entry.used = stamp;
        self.by_use.insert(stamp, key.clone());
        Some(&mut entry.value)
    }

    /// Inserts or replaces `key`, valid until `until`. When full, drops the least recently
    /// used entry (an expired one is as good as unused: it is dropped on its next lookup).
    pub(crate) fn insert(&mut self, key: K, value: V, until: Instant) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.by_use.insert(self.clock, key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                until,
                used: self.clock,
            },
        );
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.used);
        Some(entry.value)
    }

    /// Entries held (expired ones included until they are looked up or evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn full_cache_drops_the_least_recently_used_entry_only() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut c = BoundedCache::new(3);
        c.insert("a", 1, later);
        c.insert("b", 2, later);
        c.insert("c", 3, later);
        assert_eq!(
            c.get(&"a", now).copied(),
            Some(1),
            "a is now the most recent"
        );
        c.insert("d", 4, later);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"b", now), None, "b was the least recently used");
        for (k, v) in [("a", 1), ("c", 3), ("d", 4)] {
            assert_eq!(c.get(&k, now).copied(), Some(v), "{k}");
        }
        // A flood of new keys never grows it, and replacing a key keeps one entry.
        for i in 0..1000 {
            c.insert(if i % 2 == 0 { "x" } else { "y" }, i, later);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.by_use.len(), 3);
    }

    #[test]
    fn entries_expire() {
        let now = Instant::now();
        let mut c = BoundedCache::new(2);
        c.insert(1, "one", now + Duration::from_secs(1));
        assert_eq!(c.get(&1, now).copied(), Some("one"));
        assert_eq!(c.get(&1, now + Duration::from_secs(1)), None);
        assert_eq!((c.len(), c.by_use.len()), (0, 0));
        assert_eq!(c.remove(&1), None);
    }
}
