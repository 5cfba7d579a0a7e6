//! MQTT 5.0 enhanced authentication in the client's state machine (spec 4.12): the
//! server's AUTH challenges handed to the application, its answers, re-authentication and
//! the exchange ending with the connection. Apart from v5.rs because it is a protocol of
//! its own that only clients naming an Authentication Method ever run.

use bytes::Bytes;
use bytestring::ByteString;

use crate::client::v5::{AuthChallenge, ReauthError};
use crate::codec::{Auth, Packet, ReasonCode};

use super::super::{ClientError, ConnectionState, Outcome, State};
use super::violation;

/// Where an enhanced authentication exchange (spec 4.12) stands. The exchange is
/// lockstep: at most one server challenge waits for the application's answer.
#[derive(Default)]
pub(super) struct AuthState {
    /// The method of the CONNECT; every AUTH carries it [MQTT-4.12.0-5], a
    /// re-authentication too [MQTT-4.12.1-1].
    pub(super) method: ByteString,
    /// A challenge the application has not taken yet.
    pub(super) undelivered: Option<AuthChallenge>,
    /// The challenge waiting for an answer.
    pub(super) awaiting: Option<u64>,
    pub(super) next_seq: u64,
    /// The answer to a challenge of the CONNECT exchange, for the connection task
    /// (before CONNACK the writer does not run).
    pub(super) reply: Option<Option<Bytes>>,
    /// The token of the running re-authentication (AUTH 0x19 sent).
    pub(super) reauth: Option<u64>,
    /// The Authentication Data of what ended the last exchange (CONNACK or AUTH 0x00).
    pub(super) last_data: Option<Bytes>,
}

impl State {
    /// A server's AUTH, during the CONNECT exchange (`connecting`, before CONNACK) or on
    /// an open connection (re-authentication). A challenge (0x18) is queued for the
    /// application; a success (0x00) ends a re-authentication.
    pub(crate) fn on_auth(&mut self, packet: Auth, connecting: bool) -> Result<(), ClientError> {
        let connected = self.status == ConnectionState::Connected;
        let Some(auth) = self.v5.as_deref_mut().and_then(|v5| v5.auth.as_mut()) else {
            tracing::warn!("client: [MQTT-4.12.0-7] AUTH from a server though CONNECT named no method: DISCONNECT 0x82");
            return Err(violation(
                ReasonCode::PROTOCOL_ERROR,
                "spec 4.12: the server sent AUTH though CONNECT named no Authentication Method"
                    .into(),
            ));
        };
        let props = packet.properties.as_deref();
        let method = props.and_then(|p| p.authentication_method.as_ref());
        if method.map(|m| &**m) != Some(&*auth.method) {
            tracing::warn!("client: [MQTT-4.12.0-5] AUTH with another method: DISCONNECT 0x82");
            return Err(violation(
                ReasonCode::PROTOCOL_ERROR,
                format!(
                    "[MQTT-4.12.0-5] the server's AUTH names method {:?}, not {:?}",
                    method.map(|m| m.to_string()),
                    &*auth.method
                ),
            ));
        }
        // An owned copy: the received data shares the read buffer's memory.
        let data = props
            .and_then(|p| p.authentication_data.as_deref())
            .map(Bytes::copy_from_slice);
        let reauth = !connecting && connected && auth.reauth.is_some();
        match packet.reason {
            ReasonCode::CONTINUE_AUTHENTICATION
                if (connecting || reauth) && auth.awaiting.is_none() =>
            {
                auth.next_seq += 1;
                auth.awaiting = Some(auth.next_seq);
                auth.undelivered = Some(AuthChallenge {
                    seq: auth.next_seq,
                    data,
                    reauth,
                });
                self.dirty = true;
                Ok(())
            }
            ReasonCode::SUCCESS if reauth && auth.awaiting.is_none() => {
                auth.last_data = data;
                if let Some(token) = auth.reauth.take() {
                    self.complete(token, Outcome::Done);
                }
                Ok(())
            }
            reason => {
                tracing::warn!(%reason, "client: [MQTT-3.15.2-1] unexpected AUTH: DISCONNECT 0x82");
                Err(violation(
                    ReasonCode::PROTOCOL_ERROR,
                    format!(
                        "[MQTT-3.15.2-1] AUTH {reason} from the server {}",
                        if connecting || reauth {
                            "before the client answered, or ending the exchange with the wrong packet"
                        } else {
                            "outside an authentication exchange"
                        }
                    ),
                ))
            }
        }
    }

