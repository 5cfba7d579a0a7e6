//! pyo3mq: an MQTT 3.1/3.1.1/5.0 broker and client with a Rust core and a Python face.
//!
//! Where each part lives:
//!
//! - [`codec`], [`topic`], `qos` and `tls`: the protocol pieces broker and client share,
//!   with no tokio and no Python: packets, decoding and encoding, 5.0 properties and
//!   reason codes ([`codec`]); topic names and filters, their one validation, the
//!   subscription and retained tries ([`topic`]); QoS 1/2 packet-id allocation and
//!   inbound QoS 2 id tracking (`qos`); the certificate and key files TLS reads (`tls`).
//! - [`broker`]: the server (listeners, connections, router, sessions, persistence,
//!   stores, hooks, bridges, cluster mode, `$SYS`), on tokio threads of its own.
//! - [`client`]: the MQTT client: options, errors, a protocol state machine without I/O,
//!   and the event loop that drives it.
//! - `python` (behind the default `python` feature): the module `pyo3mq._pyo3mq`, one
//!   registration function per part. With the feature off the crate is the pure core,
//!   which `cargo test --no-default-features` builds and tests without Python.
//!
//! Dependencies run one way: no two modules import each other, counted with the parts
//! above as wholes (`broker`, `client`), with their children as wholes
//! (`broker::router`, `client::state`) and one by one at any depth. The parts are
//! layered too: the shared pieces use nothing of the others, `client` only them,
//! `broker` them and `client` (a bridge's remote side is the client core), and `python`
//! any of them. `tools/module_cycles.py` checks both in `make lint`.

pub mod broker;
pub mod client;
pub mod codec;
mod qos;
mod tls;
pub mod topic;

#[cfg(feature = "python")]
mod python;

/// With the `mimalloc` feature, every Rust allocation of the broker and client goes to
/// mimalloc instead of the C library's malloc (Python's own objects are not affected).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
