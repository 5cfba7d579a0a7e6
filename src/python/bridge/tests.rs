//! Unit tests of the bridge's inbox (priorities, bounds, hand-offs in flight) and of the
//! in-process subscription feeds; kept apart so the modules read as code.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::oneshot;

use super::feed::Feed;
use super::inbox::{Inbox, Lanes, Work, EVENT_DEPTH, MAX_IN_FLIGHT, MAX_ITEMS};
use crate::broker::hooks::{DisconnectReason, Event};
use crate::broker::session::{Message, Queued};
use crate::codec::QoS;

fn gone(n: usize) -> Event {
    Event::Disconnected {
        client_id: ByteString::from(format!("c{n}")),
        reason: DisconnectReason::Clean,
        reason_code: None,
    }
}

fn kinds(items: &[Work]) -> Vec<&'static str> {
    items
        .iter()
        .map(|w| match w {
            Work::Space(_)
            | Work::Auth(..)
            | Work::EnhancedAuth(..)
            | Work::Subscribe(..)
            | Work::Publish(..) => "control",
            Work::Event(_) => "event",
            Work::Ready(_) => "ready",
            Work::Intercept(..) => "intercept",
        })
        .collect()
}

/// Requests go first, then events, then data, whatever the order they came in; a
/// hand-off holds at most `MAX_ITEMS`.
#[test]
fn handoffs_put_control_first_and_are_bounded() {
    let mut lanes = Lanes::default();
    let (tx, _rx) = oneshot::channel();
    lanes.intercept.push_back(Work::Intercept(Vec::new(), tx));
    lanes.ready.push_back(7);
    for n in 0..MAX_ITEMS {
        lanes.events.push_back(gone(n));
    }
    lanes.control.push_back(Work::Space(1));
    lanes.control.push_back(Work::Space(2));
    let (items, control, data) = lanes.take_handoff();
    assert_eq!(items.len(), MAX_ITEMS);
    assert_eq!((control, data), (2, 0));
    assert_eq!(kinds(&items[..3]), ["control", "control", "event"]);
    // What did not fit goes next, still in order.
    let (items, control, data) = lanes.take_handoff();
    assert_eq!(kinds(&items), ["event", "event", "ready", "intercept"]);
    assert_eq!((control, data), (0, 1));
    assert!(!lanes.has_work());
}

#[test]
fn a_full_event_lane_refuses() {
    let inbox = Inbox::new();
    for n in 0..EVENT_DEPTH {
        assert!(inbox.push_event(gone(n)));
    }
    assert!(!inbox.push_event(gone(0)));
    let closed = Inbox::new();
    closed.close();
    assert!(!closed.push_event(gone(0)));
}

/// No more than `MAX_IN_FLIGHT` hand-offs are out at once: the next one waits until
/// the loop has run one.
#[test]
fn handoffs_wait_for_the_loop() {
    let inbox = Arc::new(Inbox::new());
    for n in 0..MAX_IN_FLIGHT {
        assert!(inbox.push_event(gone(n)));
        assert!(inbox.next_handoff().is_some());
    }
    assert!(inbox.push_event(gone(99)));
    let (done, next) = std::sync::mpsc::channel();
    let waiting = {
        let inbox = inbox.clone();
        thread::spawn(move || {
            let _ = done.send(inbox.next_handoff().map(|items| items.len()));
        })
    };
    let patience = Duration::from_millis(200);
    assert!(
        next.recv_timeout(patience).is_err(),
        "a third hand-off went out"
    );
    inbox.handed_off();
    assert_eq!(next.recv_timeout(Duration::from_secs(10)), Ok(Some(1)));
    waiting.join().unwrap();
    // Closed with nothing left: the dispatch thread ends.
    inbox.close();
    assert!(inbox.next_handoff().is_none());
}

/// Without flow control a full feed drops its oldest messages and counts them; with
/// flow control the forwarder only moves what the consumer has room for, the batch
/// the consumer holds included.
#[test]
fn feeds_bound_what_waits_for_the_consumer() {
    let queued = |n: u8| Queued {
        msg: Arc::new(Message {
            topic: ByteString::from_static("t"),
            payload: bytes::Bytes::from(vec![n]),
            qos: QoS::AtMostOnce,
            retain: false,
            publisher: ByteString::new(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        }),
        qos: QoS::AtMostOnce,
        retain: false,
        share: None,
    };
    let drop_mode = Feed::new(1, 3, false);
    let mut batch: Vec<Queued> = (0..5).map(queued).collect();
    assert!(
        drop_mode.push(&mut batch),
        "the first messages announce themselves"
    );
    assert!(
        !drop_mode.push(&mut vec![queued(5)]),
        "announced once until emptied"
    );
    assert_eq!(drop_mode.dropped(), 3);
    let taken: Vec<u8> = drop_mode
        .take(10)
        .iter()
        .map(|q| q.msg.payload[0])
        .collect();
    assert_eq!(taken, [3, 4, 5]);
    assert!(
        drop_mode.push(&mut vec![queued(6)]),
        "emptied: the next is announced"
    );

    let flow = Feed::new(2, 4, true);
    assert_eq!(flow.room_for_more(), 4);
    flow.push(&mut (0..4).map(queued).collect());
    assert_eq!(flow.room_for_more(), 0);
    assert_eq!(flow.take(2).len(), 2);
    // Two wait in the feed and two in the consumer's hands.
    assert_eq!(flow.room_for_more(), 0);
    assert_eq!(flow.take(2).len(), 2);
    assert_eq!(flow.room_for_more(), 2);
    assert_eq!(flow.take(2).len(), 0);
    assert_eq!(flow.room_for_more(), 4);
    assert_eq!(flow.dropped(), 0);
}
