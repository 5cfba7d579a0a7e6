//! Parked connections: what an idle connection costs while it has nothing to do.
//!
//! A connection's task holds a future as large as its largest await point (about 1.2 KiB
//! plus tokio's cell, benches/README.md "Idle connection breakdown"), for as long as the
//! connection lives. After `idle_park_after` with nothing read, written, queued or
//! unacknowledged, [`super::Connection::serve_session`] returns `Park`; its task ends and
//! [`park`] keeps only what resuming needs ([`Parked`]: socket, session, output state,
//! ids, keepalive deadline) until the first of: the socket readable, the session's
//! wake-up (a delivery), the takeover kick (which shutdown also sends,
//! `Router::kick_all`), or the keepalive deadline (connection/sweep.rs); then the full
//! connection is spawned again with the same state.
//!
//! A plain TCP connection parks **without a task**: its socket leaves tokio's driver for
//! the parking table's own epoll set (broker/parking.rs), the rest of its state waits in
//! the closure that resumes it, and the table's key is published in the session (for
//! deliveries) and the takeover signal (for kicks), which call the table on those
//! events. No task cell (640 bytes) and no tokio registration (256 bytes) per idle
//! connection. TLS and WebSocket connections, whose layers own the socket, park as a
//! small task that waits on the same events.
//!
//! Nothing is read while parked, so no packet can be lost or reordered; the wake-up that
//! ended the park is handed on (the kick's permit kept, readiness and queued messages
//! still there, the deadline past), so the resumed loop sees the same event. The server's
//! connection guard (its `max_connections` permit, open-connection count and the
//! shutdown barrier) moves with the connection, and the session stays attached in the
//! router: `$SYS` counts, takeover and the session stores see no difference.
//!
//! **Eager parks.** A device connects, subscribes and then idles for minutes. Holding
//! its full task for `idle_park_after` after each of those steps meant that a burst of
//! connections all held full tasks at once (19,000 connected in 3 s, all parked 5 s
//! later), and the memory their tasks freed stayed scattered in glibc's arenas between
//! the live parked tasks: RSS did not fall though the live heap did. So the first few
//! tasks of a connection ([`EAGER_PARKS_AFTER_CONNECT`]: the one that answered CONNECT,
//! and those woken by the next packets, typically SUBSCRIBEs) park at their first quiet
//! point: the full task then lives only while it has work, and the next handshake
//! reuses its memory. Not a task that has published (its cached publish decisions
//! would be dropped by every park, and its authorizer asked again). After a timed park (`idle_park_after` with nothing to do) the next
//! task parks eagerly again once, so a device woken by its PINGREQ parks right after the
//! PINGRESP. A busy connection pays at most one extra park and wake-up per idle period.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::sync::watch;
use tracing::debug;

use super::acl_cache::AclCache;
use super::flow::V5Flow;
use super::output::OutBuf;
use super::sweep;
use super::{Connection, Live};
use crate::broker::config::AnonymousPolicy;
use crate::broker::metrics::LocalCounters;
use crate::broker::parking;
use crate::broker::router::{MatchScratch, Router, Session};
use crate::broker::transport::Transport;
use crate::codec::{Decoder, Protocol, ReasonCode};

/// Tasks of a new connection that park at their first quiet point (see "Eager parks").
pub(super) const EAGER_PARKS_AFTER_CONNECT: u8 = 3;

/// Whether a task of the session loop still parks at its first quiet point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Eager {
    Off,
    /// The loop's first turn: what woke the task (readiness, a kick, the keepalive
    /// timer) is not handled yet, so that turn is not a quiet point.
    FirstTurn,
    Armed,
}

impl Eager {
    pub(super) fn new(on: bool) -> Eager {
        if on {
            Eager::FirstTurn
        } else {
            Eager::Off
        }
    }

    /// Whether [`Connection::park_eagerly`] is to be asked at this turn (cheap: one
    /// compare while off).
    pub(super) fn asks(&self) -> bool {
        *self != Eager::Off
    }
}

