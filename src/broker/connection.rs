//! One client connection: its socket, its buffers, and its life from CONNECT to close.
//!
//! A single task owns both halves of the socket and multiplexes, in one `select!`, reading
//! packets, writing what is pending, waking when the session's queue grows, keepalive
//! expiry, takeover and shutdown. Writes are coalesced: everything produced while
//! handling one read (acks, deliveries) goes out in one vectored write, and a PUBLISH
//! payload is referenced, not copied, when it is large. A peer that stops reading only
//! stops its own writes: its session queue fills and its overflow policy applies; nobody
//! else waits for it.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::broker::cluster::RouterCluster;
use crate::broker::config::AnonymousPolicy;
use crate::broker::hooks::{AuthDecision, DisconnectReason, Event};
use crate::broker::metrics::LocalCounters;
use crate::broker::router::{Attach, ConnHandle, GoneOnDrop, MatchScratch, Router, Session};
use crate::broker::session::{Message, Outgoing};
use crate::broker::transport::Transport;
use crate::codec::{self, ConnAck, Connect, ConnectReturnCode, Decoder, Packet, Protocol};

mod acl_cache;
mod auth;
mod cluster_session;
mod delayed_will;
mod enhanced_auth;
mod flow;
mod handlers;
mod output;
mod packet_log;
mod park;
mod reasons;
mod serve;
mod sweep;
mod topic_alias;
mod topic_alias_out;
mod v5;
mod v5_deliver;

use acl_cache::AclCache;
use output::OutBuf;

/// Stop moving messages from the session queue into the write buffer above this many
/// pending bytes: the rest waits in the (bounded) session queue, so a slow reader's
/// backlog is counted against its own limit.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Stop reading from a peer while this many bytes wait to be written to it.
const READ_PAUSE_ABOVE: usize = 4 * WRITE_HIGH_WATER;
/// Most iovecs handed to one `writev`.
pub(super) const MAX_IOV: usize = 64;
/// Read size once a connection has shown it has data.
const READ_CHUNK: usize = 16 * 1024;
/// Most queued messages taken from the session per lock.
const PUMP_BATCH: usize = 64;
/// Attempts to take over a client id whose owner does not go away.
const TAKEOVER_ATTEMPTS: usize = 5;
/// Most bytes a connection being taken over still reads (see
/// [`Connection::drain_before_takeover`]): more than a loopback socket buffer usually
/// holds, so what the client sent before its new connection is read, yet bounded, so a
/// client that keeps sending cannot hold the new connection back.
const TAKEOVER_DRAIN_LIMIT: usize = 4 * READ_PAUSE_ABOVE;
/// Bytes read that spend one unit of tokio's cooperative budget (128 units per wake-up):
/// a connection lets the other tasks of its worker run after about 64 KiB read in one
/// wake-up. Readiness waits do not spend the budget, so a socket that always has data (a
/// publisher flooding as fast as it can) would otherwise keep its worker for good,
/// starving every connection, login and accept queued behind it; the flooder is then
/// paced by TCP back-pressure. The budget is renewed whenever the task waits.
const BYTES_READ_PER_BUDGET_UNIT: u64 = 512;
/// Bytes written that spend one unit: a connection that only writes yields after about
/// 4 MiB in one wake-up (16 turns of [`WRITE_HIGH_WATER`]), so a subscriber fed without
/// pause by publishers on other workers is bounded too. Writes are charged far less than
/// reads because they cost far less per byte: a byte read is decoded and routed
/// to every subscriber (one PUBLISH read is 20 deliveries in a 1:20 fan-out), a byte written
/// was encoded once and leaves in one `writev` with a few hundred others; both limits come
/// to roughly a millisecond of work. Charging writes at the read rate made every backlogged
/// subscriber yield four times per turn (256 KiB): tokio parks a task out of budget until
/// its worker's queue is empty, and waking it again often wakes the other worker too (an
/// eventfd write and a context switch). In interleaved runs against 985e479 that cost
/// QoS 0 fan-in 15-25% more broker CPU per delivery; with this rate fan-in uses less than
/// at 985e479.
const BYTES_WRITTEN_PER_BUDGET_UNIT: u64 = 32 * 1024;

