//! The reason codes of a 5.0 connection's acknowledgements that depend on what happened
//! to the packet: PUBACK/PUBREC 0x10 No matching subscribers, and the refusals a hook
//! chose (hooks/refusal.rs) in PUBACK/PUBREC, SUBACK and CONNACK, with their Reason
//! String when it fits the client's Maximum Packet Size.
//!
//! 3.1/3.1.1 acknowledgements have no reason code: they go out as before, and a hook's
//! CONNACK code becomes the nearest 3.1.1 one ([`Refusal::connect_return_code`]).

use bytes::BytesMut;
use bytestring::ByteString;

use crate::broker::hooks::{AuthDecision, Refusal};
use crate::codec::{AckV5, ConnAckV5, Connect, Packet, Properties, Protocol, QoS, ReasonCode};

use super::Connection;

/// What became of a PUBLISH, for its acknowledgement.
pub(super) enum Published {
    /// Accepted; `matched` is false only when it is known that no subscriber at all
    /// took it (5.0: 0x10 No matching subscribers).
    Accepted {
        matched: bool,
    },
    Refused(Refusal),
}

impl Connection {
    /// PUBACK or PUBREC. 3.1/3.1.1 (and 5.0 Success): the short form. 5.0: 0x10 when
    /// nothing matched, or the refusal's code (0x87 Not authorized unless a hook chose
    /// another) [MQTT-3.4.2-1], [MQTT-3.5.2-1], with its Reason String if it fits
    /// [MQTT-3.4.2-2], [MQTT-3.5.2-2].
    pub(super) fn put_publish_ack(&mut self, qos: QoS, pkid: u16, published: Published) {
        let exactly_once = qos == QoS::ExactlyOnce;
        let (reason, text) = match published {
            // The common case, and every 3.1/3.1.1 acknowledgement.
            Published::Accepted { matched: true } => {
                return self.send_packet(&short_ack(exactly_once, pkid))
            }
            _ if self.protocol != Protocol::V5 => {
                return self.send_packet(&short_ack(exactly_once, pkid))
            }
            Published::Accepted { matched: false } => (ReasonCode::NO_MATCHING_SUBSCRIBERS, None),
            Published::Refused(refusal) => (refusal.code, refusal.reason),
        };
        let max = self.out.max_packet_size();
        let packet = with_reason_string(text.as_ref(), max, |properties| {
            let ack = AckV5 {
                pkid,
                reason,
                properties,
            };
            if exactly_once {
                Packet::PubRecV5(ack)
            } else {
                Packet::PubAckV5(ack)
            }
        });
        self.send_packet(&packet);
    }

    /// The Reason String a 5.0 SUBACK carries: the first refused filter's, if its hook
    /// gave one and it fits [MQTT-3.9.2-1].
    pub(super) fn suback_properties(
        &self,
        reason: Option<&ByteString>,
        build: impl Fn(Option<Box<Properties>>) -> Packet,
    ) -> Packet {
        with_reason_string(reason, self.out.max_packet_size(), build)
    }

    /// The CONNACK for a login the authenticator refused: its code (5.0), or the nearest
    /// 3.1.1 one, with the hook's Reason String if it fits [MQTT-3.2.2-19].
    pub(super) async fn refuse_login(&mut self, connect: &Connect, decision: AuthDecision) {
        let refusal = match decision {
            AuthDecision::Allow => return,
            AuthDecision::Deny(code) => return self.refuse(code).await,
            AuthDecision::Refuse(refusal) if self.protocol != Protocol::V5 => {
                return self.refuse(refusal.connect_return_code()).await
            }
            AuthDecision::Refuse(refusal) => refusal,
        };
        let max = Self::client_max_packet_size(connect);
        let packet = with_reason_string(refusal.reason.as_ref(), max, |properties| {
            Packet::ConnAckV5(ConnAckV5 {
                session_present: false,
                reason: refusal.code,
                properties,
            })
        });
        self.refuse_with(&packet).await;
    }
}

fn short_ack(exactly_once: bool, pkid: u16) -> Packet {
    if exactly_once {
        Packet::PubRec(pkid)
    } else {
        Packet::PubAck(pkid)
    }
}

/// `build(properties)` with `reason` as the Reason String, unless that would make the
/// packet larger than the client's Maximum Packet Size `max` (0: none given); then
/// without it.
fn with_reason_string(
    reason: Option<&ByteString>,
    max: u32,
    build: impl Fn(Option<Box<Properties>>) -> Packet,
) -> Packet {
    let Some(reason) = reason else {
        return build(None);
    };
    let packet = build(Some(Box::new(Properties {
        reason_string: Some(reason.clone()),
        ..Properties::default()
    })));
    if max == 0 {
        return packet;
    }
    // Only refusals get here: measuring by encoding costs nothing that matters.
    let mut encoded = BytesMut::new();
    match packet.encode(&mut encoded) {
        Ok(()) if encoded.len() <= max as usize => packet,
        _ => build(None),
    }
}
