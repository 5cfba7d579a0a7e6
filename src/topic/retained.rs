//! The retained-message trie: which retained messages a new subscription replays.

use std::collections::HashMap;
use std::fmt;

use super::matching::{split_level, SmallStack, STACK_INLINE};

/// One level of the retained trie. The topic is kept whole beside the value so a replay
/// can name it without rebuilding it from the path.
pub(super) struct RetNode<V> {
    children: HashMap<Box<str>, RetNode<V>>,
    value: Option<(Box<str>, V)>,
}

impl<V> RetNode<V> {
    fn new() -> Self {
        RetNode {
            children: HashMap::new(),
            value: None,
        }
    }

    #[cfg(test)]
    pub(super) fn is_vacant(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }
}

impl<V> Drop for RetNode<V> {
    /// Iterative for the same reason as the subscription trie's nodes.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut pending: Vec<RetNode<V>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// The last retained message of each topic, searchable by topic filter.
///
/// A SUBSCRIBE must replay every retained message its filter matches, and filters may
/// hold wildcards, so the store is a trie over topic levels rather than a plain map.
pub struct RetainedTree<V> {
    /// Visible to the rest of `topic` only so its tests can check that removal prunes.
    pub(super) root: RetNode<V>,
    len: usize,
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        RetainedTree {
            root: RetNode::new(),
            len: 0,
        }
    }
}

