//! Hooks the broker can swap while it runs: SIGHUP and `Broker.reload()` read the password
//! and ACL files again and put the new rules in place without a restart, and without
//! dropping a connection.
//!
//! The current hook sits behind a read-write lock that is taken only when the hook is
//! consulted (a login, a subscription, a publish decision the connection has not cached),
//! never per message. Connections learn that the rules changed from a generation number
//! (one atomic load per publish): a connection that sees a new generation forgets its
//! cached publish decisions and asks again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::{AuthDecision, AuthRequest, Authenticator, Authorizer, BoxFuture, ClientInfo, Verdict};
use crate::codec::QoS;

/// A hook that can be replaced at run time; see the module documentation.
pub struct Reloadable<T: ?Sized> {
    current: RwLock<Arc<T>>,
    generation: AtomicU64,
}

impl<T: ?Sized> Reloadable<T> {
    pub fn new(hook: Arc<T>) -> Reloadable<T> {
        Reloadable {
            current: RwLock::new(hook),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `hook` in place. The new rules are stored before the generation moves on, so
    /// a connection that sees the new generation and asks again gets the new rules.
    pub fn replace(&self, hook: Arc<T>) {
        *self.current.write() = hook;
        self.invalidate();
    }

    /// Makes every connection forget its cached decisions (the rules behind the hook
    /// changed without the hook being replaced: a Python authorizer's, say).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }
}

impl<T: Authenticator + ?Sized> Authenticator for Reloadable<T> {
    fn authenticate(&self, request: AuthRequest) -> BoxFuture<AuthDecision> {
        self.current().authenticate(request)
    }
}

impl<T: Authorizer + ?Sized> Authorizer for Reloadable<T> {
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        filter: &str,
        qos: QoS,
    ) -> BoxFuture<Verdict<QoS>> {
        self.current().authorize_subscribe(client, filter, qos)
    }

    fn authorize_publish(&self, client: &ClientInfo, topic: &str) -> BoxFuture<Verdict> {
        self.current().authorize_publish(client, topic)
    }

    fn generation(&self) -> u64 {
        Reloadable::generation(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::hooks::AclFile;
    use bytestring::ByteString;

    fn alice() -> ClientInfo {
        ClientInfo {
            client_id: ByteString::from("c1"),
            username: Some(ByteString::from("alice")),
            certificate_subject: None,
            protocol: crate::codec::Protocol::V311,
        }
    }

    #[tokio::test]
    async fn replaced_rules_apply_and_the_generation_moves() {
        let first = AclFile::parse("user alice\ntopic write a/#\n").unwrap();
        let acl: Reloadable<dyn Authorizer> = Reloadable::new(Arc::new(first));
        let before = Authorizer::generation(&acl);
        assert!(acl.authorize_publish(&alice(), "a/1").await.is_ok());
        assert!(acl.authorize_publish(&alice(), "b/1").await.is_err());
        let second = AclFile::parse("user alice\ntopic write b/#\n").unwrap();
        acl.replace(Arc::new(second));
        assert_ne!(Authorizer::generation(&acl), before);
        assert!(acl.authorize_publish(&alice(), "a/1").await.is_err());
        assert!(acl.authorize_publish(&alice(), "b/1").await.is_ok());
        let now = Authorizer::generation(&acl);
        acl.invalidate();
        assert_ne!(Authorizer::generation(&acl), now);
    }
}
