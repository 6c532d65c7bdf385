//! Watching: the change feed, read in order up to a fence, woken by `LISTEN`.
//!
//! While some watch holds the feed open (a deadline it renews, kept in a sequence), every
//! write also inserts its change into `<table>_changes`, numbered by the version sequence, in
//! the same statement. Numbers are taken in one order and committed in another, so a watcher
//! never reads past a *fence*: the sequence's value at a moment it held the feed lock
//! exclusively, which every write holds shared from before it takes its number until it
//! commits. Every change up to the fence is then final, and read in number order; a key's
//! versions grow in commit order, so each key's changes arrive in the order they happened.
//! `NOTIFY` (sent by writes while the feed is held) only wakes the watcher early; a tick reads
//! the feed anyway, so a lost notification costs latency, never a change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use state_store_core::{
    watch_channel, BackendEvent, Error, KeySelector, RemoveCause, Result, Version, WatchStart,
    WatchStream,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::error::STORE;
use crate::schema::{op, Sql};
use crate::store::query;

/// How long one hold keeps the feed open; watches renew it at a third of that.
pub(crate) const FEED_HOLD: Duration = Duration::from_secs(60);
/// How long changes are kept: a watch resumes from a version at most this old.
pub(crate) const RETENTION: Duration = Duration::from_secs(300);
/// Changes read per query.
const PAGE: i64 = 1000;
/// How often a watch reads the feed (and sweeps expired entries, so their expiry is
/// reported) when no notification woke it: with `LISTEN`, and without.
const TICK: Duration = Duration::from_secs(1);
const TICK_UNHEARD: Duration = Duration::from_millis(250);
/// The least time between two reads of the feed.
const MIN_PASS: Duration = Duration::from_millis(20);
/// How often a watch tries again to `LISTEN` when it cannot.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// What a watch needs of the store.
#[derive(Clone)]
pub(crate) struct Feed {
    pub(crate) pool: Pool,
    pub(crate) sql: Arc<Sql>,
    pub(crate) timeout: Duration,
    pub(crate) closed: Arc<AtomicBool>,
    /// Opens the connection that `LISTEN`s; `None` for a pool of the caller's (the watch then
    /// polls).
    pub(crate) listen: Option<Arc<dyn Listen>>,
}

/// Opens a connection outside the pool (a pooled one drops notifications) that `LISTEN`s on
/// `channel` and calls `wake` for each notification, until it breaks or `stop` fires.
pub(crate) trait Listen: Send + Sync {
    fn listen(
        &self,
        channel: String,
        wake: Arc<Notify>,
        stop: mpsc::Sender<Result<BackendEvent>>,
    ) -> tokio::task::JoinHandle<()>;
}

/// A [`Listen`] on a tokio-postgres config and TLS connector.
pub(crate) struct Listener<T> {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: T,
}

impl<T> Listen for Listener<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    fn listen(
        &self,
        channel: String,
        wake: Arc<Notify>,
        stop: mpsc::Sender<Result<BackendEvent>>,
    ) -> tokio::task::JoinHandle<()> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        tokio::spawn(async move {
            let Ok((client, mut connection)) = config.connect(tls).await else {
                return;
            };
            // The connection delivers notifications only to whoever polls it.
            let messages = async {
                while let Some(Ok(message)) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    if let tokio_postgres::AsyncMessage::Notification(_) = message {
                        wake.notify_one();
                    }
                }
            };
            let subscribe = async {
                if client
                    .batch_execute(&format!("LISTEN \"{channel}\""))
                    .await
                    .is_ok()
                {
                    // Changes made while subscribing: read the feed once more.
                    wake.notify_one();
                    stop.closed().await;
                }
            };
            tokio::select! {
                () = messages => {}
                () = subscribe => {}
            }
        })
    }
}