thread_local! {
    /// The batch [`Connection::pump`] takes from a session queue per lock, reused by every
    /// connection on this worker thread (always empty between calls).
    static PUMP_BATCH_VEC: Cell<Vec<Outgoing>> = const { Cell::new(Vec::new()) };
}

/// What a connection that serves its session holds beside the [`Connection`]: kept
/// across a park (connection/park.rs).
struct Live {
    session: Arc<Session>,
    /// Dropped when the connection has detached (see [`GoneOnDrop`]); its `kick` is the
    /// takeover signal.
    gone: GoneOnDrop,
    /// The CONNECT, kept only when it carries a will.
    will: Option<Box<Connect>>,
    keep_alive: u16,
    v5: bool,
    /// When the keepalive expires: 1.5 times the keepalive after the last packet read.
    deadline: Option<Instant>,
}

/// How [`Connection::serve_session`] ended.
enum Served {
    Close(Close),
    /// Idle for `idle_park_after` with nothing pending: hand over to a parked task.
    Park,
}

/// [MQTT-3.1.2-24]: 1.5 times the keepalive without a packet closes the connection.
fn keepalive_limit(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500))
}

/// Why a connection ended; everything but `Disconnect` publishes the will.
#[derive(Debug)]
enum Close {
    Disconnect,
    /// An MQTT 5.0 DISCONNECT with reason 0x04: a clean close that publishes the will.
    DisconnectWithWill,
    PeerClosed,
    KeepAlive,
    Takeover,
    Shutdown,
    /// Cluster mode: this node is fenced off the cluster (broker/cluster/liveness.rs).
    Fenced,
    Protocol(String),
    Io(io::Error),
}

impl Close {
    fn reason(&self) -> DisconnectReason {
        match self {
            Close::Disconnect | Close::DisconnectWithWill => DisconnectReason::Clean,
            Close::KeepAlive => DisconnectReason::Keepalive,
            Close::Takeover => DisconnectReason::Takeover,
            Close::Shutdown | Close::Fenced => DisconnectReason::Shutdown,
            Close::PeerClosed | Close::Protocol(_) | Close::Io(_) => DisconnectReason::Error,
        }
    }
}

pub struct Connection {
    router: Arc<Router>,
    conn_id: u64,
    peer: SocketAddr,
    /// TCP, TLS or WebSocket: one readiness interface (broker/transport.rs).
    io: Transport,
    /// Allocated only once the socket is readable, so idle connections hold no buffer.
    rbuf: BytesMut,
    out: OutBuf,
    decoder: Decoder,
    protocol: Protocol,
    client_id: ByteString,
    username: Option<ByteString>,
    /// What its listener does with a client that sends no username.
    anonymous: AnonymousPolicy,
    scratch: MatchScratch,
    /// Publish decisions by topic, reused for `acl_cache_ttl`.
    acl_cache: AclCache,
    /// PUBLISHes of the current read awaiting the interceptor's verdict.
    intercepted: Vec<Arc<Message>>,
    /// A QoS 1/2 message was accepted in this read and must reach the durable store
    /// before it is acknowledged.
    unsynced: bool,
    /// Traffic since the last flush into the broker's `$SYS` totals.
    counters: LocalCounters,
    /// A PUBLISH to `$SYS` was logged at INFO: later ones (the client sets the rate) go
    /// to DEBUG.
    sys_publish_logged: bool,
    /// The reason code of the rule an MQTT 5.0 client broke, for the DISCONNECT sent
    /// before the close (connection/v5.rs); at the close, the code of the DISCONNECT
    /// either side sent, for the disconnect event.
    v5_reason: Option<codec::ReasonCode>,
    /// MQTT 5.0 enhanced authentication: the method, and a re-authentication in progress
    /// (connection/enhanced_auth.rs). Boxed: most connections have none.
    enhanced: Option<Box<enhanced_auth::EnhancedAuth>>,
    /// MQTT 5.0 flow state (connection/flow.rs); `None` for 3.1/3.1.1.
    v5_flow: Option<Box<flow::V5Flow>>,
    /// Each packet in and out is logged at DEBUG (`packet_log`); asked once, at start.
    log_packets: bool,
    /// How many more of this connection's tasks park at their first quiet point rather
    /// than after `idle_park_after` (connection/park.rs, "Eager parks").
    eager_parks: u8,
}

