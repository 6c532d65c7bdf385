//! Call metrics on OpenTelemetry's database client conventions, through the `metrics` facade.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::intercept::{CallInfo, Intercept, Intercepted, Site};
use super::Layer;
use crate::backend::Backend;
use crate::error::Result;

/// Records every call that reaches the layer below through the
/// [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), on OpenTelemetry's
/// database client conventions:
///
/// - `db.client.operation.duration` — histogram, seconds — with `db.system.name` (the
///   backend's name: `redis`, `sqlite`, `postgresql` are OpenTelemetry's registered names;
///   `nats`, `dapr` and `memory` are this crate's), `db.operation.name` (`get`, `set`,
///   `remove`, `increment`, `list`, `watch`, `acquire_lease`, `rate_limit`, `close`) and, on
///   failure, `error.type` ([`Error::kind_name`](crate::Error::kind_name): `unavailable`,
///   `conflict`, …);
/// - `state_store.batch.size` — histogram — the number of names of a read of more than one.
///
/// Labels never carry keys, values or clients. The same feature turns on the counters of the
/// store's own machinery: `state_store.limiter.decisions{limiter, decision}`,
/// `state_store.lease.events{event}`, `state_store.watch.resyncs`,
/// `state_store.retries{db.operation.name}`, `state_store.breaker.transitions{state}` and the
/// gauge `state_store.breaker.open`. Install any `metrics` recorder to export them (see the
/// README: Prometheus, OTLP).
///
/// ```
/// use state_store_core::{DefaultStateStore, MetricsLayer, StateStore};
///
/// let store = StateStore::builder(DefaultStateStore::new()).layer(MetricsLayer).build();
/// # let _ = store;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl Intercept for MetricsLayer {
    async fn around<'a, T, F>(&'a self, site: Site<'a>, call: CallInfo, inner: F) -> Result<T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T>> + Send + 'a,
    {
        let started = Instant::now();
        let result = inner.await;
        let seconds = started.elapsed().as_secs_f64();
        let system = site.store.to_owned();
        match &result {
            Ok(_) => metrics::histogram!(
                "db.client.operation.duration",
                "db.system.name" => system.clone(),
                "db.operation.name" => call.operation,
            )
            .record(seconds),
            Err(err) => metrics::histogram!(
                "db.client.operation.duration",
                "db.system.name" => system.clone(),
                "db.operation.name" => call.operation,
                "error.type" => err.kind_name(),
            )
            .record(seconds),
        }
        if call.keys > 1 {
            #[allow(clippy::cast_precision_loss)] // a count of names, far below 2^52
            metrics::histogram!("state_store.batch.size", "db.system.name" => system)
                .record(call.keys as f64);
        }
        result
    }
}

impl Layer for MetricsLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Intercepted::new(inner, *self))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    use super::*;
    use crate::{DefaultStateStore, StateStore};

    /// The duration histogram carries the conventions' labels, and `error.type` on failure;
    /// no label carries a key or a value.
    #[test]
    fn calls_are_recorded_on_the_database_conventions() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let store = StateStore::builder(DefaultStateStore::new())
                    .layer(MetricsLayer)
                    .build();
                store
                    .set_state("secret-name", &serde_json::json!("secret-value"))
                    .await
                    .expect("set");
                store
                    .get_state(&["secret-name", "other"])
                    .await
                    .expect("get");
                let _ = store.increment("secret-name", 1, None).await;
            });
        });
        let mut seen = Vec::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            for (_, value) in &labels {
                assert!(!value.contains("secret"), "{labels:?}");
            }
            if key.kind() == MetricKind::Histogram {
                assert!(matches!(value, DebugValue::Histogram(_)));
            }
            seen.push((key.key().name().to_owned(), labels));
        }
        let has = |name: &str, want: &[(&str, &str)]| {
            seen.iter().any(|(n, labels)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
        };
        let ok = [("db.system.name", "memory"), ("db.operation.name", "set")];
        assert!(has("db.client.operation.duration", &ok), "{seen:?}");
        assert!(
            has(
                "db.client.operation.duration",
                &[
                    ("db.operation.name", "increment"),
                    ("error.type", "not_an_integer")
                ]
            ),
            "{seen:?}"
        );
        assert!(has("state_store.batch.size", &[]), "{seen:?}");
    }
}
