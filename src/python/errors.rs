//! The Python exception classes, created here and raised directly by the bindings.
//!
//! `MqttError` and `BrokerStartError` are plain `create_exception!` classes. The client's
//! classes need what that macro cannot give: a second base (`MqttTimeoutError` is also a
//! `TimeoutError`) and constructors with arguments of their own (`rc`, `return_code`,
//! `filters`, `return_codes`). They follow aiomqtt's: everything derives from
//! `MqttError`, and errors with a code from `MqttCodeError` (`.rc`). They are made by calling `type(name, bases, namespace)`
//! once, with `__init__` implemented in Rust, and exported under `pyo3mq` as before.

use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

pyo3::create_exception!(
    _pyo3mq,
    MqttError,
    pyo3::exceptions::PyException,
    "Base class of pyo3mq's errors."
);
pyo3::create_exception!(
    _pyo3mq,
    BrokerStartError,
    MqttError,
    "The broker could not start (bad configuration, or a listener could not bind)."
);

/// paho-mqtt's `MQTT_ERR_*` numbers, the `rc` of the errors that have no CONNACK code
/// (aiomqtt's `MqttCodeError.rc` carries paho's numbers too).
pub(crate) mod rc {
    pub(crate) const PROTOCOL: u8 = 2;
    pub(crate) const NO_CONN: u8 = 4;
    pub(crate) const CONN_LOST: u8 = 7;
    pub(crate) const KEEPALIVE: u8 = 16;
    /// SUBACK's failure return code.
    pub(crate) const SUBSCRIBE_FAILURE: u8 = 0x80;
}

/// The client's exception classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientErrorClass {
    Code,
    Connection,
    Timeout,
    Protocol,
    Refused,
    UnacceptableProtocolVersion,
    IdentifierRejected,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
    Subscribe,
    Reentrant,
    OperationTimeout,
    Disconnect,
    Publish,
    Unsubscribe,
}

/// How a class is made: its name, its docstring, its bases, and its `__init__`.
struct Spec {
    class: ClientErrorClass,
    name: &'static str,
    doc: &'static str,
    base: Base,
    init: Init,
}

#[derive(Clone, Copy)]
enum Base {
    MqttError,
    /// `MqttError` and `TimeoutError`.
    MqttErrorAndTimeout,
    Client(ClientErrorClass),
    /// A client class and `TimeoutError`.
    ClientAndTimeout(ClientErrorClass),
}

#[derive(Clone, Copy)]
enum Init {
    Inherited,
    Code,
    Connection,
    Refused,
    Subscribe,
}