impl Connection {
    pub fn new(router: Arc<Router>, io: impl Into<Transport>, peer: SocketAddr) -> Connection {
        let io = io.into();
        let decoder = Decoder::new(router.config().max_packet_size);
        let conn_id = router.next_id();
        Connection {
            router,
            conn_id,
            peer,
            io,
            rbuf: BytesMut::new(),
            out: OutBuf::default(),
            decoder,
            protocol: Protocol::V311,
            client_id: ByteString::new(),
            username: None,
            anonymous: AnonymousPolicy::AskHooks,
            scratch: MatchScratch::default(),
            acl_cache: AclCache::default(),
            intercepted: Vec::new(),
            unsynced: false,
            counters: LocalCounters::default(),
            sys_publish_logged: false,
            v5_reason: None,
            enhanced: None,
            v5_flow: None,
            log_packets: packet_log::packets_enabled(),
            eager_parks: park::EAGER_PARKS_AFTER_CONNECT,
        }
    }

    /// Serves the connection until it closes, for any reason. Never panics on input.
    ///
    /// Not an `async fn`: one taking `mut self` moves `self` into a second copy inside its
    /// future, so every connection held its 424-byte `Connection` twice for its whole life
    /// (`-Zprint-type-sizes`, benches/README.md "Where an idle connection's bytes go").
    /// The async block below uses the captured value in place.
    pub fn run(
        self,
        shutdown: watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.run_holding(shutdown, ())
    }

