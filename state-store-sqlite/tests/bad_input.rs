//! Bad files and paths give typed errors and leave the file as it was.

use std::time::Duration;

use serde_json::json;
use state_store_core::{Error, StateStore};
use state_store_sqlite::{rusqlite, SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

#[tokio::test]
async fn a_path_that_cannot_be_created_is_a_config_error() {
    let dir = temp_dir("sqlite-bad-path");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let err = SqliteStateStore::connect(SqliteConfig::new(file.join("sub").join("state.db")))
        .await
        .expect_err("a file as parent directory");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert_eq!(std::fs::read(&file).expect("read"), b"not a directory");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = temp_dir("sqlite-not-db");
    let path = dir.path().join("state.db");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &garbage).expect("write");
    let err = SqliteStateStore::connect(SqliteConfig::new(&path))
        .await
        .expect_err("garbage file");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), garbage);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = temp_dir("sqlite-newer");
    let path = dir.path().join("state.db");
    let store = StateStore::from(
        SqliteStateStore::connect(SqliteConfig::new(&path))
            .await
            .expect("open"),
    );
    store.set_state("kept", &json!("value")).await.expect("set");
    store.destroy().await.expect("destroy");
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute(
            "UPDATE state_store_meta SET value = 99 WHERE name = 'schema_version'",
            [],
        )
        .expect("bump schema");
    }
    let before = std::fs::read(&path).expect("read");
    let err = SqliteStateStore::connect(SqliteConfig::new(&path))
        .await
        .expect_err("newer schema");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), before);
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let kept: String = conn
        .query_row(
            "SELECT value FROM state_store WHERE key = 'kept'",
            [],
            |r| r.get(0),
        )
        .expect("row kept");
    assert_eq!(kept, "\"value\"");
}

#[tokio::test]
async fn a_lock_held_past_the_busy_timeout_is_unavailable_and_loses_nothing() {
    let dir = temp_dir("sqlite-locked");
    let path = dir.path().join("state.db");
    let config = SqliteConfig::new(&path).with_busy_timeout(Duration::from_millis(200));
    let store = StateStore::from(SqliteStateStore::connect(config).await.expect("open"));
    store.set_state("k", &json!(1)).await.expect("set");

    // Another "process" takes the write lock and keeps it.
    let mut other = rusqlite::Connection::open(&path).expect("raw open");
    let tx = other
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .expect("lock");
    let err = store.set_state("k", &json!(2)).await.expect_err("locked");
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(err, Error::Unavailable { .. }));
    let err = store.increment("n", 1, None).await.expect_err("locked");
    assert!(err.is_transient(), "{err:?}");
    tx.rollback().expect("release");

    assert_eq!(store.get::<i64>("k").await.expect("get"), Some(1));
    store
        .set_state("k", &json!(3))
        .await
        .expect("set after release");
    assert_eq!(store.get::<i64>("k").await.expect("get"), Some(3));
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn durability_full_and_urls_work() {
    let dir = temp_dir("sqlite-url");
    let url = format!(
        "sqlite://{}?durability=full&busy_timeout_ms=100",
        dir.path().join("state.db").display()
    );
    let store = StateStore::from(
        SqliteStateStore::connect(SqliteConfig::from_url(&url).expect("url"))
            .await
            .expect("open"),
    );
    store.set_state("k", &json!(true)).await.expect("set");
    assert_eq!(store.get::<bool>("k").await.expect("get"), Some(true));
    store.destroy().await.expect("destroy");
    assert!(SqliteConfig::from_url("redis://x").is_err());
    assert!(SqliteConfig::from_url("sqlite://x?nope=1").is_err());
}

#[tokio::test]
async fn a_version_1_file_is_upgraded_in_place_and_keeps_its_data() {
    let dir = temp_dir("sqlite-v1");
    let path = dir.path().join("state.db");
    {
        // The schema the first release created, with a value in it.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE state_store_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO state_store_meta VALUES ('schema_version', 1);
             CREATE TABLE state_store (key TEXT PRIMARY KEY, value TEXT NOT NULL,
                 version INTEGER NOT NULL, expires_at INTEGER) WITHOUT ROWID;
             CREATE INDEX state_store_expires_at ON state_store (expires_at)
                 WHERE expires_at IS NOT NULL;
             INSERT INTO state_store VALUES ('kept', '\"from v1\"', 7, NULL);",
        )
        .expect("a version-1 file");
    }
    let store = StateStore::from(
        SqliteStateStore::connect(SqliteConfig::new(&path))
            .await
            .expect("open and upgrade"),
    );
    assert_eq!(
        store.get::<String>("kept").await.expect("read").as_deref(),
        Some("from v1")
    );
    // The change feed works on the upgraded file.
    let mut watch = store
        .watch(
            state_store_core::Selector::All,
            state_store_core::WatchStart::Now,
        )
        .await
        .expect("watch");
    store.set_state("new", &json!(1)).await.expect("write");
    let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    assert!(
        matches!(&event, state_store_core::WatchEvent::Put { name, .. } if name == "new"),
        "{event:?}"
    );
    store.destroy().await.expect("destroy");
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    let version: i64 = conn
        .query_row(
            "SELECT value FROM state_store_meta WHERE name = 'schema_version'",
            [],
            |row| row.get(0),
        )
        .expect("schema version");
    assert_eq!(version, 3);
}

/// State is private from its first byte: a new database file, its WAL and shared-memory files
/// are 0600, and directories the store creates are 0700 (no other user on the machine can read
/// sessions or tokens).
#[cfg(unix)]
#[tokio::test]
async fn files_and_directories_the_store_creates_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = temp_dir("sqlite-private");
    let nested = dir.path().join("state").join("inner");
    let path = nested.join("state.db");
    let store = StateStore::new(
        SqliteStateStore::connect(SqliteConfig::new(&path))
            .await
            .expect("open"),
    );
    store
        .set_state("session:abc", &json!({ "user": "ada" }))
        .await
        .expect("write");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let wal = nested.join("state.db-wal");
    let shm = nested.join("state.db-shm");
    for file in [&path, &wal, &shm] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    for created in [&nested, &dir.path().join("state")] {
        assert_eq!(mode(created), 0o700, "{}", created.display());
    }
    store.destroy().await.expect("close");
}
