//! Redis's one-call paths: a lease in one script, a rate-limit check in one script on the
//! server's clock. Offered to the stack as the `AcquireLease` and `CheckRateLimit` extensions.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use fred::types::scripts::Script;
use state_store_core::{
    AcquireLease, CheckRateLimit, Error, LeaseAcquire, LeaseGrant, RateAlgorithm, RateLimitReply,
    RateLimitRequest, Result, Version,
};

use crate::error::{is_not_an_integer, map, map_write, STORE};
use crate::store::{px, RedisStateStore};

/// A lease in one call: when the record `KEYS[1]` is absent, `INCR` the token counter
/// `KEYS[2]` and store `ARGV[1] .. token .. ARGV[2]` with `PX ARGV[3]`. Returns
/// `"<token> <sha1 of the record>"`, or nil when the lease is held.
static ACQUIRE_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/acquire_lease.lua")));

/// GCRA on the server's clock: `KEYS[1]` holds the theoretical arrival time (µs since the
/// epoch, as an integer). `ARGV`: emission interval µs, burst, cost, write (`1`/`0`). Returns
/// `{allowed, remaining, retry_after µs (-1: none), reset_after µs}`. The arithmetic is the
/// core's `gcra` (Lua numbers are doubles: exact for µs timestamps until the year 2255).
static GCRA: LazyLock<Script> = LazyLock::new(|| Script::from_lua(include_str!("lua/gcra.lua")));

/// A fixed window: `INCRBY KEYS[1] ARGV[1]` (when `ARGV[3] == '1'`), a new window gets
/// `PEXPIRE ARGV[2]`. Returns `{count, ms left in the window}`.
static FIXED_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::from_lua(include_str!("lua/fixed_window.lua")));

#[async_trait]
impl AcquireLease for RedisStateStore {
    async fn acquire_lease(&self, request: &LeaseAcquire<'_>) -> Result<LeaseGrant> {
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        if self.clustered && slot(request.record_key) != slot(request.counter_key) {
            // A prefix or name that defeats the hash tag (say `{}`): the composed path works
            // on any keys.
            return Ok(LeaseGrant::NotNative);
        }
        let (before, after) = request.record_around_token();
        let granted: Option<String> = ACQUIRE_LEASE
            .evalsha_with_reload(
                &self.client,
                vec![request.record_key, request.counter_key],
                vec![before.as_str(), after, &px(request.ttl).to_string()],
            )
            .await
            .map_err(|err| {
                if is_not_an_integer(&err) {
                    Error::NotAnInteger {
                        key: request.counter_key.to_owned(),
                    }
                } else {
                    map_write(err)
                }
            })?;
        let Some(granted) = granted else {
            return Ok(LeaseGrant::Held);
        };
        let parsed = granted
            .split_once(' ')
            .and_then(|(token, sha)| Some((token.parse().ok()?, Version::new(sha))));
        match parsed {
            Some((token, version)) => Ok(LeaseGrant::Granted { token, version }),
            None => Err(Error::backend(
                STORE,
                "the lease script gave an unreadable answer",
            )),
        }
    }
}

