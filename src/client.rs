//! The MQTT 3.1/3.1.1/5.0 client core: protocol state and socket I/O on tokio, no Python.
//!
//! One [`Client`] is one logical connection (with optional automatic reconnect). Where
//! each part lives:
//!
//! - `options`: [`Options`] and the [`Reconnect`] policy (with its backoff).
//! - `error`: [`ClientError`], why a connection or a request ended.
//! - `state`: the protocol state machine, pure (no I/O, no clock reads), and the events it
//!   reports ([`ConnectionState`], [`StateChange`], [`Outcome`], [`Incoming`],
//!   [`Submitted`], [`Drained`]); its `inbound` and `lifecycle` submodules handle the
//!   server's packets and connections coming and going. Packet ids come from
//!   `crate::qos`, which the broker's sessions use too.
//! - `event_loop`: the connection task (connect and reconnect, reader, writer,
//!   keepalive) and `Shared`, what it shares with the handle.
//! - `runtime`: the process-wide tokio runtime and the wake socket.
//! - `handle`: [`Client`], what the application (the Python bindings) holds.
//! - `transport`: the byte streams (TCP, TLS on rustls, WebSocket over either) and the
//!   `Connector` that makes them, split into the reader and writer the connection task
//!   drives the same way for every transport.
//! - `store`: the optional session store (SQLite): unacknowledged outgoing QoS 1/2
//!   publishes and inbound QoS 2 ids, so that a session survives the process (a 5.0
//!   message's properties are not stored: a restored one is resent without them).
//! - `v5`: MQTT 5.0's CONNECT settings ([`V5Options`]), the CONNACK's limits
//!   ([`ServerLimits`]) and a refused publish ([`PublishError`]); the state machine's
//!   5.0 handling is in `state/v5.rs`. A 3.1/3.1.1 client has no 5.0 state at all.
//!
//! The state lives behind a short-held mutex that three parties touch: the caller's
//! thread (Python's event loop thread), which encodes outgoing packets straight into the
//! write buffer (a QoS 0 publish is one `memcpy` under the lock, with no thread hop); the
//! connection task on the client runtime; and the keepalive timer.
//!
//! Results travel back as *events* (completions, state changes, messages) queued in the
//! state. When the first event of a batch is queued the task writes one byte to a wake
//! socket whose other end the asyncio loop watches; the loop then drains every queued event
//! with one call. Tokio threads therefore never touch Python, and N acknowledgements that
//! arrive together cost Python one wake-up, not N.
//!
//! Every queue is bounded: the write buffer plus the not-yet-windowed publishes by
//! `max_buffered` bytes (a full buffer returns [`Submitted::Full`] and a "room" event
//! follows when it has drained), the inflight window by `max_inflight`, and received
//! messages by `max_incoming` (when full the reader stops reading the socket, which is
//! TCP back-pressure on the server).

mod error;
mod event_loop;
mod handle;
mod options;
mod runtime;
mod state;
mod store;
mod transport;
mod v5;

pub use error::ClientError;
pub use handle::Client;
pub use handle::SetupError;
pub use options::{Options, Reconnect, Scheme, TlsOptions, TlsVersions, TransportOptions, Verify};
pub use state::{ConnectionState, Drained, Incoming, Outcome, StateChange, Submitted};
pub use store::StoreError;
pub use v5::{AuthChallenge, PublishError, ReauthError, ServerLimits, V5Options};
