//! `SqliteStateStore`: the backend over one read-write SQLite connection, used by a dedicated
//! thread and by small calls on the caller's thread.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use state_store_core::{
    watch_channel, Backend, BackendEvent, Capabilities, Entry, Error, KeyPage, KeySelector,
    RemoveCause, Result, SetMode, SetOptions, Version, WatchStart, WatchStream, WatchSupport,
};
use tokio::sync::{oneshot, Semaphore};

use crate::config::{Durability, SqliteConfig};
use crate::error::{closed, map, STORE};

/// The schema this version writes. A database with a higher one was written by a newer
/// release and is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 2;
/// Changes kept for watchers to resume from (the sweep trims older ones).
const CHANGE_RETENTION: Duration = Duration::from_secs(300);
/// How often a watcher checks the file for commits (`PRAGMA data_version`, no I/O).
const WATCH_POLL: Duration = Duration::from_millis(20);
/// Unix milliseconds inside SQL.
const SQL_NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
/// Keys per `SELECT … IN (…)`: well under SQLite's variable limit.
const READ_CHUNK: usize = 500;
/// Calls queued for the store's thread at most; more callers wait (asynchronously) for room,
/// so a burst cannot grow the queue, and memory, without bound.
const MAX_QUEUED: usize = 1024;
/// Rows one background sweep deletes at most, so a sweep never holds the write lock for long.
const SWEEP_BATCH: usize = 1000;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

enum Message {
    Job(Job),
    /// Inline writes filled the WAL: checkpoint it (see [`CHECKPOINT_PAGES`]).
    Checkpoint,
    Close(oneshot::Sender<()>),
}

/// The store's one read-write connection, shared by the store thread and by callers that
/// write inline while it is free.
#[derive(Default)]
struct Writer {
    /// `None` once the store is closed.
    conn: std::sync::Mutex<Option<Connection>>,
    /// Set while the store thread waits for `conn`: inline writers leave it alone then, so a
    /// stream of them cannot keep jumping ahead of the thread (a `Mutex` is not fair).
    thread_waiting: std::sync::atomic::AtomicBool,
    /// Set when an inline write asked the thread for a checkpoint it has not run yet.
    checkpoint_asked: std::sync::atomic::AtomicBool,
}

impl Writer {
    /// The connection, for the store thread.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.thread_waiting
            .store(true, std::sync::atomic::Ordering::Release);
        // A panic while holding the lock leaves the connection as usable as SQLite left it.
        let guard = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.thread_waiting
            .store(false, std::sync::atomic::Ordering::Release);
        guard
    }

    /// The connection, for a caller, when neither the thread nor another caller has it.
    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, Option<Connection>>> {
        if self
            .thread_waiting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        self.conn.try_lock().ok()
    }
}

/// WAL pages after which the store thread checkpoints (SQLite's own default). Writers do not
/// checkpoint: a checkpoint copies pages into the database file and syncs it, which must not
/// happen on a caller's thread.
const CHECKPOINT_PAGES: i32 = 1000;

thread_local! {
    /// The WAL's size after this thread's last commit on a store's writer (set by the WAL hook).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The writer's WAL hook: notes the WAL's size for whoever committed. It replaces SQLite's
/// auto-checkpoint, so commits never checkpoint on the committing thread.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The first row a `RETURNING` statement gives, after running it to its end. A statement
/// commits, reports a failed commit and calls the WAL hook only when stepping reaches its end;
/// `query_row` stops after one row and resets it, which commits silently.
fn returning<T>(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut rows = stmt.query(params)?;
    let first = rows.next()?.map(read).transpose();
    while rows.next()?.is_some() {}
    first
}

/// Whether the WAL has grown enough to checkpoint, since this thread last asked.
fn checkpoint_due() -> bool {
    WAL_PAGES.take() >= CHECKPOINT_PAGES
}

/// Checkpoints the WAL on the store thread. PASSIVE: copies what it can without waiting for
/// readers or writers.
///
/// When it copied everything, the next write starts the WAL over, and SQLite syncs the new WAL
/// header on that write: one tiny write here makes that happen on this thread rather than in
/// a caller's inline write (unless a reader still holds the old WAL; then a later write
/// restarts it).
fn checkpoint(conn: &Connection) {
    let copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        let (log, done): (i64, i64) = (row.get(1)?, row.get(2)?);
        Ok(log > 0 && log == done)
    });
    let restarted = match copied {
        Ok(true) => conn
            .busy_timeout(SWEEP_BUSY)
            .and_then(|()| {
                conn.execute(
                    "UPDATE state_store_meta SET value = value WHERE name = 'schema_version'",
                    [],
                )
            })
            .map(drop),
        other => other.map(drop),
    };
    if let Err(err) = restarted {
        tracing::debug!(error = %err, "checkpointing the WAL failed");
    }
}

/// A lock another connection holds, or the WAL index during a checkpoint or recovery: the
/// statement changed nothing and may run again.
fn busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Statements the store runs, public so the benchmark's raw-rusqlite side runs the very same.
#[doc(hidden)]
pub mod sql {
    /// Unconditional write: `(key, value, version, expires_at)`.
    pub const UPSERT: &str =
        "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = excluded.value, version = excluded.version,
     expires_at = excluded.expires_at";

