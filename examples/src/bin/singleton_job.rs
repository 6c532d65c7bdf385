//! A job that must run in exactly one process at a time, with failover.
//!
//! ```text
//! cargo run -p examples --bin singleton_job                        # 3 processes, SQLite
//! cargo run -p examples --bin singleton_job -- --workers 4 --kills 2 --store redis://127.0.0.1:6379
//! ```
//!
//! The program starts `--workers` copies of itself (`--worker <id>`). Each campaigns for the
//! leadership of `singleton-job` with `StateStore::elect`; the leader runs the job — a tick
//! every 300 ms, written with `set_fenced` under its fencing token — and the others wait. The
//! parent prints what every worker says, kills the leader's process with SIGKILL `--kills`
//! times, and shows leadership moving to another process once the dead leader's lease has
//! expired. The job's ticks, read back at the end, come from one leader at a time, each with a
//! higher token than the one before.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use state_store::{Error, FencingToken, LeaderEvent, StateStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The election (and lease) name.
const JOB: &str = "singleton-job";
/// The lease TTL: a dead leader is replaced this long after its last renewal.
const TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    worker: String,
    tick: u64,
}

fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = examples::store_url();
    let store = state_store::open(&url)
        .await?
        .with_prefix("singleton-example")?;
    if let Some(id) = flag::<String>("--worker") {
        return worker(&store, id).await;
    }
    let workers: usize = flag("--workers").unwrap_or(3).max(2);
    let kills: usize = flag("--kills").unwrap_or(1).min(workers - 1);
    println!(
        "{workers} workers on {}; the leader is killed {kills} time(s)",
        examples::redacted(&url)
    );
    store.remove_state("job:ticks").await?;

    let (lines, mut rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut children: HashMap<String, Child> = HashMap::new();
    for i in 1..=workers {
        let id = format!("worker-{i}");
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", &id])
            // Not on the command line, where `ps` shows any password to every local user.
            .env("STATE_STORE_URL", &url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let lines = lines.clone();
        let from = id.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = lines.send((from.clone(), line));
            }
        });
        children.insert(id, child);
    }

    let mut leaders = Vec::new();
    let mut killed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some((from, line))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        println!("[{from}] {line}");
        // A leader that has run three ticks is killed, until `kills` leaders died.
        if line.starts_with("tick 3 ") {
            leaders.push(from.clone());
            if killed == kills {
                break;
            }
            if let Some(mut child) = children.remove(&from) {
                child.kill().await?;
                killed += 1;
                println!("*** killed {from} (SIGKILL): its lease expires within {TTL:?}");
            }
        }
    }
    for (_, mut child) in children {
        child.kill().await?;
    }
    let ticks: Vec<Tick> = store
        .get_fenced::<Vec<Tick>>("job:ticks")
        .await?
        .map(|f| f.value)
        .unwrap_or_default();
    let mut order: Vec<&str> = Vec::new();
    for tick in &ticks {
        if order.last() != Some(&tick.worker.as_str()) {
            order.push(&tick.worker);
        }
    }
    println!("leaders, in order: {}", order.join(" → "));
    store.destroy().await?;
    if leaders.len() != kills + 1 || order.len() != kills + 1 {
        return Err(format!("expected {} leaders one after another", kills + 1).into());
    }
    println!("one leader at a time; leadership moved {kills} time(s)");
    Ok(())
}

/// One worker: campaigns, and runs the job while it leads.
async fn worker(store: &StateStore, id: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut election = store.elect(JOB, id.clone(), TTL);
    println!("campaigning");
    loop {
        let event = election.next().await.ok_or("the campaign ended")??;
        match event {
            LeaderEvent::Elected { token } => {
                println!("elected with fencing token {token}");
                // Run until the election reports a change (loss).
                tokio::select! {
                    result = run_job(store, &id, token) => match result {
                        // A newer leader wrote: this one was deposed without noticing yet.
                        Err(err @ Error::Fenced { .. }) => println!("fenced out: {err}"),
                        Err(err) => return Err(err.into()),
                        Ok(()) => {}
                    },
                    event = election.next() => println!("stopping the job: {event:?}"),
                }
            }
            LeaderEvent::NewLeader { id } => println!("{id} leads; waiting"),
            LeaderEvent::Lost => println!("lost the leadership"),
            other => println!("{other:?}"),
        }
    }
}

/// The job: appends a tick every 300 ms, fenced by the leader's token, so a deposed leader
/// that wakes up late cannot write over its successor.
async fn run_job(store: &StateStore, id: &str, token: FencingToken) -> Result<(), Error> {
    for tick in 1.. {
        let mut ticks = store
            .get_fenced::<Vec<Tick>>("job:ticks")
            .await?
            .map(|f| f.value)
            .unwrap_or_default();
        ticks.push(Tick {
            worker: id.to_owned(),
            tick,
        });
        store.set_fenced("job:ticks", &ticks, token).await?;
        println!("tick {tick} (token {token})");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}
