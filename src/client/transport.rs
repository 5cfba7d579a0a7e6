//! The client's byte streams: plain TCP, TLS on rustls (tokio-rustls), and WebSocket
//! framing (tokio-tungstenite) over either.
//!
//! [`Connector::connect`] makes the stream (TCP connect, TLS handshake, HTTP upgrade) and
//! splits it into a [`Reader`] and a [`Writer`], which the connection task drives exactly
//! as it drives a TCP socket: one event loop and state machine for every transport. Plain
//! TCP keeps tokio's lock-free owned halves; the layered streams share theirs.
//!
//! Everything that reads files (CA, certificate, key, the system's roots) happens once,
//! in [`Connector::new`], so that a missing or malformed file is an error of the client's
//! constructor naming the file, not of every connection attempt.

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::codec::Protocol;
use crate::tls::{load_certs, load_key};

use super::error::ClientError;
use super::options::{Options, Scheme, TlsOptions, TlsVersions, Verify};

/// A boxed stream under WebSocket framing: TCP or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type WsStream = WebSocketStream<Box<dyn Io>>;

/// The receiving half of a connection.
pub(crate) enum Reader {
    Tcp(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
    Ws(SplitStream<WsStream>),
}

/// The sending half of a connection.
pub(crate) enum Writer {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    Ws(SplitSink<WsStream, Message>),
}

impl Reader {
    /// Appends what arrives next to `buf`; `Ok(0)` at the end of the stream. Over
    /// WebSocket, a binary frame's payload is appended as is, so MQTT packets may span
    /// frames and frames may hold several packets [MQTT-6.0.0-2].
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Reader::Tcp(rd) => rd.read_buf(buf).await,
            Reader::Tls(rd) => rd.read_buf(buf).await,
            Reader::Ws(rd) => loop {
                match rd.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "[MQTT-6.0.0-1] the server sent a WebSocket text frame: MQTT \
                             travels in binary frames only",
                        ))
                    }
                    // tungstenite answers pings itself (the pong goes out with the next
                    // read or write).
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => return Err(ws_io_error(e)),
                }
            },
        }
    }
}

impl Writer {
    /// Writes all of `data` (over WebSocket as one binary frame) and flushes it.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => wr.write_all(data).await,
            Writer::Tls(wr) => {
                // rustls may keep records after a write returns: flush sends them.
                wr.write_all(data).await?;
                wr.flush().await
            }
            Writer::Ws(wr) => wr
                .send(Message::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(ws_io_error),
        }
    }

    /// Ends the stream politely: FIN, TLS close_notify, or a WebSocket close frame.
    pub(crate) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Writer::Tcp(wr) => wr.shutdown().await,
            Writer::Tls(wr) => wr.shutdown().await,
            Writer::Ws(wr) => wr.close().await.map_err(ws_io_error),
        }
    }
}

fn ws_io_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        other => io::Error::other(format!("WebSocket: {other}")),
    }
}

/// Makes connections of one client: its transport, with everything read from files.
pub(crate) struct Connector {
    host: String,
    port: u16,
    scheme: Scheme,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    ws_path: String,
    ws_headers: Vec<(HeaderName, HeaderValue)>,
    ws_protocol: &'static str,
    ws_config: WebSocketConfig,
}

