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
        mark: crate::broker::session::StreamMark::NONE,
    })
}

/// MQTT 5.0 properties as a publisher might send them (repeated user properties in
/// their order, correlation data with any bytes), without an expiry (whose deadline a
/// load recomputes, see `message_expiry_counts_down_across_a_reload`).
fn v5_properties() -> MessageProperties {
    let p = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\xffid")),
        user_properties: vec![
            ("k".into(), "2".into()),
            ("a".into(), "x".into()),
            ("k".into(), "1".into()),
        ],
        subscription_identifiers: vec![7, 268_435_455],
        ..Properties::default()
    };
    MessageProperties::new(p.to_bytes(PropertyContext::Publish).unwrap())
}

fn v5_message(topic: &str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        properties: Some(v5_properties()),
        ..(*message(topic, retain)).clone()
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
            subscription_options: Vec::new(),
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

/// The columns version 4 added, dropped again: with this a file written now has the
/// layout of version 3 (whose tables it had, with these columns at their ends).
const TO_V3: &str = "
    ALTER TABLE subscriptions DROP COLUMN options;
    ALTER TABLE subscriptions DROP COLUMN identifier;
    ALTER TABLE pending DROP COLUMN properties;
    ALTER TABLE pending DROP COLUMN expires_at;
    ALTER TABLE retained DROP COLUMN properties;
    ALTER TABLE retained DROP COLUMN expires_at;
";

/// Makes the file one of an older version: version 3's columns, then `sql` (which drops
/// the tables versions 2 and 3 added, and sets the version).
fn as_older(path: &Path, sql: &str) {
    tamper(path, &format!("{TO_V3} {sql}"));
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

/// `sample()` with a 5.0 session beside it: subscription options and identifiers (on a
/// plain and a shared filter), and messages with properties.
fn v5_sample() -> StoredState {
    let mut state = sample();
    let opts = |byte, id| SubOpts::from_stored(byte, NonZeroU32::new(id)).unwrap();
    state.sessions.push(SessionSnapshot {
        client_id: ByteString::from("c5"),
        disconnected_at: Some(1_700_000_100),
        session_expiry: Some(u32::MAX),
        // In the order a load reads them: by filter.
        subscriptions: vec![
            (ByteString::from("$share/g/b/+"), QoS::AtLeastOnce),
            (ByteString::from("a/#"), QoS::ExactlyOnce),
            (ByteString::from("plain"), QoS::AtMostOnce),
        ],
        subscription_options: vec![
            // Retain As Published, Retain Handling 1, the largest identifier.
            (ByteString::from("$share/g/b/+"), opts(0x18, 268_435_455)),
            // No Local, Retain As Published, Retain Handling 2, identifier 7.
            (ByteString::from("a/#"), opts(0x2c, 7)),
        ],
        pending: vec![
            StoredMessage {
                msg: v5_message("a/b", false),
                qos: QoS::ExactlyOnce,
                retain: false,
                pkid: Some(3),
                released: false,
            },
            StoredMessage {
                msg: v5_message("a/c", true),
                qos: QoS::AtLeastOnce,
                retain: true,
                pkid: None,
                released: false,
            },
        ],
    });
    state.retained.push(v5_message("r/5", true));
    state
}

#[test]
fn v5_state_round_trips() {
    let dir = TempDir::new("v5-round-trip");
    let path = dir.file("s.db");
    let store = SqliteStore::open(&path).unwrap();
    store.load().unwrap();
    store.save(v5_sample()).unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    let loaded = store.load().unwrap();
    assert_eq!(loaded, v5_sample());
    let c5 = &loaded.sessions[1];
    let (_, opts) = &c5.subscription_options[1];
    assert!(opts.no_local() && opts.retain_as_published());
    assert_eq!(
        opts.retain_handling(),
        crate::codec::RetainHandling::DoNotSend
    );
    assert_eq!(opts.id.map(NonZeroU32::get), Some(7));
    // The properties decode as they were sent: user properties in order.
    let p = c5.pending[0].msg.properties.clone().unwrap();
    let decoded = Properties::from_bytes(p.bytes().clone(), PropertyContext::Publish).unwrap();
    assert_eq!(
        decoded.user_properties,
        vec![
            ("k".into(), "2".into()),
            ("a".into(), "x".into()),
            ("k".into(), "1".into())
        ]
    );
    assert_eq!(decoded.subscription_identifiers, vec![7, 268_435_455]);
    // Partial saves write the same rows.
    let mut changed = v5_sample().sessions.remove(1);
    changed.subscription_options.remove(0);
    store
        .save_changes(Changes {
            sessions: vec![changed.clone()],
            retained: vec![(ByteString::from("r/5"), Some(v5_message("r/5", true)))],
            ..Changes::default()
        })
        .unwrap();
    let mut expected = v5_sample();
    expected.sessions[1] = changed;
    assert_eq!(store.load().unwrap(), expected);
}

#[test]
fn message_expiry_counts_down_across_a_reload() {
    let dir = TempDir::new("expiry");
    let path = dir.file("s.db");
    let with_expiry = |secs| {
        let p = Properties {
            message_expiry_interval: Some(secs),
            user_properties: vec![("u".into(), "v".into())],
            ..Properties::default()
        };
        let props = MessageProperties::new(p.to_bytes(PropertyContext::Publish).unwrap());
        Arc::new(Message {
            properties: Some(props),
            ..(*message("e/1", false)).clone()
        })
    };
    let mut state = v5_sample();
    state.sessions[1].pending = [100, 1]
        .into_iter()
        .map(|secs| StoredMessage {
            msg: with_expiry(secs),
            qos: QoS::AtLeastOnce,
            retain: false,
            pkid: None,
            released: false,
        })
        .collect();
    let saved_at = [100, 1].map(|secs| {
        state.sessions[1].pending[usize::from(secs == 1)]
            .msg
            .properties
            .as_ref()
            .unwrap()
            .expires_at()
            .unwrap()
    });
    let store = SqliteStore::open(&path).unwrap();
    store.load().unwrap();
    store.save(state).unwrap();
    // As stored: the deadline, not the interval.
    let conn = Connection::open(&path).unwrap();
    let stored: Vec<i64> = conn
        .prepare("SELECT expires_at FROM pending WHERE client_id = 'c5' ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, saved_at.map(|ms| ms as i64).to_vec());
    // Down for a while: as if 30.5 s went by since the save.
    conn.execute_batch("UPDATE pending SET expires_at = expires_at - 30500")
        .unwrap();
    drop(conn);
    let loaded = SqliteStore::open(&path).unwrap().load().unwrap();
    let pending = &loaded.sessions[1].pending;
    let live = pending[0].msg.properties.as_ref().unwrap();
    assert!(!live.expired());
    let left = crate::broker::session::remaining_secs(
        live.expiry().unwrap().deadline,
        std::time::Instant::now(),
    );
    assert!((69..=70).contains(&left), "{left}");
    assert!(pending[1].msg.properties.as_ref().unwrap().expired());
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
        // Retain Handling 3, and a bit a SUBSCRIBE's options byte reserves.
        ("subscriptions", "UPDATE subscriptions SET options = 48"),
        ("subscriptions", "UPDATE subscriptions SET options = 64"),
        ("subscriptions", "UPDATE subscriptions SET options = 1"),
        ("subscriptions", "UPDATE subscriptions SET identifier = 0"),
        (
            "subscriptions",
            "UPDATE subscriptions SET identifier = 268435456",
        ),
        // A User Property cut short, and a property PUBLISH may not carry (Session
        // Expiry Interval).
        (
            "pending",
            "UPDATE pending SET properties = x'2600' WHERE seq = 0",
        ),
        (
            "pending",
            "UPDATE pending SET properties = x'1100000001' WHERE seq = 0",
        ),
        (
            "pending",
            "UPDATE pending SET properties = x'0200000010', expires_at = -1 WHERE seq = 0",
        ),
        (
            "retained",
            "UPDATE retained SET properties = x'26' WHERE topic = 'r/1'",
        ),
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
    tamper(&newer, "PRAGMA user_version = 5");
    let before = std::fs::read(&newer).unwrap();
    let err = SqliteStore::open(&newer).unwrap().load().unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownVersion { found: 5, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("schema version 5"), "{err}");
    assert_eq!(std::fs::read(&newer).unwrap(), before);

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
    as_older(
        &path,
        "DROP TABLE disconnected; DROP TABLE session_expiry; PRAGMA user_version = 0",
    );
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), without_disconnect_times(sample()));
    drop(store);
    assert_eq!(user_version(&path), SCHEMA_VERSION);

    // One that cannot be read is not stamped either.
    as_older(
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
    as_older(&path, "DROP TABLE session_expiry; PRAGMA user_version = 2");
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
    as_older(
        &bad,
        "DROP TABLE session_expiry; PRAGMA user_version = 2; \
         UPDATE pending SET payload = 'text' WHERE seq = 0",
    );
    assert!(SqliteStore::open(&bad).unwrap().load().is_err());
    assert_eq!(user_version(&bad), 2);
}

/// `v5_sample()` as a version 3 file holds it: no options, identifiers or properties.
fn v5_without_its_state() -> StoredState {
    let mut state = v5_sample();
    for s in &mut state.sessions {
        s.subscription_options.clear();
        for p in &mut s.pending {
            p.msg = Arc::new(Message {
                properties: None,
                ..(*p.msg).clone()
            });
        }
    }
    for m in &mut state.retained {
        *m = Arc::new(Message {
            properties: None,
            ..(**m).clone()
        });
    }
    state
}

#[test]
fn a_version_3_file_is_read_then_upgraded() {
    let dir = TempDir::new("version-3");
    let path = dir.file("s.db");
    saved_sample(&path);
    as_older(&path, "PRAGMA user_version = 3");
    let before = std::fs::read(&path).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    // Read whole: sessions, their expiry and disconnect times, messages, retained.
    assert_eq!(store.load().unwrap(), sample());
    drop(store);
    assert_ne!(std::fs::read(&path).unwrap(), before);
    assert_eq!(user_version(&path), SCHEMA_VERSION);
    // Upgraded: the 5.0 state is kept from now on.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.load().unwrap(), sample());
    store.save(v5_sample()).unwrap();
    drop(store);
    assert_eq!(
        SqliteStore::open(&path).unwrap().load().unwrap(),
        v5_sample()
    );

    // Set back to version 3 by hand, its version 4 columns still there: read, and the
    // upgrade adds only what is missing.
    tamper(&path, "PRAGMA user_version = 3");
    assert_eq!(
        SqliteStore::open(&path).unwrap().load().unwrap(),
        v5_without_its_state()
    );
    assert_eq!(user_version(&path), SCHEMA_VERSION);

    // A version 3 file that cannot be read is left as it was: not upgraded.
    let bad = dir.file("bad.db");
    saved_sample(&bad);
    as_older(
        &bad,
        "PRAGMA user_version = 3; UPDATE pending SET payload = 'text' WHERE seq = 0",
    );
    let before = std::fs::read(&bad).unwrap();
    assert!(SqliteStore::open(&bad).unwrap().load().is_err());
    assert_eq!(user_version(&bad), 3);
    assert_eq!(std::fs::read(&bad).unwrap(), before);
}

#[test]
fn a_version_1_file_is_read_then_upgraded() {
    let dir = TempDir::new("version-1");
    let path = dir.file("s.db");
    saved_sample(&path);
    // As version 1 wrote it: no disconnect times.
    as_older(
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
