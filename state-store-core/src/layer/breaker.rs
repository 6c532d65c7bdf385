//! A circuit breaker: after a run of failures that say the store is unreachable, calls fail at
//! once for a cool-down instead of each waiting its full timeout; then one probe decides.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::intercept::{CallInfo, Intercept, Intercepted, Site};
use super::Layer;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// The longest cool-down [`CircuitBreakerLayer::new`] accepts.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(3600);

/// Where a [`CircuitBreakerLayer`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls fail at once with [`Error::Unavailable`] until the cool-down ends.
    Open,
    /// The cool-down ended: one call (the probe) goes through, the others fail at once; the
    /// probe's outcome closes or reopens the breaker.
    HalfOpen,
}

/// Fails fast while the store is down. After `threshold` consecutive calls fail with
/// [`Error::Unavailable`] or [`Error::OutcomeUnknown`] (the store did not answer), the breaker
/// opens: every call fails at once with `Unavailable` — nothing is sent, so a write refused
/// so never lands — for `cool_down`. Then it lets one call through as a probe: an answer (any
/// answer, a `Conflict` or a missing key too) closes it, another failure reopens it. `close`
/// always goes through.
///
/// A rate [`Limiter`](crate::Limiter) over an open breaker applies its
/// [`FailurePolicy`](crate::FailurePolicy), as for any unreachable store. Clones share one
/// breaker; put it in a handle's stack with
/// [`StateStoreBuilder::layer`](crate::StateStoreBuilder::layer):
///
/// ```
/// use std::time::Duration;
/// use state_store_core::{BreakerState, CircuitBreakerLayer, DefaultStateStore, StateStore};
///
/// let breaker = CircuitBreakerLayer::new(5, Duration::from_secs(2))?;
/// let store = StateStore::builder(DefaultStateStore::new())
///     .layer(breaker.clone())
///     .build();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # let _ = store;
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

struct Shared {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("threshold", &self.shared.threshold)
            .field("cool_down", &self.shared.cool_down)
            .field("state", &self.state())
            .finish()
    }
}

/// Why a call failed at once: the breaker is open.
#[derive(Debug)]
struct Open {
    failures: u32,
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker open after {} consecutive failures: not sent",
            self.failures
        )
    }
}

impl std::error::Error for Open {}

/// What a call may do.
enum Admit {
    Go { probe: bool },
    Refuse,
}

impl CircuitBreakerLayer {
    /// Opens after `threshold` consecutive failures (at least 1), for `cool_down` (1 ms to
    /// [`MAX_COOL_DOWN`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a threshold of 0 or a cool-down outside those bounds.
    pub fn new(threshold: u32, cool_down: Duration) -> Result<Self> {
        if threshold == 0 {
            return Err(Error::config("a circuit breaker threshold is at least 1"));
        }
        if cool_down < Duration::from_millis(1) || cool_down > MAX_COOL_DOWN {
            return Err(Error::config(format!(
                "a circuit breaker cool-down is 1 ms to {MAX_COOL_DOWN:?}"
            )));
        }
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                threshold,
                cool_down,
                state: Mutex::new(State::Closed { failures: 0 }),
            }),
        })
    }

    /// Where the breaker stands now.
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admit::Go { probe: false },
            State::Open { until } if Instant::now() < until => Admit::Refuse,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                if matches!(*state, State::Open { .. }) {
                    crate::telemetry::breaker_state("half_open");
                }
                *state = State::HalfOpen { probing: true };
                Admit::Go { probe: true }
            }
            State::HalfOpen { probing: true } => Admit::Refuse,
        }
    }

    /// Counts one outcome: `failed` when the store did not answer.
    fn record(&self, probe: bool, failed: bool) {
        let mut state = self.lock();
        let open = State::Open {
            until: Instant::now() + self.shared.cool_down,
        };
        let before = *state;
        *state = match (before, failed) {
            (_, false) if probe => State::Closed { failures: 0 },
            (State::Closed { .. }, false) => State::Closed { failures: 0 },
            (State::Closed { failures }, true) => {
                let failures = failures.saturating_add(1);
                if failures >= self.shared.threshold {
                    if failures == self.shared.threshold {
                        tracing::warn!(
                            failures,
                            cool_down = ?self.shared.cool_down,
                            "state store unreachable: circuit breaker open"
                        );
                    }
                    open
                } else {
                    State::Closed { failures }
                }
            }
            // The probe failed: another cool-down.
            (_, true) if probe => open,
            // A call let through before the breaker opened, ending after: it changes nothing.
            (other, _) => other,
        };
        match (before, *state) {
            (State::Closed { .. }, State::Open { .. })
            | (State::HalfOpen { .. }, State::Open { .. }) => {
                crate::telemetry::breaker_state("open");
            }
            (State::HalfOpen { .. }, State::Closed { .. }) => {
                crate::telemetry::breaker_state("closed");
            }
            _ => {}
        }
    }
}

