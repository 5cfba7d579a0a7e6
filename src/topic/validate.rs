//! Topic name and topic filter validation: the section 4.7 format rules.

use std::fmt;

/// Longest topic name or filter: the length prefix of an MQTT string is a `u16`
/// [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or topic filter was refused; the message names the spec rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// Zero-length name or filter [MQTT-4.7.3-1].
    Empty,
    /// More than [`MAX_TOPIC_LEN`] bytes of UTF-8 [MQTT-4.7.3-3]; holds the length seen.
    TooLong(usize),
    /// Contains U+0000 [MQTT-4.7.3-2].
    NullCharacter,
    /// A topic name (what PUBLISH carries) contains `+` or `#` [MQTT-3.3.2-2] [MQTT-4.7.1-1].
    WildcardInTopicName,
    /// `#` is not a whole level, or not the last level, of a filter [MQTT-4.7.1-2].
    MisplacedMultiLevelWildcard,
    /// `+` shares its level with other characters [MQTT-4.7.1-3].
    MisplacedSingleLevelWildcard,
}

impl TopicError {
    /// The conformance statement broken, e.g. `"MQTT-4.7.1-2"`, for logs and test reports.
    pub fn rule(&self) -> &'static str {
        match self {
            TopicError::Empty => "MQTT-4.7.3-1",
            TopicError::TooLong(_) => "MQTT-4.7.3-3",
            TopicError::NullCharacter => "MQTT-4.7.3-2",
            TopicError::WildcardInTopicName => "MQTT-3.3.2-2",
            TopicError::MisplacedMultiLevelWildcard => "MQTT-4.7.1-2",
            TopicError::MisplacedSingleLevelWildcard => "MQTT-4.7.1-3",
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => {
                f.write_str("[MQTT-4.7.3-1] topic names and topic filters must not be empty")
            }
            TopicError::TooLong(len) => write!(
                f,
                "[MQTT-4.7.3-3] topic is {len} bytes long, more than the {MAX_TOPIC_LEN} allowed"
            ),
            TopicError::NullCharacter => {
                f.write_str("[MQTT-4.7.3-2] topic names and topic filters must not contain U+0000")
            }
            TopicError::WildcardInTopicName => f.write_str(
                "[MQTT-3.3.2-2] [MQTT-4.7.1-1] wildcards '+' and '#' are not allowed in a topic name",
            ),
            TopicError::MisplacedMultiLevelWildcard => f.write_str(
                "[MQTT-4.7.1-2] multi-level wildcard '#' must be the last level of a topic filter \
                 and occupy that level on its own",
            ),
            TopicError::MisplacedSingleLevelWildcard => f.write_str(
                "[MQTT-4.7.1-3] single-level wildcard '+' must occupy an entire level of a topic filter",
            ),
        }
    }
}

impl std::error::Error for TopicError {}

/// The length rules of section 4.7.3, shared by names and filters.
fn validate_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    Ok(())
}

