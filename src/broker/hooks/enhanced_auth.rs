//! The MQTT 5.0 enhanced authentication hook (spec 4.12): a challenge/response exchange
//! of AUTH packets named by an Authentication Method (a SASL mechanism such as
//! `SCRAM-SHA-256`), at CONNECT and again whenever the client re-authenticates.
//!
//! The broker drives the packets (connection/enhanced_auth.rs); the hook only sees each
//! step's data and says how to go on. A method needs state across its round trips (a
//! SCRAM server remembers its nonce), so every answer that continues carries an opaque
//! [`AuthState`] that the next step of the same exchange gets back; the connection holds
//! it in between and drops it when the exchange ends, however it ends.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use bytestring::ByteString;

use super::{BoxFuture, ClientInfo};

/// What a method keeps between the steps of one exchange; the broker never looks inside.
#[derive(Default)]
pub struct AuthState(pub Option<Box<dyn Any + Send + Sync>>);

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AuthState(..)"
        } else {
            "AuthState(None)"
        })
    }
}

/// One step of an exchange: the Authentication Data the client sent (in CONNECT, or in
/// its latest AUTH).
#[derive(Debug)]
pub struct EnhancedAuthRequest {
    pub client: ClientInfo,
    pub peer: SocketAddr,
    pub method: ByteString,
    pub data: Option<Bytes>,
    /// A re-authentication (the client's AUTH 0x19 after CONNACK, 4.12.1), not a login.
    pub reauth: bool,
    /// The state the previous step of this exchange returned; empty at the first step.
    pub state: AuthState,
}

/// How the exchange goes on after a step.
#[derive(Debug)]
pub enum EnhancedAuthStep {
    /// Send the client AUTH 0x18 with `data` and wait for its answer [MQTT-4.12.0-2].
    Continue {
        data: Option<Bytes>,
        state: AuthState,
    },
    /// Authenticated: CONNACK 0x00 (or AUTH 0x00 for a re-authentication), with `data`
    /// as the final Authentication Data.
    Success { data: Option<Bytes> },
    /// Refused: CONNACK 0x87 (or DISCONNECT 0x87 for a re-authentication), then close
    /// [MQTT-4.12.0-4], [MQTT-4.12.1-2].
    Failure,
}

pub trait EnhancedAuthenticator: Send + Sync {
    /// Whether this authenticator implements `method`; a CONNECT naming a method no
    /// authenticator implements gets CONNACK 0x8C [MQTT-4.12.0-1].
    fn handles(&self, method: &str) -> bool;
    /// Runs one step. The broker bounds it with `auth_timeout`; a timeout is a
    /// [`EnhancedAuthStep::Failure`].
    fn step(&self, request: EnhancedAuthRequest) -> BoxFuture<EnhancedAuthStep>;
}
