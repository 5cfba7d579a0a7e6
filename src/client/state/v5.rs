//! MQTT 5.0 in the state machine: the CONNACK's limits, publishing with properties
//! (and outgoing Topic Aliases), received Topic Aliases, reason codes in
//! acknowledgements, subscription options and identifiers, and the server's DISCONNECT.
//!
//! A 3.1/3.1.1 client has no [`V5State`] (`State::v5` is `None`) and never reaches
//! this file: its publish path only tests that `Option` once.

use std::collections::{BTreeMap, HashMap};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

use crate::codec::{
    self, DisconnectV5, Packet, Properties, PropertyContext, Publish, QoS, ReasonCode, SubscribeV5,
    SubscriptionOptions, UnsubscribeV5,
};

use super::super::v5::{PublishError, ServerLimits, V5Options};
use super::{ClientError, Outcome, Request, Stage, State, Submitted};

mod auth;

use auth::AuthState;

/// What a 5.0 client keeps besides the 3.1.1 state.
pub(crate) struct V5State {
    /// Topic aliases the server may use towards the client (sent in CONNECT).
    topic_alias_maximum: u16,
    /// Unacknowledged QoS 2 messages the server may have towards the client (sent in
    /// CONNECT; the spec's default 65,535 when not).
    receive_maximum: u16,
    /// Aliases the client would use towards the server (before the CONNACK's cap).
    outgoing_topic_aliases: u16,
    /// The current connection's CONNACK limits.
    pub(crate) server: Option<ServerLimits>,
    /// Alias -> topic, as the server set them on this connection [MQTT-3.3.2-7].
    incoming_aliases: HashMap<u16, ByteString>,
    /// Topic -> alias, as the client set them on this connection.
    outgoing_aliases: HashMap<ByteString, u16>,
    /// Aliases the client may use on this connection: min(own, CONNACK's).
    outgoing_alias_max: u16,
    /// Filter -> options and Subscription Identifier, restored when a connection comes
    /// up without a session.
    subscriptions: BTreeMap<ByteString, (SubscriptionOptions, Option<u32>)>,
    /// Enhanced authentication, when CONNECT names a method.
    auth: Option<AuthState>,
}

impl V5State {
    pub(crate) fn new(opts: &V5Options) -> V5State {
        V5State {
            topic_alias_maximum: opts.topic_alias_maximum,
            receive_maximum: opts.receive_maximum.unwrap_or(u16::MAX),
            outgoing_topic_aliases: opts.outgoing_topic_aliases,
            server: None,
            incoming_aliases: HashMap::new(),
            outgoing_aliases: HashMap::new(),
            outgoing_alias_max: 0,
            subscriptions: BTreeMap::new(),
            auth: opts.authentication_method.as_deref().map(|m| AuthState {
                method: ByteString::from(m),
                ..AuthState::default()
            }),
        }
    }

    /// Forgets both directions' aliases: they belong to one connection [MQTT-3.3.2-7].
    pub(super) fn reset_aliases(&mut self) {
        self.incoming_aliases.clear();
        self.outgoing_aliases.clear();
    }

    /// The alias to send `topic` under and whether the server knows it already; `None`
    /// sends the name alone (aliasing is off, or every alias is taken).
    pub(super) fn outgoing_alias(&mut self, topic: &str) -> Option<(u16, bool)> {
        if self.outgoing_alias_max == 0 {
            return None;
        }
        if let Some(&alias) = self.outgoing_aliases.get(topic) {
            return Some((alias, true));
        }
        let next = u16::try_from(self.outgoing_aliases.len() + 1).ok()?;
        // Never above the CONNACK's Topic Alias Maximum [MQTT-3.3.2-9].
        if next > self.outgoing_alias_max {
            return None;
        }
        self.outgoing_aliases.insert(ByteString::from(topic), next);
        Some((next, false))
    }
}

/// A protocol error the client answers with DISCONNECT `reason`.
fn violation(reason: ReasonCode, message: String) -> ClientError {
    ClientError::ProtocolV5 { reason, message }
}

fn text(s: Option<&ByteString>) -> Option<String> {
    s.map(|s| s.to_string())
}

impl State {
    /// Makes this a 5.0 client (before the first connection).
    pub(crate) fn enable_v5(&mut self, opts: &V5Options) {
        self.v5 = Some(Box::new(V5State::new(opts)));
    }

