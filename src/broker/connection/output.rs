//! Pending output: encoded packets plus shared payloads, coalesced into one `writev`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tracing::warn;

use crate::broker::session::Queued;
use crate::codec::{self, Packet};

use super::v5_deliver::{self, Unsent};
use super::MAX_IOV;

/// Payloads at least this large are written by reference (an extra iovec); smaller ones
/// are copied next to their header, which is cheaper than another iovec entry.
const COPY_PAYLOAD_BELOW: usize = 1024;

/// Size of an output buffer taken from the spare list or allocated anew.
const BUF_SIZE: usize = 4096;
/// Most spare output buffers kept per worker thread (16 KiB each at most: see
/// [`OutBuf::release_if_empty`]).
const SPARE_BUFFERS: usize = 32;

thread_local! {
    /// Output buffers given back by connections that went to wait with nothing pending,
    /// reused by the next connection on this thread that has something to write. A
    /// connection frees its buffer whenever it waits, so that an idle one holds none;
    /// without this list that would be a malloc and free of 4 KiB per wake-up, which a
    /// lockstep QoS 1 client makes per message.
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer to encode into: a spare one, or a new one.
fn take_spare() -> BytesMut {
    SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Keeps `buf` for reuse if it is unshared and of ordinary size, else frees it.
fn give_spare(mut buf: BytesMut) {
    buf.clear();
    // Reclaims the whole allocation when nothing else refers to it any more (every
    // chunk split off it was written and dropped); a buffer still shared is freed.
    if buf.try_reclaim(BUF_SIZE) && buf.capacity() <= 4 * BUF_SIZE {
        let _ = SPARE.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        });
    }
}

/// Pending output: encoded packets plus shared payloads, written with `writev`.
#[derive(Default)]
pub(super) struct OutBuf {
    chunks: VecDeque<Bytes>,
    cur: BytesMut,
    len: usize,
    /// The peer speaks MQTT 5.0: PUBLISH goes out with its property section.
    v5: bool,
    /// A 5.0 client's Maximum Packet Size (0: none given), connection/v5_deliver.rs.
    max_packet_size: u32,
}

impl OutBuf {
    pub(super) fn set_v5(&mut self) {
        self.v5 = true;
    }

    pub(super) fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// The 5.0 client's Maximum Packet Size (0: none given), for optional properties.
    pub(super) fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `cur`, with room: a freed one is replaced from the spare list.
    fn cur_mut(&mut self) -> &mut BytesMut {
        if self.cur.capacity() == 0 {
            self.cur = take_spare();
        }
        &mut self.cur
    }

    pub(super) fn put_packet(&mut self, packet: &Packet) {
        let before = self.cur_mut().len();
        if let Err(err) = packet.encode(&mut self.cur) {
            // Only packets the broker builds itself reach here, from validated data.
            warn!("cannot encode {}: {err}", packet.name());
            self.cur.truncate(before);
        }
        self.len += self.cur.len() - before;
    }

    pub(super) fn put_publish(
        &mut self,
        item: &Queued,
        pkid: Option<u16>,
        dup: bool,
    ) -> Result<(), Unsent> {
        let msg = &item.msg;
        let before = self.cur_mut().len();
        let encoded = if self.v5 {
            // The message's properties were encoded once, when it was published, and
            // are shared by every 5.0 subscriber [MQTT-3.3.2-17].
            match v5_deliver::encode_publish_header(
                &mut self.cur,
                item,
                pkid,
                dup,
                self.max_packet_size,
            ) {
                Ok(Err(unsent)) => return Err(unsent),
                Ok(Ok(())) => Ok(()),
                Err(err) => Err(err),
            }
        } else {
            codec::encode_publish_header(
                &mut self.cur,
                &msg.topic,
                item.qos,
                item.retain,
                dup,
                pkid,
                msg.payload.len(),
            )
        };
        if let Err(err) = encoded {
            warn!("cannot encode PUBLISH to {}: {err}", msg.topic);
            self.cur.truncate(before);
            return Err(Unsent::Invalid);
        }
        self.len += self.cur.len() - before + msg.payload.len();
        if msg.payload.len() < COPY_PAYLOAD_BELOW {
            self.cur.extend_from_slice(&msg.payload);
        } else {
            self.seal();
            self.chunks.push_back(msg.payload.clone());
        }
        Ok(())
    }

    /// Moves the bytes encoded so far into the chunk list.
    pub(super) fn seal(&mut self) {
        if !self.cur.is_empty() {
            self.chunks.push_back(self.cur.split().freeze());
        }
    }

    /// Fills `iov` with the pending chunks, oldest first; returns how many it used.
    pub(super) fn io_slices<'a>(&'a mut self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        self.seal();
        let mut n = 0;
        for chunk in self.chunks.iter().take(MAX_IOV) {
            iov[n] = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Gives up both buffers when nothing is pending, so a connection waiting for
    /// traffic holds no output memory (benches/README.md, "Where an idle connection's
    /// bytes go": after the CONNACK the chunk list kept a 128-byte ring and `cur` a
    /// shared buffer plus its 40-byte header). Called before the connection waits; `cur`
    /// goes to this thread's spare list, and the chunk ring (128 bytes, from the
    /// allocator's per-thread cache) is allocated again by the next burst.
    pub(super) fn release_if_empty(&mut self) {
        if self.len == 0 {
            if self.chunks.capacity() != 0 {
                self.chunks = VecDeque::new();
            }
            if self.cur.capacity() != 0 {
                give_spare(std::mem::take(&mut self.cur));
            }
        }
    }

    pub(super) fn advance(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        if self.is_empty() && self.cur.capacity() > 64 * 1024 {
            // Give a burst's large buffer back instead of keeping it per idle connection.
            self.cur = BytesMut::new();
        }
    }
}
