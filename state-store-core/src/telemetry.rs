//! The counters of the store's own machinery (limiters, leases, watches, retries, breakers),
//! recorded through the `metrics` facade with feature `metrics`, and nothing without it.
//! Labels are low-cardinality: never a key, a client, a session id or a value.

/// `state_store.limiter.decisions`: one per limiter check, by `limiter` name and `decision`
/// (`allowed` / `denied`).
pub(crate) fn limiter_decision(limiter: &'static str, allowed: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "state_store.limiter.decisions",
        "limiter" => limiter,
        "decision" => if allowed { "allowed" } else { "denied" }
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (limiter, allowed);
}

/// `state_store.lease.events`: `acquired`, `renewed`, `released`, `lost`.
pub(crate) fn lease_event(event: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("state_store.lease.events", "event" => event).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = event;
}

/// `state_store.watch.resyncs`: a watch told its consumer to re-read.
pub(crate) fn watch_resync() {
    #[cfg(feature = "metrics")]
    metrics::counter!("state_store.watch.resyncs").increment(1);
}

/// `state_store.retries`: one per repeated attempt, by `db.operation.name`.
pub(crate) fn retry(operation: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("state_store.retries", "db.operation.name" => operation).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = operation;
}

/// `state_store.breaker.transitions` by the `state` entered (`open`, `half_open`, `closed`),
/// and the gauge `state_store.breaker.open` (1 while open or half-open, else 0).
pub(crate) fn breaker_state(state: &'static str) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("state_store.breaker.transitions", "state" => state).increment(1);
        metrics::gauge!("state_store.breaker.open").set(if state == "closed" { 0.0 } else { 1.0 });
    }
    #[cfg(not(feature = "metrics"))]
    let _ = state;
}