    /// [`Connection::run`], dropping `guard` (the server's connection permit) when it
    /// ends. Spawning `async move { conn.run(..).await; drop(permit) }` instead would hold
    /// the `Connection` twice again: once captured by the block, once moved into the
    /// awaited future.
    // Deliberately not an `async fn` (see `run`): clippy's rewrite would bring back the
    // second copy of `self`.
    #[allow(clippy::manual_async_fn)]
    pub fn run_holding<G: Send + 'static>(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        guard: G,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // By reference: each nested future holding its own receiver (16 bytes) would
            // hold it four times over for the connection's life.
            match self.run_to_close(&mut shutdown).await {
                // Moved, not awaited: this task ends, a small one takes over.
                Some(live) => park::park(self, live, shutdown, guard),
                None => self.end_stream(guard).await,
            }
        }
    }

    /// The full connection again, for a parked one that was woken (connection/park.rs):
    /// its session served from where it parked.
    #[allow(clippy::manual_async_fn)]
    fn resume_holding<G: Send + 'static>(
        mut self,
        mut live: Live,
        mut shutdown: watch::Receiver<bool>,
        guard: G,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            // `live` is used in place: passed by value, each future would hold a copy.
            if self.live(&mut live, &mut shutdown).await {
                park::park(self, live, shutdown, guard);
            } else {
                drop(live);
                self.end_stream(guard).await;
            }
        }
    }

    /// Every path, refusals included, ends the stream politely (a WebSocket close frame,
    /// TLS close_notify, FIN) and counts its traffic in `$SYS`.
    async fn end_stream<G>(&mut self, guard: G) {
        let _ = self.io.shutdown().await;
        self.counters.flush_into(self.router.counters());
        drop(guard);
    }

    /// `Some` when the connection parks (what it needs to resume), `None` once closed.
    async fn run_to_close(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<Live> {
        // The CONNECT phase is boxed: its timer and its two futures (about 800 bytes)
        // are needed once, and inline they would size the future of the whole life.
        let connect = Box::pin(self.wait_connect(shutdown)).await?;
        // So is the rest of the CONNECT handling (authentication, takeover, CONNACK):
        // its locals would otherwise size the future next to the session's loop.
        let mut live = Box::pin(self.accept(connect, shutdown)).await?;
        // By reference, for the same reason as `shutdown`.
        let parked = self.live(&mut live, shutdown).await;
        parked.then_some(live)
    }

    /// The first packet, a CONNECT, within `connect_timeout`; `None` if the connection
    /// ends before (refused, closed, timed out, shutdown). Boxed, so `serve` holds 8
    /// bytes of it rather than 176.
    async fn wait_connect(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<Box<Connect>> {
        let connect_timeout = self.router.config().connect_timeout;
        tokio::select! {
            res = timeout(connect_timeout, self.read_connect()) => match res {
                Ok(Ok(Some(connect))) => Some(Box::new(connect)),
                Ok(Ok(None)) => None,
                Ok(Err(close)) => {
                    self.log_close(&close);
                    None
                }
                Err(_) => {
                    info!(peer = %self.peer, "closing connection: no CONNECT within {connect_timeout:?}");
                    None
                }
            },
            _ = shutdown.changed() => None,
        }
    }

    /// Reads until the first packet is complete. `Ok(None)` when the peer went away or the
    /// connection was refused with a CONNACK (already written).
    async fn read_connect(&mut self) -> Result<Option<Connect>, Close> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Connect(connect))) => return Ok(Some(connect.detached())),
                Ok(Some(other)) => {
                    return Err(Close::Protocol(format!(
                        "[MQTT-3.1.0-1] first packet is {}, not CONNECT",
                        other.name()
                    )))
                }
                Ok(None) => {}
                Err(err @ codec::Error::UnsupportedProtocolLevel { .. }) => {
                    // [MQTT-3.1.2-2]: answer 0x01, then close.
                    info!(peer = %self.peer, "refusing connection: {err}");
                    self.refuse(ConnectReturnCode::UnacceptableProtocolVersion)
                        .await;
                    return Ok(None);
                }
                // A malformed CONNECT is closed without a CONNACK.
                Err(err) => {
                    return Err(Close::Protocol(format!(
                        "[MQTT-3.1.4-1] invalid first packet: {err}"
                    )))
                }
            }
            if self.read_some().await.map_err(Close::Io)? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads what the socket has into `rbuf`; 0 at end of stream.
    async fn read_some(&mut self) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            self.rbuf.reserve(READ_CHUNK);
            match self.io.try_read_buf(&mut self.rbuf) {
                Ok(n) => {
                    self.counters.bytes_received += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a refusing CONNACK and lets the connection close [MQTT-3.2.2-5]; session
    /// present is always 0 with a non-zero code [MQTT-3.2.2-4].
    async fn refuse(&mut self, code: ConnectReturnCode) {
        let refusal = self.refusal_packet(code);
        self.refuse_with(&refusal).await;
    }

    async fn refuse_with(&mut self, refusal: &Packet) {
        self.send_packet(refusal);
        let _ = timeout(Duration::from_secs(5), self.flush()).await;
    }

    async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() || self.io.wants_write() {
            self.io.writable().await?;
            self.write_ready()?;
        }
        Ok(())
    }

    /// Answers the CONNECT: `Some` once CONNACK 0 is queued and the session attached.
    async fn accept(
        &mut self,
        mut connect: Box<Connect>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Live> {
        // A bridge (Mosquitto's `try_private`) speaks plain 3.1.1 from here on; its
        // session (below) does not get its own messages back and keeps RETAIN flags.
        let bridge = connect.protocol.is_bridge();
        connect.protocol = connect.protocol.base();
        self.protocol = connect.protocol;
        self.decoder.set_protocol(connect.protocol);
        if self.log_packets {
            let id = &connect.client_id;
            let connect = Packet::Connect(Box::new((*connect).clone()));
            debug!(target: "pyo3mq::packets", "received {} from '{id}' ({})", packet_log::Summary(&connect), self.peer);
        }
        let client_id = self.accept_client_id(&connect).await?;
        self.client_id = client_id;
        self.username = self.username_for(&connect);
        let v5 = connect.protocol == Protocol::V5;
        // A 5.0 CONNECT naming a method an enhanced authenticator implements is
        // authenticated by that exchange instead of the username and password.
        let enhanced_auth = v5 && self.enhanced_method(&connect).is_some();
        // Rare paths are boxed: their state would otherwise be part of every connection's
        // future for its whole life (idle connections should cost little memory).
        if enhanced_auth {
            if !Box::pin(self.enhanced_login(&connect, shutdown)).await {
                return None;
            }
        } else {
            let decision = Box::pin(self.authenticate(&connect)).await;
            if decision != AuthDecision::Allow {
                self.router.counters().auth_failed();
                Box::pin(self.refuse_login(&connect, decision)).await;
                return None;
            }
        }
        let refuse_v5 = v5 && !enhanced_auth;
        if let Some(reason) = refuse_v5
            .then(|| self.refuse_v5_connect(&connect))
            .flatten()
        {
            let refusal = Packet::ConnAckV5(codec::ConnAckV5 {
                session_present: false,
                reason,
                properties: None,
            });
            self.refuse_with(&refusal).await;
            return None;
        }

        // Dropped on every way out of here: only then may a connection taking over this
        // client id proceed.
        let gone = GoneOnDrop(Arc::default());
        let handle = ConnHandle {
            conn_id: self.conn_id,
            takeover: gone.0.clone(),
        };
        let Some((session, session_present)) = Box::pin(self.take_session(&connect, handle)).await
        else {
            self.refuse(ConnectReturnCode::ServerUnavailable).await;
            return None;
        };
        session.set_bridge(bridge);
        self.apply_receive_maximum(&connect, &session);
        // The username (a certificate's Common Name with use_identity_as_username) is
        // what an operator searches the log for; `-` for a client that sent none.
        let username = self
            .username
            .as_deref()
            .map_or_else(|| "-".to_string(), |u| format!("{u:?}"));
        info!(
            client_id = %self.client_id, peer = %self.peer, username = %username,
            protocol = ?connect.protocol, clean_session = connect.clean_session,
            keep_alive = connect.keep_alive, session_present, bridge, "client connected"
        );
        if v5 {
            self.out.set_v5();
            self.start_v5_flow(&connect);
            self.connack_v5(&connect, session_present);
        } else {
            // 3.1 CONNACKs have no session-present flag (checklist part 2, item 4).
            self.send_packet(&Packet::ConnAck(ConnAck {
                session_present: session_present && connect.protocol == Protocol::V311,
                code: ConnectReturnCode::Accepted,
            }));
        }
        self.router.emit(|| Event::Connected {
            client: self.client_info(),
            peer: self.peer,
            clean_session: connect.clean_session,
            session_present,
        });
        // A will still waiting out its delay is cancelled or published now [MQTT-3.1.3-9].
        self.router
            .wills()
            .on_connect(&self.client_id, session_present);
        if session_present {
            let resend = session.state.lock().resend_on_resume();
            for outgoing in resend {
                self.put_outgoing(outgoing, &session);
            }
        }

        let keep_alive = if v5 {
            self.keep_alive_v5(&connect).0
        } else {
            connect.keep_alive
        };
        // After CONNACK only a will is still needed: a CONNECT without one is dropped
        // here instead of being held for the connection's life.
        let will = connect.will.is_some().then_some(connect);
        let live = Live {
            session,
            gone,
            will,
            keep_alive,
            v5,
            deadline: keepalive_limit(keep_alive).map(|limit| Instant::now() + limit),
        };
        Some(live)
    }

    /// Serves an attached session until the connection closes (then publishes the will
    /// and detaches: `false`) or parks (`true`: `live` is what it needs to resume).
    async fn live(&mut self, live: &mut Live, shutdown: &mut watch::Receiver<bool>) -> bool {
        let served = self
            .serve_session(
                &live.session,
                live.keep_alive,
                &mut live.deadline,
                &live.gone.0.kick,
                shutdown,
            )
            .await;
        let close = match served {
            Served::Close(close) => close,
            Served::Park => return true,
        };
        let Live {
            session, will, v5, ..
        } = &*live;
        self.log_close(&close);
        if *v5 {
            Box::pin(self.send_disconnect_v5(&close)).await;
        }
        let reason = close.reason();
        match close {
            Close::Disconnect => {
                // [MQTT-3.14.4-3]: the will is discarded; flush what was acknowledged.
                let _ = timeout(Duration::from_secs(1), self.flush()).await;
            }
            Close::Shutdown => {
                let _ = timeout(Duration::from_secs(1), self.flush()).await;
                if let Some(connect) = will {
                    Box::pin(self.publish_will(connect)).await;
                }
            }
            // The will stays in the cluster's record: published by the node that takes
            // this one for dead, or by this one once it is back (liveness.rs).
            Close::Fenced => self.cluster_fenced_close(),
            _ => {
                if let Some(connect) = will {
                    Box::pin(self.publish_or_delay_will(connect, session)).await;
                }
            }
        }
        Box::pin(self.cluster_closed(will.as_deref(), session, &close)).await;
        self.router.detach(session, self.conn_id);
        self.router.emit(|| Event::Disconnected {
            client_id: self.client_id.clone(),
            reason,
            reason_code: self.v5_reason.map(|code| code.0),
        });
        // The caller drops `live` (its `gone`) right after: only then may a connection
        // taking over this client id proceed.
        false
    }

    /// Attaches to the client's session, first closing any connection that holds it
    /// [MQTT-3.1.4-2]: the old connection publishes its will and detaches before this one
    /// sends CONNACK.
    async fn take_session(
        &mut self,
        connect: &Connect,
        handle: ConnHandle,
    ) -> Option<(Arc<Session>, bool)> {
        if let Some(cluster) = self.router.cluster().cloned() {
            // Cluster mode: the client's session on another node ends first (its
            // connection there closed), and a persistent one moves here.
            if !cluster.admits(&self.client_id) {
                return None;
            }
            let claim = Box::pin(self.cluster_claim(connect)).await;
            let claimed =
                Box::pin(cluster.claim_session(&self.router, &self.client_id, claim)).await;
            if !claimed {
                return None; // CONNACK 0x03, logged by the cluster
            }
        }
        for attempt in 1..=TAKEOVER_ATTEMPTS {
            let attach = if connect.protocol == Protocol::V5 {
                self.attach_v5(connect, handle.clone())
            } else {
                self.router
                    .attach(&self.client_id, connect.clean_session, handle.clone())
            };
            match attach {
                Attach::Attached {
                    session,
                    session_present,
                } => {
                    if Box::pin(self.cluster_lost_race(&session)).await {
                        return None;
                    }
                    return Some((session, session_present));
                }
                // Out of attempts (CONNECTs for this client id keep coming): the
                // connection holding the session now keeps it, rather than being closed
                // for one that then gives up, which would leave none.
                Attach::Busy(_) if attempt == TAKEOVER_ATTEMPTS => break,
                Attach::Busy(old) => {
                    info!(client_id = %self.client_id, "session taken over by a new connection");
                    old.takeover.kick_now();
                    let _ = timeout(Duration::from_secs(5), old.takeover.gone()).await;
                }
            }
        }
        warn!(client_id = %self.client_id, "could not take over the session from its connection");
        None
    }

    /// Writes what the socket takes now. The iovec array lives only in this synchronous
    /// call, not in the connection's future, which stays small for idle connections.
    fn write_ready(&mut self) -> io::Result<()> {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = self.out.io_slices(&mut iov);
        match self.io.try_write_vectored(&iov[..n]) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                self.out.advance(written);
                self.counters.bytes_sent += written as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Moves sendable messages from the session queue into the write buffer, a batch per
    /// lock so publishers appending to the queue are not held up by encoding.
    fn pump(&mut self, session: &Session) {
        // The batch vector is this worker thread's, not the connection's: kept per
        // connection it held 64 slots (2 KiB) for life once any message had been sent.
        let mut batch = PUMP_BATCH_VEC.try_with(Cell::take).unwrap_or_default();
        while self.out.len() < WRITE_HIGH_WATER {
            {
                let mut state = session.state.lock();
                while batch.len() < PUMP_BATCH {
                    match state.next_outgoing() {
                        Some(outgoing) => batch.push(outgoing),
                        None => break,
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            for outgoing in batch.drain(..) {
                self.put_outgoing(outgoing, session);
            }
        }
        let _ = PUMP_BATCH_VEC.try_with(|spare| spare.set(batch));
    }

    fn put_outgoing(&mut self, outgoing: Outgoing, session: &Session) {
        match outgoing {
            Outgoing::Publish { item, pkid, dup } => {
                if self.log_packets {
                    let line = packet_log::Outgoing {
                        item: &item,
                        pkid,
                        dup,
                    };
                    debug!(target: "pyo3mq::packets", "sending {line} to '{}'", self.client_id);
                }
                match self.out.put_publish(&item, pkid, dup) {
                    Ok(()) => {
                        let totals = self.router.counters();
                        self.counters.sent(item.qos, item.msg.payload.len(), totals);
                    }
                    Err(unsent) => self.publish_unsent(&unsent, &item, pkid, session),
                }
            }
            Outgoing::PubRel(pkid) => self.send_packet(&Packet::PubRel(pkid)),
        }
    }

    /// Queues a packet the broker sends, logging it when packets are logged.
    pub(super) fn send_packet(&mut self, packet: &Packet) {
        if let Some(stripped) = self.without_problem_info(packet) {
            return self.send_packet(&stripped);
        }
        if self.log_packets {
            debug!(target: "pyo3mq::packets", "sending {} to '{}'", packet_log::Summary(packet), self.client_id);
        }
        self.out.put_packet(packet);
    }

    fn log_close(&self, close: &Close) {
        let client_id = &self.client_id;
        let peer = self.peer;
        match close {
            Close::Disconnect => info!(%client_id, %peer, "client disconnected"),
            Close::DisconnectWithWill => {
                info!(%client_id, %peer, "client disconnected, asking for its will (0x04)")
            }
            Close::PeerClosed => info!(%client_id, %peer, "connection closed by peer"),
            Close::KeepAlive => {
                info!(%client_id, %peer, "closing connection: [MQTT-3.1.2-24] keepalive expired")
            }
            Close::Takeover => {
                info!(%client_id, %peer, "closing connection: [MQTT-3.1.4-2] client id taken over")
            }
            Close::Shutdown => info!(%client_id, %peer, "closing connection: broker shutting down"),
            Close::Fenced => {
                warn!(%client_id, %peer, "closing connection: this node is fenced off the cluster (cut off from NATS)")
            }
            Close::Protocol(reason) => {
                warn!(%client_id, %peer, "closing connection: {reason}")
            }
            Close::Io(err) => info!(%client_id, %peer, "connection lost: {err}"),
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Answers a client over `max_connections` with CONNACK 0x03 (server unavailable).
pub async fn refuse_busy(stream: TcpStream, peer: SocketAddr, max_packet_size: usize) {
    let (mut reader, mut writer) = stream.into_split();
    let decoder = Decoder::new(max_packet_size);
    let mut buf = BytesMut::with_capacity(1024);
    let got_connect = timeout(Duration::from_secs(5), async {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Packet::Connect(_))) => return true,
                Ok(None) => {}
                _ => return false,
            }
            match tokio::io::AsyncReadExt::read_buf(&mut reader, &mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    })
    .await;
    if got_connect == Ok(true) {
        let mut out = BytesMut::new();
        let refusal = Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServerUnavailable,
        });
        if refusal.encode(&mut out).is_ok() {
            let _ = writer.write_all(&out).await;
        }
    }
    warn!(%peer, "refused connection: max_connections reached");
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::broker::router::Router;

    /// A `Connection` on an accepted loopback socket (and the client's end, to keep
    /// open), with a default router.
    pub(super) async fn accepted() -> (super::Connection, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let router = Arc::new(Router::new(
            crate::broker::config::Config::default(),
            crate::broker::hooks::Hooks::default(),
        ));
        (super::Connection::new(router, stream, peer), client)
    }

    /// Every connection's task holds this future for its whole life, so its size is
    /// memory per idle connection (benches/README.md, "idle connections"). An iovec
    /// array or a rarely used path held across an await once made it 2.5 KiB.
    #[tokio::test]
    async fn connection_future_stays_small() {
        let (conn, _client) = accepted().await;
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let future = conn.run(rx);
        let size = std::mem::size_of_val(&future);
        // The parts, for benches/README.md's "Idle connection breakdown".
        println!(
            "connection future: {size} bytes; Connection {}, OutBuf {}, Session {}, \
             SessionState {}, Takeover {}, MatchScratch {}, LocalCounters {}",
            std::mem::size_of::<super::Connection>(),
            std::mem::size_of::<super::OutBuf>(),
            std::mem::size_of::<crate::broker::router::Session>(),
            std::mem::size_of::<crate::broker::session::SessionState>(),
            std::mem::size_of::<crate::broker::router::Takeover>(),
            std::mem::size_of::<crate::broker::router::MatchScratch>(),
            std::mem::size_of::<crate::broker::metrics::LocalCounters>(),
        );
        assert!(size <= 1400, "the connection future grew to {size} bytes");
    }
}
