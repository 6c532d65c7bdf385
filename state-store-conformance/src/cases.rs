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
use state_store_core::{Error, Operation, SetMode, SetOptions, StateStore, StoreConfig, MAX_TTL};

use crate::context::Context;
pub use crate::leases::*;
pub use crate::limits::*;
pub use crate::listings::*;
pub use crate::model::{model_concurrent, model_sequences};
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

/// PURISTA's own case: an object is set, read back equal, removed, and then missing.
pub async fn set_get_remove_object(ctx: Context) {
    let store = ctx.store().await;
    let value = json!({ "user": "ada", "roles": ["admin"], "count": 3 });
    write(&store, "purista", value.clone()).await;
    assert_eq!(read(&store, "purista").await, Some(value));
    ok(store.remove_state("purista").await, "remove_state");
    assert_eq!(read(&store, "purista").await, None);
}

/// With `enable_get` off, reads fail with PURISTA's exact message.
pub async fn get_disabled(ctx: Context) {
    let store = ctx
        .store_with(StoreConfig::default().with_enable_get(false))
        .await;
    let err = expect_err(store.get_state(&["x"]).await, "disabled get");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Get
        }
    ));
    assert_eq!(
        err.to_string(),
        "get state from store is disabled by config"
    );
    let err = expect_err(store.get::<Value>("x").await, "disabled typed get");
    assert_eq!(
        err.to_string(),
        "get state from store is disabled by config"
    );
}

/// With `enable_set` off, writes fail with PURISTA's exact message and write nothing.
pub async fn set_disabled(ctx: Context) {
    let store = ctx
        .store_with(StoreConfig::default().with_enable_set(false))
        .await;
    let err = expect_err(store.set_state("x", &json!(1)).await, "disabled set");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Set
        }
    ));
    assert_eq!(err.to_string(), "set state at store is disabled by config");
    let err = expect_err(store.increment("x", 1, None).await, "disabled increment");
    assert_eq!(err.to_string(), "set state at store is disabled by config");
    assert_eq!(read(&ctx.store().await, "x").await, None);
}

/// With `enable_remove` off, removals fail with PURISTA's exact message and remove nothing.
pub async fn remove_disabled(ctx: Context) {
    let writer = ctx.store().await;
    write(&writer, "x", json!("kept")).await;
    let store = ctx
        .store_with(StoreConfig::default().with_enable_remove(false))
        .await;
    let err = expect_err(store.remove_state("x").await, "disabled remove");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Remove
        }
    ));
    assert_eq!(
        err.to_string(),
        "remove state from store is disabled by config"
    );
    assert_eq!(read(&writer, "x").await, Some(json!("kept")));
}

/// A missing name reads as `None`; a stored JSON `null` as `Some(Null)`.
pub async fn missing_is_not_null(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "null", Value::Null).await;
    let state = ok(store.get_state(&["null", "missing"]).await, "get_state");
    assert_eq!(state.get("null"), Some(&Some(Value::Null)));
    assert_eq!(state.get("missing"), Some(&None));
    assert_eq!(ok(store.get::<Option<u8>>("null").await, "get"), Some(None));
    assert!(ok(store.get_entry("null").await, "get_entry").is_some());
}

/// Every kind of JSON value round-trips unchanged, exactly.
pub async fn json_kinds_round_trip(ctx: Context) {
    let store = ctx.store().await;
    let values = [
        json!({ "nested": { "deeper": [1, { "x": null }], "t": true } }),
        json!([1, "two", 3.5, null, false, [], {}]),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0.1),
        json!(-1.5e300),
        json!(true),
        json!("ünïcødé ✓ 🦀 \u{0} \"quotes\" \\ \n"),
        json!(""),
        json!([]),
        json!({}),
    ];
    for (i, value) in values.iter().enumerate() {
        write(&store, &format!("kind{i}"), value.clone()).await;
    }
    let names: Vec<String> = (0..values.len()).map(|i| format!("kind{i}")).collect();
    let state = ok(store.get_state(&names).await, "get_state");
    for (name, value) in names.iter().zip(&values) {
        assert_eq!(state[name].as_ref(), Some(value), "{name}");
    }
}

