//! Listing names by prefix and watching changes.

// A test suite reports a misbehaving store by panicking, like `assert!`.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use state_store_core::{
    Error, ListOptions, RemoveCause, Selector, StateStore, StoreConfig, Watch, WatchEvent,
    WatchStart, WatchSupport,
};

use crate::cases::AWKWARD_KEYS;
use crate::context::Context;
use crate::report;

/// How long a case waits for an event that must come.
const PATIENCE: Duration = Duration::from_secs(30);

fn ok<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: {}", report(&err)))
}

/// Every name under `prefix`, read page by page with `limit`, as a set; checks the pages.
async fn listed(store: &StateStore, prefix: &str, limit: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut options = ListOptions::new().limit(limit);
    for _ in 0..100_000 {
        let page = ok(store.list(prefix, options.clone()).await, "list");
        for name in page.names {
            assert!(name.starts_with(prefix), "{name:?} listed under {prefix:?}");
            names.insert(name);
        }
        match page.next {
            Some(next) => options = options.cursor(next),
            None => return names,
        }
    }
    panic!("the listing of {prefix:?} never ended");
}

/// `list` returns exactly the names written under a prefix — awkward and generated names,
/// after removals and expiry, with another prefix's and another tenant's names present — with
/// pages of 1, 7 and 1000; `list_all` and `remove_prefix` agree. A store that cannot list
/// says `Unsupported`.
pub async fn list_returns_exactly_the_names_under_a_prefix(ctx: Context) {
    let store = ctx.store().await;
    if !store.capabilities().list {
        match store.list("", ListOptions::new()).await {
            Err(Error::Unsupported { .. }) => return crate::context::skipped("list"),
            other => panic!("a store without list gave {other:?}"),
        }
    }
    let tenant = ctx
        .store_with(StoreConfig::default().with_prefix("other-tenant"))
        .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut names: BTreeSet<String> = AWKWARD_KEYS.iter().map(|k| format!("p:{k}")).collect();
    for _ in 0..20 {
        let len = rng.random_range(1..12);
        let name: String = (0..len)
            .map(|_| {
                *b"ab.:*?[]\\ _-%"
                    .get(rng.random_range(0..13))
                    .expect("in range") as char
            })
            .collect();
        names.insert(format!("p:{name}"));
    }
    for name in &names {
        ok(store.set_state(name, &json!(1)).await, "write");
        ok(
            tenant.set_state(name, &json!(2)).await,
            "write another tenant's",
        );
    }
    for other in ["q:1", "pp", "P:upper", "p"] {
        ok(
            store.set_state(other, &json!(3)).await,
            "write outside the prefix",
        );
    }
    let removed: Vec<String> = names.iter().step_by(5).cloned().collect();
    for name in &removed {
        ok(store.remove_state(name).await, "remove");
        names.remove(name);
    }
    if store.capabilities().ttl {
        let options = state_store_core::SetOptions::new().ttl(Duration::from_millis(200));
        ok(
            store.set_with("p:short-lived", &json!(4), options).await,
            "write with TTL",
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    for limit in [1, 7, 1000] {
        assert_eq!(listed(&store, "p:", limit).await, names, "pages of {limit}");
    }
    let all: BTreeSet<String> = ok(store.list_all("p:").await, "list_all")
        .into_iter()
        .collect();
    assert_eq!(all, names);
    let everything = listed(&store, "", 1000).await;
    assert!(everything.is_superset(&names));
    assert!(everything.contains("q:1") && everything.contains("pp") && everything.contains("p"));
    match store.list("", ListOptions::new().limit(0)).await {
        Err(Error::InvalidKey { .. }) => {}
        other => panic!("a page of 0 gave {other:?}"),
    }
    let count = ok(store.remove_prefix("p:").await, "remove_prefix");
    assert_eq!(count, names.len());
    assert!(listed(&store, "p:", 1000).await.is_empty());
    assert_eq!(
        listed(&tenant, "p:", 1000).await.len(),
        names.len() + removed.len()
    );
    let left = ok(
        store.get_state(&["q:1", "pp", "p"]).await,
        "read the others",
    );
    assert!(
        left.values().all(Option::is_some),
        "remove_prefix went too far"
    );
}

/// The next event, or a failure after [`PATIENCE`].
async fn next_event(watch: &mut Watch) -> WatchEvent {
    let event = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("no event came")
        .expect("the watch ended");
    ok(event, "watch event")
}

fn describe(event: &WatchEvent) -> String {
    match event {
        WatchEvent::Put { name, value, .. } => format!("put {name} {value}"),
        WatchEvent::Removed { name, cause, .. } => format!("removed {name} {cause:?}"),
        WatchEvent::Resync { .. } => "resync".to_owned(),
        other => format!("{other:?}"),
    }
}

/// The changes the watch cases make, in order, and what a watcher of `w:` sees of them.
async fn changes(store: &StateStore) -> Vec<String> {
    ok(store.set_state("w:a", &json!(1)).await, "write");
    ok(
        store.set_state("x:outside", &json!(0)).await,
        "write outside",
    );
    ok(store.set_state("w:b", &json!({ "k": "v" })).await, "write");
    ok(store.remove_state("w:a").await, "remove");
    ok(store.set_state("w:b", &Value::Null).await, "rewrite");
    ok(store.increment("w:n", 5, None).await, "increment");
    vec![
        "put w:a 1".to_owned(),
        r#"put w:b {"k":"v"}"#.to_owned(),
        "removed w:a Removed".to_owned(),
        "put w:b null".to_owned(),
        "put w:n 5".to_owned(),
    ]
}

/// A watcher of a prefix sees every write and removal under it, in order, and nothing else; a
/// watcher of one name only that name; a `Lossy` store refuses to resume from a version. A
/// store that cannot watch says `Unsupported`.
pub async fn watch_sees_every_change_in_order(ctx: Context) {
    let store = ctx.store().await;
    let support = store.capabilities().watch;
    if support == WatchSupport::None {
        match store.watch(Selector::All, WatchStart::Now).await {
            Err(Error::Unsupported { .. }) => return crate::context::skipped("watch"),
            other => panic!("a store without watch gave {:?}", other.map(|_| ())),
        }
    }
    let writer = ctx.store().await;
    let mut prefix = ok(
        store
            .watch(Selector::Prefix("w:".into()), WatchStart::Now)
            .await,
        "watch a prefix",
    );
    let mut one = ok(
        store
            .watch(Selector::Name("w:b".into()), WatchStart::Now)
            .await,
        "watch a name",
    );
    let expected = changes(&writer).await;
    if support.resumes() {
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            seen.push(describe(&next_event(&mut prefix).await));
        }
        assert_eq!(seen, expected);
        for want in [r#"put w:b {"k":"v"}"#, "put w:b null"] {
            assert_eq!(describe(&next_event(&mut one).await), want);
        }
    } else {
        // Lossy: events may be missed (then `Resync` says so) and a put may carry a later
        // value; what holds is that nothing outside the selector shows up and each name's
        // last event is its final state.
        let finals = [
            ("w:a", "removed w:a Removed"),
            ("w:b", "put w:b null"),
            ("w:n", "put w:n 5"),
        ];
        settles(&mut prefix, "w:", &finals).await;
        settles(&mut one, "w:b", &finals[1..2]).await;
    }
    if support == WatchSupport::Lossy {
        let version = state_store_core::Version::new("1");
        match store
            .watch(Selector::All, WatchStart::AfterVersion(version))
            .await
        {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("a lossy watch accepted a version: {:?}", other.map(|_| ())),
        }
    }
}

/// Writers on handles of their own increment and remove a few names at once, in a seeded
/// random order (`STATE_STORE_WATCH_SEED` replays one). A watcher of their prefix sees, name by
/// name, every change in the order it took effect — each put one above the name's last, a
/// removal back to nothing — and ends on each name's stored value (`Resumable` stores). A
/// `Compacted` watcher that falls behind may see only a name's latest change, and a `Lossy` one
/// may miss changes (saying `Resync`): those must at least end on each name's stored value.
/// Writes committed in one order and numbered in another are where a feed skips changes.
pub async fn watch_sees_concurrent_writers_in_order(ctx: Context) {
    const WRITERS: usize = 6;
    const NAMES: usize = 3;
    const OPS: usize = 40;
    let store = ctx.store().await;
    let support = store.capabilities().watch;
    if support == WatchSupport::None {
        return crate::context::skipped("watch");
    }
    let seed: u64 = std::env::var("STATE_STORE_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("watch_sees_concurrent_writers_in_order: seed {seed} (STATE_STORE_WATCH_SEED)");
    let mut watch = ok(
        store
            .watch(Selector::Prefix("cw:".into()), WatchStart::Now)
            .await,
        "watch",
    );
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let handle = ctx.store().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w as u64));
        writers.push(tokio::spawn(async move {
            for _ in 0..OPS {
                let name = format!("cw:{}", rng.random_range(0..NAMES));
                if rng.random_ratio(1, 8) {
                    ok(handle.remove_state(&name).await, "remove");
                } else {
                    ok(handle.increment(&name, 1, None).await, "increment");
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    ok(store.set_state("cw:end", &json!("end")).await, "sentinel");
    // Name → its value as the watcher last saw it (0: absent).
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let (mut events, mut resynced) = (0usize, false);
    loop {
        let event = next_event(&mut watch).await;
        events += 1;
        let (name, now) = match &event {
            WatchEvent::Put { name, .. } if name == "cw:end" => break,
            WatchEvent::Put { name, value, .. } => (name.clone(), value.as_i64().unwrap_or(-1)),
            WatchEvent::Removed { name, .. } => (name.clone(), 0),
            WatchEvent::Resync { .. } if support != WatchSupport::Resumable => {
                resynced = true;
                continue;
            }
            other => panic!("seed {seed}: a live watch said {other:?}"),
        };
        let before = seen.insert(name.clone(), now).unwrap_or(0);
        if support == WatchSupport::Resumable {
            assert!(
                now == 0 || now == before + 1,
                "seed {seed}: {name} went from {before} to {now}: a change was skipped or \
                 delivered out of order (event {events})"
            );
        }
    }
    // A watcher told to re-read may have missed a name's last change.
    for i in (0..NAMES).filter(|_| !resynced) {
        let name = format!("cw:{i}");
        let stored: Option<i64> = ok(store.get(&name).await, "read");
        assert_eq!(
            seen.get(&name).copied().unwrap_or(0),
            stored.unwrap_or(0),
            "seed {seed}: the watch did not end on {name}'s stored value"
        );
    }
}

/// Reads events until the last one of each name in `finals` is its final state; every event
/// must be about a name starting with `prefix`.
async fn settles(watch: &mut Watch, prefix: &str, finals: &[(&str, &str)]) {
    let mut last: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    while finals
        .iter()
        .any(|(name, want)| last.get(*name).map(String::as_str) != Some(*want))
    {
        let event = next_event(watch).await;
        let name = match &event {
            WatchEvent::Put { name, .. } | WatchEvent::Removed { name, .. } => name.clone(),
            _ => continue,
        };
        assert!(
            name.starts_with(prefix),
            "{name:?} reached a watch of {prefix:?}"
        );
        last.insert(name, describe(&event));
    }
}

/// A watch resumed after a version either delivers every change after it, in order
/// (`Resumable`), or starts with `Resync` and then delivers, in order, the latest change of
/// each name changed since (`Compacted`); nothing else, even across changes made while nobody
/// watched, including a name written twice; expiry is reported as such.
pub async fn watch_resumes_after_a_version(ctx: Context) {
    let store = ctx.store().await;
    let support = store.capabilities().watch;
    if !support.resumes() {
        crate::context::skipped("resumable watch");
        return;
    }
    let mut first = ok(
        store
            .watch(Selector::Prefix("w:".into()), WatchStart::Now)
            .await,
        "watch",
    );
    let expected = changes(&store).await;
    let mut versions = Vec::new();
    for want in &expected {
        let event = next_event(&mut first).await;
        assert_eq!(&describe(&event), want);
        versions.push(match event {
            WatchEvent::Put { version, .. } => Some(version),
            WatchEvent::Removed { version, .. } => version,
            _ => None,
        });
    }
    drop(first);
    ok(
        store
            .set_state("w:late", &json!("while nobody watched"))
            .await,
        "write",
    );
    // Resume after the second change: the rest, then the late write.
    let after = versions[1].clone().expect("a put has a version");
    let mut resumed_w = ok(
        store
            .watch(
                Selector::Prefix("w:".into()),
                WatchStart::AfterVersion(after),
            )
            .await,
        "resume",
    );
    let mut since: Vec<String> = expected[2..].to_vec();
    since.push(r#"put w:late "while nobody watched""#.to_owned());
    expect_resumed(&store, &mut resumed_w, support, &since, "w:end").await;

    // The scenario of a name written twice while nobody watched.
    let mut watch = ok(
        store
            .watch(Selector::Prefix("r:".into()), WatchStart::Now)
            .await,
        "watch",
    );
    ok(store.set_state("r:1", &json!(1)).await, "write");
    let after = match next_event(&mut watch).await {
        WatchEvent::Put { version, .. } => version,
        other => panic!("expected put r:1 1, got {other:?}"),
    };
    drop(watch);
    ok(store.set_state("r:1", &json!(2)).await, "rewrite");
    ok(store.set_state("r:2", &json!(3)).await, "write");
    ok(store.remove_state("r:1").await, "remove");
    let mut resumed = ok(
        store
            .watch(
                Selector::Prefix("r:".into()),
                WatchStart::AfterVersion(after),
            )
            .await,
        "resume",
    );
    ok(store.set_state("r:3", &json!(4)).await, "write");
    let since = ["put r:1 2", "put r:2 3", "removed r:1 Removed", "put r:3 4"].map(str::to_owned);
    expect_resumed(&store, &mut resumed, support, &since, "r:end").await;

    let mut resumed = resumed_w;
    if store.capabilities().ttl {
        let options = state_store_core::SetOptions::new().ttl(Duration::from_millis(300));
        ok(
            store.set_with("w:ttl", &json!(1), options).await,
            "write with TTL",
        );
        assert_eq!(describe(&next_event(&mut resumed).await), "put w:ttl 1");
        match next_event(&mut resumed).await {
            WatchEvent::Removed { name, cause, .. } => {
                assert_eq!(name, "w:ttl");
                assert_eq!(cause, RemoveCause::Expired);
            }
            other => panic!("expected the expiry, got {other:?}"),
        }
    }
}

/// Reads a resumed watch up to a write of `sentinel` (made here): the events before it must be
/// `since` exactly (`Resumable`), or a `Resync` followed by a subsequence of `since` holding
/// the last change of each name (`Compacted`).
async fn expect_resumed(
    store: &StateStore,
    watch: &mut Watch,
    support: WatchSupport,
    since: &[String],
    sentinel: &str,
) {
    ok(store.set_state(sentinel, &json!("end")).await, "write");
    let end = format!(r#"put {sentinel} "end""#);
    let mut seen = Vec::new();
    loop {
        let event = describe(&next_event(watch).await);
        if event == end {
            break;
        }
        seen.push(event);
    }
    if support == WatchSupport::Resumable {
        assert_eq!(seen, since, "a resumed watch skipped or added changes");
        return;
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("resync"),
        "a compacted watch resumed without Resync: {seen:?}"
    );
    let mut rest = since.iter();
    for event in &seen[1..] {
        assert!(
            rest.any(|want| want == event),
            "{event:?} is not one of the changes since, in order: {seen:?} against {since:?}"
        );
    }
    for (i, change) in since.iter().enumerate() {
        let name = change.split(' ').nth(1);
        let last_of_name = !since[i + 1..]
            .iter()
            .any(|later| later.split(' ').nth(1) == name);
        assert!(
            !last_of_name || seen.contains(change),
            "a compacted watch skipped the last change {change:?}: {seen:?}"
        );
    }
}
