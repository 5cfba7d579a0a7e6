//! Sessions and retained messages in a SQLite database (compiled in, no system library).
//!
//! The file carries a schema version (`PRAGMA user_version`). `load` reads every row
//! before anything may be written: a file that is not a database, a version this build
//! does not know, tables that are not ours or one row that does not decode make `load`
//! fail, and then the store refuses every save, so the file is left as it was.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;
use rusqlite::types::{Type, ValueRef};
use rusqlite::{Connection, Row};

use super::{
    aside_path, Changes, SessionSnapshot, SessionStore, StoreError, StoredMessage, StoredState,
};
use crate::broker::session::{Message, MessageProperties, SubOpts};
use crate::codec::{Properties, PropertyContext, QoS};
use crate::topic;

/// The layout this build writes and reads. Version 2 added `disconnected` (when each
/// offline session's client went away, for `persistent_client_expiration`); version 3
/// added `session_expiry` (an MQTT 5.0 client's Session Expiry Interval, which counts
/// from that time); version 4 added the MQTT 5.0 state: each subscription's options and
/// identifier, and each pending and retained message's properties (as encoded on the
/// wire, `codec::Properties::to_bytes`) with its expiry deadline. Files of versions 1 to
/// 3, and files from before versions existed (`user_version` 0, the same four tables),
/// are read, then given the missing tables and columns and stamped with this version.
pub const SCHEMA_VERSION: i64 = 4;

/// The tables of version 1 (and of unversioned files), sorted by name (as the schema
/// query lists them).
const TABLES_V1: [&str; 4] = ["pending", "retained", "sessions", "subscriptions"];