/// `get_state` returns one entry per distinct name (duplicates collapse), missing as `None`,
/// and an empty map for no names.
pub async fn get_state_many(ctx: Context) {
    let store = ctx.store().await;
    for i in 0..20 {
        write(&store, &format!("n{i}"), json!(i)).await;
    }
    let mut names: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
    names.push("n3".into());
    names.push("n21".into());
    let state = ok(store.get_state(&names).await, "get_state");
    assert_eq!(state.len(), 25);
    for i in 0..25 {
        let expected = (i < 20).then(|| json!(i));
        assert_eq!(state[&format!("n{i}")], expected);
    }
    let none: [&str; 0] = [];
    assert!(ok(store.get_state(&none).await, "get_state()").is_empty());

    // Through the backend, which does not deduplicate: each slot answers its own key, in
    // order, also when a key is asked twice; short and long lists (backends batch them
    // differently), with and without versions.
    let key = |name: &str| format!("{}:{name}", store.config().key_prefix);
    let short: Vec<&str> = vec!["n3", "n21", "n3", "n0", "n21"];
    let long: Vec<&str> = short
        .iter()
        .copied()
        .chain(["n19", "n24", "n5", "n19", "n0"])
        .cycle()
        .take(40)
        .collect();
    for names in [short, long] {
        let keys: Vec<String> = names.iter().map(|name| key(name)).collect();
        let expected: Vec<Option<Value>> = names
            .iter()
            .map(|name| {
                name[1..]
                    .parse::<i64>()
                    .ok()
                    .filter(|&i| i < 20)
                    .map(|i| json!(i))
            })
            .collect();
        let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
        let entries = ok(store.backend().get_many(&keys).await, "get_many");
        let from_entries: Vec<Option<Value>> = entries
            .iter()
            .map(|e| e.as_ref().and_then(|e| json(&e.value)))
            .collect();
        assert_eq!(from_entries, expected, "get_many of {names:?}");
        let values = ok(store.backend().get_values(&keys).await, "get_values");
        let from_values: Vec<Option<Value>> =
            values.iter().map(|v| v.as_deref().and_then(json)).collect();
        assert_eq!(from_values, expected, "get_values of {names:?}");
    }
    // One key at a time, the path typed `get` takes.
    for name in ["n3", "n19", "n21", "n0"] {
        let value = ok(store.backend().get_value(key(name)).await, "get_value");
        let expected = name[1..]
            .parse::<i64>()
            .ok()
            .filter(|&i| i < 20)
            .map(|i| json!(i));
        assert_eq!(
            value.and_then(|v| serde_json::from_slice::<Value>(&v).ok()),
            expected,
            "get_value of {name}"
        );
    }
}

/// A second write replaces the first, and the version changes.
pub async fn overwrite_replaces(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store
            .set_with("k", &json!({"a": 1}), SetOptions::new())
            .await,
        "set",
    );
    let v2 = ok(
        store.set_with("k", &json!([2]), SetOptions::new()).await,
        "set",
    );
    assert_ne!(v1, v2, "every write must give a new version");
    assert_eq!(read(&store, "k").await, Some(json!([2])));
    let entry = ok(store.get_entry("k").await, "get_entry").expect("written");
    assert_eq!(entry.version, v2);
}

/// Removing a missing name is `Ok`, and twice as well.
pub async fn remove_missing_is_ok(ctx: Context) {
    let store = ctx.store().await;
    ok(store.remove_state("never-written").await, "remove missing");
    write(&store, "once", json!(1)).await;
    ok(store.remove_state("once").await, "remove");
    ok(store.remove_state("once").await, "remove again");
}

/// Every awkward key round-trips on its own and through `get_state`, without colliding.
pub async fn awkward_keys_round_trip(ctx: Context) {
    let store = ctx.store().await;
    for (i, key) in AWKWARD_KEYS.iter().enumerate() {
        write(&store, key, json!({ "i": i })).await;
    }
    for (i, key) in AWKWARD_KEYS.iter().enumerate() {
        assert_eq!(
            read(&store, key).await,
            Some(json!({ "i": i })),
            "key {key:?}"
        );
    }
    let state = ok(store.get_state(AWKWARD_KEYS).await, "get_state");
    for (i, key) in AWKWARD_KEYS.iter().enumerate() {
        assert_eq!(
            state[*key],
            Some(json!({ "i": i })),
            "key {key:?} via get_state"
        );
    }
    for key in AWKWARD_KEYS {
        ok(store.remove_state(key).await, "remove");
        assert_eq!(read(&store, key).await, None, "key {key:?} after remove");
    }
}

/// A name of exactly the limit works; empty and one byte over give `InvalidKey` and write
/// nothing.
pub async fn key_limits(ctx: Context) {
    let store = ctx.store().await;
    let limit = store.max_name_len();
    let longest = "k".repeat(limit);
    write(&store, &longest, json!("max")).await;
    assert_eq!(read(&store, &longest).await, Some(json!("max")));

    let too_long = "k".repeat(limit + 1);
    for bad in ["", too_long.as_str()] {
        let err = expect_err(store.set_state(bad, &json!(1)).await, "bad key set");
        assert!(matches!(err, Error::InvalidKey { .. }), "{}", report(&err));
        let err = expect_err(store.get_state(&[bad]).await, "bad key get");
        assert!(matches!(err, Error::InvalidKey { .. }), "{}", report(&err));
        let err = expect_err(store.increment(bad, 1, None).await, "bad key increment");
        assert!(matches!(err, Error::InvalidKey { .. }), "{}", report(&err));
    }
    // The refused key was not truncated onto the longest one.
    assert_eq!(read(&store, &longest).await, Some(json!("max")));
}

/// A value over the limit gives `ValueTooLarge` and writes nothing; the old value stays.
pub async fn value_limit(ctx: Context) {
    let store = ctx
        .store_with(StoreConfig::default().with_max_value_len(1000))
        .await;
    write(&store, "v", json!("small")).await;
    let big = json!("x".repeat(2000));
    let err = expect_err(store.set_state("v", &big).await, "oversized set");
    assert!(
        matches!(err, Error::ValueTooLarge { limit: 1000, .. }),
        "{}",
        report(&err)
    );
    assert!(
        !err.to_string().contains("xxxx"),
        "error messages never carry values"
    );
    assert_eq!(read(&store, "v").await, Some(json!("small")));
    let fits = json!("y".repeat(998));
    write(&store, "v", fits.clone()).await;
    assert_eq!(read(&store, "v").await, Some(fits));
}