    /// Unconditional write keeping a live row's deadline: `(key, value, version, expires_at if
    /// created, now)`.
    pub const UPSERT_KEEP_TTL: &str =
        "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = excluded.value, version = excluded.version,
     expires_at = CASE WHEN state_store.expires_at IS NULL OR state_store.expires_at > ?5
     THEN state_store.expires_at ELSE excluded.expires_at END";

    /// Atomic increment: `(key, delta, version, expires_at if created, now)`, returning the new
    /// value; no row when the stored value is not a canonical integer or the sum overflows.
    pub const INCREMENT: &str = "INSERT INTO state_store (key, value, version, expires_at)
     VALUES (?1, CAST(?2 AS TEXT), ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = CASE WHEN state_store.expires_at <= ?5 THEN CAST(?2 AS TEXT)
     ELSE CAST(CAST(state_store.value AS INTEGER) + ?2 AS TEXT) END,
     version = ?3,
     expires_at = CASE WHEN state_store.expires_at <= ?5 THEN ?4
     ELSE state_store.expires_at END
     WHERE state_store.expires_at <= ?5
     OR (printf('%d', CAST(state_store.value AS INTEGER)) = state_store.value
     AND typeof(CAST(state_store.value AS INTEGER) + ?2) = 'integer')
     RETURNING CAST(value AS INTEGER)";
}

/// The persistent embedded state store: a SQLite file, no server.
///
/// Several processes on one host share one file safely (WAL mode, a busy timeout); state
/// survives restarts. Every operation is one SQL statement, so `increment` and conditional
/// writes are atomic across processes.
///
/// # Threads
///
/// SQLite calls block. Small ones run on the caller's thread with a bounded wait: reads of up
/// to 64 names on a read-only connection of that thread's own, and writes of values up to
/// 64 KiB on the store's read-write connection when it is free; each waits at most 2 ms for a
/// lock before it is handed to the store's own thread. Everything else — larger calls, writes
/// that found the connection or the file busy, checkpoints, the sweep — runs on that one
/// dedicated thread, fed by a channel, while async callers await the answer. One thread rather
/// than `spawn_blocking` per call: the connection and its prepared-statement cache stay put,
/// there is no per-call hand-off to a pool, and SQLite serializes writers to one file anyway.
///
/// The same thread deletes expired rows every [`SqliteConfig::with_sweep_interval`]; reads never
/// see expired rows in between. [`StateStore::destroy`](state_store_core::StateStore::destroy) stops the thread and closes the file.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), state_store_core::Error> {
/// # let dir = std::env::temp_dir().join(format!("doc-{}", std::process::id()));
/// use state_store_core::StateStore;
/// use state_store_sqlite::{SqliteConfig, SqliteStateStore};
///
/// let store = StateStore::from(SqliteStateStore::connect(SqliteConfig::new(dir.join("state.db"))).await?);
/// let visits = store.increment("visits", 1, None).await?;
/// assert!(visits >= 1);
/// store.destroy().await?;
/// # Ok(())
/// # }
/// ```
pub struct SqliteStateStore {
    sender: mpsc::Sender<Message>,
    writer: Arc<Writer>,
    queue: Arc<Semaphore>,
    config: SqliteConfig,
    /// Set by `close`: watch threads stop.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// The database file a watch opens: the connection's (`None`: an in-memory database).
    file: Option<std::path::PathBuf>,
    /// Tells this store's inline-read connections apart from other stores' on a thread.
    id: u64,
}

/// Most names a read runs inline (on the caller's thread); larger reads go to the store thread.
const INLINE_READ_KEYS: usize = 64;
/// How long an inline read may wait for SQLite's WAL index (a checkpoint or recovery holding
/// it) before it is handed to the store thread instead.
const INLINE_READ_BUSY: Duration = Duration::from_millis(2);
/// Largest value written inline (on the caller's thread); larger ones go to the store thread.
const INLINE_WRITE_BYTES: usize = 64 * 1024;
/// How long an inline write may wait for the file's write lock (another process writing)
/// before it is handed to the store thread, which waits the full busy timeout.
const INLINE_WRITE_BUSY: Duration = Duration::from_millis(2);

thread_local! {
    /// This thread's read-only connections, one per open store: (store id, its close flag,
    /// the connection).
    static READERS: std::cell::RefCell<Vec<(u64, Arc<std::sync::atomic::AtomicBool>, Connection)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Store ids, so that a thread's reader connections are told apart.
static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl SqliteStateStore {
    /// Runs a read on the calling thread, on this thread's read-only connection to the file,
    /// opened on first use. In WAL mode a reader never waits for writers; the one wait left
    /// (the WAL index held by a checkpoint or recovery) is capped at [`INLINE_READ_BUSY`], after
    /// which this gives `None` and the caller hands the read to the store thread. So an inline
    /// read blocks the runtime for the query itself (microseconds for up to
    /// [`INLINE_READ_KEYS`] keys by primary key) plus at most 2 ms. `None` too for an
    /// in-memory database (its data lives in the store thread's connection only).
    fn read_inline<R>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Option<Result<R>> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Some(Err(closed()));
        }
        let path = self.file.as_ref()?;
        READERS.with(|readers| {
            // A read never calls back into a store: a busy cell means "use the thread".
            let mut readers = readers.try_borrow_mut().ok()?;
            readers.retain(|(_, closed, _)| !closed.load(std::sync::atomic::Ordering::Acquire));
            let index = match readers.iter().position(|(id, _, _)| *id == self.id) {
                Some(index) => index,
                None => {
                    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                    let conn = Connection::open_with_flags(path, flags).ok()?;
                    conn.busy_timeout(INLINE_READ_BUSY).ok()?;
                    conn.set_prepared_statement_cache_capacity(16);
                    readers.push((self.id, Arc::clone(&self.closed), conn));
                    readers.len() - 1
                }
            };
            match read(&readers[index].2) {
                Ok(value) => Some(Ok(value)),
                Err(err) if busy(&err) => None,
                Err(err) => Some(Err(map(err))),
            }
        })
    }

