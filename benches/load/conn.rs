//! One generator connection: the MQTT handshake, then an event loop that publishes
//! (saturated or paced), answers the QoS 1/2 flows in both directions and checks every
//! delivery (loss, duplicates, order per publisher, payload integrity, latency).
//!
//! Each connection is one task owning its socket; it waits on read and write readiness
//! and never blocks on one direction while the other has work, so neither the broker nor
//! the generator can deadlock on full socket buffers.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use bytestring::ByteString;
use pyo3mq::codec::{
    self, AckV5, Connect, ConnectReturnCode, Decoder, Packet, Protocol, QoS, Subscribe,
    SubscribeReturnCode, SubscribeV5, SubscriptionOptions,
};
use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::timeout;

use crate::stats::Histogram;
use crate::transport::Stream;

/// Bytes of payload header: magic u32, publisher u32, sequence u32, send time u64 (ns).
pub const HEADER: usize = 20;

/// The payload bytes after the header for a `size`-byte payload.
pub fn filler(size: usize) -> Vec<u8> {
    (0..size.saturating_sub(HEADER))
        .map(|i| (i % 251) as u8)
        .collect()
}
const READ_CHUNK: usize = 64 * 1024;
const MAX_PACKET: usize = 1 << 20;

/// What every connection of a run shares.
pub struct Shared {
    pub epoch: Instant,
    /// Identifies this run's payloads (a late delivery from another run is "foreign").
    pub magic: u32,
    pub qos: QoS,
    /// MQTT 3.1.1 or 5.0 (`--protocol`): how PUBLISH is encoded and decoded.
    pub protocol: Protocol,
    pub size: usize,
    /// Payload bytes after the header, the same in every message: checked on receipt.
    pub filler: Vec<u8>,
    pub max_inflight: usize,
    /// Most bytes of PUBLISH packets encoded per write.
    pub batch_bytes: usize,
    /// Start of publishing, ns since `epoch` (set just before the go signal).
    pub t0_ns: AtomicU64,
    /// Packets handled and messages encoded, all connections: the stall detector's input.
    pub progress: AtomicU64,
}

impl Shared {
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// The publishing half of a client.
pub struct Pub {
    pub index: u32,
    pub topic: String,
    pub count: u32,
    /// Messages per second for this publisher; 0 = as fast as the broker takes them.
    pub rate: f64,
    /// Offset of this publisher's schedule, so paced publishers do not fire together.
    pub phase_ns: u64,
    next_seq: u32,
    completed: u32,
    inflight: usize,
    next_pkid: u16,
    /// QoS 1/2 window: `--max-inflight`, lowered to the broker's Receive Maximum when a
    /// 5.0 CONNACK gives one (a 5.0 client must not exceed it, [MQTT-3.3.4-7]).
    window: usize,
    /// Per packet id: 0 free, 1 awaiting PUBACK/PUBREC, 2 awaiting PUBCOMP.
    stage: Vec<u8>,
    bad_acks: u64,
    done_ns: Option<u64>,
}

impl Pub {
    pub fn new(index: u32, topic: String, count: u32, rate: f64, phase_ns: u64) -> Pub {
        Pub {
            index,
            topic,
            count,
            rate,
            phase_ns,
            next_seq: 0,
            completed: 0,
            inflight: 0,
            next_pkid: 1,
            window: usize::MAX,
            stage: vec![0; 65_536],
            bad_acks: 0,
            done_ns: None,
        }
    }

    /// Lowers the window to what the broker accepts (its CONNACK's Receive Maximum).
    pub fn limit_window(&mut self, receive_maximum: Option<u16>) {
        if let Some(max) = receive_maximum {
            self.window = usize::from(max);
        }
    }

