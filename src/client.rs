//! The MQTT 3.1/3.1.1 client core: protocol state and socket I/O on tokio, no Python.
//!
//! One [`Client`] is one logical connection (with optional automatic reconnect). Its state
//! lives in a [`State`] behind a short-held mutex that three parties touch:
//!
//! - the caller's thread (Python's event loop thread, through `client_bindings.rs`), which
//!   encodes outgoing packets straight into the write buffer: a QoS 0 publish is one
//!   `memcpy` under the lock and no allocation, and needs no thread hop;
//! - the connection task on the client runtime, whose reader decodes and handles whole
//!   batches of packets per lock and whose writer swaps the write buffer out and writes it
//!   with one syscall per batch;
//! - the keepalive timer.
//!
//! Results travel back as *events* (completions, state changes, messages) queued in the
//! state. When the first event of a batch is queued the task writes one byte to a wake
//! socket whose other end the asyncio loop watches; the loop then drains every queued event
//! with one call. Tokio threads therefore never touch Python, and N acknowledgements that
//! arrive together cost Python one wake-up, not N. The asyncio side does the same for its
//! own self-pipe in `call_soon_threadsafe`; doing it here lets a batch cross without any
//! thread other than the loop's ever taking the GIL.
//!
//! Every queue is bounded: the write buffer plus the not-yet-windowed publishes by
//! `max_buffered` bytes (a full buffer returns [`Submitted::Full`] and a "room" event
//! follows when it has drained), the inflight window by `max_inflight`, and received
//! messages by `max_incoming` (when full the reader stops reading the socket, which is
//! TCP back-pressure on the server).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::{
    self, encode_publish_header, ConnectReturnCode, Decoder, LastWill, Packet, Protocol, QoS,
    SubscribeReturnCode,
};
use crate::topic as topics;

/// Bytes read from the socket per `read` call at most (the buffer grows in these steps).
const READ_CHUNK: usize = 64 * 1024;
/// Bookkeeping bytes charged per publish that waits for the inflight window.
const PENDING_OVERHEAD: usize = 64;

// ---------------------------------------------------------------------------------------
// Options, errors, events
// ---------------------------------------------------------------------------------------

/// How to reconnect after a connection is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// Delay before the first attempt; it doubles per failed attempt.
    pub initial_delay: Duration,
    /// Cap of the delay.
    pub max_delay: Duration,
    /// Attempts per outage before the client gives up and closes; `None` = forever.
    pub max_attempts: Option<u32>,
}

/// Everything a client needs to connect, plus its limits.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<LastWill>,
    pub protocol: Protocol,
    /// TCP connect plus CONNACK, per attempt; also bounds a graceful disconnect.
    pub connect_timeout: Duration,
    /// Outgoing QoS 1/2 publishes sent and not yet acknowledged (1-65535).
    pub max_inflight: usize,
    /// Bytes of encoded packets plus publishes waiting for the window, before publishing
    /// reports [`Submitted::Full`].
    pub max_buffered: usize,
    /// Received messages not yet taken by the application.
    pub max_incoming: usize,
    /// Largest packet accepted from the server, fixed header included.
    pub max_packet_size: usize,
    pub reconnect: Option<Reconnect>,
}

impl Options {
    /// Checks the options and fills in a client id for MQTT 3.1, which requires one.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("hostname must not be empty".into());
        }
        if self.client_id.len() > codec::MAX_STRING_LEN {
            return Err("client_id is longer than 65,535 bytes".into());
        }
        if self.client_id.is_empty() {
            if !self.clean_session {
                return Err(
                    "[MQTT-3.1.3-7] a client with an empty client_id must use clean_session=True"
                        .into(),
                );
            }
            if self.protocol == Protocol::V31 {
                // 3.1 requires 1-23 characters; 7 + 16 = 23.
                self.client_id = format!("pyo3mq-{:016x}", random_u64());
            }
        }
        if self.password.is_some() && self.username.is_none() {
            return Err("[MQTT-3.1.2-22] a password needs a username".into());
        }
        if let Some(will) = &self.will {
            topics::validate_topic_name(&will.topic).map_err(|e| format!("will topic: {e}"))?;
            if will.payload.len() > codec::MAX_STRING_LEN {
                return Err("will payload is longer than 65,535 bytes".into());
            }
        }
        if !(1..=65_535).contains(&self.max_inflight) {
            return Err("max_inflight must be between 1 and 65535".into());
        }
        if self.max_buffered == 0 || self.max_incoming == 0 {
            return Err("max_buffered_bytes and max_queued_incoming must be positive".into());
        }
        if self.max_packet_size < 2 {
            return Err("max_packet_size must be at least 2".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("timeout must be positive".into());
        }
        if let Some(r) = &self.reconnect {
            if r.initial_delay > r.max_delay {
                return Err("reconnect initial_delay must not exceed max_delay".into());
            }
        }
        Ok(())
    }

    fn connect_packet(&self) -> Packet {
        Packet::Connect(codec::Connect {
            protocol: self.protocol,
            clean_session: self.clean_session,
            keep_alive: self.keep_alive,
            client_id: ByteString::from(self.client_id.as_str()),
            will: self.will.clone(),
            username: self.username.as_deref().map(ByteString::from),
            password: self.password.clone(),
        })
    }
}

/// Why a connection (or the whole client) ended, or why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// CONNACK with a non-zero return code.
    Refused(ConnectReturnCode),
    /// The server sent a malformed packet or broke the protocol; the connection was closed.
    Protocol(String),
    /// The TCP connection could not be made.
    ConnectFailed(String),
    /// The connection broke (reset, EOF, write error).
    ConnectionLost(String),
    /// No CONNACK in time, or no PINGRESP in time (the server vanished).
    Timeout(String),
    /// The client was closed by its user.
    Closed,
}

impl ClientError {
    /// Stable number of the variant, for the bindings.
    pub fn kind(&self) -> u8 {
        match self {
            ClientError::Refused(_) => 1,
            ClientError::Protocol(_) => 2,
            ClientError::ConnectFailed(_) => 3,
            ClientError::ConnectionLost(_) => 4,
            ClientError::Timeout(_) => 5,
            ClientError::Closed => 6,
        }
    }

    /// The CONNACK return code of a refusal, else 0.
    pub fn code(&self) -> u8 {
        match self {
            ClientError::Refused(code) => *code as u8,
            _ => 0,
        }
    }
}

fn refusal_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Accepted => "accepted",
        ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::IdentifierRejected => "identifier rejected",
        ConnectReturnCode::ServerUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused(code) => write!(
                f,
                "connection refused: CONNACK return code {} ({})",
                *code as u8,
                refusal_reason(*code)
            ),
            ClientError::Protocol(msg) => {
                write!(
                    f,
                    "protocol error from the server, connection closed: {msg}"
                )
            }
            ClientError::ConnectFailed(msg) => write!(f, "could not connect: {msg}"),
            ClientError::ConnectionLost(msg) => write!(f, "connection lost: {msg}"),
            ClientError::Timeout(msg) => f.write_str(msg),
            ClientError::Closed => f.write_str("the client is closed"),
        }
    }
}

