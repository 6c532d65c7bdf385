//! Names and prefixes: awkward names, limits, handles sharing a store, prefixes that never collide, errors that name the caller's name.

use super::*;

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

/// One read of more than `MAX_NAMES_PER_CALL` distinct names is refused with `InvalidKey`,
/// before the backend does any work: bounded work per call.
pub async fn reads_are_capped(ctx: Context) {
    let store = ctx.store().await;
    let names: Vec<String> = (0..=state_store_core::MAX_NAMES_PER_CALL)
        .map(|i| format!("cap-{i}"))
        .collect();
    let err = expect_err(store.get_state(&names).await, "a read over the cap");
    assert!(matches!(err, Error::InvalidKey { .. }), "{}", report(&err));
    // Repeats count once: the cap is on distinct names.
    let repeated: Vec<&str> = vec!["cap-0"; state_store_core::MAX_NAMES_PER_CALL + 1];
    let state = store.get_state(&repeated).await;
    assert!(
        matches!(&state, Ok(map) if map.len() == 1),
        "{:?}",
        state.map(|m| m.len())
    );
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

/// Errors name the caller's name, never the stored key: another tenant's prefix does not
/// show in messages.
pub async fn errors_name_the_callers_name(ctx: Context) {
    let store = ok(
        ctx.store().await.with_prefix("tenant-secret"),
        "with_prefix",
    );
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

/// Handles whose prefixes are not nested never see each other's keys, whatever the names:
/// `t1` reading `2:x` does not see what `t12` wrote under `:x`, nor any of many generated
/// prefix and name pairs. Nested prefixes (`t1` and `t1:2`) do share keys, by design.
pub async fn prefixes_never_collide(ctx: Context) {
    let root = ctx.store().await;
    let nest = |prefix: &str| ok(root.with_prefix(prefix), "with_prefix");
    let t1 = nest("t1");
    let t12 = nest("t12");
    write(&t12, ":x", json!("tenant t12")).await;
    assert_eq!(read(&t1, "2:x").await, None, "t1 sees t12's key");
    assert_eq!(read(&t12, ":x").await, Some(json!("tenant t12")));
    write(&t1, "2:y", json!("t1")).await;
    assert_eq!(read(&t12, ":y").await, None, "t12 sees t1's key");
    assert_eq!(
        read(&nest("t1:2"), "y").await,
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
        read(&nest("::t12::"), ":x").await,
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
        let prefix = draw(&mut rng);
        let handle = match root.with_prefix(&prefix) {
            Ok(handle) => handle,
            Err(Error::InvalidKey { .. }) if prefix.chars().all(|c| c == ':') => continue,
            Err(err) => panic!("with_prefix({prefix:?}): {}", report(&err)),
        };
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
