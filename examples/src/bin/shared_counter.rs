//! Several processes of one small service share one store; their counter ends exact.
//!
//! ```text
//! cargo run -p examples --bin shared_counter                   # 4 processes × 500 increments
//! cargo run -p examples --bin shared_counter -- --processes 8 --increments 100
//! ```
//!
//! The program starts copies of itself as workers (`--worker`), each incrementing one counter;
//! the parent checks that the total is exactly processes × increments.

use std::process::Command;

use state_store::Error;

fn flag(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = examples::store_url();
    let increments = flag("--increments", 500);
    let counter = "shared-counter:hits";
    if std::env::args().any(|a| a == "--worker") {
        let store = state_store::open(&url).await?;
        for _ in 0..increments {
            store.increment(counter, 1, None).await?;
        }
        store.destroy().await?;
        return Ok(());
    }

    let processes = flag("--processes", 4);
    let store = state_store::open(&url).await?;
    store.remove_state(counter).await?;
    println!(
        "{processes} processes × {increments} increments on {}",
        examples::redacted(&url)
    );
    let exe = std::env::current_exe()?;
    let workers = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .args(["--worker", "--increments", &increments.to_string()])
                // Not on the command line, where `ps` shows any password to every local user.
                .env("STATE_STORE_URL", &url)
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    for mut worker in workers {
        let status = worker.wait()?;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }
    let total: Option<u64> = store.get(counter).await?;
    let expected = u64::from(processes) * u64::from(increments);
    println!("counter = {total:?}, expected {expected}");
    store.destroy().await?;
    if total != Some(expected) {
        return Err(Error::Conflict {
            key: counter.into(),
        }
        .into());
    }
    println!("exact: no increment lost");
    Ok(())
}
