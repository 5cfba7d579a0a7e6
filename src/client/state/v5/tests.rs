use super::super::testing::*;
use super::*;
use crate::client::v5::ReauthError;
use crate::codec::{AckV5, Auth, ConnAckV5, Decoder, Protocol, SubAckV5};
use tokio::time::Instant;

fn v5_state(window: usize, opts: V5Options, connack: Option<Box<Properties>>) -> State {
    let mut st = state(window, true);
    st.enable_v5(&opts);
    st.on_connack_v5(ServerLimits::from_connack(ConnAckV5 {
        session_present: false,
        reason: ReasonCode::SUCCESS,
        properties: connack,
    }));
    st.on_connected(false, None, Instant::now());
    st
}

fn written_v5(st: &mut State) -> Vec<Packet> {
    let mut decoder = Decoder::new(1 << 20);
    decoder.set_protocol(Protocol::V5);
    let mut buf = st.out.split();
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(&mut buf).expect("valid packets") {
        out.push(p);
    }
    out
}

#[test]
fn receive_maximum_caps_the_window() {
    let mut st = v5_state(
        10,
        V5Options::default(),
        Some(Box::new(Properties {
            receive_maximum: Some(2),
            ..Properties::default()
        })),
    );
    for i in 0..3u8 {
        token(
            st.publish_v5("t", &[i], QoS::AtLeastOnce, false, None)
                .unwrap(),
        );
    }
    assert_eq!(written_v5(&mut st).len(), 2, "[MQTT-3.3.4-7]");
}

#[test]
fn connack_limits_refuse_before_sending() {
    let mut st = v5_state(
        10,
        V5Options::default(),
        Some(Box::new(Properties {
            maximum_qos: Some(1),
            retain_available: Some(false),
            maximum_packet_size: Some(64),
            ..Properties::default()
        })),
    );
    assert!(matches!(
        st.publish_v5("t", b"x", QoS::ExactlyOnce, false, None),
        Err(PublishError::QosNotSupported { .. })
    ));
    assert_eq!(
        st.publish_v5("t", b"x", QoS::AtMostOnce, true, None),
        Err(PublishError::RetainNotSupported)
    );
    assert!(matches!(
        st.publish_v5("t", &[0; 100], QoS::AtMostOnce, false, None),
        Err(PublishError::PacketTooLarge { max: 64, .. })
    ));
    assert!(written_v5(&mut st).is_empty());
    assert_eq!(
        st.publish_v5("t", &[0; 10], QoS::AtLeastOnce, false, None)
            .map(|s| matches!(s, Submitted::Token(_))),
        Ok(true)
    );
}

#[test]
fn outgoing_aliases_set_then_reuse_within_the_cap() {
    let mut st = v5_state(
        10,
        V5Options {
            outgoing_topic_aliases: 5,
            ..V5Options::default()
        },
        Some(Box::new(Properties {
            topic_alias_maximum: Some(1),
            ..Properties::default()
        })),
    );
    for topic in ["a/b", "a/b", "c"] {
        st.publish_v5(topic, b"x", QoS::AtMostOnce, false, None)
            .unwrap();
    }
    let sent = written_v5(&mut st);
    let seen: Vec<(String, Option<u16>)> = sent
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => (
                p.topic.to_string(),
                p.properties.as_deref().and_then(|p| p.topic_alias),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("a/b".into(), Some(1)),
            (String::new(), Some(1)),
            ("c".into(), None)
        ],
        "[MQTT-3.3.2-9] never above the server's maximum"
    );
}

#[test]
fn no_aliases_without_the_servers_topic_alias_maximum() {
    let mut st = v5_state(
        10,
        V5Options {
            outgoing_topic_aliases: 5,
            ..V5Options::default()
        },
        None,
    );
    st.publish_v5("a", b"x", QoS::AtMostOnce, false, None)
        .unwrap();
    st.publish_v5("a", b"y", QoS::AtMostOnce, false, None)
        .unwrap();
    for p in written_v5(&mut st) {
        let Packet::Publish(p) = p else { panic!() };
        assert_eq!(
            (&*p.topic, p.properties),
            ("a", None),
            "[MQTT-3.2.2-18] no Topic Alias"
        );
    }
}

fn incoming(topic: &'static str, alias: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: ByteString::from_static(topic),
        pkid: None,
        payload: Bytes::from_static(b"x"),
        properties: alias.map(|a| {
            Box::new(Properties {
                topic_alias: Some(a),
                ..Properties::default()
            })
        }),
    })
}

