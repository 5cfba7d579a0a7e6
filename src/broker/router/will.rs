//! MQTT 5.0 wills with a Will Delay Interval (3.1.3.2.2).
//!
//! When a 5.0 connection whose will has a non-zero delay ends without DISCONNECT 0x00, and
//! its session outlives the connection, the will is not published at once: a task waits
//! for the delay, or for the session's expiry if that comes first [MQTT-3.1.2-8], then
//! publishes it. A new connection for the same client id decides the will's fate before
//! its CONNACK: resuming the session cancels it [MQTT-3.1.3-9]; starting a new one (Clean
//! Start 1, or the old session gone) ends the old session, which publishes the will now.
//!
//! One entry per client id with a pending will, none otherwise: nothing here is touched on
//! the message path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{MatchScratch, Router};
use crate::broker::hooks::ClientInfo;
use crate::broker::metrics::{DropReason, HookKind};
use crate::broker::session::Message;

/// What ends a will's wait before its delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// The client resumed its session within the delay: the will is never published.
    Cancel,
    /// The session ended (a new session replaced it): the will is published now.
    PublishNow,
}

/// One waiting will: its id (a newer will for the same client replaces it), the way to
/// decide its fate early, and its task.
#[derive(Debug)]
struct Pending {
    token: u64,
    fate: oneshot::Sender<Fate>,
    task: tokio::task::JoinHandle<()>,
}

/// The wills waiting out their delay, by client id.
#[derive(Debug, Default)]
pub struct DelayedWills {
    pending: Mutex<HashMap<ByteString, Pending>>,
    next_token: AtomicU64,
}

impl DelayedWills {
    /// How many wills are waiting (for tests and `$SYS`-style inspection).
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A connection for `client_id` was accepted: a will still waiting for that client is
    /// cancelled (`session_present`: the session was resumed) or published now (a new
    /// session replaced the one the will belonged to). Returns whether there was one.
    pub fn on_connect(&self, client_id: &ByteString, session_present: bool) -> bool {
        let Some(pending) = self.pending.lock().remove(client_id) else {
            return false;
        };
        let fate = if session_present {
            info!(%client_id, "[MQTT-3.1.3-9] client reconnected within its Will Delay Interval: will cancelled");
            Fate::Cancel
        } else {
            info!(%client_id, "[MQTT-3.1.2-8] the session the delayed will belongs to ended: will published now");
            Fate::PublishNow
        };
        // The task may have fired just now (then it already published): nothing to do.
        let _ = pending.fate.send(fate);
        true
    }

