//! Checkpoints of the persistent sessions a node holds, connected or not: in each
//! session's record, a [`Cut`] from which the node that takes the session over if this
//! one dies replays the stream (handover.rs), so that the QoS 1/2 messages the client
//! had not taken when the node died come again.
//!
//! "Taken": acknowledged by PUBACK (QoS 1) or PUBREC (QoS 2). From its PUBREC on, a
//! QoS 2 message is the client's (it may have handed it on already, MQTT's Method A
//! or B): sending it again would make it a new message for the client, so the rest of
//! that flow (the PUBREL) is resumed from the bucket of QoS 2 packet ids (qos2.rs),
//! never by sending the message again.
//!
//! Every message a node routes carries its [`crate::broker::session::StreamMark`]: its stream sequence if
//! another node published it, its origin sequence if this node's client did (routed
//! here when published, skipped in the stream). Every `cluster_heartbeat`, with the
//! stream reader paused (so no session is half taken in), the node looks at what each
//! persistent session has not taken (its queue, and its deliveries awaiting PUBACK or
//! PUBREC: [`crate::broker::session::SessionState::oldest_untaken`]) and makes its cut:
//! other nodes' messages up to the oldest not taken were taken (the cut's floor; or
//! everything the reader routed, when none is owed), and this node's own up to the
//! oldest not taken too (or all it routed). Its own messages may lie anywhere in the
//! stream after where it stood when it numbered them, so the cut's start goes back to
//! there ([`Ticks`]), and the replay tells the two kinds apart.
//!
//! Bounded cost: the session's record is rewritten (compare-and-set on its revision,
//! as every write of a record) only when its cut moved and messages reached the
//! session or were taken since the last write (or, for an idle session, once a
//! minute, so a replay never reads far): one KV write per busy session per
//! heartbeat, whatever its number of messages, up to [`WRITES_AT_ONCE`] at a time.
//!
//! A record whose offline client's will waits out its delay is left alone: the node
//! holding that will publishes it only if the record did not change meanwhile
//! (liveness.rs), and nothing is taken while the client is away.
//!
//! Not covered: messages a live handover, or the node's `session_store` at a restart,
//! brought to a session carry no mark (their place in the stream did not travel with
//! them), so the checkpoint does not wait for them.
//!
//! What comes again, then: a QoS 1 message taken after the last checkpoint (within
//! a heartbeat before the crash) comes again, with a new packet id and DUP 0 (a new
//! PUBLISH for the new node's session, which never sent it; at least once). So does
//! a QoS 2 message whose PUBLISH the client had not acknowledged with PUBREC: a
//! client has not taken it yet then. A QoS 2 message the client acknowledged with
//! PUBREC after the last checkpoint is left out of the replay if its flow is still
//! in the bucket of packet ids (its PUBREL not yet answered): see qos2.rs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytestring::ByteString;
use futures_util::future::join_all;
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::debug;

use super::cut::Cut;
use super::sessions::{bounded, key_of, Record};
use super::Cluster;
use crate::broker::router::{Router, Session};
use crate::broker::session::{StreamMark, Untaken};

/// Records written at once.
const WRITES_AT_ONCE: usize = 64;
/// Heartbeats an idle session's checkpoint may stay behind.
const IDLE_REFRESH: u32 = 60;
/// Heartbeats whose origin sequence and stream position are remembered (an hour at
/// the default heartbeat).
const TICKS: usize = 4096;
/// Completed QoS 2 deliveries waiting for their checkpoints, at most.
const COMPLETED_MAX: usize = 65_536;
/// Looks at the two counters of own messages before one checkpoint gives up.
const SETTLE_TRIES: usize = 64;

/// Where this node stood at each heartbeat: its next origin sequence, and a stream
/// sequence below every message it numbered from there on (they reached JetStream
/// after), for a cut's start.
#[derive(Debug, Default)]
pub(super) struct Ticks {
    marks: Mutex<VecDeque<(u64, u64)>>,
    /// The latest origin sequence below which every own message was routed here.
    routed: AtomicU64,
    /// Completed QoS 2 deliveries whose keys in the bucket of packet ids wait for their
    /// session's checkpoint to pass the message (qos2.rs).
    completed: Mutex<Vec<Completed>>,
}

#[derive(Debug)]
struct Completed {
    client_id: ByteString,
    key: String,
    revision: u64,
    mark: StreamMark,
}

impl Ticks {
    /// A completed QoS 2 delivery's key (at `revision`), deleted once the session's
    /// checkpoint is past the message. Beyond [`COMPLETED_MAX`] waiting, the key stays
    /// (until the bucket's `max_age`, or the packet id's next use).
    pub(super) fn completed(
        &self,
        client_id: &ByteString,
        key: String,
        revision: u64,
        mark: StreamMark,
    ) {
        let mut completed = self.completed.lock();
        if completed.len() < COMPLETED_MAX {
            completed.push(Completed {
                client_id: client_id.clone(),
                key,
                revision,
                mark,
            });
        }
    }