impl std::error::Error for ClientError {}

/// The connection's state as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Not connected yet (before the first CONNACK).
    Connecting = 0,
    Connected = 1,
    /// The connection was lost; reconnecting.
    Disconnected = 2,
    /// For good: closed by the user, or lost without (or beyond) reconnect.
    Closed = 3,
}

/// A state transition, reported in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub state: ConnState,
    pub session_present: bool,
    pub error: Option<ClientError>,
}

/// How a request identified by a token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Publish completed (acknowledged / PUBCOMP), unsubscribe acknowledged, disconnected.
    Done,
    /// CONNACK accepted; carries the session present flag.
    Connected(bool),
    /// SUBACK return codes (0, 1, 2 or 0x80), one per filter.
    Granted(Vec<u8>),
    Failed(ClientError),
}

/// A message received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
}

/// What a submitted publish or request became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// QoS 0: handed over (in the write buffer).
    Sent,
    /// Completion will be reported with this token.
    Token(u64),
    /// The write buffer is full: try again after the next "room" event.
    Full,
    /// The client is not started or is closed.
    Closed,
}

/// Everything queued for the application since the last drain.
#[derive(Debug, Default)]
pub struct Drained {
    pub completions: Vec<(u64, Outcome)>,
    pub states: Vec<StateChange>,
    pub messages: Vec<Incoming>,
    /// The write buffer drained after a [`Submitted::Full`]: publishing can resume.
    pub room: bool,
}

// ---------------------------------------------------------------------------------------
// The runtime
// ---------------------------------------------------------------------------------------

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

/// The process-wide runtime shared by all clients, built on first use (never at import).
pub fn runtime() -> io::Result<&'static Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let _guard = RUNTIME_INIT.lock();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    // One worker by default: a client's I/O is light, and a second worker mostly adds
    // futex wake-ups and work stealing between the reader and writer of one connection
    // (measured: no throughput gain, more CPU per message). PYO3MQ_CLIENT_THREADS
    // raises it for processes with many busy clients.
    let workers = std::env::var("PYO3MQ_CLIENT_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("pyo3mq-client")
        .enable_all()
        .build()?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

// ---------------------------------------------------------------------------------------
// The wake socket
// ---------------------------------------------------------------------------------------

#[cfg(unix)]
type PipeEnd = std::os::unix::net::UnixStream;
#[cfg(not(unix))]
type PipeEnd = std::net::TcpStream;

#[cfg(unix)]
fn pipe_pair() -> io::Result<(PipeEnd, PipeEnd)> {
    PipeEnd::pair()
}

#[cfg(not(unix))]
fn pipe_pair() -> io::Result<(PipeEnd, PipeEnd)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = PipeEnd::connect(listener.local_addr()?)?;
    let (b, _) = listener.accept()?;
    Ok((a, b))
}

#[cfg(unix)]
fn raw_handle(end: &PipeEnd) -> i64 {
    use std::os::fd::AsRawFd;
    i64::from(end.as_raw_fd())
}

#[cfg(windows)]
fn raw_handle(end: &PipeEnd) -> i64 {
    use std::os::windows::io::AsRawSocket;
    end.as_raw_socket() as i64
}

#[cfg(not(any(unix, windows)))]
fn raw_handle(_end: &PipeEnd) -> i64 {
    -1
}

/// A socket pair: tokio tasks write one byte to wake the application's event loop, which
/// watches the other end. `pending` coalesces wakes: at most one byte is in flight until
/// the application drains.
struct WakePipe {
    pending: AtomicBool,
    tx: PipeEnd,
    rx: PipeEnd,
}

impl WakePipe {
    fn new() -> io::Result<WakePipe> {
        let (tx, rx) = pipe_pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(WakePipe {
            pending: AtomicBool::new(false),
            tx,
            rx,
        })
    }

    fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // WouldBlock means bytes are already waiting: the loop will wake anyway.
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// Called before draining: any event queued after this wakes the loop again.
    ///
    /// The byte is read *before* the flag is cleared. The other order loses wakes: a
    /// `wake()` landing between the two would set the flag and write a byte that the read
    /// then swallows, leaving the flag set with no byte in the pipe.
    fn reset(&self) {
        let mut sink = [0u8; 64];
        while matches!((&self.rx).read(&mut sink), Ok(n) if n > 0) {}
        self.pending.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// Protocol state (pure: no I/O, no clock reads)
// ---------------------------------------------------------------------------------------

/// Packet identifiers in use (outgoing publishes and SUBSCRIBE/UNSUBSCRIBE) [MQTT-2.3.1-2].
struct PacketIds {
    bits: Box<[u64]>,
    used: usize,
    next: u16,
}

impl PacketIds {
    fn new() -> PacketIds {
        PacketIds {
            bits: vec![0u64; 1024].into_boxed_slice(),
            used: 0,
            next: 1,
        }
    }

    fn slot(id: u16) -> (usize, u64) {
        (usize::from(id >> 6), 1u64 << (id & 63))
    }

    fn is_used(&self, id: u16) -> bool {
        let (i, bit) = Self::slot(id);
        self.bits.get(i).is_some_and(|w| w & bit != 0)
    }

    fn alloc(&mut self) -> Option<u16> {
        if self.used >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            if !self.is_used(id) {
                let (i, bit) = Self::slot(id);
                if let Some(w) = self.bits.get_mut(i) {
                    *w |= bit;
                }
                self.used += 1;
                return Some(id);
            }
        }
    }

    fn free(&mut self, id: u16) {
        if self.is_used(id) {
            let (i, bit) = Self::slot(id);
            if let Some(w) = self.bits.get_mut(i) {
                *w &= !bit;
            }
            self.used -= 1;
        }
    }

    fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.used = 0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be sent), PUBACK / PUBREC awaited.
    AwaitAck,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitComp,
}

/// An outgoing QoS 1/2 publish holding a packet id.
struct Flight {
    token: u64,
    pkid: u16,
    qos: QoS,
    retain: bool,
    topic: ByteString,
    payload: Bytes,
    stage: Stage,
    /// Written to some connection already: a resend carries DUP=1.
    sent: bool,
}

/// An outgoing QoS 1/2 publish waiting for room in the inflight window.
struct PendingPublish {
    token: u64,
    qos: QoS,
    retain: bool,
    topic: ByteString,
    payload: Bytes,
}

impl PendingPublish {
    fn cost(&self) -> usize {
        self.topic.len() + self.payload.len() + PENDING_OVERHEAD
    }
}

enum Request {
    Subscribe {
        token: u64,
        filters: Vec<(ByteString, QoS)>,
    },
    Unsubscribe {
        token: u64,
        filters: Vec<ByteString>,
    },
    /// Internal: restoring subscriptions on a connection without a session.
    Resubscribe,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_inflight: usize,
    max_buffered: usize,
    max_incoming: usize,
    clean_session: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Signals {
    writer: bool,
    reader: bool,
    app: bool,
}

struct State {
    limits: Limits,
    status: ConnState,
    /// `connect()` was called (a connection task exists).
    started: bool,
    ever_connected: bool,
    session_present: bool,
    last_error: Option<ClientError>,
    /// Tokens of `disconnect()` calls; non-empty means a close was requested.
    close_tokens: Vec<u64>,
    close_requested: bool,
    next_token: u64,

