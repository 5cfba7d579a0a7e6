//! Extension points the broker calls: authentication at CONNECT, authorization of
//! subscriptions and publishes, and events. Pure Rust: the Python-backed implementations
//! live with the bindings, the built-ins (mosquitto's password and ACL files) here.
//!
//! Hooks are async because a user's check may talk to a database. The broker bounds every
//! call with a timeout, and a hook that fails or times out denies; it never stops the
//! broker. Publish authorization results are cached per connection so that a hook is not
//! called per message.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use bytestring::ByteString;
use sha2::{Digest, Sha512};

use crate::broker::session::Message;
use crate::codec::{ConnectReturnCode, Protocol, QoS};
use crate::topic;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What an authenticator sees of a CONNECT.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub peer: SocketAddr,
    pub protocol: Protocol,
}

/// Verdict of an authenticator; a denial carries the CONNACK code to send (0x04 or 0x05).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Allow,
    Deny(ConnectReturnCode),
}

pub trait Authenticator: Send + Sync {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision>;
}

/// Who is asking, for authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
}

pub trait Authorizer: Send + Sync {
    /// The QoS to grant (at most `qos`), or `None` to refuse with SUBACK 0x80.
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Option<QoS>>;
    /// Whether the client may publish to `topic`. A refused message is acknowledged and
    /// dropped [MQTT-3.3.5-2].
    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<bool>;
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
    fn event(&self, event: Event);
}

/// The hooks a broker runs with; all optional. No authenticator means everyone may
/// connect (SurgeMQ's "mockSuccess"), no authorizer means every topic is open.
#[derive(Clone, Default)]
pub struct Hooks {
    pub authenticator: Option<Arc<dyn Authenticator>>,
    pub authorizer: Option<Arc<dyn Authorizer>>,
    pub events: Option<Arc<dyn EventSink>>,
    pub interceptor: Option<Arc<dyn Interceptor>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("authenticator", &self.authenticator.is_some())
            .field("authorizer", &self.authorizer.is_some())
            .field("events", &self.events.is_some())
            .field("interceptor", &self.interceptor.is_some())
            .finish()
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto_passwd files
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum PasswordHash {
    /// `$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512 (mosquitto 2.x).
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// `$6$SALT$HASH`: SHA-512 of password then salt (mosquitto 1.x).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl PasswordHash {
    fn parse(text: &str) -> Result<PasswordHash, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| b64.decode(s).map_err(|e| format!("bad base64: {e}"));
        let parts: Vec<&str> = text.split('$').collect();
        match parts.as_slice() {
            ["", "7", iterations, salt, hash] => Ok(PasswordHash::Pbkdf2Sha512 {
                iterations: iterations
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("bad iteration count")?,
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            ["", "6", salt, hash] => Ok(PasswordHash::Sha512 {
                salt: decode(salt)?,
                hash: decode(hash)?,
            }),
            _ => Err("not a mosquitto_passwd hash ($6$ or $7$)".into()),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut derived);
                constant_time_eq(&derived, hash)
            }
            PasswordHash::Sha512 { salt, hash } => {
                let mut hasher = Sha512::new();
                hasher.update(password);
                hasher.update(salt);
                constant_time_eq(&hasher.finalize(), hash)
            }
        }
    }
}

/// Compares without an early exit, so timing does not reveal how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Users and password hashes from a file in mosquitto_passwd's format.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, PasswordHash>,
}

impl PasswordFile {
    pub fn parse(text: &str) -> Result<PasswordFile, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // User names cannot contain ':', passwords hashes never do.
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected USER:HASH", n + 1))?;
            let hash = PasswordHash::parse(hash).map_err(|e| format!("line {}: {e}", n + 1))?;
            users.insert(user.to_string(), hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn load(path: &str) -> Result<PasswordFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read password file {path}: {e}"))?;
        PasswordFile::parse(&text).map_err(|e| format!("password file {path}: {e}"))
    }

    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.users
            .get(username)
            .is_some_and(|hash| hash.verify(password))
    }
}

