//! The broker's figures in the Prometheus text exposition format, version 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>): a `# HELP` and a
//! `# TYPE` line per family, every name under `pyo3mq_`, counters ending in `_total`,
//! label values escaped, histograms as cumulative `_bucket{le="..."}` samples ending with
//! `le="+Inf"`, then `_sum` and `_count`.
//!
//! Rendering reads the same atomics `$SYS` does, plus gauges that need a look at every
//! session (queued and inflight messages): that is a lock per session, taken once per
//! scrape, never on the message path.

use std::fmt::{Display, Write};

use crate::broker::cluster::RouterCluster;
use crate::broker::metrics::{
    Action, DropReason, HistogramSnapshot, HookKind, TransportKind, LATENCY_BUCKETS,
};
use crate::broker::router::Router;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family, now.
pub fn render(router: &Router) -> String {
    let mut out = Exposition::default();
    let counters = router.counters();
    let (connected, max_connected, sessions) = router.client_counts();
    let (queued, inflight) = router.queue_totals();

    out.family(
        "pyo3mq_build_info",
        "gauge",
        "The broker's version, as a label.",
    );
    out.sample(
        "pyo3mq_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out.family(
        "pyo3mq_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    out.sample(
        "pyo3mq_uptime_seconds",
        &[],
        router.started().elapsed().as_secs_f64(),
    );

    out.by_label(
        "pyo3mq_connections",
        "Network connections open now (before and after CONNECT), by transport.",
        "transport",
        TransportKind::ALL.map(|kind| (kind.as_str(), counters.connections(kind).1)),
    );
    out.by_label(
        "pyo3mq_connections_accepted_total",
        "Network connections accepted since start, by transport.",
        "transport",
        TransportKind::ALL.map(|kind| (kind.as_str(), counters.connections(kind).0)),
    );
    out.gauge(
        "pyo3mq_clients_connected",
        "MQTT clients connected now ($SYS/broker/clients/connected).",
        connected,
    );
    out.gauge(
        "pyo3mq_clients_maximum",
        "The most MQTT clients connected at once since start ($SYS/broker/clients/maximum).",
        max_connected,
    );
    out.gauge(
        "pyo3mq_sessions",
        "Client sessions, online and offline persistent ones ($SYS/broker/clients/total).",
        sessions as u64,
    );
    out.gauge(
        "pyo3mq_subscriptions",
        "Subscriptions of every session, in-process ones included.",
        router.subscription_count() as u64,
    );
    out.gauge(
        "pyo3mq_retained_messages",
        "Retained messages stored, $SYS ones included.",
        router.retained_count() as u64,
    );
    out.gauge(
        "pyo3mq_queued_messages",
        "Messages waiting in client sessions' queues, online and offline.",
        queued,
    );
    out.gauge(
        "pyo3mq_inflight_messages",
        "Outbound QoS 1 and 2 messages sent to clients and not yet acknowledged.",
        inflight,
    );

    // Per QoS: (received, sent, payload bytes received, payload bytes sent).
    let by_qos: Vec<[u64; 4]> = (0..3)
        .map(|q| {
            let (received, sent, payload_in, payload_out) = counters.by_qos(q);
            [received, sent, payload_in, payload_out]
        })
        .collect();
    let per_qos = [
        (
            "pyo3mq_messages_received_total",
            "PUBLISH packets received from clients, by QoS.",
        ),
        (
            "pyo3mq_messages_sent_total",
            "PUBLISH packets sent to clients, by QoS.",
        ),
        (
            "pyo3mq_payload_bytes_received_total",
            "Payload bytes of the PUBLISH packets received, by QoS.",
        ),
        (
            "pyo3mq_payload_bytes_sent_total",
            "Payload bytes of the PUBLISH packets sent, by QoS.",
        ),
    ];
    for (column, (name, help)) in per_qos.into_iter().enumerate() {
        out.family(name, "counter", help);
        for (qos, totals) in ["0", "1", "2"].into_iter().zip(&by_qos) {
            out.sample(name, &[("qos", qos)], totals[column]);
        }
    }
    out.counter(
        "pyo3mq_bytes_received_total",
        "Bytes read from client connections, every packet ($SYS/broker/bytes/received).",
        counters.bytes_received(),
    );
    out.counter(
        "pyo3mq_bytes_sent_total",
        "Bytes written to client connections, every packet ($SYS/broker/bytes/sent).",
        counters.bytes_sent(),
    );

    out.by_label(
        "pyo3mq_messages_dropped_total",
        "Messages dropped, by reason: queue_full is a delivery a session's full queue \
         refused ($SYS/broker/publish/messages/dropped); the others are PUBLISHes not routed.",
        "reason",
        std::iter::once(("queue_full", router.dropped_messages()))
            .chain(DropReason::ALL.map(|reason| (reason.as_str(), counters.dropped_count(reason)))),
    );
    out.counter(
        "pyo3mq_events_dropped_total",
        "Events for the observers (on_connect and others) that their full queue dropped.",
        router.events_dropped(),
    );
    out.counter(
        "pyo3mq_auth_failures_total",
        "CONNECTs refused by authentication (password, authenticator, anonymous policy, timeout).",
        counters.auth_failures(),
    );
    out.by_label(
        "pyo3mq_authorization_denials_total",
        "Subscriptions and publishes the authorizer or ACL file refused, by action.",
        "action",
        [
            ("subscribe", counters.denials(Action::Subscribe)),
            ("publish", counters.denials(Action::Publish)),
        ],
    );
    use crate::broker::metrics::Handshake;
    out.by_label(
        "pyo3mq_tls_handshakes_total",
        "TLS handshakes on tls:// and wss:// listeners, by result.",
        "result",
        [
            ("completed", counters.handshakes(Handshake::TlsCompleted)),
            ("failed", counters.handshakes(Handshake::TlsFailed)),
        ],
    );
    out.by_label(
        "pyo3mq_websocket_upgrades_total",
        "WebSocket upgrades on ws:// and wss:// listeners, by result.",
        "result",
        [
            ("completed", counters.handshakes(Handshake::WsCompleted)),
            ("failed", counters.handshakes(Handshake::WsFailed)),
        ],
    );

    out.family(
        "pyo3mq_hook_duration_seconds",
        "histogram",
        "How long hook calls took, by hook: authenticate and authorize_* per call, \
         on_message per batch, events per observer call.",
    );
    for kind in HookKind::ALL {
        let snap = counters.hook(kind).duration.snapshot();
        out.histogram(
            "pyo3mq_hook_duration_seconds",
            ("hook", kind.as_str()),
            &snap,
        );
    }
    out.by_label(
        "pyo3mq_hook_timeouts_total",
        "Hook calls the broker stopped waiting for after auth_timeout (counted as deny), by hook.",
        "hook",
        HookKind::ALL.map(|kind| (kind.as_str(), counters.hook(kind).timeouts())),
    );
    out.by_label(
        "pyo3mq_hook_errors_total",
        "Hook calls that raised or answered with an unusable value (counted as deny), by hook.",
        "hook",
        HookKind::ALL.map(|kind| (kind.as_str(), counters.hook(kind).errors())),
    );
    out.family(
        "pyo3mq_store_commit_duration_seconds",
        "histogram",
        "How long writes to the durable session store took.",
    );
    out.histogram(
        "pyo3mq_store_commit_duration_seconds",
        ("", ""),
        &counters.store_commit.snapshot(),
    );
    out.counter(
        "pyo3mq_store_commit_failures_total",
        "Writes to the durable session store that failed (the next one writes everything).",
        counters.store_commit_failures(),
    );
    if let Some(cluster) = router.cluster() {
        // Cluster mode only: a single node has no such series.
        out.gauge(
            "pyo3mq_cluster_connected",
            "1 while the node's connection to NATS is up (cluster mode), else 0.",
            u64::from(cluster.linked()),
        );
        out.counter(
            "pyo3mq_cluster_disconnects_total",
            "Times the node lost its connection to NATS since start.",
            cluster.disconnects(),
        );
        out.counter(
            "pyo3mq_cluster_dropped_total",
            "QoS 0 messages not sent to other nodes because the NATS writer was behind.",
            cluster.dropped(),
        );
        out.counter(
            "pyo3mq_cluster_malformed_total",
            "Messages from NATS dropped because their header or MQTT 5.0 properties were malformed.",
            cluster.malformed(),
        );
        out.counter(
            "pyo3mq_cluster_dropped_slow_total",
            "QoS 0 messages from other nodes dropped on arrival because routing was behind \
             (cluster_pending_messages waiting).",
            cluster.dropped_slow(),
        );
        out.gauge(
            "pyo3mq_cluster_fenced",
            "1 while the node is fenced off the cluster (its liveness key unrenewed), else 0.",
            u64::from(cluster.fenced()),
        );
        out.counter(
            "pyo3mq_cluster_fences_total",
            "Times the node fenced itself (closed its clients) since start.",
            cluster.fences(),
        );
    }
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one label: a counter if its name says so, else a gauge.
    fn by_label<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        self.family(name, kind, help);
        for (label_value, value) in values {
            self.sample(name, &[(label, label_value)], value);
        }
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value);
    }

    /// One histogram's samples; `label` is its own label (`("", "")` for none).
    fn histogram(&mut self, name: &str, label: (&str, &str), snap: &HistogramSnapshot) {
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(2);
        if !label.0.is_empty() {
            labels.push(label);
        }
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = LATENCY_BUCKETS
            .iter()
            .map(|b| format!("{b:?}"))
            .chain(std::iter::once("+Inf".to_string()))
            .collect();
        for (le, count) in bounds.iter().zip(&snap.cumulative) {
            let mut with_le = labels.clone();
            with_le.push(("le", le));
            self.sample(&bucket, &with_le, count);
        }
        self.sample(
            &format!("{name}_sum"),
            &labels,
            format!("{:?}", snap.sum_seconds),
        );
        self.sample(&format!("{name}_count"), &labels, snap.count);
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text with `\` and newlines escaped (quotes stay as they are there).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::config::Config;
    use crate::broker::hooks::Hooks;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_help("a\\b\n\"c\""), "a\\\\b\\n\"c\"");
        let mut out = Exposition::default();
        out.sample("m", &[("l", "q\"\\\n")], 1);
        assert_eq!(out.text, "m{l=\"q\\\"\\\\\\n\"} 1\n");
    }

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let router = Router::new(Config::default(), Hooks::default());
        router
            .counters()
            .hook_called(HookKind::Authenticate, std::time::Duration::from_millis(2));
        let text = render(&router);
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(name.starts_with("pyo3mq_"), "{name}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                families.push(name.to_string());
            } else if !line.starts_with("# HELP ") {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(
                    families.iter().any(|f| name.starts_with(f.as_str())),
                    "{line} follows no TYPE line"
                );
            }
        }
        assert!(text.contains(
            "pyo3mq_hook_duration_seconds_bucket{hook=\"authenticate\",le=\"0.001\"} 0\n"
        ));
        assert!(text.contains(
            "pyo3mq_hook_duration_seconds_bucket{hook=\"authenticate\",le=\"0.0025\"} 1\n"
        ));
        assert!(text.contains(
            "pyo3mq_hook_duration_seconds_bucket{hook=\"authenticate\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains("pyo3mq_hook_duration_seconds_count{hook=\"authenticate\"} 1\n"));
        assert!(text.contains("pyo3mq_store_commit_duration_seconds_count 0\n"));
    }
}
