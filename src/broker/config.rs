//! Broker settings: every limit the broker enforces, with production defaults.
//!
//! The same names are used by the Python keyword arguments and the TOML config file, so
//! a setting is documented once (README, "Configuration").

use std::time::Duration;

/// Defined with the session it governs (the session takes it as a value, not the config).
pub use crate::broker::session::OverflowPolicy;
use crate::broker::store::StoreSpec;

pub mod bridge;
pub mod cluster;
mod listeners;

pub use bridge::BridgeSettings;
pub use listeners::{
    parse_listener, parse_metrics_listener, ListenerKind, ListenerSettings, ListenerSpec,
    ListenerUri, TlsSettings,
};

/// A setting's value as a config file or Python gives it, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<String>),
    /// A list of tables (TOML's `[[listener]]`, a list of dicts in Python): each table's
    /// keys and values, in order.
    Tables(Vec<Vec<(String, Value)>>),
}

/// The types settings have: how each is read from a [`Value`] (strictly: `true` is not
/// a number, `"60"` is not a duration) and shown as one.
pub trait SettingType: Sized {
    fn from_value(value: &Value) -> Result<Self, String>;
    fn to_value(&self) -> Value;
}

impl SettingType for usize {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(n) => usize::try_from(*n).map_err(|_| format!("must be >= 0, not {n}")),
            other => Err(format!("must be an integer, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}

impl SettingType for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bool(b) => Ok(*b),
            other => Err(format!("must be true or false, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}

/// Durations are numbers of seconds.
impl SettingType for Duration {
    fn from_value(value: &Value) -> Result<Self, String> {
        let seconds = match value {
            Value::Int(n) => *n as f64,
            Value::Float(x) => *x,
            other => return Err(format!("must be a number of seconds, not {other:?}")),
        };
        Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("must be a finite number of seconds >= 0, not {seconds}"))
    }
    fn to_value(&self) -> Value {
        Value::Float(self.as_secs_f64())
    }
}

impl SettingType for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Str(s) => Ok(s.clone()),
            other => Err(format!("must be a string, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Str(self.clone())
    }
}

/// `persistent_client_expiration`: `None` (never), a number of seconds, or Mosquitto's
/// form (`"2d"`, see [`parse_expiration`]); zero is `None`.
impl SettingType for Option<Duration> {
    fn from_value(value: &Value) -> Result<Self, String> {
        let invalid = |shown: String| {
            format!(
                "must be a number of seconds or an integer followed by h, d, w, m (month) \
                 or y, like '2d', not {shown}"
            )
        };
        match value {
            Value::None => Ok(None),
            Value::Str(s) => parse_expiration(s).map_err(|_| invalid(format!("{s:?}"))),
            Value::Int(_) | Value::Float(_) => {
                let seconds =
                    Duration::from_value(value).map_err(|_| invalid(format!("{value:?}")))?;
                Ok((!seconds.is_zero()).then_some(seconds))
            }
            other => Err(invalid(format!("{other:?}"))),
        }
    }
    fn to_value(&self) -> Value {
        self.map_or(Value::None, |d| Value::Float(d.as_secs_f64()))
    }
}

/// Optional file paths.
impl SettingType for Option<String> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::None => Ok(None),
            Value::Str(s) => Ok(Some(s.clone())),
            other => Err(format!("must be a file path, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::None, |s| Value::Str(s.clone()))
    }
}

impl SettingType for Vec<String> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::List(items) => Ok(items.clone()),
            other => Err(format!("must be a list of strings, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        Value::List(self.clone())
    }
}

/// Tri-state switches: unset (`None`) has a meaning of its own.
impl SettingType for Option<bool> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::None => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            other => Err(format!("must be true, false or unset, not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        self.map_or(Value::None, Value::Bool)
    }
}

/// Settings that are one of a few names.
macro_rules! named_choice {
    ($ty:ident { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            pub fn parse(name: &str) -> Option<$ty> {
                match name {
                    $($name => Some($ty::$variant),)+
                    _ => None,
                }
            }
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl SettingType for $ty {
            fn from_value(value: &Value) -> Result<Self, String> {
                let choices = [$(concat!("'", $name, "'")),+].join(" or ");
                match value {
                    Value::Str(s) => {
                        $ty::parse(s).ok_or_else(|| format!("must be {choices}, not {s:?}"))
                    }
                    other => Err(format!("must be {choices}, not {other:?}")),
                }
            }
            fn to_value(&self) -> Value {
                Value::Str(self.name().to_string())
            }
        }
    };
}

named_choice!(OverflowPolicy { "drop_new" => DropNew, "drop_oldest" => DropOldest });
named_choice!(Durability { "interval" => Interval, "sync" => Sync });
named_choice!(TlsVersion { "tlsv1.2" => V12, "tlsv1.3" => V13 });

/// The oldest TLS version a TLS listener accepts (Mosquitto's `tls_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V12,
    /// TLS 1.3 only.
    V13,
}

named_choice!(StoreLoadError { "refuse" => Refuse, "start_empty" => StartEmpty });

/// `memory` or `sqlite:PATH`.
impl SettingType for StoreSpec {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Str(s) => StoreSpec::parse(s)
                .map_err(|_| format!("must be 'memory' or 'sqlite:PATH' (with a path), not {s:?}")),
            other => Err(format!("must be 'memory' or 'sqlite:PATH', not {other:?}")),
        }
    }
    fn to_value(&self) -> Value {
        Value::Str(self.to_string())
    }
}

/// Declares every setting once: its name, type, default and (for integers) bounds. The
/// struct, its `Default`, the list of names and defaults that Python's `BrokerConfig`
/// and the README's tests read, and the reading of settings by name all come from here.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr $(, range $lo:literal ..= $hi:literal)? ;
    )*) => {
        /// Every setting of the broker (README, "Configuration").
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Config {
                Config { $( $name: $default, )* }
            }
        }

        impl Config {
            /// Every setting's name and default value.
            pub fn defaults() -> Vec<(&'static str, Value)> {
                let config = Config::default();
                vec![$( (stringify!($name), config.$name.to_value()), )*]
            }

            /// Reads the settings `get` has (by name; the others keep their defaults),
            /// then checks them. Errors name the setting.
            pub fn from_values(
                mut get: impl FnMut(&str) -> Option<Value>,
            ) -> Result<Config, String> {
                let mut config = Config::default();
                $(
                    if let Some(value) = get(stringify!($name)) {
                        config.$name = <$ty as SettingType>::from_value(&value)
                            .map_err(|e| format!("{} {e}", stringify!($name)))?;
                    }
                    $(
                        let value = config.$name;
                        let range: std::ops::RangeInclusive<$ty> = $lo..=$hi;
                        if !range.contains(&value) {
                            return Err(format!(
                                "{} must be between {} and {}, not {value}",
                                stringify!($name), range.start(), range.end()
                            ));
                        }
                    )?
                )*
                config.validate()?;
                Ok(config)
            }
        }
    };
}