    /// Whether a server challenge waits to be taken (an event for blocked waiters).
    pub(crate) fn auth_pending(&self) -> bool {
        self.v5
            .as_deref()
            .and_then(|v5| v5.auth.as_ref())
            .is_some_and(|a| a.undelivered.is_some())
    }

    /// The server's challenge the application has to answer (once each).
    pub(crate) fn take_auth_challenge(&mut self) -> Option<AuthChallenge> {
        self.v5
            .as_deref_mut()
            .and_then(|v5| v5.auth.as_mut())
            .and_then(|a| a.undelivered.take())
    }

    /// The application's answer to challenge `seq`: an AUTH 0x18 [MQTT-4.12.0-3] with
    /// the method [MQTT-4.12.0-5]. On an open connection it is written at once; during
    /// CONNECT it waits for the connection task ([`State::take_auth_reply`]). `false`:
    /// `seq` is not the challenge waiting (its connection is gone), nothing is sent.
    pub(crate) fn auth_reply(&mut self, seq: u64, data: Option<Bytes>) -> bool {
        let connected = self.status == ConnectionState::Connected;
        let Some(auth) = self.v5.as_deref_mut().and_then(|v5| v5.auth.as_mut()) else {
            return false;
        };
        if auth.awaiting != Some(seq) {
            tracing::debug!(
                seq,
                "client: an answer to an authentication challenge that is gone"
            );
            return false;
        }
        auth.awaiting = None;
        if !connected {
            auth.reply = Some(data);
            return true;
        }
        let packet = auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, &auth.method, data);
        if let Err(e) = self.encode(&packet) {
            tracing::error!("client: could not encode AUTH: {e}");
            return false;
        }
        true
    }

    /// The AUTH answering a challenge of the CONNECT exchange, once the application
    /// gave it.
    pub(crate) fn take_auth_reply(&mut self) -> Option<Packet> {
        let auth = self.v5.as_deref_mut()?.auth.as_mut()?;
        let data = auth.reply.take()?;
        Some(auth_packet(
            ReasonCode::CONTINUE_AUTHENTICATION,
            &auth.method,
            data,
        ))
    }

    /// Starts a re-authentication: AUTH 0x19 with the CONNECT's method [MQTT-4.12.1-1]
    /// and `data`; the token completes on the server's AUTH 0x00 and fails if the
    /// connection ends first (a refusal is a DISCONNECT, [MQTT-4.12.1-2]).
    pub(crate) fn reauthenticate(&mut self, data: Option<Bytes>) -> Result<u64, ReauthError> {
        if self.status != ConnectionState::Connected || self.close_requested {
            return Err(ReauthError::NotConnected);
        }
        let token = self.next_token;
        let auth = self
            .v5
            .as_deref_mut()
            .and_then(|v5| v5.auth.as_mut())
            .ok_or(ReauthError::NoMethod)?;
        if auth.reauth.is_some() {
            return Err(ReauthError::InProgress);
        }
        let packet = auth_packet(ReasonCode::RE_AUTHENTICATE, &auth.method, data);
        auth.reauth = Some(token);
        auth.awaiting = None;
        if let Err(e) = self.encode(&packet) {
            if let Some(auth) = self.v5.as_deref_mut().and_then(|v5| v5.auth.as_mut()) {
                auth.reauth = None;
            }
            return Err(ReauthError::Encode(e.to_string()));
        }
        Ok(self.new_token())
    }

    /// The Authentication Data that ended the last exchange: the CONNACK's, or the
    /// AUTH 0x00's of a re-authentication (a SCRAM server's signature, for one).
    pub(crate) fn auth_result_data(&self) -> Option<Bytes> {
        self.v5.as_deref()?.auth.as_ref()?.last_data.clone()
    }

    /// The connection ended: an exchange in progress is over, a re-authentication fails.
    pub(crate) fn end_auth(&mut self, error: &ClientError) {
        let Some(auth) = self.v5.as_deref_mut().and_then(|v5| v5.auth.as_mut()) else {
            return;
        };
        auth.undelivered = None;
        auth.awaiting = None;
        auth.reply = None;
        if let Some(token) = auth.reauth.take() {
            self.complete(token, Outcome::Failed(error.clone()));
        }
    }
}

/// An AUTH with the method and, when given, the data.
fn auth_packet(reason: ReasonCode, method: &ByteString, data: Option<Bytes>) -> Packet {
    Packet::Auth(Auth::with_method(reason, method, data))
}
