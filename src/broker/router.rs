//! The broker's shared state behind a small API: who is subscribed to what, the retained
//! messages, and which sessions exist and which connection owns each.
//!
//! Routing runs on the publishing connection's task (SurgeMQ's way): it matches the topic
//! in the subscription trie under a read lock and appends the message to each matching
//! session's own queue under that session's own mutex. There is no router thread to
//! become the bottleneck in fan-in, and no lock that every message of every connection
//! takes for writing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

/// Flow control for an in-process subscriber that asked to slow its publishers rather
/// than drop: above `high_water` queued messages, publishers routing to it wait for
/// `space`, which its forwarder signals as it drains.
#[derive(Debug)]
pub struct Flow {
    pub high_water: usize,
    pub space: Notify,
}

use crate::broker::config::Config;
use crate::broker::hooks::{Event, Hooks};
use crate::broker::session::{ChangeTracker, Enqueued, Limits, Message, Queued, SessionState};
use crate::broker::store::{Changes, SessionSnapshot, SessionStore, StoredMessage};
use crate::broker::sys_topics::{self, Counters};
use crate::codec::QoS;
use crate::topic::{self, RetainedTree, SubscriptionTree};

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
    pub flow: Option<Flow>,
}

impl Session {
    /// Queues a delivery and wakes the owning connection. Never blocks on the subscriber:
    /// a full queue costs only this session (its overflow policy applies).
    pub fn deliver(&self, item: Queued) -> Enqueued {
        let outcome = match &self.flow {
            // Never dropped: the publisher waits instead (see `Router::publish`).
            Some(_) => {
                self.state.lock().push_unbounded(item);
                Enqueued::Yes
            }
            None => self.state.lock().enqueue(item),
        };
        if outcome != Enqueued::Skipped {
            self.notify.notify_one();
        }
        outcome
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    qos: QoS,
    session: Arc<Session>,
}

/// How to reach the connection that owns a session, to take it over.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    /// Notified to make the connection close (takeover).
    pub kick: Arc<Notify>,
    /// Its sender is dropped when the connection has fully detached.
    pub gone: watch::Receiver<()>,
}

#[derive(Debug)]
struct ClientSlot {
    session: Arc<Session>,
    conn: Option<ConnHandle>,
}

/// Outcome of [`Router::attach`].
pub enum Attach {
    Attached {
        session: Arc<Session>,
        session_present: bool,
    },
    /// Another connection owns the client id: close it, wait for it to go, try again.
    Busy(ConnHandle),
}

/// Reusable buffers for routing, kept by each publisher so routing does not allocate per
/// message.
#[derive(Debug, Default)]
pub struct MatchScratch {
    matches: Vec<(u64, QoS, Arc<Session>)>,
    /// Flow-controlled subscribers over their high water mark: the publisher waits on
    /// them (see [`MatchScratch::wait_for_space`]) before reading more.
    blocked: Vec<Arc<Session>>,
}

