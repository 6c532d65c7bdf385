//! Leases, fencing tokens, fenced writes and leader election: mutual exclusion across handles
//! and OS processes, takeover after a holder dies, and tokens that only ever grow.
//!
//! Multi-process cases start copies of the test binary as workers (see
//! [`Context::spawn_worker`]); the factory must say how ([`crate::across_processes`]). Where it
//! cannot (an in-memory store), they run their in-process part only.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use state_store_core::{Error, FencingToken, Lease, StateStore};
use tokio::sync::mpsc;

use crate::context::{Context, Worker};
use crate::report;

/// How long a case waits for something that must happen by itself (a lease to expire and be
/// taken, a worker to report) before calling it stuck. A liveness bound, not a timing claim.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A short lease TTL, for cases that wait for expiry.
pub(crate) const SHORT: Duration = Duration::from_millis(300);

/// A TTL no healthy holder outlives, for cases about exclusion.
pub(crate) const LONG: Duration = Duration::from_secs(20);

pub(crate) fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: {}", report(&err)))
}

pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing happened in {PATIENCE:?}"))
}

/// A handle when the store can hold leases; otherwise checks that leases are refused with
/// `Unsupported` and returns `None`.
pub(crate) async fn lease_store(ctx: &Context) -> Option<StateStore> {
    let store = ctx.store().await;
    let caps = store.capabilities();
    if caps.leases() {
        return Some(store);
    }
    crate::context::skipped("leases (ttl, conditional, increment)");
    match store.lease("unsupported").try_acquire().await {
        Err(Error::Unsupported { .. }) => {}
        other => panic!("a store without ttl/conditional/increment gave {other:?} for a lease"),
    }
    if !caps.conditional {
        match store
            .set_fenced("unsupported", &1, FencingToken::new(1))
            .await
        {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("a store without conditional writes gave {other:?} for set_fenced"),
        }
    }
    None
}

async fn take(store: &StateStore, name: &str, ttl: Duration) -> Lease {
    ok(
        store.lease(name).ttl(ttl).try_acquire().await,
        "try_acquire",
    )
    .unwrap_or_else(|| panic!("lease {name:?} should be free"))
}

async fn take_waiting(store: &StateStore, name: &str, ttl: Duration) -> Lease {
    ok(
        store.lease(name).ttl(ttl).acquire(PATIENCE).await,
        "acquire",
    )
    .unwrap_or_else(|| panic!("lease {name:?} was not freed within {PATIENCE:?}"))
}

/// A held lease excludes every other holder, on any handle; it renews and releases, and after
/// the release the next holder gets a greater token.
pub async fn lease_excludes_other_holders(ctx: Context) {
    let Some(a) = lease_store(&ctx).await else {
        return;
    };
    let b = ctx.store().await;
    let first = ok(
        a.lease("job").ttl(LONG).holder("a").try_acquire().await,
        "first acquire",
    )
    .expect("a free lease is taken");
    assert_eq!(first.holder(), "a");
    assert!(!first.is_lost());
    for store in [&a, &b] {
        let second = ok(store.lease("job").try_acquire().await, "second acquire");
        assert!(second.is_none(), "two holders at once: {second:?}");
    }
    assert_eq!(ok(b.leader("job").await, "leader").as_deref(), Some("a"));
    ok(first.renew().await, "renew");
    assert!(ok(first.release().await, "release"), "the holder's release");
    assert!(first.is_lost());
    assert_eq!(ok(b.leader("job").await, "leader after release"), None);
    let next = take(&b, "job", LONG).await;
    assert!(
        next.fencing_token() > first.fencing_token(),
        "tokens must grow: {} then {}",
        first.fencing_token(),
        next.fencing_token()
    );
    // Another name has its own lease.
    let other = take(&a, "other-job", LONG).await;
    assert!(ok(other.release().await, "release"));
    assert!(ok(next.release().await, "release"));
}

/// Any state name is a lease name, including ones with braces (Redis hash tags) and
/// separators; leases of different names are independent.
pub async fn lease_names_are_any_state_names(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let names = [
        "}x",
        "{}",
        "a{b}c",
        "{job}",
        "a:b",
        "lease:{x}",
        ":token",
        "ü 🦀",
        "*",
    ];
    let mut held = Vec::new();
    for name in names {
        let lease = take(&store, name, LONG).await;
        assert!(
            ok(store.lease(name).try_acquire().await, name).is_none(),
            "{name:?} was taken twice"
        );
        held.push(lease);
    }
    for lease in held {
        assert!(ok(lease.release().await, "release"), "{:?}", lease.name());
        let again = take(&store, lease.name(), LONG).await;
        assert!(
            again.fencing_token() > lease.fencing_token(),
            "{:?}",
            lease.name()
        );
        assert!(ok(again.release().await, "release"));
    }
}

