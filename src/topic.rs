//! Topic names, topic filters and the two tries the broker routes with (MQTT 3.1.1 section 4.7).
//!
//! Three parts:
//!
//! * [`validate_topic_name`] and [`validate_topic_filter`] enforce the section 4.7 format
//!   rules, so the broker can refuse a PUBLISH (close the connection) or a SUBSCRIBE
//!   filter (SUBACK `0x80`) before the filter goes anywhere near a trie.
//! * [`matches`] is the one-pair reference definition of matching. The tries below must
//!   agree with it exactly, and the property tests at the bottom of this file check that.
//! * [`SubscriptionTree`] answers "who is subscribed to this topic?" for every PUBLISH, and
//!   [`RetainedTree`] answers "which retained messages does this new filter replay?".
//!
//! Levels are the pieces between `/` separators and are compared as raw bytes: MQTT
//! forbids normalisation [MQTT-4.7.3-4], so `ACCOUNTS` and `Accounts` are different levels,
//! and `/finance` has two levels, an empty one and `finance`.
//!
//! # Filters that are not valid
//!
//! Matching never panics, but it is only meaningful for inputs that passed validation.
//! To keep the tries and [`matches`] in agreement even then, a level is a wildcard only
//! when it is exactly `+`, or exactly `#` *and* the last level; anything else (`a+`,
//! `tennis#`, the `#` of `a/#/b`) is compared literally. Valid topic names contain no `+`
//! or `#`, so such a level matches nothing a client can publish to.
//!
//! # Depth
//!
//! A 65,535-byte filter such as `+/+/+/...` has 32,768 levels, and clients choose their
//! filters. Everything here therefore walks iteratively (including dropping nodes),
//! so a hostile SUBSCRIBE cannot overflow a runtime thread's stack.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

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

/// Checks shared by names and filters: the section 4.7.3 rules.
fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
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
    validate_common(name)?;
    if name.bytes().any(|b| b == b'+' || b == b'#') {
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

/// Whether `filter` matches `topic`: the reference definition the tries must agree with.
///
/// `#` also matches the parent level (`sport/#` matches `sport`), `+` matches exactly one
/// level, which may be empty, and filters that begin with a wildcard never match topics
/// that begin with `$` [MQTT-4.7.2-1], so `#` subscribers do not see `$SYS` traffic.
/// Inputs are expected to be valid; see the module docs for what happens otherwise.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/').peekable();
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) if filter_levels.peek().is_none() => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits off the first level of a non-empty remainder of a topic or filter. The tail is
/// `None` when this was the last level, which is different from `Some("")`: `a` has one
/// level, `a/` has two.
#[inline]
fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (s, None),
    }
}

/// Splits a filter into the path of levels that lead to its trie node and whether it
/// ends in a multi-level wildcard. `None` as the path means the root itself (filter `#`).
fn split_filter(filter: &str) -> (Option<&str>, bool) {
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

/// A LIFO stack that keeps its first `N` entries inline, so a trie walk allocates nothing
/// for any ordinary topic depth but still copes with the 32,768-level worst case.
struct SmallStack<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> SmallStack<T, N> {
    fn new() -> Self {
        SmallStack {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, item: T) {
        if self.len < N {
            self.inline[self.len] = Some(item);
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
        // The spill only fills once the inline part is full, so it holds the newest items.
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.inline[self.len].take()
    }
}

/// Inline depth of the walk stacks; a walk keeps at most about one entry per level.
const STACK_INLINE: usize = 32;

// ---------------------------------------------------------------------------------------
// Subscription trie
// ---------------------------------------------------------------------------------------

/// One level of the subscription trie. Wildcard levels get their own slots so a lookup
/// does one hash probe for the literal level plus two pointer checks, instead of
/// probing the map for `+` and `#` on every level.
struct SubNode<K, V> {
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
    fn is_vacant(&self) -> bool {
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
    root: SubNode<K, V>,
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
    /// [`validate_topic_filter`].
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
    pub fn matches<'a>(&'a self, topic: &str, out: &mut impl FnMut(&'a K, &'a V)) {
        if self.len == 0 {
            return;
        }
        // Wildcards at the first level never match `$` topics [MQTT-4.7.2-1].
        let dollar = topic.starts_with('$');
        let root = &self.root;
        if !dollar {
            root.hash.iter().for_each(|(k, v)| out(k, v));
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
            node.hash.iter().for_each(|(k, v)| out(k, v));
            match rest {
                None => node.exact.iter().for_each(|(k, v)| out(k, v)),
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
    }
}

// ---------------------------------------------------------------------------------------
// Retained-message trie
// ---------------------------------------------------------------------------------------

/// One level of the retained trie. The topic is kept whole beside the value so a replay
/// can name it without rebuilding it from the path.
struct RetNode<V> {
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
    fn is_vacant(&self) -> bool {
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
    root: RetNode<V>,
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
    /// following the same rules as [`matches`]: `#` includes its parent level, and
    /// first-level wildcards skip `$` topics [MQTT-4.7.2-1].
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
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    // ---- helpers -------------------------------------------------------------------

    /// Keys the subscription trie reports for `topic`, sorted, duplicates kept.
    fn sub_hits<V>(tree: &SubscriptionTree<usize, V>, topic: &str) -> Vec<usize> {
        let mut hits = Vec::new();
        tree.matches(topic, &mut |k, _| hits.push(*k));
        hits.sort_unstable();
        hits
    }

    /// Topics the retained trie reports for `filter`, sorted, duplicates kept.
    fn ret_hits<V>(tree: &RetainedTree<V>, filter: &str) -> Vec<String> {
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

    fn count_sub_nodes<K, V>(node: &SubNode<K, V>) -> usize {
        1 + node.literal.values().map(count_sub_nodes).sum::<usize>()
            + node.plus.as_deref().map_or(0, count_sub_nodes)
    }

    fn count_ret_nodes<V>(node: &RetNode<V>) -> usize {
        1 + node.children.values().map(count_ret_nodes).sum::<usize>()
    }

    // ---- validation ----------------------------------------------------------------

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

    // ---- subscription trie ----------------------------------------------------------

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
        tree.matches("sport/tennis/player1", &mut |k, v| seen.push((*k, *v)));
        seen.sort_unstable();
        assert_eq!(seen, vec![(1, 'a'), (1, 'b'), (1, 'c'), (1, 'd'), (2, 'e')]);
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

    // ---- retained trie --------------------------------------------------------------

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
}