impl Connector {
    /// Reads the CA, certificate and key files (or the system's roots) and checks the
    /// WebSocket settings. Errors name the setting and the file.
    pub(crate) fn new(opts: &Options) -> Result<Connector, String> {
        let t = &opts.transport;
        let tls = if t.scheme.is_tls() {
            let name = t.tls.server_name.as_deref().unwrap_or(&opts.host);
            let server_name = server_name(name)?;
            let config = client_config(&t.tls)?;
            Some((TlsConnector::from(Arc::new(config)), server_name))
        } else {
            let files = [&t.tls.ca_file, &t.tls.cert_file, &t.tls.key_file];
            if files.iter().any(|f| f.is_some()) || t.tls.key_pem.is_some() {
                return Err("TLS files were given for a connection without TLS: use \
                     tls://, mqtts:// or wss://"
                    .into());
            }
            None
        };
        let mut ws_headers = Vec::with_capacity(t.ws_headers.len());
        for (name, value) in &t.ws_headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("websocket header name {name:?}: {e}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| format!("websocket header {name}: value {value:?}: {e}"))?;
            ws_headers.push((header, value));
        }
        if !t.ws_path.starts_with('/') {
            return Err(format!(
                "websocket path {:?} must start with '/'",
                t.ws_path
            ));
        }
        // A frame may hold several packets: allow a whole largest packet plus a write
        // batch's worth around it, and no more (what is buffered stays bounded).
        let ws_limit = opts.max_packet_size.saturating_add(1 << 20);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(ws_limit))
            .max_frame_size(Some(ws_limit));
        Ok(Connector {
            host: opts.host.clone(),
            port: opts.port,
            scheme: t.scheme,
            tls,
            ws_path: t.ws_path.clone(),
            ws_headers,
            ws_protocol: match opts.protocol {
                // MQTT 3.1's name for the subprotocol; 3.1.1 section 6 names "mqtt".
                Protocol::V31 => "mqttv3.1",
                Protocol::V311 | Protocol::V311Bridge | Protocol::V5 => "mqtt",
            },
            ws_config,
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects, runs the TLS handshake and the WebSocket upgrade as the scheme needs,
    /// and splits the stream. The caller bounds the time it takes.
    pub(crate) async fn connect(&self) -> Result<(Reader, Writer), ClientError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ClientError::ConnectFailed(format!("{}: {e}", self.addr())))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match (&self.tls, self.scheme) {
            (None, Scheme::Tcp) => {
                let (rd, wr) = tcp.into_split();
                return Ok((Reader::Tcp(rd), Writer::Tcp(wr)));
            }
            (None, _) => Box::new(tcp),
            (Some((connector, name)), scheme) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| self.failure("TLS handshake", e))?;
                if scheme == Scheme::Tls {
                    let (rd, wr) = tokio::io::split(tls);
                    return Ok((Reader::Tls(rd), Writer::Tls(wr)));
                }
                Box::new(tls)
            }
        };
        let ws = self.upgrade(io).await?;
        let (wr, rd) = ws.split();
        Ok((Reader::Ws(rd), Writer::Ws(wr)))
    }

    async fn upgrade(&self, io: Box<dyn Io>) -> Result<WsStream, ClientError> {
        let host = match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => self.host.clone(),
        };
        let scheme = if self.scheme == Scheme::Wss {
            "wss"
        } else {
            "ws"
        };
        let url = format!("{scheme}://{host}:{}{}", self.port, self.ws_path);
        let refused = |e: String| ClientError::ConnectFailed(format!("{url}: {e}"));
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| refused(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(self.ws_protocol),
        );
        for (name, value) in &self.ws_headers {
            headers.insert(name.clone(), value.clone());
        }
        // tungstenite checks the response: status 101, the accept key, and the
        // subprotocol we asked for [MQTT-6.0.0-3].
        match tokio_tungstenite::client_async_with_config(request, io, Some(self.ws_config)).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => Err(refused(format!(
                "WebSocket upgrade refused: HTTP {}",
                response.status()
            ))),
            Err(tungstenite::Error::Io(e)) => Err(self.failure("WebSocket upgrade", e)),
            Err(e) => Err(refused(format!("WebSocket upgrade failed: {e}"))),
        }
    }

    /// What an I/O error during connecting means: a TLS refusal (which retrying does not
    /// fix, and which says what to pass) or a lost connection.
    pub(crate) fn failure(&self, during: &str, e: io::Error) -> ClientError {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(err) => ClientError::Tls(format!(
                "TLS with {} failed: {err}{}",
                self.addr(),
                hint(err)
            )),
            None => ClientError::ConnectionLost(format!("{during} with {}: {e}", self.addr())),
        }
    }
}

/// What to do about a TLS failure, for the common ones.
fn hint(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            " (the server's certificate is not signed by a CA this client trusts: pass the \
             CA that issued it as cafile= / TLSParameters(ca_certs=), or verify=False to \
             accept any certificate)"
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            " (the server's certificate does not hold the name connected to: connect by a \
             name it holds, pass server_hostname=, or tls_insecure=True to skip the name \
             check)"
        }
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA,
        ) => {
            " (the server refused the handshake; if it requires a client certificate, \
             pass certfile= and keyfile= / TLSParameters(certfile=, keyfile=) with one it \
             trusts)"
        }
        _ => "",
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| format!("{name:?} is not a valid server name for TLS: {e}"))
}

