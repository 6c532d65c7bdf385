//! Fault scenarios every networked store should survive, over a server the test controls.
//!
//! Implement [`TestServer`] for the way your tests run your store's server (a spawned process,
//! a container), then call a scenario with a handle on it.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use state_store_core::{Backend, Error, StateStore};

use crate::report;

/// A server a fault scenario can kill and bring back.
pub trait TestServer {
    /// Kills the server abruptly (SIGKILL): no goodbye to its clients.
    fn crash(&mut self);
    /// Starts it again on the same address, with the same data directory.
    ///
    /// # Errors
    ///
    /// Why it could not start.
    fn restart(&mut self) -> Result<(), String>;
    /// Freezes the server (SIGSTOP, `docker pause`): its connections stay open and nothing
    /// answers. For [`hung_server_times_out`]; the default says it cannot.
    ///
    /// # Errors
    ///
    /// Why it could not pause.
    fn pause(&mut self) -> Result<(), String> {
        Err("this test server cannot be paused".to_owned())
    }
    /// Lets a paused server run again.
    ///
    /// # Errors
    ///
    /// Why it could not resume.
    fn resume(&mut self) -> Result<(), String> {
        Err("this test server cannot be resumed".to_owned())
    }
}

/// What the network between a client and its server does (see [`Link`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkFault {
    /// Bytes flow as they come.
    Healthy,
    /// Each chunk of bytes waits `delay` plus a random time up to `jitter`.
    Latency {
        /// The fixed part.
        delay: Duration,
        /// The random part's ceiling.
        jitter: Duration,
    },
    /// At most this many bytes a second each way.
    Bandwidth {
        /// The cap.
        bytes_per_second: u64,
    },
    /// New connections are reset at once; open ones carry on.
    Refuse,
    /// A partition: bytes go nowhere either way, connections stay open.
    BlackHole,
    /// Requests reach the server, its answers never come back.
    HalfOpen,
    /// Every open connection is reset now (then the network is healthy).
    ResetAll,
}

/// A network a scenario can break: a fault proxy between clients and their server.
pub trait Link {
    /// From now on, the network does `fault`.
    fn set(&self, fault: LinkFault);
}

/// How long a scenario waits for a call that should end by itself (a timeout) before calling
/// it hung, and for a store to recover after a restart.
const PATIENCE: Duration = Duration::from_secs(30);

/// The server dies: every read fails with [`Error::Unavailable`] and every write with
/// `Unavailable` or [`Error::OutcomeUnknown`], by itself (none hangs), and nothing is lost or
/// half-done; the server comes back: the same handle works again without being rebuilt, and,
/// when `keeps_data`, still reads what was written before. The writes that failed never land
/// later: a dead server cannot have run them, and the client must not send them after their
/// calls returned (not even once it has reconnected and made a write of its own).
///
/// `store` should have a request timeout well under 30 s.
pub async fn killed_server_recovers(
    server: &mut dyn TestServer,
    store: &StateStore,
    keeps_data: bool,
) {
    store
        .set_state("fault:k", &json!("before"))
        .await
        .expect("write before the crash");

    server.crash();
    for _ in 0..3 {
        let read = tokio::time::timeout(PATIENCE, store.get_state(&["fault:k"]))
            .await
            .expect("a read hung with the server down");
        match read {
            Err(err @ Error::Unavailable { .. }) => assert!(err.is_transient()),
            other => panic!("a read with the server down gave {other:?}, not Unavailable"),
        }
        let write = tokio::time::timeout(PATIENCE, store.set_state("fault:x", &json!(1)))
            .await
            .expect("a write hung with the server down");
        match write {
            Err(err) if err.is_transient() => {}
            other => panic!("a write with the server down gave {other:?}, not a transient error"),
        }
    }

    server.restart().expect("restart the server");
    let before = recovered(store, "fault:k", "the restart").await;
    if keeps_data {
        assert_eq!(before.as_deref(), Some("before"), "the restart lost data");
    }
    let failed = store
        .get::<i64>("fault:x")
        .await
        .expect("read the failed write's key");
    assert_eq!(
        failed, None,
        "a write that failed with the server down landed later"
    );
}

