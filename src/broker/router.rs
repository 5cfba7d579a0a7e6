//! The broker's shared state behind a small API: who is subscribed to what, the retained
//! messages, and which sessions exist and which connection owns each.
//!
//! Routing runs on the publishing connection's task (SurgeMQ's way): it matches the topic
//! in the subscription trie under a read lock and appends the message to each matching
//! session's own queue under that session's own mutex. There is no router thread to
//! become the bottleneck in fan-in, and no lock that every message of every connection
//! takes for writing.
//!
//! The router uses the session, the store, the configuration, the hooks and the metrics,
//! and nothing above it: cluster mode reaches it through [`ClusterLink`] (router/remote.rs),
//! which the cluster implements, and the delayed MQTT 5.0 wills that publish through it
//! live here (router/will.rs). [`SubOpts`] is the session's (session/sub_opts.rs),
//! re-exported here.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

mod clients;
mod handover;
mod options;
mod persist;
mod remote;
mod shared;
pub mod will;

/// Defined on the session's side (session/sub_opts.rs), which keeps a session's options.
pub use crate::broker::session::SubOpts;
use clients::ClientSlot;
pub use clients::{Attach, ConnHandle, GoneOnDrop, Takeover};
pub use handover::Held;
pub use remote::{ClusterLink, Qos2Step};
pub use shared::SharedGroup;

use crate::broker::config::Config;
use crate::broker::hooks::{Event, Hooks};
use crate::broker::metrics::{self, Counters};
use crate::broker::parking;
use crate::broker::session::{ChangeTracker, Enqueued, Limits, Message, Queued, SessionState};
use crate::codec::QoS;
use crate::topic::{self, RetainedTree, SubscriptionTree};

/// Flow control for an in-process subscriber that asked to slow its publishers rather
/// than drop: above `high_water` queued messages, publishers routing to it wait for
/// `space`, which its forwarder signals as it drains.
#[derive(Debug)]
pub struct Flow {
    pub high_water: usize,
    /// The queue's hard bound. Publishers that wait overshoot `high_water` by at most what
    /// they routed before waiting (one read each); one that cannot wait (the `$SYS`
    /// publisher, `broker.publish` from another event loop) must not grow the queue without
    /// bound, so beyond this its messages are dropped and counted like any overflow.
    pub limit: usize,
    pub space: Notify,
}

/// Room above a flow-controlled queue's high water mark for what waiting publishers
/// routed before they waited: a read's worth of the smallest PUBLISHes from each of a
/// dozen publishers at once.
const FLOW_OVERSHOOT: usize = 65_536;

/// A session shared between the router (publishers append to it) and the connection that
/// currently owns it (which drains it).
#[derive(Debug)]
pub struct Session {
    /// Unique per session instance: the subscription trie's key.
    pub id: u64,
    pub client_id: ByteString,
    /// Clean-session sessions end with their connection.
    pub clean: bool,
    pub state: Mutex<SessionState>,
    /// Wakes the owning connection when the queue gains a message.
    pub notify: Notify,
    /// Set for in-process subscribers that slow their publishers instead of dropping.
    /// Boxed: only in-process subscribers have one, and inline it was 40 of every
    /// network session's bytes.
    pub flow: Option<Box<Flow>>,
    /// Set for bridges (ours, and remote ones that connect with Mosquitto's bridge bit),
    /// as Mosquitto treats them: messages the session's own client published are not
    /// delivered to it, so a message a bridge brought in never goes back out through it,
    /// and deliveries keep the publisher's RETAIN flag, so the broker at the other end
    /// stores retained messages too.
    bridge: AtomicBool,
    /// The key of the owning connection's park (broker/parking.rs) while it is parked
    /// without a task, else [`parking::NONE`]: a delivery must wake it.
    pub parked: AtomicU64,
}

impl Session {
    pub fn set_bridge(&self, on: bool) {
        self.bridge.store(on, Ordering::Relaxed);
    }

    fn is_bridge(&self) -> bool {
        self.bridge.load(Ordering::Relaxed)
    }

