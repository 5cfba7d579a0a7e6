//! [`Client`], the handle the application (the Python bindings) holds: it validates
//! requests, hands them to the state under a short lock, and drains what came back.

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::time::Instant;

use crate::codec::{self, Properties, Protocol, QoS, SubscriptionOptions};
use crate::topic as topics;

use super::error::ClientError;
use super::event_loop::Shared;
use super::options::Options;
use super::runtime::{runtime, WakePipe};
use super::state::{ConnectionState, Drained, Incoming, Limits, State, Submitted};
use super::store::{Store, StoreError};
use super::transport::Connector;
use super::v5::{AuthChallenge, PublishError, ReauthError, ServerLimits};

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The options are not valid.
    #[error("{0}")]
    Invalid(String),
    /// The session store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An MQTT client. Dropping it closes the connection (without waiting).
pub struct Client {
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.shared.addr())
            .field("client_id", &self.shared.opts.client_id)
            .finish()
    }
}

/// Checks a topic name and payload size before anything is queued.
fn check_publish(topic: &str, payload_len: usize) -> Result<(), String> {
    topics::validate_topic_name(topic).map_err(|e| e.to_string())?;
    if 2 + topic.len() + 2 + payload_len > codec::MAX_REMAINING_LENGTH {
        return Err(format!(
            "payload of {payload_len} bytes is too large for an MQTT packet"
        ));
    }
    Ok(())
}

impl Client {
    /// Validates the options and prepares the client; nothing connects until [`connect`].
    ///
    /// [`connect`]: Client::connect
    ///
    /// With a session store the stored session is loaded here (blocking file I/O: call it
    /// off any async runtime's workers), and resumed by the first connection.
    pub fn new(mut opts: Options) -> Result<Client, SetupError> {
        opts.validate().map_err(SetupError::Invalid)?;
        // Certificates, keys and the system's roots are read here, once: a bad file is
        // the constructor's error, naming the file.
        let connector = Connector::new(&opts).map_err(SetupError::Invalid)?;
        let wake = WakePipe::new()
            .map_err(|e| SetupError::Invalid(format!("cannot create the wake socket: {e}")))?;
        let limits = Limits {
            max_inflight: opts.max_inflight,
            max_buffered: opts.max_buffered,
            max_incoming: opts.max_incoming,
            clean_session: opts.clean_session,
            persist: opts.session_store.is_some(),
        };
        let mut state = State::new(limits, Instant::now());
        if opts.protocol == Protocol::V5 {
            state.enable_v5(&opts.v5);
        }
        let store = match &opts.session_store {
            Some(path) => {
                let (store, session) = Store::open(path, &opts.client_id)?;
                state.restore(session);
                Some(store)
            }
            None => None,
        };
        Ok(Client {
            shared: Arc::new(Shared::new(opts, connector, state, wake, store)),
        })
    }

    /// The descriptor (socket on Windows) the application's loop watches: readable means
    /// [`drain`](Client::drain) has something.
    pub fn wake_fd(&self) -> i64 {
        self.shared.wake.fd()
    }

    pub fn client_id(&self) -> &str {
        &self.shared.opts.client_id
    }

    pub fn options(&self) -> &Options {
        &self.shared.opts
    }

    /// Starts connecting on the client runtime; the outcome is reported with the token.
    pub fn connect(&self) -> io::Result<u64> {
        let rt = runtime()?;
        let token = self.shared.with_state(|st| {
            if st.started {
                None
            } else {
                st.started = true;
                Some(st.new_token())
            }
        });
        let token = token.ok_or_else(|| {
            io::Error::new(io::ErrorKind::AlreadyExists, "connect() was already called")
        })?;
        rt.spawn(Arc::clone(&self.shared).persist_loop());
        rt.spawn(Arc::clone(&self.shared).run(token));
        Ok(token)
    }

