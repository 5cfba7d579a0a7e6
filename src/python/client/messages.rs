//! Received messages on the Python side: `ClientMessage`, the `pyo3mq.Topic` objects
//! their topics are made of (with a cache of the last one), and aiomqtt's wildcard
//! matching (`topic_matches`).
//!
//! Apart from `ClientCore` because this is the per-message path of `drain()` and
//! `take_messages`, and the only code that builds message objects.

use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyType};

use bytestring::ByteString;

use crate::client::Incoming;
use crate::topic as topics;

use super::{qos_from, with_payload, with_str};
use crate::python::properties::MessageProperties;

/// `pyo3mq.Topic`, the str subclass received topics are made of (registered by
/// `pyo3mq.client` at import; plain str until then).
static TOPIC_CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
/// `str.__new__`, which makes a `Topic` without running its validating `__new__`: a
/// topic the server sent was checked by the decoder already.
static STR_NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A `Topic` (or a str, before registration) for `topic`.
fn topic_object(py: Python<'_>, topic: &str) -> PyResult<Py<PyAny>> {
    let string = PyString::new(py, topic);
    let Some(class) = TOPIC_CLASS.get(py) else {
        return Ok(string.into_any().unbind());
    };
    let new = STR_NEW.get_or_try_init(py, || {
        py.get_type::<PyString>()
            .getattr("__new__")
            .map(Bound::unbind)
    })?;
    new.bind(py)
        .call1((class.bind(py), string))
        .map(Bound::unbind)
}

/// The last topic made into an object, reused while the next messages have the same
/// topic: a stream usually has few topics, and each object is an allocation and a copy.
pub(super) type TopicCache = Mutex<Option<(ByteString, Py<PyAny>)>>;

pub(super) fn messages_list<'py>(
    py: Python<'py>,
    cache: &TopicCache,
    messages: Vec<Incoming>,
) -> PyResult<Bound<'py, PyList>> {
    let mut cache = cache.lock();
    let mut objects = Vec::with_capacity(messages.len());
    for m in messages {
        let topic = match &*cache {
            Some((last, object)) if *last == m.topic => object.clone_ref(py),
            _ => {
                let object = topic_object(py, &m.topic)?;
                // An owned copy: the received one shares the read buffer's memory.
                *cache = Some((ByteString::from(&*m.topic), object.clone_ref(py)));
                object
            }
        };
        objects.push(Py::new(
            py,
            ClientMessage {
                topic,
                payload: PyBytes::new(py, &m.payload).unbind(),
                qos: m.qos as u8,
                retain: m.retain,
                dup: m.dup,
                packet_id: m.packet_id,
                properties: m.properties,
            },
        )?);
    }
    PyList::new(py, objects)
}

/// aiomqtt's `Wildcard` rules: not empty, at most 65,535 characters, `#` only as a whole
/// last level, `+` only as a whole level.
fn check_wildcard(wildcard: &str) -> PyResult<()> {
    let bad = wildcard.is_empty()
        || wildcard.chars().count() > 65_535
        || wildcard.contains("#/")
        || wildcard
            .split('/')
            .any(|level| level.len() > 1 && (level.contains('+') || level.contains('#')));
    if bad {
        return Err(PyValueError::new_err(format!(
            "Invalid wildcard: {wildcard}"
        )));
    }
    Ok(())
}

/// aiomqtt's `Topic.matches`: `+` matches one level, a last `#` the rest (also none), a
/// `$share/GROUP/` prefix of the wildcard is skipped, and (unlike a server's routing)
/// `$` topics are not treated apart.
pub(super) fn aiomqtt_matches(topic: &str, wildcard: &str) -> bool {
    let mut wildcard_levels = wildcard.split('/').peekable();
    if wildcard_levels.peek() == Some(&"$share") {
        wildcard_levels.next();
        wildcard_levels.next();
    }
    let mut topic_levels = topic.split('/');
    loop {
        match (topic_levels.next(), wildcard_levels.next()) {
            (None, None | Some("#")) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(_), Some("#")) => return true,
            (Some(t), Some(w)) if w == "+" || t == w => {}
            (Some(_), Some(_)) => return false,
        }
    }
}

