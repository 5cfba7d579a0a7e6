//! Python bindings of the MQTT client (`ClientCore`, `ClientMessage`); `pyo3mq.Client` in
//! `python/pyo3mq/client.py` is the public face.
//!
//! The boundary is deliberately narrow. Calls from Python (`publish`, `subscribe`, ...)
//! only touch the client's state under a short lock, never wait on I/O and never detach.
//! Nothing here runs on a tokio thread: the connection task signals the asyncio loop
//! through the client's wake socket and the loop calls `drain()`, which converts a whole
//! batch of completions, state changes and messages into Python objects in one call.

use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString, PyTuple};

use bytes::Bytes;
use bytestring::ByteString;

use crate::client::{
    Client, ClientError, ConnState, Incoming, Options, Outcome, Reconnect, StateChange, Submitted,
};
use crate::codec::{LastWill, Protocol, QoS};
use crate::topic as topics;

/// Returned by `publish` when a QoS 0 message was handed over.
const SENT: i64 = 0;
/// Returned when the write buffer is full: wait for a drain with `room` set, then retry.
const FULL: i64 = -1;
/// Returned when the client is not connected (never started, or closed).
const CLOSED: i64 = -2;

fn qos_from(value: u8) -> PyResult<QoS> {
    QoS::from_u8(value)
        .ok_or_else(|| PyValueError::new_err(format!("qos must be 0, 1 or 2, not {value}")))
}

/// Calls `f` with the bytes of a payload: bytes, bytearray, str (UTF-8), int or float (their
/// decimal text, as aiomqtt does) or None (empty).
fn with_payload<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if obj.is_none() {
        return Ok(f(&[]));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let encoded = s.encode_utf8()?;
        return Ok(f(encoded.as_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(f(&b.to_vec()));
    }
    if (obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>())
        && !obj.is_instance_of::<PyBool>()
    {
        let text = obj.str()?.encode_utf8()?;
        return Ok(f(text.as_bytes()));
    }
    Err(PyTypeError::new_err(format!(
        "payload must be bytes, bytearray, str, int, float or None, not {}",
        obj.get_type().name()?
    )))
}

fn payload_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    with_payload(obj, Bytes::copy_from_slice)
}

/// A str argument as UTF-8 bytes without an intermediate `String` (abi3 on 3.9 has no
/// borrowed view of a str's UTF-8).
fn with_str<R>(obj: &Bound<'_, PyString>, f: impl FnOnce(&str) -> R) -> PyResult<R> {
    let encoded = obj.encode_utf8()?;
    let text = std::str::from_utf8(encoded.as_bytes())
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(f(text))
}

fn submitted(result: Result<Submitted, String>) -> PyResult<i64> {
    match result.map_err(PyValueError::new_err)? {
        Submitted::Sent => Ok(SENT),
        Submitted::Token(t) => {
            i64::try_from(t).map_err(|_| PyRuntimeError::new_err("token overflow"))
        }
        Submitted::Full => Ok(FULL),
        Submitted::Closed => Ok(CLOSED),
    }
}

fn error_tuple<'py>(py: Python<'py>, e: &ClientError) -> PyResult<Bound<'py, PyTuple>> {
    (e.kind(), e.code(), e.to_string()).into_pyobject(py)
}

fn state_tuple<'py>(py: Python<'py>, s: &StateChange) -> PyResult<Bound<'py, PyTuple>> {
    let error = match &s.error {
        Some(e) => error_tuple(py, e)?.into_any(),
        None => py.None().into_bound(py),
    };
    (s.state as u8, s.session_present, error).into_pyobject(py)
}

fn outcome_tuple<'py>(
    py: Python<'py>,
    token: u64,
    outcome: &Outcome,
) -> PyResult<Bound<'py, PyTuple>> {
    let (ok, value): (bool, Bound<'py, PyAny>) = match outcome {
        Outcome::Done => (true, py.None().into_bound(py)),
        Outcome::Connected(session_present) => (
            true,
            PyBool::new(py, *session_present).to_owned().into_any(),
        ),
        Outcome::Granted(codes) => (true, PyList::new(py, codes)?.into_any()),
        Outcome::Failed(e) => (false, error_tuple(py, e)?.into_any()),
    };
    (token, ok, value).into_pyobject(py)
}

fn message_object(py: Python<'_>, m: Incoming) -> PyResult<Py<ClientMessage>> {
    Py::new(
        py,
        ClientMessage {
            topic: PyString::new(py, &m.topic).unbind(),
            payload: PyBytes::new(py, &m.payload).unbind(),
            qos: m.qos as u8,
            retain: m.retain,
            dup: m.dup,
            mid: m.pkid,
        },
    )
}

