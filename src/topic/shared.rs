//! Shared subscription filters, `$share/{ShareName}/{filter}` (MQTT 5.0 section 4.8.2).
//!
//! MQTT 3.1.1 has no shared subscriptions: there `$share/g/t` is just a filter whose first
//! level starts with `$`. Like Mosquitto and EMQX, the broker gives 3.1.1 clients the 5.0
//! meaning, so the parsing and its rules live here, beside the 3.1.1 filter rules.

use std::fmt;

use bytestring::ByteString;

use super::validate::{validate_topic_filter, TopicError};

/// The prefix that makes a filter a shared subscription.
pub const SHARE_PREFIX: &str = "$share/";

/// A shared subscription filter split into its parts; both borrow the whole filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The ShareName: the group's name, unique at server scope.
    pub group: &'a str,
    /// The filter that topics are matched against (the `$share/{ShareName}/` prefix is
    /// ignored for matching).
    pub filter: &'a str,
}

/// Why a `$share/` filter was refused; the message names the 5.0 rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// `$share//t`: the ShareName is empty [MQTT-4.8.2-1].
    #[error(
        "[MQTT-4.8.2-1] a shared subscription's ShareName must be at least one character long"
    )]
    EmptyShareName,
    /// `$share/g+/t`: the ShareName holds `+` or `#` [MQTT-4.8.2-2].
    #[error("[MQTT-4.8.2-2] a shared subscription's ShareName must not contain '+' or '#'")]
    WildcardInShareName,
    /// `$share/g` or `$share/g/`: no Topic Filter after the ShareName [MQTT-4.8.2-2].
    #[error("[MQTT-4.8.2-2] a shared subscription's ShareName must be followed by '/' and a topic filter")]
    NoTopicFilter,
    /// The Topic Filter after the ShareName breaks a section 4.7 rule.
    #[error("{0} (in the topic filter of a shared subscription)")]
    Filter(TopicError),
}

impl ShareError {
    /// The conformance statement broken, e.g. `"MQTT-4.8.2-2"`.
    pub fn rule(&self) -> &'static str {
        match self {
            ShareError::EmptyShareName => "MQTT-4.8.2-1",
            ShareError::WildcardInShareName | ShareError::NoTopicFilter => "MQTT-4.8.2-2",
            ShareError::Filter(err) => err.rule(),
        }
    }
}

/// A SUBSCRIBE filter refused: a section 4.7 rule, or a shared subscription's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Share(#[from] ShareError),
}

impl FilterError {
    /// The conformance statement broken.
    pub fn rule(&self) -> &'static str {
        match self {
            FilterError::Topic(err) => err.rule(),
            FilterError::Share(err) => err.rule(),
        }
    }
}

impl fmt::Display for SharedFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHARE_PREFIX}{}/{}", self.group, self.filter)
    }
}

/// Splits a shared subscription filter: `Ok(None)` for a filter that is not shared (it
/// does not start with `$share/`; it is checked by [`validate_topic_filter`] as usual),
/// `Ok(Some(..))` for a valid shared one, `Err` naming the rule a bad one breaks.
/// `$share` alone and `$sharefoo/x` are ordinary filters, as in 5.0.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, ShareError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        // `$share/g`: no `/` after the ShareName. (`$share/` alone has an empty name.)
        if rest.is_empty() {
            return Err(ShareError::EmptyShareName);
        }
        if rest.contains(['+', '#']) {
            return Err(ShareError::WildcardInShareName);
        }
        return Err(ShareError::NoTopicFilter);
    };
    if group.is_empty() {
        return Err(ShareError::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(ShareError::WildcardInShareName);
    }
    if inner.is_empty() {
        return Err(ShareError::NoTopicFilter);
    }
    validate_topic_filter(inner).map_err(ShareError::Filter)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// A SUBSCRIBE topic filter that passed every rule: section 4.7's for the whole filter
/// and, for a `$share/` one, the shared subscription's. Made only by [`ValidFilter::parse`],
/// so whoever holds one (the router) does not check it again.
#[derive(Debug, Clone, Copy)]
pub struct ValidFilter<'a> {
    filter: &'a ByteString,
    share: Option<SharedFilter<'a>>,
}

impl<'a> ValidFilter<'a> {
    /// The one check of a SUBSCRIBE filter; `Err` names the rule broken, a shared
    /// subscription's own rule first (`$share/g+/t` breaks [MQTT-4.8.2-2] before 4.7's).
    pub fn parse(filter: &'a ByteString) -> Result<ValidFilter<'a>, FilterError> {
        let share = parse_shared(filter)?;
        validate_topic_filter(filter)?;
        Ok(ValidFilter { filter, share })
    }

    /// The filter as subscribed (with its `$share/{ShareName}/` prefix, if any).
    pub fn filter(&self) -> &'a ByteString {
        self.filter
    }

    /// The group and inner filter of a shared subscription; `None` for a plain one.
    pub fn share(&self) -> Option<SharedFilter<'a>> {
        self.share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_shared_filters_split_into_group_and_filter() {
        for (full, group, filter) in [
            ("$share/g/t", "g", "t"),
            ("$share/g/#", "g", "#"),
            ("$share/workers/a/+/c", "workers", "a/+/c"),
            ("$share/g//", "g", "/"),
            ("$share/g/$SYS/#", "g", "$SYS/#"),
        ] {
            let parsed = parse_shared(full).unwrap().unwrap();
            assert_eq!(parsed, SharedFilter { group, filter });
            assert_eq!(parsed.to_string(), full);
        }
    }

    #[test]
    fn ordinary_filters_are_not_shared() {
        for filter in ["a/b", "$share", "$sharex/g/t", "$SYS/#", "#", "share/g/t"] {
            assert_eq!(parse_shared(filter), Ok(None), "{filter}");
        }
    }

    #[test]
    fn bad_share_names_name_the_rule() {
        for (filter, err) in [
            ("$share/", ShareError::EmptyShareName),
            ("$share//t", ShareError::EmptyShareName),
            ("$share/g", ShareError::NoTopicFilter),
            ("$share/g/", ShareError::NoTopicFilter),
            ("$share/g+/t", ShareError::WildcardInShareName),
            ("$share/#", ShareError::WildcardInShareName),
            ("$share/+/t", ShareError::WildcardInShareName),
            ("$share/g#/t", ShareError::WildcardInShareName),
            (
                "$share/g/a#",
                ShareError::Filter(TopicError::MisplacedMultiLevelWildcard),
            ),
            (
                "$share/g/a/#/b",
                ShareError::Filter(TopicError::MisplacedMultiLevelWildcard),
            ),
            (
                "$share/g/a+",
                ShareError::Filter(TopicError::MisplacedSingleLevelWildcard),
            ),
        ] {
            assert_eq!(parse_shared(filter), Err(err.clone()), "{filter}");
            assert!(err.to_string().contains(err.rule()), "{filter}: {err}");
        }
    }
}
