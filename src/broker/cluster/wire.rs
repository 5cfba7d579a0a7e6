//! What one message looks like on NATS, between nodes: the same on core NATS (QoS 0),
//! in the stream of QoS 1/2 messages and in the retained stream.
//!
//! - One header, `Pyo3mq-Meta`, with `ORIGIN:SEQ:QOS:RETAIN` (origin in hex): the node
//!   that published it, its per-node sequence (the de-duplication key, and the message
//!   id JetStream stores it under), the QoS and the RETAIN flag the publisher used.
//! - A message with MQTT 5.0 properties adds `:PLEN:EXPIRES` to that header and puts its
//!   encoded property block (exactly `Message::properties`, the bytes every 5.0
//!   subscriber is sent, user properties in their order) before the payload: the body is
//!   `PLEN` bytes of properties, then the payload. `EXPIRES` is when its Message Expiry
//!   Interval runs out, in milliseconds since the Unix epoch, empty without one: the
//!   receiving node sends the interval still remaining [MQTT-3.3.2-6] and drops the
//!   message once it passed [MQTT-3.3.2-5], also when the message waited in a stream
//!   (a node reading it hours later, a node that mirrors the retained stream at start).
//!   It relies on the nodes' clocks agreeing (NTP): a skew of S seconds moves the expiry
//!   by S, as for a session store moved between machines.
//!
//! A 3.1.1 message (no properties) is sent as before properties existed: no extra header
//! field, no extra byte in the body; its receivers see no properties (a 5.0 subscriber
//! gets a PUBLISH without any, as on one node). A 5.0 message reaches a 3.1/3.1.1
//! subscriber on another node without its properties, the spec's mapping, because the
//! rebuilt message is the router's ordinary one.
//!
//! The body prefix rather than a header: property blocks are binary (correlation data),
//! which a NATS header cannot hold without an encoding that grows them by a third and
//! costs a pass on each side; slicing the body is free on the receiving side.
//!
//! What comes from NATS is input: anyone allowed on the subjects can publish there. A
//! header that does not parse, a length beyond the body, or a property block the codec
//! refuses (the checks of a PUBLISH from a client, plus no Subscription Identifier or
//! Topic Alias, which only a hop to one client may carry) is a [`WireError`]: the
//! caller counts it (`pyo3mq_cluster_malformed_total`), logs the first of a run, and
//! drops the message.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use bytes::{BufMut, Bytes, BytesMut};

use tracing::warn;

use crate::broker::session::{Message, MessageProperties};
use crate::codec::{Properties, PropertyContext, QoS};

/// The header carrying `ORIGIN:SEQ:QOS:RETAIN[:PLEN:EXPIRES]`.
pub(super) const META: &str = "Pyo3mq-Meta";

/// Why a message from NATS was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum WireError {
    #[error("no {META} header (not sent by a pyo3mq node)")]
    Missing,
    #[error("malformed {META} header {0:?}")]
    Header(String),
    #[error("{META} announces {len} bytes of properties but the body has {body}")]
    Short { len: usize, body: usize },
    #[error("malformed MQTT 5.0 properties: {0}")]
    Properties(String),
}

/// A message as it came from NATS, its properties not yet checked.
#[derive(Debug)]
pub(super) struct Wire {
    pub(super) origin: u64,
    pub(super) seq: u64,
    pub(super) qos: QoS,
    /// The RETAIN flag the publisher used: what a subscription with Retain As Published
    /// is sent [MQTT-3.3.1-12] (the router clears it for the others [MQTT-3.3.1-9]).
    pub(super) retain: bool,
    /// The encoded property block and its expiry (Unix ms), if the message has one.
    properties: Option<(Bytes, Option<u64>)>,
    payload: Bytes,
}

/// The header and body that carry `msg` (from `node`, its `seq`-th message) on NATS. A
/// message without properties is its payload as is (shared, not copied).
pub(super) fn encode(node: u64, seq: u64, msg: &Message) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let base = format!(
        "{node:016x}:{seq}:{}:{}",
        msg.qos as u8,
        u8::from(msg.retain)
    );
    let Some(props) = &msg.properties else {
        headers.insert(META, base);
        return (headers, msg.payload.clone());
    };
    let expires = props
        .expires_at()
        .map(|ms| ms.to_string())
        .unwrap_or_default();
    headers.insert(META, format!("{base}:{}:{expires}", props.len()));
    let mut body = BytesMut::with_capacity(props.len() + msg.payload.len());
    body.put_slice(props);
    body.put_slice(&msg.payload);
    (headers, body.freeze())
}

