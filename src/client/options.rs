//! What a client connects with, its limits, and its reconnect policy.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{self, LastWill, Packet, Protocol};
use crate::topic as topics;

use super::runtime::random_u64;
use super::v5::V5Options;

mod transport;

pub use transport::{Scheme, TlsOptions, TlsVersions, TransportOptions, Verify};

/// How to retry a connection that failed or was lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reconnect {
    /// Delay before the first retry; it doubles per failed attempt.
    pub initial_delay: Duration,
    /// Cap of the delay.
    pub max_delay: Duration,
    /// Retries per outage (and after a failed first connect) before the client gives up
    /// and closes; `None` = forever.
    pub max_attempts: Option<u32>,
}

impl Reconnect {
    /// The delay before retry number `attempt` (0-based): exponential, capped, jittered.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let factor = 2f64.powi(i32::try_from(attempt.min(30)).unwrap_or(30));
        let base = (self.initial_delay.as_secs_f64() * factor).min(self.max_delay.as_secs_f64());
        // Jitter in [0.5, 1.0) of the delay, so that clients that lost the same server do
        // not all come back at the same instant.
        let jitter = 0.5 + (random_u64() >> 11) as f64 / (1u64 << 54) as f64;
        Duration::try_from_secs_f64(base * jitter).unwrap_or(self.max_delay)
    }
}

/// Everything a client needs to connect, plus its limits.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub clean_session: bool,
    /// Seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<LastWill>,
    pub protocol: Protocol,
    /// TCP connect plus CONNACK, per attempt; also bounds a graceful disconnect.
    pub connect_timeout: Duration,
    /// Outgoing QoS 1/2 publishes sent and not yet acknowledged (1-65535).
    pub max_inflight: usize,
    /// Bytes of encoded packets plus publishes waiting for the window, before publishing
    /// reports [`Submitted::Full`](super::Submitted::Full).
    pub max_buffered: usize,
    /// Received messages not yet taken by the application.
    pub max_incoming: usize,
    /// Largest packet accepted from the server, fixed header included.
    pub max_packet_size: usize,
    pub reconnect: Option<Reconnect>,
    /// A SQLite file keeping the session's unacknowledged outgoing QoS 1/2 publishes and
    /// inbound QoS 2 ids across processes (needs `clean_session = false` and a client id).
    pub session_store: Option<PathBuf>,
    /// TCP (the default), TLS, WebSocket or secure WebSocket, and their settings.
    pub transport: TransportOptions,
    /// MQTT 5.0 CONNECT settings (used with `protocol` V5 only).
    pub v5: V5Options,
}

impl Options {
    /// Checks the options and fills in a client id for MQTT 3.1, which requires one.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("hostname must not be empty".into());
        }
        if self.client_id.len() > codec::MAX_STRING_LEN {
            return Err("client_id is longer than 65,535 bytes".into());
        }
        if self.session_store.is_some() && (self.clean_session || self.client_id.is_empty()) {
            return Err(
                "a session store keeps a persistent session: it needs clean_session=False and \
                 a client id"
                    .into(),
            );
        }
        if self.client_id.is_empty() {
            // 5.0 lets the server assign an id whatever Clean Start says (3.1.3.1).
            if !self.clean_session && self.protocol != Protocol::V5 {
                return Err(
                    "[MQTT-3.1.3-7] a client with an empty client_id must use clean_session=True"
                        .into(),
                );
            }
            if self.protocol == Protocol::V31 {
                // 3.1 requires 1-23 characters; 7 + 16 = 23.
                self.client_id = format!("pyo3mq-{:016x}", random_u64());
            }
        }
        // 5.0 allows a password without a user name [MQTT-3.1.2-19].
        if self.password.is_some() && self.username.is_none() && self.protocol != Protocol::V5 {
            return Err("[MQTT-3.1.2-22] a password needs a username".into());
        }
        if let Some(will) = &self.will {
            topics::validate_topic_name(&will.topic).map_err(|e| format!("will topic: {e}"))?;
            if will.payload.len() > codec::MAX_STRING_LEN {
                return Err("will payload is longer than 65,535 bytes".into());
            }
        }
        if !(1..=65_535).contains(&self.max_inflight) {
            return Err("max_inflight must be between 1 and 65535".into());
        }
        if self.max_buffered == 0 || self.max_incoming == 0 {
            return Err("max_buffered_bytes and max_queued_incoming must be positive".into());
        }
        if self.max_packet_size < 2 {
            return Err("max_packet_size must be at least 2".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("timeout must be positive".into());
        }
        if let Some(r) = &self.reconnect {
            if r.initial_delay > r.max_delay {
                return Err("reconnect initial_delay must not exceed max_delay".into());
            }
        }
        Ok(())
    }

    pub(crate) fn connect_packet(&self) -> Packet {
        Packet::Connect(Box::new(codec::Connect {
            protocol: self.protocol,
            clean_session: self.clean_session,
            keep_alive: self.keep_alive,
            client_id: ByteString::from(self.client_id.as_str()),
            will: self.will.clone(),
            username: self.username.as_deref().map(ByteString::from),
            password: self.password.clone(),
            properties: if self.protocol == Protocol::V5 {
                self.v5.connect_properties(self.max_packet_size)
            } else {
                None
            },
        }))
    }
}

#[cfg(test)]
impl Options {
    /// Options for tests: a client on 127.0.0.1:`port`, keepalive off, small limits.
    pub(crate) fn for_tests(port: u16, reconnect: Option<Reconnect>) -> Options {
        Options {
            host: "127.0.0.1".into(),
            port,
            client_id: "event-loop-test".into(),
            clean_session: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            protocol: Protocol::V311,
            connect_timeout: Duration::from_secs(5),
            max_inflight: 8,
            max_buffered: 1 << 16,
            max_incoming: 8,
            max_packet_size: 1 << 16,
            reconnect,
            session_store: None,
            transport: Default::default(),
            v5: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            clean_session: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            protocol: Protocol::V311,
            connect_timeout: Duration::from_secs(10),
            max_inflight: 64,
            max_buffered: 1 << 20,
            max_incoming: 100,
            max_packet_size: 1 << 20,
            reconnect: None,
            session_store: None,
            transport: TransportOptions::default(),
            v5: V5Options::default(),
        }
    }

    #[test]
    fn v31_gets_a_generated_client_id_of_23_characters() {
        let mut o = options();
        o.protocol = Protocol::V31;
        o.validate().unwrap();
        assert_eq!(o.client_id.len(), 23);
        assert!(o.client_id.starts_with("pyo3mq-"));
    }

    #[test]
    fn rules_are_named() {
        let mut o = options();
        o.clean_session = false;
        assert!(o.validate().unwrap_err().contains("[MQTT-3.1.3-7]"));
        let mut o = options();
        o.password = Some(Bytes::from_static(b"pw"));
        assert!(o.validate().unwrap_err().contains("[MQTT-3.1.2-22]"));
        let mut o = options();
        o.reconnect = Some(Reconnect {
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        });
        assert!(o.validate().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let policy = Reconnect {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        };
        for (attempt, base_ms) in [(0u32, 100u64), (1, 200), (2, 400), (3, 800), (9, 1000)] {
            let d = policy.delay(attempt);
            let base = Duration::from_millis(base_ms);
            assert!(d >= base / 2 && d < base, "attempt {attempt}: {d:?}");
        }
    }
}
