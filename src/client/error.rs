//! Why a connection (or the whole client) ended, or why a request failed.

use crate::codec::ConnectReturnCode;

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
}

impl ClientError {
    /// Whether trying to connect again may help: every failure but a refusal that names
    /// the client itself (CONNACK 1, 2, 4 or 5; 3 "server unavailable" may pass).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ClientError::Refused(code) => *code == ConnectReturnCode::ServerUnavailable,
            ClientError::Store(_) | ClientError::Tls(_) => false,
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
