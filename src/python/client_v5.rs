//! The MQTT 5.0 parts of the client's bindings: CONNECT settings, subscription options,
//! message properties in and out, the CONNACK's limits ([`ConnAckInfo`]) and the 5.0
//! errors as the exception instances Python raises.

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::client::{Client, ClientError, PublishError, ReauthError, ServerLimits, V5Options};
use crate::codec::{LastWill, Properties, QoS, RetainHandling, SubscriptionOptions};

use super::properties::MessageProperties;

use super::errors::{client_error_class, ClientErrorClass};

/// The 5.0 CONNECT settings from `ClientCore`'s keyword arguments.
pub(super) fn v5_options(
    session_expiry_interval: Option<u32>,
    receive_maximum: Option<u16>,
    topic_alias_maximum: u16,
    outgoing_topic_aliases: u16,
    user_properties: Option<Vec<(String, String)>>,
    extra: V5Extra,
) -> PyResult<V5Options> {
    if extra.auth_data.is_some() && extra.auth_method.is_none() {
        return Err(PyValueError::new_err(
            "auth_data needs auth_method (spec 3.1.2.11.10: no Authentication Data without \
             a method)",
        ));
    }
    if receive_maximum == Some(0) {
        return Err(PyValueError::new_err(
            "receive_maximum must be between 1 and 65535 (0 is a protocol error)",
        ));
    }
    Ok(V5Options {
        session_expiry_interval,
        receive_maximum,
        topic_alias_maximum,
        outgoing_topic_aliases,
        user_properties: user_properties.unwrap_or_default(),
        request_problem_information: extra.request_problem_information,
        authentication_method: extra.auth_method,
        authentication_data: extra.auth_data.map(Bytes::from),
    })
}

/// The 5.0 CONNECT settings added after the first ones (`ClientCore` keywords).
#[derive(Default)]
pub(super) struct V5Extra {
    pub(super) request_problem_information: Option<bool>,
    pub(super) auth_method: Option<String>,
    pub(super) auth_data: Option<Vec<u8>>,
}

/// Sets the will's Will Delay Interval (seconds the server waits after the connection
/// is lost before it publishes the will; a reconnect within it cancels the will).
pub(super) fn set_will_delay(will: Option<&mut LastWill>, delay: Option<u32>) -> PyResult<()> {
    let Some(delay) = delay else {
        return Ok(());
    };
    let Some(will) = will else {
        return Err(PyValueError::new_err("will_delay_interval needs a will"));
    };
    will.properties
        .get_or_insert_with(Box::default)
        .will_delay_interval = Some(delay);
    Ok(())
}

/// The next server challenge of an enhanced authentication as `(seq, data, reauth)`.
pub(super) fn auth_challenge<'py>(
    py: Python<'py>,
    client: &Client,
) -> Option<(u64, Option<Bound<'py, PyBytes>>, bool)> {
    client
        .auth_challenge()
        .map(|c| (c.seq, c.data.map(|d| PyBytes::new(py, &d)), c.reauth))
}

/// Starts a re-authentication; the token completes on the server's AUTH 0x00.
pub(super) fn reauthenticate(
    py: Python<'_>,
    client: &Client,
    data: Option<Vec<u8>>,
) -> PyResult<u64> {
    client
        .reauthenticate(data.map(Bytes::from))
        .map_err(|e| match e {
            ReauthError::NotConnected => {
                match client_error_class(py, ClientErrorClass::Connection)
                    .and_then(|class| class.call1((e.to_string(),)))
                {
                    Ok(instance) => PyErr::from_value(instance),
                    Err(err) => err,
                }
            }
            ReauthError::InProgress => PyRuntimeError::new_err(e.to_string()),
            ReauthError::NoMethod | ReauthError::Encode(_) => PyValueError::new_err(e.to_string()),
        })
}

/// A SUBSCRIBE's options byte from its parts.
pub(super) fn subscription_options(
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
) -> PyResult<SubscriptionOptions> {
    let retain_handling = match retain_handling {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        other => {
            return Err(PyValueError::new_err(format!(
                "retain_handling must be 0, 1 or 2, not {other}"
            )))
        }
    };
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    })
}

