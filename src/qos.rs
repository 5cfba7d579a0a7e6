//! QoS 1/2 packet-id bookkeeping shared by the broker's sessions and the client.
//!
//! - [`PacketIds`]: which ids of the client's outgoing QoS 1/2 publishes, SUBSCRIBE and
//!   UNSUBSCRIBE are in use [MQTT-2.3.1-2], and the next one to hand out. (A broker
//!   session's inflight window hands out its own: broker/session/window.rs.)
//! - [`InboundQos2`]: ids of incoming QoS 2 publishes that got PUBREC and not yet PUBREL,
//!   so a resent PUBLISH is acknowledged again but not delivered twice [MQTT-4.3.3-2].
//!
//! Both cost O(1) per operation whatever the number of ids in use, and memory in
//! proportion to the ids in use rather than the 65,535 possible ones: a broker keeps an
//! `InboundQos2` per session, and most sessions hold a handful of ids or none.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Ids per bitmap word.
const WORD_BITS: u16 = 64;
/// Words covering ids 0..=65535.
const WORDS: usize = 1 << 10;
/// Words of the summary bitmap (one bit per word above).
const SUMMARY_WORDS: usize = WORDS / 64;

/// Hashes a word index by one multiplication: keys are small integers the peer cannot
/// choose freely (at most 1,024 of them), so SipHash's flood resistance buys nothing.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, n: u16) {
        // Fibonacci hashing spreads consecutive words over the table's control bytes.
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Words kept inline in an [`IdSet`] before its map is used.
const NEAR: usize = 4;

/// A set of u16 ids: a bitmap stored sparsely, one 64-bit word per 64 ids that has any
/// member. Insert, remove and lookup are a bit operation on a word found in O(1).
///
/// The words in use sit first in a few inline slots, then in a map: ids handed out
/// round-robin to a window of deliveries span one to three words, so the common case
/// is a compare or two and never touches the map. With the map alone, every word
/// that emptied was removed and inserted again a moment later (~115 instructions per
/// QoS 2 delivery on the broker, benches/README.md).
#[derive(Debug, Default, Clone)]
struct IdSet {
    /// (word index, word): a slot whose word is 0 is free, whatever its index.
    near: [(u16, u64); NEAR],
    /// Words that found no free inline slot. A word index is in at most one of the two.
    words: HashMap<u16, u64, BuildHasherDefault<WordHasher>>,
    len: usize,
}

impl IdSet {
    fn split(id: u16) -> (u16, u64) {
        (id / WORD_BITS, 1u64 << (id % WORD_BITS))
    }

    fn near_slot(&self, index: u16) -> Option<usize> {
        self.near.iter().position(|&(i, w)| i == index && w != 0)
    }

    fn word(&self, index: u16) -> u64 {
        if let Some(&(_, w)) = self.near.iter().find(|&&(i, w)| i == index && w != 0) {
            return w;
        }
        if self.words.is_empty() {
            return 0;
        }
        self.words.get(&index).copied().unwrap_or(0)
    }

    fn contains(&self, id: u16) -> bool {
        let (index, bit) = Self::split(id);
        self.word(index) & bit != 0
    }

    /// The word `index` for writing: inline if it is there or a slot is free (and the
    /// map does not hold it), else in the map.
    fn word_mut(&mut self, index: u16) -> &mut u64 {
        let at = self.near_slot(index).or_else(|| {
            if !self.words.is_empty() && self.words.contains_key(&index) {
                return None;
            }
            self.near.iter().position(|&(_, w)| w == 0)
        });
        match at.and_then(|n| self.near.get_mut(n)) {
            Some(slot) => {
                slot.0 = index;
                &mut slot.1
            }
            None => self.words.entry(index).or_insert(0),
        }
    }

    /// Adds `id`; returns the word it landed in afterwards, or `None` if it was a member.
    fn insert(&mut self, id: u16) -> Option<u64> {
        let (index, bit) = Self::split(id);
        let word = self.word_mut(index);
        if *word & bit != 0 {
            return None;
        }
        *word |= bit;
        let after = *word;
        self.len += 1;
        Some(after)
    }

