//! The scaling report: how the cost of a call grows, on every backend, with
//! (a) names per `get_state` (1, 10, 100, 1000), (b) value size (100 B, 10 KiB, 1 MiB),
//! (c) keys stored (10³, 10⁵, 10⁶; memory, SQLite, Redis and PostgreSQL) and (d) tasks in flight
//! (1, 16, 64, 256).
//!
//! ```text
//! cargo run --release -p examples --example scaling                  # all backends, ~10 min
//! cargo run --release -p examples --example scaling -- --quick       # a smoke run (CI)
//! cargo run --release -p examples --example scaling -- --backends memory,sqlite --out /tmp/r
//! ```
//!
//! Prints a Markdown table per backend and writes them (`scaling.md`), `scaling.csv` and one
//! `scaling-<backend>.svg` chart per backend to `--out` (default `docs/scaling` in the
//! workspace; `target/scaling-quick` with `--quick`). Servers come from the test harness: a
//! `redis-server`, `nats-server`, `daprd` (with `state.redis`) and PostgreSQL on loopback, or the
//! `STATE_STORE_TEST_*` URLs. Every point is the adapter alone, measured in one process with
//! the benchmark runner (rounds after a warm-up, mean throughput with its 95% interval,
//! latency percentiles); the crate benchmarks compare each adapter with its raw client.

#![allow(clippy::expect_used)] // a benchmark stops on the first failure it cannot report

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use state_store::{Error, StateStore};
use state_store_testkit::bench::{self, adapter, Measurement, Op};
use state_store_testkit::chart::{self, Panel, Series};
use state_store_testkit::harness::dapr::Component;
use state_store_testkit::harness::{backend_url, temp_dir};

const BACKENDS: [&str; 6] = ["memory", "sqlite", "redis", "nats", "dapr", "postgres"];
/// Keys the name, size and task dimensions read from.
const BASE_KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("k{i}")
}

/// Spreads call `i` over the first `n` keys: a permutation of `0..n` (multiplying by a prime
/// coprime to `n`), so neighbouring calls read far-apart keys and `n` calls read every key.
fn spread(i: u64, n: u64) -> u64 {
    const PRIME: u128 = 2_654_435_761; // neither 2 nor 5 divides it: coprime to 10^k
    let i = u128::from(i % n);
    u64::try_from(i * PRIME % u128::from(n)).unwrap_or(0)
}

fn small_value() -> Value {
    json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true })
}

/// A JSON string value whose encoding is exactly `bytes` long.
fn value_of_size(bytes: usize) -> Value {
    Value::String("x".repeat(bytes.saturating_sub(2)))
}

struct Plan {
    names: Vec<usize>,
    sizes: Vec<usize>,
    keys: Vec<u64>,
    tasks: Vec<usize>,
    rounds: usize,
    length: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        // Shorter rounds than the crate benchmarks': there are many points, and each is the
        // adapter alone. `BENCH_ROUNDS` / `BENCH_ROUND_MS` still apply.
        let (rounds, length) = if quick {
            bench::settings()
        } else {
            let env = |name: &str, default: u64| {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            (
                env("BENCH_ROUNDS", 3) as usize,
                Duration::from_millis(env("BENCH_ROUND_MS", 400)),
            )
        };
        Plan {
            names: vec![1, 10, 100, 1000],
            sizes: vec![100, 10 << 10, 1 << 20],
            keys: if quick {
                vec![1_000, 10_000]
            } else {
                vec![1_000, 100_000, 1_000_000]
            },
            tasks: vec![1, 16, 64, 256],
            rounds,
            length,
        }
    }
}