const CREATE: &str = "
    CREATE TABLE sessions (client_id TEXT PRIMARY KEY);
    CREATE TABLE subscriptions (
        client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,
        options INTEGER NOT NULL DEFAULT 0, identifier INTEGER,
        PRIMARY KEY (client_id, filter));
    CREATE TABLE pending (
        client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
        payload BLOB NOT NULL, msg_qos INTEGER NOT NULL, qos INTEGER NOT NULL,
        retain INTEGER NOT NULL, publisher TEXT NOT NULL, pkid INTEGER,
        released INTEGER NOT NULL DEFAULT 0, properties BLOB, expires_at INTEGER,
        PRIMARY KEY (client_id, seq));
    CREATE TABLE retained (
        topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
        publisher TEXT NOT NULL, properties BLOB, expires_at INTEGER);
    CREATE TABLE disconnected (client_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
    CREATE TABLE session_expiry (client_id TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
";

/// From version 1 (or unversioned) to 2: a session without a row here was online when
/// saved, or was saved by a build that kept no such time.
const UPGRADE_TO_2: &str = "
    CREATE TABLE disconnected (client_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
";

/// From version 2 to 3: a session without a row here is a 3.1/3.1.1 client's (or was
/// saved by a build that kept no interval), which `persistent_client_expiration` governs.
const UPGRADE_TO_3: &str = "
    CREATE TABLE session_expiry (client_id TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
";

/// From version 3 to 4, the MQTT 5.0 state (NULL and 0 are what a 3.1/3.1.1 session
/// has, and what rows of older files had):
/// - `subscriptions.options`: the Subscription Options byte of the SUBSCRIBE without
///   its QoS (No Local 0x04, Retain As Published 0x08, Retain Handling 0x30);
///   `identifier`: the Subscription Identifier, or NULL;
/// - `pending.properties`, `retained.properties`: the message's 5.0 properties as
///   encoded on the wire without their length (a pending copy's include the
///   identifiers of the subscriptions it matched), or NULL for none; `expires_at`:
///   when its Message Expiry Interval runs out, in milliseconds since the Unix epoch
///   (absolute, so the countdown goes on while the broker is down), or NULL.
///
/// Each is added only if missing (a file whose version was set back by hand may have
/// them), so the upgrade never fails on a column that is there.
const COLUMNS_4: [(&str, &str, &str); 6] = [
    ("subscriptions", "options", "INTEGER NOT NULL DEFAULT 0"),
    ("subscriptions", "identifier", "INTEGER"),
    ("pending", "properties", "BLOB"),
    ("pending", "expires_at", "INTEGER"),
    ("retained", "properties", "BLOB"),
    ("retained", "expires_at", "INTEGER"),
];

/// Brings a file of an older `version` (read whole just before) to this version's
/// tables and columns and stamps it, in one transaction: the file is either one or the
/// other.
fn upgrade(conn: &mut Connection, version: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    if version < 2 {
        tx.execute_batch(UPGRADE_TO_2)?;
    }
    if version < 3 {
        tx.execute_batch(UPGRADE_TO_3)?;
    }
    for (table, column, declaration) in COLUMNS_4 {
        let present: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |row| row.get(0),
        )?;
        if present == 0 {
            tx.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
            ))?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Sessions and retained messages in a SQLite file.
///
/// The broker writes what changed in one transaction every `persist_interval` seconds,
/// per group commit with `durability = "sync"`, and at shutdown. A crash therefore loses
/// at most what changed since the last save (nothing acknowledged, with sync durability);
/// a clean stop loses nothing.
pub struct SqliteStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    conn: Connection,
    /// Set once `load` has read every row (or created the tables in an empty file): only
    /// then may a save replace what the file holds.
    loaded: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// What `load` found in the file.
enum Layout {
    /// No tables, no version: a new file.
    Empty,
    /// Ours, at [`SCHEMA_VERSION`].
    Current,
    /// Ours, of an older version (1 for files from before the schema had one): read,
    /// then upgraded.
    Older(i64),
}

impl SqliteStore {
    /// Opens (or creates) the file. Nothing is read or written before `load`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                conn,
                loaded: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Read {
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    fn write_error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            source: Box::new(source),
        }
    }

    fn row_error(&self, table: &'static str, key: String, source: rusqlite::Error) -> StoreError {
        StoreError::Row {
            path: self.path.clone(),
            table,
            key,
            source: Box::new(source),
        }
    }

    /// Reads the version and the table names; writes nothing.
    fn layout(&self, conn: &Connection) -> Result<Layout, StoreError> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| self.read_error(e))?;
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
            )
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .map_err(|e| self.read_error(e))?;
        match version {
            SCHEMA_VERSION => Ok(Layout::Current),
            0 if tables.is_empty() => Ok(Layout::Empty),
            0 if tables == TABLES_V1 => Ok(Layout::Older(1)),
            1..=3 => Ok(Layout::Older(version)),
            0 => Err(StoreError::Foreign {
                path: self.path.clone(),
                detail: format!(
                    "its tables are {tables:?}, not pyo3mq's {TABLES_V1:?}, and it has no \
                     schema version"
                ),
            }),
            found => Err(StoreError::UnknownVersion {
                path: self.path.clone(),
                found,
            }),
        }
    }

    fn create(&self, conn: &Connection) -> Result<(), StoreError> {
        // The journal mode cannot change inside a transaction; the tables and the version
        // are written in one, so a file is either empty or whole.
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .map_err(|e| self.write_error(e))?;
        conn.execute_batch(&format!(
            "BEGIN; {CREATE} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(|e| self.write_error(e))
    }

    /// Every row, decoded strictly: a value out of range is an error, not a default.
    /// `version`: the file's schema, which says which tables it has (`disconnected`
    /// from 2, `session_expiry` from 3) and which columns (the 5.0 ones from 4; older
    /// rows read as NULL there, what a 3.1.1 session writes).
    fn read(&self, conn: &Connection, version: i64) -> Result<StoredState, StoreError> {
        let with_disconnected = version >= 2;
        let read = |e| self.read_error(e);
        let mut ids = Vec::new();
        {
            let mut stmt = conn
                .prepare("SELECT client_id FROM sessions ORDER BY client_id")
                .map_err(read)?;
            let mut rows = stmt.query([]).map_err(read)?;
            while let Some(row) = rows.next().map_err(read)? {
                let id: String = row
                    .get(0)
                    .map_err(|e| self.row_error("sessions", key_of(row, 0), e))?;
                ids.push(id);
            }
        }
        let (sub_v5, message_v5) = if version >= 4 {
            ("options, identifier", "properties, expires_at")
        } else {
            ("0, NULL", "NULL, NULL")
        };
        let mut subs = conn
            .prepare(&format!(
                "SELECT filter, qos, {sub_v5} FROM subscriptions WHERE client_id = ?1 \
                 ORDER BY filter"
            ))
            .map_err(read)?;
        let mut pending = conn
            .prepare(&format!(
                "SELECT topic, payload, msg_qos, qos, retain, publisher, pkid, released, seq, \
                 {message_v5} FROM pending WHERE client_id = ?1 ORDER BY seq"
            ))
            .map_err(read)?;
        let mut disconnected = if with_disconnected {
            Some(
                conn.prepare("SELECT at FROM disconnected WHERE client_id = ?1")
                    .map_err(read)?,
            )
        } else {
            None
        };
        let mut expiry = if version >= 3 {
            Some(
                conn.prepare("SELECT seconds FROM session_expiry WHERE client_id = ?1")
                    .map_err(read)?,
            )
        } else {
            None
        };
        let mut sessions = Vec::with_capacity(ids.len());
        for id in ids {
            let session_expiry =
                self.session_value(&mut expiry, &id, "session_expiry", expiry_at)?;
            let disconnected_at =
                self.session_value(&mut disconnected, &id, "disconnected", time_at)?;
            let mut subscriptions = Vec::new();
            let mut subscription_options = Vec::new();
            let mut rows = subs.query([&id]).map_err(read)?;
            while let Some(row) = rows.next().map_err(read)? {
                let (filter, qos, opts) = subscription_row(row).map_err(|e| {
                    self.row_error("subscriptions", format!("{id} {}", key_of(row, 0)), e)
                })?;
                if !opts.is_default() {
                    subscription_options.push((filter.clone(), opts));
                }
                subscriptions.push((filter, qos));
            }
            let mut messages = Vec::new();
            let mut rows = pending.query([&id]).map_err(read)?;
            while let Some(row) = rows.next().map_err(read)? {
                let message = pending_row(row).map_err(|e| {
                    self.row_error("pending", format!("{id} #{}", key_of(row, 8)), e)
                })?;
                messages.push(message);
            }
            sessions.push(SessionSnapshot {
                client_id: ByteString::from(id),
                disconnected_at,
                session_expiry,
                subscriptions,
                subscription_options,
                pending: messages,
            });
        }
        let mut retained = Vec::new();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT topic, payload, qos, publisher, {message_v5} FROM retained ORDER BY topic"
            ))
            .map_err(read)?;
        let mut rows = stmt.query([]).map_err(read)?;
        while let Some(row) = rows.next().map_err(read)? {
            let message =
                retained_row(row).map_err(|e| self.row_error("retained", key_of(row, 0), e))?;
            retained.push(message);
        }
        Ok(StoredState { sessions, retained })
    }

    /// The value a per-session table (`disconnected`, `session_expiry`) holds for `id`,
    /// if the file has the table (`stmt`) and a row for it.
    fn session_value<T>(
        &self,
        stmt: &mut Option<rusqlite::Statement<'_>>,
        id: &str,
        table: &'static str,
        decode: fn(&Row<'_>, usize) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let Some(stmt) = stmt else {
            return Ok(None);
        };
        let mut rows = stmt.query([id]).map_err(|e| self.read_error(e))?;
        match rows.next().map_err(|e| self.read_error(e))? {
            Some(row) => decode(row, 0)
                .map(Some)
                .map_err(|e| self.row_error(table, id.to_string(), e)),
            None => Ok(None),
        }
    }

    fn try_save(&self, conn: &mut Connection, state: &StoredState) -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM sessions; DELETE FROM subscriptions; DELETE FROM pending; \
             DELETE FROM retained; DELETE FROM disconnected; DELETE FROM session_expiry;",
        )?;
        {
            let mut add_session = tx.prepare("INSERT INTO sessions (client_id) VALUES (?1)")?;
            let mut writer = SessionWriter::new(&tx)?;
            for s in &state.sessions {
                let id: &str = &s.client_id;
                add_session.execute([id])?;
                writer.write(s)?;
            }
            let mut add_retained = tx.prepare(
                "INSERT INTO retained (topic, payload, qos, publisher, properties, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for m in &state.retained {
                put_retained(&mut add_retained, m)?;
            }
        }
        tx.commit()
    }

    fn try_save_changes(&self, conn: &mut Connection, changes: &Changes) -> rusqlite::Result<()> {
        let tx = conn.transaction()?;
        {
            let mut forget = [
                tx.prepare("DELETE FROM sessions WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM subscriptions WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM pending WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM disconnected WHERE client_id = ?1")?,
                tx.prepare("DELETE FROM session_expiry WHERE client_id = ?1")?,
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
                forget[4].execute([id])?;
                add_session.execute([id])?;
                writer.write(s)?;
            }
            let mut set = tx.prepare(
                "INSERT OR REPLACE INTO retained (topic, payload, qos, publisher, properties, \
                 expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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

    /// The connection, if `load` has read the file: saves go through here.
    fn loaded(&self) -> Result<parking_lot::MappedMutexGuard<'_, Connection>, StoreError> {
        let inner = self.inner.lock();
        if !inner.loaded {
            return Err(StoreError::NotLoaded {
                path: self.path.clone(),
            });
        }
        Ok(parking_lot::MutexGuard::map(inner, |inner| &mut inner.conn))
    }
}

/// A row's key column for an error message: its text, or what it holds instead.
fn key_of(row: &Row<'_>, idx: usize) -> String {
    match row.get_ref(idx) {
        Ok(ValueRef::Text(text)) => String::from_utf8_lossy(text).into_owned(),
        Ok(ValueRef::Integer(n)) => n.to_string(),
        Ok(other) => format!("({:?})", other.data_type()),
        Err(_) => "?".to_string(),
    }
}

fn qos_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<QoS> {
    let value: i64 = row.get(idx)?;
    u8::try_from(value)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

fn flag_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<bool> {
    match row.get::<_, i64>(idx)? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(rusqlite::Error::IntegralValueOutOfRange(idx, other)),
    }
}

/// A topic name (`filter` false) or filter, checked as a client's would be.
fn topic_at(row: &Row<'_>, idx: usize, filter: bool) -> rusqlite::Result<ByteString> {
    let value: String = row.get(idx)?;
    let checked = if filter {
        topic::validate_topic_filter(&value)
    } else {
        topic::validate_topic_name(&value)
    };
    checked.map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))?;
    Ok(ByteString::from(value))
}

