//! Opening a connection, the schema and its migrations.

use super::*;

pub(super) fn open_connection(config: &SqliteConfig) -> Result<Connection> {
    let path = &config.path;
    if config.create_dirs {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dirs(parent).map_err(|e| {
                Error::config_with(format!("cannot create directory {}", parent.display()), e)
            })?;
        }
    }
    create_file(path)
        .map_err(|e| Error::config_with(format!("cannot create {}", path.display()), e))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::config_with(format!("cannot open {}", path.display()), e))?;
    prepare(conn, config)
}

/// Missing directories, readable by their owner only (0700 on Unix); existing ones keep their
/// mode.
fn create_dirs(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A missing database file, created empty and readable by its owner only (0600 on Unix), so
/// that state is private from its first byte: SQLite gives the `-wal` and `-shm` files the
/// database file's mode. An existing file keeps its mode; `:memory:` and URIs are SQLite's.
fn create_file(path: &std::path::Path) -> std::io::Result<()> {
    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" || path.to_string_lossy().starts_with("file:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Makes an open connection a store's: busy timeout, WAL, durability, schema.
pub(super) fn prepare(mut conn: Connection, config: &SqliteConfig) -> Result<Connection> {
    conn.busy_timeout(config.busy_timeout).map_err(map)?;
    conn.set_prepared_statement_cache_capacity(64);
    // Read-only checks first, so a foreign or newer file is refused before anything is written.
    if let Some(found) = stored_schema_version(&conn)? {
        check_schema(found)?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(map)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::config(format!(
            "SQLite refused WAL mode (journal mode is {mode}); processes could not share the file"
        )));
    }
    let synchronous = match config.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(map)?;
    migrate(&mut conn)?;
    conn.wal_hook(Some(note_wal_pages));
    Ok(conn)
}

pub(super) fn stored_schema_version(conn: &Connection) -> Result<Option<i64>> {
    let has_meta: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'state_store_meta'",
            [],
            |row| row.get::<_, i64>(0),
        )
        .map_err(map)?
        > 0;
    if !has_meta {
        return Ok(None);
    }
    conn.query_row(
        "SELECT value FROM state_store_meta WHERE name = 'schema_version'",
        [],
        |row| row.get(0),
    )
    .optional()
    .map_err(map)
}

pub(super) fn check_schema(found: i64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::config(format!(
            "the database has state-store schema version {found}, newer than this release's \
             {SCHEMA_VERSION}; upgrade state-store-sqlite (the file was left untouched)"
        )));
    }
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS state_store_meta (
             name TEXT PRIMARY KEY,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )
    .map_err(map)?;
    let found = stored_schema_version(&tx)?;
    if let Some(found) = found {
        check_schema(found)?;
    }
    if found.is_none() {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS state_store (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 expires_at INTEGER
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS state_store_expires_at
                 ON state_store (expires_at) WHERE expires_at IS NOT NULL;",
        )
        .map_err(map)?;
    }
    if found.is_none_or(|v| v < 3) {
        // Version 2: a change feed for watchers, written by triggers in the same transaction
        // as the data, by every process (and every release from 2 on) that writes the file.
        // Version 3: the triggers write only while a watch holds the feed open (`feed_until`).
        tx.execute_batch(
            "DROP TRIGGER IF EXISTS state_store_inserted;
             DROP TRIGGER IF EXISTS state_store_updated;
             DROP TRIGGER IF EXISTS state_store_deleted;",
        )
        .map_err(map)?;
        tx.execute_batch(&CHANGES_SCHEMA.replace("{now}", SQL_NOW_MS))
            .map_err(map)?;
    }
    tx.execute(
        "INSERT INTO state_store_meta (name, value) VALUES ('schema_version', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [SCHEMA_VERSION],
    )
    .map_err(map)?;
    tx.commit().map_err(map)
}

/// The change feed: one row per write, removal and expiry (`op` 0, 1, 2), numbered by
/// `seq` (never reused), trimmed by age by the sweep — written only while a watch holds it
/// open (the meta row `feed_until`, a deadline in Unix ms that watchers push forward). A
/// watch that opens it after a time nobody held it first writes a gap row (`op` 3): a watch
/// resumed from before the gap starts over with `Resync`.
pub(super) const CHANGES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS state_store_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        op INTEGER NOT NULL,
        value TEXT,
        version INTEGER,
        at INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS state_store_changes_at ON state_store_changes (at);
    CREATE TRIGGER IF NOT EXISTS state_store_inserted AFTER INSERT ON state_store
    WHEN (SELECT value FROM state_store_meta WHERE name = 'feed_until') > {now} BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (NEW.key, 0, NEW.value, NEW.version, {now});
    END;
    CREATE TRIGGER IF NOT EXISTS state_store_updated AFTER UPDATE ON state_store
    WHEN (SELECT value FROM state_store_meta WHERE name = 'feed_until') > {now} BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (NEW.key, 0, NEW.value, NEW.version, {now});
    END;
    CREATE TRIGGER IF NOT EXISTS state_store_deleted AFTER DELETE ON state_store
    WHEN (SELECT value FROM state_store_meta WHERE name = 'feed_until') > {now} BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (OLD.key,
                CASE WHEN OLD.expires_at IS NOT NULL AND OLD.expires_at <= {now} THEN 2 ELSE 1 END,
                NULL, NULL, {now});
    END;";

/// How long one hold of the change feed lasts; a watch renews it every third of that.
pub(super) const FEED_HOLD: Duration = Duration::from_secs(60);

/// Holds the change feed open for [`FEED_HOLD`] more, in one immediate transaction: if it had
/// lapsed (nobody watched), first records the gap, so that a watch resumed from before it
/// starts over.
pub(super) fn hold_feed(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map)?;
    let now = now_ms();
    let until: Option<i64> = tx
        .query_row(
            "SELECT value FROM state_store_meta WHERE name = 'feed_until'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(map)?;
    if until.is_none_or(|until| until <= now) {
        tx.execute(
            "INSERT INTO state_store_changes (key, op, at) VALUES ('', 3, ?1)",
            [now],
        )
        .map_err(map)?;
    }
    let hold = i64::try_from(FEED_HOLD.as_millis()).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO state_store_meta (name, value) VALUES ('feed_until', ?1)
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
        [now.saturating_add(hold)],
    )
    .map_err(map)?;
    tx.commit().map_err(map)
}
