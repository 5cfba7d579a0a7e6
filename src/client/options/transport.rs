//! The transport settings of a client: the stream MQTT travels on (TCP, TLS, WebSocket,
//! secure WebSocket), TLS and WebSocket options. Here with the other options; the
//! client's transport (client/transport.rs) connects with them.

/// Which stream MQTT travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Scheme {
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Tls | Scheme::Wss)
    }

    pub fn is_ws(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// A chain to a trusted root, valid for the server's name (the default).
    #[default]
    Full,
    /// A chain to a trusted root, for any name (paho's and aiomqtt's `tls_insecure`).
    AnyName,
    /// Nothing: any certificate is accepted (`verify=False`, `cert_reqs=CERT_NONE`).
    /// The handshake's signatures are still checked, so the peer holds the key of the
    /// certificate it shows; who that is stays unknown.
    Nothing,
}

/// The TLS versions offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// 1.3 and 1.2 (rustls offers nothing older).
    #[default]
    Any,
    Tls12Only,
    Tls13Only,
}

/// TLS settings (used when the scheme is `tls` or `wss`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CAs to trust. Without it and without `ca_der`, the system's
    /// trusted roots are used.
    pub ca_file: Option<String>,
    /// CA certificates in DER (those an `ssl.SSLContext` holds), trusted with `ca_file`.
    pub ca_der: Vec<Vec<u8>>,
    /// PEM certificate chain presented to a server that asks for one (mutual TLS).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`; without it (and `key_pem`), `cert_file` holds it.
    pub key_file: Option<String>,
    /// The private key in PEM, when the caller read it (a key it decrypted).
    pub key_pem: Option<Vec<u8>>,
    pub verify: Verify,
    pub versions: TlsVersions,
    /// The name the certificate must be valid for and sent as SNI; the host by default.
    pub server_name: Option<String>,
}

/// The transport and its settings.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    pub scheme: Scheme,
    pub tls: TlsOptions,
    /// The WebSocket request path.
    pub ws_path: String,
    /// Extra headers of the WebSocket upgrade request.
    pub ws_headers: Vec<(String, String)>,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            scheme: Scheme::Tcp,
            tls: TlsOptions::default(),
            ws_path: "/mqtt".into(),
            ws_headers: Vec::new(),
        }
    }
}
