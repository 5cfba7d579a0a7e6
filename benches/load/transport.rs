//! The generator's end of the broker's transports: plain TCP, TLS (rustls client, ring),
//! WebSocket (RFC 6455 client framing, masked) and WebSocket over TLS. The same code
//! drives pyo3mq and Mosquitto, so both pay the same client-side cost.

use std::io::{self, BufRead, Read, Write};
use std::sync::{Arc, OnceLock};

use bytes::{Buf, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncWriteExt, Interest, Ready};
use tokio::net::TcpStream;

/// How the generator reaches the broker (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "tcp" => Kind::Tcp,
            "tls" => Kind::Tls,
            "ws" => Kind::Ws,
            "wss" => Kind::Wss,
            _ => return None,
        })
    }

    fn tls(self) -> bool {
        matches!(self, Kind::Tls | Kind::Wss)
    }

    fn ws(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss)
    }
}

/// The run's transport, set once from the command line.
pub struct Settings {
    pub kind: Kind,
    /// WebSocket path.
    pub path: String,
    tls: Option<Arc<ClientConfig>>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Sets the transport every connection of this process uses. `cafile` is the PEM file
/// the broker's certificate is verified against (its name must be `localhost`).
pub fn configure(kind: Kind, cafile: Option<&str>, path: &str) -> Result<(), String> {
    let tls = if kind.tls() {
        let cafile = cafile.ok_or("--transport tls/wss needs --cafile")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cafile).map_err(|e| format!("{cafile}: {e}"))? {
            roots
                .add(cert.map_err(|e| format!("{cafile}: {e}"))?)
                .map_err(|e| format!("{cafile}: {e}"))?;
        }
        #[allow(deprecated)] // ring, as the broker uses (rustls 0.23.48 prefers aws-lc)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(Arc::new(config))
    } else {
        None
    };
    SETTINGS
        .set(Settings {
            kind,
            path: path.to_string(),
            tls,
        })
        .map_err(|_| "transport configured twice".to_string())
}

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings {
        kind: Kind::Tcp,
        path: "/mqtt".into(),
        tls: None,
    })
}

struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// WebSocket framing state.
#[derive(Default)]
struct Ws {
    /// Received bytes not decoded yet.
    raw: BytesMut,
    /// Payload bytes of the current data frame still to come.
    remaining: u64,
    /// Masked frames not yet handed to the layer below.
    out: BytesMut,
    closed: bool,
}

/// One connection's byte stream, with non-blocking reads and writes like `TcpStream`'s.
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    ws: Option<Box<Ws>>,
}

fn would_block<T>() -> io::Result<T> {
    Err(io::ErrorKind::WouldBlock.into())
}