impl Connection {
    /// At the first point of a task's loop (after its first turn) where nothing is read,
    /// written or waiting in the socket: parks if nothing is queued or unacknowledged
    /// either (`true`). Either way this task asks only once (`eager` turned off), so a
    /// connection that stays busy takes the session lock for this once per task, never
    /// per message.
    pub(super) fn park_eagerly(&mut self, session: &Session, eager: &mut Eager) -> bool {
        if *eager == Eager::FirstTurn {
            *eager = Eager::Armed;
            return false;
        }
        let quiet = self.rbuf.is_empty() && self.out.is_empty() && !self.io.wants_write();
        // A task that has cached publish decisions (it published) keeps them, as it
        // would have for `idle_park_after`: parking drops the cache, and its publisher
        // would otherwise have its authorizer asked again after every quiet moment.
        if !self.acl_cache.is_unused() {
            *eager = Eager::Off;
            return false;
        }
        if !quiet {
            return false;
        }
        *eager = Eager::Off;
        self.eager_parks = self.eager_parks.saturating_sub(1);
        self.can_park(session)
    }
}

/// A [`Connection`] without what is empty or rebuilt while idle: read buffer, decoder,
/// routing scratch, ACL cache (a cache: decisions are asked again after a park),
/// interceptor batch, counters (flushed when parking), and the client id (the session's
/// own, shared). The socket is apart: a task holds it as it is, the parking table
/// (broker/parking.rs) as a plain socket.
///
/// Nor the peer's address (32 bytes): read back from the socket on resume.
pub(super) struct Parked {
    router: Arc<Router>,
    conn_id: u64,
    /// Empty, but it carries a 5.0 connection's outbound topic aliases.
    out: OutBuf,
    protocol: Protocol,
    username: Option<ByteString>,
    anonymous: AnonymousPolicy,
    sys_publish_logged: bool,
    v5_reason: Option<ReasonCode>,
    v5_flow: Option<Box<V5Flow>>,
    log_packets: bool,
    eager_parks: u8,
    live: Live,
}

/// Ends the connection's full task (the caller returns right after) and parks it: a
/// plain TCP connection in the parking table, without a task or a tokio registration
/// ([`park_without_task`]); TLS and WebSocket ones (whose layers hold the socket) in a
/// small task ([`wait`]).
pub(super) fn park<G: Send + 'static>(
    mut conn: Connection,
    live: Live,
    shutdown: watch::Receiver<bool>,
    guard: G,
) {
    conn.counters.flush_into(conn.router.counters());
    conn.router.counters().parked(true);
    debug!(client_id = %conn.client_id, "connection idle: parked");
    let (parked, io) = Parked::new(conn, live);
    // The keepalive deadline is the sweep's (connection/sweep.rs): no timer while parked.
    if let Some(at) = parked.live.deadline {
        sweep::watch(at, &parked.live.gone.0);
    }
    match io {
        Transport::Tcp(tcp) if parking::available() => {
            park_without_task(parked, tcp, shutdown, guard)
        }
        io => {
            tokio::spawn(wait(parked, io, shutdown, guard));
        }
    }
}

/// Puts the socket in the parking table with a closure that resumes the connection, and
/// publishes the table's key where a delivery (the session) and a kick (the takeover
/// signal) find it. What arrived before the key was published is looked for after: a
/// message queued, or a kick's permit.
fn park_without_task<G: Send + 'static>(
    parked: Parked,
    tcp: tokio::net::TcpStream,
    shutdown: watch::Receiver<bool>,
    guard: G,
) {
    // Out of tokio's driver: its registration (256 bytes) is freed.
    let socket = match tcp.into_std() {
        Ok(socket) => socket,
        Err(err) => return parked.abandon(&err, &tokio::runtime::Handle::current()),
    };
    let takeover = parked.live.gone.0.clone();
    let session = parked.live.session.clone();
    let runtime = tokio::runtime::Handle::current();
    let resume: parking::Resume = Box::new(move |socket| {
        resume_without_task(parked, socket, &runtime, shutdown, guard);
    });
    let key = match parking::park(socket, resume) {
        Ok(key) => key,
        Err((socket, resume)) => {
            // Not parked after all: resumed at once, as a woken one.
            resume(socket);
            return;
        }
    };
    takeover.parked.store(key, Ordering::SeqCst);
    session.parked.store(key, Ordering::SeqCst);
    // A kick before the key was published left its permit and woke nothing; taken here
    // to look, so handed back for the resumed loop.
    let kicked = {
        let kick = takeover.kick.notified();
        tokio::pin!(kick);
        kick.enable()
    };
    if kicked {
        takeover.kick.notify_one();
    }
    // A delivery queues under the session lock before it reads the key.
    let queued = kicked || session.state.lock().queued_len() > 0;
    if queued {
        parking::wake(key);
    } else {
        parking::watch(key);
    }
}

