//! MQTT topics and filters as NATS subjects, reversibly.
//!
//! Each MQTT level becomes one NATS token. NATS gives `.`, `*` and `>` meaning inside a
//! subject, forbids whitespace and empty tokens, and some clients mishandle control
//! characters, so a level is percent-escaped (`%XX` per byte) wherever it holds one of
//! those, a `%`, or any byte outside printable ASCII; an empty level is the lone token
//! `%`, which escaping never produces otherwise. Everything else is kept as is, so common
//! topics read the same in NATS (`sensors/kitchen/temp` is `<prefix>.sensors.kitchen.temp`).
//!
//! Topics starting with `$` live under their own prefix: MQTT's `+` and `#` never match
//! them as the first level [MQTT-4.7.2-1], and NATS's `*` and `>` cannot tell, so they
//! are kept out of reach of any filter that starts with a wildcard.
//!
//! `+` is `*`; `#` is `>` plus its parent level, since `a/#` matches `a` and NATS's `a.>`
//! does not, so a filter ending in `/#` is two subjects (disjoint: one topic never
//! matches both).

use std::fmt::Write as _;

/// Subjects of topics that do not start with `$`.
pub const TOPICS: &str = "pyo3mq.t";
/// Subjects of topics that start with `$`.
pub const DOLLAR_TOPICS: &str = "pyo3mq.d";

/// The token of an empty level.
const EMPTY_LEVEL: &str = "%";

