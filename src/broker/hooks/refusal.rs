//! A hook's refusal with the MQTT 5.0 reason code it chose (and, optionally, a Reason
//! String): `pyo3mq.Deny(reason_code=0x97, reason_string="quota exceeded")` from a Python
//! authorizer or authenticator, or 0x87 Not authorized from the built-ins.
//!
//! A hook may name any error code; the connection checks it against the table of the
//! packet it goes in ([`Refusal::checked`]) before it is sent, because a code outside the
//! table would make the packet malformed (the encoder refuses it, and the client would
//! get no answer at all). 3.1/3.1.1 clients get the nearest code their revision has.

use bytestring::ByteString;
use tracing::warn;

use crate::codec::{ConnectReturnCode, ReasonCode, ReasonPacket};

/// A refusal: an error reason code (0x80 or above) and an optional Reason String.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ReasonCode,
    pub reason: Option<ByteString>,
}

/// An authorization verdict: `Ok` with what is granted, or the refusal.
pub type Verdict<T = ()> = Result<T, Refusal>;

impl Refusal {
    /// 0x87 Not authorized without a reason string: the default denial (a hook that
    /// fails, times out or answers `False`, and the ACL file).
    pub const NOT_AUTHORIZED: Refusal = Refusal {
        code: ReasonCode::NOT_AUTHORIZED,
        reason: None,
    };

    /// This refusal if `packet` may carry its code, else 0x87 Not authorized, with a
    /// log line naming the rule the hook's code would have broken. PUBACK and PUBREC
    /// share one table, so a publish refusal is checked once for either.
    pub fn checked(self, packet: ReasonPacket, client_id: &str) -> Refusal {
        if self.code.is_error() && self.code.allowed_in(packet) {
            return self;
        }
        let rule = match packet {
            ReasonPacket::ConnAck => "[MQTT-3.2.2-8] CONNACK",
            ReasonPacket::PubAck | ReasonPacket::PubRec => {
                "[MQTT-3.4.2-1] [MQTT-3.5.2-1] PUBACK/PUBREC"
            }
            ReasonPacket::SubAck => "[MQTT-3.9.3-2] SUBACK",
            _ => "this packet's",
        };
        warn!(
            %client_id,
            "a hook refused with reason code {}, which is not an error code of the {rule} \
             reason code table: sending 0x87 Not authorized instead",
            self.code
        );
        Refusal::NOT_AUTHORIZED
    }

    /// The 3.1/3.1.1 CONNACK return code nearest to this 5.0 CONNACK reason code.
    pub fn connect_return_code(&self) -> ConnectReturnCode {
        match self.code {
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => {
                ConnectReturnCode::UnacceptableProtocolVersion
            }
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => ConnectReturnCode::IdentifierRejected,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD | ReasonCode::BAD_AUTHENTICATION_METHOD => {
                ConnectReturnCode::BadUserNameOrPassword
            }
            // The server cannot take the client now; it may try again later.
            ReasonCode::SERVER_UNAVAILABLE
            | ReasonCode::SERVER_BUSY
            | ReasonCode::QUOTA_EXCEEDED
            | ReasonCode::USE_ANOTHER_SERVER
            | ReasonCode::SERVER_MOVED
            | ReasonCode::CONNECTION_RATE_EXCEEDED => ConnectReturnCode::ServerUnavailable,
            // Banned, Not authorized and the rest: 3.1.1 has no closer word.
            _ => ConnectReturnCode::NotAuthorized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: u8) -> Refusal {
        Refusal {
            code: ReasonCode(code),
            reason: Some(ByteString::from("why")),
        }
    }

    #[test]
    fn codes_outside_the_packets_table_become_0x87() {
        // 0x97 Quota exceeded is in every table here; 0x8A Banned only in CONNACK's,
        // 0xA2 Wildcard Subscriptions not supported only in SUBACK's; a success code
        // (0x10) is no refusal.
        let cases = [
            (0x97, ReasonPacket::PubAck, true),
            (0x97, ReasonPacket::SubAck, true),
            (0x97, ReasonPacket::ConnAck, true),
            (0x8A, ReasonPacket::ConnAck, true),
            (0x8A, ReasonPacket::PubAck, false),
            (0xA2, ReasonPacket::SubAck, true),
            (0xA2, ReasonPacket::PubRec, false),
            (0x10, ReasonPacket::PubAck, false),
        ];
        for (code, packet, kept) in cases {
            let want = if kept {
                refusal(code)
            } else {
                Refusal::NOT_AUTHORIZED
            };
            assert_eq!(
                refusal(code).checked(packet, "c"),
                want,
                "{code:#x} {packet:?}"
            );
        }
    }

    #[test]
    fn nearest_3_1_1_connack_codes() {
        let code = |c: u8| refusal(c).connect_return_code();
        assert_eq!(code(0x86), ConnectReturnCode::BadUserNameOrPassword);
        assert_eq!(code(0x87), ConnectReturnCode::NotAuthorized);
        assert_eq!(code(0x8A), ConnectReturnCode::NotAuthorized);
        assert_eq!(code(0x9F), ConnectReturnCode::ServerUnavailable);
        assert_eq!(code(0x85), ConnectReturnCode::IdentifierRejected);
        assert_eq!(code(0x84), ConnectReturnCode::UnacceptableProtocolVersion);
    }
}
