//! `BrokerCore`'s typed answers and arguments other than the stored records: what a
//! `publish` did (`Routed`), what a `reload` did (`ReloadReport`), and which hook a
//! `hook_called` counts (`HookKind`).
//!
//! Apart from `BrokerCore` because these are the boundary's types, declared once, with
//! the conversions from the broker's own values; the class only returns them.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::broker::metrics::HookKind;
use crate::broker::server::ReloadReport as ServerReloadReport;

/// What `BrokerCore.publish` did: the message is routed. `space_token` is set when it
/// filled a flow-controlled subscription: the publisher waits for the `SpaceFreed` record
/// with that token, as an MQTT publisher waits for its PUBACK.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct Routed {
    space_token: Option<u64>,
}

/// The common answer, made once: nothing to wait for.
static DELIVERED: PyOnceLock<Py<Routed>> = PyOnceLock::new();

impl Routed {
    pub(super) fn delivered(py: Python<'_>) -> PyResult<Py<Routed>> {
        DELIVERED
            .get_or_try_init(py, || Py::new(py, Routed { space_token: None }))
            .map(|routed| routed.clone_ref(py))
    }

    pub(super) fn waiting(py: Python<'_>, token: u64) -> PyResult<Py<Routed>> {
        Py::new(
            py,
            Routed {
                space_token: Some(token),
            },
        )
    }
}

/// What `BrokerCore.reload` did; `pyo3mq.Broker.reload()` makes it a `ReloadResult`.
#[pyclass(frozen, get_all, module = "pyo3mq._pyo3mq")]
pub(super) struct ReloadReport {
    /// The parts reloaded ("password_file", "acl_file", "tls").
    reloaded: Vec<String>,
    /// The parts that failed, in order, each with why (they keep what they had).
    failed: Vec<(String, String)>,
    /// TLS listeners whose certificates were reloaded.
    tls_listeners: usize,
}

impl From<ServerReloadReport> for ReloadReport {
    fn from(report: ServerReloadReport) -> Self {
        ReloadReport {
            reloaded: report.reloaded.iter().map(|p| p.to_string()).collect(),
            failed: report
                .failed
                .into_iter()
                .map(|(part, why)| (part.to_string(), why))
                .collect(),
            tls_listeners: report.tls_listeners,
        }
    }
}

/// A hook label of `/metrics`, as Python names the hook it reports on.
#[pyclass(
    name = "HookKind",
    module = "pyo3mq._pyo3mq",
    frozen,
    eq,
    hash,
    from_py_object
)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum PyHookKind {
    #[pyo3(name = "AUTHENTICATE")]
    Authenticate,
    #[pyo3(name = "AUTHORIZE_SUBSCRIBE")]
    AuthorizeSubscribe,
    #[pyo3(name = "AUTHORIZE_PUBLISH")]
    AuthorizePublish,
    #[pyo3(name = "ON_MESSAGE")]
    OnMessage,
    /// The observers (`on_connect` and the others).
    #[pyo3(name = "EVENTS")]
    Events,
}

#[pymethods]
impl PyHookKind {
    /// The hook's name, as logs and `/metrics` write it ("authorize_publish", ...).
    #[getter]
    fn label(&self) -> &'static str {
        HookKind::from(*self).as_str()
    }
}

impl From<PyHookKind> for HookKind {
    fn from(kind: PyHookKind) -> Self {
        match kind {
            PyHookKind::Authenticate => HookKind::Authenticate,
            PyHookKind::AuthorizeSubscribe => HookKind::AuthorizeSubscribe,
            PyHookKind::AuthorizePublish => HookKind::AuthorizePublish,
            PyHookKind::OnMessage => HookKind::OnMessage,
            PyHookKind::Events => HookKind::Events,
        }
    }
}
