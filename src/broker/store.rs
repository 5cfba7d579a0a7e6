//! Where persistent sessions and retained messages go when the broker stops, and come
//! from when it starts.
//!
//! While the broker runs, live state is in the router. The in-memory store sees it at the
//! edges of a broker's life: `load` at start, `save` at graceful stop, so a broker object
//! that is stopped and started again resumes its clean-session-0 clients. A durable store
//! (SQLite) is also brought up to date while the broker runs, with `save_changes`: only
//! the sessions and retained topics that changed since the last save are written.

use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use crate::broker::session::Message;
use crate::codec::QoS;

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
    /// When the client went offline, in seconds since the Unix epoch (what
    /// `persistent_client_expiration` counts from); `None` if it was online when saved.
    pub disconnected_at: Option<u64>,
    pub subscriptions: Vec<(ByteString, QoS)>,
    pub pending: Vec<StoredMessage>,
}

/// What changed since the last save: a durable store writes only this, so the cost of a
/// save follows the traffic, not the size of the persistent state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Sessions that ended (applied first: a session may end and start again in between).
    pub removed_sessions: Vec<ByteString>,
    /// Sessions to write whole (subscriptions and pending messages).
    pub sessions: Vec<SessionSnapshot>,
    /// Retained topics set (`Some`) or cleared (`None`), the latest per topic.
    pub retained: Vec<(ByteString, Option<Arc<Message>>)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.removed_sessions.is_empty() && self.sessions.is_empty() && self.retained.is_empty()
    }
}

pub trait SessionStore: Send + Sync {
    /// Persistent sessions and retained messages saved last time.
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>);
    /// Replaces what is stored with the broker's current persistent state. `Err` (logged
    /// by the store) makes the broker try a full save again next time.
    fn save(
        &self,
        sessions: Vec<SessionSnapshot>,
        retained: Vec<Arc<Message>>,
    ) -> Result<(), String>;
    /// Applies what changed since the last save (or load), in one transaction. On `Err`
    /// the broker falls back to a full `save` next time, so no change is forgotten.
    fn save_changes(&self, changes: Changes) -> Result<(), String>;
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

    fn save(
        &self,
        sessions: Vec<SessionSnapshot>,
        retained: Vec<Arc<Message>>,
    ) -> Result<(), String> {
        *self.saved.lock() = (sessions, retained);
        Ok(())
    }

    fn save_changes(&self, changes: Changes) -> Result<(), String> {
        let mut saved = self.saved.lock();
        let (sessions, retained) = &mut *saved;
        sessions.retain(|s| !changes.removed_sessions.contains(&s.client_id));
        for snap in changes.sessions {
            match sessions.iter_mut().find(|s| s.client_id == snap.client_id) {
                Some(slot) => *slot = snap,
                None => sessions.push(snap),
            }
        }
        for (topic, msg) in changes.retained {
            retained.retain(|m| m.topic != topic);
            retained.extend(msg);
        }
        Ok(())
    }
}

/// Sessions and retained messages in a SQLite database (compiled in, no system library).
///
/// The broker writes what changed in one transaction every `persist_interval` seconds,
/// per group commit with `durability = "sync"`, and at shutdown. A crash therefore loses
/// at most what changed since the last save (nothing acknowledged, with sync durability);
/// a clean stop loses nothing.
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
    CREATE TABLE IF NOT EXISTS disconnected (client_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
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
        let mut disconnected = conn.prepare("SELECT at FROM disconnected WHERE client_id = ?1")?;
        for id in ids {
            let disconnected_at = disconnected
                .query_map([&id], |row| row.get::<_, i64>(0))?
                .next()
                .transpose()?
                .and_then(|at| u64::try_from(at).ok());
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
                disconnected_at,
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
             DELETE FROM retained; DELETE FROM disconnected;",
        )?;
        {
            let mut add_session = tx.prepare("INSERT INTO sessions (client_id) VALUES (?1)")?;
            let mut writer = SessionWriter::new(&tx)?;
            for s in sessions {
                let id: &str = &s.client_id;
                add_session.execute([id])?;
                writer.write(s)?;
            }
            let mut add_retained = tx.prepare(
                "INSERT INTO retained (topic, payload, qos, publisher) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for m in retained {
                put_retained(&mut add_retained, m)?;
            }
        }
        tx.commit()
    }
}

