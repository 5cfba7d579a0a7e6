//! MQTT 5.0 on a connection: what differs from 3.1.1 once the CONNECT says level 5.
//!
//! Kept apart from the shared handlers so that the 3.1.1 path stays as it was: the
//! shared code calls in here only where a 5.0 connection answers differently (CONNACK
//! and its properties, reason codes in acknowledgements, the DISCONNECT the server sends
//! before it closes) or for packets only 5.0 has (SUBSCRIBE with options, UNSUBSCRIBE
//! answered per filter, DISCONNECT with a reason, AUTH).
//!
//! Delivery to a 5.0 subscriber (subscription options and identifiers, the remaining
//! Message Expiry Interval, the client's Maximum Packet Size) is in router/options.rs,
//! session/props.rs and connection/v5_deliver.rs; Receive Maximum, inbound Topic
//! Aliases, Server Keep Alive and Request Problem Information in connection/flow.rs;
//! delayed wills in connection/delayed_will.rs; enhanced authentication in
//! connection/enhanced_auth.rs.
//!
//! Not yet here: outbound Topic Aliases (the broker never sends one; they are optional).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tracing::{debug, info};

use crate::broker::cluster::RouterCluster;
use crate::broker::hooks::Event;
use crate::broker::router::{Attach, ConnHandle, Session};
use crate::broker::session::{AckKind, MessageProperties};
use crate::codec::{
    AckV5, ConnAckV5, Connect, ConnectReturnCode, DisconnectV5, Packet, Properties,
    PropertyContext, Publish, ReasonCode, SubAckV5, SubscribeV5, UnsubAckV5, UnsubscribeV5,
};

use super::{Close, Connection};

/// The 5.0 CONNACK reason for a 3.1.1 refusal code (spec table 3-1's counterparts).
pub(super) fn connack_reason(code: ConnectReturnCode) -> ReasonCode {
    match code {
        ConnectReturnCode::Accepted => ReasonCode::SUCCESS,
        ConnectReturnCode::UnacceptableProtocolVersion => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        ConnectReturnCode::IdentifierRejected => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        ConnectReturnCode::ServerUnavailable => ReasonCode::SERVER_UNAVAILABLE,
        ConnectReturnCode::BadUserNameOrPassword => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ConnectReturnCode::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
    }
}

/// The CONNECT's Session Expiry Interval; absent means 0 (3.1.2.11.2).
pub(super) fn session_expiry(connect: &Connect) -> u32 {
    connect
        .properties
        .as_ref()
        .and_then(|p| p.session_expiry_interval)
        .unwrap_or(0)
}

impl Connection {
    /// A refusal CONNACK in the connection's revision ([MQTT-3.2.2-6]: session present 0).
    pub(super) fn refusal_packet(&self, code: ConnectReturnCode) -> Packet {
        if self.protocol == crate::codec::Protocol::V5 {
            Packet::ConnAckV5(ConnAckV5 {
                session_present: false,
                reason: connack_reason(code),
                properties: None,
            })
        } else {
            Packet::ConnAck(crate::codec::ConnAck {
                session_present: false,
                code,
            })
        }
    }

