//! The byte streams MQTT travels on: plain TCP, TLS over TCP, and WebSocket framing over
//! either. A [`Transport`] offers the readiness interface a connection uses on a
//! `TcpStream` (`readable`, `try_read_buf`, `writable`, `try_write_vectored`, `shutdown`),
//! so one connection implementation serves every listener kind. Layers that hold bytes
//! of their own (TLS records, WebSocket control frames) say so with [`Transport::wants_write`];
//! a connection keeps writing while that is true.
//!
//! The TLS handshake and the WebSocket upgrade happen before the connection exists, in
//! [`accept`], which the server runs in the connection's own task under
//! `connect_timeout`.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::info;

use crate::broker::config::ListenerKind;
use crate::broker::metrics::{Counters, Handshake};

pub mod tls;
pub mod ws;
mod x509;

pub use tls::{TlsAcceptor, TlsStream};
pub use ws::WsStream;

/// Socket reads one `try_read_buf` of a layered transport makes at most before it
/// returns: a peer sending only control frames or empty records must not keep a worker
/// thread to itself. (It then says `WouldBlock` with the socket still readable, so the
/// connection's next `readable()` is immediate, after other tasks had their turn.)
pub(crate) const MAX_READS_PER_CALL: usize = 16;

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject as an RFC 4514 string (`CN=alice,O=Example`).
    pub subject: ByteString,
    /// The first Common Name, for `use_identity_as_username`.
    pub common_name: Option<ByteString>,
}

/// A connection's stream. TLS and WebSocket state is boxed: an idle plain TCP connection
/// pays only for its socket.
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Ws(Box<WsStream>),
}

impl From<TcpStream> for Transport {
    fn from(stream: TcpStream) -> Transport {
        let _ = stream.set_nodelay(true);
        Transport::Tcp(stream)
    }
}

impl Transport {
    /// Waits until `try_read_buf` may make progress (bytes on the socket, or bytes a
    /// layer already holds). One readiness future, however many layers: it is part of
    /// every connection's future, whose size is memory per idle connection.
    pub async fn readable(&self) -> io::Result<()> {
        if self.buffered_input() {
            return Ok(());
        }
        self.socket().readable().await
    }

    fn socket(&self) -> &TcpStream {
        match self {
            Transport::Tcp(tcp) => tcp,
            Transport::Tls(tls) => tls.socket(),
            Transport::Ws(ws) => ws.socket(),
        }
    }

    fn buffered_input(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(tls) => tls.buffered_input(),
            Transport::Ws(ws) => ws.buffered_input(),
        }
    }

    /// Appends what can be read now to `buf`: `Ok(0)` at the end of the stream,
    /// `WouldBlock` when nothing is there yet.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(tcp) => tcp.try_read_buf(buf),
            Transport::Tls(tls) => tls.try_read_buf(buf),
            Transport::Ws(ws) => ws.try_read_buf(buf),
        }
    }

    /// A second handle on a plain TCP socket, for reads that ask the socket itself
    /// rather than tokio's readiness: a connection just back from the parking table
    /// (broker/parking.rs) has a fresh registration whose readiness is unknown until the
    /// driver's next turn, and `try_read_buf` would find nothing where the socket holds
    /// bytes. `None` for the layered transports (they never leave tokio's driver) and
    /// when the descriptor cannot be duplicated.
    #[cfg(unix)]
    pub fn direct_reader(&self) -> Option<std::net::TcpStream> {
        use std::os::fd::AsFd;
        match self {
            Transport::Tcp(tcp) => tcp.as_fd().try_clone_to_owned().ok().map(Into::into),
            Transport::Tls(_) | Transport::Ws(_) => None,
        }
    }

    /// The peer's address, as the socket has it.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket().peer_addr()
    }

    #[cfg(not(unix))]
    pub fn direct_reader(&self) -> Option<std::net::TcpStream> {
        None
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.socket().writable().await
    }

    /// `readable()` as a poll: the waker is kept in the socket's registration, so a
    /// connection waiting on it holds no readiness future (168 bytes each) in its own
    /// future, whose size is memory per idle connection.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buffered_input() {
            return Poll::Ready(Ok(()));
        }
        self.socket().poll_read_ready(cx)
    }

    /// `writable()` as a poll, for the same reason as [`Transport::poll_read_ready`].
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket().poll_write_ready(cx)
    }

    /// Takes what it can of `bufs` now and returns how much. With nothing to take (or
    /// empty `bufs`), it only pushes out bytes a layer holds and says `WouldBlock`.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(tcp) => tcp.try_write_vectored(bufs),
            Transport::Tls(tls) => tls.try_write_vectored(bufs),
            Transport::Ws(ws) => ws.try_write_vectored(bufs),
        }
    }

    /// Whether a layer holds bytes not yet on the socket (accepted plaintext, a pong).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(tls) => tls.wants_write(),
            Transport::Ws(ws) => ws.wants_write(),
        }
    }

    /// Ends the stream politely (WebSocket close frame, TLS close_notify, then FIN),
    /// giving the peer at most a second. The layered ones are boxed: their state would
    /// otherwise be part of every connection's future.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Transport::Tcp(tcp) => tcp.shutdown().await,
            Transport::Tls(tls) => Box::pin(tls.shutdown()).await,
            Transport::Ws(ws) => Box::pin(ws.shutdown()).await,
        }
    }

    /// The client's verified certificate, on TLS listeners that asked for one.
    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(tls) => tls.peer_certificate(),
            Transport::Ws(ws) => ws.peer_certificate(),
        }
    }

    /// Whether the listener replaces the CONNECT username with the certificate's CN.
    pub fn identity_as_username(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(tls) => tls.identity_as_username(),
            Transport::Ws(ws) => ws.identity_as_username(),
        }
    }
}

