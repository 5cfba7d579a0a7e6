//! The broker's traffic counters, and the `$SYS` namespace they are published under.
//!
//! Counting must not put a shared cache line on the per-message path: each connection
//! counts in plain integers ([`LocalCounters`]) and adds them to the shared atomics once
//! per wake-up, not once per message. [`super::sys_topics`] publishes them, and
//! `broker::http::prometheus` renders them (with the rest of [`Counters`]) for
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_handshakes_failed: AtomicU64,
    ws_upgrades: AtomicU64,
    ws_upgrades_failed: AtomicU64,
    /// By QoS (index 0-2): PUBLISHes received and sent, and their payload bytes.
    received_by_qos: [AtomicU64; 3],
    sent_by_qos: [AtomicU64; 3],
    payload_received_by_qos: [AtomicU64; 3],
    payload_sent_by_qos: [AtomicU64; 3],
    /// Sockets accepted and open now, by [`TransportKind`]; counted once per connection.
    accepted: [AtomicU64; TransportKind::ALL.len()],
    open: [AtomicU64; TransportKind::ALL.len()],
    /// Messages dropped before routing, by [`DropReason`] (queue overflows are counted by
    /// the router, for `$SYS`).
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// CONNECTs refused by authentication (the password file or authenticator, the
    /// anonymous policy, a hook that timed out).
    auth_failures: AtomicU64,
    /// Subscriptions and publishes refused by the authorizer (index: [`Action`]).
    denials: [AtomicU64; 2],
    /// How long each hook kind took, and how often it timed out or failed.
    hooks: [HookStats; HookKind::ALL.len()],
    /// Writes to a durable session store: how long each took, and how many failed.
    pub store_commit: Histogram,
    store_commit_failures: AtomicU64,
    /// Connections parked now, and times a connection parked (connection/park.rs).
    parked: AtomicU64,
    parks: AtomicU64,
}

/// The transport under a connection, as `/metrics` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl TransportKind {
    pub const ALL: [TransportKind; 4] = [
        TransportKind::Tcp,
        TransportKind::Tls,
        TransportKind::Ws,
        TransportKind::Wss,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
        }
    }
}

/// Why a PUBLISH the broker received was not routed. (A full session queue drops a
/// delivery, not the message: the router counts those as `queue_full`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The authorizer (or the ACL file) refused the topic [MQTT-3.3.5-2].
    NotAuthorized,
    /// A client published to `$SYS` (MQTT 4.7.2).
    SysTopic,
    /// `on_message` dropped it (returned None or False, or failed for it).
    Intercepted,
    /// `on_message` did not answer within `auth_timeout`.
    HookTimeout,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::NotAuthorized,
        DropReason::SysTopic,
        DropReason::Intercepted,
        DropReason::HookTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotAuthorized => "not_authorized",
            DropReason::SysTopic => "sys_topic",
            DropReason::Intercepted => "on_message",
            DropReason::HookTimeout => "hook_timeout",
        }
    }
}

/// What an authorizer was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Subscribe = 0,
    Publish = 1,
}

/// The hooks the broker times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Authenticate,
    AuthorizeSubscribe,
    AuthorizePublish,
    /// The interceptor, once per batch (the PUBLISHes of one read).
    OnMessage,
    /// The observers (`on_connect` and the others), timed where they run (Python).
    Events,
}

impl HookKind {
    pub const ALL: [HookKind; 5] = [
        HookKind::Authenticate,
        HookKind::AuthorizeSubscribe,
        HookKind::AuthorizePublish,
        HookKind::OnMessage,
        HookKind::Events,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Authenticate => "authenticate",
            HookKind::AuthorizeSubscribe => "authorize_subscribe",
            HookKind::AuthorizePublish => "authorize_publish",
            HookKind::OnMessage => "on_message",
            HookKind::Events => "events",
        }
    }
}

/// One hook kind's figures.
#[derive(Debug, Default)]
pub struct HookStats {
    pub duration: Histogram,
    timeouts: AtomicU64,
    errors: AtomicU64,
}