/// `Create` on an existing key is `Conflict` and leaves the value; on a missing key it writes.
pub async fn create_conflicts(ctx: Context) {
    let store = ctx.store().await;
    let create = SetOptions::new().mode(SetMode::Create);
    let result = store.set_with("c", &json!(1), create.clone()).await;
    if !declared_or_unsupported(store.capabilities().conditional, result, "create") {
        return;
    }
    let err = expect_err(
        store.set_with("c", &json!(2), create.clone()).await,
        "second create",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "c").await, Some(json!(1)));
    ok(store.remove_state("c").await, "remove");
    ok(
        store.set_with("c", &json!(3), create).await,
        "create after remove",
    );
    assert_eq!(read(&store, "c").await, Some(json!(3)));
}

/// `Update` with the current version writes; with a stale one, or on a removed key, it is
/// `Conflict` and writes nothing.
pub async fn update_checks_version(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store.set_with("u", &json!("one"), SetOptions::new()).await,
        "set",
    );
    let result = store
        .set_with(
            "u",
            &json!("two"),
            SetOptions::new().mode(SetMode::Update(v1.clone())),
        )
        .await;
    if !declared_or_unsupported(store.capabilities().conditional, result, "update") {
        return;
    }
    assert_eq!(read(&store, "u").await, Some(json!("two")));
    let stale = SetOptions::new().mode(SetMode::Update(v1));
    let err = expect_err(
        store.set_with("u", &json!("three"), stale.clone()).await,
        "stale",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "u").await, Some(json!("two")));

    let current = ok(store.get_entry("u").await, "get_entry")
        .expect("written")
        .version;
    ok(store.remove_state("u").await, "remove");
    let gone = SetOptions::new().mode(SetMode::Update(current));
    let err = expect_err(
        store.set_with("u", &json!("four"), gone).await,
        "update removed",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "u").await, None);
}

/// A version read from a value written by a plain `set_state` is a valid base for `Update`.
pub async fn update_after_plain_set(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "p", json!({"n": 1})).await;
    let Some(entry) = ok(store.get_entry("p").await, "get_entry") else {
        panic!("written value missing");
    };
    assert_eq!(entry.value, json!({"n": 1}));
    let result = store
        .set_with(
            "p",
            &json!({"n": 2}),
            SetOptions::new().mode(SetMode::Update(entry.version)),
        )
        .await;
    if declared_or_unsupported(store.capabilities().conditional, result, "update") {
        assert_eq!(read(&store, "p").await, Some(json!({"n": 2})));
    }
}

/// `remove_if` removes only at the expected version; otherwise `Conflict`, value kept.
pub async fn conditional_remove(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store.set_with("r", &json!(1), SetOptions::new()).await,
        "set",
    );
    let v2 = ok(
        store.set_with("r", &json!(2), SetOptions::new()).await,
        "set",
    );
    let stale = store.remove_if("r", &v1).await;
    if !declared_or_unsupported(store.capabilities().conditional, stale, "remove_if") {
        return;
    }
    let err = expect_err(store.remove_if("r", &v1).await, "remove_if stale");
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "r").await, Some(json!(2)));
    ok(store.remove_if("r", &v2).await, "remove_if current");
    assert_eq!(read(&store, "r").await, None);
    let err = expect_err(store.remove_if("r", &v2).await, "remove_if gone");
    assert!(err.is_conflict(), "{}", report(&err));
}

/// 32 tasks × 200 increments, over 4 handles, end at exactly 6400; `get_state` reads it.
pub async fn concurrent_increments(ctx: Context) {
    let store = ctx.store().await;
    let first = store.increment("hits", 1, None).await;
    if !declared_or_unsupported(store.capabilities().increment, first, "increment") {
        return;
    }
    ok(store.increment("hits", -1, None).await, "increment");
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(ctx.store().await);
    }
    let mut tasks = Vec::new();
    for t in 0..32 {
        let store = handles[t % handles.len()].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                ok(store.increment("hits", 1, None).await, "increment");
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await {
            panic!("increment task failed: {err}");
        }
    }
    assert_eq!(read(&store, "hits").await, Some(json!(6400)));
    assert_eq!(ok(store.get::<i64>("hits").await, "get"), Some(6400));
}

/// `increment` returns the new value, accepts negative deltas, and on a non-integer (or on
/// overflow) is `NotAnInteger`, leaving the value as it was.
pub async fn increment_semantics(ctx: Context) {
    let store = ctx.store().await;
    let first = store.increment("c", 5, None).await;
    if !declared_or_unsupported(store.capabilities().increment, first, "increment") {
        return;
    }
    assert_eq!(ok(store.increment("c", -7, None).await, "increment"), -2);
    write(&store, "s", json!("five")).await;
    write(&store, "f", json!(1.5)).await;
    write(&store, "o", json!({ "n": 1 })).await;
    write(&store, "max", json!(i64::MAX)).await;
    for name in ["s", "f", "o", "max"] {
        let before = read(&store, name).await;
        let err = expect_err(store.increment(name, 1, None).await, "bad increment");
        assert!(
            matches!(err, Error::NotAnInteger { .. }),
            "{name}: {}",
            report(&err)
        );
        assert_eq!(read(&store, name).await, before, "{name} changed");
    }
}

