//! Where persistent sessions and retained messages go when the broker stops, and come
//! from when it starts.
//!
//! While the broker runs, live state is in the router. A store sees it at the edges of a
//! broker's life: `load` at start, `save` at graceful stop. The in-memory store keeps the
//! snapshot in the process, so a broker object that is stopped and started again resumes
//! its clean-session-0 clients; durable stores (SQLite, a Python plugin) implement the
//! same trait.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use crate::codec::QoS;
use crate::session::Message;

/// A message waiting for a session, at the QoS it will be delivered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    /// Set for a delivery that was in flight: its packet id, kept across restarts.
    pub pkid: Option<u16>,
    /// PUBREL was sent (QoS 2): only PUBCOMP is awaited.
    pub released: bool,
}

/// A clean-session-0 session as it is persisted: subscriptions and undelivered messages
/// (inflight ones first, in send order, with their packet ids; then the queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub client_id: ByteString,
    pub subscriptions: Vec<(ByteString, QoS)>,
    pub pending: Vec<StoredMessage>,
}

pub trait SessionStore: Send + Sync {
    /// Persistent sessions and retained messages saved last time.
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>);
    /// Replaces what is stored with the broker's current persistent state.
    fn save(&self, sessions: Vec<SessionSnapshot>, retained: Vec<Arc<Message>>);
}

/// Keeps the last snapshot in memory: survives a stop/start of the same broker object,
/// not a process restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    saved: Mutex<(Vec<SessionSnapshot>, Vec<Arc<Message>>)>,
}

impl SessionStore for MemoryStore {
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
        self.saved.lock().clone()
    }

    fn save(&self, sessions: Vec<SessionSnapshot>, retained: Vec<Arc<Message>>) {
        *self.saved.lock() = (sessions, retained);
    }
}

/// Sessions and retained messages in a SQLite database (compiled in, no system library).
///
/// The broker saves its whole persistent state in one transaction: at shutdown and every
/// `persist_interval` seconds. A crash therefore loses at most what changed since the last
/// save; a clean stop loses nothing.
pub struct SqliteStore {
    conn: Mutex<rusqlite::Connection>,
    path: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS subscriptions (
        client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,
        PRIMARY KEY (client_id, filter));
    CREATE TABLE IF NOT EXISTS pending (
        client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, msg_qos INTEGER NOT NULL, qos INTEGER NOT NULL,
        retain INTEGER NOT NULL, publisher TEXT NOT NULL, pkid INTEGER,
        released INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (client_id, seq));
    CREATE TABLE IF NOT EXISTS retained (
        topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
        publisher TEXT NOT NULL);
";

fn qos_of(value: i64) -> QoS {
    QoS::from_u8(u8::try_from(value).unwrap_or(0)).unwrap_or(QoS::AtMostOnce)
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<SqliteStore, String> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| format!("cannot open session store {path}: {e}"))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| format!("cannot prepare session store {path}: {e}"))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_string(),
        })
    }

    fn try_load(&self) -> rusqlite::Result<(Vec<SessionSnapshot>, Vec<Arc<Message>>)> {
        let conn = self.conn.lock();
        let mut sessions = Vec::new();
        let ids: Vec<String> = conn
            .prepare("SELECT client_id FROM sessions ORDER BY client_id")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut subs =
            conn.prepare("SELECT filter, qos FROM subscriptions WHERE client_id = ?1")?;
        let mut pending = conn.prepare(
            "SELECT topic, payload, msg_qos, qos, retain, publisher, pkid, released \
             FROM pending WHERE client_id = ?1 ORDER BY seq",
        )?;
        for id in ids {
            let subscriptions = subs
                .query_map([&id], |row| {
                    Ok((
                        ByteString::from(row.get::<_, String>(0)?),
                        qos_of(row.get(1)?),
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let pending = pending
                .query_map([&id], |row| {
                    Ok(StoredMessage {
                        msg: Arc::new(Message {
                            topic: ByteString::from(row.get::<_, String>(0)?),
                            payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(1)?),
                            qos: qos_of(row.get(2)?),
                            retain: row.get::<_, i64>(4)? != 0,
                            publisher: ByteString::from(row.get::<_, String>(5)?),
                        }),
                        qos: qos_of(row.get(3)?),
                        retain: row.get::<_, i64>(4)? != 0,
                        pkid: row
                            .get::<_, Option<i64>>(6)?
                            .and_then(|id| u16::try_from(id).ok())
                            .filter(|&id| id != 0),
                        released: row.get::<_, i64>(7)? != 0,
                    })
                })?
                .collect::<Result<_, _>>()?;
            sessions.push(SessionSnapshot {
                client_id: ByteString::from(id),
                subscriptions,
                pending,
            });
        }
        let retained = conn
            .prepare("SELECT topic, payload, qos, publisher FROM retained")?
            .query_map([], |row| {
                Ok(Arc::new(Message {
                    topic: ByteString::from(row.get::<_, String>(0)?),
                    payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(1)?),
                    qos: qos_of(row.get(2)?),
                    retain: true,
                    publisher: ByteString::from(row.get::<_, String>(3)?),
                }))
            })?
            .collect::<Result<_, _>>()?;
        Ok((sessions, retained))
    }

    fn try_save(
        &self,
        sessions: &[SessionSnapshot],
        retained: &[Arc<Message>],
    ) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM sessions; DELETE FROM subscriptions; DELETE FROM pending; \
             DELETE FROM retained;",
        )?;
        {
            let mut add_session = tx.prepare("INSERT INTO sessions (client_id) VALUES (?1)")?;
            let mut add_sub = tx.prepare(
                "INSERT INTO subscriptions (client_id, filter, qos) VALUES (?1, ?2, ?3)",
            )?;
            let mut add_pending = tx.prepare(
                "INSERT INTO pending (client_id, seq, topic, payload, msg_qos, qos, retain, \
                 publisher, pkid, released) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for s in sessions {
                let id: &str = &s.client_id;
                add_session.execute([id])?;
                for (filter, qos) in &s.subscriptions {
                    let filter: &str = filter;
                    add_sub.execute(rusqlite::params![id, filter, *qos as i64])?;
                }
                for (seq, p) in s.pending.iter().enumerate() {
                    let topic: &str = &p.msg.topic;
                    let publisher: &str = &p.msg.publisher;
                    add_pending.execute(rusqlite::params![
                        id,
                        seq as i64,
                        topic,
                        &p.msg.payload[..],
                        p.msg.qos as i64,
                        p.qos as i64,
                        i64::from(p.retain),
                        publisher,
                        p.pkid.map(i64::from),
                        i64::from(p.released)
                    ])?;
                }
            }
            let mut add_retained = tx.prepare(
                "INSERT INTO retained (topic, payload, qos, publisher) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for m in retained {
                let topic: &str = &m.topic;
                let publisher: &str = &m.publisher;
                add_retained.execute(rusqlite::params![
                    topic,
                    &m.payload[..],
                    m.qos as i64,
                    publisher
                ])?;
            }
        }
        tx.commit()
    }
}

