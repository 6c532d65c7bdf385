//! Model-based randomized testing: seeded random operations, checked against a reference
//! model, sequentially and concurrently.
//!
//! [`model_sequences`] applies random sequences of every operation (all write modes, TTLs,
//! removes, conditional removes, increments, `update`, `get_state` over many names) through
//! several handles with different, nested and near-miss prefixes, with names drawn from a
//! generator of awkward characters, and compares every observable result with a plain
//! in-memory model of the contract. [`model_concurrent`] runs tasks over separately opened
//! handles and checks that the acknowledged history has a sequential explanation: counters
//! exact, no lost update, no compare-and-set won twice from one read.
//!
//! # Replaying a failure
//!
//! A failure prints its seed. `STATE_STORE_MODEL_SEED=<seed>` replays exactly that sequence;
//! `STATE_STORE_MODEL_SEEDS` (default 12) and `STATE_STORE_MODEL_OPS` (default 200) set how
//! many sequences of how many operations a run tries.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use state_store_core::{Capabilities, Error, SetMode, SetOptions, StateStore, Version};

use crate::context::Context;
use crate::report;

/// Pieces generated names are made of: separators, NATS and Dapr specials, escapes of our own
/// codecs, non-ASCII.
const NAME_PIECES: &[&str] = &[
    "a", "b", "Z", "0", ":", ".", "..", " ", "/", "*", ">", "%", "=", "|", "||", "_E_", "~e~", "-",
    "_", "ü", "🦀", "\\", "\"", "{", "}", "\n",
];

/// A TTL long enough never to expire during a test: the model treats the value as permanent,
/// and checks that TTL'd writes behave like the others in every other way.
const LONG_TTL: Duration = Duration::from_secs(3600);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One state in the model: the value, its encoding, and a write counter (a new one per write).
#[derive(Clone, Debug)]
struct Slot {
    value: Value,
    bytes: Vec<u8>,
    write: u64,
}

/// A version the test has seen, and what it was read from.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    key: String,
    write: u64,
    bytes: Vec<u8>,
}

/// The reference model: stored key → slot, plus what a version may match.
struct Model {
    slots: HashMap<String, Slot>,
    writes: u64,
    seen: Vec<Seen>,
    versions_from_value: bool,
}

impl Model {
    fn put(&mut self, key: &str, value: Value) -> u64 {
        self.writes += 1;
        let bytes = serde_json::to_vec(&value).expect("JSON");
        self.slots.insert(
            key.to_owned(),
            Slot {
                value,
                bytes,
                write: self.writes,
            },
        );
        self.writes
    }

    fn remember(&mut self, version: Version, key: &str) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        self.seen.push(Seen {
            version,
            key: key.to_owned(),
            write: slot.write,
            bytes: slot.bytes.clone(),
        });
        if self.seen.len() > 64 {
            self.seen.remove(0);
        }
    }

    /// Whether `seen` matches the current value at `key`: it was read from this very write, or
    /// (where versions derive from the bytes) from identical bytes.
    fn matches(&self, seen: &Seen, key: &str) -> bool {
        self.slots.get(key).is_some_and(|slot| {
            (seen.key == key && seen.write == slot.write)
                || (self.versions_from_value && seen.bytes == slot.bytes)
        })
    }
}

/// A handle of the sequence and the canonical prefix its keys live under.
struct Handle {
    store: StateStore,
    prefix: String,
    names: Vec<String>,
}

impl Handle {
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}:{name}", self.prefix)
        }
    }
}

fn gen_name(rng: &mut StdRng) -> String {
    let pieces = rng.random_range(1..=4);
    (0..pieces)
        .map(|_| NAME_PIECES[rng.random_range(0..NAME_PIECES.len())])
        .collect()
}

