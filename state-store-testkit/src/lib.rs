//! This workspace's own test support, not published: the servers our adapter tests run against
//! and the benchmark runner.
//!
//! [`harness`] finds a backend for a test: an env var with its URL, else a server binary it
//! spawns on a free loopback port with a temporary directory, else a container
//! ([`harness::container`]) when a Docker engine answers, else it says so loudly and skips —
//! or fails, when `STATE_STORE_REQUIRE_BACKENDS=1`. `STATE_STORE_TEST_TIER` forces a tier.
//! Spawned servers and containers die with the test process. [`bench`](mod@bench) runs an adapter and its raw client side by side and prints the ratio;
//! [`chart`] draws the scaling report's charts.
//!
//! The suite every store runs lives in `state-store-conformance`, which is published.

pub mod bench;
pub mod chart;
pub mod harness;
