//! Unit tests of the state machine's outgoing side (publishing, the inflight window,
//! SUBSCRIBE/UNSUBSCRIBE); the other parts test themselves in their own files.

use super::testing::*;
use super::*;

#[test]
fn qos0_is_encoded_at_once() {
    let mut st = state(2, true);
    st.on_connected(false, None, Instant::now());
    let _ = written(&mut st);
    let r = st.publish("a/b", b"hi", QoS::AtMostOnce, true).unwrap();
    assert_eq!(r, Submitted::Sent);
    let packets = written(&mut st);
    let [Packet::Publish(p)] = packets.as_slice() else {
        panic!("{packets:?}")
    };
    assert_eq!(
        (&*p.topic, &p.payload[..], p.retain),
        ("a/b", &b"hi"[..], true)
    );
}

#[test]
fn window_holds_excess_and_acks_release_it() {
    let mut st = state(2, true);
    st.on_connected(false, None, Instant::now());
    let t: Vec<u64> = (0..3)
        .map(|i| token(st.publish("t", &[i], QoS::AtLeastOnce, false).unwrap()))
        .collect();
    let sent = written(&mut st);
    assert_eq!(sent.len(), 2, "window of 2");
    let Packet::Publish(first) = &sent[0] else {
        panic!()
    };
    st.on_packet(Packet::PubAck(first.pkid.unwrap())).unwrap();
    assert_eq!(st.completions, vec![(t[0], Outcome::Done)]);
    let next = written(&mut st);
    assert!(matches!(&next[..], [Packet::Publish(p)] if p.payload[..] == [2]));
}

#[test]
fn qos0_waits_behind_qos1_waiting_for_the_window() {
    let mut st = state(1, true);
    st.on_connected(false, None, Instant::now());
    token(st.publish("t", b"1", QoS::AtLeastOnce, false).unwrap());
    token(st.publish("t", b"2", QoS::AtLeastOnce, false).unwrap());
    let r = st.publish("t", b"3", QoS::AtMostOnce, false).unwrap();
    assert_eq!(r, Submitted::Sent, "handed over, though queued");
    let sent = written(&mut st);
    assert_eq!(sent.len(), 1);
    let Packet::Publish(first) = &sent[0] else {
        panic!()
    };
    st.on_packet(Packet::PubAck(first.pkid.unwrap())).unwrap();
    assert_eq!(
        payloads(&written(&mut st)),
        vec![b"2".to_vec(), b"3".to_vec()]
    );
}

#[test]
fn full_buffer_reports_and_then_signals_room() {
    let mut st = State::new(
        Limits {
            max_inflight: 1,
            max_buffered: 100,
            max_incoming: 1,
            clean_session: true,
            persist: false,
        },
        Instant::now(),
    );
    st.started = true;
    st.on_connected(false, None, Instant::now());
    let big = [0u8; 120];
    assert_eq!(
        st.publish("t", &big, QoS::AtMostOnce, false).unwrap(),
        Submitted::Sent
    );
    assert_eq!(
        st.publish("t", b"x", QoS::AtMostOnce, false).unwrap(),
        Submitted::Full
    );
    let _ = written(&mut st);
    st.check_room();
    assert!(st.room);
}

fn journal(st: &mut State) -> Vec<Change> {
    std::mem::take(&mut st.journal)
}

/// With a store, every change to the unacknowledged publishes and inbound QoS 2 ids is
/// journaled, in order, and a restored session resends with DUP=1.
#[test]
fn a_stored_session_is_journaled_and_restored() {
    let mut st = state(1, false);
    st.limits.persist = true;
    st.on_connected(false, None, Instant::now());
    let _ = written(&mut st);
    token(st.publish("a", b"1", QoS::AtLeastOnce, false).unwrap());
    token(st.publish("b", b"2", QoS::ExactlyOnce, true).unwrap());
    assert_eq!(
        st.publish("c", b"3", QoS::AtMostOnce, false).unwrap(),
        Submitted::Sent
    );
    let changes = journal(&mut st);
    let [Change::Put(first), Change::Put(second)] = &changes[..] else {
        panic!("{changes:?}")
    };
    assert_eq!((first.seq, first.packet_id, first.sent), (1, Some(1), true));
    assert_eq!(
        (second.seq, second.packet_id, second.sent),
        (2, None, false)
    );
    assert_eq!(st.journal_total, 2);

    st.on_packet(Packet::PubAck(1)).unwrap();
    let changes = journal(&mut st);
    assert_eq!(changes[0], Change::Delete(1));
    let Change::Put(flight) = &changes[1] else {
        panic!("{changes:?}")
    };
    assert_eq!(
        (flight.seq, flight.packet_id, flight.sent),
        (2, Some(2), true)
    );
    st.on_packet(Packet::PubRec(2)).unwrap();
    let changes = journal(&mut st);
    let [Change::Put(released)] = &changes[..] else {
        panic!("{changes:?}")
    };
    assert!(released.released && released.payload.is_empty());

    st.on_packet(Packet::Publish(codec::Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: ByteString::from_static("in"),
        pkid: Some(9),
        payload: Bytes::from_static(b"x"),
        properties: None,
    }))
    .unwrap();
    assert_eq!(journal(&mut st), vec![Change::InboundAdd(9)]);
    st.on_packet(Packet::PubRel(9)).unwrap();
    st.on_packet(Packet::PubRel(9)).unwrap();
    assert_eq!(journal(&mut st), vec![Change::InboundRemove(9)], "once");

    // A new process: the stored session comes back and resumes.
    let mut next = state(1, false);
    next.restore(StoredSession {
        outgoing: vec![
            released.clone(),
            StoredPublish {
                seq: 5,
                packet_id: None,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: ByteString::from_static("d"),
                payload: Bytes::from_static(b"4"),
                released: false,
                sent: false,
            },
        ],
        inbound_qos2: vec![7],
    });
    next.on_connected(true, None, Instant::now());
    assert_eq!(written(&mut next), vec![Packet::PubRel(2)]);
    next.on_packet(Packet::PubComp(2)).unwrap();
    let [Packet::Publish(p)] = &written(&mut next)[..] else {
        panic!()
    };
    assert_eq!((&p.payload[..], p.dup), (&b"4"[..], false));
    assert!(
        !next.inbound_qos2.receive(7),
        "a held id is not delivered again"
    );
    assert_eq!(
        next.publish("e", b"5", QoS::AtLeastOnce, false).unwrap(),
        Submitted::Token(next.next_token - 1)
    );
    assert_eq!(
        next.next_seq, 7,
        "numbering continues after the stored ones"
    );
}

#[test]
fn not_started_is_closed() {
    let mut st = state(1, true);
    st.started = false;
    assert_eq!(
        st.publish("t", b"x", QoS::AtLeastOnce, false).unwrap(),
        Submitted::Closed
    );
    assert_eq!(
        st.unsubscribe(vec![ByteString::from_static("t")]).unwrap(),
        Submitted::Closed
    );
}
