//! Distributed rate limits: exact across tasks, handles and OS processes; `retry_after`
//! honoured; keys isolated; idle state expires.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use state_store_core::{Error, Limiter, Quota, StateStore};

use crate::context::{Context, Worker};
use crate::report;

fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: {}", report(&err)))
}

/// Which limiters the store supports; asserts `Unsupported` for the others.
async fn supported(store: &StateStore) -> (bool, bool) {
    let caps = store.capabilities();
    let gcra = caps.conditional && caps.ttl;
    let window = caps.increment && caps.ttl;
    if !gcra {
        crate::context::skipped("GCRA (conditional, ttl)");
        let limiter = Limiter::gcra(store, Quota::per_second(1));
        match limiter.check("unsupported").await {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("GCRA without conditional writes and TTL gave {other:?}"),
        }
    }
    if !window {
        crate::context::skipped("fixed window (increment, ttl)");
        let limiter = Limiter::fixed_window(store, 1, Duration::from_secs(1));
        match limiter.check("unsupported").await {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("a fixed window without increment and TTL gave {other:?}"),
        }
    }
    (gcra, window)
}

/// The limiter a hammer case uses, by name (workers build the same one).
fn limiter(store: &StateStore, kind: &str) -> Limiter {
    match kind {
        // 50 at once, then one an hour: nothing refills while the case runs, so exactly 50
        // pass however long starting the workers takes.
        "gcra" => Limiter::gcra(store, Quota::per_hour(1).burst(50)),
        // 50 per window; the window outlasts the case.
        _ => Limiter::fixed_window(store, 50, Duration::from_secs(600)),
    }
}

const TASKS: usize = 32;
const REQUESTS_PER_TASK: usize = 6;
const WORKER_TASKS: usize = 4;

