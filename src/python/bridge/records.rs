//! The records handed to `pyo3mq._dispatch`: one small frozen `#[pyclass]` per request
//! or event (`AuthCall`, `PublishCall`, `Connected`, ...), the `ReplyHandle` through which
//! Python answers a request, and the conversions from the inbox's work to them.
//!
//! Apart from the bridge because this is the only place where Rust values become Python
//! objects for the dispatcher; the bridge itself only moves work.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyMemoryView, PyString};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::inbox::Work;
use crate::broker::hooks::{AuthDecision, ClientInfo, Event, Refusal, Verdict};
use crate::broker::session::Message;
use crate::codec::{ConnectReturnCode, QoS};
use crate::python::deny::Deny;
use crate::python::properties::MessageProperties;
use crate::topic::TopicError;

enum Reply {
    Auth(oneshot::Sender<AuthDecision>),
    Subscribe(oneshot::Sender<Verdict<QoS>>),
    Publish(oneshot::Sender<Verdict>),
    Intercept(
        oneshot::Sender<Vec<Option<Arc<Message>>>>,
        Vec<Arc<Message>>,
    ),
}

/// Python's answer to one request. Dropping it unanswered denies.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub(super) struct ReplyHandle {
    reply: Mutex<Option<Reply>>,
}

#[pymethods]
impl ReplyHandle {
    /// Auth: a CONNACK code (0 accepts, 4 or 5 refuse) or a `Deny`. Subscribe: the
    /// granted QoS, None or a `Deny`. Publish: a bool or a `Deny`. A second call is
    /// ignored.
    fn resolve(&self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some(reply) = self.reply.lock().take() else {
            return Ok(());
        };
        // A hook's own reason code (src/python/deny.rs).
        let deny = value.cast::<Deny>().ok().map(|d| d.get().refusal());
        match reply {
            Reply::Auth(tx) => {
                let decision = match deny {
                    Some(refusal) => AuthDecision::Refuse(refusal),
                    None => {
                        let code: u8 = value.extract()?;
                        match ConnectReturnCode::from_u8(code) {
                            Some(ConnectReturnCode::Accepted) => AuthDecision::Allow,
                            Some(code) => AuthDecision::Deny(code),
                            None => {
                                return Err(PyValueError::new_err(format!(
                                    "bad CONNACK code {code}"
                                )))
                            }
                        }
                    }
                };
                let _ = tx.send(decision);
            }
            Reply::Subscribe(tx) => {
                let granted = match (deny, value.extract::<Option<u8>>()) {
                    (Some(refusal), _) => Err(refusal),
                    (None, Ok(None)) => Err(Refusal::NOT_AUTHORIZED),
                    (None, Ok(Some(q))) => Ok(QoS::from_u8(q).ok_or_else(|| {
                        PyValueError::new_err(format!("granted QoS must be 0, 1 or 2, not {q}"))
                    })?),
                    (None, Err(err)) => return Err(err),
                };
                let _ = tx.send(granted);
            }
            Reply::Publish(tx) => {
                let verdict = match deny {
                    Some(refusal) => Err(refusal),
                    None if value.extract::<bool>()? => Ok(()),
                    None => Err(Refusal::NOT_AUTHORIZED),
                };
                let _ = tx.send(verdict);
            }
            Reply::Intercept(tx, originals) => {
                // One verdict per message: None drops it, True keeps it, and a
                // `Replacement` (checked when it was made) replaces it.
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
                    } else if let Ok(replacement) = verdict.cast::<Replacement>() {
                        Some(replacement.get().message.clone())
                    } else {
                        warn!(topic = %original.topic, "on_message verdict {verdict} is none of None, a bool or a Replacement: message dropped");
                        None
                    });
                }
                let _ = tx.send(out);
            }
        }
        Ok(())
    }
}

