//! Bridges to other brokers, as Mosquitto's (`[[bridge]]` tables; mosquitto.conf(5),
//! "Configuring Bridges").
//!
//! A bridge is one task on the broker's runtime with two sides and no Python between
//! them:
//!
//! - The local side is a session of this broker under `local_clientid`, attached like a
//!   network client's (so it shows in the client counts, and a persistent one is kept in
//!   the session store). It subscribes to every `out`/`both` line's local topic; the
//!   router queues matching messages in it, bounded by `max_queued_messages` /
//!   `max_queued_bytes` like any session, overflow counted as dropped. Messages the
//!   bridge itself brought in are never queued back to it (the session's bridge flag),
//!   which is what keeps a `both` line from looping.
//! - The remote side is the project's client core ([`crate::client::Client`]), connected
//!   with the remote client id, Mosquitto's bridge bit (`try_private`), or as a 5.0
//!   client (`bridge_protocol_version = "mqttv50"`, bridge/v5.rs: No Local instead of the
//!   bridge bit, message properties carried both ways), over TCP or TLS
//!   (`bridge_cafile`, `bridge_capath`, `bridge_certfile`, `bridge_keyfile`,
//!   `bridge_insecure`, `bridge_tls_version`). One client serves one address for as long
//!   as it can: when the connection breaks, the client reconnects to the same address by
//!   itself (the `restart_timeout` backoff; with several addresses, one retry) and resumes
//!   its session there. When it gives up (a refusal retrying cannot fix: TLS, CONNACK
//!   other than "server unavailable"; or with several addresses, its retry failed), the
//!   bridge makes a new client for the next address after the backoff.
//!
//! Outgoing QoS 1/2 messages move through the local session's inflight window exactly as
//! a network client's deliveries do: a message leaves the session only when the remote
//! acknowledged it (PUBACK, or PUBCOMP for QoS 2). While the remote is away they wait in
//! the session. A persistent local session (`local_cleansession = false`, the default
//! with `cleansession = false`) survives a restart of this broker with a durable
//! `session_store`.
//!
//! What a broken connection leaves unacknowledged:
//! - The same client reconnecting resends it itself with the same packet ids (PUBLISH
//!   with DUP=1, or PUBREL where the remote had sent PUBREC) when the remote resumed the
//!   session (`cleansession = false`): QoS 2 reaches the remote's subscribers exactly
//!   once, QoS 1 at least once.
//! - A new client (the first connection, the next address, after a refusal, after a
//!   restart of this broker) cannot resume another client's packet ids: the window is
//!   sent again as new messages, in order, PUBREC'd QoS 2 ones included (the remote may
//!   not have released them): at least once, for QoS 2 too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info, warn};

mod remote;
mod v5;
mod wake;

pub use crate::broker::config::bridge::{
    BridgeProtocol, BridgeSettings, BridgeTls, BridgeTlsVersion, Direction, TopicLine,
};
pub use remote::check;

use remote::{new_client, tls_hint};
use wake::Wake;

use crate::broker::router::{Attach, ConnHandle, GoneOnDrop, MatchScratch, Router, Session};
use crate::broker::session::{Message, Outgoing};
use crate::client::{Client, ConnectionState, Incoming, Outcome, Reconnect, Submitted};
use crate::codec::QoS;
use crate::topic;

/// Received messages taken from the client per drain.
const DRAIN_BATCH: usize = 256;

/// Runs one bridge until the broker stops. `_done` is held so that the broker's stop
/// waits for the bridge to detach its session (which a durable store then saves).
pub async fn run(
    settings: BridgeSettings,
    router: Arc<Router>,
    shutdown: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    let settings = Arc::new(settings);
    let Some(mut link) = Link::attach(settings, router, shutdown.clone()).await else {
        return;
    };
    link.serve(shutdown).await;
    link.finish().await;
}

/// What ended a wait of the bridge's loop.
enum Woke {
    Local,
    Kicked,
    Remote,
    Retry,
}

