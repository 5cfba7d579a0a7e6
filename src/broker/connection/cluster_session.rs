//! The connection's side of cluster mode's session records (broker/cluster/sessions.rs):
//! what a CONNECT records (its will, authorized now, and its session expiry), the check
//! that a CONNECT racing one on another node did not lose, and what a closed connection
//! leaves in the record. Nothing here runs without `cluster`.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::cluster::{Claim, Closed, RouterCluster, Will};
use crate::broker::router::Qos2Step;
use crate::broker::router::{Held, Session};
use crate::broker::session::StreamMark;
use crate::codec::{Connect, Protocol};

use super::{flow, v5, Close, Connection};

/// A 5.0 will's Will Delay Interval, seconds (0: none, and for 3.1.1).
fn will_delay(connect: &Connect) -> u32 {
    connect
        .will
        .as_ref()
        .and_then(|will| will.properties.as_deref())
        .and_then(|props| props.will_delay_interval)
        .unwrap_or(0)
}

impl Connection {
    /// What this CONNECT records in the cluster: the will goes into the record only if
    /// this client may publish it (asked now), since a survivor of this node publishes
    /// it without the connection.
    pub(super) async fn cluster_claim(&mut self, connect: &Connect) -> Claim {
        let will = match connect.will {
            Some(_) => Box::pin(self.will_message(connect))
                .await
                .map(|msg| Will::of(&msg, will_delay(connect))),
            None => None,
        };
        Claim {
            clean: connect.clean_session,
            will,
            expiry: (connect.protocol == Protocol::V5).then(|| v5::session_expiry(connect)),
        }
    }

    /// After the session was attached: true if a CONNECT on another node claimed the
    /// client id since (this one lost the race), and then this connection lets the
    /// session go here (it is refused, 0x03).
    pub(super) async fn cluster_lost_race(&self, session: &Arc<Session>) -> bool {
        let Some(cluster) = self.router.cluster() else {
            return false;
        };
        if cluster.fenced() {
            // Fenced after this CONNECT was admitted: not listed among the connections
            // to close, so refused here.
            warn!(client_id = %self.client_id, "cluster: CONNECT refused (server unavailable): this node was fenced meanwhile");
            self.router.detach(session, self.conn_id);
            return true;
        }
        if Box::pin(cluster.still_owner(&self.client_id)).await {
            return false;
        }
        info!(client_id = %self.client_id, "cluster: a CONNECT on another node claimed this client id meanwhile: this one is refused (0x03)");
        self.router.detach(session, self.conn_id);
        // A persistent session left offline here belongs to the other node now.
        if let Held::Given(_) = self.router.give_up_session(&self.client_id) {}
        true
    }

    /// Closed by the cluster's fence: remembered for the record it leaves (settled once
    /// the node is back on NATS).
    pub(super) fn cluster_fenced_close(&self) {
        if let Some(cluster) = self.router.cluster() {
            cluster.fenced_client(&self.client_id);
        }
    }

    /// The connection ended: its record follows, unless a takeover ended it (the new
    /// connection's node wrote the record).
    pub(super) async fn cluster_closed(
        &self,
        connect: Option<&Connect>,
        session: &Arc<Session>,
        close: &Close,
    ) {
        let Some(cluster) = self.router.cluster() else {
            return;
        };
        // A fenced node cannot write to NATS; the record keeps what the peers need.
        if matches!(close, Close::Takeover | Close::Fenced) {
            return;
        }
        let expiry = session.state.lock().expiry;
        let closed = if session.clean || expiry == Some(Duration::ZERO) {
            Closed::Ended
        } else {
            let v5 = self.protocol == Protocol::V5;
            // A will still waiting out its delay here stays in the record: if this node
            // dies meanwhile, a survivor publishes it.
            let will_wait = match close {
                Close::Disconnect | Close::Shutdown => None,
                _ if v5 => connect.and_then(|c| flow::will_wait(c, expiry)),
                _ => None,
            };
            Closed::Offline {
                will_delay: will_wait.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
                expiry: v5.then(|| {
                    expiry.map_or(u32::MAX, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                }),
            }
        };
        Box::pin(cluster.session_closed(session, closed)).await;
    }
}

/// Inbound QoS 2 across nodes (broker/cluster/qos2.rs).
impl Connection {
    /// Whether a resent QoS 2 PUBLISH was stored by the cluster already (on the node
    /// this client was connected to before): then it is not routed again.
    pub(super) async fn qos2_stored(&self, pkid: u16) -> bool {
        match self.router.cluster() {
            Some(cluster) => Box::pin(cluster.qos2_stored(&self.client_id, pkid)).await,
            None => false,
        }
    }

    /// A step of a QoS 2 flow, recorded in the cluster before this read's
    /// acknowledgements go out ([`Self::settle_qos2`]).
    /// The mark of the delivery in flight with `pkid` (cluster mode only: a single
    /// node takes no lock for it).
    pub(super) fn delivery_mark(&self, session: &Session, pkid: u16) -> StreamMark {
        if self.router.cluster().is_none() {
            return StreamMark::NONE;
        }
        session.state.lock().delivery_mark(pkid)
    }

    pub(super) fn qos2_event(&mut self, pkid: u16, step: Qos2Step) {
        if self.router.cluster().is_some() {
            self.scratch.cluster_qos2.push((pkid, step));
        }
    }

    pub(super) async fn settle_qos2(&mut self) {
        let events = std::mem::take(&mut self.scratch.cluster_qos2);
        if let Some(cluster) = self.router.cluster() {
            Box::pin(cluster.qos2_settle(&self.client_id, &events)).await;
        }
    }
}