/// A Session Expiry Interval: whole seconds, `u32::MAX` for never.
fn expiry_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<u32> {
    let value: i64 = row.get(idx)?;
    u32::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// Seconds since the Unix epoch, which are never negative.
fn time_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(idx)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, value))
}

/// A subscription: filter, QoS and 5.0 options (columns `options`, `identifier`).
fn subscription_row(row: &Row<'_>) -> rusqlite::Result<(ByteString, QoS, SubOpts)> {
    let byte: i64 = row.get(2)?;
    let id = match row.get::<_, Option<i64>>(3)? {
        None => None,
        Some(id) => Some(
            u32::try_from(id)
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(3, id))?,
        ),
    };
    let opts = u8::try_from(byte)
        .ok()
        .and_then(|b| SubOpts::from_stored(b, id))
        .ok_or(rusqlite::Error::IntegralValueOutOfRange(2, byte))?;
    Ok((topic_at(row, 0, true)?, qos_at(row, 1)?, opts))
}

/// A message's 5.0 properties (column `idx`) and expiry deadline (`idx + 1`), checked
/// as a PUBLISH's would be: a blob that does not decode is an error.
fn properties_at(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<MessageProperties>> {
    let Some(blob) = row.get::<_, Option<Vec<u8>>>(idx)? else {
        return Ok(None);
    };
    let bytes = bytes::Bytes::from(blob);
    Properties::from_bytes(bytes.clone(), PropertyContext::Publish)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Blob, Box::new(e)))?;
    let expires_at = match row.get::<_, Option<i64>>(idx + 1)? {
        None => None,
        Some(at) => Some(
            u64::try_from(at).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx + 1, at))?,
        ),
    };
    Ok(Some(MessageProperties::restored(bytes, expires_at)))
}