    /// Encoded packets for the current connection, not yet taken by the writer.
    out: BytesMut,
    writer_waiting: bool,
    reader_waiting: bool,
    last_read: Instant,
    last_write: Instant,
    ping_outstanding: Option<Instant>,

    ids: PacketIds,
    /// Outgoing QoS 1/2 publishes holding an id, in send (and resend) order.
    inflight: VecDeque<Flight>,
    pending: VecDeque<PendingPublish>,
    pending_bytes: usize,
    requests: HashMap<u16, Request>,
    /// Filter -> requested QoS, restored when a connection comes up without a session.
    subscriptions: BTreeMap<ByteString, QoS>,
    /// Incoming QoS 2 ids that got PUBREC and not yet PUBREL [MQTT-4.3.3-2].
    inbound_qos2: HashSet<u16>,

    incoming: VecDeque<Incoming>,
    completions: Vec<(u64, Outcome)>,
    states: Vec<StateChange>,
    room_wanted: bool,
    room: bool,
    /// An event was queued since the last wake.
    dirty: bool,
}

fn encode_publish(
    dst: &mut BytesMut,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    payload: &[u8],
) -> Result<(), codec::Error> {
    encode_publish_header(dst, topic, qos, retain, dup, pkid, payload.len())?;
    dst.extend_from_slice(payload);
    Ok(())
}

impl State {
    fn new(limits: Limits, now: Instant) -> State {
        State {
            limits,
            status: ConnState::Connecting,
            started: false,
            ever_connected: false,
            session_present: false,
            last_error: None,
            close_tokens: Vec::new(),
            close_requested: false,
            next_token: 1,
            out: BytesMut::with_capacity(16 * 1024),
            writer_waiting: false,
            reader_waiting: false,
            last_read: now,
            last_write: now,
            ping_outstanding: None,
            ids: PacketIds::new(),
            inflight: VecDeque::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            requests: HashMap::new(),
            subscriptions: BTreeMap::new(),
            inbound_qos2: HashSet::new(),
            incoming: VecDeque::new(),
            completions: Vec::new(),
            states: Vec::new(),
            room_wanted: false,
            room: false,
            dirty: false,
        }
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn complete(&mut self, token: u64, outcome: Outcome) {
        if token != 0 {
            self.completions.push((token, outcome));
            self.dirty = true;
        }
    }

    fn push_state(&mut self, state: ConnState, error: Option<ClientError>) {
        self.states.push(StateChange {
            state,
            session_present: self.session_present,
            error,
        });
        self.dirty = true;
    }

    /// What must be woken now that the lock is about to be released.
    fn take_signals(&mut self) -> Signals {
        let writer = self.writer_waiting && (!self.out.is_empty() || self.close_requested);
        if writer {
            self.writer_waiting = false;
        }
        let reader = self.reader_waiting && self.incoming.len() < self.limits.max_incoming;
        if reader {
            self.reader_waiting = false;
        }
        Signals {
            writer,
            reader,
            app: std::mem::take(&mut self.dirty),
        }
    }

    fn accepting(&self) -> bool {
        self.started && self.status != ConnState::Closed && !self.close_requested
    }

    fn buffered(&self) -> usize {
        self.out.len() + self.pending_bytes
    }

    fn check_room(&mut self) {
        if self.room_wanted && self.buffered() <= self.limits.max_buffered / 2 {
            self.room_wanted = false;
            self.room = true;
            self.dirty = true;
        }
    }

    fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Submitted, codec::Error> {
        if !self.accepting() {
            return Ok(Submitted::Closed);
        }
        if self.buffered() >= self.limits.max_buffered {
            self.room_wanted = true;
            return Ok(Submitted::Full);
        }
        if qos == QoS::AtMostOnce && self.pending.is_empty() {
            // Also while reconnecting: the buffer is flushed once the next CONNACK arrives.
            encode_publish(&mut self.out, topic, qos, retain, false, None, payload)?;
            return Ok(Submitted::Sent);
        }
        // QoS 0 behind publishes waiting for the window waits too, so that messages
        // leave in the order they were published.
        let token = if qos == QoS::AtMostOnce {
            0
        } else {
            self.new_token()
        };
        let item = PendingPublish {
            token,
            qos,
            retain,
            topic: ByteString::from(topic),
            payload: Bytes::copy_from_slice(payload),
        };
        if self.pending.is_empty() && self.inflight.len() < self.limits.max_inflight {
            if let Some(pkid) = self.ids.alloc() {
                self.start_flight(item, pkid)?;
                return Ok(Submitted::Token(token));
            }
        }
        self.pending_bytes += item.cost();
        self.pending.push_back(item);
        Ok(if token == 0 {
            Submitted::Sent
        } else {
            Submitted::Token(token)
        })
    }

    fn start_flight(&mut self, p: PendingPublish, pkid: u16) -> Result<(), codec::Error> {
        let sent = self.status == ConnState::Connected;
        if sent {
            encode_publish(
                &mut self.out,
                &p.topic,
                p.qos,
                p.retain,
                false,
                Some(pkid),
                &p.payload,
            )?;
        }
        self.inflight.push_back(Flight {
            token: p.token,
            pkid,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic,
            payload: p.payload,
            stage: Stage::AwaitAck,
            sent,
        });
        Ok(())
    }

    /// Moves waiting publishes into the window (QoS 0 ones straight into the write
    /// buffer) as far as the window allows, in order.
    fn fill_window(&mut self) -> Result<(), codec::Error> {
        while let Some(front) = self.pending.front() {
            let pkid = if front.qos == QoS::AtMostOnce {
                None
            } else if self.inflight.len() < self.limits.max_inflight {
                match self.ids.alloc() {
                    Some(id) => Some(id),
                    None => break,
                }
            } else {
                break;
            };
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(p.cost());
            match pkid {
                Some(pkid) => self.start_flight(p, pkid)?,
                None => encode_publish(
                    &mut self.out,
                    &p.topic,
                    p.qos,
                    p.retain,
                    false,
                    None,
                    &p.payload,
                )?,
            }
        }
        self.check_room();
        Ok(())
    }

    fn subscribe(&mut self, filters: Vec<(ByteString, QoS)>) -> Result<Submitted, codec::Error> {
        let packet_filters = filters.clone();
        self.request(
            |pkid| {
                Packet::Subscribe(codec::Subscribe {
                    pkid,
                    filters: packet_filters,
                })
            },
            |token| Request::Subscribe { token, filters },
        )
    }

    fn unsubscribe(&mut self, filters: Vec<ByteString>) -> Result<Submitted, codec::Error> {
        let packet_filters = filters.clone();
        self.request(
            |pkid| {
                Packet::Unsubscribe(codec::Unsubscribe {
                    pkid,
                    filters: packet_filters,
                })
            },
            |token| Request::Unsubscribe { token, filters },
        )
    }

    /// Sends a SUBSCRIBE or UNSUBSCRIBE under a fresh packet id and remembers what its
    /// acknowledgement completes.
    fn request(
        &mut self,
        packet: impl FnOnce(u16) -> Packet,
        request: impl FnOnce(u64) -> Request,
    ) -> Result<Submitted, codec::Error> {
        if !self.accepting() {
            return Ok(Submitted::Closed);
        }
        let Some(pkid) = self.ids.alloc() else {
            self.room_wanted = true;
            return Ok(Submitted::Full);
        };
        if let Err(e) = packet(pkid).encode(&mut self.out) {
            self.ids.free(pkid);
            return Err(e);
        }
        let token = self.new_token();
        self.requests.insert(pkid, request(token));
        Ok(Submitted::Token(token))
    }

    fn encode(&mut self, packet: &Packet) -> Result<(), ClientError> {
        packet
            .encode(&mut self.out)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Handles one packet from the server.
    fn on_packet(&mut self, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(p) => {
                let pkid = p.pkid.unwrap_or(0);
                let fresh = match p.qos {
                    QoS::AtMostOnce => true,
                    QoS::AtLeastOnce => {
                        self.encode(&Packet::PubAck(pkid))?;
                        true
                    }
                    QoS::ExactlyOnce => {
                        self.encode(&Packet::PubRec(pkid))?;
                        // A resent PUBLISH whose PUBREL has not come is not delivered twice.
                        self.inbound_qos2.insert(pkid)
                    }
                };
                if fresh {
                    self.incoming.push_back(Incoming {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos,
                        retain: p.retain,
                        dup: p.dup,
                        pkid,
                    });
                    self.dirty = true;
                }
            }
            Packet::PubAck(id) => {
                if let Some(i) = self.inflight.iter().position(|f| {
                    f.pkid == id && f.qos == QoS::AtLeastOnce && f.stage == Stage::AwaitAck
                }) {
                    self.finish_flight(i);
                } else {
                    tracing::debug!(pkid = id, "client: PUBACK for an unknown packet id ignored");
                }
            }
            Packet::PubRec(id) => {
                match self
                    .inflight
                    .iter_mut()
                    .find(|f| f.pkid == id && f.qos == QoS::ExactlyOnce)
                {
                    Some(f) => {
                        f.stage = Stage::AwaitComp;
                        f.payload = Bytes::new();
                        self.encode(&Packet::PubRel(id))?;
                    }
                    None => {
                        tracing::debug!(
                            pkid = id,
                            "client: PUBREC for an unknown packet id ignored"
                        )
                    }
                }
            }
            Packet::PubRel(id) => {
                self.inbound_qos2.remove(&id);
                // Answered even for an unknown id: the PUBCOMP may have been lost.
                self.encode(&Packet::PubComp(id))?;
            }
            Packet::PubComp(id) => {
                if let Some(i) = self
                    .inflight
                    .iter()
                    .position(|f| f.pkid == id && f.stage == Stage::AwaitComp)
                {
                    self.finish_flight(i);
                } else {
                    tracing::debug!(
                        pkid = id,
                        "client: PUBCOMP for an unknown packet id ignored"
                    );
                }
            }
            Packet::SubAck(ack) => match self.requests.remove(&ack.pkid) {
                Some(Request::Subscribe { token, filters }) => {
                    self.ids.free(ack.pkid);
                    if ack.codes.len() != filters.len() {
                        return Err(ClientError::Protocol(format!(
                            "[MQTT-3.9.3-1] SUBACK has {} return codes for {} topic filters",
                            ack.codes.len(),
                            filters.len()
                        )));
                    }
                    let mut codes = Vec::with_capacity(filters.len());
                    for ((filter, qos), code) in filters.into_iter().zip(&ack.codes) {
                        match code {
                            SubscribeReturnCode::Success(granted) => {
                                self.subscriptions.insert(filter, qos);
                                codes.push(*granted as u8);
                            }
                            SubscribeReturnCode::Failure => codes.push(0x80),
                        }
                    }
                    self.complete(token, Outcome::Granted(codes));
                }
                Some(Request::Resubscribe) => {
                    self.ids.free(ack.pkid);
                    if ack.codes.contains(&SubscribeReturnCode::Failure) {
                        tracing::warn!("client: the server refused a restored subscription");
                    }
                }
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "SUBACK for packet id {} which identifies {}",
                        ack.pkid,
                        request_name(&other)
                    )));
                }
                None => {
                    tracing::debug!(pkid = ack.pkid, "client: SUBACK for an unknown id ignored")
                }
            },
            Packet::UnsubAck(id) => match self.requests.remove(&id) {
                Some(Request::Unsubscribe { token, filters }) => {
                    self.ids.free(id);
                    for f in &filters {
                        self.subscriptions.remove(f);
                    }
                    self.complete(token, Outcome::Done);
                }
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "UNSUBACK for packet id {id} which identifies {}",
                        request_name(&other)
                    )));
                }
                None => tracing::debug!(pkid = id, "client: UNSUBACK for an unknown id ignored"),
            },
            Packet::PingResp => self.ping_outstanding = None,
            Packet::ConnAck(_) => {
                return Err(ClientError::Protocol(
                    "[MQTT-3.2.0-1] a second CONNACK on the same connection".into(),
                ))
            }
            other @ (Packet::Connect(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq
            | Packet::Disconnect) => {
                return Err(ClientError::Protocol(format!(
                    "a server must not send {}",
                    other.name()
                )))
            }
        }
        Ok(())
    }

    fn finish_flight(&mut self, index: usize) {
        if let Some(f) = self.inflight.remove(index) {
            self.ids.free(f.pkid);
            self.complete(f.token, Outcome::Done);
        }
        if let Err(e) = self.fill_window() {
            tracing::error!("client: could not encode a queued publish: {e}");
        }
    }

    /// A CONNACK accepted the connection: resend what is unacknowledged, restore
    /// subscriptions if the server has no session, then let the buffer flow.
    fn on_connected(&mut self, session_present: bool, token: Option<u64>, now: Instant) {
        let resume = !self.limits.clean_session;
        if !(resume && session_present) {
            self.inbound_qos2.clear();
        }
        let mut first = BytesMut::new();
        let mut finished = Vec::new();
        for f in self.inflight.iter_mut() {
            let result = match f.stage {
                Stage::AwaitAck => {
                    // [MQTT-4.4.0-1]: same ids, DUP=1 on a resumed session. A new session
                    // gets the message again as a new one.
                    let dup = resume && f.sent;
                    f.sent = true;
                    encode_publish(
                        &mut first,
                        &f.topic,
                        f.qos,
                        f.retain,
                        dup,
                        Some(f.pkid),
                        &f.payload,
                    )
                }
                Stage::AwaitComp if resume => Packet::PubRel(f.pkid).encode(&mut first),
                // The server had the message (it sent PUBREC); a new session has no id to
                // release, so the delivery is complete from here.
                Stage::AwaitComp => {
                    finished.push(f.pkid);
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::error!("client: could not re-encode an inflight message: {e}");
            }
        }
        for pkid in finished {
            if let Some(i) = self.inflight.iter().position(|f| f.pkid == pkid) {
                if let Some(f) = self.inflight.remove(i) {
                    self.ids.free(f.pkid);
                    self.complete(f.token, Outcome::Done);
                }
            }
        }
        if !session_present && self.ever_connected && !self.subscriptions.is_empty() {
            if let Some(pkid) = self.ids.alloc() {
                let filters = self
                    .subscriptions
                    .iter()
                    .map(|(f, q)| (f.clone(), *q))
                    .collect();
                let packet = Packet::Subscribe(codec::Subscribe { pkid, filters });
                match packet.encode(&mut first) {
                    Ok(()) => {
                        self.requests.insert(pkid, Request::Resubscribe);
                    }
                    Err(e) => {
                        self.ids.free(pkid);
                        tracing::error!("client: could not restore subscriptions: {e}");
                    }
                }
            }
        }
        first.extend_from_slice(&self.out);
        self.out = first;
        self.status = ConnState::Connected;
        self.session_present = session_present;
        self.ever_connected = true;
        self.ping_outstanding = None;
        self.last_read = now;
        self.last_write = now;
        self.writer_waiting = false;
        self.reader_waiting = false;
        if let Some(token) = token {
            self.complete(token, Outcome::Connected(session_present));
        }
        self.push_state(ConnState::Connected, None);
        if let Err(e) = self.fill_window() {
            tracing::error!("client: could not encode a queued publish: {e}");
        }
    }

    /// The connection broke and a reconnect will follow.
    fn on_lost(&mut self, error: &ClientError) {
        self.status = ConnState::Disconnected;
        // Whole packets of the dead connection: QoS 0 publishes (lost, as QoS 0 may be),
        // acknowledgements (the server resends what they acknowledged) and requests
        // (failed below). QoS 1/2 publishes live on in `inflight`.
        self.out.clear();
        self.ping_outstanding = None;
        let requests: Vec<(u16, Request)> = self.requests.drain().collect();
        for (pkid, request) in requests {
            self.ids.free(pkid);
            match request {
                Request::Subscribe { token, .. } | Request::Unsubscribe { token, .. } => {
                    self.complete(token, Outcome::Failed(error.clone()));
                }
                Request::Resubscribe => {}
            }
        }
        self.push_state(ConnState::Disconnected, Some(error.clone()));
        self.check_room();
    }

    /// The client is done: fail everything still waiting.
    fn finish(&mut self, error: Option<ClientError>) {
        self.status = ConnState::Closed;
        self.out.clear();
        let failure = error.clone().unwrap_or(ClientError::Closed);
        let tokens: Vec<u64> = self
            .inflight
            .drain(..)
            .map(|f| f.token)
            .chain(self.pending.drain(..).map(|p| p.token))
            .chain(self.requests.drain().filter_map(|(_, r)| match r {
                Request::Subscribe { token, .. } | Request::Unsubscribe { token, .. } => {
                    Some(token)
                }
                Request::Resubscribe => None,
            }))
            .collect();
        for token in tokens {
            self.complete(token, Outcome::Failed(failure.clone()));
        }
        self.pending_bytes = 0;
        self.ids.clear();
        for token in std::mem::take(&mut self.close_tokens) {
            self.complete(token, Outcome::Done);
        }
        self.last_error = error.clone();
        self.push_state(ConnState::Closed, error);
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Subscribe { .. } | Request::Resubscribe => "a SUBSCRIBE",
        Request::Unsubscribe { .. } => "an UNSUBSCRIBE",
    }
}

