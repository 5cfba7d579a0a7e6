//! The hand-off between the broker's tokio threads and the user's asyncio loop.
//!
//! Tokio tasks never call Python. They leave work in the [`Inbox`], in three bounded
//! lanes taken in this order of priority:
//!
//! - control: authentication and authorization requests (each with a reply handle) and
//!   "a publisher may go on" notices. A request waits for room, under its own timeout.
//! - events, for observers. A full lane drops the event, and the router counts it
//!   (`events_dropped` in `Broker.stats()`, `$SYS/broker/pyo3mq/events/dropped`) and logs
//!   the episode.
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

pub(crate) mod enhanced_auth;
mod feed;
mod inbox;
mod records;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::thread;

use bytestring::ByteString;
use pyo3::prelude::*;
use pyo3::types::PyList;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use feed::MOVE_BATCH;
pub use feed::{Feed, SubscriptionFeed};
use inbox::{Inbox, Lane, Opened, Work};
use records::{
    to_python, AuthCall, Connected, Disconnected, InterceptCall, InterceptedMessage, MessagesReady,
    PublishCall, Replacement, ReplyHandle, SpaceFreed, SubscribeCall, Subscribed, Unsubscribed,
};

use crate::broker::hooks::{
    AuthDecision, AuthRequest, Authenticator, Authorizer, BoxFuture, ClientInfo,
    EnhancedAuthRequest, EnhancedAuthStep, Event, EventSink, Interceptor, Refusal, Verdict,
};
use crate::broker::router::{MatchScratch, Session};
use crate::broker::session::Message;
use crate::codec::{ConnectReturnCode, QoS};

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
    ) -> BoxFuture<Verdict<QoS>> {
        let bridge = self.clone();
        let (client, filter) = (client.clone(), ByteString::from(filter));
        Box::pin(async move {
            bridge
                .request(Lane::Control, |tx| Work::Subscribe(client, filter, qos, tx))
                .await
                .unwrap_or(Err(Refusal::NOT_AUTHORIZED))
        })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<Verdict> {
        let bridge = self.clone();
        let (client, topic) = (client.clone(), ByteString::from(topic));
        Box::pin(async move {
            bridge
                .request(Lane::Control, |tx| Work::Publish(client, topic, tx))
                .await
                .unwrap_or(Err(Refusal::NOT_AUTHORIZED))
        })
    }
}

impl Interceptor for PyBridge {
    fn intercept(
        &self,
        _client: &ClientInfo,
        batch: Vec<Arc<Message>>,
    ) -> BoxFuture<Vec<Option<Arc<Message>>>> {
        let bridge = self.clone();
        Box::pin(async move {
            // A failed interceptor drops the batch, like any failed hook denies.
            bridge
                .request(Lane::Data, |tx| Work::Intercept(batch, tx))
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

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReplyHandle>()?;
    m.add_class::<SubscriptionFeed>()?;
    m.add_class::<AuthCall>()?;
    m.add_class::<SubscribeCall>()?;
    m.add_class::<PublishCall>()?;
    m.add_class::<InterceptCall>()?;
    m.add_class::<InterceptedMessage>()?;
    m.add_class::<Replacement>()?;
    m.add_class::<SpaceFreed>()?;
    m.add_class::<MessagesReady>()?;
    m.add_class::<Connected>()?;
    m.add_class::<Disconnected>()?;
    m.add_class::<Subscribed>()?;
    m.add_class::<Unsubscribed>()
}
