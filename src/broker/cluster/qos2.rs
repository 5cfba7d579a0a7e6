//! Exactly once for inbound QoS 2 across nodes: the packet ids a publisher's QoS 2
//! messages were stored under, in a JetStream KV bucket (`PREFIX_QOS2`), from the PUBREC
//! to the PUBREL.
//!
//! A node keeps the ids awaiting PUBREL in the session, so a resent PUBLISH is not
//! routed twice there. When the publisher's node dies after storing a message (its
//! PUBREC sent or not), the publisher resends it, with DUP set and the same packet
//! id, to another node, which has no such id in its session: it looks the id up in the
//! bucket and, if the message was stored there, acknowledges it without routing it
//! again. A key is written once the message is in the stream (a key without its
//! message would make a resend be dropped) and before the PUBREC; it is deleted at the
//! PUBREL, before the PUBCOMP, so the id is free again. Each read of a connection's
//! packets does this in one round of requests, whatever the number of QoS 2 messages
//! in it; only a PUBLISH with DUP set is looked up, a first send never is.
//!
//! Outbound, the same bucket keeps the packet ids of deliveries in their PUBREL stage:
//! written when the subscriber's PUBREC comes (before the PUBREL goes out), with the
//! node and the message's [`StreamMark`] ([`Delivered`]); at its PUBCOMP marked
//! completed, and deleted once the session's checkpoint is past the message
//! (checkpoint.rs). A node taking in the session of a dead node puts the ids not
//! completed back in the session as released deliveries, so the subscriber gets the
//! PUBREL again (and with it, for clients such as paho, hands the message over), and
//! leaves every message named there out of its replay of the stream ([`Taken`]): a
//! message acknowledged with PUBREC never comes again as a PUBLISH, even when the
//! checkpoint was written before the PUBREC. (A node before the checkpoints wrote
//! "1": released, no message named.)
//!
//! Keys outlive a client that never finishes its flow by `cluster_max_age` at most
//! (the bucket's `max_age`, the stream's own limit).

use std::collections::HashSet;
use std::sync::Arc;

use async_nats::jetstream::{consumer, kv, stream};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::join_all;
use futures_util::StreamExt;
use tracing::{debug, warn};

use super::config::Names;
use super::sessions::{bounded, key_of, Record};
use super::{Cluster, Settings, STORE_TIMEOUT};
use crate::broker::router::Qos2Step;
use crate::broker::session::{Message, StreamMark};
use crate::broker::store::StoredMessage;
use crate::codec::QoS;

/// A delivery's value: PUBREC came (PUBCOMP awaited), or PUBCOMP came (kept until the
/// session's checkpoint passed the message).
const RECEIVED: u8 = b'r';
const COMPLETED: u8 = b'c';
const DELIVERED_LEN: usize = 17;

/// A message a client took (PUBREC) on some node: that node, and the message's mark
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Delivered {
    node: u64,
    mark: StreamMark,
}

impl Delivered {
    /// The step and the delivered message of a value (`RECEIVED` and none for the "1"
    /// of older nodes).
    fn read(value: &[u8]) -> (u8, Option<Delivered>) {
        let (Some(&step), Some(node), Some(mark)) = (
            value.first(),
            value.get(1..9).and_then(|b| b.try_into().ok()),
            value.get(9..17).and_then(|b| b.try_into().ok()),
        ) else {
            return (RECEIVED, None);
        };
        let delivered = Delivered {
            node: u64::from_be_bytes(node),
            mark: StreamMark::from_bits(u64::from_be_bytes(mark)),
        };
        (step, Some(delivered))
    }
}

/// The messages a dead node's client had taken (PUBREC) that its last checkpoint may
/// not be past: a replay leaves them out, so none comes again as a new message. By
/// stream sequence (another node's message where it was delivered) or by origin node
/// and sequence (that node's own).
#[derive(Debug, Default)]
pub(super) struct Taken {
    stream: HashSet<u64>,
    origin: HashSet<(u64, u64)>,
}

