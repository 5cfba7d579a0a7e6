use super::*;

/// A fresh directory for one test's files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pyo3mq-store-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn message(topic: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        topic: ByteString::from(topic),
        payload: bytes::Bytes::from_static(b"\x00\xffpayload"),
        qos: QoS::ExactlyOnce,
        retain,
        publisher: ByteString::from("pub"),
        properties: None,
    })
}

/// One session with an in-flight QoS 2 delivery and a queued QoS 1 one; two retained.
fn sample() -> StoredState {
    let msg = message("a/b", false);
    StoredState {
        sessions: vec![SessionSnapshot {
            client_id: ByteString::from("c1"),
            disconnected_at: Some(1_700_000_000),
            session_expiry: Some(3600),
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
                    msg,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    pkid: None,
                    released: false,
                },
            ],
        }],
        retained: vec![message("r/1", true), message("r/2", true)],
    }
}

/// A store file holding `sample()`, closed.
fn saved_sample(path: &Path) {
    let store = SqliteStore::open(path).unwrap();
    assert_eq!(store.load().unwrap(), StoredState::default());
    store.save(sample()).unwrap();
}

/// Changes the file with a connection of its own (as a person with `sqlite3` would).
fn tamper(path: &Path, sql: &str) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn round_trip_and_version() {
    let dir = TempDir::new("round-trip");
    let path = dir.file("s.db");
    saved_sample(&path);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), sample());
    store.save(StoredState::default()).unwrap();
    assert_eq!(store.load().unwrap(), StoredState::default());
}