/// One message of an `InterceptCall`, from which `pyo3mq._dispatch` builds the
/// `pyo3mq.Message` the interceptor sees.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub(super) struct InterceptedMessage {
    #[pyo3(get)]
    topic: Py<PyString>,
    #[pyo3(get)]
    payload: Py<PyBytes>,
    #[pyo3(get)]
    qos: u8,
    #[pyo3(get)]
    retain: bool,
    /// The publisher's client id, as `pyo3mq.Message.client_id` names it.
    #[pyo3(get)]
    client_id: Py<PyString>,
    #[pyo3(get)]
    properties: Option<Py<MessageProperties>>,
    /// The routed message, whose publisher and encoded properties a replacement reuses.
    original: Arc<Message>,
}

#[pymethods]
impl InterceptedMessage {
    /// `message` (a `pyo3mq.Message` the interceptor returned) as the replacement of this
    /// one, checked here, the one place: the rules a published message obeys (topic,
    /// QoS, payload, properties and their payload format). A ValueError says which it
    /// breaks. Properties that are this message's own object keep their encoded bytes.
    fn replace_with(&self, message: &Bound<'_, PyAny>) -> PyResult<Replacement> {
        // Each refusal names the rule broken, as the `on_message failed` log line shows it.
        let refuse = |why: String| Err(PyValueError::new_err(why));
        let topic_obj = message.getattr("topic")?;
        let Ok(topic) = topic_obj.extract::<String>() else {
            return refuse("[MQTT-4.7.3-1] the replacement's topic is empty".into());
        };
        if let Err(err) = crate::topic::validate_topic_name(&topic) {
            return refuse(match err {
                TopicError::Empty => "[MQTT-4.7.3-1] the replacement's topic is empty".into(),
                TopicError::WildcardInTopicName => format!(
                    "[MQTT-3.3.2-2] the replacement's topic {} has a wildcard",
                    topic_obj.repr()?
                ),
                _ => "[MQTT-4.7.3-2] [MQTT-4.7.3-3] the replacement's topic is invalid".into(),
            });
        }
        let qos = message.getattr("qos")?;
        let Some(qos) = qos.extract::<u8>().ok().and_then(QoS::from_u8) else {
            return refuse(format!(
                "the replacement's QoS {} is not 0, 1 or 2",
                qos.repr()?
            ));
        };
        let payload = message.getattr("payload")?;
        let payload = if let Ok(bytes) = payload.cast::<PyBytes>() {
            bytes::Bytes::copy_from_slice(bytes.as_bytes())
        } else if payload.is_instance_of::<PyByteArray>()
            || payload.is_instance_of::<PyMemoryView>()
        {
            let copy = message.py().get_type::<PyBytes>().call1((&payload,))?;
            bytes::Bytes::copy_from_slice(copy.cast::<PyBytes>()?.as_bytes())
        } else {
            return refuse("the replacement's payload is not bytes".into());
        };
        let retain = message.getattr("retain")?;
        let Ok(retain) = retain.extract::<bool>() else {
            return refuse(format!(
                "the replacement's retain {} is not a bool",
                retain.repr()?
            ));
        };
        let properties = message.getattr("properties")?;
        let properties = if properties.is_none() {
            None
        } else if self
            .properties
            .as_ref()
            .is_some_and(|own| own.bind(message.py()).is(&properties))
        {
            // This message's own properties: their encoded bytes are shared, not encoded
            // again, and were checked against this payload only if it is unchanged.
            if payload != self.original.payload {
                if let Ok(props) = properties.cast::<MessageProperties>() {
                    check_format(props.get(), &payload)?;
                }
            }
            self.original.properties.clone()
        } else {
            let Ok(props) = properties.cast::<MessageProperties>() else {
                return refuse(format!(
                    "the replacement's properties {} are not MessageProperties",
                    properties.repr()?
                ));
            };
            check_format(props.get(), &payload)?;
            props
                .get()
                .to_wire()?
                .map(crate::broker::session::MessageProperties::new)
        };
        Ok(Replacement {
            message: Arc::new(Message {
                topic: ByteString::from(topic),
                payload,
                qos,
                retain,
                publisher: self.original.publisher.clone(),
                properties,
                mark: crate::broker::session::StreamMark::NONE,
            }),
        })
    }
}

