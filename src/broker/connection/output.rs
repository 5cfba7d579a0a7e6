//! Pending output: encoded packets plus shared payloads, coalesced into one `writev`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tracing::warn;

use crate::broker::session::Queued;
use crate::codec::{self, Packet};

use super::topic_alias_out::OutboundAliases;
use super::v5_deliver::{self, Unsent};
use super::{MAX_IOV, READ_CHUNK};

/// Payloads at least this large are written by reference (an extra iovec); smaller ones
/// are copied next to their header, which is cheaper than another iovec entry.
const COPY_PAYLOAD_BELOW: usize = 1024;

/// Size of an output buffer allocated anew.
const BUF_SIZE: usize = 4096;
/// Size of each further buffer a burst encodes into once the first is full (see
/// [`Bufs::room`]): 16 such chunks make [`super::WRITE_HIGH_WATER`], well within one
/// `writev`'s [`MAX_IOV`].
const GROW_SIZE: usize = 16 * 1024;
/// Room asked for a PUBLISH header beside its topic: fixed header (5), topic length (2),
/// packet id (2), and a 5.0 property section's length; a larger header (5.0 properties)
/// still fits, `BytesMut` then grows in place.
const HEADER_ROOM: usize = 16;
/// Most spare output buffers kept per worker thread (16 KiB each at most: see
/// [`give_spare`]).
const SPARE_BUFFERS: usize = 32;
/// Most chunk slots a spare buffer keeps (a burst of large payloads may grow the ring
/// far beyond what the next connection needs).
const SPARE_CHUNK_SLOTS: usize = 256;

/// What a connection writes from while it has output: encoded packets (`cur`, split into
/// `chunks` when sealed) and referenced payloads. Boxed in [`OutBuf`] and held only while
/// something is pending, so a waiting connection holds 8 bytes of it instead of 64
/// (benches/README.md, "Idle connection breakdown").
#[derive(Default)]
struct Bufs {
    chunks: VecDeque<Bytes>,
    cur: BytesMut,
}

thread_local! {
    /// Output buffers given back by connections that went to wait with nothing pending,
    /// reused by the next connection on this thread that has something to write. A
    /// connection gives its buffers up whenever it waits, so that an idle one holds none;
    /// without this list that would be a malloc and free of 4 KiB (and of the chunk
    /// ring) per wake-up, which a lockstep QoS 1 client makes per message.
    // Boxed on purpose: the box itself moves between a connection's `OutBuf` and this
    // list, so taking or giving buffers back allocates nothing.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Bufs>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers to encode into: spare ones, or new ones.
fn take_spare() -> Box<Bufs> {
    let mut bufs = SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    if bufs.cur.capacity() == 0 {
        bufs.cur = BytesMut::with_capacity(BUF_SIZE);
    }
    bufs
}

/// Keeps `bufs` (all written) for reuse if the buffer is unshared and of ordinary size.
fn give_spare(mut bufs: Box<Bufs>) {
    bufs.chunks.clear();
    if bufs.chunks.capacity() > SPARE_CHUNK_SLOTS {
        bufs.chunks = VecDeque::new();
    }
    bufs.cur.clear();
    // Reclaims the whole allocation when nothing else refers to it any more (every
    // chunk split off it was written and dropped); a buffer still shared, or one a
    // burst grew large, is freed and replaced when the spare is taken.
    if !bufs.cur.try_reclaim(BUF_SIZE) || bufs.cur.capacity() > 4 * BUF_SIZE {
        bufs.cur = BytesMut::new();
    }
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(bufs);
        }
    });
}

thread_local! {
    /// Read buffers given back by connections whose last read left no partial packet,
    /// for the next read on this thread: a connection holds no read buffer between
    /// bursts, and a lockstep client (one packet per wake-up) does not cost a 16 KiB
    /// malloc and free per packet.
    static SPARE_READ: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Most spare read buffers kept per worker thread (16 KiB each).
const SPARE_READ_BUFFERS: usize = 16;

/// A read buffer with [`READ_CHUNK`] of room: a spare one, or a new one.
pub(super) fn take_read_buf() -> BytesMut {
    SPARE_READ
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK))
}

/// Takes the (empty) read buffer from its connection, keeping it for reuse when no frame
/// split off it is still alive (a PUBLISH payload queued for a subscriber refers to it
/// until written): such a buffer is only let go, freed by its last holder.
pub(super) fn give_read_buf(rbuf: &mut BytesMut) {
    let mut buf = std::mem::take(rbuf);
    if buf.capacity() == 0 || !buf.try_reclaim(READ_CHUNK) || buf.capacity() > 4 * READ_CHUNK {
        return;
    }
    buf.clear();
    let _ = SPARE_READ.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_READ_BUFFERS {
            spare.push(buf);
        }
    });
}

/// The buffers of an [`OutBuf`], taken from the spare list when it holds none.
fn bufs_in(bufs: &mut Option<Box<Bufs>>) -> &mut Bufs {
    let bufs = bufs.get_or_insert_with(take_spare);
    if bufs.cur.capacity() == 0 {
        // Given up after a large burst (see `advance`).
        bufs.cur = BytesMut::with_capacity(BUF_SIZE);
    }
    bufs
}