/// The parking table's closure: the socket back in tokio's driver and the full
/// connection spawned on its runtime. Runs on whichever thread woke it (the parking
/// table's, a publisher's, the keepalive sweep's, a takeover's), so it only spawns.
fn resume_without_task<G: Send + 'static>(
    parked: Parked,
    socket: std::net::TcpStream,
    runtime: &tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
    guard: G,
) {
    let live = &parked.live;
    // Deliveries and kicks stop calling the table (a stale key would wake nothing, at
    // the cost of a lock per delivery).
    live.gone.0.parked.store(parking::NONE, Ordering::SeqCst);
    live.session.parked.store(parking::NONE, Ordering::SeqCst);
    let tcp = {
        let _entered = runtime.enter();
        tokio::net::TcpStream::from_std(socket)
    };
    let tcp = match tcp {
        Ok(tcp) => tcp,
        Err(err) => return parked.abandon(&err, runtime),
    };
    // Swept (the entry gone): the sweep's kick is not a takeover (see `wait`). Its permit
    // is there: the sweep notifies under the lock `unwatch` took.
    let swept = live
        .deadline
        .is_some_and(|at| !sweep::unwatch(at, &live.gone.0));
    if swept {
        let kick = live.gone.0.kick.notified();
        tokio::pin!(kick);
        kick.enable();
    }
    parked.router.counters().parked(false);
    let (conn, live) = parked.resume(Transport::Tcp(tcp));
    runtime.spawn(conn.resume_holding(live, shutdown, guard));
}

/// The parked task: waits, then hands everything back to a full connection task.
/// Shutdown is not watched here (the channel's future would cost 120 bytes): it wakes
/// parked connections through the takeover signal (`Router::kick_all`).
///
/// Not an `async fn`: its arguments would be held twice (as arguments, and moved into
/// the body's locals), and their size is what a parked connection costs.
#[allow(clippy::manual_async_fn)]
fn wait<G: Send + 'static>(
    parked: Parked,
    io: Transport,
    shutdown: watch::Receiver<bool>,
    guard: G,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let kicked = {
            let Parked { live, .. } = &parked;
            tokio::select! {
                biased;
                // A takeover, shutdown (`Router::kick_all`) or the keepalive sweep.
                _ = live.gone.0.kick.notified() => true,
                // Readiness stays set in the socket's registration until a read finds
                // nothing, so the resumed loop sees it too.
                _ = std::future::poll_fn(|cx| io.poll_read_ready(cx)) => false,
                // The permit is taken here; the resumed loop moves what is queued first thing.
                _ = live.session.notify.notified() => false,
            }
        };
        let live = &parked.live;
        // The sweep removed the entry: the deadline has passed and the kick is the
        // sweep's (notified under the lock `unwatch` took). The resumed loop's keepalive
        // timer fires at once and closes the connection, so the kick is not handed on; a
        // takeover or shutdown kick it may have absorbed still ends this connection (the
        // takeover waits for it to detach; shutdown is seen on its own channel).
        let swept = live
            .deadline
            .is_some_and(|at| !sweep::unwatch(at, &live.gone.0));
        if swept && !kicked {
            // Woken by something else as the sweep fired: take the sweep's permit, so
            // the resumed loop does not read it as a takeover.
            live.gone.0.kick.notified().await;
        } else if kicked && !swept {
            // Notified again, so the resumed loop's takeover (or shutdown) branch fires as
            // it would have.
            live.gone.0.kick.notify_one();
        }
        parked.router.counters().parked(false);
        let (conn, live) = parked.resume(io);
        tokio::spawn(conn.resume_holding(live, shutdown, guard));
    }
}

