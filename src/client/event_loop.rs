//! The connection task: connects (retrying per the reconnect policy), then runs a reader,
//! a writer and a keepalive timer per connection around the shared [`State`].
//!
//! The reader decodes and handles whole batches of packets per lock; the writer swaps the
//! write buffer out and writes it with one syscall per batch. Whoever changes the state
//! wakes whoever the change concerns ([`Signals`]) once the lock is released: the writer,
//! the reader (paused by back-pressure), or the application through the wake socket.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::{ConnectReturnCode, Decoder, DisconnectV5, Packet, Protocol, ReasonCode};

use super::error::ClientError;
use super::options::{Options, Reconnect};
use super::runtime::WakePipe;
use super::state::{ConnectionState, Outcome, Signals, State};
use super::store::Store;
use super::transport::{Connector, Reader, Writer};
use super::v5::ServerLimits;

/// Bytes read from the socket per `read` call at most (the buffer grows in these steps).
const READ_CHUNK: usize = 64 * 1024;

/// What the handle and the connection task share.
pub(crate) struct Shared {
    pub(crate) opts: Options,
    /// Makes the connection's stream: TCP, TLS or WebSocket, all driven alike below.
    connector: Connector,
    connect: Packet,
    pub(crate) state: Mutex<State>,
    /// The write buffer has data, or a close was requested.
    writer: Notify,
    /// The application took messages: the reader may read again.
    reader: Notify,
    /// A close was requested.
    control: Notify,
    /// The application answered an AUTH challenge of the CONNECT exchange.
    pub(crate) auth: Notify,
    pub(crate) wake: WakePipe,
    /// Whether events are announced on the wake socket (an asyncio loop watches it) or
    /// only on `events` (threads blocked in `Client::wait_events` and friends).
    pub(crate) wake_pipe: AtomicBool,
    /// Notified, with the state lock, whenever events are queued for the application:
    /// what blocking callers (the sync client, a loop without `add_reader`) wait on.
    pub(crate) events: Condvar,
    /// The session store, if the client has one.
    store: Option<Store>,
    /// The journal has changes for the store (wakes the store task).
    persist: Notify,
    /// The store committed (wakes a write waiting for it).
    persisted: Notify,
}

/// A connection that got CONNACK: the stream's halves, bytes read past the CONNACK, the
/// session present flag, and a 5.0 CONNACK's limits.
type Connection = (Reader, Writer, BytesMut, bool, Option<ServerLimits>);

impl Shared {
    pub(crate) fn new(
        opts: Options,
        connector: Connector,
        state: State,
        wake: WakePipe,
        store: Option<Store>,
    ) -> Shared {
        let connect = opts.connect_packet();
        Shared {
            opts,
            connector,
            connect,
            state: Mutex::new(state),
            writer: Notify::new(),
            reader: Notify::new(),
            control: Notify::new(),
            auth: Notify::new(),
            wake,
            wake_pipe: AtomicBool::new(true),
            events: Condvar::new(),
            store,
            persist: Notify::new(),
            persisted: Notify::new(),
        }
    }

