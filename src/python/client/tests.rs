//! Unit tests of the client bindings' pure helpers.

use super::messages::aiomqtt_matches;

#[test]
fn matching_follows_aiomqtt() {
    let cases = [
        ("a/b", "a/b", true),
        ("a/b", "a/+", true),
        ("a/b", "+/+", true),
        ("a/b", "+", false),
        ("a/b", "a/#", true),
        ("a", "a/#", true),
        ("a/b/c", "a/#", true),
        ("a/b", "#", true),
        ("$SYS/x", "#", true),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("a/b", "$share/group/a/+", true),
        ("a/b", "$share/group/#", true),
        ("a//b", "a/+/b", true),
        ("a/b", "a/c", false),
    ];
    for (topic, wildcard, expected) in cases {
        assert_eq!(
            aiomqtt_matches(topic, wildcard),
            expected,
            "{topic} ~ {wildcard}"
        );
    }
}