    /// A 5.0 CONNACK accepted the connection: its limits apply from now on (called
    /// before [`State::on_connected`], which resends and fills the window).
    pub(crate) fn on_connack_v5(&mut self, limits: ServerLimits) {
        let max_inflight = self.limits.max_inflight;
        let Some(v5) = self.v5.as_deref_mut() else {
            return;
        };
        // [MQTT-3.3.4-7]: never more unacknowledged QoS 1/2 publishes than the server's
        // Receive Maximum.
        self.window = max_inflight.min(usize::from(limits.receive_maximum));
        v5.reset_aliases();
        v5.outgoing_alias_max = v5.outgoing_topic_aliases.min(limits.topic_alias_maximum);
        if let Some(auth) = v5.auth.as_mut() {
            auth.last_data = limits
                .connack
                .properties
                .as_deref()
                .and_then(|p| p.authentication_data.clone());
        }
        v5.server = Some(limits);
    }

    /// The current connection's CONNACK limits (5.0, once connected).
    pub(crate) fn server_limits(&self) -> Option<&ServerLimits> {
        self.v5.as_deref().and_then(|v5| v5.server.as_ref())
    }

    /// Publishes on a 5.0 connection: checks the CONNACK's limits (Maximum QoS, Retain
    /// Available, Maximum Packet Size) and encodes `props` once for every (re)send.
    pub(crate) fn publish_v5(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
    ) -> Result<Submitted, PublishError> {
        let encoded = match props {
            Some(p) => p.to_bytes(PropertyContext::Publish)?,
            None => Bytes::new(),
        };
        if let Some(server) = self.server_limits() {
            if qos > server.maximum_qos {
                return Err(PublishError::QosNotSupported {
                    qos,
                    max: server.maximum_qos,
                });
            }
            if retain && !server.retain_available {
                return Err(PublishError::RetainNotSupported);
            }
            if let Some(max) = server.maximum_packet_size {
                let size = publish_size(topic, qos, encoded.len(), payload.len());
                if size > max as usize {
                    return Err(PublishError::PacketTooLarge { size, max });
                }
            }
        }
        Ok(self.publish_with(topic, payload, qos, retain, Some(encoded))?)
    }

    /// SUBSCRIBE with subscription options, a Subscription Identifier and user
    /// properties; completes with one reason code per filter.
    pub(crate) fn subscribe_v5(
        &mut self,
        filters: Vec<(ByteString, SubscriptionOptions)>,
        id: Option<u32>,
        user_properties: Vec<(ByteString, ByteString)>,
    ) -> Result<Submitted, codec::Error> {
        let properties = subscribe_properties(id, user_properties);
        self.filters_request(
            filters,
            |pkid, filters| {
                Packet::SubscribeV5(SubscribeV5 {
                    pkid,
                    filters,
                    properties,
                })
            },
            |token, filters| Request::SubscribeV5 { token, filters, id },
        )
    }

    /// UNSUBSCRIBE with user properties; completes with one reason code per filter.
    pub(crate) fn unsubscribe_v5(
        &mut self,
        filters: Vec<ByteString>,
        user_properties: Vec<(ByteString, ByteString)>,
    ) -> Result<Submitted, codec::Error> {
        let properties = (!user_properties.is_empty()).then(|| {
            Box::new(Properties {
                user_properties,
                ..Properties::default()
            })
        });
        self.filters_request(
            filters,
            |pkid, filters| {
                Packet::UnsubscribeV5(UnsubscribeV5 {
                    pkid,
                    filters,
                    properties,
                })
            },
            |token, filters| Request::Unsubscribe { token, filters },
        )
    }

    pub(super) fn has_v5_subscriptions(&self) -> bool {
        self.v5
            .as_deref()
            .is_some_and(|v5| !v5.subscriptions.is_empty())
    }

    /// SUBSCRIBEs restoring every 5.0 subscription, one per Subscription Identifier (a
    /// SUBSCRIBE carries at most one); `None` if they cannot be sent.
    pub(super) fn resubscribe_v5(&mut self) -> Option<BytesMut> {
        let mut groups: BTreeMap<Option<u32>, Vec<(ByteString, SubscriptionOptions)>> =
            BTreeMap::new();
        for (filter, (options, id)) in &self.v5.as_deref()?.subscriptions {
            // The session is new: what was retained is wanted again only as first asked.
            groups
                .entry(*id)
                .or_default()
                .push((filter.clone(), *options));
        }
        let mut buf = BytesMut::new();
        let mut taken = Vec::new();
        for (id, filters) in groups {
            let Some(pkid) = self.ids.alloc() else {
                tracing::warn!("client: no packet id free to restore the subscriptions");
                break;
            };
            let packet = Packet::SubscribeV5(SubscribeV5 {
                pkid,
                filters,
                properties: subscribe_properties(id, Vec::new()),
            });
            match packet.encode(&mut buf) {
                Ok(()) => taken.push(pkid),
                Err(e) => {
                    self.ids.free(pkid);
                    tracing::error!("client: could not restore subscriptions: {e}");
                }
            }
        }
        if taken.is_empty() {
            return None;
        }
        for pkid in taken {
            self.requests.insert(pkid, Request::Resubscribe);
        }
        Some(buf)
    }