/// The connection to the remote broker now up or being made.
struct Remote {
    /// Declared before `client`: it watches the client's wake socket, so it must be
    /// deregistered before the client closes that socket.
    wake: Wake,
    client: Client,
    /// Which of the addresses the client connects to.
    address: usize,
    connected: bool,
    /// Whether this client was connected before: then it resumes by itself.
    ever_connected: bool,
    /// The SUBSCRIBE of the `in` lines, until its SUBACK.
    subscribe_token: Option<u64>,
    /// The remote granted the `in` lines' subscriptions to this client: it restores them
    /// itself on a connection without a session.
    subscribed: bool,
}

struct Link {
    settings: Arc<BridgeSettings>,
    router: Arc<Router>,
    session: Arc<Session>,
    conn_id: u64,
    /// How a takeover of the local session reaches the bridge; marked gone (by the
    /// guard's drop) when the bridge lets go of its session.
    takeover: GoneOnDrop,
    remote: Option<Remote>,
    /// Which address the next attempt uses, and failed attempts since the last success.
    next_address: usize,
    attempt: u32,
    retry_at: Instant,
    /// Remote publish tokens -> (local packet id, QoS) of the delivery they carry.
    tokens: HashMap<u64, (u16, QoS)>,
    /// Taken from the session but not yet accepted by the client (its buffer was full).
    held: VecDeque<Outgoing>,
    /// The state last published on the notification topic.
    notified: Option<bool>,
    scratch: MatchScratch,
}

impl Link {
    /// Binds the bridge's local session. A network client that connects with the same
    /// client id is refused (the bridge does not let go: the newcomer gives up after its
    /// takeover attempts and gets CONNACK 0x03). `None` if the broker stopped meanwhile.
    async fn attach(
        settings: Arc<BridgeSettings>,
        router: Arc<Router>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Link> {
        let conn_id = router.next_id();
        let takeover = GoneOnDrop(Arc::default());
        let client_id = ByteString::from(settings.local_clientid.as_str());
        let session = loop {
            let handle = ConnHandle {
                conn_id,
                takeover: takeover.0.clone(),
            };
            match router.attach(&client_id, settings.local_cleansession, handle) {
                Attach::Attached { session, .. } => break session,
                Attach::Busy(owner) => {
                    // A network client holds the id (a bridge started while it was
                    // connected): take the session over, as a new connection would.
                    warn!(
                        bridge = %settings.name, client_id = %client_id,
                        "a client is connected with the bridge's local_clientid: taking over"
                    );
                    owner.takeover.kick_now();
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_secs(5), owner.takeover.gone()) => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            }
        };
        session.set_bridge(true);
        let mut link = Link {
            settings,
            router,
            session,
            conn_id,
            takeover,
            remote: None,
            next_address: 0,
            attempt: 0,
            retry_at: Instant::now(),
            tokens: HashMap::new(),
            held: VecDeque::new(),
            notified: None,
            scratch: MatchScratch::default(),
        };
        link.subscribe_locally();
        link.notify(false);
        Some(link)
    }

    /// Subscribes the session to every outgoing line's local topic, and drops what a
    /// restored session had that the configuration no longer has.
    fn subscribe_locally(&self) {
        let mut wanted: HashMap<ByteString, QoS> = HashMap::new();
        for line in self
            .settings
            .topics
            .iter()
            .filter(|l| l.direction.outgoing())
        {
            let qos = wanted
                .entry(ByteString::from(line.local_topic()))
                .or_insert(line.qos);
            *qos = (*qos).max(line.qos);
        }
        let stale: Vec<ByteString> = self
            .session
            .state
            .lock()
            .subscriptions
            .keys()
            .filter(|f| !wanted.contains_key(*f))
            .cloned()
            .collect();
        for filter in stale {
            self.router.unsubscribe(&self.session, &filter);
        }
        for (filter, qos) in wanted {
            // Checked when the configuration was read.
            if let Err(e) = self.router.subscribe(&self.session, &filter, qos) {
                warn!(bridge = %self.settings.name, %filter, "local subscription refused: {e}");
            }
        }
    }

    async fn serve(&mut self, mut shutdown: watch::Receiver<bool>) {
        info!(
            bridge = %self.settings.name,
            remote_clientid = %self.settings.remote_clientid,
            local_clientid = %self.settings.local_clientid,
            protocol = self.settings.protocol.name(),
            "bridge started"
        );
        if self.settings.protocol == BridgeProtocol::V31 && self.settings.try_private {
            warn!(
                bridge = %self.settings.name,
                "try_private is not sent over MQTT 3.1: the remote may send a `both` line's \
                 messages back once (use mqttv311 or mqttv50 to prevent it)"
            );
        }
        loop {
            if self.remote.is_none() && Instant::now() >= self.retry_at {
                self.start_remote().await;
            }
            self.pump();
            let retry_at = self.retry_at;
            let waiting = self.remote.is_none();
            let woke = tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.session.notify.notified() => Woke::Local,
                _ = self.takeover.0.kick.notified() => Woke::Kicked,
                _ = wait_remote(self.remote.as_ref()) => Woke::Remote,
                _ = sleep_until(retry_at), if waiting => Woke::Retry,
            };
            match woke {
                Woke::Remote => self.on_remote_events().await,
                Woke::Kicked => warn!(
                    bridge = %self.settings.name,
                    client_id = %self.settings.local_clientid,
                    "a client tried to connect with the bridge's local_clientid: refused \
                     (the bridge keeps its session)"
                ),
                Woke::Local | Woke::Retry => {}
            }
        }
    }

