//! Store calls as OpenTelemetry client spans, through `tracing-opentelemetry`.
//!
//! ```text
//! cargo run -p examples --bin traced                                # embedded SQLite
//! cargo run -p examples --bin traced -- --store redis://127.0.0.1:6379
//! ```
//!
//! Every call a handle makes is a `tracing` span named `state_store` with OpenTelemetry's
//! database fields (`db.system.name`, `db.operation.name`, `db.operation.batch.size`,
//! `server.address`, `server.port`, `db.namespace`); the `tracing-opentelemetry` layer turns
//! them into OpenTelemetry spans, children of whatever span the call runs in. This program
//! prints them with the stdout exporter; for a collector, build the provider with
//! `opentelemetry-otlp`'s `SpanExporter` instead (`with_batch_exporter`), nothing else changes.
//! Keys, values and session ids are never recorded.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;
use state_store::StoreConfig;
use tracing::Instrument;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("examples/traced")))
        // A production filter: debug spans are off, so the store's spans are raised to INFO.
        .with(LevelFilter::INFO)
        .init();

    let url = examples::store_url();
    let config = StoreConfig::default()
        .with_prefix("traced")
        .with_span_level(tracing::Level::INFO);
    let store = state_store::open_with(&url, config).await?;
    // One request of a service: its store calls are its children.
    async {
        store.set_state("visits", &json!(1)).await?;
        store.increment("visits", 1, None).await?;
        store.get_state(&["visits", "missing"]).await?;
        store.remove_state("visits").await?;
        Ok::<_, state_store::Error>(())
    }
    .instrument(tracing::info_span!("handle_request"))
    .await?;
    store.destroy().await?;
    provider.shutdown()?;
    Ok(())
}