#[test]
fn incoming_aliases_are_mapped_and_checked() {
    let mut st = v5_state(
        1,
        V5Options {
            topic_alias_maximum: 2,
            ..V5Options::default()
        },
        None,
    );
    st.on_packet(incoming("x/y", Some(2))).unwrap();
    st.on_packet(incoming("", Some(2))).unwrap();
    let topics: Vec<&str> = st.incoming.iter().map(|m| &*m.topic).collect();
    assert_eq!(topics, ["x/y", "x/y"]);
    assert!(matches!(
        st.on_packet(incoming("", Some(1))),
        Err(ClientError::ProtocolV5 { reason, .. }) if reason == ReasonCode::PROTOCOL_ERROR
    ));
    assert!(matches!(
        st.on_packet(incoming("z", Some(3))),
        Err(ClientError::ProtocolV5 { reason, .. })
            if reason == ReasonCode::TOPIC_ALIAS_INVALID
    ));
    st.on_lost(&ClientError::ConnectionLost("x".into()));
    assert!(
        st.on_packet(incoming("", Some(2))).is_err(),
        "[MQTT-3.3.2-7] aliases end with the connection"
    );
}

#[test]
fn refused_acks_fail_the_publish_and_free_the_id() {
    let mut st = v5_state(1, V5Options::default(), None);
    let a = token(
        st.publish_v5("t", b"1", QoS::AtLeastOnce, false, None)
            .unwrap(),
    );
    let b = token(
        st.publish_v5("t", b"2", QoS::ExactlyOnce, false, None)
            .unwrap(),
    );
    let _ = written_v5(&mut st);
    st.on_packet(Packet::PubAckV5(AckV5 {
        pkid: 1,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Some(Box::new(Properties {
            reason_string: Some(ByteString::from_static("no")),
            ..Properties::default()
        })),
    }))
    .unwrap();
    assert!(matches!(
        &st.completions[..],
        [(t, Outcome::Failed(ClientError::Rejected { reason, reason_string: Some(s), .. }))]
            if *t == a && *reason == ReasonCode::NOT_AUTHORIZED && s == "no"
    ));
    let sent = written_v5(&mut st);
    let [Packet::Publish(p)] = &sent[..] else {
        panic!("{sent:?}")
    };
    st.on_packet(Packet::PubRecV5(AckV5 {
        pkid: p.pkid.unwrap(),
        reason: ReasonCode::QUOTA_EXCEEDED,
        properties: None,
    }))
    .unwrap();
    assert!(
        written_v5(&mut st).is_empty(),
        "no PUBREL after a failed PUBREC"
    );
    assert!(st
        .completions
        .iter()
        .any(|(t, o)| *t == b && matches!(o, Outcome::Failed(_))));
    assert!(st.inflight.is_empty());
}

#[test]
fn suback_reason_codes_and_resubscribe_with_options() {
    let mut st = v5_state(4, V5Options::default(), None);
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubscriptionOptions::default()
    };
    let t = token(
        st.subscribe_v5(
            vec![
                (ByteString::from_static("a"), options),
                (ByteString::from_static("b"), options),
            ],
            Some(7),
            Vec::new(),
        )
        .unwrap(),
    );
    let sent = written_v5(&mut st);
    let [Packet::SubscribeV5(s)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(
        s.properties
            .as_deref()
            .map(|p| p.subscription_identifiers.clone()),
        Some(vec![7])
    );
    st.on_packet(Packet::SubAckV5(SubAckV5 {
        pkid: s.pkid,
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        properties: None,
    }))
    .unwrap();
    assert_eq!(st.completions, vec![(t, Outcome::Granted(vec![1, 0x87]))]);
    st.on_lost(&ClientError::ConnectionLost("x".into()));
    st.on_connected(false, None, Instant::now());
    let sent = written_v5(&mut st);
    let [Packet::SubscribeV5(r)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert_eq!(r.filters, vec![(ByteString::from_static("a"), options)]);
    assert_eq!(
        r.properties
            .as_deref()
            .map(|p| p.subscription_identifiers.clone()),
        Some(vec![7])
    );
}

#[test]
fn receive_maximum_exceeded_is_0x93() {
    let mut st = v5_state(
        1,
        V5Options {
            receive_maximum: Some(2),
            ..V5Options::default()
        },
        None,
    );
    let qos2 = |pkid: u16| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: ByteString::from_static("t"),
            pkid: Some(pkid),
            payload: Bytes::from_static(b"x"),
            properties: None,
        })
    };
    st.on_packet(qos2(1)).unwrap();
    st.on_packet(qos2(2)).unwrap();
    st.on_packet(qos2(2)).unwrap(); // a resend is not a new one
    assert!(matches!(
        st.on_packet(qos2(3)),
        Err(ClientError::ProtocolV5 { reason, .. })
            if reason == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
    ));
    st.on_packet(Packet::PubRel(1)).unwrap();
    st.on_packet(qos2(3)).unwrap();
}

#[test]
fn server_disconnect_carries_its_reason() {
    let mut st = v5_state(1, V5Options::default(), None);
    let err = st
        .on_packet(Packet::DisconnectV5(DisconnectV5 {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            properties: None,
        }))
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::Disconnected { reason, .. } if reason == ReasonCode::SESSION_TAKEN_OVER
    ));
    assert!(!err.is_retryable());
}

