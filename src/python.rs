//! The Python module `pyo3mq._pyo3mq` (behind the default `python` feature): the only
//! code that touches the interpreter. Each part registers its own classes and functions;
//! tokio threads never call Python, they hand work to the threads in [`bridge`] and
//! [`logging`].
//!
//! - [`errors`]: the exception classes, created in Rust and raised directly.
//! - [`broker`]: `BrokerCore`, the class under `pyo3mq.Broker`.
//! - [`bridge`]: the hand-off between the broker's tokio threads and the asyncio loop
//!   (hooks, events, in-process subscriptions), with `ReplyHandle`.
//! - [`enhanced_auth`]: the MQTT 5.0 enhanced authentication hook's Python end.
//! - [`client`]: `ClientCore` and `ClientMessage`, under `pyo3mq.Client`; [`client_v5`]
//!   its MQTT 5.0 records (CONNACK information, subscription options).
//! - [`logging`]: the core's `tracing` lines, to stderr or to Python's `logging`.
//! - [`properties`]: `MessageProperties`, the MQTT 5.0 properties of a message.

mod bridge;
mod broker;
mod client;
mod client_v5;
mod deny;
mod errors;
mod logging;
pub(crate) mod properties;

use pyo3::prelude::*;

#[pymodule]
fn _pyo3mq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    logging::register(m)?;
    broker::register(m)?;
    bridge::register(m)?;
    bridge::enhanced_auth::register(m)?;
    client::register(m)?;
    client_v5::register(m)?;
    properties::register(m)?;
    deny::register(m)?;
    Ok(())
}
