//! Shared subscriptions, `$share/{ShareName}/{filter}` (MQTT 5.0 section 4.8.2, accepted
//! from 3.1.1 clients as Mosquitto and EMQX do).
//!
//! A group is one (ShareName, filter) pair at server scope; its members are sessions.
//! Each matching message goes to exactly one member, chosen round robin among:
//!
//! 1. online members whose window has room (fewer messages queued plus inflight than
//!    `max_inflight`; an in-process member's buffer below its high water mark), starting
//!    after the member chosen last;
//! 2. failing that, the online member with the least queued and inflight;
//! 3. failing that (no member is online), the next offline persistent member, whose
//!    session queues the message as for any subscription (QoS 0 only with
//!    `queue_qos0_offline`).
//!
//! So persistent members that go offline stay in the group (as in Mosquitto and EMQX) but
//! get nothing while another member is online. A member leaves by UNSUBSCRIBE of the full
//! `$share/...` filter or when its session ends (a clean session disconnecting, a
//! persistent one replaced or expired); what it holds for the group and has not had
//! acknowledged goes to another member (see [`SessionState::take_shared`]).
//!
//! Routing to groups is separate from the ordinary trie and skipped with one atomic load
//! when no group exists, so ordinary routing costs what it did.
//!
//! Lock order: the group trie, then a group's members, then a member's session state.
//! Nothing that holds a session's state lock takes a group's lock.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use super::{count_drops, options, MatchScratch, Router, Session, SubOpts};
use crate::broker::session::{Enqueued, Message, Queued, SessionState, ShareId};
use crate::codec::QoS;
use crate::topic::{self, SharedFilter};

/// One shared subscription group: its members and whose turn it is.
pub struct SharedGroup {
    id: ShareId,
    /// `$share/{ShareName}/{filter}` as first subscribed, for logs.
    name: ByteString,
    members: Mutex<Members>,
}

#[derive(Default)]
struct Members {
    list: Vec<Member>,
    /// Where the next round robin search starts.
    next: usize,
}

struct Member {
    qos: QoS,
    /// Retain As Published and the Subscription Identifier (router/options.rs).
    opts: SubOpts,
    session: Arc<Session>,
}

// Sessions hold queued copies that point back at their group: printing the members would
// recurse, so a group prints its name only.
impl fmt::Debug for SharedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SharedGroup {
    /// `$share/{ShareName}/{filter}`.
    pub(super) fn name(&self) -> &ByteString {
        &self.name
    }

    fn new(id: ShareId, name: ByteString) -> SharedGroup {
        SharedGroup {
            id,
            name,
            members: Mutex::new(Members::default()),
        }
    }

    /// Queues `msg` for one member (see the module docs for which). `None` when the group
    /// has no member left; otherwise the outcome and the member chosen.
    fn route(&self, msg: &Arc<Message>) -> Option<(Enqueued, Arc<Session>)> {
        let mut members = self.members.lock();
        let n = members.list.len();
        if n == 0 {
            return None;
        }
        let start = members.next % n;
        let mut with_room = None;
        let mut least_loaded: Option<(usize, usize)> = None;
        let mut offline = None;
        for k in 0..n {
            let i = (start + k) % n;
            let session = &members.list[i].session;
            let state = session.state.lock();
            if state.ended {
                continue;
            }
            if !state.online {
                offline = offline.or(Some(i));
                continue;
            }
            let load = state.queued_len() + state.inflight_len();
            let window = session
                .flow
                .as_ref()
                .map_or(state.limits().max_inflight, |flow| flow.high_water);
            if load < window {
                with_room = Some(i);
                break;
            }
            if least_loaded.is_none_or(|(_, least)| load < least) {
                least_loaded = Some((i, load));
            }
        }
        let i = with_room.or(least_loaded.map(|(i, _)| i)).or(offline)?;
        members.next = i + 1;
        let member = &members.list[i];
        let item = Queued {
            msg: match member.opts.id {
                None => msg.clone(),
                Some(id) => options::with_ids(msg, id, 0, &[]),
            },
            // [MQTT-4.8.2-3]: the QoS granted to this member.
            qos: msg.qos.min(member.qos),
            retain: member.opts.retain_as_published() && msg.retain,
            share: Some(self.id),
        };
        Some((member.session.deliver(item), member.session.clone()))
    }
}

