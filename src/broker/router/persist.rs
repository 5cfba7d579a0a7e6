//! Persistence: which sessions and retained topics changed since the last save, saving
//! them (periodically, as a group commit with `durability = "sync"`, at stop) and loading
//! the store at start. The router records changes as it routes; this side takes them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytestring::ByteString;

use super::{ClientSlot, Router, Session, Subscriber};
use crate::broker::metrics;
use crate::broker::session::Queued;
use crate::broker::session::SessionState;
use crate::broker::store::{Changes, SessionSnapshot, SessionStore, StoredMessage, StoredState};

impl Router {
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
        let started = std::time::Instant::now();
        let saved = if !self.tracking.load(Ordering::Relaxed)
            || self.full_save_due.load(Ordering::Relaxed)
        {
            self.write_all(store, true)
        } else {
            let changes = self.collect_changes();
            if changes.is_empty() {
                // Nothing written: not a commit.
                return true;
            }
            store.save_changes(changes).is_ok()
        };
        self.counters().store_committed(started.elapsed(), saved);
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
                if !metrics::is_reserved(topic) {
                    retained.push(m.clone());
                }
            });
        }
        // No lock is held while the store writes: connects and routing go on.
        store.save(StoredState { sessions, retained }).is_ok()
    }

    /// Restores sessions (offline) and retained messages a store loaded (on start; the
    /// server refuses to start when the store cannot be read, so this never sees a
    /// partial state).
    pub fn restore(&self, state: StoredState) {
        let StoredState { sessions, retained } = state;
        {
            let mut tree = self.retained.write();
            for msg in retained {
                tree.insert(&msg.topic.clone(), msg);
            }
        }
        let mut clients = self.clients.lock();
        for snap in sessions {
            let session = self.new_session(snap.client_id.clone(), false);
            let opts_of = |filter: &ByteString| {
                snap.subscription_options
                    .iter()
                    .find(|(f, _)| f == filter)
                    .map_or(super::SubOpts::default(), |(_, opts)| *opts)
            };
            let subscriptions: Vec<_> = snap
                .subscriptions
                .into_iter()
                .map(|(filter, qos)| {
                    let opts = opts_of(&filter);
                    (filter, qos, opts)
                })
                .collect();
            let (shared, plain): (Vec<_>, Vec<_>) = subscriptions
                .into_iter()
                .partition(|(filter, _, _)| filter.starts_with(crate::topic::SHARE_PREFIX));
            // Joined with the session unlocked (the groups' lock order), before the state
            // is marked as the store has it below.
            for (filter, qos, opts) in shared {
                match crate::topic::parse_shared(&filter) {
                    Ok(Some(share)) => self.join_group(&session, &filter, share, qos, opts),
                    // Only valid filters are ever subscribed; a store edited by hand is not
                    // trusted with an invalid one.
                    _ => tracing::warn!(
                        client_id = %snap.client_id,
                        "stored shared subscription {filter:?} is not valid: ignored"
                    ),
                }
            }
            {
                let mut state = session.state.lock();
                let mut subs = self.subs.write();
                for (filter, qos, opts) in plain {
                    subs.insert(
                        &filter,
                        session.id,
                        Subscriber {
                            qos,
                            opts,
                            session: session.clone(),
                        },
                    );
                    state.set_sub_opts(&filter, opts);
                    state.subscriptions.insert(filter, qos);
                }
                for m in snap.pending {
                    let item = Queued {
                        msg: m.msg,
                        qos: m.qos,
                        retain: m.retain,
                        // Not stored: after a restart a member keeps what it held.
                        share: None,
                    };
                    state.restore(item, m.pkid, m.released);
                }
                // As the store has it: nothing to write back...
                state.take_changed();
                // ...unless it does not say when the client went offline (it was online
                // at a crash, or the store keeps no time): expiry counts from now, and the
                // store learns it, so the next start does not count from then again.
                state.offline_since = snap
                    .disconnected_at
                    .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
                if state.offline_since.is_none() {
                    state.offline_since = Some(SystemTime::now());
                    state.mark_changed();
                }
                // An MQTT 5.0 session expires on its own interval, also after a restart
                // (counted from `offline_since`, which the store keeps too).
                if let Some(secs) = snap.session_expiry {
                    state.expiry = Some(self.v5_expiry(secs));
                }
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

/// A persistent session as the store keeps it.
pub(super) fn snapshot_of(session: &Session, state: &SessionState) -> SessionSnapshot {
    SessionSnapshot {
        client_id: session.client_id.clone(),
        disconnected_at: state
            .offline_since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        session_expiry: state
            .expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        subscriptions: state
            .subscriptions
            .iter()
            .map(|(f, q)| (f.clone(), *q))
            .collect(),
        subscription_options: state
            .sub_opts_iter()
            .map(|(f, opts)| (f.clone(), opts))
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
    // The router's own names (its private imports included), as when these tests lived
    // in router.rs: they drive routing and persistence together.
    use super::super::*;
    use super::*;
    use crate::broker::session::Outgoing;
    use crate::broker::store::{MemoryStore, SqliteStore, StoreError};
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
        /// `persistent_client_expiration` ends every offline session.
        Expire,
        /// A save that the store fails (disk full, say): nothing is written.
        FailedPersist,
    }

    /// A store whose every write fails.
    struct Broken;

    impl SessionStore for Broken {
        fn load(&self) -> Result<StoredState, StoreError> {
            Ok(StoredState::default())
        }
        fn save(&self, _: StoredState) -> Result<(), StoreError> {
            Err(disk_full())
        }
        fn save_changes(&self, _: Changes) -> Result<(), StoreError> {
            Err(disk_full())
        }
    }

    fn disk_full() -> StoreError {
        StoreError::Write {
            path: "broken.db".into(),
            source: Box::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )),
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
            Just(Op::Expire),
            Just(Op::FailedPersist),
        ]
    }

    fn sorted(state: StoredState) -> StoredState {
        let StoredState {
            mut sessions,
            mut retained,
        } = state;
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        for s in &mut sessions {
            s.subscriptions.sort();
            s.subscription_options.sort_by(|a, b| a.0.cmp(&b.0));
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
        StoredState { sessions, retained }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Partial saves add up to the state: after any mix of connects (with session
        /// replacement), subscriptions, deliveries, acks, expiry and retained changes, with saves
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
            let store = SqliteStore::open(&path).unwrap();
            prop_assert_eq!(store.load().unwrap(), StoredState::default());
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
                        let handle = ConnHandle {
                            conn_id: u64::from(c),
                            takeover: Arc::default(),
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
                            properties: None,
                            mark: crate::broker::session::StreamMark::NONE,
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
                    Op::Expire => {
                        router.expire_offline(std::time::Duration::ZERO);
                    }
                    // False only when there was something to write.
                    Op::FailedPersist => {
                        router.persist(&Broken);
                    }
                }
            }
            prop_assert!(router.persist(&store));
            let full = MemoryStore::default();
            router.save_to(&full);
            prop_assert_eq!(sorted(store.load().unwrap()), sorted(full.load().unwrap()));
            drop(store);
            let _ = std::fs::remove_file(&path);
        }
    }
}
