//! MQTT 5.0 enhanced authentication on a connection (spec 4.12): the AUTH exchange
//! between CONNECT and CONNACK, and re-authentication (AUTH 0x19) after it.
//!
//! The [`EnhancedAuthenticator`](crate::broker::hooks::EnhancedAuthenticator) hook says
//! what each step answers; this file checks the client's AUTH packets (reason code,
//! same Authentication Method [MQTT-4.12.0-5]), sends the broker's, bounds every hook
//! call with `auth_timeout` (a timeout, or an answer that comes late, is a failure) and
//! keeps the method's state between round trips.
//!
//! A re-authentication is driven by the packets as they arrive: the connection keeps
//! serving while it waits for the client's next AUTH, and keeps its previous
//! authentication until the exchange succeeds or fails (4.12.1). The hook call itself
//! is awaited in line, like the authorization hooks: the connection's later packets are
//! handled once it answers.

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use crate::broker::hooks::{AuthState, EnhancedAuthRequest, EnhancedAuthStep};
use crate::broker::metrics::HookKind;
use crate::codec::{Auth, ConnAckV5, Connect, Packet, Properties, ReasonCode};

use super::{Close, Connection};

/// Most AUTH round trips one exchange may take: a method needs a few (SCRAM two); a hook
/// that never finishes cannot keep a client in the exchange for ever.
const MAX_ROUNDS: usize = 32;

/// What a connection remembers of its enhanced authentication: the method (every later
/// AUTH must name it), the data for the CONNACK, and a re-authentication in progress.
#[derive(Debug)]
pub(super) struct EnhancedAuth {
    method: ByteString,
    /// The final Authentication Data of the login, for the CONNACK.
    connack_data: Option<Bytes>,
    /// `Some` while a re-authentication waits for the client's next AUTH 0x18: the
    /// state the method returned with its last challenge.
    pending: Option<AuthState>,
    /// Round trips of the exchange in progress.
    rounds: usize,
}

/// What the client's AUTH asks for, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    /// 0x18 answering the broker's challenge.
    Continue,
    /// 0x19: a new re-authentication.
    Reauthenticate,
}

/// Checks an AUTH from the client against the exchange: its reason code (0x18 only
/// answers a challenge, 0x19 only starts a re-authentication after CONNACK, 3.15.2.1)
/// and its method (the CONNECT's [MQTT-4.12.0-5], [MQTT-4.12.1-1]). An error is the
/// rule broken, for the log; the answer is a Protocol Error either way.
fn check_client_auth(
    auth: &Auth,
    method: &str,
    connected: bool,
    in_progress: bool,
) -> Result<ClientAuth, &'static str> {
    let named = auth
        .properties
        .as_ref()
        .and_then(|p| p.authentication_method.as_deref());
    let kind = match auth.reason {
        ReasonCode::CONTINUE_AUTHENTICATION if in_progress => ClientAuth::Continue,
        ReasonCode::CONTINUE_AUTHENTICATION => {
            return Err(
                "[MQTT-3.15.2-1] AUTH 0x18 from the client while no exchange is in progress",
            )
        }
        ReasonCode::RE_AUTHENTICATE if !connected => {
            return Err("[MQTT-3.15.2-1] AUTH 0x19 (re-authenticate) before CONNACK")
        }
        ReasonCode::RE_AUTHENTICATE if in_progress => {
            return Err("[MQTT-3.15.2-1] AUTH 0x19 while a re-authentication is in progress")
        }
        ReasonCode::RE_AUTHENTICATE => ClientAuth::Reauthenticate,
        _ => return Err("[MQTT-3.15.2-1] a client's AUTH has reason 0x18 or 0x19 only"),
    };
    match named {
        Some(named) if named == method => Ok(kind),
        Some(_) if kind == ClientAuth::Reauthenticate => {
            Err("[MQTT-4.12.1-1] re-authentication with another Authentication Method")
        }
        Some(_) => Err("[MQTT-4.12.0-5] AUTH with another Authentication Method than CONNECT's"),
        None => Err("[MQTT-4.12.0-5] AUTH without the Authentication Method"),
    }
}

/// An AUTH from the broker, naming the method [MQTT-4.12.0-5].
fn auth_packet(reason: ReasonCode, method: &ByteString, data: Option<Bytes>) -> Packet {
    Packet::Auth(Auth::with_method(reason, method, data))
}

