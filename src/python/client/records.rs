//! What the client's bindings hand to Python besides messages: the connection state and
//! publish outcome as enums, the records of a drained batch (`Completion`,
//! `StateChange`, `Drained`), and the exception instances made for client errors.
//!
//! Apart from `ClientCore` because these are the typed boundary itself, converted in one
//! place; the class only calls them.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList};

use crate::client::{ClientError, ConnectionState, Outcome, StateChange};
use crate::codec::ConnectReturnCode;

use crate::python::client_v5;
use crate::python::errors::{client_error_class, rc, ClientErrorClass};

/// Declares an enum that Python sees as constants: each member one frozen object (so
/// Python may compare with `is` as well as `==`, and use it as a dict key), in
/// `pyo3mq._pyo3mq` under the Python name given after `as`, never taken back from
/// Python (the bindings take no such argument). One place for the class options so
/// that this file's enums cannot drift apart.
macro_rules! py_constants {
    ($(#[$attr:meta])* pub enum $ident:ident as $name:tt { $($body:tt)* }) => {
        $(#[$attr])*
        #[pyclass(name = $name, module = "pyo3mq._pyo3mq", frozen, eq, hash, skip_from_py_object)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $ident { $($body)* }
    };
}

py_constants! {
    /// Where the core's connection stands (`pyo3mq.ConnectionState` mirrors it member for
    /// member).
    pub enum PyConnectionState as "ConnectionState" {
        #[pyo3(name = "CONNECTING")]
        Connecting,
        #[pyo3(name = "CONNECTED")]
        Connected,
        #[pyo3(name = "RECONNECTING")]
        Reconnecting,
        #[pyo3(name = "CLOSED")]
        Closed,
    }
}

impl From<ConnectionState> for PyConnectionState {
    fn from(s: ConnectionState) -> Self {
        match s {
            ConnectionState::Connecting => PyConnectionState::Connecting,
            ConnectionState::Connected => PyConnectionState::Connected,
            ConnectionState::Reconnecting => PyConnectionState::Reconnecting,
            ConnectionState::Closed => PyConnectionState::Closed,
        }
    }
}

py_constants! {
    /// What `ClientCore.publish` returns when it has no token to return. (A closed client
    /// raises instead, and a QoS 1/2 publish returns its token, an int.)
    pub enum PySubmitted as "Submitted" {
        /// QoS 0: handed over.
        #[pyo3(name = "SENT")]
        Sent,
        /// The write buffer is full: retry after a drain with `room` set.
        #[pyo3(name = "FULL")]
        Full,
    }
}

/// How a request ended: `error` is None on success, and `value` is the result (None,
/// the session present flag of a connect, or the SUBACK return codes).
#[pyclass(module = "pyo3mq._pyo3mq", frozen)]
pub struct Completion {
    #[pyo3(get)]
    token: u64,
    #[pyo3(get)]
    value: Py<PyAny>,
    #[pyo3(get)]
    error: Option<Py<PyAny>>,
}

/// A state transition of the core; `error` is the exception that caused it, if any.
#[pyclass(name = "StateChange", module = "pyo3mq._pyo3mq", frozen)]
pub struct StateChangeRecord {
    #[pyo3(get)]
    state: PyConnectionState,
    #[pyo3(get)]
    session_present: bool,
    #[pyo3(get)]
    error: Option<Py<PyAny>>,
}

/// What `ClientCore.drain` took: each list is None when empty (the common case costs no
/// list), and `room` says publishing may resume after a full buffer.
#[pyclass(module = "pyo3mq._pyo3mq", frozen)]
pub struct Drained {
    #[pyo3(get)]
    pub(super) completions: Option<Py<PyList>>,
    #[pyo3(get)]
    pub(super) states: Option<Py<PyList>>,
    #[pyo3(get)]
    pub(super) messages: Option<Py<PyList>>,
    #[pyo3(get)]
    pub(super) room: bool,
}

/// The exception instance for a client error, of the class Python code catches.
pub(super) fn exception<'py>(py: Python<'py>, e: &ClientError) -> PyResult<Bound<'py, PyAny>> {
    if let Some(instance) = client_v5::exception_v5(py, e)? {
        return Ok(instance);
    }
    let message = e.to_string();
    match e {
        ClientError::Refused(code) => {
            let class = match code {
                ConnectReturnCode::UnacceptableProtocolVersion => {
                    ClientErrorClass::UnacceptableProtocolVersion
                }
                ConnectReturnCode::IdentifierRejected => ClientErrorClass::IdentifierRejected,
                ConnectReturnCode::ServerUnavailable => ClientErrorClass::ServerUnavailable,
                ConnectReturnCode::BadUserNameOrPassword => ClientErrorClass::BadUsernameOrPassword,
                ConnectReturnCode::NotAuthorized => ClientErrorClass::NotAuthorized,
                ConnectReturnCode::Accepted => ClientErrorClass::Refused,
            };
            client_error_class(py, class)?.call1((*code as u8, message))
        }
        ClientError::Protocol(_) => {
            client_error_class(py, ClientErrorClass::Protocol)?.call1((message, rc::PROTOCOL))
        }
        ClientError::Timeout(_) => {
            client_error_class(py, ClientErrorClass::Timeout)?.call1((message, rc::KEEPALIVE))
        }
        ClientError::ConnectionLost(_) => {
            client_error_class(py, ClientErrorClass::Connection)?.call1((message, rc::CONN_LOST))
        }
        ClientError::ConnectFailed(_)
        | ClientError::Tls(_)
        | ClientError::Store(_)
        | ClientError::Closed
        // Made by `exception_v5` above.
        | ClientError::ProtocolV5 { .. }
        | ClientError::RefusedV5 { .. }
        | ClientError::Disconnected { .. }
        | ClientError::Rejected { .. } => {
            client_error_class(py, ClientErrorClass::Connection)?.call1((message, rc::NO_CONN))
        }
    }
}

pub(super) fn optional_exception(
    py: Python<'_>,
    e: Option<&ClientError>,
) -> PyResult<Option<Py<PyAny>>> {
    e.map(|e| exception(py, e).map(Bound::unbind)).transpose()
}

pub(super) fn completion(py: Python<'_>, token: u64, outcome: &Outcome) -> PyResult<Completion> {
    let (value, error) = match outcome {
        Outcome::Done => (py.None(), None),
        Outcome::Connected(session_present) => (
            PyBool::new(py, *session_present)
                .to_owned()
                .into_any()
                .unbind(),
            None,
        ),
        Outcome::Granted(codes) | Outcome::Unsubscribed(codes) => {
            (PyList::new(py, codes)?.into_any().unbind(), None)
        }
        Outcome::Failed(e) => (py.None(), Some(exception(py, e)?.unbind())),
    };
    Ok(Completion {
        token,
        value,
        error,
    })
}

pub(super) fn state_change(py: Python<'_>, s: &StateChange) -> PyResult<StateChangeRecord> {
    Ok(StateChangeRecord {
        state: s.state.into(),
        session_present: s.session_present,
        error: optional_exception(py, s.error.as_ref())?,
    })
}

/// A list of Python objects made from `items`, or None when there are none.
pub(super) fn list_or_none<'py, T, O>(
    py: Python<'py>,
    items: &[T],
    f: impl Fn(&T) -> PyResult<O>,
) -> PyResult<Option<Py<PyList>>>
where
    O: IntoPyObject<'py>,
{
    if items.is_empty() {
        return Ok(None);
    }
    let objects = items.iter().map(f).collect::<PyResult<Vec<_>>>()?;
    Ok(Some(PyList::new(py, objects)?.unbind()))
}