/// The exception a 5.0 error raises; `None` for the errors 3.1.1 has too.
pub(super) fn exception_v5<'py>(
    py: Python<'py>,
    e: &ClientError,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let message = e.to_string();
    let (instance, reason, reason_string) = match e {
        ClientError::RefusedV5 {
            reason,
            reason_string,
        } => {
            // The 3.1.1 classes for the 5.0 codes that mean the same.
            let class = match reason.0 {
                0x84 => ClientErrorClass::UnacceptableProtocolVersion,
                0x85 => ClientErrorClass::IdentifierRejected,
                0x86 => ClientErrorClass::BadUsernameOrPassword,
                0x87 => ClientErrorClass::NotAuthorized,
                0x88 | 0x89 => ClientErrorClass::ServerUnavailable,
                _ => ClientErrorClass::Refused,
            };
            let instance = client_error_class(py, class)?.call1((reason.0, message))?;
            (instance, *reason, reason_string)
        }
        ClientError::Disconnected {
            reason,
            reason_string,
            server_reference,
        } => {
            let instance =
                client_error_class(py, ClientErrorClass::Disconnect)?.call1((message, reason.0))?;
            instance.setattr("server_reference", server_reference.as_deref())?;
            (instance, *reason, reason_string)
        }
        ClientError::Rejected {
            reason,
            reason_string,
            ..
        } => {
            let instance =
                client_error_class(py, ClientErrorClass::Publish)?.call1((reason.0, message))?;
            (instance, *reason, reason_string)
        }
        ClientError::ProtocolV5 { reason, .. } => {
            let instance =
                client_error_class(py, ClientErrorClass::Protocol)?.call1((message, reason.0))?;
            return Ok(Some(instance));
        }
        _ => return Ok(None),
    };
    instance.setattr("reason_code", reason.0)?;
    instance.setattr("reason_string", reason_string.as_deref())?;
    Ok(Some(instance))
}

/// What a refused 5.0 publish raises: `MqttPublishError` for what the CONNACK forbids,
/// ValueError for a bad argument.
pub(super) fn publish_error(py: Python<'_>, e: PublishError) -> PyErr {
    if matches!(e, PublishError::Encode(_) | PublishError::Invalid(_)) {
        return PyValueError::new_err(e.to_string());
    }
    let reason = e.reason();
    let made = client_error_class(py, ClientErrorClass::Publish)
        .and_then(|class| class.call1((reason.0, e.to_string())))
        .and_then(|instance| {
            instance.setattr("reason_code", reason.0)?;
            Ok(instance)
        });
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

/// The property set a 5.0 publish sends for `props` (checked for the payload).
pub(super) fn publish_properties(
    props: &MessageProperties,
    payload: &Bound<'_, PyAny>,
) -> PyResult<Properties> {
    // [MQTT-3.3.4-6]: the server adds subscription identifiers, a publisher never does.
    props.to_wire()?;
    if let Ok(b) = payload.cast::<pyo3::types::PyBytes>() {
        props.check_payload(b.as_bytes())?;
    } else if let Ok(s) = payload.cast::<pyo3::types::PyByteArray>() {
        props.check_payload(&s.to_vec())?;
    }
    Ok(props.to_codec())
}

/// The will's property set (the message properties a will may carry, 3.1.3.2).
pub(super) fn will_properties(
    props: &MessageProperties,
    payload: &Bound<'_, PyAny>,
) -> PyResult<Box<Properties>> {
    let p = publish_properties(props, payload)?;
    // A will's set allows the same message properties as a PUBLISH; checked here so a
    // bad one is the constructor's error, not every CONNECT's.
    p.encoded_len(crate::codec::PropertyContext::Will)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(Box::new(p))
}

/// What the last MQTT 5.0 CONNACK said: the server's limits (with the spec's defaults
/// for what it left out) and its other properties.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct ConnAckInfo {
    limits: ServerLimits,
}

