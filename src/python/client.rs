//! Python bindings of the MQTT client; `pyo3mq.Client` in `python/pyo3mq/client.py` is
//! the public face.
//!
//! The boundary is deliberately narrow. Calls from Python (`publish`, `subscribe`, ...)
//! only touch the client's state under a short lock, never wait on I/O and never detach.
//! Nothing here runs on a tokio thread: the connection task signals the asyncio loop
//! through the client's wake socket and the loop calls `drain()`, which converts a whole
//! batch of completions, state changes and messages into Python objects in one call.
//!
//! What crosses is typed: the core's states and publish outcomes are enums
//! ([`PyConnectionState`], [`PySubmitted`]), a drained batch is a record ([`Drained`] of
//! [`Completion`]s, [`StateChangeRecord`]s and [`ClientMessage`]s), and errors are the
//! exception instances Python raises ([`exception`]), made from the classes in
//! `errors.rs`.

use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyFloat, PyInt, PyList, PyString};

use bytes::Bytes;
use bytestring::ByteString;

use crate::client::{
    Client, ConnectionState, Options, Reconnect, Scheme, SetupError, Submitted, TlsOptions,
    TlsVersions, TransportOptions, Verify,
};
use crate::codec::{LastWill, Protocol, QoS};

use super::client_v5::{self, ConnAckInfo};
use super::errors::{client_error_class, ClientErrorClass, MqttError};
use super::properties::MessageProperties;

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

/// The value `name` stands for among `choices`; a ValueError listing them otherwise.
fn choice<T: Copy>(setting: &str, name: &str, choices: &[(&str, T)]) -> PyResult<T> {
    match choices.iter().find(|(n, _)| *n == name) {
        Some((_, value)) => Ok(*value),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(PyValueError::new_err(format!(
                "{setting} must be one of {}, not {name:?}",
                names.join(", ")
            )))
        }
    }
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

mod messages;
mod records;
#[cfg(test)]
mod tests;

use messages::{messages_list, ClientMessage, TopicCache};
use records::{
    completion, exception, list_or_none, optional_exception, state_change, Completion, Drained,
    PyConnectionState, PySubmitted, StateChangeRecord,
};

/// The Rust MQTT client behind `pyo3mq.Client`: protocol state, socket and timers.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ClientCore {
    inner: Client,
    topics: TopicCache,
}