/// A TTL'd value reads back before its deadline and is gone after it; zero TTL is refused.
pub async fn ttl_expires(ctx: Context) {
    let store = ctx.store().await;
    let ttl = Duration::from_millis(700);
    let written = std::time::Instant::now();
    let result = store
        .set_with("t", &json!("soon gone"), SetOptions::new().ttl(ttl))
        .await;
    if !declared_or_unsupported(store.capabilities().ttl, result, "TTL") {
        return;
    }
    let early = read(&store, "t").await;
    // Only a read that surely ended before the deadline must find it (no timing assumption).
    if written.elapsed() < ttl {
        assert_eq!(early, Some(json!("soon gone")), "gone before its deadline");
    }
    let long = SetOptions::new().ttl(Duration::from_secs(3600));
    ok(
        store.set_with("long", &json!("stays"), long).await,
        "set long TTL",
    );
    assert_eq!(read(&store, "long").await, Some(json!("stays")));
    wait_until_missing(&store, "t").await;
    assert_eq!(read(&store, "long").await, Some(json!("stays")));
    let zero = SetOptions::new().ttl(Duration::ZERO);
    let err = expect_err(store.set_with("z", &json!(1), zero).await, "zero TTL");
    assert!(matches!(err, Error::InvalidTtl { .. }), "{}", report(&err));
}

/// A plain write after a TTL'd one clears the TTL: the value outlives the old deadline.
pub async fn plain_set_clears_ttl(ctx: Context) {
    let store = ctx.store().await;
    let ttl = SetOptions::new().ttl(Duration::from_secs(1));
    let result = store.set_with("t", &json!(1), ttl.clone()).await;
    if !declared_or_unsupported(store.capabilities().ttl, result, "TTL") {
        return;
    }
    write(&store, "t", json!(2)).await;
    // A marker written with the same TTL after the plain write must expire first.
    ok(store.set_with("marker", &json!(0), ttl).await, "set marker");
    wait_until_missing(&store, "marker").await;
    assert_eq!(read(&store, "t").await, Some(json!(2)));
}

/// An increment's TTL applies only when it creates the counter: it neither extends nor adds a
/// deadline to an existing one.
pub async fn increment_ttl_on_create_only(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let result = store
        .increment("window", 1, Some(Duration::from_secs(1)))
        .await;
    if !caps.increment {
        declared_or_unsupported(false, result, "increment");
        return;
    }
    if !declared_or_unsupported(caps.ttl, result, "increment with TTL") {
        return;
    }
    ok(store.increment("forever", 1, None).await, "increment");
    let later = Some(Duration::from_secs(3600));
    assert_eq!(
        ok(store.increment("window", 1, later).await, "increment"),
        2
    );
    ok(
        store
            .increment("forever", 1, Some(Duration::from_secs(1)))
            .await,
        "increment",
    );
    // The window keeps its 1 s deadline despite the later 1 h TTL.
    wait_until_missing(&store, "window").await;
    // Once the window is gone the counter starts over.
    assert_eq!(ok(store.increment("window", 1, None).await, "increment"), 1);
    // The counter created without a TTL did not get one; give a marker time to prove it.
    ok(
        store
            .set_with(
                "marker",
                &json!(0),
                SetOptions::new().ttl(Duration::from_secs(1)),
            )
            .await,
        "set marker",
    );
    wait_until_missing(&store, "marker").await;
    assert_eq!(read(&store, "forever").await, Some(json!(2)));
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Tally {
    seen: Vec<u32>,
}

/// `update::<T>` under 32 concurrent writers on 2 handles, with the default retries, loses
/// no update and gives up on none.
pub async fn update_loses_nothing(ctx: Context) {
    let store = ctx.store().await;
    let first = store
        .update("tally", |old: Option<Tally>| old.unwrap_or_default())
        .await;
    if !declared_or_unsupported(store.capabilities().conditional, first, "update") {
        return;
    }
    let other = ctx.store().await;
    let mut tasks = Vec::new();
    for writer in 0..32u32 {
        let store = if writer % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let n = writer * 100 + i;
                ok(
                    store
                        .update("tally", |old: Option<Tally>| {
                            let mut tally = old.unwrap_or_default();
                            tally.seen.push(n);
                            tally
                        })
                        .await,
                    "update",
                );
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await {
            panic!("update task failed: {err}");
        }
    }
    let tally: Tally = ok(store.get("tally").await, "get").expect("written");
    let seen: HashSet<u32> = tally.seen.iter().copied().collect();
    assert_eq!(tally.seen.len(), 160, "no update lost, none applied twice");
    assert_eq!(seen.len(), 160);
}

/// A stored value that does not fit `T` is a `Decode` error naming the key, with no value in
/// the message.
pub async fn typed_decode_error(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "typed", json!({ "secret": "hunter2" })).await;
    let err = expect_err(store.get::<Vec<u32>>("typed").await, "decode");
    match &err {
        Error::Decode { key, .. } => assert_eq!(key, "typed"),
        other => panic!("expected Decode, got {}", report(other)),
    }
    assert!(!report(&err).contains("hunter2"), "{}", report(&err));
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        count: u32,
    }
    let err = expect_err(store.get::<Wrong>("typed").await, "decode");
    assert!(matches!(err, Error::Decode { .. }));
    assert!(!report(&err).contains("hunter2"), "{}", report(&err));
}

