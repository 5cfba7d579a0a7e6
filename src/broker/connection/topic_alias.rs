//! Inbound Topic Aliases of one MQTT 5.0 connection (3.3.2.3.4).
//!
//! The CONNACK's Topic Alias Maximum (`topic_alias_maximum`) says how many aliases a
//! client may set; a PUBLISH with a topic and an alias sets (or replaces) the mapping, one
//! with an empty topic and an alias uses it. The map belongs to the network connection
//! and is dropped with it [MQTT-3.3.2-7]. Its memory is bounded by the maximum times the
//! topic length the decoder allows, and allocated at the first alias.

use bytestring::ByteString;

use crate::codec::ReasonCode;

/// A PUBLISH's alias the connection cannot accept: the reason code of the DISCONNECT and
/// the log line naming the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AliasError {
    pub reason: ReasonCode,
    pub why: String,
}

/// Alias -> topic for the aliases the client set on this connection.
#[derive(Debug, Default)]
pub(super) struct InboundAliases {
    /// What the CONNACK announced; 0 accepts no alias at all.
    maximum: u16,
    /// Index `alias - 1`; grown to the highest alias used, never above `maximum`.
    topics: Vec<Option<ByteString>>,
}

impl InboundAliases {
    pub(super) fn new(maximum: u16) -> InboundAliases {
        InboundAliases {
            maximum,
            topics: Vec::new(),
        }
    }

    /// The topic a PUBLISH with `topic` (possibly empty) and `alias` is for, recording
    /// the mapping when it sets one.
    pub(super) fn resolve(
        &mut self,
        topic: &ByteString,
        alias: u16,
    ) -> Result<ByteString, AliasError> {
        // The codec refuses alias 0 already ([MQTT-3.3.2-8], 0x94): checked again so this
        // type stands on its own.
        if alias == 0 || alias > self.maximum {
            return Err(AliasError {
                reason: ReasonCode::TOPIC_ALIAS_INVALID,
                why: format!(
                    "[MQTT-3.2.2-17] [MQTT-3.3.2-12] Topic Alias {alias} is not between 1 and \
                     the Topic Alias Maximum of {} in CONNACK",
                    self.maximum
                ),
            });
        }
        let slot = usize::from(alias - 1);
        if topic.is_empty() {
            return match self.topics.get(slot) {
                Some(Some(known)) => Ok(known.clone()),
                _ => Err(AliasError {
                    reason: ReasonCode::PROTOCOL_ERROR,
                    why: format!(
                        "(MQTT 5.0 3.3.2.3.4) PUBLISH with an empty topic and Topic Alias \
                         {alias}, which this connection has not set [MQTT-3.3.2-7]"
                    ),
                }),
            };
        }
        if self.topics.len() <= slot {
            self.topics.resize(slot + 1, None);
        }
        self.topics[slot] = Some(topic.clone());
        Ok(topic.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> ByteString {
        ByteString::from(s)
    }

    #[test]
    fn set_then_use_then_replace() {
        let mut a = InboundAliases::new(10);
        assert_eq!(a.resolve(&t("a/b"), 1), Ok(t("a/b")));
        assert_eq!(a.resolve(&t(""), 1), Ok(t("a/b")));
        // [MQTT-3.3.2-12]: every alias up to the maximum is accepted.
        assert_eq!(a.resolve(&t("x"), 10), Ok(t("x")));
        assert_eq!(a.resolve(&t(""), 10), Ok(t("x")));
        // A topic with a known alias replaces its mapping.
        assert_eq!(a.resolve(&t("c/d"), 1), Ok(t("c/d")));
        assert_eq!(a.resolve(&t(""), 1), Ok(t("c/d")));
        assert_eq!(a.topics.len(), 10);
    }

    #[test]
    fn unknown_alias_with_empty_topic_is_protocol_error() {
        let mut a = InboundAliases::new(10);
        a.resolve(&t("a"), 1).unwrap();
        let err = a.resolve(&t(""), 2).unwrap_err();
        assert_eq!(err.reason, ReasonCode::PROTOCOL_ERROR);
        assert!(err.why.contains("[MQTT-3.3.2-7]"), "{}", err.why);
    }

    #[test]
    fn alias_out_of_range_is_topic_alias_invalid() {
        let mut a = InboundAliases::new(3);
        for alias in [0, 4, u16::MAX] {
            let err = a.resolve(&t("a"), alias).unwrap_err();
            assert_eq!(err.reason, ReasonCode::TOPIC_ALIAS_INVALID, "{alias}");
            assert!(err.why.contains("[MQTT-3.3.2-12]"));
        }
        // A maximum of 0 accepts none.
        let mut none = InboundAliases::new(0);
        assert_eq!(
            none.resolve(&t("a"), 1).unwrap_err().reason,
            ReasonCode::TOPIC_ALIAS_INVALID
        );
        assert!(
            none.topics.is_empty(),
            "nothing allocated for refused aliases"
        );
    }
}