fn gen_value(rng: &mut StdRng, n: u64) -> Value {
    match rng.random_range(0..9) {
        0 => Value::Null,
        1 => json!(rng.random_range(-5..=5)),
        2 => json!(i64::MAX - rng.random_range(0..3)),
        3 => json!(1.5),
        4 => json!(format!("s{n}")),
        5 => json!(n.to_string()),
        6 => json!([n, "x", null]),
        7 => json!({ "n": n, "nested": { "ü": true } }),
        _ => json!(n),
    }
}

/// What the handle reported, reduced to what the model predicts.
#[derive(Debug, PartialEq)]
enum Outcome {
    Ok,
    Value(Option<Value>),
    Number(i64),
    Conflict,
    NotAnInteger,
}

fn outcome<T>(result: Result<T, Error>, ok: impl FnOnce(T) -> Outcome) -> Result<Outcome, String> {
    match result {
        Ok(v) => Ok(ok(v)),
        Err(Error::Conflict { .. }) => Ok(Outcome::Conflict),
        Err(Error::NotAnInteger { .. }) => Ok(Outcome::NotAnInteger),
        Err(err) => Err(report(&err)),
    }
}

struct Run<'a> {
    rng: StdRng,
    model: Model,
    handles: Vec<Handle>,
    caps: &'a Capabilities,
    log: String,
}

