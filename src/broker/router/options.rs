//! MQTT 5.0 subscription options on the router: No Local [MQTT-3.8.3-3], Retain As
//! Published [MQTT-3.3.1-12] [MQTT-3.3.1-13], Retain Handling [MQTT-3.3.1-9]
//! [MQTT-3.3.1-10] [MQTT-3.3.1-11], and Subscription Identifiers [MQTT-3.3.4-3]
//! [MQTT-3.3.4-4] (one copy per session, so [MQTT-3.3.4-5] does not arise).
//!
//! A subscription's options ride in the trie entry beside its QoS ([`SubOpts`], 8 bytes,
//! all zero for a 3.1/3.1.1 subscription; defined beside the session that keeps them,
//! session/sub_opts.rs), so routing reads them where it already reads
//! the QoS: no lookup, lock or allocation more per message. Only a delivery on a
//! subscription with an identifier gets a message of its own (the shared properties plus
//! the identifiers); every other one shares the publisher's message as before.
//!
//! A shared subscription's member keeps its Retain As Published and identifier too
//! (router/shared.rs); No Local is refused there [MQTT-3.8.3-4] and Retain Handling does
//! not apply (no retained messages on shared subscriptions).
//!
//! A session keeps its subscriptions' options too ([`SessionState::set_sub_opts`]), so
//! the session store saves them and a restart restores them (router/persist.rs).
//!
//! [`SessionState::set_sub_opts`]: crate::broker::session::SessionState::set_sub_opts

use std::num::NonZeroU32;
use std::sync::Arc;

use bytestring::ByteString;

use super::{deliver_counting_drops, Router, Session, SubOpts};
use crate::broker::session::{Message, MessageProperties, Queued};
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};
use crate::topic;

/// The message a session gets on a subscription with an identifier: the publisher's
/// properties and the identifiers of all its matching subscriptions (`first` and the
/// ones in `extra` for `session_id`), in one allocation of its own. The topic and
/// payload stay shared.
pub(super) fn with_ids(
    msg: &Arc<Message>,
    first: NonZeroU32,
    session_id: u64,
    extra: &[(u64, NonZeroU32)],
) -> Arc<Message> {
    let mut ids = vec![first];
    ids.extend(
        extra
            .iter()
            .filter(|(s, _)| *s == session_id)
            .map(|(_, id)| *id),
    );
    Arc::new(Message {
        properties: Some(MessageProperties::with_subscription_ids(
            msg.properties.as_ref(),
            &ids,
        )),
        ..Message::clone(msg)
    })
}

impl Router {
    /// Subscribes with MQTT 5.0 options (see the module docs); answers as
    /// [`Router::subscribe_checked`]. Retained messages are sent as Retain Handling says:
    /// 0 always, 1 only if the subscription did not exist [MQTT-3.3.1-10], 2 never
    /// [MQTT-3.3.1-11].
    pub fn subscribe_v5(
        &self,
        session: &Arc<Session>,
        filter: topic::ValidFilter<'_>,
        options: &SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> QoS {
        let opts = SubOpts::new(options, id);
        self.subscribe_with(session, filter, options.qos, opts, options.retain_handling)
    }

    /// Queues the retained messages matching a new subscription, RETAIN=1
    /// [MQTT-3.3.1-6] [MQTT-3.3.1-9], each with the subscription's identifier; expired
    /// ones are skipped and removed [MQTT-3.3.2-5]. Returns the messages dropped.
    pub(super) fn replay_retained(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        qos: QoS,
        opts: SubOpts,
    ) -> u64 {
        let mut replay = Vec::new();
        let mut expired = Vec::new();
        self.retained.read().matching(filter, &mut |_, msg| {
            if msg
                .properties
                .as_ref()
                .is_some_and(MessageProperties::expired)
            {
                expired.push(msg.clone());
            } else if !opts.skips(msg, &session.client_id) {
                replay.push(msg.clone());
            }
        });
        if !expired.is_empty() {
            self.remove_expired_retained(&expired);
        }
        let mut dropped = 0;
        for msg in replay {
            let qos = msg.qos.min(qos);
            let msg = match opts.id {
                Some(id) => with_ids(&msg, id, 0, &[]),
                None => msg,
            };
            let item = Queued {
                msg,
                qos,
                retain: true,
                share: None,
            };
            dropped += deliver_counting_drops(session, item);
        }
        dropped
    }

    /// Removes expired retained messages, each only if it is still the one retained on
    /// its topic (a newer one set meanwhile stays).
    fn remove_expired_retained(&self, expired: &[Arc<Message>]) {
        let mut retained = self.retained.write();
        for msg in expired {
            if retained
                .get(&msg.topic)
                .is_some_and(|m| Arc::ptr_eq(m, msg))
            {
                retained.remove(&msg.topic);
                tracing::debug!(topic = %msg.topic, "retained message expired [MQTT-3.3.2-5]");
                if self.tracking.load(std::sync::atomic::Ordering::Relaxed)
                    && !crate::broker::metrics::is_reserved(&msg.topic)
                {
                    self.retained_changes.lock().insert(msg.topic.clone(), None);
                }
            }
        }
    }
}

/// Whether retained messages go to a subscription, by its Retain Handling and whether
/// it replaced an existing one.
pub(super) fn sends_retained(handling: RetainHandling, replaced: bool) -> bool {
    match handling {
        RetainHandling::SendAtSubscribe => true,
        RetainHandling::SendIfNew => !replaced,
        RetainHandling::DoNotSend => false,
    }
}

#[cfg(test)]
mod tests;