#[pymethods]
impl ClientCore {
    #[new]
    #[pyo3(signature = (
        host, port, *, client_id, clean_session, keepalive, username, password, will,
        protocol, connect_timeout, max_inflight, max_buffered_bytes, max_queued_incoming,
        max_packet_size, reconnect, session_store = None, transport = "tcp",
        tls_cafile = None, tls_ca_der = None, tls_certfile = None, tls_keyfile = None,
        tls_key_pem = None, tls_verify = "full", tls_versions = "any", tls_server_name = None,
        ws_path = None, ws_headers = None, session_expiry_interval = None,
        receive_maximum = None, topic_alias_maximum = 0, outgoing_topic_aliases = 0,
        connect_user_properties = None, will_properties = None,
        request_problem_information = None, auth_method = None, auth_data = None,
        will_delay_interval = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
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
        session_store: Option<std::path::PathBuf>,
        transport: &str,
        tls_cafile: Option<String>,
        tls_ca_der: Option<Vec<Vec<u8>>>,
        tls_certfile: Option<String>,
        tls_keyfile: Option<String>,
        tls_key_pem: Option<Vec<u8>>,
        tls_verify: &str,
        tls_versions: &str,
        tls_server_name: Option<String>,
        ws_path: Option<String>,
        ws_headers: Option<Vec<(String, String)>>,
        session_expiry_interval: Option<u32>,
        receive_maximum: Option<u16>,
        topic_alias_maximum: u16,
        outgoing_topic_aliases: u16,
        connect_user_properties: Option<Vec<(String, String)>>,
        will_properties: Option<MessageProperties>,
        request_problem_information: Option<bool>,
        auth_method: Option<String>,
        auth_data: Option<Vec<u8>>,
        will_delay_interval: Option<u32>,
    ) -> PyResult<Self> {
        let scheme = choice(
            "transport",
            transport,
            &[
                ("tcp", Scheme::Tcp),
                ("tls", Scheme::Tls),
                ("ws", Scheme::Ws),
                ("wss", Scheme::Wss),
            ],
        )?;
        let verify = choice(
            "tls_verify",
            tls_verify,
            &[
                ("full", Verify::Full),
                ("any-name", Verify::AnyName),
                ("none", Verify::Nothing),
            ],
        )?;
        let versions = choice(
            "tls_versions",
            tls_versions,
            &[
                ("any", TlsVersions::Any),
                ("1.2", TlsVersions::Tls12Only),
                ("1.3", TlsVersions::Tls13Only),
            ],
        )?;
        let transport = TransportOptions {
            scheme,
            tls: TlsOptions {
                ca_file: tls_cafile,
                ca_der: tls_ca_der.unwrap_or_default(),
                cert_file: tls_certfile,
                key_file: tls_keyfile,
                key_pem: tls_key_pem,
                verify,
                versions,
                server_name: tls_server_name,
            },
            ws_path: ws_path.unwrap_or_else(|| TransportOptions::default().ws_path),
            ws_headers: ws_headers.unwrap_or_default(),
        };
        let protocol = match protocol {
            3 => Protocol::V31,
            4 => Protocol::V311,
            5 => Protocol::V5,
            other => {
                return Err(PyValueError::new_err(format!(
                    "protocol must be MQTTv31 (3), MQTTv311 (4) or MQTTv5 (5), not {other}"
                )))
            }
        };
        let v5 = client_v5::v5_options(
            session_expiry_interval,
            receive_maximum,
            topic_alias_maximum,
            outgoing_topic_aliases,
            connect_user_properties,
            client_v5::V5Extra {
                request_problem_information,
                auth_method,
                auth_data,
            },
        )?;
        if protocol != Protocol::V5 && v5 != crate::client::V5Options::default() {
            return Err(PyValueError::new_err(
                "session_expiry_interval, receive_maximum, topic aliases, CONNECT user \
                 properties, request_problem_information and enhanced authentication need \
                 MQTT 5.0 (protocol=5)",
            ));
        }
        let seconds = |name: &str, value: f64| {
            Duration::try_from_secs_f64(value).map_err(|_| {
                PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
            })
        };
        if (will_properties.is_some() || will_delay_interval.is_some())
            && (protocol != Protocol::V5 || will.is_none())
        {
            return Err(PyValueError::new_err(
                "will properties need a will and MQTT 5.0 (protocol=5)",
            ));
        }
        let will = match will {
            Some((topic, payload, qos, retain)) => Some(LastWill {
                topic: ByteString::from(topic),
                payload: payload_bytes(&payload)?,
                qos: qos_from(qos)?,
                retain,
                properties: will_properties
                    .as_ref()
                    .map(|p| client_v5::will_properties(p, &payload))
                    .transpose()?,
            }),
            None => None,
        };
        let mut will = will;
        client_v5::set_will_delay(will.as_mut(), will_delay_interval)?;
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
            session_store,
            transport,
            v5,
        };
        // Opening and reading a session store is file I/O: not with the GIL held.
        let inner = py.detach(|| Client::new(options)).map_err(|e| match e {
            SetupError::Invalid(message) => PyValueError::new_err(message),
            SetupError::Store(e) => MqttError::new_err(e.to_string()),
        })?;
        Ok(ClientCore {
            inner,
            topics: Mutex::new(None),
        })
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

    /// `Submitted.SENT` (QoS 0 handed over), a token (QoS 1/2, completed on PUBACK /
    /// PUBCOMP) or `Submitted.FULL` (the write buffer is full). Raises the client's error
    /// when it is not connected.
    fn publish<'py>(
        &self,
        topic: &Bound<'py, PyString>,
        payload: &Bound<'py, PyAny>,
        qos: u8,
        retain: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = topic.py();
        let qos = qos_from(qos)?;
        let result = with_str(topic, |t| {
            with_payload(payload, |p| self.inner.publish(t, p, qos, retain))
        })??;
        self.published(py, result.map_err(PyValueError::new_err)?)
    }

    /// `publish` with MQTT 5.0 message properties (None for none). Raises
    /// `MqttPublishError` when the server's CONNACK forbids the message (too large, QoS
    /// above its maximum, retain).
    #[pyo3(signature = (topic, payload, qos, retain, properties = None))]
    fn publish_v5<'py>(
        &self,
        topic: &Bound<'py, PyString>,
        payload: &Bound<'py, PyAny>,
        qos: u8,
        retain: bool,
        properties: Option<MessageProperties>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = topic.py();
        let qos = qos_from(qos)?;
        let props = properties
            .as_ref()
            .map(|p| client_v5::publish_properties(p, payload))
            .transpose()?;
        let result = with_str(topic, |t| {
            with_payload(payload, |p| {
                self.inner.publish_v5(t, p, qos, retain, props.as_ref())
            })
        })??;
        self.published(py, result.map_err(|e| client_v5::publish_error(py, e))?)
    }

    /// MQTT 5.0 SUBSCRIBE: every filter with the same options; the token completes with
    /// one reason code per filter.
    #[pyo3(signature = (
        filters, *, no_local = false, retain_as_published = false, retain_handling = 0,
        subscription_identifier = None, user_properties = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe_v5(
        &self,
        py: Python<'_>,
        filters: Vec<(String, u8)>,
        no_local: bool,
        retain_as_published: bool,
        retain_handling: u8,
        subscription_identifier: Option<u32>,
        user_properties: Option<Vec<(String, String)>>,
    ) -> PyResult<u64> {
        let filters = filters
            .into_iter()
            .map(|(f, q)| {
                let options = client_v5::subscription_options(
                    qos_from(q)?,
                    no_local,
                    retain_as_published,
                    retain_handling,
                )?;
                Ok((f, options))
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.request_token(
            py,
            self.inner.subscribe_v5(
                filters,
                subscription_identifier,
                user_properties.unwrap_or_default(),
            ),
        )
    }

    /// MQTT 5.0 UNSUBSCRIBE; the token completes with one reason code per filter.
    #[pyo3(signature = (filters, *, user_properties = None))]
    fn unsubscribe_v5(
        &self,
        py: Python<'_>,
        filters: Vec<String>,
        user_properties: Option<Vec<(String, String)>>,
    ) -> PyResult<u64> {
        self.request_token(
            py,
            self.inner
                .unsubscribe_v5(filters, user_properties.unwrap_or_default()),
        )
    }

    fn auth_challenge<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(u64, Option<Bound<'py, PyBytes>>, bool)> {
        client_v5::auth_challenge(py, &self.inner)
    }

    fn auth_reply(&self, seq: u64, data: Option<Vec<u8>>) -> bool {
        self.inner.auth_reply(seq, data.map(Bytes::from))
    }

    #[pyo3(signature = (data = None))]
    fn reauthenticate(&self, py: Python<'_>, data: Option<Vec<u8>>) -> PyResult<u64> {
        client_v5::reauthenticate(py, &self.inner, data)
    }

    #[getter]
    fn auth_result_data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.auth_result_data().map(|d| PyBytes::new(py, &d))
    }

    /// What the last MQTT 5.0 CONNACK said (None before it, and on 3.1/3.1.1).
    #[getter]
    fn connack(&self) -> Option<ConnAckInfo> {
        self.inner.server_limits().map(ConnAckInfo::new)
    }

    /// The token completed with the SUBACK return codes.
    fn subscribe(&self, py: Python<'_>, filters: Vec<(String, u8)>) -> PyResult<u64> {
        let filters = filters
            .into_iter()
            .map(|(f, q)| Ok((f, qos_from(q)?)))
            .collect::<PyResult<Vec<_>>>()?;
        self.request_token(py, self.inner.subscribe(filters))
    }

    /// The token completed on UNSUBACK.
    fn unsubscribe(&self, py: Python<'_>, filters: Vec<String>) -> PyResult<u64> {
        self.request_token(py, self.inner.unsubscribe(filters))
    }

    /// Starts a graceful close; returns the token completed once closed.
    fn disconnect(&self) -> u64 {
        self.inner.disconnect()
    }

    /// Everything that happened since the last call, and up to `max_messages` messages.
    fn drain(&self, py: Python<'_>, max_messages: usize) -> PyResult<Drained> {
        let drained = self.inner.drain(max_messages);
        let messages = if drained.messages.is_empty() {
            None
        } else {
            Some(messages_list(py, &self.topics, drained.messages)?.unbind())
        };
        Ok(Drained {
            completions: list_or_none(py, &drained.completions, |(token, outcome)| {
                completion(py, *token, outcome)
            })?,
            states: list_or_none(py, &drained.states, |s| state_change(py, s))?,
            messages,
            room: drained.room,
        })
    }

    /// Up to `max` received messages (an empty list when none are queued). With `block`,
    /// first waits (without the GIL) until one is queued, the client is closed, or
    /// `timeout` seconds pass (None: no limit).
    #[pyo3(signature = (max, block = false, timeout = None))]
    fn take_messages<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let taken = if block {
            let timeout = optional_seconds(timeout)?;
            let mut taken = Vec::new();
            in_slices(py, timeout, |slice| {
                taken = self.inner.take_messages_wait(max, Some(slice));
                !taken.is_empty() || self.inner.state() == ConnectionState::Closed
            })?;
            taken
        } else {
            self.inner.take_messages(max)
        };
        messages_list(py, &self.topics, taken)
    }

    /// Waits (without the GIL) until `drain()` has completions, state changes or room, or
    /// with `messages` also received messages, or until `timeout` seconds pass (None: no
    /// limit). Returns whether it has. For threads that do not watch `wake_fd`.
    #[pyo3(signature = (messages, timeout = None))]
    fn wait(&self, py: Python<'_>, messages: bool, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = optional_seconds(timeout)?;
        in_slices(py, timeout, |slice| {
            self.inner.wait_events(messages, Some(slice))
        })
    }

    /// Makes a thread blocked in `wait()` return, so that it can wait for something else.
    fn kick(&self) {
        self.inner.kick();
    }

    /// Whether events are announced on `wake_fd` (default True). Turn it off when only
    /// `wait()` is used.
    fn set_wake_pipe(&self, enabled: bool) {
        self.inner.set_wake_pipe(enabled);
    }

    /// Received messages waiting to be taken.
    #[getter]
    fn queued_messages(&self) -> usize {
        self.inner.queued_messages()
    }

    #[getter]
    fn state(&self) -> PyConnectionState {
        self.inner.state().into()
    }

    /// A one-line summary of the internal state, for debugging.
    fn debug_state(&self) -> String {
        self.inner.debug_state()
    }

    /// Why the client closed, as a new exception instance, or None (not closed, or closed
    /// by `disconnect()`).
    fn last_error(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        optional_exception(py, self.inner.last_error().as_ref())
    }
}