/// Whether a byte is written as is in a token.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_graphic() && !matches!(byte, b'.' | b'*' | b'>' | b'%')
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push_str(EMPTY_LEVEL);
        return;
    }
    for &byte in level.as_bytes() {
        if is_plain(byte) {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn prefix_of(topic: &str) -> &'static str {
    if topic.starts_with('$') {
        DOLLAR_TOPICS
    } else {
        TOPICS
    }
}

/// The subject a topic name is published on.
pub fn topic_to_subject(topic: &str) -> String {
    let mut out = String::with_capacity(TOPICS.len() + topic.len() + 8);
    out.push_str(prefix_of(topic));
    for level in topic.split('/') {
        out.push('.');
        push_level(&mut out, level);
    }
    out
}

/// The subjects that together match what `filter` matches: one, or two for a filter
/// ending in `/#` (the parent level and everything below it). `filter` must be valid.
pub fn filter_to_subjects(filter: &str) -> Vec<String> {
    let mut out = String::with_capacity(TOPICS.len() + filter.len() + 8);
    out.push_str(prefix_of(filter));
    if filter == "#" {
        out.push_str(".>");
        return vec![out];
    }
    let (path, multi) = match filter.strip_suffix("/#") {
        Some(path) => (path, true),
        None => (filter, false),
    };
    for level in path.split('/') {
        out.push('.');
        if level == "+" {
            out.push('*');
        } else {
            push_level(&mut out, level);
        }
    }
    if multi {
        let parent = out.clone();
        out.push_str(".>");
        vec![parent, out]
    } else {
        vec![out]
    }
}

/// The topic name a subject carries; `None` for a subject that [`topic_to_subject`] did
/// not produce (another application's message on our prefix, or a bad escape).
pub fn subject_to_topic(subject: &str) -> Option<String> {
    let (dollar, rest) = if let Some(rest) = subject.strip_prefix(TOPICS) {
        (false, rest)
    } else {
        (true, subject.strip_prefix(DOLLAR_TOPICS)?)
    };
    let rest = rest.strip_prefix('.')?;
    let mut bytes = Vec::with_capacity(rest.len());
    for (i, token) in rest.split('.').enumerate() {
        if i > 0 {
            bytes.push(b'/');
        }
        if token == EMPTY_LEVEL {
            continue;
        }
        if token.is_empty() {
            return None;
        }
        let raw = token.as_bytes();
        let mut at = 0;
        while at < raw.len() {
            let byte = raw[at];
            if byte == b'%' {
                let hex = token.get(at + 1..at + 3)?;
                let decoded = u8::from_str_radix(hex, 16).ok()?;
                // Only what encoding escapes, in its spelling: one topic, one subject.
                if is_plain(decoded) || hex.bytes().any(|b| b.is_ascii_lowercase()) {
                    return None;
                }
                bytes.push(decoded);
                at += 3;
            } else if is_plain(byte) {
                bytes.push(byte);
                at += 1;
            } else {
                return None;
            }
        }
    }
    let topic = String::from_utf8(bytes).ok()?;
    (topic.starts_with('$') == dollar).then_some(topic)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::topic;

    /// NATS subject matching (the server's rules): `*` is one token, `>` one or more
    /// trailing tokens, everything else compared literally.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let mut pattern = pattern.split('.').peekable();
        let mut subject = subject.split('.');
        loop {
            match (pattern.next(), subject.next()) {
                (Some(">"), Some(_)) if pattern.peek().is_none() => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// A subject NATS accepts: non-empty tokens of printable ASCII.
    fn is_valid_subject(subject: &str) -> bool {
        subject
            .split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
    }

    #[test]
    fn examples() {
        assert_eq!(topic_to_subject("a/b"), "pyo3mq.t.a.b");
        assert_eq!(topic_to_subject("a.b/*/>"), "pyo3mq.t.a%2Eb.%2A.%3E");
        assert_eq!(topic_to_subject("/x//"), "pyo3mq.t.%.x.%.%");
        assert_eq!(topic_to_subject("a b/%"), "pyo3mq.t.a%20b.%25");
        assert_eq!(topic_to_subject("$SYS/x"), "pyo3mq.d.$SYS.x");
        assert_eq!(topic_to_subject("é"), "pyo3mq.t.%C3%A9");
        assert_eq!(filter_to_subjects("#"), ["pyo3mq.t.>"]);
        assert_eq!(filter_to_subjects("+"), ["pyo3mq.t.*"]);
        assert_eq!(
            filter_to_subjects("a/+/#"),
            ["pyo3mq.t.a.*", "pyo3mq.t.a.*.>"]
        );
        assert_eq!(
            filter_to_subjects("$SYS/#"),
            ["pyo3mq.d.$SYS", "pyo3mq.d.$SYS.>"]
        );
        assert_eq!(
            subject_to_topic("pyo3mq.t.%.x.%.%").as_deref(),
            Some("/x//")
        );
        for bad in [
            "pyo3mq.t",
            "pyo3mq.t.",
            "pyo3mq.t.a..b",
            "pyo3mq.t.%2e",
            "pyo3mq.t.%41",
            "pyo3mq.t.%4",
            "pyo3mq.t.$x",
            "pyo3mq.d.x",
            "other.a",
            "pyo3mq.tt.a",
        ] {
            assert_eq!(subject_to_topic(bad), None, "{bad}");
        }
    }

    /// Levels built from the characters that need care, so collisions are likely.
    fn level() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("."),
                Just("*"),
                Just(">"),
                Just(" "),
                Just("%"),
                Just("%25"),
                Just("\t"),
                Just("\u{7f}"),
                Just("é"),
                Just("$"),
                Just("_"),
            ],
            0..3,
        )
        .prop_map(|parts| parts.concat())
    }

    fn topic_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
        (
            proptest::collection::vec(level, 0..4),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(levels, hash, dollar)| {
                let mut levels = levels;
                if dollar {
                    levels.insert(0, "$x".into());
                }
                if hash {
                    levels.push("#".into());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_trip(topic in topic_name()) {
            let subject = topic_to_subject(&topic);
            prop_assert!(is_valid_subject(&subject), "{subject:?}");
            prop_assert_eq!(subject_to_topic(&subject), Some(topic));
        }

        #[test]
        fn dollar_round_trip(topic in topic_name()) {
            let topic = format!("${topic}");
            prop_assert_eq!(subject_to_topic(&topic_to_subject(&topic)), Some(topic));
        }

        /// The subjects of a filter match the subject of a topic exactly when the filter
        /// matches the topic in MQTT (the project's reference matcher), and never twice.
        #[test]
        fn matching_agrees(filter in filter(), topic in topic_name(), dollar in any::<bool>()) {
            let topic = if dollar { format!("$x/{topic}") } else { topic };
            prop_assume!(topic::validate_topic_filter(&filter).is_ok());
            prop_assume!(topic::validate_topic_name(&topic).is_ok());
            let subject = topic_to_subject(&topic);
            let subjects = filter_to_subjects(&filter);
            for pattern in &subjects {
                prop_assert!(pattern.split('.').all(|t| !t.is_empty()), "{pattern:?}");
            }
            let hits = subjects.iter().filter(|p| nats_matches(p, &subject)).count();
            prop_assert!(hits <= 1, "{filter:?} {topic:?}");
            prop_assert_eq!(hits == 1, topic::matches(&filter, &topic), "{:?} {:?}", filter, topic);
        }
    }
}
