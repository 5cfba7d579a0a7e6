//! The inbox: the bounded lanes where tokio tasks leave work for Python (control,
//! events, data) and where the dispatch thread takes it, one hand-off at a time.
//!
//! Apart from the bridge because it is plain Rust with no Python in it: its priorities
//! and bounds are tested here without an interpreter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::{Condvar, Mutex};
use tokio::sync::{oneshot, Semaphore};

use crate::broker::hooks::{
    AuthDecision, AuthRequest, ClientInfo, EnhancedAuthRequest, EnhancedAuthStep, Event, Verdict,
};
use crate::broker::session::Message;
use crate::codec::QoS;

/// Items per hand-off to the loop (one `call_soon_threadsafe`).
pub(super) const MAX_ITEMS: usize = 256;
/// Messages of `on_message` batches per hand-off (at least one batch goes).
const MAX_INTERCEPTED: usize = 4096;
/// Hand-offs scheduled on the loop and not yet run, at most.
pub(super) const MAX_IN_FLIGHT: usize = 2;
/// Requests waiting for the dispatch thread, per lane.
const CONTROL_DEPTH: usize = 4096;
const DATA_DEPTH: usize = 1024;
/// Events waiting for the dispatch thread; beyond, events are dropped and counted.
pub(super) const EVENT_DEPTH: usize = 16_384;
/// How long a stopping bridge waits for the loop to run what it scheduled.
const CLOSING_PATIENCE: Duration = Duration::from_secs(2);

pub(super) enum Work {
    Auth(AuthRequest, oneshot::Sender<AuthDecision>),
    /// A step of MQTT 5.0 enhanced authentication (python/bridge/enhanced_auth.rs).
    EnhancedAuth(EnhancedAuthRequest, oneshot::Sender<EnhancedAuthStep>),
    Subscribe(ClientInfo, ByteString, QoS, oneshot::Sender<Verdict<QoS>>),
    Publish(ClientInfo, ByteString, oneshot::Sender<Verdict>),
    Event(Event),
    /// An in-process subscription has messages to take.
    Ready(u64),
    /// A publish from Python that filled a flow-controlled subscription may return now.
    Space(u64),
    /// The PUBLISHes of one read, for `on_message` (which is not told who sent them
    /// beyond each message's publisher).
    Intercept(
        Vec<Arc<Message>>,
        oneshot::Sender<Vec<Option<Arc<Message>>>>,
    ),
}

#[derive(Clone, Copy)]
pub(super) enum Lane {
    Control,
    Data,
}

#[derive(Default)]
pub(super) struct Lanes {
    pub(super) control: VecDeque<Work>,
    pub(super) events: VecDeque<Event>,
    pub(super) ready: VecDeque<u64>,
    pub(super) intercept: VecDeque<Work>,
    /// Hand-offs scheduled on the loop that it has not run yet.
    in_flight: usize,
    pub(super) closed: bool,
}

impl Lanes {
    pub(super) fn has_work(&self) -> bool {
        !(self.control.is_empty()
            && self.events.is_empty()
            && self.ready.is_empty()
            && self.intercept.is_empty())
    }

    /// The next hand-off, in priority order; (items, control taken, data requests taken).
    pub(super) fn take_handoff(&mut self) -> (Vec<Work>, usize, usize) {
        let mut items = Vec::new();
        while items.len() < MAX_ITEMS {
            match self.control.pop_front() {
                Some(work) => items.push(work),
                None => break,
            }
        }
        let control = items.len();
        while items.len() < MAX_ITEMS {
            match self.events.pop_front() {
                Some(event) => items.push(Work::Event(event)),
                None => break,
            }
        }
        while items.len() < MAX_ITEMS {
            match self.ready.pop_front() {
                Some(id) => items.push(Work::Ready(id)),
                None => break,
            }
        }
        let mut data = 0;
        let mut messages = 0;
        while items.len() < MAX_ITEMS && messages < MAX_INTERCEPTED {
            match self.intercept.pop_front() {
                Some(work) => {
                    if let Work::Intercept(batch, _) = &work {
                        messages += batch.len();
                    }
                    items.push(work);
                    data += 1;
                }
                None => break,
            }
        }
        (items, control, data)
    }
}

