//! MQTT over WebSocket (RFC 6455; MQTT 3.1.1 section 6), server side, over TCP or TLS.
//!
//! The HTTP upgrade request is read into a buffer of at most [`MAX_REQUEST`] bytes and
//! parsed by httparse. After it, frames are decoded as they arrive: a data frame's
//! payload is unmasked straight into the connection's read buffer, whatever its size and
//! however MQTT packets fall across frames [MQTT-6.0.0-2], so this layer holds only a
//! partial frame header or control frame between reads. Each write of the connection
//! goes out as one binary frame whose header is prepended with `writev`: payloads are
//! not copied.

use std::io::{self, IoSlice};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BytesMut};
use sha1::{Digest, Sha1};
use tokio::time::timeout;

use super::{PeerCertificate, Stream, MAX_READS_PER_CALL};

/// Largest upgrade request (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most headers in the upgrade request.
const MAX_HEADERS: usize = 32;
/// Read size once the socket has shown it has data.
const READ_CHUNK: usize = 16 * 1024;
/// Most iovecs handed to one `writev` besides the frame header.
const MAX_IOV: usize = 64;
/// RFC 6455 1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;

/// What a refused upgrade request gets.
struct Refusal {
    status: &'static str,
    extra_headers: &'static str,
    reason: String,
}

fn refusal(status: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        extra_headers: "",
        reason: reason.into(),
    }
}

/// An accepted upgrade: the response's accept key and subprotocol.
struct Accepted {
    key_hash: String,
    protocol: Option<&'static str>,
}

/// Reads and answers the HTTP upgrade request on `path`. The caller bounds the time.
pub async fn upgrade(mut inner: Stream, path: &str) -> Result<WsStream, String> {
    let mut buf = BytesMut::with_capacity(1024);
    let (consumed, accepted) = loop {
        match parse_request(&buf, path) {
            Ok(Some(done)) => break done,
            Ok(None) if buf.len() >= MAX_REQUEST => {
                let refused = refusal(
                    "431 Request Header Fields Too Large",
                    format!("upgrade request over {MAX_REQUEST} bytes"),
                );
                return Err(refuse(inner, refused).await);
            }
            Ok(None) => {}
            Err(refused) => return Err(refuse(inner, refused).await),
        }
        inner.readable().await.map_err(|e| e.to_string())?;
        buf.reserve(4096);
        match inner.try_read_buf(&mut buf) {
            Ok(0) => return Err("the peer closed before completing its upgrade request".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accepted.key_hash
    );
    if let Some(protocol) = accepted.protocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    response.push_str("\r\n");
    inner
        .write_all(response.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    buf.advance(consumed);
    // Frames that came right behind the request are decoded on the first read.
    let pending_input = !buf.is_empty();
    let raw = if pending_input { buf } else { BytesMut::new() };
    Ok(WsStream {
        inner,
        raw,
        pending_input,
        rx: Rx::Header,
        in_message: false,
        close_received: false,
        tx_header: [0; 10],
        tx_header_at: 0,
        tx_header_end: 0,
        tx_remaining: 0,
        control: Vec::new(),
        close_sent: false,
        close_code: CLOSE_NORMAL,
    })
}

/// Answers a refused upgrade with an HTTP error and closes; returns the reason to log.
async fn refuse(mut inner: Stream, refused: Refusal) -> String {
    let body = format!("{}\n", refused.reason);
    let response = format!(
        "HTTP/1.1 {}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n{}\r\n{body}",
        refused.status,
        body.len(),
        refused.extra_headers
    );
    if inner.write_all(response.as_bytes()).await.is_ok() {
        let _ = inner.shutdown().await;
    }
    format!("{} ({})", refused.reason, refused.status)
}

/// `Ok(None)`: the request is not complete yet.
fn parse_request(buf: &[u8], path: &str) -> Result<Option<(usize, Accepted)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refusal(
                "431 Request Header Fields Too Large",
                format!("upgrade request with over {MAX_HEADERS} headers"),
            ))
        }
        Err(e) => return Err(refusal("400 Bad Request", format!("malformed HTTP: {e}"))),
    };
    // Comma-separated tokens of every header named `name`.
    let tokens = |name: &str| -> Vec<String> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| {
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|t| !t.is_empty())
            .collect()
    };
    if request.method != Some("GET") {
        return Err(refusal(
            "405 Method Not Allowed",
            format!("HTTP {} instead of GET", request.method.unwrap_or("?")),
        ));
    }
    if request.version != Some(1) {
        return Err(refusal("400 Bad Request", "the upgrade needs HTTP/1.1"));
    }
    let target = request.path.unwrap_or("");
    let requested = target.split('?').next().unwrap_or("");
    if requested != path {
        return Err(refusal(
            "404 Not Found",
            format!("path {requested:?} (MQTT is served on {path:?})"),
        ));
    }
    let has = |name: &str, token: &str| tokens(name).iter().any(|t| t.eq_ignore_ascii_case(token));
    if !has("upgrade", "websocket") || !has("connection", "upgrade") {
        return Err(Refusal {
            status: "426 Upgrade Required",
            extra_headers: "Upgrade: websocket\r\n",
            reason: "an HTTP request without a WebSocket upgrade".into(),
        });
    }
    if tokens("sec-websocket-version") != ["13"] {
        return Err(Refusal {
            status: "426 Upgrade Required",
            extra_headers: "Sec-WebSocket-Version: 13\r\n",
            reason: "WebSocket version other than 13 [RFC 6455 4.2.1]".into(),
        });
    }
    let keys = tokens("sec-websocket-key");
    let key = match keys.as_slice() {
        [key]
            if base64::engine::general_purpose::STANDARD
                .decode(key)
                .is_ok_and(|k| k.len() == 16) =>
        {
            key
        }
        _ => {
            return Err(refusal(
                "400 Bad Request",
                "missing or invalid Sec-WebSocket-Key [RFC 6455 4.2.1]",
            ))
        }
    };
    // [MQTT-6.0.0-3]/[MQTT-6.0.0-4]: clients offer "mqtt" (MQTT 3.1 clients "mqttv3.1"),
    // and the server answers with the one it picked. A client offering none gets no
    // subprotocol, as Mosquitto does.
    let offered = tokens("sec-websocket-protocol");
    let protocol = if offered.is_empty() {
        None
    } else if offered.iter().any(|p| p == "mqtt") {
        Some("mqtt")
    } else if offered.iter().any(|p| p == "mqttv3.1") {
        Some("mqttv3.1")
    } else {
        return Err(refusal(
            "400 Bad Request",
            format!("[MQTT-6.0.0-3] subprotocols {offered:?} do not include \"mqtt\""),
        ));
    };
    let mut hash = Sha1::new();
    hash.update(key.as_bytes());
    hash.update(GUID.as_bytes());
    let key_hash = base64::engine::general_purpose::STANDARD.encode(hash.finalize());
    Ok(Some((consumed, Accepted { key_hash, protocol })))
}