impl Feed {
    /// A pooled connection's answer to `sql`, within the request timeout.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        // A watch's statements change nothing a caller wrote: a lost answer is only
        // `Unavailable`.
        let deadline = Instant::now() + self.timeout;
        query(&self.pool, &self.closed, deadline, sql, params, false).await
    }

    /// Holds the feed open for [`FEED_HOLD`] more.
    async fn hold(&self) -> Result<()> {
        let ms = i64::try_from(FEED_HOLD.as_millis()).unwrap_or(i64::MAX);
        self.query(&self.sql.hold, &[&ms]).await.map(drop)
    }

    /// The highest change number whose change is final.
    async fn fence(&self) -> Result<i64> {
        let rows = self.query(&self.sql.fence, &[]).await?;
        first_i64(&rows)
    }

    /// The sequence's value now, without the lock.
    async fn last_value(&self) -> Result<i64> {
        let rows = self.query(&self.sql.last_value, &[]).await?;
        first_i64(&rows)
    }

    /// Deletes expired entries (their expiry goes to the feed).
    async fn sweep(&self) -> Result<()> {
        self.query(&self.sql.sweep, &[&PAGE]).await.map(drop)
    }

    /// Starts a watch: holds the feed, fixes the starting point, and follows from there.
    pub(crate) async fn watch(
        &self,
        selector: &KeySelector,
        start: &WatchStart,
    ) -> Result<WatchStream> {
        let after = match start {
            WatchStart::Now => None,
            WatchStart::AfterVersion(version) => Some(change_of(version)?),
            _ => return Err(Error::unsupported(STORE, "this watch start")),
        };
        // Held before the starting point is read: every change after it is recorded. A
        // resumed watch whose version precedes a lapse finds the gap mark above it.
        self.hold().await?;
        let now = self.fence().await?;
        let (tx, stream) = watch_channel(256);
        let last = match after {
            // A version this table has not reached (another table's, a restored database's):
            // nothing after it can be vouched for.
            Some(after) if after > now => {
                let reason = "that version is ahead of this table's changes";
                let _ = tx
                    .send(Ok(BackendEvent::Resync {
                        reason: reason.to_owned(),
                    }))
                    .await;
                now
            }
            Some(after) => after,
            None => now,
        };
        // The hold is renewed by a task of its own: a slow consumer or a long backlog must
        // not let it lapse.
        let (feed, renewals) = (self.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(FEED_HOLD / 3) => {}
                    () = renewals.closed() => return,
                }
                if feed.closed.load(Ordering::Acquire) {
                    return;
                }
                // A renewal that fails is made up by a later one; should the hold lapse
                // meanwhile, the gap mark that renewal sets becomes a `Resync`.
                if let Err(err) = feed.hold().await {
                    tracing::debug!(error = %err, "postgres watch: renewing the feed failed");
                }
            }
        });
        let mut follower = Follower {
            feed: self.clone(),
            selector: selector.clone(),
            tx,
            last,
        };
        tokio::spawn(async move { follower.run().await });
        Ok(stream)
    }
}

/// One watch's task.
struct Follower {
    feed: Feed,
    selector: KeySelector,
    tx: mpsc::Sender<Result<BackendEvent>>,
    /// The last change number read.
    last: i64,
}

impl Follower {
    async fn run(&mut self) {
        let wake = Arc::new(Notify::new());
        let mut listening: Option<tokio::task::JoinHandle<()>> = None;
        let mut listened_at: Option<Instant> = None;
        let mut swept_at: Option<Instant> = None;
        loop {
            if self.tx.is_closed() || self.feed.closed.load(Ordering::Acquire) {
                break;
            }
            // (Re)connect the listener, at most every few seconds when it keeps failing.
            if let Some(listen) = &self.feed.listen {
                let down = listening
                    .as_ref()
                    .is_none_or(tokio::task::JoinHandle::is_finished);
                if down && listened_at.is_none_or(|at| at.elapsed() >= LISTEN_RETRY) {
                    listened_at = Some(Instant::now());
                    listening = Some(listen.listen(
                        self.feed.sql.channel.clone(),
                        Arc::clone(&wake),
                        self.tx.clone(),
                    ));
                }
            }
            // Errors (a server away) are retried at the next tick: the feed keeps every
            // change until this watch reads it.
            if swept_at.is_none_or(|at| at.elapsed() >= TICK) {
                swept_at = Some(Instant::now());
                if let Err(err) = self.feed.sweep().await {
                    tracing::debug!(error = %err, "postgres watch: sweep failed");
                }
            }
            let read_at = Instant::now();
            match self.read().await {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => tracing::debug!(error = %err, "postgres watch: read failed"),
            }
            let tick = if listening.as_ref().is_some_and(|l| !l.is_finished()) {
                TICK
            } else {
                TICK_UNHEARD
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(tick) => {}
                () = self.tx.closed() => break,
            }
            // A fence stalls writes for an instant: under a stream of notifications, one
            // pass per MIN_PASS at most; after a quiet spell, the first one at once.
            tokio::time::sleep_until(read_at + MIN_PASS).await;
        }
        if let Some(listening) = listening {
            listening.abort();
        }
    }