settings! {
    /// Listener URIs: `tcp://HOST:PORT`, `tls://HOST:PORT` (or `mqtts://`),
    /// `ws://HOST:PORT/PATH`, `wss://HOST:PORT/PATH` (PATH defaults to `/mqtt`); port 0
    /// picks a free port. The default listens on loopback only (as Mosquitto 2.0 does
    /// with no listener configured).
    listeners: Vec<String> = vec![DEFAULT_LISTENER.to_string()];
    /// Per-listener TLS settings (`[[listener]]` tables, each with the `uri` of one of
    /// `listeners`), replacing the top-level ones below for that listener.
    listener: Vec<ListenerSettings> = Vec::new();
    /// PEM certificate chain of TLS listeners (`tls://`, `wss://`).
    certfile: Option<String> = None;
    /// PEM private key of `certfile`.
    keyfile: Option<String> = None;
    /// PEM CA certificates that client certificates are verified against; set, clients
    /// are asked for a certificate.
    cafile: Option<String> = None;
    /// Refuse TLS clients without a certificate signed by `cafile` (mutual TLS).
    require_certificate: bool = false;
    /// The client certificate's Common Name replaces the CONNECT username (then the
    /// authenticator and ACL apply to it).
    use_identity_as_username: bool = false;
    /// The oldest TLS version accepted: `tlsv1.2` or `tlsv1.3`.
    tls_version: TlsVersion = TlsVersion::V12;
    /// Largest packet accepted from a client, fixed header included. A larger one closes
    /// that connection before its body is read. The default bounds what one client can
    /// make the broker buffer; MQTT's own ceiling is 268,435,455 bytes of body.
    max_packet_size: usize = 1024 * 1024, range 2 ..= 268_435_460;
    /// Connections served at once; a client over the limit gets CONNACK 0x03.
    max_connections: usize = 100_000, range 1 ..= 4_294_967_295;
    /// Outbound QoS 1/2 messages sent but not yet acknowledged, per session.
    max_inflight: usize = 32, range 1 ..= 65_535;
    /// Messages waiting to be sent, per session (online or offline).
    max_queued_messages: usize = 1000;
    /// Topic and payload bytes waiting to be sent, per session; 0 means no byte limit.
    max_queued_bytes: usize = 0;
    /// What a session does when its queue is full.
    queue_overflow: OverflowPolicy = OverflowPolicy::DropNew;
    /// Also queue QoS 0 messages for offline clean-session-0 clients (optional in 3.1.1).
    queue_qos0_offline: bool = false;
    /// Time allowed between TCP accept and a complete CONNECT.
    connect_timeout: Duration = Duration::from_secs(10);
    /// Longest client identifier accepted (3.1.1 requires at least 23 [MQTT-3.1.3-5]).
    max_client_id_len: usize = 65_535, range 23 ..= 65_535;
    /// Whether CONNECT with an empty client id and clean session 1 gets a generated id.
    allow_zero_length_client_id: bool = true;
    /// Tokio worker threads; 0 means one per core.
    worker_threads: usize = 0, range 0 ..= 1024;
    /// Longest an authentication or authorization hook may take; then it counts as deny.
    auth_timeout: Duration = Duration::from_secs(5);
    /// How long a connection reuses a publish authorization decision per topic.
    acl_cache_ttl: Duration = Duration::from_secs(60);
    /// A connection with nothing to do (nothing to read, write, deliver or acknowledge)
    /// for this long parks: its task ends and a much smaller one waits for its socket,
    /// its session, takeover, shutdown and keepalive (connection/park.rs); zero never
    /// parks.
    idle_park_after: Duration = Duration::from_secs(5);
    /// A mosquitto_passwd file: when set, clients must present a listed user and password.
    password_file: Option<String> = None;
    /// A mosquitto acl_file: when set, subscriptions and publishes are checked against it.
    acl_file: Option<String> = None;
    /// Mosquitto's `allow_anonymous`, about clients that send no username: `Some(true)`
    /// admits them without asking the password file or authenticator, `Some(false)`
    /// refuses them (CONNACK 0x05) on every listener; `None` leaves it to the password
    /// file or authenticator if there is one, else admits them on loopback listeners
    /// only. See [`Config::anonymous_policy`].
    allow_anonymous: Option<bool> = None;
    /// Where persistent sessions and retained messages live: `memory` or `sqlite:PATH`.
    session_store: StoreSpec = StoreSpec::Memory;
    /// What a start does when the store cannot be read (see [`StoreLoadError`]).
    store_load_error: StoreLoadError = StoreLoadError::Refuse;
    /// How often a durable store is brought up to date (a crash loses at most this much);
    /// zero saves only at shutdown.
    persist_interval: Duration = Duration::from_secs(1);
    /// With a durable store: `Sync` holds every QoS 1/2 acknowledgement until the
    /// message is in the store (group commit), so a crash never loses an acknowledged
    /// message; `Interval` relies on `persist_interval`.
    durability: Durability = Durability::Interval;
    /// How often the `$SYS/broker/...` statistics are published; zero disables them.
    sys_interval: Duration = Duration::from_secs(10);
    /// `http://HOST:PORT`: serve Prometheus metrics (`/metrics`) and health probes
    /// (`/healthz`, `/readyz`) there (broker/http.rs). `None`: no HTTP listener.
    metrics_listener: Option<String> = None;
    /// A clean-session-0 client offline for longer than this loses its session
    /// (subscriptions, queued and inflight messages), in the durable store too. `None`
    /// keeps offline sessions forever (Mosquitto's `persistent_client_expiration`).
    persistent_client_expiration: Option<Duration> = None;
    /// Bridges to other brokers (`[[bridge]]` tables with Mosquitto's names; see
    /// `crate::broker::bridge`).
    bridge: Vec<BridgeSettings> = Vec::new();
    /// Cluster mode: `nats://HOST:PORT[,nats://HOST:PORT...]` of a NATS server
    /// (2.10 or later, with JetStream) through which several pyo3mq nodes act as one
    /// broker (src/broker/cluster.rs). `None`: a single node, nothing changes.
    cluster: Option<String> = None;
    /// Cluster mode: the first tokens of every NATS subject (and, upper-cased, of every
    /// JetStream stream and bucket name) the nodes use, so several deployments can share
    /// one NATS account. Tokens of letters, digits, `_` and `-`, separated by dots.
    cluster_prefix: String = "pyo3mq".to_string();
    /// Cluster mode: this node's name, unique in the cluster and kept across restarts,
    /// which names its durable JetStream consumer: a node restarted under its name
    /// catches up on the QoS 1/2 messages published while it was away. `None`: a
    /// random name per start (nothing is caught up).
    cluster_node: Option<String> = None;
    /// Cluster mode: the most bytes the stream of QoS 1/2 messages keeps (the oldest are
    /// dropped beyond it).
    cluster_max_bytes: usize = 1 << 30, range 1024 ..= 1_099_511_627_776;
    /// Cluster mode: how long the stream of QoS 1/2 messages keeps a message, so how
    /// long a node may be away and still catch up.
    cluster_max_age: Duration = Duration::from_secs(24 * 3600);
    /// Cluster mode: QoS 1/2 messages from other nodes this node has taken from the
    /// stream and not yet routed to its sessions.
    cluster_max_ack_pending: usize = 1024, range 1 ..= 1_000_000;
    // Cluster mode: liveness and the QoS 0 inbound queue (src/broker/cluster/liveness.rs,
    // link.rs).
    /// Cluster mode: how often a node renews its liveness key and looks at the others'.
    cluster_heartbeat: Duration = Duration::from_secs(1);
    /// Cluster mode: how long a node's liveness key lives unrenewed; the others then
    /// take it for dead. A node that could not renew its key for this less one heartbeat
    /// fences itself (closes its clients, refuses CONNECTs) until it renews it again.
    cluster_node_ttl: Duration = Duration::from_secs(6);
    /// Cluster mode: messages from other nodes (QoS 0, core NATS) received and not yet
    /// routed; beyond it they are dropped and counted (`cluster/dropped/slow`).
    cluster_pending_messages: usize = 65_536, range 16 ..= 16_777_216;
    // Cluster mode: the engine connection (src/broker/cluster/connect.rs).
    /// Cluster mode: how many NATS servers keep a copy of each JetStream stream and
    /// bucket (1 for one NATS server; 3 for a NATS cluster of three or more, so it
    /// survives the loss of one).
    cluster_replicas: usize = 1, range 1 ..= 5;
    /// Cluster mode: user name for the NATS server (with `cluster_password`).
    cluster_user: Option<String> = None;
    /// Cluster mode: password for the NATS server (with `cluster_user`).
    cluster_password: Option<String> = None;
    /// Cluster mode: token for the NATS server (`authorization { token }`).
    cluster_token: Option<String> = None;
    /// Cluster mode: a NATS `.creds` file (user JWT and NKey seed, as `nats --creds`),
    /// or a file holding only an NKey user seed (`SU...`, as `nats --nkey`).
    cluster_creds: Option<String> = None;
    /// Cluster mode: PEM CA certificates the NATS server's certificate must chain to;
    /// any of the three TLS settings makes TLS required.
    cluster_cafile: Option<String> = None;
    /// Cluster mode: PEM client certificate for NATS servers that verify clients.
    cluster_certfile: Option<String> = None;
    /// Cluster mode: PEM private key of `cluster_certfile`.
    cluster_keyfile: Option<String> = None;
    // MQTT 5.0 connection limits (broker/connection/flow.rs).
    /// QoS 1/2 PUBLISHes a 5.0 client may have unacknowledged at once (CONNACK Receive
    /// Maximum); one more is DISCONNECT 0x93. 65,535 is MQTT's default and is not sent.
    receive_maximum: usize = 65_535, range 1 ..= 65_535;
    /// Topic Aliases a 5.0 client may set per connection (CONNACK Topic Alias Maximum);
    /// 0 accepts none.
    topic_alias_maximum: usize = 10, range 0 ..= 65_535;
    /// Topic Aliases the broker uses per 5.0 connection on deliveries, at most the
    /// client's CONNECT Topic Alias Maximum (a client that sends none gets none). The
    /// first topics delivered get one; later ones keep their full name. 0 (the default,
    /// as Mosquitto and HiveMQ, which never send aliases): none, because clients that
    /// announce a maximum do not all map aliases back (libmosquitto 2.0.11 and
    /// paho-mqtt 2.2 pass on or refuse the empty topic).
    outbound_topic_aliases: usize = 0, range 0 ..= 65_535;
    /// Longest Keep Alive a 5.0 client may use, in seconds: one asking for more (or for
    /// none, when this is below 65,535) is told this in CONNACK (Server Keep Alive).
    /// 3.1/3.1.1 clients keep theirs (they cannot be told).
    max_keepalive: usize = 65_535, range 1 ..= 65_535;
}