/// The stream under WebSocket framing: TCP or TLS.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.socket(),
        }
    }

    fn buffered_input(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => tls.buffered_input(),
        }
    }

    async fn readable(&self) -> io::Result<()> {
        if self.buffered_input() {
            return Ok(());
        }
        self.socket().readable().await
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_read_buf(buf),
            Stream::Tls(tls) => tls.try_read_buf(buf),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        self.socket().writable().await
    }

    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(tcp) => tcp.try_write_vectored(bufs),
            Stream::Tls(tls) => tls.try_write_vectored(bufs),
        }
    }

    fn wants_write(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            Stream::Tls(tls) => tls.wants_write(),
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(tcp) => tcp.shutdown().await,
            Stream::Tls(tls) => tls.shutdown().await,
        }
    }

    fn tls(&self) -> Option<&TlsStream> {
        match self {
            Stream::Tcp(_) => None,
            Stream::Tls(tls) => Some(tls),
        }
    }

    /// Writes all of `data` (the upgrade's HTTP response), then what layers hold.
    async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() || self.wants_write() {
            self.writable().await?;
            match self.try_write_vectored(&[IoSlice::new(data)]) {
                Ok(0) if !data.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// `std::io` reads and writes on a non-blocking socket, for rustls's `read_tls` and
/// `write_tls`: they never wait, and `WouldBlock` clears tokio's readiness as it should.
pub(crate) struct TryIo<'a>(pub(crate) &'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns an accepted socket into a transport for `kind`: the TLS handshake, then the
/// WebSocket upgrade, as the listener needs, both within `limit` (`connect_timeout`).
/// `None` when the peer was refused or too slow; that was logged and counted.
pub async fn accept(
    kind: &ListenerKind,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<TlsAcceptor>>,
    counters: &Counters,
    limit: Duration,
) -> Option<Transport> {
    let deadline = Instant::now() + limit;
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        None => Stream::Tcp(tcp),
        Some(acceptor) => match timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                counters.handshake(Handshake::TlsCompleted);
                Stream::Tls(Box::new(tls))
            }
            Ok(Err(err)) => {
                counters.handshake(Handshake::TlsFailed);
                info!(%peer, "closing connection: TLS handshake failed: {err}");
                return None;
            }
            Err(_) => {
                counters.handshake(Handshake::TlsFailed);
                info!(%peer, "closing connection: TLS handshake not complete within {limit:?}");
                return None;
            }
        },
    };
    let path = match kind {
        ListenerKind::Ws(path) | ListenerKind::Wss(path) => path,
        ListenerKind::Tcp | ListenerKind::Tls => {
            return Some(match stream {
                Stream::Tcp(tcp) => Transport::Tcp(tcp),
                Stream::Tls(tls) => Transport::Tls(tls),
            })
        }
    };
    match timeout_at(deadline, ws::upgrade(stream, path)).await {
        Ok(Ok(ws)) => {
            counters.handshake(Handshake::WsCompleted);
            Some(Transport::Ws(Box::new(ws)))
        }
        Ok(Err(err)) => {
            counters.handshake(Handshake::WsFailed);
            info!(%peer, "closing connection: WebSocket upgrade refused: {err}");
            None
        }
        Err(_) => {
            counters.handshake(Handshake::WsFailed);
            info!(%peer, "closing connection: no WebSocket upgrade within {limit:?}");
            None
        }
    }
}

/// A TLS listener's acceptor: reloading swaps the one every new handshake uses, and
/// connections already up keep theirs.
pub type SharedAcceptor = Arc<parking_lot::RwLock<Arc<TlsAcceptor>>>;
