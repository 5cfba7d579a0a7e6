//! MQTT 5.0 connection-level flow: Receive Maximum both ways (4.9), inbound Topic Aliases
//! (3.3.2.3.4), Server Keep Alive (3.2.2.3.14) and Request Problem Information
//! (3.1.2.11.7).
//!
//! The state lives in one boxed [`V5Flow`] that only 5.0 connections allocate, at
//! CONNECT: a 3.1/3.1.1 connection pays one empty pointer and a `None` check where a
//! packet is sent.

use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::broker::router::Session;
use crate::codec::{Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode};

use super::topic_alias::InboundAliases;
use super::{Close, Connection};

/// A 5.0 connection's own flow state.
#[derive(Debug)]
pub(super) struct V5Flow {
    /// The Receive Maximum the CONNACK announced: more unacknowledged QoS 1/2 PUBLISHes
    /// from the client than this is DISCONNECT 0x93.
    receive_maximum: u16,
    /// The aliases the client set on this connection [MQTT-3.3.2-7].
    aliases: InboundAliases,
    /// Request Problem Information: false forbids Reason String and User Property on
    /// everything but PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    problem_info: bool,
}

impl Connection {
    /// Sets up a 5.0 connection's flow state from its CONNECT (before the CONNACK).
    pub(super) fn start_v5_flow(&mut self, connect: &Connect) {
        let config = self.router.config();
        let props = connect.properties.as_deref();
        self.v5_flow = Some(Box::new(V5Flow {
            receive_maximum: u16::try_from(config.receive_maximum).unwrap_or(u16::MAX),
            aliases: InboundAliases::new(
                u16::try_from(config.topic_alias_maximum).unwrap_or(u16::MAX),
            ),
            // Absent means 1 (3.1.2.11.7).
            problem_info: props
                .and_then(|p| p.request_problem_information)
                .unwrap_or(true),
        }));
    }

    /// The window of unacknowledged QoS 1/2 deliveries to this client: `max_inflight`, or
    /// the 5.0 client's Receive Maximum if smaller [MQTT-3.3.4-9], [MQTT-4.9.0-1]. Set on
    /// every connect, so a session resumed by a client of another revision (or with
    /// another Receive Maximum) gets the right one.
    pub(super) fn apply_receive_maximum(&self, connect: &Connect, session: &Session) {
        let configured = self.router.config().max_inflight;
        let client = match connect.protocol {
            Protocol::V5 => connect
                .properties
                .as_deref()
                .and_then(|p| p.receive_maximum)
                .map_or(configured, usize::from),
            _ => configured,
        };
        session
            .state
            .lock()
            .set_max_inflight(configured.min(client));
    }

    /// The Keep Alive in force for a 5.0 client, and the Server Keep Alive to announce
    /// when it is not the client's own [MQTT-3.2.2-22]: a client asking for more than
    /// `max_keepalive`, or for none while `max_keepalive` sets a limit, is given
    /// `max_keepalive`.
    pub(super) fn keep_alive_v5(&self, connect: &Connect) -> (u16, Option<u16>) {
        let max = u16::try_from(self.router.config().max_keepalive).unwrap_or(u16::MAX);
        keep_alive_within(connect.keep_alive, max)
    }

    /// The CONNACK properties of this module's features.
    pub(super) fn connack_flow_properties(&self, connect: &Connect, props: &mut Properties) {
        let config = self.router.config();
        // 65,535 is what an absent Receive Maximum means (3.2.2.3.3).
        props.receive_maximum = u16::try_from(config.receive_maximum)
            .ok()
            .filter(|&m| m != u16::MAX);
        // Absent means 0, no aliases (3.2.2.3.8).
        props.topic_alias_maximum = u16::try_from(config.topic_alias_maximum)
            .ok()
            .filter(|&m| m != 0);
        props.server_keep_alive = self.keep_alive_v5(connect).1;
        if let Some(server) = props.server_keep_alive {
            info!(client_id = %self.client_id, asked = connect.keep_alive,
                "[MQTT-3.2.2-22] Keep Alive not within max_keepalive: CONNACK sets Server Keep Alive {server} s");
        }
    }

