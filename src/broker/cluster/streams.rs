//! The tasks that move messages through NATS (their format is wire.rs's): the writer
//! that sends local publishes (QoS 0 on core NATS, QoS 1/2
//! and retained messages to their JetStream streams) and answers flushes; the reader of
//! the QoS 1/2 stream; and the mirror of the retained stream into the router.
//!
//! Apart from the cluster's handle (cluster.rs) because these are the long-running
//! tasks, and apart from link.rs because JetStream is acknowledged and stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Client;
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::config::Names;
use super::link::round_trip;
use super::wire;
use super::{Cluster, ClusterError, Outbound, START_TIMEOUT};
use crate::broker::router::{MatchScratch, Router};
use crate::broker::session::StreamMark;
use crate::codec::QoS;

/// Sends what local publishers forward, in order, and answers flush requests. Each
/// batch taken from the queue is written, then one flush answers every request in it:
/// true once every QoS 1/2 message before it was stored by JetStream and the server
/// handled the core NATS messages before it.
pub(super) async fn write_to_nats(
    client: Client,
    js: jetstream::Context,
    node: u64,
    names: Names,
    mut rx: mpsc::Receiver<Outbound>,
    stored_seq: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(256);
    let mut waiters = Vec::new();
    let mut acks = Vec::new();
    // A QoS 1/2 message failed since the last flush: the flush answers false.
    let mut failed = false;
    let mut logged_error = false;
    // The queue's sender lives as long as the router; the runtime's shutdown ends this
    // task, after `flush_on_stop` let it send the wills of closing connections.
    while rx.recv_many(&mut batch, 256).await > 0 {
        for item in batch.drain(..) {
            match item {
                Outbound::Publish(msg, seq) => {
                    let (headers, body) = wire::encode(node, seq, &msg);
                    let reliable = msg.qos != QoS::AtMostOnce;
                    if reliable {
                        // JetStream stores a message once per id within its duplicate
                        // window, should this one be sent twice.
                        let mut stored = headers.clone();
                        stored.insert(
                            async_nats::header::NATS_MESSAGE_ID,
                            format!("{node:016x}-{seq}").as_str(),
                        );
                        let subject = names.tagged("q", &msg.topic);
                        match js.publish_with_headers(subject, stored, body.clone()).await {
                            Ok(ack) => acks.push((msg.clone(), ack, true)),
                            Err(e) => {
                                if !std::mem::replace(&mut logged_error, true) {
                                    error!(topic = %msg.topic, "cluster: QoS {} message not stored in NATS: {e}", msg.qos as u8);
                                }
                                failed = true;
                            }
                        }
                    } else {
                        let subject = names.topic(&msg.topic);
                        let sent = client
                            .publish_with_headers(subject, headers.clone(), body.clone())
                            .await;
                        if let Err(e) = &sent {
                            if !std::mem::replace(&mut logged_error, true) {
                                error!(topic = %msg.topic, "cluster: publish to NATS failed: {e}");
                            }
                        }
                    }
                    if msg.retain {
                        let subject = names.tagged("r", &msg.topic);
                        match js.publish_with_headers(subject, headers, body).await {
                            Ok(ack) => acks.push((msg, ack, false)),
                            Err(e) => {
                                error!(topic = %msg.topic, "cluster: retained message not stored in NATS: {e}");
                                failed |= reliable;
                            }
                        }
                    }
                }
                Outbound::Flush(done) => waiters.push(done),
            }
        }
        if !waiters.is_empty() || acks.len() >= 1024 {
            for (msg, ack, in_messages) in acks.drain(..) {
                let ack = ack.await;
                if let (Ok(ack), true) = (&ack, in_messages) {
                    // Where this node's messages end, for sessions moving (handover.rs).
                    stored_seq.fetch_max(ack.sequence, Ordering::Relaxed);
                }
                if let Err(e) = ack {
                    if !std::mem::replace(&mut logged_error, true) {
                        error!(topic = %msg.topic, "cluster: JetStream did not confirm a message: {e}");
                    }
                    failed |= msg.qos != QoS::AtMostOnce;
                }
            }
        }
        if !waiters.is_empty() {
            let ok = !std::mem::take(&mut failed) && round_trip(&client, &names, node).await;
            if ok {
                logged_error = false;
            }
            for done in waiters.drain(..) {
                let _ = done.send(ok);
            }
        }
    }
}