/// Reads the header and splits the body; the properties are checked by
/// [`Wire::message`], so a node skipping its own message never pays for that.
pub(super) fn decode(headers: Option<&HeaderMap>, body: Bytes) -> Result<Wire, WireError> {
    let value = headers
        .and_then(|h| h.get(META))
        .ok_or(WireError::Missing)?
        .as_str();
    let bad = || WireError::Header(value.chars().take(80).collect());
    let mut parts = value.split(':');
    let origin = u64::from_str_radix(parts.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
    let seq = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    let qos = match parts.next() {
        Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        _ => return Err(bad()),
    };
    let retain = match parts.next() {
        Some("0") => false,
        Some("1") => true,
        _ => return Err(bad()),
    };
    let (properties, payload) = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => (None, body),
        (Some(len), Some(expires), None) => {
            let len: usize = len.parse().map_err(|_| bad())?;
            let expires = match expires {
                "" => None,
                ms => Some(ms.parse::<u64>().map_err(|_| bad())?),
            };
            if len > body.len() {
                return Err(WireError::Short {
                    len,
                    body: body.len(),
                });
            }
            let mut payload = body;
            let props = payload.split_to(len);
            (Some((props, expires)), payload)
        }
        _ => return Err(bad()),
    };
    Ok(Wire {
        origin,
        seq,
        qos,
        retain,
        properties,
        payload,
    })
}

impl Wire {
    /// The router's message for `topic`, with `retain` on delivery, the properties
    /// checked as a client's would be and their expiry still counting.
    pub(super) fn message(
        self,
        topic: bytestring::ByteString,
        retain: bool,
    ) -> Result<Message, WireError> {
        let properties = match self.properties {
            None => None,
            Some((bytes, expires)) => {
                let checked = Properties::from_bytes(bytes.clone(), PropertyContext::Publish)
                    .map_err(|e| WireError::Properties(e.to_string()))?;
                if !checked.subscription_identifiers.is_empty() || checked.topic_alias.is_some() {
                    return Err(WireError::Properties(
                        "a Subscription Identifier or Topic Alias between nodes".into(),
                    ));
                }
                // An empty block is no properties, as a PUBLISH without any.
                (!bytes.is_empty()).then(|| MessageProperties::restored(bytes, expires))
            }
        };
        Ok(Message {
            topic,
            payload: self.payload,
            qos: self.qos,
            retain,
            publisher: bytestring::ByteString::new(),
            properties,
            mark: crate::broker::session::StreamMark::NONE,
        })
    }
}

