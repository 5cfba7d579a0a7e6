use super::*;

fn limits(max_inflight: usize, max_queued: usize, overflow: OverflowPolicy) -> Limits {
    Limits {
        max_inflight,
        max_queued,
        max_queued_bytes: 0,
        overflow,
        queue_qos0_offline: false,
    }
}

fn sized(len: usize) -> Queued {
    Queued {
        msg: Arc::new(Message {
            topic: ByteString::from_static("t"),
            payload: Bytes::from(vec![7; len]),
            qos: QoS::AtLeastOnce,
            retain: false,
            publisher: ByteString::new(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        share: None,
    }
}

#[test]
fn byte_limit_with_both_policies() {
    // Each `msg` costs 2 bytes (topic "t" and a 1-byte payload).
    let mut l = limits(1, 100, OverflowPolicy::DropNew);
    l.max_queued_bytes = 10;
    let mut s = SessionState::new(l);
    s.online = true;
    for n in 0..5 {
        assert_eq!(s.enqueue(msg(n, QoS::AtLeastOnce)), Enqueued::Yes);
    }
    assert_eq!(s.queued_bytes(), 10);
    assert_eq!(
        s.enqueue(msg(5, QoS::AtLeastOnce)),
        Enqueued::OverflowStarted(1)
    );
    assert_eq!(payload(&s.next_outgoing().unwrap()), 0);
    assert_eq!(s.queued_bytes(), 8, "sending frees its bytes");
    assert_eq!(s.enqueue(msg(6, QoS::AtLeastOnce)), Enqueued::Yes);
    assert_eq!(s.dropped, 1);

    let mut l = limits(1, 100, OverflowPolicy::DropOldest);
    l.max_queued_bytes = 10;
    let mut s = SessionState::new(l);
    s.online = true;
    for n in 0..5 {
        s.enqueue(msg(n, QoS::AtLeastOnce));
    }
    // 6 bytes need three 2-byte messages evicted: the oldest three.
    assert_eq!(s.enqueue(sized(5)), Enqueued::OverflowStarted(3));
    assert_eq!(s.queued_bytes(), 10);
    assert_eq!(s.queued_len(), 3);
    assert_eq!(payload(&s.next_outgoing().unwrap()), 3);
    // Larger than the limit by itself: only it is dropped, nothing is evicted for it.
    assert_eq!(s.enqueue(sized(20)), Enqueued::Overflowed(1));
    assert_eq!(s.queued_len(), 2);
    assert_eq!(s.dropped, 4);
    let mut taken = Vec::new();
    s.take_queued(10, &mut taken);
    assert_eq!((taken.len(), s.queued_bytes()), (2, 0));
}

fn msg(n: u8, qos: QoS) -> Queued {
    Queued {
        msg: Arc::new(Message {
            topic: ByteString::from_static("t"),
            payload: Bytes::from(vec![n]),
            qos,
            retain: false,
            publisher: ByteString::new(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        }),
        qos,
        retain: false,
        share: None,
    }
}

fn payload(o: &Outgoing) -> u8 {
    match o {
        Outgoing::Publish { item, .. } => item.msg.payload[0],
        Outgoing::PubRel(_) => panic!("expected a PUBLISH"),
    }
}

#[test]
fn window_limits_qos1_and_acks_open_it() {
    let mut s = SessionState::new(limits(2, 10, OverflowPolicy::DropNew));
    s.online = true;
    for n in 0..3 {
        assert_eq!(s.enqueue(msg(n, QoS::AtLeastOnce)), Enqueued::Yes);
    }
    let a = s.next_outgoing().unwrap();
    let b = s.next_outgoing().unwrap();
    assert!(s.next_outgoing().is_none(), "window of 2 is full");
    let (Outgoing::Publish { pkid: Some(pa), .. }, Outgoing::Publish { pkid: Some(pb), .. }) =
        (&a, &b)
    else {
        panic!("QoS 1 deliveries carry ids")
    };
    assert_ne!(pa, pb);
    assert!(s.on_puback(*pa));
    assert!(!s.on_puback(*pa), "second ack of the same id is unknown");
    assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
}

#[test]
fn qos2_flow_resends_pubrel_not_publish() {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::ExactlyOnce));
    s.enqueue(msg(2, QoS::ExactlyOnce));
    let Some(Outgoing::Publish { pkid: Some(p1), .. }) = s.next_outgoing() else {
        panic!()
    };
    let Some(Outgoing::Publish { pkid: Some(p2), .. }) = s.next_outgoing() else {
        panic!()
    };
    assert!(s.on_pubrec(p1));
    let resend = s.resend_on_resume();
    assert!(matches!(resend[0], Outgoing::PubRel(id) if id == p1));
    assert!(matches!(&resend[1], Outgoing::Publish { pkid: Some(id), dup: true, .. } if *id == p2));
    assert!(!s.on_puback(p2), "PUBACK does not end a QoS 2 delivery");
    assert!(s.on_pubcomp(p1));
    assert_eq!(s.inflight_len(), 1);
}

#[test]
fn overflow_policies() {
    let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    s.enqueue(msg(2, QoS::AtLeastOnce));
    assert_eq!(
        s.enqueue(msg(3, QoS::AtLeastOnce)),
        Enqueued::OverflowStarted(1)
    );
    assert_eq!(s.enqueue(msg(4, QoS::AtLeastOnce)), Enqueued::Overflowed(1));
    assert_eq!(payload(&s.next_outgoing().unwrap()), 1);
    assert_eq!(s.dropped, 2);
    // Room again, but the episode lasts until the queue has drained empty: one log
    // line per episode, not one per refill.
    assert_eq!(s.enqueue(msg(5, QoS::AtLeastOnce)), Enqueued::Yes);
    assert_eq!(s.enqueue(msg(6, QoS::AtLeastOnce)), Enqueued::Overflowed(1));
    assert!(s.on_puback(1));
    assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
    assert!(s.on_puback(2));
    assert_eq!(payload(&s.next_outgoing().unwrap()), 5);
    assert_eq!(s.queued_len(), 0);
    assert_eq!(s.enqueue(msg(7, QoS::AtLeastOnce)), Enqueued::Yes);
    assert_eq!(s.enqueue(msg(8, QoS::AtLeastOnce)), Enqueued::Yes);
    assert_eq!(
        s.enqueue(msg(9, QoS::AtLeastOnce)),
        Enqueued::OverflowStarted(1)
    );
    assert_eq!(s.dropped, 4);

    let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropOldest));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    s.enqueue(msg(2, QoS::AtLeastOnce));
    assert_eq!(
        s.enqueue(msg(3, QoS::AtLeastOnce)),
        Enqueued::OverflowStarted(1)
    );
    assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
    assert_eq!(s.dropped, 1);
}