/// What [`properties_at`] reads: the blob and the deadline.
fn properties_params(m: &Message) -> (Option<&[u8]>, Option<i64>) {
    match &m.properties {
        None => (None, None),
        Some(p) => (
            Some(&p[..]),
            p.expires_at()
                .map(|at| i64::try_from(at).unwrap_or(i64::MAX)),
        ),
    }
}

fn pending_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let retain = flag_at(row, 4)?;
    let pkid = match row.get::<_, Option<i64>>(6)? {
        None => None,
        Some(id) => Some(
            u16::try_from(id)
                .ok()
                .filter(|&id| id != 0)
                .ok_or(rusqlite::Error::IntegralValueOutOfRange(6, id))?,
        ),
    };
    Ok(StoredMessage {
        msg: Arc::new(Message {
            topic: topic_at(row, 0, false)?,
            payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(1)?),
            qos: qos_at(row, 2)?,
            retain,
            publisher: ByteString::from(row.get::<_, String>(5)?),
            properties: properties_at(row, 9)?,
            mark: crate::broker::session::StreamMark::NONE,
        }),
        qos: qos_at(row, 3)?,
        retain,
        pkid,
        released: flag_at(row, 7)?,
    })
}

fn retained_row(row: &Row<'_>) -> rusqlite::Result<Arc<Message>> {
    Ok(Arc::new(Message {
        topic: topic_at(row, 0, false)?,
        payload: bytes::Bytes::from(row.get::<_, Vec<u8>>(1)?),
        qos: qos_at(row, 2)?,
        retain: true,
        publisher: ByteString::from(row.get::<_, String>(3)?),
        properties: properties_at(row, 4)?,
        mark: crate::broker::session::StreamMark::NONE,
    }))
}