/// In dependency order: a class's bases come before it.
const SPECS: [Spec; 16] = [
    Spec {
        class: ClientErrorClass::Code,
        name: "MqttCodeError",
        doc: "An error with a code, `rc`, as aiomqtt's `MqttCodeError(rc, *args)`: the \
              CONNACK return code of a refused connection, 0x80 for a refused \
              subscription, otherwise paho-mqtt's MQTT_ERR_* number (2 protocol error, 4 \
              not connected, 7 connection lost, 16 keepalive or CONNACK timeout).",
        base: Base::MqttError,
        init: Init::Code,
    },
    Spec {
        class: ClientErrorClass::Connection,
        name: "MqttConnectionError",
        doc: "The client is not connected: the connection could not be made, was lost, or \
              the client was closed. Every error that ends a connection derives from this \
              class. `MqttConnectionError(message=None, rc=4)`.",
        base: Base::Client(ClientErrorClass::Code),
        init: Init::Connection,
    },
    Spec {
        class: ClientErrorClass::Timeout,
        name: "MqttTimeoutError",
        doc: "No CONNACK within the timeout, or no PINGRESP within the keepalive (the \
              server vanished).",
        base: Base::ClientAndTimeout(ClientErrorClass::Connection),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::Protocol,
        name: "MqttProtocolError",
        doc: "The server sent a malformed packet or broke the protocol; the client closed \
              the connection. The message names the rule broken.",
        base: Base::Client(ClientErrorClass::Connection),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::Refused,
        name: "MqttConnectRefusedError",
        doc: "The server refused the connection; `return_code` (and `rc`) is the CONNACK \
              return code.",
        base: Base::Client(ClientErrorClass::Connection),
        init: Init::Refused,
    },
    Spec {
        class: ClientErrorClass::UnacceptableProtocolVersion,
        name: "MqttUnacceptableProtocolVersionError",
        doc: "CONNACK 1: the server does not speak the requested protocol level.",
        base: Base::Client(ClientErrorClass::Refused),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::IdentifierRejected,
        name: "MqttIdentifierRejectedError",
        doc: "CONNACK 2: the client id is not allowed.",
        base: Base::Client(ClientErrorClass::Refused),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::ServerUnavailable,
        name: "MqttServerUnavailableError",
        doc: "CONNACK 3: the MQTT service is unavailable.",
        base: Base::Client(ClientErrorClass::Refused),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::BadUsernameOrPassword,
        name: "MqttBadUsernameOrPasswordError",
        doc: "CONNACK 4: the user name or password is malformed.",
        base: Base::Client(ClientErrorClass::Refused),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::NotAuthorized,
        name: "MqttNotAuthorizedError",
        doc: "CONNACK 5: the client is not authorized to connect.",
        base: Base::Client(ClientErrorClass::Refused),
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::Subscribe,
        name: "MqttSubscribeError",
        doc: "The server refused at least one topic filter (SUBACK return code 0x80, also \
              `rc`). The filters it granted are subscribed; `return_codes` has one code per \
              filter.",
        base: Base::Client(ClientErrorClass::Code),
        init: Init::Subscribe,
    },
    Spec {
        class: ClientErrorClass::Reentrant,
        name: "MqttReentrantError",
        doc: "`connect()` (or `async with`) on a client that is already connected or \
              connecting: a client is reusable, but not reentrant.",
        base: Base::MqttError,
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::OperationTimeout,
        name: "MqttOperationTimeoutError",
        doc: "A `publish`, `subscribe` or `unsubscribe` was not acknowledged within its \
              `timeout`. The request is not withdrawn: it may still complete.",
        base: Base::MqttErrorAndTimeout,
        init: Init::Inherited,
    },
    Spec {
        class: ClientErrorClass::Disconnect,
        name: "MqttDisconnectError",
        doc: "MQTT 5.0: the server closed the connection with DISCONNECT; `reason_code` \
              (also `rc`) says why (0x8E session taken over, 0x8B server shutting down, \
              0x8D keep alive timeout, ...), with the server's `reason_string` and \
              `server_reference` when it sent them.",
        base: Base::Client(ClientErrorClass::Connection),
        init: Init::Connection,
    },
    Spec {
        class: ClientErrorClass::Publish,
        name: "MqttPublishError",
        doc: "MQTT 5.0: the server refused a publish (PUBACK or PUBREC reason code of 0x80 \
              or more, e.g. 0x87 not authorized, 0x97 quota exceeded), or the client \
              refused to send it because the CONNACK forbids it (0x95 larger than the \
              server's Maximum Packet Size, 0x9B above its Maximum QoS, 0x9A retain not \
              available). `reason_code` (also `rc`) and `reason_string`.",
        base: Base::Client(ClientErrorClass::Code),
        init: Init::Code,
    },
    Spec {
        class: ClientErrorClass::Unsubscribe,
        name: "MqttUnsubscribeError",
        doc: "MQTT 5.0: the server refused to unsubscribe at least one topic filter \
              (UNSUBACK reason code of 0x80 or more, also `rc`); `reason_codes` has one \
              code per filter.",
        base: Base::Client(ClientErrorClass::Code),
        init: Init::Code,
    },
];

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

/// `MqttCodeError(rc, *args)`, aiomqtt's signature.
#[pyfunction]
#[pyo3(signature = (this, /, rc, *args))]
fn code_init(
    this: &Bound<'_, PyAny>,
    rc: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    this.setattr("args", args)?;
    this.setattr("rc", rc)
}

/// `MqttConnectionError(message=None, rc=4)`: 4 is paho's MQTT_ERR_NO_CONN.
#[pyfunction]
// 4: paho's MQTT_ERR_NO_CONN (`rc::NO_CONN`), a literal so the signature shows it.
#[pyo3(signature = (this, /, message = None, rc = 4))]
fn connection_init(
    this: &Bound<'_, PyAny>,
    message: Option<&Bound<'_, PyAny>>,
    rc: u8,
) -> PyResult<()> {
    match message {
        Some(m) => this.setattr("args", (m,))?,
        None => this.setattr("args", PyTuple::empty(this.py()))?,
    }
    this.setattr("rc", rc)
}

/// `MqttConnectRefusedError(return_code, message=None)`.
#[pyfunction]
#[pyo3(signature = (this, /, return_code, message = None))]
fn refused_init(
    this: &Bound<'_, PyAny>,
    return_code: &Bound<'_, PyAny>,
    message: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let message = match message {
        Some(m) if m.is_truthy()? => m.clone(),
        _ => PyString::new(
            this.py(),
            &format!("connection refused: CONNACK return code {return_code}"),
        )
        .into_any(),
    };
    this.setattr("args", (message,))?;
    this.setattr("rc", return_code)?;
    this.setattr("return_code", return_code)
}

