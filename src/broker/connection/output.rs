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
    /// The peer speaks MQTT 5.0: PUBLISH goes out with its property section.
    v5: bool,
}

impl OutBuf {
    pub(super) fn set_v5(&mut self) {
        self.v5 = true;
    }

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
        let encoded = if self.v5 {
            // The message's properties were encoded once, when it was published, and
            // are shared by every 5.0 subscriber [MQTT-3.3.2-17].
            codec::encode_publish_header_v5(
                &mut self.cur,
                &msg.topic,
                item.qos,
                item.retain,
                dup,
                pkid,
                msg.properties.as_deref().unwrap_or_default(),
                &[],
                msg.payload.len(),
            )
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
