//! What metrics and traces cost: Redis handles with [`MetricsLayer`] recording into a
//! Prometheus recorder, with their spans at `INFO`, and with both, each against the same store
//! with neither — one process, one connection, one server.
//!
//! ```text
//! cargo run --release -p examples --example observed_bench -- --spans registry
//! cargo run --release -p examples --example observed_bench -- --spans opentelemetry
//! cargo run --release -p examples --example observed_bench -- --spans opentelemetry-sampled
//! ```
//!
//! `--spans` says where spans go: `registry` (recorded by a `tracing` subscriber, exported
//! nowhere: the layer's own cost), `opentelemetry` (the default: `tracing-opentelemetry` as it
//! comes, to a batch span processor), `opentelemetry-lean` (the same without the code
//! location, thread, target and busy/idle attributes it adds to every span) or
//! `opentelemetry-sampled` (lean, one trace in ten kept). The exporter discards the batches it
//! is given: what a collector does with them is not this process's cost.
//!
//! In the table, "adapter" is the observed handle and "raw" the plain one: the ratio is the
//! share of the plain throughput that observing keeps. Uses `STATE_STORE_TEST_REDIS_URL` if
//! set, else spawns `redis-server` on loopback.
//!
//! [`MetricsLayer`]: state_store::MetricsLayer

#![allow(clippy::expect_used)] // a benchmark stops on the first failure

use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde_json::json;
use state_store::{StateStore, StoreConfig};
use state_store_testkit::bench::{self, adapter, Case};
use state_store_testkit::harness::redis::redis_url;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const KEYS: u64 = 1000;

fn key(i: u64) -> String {
    format!("k{}", i % KEYS)
}

/// An exporter that drops what it is given.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = redis_url().ok_or("no redis-server available")?;
    metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let subscriber = std::env::args()
        .skip_while(|a| a != "--spans")
        .nth(1)
        .unwrap_or_else(|| "opentelemetry".to_owned());
    let sampled = subscriber == "opentelemetry-sampled";
    let provider = SdkTracerProvider::builder()
        .with_sampler(if sampled {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.1)))
        } else {
            Sampler::AlwaysOn
        })
        .with_batch_exporter(Discard)
        .build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("observed_bench"));
    let registry = tracing_subscriber::registry().with(LevelFilter::INFO);
    match subscriber.as_str() {
        "opentelemetry" => registry.with(otel).init(),
        "opentelemetry-lean" | "opentelemetry-sampled" => registry
            .with(
                otel.with_location(false)
                    .with_threads(false)
                    .with_tracked_inactivity(false)
                    .with_target(false),
            )
            .init(),
        "registry" => registry.init(),
        other => return Err(format!("--spans {other}: see the source for the choices").into()),
    }
    let opened = state_store::open(&url).await?;
    let backend = Arc::clone(opened.raw_backend());
    // Both handles on one connection: only the layers differ. The plain handle's spans are at
    // `DEBUG`, which the filter turns off.
    let plain = StateStore::builder(Arc::clone(&backend))
        .config(StoreConfig::default())
        .build()
        .with_prefix("bench")?;
    let metered = StateStore::builder(Arc::clone(&backend))
        .layer(state_store::MetricsLayer)
        .config(StoreConfig::default())
        .build()
        .with_prefix("bench")?;
    let traced = StateStore::builder(Arc::clone(&backend))
        .config(StoreConfig::default().with_span_level(tracing::Level::INFO))
        .build()
        .with_prefix("bench")?;
    let observed = StateStore::builder(backend)
        .layer(state_store::MetricsLayer)
        .config(StoreConfig::default().with_span_level(tracing::Level::INFO))
        .build()
        .with_prefix("bench")?;

    let value = json!({ "user": "ada", "roles": ["admin", "dev"], "theme": "dark", "visits": 12345, "active": true });
    for i in 0..KEYS {
        plain.set_state(&key(i), &value).await?;
    }
    let mut cases = Vec::new();
    for tasks in [1, 64] {
        for (what, store) in [
            ("metrics", &metered),
            ("spans", &traced),
            ("metrics and spans", &observed),
        ] {
            cases.push(Case::new(
                format!("get, {what} vs neither"),
                tasks,
                adapter::get(store, key),
                adapter::get(&plain, key),
            ));
            cases.push(Case::new(
                format!("set, {what} vs neither"),
                tasks,
                adapter::set(store, key, &value),
                adapter::set(&plain, key, &value),
            ));
        }
    }
    bench::run(
        &format!(
            "RedisStateStore observed, spans to {subscriber} (adapter column), vs not (raw column)"
        ),
        &cases,
    )
    .await;
    plain.destroy().await?;
    provider.shutdown()?;
    Ok(())
}
