//! Which session record format every live node reads, so that a cluster can be upgraded
//! one node at a time (record.rs says what each format carries).
//!
//! Each node's liveness key (liveness.rs) holds `up records=N`, N the newest record
//! format it reads. Nodes of the release before format 4 put a bare `up` there, and
//! they never read the value of a liveness key, only its name (`n.<node id>`, listed
//! with the bucket's keys), so the extra field costs them nothing; the key's name
//! stays as it was, since a name they could not parse would make them take this node
//! for dead. A node reads every live node's value at start and at each look at the
//! bucket (`cluster_heartbeat`) and writes session records in the newest format that
//! all of them read ([`super::Record::encode_for`]): format 3 while a node of the
//! previous release is live, format 4 once the last one left. The cost: one read of
//! each other node's key per `cluster_heartbeat`, after the listing the liveness check
//! makes anyway.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::future::join_all;
use tracing::info;

use super::record::{NEWEST, UNADVERTISED};
use super::sessions::bounded;
use super::Cluster;

/// The value of this node's liveness key.
pub(super) fn liveness_value() -> Bytes {
    Bytes::from(format!("up records={NEWEST}"))
}

/// The newest record format a node reads, from its liveness key's value: a value
/// without `records=` is a node of the release before format 4 ([`UNADVERTISED`]), and
/// so is one this node cannot make sense of (the safe side: a format it surely reads).
pub(super) fn advertised(value: &[u8]) -> u8 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .find_map(|field| field.strip_prefix("records="))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(UNADVERTISED)
}

/// The newest format that this node and every node of `formats` read.
pub(super) fn readable_by(formats: &HashMap<u64, u8>) -> u8 {
    formats.values().copied().fold(NEWEST, u8::min)
}

/// The formats the nodes of `keys` (id, liveness key) advertise, one read of each key
/// at once. A key gone since the listing is a node gone: left out.
pub(super) async fn read_formats(
    nodes: &kv::Store,
    keys: Vec<(u64, String)>,
) -> Result<HashMap<u64, u8>, String> {
    let reads = join_all(
        keys.iter()
            .map(|(_, key)| bounded("reading a node's record format", nodes.get(key))),
    )
    .await;
    let mut formats = HashMap::new();
    for ((node, _), read) in keys.into_iter().zip(reads) {
        if let Some(value) = read? {
            formats.insert(node, advertised(&value));
        }
    }
    Ok(formats)
}

impl Cluster {
    /// The newest session record format every live node reads (see the module doc).
    pub(super) fn records_readable(&self) -> u8 {
        self.records_readable.load(Ordering::Relaxed)
    }

    /// Takes in the formats the other live nodes advertise; says when the format
    /// written changes, and which nodes hold it back.
    pub(super) fn note_formats(&self, formats: &HashMap<u64, u8>) {
        let readable = readable_by(formats);
        let before = self.records_readable.swap(readable, Ordering::Relaxed);
        if before == readable {
            return;
        }
        if readable >= NEWEST {
            info!("cluster: every live node reads session record format {readable}: writing it");
        } else {
            let mut older: Vec<String> = formats
                .iter()
                .filter(|&(_, &format)| format == readable)
                .map(|(node, _)| format!("{node:016x}"))
                .collect();
            older.sort();
            info!(
                "cluster: node(s) {} read session records up to format {readable} (an \
                 older pyo3mq): writing that format, without MQTT 5.0 subscription options, \
                 until they are upgraded",
                older.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_values_advertise_the_newest_format() {
        assert_eq!(advertised(&liveness_value()), NEWEST);
        // What nodes of the previous release write.
        assert_eq!(advertised(b"up"), 3);
        assert_eq!(advertised(b"up records=4"), 4);
        assert_eq!(advertised(b"up records=7 more=1"), 7);
        for junk in [
            &b""[..],
            b"records=",
            b"up records=x",
            b"up records=999",
            b"\xff",
        ] {
            assert_eq!(advertised(junk), UNADVERTISED, "{junk:?}");
        }
    }

    #[test]
    fn the_oldest_live_node_sets_the_format() {
        let formats = |pairs: &[(u64, u8)]| pairs.iter().copied().collect::<HashMap<_, _>>();
        // Alone, or with nodes as new: this node's newest.
        assert_eq!(readable_by(&formats(&[])), NEWEST);
        assert_eq!(readable_by(&formats(&[(1, NEWEST), (2, NEWEST)])), NEWEST);
        // One node of the previous release holds every node to format 3.
        assert_eq!(readable_by(&formats(&[(1, NEWEST), (2, 3)])), 3);
        // A newer node does not raise it above what this node writes.
        assert_eq!(readable_by(&formats(&[(1, NEWEST + 1)])), NEWEST);
    }
}