/// Where the decoder is in the incoming frames.
enum Rx {
    Header,
    /// Inside a data frame's payload.
    Data {
        remaining: u64,
        mask: [u8; 4],
        /// Payload bytes already unmasked, modulo 4.
        phase: usize,
    },
}

/// A frame header, once complete.
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: [u8; 4],
    size: usize,
}

/// A peer's breach of RFC 6455 or MQTT's section 6: the close status and why.
fn violation(code: u16, reason: String) -> (u16, String) {
    (code, reason)
}

fn parse_header(raw: &[u8]) -> Result<Option<Header>, (u16, String)> {
    let [b0, b1, ..] = *raw else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(violation(
            CLOSE_PROTOCOL_ERROR,
            "RSV bits set with no extension negotiated [RFC 6455 5.2]".into(),
        ));
    }
    if b1 & 0x80 == 0 {
        return Err(violation(
            CLOSE_PROTOCOL_ERROR,
            "unmasked client frame [RFC 6455 5.1]".into(),
        ));
    }
    let (extra, len) = match b1 & 0x7f {
        126 => match raw.get(2..4) {
            Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match raw.get(2..10) {
            Some(b) => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(b);
                let len = u64::from_be_bytes(bytes);
                if len >> 63 != 0 {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "frame length with its top bit set [RFC 6455 5.2]".into(),
                    ));
                }
                (8, len)
            }
            None => return Ok(None),
        },
        n => (0, u64::from(n)),
    };
    let Some(mask) = raw.get(2 + extra..6 + extra) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        len,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        size: 6 + extra,
    }))
}

/// XORs `data` with `mask`, starting `phase` bytes into it.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = [
        mask[phase % 4],
        mask[(phase + 1) % 4],
        mask[(phase + 2) % 4],
        mask[(phase + 3) % 4],
    ];
    let word = u32::from_ne_bytes(m);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, m) in chunks.into_remainder().iter_mut().zip(m) {
        *b ^= m;
    }
}