#[test]
fn an_unreadable_row_refuses_the_load_and_every_write() {
    let dir = TempDir::new("bad-row");
    let path = dir.file("s.db");
    saved_sample(&path);
    tamper(
        &path,
        "UPDATE retained SET payload = CAST(payload AS TEXT) WHERE topic = 'r/2'",
    );
    let before = std::fs::read(&path).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    let err = store.load().unwrap_err();
    assert!(
        matches!(&err, StoreError::Row { table: "retained", key, .. } if key == "r/2"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        matches!(
            store.save(StoredState::default()),
            Err(StoreError::NotLoaded { .. })
        ),
        "a full save would delete every table"
    );
    assert!(matches!(
        store.save_changes(Changes {
            removed_sessions: vec![ByteString::from("c1")],
            ..Changes::default()
        }),
        Err(StoreError::NotLoaded { .. })
    ));
    drop(store);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn values_out_of_range_are_refused() {
    for (table, sql) in [
        ("pending", "UPDATE pending SET qos = 3 WHERE seq = 1"),
        ("pending", "UPDATE pending SET pkid = 70000 WHERE seq = 0"),
        ("pending", "UPDATE pending SET released = 2 WHERE seq = 0"),
        ("pending", "UPDATE pending SET topic = 'a/+' WHERE seq = 0"),
        ("subscriptions", "UPDATE subscriptions SET filter = 'a/#/b'"),
        (
            "retained",
            "UPDATE retained SET qos = -1 WHERE topic = 'r/1'",
        ),
        ("sessions", "UPDATE sessions SET client_id = x'00ff'"),
        ("disconnected", "UPDATE disconnected SET at = -5"),
        ("disconnected", "UPDATE disconnected SET at = 'yesterday'"),
        (
            "session_expiry",
            "UPDATE session_expiry SET seconds = 4294967296",
        ),
        ("session_expiry", "UPDATE session_expiry SET seconds = -1"),
    ] {
        let dir = TempDir::new("range");
        let path = dir.file("s.db");
        saved_sample(&path);
        tamper(&path, sql);
        let err = SqliteStore::open(&path).unwrap().load().unwrap_err();
        assert!(
            matches!(&err, StoreError::Row { table: t, .. } if *t == table),
            "{sql}: {err:?}"
        );
    }
}

#[test]
fn unknown_versions_and_foreign_files_are_refused() {
    let dir = TempDir::new("versions");
    let newer = dir.file("newer.db");
    saved_sample(&newer);
    tamper(&newer, "PRAGMA user_version = 4");
    let err = SqliteStore::open(&newer).unwrap().load().unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownVersion { found: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema version 4"), "{err}");

    let foreign = dir.file("foreign.db");
    tamper(&foreign, "CREATE TABLE accounts (id INTEGER)");
    let before = std::fs::read(&foreign).unwrap();
    let err = SqliteStore::open(&foreign).unwrap().load().unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);

    let garbage = dir.file("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not a database, but it has some length to it",
    )
    .unwrap();
    let err = SqliteStore::open(&garbage).unwrap().load().unwrap_err();
    assert!(matches!(err, StoreError::Read { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"this is not a database, but it has some length to it"
    );
}

#[test]
fn a_file_without_a_version_is_read_then_stamped() {
    let dir = TempDir::new("unversioned");
    let path = dir.file("s.db");
    saved_sample(&path);
    // As the broker wrote it before the schema had a version.
    tamper(
        &path,
        "DROP TABLE disconnected; DROP TABLE session_expiry; PRAGMA user_version = 0",
    );
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), without_disconnect_times(sample()));
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);

    // One that cannot be read is not stamped either.
    tamper(
        &path,
        "DROP TABLE disconnected; DROP TABLE session_expiry; PRAGMA user_version = 0; \
         UPDATE pending SET payload = 'text' WHERE seq = 0",
    );
    assert!(SqliteStore::open(&path).unwrap().load().is_err());
    assert_eq!(user_version(&path), 0);
}

/// `state` as a file without disconnect times (version 1, or unversioned) holds it.
fn without_disconnect_times(mut state: StoredState) -> StoredState {
    for s in &mut state.sessions {
        s.disconnected_at = None;
        s.session_expiry = None;
    }
    state
}

#[test]
fn a_version_2_file_is_read_then_upgraded() {
    let dir = TempDir::new("version-2");
    let path = dir.file("s.db");
    saved_sample(&path);
    // As version 2 wrote it: disconnect times, no Session Expiry Intervals.
    tamper(&path, "DROP TABLE session_expiry; PRAGMA user_version = 2");
    let store = SqliteStore::open(&path).unwrap();
    let mut expected = sample();
    for s in &mut expected.sessions {
        s.session_expiry = None;
    }
    assert_eq!(store.load().unwrap(), expected);
    // Upgraded: the intervals are kept from now on.
    store.save(sample()).unwrap();
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(SqliteStore::open(&path).unwrap().load().unwrap(), sample());

    // A version 2 file that cannot be read is left as it was: not upgraded.
    let bad = dir.file("bad.db");
    saved_sample(&bad);
    tamper(
        &bad,
        "DROP TABLE session_expiry; PRAGMA user_version = 2; \
         UPDATE pending SET payload = 'text' WHERE seq = 0",
    );
    assert!(SqliteStore::open(&bad).unwrap().load().is_err());
    assert_eq!(user_version(&bad), 2);
}

#[test]
fn a_version_1_file_is_read_then_upgraded() {
    let dir = TempDir::new("version-1");
    let path = dir.file("s.db");
    saved_sample(&path);
    // As version 1 wrote it: no disconnect times.
    tamper(
        &path,
        "DROP TABLE disconnected; DROP TABLE session_expiry; PRAGMA user_version = 1",
    );
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), without_disconnect_times(sample()));
    // Upgraded: the times are kept from now on.
    store.save(sample()).unwrap();
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(SqliteStore::open(&path).unwrap().load().unwrap(), sample());
}

#[test]
fn set_aside_keeps_the_unreadable_file_and_starts_empty() {
    let dir = TempDir::new("aside");
    let path = dir.file("s.db");
    saved_sample(&path);
    tamper(&path, "UPDATE pending SET msg_qos = 9");
    let before = std::fs::read(&path).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.load().is_err());
    let aside = store.set_aside().unwrap().expect("moved somewhere");
    let name = aside.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("s.db.corrupt-"), "{name}");
    assert_eq!(std::fs::read(&aside).unwrap(), before);
    // The new file is a store of this version, empty, and takes writes.
    store.save(sample()).unwrap();
    assert_eq!(store.load().unwrap(), sample());
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    assert_eq!(std::fs::read(&aside).unwrap(), before);
    // A second one in the same second gets a name of its own.
    assert_ne!(aside_path(&path), aside);
}

#[test]
fn saves_wait_for_a_load() {
    let dir = TempDir::new("unloaded");
    let path = dir.file("s.db");
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        store.save(sample()),
        Err(StoreError::NotLoaded { .. })
    ));
    store.load().unwrap();
    store.save(sample()).unwrap();
}
