//! Where a session left its old owner ([`Cut`]): what the old owner's handover reply
//! and a session record's checkpoint carry. On its own, apart from handover.rs (which
//! acts on it) and sessions.rs (whose records store it), so neither imports the other.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Where a session left its old owner (see handover.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    /// The old owner routed every stream message up to this sequence.
    pub stream: u64,
    /// The old owner's node id.
    pub owner: u64,
    /// Its own messages with a lower origin sequence (the header's) were routed there.
    pub origin_seq: u64,
    /// The stream sequence of its last message JetStream had confirmed (0: unknown); or,
    /// in a connected session's checkpoint (checkpoint.rs), with [`Cut::FLOOR`] set: the
    /// old owner had every other node's message up to this sequence, and `stream` is
    /// only where its own messages may start (they go by `origin_seq`).
    pub stored: u64,
}

impl Cut {
    pub(super) const ENCODED_LEN: usize = 32;
    /// Set in `stored` when it is a floor of other nodes' messages. Not a new record
    /// format, so nodes before it read such a record still: they wait in vain for their
    /// reader to reach it (5 s) and replay from `stream` (more messages again, none
    /// missing).
    pub(super) const FLOOR: u64 = 1 << 63;

    /// A connected session's checkpoint: other nodes' messages after `floor`, and the
    /// owner's own from `origin_seq`, read from `start` (at most `floor`) on.
    pub(super) fn checkpoint(start: u64, floor: u64, owner: u64, origin_seq: u64) -> Cut {
        Cut {
            stream: start.min(floor),
            owner,
            origin_seq,
            stored: (floor & !Self::FLOOR) | Self::FLOOR,
        }
    }

    /// Other nodes' messages up to this sequence the old owner had.
    pub(super) fn floor(&self) -> u64 {
        if self.stored & Self::FLOOR != 0 {
            self.stored & !Self::FLOOR
        } else {
            self.stream
        }
    }

    /// Where this node's reader must be before the session is taken in: past what the
    /// old owner routed, and past its last stored message (a checkpoint's floor has no
    /// such: then `None`, and the taking node waits for the stream's end).
    pub(super) fn catch_up(&self) -> Option<u64> {
        (self.stored & Self::FLOOR == 0).then(|| self.stream.max(self.stored))
    }

    pub(super) fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.stream);
        out.put_u64(self.owner);
        out.put_u64(self.origin_seq);
        out.put_u64(self.stored);
    }

    pub(super) fn decode(bytes: &mut Bytes) -> Option<Cut> {
        (bytes.remaining() >= Self::ENCODED_LEN).then(|| Cut {
            stream: bytes.get_u64(),
            owner: bytes.get_u64(),
            origin_seq: bytes.get_u64(),
            stored: bytes.get_u64(),
        })
    }
}