    /// Removes `id`; false if it was not a member.
    fn remove(&mut self, id: u16) -> bool {
        let (index, bit) = Self::split(id);
        if let Some(slot) = self.near_slot(index).and_then(|n| self.near.get_mut(n)) {
            if slot.1 & bit == 0 {
                return false;
            }
            slot.1 &= !bit;
            self.len -= 1;
            return true;
        }
        let Some(word) = self.words.get_mut(&index) else {
            return false;
        };
        if *word & bit == 0 {
            return false;
        }
        *word &= !bit;
        if *word == 0 {
            self.words.remove(&index);
        }
        self.len -= 1;
        true
    }

    fn clear(&mut self) {
        self.near = [(0, 0); NEAR];
        self.words.clear();
        self.len = 0;
    }
}

/// Packet ids of outgoing packets awaiting their acknowledgement [MQTT-2.3.1-2].
///
/// Ids are handed out round-robin over 1..=65535 (0 is never valid): the next id is the
/// first free one at or after the id following the last one handed out. Reusing ids as
/// late as possible keeps a late acknowledgement of a finished exchange from matching a
/// new one. Finding it is O(1): a summary bitmap of 16 words marks the 64-id words that
/// are full, so the search looks at most at its start word, 17 summary words and the
/// word the summary points to, however many ids are in use.
#[derive(Debug, Clone)]
pub(crate) struct PacketIds {
    used: IdSet,
    /// Bit `w` set: word `w` of `used` is full (all 64 ids in use).
    full: [u64; SUMMARY_WORDS],
    next: u16,
}

impl Default for PacketIds {
    fn default() -> Self {
        PacketIds::new()
    }
}

impl PacketIds {
    pub(crate) fn new() -> PacketIds {
        PacketIds {
            used: IdSet::default(),
            full: [0; SUMMARY_WORDS],
            next: 1,
        }
    }

    #[cfg(test)]
    /// Ids in use.
    pub(crate) fn len(&self) -> usize {
        self.used.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.used.len == 0
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, id: u16) -> bool {
        id != 0 && self.used.contains(id)
    }

    /// Word `index` of the in-use bitmap, with id 0 counted as in use (it never is free).
    fn taken_word(&self, index: u16) -> u64 {
        let word = self.used.word(index);
        if index == 0 {
            word | 1
        } else {
            word
        }
    }