impl super::Cluster {
    /// Counts a message from NATS dropped for `error`, logging the 1st, 2nd, 4th, 8th...
    /// (a misbehaving publisher on the subjects must not flood the log).
    pub(super) fn drop_malformed(&self, subject: &str, error: &WireError) {
        let n = self.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(%subject, dropped = n, "cluster: dropped a message from NATS: {error}");
        }
    }

    /// Messages from NATS dropped because they were malformed (see [`WireError`]).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytestring::ByteString;

    use super::*;
    use crate::broker::session::remaining_secs;

    fn message(properties: Option<MessageProperties>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos,
            retain,
            publisher: ByteString::from_static("pub"),
            properties,
            mark: crate::broker::session::StreamMark::NONE,
        }
    }

    fn v5_properties(expiry: Option<u32>) -> MessageProperties {
        let props = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: expiry,
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\xffid")),
            user_properties: vec![
                ("k".into(), "2".into()),
                ("a".into(), "1".into()),
                ("k".into(), "1".into()),
            ],
            ..Properties::default()
        };
        MessageProperties::new(props.to_bytes(PropertyContext::Publish).unwrap())
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(META, value);
        h
    }

    #[test]
    fn a_message_without_properties_is_sent_as_before() {
        let msg = message(None, QoS::ExactlyOnce, true);
        let (h, body) = encode(0xabc, 7, &msg);
        assert_eq!(h.get(META).unwrap().as_str(), "0000000000000abc:7:2:1");
        // The payload itself, shared: no copy, no extra byte.
        assert_eq!(body.as_ptr(), msg.payload.as_ptr());
        let wire = decode(Some(&h), body).unwrap();
        assert_eq!((wire.origin, wire.seq), (0xabc, 7));
        assert_eq!(wire.qos, QoS::ExactlyOnce);
        let back = wire.message(ByteString::from_static("a/b"), false).unwrap();
        assert_eq!(back.payload, msg.payload);
        assert!(back.properties.is_none() && !back.retain);
    }

    #[test]
    fn properties_round_trip_byte_for_byte_with_the_expiry_counting() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let props = v5_properties(Some(100));
            let msg = message(Some(props.clone()), qos, false);
            let (h, body) = encode(1, 2, &msg);
            assert_eq!(body.len(), props.len() + msg.payload.len());
            let back = decode(Some(&h), body)
                .unwrap()
                .message(ByteString::from_static("a/b"), false)
                .unwrap();
            assert_eq!(back.qos, qos);
            assert_eq!(back.payload, msg.payload);
            let got = back.properties.unwrap();
            // The block as published: user properties in their order.
            assert_eq!(got.bytes(), props.bytes());
            let decoded =
                Properties::from_bytes(got.bytes().clone(), PropertyContext::Publish).unwrap();
            assert_eq!(decoded.user_properties[0], ("k".into(), "2".into()));
            assert_eq!(decoded.user_properties[2], ("k".into(), "1".into()));
            // The deadline travels (to the millisecond), so the remaining interval is sent.
            let deadline = got.expiry().unwrap().deadline;
            let left = remaining_secs(deadline, Instant::now());
            assert!((99..=100).contains(&left), "{left}");
        }
        // Without an expiry: no deadline on the other side either.
        let msg = message(Some(v5_properties(None)), QoS::AtMostOnce, false);
        let (h, body) = encode(1, 3, &msg);
        assert!(h.get(META).unwrap().as_str().ends_with(':'));
        let back = decode(Some(&h), body)
            .unwrap()
            .message("t".into(), false)
            .unwrap();
        assert!(back.properties.unwrap().expiry().is_none());
    }

    #[test]
    fn an_expired_message_stays_expired_on_the_other_node() {
        let props = v5_properties(Some(10)).expiring_at(Instant::now() - Duration::from_secs(1));
        let msg = message(Some(props), QoS::AtLeastOnce, false);
        let (h, body) = encode(1, 2, &msg);
        let back = decode(Some(&h), body)
            .unwrap()
            .message("t".into(), false)
            .unwrap();
        assert!(back.properties.unwrap().expired());
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let body = Bytes::from_static(b"xyz");
        assert_eq!(decode(None, body.clone()).unwrap_err(), WireError::Missing);
        for value in [
            "",
            "zz:1:0:0",
            "1",
            "1:x:0:0",
            "1:1:3:0",
            "1:1:0:2",
            "1:1:0:0:",
            "1:1:0:0:x:",
            "1:1:0:0:1:x",
            "1:1:0:0:1::extra",
            "1:1:0",
            "\u{e9}:1:0:0",
        ] {
            assert!(
                matches!(
                    decode(Some(&headers(value)), body.clone()),
                    Err(WireError::Header(_))
                ),
                "{value:?}"
            );
        }
        assert_eq!(
            decode(Some(&headers("1:1:0:0:4:")), body.clone()).unwrap_err(),
            WireError::Short { len: 4, body: 3 }
        );
        // A property block the codec refuses: an unknown identifier, a truncated string,
        // a duplicated Payload Format Indicator, a Subscription Identifier.
        for block in [
            &b"\x7f"[..],
            b"\x03\x00\x05ab",
            b"\x01\x01\x01\x00",
            b"\x0b\x01",
        ] {
            let mut body = BytesMut::from(block);
            body.put_slice(b"payload");
            let h = headers(&format!("1:1:0:0:{}:", block.len()));
            let wire = decode(Some(&h), body.freeze()).unwrap();
            assert!(
                matches!(
                    wire.message("t".into(), false),
                    Err(WireError::Properties(_))
                ),
                "{block:?}"
            );
        }
        // Fuzz-like: every truncation of a valid body and header gives an answer.
        let msg = message(Some(v5_properties(Some(5))), QoS::AtLeastOnce, true);
        let (h, body) = encode(9, 9, &msg);
        for cut in 0..body.len() {
            if let Ok(wire) = decode(Some(&h), body.slice(..cut)) {
                let _ = wire.message("t".into(), false);
            }
        }
        let value = h.get(META).unwrap().as_str().to_string();
        for cut in 0..value.len() {
            let _ = decode(Some(&headers(&value[..cut])), body.clone());
        }
    }
}
