//! Broker settings: every limit the broker enforces, with production defaults.
//!
//! The same names are used by the Python keyword arguments and the TOML config file, so
//! a setting is documented once (README, "Configuration").

use std::time::Duration;

use crate::broker::bridge::BridgeSettings;
use crate::broker::store::StoreSpec;

/// What a session does when its outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the message that does not fit (mosquitto's behaviour). Keeps the oldest
    /// messages, which is what a client resuming a session usually wants first.
    DropNew,
    /// Drop the oldest queued message to make room: the freshest data wins.
    DropOldest,
}

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

/// A `[[listener]]` table: TLS settings for one of the `listeners` (named by `uri`) that
/// replace the top-level ones, e.g. a second certificate. Unset keys inherit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListenerSettings {
    pub uri: String,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    pub cafile: Option<String>,
    pub require_certificate: Option<bool>,
    pub use_identity_as_username: Option<bool>,
    pub tls_version: Option<TlsVersion>,
}

impl SettingType for Vec<ListenerSettings> {
    fn from_value(value: &Value) -> Result<Self, String> {
        let tables = match value {
            Value::Tables(tables) => tables,
            // An empty Python list or TOML array carries no type.
            Value::List(items) if items.is_empty() => return Ok(Vec::new()),
            other => return Err(format!("must be a list of tables, not {other:?}")),
        };
        tables
            .iter()
            .map(|table| {
                let mut out = ListenerSettings::default();
                let mut uri = None;
                for (key, value) in table {
                    let err = |e: String| format!("table's {key} {e}");
                    match key.as_str() {
                        "uri" => uri = Some(String::from_value(value).map_err(err)?),
                        "certfile" => out.certfile = Some(String::from_value(value).map_err(err)?),
                        "keyfile" => out.keyfile = Some(String::from_value(value).map_err(err)?),
                        "cafile" => out.cafile = Some(String::from_value(value).map_err(err)?),
                        "require_certificate" => {
                            out.require_certificate = Some(bool::from_value(value).map_err(err)?)
                        }
                        "use_identity_as_username" => {
                            out.use_identity_as_username =
                                Some(bool::from_value(value).map_err(err)?)
                        }
                        "tls_version" => {
                            out.tls_version = Some(TlsVersion::from_value(value).map_err(err)?)
                        }
                        other => {
                            return Err(format!(
                                "table has an unknown key {other:?} (uri, certfile, keyfile, \
                                 cafile, require_certificate, use_identity_as_username, \
                                 tls_version)"
                            ))
                        }
                    }
                }
                out.uri = uri.ok_or("table has no uri")?;
                Ok(out)
            })
            .collect()
    }
    fn to_value(&self) -> Value {
        Value::Tables(
            self.iter()
                .map(|l| {
                    let mut table = vec![("uri".to_string(), l.uri.to_value())];
                    let mut put = |key: &str, value: Option<Value>| {
                        if let Some(value) = value {
                            table.push((key.to_string(), value));
                        }
                    };
                    put("certfile", l.certfile.as_ref().map(String::to_value));
                    put("keyfile", l.keyfile.as_ref().map(String::to_value));
                    put("cafile", l.cafile.as_ref().map(String::to_value));
                    put(
                        "require_certificate",
                        l.require_certificate.map(|b| b.to_value()),
                    );
                    put(
                        "use_identity_as_username",
                        l.use_identity_as_username.map(|b| b.to_value()),
                    );
                    put("tls_version", l.tls_version.map(|v| v.to_value()));
                    table
                })
                .collect(),
        )
    }
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
    /// Cluster mode (preview): `nats://HOST:PORT[,nats://HOST:PORT...]` of a NATS server
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
            crate::broker::cluster::parse_urls(urls).map_err(|e| e.to_string())?;
        }
        crate::broker::cluster::check_names(&self.cluster_prefix, self.cluster_node.as_deref())?;
        if self.cluster_max_age.is_zero() {
            return Err("cluster_max_age must be positive".into());
        }
        crate::broker::cluster::check_connection(self)?;
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

/// How a listener speaks: the stream under MQTT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Tls,
    /// WebSocket upgrade on this path.
    Ws(String),
    Wss(String),
}

impl ListenerKind {
    pub fn is_tls(&self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss(_))
    }
}

/// A listener URI taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUri {
    pub kind: ListenerKind,
    /// A socket address string for `TcpListener::bind`.
    pub addr: String,
}

