//! What a bridge that speaks MQTT 5.0 to the remote (`bridge_protocol_version =
//! "mqttv50"`) does differently: the `in` lines' subscription options, and a message's
//! properties carried across both ways. Nothing here runs for a 3.1/3.1.1 bridge.

use std::time::Instant;

use crate::broker::session::{remaining_secs, Message, MessageProperties};
use crate::codec::{Properties, PropertyContext, QoS, SubscriptionOptions};

/// The options of an `in` line's subscription on the remote. No Local: the remote does
/// not send back what the bridge published there, which is what keeps a `both` line from
/// looping without Mosquitto's private bridge bit. Retain As Published: a retained
/// message keeps its flag on the way in (Mosquitto's bridges do the same). A shared
/// subscription may not have No Local [MQTT-3.8.3-4].
pub(super) fn subscription(filter: String, qos: QoS) -> (String, SubscriptionOptions) {
    let options = SubscriptionOptions {
        qos,
        no_local: !filter.starts_with("$share/"),
        retain_as_published: true,
        ..SubscriptionOptions::default()
    };
    (filter, options)
}

/// A local message's properties for the remote PUBLISH, or `Err(())` if its Message
/// Expiry Interval ran out since it was queued (it is dropped, [MQTT-3.3.2-5]: sending
/// an interval of 0 would make it immortal on a remote that reads 0 as "no limit", as
/// Mosquitto does). The interval sent is what remains of it [MQTT-3.3.2-6]. `Ok(None)`
/// for a message without properties (a 3.1.1 publisher's).
pub(super) fn outgoing(msg: &Message) -> Result<Option<Properties>, ()> {
    let Some(stored) = &msg.properties else {
        return Ok(None);
    };
    let mut props = match Properties::from_bytes(stored.bytes().clone(), PropertyContext::Publish) {
        Ok(props) => props,
        // Checked when they came in: cannot happen; the payload still goes.
        Err(_) => return Ok(None),
    };
    if let Some(expiry) = stored.expiry() {
        match remaining_secs(expiry.deadline, Instant::now()) {
            0 => return Err(()),
            left => props.message_expiry_interval = Some(left),
        }
    }
    // Per connection, never forwarded (the connection resolved the publisher's alias and
    // identifiers are per subscriber; cleared in case a later change keeps them).
    props.topic_alias = None;
    props.subscription_identifiers.clear();
    Ok(Some(props))
}

/// The remote PUBLISH's properties for the local message: what the remote's publisher
/// set, for this broker's 5.0 subscribers (3.1.1 ones get none, as for any message). The
/// remote's Subscription Identifiers are its own (the bridge set none) and a Topic Alias
/// belongs to the connection: neither is kept. A Message Expiry Interval (what remained
/// on the remote) counts down again from now.
pub(super) fn incoming(props: Option<Box<Properties>>) -> Option<MessageProperties> {
    MessageProperties::from_publish(*props?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use bytestring::ByteString;

    use super::*;

    fn props() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(100),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "2".into()), ("k".into(), "1".into())],
            ..Properties::default()
        }
    }

    fn message(properties: Option<MessageProperties>) -> Message {
        Message {
            topic: ByteString::from_static("a"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            publisher: ByteString::new(),
            properties,
            mark: crate::broker::session::StreamMark::NONE,
        }
    }

    #[test]
    fn outgoing_properties_carry_everything_with_the_remaining_expiry() {
        let stored = MessageProperties::new(props().to_bytes(PropertyContext::Publish).unwrap())
            .expiring_at(Instant::now() + Duration::from_millis(40_500));
        let sent = outgoing(&message(Some(stored))).unwrap().unwrap();
        assert_eq!(sent.message_expiry_interval, Some(41));
        let expected = Properties {
            message_expiry_interval: Some(41),
            ..props()
        };
        assert_eq!(sent, expected);
        assert_eq!(outgoing(&message(None)), Ok(None));
    }

    #[test]
    fn an_expired_message_is_not_sent() {
        let stored = MessageProperties::new(props().to_bytes(PropertyContext::Publish).unwrap())
            .expiring_at(Instant::now() - Duration::from_secs(1));
        assert_eq!(outgoing(&message(Some(stored))), Err(()));
        // An interval of 0 is no limit: sent as it came.
        let zero = Properties {
            message_expiry_interval: Some(0),
            ..props()
        };
        let stored = MessageProperties::new(zero.to_bytes(PropertyContext::Publish).unwrap());
        let sent = outgoing(&message(Some(stored))).unwrap().unwrap();
        assert_eq!(sent.message_expiry_interval, Some(0));
    }

    #[test]
    fn incoming_properties_drop_the_connections_own() {
        let mut remote = props();
        remote.topic_alias = Some(3);
        remote.subscription_identifiers = vec![7];
        let local = incoming(Some(Box::new(remote))).unwrap();
        assert_eq!(
            Properties::from_bytes(local.bytes().clone(), PropertyContext::Publish).unwrap(),
            props()
        );
        // The expiry counts from now.
        let left = remaining_secs(local.expiry().unwrap().deadline, Instant::now());
        assert!((99..=100).contains(&left), "{left}");
        let only_alias = Properties {
            topic_alias: Some(1),
            ..Properties::default()
        };
        assert!(incoming(Some(Box::new(only_alias))).is_none());
        assert!(incoming(None).is_none());
    }

    #[test]
    fn no_local_except_on_shared_subscriptions() {
        let (_, o) = subscription("a/#".into(), QoS::ExactlyOnce);
        assert!(o.no_local && o.retain_as_published && o.qos == QoS::ExactlyOnce);
        let (_, o) = subscription("$share/g/a".into(), QoS::AtMostOnce);
        assert!(!o.no_local && o.retain_as_published);
    }
}
