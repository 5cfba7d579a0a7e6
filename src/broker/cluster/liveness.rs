//! Node liveness, fencing, the wills of a dead node's clients, and the expiry of session
//! records.
//!
//! Each node keeps a key (`n.<node>`) in a JetStream KV bucket whose entries live
//! `cluster_node_ttl` (`PREFIX_NODES`, `max_age`), put again every `cluster_heartbeat`;
//! its value names the newest session record format the node reads (formats.rs).
//! Every node lists the bucket as often: a node whose key was there and is gone (seen
//! missing twice, by a node whose own renewals went through steadily for at least a TTL,
//! so that an outage of NATS or of the bucket's leader is not taken for the death of
//! every node) is dead. Renewing and judging are separate tasks, so reading the bucket
//! or the session records, however slow while JetStream elects a leader, never holds
//! up a renewal.
//!
//! Fencing: a node cut off from NATS (or from its JetStream) cannot tell its peers it is
//! alive; they will judge it dead and fire its clients' wills and take their sessions
//! while those clients may still be connected to it (split brain). So a node that has
//! not renewed its key for its TTL less one heartbeat ([`super::config::fence_after`])
//! fences itself: it closes its clients (5.0: DISCONNECT 0x9C Use another server) and
//! refuses CONNECTs (CONNACK 0x03 / 0x88) until a renewal succeeds again. Its clients'
//! records keep their wills for whoever acts on them: the survivors, if they judged
//! the node dead, else the node itself once it is back ([`settle_fenced`]).
//!
//! The survivors then read the session records and take over those the dead node owned
//! for clients that were connected to it, or whose will was still waiting out its delay
//! there: each claims the record by compare-and-set on its revision, so exactly one
//! survivor wins each record and publishes its will. A clean session's record is deleted
//! (the session ended: the will goes now). A persistent one is recorded offline under
//! the survivor, which takes the session in (from the record's subscriptions); its will goes after its Will Delay Interval (or the session's expiry,
//! if sooner) [MQTT-3.1.2-8], by a second compare-and-set on the claimed revision, which
//! fails if the client connected again anywhere meanwhile: then the will is not
//! published [MQTT-3.1.3-9].
//!
//! Records of offline persistent sessions are deleted once their session expired (5.0
//! Session Expiry Interval, else `persistent_client_expiration`), by one node (the live
//! node with the lowest id) reading the bucket every [`EXPIRY_SWEEP`]. Reading the bucket
//! costs one request per record: fine for thousands of sessions.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::sessions::{bounded, client_id_of, unix_now, Record};
use super::Cluster;
use crate::broker::router::{MatchScratch, Router};

/// The liveness settings (`cluster_heartbeat`, `cluster_node_ttl`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// How often a node puts its key and looks at the others'.
    pub(super) heartbeat: Duration,
    /// How long a node's liveness key lives without being put again.
    pub(super) ttl: Duration,
}

impl Timing {
    pub(super) fn of(config: &crate::broker::config::cluster::Settings) -> Timing {
        Timing {
            heartbeat: config.cluster_heartbeat,
            ttl: config.cluster_node_ttl,
        }
    }
}

/// Longest between two looks of the fencing watch at the last renewal.
const FENCE_CHECK_MAX: Duration = Duration::from_millis(100);
/// How often expired session records are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(5);

/// A node's key in the liveness bucket.
pub(super) fn node_key(node: u64) -> String {
    format!("n.{node:016x}")
}

fn node_of(key: &str) -> Option<u64> {
    u64::from_str_radix(key.strip_prefix("n.")?, 16).ok()
}

/// Puts this node's key (before it accepts clients, so others know it from the start).
pub(super) async fn announce(nodes: &kv::Store, node: u64) -> Result<(), String> {
    bounded(
        "announcing the node",
        // The key's name is all that nodes before format 4 read; the value says which
        // session records this node reads (formats.rs).
        nodes.put(node_key(node), super::formats::liveness_value()),
    )
    .await
    .map(|_| ())
}

