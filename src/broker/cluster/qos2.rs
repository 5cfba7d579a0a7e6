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
//! Keys outlive a publisher that never sends the PUBREL by `cluster_max_age` at most
//! (the bucket's `max_age`, the stream's own limit).

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::join_all;
use tracing::{debug, warn};

use super::config::Names;
use super::sessions::{bounded, key_of};
use super::{Cluster, ClusterError};
use crate::broker::config::Config;

/// The bucket of QoS 2 packet ids (created if missing).
pub(super) async fn bucket(
    js: &jetstream::Context,
    names: &Names,
    config: &Config,
) -> Result<kv::Store, ClusterError> {
    let name = names.stream("QOS2");
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        description: "pyo3mq: inbound QoS 2 packet ids stored and not yet released".to_string(),
        history: 1,
        max_age: config.cluster_max_age,
        storage: stream::StorageType::File,
        num_replicas: config.cluster_replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::Stream(format!("bucket {name}: {e}")))
}

/// The key of a publisher's packet id.
fn key(client_id: &str, pkid: u16) -> String {
    format!("{}.{pkid}", key_of(client_id))
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
            self.qos2.entry(key(client_id, pkid)),
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

    /// Records the QoS 2 packet ids of messages now stored (`true`) and removes the
    /// released ones (`false`), in the order the packets came; the last of each id
    /// counts. Bounded; a failure costs exactly once only if this node dies before the
    /// PUBREL.
    pub async fn qos2_settle(&self, client_id: &ByteString, events: &[(u16, bool)]) {
        if !self.linked() {
            return;
        }
        let mut last: Vec<(u16, bool)> = Vec::with_capacity(events.len());
        for &(pkid, stored) in events.iter().rev() {
            if !last.iter().any(|(seen, _)| *seen == pkid) {
                last.push((pkid, stored));
            }
        }
        let writes = last.into_iter().map(|(pkid, stored)| async move {
            let key = key(client_id, pkid);
            let done = if stored {
                bounded(
                    "recording a QoS 2 packet id",
                    self.qos2.put(key, Bytes::from_static(b"1")),
                )
                .await
                .map(|_| ())
            } else {
                bounded("releasing a QoS 2 packet id", self.qos2.delete(key)).await
            };
            if let Err(e) = done {
                debug!(%client_id, pkid, "cluster: {e}");
                return false;
            }
            true
        });
        let failed = join_all(writes).await.into_iter().filter(|ok| !ok).count();
        if failed > 0 {
            warn!(%client_id, "cluster: {failed} QoS 2 packet id(s) not recorded in NATS: a resend on another node after this one died could come twice");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_client_and_packet_id() {
        assert_eq!(key("a", 7), "c.61.7");
        assert_eq!(key("", 65535), "c._.65535");
        assert_ne!(key("a", 17), key("a1", 7));
    }
}