#[async_trait]
impl CheckRateLimit for RedisStateStore {
    async fn rate_limit(&self, request: &RateLimitRequest<'_>) -> Result<Option<RateLimitReply>> {
        let not_an_integer = |err: fred::error::Error| {
            if is_not_an_integer(&err) {
                Error::NotAnInteger {
                    key: request.key.to_owned(),
                }
            } else if request.write {
                map_write(err)
            } else {
                map(err)
            }
        };
        let write = if request.write { "1" } else { "0" };
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        match request.algorithm {
            RateAlgorithm::Gcra {
                emission_interval,
                burst,
            } => {
                let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = GCRA
                    .evalsha_with_reload(
                        &self.client,
                        request.key,
                        vec![
                            micros(emission_interval).max(1).to_string(),
                            burst.to_string(),
                            request.cost.to_string(),
                            write.to_owned(),
                        ],
                    )
                    .await
                    .map_err(not_an_integer)?;
                let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
                Ok(Some(RateLimitReply::new(
                    allowed == 1,
                    u64::try_from(remaining).unwrap_or(0),
                    (retry >= 0).then(|| us(retry)),
                    us(reset),
                )))
            }
            RateAlgorithm::FixedWindow { limit, window } => {
                let (count, left): (i64, i64) = FIXED_WINDOW
                    .evalsha_with_reload(
                        &self.client,
                        request.key,
                        vec![
                            request.cost.to_string(),
                            px(window).to_string(),
                            write.to_owned(),
                        ],
                    )
                    .await
                    .map_err(not_an_integer)?;
                let used = u64::try_from(count).unwrap_or(0)
                    + if request.write { 0 } else { request.cost };
                let allowed = used <= limit;
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                Ok(Some(RateLimitReply::new(
                    allowed,
                    limit.saturating_sub(used),
                    (!allowed && request.cost <= limit).then_some(left),
                    left,
                )))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use fred::interfaces::KeysInterface;

    use super::*;

    /// The GCRA script and the core's `gcra_step` give the same answers and store the same
    /// arrival time, on 500 generated inputs (a fixed seed, so a failure replays) against a
    /// real server: the one algorithm in two languages cannot drift apart.
    #[tokio::test]
    async fn the_gcra_script_computes_what_core_computes() {
        use crate::RedisConfig;
        use state_store_core::gcra_step;

        let Some(url) = state_store_testkit::harness::redis::redis_url() else {
            return;
        };
        let config = RedisConfig::from_url(&url).expect("url");
        let store = RedisStateStore::connect(config).await.expect("connect");
        let client = store.client();
        let mut seed: u64 = 0x5eed_6c7a;
        let mut next = |bound: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound.max(1)
        };
        for case in 0..500 {
            let now = 1_700_000_000_000_000 + next(1_000_000_000_000_000);
            // Intervals from 1 µs to 1000 s, on a log scale.
            let digits = u32::try_from(next(10)).unwrap_or(0);
            let interval = 1 + next(10u64.pow(digits));
            let burst = 1 + next(1000);
            // Now and then above the burst: never passes.
            let cost = 1 + next(burst + burst / 10 + 1);
            let tolerance = interval * burst;
            let stored = match next(3) {
                0 => None,
                1 => Some(now - next(3 * tolerance + 1)),
                _ => Some(now + next(2 * tolerance + 1)),
            };
            let key = format!("gcra-check:{case}");
            match stored {
                Some(tat) => client
                    .set::<(), _, _>(key.as_str(), tat.to_string(), None, None, false)
                    .await
                    .expect("plant the arrival time"),
                None => client.del::<(), _>(key.as_str()).await.expect("clear"),
            }
            let args = [interval, burst, cost, 1, now].map(|n| n.to_string());
            let (allowed, remaining, retry, reset): (i64, i64, i64, i64) = GCRA
                .evalsha_with_reload(client, key.as_str(), args.to_vec())
                .await
                .expect("the script");
            let (expected, new_tat) = gcra_step(now, stored.unwrap_or(now), interval, burst, cost);
            let inputs = format!(
                "case {case}: now {now}, stored {stored:?}, interval {interval}, burst {burst}, cost {cost}"
            );
            let micros = |d: Duration| i64::try_from(d.as_micros()).expect("fits");
            assert_eq!(allowed == 1, expected.allowed, "{inputs}");
            assert_eq!(
                u64::try_from(remaining).ok(),
                Some(expected.remaining),
                "{inputs}"
            );
            assert_eq!(retry, expected.retry_after.map_or(-1, micros), "{inputs}");
            assert_eq!(reset, micros(expected.reset_after), "{inputs}");
            // What it stored (when its TTL cannot have run out since).
            if expected.allowed && new_tat - now >= 1_000_000 {
                let after: Option<String> = client.get(key.as_str()).await.expect("read");
                assert_eq!(after, Some(new_tat.to_string()), "{inputs}");
            }
            client.del::<(), _>(key.as_str()).await.expect("clean up");
        }
    }
}