    /// Runs a write of a value of `size` bytes on the calling thread, on the store's writer
    /// connection, when no one else is using it; `None` hands it to the store thread. An inline
    /// write blocks the runtime for one statement on one row (a value of at most
    /// [`INLINE_WRITE_BYTES`], plus its change-feed row, appended to the WAL) plus at most
    /// [`INLINE_WRITE_BUSY`] waiting for another process's write lock. It never checkpoints
    /// (the thread does), and a commit does not sync the file, with one exception: the write
    /// that starts the WAL over after another process's checkpoint syncs the new WAL header
    /// (after this store's own checkpoints, the thread does that write). With
    /// [`Durability::Full`] every commit syncs, so writes always go to the thread.
    fn write_inline<R>(
        &self,
        size: usize,
        write: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Option<Result<R>> {
        if self.config.durability != Durability::Normal || size > INLINE_WRITE_BYTES {
            return None;
        }
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Some(Err(closed()));
        }
        let guard = self.writer.try_lock()?;
        let conn = guard.as_ref()?;
        conn.busy_timeout(INLINE_WRITE_BUSY).ok()?;
        let result = write(conn);
        drop(guard);
        if checkpoint_due()
            && !self
                .writer
                .checkpoint_asked
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let _ = self.sender.send(Message::Checkpoint);
        }
        match result {
            Ok(value) => Some(Ok(value)),
            // Nothing was written: the store thread runs it again, waiting as long as it may.
            Err(err) if busy(&err) => None,
            Err(err) => Some(Err(map(err))),
        }
    }

    /// A write: inline when it can be (see [`SqliteStateStore::write_inline`]), else on the
    /// store thread.
    async fn write<A: Send + 'static, R: Send + 'static>(
        &self,
        size: usize,
        args: A,
        write: fn(&Connection, &A) -> rusqlite::Result<R>,
    ) -> Result<R> {
        if let Some(result) = self.write_inline(size, |conn| write(conn, &args)) {
            return result;
        }
        self.call(move |conn| write(conn, &args).map_err(map)).await
    }
}

impl fmt::Debug for SqliteStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStateStore")
            .field("path", &self.config.path)
            .field("durability", &self.config.durability)
            .finish()
    }
}

impl SqliteStateStore {
    /// Opens (or creates) the database and starts the store's thread.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the path cannot be created or opened, the file is not a SQLite
    /// database, or its schema is newer than this release (the file is left untouched);
    /// [`Error::Unavailable`] when another process holds a lock past the busy timeout.
    pub async fn connect(config: SqliteConfig) -> Result<Self> {
        Self::start(config, None).await
    }

    /// Uses a connection you opened (to a file: an in-memory database is not shared and
    /// loses everything on close), with `config`'s busy timeout, durability and sweep. The
    /// store sets WAL mode and creates its tables, then owns the connection: its thread and
    /// small inline writes use it, and it installs a WAL hook that replaces SQLite's
    /// auto-checkpoint (the store thread checkpoints instead).
    ///
    /// # Errors
    ///
    /// As [`SqliteStateStore::connect`].
    pub async fn from_client(conn: Connection, config: SqliteConfig) -> Result<Self> {
        Self::start(config, Some(conn)).await
    }

