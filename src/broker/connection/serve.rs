//! The select loop of a connection that serves its session: reads, writes, deliveries,
//! keepalive and park timers, takeover and shutdown, all in one `select!` on one task.
//! Also what the loop asks before it parks, and how a connection being taken over ends.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};

use super::output;
use super::park::Eager;
use super::{
    earliest, keepalive_limit, Close, Connection, Served, BYTES_READ_PER_BUDGET_UNIT,
    BYTES_WRITTEN_PER_BUDGET_UNIT, READ_CHUNK, READ_PAUSE_ABOVE, TAKEOVER_DRAIN_LIMIT,
    WRITE_HIGH_WATER,
};
use crate::broker::cluster::RouterCluster;
use crate::broker::router::Session;

impl Connection {
    /// The session's loop: until the connection closes, or parks (`idle_park_after`).
    /// `deadline` is the keepalive's, moved by every read and kept across a park.
    pub(super) async fn serve_session(
        &mut self,
        session: &Arc<Session>,
        keep_alive: u16,
        deadline: &mut Option<Instant>,
        kick: &Notify,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Served {
        let idle_limit = keepalive_limit(keep_alive);
        let park_after = Some(self.router.config().idle_park_after).filter(|d| !d.is_zero());
        // One timer for both: without parking it is the keepalive deadline, moved by
        // each read; with parking it also fires every `idle_park_after` to look whether
        // the connection was idle since (reads then only move `deadline`, which is
        // checked when it fires).
        let next_park = |now: Instant| park_after.map(|after| now + after);
        let first = earliest(*deadline, next_park(Instant::now()));
        let expiry =
            sleep_until(first.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)));
        tokio::pin!(expiry);
        // A read or a delivery since the timer last fired: not idle.
        let mut active = false;
        // Park at this task's first quiet point, not after `idle_park_after`
        // (connection/park.rs, "Eager parks").
        let mut eager = Eager::new(park_after.is_some() && self.eager_parks > 0);
        // Packets pipelined behind CONNECT are already buffered.
        if let Some(close) = Box::pin(self.handle_buffered(session)).await {
            return Served::Close(close);
        }
        if self.rbuf.is_empty() {
            output::give_read_buf(&mut self.rbuf);
        }
        loop {
            self.pump(session);
            // The traffic not yet flushed is what this connection moved since the last turn.
            let units = self
                .counters
                .bytes_received
                .div_ceil(BYTES_READ_PER_BUDGET_UNIT)
                + self
                    .counters
                    .bytes_sent
                    .div_ceil(BYTES_WRITTEN_PER_BUDGET_UNIT);
            self.counters.flush_into(self.router.counters());
            for _ in 0..units {
                tokio::task::coop::consume_budget().await;
            }
            let can_pump = self.out.len() < WRITE_HIGH_WATER;
            let has_output = !self.out.is_empty() || self.io.wants_write();
            // A peer that sends without reading (acks piling up unwritten) is not read
            // from until it drains: TCP pushes back on it, and its output stays bounded.
            let can_read = self.out.len() < READ_PAUSE_ABOVE;
            // Nothing pending: hold no output buffer while waiting.
            self.out.release_if_empty();
            if eager.asks() && self.park_eagerly(session, &mut eager) {
                return Served::Park;
            }
            tokio::select! {
                biased;
                _ = kick.notified() => {
                    // Shutdown kicks every connection too (`Router::kick_all`).
                    if *shutdown.borrow() {
                        return Served::Close(Close::Shutdown);
                    }
                    if self.router.cluster().is_some_and(|c| c.fenced()) {
                        return Served::Close(Close::Fenced);
                    }
                    return Served::Close(Box::pin(self.drain_before_takeover(session)).await);
                }
                _ = shutdown.changed() => return Served::Close(Close::Shutdown),
                () = &mut expiry, if first.is_some() => {
                    let now = Instant::now();
                    if deadline.is_some_and(|at| at <= now) {
                        return Served::Close(Close::KeepAlive);
                    }
                    if park_after.is_some() && !std::mem::take(&mut active) && self.can_park(session) {
                        self.eager_parks = self.eager_parks.max(1);
                        return Served::Park;
                    }
                    if let Some(at) = earliest(*deadline, next_park(now)) {
                        expiry.as_mut().reset(at);
                    }
                }
                // Readiness by poll, not by `readable()`/`writable()` futures: the wakers
                // live in the socket's registration, and these futures are 16 bytes
                // instead of 168 each in every connection's future.
                res = std::future::poll_fn(|cx| self.io.poll_write_ready(cx)), if has_output => {
                    if let Err(e) = res.and_then(|()| self.write_ready()) {
                        return Served::Close(Close::Io(e));
                    }
                },
                res = std::future::poll_fn(|cx| self.io.poll_read_ready(cx)), if can_read => {
                    if let Err(e) = res {
                        return Served::Close(Close::Io(e));
                    }
                    if self.rbuf.capacity() == 0 {
                        self.rbuf = output::take_read_buf();
                    }
                    self.rbuf.reserve(READ_CHUNK);
                    match self.io.try_read_buf(&mut self.rbuf) {
                        Ok(0) => return Served::Close(Close::PeerClosed),
                        Ok(n) => {
                            self.counters.bytes_received += n as u64;
                            active = true;
                            if let Some(limit) = idle_limit {
                                let at = Instant::now() + limit;
                                *deadline = Some(at);
                                if park_after.is_none() {
                                    expiry.as_mut().reset(at);
                                }
                            }
                            if let Some(close) = Box::pin(self.handle_buffered(session)).await {
                                return Served::Close(close);
                            }
                            if self.rbuf.is_empty() {
                                // Idle connections hold no read buffer between reads;
                                // a busy one takes it back from the spare list.
                                output::give_read_buf(&mut self.rbuf);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if self.rbuf.is_empty() {
                                // Readiness was stale: hold no buffer while idle.
                                output::give_read_buf(&mut self.rbuf);
                            }
                        }
                        Err(e) => return Served::Close(Close::Io(e)),
                    }
                },
                _ = session.notify.notified(), if can_pump => active = true,
            }
        }
    }