/// Pending output: encoded packets plus shared payloads, written with `writev`.
#[derive(Default)]
pub(super) struct OutBuf {
    /// `None` while nothing is pending and between bursts (see [`OutBuf::release_if_empty`]).
    bufs: Option<Box<Bufs>>,
    len: usize,
    /// The peer speaks MQTT 5.0: PUBLISH goes out with its property section.
    v5: bool,
    /// A 5.0 client's Maximum Packet Size (0: none given), connection/v5_deliver.rs.
    max_packet_size: u32,
    /// A 5.0 client's outbound Topic Aliases, connection/topic_alias_out.rs; `None` for
    /// everyone who takes none.
    aliases: Option<Box<OutboundAliases>>,
}

impl OutBuf {
    pub(super) fn set_v5(&mut self) {
        self.v5 = true;
    }

    pub(super) fn set_outbound_aliases(&mut self, aliases: Option<Box<OutboundAliases>>) {
        self.aliases = aliases;
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

    /// The buffers, taken from the spare list when the connection had given them up.
    fn bufs_mut(&mut self) -> &mut Bufs {
        bufs_in(&mut self.bufs)
    }

    pub(super) fn put_packet(&mut self, packet: &Packet) {
        let cur = &mut self.bufs_mut().cur;
        let before = cur.len();
        if let Err(err) = packet.encode(cur) {
            // Only packets the broker builds itself reach here, from validated data.
            warn!("cannot encode {}: {err}", packet.name());
            cur.truncate(before);
        }
        let added = cur.len() - before;
        self.len += added;
    }

    pub(super) fn put_publish(
        &mut self,
        item: &Queued,
        pkid: Option<u16>,
        dup: bool,
    ) -> Result<(), Unsent> {
        let msg = &item.msg;
        let (v5, max_packet_size) = (self.v5, self.max_packet_size);
        // The field, not `bufs_mut`: the alias map is borrowed beside it.
        let bufs = bufs_in(&mut self.bufs);
        let copied = if msg.payload.len() < COPY_PAYLOAD_BELOW {
            msg.payload.len()
        } else {
            0
        };
        bufs.room(HEADER_ROOM + msg.topic.len() + copied);
        let before = bufs.cur.len();
        let encoded = if v5 {
            // The message's properties were encoded once, when it was published, and
            // are shared by every 5.0 subscriber [MQTT-3.3.2-17].
            match v5_deliver::encode_publish_header(
                &mut bufs.cur,
                item,
                pkid,
                dup,
                max_packet_size,
                self.aliases.as_deref_mut(),
            ) {
                Ok(Err(unsent)) => return Err(unsent),
                Ok(Ok(())) => Ok(()),
                Err(err) => Err(err),
            }
        } else {
            codec::encode_publish_header(
                &mut bufs.cur,
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
            bufs.cur.truncate(before);
            return Err(Unsent::Invalid);
        }
        let added = bufs.cur.len() - before + msg.payload.len();
        if msg.payload.len() < COPY_PAYLOAD_BELOW {
            bufs.cur.extend_from_slice(&msg.payload);
        } else {
            bufs.seal();
            bufs.chunks.push_back(msg.payload.clone());
        }
        self.len += added;
        Ok(())
    }

    /// Fills `iov` with the pending chunks, oldest first; returns how many it used.
    pub(super) fn io_slices<'a>(&'a mut self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let Some(bufs) = self.bufs.as_deref_mut() else {
            return 0;
        };
        bufs.seal();
        let mut n = 0;
        for chunk in bufs.chunks.iter().take(MAX_IOV) {
            iov[n] = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Gives up the buffers when nothing is pending, so a connection waiting for traffic
    /// holds no output memory (benches/README.md, "Idle connection breakdown"). Called
    /// before the connection waits; they go to this thread's spare list, whence the next
    /// connection on this thread with something to write takes them without allocating.
    pub(super) fn release_if_empty(&mut self) {
        if self.len == 0 {
            if let Some(bufs) = self.bufs.take() {
                give_spare(bufs);
            }
        }
    }

    pub(super) fn advance(&mut self, mut written: usize) {
        self.len -= written;
        let Some(bufs) = self.bufs.as_deref_mut() else {
            return;
        };
        while written > 0 {
            let Some(front) = bufs.chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                bufs.chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        if self.len == 0 && bufs.cur.capacity() > 64 * 1024 {
            // Give a burst's large buffer back instead of keeping it per idle connection.
            bufs.cur = BytesMut::new();
        }
    }
}

impl Bufs {
    /// Makes room for `need` more bytes in `cur` without moving what it holds: when the
    /// buffer is full, what it holds becomes a chunk and encoding goes on in a new one.
    /// Grown in place instead, a burst's buffer was reallocated from 4 KiB up to the
    /// high water mark, copying everything encoded so far at each doubling (a fan-in
    /// subscriber's pump: 126 instructions per delivery in `realloc`'s copies,
    /// benches/README.md "Session 8: fan-in's instructions per delivery").
    fn room(&mut self, need: usize) {
        if self.cur.capacity() - self.cur.len() < need {
            self.seal();
            // `cur` is empty now and shares its allocation with the sealed chunk, so
            // this allocates a new buffer and copies nothing.
            self.cur.reserve(need.max(GROW_SIZE));
        }
    }

    /// Moves the bytes encoded so far into the chunk list.
    fn seal(&mut self) {
        if !self.cur.is_empty() {
            self.chunks.push_back(self.cur.split().freeze());
        }
    }
}
