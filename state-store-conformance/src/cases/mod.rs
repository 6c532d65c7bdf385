//! One function per behaviour of the contract. Each panics when the store misbehaves.
//!
//! Cases that need a capability the store does not declare assert that the store refuses it
//! with [`Error::Unsupported`] instead of passing silently.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use state_store_core::{
    Error, Operation, SetMode, SetOptions, StateStore, StoreConfig, WatchSupport, MAX_TTL,
};

use crate::context::Context;
use crate::report;

/// The keys every backend must round-trip (DESIGN.md's set, plus a few more awkward ones).
pub const AWKWARD_KEYS: &[&str] = &[
    "session:abc",
    "a b",
    "a/b",
    "a.b",
    ".lead",
    "trail.",
    "a..b",
    "*",
    ">",
    "%",
    "=",
    "ü",
    "🦀 crab",
    "plain-key_1",
    "a||b",
    "~!@#$^&()[]{}",
    "back\\slash",
    "quote\"d",
    "tab\tand\nnewline",
    "..",
    "a...b",
    ".",
    ":",
    "a::b",
    "trail:",
    "_E_.x",
    "_E_session=3Aabc",
    "~e~a%7C%7Cb",
    "-",
    "_",
];

/// Longest deadline the suite waits for a TTL to take effect before failing.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);

fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what} failed: {}", report(&err)),
    }
}

async fn read(store: &StateStore, name: &str) -> Option<Value> {
    ok(store.get_state(&[name]).await, "get_state")
        .remove(name)
        .unwrap_or_else(|| panic!("get_state did not return requested name {name:?}"))
}

async fn write(store: &StateStore, name: &str, value: Value) {
    ok(store.set_state(name, &value).await, "set_state");
}

/// Polls until `name` reads as missing; panics after [`EXPIRY_DEADLINE`].
async fn wait_until_missing(store: &StateStore, name: &str) {
    let started = std::time::Instant::now();
    while read(store, name).await.is_some() {
        assert!(
            started.elapsed() < EXPIRY_DEADLINE,
            "{name:?} did not expire within {EXPIRY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expect_err(result: Result<impl std::fmt::Debug, Error>, what: &str) -> Error {
    match result {
        Ok(value) => panic!("{what} succeeded with {value:?}, expected an error"),
        Err(err) => err,
    }
}

/// Asserts `result` is `Unsupported` when `declared` is false; returns whether to go on.
fn declared_or_unsupported<T: std::fmt::Debug>(
    declared: bool,
    result: Result<T, Error>,
    feature: &str,
) -> bool {
    if declared {
        return true;
    }
    let err = expect_err(result, feature);
    assert!(
        matches!(err, Error::Unsupported { .. }),
        "undeclared {feature} must be Unsupported, got {}",
        report(&err)
    );
    crate::context::skipped(feature);
    false
}

/// The value of `result` when `declared`; otherwise asserts `Unsupported` and gives `None`.
fn declared_then<T: std::fmt::Debug>(
    declared: bool,
    result: Result<T, Error>,
    feature: &str,
) -> Option<T> {
    if declared {
        Some(ok(result, feature))
    } else {
        declared_or_unsupported(false, result, feature);
        None
    }
}

mod basics;
mod conditional;
mod counters;
mod expiry;
mod keys;

crate::__conformance_cases!(reexport);
