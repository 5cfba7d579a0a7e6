//! Cluster mode: several pyo3mq nodes behave as one broker through a NATS server with
//! JetStream (the `cluster` setting). No cluster protocol of our own: NATS is the route
//! table and the transport, JetStream keeps what must outlive a node.
//!
//! - Routing (core NATS): each node subscribes once per distinct filter its sessions
//!   hold (reference-counted as subscriptions come and go), on the subjects of
//!   [`subject`]. A local PUBLISH goes to NATS once, with a header naming the origin
//!   node, a per-node sequence number, the QoS and the RETAIN flag; messages from NATS
//!   are routed to local sessions only, never published again. The connection is made
//!   with `no_echo`, and the origin is checked too: a node never routes its own message
//!   twice.
//! - One copy per node: a message matching several of a node's filters arrives once per
//!   matching NATS subscription; the first copy is routed through the local trie (which
//!   already gives each session one copy at its highest QoS, [MQTT-3.3.5-1]) and the
//!   others, known by (origin, sequence), are dropped. Copies of one message follow each
//!   other closely, so the de-duplication memory is two bounded generations.
//! - QoS 1/2 messages go to one JetStream stream per cluster (`PREFIX.q.…`, bounded
//!   by `cluster_max_bytes` and `cluster_max_age`), not to core NATS. The publisher's
//!   PUBACK/PUBREC waits until JetStream acknowledged the store, with a message id so
//!   a resent publish is stored once within the stream's duplicate window. Every node
//!   reads the whole stream through one durable consumer named after the node
//!   (`cluster_node`), never a consumer per subscription: it routes each message to its
//!   local sessions (online or offline, through its own trie) and only then
//!   acknowledges it, with at most `cluster_max_ack_pending` unacknowledged. A node
//!   restarted under its name resumes where it stopped, so what was published while it
//!   was away reaches its persistent sessions (at least once: a message routed but not
//!   yet acknowledged when a node dies is delivered again). The node skips its own
//!   messages, which it routed locally when they were published.
//! - QoS 0 stays on core NATS: at most once, to nodes connected at the time.
//! - SUBACK waits until the node's NATS subscriptions are in place (the same round
//!   trip), so what another node publishes after the SUBACK reaches the subscriber.
//! - Retained messages: a JetStream stream keeping the last message of each subject.
//!   Every node mirrors it into its own retained tree (an ordered consumer, read to the
//!   end before the node accepts clients), so a new subscription replays retained
//!   messages from memory as in single-node mode; a retained message set or cleared on
//!   any node reaches every node's tree.

mod sessions;
pub mod subject;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap, ServerAddr};
use bytestring::ByteString;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::broker::config::Config;
use crate::broker::metrics;
use crate::broker::router::{MatchScratch, Router};
use crate::broker::session::Message;
use crate::codec::QoS;
use crate::topic::SubscriptionTree;

/// The header carrying `ORIGIN:SEQ:QOS:RETAIN` (origin in hex).
const META: &str = "Pyo3mq-Meta";
/// The prefix the subject functions of [`subject`] use, replaced by `cluster_prefix`.
const BASE_PREFIX: &str = "pyo3mq";
/// Longest JetStream waits for the acknowledgement of a stored message.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stream remembers message ids to store a resent message once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// A message taken from the stream and not acknowledged within this is sent again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// An unnamed node's consumer (nobody resumes it) goes this long after the node.
const UNNAMED_CONSUMER_LINGER: Duration = Duration::from_secs(60);
/// The oldest NATS server with what cluster mode uses (multi-filter consumers, the
/// stream settings below).
const MIN_SERVER: (u64, u64) = (2, 10);
/// Messages waiting to go to NATS; beyond this, QoS 0 messages are dropped (counted)
/// and QoS 1/2 publishers are closed unacknowledged (they send again).
const OUTBOUND_CAPACITY: usize = 16_384;
/// Messages from NATS waiting to be routed locally.
const INBOUND_CAPACITY: usize = 4_096;
/// Messages one NATS subscription holds for the routing task.
const SUBSCRIPTION_CAPACITY: usize = 8_192;
/// Entries per de-duplication generation.
const SEEN_GENERATION: usize = 65_536;
/// Longest a flush waits for the server's answer.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a SUBACK waits for the NATS subscription to be in place.
const INTEREST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to reconnect to NATS.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long a start waits for the engine and for the retained messages.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: invalid NATS URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cluster: cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error(
        "cluster: the NATS server at {urls} is version {version}; cluster mode needs \
         nats-server 2.10 or later"
    )]
    TooOld { urls: String, version: String },
    #[error(
        "cluster: the NATS server at {urls} has no JetStream ({reason}); start it with \
         JetStream enabled (nats-server -js)"
    )]
    NoJetStream { urls: String, reason: String },
    #[error("cluster: cannot set up JetStream: {0}")]
    Stream(String),
}

