//! Sessions across nodes: a JetStream KV bucket (`PREFIX_SESSIONS`) holds one record per
//! client id: the node that owns the session, whether it is clean, and the subscriptions
//! of a persistent one. Records are written with compare-and-set on their revision, so
//! of two nodes claiming one client id at once, one wins and the other reads again.
//!
//! A CONNECT on node B reads the record. If another node A owns the session, B asks A
//! (request/reply on `PREFIX.node.<A>.handover`) to give it up: A closes the client's
//! connection there as a local takeover does, removes the session, and answers with
//! what it held (subscriptions, queued and inflight messages). B takes that in as an
//! offline session, claims the record, and the client resumes it with session present.
//! If A does not answer (it is gone), B takes the subscriptions from the record; what
//! A had queued is lost with A. B's CONNACK waits for all this (bounded).
//!
//! Subscriptions are written to the record before the SUBACK/UNSUBACK, so a client that
//! moves finds on the new node everything the old one acknowledged.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use super::{Cluster, STORE_TIMEOUT};
use crate::broker::router::{Held, Router, Session};
use crate::broker::session::Message;
use crate::broker::store::{SessionSnapshot, StoredMessage};
use crate::codec::QoS;

/// Longest a CONNECT waits for the old owner to give a session up.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Claims tried before a CONNECT goes ahead with what this node has.
const CLAIM_ATTEMPTS: usize = 5;
/// Handover requests served at once.
const HANDOVERS_AT_ONCE: usize = 64;
/// Longest a given-up connection takes to close.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);
const FORMAT: [u8; 2] = [b'P', 1];

/// What the old owner of a session answered.
enum Answer {
    /// What it held, removed there.
    Given(Record),
    /// No session (or a clean one, which ended with its connection).
    Nothing,
    /// No answer: the node is gone (or unreachable).
    Gone,
}

/// One client's record in the bucket, and what a handover answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub owner: u64,
    pub clean: bool,
    pub subscriptions: Vec<(ByteString, QoS)>,
    pub pending: Vec<StoredMessage>,
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn qos_of(byte: u8) -> Option<QoS> {
    match byte {
        0 => Some(QoS::AtMostOnce),
        1 => Some(QoS::AtLeastOnce),
        2 => Some(QoS::ExactlyOnce),
        _ => None,
    }
}

impl Record {
    pub(super) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(&FORMAT);
        out.put_u64(self.owner);
        out.put_u8(u8::from(self.clean));
        out.put_u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for (filter, qos) in &self.subscriptions {
            out.put_u8(*qos as u8);
            put_bytes(&mut out, filter.as_bytes());
        }
        out.put_u32(u32::try_from(self.pending.len()).unwrap_or(u32::MAX));
        for m in &self.pending {
            out.put_u8(m.qos as u8);
            out.put_u8(u8::from(m.retain));
            out.put_u16(m.pkid.unwrap_or(0));
            out.put_u8(u8::from(m.released));
            out.put_u8(m.msg.qos as u8);
            put_bytes(&mut out, m.msg.topic.as_bytes());
            put_bytes(&mut out, &m.msg.payload);
        }
        out.freeze()
    }

    /// `None` for bytes this code did not write (another version, corruption).
    pub(super) fn decode(mut bytes: Bytes) -> Option<Record> {
        fn take_bytes(bytes: &mut Bytes) -> Option<Bytes> {
            if bytes.remaining() < 4 {
                return None;
            }
            let len = usize::try_from(bytes.get_u32()).ok()?;
            (bytes.remaining() >= len).then(|| bytes.split_to(len))
        }
        fn take_string(bytes: &mut Bytes) -> Option<ByteString> {
            ByteString::try_from(take_bytes(bytes)?).ok()
        }
        if bytes.remaining() < 15 || bytes.split_to(2)[..] != FORMAT {
            return None;
        }
        let owner = bytes.get_u64();
        let clean = bytes.get_u8() != 0;
        let count = bytes.get_u32();
        let mut subscriptions = Vec::new();
        for _ in 0..count {
            if bytes.remaining() < 1 {
                return None;
            }
            let qos = qos_of(bytes.get_u8())?;
            subscriptions.push((take_string(&mut bytes)?, qos));
        }
        if bytes.remaining() < 4 {
            return None;
        }
        let count = bytes.get_u32();
        let mut pending = Vec::new();
        for _ in 0..count {
            if bytes.remaining() < 6 {
                return None;
            }
            let qos = qos_of(bytes.get_u8())?;
            let retain = bytes.get_u8() != 0;
            let pkid = Some(bytes.get_u16()).filter(|&p| p != 0);
            let released = bytes.get_u8() != 0;
            let published = qos_of(bytes.get_u8())?;
            let topic = take_string(&mut bytes)?;
            let payload = take_bytes(&mut bytes)?;
            pending.push(StoredMessage {
                msg: Arc::new(Message {
                    topic,
                    payload,
                    qos: published,
                    retain,
                    publisher: ByteString::new(),
                    properties: None,
                }),
                qos,
                retain,
                pkid,
                released,
            });
        }
        bytes.is_empty().then_some(Record {
            owner,
            clean,
            subscriptions,
            pending,
        })
    }

    fn snapshot(self, client_id: &ByteString) -> SessionSnapshot {
        SessionSnapshot {
            client_id: client_id.clone(),
            disconnected_at: None,
            // Not in the bucket's record yet: a 5.0 session moved between nodes expires
            // as a 3.1.1 one does there (`persistent_client_expiration`).
            session_expiry: None,
            subscriptions: self.subscriptions,
            // Nor the subscriptions' 5.0 options: defaults on the node taking it in.
            subscription_options: Vec::new(),
            pending: self.pending,
        }
    }
}

