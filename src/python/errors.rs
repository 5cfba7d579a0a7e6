//! The Python exception classes, created here and raised directly by the bindings.

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

use pyo3::prelude::*;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MqttError", m.py().get_type::<MqttError>())?;
    m.add("BrokerStartError", m.py().get_type::<BrokerStartError>())?;
    Ok(())
}