/// A holder whose lease expired and was taken cannot release or renew it: the new holder
/// keeps it.
pub async fn lease_release_by_non_holder_is_refused(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let old = take(&store, "job", SHORT).await;
    within("the local deadline", old.lost()).await;
    assert!(old.is_lost());
    let new = within("taking an expired lease", take_waiting(&store, "job", LONG)).await;
    assert!(new.fencing_token() > old.fencing_token());
    assert!(
        !ok(old.release().await, "release by the old holder"),
        "an old holder released somebody else's lease"
    );
    match old.renew().await {
        Err(Error::LeaseLost { key }) => assert_eq!(key, "job"),
        other => panic!("renew by the old holder gave {other:?}"),
    }
    assert_eq!(
        ok(store.leader("job").await, "leader").as_deref(),
        Some(new.holder())
    );
    ok(new.renew().await, "the new holder renews");
    assert!(ok(new.release().await, "the new holder releases"));
}

/// Fencing tokens of one name grow strictly across releases, expiry, and removal of the
/// lease's state by hand.
pub async fn lease_tokens_always_increase(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let mut tokens = Vec::new();
    let released = take(&store, "job", LONG).await;
    tokens.push(released.fencing_token());
    assert!(ok(released.release().await, "release"));

    let removed = take(&store, "job", LONG).await;
    tokens.push(removed.fencing_token());
    let records = ok(store.reserved("lease"), "the lease area");
    ok(
        records.remove_state("{job}").await,
        "remove the holder record",
    );

    let expired = take(&store, "job", SHORT).await;
    tokens.push(expired.fencing_token());
    within("the local deadline", expired.lost()).await;

    let last = within("taking an expired lease", take_waiting(&store, "job", LONG)).await;
    tokens.push(last.fencing_token());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must grow strictly: {tokens:?}"
    );
    assert!(ok(last.release().await, "release"));
}

/// The store's own records (a lease's holder and fencing counter, a rate limit's state) are
/// out of reach of every name and prefix a caller can pass: reading, writing, incrementing or
/// removing them is refused with `InvalidKey`, listings and `remove_prefix` skip them (so
/// tokens never restart and limits never reset), and no prefix leads into them.
pub async fn store_records_are_out_of_callers_reach(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let parent = ctx.store_without_prefix().await;
    let case = ctx.prefix().to_owned();
    let first = take(&store, "job", LONG).await;
    assert!(ok(first.release().await, "release"));
    let limiter = state_store_core::Limiter::fixed_window(&store, 1, LONG);
    assert!(ok(limiter.check("client").await, "first request").allowed);
    assert!(!ok(limiter.check("client").await, "second request").allowed);

    // Every spelling of the records' names, from this handle and from the one above it.
    let forged = [
        "$lease:{job}:token",
        "$lease:{job}",
        "$ratelimit:window:client",
        "$sessions:x",
        "a:$b",
    ];
    let refused = |what: &str, result: Result<(), Error>| match result {
        Err(Error::InvalidKey { .. }) => {}
        other => panic!("{what}: a reserved name gave {other:?}"),
    };
    for name in forged {
        let outer = format!("{case}:{name}");
        for (handle, name) in [(&store, name), (&parent, outer.as_str())] {
            refused(name, handle.get_state(&[name]).await.map(drop));
            refused(name, handle.set_state(name, &serde_json::json!(0)).await);
            refused(name, handle.remove_state(name).await);
            if handle.capabilities().increment {
                refused(name, handle.increment(name, 1, None).await.map(drop));
            }
        }
    }
    for prefix in ["", ":", "$lease", "x:$lease", "::$"] {
        refused(prefix, store.with_prefix(prefix).map(drop));
    }
    let under_reserved = ctx
        .store_with(state_store_core::StoreConfig::default().with_prefix("$lease"))
        .await;
    refused(
        "a config prefix with a reserved segment",
        under_reserved.get_state(&["{job}:token"]).await.map(drop),
    );
    if store.capabilities().list {
        refused("list", store.list_all("$lease").await.map(drop));
        // Page by page, one name at a time: no cursor names a record either.
        let mut options = state_store_core::ListOptions::new().limit(1);
        for _ in 0..1000 {
            let page = ok(store.list("", options.clone()).await, "list");
            let Some(next) = page.next else { break };
            assert!(
                !next.contains("{job}") && !next.contains("client"),
                "a cursor names one of the store's records: {next:?}"
            );
            options = options.cursor(next);
        }
        for (handle, prefix) in [(&store, String::new()), (&parent, format!("{case}:"))] {
            let names = ok(handle.list_all(&prefix).await, "list_all");
            assert!(
                names.iter().all(|name| !name.contains('$')),
                "a listing shows the store's own records: {names:?}"
            );
            ok(handle.remove_prefix(&prefix).await, "remove_prefix");
        }
    }

    // Nothing above reached them: the counter goes on, the window still denies.
    let second = take(&store, "job", LONG).await;
    assert!(
        second.fencing_token() > first.fencing_token(),
        "fencing tokens restarted: {} after {}",
        second.fencing_token(),
        first.fencing_token()
    );
    assert!(ok(second.release().await, "release"));
    assert!(
        !ok(limiter.check("client").await, "third request").allowed,
        "the rate limit was reset"
    );
}

