//! Waiting between the attempts of a compare-and-set loop.

use std::time::{Duration, Instant};

/// Smallest ceiling of the random wait after the first lost race.
const BASE: Duration = Duration::from_micros(500);
/// Largest ceiling of the random wait, however many races were lost.
const CAP: Duration = Duration::from_millis(64);

/// Bounded exponential backoff with full jitter, for loops that retry on
/// [`Error::Conflict`](crate::Error::Conflict).
///
/// After the `n`-th lost race it waits a random time between zero and
/// `min(64 ms, 0.5 ms × 2ⁿ)`, so writers that collided spread out instead of colliding again;
/// it gives up after a number of attempts or once a deadline has passed, whichever comes
/// first. For [`Backend`](crate::Backend) implementors writing their own loop; the handle's
/// `update` and [`increment_with_cas`](crate::increment_with_cas) use it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use state_store_core::Backoff;
///
/// let mut backoff = Backoff::new(3, Duration::from_secs(1));
/// assert!(backoff.wait().await); // second attempt
/// assert!(backoff.wait().await); // third attempt
/// assert!(!backoff.wait().await); // no fourth
/// # }
/// ```
#[derive(Debug)]
pub struct Backoff {
    attempts: usize,
    max_attempts: usize,
    deadline: Option<Instant>,
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Allows `max_attempts` attempts in all (at least one), within `deadline` from now.
    pub fn new(max_attempts: usize, deadline: Duration) -> Self {
        Backoff {
            attempts: 1,
            max_attempts: max_attempts.max(1),
            deadline: Instant::now().checked_add(deadline),
            base: BASE,
            cap: CAP,
        }
    }

    /// The same with other bounds on the random wait: at most `base` after the first failure,
    /// doubling up to `cap` (the defaults, 0.5 ms and 64 ms, suit lost races; a server that
    /// went away wants longer).
    pub fn between(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap.max(base);
        self
    }

    /// Waits before the next attempt and returns true, or returns false at once when the
    /// attempts or the time are used up.
    pub async fn wait(&mut self) -> bool {
        if self.attempts >= self.max_attempts {
            return false;
        }
        let ceiling = self.ceiling();
        let pause = ceiling.mul_f64(rand::random::<f64>());
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() + pause >= deadline)
        {
            return false;
        }
        self.attempts += 1;
        if pause < Duration::from_micros(100) {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(pause).await;
        }
        true
    }

    fn ceiling(&self) -> Duration {
        let doublings = u32::try_from(self.attempts - 1).unwrap_or(u32::MAX).min(16);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(100, Duration::from_secs(60));
        assert_eq!(backoff.ceiling(), BASE);
        backoff.attempts = 2;
        assert_eq!(backoff.ceiling(), BASE * 2);
        backoff.attempts = 60;
        assert_eq!(backoff.ceiling(), CAP);
    }

    #[tokio::test]
    async fn gives_up_after_the_deadline() {
        let mut backoff = Backoff::new(usize::MAX, Duration::ZERO);
        assert!(!backoff.wait().await);
    }
}
