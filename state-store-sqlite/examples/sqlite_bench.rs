//! Adapter vs raw rusqlite running the same statements, in one process, on one file.
//!
//! ```text
//! cargo run --release -p state-store-sqlite --example sqlite_bench
//! ```
//!
//! The raw side calls rusqlite directly from the task, on one connection behind a mutex: the
//! cheapest correct way to share one connection, and it blocks the runtime (what the adapter
//! exists to avoid, beyond a bound). The adapter runs small reads and writes on the caller's
//! thread with a capped lock wait, and hands the rest to its own thread.
//! Both sides of `get_state` build the same name → value map.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, params_from_iter, Connection};
use serde_json::{json, Value};
use state_store_core::StateStore;
use state_store_sqlite::sql::{INCREMENT, UPSERT};
use state_store_sqlite::{rusqlite, SqliteConfig, SqliteStateStore};
use state_store_testkit::bench::{self, adapter, op, Case};
use state_store_testkit::harness::temp_dir;

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench:k{}", i % KEYS)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

const GET: &str = "SELECT key, value, version, expires_at FROM state_store
     WHERE key IN (?) AND (expires_at IS NULL OR expires_at > ?)";
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = temp_dir("sqlite-bench");
    let path = dir.path().join("state.db");
    let store = StateStore::from(SqliteStateStore::connect(SqliteConfig::new(&path)).await?);
    let conn = Connection::open(&path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let raw = Arc::new(Mutex::new(conn));
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
    }
    let names10: Vec<String> = (0..10).map(key).collect();

    let get = |tasks, name: &str, store: &StateStore, key: fn(u64) -> String| {
        let r = raw.clone();
        let raw_get = op(move |i| {
            let r = r.clone();
            async move {
                let conn = r.lock().expect("lock");
                let mut stmt = conn.prepare_cached(GET).expect("prepare");
                let text: String = stmt
                    .query_row(params![key(i), now_ms()], |row| row.get(1))
                    .expect("row");
                let _: Value = serde_json::from_str(&text).expect("json");
            }
        });
        Case::new(name, tasks, adapter::get(store, key), raw_get)
    };
    let set = |tasks| {
        let (r, v) = (raw.clone(), value.clone());
        let raw_set = op(move |i| {
            let (r, v) = (r.clone(), v.clone());
            async move {
                let text = serde_json::to_string(&v).expect("json");
                let conn = r.lock().expect("lock");
                let version: i64 = rand::random_range(1..i64::MAX);
                conn.prepare_cached(UPSERT)
                    .expect("prepare")
                    .execute(params![key(i), text, version, None::<i64>])
                    .expect("set");
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw_set)
    };
    let get_state = |tasks| {
        let (r, n) = (raw.clone(), names10.clone());
        let raw_many = op(move |_| {
            let (r, n) = (r.clone(), n.clone());
            async move {
                let sql = GET.replace("IN (?)", &format!("IN ({})", vec!["?"; n.len()].join(",")));
                let conn = r.lock().expect("lock");
                let mut stmt = conn.prepare_cached(&sql).expect("prepare");
                let now = now_ms();
                let args = n
                    .iter()
                    .map(|k| k as &dyn rusqlite::ToSql)
                    .chain([&now as &dyn rusqlite::ToSql]);
                let mut rows = stmt.query(params_from_iter(args)).expect("query");
                // The same result as `get_state`: a map from each name to its value or `None`.
                let mut state: HashMap<String, Option<Value>> = HashMap::with_capacity(n.len());
                while let Some(row) = rows.next().expect("row") {
                    let text: String = row.get(1).expect("value");
                    let value = serde_json::from_str(&text).expect("json");
                    state.insert(row.get(0).expect("key"), Some(value));
                }
                for name in &n {
                    if !state.contains_key(name) {
                        state.insert(name.clone(), None);
                    }
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
        let r = raw.clone();
        let raw_increment = op(move |i| {
            let r = r.clone();
            async move {
                let conn = r.lock().expect("lock");
                let version: i64 = rand::random_range(1..i64::MAX);
                let mut stmt = conn.prepare_cached(INCREMENT).expect("prepare");
                let mut rows = stmt
                    .query(params![
                        format!("bench:r{}", i % 10),
                        1,
                        version,
                        None::<i64>,
                        now_ms()
                    ])
                    .expect("incr");
                let _: i64 = rows
                    .next()
                    .expect("incr")
                    .expect("a row")
                    .get(0)
                    .expect("sum");
                // Stepped to its end, as a correct program must: `query_row` stops after the
                // row and resets the statement, which commits without reporting a failed commit
                // or calling the WAL hook, so auto-checkpoint never runs and the WAL grows
                // without bound (500 MB after 30 000 increments).
                while rows.next().expect("incr").is_some() {}
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
    // change feed) against the raw client's read, and against decoding the value alone (the
    // floor of any read that returns it decoded).
    let near = bench::near_cached(&store);
    let hot = |_| key(0);
    let cases = [
        get(1, "hot get: near cache vs raw", &near, hot),
        get(16, "hot get: near cache vs raw", &near, hot),
        Case::new(
            "hot get: near cache vs decoding alone",
            1,
            adapter::get(&near, hot),
            bench::decode_only(&value),
        ),
        get(1, "get", &store, key),
        set(1),
        get_state(1),
        increment(1),
        get(16, "get", &store, key),
        set(16),
        get_state(16),
        increment(16),
    ];
    bench::run("SqliteStateStore vs raw rusqlite", &cases).await;
    store.destroy().await?;
    Ok(())
}
