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
    /// The stream sequence of its last message JetStream had confirmed (0: unknown).
    pub stored: u64,
}

impl Cut {
    pub(super) const ENCODED_LEN: usize = 32;

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
