use std::time::{Duration, Instant};

use bytes::Bytes;

use super::super::{Attach, ConnHandle, MatchScratch};
use super::*;
use crate::broker::config::Config;
use crate::broker::hooks::Hooks;
use crate::broker::session::Outgoing;
use crate::codec::{Properties, PropertyContext};

fn connect(router: &Router, id: &str) -> Arc<Session> {
    let handle = ConnHandle {
        conn_id: router.next_id(),
        takeover: Arc::default(),
    };
    match router.attach(&ByteString::from(id), true, handle) {
        Attach::Attached { session, .. } => session,
        Attach::Busy(_) => panic!("{id} is connected"),
    }
}

fn message(
    topic: &str,
    publisher: &str,
    retain: bool,
    props: Option<MessageProperties>,
) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteString::from(topic),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain,
        publisher: ByteString::from(publisher),
        properties: props,
        mark: crate::broker::session::StreamMark::NONE,
    })
}

fn expiring(secs: u32) -> MessageProperties {
    let p = Properties {
        message_expiry_interval: Some(secs),
        content_type: Some("c".into()),
        ..Properties::default()
    };
    MessageProperties::new(p.to_bytes(PropertyContext::Publish).unwrap())
}

fn opts(no_local: bool, rap: bool, handling: RetainHandling) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local,
        retain_as_published: rap,
        retain_handling: handling,
    }
}

fn sub(router: &Router, s: &Arc<Session>, filter: &str, o: SubscriptionOptions, id: u32) {
    router
        .subscribe_v5(s, &ByteString::from(filter), &o, NonZeroU32::new(id))
        .unwrap();
}

/// What the session would be sent now: (retain flag, message).
fn sent(session: &Session) -> Vec<(bool, Arc<Message>)> {
    let mut state = session.state.lock();
    let mut out = Vec::new();
    while let Some(Outgoing::Publish { item, .. }) = state.next_outgoing() {
        out.push((item.retain, item.msg));
    }
    out
}

fn publish(router: &Router, msg: Arc<Message>) {
    router.publish(msg, &mut MatchScratch::default());
}

#[test]
fn no_local_skips_only_the_own_client_and_only_on_that_subscription() {
    let router = Router::new(Config::default(), Hooks::default());
    let a = connect(&router, "a");
    let b = connect(&router, "b");
    let plain = opts(false, false, RetainHandling::SendAtSubscribe);
    sub(
        &router,
        &a,
        "t/#",
        opts(true, false, RetainHandling::SendAtSubscribe),
        0,
    );
    sub(
        &router,
        &b,
        "t/#",
        opts(true, false, RetainHandling::SendAtSubscribe),
        0,
    );
    publish(&router, message("t/1", "a", false, None));
    assert!(sent(&a).is_empty(), "[MQTT-3.8.3-3] own message came back");
    assert_eq!(sent(&b).len(), 1);
    // An overlapping subscription without No Local still gets it, once.
    sub(&router, &a, "t/+", plain, 0);
    publish(&router, message("t/1", "a", false, None));
    assert_eq!(sent(&a).len(), 1);
}

#[test]
fn retain_as_published_keeps_the_flag_on_forwarded_messages() {
    let router = Router::new(Config::default(), Hooks::default());
    let keep = connect(&router, "keep");
    let clear = connect(&router, "clear");
    sub(
        &router,
        &keep,
        "t",
        opts(false, true, RetainHandling::DoNotSend),
        0,
    );
    sub(
        &router,
        &clear,
        "t",
        opts(false, false, RetainHandling::DoNotSend),
        0,
    );
    publish(&router, message("t", "p", true, None));
    publish(&router, message("t", "p", false, None));
    let flags = |s| sent(s).into_iter().map(|(r, _)| r).collect::<Vec<_>>();
    assert_eq!(flags(&keep), [true, false], "[MQTT-3.3.1-13]");
    assert_eq!(flags(&clear), [false, false], "[MQTT-3.3.1-12]");
}

#[test]
fn retain_handling_0_1_2() {
    let router = Router::new(Config::default(), Hooks::default());
    publish(&router, message("r", "p", true, None));
    let s = connect(&router, "s");
    for (handling, first, again) in [
        (RetainHandling::SendAtSubscribe, 1, 1),
        (RetainHandling::SendIfNew, 1, 0),
        (RetainHandling::DoNotSend, 0, 0),
    ] {
        sub(&router, &s, "r", opts(false, false, handling), 0);
        let got = sent(&s);
        assert!(
            got.iter().all(|(retain, _)| *retain),
            "replayed with RETAIN=1"
        );
        assert_eq!(got.len(), first, "{handling:?} on a new subscription");
        sub(&router, &s, "r", opts(false, false, handling), 0);
        assert_eq!(
            sent(&s).len(),
            again,
            "{handling:?} on an existing subscription"
        );
        router.unsubscribe(&s, &ByteString::from_static("r"));
    }
}

