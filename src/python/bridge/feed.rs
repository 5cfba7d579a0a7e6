//! In-process subscriptions: the bounded [`Feed`] where a subscription's messages wait
//! for its consumer, and [`SubscriptionFeed`], the consumer's end in Python.
//!
//! Apart from the inbox because messages never travel through it: they stay Rust values
//! here until the consumer takes them, and only a "ready" notice goes to the loop.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::Notify;
use tracing::warn;

use super::records::{message_properties, StrCache};
use crate::broker::session::Queued;

/// Messages an in-process subscription's forwarder moves per turn before it lets the other
/// tasks of its worker run.
pub(super) const MOVE_BATCH: usize = 1024;

// -- in-process subscriptions -----------------------------------------------------------

/// An in-process subscription's messages on their way to its consumer: what the broker has
/// routed to it and the consumer has not taken yet, at most `capacity` (`max_buffered`).
/// Without flow control, a full feed drops its oldest messages and counts them; with flow
/// control nothing is dropped: the forwarder moves no more than there is room for, the
/// rest stays in the session queue, and its publishers wait.
pub struct Feed {
    pub(super) id: u64,
    capacity: usize,
    flow_control: bool,
    state: Mutex<FeedState>,
    /// The consumer took messages: room for the forwarder (flow control).
    pub(super) room: Notify,
}

#[derive(Default)]
struct FeedState {
    queue: VecDeque<Queued>,
    /// Messages the last `take` handed over: the consumer's own buffer, which counts
    /// against `capacity` until it comes for more.
    lent: usize,
    /// A "ready" notice was sent and the consumer has not emptied the feed since.
    signalled: bool,
    dropped: u64,
    /// Dropping since the feed was last empty (logged once per episode).
    overflowing: bool,
}

impl Feed {
    pub fn new(id: u64, capacity: usize, flow_control: bool) -> Arc<Feed> {
        Arc::new(Feed {
            id,
            capacity: capacity.max(1),
            flow_control,
            state: Mutex::new(FeedState::default()),
            room: Notify::new(),
        })
    }

    /// How many messages the forwarder may move now.
    pub(super) fn room_for_more(&self) -> usize {
        if !self.flow_control {
            return MOVE_BATCH;
        }
        let state = self.state.lock();
        self.capacity
            .saturating_sub(state.queue.len() + state.lent)
            .min(MOVE_BATCH)
    }

    /// Adds what the forwarder moved; true when the consumer must be told (the feed was
    /// empty, or emptied, since the last notice).
    pub(super) fn push(&self, batch: &mut Vec<Queued>) -> bool {
        let mut state = self.state.lock();
        state.queue.extend(batch.drain(..));
        let excess = state.queue.len().saturating_sub(self.capacity);
        if excess > 0 {
            // Only without flow control (with it, the forwarder moves what fits).
            state.queue.drain(..excess);
            state.dropped += excess as u64;
            if !std::mem::replace(&mut state.overflowing, true) {
                warn!(
                    subscription = self.id,
                    max_buffered = self.capacity,
                    "in-process subscription full: dropping its oldest messages until the \
                     consumer catches up (counted in Subscription.dropped)"
                );
            }
        }
        !state.queue.is_empty() && !std::mem::replace(&mut state.signalled, true)
    }

    /// Hands up to `max` messages to the consumer, oldest first.
    pub(super) fn take(&self, max: usize) -> Vec<Queued> {
        let mut state = self.state.lock();
        let n = state.queue.len().min(max);
        let taken: Vec<Queued> = state.queue.drain(..n).collect();
        state.lent = n;
        if state.queue.is_empty() {
            // The next message needs a new notice.
            state.signalled = false;
            state.overflowing = false;
        }
        drop(state);
        if self.flow_control {
            self.room.notify_one();
        }
        taken
    }

    pub(super) fn dropped(&self) -> u64 {
        self.state.lock().dropped
    }
}

/// The consumer's end of a [`Feed`], returned by `BrokerCore.subscribe`.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct SubscriptionFeed {
    feed: Arc<Feed>,
}

impl SubscriptionFeed {
    pub fn new(feed: Arc<Feed>) -> SubscriptionFeed {
        SubscriptionFeed { feed }
    }
}

#[pymethods]
impl SubscriptionFeed {
    #[getter]
    fn id(&self) -> u64 {
        self.feed.id
    }

    /// Messages dropped because the feed was full (never with flow control).
    #[getter]
    fn dropped(&self) -> u64 {
        self.feed.dropped()
    }

    /// Up to `max` messages, oldest first, as
    /// `(topic, payload, qos, retain, publisher, properties)`;
    /// empty when there are none (a `MessagesReady` record announces the next ones).
    /// Calling it again says the consumer is done with the previous ones.
    fn take<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let messages = self.feed.take(max);
        // A busy subscription mostly sees the same few topics and publishers: reuse the
        // last Python string instead of building one per message.
        let mut topic_cache = StrCache::default();
        let mut publisher_cache = StrCache::default();
        let items = PyList::empty(py);
        for q in messages {
            let m = &q.msg;
            items.append((
                topic_cache.get(py, &m.topic),
                PyBytes::new(py, &m.payload),
                q.qos as u8,
                // The delivery's flag: 1 only for a replay on subscribe.
                q.retain,
                publisher_cache.get(py, &m.publisher),
                message_properties(py, m)?,
            ))?;
        }
        Ok(items)
    }
}