    /// Messages due by `now` under pacing (all of them when not paced).
    fn due(&self, t0: u64, now: u64) -> u32 {
        if self.rate <= 0.0 {
            return self.count;
        }
        let start = t0 + self.phase_ns;
        if now < start {
            return 0;
        }
        let due = ((now - start) as f64 * self.rate / 1e9) as u64 + 1;
        due.min(u64::from(self.count)) as u32
    }

    /// When the next paced message is due (ns since epoch), if one is still to be sent.
    fn next_due_ns(&self, t0: u64) -> Option<u64> {
        if self.rate <= 0.0 || self.next_seq >= self.count {
            return None;
        }
        Some(t0 + self.phase_ns + (f64::from(self.next_seq) * 1e9 / self.rate) as u64)
    }

    /// Whether a message may be encoded now (due, and a window slot free for QoS 1/2).
    fn can_send(&self, shared: &Shared, now: u64) -> bool {
        self.next_seq < self.due(shared.t0_ns.load(Ordering::Relaxed), now)
            && (shared.qos == QoS::AtMostOnce || self.inflight < self.window(shared))
    }

    fn window(&self, shared: &Shared) -> usize {
        shared.max_inflight.min(self.window)
    }

    fn alloc_pkid(&mut self) -> u16 {
        // The window is far smaller than the id space: this finds a free id quickly.
        loop {
            let id = self.next_pkid;
            self.next_pkid = if id == u16::MAX { 1 } else { id + 1 };
            if self.stage[usize::from(id)] == 0 {
                return id;
            }
        }
    }

    /// Encodes the messages that may go now into `out`; returns how many.
    fn fill(&mut self, out: &mut BytesMut, shared: &Shared, now: u64) -> u64 {
        let t0 = shared.t0_ns.load(Ordering::Relaxed);
        let due = self.due(t0, now);
        let qos = shared.qos;
        let window = self.window(shared);
        let mut n = 0;
        while self.next_seq < due && out.len() < shared.batch_bytes {
            let pkid = if qos == QoS::AtMostOnce {
                None
            } else {
                if self.inflight >= window {
                    break;
                }
                let id = self.alloc_pkid();
                self.stage[usize::from(id)] = 1;
                self.inflight += 1;
                Some(id)
            };
            if shared.protocol == Protocol::V5 {
                // An empty property section: the 5.0 PUBLISH closest to 3.1.1's.
                codec::encode_publish_header_v5(
                    out,
                    &self.topic,
                    qos,
                    false,
                    false,
                    pkid,
                    &[],
                    &[],
                    shared.size,
                )
            } else {
                codec::encode_publish_header(out, &self.topic, qos, false, false, pkid, shared.size)
            }
            .expect("PUBLISH header");
            out.put_u32(shared.magic);
            out.put_u32(self.index);
            out.put_u32(self.next_seq);
            out.put_u64(now);
            out.put_slice(&shared.filler);
            self.next_seq += 1;
            n += 1;
        }
        n
    }

    fn finish_one(&mut self, pkid: u16, shared: &Shared) {
        self.stage[usize::from(pkid)] = 0;
        self.inflight -= 1;
        self.completed += 1;
        if self.completed == self.count {
            self.done_ns = Some(shared.now_ns());
        }
    }

    /// A 5.0 acknowledgement in its long form: a reason code of 0x80 or more ends the
    /// flow without delivery (3.4.2.1), so it counts as a bad ack; below 0x80 (Success,
    /// or 0x10 No matching subscribers, which the loss check then shows) it is an ack.
    fn on_ack_v5(&mut self, kind: u8, ack: &AckV5, shared: &Shared) -> bool {
        if ack.reason.is_error() {
            self.bad_acks += 1;
            return false;
        }
        match kind {
            0x40 => self.on_puback(ack.pkid, shared),
            0x50 => self.on_pubrec(ack.pkid),
            _ => self.on_pubcomp(ack.pkid, shared),
        }
        true
    }

    fn on_puback(&mut self, pkid: u16, shared: &Shared) {
        if shared.qos == QoS::AtLeastOnce && self.stage[usize::from(pkid)] == 1 {
            self.finish_one(pkid, shared);
        } else {
            self.bad_acks += 1;
        }
    }

