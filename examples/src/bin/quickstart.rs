//! The quickstart: a session, a visit counter and a job status, kept in `./state.db`.
//!
//! ```text
//! cargo run -p examples --bin quickstart                 # SQLite file ./state.db
//! cargo run -p examples --bin quickstart -- --store memory://
//! cargo run -p examples --bin quickstart -- --store redis://127.0.0.1:6379
//! REDIS_URL=… / NATS_URL=… / DAPR_GRPC_ENDPOINT=… cargo run -p examples --bin quickstart
//! ```
//!
//! Run it twice: the second run prints what the first one left.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use state_store::{Error, SetOptions};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    status: String,
    runs: u32,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = examples::store_url();
    let store = state_store::open(&url).await?;
    println!(
        "state store: {} ({})",
        examples::redacted(&url),
        store.name()
    );

    // What earlier runs left behind: one round trip for all three names.
    let before = store
        .get_state(&["session:ada", "visits", "job:nightly-report"])
        .await?;
    match &before["visits"] {
        None => println!("nothing stored yet — run me again to see state survive a restart"),
        Some(_) => {
            println!("found from earlier runs:");
            for name in ["session:ada", "visits", "job:nightly-report"] {
                let value = before[name]
                    .as_ref()
                    .map_or("(missing)".into(), |v| v.to_string());
                println!("  {name:<20} {value}");
            }
        }
    }

    // Not every backend does everything atomically (Dapr's Redis component has neither TTL
    // nor compare-and-set); such a store says so with `Unsupported` instead of risking it.
    let caps = store.capabilities().clone();

    // A session that expires a day after its last write.
    let mut session = SetOptions::new();
    if caps.ttl {
        session = session.ttl(Duration::from_secs(24 * 3600));
    } else {
        println!("(no atomic TTL on this store: the session is kept until removed)");
    }
    let ada = json!({ "user": "ada", "theme": "dark" });
    store.set_with("session:ada", &ada, session).await?;

    // An atomic counter: exact even with many instances writing at once.
    let visits = if caps.increment {
        store.increment("visits", 1, None).await?
    } else {
        println!("(no atomic increment on this store: counting with a plain read and write)");
        let visits = store.get::<i64>("visits").await?.unwrap_or(0) + 1;
        store.set("visits", &visits).await?;
        visits
    };

    // A job status updated with compare-and-set: no lost update between instances.
    let next = |old: Option<Job>| {
        let runs = old.map_or(0, |job| job.runs) + 1;
        Job {
            status: format!("done (run {runs})"),
            runs,
        }
    };
    let job = if caps.conditional {
        store.update("job:nightly-report", next).await?
    } else {
        let job = next(store.get("job:nightly-report").await?);
        store.set("job:nightly-report", &job).await?;
        job
    };

    println!(
        "this run: visit #{visits}, job is {:?}, session saved",
        job.status
    );
    store.destroy().await
}
