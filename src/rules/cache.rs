//! [`RuleCache`]: one receive thread's memory of recent lookups.
//!
//! Two generations of at most `capacity / 2` entries each. A lookup probes the young
//! generation, then the old one (a hit there moves the entry to the young one); a miss asks
//! the [`RuleSet`] and stores the answer in the young generation. When the young generation is
//! full it becomes the old one and the previous old one is dropped. So the cache never holds
//! more than `capacity` entries, a name used at least once per `capacity / 2` new names stays
//! cached for good (an approximation of LRU without per-entry bookkeeping), and a burst of new
//! names evicts half the cache, never all of it at once. The hash is computed once per lookup,
//! and a hit neither allocates nor copies the name.
//!
//! The cache remembers which [`RuleSet`] answered; given another one (after a reload) it
//! starts empty.

use hashbrown::HashTable;

use super::{Match, MetricClass, RuleSet};
use crate::protocol::MetricType;

struct Entry {
    class: MetricClass,
    name: Box<str>,
    result: Match,
}

/// A bounded per-thread cache in front of [`RuleSet::lookup`], keyed by (StatsD name, metric
/// class). Memory: at most `capacity` entries, each the name, the mapped name and labels, and
/// about 100 bytes of overhead.
pub struct RuleCache {
    young: HashTable<Entry>,
    old: HashTable<Entry>,
    half: usize,
    hasher: ahash::RandomState,
    rules_id: u64,
}

impl RuleCache {
    /// A cache of at most `capacity` entries (at least 2).
    pub fn new(capacity: usize) -> RuleCache {
        RuleCache {
            young: HashTable::new(),
            old: HashTable::new(),
            half: (capacity / 2).max(1),
            hasher: ahash::RandomState::new(),
            rules_id: 0,
        }
    }

    /// The most entries the cache holds.
    pub fn capacity(&self) -> usize {
        self.half * 2
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// [`RuleSet::lookup`], remembered.
    pub fn lookup<'c>(
        &'c mut self,
        rules: &RuleSet,
        name: &str,
        metric_type: MetricType,
    ) -> &'c Match {
        if self.rules_id != rules.id() {
            self.clear();
            self.rules_id = rules.id();
        }
        let class = MetricClass::of(metric_type);
        let hash = self.hasher.hash_one((class, name));
        let eq = |e: &Entry| e.class == class && &*e.name == name;
        let young = match self.young.find_entry(hash, eq) {
            Ok(hit) => return &hit.into_mut().result,
            Err(absent) => absent.into_table(),
        };
        let entry = match self.old.find_entry(hash, eq) {
            Ok(hit) => hit.remove().0,
            Err(_) => Entry {
                class,
                name: name.into(),
                result: rules.lookup_class(name, class),
            },
        };
        if young.len() >= self.half {
            self.old = std::mem::replace(young, HashTable::with_capacity(self.half));
        }
        let hasher = &self.hasher;
        let slot = young.insert_unique(hash, entry, |e| hasher.hash_one((e.class, &*e.name)));
        &slot.into_mut().result
    }
}