/// Keeps this node's key alive until shutdown, and lifts the fence as soon as a
/// renewal succeeds. Alone in its task: listing the bucket, taking over a dead node's
/// sessions and sweeping expired records ([`watch_nodes`]) wait on JetStream for as long
/// as it takes, which must never hold up a renewal (one held up long enough is a fence).
/// Tried every heartbeat whatever the state of the connection: a renewal while NATS is
/// away fails, and the first one after it is back succeeds.
pub(super) async fn keep_alive(
    nodes: kv::Store,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A try whose answer is lost (its NATS server killed, or the bucket electing a
    // leader) is given up after a third of the TTL, so the node tries at least three
    // times before it fences, the last ones against the leader elected meanwhile.
    let attempt = timing.ttl / 3;
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        // The key lives a TTL from when the server stored it, which is after this.
        let sent = Instant::now();
        let renewed = match tokio::time::timeout(attempt, announce(&nodes, cluster.node)).await {
            Ok(renewed) => renewed,
            Err(_) => Err(format!("announcing the node: no answer within {attempt:?}")),
        };
        if let Err(e) = renewed {
            // Logged once per outage: a re-election fails every heartbeat for seconds.
            if failing_since.is_none() {
                failing_since = Some(sent);
                warn!("cluster: liveness not renewed (trying every cluster_heartbeat): {e}");
            } else {
                debug!("cluster: liveness not renewed: {e}");
            }
            continue;
        }
        if let Some(since) = failing_since.take() {
            info!(
                "cluster: liveness renewed again after {:.1} s",
                since.elapsed().as_secs_f64()
            );
        }
        cluster.link.renewed(sent, steady_gap(timing));
        if cluster.fenced() {
            unfence(&cluster, &router);
        }
    }
}

/// The longest between two renewals of a steady run (see [`watch_nodes`]): one late
/// renewal is part of it, a renewal that failed is not.
pub(super) fn steady_gap(timing: Timing) -> Duration {
    timing.heartbeat * 2
}

/// Watches the other nodes' keys until shutdown: a node whose key was there and is gone
/// (seen missing twice) is dead, and its clients' wills and sessions are taken over.
///
/// Judged only once this node's own renewals have gone through steadily for a whole TTL
/// ([`steady_gap`] apart at most): when JetStream could not store renewals for a while
/// (a NATS server lost, the bucket electing a new leader, this node cut off), every key
/// may have expired without any node being dead; a live one renews its key within that
/// TTL. A node cut off alone is judged as soon as its key is gone: the others' renewals
/// went through all along.
pub(super) async fn watch_nodes(
    nodes: kv::Store,
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(timing.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Nodes seen alive, and those missing once (dead when missing again).
    let mut known: HashSet<u64> = HashSet::new();
    let mut missing: HashSet<u64> = HashSet::new();
    let mut last_sweep = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let live = match live_nodes(&nodes).await {
            Ok(live) => live,
            Err(e) => {
                debug!("cluster: liveness bucket not read: {e}");
                continue;
            }
        };
        // After the listing: renewals that failed while it was read count.
        let judging = cluster.link.steady_for(steady_gap(timing)) >= timing.ttl;
        let mut dead = HashSet::new();
        for &node in known.difference(&live) {
            if node == cluster.node || !judging {
                continue;
            }
            if !missing.insert(node) {
                dead.insert(node);
            }
        }
        if !judging {
            missing.clear();
        }
        missing.retain(|node| !live.contains(node) && !dead.contains(node));
        known.retain(|node| !dead.contains(node));
        known.extend(live.iter().copied());
        if !dead.is_empty() {
            for node in &dead {
                warn!("cluster: node {node:016x} is gone (its liveness key expired): taking over its clients' wills and sessions");
            }
            sweep(&nodes, &cluster, &router, &dead, false).await;
        }
        // One node sweeps expired records: the live one with the lowest id.
        let sweeper = live.iter().min().is_none_or(|&n| n == cluster.node);
        if sweeper && last_sweep.elapsed() >= EXPIRY_SWEEP {
            last_sweep = Instant::now();
            sweep(&nodes, &cluster, &router, &HashSet::new(), true).await;
        }
        // Last: a slow read of the keys' values must not hold up judging the dead.
        match formats_of(&nodes, &live, cluster.node).await {
            Ok(formats) => cluster.note_formats(&formats),
            // The format written stays as it was until the next look.
            Err(e) => debug!("cluster: the nodes' record formats not read: {e}"),
        }
    }
}

