//! A bridge's settings (`[[bridge]]` tables, Mosquitto's names) and its topic lines:
//! here with the other settings, and re-exported by `broker::bridge`, which runs them.

use std::time::Duration;

use super::{SettingType, Value};
use crate::codec::QoS;
use crate::topic;

/// Which way a topic line forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local to remote.
    Out,
    /// Remote to local.
    In,
    Both,
}

impl Direction {
    pub fn outgoing(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn incoming(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Both => "both",
        }
    }
}

/// One `topic` line: `pattern [[[out|in|both] qos] local_prefix remote_prefix]`, with
/// `""` standing for an empty pattern or prefix (mosquitto.conf(5), "topic").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLine {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicLine {
    /// Parses a line as Mosquitto does; the error says what is wrong with it.
    pub fn parse(line: &str) -> Result<TopicLine, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let empty = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        };
        let (pattern, direction, qos, prefixes) = match words.as_slice() {
            [] => return Err("is empty".into()),
            [pattern] => (*pattern, None, None, None),
            [pattern, direction] => (*pattern, Some(*direction), None, None),
            [pattern, direction, qos] => (*pattern, Some(*direction), Some(*qos), None),
            [_, _, _, _] => {
                return Err(
                    "has a local prefix but no remote prefix (give both, \"\" for none)".into(),
                )
            }
            [pattern, direction, qos, local, remote] => (
                *pattern,
                Some(*direction),
                Some(*qos),
                Some((*local, *remote)),
            ),
            _ => {
                return Err(
                    "has too many words: expected `pattern [[[out|in|both] qos] local_prefix \
                     remote_prefix]`"
                        .into(),
                )
            }
        };
        let direction = match direction {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => {
                return Err(format!("has direction {other:?}: expected out, in or both"))
            }
        };
        let qos = match qos {
            None => QoS::AtMostOnce,
            Some(q) => q
                .parse::<u8>()
                .ok()
                .and_then(QoS::from_u8)
                .ok_or_else(|| format!("has QoS {q:?}: expected 0, 1 or 2"))?,
        };
        let (local_prefix, remote_prefix) = prefixes
            .map(|(l, r)| (empty(l), empty(r)))
            .unwrap_or_default();
        let line = TopicLine {
            pattern: empty(pattern),
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        line.check()?;
        Ok(line)
    }

    fn check(&self) -> Result<(), String> {
        // mosquitto.conf(5)'s table: an empty pattern remaps one topic to another, so
        // both prefixes are needed then.
        if self.pattern.is_empty()
            && (self.local_prefix.is_empty() || self.remote_prefix.is_empty())
        {
            return Err("has an empty pattern (\"\"): then both prefixes must be given".into());
        }
        for (what, prefix) in [
            ("local prefix", &self.local_prefix),
            ("remote prefix", &self.remote_prefix),
        ] {
            if prefix.contains(['+', '#']) {
                return Err(format!("has a {what} {prefix:?} with a wildcard"));
            }
        }
        for (what, filter) in [
            ("local topic", self.local_topic()),
            ("remote topic", self.remote_topic()),
        ] {
            topic::validate_topic_filter(&filter)
                .map_err(|e| format!("makes an invalid {what} {filter:?}: {e}"))?;
        }
        Ok(())
    }

    /// The filter on the local broker: local prefix + pattern.
    pub fn local_topic(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker: remote prefix + pattern.
    pub fn remote_topic(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// A local topic as the remote gets it: the local prefix removed if the topic starts
    /// with it, then the remote prefix added (Mosquitto's remapping).
    pub fn to_remote(&self, local: &str) -> String {
        remap(local, &self.local_prefix, &self.remote_prefix)
    }

    /// A remote topic as the local broker gets it.
    pub fn to_local(&self, remote: &str) -> String {
        remap(remote, &self.remote_prefix, &self.local_prefix)
    }

    fn render(&self) -> String {
        let word = |s: &str| {
            if s.is_empty() {
                "\"\"".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{} {} {} {} {}",
            word(&self.pattern),
            self.direction.name(),
            self.qos as u8,
            word(&self.local_prefix),
            word(&self.remote_prefix)
        )
    }
}

fn remap(topic: &str, strip: &str, add: &str) -> String {
    let rest = topic.strip_prefix(strip).unwrap_or(topic);
    format!("{add}{rest}")
}

/// Mosquitto's `bridge_tls_version`: the oldest version offered (its bridges offer that
/// one and newer; rustls has nothing older than 1.2, so "tlsv1.1" offers 1.2 and 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeTlsVersion {
    V11,
    V12,
    V13,
}

impl BridgeTlsVersion {
    fn name(self) -> &'static str {
        match self {
            BridgeTlsVersion::V11 => "tlsv1.1",
            BridgeTlsVersion::V12 => "tlsv1.2",
            BridgeTlsVersion::V13 => "tlsv1.3",
        }
    }
}

