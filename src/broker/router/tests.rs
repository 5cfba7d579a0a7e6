use std::sync::atomic::AtomicBool;

use super::*;
use crate::broker::hooks::{DisconnectReason, EventSink};

/// An observer whose queue is full while `full` is set.
struct Observer {
    full: AtomicBool,
    seen: AtomicU64,
}

impl EventSink for Observer {
    fn event(&self, _event: Event) -> bool {
        if self.full.load(Ordering::Relaxed) {
            return false;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        true
    }
}

fn gone() -> Event {
    Event::Disconnected {
        client_id: ByteString::from_static("c"),
        reason: DisconnectReason::Clean,
        reason_code: None,
    }
}

#[test]
fn events_a_full_observer_refuses_are_counted() {
    let observer = Arc::new(Observer {
        full: AtomicBool::new(false),
        seen: AtomicU64::new(0),
    });
    let hooks = Hooks {
        events: Some(observer.clone()),
        ..Hooks::default()
    };
    let router = Router::new(Config::default(), hooks);
    router.emit(gone);
    observer.full.store(true, Ordering::Relaxed);
    router.emit(gone);
    router.emit(gone);
    assert_eq!(router.events_dropped(), 2);
    assert!(router.events_overflowing.load(Ordering::Relaxed));
    observer.full.store(false, Ordering::Relaxed);
    router.emit(gone);
    assert_eq!(router.events_dropped(), 2);
    assert!(!router.events_overflowing.load(Ordering::Relaxed));
    assert_eq!(observer.seen.load(Ordering::Relaxed), 2);
}

/// A flow-controlled in-process session bounds its queue for a publisher that does
/// not wait (as the `$SYS` publisher does not): the excess is counted as dropped.
#[test]
fn flow_controlled_queue_is_bounded_for_publishers_that_do_not_wait() {
    let router = Router::new(Config::default(), Hooks::default());
    let session = router.internal_session("$internal/1", Some(10));
    router
        .subscribe(&session, &ByteString::from_static("f/#"), QoS::AtMostOnce)
        .unwrap();
    let limit = session.flow.as_ref().unwrap().limit;
    assert_eq!(limit, 10 + FLOW_OVERSHOOT);
    let mut scratch = MatchScratch::default();
    for _ in 0..limit + 100 {
        let msg = Arc::new(Message {
            topic: ByteString::from_static("f/x"),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            publisher: ByteString::new(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        });
        router.publish(msg, &mut scratch);
        scratch.clear_blocked();
    }
    assert_eq!(session.state.lock().queued_len(), limit);
    assert_eq!(router.dropped_messages(), 100);
}