/// Every feature is either declared and working or refused with `Unsupported`.
pub async fn capabilities_are_truthful(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let ttl = store
        .set_with(
            "cap-ttl",
            &json!(1),
            SetOptions::new().ttl(Duration::from_secs(60)),
        )
        .await;
    if declared_or_unsupported(caps.ttl, ttl, "TTL") {
        assert_eq!(read(&store, "cap-ttl").await, Some(json!(1)));
    } else {
        assert_eq!(
            read(&store, "cap-ttl").await,
            None,
            "a refused TTL write wrote"
        );
    }
    let create = store
        .set_with(
            "cap-create",
            &json!(1),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    if declared_or_unsupported(caps.conditional, create, "Create") {
        assert_eq!(read(&store, "cap-create").await, Some(json!(1)));
    } else {
        assert_eq!(
            read(&store, "cap-create").await,
            None,
            "a refused Create wrote"
        );
    }
    let incr = store.increment("cap-incr", 3, None).await;
    if declared_or_unsupported(caps.increment, incr, "increment") {
        assert_eq!(read(&store, "cap-incr").await, Some(json!(3)));
    }
    assert!(caps.max_key_len > 0 && caps.max_value_len > 0);
}

/// Two handles (two connections) over one backend see each other's writes and removals.
pub async fn handles_share_state(ctx: Context) {
    let a = ctx.store().await;
    let b = ctx.store().await;
    write(&a, "shared", json!({ "from": "a" })).await;
    assert_eq!(read(&b, "shared").await, Some(json!({ "from": "a" })));
    write(&b, "shared", json!({ "from": "b" })).await;
    assert_eq!(read(&a, "shared").await, Some(json!({ "from": "b" })));
    ok(b.remove_state("shared").await, "remove");
    assert_eq!(read(&a, "shared").await, None);
}

/// Handles with different prefixes do not see each other's names.
pub async fn prefixes_isolate(ctx: Context) {
    let a = ctx
        .store_with(StoreConfig::default().with_prefix("svc-a:"))
        .await;
    let b = ctx
        .store_with(StoreConfig::default().with_prefix("svc-b:"))
        .await;
    write(&a, "name", json!("a")).await;
    write(&b, "name", json!("b")).await;
    assert_eq!(read(&a, "name").await, Some(json!("a")));
    assert_eq!(read(&b, "name").await, Some(json!("b")));
    ok(a.remove_state("name").await, "remove");
    assert_eq!(read(&b, "name").await, Some(json!("b")));
    let unprefixed = ctx.store().await;
    assert_eq!(read(&unprefixed, "svc-b:name").await, Some(json!("b")));
    assert_eq!(read(&unprefixed, "name").await, None);
}

/// After `destroy`, every operation fails with a clear error, and nothing hangs; a second
/// `destroy` is `Ok`.
pub async fn destroy_then_fail(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "before", json!(1)).await;
    ok(store.destroy().await, "destroy");
    ok(store.destroy().await, "second destroy");
    let clone = store.clone();
    let errors = [
        expect_err(clone.get_state(&["before"]).await, "get after destroy"),
        expect_err(clone.set_state("x", &json!(1)).await, "set after destroy"),
        expect_err(clone.remove_state("before").await, "remove after destroy"),
        expect_err(
            clone.increment("n", 1, None).await,
            "increment after destroy",
        ),
    ];
    for err in errors {
        assert!(
            matches!(err, Error::Closed { .. } | Error::Unavailable { .. }),
            "{}",
            report(&err)
        );
    }
}

