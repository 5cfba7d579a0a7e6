//! Topic names, topic filters and the two tries the broker routes with (MQTT 3.1.1 section 4.7).
//!
//! The parts, all private, with what the rest of the crate uses re-exported here:
//!
//! * `validate`: [`validate_topic_name`] and [`validate_topic_filter`] enforce the
//!   section 4.7 format rules, so the broker can refuse a PUBLISH (close the connection)
//!   or a SUBSCRIBE filter (SUBACK `0x80`) before the filter goes anywhere near a trie.
//!   The codec checks the topic names it decodes with the same function.
//! * `matching`: [`matches`](fn@matches) is the one-pair reference definition of
//!   matching. The tries must agree with it exactly, and the property tests in `tests`
//!   check that.
//! * `subscription`: [`SubscriptionTree`] answers "who is subscribed to this topic?" for
//!   every PUBLISH.
//! * `retained`: [`RetainedTree`] answers "which retained messages does this new filter
//!   replay?".
//! * `shared`: [`parse_shared`] splits a `$share/{ShareName}/{filter}` shared subscription
//!   (MQTT 5.0 section 4.8.2, also accepted from 3.1.1 clients) and checks its rules;
//!   [`ValidFilter::parse`] is a SUBSCRIBE filter's one check (both rule sets), made by
//!   the connection and trusted by the router.
//!
//! Levels are the pieces between `/` separators and are compared as raw bytes: MQTT
//! forbids normalisation [MQTT-4.7.3-4], so `ACCOUNTS` and `Accounts` are different levels,
//! and `/finance` has two levels, an empty one and `finance`.
//!
//! # Filters that are not valid
//!
//! Matching never panics, but it is only meaningful for inputs that passed validation.
//! To keep the tries and [`matches`](fn@matches) in agreement even then, a level is a wildcard only
//! when it is exactly `+`, or exactly `#` *and* the last level; anything else (`a+`,
//! `tennis#`, the `#` of `a/#/b`) is compared literally. Valid topic names contain no `+`
//! or `#`, so such a level matches nothing a client can publish to.
//!
//! # Depth
//!
//! A 65,535-byte filter such as `+/+/+/...` has 32,768 levels, and clients choose their
//! filters. Everything here therefore walks iteratively (including dropping nodes),
//! so a hostile SUBSCRIBE cannot overflow a runtime thread's stack.

mod matching;
mod retained;
mod shared;
mod subscription;
mod validate;

#[cfg(test)]
mod tests;

pub use matching::matches;
pub use retained::RetainedTree;
pub use shared::{parse_shared, FilterError, ShareError, SharedFilter, ValidFilter, SHARE_PREFIX};
pub use subscription::SubscriptionTree;
pub use validate::{validate_topic_filter, validate_topic_name, TopicError, MAX_TOPIC_LEN};