// ---------------------------------------------------------------------------------------
// The connection task
// ---------------------------------------------------------------------------------------

struct Shared {
    opts: Options,
    connect: Packet,
    state: Mutex<State>,
    /// The write buffer has data, or a close was requested.
    writer: Notify,
    /// The application took messages: the reader may read again.
    reader: Notify,
    /// A close was requested.
    control: Notify,
    wake: WakePipe,
}

type Connection = (TcpStream, BytesMut, bool);

impl Shared {
    /// Runs `f` under the lock, then wakes whoever `f`'s changes concern, unlocked.
    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, signals) = {
            let mut st = self.state.lock();
            let result = f(&mut st);
            (result, st.take_signals())
        };
        self.signal(signals);
        result
    }

    fn signal(&self, s: Signals) {
        if s.writer {
            self.writer.notify_one();
        }
        if s.reader {
            self.reader.notify_one();
        }
        if s.app {
            self.wake.wake();
        }
    }

    fn request_close(&self, token: Option<u64>) {
        self.with_state(|st| {
            if let Some(t) = token {
                if st.status == ConnState::Closed || !st.started {
                    st.complete(t, Outcome::Done);
                    return;
                }
                st.close_tokens.push(t);
            }
            st.close_requested = true;
        });
        self.control.notify_one();
    }

    async fn wait_close(&self) {
        loop {
            if self.state.lock().close_requested {
                return;
            }
            self.control.notified().await;
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.opts.host, self.opts.port)
    }

    async fn connect_once(&self) -> Result<Connection, ClientError> {
        let attempt = async {
            let lost = |e: io::Error| ClientError::ConnectionLost(e.to_string());
            let mut stream = TcpStream::connect((self.opts.host.as_str(), self.opts.port))
                .await
                .map_err(|e| ClientError::ConnectFailed(format!("{}: {e}", self.addr())))?;
            let _ = stream.set_nodelay(true);
            let mut buf = BytesMut::new();
            self.connect
                .encode(&mut buf)
                .map_err(|e| ClientError::ConnectFailed(e.to_string()))?;
            stream.write_all(&buf).await.map_err(lost)?;
            let decoder = Decoder::new(self.opts.max_packet_size);
            let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                let decoded = decoder
                    .decode(&mut rbuf)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if let Some(packet) = decoded {
                    return match packet {
                        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => {
                            if ack.session_present && self.opts.clean_session {
                                return Err(ClientError::Protocol(
                                    "[MQTT-3.2.2-1] CONNACK has session present set in reply \
                                     to a clean session"
                                        .into(),
                                ));
                            }
                            Ok((stream, rbuf, ack.session_present))
                        }
                        Packet::ConnAck(ack) => Err(ClientError::Refused(ack.code)),
                        other => Err(ClientError::Protocol(format!(
                            "[MQTT-3.2.0-1] expected CONNACK, got {}",
                            other.name()
                        ))),
                    };
                }
                if stream.read_buf(&mut rbuf).await.map_err(lost)? == 0 {
                    return Err(ClientError::ConnectionLost(
                        "the server closed the connection before CONNACK".into(),
                    ));
                }
            }
        };
        match tokio::time::timeout(self.opts.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout(format!(
                "no CONNACK from {} within {:.1} s",
                self.addr(),
                self.opts.connect_timeout.as_secs_f64()
            ))),
        }
    }

    /// Connects, then serves connections until closed, reconnecting if configured.
    async fn run(self: Arc<Self>, token: u64) {
        let first = tokio::select! {
            r = self.connect_once() => Some(r),
            () = self.wait_close() => None,
        };
        let mut conn = match first {
            None => {
                self.with_state(|st| {
                    st.complete(token, Outcome::Failed(ClientError::Closed));
                    st.finish(None);
                });
                return;
            }
            Some(Err(e)) => {
                tracing::debug!("client {}: {e}", self.opts.client_id);
                self.with_state(|st| {
                    st.complete(token, Outcome::Failed(e.clone()));
                    st.finish(Some(e));
                });
                return;
            }
            Some(Ok(conn)) => conn,
        };
        self.with_state(|st| st.on_connected(conn.2, Some(token), Instant::now()));
        loop {
            let reason = self.serve(conn.0, conn.1).await;
            if reason == ClientError::Closed {
                self.with_state(|st| st.finish(None));
                return;
            }
            tracing::debug!("client {}: {reason}", self.opts.client_id);
            let Some(policy) = self.opts.reconnect else {
                self.with_state(|st| st.finish(Some(reason)));
                return;
            };
            self.with_state(|st| st.on_lost(&reason));
            match self.reconnect(policy, reason).await {
                Ok(c) => conn = c,
                Err(error) => {
                    self.with_state(|st| st.finish(error));
                    return;
                }
            }
            self.with_state(|st| st.on_connected(conn.2, None, Instant::now()));
        }
    }

    /// Retries with exponential backoff and jitter. `Err(None)`: closed by the user;
    /// `Err(Some(e))`: gave up (attempts exhausted or a refusal retrying cannot fix).
    async fn reconnect(
        &self,
        policy: Reconnect,
        mut last: ClientError,
    ) -> Result<Connection, Option<ClientError>> {
        let mut attempt: u32 = 0;
        loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(Some(last));
            }
            let delay = backoff(&policy, attempt);
            attempt = attempt.saturating_add(1);
            let result = tokio::select! {
                r = async {
                    tokio::time::sleep(delay).await;
                    self.connect_once().await
                } => r,
                () = self.wait_close() => return Err(None),
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(ClientError::Refused(code)) if code != ConnectReturnCode::ServerUnavailable => {
                    return Err(Some(ClientError::Refused(code)));
                }
                Err(e) => {
                    tracing::debug!(
                        "client {}: reconnect attempt {attempt} failed: {e}",
                        self.opts.client_id
                    );
                    last = e;
                }
            }
        }
    }

    /// Runs one connection until it ends; returns why. `ClientError::Closed` means the
    /// user closed it (DISCONNECT was sent).
    async fn serve(&self, stream: TcpStream, mut rbuf: BytesMut) -> ClientError {
        let (mut rd, mut wr) = stream.into_split();
        let decoder = Decoder::new(self.opts.max_packet_size);

        let reader = async {
            loop {
                let (result, paused) = {
                    let mut st = self.state.lock();
                    st.last_read = Instant::now();
                    let mut result = Ok(());
                    loop {
                        match decoder.decode(&mut rbuf) {
                            Ok(Some(packet)) => {
                                if let Err(e) = st.on_packet(packet) {
                                    result = Err(e);
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                result = Err(ClientError::Protocol(e.to_string()));
                                break;
                            }
                        }
                    }
                    let paused = st.incoming.len() >= st.limits.max_incoming;
                    if paused {
                        st.reader_waiting = true;
                    }
                    let signals = st.take_signals();
                    drop(st);
                    self.signal(signals);
                    (result, paused)
                };
                if let Err(e) = result {
                    return e;
                }
                if paused {
                    self.reader.notified().await;
                    continue;
                }
                if rbuf.capacity() - rbuf.len() < 4096 {
                    rbuf.reserve(READ_CHUNK);
                }
                match rd.read_buf(&mut rbuf).await {
                    Ok(0) => {
                        return ClientError::ConnectionLost(
                            "the server closed the connection".into(),
                        )
                    }
                    Ok(_) => {}
                    Err(e) => return ClientError::ConnectionLost(e.to_string()),
                }
            }
        };

        let writer = async {
            enum Step {
                Write,
                Close,
                Wait,
            }
            let mut spare = BytesMut::with_capacity(16 * 1024);
            loop {
                let step = {
                    let mut st = self.state.lock();
                    let step = if !st.out.is_empty() {
                        std::mem::swap(&mut st.out, &mut spare);
                        st.last_write = Instant::now();
                        st.check_room();
                        Step::Write
                    } else if st.close_requested {
                        Step::Close
                    } else {
                        st.writer_waiting = true;
                        Step::Wait
                    };
                    let signals = st.take_signals();
                    drop(st);
                    self.signal(signals);
                    step
                };
                match step {
                    Step::Write => {
                        if let Err(e) = wr.write_all(&spare).await {
                            return ClientError::ConnectionLost(e.to_string());
                        }
                        spare.clear();
                    }
                    Step::Close => {
                        let mut buf = BytesMut::new();
                        if Packet::Disconnect.encode(&mut buf).is_ok() {
                            let _ = wr.write_all(&buf).await;
                        }
                        let _ = wr.shutdown().await;
                        return ClientError::Closed;
                    }
                    Step::Wait => self.writer.notified().await,
                }
            }
        };

        let keepalive = async {
            if self.opts.keep_alive == 0 {
                return std::future::pending::<ClientError>().await;
            }
            let ka = Duration::from_secs(u64::from(self.opts.keep_alive));
            let tick = (ka / 4).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(tick).await;
                let now = Instant::now();
                let timed_out = self.with_state(|st| {
                    if st.reader_waiting {
                        // Not reading on purpose (back-pressure): a PINGRESP cannot arrive.
                        st.ping_outstanding = None;
                        return false;
                    }
                    match st.ping_outstanding {
                        Some(since) => now.saturating_duration_since(since) >= ka,
                        None => {
                            // Ping one tick early so the server sees traffic within the
                            // keepalive, and also when the server has been silent that
                            // long: that is how a vanished server is noticed.
                            let due = ka.saturating_sub(tick);
                            let idle = now.saturating_duration_since(st.last_write) >= due
                                || now.saturating_duration_since(st.last_read) >= due;
                            if idle && st.encode(&Packet::PingReq).is_ok() {
                                st.ping_outstanding = Some(now);
                            }
                            false
                        }
                    }
                });
                if timed_out {
                    return ClientError::Timeout(format!(
                        "no PINGRESP from the server within the keepalive of {} s: \
                         the server is unreachable",
                        self.opts.keep_alive
                    ));
                }
            }
        };

        // Bounds a graceful close whose writes cannot complete.
        let close_deadline = async {
            self.wait_close().await;
            tokio::time::sleep(self.opts.connect_timeout).await;
            ClientError::Closed
        };

        let reason = tokio::select! {
            e = reader => e,
            e = writer => e,
            e = keepalive => e,
            e = close_deadline => e,
        };
        if self.state.lock().close_requested {
            ClientError::Closed
        } else {
            reason
        }
    }
}

