//! Cached computations: one loader run per miss across processes, a failed loader retried by
//! one waiter, not by all.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::time::Duration;

use serde_json::{json, Value};
use state_store_core::{Error, StateStore};

use crate::context::{Context, Worker};
use crate::leases::{lease_store, ok, within};
use crate::report;

/// Tasks per process asking at once.
const TASKS: usize = 8;

/// The loader: counts its call in the store, takes 200 ms, and fails on the first call of a
/// `flaky` name.
async fn load(store: &StateStore, name: &str) -> Result<Value, std::io::Error> {
    let calls = ok(
        store.increment(&format!("calls:{name}"), 1, None).await,
        "count a loader call",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    if name == "flaky" && calls == 1 {
        return Err(std::io::Error::other("the first computation fails"));
    }
    Ok(json!({ "computed": name }))
}

/// `TASKS` tasks asking for `name` at once: each reports `ok` (with the right value) or
/// `failed` (its own loader failed).
async fn ask(store: &StateStore, name: &str) -> Vec<String> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let loader_store = store.clone();
                let loader_name = name.clone();
                let got = store
                    .compute(&name, Duration::from_secs(60))
                    .get_or_compute(|| async move { load(&loader_store, &loader_name).await })
                    .await;
                match got {
                    Ok(value) => {
                        assert_eq!(value, json!({ "computed": name }));
                        "ok".to_owned()
                    }
                    Err(Error::Compute { .. }) => "failed".to_owned(),
                    Err(err) => panic!("get_or_compute failed: {}", report(&err)),
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(within("a caller", task).await.expect("task"));
    }
    outcomes
}

/// A stampede: 8 tasks in each of 4 processes (tasks in one process where the store allows no
/// workers) ask for a missing value whose loader takes 200 ms: the loader runs once, and every
/// caller gets its value. When that first loader fails, one waiter — not every one — runs its
/// own: two runs, one caller told of the failure, every other one served. Nothing is cached
/// from the failure.
pub async fn a_missing_value_is_computed_once_across_processes(ctx: Context) {
    let Some(store) = lease_store(&ctx).await else {
        let store = ctx.store().await;
        let refused = store
            .compute("x", Duration::from_secs(1))
            .get_or_compute(|| async { Ok::<_, std::io::Error>(1) })
            .await;
        assert!(
            matches!(refused, Err(Error::Unsupported { .. })),
            "a store without leases computed: {refused:?}"
        );
        return;
    };
    if let Some(name) = ctx.worker_role() {
        for outcome in ask(&store, name).await {
            ctx.tell_parent(&outcome);
        }
        return;
    }
    for name in ["report", "flaky"] {
        let workers: Vec<Worker> = (0..3).filter_map(|_| ctx.spawn_worker(name)).collect();
        let groups = if workers.is_empty() { 4 } else { 1 };
        let mut outcomes = Vec::new();
        for _ in 0..groups {
            outcomes.extend(ask(&ctx.store().await, name).await);
        }
        for worker in workers {
            outcomes.extend(within("a worker's callers", worker.finish()).await);
        }
        assert_eq!(outcomes.len(), 4 * TASKS);
        let calls: i64 = ok(store.get(&format!("calls:{name}")).await, "read the calls")
            .expect("the loader ran");
        let failed = outcomes.iter().filter(|o| *o == "failed").count();
        match name {
            "report" => {
                assert_eq!(calls, 1, "the loader of a missing value ran {calls} times");
                assert_eq!(failed, 0);
            }
            _ => {
                assert_eq!(
                    calls, 2,
                    "after one failure the loader ran {calls} times in all"
                );
                assert_eq!(failed, 1, "{outcomes:?}");
            }
        }
    }
}
