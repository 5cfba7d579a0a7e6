//! The packet handlers: every complete packet in the read buffer, routing what is
//! published, and the will.

use std::io;
use std::sync::Arc;

use bytestring::ByteString;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::broker::cluster::RouterCluster;
use crate::broker::hooks::{Event, Refusal, Verdict};
use crate::broker::metrics::{self, Action, DropReason, HookKind};
use crate::broker::router::Qos2Step;
use crate::broker::router::Session;
use crate::broker::session::{AckKind, Message};
use crate::codec::{Connect, Packet, Protocol, Publish, QoS, SubAck, SubscribeReturnCode};

use super::reasons::Published;
use super::{packet_log, Close, Connection, OutBuf};

impl Connection {
    /// Handles every complete packet in the read buffer.
    pub(super) async fn handle_buffered(&mut self, session: &Arc<Session>) -> Option<Close> {
        let close = loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(packet)) => {
                    if self.log_packets {
                        debug!(target: "pyo3mq::packets", "received {} from '{}'", packet_log::Summary(&packet), self.client_id);
                    }
                    let close = match packet {
                        // QoS 0 and 1 are handled here, without building `handle`'s
                        // future: copying the packet into it and setting it up cost
                        // more than the rest of a QoS 0 publish's handling (issue 13).
                        Packet::Publish(mut publish) if publish.qos != QoS::ExactlyOnce => {
                            match self.check_publish(&mut publish, session) {
                                Err(close) => Some(close),
                                Ok(Some(verdict)) => self.accept_publish(publish, verdict),
                                Ok(None) => {
                                    let topic = &publish.topic;
                                    let verdict = Box::pin(self.authorize_publish(topic)).await;
                                    self.accept_publish(publish, verdict)
                                }
                            }
                        }
                        packet => self.handle(packet, session).await,
                    };
                    if let Some(close) = close {
                        break Some(close);
                    }
                }
                Ok(None) => break None,
                Err(err) if self.protocol == Protocol::V5 => {
                    // The DISCONNECT before the close carries the error's reason code,
                    // and the log names the 5.0 statement too.
                    let rule = err.v5_rule().map(|r| format!(" (MQTT 5.0: [{r}])"));
                    let why = format!("{err}{}", rule.unwrap_or_default());
                    break Some(self.close_v5(err.reason_code(), &why));
                }
                Err(err) => break Some(Close::Protocol(err.to_string())),
            }
        };
        // Acknowledged messages are routed even if the connection is now closing.
        if !self.intercepted.is_empty() {
            Box::pin(self.route_intercepted()).await;
        }
        // durability = "sync": the acks in `out` are written only after this.
        if std::mem::take(&mut self.unsynced) && !Box::pin(self.router.persisted()).await {
            // Not on disk: no acknowledgement may go out (a Disconnect close would flush
            // them). The client sends the messages again when it reconnects.
            self.out = OutBuf::default();
            return Some(Close::Io(io::Error::other(
                "the session store could not commit the messages: closing unacknowledged",
            )));
        }
        // Cluster mode: QoS 1/2 acks wait until the messages left for the other nodes.
        if self.scratch.cluster_pending()
            && !Box::pin(self.router.cluster_flushed(&mut self.scratch)).await
        {
            self.out = OutBuf::default();
            return Some(Close::Io(io::Error::other(
                "cluster: the messages could not be sent to NATS: closing unacknowledged",
            )));
        }
        // Cluster mode: QoS 2 packet ids recorded (after their messages were stored)
        // before the PUBRECs, released before the PUBCOMPs.
        if !self.scratch.cluster_qos2.is_empty() {
            Box::pin(self.settle_qos2()).await;
        }
        // Slow in-process subscribers that chose flow control hold this publisher here,
        // before it reads more (no wait at all unless there are such subscribers).
        if self.scratch.has_blocked() {
            Box::pin(self.scratch.wait_for_space()).await;
        }
        close
    }

    /// Routes a message, through the interceptor when there is one (batched per read).
    /// False when it is known that nothing took it (5.0's PUBACK 0x10; see
    /// [`crate::broker::router::Router::publish`]); with an interceptor it is not known
    /// yet when the acknowledgement is written, so true.
    pub(super) fn route(&mut self, msg: Arc<Message>) -> bool {
        if self.router.hooks().interceptor.is_some() {
            self.intercepted.push(msg);
            true
        } else {
            self.router.publish(msg, &mut self.scratch)
        }
    }

    pub(super) async fn route_intercepted(&mut self) {
        if self.intercepted.is_empty() {
            return;
        }
        let Some(interceptor) = self.router.hooks().interceptor.clone() else {
            return;
        };
        let batch = std::mem::take(&mut self.intercepted);
        let count = batch.len();
        let limit = self.router.config().auth_timeout;
        let started = tokio::time::Instant::now();
        let verdicts = match timeout(limit, interceptor.intercept(&self.client_info(), batch)).await
        {
            Ok(verdicts) => verdicts,
            Err(_) => {
                let counters = self.router.counters();
                counters.hook_timed_out(HookKind::OnMessage);
                counters.dropped(DropReason::HookTimeout, count as u64);
                warn!(client_id = %self.client_id, "on_message timed out: {count} message(s) dropped");
                return;
            }
        };
        let counters = self.router.counters();
        counters.hook_called(HookKind::OnMessage, started.elapsed());
        // A failed interceptor answers nothing at all: the whole batch is dropped.
        let kept = verdicts.iter().filter(|v| v.is_some()).count();
        if kept < count {
            counters.dropped(DropReason::Intercepted, (count - kept) as u64);
        }
        for msg in verdicts.into_iter().flatten() {
            self.router.publish(msg, &mut self.scratch);
        }
    }

    /// What a PUBLISH needs before its verdict: a 5.0 one's inbound checks (topic
    /// alias, receive maximum), the received counters, and the `$SYS` rule. `Some`
    /// verdict when that decides (a refused publish is still acknowledged, and dropped
    /// [MQTT-3.3.5-2]); `None` when the authorizer has to.
    fn check_publish(
        &mut self,
        publish: &mut Publish,
        session: &Arc<Session>,
    ) -> Result<Option<Verdict>, Close> {
        if self.protocol == Protocol::V5 {
            self.inbound_publish_v5(publish, session)?;
        }
        let totals = self.router.counters();
        self.counters
            .received(publish.qos, publish.payload.len(), totals);
        if metrics::is_reserved(&publish.topic) {
            self.router.counters().dropped(DropReason::SysTopic, 1);
            if std::mem::replace(&mut self.sys_publish_logged, true) {
                debug!(client_id = %self.client_id, topic = %publish.topic,
                    "publish dropped: $SYS topics are the broker's own (MQTT 4.7.2)");
            } else {
                info!(client_id = %self.client_id, topic = %publish.topic,
                    "publish dropped: $SYS topics are the broker's own (MQTT 4.7.2); \
                     further ones from this connection are logged at debug level");
            }
            return Ok(Some(Err(Refusal::NOT_AUTHORIZED)));
        }
        Ok(self.router.hooks().authorizer.is_none().then_some(Ok(())))
    }

    /// The authorizer's verdict on a PUBLISH, counted and logged when it refuses.
    async fn authorize_publish(&mut self, topic: &ByteString) -> Verdict {
        let verdict = self.may_publish(topic).await;
        if let Err(refusal) = &verdict {
            info!(client_id = %self.client_id, topic = %topic, "publish not authorized, {}: dropped", refusal.code);
            let counters = self.router.counters();
            counters.denied(Action::Publish);
            counters.dropped(DropReason::NotAuthorized, 1);
        }
        verdict
    }

    /// The routed form of a PUBLISH (its 5.0 properties checked).
    fn message(&mut self, publish: Publish) -> Result<Arc<Message>, Close> {
        let properties = if self.protocol == Protocol::V5 {
            self.publish_properties_v5(&publish)?
        } else {
            None
        };
        if publish.qos != QoS::AtMostOnce && self.router.is_sync_durable() {
            self.unsynced = true;
        }
        Ok(Arc::new(Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            publisher: self.client_id.clone(),
            properties,
            mark: crate::broker::session::StreamMark::NONE,
        }))
    }

    /// A QoS 0 or 1 PUBLISH with its verdict: routed if allowed, a QoS 1 one
    /// acknowledged either way.
    fn accept_publish(&mut self, publish: Publish, verdict: Verdict) -> Option<Close> {
        let pkid = publish.pkid;
        let msg = match self.message(publish) {
            Ok(msg) => msg,
            Err(close) => return Some(close),
        };
        match (msg.qos, pkid) {
            (QoS::AtLeastOnce, Some(pkid)) => {
                let published = match verdict {
                    Ok(()) => Published::Accepted {
                        matched: self.route(msg),
                    },
                    Err(refusal) => Published::Refused(refusal),
                };
                self.put_publish_ack(QoS::AtLeastOnce, pkid, published);
            }
            (QoS::AtMostOnce, _) if verdict.is_ok() => {
                self.route(msg);
            }
            // A refused QoS 0 message is dropped; QoS 2 is `handle`'s; the codec
            // guarantees an id for QoS 1.
            _ => {}
        }
        None
    }

    pub(super) async fn handle(&mut self, packet: Packet, session: &Arc<Session>) -> Option<Close> {
        match packet {
            Packet::Publish(mut publish) => {
                let verdict = match self.check_publish(&mut publish, session) {
                    Err(close) => return Some(close),
                    Ok(Some(verdict)) => verdict,
                    Ok(None) => Box::pin(self.authorize_publish(&publish.topic)).await,
                };
                if publish.qos != QoS::ExactlyOnce {
                    return self.accept_publish(publish, verdict);
                }
                let (pkid, dup) = (publish.pkid, publish.dup);
                let msg = match self.message(publish) {
                    Ok(msg) => msg,
                    Err(close) => return Some(close),
                };
                let allowed = verdict.is_ok();
                // The codec guarantees an id for QoS 1 and 2.
                let pkid = pkid?;
                // A repeat before PUBREL is acknowledged, not delivered again
                // (and answered Success: whether the first one matched is not
                // kept). A 5.0 refusal (PUBREC 0x80 or above) ends the flow, so
                // its id is not kept: the next PUBLISH with it is a new message
                // [MQTT-4.3.3-9].
                let refused_v5 = !allowed && self.protocol == Protocol::V5;
                let mut matched = true;
                if !refused_v5 && session.state.lock().on_inbound_qos2(pkid) && allowed {
                    // Cluster mode: a resend another node stored already is not
                    // routed again (cluster/qos2.rs).
                    if !(dup && Box::pin(self.qos2_stored(pkid)).await) {
                        matched = self.route(msg);
                    }
                    self.qos2_event(pkid, Qos2Step::Stored);
                }
                let published = match verdict {
                    Ok(()) => Published::Accepted { matched },
                    Err(refusal) => Published::Refused(refusal),
                };
                self.put_publish_ack(QoS::ExactlyOnce, pkid, published);
            }
            Packet::PubAck(pkid) => {
                if let Some(close) = self.on_ack(session, pkid, AckKind::PubAck, "PUBACK") {
                    return Some(close);
                }
            }
            Packet::PubRec(pkid) => {
                if let Some(close) = self.on_ack(session, pkid, AckKind::PubRec, "PUBREC") {
                    return Some(close);
                }
                let mark = self.delivery_mark(session, pkid);
                self.qos2_event(pkid, Qos2Step::Received(mark));
                // Answered even for an unknown id so the client can finish its flow.
                self.send_packet(&Packet::PubRel(pkid));
            }
            Packet::PubRel(pkid) => {
                session.state.lock().on_inbound_pubrel(pkid);
                self.qos2_event(pkid, Qos2Step::Released);
                self.send_packet(&Packet::PubComp(pkid));
            }
            Packet::PubComp(pkid) => {
                let mark = self.delivery_mark(session, pkid);
                if let Some(close) = self.on_ack(session, pkid, AckKind::PubComp, "PUBCOMP") {
                    return Some(close);
                }
                self.qos2_event(pkid, Qos2Step::Completed(mark));
            }
            Packet::Subscribe(subscribe) => {
                // A zero-length filter makes the whole SUBSCRIBE a violation: nothing in it
                // is subscribed and no SUBACK is sent, as Mosquitto does.
                if subscribe
                    .filters
                    .iter()
                    .any(|(filter, _)| filter.is_empty())
                {
                    return Some(Close::Protocol(
                        "[MQTT-4.7.3-1] SUBSCRIBE with a zero-length topic filter".into(),
                    ));
                }
                let mut codes = Vec::with_capacity(subscribe.filters.len());
                for (filter, qos) in &subscribe.filters {
                    let granted = match crate::topic::validate_topic_filter(filter) {
                        Ok(()) => Box::pin(self.may_subscribe(filter, *qos)).await,
                        Err(_) => Ok(*qos), // the router reports the rule broken
                    };
                    // 3.1.1 has one failure code, 0x80, whatever the hook chose.
                    let Ok(granted) = granted else {
                        self.router.counters().denied(Action::Subscribe);
                        info!(client_id = %self.client_id, "subscription to {filter:?} not authorized");
                        if self.protocol == Protocol::V31 {
                            return Some(Close::Protocol(format!(
                                "subscription to {filter:?} refused for an MQTT 3.1 client"
                            )));
                        }
                        codes.push(SubscribeReturnCode::Failure);
                        continue;
                    };
                    match self.router.subscribe(session, filter, granted) {
                        Ok(granted) => codes.push(SubscribeReturnCode::Success(granted)),
                        Err(err) if self.protocol == Protocol::V31 => {
                            // 3.1 SUBACK has no failure code (checklist part 2, item 5).
                            return Some(Close::Protocol(format!(
                                "invalid topic filter {filter:?} from an MQTT 3.1 client: {err}"
                            )));
                        }
                        Err(err) => {
                            info!(client_id = %self.client_id, "refusing subscription to {filter:?}: {err}");
                            codes.push(SubscribeReturnCode::Failure);
                        }
                    }
                }
                self.router.emit(|| Event::Subscribed {
                    client_id: self.client_id.clone(),
                    filters: subscribe
                        .filters
                        .iter()
                        .zip(&codes)
                        .map(|((f, _), c)| (f.clone(), c.to_u8()))
                        .collect(),
                });
                // Cluster mode: the other nodes' messages reach this node after SUBACK.
                if let Some(cluster) = self.router.cluster() {
                    Box::pin(cluster.interest_ready()).await;
                    // ...and a client moving to another node finds its subscriptions.
                    Box::pin(cluster.session_changed(&self.router, session)).await;
                }
                self.send_packet(&Packet::SubAck(SubAck {
                    pkid: subscribe.pkid,
                    codes,
                }));
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.filters {
                    self.router.unsubscribe(session, filter);
                }
                if let Some(cluster) = self.router.cluster() {
                    Box::pin(cluster.session_changed(&self.router, session)).await;
                }
                // [MQTT-3.10.4-4], [MQTT-3.10.4-5]: always answered.
                self.send_packet(&Packet::UnsubAck(unsubscribe.pkid));
                self.router.emit(|| Event::Unsubscribed {
                    client_id: self.client_id.clone(),
                    filters: unsubscribe.filters,
                });
            }
            Packet::PingReq => self.send_packet(&Packet::PingResp),
            Packet::Disconnect => return Some(Close::Disconnect),
            Packet::Connect(_) => {
                return Some(Close::Protocol(
                    "[MQTT-3.1.0-2] second CONNECT on a connection".into(),
                ))
            }
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => {
                return Some(Close::Protocol(format!(
                    "[MQTT-4.8.0-1] a client may not send {}",
                    other.name()
                )))
            }
            // 5.0's own packets, only decoded on a 5.0 connection (see connection/v5.rs).
            other if self.protocol == Protocol::V5 => {
                return match other {
                    // PUBREC 0x80 or above ends the delivery: no PUBREL follows.
                    Packet::PubRecV5(ack) if ack.reason.is_error() => {
                        self.pubrec_error_v5(&ack, session)
                    }
                    // A reason code on an acknowledgement: handled as its short form.
                    Packet::PubAckV5(_)
                    | Packet::PubRecV5(_)
                    | Packet::PubRelV5(_)
                    | Packet::PubCompV5(_) => {
                        let short = self.ack_v5_as_short(other);
                        Box::pin(self.handle(short, session)).await
                    }
                    other => Box::pin(self.handle_v5(other, session)).await,
                };
            }
            other => {
                return Some(Close::Protocol(format!(
                    "an MQTT 5.0 {} on a 3.1.1 connection",
                    other.name()
                )))
            }
        }
        None
    }

    /// [MQTT-3.1.2-8]: published on any close but a DISCONNECT, with its QoS and retain
    /// flag [MQTT-3.1.2-16], [MQTT-3.1.2-17]; at most once [MQTT-3.1.2-10].
    pub(super) async fn publish_will(&mut self, connect: &Connect) {
        if let Some(msg) = self.will_message(connect).await {
            debug!(client_id = %self.client_id, topic = %msg.topic, "publishing will");
            // Through the interceptor too, if there is one: a will is a publication.
            self.route(msg);
            self.route_intercepted().await;
        }
    }

    /// The will as a message, if the client has one it may publish (not to `$SYS`, and
    /// allowed by the authorizer, asked now).
    pub(super) async fn will_message(&mut self, connect: &Connect) -> Option<Arc<Message>> {
        let will = connect.will.as_ref()?;
        if metrics::is_reserved(&will.topic) {
            info!(client_id = %self.client_id, topic = %will.topic,
                "will dropped: $SYS topics are the broker's own (MQTT 4.7.2)");
            return None;
        }
        if self.may_publish(&will.topic).await.is_err() {
            info!(client_id = %self.client_id, topic = %will.topic, "will not authorized: dropped");
            return None;
        }
        Some(Arc::new(Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            publisher: self.client_id.clone(),
            properties: if self.protocol == Protocol::V5 {
                Self::will_properties_v5(connect)
            } else {
                None
            },
            mark: crate::broker::session::StreamMark::NONE,
        }))
    }
}

impl Connection {
    /// A PUBACK, PUBREC or PUBCOMP for one of the broker's deliveries: one of another
    /// kind closes the connection [MQTT-4.8.0-1]; an unknown id is ignored (a late
    /// repeat, say).
    fn on_ack(&self, session: &Session, pkid: u16, kind: AckKind, name: &str) -> Option<Close> {
        match session.state.lock().on_ack(pkid, kind) {
            Ok(true) => None,
            Ok(false) => {
                debug!(client_id = %self.client_id, pkid, "{name} for an unknown packet id");
                None
            }
            Err(delivery) => Some(wrong_ack(name, pkid, delivery)),
        }
    }
}

/// The close for an acknowledgement of the wrong kind for the delivery it names.
fn wrong_ack(ack: &str, pkid: u16, delivery: &str) -> Close {
    Close::Protocol(format!(
        "[MQTT-4.8.0-1] {ack} for packet id {pkid}, which names {delivery}"
    ))
}