/// A server frame header (servers do not mask) for a payload of `len`; returns its size.
fn frame_header(out: &mut [u8; 10], opcode: u8, len: u64) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    }
}

/// A WebSocket connection after its upgrade.
pub struct WsStream {
    inner: Stream,
    /// Received bytes not decoded yet: between reads, at most a partial frame header or
    /// control frame.
    raw: BytesMut,
    /// `raw` holds bytes that came behind the upgrade request.
    pending_input: bool,
    rx: Rx,
    /// A fragmented data message is open: continuation frames are due.
    in_message: bool,
    close_received: bool,
    /// The unwritten end of the current data frame's header.
    tx_header: [u8; 10],
    tx_header_at: u8,
    tx_header_end: u8,
    /// Payload bytes of the current data frame still to come from the caller's buffers
    /// (which still hold them: they were not reported written).
    tx_remaining: u64,
    /// A pong or a close frame, sent at the next frame boundary.
    control: Vec<u8>,
    close_sent: bool,
    /// The status our close frame carries.
    close_code: u16,
}

impl WsStream {
    pub(super) fn socket(&self) -> &tokio::net::TcpStream {
        self.inner.socket()
    }

    /// Bytes that came behind the upgrade request, or that TLS decrypted, wait.
    pub(super) fn buffered_input(&self) -> bool {
        self.pending_input || self.inner.buffered_input()
    }

    async fn readable(&self) -> io::Result<()> {
        if self.buffered_input() {
            return Ok(());
        }
        self.socket().readable().await
    }