/// TLS towards the remote: on when `bridge_cafile` or `bridge_capath` is set (Mosquitto's
/// rule), or when the addresses are written `mqtts://HOST:PORT` (then, without either,
/// the system's trusted roots are used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    pub cafile: Option<String>,
    /// A directory of PEM CA certificates (every file in it is read).
    pub capath: Option<String>,
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
    /// Skip the check that the remote's certificate holds the name connected to; the chain
    /// must still lead to a trusted CA.
    pub insecure: bool,
    pub version: Option<BridgeTlsVersion>,
}

/// Mosquitto's `bridge_protocol_version`: what the bridge speaks to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// `mqttv31`: MQTT 3.1 (`MQIsdp`, level 3).
    V31,
    /// `mqttv311`, the default.
    V311,
    /// `mqttv50`: MQTT 5.0, message properties carried both ways, `in` lines subscribed
    /// with No Local and Retain As Published.
    V5,
}

impl BridgeProtocol {
    /// The setting's value for this protocol.
    pub fn name(self) -> &'static str {
        match self {
            BridgeProtocol::V31 => "mqttv31",
            BridgeProtocol::V311 => "mqttv311",
            BridgeProtocol::V5 => "mqttv50",
        }
    }
}

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeSettings {
    pub name: String,
    /// `HOST:PORT` (or `HOST`, port 1883); with several, the next is tried when one fails.
    pub addresses: Vec<(String, u16)>,
    pub topics: Vec<TopicLine>,
    /// Client id on the remote broker; default `HOSTNAME.NAME`.
    pub remote_clientid: String,
    /// Client id of the bridge's session on this broker; default `local.REMOTE_CLIENTID`.
    pub local_clientid: String,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    /// Clean session towards the remote (Mosquitto's default: false).
    pub cleansession: bool,
    /// Whether the bridge's local session is clean (default: `cleansession`). A
    /// persistent one keeps the messages waiting for the remote in the session store.
    pub local_cleansession: bool,
    pub try_private: bool,
    pub keepalive_interval: u16,
    /// Reconnect delay: from `base`, doubling up to `cap` (equal for a constant delay).
    pub restart_timeout: (Duration, Duration),
    /// Publish the connection state (1/0, retained) on this broker.
    pub notifications: bool,
    pub notification_topic: String,
    pub protocol: BridgeProtocol,
    /// TLS towards the remote, if on.
    pub tls: Option<BridgeTls>,
}

/// The keys a `[[bridge]]` table may have (named in errors).
const KEYS: &str = "name, address, topic, remote_clientid, local_clientid, remote_username, \
    remote_password, cleansession, local_cleansession, try_private, keepalive_interval, \
    restart_timeout, notifications, notification_topic, bridge_protocol_version, \
    bridge_cafile, bridge_capath, bridge_certfile, bridge_keyfile, bridge_insecure, \
    bridge_tls_version";

/// This machine's name, for the default `remote_clientid` (Mosquitto's
/// `hostname.name`): from the kernel on Linux, else `$HOSTNAME`, else "pyo3mq".
fn local_hostname() -> String {
    let from_file = |path: &str| std::fs::read_to_string(path).ok();
    from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains(['/', '+', '#']))
        .unwrap_or_else(|| "pyo3mq".into())
}

/// Whether an address names its scheme: `Some(true)` for `mqtts://` (or `tls://`,
/// `ssl://`), `Some(false)` for `mqtt://` (or `tcp://`), `None` for Mosquitto's bare
/// `HOST:PORT`; and the rest.
fn split_scheme(text: &str) -> (Option<bool>, &str) {
    let text = text.trim();
    for (scheme, tls) in [
        ("mqtts://", true),
        ("tls://", true),
        ("ssl://", true),
        ("mqtt://", false),
        ("tcp://", false),
    ] {
        if let Some(rest) = text.strip_prefix(scheme) {
            return (Some(tls), rest);
        }
    }
    (None, text)
}