impl Taken {
    fn add(&mut self, delivered: Delivered) {
        if let Some(seq) = delivered.mark.stream_seq() {
            self.stream.insert(seq);
        } else if let Some(seq) = delivered.mark.own_seq() {
            self.origin.insert((delivered.node, seq));
        }
    }

    /// Whether the stream message `seq`, published on `origin` with its sequence
    /// `origin_seq`, is one of them.
    pub(super) fn has(&self, seq: u64, origin: u64, origin_seq: u64) -> bool {
        self.stream.contains(&seq) || self.origin.contains(&(origin, origin_seq))
    }
}

/// The settings of the bucket of QoS 2 packet ids (created at start if missing).
pub(super) fn bucket_config(names: &Names, config: &Settings) -> kv::Config {
    kv::Config {
        bucket: names.stream("QOS2"),
        description: "pyo3mq: inbound QoS 2 packet ids stored and not yet released".to_string(),
        history: 1,
        max_age: config.cluster_max_age,
        storage: stream::StorageType::File,
        num_replicas: config.cluster_replicas,
        ..Default::default()
    }
}

/// The keys of a client's packet ids: `i.HEX.` for what it publishes, `o.HEX.` for
/// what it is delivered.
fn key_prefix(client_id: &str, outbound: bool) -> String {
    let client = key_of(client_id);
    let hex = client.strip_prefix("c.").unwrap_or(&client);
    format!("{}.{hex}.", if outbound { "o" } else { "i" })
}

/// The key of a publisher's packet id, or of a delivery's.
fn key(client_id: &str, pkid: u16, outbound: bool) -> String {
    format!("{}{pkid}", key_prefix(client_id, outbound))
}

impl Cluster {
    /// Whether a resent (DUP) QoS 2 PUBLISH with `pkid` was stored already, on any
    /// node, and not released since: then it is acknowledged, not routed again. False
    /// when NATS cannot say (the message is routed: at least once).
    pub async fn qos2_stored(&self, client_id: &ByteString, pkid: u16) -> bool {
        if !self.linked() {
            return false;
        }
        match bounded(
            "reading a QoS 2 packet id",
            self.qos2.entry(key(client_id, pkid, false)),
        )
        .await
        {
            Ok(Some(entry)) => entry.operation == kv::Operation::Put,
            Ok(None) => false,
            Err(e) => {
                warn!(%client_id, pkid, "cluster: {e}: the resent QoS 2 message is routed (it may come twice)");
                false
            }
        }
    }

    /// Records the QoS 2 steps of one read, in the order the packets came; the last
    /// step of each key counts. Bounded; a failure costs exactly once only if this node
    /// dies in the middle of that flow.
    pub async fn qos2_settle(&self, client_id: &ByteString, events: &[(u16, Qos2Step)]) {
        if !self.linked() {
            return;
        }
        let mut last: Vec<(String, Qos2Step)> = Vec::with_capacity(events.len());
        for &(pkid, step) in events.iter().rev() {
            let outbound = matches!(step, Qos2Step::Received(_) | Qos2Step::Completed(_));
            let key = key(client_id, pkid, outbound);
            if !last.iter().any(|(seen, _)| *seen == key) {
                last.push((key, step));
            }
        }
        let writes = last.into_iter().map(|(key, step)| async move {
            let pkid = key.rsplit('.').next().unwrap_or_default().to_string();
            let value = match step {
                Qos2Step::Stored => Some(Bytes::from_static(b"1")),
                Qos2Step::Received(mark) => Some(self.delivered(RECEIVED, mark)),
                // Kept until the session's checkpoint is past the message, so a replay
                // from an older one leaves it out (checkpoint.rs).
                Qos2Step::Completed(mark) if mark != StreamMark::NONE => {
                    Some(self.delivered(COMPLETED, mark))
                }
                Qos2Step::Released | Qos2Step::Completed(_) => None,
            };
            let done = match value {
                Some(value) => bounded(
                    "recording a QoS 2 packet id",
                    self.qos2.put(key.clone(), value),
                )
                .await
                .map(|revision| {
                    if let Qos2Step::Completed(mark) = step {
                        self.ticks.completed(client_id, key, revision, mark);
                    }
                }),
                None => bounded("releasing a QoS 2 packet id", self.qos2.delete(key)).await,
            };
            if let Err(e) = done {
                debug!(%client_id, pkid, "cluster: {e}");
                return false;
            }
            true
        });
        let failed = join_all(writes).await.into_iter().filter(|ok| !ok).count();
        if failed > 0 {
            warn!(%client_id, "cluster: {failed} QoS 2 packet id(s) not recorded in NATS: should this node die, that flow may not finish exactly once");
        }
    }