impl MatchScratch {
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
    retained: RwLock<RetainedTree<Arc<Message>>>,
    clients: Mutex<HashMap<ByteString, ClientSlot>>,
    next_id: AtomicU64,
    /// Messages dropped by sessions' overflow policies since start.
    dropped: AtomicU64,
    /// Traffic totals for `$SYS`, fed by the connections in batches.
    counters: Counters,
    /// When the broker started (`$SYS/broker/uptime`).
    started: std::time::Instant,
    /// Network clients attached now, and the most there have been at once.
    connected: AtomicU64,
    max_connected: AtomicU64,
    /// Set when a durable store is saved incrementally: the changes below are recorded.
    tracking: AtomicBool,
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
            retained: RwLock::new(RetainedTree::new()),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            counters: Counters::default(),
            started: std::time::Instant::now(),
            connected: AtomicU64::new(0),
            max_connected: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            removed: Mutex::new(HashSet::new()),
            changed: ChangeTracker::default(),
            retained_changes: Mutex::new(HashMap::new()),
            full_save_due: AtomicBool::new(false),
            saving: Mutex::new(()),
            durable: std::sync::OnceLock::new(),
        }
    }

    /// Makes acknowledgements wait for the store (see [`Router::persisted`]).
    pub fn set_sync_writer(
        &self,
        tx: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<bool>>,
    ) {
        let _ = self.durable.set(tx);
    }

    /// Whether QoS 1/2 acknowledgements wait for the store.
    pub fn is_sync_durable(&self) -> bool {
        self.durable.get().is_some()
    }

    /// Resolves once everything routed before the call is in the durable store: true,
    /// or false if the store could not write it. Commits are grouped: every connection
    /// waiting at the same time shares one write.
    pub async fn persisted(&self) -> bool {
        let Some(tx) = self.durable.get() else {
            return true;
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(done).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// Offers an event to the observer, if one is registered.
    pub fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(sink) = &self.hooks.events {
            sink.event(event());
        }
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
        self.subs.read().len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
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
            flow,
        })
    }

    /// Binds a connection to the session of `client_id`, doing CleanSession processing
    /// [MQTT-3.1.2-4], [MQTT-3.1.2-6]. Atomic against concurrent CONNECTs with the same id:
    /// the client map's lock is held from the ownership check to the attach.
    pub fn attach(&self, client_id: &ByteString, clean: bool, conn: ConnHandle) -> Attach {
        let mut clients = self.clients.lock();
        if let Some(slot) = clients.get(client_id) {
            if let Some(owner) = &slot.conn {
                return Attach::Busy(owner.clone());
            }
        }
        let existing = clients.remove(client_id);
        let (session, session_present) = match existing {
            Some(slot) if !clean && !slot.session.clean => (slot.session, true),
            Some(slot) => {
                if !slot.session.clean && self.tracking.load(Ordering::Relaxed) {
                    self.removed.lock().insert(client_id.clone());
                }
                self.discard(&slot.session);
                (self.new_session(client_id.clone(), clean), false)
            }
            None => (self.new_session(client_id.clone(), clean), false),
        };
        session.state.lock().online = true;
        clients.insert(
            client_id.clone(),
            ClientSlot {
                session: session.clone(),
                conn: Some(conn),
            },
        );
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_connected.fetch_max(now, Ordering::Relaxed);
        Attach::Attached {
            session,
            session_present,
        }
    }

    /// Releases the session when its connection ends. A clean session is discarded with
    /// everything in it; a persistent one stays, offline, and keeps queueing.
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64) {
        let mut clients = self.clients.lock();
        let owned = clients
            .get(&session.client_id)
            .is_some_and(|slot| slot.conn.as_ref().is_some_and(|c| c.conn_id == conn_id));
        if !owned {
            return;
        }
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if session.clean {
            clients.remove(&session.client_id);
            drop(clients);
            self.discard(session);
        } else {
            if let Some(slot) = clients.get_mut(&session.client_id) {
                slot.conn = None;
            }
            session.state.lock().online = false;
        }
    }

    /// Removes a session's subscriptions from the trie and empties it, for good.
    fn discard(&self, session: &Arc<Session>) {
        let mut state = session.state.lock();
        state.ended = true;
        if !state.subscriptions.is_empty() {
            let mut subs = self.subs.write();
            for filter in state.subscriptions.keys() {
                subs.remove(filter, &session.id);
            }
        }
        state.clear();
    }

    /// Routes a message to every matching session at min(published, granted) QoS, one
    /// copy per session at the highest QoS among its matching subscriptions
    /// [MQTT-3.3.5-1], and updates the retained store when RETAIN is set.
    pub fn publish(&self, msg: Arc<Message>, scratch: &mut MatchScratch) {
        if msg.retain {
            let mut retained = self.retained.write();
            let kept = if msg.payload.is_empty() {
                // [MQTT-3.3.1-10], [MQTT-3.3.1-11]: delete, never store an empty message.
                retained.remove(&msg.topic);
                None
            } else {
                retained.insert(&msg.topic, msg.clone());
                Some(msg.clone())
            };
            if self.tracking.load(Ordering::Relaxed) && !sys_topics::is_reserved(&msg.topic) {
                self.retained_changes.lock().insert(msg.topic.clone(), kept);
            }
        }
        {
            let subs = self.subs.read();
            subs.matches(&msg.topic, &mut |id, sub| {
                scratch.matches.push((*id, sub.qos, sub.session.clone()));
            });
        }
        let matches = &mut scratch.matches;
        if matches.len() > 1 {
            // Highest granted QoS first within each session, then keep the first of each.
            matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            matches.dedup_by_key(|entry| entry.0);
        }
        let mut dropped = 0;
        for (_, granted, session) in matches.drain(..) {
            let item = Queued {
                msg: msg.clone(),
                qos: msg.qos.min(granted),
                retain: false,
            };
            dropped += deliver_counting_drops(&session, item);
            if let Some(flow) = &session.flow {
                if session.state.lock().queued_len() >= flow.high_water {
                    scratch.blocked.push(session);
                }
            }
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Adds or replaces a subscription [MQTT-3.8.4-3] and queues the retained messages it
    /// matches with RETAIN=1 [MQTT-3.3.1-6], [MQTT-3.3.1-8]. `Err` names the rule an
    /// invalid filter breaks; the caller answers 0x80.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        qos: QoS,
    ) -> Result<QoS, topic::TopicError> {
        topic::validate_topic_filter(filter)?;
        {
            let mut state = session.state.lock();
            self.subs.write().insert(
                filter,
                session.id,
                Subscriber {
                    qos,
                    session: session.clone(),
                },
            );
            state.subscriptions.insert(filter.clone(), qos);
            state.mark_changed();
        }
        let mut replay = Vec::new();
        self.retained
            .read()
            .matching(filter, &mut |_, msg| replay.push(msg.clone()));
        let mut dropped = 0;
        for msg in replay {
            let qos = msg.qos.min(qos);
            let item = Queued {
                msg,
                qos,
                retain: true,
            };
            dropped += deliver_counting_drops(session, item);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(qos)
    }

    /// Deletes the subscription whose filter equals `filter` character for character
    /// [MQTT-3.10.4-1]; deliveries already under way complete [MQTT-3.10.4-3].
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        let mut state = session.state.lock();
        if state.subscriptions.remove(filter).is_some() {
            self.subs.write().remove(filter, &session.id);
            state.mark_changed();
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

    /// Records changes from now on, for [`Router::persist`]'s partial saves. Called once,
    /// before the store is loaded, by a broker with a durable store.
    pub fn track_changes(&self) {
        self.tracking.store(true, Ordering::Relaxed);
    }

    /// Brings `store` up to date: with change tracking, only what changed since the last
    /// save (so a save costs what the traffic changed, not the whole state); otherwise
    /// (or after a failed save) everything. False if the store failed: then the next call
    /// writes everything again, so nothing recorded is forgotten.
    pub fn persist(&self, store: &dyn SessionStore) -> bool {
        let _one_at_a_time = self.saving.lock();
        let saved = if !self.tracking.load(Ordering::Relaxed)
            || self.full_save_due.load(Ordering::Relaxed)
        {
            self.write_all(store, true)
        } else {
            let changes = self.collect_changes();
            changes.is_empty() || store.save_changes(changes).is_ok()
        };
        self.full_save_due.store(!saved, Ordering::Relaxed);
        saved
    }

    /// Whether changes are recorded (see [`Router::track_changes`]).
    pub fn is_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// What changed since the last save, for a caller that saves it itself; it is then
    /// forgotten here, so a caller that fails to save it must fall back to a full copy.
    pub fn take_changes(&self) -> Changes {
        let _one_at_a_time = self.saving.lock();
        self.collect_changes()
    }

    fn collect_changes(&self) -> Changes {
        // The ended sessions and the changed ones are read under one lock: a session that
        // ends after this is in the next save's `removed`, and its successor (new, so
        // listed as changed) in that save's `sessions`, which the store applies after.
        // Only listed sessions are visited: a save costs what changed, not what exists.
        let (removed_sessions, sessions) = {
            let clients = self.clients.lock();
            let removed = std::mem::take(&mut *self.removed.lock());
            let listed = std::mem::take(&mut *self.changed.lock());
            let changed: Vec<Arc<Session>> = listed
                .iter()
                .filter_map(|id| clients.get(id))
                .filter(|slot| !slot.session.clean)
                .map(|slot| slot.session.clone())
                .collect();
            (removed, changed)
        };
        let sessions = sessions
            .iter()
            .filter_map(|session| {
                let mut state = session.state.lock();
                // An ended session's deletion is in `removed` (this save's or the next).
                (state.take_changed() && !state.ended).then(|| snapshot_of(session, &state))
            })
            .collect();
        let retained = {
            let _tree = self.retained.read();
            std::mem::take(&mut *self.retained_changes.lock())
        };
        Changes {
            removed_sessions: removed_sessions.into_iter().collect(),
            sessions,
            retained: retained.into_iter().collect(),
        }
    }

    /// Writes every persistent session and retained message to `store` (a copy for the
    /// caller: the durable store's change records are left alone).
    pub fn save_to(&self, store: &dyn SessionStore) -> bool {
        self.write_all(store, false)
    }

    /// Writes everything; with `reset`, `store` is the durable store and every change
    /// recorded so far is thereby saved.
    fn write_all(&self, store: &dyn SessionStore, reset: bool) -> bool {
        let sessions: Vec<Arc<Session>> = {
            let clients = self.clients.lock();
            if reset {
                self.removed.lock().clear();
                self.changed.lock().clear();
            }
            clients
                .values()
                .filter(|slot| !slot.session.clean)
                .map(|slot| slot.session.clone())
                .collect()
        };
        let sessions = sessions
            .iter()
            .filter_map(|session| {
                let mut state = session.state.lock();
                if reset {
                    state.take_changed();
                }
                (!state.ended).then(|| snapshot_of(session, &state))
            })
            .collect();
        let mut retained = Vec::new();
        {
            let tree = self.retained.read();
            if reset {
                self.retained_changes.lock().clear();
            }
            // `$SYS` values describe this run; the next one publishes its own.
            tree.for_each(&mut |topic, m| {
                if !sys_topics::is_reserved(topic) {
                    retained.push(m.clone());
                }
            });
        }
        // No lock is held while the store writes: connects and routing go on.
        store.save(sessions, retained).is_ok()
    }

    /// Restores sessions (offline) and retained messages from `store` (on start).
    pub fn load_from(&self, store: &dyn SessionStore) {
        let (sessions, retained) = store.load();
        {
            let mut tree = self.retained.write();
            for msg in retained {
                tree.insert(&msg.topic.clone(), msg);
            }
        }
        let mut clients = self.clients.lock();
        for snap in sessions {
            let session = self.new_session(snap.client_id.clone(), false);
            {
                let mut state = session.state.lock();
                let mut subs = self.subs.write();
                for (filter, qos) in snap.subscriptions {
                    subs.insert(
                        &filter,
                        session.id,
                        Subscriber {
                            qos,
                            session: session.clone(),
                        },
                    );
                    state.subscriptions.insert(filter, qos);
                }
                for m in snap.pending {
                    let item = Queued {
                        msg: m.msg,
                        qos: m.qos,
                        retain: m.retain,
                    };
                    state.restore(item, m.pkid, m.released);
                }
                // As the store has it: nothing to write back.
                state.take_changed();
            }
            clients.insert(
                snap.client_id,
                ClientSlot {
                    session,
                    conn: None,
                },
            );
        }
    }
}

/// Queues a delivery; returns how many messages the session's overflow policy dropped
/// (the first drop of an overflow episode is logged, with the client id).
fn deliver_counting_drops(session: &Session, item: Queued) -> u64 {
    match session.deliver(item) {
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

/// A persistent session as the store keeps it.
fn snapshot_of(session: &Session, state: &SessionState) -> SessionSnapshot {
    SessionSnapshot {
        client_id: session.client_id.clone(),
        subscriptions: state
            .subscriptions
            .iter()
            .map(|(f, q)| (f.clone(), *q))
            .collect(),
        pending: state
            .export()
            .into_iter()
            .map(|(q, pkid, released)| StoredMessage {
                msg: q.msg,
                qos: q.qos,
                retain: q.retain,
                pkid,
                released,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session::Outgoing;
    use crate::broker::store::{MemoryStore, SqliteStore};
    use bytes::Bytes;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Connect client `n` (persistent or clean), replacing its session as MQTT says.
        Connect(u8, bool),
        Subscribe(u8, u8),
        Unsubscribe(u8, u8),
        /// Publish on topic `t/<n>`, retained or not; an empty retained payload clears.
        Publish(u8, bool, bool),
        /// The client takes what it may be sent and acknowledges the first delivery.
        Deliver(u8),
        Disconnect(u8),
        Persist,
        /// A save that the store fails (disk full, say): nothing is written.
        FailedPersist,
    }

    /// A store whose every write fails.
    struct Broken;

    impl SessionStore for Broken {
        fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
            (Vec::new(), Vec::new())
        }
        fn save(&self, _: Vec<SessionSnapshot>, _: Vec<Arc<Message>>) -> Result<(), String> {
            Err("disk full".into())
        }
        fn save_changes(&self, _: Changes) -> Result<(), String> {
            Err("disk full".into())
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, any::<bool>()).prop_map(|(c, p)| Op::Connect(c, p)),
            (0..4u8, 0..3u8).prop_map(|(c, t)| Op::Subscribe(c, t)),
            (0..4u8, 0..3u8).prop_map(|(c, t)| Op::Unsubscribe(c, t)),
            (0..3u8, any::<bool>(), any::<bool>()).prop_map(|(t, r, e)| Op::Publish(t, r, e)),
            (0..4u8).prop_map(Op::Deliver),
            (0..4u8).prop_map(Op::Disconnect),
            Just(Op::Persist),
            Just(Op::FailedPersist),
        ]
    }

    fn sorted(
        (mut sessions, mut retained): (Vec<SessionSnapshot>, Vec<Arc<Message>>),
    ) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for s in &mut sessions {
            s.subscriptions.sort();
            // The store keeps one RETAIN flag per pending message, the delivery's (the
            // one that is sent); the original publish's flag is not used after routing.
            for p in &mut s.pending {
                p.msg = Arc::new(Message {
                    retain: p.retain,
                    ..(*p.msg).clone()
                });
            }
        }
        retained.sort_by(|a, b| a.topic.cmp(&b.topic));
        (sessions, retained)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Partial saves add up to the state: after any mix of connects (with session
        /// replacement), subscriptions, deliveries, acks and retained changes, with saves
        /// (some of which fail) at any points, the SQLite store holds what one full save
        /// would write.
        #[test]
        fn partial_saves_equal_a_full_save(ops in proptest::collection::vec(op(), 1..60)) {
            let path = std::env::temp_dir().join(format!(
                "pyo3mq-partial-{}-{:?}.db",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_file(&path);
            let store = SqliteStore::open(&path.to_string_lossy()).unwrap();
            let router = Router::new(Config::default(), Hooks::default());
            router.track_changes();
            let mut live: HashMap<u8, Arc<Session>> = HashMap::new();
            let mut scratch = MatchScratch::default();
            for op in ops {
                match op {
                    Op::Connect(c, persistent) => {
                        if let Some(old) = live.remove(&c) {
                            router.detach(&old, u64::from(c));
                        }
                        let (_gone_tx, gone) = watch::channel(());
                        let handle = ConnHandle {
                            conn_id: u64::from(c),
                            kick: Arc::new(Notify::new()),
                            gone,
                        };
                        let id = ByteString::from(format!("c{c}"));
                        if let Attach::Attached { session, .. } =
                            router.attach(&id, !persistent, handle)
                        {
                            live.insert(c, session);
                        }
                    }
                    Op::Subscribe(c, t) => {
                        if let Some(s) = live.get(&c) {
                            router
                                .subscribe(s, &ByteString::from(format!("t/{t}")), QoS::AtLeastOnce)
                                .unwrap();
                        }
                    }
                    Op::Unsubscribe(c, t) => {
                        if let Some(s) = live.get(&c) {
                            router.unsubscribe(s, &ByteString::from(format!("t/{t}")));
                        }
                    }
                    Op::Publish(t, retain, empty) => {
                        let payload: &'static [u8] = if empty { b"" } else { b"p" };
                        let msg = Arc::new(Message {
                            topic: ByteString::from(format!("t/{t}")),
                            payload: Bytes::from_static(payload),
                            qos: QoS::AtLeastOnce,
                            retain,
                            publisher: ByteString::from_static("pub"),
                        });
                        router.publish(msg, &mut scratch);
                    }
                    Op::Deliver(c) => {
                        if let Some(s) = live.get(&c) {
                            let mut state = s.state.lock();
                            let mut first = None;
                            while let Some(out) = state.next_outgoing() {
                                if let (None, Outgoing::Publish { pkid: Some(id), .. }) =
                                    (first, &out)
                                {
                                    first = Some(*id);
                                }
                            }
                            if let Some(id) = first {
                                state.on_puback(id);
                            }
                        }
                    }
                    Op::Disconnect(c) => {
                        if let Some(s) = live.remove(&c) {
                            router.detach(&s, u64::from(c));
                        }
                    }
                    Op::Persist => prop_assert!(router.persist(&store)),
                    // False only when there was something to write.
                    Op::FailedPersist => {
                        router.persist(&Broken);
                    }
                }
            }
            prop_assert!(router.persist(&store));
            let full = MemoryStore::default();
            router.save_to(&full);
            prop_assert_eq!(sorted(store.load()), sorted(full.load()));
            drop(store);
            let _ = std::fs::remove_file(&path);
        }
    }
}
