//! Extension points the broker calls: authentication at CONNECT, authorization of
//! subscriptions and publishes, and events. Pure Rust: the Python-backed implementations
//! live with the bindings, the built-ins (mosquitto's password and ACL files) here.
//!
//! Hooks are async because a user's check may talk to a database. The broker bounds every
//! call with a timeout, and a hook that fails or times out denies; it never stops the
//! broker. Publish authorization results are cached per connection so that a hook is not
//! called per message.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::broker::session::Message;
use crate::codec::{ConnectReturnCode, Protocol, QoS};

mod acl_file;
mod enhanced_auth;
mod password_file;
mod refusal;
mod reload;

pub use acl_file::{filter_covers, AclFile};
pub use enhanced_auth::{AuthState, EnhancedAuthRequest, EnhancedAuthStep, EnhancedAuthenticator};
pub use password_file::PasswordFile;
pub use refusal::{Refusal, Verdict};
pub use reload::Reloadable;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What an authenticator sees of a CONNECT.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    /// The subject of the client's verified TLS certificate (RFC 4514), when it gave one.
    pub certificate_subject: Option<ByteString>,
}

/// Verdict of an authenticator; a denial carries the CONNACK code to send (0x04 or 0x05),
/// a refusal the 5.0 reason code a hook chose (3.1.1 clients get the nearest code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    Allow,
    Deny(ConnectReturnCode),
    Refuse(Refusal),
}

pub trait Authenticator: Send + Sync {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision>;
}

/// Who is asking, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    /// The subject of the client's verified TLS certificate (RFC 4514), when it gave one.
    pub certificate_subject: Option<ByteString>,
    /// The MQTT version the client connected with (3.1, 3.1.1 or 5.0; a bridge's 3.1.1).
    pub protocol: Protocol,
}

pub trait Authorizer: Send + Sync {
    /// The QoS to grant (at most `qos`), or the refusal: SUBACK 0x80 for 3.1.1, the
    /// refusal's reason code for 5.0.
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Verdict<QoS>>;
    /// Whether the client may publish to `topic`. A refused message is acknowledged and
    /// dropped [MQTT-3.3.5-2]; a 5.0 PUBACK/PUBREC carries the refusal's reason code.
    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<Verdict>;
    /// Changes whenever the rules may have changed (a reload): connections then forget
    /// the publish decisions they cached and ask again. One atomic load per publish.
    fn generation(&self) -> u64 {
        0
    }
}

/// Sees every published message before it is routed, in batches (all the PUBLISHes of
/// one read from a connection), and may drop (`None`) or replace each. The publishing
/// connection waits for the verdict, so a slow interceptor slows its publishers.
pub trait Interceptor: Send + Sync {
    fn intercept(
        &self,
        client: &ClientInfo,
        batch: Vec<Arc<Message>>,
    ) -> BoxFuture<Vec<Option<Arc<Message>>>>;
}

/// Why a connection ended, as events report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT.
    Clean,
    Keepalive,
    /// A protocol violation, a network error, or the peer closing without DISCONNECT.
    Error,
    Takeover,
    Shutdown,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Clean => "clean",
            DisconnectReason::Keepalive => "keepalive",
            DisconnectReason::Error => "error",
            DisconnectReason::Takeover => "takeover",
            DisconnectReason::Shutdown => "shutdown",
        }
    }
}

/// Something that happened, for observers. Events are offered without waiting: a full
/// event queue drops the event (and counts it) rather than slow a connection.
#[derive(Debug, Clone)]
pub enum Event {
    Connected {
        client: ClientInfo,
        peer: SocketAddr,
        clean_session: bool,
        session_present: bool,
    },
    Disconnected {
        client_id: ByteString,
        reason: DisconnectReason,
        /// The reason code of the 5.0 DISCONNECT that ended it, whichever side sent it;
        /// `None` without one (3.1/3.1.1, or the network closed).
        reason_code: Option<u8>,
    },
    Subscribed {
        client_id: ByteString,
        /// Filter and the SUBACK code given (0, 1, 2 or 0x80).
        filters: Vec<(ByteString, u8)>,
    },
    Unsubscribed {
        client_id: ByteString,
        filters: Vec<ByteString>,
    },
}

pub trait EventSink: Send + Sync {
    /// Offers an event without waiting; false when the observer's queue is full and the
    /// event was dropped (the router counts and logs that).
    fn event(&self, event: Event) -> bool;
}

/// The hooks a broker runs with; all optional. No authenticator means everyone may
/// connect (SurgeMQ's "mockSuccess"), no authorizer means every topic is open.
#[derive(Clone, Default)]
pub struct Hooks {
    pub authenticator: Option<Arc<dyn Authenticator>>,
    pub authorizer: Option<Arc<dyn Authorizer>>,
    pub events: Option<Arc<dyn EventSink>>,
    pub interceptor: Option<Arc<dyn Interceptor>>,
    /// MQTT 5.0 enhanced authentication (hooks/enhanced_auth.rs).
    pub enhanced_authenticator: Option<Arc<dyn EnhancedAuthenticator>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("authenticator", &self.authenticator.is_some())
            .field("authorizer", &self.authorizer.is_some())
            .field("events", &self.events.is_some())
            .field("interceptor", &self.interceptor.is_some())
            .field(
                "enhanced_authenticator",
                &self.enhanced_authenticator.is_some(),
            )
            .finish()
    }
}