    /// The caller answers every PUBREC with PUBREL, so the broker can finish its flow.
    fn on_pubrec(&mut self, pkid: u16) {
        match self.stage[usize::from(pkid)] {
            1 => self.stage[usize::from(pkid)] = 2,
            2 => {} // a repeated PUBREC: answer PUBREL again
            _ => self.bad_acks += 1,
        }
    }

    fn on_pubcomp(&mut self, pkid: u16, shared: &Shared) {
        if self.stage[usize::from(pkid)] == 2 {
            self.finish_one(pkid, shared);
        } else {
            self.bad_acks += 1;
        }
    }

    /// Every message sent (QoS 0) or acknowledged through its whole flow (QoS 1/2).
    fn done(&self, qos: QoS) -> bool {
        if qos == QoS::AtMostOnce {
            self.next_seq == self.count
        } else {
            self.completed == self.count
        }
    }
}

/// Deliveries seen from one publisher.
struct Track {
    bits: Vec<u64>,
    max_seen: Option<u32>,
}

/// The subscribing half of a client: checks and counts what arrives.
pub struct Sub {
    expected: u64,
    count: u32,
    tracks: Vec<Track>,
    /// The topic each publisher publishes on: a delivery on another topic is corrupt.
    topics: Vec<Vec<u8>>,
    pub delivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub corrupt: u64,
    pub foreign: u64,
    pub hist: Histogram,
    pub first_ns: Option<u64>,
    pub last_ns: u64,
}

impl Sub {
    pub fn new(topics: Vec<Vec<u8>>, count: u32) -> Sub {
        let pubs = topics.len();
        let words = (count as usize).div_ceil(64);
        Sub {
            expected: pubs as u64 * u64::from(count),
            count,
            topics,
            tracks: (0..pubs)
                .map(|_| Track {
                    bits: vec![0; words],
                    max_seen: None,
                })
                .collect(),
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            corrupt: 0,
            foreign: 0,
            hist: Histogram::default(),
            first_ns: None,
            last_ns: 0,
        }
    }

    pub fn expected(&self) -> u64 {
        self.expected
    }

    fn record(&mut self, topic: &[u8], payload: &[u8], shared: &Shared, now: u64) {
        if payload.len() != shared.size || payload.len() < HEADER {
            self.corrupt += 1;
            return;
        }
        let word = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        if word(0) != shared.magic {
            self.foreign += 1;
            return;
        }
        let (index, seq) = (word(4) as usize, word(8));
        let sent = u64::from_be_bytes(payload[12..20].try_into().unwrap());
        let filler_ok = payload[HEADER..] == shared.filler[..];
        if index >= self.tracks.len()
            || seq >= self.count
            || !filler_ok
            || self.topics[index] != topic
        {
            self.corrupt += 1;
            return;
        }
        let track = &mut self.tracks[index];
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if track.bits[w] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        track.bits[w] |= bit;
        match track.max_seen {
            Some(max) if seq < max => self.out_of_order += 1,
            _ => track.max_seen = Some(seq),
        }
        self.delivered += 1;
        self.hist.record(now.saturating_sub(sent));
        self.first_ns.get_or_insert(now);
        self.last_ns = now;
    }

