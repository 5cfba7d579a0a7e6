//! Listeners: the `[[listener]]` tables, listener URIs taken apart, and each listener's
//! TLS settings combined from the top-level ones and its table, checked before anything
//! binds. Apart from config.rs, which keeps the flat settings table, because listeners are
//! the settings with a structure of their own (URIs, tables, per-listener TLS) to parse.

use super::{Config, SettingType, TlsVersion, Value};

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
