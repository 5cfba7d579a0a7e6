//! Sessions across nodes: a JetStream KV bucket (`PREFIX_SESSIONS`) holds one record per
//! client id: the node that owns the session, whether it is clean, the subscriptions of
//! a persistent one, the connected client's will (for the survivors if its node dies,
//! see [`super::liveness`]), its session expiry and when it went offline. Records are
//! written with compare-and-set on their revision, so of two nodes claiming one client
//! id at once, one wins and the other reads again.
//!
//! A CONNECT on node B reads the record and claims it. If another node A owned the
//! session, B then asks A (request/reply on `PREFIX.node.<A>.handover`) to give it up:
//! A closes the client's connection there as a local takeover does, removes the
//! session, and answers with what it held (subscriptions, queued and inflight messages).
//! B takes that in as an offline session and the client resumes it with session
//! present, with the stream messages A had not routed to it (the answer's cut,
//! [`super::handover`]). If A does not answer (it is gone) or holds nothing, B takes
//! the subscriptions from the record, and the stream messages since the record's
//! checkpoint ([`super::checkpoint`]: written every heartbeat while the session is on
//! A, connected or not, and when its client goes offline), so that what A had queued
//! or in flight and the client had not taken comes again. B's CONNACK waits
//! for all this (bounded). Claiming before asking settles races: A ignores a request
//! once it claimed the record again itself, and a connection attached after another
//! node's claim finds the record naming that node and is refused.
//!
//! A clean session's record is deleted when its connection ends; a persistent one's
//! records the time its client left, for the expiry of the record.
//!
//! Subscriptions, with their MQTT 5.0 options (No Local, Retain As Published, Retain
//! Handling, Subscription Identifier), are written to the record before the
//! SUBACK/UNSUBACK (3.1.1 and 5.0 alike), so a client that moves, or whose node dies,
//! finds on the new node everything the old one acknowledged, as it was made. The
//! record's bytes, and what a node does with one it cannot read, are in
//! [`super::record`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

pub(super) use super::record::Record;
pub use super::record::Will;
use super::record::{subscriptions_of, Unreadable};
use super::{Cluster, STORE_TIMEOUT};
use crate::broker::router::{Held, Router, Session};

/// Longest a CONNECT waits for the old owner to give a session up.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Claims tried before a CONNECT goes ahead with what this node has.
const CLAIM_ATTEMPTS: usize = 5;
/// Handover requests served at once.
const HANDOVERS_AT_ONCE: usize = 64;
/// Longest a given-up connection takes to close.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);
/// What the old owner of a session answered.
enum Answer {
    /// What it held, removed there.
    Given(Record),
    /// No session (or a clean one, which ended with its connection).
    Nothing,
    /// No answer: the node is gone (or unreachable).
    Gone,
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

/// The client id a bucket key names ([`key_of`] reversed); `None` for other keys.
pub(super) fn client_id_of(key: &str) -> Option<ByteString> {
    let hex = key.strip_prefix("c.")?;
    if hex == "_" {
        return Some(ByteString::new());
    }
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    ByteString::try_from(Bytes::from(bytes)).ok()
}

/// The subject a node answers handover requests on.
pub(super) fn handover_subject(prefix: &str, node: u64) -> String {
    format!("{prefix}.node.{node:016x}.handover")
}

pub(super) async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STORE_TIMEOUT, op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {STORE_TIMEOUT:?}")),
    }
}

/// What a CONNECT records about its client besides the owner: its will and the session
/// expiry it asked for.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    pub clean: bool,
    pub will: Option<Will>,
    /// See [`Record::expiry`].
    pub expiry: Option<u32>,
}

impl Claim {
    /// Whether the session ends with the connection: 3.1.1's Clean Session; in 5.0 a
    /// Session Expiry Interval of 0, whatever Clean Start says (Clean Start 1 with an
    /// interval starts a new session that outlives the connection).
    fn ends_with_connection(&self) -> bool {
        self.expiry.map_or(self.clean, |secs| secs == 0)
    }
}

/// Why a CONNECT did not claim a record this node cannot read: left as it is
/// (record.rs), named for whoever must deal with it (a newer node, or `nats kv del`).
fn unreadable(key: &str, e: Unreadable) -> String {
    format!("the record {key:?} in the sessions bucket is not overwritten: {e}")
}

