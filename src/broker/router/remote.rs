//! Cluster mode as the router sees it: somewhere else that local publishes go to and
//! that wants to know which filters this node's sessions hold. Defined here, on the
//! router's side, and implemented by cluster mode (src/broker/cluster.rs), so that the
//! router does not depend on the cluster: the cluster uses the router (it routes what
//! other nodes publish), never the other way round.
//!
//! Unset (a single node), routing costs one well-predicted check; set, one dynamic call
//! per publish and per subscription change, with no allocation and no lock of the
//! router's.

use std::any::Any;
use std::sync::Arc;

use bytestring::ByteString;

use super::MatchScratch;
use crate::broker::session::{Message, StreamMark};

/// What the router asks of cluster mode. `Any`, so that cluster mode can find its own
/// type behind the router's [`super::Router::cluster_link`].
pub trait ClusterLink: Any + Send + Sync + std::fmt::Debug {
    /// Hands a locally published message to the other nodes. Never waits: a QoS 1/2
    /// message sets `scratch.cluster_pending` (or `cluster_lost` when it could not be
    /// handed over), and the publisher acknowledges once cluster mode says it left.
    /// Marks a QoS 1/2 message with its origin sequence ([`Message::mark`]; a copy if
    /// `msg` is shared) before the router routes it here.
    fn forward(&self, msg: &mut Arc<Message>, scratch: &mut MatchScratch);

    /// The message `forward` marked was routed to this node's sessions (checkpoints
    /// wait for that before they count it as routed).
    fn routed_here(&self);

    /// A session subscribed to `filter` (not a replacement of its own subscription).
    fn add_interest(&self, filter: &ByteString);

    /// A session's subscription to `filter` ended.
    fn remove_interest(&self, filter: &ByteString);

    /// This node's first member of the shared group `filter` (`$share/GROUP/FILTER`)
    /// joined: the group's messages now come through the cluster.
    fn add_share(&self, filter: &ByteString);

    /// This node's last member of the shared group `filter` left.
    fn remove_share(&self, filter: &ByteString);
}

/// What a connection's read did to a QoS 2 flow, which cluster mode records
/// (src/broker/cluster/qos2.rs) before the acknowledgements go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Step {
    /// Inbound: the message is stored (its PUBREC is going out).
    Stored,
    /// Inbound: the publisher's PUBREL came.
    Released,
    /// Outbound: the subscriber's PUBREC came (the PUBREL is going out), for the
    /// message with this mark.
    Received(StreamMark),
    /// Outbound: the subscriber's PUBCOMP came, for the message with this mark.
    Completed(StreamMark),
}
