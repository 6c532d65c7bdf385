//! The in-memory `DefaultStateStore` against the simplest correct shared map,
//! `RwLock<HashMap<String, Vec<u8>>>`, doing the same JSON work (values encoded on write,
//! decoded on read), in one process.
//!
//! ```text
//! cargo run --release -p state-store-testkit --example memory_bench
//! ```
//!
//! After the table it counts heap allocations per `get_state` of 100 names on each side.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};
use state_store_core::{DefaultStateStore, StateStore};
use state_store_testkit::bench::{self, adapter, op, Case};

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("bench:k{}", i % KEYS)
}

type Map = Arc<RwLock<HashMap<String, Vec<u8>>>>;

fn raw_get_state(map: &Map, names: &[String]) -> HashMap<String, Option<Value>> {
    let map = map.read().expect("lock");
    names
        .iter()
        .map(|name| {
            let value = map
                .get(name)
                .map(|bytes| serde_json::from_slice(bytes).expect("json"));
            (name.clone(), value)
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = StateStore::new(DefaultStateStore::new());
    let map: Map = Arc::default();
    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        store.set_state(&key(i), &value).await?;
        map.write()
            .expect("lock")
            .insert(key(i), serde_json::to_vec(&value)?);
    }
    let names100: Vec<String> = (0..100).map(key).collect();

    let get = |tasks| {
        let m = map.clone();
        let raw = op(move |i| {
            let m = m.clone();
            async move {
                let bytes = m.read().expect("lock").get(&key(i)).cloned();
                let _: Option<Value> = bytes.map(|b| serde_json::from_slice(&b).expect("json"));
            }
        });
        Case::new("get", tasks, adapter::get(&store, key), raw)
    };
    let set = |tasks| {
        let (m, v) = (map.clone(), value.clone());
        let raw = op(move |i| {
            let (m, v) = (m.clone(), v.clone());
            async move {
                let bytes = serde_json::to_vec(&v).expect("json");
                m.write().expect("lock").insert(key(i), bytes);
            }
        });
        Case::new("set", tasks, adapter::set(&store, key, &value), raw)
    };
    let get_state = |tasks| {
        let (m, n) = (map.clone(), names100.clone());
        let raw = op(move |_| {
            let (m, n) = (m.clone(), n.clone());
            async move {
                let _ = raw_get_state(&m, &n);
            }
        });
        Case::new(
            "get_state ×100",
            tasks,
            adapter::get_state(&store, &names100),
            raw,
        )
    };
    let cases = [
        get(1),
        set(1),
        get_state(1),
        get(64),
        set(64),
        get_state(64),
    ];
    bench::run("DefaultStateStore vs RwLock<HashMap>", &cases).await;

    // Allocations are counted on one thread: a thread of its own, with its own runtime.
    const CALLS: u64 = 1000;
    let (counted, names) = (store.clone(), names100.clone());
    let adapter_allocs = std::thread::spawn(move || {
        let local = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        allocation_counter::measure(|| {
            local.block_on(async {
                for _ in 0..CALLS {
                    counted.get_state(&names).await.expect("get_state");
                }
            });
        })
        .count_total
            / CALLS
    })
    .join()
    .expect("the counting thread");
    let raw_allocs = allocation_counter::measure(|| {
        for _ in 0..CALLS {
            let _ = raw_get_state(&map, &names100);
        }
    })
    .count_total
        / CALLS;
    println!(
        "\nallocations per get_state ×100: adapter {adapter_allocs}, raw {raw_allocs} \
         (the raw side builds the same name → value map)"
    );
    store.destroy().await?;
    Ok(())
}
