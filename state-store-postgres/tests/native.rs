//! The one-statement GCRA: the store answers rate-limit checks itself (not through the
//! limiter's compare-and-set loop), on the server's clock, with core's answers.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::time::Duration;

use state_store_core::{Backend, Error, RateAlgorithm, RateLimitReply, RateLimitRequest};
use state_store_postgres::{PostgresConfig, PostgresStateStore};
use state_store_testkit::harness::postgres::postgres_url;

const HOUR: Duration = Duration::from_secs(3600);

async fn check(store: &PostgresStateStore, key: &str, cost: u64, write: bool) -> RateLimitReply {
    try_check(store, key, cost, write)
        .await
        .expect("a check")
        .expect("a native answer")
}

async fn try_check(
    store: &PostgresStateStore,
    key: &str,
    cost: u64,
    write: bool,
) -> Result<Option<RateLimitReply>, Error> {
    let native = store
        .extensions()
        .rate_limit
        .expect("PostgreSQL answers rate limits itself");
    let mut request = RateLimitRequest::new(
        key,
        RateAlgorithm::Gcra {
            emission_interval: HOUR,
            burst: 3,
        },
        cost,
    );
    request.write = write;
    native.rate_limit(&request).await
}

/// The arrival time stored at `key`, in microseconds.
async fn stored(store: &PostgresStateStore, key: &str) -> u64 {
    let entry = store
        .get_many(&[key.to_owned()])
        .await
        .expect("read")
        .remove(0)
        .expect("stored");
    let text = String::from_utf8(entry.value).expect("text");
    text.parse().expect("an integer of microseconds")
}

/// With one unit an hour and a burst of 3: three pass (2, 1, 0 left), the fourth is denied
/// with about an hour to wait, and nothing else changes the stored arrival time: a peek, a
/// denial, a cost above the burst (denied for good: no wait to give).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_is_answered_in_the_store_with_cores_answers() {
    let Some(url) = postgres_url() else {
        return;
    };
    let config = PostgresConfig::from_url(&url)
        .expect("url")
        .with_table(&format!("gcra_{}", std::process::id()))
        .expect("a plain name");
    let store = PostgresStateStore::connect(config).await.expect("connect");
    for left in [2, 1, 0] {
        let reply = check(&store, "k", 1, true).await;
        assert!(reply.allowed, "{reply:?}");
        assert_eq!(reply.remaining, left, "{reply:?}");
        assert!(reply.retry_after.is_none());
    }
    let tat = stored(&store, "k").await;

    let denied = check(&store, "k", 1, true).await;
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 0);
    let wait = denied.retry_after.expect("a wait");
    assert!(
        wait > HOUR - Duration::from_secs(60) && wait <= HOUR,
        "{wait:?}"
    );
    assert!(denied.reset_after > HOUR * 2, "{denied:?}");

    let peek = check(&store, "k", 1, false).await;
    assert!(!peek.allowed);
    let too_big = check(&store, "k", 4, true).await;
    assert!(
        !too_big.allowed && too_big.retry_after.is_none(),
        "{too_big:?}"
    );
    let after = stored(&store, "k").await;
    assert_eq!(
        after, tat,
        "a denial, a peek or an impossible cost changed the state"
    );

    // A fresh key whose first request costs the whole burst passes, once.
    assert!(check(&store, "fresh", 3, true).await.allowed);
    assert!(!check(&store, "fresh", 1, true).await.allowed);

    // A value that is not an arrival time is refused, not overwritten.
    state_store_core::StateStore::from(
        PostgresStateStore::connect(
            PostgresConfig::from_url(&url)
                .expect("url")
                .with_table(&format!("gcra_{}", std::process::id()))
                .expect("a plain name"),
        )
        .await
        .expect("connect"),
    )
    .set_state("text", &serde_json::json!("not a time"))
    .await
    .expect("write");
    for write in [true, false] {
        let err = try_check(&store, "text", 1, write)
            .await
            .expect_err("not an integer");
        assert!(matches!(err, Error::NotAnInteger { .. }), "{err:?}");
    }
    store.close().await.expect("close");
}
