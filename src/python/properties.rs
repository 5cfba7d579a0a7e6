//! `MessageProperties`: the MQTT 5.0 properties of one application message (spec
//! 3.3.2.3), as Python sees them on the broker (`pyo3mq.Message.properties`,
//! `Broker.publish(properties=...)`, `on_message`) and in the client library.
//!
//! A frozen, typed record: each value is checked against the spec's rules when the record
//! is made, so a record that exists can always be encoded. The broker keeps a routed
//! message's properties encoded once ([`crate::broker::session::Message::properties`]);
//! this record is only built when Python asks for it, and encoded only when Python hands
//! one over.

use bytes::Bytes;
use bytestring::ByteString;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::codec::{Properties, PropertyContext, MAX_STRING_LEN, MAX_VARIABLE_BYTE_INTEGER};

/// The MQTT 5.0 properties of an application message. Every field is optional; the
/// repeatable User Property keeps its order and may repeat a name.
#[pyclass(frozen, eq, hash, from_py_object, module = "pyo3mq._pyo3mq")]
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MessageProperties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    correlation_data: Option<Bytes>,
    user_properties: Vec<(String, String)>,
    subscription_identifiers: Vec<u32>,
}

/// A text property's value: the UTF-8 string rules ([MQTT-1.5.4-1] is Python's own
/// `str` to UTF-8 conversion, which refuses lone surrogates).
pub(crate) fn text(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    let s: String = value
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a str")))?
        .to_str()?
        .to_owned();
    if s.contains('\0') {
        return Err(PyValueError::new_err(format!(
            "[MQTT-1.5.4-2] {name} contains U+0000"
        )));
    }
    if s.len() > MAX_STRING_LEN {
        return Err(PyValueError::new_err(format!(
            "{name} is longer than {MAX_STRING_LEN} bytes in UTF-8"
        )));
    }
    Ok(s)
}

fn optional<T>(
    value: Option<&Bound<'_, PyAny>>,
    read: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>,
) -> PyResult<Option<T>> {
    match value {
        Some(v) if !v.is_none() => read(v).map(Some),
        _ => Ok(None),
    }
}

fn payload_format_indicator(value: &Bound<'_, PyAny>) -> PyResult<u8> {
    match value.extract::<u8>() {
        Ok(v @ (0 | 1)) => Ok(v),
        _ => Err(PyValueError::new_err(
            "payload_format_indicator must be 0 (unspecified bytes) or 1 (UTF-8 text)",
        )),
    }
}

fn message_expiry_interval(value: &Bound<'_, PyAny>) -> PyResult<u32> {
    value.extract::<u32>().map_err(|_| {
        PyValueError::new_err("message_expiry_interval must be seconds from 0 to 4294967295")
    })
}

fn response_topic(value: &Bound<'_, PyAny>) -> PyResult<String> {
    let topic = text("response_topic", value)?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(PyValueError::new_err(format!(
            "[MQTT-3.3.2-14] response_topic {topic:?} is not a topic name (empty, or with a \
             wildcard)"
        )));
    }
    Ok(topic)
}

fn correlation_data(value: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    let data: Vec<u8> = if let Ok(b) = value.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if value.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "correlation_data must be bytes, not str",
        ));
    } else {
        value
            .extract()
            .map_err(|_| PyTypeError::new_err("correlation_data must be bytes"))?
    };
    if data.len() > MAX_STRING_LEN {
        return Err(PyValueError::new_err(format!(
            "correlation_data is longer than {MAX_STRING_LEN} bytes"
        )));
    }
    Ok(Bytes::from(data))
}

fn user_properties(value: &Bound<'_, PyAny>) -> PyResult<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract().map_err(|_| {
            PyTypeError::new_err("user_properties must be (name, value) pairs of str")
        })?;
        pairs.push((
            text("a user property's name", &name)?,
            text("a user property's value", &value)?,
        ));
    }
    Ok(pairs)
}

fn subscription_identifiers(value: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let mut ids = Vec::new();
    for item in value.try_iter()? {
        match item?.extract::<u32>() {
            Ok(id) if (1..=MAX_VARIABLE_BYTE_INTEGER).contains(&id) => ids.push(id),
            _ => {
                return Err(PyValueError::new_err(
                    "a subscription identifier is from 1 to 268435455",
                ))
            }
        }
    }
    Ok(ids)
}