impl<V> fmt::Debug for RetainedTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedTree")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A pending step of a retained-trie walk.
enum RetFrame<'a, 'f, V> {
    /// Match the rest of the filter (`None`: nothing left) against this node.
    Walk(&'a RetNode<V>, Option<&'f str>),
    /// Report this node and everything below it (the filter reached `#`).
    All(&'a RetNode<V>),
}

// Written by hand because a derive would demand `V: Copy`, and frames only hold references.
impl<V> Clone for RetFrame<'_, '_, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for RetFrame<'_, '_, V> {}

impl<V> RetainedTree<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` as the retained message of `topic`, returning the one it replaces:
    /// only the newest retained message of a topic is kept.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node
                .children
                .entry(level.into())
                .or_insert_with(RetNode::new);
        }
        match &mut node.value {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            slot @ None => {
                *slot = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, v)| v)
    }

    /// Removes the retained message of `topic` (a zero-length retained PUBLISH) and frees
    /// the nodes that no longer lead to any message.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        // Pass 1, read-only: find the deepest node on the path that must survive.
        let mut keep = 0;
        let mut depth = 0;
        let mut node = &self.root;
        for level in topic.split('/') {
            if node.value.is_some() || node.children.len() > 1 {
                keep = depth;
            }
            node = node.children.get(level)?;
            depth += 1;
        }
        node.value.as_ref()?;
        if !node.children.is_empty() {
            keep = depth;
        }

        // Pass 2: detach the dead chain below the survivor, or clear the value in place.
        let mut levels = topic.split('/');
        let mut node = &mut self.root;
        for _ in 0..keep {
            node = node.children.get_mut(levels.next()?)?;
        }
        let removed = match levels.next() {
            None => node.value.take(),
            Some(level) => {
                let mut chain = node.children.remove(level)?;
                let mut last = &mut chain;
                for level in levels {
                    last = last.children.get_mut(level)?;
                }
                last.value.take()
            }
        };
        removed.map(|(_, v)| {
            self.len -= 1;
            v
        })
    }

    /// Calls `out` with every stored topic and value, `$`-topics included (for snapshots).
    pub fn for_each<'a>(&'a self, out: &mut impl FnMut(&'a str, &'a V)) {
        let mut pending = vec![&self.root];
        while let Some(node) = pending.pop() {
            if let Some((topic, value)) = &node.value {
                out(topic, value);
            }
            pending.extend(node.children.values());
        }
    }

    /// Calls `out` with the topic and value of every retained message `filter` matches,
    /// following the same rules as [`matches`](fn@super::matches): `#` includes its parent
    /// level, and first-level wildcards skip `$` topics [MQTT-4.7.2-1].
    pub fn matching<'a>(&'a self, filter: &str, out: &mut impl FnMut(&'a str, &'a V)) {
        if self.len == 0 {
            return;
        }
        let mut stack: SmallStack<RetFrame<'a, '_, V>, STACK_INLINE> = SmallStack::new();
        stack.push(RetFrame::Walk(&self.root, Some(filter)));
        while let Some(frame) = stack.pop() {
            let (node, rest) = match frame {
                RetFrame::All(node) => {
                    if let Some((topic, value)) = &node.value {
                        out(topic, value);
                    }
                    node.children
                        .values()
                        .for_each(|c| stack.push(RetFrame::All(c)));
                    continue;
                }
                RetFrame::Walk(node, rest) => (node, rest),
            };
            let Some(rest) = rest else {
                if let Some((topic, value)) = &node.value {
                    out(topic, value);
                }
                continue;
            };
            let at_root = std::ptr::eq(node, &self.root);
            // At the root the child keys are the topics' first levels, which is where the
            // `$` rule looks.
            let eligible = |key: &str| !(at_root && key.starts_with('$'));
            match split_level(rest) {
                ("#", None) => {
                    // The parent level matches too (`sport/#` replays `sport`); the root
                    // never holds a value, as every topic has at least one level.
                    if let Some((topic, value)) = &node.value {
                        out(topic, value);
                    }
                    node.children
                        .iter()
                        .filter(|(key, _)| eligible(key))
                        .for_each(|(_, c)| stack.push(RetFrame::All(c)));
                }
                ("+", tail) => node
                    .children
                    .iter()
                    .filter(|(key, _)| eligible(key))
                    .for_each(|(_, c)| stack.push(RetFrame::Walk(c, tail))),
                (level, tail) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push(RetFrame::Walk(child, tail));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::tests::ret_hits;

    fn count_ret_nodes<V>(node: &RetNode<V>) -> usize {
        1 + node.children.values().map(count_ret_nodes).sum::<usize>()
    }

    #[test]
    fn retained_insert_get_remove() {
        let mut store = RetainedTree::new();
        assert!(store.is_empty());
        assert_eq!(store.insert("a/b", 1), None);
        assert_eq!(store.insert("a", 2), None);
        assert_eq!(store.insert("a/b", 3), Some(1));
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("a/b"), Some(&3));
        assert_eq!(store.get("a"), Some(&2));
        assert_eq!(store.get("a/"), None);
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("+"), None);
        assert_eq!(store.remove("a/b/c"), None);
        assert_eq!(store.remove("a/"), None);
        assert_eq!(store.remove("a"), Some(2));
        assert_eq!(store.remove("a"), None);
        assert_eq!(store.len(), 1);
        assert_eq!(ret_hits(&store, "#"), vec!["a/b"]);
        assert_eq!(store.remove("a/b"), Some(3));
        assert!(store.is_empty());
        assert!(store.root.is_vacant());
    }

    #[test]
    fn retained_matching_reports_topics() {
        let mut store = RetainedTree::new();
        for t in [
            "sport",
            "sport/",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/football",
            "/finance",
            "finance",
            "$SYS/broker/uptime",
            "$SYS",
        ] {
            store.insert(t, t.len());
        }
        let mut seen = Vec::new();
        store.matching("sport/tennis/+", &mut |t, v| seen.push((t, *v)));
        assert_eq!(seen, vec![("sport/tennis/player1", 20)]);
        assert_eq!(
            ret_hits(&store, "sport/#"),
            vec![
                "sport",
                "sport/",
                "sport/football",
                "sport/tennis",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
            ]
        );
        assert_eq!(
            ret_hits(&store, "sport/+"),
            vec!["sport/", "sport/football", "sport/tennis"]
        );
        assert_eq!(ret_hits(&store, "+"), vec!["finance", "sport"]);
        assert_eq!(
            ret_hits(&store, "+/+"),
            vec!["/finance", "sport/", "sport/football", "sport/tennis"]
        );
        assert_eq!(ret_hits(&store, "/+"), vec!["/finance"]);
        assert_eq!(ret_hits(&store, "#").len(), 8);
        assert!(!ret_hits(&store, "#").iter().any(|t| t.starts_with('$')));
        assert_eq!(
            ret_hits(&store, "$SYS/#"),
            vec!["$SYS", "$SYS/broker/uptime"]
        );
        assert_eq!(
            ret_hits(&store, "$SYS/+/uptime"),
            vec!["$SYS/broker/uptime"]
        );
        assert_eq!(ret_hits(&store, "+/broker/uptime"), Vec::<String>::new());
        assert_eq!(ret_hits(&store, "FINANCE"), Vec::<String>::new());
    }

    #[test]
    fn retained_remove_prunes() {
        let mut store = RetainedTree::new();
        store.insert("a/b/c", ());
        store.insert("a/b/d/e", ());
        store.insert("a", ());
        assert_eq!(count_ret_nodes(&store.root), 6);
        store.remove("a/b/d/e");
        assert_eq!(count_ret_nodes(&store.root), 4);
        store.remove("a");
        assert_eq!(count_ret_nodes(&store.root), 4); // still leads to a/b/c
        store.remove("a/b/c");
        assert_eq!(count_ret_nodes(&store.root), 1);
        for i in 0..1000 {
            let t = format!("dev/{i}/temp");
            store.insert(&t, ());
            store.remove(&t);
        }
        assert!(store.root.is_vacant());
    }
}