    /// Appends the payload of the binary frames that have arrived to `buf`; `Ok(0)` once
    /// the peer sent a close frame (after what preceded it) or the stream ended.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        for _ in 0..MAX_READS_PER_CALL {
            self.pending_input = false;
            let n = self.decode(buf).map_err(|(code, reason)| {
                self.close_code = code;
                io::Error::new(io::ErrorKind::InvalidData, reason)
            })?;
            if n > 0 {
                self.release_raw();
                return Ok(n);
            }
            if self.close_received {
                return Ok(0);
            }
            self.raw.reserve(READ_CHUNK);
            match self.inner.try_read_buf(&mut self.raw) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => {
                    self.release_raw();
                    return Err(e);
                }
            }
        }
        self.release_raw();
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Idle connections hold no read buffer; a partial header keeps a small one.
    fn release_raw(&mut self) {
        if self.raw.is_empty() {
            self.raw = BytesMut::new();
        } else if self.raw.capacity() > 1024 && self.raw.len() <= 256 {
            self.raw = BytesMut::from(&self.raw[..]);
        }
    }

    /// Decodes every complete piece of `raw`: data payload into `out`, control frames
    /// answered. Returns the data bytes produced.
    fn decode(&mut self, out: &mut BytesMut) -> Result<usize, (u16, String)> {
        let mut produced = 0;
        while !self.close_received {
            match &mut self.rx {
                Rx::Data {
                    remaining,
                    mask,
                    phase,
                } => {
                    if *remaining == 0 {
                        self.rx = Rx::Header;
                        continue;
                    }
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.raw.len());
                    if take == 0 {
                        break;
                    }
                    let start = out.len();
                    out.extend_from_slice(&self.raw[..take]);
                    unmask(&mut out[start..], *mask, *phase);
                    *phase = (*phase + take) % 4;
                    *remaining -= take as u64;
                    self.raw.advance(take);
                    produced += take;
                }
                Rx::Header => {
                    let Some(header) = parse_header(&self.raw)? else {
                        break;
                    };
                    match header.opcode {
                        OP_BINARY | OP_CONTINUATION => {
                            if header.opcode == OP_BINARY && self.in_message {
                                return Err(violation(
                                    CLOSE_PROTOCOL_ERROR,
                                    "a new message inside a fragmented one [RFC 6455 5.4]".into(),
                                ));
                            }
                            if header.opcode == OP_CONTINUATION && !self.in_message {
                                return Err(violation(
                                    CLOSE_PROTOCOL_ERROR,
                                    "a continuation frame outside a message [RFC 6455 5.4]".into(),
                                ));
                            }
                            self.in_message = !header.fin;
                            self.raw.advance(header.size);
                            self.rx = Rx::Data {
                                remaining: header.len,
                                mask: header.mask,
                                phase: 0,
                            };
                        }
                        OP_TEXT => {
                            return Err(violation(
                                CLOSE_UNSUPPORTED_DATA,
                                "[MQTT-6.0.0-1] a text frame: MQTT packets travel in binary \
                                 frames"
                                    .into(),
                            ))
                        }
                        OP_CLOSE | OP_PING | OP_PONG => {
                            if !header.fin || header.len > 125 {
                                return Err(violation(
                                    CLOSE_PROTOCOL_ERROR,
                                    "a fragmented or over-long control frame [RFC 6455 5.5]".into(),
                                ));
                            }
                            let end = header.size + header.len as usize;
                            if self.raw.len() < end {
                                break;
                            }
                            let mut payload = self.raw[header.size..end].to_vec();
                            unmask(&mut payload, header.mask, 0);
                            self.raw.advance(end);
                            self.control_frame(header.opcode, &payload)?;
                        }
                        other => {
                            return Err(violation(
                                CLOSE_PROTOCOL_ERROR,
                                format!("unknown opcode 0x{other:x} [RFC 6455 5.2]"),
                            ))
                        }
                    }
                }
            }
        }
        if self.close_received {
            self.raw.clear();
        }
        Ok(produced)
    }

    fn control_frame(&mut self, opcode: u8, payload: &[u8]) -> Result<(), (u16, String)> {
        match opcode {
            // One answer waits at most: a peer pinging faster than it reads gets fewer
            // pongs, which RFC 6455 5.5.3 allows.
            OP_PING if self.control.is_empty() && !self.close_sent => {
                self.queue_control(OP_PONG, payload);
            }
            OP_CLOSE => {
                if payload.len() == 1 {
                    return Err(violation(
                        CLOSE_PROTOCOL_ERROR,
                        "a close frame with a 1-byte body [RFC 6455 5.5.1]".into(),
                    ));
                }
                self.close_received = true;
                if !self.close_sent {
                    // Echo the status (RFC 6455 5.5.1), dropping a pending pong.
                    self.control.clear();
                    self.queue_control(OP_CLOSE, payload.get(..2).unwrap_or(&[]));
                    self.close_sent = true;
                }
            }
            _ => {} // a pong, or a ping while an answer waits, needs none
        }
        Ok(())
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        let mut header = [0u8; 10];
        let size = frame_header(&mut header, opcode, payload.len() as u64);
        self.control.extend_from_slice(&header[..size]);
        self.control.extend_from_slice(payload);
    }

    /// Sends `bufs` as (the rest of) one binary frame; control frames go between frames.
    pub fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let would_block = || Err(io::ErrorKind::WouldBlock.into());
        if self.tx_header_at < self.tx_header_end {
            let pending = &self.tx_header[self.tx_header_at.into()..self.tx_header_end.into()];
            let n = self.inner.try_write_vectored(&[IoSlice::new(pending)])?;
            let at = usize::from(self.tx_header_at).saturating_add(n);
            self.tx_header_at = u8::try_from(at).unwrap_or(u8::MAX).min(self.tx_header_end);
            if self.tx_header_at < self.tx_header_end {
                return would_block();
            }
        }
        if self.tx_remaining > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            let mut left = self.tx_remaining;
            for buf in bufs.iter().take(MAX_IOV) {
                if left == 0 {
                    break;
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                iov[count] = IoSlice::new(&buf[..take]);
                count += 1;
                left -= take as u64;
            }
            if count == 0 {
                return would_block();
            }
            let n = self.inner.try_write_vectored(&iov[..count])?;
            self.tx_remaining -= n as u64;
            return if n == 0 { would_block() } else { Ok(n) };
        }
        if !self.control.is_empty() {
            let n = self
                .inner
                .try_write_vectored(&[IoSlice::new(&self.control)])?;
            self.control.drain(..n.min(self.control.len()));
            if !self.control.is_empty() {
                return would_block();
            }
        }
        let used = &bufs[..bufs.len().min(MAX_IOV)];
        let total: usize = used.iter().map(|b| b.len()).sum();
        if self.close_sent && total > 0 {
            // Nothing may follow our close frame (RFC 6455 5.5.1): the connection is
            // ending, and what it still writes is dropped.
            return Ok(total);
        }
        if total == 0 {
            // Nothing to frame: push out what the layer below holds.
            if self.inner.wants_write() {
                match self.inner.try_write_vectored(&[]) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                    _ => {}
                }
            }
            return would_block();
        }
        let mut header = [0u8; 10];
        let size = frame_header(&mut header, OP_BINARY, total as u64);
        let mut iov = [IoSlice::new(&[]); MAX_IOV + 1];
        iov[0] = IoSlice::new(&header[..size]);
        for (slot, buf) in iov[1..].iter_mut().zip(used) {
            *slot = IoSlice::new(buf);
        }
        let written = self.inner.try_write_vectored(&iov[..used.len() + 1])?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if written < size {
            self.tx_header = header;
            self.tx_header_at = written as u8;
            self.tx_header_end = size as u8;
            self.tx_remaining = total as u64;
            return would_block();
        }
        let payload = written - size;
        self.tx_remaining = (total - payload) as u64;
        if payload == 0 {
            would_block()
        } else {
            Ok(payload)
        }
    }

    pub fn wants_write(&self) -> bool {
        self.tx_header_at < self.tx_header_end
            || !self.control.is_empty()
            || self.inner.wants_write()
    }

    /// The closing handshake (RFC 6455 7.1): our close frame, then the peer's, for at most
    /// a second; then the stream below is shut down.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        let _ = timeout(Duration::from_secs(1), self.close_handshake()).await;
        self.inner.shutdown().await
    }

    async fn close_handshake(&mut self) -> io::Result<()> {
        if self.tx_remaining > 0 || self.tx_header_at < self.tx_header_end {
            // A frame is half sent: nothing valid can follow it.
            return Ok(());
        }
        if !self.close_sent {
            self.control.clear();
            let code = self.close_code.to_be_bytes();
            self.queue_control(OP_CLOSE, &code);
            self.close_sent = true;
        }
        while self.wants_write() {
            self.inner.writable().await?;
            match self.try_write_vectored(&[]) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        // The peer answers with its close frame; what it sends meanwhile is dropped.
        let mut sink = BytesMut::new();
        while !self.close_received {
            self.readable().await?;
            sink.clear();
            match self.try_read_buf(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn peer_certificate(&self) -> Option<&PeerCertificate> {
        self.inner.tls().and_then(|tls| tls.peer_certificate())
    }

    pub fn identity_as_username(&self) -> bool {
        self.inner
            .tls()
            .is_some_and(|tls| tls.identity_as_username())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut header = [0u8; 10];
        let size = frame_header(&mut header, opcode, payload.len() as u64);
        let mut out = header[..size].to_vec();
        if !fin {
            out[0] &= 0x7f;
        }
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask, 0);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn request_checks() {
        let ok = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                  Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n";
        let (n, accepted) = parse_request(ok.as_bytes(), "/mqtt")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(n, ok.len());
        // RFC 6455 1.3's example key and answer.
        assert_eq!(accepted.key_hash, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(accepted.protocol, Some("mqtt"));
        assert!(parse_request(&ok.as_bytes()[..40], "/mqtt")
            .ok()
            .unwrap()
            .is_none());
        // Each refusal: the good request with one part replaced, and the status it gets.
        for (part, bad, want) in [
            ("/mqtt", "/x", "404 Not Found"),
            ("Upgrade: websocket\r\n", "", "426 Upgrade Required"),
            ("Version: 13", "Version: 8", "426 Upgrade Required"),
            ("GET", "POST", "405 Method Not Allowed"),
            ("mqttv3.1, mqtt", "wamp", "400 Bad Request"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "abc", "400 Bad Request"),
        ] {
            let req = ok.replace(part, bad);
            let status = parse_request(req.as_bytes(), "/mqtt").err().unwrap().status;
            assert_eq!(status, want, "{part:?} -> {bad:?}");
        }
        let v31 = ok.replace("mqttv3.1, mqtt", "mqttv3.1");
        let accepted = parse_request(v31.as_bytes(), "/mqtt")
            .ok()
            .flatten()
            .unwrap()
            .1;
        assert_eq!(accepted.protocol, Some("mqttv3.1"));
    }

    #[test]
    fn headers_and_unmasking() {
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 70_000] {
            let frame = masked_frame(OP_BINARY, true, &payload[..len]);
            let header = parse_header(&frame).ok().flatten().unwrap();
            assert_eq!(header.len, len as u64);
            let mut body = frame[header.size..].to_vec();
            // Unmasking in two pieces equals unmasking at once.
            let cut = len / 3;
            let (a, b) = body.split_at_mut(cut);
            unmask(a, header.mask, 0);
            unmask(b, header.mask, cut);
            assert_eq!(body, &payload[..len]);
        }
        assert!(parse_header(&[0x82]).ok().unwrap().is_none());
        assert!(parse_header(&[0x82, 0x05]).is_err(), "unmasked");
        assert!(parse_header(&[0xc2, 0x85, 0, 0, 0, 0]).is_err(), "RSV1");
    }
}