/// The liveness bucket, made with `cluster_node_ttl` as its entries' age, or brought to
/// it (every node of a cluster must use the same TTL: the last one started sets it).
pub(super) async fn nodes_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, String> {
    // Two nodes starting at once may both find no bucket: the one whose create loses
    // finds the other's bucket on its next try (the start retries, setup.rs).
    if let Ok(store) = js.get_key_value(name).await {
        align_ttl(js, name, ttl).await?;
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        description: "pyo3mq nodes: one key per live node, expiring unless renewed".to_string(),
        history: 1,
        max_age: ttl,
        // As many copies as the other streams (`cluster_replicas`): a node that
        // cannot renew its key fences itself, so losing the one NATS server that
        // held the bucket must not fence every node.
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

/// Brings the liveness bucket's entry age to `cluster_node_ttl`.
async fn align_ttl(
    js: &async_nats::jetstream::Context,
    name: &str,
    ttl: Duration,
) -> Result<(), String> {
    let mut stream = js
        .get_stream(format!("KV_{name}"))
        .await
        .map_err(|e| e.to_string())?;
    let config = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .config
        .clone();
    if config.max_age != ttl {
        info!(
            "cluster: liveness bucket {name}: node TTL {:?} -> {ttl:?} (cluster_node_ttl)",
            config.max_age
        );
        js.update_stream(async_nats::jetstream::stream::Config {
            max_age: ttl,
            ..config
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Fences this node when its liveness key has gone unrenewed for its TTL less one
/// heartbeat: by then its peers may judge it dead any moment (see the module's docs).
/// Apart from [`keep_alive`], whose renewal may itself hang (a NATS that stopped
/// answering is noticed by its timeouts only).
pub(super) async fn fence_watch(
    cluster: Arc<Cluster>,
    router: Arc<Router>,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
) {
    let after = super::config::fence_after(timing.heartbeat, timing.ttl);
    let mut tick = tokio::time::interval((timing.heartbeat / 4).min(FENCE_CHECK_MAX));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let unrenewed = cluster.link.since_renewal();
        if unrenewed < after || cluster.fenced() {
            continue;
        }
        cluster.link.fences.fetch_add(1, Ordering::Relaxed);
        // Set before the connections are listed: a CONNECT attaching meanwhile either
        // is listed (and closed) or sees the fence after it attached (and is refused).
        cluster.link.fenced.send_replace(true);
        let kicked = router.kick_connections();
        error!(
            "cluster: fenced: this node could not renew its liveness key for {:.1} s \
             (cluster_node_ttl {:?} less one cluster_heartbeat), so other nodes may take \
             it for dead and take over its clients' sessions and wills; closing its \
             {kicked} client connection(s) and refusing CONNECTs (CONNACK 0x03) until it \
             is back on NATS",
            unrenewed.as_secs_f64(),
            timing.ttl,
        );
    }
}

/// Back on NATS with the liveness key renewed: serves again, and settles what the
/// fenced connections left (in a task of its own: reading records must not hold up the
/// next renewal).
fn unfence(cluster: &Arc<Cluster>, router: &Arc<Router>) {
    let clients = std::mem::take(&mut *cluster.link.fenced_clients.lock());
    cluster.link.fenced.send_replace(false);
    info!(
        "cluster: fence lifted: this node renewed its liveness key and accepts clients \
         again; settling the records of the {} client(s) it closed",
        clients.len()
    );
    tokio::spawn(settle_fenced(cluster.clone(), router.clone(), clients));
}

/// The records of the clients a fence closed: a record another node took (it judged this
/// node dead) is that node's, and the session left here goes; one still naming this
/// node as the owner of a connected client is handled as a survivor would, so its will
/// is published once (by this node, its peers having not acted).
async fn settle_fenced(cluster: Arc<Cluster>, router: Arc<Router>, clients: Vec<ByteString>) {
    let now = unix_now();
    let (mut taken, mut settled) = (0usize, 0usize);
    for client_id in clients {
        let key = super::sessions::key_of(&client_id);
        let (revision, record) = match read_record(&cluster, &key).await {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(e) => {
                warn!(%client_id, "cluster: the record of a client closed by the fence not read: {e}");
                continue;
            }
        };
        if record.owner != cluster.node {
            // Another node adopted it (and fired the will): the copy here is stale.
            let _ = router.give_up_session(&client_id);
            taken += 1;
            continue;
        }
        if record.offline_since != 0 || router.is_connected(&client_id) {
            continue;
        }
        // The client left while fenced and no other node acted: handled as a survivor
        // would (the session stays here, offline; the will goes once).
        if adopt(&cluster, &router, &key, &client_id, revision, record, now).await {
            settled += 1;
        }
    }
    info!(
        "cluster: fence settled: {taken} session(s) taken over by other nodes meanwhile, \
         {settled} record(s) of closed clients handled here"
    );
}

/// A session record and its revision: none if the key is deleted or unreadable as one.
async fn read_record(cluster: &Cluster, key: &str) -> Result<Option<(u64, Record)>, String> {
    let entry = bounded("reading a session", cluster.sessions.entry(key.to_string())).await?;
    Ok(entry
        .filter(|entry| entry.operation == kv::Operation::Put)
        .and_then(|entry| Some((entry.revision, Record::decode(entry.value)?))))
}

pub(super) async fn live_nodes(nodes: &kv::Store) -> Result<HashSet<u64>, String> {
    let keys = bounded("listing nodes", nodes.keys()).await?;
    let keys: Vec<Result<String, _>> = tokio::time::timeout(super::STORE_TIMEOUT, keys.collect())
        .await
        .map_err(|_| "listing nodes: no answer".to_string())?;
    let mut live = HashSet::new();
    for key in keys {
        let key = key.map_err(|e| format!("listing nodes: {e}"))?;
        live.extend(node_of(&key));
    }
    Ok(live)
}

/// The session record formats the `live` nodes other than `own` advertise (formats.rs).
pub(super) async fn formats_of(
    nodes: &kv::Store,
    live: &HashSet<u64>,
    own: u64,
) -> Result<HashMap<u64, u8>, String> {
    let keys = live
        .iter()
        .filter(|&&node| node != own)
        .map(|&node| (node, node_key(node)))
        .collect();
    super::formats::read_formats(nodes, keys).await
}

/// Reads every session record: takes over those of `dead` nodes, and (`expire`) deletes
/// those whose session expired.
async fn sweep(
    nodes: &kv::Store,
    cluster: &Arc<Cluster>,
    router: &Arc<Router>,
    dead: &HashSet<u64>,
    expire: bool,
) {
    let keys = match bounded("listing sessions", cluster.sessions.keys()).await {
        Ok(keys) => keys,
        Err(e) => {
            warn!("cluster: session records not read: {e}");
            return;
        }
    };
    let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
    let now = unix_now();
    let limit_311 = router.config().persistent_client_expiration;
    let mut adopted = 0usize;
    let mut expired = 0usize;
    for key in keys {
        let Some(client_id) = client_id_of(&key) else {
            continue;
        };
        let (revision, record) = match read_record(cluster, &key).await {
            Ok(Some(read)) => read,
            Ok(None) => continue,
            Err(e) => {
                debug!(%client_id, "cluster: {e}");
                continue;
            }
        };
        if dead.contains(&record.owner) {
            // A node restarted under its name (same id) announces itself before it
            // accepts clients, so before it writes any record: its key present now,
            // after the record was read, means the record may be its new one.
            if !matches!(
                bounded("checking a node", nodes.entry(node_key(record.owner))).await,
                Ok(None)
            ) {
                continue;
            }
            if adopt(cluster, router, &key, &client_id, revision, record, now).await {
                adopted += 1;
            }
        } else if expire && has_expired(&record, now, limit_311) {
            let deleted = bounded(
                "deleting an expired session",
                cluster
                    .sessions
                    .delete_expect_revision(&key, Some(revision)),
            )
            .await;
            if deleted.is_ok() {
                expired += 1;
                info!(%client_id, "cluster: session record deleted: the session expired");
            }
        }
    }
    if !dead.is_empty() {
        info!("cluster: dead node(s) handled: took over {adopted} session record(s)");
    }
    if expired > 0 {
        debug!("cluster: {expired} expired session record(s) deleted");
    }
}

fn has_expired(record: &Record, now: u64, limit_311: Option<Duration>) -> bool {
    if record.offline_since == 0 {
        return false;
    }
    let limit = match record.expiry {
        Some(u32::MAX) => return false,
        Some(secs) => u64::from(secs),
        None => match limit_311 {
            Some(limit) => limit.as_secs().max(1),
            None => return false,
        },
    };
    now.saturating_sub(record.offline_since) >= limit
}

/// Takes over one record of a dead node: true if this node won it.
async fn adopt(
    cluster: &Arc<Cluster>,
    router: &Arc<Router>,
    key: &str,
    client_id: &ByteString,
    revision: u64,
    record: Record,
    now: u64,
) -> bool {
    // An offline session without a will waiting needs nothing (its record expires as
    // any other).
    if record.offline_since != 0 && record.will.is_none() {
        return false;
    }
    let ends = record.clean || record.expiry == Some(0);
    if ends {
        // The session ended with the node: the record goes, the will now.
        let claimed = bounded(
            "claiming a dead node's session",
            cluster.sessions.delete_expect_revision(key, Some(revision)),
        )
        .await;
        if let Err(e) = claimed {
            debug!(%client_id, "cluster: another node took it: {e}");
            return false;
        }
        if let Some(will) = &record.will {
            info!(%client_id, topic = %will.topic, "cluster: publishing the will of a client of a dead node");
            publish_will(cluster, router, will.message(client_id)).await;
        }
        return true;
    }
    let offline_since = if record.offline_since == 0 {
        now
    } else {
        record.offline_since
    };
    // The will waits out its delay (or the session's expiry, if sooner), counted from
    // when the client went offline (for a connected client: now).
    let wait = record.will.as_ref().map(|will| {
        let delay = u64::from(will.delay);
        let delay = record.expiry.map_or(delay, |e| delay.min(u64::from(e)));
        (offline_since + delay).saturating_sub(now)
    });
    let will = record.will.clone();
    let fire_now = wait == Some(0);
    let claimed = Record {
        owner: cluster.node,
        will: if fire_now { None } else { will.clone() },
        offline_since,
        pending: Vec::new(),
        ..record
    };
    let claimed_revision = match bounded(
        "claiming a dead node's session",
        cluster.sessions.update(
            key,
            claimed.encode_for(cluster.records_readable()),
            revision,
        ),
    )
    .await
    {
        Ok(revision) => revision,
        Err(e) => {
            debug!(%client_id, "cluster: another node took it: {e}");
            return false;
        }
    };
    // The session lives on here: its subscriptions route to it, a CONNECT anywhere
    // takes it over from this node.
    let (taken, delivered) = cluster.with_released(client_id, claimed.clone()).await;
    cluster.take_in(router, client_id, taken, &delivered).await;
    let (Some(will), Some(wait)) = (will, wait) else {
        return true;
    };
    if fire_now {
        info!(%client_id, topic = %will.topic, "cluster: publishing the will of a client of a dead node");
        publish_will(cluster, router, will.message(client_id)).await;
        return true;
    }
    info!(%client_id, "cluster: the will of a client of a dead node waits {wait} s (its Will Delay Interval) [MQTT-3.1.2-8]");
    let (cluster, router) = (cluster.clone(), router.clone());
    let (key, client_id) = (key.to_string(), client_id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let fired = Record {
            will: None,
            ..claimed
        };
        // Fails if the client connected again (anywhere) meanwhile: the record changed.
        match bounded(
            "publishing a delayed will",
            cluster.sessions.update(
                &key,
                fired.encode_for(cluster.records_readable()),
                claimed_revision,
            ),
        )
        .await
        {
            Ok(_) => {
                info!(%client_id, topic = %will.topic, "cluster: publishing the delayed will of a client of a dead node");
                publish_will(&cluster, &router, will.message(&client_id)).await;
            }
            Err(_) => {
                info!(%client_id, "[MQTT-3.1.3-9] the client came back within its Will Delay Interval: the will of its dead node is cancelled");
            }
        }
    });
    true
}

impl Cluster {
    /// Whether this node is fenced off the cluster (see the module's docs).
    pub fn fenced(&self) -> bool {
        *self.link.fenced.borrow()
    }

    /// Times this node fenced itself since start.
    pub fn fences(&self) -> u64 {
        self.link.fences.load(Ordering::Relaxed)
    }

    /// Whether a CONNECT may go on: false (and logged) while this node is fenced; the
    /// connection is refused with CONNACK 0x03 (5.0: 0x88 Server unavailable).
    pub fn admits(&self, client_id: &ByteString) -> bool {
        if self.fenced() {
            warn!(%client_id, "cluster: CONNECT refused (server unavailable): this node is fenced, cut off from NATS");
            return false;
        }
        true
    }

    /// A connection was closed by the fence: its record is settled once the node is back.
    pub fn fenced_client(&self, client_id: &ByteString) {
        self.link.fenced_clients.lock().push(client_id.clone());
    }
}

/// Routes a will here and to the other nodes, and waits until it left for NATS.
async fn publish_will(
    cluster: &Cluster,
    router: &Router,
    msg: Arc<crate::broker::session::Message>,
) {
    let mut scratch = MatchScratch::default();
    router.publish(msg, &mut scratch);
    if !cluster.flushed(&mut scratch).await {
        warn!("cluster: a dead node's client's will could not be sent to NATS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_round_trip() {
        for node in [0, 1, u64::MAX, 0xfeed_beef] {
            assert_eq!(node_of(&node_key(node)), Some(node));
        }
        assert_eq!(node_of("c.00"), None);
    }

    #[test]
    fn records_expire_offline_only() {
        let record = |expiry, offline_since| Record {
            owner: 1,
            clean: false,
            subscriptions: Vec::new(),
            pending: Vec::new(),
            will: None,
            expiry,
            offline_since,
            checkpoint: None,
        };
        let hour = Some(Duration::from_secs(3600));
        assert!(!has_expired(&record(Some(10), 0), 1_000, hour));
        assert!(has_expired(&record(Some(10), 990), 1_000, hour));
        assert!(!has_expired(&record(Some(10), 991), 1_000, hour));
        assert!(!has_expired(&record(Some(u32::MAX), 1), 1_000_000, hour));
        assert!(has_expired(&record(None, 1), 3_601, hour));
        assert!(!has_expired(&record(None, 1), 3_600, hour));
        assert!(!has_expired(&record(None, 1), 1_000_000, None));
    }
}
