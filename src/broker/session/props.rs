//! A message's MQTT 5.0 properties as the broker keeps them: encoded once, shared by
//! every 5.0 subscriber, plus when its Message Expiry Interval runs out.
//!
//! The deadline lives here rather than in [`Message`](super::Message) because only a
//! message with properties can have one: a 3.1.1 message (`properties: None`) pays
//! nothing for it, and a 5.0 message without an expiry pays one `None` check per
//! delivery, never a clock read.

use std::num::NonZeroU32;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Properties, PropertyContext};

/// Property identifier of the Message Expiry Interval (a Four Byte Integer).
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
/// Property identifier of the Subscription Identifier (a Variable Byte Integer).
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// Encoded PUBLISH (or will) properties without their length prefix
/// (`codec::Properties::to_bytes`), and their Message Expiry Interval's deadline.
///
/// One pointer wide: a [`Message`](super::Message) carries an `Option` of it, and every
/// message pays for that field whether it has properties or not (most have none). Kept
/// inline (64 bytes) it made each message's `Arc` allocation 184 bytes, above glibc's
/// fast-bin sizes; such a block freed by the subscriber's worker takes the publishing
/// worker's arena lock, and in fan-in the two workers then contend on it for every
/// message (benches/README.md, "Session 9").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageProperties(Arc<Inner>);

#[derive(Debug, PartialEq, Eq)]
struct Inner {
    bytes: Bytes,
    expiry: Option<Expiry>,
}

/// When a message expires, and where the four bytes of its interval are in the encoded
/// properties (rewritten with the remaining interval on each delivery, [MQTT-3.3.2-6]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub deadline: Instant,
    /// Offset of the interval's value (after its identifier byte) in the properties.
    pub offset: usize,
}

impl MessageProperties {
    /// Properties received now: a Message Expiry Interval among them starts counting
    /// from this call. An interval of 0 is kept as sent and never expires the message
    /// (as Mosquitto reads it: 0 is no lifetime limit, not "already expired").
    pub fn new(bytes: Bytes) -> MessageProperties {
        let expiry = find_expiry(&bytes).and_then(|(offset, secs)| {
            (secs > 0).then(|| Expiry {
                deadline: Instant::now() + Duration::from_secs(u64::from(secs)),
                offset,
            })
        });
        MessageProperties::of(bytes, expiry)
    }

    /// A message's properties from a decoded set (a bridged PUBLISH's, a will's): what
    /// belongs to one connection or to the will alone (Topic Alias, Subscription
    /// Identifiers, Will Delay Interval) is left out, and an empty set is no properties,
    /// as a PUBLISH without any. A Message Expiry Interval counts from now.
    pub fn from_publish(mut props: Properties) -> Option<MessageProperties> {
        props.topic_alias = None;
        props.subscription_identifiers.clear();
        props.will_delay_interval = None;
        if props.is_empty() {
            return None;
        }
        props
            .to_bytes(PropertyContext::Publish)
            .ok()
            .map(MessageProperties::new)
    }

    /// Properties loaded from a session store: their Message Expiry Interval (if any)
    /// runs out at `expires_at` (milliseconds since the Unix epoch, as
    /// [`MessageProperties::expires_at`] gave it when they were saved), so the countdown
    /// goes on across a restart; a deadline already past leaves the message expired.
    /// Without `expires_at` (an interval of 0, or none) nothing expires.
    pub fn restored(bytes: Bytes, expires_at: Option<u64>) -> MessageProperties {
        let expiry = match (find_expiry(&bytes), expires_at) {
            (Some((offset, _)), Some(at)) => Some(Expiry {
                deadline: instant_of(at),
                offset,
            }),
            _ => None,
        };
        MessageProperties::of(bytes, expiry)
    }

    /// When the Message Expiry Interval runs out, in milliseconds since the Unix epoch
    /// (what a session store keeps: an `Instant` means nothing to the next process).
    fn of(bytes: Bytes, expiry: Option<Expiry>) -> MessageProperties {
        MessageProperties(Arc::new(Inner { bytes, expiry }))
    }