    /// What a 5.0 PUBLISH needs before it is handled like any other: the Receive Maximum
    /// check [MQTT-3.3.4-9]'s counterpart for the client (DISCONNECT 0x93), and its Topic
    /// Alias resolved into its topic and taken out of the properties that are forwarded
    /// (an alias means nothing to another connection).
    pub(super) fn inbound_publish_v5(
        &mut self,
        publish: &mut Publish,
        session: &Arc<Session>,
    ) -> Result<(), Close> {
        let Some(flow) = self.v5_flow.as_deref_mut() else {
            return Ok(());
        };
        if let (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(pkid)) = (publish.qos, publish.pkid) {
            let maximum = usize::from(flow.receive_maximum);
            if session
                .state
                .lock()
                .inbound_over(publish.qos, pkid, maximum)
            {
                return Err(self.close_v5(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    &format!(
                        "(MQTT 5.0 3.3.4, 4.9) more than the Receive Maximum of {maximum} \
                         QoS 1/2 PUBLISHes unacknowledged"
                    ),
                ));
            }
        }
        let Some(props) = publish.properties.as_deref_mut() else {
            return Ok(());
        };
        let Some(alias) = props.topic_alias.take() else {
            return Ok(());
        };
        match flow.aliases.resolve(&publish.topic, alias) {
            Ok(topic) => publish.topic = topic,
            Err(err) => return Err(self.close_v5(err.reason, &err.why)),
        }
        if props.is_empty() {
            publish.properties = None;
        }
        Ok(())
    }

    /// `packet` as this client may receive it: without Reason String and User
    /// Properties when it asked for no problem information [MQTT-3.1.2-29] (see
    /// [`strip_problem_info`]). `None` when it goes out as it is, always for 3.1/3.1.1.
    /// Inline: it runs for every packet the broker sends (a PUBREL per QoS 2 delivery),
    /// and for 3.1/3.1.1 it is one pointer test.
    #[inline]
    pub(super) fn without_problem_info(&self, packet: &Packet) -> Option<Packet> {
        match self.v5_flow.as_deref() {
            Some(flow) if !flow.problem_info => strip_problem_info(packet),
            _ => None,
        }
    }
}

/// The Keep Alive in force for a client asking for `asked` seconds under a limit of
/// `max`, and the Server Keep Alive that says so when it differs.
fn keep_alive_within(asked: u16, max: u16) -> (u16, Option<u16>) {
    if asked > max || (asked == 0 && max < u16::MAX) {
        (max, Some(max))
    } else {
        (asked, None)
    }
}

/// `packet` without Reason String and User Properties, if it is not a PUBLISH, CONNACK
/// or DISCONNECT (the packets [MQTT-3.1.2-29] leaves them on) and carries either; `None`
/// when there is nothing to take out. The broker puts neither on its acknowledgements
/// today: this keeps a client that asked for none from getting them if it ever does
/// (an authentication hook's AUTH, say).
fn strip_problem_info(packet: &Packet) -> Option<Packet> {
    let props = match packet {
        Packet::PubAckV5(a) | Packet::PubRecV5(a) | Packet::PubRelV5(a) | Packet::PubCompV5(a) => {
            a.properties.as_deref()
        }
        Packet::SubAckV5(a) => a.properties.as_deref(),
        Packet::UnsubAckV5(a) => a.properties.as_deref(),
        Packet::Auth(a) => a.properties.as_deref(),
        _ => None,
    }?;
    if props.reason_string.is_none() && props.user_properties.is_empty() {
        return None;
    }
    let mut stripped = packet.clone();
    let slot = match &mut stripped {
        Packet::PubAckV5(a) | Packet::PubRecV5(a) | Packet::PubRelV5(a) | Packet::PubCompV5(a) => {
            &mut a.properties
        }
        Packet::SubAckV5(a) => &mut a.properties,
        Packet::UnsubAckV5(a) => &mut a.properties,
        Packet::Auth(a) => &mut a.properties,
        _ => return None,
    };
    let props = slot.as_deref_mut()?;
    props.reason_string = None;
    props.user_properties.clear();
    if props.is_empty() {
        *slot = None;
    }
    Some(stripped)
}

