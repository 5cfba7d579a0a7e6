//! Stored sessions and retained messages as they cross to and from a Python session store.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyType};

use crate::broker::session::Message;
use crate::broker::store::{SessionSnapshot, StoredMessage};
use crate::codec::QoS;
use crate::topic;

// Stored sessions and retained messages cross the boundary as the public record types of
// `pyo3mq.types` (frozen dataclasses), both ways: one name per concept, and the fields are
// read by name, so nothing depends on a tuple's order.

static STORED_MESSAGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static SESSION_RECORD: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RETAINED_RECORD: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static STORED_SUB_OPTIONS: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// A `pyo3mq.StoredMessage`, read by attribute.
#[derive(FromPyObject)]
struct StoredMessageRecord {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    delivery_qos: u8,
    retain: bool,
    publisher: String,
    packet_id: Option<u16>,
    released: bool,
    #[pyo3(default)]
    properties: Option<Vec<u8>>,
    #[pyo3(default)]
    expires_at: Option<f64>,
}

/// A `pyo3mq.SessionRecord`, read by attribute.
#[derive(FromPyObject)]
pub(super) struct SessionRecord {
    client_id: String,
    subscriptions: Vec<(String, u8)>,
    pending: Vec<StoredMessageRecord>,
    #[pyo3(default)]
    subscription_options: std::collections::HashMap<String, SubscriptionOptionsRecord>,
    #[pyo3(default)]
    session_expiry: Option<u32>,
    #[pyo3(default)]
    disconnected_at: Option<f64>,
}

/// A `pyo3mq.StoredSubscriptionOptions`, read by attribute.
#[derive(FromPyObject)]
struct SubscriptionOptionsRecord {
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    subscription_identifier: Option<u32>,
}

/// A `pyo3mq.RetainedRecord`, read by attribute.
#[derive(FromPyObject)]
pub(super) struct RetainedRecord {
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    publisher: String,
    #[pyo3(default)]
    properties: Option<Vec<u8>>,
    #[pyo3(default)]
    expires_at: Option<f64>,
}

pub(super) fn qos_arg(value: u8) -> PyResult<QoS> {
    QoS::from_u8(value).ok_or_else(|| PyValueError::new_err(format!("invalid QoS {value}")))
}

pub(super) fn topic_arg(topic: &str) -> PyResult<ByteString> {
    topic::validate_topic_name(topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(ByteString::from(topic))
}

/// A stored message's 5.0 properties, checked as a PUBLISH's are, with their expiry
/// deadline (Unix time in seconds, as `set_stored_properties` gives it).
pub(super) fn properties_arg(
    properties: Option<Vec<u8>>,
    expires_at: Option<f64>,
) -> PyResult<Option<crate::broker::session::MessageProperties>> {
    let Some(bytes) = properties else {
        return Ok(None);
    };
    let bytes = Bytes::from(bytes);
    crate::codec::Properties::from_bytes(bytes.clone(), crate::codec::PropertyContext::Publish)
        .map_err(|e| PyValueError::new_err(format!("stored message properties: {e}")))?;
    let expires_at = match expires_at {
        Some(secs) if secs.is_finite() && secs >= 0.0 => Some((secs * 1000.0).round() as u64),
        Some(secs) => return Err(PyValueError::new_err(format!("invalid expires_at {secs}"))),
        None => None,
    };
    Ok(Some(crate::broker::session::MessageProperties::restored(
        bytes, expires_at,
    )))
}

/// The `properties` and `expires_at` of a `StoredMessage` or `RetainedRecord`.
fn set_stored_properties(kwargs: &Bound<'_, PyDict>, m: &Message) -> PyResult<()> {
    if let Some(p) = &m.properties {
        kwargs.set_item("properties", PyBytes::new(kwargs.py(), p))?;
        kwargs.set_item("expires_at", p.expires_at().map(|ms| ms as f64 / 1000.0))?;
    }
    Ok(())
}

impl SubscriptionOptionsRecord {
    fn into_opts(self) -> PyResult<crate::broker::session::SubOpts> {
        let id = match self.subscription_identifier {
            None => None,
            Some(id) => Some(std::num::NonZeroU32::new(id).ok_or_else(|| {
                PyValueError::new_err("subscription_identifier must be 1 to 268435455")
            })?),
        };
        let byte = u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | self.retain_handling.min(3) << 4;
        crate::broker::session::SubOpts::from_stored(byte, id).ok_or_else(|| {
            PyValueError::new_err(
                "invalid stored subscription options: retain_handling must be 0, 1 or 2 and \
                 subscription_identifier 1 to 268435455",
            )
        })
    }
}

impl SessionRecord {
    pub(super) fn into_snapshot(self) -> PyResult<SessionSnapshot> {
        Ok(SessionSnapshot {
            client_id: ByteString::from(self.client_id),
            // Without a disconnect time (a store written before it was kept),
            // `persistent_client_expiration` counts from the load.
            disconnected_at: match self.disconnected_at {
                Some(secs) if secs.is_finite() && secs >= 0.0 => Some(secs as u64),
                Some(secs) => {
                    return Err(PyValueError::new_err(format!(
                        "invalid disconnected_at {secs}"
                    )))
                }
                None => None,
            },
            session_expiry: self.session_expiry,
            subscription_options: self
                .subscription_options
                .into_iter()
                .map(|(filter, opts)| Ok((ByteString::from(filter), opts.into_opts()?)))
                .collect::<PyResult<_>>()?,
            subscriptions: self
                .subscriptions
                .into_iter()
                .map(|(filter, qos)| {
                    topic::validate_topic_filter(&filter)
                        .map_err(|e| PyValueError::new_err(e.to_string()))?;
                    Ok((ByteString::from(filter), qos_arg(qos)?))
                })
                .collect::<PyResult<_>>()?,
            pending: self
                .pending
                .into_iter()
                .map(|m| {
                    Ok(StoredMessage {
                        msg: Arc::new(Message {
                            topic: topic_arg(&m.topic)?,
                            payload: Bytes::from(m.payload),
                            qos: qos_arg(m.qos)?,
                            retain: m.retain,
                            publisher: ByteString::from(m.publisher),
                            properties: properties_arg(m.properties, m.expires_at)?,
                            mark: crate::broker::session::StreamMark::NONE,
                        }),
                        qos: qos_arg(m.delivery_qos)?,
                        retain: m.retain,
                        pkid: m.packet_id.filter(|&id| id != 0),
                        released: m.released,
                    })
                })
                .collect::<PyResult<_>>()?,
        })
    }
}

impl RetainedRecord {
    pub(super) fn into_message(self) -> PyResult<Arc<Message>> {
        Ok(Arc::new(Message {
            topic: topic_arg(&self.topic)?,
            payload: Bytes::from(self.payload),
            qos: qos_arg(self.qos)?,
            retain: true,
            publisher: ByteString::from(self.publisher),
            properties: properties_arg(self.properties, self.expires_at)?,
            mark: crate::broker::session::StreamMark::NONE,
        }))
    }
}

pub(super) fn retained_record<'py>(py: Python<'py>, m: &Message) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = PyDict::new(py);
    kwargs.set_item("topic", m.topic.as_ref() as &str)?;
    kwargs.set_item("payload", PyBytes::new(py, &m.payload))?;
    kwargs.set_item("qos", m.qos as u8)?;
    kwargs.set_item("publisher", m.publisher.as_ref() as &str)?;
    set_stored_properties(&kwargs, m)?;
    RETAINED_RECORD
        .import(py, "pyo3mq.types", "RetainedRecord")?
        .call((), Some(&kwargs))
}