    /// Makes a client for the next address and starts connecting.
    async fn start_remote(&mut self) {
        let settings = self.settings.clone();
        let address = self.next_address % settings.addresses.len();
        let max_packet_size = self.router.config().max_packet_size;
        // Certificates, keys and the system's roots are read here: off the workers.
        let made =
            tokio::task::spawn_blocking(move || new_client(&settings, address, max_packet_size))
                .await
                .unwrap_or_else(|e| Err(format!("making the client failed: {e}")));
        let started = made.and_then(|client| {
            let wake = Wake::new(&client).map_err(|e| format!("wake socket: {e}"))?;
            client.connect().map_err(|e| e.to_string())?;
            Ok(Remote {
                wake,
                client,
                address,
                connected: false,
                ever_connected: false,
                subscribe_token: None,
                subscribed: false,
            })
        });
        let (host, port) = &self.settings.addresses[address];
        match started {
            Ok(remote) => {
                info!(bridge = %self.settings.name, %host, port, "bridge connecting");
                self.remote = Some(remote);
            }
            Err(e) => {
                warn!(bridge = %self.settings.name, %host, port, "bridge cannot connect: {e}");
                self.schedule_retry();
            }
        }
    }

    fn schedule_retry(&mut self) {
        let (base, cap) = self.settings.restart_timeout;
        let delay = if base == cap {
            base
        } else {
            Reconnect {
                initial_delay: base,
                max_delay: cap,
                max_attempts: None,
            }
            .delay(self.attempt)
        };
        self.attempt = self.attempt.saturating_add(1);
        self.next_address = (self.next_address + 1) % self.settings.addresses.len();
        self.retry_at = Instant::now() + delay;
    }

