//! Adapter-versus-raw-client benchmarks, measured the way this noisy machine needs: both in
//! one process on one server, interleaved short rounds (A B B A …) after a warm-up, reporting
//! the mean throughput ratio with its 95% interval, p50/p99 latency and ops/s.
//!
//! Settings from the environment: `BENCH_ROUNDS` (default 10), `BENCH_ROUND_MS` (default
//! 1000) and `BENCH_FILTER` (run only cases whose name contains it). A `--quick` argument (or
//! `BENCH_QUICK=1`) runs two rounds of 20 ms: it proves a benchmark still runs, nothing more,
//! and is what CI does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One operation under test; the argument counts calls, to vary keys.
pub type Op = Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Wraps an async closure as an [`Op`].
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// A comparison: the adapter's operation and the raw client's equivalent.
pub struct Case {
    /// What is measured (`get`, `set`, `get_state ×10`…).
    pub name: String,
    /// Tasks running the operation at once.
    pub concurrency: usize,
    /// Through the adapter.
    pub adapter: Op,
    /// Through the raw client, doing the same JSON work.
    pub raw: Op,
}

impl Case {
    /// A case.
    pub fn new(name: impl Into<String>, concurrency: usize, adapter: Op, raw: Op) -> Self {
        Case {
            name: name.into(),
            concurrency,
            adapter,
            raw,
        }
    }
}

struct Round {
    ops_per_sec: f64,
    latencies_ns: Vec<u64>,
}

async fn round(op: &Op, concurrency: usize, length: Duration, counter: &Arc<AtomicU64>) -> Round {
    let deadline = Instant::now() + length;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let op = Arc::clone(op);
            let counter = Arc::clone(counter);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    op(i).await;
                    latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                latencies
            })
        })
        .collect();
    let mut latencies_ns = Vec::new();
    for task in tasks {
        match task.await {
            Ok(mut l) => latencies_ns.append(&mut l),
            Err(err) => panic!("a benchmark task failed: {err}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Round {
        ops_per_sec: latencies_ns.len() as f64 / elapsed,
        latencies_ns,
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Student's t for a two-sided 95% interval with `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.71, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    TABLE.get(df.saturating_sub(1)).copied().unwrap_or(1.96)
}

/// Whether this is a smoke run: `--quick` among the arguments, or `BENCH_QUICK=1`.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Rounds per side and the length of one round: from the environment, or the quick settings.
pub fn settings() -> (usize, Duration) {
    if quick() {
        return (2, Duration::from_millis(20));
    }
    (
        env_or("BENCH_ROUNDS", 10).max(2) as usize,
        Duration::from_millis(env_or("BENCH_ROUND_MS", 1000)),
    )
}

/// One operation measured alone: throughput over `rounds` rounds with its 95% interval, and
/// latency percentiles over all of them.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    /// Mean operations per second across rounds.
    pub ops_per_sec: f64,
    /// Half-width of the 95% interval of `ops_per_sec`.
    pub ci95: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
}

/// Measures `op` with `concurrency` tasks: a warm-up of half a round, then `rounds` rounds of
/// `length`.
pub async fn measure(op: &Op, concurrency: usize, rounds: usize, length: Duration) -> Measurement {
    let counter = Arc::new(AtomicU64::new(0));
    round(op, concurrency, length / 2, &counter).await;
    let mut rates = Vec::with_capacity(rounds);
    let mut latencies = Vec::new();
    for _ in 0..rounds.max(2) {
        let r = round(op, concurrency, length, &counter).await;
        rates.push(r.ops_per_sec);
        latencies.extend(r.latencies_ns);
    }
    latencies.sort_unstable();
    let (ops_per_sec, ci95) = mean_ci95(&rates);
    Measurement {
        ops_per_sec,
        ci95,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
    }
}

/// Mean and half-width of its 95% interval (Student's t), for at least two samples.
fn mean_ci95(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, t95(samples.len() - 1) * (var / n).sqrt())
}

