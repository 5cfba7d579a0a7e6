//! The cluster's names: the NATS subjects and JetStream names of one cluster, node ids,
//! and the oldest NATS server cluster mode works with. The settings and their checks
//! (the `cluster` URLs, `cluster_prefix` and `cluster_node`) are the configuration's
//! (broker/config/cluster.rs).
//!
//! Apart from the tasks because it is plain functions of the settings, with no
//! connection.

use std::time::Duration;

use super::subject;

/// The prefix the subject functions of [`subject`] use, replaced by `cluster_prefix`.
const BASE_PREFIX: &str = "pyo3mq";

/// The oldest NATS server with what cluster mode uses (multi-filter consumers, the
/// stream settings below).
pub(super) const MIN_SERVER: (u64, u64) = (2, 10);

/// How long a node may go without renewing its liveness key before it fences itself: one
/// heartbeat before the others can judge it dead (its key outlives the last renewal by a
/// whole TTL, measured from before that renewal was sent, and they need to see it missing
/// twice, a heartbeat apart), so it has closed its clients by then. The two settings are
/// checked by `config::cluster::check_liveness`.
pub(super) fn fence_after(heartbeat: Duration, ttl: Duration) -> Duration {
    ttl.saturating_sub(heartbeat)
}

/// The NATS subjects and JetStream names of one cluster (`cluster_prefix`).
#[derive(Debug, Clone)]
pub(super) struct Names {
    /// `pyo3mq`, or the configured prefix.
    pub(super) prefix: String,
    /// The prefix upper-cased with `.` as `_`: the start of stream and bucket names.
    base: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            base: prefix.replace('.', "_").to_ascii_uppercase(),
        }
    }

    /// A subject made by [`subject`] (under `pyo3mq.`), under this prefix.
    fn rebase(&self, subject: String) -> String {
        match subject.strip_prefix(BASE_PREFIX) {
            Some(tail) if self.prefix != BASE_PREFIX => format!("{}{tail}", self.prefix),
            _ => subject,
        }
    }

    /// The core NATS subject of a QoS 0 message on `topic`.
    pub(super) fn topic(&self, topic: &str) -> String {
        self.rebase(subject::topic_to_subject(topic))
    }

    pub(super) fn filter(&self, filter: &str) -> Vec<String> {
        subject::filter_to_subjects(filter)
            .into_iter()
            .map(|s| self.rebase(s))
            .collect()
    }

    /// The topic of a core NATS subject, if this cluster made it.
    pub(super) fn topic_of(&self, subject: &str) -> Option<String> {
        if self.prefix == BASE_PREFIX {
            return subject::subject_to_topic(subject);
        }
        let tail = subject.strip_prefix(self.prefix.as_str())?;
        subject::subject_to_topic(&format!("{BASE_PREFIX}{tail}"))
    }

    /// `PREFIX.KIND.t.a.b` for topic `a/b`: the subjects of the streams (`q` QoS 1/2
    /// messages, `r` retained messages).
    pub(super) fn tagged(&self, kind: &str, topic: &str) -> String {
        let subject = subject::topic_to_subject(topic);
        let tail = subject
            .strip_prefix(BASE_PREFIX)
            .unwrap_or(&subject)
            .trim_start_matches('.');
        format!("{}.{kind}.{tail}", self.prefix)
    }

    pub(super) fn untagged(&self, kind: &str, subject: &str) -> Option<String> {
        let tail = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .strip_prefix(kind)?
            .strip_prefix('.')?;
        subject::subject_to_topic(&format!("{BASE_PREFIX}.{tail}"))
    }

    /// Every subject of one stream.
    pub(super) fn all(&self, kind: &str) -> String {
        format!("{}.{kind}.>", self.prefix)
    }

    pub(super) fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.base)
    }
}

/// The id of a named node: FNV-1a of its name, the same in every process and version.
pub(super) fn named_node_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where a node's message sequence starts: the clock, so that a named node restarted
/// (same id) does not reuse the (origin, sequence) pairs of its previous run, which
/// other nodes and the stream's duplicate window remember.
pub(super) fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A node id that differs between processes and starts (std's hasher keys are random).
pub(super) fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    hasher.finish()
}

/// `major.minor` of a server version such as `2.10.22` or `v2.11.0-beta`.
pub(super) fn version_of(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_of("2.10.22"), Some((2, 10)));
        assert_eq!(version_of("v2.11.0-beta.1"), Some((2, 11)));
        assert_eq!(version_of("2.9.25"), Some((2, 9)));
        assert!(version_of("2.9.25").unwrap() < MIN_SERVER);
        assert!(version_of("3.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(version_of("junk"), None);
    }

    #[test]
    fn stream_subjects_round_trip() {
        for prefix in ["pyo3mq", "site-1.mqtt"] {
            let names = Names::new(prefix);
            for topic in ["a/b", "$x/y", "/", "a.b/ c"] {
                for kind in ["q", "r"] {
                    let subject = names.tagged(kind, topic);
                    assert!(
                        subject.starts_with(&format!("{prefix}.{kind}.")),
                        "{subject}"
                    );
                    assert_eq!(names.untagged(kind, &subject).as_deref(), Some(topic));
                }
                let subject = names.topic(topic);
                assert!(subject.starts_with(&format!("{prefix}.")), "{subject}");
                assert_eq!(names.topic_of(&subject).as_deref(), Some(topic));
            }
            assert_eq!(names.untagged("q", &names.tagged("r", "a")), None);
        }
        assert_eq!(
            Names::new("site-1.mqtt").stream("MESSAGES"),
            "SITE-1_MQTT_MESSAGES"
        );
        assert_eq!(Names::new("pyo3mq").stream("RETAINED"), "PYO3MQ_RETAINED");
    }

    #[test]
    fn fence_one_heartbeat_before_the_ttl() {
        let s = Duration::from_secs;
        assert_eq!(fence_after(s(1), s(6)), s(5));
    }

    #[test]
    fn named_node_ids() {
        assert_eq!(named_node_id("node-1"), named_node_id("node-1"));
        assert_ne!(named_node_id("node-1"), named_node_id("node-2"));
    }
}