fn messages_list(py: Python<'_>, messages: Vec<Incoming>) -> PyResult<Bound<'_, PyList>> {
    let objects = messages
        .into_iter()
        .map(|m| message_object(py, m))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, objects)
}

/// A message received from the server.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ClientMessage {
    topic: Py<PyString>,
    payload: Py<PyBytes>,
    qos: u8,
    retain: bool,
    dup: bool,
    mid: u16,
}

#[pymethods]
impl ClientMessage {
    #[new]
    #[pyo3(signature = (topic, payload, qos = 0, retain = false, dup = false, mid = 0))]
    fn new(
        topic: Bound<'_, PyString>,
        payload: &Bound<'_, PyAny>,
        qos: u8,
        retain: bool,
        dup: bool,
        mid: u16,
    ) -> PyResult<Self> {
        qos_from(qos)?;
        let py = topic.py();
        let payload = with_payload(payload, |b| PyBytes::new(py, b).unbind())?;
        Ok(ClientMessage {
            topic: topic.unbind(),
            payload,
            qos,
            retain,
            dup,
            mid,
        })
    }

    /// The topic name the message was published to.
    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }

    #[getter]
    fn payload(&self, py: Python<'_>) -> Py<PyBytes> {
        self.payload.clone_ref(py)
    }

    /// The QoS the message was delivered with (min of published and granted).
    #[getter]
    fn qos(&self) -> u8 {
        self.qos
    }

    /// Set on retained messages sent because of a new subscription.
    #[getter]
    fn retain(&self) -> bool {
        self.retain
    }

    /// Set when the server may have sent this message before.
    #[getter]
    fn dup(&self) -> bool {
        self.dup
    }

    /// The packet identifier (0 for QoS 0).
    #[getter]
    fn mid(&self) -> u16 {
        self.mid
    }

    /// Whether the topic matches a subscription filter (`+` and `#` wildcards).
    fn matches(&self, py: Python<'_>, filter: &Bound<'_, PyString>) -> PyResult<bool> {
        let topic = self.topic.bind(py);
        with_str(filter, |f| with_str(topic, |t| topics::matches(f, t)))?
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let topic = self.topic.bind(py).repr()?;
        let payload = self.payload.bind(py).repr()?;
        Ok(format!(
            "ClientMessage(topic={topic}, payload={payload}, qos={}, retain={}, dup={}, mid={})",
            self.qos,
            if self.retain { "True" } else { "False" },
            if self.dup { "True" } else { "False" },
            self.mid
        ))
    }
}

/// The Rust MQTT client behind `pyo3mq.Client`: protocol state, socket and timers.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ClientCore {
    inner: Client,
}