fn backoff(policy: &Reconnect, attempt: u32) -> Duration {
    let factor = 2f64.powi(i32::try_from(attempt.min(30)).unwrap_or(30));
    let base = (policy.initial_delay.as_secs_f64() * factor).min(policy.max_delay.as_secs_f64());
    // Jitter in [0.5, 1.0) of the delay, so that clients that lost the same server do not
    // all come back at the same instant.
    let jitter = 0.5 + (random_u64() >> 11) as f64 / (1u64 << 54) as f64;
    Duration::try_from_secs_f64(base * jitter).unwrap_or(policy.max_delay)
}

// ---------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------

/// An MQTT client. Dropping it closes the connection (without waiting).
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared.addr())
            .field("client_id", &self.shared.opts.client_id)
            .finish()
    }
}

/// Checks a topic name and payload size before anything is queued.
fn check_publish(topic: &str, payload_len: usize) -> Result<(), String> {
    topics::validate_topic_name(topic).map_err(|e| e.to_string())?;
    if 2 + topic.len() + 2 + payload_len > codec::MAX_REMAINING_LENGTH {
        return Err(format!(
            "payload of {payload_len} bytes is too large for an MQTT packet"
        ));
    }
    Ok(())
}

impl Client {
    /// Validates the options and prepares the client; nothing connects until [`connect`].
    ///
    /// [`connect`]: Client::connect
    pub fn new(mut opts: Options) -> Result<Client, String> {
        opts.validate()?;
        let wake = WakePipe::new().map_err(|e| format!("cannot create the wake socket: {e}"))?;
        let limits = Limits {
            max_inflight: opts.max_inflight,
            max_buffered: opts.max_buffered,
            max_incoming: opts.max_incoming,
            clean_session: opts.clean_session,
        };
        let connect = opts.connect_packet();
        Ok(Client {
            shared: Arc::new(Shared {
                opts,
                connect,
                state: Mutex::new(State::new(limits, Instant::now())),
                writer: Notify::new(),
                reader: Notify::new(),
                control: Notify::new(),
                wake,
            }),
        })
    }