/// The bucket key of a client id: its bytes in hex (client ids may hold anything; keys
/// may not).
pub(super) fn key_of(client_id: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(2 + client_id.len() * 2);
    key.push_str("c.");
    for byte in client_id.bytes() {
        // Writing to a String cannot fail.
        let _ = write!(key, "{byte:02x}");
    }
    if client_id.is_empty() {
        key.push('_');
    }
    key
}

/// The subject a node answers handover requests on.
pub(super) fn handover_subject(prefix: &str, node: u64) -> String {
    format!("{prefix}.node.{node:016x}.handover")
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STORE_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {STORE_TIMEOUT:?}")),
    }
}

impl Cluster {
    /// Before a CONNECT of `client_id` is attached here: ends the client's session on
    /// any other node (closing its connection there), takes a persistent session in
    /// (unless `clean`), and records this node as the owner. Bounded. False if NATS
    /// does not answer and the client asks for a persistent session, which may live on
    /// another node: it is refused (CONNACK 0x03) rather than given a stale or empty
    /// one. A clean session needs nothing from the cluster and goes ahead.
    pub async fn claim_session(
        &self,
        router: &Router,
        client_id: &ByteString,
        clean: bool,
    ) -> bool {
        let failed = if self.linked() {
            match self.try_claim(router, client_id, clean).await {
                Ok(()) => return true,
                Err(e) => e,
            }
        } else {
            "NATS is down".to_string()
        };
        if clean {
            warn!(%client_id, "cluster: session not claimed in the cluster ({failed}); the clean session is this node's only");
            true
        } else {
            warn!(%client_id, "cluster: persistent session refused (CONNACK 0x03): it cannot be claimed in the cluster ({failed})");
            false
        }
    }

    async fn try_claim(
        &self,
        router: &Router,
        client_id: &ByteString,
        clean: bool,
    ) -> Result<(), String> {
        let key = key_of(client_id);
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = bounded("reading the session", self.sessions.entry(key.clone())).await?;
            let (revision, record) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let record = Record::decode(entry.value.clone());
                    if record.is_none() {
                        warn!(%client_id, "cluster: unreadable session record replaced");
                    }
                    (Some(entry.revision), record)
                }
                Some(entry) => (Some(entry.revision), None),
                None => (None, None),
            };
            let mut subscriptions = Vec::new();
            match record {
                // This node's own persistent session: the record stays as it is.
                Some(record) if record.owner == self.node && !clean && !record.clean => {
                    subscriptions = record.subscriptions;
                }
                Some(record) if record.owner == self.node => {}
                Some(record) => {
                    let handed = self.ask_owner(client_id, record.owner).await;
                    let taken = match handed {
                        Answer::Given(given) => Some(given),
                        Answer::Nothing => None,
                        // The owner is gone: its record is what is left.
                        Answer::Gone if record.clean => None,
                        Answer::Gone => Some(Record {
                            pending: Vec::new(),
                            ..record
                        }),
                    };
                    if let Some(taken) = taken.filter(|_| !clean) {
                        subscriptions.clone_from(&taken.subscriptions);
                        if router.take_in_session(taken.snapshot(client_id)) {
                            info!(%client_id, "cluster: session taken over from another node");
                        }
                    }
                }
                None => {}
            }
            let mine = Record {
                owner: self.node,
                clean,
                subscriptions,
                pending: Vec::new(),
            }
            .encode();
            let written = match revision {
                Some(revision) => bounded(
                    "claiming the session",
                    self.sessions.update(&key, mine, revision),
                )
                .await
                .map(|_| ()),
                None => bounded("claiming the session", self.sessions.create(&key, mine))
                    .await
                    .map(|_| ()),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another node claimed it in between: read again and ask that one.
                Err(e) => debug!(%client_id, "cluster: claim raced ({e}); reading again"),
            }
        }
        Err(format!("{CLAIM_ATTEMPTS} claims raced with other nodes"))
    }

    /// Asks node `owner` to give up `client_id`'s session.
    async fn ask_owner(&self, client_id: &ByteString, owner: u64) -> Answer {
        let subject = handover_subject(&self.names.prefix, owner);
        let asked = self
            .client
            .request(subject, Bytes::copy_from_slice(client_id.as_bytes()));
        match tokio::time::timeout(HANDOVER_TIMEOUT, asked).await {
            Ok(Ok(reply)) if reply.payload.is_empty() => Answer::Nothing,
            Ok(Ok(reply)) => match Record::decode(reply.payload) {
                Some(record) => Answer::Given(record),
                None => {
                    warn!(%client_id, "cluster: unreadable session handed over: ignored");
                    Answer::Gone
                }
            },
            Ok(Err(e)) => {
                debug!(%client_id, "cluster: the session's node {owner:016x} did not answer: {e}");
                Answer::Gone
            }
            Err(_) => {
                warn!(%client_id, "cluster: the session's node {owner:016x} did not hand it over within {HANDOVER_TIMEOUT:?}");
                Answer::Gone
            }
        }
    }

    /// A persistent session's subscriptions changed: the record follows (before the
    /// SUBACK/UNSUBACK), unless another node owns the session by now.
    pub async fn session_changed(&self, router: &Router, session: &Arc<Session>) {
        if session.clean || !self.linked() {
            return;
        }
        let key = key_of(&session.client_id);
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = match bounded("reading the session", self.sessions.entry(key.clone())).await
            {
                Ok(entry) => entry,
                Err(e) => {
                    warn!(client_id = %session.client_id, "cluster: subscriptions not recorded: {e}");
                    return;
                }
            };
            let revision = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    match Record::decode(entry.value) {
                        Some(record) if record.owner != self.node => return,
                        _ => entry.revision,
                    }
                }
                _ => return,
            };
            let mine = Record {
                owner: self.node,
                clean: false,
                subscriptions: router.session_subscriptions(session),
                pending: Vec::new(),
            }
            .encode();
            match bounded(
                "recording subscriptions",
                self.sessions.update(&key, mine, revision),
            )
            .await
            {
                Ok(_) => return,
                Err(e) => debug!(client_id = %session.client_id, "cluster: {e}; again"),
            }
        }
    }
}

