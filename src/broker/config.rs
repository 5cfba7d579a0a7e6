//! Broker settings: every limit the broker enforces, with production defaults.
//!
//! The same names are used by the Python keyword arguments and the TOML config file, so
//! a setting is documented once (README, "Configuration").

use std::time::Duration;

/// What a session does when its outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the message that does not fit (mosquitto's behaviour). Keeps the oldest
    /// messages, which is what a client resuming a session usually wants first.
    DropNew,
    /// Drop the oldest queued message to make room: the freshest data wins.
    DropOldest,
}

impl OverflowPolicy {
    pub fn parse(name: &str) -> Option<OverflowPolicy> {
        match name {
            "drop_new" => Some(OverflowPolicy::DropNew),
            "drop_oldest" => Some(OverflowPolicy::DropOldest),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Listener URIs, `tcp://HOST:PORT`; port 0 picks a free port.
    pub listeners: Vec<String>,
    /// Largest packet accepted from a client, fixed header included. A larger one closes
    /// that connection before its body is read.
    pub max_packet_size: usize,
    /// Connections served at once; a client over the limit gets CONNACK 0x03.
    pub max_connections: usize,
    /// Outbound QoS 1/2 messages sent but not yet acknowledged, per session.
    pub max_inflight: usize,
    /// Messages waiting to be sent, per session (online or offline).
    pub max_queued_messages: usize,
    /// Topic and payload bytes waiting to be sent, per session; 0 means no byte limit.
    pub max_queued_bytes: usize,
    pub queue_overflow: OverflowPolicy,
    /// Also queue QoS 0 messages for offline clean-session-0 clients (optional in 3.1.1).
    pub queue_qos0_offline: bool,
    /// Time allowed between TCP accept and a complete CONNECT.
    pub connect_timeout: Duration,
    /// Longest client identifier accepted (3.1.1 requires at least 23).
    pub max_client_id_len: usize,
    /// Whether CONNECT with an empty client id and clean session 1 gets a generated id.
    pub allow_zero_length_client_id: bool,
    /// Tokio worker threads; 0 means one per core.
    pub worker_threads: usize,
    /// Longest an authentication or authorization hook may take; then it counts as deny.
    pub auth_timeout: Duration,
    /// How long a connection reuses a publish authorization decision per topic.
    pub acl_cache_ttl: Duration,
    /// A mosquitto_passwd file: when set, clients must present a listed user and password.
    pub password_file: Option<String>,
    /// A mosquitto acl_file: when set, subscriptions and publishes are checked against it.
    pub acl_file: Option<String>,
    /// Where persistent sessions and retained messages live: `memory` or `sqlite:PATH`.
    pub session_store: String,
    /// How often a durable store is brought up to date (a crash loses at most this much);
    /// zero saves only at shutdown.
    pub persist_interval: Duration,
    /// With a durable store: `Sync` holds every QoS 1/2 acknowledgement until the
    /// message is in the store (group commit), so a crash never loses an acknowledged
    /// message; `Interval` relies on `persist_interval`.
    pub durability: Durability,
    /// How often the `$SYS/broker/...` statistics are published; zero disables them.
    pub sys_interval: Duration,
    /// A clean-session-0 client offline for longer than this loses its session
    /// (subscriptions, queued and inflight messages), in the durable store too. `None`
    /// keeps offline sessions forever (Mosquitto's `persistent_client_expiration`).
    pub persistent_client_expiration: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Interval,
    Sync,
}

impl Durability {
    pub fn parse(name: &str) -> Option<Durability> {
        match name {
            "interval" => Some(Durability::Interval),
            "sync" => Some(Durability::Sync),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listeners: vec!["tcp://0.0.0.0:1883".to_string()],
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            max_inflight: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            queue_overflow: OverflowPolicy::DropNew,
            queue_qos0_offline: false,
            connect_timeout: Duration::from_secs(10),
            max_client_id_len: 65_535,
            allow_zero_length_client_id: true,
            worker_threads: 0,
            auth_timeout: Duration::from_secs(5),
            acl_cache_ttl: Duration::from_secs(60),
            password_file: None,
            acl_file: None,
            session_store: "memory".to_string(),
            persist_interval: Duration::from_secs(1),
            durability: Durability::Interval,
            sys_interval: Duration::from_secs(10),
            persistent_client_expiration: None,
        }
    }
}

impl Config {
    /// Checks the values that would make the broker misbehave rather than merely be slow.
    pub fn validate(&self) -> Result<(), String> {
        if self.listeners.is_empty() {
            return Err("at least one listener is required".into());
        }
        if self.max_packet_size < 2 {
            return Err("max_packet_size must be at least 2 bytes".into());
        }
        if self.max_inflight == 0 || self.max_inflight > 65_535 {
            return Err("max_inflight must be between 1 and 65535".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.max_client_id_len < 23 {
            return Err("max_client_id_len must be at least 23 [MQTT-3.1.3-5]".into());
        }
        if self.auth_timeout.is_zero() {
            return Err("auth_timeout must be positive".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be positive".into());
        }
        if self
            .persistent_client_expiration
            .is_some_and(|d| d.is_zero())
        {
            return Err(
                "persistent_client_expiration must be positive (leave it out to keep \
                 offline sessions forever)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Parses a `persistent_client_expiration` as Mosquitto writes it, an integer followed by
/// `h`, `d`, `w`, `m` (a month: 30 days) or `y` (365 days), e.g. `2d`; or a number of
/// seconds (`3600`, `0.5`). Zero means no expiry (`None`).
pub fn parse_expiration(text: &str) -> Result<Option<Duration>, String> {
    const HOUR: u64 = 3600;
    let invalid = || {
        format!(
            "persistent_client_expiration must be a number of seconds or an integer followed \
             by h, d, w, m (month) or y, like '2d', not {text:?}"
        )
    };
    let text = text.trim();
    let unit = match text.chars().last() {
        Some('h') => Some(HOUR),
        Some('d') => Some(24 * HOUR),
        Some('w') => Some(7 * 24 * HOUR),
        Some('m') => Some(30 * 24 * HOUR),
        Some('y') => Some(365 * 24 * HOUR),
        _ => None,
    };
    let duration = match unit {
        Some(unit) => {
            let count = &text[..text.len() - 1];
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let count: u64 = count.parse().map_err(|_| invalid())?;
            Duration::from_secs(count.checked_mul(unit).ok_or_else(invalid)?)
        }
        None => {
            let seconds: f64 = text.parse().map_err(|_| invalid())?;
            Duration::try_from_secs_f64(seconds).map_err(|_| invalid())?
        }
    };
    Ok((!duration.is_zero()).then_some(duration))
}

/// Parses `tcp://HOST:PORT` into a socket address string for `TcpListener::bind`.
pub fn parse_listener(uri: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("tcp://")
        .or_else(|| uri.strip_prefix("mqtt://"))
        .ok_or_else(|| format!("unsupported listener {uri:?}: expected tcp://HOST:PORT"))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("listener {uri:?} has no port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("listener {uri:?} has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        Ok(format!("[{host}]:{port}"))
    } else {
        Ok(format!("{host}:{port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_uris() {
        assert_eq!(parse_listener("tcp://127.0.0.1:0").unwrap(), "127.0.0.1:0");
        assert_eq!(parse_listener("tcp://[::1]:1883").unwrap(), "[::1]:1883");
        assert!(parse_listener("ws://127.0.0.1:1").is_err());
        assert!(parse_listener("tcp://127.0.0.1").is_err());
        assert!(parse_listener("tcp://127.0.0.1:99999").is_err());
    }

    #[test]
    fn expiration_values_as_mosquitto_writes_them() {
        let hour = Duration::from_secs(3600);
        assert_eq!(parse_expiration("1h"), Ok(Some(hour)));
        assert_eq!(parse_expiration("2d"), Ok(Some(48 * hour)));
        assert_eq!(parse_expiration("1w"), Ok(Some(7 * 24 * hour)));
        assert_eq!(parse_expiration("1m"), Ok(Some(30 * 24 * hour)));
        assert_eq!(parse_expiration("1y"), Ok(Some(365 * 24 * hour)));
        assert_eq!(parse_expiration("90"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_expiration("0.5"),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse_expiration("0"), Ok(None));
        assert_eq!(parse_expiration("0d"), Ok(None));
        for bad in [
            "", "h", "1s", "1.5h", "-1", "-1h", "1 h", "+1d", "nan", "inf", "1e400",
        ] {
            assert!(parse_expiration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_expiration("99999999999999999y").is_err(), "overflow");
    }

    #[test]
    fn defaults_are_valid_and_limits_checked() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            max_inflight: 0,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }
}