/// The TLS settings one listener runs with, once the top-level ones and its
/// `[[listener]]` table are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub certfile: String,
    pub keyfile: String,
    pub cafile: Option<String>,
    pub require_certificate: bool,
    pub use_identity_as_username: bool,
    pub tls_version: TlsVersion,
}

/// One listener, ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub uri: String,
    pub kind: ListenerKind,
    pub addr: String,
    /// Set for `tls://` and `wss://`.
    pub tls: Option<TlsSettings>,
}

impl Config {
    /// Every listener with its settings; errors name the listener and what is missing.
    pub fn listener_specs(&self) -> Result<Vec<ListenerSpec>, String> {
        for (i, table) in self.listener.iter().enumerate() {
            if !self.listeners.contains(&table.uri) {
                return Err(format!(
                    "listener table for {:?} names no entry of listeners",
                    table.uri
                ));
            }
            if self.listener[..i].iter().any(|t| t.uri == table.uri) {
                return Err(format!("listener: two tables for {:?}", table.uri));
            }
        }
        let mut specs = Vec::new();
        for uri in &self.listeners {
            let ListenerUri { kind, addr } =
                parse_listener(uri).map_err(|e| format!("listeners: {e}"))?;
            let table = self.listener.iter().find(|t| &t.uri == uri);
            let tls = if kind.is_tls() {
                let pick =
                    |own: Option<&String>, top: &Option<String>| own.or(top.as_ref()).cloned();
                let settings = TlsSettings {
                    certfile: pick(table.and_then(|t| t.certfile.as_ref()), &self.certfile)
                        .ok_or_else(|| format!("listeners: {uri} is TLS and needs a certfile"))?,
                    keyfile: pick(table.and_then(|t| t.keyfile.as_ref()), &self.keyfile)
                        .ok_or_else(|| format!("listeners: {uri} is TLS and needs a keyfile"))?,
                    cafile: pick(table.and_then(|t| t.cafile.as_ref()), &self.cafile),
                    require_certificate: table
                        .and_then(|t| t.require_certificate)
                        .unwrap_or(self.require_certificate),
                    use_identity_as_username: table
                        .and_then(|t| t.use_identity_as_username)
                        .unwrap_or(self.use_identity_as_username),
                    tls_version: table
                        .and_then(|t| t.tls_version)
                        .unwrap_or(self.tls_version),
                };
                if settings.require_certificate && settings.cafile.is_none() {
                    return Err(format!(
                        "listeners: {uri}: require_certificate needs a cafile to verify against"
                    ));
                }
                if settings.use_identity_as_username && !settings.require_certificate {
                    return Err(format!(
                        "listeners: {uri}: use_identity_as_username needs require_certificate"
                    ));
                }
                Some(settings)
            } else {
                None
            };
            specs.push(ListenerSpec {
                uri: uri.clone(),
                kind,
                addr,
                tls,
            });
        }
        Ok(specs)
    }
}

