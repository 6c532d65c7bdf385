//! The store thread: jobs in order, checkpoints and the sweep of expired rows between them.

use super::*;

/// What the store thread works with.
pub(super) struct Serve {
    pub(super) writer: Arc<Writer>,
    pub(super) sweep_every: Duration,
    pub(super) busy_timeout: Duration,
}

impl Serve {
    /// The store thread: runs jobs in order, checkpoints the WAL and sweeps expired rows
    /// between them.
    pub(super) fn serve(self, receiver: &mpsc::Receiver<Message>) {
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
pub(super) fn later(every: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(every)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// How long the thread polls for the next call before it sleeps. A caller awaiting one call
/// at a time sends its next one within microseconds of the last answer; catching it while
/// still awake saves the two thread wake-ups (tens of microseconds) a sleep would cost.
pub(super) const SPIN: Duration = Duration::from_micros(50);

pub(super) fn next_message(
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
pub(super) const SWEEP_BUSY: Duration = Duration::from_millis(2);
/// Sweeps in a row that may give up that quickly; the next one waits the busy timeout.
pub(super) const PATIENT_AFTER: u32 = 10;

/// A sweep waiting at most `patience` for the write lock: housekeeping is rarely worth a
/// caller's wait (reads skip expired rows anyway), and the calls queued behind the sweep wait
/// as long as it does. The connection's own busy timeout is restored either way.
pub(super) fn sweep_waiting(
    conn: &Connection,
    patience: Duration,
    busy_timeout: Duration,
) -> rusqlite::Result<usize> {
    conn.busy_timeout(patience)?;
    let swept = sweep(conn);
    conn.busy_timeout(busy_timeout)?;
    swept
}

pub(super) fn sweep(conn: &Connection) -> rusqlite::Result<usize> {
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