impl SqliteStore {
    fn try_save_changes(&self, changes: &Changes) -> rusqlite::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut forget = [
                tx.prepare("DELETE FROM sessions WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM subscriptions WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM pending WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM disconnected WHERE client_id = ?1")?,
            ];
            for id in &changes.removed_sessions {
                let id: &str = id;
                for statement in &mut forget {
                    statement.execute([id])?;
                }
            }
            let mut add_session =
                tx.prepare("INSERT OR IGNORE INTO sessions (client_id) VALUES (?1)")?;
            let mut writer = SessionWriter::new(&tx)?;
            for s in &changes.sessions {
                let id: &str = &s.client_id;
                // Rewritten whole: its rows are few (bounded by max_queued_messages).
                forget[1].execute([id])?;
                forget[2].execute([id])?;
                forget[3].execute([id])?;
                add_session.execute([id])?;
                writer.write(s)?;
            }
            let mut set = tx.prepare(
                "INSERT OR REPLACE INTO retained (topic, payload, qos, publisher) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut clear = tx.prepare("DELETE FROM retained WHERE topic = ?1")?;
            for (topic, msg) in &changes.retained {
                let topic: &str = topic;
                match msg {
                    Some(m) => put_retained(&mut set, m)?,
                    None => {
                        clear.execute([topic])?;
                    }
                }
            }
        }
        tx.commit()
    }
}

fn put_retained(statement: &mut rusqlite::Statement<'_>, m: &Message) -> rusqlite::Result<()> {
    let topic: &str = &m.topic;
    let publisher: &str = &m.publisher;
    statement.execute(rusqlite::params![
        topic,
        &m.payload[..],
        m.qos as i64,
        publisher
    ])?;
    Ok(())
}

/// Inserts a session's subscription and pending rows (shared by full and partial saves).
struct SessionWriter<'t> {
    add_sub: rusqlite::Statement<'t>,
    add_pending: rusqlite::Statement<'t>,
    add_disconnected: rusqlite::Statement<'t>,
}

impl<'t> SessionWriter<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>) -> rusqlite::Result<SessionWriter<'t>> {
        Ok(SessionWriter {
            add_sub: tx.prepare(
                "INSERT INTO subscriptions (client_id, filter, qos) VALUES (?1, ?2, ?3)",
            )?,
            add_pending: tx.prepare(
                "INSERT INTO pending (client_id, seq, topic, payload, msg_qos, qos, retain, \
                 publisher, pkid, released) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?,
            add_disconnected: tx
                .prepare("INSERT INTO disconnected (client_id, at) VALUES (?1, ?2)")?,
        })
    }

    fn write(&mut self, s: &SessionSnapshot) -> rusqlite::Result<()> {
        let id: &str = &s.client_id;
        if let Some(at) = s.disconnected_at.and_then(|at| i64::try_from(at).ok()) {
            self.add_disconnected.execute(rusqlite::params![id, at])?;
        }
        for (filter, qos) in &s.subscriptions {
            let filter: &str = filter;
            self.add_sub
                .execute(rusqlite::params![id, filter, *qos as i64])?;
        }
        for (seq, p) in s.pending.iter().enumerate() {
            let topic: &str = &p.msg.topic;
            let publisher: &str = &p.msg.publisher;
            self.add_pending.execute(rusqlite::params![
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
        Ok(())
    }
}

impl SessionStore for SqliteStore {
    fn load(&self) -> (Vec<SessionSnapshot>, Vec<Arc<Message>>) {
        self.try_load().unwrap_or_else(|e| {
            tracing::error!("cannot load sessions from {}: {e}", self.path);
            (Vec::new(), Vec::new())
        })
    }

    fn save(
        &self,
        sessions: Vec<SessionSnapshot>,
        retained: Vec<Arc<Message>>,
    ) -> Result<(), String> {
        self.try_save(&sessions, &retained).map_err(|e| {
            let e = format!("cannot save sessions to {}: {e}", self.path);
            tracing::error!("{e}");
            e
        })
    }

    fn save_changes(&self, changes: Changes) -> Result<(), String> {
        self.try_save_changes(&changes).map_err(|e| {
            let e = format!("cannot save session changes to {}: {e}", self.path);
            tracing::error!("{e}; the next save writes everything");
            e
        })
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
            disconnected_at: Some(1_700_000_000),
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
        store
            .save(vec![snap.clone()], vec![retained.clone()])
            .unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let (sessions, kept) = store.load();
        assert_eq!(sessions, vec![snap]);
        assert_eq!(kept, vec![retained]);
        store.save(Vec::new(), Vec::new()).unwrap();
        assert_eq!(store.load(), (Vec::new(), Vec::new()));
        let _ = std::fs::remove_file(&path);
    }
}