/// [MQTT 5.0 3.3.2.3.2] A payload that `payload_format_indicator=1` says is UTF-8 text.
fn check_format(props: &MessageProperties, payload: &[u8]) -> PyResult<()> {
    props.check_payload(payload).map_err(|_| {
        PyValueError::new_err(
            "the replacement's payload_format_indicator=1 says UTF-8 text and its payload is \
             not (3.3.2.3.2, 0x99 Payload format invalid)",
        )
    })
}

/// An interceptor's replacement for one message, made by `InterceptedMessage.replace_with`
/// (which checked it) and handed back in the `on_message` verdicts.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub(super) struct Replacement {
    message: Arc<Message>,
}

// -- the records handed to `pyo3mq._dispatch` ------------------------------------------

/// A CONNECT for the authenticator.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct AuthCall {
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
pub(super) struct SubscribeCall {
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
pub(super) struct PublishCall {
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
/// `InterceptedMessage`s. (The interceptor is not told who sent them beyond each
/// message's `client_id`.)
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct InterceptCall {
    messages: Py<PyList>,
    reply: Py<ReplyHandle>,
}

/// `await broker.publish()` number `token` may return.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct SpaceFreed {
    token: u64,
}

/// In-process subscription `subscription` has messages to take.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct MessagesReady {
    subscription: u64,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct Connected {
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
pub(super) struct Disconnected {
    client_id: String,
    reason: &'static str,
    /// The 5.0 DISCONNECT's reason code, whichever side sent it; None without one.
    reason_code: Option<u8>,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct Subscribed {
    client_id: String,
    /// (filter, SUBACK code).
    filters: Vec<(String, u8)>,
}

#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct Unsubscribed {
    client_id: String,
    filters: Vec<String>,
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
pub(super) fn to_python(py: Python<'_>, work: Vec<Work>) -> PyResult<Bound<'_, PyList>> {
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
            Work::EnhancedAuth(request, tx) => super::enhanced_auth::record(py, request, tx)?,
            Work::Event(event) => event_record(py, event)?,
            Work::Ready(subscription) => Bound::new(py, MessagesReady { subscription })?.into_any(),
            Work::Space(token) => Bound::new(py, SpaceFreed { token })?.into_any(),
            Work::Intercept(batch, tx) => {
                let messages = PyList::empty(py);
                for m in &batch {
                    messages.append(intercepted(py, m)?)?;
                }
                Bound::new(
                    py,
                    InterceptCall {
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

fn intercepted<'py>(py: Python<'py>, m: &Arc<Message>) -> PyResult<Bound<'py, InterceptedMessage>> {
    Bound::new(
        py,
        InterceptedMessage {
            topic: PyString::new(py, &m.topic).unbind(),
            payload: PyBytes::new(py, &m.payload).unbind(),
            qos: m.qos as u8,
            retain: m.retain,
            client_id: PyString::new(py, &m.publisher).unbind(),
            properties: message_properties(py, m)?,
            original: m.clone(),
        },
    )
}

/// A message's MQTT 5.0 properties as a `pyo3mq.MessageProperties`, or None. Decoded
/// here, when the message becomes a Python object: routing never decodes them, and a
/// message without properties (every 3.1.1 one) costs a None.
pub(super) fn message_properties(
    py: Python<'_>,
    m: &Message,
) -> PyResult<Option<Py<MessageProperties>>> {
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
pub(super) struct StrCache {
    last: Option<(ByteString, Py<PyString>)>,
}

impl StrCache {
    pub(super) fn get<'py>(&mut self, py: Python<'py>, text: &ByteString) -> Bound<'py, PyString> {
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
