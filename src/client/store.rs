//! The client's optional session store: unacknowledged outgoing QoS 1/2 publishes and the
//! inbound QoS 2 ids awaiting PUBREL, in SQLite, so that a session survives the process
//! (paho's `clean_session=False` with a persistence directory).
//!
//! The state machine records every change it makes to that part of the session in a
//! journal ([`Change`]s). A store thread owns the SQLite connection and commits journal
//! batches, one transaction each; the connection task never waits on SQLite itself, it
//! waits (asynchronously) for the commit that covers what it is about to write. So a packet
//! reaches the wire only once the session it depends on is stored: a PUBLISH after its row,
//! a PUBREL after the row says "released" (a restart must send PUBREL, not the PUBLISH
//! again, which the server would take as new), a PUBREC after its inbound id, a PUBCOMP
//! after the id's removal. Deletions of acknowledged publishes may lag: at worst a restart
//! resends a QoS 1 message (allowed) or a PUBREL (answered with PUBCOMP).
//!
//! WAL with `synchronous = NORMAL`: a commit survives a crash of the process; after a
//! power loss the last commits may be missing.

use std::path::{Path, PathBuf};
use std::thread;

use bytes::Bytes;
use bytestring::ByteString;
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::codec::QoS;

/// The layout this build reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// Commit batches waiting for the store thread.
const QUEUE_DEPTH: usize = 16;

/// An outgoing QoS 1/2 publish as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredPublish {
    /// Order of publication within the session (survives restarts).
    pub(crate) seq: u64,
    /// Set once the publish entered the inflight window.
    pub(crate) packet_id: Option<u16>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) topic: ByteString,
    /// Empty once released (PUBREC received): only PUBREL remains to be sent.
    pub(crate) payload: Bytes,
    /// PUBREC received, PUBREL sent or to be sent.
    pub(crate) released: bool,
    /// Written to some connection already: a resend carries DUP=1.
    pub(crate) sent: bool,
}

/// One change to the stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Insert or replace the publish with this `seq`.
    Put(StoredPublish),
    /// The publish with this `seq` is acknowledged (or completed without PUBCOMP).
    Delete(u64),
    /// An inbound QoS 2 id got PUBREC.
    InboundAdd(u16),
    /// An inbound QoS 2 id got PUBREL.
    InboundRemove(u16),
    /// The server has no session: no inbound id is held any more.
    InboundClear,
}

/// What a store holds for one client id.
#[derive(Debug, Default)]
pub(crate) struct StoredSession {
    /// In `seq` order.
    pub(crate) outgoing: Vec<StoredPublish>,
    pub(crate) inbound_qos2: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
#[error("client session store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
}

type Job = (Vec<Change>, oneshot::Sender<Result<(), String>>);

/// The handle to a store thread.
pub(crate) struct Store {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the file and loads `client_id`'s session. Blocking: called on
    /// the application's thread when the client is made, never on a tokio worker.
    pub(crate) fn open(path: &Path, client_id: &str) -> Result<(Store, StoredSession), StoreError> {
        let error = |message: String| StoreError {
            path: path.to_owned(),
            message,
        };
        let conn = Connection::open(path).map_err(|e| error(e.to_string()))?;
        init(&conn).map_err(error)?;
        let session = load(&conn, client_id).map_err(error)?;
        let (jobs, rx) = mpsc::channel(QUEUE_DEPTH);
        let owner = client_id.to_owned();
        thread::Builder::new()
            .name("pyo3mq-client-store".into())
            .spawn(move || serve(conn, &owner, rx))
            .map_err(|e| error(format!("cannot start the store thread: {e}")))?;
        Ok((
            Store {
                jobs,
                path: path.to_owned(),
            },
            session,
        ))
    }

    /// Commits `changes` in one transaction.
    pub(crate) async fn commit(&self, changes: Vec<Change>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let failed = || format!("{}: the store thread is gone", self.path.display());
        self.jobs.send((changes, tx)).await.map_err(|_| failed())?;
        rx.await.map_err(|_| failed())?
    }
}

fn init(conn: &Connection) -> Result<(), String> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    if version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {version} is newer than this build's ({SCHEMA_VERSION})"
        ));
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS client_outgoing (
             client_id TEXT NOT NULL,
             seq INTEGER NOT NULL,
             packet_id INTEGER,
             qos INTEGER NOT NULL,
             retain INTEGER NOT NULL,
             topic TEXT NOT NULL,
             payload BLOB NOT NULL,
             released INTEGER NOT NULL,
             sent INTEGER NOT NULL,
             PRIMARY KEY (client_id, seq)
         );
         CREATE TABLE IF NOT EXISTS client_inbound_qos2 (
             client_id TEXT NOT NULL,
             packet_id INTEGER NOT NULL,
             PRIMARY KEY (client_id, packet_id)
         );
         PRAGMA user_version = 1;",
    )
    .map_err(|e| e.to_string())
}