/// `tasks` concurrent tasks each make `REQUESTS_PER_TASK` checks on one key; the allowed count.
async fn hammer(stores: &[StateStore], kind: &str, tasks: usize) -> usize {
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let limiter = limiter(&stores[i % stores.len()], kind);
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..REQUESTS_PER_TASK {
                    let decision = ok(limiter.check("hot").await, "check");
                    assert!(decision.limit > 0);
                    if decision.allowed {
                        allowed += 1;
                    } else {
                        assert!(
                            decision.retry_after.is_some(),
                            "a denial without retry_after"
                        );
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for handle in handles {
        allowed += handle.await.expect("task");
    }
    allowed
}

/// Runs a hammer with 32 tasks over 2 handles and 4 worker processes (where the store can be
/// shared); the total allowed and the total requests.
async fn hammer_everywhere(ctx: &Context, store: &StateStore, kind: &str) -> (usize, usize) {
    let workers: Vec<Worker> = (0..4).filter_map(|_| ctx.spawn_worker(kind)).collect();
    let stores = [store.clone(), ctx.store().await];
    let mut allowed = hammer(&stores, kind, TASKS).await;
    let mut requests = TASKS * REQUESTS_PER_TASK;
    for worker in workers {
        let lines = worker.finish().await;
        allowed += lines
            .first()
            .and_then(|l| l.parse::<usize>().ok())
            .expect("a worker's count");
        requests += WORKER_TASKS * REQUESTS_PER_TASK;
    }
    (allowed, requests)
}

/// A worker of a hammer case: its own tasks, then its allowed count to the parent.
async fn hammer_worker(ctx: &Context, store: &StateStore, kind: &str) {
    let allowed = hammer(std::slice::from_ref(store), kind, WORKER_TASKS).await;
    ctx.tell_parent(&allowed.to_string());
}

/// A fixed window lets exactly `limit` requests through, however many tasks and processes
/// hammer one key.
pub async fn fixed_window_is_exact_across_processes(ctx: Context) {
    let store = ctx.store().await;
    if !supported(&store).await.1 {
        return;
    }
    if ctx.worker_role().is_some() {
        return hammer_worker(&ctx, &store, "window").await;
    }
    let (allowed, requests) = hammer_everywhere(&ctx, &store, "window").await;
    assert!(requests > 50);
    assert_eq!(allowed, 50, "{requests} requests on a window of 50");
}

/// GCRA lets exactly its burst through when nothing can refill during the case (one request
/// an hour), however many tasks and processes hammer one key.
pub async fn gcra_never_exceeds_the_quota_across_processes(ctx: Context) {
    let store = ctx.store().await;
    if !supported(&store).await.0 {
        return;
    }
    if ctx.worker_role().is_some() {
        return hammer_worker(&ctx, &store, "gcra").await;
    }
    let (allowed, requests) = hammer_everywhere(&ctx, &store, "gcra").await;
    assert!(requests > 50);
    assert_eq!(allowed, 50, "{requests} requests on a burst of 50");
}

/// A denied request carries `retry_after` (at most an emission interval for GCRA, at most the
/// window — as the backend rounds its TTL — for a fixed window), the same request after that
/// wait passes, and a request above
/// the limit is told it can never pass.
pub async fn retry_after_is_honoured(ctx: Context) {
    let store = ctx.store().await;
    let (gcra, window) = supported(&store).await;
    let mut limiters = Vec::new();
    if gcra {
        let quota = Quota::per_second(4).burst(2);
        let interval = quota.emission_interval();
        limiters.push(("gcra", Limiter::gcra(&store, quota), interval));
    }
    if window {
        // The window ends when its counter expires, and a backend may round a TTL up to whole
        // seconds, plus one (Dapr's components).
        let window = Duration::from_millis(1500);
        let rounded = window + Duration::from_secs(2);
        limiters.push(("window", Limiter::fixed_window(&store, 2, window), rounded));
    }
    for (kind, limiter, longest) in limiters {
        let key = format!("retry-{kind}");
        // A limit of 2: the third check is denied, unless a slow machine let GCRA refill
        // between checks; never fifty in a row.
        let mut denied = None;
        for _ in 0..50 {
            let decision = ok(limiter.check(&key).await, "check");
            if !decision.allowed {
                denied = Some(decision);
                break;
            }
        }
        let denied = denied.unwrap_or_else(|| panic!("{kind}: 50 checks on a limit of 2 passed"));
        assert_eq!(denied.remaining, 0, "{kind}");
        let wait = denied.retry_after.expect("a denial says when to retry");
        assert!(
            wait <= longest,
            "{kind}: retry_after {wait:?} is longer than {longest:?}"
        );
        // A little past it: the store's clock (Redis's, say) need not tick with ours.
        tokio::time::sleep(wait + Duration::from_millis(50)).await;
        let after = ok(limiter.check(&key).await, "check after retry_after");
        assert!(
            after.allowed,
            "{kind}: denied after waiting retry_after ({wait:?}): {after:?}"
        );
        let too_big = ok(limiter.check_n("other", 3).await, "check_n above the limit");
        assert!(!too_big.allowed, "{kind}");
        assert_eq!(
            too_big.retry_after, None,
            "{kind}: a cost above the limit never passes"
        );
    }
}

/// Keys are independent; `peek` counts nothing; two handles with different prefixes have
/// different limits.
pub async fn limiter_keys_are_isolated(ctx: Context) {
    let store = ctx.store().await;
    let other = ctx
        .store_with(state_store_core::StoreConfig::default().with_prefix("tenant-b"))
        .await;
    let (gcra, window) = supported(&store).await;
    let mut pairs = Vec::new();
    if gcra {
        let quota = Quota::per_minute(2);
        pairs.push((Limiter::gcra(&store, quota), Limiter::gcra(&other, quota)));
    }
    if window {
        let window = Duration::from_secs(60);
        pairs.push((
            Limiter::fixed_window(&store, 2, window),
            Limiter::fixed_window(&other, 2, window),
        ));
    }
    for (limiter, elsewhere) in pairs {
        for _ in 0..3 {
            assert!(
                ok(limiter.peek("a").await, "peek").allowed,
                "peek consumed the quota"
            );
        }
        assert!(ok(limiter.check("a").await, "check").allowed);
        let second = ok(limiter.check("a").await, "check");
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        assert!(!ok(limiter.check("a").await, "check").allowed);
        assert!(!ok(limiter.peek("a").await, "peek").allowed);
        assert!(ok(limiter.check("b").await, "another key").allowed);
        assert!(ok(elsewhere.check("a").await, "another prefix").allowed);
    }
}

/// Limiter state has a TTL: an idle key's state disappears once its limit is restored.
pub async fn idle_limiter_state_expires(ctx: Context) {
    let caller = ctx.store().await;
    let (gcra, window) = supported(&caller).await;
    let store = ok(caller.reserved("ratelimit"), "the limiter's area");
    let mut names = Vec::new();
    if gcra {
        let limiter = Limiter::gcra(&caller, Quota::per_second(10));
        assert!(ok(limiter.check("idle").await, "check").allowed);
        names.push("gcra:idle");
    }
    if window {
        let limiter = Limiter::fixed_window(&caller, 5, Duration::from_millis(200));
        assert!(ok(limiter.check("idle").await, "check").allowed);
        names.push("window:idle");
    }
    let state = ok(store.get_state(&names).await, "read state");
    for name in &names {
        assert!(
            state[*name].is_some(),
            "{name} was not stored where documented"
        );
    }
    for name in names {
        let started = Instant::now();
        while ok(store.get_state(&[name]).await, "read state")[name].is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} never expired"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
