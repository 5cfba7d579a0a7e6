//! MQTT 5.0 for the client: what a 5.0 CONNECT asks for ([`V5Options`]), what the
//! server's CONNACK allowed ([`ServerLimits`]), and the typed errors of a 5.0 publish
//! ([`PublishError`]).
//!
//! The state machine's 5.0 handling (topic aliases, reason codes, subscription options)
//! is in `state/v5.rs`; nothing here runs for a 3.1/3.1.1 client.

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{self, ConnAckV5, Properties, QoS, ReasonCode};

/// The 5.0 CONNECT properties a client asks for (spec 3.1.2.11). `Options::max_packet_size`
/// is sent as Maximum Packet Size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct V5Options {
    /// Seconds the server keeps the session after the connection closes; `None` sends
    /// none (0: the session ends with the connection). `u32::MAX`: never expires.
    pub session_expiry_interval: Option<u32>,
    /// QoS 1/2 publishes the server may have unacknowledged towards this client;
    /// `None` leaves the spec's default (65,535).
    pub receive_maximum: Option<u16>,
    /// Topic aliases the server may use towards this client (0: none).
    pub topic_alias_maximum: u16,
    /// Topic aliases this client uses towards the server at most (0: none); the
    /// CONNACK's Topic Alias Maximum caps it.
    pub outgoing_topic_aliases: u16,
    /// User properties of the CONNECT.
    pub user_properties: Vec<(String, String)>,
    /// Request Problem Information (`None` leaves the default, true).
    pub request_problem_information: Option<bool>,
    /// Enhanced authentication (spec 4.12): the Authentication Method CONNECT names.
    /// The server's AUTH challenges reach the application as [`AuthChallenge`]s.
    pub authentication_method: Option<String>,
    /// The Authentication Data of the CONNECT (needs `authentication_method`).
    pub authentication_data: Option<Bytes>,
}

/// A server's AUTH 0x18 waiting for the application's answer (spec 4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthChallenge {
    /// Names this challenge in the answer: an answer to an older one (of a connection
    /// that is gone) is dropped.
    pub seq: u64,
    /// The server's Authentication Data.
    pub data: Option<Bytes>,
    /// Part of a re-authentication (AUTH 0x19) rather than of the CONNECT.
    pub reauth: bool,
}

impl V5Options {
    /// The CONNECT's property set (`None` when every property is at its default).
    pub(crate) fn connect_properties(&self, max_packet_size: usize) -> Option<Box<Properties>> {
        let props = Properties {
            session_expiry_interval: self.session_expiry_interval.filter(|s| *s != 0),
            receive_maximum: self.receive_maximum,
            topic_alias_maximum: Some(self.topic_alias_maximum).filter(|m| *m != 0),
            // The decoder refuses larger packets anyway; telling the server lets it drop
            // them rather than send them [MQTT-3.1.2-24].
            maximum_packet_size: u32::try_from(max_packet_size)
                .ok()
                .filter(|m| *m < codec::MAX_REMAINING_LENGTH as u32 + 5),
            request_problem_information: self.request_problem_information,
            authentication_method: self.authentication_method.as_deref().map(ByteString::from),
            authentication_data: self.authentication_data.clone(),
            user_properties: self
                .user_properties
                .iter()
                .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                .collect(),
            ..Properties::default()
        };
        (!props.is_empty()).then(|| Box::new(props))
    }
}

/// What the server's CONNACK allowed, with the spec's defaults for what it left out
/// (spec 3.2.2.3), plus the CONNACK as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// QoS 1/2 publishes the client may have unacknowledged [MQTT-3.3.4-7].
    pub receive_maximum: u16,
    /// Highest QoS the server accepts [MQTT-3.2.2-11].
    pub maximum_qos: QoS,
    /// Whether retained messages are accepted [MQTT-3.2.2-14].
    pub retain_available: bool,
    /// Largest packet the server accepts; `None`: no limit but the protocol's
    /// [MQTT-3.2.2-15].
    pub maximum_packet_size: Option<u32>,
    /// Topic aliases the client may use [MQTT-3.2.2-17].
    pub topic_alias_maximum: u16,
    /// The keepalive the client must use instead of its own [MQTT-3.2.2-21].
    pub server_keep_alive: Option<u16>,
    /// The client id the server assigned to an empty one.
    pub assigned_client_identifier: Option<String>,
    /// The CONNACK as received (reason code and every property).
    pub connack: ConnAckV5,
}

