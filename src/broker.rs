//! The broker: listeners, connections, routing, sessions and their persistence.
//!
//! - [`server`]: the runtime, listeners, accept loop and graceful shutdown.
//! - [`cluster`]: cluster mode, several nodes as one broker through NATS JetStream.
//! - [`config`]: every setting, its default and its bounds, a bridge's (`config/bridge.rs`)
//!   and cluster mode's with their checks (`config/cluster.rs`) included.
//! - [`connection`]: one client connection (the select loop, its output buffer, the
//!   packet handlers).
//! - [`router`]: routing and the client registry, the single owner of subscriptions and
//!   retained messages; the MQTT 5.0 wills waiting out their delay (`router/will.rs`);
//!   the [`router::ClusterLink`] cluster mode implements (`router/remote.rs`).
//! - [`session`]: a client's session state (queue, inflight window, QoS 2 ids), with
//!   what it holds: messages, their 5.0 properties, subscription options
//!   (`session/sub_opts.rs`) and the queue's overflow policy.
//! - [`store`]: session stores (memory, SQLite) and what they save.
//! - [`hooks`]: the traits Python (or Rust) implements, with the password-file and ACL-file
//!   implementations.
//! - [`sys_topics`]: the `$SYS` counters and publisher.
//! - [`transport`]: the streams under MQTT (TCP, TLS, WebSocket) and their handshakes.
//! - [`http`]: the metrics and health listener (`/metrics`, `/healthz`, `/readyz`) and
//!   the Prometheus rendering (`http/prometheus.rs`); [`metrics`] has the counters.
//!
//! No two of these import each other (`tools/module_cycles.py`, run by `make lint`):
//! [`session`] uses no other module of the broker, [`store`] and [`hooks`] only the
//! session, [`config`] only the session's and the store's types, [`metrics`] none; the
//! [`router`] uses those and never [`cluster`] or a connection; cluster mode, the
//! connections, `$SYS`, the HTTP listener and the server sit on top. A lower module that
//! needs something of a higher one defines a trait for it (as the router's
//! [`router::ClusterLink`]) or takes values (as [`cluster::Settings`]).

pub mod bridge;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod hooks;
pub mod http;
pub mod metrics;
#[cfg(unix)]
pub mod parking;
#[cfg(not(unix))]
#[path = "broker/parking_none.rs"]
pub mod parking;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod sys_topics;
pub mod transport;

pub use config::Config;
pub use server::{Server, ServerError};
