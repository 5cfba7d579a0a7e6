//! `$SYS`: the broker's own statistics, published as retained messages under
//! `$SYS/broker/...` (the names Mosquitto uses, so existing dashboards work).
//!
//! Counting must not put a shared cache line on the per-message path: each connection
//! counts in plain integers ([`LocalCounters`]) and adds them to the shared atomics once
//! per wake-up, not once per message. Values are published every `sys_interval`, only
//! when they changed, so an idle broker's `$SYS/#` subscribers are not woken for nothing.
//! Clients may subscribe to `$SYS` but not publish there: the topics would lie
//! ([MQTT-4.7.2-1]'s commentary: the server should prevent clients from using `$` topics
//! to exchange messages).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::watch;

use crate::broker::router::{MatchScratch, Router};
use crate::broker::session::Message;
use crate::codec::QoS;

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
}

impl Counters {
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

/// The broker's figures at one moment: what `$SYS/broker/...` publishes, and what
/// Python's `Broker.stats()` returns (under the names below, `/` and ` ` as `_`).
pub fn figures(router: &Router) -> [(&'static str, u64); 12] {
    let (connected, max_connected, total) = router.client_counts();
    let counters = router.counters();
    [
        ("uptime", router.started().elapsed().as_secs()),
        ("clients/connected", connected),
        (
            "clients/disconnected",
            (total as u64).saturating_sub(connected),
        ),
        ("clients/total", total as u64),
        ("clients/maximum", max_connected),
        ("messages/received", counters.messages_received()),
        ("messages/sent", counters.messages_sent()),
        ("messages/dropped", router.dropped_messages()),
        ("bytes/received", counters.bytes_received()),
        ("bytes/sent", counters.bytes_sent()),
        ("subscriptions/count", router.subscription_count() as u64),
        ("retained messages/count", router.retained_count() as u64),
    ]
}

/// The `$SYS/broker/...` values at one moment, as (topic, value) pairs.
pub fn snapshot(router: &Router) -> Vec<(String, String)> {
    let mut values = vec![(
        "$SYS/broker/version".to_string(),
        format!("pyo3mq {}", env!("CARGO_PKG_VERSION")),
    )];
    for (name, value) in figures(router) {
        let text = if name == "uptime" {
            format!("{value} seconds")
        } else {
            value.to_string()
        };
        values.push((format!("$SYS/broker/{name}"), text));
    }
    values
}

/// Publishes the statistics at start, then every `interval`, until shutdown.
pub async fn publish_periodically(
    router: Arc<Router>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: HashMap<String, String> = HashMap::new();
    let mut scratch = MatchScratch::default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (topic, value) in snapshot(&router) {
            if last.get(&topic) == Some(&value) {
                continue;
            }
            let msg = Arc::new(Message {
                topic: ByteString::from(topic.as_str()),
                payload: Bytes::from(value.clone().into_bytes()),
                qos: QoS::AtMostOnce,
                retain: true,
                publisher: ByteString::new(),
            });
            router.publish(msg, &mut scratch);
            // Only in-process subscribers with flow control ever block a publisher, and
            // statistics are not worth waiting for: they are simply newer next time.
            scratch.clear_blocked();
            last.insert(topic, value);
        }
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