/// Ends a probe that never finished (its future dropped) as a failure, so the breaker does
/// not stay half-open with nobody probing.
struct ProbeGuard<'a> {
    breaker: &'a CircuitBreakerLayer,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.record(true, true);
        }
    }
}

impl Intercept for CircuitBreakerLayer {
    async fn around<'a, T, F>(&'a self, site: Site<'a>, call: CallInfo, inner: F) -> Result<T>
    where
        T: Send + 'a,
        F: Future<Output = Result<T>> + Send + 'a,
    {
        if call.operation == "close" {
            return inner.await;
        }
        let probe = match self.admit() {
            Admit::Go { probe } => probe,
            Admit::Refuse => {
                let failures = self.shared.threshold;
                return Err(Error::unavailable(site.store, Open { failures }));
            }
        };
        let mut guard = ProbeGuard {
            breaker: self,
            armed: probe,
        };
        let result = inner.await;
        guard.armed = false;
        let failed = matches!(&result, Err(err) if err.is_transient());
        self.record(probe, failed);
        result
    }
}

impl Layer for CircuitBreakerLayer {
    fn layer(&self, inner: Arc<dyn Backend>) -> Arc<dyn Backend> {
        Arc::new(Intercepted::new(inner, self.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)] // a test fails by panicking
mod tests {
    use super::*;

    #[test]
    fn misconfiguration_is_a_config_error() {
        for (threshold, cool_down) in [
            (0, Duration::from_secs(1)),
            (3, Duration::ZERO),
            (3, MAX_COOL_DOWN + Duration::from_secs(1)),
        ] {
            let made = CircuitBreakerLayer::new(threshold, cool_down);
            assert!(matches!(made, Err(Error::Config { .. })), "{made:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_once_and_closes_on_an_answer() {
        let breaker = CircuitBreakerLayer::new(3, Duration::from_secs(1)).expect("valid");
        let go = |b: &CircuitBreakerLayer| matches!(b.admit(), Admit::Go { probe: false });
        for _ in 0..2 {
            assert!(go(&breaker));
            breaker.record(false, true);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        // An answer in between starts the count again.
        breaker.record(false, false);
        for _ in 0..3 {
            assert!(go(&breaker));
            breaker.record(false, true);
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(breaker.admit(), Admit::Refuse));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(matches!(breaker.admit(), Admit::Go { probe: true }));
        // One probe at a time.
        assert!(matches!(breaker.admit(), Admit::Refuse));
        // It fails: another cool-down.
        breaker.record(true, true);
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(breaker.admit(), Admit::Go { probe: true }));
        breaker.record(true, false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        // A probe dropped before it finished counts as failed.
        for _ in 0..3 {
            breaker.record(false, true);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(breaker.admit(), Admit::Go { probe: true }));
        drop(ProbeGuard {
            breaker: &breaker,
            armed: true,
        });
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