    /// Queues a delivery and wakes the owning connection. Never blocks on the subscriber:
    /// a full queue costs only this session (its overflow policy applies).
    pub fn deliver(&self, item: Queued) -> Enqueued {
        let outcome = match &self.flow {
            // Not dropped below the hard limit: the publisher waits instead (see
            // `Router::publish`).
            Some(flow) => self.state.lock().push_flow(item, flow.limit),
            None => self.state.lock().enqueue(item),
        };
        if outcome != Enqueued::Skipped {
            self.notify.notify_one();
            // A relaxed-cost load (x86: a plain read) on every delivery; the wake only
            // while the connection is parked without a task.
            let parked = self.parked.load(Ordering::SeqCst);
            if parked != parking::NONE {
                parking::wake(parked);
            }
        }
        outcome
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    qos: QoS,
    /// MQTT 5.0 subscription options (router/options.rs); zero for 3.1/3.1.1.
    opts: SubOpts,
    session: Arc<Session>,
}

/// Reusable buffers for routing, kept by each publisher so routing does not allocate per
/// message.
#[derive(Debug, Default)]
pub struct MatchScratch {
    matches: Vec<(u64, QoS, SubOpts, Arc<Session>)>,
    /// Second and further Subscription Identifiers of a session's overlapping
    /// subscriptions (router/options.rs); empty unless identifiers are in use.
    extra_ids: Vec<(u64, std::num::NonZeroU32)>,
    /// Flow-controlled subscribers over their high water mark: the publisher waits on
    /// them (see [`MatchScratch::wait_for_space`]) before reading more.
    blocked: Vec<Arc<Session>>,
    /// Cluster mode: a QoS 1/2 message was handed to the NATS writer, or could not be;
    /// the publisher acknowledges only after cluster mode's `cluster_flushed`
    /// (`cluster::RouterCluster`).
    pub(crate) cluster_pending: bool,
    pub(crate) cluster_lost: bool,
    /// Cluster mode: the QoS 2 steps of this read, recorded in the cluster before the
    /// acknowledgements go out.
    pub(crate) cluster_qos2: Vec<(u16, Qos2Step)>,
    /// Shared subscription groups the topic matches (used only while groups exist).
    groups: Vec<Arc<SharedGroup>>,
}

impl MatchScratch {
    /// Cluster mode: whether acknowledgements must wait for `cluster_flushed`.
    pub fn cluster_pending(&self) -> bool {
        self.cluster_pending || self.cluster_lost
    }

    /// Whether a flow-controlled subscriber asked this publisher to wait.
    pub fn has_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Forgets the subscribers that asked to wait (for a publisher that will not).
    pub fn clear_blocked(&mut self) {
        self.blocked.clear();
    }