    /// The descriptor (socket on Windows) the application's loop watches: readable means
    /// [`drain`](Client::drain) has something.
    pub fn wake_fd(&self) -> i64 {
        raw_handle(&self.shared.wake.rx)
    }

    pub fn client_id(&self) -> &str {
        &self.shared.opts.client_id
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// Starts connecting on the client runtime; the outcome is reported with the token.
    pub fn connect(&self) -> io::Result<u64> {
        let rt = runtime()?;
        let token = self.shared.with_state(|st| {
            if st.started {
                None
            } else {
                st.started = true;
                Some(st.new_token())
            }
        });
        let token = token.ok_or_else(|| {
            io::Error::new(io::ErrorKind::AlreadyExists, "connect() was already called")
        })?;
        rt.spawn(Arc::clone(&self.shared).run(token));
        Ok(token)
    }

    /// Publishes. QoS 0 is [`Submitted::Sent`] once encoded into the write buffer; QoS 1/2
    /// returns a token completed on PUBACK / PUBCOMP.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Submitted, String> {
        check_publish(topic, payload.len())?;
        self.shared
            .with_state(|st| st.publish(topic, payload, qos, retain))
            .map_err(|e| e.to_string())
    }

    /// Subscribes; the token completes with the SUBACK return codes.
    pub fn subscribe(&self, filters: Vec<(String, QoS)>) -> Result<Submitted, String> {
        if filters.is_empty() {
            return Err("[MQTT-3.8.3-3] subscribe needs at least one topic filter".into());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for (f, q) in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            checked.push((ByteString::from(f), q));
        }
        self.shared
            .with_state(|st| st.subscribe(checked))
            .map_err(|e| e.to_string())
    }

