//! Where persistent sessions and retained messages go when the broker stops, and come
//! from when it starts.
//!
//! While the broker runs, live state is in the router. The in-memory store
//! ([`MemoryStore`]) sees it at the edges of a broker's life: `load` at start, `save` at
//! graceful stop, so a broker object that is stopped and started again resumes its
//! clean-session-0 clients. A durable store ([`SqliteStore`]) is also brought up to date
//! while the broker runs, with `save_changes`: only the sessions and retained topics that
//! changed since the last save are written.
//!
//! A store that cannot be read is never written: `load` fails with a [`StoreError`], the
//! broker refuses to start, and the file stays as it was (unless `store_load_error =
//! "start_empty"` asks for a fresh store, and then the unreadable one is kept beside it).

mod memory;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytestring::ByteString;

use crate::broker::session::{Message, SubOpts};
use crate::codec::QoS;

pub use memory::MemoryStore;
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

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
    /// An MQTT 5.0 client's Session Expiry Interval in seconds (`u32::MAX`: never),
    /// counted from `disconnected_at`; `None` for 3.1/3.1.1 sessions.
    pub session_expiry: Option<u32>,
    pub subscriptions: Vec<(ByteString, QoS)>,
    /// The MQTT 5.0 options (No Local, Retain As Published, Retain Handling, the
    /// Subscription Identifier) of those `subscriptions` that have any; empty for a
    /// 3.1/3.1.1 session. A filter not in `subscriptions` is ignored.
    pub subscription_options: Vec<(ByteString, SubOpts)>,
    /// Undelivered messages; each one's 5.0 properties (with the identifiers of the
    /// subscriptions it matched, and its expiry deadline) are in its `msg`.
    pub pending: Vec<StoredMessage>,
}

/// Everything a store holds: the persistent sessions and the retained messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredState {
    pub sessions: Vec<SessionSnapshot>,
    pub retained: Vec<Arc<Message>>,
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

/// Why a store could not be opened, read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown session_store {0:?}: use 'memory' or 'sqlite:PATH'")]
    Spec(String),
    #[error("cannot open session store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Box<rusqlite::Error>,
    },
    /// `PRAGMA user_version` is not one this build knows: a newer pyo3mq (or another
    /// program) wrote the file, and reading it as ours could lose what it holds.
    #[error(
        "session store {} has schema version {found}; this pyo3mq reads version \
         {SCHEMA_VERSION} (the file was written by a newer pyo3mq or another program)",
        path.display()
    )]
    UnknownVersion { path: PathBuf, found: i64 },
    #[error("{} is not a pyo3mq session store: {detail}", path.display())]
    Foreign { path: PathBuf, detail: String },
    #[error("cannot read session store {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: Box<rusqlite::Error>,
    },
    /// One row that does not decode: the whole store is refused, since starting without
    /// it and saving later would delete it.
    #[error("cannot read session store {}: {table} row {key:?}: {source}", path.display())]
    Row {
        path: PathBuf,
        table: &'static str,
        key: String,
        source: Box<rusqlite::Error>,
    },
    /// A save before the file was loaded (or after a failed load) would replace state
    /// that nobody has read.
    #[error("session store {} was not loaded; it is not written", path.display())]
    NotLoaded { path: PathBuf },
    #[error("cannot write session store {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: Box<rusqlite::Error>,
    },
    #[error(
        "cannot move the unreadable session store {} aside to {}: {source}",
        path.display(),
        to.display()
    )]
    SetAside {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// The `session_store` setting, parsed once: `memory` or `sqlite:PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSpec {
    #[default]
    Memory,
    Sqlite(PathBuf),
}

impl StoreSpec {
    pub fn parse(spec: &str) -> Result<StoreSpec, StoreError> {
        match spec.strip_prefix("sqlite:") {
            _ if spec == "memory" => Ok(StoreSpec::Memory),
            // An empty path would be SQLite's private temporary file: nothing survives.
            Some(path) if !path.is_empty() => Ok(StoreSpec::Sqlite(PathBuf::from(path))),
            _ => Err(StoreError::Spec(spec.to_string())),
        }
    }

    /// Whether the store outlives the process (and so is written while the broker runs).
    pub fn is_durable(&self) -> bool {
        matches!(self, StoreSpec::Sqlite(_))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Memory => f.write_str("memory"),
            StoreSpec::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
        }
    }
}

pub trait SessionStore: Send + Sync {
    /// Persistent sessions and retained messages saved last time. `Err` when any of it
    /// cannot be read: the caller must not start empty and save over it.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// After a failed `load`, for a broker told to start empty anyway: moves what could
    /// not be read out of the way (kept, never overwritten) and starts a new, empty
    /// store. Returns where the old one went, if anywhere.
    fn set_aside(&self) -> Result<Option<PathBuf>, StoreError> {
        Ok(None)
    }
    /// Replaces what is stored with the broker's current persistent state. `Err` (logged
    /// by the store) makes the broker try a full save again next time.
    fn save(&self, state: StoredState) -> Result<(), StoreError>;
    /// Applies what changed since the last save (or load), in one transaction. On `Err`
    /// the broker falls back to a full `save` next time, so no change is forgotten.
    fn save_changes(&self, changes: Changes) -> Result<(), StoreError>;
}

/// Opens the store `spec` names. Nothing is read yet: that is `load`, at start.
pub fn open_store(spec: &StoreSpec) -> Result<Arc<dyn SessionStore>, StoreError> {
    match spec {
        StoreSpec::Memory => Ok(Arc::new(MemoryStore::default())),
        StoreSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path)?)),
    }
}

/// `PATH.corrupt-YYYYMMDDTHHMMSSZ` (UTC), or with `-N` added if that name is taken: where
/// an unreadable store is kept.
fn aside_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = utc_stamp(secs);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{stamp}"));
    let mut candidate = PathBuf::from(&name);
    let mut n = 1;
    while candidate.exists() {
        let mut numbered = name.clone();
        numbered.push(format!("-{n}"));
        candidate = PathBuf::from(numbered);
        n += 1;
    }
    candidate
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the Unix epoch (the civil-from-days algorithm,
/// so that no date library is needed for one file name).
fn utc_stamp(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_specs() {
        assert_eq!(StoreSpec::parse("memory").unwrap(), StoreSpec::Memory);
        assert_eq!(
            StoreSpec::parse("sqlite:/tmp/s.db").unwrap(),
            StoreSpec::Sqlite(PathBuf::from("/tmp/s.db"))
        );
        assert_eq!(
            StoreSpec::parse("sqlite:/tmp/s.db").unwrap().to_string(),
            "sqlite:/tmp/s.db"
        );
        for bad in ["", "Memory", "sqlite:", "redis:x", "sqlite"] {
            assert!(
                matches!(StoreSpec::parse(bad), Err(StoreError::Spec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_700_000_000), "20231114T221320Z");
    }
}