impl Stream {
    /// TCP connect, then the TLS handshake and the WebSocket upgrade as configured; from
    /// the local address `source` if given (port chosen at connect time). One source address has about 28,000 ephemeral ports towards one broker
    /// port (`net.ipv4.ip_local_port_range`); 100,000 connections need several
    /// (127.0.0.x are all loopback).
    pub async fn connect_from(
        addr: std::net::SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> Result<Stream, String> {
        let s = settings();
        let tcp = match source {
            None => TcpStream::connect(addr).await,
            Some(ip) => bound_connect(addr, ip).await,
        }
        .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let mut stream = Stream {
            tcp,
            tls: None,
            ws: None,
        };
        if let Some(config) = &s.tls {
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            stream.tls = Some(Box::new(conn));
            stream
                .tls_handshake()
                .await
                .map_err(|e| format!("TLS: {e}"))?;
        }
        if s.kind.ws() {
            stream.upgrade(&s.path).await?;
        }
        Ok(stream)
    }

    async fn tls_handshake(&mut self) -> io::Result<()> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            if tls.wants_write() {
                self.tcp.writable().await?;
                match tls.write_tls(&mut TryIo(&self.tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                continue;
            }
            if !tls.is_handshaking() {
                return Ok(());
            }
            self.tcp.readable().await?;
            match tls.read_tls(&mut TryIo(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn upgrade(&mut self, path: &str) -> Result<(), String> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        self.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 8192 {
                return Err("upgrade: response too long".into());
            }
            let n = self
                .read_some(&mut buf)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            if n == 0 {
                return Err("upgrade: closed by the broker".into());
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let line = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
            return Err(format!("upgrade refused: {line}"));
        }
        buf.advance(end);
        self.ws = Some(Box::new(Ws {
            raw: buf,
            ..Ws::default()
        }));
        Ok(())
    }

    /// Reads (and decrypts) what the socket has, below WebSocket framing.
    fn read_lower(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.try_read_buf(buf);
        };
        loop {
            let state = tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut n = 0;
            if state.plaintext_bytes_to_read() > 0 {
                let mut reader = tls.reader();
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
            if n > 0 {
                return Ok(n);
            }
            if state.peer_has_closed() {
                return Ok(0);
            }
            if tls.read_tls(&mut TryIo(&self.tcp))? == 0 {
                return Ok(0);
            }
        }
    }

    /// Like `TcpStream::try_read_buf`: MQTT bytes appended, 0 at the end of the stream.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        let Some(mut ws) = self.ws.take() else {
            return self.read_lower(buf);
        };
        let result = loop {
            let n = decode(&mut ws, buf)?;
            if n > 0 {
                break Ok(n);
            }
            if ws.closed {
                break Ok(0);
            }
            ws.raw.reserve(64 * 1024);
            match self.read_lower(&mut ws.raw) {
                Ok(0) => break Ok(0),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.ws = Some(ws);
        result
    }

    /// Writes below WebSocket framing; returns what the lower layers took.
    fn write_lower(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.try_write(data);
        };
        flush_tls(tls, &self.tcp)?;
        let n = tls.writer().write(data)?;
        flush_tls(tls, &self.tcp)?;
        if n == 0 {
            return would_block();
        }
        Ok(n)
    }

    /// Like `TcpStream::try_write`. With WebSocket, `data` is framed (and masked) whole
    /// once the previous frame is gone.
    pub fn try_write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(mut ws) = self.ws.take() else {
            return self.write_lower(data);
        };
        let result = (|| {
            self.flush_ws(&mut ws)?;
            if !ws.out.is_empty() || data.is_empty() {
                return would_block();
            }
            frame(&mut ws.out, data);
            self.flush_ws(&mut ws)?;
            Ok(data.len())
        })();
        self.ws = Some(ws);
        result
    }

    fn flush_ws(&mut self, ws: &mut Ws) -> io::Result<()> {
        while !ws.out.is_empty() {
            match self.write_lower(&ws.out[..]) {
                Ok(n) => ws.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Bytes the layers hold that the socket has not taken yet.
    pub fn wants_write(&self) -> bool {
        self.ws.as_ref().is_some_and(|ws| !ws.out.is_empty())
            || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Pushes out what the layers hold.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        if let Some(mut ws) = self.ws.take() {
            let r = self.flush_ws(&mut ws);
            self.ws = Some(ws);
            r?;
        }
        if let Some(tls) = self.tls.as_mut() {
            flush_tls(tls, &self.tcp)?;
        }
        Ok(())
    }

    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        self.tcp.ready(interest).await
    }

    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() || self.wants_write() {
            if data.is_empty() {
                self.tcp.writable().await?;
                self.flush_pending()?;
                continue;
            }
            match self.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub async fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.readable().await?,
                other => return other,
            }
        }
    }

    pub async fn shutdown(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        let _ = self.write_all(&[]).await;
        let _ = self.tcp.shutdown().await;
    }
}

fn flush_tls(tls: &mut ClientConnection, tcp: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut TryIo(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A masked binary frame holding `data` (RFC 6455 5.1: clients mask).
fn frame(out: &mut BytesMut, data: &[u8]) {
    let n = data.len();
    out.extend_from_slice(&[0x82]);
    if n < 126 {
        out.extend_from_slice(&[0x80 | n as u8]);
    } else if n < 65_536 {
        out.extend_from_slice(&[0x80 | 126]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[0x80 | 127]);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x5a, 0x13, 0xc7, 0x2e];
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(data);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Moves the payload of the server's (unmasked) binary frames from `ws.raw` to `out`.
fn decode(ws: &mut Ws, out: &mut BytesMut) -> io::Result<usize> {
    let mut produced = 0;
    loop {
        if ws.remaining > 0 {
            let take = (ws.remaining as usize).min(ws.raw.len());
            if take == 0 {
                return Ok(produced);
            }
            out.extend_from_slice(&ws.raw[..take]);
            ws.raw.advance(take);
            ws.remaining -= take as u64;
            produced += take;
            continue;
        }
        let raw = &ws.raw[..];
        if raw.len() < 2 {
            return Ok(produced);
        }
        let (extra, len) = match raw[1] & 0x7f {
            126 if raw.len() >= 4 => (2, u64::from(u16::from_be_bytes([raw[2], raw[3]]))),
            127 if raw.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&raw[2..10]);
                (8, u64::from_be_bytes(b))
            }
            126 | 127 => return Ok(produced),
            n => (0, u64::from(n)),
        };
        match raw[0] & 0x0f {
            0 | 2 => {
                ws.raw.advance(2 + extra);
                ws.remaining = len;
            }
            8 => {
                ws.closed = true;
                return Ok(produced);
            }
            9 | 10 => {
                let total = 2 + extra + len as usize;
                if ws.raw.len() < total {
                    return Ok(produced);
                }
                ws.raw.advance(total);
            }
            op => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected WebSocket opcode {op}"),
                ))
            }
        }
    }
}

/// TCP connect from `ip`. `IP_BIND_ADDRESS_NO_PORT` defers the port choice to
/// `connect`, so the port only has to be free for this 4-tuple, not for every
/// destination (a plain `bind(ip:0)` would reserve it outright and run out sooner).
async fn bound_connect(addr: std::net::SocketAddr, ip: std::net::IpAddr) -> io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let socket = match ip {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(std::net::SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}
