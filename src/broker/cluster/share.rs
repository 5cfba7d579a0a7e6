//! Shared subscriptions across nodes (`$share/GROUP/FILTER`): each message goes to one
//! member of a group cluster-wide, not one per node.
//!
//! A group exists on every node that holds members of it (router/shared.rs), and in
//! cluster mode the router gives a group nothing from its ordinary routing (local
//! publishes, the node's own reading of NATS and of the stream): a group's messages come
//! only through what this module sets up for it, on each node holding members:
//!
//! - QoS 0: a core NATS queue subscription per subject of the filter, in the queue group
//!   `share-<hash of "$share/GROUP/FILTER">`: NATS gives each message to one queue
//!   subscriber of the whole cluster, so to one node, which hands it to one local member
//!   (the router's round robin). These subscriptions are on a second NATS connection, made
//!   without `no_echo`, so a node's own publishes reach its members through NATS like any
//!   other node's: the choice between nodes is always NATS's.
//! - QoS 1/2: a durable JetStream consumer per group (`share-<hash>`, filtered on the
//!   group's subjects in the stream of QoS 1/2 messages), pulled by every node holding
//!   members. JetStream gives each stored message to one puller; the node routes it to
//!   one local member and then acknowledges it. This is one consumer per group, never one
//!   per subscription or per member: a group of thousands of members on ten nodes is one
//!   consumer with ten pullers. No membership table is kept: NATS interest and JetStream's
//!   pullers are the membership, as the routing trie is for plain subscriptions.
//!   The consumer is created by the group's first member on any node and deleted by the
//!   NATS server once no node pulled from it for [`SHARE_CONSUMER_LINGER`] (its inactive
//!   threshold): no node has to know that it held the last member anywhere.
//!
//! Membership changes: while the set of nodes holding a group is stable, each message
//! reaches exactly one member (at QoS 0 at most once). When a node's last member leaves,
//! its queue subscriptions and its pulling stop: a QoS 0 message NATS already handed it
//! is lost (as QoS 0 is while anything moves); a QoS 1/2 message it had pulled and not
//! yet routed is refused (NAK) and JetStream hands it to another node; a QoS 1/2 message
//! it routed is the leaving member's, handed to another local member or dropped with the
//! group as on one node. A node that dies with pulled, unacknowledged messages has them
//! sent to another node after the acknowledgement wait (30 s): at least once, so a member
//! may get again a message routed just before the crash. A group whose members all left
//! keeps its consumer for [`SHARE_CONSUMER_LINGER`]: QoS 1/2 messages published meanwhile
//! go to the next member that joins within it (on one node they would be dropped).
//! While the node is cut off from NATS its groups get nothing, its own publishes
//! included (their way to a group is through NATS); QoS 1/2 ones are delivered from
//! the consumer when NATS is back.
//! Between nodes, NATS chooses (at random for queue subscriptions, whoever pulls first
//! for the consumer), not a strict round robin; within a node it is the router's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::Client;
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::config::named_node_id;
use super::link::round_trip;
use super::{wire, Cluster, ACK_WAIT, INTEREST_TIMEOUT};
use crate::broker::router::{MatchScratch, Router};
use crate::topic;

/// How long a group's consumer outlives the last node pulling from it.
pub(super) const SHARE_CONSUMER_LINGER: Duration = Duration::from_secs(60);

/// The groups this node holds members of, and the changes the share task has not
/// applied yet; a SUBACK waits until they are (see [`Cluster::shares_ready`]).
#[derive(Default)]
pub(super) struct Shares {
    groups: parking_lot::Mutex<(HashSet<ByteString>, HashSet<ByteString>)>,
    changed: Notify,
    requested: AtomicU64,
    applied: watch::Sender<u64>,
}

impl Cluster {
    /// This node now holds a member of the group `filter` (`$share/GROUP/FILTER`).
    pub fn add_share(&self, filter: &ByteString) {
        self.share_changed(filter, true);
    }

    /// This node's last member of the group `filter` left.
    pub fn remove_share(&self, filter: &ByteString) {
        self.share_changed(filter, false);
    }

