//! pyo3mq: an MQTT 3.1/3.1.1 broker and client with a Rust core and a Python face.
//!
//! Where each part lives:
//!
//! - [`codec`] and [`topic`]: the protocol pieces broker and client share, with no tokio
//!   and no Python: packets, decoding and encoding, topic names and filters, the
//!   subscription and retained tries.
//! - [`broker`]: the server (listeners, connections, router, sessions, stores, hooks,
//!   `$SYS`), on tokio threads of its own.
//! - [`client`]: the MQTT client: options, errors, a protocol state machine without I/O,
//!   and the event loop that drives it.
//! - `python` (behind the default `python` feature): the module `pyo3mq._pyo3mq`, one
//!   registration function per part. With the feature off the crate is the pure core,
//!   which `cargo test --no-default-features` builds and tests without Python.
//!
//! Dependencies run one way: no two modules (counted at the first two levels, as
//! `broker::router` or `client::state`; `codec` and `topic` whole) import each other.
//! `tools/module_cycles.py` checks it in `make lint`.

pub mod broker;
pub mod client;
pub mod codec;
mod qos;
pub mod topic;

#[cfg(feature = "python")]
mod python;

/// With the `mimalloc` feature, every Rust allocation of the broker and client goes to
/// mimalloc instead of the C library's malloc (Python's own objects are not affected).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