/// Upper bounds (seconds) of the latency histograms' buckets: from a fast in-process
/// check (0.1 ms) to the longest `auth_timeout` anyone should set.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram that many threads add to without a lock: one atomic per bucket
/// (not cumulative; [`Histogram::snapshot`] sums them), the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `LATENCY_BUCKETS` then +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram's values at one moment: cumulative bucket counts (+Inf last), the sum in
/// seconds, and the count (equal to the +Inf bucket by construction).
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: total,
        }
    }
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

    /// PUBLISHes received, every QoS.
    pub fn messages_received(&self) -> u64 {
        self.received_by_qos
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// PUBLISHes sent, every QoS.
    pub fn messages_sent(&self) -> u64 {
        self.sent_by_qos
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// PUBLISHes received and sent at `qos` (0-2), and their payload bytes:
    /// (received, sent, payload bytes received, payload bytes sent).
    pub fn by_qos(&self, qos: usize) -> (u64, u64, u64, u64) {
        let load = |a: &[AtomicU64; 3]| a.get(qos).map_or(0, |n| n.load(Ordering::Relaxed));
        (
            load(&self.received_by_qos),
            load(&self.sent_by_qos),
            load(&self.payload_received_by_qos),
            load(&self.payload_sent_by_qos),
        )
    }

    /// A connection's socket was accepted; [`Counters::connection_closed`] when it ends.
    pub fn connection_opened(&self, kind: TransportKind) {
        self.accepted[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.open[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self, kind: TransportKind) {
        self.open[kind as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// (accepted since start, open now) for one transport.
    pub fn connections(&self, kind: TransportKind) -> (u64, u64) {
        (
            self.accepted[kind as usize].load(Ordering::Relaxed),
            self.open[kind as usize].load(Ordering::Relaxed),
        )
    }

    /// A connection parked (`true`) or resumed (`false`).
    pub fn parked(&self, parked: bool) {
        if parked {
            self.parked.fetch_add(1, Ordering::Relaxed);
            self.parks.fetch_add(1, Ordering::Relaxed);
        } else {
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// (parked now, parks since start).
    pub fn parked_connections(&self) -> (u64, u64) {
        (
            self.parked.load(Ordering::Relaxed),
            self.parks.load(Ordering::Relaxed),
        )
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failures(&self) -> u64 {
        self.auth_failures.load(Ordering::Relaxed)
    }

    pub fn denied(&self, action: Action) {
        self.denials[action as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn denials(&self, action: Action) -> u64 {
        self.denials[action as usize].load(Ordering::Relaxed)
    }

    pub fn hook(&self, kind: HookKind) -> &HookStats {
        &self.hooks[kind as usize]
    }

    /// A hook call that answered (in time or not) after `took`.
    pub fn hook_called(&self, kind: HookKind, took: Duration) {
        self.hooks[kind as usize].duration.observe(took);
    }

    /// The broker's limit (`auth_timeout`) expired before the hook answered.
    pub fn hook_timed_out(&self, kind: HookKind) {
        self.hooks[kind as usize]
            .timeouts
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The hook raised or answered with something unusable (reported by the bindings).
    pub fn hook_failed(&self, kind: HookKind) {
        self.hooks[kind as usize]
            .errors
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_committed(&self, took: Duration, ok: bool) {
        self.store_commit.observe(took);
        if !ok {
            self.store_commit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn store_commit_failures(&self) -> u64 {
        self.store_commit_failures.load(Ordering::Relaxed)
    }
}

impl HookStats {
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// One connection's counts since its last flush into [`Counters`]. The per-QoS counts are
/// `u32` because every connection holds this for its whole life (it is part of the
/// connection future's size, which is memory per idle connection); a count that would
/// overflow flushes first.
#[derive(Debug, Default)]
pub struct LocalCounters {
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// By QoS: PUBLISHes received and sent, and their payload bytes.
    received_by_qos: [u32; 3],
    sent_by_qos: [u32; 3],
    payload_received_by_qos: [u32; 3],
    payload_sent_by_qos: [u32; 3],
}

impl LocalCounters {
    /// A PUBLISH received at `qos` with `payload` bytes.
    pub fn received(&mut self, qos: QoS, payload: usize, totals: &Counters) {
        let q = qos as usize;
        let payload = u32::try_from(payload).unwrap_or(u32::MAX);
        if self.received_by_qos[q] == u32::MAX
            || self.payload_received_by_qos[q]
                .checked_add(payload)
                .is_none()
        {
            self.flush_into(totals);
        }
        self.received_by_qos[q] += 1;
        self.payload_received_by_qos[q] += payload;
    }

    /// A PUBLISH sent at `qos` with `payload` bytes.
    pub fn sent(&mut self, qos: QoS, payload: usize, totals: &Counters) {
        let q = qos as usize;
        let payload = u32::try_from(payload).unwrap_or(u32::MAX);
        if self.sent_by_qos[q] == u32::MAX
            || self.payload_sent_by_qos[q].checked_add(payload).is_none()
        {
            self.flush_into(totals);
        }
        self.sent_by_qos[q] += 1;
        self.payload_sent_by_qos[q] += payload;
    }

    /// Adds the counts to the totals and starts again from zero.
    pub fn flush_into(&mut self, totals: &Counters) {
        let add = |total: &AtomicU64, n: u64| {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(
            &totals.bytes_received,
            std::mem::take(&mut self.bytes_received),
        );
        add(&totals.bytes_sent, std::mem::take(&mut self.bytes_sent));
        for q in 0..3 {
            let pairs = [
                (&totals.received_by_qos[q], &mut self.received_by_qos[q]),
                (&totals.sent_by_qos[q], &mut self.sent_by_qos[q]),
                (
                    &totals.payload_received_by_qos[q],
                    &mut self.payload_received_by_qos[q],
                ),
                (
                    &totals.payload_sent_by_qos[q],
                    &mut self.payload_sent_by_qos[q],
                ),
            ];
            for (total, local) in pairs {
                add(total, u64::from(std::mem::take(local)));
            }
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
            bytes_received: 100,
            bytes_sent: 50,
            ..LocalCounters::default()
        };
        local.received(QoS::AtLeastOnce, 10, &totals);
        local.received(QoS::AtMostOnce, 3, &totals);
        local.sent(QoS::ExactlyOnce, 7, &totals);
        local.flush_into(&totals);
        local.received(QoS::AtMostOnce, 1, &totals);
        local.flush_into(&totals);
        assert_eq!(totals.messages_received(), 3);
        assert_eq!(totals.messages_sent(), 1);
        assert_eq!(totals.by_qos(0), (2, 0, 4, 0));
        assert_eq!(totals.by_qos(1), (1, 0, 10, 0));
        assert_eq!(totals.by_qos(2), (0, 1, 0, 7));
        assert_eq!(totals.by_qos(3), (0, 0, 0, 0));
        assert_eq!(totals.bytes_received(), 100);
        assert_eq!(totals.bytes_sent(), 50);
        assert_eq!(local.bytes_received + local.bytes_sent, 0);
        assert_eq!(local.received_by_qos, [0; 3]);
    }

    /// A payload count that would overflow its `u32` is flushed first, not lost.
    #[test]
    fn local_counts_flush_before_they_overflow() {
        let totals = Counters::default();
        let mut local = LocalCounters::default();
        let big = 3_000_000_000usize;
        local.sent(QoS::AtMostOnce, big, &totals);
        local.sent(QoS::AtMostOnce, big, &totals);
        local.flush_into(&totals);
        assert_eq!(totals.by_qos(0), (0, 2, 0, 2 * big as u64));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50)); // first bucket
        h.observe(Duration::from_millis(1)); // exactly on a bound: that bucket
        h.observe(Duration::from_secs(60)); // +Inf only
        let snap = h.snapshot();
        assert_eq!(snap.cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(snap.cumulative[0], 1);
        assert_eq!(snap.cumulative[3], 2); // le=0.001
        assert_eq!(snap.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(snap.count, 3);
        assert_eq!(*snap.cumulative.last().unwrap(), 3);
        assert!((snap.sum_seconds - 60.00105).abs() < 1e-9);
    }
}