    /// Waits until every flow-controlled subscriber this publisher filled is below its
    /// high water mark again. Only the publishers of such subscribers ever wait here.
    pub async fn wait_for_space(&mut self) {
        for session in self.blocked.drain(..) {
            let Some(flow) = &session.flow else { continue };
            loop {
                let space = flow.space.notified();
                tokio::pin!(space);
                // Register before checking, so a drain in between is not missed.
                space.as_mut().enable();
                let drained = {
                    let state = session.state.lock();
                    state.queued_len() < flow.high_water || state.subscriptions.is_empty()
                };
                if drained {
                    break;
                }
                space.await;
            }
        }
    }
}

pub struct Router {
    config: Config,
    hooks: Hooks,
    limits: Limits,
    subs: RwLock<SubscriptionTree<u64, Subscriber>>,
    /// Shared subscription groups, keyed by ShareName under their topic filter (the
    /// `$share/{ShareName}/` prefix stripped), so matching works as for `subs`.
    shared: RwLock<SubscriptionTree<ByteString, Arc<SharedGroup>>>,
    /// Memberships of all groups. Zero (no group exists) lets `publish` skip the shared
    /// trie with one load: topics without shared subscriptions pay nothing more.
    shared_members: AtomicUsize,
    /// The groups by id, for handing a leaving member's messages back to their group.
    groups_by_id: Mutex<HashMap<crate::broker::session::ShareId, Arc<SharedGroup>>>,
    next_share_id: AtomicU32,
    retained: RwLock<RetainedTree<Arc<Message>>>,
    clients: Mutex<HashMap<ByteString, ClientSlot>>,
    next_id: AtomicU64,
    /// Messages dropped by sessions' overflow policies since start.
    dropped: AtomicU64,
    /// Events the observer's full queue refused since start, and whether it is refusing
    /// now (a full queue is logged once per episode).
    events_dropped: AtomicU64,
    events_overflowing: AtomicBool,
    /// Traffic totals for `$SYS`, fed by the connections in batches.
    counters: Counters,
    /// When the broker started (`$SYS/broker/uptime`).
    started: std::time::Instant,
    /// Network clients attached now, and the most there have been at once.
    connected: AtomicU64,
    max_connected: AtomicU64,
    /// Set when a durable store is saved incrementally: the changes below are recorded.
    tracking: AtomicBool,
    /// Some MQTT 5.0 session has a finite, non-zero expiry: the expiry timer has work.
    v5_expiring: AtomicBool,
    /// Persistent sessions that ended since the last save.
    removed: Mutex<HashSet<ByteString>>,
    /// Persistent sessions that changed since the last save (each listed once per save).
    changed: ChangeTracker,
    /// Retained topics set or cleared since the last save (latest per topic). Locked only
    /// under the retained tree's write lock, or by the saver.
    retained_changes: Mutex<HashMap<ByteString, Option<Arc<Message>>>>,
    /// A partial save failed: the next one writes everything.
    full_save_due: AtomicBool,
    /// One save at a time (periodic, group commit, stop): two savers taking changes at
    /// once could write an older copy of a session after a newer one.
    saving: Mutex<()>,
    /// Set with `durability = "sync"`: asks the store writer for a commit that includes
    /// everything routed so far, and is answered once it is on disk.
    durable: std::sync::OnceLock<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<bool>>>,
    /// Cluster mode (`cluster` setting): where publishes and subscription interest go
    /// (router/remote.rs). Unset, routing costs one well-predicted check more than before.
    cluster: std::sync::OnceLock<Box<dyn ClusterLink>>,
    /// MQTT 5.0 wills waiting out their Will Delay Interval (router/will.rs).
    wills: will::DelayedWills,
}

impl Router {
    pub fn new(config: Config, hooks: Hooks) -> Router {
        let limits = Limits {
            max_inflight: config.max_inflight,
            max_queued: config.max_queued_messages,
            max_queued_bytes: config.max_queued_bytes,
            overflow: config.queue_overflow,
            queue_qos0_offline: config.queue_qos0_offline,
        };
        Router {
            config,
            hooks,
            limits,
            subs: RwLock::new(SubscriptionTree::new()),
            shared: RwLock::new(SubscriptionTree::new()),
            shared_members: AtomicUsize::new(0),
            groups_by_id: Mutex::new(HashMap::new()),
            next_share_id: AtomicU32::new(1),
            retained: RwLock::new(RetainedTree::new()),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            events_overflowing: AtomicBool::new(false),
            counters: Counters::default(),
            started: std::time::Instant::now(),
            connected: AtomicU64::new(0),
            max_connected: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            v5_expiring: AtomicBool::new(false),
            removed: Mutex::new(HashSet::new()),
            changed: ChangeTracker::default(),
            retained_changes: Mutex::new(HashMap::new()),
            full_save_due: AtomicBool::new(false),
            saving: Mutex::new(()),
            durable: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            wills: Default::default(),
        }
    }

    /// The MQTT 5.0 wills waiting out their delay (router/will.rs).
    pub fn wills(&self) -> &will::DelayedWills {
        &self.wills
    }

    /// Joins a cluster: publishes go to the other nodes from now on, and every
    /// subscription held now (restored sessions) or later is NATS interest.
    pub fn set_cluster(&self, cluster: impl ClusterLink) {
        let clients = self.clients.lock();
        for slot in clients.values() {
            for filter in slot.session.state.lock().subscriptions.keys() {
                cluster.add_interest(filter);
            }
        }
        for group in self.groups_by_id.lock().values() {
            cluster.add_share(group.name());
        }
        let _ = self.cluster.set(Box::new(cluster));
    }

