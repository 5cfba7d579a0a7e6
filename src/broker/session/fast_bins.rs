//! Where a [`Message`] is freed, and why its size matters.
//!
//! Every routed message is one `Arc<Message>` allocation, made by the publisher's
//! worker thread and, in fan-in and 1:1, freed by the subscriber's worker once its
//! PUBLISH is encoded. glibc's malloc gives each thread its own arena, and a block freed
//! by a thread that does not own its arena takes that arena's lock unless the block is in
//! a "fast bin", which is freed with one atomic exchange. With the default fast-bin limit
//! (128-byte blocks, 120-byte requests) a message of 3.1.1 size once fitted; MQTT 5.0's
//! fields made it larger, and in fan-in the two workers then met on the publisher's arena
//! lock for every message (futex waits and wakes: 0.69x of the deliveries per second of
//! 985e479, with 1.5x the broker CPU; benches/README.md, "Session 9").
//!
//! So the broker raises the fast-bin limit to glibc's maximum (160-byte blocks) when it
//! starts, and a test holds the message's `Arc` allocation below it.

use std::sync::Once;

/// glibc's largest fast-bin request (`80 * sizeof(size_t) / 4` on 64-bit targets).
pub(crate) const FAST_BIN_MAX: usize = 160;

/// Raises glibc's fast-bin limit to [`FAST_BIN_MAX`], once per process. Elsewhere (musl,
/// other systems, mimalloc as the global allocator) there is nothing to do.
pub(crate) fn widen_fast_bins() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
        {
            // SAFETY: `mallopt` only changes a tuning parameter of glibc's allocator and
            // takes the allocator's own lock to do so; it is safe to call from any thread
            // at any time. No Rust-safe binding exists: libc's declaration is the only way
            // to reach it. M_MXFAST's documented range is 0..=80 * sizeof(size_t) / 4,
            // which FAST_BIN_MAX is (160 on 64-bit targets).
            let done = unsafe { libc::mallopt(libc::M_MXFAST, FAST_BIN_MAX as libc::c_int) };
            if done != 1 {
                tracing::debug!("malloc: the fast-bin limit could not be raised");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::Message;
    use super::FAST_BIN_MAX;

    /// The `Arc` allocation of a message: two counters and the message.
    #[test]
    fn a_message_allocation_fits_a_fast_bin() {
        let arc_block = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Message>();
        assert!(
            arc_block <= FAST_BIN_MAX - 8,
            "Arc<Message> is {arc_block} bytes: above glibc's fast bins"
        );
        // The properties are one pointer: most messages have none.
        assert_eq!(
            std::mem::size_of::<Option<super::super::MessageProperties>>(),
            std::mem::size_of::<usize>()
        );
    }
}
