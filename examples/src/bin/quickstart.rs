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
use state_store_core::Error;

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    status: String,
    runs: u32,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = examples::store_url();
    let store = examples::open(&url).await?;
    println!("state store: {url} ({})", store.name());

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

    // A session that expires a day after its last write.
    store
        .set_with(
            "session:ada",
            &json!({ "user": "ada", "theme": "dark" }),
            state_store_core::SetOptions::new().ttl(Duration::from_secs(24 * 3600)),
        )
        .await?;

    // An atomic counter: exact even with many instances writing at once.
    let visits = store.increment("visits", 1, None).await?;

    // A job status updated with compare-and-set: no lost update between instances.
    let job = store
        .update("job:nightly-report", |old: Option<Job>| {
            let runs = old.map_or(0, |job| job.runs) + 1;
            Job {
                status: format!("done (run {runs})"),
                runs,
            }
        })
        .await?;

    println!(
        "this run: visit #{visits}, job is {:?}, session saved",
        job.status
    );
    store.destroy().await
}