    /// Unsubscribes; the token completes on UNSUBACK.
    pub fn unsubscribe(&self, filters: Vec<String>) -> Result<Submitted, String> {
        if filters.is_empty() {
            return Err("[MQTT-3.10.3-2] unsubscribe needs at least one topic filter".into());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for f in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            checked.push(ByteString::from(f));
        }
        self.shared
            .with_state(|st| st.unsubscribe(checked))
            .map_err(|e| e.to_string())
    }

    /// Sends what is buffered, then DISCONNECT, and closes. The token completes when the
    /// client is closed; pending requests fail with [`ClientError::Closed`].
    pub fn disconnect(&self) -> u64 {
        let token = self.shared.with_state(|st| st.new_token());
        self.shared.request_close(Some(token));
        token
    }

    /// Takes every queued event and up to `max_messages` received messages.
    pub fn drain(&self, max_messages: usize) -> Drained {
        self.shared.wake.reset();
        self.shared.with_state(|st| {
            let n = max_messages.min(st.incoming.len());
            Drained {
                completions: std::mem::take(&mut st.completions),
                states: std::mem::take(&mut st.states),
                messages: st.incoming.drain(..n).collect(),
                room: std::mem::take(&mut st.room),
            }
        })
    }

    /// Takes up to `max` received messages.
    pub fn take_messages(&self, max: usize) -> Vec<Incoming> {
        self.shared.with_state(|st| {
            let n = max.min(st.incoming.len());
            st.incoming.drain(..n).collect()
        })
    }

    /// Received messages not yet taken.
    pub fn queued_messages(&self) -> usize {
        self.shared.state.lock().incoming.len()
    }

    pub fn state(&self) -> ConnState {
        self.shared.state.lock().status
    }

    /// A one-line summary of the internal state, for debugging.
    pub fn debug_state(&self) -> String {
        let wake_pending = self.shared.wake.pending.load(Ordering::SeqCst);
        let st = self.shared.state.lock();
        format!(
            "status={:?} wake_pending={wake_pending} completions={} inflight={} pending={} \
             out={} writer_waiting={} reader_waiting={} incoming={} room_wanted={}",
            st.status,
            st.completions.len(),
            st.inflight.len(),
            st.pending.len(),
            st.out.len(),
            st.writer_waiting,
            st.reader_waiting,
            st.incoming.len(),
            st.room_wanted
        )
    }