    async fn start(config: SqliteConfig, conn: Option<Connection>) -> Result<Self> {
        let file = match &conn {
            Some(conn) => conn
                .path()
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            None => Some(config.path.clone()),
        };
        let (sender, receiver) = mpsc::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let writer = Arc::<Writer>::default();
        let thread = Serve {
            writer: Arc::clone(&writer),
            sweep_every: config.sweep_interval,
            busy_timeout: config.busy_timeout,
        };
        let thread_config = config.clone();
        std::thread::Builder::new()
            .name("state-store-sqlite".into())
            .spawn(move || {
                let opened = match conn {
                    Some(conn) => prepare(conn, &thread_config),
                    None => open_connection(&thread_config),
                };
                match opened {
                    Ok(conn) => {
                        *thread.writer.lock() = Some(conn);
                        let _ = ready_tx.send(Ok(()));
                        thread.serve(&receiver);
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            })
            .map_err(|e| Error::config_with("cannot start the SQLite thread", e))?;
        ready_rx.await.map_err(|_| closed())??;
        Ok(SqliteStateStore {
            sender,
            writer,
            queue: Arc::new(Semaphore::new(MAX_QUEUED)),
            config,
            closed: Arc::default(),
            file,
            id: NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// A read of `keys`: up to 64 names on the calling thread, on a read-only connection of
    /// that thread's own (see the crate docs); larger ones on the store thread.
    async fn read<R: Send + 'static>(
        &self,
        keys: &[String],
        read: fn(&Connection, &[String]) -> rusqlite::Result<R>,
    ) -> Result<R> {
        if keys.len() <= INLINE_READ_KEYS {
            if let Some(result) = self.read_inline(|conn| read(conn, keys)) {
                return result;
            }
        }
        let keys = keys.to_vec();
        self.call(move |conn| read(conn, &keys).map_err(map)).await
    }

    /// Runs `f` on the store's thread and awaits its result. A call whose caller has gone (its
    /// future dropped: a timeout, a cancelled task) before the thread reaches it is skipped,
    /// so a write the caller gave up on never runs behind its back; one the thread has
    /// started runs to its end.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let place = Arc::clone(&self.queue)
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let job: Job = Box::new(move |conn| {
            if !tx.is_closed() {
                let _ = tx.send(f(conn));
            }
            drop(place);
        });
        self.sender.send(Message::Job(job)).map_err(|_| closed())?;
        // Most calls finish in a few microseconds. Yielding (not blocking: other tasks run
        // meanwhile) for a short while picks the answer up without the worker going to sleep
        // and being woken, which costs more than the call itself.
        let mut rx = rx;
        let spin_until = Instant::now() + SPIN;
        while Instant::now() < spin_until {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => return Err(closed()),
                Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
            }
        }
        rx.await.map_err(|_| closed())?
    }
}

fn open_connection(config: &SqliteConfig) -> Result<Connection> {
    let path = &config.path;
    if config.create_dirs {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::config_with(format!("cannot create directory {}", parent.display()), e)
            })?;
        }
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::config_with(format!("cannot open {}", path.display()), e))?;
    prepare(conn, config)
}

