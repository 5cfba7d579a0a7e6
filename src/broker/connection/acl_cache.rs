//! A connection's publish authorization decisions (with a refusal's reason code), per topic, reused for `acl_cache_ttl`
//! so the authorizer is not asked per message.
//!
//! Bounded, least recently used first out: a client that publishes to more topics than
//! the cache holds (a sensor fleet gateway writing one topic per device) keeps its busy
//! topics cached and only the rare ones are asked again. (Emptying the whole cache when
//! it filled made every topic a miss again, each miss a call to the hook.)
//!
//! A hash map from topic to a slot in a vector, the slots chained most recently used
//! first: lookups, promotions and evictions are O(1), and nothing is allocated until the
//! first decision is stored (most connections never publish under an authorizer).
//!
//! Decisions belong to one generation of the authorizer's rules
//! ([`crate::broker::hooks::Authorizer::generation`]): when a reload changes the rules,
//! the next lookup sees a new generation and the cache empties itself, so a connection
//! opened before the reload is checked against the new rules on its next publish. The
//! check is one integer comparison; there is no lock to take and nothing to notify.

use std::collections::HashMap;
use std::time::Duration;

use bytestring::ByteString;
use tokio::time::Instant;

use crate::broker::hooks::Verdict;

/// Decisions a connection remembers at most.
pub(super) const ACL_CACHE_ENTRIES: usize = 1024;

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Slot<V> {
    topic: ByteString,
    /// The decision: a [`Verdict`], or a bool in the tests.
    allowed: V,
    decided: Instant,
    /// Neighbours in recency order (`prev` is more recent), `NIL` at the ends.
    prev: usize,
    next: usize,
}

#[derive(Debug)]
struct Lru<V> {
    index: HashMap<ByteString, usize>,
    slots: Vec<Slot<V>>,
    /// Most and least recently used slot.
    head: usize,
    tail: usize,
}

/// Publish decisions by topic: at most `capacity`, evicting the least recently used.
#[derive(Debug)]
pub(super) struct AclCache<V = Verdict> {
    capacity: usize,
    /// The authorizer generation the cached decisions were made under.
    generation: u64,
    /// Boxed and made on first use: an idle connection pays one pointer for it.
    lru: Option<Box<Lru<V>>>,
}

impl<V: Clone> Default for AclCache<V> {
    fn default() -> AclCache<V> {
        AclCache::with_capacity(ACL_CACHE_ENTRIES)
    }
}

impl<V: Clone> AclCache<V> {
    pub(super) fn with_capacity(capacity: usize) -> AclCache<V> {
        AclCache {
            capacity: capacity.max(1),
            generation: 0,
            lru: None,
        }
    }

    /// Whether no decision was cached since the connection's task started (an eager
    /// park would drop what is cached: connection/park.rs).
    pub(super) fn is_unused(&self) -> bool {
        self.lru.is_none()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, |lru| lru.slots.len())
    }

    /// Forgets every decision when the rules are of another generation than those the
    /// cache holds decisions of.
    fn adopt(&mut self, generation: u64) {
        if generation != self.generation {
            self.generation = generation;
            self.lru = None;
        }
    }

    /// The decision for `topic` if it was made less than `ttl` before `now`, under the
    /// rules of `generation`; a hit becomes the most recently used entry.
    pub(super) fn get(
        &mut self,
        topic: &str,
        ttl: Duration,
        now: Instant,
        generation: u64,
    ) -> Option<V> {
        self.adopt(generation);
        let lru = self.lru.as_mut()?;
        let i = *lru.index.get(topic)?;
        if now.saturating_duration_since(lru.slots[i].decided) >= ttl {
            return None;
        }
        lru.promote(i);
        Some(lru.slots[i].allowed.clone())
    }

    /// Stores a decision made at `now` under the rules of `generation` (read before the
    /// authorizer was asked: if the rules changed meanwhile, the next lookup sees a newer
    /// generation and asks again), replacing the topic's previous one, or else the least
    /// recently used decision when the cache is full.
    pub(super) fn insert(&mut self, topic: ByteString, allowed: V, now: Instant, generation: u64) {
        self.adopt(generation);
        let capacity = self.capacity;
        let lru = self.lru.get_or_insert_with(|| {
            Box::new(Lru {
                index: HashMap::new(),
                slots: Vec::new(),
                head: NIL,
                tail: NIL,
            })
        });
        if let Some(&i) = lru.index.get(&topic) {
            lru.slots[i].allowed = allowed;
            lru.slots[i].decided = now;
            lru.promote(i);
            return;
        }
        let i = if lru.slots.len() < capacity {
            lru.slots.push(Slot {
                topic: topic.clone(),
                allowed,
                decided: now,
                prev: NIL,
                next: NIL,
            });
            lru.slots.len() - 1
        } else {
            // Reuse the least recently used slot for the new topic.
            let i = lru.tail;
            lru.unlink(i);
            let old = std::mem::replace(&mut lru.slots[i].topic, topic.clone());
            lru.index.remove(&old);
            lru.slots[i].allowed = allowed;
            lru.slots[i].decided = now;
            i
        };
        lru.index.insert(topic, i);
        lru.push_front(i);
    }
}

