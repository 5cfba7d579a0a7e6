//! Cluster mode: several pyo3mq nodes behave as one broker through a NATS server with
//! JetStream (the `cluster` setting). No cluster protocol of our own: NATS is the route
//! table and the transport, JetStream keeps what must outlive a node.
//!
//! - Routing (core NATS): each node subscribes once per distinct filter its sessions
//!   hold (reference-counted as subscriptions come and go), on the subjects of
//!   [`subject`]. A local PUBLISH goes to NATS once, with a header naming the origin
//!   node, a per-node sequence number, the QoS and the RETAIN flag, and its MQTT 5.0
//!   properties (with the expiry's deadline) before the payload ([`wire`]: a 3.1.1
//!   message costs no byte more); messages from NATS are rebuilt as the publisher's
//!   node had them and routed to local sessions only, never published again. The connection is made
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
//! - Shared subscriptions (`$share/GROUP/FILTER`, [`share`]): one member cluster-wide
//!   per message. QoS 0: a NATS queue subscription per group on each node holding
//!   members (NATS picks the node), then the node's round robin among its members. QoS
//!   1/2: one durable JetStream consumer per group (not per subscription, not per
//!   member), pulled by each node holding members, so JetStream picks the node. Chosen
//!   over hashing the stream sequence across member nodes recorded in KV because NATS
//!   then is the membership (no table to keep consistent, nothing to clean up after a
//!   dead node: its pulls and queue subscriptions end with its connection, and its
//!   unacknowledged messages go to another puller), and the server deletes the
//!   consumer itself once no node pulled from it for a minute. The cost: one consumer
//!   per group, and a few messages lost (QoS 0) or redelivered (QoS 1/2, after a crash)
//!   while members move; the ordinary routing path gives groups nothing in cluster mode.
//! - The `on_message` interceptor runs on the node a message was published on, once,
//!   before the message goes to NATS: other nodes deliver what it returned, nothing of
//!   what it dropped, and never call their own interceptor for a message from another
//!   node. For the same reason a 5.0 PUBACK/PUBREC in cluster mode never says 0x10 No
//!   matching subscribers: the publishing node cannot know the other nodes'
//!   subscribers (`Router::publish` counts the cluster as a match).
//! - Liveness: each node renews a key that expires in a KV bucket; the survivors of a
//!   node whose key expired publish its clients' wills, one survivor each
//!   ([`liveness`]).
//! - Sessions move between nodes with their QoS 1/2 messages ([`handover`]): the old
//!   node gives a session up between two messages of its stream reader and says where
//!   it stood (a cut, also kept in the record of a session whose client went offline,
//!   for when that node dies); the new node, its own reader paused, takes the session
//!   in and queues from the stream what neither node had routed to it, in order, once.
//! - QoS 2 exactly once across a node crash ([`qos2`]): the packet ids of stored QoS 2
//!   messages are kept in a KV bucket from PUBREC to PUBREL, so a resend (DUP) to
//!   another node is acknowledged, not routed again; those of deliveries from the
//!   subscriber's PUBREC to its PUBCOMP, so the node taking in a dead node's session
//!   sends the PUBREL again, not the PUBLISH.

mod checkpoint;
mod config;
mod connect;
mod cut;
mod formats;
mod handover;
mod link;
mod liveness;
mod qos2;
mod record;
mod sessions;
mod setup;
mod share;
mod streams;
pub mod subject;
mod wire;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Client;
use bytestring::ByteString;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{info, warn};

pub use crate::broker::config::cluster::{
    check_connection, check_names, parse_urls, Settings, UrlError,
};
use config::{first_seq, named_node_id, node_id, version_of, Names, MIN_SERVER};
use link::{read_from_nats, Link};
pub use sessions::{Claim, Closed, Will};
use setup::retrying;
use streams::{mirror_retained, read_reliable, write_to_nats};

use crate::broker::metrics;
use crate::broker::router::{ClusterLink, MatchScratch, Router};
use crate::broker::session::{Message, StreamMark};
use crate::codec::QoS;

/// Longest JetStream waits for the acknowledgement of a stored message.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stream remembers message ids to store a resent message once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// A message taken from the stream and not acknowledged within this is sent again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// An unnamed node's consumer (nobody resumes it) goes this long after the node.
const UNNAMED_CONSUMER_LINGER: Duration = Duration::from_secs(60);

