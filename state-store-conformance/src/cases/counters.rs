//! Atomic increments.

use super::*;

/// 32 tasks × 200 increments, over 4 handles, end at exactly 6400; `get_state` reads it.
pub async fn concurrent_increments(ctx: Context) {
    let store = ctx.store().await;
    let first = store.increment("hits", 1, None).await;
    if !declared_or_unsupported(store.capabilities().increment, first, "increment") {
        return;
    }
    ok(store.increment("hits", -1, None).await, "increment");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(ctx.store().await);
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = handles[t % handles.len()].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                ok(store.increment("hits", 1, None).await, "increment");
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await {
            panic!("increment task failed: {err}");
        }
    }
    assert_eq!(read(&store, "hits").await, Some(json!(6400)));
    assert_eq!(ok(store.get::<i64>("hits").await, "get"), Some(6400));
}

/// `increment` returns the new value, accepts negative deltas, and on a non-integer (or on
/// overflow) is `NotAnInteger`, leaving the value as it was.
pub async fn increment_semantics(ctx: Context) {
    let store = ctx.store().await;
    let first = store.increment("c", 5, None).await;
    if !declared_or_unsupported(store.capabilities().increment, first, "increment") {
        return;
    }
    assert_eq!(ok(store.increment("c", -7, None).await, "increment"), -2);
    write(&store, "s", json!("five")).await;
    write(&store, "f", json!(1.5)).await;
    write(&store, "o", json!({ "n": 1 })).await;
    write(&store, "max", json!(i64::MAX)).await;
    for name in ["s", "f", "o", "max"] {
        let before = read(&store, name).await;
        let err = expect_err(store.increment(name, 1, None).await, "bad increment");
        assert!(
            matches!(err, Error::NotAnInteger { .. }),
            "{name}: {}",
            report(&err)
        );
        assert_eq!(read(&store, name).await, before, "{name} changed");
    }
}
