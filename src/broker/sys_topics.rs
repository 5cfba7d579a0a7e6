//! `$SYS`: the broker's own statistics, published as retained messages under
//! `$SYS/broker/...` (the names Mosquitto uses, so existing dashboards work), plus the
//! figures Mosquitto has no name for under `$SYS/broker/pyo3mq/...` (see [`OWN`]).
//!
//! The counters themselves are in [`super::metrics`]. Values are published every
//! `sys_interval`, only when they changed, so an idle broker's `$SYS/#` subscribers are not woken for nothing.
//! Clients may subscribe to `$SYS` but not publish there: the topics would lie
//! ([MQTT-4.7.2-1]'s commentary: the server should prevent clients from using `$` topics
//! to exchange messages).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::watch;

use crate::broker::cluster::RouterCluster;
use crate::broker::config::ListenerKind;
use crate::broker::metrics::Handshake;
use crate::broker::router::{MatchScratch, Router};
use crate::broker::session::Message;
use crate::codec::QoS;

/// The broker's figures at one moment: what `$SYS/broker/...` publishes, and what
/// Python's `Broker.stats()` returns (under the names below, `/` and ` ` as `_`). The
/// TLS handshake and WebSocket upgrade counts are there when such a listener is.
pub fn figures(router: &Router) -> Vec<(&'static str, u64)> {
    let (connected, max_connected, total) = router.client_counts();
    let counters = router.counters();
    let mut figures = vec![
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
        ("publish/messages/dropped", router.dropped_messages()),
        ("bytes/received", counters.bytes_received()),
        ("bytes/sent", counters.bytes_sent()),
        ("subscriptions/count", router.subscription_count() as u64),
        ("retained messages/count", router.retained_count() as u64),
    ];
    let kinds: Vec<ListenerKind> = router
        .config()
        .listener_specs()
        .map(|specs| specs.into_iter().map(|s| s.kind).collect())
        .unwrap_or_default();
    let tls = kinds.iter().any(ListenerKind::is_tls);
    let ws = kinds
        .iter()
        .any(|k| matches!(k, ListenerKind::Ws(_) | ListenerKind::Wss(_)));
    // Each handshake counter, shown only when the broker has a listener of its kind.
    let handshakes = [
        (tls, "tls/handshakes", Handshake::TlsCompleted),
        (tls, "tls/handshakes/failed", Handshake::TlsFailed),
        (ws, "websockets/upgrades", Handshake::WsCompleted),
        (ws, "websockets/upgrades/failed", Handshake::WsFailed),
    ];
    for (shown, name, handshake) in handshakes {
        if shown {
            figures.push((name, counters.handshakes(handshake)));
        }
    }
    if let Some(cluster) = router.cluster() {
        figures.extend(cluster.figures());
    }
    figures
}

/// pyo3mq's own `$SYS` figures, apart from Mosquitto's names so that a dashboard made
/// for Mosquitto never meets a name it does not know under them: events for the
/// observers (`on_connect`, ...) that a full event queue dropped (`events_dropped` in
/// `Broker.stats()`, `pyo3mq_events_dropped_total` in Prometheus).
pub const OWN: [&str; 1] = ["$SYS/broker/pyo3mq/events/dropped"];

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
    let [events_dropped] = OWN;
    values.push((
        events_dropped.to_string(),
        router.events_dropped().to_string(),
    ));
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
                properties: None,
                mark: crate::broker::session::StreamMark::NONE,
            });
            router.publish(msg, &mut scratch);
            // Only in-process subscribers with flow control ever block a publisher, and
            // statistics are not worth waiting for: they are simply newer next time.
            scratch.clear_blocked();
            last.insert(topic, value);
        }
    }
}