    fn share_changed(&self, filter: &ByteString, held: bool) {
        let mut groups = self.shares.groups.lock();
        let changed = if held {
            groups.0.insert(filter.clone())
        } else {
            groups.0.remove(filter)
        };
        if changed {
            groups.1.insert(filter.clone());
            self.shares.requested.fetch_add(1, Ordering::Relaxed);
            drop(groups);
            self.shares.changed.notify_one();
        }
    }

    /// Resolves once the groups joined so far are served from NATS (bounded), so that
    /// what any node publishes after the SUBACK reaches the group.
    pub(super) async fn shares_ready(&self) {
        let target = self.shares.requested.load(Ordering::Relaxed);
        let mut applied = self.shares.applied.subscribe();
        let ready =
            tokio::time::timeout(INTEREST_TIMEOUT, applied.wait_for(|&done| done >= target))
                .await
                .is_ok();
        if !ready {
            warn!("cluster: a shared subscription was not in place in NATS within {INTEREST_TIMEOUT:?}; acknowledging it anyway");
        }
    }
}

/// A stable name for a group in NATS: queue group and consumer names allow a few
/// characters only, a `$share/...` filter may hold any.
fn group_key(filter: &str) -> String {
    format!("share-{:016x}", named_node_id(filter))
}

/// Keeps, for each group this node holds members of, its queue subscriptions and the
/// pulling of its consumer; routes what they deliver to the local group.
pub(super) async fn serve_shares(
    client: Client,
    stream: stream::Stream,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    max_ack_pending: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<ByteString, Vec<JoinHandle<()>>> = HashMap::new();
    loop {
        tokio::select! {
            _ = cluster.shares.changed.notified() => {
                let (requested, dirty) = {
                    let mut groups = cluster.shares.groups.lock();
                    (cluster.shares.requested.load(Ordering::Relaxed), std::mem::take(&mut groups.1))
                };
                for filter in dirty {
                    let wanted = cluster.shares.groups.lock().0.contains(&filter);
                    match (wanted, running.contains_key(&filter)) {
                        (true, false) => {
                            let readers = serve_group(&client, &stream, &cluster, &router, &filter, max_ack_pending).await;
                            running.insert(filter, readers);
                        }
                        (false, true) => {
                            for reader in running.remove(&filter).into_iter().flatten() {
                                reader.abort();
                            }
                        }
                        _ => {}
                    }
                }
                // The queue subscriptions are in place once the server answered this.
                round_trip(&client, &cluster.names, cluster.node).await;
                cluster.shares.applied.send_replace(requested);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts serving one group: its queue subscriptions (QoS 0) and its consumer (QoS 1/2).
async fn serve_group(
    client: &Client,
    stream: &stream::Stream,
    cluster: &Arc<Cluster>,
    router: &Arc<Router>,
    filter: &ByteString,
    max_ack_pending: usize,
) -> Vec<JoinHandle<()>> {
    let mut readers = Vec::new();
    let Some(share) = topic::parse_shared(filter).ok().flatten() else {
        return readers;
    };
    let key = group_key(filter);
    let subjects = cluster.names.filter(share.filter);
    for subject in &subjects {
        match client.queue_subscribe(subject.clone(), key.clone()).await {
            Ok(sub) => readers.push(tokio::spawn(read_queue(
                sub,
                filter.clone(),
                cluster.clone(),
                router.clone(),
            ))),
            Err(e) => {
                error!(%filter, "cluster: cannot subscribe to {subject} for a shared subscription: {e}")
            }
        }
    }
    // The same subjects in the stream of QoS 1/2 messages (`PREFIX.q.` + the tail).
    let stored: Vec<String> = subjects
        .iter()
        .filter_map(|s| s.strip_prefix(cluster.names.prefix.as_str()))
        .map(|tail| format!("{}.q{tail}", cluster.names.prefix))
        .collect();
    let config = consumer::pull::Config {
        durable_name: Some(key.clone()),
        description: Some(format!("pyo3mq shared subscription {filter}")),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: i64::try_from(max_ack_pending).unwrap_or(i64::MAX),
        filter_subjects: stored,
        inactive_threshold: SHARE_CONSUMER_LINGER,
        ..Default::default()
    };
    let pulled = match stream
        .get_or_create_consumer::<consumer::pull::Config>(&key, config)
        .await
    {
        Ok(consumer) => consumer
            .stream()
            .max_messages_per_batch(max_ack_pending.clamp(1, 256))
            .messages()
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match pulled {
        Ok(messages) => readers.push(tokio::spawn(read_stored(
            messages,
            filter.clone(),
            cluster.clone(),
            router.clone(),
        ))),
        Err(e) => {
            error!(%filter, "cluster: consumer {key} for a shared subscription: {e}; its QoS 1/2 messages do not reach this node")
        }
    }
    readers
}

/// Routes what one queue subscription of a group delivers (QoS 0) to the local group.
async fn read_queue(
    mut sub: async_nats::Subscriber,
    filter: ByteString,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
) {
    let mut scratch = MatchScratch::default();
    while let Some(msg) = sub.next().await {
        // The node's own messages too: NATS chose this node for them.
        // The publisher's RETAIN flag goes with it: the router keeps it for a member
        // with Retain As Published and clears it for the others, as on one node.
        let message = wire::decode(msg.headers.as_ref(), msg.payload).and_then(|wire| {
            let topic = cluster.names.topic_of(&msg.subject).unwrap_or_default();
            let retain = wire.retain;
            wire.message(ByteString::from(topic), retain)
        });
        match message {
            Ok(message) if !message.topic.is_empty() => {
                router.publish_to_group(&filter, Arc::new(message), &mut scratch);
            }
            Ok(_) => {
                debug!(subject = %msg.subject, "cluster: ignored a subject pyo3mq did not make")
            }
            Err(e) => cluster.drop_malformed(&msg.subject, &e),
        }
        if scratch.has_blocked() {
            scratch.wait_for_space().await;
        }
    }
}

/// Routes what a group's consumer delivers (QoS 1/2) to the local group, acknowledging
/// each message once routed; one the group is no longer here for goes back (NAK) to be
/// given to another node.
async fn read_stored(
    mut messages: consumer::pull::Stream,
    filter: ByteString,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
) {
    let mut scratch = MatchScratch::default();
    let mut failing = false;
    while let Some(next) = messages.next().await {
        let msg = match next {
            Ok(msg) => msg,
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(%filter, "cluster: reading a shared subscription's consumer: {e}");
                }
                continue;
            }
        };
        failing = false;
        let routed = route_stored(&msg, &filter, &cluster, &router, &mut scratch);
        if scratch.has_blocked() {
            scratch.wait_for_space().await;
        }
        let ack = if routed {
            msg.ack().await
        } else {
            msg.ack_with(AckKind::Nak(None)).await
        };
        if let Err(e) = ack {
            debug!("cluster: acknowledging a shared subscription's message failed (it comes again): {e}");
        }
    }
}

/// False when the group has no member here any more (the message goes to another node).
fn route_stored(
    msg: &jetstream::Message,
    filter: &ByteString,
    cluster: &Cluster,
    router: &Router,
    scratch: &mut MatchScratch,
) -> bool {
    let Some(topic) = cluster.names.untagged("q", &msg.subject) else {
        debug!(subject = %msg.subject, "cluster: ignored a stream subject pyo3mq did not make");
        return true;
    };
    // As in [`read_queue`]: the member's Retain As Published decides (the router).
    let message = wire::decode(msg.headers.as_ref(), msg.payload.clone()).and_then(|wire| {
        let retain = wire.retain;
        wire.message(ByteString::from(topic), retain)
    });
    match message {
        Ok(message) => router.publish_to_group(filter, Arc::new(message), scratch),
        Err(e) => {
            cluster.drop_malformed(&msg.subject, &e);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_are_valid_nats_names_and_stable() {
        let key = group_key("$share/g 1/a.b/*/>/#");
        assert_eq!(key.len(), "share-".len() + 16);
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(key, group_key("$share/g 1/a.b/*/>/#"));
        assert_ne!(key, group_key("$share/g 1/a.b/*/>/+"));
    }
}