    fn push(&self, seq: u64, below: u64) {
        self.routed.fetch_max(seq, Ordering::Relaxed);
        let mut marks = self.marks.lock();
        if marks.back().is_none_or(|&(last, _)| last < seq) {
            marks.push_back((seq, below));
            if marks.len() > TICKS {
                marks.pop_front();
            }
        }
    }

    /// A stream sequence before every own message numbered `seq` or later (0, the
    /// stream's start, for one older than what is remembered).
    fn start_of(&self, seq: u64) -> u64 {
        let marks = self.marks.lock();
        let i = marks.partition_point(|&(s, _)| s <= seq);
        i.checked_sub(1)
            .and_then(|i| marks.get(i))
            .map_or(0, |&(_, below)| below)
    }
}

/// Where the node stands for a checkpoint (read before the sessions are looked at).
#[derive(Debug, Clone, Copy)]
struct Here {
    /// Every stream message up to this one was routed (or skipped).
    position: u64,
    /// Every own message numbered below this one was routed here.
    own: u64,
}

/// What a session's last checkpoint was made of.
struct Written {
    cut: Cut,
    untaken: Untaken,
    arrivals: u32,
    age: u32,
    /// The record as written, and its revision (`None`: to be read first).
    record: Option<(u64, Record)>,
    /// The record is this node's and not a clean session's (else nothing is written).
    ours: bool,
}

/// Whether a replay from `cut` leaves the message marked `mark` out (handover.rs).
fn passed(cut: &Cut, mark: StreamMark) -> bool {
    match (mark.stream_seq(), mark.own_seq()) {
        (Some(seq), _) => seq <= cut.floor(),
        (_, Some(seq)) => seq < cut.origin_seq,
        _ => true,
    }
}

impl Cluster {
    /// Where this node stands now (see [`Here`]), remembered for the cuts' starts.
    fn here(&self) -> Here {
        let position = self.moves.position();
        let below = position.max(self.moves.stored.load(Ordering::Relaxed));
        // Equal counts: every own message numbered so far was routed here (a publisher
        // numbers its message, routes it, then counts it; see `routed_own`).
        let mut own = None;
        for _ in 0..SETTLE_TRIES {
            let routed = self.routed_own.load(Ordering::Acquire);
            let numbered = self.seq.load(Ordering::Acquire);
            if routed == numbered {
                own = Some(numbered);
                break;
            }
            std::hint::spin_loop();
        }
        let own = match own {
            Some(own) => {
                self.ticks.push(own, below);
                own
            }
            // Publishers kept numbering: the last settled count holds.
            None => self.ticks.routed.load(Ordering::Relaxed),
        };
        Here { position, own }
    }

    /// Remembers where this node starts (before it numbers a message).
    pub(super) fn note_start(&self) {
        self.here();
    }

    /// The cut of a session that has `untaken` left.
    fn cut_for(&self, here: Here, untaken: Untaken) -> Cut {
        let floor = untaken
            .stream
            .map_or(here.position, |seq| seq.saturating_sub(1))
            .min(here.position);
        let origin_seq = untaken.own.map_or(here.own, |seq| seq.min(here.own));
        Cut::checkpoint(
            self.ticks.start_of(origin_seq),
            floor,
            self.node,
            origin_seq,
        )
    }

    /// The checkpoint of a session now (for its record when its client goes offline).
    pub(super) fn checkpoint_of(&self, session: &Session) -> Cut {
        let here = self.here();
        let untaken = session.state.lock().oldest_untaken();
        self.cut_for(here, untaken)
    }

    /// Writes `cut` into the session's record (compare-and-set), unless the record is
    /// another node's by now, or a clean session's (`Ok(None)`). The record as written,
    /// or `Err` if NATS did not take it.
    async fn write_checkpoint(
        &self,
        client_id: &ByteString,
        cut: Cut,
        mut cached: Option<(u64, Record)>,
    ) -> Result<Option<(u64, Record)>, ()> {
        let key = key_of(client_id);
        for _ in 0..2 {
            let (revision, record) = match cached.take() {
                Some(cached) => cached,
                None => {
                    match bounded("reading the session", self.sessions.entry(key.clone())).await {
                        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                            match Record::read(entry.value) {
                                Ok(record) => (entry.revision, record),
                                Err(_) => return Ok(None),
                            }
                        }
                        Ok(_) => return Ok(None),
                        Err(e) => {
                            debug!(%client_id, "cluster: checkpoint not written: {e}");
                            return Err(());
                        }
                    }
                }
            };
            // Left alone while a will waits out its delay for an offline client: the
            // survivor holding a dead node's will publishes it only if the record did
            // not change meanwhile (liveness.rs). Nothing is taken while the client is
            // away, so the checkpoint of its disconnect stays exact.
            let will_waits = record.offline_since != 0 && record.will.is_some();
            if record.owner != self.node || record.clean || will_waits {
                return Ok(None);
            }
            let record = Record {
                checkpoint: Some(cut),
                ..record
            };
            match bounded(
                "writing a checkpoint",
                self.sessions
                    .update(&key, record.encode_for(self.records_readable()), revision),
            )
            .await
            {
                Ok(revision) => return Ok(Some((revision, record))),
                // Written since (subscriptions, a disconnect, another node's claim):
                // read again.
                Err(e) => debug!(%client_id, "cluster: {e}; reading the record again"),
            }
        }
        Err(())
    }
}