/// Parses a listener URI: `tcp://HOST:PORT` (also `mqtt://`), `tls://HOST:PORT` (also
/// `mqtts://`), `ws://HOST:PORT[/PATH]`, `wss://HOST:PORT[/PATH]`.
pub fn parse_listener(uri: &str) -> Result<ListenerUri, String> {
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| {
        format!("unsupported listener {uri:?}: expected tcp://, tls://, ws:// or wss://HOST:PORT")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let web_path = || path.unwrap_or("/mqtt").to_string();
    let kind = match scheme {
        "tcp" | "mqtt" => ListenerKind::Tcp,
        "tls" | "mqtts" => ListenerKind::Tls,
        "ws" => ListenerKind::Ws(web_path()),
        "wss" => ListenerKind::Wss(web_path()),
        _ => {
            return Err(format!(
                "unsupported listener {uri:?}: expected tcp://, tls://, ws:// or wss://HOST:PORT"
            ))
        }
    };
    if path.is_some() && matches!(kind, ListenerKind::Tcp | ListenerKind::Tls) {
        return Err(format!(
            "listener {uri:?}: only ws:// and wss:// take a path"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("listener {uri:?} has no port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("listener {uri:?} has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(ListenerUri { kind, addr })
}

/// The socket address of a `metrics_listener` (`http://HOST:PORT`, IPv6 hosts in
/// brackets; port 0 picks a free port).
pub fn parse_metrics_listener(uri: &str) -> Result<String, String> {
    let authority = uri
        .strip_prefix("http://")
        .ok_or_else(|| format!("expected http://HOST:PORT, not {uri:?}"))?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err(format!(
            "{uri:?} has a path: the paths are /metrics, /healthz and /readyz"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{uri:?} has no port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{uri:?} has an invalid port"))?;
    if host.is_empty() {
        return Err(format!("{uri:?} has no host"));
    }
    Ok(authority.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_listener_uris() {
        assert_eq!(
            parse_metrics_listener("http://127.0.0.1:9234").unwrap(),
            "127.0.0.1:9234"
        );
        assert_eq!(
            parse_metrics_listener("http://[::1]:0/").unwrap(),
            "[::1]:0"
        );
        for bad in [
            "127.0.0.1:9234",
            "https://127.0.0.1:9234",
            "http://127.0.0.1",
            "http://127.0.0.1:x",
            "http://:9234",
            "http://127.0.0.1:9234/metrics",
        ] {
            assert!(parse_metrics_listener(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listener_uris() {
        let addr = |uri: &str| parse_listener(uri).unwrap().addr;
        assert_eq!(addr("tcp://127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(addr("tcp://[::1]:1883"), "[::1]:1883");
        assert!(parse_listener("udp://127.0.0.1:1").is_err());
        assert!(parse_listener("tcp://127.0.0.1").is_err());
        assert!(parse_listener("tcp://127.0.0.1:99999").is_err());
        assert!(parse_listener("tls://127.0.0.1:1/mqtt").is_err());
        let kind = |uri: &str| parse_listener(uri).unwrap().kind;
        assert_eq!(kind("mqtts://127.0.0.1:8883"), ListenerKind::Tls);
        assert_eq!(kind("ws://127.0.0.1:80"), ListenerKind::Ws("/mqtt".into()));
        assert_eq!(
            kind("wss://[::1]:443/x/y"),
            ListenerKind::Wss("/x/y".into())
        );
        assert_eq!(addr("wss://[::1]:443/x/y"), "[::1]:443");
    }

    #[test]
    fn listener_tables_override_top_level_tls_settings() {
        let tables = Value::Tables(vec![vec![
            ("uri".into(), Value::Str("tls://127.0.0.1:2".into())),
            ("certfile".into(), Value::Str("b.pem".into())),
            ("tls_version".into(), Value::Str("tlsv1.3".into())),
        ]]);
        let values = [
            (
                "listeners",
                Value::List(vec!["tls://127.0.0.1:1".into(), "tls://127.0.0.1:2".into()]),
            ),
            ("listener", tables),
            ("certfile", Value::Str("a.pem".into())),
            ("keyfile", Value::Str("a.key".into())),
        ];
        let config =
            Config::from_values(|n| values.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
                .unwrap();
        let specs = config.listener_specs().unwrap();
        let tls: Vec<_> = specs.iter().map(|s| s.tls.clone().unwrap()).collect();
        assert_eq!(
            (tls[0].certfile.as_str(), tls[0].tls_version),
            ("a.pem", TlsVersion::V12)
        );
        assert_eq!(
            (tls[1].certfile.as_str(), tls[1].tls_version),
            ("b.pem", TlsVersion::V13)
        );
        assert_eq!(tls[1].keyfile, "a.key");
        // The table round-trips through its Value form.
        assert_eq!(
            Vec::<ListenerSettings>::from_value(&config.listener.to_value()).unwrap(),
            config.listener
        );
    }

    #[test]
    fn default_listener_is_loopback_only() {
        let config = Config::default();
        assert_eq!(config.listeners, ["tcp://127.0.0.1:1883"]);
        assert_eq!(config.allow_anonymous, None);
    }

    #[test]
    fn anonymous_policy_follows_mosquitto() {
        use AnonymousPolicy::*;
        let with = |allow| Config {
            allow_anonymous: allow,
            ..Config::default()
        };
        // Unset: the hooks decide if there are any, else loopback only.
        assert_eq!(with(None).anonymous_policy(false, true), Allow);
        assert_eq!(with(None).anonymous_policy(false, false), Refuse);
        assert_eq!(with(None).anonymous_policy(true, false), AskHooks);
        assert_eq!(with(None).anonymous_policy(true, true), AskHooks);
        // Explicit: the same on every listener, hooks or not.
        for (auth, loopback) in [(false, false), (false, true), (true, false), (true, true)] {
            assert_eq!(with(Some(true)).anonymous_policy(auth, loopback), Allow);
            assert_eq!(with(Some(false)).anonymous_policy(auth, loopback), Refuse);
        }
    }

    fn with(name: &str, value: Value) -> Result<Config, String> {
        Config::from_values(|n| (n == name).then(|| value.clone()))
    }

    #[test]
    fn expiration_values_as_mosquitto_writes_them() {
        let hour = Duration::from_secs(3600);
        assert_eq!(parse_expiration("1h"), Ok(Some(hour)));
        assert_eq!(parse_expiration("2d"), Ok(Some(48 * hour)));
        assert_eq!(parse_expiration("1w"), Ok(Some(7 * 24 * hour)));
        assert_eq!(parse_expiration("1m"), Ok(Some(30 * 24 * hour)));
        assert_eq!(parse_expiration("1y"), Ok(Some(365 * 24 * hour)));
        assert_eq!(parse_expiration("90"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(
            parse_expiration("0.5"),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(parse_expiration("0"), Ok(None));
        assert_eq!(parse_expiration("0d"), Ok(None));
        for bad in [
            "", "h", "1s", "1.5h", "-1", "-1h", "1 h", "+1d", "nan", "inf", "1e400",
        ] {
            assert!(parse_expiration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_expiration("99999999999999999y").is_err(), "overflow");
        let expiration = |v: Value| with("persistent_client_expiration", v);
        assert_eq!(
            expiration(Value::Str("2d".into()))
                .unwrap()
                .persistent_client_expiration,
            Some(48 * hour)
        );
        assert_eq!(
            expiration(Value::Int(90))
                .unwrap()
                .persistent_client_expiration,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            expiration(Value::Float(0.0))
                .unwrap()
                .persistent_client_expiration,
            None
        );
        assert_eq!(
            expiration(Value::None)
                .unwrap()
                .persistent_client_expiration,
            None
        );
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        assert!(Config::default().validate().is_ok());
        let defaults = Config::defaults();
        let config = Config::from_values(|n| {
            defaults
                .iter()
                .find(|(name, _)| *name == n)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(format!("{config:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = [
            ("max_inflight", Value::Int(0)),
            ("max_inflight", Value::Int(65_536)),
            ("max_inflight", Value::Bool(true)),
            ("max_queued_messages", Value::Int(-1)),
            ("max_client_id_len", Value::Int(22)),
            ("queue_overflow", Value::Str("drop_all".into())),
            ("queue_qos0_offline", Value::Int(1)),
            ("connect_timeout", Value::Int(0)),
            ("auth_timeout", Value::Float(f64::NAN)),
            ("acl_cache_ttl", Value::Float(f64::INFINITY)),
            ("acl_cache_ttl", Value::Str("60".into())),
            ("password_file", Value::Int(42)),
            ("listeners", Value::Str("tcp://127.0.0.1:0".into())),
            ("listeners", Value::List(vec![])),
            ("session_store", Value::Str("redis:x".into())),
            ("durability", Value::Str("sync".into())),
            ("listeners", Value::List(vec!["tls://127.0.0.1:0".into()])),
            (
                "listeners",
                Value::List(vec!["ws://127.0.0.1:0mqtt".into()]),
            ),
            ("listener", Value::Str("tls://127.0.0.1:0".into())),
            ("listener", Value::Tables(vec![vec![]])),
            (
                "listener",
                Value::Tables(vec![vec![(
                    "uri".into(),
                    Value::Str("tcp://1.2.3.4:1".into()),
                )]]),
            ),
            ("tls_version", Value::Str("tlsv1.1".into())),
            ("require_certificate", Value::Int(1)),
            ("persistent_client_expiration", Value::Str("2 weeks".into())),
            ("persistent_client_expiration", Value::Int(-1)),
            ("persistent_client_expiration", Value::Bool(true)),
            ("persistent_client_expiration", Value::Float(f64::NAN)),
            (
                "persistent_client_expiration",
                Value::List(vec!["1h".into()]),
            ),
        ];
        for (name, value) in bad {
            let err = with(name, value.clone()).expect_err(name);
            assert!(err.contains(name), "{name} = {value:?}: {err}");
        }
        assert_eq!(with("max_inflight", Value::Int(7)).unwrap().max_inflight, 7);
        assert_eq!(
            with("acl_cache_ttl", Value::Int(0)).unwrap().acl_cache_ttl,
            Duration::ZERO
        );
    }
}
