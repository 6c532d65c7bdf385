//! Leader election over leases: [`StateStore::elect`], and following it without campaigning:
//! [`StateStore::observe_leader`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::lease::{
    holder_and_token, holder_in, poll_pause, FencingToken, LeaseRequest, RecordWatch, Wake,
};
use crate::listing::WatchEvent;
use crate::store::StateStore;

#[cfg(doc)]
use crate::Error;

impl StateStore {
    /// Campaigns for leadership of `name` as `candidate` until the returned [`Election`] is
    /// dropped or resigned: takes the lease `name` when it is free, renews it every third of
    /// `ttl`, and campaigns again after losing it. Reports what this candidate sees as
    /// [`LeaderEvent`]s; see [`Election`].
    pub fn elect(&self, name: &str, candidate: impl Into<String>, ttl: Duration) -> Election {
        let request = self.lease(name).ttl(ttl).holder(candidate);
        let (events, rx) = mpsc::channel(16);
        let (resign, resigned) = watch::channel(false);
        let task = tokio::spawn(campaign(request, events, resigned));
        Election {
            events: rx,
            resign,
            task: Some(task),
        }
    }

    /// Follows who leads the election (or holds the lease) `name`, without campaigning: a
    /// stream whose first item is who leads now and whose next ones are each change — a new
    /// leader (or the same candidate again with a new token: it lost and won again), or
    /// nobody (`None`). Renewals are not changes.
    ///
    /// Follows the lease with a watch where the backend has one, so a change is reported
    /// when the store reports it; a leader that vanishes without a report (an expiry the
    /// backend reports late or never) is noticed by polling, within a second. A candidate
    /// still taking the lease (its token not yet written) is not reported until it has it.
    pub fn observe_leader(&self, name: &str) -> LeaderObserver {
        let request = self.lease(name);
        let (events, rx) = mpsc::channel(16);
        let task = tokio::spawn(observe(request, events));
        LeaderObserver {
            events: rx,
            task: task.abort_handle(),
        }
    }
}

/// Who leads, as [`StateStore::observe_leader`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leader's candidate id (its holder id).
    pub id: String,
    /// The token of its tenure.
    pub token: FencingToken,
}

/// Leadership changes of one name: [`StateStore::observe_leader`]. A stream (use
/// [`LeaderObserver::next`], or `futures::Stream`) of `Ok(Some(leader))`, `Ok(None)` (nobody
/// leads) and `Err` items: errors from the store, after which it goes on if they are
/// transient and ends otherwise. Dropping it stops the observing.
#[derive(Debug)]
pub struct LeaderObserver {
    events: mpsc::Receiver<Result<Option<Leader>>>,
    task: tokio::task::AbortHandle,
}

impl LeaderObserver {
    /// The next change; `None` once observing has ended.
    pub async fn next(&mut self) -> Option<Result<Option<Leader>>> {
        self.events.recv().await
    }
}

impl Drop for LeaderObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures_core::Stream for LeaderObserver {
    type Item = Result<Option<Leader>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// How often an observer reads the lease when no watch tells it of a change.
const OBSERVE_POLL: Duration = Duration::from_secs(1);

/// The task behind [`LeaderObserver`]. Reports each holder a watch delivers (so on a backend
/// whose watch loses nothing, no tenure goes unreported, however short), and reads the lease
/// when there is no watch, after a loss, and every [`OBSERVE_POLL`] without news.
async fn observe(request: LeaseRequest, events: mpsc::Sender<Result<Option<Leader>>>) {
    let mut wake = RecordWatch::default();
    // Before the first read: no change after it goes unreported.
    wake.open_once(&request.store, &request.name).await;
    let mut reported: Option<Option<Leader>> = None;
    let mut heard = None;
    loop {
        let holder = match heard.take() {
            Some(holder) => Ok(holder),
            None => holder_and_token(&request.store, &request.name).await,
        };
        let seen = match holder {
            Ok(None) => Some(None),
            Ok(Some((id, Some(token)))) => Some(Some(Leader { id, token })),
            // Being taken: the token follows.
            Ok(Some((_, None))) => None,
            Err(err) => {
                let transient = err.is_transient();
                if events.send(Err(err)).await.is_err() || !transient {
                    return;
                }
                None
            }
        };
        if let Some(now) = seen.filter(|now| reported.as_ref() != Some(now)) {
            if events.send(Ok(now.clone())).await.is_err() {
                return;
            }
            reported = Some(now);
        }
        let event = tokio::select! {
            event = wake.wait(OBSERVE_POLL, Wake::OnChange) => event,
            () = events.closed() => return,
        };
        heard = match event {
            Some(WatchEvent::Put { value, .. }) => holder_in(&value).map(Some),
            Some(WatchEvent::Removed { .. }) => Some(None),
            // A loss, or nothing heard: read.
            _ => None,
        };
    }
}

/// What a candidate in [`StateStore::elect`] sees.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaderEvent {
    /// This candidate leads now, with this fencing token.
    Elected {
        /// The token of this tenure.
        token: FencingToken,
    },
    /// This candidate no longer leads (the lease was lost or could not be renewed in time).
    /// Stop acting as the leader at once.
    Lost,
    /// Another candidate leads (reported when the leader this candidate sees changes).
    NewLeader {
        /// Its candidate id.
        id: String,
    },
}