/// Messages waiting to go to NATS; beyond this, QoS 0 messages are dropped (counted)
/// and QoS 1/2 publishers are closed unacknowledged (they send again).
const OUTBOUND_CAPACITY: usize = 16_384;

/// The least each NATS subscription buffers in async-nats (see `subscription_capacity`).
const SUBSCRIPTION_FLOOR: usize = 8_192;

/// Longest a SUBACK waits for the NATS subscription to be in place.
const INTEREST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to reconnect to NATS.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// How long a start waits for the engine and for the retained messages.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Url(#[from] UrlError),
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
    /// A credentials or TLS setting of the engine connection (connect.rs).
    #[error("cluster: {0}")]
    Settings(String),
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
    /// How many of this node's marked QoS 1/2 messages were routed here, counted from
    /// `seq`'s start: equal to `seq`, every one taken was (checkpoint.rs).
    routed_own: AtomicU64,
    /// Where this node stood at each heartbeat, for the checkpoints' cuts.
    ticks: checkpoint::Ticks,
    outbound: mpsc::Sender<Outbound>,
    interest: Mutex<Interest>,
    interest_changed: Notify,
    /// Interest changes asked for (under `interest`'s lock) and those in place at the
    /// NATS server: a SUBACK waits for the second to reach the first.
    interest_requested: AtomicU64,
    interest_applied: watch::Sender<u64>,
    /// QoS 0 messages dropped because the NATS writer was behind.
    dropped: AtomicU64,
    /// Messages from NATS dropped as malformed (wire.rs).
    malformed: AtomicU64,
    /// Shared subscription groups this node holds members of (share.rs).
    shares: share::Shares,
    /// The NATS connection is up (set by the client's events), and how often it broke.
    link: Arc<Link>,
    overflowing: AtomicBool,
    /// Sessions moving in and out with their stream messages ([`handover`]).
    moves: handover::Moves,
    /// Inbound QoS 2 packet ids stored and not yet released ([`qos2`]).
    qos2: jetstream::kv::Store,
    /// The newest session record format every live node reads ([`formats`]).
    records_readable: AtomicU8,
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
    pub fn forward(&self, msg: &mut Arc<Message>, scratch: &mut MatchScratch) {
        // `$SYS` is each node's own.
        if metrics::is_reserved(&msg.topic) {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let reliable = msg.qos != QoS::AtMostOnce;
        if reliable {
            // Checkpoints find the oldest of this node's messages a session has not
            // taken by this (checkpoint.rs). A copy only if the publisher kept one.
            Arc::make_mut(msg).mark = StreamMark::own(seq);
        } else {
            // Taken and routed at once for the checkpoints' count; the router counts
            // only what a mark says this call numbered.
            if msg.mark != StreamMark::NONE {
                Arc::make_mut(msg).mark = StreamMark::NONE;
            }
            self.routed_own.fetch_add(1, Ordering::Release);
        }
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
        // `$share/` groups are served by share.rs (`add_share`), not by plain interest.
        if metrics::is_reserved(filter) || filter.starts_with(crate::topic::SHARE_PREFIX) {
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
        self.shares_ready().await;
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
        if metrics::is_reserved(filter) || filter.starts_with(crate::topic::SHARE_PREFIX) {
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

/// How the router reaches cluster mode (router/remote.rs): the router holds this `Arc`
/// behind its [`ClusterLink`], and [`RouterCluster`] finds it there again.
impl ClusterLink for Arc<Cluster> {
    fn forward(&self, msg: &mut Arc<Message>, scratch: &mut MatchScratch) {
        Cluster::forward(self, msg, scratch);
    }

    fn routed_here(&self) {
        self.routed_own.fetch_add(1, Ordering::Release);
    }

    fn add_interest(&self, filter: &ByteString) {
        Cluster::add_interest(self, filter);
    }

    fn remove_interest(&self, filter: &ByteString) {
        Cluster::remove_interest(self, filter);
    }

    fn add_share(&self, filter: &ByteString) {
        Cluster::add_share(self, filter);
    }

    fn remove_share(&self, filter: &ByteString) {
        Cluster::remove_share(self, filter);
    }
}

/// Cluster mode's calls on the router (`router.cluster()`, `router.cluster_flushed(..)`),
/// here rather than on the router so that the router does not depend on this module.
pub trait RouterCluster {
    /// The cluster this node joined ([`Router::set_cluster`]), if any.
    fn cluster(&self) -> Option<&Arc<Cluster>>;

    /// Cluster mode: resolves once the QoS 1/2 messages this publisher forwarded left
    /// for the other nodes; false if one could not (acknowledge nothing then).
    fn cluster_flushed(&self, scratch: &mut MatchScratch) -> impl Future<Output = bool> + Send;
}

impl RouterCluster for Router {
    fn cluster(&self) -> Option<&Arc<Cluster>> {
        let link: &dyn std::any::Any = self.cluster_link()?;
        link.downcast_ref::<Arc<Cluster>>()
    }

    fn cluster_flushed(&self, scratch: &mut MatchScratch) -> impl Future<Output = bool> + Send {
        let cluster = self.cluster();
        async move {
            match cluster {
                Some(cluster) => cluster.flushed(scratch).await,
                None => true,
            }
        }
    }
}

/// Connects to NATS, checks the server, sets up the streams, mirrors the retained
/// stream into `router` (waiting until it is read to the end) and starts the tasks that
/// route messages both ways. Runs on the broker's runtime; the tasks end at `shutdown`.
pub async fn start(
    config: &Settings,
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
    let link = Arc::new(Link::new());
    let events = link.clone();
    let client = connect::options(config)
        .await?
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
        // Per NATS subscription. Its reader hands each message on at once (link.rs), so
        // this fills only while the reader waits for a CPU behind the connection's
        // task; async-nats then drops, reporting each as an event (counted, but its
        // event queue holds 128), so it is as deep as the routing queue, and never
        // shallower than a burst's worth: with a small routing queue the drops are
        // then the routing queue's, counted exactly.
        .subscription_capacity(config.cluster_pending_messages.max(SUBSCRIPTION_FLOOR))
        .connection_timeout(START_TIMEOUT)
        .connect(addrs)
        .await
        .map_err(|e| ClusterError::Connect {
            urls: urls.clone(),
            reason: e.to_string(),
        })?;
    // Shared subscriptions' queue subscriptions (share.rs) need this node's own
    // publishes, which `no_echo` keeps from the connection above.
    let shares_client = connect::options(config)
        .await?
        .name(format!("pyo3mq node {node_name} (shared subscriptions)"))
        .subscription_capacity(config.cluster_pending_messages.max(SUBSCRIPTION_FLOOR))
        .connection_timeout(START_TIMEOUT)
        .connect(parse_urls(setting)?)
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
    // Each step is tried again while JetStream elects leaders (setup.rs).
    let retained_stream = names.stream("RETAINED");
    let retained = retrying(&format!("stream {retained_stream}"), START_TIMEOUT, || {
        js.get_or_create_stream(stream::Config {
            name: retained_stream.clone(),
            subjects: vec![names.all("r")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: config.cluster_replicas,
            ..Default::default()
        })
    })
    .await?;
    let messages_stream = names.stream("MESSAGES");
    let stream_failed = |e: String| ClusterError::Stream(format!("stream {messages_stream}: {e}"));
    let messages_step = format!("stream {messages_stream}");
    // Created or brought to the configured limits (changing them on one node changes
    // them for the cluster).
    retrying(&messages_step, START_TIMEOUT, || {
        js.create_or_update_stream(stream::Config {
            name: messages_stream.clone(),
            subjects: vec![names.all("q")],
            max_bytes: i64::try_from(config.cluster_max_bytes).unwrap_or(i64::MAX),
            max_age: config.cluster_max_age,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW.min(config.cluster_max_age),
            storage: stream::StorageType::File,
            num_replicas: config.cluster_replicas,
            ..Default::default()
        })
    })
    .await?;
    let reliable = retrying(&messages_step, START_TIMEOUT, || {
        js.get_stream(&messages_stream)
    })
    .await?;
    let consumer_name = format!("node-{node_name}");
    let consumer_step = format!("stream {messages_stream}: consumer {consumer_name}");
    let consumer: consumer::PullConsumer = retrying(&consumer_step, START_TIMEOUT, || {
        reliable.create_consumer(consumer::pull::Config {
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
    })
    .await?;
    // Everything up to the consumer's acknowledged floor was routed (by this node's
    // previous run, or before it existed).
    let moves = handover::Moves::new(
        reliable.clone(),
        consumer.cached_info().ack_floor.stream_sequence,
    );
    let sessions = setup::bucket(
        &js,
        jetstream::kv::Config {
            bucket: names.stream("SESSIONS"),
            description: "pyo3mq sessions: owner node and subscriptions per client id".to_string(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: config.cluster_replicas,
            ..Default::default()
        },
        START_TIMEOUT,
    )
    .await?;
    let qos2 = setup::bucket(&js, qos2::bucket_config(&names, config), START_TIMEOUT).await?;
    // Node liveness: keys that expire unless renewed (see [`liveness`]).
    let nodes_bucket = names.stream("NODES");
    let nodes_step = format!("bucket {nodes_bucket}");
    let timing = liveness::Timing::of(config);
    let nodes = retrying(&nodes_step, START_TIMEOUT, || {
        liveness::nodes_bucket(&js, &nodes_bucket, timing.ttl, config.cluster_replicas)
    })
    .await?;
    // A bucket just created in several replicas takes its first key once they elected
    // a leader.
    let sent = retrying(&nodes_step, START_TIMEOUT, || async {
        let sent = tokio::time::Instant::now();
        liveness::announce(&nodes, node).await.map(|()| sent)
    })
    .await?;
    link.renewed(sent, liveness::steady_gap(timing));
    // The formats the other nodes read, for the records written from the first CONNECT
    // on (taken in below, once the node's state exists).
    let formats = match liveness::live_nodes(&nodes).await {
        Ok(live) => liveness::formats_of(&nodes, &live, node).await,
        Err(e) => Err(e),
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
        routed_own: AtomicU64::new(first_seq()),
        ticks: checkpoint::Ticks::default(),
        outbound: outbound_tx,
        interest: Mutex::new(Interest::default()),
        interest_changed: Notify::new(),
        interest_requested: AtomicU64::new(0),
        interest_applied: watch::Sender::new(0),
        dropped: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        shares: share::Shares::default(),
        overflowing: AtomicBool::new(false),
        link,
        moves,
        qos2,
        records_readable: AtomicU8::new(record::NEWEST),
    });
    match formats {
        Ok(formats) => cluster.note_formats(&formats),
        Err(e) => {
            // The one every node reads, until the first look at the bucket.
            info!(
                "cluster: the nodes' record formats not read yet ({e}): writing format {} \
                 until they are",
                record::UNADVERTISED
            );
            cluster
                .records_readable
                .store(record::UNADVERTISED, Ordering::Relaxed);
        }
    }

    // Where this node's own messages start, before it numbers any.
    cluster.note_start();
    mirror_retained(&retained, cluster.clone(), router.clone(), shutdown.clone()).await?;
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
    tokio::spawn(liveness::keep_alive(
        nodes.clone(),
        cluster.clone(),
        router.clone(),
        timing,
        shutdown.clone(),
    ));
    tokio::spawn(liveness::watch_nodes(
        nodes,
        cluster.clone(),
        router.clone(),
        timing,
        shutdown.clone(),
    ));
    tokio::spawn(liveness::fence_watch(
        cluster.clone(),
        router.clone(),
        timing,
        shutdown.clone(),
    ));
    tokio::spawn(checkpoint::keep_checkpoints(
        cluster.clone(),
        router.clone(),
        timing.heartbeat,
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
        cluster.moves.stored.clone(),
    ));
    tokio::spawn(share::serve_shares(
        shares_client,
        reliable,
        cluster.clone(),
        router.clone(),
        config.cluster_max_ack_pending,
        shutdown.clone(),
    ));
    tokio::spawn(read_from_nats(
        client,
        cluster.clone(),
        router,
        config.cluster_pending_messages,
        shutdown,
    ));
    Ok(cluster)
}

/// Waits (bounded) until what was forwarded so far left for NATS: at shutdown, so the
/// wills of closing connections are not lost with the runtime.
pub async fn flush_on_stop(cluster: &Cluster) {
    let mut scratch = MatchScratch::default();
    scratch.cluster_pending = true;
    let _ = tokio::time::timeout(Duration::from_secs(2), cluster.flushed(&mut scratch)).await;
}