    /// Publishes. QoS 0 is [`Submitted::Sent`] once encoded into the write buffer; QoS 1/2
    /// returns a token completed on PUBACK / PUBCOMP.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Submitted, String> {
        check_publish(topic, payload.len())?;
        if self.shared.opts.protocol == Protocol::V5 {
            // The 5.0 form; its refusals as text (Python's client calls `publish_v5`).
            return self
                .shared
                .with_state(|st| st.publish_v5(topic, payload, qos, retain, None))
                .map_err(|e| e.to_string());
        }
        self.shared
            .with_state(|st| st.publish(topic, payload, qos, retain))
            .map_err(|e| e.to_string())
    }

    /// MQTT 5.0 enhanced authentication: the server's next challenge (AUTH 0x18) for
    /// the application to answer with [`auth_reply`](Client::auth_reply).
    pub fn auth_challenge(&self) -> Option<AuthChallenge> {
        self.shared.with_state(|st| st.take_auth_challenge())
    }

    /// Answers challenge `seq` with `data` (AUTH 0x18); `false` if that challenge's
    /// connection is gone.
    pub fn auth_reply(&self, seq: u64, data: Option<Bytes>) -> bool {
        let sent = self.shared.with_state(|st| st.auth_reply(seq, data));
        // During CONNECT the connection task waits for the answer itself.
        self.shared.auth.notify_one();
        sent
    }

    /// Starts a re-authentication (AUTH 0x19 with `data`); the token completes when the
    /// server's AUTH 0x00 ends it.
    pub fn reauthenticate(&self, data: Option<Bytes>) -> Result<u64, ReauthError> {
        self.shared.with_state(|st| st.reauthenticate(data))
    }

    /// The Authentication Data that ended the last exchange (CONNACK or AUTH 0x00).
    pub fn auth_result_data(&self) -> Option<Bytes> {
        self.shared.state.lock().auth_result_data()
    }

    /// Publishes on a 5.0 client with `props` (its own checks: the CONNACK's Maximum
    /// QoS, Retain Available and Maximum Packet Size). On a 3.1/3.1.1 client, without
    /// properties, it is [`publish`](Client::publish).
    pub fn publish_v5(
        &self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
    ) -> Result<Submitted, PublishError> {
        check_publish(topic, payload.len()).map_err(PublishError::Invalid)?;
        if self.shared.opts.protocol != Protocol::V5 {
            if props.is_some() {
                return Err(PublishError::Invalid(
                    "message properties need MQTT 5.0 (protocol=5)".into(),
                ));
            }
            return Ok(self
                .shared
                .with_state(|st| st.publish(topic, payload, qos, retain))?);
        }
        self.shared
            .with_state(|st| st.publish_v5(topic, payload, qos, retain, props))
    }

    /// 5.0 SUBSCRIBE: filters with their options, a Subscription Identifier and user
    /// properties; the token completes with one reason code per filter.
    pub fn subscribe_v5(
        &self,
        filters: Vec<(String, SubscriptionOptions)>,
        id: Option<u32>,
        user_properties: Vec<(String, String)>,
    ) -> Result<Submitted, String> {
        self.require_v5()?;
        if filters.is_empty() {
            return Err("[MQTT-3.8.3-2] subscribe needs at least one topic filter".into());
        }
        if id.is_some_and(|id| id == 0 || id > codec::MAX_VARIABLE_BYTE_INTEGER) {
            return Err("a subscription identifier is between 1 and 268,435,455".into());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for (f, options) in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            if options.no_local && f.starts_with("$share/") {
                return Err(format!(
                    "[MQTT-3.8.3-4] {f:?}: No Local is not allowed on a shared subscription"
                ));
            }
            checked.push((ByteString::from(f), options));
        }
        let user_properties = pairs(user_properties);
        self.shared
            .with_state(|st| st.subscribe_v5(checked, id, user_properties))
            .map_err(|e| e.to_string())
    }

    /// 5.0 UNSUBSCRIBE; the token completes with one reason code per filter.
    pub fn unsubscribe_v5(
        &self,
        filters: Vec<String>,
        user_properties: Vec<(String, String)>,
    ) -> Result<Submitted, String> {
        self.require_v5()?;
        if filters.is_empty() {
            return Err("[MQTT-3.10.3-2] unsubscribe needs at least one topic filter".into());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for f in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            checked.push(ByteString::from(f));
        }
        let user_properties = pairs(user_properties);
        self.shared
            .with_state(|st| st.unsubscribe_v5(checked, user_properties))
            .map_err(|e| e.to_string())
    }

    fn require_v5(&self) -> Result<(), String> {
        if self.shared.opts.protocol == Protocol::V5 {
            Ok(())
        } else {
            Err("subscription options and properties need MQTT 5.0 (protocol=5)".into())
        }
    }

    /// What the last 5.0 CONNACK allowed (`None` before it, and on 3.1/3.1.1).
    pub fn server_limits(&self) -> Option<ServerLimits> {
        self.shared.state.lock().server_limits().cloned()
    }

    /// Subscribes; the token completes with the SUBACK return codes.
    pub fn subscribe(&self, filters: Vec<(String, QoS)>) -> Result<Submitted, String> {
        if filters.is_empty() {
            return Err("[MQTT-3.8.3-3] subscribe needs at least one topic filter".into());
        }
        if self.shared.opts.protocol == Protocol::V5 {
            // The 5.0 form, with default options.
            let filters = filters
                .into_iter()
                .map(|(f, qos)| {
                    let options = SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    };
                    (f, options)
                })
                .collect();
            return self.subscribe_v5(filters, None, Vec::new());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for (f, q) in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            checked.push((ByteString::from(f), q));
        }
        self.shared
            .with_state(|st| st.subscribe(checked))
            .map_err(|e| e.to_string())
    }

    /// Unsubscribes; the token completes on UNSUBACK.
    pub fn unsubscribe(&self, filters: Vec<String>) -> Result<Submitted, String> {
        if filters.is_empty() {
            return Err("[MQTT-3.10.3-2] unsubscribe needs at least one topic filter".into());
        }
        if self.shared.opts.protocol == Protocol::V5 {
            return self.unsubscribe_v5(filters, Vec::new());
        }
        let mut checked = Vec::with_capacity(filters.len());
        for f in filters {
            topics::validate_topic_filter(&f).map_err(|e| format!("{f:?}: {e}"))?;
            checked.push(ByteString::from(f));
        }
        self.shared
            .with_state(|st| st.unsubscribe(checked))
            .map_err(|e| e.to_string())
    }

    /// Sends what is buffered, then DISCONNECT, and closes. The token completes when the
    /// client is closed; pending requests fail with [`ClientError::Closed`].
    pub fn disconnect(&self) -> u64 {
        let token = self.shared.with_state(|st| st.new_token());
        self.shared.request_close(Some(token));
        token
    }

    /// Takes every queued event and up to `max_messages` received messages.
    pub fn drain(&self, max_messages: usize) -> Drained {
        if self.shared.wake_pipe.load(Ordering::Relaxed) {
            self.shared.wake.reset();
        }
        self.shared.with_state(|st| {
            let n = max_messages.min(st.incoming.len());
            Drained {
                completions: std::mem::take(&mut st.completions),
                states: std::mem::take(&mut st.states),
                messages: st.incoming.drain(..n).collect(),
                room: std::mem::take(&mut st.room),
            }
        })
    }

    /// Takes up to `max` received messages.
    pub fn take_messages(&self, max: usize) -> Vec<Incoming> {
        self.shared.with_state(|st| {
            let n = max.min(st.incoming.len());
            st.incoming.drain(..n).collect()
        })
    }

    /// Whether events are also announced on the wake socket (the default). A caller that
    /// waits with [`wait_events`](Client::wait_events) instead turns it off, which saves a
    /// write and a read per batch.
    pub fn set_wake_pipe(&self, enabled: bool) {
        self.shared.wake_pipe.store(enabled, Ordering::Relaxed);
        if enabled && self.shared.state.lock().has_events() {
            self.shared.wake.wake();
        }
    }

    /// Blocks the calling thread (never a tokio worker) until events are queued for the
    /// application (completions, state changes, room, and with `messages` also received
    /// messages), or until `timeout` passes (`None`: no limit). Returns whether there are.
    pub fn wait_events(&self, messages: bool, timeout: Option<Duration>) -> bool {
        let deadline = deadline(timeout);
        let mut st = self.shared.state.lock();
        loop {
            if std::mem::take(&mut st.kicked) {
                return st.has_events();
            }
            if st.has_events() || (messages && !st.incoming.is_empty()) {
                return true;
            }
            match deadline {
                Some(d) => {
                    if self.shared.events.wait_until(&mut st, d).timed_out() {
                        return st.has_events() || (messages && !st.incoming.is_empty());
                    }
                }
                None => self.shared.events.wait(&mut st),
            }
        }
    }

    /// Makes a thread blocked in [`wait_events`](Client::wait_events) return (at once if
    /// none is blocked, the next call returns), so that it can wait for something else.
    pub fn kick(&self) {
        self.shared.state.lock().kicked = true;
        self.shared.events.notify_all();
    }

    /// Takes up to `max` received messages, first blocking the calling thread until one is
    /// queued, the client is closed, or `timeout` passes (then the result may be empty).
    pub fn take_messages_wait(&self, max: usize, timeout: Option<Duration>) -> Vec<Incoming> {
        let deadline = deadline(timeout);
        let mut st = self.shared.state.lock();
        while st.incoming.is_empty() && st.started && st.status != ConnectionState::Closed {
            match deadline {
                Some(d) => {
                    if self.shared.events.wait_until(&mut st, d).timed_out() {
                        break;
                    }
                }
                None => self.shared.events.wait(&mut st),
            }
        }
        let n = max.min(st.incoming.len());
        let taken = st.incoming.drain(..n).collect();
        // Taking may let a paused reader read again.
        let signals = st.take_signals();
        drop(st);
        self.shared.signal(signals);
        taken
    }

    /// Received messages not yet taken.
    pub fn queued_messages(&self) -> usize {
        self.shared.state.lock().incoming.len()
    }

    pub fn state(&self) -> ConnectionState {
        self.shared.state.lock().status
    }

    /// A one-line summary of the internal state, for debugging.
    pub fn debug_state(&self) -> String {
        let wake_pending = self.shared.wake.is_pending();
        let summary = self.shared.state.lock().summary();
        format!("{summary} wake_pending={wake_pending}")
    }

    /// Why the client closed, if it closed on an error.
    pub fn last_error(&self) -> Option<ClientError> {
        self.shared.state.lock().last_error.clone()
    }
}

fn pairs(p: Vec<(String, String)>) -> Vec<(ByteString, ByteString)> {
    p.into_iter()
        .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
        .collect()
}

/// When a wait of `timeout` ends; `None` for no limit (also when the sum overflows).
fn deadline(timeout: Option<Duration>) -> Option<std::time::Instant> {
    timeout.and_then(|t| std::time::Instant::now().checked_add(t))
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.request_close(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_checks_topic_and_size_before_queueing() {
        assert!(check_publish("a/b", 10).is_ok());
        assert!(check_publish("a/+", 0).unwrap_err().contains("wildcard"));
        assert!(check_publish("t", codec::MAX_REMAINING_LENGTH)
            .unwrap_err()
            .contains("too large"));
    }
}