/// How the login exchange ended.
enum Login {
    Accepted(Option<Bytes>),
    /// Refused with this CONNACK reason, for this rule.
    Refused(ReasonCode, String),
    /// The client went away, or sent DISCONNECT: nothing to answer.
    Gone(String),
}

impl Connection {
    /// The CONNECT's Authentication Method when an enhanced authenticator implements it.
    /// Without one, `refuse_v5_connect` answers a method with CONNACK 0x8C.
    pub(super) fn enhanced_method(&self, connect: &Connect) -> Option<ByteString> {
        let method = connect
            .properties
            .as_ref()?
            .authentication_method
            .as_ref()?;
        let hook = self.router.hooks().enhanced_authenticator.as_ref()?;
        hook.handles(method).then(|| method.clone())
    }

    /// Runs the login exchange [MQTT-4.12.0-2]: the CONNECT's data, then AUTH 0x18 both
    /// ways until the method decides. True when the client is authenticated (the CONNACK
    /// then carries the method, `connack_v5`); false when it was refused with a CONNACK
    /// of 0x80 or above and must be closed [MQTT-4.12.0-4], or went away.
    pub(super) async fn enhanced_login(
        &mut self,
        connect: &Connect,
        shutdown: &watch::Receiver<bool>,
    ) -> bool {
        // Looked up again rather than passed in: `serve` then holds a flag, not the name,
        // in every connection's future.
        let Some(method) = self.enhanced_method(connect) else {
            return false;
        };
        let data = connect
            .properties
            .as_ref()
            .and_then(|p| p.authentication_data.clone());
        match self.login_exchange(&method, data, shutdown.clone()).await {
            Login::Accepted(data) => {
                info!(client_id = %self.client_id, peer = %self.peer, "enhanced authentication ({method}) succeeded");
                self.enhanced = Some(Box::new(EnhancedAuth {
                    method,
                    connack_data: data,
                    pending: None,
                    rounds: 0,
                }));
                true
            }
            Login::Refused(reason, why) => {
                info!(client_id = %self.client_id, peer = %self.peer,
                    "refusing connection: enhanced authentication ({method}): {why}");
                self.router.counters().auth_failed();
                let refusal = Packet::ConnAckV5(ConnAckV5 {
                    session_present: false,
                    reason,
                    properties: None,
                });
                self.refuse_with(&refusal).await;
                false
            }
            Login::Gone(why) => {
                info!(client_id = %self.client_id, peer = %self.peer,
                    "closing connection during enhanced authentication ({method}): {why}");
                false
            }
        }
    }