impl MessageProperties {
    /// The message properties of a decoded set (a PUBLISH's or a will's); the others
    /// are left out.
    pub fn from_codec(p: &Properties) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.as_ref().map(|s| s.to_string()),
            response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: p.correlation_data.clone(),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            subscription_identifiers: p.subscription_identifiers.clone(),
        }
    }

    /// The set to encode for a PUBLISH.
    pub fn to_codec(&self) -> Properties {
        Properties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type.as_deref().map(ByteString::from),
            response_topic: self.response_topic.as_deref().map(ByteString::from),
            correlation_data: self.correlation_data.clone(),
            user_properties: self
                .user_properties
                .iter()
                .map(|(k, v)| (ByteString::from(k.as_str()), ByteString::from(v.as_str())))
                .collect(),
            subscription_identifiers: self.subscription_identifiers.clone(),
            ..Properties::default()
        }
    }

    /// The properties of a routed message, from the bytes the broker stores
    /// (`Message::properties`). They were checked when they came in, so an error here is
    /// a bug; the caller reports it rather than guessing.
    pub fn from_wire(bytes: &Bytes) -> Result<MessageProperties, crate::codec::Error> {
        Properties::from_bytes(bytes.clone(), PropertyContext::Publish)
            .map(|p| MessageProperties::from_codec(&p))
    }

    /// The bytes the broker stores with a message (`Message::properties`), encoded once;
    /// `None` when no property is set. Subscription identifiers are the broker's to add
    /// per subscriber, never a publisher's ([MQTT-3.3.4-6]): a set with some is refused.
    pub fn to_wire(&self) -> PyResult<Option<Bytes>> {
        if !self.subscription_identifiers.is_empty() {
            return Err(PyValueError::new_err(
                "[MQTT-3.3.4-6] a published message carries no subscription identifiers: \
                 the broker adds each subscriber's",
            ));
        }
        let props = self.to_codec();
        if props.is_empty() {
            return Ok(None);
        }
        props
            .to_bytes(PropertyContext::Publish)
            .map(Some)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Payload Format Indicator 1 promises UTF-8 text (spec 3.3.2.3.2): a message from
    /// Python that breaks the promise is refused, as the broker may refuse a client's with
    /// 0x99 Payload format invalid.
    pub fn check_payload(&self, payload: &[u8]) -> PyResult<()> {
        if self.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
            return Err(PyValueError::new_err(
                "payload_format_indicator=1 says the payload is UTF-8 text, and it is not \
                 (3.3.2.3.2, 0x99 Payload format invalid)",
            ));
        }
        Ok(())
    }

    /// Checks and sets the field `name`; false for a name that is no field.
    fn set(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let v = Some(value);
        match name {
            "payload_format_indicator" => {
                self.payload_format_indicator = optional(v, payload_format_indicator)?
            }
            "message_expiry_interval" => {
                self.message_expiry_interval = optional(v, message_expiry_interval)?
            }
            "content_type" => self.content_type = optional(v, |x| text("content_type", x))?,
            "response_topic" => self.response_topic = optional(v, response_topic)?,
            "correlation_data" => self.correlation_data = optional(v, correlation_data)?,
            "user_properties" => {
                self.user_properties = optional(v, user_properties)?.unwrap_or_default()
            }
            "subscription_identifiers" => {
                self.subscription_identifiers =
                    optional(v, subscription_identifiers)?.unwrap_or_default()
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn with_changes(&self, changes: Option<&Bound<'_, PyDict>>) -> PyResult<MessageProperties> {
        let mut out = self.clone();
        if let Some(changes) = changes {
            for (name, value) in changes.iter() {
                let name: String = name.extract()?;
                if !out.set(&name, &value)? {
                    return Err(PyTypeError::new_err(format!(
                        "MessageProperties has no field {name:?}"
                    )));
                }
            }
        }
        Ok(out)
    }
}

#[pymethods]
impl MessageProperties {
    #[new]
    #[pyo3(signature = (**fields))]
    fn new(fields: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        MessageProperties::default().with_changes(fields)
    }

    /// A copy with the given fields changed (checked like the constructor's).
    #[pyo3(signature = (**changes))]
    fn replace(&self, changes: Option<&Bound<'_, PyDict>>) -> PyResult<MessageProperties> {
        self.with_changes(changes)
    }

    /// 0: the payload is unspecified bytes; 1: UTF-8 text. None when absent.
    #[getter]
    fn payload_format_indicator(&self) -> Option<u8> {
        self.payload_format_indicator
    }

    /// Seconds the message lives; None: it does not expire.
    #[getter]
    fn message_expiry_interval(&self) -> Option<u32> {
        self.message_expiry_interval
    }

    #[getter]
    fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The topic a responder publishes its answer to (a topic name, no wildcards).
    #[getter]
    fn response_topic(&self) -> Option<&str> {
        self.response_topic.as_deref()
    }

    #[getter]
    fn correlation_data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.correlation_data
            .as_deref()
            .map(|data| PyBytes::new(py, data))
    }

    /// (name, value) pairs in the order they were sent; a name may repeat.
    #[getter]
    fn user_properties(&self) -> Vec<(String, String)> {
        self.user_properties.clone()
    }

    /// The identifiers of the receiver's subscriptions that matched (set by a server on
    /// the messages it sends a 5.0 client); empty on the broker's side.
    #[getter]
    fn subscription_identifiers(&self) -> Vec<u32> {
        self.subscription_identifiers.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let mut parts = Vec::new();
        if let Some(v) = self.payload_format_indicator {
            parts.push(format!("payload_format_indicator={v}"));
        }
        if let Some(v) = self.message_expiry_interval {
            parts.push(format!("message_expiry_interval={v}"));
        }
        for (name, value) in [
            ("content_type", &self.content_type),
            ("response_topic", &self.response_topic),
        ] {
            if let Some(v) = value {
                let repr = PyString::new(py, v).repr()?;
                parts.push(format!("{name}={repr}"));
            }
        }
        if let Some(data) = self.correlation_data(py) {
            parts.push(format!("correlation_data={}", data.repr()?));
        }
        if !self.user_properties.is_empty() {
            let pairs = self.user_properties().into_pyobject(py)?.repr()?;
            parts.push(format!("user_properties={pairs}"));
        }
        if !self.subscription_identifiers.is_empty() {
            parts.push(format!(
                "subscription_identifiers={:?}",
                self.subscription_identifiers
            ));
        }
        Ok(format!("MessageProperties({})", parts.join(", ")))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MessageProperties>()
}