/// The server hangs (it keeps the connection open and answers nothing, as in a long GC pause or
/// on a stuck disk): every read and write on `store` ends by itself (its request timeout), none
/// waits forever: a read with [`Error::Unavailable`], a write with `Unavailable` or, when it may
/// have reached the server, [`Error::OutcomeUnknown`] (the server may run it when it wakes).
/// The server wakes up: the same handle reads and writes again, and what was written before
/// the hang is still there.
///
/// `store` should have a request timeout well under 30 s.
pub async fn hung_server_times_out(server: &mut dyn TestServer, store: &StateStore) {
    store
        .set_state("fault:hang", &json!("before"))
        .await
        .expect("write before the hang");

    server.pause().expect("pause the server");
    let read = tokio::time::timeout(PATIENCE, store.get_state(&["fault:hang"])).await;
    let write = tokio::time::timeout(PATIENCE, store.set_state("fault:hang-x", &json!(1))).await;
    let both =
        tokio::time::timeout(PATIENCE, store.get_state(&["fault:hang", "fault:hang-x"])).await;
    // Resumed before any assertion, so a failure does not leave a frozen server behind.
    server.resume().expect("resume the server");
    for (what, outcome) in [
        ("a read", read.map(|r| r.map(drop))),
        ("a read of two names", both.map(|r| r.map(drop))),
    ] {
        match outcome {
            Err(_) => panic!("{what} hung with the server frozen"),
            Ok(Err(err @ Error::Unavailable { .. })) => assert!(err.is_transient()),
            Ok(other) => panic!("{what} with the server frozen gave {other:?}, not Unavailable"),
        }
    }
    match write {
        Err(_) => panic!("a write hung with the server frozen"),
        Ok(Err(err)) if err.is_transient() => {}
        Ok(other) => panic!("a write with the server frozen gave {other:?}, not a transient error"),
    }

    let before = recovered(store, "fault:hang", "the server woke up").await;
    assert_eq!(before.as_deref(), Some("before"), "the hang lost data");
}

/// How many writes [`failed_writes_never_land_later`] makes to the frozen server.
const WRITES_TO_A_FROZEN_SERVER: usize = 40;

/// How large each of them is (at most: a store's value limit may be lower): together more
/// than a loopback connection buffers, so the client has to keep some to itself.
const FROZEN_WRITE_SIZE: usize = 900 * 1024;