    /// Why the client closed, if it closed on an error.
    pub fn last_error(&self) -> Option<ClientError> {
        self.shared.state.lock().last_error.clone()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.request_close(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(max_inflight: usize, clean_session: bool) -> State {
        let mut st = State::new(
            Limits {
                max_inflight,
                max_buffered: 1 << 20,
                max_incoming: 100,
                clean_session,
            },
            Instant::now(),
        );
        st.started = true;
        st
    }

    fn written(st: &mut State) -> Vec<Packet> {
        let decoder = Decoder::new(1 << 20);
        let mut buf = st.out.split();
        let mut out = Vec::new();
        while let Some(p) = decoder.decode(&mut buf).expect("valid packets") {
            out.push(p);
        }
        out
    }

    fn token(s: Submitted) -> u64 {
        match s {
            Submitted::Token(t) => t,
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn qos0_is_encoded_at_once() {
        let mut st = state(2, true);
        st.on_connected(false, None, Instant::now());
        let _ = written(&mut st);
        let r = st.publish("a/b", b"hi", QoS::AtMostOnce, true).unwrap();
        assert_eq!(r, Submitted::Sent);
        let packets = written(&mut st);
        let [Packet::Publish(p)] = packets.as_slice() else {
            panic!("{packets:?}")
        };
        assert_eq!(
            (&*p.topic, &p.payload[..], p.retain),
            ("a/b", &b"hi"[..], true)
        );
    }

    #[test]
    fn window_holds_excess_and_acks_release_it() {
        let mut st = state(2, true);
        st.on_connected(false, None, Instant::now());
        let t: Vec<u64> = (0..3)
            .map(|i| token(st.publish("t", &[i], QoS::AtLeastOnce, false).unwrap()))
            .collect();
        let sent = written(&mut st);
        assert_eq!(sent.len(), 2, "window of 2");
        let Packet::Publish(first) = &sent[0] else {
            panic!()
        };
        st.on_packet(Packet::PubAck(first.pkid.unwrap())).unwrap();
        assert_eq!(st.completions, vec![(t[0], Outcome::Done)]);
        let next = written(&mut st);
        assert!(matches!(&next[..], [Packet::Publish(p)] if p.payload[..] == [2]));
    }

    #[test]
    fn qos0_waits_behind_qos1_waiting_for_the_window() {
        let mut st = state(1, true);
        st.on_connected(false, None, Instant::now());
        token(st.publish("t", b"1", QoS::AtLeastOnce, false).unwrap());
        token(st.publish("t", b"2", QoS::AtLeastOnce, false).unwrap());
        let r = st.publish("t", b"3", QoS::AtMostOnce, false).unwrap();
        assert_eq!(r, Submitted::Sent, "handed over, though queued");
        let sent = written(&mut st);
        assert_eq!(sent.len(), 1);
        let Packet::Publish(first) = &sent[0] else {
            panic!()
        };
        st.on_packet(Packet::PubAck(first.pkid.unwrap())).unwrap();
        let next: Vec<Vec<u8>> = written(&mut st)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.payload.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(next, vec![b"2".to_vec(), b"3".to_vec()]);
    }

    #[test]
    fn qos2_flow_and_resend_on_resume() {
        let mut st = state(4, false);
        st.on_connected(false, None, Instant::now());
        let a = token(st.publish("t", b"a", QoS::ExactlyOnce, false).unwrap());
        let _b = token(st.publish("t", b"b", QoS::ExactlyOnce, false).unwrap());
        let sent = written(&mut st);
        let ids: Vec<u16> = sent
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => p.pkid.unwrap(),
                _ => panic!(),
            })
            .collect();
        st.on_packet(Packet::PubRec(ids[0])).unwrap();
        assert_eq!(written(&mut st), vec![Packet::PubRel(ids[0])]);
        st.on_lost(&ClientError::ConnectionLost("x".into()));
        st.on_connected(true, None, Instant::now());
        let resent = written(&mut st);
        assert_eq!(resent[0], Packet::PubRel(ids[0]));
        let Packet::Publish(p) = &resent[1] else {
            panic!()
        };
        assert!(p.dup && p.pkid == Some(ids[1]));
        st.on_packet(Packet::PubComp(ids[0])).unwrap();
        assert!(st.completions.contains(&(a, Outcome::Done)));
    }

    #[test]
    fn clean_session_reconnect_sends_again_without_dup() {
        let mut st = state(4, true);
        st.on_connected(false, None, Instant::now());
        token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let _ = written(&mut st);
        st.on_lost(&ClientError::ConnectionLost("x".into()));
        st.on_connected(false, None, Instant::now());
        let resent = written(&mut st);
        assert!(matches!(&resent[..], [Packet::Publish(p)] if !p.dup));
    }

    #[test]
    fn inbound_qos2_is_delivered_once() {
        let mut st = state(1, false);
        let publish = |dup| {
            Packet::Publish(codec::Publish {
                dup,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: ByteString::from_static("t"),
                pkid: Some(7),
                payload: Bytes::from_static(b"x"),
            })
        };
        st.on_packet(publish(false)).unwrap();
        st.on_packet(publish(true)).unwrap();
        assert_eq!(st.incoming.len(), 1);
        st.on_packet(Packet::PubRel(7)).unwrap();
        assert_eq!(
            written(&mut st),
            vec![Packet::PubRec(7), Packet::PubRec(7), Packet::PubComp(7)]
        );
    }

    #[test]
    fn suback_codes_and_mismatch() {
        let mut st = state(1, true);
        let t = token(
            st.subscribe(vec![
                (ByteString::from_static("a"), QoS::AtLeastOnce),
                (ByteString::from_static("b"), QoS::ExactlyOnce),
            ])
            .unwrap(),
        );
        let Packet::Subscribe(s) = &written(&mut st)[0] else {
            panic!()
        };
        st.on_packet(Packet::SubAck(codec::SubAck {
            pkid: s.pkid,
            codes: vec![
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
            ],
        }))
        .unwrap();
        assert_eq!(st.completions, vec![(t, Outcome::Granted(vec![1, 0x80]))]);
        assert_eq!(st.subscriptions.len(), 1);

        token(
            st.subscribe(vec![(ByteString::from_static("c"), QoS::AtMostOnce)])
                .unwrap(),
        );
        let Packet::Subscribe(s) = &written(&mut st)[0] else {
            panic!()
        };
        let err = st
            .on_packet(Packet::SubAck(codec::SubAck {
                pkid: s.pkid,
                codes: vec![],
            }))
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)));
    }

    #[test]
    fn server_only_packets_are_protocol_errors() {
        let mut st = state(1, true);
        assert!(matches!(
            st.on_packet(Packet::PingReq),
            Err(ClientError::Protocol(_))
        ));
    }

    #[test]
    fn full_buffer_reports_and_then_signals_room() {
        let mut st = State::new(
            Limits {
                max_inflight: 1,
                max_buffered: 100,
                max_incoming: 1,
                clean_session: true,
            },
            Instant::now(),
        );
        st.started = true;
        st.on_connected(false, None, Instant::now());
        let big = [0u8; 120];
        assert_eq!(
            st.publish("t", &big, QoS::AtMostOnce, false).unwrap(),
            Submitted::Sent
        );
        assert_eq!(
            st.publish("t", b"x", QoS::AtMostOnce, false).unwrap(),
            Submitted::Full
        );
        let _ = written(&mut st);
        st.check_room();
        assert!(st.room);
    }

    #[test]
    fn finish_fails_everything() {
        let mut st = state(1, true);
        st.on_connected(false, None, Instant::now());
        let a = token(st.publish("t", b"a", QoS::AtLeastOnce, false).unwrap());
        let b = token(st.publish("t", b"b", QoS::AtLeastOnce, false).unwrap());
        st.finish(Some(ClientError::Timeout("gone".into())));
        let failed: Vec<u64> = st
            .completions
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(ClientError::Timeout(_))))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(failed, vec![a, b]);
        assert_eq!(
            st.publish("t", b"c", QoS::AtMostOnce, false).unwrap(),
            Submitted::Closed
        );
    }

    #[test]
    fn packet_ids_wrap_and_skip_used() {
        let mut ids = PacketIds::new();
        ids.next = u16::MAX;
        assert_eq!(ids.alloc(), Some(u16::MAX));
        assert_eq!(ids.alloc(), Some(1));
        ids.next = u16::MAX;
        assert_eq!(ids.alloc(), Some(2), "65535 and 1 are still in use");
        ids.free(1);
        ids.next = 1;
        assert_eq!(ids.alloc(), Some(1));
    }
}