#[test]
fn changes_are_flagged_for_the_store() {
    let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
    s.online = true;
    assert!(s.take_changed(), "a new session is not stored yet");
    assert!(!s.take_changed());
    s.enqueue(msg(1, QoS::AtLeastOnce));
    assert!(s.take_changed());
    let Some(Outgoing::Publish { pkid: Some(id), .. }) = s.next_outgoing() else {
        panic!("expected a QoS 1 delivery");
    };
    assert!(s.take_changed(), "moved to inflight with an id");
    assert!(s.next_outgoing().is_none());
    assert!(!s.take_changed(), "nothing moved");
    assert!(!s.on_puback(id + 1));
    assert!(!s.take_changed(), "an unknown id changes nothing");
    assert!(s.on_puback(id));
    assert!(s.take_changed());
    s.enqueue(msg(2, QoS::AtLeastOnce));
    s.enqueue(msg(3, QoS::AtLeastOnce));
    s.take_changed();
    assert_eq!(
        s.enqueue(msg(4, QoS::AtLeastOnce)),
        Enqueued::OverflowStarted(1)
    );
    assert!(!s.take_changed(), "drop_new keeps the queue as it was");
    s.clear();
    assert!(s.take_changed());
}

#[test]
fn offline_qos0_is_not_queued() {
    let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
    assert_eq!(s.enqueue(msg(1, QoS::AtMostOnce)), Enqueued::Skipped);
    assert_eq!(s.enqueue(msg(1, QoS::AtLeastOnce)), Enqueued::Yes);
}