impl ClientCore {
    /// What `publish` returns for `submitted`.
    fn published<'py>(&self, py: Python<'py>, submitted: Submitted) -> PyResult<Bound<'py, PyAny>> {
        match submitted {
            Submitted::Sent => Ok(PySubmitted::Sent.into_pyobject(py)?.into_any()),
            Submitted::Token(token) => Ok(token.into_pyobject(py)?.into_any()),
            Submitted::Full => Ok(PySubmitted::Full.into_pyobject(py)?.into_any()),
            Submitted::Closed => Err(self.not_connected(py)),
        }
    }

    /// The error a request on a client that is not connected raises: why it closed, if it
    /// closed on an error.
    fn not_connected(&self, py: Python<'_>) -> PyErr {
        let error = match self.inner.last_error() {
            Some(e) => exception(py, &e),
            None => client_error_class(py, ClientErrorClass::Connection)
                .and_then(|class| class.call1(("the client is not connected",))),
        };
        match error {
            Ok(instance) => PyErr::from_value(instance),
            Err(e) => e,
        }
    }

    fn request_token(&self, py: Python<'_>, result: Result<Submitted, String>) -> PyResult<u64> {
        match result.map_err(PyValueError::new_err)? {
            Submitted::Token(token) => Ok(token),
            Submitted::Full | Submitted::Sent => Err(MqttError::new_err(
                "too many requests in flight: no packet identifier is free",
            )),
            Submitted::Closed => Err(self.not_connected(py)),
        }
    }
}