fn auth(reason: ReasonCode, method: &'static str, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Some(Box::new(Properties {
            authentication_method: Some(ByteString::from_static(method)),
            authentication_data: Some(Bytes::from_static(data)),
            ..Properties::default()
        })),
    })
}

fn with_auth() -> V5Options {
    V5Options {
        authentication_method: Some("X".into()),
        authentication_data: Some(Bytes::from_static(b"hello")),
        ..V5Options::default()
    }
}

#[test]
fn connect_exchange_hands_challenges_to_the_application() {
    let mut st = state(1, true);
    st.enable_v5(&with_auth());
    let Packet::Auth(a) = auth(ReasonCode::CONTINUE_AUTHENTICATION, "X", b"c1") else {
        unreachable!()
    };
    st.on_auth(a, true).unwrap();
    assert!(st.auth_pending() && st.take_signals().app);
    let c = st.take_auth_challenge().expect("a challenge");
    assert_eq!((c.data.as_deref(), c.reauth), (Some(&b"c1"[..]), false));
    assert!(
        !st.auth_reply(c.seq + 1, None),
        "an answer to another challenge"
    );
    assert!(st.take_auth_reply().is_none());
    assert!(st.auth_reply(c.seq, Some(Bytes::from_static(b"a1"))));
    // [MQTT-4.12.0-3] [MQTT-4.12.0-5]: AUTH 0x18 with the method, for the task.
    let Some(Packet::Auth(reply)) = st.take_auth_reply() else {
        panic!("no reply")
    };
    let p = reply.properties.expect("properties");
    assert_eq!(reply.reason, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(p.authentication_method.as_deref(), Some("X"));
    assert_eq!(p.authentication_data.as_deref(), Some(&b"a1"[..]));
    assert!(
        st.out.is_empty(),
        "nothing but AUTH before CONNACK [MQTT-3.1.2-30]"
    );
}

#[test]
fn reauthentication_and_its_failures() {
    let mut st = v5_state(1, with_auth(), None);
    let t = st
        .reauthenticate(Some(Bytes::from_static(b"again")))
        .unwrap();
    assert_eq!(st.reauthenticate(None), Err(ReauthError::InProgress));
    let sent = written_v5(&mut st);
    let [Packet::Auth(a)] = &sent[..] else {
        panic!("{sent:?}")
    };
    // [MQTT-4.12.1-1] [MQTT-3.15.2-1]
    assert_eq!(a.reason, ReasonCode::RE_AUTHENTICATE);
    assert_eq!(
        a.properties
            .as_deref()
            .and_then(|p| p.authentication_method.as_deref()),
        Some("X")
    );
    st.on_packet(auth(ReasonCode::CONTINUE_AUTHENTICATION, "X", b"r1"))
        .unwrap();
    let c = st.take_auth_challenge().unwrap();
    assert!(c.reauth);
    assert!(
        st.on_packet(auth(ReasonCode::SUCCESS, "X", b"early"))
            .is_err(),
        "success before the client answered"
    );
    let mut st = v5_state(1, with_auth(), None);
    let t2 = st.reauthenticate(None).unwrap();
    st.on_packet(auth(ReasonCode::CONTINUE_AUTHENTICATION, "X", b"r1"))
        .unwrap();
    let c = st.take_auth_challenge().unwrap();
    assert!(st.auth_reply(c.seq, Some(Bytes::from_static(b"a"))));
    st.on_packet(auth(ReasonCode::SUCCESS, "X", b"done"))
        .unwrap();
    assert_eq!(st.completions, vec![(t2, Outcome::Done)]);
    assert_eq!(st.auth_result_data().as_deref(), Some(&b"done"[..]));
    // A method other than the CONNECT's is a protocol error [MQTT-4.12.0-5].
    st.reauthenticate(None).unwrap();
    assert!(matches!(
        st.on_packet(auth(ReasonCode::CONTINUE_AUTHENTICATION, "Y", b"")),
        Err(ClientError::ProtocolV5 { reason, .. }) if reason == ReasonCode::PROTOCOL_ERROR
    ));
    // The connection ends during a re-authentication: it fails.
    let lost = ClientError::ConnectionLost("x".into());
    st.on_lost(&lost);
    assert!(matches!(st.completions.last(), Some((_, Outcome::Failed(e))) if *e == lost));
    let _ = t;
}

#[test]
fn auth_without_a_method_is_a_protocol_error() {
    let mut st = v5_state(1, V5Options::default(), None);
    assert!(matches!(
        st.on_packet(auth(ReasonCode::CONTINUE_AUTHENTICATION, "X", b"")),
        Err(ClientError::ProtocolV5 { reason, .. }) if reason == ReasonCode::PROTOCOL_ERROR
    ));
    assert_eq!(st.reauthenticate(None), Err(ReauthError::NoMethod));
}
