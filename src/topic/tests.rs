//! What must hold across the three matchers ([`matches`](fn@matches) and the two tries): the
//! examples of spec section 4.7, the deepest filters, and properties against an
//! independent reading of the spec. Also the helpers the tries' own tests share.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

// ---- helpers -------------------------------------------------------------------

/// Keys the subscription trie reports for `topic`, sorted, duplicates kept.
pub(super) fn sub_hits<V>(tree: &SubscriptionTree<usize, V>, topic: &str) -> Vec<usize> {
    let mut hits = Vec::new();
    tree.matches(topic, &mut |k, _| hits.push(*k));
    hits.sort_unstable();
    hits
}

/// Topics the retained trie reports for `filter`, sorted, duplicates kept.
pub(super) fn ret_hits<V>(tree: &RetainedTree<V>, filter: &str) -> Vec<String> {
    let mut hits = Vec::new();
    tree.matching(filter, &mut |t, _| hits.push(t.to_owned()));
    hits.sort_unstable();
    hits
}

/// Asserts `matches` gives `expected` and both tries agree with it for this pair.
fn check(filter: &str, topic: &str, expected: bool) {
    assert_eq!(
        matches(filter, topic),
        expected,
        "matches({filter:?}, {topic:?})"
    );
    let mut subs = SubscriptionTree::new();
    subs.insert(filter, 7usize, ());
    let want: Vec<usize> = if expected { vec![7] } else { vec![] };
    assert_eq!(sub_hits(&subs, topic), want, "trie {filter:?} vs {topic:?}");
    let mut retained = RetainedTree::new();
    retained.insert(topic, ());
    let want: Vec<String> = if expected {
        vec![topic.to_owned()]
    } else {
        vec![]
    };
    assert_eq!(
        ret_hits(&retained, filter),
        want,
        "retained {filter:?} vs {topic:?}"
    );
}

// ---- matching: the examples of spec section 4.7 ----------------------------------

#[test]
fn spec_4_7_1_2_multi_level_wildcard() {
    check("sport/tennis/player1/#", "sport/tennis/player1", true);
    check(
        "sport/tennis/player1/#",
        "sport/tennis/player1/ranking",
        true,
    );
    check(
        "sport/tennis/player1/#",
        "sport/tennis/player1/score/wimbledon",
        true,
    );
    check("sport/tennis/player1/#", "sport/tennis/player2", false);
    check("sport/tennis/player1/#", "sport/tennis", false);
    // "sport/#" also matches the singular "sport", since # includes the parent level.
    check("sport/#", "sport", true);
    check("sport/#", "sport/", true);
    check("sport/#", "sport/tennis/player1", true);
    check("sport/#", "sports", false);
    check("sport/#", "/sport", false);
    // "#" is valid and will receive every application message.
    check("#", "sport", true);
    check("#", "sport/tennis/player1", true);
    check("#", "/", true);
    check("#", "/finance", true);
    check("sport/tennis/#", "sport/tennis", true);
    check("sport/tennis/#", "sport/tennis/player1/ranking", true);
    check("sport/tennis/#", "sport/football", false);
    // "sport/tennis#" and "sport/tennis/#/ranking" are not valid filters.
    assert!(validate_topic_filter("sport/tennis#").is_err());
    assert!(validate_topic_filter("sport/tennis/#/ranking").is_err());
}

#[test]
fn spec_4_7_1_3_single_level_wildcard() {
    check("sport/tennis/+", "sport/tennis/player1", true);
    check("sport/tennis/+", "sport/tennis/player2", true);
    check("sport/tennis/+", "sport/tennis/player1/ranking", false);
    // "sport/+" does not match "sport" but does match "sport/".
    check("sport/+", "sport", false);
    check("sport/+", "sport/", true);
    check("sport/+", "sport/tennis", true);
    // "+", "+/tennis/#" and "sport/+/player1" are valid; "sport+" is not.
    for filter in ["+", "+/tennis/#", "sport/+/player1"] {
        assert_eq!(validate_topic_filter(filter), Ok(()));
    }
    assert!(validate_topic_filter("sport+").is_err());
    check("+", "sport", true);
    check("+", "sport/tennis", false);
    check("+/tennis/#", "sport/tennis", true);
    check("+/tennis/#", "sport/tennis/player1/ranking", true);
    check("+/tennis/#", "sport/football", false);
    check("sport/+/player1", "sport/tennis/player1", true);
    check("sport/+/player1", "sport//player1", true);
    check("sport/+/player1", "sport/tennis/player2", false);
    check("sport/+/player1", "sport/tennis/x/player1", false);
    // "/finance" matches "+/+" and "/+", but not "+".
    check("+/+", "/finance", true);
    check("/+", "/finance", true);
    check("+", "/finance", false);
}

