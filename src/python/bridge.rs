//! The hand-off between the broker's tokio threads and the user's asyncio loop.
//!
//! Tokio tasks never call Python. They put work (an authentication request with a reply
//! handle, an event, a batch of messages for an in-process subscriber) on one bounded
//! channel. One dedicated thread drains it, attaches to the interpreter once per drain,
//! turns up to `MAX_BATCH` items into Python objects and hands the whole list to the loop
//! with a single `loop.call_soon_threadsafe(dispatch, batch)` (granian's pattern). Python
//! answers requests through `ReplyHandle`, which completes a oneshot the waiting Rust task
//! holds under a timeout: a reply that never comes is a denial, never a hang.

use std::ops::Deref;
use std::sync::Arc;
use std::thread;

use bytestring::ByteString;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{error, warn};

use crate::broker::hooks::{
    AuthDecision, AuthRequest, Authenticator, Authorizer, BoxFuture, ClientInfo, Event, EventSink,
    Interceptor,
};
use crate::broker::router::{MatchScratch, Router, Session};
use crate::broker::session::{Message, Queued};
use crate::codec::{ConnectReturnCode, QoS};

/// Items crossing into Python per `call_soon_threadsafe`.
const MAX_BATCH: usize = 512;
/// Work items waiting for the dispatch thread (a message batch counts as one).
const QUEUE_DEPTH: usize = 4096;
/// Messages an in-process subscription forwards per hand-off.
const MESSAGES_PER_BATCH: usize = 1024;

enum Work {
    Auth(AuthRequest, oneshot::Sender<AuthDecision>),
    Subscribe(ClientInfo, ByteString, QoS, oneshot::Sender<Option<QoS>>),
    Publish(ClientInfo, ByteString, oneshot::Sender<bool>),
    Event(Event),
    Messages(u64, Vec<Queued>),
    /// A publish from Python that filled a flow-controlled subscription may return now.
    Space(u64),
    Intercept(
        ClientInfo,
        Vec<Arc<Message>>,
        oneshot::Sender<Vec<Option<Arc<Message>>>>,
    ),
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
                // (topic, payload, qos, retain) replaces it. A replacement that is not a
                // valid message drops that message only.
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

/// A message an interceptor returned in place of `original`.
fn replacement(verdict: &Bound<'_, PyAny>, original: &Message) -> PyResult<Arc<Message>> {
    let (topic, payload, qos, retain): (String, Vec<u8>, u8, bool) = verdict.extract()?;
    crate::topic::validate_topic_name(&topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(Arc::new(Message {
        topic: ByteString::from(topic),
        payload: bytes::Bytes::from(payload),
        qos: QoS::from_u8(qos).ok_or_else(|| PyValueError::new_err("qos must be 0, 1 or 2"))?,
        retain,
        publisher: original.publisher.clone(),
    }))
}

/// Which hooks Python registered; only those produce work for Python.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub auth: bool,
    pub authorize: bool,
    pub events: bool,
    pub intercept: bool,
}

/// The Rust end of the bridge: implements the broker's hook traits by sending work to
/// the dispatch thread.
#[derive(Clone)]
pub struct PyBridge {
    tx: mpsc::Sender<Work>,
}

impl PyBridge {
    /// Starts the dispatch thread, which ends when the last `PyBridge` clone is dropped.
    pub fn start(event_loop: Py<PyAny>, dispatch: Py<PyAny>) -> PyBridge {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let spawned = thread::Builder::new()
            .name("pyo3mq-dispatch".into())
            .spawn(move || dispatch_thread(rx, event_loop, dispatch));
        if let Err(err) = spawned {
            error!("cannot start the dispatch thread: {err}");
        }
        PyBridge { tx }
    }

