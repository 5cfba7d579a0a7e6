//! Where persistent sessions and retained messages go when the broker stops, and come
//! from when it starts.
//!
//! While the broker runs, live state is in the router. A store sees it at the edges of a
//! broker's life: `load` at start, `save` at graceful stop. The in-memory store keeps the
//! snapshot in the process, so a broker object that is stopped and started again resumes
//! its clean-session-0 clients; durable stores (SQLite, a Python plugin) implement the
//! same trait.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use crate::codec::QoS;
use crate::session::Message;

/// A message waiting for a session, at the QoS it will be delivered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
}

/// A clean-session-0 session as it is persisted: subscriptions and undelivered messages
/// (unacknowledged inflight ones first, in send order, then the queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub client_id: ByteString,
    pub subscriptions: Vec<(ByteString, QoS)>,
    pub pending: Vec<StoredMessage>,
}

pub trait SessionStore: Send + Sync {
    /// Persistent sessions and retained messages saved last time.
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>);
    /// Replaces what is stored with the broker's current persistent state.
    fn save(&self, sessions: Vec<SessionSnapshot>, retained: Vec<Arc<Message>>);
}

/// Keeps the last snapshot in memory: survives a stop/start of the same broker object,
/// not a process restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: Mutex<(Vec<SessionSnapshot>, Vec<Arc<Message>>)>,
}

impl SessionStore for MemoryStore {
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
        self.saved.lock().clone()
    }

    fn save(&self, sessions: Vec<SessionSnapshot>, retained: Vec<Arc<Message>>) {
        *self.saved.lock() = (sessions, retained);
    }
}
