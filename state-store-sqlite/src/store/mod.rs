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
    watch_channel, AcquireLease, Backend, BackendEvent, Capabilities, Entry, Error, Extensions,
    Increment, KeyPage, KeySelector, LeaseAcquire, LeaseGrant, ListKeys, RemoveCause, Result,
    SetMode, SetOptions, Version, WatchKeys, WatchStart, WatchStream, WatchSupport,
};
use tokio::sync::{oneshot, Semaphore};

use crate::config::{Durability, SqliteConfig};
use crate::error::{closed, map, STORE};

/// The schema this version writes. A database with a higher one was written by a newer
/// release and is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 3;
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

mod feed;
mod rows;
mod schema;
mod serve;
mod writer;

use feed::*;
pub use rows::sql;
use rows::*;
use schema::*;
use serve::*;
use writer::*;

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

#[async_trait]
impl Backend for SqliteStateStore {
    fn name(&self) -> &str {
        STORE
    }

    fn capabilities(&self) -> Capabilities {
        // The change feed is read from the file: an in-memory database has none.
        let watch = match self.file {
            Some(_) => WatchSupport::Resumable,
            None => WatchSupport::None,
        };
        Capabilities::full()
            .with_list(true)
            .with_watch(watch)
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

    async fn close(&self) -> Result<()> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Message::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    fn extensions(&self) -> Extensions<'_> {
        let extensions = Extensions::none()
            .with_increment(self)
            .with_list(self)
            .with_lease(self);
        match self.file {
            Some(_) => extensions.with_watch(self),
            None => extensions,
        }
    }
}

#[async_trait]
impl Increment for SqliteStateStore {
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
}

#[async_trait]
impl AcquireLease for SqliteStateStore {
    /// One immediate transaction, committed with `synchronous = FULL` whatever the store's
    /// [`Durability`]: fencing tokens never repeat, even across a power cut.
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let lease = LeaseTxn {
            record_key: request.record_key.to_owned(),
            counter_key: request.counter_key.to_owned(),
            record: request.record_around_token(),
            ttl: request.ttl,
        };
        let full = self.config.durability == Durability::Full;
        let outcome = self
            .call(move |conn| acquire_lease(conn, &lease, full).map_err(map))
            .await?;
        match outcome {
            LeaseOutcome::Granted(token, v) => Ok(LeaseGrant::Granted {
                token,
                version: version(v),
            }),
            LeaseOutcome::Held => Ok(LeaseGrant::Held),
            LeaseOutcome::BadCounter => Err(Error::NotAnInteger {
                key: request.counter_key.to_owned(),
            }),
        }
    }
}

#[async_trait]
impl ListKeys for SqliteStateStore {
    async fn list_keys(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<KeyPage> {
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.call(move |conn| list_keys(conn, &prefix, after.as_deref(), limit).map_err(map))
            .await
    }
}

#[async_trait]
impl WatchKeys for SqliteStateStore {
    /// The change feed (see the crate docs), held open while the watch runs: resumable from
    /// any event's version for as long as changes are kept (5 minutes) and some watch held
    /// the feed since; otherwise the watch starts with `Resync`.
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

    /// A lease is one native transaction (held, then taken with the next token once free),
    /// and the connection is back at the store's durability afterwards. That the transaction
    /// commits with `synchronous = FULL` is by construction: a power cut cannot be staged here.
    #[tokio::test]
    async fn leases_are_one_transaction_and_durability_is_restored() {
        let dir = state_store_testkit::harness::temp_dir("sqlite-lease");
        let store = SqliteStateStore::connect(SqliteConfig::new(dir.path().join("s.db")))
            .await
            .expect("open");
        let lease = store.extensions().lease.expect("a native lease");
        let request = |nonce| LeaseAcquire::new("r", "c", "ada", nonce, Duration::from_millis(50));
        let tokens = [
            lease.acquire_lease(&request("1")).await,
            lease.acquire_lease(&request("2")).await,
        ];
        assert!(
            matches!(
                tokens,
                [
                    Ok(LeaseGrant::Granted { token: 1, .. }),
                    Ok(LeaseGrant::Held)
                ]
            ),
            "{tokens:?}"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let again = lease.acquire_lease(&request("3")).await;
        assert!(
            matches!(again, Ok(LeaseGrant::Granted { token: 2, .. })),
            "{again:?}"
        );
        let record = store.get_many(&["r".to_owned()]).await.expect("read");
        let value = record[0]
            .as_ref()
            .map(|e| String::from_utf8_lossy(&e.value).into_owned());
        assert_eq!(
            value.as_deref(),
            Some(r#"{"holder":"ada","nonce":"3","token":2}"#)
        );
        let synchronous: i64 = store
            .writer
            .conn
            .lock()
            .expect("lock")
            .as_ref()
            .expect("open")
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("pragma");
        assert_eq!(synchronous, 1, "NORMAL again after the lease");
        store.close().await.expect("close");
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond() {
        assert_eq!(deadline(1000, Some(Duration::from_micros(1))), Some(1001));
        assert_eq!(deadline(1000, Some(Duration::from_millis(5))), Some(1005));
        assert_eq!(deadline(1000, None), None);
        assert_eq!(deadline(1000, Some(Duration::MAX)), Some(i64::MAX));
    }
}