    /// A delivery's value in the bucket: its step, this node and the message's mark.
    fn delivered(&self, step: u8, mark: StreamMark) -> Bytes {
        let mut value = Vec::with_capacity(DELIVERED_LEN);
        value.push(step);
        value.extend_from_slice(&self.node.to_be_bytes());
        value.extend_from_slice(&mark.to_bits().to_be_bytes());
        Bytes::from(value)
    }

    /// The record of a dead node's session, with the deliveries it had in their PUBREL
    /// stage (released, no message: only the PUBREL is sent again), and the messages
    /// of the deliveries its client acknowledged with PUBREC (see [`Taken`]).
    pub(super) async fn with_released(
        &self,
        client_id: &ByteString,
        mut record: Record,
    ) -> (Record, Taken) {
        let mut taken = Taken::default();
        match self.released_deliveries(client_id).await {
            Ok(deliveries) => {
                let mut pkids = Vec::new();
                for (pkid, step, delivered) in deliveries {
                    if let Some(delivered) = delivered {
                        taken.add(delivered);
                    }
                    if step != COMPLETED {
                        pkids.push(pkid);
                    }
                }
                record.pending.splice(
                    0..0,
                    pkids.into_iter().map(|pkid| StoredMessage {
                        msg: Arc::new(Message {
                            topic: ByteString::new(),
                            payload: Bytes::new(),
                            qos: QoS::ExactlyOnce,
                            retain: false,
                            publisher: ByteString::new(),
                            properties: None,
                            mark: crate::broker::session::StreamMark::NONE,
                        }),
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        pkid: Some(pkid),
                        released: true,
                    }),
                );
            }
            Err(e) => {
                warn!(%client_id, "cluster: QoS 2 deliveries awaiting PUBCOMP not read ({e}): their PUBRELs are not sent again");
            }
        }
        (record, taken)
    }

    /// The client's outbound packet ids in their PUBREL stage: the last entry of each
    /// of its keys, read from the bucket's stream (one request when there is none).
    async fn released_deliveries(
        &self,
        client_id: &ByteString,
    ) -> Result<Vec<(u16, u8, Option<Delivered>)>, String> {
        let filter = format!("{}{}*", self.qos2.prefix, key_prefix(client_id, true));
        let mut consumer = bounded(
            "reading QoS 2 deliveries",
            self.qos2
                .stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                    filter_subject: filter,
                    ..Default::default()
                }),
        )
        .await?;
        let mut pending = bounded("reading QoS 2 deliveries", consumer.info())
            .await?
            .num_pending;
        let mut pkids = Vec::new();
        if pending == 0 {
            return Ok(pkids);
        }
        let mut messages = bounded("reading QoS 2 deliveries", consumer.messages()).await?;
        let deadline = tokio::time::Instant::now() + STORE_TIMEOUT;
        while pending > 0 {
            let msg = match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) | Err(_) => return Err("the stream did not answer".to_string()),
            };
            pending = msg.info().map_or(0, |info| info.pending);
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            let pkid = msg.subject.rsplit('.').next().and_then(|p| p.parse().ok());
            if let (false, Some(pkid)) = (deleted, pkid) {
                // "1" (nodes before the checkpoints): a delivery awaiting PUBCOMP.
                let (step, delivered) = Delivered::read(&msg.payload);
                pkids.push((pkid, step, delivered));
            }
        }
        Ok(pkids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_client_and_packet_id() {
        assert_eq!(key("a", 7, false), "i.61.7");
        assert_eq!(key("a", 7, true), "o.61.7");
        assert_eq!(key("", 65535, false), "i._.65535");
        assert_ne!(key("a", 17, false), key("a1", 7, false));
    }
}
