//! Call metrics on OpenTelemetry's database client conventions, through the `metrics` facade.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use metrics::{Histogram, Label};

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
///   `remove`, `increment`, `list`, `watch`, `acquire_lease`, `rate_limit`, `close`),
///   `server.address` and `server.port` where the backend has a server and, on failure,
///   `error.type` ([`Error::kind_name`](crate::Error::kind_name): `unavailable`,
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
///
/// Each layer registers its duration histograms with the recorder at its first call of each
/// operation and keeps the handles, so a call costs a clock read and an atomic record, not a
/// lookup of its labels: install the recorder before the first call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl Layer for MetricsLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Intercepted::new(inner, Recorded::default()))
    }
}

/// The operations [`CallInfo::operation`] names, in the order of [`Recorded::succeeded`].
const OPERATIONS: [&str; 10] = [
    "get",
    "set",
    "remove",
    "increment",
    "list",
    "watch",
    "invalidations",
    "acquire_lease",
    "rate_limit",
    "close",
];

/// The intercept of one [`MetricsLayer`]: its histogram handles, registered on first use.
#[derive(Debug, Default)]
struct Recorded {
    /// `db.client.operation.duration` of a call that succeeded, per operation.
    succeeded: [OnceLock<Histogram>; OPERATIONS.len()],
    /// `state_store.batch.size`.
    batch: OnceLock<Histogram>,
}

/// The labels every sample of a backend carries: `db.system.name` and its server.
fn site_labels(site: Site<'_>) -> Vec<Label> {
    let mut labels = vec![Label::new("db.system.name", site.store.to_owned())];
    if let Some((address, port)) = site.server {
        labels.push(Label::new("server.address", address.to_owned()));
        labels.push(Label::new("server.port", port.to_string()));
    }
    labels
}

impl Recorded {
    fn duration(site: Site<'_>, operation: &'static str, error: Option<&'static str>) -> Histogram {
        let mut labels = site_labels(site);
        labels.push(Label::from_static_parts("db.operation.name", operation));
        if let Some(kind) = error {
            labels.push(Label::from_static_parts("error.type", kind));
        }
        metrics::histogram!("db.client.operation.duration", labels)
    }
}

impl Intercept for Recorded {
    async fn around<'a, T, F>(&'a self, site: Site<'a>, call: CallInfo, inner: F) -> Result<T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T>> + Send + 'a,
    {
        let started = Instant::now();
        let result = inner.await;
        let seconds = started.elapsed().as_secs_f64();
        let operation = call.operation;
        match (&result, OPERATIONS.iter().position(|&op| op == operation)) {
            (Ok(_), Some(i)) => self.succeeded[i]
                .get_or_init(|| Self::duration(site, operation, None))
                .record(seconds),
            // Failures are rarer and carry their kind: registered each time.
            (result, _) => {
                let error = result.as_ref().err().map(crate::Error::kind_name);
                Self::duration(site, operation, error).record(seconds);
            }
        }
        if call.keys > 1 {
            #[allow(clippy::cast_precision_loss)] // a count of names, far below 2^52
            self.batch
                .get_or_init(|| {
                    let system = Label::new("db.system.name", site.store.to_owned());
                    metrics::histogram!("state_store.batch.size", vec![system])
                })
                .record(call.keys as f64);
        }
        result
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
