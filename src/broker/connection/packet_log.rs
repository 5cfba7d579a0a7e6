//! Per-packet log lines at DEBUG on the `pyo3mq::packets` target (Python logger
//! `pyo3mq.packets`), as Mosquitto's `log_type all` shows them: each packet received
//! and sent, with the client id, packet id, topic, QoS and flags.
//!
//! A connection asks once, when it starts, whether they are enabled
//! ([`packets_enabled`]); with logging at INFO or above each packet then costs one
//! branch on a bool, and nothing is formatted.

use std::fmt;

use crate::broker::session::Queued;
use crate::codec::{Auth, DisconnectV5, Packet, QoS, SubAckV5, UnsubAckV5};

/// Whether per-packet lines are wanted (the log level is DEBUG or TRACE).
pub(super) fn packets_enabled() -> bool {
    tracing::enabled!(target: "pyo3mq::packets", tracing::Level::DEBUG)
}

/// A packet as one log line shows it: `PUBLISH (d0, q1, r0, m12, 'a/b', 5 bytes)`.
pub(super) struct Summary<'a>(pub(super) &'a Packet);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0.name();
        match self.0 {
            Packet::Connect(c) => {
                write!(
                    f,
                    "{name} (p{}, c{}, k{}",
                    c.protocol.level(),
                    u8::from(c.clean_session),
                    c.keep_alive
                )?;
                if let Some(user) = &c.username {
                    write!(f, ", u'{user}'")?;
                }
                if let Some(will) = &c.will {
                    write!(
                        f,
                        ", will q{} r{} '{}'",
                        will.qos as u8,
                        u8::from(will.retain),
                        will.topic
                    )?;
                }
                f.write_str(")")
            }
            Packet::ConnAck(a) => write!(
                f,
                "{name} ({}, {})",
                u8::from(a.session_present),
                a.code as u8
            ),
            Packet::Publish(p) => {
                publish(f, &p.topic, p.qos, p.retain, p.dup, p.pkid, p.payload.len())
            }
            Packet::PubAck(id)
            | Packet::PubRec(id)
            | Packet::PubRel(id)
            | Packet::PubComp(id)
            | Packet::UnsubAck(id) => write!(f, "{name} (m{id})"),
            Packet::Subscribe(s) => {
                write!(f, "{name} (m{}", s.pkid)?;
                for (filter, qos) in &s.filters {
                    write!(f, ", '{filter}' q{}", *qos as u8)?;
                }
                f.write_str(")")
            }
            Packet::SubAck(s) => {
                write!(f, "{name} (m{}", s.pkid)?;
                for code in &s.codes {
                    write!(f, ", {}", code.to_u8())?;
                }
                f.write_str(")")
            }
            Packet::Unsubscribe(u) => {
                write!(f, "{name} (m{}", u.pkid)?;
                for filter in &u.filters {
                    write!(f, ", '{filter}'")?;
                }
                f.write_str(")")
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => f.write_str(name),
            // MQTT 5.0 forms: the reason code in hex, as the spec's tables list them.
            Packet::ConnAckV5(a) => write!(
                f,
                "{name} ({}, 0x{:02x})",
                u8::from(a.session_present),
                a.reason.0
            ),
            Packet::PubAckV5(a)
            | Packet::PubRecV5(a)
            | Packet::PubRelV5(a)
            | Packet::PubCompV5(a) => write!(f, "{name} (m{}, 0x{:02x})", a.pkid, a.reason.0),
            Packet::SubscribeV5(s) => {
                write!(f, "{name} (m{}", s.pkid)?;
                for (filter, options) in &s.filters {
                    write!(f, ", '{filter}' q{}", options.qos as u8)?;
                }
                f.write_str(")")
            }
            Packet::SubAckV5(SubAckV5 { pkid, reasons, .. })
            | Packet::UnsubAckV5(UnsubAckV5 { pkid, reasons, .. }) => {
                write!(f, "{name} (m{pkid}")?;
                for code in reasons {
                    write!(f, ", 0x{:02x}", code.0)?;
                }
                f.write_str(")")
            }
            Packet::UnsubscribeV5(u) => {
                write!(f, "{name} (m{}", u.pkid)?;
                for filter in &u.filters {
                    write!(f, ", '{filter}'")?;
                }
                f.write_str(")")
            }
            Packet::DisconnectV5(DisconnectV5 { reason, .. })
            | Packet::Auth(Auth { reason, .. }) => {
                write!(f, "{name} (0x{:02x})", reason.0)
            }
        }
    }
}

/// A PUBLISH the broker sends from a session queue.
pub(super) struct Outgoing<'a> {
    pub(super) item: &'a Queued,
    pub(super) pkid: Option<u16>,
    pub(super) dup: bool,
}

impl fmt::Display for Outgoing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = &self.item.msg;
        publish(
            f,
            &msg.topic,
            self.item.qos,
            self.item.retain,
            self.dup,
            self.pkid,
            msg.payload.len(),
        )
    }
}

fn publish(
    f: &mut fmt::Formatter<'_>,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    len: usize,
) -> fmt::Result {
    write!(
        f,
        "PUBLISH (d{}, q{}, r{}, m{}, '{topic}', {len} bytes)",
        u8::from(dup),
        qos as u8,
        u8::from(retain),
        pkid.unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Publish, SubAck, Subscribe, SubscribeReturnCode};
    use bytes::Bytes;
    use bytestring::ByteString;

    #[test]
    fn lines_name_the_packet_id_topic_and_qos() {
        let publish = Packet::Publish(Publish {
            properties: None,
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: ByteString::from("a/b"),
            pkid: Some(12),
            payload: Bytes::from_static(b"hello"),
        });
        assert_eq!(
            Summary(&publish).to_string(),
            "PUBLISH (d0, q1, r1, m12, 'a/b', 5 bytes)"
        );
        let subscribe = Packet::Subscribe(Subscribe {
            pkid: 3,
            filters: vec![(ByteString::from("s/#"), QoS::ExactlyOnce)],
        });
        assert_eq!(Summary(&subscribe).to_string(), "SUBSCRIBE (m3, 's/#' q2)");
        let suback = Packet::SubAck(SubAck {
            pkid: 3,
            codes: vec![
                SubscribeReturnCode::Success(QoS::AtLeastOnce),
                SubscribeReturnCode::Failure,
            ],
        });
        assert_eq!(Summary(&suback).to_string(), "SUBACK (m3, 1, 128)");
        assert_eq!(Summary(&Packet::PubAck(7)).to_string(), "PUBACK (m7)");
        assert_eq!(Summary(&Packet::PingReq).to_string(), "PINGREQ");
    }
}