    fn set_full(&mut self, index: u16, full: bool) {
        let (slot, bit) = (usize::from(index / 64), 1u64 << (index % 64));
        if let Some(w) = self.full.get_mut(slot) {
            if full {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    /// The first word that is not full, searching cyclically from word `from`.
    fn next_open_word(&self, from: usize) -> Option<u16> {
        let from = from % WORDS;
        let (slot, offset) = (from / 64, from % 64);
        let first = !self.full.get(slot).copied().unwrap_or(u64::MAX) & (u64::MAX << offset);
        if first != 0 {
            return u16::try_from(slot * 64 + first.trailing_zeros() as usize).ok();
        }
        // The last step comes back to `slot`, whose bits at or after `offset` are known to
        // be full by now: only the ones before it can still match.
        for step in 1..=SUMMARY_WORDS {
            let s = (slot + step) % SUMMARY_WORDS;
            let open = !self.full.get(s).copied().unwrap_or(u64::MAX);
            if open != 0 {
                return u16::try_from(s * 64 + open.trailing_zeros() as usize).ok();
            }
        }
        None
    }

    /// Hands out the next free id, or `None` when all 65,535 are in use.
    pub(crate) fn alloc(&mut self) -> Option<u16> {
        if self.used.len >= usize::from(u16::MAX) {
            return None;
        }
        let (index, offset) = (self.next / WORD_BITS, self.next % WORD_BITS);
        let free_here = !self.taken_word(index) & (u64::MAX << offset);
        let id = if free_here != 0 {
            index * WORD_BITS + free_here.trailing_zeros() as u16
        } else {
            // Word `index` itself comes last, for its ids before `next`.
            let open = self.next_open_word(usize::from(index) + 1)?;
            open * WORD_BITS + (!self.taken_word(open)).trailing_zeros() as u16
        };
        self.mark(id);
        self.next = if id == u16::MAX { 1 } else { id + 1 };
        Some(id)
    }

    /// Marks `id` as in use without moving the round-robin (an exchange restored from a
    /// store keeps its id); false if it already was in use, or is 0.
    pub(crate) fn take(&mut self, id: u16) -> bool {
        id != 0 && self.mark(id)
    }

    fn mark(&mut self, id: u16) -> bool {
        let Some(word) = self.used.insert(id) else {
            return false;
        };
        let index = id / WORD_BITS;
        let taken = if index == 0 { word | 1 } else { word };
        if taken == u64::MAX {
            self.set_full(index, true);
        }
        true
    }

    /// Releases `id`; releasing an id not in use does nothing.
    pub(crate) fn free(&mut self, id: u16) {
        if self.used.remove(id) {
            self.set_full(id / WORD_BITS, false);
        }
    }

    /// Releases every id; the next one handed out is 1 again.
    pub(crate) fn clear(&mut self) {
        self.used.clear();
        self.full = [0; SUMMARY_WORDS];
        self.next = 1;
    }

    /// Continues the round-robin at `id` (for tests that start near the wrap-around).
    #[cfg(test)]
    pub(crate) fn set_next(&mut self, id: u16) {
        self.next = id.max(1);
    }
}

/// Ids of incoming QoS 2 publishes that got PUBREC and not yet PUBREL [MQTT-4.3.3-2].
#[derive(Debug, Default, Clone)]
pub(crate) struct InboundQos2 {
    ids: IdSet,
}

impl InboundQos2 {
    pub(crate) fn new() -> InboundQos2 {
        InboundQos2::default()
    }

    /// A QoS 2 PUBLISH arrived with `id`: true if it is new (deliver it), false if it is a
    /// resend of one not yet released (acknowledge again, do not deliver again).
    pub(crate) fn receive(&mut self, id: u16) -> bool {
        self.ids.insert(id).is_some()
    }

    /// PUBREL for `id`: the id may carry a new message from now on. Returns whether it
    /// was held.
    pub(crate) fn release(&mut self, id: u16) -> bool {
        self.ids.remove(id)
    }

    /// Whether `id` got PUBREC and awaits PUBREL (MQTT 5.0 Receive Maximum counts these).
    pub(crate) fn contains(&self, id: u16) -> bool {
        self.ids.contains(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.len == 0
    }

    pub(crate) fn clear(&mut self) {
        self.ids.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_start_at_one_and_wrap_past_zero() {
        let mut ids = PacketIds::new();
        assert_eq!(ids.alloc(), Some(1));
        ids.set_next(u16::MAX);
        assert_eq!(ids.alloc(), Some(u16::MAX));
        assert_eq!(
            ids.alloc(),
            Some(2),
            "1 is still in use and 0 is never used"
        );
        ids.free(1);
        ids.set_next(1);
        assert_eq!(ids.alloc(), Some(1));
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn all_ids_in_use_means_none() {
        let mut ids = PacketIds::new();
        for expected in 1..=u16::MAX {
            assert_eq!(ids.alloc(), Some(expected));
        }
        assert_eq!(ids.alloc(), None);
        ids.free(40_000);
        assert_eq!(
            ids.alloc(),
            Some(40_000),
            "the only free id, found via the summary"
        );
        assert_eq!(ids.alloc(), None);
        ids.clear();
        assert_eq!((ids.len(), ids.alloc()), (0, Some(1)));
    }

    #[test]
    fn skips_full_words_in_both_directions() {
        let mut ids = PacketIds::new();
        // Ids 64..=1023 (words 1-15) in use; 1-63 free; next at 64.
        for id in 64..1024 {
            assert!(ids.take(id));
        }
        ids.set_next(64);
        assert_eq!(ids.alloc(), Some(1024), "first free after the full words");
        // Everything from 1024 on taken too: the search wraps to word 0.
        for id in 1025..=u16::MAX {
            assert!(ids.take(id));
        }
        ids.set_next(2000);
        assert_eq!(ids.alloc(), Some(1));
    }

    #[test]
    fn take_refuses_zero_and_duplicates() {
        let mut ids = PacketIds::new();
        assert!(!ids.take(0));
        assert!(ids.take(7));
        assert!(!ids.take(7));
        assert!(ids.contains(7) && !ids.contains(0));
        ids.free(7);
        ids.free(7);
        assert!(ids.is_empty());
    }

    #[test]
    fn inbound_qos2_delivers_once_per_release() {
        let mut q = InboundQos2::new();
        assert!(q.receive(7));
        assert!(!q.receive(7));
        assert_eq!(q.len(), 1);
        q.release(7);
        q.release(7);
        assert!(q.receive(7));
        q.clear();
        assert!(q.is_empty() && !q.contains(7));
    }

    /// The allocator as the broker had it: scan forward from `next` over a list of ids.
    struct Model {
        used: BTreeSet<u16>,
        next: u16,
    }

    impl Model {
        fn alloc(&mut self) -> Option<u16> {
            if self.used.len() >= usize::from(u16::MAX) {
                return None;
            }
            loop {
                let id = self.next;
                self.next = if id == u16::MAX { 1 } else { id + 1 };
                if self.used.insert(id) {
                    return Some(id);
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Free(u16),
        /// Free the n-th id in use (so frees hit live ids, not only random ones).
        FreeLive(usize),
        Take(u16),
        Jump(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Alloc),
            1 => any::<u16>().prop_map(Op::Free),
            3 => any::<usize>().prop_map(Op::FreeLive),
            1 => any::<u16>().prop_map(Op::Take),
            1 => any::<u16>().prop_map(Op::Jump),
        ]
    }

    proptest! {
        /// Any sequence of operations hands out exactly the ids the scanning allocator
        /// would, so the broker's id sequence did not change.
        #[test]
        fn matches_the_scanning_allocator(
            ops in proptest::collection::vec(op(), 1..400),
            prefill in 0usize..3000,
            start in any::<u16>(),
        ) {
            let mut ids = PacketIds::new();
            let mut model = Model { used: BTreeSet::new(), next: 1 };
            // Dense regions make the summary matter: pre-fill a run from `start`.
            ids.set_next(start);
            model.next = start.max(1);
            for _ in 0..prefill {
                prop_assert_eq!(ids.alloc(), model.alloc());
            }
            for op in ops {
                match op {
                    Op::Alloc => prop_assert_eq!(ids.alloc(), model.alloc()),
                    Op::Free(id) => {
                        ids.free(id);
                        model.used.remove(&id);
                    }
                    Op::FreeLive(n) => {
                        if !model.used.is_empty() {
                            let id = *model.used.iter().nth(n % model.used.len()).unwrap();
                            ids.free(id);
                            model.used.remove(&id);
                        }
                    }
                    Op::Take(id) => {
                        let fresh = id != 0 && !model.used.contains(&id);
                        prop_assert_eq!(ids.take(id), fresh);
                        if fresh {
                            model.used.insert(id);
                        }
                    }
                    Op::Jump(id) => {
                        ids.set_next(id);
                        model.next = id.max(1);
                    }
                }
                prop_assert_eq!(ids.len(), model.used.len());
            }
            for id in model.used.iter() {
                prop_assert!(ids.contains(*id));
            }
        }

        #[test]
        fn inbound_qos2_is_a_set(ops in proptest::collection::vec((any::<bool>(), 0u16..300), 1..500)) {
            let mut q = InboundQos2::new();
            let mut model = BTreeSet::new();
            for (receive, id) in ops {
                if receive {
                    prop_assert_eq!(q.receive(id), model.insert(id));
                } else {
                    q.release(id);
                    model.remove(&id);
                }
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