/// Routes the QoS 1/2 messages of other nodes from the stream to the local sessions,
/// acknowledging each once routed (so a node that stops before that gets it again).
pub(super) async fn read_reliable(
    mut messages: consumer::pull::Stream,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut scratch = MatchScratch::default();
    let mut failing = false;
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = shutdown.changed() => return,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                // Missed heartbeats while NATS is away; the stream recovers by itself
                // when the connection comes back.
                if !std::mem::replace(&mut failing, true) {
                    warn!("cluster: reading the stream of QoS 1/2 messages: {e}");
                }
                continue;
            }
            None => {
                error!("cluster: the stream of QoS 1/2 messages ended; QoS 1/2 messages from other nodes no longer reach this one");
                return;
            }
        };
        if std::mem::replace(&mut failing, false) {
            info!("cluster: reading the stream of QoS 1/2 messages again");
        }
        // Under the gate of sessions moving in and out (handover.rs), which then know
        // where the reader stands.
        let gate = cluster.moves.gate().await;
        route_stored(&msg, &cluster, &router, &mut scratch);
        if let Ok(info) = msg.info() {
            cluster.moves.routed(info.stream_sequence);
        }
        drop(gate);
        if scratch.has_blocked() {
            scratch.wait_for_space().await;
        }
        if let Err(e) = msg.ack().await {
            debug!("cluster: acknowledging a stream message failed (it comes again): {e}");
        }
    }
}

/// Routes one message of the stream to the local sessions, unless this node sent it.
fn route_stored(
    msg: &jetstream::Message,
    cluster: &Cluster,
    router: &Router,
    scratch: &mut MatchScratch,
) {
    let wire = match wire::decode(msg.headers.as_ref(), msg.payload.clone()) {
        Ok(wire) => wire,
        Err(e) => return cluster.drop_malformed(&msg.subject, &e),
    };
    if wire.origin == cluster.node {
        return;
    }
    let Some(topic) = cluster.names.untagged("q", &msg.subject) else {
        debug!(subject = %msg.subject, "cluster: ignored a stream subject pyo3mq did not make");
        return;
    };
    // Live deliveries carry RETAIN 0 [MQTT-3.3.1-9] unless the subscription has Retain
    // As Published (the router decides).
    let retain = wire.retain;
    let mut message = match wire.message(ByteString::from(topic), retain) {
        Ok(message) => message,
        Err(e) => return cluster.drop_malformed(&msg.subject, &e),
    };
    // For the checkpoints of the sessions it reaches (checkpoint.rs).
    if let Ok(info) = msg.info() {
        message.mark = StreamMark::stream(info.stream_sequence);
    }
    router.publish_remote(Arc::new(message), scratch);
}

/// Reads the retained stream into the router's retained tree: to the end before
/// returning, then every change as it comes, until shutdown.
pub(super) async fn mirror_retained(
    stream: &stream::Stream,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let failed = |e: String| ClusterError::Stream(e);
    let mut consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: cluster.names.all("r"),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut pending = consumer
        .info()
        .await
        .map_err(|e| failed(e.to_string()))?
        .num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let stream_name = stream.cached_info().config.name.clone();
    let apply = move |router: &Router, msg: &jetstream::Message| {
        let Some(topic) = cluster.names.untagged("r", &msg.subject) else {
            debug!(subject = %msg.subject, "cluster: ignored a retained stream subject");
            return;
        };
        let retained = wire::decode(msg.headers.as_ref(), msg.payload.clone())
            .and_then(|wire| wire.message(ByteString::from(topic), true));
        match retained {
            Ok(message) => router.set_retained(Arc::new(message)),
            Err(e) => cluster.drop_malformed(&msg.subject, &e),
        }
    };
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let mut loaded = 0u64;
    while pending > 0 {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        match next {
            Ok(Some(Ok(msg))) => {
                apply(&router, &msg);
                loaded += 1;
                pending = msg.info().map_or(0, |info| info.pending);
            }
            Ok(Some(Err(e))) => return Err(failed(e.to_string())),
            Ok(None) => break,
            Err(_) => {
                return Err(failed(format!(
                    "still {pending} retained message(s) to read after {START_TIMEOUT:?}"
                )))
            }
        }
    }
    info!("cluster: {loaded} retained message(s) read from {stream_name}");
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => return,
            };
            match next {
                Some(Ok(msg)) => apply(&router, &msg),
                Some(Err(e)) => warn!("cluster: reading the retained stream: {e}"),
                None => {
                    error!("cluster: the retained stream's consumer ended; retained messages set on other nodes no longer reach this one");
                    return;
                }
            }
        }
    });
    Ok(())
}