/// The shared subscriptions among a session's filters.
pub(super) fn shared_filters(state: &SessionState) -> Vec<ByteString> {
    state
        .subscriptions
        .keys()
        .filter(|filter| filter.starts_with(topic::SHARE_PREFIX))
        .cloned()
        .collect()
}

impl Router {
    /// Makes `session` a member of the group `share` names (or updates its granted QoS),
    /// creating the group if needed. No retained messages are sent on a shared
    /// subscription (MQTT 5.0 section 4.8.2).
    pub(super) fn join_group(
        &self,
        session: &Arc<Session>,
        filter: &ByteString,
        share: SharedFilter<'_>,
        qos: QoS,
        opts: SubOpts,
    ) {
        {
            let mut state = session.state.lock();
            state.subscriptions.insert(filter.clone(), qos);
            state.set_sub_opts(filter, opts);
            state.mark_changed();
        }
        // The trie stays write-locked while the member is added, so a group that its last
        // member is leaving at the same time is never joined after it is dropped.
        let mut tree = self.shared.write();
        let name = ByteString::from(share.group);
        let group = match tree.get(share.filter, &name) {
            Some(group) => group.clone(),
            None => {
                let group = Arc::new(SharedGroup::new(self.new_share_id(), filter.clone()));
                self.groups_by_id.lock().insert(group.id, group.clone());
                tree.insert(share.filter, name, group.clone());
                // Cluster mode: the group's messages come through NATS (cluster/share.rs).
                if let Some(cluster) = self.cluster.get() {
                    cluster.add_share(filter);
                }
                group
            }
        };
        let mut members = group.members.lock();
        match members.list.iter_mut().find(|m| m.session.id == session.id) {
            // The same group again from the same session: still one membership.
            Some(member) => {
                member.qos = qos;
                member.opts = opts;
            }
            None => {
                members.list.push(Member {
                    qos,
                    opts,
                    session: session.clone(),
                });
                self.shared_members.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An id no live group has (ids are reused only after 2^32 groups).
    fn new_share_id(&self) -> ShareId {
        let groups = self.groups_by_id.lock();
        loop {
            let id = self.next_share_id.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = ShareId::new(id).filter(|id| !groups.contains_key(id)) {
                return id;
            }
        }
    }

    /// Removes `session` from the group `filter` names; the group goes with its last
    /// member. Returns the group if the session was a member.
    pub(super) fn leave_group(
        &self,
        session: &Arc<Session>,
        filter: &str,
    ) -> Option<Arc<SharedGroup>> {
        let share = topic::parse_shared(filter).ok().flatten()?;
        let mut tree = self.shared.write();
        let name = ByteString::from(share.group);
        let group = tree.get(share.filter, &name)?.clone();
        let mut members = group.members.lock();
        let i = members
            .list
            .iter()
            .position(|m| m.session.id == session.id)?;
        members.list.remove(i);
        self.shared_members.fetch_sub(1, Ordering::Relaxed);
        if members.list.is_empty() {
            tree.remove(share.filter, &name);
            self.groups_by_id.lock().remove(&group.id);
            if let Some(cluster) = self.cluster.get() {
                cluster.remove_share(&group.name);
            }
        }
        drop(members);
        Some(group)
    }

    /// UNSUBSCRIBE of a `$share/...` filter: leaves the group and hands what the session
    /// holds for it to another member.
    pub(super) fn unsubscribe_shared(&self, session: &Arc<Session>, filter: &ByteString) -> bool {
        if !session.state.lock().subscriptions.contains_key(filter) {
            return false;
        }
        let group = self.leave_group(session, filter);
        let taken = {
            let mut state = session.state.lock();
            state.subscriptions.remove(filter);
            state.set_sub_opts(filter, SubOpts::default());
            state.mark_changed();
            match &group {
                Some(group) => state.take_shared(|id| id == group.id),
                None => Vec::new(),
            }
        };
        self.hand_over(session, taken);
        true
    }

    /// Gives what a leaving member held for its groups to other members of the same
    /// groups. With no member left, the group and its messages are gone.
    pub(super) fn hand_over(&self, from: &Session, items: Vec<Queued>) {
        if items.is_empty() {
            return;
        }
        let total = items.len();
        let (mut handed, mut lost) = (0usize, 0u64);
        for item in items {
            let Some(id) = item.share else { continue };
            let group = self.groups_by_id.lock().get(&id).cloned();
            match group.and_then(|group| group.route(&item.msg)) {
                Some((outcome, session)) => {
                    handed += 1;
                    lost += count_drops(&session, outcome);
                }
                None => lost += 1,
            }
        }
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        tracing::info!(
            client_id = %from.client_id,
            total,
            handed_over = handed,
            dropped = lost,
            "shared subscription member left: its unacknowledged messages go to other members"
        );
    }

    /// Cluster mode: routes a message NATS gave this node for the group `filter`
    /// (`$share/GROUP/FILTER`, cluster/share.rs) to one of its local members. False
    /// when the group has no member here (any more): another node should have it.
    pub fn publish_to_group(
        &self,
        filter: &str,
        msg: Arc<Message>,
        scratch: &mut MatchScratch,
    ) -> bool {
        let Some(share) = topic::parse_shared(filter).ok().flatten() else {
            return false;
        };
        let group = self
            .shared
            .read()
            .get(share.filter, &ByteString::from(share.group))
            .cloned();
        let Some((outcome, session)) = group.and_then(|group| group.route(&msg)) else {
            return false;
        };
        let dropped = count_drops(&session, outcome);
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(flow) = &session.flow {
            if session.state.lock().queued_len() >= flow.high_water {
                scratch.blocked.push(session);
            }
        }
        true
    }

    /// Routes `msg` to one member of each matching group; returns the messages dropped
    /// and whether any group took it.
    pub(super) fn publish_shared(
        &self,
        msg: &Arc<Message>,
        scratch: &mut MatchScratch,
    ) -> (u64, bool) {
        {
            let tree = self.shared.read();
            tree.matches(&msg.topic, &mut |_, group| {
                scratch.groups.push(group.clone());
            });
        }
        let (mut dropped, mut matched) = (0, false);
        for group in scratch.groups.drain(..) {
            let Some((outcome, session)) = group.route(msg) else {
                continue;
            };
            matched = true;
            dropped += count_drops(&session, outcome);
            if let Some(flow) = &session.flow {
                if session.state.lock().queued_len() >= flow.high_water {
                    scratch.blocked.push(session);
                }
            }
        }
        (dropped, matched)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;

    use super::super::{Attach, ConnHandle};
    use super::*;
    use crate::broker::config::Config;
    use crate::broker::hooks::Hooks;
    use crate::broker::session::Outgoing;
    use crate::broker::store::{SessionStore, SqliteStore};

    fn router(max_inflight: usize) -> Router {
        let config = Config {
            max_inflight,
            ..Config::default()
        };
        Router::new(config, Hooks::default())
    }

    fn connect(router: &Router, id: &str, clean: bool) -> Arc<Session> {
        let handle = ConnHandle {
            conn_id: router.next_id(),
            takeover: Arc::default(),
        };
        match router.attach(&ByteString::from(id), clean, handle) {
            Attach::Attached { session, .. } => session,
            Attach::Busy(_) => panic!("{id} is connected"),
        }
    }

    fn publish(router: &Router, topic: &str, n: u32, qos: QoS, retain: bool) {
        let msg = Arc::new(Message {
            topic: ByteString::from(topic),
            payload: Bytes::from(n.to_be_bytes().to_vec()),
            qos,
            retain,
            publisher: ByteString::new(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        });
        router.publish(msg, &mut MatchScratch::default());
    }

    /// Takes what the session may be sent now (inflight QoS 1/2 stay unacknowledged).
    fn sent(session: &Session) -> Vec<u32> {
        let mut state = session.state.lock();
        let mut out = Vec::new();
        while let Some(Outgoing::Publish { item, .. }) = state.next_outgoing() {
            let bytes: [u8; 4] = item.msg.payload[..].try_into().unwrap();
            out.push(u32::from_be_bytes(bytes));
        }
        out
    }

    fn sub(router: &Router, s: &Arc<Session>, filter: &str, qos: QoS) {
        router.subscribe(s, &ByteString::from(filter), qos).unwrap();
    }

    #[test]
    fn round_robin_gives_each_message_to_one_member() {
        let router = router(32);
        let members: Vec<_> = (0..3)
            .map(|i| connect(&router, &format!("m{i}"), true))
            .collect();
        for m in &members {
            sub(&router, m, "$share/g/a/#", QoS::AtMostOnce);
        }
        let mut seen = HashMap::new();
        for n in 0..300 {
            publish(&router, "a/b", n, QoS::AtMostOnce, false);
            for (i, m) in members.iter().enumerate() {
                for got in sent(m) {
                    assert!(seen.insert(got, i).is_none(), "{got} delivered twice");
                }
            }
        }
        assert_eq!(seen.len(), 300);
        for i in 0..3 {
            assert_eq!(seen.values().filter(|&&m| m == i).count(), 100);
        }
        assert_eq!(router.subscription_count(), 3);
    }

    #[test]
    fn full_window_is_skipped_and_leaving_hands_over() {
        let router = router(4);
        let slow = connect(&router, "slow", true);
        let fast = connect(&router, "fast", true);
        sub(&router, &slow, "$share/g/t", QoS::AtLeastOnce);
        sub(&router, &fast, "$share/g/t", QoS::AtLeastOnce);
        let mut fast_got = Vec::new();
        for n in 0..40 {
            publish(&router, "t", n, QoS::AtLeastOnce, false);
            let _ = sent(&slow); // never acknowledged
            let mut state = fast.state.lock();
            while let Some(Outgoing::Publish { item, pkid, .. }) = state.next_outgoing() {
                fast_got.push(item.msg.payload.clone());
                state.on_puback(pkid.unwrap());
            }
        }
        // The slow member's window (4) filled, then it was skipped.
        assert_eq!(slow.state.lock().inflight_len(), 4);
        assert_eq!(slow.state.lock().queued_len(), 0);
        assert_eq!(fast_got.len(), 36);
        // Leaving: the 4 unacknowledged go to the other member.
        assert!(router.unsubscribe(&slow, &ByteString::from_static("$share/g/t")));
        assert_eq!(slow.state.lock().inflight_len(), 0);
        assert_eq!(sent(&fast).len(), 4);
        assert_eq!(router.dropped_messages(), 0);
    }

    #[test]
    fn clean_disconnect_hands_over_and_last_member_removes_group() {
        let router = router(2);
        let a = connect(&router, "a", true);
        let b = connect(&router, "b", true);
        sub(&router, &a, "$share/g/t", QoS::ExactlyOnce);
        sub(&router, &b, "$share/g/t", QoS::AtLeastOnce);
        // a, b, a, b, then a again: both windows (2) are full and a is first.
        for n in 0..5 {
            publish(&router, "t", n, QoS::ExactlyOnce, false);
        }
        assert_eq!(sent(&a), vec![0, 2]);
        // A QoS 2 delivery already sent stays with its member [MQTT-4.8.2-5]; the queued
        // one (4) goes to b, at the QoS granted to b [MQTT-4.8.2-3].
        router.discard(&a);
        let queued: Vec<(u32, QoS)> = {
            let state = b.state.lock();
            state
                .export()
                .into_iter()
                .map(|(q, _, _)| {
                    (
                        u32::from_be_bytes(q.msg.payload[..].try_into().unwrap()),
                        q.qos,
                    )
                })
                .collect()
        };
        assert_eq!(
            queued,
            vec![
                (1, QoS::AtLeastOnce),
                (3, QoS::AtLeastOnce),
                (4, QoS::AtLeastOnce)
            ]
        );
        router.discard(&b);
        assert!(router.shared.read().is_empty());
        assert_eq!(router.shared_members.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn offline_persistent_members_get_messages_only_when_no_member_is_online() {
        let router = router(32);
        let on = connect(&router, "on", true);
        let off = connect(&router, "off", false);
        sub(&router, &on, "$share/g/t", QoS::AtLeastOnce);
        sub(&router, &off, "$share/g/t", QoS::AtLeastOnce);
        off.state.lock().online = false;
        for n in 0..10 {
            publish(&router, "t", n, QoS::AtLeastOnce, false);
        }
        assert_eq!(on.state.lock().queued_len(), 10);
        assert_eq!(off.state.lock().queued_len(), 0);
        router.discard(&on);
        // Now nobody is online: the persistent member queues, and got the hand-over.
        publish(&router, "t", 10, QoS::AtLeastOnce, false);
        assert_eq!(off.state.lock().queued_len(), 11);
    }

    #[test]
    fn groups_shared_and_plain_subscriptions_each_get_a_copy_and_no_retained() {
        let router = router(32);
        publish(&router, "t", 99, QoS::AtMostOnce, true);
        let a = connect(&router, "a", true);
        let b = connect(&router, "b", true);
        sub(&router, &a, "$share/g1/t", QoS::AtMostOnce);
        sub(&router, &a, "t", QoS::AtMostOnce);
        sub(&router, &b, "$share/g2/t", QoS::AtMostOnce);
        // No retained message on a shared subscription; the plain one gets it.
        assert_eq!(sent(&a), vec![99]);
        assert_eq!(sent(&b), Vec::<u32>::new());
        publish(&router, "t", 1, QoS::AtMostOnce, false);
        assert_eq!(sent(&a), vec![1, 1]);
        assert_eq!(sent(&b), vec![1]);
    }

    #[test]
    fn bad_share_names_are_refused_with_the_rule() {
        let router = router(32);
        let a = connect(&router, "a", true);
        for (filter, rule) in [
            ("$share//t", "MQTT-4.8.2-1"),
            ("$share/g", "MQTT-4.8.2-2"),
            ("$share/g/", "MQTT-4.8.2-2"),
            ("$share/g+/t", "MQTT-4.8.2-2"),
            ("$share/g/t#", "MQTT-4.7.1-2"),
        ] {
            let err = router
                .subscribe(&a, &ByteString::from(filter), QoS::AtMostOnce)
                .unwrap_err();
            assert_eq!(err.rule(), rule, "{filter}");
            assert!(err.to_string().contains(rule));
        }
        assert!(a.state.lock().subscriptions.is_empty());
    }

    #[test]
    fn shared_subscriptions_survive_the_sqlite_store() {
        let path = std::env::temp_dir().join(format!("pyo3mq-shared-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        {
            let router = router(32);
            let p = connect(&router, "p", false);
            sub(&router, &p, "$share/g/a/+", QoS::AtLeastOnce);
            let store = SqliteStore::open(&path).unwrap();
            store.load().unwrap(); // a store is written only after it was read
            assert!(router.persist(&store));
        }
        let router = router(32);
        router.restore(SqliteStore::open(&path).unwrap().load().unwrap());
        let p = connect(&router, "p", false);
        assert_eq!(
            p.state.lock().subscriptions.get("$share/g/a/+"),
            Some(&QoS::AtLeastOnce)
        );
        publish(&router, "a/b", 7, QoS::AtLeastOnce, false);
        assert_eq!(sent(&p), vec![7]);
        let _ = std::fs::remove_file(&path);
    }
}