/// Runs every case and prints a Markdown table. Returns the mean ratios (adapter ÷ raw
/// throughput) in case order.
pub async fn run(title: &str, cases: &[Case]) -> Vec<f64> {
    let (rounds, length) = settings();
    let counter = Arc::new(AtomicU64::new(0));
    println!("\n{title}: {rounds} interleaved rounds of {length:?} per side, after a warm-up\n");
    println!("| operation | tasks | adapter ops/s | raw ops/s | adapter ÷ raw (95% CI) | adapter p50 / p99 µs | raw p50 / p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut means = Vec::new();
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    for case in cases.iter().filter(|c| c.name.contains(filter.as_str())) {
        let warm = length / 2;
        round(&case.adapter, case.concurrency, warm, &counter).await;
        round(&case.raw, case.concurrency, warm, &counter).await;
        let (mut ratios, mut a_ops, mut r_ops) = (Vec::new(), 0.0, 0.0);
        let (mut a_lat, mut r_lat) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (a, b) = if r % 2 == 0 {
                let a = round(&case.adapter, case.concurrency, length, &counter).await;
                (
                    a,
                    round(&case.raw, case.concurrency, length, &counter).await,
                )
            } else {
                let b = round(&case.raw, case.concurrency, length, &counter).await;
                (
                    round(&case.adapter, case.concurrency, length, &counter).await,
                    b,
                )
            };
            ratios.push(a.ops_per_sec / b.ops_per_sec);
            a_ops += a.ops_per_sec / rounds as f64;
            r_ops += b.ops_per_sec / rounds as f64;
            a_lat.extend(a.latencies_ns);
            r_lat.extend(b.latencies_ns);
        }
        a_lat.sort_unstable();
        r_lat.sort_unstable();
        let (mean, half) = mean_ci95(&ratios);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} ± {:.3} | {:.0} / {:.0} | {:.0} / {:.0} |",
            case.name,
            case.concurrency,
            a_ops,
            r_ops,
            mean,
            half,
            percentile(&a_lat, 0.5),
            percentile(&a_lat, 0.99),
            percentile(&r_lat, 0.5),
            percentile(&r_lat, 0.99),
        );
        means.push(mean);
    }
    means
}

/// `store`'s backend behind a [`NearCacheLayer`](state_store_core::NearCacheLayer) (64 MiB, a
/// minute): what hot-key reads through the near cache are measured on.
pub fn near_cached(store: &state_store_core::StateStore) -> state_store_core::StateStore {
    use state_store_core::Layer as _;
    let layer = state_store_core::NearCacheLayer::new(64 * 1024 * 1024, Duration::from_secs(60));
    state_store_core::StateStore::from_arc(
        layer.layer(Arc::clone(store.raw_backend())),
        state_store_core::StoreConfig::default(),
    )
}

/// Decoding `value`'s JSON text, and nothing else: the floor under any read of it that
/// returns a decoded value, for a "near cache vs decoding alone" row.
pub fn decode_only(value: &serde_json::Value) -> Op {
    let text: Arc<str> = value.to_string().into();
    op(move |_| {
        let text = Arc::clone(&text);
        async move {
            if let Err(err) = serde_json::from_str::<serde_json::Value>(&text) {
                panic!("decoding what serde_json wrote failed: {err}");
            }
        }
    })
}

/// The adapter side of the standard cases, through the [`StateStore`] handle, so every
/// adapter's benchmark measures the same calls. Each panics on the first error.
///
/// [`StateStore`]: state_store_core::StateStore
pub mod adapter {
    use serde_json::Value;
    use state_store_core::StateStore;

    use super::{op, Op};

    fn fail(what: &str, err: &state_store_core::Error) -> ! {
        panic!("{what} failed: {}", state_store_conformance::report(err))
    }

    /// `get::<Value>(key(i))`.
    pub fn get(store: &StateStore, key: impl Fn(u64) -> String + Send + Sync + 'static) -> Op {
        let store = store.clone();
        op(move |i| {
            let (store, name) = (store.clone(), key(i));
            async move {
                if let Err(err) = store.get::<Value>(&name).await {
                    fail("get", &err);
                }
            }
        })
    }

    /// `set_state(key(i), value)`.
    pub fn set(
        store: &StateStore,
        key: impl Fn(u64) -> String + Send + Sync + 'static,
        value: &Value,
    ) -> Op {
        let (store, value) = (store.clone(), value.clone());
        op(move |i| {
            let (store, name, value) = (store.clone(), key(i), value.clone());
            async move {
                if let Err(err) = store.set_state(&name, &value).await {
                    fail("set_state", &err);
                }
            }
        })
    }

    /// `get_state(names)`.
    pub fn get_state(store: &StateStore, names: &[String]) -> Op {
        let (store, names) = (store.clone(), names.to_vec());
        op(move |_| {
            let (store, names) = (store.clone(), names.clone());
            async move {
                if let Err(err) = store.get_state(&names).await {
                    fail("get_state", &err);
                }
            }
        })
    }

    /// `increment(key(i), 1, None)`.
    pub fn increment(store: &StateStore, key: fn(u64) -> String) -> Op {
        let store = store.clone();
        op(move |i| {
            let store = store.clone();
            async move {
                if let Err(err) = store.increment(&key(i), 1, None).await {
                    fail("increment", &err);
                }
            }
        })
    }
}