#[test]
fn spec_4_7_2_dollar_topics() {
    // [MQTT-4.7.2-1]: filters starting with a wildcard never match `$` topics.
    check("#", "$SYS/broker/uptime", false);
    check("#", "$SYS", false);
    check("#", "$", false);
    check("+", "$SYS", false);
    check("+/#", "$SYS/x", false);
    check("+/monitor/Clients", "$SYS/monitor/Clients", false);
    check("+/x", "$test/x", false);
    // ...but an explicit `$` prefix does.
    check("$SYS/#", "$SYS/monitor/Clients", true);
    check("$SYS/#", "$SYS/x", true);
    check("$SYS/#", "$SYS", true);
    check("$SYS/monitor/+", "$SYS/monitor/Clients", true);
    check("$test/#", "$test/x", true);
    check("$SYS", "$SYS", true);
    // The rule only concerns the first character of the topic.
    check("+/$SYS", "a/$SYS", true);
    check("#", "a/$SYS", true);
    check("a/#", "a/$x", true);
    check("a/+", "a/$x", true);
    check("+", "a$", true);
}

#[test]
fn spec_4_7_3_exact_comparison() {
    // [MQTT-4.7.3-4]: no case folding, no Unicode normalisation, separators count.
    check("ACCOUNTS", "Accounts", false);
    check("Accounts", "Accounts", true);
    check("Accounts payable", "Accounts payable", true);
    check("Accounts payable", "Accountspayable", false);
    check("Accounts payable", "Accounts payable ", false);
    check("caf\u{e9}", "cafe\u{301}", false); // NFC vs NFD
    check("caf\u{e9}", "caf\u{e9}", true);
    check("/finance", "finance", false);
    check("finance", "/finance", false);
    check("finance", "finance/", false);
    check("finance/", "finance/", true);
    check("/", "/", true);
    check("//", "/", false);
    check("+/+", "/", true);
    check("+", "/", false);
}

#[test]
fn empty_levels() {
    check("+", "a", true);
    check("+/+", "a/", true);
    check("+/+", "/a", true);
    check("+/+/+", "//", true);
    check("a//b", "a//b", true);
    check("a/+/b", "a//b", true);
    check("a/+/b", "a/b", false);
    check("/#", "/", true);
    check("/#", "/a/b", true);
    check("/#", "a", false);
    check("+/#", "a", true);
    check("+/#", "/", true);
}

#[test]
fn longest_topic_is_matched() {
    // [MQTT-4.7.3-3]: a 65,535-byte topic is accepted and matched.
    let topic = "a".repeat(MAX_TOPIC_LEN);
    check(&topic, &topic, true);
    check("+", &topic, true);
    check("#", &topic, true);
    check(&topic[1..], &topic, false);
}

#[test]
fn deepest_filters_do_not_overflow_the_stack() {
    // 32,768 levels, the most a 65,535-byte string can have, on a deliberately small
    // thread stack: insert, match, remove and drop must all be iterative.
    let run = || {
        let plus = vec!["+"; MAX_TOPIC_LEN / 2 + 1].join("/");
        let lit = vec!["a"; MAX_TOPIC_LEN / 2 + 1].join("/");
        let slashes = "/".repeat(MAX_TOPIC_LEN / 2);
        let mut tree = SubscriptionTree::new();
        tree.insert(&plus, 1usize, ());
        tree.insert(&lit, 2, ());
        tree.insert(&format!("{}/#", &lit[..lit.len() - 2]), 3, ());
        assert_eq!(sub_hits(&tree, &slashes), vec![1]);
        assert_eq!(sub_hits(&tree, &lit), vec![1, 2, 3]);
        assert_eq!(tree.remove(&plus, &1), Some(()));
        assert_eq!(sub_hits(&tree, &slashes), Vec::<usize>::new());
        let mut other = SubscriptionTree::new();
        other.insert(&plus, 1usize, ());
        drop(other);
        drop(tree);

        let mut retained = RetainedTree::new();
        retained.insert(&lit, 1u8);
        retained.insert(&slashes, 2u8);
        assert_eq!(ret_hits(&retained, "#").len(), 2);
        assert_eq!(ret_hits(&retained, &plus).len(), 2);
        assert_eq!(retained.get(&lit), Some(&1));
        assert_eq!(retained.remove(&lit), Some(1));
        drop(retained);
    };
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(run)
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

// ---- properties -----------------------------------------------------------------

/// A straightforward recursive reading of section 4.7, independent of `matches`.
fn reference(filter: &str, topic: &str) -> bool {
    fn go(f: &[&str], t: &[&str]) -> bool {
        match (f, t) {
            (["#"], _) => true,
            (["+", fr @ ..], [_, tr @ ..]) => go(fr, tr),
            ([fl, fr @ ..], [tl, tr @ ..]) => fl == tl && go(fr, tr),
            ([], []) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && matches!(f.first(), Some(&"+") | Some(&"#")) {
        return false;
    }
    go(&f, &t)
}

fn joined(levels: &'static [&'static str], min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(levels), min..6).prop_map(|v| v.join("/"))
}

fn topic_strategy() -> impl Strategy<Value = String> {
    joined(&["a", "b", "", "$x"], 1)
}

/// Valid filters only: `#` can only be appended as the last level.
fn filter_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(&["a", "b", "", "$x", "+"][..]), 0..5),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            // A lone empty level would join to "", which is not a filter.
            if hash || levels.is_empty() || levels == [""] {
                levels.push("#");
            }
            levels.join("/")
        })
}