    /// Delivers every final change after `last`; `Ok(false)` once the watch is dropped.
    async fn read(&mut self) -> Result<bool> {
        // The fence stalls writes for a moment: take it only when the sequence moved.
        if self.feed.last_value().await? <= self.last {
            return Ok(true);
        }
        let upto = self.feed.fence().await?;
        loop {
            let rows = self
                .feed
                .query(&self.feed.sql.read_changes, &[&self.last, &upto, &PAGE])
                .await?;
            let mut read = 0;
            for (i, row) in rows.iter().enumerate() {
                let decode = |e| Error::backend(STORE, e);
                if i == 0 {
                    // Changes after `last` that were trimmed (the watch fell more than 5
                    // minutes behind, or resumed from an older version), or a gap mark above
                    // it: changes before it went unrecorded while the feed lapsed (a resume
                    // from before it, or a watch whose renewals failed for a whole hold).
                    // Either way the watcher re-reads, and this follows on from there.
                    let trimmed: i64 = row.try_get(0).map_err(decode)?;
                    let gap: i64 = row.try_get(1).map_err(decode)?;
                    for (mark, reason) in [
                        (
                            trimmed,
                            "changes after that version were trimmed (kept 5 minutes)",
                        ),
                        (gap, "changes were not recorded while nobody watched"),
                    ] {
                        if mark > self.last {
                            self.last = mark;
                            let resync = BackendEvent::Resync {
                                reason: reason.to_owned(),
                            };
                            if !self.send(resync).await {
                                return Ok(false);
                            }
                        }
                    }
                }
                let Some(seq) = row.try_get::<_, Option<i64>>(2).map_err(decode)? else {
                    continue;
                };
                read += 1;
                if seq <= self.last {
                    continue;
                }
                let key: Vec<u8> = row.try_get(3).map_err(decode)?;
                let kind: i16 = row.try_get(4).map_err(decode)?;
                let value: Option<String> = row.try_get(5).map_err(decode)?;
                self.last = seq;
                let Some(event) = event(seq, key, kind, value) else {
                    continue;
                };
                if self.selector.selects(&event) && !self.send(event).await {
                    return Ok(false);
                }
            }
            if read < PAGE {
                self.last = self.last.max(upto);
                return Ok(true);
            }
        }
    }

    async fn send(&self, event: BackendEvent) -> bool {
        self.tx.send(Ok(event)).await.is_ok()
    }
}

/// The event a change row stands for; `None` for a key that is not UTF-8 (not written by
/// this library).
fn event(seq: i64, key: Vec<u8>, kind: i16, value: Option<String>) -> Option<BackendEvent> {
    let key = String::from_utf8(key).ok()?;
    let version = Version::new(seq.to_string());
    Some(match (kind, value) {
        (op::PUT, Some(value)) => BackendEvent::Put {
            key,
            value: value.into_bytes(),
            version,
        },
        (kind, _) => BackendEvent::Removed {
            key,
            cause: if kind == op::EXPIRED {
                RemoveCause::Expired
            } else {
                RemoveCause::Removed
            },
            version: Some(version),
        },
    })
}

/// The change number a watch event's version carries.
fn change_of(version: &Version) -> Result<i64> {
    version
        .as_str()
        .parse()
        .ok()
        .filter(|n: &i64| *n >= 0)
        .ok_or_else(|| Error::invalid_key(version.as_str(), "not a version a watch reported"))
}

fn first_i64(rows: &[tokio_postgres::Row]) -> Result<i64> {
    rows.first()
        .map_or(Ok(0), |row| row.try_get(0))
        .map_err(|e| Error::backend(STORE, e))
}