/// Loopback only: a broker started without a listener is not reachable from the network
/// until someone says it should be (Mosquitto 2.0's default).
pub const DEFAULT_LISTENER: &str = "tcp://127.0.0.1:1883";

/// What a listener does with a client that sends no username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousPolicy {
    /// Admit it without consulting the password file or authenticator.
    Allow,
    /// CONNACK 0x05 (not authorized), before any hook runs.
    Refuse,
    /// The password file or authenticator decides, as for everyone else (with neither,
    /// the client is admitted).
    AskHooks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Interval,
    Sync,
}

/// What a start does when the session store cannot be read (a corrupt file, a schema
/// from another version). Starting empty and saving later would delete what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreLoadError {
    /// Refuse to start, naming the file and the problem; the file is left as it is.
    Refuse,
    /// Move the unreadable file aside (`PATH.corrupt-TIMESTAMP`), log it, start empty.
    StartEmpty,
}

impl Config {
    /// Checks what one setting's type and bounds cannot: values that would make the
    /// broker misbehave rather than merely be slow, and settings that need each other.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(uri) = &self.metrics_listener {
            parse_metrics_listener(uri).map_err(|e| format!("metrics_listener: {e}"))?;
        }
        if self.listeners.is_empty() {
            return Err("listeners: at least one listener is required".into());
        }
        self.listener_specs()?;
        if self.auth_timeout.is_zero() {
            return Err("auth_timeout must be positive".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout must be positive".into());
        }
        if let Some(urls) = &self.cluster {
            cluster::parse_urls(urls).map_err(|e| e.to_string())?;
        }
        cluster::check_names(&self.cluster_prefix, self.cluster_node.as_deref())?;
        if self.cluster_max_age.is_zero() {
            return Err("cluster_max_age must be positive".into());
        }
        cluster::check_connection(&self.cluster_settings())?;
        cluster::check_liveness(self.cluster_heartbeat, self.cluster_node_ttl)?;
        if self.durability == Durability::Sync && !self.session_store.is_durable() {
            return Err("durability = 'sync' needs session_store = 'sqlite:PATH'".into());
        }
        if self
            .persistent_client_expiration
            .is_some_and(|d| d.is_zero())
        {
            return Err(
                "persistent_client_expiration must be positive (leave it out to keep \
                 offline sessions forever)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The `cluster*` settings, for cluster mode (which takes these, not the `Config`).
    pub fn cluster_settings(&self) -> cluster::Settings {
        cluster::Settings {
            cluster: self.cluster.clone(),
            cluster_prefix: self.cluster_prefix.clone(),
            cluster_node: self.cluster_node.clone(),
            cluster_max_bytes: self.cluster_max_bytes,
            cluster_max_age: self.cluster_max_age,
            cluster_max_ack_pending: self.cluster_max_ack_pending,
            cluster_replicas: self.cluster_replicas,
            cluster_user: self.cluster_user.clone(),
            cluster_password: self.cluster_password.clone(),
            cluster_token: self.cluster_token.clone(),
            cluster_creds: self.cluster_creds.clone(),
            cluster_cafile: self.cluster_cafile.clone(),
            cluster_certfile: self.cluster_certfile.clone(),
            cluster_keyfile: self.cluster_keyfile.clone(),
            cluster_heartbeat: self.cluster_heartbeat,
            cluster_node_ttl: self.cluster_node_ttl,
            cluster_pending_messages: self.cluster_pending_messages,
        }
    }

    /// How a listener treats clients without a username. `has_authenticator`: a password
    /// file or an authenticator hook is in place; `loopback`: the listener is bound to a
    /// loopback address, so only this machine can reach it.
    pub fn anonymous_policy(&self, has_authenticator: bool, loopback: bool) -> AnonymousPolicy {
        match self.allow_anonymous {
            Some(true) => AnonymousPolicy::Allow,
            Some(false) => AnonymousPolicy::Refuse,
            None if has_authenticator => AnonymousPolicy::AskHooks,
            None if loopback => AnonymousPolicy::Allow,
            // Reachable from the network with nothing checking who connects: an open
            // broker is opted into (`allow_anonymous = true`), never the default.
            None => AnonymousPolicy::Refuse,
        }
    }
}

/// Parses a `persistent_client_expiration` as Mosquitto writes it, an integer followed by
/// `h`, `d`, `w`, `m` (a month: 30 days) or `y` (365 days), e.g. `2d`; or a number of
/// seconds (`3600`, `0.5`). Zero means no expiry (`None`).
pub fn parse_expiration(text: &str) -> Result<Option<Duration>, String> {
    const HOUR: u64 = 3600;
    let invalid = || {
        format!(
            "persistent_client_expiration must be a number of seconds or an integer followed \
             by h, d, w, m (month) or y, like '2d', not {text:?}"
        )
    };
    let text = text.trim();
    let unit = match text.chars().last() {
        Some('h') => Some(HOUR),
        Some('d') => Some(24 * HOUR),
        Some('w') => Some(7 * 24 * HOUR),
        Some('m') => Some(30 * 24 * HOUR),
        Some('y') => Some(365 * 24 * HOUR),
        _ => None,
    };
    let duration = match unit {
        Some(unit) => {
            let count = &text[..text.len() - 1];
            if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid());
            }
            let count: u64 = count.parse().map_err(|_| invalid())?;
            Duration::from_secs(count.checked_mul(unit).ok_or_else(invalid)?)
        }
        None => {
            let seconds: f64 = text.parse().map_err(|_| invalid())?;
            Duration::try_from_secs_f64(seconds).map_err(|_| invalid())?
        }
    };
    Ok((!duration.is_zero()).then_some(duration))
}

#[cfg(test)]
mod tests;
