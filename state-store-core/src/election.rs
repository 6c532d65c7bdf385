//! Leader election over leases: [`StateStore::elect`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::error::Result;
use crate::lease::{poll_pause, FencingToken, LeaseRequest};
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
    let ended = |resigned: &watch::Receiver<bool>| *resigned.borrow() || events.is_closed();
    while !ended(&resigned) {
        let mut failure = None;
        match request.try_acquire().await {
            Ok(Some(lease)) => {
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
        tokio::select! {
            () = tokio::time::sleep(poll_pause(request.ttl)) => {}
            () = until_resigned(&mut resigned) => return,
            () = events.closed() => return,
        }
    }
}
