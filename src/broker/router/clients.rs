//! The client registry: which client ids have a session here and which connection owns
//! each, attaching and detaching connections (CleanSession and the MQTT 5.0 Session Expiry
//! Interval), takeover signals and expiring offline sessions. Apart from router.rs because
//! none of it is on the per-message path: it runs once per CONNECT, disconnect or timer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytestring::ByteString;
use tokio::sync::Notify;

use super::{Router, Session};
use crate::broker::parking;

/// How to reach the connection that owns a session, to take it over.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub takeover: Arc<Takeover>,
}

/// The two signals of a takeover, in one small allocation per connection. (They were an
/// `Arc<Notify>` and a `watch` channel, whose shared state holds nine `Notify`s: 392
/// bytes of heap per idle connection, benches/README.md.)
#[derive(Debug, Default)]
pub struct Takeover {
    /// Notified to make the connection close.
    pub kick: Notify,
    /// Set once the connection has fully detached (see [`GoneOnDrop`]).
    gone: AtomicBool,
    gone_changed: Notify,
    /// The key of the connection's park (broker/parking.rs) while it is parked without a
    /// task, else [`parking::NONE`]: a kick must wake it.
    pub parked: AtomicU64,
}

impl Takeover {
    /// Makes the connection close (takeover, shutdown, fencing) or look at its keepalive
    /// deadline (the sweep): `kick` keeps the permit for its loop, and a connection
    /// parked without a task is woken to run that loop.
    pub fn kick_now(&self) {
        self.kick.notify_one();
        // SeqCst against the parking side's store of the key and its look at `kick`
        // after it (connection/park.rs): one of the two sees the other.
        parking::wake(self.parked.load(Ordering::SeqCst));
    }

    /// Waits until the connection has fully detached.
    pub async fn gone(&self) {
        let changed = self.gone_changed.notified();
        tokio::pin!(changed);
        // Registered before the check, so a detach in between is not missed.
        changed.as_mut().enable();
        if !self.gone.load(Ordering::Acquire) {
            changed.await;
        }
    }
}

/// Marks the connection gone when dropped, on every path out of it (as dropping a
/// `watch::Sender` did).
pub struct GoneOnDrop(pub Arc<Takeover>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
        self.0.gone_changed.notify_waiters();
    }
}

#[derive(Debug)]
pub(super) struct ClientSlot {
    pub(super) session: Arc<Session>,
    pub(super) conn: Option<ConnHandle>,
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

impl Router {
    /// Binds a connection to the session of `client_id`, doing CleanSession processing
    /// [MQTT-3.1.2-4], [MQTT-3.1.2-6]. Atomic against concurrent CONNECTs with the same id:
    /// the client map's lock is held from the ownership check to the attach.
    pub fn attach(&self, client_id: &ByteString, clean: bool, conn: ConnHandle) -> Attach {
        self.attach_with(client_id, clean, clean, conn)
    }

    /// [`Router::attach`] for an MQTT 5.0 client, where Clean Start (drop any existing
    /// session, [MQTT-3.1.2-4]) and the Session Expiry Interval (how long the session
    /// outlives the connection, [MQTT-3.1.2-23]) are separate: an interval of 0 ends the
    /// session with the connection, `u32::MAX` never expires it, and anything else
    /// expires it that many seconds after the client went offline
    /// ([`Router::expire_sessions_v5`]).
    pub fn attach_v5(
        &self,
        client_id: &ByteString,
        clean_start: bool,
        expiry: u32,
        conn: ConnHandle,
    ) -> Attach {
        let attach = self.attach_with(client_id, clean_start, expiry == 0, conn);
        if let Attach::Attached { session, .. } = &attach {
            let expiry = Some(self.v5_expiry(expiry));
            let mut state = session.state.lock();
            if state.expiry != expiry {
                // The store keeps the interval (a restart expires the session on time).
                state.expiry = expiry;
                state.mark_changed();
            }
        }
        attach
    }

    /// A Session Expiry Interval of `secs` as the session keeps it (`Duration::MAX`:
    /// never); a finite, non-zero one gives the expiry timer work from now on.
    pub fn v5_expiry(&self, secs: u32) -> Duration {
        if secs != 0 && secs != u32::MAX {
            self.v5_expiring.store(true, Ordering::Relaxed);
        }
        match secs {
            u32::MAX => Duration::MAX,
            secs => Duration::from_secs(u64::from(secs)),
        }
    }

