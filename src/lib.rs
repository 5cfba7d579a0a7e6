//! pyo3mq: an MQTT 3.1/3.1.1 broker and client with a Rust core.
//!
//! This file is the Python module `pyo3mq._pyo3mq` and nothing else: the bindings stay
//! thin over the plain Rust core below, which builds and tests without Python when the
//! default `python` feature is off.

pub mod client;
pub mod codec;
pub mod config;
pub mod connection;
pub mod hooks;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod sys_topics;
pub mod topic;

#[cfg(feature = "python")]
mod broker_bindings;
#[cfg(feature = "python")]
mod client_bindings;
#[cfg(feature = "python")]
mod log_bridge;
#[cfg(feature = "python")]
mod py_bridge;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
pyo3::create_exception!(
    _pyo3mq,
    MqttError,
    pyo3::exceptions::PyException,
    "Base class of pyo3mq's errors."
);
#[cfg(feature = "python")]
pyo3::create_exception!(
    _pyo3mq,
    BrokerStartError,
    MqttError,
    "The broker could not start (bad configuration, or a listener could not bind)."
);

/// Routes the core's `tracing` output at `level` to stderr, or with `to_python` to
/// Python's `logging` (loggers `pyo3mq.<module>`). The first call in a process wins.
#[cfg(feature = "python")]
#[pyfunction]
#[pyo3(signature = (level, to_python=false))]
fn init_logging(level: &str, to_python: bool) -> PyResult<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("pyo3mq={level}")).map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!("invalid log level {level:?}: {e}"))
        })?;
    if to_python {
        let layer = log_bridge::PythonLayer::start().ok_or_else(|| {
            pyo3::exceptions::PyRuntimeError::new_err("cannot start the logging thread")
        })?;
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init();
    }
    Ok(())
}

#[cfg(feature = "python")]
#[pymodule]
fn _pyo3mq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MqttError", m.py().get_type::<MqttError>())?;
    m.add("BrokerStartError", m.py().get_type::<BrokerStartError>())?;
    m.add_class::<broker_bindings::BrokerCore>()?;
    m.add_class::<py_bridge::ReplyHandle>()?;
    m.add_function(wrap_pyfunction!(init_logging, m)?)?;
    client_bindings::register(m)?;
    Ok(())
}
