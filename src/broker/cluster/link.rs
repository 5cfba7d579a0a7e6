//! The core NATS side of the cluster: the state of the connection (`Link`), the round
//! trip that tells when the server has handled what came before, and the routing task
//! that keeps one NATS subscription per distinct local filter and routes what arrives
//! (QoS 0 from other nodes), one copy per message.
//!
//! Apart from the JetStream streams (streams.rs) because core NATS is at most once and
//! follows the live interest of this node's sessions, with its own de-duplication.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytestring::ByteString;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::config::Names;
use super::wire;
use super::Cluster;
use crate::broker::router::{MatchScratch, Router};
use crate::topic::SubscriptionTree;

/// Most messages the routing task takes from its queue at once: routed one after the
/// other without waiting, then it waits (once) for flow-controlled subscribers.
const ROUTE_BATCH: usize = 256;
/// How often the routing task logs QoS 0 messages dropped since it last did.
const DROP_REPORT: Duration = Duration::from_secs(10);

/// Entries per de-duplication generation.
const SEEN_GENERATION: usize = 65_536;
/// Longest a flush waits for the server's answer.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of the NATS connection, as the client's events tell it, what arrived from
/// it and could not be routed, and whether this node is fenced off the cluster (see
/// [`super::liveness`]).
pub(super) struct Link {
    pub(super) up: AtomicBool,
    pub(super) disconnects: AtomicU64,
    /// QoS 0 messages from other nodes dropped on arrival because routing was behind:
    /// `cluster_pending_messages` were waiting (counted exactly), or async-nats' own
    /// buffer of a subscription was full (its slow-consumer events, counted as they
    /// come: async-nats drops those events too when its event queue is full).
    pub(super) dropped_slow: AtomicU64,
    /// Set by the first drop after a quiet period (logged at once), cleared by the
    /// routing task's report once drops stop.
    slow_logged: AtomicBool,
    /// True while this node is fenced: it could not renew its liveness key for nearly
    /// its TTL, so others may take it for dead (liveness.rs).
    pub(super) fenced: watch::Sender<bool>,
    /// Times this node fenced itself since start.
    pub(super) fences: AtomicU64,
    /// When the last successful renewal of the liveness key was sent, in milliseconds
    /// since `epoch`.
    pub(super) renewed_ms: AtomicU64,
    /// When the current steady run of renewals began (liveness.rs `watch_nodes`), in
    /// milliseconds since `epoch`.
    steady_ms: AtomicU64,
    pub(super) epoch: Instant,
    /// Clients whose connections the fence closed, for the records they left.
    pub(super) fenced_clients: Mutex<Vec<ByteString>>,
}

impl Link {
    pub(super) fn new() -> Link {
        Link {
            up: AtomicBool::new(true),
            disconnects: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
            slow_logged: AtomicBool::new(false),
            fenced: watch::Sender::new(false),
            fences: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
            steady_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            fenced_clients: Mutex::new(Vec::new()),
        }
    }

    /// A renewal of the liveness key sent at `sent` succeeded; more than `steady_gap`
    /// after the one before, it begins a new steady run.
    pub(super) fn renewed(&self, sent: Instant, steady_gap: Duration) {
        let ms = u64::try_from(sent.duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX);
        let before = self.renewed_ms.fetch_max(ms, Ordering::Relaxed);
        if ms.saturating_sub(before) > u64::try_from(steady_gap.as_millis()).unwrap_or(u64::MAX) {
            self.steady_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// How long the liveness key has been renewed at most `steady_gap` apart, up to now
    /// (zero if the last renewal is older than that).
    pub(super) fn steady_for(&self, steady_gap: Duration) -> Duration {
        if self.since_renewal() > steady_gap {
            return Duration::ZERO;
        }
        let since = self.epoch + Duration::from_millis(self.steady_ms.load(Ordering::Relaxed));
        since.elapsed()
    }

    /// How long since the last successful renewal was sent.
    pub(super) fn since_renewal(&self) -> Duration {
        let renewed = self.epoch + Duration::from_millis(self.renewed_ms.load(Ordering::Relaxed));
        renewed.elapsed()
    }

    /// Counts QoS 0 messages dropped on arrival; the first of a series is logged now
    /// (the routing task reports the rest every [`DROP_REPORT`]).
    fn dropped_on_arrival(&self, count: u64, cause: &str) {
        self.dropped_slow.fetch_add(count, Ordering::Relaxed);
        if !self.slow_logged.swap(true, Ordering::Relaxed) {
            warn!(
                "cluster: dropping QoS 0 messages from other nodes: {cause}; counted in \
                 $SYS/broker/cluster/dropped/slow (raise cluster_pending_messages if this \
                 node has CPU to spare)"
            );
        }
    }

    pub(super) fn event(&self, event: async_nats::Event) {
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
            // One event per message async-nats dropped: counted, not logged each.
            async_nats::Event::SlowConsumer(_) => self.dropped_on_arrival(
                1,
                "a NATS subscription's buffer in the client library was full (the routing \
                 task's readers fell behind)",
            ),
            // Each failed reconnect attempt is one of these: logged once above.
            async_nats::Event::ClientError(e) if !self.up.load(Ordering::Relaxed) => {
                debug!("cluster: NATS: {e}");
            }
            other => warn!("cluster: NATS: {other}"),
        }
    }
}

impl Cluster {
    /// QoS 0 messages from other nodes dropped on arrival because routing was behind.
    pub fn dropped_slow(&self) -> u64 {
        self.link.dropped_slow.load(Ordering::Relaxed)
    }

