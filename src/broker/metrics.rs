//! The broker's traffic counters, and the `$SYS` namespace they are published under.
//!
//! Counting must not put a shared cache line on the per-message path: each connection
//! counts in plain integers ([`LocalCounters`]) and adds them to the shared atomics once
//! per wake-up, not once per message. [`super::sys_topics`] publishes them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether `topic` is reserved for the broker: `$SYS` or anything below it.
pub fn is_reserved(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Broker-wide totals, fed by the connections' [`LocalCounters`].
#[derive(Debug, Default)]
pub struct Counters {
    messages_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshakes_failed: AtomicU64,
    ws_upgrades: AtomicU64,
    ws_upgrades_failed: AtomicU64,
}

/// A connection set-up step of a TLS or WebSocket listener, as `$SYS` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    TlsCompleted,
    /// Refused, malformed, timed out or abandoned by the peer.
    TlsFailed,
    WsCompleted,
    WsFailed,
}

impl Counters {
    /// Counted once per connection attempt: set-ups are rare next to messages.
    pub fn handshake(&self, step: Handshake) {
        let counter = match step {
            Handshake::TlsCompleted => &self.tls_handshakes,
            Handshake::TlsFailed => &self.tls_handshakes_failed,
            Handshake::WsCompleted => &self.ws_upgrades,
            Handshake::WsFailed => &self.ws_upgrades_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshakes(&self, step: Handshake) -> u64 {
        let counter = match step {
            Handshake::TlsCompleted => &self.tls_handshakes,
            Handshake::TlsFailed => &self.tls_handshakes_failed,
            Handshake::WsCompleted => &self.ws_upgrades,
            Handshake::WsFailed => &self.ws_upgrades_failed,
        };
        counter.load(Ordering::Relaxed)
    }

    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }

    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }
}

/// One connection's counts since its last flush into [`Counters`].
#[derive(Debug, Default)]
pub struct LocalCounters {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl LocalCounters {
    /// Adds the counts to the totals and starts again from zero.
    pub fn flush_into(&mut self, totals: &Counters) {
        let add = |total: &AtomicU64, n: &mut u64| {
            if *n > 0 {
                total.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        };
        add(&totals.messages_received, &mut self.messages_received);
        add(&totals.messages_sent, &mut self.messages_sent);
        add(&totals.bytes_received, &mut self.bytes_received);
        add(&totals.bytes_sent, &mut self.bytes_sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_topics() {
        for topic in ["$SYS", "$SYS/", "$SYS/broker/uptime"] {
            assert!(is_reserved(topic), "{topic}");
        }
        for topic in ["$SYSX", "$sys/x", "$test/x", "SYS/x", "a/$SYS", "$SY"] {
            assert!(!is_reserved(topic), "{topic}");
        }
    }

    #[test]
    fn local_counters_flush_and_reset() {
        let totals = Counters::default();
        let mut local = LocalCounters {
            messages_received: 3,
            messages_sent: 2,
            bytes_received: 100,
            bytes_sent: 50,
        };
        local.flush_into(&totals);
        local.messages_received = 1;
        local.flush_into(&totals);
        assert_eq!(totals.messages_received(), 4);
        assert_eq!(totals.messages_sent(), 2);
        assert_eq!(totals.bytes_received(), 100);
        assert_eq!(totals.bytes_sent(), 50);
        assert_eq!(local.messages_received + local.bytes_sent, 0);
    }
}
