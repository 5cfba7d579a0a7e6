//! Why a connection (or the whole client) ended, or why a request failed.

use crate::codec::{ConnectReturnCode, ReasonCode};

/// Why a connection (or the whole client) ended, or why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// CONNACK with a non-zero return code.
    #[error("connection refused: CONNACK return code {} ({})", *.0 as u8, refusal_reason(*.0))]
    Refused(ConnectReturnCode),
    /// The server sent a malformed packet or broke the protocol; the connection was closed.
    #[error("protocol error from the server, connection closed: {0}")]
    Protocol(String),
    /// The TCP connection could not be made.
    #[error("could not connect: {0}")]
    ConnectFailed(String),
    /// The TLS handshake failed on the certificates or the server's refusal: the server's
    /// certificate is not trusted or not for this name, or the server wants a client
    /// certificate it was not given. Retrying does not change that.
    #[error("{0}")]
    Tls(String),
    /// The connection broke (reset, EOF, write error).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No CONNACK in time, or no PINGRESP in time (the server vanished).
    #[error("{0}")]
    Timeout(String),
    /// The session store could not commit: the client closed rather than send what it
    /// could not keep.
    #[error("session store: {0}")]
    Store(String),
    /// The client was closed by its user.
    #[error("the client is closed")]
    Closed,
    /// MQTT 5.0: the server broke the protocol; the client sent DISCONNECT with `reason`
    /// before it closed the connection (spec 4.13.1).
    #[error(
        "protocol error from the server, connection closed with DISCONNECT {reason}: {message}"
    )]
    ProtocolV5 { reason: ReasonCode, message: String },
    /// MQTT 5.0: CONNACK with a reason code of 0x80 or more.
    #[error("connection refused: CONNACK reason code {reason}{}", suffix(.reason_string))]
    RefusedV5 {
        reason: ReasonCode,
        reason_string: Option<String>,
    },
    /// MQTT 5.0: the server sent DISCONNECT (takeover, shutdown, keepalive, ...).
    #[error("the server disconnected: reason code {reason}{}", suffix(.reason_string))]
    Disconnected {
        reason: ReasonCode,
        reason_string: Option<String>,
        server_reference: Option<String>,
    },
    /// MQTT 5.0: PUBACK or PUBREC with a reason code of 0x80 or more ends a publish.
    #[error("the server refused the publish: {packet} reason code {reason}{}", suffix(.reason_string))]
    Rejected {
        packet: &'static str,
        reason: ReasonCode,
        reason_string: Option<String>,
    },
}

/// ": reason string" when the server sent one.
fn suffix(reason_string: &Option<String>) -> String {
    reason_string
        .as_deref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

impl ClientError {
    /// Whether trying to connect again may help: every failure but a refusal that names
    /// the client itself (CONNACK 1, 2, 4 or 5; 3 "server unavailable" may pass).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused(code) => *code == ConnectReturnCode::ServerUnavailable,
            ClientError::Store(_) | ClientError::Tls(_) => false,
            // Busy, unavailable, quota and rate refusals may pass; the others name the
            // client (version, id, credentials, authorization, bans) and will not.
            ClientError::RefusedV5 { reason, .. } => matches!(reason.0, 0x88 | 0x89 | 0x97 | 0x9F),
            // Another connection took the session: coming back would take it back, and
            // the two clients would push each other out for ever.
            ClientError::Disconnected { reason, .. } => *reason != ReasonCode::SESSION_TAKEN_OVER,
            _ => true,
        }
    }
}

fn refusal_reason(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Accepted => "accepted",
        ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::IdentifierRejected => "identifier rejected",
        ConnectReturnCode::ServerUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_return_code() {
        let e = ClientError::Refused(ConnectReturnCode::NotAuthorized);
        assert_eq!(
            e.to_string(),
            "connection refused: CONNACK return code 5 (not authorized)"
        );
        assert!(!e.is_retryable());
        assert!(ClientError::Refused(ConnectReturnCode::ServerUnavailable).is_retryable());
        assert!(ClientError::ConnectFailed("refused".into()).is_retryable());
    }
}