    pub fn expires_at(&self) -> Option<u64> {
        self.0.expiry.map(|e| unix_ms_of(e.deadline))
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    pub fn expiry(&self) -> Option<Expiry> {
        self.0.expiry
    }

    /// Whether the Message Expiry Interval has passed [MQTT-3.3.2-5]. Reads the clock
    /// only for a message that has one.
    pub fn expired(&self) -> bool {
        self.0.expiry.is_some_and(|e| Instant::now() >= e.deadline)
    }

    /// The same properties with this subscriber's Subscription Identifiers appended
    /// [MQTT-3.3.4-3] [MQTT-3.3.4-4], for one delivery; the deadline is kept (the
    /// interval's offset does not move, the identifiers go at the end).
    pub fn with_subscription_ids(this: Option<&Self>, ids: &[NonZeroU32]) -> MessageProperties {
        let base: &[u8] = this.map_or(&[], |p| &p.0.bytes);
        let mut out = BytesMut::with_capacity(base.len() + ids.len() * 5);
        out.put_slice(base);
        for id in ids {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_vbi(&mut out, id.get());
        }
        MessageProperties::of(out.freeze(), this.and_then(|p| p.0.expiry))
    }
}

/// The whole seconds left until `deadline`, rounded up (so a message not yet expired
/// is never sent with 0), and 0 once it has passed (a QoS 1/2 delivery resent after its
/// message expired: its onward delivery had started, so it is completed).
pub fn remaining_secs(deadline: Instant, now: Instant) -> u32 {
    let left = deadline.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// `deadline` on the wall clock, in milliseconds since the Unix epoch, rounded down: a
/// restored message never outlives its interval, so the remaining interval sent after a
/// restart (rounded up to whole seconds) is never more than it was.
fn unix_ms_of(deadline: Instant) -> u64 {
    let now = SystemTime::now();
    let instant_now = Instant::now();
    let wall = match deadline.checked_duration_since(instant_now) {
        Some(ahead) => now.checked_add(ahead),
        None => now.checked_sub(instant_now.duration_since(deadline)),
    };
    wall.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `Instant` of a wall-clock time in milliseconds since the Unix epoch (now, for a
/// time already past: the message is expired either way).
fn instant_of(unix_ms: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or(now + Duration::from_secs(u64::from(u32::MAX))),
        Err(_) => now,
    }
}

#[cfg(test)]
impl MessageProperties {
    /// These properties as if their interval ran out at `deadline` (tests).
    pub fn expiring_at(self, deadline: Instant) -> MessageProperties {
        let expiry = self.0.expiry.map(|e| Expiry { deadline, ..e });
        MessageProperties::of(self.0.bytes.clone(), expiry)
    }
}

impl From<Bytes> for MessageProperties {
    fn from(bytes: Bytes) -> MessageProperties {
        MessageProperties::new(bytes)
    }
}

impl Deref for MessageProperties {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0.bytes
    }
}

fn put_vbi(dst: &mut BytesMut, mut value: u32) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

/// Finds the Message Expiry Interval in encoded PUBLISH properties: (offset of its
/// value, seconds). The properties were checked when they were decoded, so this only
/// walks them; anything it does not understand ends the search (no expiry).
fn find_expiry(props: &[u8]) -> Option<(usize, u32)> {
    let mut i = 0;
    while i < props.len() {
        let id = props[i];
        i += 1;
        let len = match id {
            0x01 => 1,
            MESSAGE_EXPIRY_INTERVAL => {
                let value: [u8; 4] = props.get(i..i + 4)?.try_into().ok()?;
                return Some((i, u32::from_be_bytes(value)));
            }
            0x23 => 2,
            // UTF-8 string or binary data: a two-byte length, then the bytes.
            0x03 | 0x08 | 0x09 => 2 + two_byte_len(props, i)?,
            // User Property: two strings.
            0x26 => {
                let key = 2 + two_byte_len(props, i)?;
                key + 2 + two_byte_len(props, i + key)?
            }
            SUBSCRIPTION_IDENTIFIER => {
                let mut n = 1;
                while props.get(i + n - 1)? & 0x80 != 0 {
                    n += 1;
                }
                n
            }
            _ => return None,
        };
        i += len;
    }
    None
}

fn two_byte_len(props: &[u8], at: usize) -> Option<usize> {
    let b = props.get(at..at + 2)?;
    Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_publish_leaves_out_what_belongs_to_a_connection_or_a_will() {
        let message = Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        let received = Properties {
            topic_alias: Some(3),
            subscription_identifiers: vec![7],
            will_delay_interval: Some(30),
            ..message.clone()
        };
        let kept = MessageProperties::from_publish(received).expect("properties");
        assert_eq!(kept.bytes(), &encoded(&message));
        let none_kept = Properties {
            topic_alias: Some(1),
            will_delay_interval: Some(5),
            ..Properties::default()
        };
        assert!(MessageProperties::from_publish(none_kept).is_none());
    }

    fn encoded(p: &Properties) -> Bytes {
        p.to_bytes(PropertyContext::Publish).unwrap()
    }

    #[test]
    fn expiry_is_found_after_any_other_property() {
        let mut p = Properties {
            content_type: Some("text/plain".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(70),
            ..Properties::default()
        };
        let bytes = encoded(&p);
        let (offset, secs) = find_expiry(&bytes).unwrap();
        assert_eq!(secs, 70);
        assert_eq!(bytes[offset - 1], MESSAGE_EXPIRY_INTERVAL);
        let mp = MessageProperties::new(bytes);
        let e = mp.expiry().unwrap();
        assert!(!mp.expired());
        assert_eq!(remaining_secs(e.deadline, Instant::now()), 70);
        p.message_expiry_interval = None;
        assert!(MessageProperties::new(encoded(&p)).expiry().is_none());
        // 0: no limit, never expired.
        p.message_expiry_interval = Some(0);
        let zero = MessageProperties::new(encoded(&p));
        assert!(zero.expiry().is_none() && !zero.expired());
    }

    #[test]
    fn a_restored_deadline_keeps_counting() {
        let p = Properties {
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "0".into())],
            message_expiry_interval: Some(100),
            ..Properties::default()
        };
        let mp = MessageProperties::new(encoded(&p));
        let at = mp.expires_at().unwrap();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            (99_000..=100_000).contains(&(at - now_ms)),
            "{}",
            at - now_ms
        );
        // As if saved 40.5 s ago: 59.5 s are left, sent as 60.
        let back = MessageProperties::restored(mp.bytes().clone(), Some(at - 40_500));
        assert_eq!(back.bytes(), mp.bytes());
        assert_eq!(back.expiry().unwrap().offset, mp.expiry().unwrap().offset);
        let left = remaining_secs(back.expiry().unwrap().deadline, Instant::now());
        assert_eq!(left, 60);
        assert!(!back.expired());
        // Past its deadline: expired at once.
        let gone = MessageProperties::restored(mp.bytes().clone(), Some(now_ms - 1));
        assert!(gone.expired());
        // No stored deadline (an interval of 0, or none): never expires.
        assert!(MessageProperties::restored(mp.bytes().clone(), None)
            .expiry()
            .is_none());
    }

    #[test]
    fn remaining_rounds_up_and_stops_at_zero() {
        let now = Instant::now();
        let d = now + Duration::from_millis(1500);
        assert_eq!(remaining_secs(d, now), 2);
        assert_eq!(remaining_secs(d, now + Duration::from_millis(500)), 1);
        assert_eq!(remaining_secs(d, now + Duration::from_secs(3)), 0);
    }

    #[test]
    fn subscription_ids_are_appended_and_keep_the_deadline() {
        let p = Properties {
            message_expiry_interval: Some(5),
            ..Properties::default()
        };
        let mp = MessageProperties::new(encoded(&p));
        let ids = [
            NonZeroU32::new(1).unwrap(),
            NonZeroU32::new(268_435_455).unwrap(),
        ];
        let with = MessageProperties::with_subscription_ids(Some(&mp), &ids);
        assert_eq!(with.expiry(), mp.expiry());
        assert_eq!(&with[..5], &mp[..]);
        assert_eq!(&with[5..], b"\x0b\x01\x0b\xff\xff\xff\x7f");
        let alone = MessageProperties::with_subscription_ids(None, &ids[..1]);
        assert_eq!(&alone[..], b"\x0b\x01");
        assert!(alone.expiry().is_none());
    }
}