/// Handles whose prefixes are not nested never see each other's keys, whatever the names:
/// `t1` reading `2:x` does not see what `t12` wrote under `:x`, nor any of many generated
/// prefix and name pairs. Nested prefixes (`t1` and `t1:2`) do share keys, by design.
pub async fn prefixes_never_collide(ctx: Context) {
    let root = ctx.store().await;
    let t1 = root.with_prefix("t1");
    let t12 = root.with_prefix("t12");
    write(&t12, ":x", json!("tenant t12")).await;
    assert_eq!(read(&t1, "2:x").await, None, "t1 sees t12's key");
    assert_eq!(read(&t12, ":x").await, Some(json!("tenant t12")));
    write(&t1, "2:y", json!("t1")).await;
    assert_eq!(read(&t12, ":y").await, None, "t12 sees t1's key");
    assert_eq!(
        read(&root.with_prefix("t1:2"), "y").await,
        Some(json!("t1")),
        "a nested prefix shares its parent's keys"
    );
    // The documented layout, spelled out: `prefix:name`, no prefix → the name itself.
    let bare = ctx.store_without_prefix().await;
    let case = ctx.prefix();
    assert_eq!(
        read(&bare, &format!("{case}:t12::x")).await,
        Some(json!("tenant t12"))
    );
    assert_eq!(
        read(&bare, &format!("{case}:t1:2:y")).await,
        Some(json!("t1"))
    );
    assert_eq!(
        read(&root.with_prefix("::t12::"), ":x").await,
        Some(json!("tenant t12")),
        "empty prefix segments are ignored"
    );

    // Generated: prefixes and names from a small alphabet, so near misses are common. Every
    // (prefix, name) pair must read exactly what was last written under its stored key
    // `prefix:name`: nothing leaks between prefixes that are not nested.
    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let alphabet = ["a", "b", ":", "1", "."];
    let draw = |rng: &mut rand::rngs::StdRng| -> String {
        let len = rng.random_range(1..=4);
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect()
    };
    let mut stored: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let mut prefixes = Vec::new();
    let mut names = Vec::new();
    for i in 0..24 {
        let handle = root.with_prefix(&draw(&mut rng));
        let name = draw(&mut rng);
        write(&handle, &name, json!(i)).await;
        let path = handle.config().key_prefix.clone();
        stored.insert(format!("{path}:{name}"), i);
        prefixes.push(handle);
        names.push(name);
    }
    for handle in &prefixes {
        let state = ok(handle.get_state(&names).await, "get_state");
        let path = &handle.config().key_prefix;
        for name in &names {
            let want = stored.get(&format!("{path}:{name}")).map(|i| json!(i));
            assert_eq!(
                state[name], want,
                "prefix {path:?} name {name:?} (seed {seed})"
            );
        }
    }
}

/// Errors name the caller's name, never the stored key: another tenant's prefix does not
/// show in messages.
pub async fn errors_name_the_callers_name(ctx: Context) {
    let store = ctx.store().await.with_prefix("tenant-secret");
    write(&store, "n", json!("text")).await;
    if store.capabilities().conditional {
        let err = expect_err(
            store
                .set_with("n", &json!(1), SetOptions::new().mode(SetMode::Create))
                .await,
            "create over existing",
        );
        assert!(
            matches!(&err, Error::Conflict { key } if key == "n"),
            "{}",
            report(&err)
        );
    }
    if store.capabilities().increment {
        let err = expect_err(store.increment("n", 1, None).await, "increment text");
        assert!(
            matches!(&err, Error::NotAnInteger { key } if key == "n"),
            "{}",
            report(&err)
        );
        assert!(!report(&err).contains("tenant-secret"), "{}", report(&err));
    }
}

/// Awkward names round-trip without any prefix too (the stored key is the name, as PURISTA
/// stores it), one by one and all in one `get_state`; one odd name never fails a batch.
pub async fn unprefixed_awkward_keys_round_trip(ctx: Context) {
    let store = ctx.store_without_prefix().await;
    let names: Vec<String> = AWKWARD_KEYS
        .iter()
        .map(|k| format!("{k}{}", ctx.id()))
        .chain(AWKWARD_KEYS.iter().map(|k| format!("{}{k}", ctx.id())))
        .collect();
    for (i, name) in names.iter().enumerate() {
        write(&store, name, json!(i)).await;
        assert_eq!(read(&store, name).await, Some(json!(i)), "name {name:?}");
    }
    let state = ok(store.get_state(&names).await, "get_state of every name");
    for (i, name) in names.iter().enumerate() {
        assert_eq!(state[name], Some(json!(i)), "name {name:?} via get_state");
    }
    for name in &names {
        ok(store.remove_state(name).await, "remove");
    }
    let state = ok(store.get_state(&names).await, "get_state after remove");
    assert!(state.values().all(Option::is_none));
}

/// `update` keeps a value's TTL: a session touched by `update` a second after it was written
/// keeps its first deadline (read where the backend reports deadlines, observed against a
/// marker elsewhere), and does expire;
/// a value created by `update` gets none (the config has no default TTL).
pub async fn update_keeps_ttl(ctx: Context) {
    let store = ctx.store().await;
    let written = store
        .set_with(
            "session",
            &json!({ "n": 0 }),
            SetOptions::new().ttl(Duration::from_secs(3)),
        )
        .await;
    if !declared_or_unsupported(store.capabilities().ttl, written, "TTL") {
        return;
    }
    let written = std::time::Instant::now();
    let before = deadline(&store, "session").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let updated = store
        .update("session", |old: Option<Value>| {
            json!({ "n": old.and_then(|v| v["n"].as_i64()).unwrap_or(-1) + 1 })
        })
        .await;
    if !declared_or_unsupported(store.capabilities().conditional, updated, "update") {
        return;
    }
    assert_eq!(read(&store, "session").await, Some(json!({ "n": 1 })));
    match (before, deadline(&store, "session").await) {
        (Some(before), Some(after)) => assert!(
            after <= before + Duration::from_millis(100),
            "update pushed the deadline {:?} later",
            after - before
        ),
        // Where deadlines are not reported (Redis), a marker that expires no earlier than the
        // first deadline (3 s after the write, counted from before it) must outlive the
        // session; one renewed by the update would outlive the marker by about a second.
        _ => {
            let left = Duration::from_secs(3).saturating_sub(written.elapsed());
            let marker = SetOptions::new().ttl(left + Duration::from_millis(1));
            ok(store.set_with("marker", &json!(0), marker).await, "marker");
            wait_until_missing(&store, "marker").await;
            assert_eq!(
                read(&store, "session").await,
                None,
                "update pushed the deadline later"
            );
        }
    }
    wait_until_missing(&store, "session").await;
    ok(
        store
            .update("fresh", |_: Option<Value>| json!("no ttl"))
            .await,
        "update creating",
    );
    assert_eq!(read(&store, "fresh").await, Some(json!("no ttl")));
}

