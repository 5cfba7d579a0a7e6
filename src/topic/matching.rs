//! The reference definition of matching and the level-walking pieces the tries share.

/// Whether `filter` matches `topic`: the reference definition the tries must agree with.
///
/// `#` also matches the parent level (`sport/#` matches `sport`), `+` matches exactly one
/// level, which may be empty, and filters that begin with a wildcard never match topics
/// that begin with `$` [MQTT-4.7.2-1], so `#` subscribers do not see `$SYS` traffic.
/// Inputs are expected to be valid; see the `topic` module docs for what happens
/// otherwise.
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
pub(super) fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (s, None),
    }
}

/// Splits a filter into the path of levels that lead to its trie node and whether it
/// ends in a multi-level wildcard. `None` as the path means the root itself (filter `#`).
pub(super) fn split_filter(filter: &str) -> (Option<&str>, bool) {
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
pub(super) struct SmallStack<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> SmallStack<T, N> {
    pub(super) fn new() -> Self {
        SmallStack {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(super) fn push(&mut self, item: T) {
        if self.len < N {
            self.inline[self.len] = Some(item);
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    pub(super) fn pop(&mut self) -> Option<T> {
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
pub(super) const STACK_INLINE: usize = 32;