impl Run<'_> {
    /// `set_with`; on success the model takes the value and remembers the version.
    async fn write(
        &mut self,
        store: &StateStore,
        name: &str,
        key: &str,
        value: Value,
        options: SetOptions,
    ) -> Result<Outcome, String> {
        outcome(store.set_with(name, &value, options).await, |version| {
            self.model.put(key, value);
            self.model.remember(version, key);
            Outcome::Ok
        })
    }

    /// One random operation; `Err` describes a mismatch.
    async fn step(&mut self, n: u64) -> Result<(), String> {
        let h = self.rng.random_range(0..self.handles.len());
        let names = &self.handles[h].names;
        let name = names[self.rng.random_range(0..names.len())].clone();
        let key = self.handles[h].key(&name);
        let store = self.handles[h].store.clone();
        let caps = self.caps;
        let ttl = (caps.ttl && self.rng.random_bool(0.3)).then_some(LONG_TTL);
        let current = self.model.slots.get(&key).cloned();
        let kind = self.rng.random_range(0..10);
        let (what, expected, got) = match kind {
            0 | 1 => {
                let value = gen_value(&mut self.rng, n);
                let mut options = SetOptions::new();
                options.ttl = ttl;
                let got = self.write(&store, &name, &key, value, options).await?;
                (format!("set {name:?} ttl={ttl:?}"), Outcome::Ok, got)
            }
            2 if caps.conditional => {
                let value = gen_value(&mut self.rng, n);
                let mut options = SetOptions::new().mode(SetMode::Create);
                options.ttl = ttl;
                let expected = if current.is_some() {
                    Outcome::Conflict
                } else {
                    Outcome::Ok
                };
                let got = self.write(&store, &name, &key, value, options).await?;
                (format!("create {name:?}"), expected, got)
            }
            3 | 4 if caps.conditional && !self.model.seen.is_empty() => {
                // Mostly the newest version seen for this key, sometimes any other.
                let newest = self.model.seen.iter().rev().find(|s| s.key == key).cloned();
                let seen = match newest {
                    Some(s) if self.rng.random_bool(0.7) => s,
                    _ => {
                        let i = self.rng.random_range(0..self.model.seen.len());
                        self.model.seen[i].clone()
                    }
                };
                let expected = if self.model.matches(&seen, &key) {
                    Outcome::Ok
                } else {
                    Outcome::Conflict
                };
                if kind == 3 {
                    let value = gen_value(&mut self.rng, n);
                    let mut options = SetOptions::new().mode(SetMode::Update(seen.version.clone()));
                    options.ttl = ttl;
                    let got = self.write(&store, &name, &key, value, options).await?;
                    (
                        format!("update {name:?} at {:?}", seen.version),
                        expected,
                        got,
                    )
                } else {
                    let got = outcome(store.remove_if(&name, &seen.version).await, |()| {
                        self.model.slots.remove(&key);
                        Outcome::Ok
                    })?;
                    (
                        format!("remove_if {name:?} at {:?}", seen.version),
                        expected,
                        got,
                    )
                }
            }
            5 => {
                let got = outcome(store.remove_state(&name).await, |()| Outcome::Ok)?;
                self.model.slots.remove(&key);
                (format!("remove {name:?}"), Outcome::Ok, got)
            }
            6 if caps.increment => {
                let delta = self.rng.random_range(-3..=3);
                let expected = match &current {
                    None => Outcome::Number(delta),
                    Some(slot) => match slot.value.as_i64().and_then(|v| v.checked_add(delta)) {
                        Some(next) => Outcome::Number(next),
                        None => Outcome::NotAnInteger,
                    },
                };
                let got = outcome(store.increment(&name, delta, ttl).await, |v| {
                    self.model.put(&key, json!(v));
                    Outcome::Number(v)
                })?;
                (
                    format!("increment {name:?} by {delta} ttl={ttl:?}"),
                    expected,
                    got,
                )
            }
            7 if caps.conditional => {
                let wrapped = |old: Option<Value>| json!({ "old": old, "n": n });
                let expected_value = wrapped(current.map(|s| s.value));
                let got = outcome(store.update(&name, wrapped).await, |v: Value| {
                    self.model.put(&key, v.clone());
                    Outcome::Value(Some(v))
                })?;
                (
                    format!("update-fn {name:?}"),
                    Outcome::Value(Some(expected_value)),
                    got,
                )
            }
            8 => {
                let got = outcome(store.get_entry(&name).await, |entry| {
                    Outcome::Value(entry.map(|e| {
                        self.model.remember(e.version, &key);
                        e.value
                    }))
                })?;
                let expected = Outcome::Value(current.map(|s| s.value));
                (format!("get_entry {name:?}"), expected, got)
            }
            _ => {
                // A batch with duplicates and names never written.
                let count = self.rng.random_range(1..=8);
                let mut batch: Vec<String> = (0..count)
                    .map(|_| names[self.rng.random_range(0..names.len())].clone())
                    .collect();
                batch.push(format!("never-{n}"));
                let state = store
                    .get_state(&batch)
                    .await
                    .map_err(|e| format!("get_state: {}", report(&e)))?;
                let distinct: HashSet<&String> = batch.iter().collect();
                if state.len() != distinct.len() {
                    return Err(format!(
                        "get_state returned {} entries for {} names",
                        state.len(),
                        distinct.len()
                    ));
                }
                for name in distinct {
                    let want = self
                        .model
                        .slots
                        .get(&self.handles[h].key(name))
                        .map(|s| s.value.clone());
                    let got = state.get(name).cloned().flatten();
                    if got != want {
                        return Err(format!(
                            "get_state: {name:?} read {got:?}, the model has {want:?}"
                        ));
                    }
                }
                (
                    format!("get_state {} names", batch.len()),
                    Outcome::Ok,
                    Outcome::Ok,
                )
            }
        };
        let _ = writeln!(self.log, "  h{h} {what} -> {got:?}");
        if got != expected {
            return Err(format!(
                "{what}: got {got:?}, the model expected {expected:?}"
            ));
        }
        Ok(())
    }

    /// Every name of every handle reads as the model says, through one `get_state` each.
    async fn check_all(&self) -> Result<(), String> {
        for (h, handle) in self.handles.iter().enumerate() {
            let state = handle
                .store
                .get_state(&handle.names)
                .await
                .map_err(|e| format!("final get_state: {}", report(&e)))?;
            for name in &handle.names {
                let want = self
                    .model
                    .slots
                    .get(&handle.key(name))
                    .map(|s| s.value.clone());
                let got = state.get(name).cloned().flatten();
                if got != want {
                    return Err(format!(
                        "final state of h{h} {name:?}: {got:?}, model {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The handles of one sequence, all under a segment of its own: unprefixed (names carry the
/// case id and seed), the sequence's root, `t1`, `t12` (a near miss of `t1`), `t1:2` (nested
/// in `t1`), and `t1` again over a second connection.
async fn handles(ctx: &Context, rng: &mut StdRng, seed: u64) -> Vec<Handle> {
    let segment = seed.to_string();
    let nest = |store: &StateStore, prefix: &str| match store.with_prefix(prefix) {
        Ok(store) => store,
        Err(err) => panic!("with_prefix({prefix:?}): {err}"),
    };
    let root = nest(&ctx.store().await, &segment);
    let second = nest(&ctx.store().await, &segment);
    let stores = [
        ctx.store_without_prefix().await,
        root.clone(),
        nest(&root, "t1"),
        nest(&root, "t12"),
        nest(&root, "t1:2"),
        nest(&second, "t1"),
    ];
    let mut out: Vec<Handle> = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        let mut names: Vec<String> = (0..6).map(|_| gen_name(rng)).collect();
        names.extend(["x", "2:x", ":x"].map(str::to_owned));
        if i == 0 {
            // Unprefixed names share the server with other runs: keep them apart.
            for name in &mut names {
                name.push_str(ctx.id());
                name.push_str(&segment);
            }
        }
        if i == 5 {
            // The second connection works on the first `t1`'s names.
            names.clone_from(&out[2].names);
        }
        out.push(Handle {
            prefix: store.config().key_prefix.clone(),
            store,
            names,
        });
    }
    out
}

/// Random sequences of every operation through several handles, checked step by step
/// against a model of the contract. Prints its seeds, count and duration; a failure prints
/// the seed and the operations that led to it.
pub async fn model_sequences(ctx: Context) {
    let probe = ctx.store().await;
    let caps = probe.capabilities().clone();
    let backend = probe.name().to_owned();
    let replay = std::env::var("STATE_STORE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_number("STATE_STORE_MODEL_SEEDS", 12))
            .map(|_| rand::random())
            .collect(),
    };
    let ops = env_number("STATE_STORE_MODEL_OPS", 200);
    let started = Instant::now();
    for &seed in &seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let handles = handles(&ctx, &mut rng, seed).await;
        let mut run = Run {
            rng,
            model: Model {
                slots: HashMap::new(),
                writes: 0,
                seen: Vec::new(),
                versions_from_value: caps.versions_from_value,
            },
            handles,
            caps: &caps,
            log: String::new(),
        };
        for n in 0..ops {
            if let Err(mismatch) = run.step(n).await {
                panic!(
                    "model mismatch on {backend} at operation {n} of seed {seed}: {mismatch}\n\
                     replay with STATE_STORE_MODEL_SEED={seed}\noperations:\n{}",
                    run.log
                );
            }
        }
        if let Err(mismatch) = run.check_all().await {
            panic!(
                "model mismatch on {backend} after seed {seed}: {mismatch}\n\
                 replay with STATE_STORE_MODEL_SEED={seed}\noperations:\n{}",
                run.log
            );
        }
    }
    println!(
        "model_sequences on {backend}: {} seeds × {ops} operations in {:.1?} (seeds {seeds:?})",
        seeds.len(),
        started.elapsed()
    );
}

/// Concurrent tasks over two separately opened handles; the acknowledged history must have a
/// sequential explanation: increments by one return each of 1..=N exactly once, a
/// compare-and-set register loses no write and never accepts two writes based on one read,
/// and of many racing `Create`s exactly one wins.
pub async fn model_concurrent(ctx: Context) {
    const TASKS: u64 = 8;
    const EACH: u64 = 20;
    let a = ctx.store().await;
    let b = ctx.store().await;
    let caps = a.capabilities().clone();
    let started = Instant::now();
    let pick = |i: u64| if i % 2 == 0 { a.clone() } else { b.clone() };

    if caps.increment {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = pick(i);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..EACH {
                        got.push(store.increment("counter", 1, None).await);
                    }
                    got
                })
            })
            .collect();
        let mut returned = Vec::new();
        for task in tasks {
            for result in task.await.expect("increment task") {
                match result {
                    Ok(v) => returned.push(v),
                    Err(err) => panic!("increment failed: {}", report(&err)),
                }
            }
        }
        returned.sort_unstable();
        let n = i64::try_from(TASKS * EACH).expect("small");
        assert_eq!(
            returned,
            (1..=n).collect::<Vec<_>>(),
            "each count returned once"
        );

        // Creation is the racy moment of a counter: many rounds of every task incrementing a
        // fresh counter once, with and without a TTL on create.
        for round in 0..12 {
            let name = format!("fresh-{round}");
            let ttl = (caps.ttl && round % 2 == 1).then_some(Duration::from_secs(3600));
            let tasks: Vec<_> = (0..TASKS)
                .map(|i| {
                    let store = pick(i);
                    let name = name.clone();
                    tokio::spawn(async move { store.increment(&name, 1, ttl).await })
                })
                .collect();
            let mut returned = Vec::new();
            for task in tasks {
                match task.await.expect("increment task") {
                    Ok(v) => returned.push(v),
                    Err(err) => panic!("increment failed: {}", report(&err)),
                }
            }
            returned.sort_unstable();
            let n = i64::try_from(TASKS).expect("small");
            assert_eq!(
                returned,
                (1..=n).collect::<Vec<_>>(),
                "racing first increments of {name:?} (ttl {ttl:?}): one was lost"
            );
        }
    }

    if caps.conditional {
        // A register of compare-and-set increments: each success records the value it read.
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = pick(i);
                tokio::spawn(async move {
                    let mut based_on = Vec::new();
                    let mut attempts = 0;
                    while based_on.len() < 5 {
                        attempts += 1;
                        assert!(attempts < 10_000, "compare-and-set starved");
                        let entry = store.get_entry("register").await.expect("read");
                        let (old, mode) = match entry {
                            None => (0, SetMode::Create),
                            Some(e) => (
                                e.value.as_i64().expect("integer"),
                                SetMode::Update(e.version),
                            ),
                        };
                        let options = SetOptions::new().mode(mode);
                        match store.set_with("register", &json!(old + 1), options).await {
                            Ok(_) => based_on.push(old),
                            Err(err) if err.is_conflict() => tokio::task::yield_now().await,
                            Err(err) => panic!("compare-and-set failed: {}", report(&err)),
                        }
                    }
                    based_on
                })
            })
            .collect();
        let mut based_on = Vec::new();
        for task in tasks {
            based_on.extend(task.await.expect("register task"));
        }
        based_on.sort_unstable();
        let n = i64::try_from(TASKS * 5).expect("small");
        assert_eq!(
            based_on,
            (0..n).collect::<Vec<_>>(),
            "two writes accepted from one read (a lost update), or a write lost"
        );
        let last = a.get::<i64>("register").await.expect("read register");
        assert_eq!(last, Some(n));

        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = pick(i);
                tokio::spawn(async move {
                    let options = SetOptions::new().mode(SetMode::Create);
                    (i, store.set_with("once", &json!(i), options).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("create task") {
                (i, Ok(_)) => winners.push(i),
                (_, Err(err)) => assert!(err.is_conflict(), "{}", report(&err)),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one Create wins");
        let stored = a.get::<u64>("once").await.expect("read once");
        assert_eq!(stored, winners.first().copied());
    }
    let checked = match (caps.increment, caps.conditional) {
        (true, true) => "counters, compare-and-set register, racing creates",
        (true, false) => "counters",
        (false, true) => "compare-and-set register, racing creates",
        (false, false) => "nothing (no increment, no conditional writes)",
    };
    println!(
        "model_concurrent on {}: {TASKS} tasks over 2 handles, {checked}, in {:.1?}",
        a.name(),
        started.elapsed()
    );
}
