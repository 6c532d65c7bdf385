//! Adapter vs raw tokio-postgres, in one process, on one PostgreSQL.
//!
//! ```text
//! cargo run --release -p state-store-postgres --example postgres_bench
//! ```
//!
//! The server: `STATE_STORE_TEST_POSTGRES_URL`, else one the test harness starts on loopback
//! (initdb + postgres). Both sides use a deadpool pool of the same size on the same server,
//! prepared statements cached per connection, on the same table: the raw side is what a
//! service writing its own queries against the adapter's table would run (for writes, a plain
//! upsert, without the bookkeeping of the adapter's change feed).
//! Both sides of `get_state` build the same name → value map. The raw increment leaves out
//! the adapter's checks (an expired counter restarts, a value that is not an integer is
//! refused): what it measures is what those cost.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::collections::HashMap;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{json, Value};
use state_store_core::StateStore;
use state_store_postgres::{deadpool_postgres, tokio_postgres, PostgresConfig, PostgresStateStore};
use state_store_testkit::bench::{self, adapter, op, Case};
use state_store_testkit::harness::postgres::postgres_url;

const KEYS: u64 = 1000;
const POOL: usize = 16;

fn key(i: u64) -> String {
    format!("bench:k{}", i % KEYS)
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = postgres_url().ok_or("no PostgreSQL (see the harness's message above)")?;
    let config = PostgresConfig::from_url(&url)?.with_pool_size(POOL)?;
    let store = StateStore::from(PostgresStateStore::connect(config.clone()).await?);
    let raw = Pool::builder(Manager::from_config(
        config.pg().clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    ))
    .max_size(POOL)
    .runtime(Runtime::Tokio1)
    .build()?;
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let get = |tasks, name: &str, store: &StateStore, key: fn(u64) -> String| {
        let pool = raw.clone();
        let raw_get = op(move |i| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.expect("a connection");
                let sql = format!("SELECT value FROM state_store WHERE key = $1 AND {LIVE}");
                let statement = client.prepare_cached(&sql).await.expect("prepare");
                let row = client
                    .query_opt(&statement, &[&key(i).as_bytes()])
                    .await
                    .expect("get")
                    .expect("a row");
                let text: String = row.get(0);
                let _: Value = serde_json::from_str(&text).expect("json");
            }
        });
        Case::new(name, tasks, adapter::get(store, key), raw_get)
    };
    let set = |tasks| {
        let (pool, v) = (raw.clone(), value.clone());
        let raw_set = op(move |i| {
            let (pool, v) = (pool.clone(), v.clone());
            async move {
                let text = serde_json::to_string(&v).expect("json");
                let client = pool.get().await.expect("a connection");
                let statement = client
                    .prepare_cached(
                        "INSERT INTO state_store AS s (key, value, version, expires_at)
                         VALUES ($1, $2, nextval('state_store_version'), NULL)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                         version = excluded.version, expires_at = excluded.expires_at
                         RETURNING version",
                    )
                    .await
                    .expect("prepare");
                client
                    .query_one(&statement, &[&key(i).as_bytes(), &text])
                    .await
                    .expect("set");
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw_set)
    };
    let get_state = |tasks| {
        let (pool, n) = (raw.clone(), names10.clone());
        let raw_many = op(move |_| {
            let (pool, n) = (pool.clone(), n.clone());
            async move {
                let client = pool.get().await.expect("a connection");
                let sql =
                    format!("SELECT key, value FROM state_store WHERE key = ANY($1) AND {LIVE}");
                let statement = client.prepare_cached(&sql).await.expect("prepare");
                let keys: Vec<&[u8]> = n.iter().map(String::as_bytes).collect();
                let rows = client.query(&statement, &[&keys]).await.expect("query");
                // The same result as `get_state`: a map from each name to its value or `None`.
                let mut state: HashMap<String, Option<Value>> = HashMap::with_capacity(n.len());
                for row in rows {
                    let key: Vec<u8> = row.get(0);
                    let text: String = row.get(1);
                    let value = serde_json::from_str(&text).expect("json");
                    state.insert(String::from_utf8(key).expect("utf-8"), Some(value));
                }
                for name in &n {
                    state.entry(name.clone()).or_insert(None);
                }
            }
        });
        Case::new(
            "get_state ×10",
            tasks,
            adapter::get_state(&store, &names10),
            raw_many,
        )
    };
    let counter = |i: u64| format!("bench:c{}", i % 10);
    let increment = |tasks| {
        let pool = raw.clone();
        let raw_increment = op(move |i| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.expect("a connection");
                let statement = client
                    .prepare_cached(
                        "INSERT INTO state_store AS s (key, value, version, expires_at)
                         VALUES ($1, $2::bigint::text, nextval('state_store_version'), NULL)
                         ON CONFLICT (key) DO UPDATE SET
                         value = (s.value::bigint + $2::bigint)::text,
                         version = excluded.version
                         RETURNING value::bigint",
                    )
                    .await
                    .expect("prepare");
                let row = client
                    .query_one(
                        &statement,
                        &[&format!("bench:r{}", i % 10).as_bytes(), &1_i64],
                    )
                    .await
                    .expect("incr");
                let _: i64 = row.get(0);
            }
        });
        Case::new(
            "increment",
            tasks,
            adapter::increment(&store, counter),
            raw_increment,
        )
    };
    // One hot name read again and again: the near cache (in process, invalidated by the
    // server's change stream) against the raw client's round trip.
    let near = bench::near_cached(&store);
    let hot = |_| key(0);
    let cases = [
        get(1, "hot get: near cache vs raw", &near, hot),
        get(64, "hot get: near cache vs raw", &near, hot),
        get(1, "get", &store, key),
        set(1),
        get_state(1),
        increment(1),
        get(64, "get", &store, key),
        set(64),
        get_state(64),
        increment(64),
    ];
    bench::run("PostgresStateStore vs raw tokio-postgres", &cases).await;
    store.destroy().await?;
    Ok(())
}