/// Writes the sessions' checkpoints every `every` until shutdown.
pub(super) async fn keep_checkpoints(
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: HashMap<ByteString, Written> = HashMap::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if !cluster.linked() {
            continue;
        }
        let sessions = router.client_sessions();
        let mut due = Vec::new();
        {
            // The reader paused: no stream message is half routed, no session half taken
            // in (handover.rs).
            let _gate = cluster.moves.gate().await;
            let here = cluster.here();
            for session in &sessions {
                if session.clean || session.flow.is_some() {
                    continue;
                }
                let (untaken, arrivals) = {
                    let state = session.state.lock();
                    if state.ended {
                        continue;
                    }
                    (state.oldest_untaken(), state.arrivals)
                };
                let cut = cluster.cut_for(here, untaken);
                let moved = match written.get_mut(&session.client_id) {
                    None => true,
                    Some(last) => {
                        last.age = last.age.saturating_add(1);
                        last.cut != cut
                            && (last.arrivals != arrivals
                                || last.untaken != untaken
                                || last.age >= IDLE_REFRESH)
                    }
                };
                if moved {
                    due.push((session.client_id.clone(), cut, untaken, arrivals));
                }
            }
        }
        let present = present_ids(&sessions);
        written.retain(|client_id, _| present.contains(client_id));
        for chunk in due.chunks(WRITES_AT_ONCE) {
            let writes = chunk.iter().map(|(client_id, cut, _, _)| {
                let cached = written
                    .get_mut(client_id)
                    .and_then(|last| last.record.take());
                cluster.write_checkpoint(client_id, *cut, cached)
            });
            let results = join_all(writes).await;
            for ((client_id, cut, untaken, arrivals), result) in chunk.iter().zip(results) {
                let Ok(record) = result else {
                    // Tried again at the next heartbeat.
                    written.remove(client_id);
                    continue;
                };
                let ours = record.is_some();
                written.insert(
                    client_id.clone(),
                    Written {
                        cut: *cut,
                        untaken: *untaken,
                        arrivals: *arrivals,
                        age: 0,
                        record,
                        ours,
                    },
                );
            }
        }
        purge_completed(&cluster, &written, &present).await;
    }
}

fn present_ids(sessions: &[Arc<Session>]) -> HashSet<ByteString> {
    sessions.iter().map(|s| s.client_id.clone()).collect()
}

/// Deletes the keys of completed QoS 2 deliveries that the sessions' written
/// checkpoints are past (or whose sessions are no longer here, or not persistent).
async fn purge_completed(
    cluster: &Cluster,
    written: &HashMap<ByteString, Written>,
    present: &HashSet<ByteString>,
) {
    let ready: Vec<Completed> = {
        let mut completed = cluster.ticks.completed.lock();
        let (ready, waiting) = completed
            .drain(..)
            .partition(|c| match written.get(&c.client_id) {
                Some(w) if !w.ours => true,
                Some(w) => w.record.is_some() && passed(&w.cut, c.mark),
                None => !present.contains(&c.client_id),
            });
        *completed = waiting;
        ready
    };
    for chunk in ready.chunks(WRITES_AT_ONCE) {
        let deletes = chunk.iter().map(|c| {
            bounded(
                "deleting a completed QoS 2 packet id",
                cluster
                    .qos2
                    .delete_expect_revision(&c.key, Some(c.revision)),
            )
        });
        for result in join_all(deletes).await {
            // Used again since (a newer revision), or NATS away: the key stays until
            // the packet id's next use or the bucket's max_age.
            if let Err(e) = result {
                debug!("cluster: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_give_a_start_before_later_own_messages() {
        let ticks = Ticks::default();
        assert_eq!(ticks.start_of(5), 0);
        ticks.push(10, 100);
        ticks.push(20, 150);
        ticks.push(20, 160);
        assert_eq!(ticks.start_of(9), 0);
        assert_eq!(ticks.start_of(10), 100);
        assert_eq!(ticks.start_of(19), 100);
        assert_eq!(ticks.start_of(25), 150);
        assert_eq!(ticks.routed.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn checkpoint_cuts_keep_their_floor() {
        let cut = Cut::checkpoint(40, 50, 7, 9);
        assert_eq!((cut.stream, cut.floor(), cut.catch_up()), (40, 50, None));
        let cut = Cut::checkpoint(60, 50, 7, 9);
        assert_eq!((cut.stream, cut.floor()), (50, 50));
        let plain = Cut {
            stream: 5,
            owner: 1,
            origin_seq: 2,
            stored: 8,
        };
        assert_eq!((plain.floor(), plain.catch_up()), (5, Some(8)));
    }
}