    fn done(&self) -> bool {
        self.delivered >= self.expected
    }
}

/// What a connection reports when its run ends.
pub struct ConnResult {
    pub published: u64,
    pub completed: u64,
    pub pub_done_ns: Option<u64>,
    pub bad_acks: u64,
    pub sub: Option<Sub>,
    pub error: Option<String>,
}

/// Outcome of the fast path for the packet at the front of the read buffer.
enum Fast {
    Done,
    NeedMore,
    Other,
}

pub struct Conn {
    /// TCP, TLS, WebSocket or both (`--transport`).
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    protocol: Protocol,
    /// The broker's Receive Maximum from a 5.0 CONNACK (none: 65,535).
    pub receive_maximum: Option<u16>,
}

fn io_err(what: &str, err: io::Error) -> String {
    format!("{what}: {err}")
}

impl Conn {
    /// Connect (with the TLS handshake and WebSocket upgrade the transport needs),
    /// CONNECT (clean session) and CONNACK, within `limit`.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        limit: Duration,
        protocol: Protocol,
    ) -> Result<Conn, String> {
        Conn::connect_from(addr, None, client_id, keep_alive, limit, protocol).await
    }

    /// As [`Conn::connect`], from local address `source` (see `Stream::connect_from`).
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        client_id: &str,
        keep_alive: u16,
        limit: Duration,
        protocol: Protocol,
    ) -> Result<Conn, String> {
        let handshake = async {
            let stream = Stream::connect_from(addr, source).await?;
            let mut conn = Conn {
                stream,
                rbuf: BytesMut::new(),
                wbuf: BytesMut::new(),
                decoder: Decoder::new(MAX_PACKET),
                protocol,
                receive_maximum: None,
            };
            // A 5.0 CONNECT has an empty property section (`properties: None`); every
            // packet after it is in the 5.0 forms, in both directions.
            conn.decoder.set_protocol(protocol);
            conn.send(&Packet::Connect(Box::new(Connect {
                protocol,
                clean_session: true,
                keep_alive,
                client_id: ByteString::from(client_id),
                will: None,
                username: None,
                password: None,
                properties: None,
            })))
            .await?;
            match conn.read_packet().await? {
                Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Accepted => Ok(conn),
                Packet::ConnAck(ack) => Err(format!("CONNACK refused: {:?}", ack.code)),
                Packet::ConnAckV5(ack) if !ack.reason.is_error() => {
                    conn.receive_maximum = ack.properties.and_then(|p| p.receive_maximum);
                    Ok(conn)
                }
                Packet::ConnAckV5(ack) => Err(format!("CONNACK refused: {:?}", ack.reason)),
                other => Err(format!("expected CONNACK, got {}", other.name())),
            }
        };
        timeout(limit, handshake)
            .await
            .map_err(|_| format!("no CONNACK within {limit:?}"))?
    }

    /// SUBSCRIBE one filter and wait for its SUBACK; returns the granted QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<QoS, String> {
        let exchange = async {
            let subscribe = if self.protocol == Protocol::V5 {
                // Default options (no local off, retain handling 0) and no properties.
                Packet::SubscribeV5(SubscribeV5 {
                    pkid: 1,
                    filters: vec![(
                        ByteString::from(filter),
                        SubscriptionOptions {
                            qos,
                            ..SubscriptionOptions::default()
                        },
                    )],
                    properties: None,
                })
            } else {
                Packet::Subscribe(Subscribe {
                    pkid: 1,
                    filters: vec![(ByteString::from(filter), qos)],
                })
            };
            self.send(&subscribe).await?;
            match self.read_packet().await? {
                Packet::SubAck(ack) => match ack.codes.first() {
                    Some(SubscribeReturnCode::Success(granted)) => Ok(*granted),
                    _ => Err(format!("subscription to {filter} refused")),
                },
                // 5.0: the reason code is the granted QoS (0x00-0x02) or an error.
                Packet::SubAckV5(ack) => match ack.reasons.first().map(|r| r.0) {
                    Some(code) => QoS::from_u8(code)
                        .ok_or_else(|| format!("subscription to {filter} refused: {code:#04x}")),
                    None => Err(format!("empty SUBACK for {filter}")),
                },
                other => Err(format!("expected SUBACK, got {}", other.name())),
            }
        };
        timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "no SUBACK within 5 s".to_string())?
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = BytesMut::new();
        packet.encode(&mut out).map_err(|e| e.to_string())?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| io_err("write", e))
    }

    async fn read_packet(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(packet) = self
                .decoder
                .decode(&mut self.rbuf)
                .map_err(|e| e.to_string())?
            {
                return Ok(packet);
            }
            self.rbuf.reserve(4096);
            let n = self
                .stream
                .read_some(&mut self.rbuf)
                .await
                .map_err(|e| io_err("read", e))?;
            if n == 0 {
                return Err("connection closed by the broker".into());
            }
        }
    }

    /// DISCONNECT and close, best effort.
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        if Packet::Disconnect.encode(&mut out).is_ok() {
            let _ = timeout(Duration::from_millis(200), self.stream.write_all(&out)).await;
        }
        let _ = timeout(Duration::from_millis(200), self.stream.shutdown()).await;
    }

    /// Reads what the socket has and handles every complete packet.
    fn on_readable(
        &mut self,
        publisher: &mut Option<Pub>,
        subscriber: &mut Option<Sub>,
        shared: &Shared,
    ) -> Result<(), String> {
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => return Err("connection closed by the broker".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(io_err("read", e)),
        }
        let now = shared.now_ns();
        let mut events = 0;
        loop {
            match self.fast_one(publisher, subscriber, shared, now)? {
                Fast::Done => events += 1,
                Fast::NeedMore => break,
                Fast::Other => match self
                    .decoder
                    .decode(&mut self.rbuf)
                    .map_err(|e| format!("malformed packet from the broker: {e}"))?
                {
                    Some(packet) => {
                        events += 1;
                        self.handle(packet, publisher, subscriber, shared, now)?;
                    }
                    None => break,
                },
            }
        }
        shared.progress.fetch_add(events, Ordering::Relaxed);
        Ok(())
    }

    /// The hot path, without copies or allocation: handles the packet at the front of the
    /// read buffer if it is a well-formed PUBLISH (DUP 0, RETAIN 0) or PUBACK, PUBREC,
    /// PUBREL or PUBCOMP. Anything else, including anything malformed, is left to the
    /// codec (`Fast::Other`), which decodes it fully and names the rule it breaks.
    fn fast_one(
        &mut self,
        publisher: &mut Option<Pub>,
        subscriber: &mut Option<Sub>,
        shared: &Shared,
        now: u64,
    ) -> Result<Fast, String> {
        let buf = &self.rbuf[..];
        let Some(&first) = buf.first() else {
            return Ok(Fast::NeedMore);
        };
        let mut remaining = 0usize;
        let mut at = 1;
        loop {
            let Some(&byte) = buf.get(at) else {
                return Ok(Fast::NeedMore);
            };
            remaining |= usize::from(byte & 0x7F) << (7 * (at - 1));
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if at > 4 {
                return Ok(Fast::Other);
            }
        }
        let total = at + remaining;
        if total > MAX_PACKET {
            return Ok(Fast::Other);
        }
        if buf.len() < total {
            self.rbuf.reserve(total - buf.len());
            return Ok(Fast::NeedMore);
        }
        let body = &buf[at..total];
        let id_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        match (first, publisher.as_mut(), subscriber.as_mut()) {
            (0x30 | 0x32 | 0x34, _, Some(sub)) => {
                let qos = (first >> 1) & 3;
                let id_len = if qos > 0 { 2 } else { 0 };
                if body.len() < 2 || body.len() < 2 + usize::from(id_at(0)) + id_len {
                    return Ok(Fast::Other);
                }
                let topic_end = 2 + usize::from(id_at(0));
                let pkid = if qos > 0 { id_at(topic_end) } else { 1 };
                if pkid == 0 {
                    return Ok(Fast::Other);
                }
                let mut payload_at = topic_end + id_len;
                if self.protocol == Protocol::V5 {
                    // The fast path takes only an empty property section (one 0 byte);
                    // properties, or a Topic Alias with an empty topic, go to the codec.
                    if body.get(payload_at) != Some(&0) || topic_end == 2 {
                        return Ok(Fast::Other);
                    }
                    payload_at += 1;
                }
                sub.record(&body[2..topic_end], &body[payload_at..], shared, now);
                if qos > 0 {
                    let ack = if qos == 1 { 0x40 } else { 0x50 };
                    self.wbuf.put_slice(&[ack, 2]);
                    self.wbuf.put_u16(pkid);
                }
            }
            (0x62, _, Some(_)) if remaining == 2 && id_at(0) != 0 => {
                let pkid = id_at(0);
                self.wbuf.put_slice(&[0x70, 2]);
                self.wbuf.put_u16(pkid);
            }
            (0x40 | 0x50 | 0x70, Some(p), _) if remaining == 2 && id_at(0) != 0 => {
                let pkid = id_at(0);
                match first {
                    0x40 => p.on_puback(pkid, shared),
                    0x50 => {
                        p.on_pubrec(pkid);
                        self.wbuf.put_slice(&[0x62, 2]);
                        self.wbuf.put_u16(pkid);
                    }
                    _ => p.on_pubcomp(pkid, shared),
                }
            }
            _ => return Ok(Fast::Other),
        }
        self.rbuf.advance(total);
        Ok(Fast::Done)
    }

    fn handle(
        &mut self,
        packet: Packet,
        publisher: &mut Option<Pub>,
        subscriber: &mut Option<Sub>,
        shared: &Shared,
        now: u64,
    ) -> Result<(), String> {
        let ack = |out: &mut BytesMut, p: Packet| p.encode(out).map_err(|e| e.to_string());
        match (packet, publisher.as_mut(), subscriber.as_mut()) {
            (Packet::Publish(p), _, Some(sub)) => {
                if p.retain {
                    // [MQTT-3.3.1-9]: forwarded to an existing subscription with RETAIN 0.
                    return Err("PUBLISH delivered with RETAIN set".into());
                }
                sub.record(p.topic.as_bytes(), &p.payload, shared, now);
                match (p.qos, p.pkid) {
                    (QoS::AtLeastOnce, Some(id)) => ack(&mut self.wbuf, Packet::PubAck(id))?,
                    (QoS::ExactlyOnce, Some(id)) => ack(&mut self.wbuf, Packet::PubRec(id))?,
                    _ => {}
                }
            }
            (Packet::PubRel(id), _, Some(_)) => ack(&mut self.wbuf, Packet::PubComp(id))?,
            (Packet::PubAck(id), Some(p), _) => p.on_puback(id, shared),
            (Packet::PubRec(id), Some(p), _) => {
                p.on_pubrec(id);
                ack(&mut self.wbuf, Packet::PubRel(id))?;
            }
            (Packet::PubComp(id), Some(p), _) => p.on_pubcomp(id, shared),
            (Packet::PubAckV5(a), Some(p), _) => {
                p.on_ack_v5(0x40, &a, shared);
            }
            (Packet::PubRecV5(a), Some(p), _) => {
                // After an error PUBREC the flow is over: no PUBREL (4.3.3).
                if p.on_ack_v5(0x50, &a, shared) {
                    ack(&mut self.wbuf, Packet::PubRel(a.pkid))?;
                }
            }
            (Packet::PubCompV5(a), Some(p), _) => {
                p.on_ack_v5(0x70, &a, shared);
            }
            (Packet::PubRelV5(a), _, Some(_)) => ack(&mut self.wbuf, Packet::PubComp(a.pkid))?,
            (Packet::DisconnectV5(d), _, _) => {
                return Err(format!("DISCONNECT from the broker: {:?}", d.reason))
            }
            (Packet::PingResp, _, _) => {}
            (other, _, _) => return Err(format!("unexpected {} from the broker", other.name())),
        }
        Ok(())
    }

    /// Runs the connection from the go signal until its work is done or the run aborts.
    /// Returns the connection (still open) with its report.
    pub async fn run(
        mut self,
        mut publisher: Option<Pub>,
        mut subscriber: Option<Sub>,
        shared: Arc<Shared>,
        mut go: watch::Receiver<bool>,
        mut abort: watch::Receiver<bool>,
    ) -> (Conn, ConnResult) {
        let error = loop {
            if *go.borrow_and_update() {
                break None;
            }
            tokio::select! {
                r = go.changed() => if r.is_err() { break Some("run cancelled".to_string()) },
                _ = abort.changed() => break Some("run aborted before start".to_string()),
            }
        };
        let error = match error {
            Some(e) => Some(e),
            None => self
                .event_loop(&mut publisher, &mut subscriber, &shared, &mut abort)
                .await
                .err(),
        };
        let result = ConnResult {
            published: publisher.as_ref().map_or(0, |p| u64::from(p.next_seq)),
            completed: publisher.as_ref().map_or(0, |p| u64::from(p.completed)),
            pub_done_ns: publisher.as_ref().and_then(|p| p.done_ns),
            bad_acks: publisher.as_ref().map_or(0, |p| p.bad_acks),
            sub: subscriber,
            error,
        };
        (self, result)
    }

    async fn event_loop(
        &mut self,
        publisher: &mut Option<Pub>,
        subscriber: &mut Option<Sub>,
        shared: &Shared,
        abort: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let qos = shared.qos;
        let far = Duration::from_secs(3600);
        loop {
            let now = shared.now_ns();
            // A publisher encodes its next batch only once the previous one is written,
            // so at most one batch waits on the client side.
            if self.wbuf.is_empty() {
                if let Some(p) = publisher.as_mut() {
                    let n = p.fill(&mut self.wbuf, shared, now);
                    if n > 0 {
                        shared.progress.fetch_add(n, Ordering::Relaxed);
                    }
                    if qos == QoS::AtMostOnce && p.done(qos) && p.done_ns.is_none() && n == 0 {
                        p.done_ns = Some(now);
                    }
                }
            }
            if !self.wbuf.is_empty() {
                match self.stream.try_write(&self.wbuf) {
                    Ok(n) => self.wbuf.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io_err("write", e)),
                }
            } else if self.stream.wants_write() {
                self.stream
                    .flush_pending()
                    .map_err(|e| io_err("write", e))?;
            }
            let pub_done = publisher.as_ref().is_none_or(|p| p.done(qos));
            let sub_done = subscriber.as_ref().is_none_or(Sub::done);
            let idle = self.wbuf.is_empty() && !self.stream.wants_write();
            if pub_done && sub_done && idle {
                if let Some(p) = publisher.as_mut() {
                    p.done_ns.get_or_insert(now);
                }
                return Ok(());
            }
            // Writable interest also when the publisher can encode more: the socket is
            // usually writable at once, and waiting on it keeps the task cooperative.
            let more = publisher.as_ref().is_some_and(|p| p.can_send(shared, now));
            let interest = if idle && !more {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            // A paced publisher with nothing pending sleeps until its next message is due.
            let wake = if self.wbuf.is_empty() {
                // (Already due but the window is full: acks wake it, not the timer.)
                publisher
                    .as_ref()
                    .and_then(|p| p.next_due_ns(shared.t0_ns.load(Ordering::Relaxed)))
                    .filter(|&due| due > now)
            } else {
                None
            };
            let deadline =
                tokio::time::Instant::from_std(wake.map_or(Instant::now() + far, |ns| {
                    shared.epoch + Duration::from_nanos(ns)
                }));
            tokio::select! {
                biased;
                _ = abort.changed() => return Err("aborted".into()),
                ready = self.stream.ready(interest) => {
                    let ready = ready.map_err(|e| io_err("poll", e))?;
                    if ready.is_readable() || ready.is_read_closed() {
                        self.on_readable(publisher, subscriber, shared)?;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if wake.is_some() => {}
            }
        }
    }
}