/// Where tokio tasks leave work for Python, and where the dispatch thread waits for it.
pub(super) struct Inbox {
    pub(super) lanes: Mutex<Lanes>,
    /// Signalled when work arrives, a hand-off has run, or the bridge closes.
    wake: Condvar,
    control_room: Semaphore,
    data_room: Semaphore,
}

impl Inbox {
    pub(super) fn new() -> Inbox {
        Inbox {
            lanes: Mutex::new(Lanes::default()),
            wake: Condvar::new(),
            control_room: Semaphore::new(CONTROL_DEPTH),
            data_room: Semaphore::new(DATA_DEPTH),
        }
    }

    fn room(&self, lane: Lane) -> &Semaphore {
        match lane {
            Lane::Control => &self.control_room,
            Lane::Data => &self.data_room,
        }
    }

    /// Queues a request once its lane has room; `Err` once the bridge is closed.
    pub(super) async fn push(&self, lane: Lane, work: Work) -> Result<(), ()> {
        self.room(lane).acquire().await.map_err(|_| ())?.forget();
        let mut lanes = self.lanes.lock();
        if lanes.closed {
            return Err(());
        }
        match lane {
            Lane::Control => lanes.control.push_back(work),
            Lane::Data => lanes.intercept.push_back(work),
        }
        drop(lanes);
        self.wake.notify_one();
        Ok(())
    }

    /// Offers an event without waiting: false when the events lane is full (or closed).
    pub(super) fn push_event(&self, event: Event) -> bool {
        let mut lanes = self.lanes.lock();
        if lanes.closed || lanes.events.len() >= EVENT_DEPTH {
            return false;
        }
        lanes.events.push_back(event);
        drop(lanes);
        self.wake.notify_one();
        true
    }

    /// Tells Python that subscription `id` has messages. Bounded without a limit here: a
    /// feed sends one notice and no other until its consumer has emptied it.
    pub(super) fn push_ready(&self, id: u64) {
        let mut lanes = self.lanes.lock();
        if lanes.closed {
            return;
        }
        lanes.ready.push_back(id);
        drop(lanes);
        self.wake.notify_one();
    }

    /// A hand-off has run on the loop (or could not be scheduled): its slot is free.
    pub(super) fn handed_off(&self) {
        let mut lanes = self.lanes.lock();
        lanes.in_flight = lanes.in_flight.saturating_sub(1);
        drop(lanes);
        self.wake.notify_one();
    }

    pub(super) fn close(&self) {
        self.lanes.lock().closed = true;
        self.control_room.close();
        self.data_room.close();
        self.wake.notify_one();
    }

    /// Waits for the next hand-off: work, and a free slot on the loop. `None` when the
    /// bridge is closed and its remaining work delivered, or the loop stopped taking it.
    pub(super) fn next_handoff(&self) -> Option<Vec<Work>> {
        let mut lanes = self.lanes.lock();
        loop {
            if lanes.has_work() && lanes.in_flight < MAX_IN_FLIGHT {
                break;
            }
            if lanes.closed {
                if !lanes.has_work() {
                    return None;
                }
                // Stopping: what is left (the last disconnect events) still goes, unless
                // the loop no longer runs what it was given.
                if self.wake.wait_for(&mut lanes, CLOSING_PATIENCE).timed_out()
                    && lanes.in_flight >= MAX_IN_FLIGHT
                {
                    return None;
                }
                continue;
            }
            self.wake.wait(&mut lanes);
        }
        lanes.in_flight += 1;
        let (items, control, data) = lanes.take_handoff();
        drop(lanes);
        self.control_room.add_permits(control);
        self.data_room.add_permits(data);
        Some(items)
    }
}

/// Closes the inbox when the last [`PyBridge`](super::PyBridge) clone goes, which ends the
/// dispatch thread.
pub(super) struct Opened(pub(super) Arc<Inbox>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.close();
    }
}
