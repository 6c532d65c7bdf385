//! The change feed a watch follows, on a read-only connection of its own.

use super::*;

/// A row of the change feed: seq, key, op, value, version.
pub(super) type ChangeRow = (i64, String, i64, Option<String>, Option<i64>);

/// The change number a watch event's version carries.
pub(super) fn change_of(v: &Version) -> Option<i64> {
    v.as_str().split_once('@')?.1.parse().ok()
}

/// Follows the change feed from `after` on its own connection, until the stream is dropped,
/// holding the feed open meanwhile ([`hold_feed`]). Another process's commits show up through
/// `PRAGMA data_version`.
pub(super) fn watch_feed(
    path: &Path,
    selector: &KeySelector,
    start: Option<i64>,
    tx: &tokio::sync::mpsc::Sender<Result<BackendEvent>>,
    ready: oneshot::Sender<Result<()>>,
    closed: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    // Read-write, and never creating: it only renews the feed's hold.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::config_with(format!("cannot open {}", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(map)?;
    // Open before the starting point is read: every change after it is recorded.
    hold_feed(&mut conn)?;
    let mut held_at = Instant::now();
    let mut lapse_reported = false;
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
    while !tx.is_closed() && !closed.load(std::sync::atomic::Ordering::Acquire) {
        if held_at.elapsed() >= FEED_HOLD / 3 {
            // A renewal that fails (the file busy past the timeout) is made up by the next:
            // if the hold lapses meanwhile, the gap row it writes turns into a `Resync`.
            if hold_feed(&mut conn).is_ok() {
                held_at = Instant::now();
                lapse_reported = false;
            } else if held_at.elapsed() >= FEED_HOLD && !lapse_reported {
                // Renewals keep failing and the hold has lapsed: changes may go unrecorded
                // from here on, so this watcher cannot vouch for completeness.
                lapse_reported = true;
                let reason = "the change feed could not be held open".to_owned();
                if tx
                    .blocking_send(Ok(BackendEvent::Resync { reason }))
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        let data_version: i64 = conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(map)?;
        if seen_version == Some(data_version) {
            std::thread::sleep(WATCH_POLL);
            continue;
        }
        seen_version = Some(data_version);
        loop {
            let rows: Vec<ChangeRow> = conn
                .prepare_cached(
                    "SELECT seq, key, op, value, version FROM state_store_changes
                     WHERE seq > ?1 ORDER BY seq LIMIT 1000",
                )
                .map_err(map)?
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
                if op == 3 {
                    // Nobody watched for a while: changes then were not recorded.
                    let reason = "changes were not recorded while nobody watched".to_owned();
                    if tx
                        .blocking_send(Ok(BackendEvent::Resync { reason }))
                        .is_err()
                    {
                        return Ok(());
                    }
                    continue;
                }
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