    /// What a 5.0 CONNECT asks for that this broker refuses outright: an Authentication
    /// Method no enhanced authenticator implements (CONNACK 0x8C Bad authentication
    /// method, 4.12; the ones that are implemented never get here).
    pub(super) fn refuse_v5_connect(&self, connect: &Connect) -> Option<ReasonCode> {
        let method = connect
            .properties
            .as_ref()
            .and_then(|p| p.authentication_method.as_ref());
        if let Some(method) = method {
            info!(client_id = %self.client_id, peer = %self.peer,
                "refusing connection: [MQTT-4.12.0-1] authentication method {method:?} is not supported");
            return Some(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        None
    }

    /// Attaches a 5.0 client: Clean Start and the Session Expiry Interval.
    pub(super) fn attach_v5(&self, connect: &Connect, handle: ConnHandle) -> Attach {
        self.router.attach_v5(
            &self.client_id,
            connect.clean_session,
            session_expiry(connect),
            handle,
        )
    }

    /// The successful CONNACK [MQTT-3.2.0-1], [MQTT-3.1.4-5], with properties that say
    /// what this broker really does.
    pub(super) fn connack_v5(&mut self, connect: &Connect, session_present: bool) {
        let config = self.router.config();
        let mut props = Properties {
            // The limit the decoder enforces; packets above it get DISCONNECT 0x95.
            maximum_packet_size: u32::try_from(config.max_packet_size).ok(),
            // Subscription Identifier Available absent: 1, they are (router/options.rs).
            // Shared Subscription Available absent: 1, they are (router/shared.rs).
            // Topic Alias Maximum absent: 0, no aliases [MQTT-3.2.2-17] (client side).
            ..Properties::default()
        };
        self.out
            .set_max_packet_size(Self::client_max_packet_size(connect));
        self.start_outbound_aliases(connect);
        self.connack_flow_properties(connect, &mut props);
        if connect.client_id.is_empty() {
            // [MQTT-3.1.3-7], [MQTT-3.2.2-16]: the identifier made up for the client.
            props.assigned_client_identifier = Some(self.client_id.clone());
        }
        self.enhanced_connack(&mut props);
        self.send_packet(&Packet::ConnAckV5(ConnAckV5 {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties: Some(Box::new(props)),
        }));
    }

    /// Checks a 5.0 PUBLISH's properties and returns them encoded for forwarding.
    /// [MQTT-3.3.4-6]: a client never sends a Subscription Identifier. (Its Topic Alias
    /// was resolved and taken out already: connection/flow.rs.)
    pub(super) fn publish_properties_v5(
        &mut self,
        publish: &Publish,
    ) -> Result<Option<MessageProperties>, Close> {
        let Some(props) = publish.properties.as_deref() else {
            return Ok(None);
        };
        if !props.subscription_identifiers.is_empty() {
            return Err(self.close_v5(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-3.3.4-6] PUBLISH from a client carries a Subscription Identifier",
            ));
        }
        props
            .to_bytes(PropertyContext::Publish)
            .map(|bytes| Some(MessageProperties::new(bytes)))
            .map_err(|err| self.close_v5(ReasonCode::MALFORMED_PACKET, &err.to_string()))
    }

    /// The encoded will properties, forwarded with the will like a PUBLISH's (the
    /// will-only Will Delay Interval left out).
    pub(super) fn will_properties_v5(connect: &Connect) -> Option<MessageProperties> {
        let will = connect.will.as_ref()?;
        MessageProperties::from_publish(will.properties.as_deref()?.clone())
    }

    /// A close for a rule a 5.0 client broke: the DISCONNECT before the close carries
    /// `reason` ([`Connection::send_disconnect_v5`]).
    pub(super) fn close_v5(&mut self, reason: ReasonCode, why: &str) -> Close {
        self.v5_reason = Some(reason);
        Close::Protocol(format!("{why} (DISCONNECT {reason})"))
    }

    /// The packets only a 5.0 connection decodes, and the long-form acknowledgements.
    pub(super) async fn handle_v5(
        &mut self,
        packet: Packet,
        session: &Arc<Session>,
    ) -> Option<Close> {
        match packet {
            Packet::SubscribeV5(subscribe) => Box::pin(self.subscribe_v5(subscribe, session)).await,
            Packet::UnsubscribeV5(unsubscribe) => {
                Box::pin(self.unsubscribe_v5(unsubscribe, session)).await;
                None
            }
            Packet::DisconnectV5(disconnect) => {
                Some(self.disconnect_from_client(disconnect, session))
            }
            Packet::Auth(auth) => Box::pin(self.reauthenticate(auth)).await,
            other => Some(self.close_v5(
                ReasonCode::PROTOCOL_ERROR,
                &format!("[MQTT-4.8.0-1] a client may not send {}", other.name()),
            )),
        }
    }

    /// A 5.0 acknowledgement in its long form, as its short form for the shared
    /// handlers (the reason code is logged: a client's error code ends the flow all the
    /// same, 4.3).
    pub(super) fn ack_v5_as_short(&self, packet: Packet) -> Packet {
        let (kind, ack, short): (&str, &AckV5, fn(u16) -> Packet) = match &packet {
            Packet::PubAckV5(a) => ("PUBACK", a, Packet::PubAck),
            Packet::PubRecV5(a) => ("PUBREC", a, Packet::PubRec),
            Packet::PubRelV5(a) => ("PUBREL", a, Packet::PubRel),
            Packet::PubCompV5(a) => ("PUBCOMP", a, Packet::PubComp),
            _ => return packet,
        };
        if ack.reason.is_error() {
            debug!(client_id = %self.client_id, pkid = ack.pkid, "{kind} with reason {}", ack.reason);
        }
        short(ack.pkid)
    }

    /// PUBREC with a reason code of 0x80 or above: the receiver refused the message,
    /// which counts as its acknowledgement [MQTT-4.4.0-2]. The delivery ends here; a
    /// PUBREL goes only with a PUBREC below 0x80 [MQTT-4.3.3-4], so none is sent (and
    /// none would be resent after a reconnect).
    pub(super) fn pubrec_error_v5(&mut self, ack: &AckV5, session: &Arc<Session>) -> Option<Close> {
        let mut state = session.state.lock();
        if let Some(delivery) = state.wrong_ack(ack.pkid, AckKind::PubRec) {
            drop(state);
            return Some(self.close_v5(
                ReasonCode::PROTOCOL_ERROR,
                &format!(
                    "[MQTT-4.8.0-1] PUBREC for packet id {}, which names {delivery}",
                    ack.pkid
                ),
            ));
        }
        // The PUBREL stage, then its end: what a PUBREC and a PUBCOMP do together.
        if !(state.on_pubrec(ack.pkid) && state.on_pubcomp(ack.pkid)) {
            debug!(client_id = %self.client_id, pkid = ack.pkid, "PUBREC for an unknown packet id");
        }
        debug!(client_id = %self.client_id, pkid = ack.pkid, "PUBREC with reason {}: delivery ended", ack.reason);
        None
    }

    async fn subscribe_v5(
        &mut self,
        subscribe: SubscribeV5,
        session: &Arc<Session>,
    ) -> Option<Close> {
        let sub_id = match Self::subscription_id(&subscribe) {
            Ok(id) => id,
            Err(why) => return Some(self.close_v5(ReasonCode::PROTOCOL_ERROR, why)),
        };
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        // The first refusing hook's Reason String (connection/reasons.rs).
        let mut reason_string = None;
        for (filter, options) in &subscribe.filters {
            if options.no_local && filter.starts_with("$share/") {
                return Some(self.close_v5(
                    ReasonCode::PROTOCOL_ERROR,
                    "No Local set on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            if let Err(err) = crate::topic::validate_topic_filter(filter) {
                info!(client_id = %self.client_id, "refusing subscription to {filter:?}: {err}");
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let granted = match Box::pin(self.may_subscribe(filter, options.qos)).await {
                Ok(granted) => granted,
                Err(refusal) => {
                    info!(client_id = %self.client_id, "subscription to {filter:?} not authorized, {}", refusal.code);
                    reasons.push(refusal.code);
                    reason_string = reason_string.or(refusal.reason);
                    continue;
                }
            };
            let options = crate::codec::SubscriptionOptions {
                qos: granted,
                ..*options
            };
            match self.router.subscribe_v5(session, filter, &options, sub_id) {
                Ok(granted) => reasons.push(ReasonCode(granted as u8)),
                Err(err) => {
                    info!(client_id = %self.client_id, "refusing subscription to {filter:?}: {err}");
                    reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                }
            }
        }
        self.router.emit(|| Event::Subscribed {
            client_id: self.client_id.clone(),
            filters: subscribe
                .filters
                .iter()
                .zip(&reasons)
                .map(|((f, _), r)| (f.clone(), r.0))
                .collect(),
        });
        // Cluster mode, as for 3.1.1 (handlers.rs): the other nodes' messages reach this
        // node after the SUBACK, and a client moving to another node finds its
        // subscriptions there.
        if let Some(cluster) = self.router.cluster() {
            Box::pin(cluster.interest_ready()).await;
            Box::pin(cluster.session_changed(&self.router, session)).await;
        }
        // [MQTT-3.8.4-1], [MQTT-3.9.3-1]: one code per filter, in order.
        let suback = self.suback_properties(reason_string.as_ref(), |properties| {
            Packet::SubAckV5(SubAckV5 {
                pkid: subscribe.pkid,
                reasons: reasons.clone(),
                properties,
            })
        });
        self.send_packet(&suback);
        None
    }

    async fn unsubscribe_v5(&mut self, unsubscribe: UnsubscribeV5, session: &Arc<Session>) {
        // [MQTT-3.11.3-1]: 0x00, or 0x11 No subscription existed, per filter in order.
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.router.unsubscribe(session, filter) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        // Cluster mode, as for 3.1.1 (handlers.rs): the session's record drops the
        // filters before the UNSUBACK.
        if let Some(cluster) = self.router.cluster() {
            Box::pin(cluster.session_changed(&self.router, session)).await;
        }
        // [MQTT-3.10.4-4], [MQTT-3.10.4-5]: always answered.
        self.send_packet(&Packet::UnsubAckV5(UnsubAckV5 {
            pkid: unsubscribe.pkid,
            reasons,
            properties: None,
        }));
        self.router.emit(|| Event::Unsubscribed {
            client_id: self.client_id.clone(),
            filters: unsubscribe.filters,
        });
    }

    /// A DISCONNECT with a reason code: 0x04 asks for the will to be published; a new
    /// Session Expiry Interval replaces the CONNECT's, except that a session the CONNECT
    /// made end with the connection cannot be given one now (3.14.2.2.2).
    fn disconnect_from_client(
        &mut self,
        disconnect: DisconnectV5,
        session: &Arc<Session>,
    ) -> Close {
        if let Some(expiry) = disconnect
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
        {
            let mut state = session.state.lock();
            let was_zero = session.clean || state.expiry == Some(Duration::ZERO);
            if was_zero && expiry != 0 {
                drop(state);
                return self.close_v5(
                    ReasonCode::PROTOCOL_ERROR,
                    "DISCONNECT sets a Session Expiry Interval after CONNECT set 0 (MQTT 5.0 3.14.2.2.2)",
                );
            }
            let expiry = Some(self.router.v5_expiry(expiry));
            if state.expiry != expiry {
                state.expiry = expiry;
                // Saved with the session: a restart expires it on the new interval.
                state.mark_changed();
            }
        }
        // For the disconnect event: the code the client ended the connection with.
        self.v5_reason = Some(disconnect.reason);
        if disconnect.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            Close::DisconnectWithWill
        } else {
            Close::Disconnect
        }
    }

    /// Sends the server's DISCONNECT before it closes a 5.0 connection (3.14: takeover
    /// 0x8E [MQTT-3.1.4-3], keep alive 0x8D, shutdown 0x8B, and the reason code of the
    /// rule the client broke: 0x81 Malformed Packet, 0x82 Protocol Error, 0x95 Packet too
    /// large...). Only after a successful CONNACK [MQTT-3.14.0-1], which is where the
    /// serving loop this is called from starts.
    pub(super) async fn send_disconnect_v5(&mut self, close: &Close) {
        let reason = match close {
            Close::KeepAlive => ReasonCode::KEEP_ALIVE_TIMEOUT,
            Close::Takeover => ReasonCode::SESSION_TAKEN_OVER,
            Close::Shutdown => ReasonCode::SERVER_SHUTTING_DOWN,
            // Fenced off the cluster: another node serves the client meanwhile.
            Close::Fenced => ReasonCode::USE_ANOTHER_SERVER,
            Close::Protocol(_) => self.v5_reason.unwrap_or(ReasonCode::PROTOCOL_ERROR),
            // The client ended it, or the network did: nothing to say.
            Close::Disconnect | Close::DisconnectWithWill => {
                // For the disconnect event: a DISCONNECT without a body (`E0 00`) is
                // 0x00 Normal disconnection.
                self.v5_reason.get_or_insert(ReasonCode::SUCCESS);
                return;
            }
            Close::PeerClosed | Close::Io(_) => return,
        };
        // For the disconnect event: the code the server ended the connection with.
        self.v5_reason = Some(reason);
        self.send_packet(&Packet::DisconnectV5(DisconnectV5 {
            reason,
            properties: None,
        }));
        let _ = timeout(Duration::from_secs(1), self.flush()).await;
    }
}