/// A holder paused past its TTL cannot overwrite what the next holder wrote: its fenced write
/// fails with `Fenced` and writes nothing.
pub async fn fenced_write_from_a_paused_holder_is_refused(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let paused = take(&store, "job", SHORT).await;
    ok(
        store
            .set_fenced("report", &"from paused", paused.fencing_token())
            .await,
        "the first holder writes",
    );
    within("the local deadline", paused.lost()).await;
    let next = within("takeover", take_waiting(&store, "job", LONG)).await;
    ok(
        store
            .set_fenced("report", &"from next", next.fencing_token())
            .await,
        "the next holder writes",
    );
    match store
        .set_fenced("report", &"secret stale value", paused.fencing_token())
        .await
    {
        Err(err @ Error::Fenced { .. }) => {
            let Error::Fenced {
                ref key,
                token,
                highest,
                ..
            } = err
            else {
                unreachable!()
            };
            assert_eq!(key, "report");
            assert_eq!(token, paused.fencing_token().get());
            assert_eq!(highest, next.fencing_token().get());
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains("secret"), "{shown}");
        }
        other => panic!("a stale holder's fenced write gave {other:?}"),
    }
    let stored = ok(store.get_fenced::<String>("report").await, "get_fenced")
        .expect("the next holder's value");
    assert_eq!(stored.value, "from next");
    assert_eq!(stored.token, next.fencing_token());
    // The same token may write again.
    ok(
        store
            .set_fenced("report", &"again", next.fencing_token())
            .await,
        "the holder writes twice",
    );
    assert!(ok(next.release().await, "release"));
}

/// `with_lease` runs its body alone, releases afterwards, returns `None` when the lease is
/// taken, and cancels the body when the lease is lost.
pub async fn with_lease_runs_alone_and_cancels_on_loss(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let other = ctx.store().await;
    let ran = ok(
        store
            .with_lease("job", LONG, |lease| {
                let other = other.clone();
                async move {
                    assert!(ok(other.lease("job").try_acquire().await, "inside").is_none());
                    lease.fencing_token()
                }
            })
            .await,
        "with_lease",
    )
    .expect("a free lease");
    assert_eq!(ok(store.leader("job").await, "leader after"), None);

    let held = take(&other, "job", LONG).await;
    let skipped = ok(
        store.with_lease("job", LONG, |_| async { 1 }).await,
        "with_lease on a held lease",
    );
    assert_eq!(
        skipped, None,
        "the body ran while another holder held the lease"
    );
    assert!(held.fencing_token() > ran);
    assert!(ok(held.release().await, "release"));

    // Lost while running: the record is taken away, the next renew is refused, the body
    // (which would wait forever) is cancelled.
    let thief = other.clone();
    let result = within(
        "cancelling the body",
        store.with_lease("job", Duration::from_millis(600), |_lease| async move {
            let records = ok(thief.reserved("lease"), "the lease area");
            ok(records.remove_state("{job}").await, "remove the record");
            let _taken = take(&thief, "job", LONG).await;
            std::future::pending::<()>().await;
        }),
    )
    .await;
    match result {
        Err(Error::LeaseLost { key }) => assert_eq!(key, "job"),
        other => panic!("a lost lease gave {other:?}"),
    }
    assert_ne!(
        ok(store.leader("job").await, "leader"),
        None,
        "the thief's lease was released"
    );
}