    async fn request<T>(&self, work: impl FnOnce(oneshot::Sender<T>) -> Work) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        // Requests wait for room: they are connect-time or cached, never per message.
        self.tx.send(work(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Forwards what an in-process subscription's session queues, a batch per hand-off.
    /// Runs on the broker runtime until the session is released. With `credit`, it sends
    /// only as many messages as Python has room for (Python returns credit as it
    /// consumes), so a flow-controlled subscription's backlog stays in its session queue,
    /// where it holds up the publishers.
    pub async fn forward(
        self,
        id: u64,
        session: Arc<Session>,
        router: Arc<Router>,
        credit: Option<Arc<Semaphore>>,
    ) {
        let mut batch = Vec::new();
        loop {
            session.notify.notified().await;
            loop {
                if session.state.lock().subscriptions.is_empty() {
                    return; // released
                }
                let mut room = MESSAGES_PER_BATCH;
                if let Some(credit) = &credit {
                    if session.state.lock().queued_len() == 0 {
                        break;
                    }
                    // Wait for Python to make room, then take what it has room for.
                    match credit.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                    room = 1 + credit.available_permits().min(MESSAGES_PER_BATCH - 1);
                }
                session.state.lock().take_queued(room, &mut batch);
                if let Some(credit) = &credit {
                    // One permit was taken above; spend one per further message.
                    credit.forget_permits(batch.len().saturating_sub(1));
                    if batch.is_empty() {
                        credit.add_permits(1);
                    }
                }
                if let Some(flow) = &session.flow {
                    flow.space.notify_waiters();
                }
                if batch.is_empty() {
                    break;
                }
                // Waiting here only delays this subscription: its own bounded queue
                // fills meanwhile and its overflow policy (or flow control) applies.
                if self
                    .tx
                    .send(Work::Messages(id, std::mem::take(&mut batch)))
                    .await
                    .is_err()
                {
                    router.release(&session);
                    return;
                }
            }
        }
    }
}

impl PyBridge {
    /// Completes Python's `broker.publish` (token `token`) once every flow-controlled
    /// subscription the message filled is below its high water mark again: Python
    /// publishers are slowed exactly like MQTT publishers.
    pub async fn wait_for_space(self, mut scratch: MatchScratch, token: u64) {
        scratch.wait_for_space().await;
        let _ = self.tx.send(Work::Space(token)).await;
    }
}

impl Authenticator for PyBridge {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        let bridge = self.clone();
        Box::pin(async move {
            bridge
                .request(|tx| Work::Auth(request, tx))
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
                .request(|tx| Work::Subscribe(client, filter, qos, tx))
                .await
                .flatten()
        })
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<bool> {
        let bridge = self.clone();
        let (client, topic) = (client.clone(), ByteString::from(topic));
        Box::pin(async move {
            bridge
                .request(|tx| Work::Publish(client, topic, tx))
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
                .request(|tx| Work::Intercept(client, batch, tx))
                .await
                .unwrap_or_default()
        })
    }
}

impl EventSink for PyBridge {
    fn event(&self, event: Event) {
        // Observers never slow a connection: a full queue drops the event.
        if self.tx.try_send(Work::Event(event)).is_err() {
            warn!("event queue full: an event was dropped");
        }
    }
}

fn dispatch_thread(mut rx: mpsc::Receiver<Work>, event_loop: Py<PyAny>, dispatch: Py<PyAny>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Blocking here holds no interpreter lock: this thread attaches only per drain.
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        // `try_attach`: once the interpreter is shutting down there is no loop to hand
        // work to; the dropped reply handles deny.
        let attached = Python::try_attach(|py| {
            let result = to_python(py, batch.drain(..)).and_then(|items| {
                event_loop.call_method1(py, "call_soon_threadsafe", (dispatch.bind(py), items))
            });
            if let Err(err) = result {
                // Typically the loop is closed; the dropped reply handles deny.
                warn!("cannot hand work to the asyncio loop: {err}");
            }
        });
        if attached.is_none() {
            return;
        }
    }
}

fn client_tuple<'py>(py: Python<'py>, client: &ClientInfo) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            client.client_id.deref().into_pyobject(py)?.into_any(),
            client.username.as_deref().into_pyobject(py)?.into_any(),
            client
                .certificate_subject
                .as_deref()
                .into_pyobject(py)?
                .into_any(),
        ],
    )
}

fn handle(py: Python<'_>, reply: Reply) -> PyResult<Bound<'_, ReplyHandle>> {
    Bound::new(
        py,
        ReplyHandle {
            reply: Mutex::new(Some(reply)),
        },
    )
}

/// Builds the batch as a list of tuples `(kind, ...)` that `pyo3mq._dispatch` reads.
fn to_python<'py>(
    py: Python<'py>,
    work: impl Iterator<Item = Work>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for item in work {
        let tuple = match item {
            Work::Auth(req, tx) => (
                "auth",
                req.client_id.deref(),
                req.username.as_deref(),
                req.password.as_deref().map(|p| PyBytes::new(py, p)),
                (req.peer.ip().to_string(), req.peer.port()),
                handle(py, Reply::Auth(tx))?,
                req.certificate_subject.as_deref(),
            )
                .into_pyobject(py)?,
            Work::Subscribe(client, filter, qos, tx) => (
                "authorize_subscribe",
                client_tuple(py, &client)?,
                filter.deref(),
                qos as u8,
                handle(py, Reply::Subscribe(tx))?,
            )
                .into_pyobject(py)?,
            Work::Publish(client, topic, tx) => (
                "authorize_publish",
                client_tuple(py, &client)?,
                topic.deref(),
                handle(py, Reply::Publish(tx))?,
            )
                .into_pyobject(py)?,
            Work::Event(event) => event_tuple(py, event)?,
            Work::Space(token) => ("space", token).into_pyobject(py)?,
            Work::Intercept(client, batch, tx) => {
                let items = PyList::empty(py);
                for m in &batch {
                    items.append((
                        m.topic.deref(),
                        PyBytes::new(py, &m.payload),
                        m.qos as u8,
                        m.retain,
                        m.publisher.deref(),
                    ))?;
                }
                (
                    "intercept",
                    client_tuple(py, &client)?,
                    items,
                    handle(py, Reply::Intercept(tx, batch))?,
                )
                    .into_pyobject(py)?
            }
            Work::Messages(id, messages) => {
                // A busy subscription mostly sees the same few topics and publishers:
                // reuse the last Python string instead of building one per message.
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
                    ))?;
                }
                ("messages", id, items).into_pyobject(py)?
            }
        };
        list.append(tuple)?;
    }
    Ok(list)
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

fn event_tuple(py: Python<'_>, event: Event) -> PyResult<Bound<'_, PyTuple>> {
    Ok(match event {
        Event::Connected {
            client,
            peer,
            clean_session,
            session_present,
        } => (
            "connect",
            client_tuple(py, &client)?,
            (peer.ip().to_string(), peer.port()),
            clean_session,
            session_present,
        )
            .into_pyobject(py)?,
        Event::Disconnected { client_id, reason } => {
            ("disconnect", client_id.deref(), reason.as_str()).into_pyobject(py)?
        }
        Event::Subscribed { client_id, filters } => {
            let filters: Vec<(&str, u8)> = filters.iter().map(|(f, c)| (f.deref(), *c)).collect();
            ("subscribe", client_id.deref(), filters).into_pyobject(py)?
        }
        Event::Unsubscribed { client_id, filters } => {
            let filters: Vec<&str> = filters.iter().map(|f| f.deref()).collect();
            ("unsubscribe", client_id.deref(), filters).into_pyobject(py)?
        }
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ReplyHandle>()
}
