//! Keepalive deadlines of parked connections, kept in one sorted list and checked by one
//! thread, instead of a tokio `Sleep` in every parked task.
//!
//! A `Sleep` is 112 bytes of timer entry in the parked task's future, for every parked
//! connection, all of them waiting on a deadline minutes away. Here a parked connection
//! costs one entry of a B-tree (its deadline, a tie-breaker and a weak reference to its
//! takeover signal: 32 bytes plus the tree's share), and its future holds no timer. When
//! a deadline passes, the sweep thread notifies the connection's takeover signal: the
//! parked task wakes, finds its entry gone ([`unwatch`] answers `false`) and resumes the
//! full connection, whose keepalive timer then fires at once (the deadline is past) and
//! closes it [MQTT-3.1.2-24]. A std thread rather than a tokio task: brokers in one
//! process each have their own runtime, and `Notify` may be notified from any thread.
//! The thread sleeps until the earliest deadline (woken early when an earlier one is
//! added), so a silent client is closed when its deadline passes, as with a timer.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::broker::parking;
use crate::broker::router::Takeover;

/// A deadline (nanoseconds since [`base`]: 8 bytes where an `Instant` takes 16, so a
/// B-tree node holds its 11 entries in 280 bytes instead of 368) and what tells entries
/// with the same deadline apart: the address of the connection's takeover signal, unique
/// while the entry's weak reference keeps that allocation from being reused.
type Key = (u64, usize);

/// What deadlines are counted from: the first one watched in this process.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` in nanoseconds since [`base`] (0 for anything before: due at once).
fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

struct Due {
    entries: BTreeMap<Key, Weak<Takeover>>,
    /// The process whose sweep thread runs (0: none yet). After a `fork` the child has
    /// no sweep thread, so it starts its own.
    pid: u32,
}

static DUE: Mutex<Due> = Mutex::new(Due {
    entries: BTreeMap::new(),
    pid: 0,
});
/// Wakes the sweep thread when a deadline earlier than all others is added.
static EARLIER: Condvar = Condvar::new();

fn due() -> MutexGuard<'static, Due> {
    // Nothing here panics while holding the lock; a poisoned list is still consistent.
    DUE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Watches a parked connection's keepalive deadline: when it passes, `takeover.kick` is
/// notified (and the entry removed).
pub(super) fn watch(deadline: tokio::time::Instant, takeover: &Arc<Takeover>) {
    let key = key(deadline, takeover);
    let mut due = due();
    let pid = std::process::id();
    if due.pid != pid {
        let started = std::thread::Builder::new()
            .name("pyo3mq-keepalive".into())
            .spawn(sweep);
        match started {
            Ok(_) => due.pid = pid,
            // The next park tries again; until then these deadlines wait in the list.
            Err(err) => tracing::error!("cannot start the keepalive sweep thread: {err}"),
        }
    }
    let earliest = due.entries.keys().next().is_none_or(|first| key < *first);
    due.entries.insert(key, Arc::downgrade(takeover));
    drop(due);
    if earliest {
        EARLIER.notify_one();
    }
}

/// Removes a parked connection's entry: `false` if its deadline had already passed (its
/// takeover signal was notified, or is being notified under the lock this waits for).
pub(super) fn unwatch(deadline: tokio::time::Instant, takeover: &Arc<Takeover>) -> bool {
    due().entries.remove(&key(deadline, takeover)).is_some()
}

/// Computed again when the connection resumes rather than kept in the parked future.
fn key(deadline: tokio::time::Instant, takeover: &Arc<Takeover>) -> Key {
    (nanos(deadline.into_std()), Arc::as_ptr(takeover) as usize)
}

/// The sweep thread: notifies every connection whose deadline has passed, then sleeps
/// until the next deadline or until an earlier one is added.
fn sweep() {
    let mut due = due();
    loop {
        let now = nanos(Instant::now());
        // Notified under the lock, so a connection that finds its entry gone knows its
        // signal has its permit. Connections parked without a task are woken after the
        // lock is let go: waking one resumes it here, and resuming looks at its entry.
        let mut woken = Vec::new();
        while let Some(entry) = due.entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            if let Some(takeover) = entry.remove().upgrade() {
                takeover.kick.notify_one();
                woken.push(takeover.parked.load(Ordering::SeqCst));
            }
        }
        if !woken.is_empty() {
            drop(due);
            for key in woken {
                parking::wake(key);
            }
            due = self::due();
            continue;
        }
        let next = due.entries.keys().next().map(|(at, _)| *at);
        due = match next {
            Some(at) => {
                let wait = Duration::from_nanos(at.saturating_sub(now));
                EARLIER
                    .wait_timeout(due, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => EARLIER.wait(due).unwrap_or_else(PoisonError::into_inner),
        };
    }
}