/// Checks shared by names and filters: the section 4.7.3 rules.
fn validate_common(s: &str) -> Result<(), TopicError> {
    validate_length(s)?;
    if s.as_bytes().contains(&0) {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Validates a topic name, i.e. the topic of a PUBLISH or a Will.
///
/// Wildcards are refused because a name denotes exactly one topic; a PUBLISH carrying one
/// is a protocol violation and the connection must be closed.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    validate_length(name)?;
    // The codec checks every PUBLISH's topic here, so U+0000 and the wildcards are looked
    // for in one pass; U+0000 is still the answer when both are present.
    if name.bytes().any(|b| matches!(b, 0 | b'+' | b'#')) {
        if name.as_bytes().contains(&0) {
            return Err(TopicError::NullCharacter);
        }
        return Err(TopicError::WildcardInTopicName);
    }
    Ok(())
}

/// Validates a topic filter from SUBSCRIBE or UNSUBSCRIBE.
///
/// Only the placement of wildcards is checked here; `$` filters such as `$SYS/#` are
/// valid, and whether a client may use them is an authorisation question, not a format one.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_topic_names() {
        for name in [
            "a",
            "/",
            "//",
            "/finance",
            "finance/",
            "sport/tennis/player1",
            "Accounts payable",
            "$SYS/broker/uptime",
            "$",
            "caf\u{e9}/\u{1f600}",
        ] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(validate_topic_name(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
        assert_eq!(validate_topic_name(&"/".repeat(MAX_TOPIC_LEN)), Ok(()));
    }

    #[test]
    fn invalid_topic_names() {
        let cases = [
            ("", TopicError::Empty),
            ("a\0b", TopicError::NullCharacter),
            ("\0", TopicError::NullCharacter),
            ("a/#", TopicError::WildcardInTopicName),
            ("#", TopicError::WildcardInTopicName),
            ("+", TopicError::WildcardInTopicName),
            ("sport/+/player1", TopicError::WildcardInTopicName),
            ("a+b", TopicError::WildcardInTopicName),
            ("a#b", TopicError::WildcardInTopicName),
        ];
        for (name, err) in cases {
            assert_eq!(validate_topic_name(name), Err(err), "{name:?}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(
            validate_topic_name(&long),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
        // The limit is in bytes of UTF-8, not in characters.
        let multibyte = "\u{e9}".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert_eq!(
            validate_topic_name(&multibyte),
            Err(TopicError::TooLong(multibyte.len()))
        );
    }

    #[test]
    fn valid_topic_filters() {
        for filter in [
            "#",
            "+",
            "+/+",
            "/+",
            "+/",
            "/#",
            "a/#",
            "a/+/b",
            "+/tennis/#",
            "sport/tennis/#",
            "sport/tennis/player1/#",
            "sport/+/player1",
            "sport/+",
            "$SYS/#",
            "$SYS/monitor/+",
            "+/#",
            "//",
            "Accounts payable",
        ] {
            assert_eq!(validate_topic_filter(filter), Ok(()), "{filter:?}");
        }
        assert_eq!(validate_topic_filter(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
        let deepest = vec!["+"; MAX_TOPIC_LEN / 2 + 1].join("/");
        assert_eq!(deepest.len(), MAX_TOPIC_LEN);
        assert_eq!(validate_topic_filter(&deepest), Ok(()));
    }

    #[test]
    fn invalid_topic_filters() {
        use TopicError::*;
        let cases = [
            ("", Empty),
            ("a\0", NullCharacter),
            ("sport/tennis#", MisplacedMultiLevelWildcard),
            ("sport/tennis/#/ranking", MisplacedMultiLevelWildcard),
            ("a#", MisplacedMultiLevelWildcard),
            ("#a", MisplacedMultiLevelWildcard),
            ("a/b#", MisplacedMultiLevelWildcard),
            ("a/#/b", MisplacedMultiLevelWildcard),
            ("#/", MisplacedMultiLevelWildcard),
            ("#/#", MisplacedMultiLevelWildcard),
            ("##", MisplacedMultiLevelWildcard),
            ("sport+", MisplacedSingleLevelWildcard),
            ("a+", MisplacedSingleLevelWildcard),
            ("a/+b", MisplacedSingleLevelWildcard),
            ("+a/b", MisplacedSingleLevelWildcard),
            ("++", MisplacedSingleLevelWildcard),
        ];
        for (filter, err) in cases {
            assert_eq!(validate_topic_filter(filter), Err(err), "{filter:?}");
        }
        assert_eq!(
            validate_topic_filter(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn null_character_outranks_a_wildcard_in_names() {
        // Names are scanned for both in one pass; the answer must not depend on the order.
        for name in ["a/#\0", "\0+", "+/\0/#"] {
            assert_eq!(
                validate_topic_name(name),
                Err(TopicError::NullCharacter),
                "{name:?}"
            );
        }
    }

    #[test]
    fn errors_name_their_rule() {
        use TopicError::*;
        let all = [
            Empty,
            TooLong(70_000),
            NullCharacter,
            WildcardInTopicName,
            MisplacedMultiLevelWildcard,
            MisplacedSingleLevelWildcard,
        ];
        for err in all {
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("[{}]", err.rule())),
                "{msg:?} should start with [{}]",
                err.rule()
            );
        }
        assert_eq!(
            MisplacedMultiLevelWildcard.to_string(),
            "[MQTT-4.7.1-2] multi-level wildcard '#' must be the last level of a topic filter \
             and occupy that level on its own"
        );
        assert!(TooLong(70_000).to_string().contains("70000"));
        let boxed: Box<dyn std::error::Error> = Box::new(Empty);
        assert!(boxed.to_string().contains("MQTT-4.7.3-1"));
    }
}