    /// A SUBACK of a restoring SUBSCRIBE came: once the last did, what was published
    /// meanwhile may go.
    pub(super) fn restored(&mut self) {
        if self
            .requests
            .values()
            .any(|r| matches!(r, Request::Resubscribe))
        {
            return;
        }
        if let Some(held) = self.held.take() {
            self.out.extend_from_slice(&held);
        }
    }

    /// A received PUBLISH on a 5.0 connection: resolves its Topic Alias and checks the
    /// Receive Maximum the client announced.
    pub(super) fn on_publish_v5(&mut self, p: &mut Publish) -> Result<(), ClientError> {
        let Some(v5) = self.v5.as_deref_mut() else {
            return Ok(());
        };
        if let Some(alias) = p.properties.as_deref().and_then(|props| props.topic_alias) {
            if alias > v5.topic_alias_maximum {
                tracing::warn!(
                    alias,
                    max = v5.topic_alias_maximum,
                    "client: [MQTT-3.3.2-10] Topic Alias above the client's Topic Alias \
                     Maximum: DISCONNECT 0x94"
                );
                return Err(violation(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    format!(
                        "[MQTT-3.3.2-10] the server used Topic Alias {alias}, above the \
                         client's Topic Alias Maximum of {}",
                        v5.topic_alias_maximum
                    ),
                ));
            }
            if p.topic.is_empty() {
                match v5.incoming_aliases.get(&alias) {
                    Some(topic) => p.topic = topic.clone(),
                    None => {
                        tracing::warn!(
                            alias,
                            "client: [MQTT-3.3.4] Topic Alias never set on this connection: \
                             DISCONNECT 0x82"
                        );
                        return Err(violation(
                            ReasonCode::PROTOCOL_ERROR,
                            format!(
                                "the server used Topic Alias {alias} without setting it on \
                                 this connection"
                            ),
                        ));
                    }
                }
            } else {
                // An owned copy: the received topic shares the read buffer's memory.
                v5.incoming_aliases
                    .insert(alias, ByteString::from(&*p.topic));
            }
        }
        if p.qos == QoS::ExactlyOnce
            && !self.inbound_qos2.contains(p.pkid.unwrap_or(0))
            && self.inbound_qos2.len() >= usize::from(v5.receive_maximum)
        {
            // QoS 1 is acknowledged as it is read; only QoS 2 messages awaiting PUBREL
            // count against what the client announced.
            return Err(violation(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                format!(
                    "[MQTT-3.3.4-9] the server sent more than the client's Receive Maximum \
                     of {} unacknowledged QoS 2 messages",
                    v5.receive_maximum
                ),
            ));
        }
        Ok(())
    }