#[pymethods]
impl ClientCore {
    #[new]
    #[pyo3(signature = (
        host, port, *, client_id, clean_session, keepalive, username, password, will,
        protocol, connect_timeout, max_inflight, max_buffered_bytes, max_queued_incoming,
        max_packet_size, reconnect
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        client_id: String,
        clean_session: bool,
        keepalive: u16,
        username: Option<String>,
        password: Option<Bound<'_, PyAny>>,
        will: Option<(String, Bound<'_, PyAny>, u8, bool)>,
        protocol: u8,
        connect_timeout: f64,
        max_inflight: usize,
        max_buffered_bytes: usize,
        max_queued_incoming: usize,
        max_packet_size: usize,
        reconnect: Option<(f64, f64, Option<u32>)>,
    ) -> PyResult<Self> {
        let protocol = match protocol {
            3 => Protocol::V31,
            4 => Protocol::V311,
            other => {
                return Err(PyValueError::new_err(format!(
                    "protocol must be MQTTv31 (3) or MQTTv311 (4), not {other}"
                )))
            }
        };
        let seconds = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| {
                PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
            })
        };
        let will = match will {
            Some((topic, payload, qos, retain)) => Some(LastWill {
                topic: ByteString::from(topic),
                payload: payload_bytes(&payload)?,
                qos: qos_from(qos)?,
                retain,
            }),
            None => None,
        };
        let reconnect = match reconnect {
            Some((initial, max, max_attempts)) => Some(Reconnect {
                initial_delay: seconds("reconnect initial_delay", initial)?,
                max_delay: seconds("reconnect max_delay", max)?,
                max_attempts,
            }),
            None => None,
        };
        let options = Options {
            host,
            port,
            client_id,
            clean_session,
            keep_alive: keepalive,
            username,
            password: password.as_ref().map(payload_bytes).transpose()?,
            will,
            protocol,
            connect_timeout: seconds("timeout", connect_timeout)?,
            max_inflight,
            max_buffered: max_buffered_bytes,
            max_incoming: max_queued_incoming,
            max_packet_size,
            reconnect,
        };
        let inner = Client::new(options).map_err(PyValueError::new_err)?;
        Ok(ClientCore { inner })
    }

    /// File descriptor to watch with `loop.add_reader`; readable means `drain()` has news.
    #[getter]
    fn wake_fd(&self) -> i64 {
        self.inner.wake_fd()
    }

    /// The client id sent in CONNECT (generated for MQTT 3.1 when empty).
    #[getter]
    fn client_id(&self) -> &str {
        self.inner.client_id()
    }

    /// Starts connecting in the background; returns the token the outcome will carry.
    fn connect(&self, py: Python<'_>) -> PyResult<u64> {
        // The first call builds the runtime (spawns threads): let other Python threads run.
        py.detach(|| self.inner.connect())
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// 0: QoS 0 handed over; > 0: token of a QoS 1/2 publish; -1: buffer full; -2: closed.
    fn publish(
        &self,
        topic: &Bound<'_, PyString>,
        payload: &Bound<'_, PyAny>,
        qos: u8,
        retain: bool,
    ) -> PyResult<i64> {
        let qos = qos_from(qos)?;
        let result = with_str(topic, |t| {
            with_payload(payload, |p| self.inner.publish(t, p, qos, retain))
        })??;
        submitted(result)
    }

    /// Token (> 0) completed with the SUBACK codes; -1: no packet id free; -2: closed.
    fn subscribe(&self, filters: Vec<(String, u8)>) -> PyResult<i64> {
        let filters = filters
            .into_iter()
            .map(|(f, q)| Ok((f, qos_from(q)?)))
            .collect::<PyResult<Vec<_>>>()?;
        submitted(self.inner.subscribe(filters))
    }

    /// Token (> 0) completed on UNSUBACK; -1: no packet id free; -2: closed.
    fn unsubscribe(&self, filters: Vec<String>) -> PyResult<i64> {
        submitted(self.inner.unsubscribe(filters))
    }

    /// Starts a graceful close; returns the token completed once closed.
    fn disconnect(&self) -> u64 {
        self.inner.disconnect()
    }

    /// Everything that happened since the last call, as
    /// `(completions, states, messages, room)`; the lists are None when empty.
    /// completions: `(token, ok, value)`, where value is the result or an error tuple
    /// `(kind, code, message)`; states: `(state, session_present, error or None)`.
    fn drain<'py>(&self, py: Python<'py>, max_messages: usize) -> PyResult<Bound<'py, PyTuple>> {
        let drained = self.inner.drain(max_messages);
        let none = || py.None().into_bound(py);
        let completions = if drained.completions.is_empty() {
            none()
        } else {
            let items = drained
                .completions
                .iter()
                .map(|(token, outcome)| outcome_tuple(py, *token, outcome))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        };
        let states = if drained.states.is_empty() {
            none()
        } else {
            let items = drained
                .states
                .iter()
                .map(|s| state_tuple(py, s))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        };
        let messages = if drained.messages.is_empty() {
            none()
        } else {
            messages_list(py, drained.messages)?.into_any()
        };
        (completions, states, messages, drained.room).into_pyobject(py)
    }

    /// Up to `max` received messages (an empty list when none are queued).
    fn take_messages<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        messages_list(py, self.inner.take_messages(max))
    }

    /// Received messages waiting to be taken.
    #[getter]
    fn queued_messages(&self) -> usize {
        self.inner.queued_messages()
    }

    /// 0 connecting, 1 connected, 2 disconnected (reconnecting), 3 closed.
    #[getter]
    fn state(&self) -> u8 {
        let s: ConnState = self.inner.state();
        s as u8
    }

    /// A one-line summary of the internal state, for debugging.
    fn debug_state(&self) -> String {
        self.inner.debug_state()
    }

    /// Why the client closed, as `(kind, code, message)`, or None.
    fn last_error<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.inner
            .last_error()
            .map(|e| error_tuple(py, &e))
            .transpose()
    }
}

/// Adds the client's classes to the `_pyo3mq` module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClientCore>()?;
    m.add_class::<ClientMessage>()?;
    Ok(())
}
