//! The hand-off between the broker's tokio threads and the user's asyncio loop.
//!
//! Tokio tasks never call Python. They leave work in the [`Inbox`], in three bounded
//! lanes taken in this order of priority:
//!
//! - control: authentication and authorization requests (each with a reply handle) and
//!   "a publisher may go on" notices. A request waits for room, under its own timeout.
//! - events, for observers. A full lane drops the event, and the router counts it
//!   (`events_dropped` in `Broker.stats()` and `$SYS`) and logs the episode.
//! - data: "messages ready" notices of in-process subscriptions (one per subscription at
//!   most) and `on_message` batches (requests, which wait for room).
//!
//! One dedicated thread takes up to `MAX_ITEMS` items at a time, attaches to the
//! interpreter, builds one small record per item and schedules them with a single
//! `loop.call_soon_threadsafe` (granian's pattern). At most `MAX_IN_FLIGHT` such hand-offs
//! wait in asyncio's queue: each frees its slot when the loop has run it. So when the loop
//! falls behind, work waits here, in bounded lanes, never in asyncio's unbounded queue, and
//! a login is at most a couple of small hand-offs away from its hook whatever else flows.
//!
//! Messages for in-process subscribers do not travel this way at all: they wait in the
//! subscription's own bounded [`Feed`] and become Python objects only when the consumer
//! takes them (`SubscriptionFeed.take`), in the consumer's own step, so a flood costs the
//! loop nothing but a "ready" notice now and then.
//!
//! Python answers requests through `ReplyHandle`, which completes a oneshot the waiting
//! Rust task holds under a timeout: a reply that never comes is a denial, never a hang.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::{oneshot, Notify, Semaphore};
use tracing::{error, info, warn};

use crate::broker::hooks::{
    AuthDecision, AuthRequest, Authenticator, Authorizer, BoxFuture, ClientInfo,
    EnhancedAuthRequest, EnhancedAuthStep, Event, EventSink, Interceptor,
};
use crate::broker::router::{MatchScratch, Session};
use crate::broker::session::{Message, Queued};
use crate::codec::{ConnectReturnCode, QoS};
use crate::python::properties::MessageProperties;

/// Items per hand-off to the loop (one `call_soon_threadsafe`).
const MAX_ITEMS: usize = 256;
/// Messages of `on_message` batches per hand-off (at least one batch goes).
const MAX_INTERCEPTED: usize = 4096;
/// Hand-offs scheduled on the loop and not yet run, at most.
const MAX_IN_FLIGHT: usize = 2;
/// Requests waiting for the dispatch thread, per lane.
const CONTROL_DEPTH: usize = 4096;
const DATA_DEPTH: usize = 1024;
/// Events waiting for the dispatch thread; beyond, events are dropped and counted.
const EVENT_DEPTH: usize = 16_384;
/// Messages an in-process subscription's forwarder moves per turn before it lets the other
/// tasks of its worker run.
const MOVE_BATCH: usize = 1024;
/// How long a stopping bridge waits for the loop to run what it scheduled.
const CLOSING_PATIENCE: Duration = Duration::from_secs(2);

enum Work {
    Auth(AuthRequest, oneshot::Sender<AuthDecision>),
    /// A step of MQTT 5.0 enhanced authentication (python/enhanced_auth.rs).
    EnhancedAuth(EnhancedAuthRequest, oneshot::Sender<EnhancedAuthStep>),
    Subscribe(ClientInfo, ByteString, QoS, oneshot::Sender<Option<QoS>>),
    Publish(ClientInfo, ByteString, oneshot::Sender<bool>),
    Event(Event),
    /// An in-process subscription has messages to take.
    Ready(u64),
    /// A publish from Python that filled a flow-controlled subscription may return now.
    Space(u64),
    Intercept(
        ClientInfo,
        Vec<Arc<Message>>,
        oneshot::Sender<Vec<Option<Arc<Message>>>>,
    ),
}

