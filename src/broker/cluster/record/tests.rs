use super::*;
use crate::codec::{RetainHandling, SubscriptionOptions};
use proptest::prelude::*;

fn opts(no_local: bool, rap: bool, handling: RetainHandling, id: u32) -> SubOpts {
    let options = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        no_local,
        retain_as_published: rap,
        retain_handling: handling,
    };
    SubOpts::new(&options, NonZeroU32::new(id))
}

fn sub(filter: &'static str, qos: QoS, opts: SubOpts) -> Sub {
    Sub {
        filter: ByteString::from_static(filter),
        qos,
        opts,
    }
}

fn record(subscriptions: Vec<Sub>) -> Record {
    Record {
        owner: 0xfeed,
        clean: false,
        subscriptions,
        pending: vec![StoredMessage {
            msg: Arc::new(Message {
                topic: ByteString::from_static("a/x/b"),
                payload: Bytes::from_static(b"payload"),
                qos: QoS::ExactlyOnce,
                retain: false,
                publisher: ByteString::new(),
                properties: None,
                mark: crate::broker::session::StreamMark::NONE,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            pkid: Some(7),
            released: false,
        }],
        will: Some(Will {
            topic: ByteString::from_static("w/t"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            delay: 30,
        }),
        expiry: Some(120),
        offline_since: 1_700_000_000,
        checkpoint: Some(Cut {
            stream: 42,
            owner: 0xfeed,
            origin_seq: 7,
            stored: 40,
        }),
    }
}

fn plain() -> Record {
    record(vec![
        sub("a/+/b", QoS::AtLeastOnce, SubOpts::default()),
        sub("line\nbreak/#", QoS::ExactlyOnce, SubOpts::default()),
    ])
}

fn with_options() -> Record {
    record(vec![
        sub("a/+/b", QoS::AtLeastOnce, SubOpts::default()),
        sub(
            "n/#",
            QoS::ExactlyOnce,
            opts(true, true, RetainHandling::DoNotSend, 268_435_455),
        ),
        sub(
            "i/d",
            QoS::AtMostOnce,
            opts(false, false, RetainHandling::SendIfNew, 1),
        ),
        sub(
            "r/a/p",
            QoS::AtLeastOnce,
            opts(false, true, RetainHandling::SendAtSubscribe, 0),
        ),
    ])
}

#[test]
fn records_with_options_round_trip_as_format_4() {
    let record = with_options();
    let encoded = record.encode();
    assert_eq!(encoded[..2], [b'P', 4]);
    assert_eq!(Record::read(encoded.clone()), Ok(record.clone()));
    for cut in 0..encoded.len() {
        assert!(Record::decode(encoded.slice(..cut)).is_none(), "{cut}");
    }
    // Options kept per subscription into the session a node takes in.
    let snapshot = record.clone().snapshot(&ByteString::from_static("c"));
    assert_eq!(snapshot.session_expiry, Some(120));
    assert_eq!(snapshot.disconnected_at, Some(1_700_000_000));
    assert_eq!(snapshot.subscriptions.len(), 4);
    assert_eq!(
        snapshot.subscription_options,
        record.subscriptions[1..]
            .iter()
            .map(|s| (s.filter.clone(), s.opts))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        Record::subscriptions_of_snapshot(&snapshot),
        record.subscriptions
    );
}

/// A 5.0 message queued for a session: a user property, the identifiers it was routed
/// with, and a Message Expiry Interval if `expiry`.
fn with_properties(expiry: bool) -> StoredMessage {
    let mut props = vec![0x26, 0, 1, b'k', 0, 1, b'v', 0x0b, 7, 0x0b, 9];
    if expiry {
        props.extend_from_slice(&[0x02, 0, 0, 0, 60]);
    }
    StoredMessage {
        msg: Arc::new(Message {
            topic: ByteString::from_static("n/x"),
            payload: Bytes::from_static(b"five"),
            qos: QoS::AtLeastOnce,
            retain: false,
            publisher: ByteString::new(),
            properties: Some(MessageProperties::new(Bytes::from(props))),
            mark: crate::broker::session::StreamMark::NONE,
        }),
        qos: QoS::AtLeastOnce,
        retain: false,
        pkid: None,
        released: false,
    }
}

#[test]
fn pending_messages_keep_their_properties() {
    let mut record = plain();
    record.pending.push(with_properties(false));
    let encoded = record.encode();
    assert_eq!(encoded[..2], [b'P', 4]);
    assert_eq!(Record::read(encoded), Ok(record.clone()));
    // With an expiry: its deadline (Unix ms, each side converted from the process's
    // clock at the call, so within a moment of each other).
    record.pending[1] = with_properties(true);
    let back = Record::read(record.encode()).expect("read");
    let (sent, read) = (&record.pending[1].msg, &back.pending[1].msg);
    assert_eq!(
        sent.properties.as_ref().map(|p| p.bytes()),
        read.properties.as_ref().map(|p| p.bytes())
    );
    let deadline = |m: &Message| {
        m.properties
            .as_ref()
            .and_then(MessageProperties::expires_at)
    };
    let (Some(sent), Some(read)) = (deadline(sent), deadline(read)) else {
        panic!("an expiry lost: {:?}", back.pending[1]);
    };
    assert!(sent.abs_diff(read) < 1000, "{sent} {read}");
    // Properties a PUBLISH could not carry are not taken in.
    let mut bad = plain();
    bad.pending.push(StoredMessage {
        msg: Arc::new(Message {
            properties: Some(MessageProperties::new(Bytes::from_static(b"\x0b\x00"))),
            ..Message::clone(&with_properties(false).msg)
        }),
        ..with_properties(false)
    });
    assert_eq!(Record::read(bad.encode()), Err(Unreadable::Corrupt));
}

#[test]
fn while_an_older_node_is_live_records_are_written_as_format_3() {
    // Subscription options: dropped, the rest byte for byte what format 3 carries.
    let record = with_options();
    let old = record.encode_for(3);
    assert_eq!(old[..2], [b'P', 3]);
    let defaults: Vec<Sub> = record.subscriptions.iter().map(sub_default).collect();
    assert_eq!(
        Record::read(old.clone()),
        Ok(Record {
            subscriptions: defaults.clone(),
            ..record.clone()
        })
    );
    assert_eq!(
        old,
        Record {
            subscriptions: defaults,
            ..record.clone()
        }
        .encode()
    );
    // A pending message's properties: dropped, the message kept.
    let mut pending = plain();
    pending.pending.push(with_properties(true));
    let back = Record::read(pending.encode_for(3)).expect("read");
    assert_eq!(back.pending.len(), 2);
    assert!(back.pending[1].msg.properties.is_none());
    assert_eq!(back.pending[1].msg.payload, pending.pending[1].msg.payload);
    // Nothing to drop: the same bytes whatever the nodes read.
    assert_eq!(plain().encode_for(3), plain().encode_for(NEWEST));
    // Once every node reads format 4, it is written.
    assert_eq!(record.encode_for(4)[..2], [b'P', 4]);
    assert_eq!(record.encode_for(NEWEST), record.encode());
}

#[test]
fn records_without_options_stay_format_3_and_older_formats_read() {
    let record = plain();
    let encoded = record.encode();
    // Byte for byte what a format 3 node writes and reads: a filter's QoS byte, then it.
    assert_eq!(encoded[..2], [b'P', 3]);
    assert_eq!(&encoded[15..20], b"\x01\x00\x00\x00\x05");
    assert_eq!(Record::read(encoded.clone()), Ok(record.clone()));
    // A format 3 record whose session made 5.0 subscriptions before format 4 existed:
    // read with the default options.
    let mut opts = with_options();
    let defaults: Vec<Sub> = opts.subscriptions.iter().map(sub_default).collect();
    opts.subscriptions = defaults;
    assert_eq!(Record::read(opts.encode()), Ok(opts));
    // The first format (no will, expiry or offline time) is still read.
    let v1 = Record {
        will: None,
        expiry: None,
        offline_since: 0,
        checkpoint: None,
        ..record.clone()
    };
    let mut old = BytesMut::from(&v1.encode()[..]);
    old.truncate(old.len() - 2 - 1 - 8);
    old[1] = 1;
    assert_eq!(Record::read(old.freeze()), Ok(v1));
    // The second (no checkpoint) too.
    let v2 = Record {
        checkpoint: None,
        ..record.clone()
    };
    let encoded = v2.encode();
    let mut old = BytesMut::from(&encoded[..encoded.len() - 9]);
    old.put_slice(&encoded[encoded.len() - 8..]);
    old[1] = 2;
    assert_eq!(Record::read(old.freeze()), Ok(v2));
}

fn sub_default(s: &Sub) -> Sub {
    Sub {
        opts: SubOpts::default(),
        ..s.clone()
    }
}

#[test]
fn unreadable_records_say_why() {
    let mut newer = BytesMut::from(&with_options().encode()[..]);
    newer[1] = 5;
    assert_eq!(Record::read(newer.freeze()), Err(Unreadable::Newer(5)));
    assert_eq!(
        Record::read(Bytes::from_static(b"P\xff")),
        Err(Unreadable::Newer(255))
    );
    for junk in [&b""[..], b"junk", b"P\x00", b"Q\x03", b"P\x04"] {
        assert_eq!(
            Record::read(Bytes::copy_from_slice(junk)),
            Err(Unreadable::Corrupt),
            "{junk:?}"
        );
    }
    // Trailing bytes, an options byte a SUBSCRIBE could not carry, identifier 0.
    let mut long = BytesMut::from(&plain().encode()[..]);
    long.put_u8(0);
    assert_eq!(Record::read(long.freeze()), Err(Unreadable::Corrupt));
    let one = record(vec![sub(
        "t",
        QoS::AtLeastOnce,
        opts(true, false, RetainHandling::SendAtSubscribe, 9),
    )]);
    let encoded = one.encode();
    assert_eq!(encoded[15], 0x80 | 0x04 | 1);
    // Byte 15 is the options byte, 16..20 the identifier.
    let broken = |at: usize, bytes: &[u8]| {
        let mut broken = BytesMut::from(&encoded[..]);
        broken[at..at + bytes.len()].copy_from_slice(bytes);
        Record::read(broken.freeze())
    };
    assert_eq!(broken(16, &[0, 0, 0, 9]), Ok(one.clone()));
    // Retain Handling 3, a reserved bit, QoS 3, identifier 0.
    for (at, bytes) in [
        (15, &[0x80 | 0x30 | 1][..]),
        (15, &[0x80 | 0x40 | 0x04 | 1]),
        (15, &[0x80 | 0x04 | 3]),
        (16, &[0, 0, 0, 0]),
    ] {
        assert_eq!(
            broken(at, bytes),
            Err(Unreadable::Corrupt),
            "{at} {bytes:?}"
        );
    }
}

fn any_opts() -> impl Strategy<Value = SubOpts> {
    (
        any::<bool>(),
        any::<bool>(),
        0u8..3,
        prop_oneof![Just(0u32), 1u32..=268_435_455],
    )
        .prop_map(|(no_local, rap, handling, id)| {
            let handling = match handling {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            };
            opts(no_local, rap, handling, id)
        })
}

fn any_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_record_round_trips(
        subs in proptest::collection::vec(("[a-z/+#]{0,12}", any_qos(), any_opts()), 0..6),
        clean in any::<bool>(),
        expiry in proptest::option::of(any::<u32>()),
        offline_since in any::<u64>(),
    ) {
        let record = Record {
            clean,
            expiry,
            offline_since,
            subscriptions: subs
                .into_iter()
                .map(|(filter, qos, opts)| Sub { filter: ByteString::from(filter), qos, opts })
                .collect(),
            ..plain()
        };
        let encoded = record.encode();
        let options = record.subscriptions.iter().any(|s| !s.opts.is_default());
        prop_assert_eq!(encoded[1], if options { 4 } else { 3 });
        prop_assert_eq!(Record::read(encoded), Ok(record));
    }
}