/// One critical section: `(token, enter, exit)`, with enter and exit drawn from one shared
/// counter so that sections from every process are ordered without clocks.
async fn critical_section(store: &StateStore, holder: &str) -> (u64, i64, i64) {
    let lease = ok(
        store
            .lease("mutex")
            .ttl(LONG)
            .holder(holder)
            .acquire(PATIENCE)
            .await,
        "acquire",
    )
    .expect("the mutex was never free");
    let token = lease.fencing_token();
    let enter = ok(store.increment("sequence", 1, None).await, "enter");
    ok(
        store.set_fenced("protected", &holder, token).await,
        "the holder's fenced write",
    );
    let exit = ok(store.increment("sequence", 1, None).await, "exit");
    assert!(
        ok(lease.release().await, "release"),
        "a holder lost a {LONG:?} lease inside a short critical section"
    );
    (token.get(), enter, exit)
}

const SECTIONS_PER_TASK: usize = 3;

/// Mutual exclusion: 8 tasks over 2 handles, and 4 worker processes, each take the same lease
/// in turn. Critical sections never overlap, and their tokens grow in the order they ran.
pub async fn lease_mutual_exclusion(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    if let Some(role) = ctx.worker_role() {
        for _ in 0..SECTIONS_PER_TASK {
            let (token, enter, exit) = critical_section(&store, role).await;
            ctx.tell_parent(&format!("{token} {enter} {exit}"));
        }
        return;
    }
    let workers: Vec<Worker> = (0..4)
        .filter_map(|i| ctx.spawn_worker(&format!("process-{i}")))
        .collect();
    let handles = [store.clone(), ctx.store().await];
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = handles[i % 2].clone();
            tokio::spawn(async move {
                let mut sections = Vec::new();
                for _ in 0..SECTIONS_PER_TASK {
                    sections.push(critical_section(&store, &format!("task-{i}")).await);
                }
                sections
            })
        })
        .collect();
    let mut sections = Vec::new();
    for task in tasks {
        sections.extend(within("a task's sections", task).await.expect("task"));
    }
    let processes = workers.len();
    for worker in workers {
        for line in within("a worker's sections", worker.finish()).await {
            let fields: Vec<i64> = line
                .split(' ')
                .map(|f| f.parse().expect("a number"))
                .collect();
            let token = u64::try_from(fields[0]).expect("a positive token");
            sections.push((token, fields[1], fields[2]));
        }
    }
    assert_eq!(sections.len(), (8 + processes) * SECTIONS_PER_TASK);
    sections.sort_by_key(|&(_, enter, _)| enter);
    for pair in sections.windows(2) {
        let ((token_a, enter_a, exit_a), (token_b, enter_b, _)) = (pair[0], pair[1]);
        assert!(enter_a < exit_a);
        assert!(
            exit_a < enter_b,
            "critical sections overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(
            token_a < token_b,
            "tokens did not grow in the order the sections ran: {token_a} then {token_b} \
             (entered at {enter_a}, {enter_b})"
        );
    }
}

/// A holder that stops renewing — its process killed with SIGKILL — is taken over once its
/// TTL has run out, with a greater token; while it was alive, nobody else got the lease.
pub async fn lease_of_a_killed_holder_is_taken_over(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    let ttl = Duration::from_secs(2);
    if ctx.worker_role().is_some() {
        let held = store
            .with_lease("job", ttl, |lease| async move {
                ctx.tell_parent(&lease.fencing_token().to_string());
                std::future::pending::<()>().await;
            })
            .await;
        panic!("the holder's body ended: {held:?}");
    }
    let (old_token, killed) = match ctx.spawn_worker("holder") {
        Some(mut worker) => {
            let token = within("the worker's lease", worker.next())
                .await
                .expect("the worker reports its token");
            // Alive and renewing: held well past its TTL.
            tokio::time::sleep(ttl * 2).await;
            assert!(ok(store.lease("job").try_acquire().await, "while held").is_none());
            worker.kill().await;
            (token.parse::<u64>().expect("a token"), "killed")
        }
        None => {
            // In one process: a holder task that is aborted mid-lease.
            let holder = store.clone();
            let (tx, mut rx) = mpsc::channel(1);
            let task = tokio::spawn(async move {
                let _ = holder
                    .with_lease("job", ttl, |lease| async move {
                        let _ = tx.send(lease.fencing_token().get()).await;
                        std::future::pending::<()>().await;
                    })
                    .await;
            });
            let token = within("the task's lease", rx.recv()).await.expect("token");
            tokio::time::sleep(ttl * 2).await;
            assert!(ok(store.lease("job").try_acquire().await, "while held").is_none());
            task.abort();
            (token, "aborted")
        }
    };
    let next = within("takeover", take_waiting(&store, "job", LONG)).await;
    assert!(
        next.fencing_token().get() > old_token,
        "the lease of a {killed} holder was taken with token {} after {old_token}",
        next.fencing_token()
    );
    assert!(ok(next.release().await, "release"));
}