fn load(conn: &Connection, client_id: &str) -> Result<StoredSession, String> {
    let mut session = StoredSession::default();
    let mut stmt = conn
        .prepare(
            "SELECT seq, packet_id, qos, retain, topic, payload, released, sent
             FROM client_outgoing WHERE client_id = ?1 ORDER BY seq",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map(params![client_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, Option<i64>>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Vec<u8>>(5)?,
                row.get::<_, bool>(6)?,
                row.get::<_, bool>(7)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (seq, packet_id, qos, retain, topic, payload, released, sent) =
            row.map_err(|e| e.to_string())?;
        let bad = |what: &str| format!("row {seq}: {what}");
        let qos = u8::try_from(qos)
            .ok()
            .and_then(QoS::from_u8)
            .filter(|q| *q != QoS::AtMostOnce)
            .ok_or_else(|| bad("QoS is not 1 or 2"))?;
        let packet_id = packet_id
            .map(|id| u16::try_from(id).ok().filter(|id| *id != 0))
            .map(|id| id.ok_or_else(|| bad("packet id out of range")))
            .transpose()?;
        session.outgoing.push(StoredPublish {
            seq: u64::try_from(seq).map_err(|_| bad("negative sequence number"))?,
            packet_id,
            qos,
            retain,
            topic: ByteString::from(topic),
            payload: Bytes::from(payload),
            released,
            sent,
        });
    }
    let mut stmt = conn
        .prepare("SELECT packet_id FROM client_inbound_qos2 WHERE client_id = ?1")
        .map_err(|e| e.to_string())?;
    let ids = stmt
        .query_map(params![client_id], |row| row.get::<_, i64>(0))
        .map_err(|e| e.to_string())?;
    for id in ids {
        let id = id.map_err(|e| e.to_string())?;
        let id = u16::try_from(id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| format!("inbound packet id {id} out of range"))?;
        session.inbound_qos2.push(id);
    }
    Ok(session)
}

fn serve(mut conn: Connection, client_id: &str, mut jobs: mpsc::Receiver<Job>) {
    while let Some((changes, reply)) = jobs.blocking_recv() {
        let result = apply(&mut conn, client_id, &changes).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!("client {client_id}: session store commit failed: {e}");
        }
        let _ = reply.send(result);
    }
}

fn apply(conn: &mut Connection, client_id: &str, changes: &[Change]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO client_outgoing
             (client_id, seq, packet_id, qos, retain, topic, payload, released, sent)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut delete =
            tx.prepare_cached("DELETE FROM client_outgoing WHERE client_id = ?1 AND seq = ?2")?;
        let mut inbound_add = tx.prepare_cached(
            "INSERT OR IGNORE INTO client_inbound_qos2 (client_id, packet_id) VALUES (?1, ?2)",
        )?;
        let mut inbound_remove = tx.prepare_cached(
            "DELETE FROM client_inbound_qos2 WHERE client_id = ?1 AND packet_id = ?2",
        )?;
        for change in changes {
            match change {
                Change::Put(p) => {
                    let seq = i64::try_from(p.seq).unwrap_or(i64::MAX);
                    put.execute(params![
                        client_id,
                        seq,
                        p.packet_id,
                        p.qos as u8,
                        p.retain,
                        &*p.topic,
                        &p.payload[..],
                        p.released,
                        p.sent
                    ])?;
                }
                Change::Delete(seq) => {
                    delete.execute(params![client_id, i64::try_from(*seq).unwrap_or(i64::MAX)])?;
                }
                Change::InboundAdd(id) => {
                    inbound_add.execute(params![client_id, id])?;
                }
                Change::InboundRemove(id) => {
                    inbound_remove.execute(params![client_id, id])?;
                }
                Change::InboundClear => {
                    tx.execute(
                        "DELETE FROM client_inbound_qos2 WHERE client_id = ?1",
                        params![client_id],
                    )?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(seq: u64, packet_id: Option<u16>) -> StoredPublish {
        StoredPublish {
            seq,
            packet_id,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: ByteString::from_static("a/b"),
            payload: Bytes::from_static(b"payload"),
            released: false,
            sent: packet_id.is_some(),
        }
    }

    #[test]
    fn changes_are_stored_per_client_and_loaded_back() {
        let dir = std::env::temp_dir().join(format!("pyo3mq-client-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.db");
        let _ = std::fs::remove_file(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        {
            let (store, session) = Store::open(&path, "one").unwrap();
            assert!(session.outgoing.is_empty() && session.inbound_qos2.is_empty());
            let (other, _) = Store::open(&path, "two").unwrap();
            rt.block_on(async {
                store
                    .commit(vec![
                        Change::Put(publish(1, Some(7))),
                        Change::Put(publish(2, None)),
                        Change::Put(publish(3, None)),
                        Change::InboundAdd(9),
                        Change::InboundAdd(10),
                    ])
                    .await
                    .unwrap();
                let mut released = publish(1, Some(7));
                released.released = true;
                released.payload = Bytes::new();
                store
                    .commit(vec![
                        Change::Put(released),
                        Change::Delete(3),
                        Change::InboundRemove(9),
                    ])
                    .await
                    .unwrap();
                other.commit(vec![Change::InboundAdd(1)]).await.unwrap();
            });
        }
        let (_store, session) = Store::open(&path, "one").unwrap();
        let mut expected = publish(1, Some(7));
        expected.released = true;
        expected.payload = Bytes::new();
        assert_eq!(session.outgoing, vec![expected, publish(2, None)]);
        assert_eq!(session.inbound_qos2, vec![10]);
        let (store, session) = Store::open(&path, "two").unwrap();
        assert_eq!(session.inbound_qos2, vec![1]);
        rt.block_on(store.commit(vec![Change::InboundClear]))
            .unwrap();
        let (_store, session) = Store::open(&path, "two").unwrap();
        assert!(session.inbound_qos2.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = std::env::temp_dir().join(format!("pyo3mq-client-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.db");
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let error = Store::open(&path, "x").err().expect("refused");
        assert!(error.to_string().contains("schema version 99"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