/// A fixed window closes under heavy traffic: `increment(.., ttl 2 s)` back to back (so that
/// rewrites land at every point of every second) starts again from the delta once the window
/// created by the first increment has passed — not before, and not later.
pub async fn fixed_window_closes_under_traffic(ctx: Context) {
    let store = ctx.store().await;
    let window = Duration::from_secs(2);
    let opened = std::time::Instant::now();
    let first = store.increment("rl", 1, Some(window)).await;
    let caps = store.capabilities();
    if !declared_or_unsupported(caps.increment && caps.ttl, first, "increment with TTL") {
        return;
    }
    let started = std::time::Instant::now();
    // Where the backend reports deadlines, the window's must never move later. Elsewhere a
    // marker written now with the window's TTL expires no earlier than the window: once it is
    // gone, the next increment must start a new window.
    let first_deadline = deadline(&store, "rl").await;
    let marker = first_deadline.is_none();
    if marker {
        let options = SetOptions::new().ttl(window);
        ok(
            store.set_with("rl-marker", &json!(0), options).await,
            "marker",
        );
    }
    let mut highest = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let must_close = marker && read(&store, "rl-marker").await.is_none();
        let n = ok(store.increment("rl", 1, Some(window)).await, "increment");
        if n == 1 {
            // Never before its time: the first increment started the window at `opened` at
            // the earliest (a few ms for clocks that count whole milliseconds).
            assert!(
                opened.elapsed() + Duration::from_millis(5) >= window,
                "the window closed {:?} after it opened, before its {window:?}",
                opened.elapsed()
            );
            break;
        }
        assert!(
            !must_close,
            "increment {n} kept the window open past its deadline"
        );
        highest = highest.max(n);
        if let (Some(first), Some(now)) = (first_deadline, deadline(&store, "rl").await) {
            assert!(
                now <= first + Duration::from_millis(100),
                "increment {n} moved the window's deadline {:?} later",
                now - first
            );
        }
        assert!(
            started.elapsed() < EXPIRY_DEADLINE,
            "the window never closed: the counter reached {highest}"
        );
    }
}

/// When `name` expires, where the backend reports it (read through the backend, bypassing
/// the handle, which does not expose deadlines).
async fn deadline(store: &StateStore, name: &str) -> Option<std::time::Instant> {
    let key = format!("{}:{name}", store.config().key_prefix);
    let entry = ok(store.backend().get_many(&[key]).await, "get_many")
        .pop()
        .flatten()?;
    Some(std::time::Instant::now() + entry.expires_in?)
}

/// `keep_ttl` keeps a live value's deadline — or its lack of one — whatever `ttl` says, on
/// upserts and updates; a write that creates the key applies `ttl`.
pub async fn keep_ttl_keeps_deadlines(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let two = SetOptions::new().ttl(Duration::from_secs(2));
    let first = store.set_with("expiring", &json!(0), two.clone()).await;
    if !declared_or_unsupported(caps.ttl, first, "TTL") {
        return;
    }
    write(&store, "permanent", json!(0)).await;
    let keep = |ttl: u64| {
        SetOptions::new()
            .keep_ttl(true)
            .ttl(Duration::from_secs(ttl))
    };
    let set = |name: &'static str, options: SetOptions| {
        let store = store.clone();
        async move { ok(store.set_with(name, &json!(1), options).await, name) }
    };
    set("expiring", keep(3600)).await;
    set("permanent", keep(1)).await;
    if caps.conditional {
        ok(store.set_with("u-expiring", &json!(0), two).await, "set");
        write(&store, "u-permanent", json!(0)).await;
        for (name, ttl) in [("u-expiring", 3600), ("u-permanent", 1)] {
            let entry = ok(store.get_entry(name).await, "get_entry").expect("written");
            set(name, keep(ttl).mode(SetMode::Update(entry.version))).await;
        }
        set("created-by-create", keep(1).mode(SetMode::Create)).await;
    }
    set("created-by-upsert", keep(1)).await;
    wait_until_missing(&store, "expiring").await;
    wait_until_missing(&store, "created-by-upsert").await;
    // Written before `created-by-upsert` with the same TTL, a wrongly set deadline would have
    // passed by now.
    assert_eq!(read(&store, "permanent").await, Some(json!(1)));
    if caps.conditional {
        wait_until_missing(&store, "u-expiring").await;
        wait_until_missing(&store, "created-by-create").await;
        assert_eq!(read(&store, "u-permanent").await, Some(json!(1)));
    }
}