pub(super) fn session_record<'py>(
    py: Python<'py>,
    s: &SessionSnapshot,
) -> PyResult<Bound<'py, PyAny>> {
    let stored_message = STORED_MESSAGE.import(py, "pyo3mq.types", "StoredMessage")?;
    let pending = s
        .pending
        .iter()
        .map(|p| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("topic", p.msg.topic.as_ref() as &str)?;
            kwargs.set_item("payload", PyBytes::new(py, &p.msg.payload))?;
            kwargs.set_item("qos", p.msg.qos as u8)?;
            kwargs.set_item("delivery_qos", p.qos as u8)?;
            kwargs.set_item("retain", p.retain)?;
            kwargs.set_item("publisher", p.msg.publisher.as_ref() as &str)?;
            kwargs.set_item("packet_id", p.pkid)?;
            kwargs.set_item("released", p.released)?;
            set_stored_properties(&kwargs, &p.msg)?;
            stored_message.call((), Some(&kwargs))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let subscriptions: Vec<(&str, u8)> = s
        .subscriptions
        .iter()
        .map(|(filter, qos)| (filter.as_ref(), *qos as u8))
        .collect();
    let kwargs = PyDict::new(py);
    kwargs.set_item("client_id", s.client_id.as_ref() as &str)?;
    kwargs.set_item("subscriptions", subscriptions)?;
    kwargs.set_item("pending", pending)?;
    if !s.subscription_options.is_empty() {
        let options_type =
            STORED_SUB_OPTIONS.import(py, "pyo3mq.types", "StoredSubscriptionOptions")?;
        let options = PyDict::new(py);
        for (filter, opts) in &s.subscription_options {
            let kw = PyDict::new(py);
            kw.set_item("no_local", opts.no_local())?;
            kw.set_item("retain_as_published", opts.retain_as_published())?;
            kw.set_item("retain_handling", opts.retain_handling() as u8)?;
            kw.set_item("subscription_identifier", opts.id.map(|id| id.get()))?;
            options.set_item(filter.as_ref() as &str, options_type.call((), Some(&kw))?)?;
        }
        kwargs.set_item("subscription_options", options)?;
    }
    kwargs.set_item("session_expiry", s.session_expiry)?;
    kwargs.set_item("disconnected_at", s.disconnected_at)?;
    SESSION_RECORD
        .import(py, "pyo3mq.types", "SessionRecord")?
        .call((), Some(&kwargs))
}