/// A running campaign: a stream of [`LeaderEvent`]s (use [`Election::next`], or
/// `futures::Stream`). Errors from the store are reported as `Err` items; the campaign goes
/// on after transient ones and ends after others (say [`Error::Unsupported`]).
///
/// Dropping it ends the campaign in the background, releasing leadership if held;
/// [`Election::resign`] does the same and waits for it.
#[derive(Debug)]
pub struct Election {
    events: mpsc::Receiver<Result<LeaderEvent>>,
    resign: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Election {
    /// The next event; `None` once the campaign has ended.
    pub async fn next(&mut self) -> Option<Result<LeaderEvent>> {
        self.events.recv().await
    }

    /// Ends the campaign and waits until leadership, if held, is released.
    pub async fn resign(mut self) {
        let _ = self.resign.send(true);
        // Undelivered events are dropped, so the campaign never waits for room to send one.
        self.events.close();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        let _ = self.resign.send(true);
    }
}

impl futures_core::Stream for Election {
    type Item = Result<LeaderEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// Completes once [`Election::resign`] (or drop) asked the campaign to end.
async fn until_resigned(resigned: &mut watch::Receiver<bool>) {
    // A dropped sender also ends the campaign.
    let _ = resigned.wait_for(|r| *r).await.map(drop);
}

/// The campaign behind [`Election`].
async fn campaign(
    request: LeaseRequest,
    events: mpsc::Sender<Result<LeaderEvent>>,
    mut resigned: watch::Receiver<bool>,
) {
    let mut seen_leader: Option<String> = None;
    // Opened while another candidate leads, closed while this one does.
    let mut wake = RecordWatch::default();
    let ended = |resigned: &watch::Receiver<bool>| *resigned.borrow() || events.is_closed();
    while !ended(&resigned) {
        let mut failure = None;
        match request.try_acquire().await {
            Ok(Some(lease)) => {
                wake.close();
                seen_leader = Some(lease.holder().to_owned());
                let elected = LeaderEvent::Elected {
                    token: lease.fencing_token(),
                };
                // Renewing starts at once, not when the consumer takes the event.
                let keep_alive = lease.keep_alive();
                tokio::pin!(keep_alive);
                let delivered = tokio::select! {
                    sent = events.send(Ok(elected)) => sent.is_ok(),
                    () = &mut keep_alive => {
                        // Lost before anybody heard of it: campaign again.
                        continue;
                    }
                };
                if !delivered {
                    let _ = lease.release().await;
                    return;
                }
                tokio::select! {
                    () = &mut keep_alive => {
                        if events.send(Ok(LeaderEvent::Lost)).await.is_err() {
                            return;
                        }
                    }
                    () = until_resigned(&mut resigned) => {
                        let _ = lease.release().await;
                        return;
                    }
                    () = events.closed() => {
                        let _ = lease.release().await;
                        return;
                    }
                }
            }
            Ok(None) => match crate::lease::holder(&request.store, &request.name).await {
                Ok(Some(id)) if seen_leader.as_ref() != Some(&id) => {
                    seen_leader = Some(id.clone());
                    if events
                        .send(Ok(LeaderEvent::NewLeader { id }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Gone between the calls, or unchanged: campaign again.
                Ok(_) => {}
                Err(err) => failure = Some(err),
            },
            Err(err) => failure = Some(err),
        }
        if let Some(err) = failure {
            let transient = err.is_transient();
            if events.send(Err(err)).await.is_err() || !transient {
                return;
            }
        }
        if request.wake_on_release && wake.open_once(&request.store, &request.name).await {
            // A release before the watch started is not reported: try again at once.
            continue;
        }
        tokio::select! {
            _ = wake.wait(poll_pause(request.ttl), Wake::OnRemoval) => {}
            () = until_resigned(&mut resigned) => return,
            () = events.closed() => return,
        }
    }
}
