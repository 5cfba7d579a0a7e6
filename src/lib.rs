//! pyo3mq: an MQTT 3.1/3.1.1 broker and client with a Rust core.
//!
//! This file is the Python module `pyo3mq._pyo3mq` and nothing else: the bindings stay
//! thin over the plain Rust core (`codec`, `topic`, ...), which builds and tests without
//! Python when the default `python` feature is off.

pub mod codec;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _pyo3mq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