/// One row of the report.
struct Point {
    backend: &'static str,
    dimension: &'static str,
    x: f64,
    operation: &'static str,
    tasks: usize,
    result: Result<Measurement, String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = bench::quick();
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let out = arg("--out").map_or_else(
        || {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            if quick {
                // This binary runs from `<target>/<profile>/examples/`: a scratch directory
                // beside it, wherever `CARGO_TARGET_DIR` put the target directory.
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
                    .unwrap_or_else(std::env::temp_dir)
                    .join("scaling-quick")
            } else {
                root.join("docs/scaling")
            }
        },
        PathBuf::from,
    );
    let chosen = arg("--backends").unwrap_or_else(|| BACKENDS.join(","));
    let chosen: Vec<&str> = chosen.split(',').map(str::trim).collect();
    if let Some(unknown) = chosen.iter().find(|b| !BACKENDS.contains(b)) {
        return Err(format!(
            "unknown backend {unknown:?}: choose from {}",
            BACKENDS.join(",")
        )
        .into());
    }
    let plan = Plan::new(quick);
    let machine = machine();
    let date = today();
    let mut report = format!(
        "# Scaling report\n\n{date}, {machine}: `cargo run --release -p examples --example scaling{}`\n",
        if quick { " -- --quick" } else { "" }
    );
    print!("{report}");
    std::fs::create_dir_all(&out)?;
    // Every server first: a missing one fails the run in seconds, not after the others.
    let dir = temp_dir("scaling");
    let mut stores = Vec::new();
    for backend in BACKENDS.iter().copied().filter(|b| chosen.contains(b)) {
        stores.push((
            backend,
            open(backend, dir.path()).await?.with_prefix("scaling")?,
        ));
    }
    let mut points = Vec::new();
    for (backend, store) in stores {
        let mut mine = measure_backend(backend, &store, &plan).await?;
        let text = table(backend, &mine);
        print!("{text}");
        report.push_str(&text);
        let svg = chart::svg(
            &format!("state-store scaling: {backend}"),
            &format!("{date} · {machine} · cargo run --release -p examples --example scaling"),
            &panels(&mine),
        );
        std::fs::write(out.join(format!("scaling-{backend}.svg")), svg)?;
        // A server the caller gave us keeps its data otherwise; a spawned one dies with us.
        let given = |var: &str| std::env::var(var).is_ok();
        if (backend == "redis" && given("STATE_STORE_TEST_REDIS_URL"))
            || (backend == "postgres" && given("STATE_STORE_TEST_POSTGRES_URL"))
        {
            store.remove_prefix("").await?;
        }
        store.destroy().await?;
        points.append(&mut mine);
        std::fs::write(out.join("scaling.csv"), csv(&points))?;
        std::fs::write(out.join("scaling.md"), &report)?;
    }
    println!("\nwrote {}", out.canonicalize().unwrap_or(out).display());
    Ok(())
}

async fn open(backend: &str, dir: &Path) -> Result<StateStore, Box<dyn std::error::Error>> {
    let url = backend_url(backend, dir, Component::Redis)?;
    Ok(state_store::open(&url).await?)
}

async fn measure_backend(
    backend: &'static str,
    store: &StateStore,
    plan: &Plan,
) -> Result<Vec<Point>, Error> {
    let mut points = Vec::new();
    let small = small_value();
    let mut stored = fill(store, 0, BASE_KEYS, &small).await?;
    let mut point = |dimension, x: f64, operation, tasks, result| {
        points.push(Point {
            backend,
            dimension,
            x,
            operation,
            tasks,
            result,
        });
    };

    for &n in &plan.names {
        // Distinct names (`get_state` drops repeats), all stored.
        let names: Vec<String> = (0..(n as u64).min(BASE_KEYS)).map(key).collect();
        let get_state = match store.get_state(&names).await {
            Ok(_) => Ok(adapter::get_state(store, &names)),
            Err(err) => Err(state_store::report(&err)),
        };
        let result = run(get_state, 1, plan).await;
        point("names per get_state", n as f64, "get_state", 1, result);
    }

    for &size in &plan.sizes {
        let value = value_of_size(size);
        let sized = move |i: u64| format!("size{size}:{}", i % 16);
        // A size the backend refuses (NATS's payload limit) is a gap in the report, not a stop.
        let first = match store.set_state(&sized(0), &value).await {
            Ok(()) => Ok(()),
            Err(err) => Err(state_store::report(&err)),
        };
        let set = first.clone().map(|()| adapter::set(store, sized, &value));
        point(
            "value bytes",
            size as f64,
            "set",
            1,
            run(set, 1, plan).await,
        );
        let get = first.map(|()| adapter::get(store, move |_| sized(0)));
        point(
            "value bytes",
            size as f64,
            "get",
            1,
            run(get, 1, plan).await,
        );
    }

    for &tasks in &plan.tasks {
        let get = adapter::get(store, |i| key(spread(i, BASE_KEYS)));
        point(
            "tasks",
            tasks as f64,
            "get",
            tasks,
            run(Ok(get), tasks, plan).await,
        );
        let set = adapter::set(store, |i| key(spread(i, BASE_KEYS)), &small);
        point(
            "tasks",
            tasks as f64,
            "set",
            tasks,
            run(Ok(set), tasks, plan).await,
        );
    }

    if matches!(backend, "memory" | "sqlite" | "redis" | "postgres") {
        for &n in &plan.keys {
            stored = fill(store, stored, n, &small).await?;
            let get = adapter::get(store, move |i| key(spread(i, n)));
            point(
                "keys stored",
                n as f64,
                "get",
                1,
                run(Ok(get), 1, plan).await,
            );
        }
    }
    Ok(points)
}

