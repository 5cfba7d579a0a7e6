//! TLS on rustls's sans-IO `ServerConnection`, driven by the broker's non-blocking socket
//! calls: ciphertext moves with `read_tls`/`write_tls` through [`TryIo`], plaintext with
//! the connection's reader and writer. rustls buffers at most [`SEND_BUFFER`] bytes to send
//! and 16 KiB of received plaintext; the connection above is never handed more than it
//! reads.

use std::io::{self, BufRead, IoSlice, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{x509, PeerCertificate, TryIo, MAX_READS_PER_CALL};
use crate::broker::config::{TlsSettings, TlsVersion};
// `broker::cluster::connect` still names the loader through this module.
use crate::tls::load_certs;
use crate::tls::load_key;

/// Bytes rustls may hold for sending (plaintext accepted but not yet on the socket, and
/// records not yet written): a peer that stops reading stops our writes at this.
const SEND_BUFFER: usize = 64 * 1024;
/// The first byte of a TLS handshake record (content type 22).
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts TLS connections with one listener's certificate and client-certificate policy.
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    identity_as_username: bool,
}

impl TlsAcceptor {
    /// Loads the certificate chain, key and CA file named by `settings`; errors name the
    /// setting and the file.
    pub fn new(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
        // ring keeps the build free of C toolchains beyond a compiler (aws-lc needs cmake
        // and nasm). rustls 0.23.48 marks it deprecated for lacking post-quantum key
        // exchange; MQTT clients (OpenSSL, Python's ssl) negotiate X25519 with it.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.tls_version {
            TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS: {e}"))?;
        let certs = load_certs("certfile", &settings.certfile)?;
        let key = load_key("keyfile", &settings.keyfile)?;
        let builder = match &settings.cafile {
            None => builder.with_no_client_auth(),
            Some(cafile) => {
                let mut roots = RootCertStore::empty();
                for cert in load_certs("cafile", cafile)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("cafile {cafile}: unusable CA certificate: {e}"))?;
                }
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if !settings.require_certificate {
                    // Asked for, verified when given, but not required (Mosquitto's
                    // behaviour with a cafile and require_certificate false).
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| format!("cafile {cafile}: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "certfile {} with keyfile {}: {e}",
                settings.certfile, settings.keyfile
            )
        })?;
        Ok(TlsAcceptor {
            config: Arc::new(config),
            identity_as_username: settings.use_identity_as_username,
        })
    }

    /// Runs the server side of the handshake. The caller bounds the time it takes.
    pub async fn accept(&self, tcp: TcpStream) -> Result<TlsStream, String> {
        // A peer speaking something else is told apart before rustls calls it corrupt.
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) => return Err("the peer closed before the handshake".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if first[0] != TLS_HANDSHAKE {
            return Err(format!(
                "not a TLS handshake ({})",
                match first[0] {
                    0x10 => "an MQTT CONNECT: plain MQTT on a TLS port?".to_string(),
                    b'G' => "an HTTP request on a TLS port?".to_string(),
                    other => format!("first byte 0x{other:02x}"),
                }
            ));
        }
        let mut conn = ServerConnection::new(self.config.clone()).map_err(|e| e.to_string())?;
        conn.set_buffer_limit(Some(SEND_BUFFER));
        let mut plaintext = 0;
        loop {
            while conn.wants_write() {
                tcp.writable().await.map_err(|e| e.to_string())?;
                match conn.write_tls(&mut TryIo(&tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            tcp.readable().await.map_err(|e| e.to_string())?;
            match conn.read_tls(&mut TryIo(&tcp)) {
                Ok(0) => return Err("the peer closed during the handshake".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.to_string()),
            }
            match conn.process_new_packets() {
                Ok(state) => plaintext = state.plaintext_bytes_to_read(),
                Err(err) => {
                    // Tell the peer why (the alert rustls queued), without waiting on it.
                    let _ = conn.write_tls(&mut TryIo(&tcp));
                    return Err(err.to_string());
                }
            }
        }
        let peer_certificate = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| x509::subject(cert.as_ref()));
        Ok(TlsStream {
            tcp,
            conn,
            buffered: plaintext > 0,
            peer_certificate,
            identity_as_username: self.identity_as_username,
        })
    }
}

/// A TLS connection after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ServerConnection,
    /// rustls holds decrypted bytes that arrived with the handshake's last flight.
    buffered: bool,
    peer_certificate: Option<PeerCertificate>,
    identity_as_username: bool,
}

impl TlsStream {
    pub(super) fn socket(&self) -> &TcpStream {
        &self.tcp
    }

    /// Decrypted bytes wait in rustls: reading needs no socket readiness.
    pub(super) fn buffered_input(&self) -> bool {
        self.buffered
    }

    /// Decrypts what has arrived and appends the plaintext to `buf`.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        for _ in 0..MAX_READS_PER_CALL {
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
            let mut n = 0;
            if state.plaintext_bytes_to_read() > 0 {
                // Copied straight from rustls's buffer: no zeroed staging area.
                let mut reader = self.conn.reader();
                while let Ok(chunk) = reader.fill_buf() {
                    if chunk.is_empty() {
                        break;
                    }
                    let len = chunk.len();
                    buf.extend_from_slice(chunk);
                    reader.consume(len);
                    n += len;
                }
            }
            self.buffered = false;
            if n > 0 {
                return Ok(n);
            }
            if state.peer_has_closed() {
                return Ok(0); // close_notify
            }
            match self.conn.read_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                // rustls's receive buffer is full: drained above first, so not reached.
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Encrypts what rustls has room for, then writes records until the socket is full.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_records()?;
        if bufs.iter().all(|b| b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let taken = self.conn.writer().write_vectored(bufs)?;
        self.write_records()?;
        if taken == 0 {
            // rustls's send buffer is full: the socket said WouldBlock above.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes pending TLS records until none is left or the socket would block.
    fn write_records(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Sends close_notify and what is still buffered (for at most a second), then FIN.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let flushed = timeout(Duration::from_secs(1), async {
            while self.conn.wants_write() {
                self.tcp.writable().await?;
                self.write_records()?;
            }
            Ok::<(), io::Error>(())
        })
        .await;
        let result = self.tcp.shutdown().await;
        flushed.unwrap_or(Ok(()))?;
        result
    }

    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.peer_certificate.as_ref()
    }

    pub fn identity_as_username(&self) -> bool {
        self.identity_as_username
    }
}