    /// The cluster's `$SYS/broker/cluster/...` figures (and `Broker.stats()`'s
    /// `cluster_...`): QoS 0 dropped on the way out (the NATS writer behind) and in
    /// (routing behind), whether the node is fenced and how often it was.
    pub fn figures(&self) -> [(&'static str, u64); 4] {
        [
            ("cluster/dropped", self.dropped()),
            ("cluster/dropped/slow", self.dropped_slow()),
            ("cluster/fenced", u64::from(self.fenced())),
            ("cluster/fences", self.fences()),
        ]
    }
}

/// A request nobody answers: the server's "no responders" reply comes after it has
/// handled everything this connection sent before (the publishes a QoS 1/2
/// acknowledgement waits for, the SUBs a SUBACK waits for). False if it does not come.
pub(super) async fn round_trip(client: &Client, names: &Names, node: u64) -> bool {
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

/// The NATS subscriptions of one filter: the tasks reading them (dropping a
/// subscription, when its task is aborted, unsubscribes).
struct Subscribed {
    id: u64,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Keeps one NATS subscription per distinct local filter and routes what arrives.
pub(super) async fn read_from_nats(
    client: Client,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    pending: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(u64, async_nats::Message)>(pending.max(1));
    let mut batch = Vec::with_capacity(ROUTE_BATCH);
    let mut report = tokio::time::interval(DROP_REPORT);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = 0u64;
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
                                    Ok(sub) => readers.push(tokio::spawn(forward_copies(id, sub, tx.clone(), cluster.link.clone()))),
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
            received = rx.recv_many(&mut batch, ROUTE_BATCH) => {
                if received == 0 {
                    return;
                }
                for (id, msg) in batch.drain(..) {
                    route(&cluster, &router, &active, &active_ids, &mut seen, &mut scratch, id, msg);
                }
                // One wait per batch, for the flow-controlled subscribers it filled.
                if scratch.has_blocked() {
                    scratch.wait_for_space().await;
                }
            }
            _ = report.tick() => {
                let dropped = cluster.link.dropped_slow.load(Ordering::Relaxed);
                if dropped > reported {
                    warn!(
                        "cluster: {} QoS 0 message(s) from other nodes dropped in the last \
                         {DROP_REPORT:?}, {dropped} since start: routing fell behind with \
                         {pending} waiting (cluster_pending_messages)",
                        dropped - reported
                    );
                    reported = dropped;
                } else if cluster.link.slow_logged.swap(false, Ordering::Relaxed) {
                    info!("cluster: QoS 0 messages from other nodes are routed again without drops");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Routes one message from NATS to the local sessions, once per message (the first of
/// its copies, when several of this node's subscriptions match it). Never waits.
#[allow(clippy::too_many_arguments)]
fn route(
    cluster: &Cluster,
    router: &Router,
    active: &SubscriptionTree<u64, ()>,
    active_ids: &HashSet<u64>,
    seen: &mut Seen,
    scratch: &mut MatchScratch,
    id: u64,
    msg: async_nats::Message,
) {
    if !active_ids.contains(&id) {
        return;
    }
    let subject = msg.subject;
    let wire = match wire::decode(msg.headers.as_ref(), msg.payload) {
        Ok(wire) => wire,
        Err(e) => return cluster.drop_malformed(&subject, &e),
    };
    if wire.origin == cluster.node {
        return;
    }
    let Some(topic) = cluster.names.topic_of(&subject) else {
        debug!(%subject, "cluster: ignored a subject pyo3mq did not make");
        return;
    };
    let mut copies = 0usize;
    active.matches(&topic, &mut |_, _| copies += 1);
    if copies > 1 && !seen.first_copy(wire.origin, wire.seq, copies - 1) {
        return;
    }
    // Live deliveries carry RETAIN 0 [MQTT-3.3.1-9] unless the subscription has Retain
    // As Published (the router decides); retained copies reach new subscribers from the
    // mirrored retained tree.
    let retain = wire.retain;
    match wire.message(ByteString::from(topic), retain) {
        Ok(message) => {
            router.publish_remote(Arc::new(message), scratch);
        }
        Err(e) => cluster.drop_malformed(&subject, &e),
    }
}

/// Passes one subscription's messages, in order, to the routing task, never waiting for
/// it: a full queue drops the message here, counted and logged, rather than leaving
/// async-nats' buffer to overflow (which it reports only as events, themselves dropped
/// when too many come).
async fn forward_copies(
    id: u64,
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<(u64, async_nats::Message)>,
    link: Arc<Link>,
) {
    while let Some(msg) = sub.next().await {
        match tx.try_send((id, msg)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => link.dropped_on_arrival(
                1,
                "this node's routing fell behind (cluster_pending_messages messages \
                 waiting)",
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
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
#[cfg(test)]
mod tests {
    use super::*;

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