impl ServerLimits {
    pub(crate) fn from_connack(mut connack: ConnAckV5) -> ServerLimits {
        // Owned copies: the received strings share the read buffer's memory, which this
        // would otherwise pin for as long as the connection's limits are kept.
        if let Some(p) = connack.properties.as_deref_mut() {
            let own = |s: &mut ByteString| *s = ByteString::from(&**s);
            for s in [
                &mut p.assigned_client_identifier,
                &mut p.reason_string,
                &mut p.response_information,
                &mut p.server_reference,
                &mut p.authentication_method,
            ]
            .into_iter()
            .flatten()
            {
                own(s);
            }
            for (k, v) in &mut p.user_properties {
                own(k);
                own(v);
            }
            p.authentication_data = p
                .authentication_data
                .as_deref()
                .map(bytes::Bytes::copy_from_slice);
        }
        let p = connack.properties.as_deref();
        let get = |f: fn(&Properties) -> Option<u32>| p.and_then(f);
        ServerLimits {
            receive_maximum: p.and_then(|p| p.receive_maximum).unwrap_or(u16::MAX),
            maximum_qos: match p.and_then(|p| p.maximum_qos) {
                Some(0) => QoS::AtMostOnce,
                Some(1) => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain_available: p.and_then(|p| p.retain_available).unwrap_or(true),
            maximum_packet_size: get(|p| p.maximum_packet_size),
            topic_alias_maximum: p.and_then(|p| p.topic_alias_maximum).unwrap_or(0),
            server_keep_alive: p.and_then(|p| p.server_keep_alive),
            assigned_client_identifier: p
                .and_then(|p| p.assigned_client_identifier.as_ref())
                .map(|s| s.to_string()),
            connack,
        }
    }
}

/// Why a re-authentication cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReauthError {
    #[error("the client is not connected")]
    NotConnected,
    /// [MQTT-4.12.1-1]: a re-authentication uses the CONNECT's method; there was none.
    #[error("[MQTT-4.12.1-1] re-authentication needs the auth_method the client connected with")]
    NoMethod,
    #[error("a re-authentication is already running")]
    InProgress,
    #[error("{0}")]
    Encode(String),
}

/// Why a 5.0 publish was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// A bad topic, payload or property.
    #[error("{0}")]
    Invalid(String),
    /// The packet could not be encoded (bad topic, property or size).
    #[error(transparent)]
    Encode(#[from] codec::Error),
    /// Larger than the server's Maximum Packet Size [MQTT-3.1.2-24].
    #[error(
        "[MQTT-3.1.2-24] the PUBLISH would be {size} bytes, more than the server's \
         Maximum Packet Size of {max}: not sent"
    )]
    PacketTooLarge { size: usize, max: u32 },
    /// Above the server's Maximum QoS [MQTT-3.2.2-11].
    #[error(
        "[MQTT-3.2.2-11] the server's Maximum QoS is {}: a QoS {} publish is not sent",
        *.max as u8, *.qos as u8
    )]
    QosNotSupported { qos: QoS, max: QoS },
    /// Retain on a server without Retain Available [MQTT-3.2.2-14].
    #[error("[MQTT-3.2.2-14] the server does not support retained messages: not sent")]
    RetainNotSupported,
}

impl PublishError {
    /// The reason code a server would have answered with.
    pub fn reason(&self) -> ReasonCode {
        match self {
            PublishError::Encode(_) | PublishError::Invalid(_) => ReasonCode::MALFORMED_PACKET,
            PublishError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            PublishError::QosNotSupported { .. } => ReasonCode::QOS_NOT_SUPPORTED,
            PublishError::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_properties_leave_defaults_out() {
        assert_eq!(
            V5Options::default().connect_properties(codec::MAX_REMAINING_LENGTH + 5),
            None
        );
        let o = V5Options {
            session_expiry_interval: Some(60),
            receive_maximum: Some(5),
            topic_alias_maximum: 10,
            user_properties: vec![("k".into(), "v".into())],
            ..V5Options::default()
        };
        let p = o.connect_properties(1000).expect("properties");
        assert_eq!(p.session_expiry_interval, Some(60));
        assert_eq!(p.receive_maximum, Some(5));
        assert_eq!(p.topic_alias_maximum, Some(10));
        assert_eq!(p.maximum_packet_size, Some(1000));
        assert_eq!(p.user_properties.len(), 1);
    }

    #[test]
    fn server_limits_default_as_the_spec_says() {
        let l = ServerLimits::from_connack(ConnAckV5 {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: None,
        });
        assert_eq!(
            (
                l.receive_maximum,
                l.maximum_qos,
                l.retain_available,
                l.maximum_packet_size,
                l.topic_alias_maximum
            ),
            (u16::MAX, QoS::ExactlyOnce, true, None, 0)
        );
    }
}