/// Parses the `cluster` setting: comma-separated `nats://` or `tls://` URLs.
pub fn parse_urls(setting: &str) -> Result<Vec<ServerAddr>, ClusterError> {
    let mut out = Vec::new();
    for url in setting.split(',').map(str::trim) {
        let invalid = |reason: &str| ClusterError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(invalid("expected nats://HOST:PORT or tls://HOST:PORT"));
        }
        out.push(
            url.parse()
                .map_err(|e: std::io::Error| invalid(&e.to_string()))?,
        );
    }
    Ok(out)
}

/// `cluster_prefix` and `cluster_node` are used in subjects and JetStream names: dot
/// separated tokens of letters, digits, `_` and `-` (no wildcards, no spaces).
pub fn check_names(prefix: &str, node: Option<&str>) -> Result<(), String> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if prefix.len() > 64 || !prefix.split('.').all(token_ok) {
        return Err(format!(
            "cluster_prefix must be dot-separated tokens of letters, digits, '_' and '-' \
             (at most 64 characters), not {prefix:?}"
        ));
    }
    if let Some(node) = node {
        if node.len() > 64 || !token_ok(node) {
            return Err(format!(
                "cluster_node must be letters, digits, '_' and '-' (at most 64 \
                 characters), not {node:?}"
            ));
        }
    }
    Ok(())
}

/// The NATS subjects and JetStream names of one cluster (`cluster_prefix`).
#[derive(Debug, Clone)]
struct Names {
    /// `pyo3mq`, or the configured prefix.
    prefix: String,
    /// The prefix upper-cased with `.` as `_`: the start of stream and bucket names.
    base: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            base: prefix.replace('.', "_").to_ascii_uppercase(),
        }
    }

    /// A subject made by [`subject`] (under `pyo3mq.`), under this prefix.
    fn rebase(&self, subject: String) -> String {
        match subject.strip_prefix(BASE_PREFIX) {
            Some(tail) if self.prefix != BASE_PREFIX => format!("{}{tail}", self.prefix),
            _ => subject,
        }
    }

    /// The core NATS subject of a QoS 0 message on `topic`.
    fn topic(&self, topic: &str) -> String {
        self.rebase(subject::topic_to_subject(topic))
    }

    fn filter(&self, filter: &str) -> Vec<String> {
        subject::filter_to_subjects(filter)
            .into_iter()
            .map(|s| self.rebase(s))
            .collect()
    }

    /// The topic of a core NATS subject, if this cluster made it.
    fn topic_of(&self, subject: &str) -> Option<String> {
        if self.prefix == BASE_PREFIX {
            return subject::subject_to_topic(subject);
        }
        let tail = subject.strip_prefix(self.prefix.as_str())?;
        subject::subject_to_topic(&format!("{BASE_PREFIX}{tail}"))
    }

    /// `PREFIX.KIND.t.a.b` for topic `a/b`: the subjects of the streams (`q` QoS 1/2
    /// messages, `r` retained messages).
    fn tagged(&self, kind: &str, topic: &str) -> String {
        let subject = subject::topic_to_subject(topic);
        let tail = subject
            .strip_prefix(BASE_PREFIX)
            .unwrap_or(&subject)
            .trim_start_matches('.');
        format!("{}.{kind}.{tail}", self.prefix)
    }

    fn untagged(&self, kind: &str, subject: &str) -> Option<String> {
        let tail = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .strip_prefix(kind)?
            .strip_prefix('.')?;
        subject::subject_to_topic(&format!("{BASE_PREFIX}.{tail}"))
    }

    /// Every subject of one stream.
    fn all(&self, kind: &str) -> String {
        format!("{}.{kind}.>", self.prefix)
    }

    fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.base)
    }
}

/// What a publisher hands to the NATS writer.
enum Outbound {
    Publish(Arc<Message>, u64),
    /// Answered once everything before it was handed to the server (true) or failed.
    Flush(oneshot::Sender<bool>),
}

/// Filters this node's sessions hold, with how many subscriptions hold each, and those
/// whose count went to or from zero since the subscription task last looked.
#[derive(Default)]
struct Interest {
    counts: HashMap<ByteString, usize>,
    dirty: HashSet<ByteString>,
}