/// The identifiers a delivered message carries (Subscription Identifier properties at
/// the end of its encoded properties).
fn ids(msg: &Message) -> Vec<u32> {
    let Some(p) = &msg.properties else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut i = p.iter().position(|&b| b == 0x0B).unwrap_or(p.len());
    while i < p.len() {
        assert_eq!(p[i], 0x0B);
        let (mut v, mut shift) = (0u32, 0);
        loop {
            i += 1;
            v |= u32::from(p[i] & 0x7F) << shift;
            shift += 7;
            if p[i] & 0x80 == 0 {
                break;
            }
        }
        i += 1;
        out.push(v);
    }
    out
}

#[test]
fn every_matching_subscription_identifier_rides_with_the_one_copy() {
    let router = Router::new(Config::default(), Hooks::default());
    let s = connect(&router, "s");
    let other = connect(&router, "o");
    let o = opts(false, false, RetainHandling::SendAtSubscribe);
    sub(&router, &s, "a/#", o, 7);
    sub(&router, &s, "a/+", o, 300);
    sub(&router, &s, "a/b", o, 0);
    sub(&router, &other, "a/b", o, 0);
    let props = MessageProperties::new(Bytes::from_static(b"\x03\x00\x01c"));
    let msg = message("a/b", "p", false, Some(props));
    publish(&router, msg.clone());
    let got = sent(&s);
    assert_eq!(got.len(), 1, "[MQTT-3.3.4-2] one copy per session");
    let mut got_ids = ids(&got[0].1);
    got_ids.sort_unstable();
    assert_eq!(got_ids, [7, 300], "[MQTT-3.3.4-4]");
    // The publisher's properties come first, untouched; the payload is shared.
    let delivered = got[0].1.properties.as_ref().unwrap();
    assert_eq!(&delivered[..4], b"\x03\x00\x01c");
    assert_eq!(got[0].1.payload.as_ptr(), msg.payload.as_ptr());
    // A subscriber without identifiers shares the publisher's message itself.
    let plain = sent(&other);
    assert!(Arc::ptr_eq(&plain[0].1, &msg));
    // Only the matching subscription's identifier [MQTT-3.3.4-3].
    publish(&router, message("a/b/c", "p", false, None));
    assert_eq!(ids(&sent(&s)[0].1), [7]);
}

#[test]
fn retained_replay_carries_the_identifier_and_skips_expired_messages() {
    let router = Router::new(Config::default(), Hooks::default());
    publish(&router, message("r/live", "p", true, Some(expiring(60))));
    let gone = expiring(60).expiring_at(Instant::now() - Duration::from_millis(1));
    publish(&router, message("r/gone", "p", true, Some(gone)));
    assert_eq!(router.retained_count(), 2);
    let s = connect(&router, "s");
    sub(
        &router,
        &s,
        "r/#",
        opts(false, false, RetainHandling::SendAtSubscribe),
        42,
    );
    let got = sent(&s);
    assert_eq!(
        got.len(),
        1,
        "[MQTT-3.3.2-5] an expired retained message was sent"
    );
    assert_eq!(got[0].1.topic, "r/live");
    assert_eq!(ids(&got[0].1), [42]);
    assert_eq!(router.retained_count(), 1, "the expired one is removed");
}

#[test]
fn expired_messages_are_not_taken_from_the_queue() {
    let router = Router::new(Config::default(), Hooks::default());
    let s = connect(&router, "s");
    sub(
        &router,
        &s,
        "t",
        opts(false, false, RetainHandling::SendAtSubscribe),
        0,
    );
    let soon = expiring(60).expiring_at(Instant::now() + Duration::from_millis(50));
    publish(&router, message("t", "p", false, Some(soon)));
    publish(&router, message("t", "p", false, Some(expiring(60))));
    publish(&router, message("t", "p", false, None));
    std::thread::sleep(Duration::from_millis(60));
    let got = sent(&s);
    assert_eq!(got.len(), 2, "[MQTT-3.3.2-5]");
    assert!(got[0].1.properties.as_ref().unwrap().expiry().is_some());
    assert!(got[1].1.properties.is_none());
}

#[test]
fn a_shared_subscription_member_gets_its_identifier_and_retain_flag() {
    let router = Router::new(Config::default(), Hooks::default());
    let m = connect(&router, "m");
    sub(
        &router,
        &m,
        "$share/g/s/#",
        opts(false, true, RetainHandling::SendAtSubscribe),
        9,
    );
    publish(&router, message("s/1", "p", true, None));
    let got = sent(&m);
    assert_eq!(got.len(), 1);
    assert!(got[0].0, "Retain As Published on a shared subscription");
    assert_eq!(ids(&got[0].1), [9]);
}