    /// The broker is stopping: every waiting will is published now, as Mosquitto does
    /// (its delay would otherwise be lost with the process). Waits at most `limit` for
    /// them to be routed.
    pub async fn publish_all_now(&self, limit: Duration) {
        let pending: Vec<Pending> = self.pending.lock().drain().map(|(_, p)| p).collect();
        if pending.is_empty() {
            return;
        }
        info!("publishing {} delayed will(s) at shutdown", pending.len());
        let mut tasks = Vec::with_capacity(pending.len());
        for p in pending {
            let _ = p.fate.send(Fate::PublishNow);
            tasks.push(p.task);
        }
        let _ = timeout(limit, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }

    /// Waits `wait`, or until [`DelayedWills::on_connect`] decides, then publishes `msg`
    /// (through the interceptor, like any publication) unless the will was cancelled.
    /// `msg` was authorized when its connection closed.
    pub fn schedule(
        &self,
        router: Arc<Router>,
        client: ClientInfo,
        msg: Arc<Message>,
        wait: Duration,
    ) {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let client_id = client.client_id.clone();
        debug!(%client_id, "will delayed by {wait:?} [MQTT-3.1.2-8]");
        let key = client_id.clone();
        let task = tokio::spawn(async move {
            let fate = tokio::select! {
                () = tokio::time::sleep(wait) => {
                    // Fired: forget the entry, unless a newer will replaced it.
                    let mut pending = router.wills().pending.lock();
                    if pending.get(&client_id).is_some_and(|p| p.token == token) {
                        pending.remove(&client_id);
                    }
                    Fate::PublishNow
                }
                fate = rx => fate.unwrap_or(Fate::Cancel),
            };
            if fate == Fate::PublishNow {
                debug!(%client_id, topic = %msg.topic, "publishing delayed will");
                publish(&router, &client, msg).await;
            }
        });
        // A client has at most one connection, so at most one will waits; one left from
        // a connection the broker could not match up (never expected) is cancelled. The
        // task cannot have fired yet (a delay is whole seconds), and the connection that
        // could cancel it is not attached before this one has ended.
        let pending = Pending {
            token,
            fate: tx,
            task,
        };
        self.pending.lock().insert(key, pending);
    }
}

/// Routes a will outside its connection: through the interceptor when there is one.
async fn publish(router: &Router, client: &ClientInfo, msg: Arc<Message>) {
    let mut scratch = MatchScratch::default();
    let Some(interceptor) = router.hooks().interceptor.clone() else {
        router.publish(msg, &mut scratch);
        return;
    };
    let counters = router.counters();
    let started = tokio::time::Instant::now();
    match timeout(
        router.config().auth_timeout,
        interceptor.intercept(client, vec![msg]),
    )
    .await
    {
        Ok(verdicts) => {
            counters.hook_called(HookKind::OnMessage, started.elapsed());
            let mut kept = 0;
            for msg in verdicts.into_iter().flatten() {
                kept += 1;
                router.publish(msg, &mut scratch);
            }
            if kept == 0 {
                counters.dropped(DropReason::Intercepted, 1);
            }
        }
        Err(_) => {
            counters.hook_timed_out(HookKind::OnMessage);
            counters.dropped(DropReason::HookTimeout, 1);
            warn!(client_id = %client.client_id, "on_message timed out: delayed will dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::broker::config::Config;
    use crate::broker::hooks::Hooks;
    use crate::broker::router::{Attach, ConnHandle, Session};
    use crate::codec::QoS;

    /// A router with a client `watch` subscribed to `w/#` at QoS 1.
    fn router_with_watcher() -> (Arc<Router>, Arc<Session>) {
        let router = Arc::new(Router::new(Config::default(), Hooks::default()));
        let handle = ConnHandle {
            conn_id: router.next_id(),
            takeover: Arc::default(),
        };
        let Attach::Attached { session, .. } = router.attach(&"watch".into(), true, handle) else {
            panic!("not attached");
        };
        router
            .subscribe(&session, &"w/#".into(), QoS::AtLeastOnce)
            .unwrap();
        (router, session)
    }

    fn schedule(router: &Arc<Router>, client_id: &str, wait: Duration) {
        let msg = Arc::new(Message {
            topic: format!("w/{client_id}").into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            publisher: client_id.into(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        });
        let client = ClientInfo {
            client_id: client_id.into(),
            username: None,
            certificate_subject: None,
            protocol: crate::codec::Protocol::V5,
        };
        router.wills().schedule(router.clone(), client, msg, wait);
    }

    /// Waits (a bounded while) for the watcher's queue to hold `n` messages.
    async fn queued(session: &Session, n: usize) -> bool {
        for _ in 0..100 {
            if session.state.lock().queued_len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn published_after_the_wait() {
        let (router, watcher) = router_with_watcher();
        schedule(&router, "a", Duration::from_millis(50));
        assert_eq!(router.wills().len(), 1);
        assert!(queued(&watcher, 1).await);
        assert!(
            router.wills().is_empty(),
            "a fired will leaves the registry"
        );
    }

    #[tokio::test]
    async fn a_resumed_session_cancels_and_a_new_one_publishes_now() {
        let (router, watcher) = router_with_watcher();
        schedule(&router, "back", Duration::from_secs(3600));
        schedule(&router, "fresh", Duration::from_secs(3600));
        assert!(router.wills().on_connect(&"back".into(), true));
        assert!(router.wills().on_connect(&"fresh".into(), false));
        assert!(!router.wills().on_connect(&"other".into(), true));
        assert!(queued(&watcher, 1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut state = watcher.state.lock();
        assert_eq!(state.queued_len(), 1, "the cancelled will was published");
        let Some(crate::broker::session::Outgoing::Publish { item, .. }) = state.next_outgoing()
        else {
            panic!("no will");
        };
        assert_eq!(&item.msg.topic[..], "w/fresh");
        assert!(router.wills().is_empty());
    }

    #[tokio::test]
    async fn every_waiting_will_goes_at_stop() {
        let (router, watcher) = router_with_watcher();
        schedule(&router, "a", Duration::from_secs(3600));
        schedule(&router, "b", Duration::from_secs(3600));
        router.wills().publish_all_now(Duration::from_secs(5)).await;
        assert_eq!(watcher.state.lock().queued_len(), 2);
        assert!(router.wills().is_empty());
    }
}
