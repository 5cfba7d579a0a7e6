//! The subscription trie: who is subscribed to a published topic.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

use super::matching::{split_filter, split_level, SmallStack, STACK_INLINE};

/// One level of the subscription trie. Wildcard levels get their own slots so a lookup
/// does one hash probe for the literal level plus two pointer checks, instead of
/// probing the map for `+` and `#` on every level.
pub(super) struct SubNode<K, V> {
    literal: HashMap<Box<str>, SubNode<K, V>>,
    plus: Option<Box<SubNode<K, V>>>,
    /// Subscribers whose filter is this node's path followed by `/#`.
    hash: HashMap<K, V>,
    /// Subscribers whose filter ends exactly at this node.
    exact: HashMap<K, V>,
}

impl<K, V> SubNode<K, V> {
    fn new() -> Self {
        SubNode {
            literal: HashMap::new(),
            plus: None,
            hash: HashMap::new(),
            exact: HashMap::new(),
        }
    }

    fn child(&self, level: &str) -> Option<&SubNode<K, V>> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.literal.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut SubNode<K, V>> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.literal.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut SubNode<K, V> {
        if level == "+" {
            self.plus.get_or_insert_with(|| Box::new(SubNode::new()))
        } else {
            self.literal
                .entry(level.into())
                .or_insert_with(SubNode::new)
        }
    }

    fn take_child(&mut self, level: &str) -> Option<SubNode<K, V>> {
        if level == "+" {
            self.plus.take().map(|b| *b)
        } else {
            self.literal.remove(level)
        }
    }

    fn child_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some())
    }

    fn subscriber_count(&self) -> usize {
        self.hash.len() + self.exact.len()
    }

    fn terminal(&self, hash: bool) -> &HashMap<K, V> {
        if hash {
            &self.hash
        } else {
            &self.exact
        }
    }

    fn terminal_mut(&mut self, hash: bool) -> &mut HashMap<K, V> {
        if hash {
            &mut self.hash
        } else {
            &mut self.exact
        }
    }

    #[cfg(test)]
    pub(super) fn is_vacant(&self) -> bool {
        self.child_count() == 0 && self.subscriber_count() == 0
    }
}

impl<K, V> Drop for SubNode<K, V> {
    /// Dropping a long chain recursively would overflow the stack (see the module docs),
    /// so children are detached and dropped from a heap worklist instead.
    fn drop(&mut self) {
        if self.child_count() == 0 {
            return;
        }
        let mut pending: Vec<SubNode<K, V>> = self.literal.drain().map(|(_, n)| n).collect();
        pending.extend(self.plus.take().map(|b| *b));
        while let Some(mut node) = pending.pop() {
            pending.extend(node.literal.drain().map(|(_, n)| n));
            pending.extend(node.plus.take().map(|b| *b));
        }
    }
}

/// Subscriptions indexed by filter, for finding every subscriber of a published topic.
///
/// `K` identifies the subscriber (the broker's session id) and `V` is whatever the broker
/// keeps per subscription (granted QoS, a delivery handle). A key holds at most one
/// subscription per filter, as a SUBSCRIBE repeating a filter replaces the old one
/// [MQTT-3.8.4-3]; the same key may still be subscribed through several overlapping
/// filters, and lookups then report it once per filter.
pub struct SubscriptionTree<K, V> {
    /// Visible to the rest of `topic` only so its tests can check that removal prunes.
    pub(super) root: SubNode<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            root: SubNode::new(),
            len: 0,
        }
    }
}