    /// The cluster this node joined, if any; cluster mode finds its own type behind it
    /// (`cluster::RouterCluster`).
    pub fn cluster_link(&self) -> Option<&dyn ClusterLink> {
        self.cluster.get().map(|link| &**link)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Offers an event to the observer, if one is registered. The observer never slows
    /// the broker: an event its full queue refuses is dropped, counted (`events_dropped`
    /// in `Broker.stats()`, `$SYS/broker/pyo3mq/events/dropped`) and logged once per
    /// episode.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        let Some(sink) = &self.hooks.events else {
            return;
        };
        if sink.event(event()) {
            if self.events_overflowing.load(Ordering::Relaxed)
                && self.events_overflowing.swap(false, Ordering::Relaxed)
            {
                tracing::info!(
                    total_dropped = self.events_dropped(),
                    "event queue has room again: events are delivered"
                );
            }
            return;
        }
        let total = self.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.events_overflowing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                total_dropped = total,
                "event queue full: dropping events until the event handlers catch up \
                 (counted in events_dropped)"
            );
        }
    }

    /// Events dropped because the observer's queue was full, since start.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// (connected clients, the most connected at once, all client sessions including
    /// offline persistent ones).
    pub fn client_counts(&self) -> (u64, u64, usize) {
        let total = self.clients.lock().len();
        (
            self.connected.load(Ordering::Relaxed),
            self.max_connected.load(Ordering::Relaxed),
            total,
        )
    }

    /// Subscriptions of every session, in-process ones included.
    pub fn subscription_count(&self) -> usize {
        self.subs.read().len() + self.shared_members.load(Ordering::Relaxed)
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// (messages queued, QoS 1/2 deliveries inflight) over every client session, for
    /// `/metrics`. A lock per session, each taken on its own after the client map's lock
    /// is released: a scrape holds up no connect and no publisher for long.
    pub fn queue_totals(&self) -> (u64, u64) {
        let sessions: Vec<Arc<Session>> = self
            .clients
            .lock()
            .values()
            .map(|slot| slot.session.clone())
            .collect();
        sessions.iter().fold((0, 0), |(queued, inflight), session| {
            let state = session.state.lock();
            (
                queued + state.queued_len() as u64,
                inflight + state.inflight_len() as u64,
            )
        })
    }

    /// Every client session (connected or not), for cluster mode's checkpoints; taken
    /// under the client map's lock only, as [`Router::queue_totals`] does.
    pub fn client_sessions(&self) -> Vec<Arc<Session>> {
        self.clients
            .lock()
            .values()
            .map(|slot| slot.session.clone())
            .collect()
    }

    /// A process-unique id for connections and sessions.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn new_session(&self, client_id: ByteString, clean: bool) -> Arc<Session> {
        self.session_with_flow(client_id, clean, None)
    }

    fn session_with_flow(
        &self,
        client_id: ByteString,
        clean: bool,
        flow: Option<Flow>,
    ) -> Arc<Session> {
        let mut state = SessionState::new(self.limits);
        if !clean && self.tracking.load(Ordering::Relaxed) {
            // New, so not in the store yet: listed now, and again after each save that
            // it changes after.
            self.changed.lock().insert(client_id.clone());
            state.set_tracker(self.changed.clone(), client_id.clone());
        }
        Arc::new(Session {
            id: self.next_id(),
            client_id,
            clean,
            state: Mutex::new(state),
            notify: Notify::new(),
            flow: flow.map(Box::new),
            bridge: AtomicBool::new(false),
            parked: AtomicU64::new(parking::NONE),
        })
    }

    /// Removes a session's subscriptions from the trie and empties it, for good. What it
    /// holds for shared subscription groups goes to other members of those groups.
    fn discard(&self, session: &Arc<Session>) {
        // Leaving the groups first, with the session unlocked (publishers lock a group,
        // then its members), means no group routes to the session once it is emptied.
        let shares = shared::shared_filters(&session.state.lock());
        for filter in &shares {
            self.leave_group(session, filter);
        }
        let handed_over = {
            let mut state = session.state.lock();
            state.ended = true;
            if !state.subscriptions.is_empty() {
                let mut subs = self.subs.write();
                for filter in state.subscriptions.keys() {
                    subs.remove(filter, &session.id);
                }
                if let Some(cluster) = self.cluster.get() {
                    state
                        .subscriptions
                        .keys()
                        .for_each(|f| cluster.remove_interest(f));
                }
            }
            let taken = if shares.is_empty() {
                Vec::new()
            } else {
                state.take_shared(|_| true)
            };
            state.clear();
            taken
        };
        self.hand_over(session, handed_over);
    }

    /// Routes a message to every matching session at min(published, granted) QoS, one
    /// copy per session at the highest QoS among its matching subscriptions
    /// [MQTT-3.3.5-1], and updates the retained store when RETAIN is set. False when no
    /// subscriber at all took it (5.0's PUBACK 0x10 No matching subscribers); in
    /// cluster mode always true, since another node's subscribers may (bridges are
    /// local subscribers, so they count).
    pub fn publish(&self, mut msg: Arc<Message>, scratch: &mut MatchScratch) -> bool {
        let Some(cluster) = self.cluster.get() else {
            if msg.retain {
                self.set_retained(msg.clone());
            }
            return self.publish_remote(msg, scratch);
        };
        cluster.forward(&mut msg, scratch);
        if msg.retain {
            self.set_retained(msg.clone());
        }
        let marked = msg.mark.own_seq().is_some();
        self.publish_remote(msg, scratch);
        if marked {
            cluster.routed_here();
        }
        true
    }

    /// Sets (or with an empty payload, clears) a retained message without routing it:
    /// for [`Router::publish`], and in cluster mode for retained messages set on
    /// another node.
    pub fn set_retained(&self, msg: Arc<Message>) {
        let mut retained = self.retained.write();
        let kept = if msg.payload.is_empty() {
            // [MQTT-3.3.1-10], [MQTT-3.3.1-11]: delete, never store an empty message.
            retained.remove(&msg.topic);
            None
        } else {
            retained.insert(&msg.topic, msg.clone());
            Some(msg.clone())
        };
        if self.tracking.load(Ordering::Relaxed) && !metrics::is_reserved(&msg.topic) {
            self.retained_changes.lock().insert(msg.topic.clone(), kept);
        }
    }

    /// Routes a message to the local sessions only: [`Router::publish`]'s routing, and
    /// in cluster mode the way messages from other nodes are delivered (never sent on).
    /// False when no local subscriber took it.
    pub fn publish_remote(&self, msg: Arc<Message>, scratch: &mut MatchScratch) -> bool {
        let sets = {
            let subs = self.subs.read();
            subs.matches(&msg.topic, &mut |id, sub| {
                if !sub.opts.skips(&msg, &sub.session.client_id) {
                    scratch
                        .matches
                        .push((*id, sub.qos, sub.opts, sub.session.clone()));
                }
            })
        };
        let MatchScratch {
            matches, extra_ids, ..
        } = scratch;
        // Only a session with more than one matching filter can be listed twice, so
        // matches from one filter (a plain fan-out) skip the sort: it was the largest
        // cost of routing a message to 20 subscribers.
        if sets > 1 && matches.len() > 1 {
            // Highest granted QoS first within each session, then keep the first of each,
            // with the options of the others folded in.
            matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            matches.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.2.merge(later.2, kept.0, extra_ids);
                }
                same
            });
        }
        let mut dropped = 0;
        let mut matched = false;
        for (session_id, granted, opts, session) in matches.drain(..) {
            let bridge = session.is_bridge();
            if bridge && msg.publisher == session.client_id {
                continue;
            }
            matched = true;
            let item = Queued {
                msg: match opts.id {
                    None => msg.clone(),
                    Some(id) => options::with_ids(&msg, id, session_id, extra_ids),
                },
                qos: msg.qos.min(granted),
                // [MQTT-3.3.1-12] [MQTT-3.3.1-13]
                retain: (bridge || opts.retain_as_published()) && msg.retain,
                share: None,
            };
            dropped += deliver_counting_drops(&session, item);
            if let Some(flow) = &session.flow {
                if session.state.lock().queued_len() >= flow.high_water {
                    scratch.blocked.push(session);
                }
            }
        }
        extra_ids.clear();
        // One load when no shared subscription exists (the common case). In cluster
        // mode groups get messages from NATS instead (cluster/share.rs), one member
        // cluster-wide, except for the node's own `$SYS` topics.
        if self.shared_members.load(Ordering::Relaxed) > 0
            && (self.cluster.get().is_none() || metrics::is_reserved(&msg.topic))
        {
            let (shared_dropped, shared_matched) = self.publish_shared(&msg, scratch);
            dropped += shared_dropped;
            matched |= shared_matched;
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        matched
    }

    /// Adds or replaces a subscription [MQTT-3.8.4-3] and queues the retained messages it
    /// matches with RETAIN=1 [MQTT-3.3.1-6], [MQTT-3.3.1-8]. `Err` names the rule an
    /// invalid filter breaks; the caller answers 0x80. A `$share/{ShareName}/{filter}`
    /// filter joins the session to that group instead (see [`SharedGroup`]).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        qos: QoS,
    ) -> Result<QoS, topic::FilterError> {
        let handling = crate::codec::RetainHandling::SendAtSubscribe;
        self.subscribe_with(session, filter, qos, SubOpts::default(), handling)
    }

    /// [`Router::subscribe`] with MQTT 5.0 options ([`Router::subscribe_v5`]).
    fn subscribe_with(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        qos: QoS,
        opts: SubOpts,
        handling: crate::codec::RetainHandling,
    ) -> Result<QoS, topic::FilterError> {
        if let Some(share) = topic::parse_shared(filter)? {
            self.join_group(session, filter, share, qos, opts);
            return Ok(qos);
        }
        topic::validate_topic_filter(filter)?;
        let replaced;
        {
            let mut state = session.state.lock();
            self.subs.write().insert(
                filter,
                session.id,
                Subscriber {
                    qos,
                    opts,
                    session: session.clone(),
                },
            );
            replaced = state.subscriptions.insert(filter.clone(), qos).is_some();
            state.set_sub_opts(filter, opts);
            state.mark_changed();
            if let (false, Some(cluster)) = (replaced, self.cluster.get()) {
                cluster.add_interest(filter);
            }
        }
        if !options::sends_retained(handling, replaced) {
            return Ok(qos);
        }
        let dropped = self.replay_retained(session, filter, qos, opts);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(qos)
    }

    /// Deletes the subscription whose filter equals `filter` character for character
    /// [MQTT-3.10.4-1]; deliveries already under way complete [MQTT-3.10.4-3].
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        if filter.starts_with(topic::SHARE_PREFIX) {
            return self.unsubscribe_shared(session, filter);
        }
        let mut state = session.state.lock();
        if state.subscriptions.remove(filter).is_some() {
            state.set_sub_opts(filter, SubOpts::default());
            self.subs.write().remove(filter, &session.id);
            state.mark_changed();
            if let Some(cluster) = self.cluster.get() {
                cluster.remove_interest(filter);
            }
            true
        } else {
            false
        }
    }

    /// A session for a subscriber inside the process (not a network client): never in the
    /// client map, so no CONNECT can take it over. Release it with [`Router::release`].
    pub fn internal_session(&self, name: &str, flow: Option<usize>) -> Arc<Session> {
        let flow = flow.map(|high_water| Flow {
            high_water,
            limit: high_water.saturating_add(high_water.max(FLOW_OVERSHOOT)),
            space: Notify::new(),
        });
        let session = self.session_with_flow(ByteString::from(name), true, flow);
        session.state.lock().online = true;
        session
    }

    /// Removes an internal session's subscriptions.
    pub fn release(&self, session: &Arc<Session>) {
        self.discard(session);
        // Wakes its forwarder, which sees no subscriptions left and ends, and any
        // publisher waiting for it to drain.
        session.notify.notify_one();
        if let Some(flow) = &session.flow {
            flow.space.notify_waiters();
        }
    }
}

/// Queues a delivery; returns how many messages the session's overflow policy dropped
/// (the first drop of an overflow episode is logged, with the client id).
fn deliver_counting_drops(session: &Session, item: Queued) -> u64 {
    count_drops(session, session.deliver(item))
}

/// How many messages a delivery's outcome dropped, logging the first of an episode.
fn count_drops(session: &Session, outcome: Enqueued) -> u64 {
    match outcome {
        Enqueued::Yes | Enqueued::Skipped => 0,
        Enqueued::Overflowed(n) => n,
        Enqueued::OverflowStarted(n) => {
            let limits = session.state.lock().limits();
            tracing::warn!(
                client_id = %session.client_id,
                max_queued_messages = limits.max_queued,
                max_queued_bytes = limits.max_queued_bytes,
                policy = ?limits.overflow,
                "session queue full: dropping messages until it drains \
                 (the subscriber reads slower than its topics are published)"
            );
            n
        }
    }
}

#[cfg(test)]
mod tests;