impl ConnAckInfo {
    pub(super) fn new(limits: ServerLimits) -> ConnAckInfo {
        ConnAckInfo { limits }
    }

    fn props(&self) -> Option<&Properties> {
        self.limits.connack.properties.as_deref()
    }
}

#[pymethods]
impl ConnAckInfo {
    #[getter]
    fn session_present(&self) -> bool {
        self.limits.connack.session_present
    }

    /// 0 (Success): a refused CONNACK raises instead.
    #[getter]
    fn reason_code(&self) -> u8 {
        self.limits.connack.reason.0
    }

    /// QoS 1/2 publishes the client keeps unacknowledged at most (65,535 by default).
    #[getter]
    fn receive_maximum(&self) -> u16 {
        self.limits.receive_maximum
    }

    #[getter]
    fn maximum_qos(&self) -> u8 {
        self.limits.maximum_qos as u8
    }

    #[getter]
    fn retain_available(&self) -> bool {
        self.limits.retain_available
    }

    /// None: no limit but the protocol's.
    #[getter]
    fn maximum_packet_size(&self) -> Option<u32> {
        self.limits.maximum_packet_size
    }

    #[getter]
    fn topic_alias_maximum(&self) -> u16 {
        self.limits.topic_alias_maximum
    }

    /// The keepalive the server set for this client (it replaces the client's own).
    #[getter]
    fn server_keep_alive(&self) -> Option<u16> {
        self.limits.server_keep_alive
    }

    /// The client id the server assigned (the client sent an empty one).
    #[getter]
    fn assigned_client_identifier(&self) -> Option<&str> {
        self.limits.assigned_client_identifier.as_deref()
    }

    #[getter]
    fn session_expiry_interval(&self) -> Option<u32> {
        self.props().and_then(|p| p.session_expiry_interval)
    }

    #[getter]
    fn wildcard_subscription_available(&self) -> bool {
        self.props()
            .and_then(|p| p.wildcard_subscription_available)
            .unwrap_or(true)
    }

    #[getter]
    fn subscription_identifier_available(&self) -> bool {
        self.props()
            .and_then(|p| p.subscription_identifier_available)
            .unwrap_or(true)
    }

    #[getter]
    fn shared_subscription_available(&self) -> bool {
        self.props()
            .and_then(|p| p.shared_subscription_available)
            .unwrap_or(true)
    }

    #[getter]
    fn response_information(&self) -> Option<&str> {
        self.props().and_then(|p| p.response_information.as_deref())
    }

    #[getter]
    fn server_reference(&self) -> Option<&str> {
        self.props().and_then(|p| p.server_reference.as_deref())
    }

    #[getter]
    fn reason_string(&self) -> Option<&str> {
        self.props().and_then(|p| p.reason_string.as_deref())
    }

    /// Enhanced authentication: the method the server confirmed.
    #[getter]
    fn authentication_method(&self) -> Option<&str> {
        self.props()
            .and_then(|p| p.authentication_method.as_deref())
    }

    /// Enhanced authentication: the server's last data (a SCRAM server's signature).
    #[getter]
    fn authentication_data<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.props()
            .and_then(|p| p.authentication_data.as_deref())
            .map(|d| PyBytes::new(py, d))
    }

    #[getter]
    fn user_properties(&self) -> Vec<(String, String)> {
        self.props()
            .map(|p| {
                p.user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn __repr__(&self) -> String {
        format!(
            "ConnAckInfo(session_present={}, receive_maximum={}, maximum_qos={}, \
             retain_available={}, maximum_packet_size={:?}, topic_alias_maximum={}, \
             server_keep_alive={:?}, assigned_client_identifier={:?})",
            self.limits.connack.session_present,
            self.limits.receive_maximum,
            self.limits.maximum_qos as u8,
            self.limits.retain_available,
            self.limits.maximum_packet_size,
            self.limits.topic_alias_maximum,
            self.limits.server_keep_alive,
            self.limits.assigned_client_identifier,
        )
    }
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ConnAckInfo>()?;
    Ok(())
}