impl<V> Lru<V> {
    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
        self.slots[i].prev = NIL;
        self.slots[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.slots[h].prev = i,
        }
        self.head = i;
    }

    fn promote(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    /// The authorizer generation of most tests.
    const G: u64 = 0;

    fn topic(n: usize) -> ByteString {
        ByteString::from(format!("t/{n}"))
    }

    #[test]
    fn hits_misses_and_replacement() {
        let now = Instant::now();
        let mut cache = AclCache::default();
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get("t/1", TTL, now, G), None);
        cache.insert(topic(1), true, now, G);
        cache.insert(topic(2), false, now, G);
        assert_eq!(cache.get("t/1", TTL, now, G), Some(true));
        assert_eq!(cache.get("t/2", TTL, now, G), Some(false));
        cache.insert(topic(2), true, now, G);
        assert_eq!(cache.get("t/2", TTL, now, G), Some(true));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn decisions_expire_after_the_ttl() {
        let now = Instant::now();
        let mut cache = AclCache::default();
        cache.insert(topic(1), true, now, G);
        let ttl = Duration::from_secs(5);
        assert_eq!(
            cache.get("t/1", ttl, now + Duration::from_secs(4), G),
            Some(true)
        );
        assert_eq!(cache.get("t/1", ttl, now + Duration::from_secs(5), G), None);
        // A fresh decision replaces the stale one.
        cache.insert(topic(1), false, now + Duration::from_secs(5), G);
        assert_eq!(
            cache.get("t/1", ttl, now + Duration::from_secs(6), G),
            Some(false)
        );
        // A zero TTL never hits.
        assert_eq!(cache.get("t/1", Duration::ZERO, now, G), None);
    }

    #[test]
    fn full_cache_evicts_the_least_recently_used() {
        let now = Instant::now();
        let mut cache = AclCache::with_capacity(3);
        for n in 1..=3 {
            cache.insert(topic(n), true, now, G);
        }
        // t/1 is used again, so t/2 is now the least recently used.
        assert_eq!(cache.get("t/1", TTL, now, G), Some(true));
        cache.insert(topic(4), true, now, G);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("t/2", TTL, now, G), None);
        for n in [1, 3, 4] {
            assert_eq!(cache.get(&topic(n), TTL, now, G), Some(true), "t/{n}");
        }
        // Recency is now 4, 3, 1 (most recent first); a hit on t/1 leaves t/3 the
        // least recently used.
        assert_eq!(cache.get("t/1", TTL, now, G), Some(true));
        cache.insert(topic(5), false, now, G);
        assert_eq!(cache.get("t/3", TTL, now, G), None);
        assert_eq!(cache.get("t/5", TTL, now, G), Some(false));
    }

    /// The case that made the old cache empty itself: more topics than it holds, a few
    /// of them busy. The busy ones stay cached however many others pass through.
    #[test]
    fn busy_topics_survive_a_stream_of_rare_ones() {
        let now = Instant::now();
        let mut cache = AclCache::default();
        let busy = ["busy/a", "busy/b", "busy/c"];
        for name in busy {
            cache.insert(ByteString::from(name), true, now, G);
        }
        let mut misses = 0;
        for n in 0..10 * ACL_CACHE_ENTRIES {
            if cache.get(&topic(n), TTL, now, G).is_none() {
                cache.insert(topic(n), false, now, G);
            }
            for name in busy {
                if cache.get(name, TTL, now, G).is_none() {
                    misses += 1;
                    cache.insert(ByteString::from(name), true, now, G);
                }
            }
            assert!(cache.len() <= ACL_CACHE_ENTRIES);
        }
        assert_eq!(misses, 0);
        assert_eq!(cache.len(), ACL_CACHE_ENTRIES);
    }

    #[test]
    fn capacity_one_keeps_the_latest() {
        let now = Instant::now();
        let mut cache = AclCache::with_capacity(1);
        cache.insert(topic(1), true, now, G);
        cache.insert(topic(2), false, now, G);
        assert_eq!(cache.get("t/1", TTL, now, G), None);
        assert_eq!(cache.get("t/2", TTL, now, G), Some(false));
        assert_eq!(cache.len(), 1);
    }

    /// A reload (a new generation) empties the cache: a decision made under the old rules
    /// is never reused, and decisions under the new ones are cached again.
    #[test]
    fn a_new_generation_forgets_every_decision() {
        let now = Instant::now();
        let mut cache = AclCache::default();
        cache.insert(topic(1), true, now, 7);
        cache.insert(topic(2), false, now, 7);
        assert_eq!(cache.get("t/1", TTL, now, 7), Some(true));
        assert_eq!(cache.get("t/1", TTL, now, 8), None);
        assert_eq!(cache.len(), 0);
        cache.insert(topic(1), false, now, 8);
        assert_eq!(cache.get("t/1", TTL, now, 8), Some(false));
        // A decision asked under an older generation than the cache's empties it too,
        // so the next lookup (under the current generation) asks again.
        cache.insert(topic(2), true, now, 7);
        assert_eq!(cache.get("t/2", TTL, now, 8), None);
        assert_eq!(cache.get("t/1", TTL, now, 8), None);
    }
}