/// `HOST:PORT`, `HOST` (port 1883, or 8883 after `mqtts://`) or `[V6]:PORT`, with an
/// optional scheme; returns whether the scheme asks for TLS.
fn parse_address(text: &str) -> Result<(Option<bool>, (String, u16)), String> {
    let (scheme, rest) = split_scheme(text);
    let default_port = if scheme == Some(true) { 8883 } else { 1883 };
    parse_host_port(rest, default_port).map(|address| (scheme, address))
}

fn parse_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not HOST:PORT");
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        return Ok((host.to_string(), port.parse().map_err(|_| bad())?));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        None if !text.is_empty() => Ok((text.to_string(), default_port)),
        _ => Err(bad()),
    }
}

/// A number of seconds, or Mosquitto's `"base cap"`.
fn parse_restart_timeout(value: &Value) -> Result<(Duration, Duration), String> {
    let secs = |x: f64| {
        Duration::try_from_secs_f64(x)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("must be positive seconds, not {x}"))
    };
    match value {
        Value::Int(n) => {
            let d = secs(*n as f64)?;
            Ok((d, d))
        }
        Value::Float(x) => {
            let d = secs(*x)?;
            Ok((d, d))
        }
        Value::Str(s) => {
            let numbers: Vec<f64> = s
                .split_whitespace()
                .map(|w| w.parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("must be seconds or \"base cap\", not {s:?}"))?;
            match numbers.as_slice() {
                [constant] => {
                    let d = secs(*constant)?;
                    Ok((d, d))
                }
                [base, cap] => {
                    let (base, cap) = (secs(*base)?, secs(*cap)?);
                    if base > cap {
                        return Err(format!("base {base:?} is above cap {cap:?}"));
                    }
                    Ok((base, cap))
                }
                _ => Err(format!("must be seconds or \"base cap\", not {s:?}")),
            }
        }
        other => Err(format!("must be seconds or \"base cap\", not {other:?}")),
    }
}

/// A file or directory name: not empty.
fn path(value: &Value) -> Result<String, String> {
    let path = String::from_value(value)?;
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(path)
}

/// Whether the bridge uses TLS, and the settings that only make sense with it checked.
fn tls_setting(
    tls: BridgeTls,
    schemes: &[(String, Option<bool>)],
) -> Result<Option<BridgeTls>, String> {
    let by_scheme = schemes.iter().any(|(_, s)| *s == Some(true));
    let on = tls.cafile.is_some() || tls.capath.is_some() || by_scheme;
    if let Some((address, _)) = schemes.iter().find(|(_, s)| *s == Some(!on)) {
        return Err(if on {
            format!(
                "address {address:?} is plain MQTT, but the bridge uses TLS (bridge_cafile, \
                 bridge_capath or an mqtts:// address): one transport for every address"
            )
        } else {
            format!("address {address:?} asks for TLS, but another address is plain MQTT")
        });
    }
    if !on {
        let given = [
            ("bridge_certfile", tls.certfile.is_some()),
            ("bridge_keyfile", tls.keyfile.is_some()),
            ("bridge_insecure", tls.insecure),
            ("bridge_tls_version", tls.version.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{key} needs TLS: set bridge_cafile or bridge_capath (the CA that issued the \
                 remote's certificate), or write the address as mqtts://HOST:PORT to trust \
                 the system's CAs"
            ));
        }
        return Ok(None);
    }
    // Mosquitto's rule: a client certificate comes with its key.
    if tls.certfile.is_some() != tls.keyfile.is_some() {
        return Err("give both bridge_certfile and bridge_keyfile, or neither".into());
    }
    Ok(Some(tls))
}

fn strings(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Str(s) => Ok(vec![s.clone()]),
        Value::List(items) => Ok(items.clone()),
        other => Err(format!(
            "must be a string or a list of strings, not {other:?}"
        )),
    }
}