/// Answers other nodes' handover requests until shutdown.
pub(super) async fn serve_handovers(
    mut requests: async_nats::Subscriber,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(HANDOVERS_AT_ONCE));
    loop {
        let request = tokio::select! {
            request = requests.next() => request,
            _ = shutdown.changed() => return,
        };
        let Some(request) = request else { return };
        let Some(reply) = request.reply.clone() else {
            continue;
        };
        let Ok(client_id) = ByteString::try_from(request.payload.clone()) else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (cluster, router) = (cluster.clone(), router.clone());
        tokio::spawn(async move {
            let answer = give_up(&router, &client_id, cluster.node).await;
            if let Err(e) = cluster.client.publish(reply, answer).await {
                warn!(%client_id, "cluster: handover answer not sent: {e}");
            }
            drop(permit);
        });
    }
}

/// Closes the client's connection here (as a local takeover does) and removes its
/// session: what it held, encoded, or nothing.
async fn give_up(router: &Router, client_id: &ByteString, node: u64) -> Bytes {
    for _ in 0..3 {
        match router.give_up_session(client_id) {
            Held::Connected(conn) => {
                info!(%client_id, "cluster: session taken over by a connection to another node");
                conn.takeover.kick.notify_one();
                let _ = tokio::time::timeout(KICK_TIMEOUT, conn.takeover.gone()).await;
            }
            Held::Given(snapshot) => {
                return Record {
                    owner: node,
                    clean: false,
                    subscriptions: snapshot.subscriptions,
                    pending: snapshot.pending,
                }
                .encode()
            }
            Held::Nothing => return Bytes::new(),
        }
    }
    warn!(%client_id, "cluster: the connection did not close for the takeover by another node");
    Bytes::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = Record {
            owner: 0xfeed,
            clean: false,
            subscriptions: vec![
                (ByteString::from_static("a/+/b"), QoS::AtLeastOnce),
                (ByteString::from_static("line\nbreak/#"), QoS::ExactlyOnce),
            ],
            pending: vec![StoredMessage {
                msg: Arc::new(Message {
                    topic: ByteString::from_static("a/x/b"),
                    payload: Bytes::from_static(b"payload"),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    publisher: ByteString::new(),
                    properties: None,
                }),
                qos: QoS::AtLeastOnce,
                retain: false,
                pkid: Some(7),
                released: false,
            }],
        };
        assert_eq!(Record::decode(record.encode()), Some(record.clone()));
        let encoded = record.encode();
        for cut in 0..encoded.len() {
            assert_eq!(Record::decode(encoded.slice(..cut)), None, "{cut}");
        }
        assert_eq!(Record::decode(Bytes::from_static(b"junk")), None);
    }

    #[test]
    fn keys_are_valid_kv_keys() {
        for id in ["", "a", "client/1 x.*>", "ü"] {
            let key = key_of(id);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_')));
        }
        assert_ne!(key_of("ab"), key_of("a"));
        assert_ne!(key_of(""), key_of("5f"));
    }
}