/// How long a blocked call waits without the GIL before it looks for signals: Ctrl-C
/// reaches a main thread blocked in `take_messages` or `wait` within this.
const SIGNAL_SLICE: Duration = Duration::from_millis(200);

/// Runs `wait` (given how long it may block) without the GIL, in slices of at most
/// [`SIGNAL_SLICE`], until it returns true or `timeout` passed (None: no limit), checking
/// for signals between slices (a pending KeyboardInterrupt is raised). Returns the last
/// result.
fn in_slices(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut wait: impl FnMut(Duration) -> bool + Send,
) -> PyResult<bool> {
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    loop {
        let slice = match deadline {
            Some(d) => d
                .saturating_duration_since(std::time::Instant::now())
                .min(SIGNAL_SLICE),
            None => SIGNAL_SLICE,
        };
        if py.detach(|| wait(slice)) {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}

/// A timeout in seconds: None or infinite is no limit; negative or NaN is an error.
fn optional_seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_infinite() && t > 0.0 => Ok(None),
        Some(t) => Duration::try_from_secs_f64(t.max(0.0))
            .map(Some)
            .map_err(|_| PyValueError::new_err("timeout must be a number of seconds")),
    }
}

/// Adds the client's classes to the `_pyo3mq` module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(messages::topic_matches, m)?)?;
    m.add_function(wrap_pyfunction!(messages::set_topic_class, m)?)?;
    m.add_class::<ClientCore>()?;
    m.add_class::<ClientMessage>()?;
    m.add_class::<PyConnectionState>()?;
    m.add_class::<PySubmitted>()?;
    m.add_class::<Completion>()?;
    m.add_class::<StateChangeRecord>()?;
    m.add_class::<Drained>()?;
    Ok(())
}