    /// Whether nothing is pending on either side, so the connection may park: no
    /// partial packet read, nothing to write, nothing queued or unacknowledged in the
    /// session. Asked only when the park timer fires, never per packet.
    pub(super) fn can_park(&self, session: &Session) -> bool {
        let quiet = self.rbuf.is_empty()
            && self.out.is_empty()
            && !self.io.wants_write()
            && !self.unsynced
            && self.intercepted.is_empty()
            // An enhanced authentication may be mid-exchange: such a connection stays.
            && self.enhanced.is_none();
        quiet && {
            let state = session.state.lock();
            state.queued_len() == 0 && state.inflight_len() == 0
        }
    }

    /// Decides how a connection that is being taken over ends. The client may have sent
    /// packets before it opened its new connection that this one has not read yet: a
    /// DISCONNECT among them discards the will [MQTT-3.1.2-10] (Mosquitto bug 1273: a
    /// client that disconnects cleanly and reconnects at once got its will published),
    /// and its PUBLISHes are delivered. So what the socket already holds is handled
    /// first, up to [`TAKEOVER_DRAIN_LIMIT`] bytes; then the takeover closes it.
    async fn drain_before_takeover(&mut self, session: &Arc<Session>) -> Close {
        let mut budget = TAKEOVER_DRAIN_LIMIT;
        // Read from the socket itself: a connection resumed from the parking table by
        // this kick has no readiness in tokio's driver yet (Transport::direct_reader).
        let mut direct = self.io.direct_reader();
        loop {
            if let Some(close) = Box::pin(self.handle_buffered(session)).await {
                return close;
            }
            if budget == 0 {
                return Close::Takeover;
            }
            let chunk = READ_CHUNK.min(budget);
            let read = match direct.as_mut() {
                Some(socket) => read_direct(socket, &mut self.rbuf, chunk),
                None => {
                    self.rbuf.reserve(chunk);
                    self.io.try_read_buf(&mut self.rbuf)
                }
            };
            match read {
                Ok(n) if n > 0 => {
                    self.counters.bytes_received += n as u64;
                    budget = budget.saturating_sub(n);
                }
                // Nothing more was sent, or the client closed without DISCONNECT: the
                // takeover stands, and the will is published.
                Ok(_) => return Close::Takeover,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Close::Takeover,
                Err(e) => return Close::Io(e),
            }
        }
    }
}

/// Appends up to `chunk` bytes read from `socket` (non-blocking) to `buf`.
fn read_direct(
    socket: &mut std::net::TcpStream,
    buf: &mut BytesMut,
    chunk: usize,
) -> io::Result<usize> {
    let len = buf.len();
    buf.resize(len + chunk, 0);
    let read = io::Read::read(socket, &mut buf[len..]);
    buf.truncate(len + *read.as_ref().unwrap_or(&0));
    read
}