/// How a connection ended, for its record.
#[derive(Debug)]
pub enum Closed {
    /// The session ended with it (clean session, or expiry 0): the record is deleted.
    Ended,
    /// The session stays, offline; `will_delay`: its will waits out this delay (seconds)
    /// here, and stays in the record meanwhile.
    Offline {
        will_delay: Option<u32>,
        expiry: Option<u32>,
    },
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cluster {
    /// Before a CONNECT of `client_id` is attached here: records this node as the owner
    /// (with the client's will), ends the client's session on the node that owned it
    /// before (closing its connection there), and takes a persistent session in (unless
    /// `clean`). Bounded. False if NATS does not answer and the client asks for a
    /// persistent session, which may live on another node: it is refused (CONNACK 0x03)
    /// rather than given a stale or empty one. A clean session needs nothing from the
    /// cluster and goes ahead.
    pub async fn claim_session(
        &self,
        router: &Router,
        client_id: &ByteString,
        claim: Claim,
    ) -> bool {
        let clean = claim.clean;
        let failed = if self.linked() {
            match self.try_claim(router, client_id, claim).await {
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

    /// Claims the record first, then asks the previous owner to give the session up:
    /// a connection that node attaches after answering finds the record naming this
    /// node and closes itself ([`Cluster::still_owner`]), so of CONNECTs racing on
    /// several nodes exactly one connection stays.
    async fn try_claim(
        &self,
        router: &Router,
        client_id: &ByteString,
        claim: Claim,
    ) -> Result<(), String> {
        let key = key_of(client_id);
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = bounded("reading the session", self.sessions.entry(key.clone())).await?;
            let (revision, record) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    // Never claimed over: what this node cannot read, it must not
                    // overwrite (record.rs).
                    let record =
                        Record::read(entry.value.clone()).map_err(|e| unreadable(&key, e))?;
                    (Some(entry.revision), Some(record))
                }
                Some(entry) => (Some(entry.revision), None),
                None => (None, None),
            };
            // The subscriptions the previous owner acknowledged (recorded before each
            // SUBACK), for a persistent session that goes on.
            let (previous, subscriptions) = match &record {
                Some(record) => (
                    Some(record.owner).filter(|&owner| owner != self.node),
                    if claim.clean || record.clean {
                        Vec::new()
                    } else {
                        // With their 5.0 options (format 4).
                        record.subscriptions.clone()
                    },
                ),
                None => (None, Vec::new()),
            };
            let mine = Record {
                owner: self.node,
                clean: claim.ends_with_connection(),
                subscriptions,
                pending: Vec::new(),
                will: claim.will.clone(),
                expiry: claim.expiry,
                offline_since: 0,
                checkpoint: None,
            };
            let written = match revision {
                Some(revision) => bounded(
                    "claiming the session",
                    self.sessions
                        .update(&key, mine.encode_for(self.records_readable()), revision),
                )
                .await
                .map(|_| ()),
                None => bounded(
                    "claiming the session",
                    self.sessions
                        .create(&key, mine.encode_for(self.records_readable())),
                )
                .await
                .map(|_| ()),
            };
            if let Err(e) = written {
                // Another node claimed it in between: read again.
                debug!(%client_id, "cluster: claim raced ({e}); reading again");
                continue;
            }
            let (Some(owner), Some(record)) = (previous, record) else {
                return Ok(());
            };
            let answer = self.ask_owner(client_id, owner).await;
            let given = matches!(answer, Answer::Given(_));
            let taken = match answer {
                Answer::Given(given) => Some(given),
                // Gone (dead), or it holds nothing (the session left it as the record
                // was claimed, or a survivor of a dead node claimed the record): the
                // record is what is left.
                Answer::Gone | Answer::Nothing if !record.clean => Some(Record {
                    pending: Vec::new(),
                    ..record
                }),
                Answer::Gone | Answer::Nothing => None,
            };
            if let Some(taken) = taken.filter(|_| !claim.clean) {
                // From a dead node: its deliveries awaiting PUBCOMP come from the cluster.
                let (taken, delivered) = if given {
                    // Nothing taken beyond the cut of a live handover.
                    (taken, Default::default())
                } else {
                    self.with_released(client_id, taken).await
                };
                if self.take_in(router, client_id, taken, &delivered).await {
                    info!(%client_id, "cluster: session taken over from another node");
                }
            }
            return Ok(());
        }
        Err(format!("{CLAIM_ATTEMPTS} claims raced with other nodes"))
    }

    /// After a CONNECT was attached here: whether the record still names this node. A
    /// CONNECT for the same client id on another node claimed it since, and that node's
    /// request to give the session up may have come before this one was attached: then
    /// this connection must go (it lost the race). True when NATS cannot say.
    pub async fn still_owner(&self, client_id: &ByteString) -> bool {
        if !self.linked() {
            return true;
        }
        match bounded(
            "reading the session",
            self.sessions.entry(key_of(client_id)),
        )
        .await
        {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                Record::decode(entry.value).is_none_or(|record| record.owner == self.node)
            }
            // Deleted: a clean CONNECT elsewhere ended, or nothing to go by.
            Ok(_) => true,
            Err(e) => {
                debug!(%client_id, "cluster: ownership not checked: {e}");
                true
            }
        }
    }