    /// Handles what the client queued: state changes, completions, received messages.
    async fn on_remote_events(&mut self) {
        loop {
            let Some(remote) = &self.remote else { return };
            let drained = remote.client.drain(DRAIN_BATCH);
            let more = drained.messages.len() == DRAIN_BATCH;
            for change in drained.states {
                match change.state {
                    ConnectionState::Connected => self.on_connected(change.session_present),
                    ConnectionState::Reconnecting => {
                        let why = change
                            .error
                            .map_or_else(|| "lost".to_string(), |e| e.to_string());
                        self.on_interrupted(&why);
                    }
                    ConnectionState::Closed => {
                        let why = change
                            .error
                            .map_or_else(|| "closed".to_string(), |e| tls_hint(e.to_string()));
                        self.on_lost(&why);
                        return;
                    }
                    ConnectionState::Connecting => {}
                }
            }
            for (token, outcome) in drained.completions {
                self.on_completion(token, outcome);
            }
            for message in drained.messages {
                self.bring_in(message).await;
            }
            if !more {
                return;
            }
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        let settings = self.settings.clone();
        let Some(remote) = &mut self.remote else {
            return;
        };
        let (host, port) = &settings.addresses[remote.address];
        info!(
            bridge = %settings.name, %host, port, session_present,
            "bridge connected to the remote broker"
        );
        remote.connected = true;
        let resumed = std::mem::replace(&mut remote.ever_connected, true);
        self.attempt = 0;
        let filters: Vec<(String, QoS)> = settings
            .topics
            .iter()
            .filter(|l| l.direction.incoming())
            .map(|l| (l.remote_topic(), l.qos))
            .collect();
        // Once granted, the client keeps the subscriptions itself (the remote's session
        // has them, or the client restores them); subscribing again would make the
        // remote send its retained messages again.
        if !filters.is_empty() && !remote.subscribed && remote.subscribe_token.is_none() {
            let submitted = if settings.protocol == BridgeProtocol::V5 {
                let filters = filters
                    .into_iter()
                    .map(|(f, qos)| v5::subscription(f, qos))
                    .collect();
                remote.client.subscribe_v5(filters, None, Vec::new())
            } else {
                remote.client.subscribe(filters)
            };
            match submitted {
                Ok(Submitted::Token(token)) => remote.subscribe_token = Some(token),
                Ok(other) => warn!(bridge = %settings.name, "remote subscribe not sent: {other:?}"),
                Err(e) => warn!(bridge = %settings.name, "remote subscribe refused: {e}"),
            }
        }
        let subscribing = remote.subscribe_token.is_some();
        if !resumed {
            // A new client cannot resume another's packet ids: what the remote has not
            // acknowledged goes again first, in order, as new messages. That includes
            // QoS 2 ones the remote sent PUBREC for: it may not have released them (a
            // remote that delivers on PUBREL, as Mosquitto does, would lose them).
            let window: Vec<Outgoing> = self
                .session
                .state
                .lock()
                .export()
                .into_iter()
                .map_while(|(item, pkid, _)| {
                    pkid.map(|pkid| Outgoing::Publish {
                        item,
                        pkid: Some(pkid),
                        dup: false,
                    })
                })
                .collect();
            self.held = window.into();
        }
        // Otherwise the client resent the unacknowledged ones itself, under their ids,
        // and `held` keeps what it had no room for.
        if !subscribing {
            // Otherwise the SUBACK says it.
            self.notify(true);
        }
    }

    /// The connection broke; the client reconnects to the same address by itself.
    fn on_interrupted(&mut self, why: &str) {
        if let Some(remote) = &mut self.remote {
            remote.connected = false;
            let (host, port) = &self.settings.addresses[remote.address];
            warn!(
                bridge = %self.settings.name, %host, port,
                "bridge connection lost: {why}; reconnecting"
            );
        }
        self.notify(false);
    }

    fn on_lost(&mut self, why: &str) {
        let was_connected = self.remote.as_ref().is_some_and(|r| r.connected);
        self.remote = None;
        // Unacknowledged deliveries stay in the session's window; the next client sends
        // them again. (Held QoS 0 messages are lost, as QoS 0 may be.)
        self.tokens.clear();
        self.held.clear();
        self.schedule_retry();
        let wait = self.retry_at.saturating_duration_since(Instant::now());
        if was_connected {
            warn!(bridge = %self.settings.name, "bridge connection lost: {why}; retrying in {wait:?}");
        } else {
            warn!(bridge = %self.settings.name, "bridge cannot connect: {why}; retrying in {wait:?}");
        }
        self.notify(false);
    }

    fn on_completion(&mut self, token: u64, outcome: Outcome) {
        if let Some(remote) = &mut self.remote {
            if remote.subscribe_token == Some(token) {
                remote.subscribe_token = None;
                match outcome {
                    Outcome::Granted(codes) => {
                        remote.subscribed = true;
                        // 0x80 in 3.1.1; any code from 0x80 in 5.0.
                        if codes.iter().any(|c| *c >= 0x80) {
                            warn!(
                                bridge = %self.settings.name,
                                "the remote broker refused some of the bridge's \
                                 subscriptions (SUBACK {codes:?})"
                            );
                        }
                    }
                    // The connection broke first: subscribed on the next one.
                    other => {
                        debug!(bridge = %self.settings.name, "remote subscribe: {other:?}");
                        return;
                    }
                }
                // Up once messages can flow both ways: the remote has the subscriptions.
                self.notify(true);
                return;
            }
        }
        let Some((pkid, qos)) = self.tokens.remove(&token) else {
            return;
        };
        // Failed: the connection is going; the delivery stays in the window.
        if outcome == Outcome::Done {
            self.complete_locally(Some(pkid), qos);
        }
    }

    /// Sends what the session has for the remote while the connection is up, as far as
    /// the session's window and the client's buffer allow.
    fn pump(&mut self) {
        if !self.remote.as_ref().is_some_and(|r| r.connected) {
            return;
        }
        loop {
            let next = match self.held.pop_front() {
                Some(outgoing) => outgoing,
                None => match self.session.state.lock().next_outgoing() {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            if !self.send(&next) {
                self.held.push_front(next);
                return;
            }
        }
    }

    /// Hands one delivery to the client; false when it has no room now.
    fn send(&mut self, outgoing: &Outgoing) -> bool {
        let Outgoing::Publish { item, pkid, .. } = outgoing else {
            return true;
        };
        let Some(remote) = &self.remote else {
            return false;
        };
        let Some((remote_topic, _)) = self.remap(&item.msg.topic, true) else {
            self.complete_locally(*pkid, item.qos);
            return true;
        };
        let submitted = if self.settings.protocol == BridgeProtocol::V5 {
            let Ok(props) = v5::outgoing(&item.msg) else {
                debug!(
                    bridge = %self.settings.name, topic = %remote_topic,
                    "[MQTT-3.3.2-5] message expired before it could be forwarded: dropped"
                );
                self.complete_locally(*pkid, item.qos);
                return true;
            };
            remote
                .client
                .publish_v5(
                    &remote_topic,
                    &item.msg.payload,
                    item.qos,
                    item.msg.retain,
                    props.as_ref(),
                )
                .map_err(|e| e.to_string())
        } else {
            remote
                .client
                .publish(&remote_topic, &item.msg.payload, item.qos, item.msg.retain)
        };
        match submitted {
            Ok(Submitted::Sent) => true,
            Ok(Submitted::Token(token)) => {
                if let Some(pkid) = pkid {
                    self.tokens.insert(token, (*pkid, item.qos));
                }
                true
            }
            Ok(Submitted::Full | Submitted::Closed) => false,
            Err(e) => {
                warn!(
                    bridge = %self.settings.name, topic = %remote_topic,
                    "message not forwarded: {e}"
                );
                self.complete_locally(*pkid, item.qos);
                true
            }
        }
    }

    /// Where a message goes: the first line of the direction whose filter on this side
    /// matches its topic remaps it (Mosquitto's rule), and its QoS caps the delivery.
    /// `None` (dropped, with a log line) if no line matches (a message queued under a line
    /// since removed, or an old subscription the remote kept) or the result is not a
    /// valid topic name.
    fn remap(&self, topic_name: &str, outgoing: bool) -> Option<(String, QoS)> {
        let name = &self.settings.name;
        let line = self.settings.topics.iter().find(|l| {
            if outgoing {
                l.direction.outgoing() && topic::matches(&l.local_topic(), topic_name)
            } else {
                l.direction.incoming() && topic::matches(&l.remote_topic(), topic_name)
            }
        });
        let Some(line) = line else {
            debug!(bridge = %name, topic = %topic_name, outgoing, "no topic line matches: dropped");
            return None;
        };
        let mapped = if outgoing {
            line.to_remote(topic_name)
        } else {
            line.to_local(topic_name)
        };
        if let Err(e) = topic::validate_topic_name(&mapped) {
            warn!(bridge = %name, topic = %topic_name, "remapped to {mapped:?}, not a valid topic: dropped ({e})");
            return None;
        }
        Some((mapped, line.qos))
    }

    fn complete_locally(&self, pkid: Option<u16>, qos: QoS) {
        let Some(pkid) = pkid else { return };
        let mut state = self.session.state.lock();
        if qos == QoS::ExactlyOnce {
            state.on_pubrec(pkid);
            state.on_pubcomp(pkid);
        } else {
            state.on_puback(pkid);
        }
    }

    /// Publishes a message from the remote on this broker, remapped by the first incoming
    /// line its topic matches, at min(line QoS, message QoS), with the bridge's local
    /// client id as publisher (so it is never sent back out).
    async fn bring_in(&mut self, incoming: Incoming) {
        let Some((local, line_qos)) = self.remap(&incoming.topic, false) else {
            return;
        };
        let msg = Arc::new(Message {
            // Only a 5.0 remote sends properties.
            properties: v5::incoming(incoming.properties),
            topic: ByteString::from(local),
            payload: incoming.payload,
            qos: incoming.qos.min(line_qos),
            retain: incoming.retain,
            publisher: ByteString::from(self.settings.local_clientid.as_str()),
            mark: crate::broker::session::StreamMark::NONE,
        });
        self.router.publish(msg, &mut self.scratch);
        if self.scratch.has_blocked() {
            // A flow-controlled in-process subscriber is full: wait as a network
            // publisher would (the client stops reading, which slows the remote).
            self.scratch.wait_for_space().await;
        }
    }

    /// Publishes the connection state (retained 1/0) on the notification topic.
    fn notify(&mut self, up: bool) {
        if !self.settings.notifications || self.notified == Some(up) {
            return;
        }
        self.notified = Some(up);
        let msg = Arc::new(Message {
            properties: None,
            topic: ByteString::from(self.settings.notification_topic.as_str()),
            payload: Bytes::from_static(if up { b"1" } else { b"0" }),
            qos: QoS::AtLeastOnce,
            retain: true,
            publisher: ByteString::new(),
            mark: crate::broker::session::StreamMark::NONE,
        });
        let mut scratch = MatchScratch::default();
        self.router.publish(msg, &mut scratch);
        // Cannot wait here: a full flow-controlled subscriber drops it (counted).
        scratch.clear_blocked();
    }

    /// Disconnects from the remote and leaves the session (offline, if persistent).
    async fn finish(mut self) {
        if let Some(remote) = self.remote.take() {
            if remote.connected {
                remote.client.disconnect();
                let closed = async {
                    while remote.client.state() != ConnectionState::Closed {
                        wait_remote(Some(&remote)).await;
                        remote.client.drain(0);
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), closed).await;
            }
        }
        self.notify(false);
        self.router.detach(&self.session, self.conn_id);
        info!(bridge = %self.settings.name, "bridge stopped");
    }
}

/// Resolves when the client has events; never without one.
async fn wait_remote(remote: Option<&Remote>) {
    match remote {
        Some(remote) => remote.wake.wait().await,
        None => std::future::pending().await,
    }
}