/// `Topic.matches(wildcard)`: aiomqtt's semantics; a bad wildcard raises ValueError.
#[pyfunction]
pub(super) fn topic_matches(
    topic: &Bound<'_, PyString>,
    wildcard: &Bound<'_, PyString>,
) -> PyResult<bool> {
    with_str(wildcard, |w| {
        check_wildcard(w)?;
        with_str(topic, |t| aiomqtt_matches(t, w))
    })?
}

/// Registers the `Topic` class received topics are made of (once, by `pyo3mq.client`).
#[pyfunction]
pub(super) fn set_topic_class(py: Python<'_>, class: Bound<'_, PyType>) -> PyResult<()> {
    if !class.is_subclass_of::<PyString>()? {
        return Err(PyTypeError::new_err("the Topic class must subclass str"));
    }
    let _ = TOPIC_CLASS.set(py, class.unbind());
    Ok(())
}

/// A message received from the server.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ClientMessage {
    /// A `pyo3mq.Topic`.
    topic: Py<PyAny>,
    payload: Py<PyBytes>,
    qos: u8,
    retain: bool,
    dup: bool,
    packet_id: u16,
    /// MQTT 5.0 PUBLISH properties as received; made into a `MessageProperties` when
    /// Python asks.
    properties: Option<Box<crate::codec::Properties>>,
}

#[pymethods]
impl ClientMessage {
    #[new]
    #[pyo3(signature = (
        topic, payload, qos = 0, retain = false, dup = false, packet_id = 0, properties = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        topic: Bound<'_, PyString>,
        payload: &Bound<'_, PyAny>,
        qos: u8,
        retain: bool,
        dup: bool,
        packet_id: u16,
        properties: Option<MessageProperties>,
    ) -> PyResult<Self> {
        qos_from(qos)?;
        let py = topic.py();
        let payload = with_payload(payload, |b| PyBytes::new(py, b).unbind())?;
        Ok(ClientMessage {
            topic: with_str(&topic, |t| topic_object(py, t))??,
            payload,
            qos,
            retain,
            dup,
            packet_id,
            properties: properties.map(|p| Box::new(p.to_codec())),
        })
    }

    /// The topic name the message was published to, a `pyo3mq.Topic` (a str with
    /// aiomqtt's `.value` and `.matches(wildcard)`).
    #[getter]
    fn topic(&self, py: Python<'_>) -> Py<PyAny> {
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
    fn packet_id(&self) -> u16 {
        self.packet_id
    }

    /// `packet_id` under the name paho-mqtt and aiomqtt use.
    #[getter]
    fn mid(&self) -> u16 {
        self.packet_id
    }

    /// MQTT 5.0 message properties (content type, response topic, correlation data,
    /// user properties, message expiry, payload format, subscription identifiers), as
    /// aiomqtt's `Message.properties`; None under MQTT 3.1/3.1.1 and when the PUBLISH
    /// had none.
    #[getter]
    fn properties(&self) -> Option<MessageProperties> {
        self.properties
            .as_deref()
            .map(MessageProperties::from_codec)
    }

    /// Whether the topic matches a subscription filter as a server routes (`+` and `#`
    /// wildcards; a filter that starts with a wildcard does not match a `$` topic).
    fn matches(&self, py: Python<'_>, filter: &Bound<'_, PyString>) -> PyResult<bool> {
        let topic = self.topic.bind(py).cast::<PyString>()?;
        with_str(filter, |f| with_str(topic, |t| topics::matches(f, t)))?
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let topic = self.topic.bind(py).repr()?;
        let payload = self.payload.bind(py).repr()?;
        Ok(format!(
            "ClientMessage(topic={topic}, payload={payload}, qos={}, retain={}, dup={}, \
             packet_id={})",
            self.qos,
            if self.retain { "True" } else { "False" },
            if self.dup { "True" } else { "False" },
            self.packet_id
        ))
    }
}
