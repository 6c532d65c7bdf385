//! TTLs: values expire on time, rewrites keep or clear deadlines as asked, windows close.

use super::*;

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
    let entry = ok(
        store.backend().get_many(&[name.to_owned()]).await,
        "get_many",
    )
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

/// An entry read with `get_entry` reports the time its value has left — what `state-store
/// cp` and `export` carry over — and none for a value without a TTL.
pub async fn entries_report_the_time_left(ctx: Context) {
    let store = ctx.store().await;
    let ttl = Duration::from_secs(3600);
    let result = store
        .set_with("left", &json!("an hour"), SetOptions::new().ttl(ttl))
        .await;
    if !declared_or_unsupported(store.capabilities().ttl, result, "TTL") {
        return;
    }
    write(&store, "forever", json!("no TTL")).await;
    let entry = ok(store.get_entry("left").await, "get_entry").expect("the value is there");
    let left = entry
        .expires_in
        .unwrap_or_else(|| panic!("{}: a TTL'd entry reports no time left", store.name()));
    // Second-granular backends round; a minute is far more than a round trip.
    assert!(
        left <= ttl + Duration::from_secs(1) && left >= ttl - Duration::from_secs(60),
        "an hour's TTL reads back as {left:?} left"
    );
    let entry = ok(store.get_entry("forever").await, "get_entry").expect("the value is there");
    assert_eq!(entry.expires_in, None, "a value without a TTL reports one");
}