async fn run(op: Result<Op, String>, tasks: usize, plan: &Plan) -> Result<Measurement, String> {
    let op = op?;
    Ok(bench::measure(&op, tasks, plan.rounds, plan.length).await)
}

/// Stores keys `from..to` (`to` at least `from`), 64 writes in flight.
async fn fill(store: &StateStore, from: u64, to: u64, value: &Value) -> Result<u64, Error> {
    let mut next = from;
    while next < to {
        let end = to.min(next + 64);
        let mut writes = tokio::task::JoinSet::new();
        for i in next..end {
            let (store, value) = (store.clone(), value.clone());
            writes.spawn(async move { store.set_state(&key(i), &value).await });
        }
        while let Some(write) = writes.join_next().await {
            write.expect("a fill task panicked")?;
        }
        next = end;
    }
    Ok(to.max(from))
}

/// One backend's Markdown table.
fn table(backend: &str, points: &[Point]) -> String {
    let mut out = format!(
        "\n## {backend}\n\n| dimension | x | operation | tasks | ops/s (95% CI) | p50 µs | p99 µs |\n|---|---:|---|---:|---:|---:|---:|\n"
    );
    for p in points {
        let _ = match &p.result {
            Ok(m) => writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} ± {:.0} | {:.0} | {:.0} |",
                p.dimension, p.x, p.operation, p.tasks, m.ops_per_sec, m.ci95, m.p50_us, m.p99_us
            ),
            Err(why) => writeln!(
                out,
                "| {} | {} | {} | {} | not measured: {} | | |",
                p.dimension,
                p.x,
                p.operation,
                p.tasks,
                why.replace('|', "/")
            ),
        };
    }
    out
}

fn csv(points: &[Point]) -> String {
    let mut out =
        String::from("backend,dimension,x,operation,tasks,ops_per_sec,ci95,p50_us,p99_us,note\n");
    for p in points {
        let _ = write!(
            out,
            "{},{},{},{},{},",
            p.backend, p.dimension, p.x, p.operation, p.tasks
        );
        let _ = match &p.result {
            Ok(m) => writeln!(
                out,
                "{:.1},{:.1},{:.1},{:.1},",
                m.ops_per_sec, m.ci95, m.p50_us, m.p99_us
            ),
            Err(why) => writeln!(out, ",,,,\"{}\"", why.replace('"', "'")),
        };
    }
    out
}

/// Four panels: latency against names, value size and keys stored; throughput against tasks.
fn panels(points: &[Point]) -> Vec<Panel> {
    let series = |dimension: &str, operation: &str, metric: fn(&Measurement) -> f64| Series {
        label: operation.to_owned(),
        points: points
            .iter()
            .filter(|p| p.dimension == dimension && p.operation == operation)
            .filter_map(|p| p.result.as_ref().ok().map(|m| (p.x, metric(m))))
            .collect(),
    };
    let p50 = |m: &Measurement| m.p50_us;
    let rate = |m: &Measurement| m.ops_per_sec;
    let panel = |title: &str, x: &str, y: &str, series: Vec<Series>| Panel {
        title: title.to_owned(),
        x_label: x.to_owned(),
        y_label: y.to_owned(),
        series: series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect(),
    };
    vec![
        panel(
            "(a) names per get_state",
            "names",
            "p50 µs per call",
            vec![series("names per get_state", "get_state", p50)],
        ),
        panel(
            "(b) value size",
            "bytes per value",
            "p50 µs per call",
            vec![
                series("value bytes", "get", p50),
                series("value bytes", "set", p50),
            ],
        ),
        panel(
            "(c) keys stored",
            "keys",
            "p50 µs per get",
            vec![series("keys stored", "get", p50)],
        ),
        panel(
            "(d) tasks in flight",
            "tasks",
            "ops/s, all tasks",
            vec![series("tasks", "get", rate), series("tasks", "set", rate)],
        ),
    ]
}

/// CPU model and core count, for the chart's subtitle.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{cores} cores, {model}")
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