    /// A connection here ended (not by a takeover, whose new owner wrote the record):
    /// the record of a session that ended with it is deleted, that of a session that
    /// stays records when it went offline (for its expiry) and keeps only a will still
    /// waiting out its delay. Left alone if another node owns the session by now.
    pub async fn session_closed(&self, session: &Session, closed: Closed) {
        if !self.linked() {
            return;
        }
        let client_id = &session.client_id;
        let key = key_of(client_id);
        for _ in 0..CLAIM_ATTEMPTS {
            let entry = match bounded("reading the session", self.sessions.entry(key.clone())).await
            {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => return,
                Err(e) => {
                    warn!(%client_id, "cluster: session record not updated at disconnect: {e}");
                    return;
                }
            };
            let Some(record) = Record::decode(entry.value) else {
                return;
            };
            if record.owner != self.node {
                return;
            }
            let done = match &closed {
                Closed::Ended => {
                    bounded(
                        "deleting the session",
                        self.sessions
                            .delete_expect_revision(&key, Some(entry.revision)),
                    )
                    .await
                }
                Closed::Offline { will_delay, expiry } => {
                    let will = match (record.will.clone(), will_delay) {
                        (Some(will), Some(delay)) => Some(Will {
                            delay: *delay,
                            ..will
                        }),
                        _ => None,
                    };
                    let offline = Record {
                        will,
                        expiry: *expiry,
                        offline_since: unix_now(),
                        // Should this node die, the next one replays the stream from here:
                        // what the client has not taken comes again (checkpoint.rs).
                        checkpoint: Some(self.checkpoint_of(session)),
                        ..record
                    };
                    bounded(
                        "recording the disconnect",
                        self.sessions.update(
                            &key,
                            offline.encode_for(self.records_readable()),
                            entry.revision,
                        ),
                    )
                    .await
                    .map(|_| ())
                }
            };
            match done {
                Ok(()) => return,
                Err(e) => debug!(%client_id, "cluster: {e}; again"),
            }
        }
    }

    /// Whether the record names this node as the owner (a node asks the previous owner
    /// only after its own claim, so then this node claimed the client id again since).
    async fn claimed_here(&self, client_id: &ByteString) -> bool {
        match bounded(
            "reading the session",
            self.sessions.entry(key_of(client_id)),
        )
        .await
        {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                Record::decode(entry.value).is_some_and(|record| record.owner == self.node)
            }
            _ => false,
        }
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
    pub async fn session_changed(&self, _router: &Router, session: &Arc<Session>) {
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
            let (revision, record) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    match Record::read(entry.value) {
                        Ok(record) if record.owner != self.node => return,
                        Ok(record) => (entry.revision, record),
                        // Not overwritten (record.rs); the claim refused it already,
                        // so this is a record that changed since.
                        Err(e) => {
                            warn!(client_id = %session.client_id, "cluster: subscriptions not recorded: {e}");
                            return;
                        }
                    }
                }
                _ => return,
            };
            let Record {
                will,
                expiry,
                checkpoint,
                ..
            } = record;
            let mine = Record {
                owner: self.node,
                clean: false,
                subscriptions: subscriptions_of(session),
                pending: Vec::new(),
                will,
                expiry,
                offline_since: 0,
                // Still where a survivor replays from (checkpoint.rs).
                checkpoint,
            }
            .encode_for(self.records_readable());
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
            // A request overtaken by a newer claim of this node (CONNECTs racing on
            // several nodes) must not close the connection that claim attached.
            let answer = if cluster.claimed_here(&client_id).await {
                debug!(%client_id, "cluster: handover request overtaken by a newer claim here: ignored");
                Bytes::new()
            } else {
                give_up(&cluster, &router, &client_id).await
            };
            if let Err(e) = cluster.client.publish(reply, answer).await {
                warn!(%client_id, "cluster: handover answer not sent: {e}");
            }
            drop(permit);
        });
    }
}

/// Closes the client's connection here (as a local takeover does) and removes its
/// session: what it held, encoded, or nothing.
async fn give_up(cluster: &Cluster, router: &Router, client_id: &ByteString) -> Bytes {
    for _ in 0..3 {
        // The reader paused: where it stands is where the session left.
        let (held, mut cut) = cluster.leave(|| router.give_up_session(client_id)).await;
        match held {
            Held::Connected(conn) => {
                info!(%client_id, "cluster: session taken over by a connection to another node");
                conn.takeover.kick_now();
                let _ = tokio::time::timeout(KICK_TIMEOUT, conn.takeover.gone()).await;
            }
            Held::Given(snapshot) => {
                // The new node's reader must pass this node's last message before it
                // routes to the session (this node had those).
                cut.stored = cluster.stored_now().await;
                return Record {
                    owner: cluster.node,
                    clean: false,
                    subscriptions: Record::subscriptions_of_snapshot(&snapshot),
                    expiry: snapshot.session_expiry,
                    pending: snapshot.pending,
                    will: None,
                    offline_since: 0,
                    checkpoint: Some(cut),
                }
                // The asking node reads it: it is live, so counted in this.
                .encode_for(cluster.records_readable());
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
    fn keys_are_valid_kv_keys() {
        for id in ["", "a", "client/1 x.*>", "ü"] {
            let key = key_of(id);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_')));
        }
        for id in ["", "a", "client/1 x.*>", "ü"] {
            assert_eq!(client_id_of(&key_of(id)).as_deref(), Some(id));
        }
        assert_eq!(client_id_of("n.00"), None);
        assert_eq!(client_id_of("c.0"), None);
        assert_ne!(key_of("ab"), key_of("a"));
        assert_ne!(key_of(""), key_of("5f"));
    }
}