fn provider() -> Arc<CryptoProvider> {
    // ring, as the broker's listeners: no C toolchain beyond a compiler (aws-lc needs
    // cmake and nasm). rustls 0.23.48 marks it deprecated for lacking post-quantum key
    // exchange; servers negotiate X25519 with it.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

fn client_config(tls: &TlsOptions) -> Result<ClientConfig, String> {
    let provider = provider();
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.versions {
        TlsVersions::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls12Only => &[&rustls::version::TLS12],
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS: {e}"))?;
    let chain = match tls.verify {
        Verify::Nothing => None,
        Verify::Full | Verify::AnyName => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(tls)?), provider.clone())
                .build()
                .map_err(|e| format!("TLS: {e}"))?,
        ),
    };
    let builder = match chain {
        Some(webpki) if tls.verify == Verify::Full => builder.with_webpki_verifier(webpki),
        chain => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Relaxed { chain, provider })),
    };
    let config = match (&tls.cert_file, &tls.key_file, &tls.key_pem) {
        (None, None, None) => builder.with_no_client_auth(),
        (None, _, _) => return Err("a client key needs its certificate: pass certfile".into()),
        (Some(cert_file), key_file, key_pem) => {
            let certs = load_certs("certfile", cert_file)?;
            let (key, key_name) = match (key_pem, key_file) {
                (Some(pem), file) => {
                    let name = file.as_deref().unwrap_or(cert_file);
                    let key = PrivateKeyDer::from_pem_slice(pem)
                        .map_err(|e| format!("keyfile {name}: no usable private key: {e}"))?;
                    (key, name)
                }
                (None, Some(file)) => (load_key("keyfile", file)?, file.as_str()),
                // paho's and Python's ssl: without a keyfile, the certfile holds the key.
                (None, None) => (load_key("keyfile", cert_file)?, cert_file.as_str()),
            };
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("certfile {cert_file} with keyfile {key_name}: {e}"))?
        }
    };
    Ok(config)
}

fn roots(tls: &TlsOptions) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if let Some(ca_file) = &tls.ca_file {
        for cert in load_certs("cafile", ca_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("cafile {ca_file}: unusable CA certificate: {e}"))?;
        }
    }
    for der in &tls.ca_der {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("a CA certificate of the SSL context is unusable: {e}"))?;
    }
    if tls.ca_file.is_none() && tls.ca_der.is_empty() {
        roots.extend(system_roots()?.roots.iter().cloned());
    }
    Ok(roots)
}

/// The system's trusted roots (Debian: /etc/ssl/certs; macOS: the keychain; Windows: the
/// certificate store), read once per process.
fn system_roots() -> Result<&'static RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _unusable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(format!(
                    "no trusted CA certificates found on this system{}: pass cafile= with \
                     the CA that issued the server's certificate",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({why})")
                    }
                ));
            }
            Ok(roots)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// A verifier that checks less than webpki's, on request only: with a webpki verifier
/// (`tls_insecure`) the chain must still lead to a trusted root, but any name passes
/// (webpki checks the chain first, so a name error means the chain was good); without
/// one (`verify=False`) any certificate passes. The handshake's signatures are checked
/// either way, as webpki's verifier checks them.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::options::TransportOptions;

    fn options(transport: TransportOptions) -> Options {
        Options {
            transport,
            ..Options::for_tests(8883, None)
        }
    }

    fn error(transport: TransportOptions) -> String {
        match Connector::new(&options(transport)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn tls(tls: TlsOptions) -> TransportOptions {
        TransportOptions {
            scheme: Scheme::Tls,
            tls,
            ..TransportOptions::default()
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_what_is_wrong() {
        let files_without_tls = TransportOptions {
            tls: TlsOptions {
                ca_file: Some("ca.pem".into()),
                ..TlsOptions::default()
            },
            ..TransportOptions::default()
        };
        assert!(error(files_without_tls).contains("without TLS"));
        let relative_path = TransportOptions {
            scheme: Scheme::Ws,
            ws_path: "mqtt".into(),
            ..TransportOptions::default()
        };
        assert!(error(relative_path).contains("must start with '/'"));
        let bad_header = TransportOptions {
            scheme: Scheme::Ws,
            ws_headers: vec![("bad header".into(), "x".into())],
            ..TransportOptions::default()
        };
        assert!(error(bad_header).contains("\"bad header\""));
        let missing = tls(TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        });
        assert!(error(missing).starts_with("cafile /nonexistent/ca.pem: "));
        let key_alone = tls(TlsOptions {
            verify: Verify::Nothing,
            key_file: Some("client.key".into()),
            ..TlsOptions::default()
        });
        assert!(error(key_alone).contains("needs its certificate"));
        let bad_name = tls(TlsOptions {
            verify: Verify::Nothing,
            server_name: Some("not a host name".into()),
            ..TlsOptions::default()
        });
        assert!(error(bad_name).contains("not a valid server name"));
    }

    #[test]
    fn verify_nothing_needs_no_roots_and_any_name_still_needs_a_chain() {
        let nothing = tls(TlsOptions {
            verify: Verify::Nothing,
            ..TlsOptions::default()
        });
        assert!(Connector::new(&options(nothing)).is_ok());
        let any_name = tls(TlsOptions {
            verify: Verify::AnyName,
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        });
        assert!(error(any_name).starts_with("cafile /nonexistent/ca.pem: "));
    }
}
