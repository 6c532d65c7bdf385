//! The task that follows the server's changes and forgets what they touch.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use super::slots::{lock, Shared};
use crate::backend::Backend;
use crate::change::{invalidations_of, Invalidation, InvalidationStream, KeySelector, WatchStart};
use crate::error::Result;

/// How long the cache waits before following the server's changes again after it lost them;
/// doubled after each attempt that got no stream, up to [`REWATCH_MAX`].
const REWATCH: Duration = Duration::from_secs(1);
const REWATCH_MAX: Duration = Duration::from_secs(30);

/// Follows every change of the backend, forgetting each changed key; on any doubt forgets
/// everything and stops caching until it follows again. Ends with the cache.
pub(super) async fn run_follower(inner: Weak<dyn Backend>, shared: Weak<Shared>) {
    // However the task ends (its runtime shut down, say), caching stops with it; the next
    // read starts another.
    let _stop = StopCaching(shared.clone());
    let mut rewatch = REWATCH;
    loop {
        let stream = {
            let Some(inner) = inner.upgrade() else { return };
            invalidations(&*inner).await
        };
        if let Some(mut stream) = stream {
            rewatch = REWATCH;
            let Some(cache) = shared.upgrade() else {
                return;
            };
            cache.live.store(true, Ordering::Release);
            drop(cache);
            while let Some(event) = next(&mut stream).await {
                let Some(cache) = shared.upgrade() else {
                    return;
                };
                match event {
                    Ok(Invalidation::Keys(keys)) => {
                        let mut slots = lock(&cache.slots);
                        for key in &keys {
                            slots.remove(key);
                        }
                    }
                    Ok(Invalidation::All { .. }) => cache.forget_all(),
                    Err(_) => break,
                }
            }
        }
        let Some(cache) = shared.upgrade() else {
            return;
        };
        cache.live.store(false, Ordering::Release);
        cache.forget_all();
        drop(cache);
        // A backend that refuses both (Redis without tracking or notifications) is asked
        // less and less often.
        tokio::time::sleep(rewatch).await;
        rewatch = (rewatch * 2).min(REWATCH_MAX);
    }
}

/// Empties the cache and stops caching when dropped.
struct StopCaching(Weak<Shared>);

impl Drop for StopCaching {
    fn drop(&mut self) {
        if let Some(cache) = self.0.upgrade() {
            cache.live.store(false, Ordering::Release);
            cache.forget_all();
        }
    }
}

async fn next(stream: &mut InvalidationStream) -> Option<Result<Invalidation>> {
    std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
}

/// Every change of `backend` as invalidations: its own where it has them, else its watch's
/// events without their values. `None` when it offers neither, or refused both.
async fn invalidations(backend: &dyn Backend) -> Option<InvalidationStream> {
    let extensions = backend.extensions();
    if let Some(tracker) = extensions.invalidations {
        if let Ok(stream) = tracker.invalidations("").await {
            return Some(stream);
        }
    }
    let watch = extensions
        .watch?
        .watch(&KeySelector::Prefix(String::new()), &WatchStart::Now)
        .await
        .ok()?;
    Some(invalidations_of(watch))
}