    /// `discard`: drop an existing session first; `clean`: the new session (if one is
    /// made) ends with its connection.
    fn attach_with(
        &self,
        client_id: &ByteString,
        discard: bool,
        clean: bool,
        conn: ConnHandle,
    ) -> Attach {
        let mut clients = self.clients.lock();
        if let Some(slot) = clients.get(client_id) {
            if let Some(owner) = &slot.conn {
                return Attach::Busy(owner.clone());
            }
        }
        let existing = clients.remove(client_id);
        let (session, session_present) = match existing {
            Some(slot) if !discard && !slot.session.clean => (slot.session, true),
            Some(slot) => {
                if !slot.session.clean && self.tracking.load(Ordering::Relaxed) {
                    self.removed.lock().insert(client_id.clone());
                }
                self.discard(&slot.session);
                (self.new_session(client_id.clone(), clean), false)
            }
            None => (self.new_session(client_id.clone(), clean), false),
        };
        {
            let mut state = session.state.lock();
            state.online = true;
            if state.offline_since.take().is_some() {
                // The store keeps when a session went offline; it is online again.
                state.mark_changed();
            }
        }
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

    /// Wakes every attached connection through its takeover signal. Shutdown does this
    /// after setting the shutdown channel: parked connections (connection/park.rs) wait
    /// on this signal rather than on the channel, whose future would cost each of them
    /// 120 bytes; a woken connection sees the channel set and closes for shutdown.
    pub fn kick_all(&self) {
        for slot in self.clients.lock().values() {
            if let Some(conn) = &slot.conn {
                conn.takeover.kick_now();
            }
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
        // A 5.0 client may resume a persistent session with an expiry of 0, or set 0 in
        // its DISCONNECT: the session then ends with this connection.
        let ends = session.clean || session.state.lock().expiry == Some(Duration::ZERO);
        if ends {
            clients.remove(&session.client_id);
            drop(clients);
            self.discard(session);
        } else {
            if let Some(slot) = clients.get_mut(&session.client_id) {
                slot.conn = None;
            }
            let mut state = session.state.lock();
            state.online = false;
            state.offline_since = Some(SystemTime::now());
            // Saved with the session, so expiry counts from it after a restart too.
            state.mark_changed();
        }
    }

    /// Wakes every network client's connection as a takeover would (cluster fencing:
    /// each sees its node fenced and closes itself); bridges are left alone. Returns
    /// how many were woken.
    pub fn kick_connections(&self) -> usize {
        let clients = self.clients.lock();
        let mut kicked = 0;
        for slot in clients.values().filter(|slot| !slot.session.is_bridge()) {
            if let Some(conn) = &slot.conn {
                conn.takeover.kick_now();
                kicked += 1;
            }
        }
        kicked
    }

    /// Whether a connection holds the session of `client_id` now.
    pub fn is_connected(&self, client_id: &ByteString) -> bool {
        self.clients
            .lock()
            .get(client_id)
            .is_some_and(|slot| slot.conn.is_some())
    }

    /// Ends every clean-session-0 session whose client has been offline for `limit` or
    /// longer (`persistent_client_expiration`), with its subscriptions and messages; a
    /// durable store forgets it at its next save. Returns how many ended.
    pub fn expire_offline(&self, limit: Duration) -> usize {
        let why = format!("offline for longer than persistent_client_expiration ({limit:?})");
        self.end_offline_where(&why, |session, now| {
            // A clock set back makes a session younger, never older.
            let since = session.state.lock().offline_since;
            !session.clean
                && since.is_some_and(|t| now.duration_since(t).is_ok_and(|away| away >= limit))
        })
    }

    /// Ends the offline sessions of MQTT 5.0 clients whose Session Expiry Interval has
    /// run out [MQTT-3.1.2-23]; called on a timer, and a no-op until some 5.0 client asked
    /// for a finite, non-zero interval. Returns how many ended.
    pub fn expire_sessions_v5(&self) -> usize {
        if !self.v5_expiring.load(Ordering::Relaxed) {
            return 0;
        }
        self.end_offline_where("its Session Expiry Interval ran out", |session, now| {
            let state = session.state.lock();
            match (state.expiry, state.offline_since) {
                (Some(expiry), Some(since)) => {
                    now.duration_since(since).is_ok_and(|away| away >= expiry)
                }
                _ => false,
            }
        })
    }

    /// Ends every offline session `ended` picks, with its subscriptions and messages; a
    /// durable store forgets it at its next save.
    fn end_offline_where(&self, why: &str, ended: impl Fn(&Session, SystemTime) -> bool) -> usize {
        let now = SystemTime::now();
        let mut clients = self.clients.lock();
        let expired: Vec<ByteString> = clients
            .iter()
            .filter(|(_, slot)| slot.conn.is_none() && ended(&slot.session, now))
            .map(|(id, _)| id.clone())
            .collect();
        for client_id in &expired {
            let Some(slot) = clients.remove(client_id) else {
                continue;
            };
            if self.tracking.load(Ordering::Relaxed) {
                self.removed.lock().insert(client_id.clone());
            }
            self.discard(&slot.session);
            tracing::info!(%client_id, "session expired: {why}");
        }
        expired.len()
    }
}
