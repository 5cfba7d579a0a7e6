//! Pending output: encoded packets plus shared payloads, coalesced into one `writev`.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tracing::warn;

use crate::broker::session::Queued;
use crate::codec::{self, Packet};

use super::MAX_IOV;

/// Payloads at least this large are written by reference (an extra iovec); smaller ones
/// are copied next to their header, which is cheaper than another iovec entry.
const COPY_PAYLOAD_BELOW: usize = 1024;

/// Pending output: encoded packets plus shared payloads, written with `writev`.
#[derive(Default)]
pub(super) struct OutBuf {
    chunks: VecDeque<Bytes>,
    cur: BytesMut,
    len: usize,
}

impl OutBuf {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn put_packet(&mut self, packet: &Packet) {
        let before = self.cur.len();
        if let Err(err) = packet.encode(&mut self.cur) {
            // Only packets the broker builds itself reach here, from validated data.
            warn!("cannot encode {}: {err}", packet.name());
            self.cur.truncate(before);
        }
        self.len += self.cur.len() - before;
    }

    pub(super) fn put_publish(&mut self, item: &Queued, pkid: Option<u16>, dup: bool) {
        let msg = &item.msg;
        let before = self.cur.len();
        let encoded = codec::encode_publish_header(
            &mut self.cur,
            &msg.topic,
            item.qos,
            item.retain,
            dup,
            pkid,
            msg.payload.len(),
        );
        if let Err(err) = encoded {
            warn!("cannot encode PUBLISH to {}: {err}", msg.topic);
            self.cur.truncate(before);
            return;
        }
        self.len += self.cur.len() - before + msg.payload.len();
        if msg.payload.len() < COPY_PAYLOAD_BELOW {
            self.cur.extend_from_slice(&msg.payload);
        } else {
            self.seal();
            self.chunks.push_back(msg.payload.clone());
        }
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

    /// Frees both buffers when nothing is pending, so a connection waiting for traffic
    /// holds no output memory (benches/README.md, "Where an idle connection's bytes go":
    /// after the CONNACK the chunk list kept a 128-byte ring and `cur` a shared 8-byte
    /// buffer plus its 40-byte header). Called before the connection waits; the next
    /// burst allocates them again, one `malloc` each per burst, against a `writev` each.
    pub(super) fn release_if_empty(&mut self) {
        if self.len == 0 {
            if self.chunks.capacity() != 0 {
                self.chunks = VecDeque::new();
            }
            if self.cur.capacity() != 0 {
                self.cur = BytesMut::new();
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