/// `MqttSubscribeError(filters, return_codes)`: `filters` as `[(filter, qos)]`.
#[pyfunction]
#[pyo3(signature = (this, /, filters, return_codes))]
fn subscribe_init(
    this: &Bound<'_, PyAny>,
    filters: &Bound<'_, PyAny>,
    return_codes: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let mut refused = Vec::new();
    let mut first = None;
    for pair in filters.try_iter()?.zip(return_codes.try_iter()?) {
        let (filter, code) = (pair.0?, pair.1?);
        // 0x80 in 3.1.1; 5.0's failure codes are all 0x80 or more (0x87, 0x8F, ...).
        if let Some(c) = code.extract::<i64>().ok().filter(|c| *c >= 0x80) {
            first.get_or_insert(c);
            refused.push(filter.get_item(0)?.str()?.to_string());
        }
    }
    let message = format!(
        "the server refused the subscription to {}",
        refused.join(", ")
    );
    this.setattr("args", (message,))?;
    this.setattr("rc", first.unwrap_or(i64::from(rc::SUBSCRIBE_FAILURE)))?;
    this.setattr("filters", filters)?;
    this.setattr("return_codes", return_codes)
}

/// The class made already for `class` (a base of the one being made).
fn made_already<'py>(
    made: &[(ClientErrorClass, Bound<'py, PyType>)],
    class: ClientErrorClass,
) -> PyResult<Bound<'py, PyType>> {
    made.iter()
        .find(|(c, _)| *c == class)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("base class missing"))
}

fn build(py: Python<'_>) -> PyResult<Vec<Py<PyType>>> {
    // A function in a class namespace becomes a method only if it binds `self` as a
    // descriptor; Rust functions do not, `functools.partialmethod` makes them.
    let partialmethod = py.import("functools")?.getattr("partialmethod")?;
    let type_ = py.get_type::<PyType>();
    let mut made: Vec<(ClientErrorClass, Bound<'_, PyType>)> = Vec::new();
    for spec in &SPECS {
        let bases = match spec.base {
            Base::MqttError => PyTuple::new(py, [py.get_type::<MqttError>()])?,
            Base::MqttErrorAndTimeout => PyTuple::new(
                py,
                [py.get_type::<MqttError>(), py.get_type::<PyTimeoutError>()],
            )?,
            Base::Client(base) => PyTuple::new(py, [made_already(&made, base)?])?,
            Base::ClientAndTimeout(base) => PyTuple::new(
                py,
                [made_already(&made, base)?, py.get_type::<PyTimeoutError>()],
            )?,
        };
        let namespace = PyDict::new(py);
        namespace.set_item("__module__", "pyo3mq")?;
        namespace.set_item("__doc__", spec.doc)?;
        let init = match spec.init {
            Init::Inherited => None,
            Init::Code => Some(wrap_pyfunction!(code_init, py)?),
            Init::Connection => Some(wrap_pyfunction!(connection_init, py)?),
            Init::Refused => Some(wrap_pyfunction!(refused_init, py)?),
            Init::Subscribe => Some(wrap_pyfunction!(subscribe_init, py)?),
        };
        if let Some(init) = init {
            namespace.set_item("__init__", partialmethod.call1((init,))?)?;
        }
        // MQTT 5.0's details, None unless the server sent them (set per instance).
        if matches!(
            spec.class,
            ClientErrorClass::Refused | ClientErrorClass::Disconnect | ClientErrorClass::Publish
        ) {
            namespace.set_item("reason_code", py.None())?;
            namespace.set_item("reason_string", py.None())?;
        }
        if spec.class == ClientErrorClass::Disconnect {
            namespace.set_item("server_reference", py.None())?;
        }
        let class = type_
            .call1((spec.name, bases, namespace))?
            .cast_into::<PyType>()?;
        made.push((spec.class, class));
    }
    Ok(made.into_iter().map(|(_, t)| t.unbind()).collect())
}

/// One of the client's exception classes.
pub(crate) fn client_error_class(
    py: Python<'_>,
    class: ClientErrorClass,
) -> PyResult<Bound<'_, PyType>> {
    let classes = CLASSES.get_or_try_init(py, || build(py))?;
    SPECS
        .iter()
        .position(|s| s.class == class)
        .and_then(|i| classes.get(i))
        .map(|t| t.bind(py).clone())
        .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("unknown exception class"))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MqttError", m.py().get_type::<MqttError>())?;
    m.add("BrokerStartError", m.py().get_type::<BrokerStartError>())?;
    for spec in &SPECS {
        m.add(spec.name, client_error_class(m.py(), spec.class)?)?;
    }
    Ok(())
}