/// The router's side of the cluster: forwarding publishes and keeping NATS interest.
pub struct Cluster {
    /// Tells this node's messages from the others': from `cluster_node` (so a node
    /// restarted under its name knows its own messages in the stream), else random.
    node: u64,
    names: Names,
    client: Client,
    /// The bucket of session records (see [`sessions`]).
    sessions: jetstream::kv::Store,
    seq: AtomicU64,
    outbound: mpsc::Sender<Outbound>,
    interest: Mutex<Interest>,
    interest_changed: Notify,
    /// Interest changes asked for (under `interest`'s lock) and those in place at the
    /// NATS server: a SUBACK waits for the second to reach the first.
    interest_requested: AtomicU64,
    interest_applied: watch::Sender<u64>,
    /// QoS 0 messages dropped because the NATS writer was behind.
    dropped: AtomicU64,
    /// The NATS connection is up (set by the client's events), and how often it broke.
    link: Arc<Link>,
    overflowing: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &format_args!("{:016x}", self.node))
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Hands a locally published message to NATS. Never waits: QoS 1/2 publishers wait
    /// for [`Cluster::flushed`] before they acknowledge.
    pub fn forward(&self, msg: &Arc<Message>, scratch: &mut MatchScratch) {
        // `$SYS` is each node's own.
        if metrics::is_reserved(&msg.topic) {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let reliable = msg.qos != QoS::AtMostOnce;
        match self.outbound.try_send(Outbound::Publish(msg.clone(), seq)) {
            Ok(()) => {
                if reliable {
                    scratch.cluster_pending = true;
                }
                if self.overflowing.load(Ordering::Relaxed)
                    && self.overflowing.swap(false, Ordering::Relaxed)
                {
                    info!("cluster: the NATS writer caught up; messages flow to NATS again");
                }
            }
            Err(_) => {
                if reliable {
                    scratch.cluster_lost = true;
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                if !self.overflowing.swap(true, Ordering::Relaxed) {
                    warn!(
                        "cluster: NATS writer behind ({OUTBOUND_CAPACITY} messages waiting): \
                         QoS 0 messages to other nodes are dropped, QoS 1/2 publishers are \
                         disconnected unacknowledged until it catches up"
                    );
                }
            }
        }
    }

    /// Resolves once every message this publisher forwarded was handed to the NATS
    /// server: true, or false if one of them could not be (then nothing may be
    /// acknowledged).
    pub async fn flushed(&self, scratch: &mut MatchScratch) -> bool {
        let lost = std::mem::take(&mut scratch.cluster_lost);
        let pending = std::mem::take(&mut scratch.cluster_pending);
        if lost {
            return false;
        }
        if !pending {
            return true;
        }
        let (done, wait) = oneshot::channel();
        if self.outbound.send(Outbound::Flush(done)).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// A session subscribed to `filter` (not a replacement of its own subscription).
    pub fn add_interest(&self, filter: &ByteString) {
        if metrics::is_reserved(filter) {
            return;
        }
        let mut interest = self.interest.lock();
        let count = interest.counts.entry(filter.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            interest.dirty.insert(filter.clone());
            self.interest_requested.fetch_add(1, Ordering::Relaxed);
            drop(interest);
            self.interest_changed.notify_one();
        }
    }

    /// Resolves once every subscription made so far is in place at the NATS server, so
    /// that what other nodes publish after the SUBACK reaches it (bounded: a NATS server
    /// that does not answer delays a SUBACK by at most a few seconds).
    pub async fn interest_ready(&self) {
        if !self.linked() {
            // Resubscribed by the client when NATS is back; no answer to wait for now.
            return;
        }
        let target = self.interest_requested.load(Ordering::Relaxed);
        let mut applied = self.interest_applied.subscribe();
        let ready = tokio::time::timeout(
            INTEREST_TIMEOUT,
            applied.wait_for(|&applied| applied >= target),
        )
        .await;
        if ready.is_err() {
            warn!("cluster: NATS did not confirm a subscription within {INTEREST_TIMEOUT:?}; acknowledging it anyway");
        }
    }

    /// A session's subscription to `filter` ended.
    pub fn remove_interest(&self, filter: &ByteString) {
        if metrics::is_reserved(filter) {
            return;
        }
        let mut interest = self.interest.lock();
        let Some(count) = interest.counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            interest.counts.remove(filter);
            interest.dirty.insert(filter.clone());
            drop(interest);
            self.interest_changed.notify_one();
        }
    }

    /// QoS 0 messages not sent to other nodes because the NATS writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the connection to NATS is up.
    pub fn linked(&self) -> bool {
        self.link.up.load(Ordering::Relaxed)
    }

    /// Times the connection to NATS broke since start.
    pub fn disconnects(&self) -> u64 {
        self.link.disconnects.load(Ordering::Relaxed)
    }
}

/// The id of a named node: FNV-1a of its name, the same in every process and version.
fn named_node_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a node's message sequence starts: the clock, so that a named node restarted
/// (same id) does not reuse the (origin, sequence) pairs of its previous run, which
/// other nodes and the stream's duplicate window remember.
fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The state of the NATS connection, as the client's events tell it.
struct Link {
    up: AtomicBool,
    disconnects: AtomicU64,
}

impl Link {
    fn event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Disconnected => {
                if self.up.swap(false, Ordering::Relaxed) {
                    self.disconnects.fetch_add(1, Ordering::Relaxed);
                    error!(
                        "cluster: lost the connection to NATS; local clients are still \
                         served, QoS 0 to other nodes is dropped, QoS 1/2 publishers wait \
                         (then are disconnected unacknowledged) until it is back; \
                         reconnecting"
                    );
                }
            }
            async_nats::Event::Connected => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    info!("cluster: connected to NATS again");
                }
            }
            // Each failed reconnect attempt is one of these: logged once above.
            async_nats::Event::ClientError(e) if !self.up.load(Ordering::Relaxed) => {
                debug!("cluster: NATS: {e}");
            }
            other => warn!("cluster: NATS: {other}"),
        }
    }
}