    /// Runs `f` under the lock, then wakes whoever `f`'s changes concern, unlocked.
    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, signals) = {
            let mut st = self.state.lock();
            let result = f(&mut st);
            (result, st.take_signals())
        };
        self.signal(signals);
        result
    }

    pub(crate) fn signal(&self, s: Signals) {
        if s.writer {
            self.writer.notify_one();
        }
        if s.reader {
            self.reader.notify_one();
        }
        if s.persist {
            self.persist.notify_one();
        }
        if s.app {
            if self.wake_pipe.load(Ordering::Relaxed) {
                self.wake.wake();
            }
            // Cheap when nobody waits (one atomic load in parking_lot).
            self.events.notify_all();
        }
    }

    pub(crate) fn request_close(&self, token: Option<u64>) {
        self.with_state(|st| {
            if let Some(t) = token {
                if st.status == ConnectionState::Closed || !st.started {
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

    /// A decoder for the client's protocol (5.0 decodes its own packet forms).
    fn decoder(&self) -> Decoder {
        let mut decoder = Decoder::new(self.opts.max_packet_size);
        if self.opts.protocol == Protocol::V5 {
            decoder.set_protocol(Protocol::V5);
        }
        decoder
    }

    pub(crate) fn addr(&self) -> String {
        format!("{}:{}", self.opts.host, self.opts.port)
    }

    async fn connect_once(&self) -> Result<Connection, ClientError> {
        let attempt = async {
            // A TLS 1.3 server refuses a client certificate after the client finished its
            // handshake: the refusal arrives here, as a read or write error.
            let lost = |e: io::Error| self.connector.failure("waiting for CONNACK", e);
            let (mut rd, mut wr) = self.connector.connect().await?;
            let mut buf = BytesMut::new();
            self.connect
                .encode(&mut buf)
                .map_err(|e| ClientError::ConnectFailed(e.to_string()))?;
            wr.write_all(&buf).await.map_err(lost)?;
            let decoder = self.decoder();
            let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
            loop {
                let decoded = decoder
                    .decode(&mut rbuf)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if let Some(packet) = decoded {
                    let packet = match packet {
                        // Enhanced authentication before CONNACK (spec 4.12).
                        Packet::Auth(auth) => {
                            let reply = self.auth_step(auth, &mut wr).await?;
                            buf.clear();
                            reply
                                .encode(&mut buf)
                                .map_err(|e| ClientError::ConnectFailed(e.to_string()))?;
                            wr.write_all(&buf).await.map_err(lost)?;
                            continue;
                        }
                        other => other,
                    };
                    return match packet {
                        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => {
                            if ack.session_present && self.opts.clean_session {
                                return Err(ClientError::Protocol(
                                    "[MQTT-3.2.2-1] CONNACK has session present set in reply \
                                     to a clean session"
                                        .into(),
                                ));
                            }
                            Ok((rd, wr, rbuf, ack.session_present, None))
                        }
                        Packet::ConnAck(ack) => Err(ClientError::Refused(ack.code)),
                        Packet::ConnAckV5(ack) if ack.reason.is_error() => {
                            Err(ClientError::RefusedV5 {
                                reason: ack.reason,
                                reason_string: ack
                                    .properties
                                    .as_deref()
                                    .and_then(|p| p.reason_string.as_ref())
                                    .map(|s| s.to_string()),
                            })
                        }
                        Packet::ConnAckV5(ack) => {
                            if ack.session_present && self.opts.clean_session {
                                return Err(ClientError::Protocol(
                                    "[MQTT-3.2.2-2] CONNACK has session present set in reply \
                                     to Clean Start"
                                        .into(),
                                ));
                            }
                            let session_present = ack.session_present;
                            let limits = ServerLimits::from_connack(ack);
                            Ok((rd, wr, rbuf, session_present, Some(limits)))
                        }
                        other => Err(ClientError::Protocol(format!(
                            "[MQTT-3.2.0-1] expected CONNACK, got {}",
                            other.name()
                        ))),
                    };
                }
                if rd.read_buf(&mut rbuf).await.map_err(lost)? == 0 {
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

    /// A server's AUTH during CONNECT: the challenge goes to the application, whose
    /// answer (an AUTH 0x18) is returned for the caller to write. A violation is
    /// answered with DISCONNECT before the error is returned (spec 4.13.1).
    async fn auth_step(
        &self,
        auth: crate::codec::Auth,
        wr: &mut Writer,
    ) -> Result<Packet, ClientError> {
        if let Err(e) = self.with_state(|st| st.on_auth(auth, true)) {
            if let ClientError::ProtocolV5 { reason, .. } = &e {
                let mut buf = BytesMut::new();
                let packet = Packet::DisconnectV5(DisconnectV5 {
                    reason: *reason,
                    properties: None,
                });
                if packet.encode(&mut buf).is_ok() {
                    let _ = wr.write_all(&buf).await;
                    let _ = wr.shutdown().await;
                }
            }
            return Err(e);
        }
        loop {
            if let Some(reply) = self.with_state(|st| st.take_auth_reply()) {
                return Ok(reply);
            }
            // Bounded by the connect timeout around the whole attempt.
            self.auth.notified().await;
        }
    }

    /// Connects, then serves connections until closed, reconnecting if configured.
    ///
    /// With a reconnect policy a failed first connect is retried like a lost connection
    /// (same backoff, same attempt limit, same refusals that stop it); the connect token
    /// completes once connected, or fails when the client gives up.
    pub(crate) async fn run(self: Arc<Self>, token: u64) {
        let first = tokio::select! {
            r = self.connect_once() => Some(r),
            () = self.wait_close() => None,
        };
        let first = match (first, self.opts.reconnect) {
            (Some(Err(e)), Some(policy)) if e.is_retryable() => {
                tracing::debug!("client {}: {e}; retrying", self.opts.client_id);
                self.reconnect(policy, e).await
            }
            (Some(result), _) => result.map_err(Some),
            (None, _) => Err(None),
        };
        let mut conn = match first {
            Ok(conn) => conn,
            Err(error) => {
                if let Some(e) = &error {
                    tracing::debug!("client {}: {e}", self.opts.client_id);
                }
                let error = self.settle_store(error).await;
                self.with_state(|st| {
                    let failure = error.clone().unwrap_or(ClientError::Closed);
                    st.complete(token, Outcome::Failed(failure));
                    st.finish(error);
                });
                self.store_done();
                return;
            }
        };
        self.connected(&mut conn, Some(token));
        loop {
            let (rd, wr, rbuf, _, _) = conn;
            let reason = self.serve(rd, wr, rbuf).await;
            if reason == ClientError::Closed {
                self.finish(None).await;
                return;
            }
            tracing::debug!("client {}: {reason}", self.opts.client_id);
            let policy = match self.opts.reconnect {
                Some(policy) if reason.is_retryable() => policy,
                _ => {
                    self.finish(Some(reason)).await;
                    return;
                }
            };
            self.with_state(|st| st.on_lost(&reason));
            match self.reconnect(policy, reason).await {
                Ok(c) => conn = c,
                Err(error) => {
                    self.finish(error).await;
                    return;
                }
            }
            self.connected(&mut conn, None);
        }
    }

    /// The state learns of a connection: a 5.0 CONNACK's limits first, then the resends.
    fn connected(&self, conn: &mut Connection, token: Option<u64>) {
        let limits = conn.4.take();
        let session_present = conn.3;
        self.with_state(|st| {
            if let Some(limits) = limits {
                st.on_connack_v5(limits);
            }
            st.on_connected(session_present, token, Instant::now());
        });
    }

    /// The client is done: the journal is committed first (so that a client made next,
    /// in this process or another, loads all of it), then everything still waiting fails.
    async fn finish(&self, error: Option<ClientError>) {
        let error = self.settle_store(error).await;
        self.with_state(|st| st.finish(error));
        self.store_done();
    }

    /// Waits until the store committed the whole journal; returns the error to close with
    /// (a store failure wins over `error`).
    async fn settle_store(&self, error: Option<ClientError>) -> Option<ClientError> {
        if self.store.is_none() {
            return error;
        }
        let need = self.state.lock().journal_total;
        match self.wait_persisted(need).await {
            Ok(()) => error,
            Err(store_error) => Some(store_error),
        }
    }

    /// Tells the store task that no more changes will come.
    fn store_done(&self) {
        if self.store.is_some() {
            self.state.lock().store_finished = true;
            self.persist.notify_one();
        }
    }

    /// Waits until the store committed the first `need` changes of the journal.
    async fn wait_persisted(&self, need: u64) -> Result<(), ClientError> {
        loop {
            {
                let st = self.state.lock();
                if let Some(e) = &st.store_error {
                    return Err(ClientError::Store(e.clone()));
                }
                if st.committed >= need {
                    return Ok(());
                }
            }
            self.persist.notify_one();
            self.persisted.notified().await;
        }
    }

    /// The store task: commits the journal a batch at a time, until the client finished
    /// and everything is committed. A failed commit closes the client with the error.
    pub(crate) async fn persist_loop(self: Arc<Self>) {
        let Some(store) = &self.store else {
            return;
        };
        loop {
            let (changes, upto, finished) = {
                let mut st = self.state.lock();
                (
                    std::mem::take(&mut st.journal),
                    st.journal_total,
                    st.store_finished,
                )
            };
            if changes.is_empty() {
                if finished {
                    return;
                }
                self.persist.notified().await;
                continue;
            }
            let result = store.commit(changes).await;
            let failed = {
                let mut st = self.state.lock();
                match result {
                    Ok(()) => {
                        st.committed = upto;
                        false
                    }
                    Err(e) => {
                        tracing::error!("client {}: session store: {e}", self.opts.client_id);
                        st.store_error.get_or_insert(e);
                        true
                    }
                }
            };
            self.persisted.notify_one();
            if failed {
                self.request_close(None);
                return;
            }
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
            let delay = policy.delay(attempt);
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
                Err(e) if !e.is_retryable() => return Err(Some(e)),
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
    async fn serve(&self, mut rd: Reader, mut wr: Writer, mut rbuf: BytesMut) -> ClientError {
        let decoder = self.decoder();
        let v5 = self.opts.protocol == Protocol::V5;
        // A 5.0 server may set the keepalive the client must use [MQTT-3.2.2-21].
        let keep_alive = self
            .state
            .lock()
            .server_limits()
            .and_then(|l| l.server_keep_alive)
            .unwrap_or(self.opts.keep_alive);

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
                            Err(e) if v5 => {
                                result = Err(ClientError::ProtocolV5 {
                                    reason: e.reason_code(),
                                    message: e.to_string(),
                                });
                                break;
                            }
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
                // What the bytes about to be written depend on must be stored first.
                let mut need = 0;
                let step = {
                    let mut st = self.state.lock();
                    let step = if !st.out.is_empty() {
                        std::mem::swap(&mut st.out, &mut spare);
                        st.last_write = Instant::now();
                        st.check_room();
                        need = st.journal_total;
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
                        if self.store.is_some() {
                            if let Err(e) = self.wait_persisted(need).await {
                                return e;
                            }
                        }
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
            if keep_alive == 0 {
                return std::future::pending::<ClientError>().await;
            }
            let ka = Duration::from_secs(u64::from(keep_alive));
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
                        keep_alive
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
        let violated = match &reason {
            ClientError::ProtocolV5 { reason, message } => Some((*reason, message)),
            ClientError::Protocol(message) if v5 => Some((ReasonCode::PROTOCOL_ERROR, message)),
            _ => None,
        };
        if let Some((code, message)) = violated {
            // Spec 4.13.1: a 5.0 peer that detects a protocol error sends DISCONNECT with
            // the reason code before it closes; bounded, the server may not be reading.
            tracing::warn!("client {}: {message}", self.opts.client_id);
            let mut buf = BytesMut::new();
            let packet = Packet::DisconnectV5(DisconnectV5 {
                reason: code,
                properties: None,
            });
            if packet.encode(&mut buf).is_ok() {
                let send = async {
                    let _ = wr.write_all(&buf).await;
                    let _ = wr.shutdown().await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            }
        }
        let st = self.state.lock();
        if let Some(e) = &st.store_error {
            ClientError::Store(e.clone())
        } else if st.close_requested {
            ClientError::Closed
        } else {
            reason
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use crate::client::{Client, ConnectionState, Options, Outcome, Reconnect};

    /// Options for tests: a client on 127.0.0.1:`port`, keepalive off, small limits.
    fn options(port: u16, reconnect: Option<Reconnect>) -> Options {
        Options::for_tests(port, reconnect)
    }

    /// Drains until the connect token completes (or 5 s pass).
    fn connect_outcome(client: &Client, token: u64) -> Option<Outcome> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let drained = client.drain(0);
            if let Some((_, outcome)) = drained.completions.into_iter().find(|(t, _)| *t == token) {
                return Some(outcome);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn unused_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[test]
    fn first_connect_is_retried_until_the_server_listens() {
        let port = unused_port();
        let client = Client::new(options(
            port,
            Some(Reconnect {
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                max_attempts: None,
            }),
        ))
        .expect("valid options");
        let token = client.connect().expect("runtime");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            client.drain(0).completions.is_empty(),
            "still retrying, not failed"
        );
        assert_eq!(client.state(), ConnectionState::Connecting);

        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the port again");
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().expect("accept");
            let mut connect = [0u8; 256];
            let _ = sock.read(&mut connect).expect("CONNECT");
            sock.write_all(&[0x20, 0x02, 0x00, 0x00]).expect("CONNACK");
            // Hold the connection until the client disconnects.
            let _ = sock.read(&mut connect);
        });
        assert_eq!(
            connect_outcome(&client, token),
            Some(Outcome::Connected(false))
        );
        assert_eq!(client.state(), ConnectionState::Connected);
        client.disconnect();
        server.join().expect("server thread");
    }

    #[test]
    fn without_reconnect_the_first_failure_is_final() {
        let client = Client::new(options(unused_port(), None)).expect("valid options");
        let token = client.connect().expect("runtime");
        assert!(matches!(
            connect_outcome(&client, token),
            Some(Outcome::Failed(crate::client::ClientError::ConnectFailed(
                _
            )))
        ));
        assert_eq!(client.state(), ConnectionState::Closed);
    }
}
