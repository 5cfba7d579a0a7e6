//! Cluster mode: a session moving between nodes (src/broker/cluster/sessions.rs). The
//! old node gives the session up, as a clean-session reconnect would end it here, and
//! the new node takes it in as an offline session the client then resumes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytestring::ByteString;

use super::persist::snapshot_of;
use super::{ConnHandle, Router};
use crate::broker::store::{SessionSnapshot, StoredState};

/// What this node holds of a client another node is taking over.
#[derive(Debug)]
pub enum Held {
    /// A connection: close it (kick, wait until it is gone) and ask again.
    Connected(ConnHandle),
    /// An offline persistent session, now removed here: what it held, for the new node.
    Given(SessionSnapshot),
    /// Nothing (or a clean session, which ended with its connection).
    Nothing,
}

impl Router {
    /// Gives up the session of `client_id` for another node: its connection if it has
    /// one, else the persistent session itself, removed from this node (its
    /// subscriptions, queued and inflight messages go in the snapshot).
    pub fn give_up_session(&self, client_id: &ByteString) -> Held {
        let slot = {
            let mut clients = self.clients.lock();
            match clients.get(client_id) {
                None => return Held::Nothing,
                Some(slot) => {
                    if let Some(conn) = &slot.conn {
                        return Held::Connected(conn.clone());
                    }
                }
            }
            match clients.remove(client_id) {
                Some(slot) => slot,
                None => return Held::Nothing,
            }
        };
        let session = &slot.session;
        let snapshot = (!session.clean).then(|| snapshot_of(session, &session.state.lock()));
        if !session.clean && self.tracking.load(Ordering::Relaxed) {
            // The durable store forgets it: the session lives on the other node now.
            self.removed.lock().insert(client_id.clone());
        }
        self.discard(session);
        snapshot.map_or(Held::Nothing, Held::Given)
    }

    /// Takes in a persistent session another node gave up (or the cluster's record of
    /// it), offline, unless this node has a session of that client already. Returns
    /// whether it was taken in.
    pub fn take_in_session(&self, snapshot: SessionSnapshot) -> bool {
        if self.clients.lock().contains_key(&snapshot.client_id) {
            return false;
        }
        let filters: Vec<ByteString> = snapshot
            .subscriptions
            .iter()
            .map(|(filter, _)| filter.clone())
            .filter(|filter| !filter.starts_with(crate::topic::SHARE_PREFIX))
            .collect();
        self.restore(StoredState {
            sessions: vec![snapshot],
            retained: Vec::new(),
        });
        // Restored sessions count in the node's NATS interest like subscribed ones.
        if let Some(cluster) = self.cluster.get() {
            filters
                .iter()
                .for_each(|filter| cluster.add_interest(filter));
        }
        true
    }

    /// The session of `client_id` on this node, if it has one.
    pub fn session_of(&self, client_id: &ByteString) -> Option<Arc<super::Session>> {
        let clients = self.clients.lock();
        clients.get(client_id).map(|slot| slot.session.clone())
    }

    /// The subscriptions of a client's session on this node, if it has one.
    pub fn session_subscriptions(
        &self,
        session: &Arc<super::Session>,
    ) -> Vec<(ByteString, crate::codec::QoS)> {
        session
            .state
            .lock()
            .subscriptions
            .iter()
            .map(|(filter, qos)| (filter.clone(), *qos))
            .collect()
    }
}