/// Anything goes, including wildcards in the wrong places and in topics.
fn wild_strategy() -> impl Strategy<Value = String> {
    joined(&["a", "", "$x", "+", "#", "a+", "#a", "$"], 1)
}

/// Both tries agree with `matches` on every (filter, topic) pair given.
fn assert_tries_agree(filters: &[String], topics: &[String]) -> Result<(), TestCaseError> {
    let mut subs = SubscriptionTree::new();
    for (i, f) in filters.iter().enumerate() {
        subs.insert(f, i, ());
    }
    let topics: BTreeSet<&String> = topics.iter().collect();
    let mut retained = RetainedTree::new();
    for t in &topics {
        retained.insert(t, ());
    }
    for t in &topics {
        let want: Vec<usize> = (0..filters.len())
            .filter(|&i| matches(&filters[i], t))
            .collect();
        prop_assert_eq!(sub_hits(&subs, t), want, "topic {:?}", t);
    }
    for f in filters {
        let want: Vec<String> = topics
            .iter()
            .filter(|t| matches(f, t))
            .map(|t| t.to_string())
            .collect();
        prop_assert_eq!(ret_hits(&retained, f), want, "filter {:?}", f);
    }
    Ok(())
}

proptest! {
    #[test]
    fn matches_agrees_with_reference(f in filter_strategy(), t in topic_strategy()) {
        prop_assert_eq!(matches(&f, &t), reference(&f, &t));
    }

    #[test]
    fn generated_filters_are_valid(f in filter_strategy()) {
        prop_assert_eq!(validate_topic_filter(&f), Ok(()));
    }

    #[test]
    fn validated_names_match_themselves(t in topic_strategy()) {
        if validate_topic_name(&t).is_ok() {
            prop_assert!(matches(&t, &t));
        }
    }

    #[test]
    fn tries_agree_with_matches(
        filters in prop::collection::vec(filter_strategy(), 0..24),
        topics in prop::collection::vec(topic_strategy(), 0..24),
    ) {
        assert_tries_agree(&filters, &topics)?;
    }

    #[test]
    fn tries_agree_with_matches_on_invalid_input(
        filters in prop::collection::vec(wild_strategy(), 0..16),
        topics in prop::collection::vec(wild_strategy(), 0..16),
    ) {
        assert_tries_agree(&filters, &topics)?;
    }

    #[test]
    fn churn_matches_a_model_and_prunes(
        ops in prop::collection::vec((any::<bool>(), filter_strategy(), 0usize..4, any::<u8>()), 0..64),
        topics in prop::collection::vec(topic_strategy(), 1..8),
    ) {
        let mut tree = SubscriptionTree::new();
        let mut retained = RetainedTree::new();
        let mut model: BTreeMap<(String, usize), u8> = BTreeMap::new();
        let mut retained_model: BTreeMap<String, u8> = BTreeMap::new();
        for (insert, filter, key, value) in ops {
            // Reuse the filter string as a topic where it is one, for the retained tree.
            let topic = filter.replace(['+', '#'], "t");
            if insert {
                prop_assert_eq!(tree.insert(&filter, key, value), model.insert((filter.clone(), key), value));
                prop_assert_eq!(retained.insert(&topic, value), retained_model.insert(topic, value));
            } else {
                prop_assert_eq!(tree.remove(&filter, &key), model.remove(&(filter.clone(), key)));
                prop_assert_eq!(retained.remove(&topic), retained_model.remove(&topic));
            }
            prop_assert_eq!(tree.len(), model.len());
            prop_assert_eq!(retained.len(), retained_model.len());
        }
        for t in &topics {
            let mut want: Vec<(usize, u8)> = model
                .iter()
                .filter(|((f, _), _)| matches(f, t))
                .map(|((_, k), v)| (*k, *v))
                .collect();
            want.sort_unstable();
            let mut got = Vec::new();
            tree.matches(t, &mut |k, v| got.push((*k, *v)));
            got.sort_unstable();
            prop_assert_eq!(got, want);
            prop_assert_eq!(retained.get(t), retained_model.get(t.as_str()));
        }
        for ((f, k), v) in std::mem::take(&mut model) {
            prop_assert_eq!(tree.remove(&f, &k), Some(v));
        }
        for (t, v) in std::mem::take(&mut retained_model) {
            prop_assert_eq!(retained.remove(&t), Some(v));
        }
        prop_assert!(tree.is_empty() && tree.root.is_vacant());
        prop_assert!(retained.is_empty() && retained.root.is_vacant());
    }
}
