//! The broker: listeners, connections, routing, sessions and their persistence.
//!
//! - [`server`]: the runtime, listeners, accept loop and graceful shutdown.
//! - [`cluster`]: cluster mode, several nodes as one broker through NATS JetStream.
//! - [`config`]: every setting, its default and its bounds.
//! - [`connection`]: one client connection (the select loop, its output buffer, the
//!   packet handlers).
//! - [`router`]: routing and the client registry, the single owner of subscriptions and
//!   retained messages.
//! - [`session`]: a client's session state (queue, inflight window, QoS 2 ids).
//! - [`store`]: session stores (memory, SQLite) and what they save.
//! - [`hooks`]: the traits Python (or Rust) implements, with the password-file and ACL-file
//!   implementations.
//! - [`sys_topics`]: the `$SYS` counters and publisher.
//! - [`transport`]: the streams under MQTT (TCP, TLS, WebSocket) and their handshakes.
//! - [`http`]: the metrics and health listener (`/metrics`, `/healthz`, `/readyz`).

pub mod bridge;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod router;
pub mod server;
pub mod session;
pub mod store;
pub mod sys_topics;
pub mod transport;

pub use config::Config;
pub use server::{Server, ServerError};