/// Makes an open connection a store's: busy timeout, WAL, durability, schema.
fn prepare(mut conn: Connection, config: &SqliteConfig) -> Result<Connection> {
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

fn stored_schema_version(conn: &Connection) -> Result<Option<i64>> {
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

fn check_schema(found: i64) -> Result<()> {
    if found > SCHEMA_VERSION {
        return Err(Error::config(format!(
            "the database has state-store schema version {found}, newer than this release's \
             {SCHEMA_VERSION}; upgrade state-store-sqlite (the file was left untouched)"
        )));
    }
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
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
    if found.is_none_or(|v| v < 2) {
        // Version 2: a change feed for watchers, written by triggers in the same transaction
        // as the data, by every process (and every release from 2 on) that writes the file.
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
/// `seq` (never reused), trimmed by age by the sweep.
const CHANGES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS state_store_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        op INTEGER NOT NULL,
        value TEXT,
        version INTEGER,
        at INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS state_store_changes_at ON state_store_changes (at);
    CREATE TRIGGER IF NOT EXISTS state_store_inserted AFTER INSERT ON state_store BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (NEW.key, 0, NEW.value, NEW.version, {now});
    END;
    CREATE TRIGGER IF NOT EXISTS state_store_updated AFTER UPDATE ON state_store BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (NEW.key, 0, NEW.value, NEW.version, {now});
    END;
    CREATE TRIGGER IF NOT EXISTS state_store_deleted AFTER DELETE ON state_store BEGIN
        INSERT INTO state_store_changes (key, op, value, version, at)
        VALUES (OLD.key,
                CASE WHEN OLD.expires_at IS NOT NULL AND OLD.expires_at <= {now} THEN 2 ELSE 1 END,
                NULL, NULL, {now});
    END;";

/// What the store thread works with.
struct Serve {
    writer: Arc<Writer>,
    sweep_every: Duration,
    busy_timeout: Duration,
}

impl Serve {
    /// The store thread: runs jobs in order, checkpoints the WAL and sweeps expired rows
    /// between them.
    fn serve(self, receiver: &mpsc::Receiver<Message>) {
        let mut next_sweep = later(self.sweep_every);
        let mut busy_sweeps = 0;
        loop {
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let message = next_message(receiver, wait);
            let mut writer = self.writer.lock();
            let message = match message {
                Ok(Message::Close(done)) => {
                    if let Some(conn) = writer.take() {
                        if let Err((_, err)) = conn.close() {
                            tracing::warn!(error = %err, "closing the SQLite connection failed");
                        }
                    }
                    let _ = done.send(());
                    return;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                other => other,
            };
            let Some(conn) = writer.as_mut() else { return };
            match message {
                Ok(Message::Job(job)) => {
                    // An inline write may have left its shorter wait on the connection.
                    if let Err(err) = conn.busy_timeout(self.busy_timeout) {
                        tracing::debug!(error = %err, "setting the busy timeout failed");
                    }
                    job(conn);
                }
                Ok(Message::Checkpoint) => {
                    self.writer
                        .checkpoint_asked
                        .store(false, std::sync::atomic::Ordering::Release);
                    checkpoint(conn);
                }
                // A timeout (time to sweep); closing was handled above.
                _ => {}
            }
            if Instant::now() >= next_sweep {
                // After a run of sweeps that found the file busy (another process writing
                // nonstop), one waits as long as a call would, so expired rows and old changes
                // cannot pile up for good.
                let patience = if busy_sweeps < PATIENT_AFTER {
                    SWEEP_BUSY.min(self.busy_timeout)
                } else {
                    self.busy_timeout
                };
                next_sweep = match sweep_waiting(conn, patience, self.busy_timeout) {
                    // A full batch: more rows may have expired. Sweep again as soon as the
                    // calls already waiting have run, so expired rows never pile up faster than
                    // they are deleted, and no call waits behind one long delete.
                    Ok(removed) if removed >= SWEEP_BATCH => {
                        busy_sweeps = 0;
                        Instant::now()
                    }
                    Ok(_) => {
                        busy_sweeps = 0;
                        later(self.sweep_every)
                    }
                    Err(err) => {
                        busy_sweeps += 1;
                        if busy_sweeps > PATIENT_AFTER {
                            tracing::warn!(error = %err, failed = busy_sweeps, "sweeping expired state keeps failing");
                        } else {
                            tracing::debug!(error = %err, "sweeping expired state failed");
                        }
                        later(self.sweep_every)
                    }
                };
            }
            // Whatever committed on this thread (a job, the sweep) may have filled the WAL.
            if checkpoint_due() {
                checkpoint(conn);
            }
        }
    }
}

/// `now + every`, or far in the future when that does not fit an `Instant`.
fn later(every: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(every)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// How long the thread polls for the next call before it sleeps. A caller awaiting one call
/// at a time sends its next one within microseconds of the last answer; catching it while
/// still awake saves the two thread wake-ups (tens of microseconds) a sleep would cost.
const SPIN: Duration = Duration::from_micros(50);

fn next_message(
    receiver: &mpsc::Receiver<Message>,
    wait: Duration,
) -> Result<Message, mpsc::RecvTimeoutError> {
    let spin_until = Instant::now() + SPIN.min(wait);
    while Instant::now() < spin_until {
        match receiver.try_recv() {
            Ok(message) => return Ok(message),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(mpsc::RecvTimeoutError::Disconnected)
            }
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    receiver.recv_timeout(wait.saturating_sub(SPIN))
}

/// How long a sweep usually waits for another connection's write lock before it gives up
/// until the next interval. The calls queued behind it wait as long, so this is short.
const SWEEP_BUSY: Duration = Duration::from_millis(2);
/// Sweeps in a row that may give up that quickly; the next one waits the busy timeout.
const PATIENT_AFTER: u32 = 10;

/// A sweep waiting at most `patience` for the write lock: housekeeping is rarely worth a
/// caller's wait (reads skip expired rows anyway), and the calls queued behind the sweep wait
/// as long as it does. The connection's own busy timeout is restored either way.
fn sweep_waiting(
    conn: &Connection,
    patience: Duration,
    busy_timeout: Duration,
) -> rusqlite::Result<usize> {
    conn.busy_timeout(patience)?;
    let swept = sweep(conn);
    conn.busy_timeout(busy_timeout)?;
    swept
}

fn sweep(conn: &Connection) -> rusqlite::Result<usize> {
    let now = now_ms();
    let retention = i64::try_from(CHANGE_RETENTION.as_millis()).unwrap_or(i64::MAX);
    let trim_before = now.saturating_sub(retention);
    // A read first: when nothing is due (the usual case) the sweep takes no write lock, so it
    // neither waits behind other connections' writes and checkpoints nor makes them wait.
    let due: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM state_store WHERE expires_at <= ?1)
                 OR EXISTS (SELECT 1 FROM state_store_changes WHERE at <= ?2)",
        )?
        .query_row(params![now, trim_before], |row| row.get(0))?;
    if !due {
        return Ok(0);
    }
    let expired = conn
        .prepare_cached(
            "DELETE FROM state_store WHERE key IN (
                 SELECT key FROM state_store WHERE expires_at <= ?1 LIMIT ?2)",
        )?
        .execute(params![now, SWEEP_BATCH as i64])?;
    let trimmed = conn
        .prepare_cached(
            "DELETE FROM state_store_changes WHERE seq IN (
                 SELECT seq FROM state_store_changes WHERE at <= ?1 LIMIT ?2)",
        )?
        .execute(params![trim_before, SWEEP_BATCH as i64])?;
    Ok(expired.max(trimmed))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The deadline of a write made now with `ttl`, in Unix milliseconds, rounded up.
fn deadline(now: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| {
        let ms = ttl.as_nanos().div_ceil(1_000_000);
        now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
    })
}

fn new_version() -> i64 {
    rand::random_range(1..i64::MAX)
}

fn version(v: i64) -> Version {
    Version::new(v.to_string())
}

/// A version that cannot be ours (not a number) matches no row.
/// The data version a caller expects: a read's version, or a watch event's
/// (`<version>@<change>`).
fn expected_version(v: &Version) -> i64 {
    let text = v.as_str();
    let data = text.split_once('@').map_or(text, |(data, _)| data);
    data.parse().unwrap_or(0)
}

/// A row of the change feed: seq, key, op, value, version.
type ChangeRow = (i64, String, i64, Option<String>, Option<i64>);

/// The change number a watch event's version carries.
fn change_of(v: &Version) -> Option<i64> {
    v.as_str().split_once('@')?.1.parse().ok()
}

/// Follows the change feed from `after` on its own read-only connection, until the stream is
/// dropped. Another process's commits show up through `PRAGMA data_version`.
fn watch_feed(
    path: &Path,
    selector: &KeySelector,
    start: Option<i64>,
    tx: &tokio::sync::mpsc::Sender<Result<BackendEvent>>,
    ready: oneshot::Sender<Result<()>>,
    closed: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::config_with(format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(map)?;
    let mut last = match start {
        Some(after) => {
            // Changes after `after` that were trimmed already: the watcher must re-read.
            let (oldest, newest): (Option<i64>, Option<i64>) = conn
                .query_row(
                    "SELECT (SELECT MIN(seq) FROM state_store_changes),
                            (SELECT seq FROM sqlite_sequence WHERE name = 'state_store_changes')",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .map_err(map)?;
            let gap = match oldest {
                Some(oldest) => oldest > after.saturating_add(1),
                None => newest.unwrap_or(0) > after,
            };
            if gap {
                let reason = "changes after that version were trimmed (kept 5 minutes)".to_owned();
                if tx
                    .blocking_send(Ok(BackendEvent::Resync { reason }))
                    .is_err()
                {
                    return Ok(());
                }
            }
            after
        }
        None => conn
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM state_store_changes",
                [],
                |row| row.get(0),
            )
            .map_err(map)?,
    };
    // The starting point is fixed: `watch` may return.
    let _ = ready.send(Ok(()));
    let mut seen_version: Option<i64> = None;
    let mut stmt = conn
        .prepare(
            "SELECT seq, key, op, value, version FROM state_store_changes
             WHERE seq > ?1 ORDER BY seq LIMIT 1000",
        )
        .map_err(map)?;
    while !tx.is_closed() && !closed.load(std::sync::atomic::Ordering::Acquire) {
        let data_version: i64 = conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(map)?;
        if seen_version == Some(data_version) {
            std::thread::sleep(WATCH_POLL);
            continue;
        }
        seen_version = Some(data_version);
        loop {
            let rows: Vec<ChangeRow> = stmt
                .query_map([last], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
                .map_err(map)?
                .collect::<rusqlite::Result<_>>()
                .map_err(map)?;
            let full = rows.len() == 1000;
            // Sequence numbers have no gaps but those the sweep trims: a jump means changes
            // this watcher had not read yet were trimmed (it fell more than 5 minutes behind).
            if rows
                .first()
                .is_some_and(|row| row.0 > last.saturating_add(1))
            {
                let reason = "changes were trimmed before this watcher read them".to_owned();
                if tx
                    .blocking_send(Ok(BackendEvent::Resync { reason }))
                    .is_err()
                {
                    return Ok(());
                }
            }
            for (seq, key, op, value, version) in rows {
                last = seq;
                if !selector.matches(&key) {
                    continue;
                }
                let event = match (op, value, version) {
                    (0, Some(value), Some(version)) => BackendEvent::Put {
                        key,
                        value: value.into_bytes(),
                        version: Version::new(format!("{version}@{seq}")),
                    },
                    (op, _, _) => BackendEvent::Removed {
                        key,
                        cause: if op == 2 {
                            RemoveCause::Expired
                        } else {
                            RemoveCause::Removed
                        },
                        version: Some(Version::new(format!("-@{seq}"))),
                    },
                };
                if tx.blocking_send(Ok(event)).is_err() {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(())
}

fn text(value: Vec<u8>) -> Result<String> {
    String::from_utf8(value).map_err(|e| Error::backend(STORE, e))
}

fn read_value(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
        ValueRef::Null => b"null".to_vec(),
    }
}

fn get_many(conn: &Connection, keys: &[String]) -> rusqlite::Result<Vec<Option<Entry>>> {
    read_live(conn, keys, |row, now| {
        let expires_at: Option<i64> = row.get(3)?;
        Ok(Entry {
            value: read_value(row.get_ref(1)?),
            version: version(row.get(2)?),
            expires_in: expires_at
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0))),
        })
    })
}

/// The values alone: no version string per row.
fn get_values(conn: &Connection, keys: &[String]) -> rusqlite::Result<Vec<Option<Vec<u8>>>> {
    read_live(conn, keys, |row, _| Ok(read_value(row.get_ref(1)?)))
}

/// Chunks up to this many keys find a row's place by scanning the chunk, larger ones through
/// a map.
const SCAN_CHUNK: usize = 16;

/// `read(row)` for each live row among `keys`, in the caller's order (`None`: missing or
/// expired; a name asked twice is answered twice).
fn read_live<T: Clone>(
    conn: &Connection,
    keys: &[String],
    mut read: impl FnMut(&rusqlite::Row<'_>, i64) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<Option<T>>> {
    let now = now_ms();
    let mut found: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
    for (c, chunk) in keys.chunks(READ_CHUNK).enumerate() {
        let out = &mut found[c * READ_CHUNK..][..chunk.len()];
        // The first place of each key; later duplicates are copied from it below.
        let places: Option<HashMap<&[u8], usize>> = (chunk.len() > SCAN_CHUNK).then(|| {
            chunk
                .iter()
                .enumerate()
                .rev()
                .map(|(i, k)| (k.as_bytes(), i))
                .collect()
        });
        let place = |key: &[u8]| match &places {
            Some(places) => places.get(key).copied(),
            None => chunk.iter().position(|k| k.as_bytes() == key),
        };
        let mut stmt = conn.prepare_cached(&select_sql(chunk.len()))?;
        let params = chunk
            .iter()
            .map(|k| k as &dyn rusqlite::ToSql)
            .chain(std::iter::once(&now as &dyn rusqlite::ToSql));
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let ValueRef::Text(key) = row.get_ref(0)? else {
                continue;
            };
            if let Some(i) = place(key) {
                out[i] = Some(read(row, now)?);
            }
        }
        for i in 0..chunk.len() {
            if out[i].is_none() {
                if let Some(first) = place(chunk[i].as_bytes()).filter(|&first| first != i) {
                    out[i] = out[first].clone();
                }
            }
        }
    }
    Ok(found)
}

/// The `SELECT` for `n` keys: built once for the sizes inline reads use.
fn select_sql(n: usize) -> std::borrow::Cow<'static, str> {
    fn build(n: usize) -> String {
        let placeholders = vec!["?"; n].join(",");
        format!(
            "SELECT key, value, version, expires_at FROM state_store
             WHERE key IN ({placeholders}) AND (expires_at IS NULL OR expires_at > ?)"
        )
    }
    static SMALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| (0..=INLINE_READ_KEYS).map(build).collect());
    match small.get(n) {
        Some(sql) => std::borrow::Cow::Borrowed(sql.as_str()),
        None => std::borrow::Cow::Owned(build(n)),
    }
}

/// The smallest byte string above every string starting with `prefix` (UTF-8 never holds
/// 0xFF, so bumping the last byte suffices); `None` for an empty prefix.
fn upper_bound(prefix: &str) -> Option<Vec<u8>> {
    let mut bound = prefix.as_bytes().to_vec();
    let last = bound.last_mut()?;
    *last = last.saturating_add(1);
    Some(bound)
}

/// Live keys starting with `prefix`, after `after`, in byte order (keyset pagination on the
/// primary key).
fn list_keys(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<KeyPage> {
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM state_store
         WHERE key >= ?1 AND (?2 IS NULL OR key < CAST(?2 AS TEXT)) AND (?3 IS NULL OR key > ?3)
           AND (expires_at IS NULL OR expires_at > ?4)
         ORDER BY key LIMIT ?5",
    )?;
    let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut keys: Vec<String> = stmt
        .query_map(
            rusqlite::params![prefix, upper_bound(prefix), after, now_ms(), fetch],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next = more.then(|| keys.last().cloned()).flatten();
    Ok(KeyPage::new(keys, next))
}

/// The new version, or `None` when the condition did not hold.
fn set(
    conn: &Connection,
    key: &str,
    value: &str,
    options: &SetOptions,
) -> rusqlite::Result<Option<i64>> {
    let now = now_ms();
    let expires_at = deadline(now, options.ttl);
    let next = new_version();
    let written = match &options.mode {
        SetMode::Upsert if options.keep_ttl => conn
            .prepare_cached(sql::UPSERT_KEEP_TTL)
            .and_then(|mut s| s.execute(params![key, value, next, expires_at, now])),
        SetMode::Upsert => conn
            .prepare_cached(sql::UPSERT)
            .and_then(|mut s| s.execute(params![key, value, next, expires_at])),
        // An expired row counts as absent: it is replaced.
        SetMode::Create => conn
            .prepare_cached(
                "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET
                     value = excluded.value, version = excluded.version,
                     expires_at = excluded.expires_at
                 WHERE state_store.expires_at <= ?5",
            )
            .and_then(|mut s| s.execute(params![key, value, next, expires_at, now])),
        SetMode::Update(expected) => conn
            .prepare_cached(
                "UPDATE state_store SET value = ?2, version = ?3,
                     expires_at = CASE WHEN ?7 THEN expires_at ELSE ?4 END
                 WHERE key = ?1 AND version = ?5 AND (expires_at IS NULL OR expires_at > ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key,
                    value,
                    next,
                    expires_at,
                    expected_version(expected),
                    now,
                    options.keep_ttl
                ])
            }),
    }?;
    Ok((written > 0).then_some(next))
}

fn remove(conn: &Connection, key: &str, expected: Option<&Version>) -> rusqlite::Result<bool> {
    let now = now_ms();
    match expected {
        None => conn
            .prepare_cached(
                "DELETE FROM state_store WHERE key = ?1 RETURNING expires_at IS NULL OR expires_at > ?2",
            )
            .and_then(|mut s| returning(&mut s, params![key, now], |row| row.get::<_, bool>(0)))
            .map(|live| live.unwrap_or(false)),
        Some(expected) => conn
            .prepare_cached(
                "DELETE FROM state_store
                 WHERE key = ?1 AND version = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
            )
            .and_then(|mut s| s.execute(params![key, expected_version(expected), now]))
            .map(|n| n > 0),
    }
}

/// One statement: insert the counter, or add to it when it is a live canonical integer and the
/// sum stays an integer (SQLite turns an overflowing sum into a REAL). An expired row restarts.
/// `None`: the stored value is not an integer, or the sum overflows.
fn increment(
    conn: &Connection,
    key: &str,
    delta: i64,
    ttl: Option<Duration>,
) -> rusqlite::Result<Option<i64>> {
    let now = now_ms();
    returning(
        &mut *conn.prepare_cached(sql::INCREMENT)?,
        params![key, delta, new_version(), deadline(now, ttl), now],
        |row| row.get::<_, i64>(0),
    )
}

#[async_trait]
impl Backend for SqliteStateStore {
    fn name(&self) -> &str {
        STORE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
            .with_list(true)
            .with_watch(WatchSupport::Resumable)
            .with_max_value_len(256 * 1024 * 1024)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        self.read(keys, get_many).await
    }

    async fn get_values(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(keys, get_values).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, options: &SetOptions) -> Result<Version> {
        let value = text(value)?;
        let args = (key.to_owned(), value, options.clone());
        let written = self
            .write(args.1.len(), args, |conn, (key, value, options)| {
                set(conn, key, value, options)
            })
            .await?;
        written.map(version).ok_or_else(|| Error::Conflict {
            key: key.to_owned(),
        })
    }

    async fn remove(&self, key: &str, expected: Option<&Version>) -> Result<bool> {
        let args = (key.to_owned(), expected.cloned());
        self.write(0, args, |conn, (key, expected)| {
            remove(conn, key, expected.as_ref())
        })
        .await
    }

    async fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64> {
        let sum = self
            .write(
                0,
                (key.to_owned(), delta, ttl),
                |conn, (key, delta, ttl)| increment(conn, key, *delta, *ttl),
            )
            .await?;
        sum.ok_or_else(|| Error::NotAnInteger {
            key: key.to_owned(),
        })
    }

    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.call(move |conn| list_keys(conn, &prefix, after.as_deref(), limit).map_err(map))
            .await
    }

    /// The change feed (see the crate docs): resumable from any event's version for as long
    /// as changes are kept (5 minutes); older than that, the watch starts with `Resync`.
    async fn watch(&self, selector: &KeySelector, start: &WatchStart) -> Result<WatchStream> {
        let after = match start {
            WatchStart::Now => None,
            WatchStart::AfterVersion(version) => Some(change_of(version).ok_or_else(|| {
                Error::invalid_key(version.as_str(), "not a version a watch reported")
            })?),
            _ => return Err(Error::unsupported(STORE, "this watch start")),
        };
        let Some(path) = self.file.clone() else {
            return Err(Error::unsupported(STORE, "watching an in-memory database"));
        };
        let selector = selector.clone();
        let closed = Arc::clone(&self.closed);
        let (tx, stream) = watch_channel(256);
        // The starting point is read before this returns: no later change is missed.
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("state-store-sqlite-watch".into())
            .spawn(move || {
                let (errors, ready) = (tx.clone(), ready_tx);
                if let Err(err) = watch_feed(&path, &selector, after, &tx, ready, &closed) {
                    let _ = errors.blocking_send(Err(err));
                }
            })
            .map_err(|e| Error::config_with("cannot start a SQLite watch thread", e))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(err)) => Err(err),
            // The thread failed before it started: the error is in the stream.
            Err(_) => Ok(stream),
        }
    }

    async fn close(&self) -> Result<()> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Message::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    /// What runs inline and what goes to the store thread.
    #[tokio::test]
    async fn small_writes_run_inline_and_the_rest_go_to_the_thread() {
        let dir = state_store_testkit::harness::temp_dir("sqlite-inline");
        let config = SqliteConfig::new(dir.path().join("state.db"));
        let store = SqliteStateStore::connect(config.clone())
            .await
            .expect("open");
        let small = store.write_inline(10, |conn| increment(conn, "n", 1, None));
        assert!(matches!(small, Some(Ok(Some(1)))), "{small:?}");
        assert!(store
            .write_inline(INLINE_WRITE_BYTES + 1, |_| Ok(()))
            .is_none());
        {
            // Another user of the connection: the caller does not wait for it.
            let _held = store.writer.conn.lock().expect("lock");
            assert!(store.write_inline(10, |_| Ok(())).is_none());
        }
        // Nor does it jump ahead of the store thread waiting for the connection.
        let waiting = &store.writer.thread_waiting;
        waiting.store(true, std::sync::atomic::Ordering::Release);
        assert!(store.write_inline(10, |_| Ok(())).is_none());
        waiting.store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(store.increment("n", 1, None).await.expect("increment"), 2);
        store.close().await.expect("close");
        assert!(matches!(
            store.write_inline(10, |_| Ok(())),
            Some(Err(Error::Closed { .. }))
        ));

        // Every commit syncs with `Durability::Full`: never on the caller's thread.
        let full = SqliteStateStore::connect(config.with_durability(Durability::Full))
            .await
            .expect("open");
        assert!(full.write_inline(10, |_| Ok(())).is_none());
        full.close().await.expect("close");
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond() {
        assert_eq!(deadline(1000, Some(Duration::from_micros(1))), Some(1001));
        assert_eq!(deadline(1000, Some(Duration::from_millis(5))), Some(1005));
        assert_eq!(deadline(1000, None), None);
        assert_eq!(deadline(1000, Some(Duration::MAX)), Some(i64::MAX));
    }
}
