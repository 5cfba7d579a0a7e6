//! A subscription's MQTT 5.0 options as the session keeps them and routing applies them
//! (router/options.rs has the routing; the module docs there say what each option does).
//! Here, on the session's side, because a session keeps its subscriptions' options
//! ([`super::SessionState::set_sub_opts`]) and the stores save them: the router, the
//! session and the stores all use this type, and the session uses nothing of the router.

use std::num::NonZeroU32;

use bytestring::ByteString;

use super::Message;
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};

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
    /// published by the session's own client (`client_id`) [MQTT-3.8.3-3].
    pub(crate) fn skips(self, msg: &Message, client_id: &ByteString) -> bool {
        self.no_local() && msg.publisher == *client_id
    }

    /// Folds in another matching subscription of the same session, for the one copy it
    /// gets [MQTT-3.3.4-2]: RETAIN kept if either keeps it; a second identifier goes to
    /// `extra` (the copy carries them all, [MQTT-3.3.4-4]).
    pub(crate) fn merge(
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