    /// The 5.0 forms of acknowledgements and DISCONNECT.
    pub(super) fn on_packet_v5(&mut self, packet: Packet) -> Result<(), ClientError> {
        match packet {
            Packet::PubAckV5(ack) => {
                let Some(i) = self.inflight.iter().position(|f| {
                    f.packet_id == ack.pkid
                        && f.qos == QoS::AtLeastOnce
                        && f.stage == Stage::AwaitAck
                }) else {
                    tracing::debug!(
                        packet_id = ack.pkid,
                        "client: PUBACK for an unknown id ignored"
                    );
                    return Ok(());
                };
                let outcome = ack_outcome("PUBACK", ack.reason, ack.properties.as_deref());
                self.end_flight(i, outcome);
            }
            Packet::PubRecV5(ack) => {
                let Some(i) = self
                    .inflight
                    .iter()
                    .position(|f| f.packet_id == ack.pkid && f.qos == QoS::ExactlyOnce)
                else {
                    tracing::debug!(
                        packet_id = ack.pkid,
                        "client: PUBREC for an unknown id ignored"
                    );
                    return Ok(());
                };
                if ack.reason.is_error() {
                    // A failed PUBREC ends the exchange: no PUBREL follows (4.3.3), and
                    // the id and the window's slot are free again [MQTT-4.9.0-2].
                    let outcome = ack_outcome("PUBREC", ack.reason, ack.properties.as_deref());
                    self.end_flight(i, outcome);
                } else {
                    return self.on_packet(Packet::PubRec(ack.pkid));
                }
            }
            Packet::PubRelV5(ack) => {
                // 0x92: the server lost the id; the PUBCOMP ends it either way.
                return self.on_packet(Packet::PubRel(ack.pkid));
            }
            Packet::PubCompV5(ack) => {
                if ack.reason.is_error() {
                    tracing::warn!(
                        packet_id = ack.pkid,
                        reason = %ack.reason,
                        "client: PUBCOMP with an error: the QoS 2 exchange ends"
                    );
                }
                return self.on_packet(Packet::PubComp(ack.pkid));
            }
            Packet::SubAckV5(ack) => self.on_suback_v5(ack)?,
            Packet::UnsubAckV5(ack) => match self.requests.remove(&ack.pkid) {
                Some(Request::Unsubscribe { token, filters }) => {
                    self.ids.free(ack.pkid);
                    if ack.reasons.len() != filters.len() {
                        return Err(violation(
                            ReasonCode::PROTOCOL_ERROR,
                            format!(
                                "[MQTT-3.11.3-1] UNSUBACK has {} reason codes for {} topic \
                                 filters",
                                ack.reasons.len(),
                                filters.len()
                            ),
                        ));
                    }
                    if let Some(v5) = self.v5.as_deref_mut() {
                        for (filter, reason) in filters.iter().zip(&ack.reasons) {
                            if !reason.is_error() {
                                v5.subscriptions.remove(filter);
                            }
                        }
                    }
                    let codes = ack.reasons.iter().map(|r| r.0).collect();
                    self.complete(token, Outcome::Unsubscribed(codes));
                }
                other => Request::stray_ack("UNSUBACK", ack.pkid, other)
                    .map_err(|message| violation(ReasonCode::PROTOCOL_ERROR, message))?,
            },
            Packet::DisconnectV5(d) => return Err(self.server_disconnect(Some(d))),
            Packet::Auth(a) => return self.on_auth(a, false),
            other => {
                return Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("a server must not send {}", other.name()),
                ))
            }
        }
        Ok(())
    }

    fn on_suback_v5(&mut self, ack: codec::SubAckV5) -> Result<(), ClientError> {
        match self.requests.remove(&ack.pkid) {
            Some(Request::SubscribeV5 { token, filters, id }) => {
                self.ids.free(ack.pkid);
                if ack.reasons.len() != filters.len() {
                    return Err(violation(
                        ReasonCode::PROTOCOL_ERROR,
                        format!(
                            "[MQTT-3.9.3-1] SUBACK has {} reason codes for {} topic filters",
                            ack.reasons.len(),
                            filters.len()
                        ),
                    ));
                }
                if let Some(v5) = self.v5.as_deref_mut() {
                    for ((filter, options), reason) in filters.into_iter().zip(&ack.reasons) {
                        if !reason.is_error() {
                            v5.subscriptions.insert(filter, (options, id));
                        }
                    }
                }
                if let Some(reason) = ack
                    .properties
                    .as_deref()
                    .and_then(|p| p.reason_string.as_ref())
                {
                    tracing::debug!("client: SUBACK reason string: {reason}");
                }
                let codes = ack.reasons.iter().map(|r| r.0).collect();
                self.complete(token, Outcome::Granted(codes));
            }
            Some(Request::Resubscribe) => {
                self.ids.free(ack.pkid);
                if ack.reasons.iter().any(|r| r.is_error()) {
                    tracing::warn!("client: the server refused a restored subscription");
                }
                self.restored();
            }
            other => Request::stray_ack("SUBACK", ack.pkid, other)
                .map_err(|message| violation(ReasonCode::PROTOCOL_ERROR, message))?,
        }
        Ok(())
    }

    /// The error a server's DISCONNECT ends the connection with.
    pub(super) fn server_disconnect(&mut self, d: Option<DisconnectV5>) -> ClientError {
        let (reason, props) = match d {
            Some(d) => (d.reason, d.properties),
            None => (ReasonCode::NORMAL_DISCONNECTION, None),
        };
        let props = props.as_deref();
        let error = ClientError::Disconnected {
            reason,
            reason_string: text(props.and_then(|p| p.reason_string.as_ref())),
            server_reference: text(props.and_then(|p| p.server_reference.as_ref())),
        };
        tracing::info!("client: {error}");
        error
    }
}

/// A PUBACK's or PUBREC's outcome: done, or the server's refusal.
fn ack_outcome(packet: &'static str, reason: ReasonCode, props: Option<&Properties>) -> Outcome {
    if reason.is_error() {
        Outcome::Failed(ClientError::Rejected {
            packet,
            reason,
            reason_string: text(props.and_then(|p| p.reason_string.as_ref())),
        })
    } else {
        Outcome::Done
    }
}

fn subscribe_properties(
    id: Option<u32>,
    user_properties: Vec<(ByteString, ByteString)>,
) -> Option<Box<Properties>> {
    let props = Properties {
        subscription_identifiers: id.into_iter().collect(),
        user_properties,
        ..Properties::default()
    };
    (!props.is_empty()).then(|| Box::new(props))
}

/// Size of a 5.0 PUBLISH, fixed header included.
fn publish_size(topic: &str, qos: QoS, props_len: usize, payload_len: usize) -> usize {
    let pkid = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2
        + topic.len()
        + pkid
        + codec::variable_byte_integer_len(props_len)
        + props_len
        + payload_len;
    1 + codec::remaining_length_size(remaining) + remaining
}

#[cfg(test)]
mod tests;