impl SessionStore for SqliteStore {
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
        self.try_load().unwrap_or_else(|e| {
            tracing::error!("cannot load sessions from {}: {e}", self.path);
            (Vec::new(), Vec::new())
        })
    }

    fn save(&self, sessions: Vec<SessionSnapshot>, retained: Vec<Arc<Message>>) {
        if let Err(e) = self.try_save(&sessions, &retained) {
            tracing::error!("cannot save sessions to {}: {e}", self.path);
        }
    }
}

/// Picks a store from its name: `memory` or `sqlite:PATH`.
pub fn open_store(spec: &str) -> Result<Arc<dyn SessionStore>, String> {
    if spec == "memory" {
        Ok(Arc::new(MemoryStore::default()))
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        Ok(Arc::new(SqliteStore::open(path)?))
    } else {
        Err(format!(
            "unknown session_store {spec:?}: use 'memory' or 'sqlite:PATH'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_round_trip() {
        let dir = std::env::temp_dir().join(format!("pyo3mq-store-{}", std::process::id()));
        let path = dir.to_string_lossy().to_string() + ".db";
        let store = SqliteStore::open(&path).unwrap();
        let msg = Arc::new(Message {
            topic: ByteString::from("a/b"),
            payload: bytes::Bytes::from_static(b"\x00\xffpayload"),
            qos: QoS::ExactlyOnce,
            retain: false,
            publisher: ByteString::from("pub"),
        });
        let snap = SessionSnapshot {
            client_id: ByteString::from("c1"),
            subscriptions: vec![(ByteString::from("a/#"), QoS::AtLeastOnce)],
            pending: vec![
                StoredMessage {
                    msg: msg.clone(),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    pkid: Some(7),
                    released: true,
                },
                StoredMessage {
                    msg: msg.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    pkid: None,
                    released: false,
                },
            ],
        };
        let retained = Arc::new(Message {
            retain: true,
            ..(*msg).clone()
        });
        store.save(vec![snap.clone()], vec![retained.clone()]);
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let (sessions, kept) = store.load();
        assert_eq!(sessions, vec![snap]);
        assert_eq!(kept, vec![retained]);
        store.save(Vec::new(), Vec::new());
        assert_eq!(store.load(), (Vec::new(), Vec::new()));
        let _ = std::fs::remove_file(&path);
    }
}