#[derive(Clone, Copy)]
enum Lane {
    Control,
    Data,
}

#[derive(Default)]
struct Lanes {
    control: VecDeque<Work>,
    events: VecDeque<Event>,
    ready: VecDeque<u64>,
    intercept: VecDeque<Work>,
    /// Hand-offs scheduled on the loop that it has not run yet.
    in_flight: usize,
    closed: bool,
}

impl Lanes {
    fn has_work(&self) -> bool {
        !(self.control.is_empty()
            && self.events.is_empty()
            && self.ready.is_empty()
            && self.intercept.is_empty())
    }

    /// The next hand-off, in priority order; (items, control taken, data requests taken).
    fn take_handoff(&mut self) -> (Vec<Work>, usize, usize) {
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
                    if let Work::Intercept(_, batch, _) = &work {
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
struct Inbox {
    lanes: Mutex<Lanes>,
    /// Signalled when work arrives, a hand-off has run, or the bridge closes.
    wake: Condvar,
    control_room: Semaphore,
    data_room: Semaphore,
}

impl Inbox {
    fn new() -> Inbox {
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
    async fn push(&self, lane: Lane, work: Work) -> Result<(), ()> {
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
    fn push_event(&self, event: Event) -> bool {
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
    fn push_ready(&self, id: u64) {
        let mut lanes = self.lanes.lock();
        if lanes.closed {
            return;
        }
        lanes.ready.push_back(id);
        drop(lanes);
        self.wake.notify_one();
    }

    /// A hand-off has run on the loop (or could not be scheduled): its slot is free.
    fn handed_off(&self) {
        let mut lanes = self.lanes.lock();
        lanes.in_flight = lanes.in_flight.saturating_sub(1);
        drop(lanes);
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lanes.lock().closed = true;
        self.control_room.close();
        self.data_room.close();
        self.wake.notify_one();
    }

    /// Waits for the next hand-off: work, and a free slot on the loop. `None` when the
    /// bridge is closed and its remaining work delivered, or the loop stopped taking it.
    fn next_handoff(&self) -> Option<Vec<Work>> {
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

/// Closes the inbox when the last [`PyBridge`] clone goes, which ends the dispatch thread.
struct Opened(Arc<Inbox>);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.close();
    }
}

enum Reply {
    Auth(oneshot::Sender<AuthDecision>),
    Subscribe(oneshot::Sender<Option<QoS>>),
    Publish(oneshot::Sender<bool>),
    Intercept(
        oneshot::Sender<Vec<Option<Arc<Message>>>>,
        Vec<Arc<Message>>,
    ),
}

/// Python's answer to one request. Dropping it unanswered denies.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ReplyHandle {
    reply: Mutex<Option<Reply>>,
}

#[pymethods]
impl ReplyHandle {
    /// Auth: a CONNACK code (0 accepts, 4 or 5 refuse). Subscribe: the granted QoS or
    /// None. Publish: a bool. A second call is ignored.
    fn resolve(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(reply) = self.reply.lock().take() else {
            return Ok(());
        };
        match reply {
            Reply::Auth(tx) => {
                let code: u8 = value.extract()?;
                let decision = match ConnectReturnCode::from_u8(code) {
                    Some(ConnectReturnCode::Accepted) => AuthDecision::Allow,
                    Some(code) => AuthDecision::Deny(code),
                    None => return Err(PyValueError::new_err(format!("bad CONNACK code {code}"))),
                };
                let _ = tx.send(decision);
            }
            Reply::Subscribe(tx) => {
                let granted = match value.extract::<Option<u8>>()? {
                    None => None,
                    Some(q) => Some(QoS::from_u8(q).ok_or_else(|| {
                        PyValueError::new_err(format!("granted QoS must be 0, 1 or 2, not {q}"))
                    })?),
                };
                let _ = tx.send(granted);
            }
            Reply::Publish(tx) => {
                let _ = tx.send(value.extract::<bool>()?);
            }
            Reply::Intercept(tx, originals) => {
                // One verdict per message: None drops it, True keeps it, and a tuple
                // (topic, payload, qos, retain, properties) replaces it. A replacement
                // that is not a valid message drops that message only.
                let verdicts: Vec<Bound<'_, PyAny>> = value.extract()?;
                if verdicts.len() != originals.len() {
                    return Err(PyValueError::new_err("one verdict per message is required"));
                }
                let mut out = Vec::with_capacity(originals.len());
                for (verdict, original) in verdicts.iter().zip(originals) {
                    out.push(if verdict.is_none() {
                        None
                    } else if let Ok(keep) = verdict.extract::<bool>() {
                        keep.then_some(original)
                    } else {
                        match replacement(verdict, &original) {
                            Ok(message) => Some(message),
                            Err(err) => {
                                warn!(topic = %original.topic, "on_message replacement refused, message dropped: {err}");
                                None
                            }
                        }
                    });
                }
                let _ = tx.send(out);
            }
        }
        Ok(())
    }
}

/// A message an interceptor returned in place of `original`: a tuple
/// `(topic, payload, qos, retain, properties)`, where `properties` is True for "the
/// original's, unchanged" (their bytes are shared, not encoded again), None for none, or
/// a `MessageProperties`, encoded here once.
fn replacement(verdict: &Bound<'_, PyAny>, original: &Message) -> PyResult<Arc<Message>> {
    let (topic, payload, qos, retain, properties): (String, Vec<u8>, u8, bool, Bound<'_, PyAny>) =
        verdict.extract()?;
    crate::topic::validate_topic_name(&topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let properties = if properties.is_none() {
        None
    } else if properties
        .cast::<pyo3::types::PyBool>()
        .is_ok_and(|b| b.is_true())
    {
        original.properties.clone()
    } else {
        properties
            .cast::<MessageProperties>()
            .map_err(|_| PyValueError::new_err("properties must be a MessageProperties or None"))?
            .get()
            .to_wire()?
            .map(crate::broker::session::MessageProperties::new)
    };
    Ok(Arc::new(Message {
        topic: ByteString::from(topic),
        payload: bytes::Bytes::from(payload),
        qos: QoS::from_u8(qos).ok_or_else(|| PyValueError::new_err("qos must be 0, 1 or 2"))?,
        retain,
        publisher: original.publisher.clone(),
        properties,
    }))
}

// -- the records handed to `pyo3mq._dispatch` ------------------------------------------

/// A CONNECT for the authenticator.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct AuthCall {
    client_id: String,
    username: Option<String>,
    /// The client certificate's subject (RFC 4514), on TLS listeners that ask for one.
    certificate_subject: Option<String>,
    password: Option<Py<PyBytes>>,
    peer: (String, u16),
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    protocol: u8,
    reply: Py<ReplyHandle>,
}

/// A subscription for `authorize_subscribe`.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct SubscribeCall {
    client_id: String,
    username: Option<String>,
    /// The client certificate's subject (RFC 4514), on TLS listeners that ask for one.
    certificate_subject: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    protocol: u8,
    filter: String,
    qos: u8,
    reply: Py<ReplyHandle>,
}

/// A topic for `authorize_publish`.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct PublishCall {
    client_id: String,
    username: Option<String>,
    /// The client certificate's subject (RFC 4514), on TLS listeners that ask for one.
    certificate_subject: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    protocol: u8,
    topic: String,
    reply: Py<ReplyHandle>,
}

/// The PUBLISHes of one read from a connection, for `on_message`: a list of
/// `(topic, payload, qos, retain, publisher, properties)`.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct InterceptCall {
    client_id: String,
    username: Option<String>,
    /// The client certificate's subject (RFC 4514), on TLS listeners that ask for one.
    certificate_subject: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    protocol: u8,
    messages: Py<PyList>,
    reply: Py<ReplyHandle>,
}

/// `await broker.publish()` number `token` may return.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct SpaceFreed {
    token: u64,
}

/// In-process subscription `subscription` has messages to take.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct MessagesReady {
    subscription: u64,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct Connected {
    client_id: String,
    username: Option<String>,
    /// The client certificate's subject (RFC 4514), on TLS listeners that ask for one.
    certificate_subject: Option<String>,
    /// 3 (MQTT 3.1), 4 (3.1.1) or 5 (5.0).
    protocol: u8,
    peer: (String, u16),
    clean_session: bool,
    session_present: bool,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct Disconnected {
    client_id: String,
    reason: &'static str,
    /// The 5.0 DISCONNECT's reason code, whichever side sent it; None without one.
    reason_code: Option<u8>,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct Subscribed {
    client_id: String,
    /// (filter, SUBACK code).
    filters: Vec<(String, u8)>,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct Unsubscribed {
    client_id: String,
    filters: Vec<String>,
}

/// What `call_soon_threadsafe` schedules: runs the Python dispatcher over one hand-off,
/// then frees the hand-off's slot.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
struct Handoff {
    dispatch: Py<PyAny>,
    inbox: Arc<Inbox>,
}

#[pymethods]
impl Handoff {
    fn __call__(&self, py: Python<'_>, items: &Bound<'_, PyList>) -> PyResult<()> {
        let result = self.dispatch.bind(py).call1((items,));
        self.inbox.handed_off();
        result.map(drop)
    }
}

// -- in-process subscriptions -----------------------------------------------------------

/// An in-process subscription's messages on their way to its consumer: what the broker has
/// routed to it and the consumer has not taken yet, at most `capacity` (`max_buffered`).
/// Without flow control, a full feed drops its oldest messages and counts them; with flow
/// control nothing is dropped: the forwarder moves no more than there is room for, the
/// rest stays in the session queue, and its publishers wait.
pub struct Feed {
    id: u64,
    capacity: usize,
    flow_control: bool,
    state: Mutex<FeedState>,
    /// The consumer took messages: room for the forwarder (flow control).
    room: Notify,
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
    fn room_for_more(&self) -> usize {
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
    fn push(&self, batch: &mut Vec<Queued>) -> bool {
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
    fn take(&self, max: usize) -> Vec<Queued> {
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

    fn dropped(&self) -> u64 {
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

// -- the bridge -------------------------------------------------------------------------

/// Which hooks Python registered; only those produce work for Python.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub auth: bool,
    pub authorize: bool,
    pub events: bool,
    pub intercept: bool,
}

/// The Rust end of the bridge: implements the broker's hook traits by leaving work for
/// the dispatch thread.
#[derive(Clone)]
pub struct PyBridge {
    inbox: Arc<Inbox>,
    _opened: Arc<Opened>,
}

impl PyBridge {
    /// Starts the dispatch thread, which ends when the last `PyBridge` clone is dropped.
    pub fn start(event_loop: Py<PyAny>, dispatch: Py<PyAny>) -> PyResult<PyBridge> {
        let inbox = Arc::new(Inbox::new());
        let handoff = Python::attach(|py| {
            Py::new(
                py,
                Handoff {
                    dispatch,
                    inbox: inbox.clone(),
                },
            )
        })?;
        let thread_inbox = inbox.clone();
        let spawned = thread::Builder::new()
            .name("pyo3mq-dispatch".into())
            .spawn(move || dispatch_thread(thread_inbox, event_loop, handoff));
        if let Err(err) = spawned {
            error!("cannot start the dispatch thread: {err}");
        }
        Ok(PyBridge {
            _opened: Arc::new(Opened(inbox.clone())),
            inbox,
        })
    }

    async fn request<T>(
        &self,
        lane: Lane,
        work: impl FnOnce(oneshot::Sender<T>) -> Work,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        // Requests wait for room: they are connect-time or cached, never per message
        // (interceptor batches have a lane of their own).
        self.inbox.push(lane, work(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Moves what an in-process subscription's session queues into its feed, and tells
    /// the consumer when there is something to take. Runs on the broker runtime until the
    /// session is released. With flow control it moves only what the feed has room for,
    /// so the backlog stays in the session queue, where it holds up the publishers.
    pub async fn forward(self, feed: Arc<Feed>, session: Arc<Session>) {
        let mut batch = Vec::new();
        loop {
            if session.state.lock().subscriptions.is_empty() {
                return; // released
            }
            let room = feed.room_for_more();
            if room > 0 {
                session.state.lock().take_queued(room, &mut batch);
            }
            if batch.is_empty() {
                tokio::select! {
                    _ = session.notify.notified() => {}
                    _ = feed.room.notified() => {}
                }
                continue;
            }
            if let Some(flow) = &session.flow {
                flow.space.notify_waiters();
            }
            let full_turn = batch.len() == MOVE_BATCH;
            if feed.push(&mut batch) {
                self.inbox.push_ready(feed.id);
            }
            if full_turn {
                // A flood keeps the queue full: let the worker's other tasks run.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Completes Python's `broker.publish` (token `token`) once every flow-controlled
    /// subscription the message filled is below its high water mark again: Python
    /// publishers are slowed exactly like MQTT publishers.
    pub async fn wait_for_space(self, mut scratch: MatchScratch, token: u64) {
        scratch.wait_for_space().await;
        let _ = self.inbox.push(Lane::Control, Work::Space(token)).await;
    }

    /// One step of enhanced authentication, as a control request; `None` when Python
    /// dropped it unanswered.
    pub(crate) async fn enhanced_auth(
        &self,
        request: EnhancedAuthRequest,
    ) -> Option<EnhancedAuthStep> {
        self.request(Lane::Control, |tx| Work::EnhancedAuth(request, tx))
            .await
    }
}

impl Authenticator for PyBridge {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        let bridge = self.clone();
        Box::pin(async move {
            bridge
                .request(Lane::Control, |tx| Work::Auth(request, tx))
                .await
                .unwrap_or(AuthDecision::Deny(ConnectReturnCode::NotAuthorized))
        })
    }
}

impl Authorizer for PyBridge {
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Option<QoS>> {
        let bridge = self.clone();
        let (client, filter) = (client.clone(), ByteString::from(filter));
        Box::pin(async move {
            bridge
                .request(Lane::Control, |tx| Work::Subscribe(client, filter, qos, tx))
                .await
                .flatten()
        })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<bool> {
        let bridge = self.clone();
        let (client, topic) = (client.clone(), ByteString::from(topic));
        Box::pin(async move {
            bridge
                .request(Lane::Control, |tx| Work::Publish(client, topic, tx))
                .await
                .unwrap_or(false)
        })
    }
}

impl Interceptor for PyBridge {
    fn intercept(
        &self,
        client: &ClientInfo,
        batch: Vec<Arc<Message>>,
    ) -> BoxFuture<Vec<Option<Arc<Message>>>> {
        let bridge = self.clone();
        let client = client.clone();
        Box::pin(async move {
            // A failed interceptor drops the batch, like any failed hook denies.
            bridge
                .request(Lane::Data, |tx| Work::Intercept(client, batch, tx))
                .await
                .unwrap_or_default()
        })
    }
}

impl EventSink for PyBridge {
    /// Observers never slow a connection: a full lane refuses the event (the router
    /// counts and logs it).
    fn event(&self, event: Event) -> bool {
        self.inbox.push_event(event)
    }
}

fn dispatch_thread(inbox: Arc<Inbox>, event_loop: Py<PyAny>, handoff: Py<Handoff>) {
    // Waiting holds no interpreter lock: this thread attaches only per hand-off.
    while let Some(work) = inbox.next_handoff() {
        // `try_attach`: once the interpreter is shutting down there is no loop to hand
        // work to; the dropped reply handles deny.
        let attached = Python::try_attach(|py| {
            let result = to_python(py, work).and_then(|items| {
                event_loop.call_method1(py, "call_soon_threadsafe", (handoff.bind(py), items))
            });
            match result {
                Ok(_) => true,
                Err(err) => {
                    // Typically the loop is closed; the dropped reply handles deny.
                    warn!("cannot hand work to the asyncio loop: {err}");
                    false
                }
            }
        });
        match attached {
            Some(true) => {}
            Some(false) => {
                inbox.handed_off();
                if inbox.lanes.lock().closed {
                    return;
                }
            }
            None => return,
        }
    }
    info!("python dispatch thread stopped");
}

fn reply_handle(py: Python<'_>, reply: Reply) -> PyResult<Py<ReplyHandle>> {
    Py::new(
        py,
        ReplyHandle {
            reply: Mutex::new(Some(reply)),
        },
    )
}

fn username(client: &ClientInfo) -> Option<String> {
    client.username.as_deref().map(str::to_owned)
}

fn subject(client: &ClientInfo) -> Option<String> {
    client.certificate_subject.as_deref().map(str::to_owned)
}

/// The protocol level Python sees: 3, 4 or 5 (a bridge's 3.1.1 is 4).
fn protocol_of(client: &ClientInfo) -> u8 {
    client.protocol.base().level()
}

fn peer_of(peer: std::net::SocketAddr) -> (String, u16) {
    (peer.ip().to_string(), peer.port())
}

/// Builds the hand-off: one record per item, for `pyo3mq._dispatch`.
fn to_python(py: Python<'_>, work: Vec<Work>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for item in work {
        let record: Bound<'_, PyAny> = match item {
            Work::Auth(req, tx) => Bound::new(
                py,
                AuthCall {
                    client_id: req.client_id.to_string(),
                    username: req.username.as_deref().map(str::to_owned),
                    certificate_subject: req.certificate_subject.as_deref().map(str::to_owned),
                    password: req
                        .password
                        .as_deref()
                        .map(|p| PyBytes::new(py, p).unbind()),
                    peer: peer_of(req.peer),
                    protocol: req.protocol.base().level(),
                    reply: reply_handle(py, Reply::Auth(tx))?,
                },
            )?
            .into_any(),
            Work::Subscribe(client, filter, qos, tx) => Bound::new(
                py,
                SubscribeCall {
                    client_id: client.client_id.to_string(),
                    username: username(&client),
                    certificate_subject: subject(&client),
                    protocol: protocol_of(&client),
                    filter: filter.to_string(),
                    qos: qos as u8,
                    reply: reply_handle(py, Reply::Subscribe(tx))?,
                },
            )?
            .into_any(),
            Work::Publish(client, topic, tx) => Bound::new(
                py,
                PublishCall {
                    client_id: client.client_id.to_string(),
                    username: username(&client),
                    certificate_subject: subject(&client),
                    protocol: protocol_of(&client),
                    topic: topic.to_string(),
                    reply: reply_handle(py, Reply::Publish(tx))?,
                },
            )?
            .into_any(),
            Work::EnhancedAuth(request, tx) => {
                crate::python::enhanced_auth::record(py, request, tx)?
            }
            Work::Event(event) => event_record(py, event)?,
            Work::Ready(subscription) => Bound::new(py, MessagesReady { subscription })?.into_any(),
            Work::Space(token) => Bound::new(py, SpaceFreed { token })?.into_any(),
            Work::Intercept(client, batch, tx) => {
                let messages = PyList::empty(py);
                for m in &batch {
                    messages.append(message_tuple(py, m)?)?;
                }
                Bound::new(
                    py,
                    InterceptCall {
                        client_id: client.client_id.to_string(),
                        username: username(&client),
                        certificate_subject: subject(&client),
                        protocol: protocol_of(&client),
                        messages: messages.unbind(),
                        reply: reply_handle(py, Reply::Intercept(tx, batch))?,
                    },
                )?
                .into_any()
            }
        };
        list.append(record)?;
    }
    Ok(list)
}

fn message_tuple<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyTuple>> {
    (
        m.topic.deref(),
        PyBytes::new(py, &m.payload),
        m.qos as u8,
        m.retain,
        m.publisher.deref(),
        message_properties(py, m)?,
    )
        .into_pyobject(py)
}

/// A message's MQTT 5.0 properties as a `pyo3mq.MessageProperties`, or None. Decoded
/// here, when the message becomes a Python object: routing never decodes them, and a
/// message without properties (every 3.1.1 one) costs a None.
fn message_properties(py: Python<'_>, m: &Message) -> PyResult<Option<Py<MessageProperties>>> {
    let Some(bytes) = &m.properties else {
        return Ok(None);
    };
    match MessageProperties::from_wire(bytes.bytes()) {
        Ok(props) => Py::new(py, props).map(Some),
        Err(err) => {
            // They were checked when they came in: this is a bug, not bad input.
            error!(topic = %m.topic, "cannot decode a routed message's properties: {err}");
            Ok(None)
        }
    }
}

/// The Python string made for the last `ByteString` seen, reused while it repeats.
#[derive(Default)]
struct StrCache {
    last: Option<(ByteString, Py<PyString>)>,
}

impl StrCache {
    fn get<'py>(&mut self, py: Python<'py>, text: &ByteString) -> Bound<'py, PyString> {
        if let Some((seen, string)) = &self.last {
            if seen == text {
                return string.bind(py).clone();
            }
        }
        let string = PyString::new(py, text);
        self.last = Some((text.clone(), string.clone().unbind()));
        string
    }
}

fn event_record(py: Python<'_>, event: Event) -> PyResult<Bound<'_, PyAny>> {
    Ok(match event {
        Event::Connected {
            client,
            peer,
            clean_session,
            session_present,
        } => Bound::new(
            py,
            Connected {
                client_id: client.client_id.to_string(),
                username: username(&client),
                certificate_subject: subject(&client),
                protocol: protocol_of(&client),
                peer: peer_of(peer),
                clean_session,
                session_present,
            },
        )?
        .into_any(),
        Event::Disconnected {
            client_id,
            reason,
            reason_code,
        } => Bound::new(
            py,
            Disconnected {
                client_id: client_id.to_string(),
                reason: reason.as_str(),
                reason_code,
            },
        )?
        .into_any(),
        Event::Subscribed { client_id, filters } => Bound::new(
            py,
            Subscribed {
                client_id: client_id.to_string(),
                filters: filters.iter().map(|(f, c)| (f.to_string(), *c)).collect(),
            },
        )?
        .into_any(),
        Event::Unsubscribed { client_id, filters } => Bound::new(
            py,
            Unsubscribed {
                client_id: client_id.to_string(),
                filters: filters.iter().map(|f| f.to_string()).collect(),
            },
        )?
        .into_any(),
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReplyHandle>()?;
    m.add_class::<SubscriptionFeed>()?;
    m.add_class::<AuthCall>()?;
    m.add_class::<SubscribeCall>()?;
    m.add_class::<PublishCall>()?;
    m.add_class::<InterceptCall>()?;
    m.add_class::<SpaceFreed>()?;
    m.add_class::<MessagesReady>()?;
    m.add_class::<Connected>()?;
    m.add_class::<Disconnected>()?;
    m.add_class::<Subscribed>()?;
    m.add_class::<Unsubscribed>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::hooks::DisconnectReason;

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
        let client = ClientInfo {
            client_id: ByteString::from_static("c"),
            username: None,
            certificate_subject: None,
            protocol: crate::codec::Protocol::V311,
        };
        lanes
            .intercept
            .push_back(Work::Intercept(client, Vec::new(), tx));
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
}
