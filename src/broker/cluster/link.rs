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
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::config::Names;
use super::wire;
use super::Cluster;
use crate::broker::router::{MatchScratch, Router};
use crate::topic::SubscriptionTree;

/// Messages from NATS waiting to be routed locally.
const INBOUND_CAPACITY: usize = 4_096;

/// Entries per de-duplication generation.
const SEEN_GENERATION: usize = 65_536;
/// Longest a flush waits for the server's answer.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// The state of the NATS connection, as the client's events tell it.
pub(super) struct Link {
    pub(super) up: AtomicBool,
    pub(super) disconnects: AtomicU64,
}

impl Link {
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
            // Each failed reconnect attempt is one of these: logged once above.
            async_nats::Event::ClientError(e) if !self.up.load(Ordering::Relaxed) => {
                debug!("cluster: NATS: {e}");
            }
            other => warn!("cluster: NATS: {other}"),
        }
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
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel::<(u64, async_nats::Message)>(INBOUND_CAPACITY);
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
                                    Ok(sub) => readers.push(tokio::spawn(forward_copies(id, sub, tx.clone()))),
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
            received = rx.recv() => {
                let Some((id, msg)) = received else { return };
                if !active_ids.contains(&id) {
                    continue;
                }
                let subject = msg.subject;
                let wire = match wire::decode(msg.headers.as_ref(), msg.payload) {
                    Ok(wire) => wire,
                    Err(e) => {
                        cluster.drop_malformed(&subject, &e);
                        continue;
                    }
                };
                if wire.origin == cluster.node {
                    continue;
                }
                let Some(topic) = cluster.names.topic_of(&subject) else {
                    debug!(%subject, "cluster: ignored a subject pyo3mq did not make");
                    continue;
                };
                let mut copies = 0usize;
                active.matches(&topic, &mut |_, _| copies += 1);
                if copies > 1 && !seen.first_copy(wire.origin, wire.seq, copies - 1) {
                    continue;
                }
                // Live deliveries carry RETAIN 0 [MQTT-3.3.1-9] unless the subscription
                // has Retain As Published (the router decides); retained copies reach
                // new subscribers from the mirrored retained tree.
                let retain = wire.retain;
                match wire.message(ByteString::from(topic), retain) {
                    Ok(message) => router.publish_remote(Arc::new(message), &mut scratch),
                    Err(e) => {
                        cluster.drop_malformed(&subject, &e);
                        continue;
                    }
                };
                if scratch.has_blocked() {
                    scratch.wait_for_space().await;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Passes one subscription's messages, in order, to the routing task.
async fn forward_copies(
    id: u64,
    mut sub: async_nats::Subscriber,
    tx: mpsc::Sender<(u64, async_nats::Message)>,
) {
    while let Some(msg) = sub.next().await {
        if tx.send((id, msg)).await.is_err() {
            return;
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