/// A node id that differs between processes and starts (std's hasher keys are random).
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// `major.minor` of a server version such as `2.10.22` or `v2.11.0-beta`.
fn version_of(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Connects to NATS, checks the server, sets up the streams, mirrors the retained
/// stream into `router` (waiting until it is read to the end) and starts the tasks that
/// route messages both ways. Runs on the broker's runtime; the tasks end at `shutdown`.
pub async fn start(
    config: &Config,
    router: Arc<Router>,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<Cluster>, ClusterError> {
    let setting = config.cluster.as_deref().unwrap_or_default();
    let addrs = parse_urls(setting)?;
    let urls = setting.to_string();
    let names = Names::new(&config.cluster_prefix);
    let (node, node_name) = match &config.cluster_node {
        Some(name) => (named_node_id(name), name.clone()),
        None => {
            let node = node_id();
            (node, format!("{node:016x}"))
        }
    };
    let link = Arc::new(Link {
        up: AtomicBool::new(true),
        disconnects: AtomicU64::new(0),
    });
    let events = link.clone();
    let client = async_nats::ConnectOptions::new()
        .name(format!("pyo3mq node {node_name}"))
        // The client reconnects by itself, forever (its default), resubscribing; the
        // node serves its local clients meanwhile.
        // Doubling from 50 ms to at most 2 s between attempts: back soon after NATS is.
        .reconnect_delay_callback(|attempts| {
            let exponent = u32::try_from(attempts.min(6)).unwrap_or(6);
            Duration::from_millis(50 * 2u64.pow(exponent)).min(RECONNECT_DELAY_MAX)
        })
        .event_callback(move |event| {
            let link = events.clone();
            async move { link.event(event) }
        })
        .no_echo()
        // Per NATS subscription; the library's default (65,536) times thousands of
        // filters is more than a node should hold for a slow routing task.
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .connection_timeout(START_TIMEOUT)
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Connect {
            urls: urls.clone(),
            reason: e.to_string(),
        })?;
    let version = client.server_info().version;
    if version_of(&version).is_none_or(|v| v < MIN_SERVER) {
        return Err(ClusterError::TooOld { urls, version });
    }
    let mut js = jetstream::new(client.clone());
    js.set_timeout(STORE_TIMEOUT);
    if let Err(e) = tokio::time::timeout(START_TIMEOUT, js.query_account())
        .await
        .map_err(|_| "no answer".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        return Err(ClusterError::NoJetStream { urls, reason: e });
    }
    let retained_stream = names.stream("RETAINED");
    let retained = js
        .get_or_create_stream(stream::Config {
            name: retained_stream.clone(),
            subjects: vec![names.all("r")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| ClusterError::Stream(format!("stream {retained_stream}: {e}")))?;
    let messages_stream = names.stream("MESSAGES");
    let stream_failed = |e: String| ClusterError::Stream(format!("stream {messages_stream}: {e}"));
    // Created or brought to the configured limits (changing them on one node changes
    // them for the cluster).
    js.create_or_update_stream(stream::Config {
        name: messages_stream.clone(),
        subjects: vec![names.all("q")],
        max_bytes: i64::try_from(config.cluster_max_bytes).unwrap_or(i64::MAX),
        max_age: config.cluster_max_age,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW.min(config.cluster_max_age),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| stream_failed(e.to_string()))?;
    let reliable = js
        .get_stream(&messages_stream)
        .await
        .map_err(|e| stream_failed(e.to_string()))?;
    let consumer_name = format!("node-{node_name}");
    let consumer: consumer::PullConsumer = reliable
        .create_consumer(consumer::pull::Config {
            durable_name: Some(consumer_name.clone()),
            description: Some(format!("pyo3mq node {node_name}: QoS 1/2 messages")),
            // A new node starts with what is published from now on; an existing
            // consumer keeps its position (a restarted node catches up).
            deliver_policy: consumer::DeliverPolicy::New,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: i64::try_from(config.cluster_max_ack_pending).unwrap_or(i64::MAX),
            filter_subject: names.all("q"),
            // A node that never comes back stops costing the server after a while.
            inactive_threshold: if config.cluster_node.is_some() {
                config.cluster_max_age
            } else {
                UNNAMED_CONSUMER_LINGER
            },
            ..Default::default()
        })
        .await
        .map_err(|e| stream_failed(format!("consumer {consumer_name}: {e}")))?;
    let bucket = names.stream("SESSIONS");
    let sessions = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(jetstream::kv::Config {
                bucket: bucket.clone(),
                description: "pyo3mq sessions: owner node and subscriptions per client id"
                    .to_string(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::Stream(format!("bucket {bucket}: {e}")))?,
    };
    let handovers = client
        .subscribe(sessions::handover_subject(&names.prefix, node))
        .await
        .map_err(|e| ClusterError::Stream(format!("handover subject: {e}")))?;
    info!(
        "cluster: node {node_name} connected to NATS {version} at {urls}; QoS 1/2 \
         messages in stream {messages_stream} (consumer {consumer_name}), retained \
         messages in stream {retained_stream}"
    );

    let (outbound_tx, outbound_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let cluster = Arc::new(Cluster {
        node,
        names: names.clone(),
        client: client.clone(),
        sessions,
        seq: AtomicU64::new(first_seq()),
        outbound: outbound_tx,
        interest: Mutex::new(Interest::default()),
        interest_changed: Notify::new(),
        interest_requested: AtomicU64::new(0),
        interest_applied: watch::Sender::new(0),
        dropped: AtomicU64::new(0),
        overflowing: AtomicBool::new(false),
        link,
    });

    mirror_retained(&retained, &names, router.clone(), shutdown.clone()).await?;
    let reader = consumer
        .stream()
        .max_messages_per_batch(config.cluster_max_ack_pending.clamp(1, 1024))
        .messages()
        .await
        .map_err(|e| stream_failed(format!("consumer {consumer_name}: {e}")))?;
    tokio::spawn(sessions::serve_handovers(
        handovers,
        cluster.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(read_reliable(
        reader,
        cluster.clone(),
        router.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(write_to_nats(
        client.clone(),
        js,
        node,
        names.clone(),
        outbound_rx,
    ));
    tokio::spawn(read_from_nats(client, cluster.clone(), router, shutdown));
    Ok(cluster)
}

fn meta(node: u64, seq: u64, msg: &Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        META,
        format!(
            "{node:016x}:{seq}:{}:{}",
            msg.qos as u8,
            u8::from(msg.retain)
        ),
    );
    headers
}

/// (origin, seq, qos, retain) from a message's header.
fn parse_meta(headers: Option<&HeaderMap>) -> Option<(u64, u64, QoS, bool)> {
    let value = headers?.get(META)?.as_str();
    let mut parts = value.split(':');
    let origin = u64::from_str_radix(parts.next()?, 16).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let qos = match parts.next()? {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        "2" => QoS::ExactlyOnce,
        _ => return None,
    };
    let retain = parts.next()? == "1";
    Some((origin, seq, qos, retain))
}

/// Sends what local publishers forward, in order, and answers flush requests. Each
/// batch taken from the queue is written, then one flush answers every request in it:
/// true once every QoS 1/2 message before it was stored by JetStream and the server
/// handled the core NATS messages before it.
async fn write_to_nats(
    client: Client,
    js: jetstream::Context,
    node: u64,
    names: Names,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut waiters = Vec::new();
    let mut acks = Vec::new();
    // A QoS 1/2 message failed since the last flush: the flush answers false.
    let mut failed = false;
    let mut logged_error = false;
    // The queue's sender lives as long as the router; the runtime's shutdown ends this
    // task, after `flush_on_stop` let it send the wills of closing connections.
    while rx.recv_many(&mut batch, 256).await > 0 {
        for item in batch.drain(..) {
            match item {
                Outbound::Publish(msg, seq) => {
                    let headers = meta(node, seq, &msg);
                    let reliable = msg.qos != QoS::AtMostOnce;
                    if reliable {
                        // JetStream stores a message once per id within its duplicate
                        // window, should this one be sent twice.
                        let mut stored = headers.clone();
                        stored.insert(
                            async_nats::header::NATS_MESSAGE_ID,
                            format!("{node:016x}-{seq}").as_str(),
                        );
                        let subject = names.tagged("q", &msg.topic);
                        match js
                            .publish_with_headers(subject, stored, msg.payload.clone())
                            .await
                        {
                            Ok(ack) => acks.push((msg.clone(), ack)),
                            Err(e) => {
                                if !std::mem::replace(&mut logged_error, true) {
                                    error!(topic = %msg.topic, "cluster: QoS {} message not stored in NATS: {e}", msg.qos as u8);
                                }
                                failed = true;
                            }
                        }
                    } else {
                        let subject = names.topic(&msg.topic);
                        let sent = client
                            .publish_with_headers(subject, headers.clone(), msg.payload.clone())
                            .await;
                        if let Err(e) = &sent {
                            if !std::mem::replace(&mut logged_error, true) {
                                error!(topic = %msg.topic, "cluster: publish to NATS failed: {e}");
                            }
                        }
                    }
                    if msg.retain {
                        let subject = names.tagged("r", &msg.topic);
                        match js
                            .publish_with_headers(subject, headers, msg.payload.clone())
                            .await
                        {
                            Ok(ack) => acks.push((msg, ack)),
                            Err(e) => {
                                error!(topic = %msg.topic, "cluster: retained message not stored in NATS: {e}");
                                failed |= reliable;
                            }
                        }
                    }
                }
                Outbound::Flush(done) => waiters.push(done),
            }
        }
        if !waiters.is_empty() || acks.len() >= 1024 {
            for (msg, ack) in acks.drain(..) {
                if let Err(e) = ack.await {
                    if !std::mem::replace(&mut logged_error, true) {
                        error!(topic = %msg.topic, "cluster: JetStream did not confirm a message: {e}");
                    }
                    failed |= msg.qos != QoS::AtMostOnce;
                }
            }
        }
        if !waiters.is_empty() {
            let ok = !std::mem::take(&mut failed) && round_trip(&client, &names, node).await;
            if ok {
                logged_error = false;
            }
            for done in waiters.drain(..) {
                let _ = done.send(ok);
            }
        }
    }
}

/// Routes the QoS 1/2 messages of other nodes from the stream to the local sessions,
/// acknowledging each once routed (so a node that stops before that gets it again).
async fn read_reliable(
    mut messages: consumer::pull::Stream,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut scratch = MatchScratch::default();
    let mut failing = false;
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = shutdown.changed() => return,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                // Missed heartbeats while NATS is away; the stream recovers by itself
                // when the connection comes back.
                if !std::mem::replace(&mut failing, true) {
                    warn!("cluster: reading the stream of QoS 1/2 messages: {e}");
                }
                continue;
            }
            None => {
                error!("cluster: the stream of QoS 1/2 messages ended; QoS 1/2 messages from other nodes no longer reach this one");
                return;
            }
        };
        if std::mem::replace(&mut failing, false) {
            info!("cluster: reading the stream of QoS 1/2 messages again");
        }
        route_stored(&msg, &cluster, &router, &mut scratch).await;
        if let Err(e) = msg.ack().await {
            debug!("cluster: acknowledging a stream message failed (it comes again): {e}");
        }
    }
}

/// Routes one message of the stream to the local sessions, unless this node sent it.
async fn route_stored(
    msg: &jetstream::Message,
    cluster: &Cluster,
    router: &Router,
    scratch: &mut MatchScratch,
) {
    let Some((origin, _seq, qos, _retain)) = parse_meta(msg.headers.as_ref()) else {
        debug!(subject = %msg.subject, "cluster: ignored a stream message without pyo3mq's header");
        return;
    };
    if origin == cluster.node {
        return;
    }
    let Some(topic) = cluster.names.untagged("q", &msg.subject) else {
        debug!(subject = %msg.subject, "cluster: ignored a stream subject pyo3mq did not make");
        return;
    };
    // Live deliveries carry RETAIN 0 [MQTT-3.3.1-9].
    router.publish_remote(
        Arc::new(Message {
            properties: None,
            topic: ByteString::from(topic),
            payload: msg.payload.clone(),
            qos,
            retain: false,
            publisher: ByteString::new(),
        }),
        scratch,
    );
    if scratch.has_blocked() {
        scratch.wait_for_space().await;
    }
}

/// A request nobody answers: the server's "no responders" reply comes after it has
/// handled everything this connection sent before (the publishes a QoS 1/2
/// acknowledgement waits for, the SUBs a SUBACK waits for). False if it does not come.
async fn round_trip(client: &Client, names: &Names, node: u64) -> bool {
    let asked = client.request(
        format!("{}.ping.{node:016x}", names.prefix),
        bytes::Bytes::new(),
    );
    match tokio::time::timeout(ROUND_TRIP_TIMEOUT, asked).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == async_nats::client::RequestErrorKind::NoResponders,
        Err(_) => false,
    }
}

/// Reads the retained stream into the router's retained tree: to the end before
/// returning, then every change as it comes, until shutdown.
async fn mirror_retained(
    stream: &stream::Stream,
    names: &Names,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let failed = |e: String| ClusterError::Stream(e);
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: names.all("r"),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut pending = consumer
        .info()
        .await
        .map_err(|e| failed(e.to_string()))?
        .num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let names = names.clone();
    let stream_name = stream.cached_info().config.name.clone();
    let apply = move |router: &Router, msg: &jetstream::Message| {
        let Some(topic) = names.untagged("r", &msg.subject) else {
            debug!(subject = %msg.subject, "cluster: ignored a retained stream subject");
            return;
        };
        let qos = parse_meta(msg.headers.as_ref()).map_or(QoS::AtMostOnce, |m| m.2);
        router.set_retained(Arc::new(Message {
            properties: None,
            topic: ByteString::from(topic),
            payload: msg.payload.clone(),
            qos,
            retain: true,
            publisher: ByteString::new(),
        }));
    };
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut loaded = 0u64;
    while pending > 0 {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        match next {
            Ok(Some(Ok(msg))) => {
                apply(&router, &msg);
                loaded += 1;
                pending = msg.info().map_or(0, |info| info.pending);
            }
            Ok(Some(Err(e))) => return Err(failed(e.to_string())),
            Ok(None) => break,
            Err(_) => {
                return Err(failed(format!(
                    "still {pending} retained message(s) to read after {START_TIMEOUT:?}"
                )))
            }
        }
    }
    info!("cluster: {loaded} retained message(s) read from {stream_name}");
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return,
            };
            match next {
                Some(Ok(msg)) => apply(&router, &msg),
                Some(Err(e)) => warn!("cluster: reading the retained stream: {e}"),
                None => {
                    error!("cluster: the retained stream's consumer ended; retained messages set on other nodes no longer reach this one");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// The NATS subscriptions of one filter: the tasks reading them (dropping a
/// subscription, when its task is aborted, unsubscribes).
struct Subscribed {
    id: u64,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Keeps one NATS subscription per distinct local filter and routes what arrives.
async fn read_from_nats(
    client: Client,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(u64, async_nats::Message)>(INBOUND_CAPACITY);
    let mut subscribed: HashMap<ByteString, Subscribed> = HashMap::new();
    // The filters subscribed now, keyed by subscription id: how many copies of a
    // message to expect, and whether a copy comes from a subscription still wanted.
    let mut active: SubscriptionTree<u64, ()> = SubscriptionTree::new();
    let mut active_ids: HashSet<u64> = HashSet::new();
    let mut next_id = 0u64;
    let mut seen = Seen::default();
    let mut scratch = MatchScratch::default();
    loop {
        tokio::select! {
            _ = cluster.interest_changed.notified() => {
                let (requested, dirty) = {
                    let mut interest = cluster.interest.lock();
                    (cluster.interest_requested.load(Ordering::Relaxed), std::mem::take(&mut interest.dirty))
                };
                for filter in dirty {
                    let wanted = cluster.interest.lock().counts.contains_key(&filter);
                    match (wanted, subscribed.contains_key(&filter)) {
                        (true, false) => {
                            next_id += 1;
                            let id = next_id;
                            let mut readers = Vec::new();
                            for subject in cluster.names.filter(&filter) {
                                match client.subscribe(subject.clone()).await {
                                    Ok(sub) => readers.push(tokio::spawn(forward_copies(id, sub, tx.clone()))),
                                    Err(e) => error!(%filter, "cluster: cannot subscribe to {subject}: {e}"),
                                }
                            }
                            active.insert(&filter, id, ());
                            active_ids.insert(id);
                            subscribed.insert(filter, Subscribed { id, readers });
                        }
                        (false, true) => {
                            if let Some(gone) = subscribed.remove(&filter) {
                                active.remove(&filter, &gone.id);
                                active_ids.remove(&gone.id);
                                for reader in gone.readers {
                                    reader.abort();
                                }
                            }
                        }
                        _ => {}
                    }
                }
                // The server handles a connection's commands in order: its answer to
                // this request means the SUBs before it are in place.
                round_trip(&client, &cluster.names, cluster.node).await;
                cluster.interest_applied.send_replace(requested);
            }
            received = rx.recv() => {
                let Some((id, msg)) = received else { return };
                if !active_ids.contains(&id) {
                    continue;
                }
                let Some((origin, seq, qos, _retain)) = parse_meta(msg.headers.as_ref()) else {
                    debug!(subject = %msg.subject, "cluster: ignored a message without pyo3mq's header");
                    continue;
                };
                if origin == cluster.node {
                    continue;
                }
                let Some(topic) = cluster.names.topic_of(&msg.subject) else {
                    debug!(subject = %msg.subject, "cluster: ignored a subject pyo3mq did not make");
                    continue;
                };
                let mut copies = 0usize;
                active.matches(&topic, &mut |_, _| copies += 1);
                if copies > 1 && !seen.first_copy(origin, seq, copies - 1) {
                    continue;
                }
                // Live deliveries carry RETAIN 0 [MQTT-3.3.1-9]; retained copies reach
                // new subscribers from the mirrored retained tree.
                router.publish_remote(
                    Arc::new(Message {
                        properties: None,
                        topic: ByteString::from(topic),
                        payload: msg.payload,
                        qos,
                        retain: false,
                        publisher: ByteString::new(),
                    }),
                    &mut scratch,
                );
                if scratch.has_blocked() {
                    scratch.wait_for_space().await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Passes one subscription's messages, in order, to the routing task.
async fn forward_copies(
    id: u64,
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<(u64, async_nats::Message)>,
) {
    while let Some(msg) = sub.next().await {
        if tx.send((id, msg)).await.is_err() {
            return;
        }
    }
}

/// Messages routed whose other copies are still expected: (origin, seq) -> copies left.
/// Two generations, the older dropped when the newer fills, so memory stays bounded
/// even if an expected copy never comes (its subscription ended on the way).
#[derive(Default)]
struct Seen {
    current: HashMap<(u64, u64), usize>,
    previous: HashMap<(u64, u64), usize>,
}

impl Seen {
    /// True for the first copy of a message (route it), false for a later one.
    fn first_copy(&mut self, origin: u64, seq: u64, more: usize) -> bool {
        let key = (origin, seq);
        for generation in [&mut self.current, &mut self.previous] {
            if let Some(left) = generation.get_mut(&key) {
                *left -= 1;
                if *left == 0 {
                    generation.remove(&key);
                }
                return false;
            }
        }
        if self.current.len() >= SEEN_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, more);
        true
    }
}

/// Waits (bounded) until what was forwarded so far left for NATS: at shutdown, so the
/// wills of closing connections are not lost with the runtime.
pub async fn flush_on_stop(cluster: &Cluster) {
    let mut scratch = MatchScratch::default();
    scratch.cluster_pending = true;
    let _ = tokio::time::timeout(Duration::from_secs(2), cluster.flushed(&mut scratch)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_of("2.10.22"), Some((2, 10)));
        assert_eq!(version_of("v2.11.0-beta.1"), Some((2, 11)));
        assert_eq!(version_of("2.9.25"), Some((2, 9)));
        assert!(version_of("2.9.25").unwrap() < MIN_SERVER);
        assert!(version_of("3.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(version_of("junk"), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_urls("nats://127.0.0.1:4222, nats://127.0.0.1:4223")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_urls("127.0.0.1:4222").is_err());
        assert!(parse_urls("http://x:1").is_err());
        assert!(parse_urls("").is_err());
    }

    #[test]
    fn header_round_trip() {
        let msg = Message {
            properties: None,
            topic: ByteString::from_static("a"),
            payload: bytes::Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: true,
            publisher: ByteString::new(),
        };
        let headers = meta(0xabc, 7, &msg);
        assert_eq!(
            parse_meta(Some(&headers)),
            Some((0xabc, 7, QoS::ExactlyOnce, true))
        );
        assert_eq!(parse_meta(None), None);
    }

    #[test]
    fn stream_subjects_round_trip() {
        for prefix in ["pyo3mq", "site-1.mqtt"] {
            let names = Names::new(prefix);
            for topic in ["a/b", "$x/y", "/", "a.b/ c"] {
                for kind in ["q", "r"] {
                    let subject = names.tagged(kind, topic);
                    assert!(
                        subject.starts_with(&format!("{prefix}.{kind}.")),
                        "{subject}"
                    );
                    assert_eq!(names.untagged(kind, &subject).as_deref(), Some(topic));
                }
                let subject = names.topic(topic);
                assert!(subject.starts_with(&format!("{prefix}.")), "{subject}");
                assert_eq!(names.topic_of(&subject).as_deref(), Some(topic));
            }
            assert_eq!(names.untagged("q", &names.tagged("r", "a")), None);
        }
        assert_eq!(
            Names::new("site-1.mqtt").stream("MESSAGES"),
            "SITE-1_MQTT_MESSAGES"
        );
        assert_eq!(Names::new("pyo3mq").stream("RETAINED"), "PYO3MQ_RETAINED");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_names("pyo3mq", None).is_ok());
        assert!(check_names("site-1.mqtt_x", Some("node-1")).is_ok());
        for bad in ["", "a..b", "a.*", "a b", "a.>", ".a"] {
            assert!(check_names(bad, None).is_err(), "{bad}");
        }
        for bad in ["", "a.b", "a b", "*"] {
            assert!(check_names("pyo3mq", Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(named_node_id("node-1"), named_node_id("node-1"));
        assert_ne!(named_node_id("node-1"), named_node_id("node-2"));
    }

    #[test]
    fn later_copies_are_dropped_and_forgotten() {
        let mut seen = Seen::default();
        assert!(seen.first_copy(1, 1, 2));
        assert!(!seen.first_copy(1, 1, 2));
        assert!(!seen.first_copy(1, 1, 2));
        assert!(seen.current.is_empty());
        assert!(seen.first_copy(2, 1, 1));
        for i in 0..SEEN_GENERATION as u64 + 1 {
            seen.first_copy(3, i, 1);
        }
        assert!(seen.current.len() + seen.previous.len() <= 2 * SEEN_GENERATION);
    }
}
