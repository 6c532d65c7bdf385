//! The read-write connection shared by the store thread and inline writers, and the WAL checkpoints that keep its log bounded.

use super::*;

pub(super) type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub(super) enum Message {
    Job(Job),
    /// Inline writes filled the WAL: checkpoint it (see [`CHECKPOINT_PAGES`]).
    Checkpoint,
    Close(oneshot::Sender<()>),
}

/// The store's one read-write connection, shared by the store thread and by callers that
/// write inline while it is free.
#[derive(Default)]
pub(super) struct Writer {
    /// `None` once the store is closed.
    pub(super) conn: std::sync::Mutex<Option<Connection>>,
    /// Set while the store thread waits for `conn`: inline writers leave it alone then, so a
    /// stream of them cannot keep jumping ahead of the thread (a `Mutex` is not fair).
    pub(super) thread_waiting: std::sync::atomic::AtomicBool,
    /// Set when an inline write asked the thread for a checkpoint it has not run yet.
    pub(super) checkpoint_asked: std::sync::atomic::AtomicBool,
}

impl Writer {
    /// The connection, for the store thread.
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
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
    pub(super) fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, Option<Connection>>> {
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
pub(super) const CHECKPOINT_PAGES: i32 = 1000;

thread_local! {
    /// The WAL's size after this thread's last commit on a store's writer (set by the WAL hook).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The writer's WAL hook: notes the WAL's size for whoever committed. It replaces SQLite's
/// auto-checkpoint, so commits never checkpoint on the committing thread.
pub(super) fn note_wal_pages(
    _: &rusqlite::hooks::Wal,
    pages: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// The first row a `RETURNING` statement gives, after running it to its end. A statement
/// commits, reports a failed commit and calls the WAL hook only when stepping reaches its end;
/// `query_row` stops after one row and resets it, which commits silently.
pub(super) fn returning<T>(
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
pub(super) fn checkpoint_due() -> bool {
    WAL_PAGES.take() >= CHECKPOINT_PAGES
}

/// Checkpoints the WAL on the store thread. PASSIVE: copies what it can without waiting for
/// readers or writers.
///
/// When it copied everything, the next write starts the WAL over, and SQLite syncs the new WAL
/// header on that write: one tiny write here makes that happen on this thread rather than in
/// a caller's inline write (unless a reader still holds the old WAL; then a later write
/// restarts it).
pub(super) fn checkpoint(conn: &Connection) {
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
pub(super) fn busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}