impl BridgeSettings {
    fn from_table(table: &[(String, Value)], hostname: &str) -> Result<BridgeSettings, String> {
        let name = table
            .iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| String::from_value(v))
            .transpose()
            .map_err(|e| format!("name {e}"))?
            .ok_or("a bridge table has no name")?;
        if name.is_empty() || name.contains(['/', '+', '#']) {
            return Err(format!(
                "bridge name {name:?} must be non-empty, without '/', '+' or '#'"
            ));
        }
        let ctx = |e: String| format!("bridge {name:?}: {e}");
        let mut out = BridgeSettings {
            name: name.clone(),
            addresses: Vec::new(),
            topics: Vec::new(),
            remote_clientid: String::new(),
            local_clientid: String::new(),
            remote_username: None,
            remote_password: None,
            cleansession: false,
            local_cleansession: false,
            try_private: true,
            keepalive_interval: 60,
            restart_timeout: (Duration::from_secs(5), Duration::from_secs(30)),
            notifications: true,
            notification_topic: String::new(),
            protocol: BridgeProtocol::V311,
            tls: None,
        };
        let mut tls = BridgeTls {
            cafile: None,
            capath: None,
            certfile: None,
            keyfile: None,
            insecure: false,
            version: None,
        };
        let mut schemes = Vec::new();
        let mut local_clean = None;
        let (mut local_id, mut topic_override) = (None, None);
        for (key, value) in table {
            let err = |e: String| ctx(format!("{key} {e}"));
            match key.as_str() {
                "name" => {}
                "address" | "addresses" => {
                    for address in strings(value).map_err(err)? {
                        // Mosquitto also accepts several in one string, space separated.
                        for one in address.split_whitespace() {
                            let (scheme, parsed) =
                                parse_address(one).map_err(|e| ctx(format!("address {e}")))?;
                            schemes.push((one.to_string(), scheme));
                            out.addresses.push(parsed);
                        }
                    }
                }
                "topic" => {
                    for line in strings(value).map_err(err)? {
                        let parsed = TopicLine::parse(&line)
                            .map_err(|e| ctx(format!("topic line {line:?} {e}")))?;
                        out.topics.push(parsed);
                    }
                }
                "remote_clientid" => {
                    out.remote_clientid = String::from_value(value).map_err(err)?
                }
                "local_clientid" => local_id = Some(String::from_value(value).map_err(err)?),
                "remote_username" => {
                    out.remote_username = Some(String::from_value(value).map_err(err)?)
                }
                "remote_password" => {
                    out.remote_password = Some(String::from_value(value).map_err(err)?)
                }
                "cleansession" => out.cleansession = bool::from_value(value).map_err(err)?,
                "local_cleansession" => local_clean = Some(bool::from_value(value).map_err(err)?),
                "try_private" => out.try_private = bool::from_value(value).map_err(err)?,
                "keepalive_interval" => {
                    let secs = usize::from_value(value).map_err(err)?;
                    out.keepalive_interval = u16::try_from(secs)
                        .ok()
                        .filter(|s| *s >= 5)
                        .ok_or_else(|| err(format!("must be 5 to 65535 seconds, not {secs}")))?;
                }
                "restart_timeout" => {
                    out.restart_timeout = parse_restart_timeout(value).map_err(err)?
                }
                "notifications" => out.notifications = bool::from_value(value).map_err(err)?,
                "notification_topic" => {
                    let t = String::from_value(value).map_err(err)?;
                    topic::validate_topic_name(&t).map_err(|e| err(e.to_string()))?;
                    topic_override = Some(t);
                }
                "bridge_protocol_version" => match String::from_value(value).map_err(err)?.as_str()
                {
                    "mqttv31" => out.protocol = BridgeProtocol::V31,
                    "mqttv311" => out.protocol = BridgeProtocol::V311,
                    "mqttv50" => out.protocol = BridgeProtocol::V5,
                    other => {
                        return Err(err(format!(
                            "{other:?} is not a protocol version: \"mqttv31\", \"mqttv311\" \
                             or \"mqttv50\""
                        )))
                    }
                },
                "bridge_cafile" => tls.cafile = Some(path(value).map_err(err)?),
                "bridge_capath" => tls.capath = Some(path(value).map_err(err)?),
                "bridge_certfile" => tls.certfile = Some(path(value).map_err(err)?),
                "bridge_keyfile" => tls.keyfile = Some(path(value).map_err(err)?),
                "bridge_insecure" => tls.insecure = bool::from_value(value).map_err(err)?,
                "bridge_tls_version" => {
                    tls.version = Some(match String::from_value(value).map_err(err)?.as_str() {
                        "tlsv1.3" => BridgeTlsVersion::V13,
                        "tlsv1.2" => BridgeTlsVersion::V12,
                        "tlsv1.1" => BridgeTlsVersion::V11,
                        other => {
                            return Err(err(format!(
                                "{other:?} is not a TLS version: tlsv1.3, tlsv1.2 or tlsv1.1"
                            )))
                        }
                    })
                }
                other => return Err(ctx(format!("unknown key {other:?} ({KEYS})"))),
            }
        }
        if out.addresses.is_empty() {
            return Err(ctx("has no address (HOST:PORT of the remote broker)".into()));
        }
        if out.topics.is_empty() {
            return Err(ctx("has no topic line (e.g. \"sensors/# out 1\")".into()));
        }
        out.tls = tls_setting(tls, &schemes).map_err(ctx)?;
        if out.remote_clientid.is_empty() {
            out.remote_clientid = format!("{hostname}.{name}");
        }
        if out.remote_password.is_some() && out.remote_username.is_none() {
            return Err(ctx("remote_password needs a remote_username".into()));
        }
        out.local_clientid = local_id.unwrap_or_else(|| format!("local.{}", out.remote_clientid));
        out.local_cleansession = local_clean.unwrap_or(out.cleansession);
        out.notification_topic = topic_override
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", out.remote_clientid));
        Ok(out)
    }

    fn to_table(&self) -> Vec<(String, Value)> {
        let mut table = vec![
            ("name".to_string(), Value::Str(self.name.clone())),
            (
                "address".to_string(),
                Value::List(
                    self.addresses
                        .iter()
                        .map(|(h, p)| {
                            // TLS without a CA setting comes from the addresses' scheme.
                            let scheme = match &self.tls {
                                Some(t) if t.cafile.is_none() && t.capath.is_none() => "mqtts://",
                                _ => "",
                            };
                            if h.contains(':') {
                                format!("{scheme}[{h}]:{p}")
                            } else {
                                format!("{scheme}{h}:{p}")
                            }
                        })
                        .collect(),
                ),
            ),
            (
                "topic".to_string(),
                Value::List(self.topics.iter().map(TopicLine::render).collect()),
            ),
            (
                "remote_clientid".to_string(),
                Value::Str(self.remote_clientid.clone()),
            ),
            (
                "local_clientid".to_string(),
                Value::Str(self.local_clientid.clone()),
            ),
        ];
        if let Some(user) = &self.remote_username {
            table.push(("remote_username".into(), Value::Str(user.clone())));
        }
        if let Some(password) = &self.remote_password {
            table.push(("remote_password".into(), Value::Str(password.clone())));
        }
        let (base, cap) = self.restart_timeout;
        table.extend([
            ("cleansession".into(), Value::Bool(self.cleansession)),
            (
                "local_cleansession".into(),
                Value::Bool(self.local_cleansession),
            ),
            ("try_private".into(), Value::Bool(self.try_private)),
            (
                "keepalive_interval".into(),
                Value::Int(i64::from(self.keepalive_interval)),
            ),
            (
                "restart_timeout".into(),
                Value::Str(format!("{} {}", base.as_secs_f64(), cap.as_secs_f64())),
            ),
            ("notifications".into(), Value::Bool(self.notifications)),
            (
                "notification_topic".into(),
                Value::Str(self.notification_topic.clone()),
            ),
            (
                "bridge_protocol_version".into(),
                Value::Str(self.protocol.name().into()),
            ),
        ]);
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("bridge_cafile", &tls.cafile),
                ("bridge_capath", &tls.capath),
                ("bridge_certfile", &tls.certfile),
                ("bridge_keyfile", &tls.keyfile),
            ] {
                if let Some(file) = file {
                    table.push((key.into(), Value::Str(file.clone())));
                }
            }
            table.push(("bridge_insecure".into(), Value::Bool(tls.insecure)));
            if let Some(version) = tls.version {
                table.push((
                    "bridge_tls_version".into(),
                    Value::Str(version.name().into()),
                ));
            }
        }
        table
    }
}

impl SettingType for Vec<BridgeSettings> {
    fn from_value(value: &Value) -> Result<Self, String> {
        let tables = match value {
            Value::Tables(tables) => tables,
            Value::List(items) if items.is_empty() => return Ok(Vec::new()),
            other => return Err(format!("must be a list of tables, not {other:?}")),
        };
        let hostname = local_hostname();
        let bridges = tables
            .iter()
            .map(|t| BridgeSettings::from_table(t, &hostname))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, b) in bridges.iter().enumerate() {
            if bridges[..i].iter().any(|o| o.name == b.name) {
                return Err(format!("two bridges are named {:?}", b.name));
            }
            if bridges[..i]
                .iter()
                .any(|o| o.local_clientid == b.local_clientid)
            {
                return Err(format!(
                    "bridge {:?}: local_clientid {:?} is used by another bridge",
                    b.name, b.local_clientid
                ));
            }
        }
        Ok(bridges)
    }

    fn to_value(&self) -> Value {
        Value::Tables(self.iter().map(BridgeSettings::to_table).collect())
    }
}

#[cfg(test)]
mod tests;