impl Authenticator for PasswordFile {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        let decision = match (&request.username, &request.password) {
            (Some(user), Some(password)) if self.verify(user, password) => AuthDecision::Allow,
            _ => AuthDecision::Deny(ConnectReturnCode::BadUserNameOrPassword),
        };
        Box::pin(async move { decision })
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto acl_file
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, Clone)]
struct AclRule {
    access: Access,
    filter: String,
    /// `pattern` rules substitute `%c` (client id) and `%u` (user name).
    pattern: bool,
}

/// Rules from a file in mosquitto's `acl_file` format: `topic [read|write|readwrite|deny]
/// FILTER` lines before any `user` line apply to anonymous clients, those after
/// `user NAME` to that user, and `pattern ...` lines to everyone with `%c`/`%u`
/// substituted. A `deny` rule that matches wins over any grant.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<AclRule>,
    users: HashMap<String, Vec<AclRule>>,
    patterns: Vec<AclRule>,
}

impl AclFile {
    pub fn parse(text: &str) -> Result<AclFile, String> {
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("line {}: {what}", n + 1);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("user needs a name"));
                    }
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once(char::is_whitespace) {
                        Some((word, filter)) if access_word(word).is_some() => (
                            access_word(word).unwrap_or(Access::ReadWrite),
                            filter.trim(),
                        ),
                        _ => (Access::ReadWrite, rest),
                    };
                    if filter.is_empty() {
                        return Err(err("missing topic"));
                    }
                    let rule = AclRule {
                        access,
                        filter: filter.to_string(),
                        pattern: keyword == "pattern",
                    };
                    if rule.pattern {
                        acl.patterns.push(rule);
                    } else {
                        topic::validate_topic_filter(filter)
                            .map_err(|e| err(&format!("invalid topic: {e}")))?;
                        match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => return Err(err(&format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    pub fn load(path: &str) -> Result<AclFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read ACL file {path}: {e}"))?;
        AclFile::parse(&text).map_err(|e| format!("ACL file {path}: {e}"))
    }

    /// Whether `client` may read (`write == false`) or write `target`. For a read,
    /// `target` is a subscription filter and must be covered by the rule's filter.
    pub fn allows(&self, client: &ClientInfo, target: &str, write: bool) -> bool {
        let own = match &client.username {
            Some(user) => self.users.get(user.as_ref() as &str).map(Vec::as_slice),
            None => Some(self.anonymous.as_slice()),
        };
        let mut granted = false;
        let rules = own.unwrap_or(&[]).iter().map(|r| (r, None)).chain(
            self.patterns
                .iter()
                .map(|r| (r, Some(substitute(&r.filter, client)))),
        );
        for (rule, substituted) in rules {
            let filter = substituted.as_deref().unwrap_or(&rule.filter);
            let hit = if write {
                topic::matches(filter, target)
            } else {
                filter_covers(filter, target)
            };
            if !hit {
                continue;
            }
            match rule.access {
                Access::Deny => return false,
                Access::ReadWrite => granted = true,
                Access::Read if !write => granted = true,
                Access::Write if write => granted = true,
                _ => {}
            }
        }
        granted
    }
}

fn access_word(word: &str) -> Option<Access> {
    match word {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    }
}

/// `%c` and `%u` substitution; a client without a user name matches no `%u` rule.
fn substitute(filter: &str, client: &ClientInfo) -> String {
    let user = client.username.as_deref().unwrap_or("\u{0}");
    filter.replace("%c", &client.client_id).replace("%u", user)
}

/// True when every topic `sub` can match is matched by `acl` (so subscribing to `sub`
/// reveals nothing the rule does not grant): `+` in `sub` needs `+` or `#` in `acl`,
/// `#` in `sub` needs `#`.
pub fn filter_covers(acl: &str, sub: &str) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not reach `$` topics, so it covers none.
    if sub.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        return false;
    }
    let mut acl_levels = acl.split('/');
    let mut sub_levels = sub.split('/');
    loop {
        match (acl_levels.next(), sub_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(s)) if s != "#" => {}
            (Some(a), Some(s)) if a == s && a != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Authorizer for AclFile {
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Option<QoS>> {
        let granted = self.allows(client, filter, false).then_some(qos);
        Box::pin(async move { granted })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<bool> {
        let allowed = self.allows(client, topic, true);
        Box::pin(async move { allowed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `mosquitto_passwd -c -b pw.txt alice s3cret` and `-b pw.txt bob p@ss:word`
    // (mosquitto 2.0.11).
    const PASSWD: &str = "alice:$7$101$PPwfPaWuoGy8HtoG$peGBGgnJ+IdHyd5xmd0/ZFqE6+VcQ44CETLJMUXk+PnNcGPwTrUPVnjLfq+Y10c0THOi9a1Pqqbc/SCg0zETVQ==
bob:$7$101$M1JNCCEQt3puMIYo$s8MCba+nnvqV9m8YAtwqaq1HQFuLF2vUWzwzHr4N9um0L2U08WsTO9PxZeCPeUxpvlqOw5jdMegOJEjP0NgPtA==
";

    #[test]
    fn mosquitto_passwd_hashes_verify() {
        let file = PasswordFile::parse(PASSWD).unwrap();
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cret "));
        assert!(file.verify("bob", b"p@ss:word"));
        assert!(!file.verify("bob", b"s3cret"));
        assert!(!file.verify("carol", b"anything"));
    }

    #[test]
    fn legacy_sha512_hash_verifies() {
        let salt = b"saltsalt";
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(salt);
        let b64 = base64::engine::general_purpose::STANDARD;
        let line = format!("u:$6${}${}", b64.encode(salt), b64.encode(h.finalize()));
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("u", b"pw"));
        assert!(!file.verify("u", b"pW"));
    }

    #[test]
    fn bad_password_lines_are_errors() {
        assert!(PasswordFile::parse("alice").is_err());
        assert!(PasswordFile::parse("alice:plain").is_err());
        assert!(PasswordFile::parse("alice:$7$0$AA==$AA==").is_err());
    }

    fn client(id: &str, user: Option<&str>) -> ClientInfo {
        ClientInfo {
            client_id: ByteString::from(id),
            username: user.map(ByteString::from),
        }
    }

    #[test]
    fn acl_users_patterns_and_deny() {
        let acl = AclFile::parse(
            "# anonymous\ntopic read public/#\n\nuser alice\ntopic readwrite alice/#\n\
             topic write sensors/+/temp\ntopic deny alice/secret\n\
             pattern readwrite devices/%c/#\npattern read users/%u/inbox\n",
        )
        .unwrap();
        let anon = client("dev1", None);
        let alice = client("dev2", Some("alice"));
        assert!(acl.allows(&anon, "public/news", false));
        assert!(!acl.allows(&anon, "public/news", true), "read only");
        assert!(
            !acl.allows(&alice, "public/news", false),
            "anonymous rules only"
        );
        assert!(acl.allows(&alice, "alice/x", true));
        assert!(!acl.allows(&alice, "alice/secret", true), "deny wins");
        assert!(acl.allows(&alice, "sensors/k/temp", true));
        assert!(!acl.allows(&alice, "sensors/k/temp", false), "write only");
        assert!(acl.allows(&anon, "devices/dev1/state", true));
        assert!(!acl.allows(&anon, "devices/dev2/state", true));
        assert!(acl.allows(&alice, "users/alice/inbox", false));
        assert!(!acl.allows(&anon, "users/alice/inbox", false));
    }

    #[test]
    fn subscription_must_be_covered() {
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("a/+/c", "a/b"));
        assert!(filter_covers("#", "x/y"));
        assert!(!filter_covers("#", "$SYS/x"));
        assert!(!filter_covers("+/x", "$SYS/x"));
        assert!(filter_covers("$SYS/#", "$SYS/x"));
    }

    #[test]
    fn acl_syntax_errors() {
        assert!(AclFile::parse("topic").is_err());
        assert!(AclFile::parse("user").is_err());
        assert!(AclFile::parse("frobnicate x").is_err());
        assert!(AclFile::parse("topic read a/#/b").is_err());
    }
}
