//! MQTT 5.0 enhanced authentication in Python: the broker's
//! [`EnhancedAuthenticator`] hook, answered by the callables `pyo3mq.Broker` was given
//! per method name (`enhanced_auth={"SCRAM-SHA-256": hook}`).
//!
//! Each step travels like an authentication request (python/bridge.rs, control lane): an
//! [`EnhancedAuthCall`] record for `pyo3mq._dispatch`, which runs the hook (async on the
//! loop, sync in the executor, within `auth_timeout`) and answers through
//! [`EnhancedAuthReply`]. The method's state between steps is a Python object the broker
//! holds for the connection without looking inside; a reply that never comes (an
//! exception, a timeout, a dropped handle) is a failure.

use bytes::Bytes;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::oneshot;

use super::PyBridge;
use crate::broker::hooks::{
    AuthState, BoxFuture, EnhancedAuthRequest, EnhancedAuthStep, EnhancedAuthenticator,
};

/// The Python hooks' methods, in front of the bridge.
pub struct PyEnhancedAuth {
    bridge: PyBridge,
    methods: Vec<String>,
}

impl PyEnhancedAuth {
    pub fn new(bridge: PyBridge, methods: Vec<String>) -> PyEnhancedAuth {
        PyEnhancedAuth { bridge, methods }
    }
}

impl EnhancedAuthenticator for PyEnhancedAuth {
    fn handles(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    fn step(&self, request: EnhancedAuthRequest) -> BoxFuture<EnhancedAuthStep> {
        let bridge = self.bridge.clone();
        Box::pin(async move {
            bridge
                .enhanced_auth(request)
                .await
                .unwrap_or(EnhancedAuthStep::Failure)
        })
    }
}

/// One step for the Python hook.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub struct EnhancedAuthCall {
    client_id: String,
    username: Option<String>,
    certificate_subject: Option<String>,
    peer: (String, u16),
    method: String,
    data: Option<Py<PyBytes>>,
    reauth: bool,
    /// What the previous step returned as its state; None at the first step.
    state: Py<PyAny>,
    reply: Py<EnhancedAuthReply>,
}

/// Python's answer to one step. Dropping it unanswered is a failure.
#[pyclass(frozen, module = "pyo3mq._pyo3mq")]
pub struct EnhancedAuthReply {
    reply: Mutex<Option<oneshot::Sender<EnhancedAuthStep>>>,
}

#[pymethods]
impl EnhancedAuthReply {
    /// `outcome` is "continue" (AUTH 0x18 with `data`; `state` comes back with the next
    /// step), "success" (with optional final `data`) or "failure". A second call is
    /// ignored.
    #[pyo3(signature = (outcome, data=None, state=None))]
    fn resolve(
        &self,
        outcome: &str,
        data: Option<Vec<u8>>,
        state: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let step = match outcome {
            "continue" => EnhancedAuthStep::Continue {
                data: data.map(Bytes::from),
                state: AuthState(state.map(|s| Box::new(s) as _)),
            },
            "success" => EnhancedAuthStep::Success {
                data: data.map(Bytes::from),
            },
            "failure" => EnhancedAuthStep::Failure,
            other => {
                return Err(PyValueError::new_err(format!(
                    "outcome must be 'continue', 'success' or 'failure', not {other:?}"
                )))
            }
        };
        if let Some(tx) = self.reply.lock().take() {
            let _ = tx.send(step);
        }
        Ok(())
    }
}

/// The record for one step (called by the dispatch thread, attached to the interpreter).
pub(crate) fn record<'py>(
    py: Python<'py>,
    request: EnhancedAuthRequest,
    tx: oneshot::Sender<EnhancedAuthStep>,
) -> PyResult<Bound<'py, PyAny>> {
    let state = request
        .state
        .0
        .and_then(|s| s.downcast::<Py<PyAny>>().ok())
        .map_or_else(|| py.None(), |s| *s);
    let client = request.client;
    Ok(Bound::new(
        py,
        EnhancedAuthCall {
            client_id: client.client_id.to_string(),
            username: client.username.as_deref().map(str::to_owned),
            certificate_subject: client.certificate_subject.as_deref().map(str::to_owned),
            peer: (request.peer.ip().to_string(), request.peer.port()),
            method: request.method.to_string(),
            data: request
                .data
                .as_deref()
                .map(|d| PyBytes::new(py, d).unbind()),
            reauth: request.reauth,
            state,
            reply: Py::new(
                py,
                EnhancedAuthReply {
                    reply: Mutex::new(Some(tx)),
                },
            )?,
        },
    )?
    .into_any())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EnhancedAuthCall>()?;
    m.add_class::<EnhancedAuthReply>()
}