/// A waiter blocked in `acquire` — in another process where the store allows — gets the lease
/// once its holder releases it, with a greater token; an observer
/// ([`StateStore::observe_leader`]) that does not campaign reports the first holder and then
/// the waiter, with their tokens, and never a token lower than one it reported before. (How
/// fast the waiter wakes is measured by the handover benchmark, not asserted here.)
pub async fn a_released_lease_is_handed_to_a_waiter(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        return;
    };
    if ctx.worker_role().is_some() {
        ctx.tell_parent("waiting");
        let lease = take_waiting(&store, "handover", LONG).await;
        ctx.tell_parent(&lease.fencing_token().to_string());
        // Held (for its TTL) until the parent has seen the observer report it, then killed.
        let _held = lease;
        std::future::pending::<()>().await;
    }
    let mut observer = store.observe_leader("handover");
    let held = ok(
        store
            .lease("handover")
            .ttl(LONG)
            .holder("first")
            .try_acquire()
            .await,
        "try_acquire",
    )
    .expect("the lease is free");
    let mut reported = Vec::new();
    observe_until(&mut observer, &mut reported, "first", held.fencing_token()).await;
    let (mut worker, waiter) = match ctx.spawn_worker("waiter") {
        Some(worker) => (Some(worker), None),
        None => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let waiter = store.lease("handover").ttl(LONG);
            tokio::spawn(async move {
                let lease = ok(waiter.acquire(PATIENCE).await, "acquire");
                let _ = tx.send(lease);
            });
            (None, Some(rx))
        }
    };
    if let Some(worker) = &mut worker {
        let line = within("the waiter starts", worker.next()).await;
        assert_eq!(line.as_deref(), Some("waiting"));
    }
    // Waiting already (or about to: then it finds the lease free).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ok(held.release().await, "release"));
    let (token, lease) = match (&mut worker, waiter) {
        (Some(worker), _) => {
            let line = within("the waiter's lease", worker.next())
                .await
                .expect("the waiter reports its token");
            (FencingToken::new(line.parse().expect("a token")), None)
        }
        (None, Some(rx)) => {
            let lease = within("the waiter's lease", rx)
                .await
                .expect("the waiter ran")
                .expect("the lease is freed");
            (lease.fencing_token(), Some(lease))
        }
        (None, None) => unreachable!("a worker or a task waits"),
    };
    assert!(
        token > held.fencing_token(),
        "the waiter got token {token} after {}",
        held.fencing_token()
    );
    within("the observer reports the waiter", async {
        while !reported.iter().any(|(_, t)| *t == token) {
            observe_next(&mut observer, &mut reported).await;
        }
    })
    .await;
    if let Some(lease) = lease {
        let holder = lease.holder().to_owned();
        assert!(reported
            .iter()
            .any(|(who, t)| *who == holder && *t == token));
        assert!(ok(lease.release().await, "release"));
    }
    if let Some(mut worker) = worker {
        worker.kill().await;
    }
}

/// Reads the observer until it reports `id` with `token`.
pub(crate) async fn observe_until(
    observer: &mut state_store_core::LeaderObserver,
    reported: &mut Vec<(String, FencingToken)>,
    id: &str,
    token: FencingToken,
) {
    within(&format!("the observer reports {id}"), async {
        while !reported.iter().any(|(who, t)| who == id && *t == token) {
            observe_next(observer, reported).await;
        }
    })
    .await;
}

/// The observer's next report, recorded: tokens it reports only grow.
async fn observe_next(
    observer: &mut state_store_core::LeaderObserver,
    reported: &mut Vec<(String, FencingToken)>,
) {
    match observer.next().await {
        Some(Ok(Some(leader))) => {
            if let Some((_, last)) = reported.last() {
                assert!(
                    leader.token > *last,
                    "the observer reported token {} after {last}",
                    leader.token
                );
            }
            reported.push((leader.id, leader.token));
        }
        Some(Ok(None)) => {}
        Some(Err(err)) if err.is_transient() => {}
        Some(Err(err)) => panic!("observing failed: {}", report(&err)),
        None => panic!("the observer ended"),
    }
}