impl Parked {
    fn new(conn: Connection, live: Live) -> (Parked, Transport) {
        let parked = Parked {
            router: conn.router,
            conn_id: conn.conn_id,
            out: conn.out,
            protocol: conn.protocol,
            username: conn.username,
            anonymous: conn.anonymous,
            sys_publish_logged: conn.sys_publish_logged,
            v5_reason: conn.v5_reason,
            v5_flow: conn.v5_flow,
            log_packets: conn.log_packets,
            eager_parks: conn.eager_parks,
            live,
        };
        (parked, conn.io)
    }

    fn resume(self, io: Transport) -> (Connection, Live) {
        let mut decoder = Decoder::new(self.router.config().max_packet_size);
        decoder.set_protocol(self.protocol);
        let client_id = self.live.session.client_id.clone();
        debug!(client_id = %client_id, "parked connection resumed");
        // Fails only for a socket the peer has reset, which closes at its first read;
        // its close is then logged with the unspecified address.
        let peer = io
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let conn = Connection {
            router: self.router,
            conn_id: self.conn_id,
            peer,
            io,
            rbuf: BytesMut::new(),
            out: self.out,
            decoder,
            protocol: self.protocol,
            client_id,
            username: self.username,
            anonymous: self.anonymous,
            scratch: MatchScratch::default(),
            acl_cache: AclCache::default(),
            intercepted: Vec::new(),
            unsynced: false,
            counters: LocalCounters::default(),
            sys_publish_logged: self.sys_publish_logged,
            v5_reason: self.v5_reason,
            enhanced: None,
            v5_flow: self.v5_flow,
            log_packets: self.log_packets,
            eager_parks: self.eager_parks,
        };
        (conn, self.live)
    }

    /// The socket was lost moving between tokio's driver and the parking table (the
    /// kernel refused a registration change): the connection ends as a lost one would,
    /// without its last words on the wire. Its will is not published (there is no
    /// connection left to publish it from); the session is detached (on the runtime:
    /// the waker may hold the client map's lock), so the client can connect again.
    fn abandon(self, err: &std::io::Error, runtime: &tokio::runtime::Handle) {
        let live = &self.live;
        tracing::error!(client_id = %live.session.client_id, "parked connection lost its socket: {err}");
        if let Some(at) = live.deadline {
            sweep::unwatch(at, &live.gone.0);
        }
        live.gone.0.parked.store(parking::NONE, Ordering::SeqCst);
        live.session.parked.store(parking::NONE, Ordering::SeqCst);
        self.router.counters().parked(false);
        runtime.spawn(async move {
            self.router.detach(&self.live.session, self.conn_id);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::router::{Attach, ConnHandle, GoneOnDrop};

    /// The parked task's future is what a parked connection costs beside its session
    /// and socket registration (benches/README.md, "Idle connection breakdown"): far
    /// below the full connection's (`connection_future_stays_small`).
    #[tokio::test]
    async fn parked_future_stays_small() {
        let (conn, _client) = crate::broker::connection::tests::accepted().await;
        let router = conn.router.clone();
        let gone = GoneOnDrop(Arc::default());
        let handle = ConnHandle {
            conn_id: 1,
            takeover: gone.0.clone(),
        };
        let Attach::Attached { session, .. } = router.attach(&"parked".into(), true, handle) else {
            panic!("a new client id attaches");
        };
        let live = super::Live {
            session,
            gone,
            will: None,
            keep_alive: 60,
            v5: false,
            deadline: None,
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let (parked, io) = super::Parked::new(conn, live);
        let future = super::wait(parked, io, rx, ());
        let size = std::mem::size_of_val(&future);
        println!(
            "parked future: {size} bytes; Parked {}, Transport {}",
            std::mem::size_of::<super::Parked>(),
            std::mem::size_of::<super::Transport>(),
        );
        assert!(size <= 560, "the parked future grew to {size} bytes");
    }
}