fn put_retained(statement: &mut rusqlite::Statement<'_>, m: &Message) -> rusqlite::Result<()> {
    let topic: &str = &m.topic;
    let publisher: &str = &m.publisher;
    let (properties, expires_at) = properties_params(m);
    statement.execute(rusqlite::params![
        topic,
        &m.payload[..],
        m.qos as i64,
        publisher,
        properties,
        expires_at
    ])?;
    Ok(())
}

/// Inserts a session's subscription and pending rows (shared by full and partial saves).
struct SessionWriter<'t> {
    add_sub: rusqlite::Statement<'t>,
    add_pending: rusqlite::Statement<'t>,
    add_disconnected: rusqlite::Statement<'t>,
    add_expiry: rusqlite::Statement<'t>,
}

impl<'t> SessionWriter<'t> {
    fn new(tx: &'t rusqlite::Transaction<'_>) -> rusqlite::Result<SessionWriter<'t>> {
        Ok(SessionWriter {
            add_sub: tx.prepare(
                "INSERT INTO subscriptions (client_id, filter, qos, options, identifier) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            add_pending: tx.prepare(
                "INSERT INTO pending (client_id, seq, topic, payload, msg_qos, qos, retain, \
                 publisher, pkid, released, properties, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?,
            add_disconnected: tx
                .prepare("INSERT INTO disconnected (client_id, at) VALUES (?1, ?2)")?,
            add_expiry: tx
                .prepare("INSERT INTO session_expiry (client_id, seconds) VALUES (?1, ?2)")?,
        })
    }