impl<K: fmt::Debug, V> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `key` to `filter`, returning the value it replaces if `key` was already
    /// subscribed to this exact filter. The filter should have passed
    /// [`validate_topic_filter`](super::validate_topic_filter).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let (path, hash) = split_filter(filter);
        let mut node = &mut self.root;
        if let Some(path) = path {
            for level in path.split('/') {
                node = node.child_or_insert(level);
            }
        }
        let old = node.terminal_mut(hash).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value stored for `key` on exactly this filter (no wildcard matching).
    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let (path, hash) = split_filter(filter);
        let mut node = &self.root;
        if let Some(path) = path {
            for level in path.split('/') {
                node = node.child(level)?;
            }
        }
        node.terminal(hash).get(key)
    }

    /// Unsubscribes `key` from exactly this filter and frees the nodes that no longer lead
    /// to any subscription, so a long-running broker's trie tracks its live subscriptions
    /// rather than every filter ever seen.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let (path, hash) = split_filter(filter);

        // Pass 1, read-only: is the subscription there, and where does the chain of nodes
        // that exist only for it begin? `keep` counts the path levels down to the deepest
        // node that must survive; the root always does.
        let mut keep = 0;
        let mut depth = 0;
        let mut node = &self.root;
        if let Some(path) = path {
            for level in path.split('/') {
                if node.subscriber_count() > 0 || node.child_count() > 1 {
                    keep = depth;
                }
                node = node.child(level)?;
                depth += 1;
            }
        }
        if !node.terminal(hash).contains_key(key) {
            return None;
        }
        if node.subscriber_count() > 1 || node.child_count() > 0 {
            keep = depth;
        }

        // Pass 2: walk to the surviving node, then either remove the subscription there or
        // detach the whole dead chain below it and take the value out of the detached part.
        let mut levels = path.into_iter().flat_map(|p| p.split('/'));
        let mut node = &mut self.root;
        for _ in 0..keep {
            node = node.child_mut(levels.next()?)?;
        }
        let removed = match levels.next() {
            None => node.terminal_mut(hash).remove(key),
            Some(level) => {
                let mut chain = node.take_child(level)?;
                let mut last = &mut chain;
                for level in levels {
                    last = last.child_mut(level)?;
                }
                last.terminal_mut(hash).remove(key)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `out` for every subscription whose filter matches the topic name `topic`.
    ///
    /// This runs for every PUBLISH, so it walks only the trie branches the topic can reach
    /// and allocates nothing unless the trie is deeper than the inline stack. A key is
    /// reported once per matching filter; collapsing those is the caller's policy.
    ///
    /// Returns how many filters' subscriber sets reported keys. Each set holds a key at
    /// most once, so with one (every subscriber on the same filter, as in a plain fan-out)
    /// no key was reported twice and the caller has nothing to collapse.
    pub fn matches<'a>(&'a self, topic: &str, out: &mut impl FnMut(&'a K, &'a V)) -> usize {
        if self.len == 0 {
            return 0;
        }
        let mut sets = 0;
        let mut report = |set: &'a HashMap<K, V>| {
            if !set.is_empty() {
                sets += 1;
                set.iter().for_each(|(k, v)| out(k, v));
            }
        };
        // Wildcards at the first level never match `$` topics [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        let root = &self.root;
        if !dollar {
            report(&root.hash);
        }
        let mut stack: SmallStack<(&'a SubNode<K, V>, Option<&str>), STACK_INLINE> =
            SmallStack::new();
        let (level, tail) = split_level(topic);
        if let Some(child) = root.literal.get(level) {
            stack.push((child, tail));
        }
        if !dollar {
            if let Some(child) = root.plus.as_deref() {
                stack.push((child, tail));
            }
        }
        while let Some((node, rest)) = stack.pop() {
            // `#` here matches whatever is left, including nothing: `sport/#` matches `sport`.
            report(&node.hash);
            match rest {
                None => report(&node.exact),
                Some(rest) => {
                    let (level, tail) = split_level(rest);
                    if let Some(child) = node.literal.get(level) {
                        stack.push((child, tail));
                    }
                    if let Some(child) = node.plus.as_deref() {
                        stack.push((child, tail));
                    }
                }
            }
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use crate::topic::tests::sub_hits;

    fn count_sub_nodes<K, V>(node: &SubNode<K, V>) -> usize {
        1 + node.literal.values().map(count_sub_nodes).sum::<usize>()
            + node.plus.as_deref().map_or(0, count_sub_nodes)
    }

    #[test]
    fn subscription_insert_replace_remove() {
        let mut tree: SubscriptionTree<u64, u8> = SubscriptionTree::default();
        assert!(tree.is_empty());
        assert_eq!(tree.insert("a/b", 1, 0), None);
        assert_eq!(tree.insert("a/b", 2, 1), None);
        assert_eq!(tree.len(), 2);
        // Same key and filter: the subscription is replaced, not added.
        assert_eq!(tree.insert("a/b", 1, 2), Some(0));
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.get("a/b", &1), Some(&2));
        assert_eq!(tree.get("a/+", &1), None);
        assert_eq!(tree.get("a", &1), None);

        // Misses leave everything alone.
        assert_eq!(tree.remove("a/b", &3), None);
        assert_eq!(tree.remove("a", &1), None);
        assert_eq!(tree.remove("a/b/c", &1), None);
        assert_eq!(tree.remove("a/#", &1), None);
        assert_eq!(tree.remove("a/+", &1), None);
        assert_eq!(tree.len(), 2);

        assert_eq!(tree.remove("a/b", &1), Some(2));
        assert_eq!(tree.remove("a/b", &1), None);
        assert_eq!(tree.len(), 1);
        let mut seen = Vec::new();
        tree.matches("a/b", &mut |k, v| seen.push((*k, *v)));
        assert_eq!(seen, vec![(2, 1)]);
        assert_eq!(tree.remove("a/b", &2), Some(1));
        assert!(tree.is_empty());
        assert!(tree.root.is_vacant());
    }

    #[test]
    fn subscription_wildcard_slots_are_distinct() {
        // `+`, `#` and a literal level must not be confused with each other.
        let mut tree = SubscriptionTree::new();
        tree.insert("a/+", 1usize, ());
        tree.insert("a/#", 2, ());
        tree.insert("a", 3, ());
        tree.insert("#", 4, ());
        tree.insert("+", 5, ());
        assert_eq!(tree.len(), 5);
        assert_eq!(sub_hits(&tree, "a"), vec![2, 3, 4, 5]);
        assert_eq!(sub_hits(&tree, "a/x"), vec![1, 2, 4]);
        assert_eq!(sub_hits(&tree, "a/x/y"), vec![2, 4]);
        assert_eq!(sub_hits(&tree, "b"), vec![4, 5]);
        assert_eq!(sub_hits(&tree, "$a"), Vec::<usize>::new());
        assert_eq!(tree.remove("a/+", &2), None);
        assert_eq!(tree.remove("a/#", &1), None);
        assert_eq!(tree.remove("#", &5), None);
        assert_eq!(tree.len(), 5);
    }

    #[test]
    fn subscription_overlapping_filters_report_key_each_time() {
        let mut tree = SubscriptionTree::new();
        tree.insert("sport/#", 1usize, 'a');
        tree.insert("sport/tennis/+", 1, 'b');
        tree.insert("sport/tennis/player1", 1, 'c');
        tree.insert("#", 1, 'd');
        tree.insert("sport/tennis/player1", 2, 'e');
        let mut seen = Vec::new();
        // Four filters' sets: `#`, `sport/#`, `sport/tennis/+`, `sport/tennis/player1`.
        let sets = tree.matches("sport/tennis/player1", &mut |k, v| seen.push((*k, *v)));
        assert_eq!(sets, 4);
        seen.sort_unstable();
        assert_eq!(seen, vec![(1, 'a'), (1, 'b'), (1, 'c'), (1, 'd'), (2, 'e')]);
    }

    #[test]
    fn subscription_matches_counts_the_filters_that_reported() {
        // What lets the router skip collapsing duplicates: keys from one filter's set
        // are distinct, so only a count above one can mean a key came twice.
        let mut tree = SubscriptionTree::new();
        for key in 0..20usize {
            tree.insert("test", key, ());
        }
        let mut seen = Vec::new();
        assert_eq!(tree.matches("test", &mut |k, _| seen.push(*k)), 1);
        assert_eq!(seen.len(), 20);
        assert_eq!(tree.matches("other", &mut |_, _| {}), 0);
        // An emptied filter (its node kept for a wildcard below it) reports nothing.
        tree.insert("test/#", 0, ());
        assert_eq!(tree.matches("test", &mut |_, _| {}), 2);
        for key in 0..20usize {
            tree.remove("test", &key);
        }
        assert_eq!(tree.matches("test", &mut |_, _| {}), 1);
    }

    #[test]
    fn subscription_dollar_rule() {
        let mut tree = SubscriptionTree::new();
        tree.insert("#", 1usize, ());
        tree.insert("+/monitor/Clients", 2, ());
        tree.insert("$SYS/#", 3, ());
        tree.insert("$SYS/monitor/+", 4, ());
        tree.insert("+/#", 5, ());
        assert_eq!(sub_hits(&tree, "$SYS/monitor/Clients"), vec![3, 4]);
        assert_eq!(sub_hits(&tree, "SYS/monitor/Clients"), vec![1, 2, 5]);
        assert_eq!(sub_hits(&tree, "$SYS"), vec![3]);
    }

    #[test]
    fn subscription_remove_prunes() {
        let mut tree = SubscriptionTree::new();
        let filters = [
            "a/b/c/d",
            "a/b",
            "a/+/c",
            "a/#",
            "+/+/+",
            "#",
            "/",
            "a/b/c/d/e/f/g/#",
        ];
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, i, ());
            tree.insert(f, i + 100, ());
        }
        assert_eq!(tree.len(), 2 * filters.len());
        // Remove in an order unrelated to insertion, checking matching stays right.
        for (step, i) in [3, 0, 6, 1, 7, 5, 2, 4].into_iter().enumerate() {
            for key in [i, i + 100] {
                assert_eq!(tree.remove(filters[i], &key), Some(()));
            }
            let live: Vec<usize> = [3, 0, 6, 1, 7, 5, 2, 4][step + 1..].to_vec();
            for topic in ["a/b/c/d", "a/b", "a/x/c", "/", "a/b/c/d/e/f/g", "q"] {
                let mut want: Vec<usize> = live
                    .iter()
                    .filter(|&&j| matches(filters[j], topic))
                    .flat_map(|&j| [j, j + 100])
                    .collect();
                want.sort_unstable();
                assert_eq!(sub_hits(&tree, topic), want, "{topic:?} after step {step}");
            }
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_vacant(), "every node is pruned");
    }

    #[test]
    fn subscription_prune_keeps_shared_prefixes() {
        let mut tree = SubscriptionTree::new();
        tree.insert("a/b/c", 1usize, ());
        tree.insert("a/b/d/e", 2, ());
        assert_eq!(count_sub_nodes(&tree.root), 6); // root a b c d e
        tree.remove("a/b/d/e", &2);
        assert_eq!(count_sub_nodes(&tree.root), 4); // root a b c
        assert_eq!(sub_hits(&tree, "a/b/c"), vec![1]);
        tree.insert("a/b/+/#", 3, ());
        assert_eq!(count_sub_nodes(&tree.root), 5);
        tree.remove("a/b/c", &1);
        assert_eq!(count_sub_nodes(&tree.root), 4); // root a b +
        assert_eq!(sub_hits(&tree, "a/b/x/y"), vec![3]);
        tree.remove("a/b/+/#", &3);
        assert_eq!(count_sub_nodes(&tree.root), 1);
    }

    #[test]
    fn subscription_churn_does_not_grow() {
        let mut tree = SubscriptionTree::new();
        tree.insert("keep/me", 0usize, ());
        let base = count_sub_nodes(&tree.root);
        for i in 0..1000 {
            let filter = format!("client/{i}/+/status/#");
            tree.insert(&filter, i, ());
            assert_eq!(tree.remove(&filter, &i), Some(()));
        }
        assert_eq!(count_sub_nodes(&tree.root), base);
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn subscription_invalid_filters_stay_consistent() {
        // Not valid input, but the trie must still agree with `matches` and not merge
        // `a/#/b` with `a/#`.
        let mut tree = SubscriptionTree::new();
        tree.insert("a/#/b", 1usize, ());
        tree.insert("a/#", 2, ());
        tree.insert("a+", 3, ());
        assert_eq!(tree.len(), 3);
        assert_eq!(sub_hits(&tree, "a/x/b"), vec![2]);
        assert_eq!(sub_hits(&tree, "a/#/b"), vec![1, 2]);
        assert_eq!(sub_hits(&tree, "a+"), vec![3]);
        assert_eq!(sub_hits(&tree, "ab"), Vec::<usize>::new());
        assert_eq!(tree.remove("a/#", &1), None);
        assert_eq!(tree.remove("a/#/b", &1), Some(()));
    }
}
