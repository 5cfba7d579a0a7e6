//! Connect-time checks (client id, authentication) and the authorization of
//! subscriptions and publishes, with the per-connection publish decision cache.

use bytestring::ByteString;
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use crate::broker::config::AnonymousPolicy;
use crate::broker::hooks::{AuthDecision, AuthRequest, ClientInfo, Refusal, Verdict};
use crate::broker::metrics::HookKind;
use crate::codec::{Connect, ConnectReturnCode, Protocol, QoS, ReasonPacket};

use super::Connection;

impl Connection {
    /// Sets what this connection's listener does with clients that send no username
    /// (`Config::anonymous_policy`); without it the hooks decide.
    pub fn with_anonymous(mut self, policy: AnonymousPolicy) -> Connection {
        self.anonymous = policy;
        self
    }

    pub(super) fn client_info(&self) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            certificate_subject: self.io.peer_certificate().map(|c| c.subject.clone()),
            protocol: self.protocol,
        }
    }

    /// The username the broker acts on: the CONNECT's, or on a listener with
    /// `use_identity_as_username`, the client certificate's Common Name (`None` when it
    /// has none; [`Self::authenticate`] then refuses).
    pub(super) fn username_for(&self, connect: &Connect) -> Option<ByteString> {
        if self.io.identity_as_username() {
            self.io
                .peer_certificate()
                .and_then(|c| c.common_name.clone())
        } else {
            connect.username.clone()
        }
    }

    /// Applies the listener's rule for clients without a username, then runs the
    /// authenticator, if any, within `auth_timeout`; a timeout is a denial (CONNACK
    /// 0x05), as is a hook that fails (the hook reports that itself). An answer that
    /// comes after the limit is a timeout too, even if it allows: a worker busy elsewhere
    /// can poll the future late, and a login is never accepted late.
    pub(super) async fn authenticate(&self, connect: &Connect) -> AuthDecision {
        if self.io.identity_as_username() && self.username.is_none() {
            info!(client_id = %self.client_id, peer = %self.peer,
                "refusing connection: use_identity_as_username, and the client certificate has no Common Name");
            return AuthDecision::Deny(ConnectReturnCode::NotAuthorized);
        }
        // With use_identity_as_username, the certificate's name counts as the username.
        if self.username.is_none() {
            match self.anonymous {
                AnonymousPolicy::Allow => return AuthDecision::Allow,
                AnonymousPolicy::Refuse => {
                    info!(
                        client_id = %self.client_id, peer = %self.peer,
                        "refusing connection: no username, and anonymous clients are not \
                         allowed on this listener (allow_anonymous)"
                    );
                    return AuthDecision::Deny(ConnectReturnCode::NotAuthorized);
                }
                AnonymousPolicy::AskHooks => {}
            }
        }
        let Some(auth) = &self.router.hooks().authenticator else {
            return AuthDecision::Allow;
        };
        let request = AuthRequest {
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password: connect.password.clone(),
            peer: self.peer,
            protocol: connect.protocol,
            certificate_subject: self.io.peer_certificate().map(|c| c.subject.clone()),
        };
        let limit = self.router.config().auth_timeout;
        let started = Instant::now();
        let answer = timeout(limit, auth.authenticate(request)).await;
        let took = started.elapsed();
        let decision = match answer {
            Ok(decision) if took <= limit => {
                self.router
                    .counters()
                    .hook_called(HookKind::Authenticate, took);
                decision
            }
            _ => {
                self.router
                    .counters()
                    .hook_timed_out(HookKind::Authenticate);
                warn!(client_id = %self.client_id, "authentication timed out after {limit:?}: denying");
                AuthDecision::Deny(ConnectReturnCode::NotAuthorized)
            }
        };
        match decision {
            AuthDecision::Allow => AuthDecision::Allow,
            AuthDecision::Deny(code) => {
                info!(client_id = %self.client_id, peer = %self.peer, "authentication refused ({code:?})");
                AuthDecision::Deny(code)
            }
            AuthDecision::Refuse(refusal) => {
                let refusal = refusal.checked(ReasonPacket::ConnAck, &self.client_id);
                info!(client_id = %self.client_id, peer = %self.peer,
                    "authentication refused: {}", refusal.code);
                AuthDecision::Refuse(refusal)
            }
        }
    }

    /// Publish authorization, cached per topic for `acl_cache_ttl` so the hook is not
    /// consulted per message. A refusal's code is one a PUBACK/PUBREC may carry
    /// ([`Refusal::checked`]), cached with it.
    pub(super) async fn may_publish(&mut self, topic: &ByteString) -> Verdict {
        let Some(authorizer) = self.router.hooks().authorizer.clone() else {
            return Ok(());
        };
        let ttl = self.router.config().acl_cache_ttl;
        // Read before asking: a reload while the authorizer answers makes this decision
        // one of the old generation, asked again next time.
        let generation = authorizer.generation();
        if let Some(verdict) = self.acl_cache.get(topic, ttl, Instant::now(), generation) {
            return verdict;
        }
        let limit = self.router.config().auth_timeout;
        let started = Instant::now();
        let verdict = match timeout(
            limit,
            authorizer.authorize_publish(&self.client_info(), topic),
        )
        .await
        {
            Ok(verdict) => {
                let counters = self.router.counters();
                counters.hook_called(HookKind::AuthorizePublish, started.elapsed());
                verdict.map_err(|r| r.checked(ReasonPacket::PubAck, &self.client_id))
            }
            Err(_) => {
                let counters = self.router.counters();
                counters.hook_timed_out(HookKind::AuthorizePublish);
                warn!(client_id = %self.client_id, "publish authorization timed out: denying");
                Err(Refusal::NOT_AUTHORIZED)
            }
        };
        if !ttl.is_zero() {
            self.acl_cache
                .insert(topic.clone(), verdict.clone(), Instant::now(), generation);
        }
        verdict
    }

    /// Subscription authorization: the QoS to grant, or the refusal (a code a SUBACK
    /// may carry, [`Refusal::checked`]; 3.1.1 clients get 0x80 whatever it is).
    pub(super) async fn may_subscribe(&self, filter: &str, qos: QoS) -> Verdict<QoS> {
        let Some(authorizer) = &self.router.hooks().authorizer else {
            return Ok(qos);
        };
        let limit = self.router.config().auth_timeout;
        let started = Instant::now();
        match timeout(
            limit,
            authorizer.authorize_subscribe(&self.client_info(), filter, qos),
        )
        .await
        {
            // Never grant more than was asked for.
            Ok(granted) => {
                let counters = self.router.counters();
                counters.hook_called(HookKind::AuthorizeSubscribe, started.elapsed());
                granted
                    .map(|g| g.min(qos))
                    .map_err(|r| r.checked(ReasonPacket::SubAck, &self.client_id))
            }
            Err(_) => {
                let counters = self.router.counters();
                counters.hook_timed_out(HookKind::AuthorizeSubscribe);
                warn!(client_id = %self.client_id, "subscribe authorization timed out: denying");
                Err(Refusal::NOT_AUTHORIZED)
            }
        }
    }

    /// Client identifier rules: [MQTT-3.1.3-5..9]; 3.1 clients must send one.
    pub(super) async fn accept_client_id(&mut self, connect: &Connect) -> Option<ByteString> {
        let config = self.router.config();
        let id = &connect.client_id;
        let refusal = if id.is_empty() {
            if connect.protocol == Protocol::V31 {
                Some("MQTT 3.1 requires a client identifier")
            } else if !connect.clean_session && connect.protocol != Protocol::V5 {
                // 5.0 allows it: the assigned id names a session the client can resume
                // [MQTT-3.1.3-7].
                Some("[MQTT-3.1.3-8] empty client identifier with clean session 0")
            } else if !config.allow_zero_length_client_id {
                Some("[MQTT-3.1.3-9] empty client identifiers are not allowed")
            } else {
                None
            }
        } else if id.len() > config.max_client_id_len {
            Some("[MQTT-3.1.3-9] client identifier longer than max_client_id_len")
        } else {
            None
        };
        if let Some(reason) = refusal {
            info!(peer = %self.peer, "refusing connection: {reason}");
            self.refuse(ConnectReturnCode::IdentifierRejected).await;
            return None;
        }
        if id.is_empty() {
            // [MQTT-3.1.3-6]: a unique id, never one a client could already be using.
            Some(ByteString::from(format!(
                "auto-{:x}-{:x}",
                std::process::id(),
                self.conn_id
            )))
        } else {
            Some(id.clone())
        }
    }
}
