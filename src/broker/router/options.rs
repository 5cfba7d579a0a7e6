//! MQTT 5.0 subscription options on the router: No Local [MQTT-3.8.3-3], Retain As
//! Published [MQTT-3.3.1-12] [MQTT-3.3.1-13], Retain Handling [MQTT-3.3.1-9]
//! [MQTT-3.3.1-10] [MQTT-3.3.1-11], and Subscription Identifiers [MQTT-3.3.4-3]
//! [MQTT-3.3.4-4] (one copy per session, so [MQTT-3.3.4-5] does not arise).
//!
//! A subscription's options ride in the trie entry beside its QoS ([`SubOpts`], 8 bytes,
//! all zero for a 3.1/3.1.1 subscription), so routing reads them where it already reads
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

use super::{deliver_counting_drops, Router, Session};
use crate::broker::session::{Message, MessageProperties, Queued};
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};
use crate::topic;

const NO_LOCAL: u8 = 1;
const RETAIN_AS_PUBLISHED: u8 = 2;
/// Two bits of Retain Handling (0, 1 or 2), kept only so that a restart restores the
/// subscription as it was made: routing never reads them.
const RETAIN_HANDLING_SHIFT: u8 = 2;
const RETAIN_HANDLING_MASK: u8 = 0b1100;

/// A subscription's 5.0 options that routing applies; the default is 3.1.1 behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOpts {
    flags: u8,
    /// The Subscription Identifier given in the SUBSCRIBE, if any.
    pub id: Option<NonZeroU32>,
}

impl SubOpts {
    pub fn new(options: &SubscriptionOptions, id: Option<NonZeroU32>) -> SubOpts {
        let mut flags = 0;
        if options.no_local {
            flags |= NO_LOCAL;
        }
        if options.retain_as_published {
            flags |= RETAIN_AS_PUBLISHED;
        }
        flags |= (options.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        SubOpts { flags, id }
    }

    /// Whether these are a 3.1/3.1.1 subscription's options (all zero, no identifier):
    /// a session keeps only the others.
    pub fn is_default(self) -> bool {
        self == SubOpts::default()
    }

    pub fn retain_handling(self) -> RetainHandling {
        match (self.flags & RETAIN_HANDLING_MASK) >> RETAIN_HANDLING_SHIFT {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            _ => RetainHandling::DoNotSend,
        }
    }

    /// The options as the bits of a 5.0 SUBSCRIBE's Subscription Options byte, without
    /// the QoS (spec 3.8.3.1): No Local 0x04, Retain As Published 0x08, Retain Handling
    /// 0x30. What the session stores keep.
    pub fn options_byte(self) -> u8 {
        u8::from(self.no_local()) << 2
            | u8::from(self.retain_as_published()) << 3
            | (self.retain_handling() as u8) << 4
    }

    /// The inverse of [`SubOpts::options_byte`] (with the identifier kept beside it);
    /// `None` for bits a SUBSCRIBE could not carry (the QoS's, the reserved ones, Retain
    /// Handling 3), which a stored row must not have.
    pub fn from_stored(byte: u8, id: Option<NonZeroU32>) -> Option<SubOpts> {
        let handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        };
        if byte & !0b0011_1100 != 0
            || id.is_some_and(|id| id.get() > crate::codec::MAX_VARIABLE_BYTE_INTEGER)
        {
            return None;
        }
        let options = SubscriptionOptions {
            qos: QoS::AtMostOnce,
            no_local: byte & 0x04 != 0,
            retain_as_published: byte & 0x08 != 0,
            retain_handling: handling,
        };
        Some(SubOpts::new(&options, id))
    }

    pub fn no_local(self) -> bool {
        self.flags & NO_LOCAL != 0
    }

    pub fn retain_as_published(self) -> bool {
        self.flags & RETAIN_AS_PUBLISHED != 0
    }

    /// Whether this subscription must not get `msg` back: No Local and `msg` was
    /// published by the session's own client [MQTT-3.8.3-3].
    pub(super) fn skips(self, msg: &Message, session: &Session) -> bool {
        self.no_local() && msg.publisher == session.client_id
    }

    /// Folds in another matching subscription of the same session, for the one copy it
    /// gets [MQTT-3.3.4-2]: RETAIN kept if either keeps it; a second identifier goes to
    /// `extra` (the copy carries them all, [MQTT-3.3.4-4]).
    pub(super) fn merge(
        &mut self,
        other: SubOpts,
        session_id: u64,
        extra: &mut Vec<(u64, NonZeroU32)>,
    ) {
        self.flags |= other.flags & RETAIN_AS_PUBLISHED;
        match (self.id, other.id) {
            (None, id) => self.id = id,
            (Some(_), Some(id)) => extra.push((session_id, id)),
            (Some(_), None) => {}
        }
    }
}

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
    /// [`Router::subscribe`]. Retained messages are sent as Retain Handling says: 0 always,
    /// 1 only if the subscription did not exist [MQTT-3.3.1-10], 2 never
    /// [MQTT-3.3.1-11].
    pub fn subscribe_v5(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        options: &SubscriptionOptions,
        id: Option<NonZeroU32>,
    ) -> Result<QoS, topic::FilterError> {
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
            } else if !opts.skips(msg, session) {
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
