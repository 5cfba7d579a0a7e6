//! Cluster mode's settings (`cluster`, `cluster_prefix`, `cluster_node` and the engine
//! connection's) as cluster mode takes them ([`Settings`]), and the checks
//! `Config::validate` makes before any NATS server is reached. Here, with the
//! configuration, so that the configuration does not depend on cluster mode (which uses
//! the router, which reads the configuration); broker/cluster.rs re-exports them.

use std::time::Duration;

use async_nats::ServerAddr;

/// The `cluster*` settings cluster mode runs with, named as the settings are
/// (`Config::cluster_settings` copies them out of the configuration).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub cluster: Option<String>,
    pub cluster_prefix: String,
    pub cluster_node: Option<String>,
    pub cluster_max_bytes: usize,
    pub cluster_max_age: Duration,
    pub cluster_max_ack_pending: usize,
    pub cluster_replicas: usize,
    pub cluster_user: Option<String>,
    pub cluster_password: Option<String>,
    pub cluster_token: Option<String>,
    pub cluster_creds: Option<String>,
    pub cluster_cafile: Option<String>,
    pub cluster_certfile: Option<String>,
    pub cluster_keyfile: Option<String>,
    pub cluster_heartbeat: Duration,
    pub cluster_node_ttl: Duration,
    pub cluster_pending_messages: usize,
}

/// The shortest `cluster_heartbeat`: every node renews its key and lists the bucket this
/// often, so below it the liveness traffic alone would load NATS.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// `cluster_heartbeat` and `cluster_node_ttl`: the TTL must leave a node at least three
/// heartbeats to renew its key (one late or lost renewal is no death), and a node fences
/// itself one heartbeat before its TTL (cluster/config.rs `fence_after`), which must leave
/// it two.
pub fn check_liveness(heartbeat: Duration, ttl: Duration) -> Result<(), String> {
    if heartbeat < MIN_HEARTBEAT {
        return Err(format!(
            "cluster_heartbeat must be at least {} s, not {} s",
            MIN_HEARTBEAT.as_secs_f64(),
            heartbeat.as_secs_f64()
        ));
    }
    if ttl < heartbeat.saturating_mul(3) {
        return Err(format!(
            "cluster_node_ttl must be at least 3 times cluster_heartbeat ({} s), not {} s",
            heartbeat.saturating_mul(3).as_secs_f64(),
            ttl.as_secs_f64()
        ));
    }
    Ok(())
}

/// A `cluster` URL that is not one (`ClusterError::Url` at start).
#[derive(Debug, thiserror::Error)]
#[error("cluster: invalid NATS URL {url:?}: {reason}")]
pub struct UrlError {
    pub url: String,
    pub reason: String,
}

/// Parses the `cluster` setting: comma-separated `nats://` or `tls://` URLs.
pub fn parse_urls(setting: &str) -> Result<Vec<ServerAddr>, UrlError> {
    let mut out = Vec::new();
    for url in setting.split(',').map(str::trim) {
        let invalid = |reason: &str| UrlError {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(invalid("expected nats://HOST:PORT or tls://HOST:PORT"));
        }
        out.push(
            url.parse()
                .map_err(|e: std::io::Error| invalid(&e.to_string()))?,
        );
    }
    Ok(out)
}

/// `cluster_prefix` and `cluster_node` are used in subjects and JetStream names: dot
/// separated tokens of letters, digits, `_` and `-` (no wildcards, no spaces).
pub fn check_names(prefix: &str, node: Option<&str>) -> Result<(), String> {
    let token_ok = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if prefix.len() > 64 || !prefix.split('.').all(token_ok) {
        return Err(format!(
            "cluster_prefix must be dot-separated tokens of letters, digits, '_' and '-' \
             (at most 64 characters), not {prefix:?}"
        ));
    }
    if let Some(node) = node {
        if node.len() > 64 || !token_ok(node) {
            return Err(format!(
                "cluster_node must be letters, digits, '_' and '-' (at most 64 \
                 characters), not {node:?}"
            ));
        }
    }
    Ok(())
}

/// Settings that need each other (no file is read).
pub fn check_connection(config: &Settings) -> Result<(), String> {
    if config.cluster_user.is_some() != config.cluster_password.is_some() {
        return Err("cluster_user and cluster_password go together: set both or neither".into());
    }
    if config.cluster_certfile.is_some() != config.cluster_keyfile.is_some() {
        return Err("cluster_certfile and cluster_keyfile go together: set both or neither".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_settings_are_checked() {
        let s = Duration::from_secs;
        assert!(check_liveness(s(1), s(6)).is_ok());
        assert!(check_liveness(s(1), s(3)).is_ok());
        assert!(check_liveness(Duration::from_millis(100), Duration::from_millis(300)).is_ok());
        let err = check_liveness(s(1), Duration::from_millis(2999)).unwrap_err();
        assert!(
            err.contains("cluster_node_ttl must be at least 3 times"),
            "{err}"
        );
        let err = check_liveness(Duration::from_millis(99), s(6)).unwrap_err();
        assert!(err.contains("cluster_heartbeat must be at least"), "{err}");
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_urls("nats://127.0.0.1:4222, nats://127.0.0.1:4223")
                .unwrap()
                .len(),
            2
        );
        assert!(parse_urls("127.0.0.1:4222").is_err());
        assert!(parse_urls("http://x:1").is_err());
        assert!(parse_urls("").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_names("pyo3mq", None).is_ok());
        assert!(check_names("site-1.mqtt_x", Some("node-1")).is_ok());
        for bad in ["", "a..b", "a.*", "a b", "a.>", ".a"] {
            assert!(check_names(bad, None).is_err(), "{bad}");
        }
        for bad in ["", "a.b", "a b", "*"] {
            assert!(check_names("pyo3mq", Some(bad)).is_err(), "{bad}");
        }
    }
}