/// A plain write works after a conditional write and after an increment on the same key,
/// and replaces the value.
pub async fn plain_write_after_conditional_write(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let created = store
        .set_with(
            "c",
            &json!("created"),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    if declared_or_unsupported(caps.conditional, created, "Create") {
        write(&store, "c", json!("plain")).await;
        assert_eq!(read(&store, "c").await, Some(json!("plain")));
        let entry = ok(store.get_entry("c").await, "get_entry").expect("written");
        ok(
            store
                .set_with(
                    "c",
                    &json!("cas"),
                    SetOptions::new().mode(SetMode::Update(entry.version)),
                )
                .await,
            "update",
        );
        write(&store, "c", json!("plain again")).await;
        assert_eq!(read(&store, "c").await, Some(json!("plain again")));
    }
    let counted = store.increment("n", 1, None).await;
    if declared_or_unsupported(caps.increment, counted, "increment") {
        write(&store, "n", json!("plain")).await;
        assert_eq!(read(&store, "n").await, Some(json!("plain")));
    }
}

/// A version never matches a value it was not read from: after a remove (or an expiry) and
/// a re-create, the old version is refused by `remove_if` and `Update`.
pub async fn versions_are_never_reused(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let created = store
        .set_with("lock", &json!("A"), SetOptions::new().mode(SetMode::Create))
        .await;
    let Some(old) = declared_then(caps.conditional, created, "Create") else {
        return;
    };
    ok(store.remove_state("lock").await, "remove");
    // Identical bytes give the same version where versions are derived from the value.
    let again = if caps.versions_from_value { "B" } else { "A" };
    ok(
        store
            .set_with(
                "lock",
                &json!(again),
                SetOptions::new().mode(SetMode::Create),
            )
            .await,
        "re-create",
    );
    let err = expect_err(
        store.remove_if("lock", &old).await,
        "remove_if with old version",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    let err = expect_err(
        store
            .set_with(
                "lock",
                &json!("C"),
                SetOptions::new().mode(SetMode::Update(old.clone())),
            )
            .await,
        "update with old version",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "lock").await, Some(json!(again)));

    if !caps.ttl {
        return;
    }
    let short = SetOptions::new()
        .mode(SetMode::Create)
        .ttl(Duration::from_secs(1));
    let old = ok(
        store.set_with("lease", &json!("A"), short.clone()).await,
        "create with TTL",
    );
    wait_until_missing(&store, "lease").await;
    ok(
        store
            .set_with(
                "lease",
                &json!(again),
                SetOptions::new().mode(SetMode::Create),
            )
            .await,
        "re-create after expiry",
    );
    let err = expect_err(
        store.remove_if("lease", &old).await,
        "remove_if after expiry",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "lease").await, Some(json!(again)));
}

/// Of 16 concurrent `remove_if` calls with the current version, exactly one removes the
/// value; the other 15 get `Conflict`.
pub async fn conditional_remove_has_one_winner(ctx: Context) {
    let store = ctx.store().await;
    let created = store
        .set_with(
            "job",
            &json!("take me"),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    let Some(version) = declared_then(store.capabilities().conditional, created, "Create") else {
        return;
    };
    let other = ctx.store().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            let version = version.clone();
            tokio::spawn(async move { store.remove_if("job", &version).await })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("remove_if task") {
            Ok(()) => winners += 1,
            Err(err) => assert!(err.is_conflict(), "{}", report(&err)),
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one caller may be told it removed the value"
    );
    assert_eq!(read(&store, "job").await, None);
}

/// TTLs longer than [`MAX_TTL`] are refused with `InvalidTtl` before anything is written, on
/// writes and increments alike; `MAX_TTL` itself is accepted and the value stays.
pub async fn huge_ttl_is_refused(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    write(&store, "v", json!("old")).await;
    for ttl in [Duration::MAX, MAX_TTL + Duration::from_secs(1)] {
        let err = expect_err(
            store
                .set_with("v", &json!("new"), SetOptions::new().ttl(ttl))
                .await,
            "huge TTL",
        );
        assert!(matches!(err, Error::InvalidTtl { .. }), "{}", report(&err));
        let err = expect_err(
            store.increment("n", 5, Some(ttl)).await,
            "huge TTL increment",
        );
        assert!(
            matches!(err, Error::InvalidTtl { .. })
                || (!caps.increment && matches!(err, Error::Unsupported { .. })),
            "{}",
            report(&err)
        );
    }
    assert_eq!(read(&store, "v").await, Some(json!("old")));
    assert_eq!(read(&store, "n").await, None, "a refused increment counted");
    let longest = store
        .set_with("v", &json!("long"), SetOptions::new().ttl(MAX_TTL))
        .await;
    if declared_or_unsupported(caps.ttl, longest, "TTL") {
        let counted = store.increment("n", 5, Some(MAX_TTL)).await;
        if declared_or_unsupported(caps.increment, counted, "increment") {
            assert_eq!(
                ok(store.increment("n", 1, Some(MAX_TTL)).await, "increment"),
                6
            );
        }
        // A server that overflowed would drop the value within moments.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(read(&store, "v").await, Some(json!("long")));
        if caps.increment {
            assert_eq!(read(&store, "n").await, Some(json!(6)));
        }
    }
}