#[test]
fn qos0_behind_full_window_waits_for_order() {
    let mut s = SessionState::new(limits(1, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    s.enqueue(msg(2, QoS::AtLeastOnce));
    s.enqueue(msg(3, QoS::AtMostOnce));
    s.next_outgoing().unwrap();
    assert!(s.next_outgoing().is_none());
}

#[test]
fn pkids_skip_ids_still_inflight() {
    let mut s = SessionState::new(limits(3, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.acks().window.set_next(u16::MAX);
    for n in 0..3 {
        s.enqueue(msg(n, QoS::AtLeastOnce));
    }
    let ids: Vec<u16> = (0..3)
        .map(|_| match s.next_outgoing() {
            Some(Outgoing::Publish { pkid: Some(id), .. }) => id,
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        ids,
        vec![u16::MAX, 1, 2],
        "ids wrap past 0, which is never used"
    );
}

#[test]
fn export_restore_keeps_ids_and_stages() {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    s.enqueue(msg(2, QoS::ExactlyOnce));
    s.enqueue(msg(3, QoS::AtLeastOnce));
    s.next_outgoing().unwrap();
    let Some(Outgoing::Publish { pkid: Some(p2), .. }) = s.next_outgoing() else {
        panic!()
    };
    s.on_pubrec(p2);
    // The third stays queued: limit the window to two by sending no more.
    let mut restored = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    let exported = s.export();
    assert_eq!(exported.len(), 3);
    for (item, pkid, released) in exported {
        restored.restore(item, pkid, released);
    }
    let resend = restored.resend_on_resume();
    assert!(matches!(
        &resend[0],
        Outgoing::Publish {
            pkid: Some(1),
            dup: true,
            ..
        }
    ));
    assert!(matches!(resend[1], Outgoing::PubRel(id) if id == p2));
    restored.online = true;
    let Some(Outgoing::Publish { pkid: Some(p3), .. }) = restored.next_outgoing() else {
        panic!()
    };
    assert!(
        p3 != 1 && p3 != p2,
        "a restored id is not reused while inflight"
    );
}

#[test]
fn restored_ids_are_not_handed_out_twice() {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    s.restore(msg(1, QoS::AtLeastOnce), Some(1), false);
    s.restore(msg(2, QoS::AtLeastOnce), Some(1), false);
    assert_eq!(
        (s.inflight_len(), s.queued_len()),
        (1, 1),
        "a duplicate id is queued"
    );
    s.online = true;
    let Some(Outgoing::Publish { pkid: Some(id), .. }) = s.next_outgoing() else {
        panic!()
    };
    assert_eq!(id, 2);
    assert!(s.on_puback(1));
    s.enqueue(msg(3, QoS::AtLeastOnce));
    s.acks().window.set_next(1);
    let Some(Outgoing::Publish { pkid: Some(id), .. }) = s.next_outgoing() else {
        panic!()
    };
    assert_eq!(id, 1, "an acknowledged id is free again");
}

/// A session with a QoS 1 and a QoS 2 delivery sent, and their packet ids.
fn qos1_and_qos2_in_flight() -> (SessionState, u16, u16) {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    s.enqueue(msg(2, QoS::ExactlyOnce));
    let ids: Vec<u16> = (0..2)
        .map(|_| match s.next_outgoing() {
            Some(Outgoing::Publish { pkid: Some(id), .. }) => id,
            _ => panic!("expected a QoS 1/2 delivery"),
        })
        .collect();
    (s, ids[0], ids[1])
}

#[test]
fn ack_of_the_wrong_kind_is_named() {
    let (mut s, q1, q2) = qos1_and_qos2_in_flight();
    assert!(s.wrong_ack(q1, AckKind::PubRec).is_some());
    assert!(s.wrong_ack(q1, AckKind::PubComp).is_some());
    assert!(s.wrong_ack(q1, AckKind::PubAck).is_none());
    assert!(s.wrong_ack(q2, AckKind::PubAck).is_some());
    assert!(
        s.wrong_ack(q2, AckKind::PubComp).is_some(),
        "PUBCOMP before PUBREC"
    );
    assert!(s.wrong_ack(q2, AckKind::PubRec).is_none());
    assert!(s.on_pubrec(q2));
    assert!(
        s.wrong_ack(q2, AckKind::PubRec).is_none(),
        "a repeated PUBREC"
    );
    assert!(s.wrong_ack(q2, AckKind::PubComp).is_none());
    assert!(s.wrong_ack(q2, AckKind::PubAck).is_some());
    assert!(
        s.wrong_ack(999, AckKind::PubComp).is_none(),
        "unknown ids are ignored"
    );
}

#[test]
fn on_ack_checks_and_applies_in_one_step() {
    let (mut s, q1, q2) = qos1_and_qos2_in_flight();
    // The wrong kind is named and changes nothing.
    assert_eq!(s.on_ack(q1, AckKind::PubRec), Err("a QoS 1 delivery"));
    assert_eq!(s.on_ack(q2, AckKind::PubAck), Err("a QoS 2 delivery"));
    assert_eq!(
        s.on_ack(q2, AckKind::PubComp),
        Err("a QoS 2 delivery not yet PUBRECed")
    );
    assert_eq!(s.inflight_len(), 2);
    assert_eq!(s.on_ack(q1, AckKind::PubAck), Ok(true));
    assert_eq!(s.on_ack(q1, AckKind::PubAck), Ok(false), "now unknown");
    assert_eq!(s.on_ack(q2, AckKind::PubRec), Ok(true));
    assert_eq!(s.on_ack(q2, AckKind::PubRec), Ok(true), "a repeated PUBREC");
    assert_eq!(
        s.inflight_len(),
        1,
        "PUBREC keeps the delivery until PUBCOMP"
    );
    assert_eq!(s.on_ack(q2, AckKind::PubAck), Err("a QoS 2 delivery"));
    assert_eq!(s.on_ack(q2, AckKind::PubComp), Ok(true));
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(
        s.on_ack(999, AckKind::PubComp),
        Ok(false),
        "unknown ids are ignored"
    );
    // The ids are free again: the next delivery may take the first one.
    s.enqueue(msg(3, QoS::AtLeastOnce));
    s.acks().window.set_next(q1);
    let Some(Outgoing::Publish { pkid: Some(id), .. }) = s.next_outgoing() else {
        panic!("expected a QoS 1 delivery")
    };
    assert_eq!(id, q1, "an acknowledged id is free again");
}

#[test]
fn inbound_qos2_dedup() {
    let mut s = SessionState::new(limits(1, 1, OverflowPolicy::DropNew));
    assert!(s.on_inbound_qos2(7));
    assert!(!s.on_inbound_qos2(7));
    s.on_inbound_pubrel(7);
    assert!(s.on_inbound_qos2(7));
}

/// A flow-controlled queue takes what its waiting publishers routed past the high
/// water mark, but not without end: past the hard limit, the new message is dropped
/// and counted, with one log line per episode.
#[test]
fn flow_queue_has_a_hard_limit() {
    let mut s = SessionState::new(limits(1, 1, OverflowPolicy::DropNew));
    for n in 0..3 {
        assert_eq!(s.push_flow(msg(n, QoS::AtMostOnce), 3), Enqueued::Yes);
    }
    assert_eq!(
        s.push_flow(msg(3, QoS::AtMostOnce), 3),
        Enqueued::OverflowStarted(1)
    );
    assert_eq!(
        s.push_flow(msg(4, QoS::AtMostOnce), 3),
        Enqueued::Overflowed(1)
    );
    assert_eq!((s.queued_len(), s.dropped), (3, 2));
    let mut taken = Vec::new();
    s.take_queued(3, &mut taken);
    assert_eq!(
        taken.iter().map(|q| q.msg.payload[0]).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(s.push_flow(msg(5, QoS::AtMostOnce), 3), Enqueued::Yes);
    s.push_flow(msg(6, QoS::AtMostOnce), 3);
    s.push_flow(msg(7, QoS::AtMostOnce), 3);
    // A new episode is logged again.
    assert_eq!(
        s.push_flow(msg(8, QoS::AtMostOnce), 3),
        Enqueued::OverflowStarted(1)
    );
}

#[test]
fn an_expired_message_does_not_open_the_window_for_the_next() {
    let mut s = SessionState::new(limits(1, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::AtLeastOnce));
    assert!(matches!(
        s.next_outgoing(),
        Some(Outgoing::Publish { pkid: Some(_), .. })
    ));
    // The window (1) is full. Next in the queue: a QoS 0 message whose Message Expiry
    // Interval has passed, then a QoS 1 one, which must wait for the window.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let interval = Bytes::from_static(&[0x02, 0, 0, 0, 60]);
    let mut expired = msg(2, QoS::AtMostOnce);
    if let Some(m) = Arc::get_mut(&mut expired.msg) {
        m.properties = Some(MessageProperties::restored(interval, Some(now_ms - 1)));
    }
    assert!(expired.msg.properties.as_ref().is_some_and(|p| p.expired()));
    s.enqueue(expired);
    s.enqueue(msg(3, QoS::AtLeastOnce));
    assert!(s.next_outgoing().is_none(), "the window is still full");
    assert_eq!(s.inflight_len(), 1);
    assert_eq!(
        s.queued_len(),
        1,
        "the expired message was dropped [MQTT-3.3.2-5]"
    );
}

/// Sends the next queued message and returns its packet id.
fn send(s: &mut SessionState) -> u16 {
    match s.next_outgoing() {
        Some(Outgoing::Publish { pkid: Some(id), .. }) => id,
        other => panic!("expected a QoS 1/2 delivery, got {other:?}"),
    }
}

/// The ids of what a resume would resend, in order.
fn resend_ids(s: &SessionState) -> Vec<u16> {
    s.resend_on_resume()
        .iter()
        .map(|o| match o {
            Outgoing::Publish { pkid: Some(id), .. } | Outgoing::PubRel(id) => *id,
            Outgoing::Publish { pkid: None, .. } => panic!("a QoS 0 message in flight"),
        })
        .collect()
}

#[test]
fn ack_of_an_unknown_id_changes_nothing() {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    assert_eq!(s.on_ack(5, AckKind::PubRec), Ok(false), "no window yet");
    s.online = true;
    s.enqueue(msg(1, QoS::ExactlyOnce));
    let id = send(&mut s);
    // An id sharing the delivery's slot (the table has 8 slots at first) and ids never
    // used, 0 included: all unknown, none disturbs the delivery.
    for unknown in [0, id + 8, id + 1, u16::MAX] {
        assert_eq!(s.on_ack(unknown, AckKind::PubRec), Ok(false), "{unknown}");
        assert_eq!(s.on_ack(unknown, AckKind::PubComp), Ok(false), "{unknown}");
        assert!(!s.discard_inflight(unknown));
    }
    assert_eq!((s.inflight_len(), resend_ids(&s)), (1, vec![id]));
    assert_eq!(s.on_ack(id, AckKind::PubRec), Ok(true));
    assert_eq!(s.on_ack(id, AckKind::PubComp), Ok(true));
    assert_eq!(
        s.on_ack(id, AckKind::PubComp),
        Ok(false),
        "already complete"
    );
}

#[test]
fn duplicate_pubrec_keeps_the_delivery_until_pubcomp() {
    let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
    s.online = true;
    s.enqueue(msg(1, QoS::ExactlyOnce));
    s.enqueue(msg(2, QoS::ExactlyOnce));
    let (a, b) = (send(&mut s), send(&mut s));
    for _ in 0..3 {
        assert_eq!(s.on_ack(b, AckKind::PubRec), Ok(true));
    }
    assert!(s.on_pubrec(b), "the old entry point agrees");
    assert_eq!(s.inflight_len(), 2);
    assert!(matches!(s.resend_on_resume()[1], Outgoing::PubRel(id) if id == b));
    assert_eq!(s.on_ack(b, AckKind::PubComp), Ok(true));
    assert_eq!(
        s.on_ack(b, AckKind::PubRec),
        Ok(false),
        "PUBREC after PUBCOMP"
    );
    assert_eq!(resend_ids(&s), vec![a]);
}

#[test]
fn ids_wrap_around_with_deliveries_in_flight() {
    let mut s = SessionState::new(limits(4, 100, OverflowPolicy::DropNew));
    s.online = true;
    s.acks().window.set_next(u16::MAX - 2);
    for n in 0..6 {
        s.enqueue(msg(n, QoS::AtLeastOnce));
    }
    let ids: Vec<u16> = (0..4).map(|_| send(&mut s)).collect();
    assert_eq!(
        ids,
        vec![u16::MAX - 2, u16::MAX - 1, u16::MAX, 1],
        "0 is skipped"
    );
    // Out of order: the newest and an old one, then two more wrap on.
    assert!(s.on_puback(1) && s.on_puback(u16::MAX - 1));
    assert_eq!((send(&mut s), send(&mut s)), (2, 3));
    assert_eq!(resend_ids(&s), vec![u16::MAX - 2, u16::MAX, 2, 3]);
    for id in [u16::MAX, 2, u16::MAX - 2, 3] {
        assert!(s.on_puback(id), "{id}");
    }
    assert_eq!(s.inflight_len(), 0);
    assert!(resend_ids(&s).is_empty());
}

#[test]
fn a_full_window_waits_and_a_stuck_id_is_skipped_not_reused() {
    let mut s = SessionState::new(limits(3, 100, OverflowPolicy::DropNew));
    s.online = true;
    for n in 0..40 {
        s.enqueue(msg(n, QoS::AtLeastOnce));
    }
    let ids: Vec<u16> = (0..3).map(|_| send(&mut s)).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(s.next_outgoing().is_none(), "the window of 3 is full");
    assert_eq!(s.queued_len(), 37);
    // Id 1 is never acknowledged; the others are, in turn. The ids keep going round
    // and skip the slots 1 holds, never handing 1 out again.
    let mut last = 3;
    assert!(s.on_puback(2) && s.on_puback(3));
    for _ in 0..37 {
        let id = send(&mut s);
        assert!(id > last, "round-robin: {id} after {last}");
        assert_ne!(id % 8, 1, "the slot of the stuck id is skipped");
        assert!(s.on_puback(id));
        last = id;
    }
    assert_eq!(resend_ids(&s), vec![1]);
    assert_eq!(
        s.acks().window.capacity(),
        8,
        "three in flight need no more"
    );
}

#[test]
fn the_table_grows_for_a_large_window_and_restored_ids() {
    let mut s = SessionState::new(limits(1000, 2000, OverflowPolicy::DropNew));
    // Restored ids that share a slot at every size up to 8192.
    let restored = [5u16, 5 + 4096, 5 + 2 * 4096];
    for (n, id) in restored.iter().enumerate() {
        s.restore(msg(n as u8, QoS::ExactlyOnce), Some(*id), n == 1);
    }
    assert_eq!(s.acks().window.capacity(), 16_384);
    s.online = true;
    for n in 0..997u16 {
        s.enqueue(msg((n % 200) as u8, QoS::AtLeastOnce));
    }
    let sent: Vec<u16> = (0..997).map(|_| send(&mut s)).collect();
    assert!(s.next_outgoing().is_none(), "1,000 in flight");
    assert!(!sent.contains(&5));
    let mut expected: Vec<u16> = restored.to_vec();
    expected.extend(&sent);
    assert_eq!(resend_ids(&s), expected, "send order, the restored first");
    assert!(matches!(s.resend_on_resume()[1], Outgoing::PubRel(id) if id == restored[1]));
    for id in sent {
        assert!(s.on_puback(id));
    }
    assert_eq!(resend_ids(&s), restored.to_vec());
}

#[test]
fn all_ids_in_flight_means_none_until_one_is_acked() {
    let max = usize::from(u16::MAX);
    let mut s = SessionState::new(limits(max + 1, max + 2, OverflowPolicy::DropNew));
    s.online = true;
    for n in 0..=max {
        s.enqueue(msg((n % 200) as u8, QoS::AtLeastOnce));
    }
    for expected in 1..=u16::MAX {
        assert_eq!(send(&mut s), expected);
    }
    assert!(s.next_outgoing().is_none(), "every id is in flight");
    assert_eq!(s.queued_len(), 1, "the message waits in the queue");
    assert!(s.on_puback(40_000));
    assert_eq!(send(&mut s), 40_000, "the only free id");
}
