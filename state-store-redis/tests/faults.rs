//! A server that goes away, comes back, or refuses the password.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use state_store_conformance::faults::{
    breaker_fails_fast_while_the_store_is_down, failed_writes_never_land_later,
    hung_server_times_out, killed_server_recovers, lease_tokens_survive_restart,
    limiter_follows_its_failure_policy, retry_rides_out_a_restart,
};
use state_store_conformance::history::histories_are_linearizable;
use state_store_core::{Error, StateStore};
use state_store_redis::{RedisConfig, RedisStateStore};
use state_store_testkit::harness::redis::RedisServer;
use state_store_testkit::harness::unavailable;

fn server(extra: &[&str]) -> Option<RedisServer> {
    RedisServer::spawn(extra).map_or_else(|why| unavailable("redis", &why), Some)
}

/// A handle that gives up on a call after a second and reconnects quickly: for servers that
/// go away.
async fn impatient_store(server: &RedisServer) -> StateStore {
    let config = RedisConfig::from_url(&server.url())
        .expect("url")
        .with_request_timeout(Duration::from_secs(1))
        .with_reconnect(0, Duration::from_millis(200));
    StateStore::from(RedisStateStore::connect(config).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_gives_unavailable_then_the_same_handle_recovers() {
    // Append-only persistence, fsync on every write: the data must survive the restart.
    let Some(mut server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let store = impatient_store(&server).await;
    killed_server_recovers(&mut server, &store, true).await;
    store.destroy().await.expect("destroy");
}

/// A frozen server is why every request carries a deadline (the adapter's one per-request
/// cost over raw fred, see the benchmark): without it these calls would wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_gives_unavailable_then_the_same_handle_recovers() {
    let Some(mut server) = server(&[]) else {
        return;
    };
    let store = impatient_store(&server).await;
    hung_server_times_out(&mut server, &store).await;
    store.destroy().await.expect("destroy");
}

/// Writes that time out against a frozen server are never sent later: not after the server
/// is killed and restarted, not once the client has reconnected. (With append-only
/// persistence, so what a write did before the freeze survives the restart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_never_land_after_a_restart() {
    let Some(mut server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let url = server.url();
    failed_writes_never_land_later(&mut server, || async {
        let config = RedisConfig::from_url(&url)?
            .with_request_timeout(Duration::from_secs(1))
            .with_reconnect(0, Duration::from_millis(200));
        RedisStateStore::connect(config).await.map(StateStore::from)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_tokens_survive_a_restart_with_append_only_persistence() {
    // Tokens outlive a restart only when the counter does: with AOF, fsync on every write.
    let Some(mut server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let store = impatient_store(&server).await;
    lease_tokens_survive_restart(&mut server, &store).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiters_fail_open_or_closed_with_the_server_down() {
    let Some(mut server) = server(&[]) else {
        return;
    };
    let store = impatient_store(&server).await;
    limiter_follows_its_failure_policy(&mut server, &store).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn wrong_password_fails_at_connect_with_a_config_error() {
    let Some(server) = server(&["--requirepass", "right-password"]) else {
        return;
    };
    let url = server.url().replace("redis://", "redis://:wrong-password@");
    let err = RedisStateStore::connect(RedisConfig::from_url(&url).expect("url"))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("wrong-password"),
        "{err:?}"
    );

    let url = server.url().replace("redis://", "redis://:right-password@");
    let store = StateStore::from(
        RedisStateStore::connect(RedisConfig::from_url(&url).expect("url"))
            .await
            .expect("rightpassword"),
    );
    store.set_state("k", &json!(1)).await.expect("set");
    assert!(!format!("{store:?}").contains("right-password"));
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn no_server_fails_within_the_connect_timeout() {
    let port = state_store_testkit::harness::free_port();
    let config = RedisConfig::from_url(&format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .with_connect_timeout(Duration::from_secs(1));
    let result = tokio::time::timeout(Duration::from_secs(30), RedisStateStore::connect(config))
        .await
        .expect("connect hung");
    let err = result.expect_err("nothing listens");
    assert!(err.is_transient(), "{err:?}");
}

/// With a circuit breaker in the stack, a frozen server costs `threshold` timeouts, not one
/// per call: then calls fail at once, and the breaker closes once the server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_fails_fast_while_the_server_hangs() {
    let Some(mut server) = server(&[]) else {
        return;
    };
    let config = RedisConfig::from_url(&server.url())
        .expect("url")
        .with_request_timeout(Duration::from_secs(1))
        .with_reconnect(0, Duration::from_millis(200));
    let backend = RedisStateStore::connect(config).await.expect("connect");
    let breaker =
        state_store_core::CircuitBreakerLayer::new(2, Duration::from_millis(300)).expect("valid");
    let store = StateStore::builder(backend).layer(breaker.clone()).build();
    breaker_fails_fast_while_the_store_is_down(&mut server, &store, &breaker, 2).await;
    store.destroy().await.expect("destroy");
}

/// A retry layer turns a restart into a wait: a read made while the server is down succeeds
/// once it is back, where a handle without one gets `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_layer_rides_out_a_restart() {
    let Some(mut server) = server(&[]) else {
        return;
    };
    let plain = impatient_store(&server).await;
    let config = RedisConfig::from_url(&server.url())
        .expect("url")
        .with_request_timeout(Duration::from_secs(1))
        .with_reconnect(0, Duration::from_millis(200));
    let backend = RedisStateStore::connect(config).await.expect("connect");
    let retry = state_store_core::RetryLayer::new(1000, Duration::from_secs(30)).expect("valid");
    let retrying = StateStore::builder(backend).layer(retry).build();
    retry_rides_out_a_restart(&mut server, &plain, &retrying).await;
    retrying.destroy().await.expect("destroy");
    // The plain handle may still be reconnecting: its goodbye is not the point here.
    let _ = plain.destroy().await;
}

/// Histories of clients doing random reads, writes, compare-and-sets and increments while
/// the server (append-only, fsync always) is killed and restarted, then frozen and thawed,
/// are linearizable; a violation is written out with its seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_a_kill_and_a_freeze() {
    let Some(mut server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let url = server.url();
    histories_are_linearizable(
        &mut server,
        || impatient(&url),
        "redis-standalone-kill-freeze",
    )
    .await;
}

/// The same scenario on a server without persistence: the kill loses what was written, and
/// the audit must say so. (A documented property of Redis, not a bug: this proves the
/// recorder catches lost acknowledged writes on real servers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_persistence_is_caught_losing_writes() {
    use state_store_conformance::history::{
        linearizable_under_faults, print_verdict, summary, Workload,
    };
    let Some(mut server) = server(&["--appendonly", "no", "--save", ""]) else {
        return;
    };
    let url = server.url();
    let run = linearizable_under_faults(&mut server, || impatient(&url), Workload::default()).await;
    print_verdict("redis-standalone-no-persistence-kill-freeze", 1, &run);
    // The audit must see the loss. The checker usually does too, but need not: a remove or a
    // counter reset whose outcome was unknown at the kill can explain empty keys.
    assert!(
        run.lost > 0 && !run.report.unknown(),
        "a restart without persistence lost every key, and the audit saw nothing: {}",
        summary(&run)
    );
}

/// A handle on `url` that gives up on a call after a second and reconnects quickly.
async fn impatient(url: &str) -> Result<StateStore, state_store_core::Error> {
    let config = RedisConfig::from_url(url)?
        .with_request_timeout(Duration::from_secs(1))
        .with_reconnect(0, Duration::from_millis(200));
    RedisStateStore::connect(config).await.map(StateStore::from)
}

/// The same clients through a fault proxy: latency with jitter, a partition past the request
/// timeout, a half-open link, every connection reset, new ones refused. Histories stay
/// linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_are_linearizable_across_partitions() {
    use state_store_conformance::history::histories_are_linearizable_across_partitions;
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let (proxy, url) = FaultProxy::in_front_of(&server.url()).expect("start the proxy");
    histories_are_linearizable_across_partitions(
        &proxy,
        || impatient(&url),
        "redis-standalone-partitions",
    )
    .await;
}

/// Whether `redis-cli -p <port> <args…>` printed `expect`.
fn redis_cli(port: u16, args: &[&str], expect: &str) -> bool {
    std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(expect))
}

/// A replica promoted after its primary died has only what it had replicated: with the
/// replication link cut while the primary acknowledged writes, clients that move from the
/// primary to the replica (through one proxy address) lose those writes, and the audit finds
/// them. Asynchronous replication, as Redis documents it: this measures what a failover can
/// lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_caught_missing_acknowledged_writes() {
    use state_store_conformance::faults::{Link, LinkFault, TestServer};
    use state_store_conformance::history::{print_verdict, record_during, summary, Workload};
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(mut primary) = server(&[]) else {
        return;
    };
    // Replication goes through a proxy of its own, so the link can be cut without the
    // kernel's buffers delivering what was sent once the primary is gone.
    let replication = FaultProxy::start(([127, 0, 0, 1], primary.port()).into()).expect("proxy");
    let upstream = replication.port().to_string();
    let Some(replica) = server(&["--replicaof", "127.0.0.1", &upstream]) else {
        return;
    };
    let synced = state_store_testkit::harness::wait_for(Duration::from_secs(30), || {
        redis_cli(
            replica.port(),
            &["info", "replication"],
            "master_link_status:up",
        )
    });
    assert!(synced, "the replica never synced");
    let (proxy, url) = FaultProxy::in_front_of(&primary.url()).expect("start the proxy");
    let failover = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        replication.set(LinkFault::BlackHole);
        // The primary acknowledges writes the replica never gets.
        tokio::time::sleep(Duration::from_millis(700)).await;
        primary.crash();
        assert!(
            redis_cli(replica.port(), &["replicaof", "no", "one"], "OK"),
            "promote the replica"
        );
        proxy.redirect(([127, 0, 0, 1], replica.port()).into());
        proxy.set(LinkFault::ResetAll);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    };
    let run = record_during(|| impatient(&url), Workload::default(), failover).await;
    print_verdict("redis-replica-promoted-link-cut", 1, &run);
    // The audit must see the loss; the checker usually does too (see above).
    assert!(
        run.lost > 0 && !run.report.unknown(),
        "writes acknowledged by the lost primary vanished, and the audit saw nothing: {}",
        summary(&run)
    );
}

/// A Redis Cluster whose master (of one of the clients' keys) is killed: its replica takes
/// over, and the same handles serve that slot again from the new master — clients make calls
/// on the key after the failover that succeed. Replication is asynchronous, so a write the old
/// master acknowledged just before it died can be lost: the run prints the checker's verdict
/// and the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_is_ridden_out_and_measured() {
    use state_store_conformance::faults::TestServer;
    use state_store_conformance::history::{print_verdict, record_during, seeded};
    use state_store_testkit::harness::redis::RedisCluster;
    let cluster =
        RedisCluster::spawn_with_replicas(&["--appendonly", "yes", "--appendfsync", "always"]);
    let Some(mut cluster) = cluster.map_or_else(|why| unavailable("redis cluster", &why), Some)
    else {
        return;
    };
    let url = cluster.url();
    for workload in seeded() {
        let key = format!("lin:{}:r0", workload.seed);
        let (master, replica) = cluster.master_of(&key).expect("the key's master");
        let replica = replica.expect("every master has a replica");
        // After an earlier round, the old master may still be syncing as a replica.
        let syncing = Instant::now();
        while !cluster.replica_in_sync(replica) {
            assert!(
                syncing.elapsed() < Duration::from_secs(30),
                "the replica never synced"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let started = Instant::now();
        let mut recovered = Duration::ZERO;
        let failover = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.node_mut(master).expect("the master").crash();
            let promoted = Instant::now();
            while !cluster.serves_as_master(replica) {
                assert!(
                    promoted.elapsed() < Duration::from_secs(30),
                    "the replica never took over"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            recovered = started.elapsed();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            // The old master comes back as a replica of the new one.
            let old = cluster.node_mut(master).expect("the master");
            old.restart().expect("restart");
            tokio::time::sleep(Duration::from_millis(1000)).await;
        };
        let run = record_during(|| impatient(&url), workload, failover).await;
        print_verdict("redis-cluster-failover", workload.seed, &run);
        let after = u64::try_from(recovered.as_nanos()).unwrap_or(u64::MAX);
        assert!(
            run.history
                .iter()
                .any(|op| op.key == key && op.invoked > after && op.completed.is_some()),
            "no call on {key} succeeded after its slot failed over"
        );
    }
}

/// A near-cached handle follows the server across a restart: a value it cached before, then
/// rewritten through another connection once the server is back (its notification may be
/// sent before the cache has subscribed again), is read anew — the reconnect empties the
/// cache — and once the new value is read, the old one never comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_follows_the_server_across_a_restart() {
    use state_store_conformance::faults::near_cache_follows_a_restart;
    // The old value survives the restart: only an emptied cache or an event replaces it.
    let Some(mut server) = server(&["--appendonly", "yes", "--appendfsync", "always"]) else {
        return;
    };
    let near = impatient_store(&server).await;
    let other = impatient_store(&server).await;
    near_cache_follows_a_restart(&mut server, Arc::clone(near.raw_backend()), &other).await;
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}

/// The near cache's connections cut off while the value changes, then reset: the tracking
/// connection comes back untracked, and the cache must not keep what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_follows_the_server_across_a_lost_connection() {
    use state_store_conformance::faults::near_cache_follows_a_lost_connection;
    use state_store_testkit::harness::proxy::FaultProxy;
    let Some(server) = server(&[]) else {
        return;
    };
    let (proxy, url) = FaultProxy::in_front_of(&server.url()).expect("start the proxy");
    let near = impatient(&url).await.expect("connect through the proxy");
    let other = impatient_store(&server).await;
    near_cache_follows_a_lost_connection(&proxy, Arc::clone(near.raw_backend()), &other).await;
    near.destroy().await.expect("destroy");
    other.destroy().await.expect("destroy");
}