/// How long a will waits after its connection closed: its Will Delay Interval, cut short
/// by the session's expiry [MQTT-3.1.2-8]. `None`: published at once (no delay, or a
/// session that ends with the connection).
pub(super) fn will_wait(connect: &Connect, session_expiry: Option<Duration>) -> Option<Duration> {
    let delay = connect
        .will
        .as_ref()?
        .properties
        .as_deref()?
        .will_delay_interval
        .filter(|&d| d > 0)?;
    let expiry = session_expiry?;
    if expiry.is_zero() {
        return None;
    }
    Some(Duration::from_secs(u64::from(delay)).min(expiry))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::codec::{AckV5, LastWill, SubAckV5};

    #[test]
    fn keep_alive_is_held_to_the_maximum() {
        assert_eq!(keep_alive_within(30, u16::MAX), (30, None));
        assert_eq!(keep_alive_within(0, u16::MAX), (0, None));
        assert_eq!(keep_alive_within(30, 30), (30, None));
        assert_eq!(keep_alive_within(31, 30), (30, Some(30)));
        // No keep alive at all is more than any limit.
        assert_eq!(keep_alive_within(0, 30), (30, Some(30)));
    }

    fn with_problem_info() -> Option<Box<Properties>> {
        Some(Box::new(Properties {
            reason_string: Some("why".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        }))
    }

    #[test]
    fn problem_info_is_stripped_from_acknowledgements_only() {
        let ack = Packet::PubAckV5(AckV5 {
            pkid: 1,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: with_problem_info(),
        });
        assert_eq!(
            strip_problem_info(&ack),
            Some(Packet::PubAckV5(AckV5 {
                pkid: 1,
                reason: ReasonCode::NOT_AUTHORIZED,
                properties: None,
            }))
        );
        let suback = Packet::SubAckV5(SubAckV5 {
            pkid: 2,
            reasons: vec![ReasonCode::NOT_AUTHORIZED],
            properties: with_problem_info(),
        });
        let Some(Packet::SubAckV5(stripped)) = strip_problem_info(&suback) else {
            panic!("SUBACK not stripped");
        };
        assert_eq!(stripped.properties, None);
        // Nothing to take out: sent as it is.
        assert_eq!(strip_problem_info(&Packet::PubAck(3)), None);
        // CONNACK and DISCONNECT keep theirs [MQTT-3.1.2-29].
        let disconnect = Packet::DisconnectV5(crate::codec::DisconnectV5 {
            reason: ReasonCode::PROTOCOL_ERROR,
            properties: with_problem_info(),
        });
        assert_eq!(strip_problem_info(&disconnect), None);
    }

    fn connect_with_will(delay: Option<u32>) -> Connect {
        Connect {
            protocol: Protocol::V5,
            clean_session: true,
            keep_alive: 30,
            client_id: "c".into(),
            will: Some(LastWill {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: delay.map(|d| {
                    Box::new(Properties {
                        will_delay_interval: Some(d),
                        ..Properties::default()
                    })
                }),
            }),
            username: None,
            password: None,
            properties: None,
        }
    }

    #[test]
    fn will_waits_for_the_delay_or_the_session_end() {
        let minute = Some(Duration::from_secs(60));
        assert_eq!(
            will_wait(&connect_with_will(Some(5)), minute),
            Some(Duration::from_secs(5))
        );
        // The session ends first: the will goes with it [MQTT-3.1.2-8].
        assert_eq!(
            will_wait(&connect_with_will(Some(300)), minute),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            will_wait(&connect_with_will(Some(5)), Some(Duration::MAX)),
            Some(Duration::from_secs(5))
        );
        // Published at once: no delay, a delay of 0, a session that ends with the
        // connection, or a 3.1.1 session.
        assert_eq!(will_wait(&connect_with_will(None), minute), None);
        assert_eq!(will_wait(&connect_with_will(Some(0)), minute), None);
        assert_eq!(
            will_wait(&connect_with_will(Some(5)), Some(Duration::ZERO)),
            None
        );
        assert_eq!(will_wait(&connect_with_will(Some(5)), None), None);
    }
}