/// The server freezes (SIGSTOP) and the handle writes more than the connection can buffer:
/// every write fails by itself ([`Error::OutcomeUnknown`] or [`Error::Unavailable`]), the last
/// ones while the client still holds them. The server is then killed (as a watchdog would)
/// and restarted; a new handle from `connect` reads the keys and writes newer values; the
/// failed writer makes a successful write of its own (so anything its client had kept has
/// been sent before it). No read ever sees a failed write: the frozen server lost what it had
/// received, and what the client held was never sent after its call failed.
///
/// `connect` makes a new handle on the server (a connection of its own, with a request
/// timeout well under 30 s). Needs a server that can be paused and whose data dies with its
/// process (a container that must be resumed before it can be killed would run what it had
/// received).
pub async fn failed_writes_never_land_later<F, Fut>(server: &mut dyn TestServer, connect: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<StateStore, Error>>,
{
    let writer = connect().await.expect("connect the writer");
    let names: Vec<String> = (0..WRITES_TO_A_FROZEN_SERVER)
        .map(|i| format!("late:{i}"))
        .collect();
    for name in &names {
        writer
            .set_state(name, &json!("before"))
            .await
            .expect("write before the hang");
    }
    let size = FROZEN_WRITE_SIZE.min(writer.capabilities().max_value_len.saturating_sub(64));
    let failed = json!({ "failed": true, "pad": "x".repeat(size) });

    server.pause().expect("pause the server");
    let mut writes = tokio::task::JoinSet::new();
    for name in names.clone() {
        let (writer, failed) = (writer.clone(), failed.clone());
        writes.spawn(async move {
            let write = tokio::time::timeout(PATIENCE, writer.set_state(&name, &failed)).await;
            (name, write)
        });
    }
    let outcomes = writes.join_all().await;
    server.crash();
    for (name, write) in outcomes {
        match write {
            Err(_) => panic!("a write to {name} hung with the server frozen"),
            Ok(Err(err)) if err.is_transient() => {}
            Ok(other) => panic!("a write to {name} with the server frozen gave {other:?}"),
        }
    }

    server.restart().expect("restart the server");
    let newer = eventually_ok(&connect, "a new handle after the restart").await;
    let seen = eventually_ok(|| newer.get_state(&names), "a read after the restart").await;
    let failed = Some(failed);
    for name in &names {
        assert!(
            seen[name] != failed,
            "a write to {name} that failed while the server hung landed after the restart"
        );
    }
    let value = json!("newer");
    for name in &names {
        eventually_ok(|| newer.set_state(name, &value), "a newer write").await;
    }
    // Whatever the writer's client had kept would go out before this write.
    let one = json!(1);
    eventually_ok(
        || writer.set_state("late:fence", &one),
        "the writer's next write",
    )
    .await;
    let state = newer.get_state(&names).await.expect("read the keys");
    for name in &names {
        assert!(
            state[name] == Some(value.clone()),
            "a write to {name} that failed while the server hung landed later, over newer data"
        );
    }
    writer.destroy().await.expect("destroy the writer");
    newer.destroy().await.expect("destroy the second handle");
}

/// Runs `op` until it succeeds, for up to 30 s (a reconnect).
async fn eventually_ok<T, F, Fut>(mut op: F, what: &str) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let started = std::time::Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(err) => assert!(
                started.elapsed() < PATIENCE,
                "{what} never succeeded: {}",
                report(&err)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 30 s) until the same handle reads `key` again after `event`, then until it
/// writes it again; returns what the first read found, and checks the write.
async fn recovered(store: &StateStore, key: &str, event: &str) -> Option<String> {
    let started = std::time::Instant::now();
    let before = loop {
        match store.get::<String>(key).await {
            Ok(value) => break value,
            Err(err) => assert!(
                started.elapsed() < PATIENCE,
                "the handle did not recover after {event}: {}",
                report(&err)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = std::time::Instant::now();
    while let Err(err) = store.set_state(key, &json!("after")).await {
        assert!(
            started.elapsed() < PATIENCE,
            "writes did not recover after {event}: {}",
            report(&err)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store
            .get::<String>(key)
            .await
            .expect("read after")
            .as_deref(),
        Some("after")
    );
    before
}

/// Fencing tokens survive a server restart: a lease taken after the restart gets a greater
/// token than one taken before (for servers that keep their data).
pub async fn lease_tokens_survive_restart(server: &mut dyn TestServer, store: &StateStore) {
    let ttl = Duration::from_millis(500);
    let before = store
        .lease("restart")
        .ttl(ttl)
        .try_acquire()
        .await
        .expect("acquire before the crash")
        .expect("a free lease");
    server.crash();
    server.restart().expect("restart the server");
    let started = std::time::Instant::now();
    let after = loop {
        match store.lease("restart").ttl(ttl).acquire(PATIENCE).await {
            Ok(Some(lease)) => break lease,
            Ok(None) => panic!("the lease from before the restart never expired"),
            Err(err) => assert!(
                started.elapsed() < PATIENCE,
                "leases did not recover after the restart: {}",
                report(&err)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        after.fencing_token() > before.fencing_token(),
        "the restart reset fencing tokens: {} before, {} after",
        before.fencing_token(),
        after.fencing_token()
    );
}

/// With the server down, a limiter follows its [`FailurePolicy`](state_store_core::FailurePolicy):
/// `Open` allows, `Closed` denies with a `retry_after`; neither hangs or errors. The server
/// comes back, and the scenario waits until the handle reads and writes again.
pub async fn limiter_follows_its_failure_policy(server: &mut dyn TestServer, store: &StateStore) {
    use state_store_core::{FailurePolicy, Limiter, Quota};
    let open = Limiter::gcra(store, Quota::per_minute(1)).failure_policy(FailurePolicy::Open);
    let closed = Limiter::gcra(store, Quota::per_minute(1)).failure_policy(FailurePolicy::Closed);
    let first = open
        .check("policy")
        .await
        .expect("check with the server up");
    assert!(first.allowed);
    assert!(
        !open.check("policy").await.expect("check").allowed,
        "the quota is one"
    );
    server.crash();
    let down = tokio::time::timeout(PATIENCE, open.check("policy"))
        .await
        .expect("a check hung with the server down")
        .expect("fail-open answers");
    assert!(down.allowed, "fail-open denied: {down:?}");
    let down = tokio::time::timeout(PATIENCE, closed.check("other"))
        .await
        .expect("a check hung with the server down")
        .expect("fail-closed answers");
    assert!(!down.allowed, "fail-closed allowed: {down:?}");
    assert!(down.retry_after.is_some());
    server.restart().expect("restart the server");
    // The handle is usable again before the scenario hands it back.
    recovered(store, "fault:policy", "the restart").await;
}

/// The server hangs, and `store` has `breaker` in its stack (opening after `threshold`
/// failures, with a cool-down well under 30 s): after `threshold` calls end with their
/// timeouts the breaker is open, and the next read and write fail at once with
/// [`Error::Unavailable`] from the breaker (nothing sent: the refused write never lands). The
/// server wakes: after the cool-down one probe closes the breaker, the same handle works, and
/// what was written before is still there.
pub async fn breaker_fails_fast_while_the_store_is_down(
    server: &mut dyn TestServer,
    store: &StateStore,
    breaker: &state_store_core::CircuitBreakerLayer,
    threshold: u32,
) {
    use state_store_core::BreakerState;

    store
        .set_state("fault:breaker", &json!("before"))
        .await
        .expect("write before the hang");
    assert_eq!(breaker.state(), BreakerState::Closed);

    server.pause().expect("pause the server");
    let mut timed_out = Vec::new();
    for _ in 0..threshold {
        let read = tokio::time::timeout(PATIENCE, store.get_state(&["fault:breaker"])).await;
        timed_out.push(read.map(|r| r.map(drop)));
    }
    let state = breaker.state();
    let read = tokio::time::timeout(PATIENCE, store.get_state(&["fault:breaker"])).await;
    let write = tokio::time::timeout(PATIENCE, store.set_state("fault:breaker-x", &json!(1))).await;
    server.resume().expect("resume the server");

    for outcome in timed_out {
        match outcome {
            Ok(Err(err)) if err.is_transient() => {}
            other => panic!("a read with the server frozen gave {other:?}"),
        }
    }
    assert_eq!(
        state,
        BreakerState::Open,
        "{threshold} failures did not open it"
    );
    for (what, outcome) in [("a read", read.map(|r| r.map(drop))), ("a write", write)] {
        match outcome {
            Ok(Err(err @ Error::Unavailable { .. }))
                if report(&err).contains("circuit breaker open") => {}
            other => panic!("{what} with the breaker open gave {other:?}, not its refusal"),
        }
    }

    let before = recovered(store, "fault:breaker", "the server woke up").await;
    assert_eq!(before.as_deref(), Some("before"), "the hang lost data");
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "the probe did not close it"
    );
    let refused = store
        .get::<i64>("fault:breaker-x")
        .await
        .expect("read the refused write");
    assert_eq!(refused, None, "a write the breaker refused landed");
}

/// The server dies and comes back: a read made while it is down fails with `Unavailable` on
/// `plain` (a handle without retries), and succeeds on `retrying` (the same store with a
/// [`RetryLayer`](state_store_core::RetryLayer) whose deadline outlasts the restart), which
/// rides out the outage instead of failing. The server stays down for 1.5 s: give both
/// handles a request timeout of 1 s at most, so that the first attempt fails whatever the
/// client does while it reconnects.
pub async fn retry_rides_out_a_restart(
    server: &mut dyn TestServer,
    plain: &StateStore,
    retrying: &StateStore,
) {
    retrying
        .set_state("fault:retry", &json!("before"))
        .await
        .expect("write before the crash");
    server.crash();
    let without = tokio::time::timeout(PATIENCE, plain.get_state(&["fault:retry"])).await;
    let read = async { tokio::time::timeout(PATIENCE, retrying.get_state(&["fault:retry"])).await };
    let restart = async {
        // Longer than a request timeout: the first attempt fails. The restart itself blocks
        // this task; the read's retries go on when it is done.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.restart()
    };
    let (with, restarted) = tokio::join!(read, restart);
    restarted.expect("restart the server");
    match without {
        Ok(Err(err @ Error::Unavailable { .. })) => assert!(err.is_transient()),
        other => panic!("a read without retries, server down, gave {other:?}"),
    }
    match with {
        Ok(Ok(_)) => {}
        other => panic!("a read with retries across a restart gave {other:?}"),
    }
}

/// A value held by a near cache over `backend` (one read no longer reaches the server), the
/// server restarted (with its data) and the value rewritten through `other`, another
/// connection: the cache serves the new value once it has heard of the restart, and never the
/// old one again. (A cache whose stream is back before the rewrite hears of it as of any
/// write; [`near_cache_follows_a_lost_connection`] is the case that needs the reconnect to
/// empty the cache.)
pub async fn near_cache_follows_a_restart(
    server: &mut dyn TestServer,
    backend: Arc<dyn Backend>,
    other: &StateStore,
) {
    let near = crate::near_cache::Probe::over(backend);
    other
        .set_state("fault:near", &json!(1))
        .await
        .expect("write");
    near.cache("fault:near", Some(&json!(1))).await;
    server.restart().expect("restart the server");
    let started = std::time::Instant::now();
    while other.set_state("fault:near", &json!(2)).await.is_err() {
        assert!(started.elapsed() < PATIENCE, "no write after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    near.follows("fault:near", Some(&json!(2)), "the restart")
        .await;
}

/// A value held by a near cache over `backend`, whose connections go through `link`; the link
/// partitioned, the value rewritten through `other` (a connection around the link), then every
/// connection through the link reset: the cache serves the new value once it has reconnected,
/// and never the old one again — the change it missed while cut off must not stay hidden.
pub async fn near_cache_follows_a_lost_connection(
    link: &dyn Link,
    backend: Arc<dyn Backend>,
    other: &StateStore,
) {
    let near = crate::near_cache::Probe::over(backend);
    other
        .set_state("fault:near-link", &json!(1))
        .await
        .expect("write");
    near.cache("fault:near-link", Some(&json!(1))).await;
    link.set(LinkFault::BlackHole);
    other
        .set_state("fault:near-link", &json!(2))
        .await
        .expect("write around the partition");
    link.set(LinkFault::ResetAll);
    near.follows("fault:near-link", Some(&json!(2)), "the lost connection")
        .await;
}
