//! Outbound Topic Aliases of one MQTT 5.0 connection (3.3.2.3.4): the broker's own
//! topic -> alias map for the PUBLISHes it delivers to this client.
//!
//! Only a client whose CONNECT carried a Topic Alias Maximum above 0 gets one, bounded by
//! the smaller of that maximum and `outbound_topic_aliases` ([MQTT-3.1.2-26],
//! [MQTT-3.1.2-27], [MQTT-3.3.2-11]); everyone else has no map at all (`None` in
//! `OutBuf`), so their deliveries pay one branch. The map belongs to the network
//! connection and starts empty on the next one [MQTT-3.3.2-7].
//!
//! Replacement policy: aliases are handed out to the first topics delivered until the
//! limit is reached; after that, a topic without an alias goes out under its full name and
//! no mapping is ever replaced. Per delivery that is one hash lookup (plus, for at most
//! `limit` deliveries per connection, one copy of the topic), with no bookkeeping on a
//! hit and no scan on a miss. An LRU would follow a changing set of topics better but
//! needs a recency update per delivery and an eviction per miss once full; a wildcard
//! subscriber seeing more topics than aliases would pay that eviction on most
//! deliveries, and a replaced alias costs the full topic again anyway. The same policy as
//! the client library's outgoing aliases (client/state/v5.rs).

use std::collections::HashMap;
use std::num::NonZeroU16;

/// How one delivery uses the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AliasUse {
    /// The topic has this alias already: empty topic name plus the alias.
    Known(NonZeroU16),
    /// The topic gets this alias with this delivery: topic name plus the alias. Recorded
    /// with [`OutboundAliases::assign`] only once the PUBLISH was written, so an alias
    /// is never used before the client has seen it set.
    New(NonZeroU16),
    /// Every alias is taken: the full topic name, no alias.
    Full,
}

/// Topic -> alias for the aliases the broker set on this connection.
#[derive(Debug)]
pub(super) struct OutboundAliases {
    /// Never above the client's Topic Alias Maximum; at least 1.
    limit: u16,
    /// Keys are copies, not the message's topic: a topic sliced from a read buffer would
    /// keep that whole buffer alive for the connection's life.
    aliases: HashMap<Box<str>, NonZeroU16>,
}

impl OutboundAliases {
    /// A map for a client that accepts `client_maximum` aliases, of which the broker
    /// uses at most `broker_limit`; `None` when either is 0.
    pub(super) fn new(client_maximum: u16, broker_limit: u16) -> Option<Box<OutboundAliases>> {
        let limit = client_maximum.min(broker_limit);
        (limit > 0).then(|| {
            Box::new(OutboundAliases {
                limit,
                aliases: HashMap::new(),
            })
        })
    }

    pub(super) fn lookup(&self, topic: &str) -> AliasUse {
        if let Some(&alias) = self.aliases.get(topic) {
            return AliasUse::Known(alias);
        }
        // The map holds fewer than `limit` (<= 65,535) entries here, so the next alias
        // fits a u16 and is never 0 [MQTT-3.3.2-8].
        match u16::try_from(self.aliases.len() + 1)
            .ok()
            .filter(|&next| next <= self.limit)
            .and_then(NonZeroU16::new)
        {
            Some(next) => AliasUse::New(next),
            None => AliasUse::Full,
        }
    }

    /// Records `alias` for `topic` after a PUBLISH setting it was written.
    pub(super) fn assign(&mut self, topic: &str, alias: NonZeroU16) {
        debug_assert!(alias.get() <= self.limit);
        self.aliases.insert(topic.into(), alias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// Delivers `topic` as the connection does: uses the answer, records a new alias.
    fn deliver(map: &mut OutboundAliases, topic: &str) -> AliasUse {
        let used = map.lookup(topic);
        if let AliasUse::New(alias) = used {
            map.assign(topic, alias);
        }
        used
    }

    #[test]
    fn assigns_until_full_then_sends_full_names() {
        let mut map = OutboundAliases::new(2, 10).unwrap();
        assert_eq!(deliver(&mut map, "a"), AliasUse::New(nz(1)));
        assert_eq!(deliver(&mut map, "a"), AliasUse::Known(nz(1)));
        assert_eq!(deliver(&mut map, "b"), AliasUse::New(nz(2)));
        // [MQTT-3.1.2-26]: never an alias above the client's maximum of 2.
        for _ in 0..3 {
            assert_eq!(deliver(&mut map, "c"), AliasUse::Full);
            assert_eq!(deliver(&mut map, "d"), AliasUse::Full);
        }
        assert_eq!(deliver(&mut map, "b"), AliasUse::Known(nz(2)));
        assert_eq!(deliver(&mut map, "a"), AliasUse::Known(nz(1)));
        assert_eq!(map.aliases.len(), 2);
    }

    #[test]
    fn an_alias_not_written_is_not_used() {
        let mut map = OutboundAliases::new(3, 3).unwrap();
        // A PUBLISH that was not sent (too large) does not record its alias: the next
        // delivery of the topic sets it again, with the same number.
        assert_eq!(map.lookup("x"), AliasUse::New(nz(1)));
        assert_eq!(map.lookup("x"), AliasUse::New(nz(1)));
        map.assign("x", nz(1));
        assert_eq!(map.lookup("x"), AliasUse::Known(nz(1)));
        assert_eq!(map.lookup("y"), AliasUse::New(nz(2)));
    }

    #[test]
    fn limit_is_the_smaller_maximum_and_zero_means_no_map() {
        // [MQTT-3.1.2-27]: a client that allows none gets no map, whatever the broker's.
        assert!(OutboundAliases::new(0, 10).is_none());
        // The broker's setting turns the feature off.
        assert!(OutboundAliases::new(10, 0).is_none());
        let mut small = OutboundAliases::new(65_535, 1).unwrap();
        assert_eq!(deliver(&mut small, "a"), AliasUse::New(nz(1)));
        assert_eq!(deliver(&mut small, "b"), AliasUse::Full);
        // The whole range: the last alias is 65,535 and none follows.
        let mut all = OutboundAliases::new(u16::MAX, u16::MAX).unwrap();
        for n in 1..=u16::MAX {
            assert_eq!(deliver(&mut all, &n.to_string()), AliasUse::New(nz(n)));
        }
        assert_eq!(deliver(&mut all, "one more"), AliasUse::Full);
    }
}