    /// The exchange's loop; a broker shutting down ends it while it waits for the client
    /// (the hook itself is bounded by `auth_timeout`).
    async fn login_exchange(
        &mut self,
        method: &ByteString,
        mut data: Option<Bytes>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Login {
        let mut state = AuthState::default();
        for _ in 0..MAX_ROUNDS {
            match self.run_step(method, data, false, state).await {
                Some(EnhancedAuthStep::Success { data }) => return Login::Accepted(data),
                None | Some(EnhancedAuthStep::Failure) => {
                    return Login::Refused(
                        ReasonCode::NOT_AUTHORIZED,
                        "[MQTT-4.12.0-4] the method refused the client".into(),
                    )
                }
                Some(EnhancedAuthStep::Continue {
                    data: challenge,
                    state: next,
                }) => {
                    state = next;
                    self.send_packet(&auth_packet(
                        ReasonCode::CONTINUE_AUTHENTICATION,
                        method,
                        challenge,
                    ));
                    let limit = self.router.config().connect_timeout;
                    if *shutdown.borrow_and_update() {
                        return Login::Gone("the broker is shutting down".into());
                    }
                    let answer = tokio::select! {
                        answer = timeout(limit, self.read_login_auth()) => match answer {
                            Ok(answer) => answer,
                            Err(_) => {
                                return Login::Gone(format!("no AUTH answer within {limit:?}"));
                            }
                        },
                        _ = shutdown.changed() => {
                            return Login::Gone("the broker is shutting down".into());
                        }
                    };
                    let auth = match answer {
                        Ok(auth) => auth,
                        Err(login) => return login,
                    };
                    if let Err(why) = check_client_auth(&auth, method, false, true) {
                        return Login::Refused(ReasonCode::PROTOCOL_ERROR, why.into());
                    }
                    data = auth.properties.and_then(|p| p.authentication_data);
                }
            }
        }
        Login::Refused(
            ReasonCode::NOT_AUTHORIZED,
            format!("not finished after {MAX_ROUNDS} AUTH round trips"),
        )
    }

    /// Flushes the challenge and reads the client's next packet, which must be AUTH or
    /// DISCONNECT before CONNACK [MQTT-3.1.2-30].
    async fn read_login_auth(&mut self) -> Result<Auth, Login> {
        if let Err(err) = self.flush().await {
            return Err(Login::Gone(err.to_string()));
        }
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Packet::Auth(auth))) => return Ok(auth),
                Ok(Some(Packet::Disconnect | Packet::DisconnectV5(_))) => {
                    return Err(Login::Gone("client sent DISCONNECT".into()))
                }
                Ok(Some(other)) => {
                    return Err(Login::Refused(
                        ReasonCode::PROTOCOL_ERROR,
                        format!(
                            "[MQTT-3.1.2-30] {} before CONNACK during enhanced authentication",
                            other.name()
                        ),
                    ))
                }
                Ok(None) => {}
                Err(err) => return Err(Login::Refused(err.reason_code(), err.to_string())),
            }
            match self.read_some().await {
                Ok(0) => return Err(Login::Gone("connection closed by peer".into())),
                Ok(_) => {}
                Err(err) => return Err(Login::Gone(err.to_string())),
            }
        }
    }

    /// Adds the method and its final data to the successful CONNACK [MQTT-4.12.0-5]; no
    /// method without enhanced authentication [MQTT-4.12.0-6].
    pub(super) fn enhanced_connack(&mut self, props: &mut Properties) {
        if let Some(enhanced) = self.enhanced.as_mut() {
            props.authentication_method = Some(enhanced.method.clone());
            props.authentication_data = enhanced.connack_data.take();
        }
    }

    /// An AUTH after CONNACK: a re-authentication starting (0x19) or going on (0x18).
    /// Success is AUTH 0x00; failure is DISCONNECT 0x87 and the close [MQTT-4.12.1-2]; a
    /// packet that breaks the exchange's rules is DISCONNECT 0x82.
    pub(super) async fn reauthenticate(&mut self, auth: Auth) -> Option<Close> {
        let Some(enhanced) = self.enhanced.as_mut() else {
            return Some(self.close_v5(
                ReasonCode::PROTOCOL_ERROR,
                "[MQTT-4.12.0-7] AUTH after a CONNECT without an Authentication Method",
            ));
        };
        let kind = check_client_auth(&auth, &enhanced.method, true, enhanced.pending.is_some());
        let kind = match kind {
            Ok(kind) => kind,
            Err(why) => return Some(self.close_v5(ReasonCode::PROTOCOL_ERROR, why)),
        };
        let state = match kind {
            ClientAuth::Reauthenticate => {
                enhanced.rounds = 0;
                AuthState::default()
            }
            ClientAuth::Continue => enhanced.pending.take().unwrap_or_default(),
        };
        enhanced.rounds += 1;
        if enhanced.rounds > MAX_ROUNDS {
            return Some(self.close_v5(
                ReasonCode::NOT_AUTHORIZED,
                "[MQTT-4.12.1-2] re-authentication not finished after 32 AUTH round trips",
            ));
        }
        let method = enhanced.method.clone();
        let data = auth.properties.and_then(|p| p.authentication_data);
        match self.run_step(&method, data, true, state).await {
            Some(EnhancedAuthStep::Continue { data, state }) => {
                if let Some(enhanced) = self.enhanced.as_mut() {
                    enhanced.pending = Some(state);
                }
                self.send_packet(&auth_packet(
                    ReasonCode::CONTINUE_AUTHENTICATION,
                    &method,
                    data,
                ));
                None
            }
            Some(EnhancedAuthStep::Success { data }) => {
                info!(client_id = %self.client_id, "re-authentication ({method}) succeeded");
                self.send_packet(&auth_packet(ReasonCode::SUCCESS, &method, data));
                None
            }
            None | Some(EnhancedAuthStep::Failure) => {
                self.router.counters().auth_failed();
                Some(self.close_v5(
                    ReasonCode::NOT_AUTHORIZED,
                    &format!("[MQTT-4.12.1-2] re-authentication ({method}) refused"),
                ))
            }
        }
    }

    /// One call of the hook within `auth_timeout`; `None` when there is no hook, or it
    /// timed out (logged). An answer that comes after the limit is a timeout too, as for
    /// the authenticator: a login is never accepted late.
    async fn run_step(
        &self,
        method: &ByteString,
        data: Option<Bytes>,
        reauth: bool,
        state: AuthState,
    ) -> Option<EnhancedAuthStep> {
        let hook = self.router.hooks().enhanced_authenticator.clone()?;
        let request = EnhancedAuthRequest {
            client: self.client_info(),
            peer: self.peer,
            method: method.clone(),
            data,
            reauth,
            state,
        };
        let limit = self.router.config().auth_timeout;
        let started = Instant::now();
        let answer = timeout(limit, hook.step(request)).await;
        let took = started.elapsed();
        let counters = self.router.counters();
        match answer {
            Ok(step) if took <= limit => {
                counters.hook_called(HookKind::Authenticate, took);
                Some(step)
            }
            _ => {
                counters.hook_timed_out(HookKind::Authenticate);
                warn!(client_id = %self.client_id,
                    "enhanced authentication ({method}) timed out after {limit:?}: denying");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::hooks::{BoxFuture, EnhancedAuthenticator};

    /// Properties with an Authentication Method and Data; none when both are absent.
    fn method_props(method: Option<&str>, data: Option<&[u8]>) -> Option<Box<Properties>> {
        (method.is_some() || data.is_some()).then(|| {
            Box::new(Properties {
                authentication_method: method.map(ByteString::from),
                authentication_data: data.map(Bytes::copy_from_slice),
                ..Properties::default()
            })
        })
    }

    fn auth(reason: ReasonCode, method: Option<&str>) -> Auth {
        Auth {
            reason,
            properties: method_props(method, None),
        }
    }

    const M: &str = "SCRAM-SHA-256";

    #[test]
    fn continue_answers_a_challenge_with_the_same_method() {
        let a = auth(ReasonCode::CONTINUE_AUTHENTICATION, Some(M));
        assert_eq!(
            check_client_auth(&a, M, false, true),
            Ok(ClientAuth::Continue)
        );
        assert_eq!(
            check_client_auth(&a, M, true, true),
            Ok(ClientAuth::Continue)
        );
        // Nothing asked for it.
        assert!(check_client_auth(&a, M, true, false).is_err());
    }

    #[test]
    fn reauthenticate_only_after_connack_and_not_twice() {
        let a = auth(ReasonCode::RE_AUTHENTICATE, Some(M));
        assert_eq!(
            check_client_auth(&a, M, true, false),
            Ok(ClientAuth::Reauthenticate)
        );
        assert!(check_client_auth(&a, M, false, true).is_err());
        assert!(check_client_auth(&a, M, true, true).is_err());
    }

    #[test]
    fn the_method_must_be_the_connects() {
        let other = auth(ReasonCode::RE_AUTHENTICATE, Some("PLAIN"));
        let why = check_client_auth(&other, M, true, false).unwrap_err();
        assert!(why.contains("MQTT-4.12.1-1"), "{why}");
        let other = auth(ReasonCode::CONTINUE_AUTHENTICATION, Some("PLAIN"));
        let why = check_client_auth(&other, M, false, true).unwrap_err();
        assert!(why.contains("MQTT-4.12.0-5"), "{why}");
        let none = auth(ReasonCode::CONTINUE_AUTHENTICATION, None);
        assert!(check_client_auth(&none, M, false, true).is_err());
    }

    #[test]
    fn a_client_never_sends_success_or_other_codes() {
        for reason in [ReasonCode::SUCCESS, ReasonCode::NOT_AUTHORIZED] {
            let a = auth(reason, Some(M));
            assert!(check_client_auth(&a, M, true, true).is_err());
            assert!(check_client_auth(&a, M, true, false).is_err());
        }
    }

    /// A Rust method (no Python): "hello", then the client must answer challenge N with
    /// the state's count; success carries "ok". Proves the state travels between steps.
    struct Counting;

    impl EnhancedAuthenticator for Counting {
        fn handles(&self, method: &str) -> bool {
            method == M
        }

        fn step(&self, request: EnhancedAuthRequest) -> BoxFuture<EnhancedAuthStep> {
            let n = request
                .state
                .0
                .and_then(|s| s.downcast::<u8>().ok())
                .map_or(0, |n| *n);
            let expected: &[u8] = if n == 0 { b"hello" } else { &[n] };
            let step = if request.data.as_deref() != Some(expected) {
                EnhancedAuthStep::Failure
            } else if n == 2 {
                EnhancedAuthStep::Success {
                    data: Some(Bytes::from_static(b"ok")),
                }
            } else {
                EnhancedAuthStep::Continue {
                    data: Some(Bytes::from(vec![n + 1])),
                    state: AuthState(Some(Box::new(n + 1))),
                }
            };
            Box::pin(async move { step })
        }
    }

    /// The whole login over a loopback socket with the broker's own codec: CONNECT,
    /// AUTH 0x18 twice each way, CONNACK 0x00 with the method and the final data; a
    /// wrong answer is CONNACK 0x87.
    #[tokio::test]
    async fn a_rust_method_runs_the_exchange() {
        use crate::broker::hooks::Hooks;
        use crate::codec::{Decoder, Protocol};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let hooks = Hooks {
            enhanced_authenticator: Some(Arc::new(Counting)),
            ..Hooks::default()
        };
        let router = Arc::new(crate::broker::router::Router::new(
            crate::broker::config::Config::default(),
            hooks,
        ));
        for (answers, want) in [
            (&[[1u8], [2u8]][..], ReasonCode::SUCCESS),
            (&[[1u8], [9u8]][..], ReasonCode::NOT_AUTHORIZED),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let (_stop, shutdown) = tokio::sync::watch::channel(false);
            let served = tokio::spawn(Connection::new(router.clone(), stream, peer).run(shutdown));
            let mut decoder = Decoder::new(1 << 20);
            decoder.set_protocol(Protocol::V5);
            let mut rbuf = bytes::BytesMut::new();
            let encode = |packet: Packet| {
                let mut out = bytes::BytesMut::new();
                packet.encode(&mut out).unwrap();
                out
            };
            let connect = Packet::Connect(Box::new(Connect {
                protocol: Protocol::V5,
                clean_session: true,
                keep_alive: 60,
                client_id: ByteString::from("rust"),
                will: None,
                username: None,
                password: None,
                properties: method_props(Some(M), Some(b"hello")),
            }));
            client.write_all(&encode(connect)).await.unwrap();
            let mut last = None;
            for (n, answer) in answers.iter().enumerate() {
                let packet = loop {
                    if let Some(p) = decoder.decode(&mut rbuf).unwrap() {
                        break p;
                    }
                    assert!(client.read_buf(&mut rbuf).await.unwrap() > 0);
                };
                let Packet::Auth(auth) = packet else {
                    panic!("expected AUTH, got {}", packet.name());
                };
                assert_eq!(auth.reason, ReasonCode::CONTINUE_AUTHENTICATION);
                let props = auth.properties.unwrap();
                assert_eq!(props.authentication_method.as_deref(), Some(M));
                assert_eq!(
                    props.authentication_data.as_deref(),
                    Some(&[n as u8 + 1][..])
                );
                let reply = Packet::Auth(Auth {
                    reason: ReasonCode::CONTINUE_AUTHENTICATION,
                    properties: method_props(Some(M), Some(answer)),
                });
                client.write_all(&encode(reply)).await.unwrap();
            }
            while last.is_none() {
                last = decoder.decode(&mut rbuf).unwrap();
                if last.is_none() {
                    assert!(client.read_buf(&mut rbuf).await.unwrap() > 0);
                }
            }
            let Some(Packet::ConnAckV5(connack)) = last else {
                panic!("expected CONNACK");
            };
            assert_eq!(connack.reason, want);
            if want == ReasonCode::SUCCESS {
                let props = connack.properties.unwrap();
                assert_eq!(props.authentication_method.as_deref(), Some(M));
                assert_eq!(props.authentication_data.as_deref(), Some(&b"ok"[..]));
                served.abort();
            } else {
                // Refused: the broker closes [MQTT-4.12.0-4].
                assert_eq!(client.read_buf(&mut rbuf).await.unwrap(), 0);
                served.await.unwrap();
            }
        }
    }

    #[test]
    fn broker_auth_names_the_method() {
        let Packet::Auth(a) = auth_packet(
            ReasonCode::CONTINUE_AUTHENTICATION,
            &ByteString::from(M),
            Some(Bytes::from_static(b"r=1")),
        ) else {
            panic!("not an AUTH");
        };
        let props = a.properties.expect("properties");
        assert_eq!(props.authentication_method.as_deref(), Some(M));
        assert_eq!(props.authentication_data.as_deref(), Some(&b"r=1"[..]));
    }
}
