//! A session's outbound QoS 1/2 inflight window: the deliveries sent and not yet
//! acknowledged, found by packet id in O(1) and walked in send order.
//!
//! Each delivery lives in the slot its packet id selects (`pkid` modulo the table size, a
//! power of two at least twice the window), and the slots are chained in send order
//! (which is also the resend order [MQTT-4.4.0-1]) through their ids. The window also
//! hands out the ids [MQTT-2.3.1-2]: round-robin over 1..=65535 as before, skipping an id
//! whose slot is taken (by itself, still in flight, or by an older delivery whose id falls
//! in the same slot). So an acknowledgement is one index and one compare, however full the
//! window, where a search of the window in send order cost ~175 instructions per PUBREC or
//! PUBCOMP with 32 in flight (benches/README.md), and an id costs no separate set.

use super::Inflight;

/// "No delivery" in the send-order links: 0 is never a packet id [MQTT-2.3.1-1].
const NONE: u16 = 0;
/// Slots in a table at first use: a few QoS 1/2 messages in flight need no more.
const MIN_SLOTS: usize = 8;
/// One slot per possible id: distinct ids never share a slot in a table this size.
const MAX_SLOTS: usize = 1 << 16;

#[derive(Debug)]
struct Slot {
    f: Inflight,
    /// The ids of the deliveries sent before and after this one (`NONE` at the ends).
    prev: u16,
    next: u16,
}

#[derive(Debug)]
pub(super) struct Window {
    /// Empty (nothing sent yet) or a power of two long.
    slots: Vec<Option<Slot>>,
    /// Oldest and newest delivery (`NONE` when empty).
    head: u16,
    tail: u16,
    len: usize,
    /// Where the round-robin search for the next id starts (never 0).
    next_id: u16,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: Vec::new(),
            head: NONE,
            tail: NONE,
            len: 0,
            next_id: 1,
        }
    }
}

impl Window {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn index(&self, pkid: u16) -> usize {
        // `slots.len()` is 0 or a power of two: with 0 the mask is all ones and `get`
        // misses, which is what an empty window should answer.
        usize::from(pkid) & self.slots.len().wrapping_sub(1)
    }

    fn slot(&self, pkid: u16) -> Option<&Slot> {
        self.slots
            .get(self.index(pkid))?
            .as_ref()
            .filter(|s| s.f.pkid == pkid)
    }

    fn slot_mut(&mut self, pkid: u16) -> Option<&mut Slot> {
        let i = self.index(pkid);
        self.slots.get_mut(i)?.as_mut().filter(|s| s.f.pkid == pkid)
    }

    /// The delivery in flight with `pkid`, if any.
    pub(super) fn get(&self, pkid: u16) -> Option<&Inflight> {
        self.slot(pkid).map(|s| &s.f)
    }

    pub(super) fn get_mut(&mut self, pkid: u16) -> Option<&mut Inflight> {
        self.slot_mut(pkid).map(|s| &mut s.f)
    }

    /// Whether the slot of `pkid` is free (so `pkid` is not in flight either).
    fn free_slot(&self, pkid: u16) -> bool {
        self.slots
            .get(self.index(pkid))
            .is_some_and(Option::is_none)
    }

    /// Whether one more delivery would fill the table past half.
    #[inline]
    fn crowded(&self) -> bool {
        2 * (self.len + 1) > self.slots.len() && self.slots.len() < MAX_SLOTS
    }

    /// Doubles the table until it has room for one more delivery at half load and, if
    /// given, the slot of `pkid` is free. Cold and out of line: a table sized for the
    /// window stops growing, and the check before the call is all a send pays (the
    /// loop's own check inlined cost ~30 instructions per QoS 2 delivery).
    #[cold]
    #[inline(never)]
    fn grow_for(&mut self, pkid: Option<u16>) {
        while self.slots.len() < MAX_SLOTS
            && (2 * (self.len + 1) > self.slots.len() || pkid.is_some_and(|id| !self.free_slot(id)))
        {
            let size = (self.slots.len() * 2).clamp(MIN_SLOTS, MAX_SLOTS);
            let old = std::mem::take(&mut self.slots);
            self.slots.resize_with(size, || None);
            // Ids distinct modulo n stay distinct modulo 2n: no two land in one slot.
            for slot in old.into_iter().flatten() {
                let i = self.index(slot.f.pkid);
                if let Some(dst) = self.slots.get_mut(i) {
                    *dst = Some(slot);
                }
            }
        }
    }

    /// Appends `f` as the newest delivery; its slot must be free.
    fn link(&mut self, f: Inflight) {
        let (pkid, tail) = (f.pkid, self.tail);
        let i = self.index(pkid);
        if let Some(dst) = self.slots.get_mut(i) {
            *dst = Some(Slot {
                f,
                prev: tail,
                next: NONE,
            });
        }
        match self.slot_mut(tail) {
            Some(t) => t.next = pkid,
            None => self.head = pkid,
        }
        self.tail = pkid;
        self.len += 1;
    }

    /// Sends a delivery: gives it the next free id and appends it, or hands it back when
    /// all 65,535 ids are in flight.
    pub(super) fn push_new(&mut self, mut f: Inflight) -> Result<u16, Inflight> {
        if self.len >= usize::from(u16::MAX) {
            return Err(f);
        }
        if self.crowded() {
            self.grow_for(None);
        }
        // A free slot exists (the table is at most half full, or has a slot per id and
        // fewer than 65,535 taken), and consecutive ids visit every slot, so this ends
        // within one lap of the table; skipping taken slots is amortised O(1), as the
        // search never comes back to them before the ids wrap.
        let mut id = self.next_id;
        for _ in 0..=MAX_SLOTS {
            if id != NONE && self.free_slot(id) {
                break;
            }
            id = id.wrapping_add(1);
        }
        if id == NONE || !self.free_slot(id) {
            return Err(f);
        }
        self.next_id = id.checked_add(1).unwrap_or(1);
        f.pkid = id;
        self.link(f);
        Ok(id)
    }

    /// Puts back a delivery that keeps its id (restored from a store); hands it back when
    /// the id is 0 or already in flight.
    pub(super) fn restore(&mut self, f: Inflight) -> Result<(), Inflight> {
        if f.pkid == NONE || self.get(f.pkid).is_some() {
            return Err(f);
        }
        self.grow_for(Some(f.pkid));
        if !self.free_slot(f.pkid) {
            return Err(f);
        }
        self.link(f);
        Ok(())
    }

    /// Takes the delivery with `pkid` out of the window; its id is free again.
    pub(super) fn remove(&mut self, pkid: u16) -> Option<Inflight> {
        self.get(pkid)?;
        let i = self.index(pkid);
        let Slot { f, prev, next } = self.slots.get_mut(i)?.take()?;
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        self.len -= 1;
        Some(f)
    }

    /// The deliveries in send order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Inflight> {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let s = self.slot(at)?;
            at = s.next;
            Some(&s.f)
        })
    }

    /// Continues the round-robin at `id` (for tests that start near the wrap-around).
    #[cfg(test)]
    pub(super) fn set_next(&mut self, id: u16) {
        self.next_id = id.max(1);
    }

    /// Slots in the table (for tests of its growth).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }
}