    fn write(&mut self, s: &SessionSnapshot) -> rusqlite::Result<()> {
        let id: &str = &s.client_id;
        if let Some(at) = s.disconnected_at.and_then(|at| i64::try_from(at).ok()) {
            self.add_disconnected.execute(rusqlite::params![id, at])?;
        }
        if let Some(seconds) = s.session_expiry {
            self.add_expiry
                .execute(rusqlite::params![id, i64::from(seconds)])?;
        }
        // Looked up by filter only for a session that has 5.0 options (a 3.1.1 one has
        // none, and writes what it wrote before).
        let options: HashMap<&str, SubOpts> = s
            .subscription_options
            .iter()
            .map(|(filter, opts)| (&**filter, *opts))
            .collect();
        for (filter, qos) in &s.subscriptions {
            let filter: &str = filter;
            let opts = options.get(filter).copied().unwrap_or_default();
            self.add_sub.execute(rusqlite::params![
                id,
                filter,
                *qos as i64,
                i64::from(opts.options_byte()),
                opts.id.map(|id| i64::from(id.get()))
            ])?;
        }
        for (seq, p) in s.pending.iter().enumerate() {
            let topic: &str = &p.msg.topic;
            let publisher: &str = &p.msg.publisher;
            let (properties, expires_at) = properties_params(&p.msg);
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
                i64::from(p.released),
                properties,
                expires_at
            ])?;
        }
        Ok(())
    }
}

impl SessionStore for SqliteStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let mut inner = self.inner.lock();
        // Read again from scratch (a restart of the same broker object): until this read
        // succeeds, nothing is written.
        inner.loaded = false;
        let state = match self.layout(&inner.conn)? {
            Layout::Empty => {
                self.create(&inner.conn)?;
                StoredState::default()
            }
            Layout::Current => self.read(&inner.conn, SCHEMA_VERSION)?,
            Layout::Older(version) => {
                let state = self.read(&inner.conn, version)?;
                // Read whole, so it is ours: from now on it has this version's tables and
                // columns, and says so.
                upgrade(&mut inner.conn, version).map_err(|e| self.write_error(e))?;
                tracing::info!(
                    "session store {}: schema version {SCHEMA_VERSION} recorded",
                    self.path.display()
                );
                state
            }
        };
        inner.loaded = true;
        Ok(state)
    }

    fn set_aside(&self) -> Result<Option<PathBuf>, StoreError> {
        let mut inner = self.inner.lock();
        // Closed first: the old connection's side files (-wal, -shm) belong to the old file,
        // and a new connection must not find them.
        let fresh = Connection::open_in_memory().map_err(|e| self.write_error(e))?;
        drop(std::mem::replace(&mut inner.conn, fresh));
        inner.loaded = false;
        let to = aside_path(&self.path);
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut from = self.path.as_os_str().to_owned();
            from.push(suffix);
            let from = PathBuf::from(from);
            if suffix.is_empty() || from.exists() {
                let mut dest = to.as_os_str().to_owned();
                dest.push(suffix);
                std::fs::rename(&from, &dest).map_err(|source| StoreError::SetAside {
                    path: self.path.clone(),
                    to: to.clone(),
                    source,
                })?;
            }
        }
        inner.conn = Connection::open(&self.path).map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source: Box::new(source),
        })?;
        self.create(&inner.conn)?;
        inner.loaded = true;
        Ok(Some(to))
    }

    fn save(&self, state: StoredState) -> Result<(), StoreError> {
        let mut conn = self.loaded()?;
        self.try_save(&mut conn, &state).map_err(|e| {
            let e = self.write_error(e);
            tracing::error!("{e}");
            e
        })
    }

    fn save_changes(&self, changes: Changes) -> Result<(), StoreError> {
        let mut conn = self.loaded()?;
        self.try_save_changes(&mut conn, &changes).map_err(|e| {
            let e = self.write_error(e);
            tracing::error!("{e}; the next save writes everything");
            e
        })
    }
}

#[cfg(test)]
mod tests;
